//! The real clients: runc 1.1 (`runc --criu PATH checkpoint|restore -d`) and Podman 4.3 with
//! runc (`podman container checkpoint/restore`, `--export`/`--import`), with ferry as the only
//! `criu` they can find. Root filesystems are built here from busybox-static (no registry).
//! Every container, runc state dir, Podman store and image is named after the test's pid and
//! removed on drop, also when the test fails.

use super::criu_dir;
use crate::common::*;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The container's job: a web server on its own loopback and a counter in /tmp/count.
const JOB: &str =
    "httpd -p 127.0.0.1:8080 -h /www; i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done";

/// PATH with ferry's `criu` first and without the sbin directories (where Debian's real CRIU
/// is): ferry is the only `criu` there.
pub(super) fn path_with_ferry(bin: &Path) -> String {
    format!("{}:/usr/local/bin:/usr/bin:/bin", bin.display())
}

/// A busybox-static root filesystem in `dir`: /bin with the applets the job uses, /www.
pub(super) fn busybox_rootfs(dir: &Path) {
    let busybox = need("busybox", "busybox-static");
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).expect("create rootfs/bin");
    fs::copy(&busybox, bin.join("busybox")).expect("copy busybox");
    for applet in ["sh", "sleep", "cat", "echo", "mv", "httpd", "wget", "ls", "ps"] {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).expect("applet symlink");
    }
    for d in ["proc", "sys", "dev", "tmp", "etc", "www", "run"] {
        fs::create_dir_all(dir.join(d)).expect("create rootfs dir");
    }
    fs::write(dir.join("www/index.html"), "ferry-ok\n").expect("write index.html");
}

pub(super) fn run_cmd(cmd: &mut Command, what: &str) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// The counter of the container whose init is `pid` (read through /proc/PID/root).
pub(super) fn counter(pid: i32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/root/tmp/count")).ok()?.trim().parse().ok()
}

/// Wait until the counter of `pid` is at least `n`; its value.
pub(super) fn wait_counter(pid: i32, n: u64, what: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(c) = counter(pid).filter(|&c| c >= n) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the counter of pid {pid} did not reach {n} (at {:?})",
            counter(pid)
        );
        sleep(Duration::from_millis(50));
    }
}

/// What the web server on the container's loopback answers (an HTTP GET from python3 run in
/// its net namespace; Debian's static busybox wget crashes under nsenter).
fn http_get(pid: i32) -> String {
    let nsenter = need("nsenter", "util-linux");
    let get = "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:8080/', timeout=5).read().decode())";
    let out = Command::new(nsenter)
        .args(["-t", &pid.to_string(), "-n", "--", "python3", "-c", get])
        .stdin(Stdio::null())
        .output()
        .expect("run nsenter python3");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A runc container and its state directory; deleted on drop.
pub(super) struct Runc {
    pub(super) state: PathBuf,
    pub(super) id: String,
    pub(super) criu: PathBuf,
}

impl Runc {
    pub(super) fn cmd(&self) -> Command {
        let mut c = Command::new(need("runc", "runc"));
        c.arg("--root").arg(&self.state).arg("--criu").arg(&self.criu);
        c.env("PATH", path_with_ferry(self.criu.parent().unwrap_or(Path::new("/"))));
        c
    }

    /// The container's init pid (`runc state`).
    pub(super) fn pid(&self) -> i32 {
        let out = run_cmd(self.cmd().args(["state", &self.id]), "runc state");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("runc state prints JSON");
        v["pid"].as_i64().unwrap_or(0) as i32
    }

    /// Start `runc ARGS...` with the container's stdio on pipes (as conmon gives them: runc
    /// passes pipes back with inherit_fd on restore), drained by threads.
    pub(super) fn detached(&self, args: &[&str], w: &WorkDir, what: &str) {
        let log = w.join(&format!("{what}.out"));
        let mut child = self
            .cmd()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start runc {what}: {e}"));
        // The container keeps the pipes after runc exits: drain them in the background (the
        // write end of stdin is leaked on purpose so that its stdin stays open).
        std::mem::forget(child.stdin.take());
        let mut out = child.stdout.take().expect("stdout pipe");
        let mut err = child.stderr.take().expect("stderr pipe");
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = out.read_to_end(&mut buf);
            let _ = fs::write(log2, buf);
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = String::new();
            let mut chunk = [0u8; 4096];
            // (runc's own messages come first; the container's stderr follows on the same pipe)
            while let Ok(n) = err.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
                let _ = tx.send(buf.clone());
            }
        });
        let status = wait_timeout(&mut child, Duration::from_secs(120));
        let msgs = rx.try_iter().last().unwrap_or_default();
        match status {
            Some(s) if s.success() => {}
            other => panic!("runc {what} failed ({other:?}): {msgs}"),
        }
    }
}

