//! TCP and UDP sockets over IPv4 and IPv6 that are not connections: listeners, bound or
//! connected UDP sockets, and sockets that are only created (or only bound), so that a
//! server comes back ready to accept. Raw sockets (SOCK_RAW, any IP protocol) and ICMP "ping"
//! sockets (SOCK_DGRAM with IPPROTO_ICMP/ICMPV6) go the same way as UDP sockets: address (a
//! ping socket's ident is its port; a raw socket's port is its protocol), peer, options,
//! filter, shutdown; their peer is read from /proc/PID/net/{raw,raw6,icmp,icmp6}, because
//! getpeername says ENOTCONN for one connected with port 0, the usual way.
//!
//! Everything is read from outside: ferry takes a copy of the socket with `pidfd_getfd` and
//! asks it with getsockopt/getsockname/getpeername. TCP_INFO gives the state, and for a
//! listener the length of its accept queue and its listen backlog (`tcpi_unacked` and
//! `tcpi_sacked`), which is what sock_diag's `idiag_rqueue`/`idiag_wqueue` report too, without
//! a netlink round trip per socket. Options are compared with a fresh socket of the same kind
//! created by ferry: only those the program changed go into the image, so restore changes
//! nothing the program left at its default (and a later sysctl change still applies).
//!
//! Restore creates the socket in ferry before forking (like every file) with its owner's uid
//! as filesystem uid (so it belongs to the same user: SO_REUSEPORT groups and netfilter's
//! owner match depend on it), sets the options,
//! binds it to the same address and port, and listens with the same backlog or, for UDP,
//! connects it to the same peer. A port taken by someone else meanwhile fails the restore
//! with the address named, before any process exists.
//!
//! Connections (ESTABLISHED and every other TCP state but LISTEN and CLOSE, including
//! connections waiting in a listener's accept queue) are refused unless `--tcp-established`
//! (SYN_SENT, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, CLOSING, LAST_ACK:
//! state/tcp_repair.rs):
//! they need TCP_REPAIR and belong to migration (`--skip-in-flight` drops the queued ones with a warning, as CRIU does;
//! `restore --tcp-close` drops the kept ones at restore, `close_connections`). With
//! `dump --tcp-close` they are dropped instead, like CRIU's
//! `--tcp-close`: the connection socket comes back as a fresh, unbound, unconnected socket of
//! the same family and type, so reads fail with ENOTCONN, writes with EPIPE, and poll reports
//! EPOLLHUP, as for a connection the peer reset; queued connections are simply gone (their
//! clients see a reset). Datagrams queued on a UDP socket are refused: their source
//! addresses cannot be put back (a datagram re-sent by ferry would come from ferry's
//! address), so ferry asks to dump again when the queue is empty rather than alter them.
//! Classic BPF filters are kept (state/sockfilter.rs); sockets with an eBPF one are refused.
//! Bytes corked on a UDP socket (UDP_CORK or MSG_MORE, not sent yet) are refused too, like
//! CRIU does: the kernel's pending frame cannot be rebuilt. The shutdown state of UDP sockets
//! and established connections is read with sock_diag and applied again. Established and
//! accepted connections get their options through the same `OPTS` comparison as listeners
//! (docs/ARCHITECTURE.md, "TCP and UDP sockets", lists what is not carried and why).
//!
//! Not carried (the kernel offers no way to read them per socket): multicast group
//! memberships (IP_ADD_MEMBERSHIP and friends) and half-open connections (SYN_RECV) of a
//! listener, whose clients' final ACK then meets the new listener without them (a reset, or
//! a SYN cookie).

use crate::error::{Ctx, Error};
use crate::state::tcp_repair;
use ferry_image::{File, InetSocket, SockOpt};
use ferry_sys::inet as net;
use ferry_sys::sockopt;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

const SO_MEMINFO: i32 = 55;
const SO_PEEK_OFF: i32 = 42;
const SO_RCVMARK: i32 = 75;
const TCP_TX_DELAY: i32 = 37;

const TCP_ESTABLISHED: u32 = 1;
const TCP_CLOSE: u32 = 7;
const TCP_LISTEN: u32 = 10;

fn state_name(state: u32) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// Which sockets an option applies to.
#[derive(Clone, Copy, PartialEq)]
enum Only {
    Any,
    Tcp,
    Udp,
    V4,
    V6,
    /// Raw sockets (SOCK_RAW) of either family.
    Raw,
}

/// SOL_RAW's ICMP_FILTER (linux/icmp.h): which ICMP types a raw IPPROTO_ICMP socket drops.
const SOL_RAW: i32 = 255;
const ICMP_FILTER: i32 = 1;
/// IPPROTO_ICMPV6's ICMP6_FILTER (linux/icmpv6.h), and IPV6_CHECKSUM (linux/in6.h).
const ICMP6_FILTER: i32 = 1;
const IPV6_CHECKSUM: i32 = 7;

