//! Socket options of packet and netlink sockets, saved as inet sockets' are (state/inet.rs):
//! each option is compared with a fresh socket of the same kind created by ferry, and only
//! those the program changed go into the image, to be set again on the new socket.

use crate::error::{Ctx, Error};
use ferry_image::SockOpt;
use ferry_sys::consts::SO_BUF_LOCK;
use ferry_sys::sockopt;
use std::os::fd::BorrowedFd;

/// The SOL_SOCKET options every socket family has.
pub const COMMON: &[(i32, i32, &str)] = &[
    (libc::SOL_SOCKET, libc::SO_PRIORITY, "SO_PRIORITY"),
    (libc::SOL_SOCKET, libc::SO_MARK, "SO_MARK"),
    (libc::SOL_SOCKET, libc::SO_RCVLOWAT, "SO_RCVLOWAT"),
    (libc::SOL_SOCKET, libc::SO_RCVTIMEO, "SO_RCVTIMEO"),
    (libc::SOL_SOCKET, libc::SO_SNDTIMEO, "SO_SNDTIMEO"),
    (libc::SOL_SOCKET, libc::SO_PASSCRED, "SO_PASSCRED"),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMP, "SO_TIMESTAMP"),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, "SO_TIMESTAMPNS"),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMPING, "SO_TIMESTAMPING"),
    (libc::SOL_SOCKET, libc::SO_RXQ_OVFL, "SO_RXQ_OVFL"),
    (libc::SOL_SOCKET, libc::SO_BUSY_POLL, "SO_BUSY_POLL"),
];

/// The options of `sock` (in `list`, and the buffer sizes the program set) whose value differs
/// from those of `fresh`.
pub fn changed(sock: BorrowedFd<'_>, fresh: BorrowedFd<'_>, list: &[(i32, i32, &str)]) -> Result<Vec<SockOpt>, Error> {
    let mut out = buffer_sizes(sock)?;
    for &(level, name, what) in COMMON.iter().chain(list) {
        let theirs = match sockopt::get_raw(sock, level, name, 64) {
            Ok(v) => v,
            // Not known to this kernel (or not for this socket): nothing to carry.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOPROTOOPT) | Some(libc::EOPNOTSUPP)) => continue,
            Err(e) => return Err(Error::Sys { object: format!("getsockopt {what}"), source: e }),
        };
        let ours = sockopt::get_raw(fresh, level, name, 64).unwrap_or_default();
        if theirs != ours {
            out.push(SockOpt { level, name, value: theirs, what: what.into() });
        }
    }
    Ok(out)
}

/// Set `opts` on the new socket `sock`.
pub fn apply(obj: &str, sock: BorrowedFd<'_>, opts: &[SockOpt]) -> Result<(), Error> {
    for o in opts {
        sockopt::set_raw(sock, o.level, o.name, &o.value).ctx(|| format!("{obj}: cannot set {}", o.what))?;
    }
    Ok(())
}

/// Bytes waiting to be read on `sock` (SO_MEMINFO's receive memory: any family).
pub fn queued(sock: BorrowedFd<'_>) -> std::io::Result<u32> {
    const SO_MEMINFO: i32 = 55;
    let mem = sockopt::get_raw(sock, libc::SOL_SOCKET, SO_MEMINFO, 64)?;
    Ok(mem.get(..4).map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]])))
}

/// SO_BUF_LOCK's bits (the kernel's SOCK_SNDBUF_LOCK, SOCK_RCVBUF_LOCK).
const SOCK_SNDBUF_LOCK: i32 = 1;
const SOCK_RCVBUF_LOCK: i32 = 2;

/// The buffer sizes of `sock`, as options to set again, when the program set them: the kernel
/// locks them then (SO_BUF_LOCK) and autotunes them otherwise; it reports twice the size asked
/// for. Every socket kind shares this.
pub fn buffer_sizes(sock: BorrowedFd<'_>) -> Result<Vec<SockOpt>, Error> {
    let mut out = Vec::new();
    let locks = sockopt::get_int(sock, libc::SOL_SOCKET, SO_BUF_LOCK).unwrap_or(0);
    for (lock, get, force, what) in [
        (SOCK_SNDBUF_LOCK, libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, "SO_SNDBUF"),
        (SOCK_RCVBUF_LOCK, libc::SO_RCVBUF, libc::SO_RCVBUFFORCE, "SO_RCVBUF"),
    ] {
        if locks & lock != 0 {
            let v = sockopt::get_int(sock, libc::SOL_SOCKET, get).ctx(|| format!("getsockopt {what}"))?;
            out.push(SockOpt {
                level: libc::SOL_SOCKET,
                name: force,
                value: (v / 2).to_ne_bytes().to_vec(),
                what: what.into(),
            });
        }
    }
    if locks != 0 {
        out.push(SockOpt {
            level: libc::SOL_SOCKET,
            name: SO_BUF_LOCK,
            value: locks.to_ne_bytes().to_vec(),
            what: "SO_BUF_LOCK".into(),
        });
    }
    Ok(out)
}
