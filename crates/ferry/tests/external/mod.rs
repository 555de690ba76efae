//! Files whose other end is outside the dumped tree (the test plays the outside process): an
//! external pipe on fd 5, restored alone (its outside end closed: EOF, EPIPE) or handed back by
//! a supervisor with `restore --inherit-fd`; a unix socket to an outside peer with `dump
//! --external unix[INO]` + `--inherit-fd`; and processes sharing one fd table (CLONE_FILES).
//! Workloads: `extfd`, `clone_files`.

use crate::common::*;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

fn pipe() -> (OwnedFd, OwnedFd) {
    ferry_sys::process::pipe2(libc::O_CLOEXEC).expect("pipe2")
}

/// "pipe:[INO]" / "socket:[INO]" of fd `fd` of `pid`.
fn link(pid: i32, fd: i32) -> String {
    fs::read_link(format!("/proc/{pid}/fd/{fd}")).expect("readlink of an fd").to_string_lossy().into_owned()
}

/// The `extfd` workload with `kind`/`how`; its fd 5 is `end` (the test keeps the other end).
fn extfd(kind: &str, how: &str, end: OwnedFd) -> Spec {
    Spec::c("extfd").args(&[kind, how]).stdin(end)
}

/// Dump (kills), wait for the pid, restore with `extra` (ferry's stdin: `ferry_stdin`), and
/// return once the process runs.
fn dump_and_restore(run: &mut Run, dump_extra: &[&str], ferry_stdin: Option<OwnedFd>, extra: &[&str]) {
    run.dump_ok(dump_extra);
    run.reap_dumped();
    run.ferry_stdin = ferry_stdin;
    let img = run.img();
    let pidfile = run.spawn_restore("restore", &img, extra);
    run.wait_pidfile(&pidfile);
    run.ferry_stdin = None;
}

fn go_and_pass(run: &mut Run) {
    run.go();
    let status = run.wait_restore_exit();
    run.expect_pass(status, "ferry restore");
}

/// The workload and the test against each other without ferry: the workload is right.
#[test]
fn control_extfd() {
    let (r, w) = pipe();
    let mut w = fs::File::from(w);
    w.write_all(b"before-dump").expect("write");
    let mut run = Run::start(&extfd("read", "control", r));
    w.write_all(b"from-supervisor").expect("write");
    drop(w);
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload (read)");

    let (a, b) = UnixStream::pair().expect("socketpair");
    let mut run = Run::start(&extfd("unix", "control", OwnedFd::from(a)));
    run.go();
    let mut b = b;
    b.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut buf = [0u8; 4];
    b.read_exact(&mut buf).expect("ping from the workload");
    assert_eq!(&buf, b"ping");
    b.write_all(b"pong").expect("pong");
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload (unix)");
}

/// fd 5 is the read end of the test's pipe, with unread bytes: after restore (no
/// --inherit-fd) the process reads those bytes, then EOF, as if the writer had exited. The
/// test still holds the original write end all along.
#[test]
fn pipe_read_end_alone() {
    let (r, w) = pipe();
    let mut w = fs::File::from(w);
    w.write_all(b"before-dump").expect("write");
    let mut run = Run::start(&extfd("read", "alone", r));
    dump_and_restore(&mut run, &[], None, &[]);
    go_and_pass(&mut run);
    drop(w);
}

/// fd 5 is the write end of the test's pipe: after restore alone, a write fails with EPIPE.
#[test]
fn pipe_write_end_alone() {
    let (r, w) = pipe();
    let mut run = Run::start(&extfd("write", "alone", w));
    dump_and_restore(&mut run, &[], None, &[]);
    go_and_pass(&mut run);
    let mut got = [0u8; 11];
    fs::File::from(r).read_exact(&mut got).expect("the bytes written before the dump");
    assert_eq!(&got, b"before-dump", "the dump must not consume what the outside reader has to read");
}

