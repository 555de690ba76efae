//! Pipes whose both ends belong to the image, with the bytes in flight.
//!
//! The unread bytes are copied out with `tee(2)` from a duplicate of the read end taken with
//! `pidfd_getfd`, which leaves them in the pipe: a dump that fails or `dump -R` changes nothing.
//! Restore creates the pipe with the same capacity and writes the bytes back before the
//! process exists, so nobody can race with it.

use crate::error::{Ctx, Error};
use ferry_image::Pipe;
use ferry_sys::process::{pidfd_getfd, pipe2, pipe_size, set_pipe_size, tee};
use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Parse "pipe:[1234]".
pub fn pipe_ino(link: &str) -> Option<u64> {
    link.strip_prefix("pipe:[")?.strip_suffix(']')?.parse().ok()
}

/// Copy the unread bytes of the pipe behind fd `fd` (a read end) of `pid`.
pub fn collect(pid: i32, pidfd: BorrowedFd<'_>, fd: i32, ino: u64) -> Result<Pipe, Error> {
    let obj = || format!("pid {pid} fd {fd} (pipe:[{ino}])");
    let src = pidfd_getfd(pidfd, fd).ctx(obj)?;
    let (capacity, data) = peek(src.as_fd()).ctx(obj)?;
    Ok(Pipe { ino, capacity: capacity as u32, data })
}

/// The capacity of the pipe behind read end `src` and a copy of its unread bytes (left in it).
pub fn peek(src: BorrowedFd<'_>) -> std::io::Result<(usize, Vec<u8>)> {
    let capacity = pipe_size(src)?;
    let (r, w) = pipe2(libc::O_CLOEXEC)?;
    set_pipe_size(w.as_fd(), capacity)?;
    let mut data = Vec::new();
    match tee(src, w.as_fd(), capacity, true) {
        Ok(n) => {
            drop(w);
            let mut f = std::fs::File::from(r);
            f.read_to_end(&mut data)?;
            data.truncate(n);
        }
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
        Err(e) => return Err(e),
    }
    Ok((capacity, data))
}

/// Both ends of each recreated pipe, keyed by the old inode number.
pub type Prepared = HashMap<u64, (OwnedFd, OwnedFd)>;

/// Recreate every pipe with its capacity and content.
pub fn prepare(pid: i32, pipes: &[Pipe]) -> Result<Prepared, Error> {
    let mut out = HashMap::new();
    for p in pipes {
        let obj = || format!("pid {pid} pipe:[{}]", p.ino);
        let (r, w) = pipe2(libc::O_CLOEXEC).ctx(obj)?;
        if p.capacity as usize > pipe_size(w.as_fd()).ctx(obj)? {
            set_pipe_size(w.as_fd(), p.capacity as usize).ctx(obj)?;
        }
        if (p.data.len() as u64) > p.capacity as u64 {
            return Err(Error::Invalid { object: obj(), what: "more data than capacity".into() });
        }
        ferry_sys::raw::write_all(std::os::fd::AsRawFd::as_raw_fd(&w), &p.data).ctx(obj)?;
        out.insert(p.ino, (r, w));
    }
    Ok(out)
}
