//! nginx (Debian's) with a master and two workers, under a load of keep-alive connections that
//! send requests back to back through the checkpoint: no request fails, every connection goes on
//! after the restore, and the restored master still manages its workers (a reload forks new
//! ones, a graceful stop ends them all).

use super::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const NGINX: &str = "/usr/sbin/nginx";
const BODY: &str = "served by ferry's nginx\n";
const CONNECTIONS: usize = 8;

pub(super) struct Nginx {
    port: u16,
    pub(super) pid: i32,
    pub(super) child: Option<Child>,
    pub(super) guard: ProcGuard,
    pub(super) w: WorkDir,
}

/// nginx's configuration in W (a master, two workers, listening on `listen`, serving W/html,
/// its pid file and error log in W): its command line.
fn config(w: &WorkDir, listen: &str) -> Vec<String> {
    let root = w.join("html");
    fs::create_dir_all(&root).expect("html dir");
    fs::write(root.join("index.html"), BODY).expect("index");
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes 2;\npid {};\nerror_log {} info;\n\
         events {{ worker_connections 64; }}\n\
         http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 120s;\n\
         server {{ listen {listen}; root {}; }} }}\n",
        path_str(&w.join("nginx.pid")),
        path_str(&w.join("error.log")),
        path_str(&root),
    );
    fs::write(w.join("nginx.conf"), conf).expect("nginx.conf");
    let (prefix, log, conf) = (path_str(&w.path), path_str(&w.join("error.log")), path_str(&w.join("nginx.conf")));
    ["-p", &prefix, "-e", &log, "-c", &conf].map(String::from).to_vec()
}

impl Nginx {
    pub(super) fn start(label: &str) -> Nginx {
        let nginx = need(NGINX, "nginx");
        let w = WorkDir::new(label);
        let port = free_port();
        let args = config(&w, &format!("127.0.0.1:{port}"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = start(&w, "nginx", &nginx, &args);
        let pid = child.id() as i32;
        let guard = ProcGuard::new();
        guard.add(pid);
        let n = Nginx { port, pid, child: Some(child), guard, w };
        wait_for("nginx's two workers", Duration::from_secs(20), || n.workers().len() == 2 || !pid_alive(pid));
        wait_for("nginx to answer", Duration::from_secs(20), || TcpStream::connect(("127.0.0.1", port)).is_ok());
        n
    }

    fn workers(&self) -> Vec<i32> {
        children(self.pid)
    }

    pub(super) fn log(&self) -> String {
        format!(
            "error.log: {}\nrestore.err: {}",
            read_tail(&self.w.join("error.log"), 3000),
            read_tail(&self.w.join("restore.err"), 3000)
        )
    }

    /// A new connection's GET of the index.
    pub(super) fn fresh_get(&self) -> Result<(String, Vec<u8>), String> {
        Http::try_connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?.get("/index.html")
    }
}

/// Keep-alive connections, each in a thread sending GET after GET until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    counts: Vec<Arc<AtomicU64>>,
    threads: Vec<std::thread::JoinHandle<Result<(), String>>>,
}

impl Load {
    fn start(port: u16) -> Load {
        Load::start_with(|| Http::connect(("127.0.0.1", port)))
    }

    /// The connections made by `connect`.
    fn start_with(connect: impl Fn() -> Http) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut counts = Vec::new();
        let mut threads = Vec::new();
        for i in 0..CONNECTIONS {
            let (stop, count) = (stop.clone(), Arc::new(AtomicU64::new(0)));
            counts.push(count.clone());
            let mut c = connect();
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let n = count.load(Ordering::Relaxed);
                    let (status, body) = c
                        .get(&format!("/index.html?c={i}&n={n}"))
                        .map_err(|e| format!("connection {i}, request {n}: {e}"))?;
                    if !status.starts_with("HTTP/1.1 200") || body != BODY.as_bytes() {
                        return Err(format!(
                            "connection {i}, request {n}: {status} {:?}",
                            String::from_utf8_lossy(&body)
                        ));
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }));
        }
        let load = Load { stop, counts, threads };
        wait_for("every connection to be served", Duration::from_secs(20), || load.each().iter().all(|&n| n >= 10));
        load
    }

    fn each(&self) -> Vec<u64> {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }

    /// Wait until every connection has made `more` requests after now.
    fn expect_progress(&self, more: u64, what: &str, log: impl Fn() -> String) {
        let from = self.each();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.each().iter().zip(&from).any(|(n, f)| *n < f + more) {
            if self.threads.iter().any(|t| t.is_finished()) || Instant::now() > deadline {
                panic!("{what}: connections stopped at {:?} (from {from:?})\n{}", self.each(), log());
            }
            sleep(Duration::from_millis(20));
        }
    }

    fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        for (i, t) in self.threads.into_iter().enumerate() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("keep-alive load: {e}"),
                Err(_) => panic!("keep-alive load thread {i} panicked"),
            }
        }
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }
}

