//! The container scenarios users run every day, with Podman 4.3 (+ runc) and runc, ferry the
//! only `criu` they find: a Python service on Podman's bridge network with a published port, a
//! container with a tmpfs and a bind mount, export/import to a second Podman store with an
//! established TCP connection whose client stays outside, containers with a terminal, and a real
//! program (the host's redis-server) whose client keeps its connection across checkpoint/restore
//! and export/import.
//!
//! Root filesystems are built here (busybox-static; Debian's python3 with its libraries and
//! standard library; redis-server with its libraries: no registry). Every container, store, network (a bridge of this test's own,
//! in a network config dir of its own), port and socket is named after the test's pid or picked
//! free, and removed on drop, also when the test fails.

use super::criu_dir;
use super::runtimes::{counter, run_cmd, runc_bundle, wait_counter, Podman, Runc};
use crate::common::*;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Root lacks CAP_SYS_RESOURCE here: Podman's default nofile limit could not be restored.
pub(super) const LIMITS: [&str; 4] = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"];

/// Debian's python3 (not a pyenv shim) and its standard library: (binary, /usr/lib/pythonX.Y).
fn host_python() -> (PathBuf, PathBuf) {
    let bin = fs::canonicalize("/usr/bin/python3")
        .unwrap_or_else(|_| panic!("{}", missing_tool("/usr/bin/python3", "python3")));
    let name = bin.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let lib = PathBuf::from("/usr/lib").join(&name);
    assert!(lib.join("socket.py").is_file(), "no standard library for {} in {}", bin.display(), lib.display());
    (bin, lib)
}

impl Podman {
    /// A root filesystem with the host's python3, its shared libraries and its standard library
    /// (without tests, tkinter, idle ...), imported as this test's image.
    pub(super) fn import_python(&self, w: &WorkDir) {
        let (py, lib) = host_python();
        let rootfs = host_rootfs(w, "pyroot", &[(&py, "python3")]);
        let tar = w.join("pyroot.tar");
        let rel = lib.strip_prefix("/").unwrap_or(&lib);
        let mut c = Command::new("tar");
        c.arg("-cf").arg(&tar).arg("-C").arg(&rootfs).arg(".").arg("-C").arg("/");
        for x in ["test", "idlelib", "tkinter", "ensurepip", "lib2to3", "dist-packages", "site-packages"] {
            c.arg(format!("--exclude={x}"));
        }
        run_cmd(c.arg(rel), "tar");
        self.run(&["import", &path_str(&tar), &self.image], "import");
    }

    /// `podman ARGS...`, its output on failure with ferry's logs.
    pub(super) fn ok(&self, args: &[&str], what: &str) {
        let out = self.cmd().args(args).stdin(Stdio::null()).output().expect("run podman");
        assert!(out.status.success(), "podman {what}: {}\n{}", String::from_utf8_lossy(&out.stderr), self.logs());
    }

