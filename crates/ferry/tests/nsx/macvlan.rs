//! A job whose network namespace holds a macvlan on a device of its node (the node's NIC in
//! real life; here one end of a veth pair in the node, the other end holding the node's
//! address). The dump names the lower device (`--external macvlan[mv0]:LOWER`, CRIU's form);
//! the restore makes the macvlan again on it, straight into the job's new namespace, with its
//! index, hardware address, mode and flags, MTU, addresses, routes and up state. nsjob checks
//! its own view (interfaces with index, flags, MTU, hardware address and addresses; routes),
//! the test reads the device's mode from inside, and the node reaches the job's address
//! through the lower device (a TCP connection), before and after.

use super::veth::Node;
use crate::common::*;
use std::fs;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::Duration;

const LOWER: &str = "mvl0";
const JOB_ADDR: &str = "10.81.0.2";

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A node with the lower device `mvl0` (up), the other end of its veth pair holding
/// 10.81.0.1/24.
fn node() -> Node {
    let node = Node::new("mvlan");
    let ip = |args: &[&str]| run_ok(Command::new("ip").args(["-n", &node.name]).args(args));
    ip(&["link", "add", LOWER, "type", "veth", "peer", "name", "mvp0"]);
    ip(&["addr", "add", "10.81.0.1/24", "dev", "mvp0"]);
    ip(&["link", "set", "mvp0", "up"]);
    ip(&["link", "set", LOWER, "up"]);
    node
}

/// The job's macvlan as `ip -d` shows it from inside, without its counters and queue state.
fn macvlan_view(pid: i32) -> String {
    let out = run_ok(
        Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .args(["ip", "-j", "-d", "link", "show", "mv0"]),
    );
    let v: serde_json::Value = serde_json::from_str(&out).expect("ip -j");
    let l = &v[0];
    format!(
        "{} index {} address {} mtu {} flags {} lower index {} {}",
        l["ifname"], l["ifindex"], l["address"], l["mtu"], l["flags"], l["link_index"], l["linkinfo"]["info_data"]
    )
}

/// The node reaches the job's address through the lower device: a TCP connection from the
/// node to a listener made in the job's network namespace is accepted.
fn reach_job(node: &Node, pid: i32) {
    let path = format!("/proc/{pid}/ns/net");
    let listener = std::thread::spawn(move || {
        let ns = fs::File::open(&path).expect("the job's network namespace");
        ferry_sys::ns::setns(ns.as_fd(), libc::CLONE_NEWNET).expect("setns into the job's namespace");
        std::net::TcpListener::bind((JOB_ADDR, 0))
    })
    .join()
    .expect("listener thread")
    .expect("listen on the job's macvlan address");
    let port = listener.local_addr().expect("port").port();
    let _c = node.connect(format!("{JOB_ADDR}:{port}"));
    listener.accept().expect("accept the node's connection");
}

fn ferry_in(node: &Node, w: &WorkDir, label: &str, args: &[&str]) -> std::process::Output {
    let out = node.cmd(ferry_bin()).args(args).stdin(Stdio::null()).output().expect("run ferry");
    fs::write(w.join(&format!("{label}.err")), &out.stderr).expect("log");
    out
}

/// Start nsjob in the node and give its namespace a macvlan on the node's `mvl0`.
fn start_job(w: &WorkDir, node: &Node) -> (i32, ProcGuard) {
    let (pid, g) = super::start_nsjob(w, node.cmd(ferry_bin()));
    run_ok(Command::new("ip").args(["-n", &node.name, "link", "add", "link", LOWER, "name", "mv0"]).args([
        "address",
        "02:00:00:81:00:02",
        "netns",
        &pid.to_string(),
        "type",
        "macvlan",
        "mode",
        "private",
    ]));
    let net = format!("--net=/proc/{pid}/ns/net");
    let ip = |args: &[&str]| run_ok(Command::new("nsenter").arg(&net).arg("ip").args(args));
    ip(&["link", "set", "mv0", "mtu", "1400", "up"]);
    ip(&["addr", "add", &format!("{JOB_ADDR}/24"), "dev", "mv0"]);
    ip(&["route", "add", "10.82.0.0/16", "via", "10.81.0.1"]);
    fs::write(w.join("setup"), "").expect("setup file");
    wait_for("nsjob to be ready", Duration::from_secs(60), || w.join("ready").exists());
    (pid, g)
}

