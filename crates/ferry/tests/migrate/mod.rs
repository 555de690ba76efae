//! Live migration between two "nodes": two network namespaces joined by a veth pair, created
//! and removed by each test (10.231.0.1 in A, 10.231.0.2 in B, inside those namespaces only).
//! `ferry serve` runs in B (`ip netns exec`); the workload and `ferry migrate` run in A
//! (`nsenter --net`, which keeps the mount namespace, so ferry accepts to dump the workload).
//!
//! The workload (`dirtier`) keeps rewriting its memory; after the move it must keep going and,
//! on go, find every page consistent with its generation counter. Failures (wrong credentials,
//! a destination killed mid-stream, a restore that fails there, an image over the destination's
//! cap) must leave the source running, untraced, still writing, and then passing its own check.

use crate::common::*;

mod nsx;
mod postcopy;
mod precopy;
mod serve;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

const PORT: u16 = 7400;
pub(crate) const DEST: &str = "10.231.0.2:7400";

pub(crate) fn run_ok(cmd: &mut Command) {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Two network namespaces joined by a veth pair; removed on drop.
pub(crate) struct Nodes {
    pub(crate) a: String,
    pub(crate) b: String,
}

impl Nodes {
    pub(crate) fn new() -> Nodes {
        Nodes::tagged("mig")
    }

    /// Nodes named `ferry-TAG-a-...` and `ferry-TAG-b-...` (the test's own, to be found).
    pub(crate) fn tagged(tag: &str) -> Nodes {
        need("ip", "iproute2");
        need("nsenter", "util-linux");
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}-{n}", std::process::id());
        let nodes = Nodes { a: format!("ferry-{tag}-a-{id}"), b: format!("ferry-{tag}-b-{id}") };
        run_ok(Command::new("ip").args(["netns", "add", &nodes.a]));
        run_ok(Command::new("ip").args(["netns", "add", &nodes.b]));
        run_ok(
            Command::new("ip")
                .args(["-n", &nodes.a, "link", "add", "veth0", "type", "veth", "peer", "name"])
                .args(["veth0", "netns", &nodes.b]),
        );
        for (ns, addr) in [(&nodes.a, "10.231.0.1/24"), (&nodes.b, "10.231.0.2/24")] {
            run_ok(Command::new("ip").args(["-n", ns, "addr", "add", addr, "dev", "veth0"]));
            run_ok(Command::new("ip").args(["-n", ns, "link", "set", "veth0", "up"]));
            run_ok(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]));
        }
        nodes
    }

    /// A command in node A's network namespace (same mount namespace as the test).
    pub(crate) fn in_a(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.a)).arg("--").arg(program);
        c
    }

    /// A command in node B.
    pub(crate) fn in_b(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.b, program]);
        c
    }

    /// ferry in node B (`in_b`) or A, started by `wrapper` (a command that execs the rest, e.g.
    /// `prlimit ...`; none if empty).
    pub(crate) fn ferry_under(&self, in_b: bool, wrapper: &[&str]) -> Command {
        let node = |program: &str| if in_b { self.in_b(program) } else { self.in_a(program) };
        match wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = node(prog);
                c.args(args).arg(ferry_bin());
                c
            }
            None => node(ferry_bin()),
        }
    }

    /// A TCP connection made from node B: a thread of the test enters B's network namespace
    /// for the connect (the socket stays B's).
    pub(crate) fn connect_from_b(&self, host: &str, port: u16) -> std::io::Result<std::net::TcpStream> {
        let (path, host) = (format!("/run/netns/{}", self.b), host.to_string());
        std::thread::spawn(move || {
            let ns = File::open(&path)?;
            ferry_sys::ns::setns(std::os::fd::AsFd::as_fd(&ns), libc::CLONE_NEWNET)?;
            std::net::TcpStream::connect((host.as_str(), port))
        })
        .join()
        .expect("connect thread")
    }
}

impl Nodes {
    /// The processes in node `ns`'s network namespace (`ip netns pids`).
    fn pids(ns: &str) -> Vec<i32> {
        let out = Command::new("ip").args(["netns", "pids", ns]).stdin(Stdio::null()).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default()
    }
}

impl Drop for Nodes {
    /// Kills everything that runs in either node, also when the test failed: workloads, their
    /// pid namespaces' inits, `ferry serve`, trees it restored, clients; then the namespaces go.
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            for _ in 0..50 {
                let pids = Nodes::pids(ns);
                if pids.iter().all(|&p| !pid_alive(p)) {
                    break;
                }
                for p in pids {
                    kill_tree(p);
                }
                sleep(Duration::from_millis(20));
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).stdin(Stdio::null()).output();
        }
    }
}