/// The kinds of AF_INET/AF_INET6 sockets ferry carries.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Kind {
    Tcp,
    Udp,
    /// SOCK_RAW, any IP protocol.
    Raw,
    /// An ICMP "ping" socket: SOCK_DGRAM with IPPROTO_ICMP or IPPROTO_ICMPV6.
    Ping,
}

fn kind_of(sock_type: i32, protocol: i32) -> Option<Kind> {
    match (sock_type, protocol) {
        (libc::SOCK_STREAM, libc::IPPROTO_TCP) => Some(Kind::Tcp),
        (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => Some(Kind::Udp),
        (libc::SOCK_DGRAM, libc::IPPROTO_ICMP) | (libc::SOCK_DGRAM, libc::IPPROTO_ICMPV6) => Some(Kind::Ping),
        (libc::SOCK_RAW, _) => Some(Kind::Raw),
        _ => None,
    }
}

/// The options compared with a fresh socket (in the order restore sets them: SO_BUF_LOCK
/// after the buffer sizes, everything before bind).
const OPTS: &[(i32, i32, &str, Only)] = &[
    (libc::SOL_SOCKET, libc::SO_REUSEADDR, "SO_REUSEADDR", Only::Any),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT, "SO_REUSEPORT", Only::Any),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE, "SO_KEEPALIVE", Only::Any),
    (libc::SOL_SOCKET, libc::SO_BROADCAST, "SO_BROADCAST", Only::Any),
    (libc::SOL_SOCKET, libc::SO_OOBINLINE, "SO_OOBINLINE", Only::Any),
    (libc::SOL_SOCKET, libc::SO_PRIORITY, "SO_PRIORITY", Only::Any),
    (libc::SOL_SOCKET, libc::SO_MARK, "SO_MARK", Only::Any),
    (libc::SOL_SOCKET, libc::SO_RCVLOWAT, "SO_RCVLOWAT", Only::Any),
    (libc::SOL_SOCKET, libc::SO_LINGER, "SO_LINGER", Only::Any),
    (libc::SOL_SOCKET, libc::SO_RCVTIMEO, "SO_RCVTIMEO", Only::Any),
    (libc::SOL_SOCKET, libc::SO_SNDTIMEO, "SO_SNDTIMEO", Only::Any),
    (libc::SOL_SOCKET, libc::SO_BINDTODEVICE, "SO_BINDTODEVICE", Only::Any),
    (libc::SOL_SOCKET, libc::SO_PASSCRED, "SO_PASSCRED", Only::Any),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMP, "SO_TIMESTAMP", Only::Any),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, "SO_TIMESTAMPNS", Only::Any),
    (libc::SOL_SOCKET, libc::SO_TIMESTAMPING, "SO_TIMESTAMPING", Only::Any),
    (libc::SOL_SOCKET, libc::SO_RXQ_OVFL, "SO_RXQ_OVFL", Only::Any),
    (libc::SOL_SOCKET, libc::SO_BUSY_POLL, "SO_BUSY_POLL", Only::Any),
    (libc::SOL_SOCKET, libc::SO_ZEROCOPY, "SO_ZEROCOPY", Only::Any),
    (libc::IPPROTO_TCP, libc::TCP_NODELAY, "TCP_NODELAY", Only::Tcp),
    (libc::IPPROTO_TCP, libc::TCP_CORK, "TCP_CORK", Only::Tcp),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, "TCP_KEEPIDLE", Only::Tcp),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, "TCP_KEEPINTVL", Only::Tcp),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, "TCP_KEEPCNT", Only::Tcp),
    (libc::IPPROTO_TCP, libc::TCP_SYNCNT, "TCP_SYNCNT", Only::Tcp),
    (libc::IPPROTO_TCP, libc::TCP_LINGER2, "TCP_LINGER2", Only::Tcp),
    (libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, "TCP_DEFER_ACCEPT", Only::Tcp),
    (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT", Only::Tcp),
    (libc::IPPROTO_TCP, libc::TCP_FASTOPEN, "TCP_FASTOPEN", Only::Tcp),
    (libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT, "TCP_NOTSENT_LOWAT", Only::Tcp),
    (libc::IPPROTO_TCP, libc::TCP_CONGESTION, "TCP_CONGESTION", Only::Tcp),
    (libc::IPPROTO_TCP, libc::TCP_THIN_LINEAR_TIMEOUTS, "TCP_THIN_LINEAR_TIMEOUTS", Only::Tcp),
    (libc::IPPROTO_TCP, libc::TCP_SAVE_SYN, "TCP_SAVE_SYN", Only::Tcp),
    (libc::IPPROTO_TCP, libc::TCP_INQ, "TCP_INQ", Only::Tcp),
    (libc::IPPROTO_TCP, TCP_TX_DELAY, "TCP_TX_DELAY", Only::Tcp),
    (libc::IPPROTO_UDP, libc::UDP_CORK, "UDP_CORK", Only::Udp),
    (libc::SOL_SOCKET, SO_PEEK_OFF, "SO_PEEK_OFF", Only::Udp),
    (libc::SOL_SOCKET, SO_RCVMARK, "SO_RCVMARK", Only::Any),
    // Meaningful (the user's value) only before a connection: see `connection_only`.
    (libc::IPPROTO_TCP, libc::TCP_MAXSEG, "TCP_MAXSEG", Only::Tcp),
    (libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP, "TCP_WINDOW_CLAMP", Only::Tcp),
    (libc::IPPROTO_IP, libc::IP_TOS, "IP_TOS", Only::V4),
    (libc::IPPROTO_IP, libc::IP_TTL, "IP_TTL", Only::V4),
    (libc::IPPROTO_IP, libc::IP_PKTINFO, "IP_PKTINFO", Only::V4),
    (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, "IP_MTU_DISCOVER", Only::V4),
    (libc::IPPROTO_IP, libc::IP_RECVERR, "IP_RECVERR", Only::V4),
    (libc::IPPROTO_IP, libc::IP_RECVTTL, "IP_RECVTTL", Only::V4),
    (libc::IPPROTO_IP, libc::IP_RECVTOS, "IP_RECVTOS", Only::V4),
    (libc::IPPROTO_IP, libc::IP_FREEBIND, "IP_FREEBIND", Only::V4),
    (libc::IPPROTO_IP, libc::IP_TRANSPARENT, "IP_TRANSPARENT", Only::V4),
    (libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT, "IP_BIND_ADDRESS_NO_PORT", Only::V4),
    (libc::IPPROTO_IP, libc::IP_MULTICAST_TTL, "IP_MULTICAST_TTL", Only::V4),
    (libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP, "IP_MULTICAST_LOOP", Only::V4),
    (libc::IPPROTO_IP, libc::IP_RECVORIGDSTADDR, "IP_RECVORIGDSTADDR", Only::V4),
    (libc::IPPROTO_IP, libc::IP_MINTTL, "IP_MINTTL", Only::V4),
    (libc::IPPROTO_IP, libc::IP_NODEFRAG, "IP_NODEFRAG", Only::V4),
    (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, "IPV6_V6ONLY", Only::V6),
    (libc::IPPROTO_IPV6, libc::IPV6_TCLASS, "IPV6_TCLASS", Only::V6),
    (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS, "IPV6_UNICAST_HOPS", Only::V6),
    (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, "IPV6_MULTICAST_HOPS", Only::V6),
    (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP, "IPV6_MULTICAST_LOOP", Only::V6),
    (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER, "IPV6_MTU_DISCOVER", Only::V6),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVERR, "IPV6_RECVERR", Only::V6),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, "IPV6_RECVPKTINFO", Only::V6),
    (libc::IPPROTO_IPV6, libc::IPV6_TRANSPARENT, "IPV6_TRANSPARENT", Only::V6),
    (libc::IPPROTO_IPV6, libc::IPV6_FREEBIND, "IPV6_FREEBIND", Only::V6),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, "IPV6_RECVTCLASS", Only::V6),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT, "IPV6_RECVHOPLIMIT", Only::V6),
    (libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, "IPV6_DONTFRAG", Only::V6),
    (libc::IPPROTO_IPV6, libc::IPV6_AUTOFLOWLABEL, "IPV6_AUTOFLOWLABEL", Only::V6),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVORIGDSTADDR, "IPV6_RECVORIGDSTADDR", Only::V6),
    // Raw sockets (each asked of every raw socket; one of another protocol or family says
    // EOPNOTSUPP or ENOPROTOOPT and is skipped).
    (libc::IPPROTO_IP, libc::IP_HDRINCL, "IP_HDRINCL", Only::Raw),
    (SOL_RAW, ICMP_FILTER, "ICMP_FILTER", Only::Raw),
    (libc::IPPROTO_IPV6, IPV6_CHECKSUM, "IPV6_CHECKSUM", Only::Raw),
    (libc::IPPROTO_ICMPV6, ICMP6_FILTER, "ICMP6_FILTER", Only::Raw),
];

