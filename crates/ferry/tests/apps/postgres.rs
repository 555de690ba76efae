//! PostgreSQL 15 (the set-up of `contact::postgresql_15_dump_restore`, which covers an idle
//! server) with a client connected and inside a transaction at the checkpoint: its backend
//! holds the connection (`--tcp-established`), a row lock and an uncommitted row. After the
//! restore the same backend answers on the same connection, still in the transaction (the
//! server says so in every ReadyForQuery), sees its own row, commits it, and another client sees
//! it. The test speaks the wire protocol itself (simple queries, trust authentication).

use super::*;
use crate::contact::{init_cluster, sysv_segments_of, SegmentCleanup, AS_POSTGRES, PG_BIN};

/// A frontend connection: the simple query protocol.
struct Pg {
    s: TcpStream,
    /// The backend's pid (BackendKeyData).
    backend: i32,
}

impl Pg {
    fn connect(port: u16) -> Result<Pg, String> {
        Pg::on(TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?)
    }

    /// Start a session on the connection `s`.
    fn on(mut s: TcpStream) -> Result<Pg, String> {
        s.set_read_timeout(Some(Duration::from_secs(30))).map_err(|e| e.to_string())?;
        let params = b"user\0postgres\0database\0postgres\0\0";
        let mut m = ((8 + params.len()) as u32).to_be_bytes().to_vec();
        m.extend(196_608u32.to_be_bytes());
        m.extend(params);
        s.write_all(&m).map_err(|e| e.to_string())?;
        let mut pg = Pg { s, backend: 0 };
        pg.until_ready(|_, _| {})?;
        Ok(pg)
    }

    fn message(&mut self) -> Result<(u8, Vec<u8>), String> {
        let mut head = [0u8; 5];
        self.s.read_exact(&mut head).map_err(|e| format!("read: {e}"))?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0; len.saturating_sub(4)];
        self.s.read_exact(&mut body).map_err(|e| format!("read: {e}"))?;
        Ok((head[0], body))
    }

    /// Messages up to ReadyForQuery, whose status it returns ('I' idle, 'T' in a transaction,
    /// 'E' in a failed one); an ErrorResponse is an error.
    fn until_ready(&mut self, mut each: impl FnMut(u8, &[u8])) -> Result<u8, String> {
        let mut error = None;
        loop {
            let (kind, body) = self.message()?;
            match kind {
                b'Z' => return error.map_or(Ok(body.first().copied().unwrap_or(0)), Err),
                b'E' => error = Some(String::from_utf8_lossy(&body).replace('\0', " ")),
                b'R' if body.get(..4) != Some(&[0, 0, 0, 0]) => return Err("asks for a password".into()),
                b'K' if body.len() >= 4 => self.backend = i32::from_be_bytes([body[0], body[1], body[2], body[3]]),
                _ => each(kind, &body),
            }
        }
    }

    /// Run `sql`: the text of each row's columns joined with '|', and the transaction status.
    fn query(&mut self, sql: &str) -> Result<(Vec<String>, u8), String> {
        let mut m = vec![b'Q'];
        m.extend(((4 + sql.len() + 1) as u32).to_be_bytes());
        m.extend(sql.as_bytes());
        m.push(0);
        self.s.write_all(&m).map_err(|e| format!("send: {e}"))?;
        let mut rows = Vec::new();
        let status = self.until_ready(|kind, body| {
            if kind != b'D' || body.len() < 2 {
                return;
            }
            let mut cols = Vec::new();
            let mut at = 2;
            for _ in 0..u16::from_be_bytes([body[0], body[1]]) {
                let Some(len) = body.get(at..at + 4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]])) else {
                    break;
                };
                at += 4;
                let len = len.max(0) as usize;
                cols.push(String::from_utf8_lossy(body.get(at..at + len).unwrap_or_default()).into_owned());
                at += len;
            }
            rows.push(cols.join("|"));
        })?;
        Ok((rows, status))
    }
}

