//! redis-server (Debian's 7.0): one process with its background threads (bio, jemalloc), a TCP
//! listener and a unix one, an AOF written through an open fd, and clients in every state a
//! client can be in at the checkpoint: half-way through a MULTI, blocked in BLPOP, subscribed,
//! idle; sometimes a background save (a forked child) in progress.

use super::*;

pub(crate) const REDIS: &str = "/usr/bin/redis-server";

/// A reply of the redis protocol (RESP2).
#[derive(Debug, PartialEq, Eq, Clone)]
pub(crate) enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    pub(crate) fn bulk(s: &str) -> Reply {
        Reply::Bulk(Some(s.as_bytes().to_vec()))
    }

    fn text(&self) -> String {
        match self {
            Reply::Status(s) | Reply::Error(s) => s.clone(),
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            other => format!("{other:?}"),
        }
    }
}

/// One client connection to redis.
pub(crate) struct Client {
    r: BufReader<TcpStream>,
}

impl Client {
    pub(crate) fn connect(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to redis: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
        Client { r: BufReader::new(s) }
    }

    pub(crate) fn send(&mut self, args: &[&str]) {
        let mut m = format!("*{}\r\n", args.len());
        for a in args {
            m.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.r.get_mut().write_all(m.as_bytes()).unwrap_or_else(|e| panic!("send {args:?}: {e}"));
    }

    pub(crate) fn read(&mut self) -> Result<Reply, String> {
        let mut line = String::new();
        self.r.read_line(&mut line).map_err(|e| e.to_string())?;
        let (kind, rest) = line.trim_end().split_at_checked(1).ok_or("the connection was closed")?;
        let n = || rest.parse::<i64>().map_err(|_| format!("bad reply line {line:?}"));
        Ok(match kind {
            "+" => Reply::Status(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Int(n()?),
            "$" if n()? < 0 => Reply::Bulk(None),
            "$" => {
                let mut b = vec![0; n()? as usize + 2];
                self.r.read_exact(&mut b).map_err(|e| e.to_string())?;
                b.truncate(b.len() - 2);
                Reply::Bulk(Some(b))
            }
            "*" if n()? < 0 => Reply::Array(None),
            "*" => Reply::Array(Some((0..n()?).map(|_| self.read()).collect::<Result<_, _>>()?)),
            _ => return Err(format!("bad reply line {line:?}")),
        })
    }

    /// Send a command and read its reply, which must not be an error.
    pub(crate) fn cmd(&mut self, args: &[&str]) -> Reply {
        self.send(args);
        match self.read() {
            Ok(Reply::Error(e)) => panic!("redis {args:?}: {e}"),
            Ok(r) => r,
            Err(e) => panic!("redis {args:?}: {e}"),
        }
    }

    /// A field of INFO.
    pub(crate) fn info(&mut self, field: &str) -> String {
        let text = self.cmd(&["INFO", "everything"]).text();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .unwrap_or_else(|| panic!("no {field} in INFO"))
            .trim()
            .to_string()
    }

    pub(crate) fn digest(&mut self) -> String {
        self.cmd(&["DEBUG", "DIGEST"]).text()
    }
}

/// A redis-server of the test's own: port on 127.0.0.1, a unix socket and an AOF in W.
struct Redis {
    port: u16,
    pid: i32,
    child: Option<Child>,
    guard: ProcGuard,
    w: WorkDir,
}

impl Redis {
    fn start(label: &str) -> Redis {
        Redis::start_with(label, &[])
    }

    /// With `extra` arguments after the usual ones.
    fn start_with(label: &str, extra: &[&str]) -> Redis {
        let redis = need(REDIS, "redis-server");
        let w = WorkDir::new(label);
        let port = free_port();
        let mut args = redis_args(&w, "127.0.0.1", port);
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = start(&w, "redis", &redis, &args);
        let pid = child.id() as i32;
        let guard = ProcGuard::new();
        guard.add(pid);
        let r = Redis { port, pid, child: Some(child), guard, w };
        wait_for("redis to answer", Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok() || !pid_alive(pid)
        });
        assert!(pid_alive(pid), "redis exited: {}", r.log());
        r
    }

    fn log(&self) -> String {
        format!(
            "redis.log: {}\nredis.err: {}\nrestore.err: {}",
            read_tail(&self.w.join("redis.log"), 3000),
            read_tail(&self.w.join("redis.err"), 2000),
            read_tail(&self.w.join("restore.err"), 3000)
        )
    }

    fn client(&self) -> Client {
        Client::connect(self.port)
    }
}

/// The command line of a test's redis-server in work dir `w`, on `bind`:`port` (no config file, no daemon, RDB
/// snapshots only on demand, an AOF with fsync every second by its bio thread).
pub(crate) fn redis_args(w: &WorkDir, bind: &str, port: u16) -> Vec<String> {
    let mut a: Vec<String> =
        ["--port", &port.to_string(), "--bind", bind, "--daemonize", "no"].iter().map(|s| s.to_string()).collect();
    a.extend(
        [
            "--protected-mode",
            "no",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--enable-debug-command",
            "yes",
        ]
        .map(String::from),
    );
    a.extend(["--dir".to_string(), path_str(&w.path), "--logfile".to_string(), path_str(&w.join("redis.log"))]);
    a.extend(["--unixsocket".to_string(), path_str(&w.join("redis.sock"))]);
    a
}

/// Clients in every state, set up before the checkpoint and checked after it.
struct Clients {
    /// Idle, used for the checks; its id.
    plain: Client,
    plain_id: i64,
    /// Half-way through MULTI (two commands queued).
    multi: Client,
    /// Blocked in BLPOP on "queue".
    blocked: Client,
    /// Subscribed to "news".
    sub: Client,
}

impl Clients {
    fn set_up(r: &Redis) -> Clients {
        let mut plain = r.client();
        let Reply::Int(plain_id) = plain.cmd(&["CLIENT", "ID"]) else { panic!("CLIENT ID") };
        // (MSET, not DEBUG POPULATE: the AOF must have every key)
        for batch in 0..20 {
            let mut args = vec!["MSET".to_string()];
            for k in batch * 1000..(batch + 1) * 1000 {
                args.extend([format!("key:{k}"), format!("value {k} {}", "x".repeat(k % 64))]);
            }
            plain.cmd(&args.iter().map(String::as_str).collect::<Vec<_>>());
        }
        plain.cmd(&["SET", "counter", "100"]);
        plain.cmd(&["RPUSH", "list", "a", "b", "c"]);
        plain.cmd(&["HSET", "h", "f1", "v1", "f2", "v2"]);
        let mut multi = r.client();
        multi.cmd(&["MULTI"]);
        assert_eq!(multi.cmd(&["INCRBY", "counter", "5"]), Reply::Status("QUEUED".into()));
        assert_eq!(multi.cmd(&["SET", "in-multi", "yes"]), Reply::Status("QUEUED".into()));
        let mut blocked = r.client();
        blocked.send(&["BLPOP", "queue", "0"]);
        let mut sub = r.client();
        sub.send(&["SUBSCRIBE", "news"]);
        assert_eq!(
            sub.read(),
            Ok(Reply::Array(Some(vec![Reply::bulk("subscribe"), Reply::bulk("news"), Reply::Int(1)])))
        );
        wait_for("BLPOP to block", Duration::from_secs(10), || plain.info("blocked_clients") == "1");
        Clients { plain, plain_id, multi, blocked, sub }
    }

