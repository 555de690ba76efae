//! Issue 13's acceptance test for the time and network namespaces: a job started with
//! `ferry run --pidns --netns --timens` in node A moves with `ferry migrate` to node B, whose
//! `ferry serve` runs in a time namespace whose clocks read 100000 s ahead of A's: a machine
//! that booted at another time. The job (`nsjob`) reads CLOCK_MONOTONIC and CLOCK_BOOTTIME
//! every 20 ms and fails if a step ever differed from the wall clock's by more than 1 s, so a
//! restore that copied the offsets (or left the time namespace out) fails it; it also checks its
//! network namespace (a dummy device with addresses, MTU, a route, sysctls, a listener on lo).

use super::*;
use crate::nsx::veth::{finish_stream, job_port, start_linked_job, JOB_ADDR};
use crate::nsx::{configure_netns, expect_progress, go_and_pass, start_nsjob};

/// How far ahead node B's clocks are.
const SHIFT_S: &str = "100000";

/// `ferry serve` in node B, in a time namespace whose clocks read [`SHIFT_S`] ahead.
fn serve_on_shifted_clocks(nodes: &Nodes, w: &WorkDir, auth: &Path) -> Server {
    Server::start_under(nodes, w, auth, &[], &["unshare", "--time", "--monotonic", SHIFT_S, "--boottime", SHIFT_S])
}

