//! First contact (issue 12 §4): what a newcomer meets first. A missing tool fails a test with
//! one line naming the package; `restore` right after `dump` works although the dumped process
//! is not reaped yet; a non-root ferry names the capabilities it lacks; `dump -v` prints sizes in
//! human units; a real PostgreSQL 15 (its keyed SysV segment outlives the dump).

use crate::common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A test whose tool is missing fails with one line that names the Debian package.
#[test]
fn missing_tool_fails_with_one_line_naming_the_package() {
    assert!(need("sh", "dash").is_file());
    let err = std::panic::catch_unwind(|| need("ferry-no-such-tool", "ferry-no-such-package")).expect_err("no panic");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert_eq!(msg.lines().count(), 1, "not one line: {msg:?}");
    assert!(
        msg.ends_with("needs ferry-no-such-tool: install the Debian package ferry-no-such-package (scripts/setup.sh)"),
        "{msg:?}"
    );
}

/// The state letter of /proc/PID/stat.
fn state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// `ferry restore` at once after `ferry dump`, while the dumped process is still a zombie its
/// parent (this test) reaps only 1.5 s later: restore says once that it waits, then works.
#[test]
fn restore_right_after_dump_waits_for_the_zombie() {
    let mut run = Run::start(&Spec::c("counter"));
    run.dump_ok(&[]);
    let mut child = run.child.take().expect("the workload is our child");
    let pid = run.pid;
    assert_eq!(state(pid), Some('Z'), "the dumped process is not a zombie: the test does not test that");
    let reaper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        child.wait().map(|_| ())
    });
    let t0 = Instant::now();
    let pidfile = run.spawn_restore("restore", &run.img(), &[]);
    run.wait_pidfile(&pidfile);
    assert!(t0.elapsed() >= Duration::from_millis(1000), "restored before the zombie was reaped?");
    reaper.join().expect("reaper thread").expect("wait for the dumped process");
    run.go();
    let status = run.wait_restore_exit();
    run.expect_pass(status, "ferry restore");
    let err = fs::read_to_string(run.w.join("restore.err")).unwrap_or_default();
    let waiting = format!("waiting for pid {pid} to be reaped");
    assert_eq!(err.matches(&waiting).count(), 1, "restore did not say once {waiting:?}: {err}");
}

/// A pid held by a running process (dump -R left it running) fails the restore at once.
#[test]
fn restore_pid_held_by_running_process_fails_at_once() {
    let mut run = Run::start(&Spec::c("counter"));
    run.dump_ok(&["-R"]);
    let t0 = Instant::now();
    let out = Command::new(ferry_bin())
        .args(["restore", "-D", &path_str(&run.img())])
        .stdin(Stdio::null())
        .output()
        .expect("run ferry restore");
    let took = t0.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "restore over a running pid succeeded");
    assert!(err.contains(&format!("pid {} is already in use by a running process", run.pid)), "{err}");
    assert!(!err.contains("waiting for pid"), "restore waited for a running process: {err}");
    assert!(took < Duration::from_secs(3), "the refusal took {took:?}");
    run.expect_running_untraced("after the refused restore");
}

/// `setpriv` arguments that run a command as nobody, without any capability.
const AS_NOBODY: &[&str] = &["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"];

/// A copy of the ferry binary that nobody can run (the build tree may not be reachable).
fn ferry_for_nobody(w: &WorkDir) -> PathBuf {
    let copy = w.join("ferry");
    fs::copy(ferry_bin(), &copy).expect("copy ferry");
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).expect("chmod ferry");
    copy
}

fn as_nobody(w: &WorkDir, args: &[&str]) -> std::process::Output {
    Command::new(need("setpriv", "util-linux"))
        .args(AS_NOBODY)
        .arg(ferry_for_nobody(w))
        .args(args)
        .current_dir(&w.path)
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv")
}