    /// Every client goes on where it was: the MULTI executes, the blocked client gets what is
    /// pushed, the subscriber what is published, the plain client has its id.
    fn check(&mut self, r: &Redis) {
        let p = &mut self.plain;
        let Reply::Int(id) = p.cmd(&["CLIENT", "ID"]) else { panic!("CLIENT ID") };
        assert_eq!(id, self.plain_id, "the plain client's connection is another one now\n{}", r.log());
        assert_eq!(p.info("blocked_clients"), "1", "the BLPOP client is not blocked any more\n{}", r.log());
        let ans = self.multi.cmd(&["EXEC"]);
        assert_eq!(ans, Reply::Array(Some(vec![Reply::Int(105), Reply::Status("OK".into())])), "{}", r.log());
        assert_eq!(p.cmd(&["PUBLISH", "news", "hello"]), Reply::Int(1), "the subscriber is gone\n{}", r.log());
        let msg = self.sub.read().unwrap_or_else(|e| panic!("the subscriber: {e}\n{}", r.log()));
        assert_eq!(msg, Reply::Array(Some(vec![Reply::bulk("message"), Reply::bulk("news"), Reply::bulk("hello")])));
        assert_eq!(p.cmd(&["RPUSH", "queue", "job1"]), Reply::Int(1));
        let got = self.blocked.read().unwrap_or_else(|e| panic!("the BLPOP client: {e}\n{}", r.log()));
        assert_eq!(got, Reply::Array(Some(vec![Reply::bulk("queue"), Reply::bulk("job1")])));
        assert_eq!(
            p.cmd(&["LRANGE", "list", "0", "-1"]),
            Reply::Array(Some(["a", "b", "c"].map(Reply::bulk).to_vec()))
        );
        assert_eq!(p.cmd(&["HGET", "h", "f2"]), Reply::bulk("v2"));
        assert_eq!(p.cmd(&["DBSIZE"]), Reply::Int(20000 + 4), "{}", r.log());
    }
}

/// The inside view after a restore: the same server (run id, pid), the same data (digest); it
/// writes its AOF where it left it (a reload from the AOF gives the same digest), forks a
/// background save that succeeds, and answers on its unix socket.
fn check_inside(r: &Redis, c: &mut Client, run_id: &str) {
    assert_eq!(c.info("run_id"), run_id, "another redis answers");
    assert_eq!(c.info("process_id"), r.pid.to_string());
    c.cmd(&["SET", "after-restore", "1"]);
    let digest = c.digest();
    assert_eq!(c.cmd(&["DEBUG", "LOADAOF"]), Reply::Status("OK".into()), "{}", r.log());
    assert_eq!(c.digest(), digest, "the AOF written across the restore does not give the data back\n{}", r.log());
    c.cmd(&["BGSAVE"]);
    wait_for("the background save", Duration::from_secs(30), || c.info("rdb_bgsave_in_progress") == "0");
    assert_eq!(c.info("rdb_last_bgsave_status"), "ok", "{}", r.log());
    let cli = need("redis-cli", "redis-tools");
    let out = Command::new(cli).args(["-s", &path_str(&r.w.join("redis.sock")), "GET", "after-restore"]).output();
    let out = out.expect("run redis-cli");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "over the unix socket\n{}", r.log());
}

