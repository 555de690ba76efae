//! The harness behind `e2e.rs`: start a workload, wait for it to be ready, drive `ferry dump` and
//! `ferry restore`, send "go" and collect the verdict.
//!
//! Every run lives in its own work directory W (see `ferry-workloads/c/common.h` for the protocol).
//! Everything ferry and the workload print goes to files in W, and a failing check panics with a
//! report that includes them, so a red test says what happened without a rerun. W is removed
//! when the test passes and kept (its path printed) when it fails.
//!
//! No `unsafe` here (the workspace forbids it): signals are sent with kill(1), process state is
//! read from /proc, and the process memory poke in the verifier-sanity test uses /proc/PID/mem.

#![allow(dead_code)] // not every test binary uses every helper

mod fingerprint;
pub use fingerprint::{fingerprint, Fingerprint};

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// x86-64 syscall numbers a blocked workload is expected to sit in (see /proc/PID/syscall).
pub const SYS_READ: i64 = 0;
pub const SYS_NANOSLEEP: i64 = 35;
pub const SYS_PAUSE: i64 = 34;
pub const SYS_CLOCK_NANOSLEEP: i64 = 230;

pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
pub const DUMP_TIMEOUT: Duration = Duration::from_secs(300);
pub const RESTORE_TIMEOUT: Duration = Duration::from_secs(300);
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Held by the tests that use most of the machine (1 GiB of memory, repeated 256 MiB dumps), so
/// that they do not run at the same time on a small machine.
pub fn heavy_lock() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Peak resident set (VmHWM, KiB) of a live process.
pub fn vm_hwm_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read ferry's /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

pub fn ferry_bin() -> &'static str {
    env!("CARGO_BIN_EXE_ferry")
}

/// Extra ferry flags for debugging: `FERRY_E2E_VERBOSE=1` adds `-v` to dump and restore.
fn verbose_flags() -> Vec<String> {
    match std::env::var_os("FERRY_E2E_VERBOSE") {
        Some(v) if !v.is_empty() && v != "0" => vec!["-v".to_string()],
        _ => Vec::new(),
    }
}

/// What to run: an executable (a C workload or an interpreter) with the arguments that go before
/// the work dir and after it.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub program: PathBuf,
    pub pre_args: Vec<OsString>,
    pub args: Vec<String>,
    /// Syscall numbers the workload blocks in after ready (the harness waits until it is inside
    /// one before it dumps, and again after restore before it sends go).
    pub blocked_in: &'static [i64],
    /// How long the set-up may take before ready.
    pub ready_timeout: Duration,
    /// The file whose appearance `Run::start` waits for ("ready"; another one when the test
    /// must take part in the set-up before the workload is ready, see `Run::wait_ready`).
    pub ready_file: &'static str,
    /// The workload's stdin instead of /dev/null (a pipe end or socket the test holds the other
    /// end of: a workload moves it to the fd it needs, the test being "outside the tree").
    pub stdin: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// Whether `cycle_with` and `cycle_tree` compare the tree's fingerprint before the dump and
    /// after the restore (see `fingerprint.rs`).
    pub fingerprint: bool,
}

impl Spec {
    /// A C workload from `crates/ferry-workloads/c/`.
    pub fn c(name: &str) -> Spec {
        Spec {
            name: name.to_string(),
            program: ferry_workloads::path(name),
            pre_args: Vec::new(),
            args: Vec::new(),
            blocked_in: &[],
            ready_timeout: READY_TIMEOUT,
            ready_file: "ready",
            stdin: None,
            fingerprint: true,
        }
    }

    /// A python3 script from `crates/ferry-workloads/py/`. Fails the test loudly when python3 is
    /// missing: a test that cannot run must not pass.
    pub fn python(script: &str) -> Spec {
        need("python3", "python3");
        let python = python3().unwrap_or_else(|why| panic!("{} ({why})", missing_tool("python3", "python3")));
        Spec {
            name: script.to_string(),
            program: python,
            pre_args: vec![ferry_workloads::script(script).into_os_string()],
            args: Vec::new(),
            blocked_in: &[],
            // building a big dict on a loaded 2-core machine can take a while
            ready_timeout: Duration::from_secs(90),
            ready_file: "ready",
            stdin: None,
            fingerprint: true,
        }
    }

