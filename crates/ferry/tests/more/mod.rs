//! Fault injection inside ferry (FERRY_FAULT), a vDSO mismatch, and stdio inherited from
//! outside the image.

use crate::common::*;
use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::Duration;

/// Run ferry with FERRY_FAULT set; returns its exit status.
fn ferry_with_fault(run: &mut Run, fault: &str, args: &[String], label: &str) -> std::process::ExitStatus {
    let err = run.w.join(&format!("{label}.err"));
    let err_f = File::create(&err).expect("create ferry stderr file");
    let mut child = Command::new(ferry_bin())
        .args(args)
        .env("FERRY_FAULT", fault)
        // (`dump -R` of one process would otherwise copy its pages ahead, releasing it once
        // more after the moment it is frozen to start tracking: a release fault fires there.)
        .env("FERRY_DUMP_R", "fork")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_f)
        .spawn()
        .expect("start ferry");
    match wait_timeout(&mut child, Duration::from_secs(120)) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            run.fail(&format!("ferry with {fault} did not finish"));
        }
    }
}

/// ferry SIGKILLs itself while it has the target's registers borrowed for an injected syscall
/// (the worst moment): the target must go on exactly as before — the fpu workload compares every
/// register-heavy epoch bit for bit, and must still PASS.
#[test]
fn kill_ferry_at_injected_syscalls() {
    let mut run = Run::start(&Spec::c("fpu"));
    // (12 injected syscalls in all for this one-thread process: the last one too)
    for n in [1, 2, 5, 9, 12] {
        let dir = run.w.join(&format!("img-fault-{n}"));
        let args = vec!["dump".into(), "-t".into(), run.pid.to_string(), "-D".into(), path_str(&dir)];
        let status = ferry_with_fault(&mut run, &format!("kill-at-injection:{n}"), &args, &format!("fault{n}"));
        if status.success() {
            run.fail(&format!("ferry with kill-at-injection:{n} finished its dump: the fault point was not reached"));
        }
        sleep(Duration::from_millis(200));
        run.expect_running_untraced(&format!("after ferry was killed at injected syscall {n}"));
        if dir.join("inventory.img").exists() {
            run.fail(&format!("a dump killed at injection {n} left an inventory (complete-looking image)"));
        }
    }
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload after five killed dumps");
}

/// The same with a multi-threaded target: every thread is borrowed in turn.
#[test]
fn kill_ferry_at_injected_syscalls_threads() {
    let mut run = Run::start(&Spec::c("threads"));
    // (25 injected syscalls for its 7 threads: the main thread's first, then 2 per other thread)
    for n in [1, 8, 14, 19, 25] {
        let dir = run.w.join(&format!("img-fault-{n}"));
        let args = vec!["dump".into(), "-t".into(), run.pid.to_string(), "-D".into(), path_str(&dir)];
        let status = ferry_with_fault(&mut run, &format!("kill-at-injection:{n}"), &args, &format!("fault{n}"));
        if status.success() {
            run.fail(&format!("ferry with kill-at-injection:{n} finished its dump: the fault point was not reached"));
        }
        sleep(Duration::from_millis(200));
        run.expect_running_untraced(&format!("after ferry was killed at injected syscall {n}"));
    }
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the threads workload after killed dumps");
}

/// ferry dies in the middle of a restore (after the child exists, while it rebuilds the address
/// space): no half-restored process may remain, and a second restore then succeeds.
#[test]
fn kill_ferry_during_restore_leaves_nothing() {
    let mut run = Run::start(&Spec::c("mem_anon"));
    run.dump_ok(&[]);
    run.reap_dumped();
    for n in [1, 4, 12] {
        let args = vec!["restore".into(), "-D".into(), path_str(&run.img())];
        let status = ferry_with_fault(&mut run, &format!("kill-at-injection:{n}"), &args, &format!("restore-fault{n}"));
        if status.success() {
            run.fail(&format!("restore with kill-at-injection:{n} succeeded: fault point not reached"));
        }
        // The child dies with ferry (PTRACE_O_EXITKILL / PR_SET_PDEATHSIG) ...
        run.wait_pid_gone(&format!("after ferry died during restore (injection {n})"));
        // ... and PID 1, which reaps slowly here, frees its pid for the next attempt.
        let proc_dir = format!("/proc/{}", run.pid);
        wait_for("init to reap the killed restore child", Duration::from_secs(90), || !Path::new(&proc_dir).exists());
    }
    run.restore_and_verify("a restore after three interrupted ones");
}

/// Rewrite an image as if it came from a kernel with another vDSO: restore must refuse it, with
/// an error that says so, and create no process.
#[test]
fn vdso_mismatch_is_refused() {
    let mut run = Run::start(&Spec::c("mem_anon"));
    run.dump_ok(&[]);
    run.reap_dumped();
    let img = run.img();
    let reader = ferry_image::ImageReader::open(&img).expect("open image");
    let inventory = reader.inventory().clone();
    let mut p = reader.read_process(run.pid).expect("read process record");
    let pages = fs::read(img.join(ferry_image::pages_file(run.pid))).expect("read pages");
    let mm = p.mm.as_mut().expect("mm record");
    mm.vdso_crc32 ^= 0xdead_beef;
    let forged = run.w.join("img-other-kernel");
    let mut w = ferry_image::ImageWriter::create(&forged).expect("create forged image");
    w.write_process(&p).expect("write process");
    let mut s = w.stream(&ferry_image::pages_file(run.pid)).expect("stream pages");
    s.write_all(&pages).expect("write pages");
    w.finish_stream(s).expect("finish pages");
    w.commit(inventory).expect("commit");
    let args = vec!["restore".into(), "-D".into(), path_str(&forged)];
    let res = run.ferry("restore-forged", &args, Duration::from_secs(60));
    if res.status.success() || !res.stderr.contains("vDSO") {
        run.fail(&format!(
            "a restore with a foreign vDSO was not refused clearly: {} / {}",
            describe(res.status),
            res.stderr
        ));
    }
    if res.stderr.trim().lines().count() != 1 {
        run.fail(&format!("the error is not one line: {:?}", res.stderr));
    }
    if pid_alive(run.pid) {
        run.fail("a refused restore left a process behind");
    }
    // The genuine image still restores.
    run.restore_and_verify("the genuine image");
}

fn counter_lines(p: &Path) -> Vec<u64> {
    fs::read_to_string(p).unwrap_or_default().lines().filter_map(|l| l.strip_prefix("counter ")?.parse().ok()).collect()
}

