//! End-to-end tests: real processes checkpointed and restored by the `ferry` binary.
//!
//! Needs root (ptrace, /proc/PID/mem, restoring pids and credentials). Each workload
//! (`crates/ferry-workloads`) sets up one kind of state and verifies it itself after restore; a
//! `control::` test runs the same workload without ferry, so a broken workload is told apart from
//! a broken ferry. Names: `control::*`, `cycle::*` (dump, kill, restore, verify), `options::*`
//! (-R, -d, pidfile, image files), `errors::*` (what must fail, and fail cleanly), `faults::*`
//! (ferry killed mid-dump), `cleanup::*` (a failed dump leaves nothing and an older image
//! intact), `big::*` (1 GiB, python3).
//!
//! `FERRY_E2E_VERBOSE=1` passes -v to ferry; `FERRY_E2E_KEEP=1` keeps the work dirs (otherwise
//! they are removed, also when a test fails: its report holds the logs). Every test kills what
//! it started, also when it fails (`Run`, `ProcGuard`, the migration tests' namespaces).

mod common;

use common::*;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

const BLOCKED_NANOSLEEP: &[i64] = &[SYS_CLOCK_NANOSLEEP, SYS_NANOSLEEP];
const BLOCKED_READ: &[i64] = &[SYS_READ];
const BLOCKED_PAUSE: &[i64] = &[SYS_PAUSE];

fn many_maps() -> Spec {
    Spec::c("many_maps")
}
fn mem_anon() -> Spec {
    Spec::c("mem_anon")
}
fn mem_anon_64m() -> Spec {
    Spec::c("mem_anon").args(&["64"])
}
fn mem_file() -> Spec {
    Spec::c("mem_file")
}
fn mem_mm() -> Spec {
    Spec::c("mem_mm").args(&["rewritten-in-place", "second arg"])
}
fn fpu() -> Spec {
    Spec::c("fpu")
}
fn blocked_nanosleep() -> Spec {
    Spec::c("blocked_nanosleep").blocked_in(BLOCKED_NANOSLEEP)
}
fn blocked_read() -> Spec {
    Spec::c("blocked_read").blocked_in(BLOCKED_READ)
}
fn deep_stack() -> Spec {
    Spec::c("deep_stack")
}
fn blocked_pause() -> Spec {
    Spec::c("blocked_pause").blocked_in(BLOCKED_PAUSE)
}
fn files() -> Spec {
    Spec::c("files")
}
fn attrs() -> Spec {
    Spec::c("attrs")
}
fn creds() -> Spec {
    Spec::c("creds")
}
fn signals() -> Spec {
    Spec::c("signals")
}
/// No sigaltstack at all: the restored process must not inherit one from ferry.
fn signals_noaltstack() -> Spec {
    Spec::c("signals").args(&["noaltstack"])
}
fn timers() -> Spec {
    Spec::c("timers")
}
fn rseq() -> Spec {
    Spec::c("rseq")
}
fn uring() -> Spec {
    Spec::c("uring")
}
fn counter() -> Spec {
    Spec::c("counter")
}
fn threads() -> Spec {
    Spec::c("threads")
}
fn anonfds() -> Spec {
    Spec::c("anonfds")
}
fn pipeline() -> Spec {
    Spec::c("pipeline")
}
/// Threads inside nanosleep, clock_nanosleep, sleep(3), poll, ppoll, select and a futex wait,
/// all with timeouts: no spurious EINTR, no early return after restore.
fn sleeps() -> Spec {
    Spec::c("sleeps")
}

