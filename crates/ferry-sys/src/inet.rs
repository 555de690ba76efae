//! Sockets: creation, socket options, addresses (`std::net::SocketAddr` in, `sockaddr_in`/
//! `sockaddr_in6` to the kernel), bind, listen, connect, and a few ioctls.

use crate::{cvt_i, sockdiag};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `socket(2)` with `SOCK_CLOEXEC`.
pub fn socket(domain: i32, ty: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments.
    let fd = cvt_i(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) })?;
    // SAFETY: the kernel just created this fd for us; we are its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `socket(2)` created with filesystem uid `uid` (`setfsuid(2)` around the call), so that the
/// socket belongs to `uid` (its inode owner and `sk_uid`, which SO_REUSEPORT groups and
/// netfilter's owner match use) although the caller is root. Affects only the calling thread.
pub fn socket_owned_by(domain: i32, ty: i32, protocol: i32, uid: u32) -> io::Result<OwnedFd> {
    // SAFETY: integer argument; setfsuid(-1) only queries.
    let old = unsafe { libc::setfsuid(u32::MAX) } as u32;
    // SAFETY: integer argument.
    unsafe { libc::setfsuid(uid) };
    let r = socket(domain, ty, protocol);
    // SAFETY: integer argument; restores the caller's fsuid.
    unsafe { libc::setfsuid(old) };
    r
}

fn from_storage(st: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match st.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large and
            // aligned enough for.
            let a = unsafe { &*(st as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(st as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                u32::from_be(a.sin6_flowinfo),
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// A `sockaddr_storage` holding `addr`, and the length of the part that matters.
fn to_storage(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain integers; all-zero is valid.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut st as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>(), sin) };
            (st, std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t)
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut st as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>(), sin6) };
            (st, std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t)
        }
    }
}

/// `getsockname(2)` — the local address of an AF_INET/AF_INET6 socket (None for others).
pub fn sock_name(fd: BorrowedFd<'_>) -> io::Result<Option<SocketAddr>> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `st` is valid for writes of `len` bytes.
    cvt_i(unsafe { libc::getsockname(fd.as_raw_fd(), (&mut st as *mut libc::sockaddr_storage).cast(), &mut len) })?;
    Ok(from_storage(&st))
}

/// `getpeername(2)` — the peer of a connected AF_INET/AF_INET6 socket; None when not connected.
pub fn peer_name(fd: BorrowedFd<'_>) -> io::Result<Option<SocketAddr>> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `st` is valid for writes of `len` bytes.
    match cvt_i(unsafe { libc::getpeername(fd.as_raw_fd(), (&mut st as *mut libc::sockaddr_storage).cast(), &mut len) })
    {
        Ok(_) => Ok(from_storage(&st)),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `bind(2)` to an IPv4 or IPv6 address.
pub fn bind(fd: BorrowedFd<'_>, addr: &SocketAddr) -> io::Result<()> {
    let (st, len) = to_storage(addr);
    // SAFETY: `st` holds a valid sockaddr of `len` bytes.
    cvt_i(unsafe { libc::bind(fd.as_raw_fd(), (&st as *const libc::sockaddr_storage).cast(), len) }).map(drop)
}

/// `connect(2)` to an IPv4 or IPv6 address (for datagram sockets: set the default peer).
pub fn connect(fd: BorrowedFd<'_>, addr: &SocketAddr) -> io::Result<()> {
    let (st, len) = to_storage(addr);
    // SAFETY: `st` holds a valid sockaddr of `len` bytes.
    cvt_i(unsafe { libc::connect(fd.as_raw_fd(), (&st as *const libc::sockaddr_storage).cast(), len) }).map(drop)
}

/// `listen(2)`.
pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    // SAFETY: integer arguments.
    cvt_i(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map(drop)
}

/// `ioctl(SIOCINQ)` — for TCP the unread bytes, for UDP the size of the next datagram.
pub fn inq(fd: BorrowedFd<'_>) -> io::Result<i32> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCINQ writes one int to the pointer.
    cvt_i(unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) })?;
    Ok(n)
}