/// TCP options whose getsockopt value is the connection's, not the user's, once connected
/// (a connection's MSS comes back with TCP_REPAIR_OPTIONS; its window clamp is recomputed).
fn connection_only(level: i32, name: i32) -> bool {
    level == libc::IPPROTO_TCP && (name == libc::TCP_MAXSEG || name == libc::TCP_WINDOW_CLAMP)
}

/// Multicast options that a TCP socket refuses (EINVAL) but an accepted connection reports
/// anyway (the kernel copies the SYN's TTL into it): meaningless for TCP, not carried.
fn multicast_only(level: i32, name: i32) -> bool {
    (level, name) == (libc::IPPROTO_IP, libc::IP_MULTICAST_TTL)
        || (level, name) == (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS)
}

/// (state, accept queue length, listen backlog) from TCP_INFO.
fn tcp_info(sock: BorrowedFd<'_>) -> std::io::Result<(u32, u32, u32)> {
    let b = sockopt::get_raw(sock, libc::IPPROTO_TCP, libc::TCP_INFO, 104)?;
    if b.len() < 32 {
        return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
    }
    let u32_at = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    Ok((b[0] as u32, u32_at(24), u32_at(28)))
}

fn kind_name(s: &InetSocket) -> String {
    let v = if s.family == libc::AF_INET6 { "v6" } else { "v4" };
    match kind_of(s.sock_type, s.protocol) {
        Some(Kind::Tcp) => format!("TCP{v}"),
        Some(Kind::Udp) => format!("UDP{v}"),
        Some(Kind::Ping) => format!("ICMP{v} (ping)"),
        Some(Kind::Raw) => format!("RAW{v} (protocol {})", s.protocol),
        None => format!("socket{v} (type {}, protocol {})", s.sock_type, s.protocol),
    }
}

