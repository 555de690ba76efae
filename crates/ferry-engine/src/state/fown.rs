//! The owner of an open file description: who gets SIGIO (or SIGURG) and which signal
//! (F_SETOWN, F_SETOWN_EX, F_SETSIG), for any kind of file; and the fd number O_ASYNC was set
//! on.
//!
//! Neither fdinfo nor anything else in /proc reports the owner, so the dump asks the kernel on
//! a `pidfd_getfd` copy of the fd (F_GETOWN_EX, F_GETSIG: read-only). The owner is a thread,
//! process or process group of the tree, which exists only once the whole tree is rebuilt: the
//! restore sets it last, before the release, again on a `pidfd_getfd` copy (the owner belongs
//! to the description, so a copy is as good as the fd).
//!
//! O_ASYNC is a status flag and travels with the description's flags, but it also registers the
//! description with the object (->fasync) together with the fd number that the signal's
//! `si_fd` reports: the number of the fd F_SETFL was called on, which in ferry is not the
//! process's. The forked child sets it again once its fds have their numbers
//! (`async_in_child`), on the lowest fd of the description (the kernel does not say which fd
//! of several set it).
//!
//! Not kept: the credentials F_SETOWN records for the permission check of the signal (they are
//! ferry's, root, after restore: a signal the original owner could not send to the target is
//! sent). No interface reports them.

use crate::error::{Ctx, Error};
use ferry_image::{File, FileKind, FileOwner, Process};
use ferry_sys::objects::{get_owner, get_owner_signal, set_owner, set_owner_signal};
use ferry_sys::process::{pidfd_getfd, pidfd_open};
use std::os::fd::{AsFd, BorrowedFd};

/// Fill `f.owner` for fd `fd` of `pid` (`pidfd` opens it) if it has an owner or a signal.
pub fn collect(pidfd: BorrowedFd<'_>, pid: i32, fd: i32, f: &mut File) -> Result<(), Error> {
    let obj = || format!("pid {pid} fd {fd}: {}", f.describe);
    let copy = pidfd_getfd(pidfd, fd).ctx(|| format!("{}: pidfd_getfd", obj()))?;
    let (kind, id) = get_owner(copy.as_fd()).ctx(|| format!("{}: F_GETOWN_EX", obj()))?;
    let signum = get_owner_signal(copy.as_fd()).ctx(|| format!("{}: F_GETSIG", obj()))?;
    if id != 0 || signum != 0 {
        f.owner = Some(FileOwner { kind, id, signum });
    }
    Ok(())
}

/// Once every process and thread of the tree exists: set the owners and signals. `host` maps
/// a pid of the image to the pid it has now (they differ in a new pid namespace).
pub fn restore(procs: &[Process], host: &dyn Fn(i32) -> i32) -> Result<(), Error> {
    for p in procs.iter().filter(|p| !p.zombie) {
        let mut pidfd = None;
        for (i, f) in p.files.iter().enumerate() {
            if f.kind == FileKind::Inherited as i32 {
                continue; // ferry's own fd, shared with whoever handed it over
            }
            let Some(o) = &f.owner else { continue };
            let Some(fd) = p.fds.iter().find(|d| d.file as usize == i).map(|d| d.fd) else { continue };
            let pid = host(p.pid);
            let obj = || format!("pid {} fd {fd}: {}", p.pid, f.describe);
            if pidfd.is_none() {
                pidfd = Some(pidfd_open(pid).ctx(|| format!("pid {pid}: pidfd_open"))?);
            }
            let Some(pidfd) = pidfd.as_ref() else { continue };
            let copy = pidfd_getfd(pidfd.as_fd(), fd).ctx(|| format!("{}: pidfd_getfd", obj()))?;
            // (A process group's id is its leader's pid; a thread id maps like a pid.)
            set_owner(copy.as_fd(), o.kind, host(o.id))
                .ctx(|| format!("{}: cannot give it back to owner {} (type {})", obj(), o.id, o.kind))?;
            set_owner_signal(copy.as_fd(), o.signum)
                .ctx(|| format!("{}: cannot set its signal {}", obj(), o.signum))?;
        }
    }
    Ok(())
}

/// In the child, once its fds have their numbers: O_ASYNC again on the lowest fd of each
/// description that had it (cleared first, since only a change registers the fd number).
pub fn async_in_child(p: &Process) -> Result<(), String> {
    for (i, f) in p.files.iter().enumerate() {
        if f.flags & libc::O_ASYNC as u32 == 0 || f.kind == FileKind::Inherited as i32 {
            continue;
        }
        let Some(fd) = p.fds.iter().filter(|d| d.file as usize == i).map(|d| d.fd).min() else { continue };
        ferry_sys::raw::reset_async_numbers(fd).map_err(|e| format!("fd {fd}: cannot set O_ASYNC: {e}"))?;
    }
    Ok(())
}