/// `ioctl(SIOCOUTQ)` — bytes in a TCP socket's send queue (sent but unacknowledged, or unsent).
pub fn outq(fd: BorrowedFd<'_>) -> io::Result<i32> {
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int to the pointer.
    cvt_i(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut n) })?;
    Ok(n)
}

/// `recv(2)` with `flags` (e.g. MSG_PEEK | MSG_DONTWAIT) into `buf`; returns the byte count.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8], flags: i32) -> io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes of writes.
    let r = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// `send(2)` of `buf` with `flags`; returns the byte count.
pub fn send(fd: BorrowedFd<'_>, buf: &[u8], flags: i32) -> io::Result<usize> {
    // SAFETY: buf is valid for buf.len() bytes of reads.
    let r = unsafe { libc::send(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), flags) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// `setsockopt(2)` of an `int` option on one of the caller's own fds by number (the copies
/// ferry keeps of sockets it handed to restored processes).
pub fn set_int_on(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: a valid int option value; an fd number that is not a socket fails with ENOTSOCK/EBADF.
    cvt_i(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        )
    })
    .map(drop)
}

/// `setsockopt(fd, IPPROTO_TCP, TCP_REPAIR, 0)` on one of the caller's own fds by number. The
/// kernel also clears SO_REUSEADDR then (`sk_reuse`, which repair mode forces): the caller
/// sets it again if the socket had it.
pub fn tcp_repair_off(fd: RawFd) -> io::Result<()> {
    set_int_on(fd, libc::IPPROTO_TCP, 19, 0)
}

/// `INET_DIAG_SHUTDOWN` (linux/inet_diag.h): one byte, the socket's `sk_shutdown`.
const INET_DIAG_SHUTDOWN: u16 = 8;

/// The `sk_shutdown` bits (1: no more reading, 2: no more writing) of the `family`/`protocol`
/// socket with inode `ino` of this network namespace, from a `NETLINK_SOCK_DIAG` dump of the
/// sockets of that kind (sock_diag(7)); `None` when no such socket is listed.
pub fn diag_shutdown(family: i32, protocol: i32, ino: u64) -> io::Result<Option<u8>> {
    // inet_diag_req_v2 (8 bytes + a zeroed inet_diag_sockid of 48: no filter)
    let mut req = Vec::with_capacity(56);
    req.extend_from_slice(&[family as u8, protocol as u8, 0, 0]);
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // all states
    req.extend_from_slice(&[0u8; 48]);
    let mut found = None;
    sockdiag::dump(&req, |body| {
        // struct inet_diag_msg (72 bytes, idiag_inode at 68), then attributes.
        if found.is_none() && sockdiag::rd32(body, 68).is_some_and(|i| u64::from(i) == ino) {
            let attrs = sockdiag::attrs(body, 72)?;
            let sd = attrs.iter().rev().find(|(t, _)| *t == INET_DIAG_SHUTDOWN);
            found = Some(sd.and_then(|(_, v)| v.first().copied()).unwrap_or(0));
        }
        Ok(())
    })?;
    Ok(found)
}

/// `shutdown(2)`.
pub fn shutdown(fd: BorrowedFd<'_>, how: i32) -> io::Result<()> {
    // SAFETY: integer arguments.
    cvt_i(unsafe { libc::shutdown(fd.as_raw_fd(), how) }).map(drop)
}

/// `poll(2)` of one fd with a zero timeout: the `revents` for `events` right now.
pub fn poll_now(fd: BorrowedFd<'_>, events: i16) -> io::Result<i16> {
    let mut p = libc::pollfd { fd: fd.as_raw_fd(), events, revents: 0 };
    // SAFETY: one valid pollfd, count 1, no timeout.
    cvt_i(unsafe { libc::poll(&mut p, 1, 0) })?;
    Ok(p.revents)
}