/// One line for `inspect` and errors: "TCPv4 LISTEN 127.0.0.1:8080".
pub fn describe(s: &InetSocket) -> String {
    let mut d = kind_name(s);
    if s.protocol == libc::IPPROTO_TCP {
        d += &format!(" {}", state_name(s.state));
    }
    d += &format!(" {}", if s.local.is_empty() { "unbound" } else { &s.local });
    if !s.peer.is_empty() {
        d += &format!(" -> {}", s.peer);
    }
    if s.closed {
        d += " (closed by --tcp-close)";
    }
    d
}

/// What to do with TCP connections at dump time.
#[derive(Default)]
pub struct Connections {
    /// `--tcp-close`: restore them closed.
    pub close: bool,
    /// `--skip-in-flight`: leave connections waiting in a listener's accept queue out of the
    /// image (with a warning) instead of refusing the dump.
    pub skip_in_flight: bool,
    /// `--tcp-established`: keep established ones (TCP_REPAIR).
    pub established: bool,
    /// Connections put in repair mode by this dump.
    pub repaired: tcp_repair::Repaired,
}

/// If fd `fd` of `pid` (ferry's copy `owned`, state/files.rs) is an AF_INET/AF_INET6 socket,
/// fill `f` with it and return true; false for other sockets. Connections are refused unless
/// `tcp_close`.
pub fn collect(
    (pid, fd, owned): (i32, i32, &OwnedFd),
    link: &str,
    policy: &mut Connections,
    f: &mut File,
) -> Result<bool, Error> {
    let tcp_close = policy.close;
    let obj = || format!("pid {pid} fd {fd} ({link})");
    let sock = owned.as_fd();
    let family = sockopt::get_int(sock, libc::SOL_SOCKET, libc::SO_DOMAIN).ctx(obj)?;
    if family != libc::AF_INET && family != libc::AF_INET6 {
        return Ok(false);
    }
    let sock_type = sockopt::get_int(sock, libc::SOL_SOCKET, libc::SO_TYPE).ctx(obj)?;
    let protocol = sockopt::get_int(sock, libc::SOL_SOCKET, libc::SO_PROTOCOL).ctx(obj)?;
    let unsupported = |what: String| Error::Unsupported { pid, what: format!("fd {fd}: {what}") };
    let fam = if family == libc::AF_INET { "AF_INET" } else { "AF_INET6" };
    let Some(kind) = kind_of(sock_type, protocol) else {
        return Err(unsupported(format!(
            "{fam} socket of type {sock_type}, protocol {protocol} (only TCP, UDP, raw and ICMP ping sockets are)"
        )));
    };
    let (tcp, udp) = (kind == Kind::Tcp, kind == Kind::Udp);
    let local = net::sock_name(sock).ctx(|| format!("{}: getsockname", obj()))?;
    let mut peer = net::peer_name(sock).ctx(|| format!("{}: getpeername", obj()))?;
    if peer.is_none() && matches!(kind, Kind::Raw | Kind::Ping) {
        peer = dgram_peer(pid, sock, family, kind).map_err(|e| match e {
            Error::Sys { object, source } => Error::Sys { object: format!("{}: {object}", obj()), source },
            other => other,
        })?;
    }
    let uid = ferry_sys::process::fstat(sock).ctx(|| format!("{}: fstat", obj()))?.st_uid;
    let mut s = InetSocket { family, sock_type, protocol, uid, ..Default::default() };
    // (A raw socket's "port" is its protocol: bound means an address.)
    let bound = local.is_some_and(|a| (a.port() != 0 && kind != Kind::Raw) || !a.ip().is_unspecified());
    if bound {
        s.local = local.map(|a| a.to_string()).unwrap_or_default();
    }
    s.peer = peer.map(|a| a.to_string()).unwrap_or_default();
    let mut queued = 0;
    if tcp {
        let (state, acceptq, backlog) = tcp_info(sock).ctx(|| format!("{}: TCP_INFO", obj()))?;
        s.state = state;
        if state == TCP_LISTEN {
            s.backlog = backlog;
            queued = acceptq;
        }
        if state == tcp_repair::SYN_SENT && peer.is_none() {
            // getpeername says ENOTCONN until the connection is made; /proc/net/tcp knows.
            let file = if family == libc::AF_INET6 { "net/tcp6" } else { "net/tcp" };
            peer = proc_peer(pid, sock, file, state as u8)?;
            s.peer = peer.map(|a| a.to_string()).unwrap_or_default();
        }
    } else {
        s.state = if peer.is_some() { TCP_ESTABLISHED } else { TCP_CLOSE };
        let mem = sockopt::get_raw(sock, libc::SOL_SOCKET, SO_MEMINFO, 64).ctx(|| format!("{}: SO_MEMINFO", obj()))?;
        let rmem = mem.get(..4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]])).unwrap_or(0);
        // (Ping sockets answer no SIOCINQ: SO_MEMINFO's receive memory tells for them.)
        let next = match net::inq(sock) {
            Err(_) if kind == Kind::Ping => 0,
            r => r.ctx(|| format!("{}: SIOCINQ", obj()))?,
        };
        if rmem > 0 || next > 0 {
            return Err(unsupported(format!(
                "{} with datagrams waiting to be read (their sender addresses cannot be restored; dump again once it is drained)",
                describe(&s)
            )));
        }
        // (A ping socket sends each datagram at once: it has no cork.)
        let pending = match kind {
            Kind::Ping => 0,
            _ => udp_pending(sock).ctx(|| format!("{}: SIOCOUTQ", obj()))?,
        };
        if pending > 0 {
            return Err(unsupported(format!(
                "{} with {pending} bytes corked (UDP_CORK or MSG_MORE), a datagram not sent yet (it cannot be put back; dump again once it is sent)",
                describe(&s)
            )));
        }
    }
    if tcp {
        // An upper-layer protocol (kernel TLS, MPTCP's subflow glue, ...) keeps state ferry
        // cannot read back.
        let ulp = sockopt::get_raw(sock, libc::IPPROTO_TCP, libc::TCP_ULP, 16).unwrap_or_default();
        let ulp = String::from_utf8_lossy(&ulp).trim_end_matches('\0').to_string();
        if !ulp.is_empty() {
            return Err(unsupported(format!("{} with the upper-layer protocol {ulp:?} (TCP_ULP)", describe(&s))));
        }
    }
    (s.filter, s.filter_locked) =
        crate::state::sockfilter::collect(sock).map_err(|what| unsupported(format!("{} with {what}", describe(&s))))?;
    let connection = tcp && s.state != TCP_LISTEN && s.state != TCP_CLOSE;
    let repair = connection && tcp_repair::carried_state(s.state) && policy.established;
    if udp || repair {
        let ino = ferry_sys::process::fstat(sock).ctx(|| format!("{}: fstat", obj()))?.st_ino;
        // sock_diag lists the sockets of the kernel's hash tables: an unbound UDP socket is
        // in none (its shutdown state is not carried).
        // (asked in the process's network namespace: sock_diag lists the asker's)
        let sd = crate::state::netns::in_netns_of(pid, || {
            net::diag_shutdown(family, protocol, ino).ctx(|| format!("{}: sock_diag", obj()))
        })?;
        s.shutdown = match sd {
            Some(sd) => u32::from(sd) & 3,
            None if !bound => 0,
            None => return Err(Error::Invalid { object: obj(), what: "not listed by sock_diag".into() }),
        };
    } else if matches!(kind, Kind::Raw | Kind::Ping) {
        s.shutdown = dgram_shutdown(sock).ctx(|| format!("{}: poll", obj()))?;
    }
    if connection && !tcp_close && !repair {
        let hint = match policy.established {
            true => "a TCP state --tcp-established does not carry yet; dump with --tcp-close to restore it closed",
            false => "dump with --tcp-established to keep the connection, or --tcp-close to restore it closed",
        };
        return Err(unsupported(format!("{} ({hint})", describe(&s))));
    }
    if queued > 0 && !tcp_close && !policy.skip_in_flight {
        return Err(unsupported(format!(
            "{} with {queued} connection(s) waiting in its accept queue (dump with --skip-in-flight or --tcp-close to drop them)",
            describe(&s)
        )));
    }
    if queued > 0 {
        let why = if tcp_close { "--tcp-close" } else { "--skip-in-flight" };
        tracing::warn!(pid, fd, listener = %describe(&s), queued, "dropping connections waiting to be accepted ({why}): their clients see a reset");
    }
    if connection && !repair {
        tracing::warn!(pid, fd, socket = %describe(&s), "restoring a TCP connection as closed (--tcp-close)");
        s.closed = true;
    }
    s.opts = changed_opts(sock, &s, connection).map_err(|e| match e {
        Error::Sys { object, source } => Error::Sys { object: format!("{}: {object}", obj()), source },
        other => other,
    })?;
    if repair {
        let kept = owned.try_clone().ctx(|| format!("{}: dup", obj()))?;
        let (r, state) = tcp_repair::collect(pid, &obj(), kept, peer, &mut policy.repaired)?;
        s.repair = Some(r);
        s.state = state;
    }
    f.describe = format!("{link} {}", describe(&s));
    f.kind = ferry_image::FileKind::InetSocket as i32;
    f.inet = Some(s);
    Ok(true)
}

