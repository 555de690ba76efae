//! tun/tap devices (linux/if_tun.h): what an fd of /dev/net/tun is attached to, and the ioctls
//! that make a device again and attach an fd to it (state/tun.rs), in the calling thread's
//! network namespace (the namespace of the process that opens /dev/net/tun is the one whose
//! devices its fd names).

use crate::cvt_i;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The clone device.
pub const TUN_PATH: &CStr = c"/dev/net/tun";

/// What `TUNGETIFF` tells of an fd: the device's name and flags (IFF_TUN or IFF_TAP,
/// IFF_NO_PI, IFF_VNET_HDR, IFF_MULTI_QUEUE, IFF_PERSIST; IFF_DETACH_QUEUE for a detached
/// queue, IFF_NOFILTER when the fd has no socket filter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunIff {
    pub name: String,
    pub flags: u32,
}

fn ifreq(name: &str, flags: u32) -> io::Result<libc::ifreq> {
    if name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags as u16 as libc::c_short;
    Ok(req)
}

/// `ioctl(TUNGETIFF)`: the device `fd` is attached to; None for an fd of /dev/net/tun never
/// attached (EBADFD).
pub fn get_iff(fd: BorrowedFd<'_>) -> io::Result<Option<TunIff>> {
    let mut req = ifreq("", 0)?;
    // SAFETY: a valid ifreq the kernel fills (name and flags).
    match cvt_i(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF, &mut req) }) {
        Err(e) if e.raw_os_error() == Some(libc::EBADFD) => return Ok(None),
        r => r?,
    };
    let name: Vec<u8> = req.ifr_name.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    // SAFETY: TUNGETIFF wrote the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags } as u16 as u32;
    Ok(Some(TunIff { name: String::from_utf8_lossy(&name).into_owned(), flags }))
}

fn get_int(fd: BorrowedFd<'_>, req: libc::Ioctl) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    // SAFETY: the ioctls given here write one int.
    cvt_i(unsafe { libc::ioctl(fd.as_raw_fd(), req, &mut v) })?;
    Ok(v)
}

fn set_int(fd: BorrowedFd<'_>, req: libc::Ioctl, v: i32) -> io::Result<()> {
    let v: libc::c_int = v;
    // SAFETY: the ioctls given here read one int.
    cvt_i(unsafe { libc::ioctl(fd.as_raw_fd(), req, &v) }).map(drop)
}

/// `ioctl(TUNGETVNETHDRSZ)`: the size of the virtio header the device's fds read and write.
pub fn vnet_hdr_sz(fd: BorrowedFd<'_>) -> io::Result<i32> {
    get_int(fd, libc::TUNGETVNETHDRSZ)
}

/// `ioctl(TUNGETSNDBUF)`: the device's send buffer.
pub fn sndbuf(fd: BorrowedFd<'_>) -> io::Result<i32> {
    get_int(fd, libc::TUNGETSNDBUF)
}

/// `ioctl(TUNGETVNETLE)`: whether the virtio header is little-endian whatever the machine.
pub fn vnet_le(fd: BorrowedFd<'_>) -> io::Result<bool> {
    get_int(fd, libc::TUNGETVNETLE).map(|v| v != 0)
}

/// `ioctl(TUNGETDEVNETNS)`: the network namespace of the device `fd` is attached to.
pub fn dev_netns(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: TUNGETDEVNETNS takes no argument and returns a new fd we own.
    let ns = cvt_i(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETDEVNETNS) })?;
    // SAFETY: ns was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(ns) })
}

/// Open `path` (/dev/net/tun) with `open_flags` (O_CLOEXEC added) and attach the fd to device `name`
/// with `flags` (`TUNSETIFF`), making the device if there is none of that name: in the calling
/// thread's network namespace.
pub fn attach(path: &CStr, name: &str, flags: u32, open_flags: i32) -> io::Result<OwnedFd> {
    let fd = open(path, open_flags)?;
    let req = ifreq(name, flags)?;
    // SAFETY: a valid ifreq with a NUL-terminated name and the flags; the kernel writes the name back.
    cvt_i(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &req) })?;
    Ok(fd)
}

/// Open `path` (/dev/net/tun) with `open_flags` (O_CLOEXEC added), attached to nothing.
pub fn open(path: &CStr, open_flags: i32) -> io::Result<OwnedFd> {
    crate::process::open_raw(path, (open_flags & !libc::O_CREAT) | libc::O_CLOEXEC, 0)
}

/// Make the persistent device `name` with `flags` (`TUNSETIFF`), index `ifindex` if not 0
/// (`TUNSETIFINDEX`), owner and group if given (`TUNSETOWNER`, `TUNSETGROUP`), in the calling
/// thread's network namespace.
pub fn create(name: &str, flags: u32, ifindex: u32, owner: Option<u32>, group: Option<u32>) -> io::Result<()> {
    let fd = open(TUN_PATH, libc::O_RDWR)?;
    if ifindex != 0 {
        set_int(fd.as_fd(), libc::TUNSETIFINDEX, ifindex as i32)?;
    }
    let req = ifreq(name, flags)?;
    // SAFETY: as in attach.
    cvt_i(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &req) })?;
    if let Some(u) = owner {
        // SAFETY: TUNSETOWNER takes the uid as the argument itself.
        cvt_i(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOWNER, u as libc::c_ulong) })?;
    }
    if let Some(g) = group {
        // SAFETY: TUNSETGROUP takes the gid as the argument itself.
        cvt_i(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETGROUP, g as libc::c_ulong) })?;
    }
    set_persist(fd.as_fd(), true)
}

/// `ioctl(TUNSETPERSIST)`: whether the device `fd` is attached to outlives its last fd.
pub fn set_persist(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    // SAFETY: TUNSETPERSIST takes the value as the argument itself.
    cvt_i(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, on as libc::c_ulong) }).map(drop)
}

/// `ioctl(TUNSETVNETHDRSZ)`.
pub fn set_vnet_hdr_sz(fd: BorrowedFd<'_>, size: i32) -> io::Result<()> {
    set_int(fd, libc::TUNSETVNETHDRSZ, size)
}

/// `ioctl(TUNSETSNDBUF)`.
pub fn set_sndbuf(fd: BorrowedFd<'_>, size: i32) -> io::Result<()> {
    set_int(fd, libc::TUNSETSNDBUF, size)
}

/// `ioctl(TUNSETVNETLE)`.
pub fn set_vnet_le(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    set_int(fd, libc::TUNSETVNETLE, on as i32)
}

/// `ioctl(TUNSETQUEUE, IFF_DETACH_QUEUE)`: the queue of `fd` (of a multi-queue device) takes
/// no packets until attached again.
pub fn detach_queue(fd: BorrowedFd<'_>) -> io::Result<()> {
    let req = ifreq("", libc::IFF_DETACH_QUEUE as u32)?;
    // SAFETY: a valid ifreq carrying the flag.
    cvt_i(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETQUEUE, &req) }).map(drop)
}

/// `ioctl(TUNGETFILTER)`: the length of the socket filter attached to the tap device `fd` is
/// attached to (`TUNATTACHFILTER`); 0 for none, or a tun device (which takes none).
pub fn filter_len(fd: BorrowedFd<'_>) -> io::Result<u16> {
    let mut prog = libc::sock_fprog { len: 0, filter: std::ptr::null_mut() };
    // SAFETY: a valid sock_fprog the kernel overwrites with the device's (length and pointer).
    match cvt_i(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETFILTER, &mut prog) }) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok(0),
        r => r?,
    };
    Ok(prog.len)
}
