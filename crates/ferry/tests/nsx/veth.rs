//! A job linked to its node by a veth pair (`ferry run --netns --veth`): the inside end in the
//! job's network namespace, the outside end in the node's, a port of the node's bridge. The
//! dump names it (`--external veth[eth0]:HOST@BRIDGE`), the restore makes the pair again with
//! the outside end in the restoring ferry's namespace. With it, an established TCP connection
//! between the node and the job (`tcpstream netpeer`, the test streaming both ways from the
//! node) survives a dump with `--tcp-established`: the network lock must drop its packets in
//! the job's own network namespace, where they enter and leave its socket.
//!
//! The "node" is a network namespace of the test's (same mount namespace), with a bridge
//! `br0` holding 10.79.0.1/24; the job's `eth0` gets 10.79.0.2/24.

use crate::common::*;
use crate::inet::PeerStream;
use std::fs::{self, File};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub const JOB_ADDR: &str = "10.79.0.2";

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A node: a network namespace with lo and a bridge `br0` (10.79.0.1/24) up; removed on drop
/// with every process in it.
pub struct Node {
    pub name: String,
}

impl Node {
    pub fn new(label: &str) -> Node {
        need("ip", "iproute2");
        need("nsenter", "util-linux");
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let node = Node { name: format!("ferry-{label}-{}-{n}", std::process::id()) };
        run_ok(Command::new("ip").args(["netns", "add", &node.name]));
        node.bridge("10.79.0.1/24");
        node
    }

    /// Give this node the bridge `br0` with address `addr`, and lo, up.
    pub fn bridge(&self, addr: &str) {
        let ip = |args: &[&str]| run_ok(Command::new("ip").args(["-n", &self.name]).args(args));
        ip(&["link", "set", "lo", "up"]);
        ip(&["link", "add", "br0", "type", "bridge"]);
        ip(&["addr", "add", addr, "dev", "br0"]);
        ip(&["link", "set", "br0", "up"]);
    }

    /// `program` in this node's network namespace (the test's mount namespace).
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name)).arg("--").arg(program);
        c
    }

    /// `ip -o link show dev` in this node, or "" if it has no such device.
    pub fn link(&self, dev: &str) -> String {
        let out = Command::new("ip").args(["-n", &self.name, "-o", "link", "show", "dev", dev]).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }

    /// A TCP connection to `addr` made from this node.
    pub fn connect(&self, addr: String) -> TcpStream {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).expect("node namespace");
            ferry_sys::ns::setns(ns.as_fd(), libc::CLONE_NEWNET).expect("setns into the node");
            TcpStream::connect(&addr)
        })
        .join()
        .expect("connect thread")
        .expect("connect to the job from the node")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for _ in 0..50 {
            let out = Command::new("ip").args(["netns", "pids", &self.name]).stdin(Stdio::null()).output();
            let pids: Vec<i32> = out
                .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect())
                .unwrap_or_default();
            if pids.iter().all(|&p| !pid_alive(p)) {
                break;
            }
            for p in pids {
                kill_tree(p);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).stdin(Stdio::null()).output();
    }
}

/// `tcpstream netpeer MB` under `ferry run --pidns --netns --veth HOST@br0:10.79.0.2/24`, started
/// by `launcher` (which runs ferry in a node); returns the init's pid, killed on drop.
pub fn start_linked_job(w: &WorkDir, launcher: Command, host: &str, mb: &str) -> (i32, ProcGuard) {
    let veth = format!("{host}@br0:{JOB_ADDR}/24");
    crate::nsx::run_detached(w, launcher, &["--pidns", "--netns", "--veth", &veth], "tcpstream", &["netpeer", mb])
}

/// The job's listening port, once it wrote it.
pub fn job_port(w: &WorkDir) -> u16 {
    wait_for("the job's port", Duration::from_secs(60), || w.join("port").exists());
    fs::read_to_string(w.join("port")).expect("port").trim().parse().expect("port number")
}

