//! Issue 13's last scenario for real: a container moved with Podman's `checkpoint --export
//! --tcp-established` / `restore --import --tcp-established` from one node to another, with an
//! established TCP connection whose client is on neither node.
//!
//! Three network namespaces: node A, node B and the client C, which has a veth to each node and
//! reaches the container's address (on the bridge of whichever node runs it) through a route
//! switched at migration time. Each node runs its own Podman (`nsenter` into the node's mount
//! and network namespaces): its own store (--root, --tmpdir, network config dir), and its own run
//! directory, a tmpfs of its own mount namespace at the path both nodes use (as two hosts would
//! both have /run/containers: Podman 4.3 restores an exported container with conmon's pid file
//! under the run directory it had on the node it left). Netavark makes the bridge, the firewall
//! and NAT rules inside the node's network namespace. The image reaches node B by `podman
//! save`/`load` (as a pull from one registry would: the same image id).
//!
//! What the nodes must do for the connection (not ferry's part, documented in
//! docs/containers.md): route the client's address without masquerading it (netavark
//! masquerades every flow from the container's subnet to the outside that its node's conntrack
//! first sees leaving the container: on node B that is the restored connection if the container
//! speaks first, and the client would answer the masqueraded segment with a RST), and move
//! the route to node B once `restore --import` has returned (Podman brings the container's
//! address up on node B before runc starts ferry; a client segment arriving in that window meets
//! a network namespace without the socket and gets a RST, with CRIU as with ferry).

use super::criu_dir;
use super::runtimes::{run_cmd, OnNode, Podman};
use super::scenarios::{Bridge, LIMITS};
use crate::common::*;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::Duration;

/// The client's own address (on C's lo), routed to C by both nodes.
const CLIENT: &str = "10.251.0.2";
/// The container's port.
const PORT: u16 = 8001;
/// Each direction's bytes run through 0..250 (a byte 0xff starts the service's last words).
const CYCLE: usize = 250;

/// The service: takes one connection, checks every byte it receives against the pattern,
/// sends the pattern (about 800 KB/s), and when the client has finished (end of stream) sends
/// 0xff then its own counts and verdict, and closes.
const SERVICE: &str = r#"
import socket, select, time
P = bytes(range(250)) * 300
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 8001))
s.listen(1)
c, _ = s.accept()
c.setblocking(False)
rx = tx = 0
bad = None
t0 = time.monotonic()
while True:
    want = tx < (time.monotonic() - t0) * 800000
    r, w, _ = select.select([c], [c] if want else [], [], 0.02)
    if r:
        d = c.recv(65536)
        if not d:
            break
        if bad is None and d != P[rx % 250:rx % 250 + len(d)]:
            bad = rx
        rx += len(d)
    if w:
        try:
            tx += c.send(P[tx % 250:tx % 250 + 16384])
        except BlockingIOError:
            pass
c.setblocking(True)
verdict = b'ok' if bad is None else b'BAD at %d' % bad
c.sendall(b'\xffreceived %d sent %d %s\n' % (rx, tx, verdict))
c.close()
"#;

/// Nodes A and B and the client C (network namespaces `podnode-{a,b,c}-PID-N`), and the nodes'
/// mount namespaces (files in W/mntns, each with its own tmpfs at W/noderun). Everything goes on
/// drop, also when the test fails: declare it before the Podmans (they go first).
struct PodNodes {
    a: String,
    b: String,
    c: String,
    mnt: PathBuf,
    runroot: PathBuf,
}

fn ip(args: &[&str]) {
    run_cmd(Command::new("ip").args(args), &format!("ip {}", args.join(" ")));
}

