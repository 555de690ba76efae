//! Issue 13's acceptance test for the time and network namespaces: a job started with
//! `ferry run --pidns --netns --timens` in node A moves with `ferry migrate` to node B, whose
//! `ferry serve` runs in a time namespace whose clocks read 100000 s ahead of A's: a machine
//! that booted at another time. The job (`nsjob`) reads CLOCK_MONOTONIC and CLOCK_BOOTTIME
//! every 20 ms and fails if a step ever differed from the wall clock's by more than 1 s, so a
//! restore that copied the offsets (or left the time namespace out) fails it; it also checks its
//! network namespace (a dummy device with addresses, MTU, a route, sysctls, a listener on lo).

use super::*;
use crate::nsx::{configure_netns, expect_progress, go_and_pass, start_nsjob};

/// How far ahead node B's clocks are.
const SHIFT_S: &str = "100000";

#[test]
fn nsx_job_keeps_clocks_and_network_across_nodes() {
    need("unshare", "util-linux");
    let nodes = Nodes::new();
    let w = WorkDir::new("nsx-migrate");
    let (pid, guard) = start_nsjob(&w, nodes.in_a(ferry_bin()));
    configure_netns(&w, pid);
    let auth = w.join("auth");
    keygen(&auth);
    let server = Server::start_under(
        &nodes,
        &w,
        &auth,
        &[],
        &["unshare", "--time", "--monotonic", SHIFT_S, "--boottime", SHIFT_S],
    );
    expect_progress(&w, "before the migration");
    let wl = Workload { w: WorkDir::new("nsx-migrate-ferry"), pid };
    let m = migrate(&nodes, &wl, &auth, "migrate");
    assert!(m.ok, "ferry migrate failed: {}\nserve: {}", m.stderr, server.log());
    let (remote, downtime) = summary(&m);
    guard.add(remote);
    eprintln!("nsx migration: downtime {downtime} ms");
    wait_for("the source copy to be killed", Duration::from_secs(20), || !pid_alive(pid));
    assert!(pid_alive(remote), "the migrated tree (pid {remote}) is not running");
    // It runs in node B's clocks' namespace? No: in one of its own, whose clocks go on from A's.
    let serve_pid = server.child.id() as i32;
    let ns = |p: i32| fs::read_link(format!("/proc/{p}/ns/time")).map(|l| l.display().to_string()).unwrap_or_default();
    assert_ne!(ns(remote), ns(serve_pid), "the job was restored in ferry serve's time namespace");
    expect_progress(&w, "after the migration");
    go_and_pass(&w, remote);
}
