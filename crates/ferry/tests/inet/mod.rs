//! TCP and UDP sockets (IPv4 and IPv6): listeners, bound and connected UDP sockets, bare
//! sockets; connections refused without `--tcp-close` and restored closed with it; a
//! pre-forking server (a master and three workers sharing one listener) that answers requests
//! before and after the checkpoint with its workers' counters going on.

use crate::common::*;
use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread::sleep;
use std::time::{Duration, Instant};

fn inet() -> Spec {
    Spec::c("inet")
}

fn tcpconn(mode: &str) -> Spec {
    Spec::c("tcpconn").args(&[mode])
}

fn prefork() -> Spec {
    Spec::c("prefork")
}

mod control {
    use super::*;

    #[test]
    fn inet() {
        control(&super::inet());
    }

    #[test]
    fn tcpconn() {
        for mode in ["intact", "queued", "udpqueued", "filter", "ebpf"] {
            control(&super::tcpconn(mode));
        }
    }

    /// The checks of the "closed" mode are real: without --tcp-close (here: without ferry) the
    /// connections are open and the workload must fail.
    #[test]
    fn tcpconn_closed_fails_without_ferry() {
        let mut run = Run::start(&super::tcpconn("closed"));
        run.go();
        let status = run.wait_child_exit();
        let result = run.result();
        if status.success() || !result.starts_with("FAIL: C: still has a peer") {
            run.fail(&format!("open connections passed the closed-socket checks: {result:?}"));
        }
    }

    /// Without ferry: the same requests as `prefork_server`, then go.
    #[test]
    fn prefork() {
        let mut run = Run::start(&super::prefork());
        let mut server = Server::new(&run);
        server.round(&run, 1);
        server.round(&run, 2);
        run.go();
        let status = run.wait_child_exit();
        run.expect_pass(status, "the prefork master");
    }
}

/// Listeners (v4 and v6, options, backlog, O_NONBLOCK), UDP bound and connected, bare sockets:
/// the restored process finds every address and option as it was, and every socket works.
#[test]
fn sockets_cycle() {
    cycle(&inet());
}

/// `dump -R` leaves every socket in place and working.
#[test]
fn sockets_leave_running() {
    let mut run = Run::start(&inet());
    run.dump_ok(&["-R"]);
    run.expect_running_untraced("after dump -R");
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload after dump -R");
}

#[test]
fn established_connection_refused() {
    refused_then_intact(tcpconn("intact"), &["ESTABLISHED", "--tcp-close", "127.0.0.1:"]);
}

#[test]
fn accept_queue_refused() {
    refused_then_intact(tcpconn("queued"), &["LISTEN", "accept queue", "--tcp-close"]);
}

#[test]
fn udp_queue_refused() {
    refused_then_intact(tcpconn("udpqueued"), &["UDPv4", "datagrams waiting"]);
}

/// Classic BPF filters on a UDP socket (locked) and on a unix socket come back unchanged and
/// still filter; an eBPF filter, which cannot be read back, is refused.
#[test]
fn socket_filters_kept() {
    cycle(&tcpconn("filter"));
}

#[test]
fn ebpf_socket_filter_refused() {
    refused_then_intact(tcpconn("ebpf"), &["UDPv4", "eBPF socket filter"]);
}

/// With --tcp-close: both ends of an established connection and a connection waiting to be
/// accepted come back closed (ENOTCONN, EPIPE, POLLHUP), and the listener serves new ones.
#[test]
fn tcp_close_restores_connections_closed() {
    let mut run = Run::start(&tcpconn("closed"));
    run.dump_ok(&["--tcp-close"]);
    run.reap_dumped();
    run.restore_and_verify("ferry restore");
}

/// Restoring while the port is taken fails, naming the address, and leaves no process.
#[test]
fn port_taken_at_restore() {
    let mut run = Run::start(&prefork());
    let port = Server::new(&run).port;
    run.dump_ok(&[]);
    run.reap_dumped();
    wait_image_pids_gone(&run.img());
    let squatter = std::net::TcpListener::bind(("127.0.0.1", port)).expect("take the port");
    let args = vec!["restore".to_string(), "-D".to_string(), path_str(&run.img())];
    let res = run.ferry("restore-taken", &args, Duration::from_secs(60));
    if res.status.success() {
        run.fail("the restore succeeded although the port was taken");
    }
    let want = format!("127.0.0.1:{port}");
    if !res.stderr.contains(&want) || !res.stderr.contains("in use") || res.stderr_lines().len() != 1 {
        run.fail(&format!("the error does not name {want} as in use, in one line: {:?}", res.stderr));
    }
    if pid_alive(run.pid) {
        run.fail("a refused restore left a process behind");
    }
    drop(squatter);
    let pidfile = run.spawn_restore("restore", &run.img(), &[]);
    run.wait_pidfile(&pidfile);
    let mut server = Server::new(&run);
    server.round(&run, 1);
    run.go();
    let status = run.wait_restore_exit();
    run.expect_pass(status, "the prefork master");
}