    pub(super) fn inspect(&self, format: &str) -> String {
        let out = self.run(&["inspect", "-f", format, &self.name], "inspect");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// A root filesystem W/NAME with the host's programs `bins` (each as /usr/bin/ITS_NAME: a
/// program that looks at its argv[0], as redis-server, gets its name) and their shared libraries.
fn host_rootfs(w: &WorkDir, name: &str, bins: &[(&Path, &str)]) -> PathBuf {
    let rootfs = w.join(name);
    for d in ["usr/bin", "tmp", "proc", "sys", "dev", "etc", "run", "data", "scratch"] {
        fs::create_dir_all(rootfs.join(d)).expect("create rootfs dir");
    }
    for (bin, as_name) in bins {
        fs::copy(bin, rootfs.join("usr/bin").join(as_name)).unwrap_or_else(|e| panic!("copy {}: {e}", bin.display()));
        let ldd = run_cmd(Command::new("ldd").arg(bin), "ldd");
        for so in String::from_utf8_lossy(&ldd.stdout).split_whitespace().filter(|t| t.starts_with('/')) {
            let to = rootfs.join(so.trim_start_matches('/'));
            fs::create_dir_all(to.parent().unwrap_or(&rootfs)).expect("create lib dir");
            fs::copy(so, &to).unwrap_or_else(|e| panic!("copy {so}: {e}"));
        }
    }
    rootfs
}

/// A bridge network of this test's own (netavark, Podman's backend here): its definition in
/// the test's network config dir, its own interface name and a /24 not routed on this host.
/// The bridge goes on drop (after the containers: declare it before the Podman).
pub(super) struct Bridge {
    pub(super) name: String,
    pub(super) iface: String,
    /// The first three bytes of its /24 ("10.X.Y").
    pub(super) prefix: String,
}

impl Bridge {
    pub(super) fn new(config_dir: &Path) -> Bridge {
        // (Tests of one e2e process run at once: the pid alone would give them one network.)
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = std::process::id() * 8 + n % 8;
        let routes = Command::new("ip").args(["-4", "route"]).output().map(|o| o.stdout).unwrap_or_default();
        let routes = String::from_utf8_lossy(&routes).into_owned();
        let prefix = (0..256u64)
            .map(|k| (u64::from(tag) * 7 + k) % 16384)
            .map(|n| format!("10.{}.{}", 160 + n / 256, n % 256))
            .find(|p| !routes.contains(&format!("{p}.")))
            .expect("a free 10.x.y.0/24");
        let b = Bridge { name: format!("ferrynet-{tag}"), iface: format!("fbr{}", tag % 100_000_000), prefix };
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let def = serde_json::json!({
            "name": b.name,
            "id": format!("{:0>64}", format!("{tag:x}{nanos:x}")),
            "driver": "bridge",
            "network_interface": b.iface,
            "created": "2026-01-01T00:00:00Z",
            "subnets": [{"subnet": format!("{}.0/24", b.prefix), "gateway": format!("{}.1", b.prefix)}],
            "ipv6_enabled": false,
            "internal": false,
            "dns_enabled": false,
            "ipam_options": {"driver": "host-local"}
        });
        fs::create_dir_all(config_dir).expect("create network config dir");
        fs::write(config_dir.join(format!("{}.json", b.name)), def.to_string()).expect("write network");
        b
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // (netavark removes it with the last container; this is for a test that failed midway.)
        let _ = Command::new("ip").args(["link", "del", &self.iface]).stderr(Stdio::null()).status();
    }
}

/// A TCP port free on this host now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("0.0.0.0:0").expect("bind a free port");
    l.local_addr().expect("local address").port()
}

/// The Python service: counts the requests it served (in memory) and answers each with the count.
const COUNTING_SERVICE: &str = r#"
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8000))
s.listen(16)
served = 0
while True:
    c, _ = s.accept()
    served += 1
    c.recv(64)
    c.sendall(b"served %d\n" % served)
    c.close()
"#;

/// Ask the service behind host port `port` (127.0.0.1: through Podman's port forwarding).
fn ask(port: u16) -> Option<u64> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"hi\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.trim().strip_prefix("served ")?.parse().ok()
}

fn ns_inode(path: &str) -> u64 {
    fs::metadata(path).map(|m| m.ino()).unwrap_or_else(|e| panic!("stat {path}: {e}"))
}

/// `podman run -d` of `script` (python3) on a bridge network of the test's own, container port
/// `inner` published on a free host port: (network, Podman, host port). (Bind them in this
/// order: the container goes before its network.)
fn python_on_bridge(w: &WorkDir, inner: u16, script: &str) -> (Bridge, Podman, u16) {
    let net = Bridge::new(&w.join("podman/net"));
    let pm = Podman::new(w);
    pm.import_python(w);
    let port = free_port();
    let publish = format!("{port}:{inner}");
    let mut args = vec!["run", "-d", "--name", &pm.name, "--network", &net.name, "-p", &publish];
    args.extend(LIMITS);
    args.extend([pm.image.as_str(), "/usr/bin/python3", "-u", "-c", script]);
    pm.run(&args, "run");
    (net, pm, port)
}

