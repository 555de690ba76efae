//! Real programs moved live between two nodes (`crate::migrate`'s two network namespaces, on
//! one machine: one file system) with `ferry migrate --tcp-established`, each reached from node
//! B at the service address 10.231.1.1, which moves from A to B after the migration:
//!
//! * redis (`--pre-copy`, and `--post-copy`) while a client in B keeps incrementing a counter
//!   on one connection: the connection survives, no increment is lost or applied twice, the
//!   server on B is the same redis (run id) with all its data (`DEBUG DIGEST`; with
//!   pre-copy its jemalloc MAP_NORESERVE heaps were handed over in place), and its unix socket (the same
//!   path on both nodes: the source's socket file is taken over) reaches it;
//! * nginx, a master and two workers, under keep-alive load from B (`nginx.rs`);
//! * PostgreSQL, many processes and shared memory, with a client in B inside a transaction
//!   (`postgres.rs`).

use super::redis::{redis_args, REDIS};
use super::*;
use crate::migrate::{in_place_mib, keygen, migrate_init, run_ok, summary, Nodes, Server};

pub(super) const ADDR: &str = "10.231.1.1";
const REDIS_PORT: u16 = 6390;

/// A program started in node A in a pid namespace of its own (`ferry run --pidns -d`), to be
/// moved to node B, where `ferry serve` waits. Its service address is on A's lo, routed from B
/// through A until [`Move::move_address`]. Everything goes on drop, also when the test fails:
/// ferry serve, then every process of either node (the moved tree too), then the work dir.
pub(super) struct Move {
    server: Server,
    pub(super) nodes: Nodes,
    auth: PathBuf,
    /// The init of its pid namespace (host pid, in A).
    pub(super) init: i32,
    stray: Stray,
    pub(super) w: WorkDir,
}

impl Move {
    /// Start `program` with the arguments `args` gives for the work dir.
    pub(super) fn start(label: &str, program: &Path, args: impl FnOnce(&WorkDir) -> Vec<String>) -> Move {
        Move::start_under(label, &[], program, args)
    }

    /// The same, `ferry run` started by `wrapper` (a command that execs the rest, e.g.
    /// `unshare --ipc`).
    pub(super) fn start_under(
        label: &str,
        wrapper: &[&str],
        program: &Path,
        args: impl FnOnce(&WorkDir) -> Vec<String>,
    ) -> Move {
        need("nft", "nftables");
        let nodes = Nodes::tagged("realapps");
        let w = WorkDir::new(&format!("realapps-{label}"));
        let auth = w.join("auth");
        keygen(&auth);
        // ferry serve gets a stray fd from its caller: none of the trees it restores may hold it.
        let stray = Stray::new(&w);
        let under = stray.wrapper();
        let under: Vec<&str> = under.iter().map(String::as_str).collect();
        let server = Server::start_under(&nodes, &w, &auth, &[], &under);
        run_ok(Command::new("ip").args(["-n", &nodes.a, "addr", "add", &format!("{ADDR}/32"), "dev", "lo"]));
        run_ok(Command::new("ip").args(["-n", &nodes.b, "route", "add", &format!("{ADDR}/32"), "via", "10.231.0.1"]));
        let pidfile = w.join("init.pid");
        let st = nodes
            .ferry_under(false, wrapper)
            .args(["run", "--pidns", "-d", "--pidfile", &path_str(&pidfile), "--"])
            .arg(program)
            .args(args(&w))
            .current_dir(&w.path)
            .stdin(Stdio::null())
            .stdout(File::create(w.join("run.log")).expect("log"))
            .stderr(File::create(w.join("run.err")).expect("log"))
            .status()
            .expect("ferry run");
        assert!(st.success(), "ferry run: {}", read_tail(&w.join("run.err"), 2000));
        let init = fs::read_to_string(&pidfile).expect("pidfile").trim().parse().expect("pid");
        Move { server, nodes, auth, init, stray, w }
    }