/// The pre-forking server: two rounds of requests (each round keeps all three workers busy
/// at once), dump of the whole tree while idle, restore, two more rounds: every worker answers
/// with its old pid and its request counter going on from where it was.
#[test]
fn prefork_server() {
    let mut run = Run::start(&prefork());
    let mut server = Server::new(&run);
    server.round(&run, 1);
    server.round(&run, 2);
    run.dump_ok(&[]);
    run.reap_dumped();
    let n = ferry_image::ImageReader::open(&run.img()).expect("open image").inventory().pids.len();
    if n != 4 {
        run.fail(&format!("the image holds {n} processes, expected the master and 3 workers"));
    }
    wait_image_pids_gone(&run.img());
    let pidfile = run.spawn_restore("restore", &run.img(), &[]);
    run.wait_pidfile(&pidfile);
    server.round(&run, 3);
    server.round(&run, 4);
    run.go();
    let status = run.wait_restore_exit();
    run.expect_pass(status, "the restored prefork master");
}

/// The prefork workload seen from outside: its port, its workers and what they answered.
struct Server {
    port: u16,
    workers: Vec<i32>,
    /// worker index -> requests it has served so far
    counts: HashMap<u32, u64>,
    requests: u32,
}

impl Server {
    fn new(run: &Run) -> Server {
        let port = fs::read_to_string(run.w.join("port")).unwrap_or_default().trim().parse().unwrap_or(0);
        let workers: Vec<i32> = fs::read_to_string(run.w.join("workers"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if port == 0 || workers.len() != 3 {
            run.fail(&format!("no port ({port}) or not 3 workers ({workers:?})"));
        }
        Server { port, workers, counts: HashMap::new(), requests: 0 }
    }

    /// Open three connections at once (each worker takes one and waits for its line), then
    /// send a line on each: all three workers must answer, each with its counter at `n`.
    fn round(&mut self, run: &Run, n: u64) {
        let mut conns = Vec::new();
        for _ in 0..3 {
            match TcpStream::connect(("127.0.0.1", self.port)) {
                Ok(c) => conns.push(c),
                Err(e) => run.fail(&format!("cannot connect to 127.0.0.1:{}: {e}", self.port)),
            }
        }
        // Let every worker take a connection before any is answered.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.workers.iter().all(|&w| in_read(w)) {
            if Instant::now() > deadline {
                run.fail("the three workers did not each take a connection");
            }
            sleep(Duration::from_millis(5));
        }
        let mut seen = Vec::new();
        for mut c in conns {
            self.requests += 1;
            let line = format!("request {}", self.requests);
            c.set_read_timeout(Some(Duration::from_secs(10))).expect("set timeout");
            let mut answer = String::new();
            if let Err(e) = c.write_all(format!("{line}\n").as_bytes()).and_then(|_| c.read_to_string(&mut answer)) {
                run.fail(&format!("{line}: no answer: {e}"));
            }
            // "worker I pid P count N: LINE"
            let parsed = (|| {
                let rest = answer.strip_prefix("worker ")?;
                let (idx, rest) = rest.split_once(" pid ")?;
                let (pid, rest) = rest.split_once(" count ")?;
                let (count, echo) = rest.split_once(": ")?;
                Some((idx.parse::<u32>().ok()?, pid.parse::<i32>().ok()?, count.parse::<u64>().ok()?, echo.trim_end()))
            })();
            let Some((idx, pid, count, echo)) = parsed else { run.fail(&format!("{line}: bad answer {answer:?}")) };
            if echo != line {
                run.fail(&format!("{line}: the answer echoes {echo:?}"));
            }
            if self.workers.get(idx as usize) != Some(&pid) {
                run.fail(&format!("{line}: answered by worker {idx} with pid {pid}, workers are {:?}", self.workers));
            }
            let prev = self.counts.insert(idx, count).unwrap_or(0);
            if count != prev + 1 || count != n {
                run.fail(&format!("{line}: worker {idx} says count {count}, after {prev} (round {n})"));
            }
            seen.push(idx);
        }
        seen.sort_unstable();
        if seen != [0, 1, 2] {
            run.fail(&format!("round {n} was not served by the three workers: {seen:?}"));
        }
    }
}

/// Whether `pid` sits in read(2) (a prefork worker that took a connection).
fn in_read(pid: i32) -> bool {
    let text = fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
    text.split_whitespace().next() == Some("0")
}

const NGINX: &str = "/usr/sbin/nginx";

/// A private nginx instance in a work dir: its config (own port, own pid and log files), a
/// static file to serve, and the nginx process started with every fd above 2 closed.
struct Nginx {
    w: WorkDir,
    port: u16,
    child: Option<std::process::Child>,
    pid: i32,
}

impl Nginx {
    fn start(label: &str, master_process: bool) -> Nginx {
        need(NGINX, "nginx");
        let w = WorkDir::new(label);
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let root = w.join("html");
        fs::create_dir_all(&root).expect("html dir");
        fs::write(root.join("index.html"), format!("served by ferry's nginx on port {port}\n")).expect("index");
        let conf = format!(
            "daemon off;\nmaster_process {};\nworker_processes 2;\npid {};\nerror_log {} info;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; server {{ listen 127.0.0.1:{port}; root {}; }} }}\n",
            if master_process { "on" } else { "off" },
            path_str(&w.join("nginx.pid")),
            path_str(&w.join("error.log")),
            path_str(&root),
        );
        fs::write(w.join("nginx.conf"), conf).expect("nginx.conf");
        let child = workload_command(&ferry_workloads::path("closefds"))
            .args([NGINX, "-p", &path_str(&w.path), "-e", &path_str(&w.join("error.log"))])
            .args(["-c", &path_str(&w.join("nginx.conf"))])
            .stdin(std::process::Stdio::null())
            .stdout(fs::File::create(w.join("out.log")).expect("out.log"))
            .stderr(fs::File::create(w.join("err.log")).expect("err.log"))
            .spawn()
            .expect("start nginx");
        let pid = child.id() as i32;
        let n = Nginx { w, port, child: Some(child), pid };
        let deadline = Instant::now() + Duration::from_secs(20);
        while n.get("/index.html").is_err() {
            assert!(Instant::now() < deadline, "nginx does not answer: {}", n.logs());
            sleep(Duration::from_millis(20));
        }
        if master_process {
            let deadline = Instant::now() + Duration::from_secs(20);
            while fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .count()
                < 2
            {
                assert!(Instant::now() < deadline, "nginx did not start its 2 workers: {}", n.logs());
                sleep(Duration::from_millis(20));
            }
        }
        n
    }

