//! Unix domain sockets: the `unix` workload (every kind of socket, name and queue in one
//! process), `unix_tree` (socketpairs and a shared socket across a parent and its child), and
//! what must be refused: a socket connected to a process outside the dump, fds in flight.

use crate::common::*;
use std::fs;
use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener, UnixStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

fn unix() -> Spec {
    Spec::c("unix")
}

/// The full `unix` workload, with a datagram socket connected to `@NAME`: a socket of the test,
/// outside the dump (reconnected by name at restore).
fn unix_ext() -> (Spec, UnixDatagram) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!("ferry-unix-ext-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address");
    let sock = UnixDatagram::bind_addr(&addr).expect("bind the outside datagram socket");
    sock.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    (unix().args(&[&format!("ext={name}")]), sock)
}

/// The outside socket got "ext-before" (sent before the dump) and "ext-after" (sent by the
/// restored process through its reconnected socket).
fn expect_ext(run: &Run, sock: &UnixDatagram) {
    let mut buf = [0u8; 64];
    for want in ["ext-before", "ext-after"] {
        match sock.recv(&mut buf) {
            Ok(n) if &buf[..n] == want.as_bytes() => {}
            Ok(n) => {
                run.fail(&format!("the outside socket got {:?}, want {want:?}", String::from_utf8_lossy(&buf[..n])))
            }
            Err(e) => run.fail(&format!("the outside socket got nothing ({e}), want {want:?}")),
        }
    }
}
fn unix_tree() -> Spec {
    Spec::c("unix_tree")
}

/// Connect to the workload's listeners (path and abstract) and leave "from-test" in each
/// connection, as a client that is not part of the image would. The streams stay open.
fn connect_from_test(run: &Run) -> Vec<UnixStream> {
    let mut out = Vec::new();
    let mut s = UnixStream::connect(run.w.join("srv.sock"))
        .unwrap_or_else(|e| run.fail(&format!("the test cannot connect to srv.sock: {e}")));
    s.write_all(b"from-test").expect("write to the path listener's connection");
    out.push(s);
    let name = format!("ferry-unix-{}", run.pid);
    let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract address");
    let mut s = UnixStream::connect_addr(&addr)
        .unwrap_or_else(|e| run.fail(&format!("the test cannot connect to @{name}: {e}")));
    s.write_all(b"from-test").expect("write to the abstract listener's connection");
    out.push(s);
    out
}

#[test]
fn control_unix() {
    let (spec, ext) = unix_ext();
    let mut run = Run::start(&spec);
    let _conns = connect_from_test(&run);
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload");
    expect_ext(&run, &ext);
}

#[test]
fn cycle_unix() {
    let (spec, ext) = unix_ext();
    let mut conns = Vec::new();
    let run = cycle_with(&spec, |run| conns = connect_from_test(run));
    expect_ext(&run, &ext);
}

/// dump -R reads the queues without taking anything: the process left running still finds
/// every byte, name and connection (then the image restores too).
#[test]
fn leave_running_unix() {
    let (spec, ext) = unix_ext();
    let mut run = Run::start(&spec);
    run.dump_ok(&["-R"]);
    run.expect_running_untraced("after dump -R");
    let _conns = connect_from_test(&run);
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload left running");
    expect_ext(&run, &ext);
}

#[test]
fn control_unix_tree() {
    control(&unix_tree());
}

/// The tree's pids are reaped by init after the dump: wait until they are all free.
#[test]
fn cycle_unix_tree() {
    let mut run = Run::start(&unix_tree());
    run.dump_ok(&[]);
    run.reap_dumped();
    let reader = ferry_image::ImageReader::open(&run.img()).expect("open image");
    if reader.inventory().pids.len() != 2 {
        run.fail(&format!("the image holds {} processes, expected 2", reader.inventory().pids.len()));
    }
    for &pid in &reader.inventory().pids {
        let deadline = Instant::now() + Duration::from_secs(90);
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < deadline, "pid {pid} was not reaped");
            sleep(Duration::from_millis(20));
        }
    }
    run.restore_and_verify("the tree");
}

#[test]
fn leave_running_unix_tree() {
    let mut run = Run::start(&unix_tree());
    run.dump_ok(&["-R"]);
    run.expect_running_untraced("after dump -R of the tree");
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the tree after dump -R");
}

/// A stream socket at fd 3 connected to the test (outside the tree) is refused, naming the
/// fd and the socket; the process carries on and can still use it.
#[test]
fn refuses_peer_outside_the_dump() {
    let w = WorkDir::new("unix-outside");
    let listener = UnixListener::bind(w.join("outside.sock")).expect("bind outside.sock");
    let mut run = Run::start_in(&unix().args(&["outside"]), w);
    let (mut conn, _) = listener.accept().expect("accept the workload's connection");
    let dir = run.w.join("img");
    dump_refused(run.pid, &dir, "fd 3: unix stream socket:[");
    let err_text = Command::new(ferry_bin())
        .args(["dump", "-t", &run.pid.to_string(), "-D", &path_str(&dir)])
        .output()
        .expect("run ferry dump");
    let err_text = String::from_utf8_lossy(&err_text.stderr).into_owned();
    assert!(err_text.contains("outside the dump"), "the error does not say why: {err_text}");
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload after a refused dump");
    let mut got = Vec::new();
    conn.read_to_end(&mut got).expect("read from the workload");
    assert_eq!(got, b"still-here", "the connection lost data across the refused dump");
}

