//! Nested network and cgroup namespaces (state/nested_ns.rs, unix.rs, cgroupns.rs): unix
//! sockets made in the network namespace they were in, and a child's cgroup namespace rooted
//! in a cgroup of its own. `nestednet` checks from inside each process (see its header).

use crate::common::*;

/// A child in its own network namespace and the root in the tree's bind the same abstract
/// name (a listener with a connection each), the child has a socketpair and a datagram queued
/// on another abstract name, and the two share a pair made before the child's unshare: every
/// socket comes back in its namespace and each name reaches its own listener.
#[test]
fn nested_netns_unix_sockets_restored() {
    cycle(&Spec::c("nestednet").args(&["unix"]));
}

/// An inet socket made before its process unshared a network namespace lives in the old one;
/// restore makes inet sockets in the process's namespace, so the dump is refused by name and
/// the socket still works afterwards (the workload checks it on go).
#[test]
fn inet_socket_left_in_another_netns_refused() {
    refused_then_intact(
        Spec::c("nestednet").args(&["inet-moved"]),
        &["fd 3", "a socket in another network namespace", "than its process's"],
    );
}

#[test]
fn control_inet_socket_left_in_another_netns() {
    control(&Spec::c("nestednet").args(&["inet-moved"]));
}

#[test]
fn control_nested_netns_unix_sockets() {
    control(&Spec::c("nestednet").args(&["unix"]));
}

/// Removes the workload's cgroups (pid: the workload's root) at the end, pass or fail.
struct Cgroups(i32);

impl Drop for Cgroups {
    fn drop(&mut self) {
        let pid = self.0;
        for d in [
            format!("/sys/fs/cgroup/pids/ferry-nestednet-{pid}/inner"),
            format!("/sys/fs/cgroup/pids/ferry-nestednet-{pid}"),
            format!("/sys/fs/cgroup/unified/ferry-nestednet-{pid}"),
        ] {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// A child that moved into cgroups of its own and unshared a cgroup namespace there, its child
/// in a sub-cgroup: after the restore /proc/self/cgroup reads the same inside (the namespace
/// rooted where it was), and the root's is unchanged.
#[test]
fn nested_cgroupns_restored() {
    let mut run = Run::start(&Spec::c("nestednet").args(&["cgroup"]));
    let _cg = Cgroups(run.pid);
    run.dump_ok(&[]);
    run.reap_dumped();
    wait_image_pids_gone(&run.img());
    run.restore_and_verify("ferry restore (nested cgroup namespace)");
}

#[test]
fn control_nested_cgroupns() {
    let mut run = Run::start(&Spec::c("nestednet").args(&["cgroup"]));
    let _cg = Cgroups(run.pid);
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload");
}

/// A veth pair between the tree's network namespace and a child's nested one, with an
/// established TCP connection over it (dumped with --tcp-established): the pair comes back
/// with each end in its namespace, keeping its index, hardware address, MTU and up state, and
/// the connection and a new one carry bytes (the workload checks from inside each process).
#[test]
fn veth_between_tree_netns_restored() {
    need("ip", "iproute2");
    let spec = Spec::c("nestednet").args(&["veth"]);
    let mut run = Run::start(&spec);
    run.dump_ok(&["--tcp-established"]);
    run.reap_dumped();
    wait_image_pids_gone(&run.img());
    run.restore_and_verify("ferry restore (veth between two network namespaces of the tree)");
}

/// The tree's tables: one of the tree's own named `ferry_lock_*` (as ferry names its network
/// locks: this one is the tree's, not ferry's, and is carried) and one with a named counter in
/// the root's network namespace, a table dropping all but the connection's port in the child's.
const TCP_NFT: [(&str, &str); 2] = [
    (
        "R",
        r#"table inet ferry_lock_nsxtree {
  chain output { type filter hook output priority 0; policy accept;
    udp dport 9 counter packets 2 bytes 100 drop comment "the tree's, not ferry's"
  }
}
table inet nsxtcp {
  counter blocked { packets 3 bytes 180 }
  chain input { type filter hook input priority 0; policy accept;
    udp dport 9 counter name "blocked" drop
  }
}
"#,
    ),
    (
        "A",
        r#"table ip nsxtcpa {
  chain input { type filter hook input priority 0; policy drop;
    tcp dport 9393 accept
    iif "lo" accept
    udp dport 9 counter packets 4 bytes 200 drop
  }
}
"#,
    ),
];

/// `nft list ruleset` in the network namespace of `pid`.
fn ruleset(pid: i32) -> String {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["nft", "list", "ruleset"])
        .output()
        .expect("run nft");
    assert!(out.status.success(), "nft list ruleset: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The TCP repair path (--tcp-established, which puts ferry's own lock `ferry_lock_*` in each
/// network namespace of the tree at dump and at restore) with nftables rules in both network
/// namespaces, one table of the tree named `ferry_lock_nsxtree`: the rules come back the same,
/// counters included, with the tree's `ferry_lock_*` table and without ferry's, and the
/// connection across the veth and a new one carry bytes (the workload checks).
#[test]
fn veth_tree_netns_nft_tcp_established_restored() {
    need("ip", "iproute2");
    need("nft", "nftables");
    let mut run = Run::start(&Spec::c("nestednet").args(&["veth"]));
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", run.pid)).expect("R's children");
    let a: i32 = children.split_whitespace().next().and_then(|c| c.parse().ok()).expect("A's pid");
    let pids = [run.pid, a];
    for (pid, (_, rules)) in pids.iter().zip(TCP_NFT) {
        let mut nft = std::process::Command::new("nsenter");
        nft.arg(format!("--net=/proc/{pid}/ns/net")).args(["nft", "-f", "-"]).stdin(std::process::Stdio::piped());
        let mut child = nft.spawn().expect("nft");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), rules.as_bytes()).expect("nft input");
        assert!(child.wait().expect("nft").success(), "nft -f");
    }
    let before: Vec<String> = pids.iter().map(|p| ruleset(*p)).collect();
    run.dump_ok(&["--tcp-established"]);
    run.reap_dumped();
    wait_image_pids_gone(&run.img());
    let pidfile = run.spawn_restore("restore", &run.img(), &[]);
    run.wait_pidfile(&pidfile);
    for ((pid, was), (who, _)) in pids.iter().zip(&before).zip(TCP_NFT) {
        let now = ruleset(*pid);
        if &now != was {
            run.fail(&format!("{who}'s ruleset after the restore:\n{now}\nbefore the dump:\n{was}"));
        }
    }
    run.go();
    let status = run.wait_restore_exit();
    run.expect_pass(status, "ferry restore (--tcp-established, nftables rules in both namespaces)");
}

#[test]
fn control_veth_between_tree_netns() {
    need("ip", "iproute2");
    control(&Spec::c("nestednet").args(&["veth"]));
}
