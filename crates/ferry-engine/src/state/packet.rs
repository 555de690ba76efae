//! AF_PACKET sockets (packet(7)): raw or cooked, their protocol and interface, options, classic
//! filter and memberships (promiscuous mode, multicast and unicast addresses).
//!
//! Dump: through a `pidfd_getfd` copy, getsockname gives the ethertype and the interface the
//! socket is bound to; options are compared with a fresh packet socket (state/sockopts.rs);
//! packet_diag lists the memberships (PACKET_ADD_MEMBERSHIP, each with how many times it was
//! taken); getsockopt(PACKET_FANOUT) gives its fanout group: id, type and flags (packet_diag
//! gives no flags), which is also the value setsockopt takes to join it. Refused by name: a
//! socket with packets waiting to be read (they cannot be put back), with an mmap()ed ring
//! (PACKET_RX_RING/PACKET_TX_RING: the ring's frames and its position in them live in memory
//! shared with the kernel), or in a fanout group that steers with a BPF program
//! (PACKET_FANOUT_CBPF/EBPF: the program cannot be read back). Not kept: the kernel's drop
//! counters (PACKET_STATISTICS, which reading resets), a fanout group's member limit
//! (`max_num_members`, which nothing reads back: the restored group has the default) and the
//! order of its members (the group's array, which decides which member a given flow hashes to:
//! the members rejoin in the order ferry restores them).
//!
//! Restore (in ferry, before the fork): socket(AF_PACKET, type, protocol), the options and
//! the filter, bind to the same interface index (the same network namespace: checked against
//! its saved name), the memberships taken again as many times, then the fanout group joined
//! (the first member of a group makes it again; the kernel's UNIQUEID flag is not kept in the
//! group, so an id it chose is joined by value like any other).

use crate::error::{Ctx, Error};
use crate::state::sockopts;
use ferry_image::{File, PacketSocket, PacketSocketMembership};
use ferry_sys::pktnl;
use ferry_sys::sockopt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// The SOL_PACKET options compared with a fresh socket (PACKET_VERSION and PACKET_RESERVE
/// before anything: they are refused once a ring exists, and none is restored).
const OPTS: &[(i32, i32, &str)] = &[
    (libc::SOL_PACKET, 10, "PACKET_VERSION"),
    (libc::SOL_PACKET, 12, "PACKET_RESERVE"),
    (libc::SOL_PACKET, libc::PACKET_AUXDATA, "PACKET_AUXDATA"),
    (libc::SOL_PACKET, libc::PACKET_ORIGDEV, "PACKET_ORIGDEV"),
    (libc::SOL_PACKET, 14, "PACKET_LOSS"),
    (libc::SOL_PACKET, 15, "PACKET_VNET_HDR"),
    (libc::SOL_PACKET, 17, "PACKET_TIMESTAMP"),
    (libc::SOL_PACKET, 20, "PACKET_QDISC_BYPASS"),
    (libc::SOL_PACKET, 23, "PACKET_IGNORE_OUTGOING"),
];

/// The name of interface `ifindex` of ferry's network namespace (the dumped tree's too: ferry
/// refuses trees in other namespaces), from /sys/class/net/*/ifindex.
fn ifname(ifindex: i32) -> String {
    if ifindex == 0 {
        return "any".into();
    }
    std::fs::read_dir("/sys/class/net")
        .ok()
        .and_then(|d| {
            d.flatten().find(|e| {
                std::fs::read_to_string(e.path().join("ifindex")).ok().and_then(|s| s.trim().parse::<i32>().ok())
                    == Some(ifindex)
            })
        })
        .map_or_else(|| format!("ifindex {ifindex}"), |e| e.file_name().to_string_lossy().into_owned())
}

/// PACKET_FANOUT's types, by number (linux/if_packet.h); CBPF and EBPF steer with a program.
const FANOUT_TYPES: &[&str] = &["hash", "lb", "cpu", "rollover", "rnd", "qm", "cbpf", "ebpf"];

/// "fanout group 7 (lb, flags 0x10)" for a PACKET_FANOUT value.
fn describe_fanout(v: u32) -> String {
    let kind = (v >> 16) & 0xff;
    let name = FANOUT_TYPES.get(kind as usize).copied().unwrap_or("unknown type");
    format!("fanout group {} ({name}, flags {:#x})", v & 0xffff, v >> 24)
}

/// One line for `inspect` and errors: "packet SOCK_RAW 0x88b5 on lo".
pub fn describe(s: &PacketSocket) -> String {
    let ty = if s.sock_type == libc::SOCK_DGRAM { "SOCK_DGRAM" } else { "SOCK_RAW" };
    let on = if s.ifindex == 0 { "any" } else { &s.ifname };
    match s.fanout {
        Some(v) => format!("packet {ty} {:#06x} on {on} in {}", s.protocol, describe_fanout(v)),
        None => format!("packet {ty} {:#06x} on {on}", s.protocol),
    }
}