/// A supervisor hands its own pipe back: `--inherit-fd fd[0]:pipe:[INO]` (ferry's stdin is the
/// read end of a new pipe); the restored process reads what the test writes into it, then EOF.
#[test]
fn pipe_read_end_inherit() {
    let (r, w) = pipe();
    let mut old_w = fs::File::from(w);
    old_w.write_all(b"before-dump").expect("write");
    let mut run = Run::start(&extfd("read", "inherit", r));
    let key = link(run.pid, 5);
    assert!(key.starts_with("pipe:["), "fd 5 is {key}");
    let (nr, nw) = pipe();
    dump_and_restore(&mut run, &[], Some(nr), &["--inherit-fd", &format!("fd[0]:{key}")]);
    let mut nw = fs::File::from(nw);
    nw.write_all(b"from-supervisor").expect("write into the handed-over pipe");
    drop(nw);
    go_and_pass(&mut run);
    drop(old_w);
}

/// The reverse: ferry's stdin is the write end of a new pipe; the test reads from its read end
/// what the restored process writes.
#[test]
fn pipe_write_end_inherit() {
    let (_r, w) = pipe();
    let mut run = Run::start(&extfd("write", "inherit", w));
    let key = link(run.pid, 5);
    let (nr, nw) = pipe();
    dump_and_restore(&mut run, &[], Some(nw), &["--inherit-fd", &format!("fd[0]:{key}")]);
    run.go();
    let mut got = [0u8; 13];
    let mut nr = fs::File::from(nr);
    nr.read_exact(&mut got).expect("read what the restored process wrote");
    assert_eq!(&got, b"from-restored");
    let status = run.wait_restore_exit();
    run.expect_pass(status, "ferry restore");
}

/// A unix stream socket connected to the test: refused by name without `--external`; dumped
/// with `--external unix[INO]`; its restore without `--inherit-fd` refused naming the key to
/// give; with `--inherit-fd fd[0]:socket:[INO]` (a new socketpair of the test) the restored
/// process talks to the test.
#[test]
fn unix_socket_external_inherit() {
    let (a, _b) = UnixStream::pair().expect("socketpair");
    let mut run = Run::start(&extfd("unix", "inherit", OwnedFd::from(a)));
    let key = link(run.pid, 5);
    let ino = key.trim_start_matches("socket:[").trim_end_matches(']').to_string();
    dump_refused(run.pid, &run.w.join("refused"), &format!("--external unix[{ino}]"));
    run.dump_ok(&["--external", &format!("unix[{ino}]")]);
    run.reap_dumped();
    let img = run.img();
    let pidfile = run.spawn_restore("restore-without", &img, &[]);
    let status = run.wait_restore_exit();
    let err = fs::read_to_string(run.w.join("restore-without.err")).unwrap_or_default();
    if status.success() || !err.contains(&format!("--inherit-fd fd[N]:{key}")) {
        run.fail(&format!("restore without --inherit-fd: {} / {err}", describe(status)));
    }
    assert!(!pidfile.exists(), "a refused restore wrote its pidfile");
    run.wait_pid_gone("after the refused restore");
    let (c, d) = UnixStream::pair().expect("socketpair");
    run.ferry_stdin = Some(OwnedFd::from(c));
    let pidfile = run.spawn_restore("restore", &img, &["--inherit-fd", &format!("fd[0]:{key}")]);
    run.wait_pidfile(&pidfile);
    run.ferry_stdin = None;
    run.go();
    let mut d = d;
    d.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut buf = [0u8; 4];
    d.read_exact(&mut buf).unwrap_or_else(|e| run.fail(&format!("no ping from the restored process: {e}")));
    assert_eq!(&buf, b"ping");
    d.write_all(b"pong").expect("pong");
    let status = run.wait_restore_exit();
    run.expect_pass(status, "ferry restore");
}