/// stdout is a pipe owned by a process outside the image (like a shell job's terminal): the
/// dump records it as inherited, and the restored process writes to ferry's own stdout.
#[test]
fn stdout_pipe_is_inherited_from_ferry() {
    let w = WorkDir::new("inherit");
    let mut child = workload_command(&ferry_workloads::path("counter"))
        .arg(&w.path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(w.join("err.log")).expect("err log"))
        .spawn()
        .expect("start counter");
    let pid = child.id() as i32;
    // (killed with its tree if the test fails; the restored process has the same pid)
    let guard = ProcGuard::new();
    guard.add(pid);
    wait_for("ready", Duration::from_secs(20), || w.join("ready").exists());
    let img = w.join("img");
    let out = Command::new(ferry_bin())
        .args(["dump", "-t", &pid.to_string(), "-D", &path_str(&img)])
        .output()
        .expect("run ferry dump");
    assert!(out.status.success(), "dump failed: {}", String::from_utf8_lossy(&out.stderr));
    let _ = child.wait();
    wait_for("the pid to be free", Duration::from_secs(20), || !pid_alive(pid));
    let inspect = Command::new(ferry_bin()).args(["inspect", &path_str(&img)]).output().expect("inspect");
    let text = String::from_utf8_lossy(&inspect.stdout);
    assert!(text.lines().any(|l| l.contains("fd    1 Inherited")), "fd 1 not recorded as inherited:\n{text}");
    let log = w.join("restored-stdout.log");
    let status = Command::new(ferry_bin())
        .args(["restore", "-d", "-D", &path_str(&img)])
        .stdout(File::create(&log).expect("log"))
        .status()
        .expect("run ferry restore");
    assert!(status.success(), "restore -d failed");
    wait_for("output on ferry's stdout", Duration::from_secs(20), || !counter_lines(&log).is_empty());
    let first = counter_lines(&log)[0];
    assert!(first >= 1, "the restored counter started over at {first}");
    send_signal(pid, "KILL").expect("kill the restored counter");
}

/// Only touched, non-zero pages go into the image: mem_anon reserves a 1 GiB sparse region with
/// 7 touched pages next to ~9 MiB of real data.
#[test]
fn sparse_memory_is_not_stored() {
    let mut run = Run::start(&Spec::c("mem_anon"));
    run.dump_ok(&[]);
    run.reap_dumped();
    let pages = fs::metadata(run.img().join(ferry_image::pages_file(run.pid))).expect("stat pages").len();
    let reader = ferry_image::ImageReader::open(&run.img()).expect("open image");
    let p = reader.read_process(run.pid).expect("process record");
    let mm = p.mm.expect("mm");
    let reserved: u64 = mm.vmas.iter().map(|v| v.end - v.start).sum();
    if reserved < 1 << 30 {
        run.fail(&format!("the workload mapped only {reserved} bytes; expected its 1 GiB sparse region"));
    }
    if pages > 32 << 20 {
        run.fail(&format!("pages file is {pages} bytes for {reserved} bytes of mappings: untouched pages were stored"));
    }
    run.restore_and_verify("mem_anon");
}

/// A process tree: a root and three children streaming numbers through two pipes (producer ->
/// filter -> consumer) across the checkpoint, unread bytes in both pipes; after restore the
/// root reaps them with waitpid and the consumer must have seen every number once, in order.
#[test]
fn pipeline_tree() {
    let mut run = Run::start(&Spec::c("pipeline"));
    run.dump_ok(&[]);
    run.reap_dumped();
    let reader = ferry_image::ImageReader::open(&run.img()).expect("open image");
    if reader.inventory().pids.len() != 4 {
        run.fail(&format!("the image holds {} processes, expected 4", reader.inventory().pids.len()));
    }
    wait_image_pids_gone(&run.img());
    let pidfile = run.spawn_restore("restore", &run.img(), &[]);
    run.wait_pidfile(&pidfile);
    // Let the restored tree stream for a while before stopping it.
    sleep(Duration::from_millis(500));
    run.go();
    let status = run.wait_restore_exit();
    run.expect_pass(status, "the pipeline tree");
}

/// `dump -R` of a tree leaves every process running, and the tree still works.
#[test]
fn pipeline_tree_leave_running() {
    let mut run = Run::start(&Spec::c("pipeline"));
    run.dump_ok(&["-R"]);
    run.expect_running_untraced("after dump -R of the tree");
    sleep(Duration::from_millis(300));
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the pipeline tree after dump -R");
}

/// MAP_SHARED|MAP_ANONYMOUS memory shared by a parent and its child (pages each touched only in
/// one of them) stays one shared object after restore.
#[test]
fn shared_anonymous_memory_tree() {
    cycle_tree(&Spec::c("shm"), &[]);
}