    fn logs(&self) -> String {
        format!(
            "error.log: {}\nerr.log: {}",
            read_tail(&self.w.join("error.log"), 3000),
            read_tail(&self.w.join("err.log"), 3000)
        )
    }

    /// GET `path` over HTTP/1.0: the body of a 200 answer.
    fn get(&self, path: &str) -> Result<String, String> {
        let mut c = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
        c.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).map_err(|e| e.to_string())?;
        let mut answer = String::new();
        c.read_to_string(&mut answer).map_err(|e| e.to_string())?;
        match answer.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
            _ => Err(format!("unexpected answer {answer:?}")),
        }
    }

    /// Dump the nginx tree (it is killed), wait for its pids to be free, restore it with ferry
    /// as its parent, and check that it serves the old file and one created after the restore.
    fn cycle(&mut self) {
        let before = self.get("/index.html").unwrap_or_else(|e| panic!("before the dump: {e}"));
        let img = self.w.join("img");
        let out = std::process::Command::new(ferry_bin())
            .args(["dump", "-t", &self.pid.to_string(), "-D", &path_str(&img)])
            .output()
            .expect("run ferry dump");
        assert!(out.status.success(), "dump of nginx failed: {}", String::from_utf8_lossy(&out.stderr));
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        wait_image_pids_gone(&img);
        let mut restore = std::process::Command::new(ferry_bin())
            .args(["restore", "-D", &path_str(&img)])
            .stdin(std::process::Stdio::null())
            .stderr(fs::File::create(self.w.join("restore.err")).expect("restore.err"))
            .spawn()
            .expect("ferry restore");
        let deadline = Instant::now() + Duration::from_secs(30);
        let after = loop {
            match self.get("/index.html") {
                Ok(body) => break body,
                Err(e) => {
                    if let Ok(Some(st)) = restore.try_wait() {
                        panic!(
                            "ferry restore ended ({}) before nginx answered: {e}\n{}",
                            describe(st),
                            self.restore_log()
                        );
                    }
                    assert!(
                        Instant::now() < deadline,
                        "the restored nginx does not answer: {e}\n{}",
                        self.restore_log()
                    );
                    sleep(Duration::from_millis(20));
                }
            }
        };
        assert_eq!(after, before, "the restored nginx serves something else");
        fs::write(self.w.join("html/new.html"), "written after the restore\n").expect("new file");
        for _ in 0..10 {
            assert_eq!(self.get("/new.html").as_deref(), Ok("written after the restore\n"), "{}", self.logs());
        }
        // A graceful stop: nginx exits 0, and so does ferry restore, its parent.
        send_signal(self.pid, "QUIT").expect("stop nginx");
        let st = wait_timeout(&mut restore, Duration::from_secs(30)).expect("the restored nginx did not stop");
        assert!(st.success(), "the restored nginx {} on SIGQUIT\n{}", describe(st), self.logs());
    }

    fn restore_log(&self) -> String {
        format!("restore.err: {}\n{}", read_tail(&self.w.join("restore.err"), 3000), self.logs())
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The master with its workers (original or restored), collected before any is killed.
        kill_tree(self.pid);
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Debian's nginx as one process (master_process off): its listener, epoll and eventfd come
/// back, and it serves static files over HTTP after the restore.
#[test]
fn nginx_single_process() {
    let mut n = Nginx::start("nginx1", false);
    n.cycle();
}

/// Debian's nginx with a master and two workers. The master talks to each worker over a unix
/// socketpair (its "channel"), which ferry cannot save yet: the dump is refused with
/// "fd N: socket [INO] is not supported yet". Runs once unix sockets are supported.
#[test]
fn nginx_master_workers() {
    let mut n = Nginx::start("nginx2", true);
    n.cycle();
}

/// `dump --tcp-established`: connections come back with TCP_REPAIR. The test itself holds one
/// end of a connection (ping/pong before, a "ping2" unread at the checkpoint, a "ping3" sent
/// while the process does not exist — the network lock drops it instead of letting the kernel
/// answer with a reset, and it is retransmitted to the restored socket — then more: the same
/// connection, no error); the workload checks a connection with both ends inside it whose
/// queues were full in both directions: every byte arrives, in order.
#[test]
fn tcp_established_connections_survive() {
    tcpkeep(true);
}

/// The same without ferry: the workload's checks pass on an untouched process.
#[test]
fn tcp_established_control() {
    tcpkeep(false);
}

fn tcpkeep(checkpoint: bool) {
    if checkpoint {
        // (ferry runs nft for the network lock of --tcp-established)
        need("nft", "nftables");
    }
    use std::io::{Read, Write};
    let mut run = Run::start(&Spec::c("tcpkeep").ready_file("port"));
    let port: u16 = std::fs::read_to_string(run.w.join("port")).expect("port").trim().parse().expect("port number");
    let mut x = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the workload");
    x.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut b = [0u8; 5];
    x.write_all(b"ping1").expect("ping1");
    x.read_exact(&mut b).expect("pong1");
    assert_eq!(&b, b"pong1");
    run.wait_ready();
    x.write_all(b"ping2").expect("ping2");
    std::thread::sleep(Duration::from_millis(100));
    if checkpoint {
        run.dump_ok(&["--tcp-established"]);
        run.reap_dumped();
        // No socket has the connection now: this must not be answered with a reset.
        x.write_all(b"ping3").expect("ping3");
        std::thread::sleep(Duration::from_millis(300));
        let pidfile = run.spawn_restore("restore", &run.img(), &[]);
        run.wait_pidfile(&pidfile);
    } else {
        x.write_all(b"ping3").expect("ping3");
    }
    run.go();
    if let Err(e) = x.read_exact(&mut b) {
        run.fail(&format!("the test's connection after restore: {e}"));
    }
    assert_eq!(&b, b"pong2");
    x.read_exact(&mut b).expect("pong3");
    assert_eq!(&b, b"pong3");
    let status = if checkpoint { run.wait_restore_exit() } else { run.wait_child_exit() };
    run.expect_pass(status, "tcpkeep");
}

/// The pattern of `tcpstream`: byte `off` of the stream salted `salt`.
fn stream_byte(off: u64, salt: u64) -> u8 {
    let w = (off >> 3).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt;
    (w >> (8 * (off & 7))) as u8
}

const SALT_TO_TEST: u64 = 0x5151_a5a5_c3c3_e7e7;
const SALT_TO_WORKLOAD: u64 = 0x0f1e_2d3c_4b5a_6978;

/// One dump/restore of `tcpstream pair`: both ends of a connection in the process stream
/// to each other without pause, through the dump (which freezes them with both directions
/// in flight) and 100 MiB more each way after the restore; the workload checks every byte
/// at its offset and the byte counts of both directions.
fn tcpstream_pair_once(mode: &str, mb: &str) {
    let mut run = Run::start(&Spec::c("tcpstream").args(&[mode, mb]).ready_timeout(Duration::from_secs(60)));
    run.dump_ok(&["--tcp-established"]);
    run.reap_dumped();
    wait_image_pids_gone(&run.img());
    run.restore_and_verify("tcpstream");
}

/// One dump/restore of `tcpstream peer`: the test is the peer, outside the tree, and keeps
/// sending while the process is dumped, gone and restored (the network lock drops its
/// packets; they are retransmitted to the restored socket). Both sides check every byte at
/// its offset; the byte counts of each side must match what the other sent.
fn tcpstream_peer_once(mb: u64) {
    let mut run = Run::start(
        &Spec::c("tcpstream")
            .args(&["peer", &mb.to_string()])
            .ready_file("port")
            .ready_timeout(Duration::from_secs(60)),
    );
    let port: u16 = fs::read_to_string(run.w.join("port")).expect("port").trim().parse().expect("port number");
    let x = TcpStream::connect(("127.0.0.1", port)).expect("connect to the workload");
    let peer = PeerStream::start(x);
    run.wait_ready();
    run.dump_ok(&["--tcp-established"]);
    run.reap_dumped();
    // The test keeps sending into the locked connection while no process has it.
    sleep(Duration::from_millis(200));
    let pidfile = run.spawn_restore("restore", &run.img(), &[]);
    run.wait_pidfile(&pidfile);
    run.go();
    peer.send_more(mb);
    let status = run.wait_restore_exit();
    let (test_sent, test_received) = peer.join().unwrap_or_else(|e| run.fail(&e));
    run.expect_pass(status, "tcpstream peer");
    let counts = fs::read_to_string(run.w.join("counts")).unwrap_or_default();
    let want = format!("sent {test_received} received {test_sent}");
    if counts.trim() != want {
        run.fail(&format!("the workload says {:?}, the test {want:?}", counts.trim()));
    }
}

/// The test's side of `tcpstream peer`: one thread streams the pattern to the workload (until
/// told how much more after go), one reads and checks what the workload streams.
pub struct PeerStream {
    stop: std::sync::Arc<std::sync::atomic::AtomicU64>,
    sent: std::sync::Arc<std::sync::atomic::AtomicU64>,
    writer: std::thread::JoinHandle<Result<u64, String>>,
    reader: std::thread::JoinHandle<Result<u64, String>>,
}

impl PeerStream {
    pub fn start(x: TcpStream) -> PeerStream {
        use std::net::Shutdown;
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::Arc;
        x.set_read_timeout(Some(Duration::from_secs(120))).expect("timeout");
        x.set_write_timeout(Some(Duration::from_secs(120))).expect("timeout");
        let stop = Arc::new(AtomicU64::new(u64::MAX));
        let sent = Arc::new(AtomicU64::new(0));
        let writer = {
            let (mut x, stop, sent) = (x.try_clone().expect("clone"), stop.clone(), sent.clone());
            std::thread::spawn(move || -> Result<u64, String> {
                let mut buf = vec![0u8; 64 * 1024];
                let mut off = 0u64;
                loop {
                    let limit = stop.load(Ordering::SeqCst);
                    if off >= limit {
                        break;
                    }
                    let len = (limit - off).min(buf.len() as u64) as usize;
                    for (i, b) in buf[..len].iter_mut().enumerate() {
                        *b = stream_byte(off + i as u64, SALT_TO_WORKLOAD);
                    }
                    let n = x.write(&buf[..len]).map_err(|e| format!("test: write after {off} bytes: {e}"))?;
                    off += n as u64;
                    sent.store(off, Ordering::SeqCst);
                }
                x.shutdown(Shutdown::Write).map_err(|e| format!("test: shutdown: {e}"))?;
                Ok(off)
            })
        };
        let reader = {
            let mut x = x.try_clone().expect("clone");
            std::thread::spawn(move || -> Result<u64, String> {
                let mut buf = vec![0u8; 256 * 1024];
                let mut off = 0u64;
                loop {
                    let n = x.read(&mut buf).map_err(|e| format!("test: read after {off} bytes: {e}"))?;
                    if n == 0 {
                        return Ok(off);
                    }
                    for (i, &b) in buf[..n].iter().enumerate() {
                        let want = stream_byte(off + i as u64, SALT_TO_TEST);
                        if b != want {
                            return Err(format!(
                            "test: received byte {} is {b:#x}, want {want:#x} (a byte lost or duplicated before it)",
                            off + i as u64
                        ));
                        }
                    }
                    off += n as u64;
                }
            })
        };
        PeerStream { stop, sent, writer, reader }
    }

    /// After go: send `mb` MiB more, then shut the writing side.
    pub fn send_more(&self, mb: u64) {
        use std::sync::atomic::Ordering;
        self.stop.store(self.sent.load(Ordering::SeqCst) + mb * 1024 * 1024, Ordering::SeqCst);
    }

    /// (bytes sent, bytes received and checked), or what went wrong.
    pub fn join(self) -> Result<(u64, u64), String> {
        let sent = self.writer.join().map_err(|_| "writer thread panicked".to_string())??;
        let received = self.reader.join().map_err(|_| "reader thread panicked".to_string())??;
        Ok((sent, received))
    }
}

/// `--tcp-established` under continuous streams in both directions, both ends in the tree:
/// no byte lost or duplicated.
#[test]
fn tcp_stream_both_ends_inside() {
    tcpstream_pair_once("pair", "100");
}

/// The same with blocking 1 MiB writes and reads in four processes sharing the two ends (the
/// checkpoint finds writers inside a write that copied part of its buffer).
#[test]
fn tcp_stream_blocking_processes() {
    tcpstream_pair_once("procs", "100");
}

/// The same with the peer outside the tree (the test), which keeps sending throughout.
#[test]
fn tcp_stream_peer_outside() {
    tcpstream_peer_once(100);
}

/// 20 dump/restore cycles of each of the three streams above (at least 100 MiB each way per
/// cycle). Long: `cargo test --release -p ferry --test e2e -- --ignored tcp_stream_20_times`.
#[test]
#[ignore]
fn tcp_stream_20_times() {
    for i in 0..20 {
        eprintln!("tcp_stream_20_times: cycle {}", i + 1);
        tcpstream_pair_once("pair", "100");
        tcpstream_pair_once("procs", "100");
        tcpstream_peer_once(100);
    }
}

fn sockopts(mode: &str) -> Spec {
    Spec::c("sockopts").args(&[mode])
}

mod control_sockopts {
    use super::*;

    #[test]
    fn sockopts() {
        for mode in ["conn", "reuseport", "udp", "udpcorked", "forkorder"] {
            control(&super::sockopts(mode));
        }
    }

    /// The stream checks without ferry (both ends inside, plain and with blocking processes).
    #[test]
    fn tcpstream() {
        for mode in ["pair", "procs"] {
            control(&Spec::c("tcpstream").args(&[mode, "100"]));
        }
    }
}

/// Every option set on an established and on an accepted connection (SO_REUSEADDR,
/// SO_KEEPALIVE, TCP_NODELAY, buffer sizes, IP_TOS, TCP_KEEP*, SO_LINGER, ...) reads back
/// the same after a `--tcp-established` restore.
#[test]
fn tcp_established_keeps_socket_options() {
    let mut run = Run::start(&sockopts("conn"));
    run.dump_ok(&["--tcp-established"]);
    run.reap_dumped();
    run.restore_and_verify("sockopts conn");
}

/// Two listeners with SO_REUSEPORT on one port come back side by side and both accept.
#[test]
fn reuseport_listeners_side_by_side() {
    cycle(&sockopts("reuseport"));
}

/// A corked UDP socket (nothing pending) stays corked; UDP sockets shut down for writing or
/// for reading stay so.
#[test]
fn udp_cork_and_shutdown_kept() {
    cycle(&sockopts("udp"));
}

/// A datagram pending on a corked UDP socket cannot be put back as it was: refused.
#[test]
fn udp_corked_data_refused() {
    refused_then_intact(sockopts("udpcorked"), &["UDPv4", "UDP_CORK"]);
}

/// `--tcp-close` with the peer outside the tree: the server's accepted connection comes back
/// closed, the client's end is closed too, and the listener serves new connections.
#[test]
fn tcp_close_server_connection() {
    let mut run = Run::start(&sockopts("server").ready_file("port"));
    let port: u16 = fs::read_to_string(run.w.join("port")).expect("port").trim().parse().expect("port number");
    let mut x = TcpStream::connect(("127.0.0.1", port)).expect("connect to the workload");
    x.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let mut b = [0u8; 2];
    x.read_exact(&mut b).expect("hi");
    run.wait_ready();
    run.dump_ok(&["--tcp-close"]);
    run.reap_dumped();
    let mut rest = Vec::new();
    match x.read_to_end(&mut rest) {
        Ok(_) if rest.is_empty() => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => run.fail(&format!("the client's end is not closed after the dump: {other:?} {rest:?}")),
    }
    run.restore_and_verify("sockopts server");
}

/// A listener in a child and an established connection accepted from it in the parent
/// (`--tcp-established`): both come back, whatever the order the processes are restored in.
#[test]
fn tcp_established_with_listener_in_another_process() {
    let mut run = Run::start(&sockopts("forkorder"));
    run.dump_ok(&["--tcp-established"]);
    run.reap_dumped();
    wait_image_pids_gone(&run.img());
    run.restore_and_verify("sockopts forkorder");
}

/// An nftables table that drops every TCP segment sent from `port` on this node (both
/// families), removed when dropped (also when the test fails). Its name holds the test's pid
/// and the port, so that tests running at the same time do not meet.
struct DropFrom {
    table: String,
}

impl DropFrom {
    fn port(port: u16) -> DropFrom {
        DropFrom::rule(port, &format!("tcp sport {port}"))
    }

    /// Drop what matches `what` (an nft expression) on output.
    fn rule(port: u16, what: &str) -> DropFrom {
        let table = format!("ferry_test_fin_{}_{port}", std::process::id());
        let script = format!(
            "table inet {table} {{\n chain out {{ type filter hook output priority raw; policy accept; {what} drop; }}\n}}\n"
        );
        nft_script(&script);
        DropFrom { table }
    }
}

impl Drop for DropFrom {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft").args(["delete", "table", "inet", &self.table]).status();
    }
}