    /// `ferry migrate -t INIT --to B --tcp-established EXTRA...`, which must succeed: the
    /// moved tree's host pid on B.
    pub(super) fn migrate(&self, extra: &[&str], log: &dyn Fn() -> String) -> i32 {
        let args: Vec<&str> = ["--tcp-established"].into_iter().chain(extra.iter().copied()).collect();
        let m = migrate_init(&self.nodes, self.init, &self.auth, &args);
        assert!(m.ok, "migration failed: {}\n{}\nserve: {}", m.stderr, log(), self.server.log());
        let (remote, downtime) = summary(&m);
        eprintln!(
            "{}: downtime {downtime} ms (load {})",
            extra.join(" "),
            fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
        );
        wait_for("the source to be gone", Duration::from_secs(20), || !pid_alive(self.init));
        let held = self.stray.holders(remote);
        assert!(held.is_empty(), "the moved tree holds ferry serve's inherited fd: {held:?}");
        remote
    }

    /// The service address moves from A to B.
    pub(super) fn move_address(&self) {
        let nodes = &self.nodes;
        run_ok(Command::new("ip").args(["-n", &nodes.a, "addr", "del", &format!("{ADDR}/32"), "dev", "lo"]));
        run_ok(Command::new("ip").args(["-n", &nodes.b, "route", "del", &format!("{ADDR}/32")]));
        run_ok(Command::new("ip").args(["-n", &nodes.b, "addr", "add", &format!("{ADDR}/32"), "dev", "lo"]));
    }

    pub(super) fn serve_log(&self) -> String {
        self.server.log()
    }

    /// Files left in the work dir by a takeover of socket files (there must be none).
    pub(super) fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for e in fs::read_dir(&self.w.path).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.contains(".ferry-") {
                left.push(name);
            }
        }
        left
    }
}

/// The client (in B): INCR on one connection until W/client-stop, each answer one more than
/// the last; then GET must equal the count; prints "count N" and, every 100, writes W/progress.
const CLIENT: &str = r#"
import os, socket, sys
w = sys.argv[1]
s = socket.create_connection(("10.231.1.1", 6390), timeout=60)
f = s.makefile("rb")
def cmd(*args):
    s.sendall(("*%d\r\n" % len(args) + "".join("$%d\r\n%s\r\n" % (len(a), a) for a in args)).encode())
    line = f.readline()
    if line.startswith(b"$"):
        n = int(line[1:])
        return None if n < 0 else f.read(n + 2)[:-2].decode()
    assert line[:1] in (b":", b"+"), line
    return line[1:].strip().decode()
n = 0
while not os.path.exists(w + "/client-stop"):
    got = int(cmd("INCR", "counter"))
    n += 1
    assert got == n, ("INCR answered", got, "expected", n)
    if n % 100 == 0:
        with open(w + "/progress.tmp", "w") as p:
            p.write(str(n))
        os.rename(w + "/progress.tmp", w + "/progress")
assert int(cmd("GET", "counter")) == n
print("count", n, flush=True)
"#;

fn progress(w: &WorkDir) -> u64 {
    fs::read_to_string(w.join("progress")).ok().and_then(|p| p.trim().parse().ok()).unwrap_or(0)
}

