//! Namespace files (`/proc/PID/ns/KIND`): the link a process's namespace reads as, and the
//! inode that names the namespace. What state/namespaces.rs, state/nested_ns.rs and
//! state/userns.rs compare namespaces by. And joining one: [`in_ns`] runs a closure in a
//! thread inside it; [`ferry_mnt_if_left`] is ferry's own mount namespace while a restore is
//! inside the tree's.

use crate::error::{Ctx, Error};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

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

/// Run `f` in a short-lived thread that has joined the namespace `ns` of kind `flag` (for a
/// mount namespace, after leaving ferry's fs_struct): reads what only a member of the
/// namespace can see (uname, sysctls, ...) without moving ferry.
pub fn in_ns<T: Send>(ns: BorrowedFd<'_>, flag: i32, f: impl FnOnce() -> Result<T, Error> + Send) -> Result<T, Error> {
    std::thread::scope(|s| {
        s.spawn(|| {
            if flag == libc::CLONE_NEWNS {
                ferry_sys::ns::unshare(libc::CLONE_FS).ctx(|| "cannot unshare CLONE_FS".into())?;
            }
            ferry_sys::ns::setns(ns, flag).ctx(|| "cannot join the tree's namespace (setns)".into())?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Invalid { object: "namespace reader thread".into(), what: "panicked".into() }))
    })
}

/// ferry's own mount namespace, kept by the first state/namespaces.rs `enter` that left it.
pub(crate) static FERRY_MNT: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();

/// ferry's own mount namespace while the calling thread is in another one (a restore inside
/// the tree's, between state/namespaces.rs `enter` and `Entered::leave`): where ferry's helper
/// programs (nft) are found.
pub fn ferry_mnt_if_left() -> Option<BorrowedFd<'static>> {
    IN_TREE_MNT.load(std::sync::atomic::Ordering::SeqCst).then(|| FERRY_MNT.get().map(|f| f.as_fd())).flatten()
}

/// The restoring thread is in the tree's mount namespace (state/namespaces.rs `enter` to
/// `Entered::leave`).
pub(crate) static IN_TREE_MNT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inodes_of_links() {
        assert_eq!(inode_of("net:[4026531840]"), 4026531840);
        assert_eq!(inode_of("net"), 0);
    }
}