pub(crate) fn keygen(dir: &Path) -> String {
    let out = Command::new(ferry_bin()).arg("keygen").arg(dir).output().expect("run ferry keygen");
    assert!(out.status.success(), "ferry keygen: {}", String::from_utf8_lossy(&out.stderr));
    for f in ["node.key", "node.pub", "trusted"] {
        let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(dir.join(f)).expect("key file").permissions());
        assert_eq!(mode & 0o777, 0o600, "{f} is not mode 0600");
    }
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `ferry serve` in node B; killed on drop.
pub(crate) struct Server {
    child: Child,
    err: PathBuf,
    /// Its staging area (tmpfs), private to the test: a killed server leaves its files there.
    staging: PathBuf,
}

impl Server {
    pub(crate) fn start(nodes: &Nodes, w: &WorkDir, auth: &Path, extra: &[&str]) -> Server {
        Server::start_under(nodes, w, auth, extra, &[])
    }

    /// Started by `wrapper` (a command that execs the rest, e.g. `prlimit`).
    pub(crate) fn start_under(nodes: &Nodes, w: &WorkDir, auth: &Path, extra: &[&str], wrapper: &[&str]) -> Server {
        let out = w.join("serve.out");
        let err = w.join("serve.err");
        let staging = PathBuf::from(format!(
            "/dev/shm/ferry-e2e-{}",
            w.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        ));
        fs::create_dir_all(&staging).expect("staging dir");
        let child = nodes
            .ferry_under(true, wrapper)
            .args(["serve", "--listen", &format!("0.0.0.0:{PORT}"), "--auth", &path_str(auth)])
            .args(["--staging", &path_str(&staging)])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("serve.out"))
            .stderr(File::create(&err).expect("serve.err"))
            .spawn()
            .expect("start ferry serve");
        let mut s = Server { child, err, staging };
        wait_for("ferry serve to listen", Duration::from_secs(20), || {
            if let Ok(Some(st)) = s.child.try_wait() {
                panic!("ferry serve exited: {} {}", describe(st), read_tail(&s.err, 2000));
            }
            fs::read_to_string(&out).unwrap_or_default().contains("serving on")
        });
        s
    }

    pub(crate) fn log(&self) -> String {
        read_tail(&self.err, 4000)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.staging);
    }
}

/// `ferry run --pidns -d` of workload `name` in node A, given the work dir and `args` (its
/// output in the work dir's run.log and out.log): the host pid of the namespace's init.
fn run_in_pidns(nodes: &Nodes, w: &WorkDir, name: &str, args: &[&str]) -> i32 {
    let pidfile = w.join("init.pid");
    let st = nodes
        .in_a(ferry_bin())
        .args(["run", "--pidns", "-d", "--pidfile", &path_str(&pidfile), "--"])
        .arg(ferry_workloads::path(name))
        .arg(&w.path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(w.join("run.log")).expect("log"))
        .stderr(File::create(w.join("out.log")).expect("log"))
        .status()
        .expect("ferry run");
    assert!(st.success(), "ferry run: {}", read_tail(&w.join("out.log"), 2000));
    fs::read_to_string(&pidfile).expect("pidfile").trim().parse().expect("pid")
}

/// The dirtier workload in node A: a pid namespace of its own (`ferry run --pidns`) so that the
/// destination, on the same machine, can restore it while the source copy still exists.
struct Workload {
    w: WorkDir,
    /// The pid to migrate (the namespace's init, or the workload itself without a namespace).
    pid: i32,
}

impl Workload {
    fn start(nodes: &Nodes, label: &str, mib: u32, pidns: bool) -> Workload {
        Workload::start_args(nodes, label, mib, pidns, false)
    }

    fn start_args(nodes: &Nodes, label: &str, mib: u32, pidns: bool, churn: bool) -> Workload {
        Workload::start_mode(nodes, label, mib, pidns, if churn { "churn" } else { "" })
    }

    /// `mode`: the dirtier's extra behaviour ("churn", "fork"), or "".
    fn start_mode(nodes: &Nodes, label: &str, mib: u32, pidns: bool, mode: &str) -> Workload {
        Workload::start_rate(nodes, label, mib, pidns, 10240, mode)
    }

    /// Writing `kib_s` KiB a second (0: one page every 10 ms, nearly idle).
    fn start_rate(nodes: &Nodes, label: &str, mib: u32, pidns: bool, kib_s: u32, mode: &str) -> Workload {
        let w = WorkDir::new(label);
        let mut args = vec![mib.to_string()];
        if !mode.is_empty() || kib_s != 10240 {
            args.push(kib_s.to_string());
        }
        if !mode.is_empty() {
            args.push(mode.to_string());
        }
        let log = |name: &str| File::create(w.join(name)).expect("log file");
        let prog = ferry_workloads::path("dirtier");
        let pid;
        if pidns {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            pid = run_in_pidns(nodes, &w, "dirtier", &args);
        } else {
            // nsenter execs the workload: the pid is the workload's.
            // (setsid(1) execs in place too: no controlling terminal when run from one)
            let mut cmd = if on_terminal() {
                let mut c = nodes.in_a("setsid");
                c.arg(&prog);
                c
            } else {
                nodes.in_a(&path_str(&prog))
            };
            let child = cmd
                .arg(&w.path)
                .arg(mib.to_string())
                .stdin(Stdio::null())
                .stdout(log("run.log"))
                .stderr(log("out.log"))
                .spawn()
                .expect("start dirtier");
            pid = child.id() as i32;
            // reaped by whoever: the test does not wait for it (a zombie counts as gone)
            std::mem::forget(child);
        }
        let wl = Workload { w, pid };
        wait_for("the workload to be ready", Duration::from_secs(60), || wl.w.join("ready").exists());
        wl
    }