impl PodNodes {
    fn new(w: &WorkDir) -> PodNodes {
        need("ip", "iproute2");
        need("iptables", "iptables");
        let id = std::process::id();
        let n = PodNodes {
            a: format!("podnode-a-{id}"),
            b: format!("podnode-b-{id}"),
            c: format!("podnode-c-{id}"),
            mnt: w.join("mntns"),
            runroot: w.join("noderun"),
        };
        for ns in [&n.a, &n.b, &n.c] {
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        // C's links: ca (10.250.1.2) to A's ac (10.250.1.1), cb (10.250.2.2) to B's bc
        // (10.250.2.1). No reverse path filter on C: the container's segments may come in
        // through B while C's route still points at A.
        n.sysctl(&n.c, "net.ipv4.conf.all.rp_filter=0");
        n.sysctl(&n.c, "net.ipv4.conf.default.rp_filter=0");
        for (node, here, there, k) in [(&n.a, "ca", "ac", 1), (&n.b, "cb", "bc", 2)] {
            ip(&["-n", &n.c, "link", "add", here, "type", "veth", "peer", "name", there, "netns", node]);
            ip(&["-n", &n.c, "addr", "add", &format!("10.250.{k}.2/30"), "dev", here]);
            ip(&["-n", node, "addr", "add", &format!("10.250.{k}.1/30"), "dev", there]);
            ip(&["-n", &n.c, "link", "set", here, "up"]);
            ip(&["-n", node, "link", "set", there, "up"]);
            ip(&["-n", node, "route", "add", &format!("{CLIENT}/32"), "via", &format!("10.250.{k}.2")]);
            n.sysctl(node, "net.ipv4.ip_forward=1");
            // The client's network is routed, not masqueraded (see the module's doc).
            let nat = ["-t", "nat", "-I", "POSTROUTING", "-d", CLIENT, "-j", "RETURN"];
            run_cmd(n.enter_net(node, "iptables").args(nat), "iptables in a node");
        }
        ip(&["-n", &n.c, "addr", "add", &format!("{CLIENT}/32"), "dev", "lo"]);
        // The nodes' mount namespaces, kept by bind mounts on files of a private mount.
        fs::create_dir_all(&n.mnt).expect("create mntns dir");
        fs::create_dir_all(&n.runroot).expect("create the run directory");
        let m = path_str(&n.mnt);
        run_cmd(Command::new("mount").args(["--bind", &m, &m]), "mount --bind");
        run_cmd(Command::new("mount").args(["--make-private", &m]), "mount --make-private");
        for node in ["a", "b"] {
            let file = n.mnt.join(node);
            File::create(&file).expect("create mntns file");
            run_cmd(
                Command::new(need("unshare", "util-linux"))
                    .arg(format!("--mount={}", file.display()))
                    .args(["--propagation", "slave", "mount", "-t", "tmpfs"])
                    .arg(format!("podnode-run-{node}"))
                    .arg(&n.runroot),
                "unshare a node's mount namespace",
            );
        }
        n
    }

    fn enter_net(&self, ns: &str, program: &str) -> Command {
        let mut c = Command::new(need("nsenter", "util-linux"));
        c.arg(format!("--net=/run/netns/{ns}")).arg("--").arg(program);
        c
    }

    fn sysctl(&self, ns: &str, setting: &str) {
        run_cmd(self.enter_net(ns, "sysctl").args(["-q", "-w", setting]), "sysctl in a node");
    }

    /// Podman on node `node` ("a" or "b"), its store in W/store-NODE, `criu` from `bin`.
    fn podman(&self, w: &WorkDir, bin: &Path, node: &str, name: &str, image: &str) -> Podman {
        let netns = if node == "a" { self.a.clone() } else { self.b.clone() };
        Podman {
            base: w.join(&format!("store-{node}")),
            bin: bin.to_path_buf(),
            name: name.to_string(),
            image: image.to_string(),
            node: Some(OnNode { mntns: self.mnt.join(node), netns, runroot: self.runroot.clone() }),
        }
    }

    /// Point C's route to the container's /24 at node A (`to_b` false) or B.
    fn route(&self, prefix: &str, to_b: bool) {
        let via = if to_b { "10.250.2.1" } else { "10.250.1.1" };
        let net = format!("{prefix}.0/24");
        ip(&["-n", &self.c, "route", "replace", &net, "via", via, "src", CLIENT]);
    }

    /// The interfaces enslaved to `bridge` in node `ns`.
    fn bridge_ports(&self, ns: &str, bridge: &str) -> String {
        let out = Command::new("ip").args(["-n", ns, "-o", "link", "show", "master", bridge]).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }

    /// A TCP connection to `addr` made in C (a thread of the test enters C for the connect; the
    /// socket stays C's).
    fn connect_from_c(&self, addr: std::net::SocketAddr) -> std::io::Result<TcpStream> {
        let path = format!("/run/netns/{}", self.c);
        std::thread::spawn(move || {
            let ns = File::open(&path)?;
            ferry_sys::ns::setns(ns.as_fd(), libc::CLONE_NEWNET)?;
            TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        })
        .join()
        .expect("connect thread")
    }
}

impl Drop for PodNodes {
    fn drop(&mut self) {
        // conmon, and whatever else still runs in a node.
        for ns in [&self.a, &self.b, &self.c] {
            for _ in 0..50 {
                let out = Command::new("ip").args(["netns", "pids", ns]).stdin(Stdio::null()).output();
                let pids: Vec<i32> = out
                    .map(|o| {
                        String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
                    })
                    .unwrap_or_default();
                if pids.iter().all(|&p| !pid_alive(p)) {
                    break;
                }
                for p in pids {
                    kill_tree(p);
                }
                sleep(Duration::from_millis(20));
            }
        }
        for f in [self.mnt.join("a"), self.mnt.join("b"), self.mnt.clone()] {
            let _ = Command::new("umount").arg("-l").arg(&f).stderr(Stdio::null()).status();
        }
        for ns in [&self.a, &self.b, &self.c] {
            let _ = Command::new("ip").args(["netns", "del", ns]).stdin(Stdio::null()).output();
        }
    }
}

/// The test's side of the connection: bytes sent and received (checked against the pattern),
/// what went wrong, and the service's last words.
#[derive(Default)]
struct Client {
    sent: AtomicU64,
    received: AtomicU64,
    error: Mutex<Option<String>>,
    last_words: Mutex<Option<String>>,
    /// The reader waits while set (so that the service's data piles up in its queues).
    paused: AtomicBool,
    /// The writer ends its stream (shutdown of its direction) once set.
    finish: AtomicBool,
}

impl Client {
    fn fail(&self, what: String) {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(what);
    }

    fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn last_words(&self) -> Option<String> {
        self.last_words.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Send the pattern, 16 KiB every 20 ms, until told to finish; then end the stream.
    fn write(&self, mut s: TcpStream) {
        let pattern: Vec<u8> = (0..CYCLE * 70).map(|i| (i % CYCLE) as u8).collect();
        while !self.finish.load(Ordering::SeqCst) {
            let at = self.sent.load(Ordering::SeqCst) as usize % CYCLE;
            match s.write(&pattern[at..at + 16384]) {
                Ok(n) => {
                    self.sent.fetch_add(n as u64, Ordering::SeqCst);
                }
                Err(e) => return self.fail(format!("write after {} bytes: {e}", self.sent.load(Ordering::SeqCst))),
            }
            sleep(Duration::from_millis(20));
        }
        if let Err(e) = s.shutdown(Shutdown::Write) {
            self.fail(format!("shutdown: {e}"));
        }
    }

    /// Read the service's pattern, checking every byte, then its last words.
    fn read(&self, mut s: TcpStream) {
        let mut buf = vec![0u8; 65536];
        let mut tail: Vec<u8> = Vec::new();
        loop {
            while self.paused.load(Ordering::SeqCst) {
                sleep(Duration::from_millis(20));
            }
            let n = match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    return self.fail(format!("read after {} bytes: {e}", self.received.load(Ordering::SeqCst)));
                }
            };
            if !tail.is_empty() {
                tail.extend_from_slice(&buf[..n]);
                continue;
            }
            let data = match buf[..n].iter().position(|&b| b == 0xff) {
                Some(end) => {
                    tail.extend_from_slice(&buf[end + 1..n]);
                    &buf[..end]
                }
                None => &buf[..n],
            };
            let at = self.received.load(Ordering::SeqCst);
            if let Some(k) = data.iter().enumerate().position(|(k, &b)| b as u64 != (at + k as u64) % CYCLE as u64) {
                return self.fail(format!("byte {} of the service's stream is {}", at + k as u64, data[k]));
            }
            self.received.fetch_add(data.len() as u64, Ordering::SeqCst);
        }
        *self.last_words.lock().unwrap_or_else(|p| p.into_inner()) = Some(String::from_utf8_lossy(&tail).into_owned());
    }
}