/// After the restore (or the dump -R): a reload (SIGHUP) forks two new workers that serve new
/// connections; a graceful stop (SIGQUIT) ends the tree with status 0.
fn reload_and_stop(n: &Nginx, parent: &mut Child) {
    let old = n.workers();
    send_signal(n.pid, "HUP").expect("reload nginx");
    wait_for("two new workers", Duration::from_secs(20), || {
        let now = n.workers();
        now.len() == 2 && now.iter().all(|p| !old.contains(p))
    });
    for _ in 0..20 {
        let (status, body) = n.fresh_get().unwrap_or_else(|e| panic!("after the reload: {e}\n{}", n.log()));
        assert!(status.starts_with("HTTP/1.1 200") && body == BODY.as_bytes(), "after the reload: {status}");
    }
    send_signal(n.pid, "QUIT").expect("stop nginx");
    let st = wait_exit(parent, "nginx", || n.log());
    assert!(st.success(), "nginx {} on SIGQUIT\n{}", describe(st), n.log());
}

/// Dump (--tcp-established) in the middle of the load, kill, restore: the eight connections of
/// the load go on without one failed request, the workers are the same processes, and the
/// restored master reloads and stops cleanly.
#[test]
fn nginx_keepalive_load_continues() {
    let mut n = Nginx::start("nginx-load");
    let workers = n.workers();
    let load = Load::start(n.port);
    let img = dump(&n.w, n.pid, "img", &["--tcp-established"]);
    reap_dumped(&mut n.child, &img);
    let before = load.each();
    let mut restore = spawn_restore(&n.w, &img, "restore", &[]);
    load.expect_progress(50, "after the restore", || n.log());
    assert_eq!(n.workers(), workers, "the restored master has other workers");
    let counts = load.finish();
    eprintln!("requests per connection: {before:?} at the restore, {counts:?} at the end");
    reload_and_stop(&n, &mut restore);
    drop(n.guard);
}

/// `dump -R --tcp-established` under the same load: not one request fails while the tree is
/// frozen and after; then the tree is killed, the image restored, and it serves new connections,
/// reloads and stops.
#[test]
fn nginx_leave_running_under_load_then_restore() {
    let mut n = Nginx::start("nginx-R");
    let load = Load::start(n.port);
    let img = dump(&n.w, n.pid, "img", &["-R", "--tcp-established"]);
    load.expect_progress(50, "after dump -R", || n.log());
    load.finish();
    let mut child = n.child.take().expect("nginx is our child");
    kill_tree(n.pid);
    let _ = child.wait();
    wait_image_pids_gone(&img);
    let mut restore = spawn_restore(&n.w, &img, "restore", &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while n.fresh_get().is_err() {
        assert!(Instant::now() < deadline, "the restored nginx does not answer\n{}", n.log());
        sleep(Duration::from_millis(20));
    }
    reload_and_stop(&n, &mut restore);
    drop(n.guard);
}

/// nginx moved live from node A to node B (`ferry migrate --pre-copy --tcp-established`) under
/// the keep-alive load of eight connections from B: not one request fails, every connection goes
/// on once the service address is on B, the master on B has the same two workers (pids in its
/// namespace), and it still manages them (a reload forks two new workers that serve new
/// connections).
#[test]
fn nginx_migrates_under_keepalive_load() {
    use super::migrate::{Move, ADDR};
    let nginx = need(NGINX, "nginx");
    let port = 8088;
    let mv = Move::start("nginx", &nginx, |w| config(w, &format!("{ADDR}:{port}")));
    let w = &mv.w;
    let log = || format!("error.log: {}\nserve: {}", read_tail(&w.join("error.log"), 3000), mv.serve_log());
    let http = || {
        let s = mv.nodes.connect_from_b(ADDR, port)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.set_nodelay(true)?;
        Ok::<Http, std::io::Error>(Http { r: BufReader::new(s) })
    };
    wait_for("nginx to answer from B", Duration::from_secs(30), || http().is_ok());
    // The master (the init's child) and its workers, as their namespace numbers them.
    let ns_pids = |init: i32| -> Vec<String> {
        let master = children(init);
        let mut all: Vec<i32> = master.iter().flat_map(|&m| children(m)).collect();
        all.sort_unstable();
        all.extend(master);
        all.iter()
            .map(|p| {
                let st = fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
                st.lines()
                    .find_map(|l| l.strip_prefix("NSpid:"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .last()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    };
    wait_for("nginx's two workers", Duration::from_secs(20), || ns_pids(mv.init).len() == 3);
    let before = ns_pids(mv.init);
    let load = Load::start_with(|| http().unwrap_or_else(|e| panic!("connect from B: {e}")));
    let remote = mv.migrate(&["--pre-copy"], &log);
    mv.move_address();
    load.expect_progress(50, "after the migration", log);
    let mut after = ns_pids(remote);
    after.sort_unstable();
    let mut want = before.clone();
    want.sort_unstable();
    assert_eq!(after, want, "the moved master and workers are not the same processes");
    let counts = load.finish();
    eprintln!("requests per connection after the move: {counts:?}");
    // The moved master still manages its workers.
    let master = children(remote)[0];
    let old = children(master);
    send_signal(master, "HUP").expect("reload nginx");
    wait_for("two new workers", Duration::from_secs(20), || {
        let now = children(master);
        now.len() == 2 && now.iter().all(|p| !old.contains(p))
    });
    for _ in 0..20 {
        let (status, body) = http()
            .map_err(|e| e.to_string())
            .and_then(|mut h| h.get("/index.html"))
            .unwrap_or_else(|e| panic!("after the reload: {e}\n{}", log()));
        assert!(status.starts_with("HTTP/1.1 200") && body == BODY.as_bytes(), "after the reload: {status}");
    }
}