/// The peer of a raw or ping socket connected with port 0, which getpeername(2) hides
/// (ENOTCONN): its line in /proc/PID/net/{raw,raw6,icmp,icmp6}.
fn dgram_peer(pid: i32, sock: BorrowedFd<'_>, family: i32, kind: Kind) -> Result<Option<SocketAddr>, Error> {
    let file = match (kind, family == libc::AF_INET6) {
        (Kind::Raw, false) => "net/raw",
        (Kind::Raw, true) => "net/raw6",
        (_, false) => "net/icmp",
        (_, true) => "net/icmp6",
    };
    proc_peer(pid, sock, file, TCP_ESTABLISHED as u8)
}

/// The remote address of `sock` in /proc/PID/`file` if its line is in state `when`.
fn proc_peer(pid: i32, sock: BorrowedFd<'_>, file: &str, when: u8) -> Result<Option<SocketAddr>, Error> {
    let ino = ferry_sys::process::fstat(sock).ctx(|| "fstat".into())?.st_ino;
    let text = crate::procfs::read_string(pid, file)?;
    let lines = crate::procfs::parse(pid, file, ferry_proc::parse_net_sockets(&text))?;
    let line = lines.iter().find(|l| l.inode == ino).ok_or_else(|| Error::Invalid {
        object: format!("/proc/{pid}/{file}"),
        what: format!("socket inode {ino} is not listed"),
    })?;
    Ok((line.state == when).then_some(line.remote))
}