/// As a user without capabilities, `ferry check` says dump and restore cannot work and which
/// capabilities are missing; dump and restore refuse at once, in one line naming them; an
/// EPERM elsewhere (ferry run --pidns) names them too.
#[test]
fn non_root_check_dump_and_restore_name_missing_capabilities() {
    let w = WorkDir::new("nonroot");
    let caps = "CAP_SYS_PTRACE, CAP_SYS_ADMIN, CAP_CHECKPOINT_RESTORE";
    let out = as_nobody(&w, &["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "ferry check as nobody: {text}");
    assert!(text.contains(&format!("MISSING  capabilities ({caps}): missing {caps} (run as root)")), "{text}");
    assert!(text.contains("dump and restore cannot work here"), "{text}");

    // A process of nobody's own, which nobody may ptrace: dump still refuses, naming the caps.
    let mut sleeper = Command::new("setpriv")
        .args(AS_NOBODY)
        .args(["sleep", "60"])
        .stdin(Stdio::null())
        .spawn()
        .expect("start sleep as nobody");
    let guard = ProcGuard::new();
    guard.add(sleeper.id() as i32);
    let pid = sleeper.id().to_string();
    let out = as_nobody(&w, &["dump", "-t", &pid, "-D", "img"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "dump as nobody succeeded");
    assert_eq!(
        err.trim(),
        format!(
            "ferry: dump of pid {pid} failed: ferry dump: needs {caps} (missing from this process's effective capabilities): run it as root"
        )
    );
    assert!(!w.join("img").exists(), "a refused dump created its directory");
    let out = as_nobody(&w, &["restore", "-D", "img"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.trim().lines().count() == 1, "{err}");
    assert!(err.contains(&format!("ferry restore: needs {caps}")), "{err}");
    // An EPERM from a command that does not check first (a new pid namespace needs
    // CAP_SYS_ADMIN) names the missing capabilities too.
    let out = as_nobody(&w, &["run", "--pidns", "--", "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.trim().lines().count() == 1, "{err}");
    assert!(
        err.contains("Operation not permitted")
            && err.trim().ends_with(&format!("(ferry lacks {caps}: run it as root)")),
        "{err}"
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();
}

/// `ferry -v dump` of a small process prints its page data in human units, not "0 MiB".
#[test]
fn dump_verbose_prints_sizes_in_human_units() {
    let mut run = Run::start(&Spec::c("counter"));
    let img = run.img();
    let res = run.dump_to("dump", &img, &["-v"]);
    assert!(res.status.success(), "dump failed: {}", res.stderr);
    let line = res.stderr.lines().find(|l| l.contains(" of pages")).unwrap_or_else(|| panic!("{}", res.stderr));
    let before = line.split(" of pages").next().unwrap_or_default();
    let mut words = before.rsplit(' ');
    let (unit, number) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    let number: f64 = number.parse().unwrap_or_else(|_| panic!("no size in {line:?}"));
    assert!(["B", "KiB", "MiB", "GiB"].contains(&unit) && number > 0.0, "{line:?}");
}

pub(crate) const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The uid and gid of a user, from /etc/passwd.
pub(crate) fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&name)).then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}

/// The SysV segments (id, key, nattch) created by process `cpid`.
pub(crate) fn sysv_segments_of(cpid: i32) -> Vec<(String, String, u64)> {
    let table = fs::read_to_string("/proc/sysvipc/shm").unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(4)?.parse::<i32>().ok()? == cpid)
                .then(|| Some((f[1].to_string(), f[0].to_string(), f[6].parse().ok()?)))?
        })
        .collect()
}

/// How many processes are attached to SysV segment `id`, if it exists.
pub(crate) fn nattch(id: &str) -> Option<u64> {
    let table = fs::read_to_string("/proc/sysvipc/shm").unwrap_or_default();
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&id)).then(|| f.get(6)?.parse().ok())?
    })
}

/// Removes a SysV segment on drop if it still exists.
pub(crate) struct SegmentCleanup(pub(crate) String);

impl Drop for SegmentCleanup {
    fn drop(&mut self) {
        if nattch(&self.0).is_some() {
            let _ = Command::new("ipcrm").args(["-m", &self.0]).status();
        }
    }
}

/// `setpriv` arguments that run a command as the user postgres.
pub(crate) const AS_POSTGRES: [&str; 3] = ["--reuid=postgres", "--regid=postgres", "--init-groups"];