fn nft_script(script: &str) {
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("run nft");
    child.stdin.take().expect("nft stdin").write_all(script.as_bytes()).expect("write to nft");
    assert!(child.wait().expect("wait for nft").success(), "nft failed on {script}");
}

/// How `dump_restore_go` runs the workload.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Without ferry.
    Control,
    /// Dumped and restored on this node (the dump's network lock in place until the restore).
    Checkpoint,
    /// The dump's network lock removed before the restore, as on another node (a migration)
    /// or in a new network namespace: nothing holds back what the restored sockets send.
    NoLock,
}

/// The nftables table of the network lock an image names (`ferry_lock_*`, kept by the dump).
fn image_lock(img: &std::path::Path) -> Option<String> {
    for e in fs::read_dir(img).ok()?.flatten() {
        let data = fs::read(e.path()).unwrap_or_default();
        let pat = b"ferry_lock_";
        if let Some(at) = data.windows(pat.len()).position(|w| w == pat) {
            let name: Vec<u8> =
                data[at..].iter().copied().take_while(|b| b.is_ascii_alphanumeric() || *b == b'_').collect();
            return Some(String::from_utf8_lossy(&name).into_owned());
        }
    }
    None
}

/// With a checkpoint: dump with `--tcp-established`, stop dropping (the segments lost so far
/// are sent again by the restored sockets), restore; else stop dropping. Then go.
/// `NoLock`: the lock goes for the connections inside the tree only; what the test's own
/// sockets (from the `outside` ports) send is dropped until the restore is done, as the lock
/// would (else a retransmission meets the port without its socket and is reset), but for the
/// peer's FIN ferry gives back (marked 0xc114, as the lock lets it through).
fn dump_restore_go(run: &mut Run, dropping: DropFrom, mode: Mode, outside: &[u16]) {
    let checkpoint = mode != Mode::Control;
    if checkpoint {
        run.dump_ok(&["--tcp-established"]);
        run.reap_dumped();
        drop(dropping);
        let mut silenced = None;
        if mode == Mode::NoLock {
            if let Some(first) = outside.first() {
                let ports: Vec<String> = outside.iter().map(|p| p.to_string()).collect();
                silenced =
                    Some(DropFrom::rule(*first, &format!("meta mark != 0xc114 tcp sport {{ {} }}", ports.join(", "))));
            }
            let Some(lock) = image_lock(&run.img()) else { run.fail("the image names no network lock") };
            let st = std::process::Command::new("nft").args(["delete", "table", "inet", &lock]).status();
            if !st.is_ok_and(|s| s.success()) {
                run.fail(&format!("cannot delete the network lock {lock}"));
            }
        }
        let pidfile = run.spawn_restore("restore", &run.img(), &[]);
        run.wait_pidfile(&pidfile);
        drop(silenced);
    } else {
        drop(dropping);
    }
    run.go();
}

