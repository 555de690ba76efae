//! AF_PACKET and AF_NETLINK sockets: their addresses (`sockaddr_ll`, `sockaddr_nl`), bind and
//! connect, and what only sock_diag tells of them (packet(7) rings, fanout and memberships;
//! a netlink dump in progress).

use crate::{cvt_i, sockdiag};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `getsockname(2)` or `getpeername(2)` (`peer`) as raw bytes of the address.
fn name(fd: BorrowedFd<'_>, peer: bool) -> io::Result<Vec<u8>> {
    // SAFETY: sockaddr_storage is plain integers; all-zero is valid.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = (&mut st as *mut libc::sockaddr_storage).cast::<libc::sockaddr>();
    // SAFETY: st is valid for writes of len bytes; len is in/out.
    let r = unsafe {
        if peer {
            libc::getpeername(fd.as_raw_fd(), p, &mut len)
        } else {
            libc::getsockname(fd.as_raw_fd(), p, &mut len)
        }
    };
    cvt_i(r)?;
    // SAFETY: st is at least `len` (capped at its size) initialised bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts((&st as *const libc::sockaddr_storage).cast::<u8>(), (len as usize).min(128))
    };
    Ok(bytes.to_vec())
}

fn bind_raw(fd: BorrowedFd<'_>, addr: &[u8], connect: bool) -> io::Result<()> {
    // SAFETY: addr is valid for reads of addr.len() bytes, which is what the kernel reads.
    let r = unsafe {
        let p = addr.as_ptr().cast::<libc::sockaddr>();
        if connect {
            libc::connect(fd.as_raw_fd(), p, addr.len() as libc::socklen_t)
        } else {
            libc::bind(fd.as_raw_fd(), p, addr.len() as libc::socklen_t)
        }
    };
    cvt_i(r).map(drop)
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    b.get(o..o + 2).map_or(0, |s| u16::from_ne_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4).map_or(0, |s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

/// A packet socket's binding (`sockaddr_ll`): its protocol (ethertype, host order) and
/// interface index (0: every interface).
pub fn packet_name(fd: BorrowedFd<'_>) -> io::Result<(u16, i32)> {
    let b = name(fd, false)?;
    Ok((u16::from_be(u16_at(&b, 2)), u32_at(&b, 4) as i32))
}

/// `bind(2)` a packet socket to `protocol` (ethertype, host order) on interface `ifindex`.
pub fn packet_bind(fd: BorrowedFd<'_>, protocol: u16, ifindex: i32) -> io::Result<()> {
    let mut a = [0u8; 20];
    a[0..2].copy_from_slice(&(libc::AF_PACKET as u16).to_ne_bytes());
    a[2..4].copy_from_slice(&protocol.to_be().to_ne_bytes());
    a[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    bind_raw(fd, &a, false)
}

/// One membership of a packet socket (`packet_diag_mclist`): PACKET_MR_* `kind` on
/// `ifindex`, its address, taken `count` times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketMembership {
    pub ifindex: i32,
    pub kind: u16,
    pub address: Vec<u8>,
    pub count: u32,
}

/// What packet_diag tells of packet socket `ino`: (has an rx or tx ring, in a fanout group,
/// memberships); `None` if no such socket is listed.
pub fn packet_diag(ino: u64) -> io::Result<Option<(bool, bool, Vec<PacketMembership>)>> {
    const SHOW: u32 = 2 | 4 | 8; // PACKET_SHOW_MCLIST | RING_CFG | FANOUT
    let mut req = Vec::with_capacity(20);
    req.extend_from_slice(&[libc::AF_PACKET as u8, 0, 0, 0]);
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&SHOW.to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]); // no cookie
    let mut found = None;
    sockdiag::dump(&req, |body| {
        // struct packet_diag_msg (16 bytes, pdiag_ino at 4), then attributes.
        if found.is_some() || sockdiag::rd32(body, 4).map(u64::from) != Some(ino) {
            return Ok(());
        }
        let (mut ring, mut fanout, mut mc) = (false, false, Vec::new());
        for (ty, v) in sockdiag::attrs(body, 16)? {
            match ty {
                2 | 3 => ring = true, // PACKET_DIAG_RX_RING, PACKET_DIAG_TX_RING
                4 => fanout = true,   // PACKET_DIAG_FANOUT
                1 => {
                    // PACKET_DIAG_MCLIST: packet_diag_mclist {index, count, type u16, alen u16,
                    // addr[32]} each.
                    for e in v.chunks_exact(44) {
                        let alen = (u16_at(e, 10) as usize).min(32);
                        mc.push(PacketMembership {
                            ifindex: u32_at(e, 0) as i32,
                            count: u32_at(e, 4),
                            kind: u16_at(e, 8),
                            address: e[12..12 + alen].to_vec(),
                        });
                    }
                }
                _ => {}
            }
        }
        found = Some((ring, fanout, mc));
        Ok(())
    })?;
    Ok(found)
}