    pub fn args(mut self, args: &[&str]) -> Spec {
        self.args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn blocked_in(mut self, nrs: &'static [i64]) -> Spec {
        self.blocked_in = nrs;
        self
    }

    pub fn ready_file(mut self, name: &'static str) -> Spec {
        self.ready_file = name;
        self
    }

    /// Start the workload with `fd` (a copy) as its stdin.
    pub fn stdin(mut self, fd: std::os::fd::OwnedFd) -> Spec {
        self.stdin = Some(std::sync::Arc::new(fd));
        self
    }

    /// No fingerprint comparison in `cycle_with`/`cycle_tree` (say why where it is called).
    pub fn without_fingerprint(mut self) -> Spec {
        self.fingerprint = false;
        self
    }

    pub fn ready_timeout(mut self, timeout: Duration) -> Spec {
        self.ready_timeout = timeout;
        self
    }
}

/// The program `tool` (a name looked up in PATH and the sbin directories, or an absolute path),
/// which the Debian package `package` installs. A test whose tool is missing fails with one line
/// that says what to install (scripts/setup.sh installs them all), not with a cascade of
/// "cannot run" panics further down.
#[track_caller]
pub fn need(tool: &str, package: &str) -> PathBuf {
    match find_tool(tool) {
        Some(path) => path,
        None => panic!("{}", missing_tool(tool, package)),
    }
}

/// The one line a test whose tool is missing fails with.
pub fn missing_tool(tool: &str, package: &str) -> String {
    let test = std::thread::current().name().unwrap_or("this test").to_string();
    format!("{test} needs {tool}: install the Debian package {package} (scripts/setup.sh)")
}

/// Where `tool` is, if it is an executable file.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let executable = |p: &Path| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if tool.contains('/') {
        let p = PathBuf::from(tool);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"].iter().map(PathBuf::from))
        .map(|dir| dir.join(tool))
        .find(|p| executable(p))
}

/// The real python3 executable (not a wrapper script that would fork or exec on our pid).
fn python3() -> Result<PathBuf, String> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let out = Command::new("python3")
                .args(["-c", "import sys; print(sys.executable)"])
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run python3: {e}"))?;
            if !out.status.success() {
                return Err(format!("python3 -c exited with {}", out.status));
            }
            let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if path.is_file() {
                Ok(path)
            } else {
                Err(format!("sys.executable {} is not a file", path.display()))
            }
        })
        .clone()
}

/// A fresh work directory, mode 0777 (the creds workload writes its result as uid 1001).
pub struct WorkDir {
    pub path: PathBuf,
}