/// sqlite3 (the real CLI) in the middle of a write transaction — with its POSIX locks on the
/// database, its journal open, and its stdin a pipe from outside (inherited at restore): after
/// restore the transaction continues, commits, and another sqlite3 sees the rows.
#[test]
fn sqlite3_mid_transaction() {
    use std::io::Write;
    let sqlite = "/usr/bin/sqlite3";
    need(sqlite, "sqlite3");
    let w = WorkDir::new("sqlite");
    let db = w.join("t.db");
    let st =
        Command::new(sqlite).arg(&db).arg("create table t(x); insert into t values(0);").status().expect("sqlite3");
    assert!(st.success(), "cannot create the database");
    let out = w.join("out.txt");
    let mut child = workload_command(&ferry_workloads::path("closefds"))
        .arg(sqlite)
        .arg(&db)
        .stdin(Stdio::piped())
        .stdout(File::create(&out).expect("out"))
        .stderr(File::create(w.join("err.txt")).expect("err"))
        .spawn()
        .expect("start sqlite3");
    let pid = child.id() as i32;
    // (the original, then the restored sqlite3, same pid: killed if the test fails)
    let guard = ProcGuard::new();
    guard.add(pid);
    {
        let stdin = child.stdin.as_mut().expect("stdin");
        stdin
            .write_all(b"BEGIN; INSERT INTO t VALUES(1); INSERT INTO t VALUES(2); SELECT 'mid', count(*) FROM t;\n")
            .expect("write to sqlite3");
        stdin.flush().expect("flush");
    }
    wait_for("sqlite3 to answer mid-transaction", Duration::from_secs(20), || {
        fs::read_to_string(&out).unwrap_or_default().contains("mid|3")
    });
    let fdinfo_has_lock = fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("fdinfo")
        .filter_map(|e| e.ok())
        .any(|e| fs::read_to_string(e.path()).unwrap_or_default().contains("lock:"));
    assert!(fdinfo_has_lock, "sqlite3 holds no file lock mid-transaction: the test does not test locks");
    let img = w.join("img");
    let res =
        Command::new(ferry_bin()).args(["dump", "-t", &pid.to_string(), "-D", &path_str(&img)]).output().expect("dump");
    assert!(res.status.success(), "dump of sqlite3 failed: {}", String::from_utf8_lossy(&res.stderr));
    drop(child.stdin.take());
    let _ = child.wait();
    wait_for("the pid to be free", Duration::from_secs(30), || !Path::new(&format!("/proc/{pid}")).exists());
    let mut restore = Command::new(ferry_bin())
        .args(["restore", "-D", &path_str(&img)])
        .stdin(Stdio::piped())
        .stderr(File::create(w.join("restore.err")).expect("restore.err"))
        .spawn()
        .expect("ferry restore");
    // The restored sqlite3 holds its locks again.
    wait_for("the restored sqlite3 to hold its file lock", Duration::from_secs(20), || {
        fs::read_dir(format!("/proc/{pid}/fdinfo"))
            .map(|d| {
                d.filter_map(|e| e.ok()).any(|e| fs::read_to_string(e.path()).unwrap_or_default().contains("lock:"))
            })
            .unwrap_or(false)
    });
    {
        let stdin = restore.stdin.as_mut().expect("stdin");
        stdin
            .write_all(b"INSERT INTO t VALUES(3); COMMIT; SELECT 'end', count(*), sum(x) FROM t;\n.quit\n")
            .expect("write to the restored sqlite3");
    }
    drop(restore.stdin.take());
    let status = wait_timeout(&mut restore, Duration::from_secs(60)).expect("the restored sqlite3 did not exit");
    let text = fs::read_to_string(&out).unwrap_or_default();
    assert!(
        status.success() && text.contains("end|4|6"),
        "restored sqlite3: {} output {text:?} stderr {:?}",
        describe(status),
        fs::read_to_string(w.join("restore.err")).unwrap_or_default()
    );
    let check = Command::new(sqlite).arg(&db).arg("select count(*), sum(x) from t;").output().expect("sqlite3");
    assert_eq!(String::from_utf8_lossy(&check.stdout).trim(), "4|6", "the committed rows are not in the database");
}

/// A real shell pipeline, `python3 producer | cat | python3 consumer` under /bin/sh (4
/// processes, 2 pipes with bytes in flight, sh blocked in wait): checkpointed mid-stream; after
/// restore every line arrives once and in order, and sh returns the consumer's verdict.
#[test]
fn shell_pipeline() {
    let w = WorkDir::new("shpipe");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ferry-workloads/sh/pipeline.sh");
    let mut child = workload_command(&ferry_workloads::path("closefds"))
        .arg("/bin/sh")
        .arg(&script)
        .arg(&w.path)
        .stdin(Stdio::null())
        .stdout(File::create(w.join("out.log")).expect("out"))
        .stderr(File::create(w.join("err.log")).expect("err"))
        .spawn()
        .expect("start sh");
    let pid = child.id() as i32;
    // (killed with its tree if the test fails; the restored process has the same pid)
    let guard = ProcGuard::new();
    guard.add(pid);
    wait_for("the pipeline to stream 200 lines", Duration::from_secs(30), || w.join("ready").exists());
    let img = w.join("img");
    let res =
        Command::new(ferry_bin()).args(["dump", "-t", &pid.to_string(), "-D", &path_str(&img)]).output().expect("dump");
    assert!(res.status.success(), "dump of the shell pipeline failed: {}", String::from_utf8_lossy(&res.stderr));
    let _ = child.wait();
    let n = ferry_image::ImageReader::open(&img).expect("image").inventory().pids.len();
    assert_eq!(n, 4, "the image should hold sh, python3, cat, python3");
    wait_image_pids_gone(&img);
    let mut restore = Command::new(ferry_bin())
        .args(["restore", "-D", &path_str(&img)])
        .stderr(File::create(w.join("restore.err")).expect("restore.err"))
        .spawn()
        .expect("ferry restore");
    // Let it stream on for a while after the restore, then end the stream at its source.
    sleep(Duration::from_millis(700));
    let producer: i32 = fs::read_to_string(w.join("producer.pid")).expect("producer.pid").trim().parse().expect("pid");
    send_signal(producer, "TERM").expect("stop the producer");
    let status = wait_timeout(&mut restore, Duration::from_secs(60)).expect("the restored pipeline did not finish");
    let result = fs::read_to_string(w.join("result")).unwrap_or_default();
    assert!(
        status.success() && result.trim() == "PASS",
        "restored shell pipeline: {} result {result:?} log {:?} restore {:?}",
        describe(status),
        fs::read_to_string(w.join("err.log")).unwrap_or_default(),
        fs::read_to_string(w.join("restore.err")).unwrap_or_default()
    );
}

/// Zombies: a parent with an unreaped child that exited 42, one killed by SIGTERM, and a live
/// child. After restore the parent reaps the zombies with exactly those statuses, and receives
/// no SIGCHLD it did not have before.
#[test]
fn zombies_stay_reapable() {
    cycle_tree(&Spec::c("zombies"), &[]);
}

/// Sessions and groups whose leaders exited: orphans of a subreaper root in a leaderless
/// session and a leaderless group (restored with helper processes), and a child left in its
/// parent's birth session. Every process checks its sid, pgid and ppid after restore; the root
/// sees no leftover helper and no SIGCHLD.
#[test]
fn sessions_with_dead_leaders() {
    cycle_tree(&Spec::c("sessions"), &[]);
}

/// One epoll instance shared by a parent and its child, each having registered its own eventfd
/// (and the parent holding another file at the child's target fd number): after restore both
/// targets fire with their data, seen from either process.
#[test]
fn epoll_shared_across_processes() {
    cycle_tree(&Spec::c("epoll_shared"), &[]);
}

/// One epoll instance and its target inherited by a child, both still holding the target at
/// the same number: the registration is one, and must be recreated once (a second
/// EPOLL_CTL_ADD failed the restore with EEXIST).
#[test]
fn epoll_inherited_with_its_target() {
    cycle_tree(&Spec::c("epoll_fork"), &[]);
}