/// The workload's (or the restored tree's) exit: it must report its checks passed.
fn wait_pass(run: &mut Run, mode: Mode, what: &str) {
    let status = if mode == Mode::Control { run.wait_child_exit() } else { run.wait_restore_exit() };
    run.expect_pass(status, what);
}

/// The test's side of `tcpfin`: `TX` (the peer of A3, LAST_ACK) and `TY` (the peer of A4,
/// CLOSING) read end of file only once the workload's sockets are back, with no reset.
fn tcpfin(family: &str, mode: Mode) {
    need("nft", "nftables");
    let mut run = Run::start(&Spec::c("tcpfin").args(&[family]).ready_file("port"));
    let port: u16 = fs::read_to_string(run.w.join("port")).expect("port").trim().parse().expect("port number");
    // (FAMILY m: the workload's IPv6 sockets speak IPv4, which the test's sockets use.)
    let host = if family == "6" { "[::1]" } else { "127.0.0.1" };
    let mut tx = TcpStream::connect(format!("{host}:{port}")).expect("connect TX");
    let mut ty = TcpStream::connect(format!("{host}:{port}")).expect("connect TY");
    run.wait_file("conns");
    let dropping = DropFrom::port(port);
    tx.shutdown(std::net::Shutdown::Write).expect("shut TX");
    fs::write(run.w.join("dropping"), "1\n").expect("write dropping");
    run.wait_file("shut4");
    ty.shutdown(std::net::Shutdown::Write).expect("shut TY");
    run.wait_ready();
    // Nothing reached TX and TY yet: their peers' FINs were lost.
    for (name, s) in [("TX", &tx), ("TY", &ty)] {
        s.set_nonblocking(true).expect("nonblocking");
        let mut b = [0u8; 4];
        match (&*s).read(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => run.fail(&format!("{name} before the checkpoint: {other:?}, want nothing to read")),
        }
        s.set_nonblocking(false).expect("blocking");
        s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    }
    let outside = [tx.local_addr().expect("TX address").port(), ty.local_addr().expect("TY address").port()];
    dump_restore_go(&mut run, dropping, mode, &outside);
    for (name, s) in [("TX", &mut tx), ("TY", &mut ty)] {
        let mut rest = Vec::new();
        match s.read_to_end(&mut rest) {
            Ok(0) => {}
            other => run.fail(&format!("{name}: {other:?} ({rest:?}), want end of file and no reset")),
        }
    }
    wait_pass(&mut run, mode, "tcpfin");
}