impl WorkDir {
    pub fn new(label: &str) -> WorkDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let base = std::env::temp_dir().join("ferry-e2e");
        fs::create_dir_all(&base).unwrap_or_else(|e| panic!("cannot create {}: {e}", base.display()));
        fs::set_permissions(&base, fs::Permissions::from_mode(0o777))
            .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", base.display()));
        let n = N.fetch_add(1, Ordering::SeqCst);
        let path = base.join(format!("{label}-{}-{n}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path).unwrap_or_else(|e| panic!("cannot remove stale {}: {e}", path.display()));
        }
        fs::create_dir(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o777))
            .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", path.display()));
        WorkDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for WorkDir {
    /// Removed also when the test fails (its report holds the logs): `FERRY_E2E_KEEP=1` keeps it.
    fn drop(&mut self) {
        if std::env::var_os("FERRY_E2E_KEEP").is_some_and(|v| !v.is_empty() && v != "0") {
            eprintln!("work dir kept: {}", self.path.display());
        } else {
            if std::thread::panicking() {
                eprintln!("work dir removed: {} (FERRY_E2E_KEEP=1 keeps it)", self.path.display());
            }
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Kills, when dropped (also when the test panics), every process it was given and each one's
/// descendants (all of a pid namespace when given its init). Declare it after the `WorkDir`
/// the processes use, so that they are gone before their directory is removed.
#[derive(Default)]
pub struct ProcGuard {
    pids: std::cell::RefCell<Vec<i32>>,
}

impl ProcGuard {
    pub fn new() -> ProcGuard {
        ProcGuard::default()
    }

    /// Kill `pid` and its tree on drop.
    pub fn add(&self, pid: i32) {
        self.pids.borrow_mut().push(pid);
    }
}

impl Drop for ProcGuard {
    fn drop(&mut self) {
        for &pid in self.pids.borrow().iter().rev() {
            kill_tree(pid);
        }
    }
}

/// SIGKILL `pid` and every descendant of it (collected first: a killed parent's children are
/// reparented). Processes that are gone already are skipped.
pub fn kill_tree(pid: i32) {
    if !pid_alive(pid) {
        return;
    }
    let pids = tree_pids(pid);
    for p in pids.iter().chain(std::iter::once(&pid)) {
        if pid_alive(*p) {
            let _ = send_signal(*p, "KILL");
        }
    }
}

/// How a ferry invocation ended.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The non-empty lines of stderr.
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.stderr.lines().filter(|l| !l.trim().is_empty()).collect()
    }
}

/// One workload process, its work dir, and the ferry processes driving it.
pub struct Run {
    pub spec: Spec,
    /// The original workload process (our child until a dump kills it and we reap it).
    pub child: Option<Child>,
    pub pid: i32,
    /// A `ferry restore` we started and have not reaped.
    pub restore: Option<Child>,
    /// Labelled files shown in failure reports.
    logs: Vec<(String, PathBuf)>,
    /// Environment variables for the ferry commands this run starts.
    pub ferry_env: Vec<(&'static str, &'static str)>,
    /// The next ferry commands' stdin instead of /dev/null (a file a test hands over with
    /// `restore --inherit-fd fd[0]:KEY`).
    pub ferry_stdin: Option<std::os::fd::OwnedFd>,
    /// The tree's fingerprint taken before the dump, compared after the restore by `wait_pidfile`.
    pub fingerprint_before: Option<Fingerprint>,
    /// Declared last: dropped (and removed) after the processes are killed.
    pub w: WorkDir,
}

impl Run {
    /// Spawn the workload (stdin /dev/null, stdout and stderr to W/out.log) and wait for ready
    /// (and, for blocked workloads, until it sits in its syscall).
    pub fn start(spec: &Spec) -> Run {
        Run::start_in(spec, WorkDir::new(&spec.name))
    }

    pub fn start_in(spec: &Spec, w: WorkDir) -> Run {
        let log_path = w.join("out.log");
        let log = File::create(&log_path).unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let log2 = log.try_clone().expect("dup of the out.log fd");
        let child = workload_command(&spec.program)
            .args(&spec.pre_args)
            .arg(&w.path)
            .args(&spec.args)
            .stdin(match &spec.stdin {
                Some(fd) => Stdio::from(fd.try_clone().expect("dup of the workload's stdin")),
                None => Stdio::null(),
            })
            .stdout(log)
            .stderr(log2)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start workload {} ({}): {e}", spec.name, spec.program.display()));
        let pid = i32::try_from(child.id()).expect("pid fits in i32");
        let mut run = Run {
            spec: spec.clone(),
            child: Some(child),
            pid,
            restore: None,
            logs: vec![("workload out.log".to_string(), log_path)],
            ferry_env: Vec::new(),
            ferry_stdin: None,
            fingerprint_before: None,
            w,
        };
        let first = run.spec.ready_file;
        run.wait_file(first);
        run
    }

    /// Panic with `msg` and everything that helps to tell why.
    #[track_caller]
    pub fn fail(&self, msg: &str) -> ! {
        let mut report = format!("{} (pid {}): {msg}\nwork dir: {}\n", self.spec.name, self.pid, self.w.path.display());
        for (label, path) in &self.logs {
            let text = read_tail(path, 12_000);
            let _ = write!(report, "--- {label} ({}) ---\n{text}\n", path.display());
        }
        let result = read_tail(&self.w.join("result"), 4000);
        let _ = write!(report, "--- result ---\n{result}\n");
        if let Ok(stat) = fs::read_to_string(format!("/proc/{}/status", self.pid)) {
            let keep: Vec<&str> = stat
                .lines()
                .filter(|l| {
                    ["State:", "PPid:", "TracerPid:", "SigBlk:", "SigPnd:", "ShdPnd:"].iter().any(|k| l.starts_with(k))
                })
                .collect();
            let _ = write!(report, "--- /proc/{}/status (excerpt) ---\n{}\n", self.pid, keep.join("\n"));
        }
        panic!("{report}");
    }

    /// Wait for W/ready (after a start with another `ready_file`).
    pub fn wait_ready(&mut self) {
        self.wait_file("ready");
    }

    pub fn wait_file(&mut self, name: &str) {
        let ready = self.w.join(name);
        let started = Instant::now();
        let deadline = started + self.spec.ready_timeout;
        loop {
            if ready.exists() {
                break;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.fail(&format!("the workload exited before it was ready: {}", describe(status)));
                }
            }
            if Instant::now() > deadline {
                self.fail(&format!("not ready after {:?}", self.spec.ready_timeout));
            }
            sleep(Duration::from_millis(10));
        }
        if !self.spec.blocked_in.is_empty() {
            self.wait_in_syscall("after ready");
        }
    }

    /// Wait until /proc/PID/syscall shows the process blocked in one of `spec.blocked_in`.
    pub fn wait_in_syscall(&self, when: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let path = format!("/proc/{}/syscall", self.pid);
        loop {
            let text = fs::read_to_string(&path).unwrap_or_default();
            let nr = text.split_whitespace().next().and_then(|s| s.parse::<i64>().ok());
            if nr.is_some_and(|nr| self.spec.blocked_in.contains(&nr)) {
                return;
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "{when}: not blocked in syscall {:?} after 20 s; {path} reads {:?}",
                    self.spec.blocked_in,
                    text.trim()
                ));
            }
            sleep(Duration::from_millis(10));
        }
    }

    /// Run ferry with `args` (to completion, with a timeout); its output goes to W/<label>.out/.err.
    pub fn ferry(&mut self, label: &str, args: &[String], timeout: Duration) -> Finished {
        let (mut child, out, err) = self.spawn_ferry(label, args);
        let status = match wait_timeout(&mut child, timeout) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                self.fail(&format!("ferry {} did not finish within {timeout:?}", args.join(" ")));
            }
        };
        Finished {
            status,
            stdout: fs::read_to_string(&out).unwrap_or_default(),
            stderr: fs::read_to_string(&err).unwrap_or_default(),
        }
    }

    /// Start ferry with `args` in the background; its output goes to W/<label>.out/.err.
    pub fn spawn_ferry(&mut self, label: &str, args: &[String]) -> (Child, PathBuf, PathBuf) {
        let out = self.w.join(&format!("{label}.out"));
        let err = self.w.join(&format!("{label}.err"));
        let out_f = File::create(&out).unwrap_or_else(|e| panic!("cannot create {}: {e}", out.display()));
        let err_f = File::create(&err).unwrap_or_else(|e| panic!("cannot create {}: {e}", err.display()));
        self.logs.push((format!("ferry {label} stdout"), out.clone()));
        self.logs.push((format!("ferry {label} stderr ({})", args.join(" ")), err.clone()));
        let child = Command::new(ferry_bin())
            .args(args)
            .envs(self.ferry_env.iter().copied())
            .stdin(match &self.ferry_stdin {
                Some(fd) => Stdio::from(fd.try_clone().expect("dup of ferry's stdin")),
                None => Stdio::null(),
            })
            .stdout(out_f)
            .stderr(err_f)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", ferry_bin()));
        (child, out, err)
    }

    pub fn img(&self) -> PathBuf {
        self.w.join("img")
    }

    /// `ferry dump -t PID -D DIR extra...`
    pub fn dump_to(&mut self, label: &str, dir: &Path, extra: &[&str]) -> Finished {
        let mut args =
            vec!["dump".to_string(), "-t".to_string(), self.pid.to_string(), "-D".to_string(), path_str(dir)];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(verbose_flags());
        self.ferry(label, &args, DUMP_TIMEOUT)
    }

    /// Dump to W/img, which must succeed.
    pub fn dump_ok(&mut self, extra: &[&str]) {
        let img = self.img();
        let res = self.dump_to("dump", &img, extra);
        if !res.status.success() {
            self.fail(&format!("ferry dump failed: {}", describe(res.status)));
        }
    }

    /// After a dump without -R: the workload must be dead; reap it and wait until its pid is free.
    pub fn reap_dumped(&mut self) {
        if let Some(mut child) = self.child.take() {
            match wait_timeout(&mut child, Duration::from_secs(10)) {
                Some(status) => {
                    if status.success() {
                        self.fail("the workload exited 0 on its own during the dump (it should have been killed)");
                    }
                }
                None => {
                    self.child = Some(child);
                    self.fail("ferry dump returned 0 without -R but the workload is still running");
                }
            }
        }
        self.wait_pid_gone("after the dump");
    }

    /// Wait until no live process has our pid (a zombie nobody reaps counts as gone).
    pub fn wait_pid_gone(&self, when: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while pid_alive(self.pid) {
            if Instant::now() > deadline {
                self.fail(&format!("{when}: pid {} still exists after 20 s", self.pid));
            }
            sleep(Duration::from_millis(10));
        }
    }

    /// Start `ferry restore -D DIR --pidfile W/restored.pid extra...` (W/<label>.pid for other
    /// labels than "restore"); ferry stays the parent.
    pub fn spawn_restore(&mut self, label: &str, dir: &Path, extra: &[&str]) -> PathBuf {
        let pidfile = match label {
            "restore" => self.w.join("restored.pid"),
            _ => self.w.join(&format!("{label}.pid")),
        };
        let mut args =
            vec!["restore".to_string(), "-D".to_string(), path_str(dir), "--pidfile".to_string(), path_str(&pidfile)];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(verbose_flags());
        let (child, _, _) = self.spawn_ferry(label, &args);
        self.restore = Some(child);
        pidfile
    }

    /// Restore the image in `img()`, send go, and expect the workload's PASS.
    pub fn restore_and_verify(&mut self, whose: &str) {
        let pidfile = self.spawn_restore("restore", &self.img(), &[]);
        self.wait_pidfile(&pidfile);
        self.go();
        let status = self.wait_restore_exit();
        self.expect_pass(status, whose);
    }

    /// Wait until `pidfile` names our pid (ferry writes it once the process runs).
    pub fn wait_pidfile(&mut self, pidfile: &Path) {
        let deadline = Instant::now() + RESTORE_TIMEOUT;
        loop {
            if let Ok(text) = fs::read_to_string(pidfile) {
                match text.trim().parse::<i32>() {
                    Ok(pid) if pid == self.pid => break,
                    Ok(pid) => self.fail(&format!("the pidfile names pid {pid}, expected {}", self.pid)),
                    Err(_) => self.fail(&format!("the pidfile holds {text:?}, not a pid (not written atomically?)")),
                }
            }
            if let Some(restore) = self.restore.as_mut() {
                if let Ok(Some(status)) = restore.try_wait() {
                    self.restore = None;
                    self.fail(&format!("ferry restore exited before writing the pidfile: {}", describe(status)));
                }
            }
            if Instant::now() > deadline {
                self.fail(&format!("no pidfile {} after {RESTORE_TIMEOUT:?}", pidfile.display()));
            }
            sleep(Duration::from_millis(10));
        }
        if !pid_alive(self.pid) {
            self.fail("the pidfile was written but the process does not exist");
        }
        if !self.spec.blocked_in.is_empty() {
            self.wait_in_syscall("after restore");
        }
        if self.fingerprint_before.is_some() {
            self.check_fingerprint();
        }
    }

    /// Take the tree's fingerprint now (before a dump): `wait_pidfile` compares it after the
    /// restore.
    pub fn fingerprint_before(&mut self) {
        self.fingerprint_before = Some(fingerprint(self.pid));
    }

    /// The restored tree's fingerprint must equal the one taken before the dump, but for the
    /// differences `fingerprint::ALLOWED` explains.
    pub fn check_fingerprint(&mut self) {
        let Some(before) = self.fingerprint_before.take() else {
            self.fail("no fingerprint was taken before the dump")
        };
        // A restored thread may not be back in its syscall yet (its mask, its state): a real
        // difference stays, a passing one is given 3 s to go.
        let deadline = Instant::now() + Duration::from_secs(3);
        let (after, diff) = loop {
            let after = fingerprint(self.pid);
            let diff = before.differences(&after);
            if diff.is_empty() || Instant::now() > deadline {
                break (after, diff);
            }
            sleep(Duration::from_millis(50));
        };
        let _ = fs::write(self.w.join("fingerprint.before"), before.text());
        let _ = fs::write(self.w.join("fingerprint.after"), after.text());
        if !diff.is_empty() {
            self.fail(&format!(
                "the restored tree differs from the dumped one (W/fingerprint.before, .after):\n{}",
                diff.join("\n")
            ));
        }
    }

    /// Send "go" (SIGUSR2).
    pub fn go(&self) {
        if let Err(e) = send_signal(self.pid, "USR2") {
            self.fail(&format!("cannot send SIGUSR2: {e}"));
        }
    }

    /// Wait for the ferry restore we started and return its exit status.
    pub fn wait_restore_exit(&mut self) -> ExitStatus {
        let mut restore = match self.restore.take() {
            Some(r) => r,
            None => self.fail("no ferry restore is running"),
        };
        match wait_timeout(&mut restore, EXIT_TIMEOUT) {
            Some(status) => status,
            None => {
                self.restore = Some(restore);
                self.fail(&format!("ferry restore did not exit within {EXIT_TIMEOUT:?} after go"));
            }
        }
    }

    /// Wait for the original workload (our child) to exit and return its status.
    pub fn wait_child_exit(&mut self) -> ExitStatus {
        let mut child = match self.child.take() {
            Some(c) => c,
            None => self.fail("the workload is not our child any more"),
        };
        match wait_timeout(&mut child, EXIT_TIMEOUT) {
            Some(status) => status,
            None => {
                self.child = Some(child);
                self.fail(&format!("the workload did not exit within {EXIT_TIMEOUT:?} after go"));
            }
        }
    }

    pub fn result(&self) -> String {
        fs::read_to_string(self.w.join("result")).unwrap_or_default().trim().to_string()
    }

    /// The verdict must be PASS with exit status 0.
    pub fn expect_pass(&self, status: ExitStatus, whose: &str) {
        let result = self.result();
        if result != "PASS" {
            self.fail(&format!("verdict {result:?} ({whose} {})", describe(status)));
        }
        if !status.success() {
            self.fail(&format!("{whose} {} although the verdict is PASS", describe(status)));
        }
    }

    /// Poll until W/result exists (for processes that are not our children).
    pub fn wait_result_file(&self) {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        while !self.w.join("result").exists() {
            if Instant::now() > deadline {
                self.fail(&format!("no result file within {EXIT_TIMEOUT:?} after go"));
            }
            sleep(Duration::from_millis(10));
        }
    }

    /// The state letter of /proc/PID/stat and the TracerPid, if the process exists.
    pub fn proc_state(&self) -> Option<(char, i32)> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        let state = stat.rsplit_once(") ")?.1.chars().next()?;
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let tracer =
            status.lines().find_map(|l| l.strip_prefix("TracerPid:")).and_then(|v| v.trim().parse().ok()).unwrap_or(-1);
        Some((state, tracer))
    }

    /// The workload must be alive, not stopped and not traced (e.g. after a failed dump).
    pub fn expect_running_untraced(&self, when: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.proc_state() {
                None => self.fail(&format!("{when}: the workload is gone")),
                Some(('Z' | 'X', _)) => self.fail(&format!("{when}: the workload died")),
                Some((state, tracer)) if state != 'T' && state != 't' && tracer == 0 => return,
                Some((state, tracer)) => {
                    if Instant::now() > deadline {
                        self.fail(&format!("{when}: the workload is left in state {state}, traced by {tracer}"));
                    }
                }
            }
            sleep(Duration::from_millis(20));
        }
    }
}