/// For each workload: `control::NAME` (no ferry) and `cycle::NAME` (dump, kill, restore, verify).
macro_rules! workload_tests {
    ($($name:ident),* $(,)?) => {
        mod control {
            $(#[test] fn $name() { crate::common::control(&crate::$name()); })*
            /// uring is only ever dumped to be refused; its control run is here.
            #[test] fn uring() { crate::common::control(&crate::uring()); }
            #[test] fn counter() { crate::common::control(&crate::counter()); }
            /// The tree's cycle is `more::pipeline_tree` (its pids need reaping by init first).
            #[test] fn pipeline() { crate::common::control(&crate::pipeline()); }
            #[test] fn shm() { crate::common::control(&crate::Spec::c("shm")); }
            #[test] fn zombies() { crate::common::control(&crate::Spec::c("zombies")); }
            #[test] fn sessions() { crate::common::control(&crate::Spec::c("sessions")); }
            #[test] fn epoll_shared() { crate::common::control(&crate::Spec::c("epoll_shared")); }
            #[test] fn posix_shm() { crate::common::control(&crate::Spec::c("posix_shm")); }
            #[test] fn memfd() { crate::common::control(&crate::Spec::c("memfd")); }
        }
        mod cycle {
            $(#[test] fn $name() { crate::common::cycle(&crate::$name()); })*
        }
    };
}

workload_tests!(
    mem_anon,
    mem_anon_64m,
    mem_file,
    mem_mm,
    fpu,
    blocked_nanosleep,
    blocked_read,
    blocked_pause,
    deep_stack,
    files,
    attrs,
    creds,
    signals,
    signals_noaltstack,
    timers,
    rseq,
    threads,
    anonfds,
    many_maps,
    sleeps,
);

/// The image files of a finished dump of `pid` in `dir`.
fn image_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    files.sort();
    files
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir(to).unwrap_or_else(|e| panic!("cannot create {}: {e}", to.display()));
    for f in image_files(from) {
        let dst = to.join(f.file_name().expect("file name"));
        fs::copy(&f, &dst).unwrap_or_else(|e| panic!("cannot copy {} to {}: {e}", f.display(), dst.display()));
    }
}

/// Counter lines "counter N" in the workload's log, in order.
fn counter_values(run: &Run) -> Vec<u64> {
    fs::read_to_string(run.w.join("out.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("counter ").and_then(|n| n.trim().parse().ok()))
        .collect()
}

mod cycle_extra {
    use super::*;

    /// The README demo: the counter keeps counting from where it was, in the same log.
    #[test]
    fn counter_continues() {
        let run = cycle_with(&counter(), |run| {
            let before = counter_values(run).len();
            let deadline = Instant::now() + Duration::from_secs(10);
            while counter_values(run).len() < before + 2 {
                if Instant::now() > deadline {
                    run.fail("the restored counter printed nothing new in 10 s");
                }
                sleep(Duration::from_millis(100));
            }
        });
        let values = counter_values(&run);
        for (i, v) in values.iter().enumerate() {
            if *v != i as u64 {
                run.fail(&format!("counter lines are not 0, 1, 2, ...: {values:?}"));
            }
        }
    }
}

mod sanity {
    use super::*;

    /// The verifiers can fail: a byte changed behind the workload's back through /proc/PID/mem
    /// turns its verdict into FAIL.
    #[test]
    fn mem_anon_detects_corruption() {
        let mut run = Run::start(&mem_anon());
        let addr_text = fs::read_to_string(run.w.join("addr")).expect("read W/addr");
        let mut parts = addr_text.split_whitespace();
        let addr = parts
            .next()
            .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
            .unwrap_or_else(|| run.fail(&format!("bad W/addr {addr_text:?}")));
        let len: u64 = parts.next().and_then(|l| l.parse().ok()).unwrap_or_else(|| run.fail("bad W/addr length"));
        let target = addr + len / 3;
        let mem = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{}/mem", run.pid))
            .unwrap_or_else(|e| run.fail(&format!("open /proc/PID/mem: {e}")));
        let mut byte = [0u8; 1];
        mem.read_exact_at(&mut byte, target).unwrap_or_else(|e| run.fail(&format!("read {target:#x}: {e}")));
        byte[0] ^= 0x5a;
        mem.write_all_at(&byte, target).unwrap_or_else(|e| run.fail(&format!("write {target:#x}: {e}")));
        run.go();
        let status = run.wait_child_exit();
        let result = run.result();
        if !result.starts_with("FAIL") || status.code() != Some(1) {
            run.fail(&format!("corrupted memory was not detected: verdict {result:?}, {}", describe(status)));
        }
    }
}

mod options {
    use super::*;

    /// `ferry check` says dump and restore can work here.
    #[test]
    fn check() {
        let out = std::process::Command::new(ferry_bin()).arg("check").output().expect("run ferry check");
        assert!(
            out.status.success(),
            "ferry check {}:\n{}{}",
            describe(out.status),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Image layout: inventory, process and pages files, all mode 0600 in a 0700 dir; `ferry
    /// inspect` reads it; and it restores.
    #[test]
    fn image_files_and_modes() {
        let mut run = Run::start(&mem_anon());
        run.dump_ok(&[]);
        run.reap_dumped();
        let img = run.img();
        let mode = fs::metadata(&img).expect("stat image dir").mode() & 0o7777;
        if mode != 0o700 {
            run.fail(&format!("image dir mode {mode:o}, expected 700"));
        }
        let files = image_files(&img);
        let names: Vec<String> =
            files.iter().map(|f| f.file_name().expect("name").to_string_lossy().into_owned()).collect();
        for want in ["inventory.img".to_string(), format!("process-{}.img", run.pid), format!("pages-{}.img", run.pid)]
        {
            if !names.contains(&want) {
                run.fail(&format!("image has no {want}: {names:?}"));
            }
        }
        for f in &files {
            let meta = fs::symlink_metadata(f).expect("stat image file");
            if !meta.is_file() || meta.mode() & 0o7777 != 0o600 {
                run.fail(&format!(
                    "{} is mode {:o} (file: {}), expected a 0600 file",
                    f.display(),
                    meta.mode() & 0o7777,
                    meta.is_file()
                ));
            }
            if names.iter().any(|n| n.ends_with(".tmp")) {
                run.fail(&format!("temporary files left in the image: {names:?}"));
            }
        }
        let text = run.ferry("inspect", &["inspect".to_string(), path_str(&img)], Duration::from_secs(60));
        if !text.status.success() || !text.stdout.contains(&run.pid.to_string()) {
            run.fail(&format!("ferry inspect {} or does not mention pid {}", describe(text.status), run.pid));
        }
        let json = run.ferry(
            "inspect-json",
            &["inspect".to_string(), path_str(&img), "--json".to_string()],
            Duration::from_secs(60),
        );
        let trimmed = json.stdout.trim();
        if !(json.status.success() && trimmed.starts_with('{') && trimmed.ends_with('}')) {
            run.fail(&format!("ferry inspect --json {} or did not print a JSON object", describe(json.status)));
        }
        run.restore_and_verify("ferry restore");
    }

    /// -R: the dumped process keeps running and passes; then the same image restores and passes.
    #[test]
    fn leave_running_then_restore() {
        left_running_then_restored(&mem_anon());
    }

    /// `dump -R` of `spec`'s workload, which goes on and passes; then the image restores and
    /// passes too.
    fn left_running_then_restored(spec: &Spec) {
        let mut run = left_running_intact(spec);
        run.wait_pid_gone("after the left-running workload exited");
        fs::remove_file(run.w.join("result")).expect("remove the first result");
        run.restore_and_verify("ferry restore");
    }

    /// -R of a process waiting at the very bottom of its stack (ferry's injection frame does not
    /// fit above the stack's mapped start: the stack is grown first, and the image keeps the
    /// stack as it was): it keeps running and passes, then the image restores and passes.
    #[test]
    fn leave_running_deep_stack() {
        left_running_then_restored(&deep_stack());
    }

    /// -d: ferry returns at once, the process runs on its own and passes.
    #[test]
    fn restore_detached() {
        let mut run = Run::start(&mem_anon());
        run.dump_ok(&[]);
        run.reap_dumped();
        let img = run.img();
        let started = Instant::now();
        let res = run.ferry(
            "restore-detached",
            &["restore".to_string(), "-D".to_string(), path_str(&img), "-d".to_string()],
            Duration::from_secs(120),
        );
        if !res.status.success() {
            run.fail(&format!("ferry restore -d {}", describe(res.status)));
        }
        if !pid_alive(run.pid) {
            run.fail("ferry restore -d returned 0 but the process does not exist");
        }
        eprintln!("restore -d returned after {:?}", started.elapsed());
        run.go();
        run.wait_result_file();
        if run.result() != "PASS" {
            run.fail(&format!("verdict {:?}", run.result()));
        }
        run.wait_pid_gone("after the detached process passed");
    }
}

mod errors {
    use super::*;

    fn expect_one_line(run: &Run, res: &Finished, what: &str) {
        let lines = res.stderr_lines();
        if lines.len() != 1 {
            run.fail(&format!("{what}: expected one line on stderr, got {}: {:?}", lines.len(), res.stderr));
        }
    }

    /// Dump of a pid nobody has: non-zero, one line naming the pid.
    #[test]
    fn dump_nonexistent_pid() {
        let mut gone = std::process::Command::new("true").spawn().expect("spawn true");
        let pid = gone.id();
        gone.wait().expect("reap true");
        let out = std::process::Command::new(ferry_bin())
            .args(["dump", "-t", &pid.to_string(), "-D"])
            .arg(std::env::temp_dir().join(format!("ferry-e2e-nonexistent-{pid}")))
            .output()
            .expect("run ferry dump");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(!out.status.success(), "ferry dump of nonexistent pid {pid} succeeded");
        assert!(
            lines.len() == 1 && lines[0].contains(&pid.to_string()),
            "expected one stderr line naming pid {pid}, got {stderr:?}"
        );
    }

    /// Restore from a directory that does not exist: non-zero.
    #[test]
    fn restore_missing_dir() {
        let dir = std::env::temp_dir().join(format!("ferry-e2e-missing-{}", std::process::id()));
        let out = std::process::Command::new(ferry_bin())
            .args(["restore", "-D"])
            .arg(&dir)
            .output()
            .expect("run ferry restore");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "ferry restore from missing {} succeeded", dir.display());
        assert!(!stderr.trim().is_empty(), "ferry restore from a missing dir failed without a message");
    }

    /// A truncated pages file and a process file with one flipped byte are refused before any
    /// process is created, naming the file; the intact image still restores.
    #[test]
    fn corrupt_images() {
        let mut run = Run::start(&mem_anon());
        run.dump_ok(&[]);
        run.reap_dumped();
        let img = run.img();

        let truncated = run.w.join("img-truncated");
        copy_dir(&img, &truncated);
        let pages_name = format!("pages-{}.img", run.pid);
        let pages = truncated.join(&pages_name);
        let len = fs::metadata(&pages).expect("stat pages file").len();
        fs::OpenOptions::new().write(true).open(&pages).expect("open pages").set_len(len / 2).expect("truncate pages");

        let flipped = run.w.join("img-flipped");
        copy_dir(&img, &flipped);
        let process_name = format!("process-{}.img", run.pid);
        let process = flipped.join(&process_name);
        let mut f = fs::OpenOptions::new().read(true).write(true).open(&process).expect("open process file");
        let plen = f.metadata().expect("stat process file").len();
        let at = plen / 2;
        let mut b = [0u8; 1];
        f.seek(SeekFrom::Start(at)).expect("seek");
        f.read_exact(&mut b).expect("read");
        b[0] ^= 0x01;
        f.seek(SeekFrom::Start(at)).expect("seek");
        f.write_all(&b).expect("write");
        drop(f);

        for (label, dir, name) in
            [("restore-truncated", &truncated, &pages_name), ("restore-flipped", &flipped, &process_name)]
        {
            let res =
                run.ferry(label, &["restore".to_string(), "-D".to_string(), path_str(dir)], Duration::from_secs(120));
            if res.status.success() {
                run.fail(&format!("{label}: ferry restore succeeded"));
            }
            if !res.stderr.contains(name.as_str()) {
                run.fail(&format!("{label}: stderr does not name {name}: {:?}", res.stderr));
            }
            if pid_alive(run.pid) {
                run.fail(&format!("{label}: a process with pid {} exists after the failed restore", run.pid));
            }
        }

        run.restore_and_verify("ferry restore of the intact image");
    }

    /// Restore while the original pid is still alive (dump -R): refused, saying the pid is in
    /// use; the original is unharmed.
    #[test]
    fn restore_pid_in_use() {
        let mut run = Run::start(&mem_anon());
        run.dump_ok(&["-R"]);
        let img = run.img();
        let res = run.ferry(
            "restore-in-use",
            &["restore".to_string(), "-D".to_string(), path_str(&img)],
            Duration::from_secs(120),
        );
        if res.status.success() {
            run.fail("restore succeeded while the pid was in use");
        }
        let msg = res.stderr.to_lowercase();
        if !msg.contains(&run.pid.to_string()) || !msg.contains("in use") {
            run.fail(&format!("the error does not say pid {} is in use: {:?}", run.pid, res.stderr));
        }
        run.expect_running_untraced("after the refused restore");
        run.go();
        let status = run.wait_child_exit();
        run.expect_pass(status, "the original workload");
    }

    /// A process holding an io_uring cannot be dumped: one line naming io_uring, and the
    /// process runs on untouched.
    #[test]
    fn dump_io_uring_refused() {
        let mut run = Run::start(&uring());
        let img = run.img();
        let res = run.dump_to("dump", &img, &[]);
        if res.status.success() {
            run.fail("ferry dump of a process with an io_uring succeeded");
        }
        expect_one_line(&run, &res, "dump of an io_uring holder");
        if !res.stderr.contains("io_uring") {
            run.fail(&format!("the error does not name io_uring: {:?}", res.stderr));
        }
        run.expect_running_untraced("after the refused dump");
        if img.join("inventory.img").exists() {
            run.fail("the refused dump left an inventory.img (a complete-looking image)");
        }
        run.go();
        let status = run.wait_child_exit();
        run.expect_pass(status, "the workload");
    }
}

mod faults {
    use super::*;

    /// ferry SIGKILLed at several points of a dump of 256 MiB (0 ms, 20 ms, and fractions of
    /// the time a full dump takes, measured first with -R): each time the workload keeps running
    /// (not stopped, not traced) and passes at the end, and no partial image restores or leaves
    /// a process behind.
    #[test]
    fn kill_ferry_during_dump() {
        let _heavy = heavy_lock();
        let mut run = Run::start(&Spec::c("mem_anon").args(&["256"]));

        let measure_dir = run.w.join("img-measure");
        let started = Instant::now();
        let res = run.dump_to("dump-measure", &measure_dir, &["-R"]);
        let full = started.elapsed();
        if !res.status.success() {
            run.fail(&format!("ferry dump -R {}", describe(res.status)));
        }
        run.expect_running_untraced("after dump -R");
        eprintln!("a full dump takes {full:?}");
        let mut delays = vec![Duration::ZERO, Duration::from_millis(20)];
        delays.extend([0.05, 0.1, 0.25, 0.5, 0.75, 0.9].iter().map(|f| full.mul_f64(*f)));

        let mut partial = Vec::new();
        let mut completed: Option<PathBuf> = None;
        for (i, delay) in delays.iter().enumerate() {
            let dir = run.w.join(&format!("img-kill-{i}"));
            let mut args =
                vec!["dump".to_string(), "-t".to_string(), run.pid.to_string(), "-D".to_string(), path_str(&dir)];
            if std::env::var_os("FERRY_E2E_VERBOSE").is_some() {
                args.push("-v".to_string());
            }
            let (mut ferry, _, _) = run.spawn_ferry(&format!("dump-kill-{i}"), &args);
            sleep(*delay);
            let _ = ferry.kill();
            let status = ferry.wait().expect("reap ferry");
            if status.success() || dir.join("inventory.img").exists() {
                // The dump committed its image before the kill: the workload is killed by design
                // (if ferry died between the commit and that kill, the workload runs on with a
                // complete image of it: nothing lost; end it here).
                eprintln!("the dump completed within {delay:?}: no later kill points");
                if !status.success() && pid_alive(run.pid) {
                    let _ = send_signal(run.pid, "KILL");
                }
                completed = Some(dir);
                break;
            }
            eprintln!("ferry killed after {delay:?} ({})", describe(status));
            run.expect_running_untraced(&format!("after ferry was killed {delay:?} into the dump"));
            partial.push(dir);
        }

        match completed {
            None => {
                run.go();
                let status = run.wait_child_exit();
                run.expect_pass(status, "the workload after the killed dumps");
            }
            Some(_) => run.reap_dumped(),
        }
        run.wait_pid_gone("after the workload finished");

        // No partial image restores, and none leaves a process.
        for dir in &partial {
            if !dir.exists() {
                continue;
            }
            let label = format!("restore-{}", dir.file_name().expect("name").to_string_lossy());
            let res =
                run.ferry(&label, &["restore".to_string(), "-D".to_string(), path_str(dir)], Duration::from_secs(120));
            if res.status.success() {
                run.fail(&format!("ferry restore from the partial image {} succeeded", dir.display()));
            }
            if pid_alive(run.pid) {
                run.fail(&format!(
                    "a process with pid {} exists after restoring the partial {}",
                    run.pid,
                    dir.display()
                ));
            }
        }

        // A complete image restores: the one a dump finished before the kill, else the -R one.
        let _ = fs::remove_file(run.w.join("result"));
        let dir = completed.unwrap_or(measure_dir);
        let pidfile = run.spawn_restore("restore-complete", &dir, &[]);
        run.wait_pidfile(&pidfile);
        run.go();
        let status = run.wait_restore_exit();
        run.expect_pass(status, "ferry restore of a complete dump");
    }
}

mod big {
    use super::*;

    /// 1 GiB of pseudo-random anonymous memory.
    #[test]
    fn mem_anon_1g() {
        let _heavy = heavy_lock();
        let started = Instant::now();
        cycle(&Spec::c("mem_anon").args(&["1024"]).ready_timeout(Duration::from_secs(90)));
        eprintln!("1 GiB cycle took {:?}", started.elapsed());
    }

    /// A python3 interpreter with a 1M-entry dict, checkpointed mid-loop.
    #[test]
    fn python_bigdict() {
        let _heavy = heavy_lock();
        cycle(&Spec::python("bigdict.py"));
    }

    /// A python3 interpreter running six threads (workers, a queue, an Event waiter).
    #[test]
    fn python_threads() {
        // No fingerprint: its workers keep computing (and allocating: a thread's malloc arena
        // grows) before the dump and after the restore; the workload checks its own state.
        cycle(&Spec::python("pythreads.py").without_fingerprint());
    }

    #[test]
    fn python_threads_control() {
        control(&Spec::python("pythreads.py"));
    }

    #[test]
    fn python_bigdict_control() {
        control(&Spec::python("bigdict.py"));
    }
}

mod apps;
mod cgroup;
mod cleanup;
mod contact;
mod containers;
mod cow;
mod external;
mod fds;
mod filestate;
mod inet;
mod integrity;
mod memattr;
mod migrate;
mod misc;
mod more;
mod ns;
mod nsx;
mod objects;
mod perf;
mod snapshot;
mod socks;
mod tampered;
mod tty;
mod unix;
mod userns;