/// Without ferry: the workload and the test's side as in `tcp_closing_states_*`.
#[test]
fn tcp_closing_states_control() {
    tcpfin("4", Mode::Control);
    tcpfin("6", Mode::Control);
    tcpfin("m", Mode::Control);
}

/// LAST_ACK and CLOSING (both FINs sent, one not acknowledged yet), CLOSE_WAIT and
/// FIN_WAIT1, with both ends inside the tree and with the peer outside (the test), over IPv4
/// and IPv6, with `--tcp-established`: after restore the lost FINs and ACKs are sent again,
/// each peer reads end of file once, every socket reaches the state the kernel would have led
/// it to, and none is reset.
#[test]
fn tcp_closing_states_v4() {
    tcpfin("4", Mode::Checkpoint);
}

#[test]
fn tcp_closing_states_v6() {
    tcpfin("6", Mode::Checkpoint);
}

/// The same with IPv6 sockets speaking IPv4 (`::ffff:127.0.0.1`): the peer's FIN goes as IPv4.
#[test]
fn tcp_closing_states_v4_mapped() {
    tcpfin("m", Mode::Checkpoint);
}

/// The same restored where the dump's network lock is not (another node, a new network
/// namespace): a restored socket answers the peer's FIN given back to it, and the answer must
/// find its peer's socket connected already when the peer is in the tree too (A1 and A2 come
/// before C1 and C2), not a closed port whose reset would kill the connection.
#[test]
fn tcp_closing_states_without_lock() {
    tcpfin("4", Mode::NoLock);
}