    fn rounds(&self) -> u64 {
        fs::read_to_string(self.w.join("rounds")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
    }

    /// The workload writes its rounds file every 0.5 s while it runs.
    fn expect_progress(&self, when: &str) {
        let r0 = self.rounds();
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.rounds() <= r0 {
            assert!(Instant::now() < deadline, "{when}: the workload made no progress (rounds {r0})");
            sleep(Duration::from_millis(50));
        }
    }

    /// Send go to `pid` (an init forwards it) and expect PASS.
    fn go_and_pass(&self, pid: i32) {
        send_signal(pid, "USR2").expect("send go");
        wait_for("the result", Duration::from_secs(60), || self.w.join("result").exists());
        let result = fs::read_to_string(self.w.join("result")).unwrap_or_default();
        assert_eq!(result.trim(), "PASS", "workload result; log:\n{}", read_tail(&self.w.join("out.log"), 3000));
    }

    /// The source is alive, not stopped, not traced (all of its tree).
    fn expect_running_here(&self, when: &str) {
        let mut pids = vec![self.pid];
        let children = fs::read_to_string(format!("/proc/{}/task/{}/children", self.pid, self.pid)).unwrap_or_default();
        pids.extend(children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
        for pid in pids {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_else(|_| panic!("{when}: source pid {pid} is gone"));
            let state = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next()).unwrap_or('?');
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let tracer = status.lines().find_map(|l| l.strip_prefix("TracerPid:")).map(|v| v.trim().to_string());
            assert!(
                !matches!(state, 'T' | 't' | 'Z' | 'X') && tracer.as_deref() == Some("0"),
                "{when}: source pid {pid} in state {state}, tracer {tracer:?}"
            );
        }
        self.expect_progress(when);
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        kill_tree(self.pid);
    }
}

pub(crate) struct Migration {
    pub(crate) ok: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

fn spawn_migrate(nodes: &Nodes, wl: &Workload, auth: &Path, label: &str, extra: &[&str]) -> (Child, PathBuf, PathBuf) {
    let out = wl.w.join(&format!("{label}.out"));
    let err = wl.w.join(&format!("{label}.err"));
    let child = nodes
        .in_a(ferry_bin())
        .args(["migrate", "-t", &wl.pid.to_string(), "--to", DEST, "--auth", &path_str(auth)])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(File::create(&out).expect("out"))
        .stderr(File::create(&err).expect("err"))
        .spawn()
        .expect("start ferry migrate");
    (child, out, err)
}

fn migrate(nodes: &Nodes, wl: &Workload, auth: &Path, label: &str) -> Migration {
    migrate_with(nodes, wl, auth, label, &[])
}

fn migrate_with(nodes: &Nodes, wl: &Workload, auth: &Path, label: &str, extra: &[&str]) -> Migration {
    let (mut child, out, err) = spawn_migrate(nodes, wl, auth, label, extra);
    let status = wait_timeout(&mut child, Duration::from_secs(300)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("ferry migrate did not finish: {}", read_tail(&err, 3000));
    });
    Migration {
        ok: status.success(),
        stdout: fs::read_to_string(&out).unwrap_or_default(),
        stderr: fs::read_to_string(&err).unwrap_or_default(),
    }
}

/// `ferry migrate -t INIT --to DEST --auth AUTH EXTRA...` run in node A, to the end.
pub(crate) fn migrate_init(nodes: &Nodes, init: i32, auth: &Path, extra: &[&str]) -> Migration {
    let out = nodes
        .in_a(ferry_bin())
        .args(["migrate", "-t", &init.to_string(), "--to", DEST, "--auth", &path_str(auth)])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run ferry migrate");
    Migration {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The summary line: the pid on the destination and the downtime.
pub(crate) fn summary(m: &Migration) -> (i32, u64) {
    let line = m.stdout.lines().find(|l| l.starts_with("migrated pid")).unwrap_or_else(|| {
        panic!("no summary line; stdout {:?} stderr {}", m.stdout, m.stderr);
    });
    assert_eq!(m.stdout.lines().count(), 1, "one summary line expected: {:?}", m.stdout);
    let field = |k: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {line:?}"))
    };
    for k in ["total_ms=", "bytes_sent="] {
        field(k);
    }
    let remote: i32 = line
        .split("(pid ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no remote pid in {line:?}"));
    eprintln!("{line}");
    (remote, field("downtime_ms="))
}

/// The MiB `ferry serve` says it handed over in place (pre-copy), from its log.
pub(crate) fn in_place_mib(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.split("pre-copied pages: ").nth(1)?.split(" MiB handed over in place").next()?.parse().ok())
        .next_back()
        .unwrap_or(0)
}

