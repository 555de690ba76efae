//! User and cgroup namespaces (state/userns.rs, state/cgroupns.rs): a process in a user
//! namespace (made by `unshare --user --map-root-user` or `ferry run --userns`), with the
//! namespaces it owns, and a process in a cgroup namespace come back in new ones and check
//! their view from inside (maps, ids, capabilities, cgroups, ownership: the `userns` workload).

use crate::common::*;
use std::fs;
use std::time::Duration;

/// `unshare FLAGS... userns W MODE...`.
fn under_unshare(flags: &[&str], mode: &[&str]) -> Spec {
    let unshare = need("unshare", "util-linux");
    let mut spec = Spec::c("userns").args(mode);
    let mut pre: Vec<std::ffi::OsString> = flags.iter().map(|f| f.into()).collect();
    pre.push(spec.program.clone().into_os_string());
    spec.pre_args = pre;
    spec.program = unshare;
    spec
}

#[test]
fn userns_control() {
    control(&under_unshare(&["--user", "--map-root-user"], &["view"]));
}

/// A process in a user namespace of its own (root inside mapped to root, setgroups denied)
/// comes back in a new one with the same maps, ids and capabilities.
#[test]
fn userns_map_root_restored() {
    cycle(&under_unshare(&["--user", "--map-root-user"], &["view"]));
}

/// The uts, net and ipc namespaces it made from inside its user namespace are owned by the new
/// one after restore (and the host name is kept).
#[test]
fn userns_owned_uts_net_ipc_restored() {
    cycle(&under_unshare(&["--user", "--map-root-user", "--uts", "--net", "--ipc"], &["view"]));
}

/// Removes a cgroup directory and its "sub" when dropped (their processes are gone by then).
struct CgroupDir(String);

impl Drop for CgroupDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir(format!("{}/sub", self.0));
        let _ = fs::remove_dir(&self.0);
    }
}

fn cgroup_dir(tag: &str) -> CgroupDir {
    let dir = format!("/sys/fs/cgroup/unified/ferry-e2e-{tag}-{}", std::process::id());
    fs::create_dir_all(format!("{dir}/sub")).unwrap_or_else(|e| panic!("cannot create {dir}/sub: {e}"));
    CgroupDir(dir)
}

/// A cgroup namespace made in cgroup D, its process then moved to D/sub: after restore the
/// namespace's root is D again and the process sees itself in /sub.
#[test]
fn cgroupns_root_restored() {
    let cg = cgroup_dir("cgns");
    cycle(&Spec::c("userns").args(&["cgroupns", &cg.0]));
}

/// The same cgroup namespace made inside a user namespace (owned by it).
#[test]
fn userns_owned_cgroupns_restored() {
    let cg = cgroup_dir("uscgns");
    cycle(&under_unshare(&["--user", "--map-root-user"], &["cgroupns", &cg.0]));
}

/// `ferry run --userns` (every id mapped to itself): the job switches to uid 1000, gid 1000 and
/// groups 2000, 2001 inside, dropping its capabilities; all of it comes back.
#[test]
fn userns_ferry_run_job_ids_restored() {
    let mut spec = Spec::c("userns").args(&["drop"]);
    spec.pre_args = vec!["run".into(), "--userns".into(), "--".into(), spec.program.clone().into_os_string()];
    spec.program = ferry_bin().into();
    // (ferry run waits for its job: the dump's target is the job, the pid in the ready file)
    let mut run = Run::start(&spec);
    let guard = ProcGuard::new();
    run.pid = fs::read_to_string(run.w.join("ready")).expect("ready").trim().parse().expect("a pid");
    guard.add(run.pid);
    let map = fs::read_to_string(format!("/proc/{}/uid_map", run.pid)).unwrap_or_default();
    assert_eq!(map.split_whitespace().collect::<Vec<_>>(), ["0", "0", "4294967295"], "ferry run --userns map");
    assert_ne!(fs::read_link(format!("/proc/{}/ns/user", run.pid)).ok(), fs::read_link("/proc/self/ns/user").ok());
    run.dump_ok(&[]);
    if let Some(mut c) = run.child.take() {
        let _ = wait_timeout(&mut c, Duration::from_secs(10)); // (ferry run, its job killed)
    }
    run.wait_pid_gone("after the dump");
    run.restore_and_verify("ferry restore");
}