/// The processes of the tree rooted at `pid` (itself first): ferry's own walk.
pub use ferry_engine::freeze::tree_pids;

impl Drop for Run {
    fn drop(&mut self) {
        // Leave nothing running: the workload and its descendants, a restored tree, ferry.
        for p in tree_pids(self.pid).into_iter().skip(1) {
            let _ = send_signal(p, "KILL");
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        } else if pid_alive(self.pid) {
            let _ = send_signal(self.pid, "KILL");
        }
        if let Some(mut restore) = self.restore.take() {
            if pid_alive(self.pid) {
                let _ = send_signal(self.pid, "KILL");
            }
            let _ = wait_timeout(&mut restore, Duration::from_secs(5));
            let _ = restore.kill();
            let _ = restore.wait();
        }
    }
}

/// Wait for a child with a timeout.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(e) => panic!("waiting for pid {}: {e}", child.id()),
        }
        if Instant::now() > deadline {
            return None;
        }
        sleep(Duration::from_millis(5));
    }
}

/// Whether a live (not zombie) process has this pid.
pub fn pid_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next()), Some('Z' | 'X')),
        Err(_) => false,
    }
}

/// kill(1) -SIG PID (the workspace forbids `unsafe`, so no libc::kill here).
pub fn send_signal(pid: i32, sig: &str) -> Result<(), String> {
    let out = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run kill: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("kill -{sig} {pid}: {} {}", out.status, String::from_utf8_lossy(&out.stderr).trim()))
    }
}

pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => format!("ended with {status}"),
    }
}

pub fn path_str(p: &Path) -> String {
    p.to_str().unwrap_or_else(|| panic!("non-UTF-8 path {}", p.display())).to_string()
}

/// The last `max` bytes of a file, as text.
pub fn read_tail(path: &Path, max: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max);
            let mut text = String::from_utf8_lossy(&bytes[start..]).into_owned();
            if start > 0 {
                text.insert_str(0, "[...]\n");
            }
            text
        }
        Err(e) => format!("({e})"),
    }
}

/// Without ferry: ready -> go -> PASS. Tells a broken workload from a broken ferry.
pub fn control(spec: &Spec) {
    let mut run = Run::start(spec);
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload");
}

/// The full cycle: ready -> dump (kills) -> reap -> restore -> go -> PASS, with ferry restore
/// exiting with the workload's status. `before_go` runs once the restored process runs.
pub fn cycle_with(spec: &Spec, before_go: impl FnOnce(&mut Run)) -> Run {
    let mut run = Run::start(spec);
    if spec.fingerprint {
        run.fingerprint_before();
    }
    run.dump_ok(&[]);
    run.reap_dumped();
    let img = run.img();
    let pidfile = run.spawn_restore("restore", &img, &[]);
    run.wait_pidfile(&pidfile);
    before_go(&mut run);
    run.go();
    let status = run.wait_restore_exit();
    run.expect_pass(status, "ferry restore");
    run
}

