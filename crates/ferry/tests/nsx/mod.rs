//! The contents of a tree's own namespaces (state/timens.rs, netns.rs, ipcns.rs) and
//! `ferry run --netns --timens --mntns`. The acceptance test, a migration between two nodes,
//! is `migrate::nsx`.
//!
//! `nsjob` (started with `ferry run --pidns --netns --timens`) checks its network namespace
//! (devices, addresses, routes, sysctls, a listener reached through lo) and that its clocks
//! never jumped; `sysvns` (started with `unshare --ipc`) checks its SysV objects.

use crate::common::*;
use std::fs;

pub mod macvlan;
pub mod nested;
pub mod nestedmnt;
pub mod nestednet;
pub mod nft;
pub mod tun;
pub mod veth;
use std::process::{Command, Stdio};
use std::time::Duration;

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `nsjob` under `ferry run --pidns --netns --timens -d`, started by `launcher` (a command
/// that execs the rest, or nothing); returns the init's pid, killed with its tree on drop.
pub fn start_nsjob(w: &WorkDir, launcher: Command) -> (i32, ProcGuard) {
    run_detached(w, launcher, &["--pidns", "--netns", "--timens"], "nsjob", &[])
}

/// `ferry run FLAGS -d --pidfile W/init.pid -- WORKLOAD W ARGS`, started by `launcher`; the
/// init's pid, killed with its tree on drop.
pub fn run_detached(w: &WorkDir, launcher: Command, flags: &[&str], workload: &str, args: &[&str]) -> (i32, ProcGuard) {
    let pidfile = w.join("init.pid");
    let mut cmd = launcher;
    let st = cmd
        .arg("run")
        .args(flags)
        .args(["-d", "--pidfile", &path_str(&pidfile), "--"])
        .arg(ferry_workloads::path(workload))
        .arg(&w.path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(w.join("run.log")).expect("log"))
        .stderr(fs::File::create(w.join("out.log")).expect("log"))
        .status()
        .expect("ferry run");
    assert!(st.success(), "ferry run: {}", read_tail(&w.join("out.log"), 2000));
    let pid: i32 = fs::read_to_string(&pidfile).expect("pidfile").trim().parse().expect("pid");
    let guard = ProcGuard::new();
    guard.add(pid);
    (pid, guard)
}

/// Give the job's network namespace something to keep: a bridge with IPv4 and IPv6 addresses
/// and an MTU, a veth pair inside with one end a port of the bridge, a route through the
/// bridge, forwarding on, a ping group range; then tell the job. (This machine's kernel has no
/// dummy devices.)
pub fn configure_netns(w: &WorkDir, pid: i32) {
    need("ip", "iproute2");
    need("nsenter", "util-linux");
    let net = format!("--net=/proc/{pid}/ns/net");
    let ip = |args: &[&str]| run_ok(Command::new("nsenter").arg(&net).arg("ip").args(args));
    ip(&["link", "add", "nsxbr0", "address", "02:00:00:aa:bb:cc", "type", "bridge"]);
    ip(&["link", "add", "nsxv0", "type", "veth", "peer", "name", "nsxv1"]);
    ip(&["link", "set", "nsxv0", "master", "nsxbr0"]);
    ip(&["link", "set", "nsxbr0", "mtu", "1400", "up"]);
    ip(&["link", "set", "nsxv0", "up"]);
    ip(&["addr", "add", "10.77.0.5/24", "dev", "nsxbr0"]);
    ip(&["-6", "addr", "add", "fd00:77::5/64", "dev", "nsxbr0", "nodad"]);
    ip(&["route", "add", "10.78.0.0/16", "via", "10.77.0.1"]);
    for (k, v) in [("net.ipv4.ip_forward", "1"), ("net.ipv4.ping_group_range", "0 100")] {
        run_ok(Command::new("nsenter").arg(&net).args(["sysctl", "-q", "-w", &format!("{k}={v}")]));
    }
    fs::write(w.join("setup"), "").expect("setup file");
    wait_for("nsjob to be ready", Duration::from_secs(60), || w.join("ready").exists());
}

/// nsjob's rounds (it writes "N longest_step_ms" every 0.5 s).
pub fn rounds(w: &WorkDir) -> u64 {
    fs::read_to_string(w.join("rounds")).ok().and_then(|s| s.split_whitespace().next()?.parse().ok()).unwrap_or(0)
}

pub fn expect_progress(w: &WorkDir, when: &str) {
    let r0 = rounds(w);
    wait_for(&format!("nsjob to make progress {when} (rounds {r0})"), Duration::from_secs(20), || rounds(w) > r0);
}

/// Send go to the (restored) init, which forwards it, and expect nsjob's PASS.
pub fn go_and_pass(w: &WorkDir, pid: i32) {
    send_signal(pid, "USR2").expect("send go");
    wait_for("nsjob's result", Duration::from_secs(60), || w.join("result").exists());
    let result = fs::read_to_string(w.join("result")).unwrap_or_default();
    assert_eq!(result.trim(), "PASS", "nsjob's result; its log:\n{}", read_tail(&w.join("out.log"), 4000));
}

fn ferry(args: &[&str]) -> std::process::Output {
    Command::new(ferry_bin()).args(args).stdin(Stdio::null()).output().expect("run ferry")
}

fn ns_of(pid: i32, kind: &str) -> String {
    fs::read_link(format!("/proc/{pid}/ns/{kind}")).map(|l| l.display().to_string()).unwrap_or_default()
}

#[test]
fn control_nsjob() {
    let w = WorkDir::new("nsx-control");
    let (pid, _g) = start_nsjob(&w, Command::new(ferry_bin()));
    configure_netns(&w, pid);
    expect_progress(&w, "before go");
    go_and_pass(&w, pid);
}

/// `ferry run --netns --timens --mntns`: the job is in new namespaces with lo up, its clocks
/// read as the host's, and /tmp is a tmpfs of its own.
#[test]
fn run_makes_its_namespaces() {
    let out = ferry(&[
        "run",
        "--netns",
        "--timens",
        "--mntns",
        "--",
        "sh",
        "-c",
        "cat /proc/self/timens_offsets; ip -o link show; grep ' /tmp ' /proc/self/mountinfo; \
         readlink /proc/self/ns/net /proc/self/ns/time /proc/self/ns/mnt",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ferry run: {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("monotonic           0         0"), "{text}");
    assert!(text.contains("1: lo: <LOOPBACK,UP,LOWER_UP>") && !text.contains("2: "), "only lo, up: {text}");
    assert!(text.lines().any(|l| l.contains(" /tmp ") && l.contains(" - tmpfs ")), "no private tmpfs on /tmp: {text}");
    let me = std::process::id() as i32;
    for kind in ["net", "time", "mnt"] {
        assert!(!text.contains(&ns_of(me, kind)), "still in the test's {kind} namespace: {text}");
    }
}

/// Dump and restore on this machine: the restored job is in new network and time namespaces
/// with the same content, and its clocks went on.
#[test]
fn netns_timens_job_restored() {
    let w = WorkDir::new("nsx-cycle");
    let (pid, _g) = start_nsjob(&w, Command::new(ferry_bin()));
    configure_netns(&w, pid);
    expect_progress(&w, "before the dump");
    // Some time dumped: the clocks must account for it (not jump by more or less).
    let restored = dump_and_restore(&w, pid, &_g, Duration::from_secs(2));
    let me = std::process::id() as i32;
    for kind in ["net", "time"] {
        assert_ne!(ns_of(restored, kind), ns_of(me, kind), "the restored job is in ferry's {kind} namespace");
    }
    expect_progress(&w, "after the restore");
    go_and_pass(&w, restored);
}

/// `ferry dump` the job `pid` (killed), wait for it to go, `pause`, `ferry restore -d`; the
/// restored init's pid, added to `g`.
pub fn dump_and_restore(w: &WorkDir, pid: i32, g: &ProcGuard, pause: Duration) -> i32 {
    let img = w.join("img");
    let d = ferry(&["dump", "-t", &pid.to_string(), "-D", &path_str(&img)]);
    assert!(d.status.success(), "ferry dump: {}", String::from_utf8_lossy(&d.stderr));
    wait_for("the dumped tree to go", Duration::from_secs(20), || !pid_alive(pid));
    std::thread::sleep(pause);
    let pidfile = w.join("restored.pid");
    let r = ferry(&["restore", "-d", "-D", &path_str(&img), "--pidfile", &path_str(&pidfile)]);
    assert!(r.status.success(), "ferry restore: {}", String::from_utf8_lossy(&r.stderr));
    let restored: i32 = fs::read_to_string(&pidfile).expect("pidfile").trim().parse().expect("pid");
    g.add(restored);
    restored
}

/// A device ferry does not recreate (a veth whose peer is outside, not named with
/// `--external`) is refused by name. (Filtering rules are carried: nsx::nft.)
#[test]
fn netns_outside_veth_refused() {
    let out = format!("nsxo{}", std::process::id() % 100_000);
    let w = WorkDir::new("nsx-refused");
    let (pid, _g) = start_nsjob(&w, Command::new(ferry_bin()));
    let net = format!("--net=/proc/{pid}/ns/net");
    // (the peer in the test's namespace goes with the job's namespace)
    run_ok(
        Command::new("nsenter")
            .arg(&net)
            .args(["ip", "link", "add", "nsxv0", "type", "veth", "peer", &out])
            .args(["netns", &std::process::id().to_string()]),
    );
    fs::write(w.join("setup"), "").expect("setup file");
    wait_for("nsjob to be ready", Duration::from_secs(60), || w.join("ready").exists());
    dump_refused(
        pid,
        &w.join("img"),
        "network device nsxv0 (veth) in the tree's network namespace, its peer outside it",
    );
    assert!(pid_alive(pid), "a refused dump killed the job");
}

/// SysV semaphores, message queues and an unattached segment of an ipc namespace, with ids,
/// keys, modes, values, messages and content; and the namespace's msgmnb.
#[test]
fn ipc_namespace_objects_restored() {
    let unshare = need("unshare", "util-linux");
    let mut spec = Spec::c("sysvns");
    spec.pre_args = vec!["--ipc".into(), spec.program.clone().into_os_string()];
    spec.program = unshare;
    cycle(&spec);
}

/// POSIX message queues of the ipc namespace come back with their attributes (maximum
/// messages, message size), owner, mode and queued messages in priority order, as the process
/// checks from inside (`sysvns mqueue`); and the dump leaves them as they were (the process
/// also checks them when it is not killed: `dump -R`).
#[test]
fn ipc_namespace_posix_mqueues_restored() {
    cycle(&sysvns_mqueue());
}

#[test]
fn ipc_namespace_posix_mqueues_left_running() {
    let spec = sysvns_mqueue();
    let mut run = Run::start(&spec);
    let img = run.w.join("img");
    let d = ferry(&["dump", "-R", "-t", &run.pid.to_string(), "-D", &path_str(&img)]);
    assert!(d.status.success(), "ferry dump -R: {}", String::from_utf8_lossy(&d.stderr));
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload left running after its dump");
}

fn sysvns_mqueue() -> Spec {
    let unshare = need("unshare", "util-linux");
    let mut spec = Spec::c("sysvns").args(&["mqueue"]);
    spec.pre_args = vec!["--ipc".into(), spec.program.clone().into_os_string()];
    spec.program = unshare;
    spec
}

/// A queue some process registered for notification (mq_notify; here a process outside the
/// tree, in its ipc namespace, since a process of the tree would hold the queue open, refused
/// as an fd) is refused by name, and the refused dump leaves the queue's messages in place.
#[test]
fn ipc_namespace_posix_mqueue_notify_refused() {
    let python = need("python3", "python3");
    let nsenter = need("nsenter", "util-linux");
    let mut run = Run::start(&sysvns_mqueue());
    // SIGEV_NONE: registered, never sent (struct sigevent: value 8 bytes, signo, notify).
    let script = "import ctypes,sys,time\n\
        c=ctypes.CDLL('libc.so.6',use_errno=True)\n\
        q=c.mq_open(b'/nsxq2',2)\n\
        ev=(ctypes.c_int*16)()\n\
        ev[3]=1\n\
        r=c.mq_notify(q,ev)\n\
        print(q,r,ctypes.get_errno(),flush=True)\n\
        time.sleep(600)\n";
    let mut child = std::process::Command::new(nsenter)
        .arg(format!("--ipc=/proc/{}/ns/ipc", run.pid))
        .arg(python)
        .args(["-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the registering process");
    let guard = ProcGuard::new();
    guard.add(child.id() as i32);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().expect("stdout")), &mut line)
        .expect("read the registration");
    assert!(line.trim().ends_with(" 0 0"), "mq_notify: {line}");
    dump_refused(
        run.pid,
        &run.w.join("img"),
        &format!(
            "POSIX message queue /nsxq2 in the tree's ipc namespace with a notification registered by pid {}",
            child.id()
        ),
    );
    assert!(pid_alive(run.pid), "a refused dump killed the workload");
    drop(guard);
    let _ = child.wait();
    // The queues are whole: the workload's own check passes.
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload after a refused dump");
}

#[test]
fn control_sysvns() {
    let unshare = need("unshare", "util-linux");
    let mut spec = Spec::c("sysvns");
    spec.pre_args = vec!["--ipc".into(), spec.program.clone().into_os_string()];
    spec.program = unshare;
    control(&spec);
}
