//! The sockets beyond TCP and UDP (raw and ICMP ping sockets, packet, netlink) and fanotify,
//! and CRIU's `dump --skip-in-flight` and `restore --tcp-close`. Each workload checks its own
//! state after restore; each `control::` test runs it without ferry.

use crate::common::*;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn rawsocks(mode: &str) -> Spec {
    Spec::c("rawsocks").args(&[mode])
}

/// An ident for the ping workload no other run of this test uses at the same time.
fn ping_ident() -> String {
    (20000 + std::process::id() % 20000).to_string()
}

/// `net.ipv4.ping_group_range` widened to hold gid 0 (root may create ping sockets) while
/// any test holds one; the old value comes back when the last is dropped, also when a test
/// fails.
struct PingGroups;

const PING_GROUPS: &str = "/proc/sys/net/ipv4/ping_group_range";

/// (holders, the value to put back)
static PING_HOLDERS: std::sync::Mutex<(usize, Option<String>)> = std::sync::Mutex::new((0, None));

impl PingGroups {
    fn allow_root() -> PingGroups {
        let mut h = PING_HOLDERS.lock().unwrap_or_else(|p| p.into_inner());
        if h.0 == 0 {
            let old = fs::read_to_string(PING_GROUPS).expect("read ping_group_range");
            let mut it = old.split_whitespace().map(|v| v.parse::<i64>().unwrap_or(-1));
            let (lo, hi) = (it.next().unwrap_or(1), it.next().unwrap_or(0));
            if !(lo <= 0 && hi >= 0) {
                fs::write(PING_GROUPS, "0 0").expect("write ping_group_range");
                h.1 = Some(old);
            }
        }
        h.0 += 1;
        PingGroups
    }
}

impl Drop for PingGroups {
    fn drop(&mut self) {
        let mut h = PING_HOLDERS.lock().unwrap_or_else(|p| p.into_inner());
        h.0 -= 1;
        if h.0 == 0 {
            if let Some(old) = h.1.take() {
                let _ = fs::write(PING_GROUPS, old.trim());
            }
        }
    }
}

mod control {
    use super::*;

    /// `halfclose` without ferry (the test's part as in `tcp_half_closed_connections`).
    fn control_halfclose() {
        let mut run = Run::start(&super::rawsocks("halfclose").ready_file("port"));
        let mut x2 = connect_queued(&run);
        let mut x3 = connect_queued(&run);
        x2.shutdown(std::net::Shutdown::Write).expect("shut");
        run.wait_ready();
        x3.write_all(b"late").expect("write to A3");
        run.go();
        let mut rest = Vec::new();
        x2.read_to_end(&mut rest).expect("A2's answer");
        assert_eq!(rest, b"bye");
        let status = run.wait_child_exit();
        run.expect_pass(status, "the workload");
    }

    #[test]
    fn pktnl() {
        control(&Spec::c("pktnl").args(&["packet"]));
        control(&Spec::c("pktnl").args(&["netlink"]));
        for mode in ["fanout", "ring", "fanout_bpf", "audit"] {
            control(&Spec::c("pktnl").args(&[mode]));
        }
    }

    #[test]
    fn fanotify() {
        for mode in ["notif", "unread", "perm"] {
            control(&Spec::c("fanotify").args(&[mode]));
        }
    }

    #[test]
    fn rawsocks() {
        control(&super::rawsocks("raw"));
        control_halfclose();
        let _groups = PingGroups::allow_root();
        control(&Spec::c("rawsocks").args(&["ping", &ping_ident()]));
    }
}

/// Raw sockets (ICMP with ICMP_FILTER, protocol 253 with IP_HDRINCL, connected and shut down
/// for reading, IPv6 with IPV6_CHECKSUM, ICMPv6 with ICMP6_FILTER) come back with their
/// protocol, address, peer, options and shutdown, and still receive.
#[test]
fn raw_sockets_cycle() {
    cycle(&rawsocks("raw"));
}

/// ICMP ping sockets (v4 and v6) come back with their ident, peer and options, and ping.
#[test]
fn ping_sockets_cycle() {
    let _groups = PingGroups::allow_root();
    cycle(&Spec::c("rawsocks").args(&["ping", &ping_ident()]));
}

/// The test's connection, waiting in the workload's accept queue.
fn connect_queued(run: &Run) -> TcpStream {
    let port: u16 = fs::read_to_string(run.w.join("port")).expect("port").trim().parse().expect("port number");
    let x = TcpStream::connect(("127.0.0.1", port)).expect("connect to the workload");
    x.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    x
}

/// `dump --skip-in-flight`: a connection waiting in a listener's accept queue is left out
/// (its client is reset), and the listener comes back with an empty queue, serving new ones.
#[test]
fn skip_in_flight_drops_queued_connections() {
    let mut run = Run::start(&rawsocks("inflight").ready_file("port"));
    let mut x = connect_queued(&run);
    run.wait_ready();
    run.dump_ok(&["--skip-in-flight"]);
    run.reap_dumped();
    let mut rest = Vec::new();
    match x.read_to_end(&mut rest) {
        Ok(_) if rest.is_empty() => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => run.fail(&format!("the queued client is not closed after the dump: {other:?} {rest:?}")),
    }
    run.restore_and_verify("rawsocks inflight");
}