/// A successful move of an `mib` MiB writer; returns the downtime.
fn migrate_and_verify(mib: u32) -> u64 {
    migrate_and_verify_with(mib, &[], false)
}

fn migrate_and_verify_with(mib: u32, extra: &[&str], churn: bool) -> u64 {
    migrate_and_verify_mode(mib, extra, if churn { "churn" } else { "" })
}

fn migrate_and_verify_mode(mib: u32, extra: &[&str], mode: &str) -> u64 {
    migrate_and_verify_rate(mib, 10240, extra, mode)
}

fn migrate_and_verify_rate(mib: u32, kib_s: u32, extra: &[&str], mode: &str) -> u64 {
    let nodes = Nodes::new();
    let wl = Workload::start_rate(&nodes, "migrate", mib, true, kib_s, mode);
    let auth = wl.w.join("auth");
    keygen(&auth);
    let _server = Server::start(&nodes, &wl.w, &auth, &[]);
    wl.expect_progress("before the migration");
    let m = migrate_with(&nodes, &wl, &auth, "migrate", extra);
    assert!(m.ok, "ferry migrate failed: {}\nserve: {}", m.stderr, _server.log());
    let (remote, downtime) = summary(&m);
    if extra.contains(&"--pre-copy") {
        // the final image holds only what changed since the last round
        let line = m.stdout.trim();
        let field = |k: &str| -> u64 {
            line.split_whitespace().find_map(|w| w.strip_prefix(k)).and_then(|v| v.parse().ok()).unwrap_or(u64::MAX)
        };
        assert!(line.contains("mode=pre-copy") && field("rounds=") >= 1, "{line}");
        assert!(
            field("image_bytes=") < (mib as u64) << 19,
            "the final image is not smaller than half the memory: {line}"
        );
        assert!(m.stderr.contains("already there and unchanged"), "{}", m.stderr);
        for l in m.stderr.lines().filter(|l| l.contains("after the freeze") || l.contains("elapsed")) {
            eprintln!("{l}");
        }
        wait_for("the destination's timings", Duration::from_secs(20), || _server.log().contains("serve: pre-copy:"));
        for l in _server.log().lines().filter(|l| l.contains("pre-copied pages") || l.contains("serve: pre-copy:")) {
            eprintln!("{l}");
        }
        // the memory was handed over in place, not written into the image and read back
        let in_place = in_place_mib(&_server.log());
        let off = std::env::var_os("FERRY_PRECOPY_IN_PLACE").is_some_and(|v| v == "0"); // (the old path, by hand)
        assert!(off || in_place >= u64::from(mib) / 2, "{in_place} MiB handed over in place: {}", _server.log());
    }
    if extra.contains(&"--post-copy") {
        // the image holds almost no memory; all of it followed, and the source waited for that
        let line = m.stdout.trim();
        let field = |k: &str| -> u64 {
            line.split_whitespace().find_map(|w| w.strip_prefix(k)).and_then(|v| v.parse().ok()).unwrap_or(u64::MAX)
        };
        assert!(line.contains("mode=post-copy"), "{line}");
        assert!(field("image_bytes=") < (mib as u64) << 17, "the image holds the memory: {line}");
        assert!(field("lazy_bytes=") >= (mib as u64) << 19, "not the memory sent after the restore: {line}");
        assert!(field("lazy_ms=") != u64::MAX, "{line}");
        // (how long faulting threads waited, for the figures)
        wait_for("the destination's post-copy summary", Duration::from_secs(20), || {
            _server.log().contains("serve: post-copy: every page")
        });
        let log = _server.log();
        eprintln!("{}", log.lines().find(|l| l.contains("serve: post-copy: every page")).unwrap_or_default());
    }
    wait_for("the source copy to be killed", Duration::from_secs(20), || !pid_alive(wl.pid));
    assert!(pid_alive(remote), "the migrated tree (pid {remote}) is not running");
    wl.expect_progress("after the migration");
    wl.go_and_pass(remote);
    downtime
}

#[test]
fn control_dirtier() {
    control(&Spec::c("dirtier").args(&["16"]));
}

/// Stop-and-copy of a 256 MiB process that keeps writing its memory, between two namespaces.
#[test]
fn migrate_stop_and_copy_256mib_writer() {
    let _heavy = heavy_lock();
    migrate_and_verify(256);
}

