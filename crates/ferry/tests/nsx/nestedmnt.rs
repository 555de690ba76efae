//! Nested mount namespaces (state/nested_ns.rs, state/mounts.rs `restore_nested`): a process
//! of the tree in a mount namespace of its own, made by `unshare(CLONE_NEWNS)` below the root's,
//! with a tmpfs holding a file it keeps open, maps and works in, and a read-only bind mount.
//! `nestedmnt` checks from inside each process after the restore (see its header).

use crate::common::*;

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

/// A fresh devpts in a nested mount namespace (a new instance, its options) with a pty pair
/// of it held across: the instance is mounted again there and the pair made in it with its
/// index (1, with 0 free), its slave node's mode and the bytes left unread both ways (the
/// workload checks its mount tree, the index, that its slave is the node W/tmp/1 of the devpts
/// on W/tmp, and bytes both ways).
#[test]
fn nested_mntns_devpts_restored() {
    cycle(&spec("devpts"));
}

#[test]
fn control_nested_mnt_devpts() {
    control(&spec("devpts"));
}

/// Removes the workload's cgroup (named by the workload's root pid, set once it runs) at the
/// end, pass or fail: made before the run, so dropped after it (its processes gone).
#[derive(Default)]
struct Cgroup(std::cell::Cell<i32>);

impl Drop for Cgroup {
    fn drop(&mut self) {
        for base in ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"] {
            let _ = std::fs::remove_dir(format!("{base}/ferry-nestedmnt-{}", self.0.get()));
        }
    }
}

/// A fresh cgroup2 in a nested mount namespace of a process in a nested cgroup namespace
/// rooted in a cgroup of its own: mounted again from inside that cgroup namespace, so rooted
/// in the same cgroup (the workload checks its mount tree, that the mount is its cgroup's
/// directory with its pid in cgroup.procs, and /proc/self/cgroup).
#[test]
fn nested_mntns_fresh_cgroup2_restored() {
    let cg = Cgroup::default();
    let mut run = Run::start(&spec("cgroup"));
    cg.0.set(run.pid);
    run.dump_ok(&[]);
    run.reap_dumped();
    wait_image_pids_gone(&run.img());
    run.restore_and_verify("ferry restore (fresh cgroup2 in a nested mount namespace)");
}

#[test]
fn control_nested_mnt_cgroup() {
    let cg = Cgroup::default();
    let mut run = Run::start(&spec("cgroup"));
    cg.0.set(run.pid);
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload");
}

/// A `ferry run --pidns --mntns` job whose child unshares a mount namespace and mounts a fresh
/// proc there (of the job's pid namespace): after the restore the child's proc shows the new
/// pid namespace, mounted again by the child itself (the workload checks its mount tree and
/// that W/proc/self is its pid). Its copy of the job's /proc comes back as the job's own does:
/// a proc of the job's pid namespace.
#[test]
fn nested_mntns_proc_of_tree_pidns_restored() {
    use std::process::{Command, Stdio};
    use std::time::Duration;
    // (In /dev/shm: the job's /tmp is its own. ferry and the workload copied there: the job's
    // init is ferry, whose file must be reachable in the job's mount namespace.)
    let d = std::path::PathBuf::from(format!("/dev/shm/ferry-e2e-nestedfs-pidproc-{}", std::process::id()));
    struct Gone(std::path::PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    std::fs::create_dir_all(&d).expect("work dir");
    let _gone = Gone(d.clone());
    let dir = path_str(&d);
    let log = d.join("ferry.log");
    let bin = d.join("ferry");
    std::fs::copy(ferry_bin(), &bin).expect("copy ferry");
    let workload = d.join("nestedmnt");
    std::fs::copy(ferry_workloads::path("nestedmnt"), &workload).expect("copy the workload");
    let ferry = |args: &[&str]| {
        let f = std::fs::OpenOptions::new().create(true).append(true).open(&log).expect("log");
        let st = Command::new(&bin)
            .args(args)
            .current_dir(&d)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log"))
            .stderr(f)
            .status()
            .expect("run ferry");
        assert!(st.success(), "ferry {}: {}", args.join(" "), read_tail(&log, 3000));
    };
    let pidfile = format!("{dir}/init.pid");
    ferry(&["run", "--mntns", "--pidns", "-d", "--pidfile", &pidfile, "--", &path_str(&workload), &dir, "pidproc"]);
    let pid: i32 = std::fs::read_to_string(&pidfile).expect("pidfile").trim().parse().expect("pid");
    let guard = ProcGuard::new();
    guard.add(pid);
    wait_for("the job's ready", Duration::from_secs(60), || d.join("ready").exists());
    let img = format!("{dir}/img");
    ferry(&["dump", "-t", &pid.to_string(), "-D", &img]);
    wait_for("the dumped tree to go", Duration::from_secs(20), || !pid_alive(pid));
    let restored_pidfile = format!("{dir}/restored.pid");
    ferry(&["restore", "-d", "-D", &img, "--pidfile", &restored_pidfile]);
    let restored: i32 = std::fs::read_to_string(&restored_pidfile).expect("pidfile").trim().parse().expect("pid");
    guard.add(restored);
    send_signal(restored, "USR2").expect("send go");
    wait_for("the job's result", Duration::from_secs(60), || d.join("result").exists());
    let result = std::fs::read_to_string(d.join("result")).unwrap_or_default();
    let child = std::fs::read_to_string(d.join("child-c")).unwrap_or_default();
    assert_eq!(result.trim(), "PASS", "the job's result (C: {child}); log:\n{}", read_tail(&d.join("out.log"), 3000));
}

/// A namespace file bound from the host at dump (`ip netns add`: /run/netns/NAME, in the tree's
/// mount namespace and in the nested one's copy of it) and gone by the restore: the restore
/// leaves it out of the tree's mount namespace (warned, as before) and of the nested copy too,
/// as in its parent (before, the nested copy failed the restore: seen when another test's
/// network namespace came and went during a dump).
#[test]
fn nested_mntns_copy_of_a_host_netns_file_gone_left_out() {
    let unshare = need("unshare", "util-linux");
    need("ip", "iproute2");
    struct Netns(String);
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip").args(["netns", "delete", &self.0]).status();
        }
    }
    let ns = Netns(format!("ferry-nestedgone-{}", std::process::id()));
    let ip_netns = |verb: &str| {
        let st = std::process::Command::new("ip").args(["netns", verb, &ns.0]).status().expect("run ip netns");
        assert!(st.success(), "ip netns {verb} {} failed", ns.0);
    };
    ip_netns("add");
    let mut s = spec("one");
    s.pre_args = vec!["--mount".into(), "--propagation".into(), "private".into(), s.program.clone().into_os_string()];
    s.program = unshare;
    let mut run = Run::start(&s);
    run.dump_ok(&[]);
    run.reap_dumped();
    ip_netns("delete");
    run.restore_and_verify("ferry restore with a host netns file gone since the dump");
}
