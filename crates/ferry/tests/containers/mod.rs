//! ferry as the CRIU of container runtimes: CRIU's RPC (`ferry swrk FD`) driven by a client
//! written here with ferry's own copy of CRIU's messages (same wire numbers as CRIU's
//! rpc.proto), ferry called as `criu`, then the real clients (runc, Podman) in `runtimes.rs`.

use crate::common::*;
use ferry::criu::rpc::*;
use prost::Message;
use std::fs::{self, File};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod podnode;
mod predump;
mod runtimes;
mod scenarios;
mod veth;

/// A `ferry swrk FD` server and the client end of its socket.
struct Swrk {
    child: Child,
    sock: UnixDatagram,
    stderr: PathBuf,
}

impl Swrk {
    /// Start `PROGRAM ARGS... FD` (argv[0] `program`, so `criu` through a symlink works too),
    /// the server end of a fresh SOCK_SEQPACKET pair inherited at its own fd number, as go-criu
    /// does.
    fn start_as(program: &Path, args: &[&str], w: &WorkDir) -> Swrk {
        let (client, server) = ferry_sys::unixsock::socketpair(libc::SOCK_SEQPACKET).expect("socketpair");
        let stderr = w.join(&format!("swrk-{}.err", server.as_raw_fd()));
        let err = File::create(&stderr).expect("create swrk stderr file");
        // (Inheritable only for the moment of the spawn.)
        ferry_sys::raw::set_cloexec(server.as_raw_fd(), false).expect("clear FD_CLOEXEC");
        let child = Command::new(program)
            .args(args)
            .arg(server.as_raw_fd().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        drop(server);
        Swrk { child, sock: UnixDatagram::from(client), stderr }
    }

    fn start(w: &WorkDir) -> Swrk {
        Swrk::start_as(Path::new(ferry_bin()), &["swrk"], w)
    }

    fn send(&self, req: &CriuReq) {
        self.sock.send(&req.encode_to_vec()).expect("send a request to swrk");
    }

    /// The next response, within `timeout`.
    fn recv(&self, timeout: Duration) -> CriuResp {
        self.sock.set_read_timeout(Some(timeout)).expect("set a read timeout");
        let mut buf = vec![0u8; 1 << 16];
        let n = match self.sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) => panic!("no response from swrk within {timeout:?}: {e}; its stderr: {}", self.stderr_text()),
        };
        assert!(n > 0, "swrk closed the connection without answering; its stderr: {}", self.stderr_text());
        CriuResp::decode(&buf[..n]).unwrap_or_else(|e| panic!("swrk's answer is not a criu_resp: {e}"))
    }

    fn call(&self, req: &CriuReq) -> CriuResp {
        self.send(req);
        self.recv(Duration::from_secs(120))
    }

    /// Answer every notification with success, recording its script and pid, until the final
    /// response.
    fn call_notified(&self, req: &CriuReq, seen: &mut Vec<(String, Option<i32>)>) -> CriuResp {
        self.send(req);
        loop {
            let resp = self.recv(Duration::from_secs(300));
            if resp.r#type != CriuReqType::Notify as i32 {
                return resp;
            }
            let n = resp.notify.clone().unwrap_or_default();
            seen.push((n.script.unwrap_or_default(), n.pid));
            self.send(&CriuReq {
                r#type: CriuReqType::Notify as i32,
                notify_success: Some(true),
                ..Default::default()
            });
        }
    }

    /// Wait for the server to exit; its exit code.
    fn exit_code(&mut self, within: Duration) -> i32 {
        match wait_timeout(&mut self.child, within) {
            Some(s) => s.code().unwrap_or(-1),
            None => panic!("swrk did not exit within {within:?}; its stderr: {}", self.stderr_text()),
        }
    }

    fn stderr_text(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Swrk {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn req(ty: CriuReqType) -> CriuReq {
    CriuReq { r#type: ty as i32, ..Default::default() }
}

/// A directory opened in this process: its fd is what a client puts in `images_dir_fd`.
fn dir_fd(path: &Path) -> OwnedFd {
    fs::create_dir_all(path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    OwnedFd::from(File::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display())))
}

fn errmsg(resp: &CriuResp) -> String {
    resp.cr_errmsg.clone().unwrap_or_default()
}

/// VERSION, as runc and Podman (go-criu) ask it first: CRIU 3.17, no gitid (go-criu would
/// count a git build as 3.18), and the server exits once it answered.
#[test]
fn rpc_version() {
    let w = WorkDir::new("rpc-version");
    let mut s = Swrk::start(&w);
    let resp = s.call(&req(CriuReqType::Version));
    assert!(resp.success, "VERSION failed: {}", errmsg(&resp));
    assert_eq!(resp.r#type, CriuReqType::Version as i32);
    let v = resp.version.expect("a VERSION answer carries criu_version");
    assert_eq!((v.major_number, v.minor_number), (3, 17));
    assert_eq!(v.gitid, None);
    // go-criu's number: major * 10000 + minor * 100 + sublevel; Podman wants at least 31100.
    assert!(v.major_number * 10000 + v.minor_number * 100 + v.sublevel.unwrap_or(0) >= 31100);
    assert_eq!(s.exit_code(Duration::from_secs(10)), 0);
}

/// CHECK and FEATURE_CHECK: the features asked are answered (memory tracking yes: userfaultfd's
/// async write-protection is there, which pre-dumps use; no lazy pages through the RPC), those
/// not asked are left out, as CRIU does.
#[test]
fn rpc_check_and_features() {
    let w = WorkDir::new("rpc-check");
    let mut s = Swrk::start(&w);
    let resp = s.call(&CriuReq { keep_open: Some(true), ..req(CriuReqType::Check) });
    assert!(resp.success, "CHECK failed: {}", errmsg(&resp));
    assert_eq!(resp.r#type, CriuReqType::Check as i32);
    let asked = CriuFeatures { mem_track: Some(true), lazy_pages: Some(true), pidfd_store: None };
    let resp = s.call(&CriuReq { features: Some(asked), ..req(CriuReqType::FeatureCheck) });
    assert!(resp.success, "FEATURE_CHECK failed: {}", errmsg(&resp));
    let f = resp.features.expect("a FEATURE_CHECK answer carries criu_features");
    assert_eq!((f.mem_track, f.lazy_pages, f.pidfd_store), (Some(true), Some(false), None));
    assert_eq!(s.exit_code(Duration::from_secs(10)), 0);
}

/// Garbage, an unknown request type, a NOTIFY out of turn, requests ferry cannot serve, and
/// options it cannot honour: each an answer with success = false naming the problem, never a
/// crash or a hang; a client that closes its end ends the server.
#[test]
fn rpc_bad_input() {
    let w = WorkDir::new("rpc-bad");
    // Not a protobuf message at all.
    let mut s = Swrk::start(&w);
    s.sock.send(&[0xff, 0xff, 0xff, 0xff, 0x0f, 0x01]).expect("send garbage");
    let resp = s.recv(Duration::from_secs(10));
    assert!(!resp.success);
    assert!(errmsg(&resp).contains("cannot decode the request"), "{}", errmsg(&resp));
    assert_eq!(s.exit_code(Duration::from_secs(10)), 1);

    let mut s = Swrk::start(&w);
    let resp = s.call(&CriuReq { r#type: 99, keep_open: Some(true), ..Default::default() });
    assert!(!resp.success);
    assert_eq!(resp.r#type, CriuReqType::Empty as i32);
    assert!(errmsg(&resp).contains("unknown request type 99"), "{}", errmsg(&resp));
    // keep_open: the same server answers the next request.
    let resp = s.call(&CriuReq { keep_open: Some(true), ..req(CriuReqType::Notify) });
    assert!(!resp.success && errmsg(&resp).contains("NOTIFY without a pending notification"), "{}", errmsg(&resp));
    let resp = s.call(&CriuReq { keep_open: Some(true), ..req(CriuReqType::PreDump) });
    assert!(!resp.success && errmsg(&resp).contains("no opts"), "{}", errmsg(&resp));
    let resp = s.call(&CriuReq { keep_open: Some(true), ..req(CriuReqType::Dump) });
    assert!(!resp.success && errmsg(&resp).contains("no opts"), "{}", errmsg(&resp));
    // An option ferry cannot honour is named, and nothing is dumped.
    let img = w.join("img");
    let fd = dir_fd(&img);
    let opts = CriuOpts {
        images_dir_fd: fd.as_raw_fd(),
        pid: Some(std::process::id() as i32),
        auto_dedup: Some(true),
        lazy_pages: Some(true),
        external: vec!["pid[4026531836]:extRootPidNS".into()],
        log_file: Some("dump.log".into()),
        ..Default::default()
    };
    let resp = s.call(&CriuReq { opts: Some(opts.clone()), keep_open: Some(true), ..req(CriuReqType::Dump) });
    assert!(!resp.success);
    for name in ["auto_dedup", "lazy_pages", "pid[4026531836]"] {
        assert!(errmsg(&resp).contains(name), "the refusal does not name {name}: {}", errmsg(&resp));
    }
    assert!(!img.join("inventory.img").exists(), "a refused dump wrote an image");
    // The log file (runc shows its path, not cr_errmsg) holds the error too.
    let log = fs::read_to_string(img.join("dump.log")).unwrap_or_default();
    assert!(log.contains("auto_dedup"), "dump.log does not hold the error: {log:?}");
    // A log_file with a directory in it is refused (CRIU: no subdirectories).
    let bad_log = CriuOpts { log_file: Some("../x.log".into()), auto_dedup: None, lazy_pages: None, ..opts.clone() };
    let resp = s.call(&CriuReq { opts: Some(bad_log), keep_open: Some(true), ..req(CriuReqType::Dump) });
    assert!(!resp.success && errmsg(&resp).contains("log_file"), "{}", errmsg(&resp));
    // A parent_img that is no directory, or not a pre-dump: named, nothing dumped.
    let clean = CriuOpts { auto_dedup: None, lazy_pages: None, external: Vec::new(), ..opts };
    let no_parent = CriuOpts { parent_img: Some("../nope".into()), ..clean.clone() };
    let resp = s.call(&CriuReq { opts: Some(no_parent), keep_open: Some(true), ..req(CriuReqType::Dump) });
    assert!(!resp.success && errmsg(&resp).contains("parent_img ../nope"), "{}", errmsg(&resp));
    fs::create_dir_all(w.join("not-pre")).expect("create not-pre");
    let not_pre = CriuOpts { parent_img: Some("../not-pre".into()), ..clean };
    let resp = s.call(&CriuReq { opts: Some(not_pre), keep_open: Some(true), ..req(CriuReqType::PreDump) });
    assert!(!resp.success && errmsg(&resp).contains("parent_img"), "{}", errmsg(&resp));
    assert!(!img.join("inventory.img").exists(), "a refused dump wrote an image");
    // A closed connection ends the server at once.
    drop(std::mem::replace(&mut s.sock, UnixDatagram::unbound().expect("socket")));
    assert_eq!(s.exit_code(Duration::from_secs(10)), 0);

    // An fd that is not a socket.
    let out = Command::new(ferry_bin()).args(["swrk", "0"]).stdin(Stdio::null()).output().expect("run ferry swrk 0");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fd 0 is not a unix SOCK_SEQPACKET socket"), "{err}");
    let out = Command::new(ferry_bin()).args(["swrk", "987"]).output().expect("run ferry swrk 987");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("fd 987"));
}

/// A symlink named `criu` to the ferry binary, in a fresh directory (put first in PATH), with
/// links to every other program of the sbin directories (ip, nft ... which ferry runs): the
/// tests' PATH is this directory and the bin directories, so ferry is the only `criu` in it
/// (Debian's CRIU is /usr/sbin/criu).
fn criu_dir(w: &WorkDir) -> PathBuf {
    let bin = w.join("bin");
    fs::create_dir_all(&bin).expect("create bin dir");
    std::os::unix::fs::symlink(ferry_bin(), bin.join("criu")).expect("symlink criu -> ferry");
    for dir in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
        for e in fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name();
            if name != "criu" && !bin.join(&name).exists() {
                let _ = std::os::unix::fs::symlink(e.path(), bin.join(&name));
            }
        }
    }
    bin
}

/// ferry called as `criu`: CRIU's `--version` format, `check`, `check --feature`, `swrk`, and
/// CRIU's dump command line going to ferry's parser.
#[test]
fn criu_command_line() {
    let w = WorkDir::new("criu-cli");
    let criu = criu_dir(&w).join("criu");
    let run = |args: &[&str]| Command::new(&criu).args(args).stdin(Stdio::null()).output().expect("run criu");
    for flag in ["--version", "-V"] {
        let out = run(&[flag]);
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "Version: 3.17\n");
    }
    let out = run(&["check"]);
    assert!(out.status.success(), "criu check: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "Looks good.\n");
    let out = run(&["check", "--feature", "mem_dirty_track"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("mem_dirty_track is NOT supported"));
    // CRIU's flags reach ferry's dump: an unknown one is refused by name.
    let out = run(&["dump", "-t", "1", "-D", "/nonexistent", "--lazy-pages"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--lazy-pages"));
    // `criu swrk FD` is the server.
    let mut s = Swrk::start_as(&criu, &["swrk"], &w);
    let resp = s.call(&req(CriuReqType::Version));
    assert!(resp.success && resp.version.is_some());
    assert_eq!(s.exit_code(Duration::from_secs(10)), 0);
}

/// DUMP then RESTORE of a plain workload through the RPC, as runc drives them: notifications
/// answered (pre-dump, post-dump; setup-namespaces and post-restore with the restored pid), the
/// images and the logs in the directories given by fd, and with rst_sibling the restored
/// process is a child of the client (CLONE_PARENT), which reaps it.
#[test]
fn rpc_dump_restore_sibling() {
    let mut run = Run::start(&Spec::c("mem_anon"));
    let img = run.img();
    let work = run.w.join("work");
    let (img_fd, work_fd) = (dir_fd(&img), dir_fd(&work));
    let opts = CriuOpts {
        images_dir_fd: img_fd.as_raw_fd(),
        work_dir_fd: Some(work_fd.as_raw_fd()),
        pid: Some(run.pid),
        log_level: Some(4),
        log_file: Some("dump.log".into()),
        notify_scripts: Some(true),
        manage_cgroups: Some(true),
        file_locks: Some(false),
        orphan_pts_master: Some(true),
        ext_unix_sk: Some(false),
        auto_dedup: Some(false),
        lazy_pages: Some(false),
        empty_ns: Some(0),
        ..Default::default()
    };
    let s = Swrk::start(&run.w);
    let mut seen = Vec::new();
    let resp = s.call_notified(&CriuReq { opts: Some(opts.clone()), ..req(CriuReqType::Dump) }, &mut seen);
    if !resp.success {
        run.fail(&format!("RPC DUMP failed: {}", errmsg(&resp)));
    }
    assert_eq!(resp.r#type, CriuReqType::Dump as i32);
    assert_eq!(resp.dump.and_then(|d| d.restored), Some(false));
    let scripts: Vec<&str> = seen.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(scripts, ["pre-dump", "post-dump"]);
    assert!(img.join("inventory.img").exists(), "no image in the images_dir_fd directory");
    let log = fs::read_to_string(work.join("dump.log")).unwrap_or_default();
    assert!(log.contains("dumped"), "work_dir_fd/dump.log holds no info line: {log:?}");
    drop(s);
    run.reap_dumped();

    let s = Swrk::start(&run.w);
    let restore_opts = CriuOpts {
        log_file: Some("restore.log".into()),
        rst_sibling: Some(true),
        pid: None,
        evasive_devices: Some(true),
        ..opts
    };
    let mut seen = Vec::new();
    let resp = s.call_notified(&CriuReq { opts: Some(restore_opts), ..req(CriuReqType::Restore) }, &mut seen);
    if !resp.success {
        run.fail(&format!("RPC RESTORE failed: {}", errmsg(&resp)));
    }
    let pid = resp.restore.map(|r| r.pid);
    assert_eq!(pid, Some(run.pid));
    assert_eq!(seen, [("setup-namespaces".to_string(), pid), ("post-restore".to_string(), pid)]);
    // The restored root is our child (CLONE_PARENT), not the server's.
    let stat = fs::read_to_string(format!("/proc/{}/stat", run.pid)).unwrap_or_default();
    let ppid: i32 = stat.rsplit_once(") ").and_then(|(_, r)| r.split(' ').nth(1)?.parse().ok()).unwrap_or(-1);
    if ppid != std::process::id() as i32 {
        run.fail(&format!("the restored process's parent is {ppid}, not the RPC client {}", std::process::id()));
    }
    drop(s);
    run.go();
    // We are its parent: reap it, and the workload's own verdict must be PASS.
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let code = loop {
        match ferry_sys::ptrace::wait(run.pid, true) {
            Ok(Some((_, ferry_sys::ptrace::WaitStatus::Exited(c)))) => break c,
            Ok(Some((_, ferry_sys::ptrace::WaitStatus::Signaled(sig)))) => run.fail(&format!("killed by signal {sig}")),
            Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            other => run.fail(&format!("cannot reap the restored process: {other:?}")),
        }
    };
    assert_eq!(run.result(), "PASS", "the restored workload's verdict");
    assert_eq!(code, 0);
}