/// A database cluster of the test's own: W/data made by initdb (user postgres, trust) and the
/// unix socket dir W/sock, both owned by postgres. Returns (data, sock).
pub(crate) fn init_cluster(w: &WorkDir) -> (PathBuf, PathBuf) {
    let initdb = need(&format!("{PG_BIN}/initdb"), "postgresql-15");
    let setpriv = need("setpriv", "util-linux");
    let (uid, gid) =
        user_ids("postgres").unwrap_or_else(|| panic!("{}", missing_tool("the user postgres", "postgresql-15")));
    let (data, sock) = (w.join("data"), w.join("sock"));
    for d in [&data, &sock] {
        fs::create_dir(d).expect("mkdir");
        std::os::unix::fs::chown(d, Some(uid), Some(gid)).expect("chown to postgres");
    }
    let out = Command::new(&setpriv)
        .args(AS_POSTGRES)
        .arg(&initdb)
        .args(["-D", &path_str(&data), "-A", "trust", "-U", "postgres", "--no-sync"])
        .stdin(Stdio::null())
        .output()
        .expect("run initdb");
    assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    (data, sock)
}

/// A real PostgreSQL 15 (as user postgres, its own data dir, port on 127.0.0.1 and unix socket
/// dir): a table is created, the postmaster's whole tree (checkpointer, background writer, WAL
/// writer, autovacuum and logical replication launchers) is dumped and killed, and restored.
/// The postmaster's keyed SysV segment outlives the dump unused: restore recreates it (before,
/// it failed with "the key ... is taken"). The restored server answers over TCP and its unix
/// socket, has the table, takes new rows, and shuts down cleanly.
#[test]
fn postgresql_15_dump_restore() {
    let postgres = need(&format!("{PG_BIN}/postgres"), "postgresql-15");
    let psql_bin = need(&format!("{PG_BIN}/psql"), "postgresql-client-15");
    let setpriv = need("setpriv", "util-linux");
    let w = WorkDir::new("postgres");
    let (data, sock) = init_cluster(&w);
    let as_postgres = |c: &mut Command| {
        c.args(AS_POSTGRES);
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let port_s = port.to_string();
    let log = w.join("postgres.log");
    // closefds and setpriv exec in place: the child's pid is the postmaster's.
    let mut c = workload_command(&ferry_workloads::path("closefds"));
    c.arg(&setpriv);
    as_postgres(&mut c);
    let mut child = c
        .arg(&postgres)
        .args(["-D", &path_str(&data), "-p", &port_s, "-k", &path_str(&sock)])
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log).expect("log"))
        .stderr(fs::File::create(w.join("postgres.err")).expect("log"))
        .spawn()
        .expect("start postgres");
    let pid = child.id() as i32;
    let guard = ProcGuard::new();
    guard.add(pid);
    let logs = || format!("postgres: {}\n{}", read_tail(&log, 3000), read_tail(&w.join("postgres.err"), 3000));
    let psql = |host: &Path, sql: &str| -> Result<String, String> {
        let out = Command::new(&psql_bin)
            .args([
                "-h",
                &path_str(host),
                "-p",
                &port_s,
                "-U",
                "postgres",
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .args(["-c", sql])
            .env("PGCONNECT_TIMEOUT", "5")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    };
    let tcp = Path::new("127.0.0.1");
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Err(e) = psql(tcp, "select 1") {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("postgres exited ({}): {e}\n{}", describe(st), logs());
        }
        assert!(Instant::now() < deadline, "postgres does not answer: {e}\n{}", logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    psql(tcp, "create table t(x int); insert into t values (1), (2), (3);").expect("create the table");
    let segs = sysv_segments_of(pid);
    let keyed = segs.iter().find(|(_, key, n)| key != "0" && *n >= 1).map(|s| s.0.clone());
    let keyed = keyed.unwrap_or_else(|| panic!("postgres has no keyed SysV segment: {segs:?}"));
    // (removed if the test fails: a killed postgres leaves it)
    let _segment = SegmentCleanup(keyed.clone());

    // An idle server: the backends that served psql are gone (one still exiting holds a
    // half-closed connection, which a dump refuses without --tcp-close) and reaped.
    let busy = || -> Vec<String> {
        let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        children
            .split_whitespace()
            .filter(|c| {
                let cmd = fs::read_to_string(format!("/proc/{c}/cmdline")).unwrap_or_default();
                cmd.is_empty() || cmd.starts_with("postgres: postgres ")
            })
            .map(str::to_string)
            .collect()
    };
    wait_for("the backends to exit", Duration::from_secs(30), || busy().is_empty());
    let img = w.join("img");
    let out = Command::new(ferry_bin())
        .args(["dump", "-t", &pid.to_string(), "-D", &path_str(&img)])
        .stdin(Stdio::null())
        .output()
        .expect("run ferry dump");
    assert!(out.status.success(), "dump of postgres failed: {}", String::from_utf8_lossy(&out.stderr));
    let _ = child.wait();
    wait_image_pids_gone(&img);
    assert_eq!(
        nattch(&keyed),
        Some(0),
        "the keyed segment {keyed} did not outlive the dump unused: the test does not test that"
    );
    let mut restore = Command::new(ferry_bin())
        .args(["restore", "-D", &path_str(&img)])
        .stdin(Stdio::null())
        .stderr(fs::File::create(w.join("restore.err")).expect("restore.err"))
        .spawn()
        .expect("ferry restore");
    let restore_log = || format!("restore: {}\n{}", read_tail(&w.join("restore.err"), 3000), logs());
    let deadline = Instant::now() + Duration::from_secs(60);
    let sum = loop {
        match psql(tcp, "select sum(x) from t") {
            Ok(sum) => break sum,
            Err(e) => {
                if let Ok(Some(st)) = restore.try_wait() {
                    panic!("ferry restore ended ({}) before postgres answered: {e}\n{}", describe(st), restore_log());
                }
                assert!(Instant::now() < deadline, "the restored postgres does not answer: {e}\n{}", restore_log());
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    assert_eq!(sum, "6", "{}", restore_log());
    let sum = psql(&sock, "insert into t values (10); select sum(x) from t;")
        .unwrap_or_else(|e| panic!("over the unix socket: {e}\n{}", restore_log()));
    assert_eq!(sum, "16");
    assert!(nattch(&keyed) >= Some(1), "the restored postgres is not attached to segment {keyed}");
    // A fast shutdown: postgres exits 0 (and so does ferry restore, its parent) and removes
    // its segment.
    send_signal(pid, "INT").expect("stop postgres");
    let st = wait_timeout(&mut restore, Duration::from_secs(60)).expect("the restored postgres did not stop");
    assert!(st.success(), "the restored postgres {} on SIGINT\n{}", describe(st), restore_log());
    assert_eq!(nattch(&keyed), None, "postgres left its segment {keyed}");
}

/// A child that exits just as the dump starts (listed alive with its parent's children, a
/// zombie by the time ferry gets to it: its parent, frozen, cannot reap it) is recorded as a
/// zombie, not a failed dump ("is a zombie"), and comes back as one. Seen with PostgreSQL's
/// exiting backends; `FERRY_FAULT=pause-after-children:MS` holds the window open.
#[test]
fn child_exiting_during_the_dump_is_recorded_as_a_zombie() {
    let w = WorkDir::new("exiting-child");
    // sleep 1000 inherits the short sleep as its child and never reaps it.
    let mut child = workload_command(&ferry_workloads::path("closefds"))
        .args(["/bin/sh", "-c", "sleep 0.6 & exec sleep 1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sh");
    let pid = child.id() as i32;
    let guard = ProcGuard::new();
    guard.add(pid);
    let children = || fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    wait_for("sleep 1000 with its child", Duration::from_secs(10), || {
        fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e.ends_with("sleep")) && !children().trim().is_empty()
    });
    let kid: i32 = children().trim().parse().expect("one child");
    assert_ne!(state(kid), Some('Z'), "the child exited too early: the test does not test the race");
    let img = w.join("img");
    let out = Command::new(ferry_bin())
        .args(["dump", "-t", &pid.to_string(), "-D", &path_str(&img)])
        .env("FERRY_FAULT", "pause-after-children:1500")
        .stdin(Stdio::null())
        .output()
        .expect("run ferry dump");
    assert!(out.status.success(), "dump failed: {}", String::from_utf8_lossy(&out.stderr));
    let _ = child.wait();
    wait_image_pids_gone(&img);
    let out = Command::new(ferry_bin())
        .args(["restore", "-d", "-D", &path_str(&img)])
        .stdin(Stdio::null())
        .output()
        .expect("run ferry restore");
    assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(state(kid), Some('Z'), "the exited child is not back as a zombie");
    assert_eq!(children().trim(), kid.to_string(), "the zombie is not the restored process's child");
}