/// A peer with other credentials is refused during the handshake, the source never freezes and
/// keeps running; the server keeps serving and accepts the right peer afterwards.
#[test]
fn migrate_wrong_credentials_refused_source_keeps_running() {
    let nodes = Nodes::new();
    let wl = Workload::start(&nodes, "migrate-auth", 16, true);
    let (good, bad) = (wl.w.join("auth"), wl.w.join("other"));
    keygen(&good);
    keygen(&bad);
    let server = Server::start(&nodes, &wl.w, &good, &[]);
    let m = migrate(&nodes, &wl, &bad, "migrate-bad");
    assert!(!m.ok, "a migration with untrusted credentials succeeded: {}", m.stdout);
    assert!(m.stderr.contains("keeps running") || m.stderr.contains("authentication"), "{}", m.stderr);
    assert!(!m.stderr.contains("frozen"), "the source was frozen before authentication: {}", m.stderr);
    wait_for("the server to log the refusal", Duration::from_secs(10), || server.log().contains("peer refused"));
    wl.expect_running_here("after a refused migration");
    // Garbage from a stranger is dropped too.
    let out = nodes
        .in_a("bash")
        .args([
            "-c",
            &format!("exec 3<>/dev/tcp/10.231.0.2/{PORT}; printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3 >/dev/null"),
        ])
        .output()
        .expect("bash");
    let _ = out;
    wait_for("the server to drop the stranger", Duration::from_secs(10), || {
        server.log().matches("peer refused").count() >= 2
    });
    let m = migrate(&nodes, &wl, &good, "migrate-good");
    assert!(m.ok, "the server stopped serving after refusing a peer: {}\nserve: {}", m.stderr, server.log());
    let (remote, _) = summary(&m);
    wl.go_and_pass(remote);
}

/// Add `key` (a `ferry keygen` public key line) to the trusted list of credentials `dir`.
fn trust(dir: &Path, key: &str) {
    let mut t = fs::read_to_string(dir.join("trusted")).expect("trusted");
    t.push_str(&format!("{key} peer\n"));
    fs::write(dir.join("trusted"), t).expect("write trusted");
}

/// Per-node identities: each node has its own key and trusts the other's. A destination the
/// source does not trust is refused by the source.
#[test]
fn migrate_per_node_identities() {
    let nodes = Nodes::new();
    let wl = Workload::start(&nodes, "migrate-ids", 16, true);
    let (a, b) = (wl.w.join("auth-a"), wl.w.join("auth-b"));
    let (pub_a, pub_b) = (keygen(&a), keygen(&b));
    trust(&b, &pub_a);
    let server = Server::start(&nodes, &wl.w, &b, &[]);
    let m = migrate(&nodes, &wl, &a, "migrate-untrusted-dest");
    assert!(
        !m.ok && m.stderr.contains("not in the trusted list"),
        "source accepted an untrusted destination: {}",
        m.stderr
    );
    wl.expect_running_here("after refusing the destination");
    trust(&a, &pub_b);
    let m = migrate(&nodes, &wl, &a, "migrate");
    assert!(m.ok, "{}\nserve: {}", m.stderr, server.log());
    let (remote, _) = summary(&m);
    wl.go_and_pass(remote);
}

/// The destination dies while the image streams: the source resumes its frozen tree.
#[test]
fn migrate_destination_killed_mid_stream_source_resumes() {
    let _heavy = heavy_lock();
    let nodes = Nodes::new();
    let wl = Workload::start(&nodes, "migrate-kill", 256, true);
    let auth = wl.w.join("auth");
    keygen(&auth);
    let mut server = Server::start(&nodes, &wl.w, &auth, &[]);
    let (mut child, _out, err) = spawn_migrate(&nodes, &wl, &auth, "migrate", &[]);
    wait_for("the image to stream", Duration::from_secs(60), || {
        fs::read_to_string(&err).unwrap_or_default().contains("migrate: sent")
    });
    server.child.kill().expect("kill ferry serve");
    let _ = server.child.wait();
    let status = wait_timeout(&mut child, Duration::from_secs(60)).expect("ferry migrate did not end");
    let stderr = fs::read_to_string(&err).unwrap_or_default();
    assert!(!status.success(), "migration reported success with the destination killed: {stderr}");
    assert!(stderr.contains("keeps running here"), "{stderr}");
    wl.expect_running_here("after the destination died");
    // A new server removes what the dead one left in the staging area (memory).
    let left = || fs::read_dir(&server.staging).map(|d| d.count()).unwrap_or(0);
    assert!(left() > 0, "the killed server left nothing to clean up: the test does not test that");
    // (same work dir: same staging area)
    let again = Server::start(&nodes, &wl.w, &auth, &[]);
    assert_eq!(left(), 0, "stale staging dirs kept: {}", again.log());
    wl.go_and_pass(wl.pid);
}

/// The restore fails on the destination (here: the pid is taken, the tree is not in a pid
/// namespace of its own and both nodes share this machine's pids): the source resumes.
#[test]
fn migrate_restore_fails_on_destination_source_resumes() {
    let nodes = Nodes::new();
    let wl = Workload::start(&nodes, "migrate-restore-fails", 16, false);
    let auth = wl.w.join("auth");
    keygen(&auth);
    let server = Server::start(&nodes, &wl.w, &auth, &[]);
    let m = migrate(&nodes, &wl, &auth, "migrate");
    assert!(!m.ok, "the migration succeeded although the pid is taken: {}", m.stdout);
    assert!(m.stderr.contains("already in use") && m.stderr.contains("keeps running here"), "{}", m.stderr);
    wl.expect_running_here("after a failed restore on the destination");
    assert!(server.log().contains("restore failed"), "{}", server.log());
    wl.go_and_pass(wl.pid);
}