/// Scenario 1: Podman's bridge network with a published port. A Python service counting its
/// requests in memory is reached from the host through the published port before and after
/// `container checkpoint`/`restore`; the count goes on, the restored service is in the network
/// namespace Podman made for it (runc hands it over as `extRootNetNS`), and ferry uses that fd
/// for the namespace (no "unused inherit-fd" warning).
#[test]
fn podman_bridge_published_port() {
    let w = WorkDir::new("podman-bridge");
    let (_net, pm, port) = python_on_bridge(&w, 8000, COUNTING_SERVICE);
    let mut first = None;
    wait_for("the service through the published port", Duration::from_secs(30), || {
        first = ask(port);
        first.is_some()
    });
    let mut last = first.unwrap_or(0);
    for _ in 0..2 {
        let n = ask(port).expect("the service answers before the checkpoint");
        assert_eq!(n, last + 1);
        last = n;
    }
    let pid = pm.pid();
    pm.ok(&["container", "checkpoint", "--keep", &pm.name], "checkpoint");
    assert!(!pid_alive(pid), "the container still runs after the checkpoint");
    assert!(ask(port).is_none(), "something answers on port {port} while the container is checkpointed");
    pm.ok(&["container", "restore", "--keep", &pm.name], "restore");
    let pid = pm.pid();
    let mut after = None;
    wait_for("the restored service through the published port", Duration::from_secs(30), || {
        after = ask(port);
        after.is_some()
    });
    assert_eq!(after, Some(last + 1), "the restored service did not go on counting from {last}");
    assert_eq!(ask(port), Some(last + 2));
    let sandbox = pm.inspect("{{.NetworkSettings.SandboxKey}}");
    assert_eq!(
        ns_inode(&format!("/proc/{pid}/ns/net")),
        ns_inode(&sandbox),
        "the restored service is not in the network namespace Podman made ({sandbox})"
    );
    let logs = pm.logs();
    assert!(logs.contains("serving CRIU's RPC") && logs.contains("extRootNetNS"), "not ferry's logs:\n{logs}");
    assert!(!logs.contains("no file of the image has this key"), "ferry ignored runc's netns fd:\n{logs}");
}

/// The job of scenario 2: a note written once to the tmpfs, a file of the bind mount read one
/// byte per tick (byte i is i % 10); each tick it checks both itself and writes "i ok|BAD".
const MOUNTS_JOB: &str = r#"
import os, time
note = "note-%d" % time.time_ns()
open("/scratch/note", "w").write(note)
f = open("/data/input", "rb")
i = 0
while True:
    i += 1
    b = f.read(1)
    ok = f.tell() == i and b == b"%d" % (i % 10) and open("/scratch/note").read() == note
    open("/data/status.new", "w").write("%d %s\n" % (i, "ok" if ok else "BAD"))
    os.rename("/data/status.new", "/data/status")
    time.sleep(0.1)
"#;

/// Scenario 2: `--tmpfs /scratch` and `-v HOSTDIR:/data`. The tmpfs content written before the
/// checkpoint is there after the restore (ferry carries it in the image), and the file open in
/// the bind mount keeps its offset (the job checks both itself on every tick).
#[test]
fn podman_tmpfs_and_bind_mount() {
    let w = WorkDir::new("podman-mounts");
    let pm = Podman::new(&w);
    pm.import_python(&w);
    let data = w.join("data");
    fs::create_dir_all(&data).expect("create data dir");
    let input: String = (1..20000).map(|i| char::from(b'0' + (i % 10) as u8)).collect();
    fs::write(data.join("input"), input).expect("write input");
    let volume = format!("{}:/data", path_str(&data));
    let mut args = vec!["run", "-d", "--name", &pm.name, "--network", "none", "--tmpfs", "/scratch", "-v", &volume];
    args.extend(LIMITS);
    args.extend([pm.image.as_str(), "/usr/bin/python3", "-u", "-c", MOUNTS_JOB]);
    pm.run(&args, "run");
    let status = || -> (u64, String) {
        let s = fs::read_to_string(data.join("status")).unwrap_or_default();
        let mut it = s.split_whitespace();
        (it.next().and_then(|n| n.parse().ok()).unwrap_or(0), it.next().unwrap_or("").to_string())
    };
    wait_for("the job's tenth tick", Duration::from_secs(30), || status().0 >= 10);
    assert_eq!(status().1, "ok", "the job failed its own check before the checkpoint");
    let pid = pm.pid();
    pm.ok(&["container", "checkpoint", "--keep", &pm.name], "checkpoint");
    assert!(!pid_alive(pid));
    let at_dump = status().0;
    pm.ok(&["container", "restore", "--keep", &pm.name], "restore");
    wait_for("the restored job's ticks", Duration::from_secs(30), || status().0 >= at_dump + 10);
    let (n, verdict) = status();
    assert_eq!(verdict, "ok", "after the restore the job finds its tmpfs note or its file offset changed (tick {n})");
    assert!(pm.logs().contains("serving CRIU's RPC"));
}

