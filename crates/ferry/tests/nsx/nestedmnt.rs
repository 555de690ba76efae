//! Nested mount namespaces (state/nested_ns.rs, state/mounts.rs `restore_nested`): a process
//! of the tree in a mount namespace of its own, made by `unshare(CLONE_NEWNS)` below the root's,
//! with a tmpfs holding a file it keeps open, maps and works in, and a read-only bind mount.
//! `nestedmnt` checks from inside each process after the restore (see its header).

use crate::common::*;
use std::fs;
use std::time::Duration;

/// (Without the fingerprint: a recreated tmpfs has a new anonymous device number, in
/// mountinfo and in the maps of the files mapped from it. The workload checks its mounts,
/// files and mappings itself.)
fn spec(mode: &str) -> Spec {
    Spec::c("nestedmnt").args(&[mode]).without_fingerprint()
}

#[test]
fn control_nested_mnt() {
    control(&spec("one"));
}

#[test]
fn control_nested_mnt_deep() {
    control(&spec("deep"));
}

/// The root in ferry's own mount namespace, its child in one of its own.
#[test]
fn nested_mntns_restored() {
    cycle(&spec("one"));
}

/// The root in a mount namespace of its own (as `ferry run --mntns` or a container's init),
/// its child in a further one.
#[test]
fn nested_mntns_below_own_mntns_restored() {
    let unshare = need("unshare", "util-linux");
    let mut s = spec("one");
    s.pre_args = vec!["--mount".into(), "--propagation".into(), "private".into(), s.program.clone().into_os_string()];
    s.program = unshare;
    cycle(&s);
}

/// A nested mount namespace inside a nested one: the grandchild's tmpfs sits inside the
/// child's, which the grandchild sees too and the child does not see in turn.
#[test]
fn nested_mntns_in_nested_restored() {
    cycle(&spec("deep"));
}

/// A mount copied from the parent namespace in its peer group (a plain `unshare(CLONE_NEWNS)`
/// of a shared mount) stays in it: a mount made below it after the restore shows in the parent.
#[test]
fn nested_mntns_peer_group_kept() {
    cycle(&spec("peer"));
}

#[test]
fn control_nested_mnt_peer() {
    control(&spec("peer"));
}

/// A fresh sysfs and mqueue in a nested mount namespace of a process in nested network and ipc
/// namespaces: each is mounted again from inside the namespace it showed (the workload checks
/// its mount tree, that W/sys/class/net lists the devices of its own network namespace, and
/// that W/mq shows its queue with its message).
#[test]
fn nested_mntns_fresh_sysfs_mqueue_restored() {
    need("ip", "iproute2");
    let mut run = Run::start(&spec("fresh"));
    run.dump_ok(&[]);
    run.reap_dumped();
    wait_image_pids_gone(&run.img());
    run.restore_and_verify("ferry restore (fresh sysfs and mqueue in a nested mount namespace)");
}

#[test]
fn control_nested_mnt_fresh() {
    need("ip", "iproute2");
    control(&spec("fresh"));
}

/// A fresh devpts in a nested mount namespace (a new instance, with ptys ferry would have to
/// make there): refused by name.
#[test]
fn nested_mntns_devpts_refused() {
    let run = Run::start(&spec("devpts"));
    let w = &run.w;
    wait_for("pid-c", Duration::from_secs(30), || w.join("pid-c").exists());
    let c = fs::read_to_string(w.join("pid-c")).expect("pid-c").trim().to_string();
    dump_refused(run.pid, &w.join("img"), "(devpts) in a nested mount namespace");
    let err = std::process::Command::new(ferry_bin())
        .args(["dump", "-t", &run.pid.to_string(), "-D", &path_str(&w.join("img2"))])
        .output()
        .expect("run ferry dump");
    assert!(String::from_utf8_lossy(&err.stderr).contains(&format!("pid {c}")), "the error does not name pid {c}");
    assert!(pid_alive(run.pid), "a refused dump killed the workload");
}
