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

struct Nginx {
    port: u16,
    pid: i32,
    child: Option<Child>,
    guard: ProcGuard,
    w: WorkDir,
}

impl Nginx {
    fn start(label: &str) -> Nginx {
        let nginx = need(NGINX, "nginx");
        let w = WorkDir::new(label);
        let port = free_port();
        let root = w.join("html");
        fs::create_dir_all(&root).expect("html dir");
        fs::write(root.join("index.html"), BODY).expect("index");
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes 2;\npid {};\nerror_log {} info;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; keepalive_requests 1000000; keepalive_timeout 120s;\n\
             server {{ listen 127.0.0.1:{port}; root {}; }} }}\n",
            path_str(&w.join("nginx.pid")),
            path_str(&w.join("error.log")),
            path_str(&root),
        );
        fs::write(w.join("nginx.conf"), conf).expect("nginx.conf");
        let (prefix, log, conf) = (path_str(&w.path), path_str(&w.join("error.log")), path_str(&w.join("nginx.conf")));
        let child = start(&w, "nginx", &nginx, &["-p", &prefix, "-e", &log, "-c", &conf]);
        let pid = child.id() as i32;
        let guard = ProcGuard::new();
        guard.add(pid);
        let n = Nginx { port, pid, child: Some(child), guard, w };
        wait_for("nginx's two workers", Duration::from_secs(20), || n.workers().len() == 2 || !pid_alive(pid));
        wait_for("nginx to answer", Duration::from_secs(20), || TcpStream::connect(("127.0.0.1", port)).is_ok());
        n
    }

    fn workers(&self) -> Vec<i32> {
        let children = fs::read_to_string(format!("/proc/{}/task/{}/children", self.pid, self.pid)).unwrap_or_default();
        children.split_whitespace().filter_map(|c| c.parse().ok()).collect()
    }

    fn log(&self) -> String {
        format!(
            "error.log: {}\nrestore.err: {}",
            read_tail(&self.w.join("error.log"), 3000),
            read_tail(&self.w.join("restore.err"), 3000)
        )
    }

    /// A new connection's GET of the index.
    fn fresh_get(&self) -> Result<(String, Vec<u8>), String> {
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
        let stop = Arc::new(AtomicBool::new(false));
        let mut counts = Vec::new();
        let mut threads = Vec::new();
        for i in 0..CONNECTIONS {
            let (stop, count) = (stop.clone(), Arc::new(AtomicU64::new(0)));
            counts.push(count.clone());
            let mut c = Http::connect(("127.0.0.1", port));
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