/// This host's own address on its default route (a client from elsewhere reaches a published
/// port there: DNAT only, while a client on 127.0.0.1 is masqueraded by netavark).
fn host_address() -> std::net::IpAddr {
    let out =
        Command::new("ip").args(["-4", "route", "get", "192.0.2.200"]).output().map(|o| o.stdout).unwrap_or_default();
    let out = String::from_utf8_lossy(&out).into_owned();
    let mut it = out.split_whitespace().skip_while(|t| *t != "src").skip(1);
    it.next().and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("no address of this host on a route: {out}"))
}

/// Scenario 3: `checkpoint --export --tcp-established`, `rm`, then `restore --import
/// --tcp-established` into a second Podman store ("node B": its own --root/--runroot, the
/// image copied there with save/load, the same network definition; the run directory shared,
/// see below) on the same kernel. The client of the container's TCP connection is this test,
/// outside the container in the host's network namespace, connected through the published port
/// on the host's own address (as a client from another machine would be); it keeps reading the
/// container's stream of numbers across the move and sees no gap, no reset and no end of stream.
///
/// What it proves: Podman's archive carries ferry's image with the connection (TCP repair
/// state, queues), a store that never saw the container restores it, and the host's NAT
/// (conntrack) entry keeps working with the recreated port forwarding. What it does not: a
/// move between two kernels or hosts (the address stays on this host's bridge).
#[test]
fn podman_export_import_tcp_established() {
    let w = WorkDir::new("podman-tcp");
    let stream = "import socket, time\ns = socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0', 8001))\ns.listen(1)\nc, _ = s.accept()\ni = 0\nwhile True:\n    i += 1\n    c.sendall(b'%d\\n' % i)\n    time.sleep(0.05)\n";
    let (_net, pm, port) = python_on_bridge(&w, 8001, stream);
    // The client: reads numbers; records the last one, or what went wrong.
    let seen: Arc<Mutex<(u64, Option<String>)>> = Arc::new(Mutex::new((0, None)));
    let addr = std::net::SocketAddr::new(host_address(), port);
    let deadline = Instant::now() + Duration::from_secs(30);
    let conn = loop {
        // (Connected when the service accepted: it then sends "1".)
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            // (The service accepts one connection only: once connected, wait for its "1" long
            // enough for a loaded machine rather than connect again.)
            s.set_read_timeout(Some(Duration::from_secs(20))).expect("read timeout");
            let mut b = [0u8; 2];
            if s.read_exact(&mut b).is_ok() && &b == b"1\n" {
                break s;
            }
        }
        assert!(Instant::now() < deadline, "the stream service does not answer on port {port}");
        sleep(Duration::from_millis(200));
    };
    conn.set_read_timeout(Some(Duration::from_secs(120))).expect("read timeout");
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        let mut last = 1u64;
        for line in BufReader::new(conn).lines() {
            let err = match line.map(|l| l.parse::<u64>()) {
                Ok(Ok(n)) if n == last + 1 => {
                    last = n;
                    seen2.lock().unwrap_or_else(|p| p.into_inner()).0 = n;
                    continue;
                }
                Ok(Ok(n)) => format!("gap: {n} after {last}"),
                Ok(Err(e)) => format!("garbage after {last}: {e}"),
                Err(e) => format!("read error after {last}: {e}"),
            };
            seen2.lock().unwrap_or_else(|p| p.into_inner()).1 = Some(err);
            return;
        }
        seen2.lock().unwrap_or_else(|p| p.into_inner()).1 = Some(format!("end of stream after {last}"));
    });
    let now = || seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    wait_for("20 numbers", Duration::from_secs(30), || now().0 >= 20 || now().1.is_some());
    assert_eq!(now().1, None);

    let node_b = node_b(&w, &pm);

    let export = w.join("ck.tar.zst");
    let export_arg = format!("--export={}", path_str(&export));
    pm.ok(&["container", "checkpoint", "--tcp-established", &export_arg, &pm.name], "checkpoint --export");
    // (What was sent before the checkpoint may still be on its way to the reader.)
    let mut at_dump = now().0;
    wait_for("the client to read what was sent before the checkpoint", Duration::from_secs(10), || {
        sleep(Duration::from_millis(300));
        std::mem::replace(&mut at_dump, now().0) == at_dump
    });
    pm.run(&["rm", "-f", &pm.name], "rm");
    sleep(Duration::from_secs(1));
    assert_eq!(now(), (at_dump, None), "the stream moved or broke while the container was gone");
    let import_arg = format!("--import={}", path_str(&export));
    node_b.ok(&["container", "restore", "--keep", "--tcp-established", &import_arg], "restore --import on node B");
    wait_for("the stream to go on after the import", Duration::from_secs(90), || {
        now().0 >= at_dump + 40 || now().1.is_some()
    });
    let (n, err) = now();
    assert_eq!(err, None, "the client's connection broke across export/import (last {n}, {at_dump} at the checkpoint)");
    let logs = node_b.logs();
    assert!(logs.contains("serving CRIU's RPC"), "node B's restore did not go through ferry:\n{logs}");
}