pub fn cycle(spec: &Spec) {
    cycle_with(spec, |_| {});
}

/// Poll `f` every 20 ms until it holds; fail the test after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(20));
    }
}

/// Wait until every process of an image is gone from /proc (killed tree members are reaped by
/// PID 1, slowly here).
pub fn wait_image_pids_gone(img: &Path) {
    let reader = ferry_image::ImageReader::open(img).expect("open image");
    for &pid in &reader.inventory().pids {
        let dir = format!("/proc/{pid}");
        wait_for(&format!("pid {pid} to be reaped"), Duration::from_secs(90), || !Path::new(&dir).exists());
    }
}

/// `ferry dump` of `pid` must fail with one line naming `expect` and the pid, and leave no
/// complete-looking image.
pub fn dump_refused(pid: i32, dir: &Path, expect: &str) {
    refused_dump(Command::new(ferry_bin()), pid, dir, expect);
}

/// [`dump_refused`] by a ferry whose fd table holds `nofile` fds (`prlimit --nofile`).
pub fn dump_refused_with_nofile(pid: i32, dir: &Path, nofile: u32, expect: &str) {
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={nofile}:{nofile}")).arg(ferry_bin());
    refused_dump(cmd, pid, dir, expect);
}

fn refused_dump(mut ferry: Command, pid: i32, dir: &Path, expect: &str) {
    let out = ferry.args(["dump", "-t", &pid.to_string(), "-D", &path_str(dir)]).output().expect("run ferry dump");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "dump of pid {pid} should have been refused");
    assert!(
        err.contains(expect) && err.contains(&pid.to_string()),
        "error does not name {expect:?} and pid {pid}: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "the error is not one line: {err}");
    assert!(!dir.join("inventory.img").exists(), "a refused dump left a complete-looking image");
    // (Nor anything hidden: its staging directory, with the page files allocated ahead of the
    // freeze, dump.rs reserve_pages.)
    let left: Vec<String> = fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(!left.iter().any(|n| n.starts_with('.')), "a refused dump left files of its own: {left:?}");
}

