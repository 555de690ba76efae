//! fanotify(7): `fanotify_init(2)` and `fanotify_mark(2)`.

use crate::cvt_i;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `fanotify_init(flags, event_f_flags)` — a new fanotify group.
pub fn init(flags: u32, event_f_flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_fanotify_init, flags as libc::c_ulong, event_f_flags as libc::c_ulong) };
    let fd = cvt_i(fd as i32)?;
    // SAFETY: the kernel just created this fd for us; we are its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fanotify_mark(fd, flags, mask, AT_FDCWD, path)`.
pub fn mark(fd: BorrowedFd<'_>, flags: u32, mask: u64, path: &CStr) -> io::Result<()> {
    // SAFETY: path is a valid NUL-terminated string for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fanotify_mark,
            fd.as_raw_fd(),
            flags as libc::c_uint,
            mask,
            libc::AT_FDCWD,
            path.as_ptr(),
        )
    };
    cvt_i(r as i32).map(drop)
}
