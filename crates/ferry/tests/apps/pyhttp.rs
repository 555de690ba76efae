//! python3's `http.server.ThreadingHTTPServer` (a thread per connection, HTTP/1.1 keep-alive)
//! with a ticking background thread: its clients keep their connections across the checkpoint,
//! each still served by its own thread, and the server's counters go on from where they were.

use super::*;

/// The server: GET /c<N> answers "conn=<N> n=<requests on that path> thread=<name>
/// threads=<live threads> ticks=<ticker's count> reuse=<SO_REUSEADDR of the connection, 1 as
/// inherited from the listener>"; GET /quit stops it (exit 0).
const SERVER: &str = r#"
import http.server, socket, sys, threading, time
hits, lock, ticks = {}, threading.Lock(), [0]
def tick():
    while True:
        time.sleep(0.01)
        ticks[0] += 1
threading.Thread(target=tick, name="ticker", daemon=True).start()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/quit":
            threading.Thread(target=srv.shutdown).start()
            body = b"bye"
        else:
            with lock:
                hits[self.path] = hits.get(self.path, 0) + 1
                n = hits[self.path]
            reuse = self.connection.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
            body = ("conn=%s n=%d thread=%s threads=%d ticks=%d reuse=%d" % (self.path[2:], n,
                    threading.current_thread().name, threading.active_count(), ticks[0], reuse)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
open("ready", "w").close()
srv.serve_forever()
"#;

const CONNECTIONS: usize = 4;

/// A field of an answer.
fn field<'a>(answer: &'a str, key: &str) -> &'a str {
    answer.split_whitespace().find_map(|f| f.strip_prefix(key)?.strip_prefix('=')).unwrap_or_default()
}

struct Py {
    port: u16,
    pid: i32,
    child: Option<Child>,
    conns: Vec<Http>,
    /// The last answer of each connection.
    last: Vec<String>,
    guard: ProcGuard,
    w: WorkDir,
}

impl Py {
    fn start(label: &str) -> Py {
        let python = need("python3", "python3");
        let w = WorkDir::new(label);
        fs::write(w.join("server.py"), SERVER).expect("server.py");
        let port = free_port();
        let child = start(&w, "python", &python, &[&path_str(&w.join("server.py")), &port.to_string()]);
        let pid = child.id() as i32;
        let guard = ProcGuard::new();
        guard.add(pid);
        wait_for("the server", Duration::from_secs(30), || w.join("ready").exists() || !pid_alive(pid));
        let conns = (0..CONNECTIONS).map(|_| Http::connect(("127.0.0.1", port))).collect();
        let mut py = Py { port, pid, child: Some(child), conns, last: vec![String::new(); CONNECTIONS], guard, w };
        py.round(1);
        py.round(2);
        py
    }

    fn log(&self) -> String {
        format!(
            "python.err: {}\nrestore.err: {}",
            read_tail(&self.w.join("python.err"), 3000),
            read_tail(&self.w.join("restore.err"), 3000)
        )
    }

    /// One request on each connection, the `n`th: the same thread serves it as before, the
    /// thread count is that of a server with its connections, the ticker goes on.
    fn round(&mut self, n: u32) {
        for i in 0..CONNECTIONS {
            let (status, body) = self.conns[i]
                .get(&format!("/c{i}"))
                .unwrap_or_else(|e| panic!("connection {i}, round {n}: {e}\n{}", self.log()));
            let body = String::from_utf8_lossy(&body).into_owned();
            assert!(status.starts_with("HTTP/1.1 200"), "connection {i}: {status}");
            assert_eq!(field(&body, "conn"), i.to_string(), "{body}");
            assert_eq!(field(&body, "n"), n.to_string(), "connection {i}: {body}");
            assert_eq!(field(&body, "reuse"), "1", "connection {i} lost SO_REUSEADDR: {body}");
            let prev = &self.last[i];
            if !prev.is_empty() {
                assert_eq!(field(&body, "thread"), field(prev, "thread"), "connection {i} has another thread: {body}");
                let (t0, t1): (u64, u64) =
                    (field(prev, "ticks").parse().unwrap_or(0), field(&body, "ticks").parse().unwrap_or(0));
                assert!(t1 >= t0, "the ticker went back: {prev} -> {body}");
            }
            if n > 1 && i + 1 == CONNECTIONS {
                // main, ticker, and one thread per connection
                assert_eq!(field(&body, "threads"), (2 + CONNECTIONS).to_string(), "{body}");
            }
            self.last[i] = body;
        }
    }

    fn quit(&mut self, parent: &mut Child) {
        let _ = Http::try_connect(("127.0.0.1", self.port)).map(|mut h| h.get("/quit"));
        // The connection threads end when their clients close.
        self.conns.clear();
        let st = wait_exit(parent, "the server", || self.log());
        assert!(st.success(), "the server {}\n{}", describe(st), self.log());
    }
}

/// Dump (--tcp-established), kill, restore: every connection is served on by its own thread,
/// the counters and the ticker go on, and the server stops cleanly.
#[test]
fn python_threading_http_server_continues() {
    let mut py = Py::start("pyhttp");
    let img = dump(&py.w, py.pid, "img", &["--tcp-established"]);
    reap_dumped(&mut py.child, &img);
    let mut restore = spawn_restore(&py.w, &img, "restore", &[]);
    py.round(3);
    let t3: u64 = field(&py.last[0], "ticks").parse().unwrap_or(0);
    sleep(Duration::from_millis(300));
    py.round(4);
    let t4: u64 = field(&py.last[0], "ticks").parse().unwrap_or(0);
    assert!(t4 > t3, "the restored ticker does not tick: {t3} then {t4}");
    py.quit(&mut restore);
    drop(py.guard);
}

/// `dump -R --tcp-established`: the server and its connections go on; the image, restored
/// after the server was killed, serves new connections with the counters of the dump.
#[test]
fn python_threading_http_server_leave_running_then_restore() {
    let mut py = Py::start("pyhttp-R");
    let img = dump(&py.w, py.pid, "img", &["-R", "--tcp-established"]);
    py.round(3);
    let mut child = py.child.take().expect("our child");
    let _ = child.kill();
    let _ = child.wait();
    py.conns.clear();
    wait_image_pids_gone(&img);
    let mut restore = spawn_restore(&py.w, &img, "restore", &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        if let Ok((_, body)) =
            Http::try_connect(("127.0.0.1", py.port)).map_err(|e| e.to_string()).and_then(|mut h| h.get("/c0"))
        {
            break String::from_utf8_lossy(&body).into_owned();
        }
        assert!(Instant::now() < deadline, "the restored server does not answer\n{}", py.log());
        sleep(Duration::from_millis(20));
    };
    assert_eq!(field(&answer, "n"), "3", "the restored counters are not those of the dump: {answer}");
    py.quit(&mut restore);
    drop(py.guard);
}
