//! `NETLINK_SOCK_DIAG` dumps (sock_diag(7)): one request, then every answer message walked
//! with its bounds checked. Unix and inet sockets use it with their own request bodies.

use crate::cvt_i;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

pub(crate) fn rd32(b: &[u8], o: usize) -> Option<u32> {
    b.get(o..o + 4).map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn rd16(b: &[u8], o: usize) -> Option<u16> {
    b.get(o..o + 2).map(|s| u16::from_ne_bytes([s[0], s[1]]))
}

pub(crate) fn bad() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed sock_diag answer")
}

/// Send one `SOCK_DIAG_BY_FAMILY` dump request whose body (after the `nlmsghdr`) is `body`,
/// and call `each` with the body of every answer message until the dump is done.
pub(crate) fn dump(body: &[u8], mut each: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
    // SAFETY: integer arguments.
    let nl =
        cvt_i(unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, NETLINK_SOCK_DIAG) })?;
    // SAFETY: the kernel just created this fd for us; we are its only owner.
    let nl = unsafe { OwnedFd::from_raw_fd(nl) };
    let mut req = Vec::with_capacity(16 + body.len());
    req.extend_from_slice(&(16 + body.len() as u32).to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid
    req.extend_from_slice(body);
    // SAFETY: req is valid for reads of req.len() bytes.
    let r = unsafe { libc::send(nl.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    cvt_i(r as i32)?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::recv(nl.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let msgs = &buf[..n as usize];
        let mut off = 0;
        while off + 16 <= msgs.len() {
            let len = rd32(msgs, off).ok_or_else(bad)? as usize;
            let ty = rd16(msgs, off + 4).ok_or_else(bad)?;
            if len < 16 || off + len > msgs.len() {
                return Err(bad());
            }
            let body = &msgs[off + 16..off + len];
            match ty {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let errno = rd32(body, 0).ok_or_else(bad)? as i32;
                    return Err(io::Error::from_raw_os_error(-errno));
                }
                _ => each(body)?,
            }
            off += (len + 3) & !3;
        }
    }
}

/// The netlink attributes of an answer `body` from byte `from` on: (type, payload).
pub(crate) fn attrs(body: &[u8], from: usize) -> io::Result<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    let mut a = from;
    while a + 4 <= body.len() {
        let alen = rd16(body, a).ok_or_else(bad)? as usize;
        let aty = rd16(body, a + 2).ok_or_else(bad)?;
        if alen < 4 || a + alen > body.len() {
            return Err(bad());
        }
        out.push((aty & 0x3fff, &body[a + 4..a + alen]));
        a += (alen + 3) & !3;
    }
    Ok(out)
}