/// A database cluster of the test's own in W/data (initdb, user postgres, trust), its unix
/// socket dir W/sock: the command line of setpriv that starts its postgres as user postgres,
/// listening on `addr`:`port`.
fn init(w: &WorkDir, addr: &str, port: u16) -> Vec<String> {
    let postgres = need(&format!("{PG_BIN}/postgres"), "postgresql-15");
    let (data, sock) = init_cluster(w);
    if addr != "127.0.0.1" {
        // (initdb trusts local clients only: the other node's too.)
        let hba = data.join("pg_hba.conf");
        let mut conf = fs::read_to_string(&hba).expect("read pg_hba.conf");
        conf += "host all all 10.231.0.0/16 trust\n";
        fs::write(&hba, conf).expect("write pg_hba.conf");
    }
    let mut args: Vec<String> = AS_POSTGRES.iter().map(|s| s.to_string()).collect();
    args.push(path_str(&postgres));
    args.extend(["-D", &path_str(&data), "-p", &port.to_string(), "-k", &path_str(&sock)].map(String::from));
    args.extend(["-c", &format!("listen_addresses={addr}"), "-c", "fsync=off"].map(String::from));
    args
}

/// A postgres of the test's own (as user postgres, data dir and unix socket dir in W).
struct Postgres {
    port: u16,
    pid: i32,
    child: Option<Child>,
    guard: ProcGuard,
    w: WorkDir,
}

impl Postgres {
    fn start(label: &str) -> Postgres {
        let setpriv = need("setpriv", "util-linux");
        let w = WorkDir::new(label);
        let port = free_port();
        let args = init(&w, "127.0.0.1", port);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = start(&w, "postgres", &setpriv, &args);
        let pid = child.id() as i32;
        let guard = ProcGuard::new();
        guard.add(pid);
        let pg = Postgres { port, pid, child: Some(child), guard, w };
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(e) = Pg::connect(port) {
            assert!(pid_alive(pid), "postgres exited: {e}\n{}", pg.log());
            assert!(Instant::now() < deadline, "postgres does not answer: {e}\n{}", pg.log());
            sleep(Duration::from_millis(100));
        }
        pg
    }

    fn log(&self) -> String {
        format!(
            "postgres.err: {}\nrestore.err: {}",
            read_tail(&self.w.join("postgres.err"), 3000),
            read_tail(&self.w.join("restore.err"), 3000)
        )
    }

    fn backends(&self) -> Vec<i32> {
        backends_of(self.pid)
    }
}

/// The backends of postmaster `pid` (children serving a client), ours or exiting.
fn backends_of(pid: i32) -> Vec<i32> {
    children(pid)
        .into_iter()
        .filter(|c| {
            let cmd = fs::read_to_string(format!("/proc/{c}/cmdline")).unwrap_or_default();
            cmd.is_empty() || cmd.starts_with("postgres: postgres ")
        })
        .collect()
}

fn q(pg: &mut Pg, sql: &str, log: &dyn Fn() -> String) -> (Vec<String>, u8) {
    pg.query(sql).unwrap_or_else(|e| panic!("{sql}: {e}\n{}", log()))
}