/// Node B of an export/import: another store, the same image (save/load keeps its id), the same
/// network. (Its run directory is node A's: Podman 4.3 restores the exported config as it was,
/// with conmon's pid file under A's --runroot.)
fn node_b(w: &WorkDir, pm: &Podman) -> Podman {
    let node_b = Podman {
        base: w.join("podman-b"),
        bin: pm.bin.clone(),
        name: pm.name.clone(),
        image: pm.image.clone(),
        node: None,
    };
    fs::create_dir_all(&node_b.base).expect("create store B");
    for shared in ["net", "run"] {
        std::os::unix::fs::symlink(pm.base.join(shared), node_b.base.join(shared))
            .expect("share a directory with node B");
    }
    let image_tar = w.join("image.tar");
    pm.run(&["save", "-o", &path_str(&image_tar), &pm.image], "save");
    node_b.run(&["load", "-i", &path_str(&image_tar)], "load on node B");
    node_b
}

/// One RESP command on a redis connection: the reply (status, integer or bulk string) as text.
fn resp(r: &mut BufReader<TcpStream>, args: &[&str]) -> Result<String, String> {
    let mut m = format!("*{}\r\n", args.len());
    for a in args {
        m += &format!("${}\r\n{a}\r\n", a.len());
    }
    r.get_mut().write_all(m.as_bytes()).map_err(|e| format!("send {args:?}: {e}"))?;
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| format!("reply to {args:?}: {e}"))?;
    let line = line.trim_end().to_string();
    match line.split_at_checked(1) {
        Some(("+" | ":", v)) => Ok(v.to_string()),
        Some(("$", n)) => {
            let n: usize = n.parse().map_err(|_| format!("reply to {args:?}: {line:?}"))?;
            let mut b = vec![0u8; n + 2];
            r.read_exact(&mut b).map_err(|e| format!("reply to {args:?}: {e}"))?;
            Ok(String::from_utf8_lossy(&b[..n]).into_owned())
        }
        _ => Err(format!("reply to {args:?}: {line:?}")),
    }
}