/// redis-cli in node A or B against the service address (or, `via` Some, the unix socket).
fn cli_via(nodes: &Nodes, in_b: bool, via: Option<&Path>, args: &[&str]) -> String {
    let cli = path_str(&need("redis-cli", "redis-tools"));
    let mut c = if in_b { nodes.in_b(&cli) } else { nodes.in_a(&cli) };
    match via {
        Some(sock) => c.arg("-s").arg(sock),
        None => c.args(["-h", ADDR, "-p", &REDIS_PORT.to_string()]),
    };
    let out = c.args(args).stdin(Stdio::null()).output().expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn cli(nodes: &Nodes, in_b: bool, args: &[&str]) -> String {
    cli_via(nodes, in_b, None, args)
}

fn info(nodes: &Nodes, in_b: bool, field: &str) -> String {
    info_via(nodes, in_b, None, field)
}

fn info_via(nodes: &Nodes, in_b: bool, via: Option<&Path>, field: &str) -> String {
    let text = cli_via(nodes, in_b, via, &["INFO", "everything"]);
    text.lines().find_map(|l| l.strip_prefix(&format!("{field}:"))).unwrap_or_default().trim().to_string()
}

#[test]
fn redis_migrates_pre_copy_with_a_client_writing() {
    migrate_redis("--pre-copy");
}

/// The same with post-copy: redis runs on B at once, its pages fetched on fault while the
/// client writes.
#[test]
fn redis_migrates_post_copy_with_a_client_writing() {
    migrate_redis("--post-copy");
}

fn migrate_redis(mode: &str) {
    let redis = need(REDIS, "redis-server");
    let python = need("python3", "python3");
    // (With its unix socket: the same path on both nodes; the source's file is taken over.)
    let mv = Move::start(&format!("redis{mode}"), &redis, |w| redis_args(w, ADDR, REDIS_PORT));
    let (nodes, w) = (&mv.nodes, &mv.w);
    let sock = w.join("redis.sock");
    let log = || format!("redis.log: {}\nserve: {}", read_tail(&w.join("redis.log"), 3000), mv.serve_log());
    wait_for("redis to answer", Duration::from_secs(30), || cli(nodes, false, &["PING"]) == "PONG");
    // ~40 MiB of data: something for the pre-copy rounds to move while the client writes.
    assert_eq!(cli(nodes, false, &["DEBUG", "POPULATE", "200000", "key", "100"]), "OK");
    let run_id = info(nodes, false, "run_id");
    assert_eq!(info_via(nodes, false, Some(&sock), "run_id"), run_id, "the unix socket does not reach redis");
    // (every key and value, to compare on B once the client's counter is gone again)
    let digest = cli(nodes, false, &["DEBUG", "DIGEST"]);
    fs::write(w.join("client.py"), CLIENT).expect("client.py");
    let mut client = nodes
        .in_b(&path_str(&python))
        .args([&path_str(&w.join("client.py")), &path_str(&w.path)])
        .stdin(Stdio::null())
        .stdout(File::create(w.join("client.out")).expect("log"))
        .stderr(File::create(w.join("client.err")).expect("log"))
        .spawn()
        .expect("start the client");
    wait_for("the client's first increments", Duration::from_secs(30), || progress(w) >= 200);
    mv.migrate(&[mode], &log);
    let at_move = progress(w);
    if mode == "--pre-copy" {
        // jemalloc's heaps (MAP_NORESERVE) were handed over in place, not put in the image
        let serve = || mv.serve_log();
        wait_for("the destination's timings", Duration::from_secs(20), || serve().contains("serve: pre-copy:"));
        for l in serve().lines().filter(|l| l.contains("pre-copied pages") || l.contains("serve: pre-copy:")) {
            eprintln!("{l}");
        }
        let in_place = in_place_mib(&serve());
        assert!(in_place >= 32, "{in_place} MiB handed over in place: {}", serve());
    }
    mv.move_address();
    wait_for("the client to go on on B", Duration::from_secs(60), || {
        progress(w) >= at_move + 500 || matches!(client.try_wait(), Ok(Some(_)))
    });
    File::create(w.join("client-stop")).expect("client-stop");
    let st = wait_timeout(&mut client, Duration::from_secs(60)).expect("the client hung");
    assert!(st.success(), "the client: {}\n{}", read_tail(&w.join("client.err"), 2000), log());
    let count = fs::read_to_string(w.join("client.out")).unwrap_or_default();
    eprintln!("client: {} ({at_move} at the move)", count.trim());
    assert_eq!(info(nodes, true, "run_id"), run_id, "another redis answers on B");
    assert_eq!(cli(nodes, true, &["DBSIZE"]), "200001");
    assert_eq!(cli(nodes, true, &["STRLEN", "key:123456"]), "100");
    // The unix socket reaches the moved redis (the source is gone), and nothing is left beside it.
    assert_eq!(info_via(nodes, true, Some(&sock), "run_id"), run_id, "the unix socket after the move\n{}", log());
    assert_eq!(mv.leftovers(), Vec::<String>::new(), "files left beside the socket");
    assert_eq!(cli(nodes, true, &["DEL", "counter"]), "1");
    assert_eq!(cli(nodes, true, &["DEBUG", "DIGEST"]), digest, "the data on B differs from A's");
    cli(nodes, true, &["SHUTDOWN", "NOSAVE"]);
}