/// The shutdown state of a raw or ping socket, which sock_diag does not list (ping sockets
/// never, raw ones only with CONFIG_INET_RAW_DIAG): poll reports a read shutdown (EPOLLRDHUP,
/// the queue being empty) and both (EPOLLHUP); a write shutdown alone shows nowhere and is
/// not carried (docs/ARCHITECTURE.md).
fn dgram_shutdown(sock: BorrowedFd<'_>) -> std::io::Result<u32> {
    let revents = net::poll_now(sock, libc::POLLIN | libc::POLLRDHUP)?;
    Ok(if revents & libc::POLLHUP != 0 {
        3
    } else if revents & libc::POLLRDHUP != 0 {
        1
    } else {
        0
    })
}

/// Bytes waiting on a UDP socket to go out: a corked datagram (UDP_CORK, MSG_MORE), or one
/// still on its way out (gone in a moment: asked again a few times).
fn udp_pending(sock: BorrowedFd<'_>) -> std::io::Result<i32> {
    let mut n = net::outq(sock)?;
    for _ in 0..20 {
        if n == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
        n = net::outq(sock)?;
    }
    Ok(n)
}

/// The options of `sock` that differ from those of a fresh socket of the same kind (for a
/// `connection`, without those the connection rather than the program set).
fn changed_opts(sock: BorrowedFd<'_>, s: &InetSocket, connection: bool) -> Result<Vec<SockOpt>, Error> {
    let fresh = net::socket(s.family, s.sock_type, s.protocol).ctx(|| "cannot create a reference socket".into())?;
    let tcp = s.protocol == libc::IPPROTO_TCP;
    let mut out = crate::state::sockopts::buffer_sizes(sock)?;
    for &(level, name, what, only) in OPTS {
        let applies = match only {
            Only::Any => true,
            Only::Tcp => tcp,
            Only::Udp => s.protocol == libc::IPPROTO_UDP,
            Only::V4 => s.family == libc::AF_INET,
            Only::V6 => s.family == libc::AF_INET6,
            Only::Raw => s.sock_type == libc::SOCK_RAW,
        };
        if !applies || (connection && connection_only(level, name)) || (tcp && multicast_only(level, name)) {
            continue;
        }
        let theirs = match sockopt::get_raw(sock, level, name, 64) {
            Ok(v) => v,
            // Not known to this kernel (or not for this socket): nothing to carry.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOPROTOOPT) | Some(libc::EOPNOTSUPP)) => continue,
            Err(e) => return Err(Error::Sys { object: format!("getsockopt {what}"), source: e }),
        };
        let ours = sockopt::get_raw(fresh.as_fd(), level, name, 64).unwrap_or_default();
        if theirs != ours {
            out.push(SockOpt { level, name, value: theirs, what: what.into() });
        }
    }
    Ok(out)
}

fn parse_addr(obj: &str, text: &str) -> Result<SocketAddr, Error> {
    text.parse().map_err(|_| Error::Invalid { object: obj.into(), what: format!("bad socket address {text:?}") })
}

/// IPV6_TRANSPARENT (linux/in6.h; not in the libc crate).
const IPV6_TRANSPARENT: i32 = 75;