/// The test's side of `tcpfin FAMILY syn`: a listener whose SYNs (and L's) are dropped until
/// the workload is dumped; after restore it accepts the workload's C3, reads "c3", answers
/// "t3".
fn tcpsyn(family: &str, mode: Mode) {
    need("nft", "nftables");
    let mut run = Run::start(&Spec::c("tcpfin").args(&[family, "syn"]).ready_file("port"));
    let port: u16 = fs::read_to_string(run.w.join("port")).expect("port").trim().parse().expect("port number");
    // (FAMILY m: the workload's IPv6 sockets speak IPv4, which the test's sockets use.)
    let host = if family == "6" { "[::1]" } else { "127.0.0.1" };
    let tl = std::net::TcpListener::bind(format!("{host}:0")).expect("bind the test's listener");
    let tport = tl.local_addr().expect("local address").port();
    fs::write(run.w.join("tport"), format!("{tport}\n")).expect("write tport");
    let dropping = DropFrom::rule(port, &format!("tcp dport {{ {port}, {tport} }}"));
    fs::write(run.w.join("dropping"), "1\n").expect("write dropping");
    run.wait_ready();
    dump_restore_go(&mut run, dropping, mode, &[]);
    tl.set_nonblocking(true).expect("nonblocking listener");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut conn = loop {
        match tl.accept() {
            Ok((c, _)) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                sleep(Duration::from_millis(20))
            }
            Err(e) => run.fail(&format!("the test's listener: no connection from C3 ({e})")),
        }
    };
    conn.set_nonblocking(false).expect("blocking");
    conn.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut b = [0u8; 2];
    if let Err(e) = conn.read_exact(&mut b) {
        run.fail(&format!("C3's bytes: {e}"));
    }
    if &b != b"c3" {
        run.fail(&format!("C3 sent {b:?}, want c3"));
    }
    conn.write_all(b"t3").expect("answer C3");
    wait_pass(&mut run, mode, "tcpfin syn");
}

/// Without ferry: the workload and the test's side as in `tcp_syn_sent_*`.
#[test]
fn tcp_syn_sent_control() {
    tcpsyn("4", Mode::Control);
    tcpsyn("6", Mode::Control);
    tcpsyn("m", Mode::Control);
}

/// Connections in SYN_SENT (a non-blocking connect, a child blocked in connect(), a connect to
/// the test outside the tree), whose SYNs were lost, come back with `--tcp-established` and
/// complete once the tree runs: the SYN goes out again with the saved initial sequence number.
#[test]
fn tcp_syn_sent_v4() {
    tcpsyn("4", Mode::Checkpoint);
}

#[test]
fn tcp_syn_sent_v6() {
    tcpsyn("6", Mode::Checkpoint);
}

/// The same with IPv6 sockets speaking IPv4 (`::ffff:127.0.0.1`).
#[test]
fn tcp_syn_sent_v4_mapped() {
    tcpsyn("m", Mode::Checkpoint);
}
