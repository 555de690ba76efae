//! First contact (issue 12 §4): what a newcomer meets first. A missing tool fails a test with
//! one line naming the package; `restore` right after `dump` works although the dumped process
//! is not reaped yet; a non-root ferry names the capabilities it lacks; `dump -v` prints sizes in
//! human units; a real PostgreSQL 15 (its keyed SysV segment outlives the dump).

use crate::common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
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
/// capabilities are missing; dump and restore refuse at once, in one line naming them.
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
