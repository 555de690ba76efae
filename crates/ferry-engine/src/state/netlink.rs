//! AF_NETLINK sockets (netlink(7)): protocol, port id, multicast groups, connected peer,
//! options and classic filter.
//!
//! Dump: through a `pidfd_getfd` copy, getsockname gives the port id (0 for a socket never
//! bound), NETLINK_LIST_MEMBERSHIPS every group joined, getpeername the destination of a
//! connected socket; options are compared with a fresh socket (state/sockopts.rs). Refused by
//! name: messages waiting to be read (a kernel answer or event cannot be put back), a dump in
//! progress (netlink_diag's NDIAG_FLAG_CB_RUNNING: the kernel holds the rest of the answer for
//! this socket), and protocols whose kernel side keeps state bound to the socket's port id
//! (audit's registered daemon, netfilter queue and log bindings, ...): ferry carries only
//! NETLINK_ROUTE, NETLINK_USERSOCK, NETLINK_SOCK_DIAG, NETLINK_GENERIC and
//! NETLINK_KOBJECT_UEVENT, whose kernel side answers requests and sends events but remembers
//! nothing about the socket besides its groups.
//!
//! Restore (in ferry, before the fork): socket, options, filter, bind to the same port id (the
//! old socket is gone, so it is free unless another process took it meanwhile: then the
//! restore fails naming it), the groups joined again (NETLINK_ADD_MEMBERSHIP), connect.

use crate::error::{Ctx, Error};
use crate::state::sockopts;
use ferry_image::{File, NetlinkSocket};
use ferry_sys::pktnl;
use ferry_sys::sockopt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

const SOL_NETLINK: i32 = 270;
const NETLINK_ADD_MEMBERSHIP: i32 = 1;
const NETLINK_LIST_MEMBERSHIPS: i32 = 9;

/// The SOL_NETLINK options compared with a fresh socket.
const OPTS: &[(i32, i32, &str)] = &[
    (SOL_NETLINK, 3, "NETLINK_PKTINFO"),
    (SOL_NETLINK, 4, "NETLINK_BROADCAST_ERROR"),
    (SOL_NETLINK, 5, "NETLINK_NO_ENOBUFS"),
    (SOL_NETLINK, 8, "NETLINK_LISTEN_ALL_NSID"),
    (SOL_NETLINK, 10, "NETLINK_CAP_ACK"),
    (SOL_NETLINK, 11, "NETLINK_EXT_ACK"),
    (SOL_NETLINK, 12, "NETLINK_GET_STRICT_CHK"),
];

/// The protocols carried (see the module doc), with their names.
const CARRIED: &[(i32, &str)] = &[
    (0, "NETLINK_ROUTE"),
    (2, "NETLINK_USERSOCK"),
    (4, "NETLINK_SOCK_DIAG"),
    (15, "NETLINK_KOBJECT_UEVENT"),
    (16, "NETLINK_GENERIC"),
];

/// Names of the protocols refused, for the error.
fn protocol_name(p: i32) -> String {
    let known = [
        (1, "NETLINK_UNUSED"),
        (5, "NETLINK_NFLOG"),
        (6, "NETLINK_XFRM"),
        (7, "NETLINK_SELINUX"),
        (8, "NETLINK_ISCSI"),
        (9, "NETLINK_AUDIT"),
        (10, "NETLINK_FIB_LOOKUP"),
        (11, "NETLINK_CONNECTOR"),
        (12, "NETLINK_NETFILTER"),
        (13, "NETLINK_IP6_FW"),
        (14, "NETLINK_DNRTMSG"),
        (17, "NETLINK_SCSITRANSPORT"),
        (18, "NETLINK_ECRYPTFS"),
        (19, "NETLINK_RDMA"),
        (20, "NETLINK_CRYPTO"),
        (21, "NETLINK_SMC"),
    ];
    CARRIED
        .iter()
        .chain(known.iter())
        .find(|(n, _)| *n == p)
        .map_or_else(|| format!("netlink protocol {p}"), |(_, name)| name.to_string())
}

/// One line for `inspect` and errors: "netlink NETLINK_ROUTE port 1234 groups 1,33".
pub fn describe(s: &NetlinkSocket) -> String {
    let mut d = format!("netlink {} port {}", protocol_name(s.protocol), s.portid);
    let groups: Vec<String> = groups_of(&s.groups).map(|g| g.to_string()).collect();
    if !groups.is_empty() {
        d += &format!(" groups {}", groups.join(","));
    }
    if s.dst_portid != 0 || s.dst_group != 0 {
        d += &format!(" -> port {} group {}", s.dst_portid, s.dst_group);
    }
    d
}

/// The group numbers (from 1) set in the membership words.
fn groups_of(words: &[u32]) -> impl Iterator<Item = u32> + '_ {
    words
        .iter()
        .enumerate()
        .flat_map(|(i, w)| (0..32).filter(move |b| w & (1 << b) != 0).map(move |b| 32 * i as u32 + b + 1))
}