#[test]
fn nsx_job_keeps_clocks_and_network_across_nodes() {
    need("unshare", "util-linux");
    let nodes = Nodes::new();
    let w = WorkDir::new("nsx-migrate");
    let (pid, guard) = start_nsjob(&w, nodes.in_a(ferry_bin()));
    configure_netns(&w, pid);
    let auth = w.join("auth");
    keygen(&auth);
    let server = serve_on_shifted_clocks(&nodes, &w, &auth);
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

/// A job linked to node A by a veth (`ferry run --veth vha@br0:10.79.0.2/24`, A's bridge br0
/// holding 10.79.0.1/24) moves to node B, whose `ferry serve --external veth[eth0]:vhb@br0`
/// decides the outside end's name there: B's bridge (same subnet) reaches the job through it.
/// The job (`tcpstream netpeer`) was waiting for its first connection; the test makes it from
/// B after the move and streams both ways with it.
#[test]
fn veth_job_reachable_on_destination_node() {
    let nodes = Nodes::new();
    let bridge = |ns: &str| {
        for args in [
            &["link", "add", "br0", "type", "bridge"][..],
            &["addr", "add", "10.79.0.1/24", "dev", "br0"],
            &["link", "set", "br0", "up"],
        ] {
            run_ok(Command::new("ip").args(["-n", ns]).args(args));
        }
    };
    bridge(&nodes.a);
    bridge(&nodes.b);
    let w = WorkDir::new("nsx-veth-migrate");
    let id = std::process::id() % 100_000;
    let (vha, vhb) = (format!("fxa{id}"), format!("fxb{id}"));
    let (pid, guard) = start_linked_job(&w, nodes.in_a(ferry_bin()), &vha, "20");
    let port = job_port(&w);
    let auth = w.join("auth");
    keygen(&auth);
    let server = Server::start(&nodes, &w, &auth, &["--external", &format!("veth[eth0]:{vhb}@br0")]);
    let wl = Workload { w: WorkDir::new("nsx-veth-migrate-ferry"), pid };
    let m = migrate_with(&nodes, &wl, &auth, "migrate", &["--external", &format!("veth[eth0]:{vha}@br0")]);
    assert!(m.ok, "ferry migrate failed: {}\nserve: {}", m.stderr, server.log());
    let (remote, _) = summary(&m);
    guard.add(remote);
    wait_for("the source copy to be killed", Duration::from_secs(20), || !pid_alive(pid));
    let link = |ns: &str, dev: &str| {
        let out = Command::new("ip").args(["-n", ns, "-o", "link", "show", "dev", dev]).output().expect("ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let on_b = link(&nodes.b, &vhb);
    assert!(on_b.contains("master br0") && on_b.contains(",UP"), "no outside end on B's bridge: {on_b:?}");
    assert!(link(&nodes.b, &vha).is_empty(), "B got the source's name for the outside end");
    // Reached from B, through the new outside end.
    let x = nodes
        .connect_from_b(JOB_ADDR, port)
        .unwrap_or_else(|e| panic!("the migrated job is not reachable from B: {e}"));
    let peer = crate::inet::PeerStream::start(x);
    wait_for("the job's ready", Duration::from_secs(60), || w.join("ready").exists());
    send_signal(remote, "USR2").expect("send go");
    finish_stream(&w, peer, 20);
}

/// A tree in its own user namespace with a pid namespace and a time namespace made inside it
/// (`unshare -U -r --pid --fork --time --monotonic 1000 --boottime 2000`, the `userns`
/// workload as pid 1 checking its clocks) moves from node A to node B, whose `ferry serve` runs
/// in a time namespace 100000 s ahead: restored by a multi-threaded ferry, its time namespace
/// is owned by its new user namespace (the workload's view), its CLOCK_MONOTONIC and
/// CLOCK_BOOTTIME moved as CLOCK_REALTIME did, and its offsets (counted from the host's clocks,
/// one kernel here) are the same as before.
#[test]
fn userns_owned_timens_job_migrated_to_shifted_clocks() {
    need("unshare", "util-linux");
    let nodes = Nodes::new();
    let w = WorkDir::new("userns-timens-migrate");
    let flags = ["-U", "-r", "--pid", "--fork", "--time", "--monotonic", "1000", "--boottime", "2000"];
    let unshare = nodes
        .in_a("unshare")
        .args(flags)
        .arg(ferry_workloads::path("userns"))
        .arg(&w.path)
        .arg("clocks")
        .stdin(Stdio::null())
        .stdout(File::create(w.join("run.log")).expect("log"))
        .stderr(File::create(w.join("out.log")).expect("log"))
        .spawn()
        .expect("start unshare");
    let guard = ProcGuard::new();
    let outer = unshare.id() as i32;
    guard.add(outer);
    std::mem::forget(unshare); // (killed by the guard and the nodes; reaped by whoever)
    wait_for("the workload to be ready", Duration::from_secs(60), || w.join("ready").exists());
    let outer = fs::read_to_string(format!("/proc/{outer}/task/{outer}/children")).unwrap_or_default();
    let init: i32 = outer.split_whitespace().next().and_then(|p| p.parse().ok()).expect("the namespace's init");
    guard.add(init);
    let offsets = |pid: i32| fs::read_to_string(format!("/proc/{pid}/timens_offsets")).unwrap_or_default();
    let secs = |text: &str, clock: &str| -> i64 {
        let line = text.lines().find(|l| l.split_whitespace().next() == Some(clock));
        line.and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or_else(|| panic!("{clock} in {text:?}"))
    };
    let before = offsets(init);
    assert_eq!((secs(&before, "monotonic"), secs(&before, "boottime")), (1000, 2000), "{before}");
    let view = fs::read_to_string(w.join("view")).unwrap_or_default();
    assert!(view.contains("time owned by own\n"), "not owned by its user namespace: {view}");
    let auth = w.join("auth");
    keygen(&auth);
    let server = serve_on_shifted_clocks(&nodes, &w, &auth);
    let m = migrate_init(&nodes, init, &auth, &[]);
    assert!(m.ok, "ferry migrate failed: {}\nserve: {}", m.stderr, server.log());
    let (remote, _) = summary(&m);
    guard.add(remote);
    wait_for("the source copy to be killed", Duration::from_secs(20), || !pid_alive(init));
    let after = offsets(remote);
    // (whole seconds: the new offsets also hold the sub-second differences of the two clocks)
    let near = |a: i64, b: i64| (a - b).abs() <= 1;
    assert!(
        near(secs(&after, "monotonic"), 1000) && near(secs(&after, "boottime"), 2000),
        "offsets after the migration {after:?}, before {before:?}\nserve: {}",
        server.log()
    );
    go_and_pass(&w, remote);
}
