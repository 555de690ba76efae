//! Terminals: a tree that holds a pseudo-terminal pair (rooted at `script`, which holds the
//! master; the workload has the slave as fds 0-2 and as its controlling terminal), and a job
//! started from a terminal (`--shell-job`), restored onto the terminal of another `script`.
//! script(1) comes from util-linux; a test fails loudly when it is missing.

use crate::common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

fn script_bin() -> PathBuf {
    for dir in ["/usr/bin", "/bin"] {
        let p = Path::new(dir).join("script");
        if p.is_file() {
            return p;
        }
    }
    panic!("script(1) is required for the terminal tests and is not installed: install util-linux");
}

/// `closefds sh -c '... exec script -qfec "TTY W MODE" /dev/null' TTY W`: the run's pid is
/// script's; the tty workload runs as script's child on the pty's slave.
fn under_script(mode: &str) -> Spec {
    let mut s = Spec::c("closefds");
    s.name = format!("tty-{mode}");
    let cmd = format!("export SHELL=/bin/sh; exec {} -qfec \"exec $0 $1 {mode}\" /dev/null", script_bin().display());
    s.pre_args = vec!["sh".into(), "-c".into(), cmd.into(), ferry_workloads::path("tty").into_os_string()];
    s
}

/// Kills the workload processes that are not the run's own pid when a test ends (a failed
/// restore may leave them behind).
struct KillOnDrop(Vec<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if pid_alive(pid) {
                let _ = send_signal(pid, "KILL");
            }
        }
    }
}

fn pid_in(run: &Run, name: &str) -> i32 {
    let text = fs::read_to_string(run.w.join(name)).unwrap_or_default();
    text.trim().parse().unwrap_or_else(|_| run.fail(&format!("W/{name} holds {text:?}, not a pid")))
}

/// Wait until `pid` is gone entirely (not even a zombie: restore needs the number free).
fn wait_gone(run: &Run, pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Path::new(&format!("/proc/{pid}")).exists() {
        if Instant::now() > deadline {
            run.fail(&format!("pid {pid} still exists 20 s after the dump"));
        }
        sleep(Duration::from_millis(10));
    }
}

fn expect_in_log(run: &Run, path: &Path, what: &str) {
    let text = fs::read_to_string(path).unwrap_or_default();
    if !text.contains(what) {
        run.fail(&format!("{} does not show {what:?} written through the terminal:\n{text}", path.display()));
    }
}

#[test]
fn pty_control() {
    let mut run = Run::start(&under_script("pty"));
    let leader = pid_in(&run, "ready");
    send_signal(leader, "USR2").expect("send go");
    let status = run.wait_child_exit();
    run.expect_pass(status, "script");
    expect_in_log(&run, &run.w.join("out.log"), "TTY-WRITE-OK leader");
}

/// The pair is recreated (termios, window size), the session leader gets it back as its
/// controlling terminal, the child's group is the foreground group again, and what the workload
/// writes goes through the new pty to script and on to script's output.
#[test]
fn pty_pair_in_tree() {
    let mut run = Run::start(&under_script("pty"));
    let leader = pid_in(&run, "ready");
    let child = pid_in(&run, "child");
    let _cleanup = KillOnDrop(vec![leader, child]);
    run.dump_ok(&[]);
    run.reap_dumped();
    wait_gone(&run, leader);
    wait_gone(&run, child);
    let img = run.img();
    let pidfile = run.spawn_restore("restore", &img, &[]);
    run.wait_pidfile(&pidfile);
    let stat = fs::read_to_string(format!("/proc/{leader}/stat")).unwrap_or_default();
    let tty_nr: i64 = stat.rsplit_once(") ").and_then(|(_, r)| r.split_whitespace().nth(4)?.parse().ok()).unwrap_or(0);
    if tty_nr == 0 {
        run.fail(&format!("the restored session leader has no controlling terminal: {stat}"));
    }
    send_signal(leader, "USR2").expect("send go");
    let status = run.wait_restore_exit();
    run.expect_pass(status, "ferry restore");
    expect_in_log(&run, &run.w.join("out.log"), "TTY-WRITE-OK child");
    expect_in_log(&run, &run.w.join("out.log"), "TTY-WRITE-OK leader");
}

/// Start the job: its "shell" (the session leader, outside the dump) runs under script; the
/// job is in its own group in the foreground. The run's pid becomes the job's.
fn start_job() -> Run {
    let mut run = Run::start(&under_script("job"));
    run.pid = pid_in(&run, "ready");
    run
}

#[test]
fn shell_job_control() {
    let mut run = start_job();
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "script");
    expect_in_log(&run, &run.w.join("out.log"), "JOB-WRITE-OK");
}