/// If `sock` (a copy of fd `fd` of `pid`) is an AF_PACKET socket, fill `f` with it.
pub fn collect(pid: i32, fd: i32, link: &str, sock: BorrowedFd<'_>, f: &mut File) -> Result<bool, Error> {
    let obj = || format!("pid {pid} fd {fd} ({link})");
    let family = sockopt::get_int(sock, libc::SOL_SOCKET, libc::SO_DOMAIN).ctx(obj)?;
    if family != libc::AF_PACKET {
        return Ok(false);
    }
    let unsupported = |what: String| Error::Unsupported { pid, what: format!("fd {fd}: {what}") };
    let sock_type = sockopt::get_int(sock, libc::SOL_SOCKET, libc::SO_TYPE).ctx(obj)?;
    let (protocol, ifindex) = pktnl::packet_name(sock).ctx(|| format!("{}: getsockname", obj()))?;
    let uid = ferry_sys::process::fstat(sock).ctx(|| format!("{}: fstat", obj()))?.st_uid;
    let ino = ferry_sys::process::fstat(sock).ctx(|| format!("{}: fstat", obj()))?.st_ino;
    let mut s = PacketSocket {
        sock_type,
        protocol: u32::from(protocol),
        ifindex,
        ifname: ifname(ifindex),
        uid,
        ..Default::default()
    };
    let (ring, fanout, mclist) = pktnl::packet_diag(ino)
        .ctx(|| format!("{}: packet_diag", obj()))?
        .ok_or_else(|| Error::Invalid { object: obj(), what: "not listed by packet_diag".into() })?;
    if ring {
        return Err(unsupported(format!("{} with an mmap()ed ring (PACKET_RX_RING/PACKET_TX_RING)", describe(&s))));
    }
    if fanout {
        let v = sockopt::get_int(sock, libc::SOL_PACKET, libc::PACKET_FANOUT)
            .ctx(|| format!("{}: getsockopt(PACKET_FANOUT)", obj()))? as u32;
        if matches!((v >> 16) & 0xff, 6 | 7) {
            return Err(unsupported(format!(
                "{} in a {} (PACKET_FANOUT_CBPF/EBPF: its program cannot be read back)",
                describe(&s),
                describe_fanout(v)
            )));
        }
        s.fanout = Some(v);
    }
    let queued = sockopts::queued(sock).ctx(|| format!("{}: SO_MEMINFO", obj()))?;
    if queued > 0 {
        return Err(unsupported(format!(
            "{} with packets waiting to be read ({queued} bytes; they cannot be put back: dump again once it is drained)",
            describe(&s)
        )));
    }
    s.memberships = mclist
        .into_iter()
        .map(|m| PacketSocketMembership {
            ifindex: m.ifindex,
            kind: u32::from(m.kind),
            address: m.address,
            count: m.count,
        })
        .collect();
    (s.filter, s.filter_locked) =
        crate::state::sockfilter::collect(sock).map_err(|what| unsupported(format!("{} with {what}", describe(&s))))?;
    let fresh = ferry_sys::inet::socket(libc::AF_PACKET, sock_type, 0)
        .ctx(|| "cannot create a reference packet socket".into())?;
    s.opts = sockopts::changed(sock, fresh.as_fd(), OPTS).map_err(|e| match e {
        Error::Sys { object, source } => Error::Sys { object: format!("{}: {object}", obj()), source },
        other => other,
    })?;
    f.describe = format!("{link} {}", describe(&s));
    f.kind = ferry_image::FileKind::PacketSocket as i32;
    f.packet = Some(s);
    Ok(true)
}

/// Recreate the socket in ferry: options, filter, binding, memberships, status flags.
pub fn prepare(obj: &str, f: &File) -> Result<OwnedFd, Error> {
    let s = f
        .packet
        .as_ref()
        .ok_or_else(|| Error::Invalid { object: obj.into(), what: "no packet socket record".into() })?;
    let proto = (s.protocol as u16).to_be() as i32;
    let sock = ferry_sys::inet::socket_owned_by(libc::AF_PACKET, s.sock_type, proto, s.uid)
        .ctx(|| format!("{obj}: cannot create the packet socket"))?;
    sockopts::apply(obj, sock.as_fd(), &s.opts)?;
    crate::state::sockfilter::restore(sock.as_fd(), &s.filter, s.filter_locked)
        .ctx(|| format!("{obj}: cannot attach its socket filter"))?;
    if s.ifindex != 0 {
        let here = ifname(s.ifindex);
        if here != s.ifname {
            return Err(Error::Invalid {
                object: obj.into(),
                what: format!("was bound to {} (ifindex {}), which is {here} here", s.ifname, s.ifindex),
            });
        }
        pktnl::packet_bind(sock.as_fd(), s.protocol as u16, s.ifindex)
            .ctx(|| format!("{obj}: cannot bind to {}", s.ifname))?;
    }
    for m in &s.memberships {
        let mr = pktnl::PacketMembership {
            ifindex: m.ifindex,
            kind: m.kind as u16,
            address: m.address.clone(),
            count: m.count,
        };
        for _ in 0..m.count.max(1) {
            pktnl::packet_add_membership(sock.as_fd(), &mr)
                .ctx(|| format!("{obj}: PACKET_ADD_MEMBERSHIP (type {} on ifindex {})", m.kind, m.ifindex))?;
        }
    }
    if let Some(v) = s.fanout {
        sockopt::set_int(sock.as_fd(), libc::SOL_PACKET, libc::PACKET_FANOUT, v as i32)
            .ctx(|| format!("{obj}: cannot join its {} (PACKET_FANOUT)", describe_fanout(v)))?;
    }
    ferry_sys::process::set_status_flags(sock.as_fd(), f.flags as i32).ctx(|| obj.to_string())?;
    Ok(sock)
}