/// The cycle of a tree that is a whole pid namespace, dumped as its init `init` (pid 1 inside,
/// not `run.pid`): dump, restore with `extra` into a new pid namespace (the restored init's pid,
/// as this host sees it, from the pidfile), go, and the workload's own verdict.
pub fn cycle_pidns_init(run: &mut Run, init: i32, extra: &[&str]) {
    let img = run.img();
    let res = run.ferry(
        "dump",
        &["dump".into(), "-t".into(), init.to_string(), "-D".into(), path_str(&img)],
        Duration::from_secs(60),
    );
    if !res.status.success() {
        run.fail("ferry dump of the namespace's init failed");
    }
    wait_for("the dumped init to be gone", Duration::from_secs(20), || !pid_alive(init));
    let pidfile = run.spawn_restore("restore", &img, extra);
    let deadline = Instant::now() + Duration::from_secs(60);
    let host = loop {
        if let Some(p) = fs::read_to_string(&pidfile).ok().and_then(|t| t.trim().parse::<i32>().ok()) {
            break p;
        }
        if let Some(Ok(Some(st))) = run.restore.as_mut().map(|r| r.try_wait()) {
            run.restore = None;
            run.fail(&format!("ferry restore exited before writing the pidfile: {}", describe(st)));
        }
        if Instant::now() > deadline {
            run.fail("no pidfile");
        }
        sleep(Duration::from_millis(10));
    };
    let guard = ProcGuard::new();
    guard.add(host);
    send_signal(host, "USR2").expect("send go");
    let status = run.wait_restore_exit();
    run.expect_pass(status, "ferry restore");
}