/// Registrations that outlived their fd number (the file still open at another number; the
/// number now free, or holding another file): found with kcmp(KCMP_EPOLL_TFD) and registered
/// again under their old number, in an instance shared by a parent and its child.
#[test]
fn epoll_registration_of_a_closed_fd() {
    cycle_tree(&Spec::c("epoll_fork").args(&["closed"]), &[]);
}

/// POSIX shared memory (a /dev/shm object) mapped by a parent and its child, the parent also
/// holding its fd: contents, sharing between the processes and with the object, fd offset.
#[test]
fn posix_shm_shared_with_child() {
    cycle_tree(&Spec::c("posix_shm"), &[]);
}

/// A POSIX message queue cannot be saved yet: refused in one line, the process intact. (A
/// clone(CLONE_FILES) child and a thread with its own nice value, once refused here, are
/// restored: `external::clone_files`, `memattr::thread_sched_kept`.)
#[test]
fn refuses_mqueue() {
    let mut run = Run::start(&Spec::c("shared_clone").args(&["mqueue"]));
    dump_refused(run.pid, &run.w.join("img"), "message queue");
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the process after the refused dump");
}

/// A memfd held through an fd and a shared mapping, and by a child through the same fd: name,
/// content and offset survive, and it is still one object across both processes.
#[test]
fn memfd_shared_with_child() {
    cycle_tree(&Spec::c("memfd"), &[]);
}