impl Drop for Runc {
    fn drop(&mut self) {
        let _ = self.cmd().args(["delete", "-f", &self.id]).stdin(Stdio::null()).output();
    }
}

/// A busybox bundle for runc (`runc spec` plus our job) in W/bundle.
pub(super) fn runc_bundle(w: &WorkDir) -> PathBuf {
    let bundle = w.join("bundle");
    busybox_rootfs(&bundle.join("rootfs"));
    run_cmd(Command::new(need("runc", "runc")).arg("spec").current_dir(&bundle), "runc spec");
    let path = bundle.join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&fs::read(&path).expect("read config.json")).expect("json");
    c["process"]["terminal"] = false.into();
    c["process"]["args"] = serde_json::json!(["sh", "-c", JOB]);
    c["root"]["readonly"] = false.into();
    fs::write(&path, serde_json::to_vec_pretty(&c).expect("json")).expect("write config.json");
    bundle
}

/// How far the real clients get: runc (`checkpoint`) and Podman (`container checkpoint`) with
/// ferry as the only criu ask VERSION first, accept ferry's 3.17, and send DUMP with the log in
/// their work directory. The dump either succeeds or is refused by ferry with a named error in
/// that log (never a crash, a hang or a version refusal).
#[test]
fn runc_checkpoint_reaches_ferry() {
    let w = WorkDir::new("runc-reach");
    let bin = criu_dir(&w);
    let bundle = runc_bundle(&w);
    let rc = Runc { state: w.join("state"), id: format!("ferry-reach-{}", std::process::id()), criu: bin.join("criu") };
    let pid_file = w.join("init.pid");
    rc.detached(&["run", "-d", "--pid-file", &path_str(&pid_file), "-b", &path_str(&bundle), &rc.id], &w, "run");
    let pid = rc.pid();
    wait_counter(pid, 3, "before the checkpoint");
    let work = w.join("work");
    let out = rc
        .cmd()
        .args(["checkpoint", "--image-path", &path_str(&w.join("img")), "--work-path", &path_str(&work), &rc.id])
        .stdin(Stdio::null())
        .output()
        .expect("run runc checkpoint");
    let log = fs::read_to_string(work.join("dump.log")).unwrap_or_default();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("CRIU version"), "runc refused ferry's CRIU version: {stderr}");
    assert!(log.contains("serving CRIU's RPC"), "ferry got no DUMP request from runc: {stderr}\nlog: {log}");
    // Every option runc sends by default is one ferry takes.
    assert!(!log.contains("not supported by ferry:"), "ferry refused an option runc sends: {log}");
    if !out.status.success() {
        assert!(
            log.contains("Error (ferry swrk): "),
            "runc checkpoint failed without ferry's error in dump.log: {stderr}\nlog: {log}"
        );
        eprintln!("runc checkpoint stops at: {}", log.lines().last().unwrap_or_default());
    }
}

