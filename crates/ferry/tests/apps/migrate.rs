//! redis moved live between two nodes (`crate::migrate`'s two network namespaces) with
//! `ferry migrate --pre-copy --tcp-established` (and `--post-copy`), while a client in node B keeps incrementing a
//! counter on one connection to the service address 10.231.1.1, which moves from A to B after
//! the migration. The client's connection survives, no increment is lost or applied twice,
//! and the server on B is the same redis (run id) with all its data (`DEBUG DIGEST`); with
//! pre-copy its memory (jemalloc's MAP_NORESERVE heaps) was handed over in place.

use super::redis::{redis_args, REDIS};
use super::*;
use crate::migrate::{in_place_mib, keygen, run_ok, summary, Migration, Nodes, Server, DEST};

const ADDR: &str = "10.231.1.1";
const REDIS_PORT: u16 = 6390;

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

/// redis-cli in node `ns` (A or B) against the service address.
fn cli(nodes: &Nodes, in_b: bool, args: &[&str]) -> String {
    let cli = path_str(&need("redis-cli", "redis-tools"));
    let mut c = if in_b { nodes.in_b(&cli) } else { nodes.in_a(&cli) };
    let out = c.args(["-h", ADDR, "-p", &REDIS_PORT.to_string()]).args(args).stdin(Stdio::null()).output();
    let out = out.expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn info(nodes: &Nodes, in_b: bool, field: &str) -> String {
    let text = cli(nodes, in_b, &["INFO", "everything"]);
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
    need("nft", "nftables");
    let redis = need(REDIS, "redis-server");
    let python = need("python3", "python3");
    let nodes = Nodes::new();
    let w = WorkDir::new("mig-redis");
    let auth = w.join("auth");
    keygen(&auth);
    let server = Server::start(&nodes, &w, &auth, &[]);
    run_ok(Command::new("ip").args(["-n", &nodes.a, "addr", "add", &format!("{ADDR}/32"), "dev", "lo"]));
    run_ok(Command::new("ip").args(["-n", &nodes.b, "route", "add", &format!("{ADDR}/32"), "via", "10.231.0.1"]));
    // No unix socket: on one machine its path would be taken by the source's, alive until the
    // destination's copy runs.
    let mut args = redis_args(&w, ADDR, REDIS_PORT);
    if let Some(at) = args.iter().position(|a| a == "--unixsocket") {
        args.drain(at..at + 2);
    }
    let pidfile = w.join("init.pid");
    let st = nodes
        .in_a(ferry_bin())
        .args(["run", "--pidns", "-d", "--pidfile", &path_str(&pidfile), "--"])
        .arg(&redis)
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(w.join("run.log")).expect("log"))
        .stderr(File::create(w.join("run.err")).expect("log"))
        .status()
        .expect("ferry run");
    assert!(st.success(), "ferry run: {}", read_tail(&w.join("run.err"), 2000));
    let init: i32 = fs::read_to_string(&pidfile).expect("pidfile").trim().parse().expect("pid");
    let log = || format!("redis.log: {}\nserve: {}", read_tail(&w.join("redis.log"), 3000), server.log());
    wait_for("redis to answer", Duration::from_secs(30), || cli(&nodes, false, &["PING"]) == "PONG");
    // ~40 MiB of data: something for the pre-copy rounds to move while the client writes.
    assert_eq!(cli(&nodes, false, &["DEBUG", "POPULATE", "200000", "key", "100"]), "OK");
    let run_id = info(&nodes, false, "run_id");
    // (every key and value, to compare on B once the client's counter is gone again)
    let digest = cli(&nodes, false, &["DEBUG", "DIGEST"]);
    fs::write(w.join("client.py"), CLIENT).expect("client.py");
    let mut client = nodes
        .in_b(&path_str(&python))
        .args([&path_str(&w.join("client.py")), &path_str(&w.path)])
        .stdin(Stdio::null())
        .stdout(File::create(w.join("client.out")).expect("log"))
        .stderr(File::create(w.join("client.err")).expect("log"))
        .spawn()
        .expect("start the client");
    wait_for("the client's first increments", Duration::from_secs(30), || progress(&w) >= 200);
    let out = nodes
        .in_a(ferry_bin())
        .args(["migrate", "-t", &init.to_string(), "--to", DEST, "--auth", &path_str(&auth)])
        .args([mode, "--tcp-established"])
        .stdin(Stdio::null())
        .output()
        .expect("run ferry migrate");
    let m = Migration {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(m.ok, "migration failed: {}\n{}", m.stderr, log());
    let (_, downtime) = summary(&m);
    eprintln!(
        "redis {mode}: downtime {downtime} ms (load {})",
        fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    let at_move = progress(&w);
    if mode == "--pre-copy" {
        // jemalloc's heaps (MAP_NORESERVE) were handed over in place, not put in the image
        wait_for("the destination's timings", Duration::from_secs(20), || server.log().contains("serve: pre-copy:"));
        for l in server.log().lines().filter(|l| l.contains("pre-copied pages") || l.contains("serve: pre-copy:")) {
            eprintln!("{l}");
        }
        let in_place = in_place_mib(&server.log());
        assert!(in_place >= 32, "{in_place} MiB handed over in place: {}", server.log());
    }
    // The service address moves to B.
    run_ok(Command::new("ip").args(["-n", &nodes.a, "addr", "del", &format!("{ADDR}/32"), "dev", "lo"]));
    run_ok(Command::new("ip").args(["-n", &nodes.b, "route", "del", &format!("{ADDR}/32")]));
    run_ok(Command::new("ip").args(["-n", &nodes.b, "addr", "add", &format!("{ADDR}/32"), "dev", "lo"]));
    wait_for("the client to go on on B", Duration::from_secs(60), || {
        progress(&w) >= at_move + 500 || matches!(client.try_wait(), Ok(Some(_)))
    });
    File::create(w.join("client-stop")).expect("client-stop");
    let st = wait_timeout(&mut client, Duration::from_secs(60)).expect("the client hung");
    assert!(st.success(), "the client: {}\n{}", read_tail(&w.join("client.err"), 2000), log());
    let count = fs::read_to_string(w.join("client.out")).unwrap_or_default();
    eprintln!("client: {} ({at_move} at the move)", count.trim());
    assert_eq!(info(&nodes, true, "run_id"), run_id, "another redis answers on B");
    assert_eq!(cli(&nodes, true, &["DBSIZE"]), "200001");
    assert_eq!(cli(&nodes, true, &["STRLEN", "key:123456"]), "100");
    assert_eq!(cli(&nodes, true, &["DEL", "counter"]), "1");
    assert_eq!(cli(&nodes, true, &["DEBUG", "DIGEST"]), digest, "the data on B differs from A's");
    cli(&nodes, true, &["SHUTDOWN", "NOSAVE"]);
}
