//! Pipes, with the bytes in flight: both ends in the image, or one end outside (external:
//! see state/external.rs).
//!
//! The unread bytes are copied out with `tee(2)` from a duplicate of the read end taken with
//! `pidfd_getfd`, which leaves them in the pipe: a dump that fails or `dump -R` changes nothing.
//! Restore creates the pipe with the same capacity and writes the bytes back before the
//! process exists, so nobody can race with it.
//!
//! A pipe end may have several open file descriptions (a process reopened `/proc/self/fd/N`):
//! each is a `File` of its own with its own flags, and restore opens each further one through
//! `/proc/self/fd` again, so O_NONBLOCK set on one does not show on the other.

use crate::error::{Ctx, Error};
use ferry_image::Pipe;
use ferry_sys::process::{open_raw, pidfd_getfd, pipe2, pipe_size, set_pipe_size, set_status_flags, tee};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// Parse "pipe:[1234]".
pub fn pipe_ino(link: &str) -> Option<u64> {
    link.strip_prefix("pipe:[")?.strip_suffix(']')?.parse().ok()
}

/// Copy the unread bytes of the pipe behind fd `fd` (a read end) of `pid`.
pub fn collect(pid: i32, pidfd: BorrowedFd<'_>, fd: i32, ino: u64) -> Result<Pipe, Error> {
    let obj = || format!("pid {pid} fd {fd} (pipe:[{ino}])");
    let src = pidfd_getfd(pidfd, fd).ctx(obj)?;
    let (capacity, data) = peek(src.as_fd()).ctx(obj)?;
    Ok(Pipe { ino, capacity: capacity as u32, data, ..Default::default() })
}

/// The capacity of the pipe behind fd `fd` of `pid`, a write end whose read end is outside the
/// tree: its bytes belong to that reader and are not taken.
pub fn collect_capacity(pid: i32, pidfd: BorrowedFd<'_>, fd: i32, ino: u64) -> Result<Pipe, Error> {
    let obj = || format!("pid {pid} fd {fd} (pipe:[{ino}])");
    let src = pidfd_getfd(pidfd, fd).ctx(obj)?;
    let capacity = pipe_size(src.as_fd()).ctx(obj)?;
    Ok(Pipe { ino, capacity: capacity as u32, ..Default::default() })
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

/// The recreated pipes, keyed by the old inode number.
#[derive(Default)]
pub struct Prepared {
    /// Both ends of each pipe.
    ends: HashMap<u64, (OwnedFd, OwnedFd)>,
    /// Ends (inode, read end) already handed to one open file description: the next description
    /// of that end is a new one, opened through /proc/self/fd.
    taken: RefCell<HashSet<(u64, bool)>>,
}

impl Prepared {
    /// A new open file description of pipe `ino` with open flags `flags` (access mode and status
    /// flags: O_NONBLOCK, O_ASYNC ...). The first description of each end is the one `pipe2`
    /// made; each further one is opened through `/proc/self/fd/N`, as a process does to get
    /// two descriptions of one pipe, so each keeps its own status flags.
    pub fn open(&self, ino: u64, flags: i32) -> Result<Option<OwnedFd>, std::io::Error> {
        let Some((r, w)) = self.ends.get(&ino) else { return Ok(None) };
        let read = flags & libc::O_ACCMODE == libc::O_RDONLY;
        let end = if read { r } else { w };
        let fd = if self.taken.borrow_mut().insert((ino, read)) && flags & libc::O_ACCMODE != libc::O_RDWR {
            end.try_clone()?
        } else {
            let path = format!("/proc/self/fd/{}", end.as_raw_fd());
            let path = CString::new(path).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
            // (O_NONBLOCK: a pipe opened by path never waits for a peer; both ends exist anyway.)
            open_raw(&path, (flags & libc::O_ACCMODE) | libc::O_NONBLOCK | libc::O_CLOEXEC, 0)?
        };
        set_status_flags(fd.as_fd(), flags)?;
        Ok(Some(fd))
    }
}

/// Recreate every pipe with its capacity and content, but those a supervisor gives back
/// (`inherited`: `--inherit-fd fd[N]:pipe:[INO]`, which get no bytes from the image, as in CRIU).
/// An external pipe's outside end is only held here: it closes when `Prepared` is dropped.
pub fn prepare(pid: i32, pipes: &[Pipe], inherited: &dyn Fn(u64) -> bool) -> Result<Prepared, Error> {
    let mut out = Prepared::default();
    for p in pipes.iter().filter(|p| !inherited(p.ino)) {
        let obj = || format!("pid {pid} pipe:[{}]", p.ino);
        let (r, w) = pipe2(libc::O_CLOEXEC).ctx(obj)?;
        if p.capacity as usize > pipe_size(w.as_fd()).ctx(obj)? {
            set_pipe_size(w.as_fd(), p.capacity as usize).ctx(obj)?;
        }
        if (p.data.len() as u64) > p.capacity as u64 {
            return Err(Error::Invalid { object: obj(), what: "more data than capacity".into() });
        }
        ferry_sys::raw::write_all(std::os::fd::AsRawFd::as_raw_fd(&w), &p.data).ctx(obj)?;
        out.ends.insert(p.ino, (r, w));
    }
    Ok(out)
}