fn csum_add(mut sum: u32, data: &[u8]) -> u32 {
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    sum
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Send one TCP segment with no data from `src` to `dst` through a raw socket that writes
/// the IP header itself (IP_HDRINCL; IPPROTO_RAW for IPv6), so that its source is `src`
/// whatever it is: `seq`, `ack`, TCP `flags` (FIN 0x01, ACK 0x10 ...), `window`. An IPv4
/// address mapped in IPv6 (`::ffff:a.b.c.d`, a dual-stack socket's IPv4 peer) goes as IPv4.
/// `mark` (SO_MARK, needs CAP_NET_ADMIN) lets netfilter tell the segment apart. Needs
/// CAP_NET_RAW.
pub fn send_tcp_segment(
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    mark: Option<u32>,
) -> io::Result<()> {
    let unmap = |a: SocketAddr| match a {
        SocketAddr::V6(s) => match s.ip().to_ipv4_mapped() {
            Some(ip) => SocketAddr::new(ip.into(), s.port()),
            None => a,
        },
        v4 => v4,
    };
    let (src, dst) = (unmap(src), unmap(dst));
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&window.to_be_bytes());
    let proto = libc::IPPROTO_TCP as u8;
    let (raw, pkt, to) = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            let raw = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP)?;
            crate::sockopt::set_int(std::os::fd::AsFd::as_fd(&raw), libc::IPPROTO_IP, libc::IP_HDRINCL, 1)?;
            let mut pseudo = Vec::with_capacity(12);
            pseudo.extend_from_slice(&s.ip().octets());
            pseudo.extend_from_slice(&d.ip().octets());
            pseudo.extend_from_slice(&[0, proto, 0, 20]);
            let sum = csum_fold(csum_add(csum_add(0, &pseudo), &tcp));
            tcp[16..18].copy_from_slice(&sum.to_be_bytes());
            let mut pkt = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, proto, 0, 0];
            pkt.extend_from_slice(&s.ip().octets());
            pkt.extend_from_slice(&d.ip().octets());
            let ip_sum = csum_fold(csum_add(0, &pkt));
            pkt[10..12].copy_from_slice(&ip_sum.to_be_bytes());
            (raw, pkt, dst)
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            // An IPPROTO_RAW socket of AF_INET6 takes the whole IPv6 header (IPV6_HDRINCL).
            let raw = socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
            let mut pseudo = Vec::with_capacity(40);
            pseudo.extend_from_slice(&s.ip().octets());
            pseudo.extend_from_slice(&d.ip().octets());
            pseudo.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, proto]);
            let sum = csum_fold(csum_add(csum_add(0, &pseudo), &tcp));
            tcp[16..18].copy_from_slice(&sum.to_be_bytes());
            // version 6, no traffic class or flow label, payload 20 bytes, hop limit 64.
            let mut pkt = vec![0x60, 0, 0, 0, 0, 20, proto, 64];
            pkt.extend_from_slice(&s.ip().octets());
            pkt.extend_from_slice(&d.ip().octets());
            (raw, pkt, SocketAddr::V6(std::net::SocketAddrV6::new(*d.ip(), 0, 0, d.scope_id())))
        }
        _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "addresses of two families")),
    };
    if let Some(m) = mark {
        crate::sockopt::set_int(std::os::fd::AsFd::as_fd(&raw), libc::SOL_SOCKET, libc::SO_MARK, m as i32)?;
    }
    let mut pkt = pkt;
    pkt.extend_from_slice(&tcp);
    let (st, len) = to_storage(&to);
    // SAFETY: pkt is valid for reads of pkt.len() bytes; st holds a sockaddr of `len` bytes.
    let r = unsafe {
        libc::sendto(
            raw.as_raw_fd(),
            pkt.as_ptr().cast(),
            pkt.len(),
            0,
            (&st as *const libc::sockaddr_storage).cast::<libc::sockaddr>(),
            len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
