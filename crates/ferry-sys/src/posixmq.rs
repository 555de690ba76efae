//! POSIX message queues (`mq_open`, `mq_getattr`, `mq_receive`, `mq_send`), for the content of
//! an ipc namespace (ferry-engine's state/ipcns.rs). Calls act in the calling thread's ipc
//! namespace. On Linux a queue descriptor is a file descriptor (closed with `close`), so it is
//! handed out as an `OwnedFd` (fstat, fchown and fchmod work on it).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// A queue's attributes (`struct mq_attr`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MqAttr {
    pub flags: i64,
    pub maxmsg: i64,
    pub msgsize: i64,
    pub curmsgs: i64,
}

/// `mq_open(name, flags, mode, attr)`: `name` starts with '/'; `attr` (max messages, message
/// size) is used with O_CREAT (None: the namespace's defaults).
pub fn open(name: &CStr, flags: i32, mode: u32, attr: Option<(i64, i64)>) -> io::Result<OwnedFd> {
    // SAFETY: an all-zero mq_attr is a valid value.
    let mut a: libc::mq_attr = unsafe { std::mem::zeroed() };
    let ap = match attr {
        Some((maxmsg, msgsize)) => {
            a.mq_maxmsg = maxmsg as _;
            a.mq_msgsize = msgsize as _;
            &mut a as *mut libc::mq_attr
        }
        None => std::ptr::null_mut(),
    };
    // SAFETY: name is NUL-terminated; mode and attr are read only with O_CREAT, as passed
    // (attr NULL or a valid mq_attr that outlives the call).
    let fd = unsafe { libc::mq_open(name.as_ptr(), flags, mode as libc::mode_t, ap) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: mq_open returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `mq_getattr`.
pub fn getattr(q: BorrowedFd<'_>) -> io::Result<MqAttr> {
    // SAFETY: an all-zero mq_attr is a valid value.
    let mut a: libc::mq_attr = unsafe { std::mem::zeroed() };
    // SAFETY: mq_getattr fills the mq_attr it is given.
    crate::cvt_i(unsafe { libc::mq_getattr(q.as_raw_fd(), &mut a) })?;
    Ok(MqAttr {
        flags: a.mq_flags as i64,
        maxmsg: a.mq_maxmsg as i64,
        msgsize: a.mq_msgsize as i64,
        curmsgs: a.mq_curmsgs as i64,
    })
}

/// `mq_receive` on a queue opened with O_NONBLOCK: the oldest message of the highest priority
/// and that priority, taken off the queue; None when the queue is empty. `msgsize` is the
/// queue's message size.
pub fn receive(q: BorrowedFd<'_>, msgsize: usize) -> io::Result<Option<(Vec<u8>, u32)>> {
    let mut buf = vec![0u8; msgsize.max(1)];
    let mut prio: libc::c_uint = 0;
    // SAFETY: buf holds buf.len() writable bytes (at least the queue's message size, as
    // mq_receive requires); prio is a valid unsigned int.
    let n = unsafe { libc::mq_receive(q.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), &mut prio) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EAGAIN) { Ok(None) } else { Err(e) };
    }
    buf.truncate(n as usize);
    Ok(Some((buf, prio)))
}

/// `mq_send` (after the queued messages of the same priority).
pub fn send(q: BorrowedFd<'_>, data: &[u8], prio: u32) -> io::Result<()> {
    // SAFETY: data is valid for data.len() bytes.
    crate::cvt_i(unsafe { libc::mq_send(q.as_raw_fd(), data.as_ptr().cast(), data.len(), prio) }).map(drop)
}
