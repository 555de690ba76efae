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