/// `ferry run --userns` where no user namespace may be made (a user namespace of the test's
/// whose `max_user_namespaces` is 0): ferry run says why and exits, instead of waiting forever
/// for a job that already gave up (it held the job's end of their pipe itself).
#[test]
fn userns_ferry_run_refused_namespace_reported() {
    let unshare = need("unshare", "util-linux");
    let script =
        format!("echo 0 > /proc/sys/user/max_user_namespaces && exec {} run --userns -- /bin/true", ferry_bin());
    let mut child = std::process::Command::new(unshare)
        .args(["--user", "--map-root-user", "sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start unshare");
    let pid = child.id() as i32;
    let Some(status) = wait_timeout(&mut child, Duration::from_secs(20)) else {
        kill_tree(pid);
        let _ = child.wait();
        panic!("ferry run --userns still waits 20 s after its job failed to make its user namespace");
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err).expect("read stderr");
    assert!(!status.success(), "ferry run --userns succeeded without a user namespace: {err}");
    assert!(err.contains("cannot create the job's user namespace"), "{err}");
}

/// What ferry cannot carry is refused by name: a nested user namespace, a multi-threaded process
/// in one that does not own its pid namespace.
#[test]
fn userns_refusals() {
    let cases = [
        (under_unshare(&["-U", "-r", "unshare", "-U", "-r"], &["view"]), "a user namespace nested in another one"),
        (threads_in_userns(), "a multi-threaded process in a user namespace that does not own its pid namespace"),
    ];
    for (spec, expect) in cases {
        let run = Run::start(&spec);
        dump_refused(run.pid, &run.w.join("img"), expect);
        assert!(pid_alive(run.pid), "a refused dump killed the workload");
    }
}

fn threads_in_userns() -> Spec {
    let unshare = need("unshare", "util-linux");
    let mut spec = Spec::c("threads");
    spec.pre_args = vec!["-U".into(), "-r".into(), spec.program.clone().into_os_string()];
    spec.program = unshare;
    spec
}

/// `unshare -U -r --pid --fork --uts --net`: the workload is pid 1 of a pid namespace made in
/// its user namespace, with its own host name and network; dumped as that init, restored in a
/// new pid namespace owned by its new user namespace (the workload checks the owner of its pid
/// namespace from inside).
#[test]
fn userns_pidns_tree_restored() {
    let spec = under_unshare(&["--user", "--map-root-user", "--pid", "--fork", "--uts", "--net"], &["view"]);
    cycle_unshare_init(&spec);
}

/// Dump the init of the pid namespace `unshare ... --pid --fork` made (its only child) and
/// restore it.
fn cycle_unshare_init(spec: &Spec) {
    let mut run = Run::start(spec);
    let children = fs::read_to_string(format!("/proc/{0}/task/{0}/children", run.pid)).expect("unshare's children");
    let init: i32 = children.split_whitespace().next().and_then(|c| c.parse().ok()).expect("the namespace's init");
    cycle_pidns_init(&mut run, init, &[]);
}

/// A multi-threaded init of a pid namespace made in its user namespace (`unshare -U -r --pid
/// --fork`): its threads come back with their ids (clone3(set_tid) from inside the user
/// namespace, which owns the new pid namespace), each checking gettid() itself.
#[test]
fn userns_pidns_threads_restored() {
    cycle_unshare_init(&under_unshare(&["--user", "--map-root-user", "--pid", "--fork"], &["threads"]));
}

/// `ferry run --uid-map 0:100000:65536 --gid-map 0:100000:65536`: root inside is 100000 outside;
/// ferry (uid 0, unmapped there) restores it as root inside, so 100000 outside again.
#[test]
fn userns_shifted_map_restored() {
    let mut spec = Spec::c("userns").args(&["view"]);
    let map = ["--uid-map", "0:100000:65536", "--gid-map", "0:100000:65536", "--"];
    spec.pre_args = std::iter::once("run").chain(map).map(Into::into).collect();
    spec.pre_args.push(spec.program.clone().into_os_string());
    spec.program = ferry_bin().into();
    let w = WorkDir::new("userns-shifted");
    // (the job writes its files there as uid 100000)
    fs::set_permissions(&w.path, std::os::unix::fs::PermissionsExt::from_mode(0o777)).expect("chmod the work dir");
    let mut run = Run::start_in(&spec, w);
    let guard = ProcGuard::new();
    run.pid = fs::read_to_string(run.w.join("ready")).expect("ready").trim().parse().expect("a pid");
    guard.add(run.pid);
    run.dump_ok(&[]);
    if let Some(mut c) = run.child.take() {
        let _ = wait_timeout(&mut c, Duration::from_secs(10)); // (ferry run, its job killed)
    }
    run.wait_pid_gone("after the dump");
    let pidfile = run.spawn_restore("restore", &run.img(), &[]);
    run.wait_pidfile(&pidfile);
    let uids = fs::read_to_string(format!("/proc/{}/status", run.pid)).unwrap_or_default();
    if !uids
        .lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["Uid:", "100000", "100000", "100000", "100000"])
    {
        run.fail(&format!("not uid 100000 outside after restore: {uids}"));
    }
    run.go();
    let status = run.wait_restore_exit();
    run.expect_pass(status, "ferry restore");
}