/// Without --skip-in-flight the same dump is refused, naming the flag, and the connection
/// stays queued (the workload accepts it after go).
#[test]
fn in_flight_refused_without_flag() {
    let mut run = Run::start(&rawsocks("inflightkept").ready_file("port"));
    let mut x = connect_queued(&run);
    run.wait_ready();
    let img = run.img();
    let res = run.dump_to("dump", &img, &[]);
    if res.status.success() {
        run.fail("the dump was not refused");
    }
    let lines = res.stderr_lines();
    if lines.len() != 1 || !lines[0].contains("accept queue") || !lines[0].contains("--skip-in-flight") {
        run.fail(&format!("the error is not one line naming the queue and --skip-in-flight: {:?}", res.stderr));
    }
    run.expect_running_untraced("after the refused dump");
    run.go();
    let mut b = [0u8; 4];
    if let Err(e) = x.read_exact(&mut b) {
        run.fail(&format!("the kept connection got no answer: {e}"));
    }
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload after a refused dump");
}

/// `restore --tcp-close` of an image dumped with `--tcp-established`: every connection (both
/// ends inside, and one to the test outside) comes back closed, the listener works, and the
/// test's end is reset once the restore lifts the network lock.
#[test]
fn restore_tcp_close() {
    need("nft", "nftables");
    let mut run = Run::start(&rawsocks("rclose").ready_file("port"));
    let mut x = connect_queued(&run);
    let mut b = [0u8; 2];
    x.read_exact(&mut b).expect("hi from the workload");
    run.wait_ready();
    run.dump_ok(&["--tcp-established"]);
    run.reap_dumped();
    let pidfile = run.spawn_restore("restore", &run.img(), &["--tcp-close"]);
    run.wait_pidfile(&pidfile);
    run.go();
    let status = run.wait_restore_exit();
    run.expect_pass(status, "rawsocks rclose");
    // The test's end: its next segment meets no socket and is answered with a reset.
    let _ = x.write_all(b"are you there");
    let mut rest = Vec::new();
    match x.read_to_end(&mut rest) {
        Ok(_) if rest.is_empty() => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => run.fail(&format!("the test's connection is not reset after restore --tcp-close: {other:?}")),
    }
}

/// Packet sockets: a raw one bound to an ethertype on lo with options and a multicast
/// membership, a cooked one with its buffer size; after restore the frame one sends reaches
/// the other, and lo still lists the membership.
#[test]
fn packet_sockets_cycle() {
    cycle(&Spec::c("pktnl").args(&["packet"]));
}

/// Netlink sockets: NETLINK_ROUTE with its port id, groups (beyond 32 too) and options, still
/// answering a dump; two NETLINK_USERSOCK sockets, one bound to a chosen port id and one
/// connected to it, still talking.
#[test]
fn netlink_sockets_cycle() {
    cycle(&Spec::c("pktnl").args(&["netlink"]));
}

/// A fanotify group with inode, mount and filesystem marks (masks, ignored masks, mark flags)
/// comes back with the same fdinfo lines and delivers events.
#[test]
fn fanotify_cycle() {
    cycle(&Spec::c("fanotify").args(&["notif"]));
}

/// Unread fanotify events cannot be put back: refused, and they are still there after.
#[test]
fn fanotify_unread_events_refused() {
    refused_then_intact(Spec::c("fanotify").args(&["unread"]), &["fanotify", "unread events"]);
}

/// A mark asking for permission events: refused by name.
#[test]
fn fanotify_permission_events_refused() {
    refused_then_intact(Spec::c("fanotify").args(&["perm"]), &["fanotify", "permission events"]);
}

/// A packet socket with an mmap()ed ring: refused by name.
#[test]
fn packet_ring_refused() {
    refused_then_intact(Spec::c("pktnl").args(&["ring"]), &["packet", "PACKET_RX_RING"]);
}

/// Packet sockets in fanout groups (two sharing a round-robin group with the ROLLOVER flag, one
/// alone in a group whose id the kernel chose): each comes back in its group, with its id,
/// type and flags, and the frames are shared out as before.
#[test]
fn packet_fanout_cycle() {
    cycle(&Spec::c("pktnl").args(&["fanout"]));
}

/// A packet socket in a fanout group steered by a classic BPF program (which cannot be read
/// back): refused by name.
#[test]
fn packet_fanout_bpf_refused() {
    refused_then_intact(Spec::c("pktnl").args(&["fanout_bpf"]), &["packet", "PACKET_FANOUT_CBPF"]);
}

/// A netlink protocol whose kernel side keeps state bound to the socket: refused by name.
#[test]
fn netlink_audit_refused() {
    refused_then_intact(Spec::c("pktnl").args(&["audit"]), &["NETLINK_AUDIT"]);
}

/// Half-closed connections with `--tcp-established`: FIN_WAIT2 and CLOSE_WAIT with both ends
/// inside, and each with the test as the peer outside. The workload checks the states, the
/// end of file, and the bytes that still flow the other way; the test gets its answer.
#[test]
fn tcp_half_closed_connections() {
    need("nft", "nftables");
    let mut run = Run::start(&rawsocks("halfclose").ready_file("port"));
    let x2 = connect_queued(&run);
    let mut x3 = connect_queued(&run);
    x2.shutdown(std::net::Shutdown::Write).expect("shut the test's side of A2");
    run.wait_ready();
    let mut rest = Vec::new();
    run.dump_ok(&["--tcp-established"]);
    run.reap_dumped();
    x3.write_all(b"late").expect("write to A3");
    let pidfile = run.spawn_restore("restore", &run.img(), &[]);
    run.wait_pidfile(&pidfile);
    run.go();
    let mut x2 = x2;
    if let Err(e) = x2.read_to_end(&mut rest) {
        run.fail(&format!("A2's answer: {e}"));
    }
    if rest != b"bye" {
        run.fail(&format!("A2 answered {rest:?}, want bye"));
    }
    let status = run.wait_restore_exit();
    run.expect_pass(status, "rawsocks halfclose");
}