/// A key that matches nothing is reported, not silently dropped (CRIU ignores it); the restore
/// goes on.
#[test]
fn inherit_fd_unused_key_warns() {
    let (r, w) = pipe();
    let mut w = fs::File::from(w);
    w.write_all(b"before-dump").expect("write");
    let mut run = Run::start(&extfd("read", "alone", r));
    let (nr, _nw) = pipe();
    dump_and_restore(&mut run, &[], Some(nr), &["--inherit-fd", "fd[0]:pipe:[1]"]);
    go_and_pass(&mut run);
    let err = fs::read_to_string(run.w.join("restore.err")).unwrap_or_default();
    assert!(err.contains("fd[0]:pipe:[1]") && err.contains("no file of the image"), "no warning: {err}");
}

#[test]
fn control_clone_files() {
    control(&Spec::c("clone_files"));
}

/// A child made with clone(CLONE_FILES) shares its parent's fd table; after restore they share
/// one table again (kcmp, and fds opened by either are seen by the other).
#[test]
fn clone_files() {
    cycle_tree(&Spec::c("clone_files"), &[]);
}

/// A terminal outside the tree (the slave of the test's pty) on fd 5: refused by name without
/// `--external tty[RDEV:DEV]`; with it, given back at restore with `--inherit-fd
/// fd[0]:tty[RDEV:DEV]` (the same terminal): the restored process writes to it and the test
/// reads that from the master.
#[test]
fn tty_external_inherit() {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let master = fs::OpenOptions::new().read(true).write(true).open("/dev/ptmx").expect("open /dev/ptmx");
    ferry_sys::tty::set_int(master.as_fd(), libc::TIOCSPTLCK, 0).expect("unlock the pty");
    let slave = ferry_sys::tty::open_peer(master.as_fd(), libc::O_RDWR | libc::O_NOCTTY).expect("open the slave");
    let mut run = Run::start(&extfd("tty", "inherit", slave.try_clone().expect("dup")));
    let md = fs::metadata(format!("/proc/{}/fd/5", run.pid)).expect("stat fd 5");
    let key = format!("tty[{:x}:{:x}]", md.rdev(), md.dev());
    dump_refused(run.pid, &run.w.join("refused"), &format!("--external {key}"));
    dump_and_restore(&mut run, &["--external", &key], Some(slave), &["--inherit-fd", &format!("fd[0]:{key}")]);
    run.go();
    ferry_sys::process::set_status_flags(master.as_fd(), libc::O_NONBLOCK).expect("O_NONBLOCK");
    let mut master = master;
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while got.len() < 6 && std::time::Instant::now() < deadline {
        let mut buf = [0u8; 64];
        match master.read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => run.fail(&format!("read the pty master: {e}")),
        }
    }
    let status = run.wait_restore_exit();
    run.expect_pass(status, "ferry restore");
    assert_eq!(String::from_utf8_lossy(&got), "ttyout", "what the restored process wrote to the terminal");
}

/// `--inherit-fd fd[0]:PATH` with a file's key (its path without the leading '/'): the
/// restored process reads the file the supervisor handed over, not the one at that path.
#[test]
fn file_path_key_inherit() {
    let w = WorkDir::new("extfd-file");
    let (orig, repl) = (w.join("original.txt"), w.join("replacement.txt"));
    fs::write(&orig, "original").expect("write");
    fs::write(&repl, "replacement").expect("write");
    let f = fs::File::open(&orig).expect("open");
    let mut run = Run::start(&extfd("file", "inherit", OwnedFd::from(f)));
    let key = path_str(&orig).trim_start_matches('/').to_string();
    let given = OwnedFd::from(fs::File::open(&repl).expect("open"));
    dump_and_restore(&mut run, &[], Some(given), &["--inherit-fd", &format!("fd[0]:{key}")]);
    go_and_pass(&mut run);
}

