//! Namespace files (`/proc/PID/ns/KIND`): the link a process's namespace reads as, and the
//! inode that names the namespace. What state/namespaces.rs, state/nested_ns.rs and
//! state/userns.rs compare namespaces by.

use crate::error::{Ctx, Error};
use std::os::fd::BorrowedFd;

fn link(path: &str) -> Option<String> {
    std::fs::read_link(path).ok().map(|l| l.to_string_lossy().into_owned())
}

/// `/proc/PID/ns/KIND` of a process, as "net:[4026531840]" (None if the kernel has no such
/// kind, or the process is gone).
pub fn ns_link(pid: i32, kind: &str) -> Option<String> {
    link(&format!("/proc/{pid}/ns/{kind}"))
}

/// ferry's own namespace of `kind` (`/proc/self/ns/KIND`), as [`ns_link`] reads it.
pub fn own_link(kind: &str) -> Option<String> {
    link(&format!("/proc/self/ns/{kind}"))
}

/// The inode number in a link like "net:[4026531840]" (0 if it reads otherwise).
pub fn inode_of(link: &str) -> u64 {
    link.rsplit_once('[').and_then(|(_, r)| r.trim_end_matches(']').parse().ok()).unwrap_or(0)
}

/// The inode number of an open namespace file.
pub fn fd_inode(fd: BorrowedFd<'_>) -> Result<u64, Error> {
    let st = ferry_sys::process::fstat(fd).ctx(|| "cannot fstat a namespace file".into())?;
    Ok(st.st_ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inodes_of_links() {
        assert_eq!(inode_of("net:[4026531840]"), 4026531840);
        assert_eq!(inode_of("net"), 0);
    }
}