/// Dump (--tcp-established) with a client in a transaction, kill, restore: the transaction
/// goes on on the same connection with the same backend and commits.
#[test]
fn postgresql_client_in_transaction_commits_after_restore() {
    let mut p = Postgres::start("pg-tx");
    let log = || p.log();
    let mut setup = Pg::connect(p.port).expect("connect");
    q(&mut setup, "create table t(id int primary key, x int); insert into t values (1, 1), (2, 2), (3, 3);", &log);
    drop(setup);
    let mut tx = Pg::connect(p.port).expect("connect");
    let (_, status) = q(&mut tx, "begin; insert into t values (4, 10); update t set x = 20 where id = 2;", &log);
    assert_eq!(status, b'T', "not in a transaction");
    let (rows, _) = q(&mut tx, "select sum(x) from t", &log);
    assert_eq!(rows, ["34"], "the transaction does not see its own rows");
    let backend = tx.backend;
    // The other backends (the set-up's) are gone: only the transaction's is left.
    wait_for("the set-up's backend to exit", Duration::from_secs(30), || p.backends() == [backend]);
    let segs = sysv_segments_of(p.pid);
    let keyed = segs.iter().find(|(_, key, n)| key != "0" && *n >= 1).map(|s| s.0.clone());
    let _segment = SegmentCleanup(keyed.unwrap_or_else(|| panic!("postgres has no keyed SysV segment: {segs:?}")));

    let img = dump(&p.w, p.pid, "img", &["--tcp-established"]);
    reap_dumped(&mut p.child, &img);
    let mut restore = spawn_restore(&p.w, &img, "restore", &[]);
    let log = || p.log();
    let (rows, status) = q(&mut tx, "select sum(x), pg_backend_pid() from t", &log);
    assert_eq!(status, b'T', "the restored backend is not in the transaction any more");
    assert_eq!(rows, [format!("34|{backend}")], "the transaction's view after the restore");
    // Another client does not see the uncommitted row, and waits for the row lock.
    let mut other = Pg::connect(p.port).unwrap_or_else(|e| panic!("a new client: {e}\n{}", log()));
    assert_eq!(q(&mut other, "select sum(x) from t", &log).0, ["6"]);
    let (_, status) = q(&mut tx, "insert into t values (5, 100); commit;", &log);
    assert_eq!(status, b'I');
    assert_eq!(q(&mut other, "select sum(x), count(*) from t", &log).0, ["134|5"], "the committed rows");
    drop((tx, other));
    send_signal(p.pid, "INT").expect("stop postgres");
    let st = wait_exit(&mut restore, "the restored postgres", log);
    assert!(st.success(), "the restored postgres {} on SIGINT\n{}", describe(st), p.log());
    drop(p.guard);
}

/// `dump -R --tcp-established` with the client in its transaction: the server and the client's
/// connection run on (the network lock and repair mode are lifted), the transaction commits there
/// and the server stops cleanly. (Its image is not restored: the database files have moved on
/// since, which no restore of a process can undo.)
#[test]
fn postgresql_leave_running_transaction_commits() {
    let mut p = Postgres::start("pg-R");
    let log = || p.log();
    let mut setup = Pg::connect(p.port).expect("connect");
    q(&mut setup, "create table t(id int primary key, x int); insert into t values (1, 1), (2, 2), (3, 3);", &log);
    drop(setup);
    let mut tx = Pg::connect(p.port).expect("connect");
    q(&mut tx, "begin; insert into t values (4, 10);", &log);
    let backend = tx.backend;
    wait_for("the set-up's backend to exit", Duration::from_secs(30), || p.backends() == [backend]);
    let segs = sysv_segments_of(p.pid);
    let keyed = segs.iter().find(|(_, key, n)| key != "0" && *n >= 1).map(|s| s.0.clone());
    let _segment = SegmentCleanup(keyed.unwrap_or_else(|| panic!("postgres has no keyed SysV segment: {segs:?}")));
    dump(&p.w, p.pid, "img", &["-R", "--tcp-established"]);
    let (rows, status) = q(&mut tx, "select sum(x), pg_backend_pid() from t", &log);
    assert_eq!((rows, status), (vec![format!("16|{backend}")], b'T'));
    let (_, status) = q(&mut tx, "commit", &log);
    assert_eq!(status, b'I');
    drop(tx);
    let mut other = Pg::connect(p.port).expect("connect");
    assert_eq!(q(&mut other, "select sum(x), count(*) from t", &log).0, ["16|4"]);
    drop(other);
    send_signal(p.pid, "INT").expect("stop postgres");
    let mut child = p.child.take().expect("our child");
    let st = wait_exit(&mut child, "postgres", || p.log());
    assert!(st.success(), "postgres {} on SIGINT after dump -R\n{}", describe(st), p.log());
    drop(p.guard);
}