/// The acceptance scenario with runc: a busybox container (own pid, mnt, net, uts, ipc
/// namespaces) with a counter and a web server on its loopback is checkpointed, and restored
/// with `restore -d`: the counter continues, the web server answers, and the mount table is
/// the same (each mount's root too).
#[test]
fn runc_checkpoint_restore_counter_and_httpd() {
    let w = WorkDir::new("runc-cr");
    let bin = criu_dir(&w);
    let bundle = runc_bundle(&w);
    let rc = Runc { state: w.join("state"), id: format!("ferry-cr-{}", std::process::id()), criu: bin.join("criu") };
    rc.detached(&["run", "-d", "-b", &path_str(&bundle), &rc.id], &w, "run");
    let pid = rc.pid();
    wait_counter(pid, 10, "before the checkpoint");
    assert_eq!(http_get(pid), "ferry-ok\n", "the web server does not answer before the checkpoint");
    let mountinfo = |pid: i32| fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    let mounts = mounts_view(&mountinfo(pid));
    let (img, work) = (w.join("img"), w.join("work"));
    let out = rc
        .cmd()
        .args(["checkpoint", "--image-path", &path_str(&img), "--work-path", &path_str(&work), &rc.id])
        .stdin(Stdio::null())
        .output()
        .expect("run runc checkpoint");
    let log = |name: &str| fs::read_to_string(work.join(name)).unwrap_or_default();
    assert!(out.status.success(), "runc checkpoint: {}\n{}", String::from_utf8_lossy(&out.stderr), log("dump.log"));
    let at_dump = counter(pid).unwrap_or(0);
    assert!(!pid_alive(pid), "the container still runs after the checkpoint");
    rc.detached(
        &[
            "restore",
            "-d",
            "--image-path",
            &path_str(&img),
            "--work-path",
            &path_str(&work),
            "-b",
            &path_str(&bundle),
            &rc.id,
        ],
        &w,
        "restore",
    );
    let pid2 = rc.pid();
    // (A new host pid: the container's pid namespace is new; inside it the init is pid 1 again.)
    let nspid = fs::read_to_string(format!("/proc/{pid2}/status")).unwrap_or_default();
    let nspid = nspid.lines().find_map(|l| l.strip_prefix("NSpid:")).unwrap_or_default().to_string();
    assert_eq!(nspid.split_whitespace().last(), Some("1"), "the restored init is not pid 1 in its namespace: {nspid}");
    let c = wait_counter(pid2, at_dump + 5, "after the restore");
    assert!(c > at_dump, "the counter did not continue ({c} after {at_dump})");
    assert_eq!(http_get(pid2), "ferry-ok\n", "the web server does not answer after the restore");
    // (With cgroup v1, runc gives its own cgroup as the source of the container's cgroup
    // mounts at restore: ferry binds the container's, which the image recorded.)
    assert_eq!(mounts_view(&mountinfo(pid2)), mounts, "the mount table changed");
}

/// Podman 4.3 with runc and an isolated store (vfs, cgroupfs), ferry the only criu in PATH.
pub(super) struct Podman {
    pub(super) base: PathBuf,
    pub(super) bin: PathBuf,
    pub(super) name: String,
    pub(super) image: String,
    /// The node it runs on, if not this host (podnode.rs).
    pub(super) node: Option<OnNode>,
}

/// A "node" of podnode.rs: Podman's commands enter its mount and network namespaces, and its
/// run directory is the node's own tmpfs mounted at a path all nodes share.
pub(super) struct OnNode {
    /// The mount namespace's file (a bind mount of /proc/PID/ns/mnt).
    pub(super) mntns: PathBuf,
    /// The network namespace's name (/run/netns/NAME).
    pub(super) netns: String,
    pub(super) runroot: PathBuf,
}

impl Podman {
    /// A busybox root filesystem built in `w`, imported as this test's image (no registry).
    pub(super) fn import_busybox(&self, w: &WorkDir) {
        let rootfs = w.join("rootfs");
        busybox_rootfs(&rootfs);
        let tar = w.join("rootfs.tar");
        run_cmd(Command::new("tar").arg("-C").arg(&rootfs).arg("-cf").arg(&tar).arg("."), "tar");
        self.run(&["import", &path_str(&tar), &self.image], "import");
    }

    pub(super) fn new(w: &WorkDir) -> Podman {
        need("podman", "podman");
        let tag = std::process::id();
        Podman {
            base: w.join("podman"),
            bin: criu_dir(w),
            name: format!("ferry-pod-{tag}"),
            image: format!("localhost/ferry-busybox:{tag}"),
            node: None,
        }
    }