/// `setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP)` with a `packet_mreq` for `m`.
pub fn packet_add_membership(fd: BorrowedFd<'_>, m: &PacketMembership) -> io::Result<()> {
    let mut v = [0u8; 16];
    v[0..4].copy_from_slice(&m.ifindex.to_ne_bytes());
    v[4..6].copy_from_slice(&m.kind.to_ne_bytes());
    let alen = m.address.len().min(8);
    v[6..8].copy_from_slice(&(alen as u16).to_ne_bytes());
    v[8..8 + alen].copy_from_slice(&m.address[..alen]);
    crate::sockopt::set_raw(fd, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &v)
}

/// A netlink socket's `sockaddr_nl` (port id, the first 32 groups) from getsockname, or of
/// its peer (destination port id and group) from getpeername.
pub fn netlink_name(fd: BorrowedFd<'_>, peer: bool) -> io::Result<(u32, u32)> {
    let b = name(fd, peer)?;
    Ok((u32_at(&b, 4), u32_at(&b, 8)))
}

fn nl_addr(portid: u32, groups: u32) -> [u8; 12] {
    let mut a = [0u8; 12];
    a[0..2].copy_from_slice(&(libc::AF_NETLINK as u16).to_ne_bytes());
    a[4..8].copy_from_slice(&portid.to_ne_bytes());
    a[8..12].copy_from_slice(&groups.to_ne_bytes());
    a
}

/// `bind(2)` a netlink socket to port id `portid` (0: let the kernel choose) and `groups`.
pub fn netlink_bind(fd: BorrowedFd<'_>, portid: u32, groups: u32) -> io::Result<()> {
    bind_raw(fd, &nl_addr(portid, groups), false)
}

/// `connect(2)` a netlink socket to port id `portid` and group `group`.
pub fn netlink_connect(fd: BorrowedFd<'_>, portid: u32, group: u32) -> io::Result<()> {
    bind_raw(fd, &nl_addr(portid, group), true)
}

/// Whether netlink_diag lists socket `ino` with a dump in progress (NDIAG_FLAG_CB_RUNNING):
/// `None` if it is not listed (an unbound socket).
pub fn netlink_dump_running(ino: u64) -> io::Result<Option<bool>> {
    let mut req = Vec::with_capacity(20);
    req.extend_from_slice(&[libc::AF_NETLINK as u8, 255, 0, 0]); // NDIAG_PROTO_ALL
    req.extend_from_slice(&0u32.to_ne_bytes());
    req.extend_from_slice(&8u32.to_ne_bytes()); // NDIAG_SHOW_FLAGS
    req.extend_from_slice(&[0xff; 8]);
    let mut found = None;
    sockdiag::dump(&req, |body| {
        // struct netlink_diag_msg (28 bytes, ndiag_ino at 16), then attributes.
        if found.is_none() && sockdiag::rd32(body, 16).map(u64::from) == Some(ino) {
            let flags = sockdiag::attrs(body, 28)?.into_iter().find(|(t, _)| *t == 4).map_or(0, |(_, v)| u32_at(v, 0));
            found = Some(flags & 1 != 0);
        }
        Ok(())
    })?;
    Ok(found)
}