/// A file whose path leads elsewhere now (another file was renamed over it; a hard link keeps
/// it alive, so it is not a deleted file): refused by name without `--external
/// file[MNT_ID:INO]`; with it, given back with `--inherit-fd`.
#[test]
fn replaced_file_external_inherit() {
    use std::os::unix::fs::MetadataExt;
    let w = WorkDir::new("extfd-replaced");
    let (orig, repl) = (w.join("original.txt"), w.join("replacement.txt"));
    fs::write(&orig, "original").expect("write");
    fs::hard_link(&orig, w.join("kept.txt")).expect("hard link");
    let f = fs::File::open(&orig).expect("open");
    let mut run = Run::start(&extfd("file", "inherit", OwnedFd::from(f)));
    fs::write(&repl, "replacement").expect("write");
    fs::rename(&repl, &orig).expect("rename over the open file's path");
    let ino = fs::metadata(format!("/proc/{}/fd/5", run.pid)).expect("stat fd 5").ino();
    let info = fs::read_to_string(format!("/proc/{}/fdinfo/5", run.pid)).expect("fdinfo");
    let mnt: u32 = info
        .lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("mnt_id in fdinfo");
    let key = format!("file[{mnt:x}:{ino:x}]");
    dump_refused(run.pid, &run.w.join("refused"), &format!("--external {key}"));
    let given = OwnedFd::from(fs::File::open(&orig).expect("open the replacement"));
    dump_and_restore(&mut run, &["--external", &key], Some(given), &["--inherit-fd", &format!("fd[0]:{key}")]);
    go_and_pass(&mut run);
}

/// `dump -R` of a process reading an external pipe takes nothing from it: the process left
/// running still reads every byte (the unread ones were copied with tee), then EOF.
#[test]
fn pipe_read_end_leave_running() {
    let (r, w) = pipe();
    let mut w = fs::File::from(w);
    w.write_all(b"before-dump").expect("write");
    let mut run = Run::start(&extfd("read", "control", r));
    run.dump_ok(&["-R"]);
    run.expect_running_untraced("after dump -R");
    w.write_all(b"from-supervisor").expect("write");
    drop(w);
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload left running");
}

/// The `nft list tables` of network namespace `/run/netns/NAME`.
fn nft_tables_in(name: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", name, "nft", "list", "tables"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run ip netns exec nft");
    assert!(out.status.success(), "nft list tables in {name}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Established connections (`tcpstream pair`, both ends in the tree) in a network namespace
/// that is not the tree's own but outlives it (`dump --external net[INO]:KEY`, joined again with
/// `restore --inherit-fd fd[0]:KEY`, as runc does with a namespace Podman made): the network
/// lock is made in that namespace, and the restore removes it there once the tree runs (else
/// the restored connections stay blocked: every segment dropped, the streams never finish).
#[test]
fn tcp_established_in_an_external_netns_unlocked_there() {
    need("nft", "nftables");
    let node = crate::nsx::veth::Node::new("extnet");
    let ns_path = format!("/run/netns/{}", node.name);
    let ino = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata(&ns_path).expect("the namespace file").ino()
    };
    let mut spec = Spec::c("tcpstream").args(&["pair", "20"]).ready_timeout(Duration::from_secs(60));
    spec.pre_args = vec![format!("--net={ns_path}").into(), "--".into(), spec.program.clone().into()];
    spec.program = need("nsenter", "util-linux");
    let mut run = Run::start(&spec);
    let key = "extnet";
    let ns = OwnedFd::from(fs::File::open(&ns_path).expect("open the namespace"));
    dump_and_restore(
        &mut run,
        &["--tcp-established", "--external", &format!("net[{ino}]:{key}")],
        Some(ns),
        &["--inherit-fd", &format!("fd[0]:{key}")],
    );
    let netns = fs::read_link(format!("/proc/{}/ns/net", run.pid)).map(|l| l.display().to_string()).unwrap_or_default();
    assert_eq!(netns, format!("net:[{ino}]"), "the restored tree is not in the external namespace");
    let tables = nft_tables_in(&node.name);
    if tables.contains("ferry_lock_") {
        run.fail(&format!("the network lock is still in the tree's namespace once it runs: {tables}"));
    }
    go_and_pass(&mut run);
}