/// An image larger than the destination accepts is refused mid-stream; the source resumes.
#[test]
fn migrate_image_over_destination_cap_refused() {
    let nodes = Nodes::new();
    let wl = Workload::start(&nodes, "migrate-cap", 64, true);
    let auth = wl.w.join("auth");
    keygen(&auth);
    let server = Server::start(&nodes, &wl.w, &auth, &["--max-image-mib", "16"]);
    let m = migrate(&nodes, &wl, &auth, "migrate");
    assert!(!m.ok, "an image over the cap was accepted: {}", m.stdout);
    assert!(m.stderr.contains("keeps running here"), "{}", m.stderr);
    wait_for("the server to log the cap", Duration::from_secs(10), || server.log().contains("exceeds 16 MiB"));
    wl.expect_running_here("after the cap refused the image");
    wl.go_and_pass(wl.pid);
}

#[test]
fn control_dirtier_churn() {
    control(&Spec::c("dirtier").args(&["16", "10240", "churn"]));
}

/// Pre-copy of a 256 MiB writer: rounds while it runs, a small final image, every page right.
#[test]
fn migrate_pre_copy_256mib_writer() {
    let _heavy = heavy_lock();
    migrate_and_verify_with(256, &["--pre-copy"], false);
}

/// Pre-copy while mappings vanish, appear (often at the same address), grow and move between
/// the rounds and during the final one.
#[test]
fn migrate_pre_copy_mappings_change_between_rounds() {
    migrate_and_verify_with(64, &["--pre-copy"], true);
}

/// The destination dies during the pre-copy rounds: the tree, never frozen, runs on untracked.
#[test]
fn migrate_pre_copy_destination_killed_source_keeps_running() {
    let _heavy = heavy_lock();
    let nodes = Nodes::new();
    let wl = Workload::start_args(&nodes, "migrate-pre-kill", 256, true, true);
    let auth = wl.w.join("auth");
    keygen(&auth);
    let mut server = Server::start(&nodes, &wl.w, &auth, &[]);
    let (mut child, _out, err) = spawn_migrate(&nodes, &wl, &auth, "migrate", &["--pre-copy"]);
    wait_for("the first pre-copy pages", Duration::from_secs(60), || {
        fs::read_to_string(&err).unwrap_or_default().contains("migrate: sent")
    });
    server.child.kill().expect("kill ferry serve");
    let _ = server.child.wait();
    let status = wait_timeout(&mut child, Duration::from_secs(60)).expect("ferry migrate did not end");
    let stderr = fs::read_to_string(&err).unwrap_or_default();
    assert!(!status.success(), "migration reported success with the destination killed: {stderr}");
    wl.expect_running_here("after the destination died during pre-copy");
    // no userfaultfd left behind in the tree's fd tables
    let children = fs::read_to_string(format!("/proc/{}/task/{}/children", wl.pid, wl.pid)).unwrap_or_default();
    let mut pids: Vec<i32> = children.split_whitespace().filter_map(|c| c.parse().ok()).collect();
    assert!(!pids.is_empty(), "the job under the init is gone");
    pids.push(wl.pid);
    for pid in pids {
        for fd in fs::read_dir(format!("/proc/{pid}/fd")).expect("fd dir").flatten() {
            let link = fs::read_link(fd.path()).unwrap_or_default();
            assert!(!link.to_string_lossy().contains("userfaultfd"), "pid {pid} keeps {link:?}");
        }
    }
    wl.go_and_pass(wl.pid);
}

/// Downtime figures (ignored by default: `cargo test --release --test e2e -- --ignored
/// migrate_downtime_figures --nocapture`).
#[test]
#[ignore]
fn migrate_downtime_figures() {
    let _heavy = heavy_lock();
    let mut lines = Vec::new();
    for mib in [64, 256, 1024] {
        let d = migrate_and_verify(mib);
        lines.push(format!("stop-and-copy {mib} MiB: downtime_ms={d}"));
        let d = migrate_and_verify_with(mib, &["--pre-copy"], false);
        lines.push(format!("pre-copy {mib} MiB: downtime_ms={d}"));
        let d = migrate_and_verify_with(mib, &["--post-copy"], false);
        lines.push(format!("post-copy {mib} MiB: downtime_ms={d}"));
    }
    eprintln!("{}", lines.join("\n"));
}

