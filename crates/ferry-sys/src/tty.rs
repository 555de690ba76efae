//! Terminal ioctls (`ioctl_tty(2)`, `ioctl_console(2)`, `pty(7)`): the state of a pseudo-terminal
//! pair, read and set through an fd of either end.

use crate::cvt_i;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Size of the kernel's `struct termios2` on x86_64 (`TCGETS2`).
pub const TERMIOS2_SIZE: usize = std::mem::size_of::<libc::termios2>();

/// Integer-valued `ioctl(fd, req, &int)` getters: `TIOCGPKT`, `TIOCGPTLCK`, `TIOCGEXCL`, `TIOCGPTN`,
/// `TIOCGPGRP`, `TIOCGSID`, `FIONREAD`, `TIOCOUTQ`.
pub fn get_int(fd: BorrowedFd<'_>, req: libc::Ioctl) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: each request the callers pass writes exactly one int to the pointer.
    cvt_i(unsafe { libc::ioctl(fd.as_raw_fd(), req, &mut v as *mut libc::c_int) })?;
    Ok(v)
}

/// Integer-valued `ioctl(fd, req, &int)` setters: `TIOCPKT`, `TIOCSPTLCK`, `TIOCSPGRP`.
pub fn set_int(fd: BorrowedFd<'_>, req: libc::Ioctl, v: i32) -> io::Result<()> {
    let v: libc::c_int = v;
    // SAFETY: each request the callers pass reads exactly one int from the pointer.
    cvt_i(unsafe { libc::ioctl(fd.as_raw_fd(), req, &v as *const libc::c_int) }).map(drop)
}

/// Argument-less `ioctl(fd, req)`: `TIOCEXCL`, `TIOCNXCL`.
pub fn no_arg(fd: BorrowedFd<'_>, req: libc::Ioctl) -> io::Result<()> {
    // SAFETY: the requests callers pass take no argument.
    cvt_i(unsafe { libc::ioctl(fd.as_raw_fd(), req, 0usize) }).map(drop)
}

/// `ioctl(fd, TIOCSCTTY, steal)` — make the terminal the caller's controlling terminal (the
/// caller must be a session leader without one).
pub fn set_ctty(fd: i32, steal: bool) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument by value.
    cvt_i(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, steal as libc::c_ulong) }).map(drop)
}

/// `ioctl(fd, TIOCSPGRP, &pgrp)` on a raw fd number (in a restored child, before its fds are
/// wrapped) — make `pgrp` the terminal's foreground process group.
pub fn set_foreground(fd: i32, pgrp: i32) -> io::Result<()> {
    let v: libc::pid_t = pgrp;
    // SAFETY: TIOCSPGRP reads one pid_t from the pointer.
    cvt_i(unsafe { libc::ioctl(fd, libc::TIOCSPGRP, &v as *const libc::pid_t) }).map(drop)
}

/// `ioctl(fd, TIOCGPGRP)` on a raw fd number — the terminal's foreground process group.
pub fn foreground(fd: i32) -> io::Result<i32> {
    let mut v: libc::pid_t = 0;
    // SAFETY: TIOCGPGRP writes one pid_t to the pointer.
    cvt_i(unsafe { libc::ioctl(fd, libc::TIOCGPGRP, &mut v as *mut libc::pid_t) })?;
    Ok(v)
}

/// `ioctl(fd, TCGETS2)` — the terminal's settings as the raw bytes of `struct termios2`.
pub fn get_termios(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut t = [0u8; TERMIOS2_SIZE];
    // SAFETY: TCGETS2 writes one struct termios2 (TERMIOS2_SIZE bytes) to the buffer.
    cvt_i(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCGETS2, t.as_mut_ptr()) })?;
    Ok(t.to_vec())
}

/// `ioctl(fd, TCSETS2)` — set the terminal's settings from the raw bytes of `struct termios2`.
pub fn set_termios(fd: BorrowedFd<'_>, t: &[u8]) -> io::Result<()> {
    if t.len() != TERMIOS2_SIZE {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("termios of {} bytes", t.len())));
    }
    // SAFETY: TCSETS2 reads one struct termios2 (TERMIOS2_SIZE bytes, checked above).
    cvt_i(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TCSETS2, t.as_ptr()) }).map(drop)
}

/// `ioctl(fd, TIOCGWINSZ)` — (rows, columns, x pixels, y pixels).
pub fn get_winsize(fd: BorrowedFd<'_>) -> io::Result<[u16; 4]> {
    let mut w = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one struct winsize.
    cvt_i(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut w as *mut libc::winsize) })?;
    Ok([w.ws_row, w.ws_col, w.ws_xpixel, w.ws_ypixel])
}

/// `ioctl(fd, TIOCSWINSZ)` — set (rows, columns, x pixels, y pixels).
pub fn set_winsize(fd: BorrowedFd<'_>, ws: [u16; 4]) -> io::Result<()> {
    let w = libc::winsize { ws_row: ws[0], ws_col: ws[1], ws_xpixel: ws[2], ws_ypixel: ws[3] };
    // SAFETY: TIOCSWINSZ reads one struct winsize.
    cvt_i(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &w as *const libc::winsize) }).map(drop)
}

/// `ioctl(master, TIOCGPTPEER, flags)` — open the slave end of a pty pair from its master,
/// without looking up /dev/pts (a new open file description with `flags`).
pub fn open_peer(master: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: TIOCGPTPEER takes the open flags by value and returns a new fd.
    let fd = cvt_i(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags as libc::c_ulong) })?;
    // SAFETY: the kernel just returned this fd to us; we are its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