/// After go: the job's PASS, and the byte counts of both directions agree.
pub fn finish_stream(w: &WorkDir, peer: PeerStream, mb: u64) {
    peer.send_more(mb);
    wait_for("the job's result", Duration::from_secs(180), || w.join("result").exists());
    let result = fs::read_to_string(w.join("result")).unwrap_or_default();
    let (sent, received) =
        peer.join().unwrap_or_else(|e| panic!("{e}; job's log:\n{}", read_tail(&w.join("out.log"), 4000)));
    assert_eq!(result.trim(), "PASS", "the job's result; its log:\n{}", read_tail(&w.join("out.log"), 4000));
    let counts = fs::read_to_string(w.join("counts")).unwrap_or_default();
    assert_eq!(counts.trim(), format!("sent {received} received {sent}"), "the job's byte counts against the test's");
}

fn ferry_in(node: &Node, w: &WorkDir, label: &str, args: &[&str]) {
    let st = node
        .cmd(ferry_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(w.join(&format!("{label}.out"))).expect("log"))
        .stderr(File::create(w.join(&format!("{label}.err"))).expect("log"))
        .status()
        .expect("run ferry");
    assert!(st.success(), "ferry {label}: {}", read_tail(&w.join(&format!("{label}.err")), 4000));
}

/// The job streams both ways with the node through its veth while it is dumped (the node's
/// writer never pauses), killed and restored on the same node: no byte lost or duplicated, the
/// outside end is made again in the node, on its bridge, and the job is in a new network
/// namespace.
#[test]
fn veth_job_tcp_stream_across_dump_and_restore() {
    need("nft", "nftables");
    let node = Node::new("vethjob");
    let w = WorkDir::new("nsx-veth");
    let host = format!("fxh{}", std::process::id() % 100_000);
    let (pid, guard) = start_linked_job(&w, node.cmd(ferry_bin()), &host, "50");
    assert!(node.link(&host).contains("master br0"), "no outside end on the bridge: {:?}", node.link(&host));
    let port = job_port(&w);
    let peer = PeerStream::start(node.connect(format!("{JOB_ADDR}:{port}")));
    wait_for("the job's ready", Duration::from_secs(60), || w.join("ready").exists());
    // The job's network namespace outlives the job for a while, as when a container's infra
    // process holds it: the packets the node keeps sending meanwhile must meet the lock there,
    // not a namespace without the socket (which answers with a reset).
    let hold = File::open(format!("/proc/{pid}/ns/net")).expect("the job's network namespace");
    let img = w.join("img");
    let ext = format!("veth[eth0]:{host}@br0");
    ferry_in(
        &node,
        &w,
        "dump",
        &["dump", "-t", &pid.to_string(), "-D", &path_str(&img), "--tcp-established", "--external", &ext],
    );
    wait_for("the dumped tree to go", Duration::from_secs(20), || !pid_alive(pid));
    // The test keeps sending into the locked connection while no process has it.
    std::thread::sleep(Duration::from_millis(1500));
    drop(hold);
    let pidfile = w.join("restored.pid");
    ferry_in(&node, &w, "restore", &["restore", "-d", "-D", &path_str(&img), "--pidfile", &path_str(&pidfile)]);
    let restored: i32 = fs::read_to_string(&pidfile).expect("pidfile").trim().parse().expect("pid");
    guard.add(restored);
    let ns = |p: i32| fs::read_link(format!("/proc/{p}/ns/net")).map(|l| l.display().to_string()).unwrap_or_default();
    assert_ne!(ns(restored), ns(std::process::id() as i32), "the restored job is in the test's network namespace");
    let link = node.link(&host);
    assert!(link.contains("master br0") && link.contains(",UP"), "outside end after the restore: {link:?}");
    send_signal(restored, "USR2").expect("send go");
    finish_stream(&w, peer, 50);
}

/// Without `--external veth[..]` the dump is refused, naming the option; the job goes on.
#[test]
fn veth_job_without_external_refused() {
    let node = Node::new("vethref");
    let w = WorkDir::new("nsx-veth-ref");
    let host = format!("fxr{}", std::process::id() % 100_000);
    let (pid, _guard) = start_linked_job(&w, node.cmd(ferry_bin()), &host, "1");
    job_port(&w);
    dump_refused(pid, &w.join("img"), "network device eth0 (veth) in the tree's network namespace, its peer outside it (name it with --external veth[eth0]:OUTSIDE[@BRIDGE])");
    assert!(pid_alive(pid), "a refused dump killed the job");
}