/// The destination hangs (stopped) in the middle: the source gives up after `--timeout`,
/// resumes its tree, and the destination, once it continues, sees the source gone and runs
/// nothing.
#[test]
fn migrate_destination_hangs_source_times_out_and_resumes() {
    let nodes = Nodes::new();
    let wl = Workload::start(&nodes, "migrate-hang", 64, true);
    let auth = wl.w.join("auth");
    keygen(&auth);
    let server = Server::start(&nodes, &wl.w, &auth, &[]);
    let (mut child, _out, err) = spawn_migrate(&nodes, &wl, &auth, "migrate", &["--timeout", "3"]);
    wait_for("the freeze", Duration::from_secs(60), || fs::read_to_string(&err).unwrap_or_default().contains("frozen"));
    let serve_pid = server.child.id() as i32;
    send_signal(serve_pid, "STOP").expect("stop ferry serve");
    let status = wait_timeout(&mut child, Duration::from_secs(60));
    let _ = send_signal(serve_pid, "CONT");
    let status = status.expect("ferry migrate did not give up");
    let stderr = fs::read_to_string(&err).unwrap_or_default();
    assert!(!status.success(), "migration reported success with the destination stopped: {stderr}");
    assert!(stderr.contains("keeps running here"), "{stderr}");
    wl.expect_running_here("after the source gave up");
    wait_for("the destination to drop the migration", Duration::from_secs(30), || server.log().contains("failed"));
    assert!(!server.log().contains("the tree runs"), "the destination runs a copy too: {}", server.log());
    wl.go_and_pass(wl.pid);
}

/// A client in node B that holds a connection to the service address across the migration.
const TCP_CLIENT: &str = r#"
import os, socket, sys, time
port, w = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(("10.231.1.1", port), timeout=60)
def exchange(ping, pong):
    s.sendall(ping)
    got = s.recv(5, socket.MSG_WAITALL)
    assert got == pong, (ping, got)
exchange(b"ping1", b"pong1")
s.sendall(b"ping2")  # unread by the server when it is frozen: it moves in its receive queue
open(w + "/client-ready", "w").close()
while not os.path.exists(w + "/client-send"):
    time.sleep(0.02)
s.sendall(b"ping3")  # while the connection is between the nodes: held by the network lock
while not os.path.exists(w + "/client-go"):
    time.sleep(0.02)
got = s.recv(5, socket.MSG_WAITALL)
assert got == b"pong2", got
got = s.recv(5, socket.MSG_WAITALL)
assert got == b"pong3", got
print("client ok")
"#;

/// A server with an open client connection moves to node B with `--tcp-established`, and its
/// service address (10.231.1.1) moves with it: the client, in B, keeps its connection, gets the
/// answer to what it sent before the migration and talks on, without an error, although it sent
/// more after the server left A and before the address moved (A's network lock drops it instead
/// of resetting the connection; the client retransmits to B); the server also checks a
/// connection to itself whose queues were full both ways.
#[test]
fn migrate_server_with_open_connection_moves_its_address() {
    need("nft", "nftables");
    need("python3", "python3");
    let nodes = Nodes::new();
    let w = WorkDir::new("mig-tcp");
    let auth = w.join("auth");
    keygen(&auth);
    let server = Server::start(&nodes, &w, &auth, &[]);
    run_ok(Command::new("ip").args(["-n", &nodes.a, "addr", "add", "10.231.1.1/32", "dev", "lo"]));
    run_ok(Command::new("ip").args(["-n", &nodes.b, "route", "add", "10.231.1.1/32", "via", "10.231.0.1"]));
    let init = run_in_pidns(&nodes, &w, "tcpkeep", &["10.231.1.1"]);
    wait_for("the server to listen", Duration::from_secs(30), || w.join("port").exists());
    let port = fs::read_to_string(w.join("port")).expect("port").trim().to_string();
    let mut client = nodes
        .in_b("python3")
        .args(["-c", TCP_CLIENT, &port, &path_str(&w.path)])
        .stdin(Stdio::null())
        .stdout(File::create(w.join("client.log")).expect("log"))
        .stderr(File::create(w.join("client.err")).expect("log"))
        .spawn()
        .expect("start the client");
    wait_for("the client's first exchange", Duration::from_secs(30), || w.join("client-ready").exists());
    wait_for("the server to be ready", Duration::from_secs(30), || w.join("ready").exists());
    let m = migrate_init(&nodes, init, &auth, &["--tcp-established"]);
    assert!(m.ok, "migration failed: {}\nserver: {}", m.stderr, server.log());
    let (remote, _) = summary(&m);
    assert!(m.stderr.contains("nft delete table"), "migrate did not say how to lift the network lock: {}", m.stderr);
    // The connection lives on B now, but its address still routes to A, where the lock holds it.
    File::create(w.join("client-send")).expect("client send");
    std::thread::sleep(Duration::from_millis(300));
    // The service address moves: B answers for it locally from now on.
    run_ok(Command::new("ip").args(["-n", &nodes.a, "addr", "del", "10.231.1.1/32", "dev", "lo"]));
    run_ok(Command::new("ip").args(["-n", &nodes.b, "addr", "add", "10.231.1.1/32", "dev", "lo"]));
    // The init forwards the go signal to the server.
    send_signal(remote, "USR2").expect("go");
    File::create(w.join("client-go")).expect("client go");
    let st = wait_timeout(&mut client, Duration::from_secs(60)).unwrap_or_else(|| {
        let _ = client.kill();
        panic!("the client hung: {}", read_tail(&w.join("client.err"), 2000))
    });
    assert!(st.success(), "the client saw an error: {}", read_tail(&w.join("client.err"), 2000));
    wait_for("the server's verdict", Duration::from_secs(60), || w.join("result").exists());
    let result = fs::read_to_string(w.join("result")).unwrap_or_default();
    assert_eq!(result.trim(), "PASS", "server: {}", read_tail(&w.join("out.log"), 3000));
}