/// A file descriptor in flight (SCM_RIGHTS) whose sender closed it (a pipe's read end, both
/// ends closed since): the datagram comes back with its fd, and the pipe with its bytes.
#[test]
fn cycle_fd_only_in_flight() {
    cycle_tree(&unix().args(&["rights"]), &[]);
}

/// A client that sent data on a connection not accepted yet: the data sits in a socket that no
/// fd reaches, so the dump is refused; then the listener accepts it and finds the data.
#[test]
fn refuses_data_before_accept() {
    let mut run = Run::start(&unix().args(&["embryo"]));
    let dir = run.w.join("img");
    dump_refused(run.pid, &dir, "has not accepted yet");
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload after a refused dump");
}

/// A restore that cannot bind a socket's path (a regular file took its place) fails naming the
/// path and leaves no process; once the path is free again, the same image restores and passes
/// (the socket files the failed attempt left behind are stale and get replaced).
#[test]
fn restore_refuses_occupied_path() {
    let mut run = Run::start(&unix());
    run.dump_ok(&[]);
    run.reap_dumped();
    let srv = run.w.join("srv.sock");
    let _ = fs::remove_file(&srv);
    fs::write(&srv, b"not a socket").expect("put a regular file at srv.sock");
    let args = vec!["restore".to_string(), "-D".to_string(), path_str(&run.img())];
    let res = run.ferry("restore-occupied", &args, RESTORE_TIMEOUT);
    if res.status.success() {
        run.fail("restore succeeded although srv.sock is a regular file");
    }
    if !res.stderr.contains("srv.sock exists and is not a socket") {
        run.fail(&format!("the restore error does not name the path: {}", res.stderr));
    }
    if pid_alive(run.pid) {
        run.fail("a failed restore left the process behind");
    }
    fs::remove_file(&srv).expect("remove the regular file");
    let pidfile = run.spawn_restore("restore", &run.img(), &[]);
    run.wait_pidfile(&pidfile);
    let _conns = connect_from_test(&run);
    run.go();
    let status = run.wait_restore_exit();
    run.expect_pass(status, "ferry restore once the path is free");
}

/// python3 blocked in accept() on a unix listener, with data in flight in a socketpair: after
/// restore the accept() restarts on the restored listener and serves the test's connection.
fn unixserver() -> Spec {
    // accept(2) and accept4(2) on x86-64
    Spec::python("unixserver.py").blocked_in(&[43, 288])
}

fn talk_to_unixserver(run: &mut Run) {
    let mut s = UnixStream::connect(run.w.join("py.sock"))
        .unwrap_or_else(|e| run.fail(&format!("cannot connect to the restored server: {e}")));
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("read timeout");
    s.write_all(b"hello").expect("send hello");
    let mut got = [0u8; 64];
    let n = s.read(&mut got).unwrap_or_else(|e| run.fail(&format!("no answer from the server: {e}")));
    if &got[..n] != b"hello back" {
        run.fail(&format!("the server answered {:?}", String::from_utf8_lossy(&got[..n])));
    }
}

#[test]
fn control_python_unix_server() {
    let mut run = Run::start(&unixserver());
    talk_to_unixserver(&mut run);
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the server");
}

#[test]
fn cycle_python_unix_server() {
    cycle_with(&unixserver(), talk_to_unixserver);
}

/// Sockets bound to relative paths (in the working directory and a subdirectory of it): the
/// directory is found at dump (the socket file's device and inode under the process's cwd), and
/// restore binds the same relative name there; a listener with an accepted connection and a
/// client of the tree waiting to be accepted, and a datagram socket with a queued datagram.
#[test]
fn cycle_relative_names() {
    cycle(&Spec::c("unix_names").args(&["relative"]));
}

/// A datagram socket connected to a socket whose file was unlinked since, with datagrams
/// queued to it by its peer and by name: restored connected, the queue intact, and the name
/// still without a file.
#[test]
fn cycle_dgram_connected_to_a_deleted_socket() {
    cycle(&Spec::c("unix_names").args(&["deleted_peer"]));
}

/// Sockets whose file was unlinked after bind (one of them replaced by a new listener's file at
/// the same path): they keep their names, the path leads to the new listener only.
#[test]
fn cycle_deleted_socket_names() {
    cycle(&Spec::c("unix_names").args(&["deleted"]));
}

/// Queued unix messages from two processes of the tree (one with uid 1001, gid 2001) keep their
/// sender's credentials (SCM_CREDENTIALS: pid, uid, gid) and, on the stream, the read boundaries
/// where the sender changes (`unix_creds`).
fn unix_creds() -> Spec {
    Spec::c("unix_creds")
}

#[test]
fn control_unix_creds() {
    control(&unix_creds());
}

#[test]
fn cycle_unix_creds() {
    cycle_tree(&unix_creds(), &[]);
}

/// What unix sockets report as their peer's credentials (SO_PEERCRED, SO_PEERGROUPS,
/// SO_PEERPIDFD): a pair made by the parent, one made by a child with other ids and groups, a
/// connection from that child to the parent's listener (both ends), the listener itself, and a
/// pair made by a process that exited (`unix_peercred`).
fn unix_peercred() -> Spec {
    Spec::c("unix_peercred")
}

#[test]
fn control_unix_peercred() {
    control(&unix_peercred());
}

#[test]
fn cycle_unix_peercred() {
    cycle_tree(&unix_peercred(), &[]);
}