    pub(super) fn cmd(&self) -> Command {
        let podman = need("podman", "podman");
        let mut c = match &self.node {
            Some(n) => {
                let mut c = Command::new(need("nsenter", "util-linux"));
                c.arg(format!("--mount={}", n.mntns.display())).arg(format!("--net=/run/netns/{}", n.netns));
                c.arg("--").arg(podman);
                c
            }
            None => Command::new(podman),
        };
        c.arg("--root")
            .arg(self.base.join("storage"))
            .arg("--runroot")
            .arg(self.node.as_ref().map_or_else(|| self.base.join("run"), |n| n.runroot.clone()))
            .args(["--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--runtime", "runc"])
            .args(["--events-backend", "file", "--tmpdir"])
            .arg(self.base.join("tmp"))
            // (Networks this test defines live here: see scenarios.rs.)
            .arg("--network-config-dir")
            .arg(self.base.join("net"))
            .env("PATH", path_with_ferry(&self.bin));
        c
    }

    pub(super) fn run(&self, args: &[&str], what: &str) -> Output {
        run_cmd(self.cmd().args(args), &format!("podman {what}"))
    }

    pub(super) fn pid(&self) -> i32 {
        let out = self.run(&["inspect", "-f", "{{.State.Pid}}", &self.name], "inspect");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
    }

    /// `container checkpoint` + `restore` of the container (init `pid`), then `checkpoint
    /// --export`, `rm`, `restore --import`; after each restore `after(pid, counter at dump,
    /// what, whether imported)`.
    pub(super) fn checkpoint_restore_export_import(&self, w: &WorkDir, pid: i32, after: &dyn Fn(i32, u64, &str, bool)) {
        let podman = |args: &[&str], what: &str| {
            let out = self.cmd().args(args).output().unwrap_or_else(|e| panic!("cannot run podman {what}: {e}"));
            assert!(out.status.success(), "podman {what}: {}\n{}", String::from_utf8_lossy(&out.stderr), self.logs());
        };
        podman(&["container", "checkpoint", &self.name], "checkpoint");
        let at_dump = counter(pid).unwrap_or(0);
        podman(&["container", "restore", &self.name], "restore");
        let pid = self.pid();
        after(pid, at_dump, "after podman restore", false);
        let export = format!("--export={}", path_str(&w.join("ck.tar.zst")));
        podman(&["container", "checkpoint", &export, &self.name], "checkpoint --export");
        let at_dump = counter(pid).unwrap_or(0);
        self.run(&["rm", "-f", &self.name], "rm");
        podman(&["container", "restore", &export.replace("--export=", "--import=")], "restore --import");
        after(self.pid(), at_dump, "after podman restore --import", true);
    }

    /// The log of the last checkpoint or restore (runc's work dir is the container's userdata).
    pub(super) fn logs(&self) -> String {
        let mut s = String::new();
        for name in ["dump.log", "restore.log"] {
            let out = self.cmd().args(["inspect", "-f", "{{.StaticDir}}", &self.name]).output();
            if let Ok(o) = out {
                let dir = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
                s += &format!("--- {name}\n{}", fs::read_to_string(dir.join(name)).unwrap_or_default());
            }
        }
        s
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd().args(["rm", "-f", "-t", "0", &self.name]).stdin(Stdio::null()).output();
        let _ = self.cmd().args(["rmi", "-f", &self.image]).stdin(Stdio::null()).output();
        // Whatever Podman left mounted in its store (shm of a container) goes before the
        // directory is removed.
        let base = path_str(&self.base);
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut under: Vec<&str> =
            mounts.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| m.starts_with(&base)).collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = Command::new("umount").args(["-l", m]).output();
        }
    }
}

/// The acceptance scenario with Podman: checkpoint/restore, then checkpoint --export, rm,
/// restore --import of a busybox container; its counter continues each time.
#[test]
fn podman_checkpoint_restore_export_import() {
    let w = WorkDir::new("podman-cr");
    let pm = Podman::new(&w);
    pm.import_busybox(&w);
    let limits = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"];
    // (With Podman's default seccomp profile: its filter travels with the container.)
    let mut args = vec!["run", "-d", "--name", &pm.name, "--network", "none"];
    args.extend(limits);
    args.extend([pm.image.as_str(), "sh", "-c", JOB]);
    pm.run(&args, "run");
    let pid = pm.pid();
    wait_counter(pid, 10, "before the checkpoint");

    pm.checkpoint_restore_export_import(&w, pid, &|pid, at_dump, what, imported| {
        let c = wait_counter(pid, at_dump + 5, what);
        assert!(c > at_dump, "{what}: the counter did not continue ({c} after {at_dump})");
        if !imported {
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            assert!(
                status.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Seccomp:", "2"]),
                "the restored container lost Podman's seccomp filter:\n{status}"
            );
        }
    });
}