/// Scenario 5: a real program, the host's redis-server (with its libraries, in a root file
/// system built here), on the test's bridge with its port published. This test is its client
/// from outside (on the host's own address, as a client from another machine), on one
/// connection throughout: a counter and 500 keys written before, then `container checkpoint
/// --tcp-established` and `restore --tcp-established`, then `checkpoint --export
/// --tcp-established`, `rm`, and `restore --import --tcp-established` into a second store (node
/// B). After each, the same connection gets the next count and every key back, and new clients
/// through the published port are answered by the same server (run id).
#[test]
fn podman_redis_client_keeps_its_connection_across_restore_and_import() {
    let w = WorkDir::new("realapps-rds");
    let redis = fs::canonicalize(need("/usr/bin/redis-server", "redis-server")).expect("redis-server");
    let net = Bridge::new(&w.join("podman/net"));
    let tag = std::process::id();
    let pm = Podman {
        base: w.join("podman"),
        bin: criu_dir(&w),
        name: format!("realapps-redis-{tag}"),
        image: format!("localhost/realapps-redis:{tag}"),
        node: None,
    };
    let rootfs = host_rootfs(&w, "redisroot", &[(&redis, "redis-server")]);
    let tar = w.join("redisroot.tar");
    run_cmd(Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg("."), "tar");
    pm.run(&["import", &path_str(&tar), &pm.image], "import");
    let port = free_port();
    let publish = format!("{port}:6379");
    let mut args = vec!["run", "-d", "--name", &pm.name, "--network", &net.name, "-p", &publish];
    args.extend(LIMITS);
    args.extend([pm.image.as_str(), "/usr/bin/redis-server", "--bind", "0.0.0.0", "--protected-mode", "no"]);
    args.extend(["--save", "", "--appendonly", "no"]);
    pm.run(&args, "run");
    let addr = std::net::SocketAddr::new(host_address(), port);
    let connect = || -> Result<BufReader<TcpStream>, String> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s);
        match resp(&mut r, &["PING"])?.as_str() {
            "PONG" => Ok(r),
            other => Err(format!("PING answered {other:?}")),
        }
    };
    wait_for("redis through the published port", Duration::from_secs(30), || connect().is_ok());
    let mut c = connect().unwrap_or_else(|e| panic!("connect: {e}"));
    let run_id = |r: &mut BufReader<TcpStream>| -> String {
        let info = resp(r, &["INFO", "server"]).unwrap_or_else(|e| panic!("INFO: {e}"));
        info.lines().find_map(|l| l.strip_prefix("run_id:")).unwrap_or_default().trim().to_string()
    };
    let id = run_id(&mut c);
    for i in 0..500 {
        assert_eq!(resp(&mut c, &["SET", &format!("key:{i}"), &format!("value-{i}")]).as_deref(), Ok("OK"));
    }
    let mut count = 0;
    let mut step = |c: &mut BufReader<TcpStream>, when: &str, log: &dyn Fn() -> String| {
        for _ in 0..10 {
            count += 1;
            let got = resp(c, &["INCR", "counter"]).unwrap_or_else(|e| panic!("{when}: {e}\n{}", log()));
            assert_eq!(got, count.to_string(), "{when}: INCR");
        }
        for i in [0, 123, 499] {
            let got = resp(c, &["GET", &format!("key:{i}")]).unwrap_or_else(|e| panic!("{when}: {e}"));
            assert_eq!(got, format!("value-{i}"), "{when}: key:{i}");
        }
    };
    step(&mut c, "before the checkpoint", &|| String::new());
    pm.ok(&["container", "checkpoint", "--keep", "--tcp-established", &pm.name], "checkpoint");
    pm.ok(&["container", "restore", "--keep", "--tcp-established", &pm.name], "restore");
    step(&mut c, "after the restore", &|| pm.logs());
    let mut fresh = connect().unwrap_or_else(|e| panic!("a new client after the restore: {e}\n{}", pm.logs()));
    assert_eq!(run_id(&mut fresh), id, "another redis answers after the restore");
    drop(fresh);

    let node_b = node_b(&w, &pm);
    let export = w.join("redis.tar.zst");
    let export_arg = format!("--export={}", path_str(&export));
    pm.ok(&["container", "checkpoint", "--tcp-established", &export_arg, &pm.name], "checkpoint --export");
    pm.run(&["rm", "-f", &pm.name], "rm");
    let import_arg = format!("--import={}", path_str(&export));
    node_b.ok(&["container", "restore", "--keep", "--tcp-established", &import_arg], "restore --import on node B");
    step(&mut c, "after the import on node B", &|| node_b.logs());
    let mut fresh = connect().unwrap_or_else(|e| panic!("a new client on node B: {e}\n{}", node_b.logs()));
    assert_eq!(run_id(&mut fresh), id, "another redis answers on node B");
    assert_eq!(resp(&mut fresh, &["DBSIZE"]).as_deref(), Ok("501"));
    assert!(node_b.logs().contains("serving CRIU's RPC"), "node B's restore did not go through ferry");
}