/// PostgreSQL moved live from node A to node B (`ferry migrate --tcp-established`): the
/// postmaster, its auxiliary processes and a backend, their shared memory (a keyed SysV segment
/// in the tree's IPC namespace, the anonymous shared mapping) and the unix socket in W/sock (the
/// same path on both nodes: the source's file is taken over). A client in B inside a transaction goes on with the same
/// backend, still in its transaction, once the service address is on B, and commits; new clients
/// from B and on the unix socket see the commit.
#[test]
fn postgresql_migrates_with_a_client_in_a_transaction() {
    use super::migrate::{Move, ADDR};
    let setpriv = need("setpriv", "util-linux");
    let port = 5439;
    // (An IPC namespace of its own: on one machine the source's keyed SysV segment, attached
    // by its frozen processes, holds its key and id until the move is confirmed.)
    let mv = Move::start_under("postgres", &["unshare", "--ipc", "--"], &setpriv, |w| init(w, ADDR, port));
    let w = &mv.w;
    let log = || format!("run.err: {}\nserve: {}", read_tail(&w.join("run.err"), 3000), mv.serve_log());
    let connect = || mv.nodes.connect_from_b(ADDR, port).map_err(|e| e.to_string()).and_then(Pg::on);
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = connect() {
        assert!(Instant::now() < deadline, "postgres does not answer from B: {e}\n{}", log());
        sleep(Duration::from_millis(100));
    }
    let mut setup = connect().expect("connect");
    q(&mut setup, "create table t(id int primary key, x int); insert into t values (1, 1), (2, 2), (3, 3);", &log);
    drop(setup);
    let mut tx = connect().expect("connect");
    let (_, status) = q(&mut tx, "begin; insert into t values (4, 10); update t set x = 20 where id = 2;", &log);
    assert_eq!(status, b'T', "not in a transaction");
    let backend = tx.backend;
    let postmaster = *children(mv.init).first().unwrap_or_else(|| panic!("no postmaster\n{}", log()));
    wait_for("the set-up's backend to exit", Duration::from_secs(30), || backends_of(postmaster).len() == 1);
    let remote = mv.migrate(&[], &log);
    mv.move_address();
    let (rows, status) = q(&mut tx, "select sum(x), pg_backend_pid() from t", &log);
    assert_eq!(status, b'T', "the moved backend is not in the transaction any more");
    assert_eq!(rows, [format!("34|{backend}")], "the transaction's view after the move");
    let mut other = connect().unwrap_or_else(|e| panic!("a new client from B: {e}\n{}", log()));
    assert_eq!(q(&mut other, "select sum(x) from t", &log).0, ["6"]);
    let (_, status) = q(&mut tx, "insert into t values (5, 100); commit;", &log);
    assert_eq!(status, b'I');
    assert_eq!(q(&mut other, "select sum(x), count(*) from t", &log).0, ["134|5"], "the committed rows");
    // The unix socket reaches the moved server.
    let psql = need(&format!("{PG_BIN}/psql"), "postgresql-15");
    let out = Command::new(psql)
        .args(["-h", &path_str(&w.join("sock")), "-p", &port.to_string(), "-U", "postgres", "-At", "-c"])
        .arg("select count(*) from t")
        .stdin(Stdio::null())
        .output()
        .expect("run psql");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "5",
        "psql on the unix socket: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        log()
    );
    assert_eq!(mv.leftovers(), Vec::<String>::new(), "files left beside the socket");
    drop((tx, other));
    let postmaster = *children(remote).first().unwrap_or_else(|| panic!("no postmaster under pid {remote}"));
    send_signal(postmaster, "INT").expect("stop postgres");
    wait_for("the moved postgres to stop", Duration::from_secs(60), || !pid_alive(postmaster));
}