/// The network tables of the network namespace `ns` (a /proc path), as `nft list tables` prints them.
fn nft_tables(ns: &str) -> String {
    let out = Command::new("nsenter").arg(format!("--net={ns}")).args(["nft", "list", "tables"]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
}

/// The restore's own network lock: the job comes back into a new network namespace, whose veth
/// is up with the job's address before its sockets exist. The restore is held in that window
/// (FERRY_FAULT=pause-before-sockets) while the node keeps retransmitting into the connection:
/// a `ferry_lock_*` table must be in the new namespace then (without it, a retransmission
/// meets no socket and the node's connection is reset), and gone once the job runs; the stream
/// goes on without a byte lost.
#[test]
fn veth_job_restore_window_locked() {
    need("nft", "nftables");
    let node = Node::new("vethwin");
    let w = WorkDir::new("nsx-veth-win");
    let host = format!("fxw{}", std::process::id() % 100_000);
    let (pid, guard) = start_linked_job(&w, node.cmd(ferry_bin()), &host, "20");
    let port = job_port(&w);
    let peer = PeerStream::start(node.connect(format!("{JOB_ADDR}:{port}")));
    wait_for("the job's ready", Duration::from_secs(60), || w.join("ready").exists());
    let img = w.join("img");
    let ext = format!("veth[eth0]:{host}@br0");
    ferry_in(
        &node,
        &w,
        "dump",
        &["dump", "-t", &pid.to_string(), "-D", &path_str(&img), "--tcp-established", "--external", &ext],
    );
    wait_for("the dumped tree to go", Duration::from_secs(20), || !pid_alive(pid));
    let pidfile = w.join("restored.pid");
    let mut restore = node
        .cmd(ferry_bin())
        .env("FERRY_FAULT", "pause-before-sockets:6000")
        .args(["restore", "-d", "-D", &path_str(&img), "--pidfile", &path_str(&pidfile)])
        .stdin(Stdio::null())
        .stdout(File::create(w.join("restore.out")).expect("log"))
        .stderr(File::create(w.join("restore.err")).expect("log"))
        .spawn()
        .expect("run ferry restore");
    // In the window: ferry's restoring thread is in the job's new network namespace, whose
    // eth0 has the job's address already (the name of the dumped namespace's outside end may
    // still be taken for a while: the kernel removes a dead namespace asynchronously).
    let ino = |p: &str| fs::metadata(p).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).ok();
    let node_ino = ino(&format!("/run/netns/{}", node.name));
    assert!(node_ino.is_some(), "the node's namespace file is gone");
    let mut window_tables = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while window_tables.is_none() && std::time::Instant::now() < deadline {
        let tasks = fs::read_dir(format!("/proc/{}/task", restore.id())).into_iter().flatten().flatten();
        for ns in tasks
            .map(|t| format!("{}/ns/net", t.path().display()))
            .filter(|ns| ino(ns).is_some_and(|i| Some(i) != node_ino))
        {
            let addrs = Command::new("nsenter").arg(format!("--net={ns}")).args(["ip", "-o", "addr", "show"]).output();
            if addrs.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("{JOB_ADDR}/"))) {
                window_tables = Some(nft_tables(&ns));
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let window_tables = window_tables.expect("never saw the restore's new network namespace with the job's address");
    let st = restore.wait().expect("wait for ferry restore");
    assert!(st.success(), "ferry restore: {}", read_tail(&w.join("restore.err"), 4000));
    let restored: i32 = fs::read_to_string(&pidfile).expect("pidfile").trim().parse().expect("pid");
    guard.add(restored);
    let tables = nft_tables(&format!("/proc/{restored}/ns/net"));
    assert!(!tables.contains("ferry_lock_"), "the restore left its lock: {tables:?}");
    send_signal(restored, "USR2").expect("send go");
    // (The stream first: without the lock, the node's connection was reset in the window.)
    finish_stream(&w, peer, 20);
    assert!(
        window_tables.lines().any(|l| l.contains("ferry_lock_")),
        "no network lock in the restored job's namespace while its sockets did not exist: {window_tables:?}"
    );
}