/// Dump with --tcp-established, kill, restore: every client keeps its connection and state,
/// the data and the AOF are intact, and redis shuts down cleanly (exit 0 through ferry).
#[test]
fn redis_clients_and_data_continue() {
    let mut r = Redis::start("redis");
    let mut clients = Clients::set_up(&r);
    let run_id = clients.plain.info("run_id");
    let digest = clients.plain.digest();
    let img = dump(&r.w, r.pid, "img", &["--tcp-established"]);
    reap_dumped(&mut r.child, &img);
    let mut restore = spawn_restore(&r.w, &img, "restore", &[]);
    assert_eq!(clients.plain.digest(), digest, "the restored data differ\n{}", r.log());
    clients.check(&r);
    check_inside(&r, &mut clients.plain, &run_id);
    clients.plain.send(&["SHUTDOWN", "NOSAVE"]);
    let st = wait_exit(&mut restore, "the restored redis", || r.log());
    assert!(st.success(), "the restored redis {} on SHUTDOWN\n{}", describe(st), r.log());
    drop(r.guard);
}

/// `dump -R --tcp-established`: redis runs on and every client with it (the network lock and
/// repair mode are lifted); the data written after the dump are there. Then redis is killed and
/// the image restored: the data are those of the dump, a new client is served, and the
/// clients of the killed server see their connection end (reset), not hang.
#[test]
fn redis_leave_running_then_restore() {
    let mut r = Redis::start("redis-R");
    let mut clients = Clients::set_up(&r);
    let digest = clients.plain.digest();
    let img = dump(&r.w, r.pid, "img", &["-R", "--tcp-established"]);
    assert!(pid_alive(r.pid), "dump -R killed redis");
    clients.check(&r);
    clients.plain.cmd(&["SET", "after-dump", "1"]);
    let mut c = r.client();
    assert_eq!(c.cmd(&["GET", "after-dump"]), Reply::bulk("1"));
    if let Some(mut child) = r.child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
    wait_image_pids_gone(&img);
    let mut restore = spawn_restore(&r.w, &img, "restore", &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", r.port)).is_err() {
        if let Ok(Some(st)) = restore.try_wait() {
            panic!("ferry restore {} before redis answered\n{}", describe(st), r.log());
        }
        assert!(Instant::now() < deadline, "the restored redis does not answer\n{}", r.log());
        sleep(Duration::from_millis(20));
    }
    let mut fresh = r.client();
    assert_eq!(fresh.digest(), digest, "the restored data are not those of the dump\n{}", r.log());
    assert_eq!(fresh.cmd(&["GET", "after-dump"]), Reply::Bulk(None));
    // The old connections belonged to the killed server: they end.
    let _ = clients.plain.r.get_mut().write_all(b"PING\r\n");
    assert!(clients.plain.read().is_err(), "a connection of the killed server still answers");
    fresh.send(&["SHUTDOWN", "NOSAVE"]);
    let st = wait_exit(&mut restore, "the restored redis", || r.log());
    assert!(st.success(), "the restored redis {} on SHUTDOWN\n{}", describe(st), r.log());
    drop(r.guard);
}