/// What ferry cannot save yet is refused with one line naming it, and the target is left as it
/// was: a kernel thread, a process in another namespace, a process traced by someone else; a
/// stopped process in another namespace stays stopped.
#[test]
fn refuses_what_it_cannot_save() {
    let w = WorkDir::new("refuse");
    dump_refused(2, &w.join("kthread"), "kernel thread");
    let mut child = workload_command(&ferry_workloads::path("closefds"))
        .args(["unshare", "--user", ferry_workloads::path("counter").to_str().expect("utf-8 path")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start unshare --user counter");
    let pid = child.id() as i32;
    // (killed with its tree if the test fails; the restored process has the same pid)
    let guard = ProcGuard::new();
    guard.add(pid);
    wait_for("the namespaced counter to start", Duration::from_secs(10), || {
        fs::read_link(format!("/proc/{pid}/ns/user")).ok() != fs::read_link("/proc/self/ns/user").ok()
            && fs::read_link(format!("/proc/{pid}/exe")).map(|e| e.ends_with("counter")).unwrap_or(false)
    });
    // (a user namespace without maps: its uid is not one ferry could set from inside)
    dump_refused(pid, &w.join("ns"), "is not mapped in its user namespace");
    assert!(pid_alive(pid), "the namespaced process did not survive a refused dump");
    {
        let _held = HeldTraced::new(pid);
        dump_refused(pid, &w.join("traced"), "already traced");
    }
    send_signal(pid, "STOP").expect("stop it");
    wait_for("the process to stop", Duration::from_secs(10), || {
        fs::read_to_string(format!("/proc/{pid}/stat")).map(|s| s.contains(") T ")).unwrap_or(false)
    });
    dump_refused(pid, &w.join("stopped"), "is not mapped in its user namespace");
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(stat.contains(") T "), "the stopped process is not stopped any more after a refused dump: {stat}");
    let _ = child.kill();
    let _ = child.wait();
}

/// A process whose executable was deleted: the exe link comes back as "PATH (deleted)" (from the
/// file's content carried in the image) and the process runs on.
#[test]
fn deleted_executable() {
    let w = WorkDir::new("delexe");
    let exe = w.join("counter-copy");
    fs::copy(ferry_workloads::path("counter"), &exe).expect("copy the counter");
    let mut child = workload_command(&exe)
        .arg(&w.path)
        .stdin(Stdio::null())
        .stdout(File::create(w.join("out.log")).expect("out"))
        .stderr(Stdio::null())
        .spawn()
        .expect("start the copy");
    let pid = child.id() as i32;
    // (killed with its tree if the test fails; the restored process has the same pid)
    let guard = ProcGuard::new();
    guard.add(pid);
    wait_for("ready", Duration::from_secs(20), || w.join("ready").exists());
    fs::remove_file(&exe).expect("delete the executable");
    let img = w.join("img");
    let out =
        Command::new(ferry_bin()).args(["dump", "-t", &pid.to_string(), "-D", &path_str(&img)]).output().expect("dump");
    assert!(out.status.success(), "dump failed: {}", String::from_utf8_lossy(&out.stderr));
    let _ = child.wait();
    wait_for("the pid to be free", Duration::from_secs(30), || !Path::new(&format!("/proc/{pid}")).exists());
    let mut restore = Command::new(ferry_bin())
        .args(["restore", "-D", &path_str(&img), "--pidfile", &path_str(&w.join("pid"))])
        .stderr(File::create(w.join("restore.err")).expect("err"))
        .spawn()
        .expect("restore");
    wait_for("the pidfile", Duration::from_secs(30), || w.join("pid").exists());
    let link = fs::read_link(format!("/proc/{pid}/exe")).expect("exe link");
    assert_eq!(link.to_string_lossy(), format!("{} (deleted)", exe.display()), "exe link after restore");
    send_signal(pid, "USR2").expect("go");
    let status = wait_timeout(&mut restore, Duration::from_secs(30)).expect("the restored counter did not exit");
    assert!(status.success(), "restored counter: {}", describe(status));
}

/// `ferry run --pidns`: a job (the sessions tree: a subreaper, orphans whose session and group
/// leaders are gone) in its own pid namespace under ferry's init. Dumping the init takes the
/// whole namespace; restore recreates it in a new namespace, although pids 1-10 are in use on
/// the host, and the job verifies its sids, pgids and parents there.
#[test]
fn pidns_job_moves_as_a_whole_namespace() {
    let w = WorkDir::new("pidns");
    let pidfile = w.join("init.pid");
    let log = |name: &str| File::create(w.join(name)).expect("log file");
    let status = Command::new(ferry_bin())
        .args(["run", "--pidns", "-d", "--pidfile", &path_str(&pidfile), "--"])
        .arg(ferry_workloads::path("sessions"))
        .arg(&w.path)
        .stdin(Stdio::null())
        .stdout(log("run.log"))
        .stderr(log("run.err"))
        .status()
        .expect("run ferry run");
    assert!(status.success(), "ferry run failed: {}", read_tail(&w.join("run.err"), 2000));
    wait_for("ready", Duration::from_secs(30), || w.join("ready").exists());
    let init: i32 = fs::read_to_string(&pidfile).expect("pidfile").trim().parse().expect("pid");
    let guard = ProcGuard::new();
    guard.add(init);
    let inner = fs::read_to_string(w.join("ready")).expect("ready");
    assert_eq!(inner.trim(), "2", "the job does not see its namespace's pids");
    let img = w.join("img");
    let out = Command::new(ferry_bin())
        .args(["dump", "-t", &init.to_string(), "-D", &path_str(&img)])
        .output()
        .expect("run ferry dump");
    assert!(out.status.success(), "dump of the init failed: {}", String::from_utf8_lossy(&out.stderr));
    wait_for("the namespace to be gone", Duration::from_secs(90), || !pid_alive(init));
    let reader = ferry_image::ImageReader::open(&img).expect("open image");
    assert!(reader.inventory().pidns && reader.inventory().root_pid == 1, "not recorded as a whole pid namespace");
    assert_eq!(reader.inventory().pids.len(), 8, "the init and the 7 processes of the job");
    let restored_pid = w.join("restored.pid");
    let mut restore = Command::new(ferry_bin())
        .args(["restore", "-D", &path_str(&img), "--pidfile", &path_str(&restored_pid)])
        .stdin(Stdio::null())
        .stdout(log("restore.log"))
        .stderr(log("restore.err"))
        .spawn()
        .expect("run ferry restore");
    wait_for("the restored init", Duration::from_secs(30), || restored_pid.exists());
    let host: i32 = fs::read_to_string(&restored_pid).expect("pidfile").trim().parse().expect("pid");
    assert_ne!(host, 1);
    // The init forwards the go signal to the job.
    send_signal(host, "USR2").expect("signal the restored init");
    let status = wait_timeout(&mut restore, Duration::from_secs(60)).unwrap_or_else(|| {
        let _ = restore.kill();
        panic!("the restored job did not finish: {}", read_tail(&w.join("restore.err"), 2000))
    });
    let result = fs::read_to_string(w.join("result")).unwrap_or_default();
    assert!(
        status.success() && result.trim() == "PASS",
        "restored job: {} {result}\n{}",
        describe(status),
        read_tail(&w.join("run.log"), 3000)
    );
}

/// `ferry run` without a namespace: the job runs in its own session and ferry returns its
/// exit status; with -d it prints the job's pid and returns at once, and the job can be dumped
/// and restored like any process.
#[test]
fn ferry_run_starts_jobs() {
    let st = Command::new(ferry_bin()).args(["run", "--", "sh", "-c", "exit 7"]).status().expect("ferry run");
    assert_eq!(st.code(), Some(7), "ferry run did not pass the job's exit status through");
    let w = WorkDir::new("run-d");
    let pidfile = w.join("job.pid");
    let st = Command::new(ferry_bin())
        .args(["run", "-d", "--pidfile", &path_str(&pidfile), "--"])
        .arg(ferry_workloads::path("counter"))
        .arg(&w.path)
        .stdin(Stdio::null())
        .stdout(File::create(w.join("job.log")).expect("log"))
        .stderr(Stdio::null())
        .status()
        .expect("ferry run -d");
    assert!(st.success());
    let pid: i32 = fs::read_to_string(&pidfile).expect("pidfile").trim().parse().expect("pid");
    let guard = ProcGuard::new();
    guard.add(pid);
    let printed = fs::read_to_string(w.join("job.log")).unwrap_or_default();
    assert!(printed.lines().any(|l| l.trim() == pid.to_string()), "ferry run -d did not print the pid: {printed:?}");
    wait_for("ready", Duration::from_secs(20), || w.join("ready").exists());
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("the job runs");
    let fields: Vec<&str> = stat.rsplit_once(") ").map(|(_, r)| r.split(' ').collect()).unwrap_or_default();
    assert_eq!(
        fields.get(2).and_then(|g| g.parse::<i32>().ok()),
        Some(pid),
        "the job leads its own group (and session)"
    );
    let img = w.join("img");
    let out = Command::new(ferry_bin())
        .args(["dump", "-t", &pid.to_string(), "-D", &path_str(&img), "-R"])
        .output()
        .expect("ferry dump");
    assert!(out.status.success(), "dump of a ferry run job: {}", String::from_utf8_lossy(&out.stderr));
    send_signal(pid, "KILL").expect("kill the job");
}

/// A signal that arrives just as a process frozen inside pause(2) resumes must end the call
/// (EINTR after the handler), as it would have without ferry — not run the handler and then
/// re-enter pause for good. ferry sends the go signal itself right before it lets the process go
/// (FERRY_FAULT=signal-at-release), the worst moment: after `dump -R` (the original process) and
/// after a restore. The workload passes only if pause returned.
#[test]
fn signal_at_release_interrupts_the_restarted_syscall() {
    let fault = format!("signal-at-release:{}", libc::SIGUSR2);
    let mut run = Run::start(&Spec::c("blocked_pause").blocked_in(&[34]));
    run.wait_in_syscall("before dump -R");
    let args = vec!["dump".into(), "-R".into(), "-t".into(), run.pid.to_string(), "-D".into(), path_str(&run.img())];
    let status = ferry_with_fault(&mut run, &fault, &args, "dump-R");
    if !status.success() {
        run.fail(&format!("dump -R failed: {}", describe(status)));
    }
    match run.child.as_mut().map(|c| wait_timeout(c, Duration::from_secs(20))) {
        Some(Some(status)) => {
            run.child = None;
            run.expect_pass(status, "the workload (go sent as dump -R let it go)");
        }
        _ => run.fail("after dump -R the process stayed in pause() although its go signal arrived at release"),
    }

    let mut run = Run::start(&Spec::c("blocked_pause").blocked_in(&[34]));
    run.dump_ok(&[]);
    run.reap_dumped();
    let args = vec!["restore".into(), "-D".into(), path_str(&run.img())];
    let err = run.w.join("restore.err");
    let mut child = Command::new(ferry_bin())
        .args(&args)
        .env("FERRY_FAULT", &fault)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&err).expect("create ferry stderr file"))
        .spawn()
        .expect("start ferry");
    let Some(status) = wait_timeout(&mut child, Duration::from_secs(20)) else {
        let _ = send_signal(run.pid, "KILL");
        let _ = child.kill();
        run.fail("the restored process stayed in pause() although its go signal arrived at release");
    };
    run.expect_pass(status, "the restored workload (go sent at release)");
}