/// The offsets of `pid`'s time namespace (`/proc/PID/timens_offsets`), in seconds: (monotonic,
/// boottime).
fn time_offsets(run: &Run, pid: i32) -> (f64, f64) {
    let text = fs::read_to_string(format!("/proc/{pid}/timens_offsets")).unwrap_or_default();
    let get = |clock: &str| {
        text.lines().find_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [c, s, n] if c == clock => Some(s.parse::<f64>().ok()? + n.parse::<f64>().ok()? / 1e9),
            _ => None,
        })
    };
    match (get("monotonic"), get("boottime")) {
        (Some(m), Some(b)) => (m, b),
        _ => run.fail(&format!("unreadable /proc/{pid}/timens_offsets: {text:?}")),
    }
}

/// A time namespace made inside the tree's user namespace with offsets of its own
/// (`unshare -U -r --time --monotonic 1000 --boottime 2000`): restored (by `ferry restore`
/// running in a time namespace whose clocks read `shift` s ahead, a machine that booted
/// earlier, when `shift` is not 0) owned by the new user namespace (the workload's view),
/// with offsets that keep its clocks going on: the workload's CLOCK_MONOTONIC and
/// CLOCK_BOOTTIME moved as CLOCK_REALTIME did, and the offsets, which the kernel counts from
/// the host's clocks (the same kernel here), are the same as before whatever the shift.
fn cycle_owned_timens(shift: u32) {
    let flags = ["--user", "--map-root-user", "--time", "--monotonic", "1000", "--boottime", "2000"];
    let mut run = Run::start(&under_unshare(&flags, &["clocks"]));
    let view = fs::read_to_string(run.w.join("view")).unwrap_or_default();
    assert!(view.contains("time owned by own\n"), "the workload's time namespace is not its user namespace's: {view}");
    let before = time_offsets(&run, run.pid);
    assert_eq!(before, (1000.0, 2000.0), "offsets before the dump");
    run.dump_ok(&[]);
    run.reap_dumped();
    let pidfile = if shift == 0 {
        run.spawn_restore("restore", &run.img(), &[])
    } else {
        let pidfile = run.w.join("restored.pid");
        let err = fs::File::create(run.w.join("restore-shifted.err")).expect("create restore-shifted.err");
        let s = shift.to_string();
        let child = std::process::Command::new(need("unshare", "util-linux"))
            .args(["--time", "--monotonic", s.as_str(), "--boottime", s.as_str(), ferry_bin(), "restore", "-D"])
            .arg(run.img())
            .arg("--pidfile")
            .arg(&pidfile)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .expect("start unshare ferry restore");
        run.restore = Some(child);
        pidfile
    };
    run.wait_pidfile(&pidfile);
    let after = time_offsets(&run, run.pid);
    if (after.0 - before.0).abs() > 1.0 || (after.1 - before.1).abs() > 1.0 {
        run.fail(&format!("offsets {after:?} after the restore, {before:?} before (shift {shift} s)"));
    }
    let me = std::process::id();
    if fs::read_link(format!("/proc/{}/ns/time", run.pid)).ok() == fs::read_link(format!("/proc/{me}/ns/time")).ok() {
        run.fail("the restored workload is in the test's time namespace");
    }
    run.go();
    let status = run.wait_restore_exit();
    run.expect_pass(status, "ferry restore");
}

#[test]
fn userns_owned_timens_restored() {
    cycle_owned_timens(0);
}

#[test]
fn userns_owned_timens_restored_on_shifted_clocks() {
    cycle_owned_timens(100_000);
}