/// Recreate the socket in ferry: options, bind, listen or connect, status flags.
pub fn prepare(obj: &str, f: &File) -> Result<OwnedFd, Error> {
    let s = f.inet.as_ref().ok_or_else(|| Error::Invalid { object: obj.into(), what: "no socket record".into() })?;
    let sock = net::socket_owned_by(s.family, s.sock_type, s.protocol, s.uid)
        .ctx(|| format!("{obj}: cannot create a {} socket", kind_name(s)))?;
    for o in &s.opts {
        // A connection's MSS comes back with TCP_REPAIR_OPTIONS (images of older versions
        // carry the connection's value; setsockopt caps it lower).
        if s.repair.is_some() && connection_only(o.level, o.name) {
            continue;
        }
        match sockopt::set_raw(sock.as_fd(), o.level, o.name, &o.value) {
            Ok(()) => {}
            // A dropped connection is only a placeholder: an option it cannot take is no loss.
            Err(e) if s.closed => tracing::debug!(socket = obj, opt = %o.what, error = %e, "option not restored"),
            // Older images carry the multicast TTL of accepted connections, which TCP refuses.
            Err(_) if s.protocol == libc::IPPROTO_TCP && multicast_only(o.level, o.name) => {}
            Err(e) => return Err(Error::Sys { object: format!("{obj}: cannot set {}", o.what), source: e }),
        }
    }
    crate::state::sockfilter::restore(sock.as_fd(), &s.filter, s.filter_locked)
        .ctx(|| format!("{obj}: cannot attach its socket filter"))?;
    if s.closed {
        // Dropped at dump (`dump --tcp-close`) or here (`restore --tcp-close`).
    } else if let Some(r) = &s.repair {
        tcp_repair::prepare_before_bind(obj, sock.as_fd(), r)?;
        // Bound and connected by `connect_repaired` once every other socket of the tree is:
        // in repair mode it binds with force-reuse, which would keep a listener of the same
        // port (in this process or another) from binding after it.
    } else {
        bind_connect(obj, s, sock.as_fd())?;
    }
    ferry_sys::process::set_status_flags(sock.as_fd(), f.flags as i32).ctx(|| obj.to_string())?;
    Ok(sock)
}

pub use tcp_repair::repaired;

/// Once every other socket of the image exists (listeners bound to the same ports first):
/// bind and connect every connection restored with TCP_REPAIR and refill its queues
/// ([`connect_repaired`]), then replay the FINs of the closing ones ([`shutdown_repaired`]).
/// `fds` maps ferry's fd numbers (`numbers`) to the fds.
pub fn connect_all(
    procs: &[ferry_image::Process],
    numbers: &[Option<&[i32]>],
    fds: &std::collections::HashMap<i32, BorrowedFd<'_>>,
) -> Result<(), Error> {
    let mut done = std::collections::HashSet::new();
    let mut connected = Vec::new();
    for (p, nums) in procs.iter().zip(numbers) {
        let Some(nums) = nums else { continue };
        for (i, f) in p.files.iter().enumerate() {
            if !f.inet.as_ref().is_some_and(repaired) {
                continue;
            }
            let n = nums.get(i).copied().unwrap_or(-1);
            if !done.insert(n) {
                continue;
            }
            let obj = format!("pid {}: {}", p.pid, f.describe);
            let fd =
                fds.get(&n).ok_or_else(|| Error::Invalid { object: obj.clone(), what: "lost its socket".into() })?;
            connect_repaired(&obj, f, *fd)?;
            connected.push((obj, f, *fd));
        }
    }
    // The FINs once every connection exists (`shutdown_repaired`).
    for (obj, f, fd) in connected {
        shutdown_repaired(&obj, f, fd)?;
    }
    Ok(())
}

/// `restore --tcp-close` (CRIU's meaning): every connection the image keeps comes back as a
/// closed socket, as with `dump --tcp-close` (reads fail with ENOTCONN, writes with EPIPE);
/// the peers, blocked by the dump's network lock until the restore ends, then meet no socket
/// and are reset. Returns how many were dropped.
pub fn close_connections(procs: &mut [ferry_image::Process]) -> usize {
    let mut n = 0;
    for p in procs.iter_mut() {
        for f in p.files.iter_mut() {
            if let Some(s) = f.inet.as_mut().filter(|s| repaired(s)) {
                // The repair record stays: its network lock is lifted once the tree runs.
                s.closed = true;
                tracing::warn!(pid = p.pid, socket = %describe(s), "restoring a TCP connection as closed (--tcp-close)");
                f.describe = format!("{} (closed by restore --tcp-close)", f.describe);
                n += 1;
            }
        }
    }
    n
}

/// Second pass for the connections restored with TCP_REPAIR (still in repair mode): bind,
/// connect (no packet is sent), refill the queues, shutdown state.
pub fn connect_repaired(obj: &str, f: &File, sock: BorrowedFd<'_>) -> Result<(), Error> {
    let s = f.inet.as_ref().ok_or_else(|| Error::Invalid { object: obj.into(), what: "no socket record".into() })?;
    bind_connect(obj, s, sock)
}