/// A background save in progress at the checkpoint (the forked child writes the RDB slowly,
/// sharing the parent's memory copy-on-write): the tree of two comes back, the child finishes
/// its save, the parent reaps it and records success, and the file loads with the same digest.
#[test]
fn redis_background_save_in_progress() {
    let mut r = Redis::start("redis-bgsave");
    let mut c = r.client();
    c.cmd(&["DEBUG", "POPULATE", "20000", "key", "64"]);
    let digest = c.digest();
    // 20000 keys at 100 us each: a save of about 2 s, from a child that does not exist yet.
    c.cmd(&["CONFIG", "SET", "rdb-key-save-delay", "100"]);
    c.cmd(&["BGSAVE"]);
    wait_for("the save's child", Duration::from_secs(10), || {
        !fs::read_to_string(format!("/proc/{}/task/{}/children", r.pid, r.pid)).unwrap_or_default().trim().is_empty()
    });
    let img = dump(&r.w, r.pid, "img", &["--tcp-established"]);
    assert_eq!(ferry_image::ImageReader::open(&img).expect("image").inventory().pids.len(), 2);
    reap_dumped(&mut r.child, &img);
    let mut restore = spawn_restore(&r.w, &img, "restore", &[]);
    c.cmd(&["CONFIG", "SET", "rdb-key-save-delay", "0"]);
    wait_for("the restored save to finish", Duration::from_secs(60), || c.info("rdb_bgsave_in_progress") == "0");
    assert_eq!(c.info("rdb_last_bgsave_status"), "ok", "{}", r.log());
    c.cmd(&["SET", "after", "1"]);
    c.cmd(&["DEL", "after"]);
    // The file the restored child saved.
    let check = Command::new(need("redis-check-rdb", "redis-tools")).arg(r.w.join("dump.rdb")).output();
    let check = check.expect("run redis-check-rdb");
    assert!(check.status.success(), "the RDB saved by the restored child: {}", String::from_utf8_lossy(&check.stdout));
    assert_eq!(c.digest(), digest);
    c.send(&["SHUTDOWN", "NOSAVE"]);
    let st = wait_exit(&mut restore, "the restored redis", || r.log());
    assert!(st.success(), "the restored redis {} on SHUTDOWN\n{}", describe(st), r.log());
    drop(r.guard);
}

/// A replica (with four I/O threads) of a master outside the tree: checkpointed with its link to
/// the master open (`--tcp-established`) while the master takes more writes, it comes back on
/// the same link and catches up from the master's stream: no new full or partial sync, the
/// same replication offset as the master.
#[test]
fn redis_replica_keeps_its_link_to_the_master() {
    let master = Redis::start("redis-master");
    let mut m = master.client();
    let port = master.port.to_string();
    let mut replica = Redis::start_with(
        "redis-replica",
        &["--replicaof", "127.0.0.1", &port, "--io-threads", "4", "--io-threads-do-reads", "yes"],
    );
    let mut r = replica.client();
    wait_for("the replica's link", Duration::from_secs(30), || r.info("master_link_status") == "up");
    for _ in 0..100 {
        m.cmd(&["INCR", "c"]);
    }
    wait_for("the replica to catch up", Duration::from_secs(30), || r.cmd(&["GET", "c"]) == Reply::bulk("100"));
    let full = m.info("sync_full");
    let img = dump(&replica.w, replica.pid, "img", &["--tcp-established"]);
    reap_dumped(&mut replica.child, &img);
    for _ in 0..50 {
        m.cmd(&["INCR", "c"]);
    }
    let mut restore = spawn_restore(&replica.w, &img, "restore", &[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.cmd(&["GET", "c"]) != Reply::bulk("150") {
        assert!(Instant::now() < deadline, "the restored replica does not catch up\n{}", replica.log());
        sleep(Duration::from_millis(20));
    }
    assert_eq!(r.info("master_link_status"), "up");
    assert_eq!(m.info("sync_full"), full, "the master had to send everything again\n{}", replica.log());
    assert_eq!(m.info("sync_partial_ok"), "0", "the link broke and was resumed\n{}", replica.log());
    wait_for("the same offset", Duration::from_secs(10), || {
        r.info("slave_repl_offset") == m.info("master_repl_offset")
    });
    r.send(&["SHUTDOWN", "NOSAVE"]);
    let st = wait_exit(&mut restore, "the restored replica", || replica.log());
    assert!(st.success(), "the restored replica {} on SHUTDOWN\n{}", describe(st), replica.log());
    drop(replica.guard);
}
