//! Namespace and network-device calls that `ferry run --netns/--timens/--mntns` and the
//! namespace contents (state/timens.rs, state/netns.rs) make on the calling process or thread.

use crate::{cvt, cvt_i};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `CLONE_NEWTIME` (linux/sched.h), missing from older libc crates.
pub const CLONE_NEWTIME: i32 = 0x0000_0080;

/// `unshare(2)` — move the calling thread (or, for CLONE_NEWTIME/CLONE_NEWPID, its future
/// children) into new namespaces.
pub fn unshare(flags: i32) -> io::Result<()> {
    // SAFETY: unshare takes an integer and touches no memory of ours.
    cvt_i(unsafe { libc::unshare(flags) }).map(drop)
}

/// `setns(2)` — move the calling thread into the namespace `fd` refers to.
pub fn setns(fd: BorrowedFd<'_>, nstype: i32) -> io::Result<()> {
    // SAFETY: a valid fd and an integer.
    cvt_i(unsafe { libc::setns(fd.as_raw_fd(), nstype) }).map(drop)
}

/// `mount(2)`.
pub fn mount(source: &CStr, target: &CStr, fstype: Option<&CStr>, flags: u64, data: Option<&CStr>) -> io::Result<()> {
    let fs = fstype.map_or(std::ptr::null(), |f| f.as_ptr());
    let d = data.map_or(std::ptr::null(), |d| d.as_ptr().cast::<libc::c_void>());
    // SAFETY: all pointers are NUL-terminated strings that outlive the call, or null.
    cvt_i(unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fs, flags as libc::c_ulong, d) }).map(drop)
}

/// The interface flags of network device `name` (`ioctl(SIOCGIFFLAGS)`), in the calling
/// thread's network namespace.
pub fn link_flags(name: &str) -> io::Result<u32> {
    let (sock, mut req) = ifreq(name)?;
    // SAFETY: `req` is a valid ifreq with a NUL-terminated name; the kernel fills ifru_flags.
    cvt_i(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: SIOCGIFFLAGS wrote the flags member of the union.
    Ok(unsafe { req.ifr_ifru.ifru_flags } as u16 as u32)
}

/// Set the up flag of network device `name` (`ioctl(SIOCSIFFLAGS)`), other flags unchanged.
pub fn link_set_up(name: &str, up: bool) -> io::Result<()> {
    let (sock, mut req) = ifreq(name)?;
    // SAFETY: as in link_flags.
    cvt_i(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    // SAFETY: the flags member was just written by the kernel.
    let mut flags = unsafe { req.ifr_ifru.ifru_flags };
    if up {
        flags |= libc::IFF_UP as libc::c_short;
    } else {
        flags &= !(libc::IFF_UP as libc::c_short);
    }
    req.ifr_ifru.ifru_flags = flags;
    // SAFETY: a valid ifreq carrying the name and the new flags.
    cvt_i(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) }).map(drop)
}

/// The id the calling thread's network namespace gives the network namespace `target`
/// (`RTM_GETNSID`, what `ip link` prints as a device's `link-netnsid`); None when it gave it
/// none (no device or socket of this namespace points there).
pub fn netns_id(target: BorrowedFd<'_>) -> io::Result<Option<i32>> {
    const RTM_GETNSID: u16 = 90;
    const RTM_NEWNSID: u16 = 88;
    const NETNSA_NSID: u16 = 1;
    const NETNSA_FD: u16 = 3;
    const NLMSG_ERROR: u16 = 2;
    // SAFETY: integer arguments.
    let nl =
        cvt_i(unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) })?;
    // SAFETY: the kernel just created this fd for us; we are its only owner.
    let nl = unsafe { OwnedFd::from_raw_fd(nl) };
    // nlmsghdr (16), rtgenmsg padded to 4, then the attribute NETNSA_FD (4 + u32).
    let len: u32 = 16 + 4 + 8;
    let mut req = Vec::with_capacity(len as usize);
    req.extend_from_slice(&len.to_ne_bytes());
    req.extend_from_slice(&RTM_GETNSID.to_ne_bytes());
    req.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid
    req.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    req.extend_from_slice(&8u16.to_ne_bytes());
    req.extend_from_slice(&NETNSA_FD.to_ne_bytes());
    req.extend_from_slice(&(target.as_raw_fd() as u32).to_ne_bytes());
    // SAFETY: req is valid for reads of req.len() bytes.
    cvt_i(unsafe { libc::send(nl.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } as i32)?;
    let mut buf = vec![0u8; 4096];
    let n = loop {
        // SAFETY: buf is valid for writes of buf.len() bytes.
        let n = unsafe { libc::recv(nl.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let msg = &buf[..n];
    let len = crate::sockdiag::rd32(msg, 0).ok_or_else(crate::sockdiag::bad)? as usize;
    let ty = msg.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]])).ok_or_else(crate::sockdiag::bad)?;
    if len < 16 || len > msg.len() {
        return Err(crate::sockdiag::bad());
    }
    let body = &msg[16..len];
    match ty {
        NLMSG_ERROR => {
            let errno = crate::sockdiag::rd32(body, 0).ok_or_else(crate::sockdiag::bad)? as i32;
            Err(io::Error::from_raw_os_error(-errno))
        }
        RTM_NEWNSID => {
            for (t, v) in crate::sockdiag::attrs(body, 4)? {
                if t == NETNSA_NSID {
                    let id = crate::sockdiag::rd32(v, 0).ok_or_else(crate::sockdiag::bad)? as i32;
                    return Ok((id >= 0).then_some(id));
                }
            }
            Ok(None)
        }
        _ => Err(crate::sockdiag::bad()),
    }
}

fn ifreq(name: &str) -> io::Result<(OwnedFd, libc::ifreq)> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: socket takes integers; the result is a new fd we own.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) } as libc::c_long)?;
    // SAFETY: fd was just returned by socket() and is owned by nobody else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok((sock, req))
}

/// `clock_gettime(2)` in nanoseconds, in the caller's time namespace.
pub fn clock_ns(clock: libc::clockid_t) -> io::Result<i128> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer.
    cvt_i(unsafe { libc::clock_gettime(clock, &mut ts) })?;
    Ok(ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128)
}