/// The master of the console runc passes to its `--console-socket` (the first connection that
/// carries an fd; runc may connect once without one when it fails).
fn console_master(l: &UnixListener, within: Duration) -> OwnedFd {
    l.set_nonblocking(true).expect("nonblocking listener");
    let deadline = Instant::now() + within;
    loop {
        if let Ok((c, _)) = l.accept() {
            // (Wait for runc's message, then take its fd; a connection closed without one is
            // skipped.)
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                match ferry_sys::unixsock::peek(c.as_fd(), 4096) {
                    Ok(Some(mut m)) if !m.fds.is_empty() => return m.fds.remove(0),
                    Ok(Some(m)) if m.len == 0 => break,
                    Ok(_) => sleep(Duration::from_millis(20)),
                    Err(_) => break,
                }
            }
        }
        assert!(Instant::now() < deadline, "runc sent no console master within {within:?}");
        sleep(Duration::from_millis(50));
    }
}

/// Type `line` on the terminal of `master` and read it until `want` shows (or 15 s pass).
fn term_roundtrip(master: &OwnedFd, line: &str, want: &str) -> String {
    ferry_sys::process::set_status_flags(master.as_fd(), libc::O_RDWR | libc::O_NONBLOCK).expect("O_NONBLOCK");
    let mut f = fs::File::from(master.try_clone().expect("dup master"));
    f.write_all(line.as_bytes()).expect("type on the terminal");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut got = String::new();
    let mut buf = [0u8; 4096];
    while !got.contains(want) && Instant::now() < deadline {
        match f.read(&mut buf) {
            Ok(n) if n > 0 => got.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => sleep(Duration::from_millis(50)),
        }
    }
    got
}