/// `ferry dump --shell-job`, then `ferry restore --shell-job` run by another script session: the
/// job finds a terminal on fds 0-2 that is its controlling terminal, its own group in the
/// foreground, and its termios; it writes through the new terminal.
#[test]
fn shell_job() {
    let mut run = start_job();
    let stat = fs::read_to_string(format!("/proc/{}/stat", run.pid)).unwrap_or_default();
    let dumped_sid: i32 =
        stat.rsplit_once(") ").and_then(|(_, r)| r.split_whitespace().nth(3)?.parse().ok()).unwrap_or(-1);
    run.dump_ok(&["--shell-job"]);
    run.reap_dumped();
    wait_gone(&run, run.pid);
    let img = run.img();
    // Without --shell-job, restore refuses the image before creating anything.
    let res = run.ferry("restore-plain", &["restore".into(), "-D".into(), path_str(&img)], RESTORE_TIMEOUT);
    if res.status.success() || !res.stderr.contains("--shell-job") {
        run.fail(&format!("restore without --shell-job was not refused clearly: {}", res.stderr));
    }
    if Path::new(&format!("/proc/{}", run.pid)).exists() {
        run.fail("a refused restore left a process behind");
    }
    let pidfile = run.w.join("restored.pid");
    let log = run.w.join("restore-tty.log");
    let cmd =
        format!("exec {} restore --shell-job -D {} --pidfile {}", ferry_bin(), path_str(&img), path_str(&pidfile));
    let out = fs::File::create(&log).expect("create the restore log");
    let child = Command::new(ferry_workloads::path("closefds"))
        .arg(script_bin())
        .args(["-qfec", &cmd, "/dev/null"])
        .env("SHELL", "/bin/sh")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(out)
        .spawn()
        .expect("start script for ferry restore");
    run.restore = Some(child);
    run.wait_pidfile(&pidfile);
    // The job joined the session of ferry (its parent now), not the one it was dumped in.
    let field = |pid: i32, n: usize| -> i32 {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(") ").and_then(|(_, r)| r.split_whitespace().nth(n)?.parse().ok()).unwrap_or(-1)
    };
    let (ppid, sid) = (field(run.pid, 1), field(run.pid, 3));
    if sid != field(ppid, 3) || sid == dumped_sid || field(run.pid, 2) != run.pid {
        run.fail(&format!(
            "restored job: session {sid} (dumped in {dumped_sid}), ferry's {}, group {}",
            field(ppid, 3),
            field(run.pid, 2)
        ));
    }
    run.go();
    let status = run.wait_restore_exit();
    if run.result() != "PASS" {
        run.fail(&format!("restore log:\n{}", read_tail(&log, 8000)));
    }
    run.expect_pass(status, "script running ferry restore");
    expect_in_log(&run, &log, "JOB-WRITE-OK");
}

/// A job on a terminal outside the tree is refused without --shell-job, with one line naming
/// the terminal and the flag, and keeps running.
#[test]
fn shell_job_needs_flag() {
    let mut run = start_job();
    let img = run.img();
    let res = run.dump_to("dump", &img, &[]);
    let lines = res.stderr_lines();
    let pid = run.pid.to_string();
    if res.status.success()
        || lines.len() != 1
        || !lines[0].contains("--shell-job")
        || !lines[0].contains("/dev/pts/")
        || !lines[0].contains(&pid)
    {
        run.fail(&format!("dump without --shell-job: {}\n{}", describe(res.status), res.stderr));
    }
    if img.join("inventory.img").exists() {
        run.fail("a refused dump left a complete-looking image");
    }
    run.expect_running_untraced("after the refused dump");
    let _ = send_signal(run.pid, "KILL");
}

/// Input the terminal holds and nobody has read (script's end-of-file) is kept: the restored
/// child reads it from the new pty.
#[test]
fn pty_unread_input_kept() {
    let mut run = Run::start(&under_script("pty-unread"));
    let leader = pid_in(&run, "ready");
    let child = pid_in(&run, "child");
    let _cleanup = KillOnDrop(vec![leader, child]);
    run.dump_ok(&[]);
    run.reap_dumped();
    wait_gone(&run, leader);
    wait_gone(&run, child);
    let img = run.img();
    let pidfile = run.spawn_restore("restore", &img, &[]);
    run.wait_pidfile(&pidfile);
    send_signal(leader, "USR2").expect("send go");
    let status = run.wait_restore_exit();
    run.expect_pass(status, "ferry restore");
    expect_in_log(&run, &run.w.join("out.log"), "TTY-WRITE-OK child");
    expect_in_log(&run, &run.w.join("out.log"), "TTY-WRITE-OK leader");
}

/// Dumping reads the pair through copies of the tree's own fds and changes nothing: after
/// `dump -R` the original tree still passes its checks and writes through its pty.
#[test]
fn pty_leave_running() {
    let mut run = Run::start(&under_script("pty"));
    run.dump_ok(&["-R"]);
    run.expect_running_untraced("after dump -R");
    let leader = pid_in(&run, "ready");
    send_signal(leader, "USR2").expect("send go");
    let status = run.wait_child_exit();
    run.expect_pass(status, "script");
    expect_in_log(&run, &run.w.join("out.log"), "TTY-WRITE-OK leader");
    let out = Command::new(ferry_bin()).args(["inspect", "--json", &path_str(&run.img())]).output().expect("inspect");
    let json = String::from_utf8_lossy(&out.stdout);
    if !json.contains("\"kind\": 15") || !json.contains("\"foreground_pgrp\"") {
        run.fail(&format!("inspect does not show the pty master: {}", &json[..json.len().min(2000)]));
    }
}