/// A tree's whole cycle: dump, wait until every pid of the image is free, restore, go, and the
/// workload's own verdict.
pub fn cycle_tree(spec: &Spec, extra_dump: &[&str]) {
    let mut run = Run::start(spec);
    if spec.fingerprint {
        run.fingerprint_before();
    }
    run.dump_ok(extra_dump);
    run.reap_dumped();
    wait_image_pids_gone(&run.img());
    run.restore_and_verify(&spec.name);
}

/// Whether the tests run with a controlling terminal (then workloads need a session of their own).
pub fn on_terminal() -> bool {
    File::open("/dev/tty").is_ok()
}

/// A command that starts a workload. When the tests run from a terminal, the workload gets a
/// session of its own (setsid(1), which execs in place): it must not share the test runner's
/// controlling terminal, which ferry refuses to dump without --shell-job.
pub fn workload_command(program: &Path) -> Command {
    if on_terminal() {
        let mut c = Command::new("setsid");
        c.arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A process that holds `pid` seized with ptrace (PTRACE_SEIZE, which does not stop it) until
/// dropped: a dump of `pid` is then refused before the freeze ("already traced"), with the
/// target untouched. The kernel detaches the target when the holder dies.
pub struct HeldTraced(Child);

impl HeldTraced {
    pub fn new(pid: i32) -> HeldTraced {
        Self::hold(pid, false)
    }

    /// Seized and held in a ptrace stop (PTRACE_INTERRUPT), as a debugger holds it.
    pub fn stopped(pid: i32) -> HeldTraced {
        Self::hold(pid, true)
    }

    fn hold(pid: i32, stop: bool) -> HeldTraced {
        use std::io::BufRead as _;
        const SCRIPT: &str = "import ctypes, os, sys, time\n\
            libc = ctypes.CDLL(None, use_errno=True)\n\
            pid = int(sys.argv[1])\n\
            if libc.ptrace(0x4206, pid, 0, 0) != 0:\n\
            \x20   sys.exit('PTRACE_SEIZE: errno %d' % ctypes.get_errno())\n\
            if sys.argv[2] == 'stop':\n\
            \x20   if libc.ptrace(0x4207, pid, 0, 0) != 0:\n\
            \x20       sys.exit('PTRACE_INTERRUPT: errno %d' % ctypes.get_errno())\n\
            \x20   os.waitpid(pid, 0x40000000)\n\
            print('seized', flush=True)\n\
            time.sleep(600)\n";
        let python = python3().unwrap_or_else(|e| panic!("python3 is needed to hold a process traced: {e}"));
        let mut child = Command::new(python)
            .args(["-c", SCRIPT, &pid.to_string(), if stop { "stop" } else { "run" }])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the ptrace holder");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        assert_eq!(line.trim(), "seized", "the ptrace holder could not seize pid {pid}");
        HeldTraced(child)
    }
}

impl Drop for HeldTraced {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `dump -R` of `spec`'s workload, which goes on untraced and, after go, passes its own checks
/// (the dump took nothing from it): the run, its workload exited.
pub fn left_running_intact(spec: &Spec) -> Run {
    let mut run = Run::start(spec);
    run.dump_ok(&["-R"]);
    run.expect_running_untraced("after dump -R");
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload left running");
    run
}

/// A dump that must be refused: one line naming the pid and `expect`, no image, and the
/// workload goes on untouched (its own checks after go prove its state is intact).
pub fn refused_then_intact(spec: Spec, expect: &[&str]) {
    let mut run = Run::start(&spec);
    let img = run.img();
    let res = run.dump_to("dump", &img, &[]);
    if res.status.success() {
        run.fail("the dump was not refused");
    }
    let lines = res.stderr_lines();
    if lines.len() != 1 {
        run.fail(&format!("the error is not one line: {:?}", res.stderr));
    }
    for e in expect.iter().chain([&run.pid.to_string().as_str()]) {
        if !lines[0].contains(e) {
            run.fail(&format!("the error does not mention {e:?}: {}", lines[0]));
        }
    }
    if img.join("inventory.img").exists() {
        run.fail("a refused dump left a complete-looking image");
    }
    run.expect_running_untraced("after the refused dump");
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload after a refused dump");
}

/// The bytes of an image's page files (`pages-*.img`): what its memory takes on disk.
pub fn page_files_bytes(img: &Path) -> u64 {
    fs::read_dir(img)
        .expect("image dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum()
}