/// If `sock` (a copy of fd `fd` of `pid`) is an AF_NETLINK socket, fill `f` with it.
pub fn collect(pid: i32, fd: i32, link: &str, sock: BorrowedFd<'_>, f: &mut File) -> Result<bool, Error> {
    let obj = || format!("pid {pid} fd {fd} ({link})");
    let family = sockopt::get_int(sock, libc::SOL_SOCKET, libc::SO_DOMAIN).ctx(obj)?;
    if family != libc::AF_NETLINK {
        return Ok(false);
    }
    let unsupported = |what: String| Error::Unsupported { pid, what: format!("fd {fd}: {what}") };
    let sock_type = sockopt::get_int(sock, libc::SOL_SOCKET, libc::SO_TYPE).ctx(obj)?;
    let protocol = sockopt::get_int(sock, libc::SOL_SOCKET, libc::SO_PROTOCOL).ctx(obj)?;
    let st = ferry_sys::process::fstat(sock).ctx(|| format!("{}: fstat", obj()))?;
    let (portid, _) = pktnl::netlink_name(sock, false).ctx(|| format!("{}: getsockname", obj()))?;
    let (dst_portid, dst_group) = pktnl::netlink_name(sock, true).ctx(|| format!("{}: getpeername", obj()))?;
    let words = sockopt::get_raw(sock, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, 128)
        .ctx(|| format!("{}: NETLINK_LIST_MEMBERSHIPS", obj()))?;
    let mut groups: Vec<u32> = words.chunks_exact(4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]])).collect();
    while groups.last() == Some(&0) {
        groups.pop();
    }
    let mut s = NetlinkSocket {
        sock_type,
        protocol,
        portid,
        groups,
        dst_portid,
        dst_group,
        uid: st.st_uid,
        ..Default::default()
    };
    if !CARRIED.iter().any(|(p, _)| *p == protocol) {
        return Err(unsupported(format!(
            "{} (its kernel side keeps state bound to the socket that cannot be read back)",
            describe(&s)
        )));
    }
    let queued = sockopts::queued(sock).ctx(|| format!("{}: SO_MEMINFO", obj()))?;
    if queued > 0 {
        return Err(unsupported(format!(
            "{} with messages waiting to be read ({queued} bytes; they cannot be put back: dump again once it is drained)",
            describe(&s)
        )));
    }
    if pktnl::netlink_dump_running(st.st_ino).ctx(|| format!("{}: netlink_diag", obj()))? == Some(true) {
        return Err(unsupported(format!(
            "{} in the middle of a dump (the kernel holds the rest of its answer)",
            describe(&s)
        )));
    }
    (s.filter, s.filter_locked) =
        crate::state::sockfilter::collect(sock).map_err(|what| unsupported(format!("{} with {what}", describe(&s))))?;
    let fresh = ferry_sys::inet::socket(libc::AF_NETLINK, sock_type, protocol)
        .ctx(|| "cannot create a reference netlink socket".into())?;
    s.opts = sockopts::changed(sock, fresh.as_fd(), OPTS).map_err(|e| match e {
        Error::Sys { object, source } => Error::Sys { object: format!("{}: {object}", obj()), source },
        other => other,
    })?;
    f.describe = format!("{link} {}", describe(&s));
    f.kind = ferry_image::FileKind::NetlinkSocket as i32;
    f.netlink = Some(s);
    Ok(true)
}

/// Recreate the socket in ferry: options, filter, port id, groups, peer, status flags.
pub fn prepare(obj: &str, f: &File) -> Result<OwnedFd, Error> {
    let s = f
        .netlink
        .as_ref()
        .ok_or_else(|| Error::Invalid { object: obj.into(), what: "no netlink socket record".into() })?;
    let sock = ferry_sys::inet::socket_owned_by(libc::AF_NETLINK, s.sock_type, s.protocol, s.uid)
        .ctx(|| format!("{obj}: cannot create the netlink socket"))?;
    sockopts::apply(obj, sock.as_fd(), &s.opts)?;
    crate::state::sockfilter::restore(sock.as_fd(), &s.filter, s.filter_locked)
        .ctx(|| format!("{obj}: cannot attach its socket filter"))?;
    if s.portid != 0 {
        pktnl::netlink_bind(sock.as_fd(), s.portid, 0).map_err(|e| match e.raw_os_error() {
            Some(libc::EADDRINUSE) => Error::Invalid {
                object: obj.into(),
                what: format!("cannot bind to netlink port {}: another socket has it", s.portid),
            },
            _ => Error::Sys { object: format!("{obj}: cannot bind to netlink port {}", s.portid), source: e },
        })?;
    }
    for g in groups_of(&s.groups) {
        sockopt::set_int(sock.as_fd(), SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, g as i32)
            .ctx(|| format!("{obj}: cannot join netlink group {g}"))?;
    }
    if s.dst_portid != 0 || s.dst_group != 0 {
        pktnl::netlink_connect(sock.as_fd(), s.dst_portid, s.dst_group)
            .ctx(|| format!("{obj}: cannot connect to port {} group {}", s.dst_portid, s.dst_group))?;
    }
    ferry_sys::process::set_status_flags(sock.as_fd(), f.flags as i32).ctx(|| obj.to_string())?;
    Ok(sock)
}
