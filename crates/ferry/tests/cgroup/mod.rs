//! Cgroup membership (state/cgroup.rs): processes and threads come back in the cgroups they
//! were in, v1 and v2, whether the cgroups still exist at restore or ferry recreates them.

use crate::common::*;
use std::fs;

fn remove_cgroups(pid: i32) {
    for d in [
        format!("/sys/fs/cgroup/pids/ferry-e2e-{pid}/child"),
        format!("/sys/fs/cgroup/pids/ferry-e2e-{pid}"),
        format!("/sys/fs/cgroup/unified/ferry-e2e-{pid}"),
    ] {
        fs::remove_dir(&d).unwrap_or_else(|e| panic!("cannot remove {d}: {e}"));
    }
}

#[test]
fn cgroup_control() {
    control(&Spec::c("cgroup"));
}

/// The cgroups still exist (with a pids.max limit): the tree goes back into them.
#[test]
fn cgroup_membership_restored() {
    cycle_tree(&Spec::c("cgroup"), &[]);
}

/// The cgroups were removed after the dump: restore creates them again and puts the tree there.
#[test]
fn cgroup_recreated_at_restore() {
    let mut run = Run::start(&Spec::c("cgroup").args(&["recreated"]));
    run.dump_ok(&[]);
    run.reap_dumped();
    wait_image_pids_gone(&run.img());
    remove_cgroups(run.pid);
    run.restore_and_verify("ferry restore (cgroups recreated)");
}

/// `restore --manage-cgroups=ignore` (CRIU's mode) leaves the tree in ferry's own cgroups; the
/// modes that would restore limits are refused in one line, before anything is created.
#[test]
fn cgroup_ignored_on_request() {
    let mut run = Run::start(&Spec::c("cgroup"));
    run.dump_ok(&[]);
    run.reap_dumped();
    wait_image_pids_gone(&run.img());
    let img = path_str(&run.img());
    let full =
        run.ferry("restore-full", &["restore", "-D", &img, "--manage-cgroups=full"].map(String::from), RESTORE_TIMEOUT);
    if full.status.success() || full.stderr_lines().len() != 1 || !full.stderr.contains("not supported yet") {
        run.fail(&format!("--manage-cgroups=full was not refused in one line: {}", full.stderr));
    }
    if pid_alive(run.pid) {
        run.fail("a refused restore left a process behind");
    }
    let pidfile = run.spawn_restore("restore", &run.img(), &["--manage-cgroups=ignore"]);
    run.wait_pidfile(&pidfile);
    let theirs = fs::read_to_string(format!("/proc/{}/cgroup", run.pid)).unwrap_or_default();
    let ours = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    kill_tree(run.pid); // (the workload has a child: killing the root alone would orphan it)
    let _ = run.wait_restore_exit();
    remove_cgroups(run.pid);
    assert_eq!(theirs, ours, "with --manage-cgroups=ignore the restored process is not in ferry's cgroups");
}