/// A dump refused before the freeze (here: of a process traced by another, after its memory was reserved
/// in the directory) into the directory of an older image leaves that image whole — same
/// files, every checksum right, restorable — and no file of its own behind.
#[test]
fn refused_dump_keeps_the_older_image() {
    let mut run = Run::start(&Spec::c("mem_anon"));
    run.dump_ok(&["-R"]);
    let img = run.img();
    let names = |what: &str| -> Vec<String> {
        let mut n: Vec<String> = fs::read_dir(&img)
            .unwrap_or_else(|e| panic!("image dir {what}: {e}"))
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    };
    let before = names("before");
    let held = HeldTraced::new(run.pid);
    let out = Command::new(ferry_bin())
        .args(["dump", "-t", &run.pid.to_string(), "-D", &path_str(&img)])
        .output()
        .expect("run ferry dump");
    drop(held);
    if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("already traced") {
        run.fail(&format!(
            "the dump of a traced process was not refused as such: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let after = names("after");
    if before != after {
        run.fail(&format!("the refused dump changed the directory: {before:?} -> {after:?}"));
    }
    match ferry_image::ImageReader::open(&img).and_then(|r| r.verify_all()) {
        Ok(()) => {}
        Err(e) => run.fail(&format!("the older image is damaged after a refused dump: {e}")),
    }
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload after dump -R and a refused dump");
}

/// A child stopped by job control (SIGTSTP, two threads) is restored stopped, with its stop
/// signal: its parent finds it stopped (and reported stopped by SIGTSTP), continues it, and the
/// child finds its memory and its busy thread as they were.
#[test]
fn stopped_child() {
    cycle_tree(&Spec::c("stopped"), &[]);
}

/// A child stopped by SIGSTOP sent by its parent (from outside, while it ran) is restored
/// stopped by SIGSTOP, its stop reported to the parent once, and runs on after SIGCONT.
#[test]
fn stopped_child_sigstop() {
    cycle_tree(&Spec::c("stopped").args(&["sigstop"]), &[]);
}

/// A stop the parent had already collected (waitpid WUNTRACED) before the dump is not reported
/// to it again after the restore, and the parent gets no SIGCHLD for it.
#[test]
fn stopped_child_report_reaped() {
    cycle_tree(&Spec::c("stopped").args(&["reaped"]), &[]);
}

/// A signal sent to a stopped child (with a handler) stays pending and unhandled as long as the
/// restored child is stopped, and is handled once after SIGCONT.
#[test]
fn stopped_child_pending_signal() {
    cycle_tree(&Spec::c("stopped").args(&["signal", "sigstop"]), &[]);
}

/// The dumped process itself stopped by SIGSTOP from outside: restored stopped (every thread),
/// it stays stopped until SIGCONT, then runs on and finds its state as it was.
#[test]
fn stopped_root_sigstop() {
    let stopped = |run: &Run| run.proc_state().is_some_and(|(s, _)| s == 'T');
    let mut run = Run::start(&Spec::c("threads"));
    send_signal(run.pid, "STOP").expect("stop the workload");
    wait_for("the workload to stop", Duration::from_secs(10), || stopped(&run));
    run.dump_ok(&[]);
    run.reap_dumped();
    wait_image_pids_gone(&run.img());
    let pidfile = run.spawn_restore("restore", &run.img(), &[]);
    run.wait_pidfile(&pidfile);
    sleep(Duration::from_millis(100));
    if !stopped(&run) {
        run.fail(&format!("not stopped after restore: {:?}", run.proc_state()));
    }
    send_signal(run.pid, "CONT").expect("continue the workload");
    run.go();
    let status = run.wait_restore_exit();
    run.expect_pass(status, "the restored workload after SIGCONT");
}

/// A child held in a ptrace stop by its parent (a debugger in the tree): the dump is refused,
/// naming it, and the parent still holds it stopped afterwards.
#[test]
fn stopped_by_ptrace_in_tree_refused() {
    refused_then_intact(Spec::c("stopped").args(&["ptraced"]), &["already traced"]);
}

/// A process held in a ptrace stop by a tracer outside the tree: refused by name, and it runs
/// on once the tracer lets it go.
#[test]
fn stopped_by_ptrace_outside_refused() {
    let mut run = Run::start(&Spec::c("mem_anon"));
    {
        let _held = HeldTraced::stopped(run.pid);
        if run.proc_state().is_none_or(|(s, _)| s != 't') {
            run.fail(&format!("the tracer did not stop it: {:?}", run.proc_state()));
        }
        dump_refused(run.pid, &run.img(), "already traced");
        if run.proc_state().is_none_or(|(s, _)| s != 't') {
            run.fail(&format!("not in its ptrace stop after the refused dump: {:?}", run.proc_state()));
        }
    }
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload after its tracer let it go");
}

/// `dump -R` of a tree with a stopped child leaves the child stopped.
#[test]
fn stopped_child_leave_running() {
    let mut run = Run::start(&Spec::c("stopped"));
    run.dump_ok(&["-R"]);
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload after dump -R");
}

/// `--leave-stopped`: after `dump -R` and after `restore`, the process is stopped (SIGSTOP) and
/// runs on, unharmed, once continued.
#[test]
fn leave_stopped() {
    let stopped = |run: &Run| run.proc_state().is_some_and(|(s, _)| s == 'T');
    let mut run = Run::start(&Spec::c("mem_anon"));
    run.dump_ok(&["-R", "--leave-stopped"]);
    if !stopped(&run) {
        run.fail(&format!("not stopped after dump -R --leave-stopped: {:?}", run.proc_state()));
    }
    sleep(Duration::from_millis(100));
    if !stopped(&run) {
        run.fail("did not stay stopped after dump -R --leave-stopped");
    }
    send_signal(run.pid, "KILL").expect("kill the workload");
    run.reap_dumped();
    wait_image_pids_gone(&run.img());
    let pidfile = run.spawn_restore("restore", &run.img(), &["--leave-stopped"]);
    run.wait_pidfile(&pidfile);
    sleep(Duration::from_millis(100));
    if !stopped(&run) {
        run.fail(&format!("not stopped after restore --leave-stopped: {:?}", run.proc_state()));
    }
    send_signal(run.pid, "CONT").expect("continue the workload");
    run.go();
    let status = run.wait_restore_exit();
    run.expect_pass(status, "the restored workload after SIGCONT");
}

/// CRIU's `dump --leave-stopped` (`-s`) without `-R`: the process is neither killed nor left
/// running but stopped, and runs on, unharmed, once continued.
#[test]
fn leave_stopped_without_leave_running() {
    let mut run = Run::start(&Spec::c("mem_anon"));
    run.dump_ok(&["-s"]);
    sleep(Duration::from_millis(100));
    if run.proc_state().is_none_or(|(s, _)| s != 'T') {
        run.fail(&format!("not stopped after dump --leave-stopped: {:?}", run.proc_state()));
    }
    send_signal(run.pid, "CONT").expect("continue the workload");
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload after SIGCONT");
}

/// A thread that cannot stop (a vfork parent waits uninterruptibly for its child) fails the
/// dump after `--timeout`, in one line naming the thread and its state, and the tree runs on.
#[test]
fn freeze_timeout() {
    let mut run = Run::start(&Spec::c("vfork_hold").args(&["5"]));
    wait_for("the vfork parent to wait uninterruptibly", Duration::from_secs(10), || {
        run.proc_state().is_some_and(|(s, _)| s == 'D')
    });
    let t = std::time::Instant::now();
    let img = run.img();
    let res = run.dump_to("dump", &img, &["--timeout", "1"]);
    let took = t.elapsed();
    if res.status.success() {
        run.fail("the dump of a process that cannot stop succeeded");
    }
    if !res.stderr.contains("did not stop within the freeze timeout") || !res.stderr.contains("state D") {
        run.fail(&format!("the error does not say which thread did not stop: {}", res.stderr));
    }
    if took > Duration::from_secs(4) {
        run.fail(&format!("the dump gave up after {took:?}, not after its 1 s timeout"));
    }
    // Once the child exits, the parent goes on, untraced.
    wait_for("the vfork child to exit", Duration::from_secs(15), || run.proc_state().is_some_and(|(s, _)| s != 'D'));
    run.expect_running_untraced("after the dump gave up");
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload after a dump that gave up");
}

/// CRIU's `-vN` and `-o FILE`: the log goes to the file (mode 0600), at debug level with -v4.
#[test]
fn criu_log_flags() {
    use std::os::unix::fs::PermissionsExt;
    let mut run = Run::start(&Spec::c("mem_anon"));
    let log = run.w.join("dump.log");
    let img = run.img();
    let res = run.dump_to("dump", &img, &["-R", "-v4", "-o", &path_str(&log)]);
    if !res.status.success() {
        run.fail(&format!("dump -R -v4 -o failed: {}", res.stderr));
    }
    let text = fs::read_to_string(&log).unwrap_or_default();
    let mode = fs::metadata(&log).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    if !text.contains("DEBUG") || mode != 0o600 {
        run.fail(&format!("the log file (mode {mode:o}) has no debug lines: {text:.300}"));
    }
    if res.stderr.contains("DEBUG") {
        run.fail("debug lines went to stderr although -o was given");
    }
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload after dump -R");
}

/// CRIU's flags whose behaviour is ferry's default are accepted on both commands, as a CRIU
/// user writes them (`--file-locks`, `--link-remap`, `--force-irmap`, `--ext-unix-sk`,
/// `--manage-cgroups`, restore `--tcp-established`, `--log-file`, `-v0`): the cycle passes and
/// the long `--log-file` form writes the log there.
#[test]
fn criu_default_flags_accepted() {
    let mut run = Run::start(&Spec::c("files"));
    let (dump_log, restore_log) = (run.w.join("dump.log"), run.w.join("restore.log"));
    let common = ["--file-locks", "--link-remap", "--force-irmap", "--ext-unix-sk", "--manage-cgroups"];
    let mut dump_args = common.to_vec();
    let dump_log_s = path_str(&dump_log);
    dump_args.extend(["-v4", "--log-file", &dump_log_s]);
    let img = run.img();
    let res = run.dump_to("dump", &img, &dump_args);
    if !res.status.success() {
        run.fail(&format!("dump with CRIU's default flags failed: {}", res.stderr));
    }
    if fs::read_to_string(&dump_log).map_or(true, |t| t.is_empty()) {
        run.fail("dump --log-file -v4 wrote no log there");
    }
    run.reap_dumped();
    wait_image_pids_gone(&img);
    let mut restore_args = common.to_vec();
    let restore_log_s = path_str(&restore_log);
    restore_args.extend(["--tcp-established", "-v0", "--log-file", &restore_log_s]);
    let pidfile = run.spawn_restore("restore", &img, &restore_args);
    run.wait_pidfile(&pidfile);
    run.go();
    let status = run.wait_restore_exit();
    run.expect_pass(status, "the workload restored with CRIU's default flags");
    if !restore_log.exists() {
        run.fail("restore --log-file created no log file");
    }
}

/// `/bin/sh -c SCRIPT` with stdio on /dev/null, through closefds (the test runner's stray fds,
/// such as a jobserver pipe, are not the shell's).
fn start_sh(script: &str) -> std::process::Child {
    workload_command(&ferry_workloads::path("closefds"))
        .args(["/bin/sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sh")
}

/// CRIU's `--ghost-limit`: a file deleted while open whose data is over the limit fails the
/// dump in one line naming it (the process running on); under the limit it travels.
#[test]
fn ghost_limit() {
    let w = WorkDir::new("ghost-limit");
    let file = w.join("big");
    let script = format!(
        "exec 3<>{f}; head -c 2097152 /dev/urandom >&3; rm {f}; echo ready > {r}.tmp; mv {r}.tmp {r}; exec sleep 600",
        f = path_str(&file),
        r = path_str(&w.join("ready"))
    );
    let mut child = start_sh(&script);
    let pid = child.id() as i32;
    let guard = ProcGuard::new();
    guard.add(pid);
    wait_for("the deleted file to be written", Duration::from_secs(10), || w.join("ready").exists());
    let dump = |dir: &str, limit: &str| {
        Command::new(ferry_bin())
            .args(["dump", "-R", "-t", &pid.to_string(), "-D", &path_str(&w.join(dir)), "--ghost-limit", limit])
            .output()
            .expect("run ferry dump")
    };
    let out = dump("small", "1M");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a 2 MiB deleted file passed --ghost-limit 1M");
    assert!(err.contains("over --ghost-limit 1048576") && err.contains("big (deleted)"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    assert!(pid_alive(pid), "the process did not survive the refused dump");
    let out = dump("large", "4M");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(w.join("large/inventory.img").exists());
    let _ = child.kill();
    let _ = child.wait();
}

/// A FIFO whose other end a process outside the tree holds (a supervisor, here the test): the
/// kernel's pipe outlives the killed tree, bytes and all. Tree writing, test reading: the test
/// reads the tree's bytes after the dump, and never a second time after the restore (the
/// restore used to write them back). Tree reading, test writing: the restore keeps the bytes
/// the test wrote (it used to be refused: "already holds 11 unread bytes"), and they are read
/// exactly once through the restored fd.
#[test]
fn fifo_other_end_outside() {
    use std::io::{ErrorKind, Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let w = WorkDir::new("fifo-outside");
    let guard = ProcGuard::new();
    for (label, redirect) in [("write", ">"), ("read", "<")] {
        let fifo = w.join(&format!("fifo-{label}"));
        assert!(Command::new("mkfifo").arg(&fifo).status().expect("run mkfifo").success(), "mkfifo");
        // The outside end first, so that the shell's open does not wait for a peer.
        let mut outside = fs::OpenOptions::new()
            .read(true)
            .write(label == "read")
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .expect("open the FIFO's outside end");
        let ready = w.join(&format!("ready-{label}"));
        let script = format!(
            "exec 5{redirect}{f}; {write}echo ready > {r}.tmp; mv {r}.tmp {r}; exec sleep 600",
            f = path_str(&fifo),
            write = if label == "write" { "printf before-dump >&5; " } else { "" },
            r = path_str(&ready)
        );
        let mut child = start_sh(&script);
        let pid = child.id() as i32;
        guard.add(pid);
        wait_for("the shell to open the FIFO", Duration::from_secs(10), || ready.exists());
        if label == "read" {
            outside.write_all(b"before-dump").expect("write into the FIFO");
        }
        let img = w.join(&format!("img-{label}"));
        let out = Command::new(ferry_bin())
            .args(["dump", "-t", &pid.to_string(), "-D", &path_str(&img)])
            .output()
            .expect("run ferry dump");
        assert!(out.status.success(), "{label}: dump: {}", String::from_utf8_lossy(&out.stderr));
        let _ = child.wait();
        let mut buf = [0u8; 64];
        if label == "write" {
            let n = outside.read(&mut buf).expect("the tree's bytes, read from outside after the dump");
            assert_eq!(&buf[..n], b"before-dump", "the outside reader after the dump");
        }
        let out = Command::new(ferry_bin())
            .args(["restore", "-D", &path_str(&img), "-d"])
            .output()
            .expect("run ferry restore");
        assert!(out.status.success(), "{label}: restore: {}", String::from_utf8_lossy(&out.stderr));
        let link = fs::read_link(format!("/proc/{pid}/fd/5")).expect("the restored fd 5");
        assert_eq!(link, fifo, "{label}: the restored fd 5");
        if label == "write" {
            match outside.read(&mut buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                other => panic!("the outside reader got the tree's bytes again after the restore: {other:?} {buf:?}"),
            }
        } else {
            let mut through = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(format!("/proc/{pid}/fd/5"))
                .expect("open the restored fd 5");
            let n = through.read(&mut buf).expect("read the FIFO after the restore");
            assert_eq!(&buf[..n], b"before-dump", "the FIFO after the restore holds the bytes once");
        }
        let _ = send_signal(pid, "KILL");
    }
}

/// A FIFO whose outside holder at dump let go of it before the restore: the pipe the dump saw
/// died with it. Only that holder counts, not a process that opened the FIFO since ("late"):
/// with a writer outside at dump, the tree's unread bytes go back into the new pipe (they were
/// silently lost while any holder at restore counted); with a reader outside at dump, the
/// restore is refused naming the FIFO (whether it read the bytes before it closed cannot be
/// known).
#[test]
fn fifo_outside_holder_gone() {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let w = WorkDir::new("fifo-holder-gone");
    let guard = ProcGuard::new();
    for label in ["writer", "reader"] {
        let fifo = w.join(&format!("fifo-{label}"));
        assert!(Command::new("mkfifo").arg(&fifo).status().expect("run mkfifo").success(), "mkfifo");
        let open = |read: bool, write: bool| {
            fs::OpenOptions::new()
                .read(read)
                .write(write)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
                .expect("open the FIFO from outside")
        };
        // (Read and write, so that the shell's open does not wait; then only the outside end.)
        let both = open(true, true);
        let ready = w.join(&format!("ready-{label}"));
        let script = format!(
            "exec 5<{f}; echo ready > {r}.tmp; mv {r}.tmp {r}; exec sleep 600",
            f = path_str(&fifo),
            r = path_str(&ready)
        );
        let mut child = start_sh(&script);
        let pid = child.id() as i32;
        guard.add(pid);
        wait_for("the shell to open the FIFO", Duration::from_secs(10), || ready.exists());
        let mut outside = open(label == "reader", true);
        outside.write_all(b"before-dump").expect("write into the FIFO");
        drop(both);
        let img = w.join(&format!("img-{label}"));
        let out = Command::new(ferry_bin())
            .args(["dump", "-t", &pid.to_string(), "-D", &path_str(&img)])
            .output()
            .expect("run ferry dump");
        assert!(out.status.success(), "{label}: dump: {}", String::from_utf8_lossy(&out.stderr));
        let _ = child.wait();
        // The dump's pipe dies with its last holder; another process opens the FIFO since.
        drop(outside);
        let late_ready = w.join(&format!("late-{label}"));
        let mut late = start_sh(&format!(
            "exec 6<>{f}; echo ready > {r}.tmp; mv {r}.tmp {r}; exec sleep 600",
            f = path_str(&fifo),
            r = path_str(&late_ready)
        ));
        guard.add(late.id() as i32);
        wait_for("a late process to open the FIFO", Duration::from_secs(10), || late_ready.exists());
        let out = Command::new(ferry_bin())
            .args(["restore", "-D", &path_str(&img), "-d"])
            .output()
            .expect("run ferry restore");
        let stderr = String::from_utf8_lossy(&out.stderr);
        if label == "reader" {
            assert!(
                !out.status.success(),
                "restore should have been refused: the outside reader may have read the bytes"
            );
            assert!(stderr.contains("whether it read them cannot be known"), "reader: the refusal names why: {stderr}");
            assert!(!pid_alive(pid), "a refused restore left pid {pid} behind");
        } else {
            assert!(out.status.success(), "{label}: restore: {stderr}");
            let mut through = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(format!("/proc/{pid}/fd/5"))
                .expect("open the restored fd 5");
            let mut buf = [0u8; 64];
            let n = through.read(&mut buf).expect("the tree's unread bytes after the restore (lost?)");
            assert_eq!(&buf[..n], b"before-dump", "the FIFO after the restore");
            let _ = send_signal(pid, "KILL");
        }
        let _ = late.kill();
        let _ = late.wait();
    }
}