/// Dump in the node naming the lower device, restore there: the macvlan is back on it, the
/// same seen from inside, and it carries the node's packets to the job.
#[test]
fn macvlan_job_restored_on_its_lower_device() {
    let node = node();
    let w = WorkDir::new("nsx-macvlan");
    let (pid, g) = start_job(&w, &node);
    let before = macvlan_view(pid);
    assert!(before.contains("\"private\""), "{before}");
    reach_job(&node, pid);
    super::expect_progress(&w, "before the dump");
    let img = path_str(&w.join("img"));
    let external = format!("macvlan[mv0]:{LOWER}");
    let d = ferry_in(&node, &w, "dump", &["dump", "-t", &pid.to_string(), "-D", &img, "--external", &external]);
    assert!(d.status.success(), "ferry dump: {}", String::from_utf8_lossy(&d.stderr));
    wait_for("the dumped tree to go", Duration::from_secs(20), || !pid_alive(pid));
    let pidfile = path_str(&w.join("restored.pid"));
    let r = ferry_in(&node, &w, "restore", &["restore", "-d", "-D", &img, "--pidfile", &pidfile]);
    assert!(r.status.success(), "ferry restore: {}", String::from_utf8_lossy(&r.stderr));
    let restored: i32 = fs::read_to_string(&pidfile).expect("pidfile").trim().parse().expect("pid");
    g.add(restored);
    assert_eq!(macvlan_view(restored), before, "the macvlan seen from inside the restored job");
    reach_job(&node, restored);
    super::expect_progress(&w, "after the restore");
    super::go_and_pass(&w, restored);
}

/// Without `--external macvlan[..]` the dump refuses the device by name (and says how to name
/// its lower device), and leaves the job running.
#[test]
fn macvlan_without_external_refused() {
    let node = node();
    let w = WorkDir::new("nsx-macvlan-refused");
    let (pid, _g) = start_job(&w, &node);
    let img = path_str(&w.join("img"));
    let d = ferry_in(&node, &w, "dump", &["dump", "-t", &pid.to_string(), "-D", &img]);
    let err = String::from_utf8_lossy(&d.stderr);
    assert!(!d.status.success(), "the dump succeeded");
    assert!(
        err.contains("network device mv0 (macvlan) in the tree's network namespace, its lower device outside it (name it with --external macvlan[mv0]:LOWER)"),
        "{err}"
    );
    assert!(pid_alive(pid), "a refused dump killed the job");
}

/// A restore whose macvlan's hardware address is still taken on the lower device (here the
/// dumped job was left running, `-R`, its macvlan still up there) waits for it to go, then fails
/// naming the device and the address rather than the bare "Address already in use"; the job
/// left running is unharmed and still reached through its macvlan.
#[test]
fn macvlan_address_still_taken_refused_by_name() {
    let node = node();
    let w = WorkDir::new("nsx-macvlan-taken");
    let (pid, _g) = start_job(&w, &node);
    let img = path_str(&w.join("img"));
    let external = format!("macvlan[mv0]:{LOWER}");
    let d = ferry_in(&node, &w, "dump", &["dump", "-R", "-t", &pid.to_string(), "-D", &img, "--external", &external]);
    assert!(d.status.success(), "ferry dump -R: {}", String::from_utf8_lossy(&d.stderr));
    let pidfile = w.join("restored.pid");
    let r = ferry_in(&node, &w, "restore", &["restore", "-d", "-D", &img, "--pidfile", &path_str(&pidfile)]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "the restore beside the job left running succeeded");
    assert!(
        err.contains("network device mv0") && err.contains("02:00:00:81:00:02"),
        "the refused restore does not name the device and its hardware address: {err}"
    );
    assert!(!pidfile.exists(), "a refused restore wrote its pidfile");
    assert!(pid_alive(pid), "the job left running is gone");
    reach_job(&node, pid);
    super::expect_progress(&w, "after the refused restore");
}
