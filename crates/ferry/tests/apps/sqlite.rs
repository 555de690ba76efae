//! sqlite3 (the CLI) on a database in WAL mode, mid-transaction: besides its POSIX locks and open
//! files it maps the `-shm` index MAP_SHARED, which readers outside the tree map too. (The
//! rollback-journal case is `more::sqlite3_mid_transaction`.)

use super::*;

const SQLITE: &str = "/usr/bin/sqlite3";

fn sql(db: &Path, text: &str) -> String {
    let out = Command::new(SQLITE).arg(db).arg(text).output().expect("run sqlite3");
    assert!(out.status.success(), "sqlite3 {text:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// sqlite3 on W/t.db in WAL mode, its stdin a pipe the test writes to, inside a transaction
/// with rows 1 and 2 inserted (not committed); a reader outside sees only row 0.
fn start_in_transaction(w: &WorkDir) -> (Child, i32) {
    need(SQLITE, "sqlite3");
    let db = w.join("t.db");
    assert_eq!(sql(&db, "pragma journal_mode=wal; create table t(x); insert into t values(0);"), "wal");
    let mut child = workload_command(&ferry_workloads::path("closefds"))
        .arg(SQLITE)
        .arg(&db)
        .stdin(Stdio::piped())
        .stdout(File::create(w.join("out.txt")).expect("out"))
        .stderr(File::create(w.join("err.txt")).expect("err"))
        .spawn()
        .expect("start sqlite3");
    let pid = child.id() as i32;
    let stdin = child.stdin.as_mut().expect("stdin");
    stdin
        .write_all(b"BEGIN; INSERT INTO t VALUES(1); INSERT INTO t VALUES(2); SELECT 'mid', count(*) FROM t;\n")
        .expect("write");
    wait_for("sqlite3 mid-transaction", Duration::from_secs(20), || {
        fs::read_to_string(w.join("out.txt")).unwrap_or_default().contains("mid|3")
    });
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    assert!(
        maps.lines().any(|l| l.ends_with("t.db-shm") && l.contains("rw-s")),
        "sqlite3 does not map its -shm file shared: the test does not test that"
    );
    assert_eq!(sql(&db, "select count(*) from t"), "1", "a reader sees the uncommitted rows");
    (child, pid)
}

/// The restored sqlite3 finishes: a third row, commit, a checkpoint of the WAL into the database,
/// an integrity check; another sqlite3 sees the 4 rows.
const FINISH: &[u8] =
    b"INSERT INTO t VALUES(3); COMMIT; SELECT 'end', count(*), sum(x) FROM t; PRAGMA wal_checkpoint(TRUNCATE); PRAGMA integrity_check;\n.quit\n";

fn check_finished(w: &WorkDir, st: std::process::ExitStatus, err: &str) {
    let text = fs::read_to_string(w.join("out.txt")).unwrap_or_default();
    assert!(
        st.success() && text.contains("end|4|6") && text.trim_end().ends_with("ok"),
        "sqlite3 {}: {text:?} {err}",
        describe(st)
    );
    assert_eq!(sql(&w.join("t.db"), "select count(*), sum(x) from t; pragma integrity_check;"), "4|6\nok");
}

/// Dump, kill, restore (its stdin the restore's): the transaction commits, the database is
/// whole.
#[test]
fn sqlite3_wal_mid_transaction() {
    let w = WorkDir::new("sqlite-wal");
    let (mut child, pid) = start_in_transaction(&w);
    let guard = ProcGuard::new();
    guard.add(pid);
    let img = dump(&w, pid, "img", &[]);
    drop(child.stdin.take());
    reap_dumped(&mut Some(child), &img);
    let pidfile = w.join("restored.pid");
    let mut restore = Command::new(ferry_bin())
        .args(["restore", "-D", &path_str(&img), "--pidfile", &path_str(&pidfile)])
        .stdin(Stdio::piped())
        .stderr(File::create(w.join("restore.err")).expect("restore.err"))
        .spawn()
        .expect("ferry restore");
    let err = || read_tail(&w.join("restore.err"), 3000);
    // A reader meanwhile, once the writer is back (before, the reader would be the database's
    // last connection, and its close would fold the WAL into the database and delete it, under
    // the restore's feet): the restored writer's -shm mapping is the one this reader maps.
    let t = std::time::Instant::now();
    while !pidfile.exists() {
        assert!(t.elapsed() < std::time::Duration::from_secs(60), "no pidfile from ferry restore: {}", err());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(sql(&w.join("t.db"), "select count(*) from t"), "1");
    restore.stdin.as_mut().expect("stdin").write_all(FINISH).expect("write to the restored sqlite3");
    drop(restore.stdin.take());
    let st = wait_exit(&mut restore, "the restored sqlite3", err);
    check_finished(&w, st, &err());
}

/// `dump -R`: the transaction goes on and commits in the running sqlite3.
#[test]
fn sqlite3_wal_leave_running() {
    let w = WorkDir::new("sqlite-wal-R");
    let (mut child, pid) = start_in_transaction(&w);
    let guard = ProcGuard::new();
    guard.add(pid);
    dump(&w, pid, "img", &["-R"]);
    child.stdin.as_mut().expect("stdin").write_all(FINISH).expect("write to sqlite3");
    drop(child.stdin.take());
    let st = wait_exit(&mut child, "sqlite3", String::new);
    check_finished(&w, st, "");
}