/// Scenario 4 with runc: a container with a terminal (`terminal: true`, `--console-socket`),
/// an interactive busybox shell. The test holds the console's master (as conmon would). A
/// shell variable is set before the checkpoint; after `runc restore -d --console-socket`,
/// runc passes on the new master ferry sent with the "orphan-pts-master" notification, and
/// the same shell answers on it with the variable it had.
#[test]
fn runc_terminal_console_socket() {
    let w = WorkDir::new("runc-tty");
    let bin = criu_dir(&w);
    let bundle = runc_bundle(&w);
    let cfg = bundle.join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&fs::read(&cfg).expect("read config")).expect("json");
    c["process"]["terminal"] = true.into();
    c["process"]["args"] = serde_json::json!(["sh"]);
    fs::write(&cfg, serde_json::to_vec_pretty(&c).expect("json")).expect("write config");
    let rc = Runc { state: w.join("state"), id: format!("ferry-tty-{}", std::process::id()), criu: bin.join("criu") };
    let sock = w.join("console.sock");
    let listener = UnixListener::bind(&sock).expect("bind the console socket");
    let run = |args: &[&str], what: &str| {
        let out = rc.cmd().args(args).stdin(Stdio::null()).output().expect("run runc");
        let log = |n: &str| fs::read_to_string(w.join("work").join(n)).unwrap_or_default();
        assert!(
            out.status.success(),
            "runc {what}: {}\n{}{}",
            String::from_utf8_lossy(&out.stderr),
            log("dump.log"),
            log("restore.log")
        );
    };
    let sock_s = path_str(&sock);
    run(&["run", "-d", "--console-socket", &sock_s, "-b", &path_str(&bundle), &rc.id], "run");
    let master = console_master(&listener, Duration::from_secs(30));
    let out = term_roundtrip(&master, "X=ferry$((6*7)); echo \"v=$X\"\n", "v=ferry42");
    assert!(out.contains("v=ferry42"), "the shell does not answer on its terminal: {out:?}");
    let pid = rc.pid();
    let (img, work) = (path_str(&w.join("img")), path_str(&w.join("work")));
    run(&["checkpoint", "--image-path", &img, "--work-path", &work, &rc.id], "checkpoint");
    assert!(!pid_alive(pid), "the container still runs after the checkpoint");
    drop(master);
    // ferry's own restore has nobody to give the console's master to: refused by name.
    let out = Command::new(ferry_bin()).args(["restore", "-D", &img]).stdin(Stdio::null()).output().expect("run ferry");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("pty /dev/pts/0") && err.contains("orphan_pts_master"),
        "ferry restore of a container console without a client to take it: {err}"
    );
    run(
        &[
            "restore",
            "-d",
            "--console-socket",
            &sock_s,
            "--image-path",
            &img,
            "--work-path",
            &work,
            "-b",
            &path_str(&bundle),
            &rc.id,
        ],
        "restore",
    );
    let master = console_master(&listener, Duration::from_secs(30));
    let out = term_roundtrip(&master, "echo \"after=$X\"\n", "after=ferry42");
    assert!(out.contains("after=ferry42"), "the restored shell does not answer on the new console: {out:?}");
    let pid = rc.pid();
    let fd0 = fs::read_link(format!("/proc/{pid}/fd/0")).unwrap_or_default();
    assert!(path_str(&fd0).starts_with("/dev/pts/"), "the restored shell's stdin is {}", fd0.display());
}

/// Scenario 4 with Podman: `podman run -t` (conmon holds the console's master and logs what
/// the container writes on it). A counter loop printing on its terminal is checkpointed and
/// restored; it goes on, still on a terminal, and its output after the restore reaches conmon
/// (`podman logs`) through the master ferry handed to runc.
#[test]
fn podman_terminal_checkpoint_restore() {
    let w = WorkDir::new("podman-tty");
    let pm = Podman::new(&w);
    pm.import_busybox(&w);
    let job = "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; [ -t 1 ] && echo tick-$i; sleep 0.1; done";
    let mut args = vec!["run", "-d", "-t", "--name", &pm.name, "--network", "none"];
    args.extend(LIMITS);
    args.extend([pm.image.as_str(), "sh", "-c", job]);
    pm.run(&args, "run");
    let pid = pm.pid();
    wait_counter(pid, 10, "before the checkpoint");
    pm.ok(&["container", "checkpoint", "--keep", &pm.name], "checkpoint");
    let at_dump = counter(pid).unwrap_or(0);
    pm.ok(&["container", "restore", "--keep", &pm.name], "restore");
    let pid = pm.pid();
    let c = wait_counter(pid, at_dump + 10, "after the restore");
    let fd1 = fs::read_link(format!("/proc/{pid}/fd/1")).unwrap_or_default();
    assert!(path_str(&fd1).starts_with("/dev/pts/"), "the restored job's stdout is {}", fd1.display());
    let want = format!("tick-{c}");
    wait_for("the restored job's output in podman logs", Duration::from_secs(20), || {
        let out = pm.cmd().args(["logs", &pm.name]).output().map(|o| o.stdout).unwrap_or_default();
        String::from_utf8_lossy(&out).lines().any(|l| l.trim() == want)
    });
    let logs = pm.logs();
    assert!(logs.contains("orphan-pts-master"), "ferry did not hand the console's master over:\n{logs}");
}