/// A Python service in a Podman container on node A (a bridge network of its own, static
/// address PREFIX.5), and a client in C connected to that address, bytes streaming both ways
/// (each side checks what it receives). `checkpoint --export --tcp-established` on A while the
/// client holds back its reading (the service's data waits in its queues), `rm` on A, `restore
/// --import --tcp-established` on B (same network definition, another store, another run
/// directory), C's route switched to B, and the connection goes on: more bytes both ways, then
/// the client ends its stream and the service reports what it received and sent, which must be
/// what the client sent and received, with every byte where it belongs.
#[test]
fn podman_export_import_to_another_node_tcp_established() {
    let w = WorkDir::new("podnode");
    let nodes = PodNodes::new(&w);
    let net = Bridge::new(&w.join("store-a/net"));
    let def = format!("{}.json", net.name);
    fs::create_dir_all(w.join("store-b/net")).expect("create store B's network config dir");
    fs::copy(w.join("store-a/net").join(&def), w.join("store-b/net").join(&def)).expect("copy the network to B");
    let tag = std::process::id();
    let (name, image) = (format!("podnode-{tag}"), format!("localhost/podnode-py:{tag}"));
    let bin = criu_dir(&w);
    let pm_a = nodes.podman(&w, &bin, "a", &name, &image);
    let pm_b = nodes.podman(&w, &bin, "b", &name, &image);
    pm_a.import_python(&w);
    let image_tar = w.join("image.tar");
    pm_a.run(&["save", "-o", &path_str(&image_tar), &image], "save on node A");
    pm_b.run(&["load", "-i", &path_str(&image_tar)], "load on node B");

    let ip_arg = format!("{}.5", net.prefix);
    let mut args = vec!["run", "-d", "--name", &name, "--network", &net.name, "--ip", &ip_arg];
    args.extend(LIMITS);
    args.extend([image.as_str(), "/usr/bin/python3", "-u", "-c", SERVICE]);
    pm_a.run(&args, "run on node A");
    nodes.route(&net.prefix, false);
    let addr = std::net::SocketAddr::new(ip_arg.parse().expect("container address"), PORT);
    let mut conn = None;
    wait_for("the service to accept the client from C", Duration::from_secs(30), || {
        conn = nodes.connect_from_c(addr).ok();
        conn.is_some()
    });
    let conn = conn.unwrap_or_else(|| unreachable!());
    // (A stream that stops fails the test rather than hanging it.)
    conn.set_read_timeout(Some(Duration::from_secs(120))).expect("read timeout");
    conn.set_write_timeout(Some(Duration::from_secs(120))).expect("write timeout");
    let client = Arc::new(Client::default());
    let (c1, c2) = (client.clone(), client.clone());
    let reader = conn.try_clone().expect("clone the client's socket");
    let reading = std::thread::spawn(move || c1.read(reader));
    let writing = std::thread::spawn(move || c2.write(conn));
    let progress = |what: &str, sent: u64, received: u64| {
        wait_for(what, Duration::from_secs(120), || {
            client.error().is_some()
                || client.sent.load(Ordering::SeqCst) >= sent && client.received.load(Ordering::SeqCst) >= received
        });
        assert_eq!(client.error(), None, "{what}: the client's connection\n{}\n{}", pm_a.logs(), pm_b.logs());
    };
    progress("200 KB both ways on node A", 200_000, 200_000);

    // The client stops reading: what the service sends meanwhile waits in its queues and the
    // client's, and the client's data keeps coming (blocked by the network lock, then on its way
    // to nowhere, then retransmitted to B).
    client.paused.store(true, Ordering::SeqCst);
    sleep(Duration::from_millis(500));
    let pid_a = pm_a.pid();
    let export = w.join("ck.tar.zst");
    let export_arg = format!("--export={}", path_str(&export));
    pm_a.ok(&["container", "checkpoint", "--tcp-established", &export_arg, &name], "checkpoint --export on node A");
    assert!(!pid_alive(pid_a), "the container still runs on node A after the checkpoint");
    pm_a.run(&["rm", "-f", &name], "rm on node A");
    assert_eq!(nodes.bridge_ports(&nodes.a, &net.iface), "", "node A's bridge still has a port after rm");
    let import_arg = format!("--import={}", path_str(&export));
    pm_b.ok(&["container", "restore", "--keep", "--tcp-established", &import_arg], "restore --import on node B");
    nodes.route(&net.prefix, true);
    let (sent, received) = (client.sent.load(Ordering::SeqCst), client.received.load(Ordering::SeqCst));
    client.paused.store(false, Ordering::SeqCst);

    progress("500 KB more both ways on node B", sent + 500_000, received + 500_000);
    assert_eq!(pm_b.inspect(&format!("{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}", net.name)), ip_arg);
    assert_ne!(nodes.bridge_ports(&nodes.b, &net.iface), "", "node B's bridge has no port for the container");
    let pid_b = pm_b.pid();
    assert!(pid_alive(pid_b), "the service does not run on node B");
    let logs = pm_b.logs();
    assert!(logs.contains("serving CRIU's RPC"), "node B's restore did not go through ferry:\n{logs}");

    client.finish.store(true, Ordering::SeqCst);
    writing.join().expect("writer thread");
    reading.join().expect("reader thread");
    assert_eq!(client.error(), None, "the client's connection at its end\n{}", pm_b.logs());
    let (sent, received) = (client.sent.load(Ordering::SeqCst), client.received.load(Ordering::SeqCst));
    assert_eq!(
        client.last_words().as_deref().map(str::trim),
        Some(format!("received {sent} sent {received} ok").as_str()),
        "the service's counts and verdict (the client sent {sent} and received {received})"
    );
}