/// Bind, listen or connect (and for a repaired connection refill it), then shutdown state.
fn bind_connect(obj: &str, s: &InetSocket, sock: BorrowedFd<'_>) -> Result<(), Error> {
    let mut transparent = None;
    if !s.local.is_empty() {
        let local = parse_addr(obj, &s.local)?;
        let mut bound = net::bind(sock.as_fd(), &local);
        if bound.as_ref().is_err_and(|e| e.raw_os_error() == Some(libc::EADDRNOTAVAIL)) {
            // The address is not on this node (yet): a migration moves it once the tree
            // runs here. Bind anyway, transparently (which also lets a repaired connection
            // route from it); the option goes back as the process had it after connect.
            let (level, opt) = match local.is_ipv4() {
                true => (libc::IPPROTO_IP, libc::IP_TRANSPARENT),
                false => (libc::IPPROTO_IPV6, IPV6_TRANSPARENT),
            };
            let had = sockopt::get_int(sock.as_fd(), level, opt).unwrap_or(0);
            sockopt::set_int(sock.as_fd(), level, opt, 1).ctx(|| format!("{obj}: IP_TRANSPARENT"))?;
            transparent = Some((level, opt, had));
            bound = net::bind(sock.as_fd(), &local);
            tracing::warn!(socket = obj, address = %local, "bound to an address this node does not have (yet): it receives nothing until the address is added here");
        }
        bound.map_err(|e| {
            if e.raw_os_error() == Some(libc::EADDRINUSE) {
                Error::Invalid {
                    object: obj.into(),
                    what: format!(
                        "cannot bind to {}: the address is already in use (by another process, or by the dumped one still running)",
                        s.local
                    ),
                }
            } else {
                Error::Sys { object: format!("{obj}: cannot bind to {}", s.local), source: e }
            }
        })?;
    }
    if s.protocol == libc::IPPROTO_TCP && s.state == TCP_LISTEN {
        net::listen(sock.as_fd(), s.backlog as i32).ctx(|| format!("{obj}: cannot listen on {}", s.local))?;
    } else if s.repair.is_some() && s.state == tcp_repair::SYN_SENT {
        let peer = parse_addr(obj, &s.peer)?;
        tcp_repair::connect_again(obj, sock, &peer)?;
    } else if !s.peer.is_empty() && s.repair.is_some() {
        let peer = parse_addr(obj, &s.peer)?;
        tcp_repair::connect(obj, sock, &peer)?;
    } else if !s.peer.is_empty() && s.sock_type != libc::SOCK_STREAM {
        let peer = parse_addr(obj, &s.peer)?;
        net::connect(sock.as_fd(), &peer).ctx(|| format!("{obj}: cannot connect to {}", s.peer))?;
    }
    if let Some(r) = &s.repair {
        tcp_repair::finish_after_connect(obj, sock.as_fd(), s.state, r)?;
    }
    if s.repair.is_none() {
        shut_down(obj, s, sock, s.shutdown & 3)?;
    }
    if let Some((level, opt, had)) = transparent {
        sockopt::set_int(sock.as_fd(), level, opt, had).ctx(|| format!("{obj}: IP_TRANSPARENT"))?;
    }
    Ok(())
}

/// Once every connection of the image is connected (`connect_repaired`), still in repair
/// mode: the shutdown state of a repaired connection. Its FINs are replayed first and did part
/// of it (a FIN received shuts reading down, one sent writing). Not earlier: the socket
/// answers its peer's FIN, and where no network lock holds the answer back (a restore on
/// another node, or in a new network namespace) it must find the peer's socket if the peer is
/// in the image too, not a port without one, whose reset would kill the connection.
pub fn shutdown_repaired(obj: &str, f: &File, sock: BorrowedFd<'_>) -> Result<(), Error> {
    let s = f.inet.as_ref().ok_or_else(|| Error::Invalid { object: obj.into(), what: "no socket record".into() })?;
    let Some(r) = &s.repair else { return Ok(()) };
    let done = tcp_repair::replay_fins(obj, sock, s, r)?;
    shut_down(obj, s, sock, s.shutdown & 3 & !done)
}

/// shutdown(2) with the bits `shut` (`SHUT_RD` 1, `SHUT_WR` 2) of the saved state.
fn shut_down(obj: &str, s: &InetSocket, sock: BorrowedFd<'_>, shut: u32) -> Result<(), Error> {
    if shut != 0 {
        let how = match shut {
            1 => libc::SHUT_RD,
            2 => libc::SHUT_WR,
            _ => libc::SHUT_RDWR,
        };
        match net::shutdown(sock.as_fd(), how) {
            Ok(()) => {}
            // An unconnected datagram socket: the kernel says ENOTCONN but records it all the same.
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) && s.sock_type != libc::SOCK_STREAM => {}
            Err(e) => return Err(Error::Sys { object: format!("{obj}: cannot shut it down again"), source: e }),
        }
    }
    Ok(())
}