/// A destination on this machine takes the source's socket files over (the same paths on both
/// nodes) and is killed right after it moved one aside, before it could put it back: the source
/// resumes with every socket file back at its name (same inode), and its listener answers there.
#[test]
fn migrate_destination_killed_mid_takeover_source_keeps_its_socket_files() {
    let nodes = Nodes::new();
    let w = WorkDir::new("mig-takeover-kill");
    let auth = w.join("auth");
    keygen(&auth);
    let _server = Server::start_under(&nodes, &w, &auth, &[], &["env", "FERRY_FAULT=kill-after-takeover"]);
    let init = run_in_pidns(&nodes, &w, "unix", &[]);
    let tree = ProcGuard::new();
    tree.add(init);
    wait_for("the workload to be ready", Duration::from_secs(60), || w.join("ready").exists());
    let names = ["srv.sock", "d1.sock", "d2.sock"];
    let ino = |n: &str| fs::symlink_metadata(w.join(n)).ok().map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let before: Vec<Option<u64>> = names.iter().map(|n| ino(n)).collect();
    assert!(before.iter().all(Option::is_some), "the workload's socket files: {before:?}");
    let m = migrate_init(&nodes, init, &auth, &["-v"]);
    assert!(!m.ok, "the migration succeeded with the destination killed: {}", m.stdout);
    assert!(m.stderr.contains("keeps running here"), "{}", m.stderr);
    // (the source, not the killed destination, put the file back)
    assert!(m.stderr.contains("socket file given back by a failed migration"), "{}", m.stderr);
    let after: Vec<Option<u64>> = names.iter().map(|n| ino(n)).collect();
    let left: Vec<String> = fs::read_dir(&w.path)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert_eq!(after, before, "the source's socket files {names:?} after the failed migration (dir: {left:?})");
    std::os::unix::net::UnixStream::connect(w.join("srv.sock")).expect("connect to the source's listener");
}

/// A migration test that fails leaves nothing behind: the processes in its nodes (a pid
/// namespace's init with its job in A, a server and a client looping forever in B) are killed,
/// the namespaces and the work dir removed, although the test panicked.
#[test]
fn failed_migration_test_leaves_nothing_behind() {
    let seen = std::sync::Mutex::new((Vec::<i32>::new(), Vec::<String>::new(), PathBuf::new(), Vec::<Child>::new()));
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let nodes = Nodes::new();
        let w = WorkDir::new("mig-leak");
        let pidfile = w.join("init.pid");
        let st = nodes
            .in_a(ferry_bin())
            .args([
                "run",
                "--pidns",
                "-d",
                "--pidfile",
                &path_str(&pidfile),
                "--",
                "sh",
                "-c",
                "while :; do sleep 1; done",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("ferry run");
        assert!(st.success(), "ferry run failed");
        let init: i32 = fs::read_to_string(&pidfile).expect("pidfile").trim().parse().expect("pid");
        let loop_forever = || {
            nodes
                .in_b("sh")
                .args(["-c", "while :; do sleep 1; done"])
                .stdin(Stdio::null())
                .spawn()
                .expect("start a loop")
        };
        let (server, client) = (loop_forever(), loop_forever());
        let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
        let (server_pid, client_pid) = (server.id() as i32, client.id() as i32);
        // (reaped below, after the guards killed them)
        s.3 = vec![server, client];
        s.0 = tree_pids(init);
        s.0.extend([server_pid, client_pid]);
        s.1 = vec![nodes.a.clone(), nodes.b.clone()];
        s.2 = w.path.clone();
        assert!(s.0.len() >= 4, "the init's job is missing: {:?}", s.0);
        sleep(Duration::from_millis(200));
        assert!(s.0.iter().all(|&p| pid_alive(p)), "not every process runs: {:?}", s.0);
        drop(s);
        panic!("a deliberate failure (this test checks what it leaves behind)");
    }));
    assert!(failed.is_err());
    let (pids, names, dir, children) = seen.into_inner().unwrap_or_else(|p| p.into_inner());
    for mut c in children {
        let _ = wait_timeout(&mut c, Duration::from_secs(10));
    }
    assert!(!pids.is_empty(), "the test did not get far enough to check anything");
    wait_for("every process of the failed test to die", Duration::from_secs(10), || {
        pids.iter().all(|&p| !pid_alive(p))
    });
    let list = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    let list = String::from_utf8_lossy(&list.stdout);
    for ns in names {
        assert!(!list.split_whitespace().any(|n| n == ns), "network namespace {ns} left behind");
    }
    assert!(!dir.exists(), "work dir {} left behind", dir.display());
}