/// `podman container checkpoint --print-stats` and `restore --print-stats` show ferry's
/// figures: Podman reads CRIU's `stats-dump` / `stats-restore` from the container's userdata
/// directory (runc's work directory), which ferry writes as CRIU does.
#[test]
fn podman_print_stats() {
    let w = WorkDir::new("podman-stats");
    let pm = Podman::new(&w);
    pm.import_busybox(&w);
    let mut args = vec!["run", "-d", "--name", &pm.name, "--network", "none"];
    args.extend(["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]);
    args.extend([pm.image.as_str(), "sh", "-c", JOB]);
    pm.run(&args, "run");
    let pid = pm.pid();
    wait_counter(pid, 3, "before the checkpoint");
    let json = |out: &Output, what: &str| -> serde_json::Value {
        assert!(out.status.success(), "podman {what}: {}\n{}", String::from_utf8_lossy(&out.stderr), pm.logs());
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("podman {what}: not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    };
    let criu = |v: &serde_json::Value| v["container_statistics"][0]["criu_statistics"].clone();
    let out =
        pm.cmd().args(["container", "checkpoint", "--print-stats", &pm.name]).output().expect("podman checkpoint");
    let v = json(&out, "checkpoint --print-stats");
    eprintln!("podman container checkpoint --print-stats: {v}");
    let at_dump = counter(pid).unwrap_or(0);
    let c = criu(&v);
    for k in ["freezing_time", "frozen_time", "pages_scanned", "pages_written"] {
        assert!(c[k].as_u64().unwrap_or(0) > 0, "checkpoint --print-stats: {k} is not above 0: {v}");
    }
    let out = pm.cmd().args(["container", "restore", "--print-stats", &pm.name]).output().expect("podman restore");
    let v = json(&out, "restore --print-stats");
    eprintln!("podman container restore --print-stats: {v}");
    let c = criu(&v);
    for k in ["forking_time", "restore_time", "pages_restored"] {
        assert!(c[k].as_u64().unwrap_or(0) > 0, "restore --print-stats: {k} is not above 0: {v}");
    }
    wait_counter(pm.pid(), at_dump + 2, "after podman restore --print-stats");
}

/// Podman's own CRIU check (VERSION, "requires at least CRIU 31100") passes with ferry, and
/// its checkpoint reaches ferry's DUMP through runc.
#[test]
fn podman_checkpoint_reaches_ferry() {
    let w = WorkDir::new("podman-reach");
    let pm = Podman::new(&w);
    pm.import_busybox(&w);
    pm.run(
        &[
            "run",
            "-d",
            "--name",
            &pm.name,
            "--network",
            "none",
            "--ulimit",
            "nofile=20000:20000",
            "--ulimit",
            "nproc=32768:32768",
            &pm.image,
            "sh",
            "-c",
            JOB,
        ],
        "run",
    );
    wait_counter(pm.pid(), 3, "before the checkpoint");
    let out = pm.cmd().args(["container", "checkpoint", &pm.name]).output().expect("podman checkpoint");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs = pm.logs();
    assert!(!stderr.contains("requires at least CRIU"), "Podman refused ferry's CRIU version: {stderr}");
    // (A checkpoint that succeeded went through ferry: it is the only `criu` in PATH.)
    assert!(out.status.success() || logs.contains("serving CRIU's RPC"), "ferry got no DUMP request: {stderr}\n{logs}");
    assert!(!logs.contains("not supported by ferry:"), "ferry refused an option Podman's runc sends: {logs}");
    if !out.status.success() {
        assert!(
            logs.contains("Error (ferry swrk): "),
            "podman checkpoint failed without ferry's error: {stderr}\n{logs}"
        );
    }
}

/// The job of the user namespace container: a counter, and what it sees from inside (its
/// uid and gid maps, its mount table), written before each count.
/// (Each file written aside and renamed: the test must not read one the shell just truncated.)
const USERNS_JOB: &str = "i=0; while true; do i=$((i+1)); cat /proc/self/uid_map /proc/self/gid_map > /tmp/maps.t; \
     mv /tmp/maps.t /tmp/maps; cat /proc/self/mountinfo > /tmp/mounts.t; mv /tmp/mounts.t /tmp/mounts; \
     echo $i > /tmp/count; sleep 0.1; done";

/// A mount table as it can come back: per mount its root, mountpoint, per-mount options,
/// propagation kinds (without group numbers), file system, source and super-block options,
/// sorted (mount ids and device numbers of fresh mounts are new).
fn mounts_view(text: &str) -> Vec<String> {
    let mut out: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(" - ")?;
            let f: Vec<&str> = a.split(' ').collect();
            let prop: Vec<&str> = f.get(6..)?.iter().map(|o| o.split(':').next().unwrap_or(o)).collect();
            Some(format!("{} {} {} [{}] - {b}", f.get(3)?, f.get(4)?, f.get(5)?, prop.join(" ")))
        })
        .collect();
    out.sort();
    out
}

/// The inode of the user namespace that owns `pid`'s namespace of `kind`, and of `pid`'s own
/// user namespace.
fn owner_and_userns(pid: i32, kind: &str) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let ns = fs::File::open(format!("/proc/{pid}/ns/{kind}")).expect("open the namespace file");
    let owner = ferry_sys::ns::owner_userns(std::os::fd::AsFd::as_fd(&ns)).expect("ioctl(NS_GET_USERNS)");
    let owner = fs::File::from(owner).metadata().expect("fstat").ino();
    (owner, fs::metadata(format!("/proc/{pid}/ns/user")).expect("stat ns/user").ino())
}

/// A runc container with a user namespace (`linux.uidMappings`/`gidMappings`: 0 -> 100000,
/// 65536 ids; its root filesystem owned by 100000), whose mount namespace (and pid, net, uts,
/// ipc) runc makes from inside it: `checkpoint` then `restore -d`. The counter continues; from
/// inside, the maps and the mount table (mountpoints, file systems, options, propagation) are
/// the same; its mount and pid namespaces are owned by its user namespace again.
#[test]
fn runc_userns_checkpoint_restore_counter() {
    let w = WorkDir::new("runc-userns");
    let bin = criu_dir(&w);
    let bundle = runc_bundle(&w);
    let path = bundle.join("config.json");
    let mut c: serde_json::Value = serde_json::from_slice(&fs::read(&path).expect("read config.json")).expect("json");
    c["process"]["args"] = serde_json::json!(["sh", "-c", USERNS_JOB]);
    c["linux"]["namespaces"].as_array_mut().expect("linux.namespaces").push(serde_json::json!({"type": "user"}));
    let map = serde_json::json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    c["linux"]["uidMappings"] = map.clone();
    c["linux"]["gidMappings"] = map;
    fs::write(&path, serde_json::to_vec_pretty(&c).expect("json")).expect("write config.json");
    run_cmd(Command::new("chown").arg("-hR").arg("100000:100000").arg(bundle.join("rootfs")), "chown rootfs");
    let rc =
        Runc { state: w.join("state"), id: format!("ferry-userns-{}", std::process::id()), criu: bin.join("criu") };
    rc.detached(&["run", "-d", "-b", &path_str(&bundle), &rc.id], &w, "run");
    let pid = rc.pid();
    wait_counter(pid, 5, "before the checkpoint");
    let inside = |pid: i32, f: &str| fs::read_to_string(format!("/proc/{pid}/root/tmp/{f}")).unwrap_or_default();
    let maps = inside(pid, "maps");
    assert_eq!(maps, "         0     100000      65536\n         0     100000      65536\n", "the container's maps");
    let (owner, userns) = owner_and_userns(pid, "mnt");
    assert_eq!(owner, userns, "runc made the container's mount namespace outside its user namespace");
    let mounts = mounts_view(&inside(pid, "mounts"));
    let (img, work) = (w.join("img"), w.join("work"));
    let out = rc
        .cmd()
        .args(["checkpoint", "--image-path", &path_str(&img), "--work-path", &path_str(&work), &rc.id])
        .stdin(Stdio::null())
        .output()
        .expect("run runc checkpoint");
    let log = |name: &str| fs::read_to_string(work.join(name)).unwrap_or_default();
    assert!(out.status.success(), "runc checkpoint: {}\n{}", String::from_utf8_lossy(&out.stderr), log("dump.log"));
    let at_dump = counter(pid).unwrap_or(0);
    assert!(!pid_alive(pid), "the container still runs after the checkpoint");
    let restore = [
        "restore",
        "-d",
        "--image-path",
        &path_str(&img),
        "--work-path",
        &path_str(&work),
        "-b",
        &path_str(&bundle),
        &rc.id,
    ];
    rc.detached(&restore, &w, "restore");
    let pid2 = rc.pid();
    let c = wait_counter(pid2, at_dump + 5, "after the restore");
    assert!(c > at_dump, "the counter did not continue ({c} after {at_dump})");
    assert_eq!(inside(pid2, "maps"), maps, "the maps seen from inside changed");
    assert_eq!(mounts_view(&inside(pid2, "mounts")), mounts, "the mount table seen from inside changed");
    for kind in ["mnt", "pid"] {
        let (owner, userns) = owner_and_userns(pid2, kind);
        assert_eq!(owner, userns, "the restored {kind} namespace is not owned by the container's user namespace");
    }
}

/// A Podman container with a user namespace (`--uidmap 0:100000:65536 --gidmap
/// 0:100000:65536`), with Podman's own mounts (/etc/hosts, /etc/hostname, /run/.containerenv,
/// shm, and with cgroup v1 a bind of the container's cgroup per hierarchy): `container
/// checkpoint` + `restore`, then `checkpoint --export`, `rm`, `restore --import`. Each time the
/// counter continues and, from inside, the maps and the mount table (with each mount's root:
/// runc names its own cgroup, conmon's, as the cgroup mounts' source at restore, and ferry
/// binds the container's that the image recorded; but the root filesystem's after `--import`)
/// are the same.
#[test]
fn podman_userns_checkpoint_restore_export_import() {
    let w = WorkDir::new("podman-userns");
    let pm = Podman::new(&w);
    pm.import_busybox(&w);
    let mut args = vec!["run", "-d", "--name", &pm.name, "--network", "none"];
    args.extend(["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"]);
    args.extend(["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]);
    args.extend([pm.image.as_str(), "sh", "-c", USERNS_JOB]);
    pm.run(&args, "run");
    let pid = pm.pid();
    wait_counter(pid, 5, "before the checkpoint");
    let inside = |pid: i32, f: &str| fs::read_to_string(format!("/proc/{pid}/root/tmp/{f}")).unwrap_or_default();
    let maps = inside(pid, "maps");
    assert_eq!(maps, "         0     100000      65536\n         0     100000      65536\n", "the container's maps");
    let (owner, userns) = owner_and_userns(pid, "mnt");
    assert_eq!(owner, userns, "Podman made the container's mount namespace outside its user namespace");
    // (`--import` makes the container a new root filesystem in Podman's store, the exported
    // one with its changes: that mount's root, a directory of the store, is Podman's choice.)
    let view = |text: &str, new_rootfs: bool| -> Vec<String> {
        let mut v = mounts_view(text);
        if new_rootfs {
            for m in v.iter_mut().filter(|m| m.split(' ').nth(1) == Some("/")) {
                *m = format!("- {}", m.split_once(' ').map_or("", |x| x.1));
            }
        }
        v
    };
    let mounts = inside(pid, "mounts");
    let check = |pid: i32, at_dump: u64, what: &str, new_rootfs: bool| {
        let c = wait_counter(pid, at_dump + 5, what);
        assert!(c > at_dump, "{what}: the counter did not continue ({c} after {at_dump})");
        assert_eq!(inside(pid, "maps"), maps, "{what}: the maps seen from inside changed");
        assert_eq!(
            view(&inside(pid, "mounts"), new_rootfs),
            view(&mounts, new_rootfs),
            "{what}: the mount table seen from inside changed"
        );
        let (owner, userns) = owner_and_userns(pid, "mnt");
        assert_eq!(owner, userns, "{what}: the mount namespace is not owned by the container's user namespace");
    };

    pm.checkpoint_restore_export_import(&w, pid, &check);
}
