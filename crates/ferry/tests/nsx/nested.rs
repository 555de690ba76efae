//! Nested namespaces (state/nested_ns.rs): processes of one tree in net, uts, ipc and time
//! namespaces of their own below the root's, and in a pid namespace nested in the tree's.
//! `nestedns` checks from inside each process after the restore (see its header).

use super::{go_and_pass, run_detached};
use crate::common::*;
use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn control_nested_sets() {
    control(&Spec::c("nestedns").args(&["sets"]));
}

/// A child in its own uts, net (lo up, a TCP listener) and ipc (a SysV queue) namespaces with
/// a grandchild sharing them, and a child whose child is in a time namespace 1000 s ahead.
#[test]
fn nested_net_uts_ipc_time_restored() {
    cycle(&Spec::c("nestedns").args(&["sets"]));
}

/// The same, the root in uts, net and ipc namespaces of its own (a container's init whose
/// children unshare further ones).
#[test]
fn nested_below_own_namespaces_restored() {
    let unshare = need("unshare", "util-linux");
    let mut spec = Spec::c("nestedns").args(&["sets"]);
    spec.pre_args = vec!["--uts".into(), "--net".into(), "--ipc".into(), spec.program.clone().into_os_string()];
    spec.program = unshare;
    cycle(&spec);
}

/// `unshare -p -f` in a tree that is not a pid namespace: the nested init and its child keep
/// their pids at both levels, the unsharer's children still go to that namespace.
#[test]
fn nested_pidns_in_host_tree_restored() {
    cycle(&Spec::c("nestedns").args(&["pid"]));
}

fn ferry(args: &[&str]) -> std::process::Output {
    Command::new(ferry_bin()).args(args).stdin(Stdio::null()).output().expect("run ferry")
}

fn pidns_job(w: &WorkDir) -> (i32, ProcGuard) {
    let (pid, g) = run_detached(w, Command::new(ferry_bin()), &["--pidns"], "nestedns", &["pid"]);
    wait_for("nestedns to be ready", Duration::from_secs(60), || w.join("ready").exists());
    (pid, g)
}

#[test]
fn control_nested_pidns_job() {
    let w = WorkDir::new("nested-pid-control");
    let (pid, _g) = pidns_job(&w);
    go_and_pass(&w, pid);
}

/// `unshare -p -f` inside a `ferry run --pidns` job: three pid levels below ferry's, a thread
/// in the nested namespace; every pid of the tree's and the nested level kept.
#[test]
fn nested_pidns_in_pidns_job_restored() {
    let w = WorkDir::new("nested-pid");
    let (pid, g) = pidns_job(&w);
    let img = w.join("img");
    let d = ferry(&["dump", "-t", &pid.to_string(), "-D", &path_str(&img)]);
    assert!(d.status.success(), "ferry dump: {}", String::from_utf8_lossy(&d.stderr));
    wait_for("the dumped tree to go", Duration::from_secs(20), || !pid_alive(pid));
    let pidfile = w.join("restored.pid");
    let r = ferry(&["restore", "-d", "-D", &path_str(&img), "--pidfile", &path_str(&pidfile)]);
    assert!(r.status.success(), "ferry restore: {}", String::from_utf8_lossy(&r.stderr));
    let restored: i32 = fs::read_to_string(&pidfile).expect("pidfile").trim().parse().expect("pid");
    g.add(restored);
    go_and_pass(&w, restored);
}

/// `unshare -T` without a fork: the process's future children go to a time namespace nobody is
/// in yet (500 s ahead); after the restore a child it forks lands in one with those clocks, and
/// the process itself stays in its own.
#[test]
fn pending_time_for_children_restored() {
    cycle(&Spec::c("nestedns").args(&["timekids"]));
}

#[test]
fn control_pending_time_for_children() {
    control(&Spec::c("nestedns").args(&["timekids"]));
}

/// A time namespace for a process's children that a child of it is already in stays refused:
/// the process could not be given it back without moving itself into it.
#[test]
fn busy_time_for_children_refused() {
    let run = Run::start(&Spec::c("nestedns").args(&["timebusy"]));
    dump_refused(run.pid, &run.w.join("img"), "a time namespace for its future children (its child");
    assert!(pid_alive(run.pid), "a refused dump killed the workload");
}

/// Every process below `pid` (children first found by /proc/PID/task/*/children).
fn descendants(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        for t in
            fs::read_dir(format!("/proc/{}/task", out[i])).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default()
        {
            let kids = fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(kids.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
        }
        i += 1;
    }
    out
}

/// NSpid of every process below `pid` but ferry's own level, sorted: the pids the tree sees.
fn inner_pids(pid: i32) -> Vec<String> {
    let mut v: Vec<String> = descendants(pid)
        .iter()
        .filter_map(|p| {
            let st = fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            let line = st.lines().find(|l| l.starts_with("NSpid:"))?.to_string();
            Some(line.split_whitespace().skip(2).collect::<Vec<_>>().join(" "))
        })
        .collect();
    v.sort();
    v
}

/// The real `unshare -p -f` inside a `ferry run --pidns` job, a shell and two sleeps in the
/// nested namespace: after the restore every process has the same pids in the job's namespace
/// and in the nested one.
#[test]
fn nested_pidns_real_unshare_restored() {
    need("unshare", "util-linux");
    let w = WorkDir::new("nested-unshare");
    let pidfile = w.join("init.pid");
    let st = Command::new(ferry_bin())
        .args(["run", "--pidns", "-d", "--pidfile", &path_str(&pidfile), "--"])
        .args(["unshare", "-p", "-f", "--kill-child", "sh", "-c", "sleep 1000 & sleep 1000; wait"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(w.join("out.log")).expect("log"))
        .status()
        .expect("ferry run");
    assert!(st.success(), "ferry run: {}", read_tail(&w.join("out.log"), 2000));
    let pid: i32 = fs::read_to_string(&pidfile).expect("pidfile").trim().parse().expect("pid");
    let g = ProcGuard::new();
    g.add(pid);
    wait_for("both sleeps", Duration::from_secs(20), || inner_pids(pid).len() == 5);
    let before = inner_pids(pid);
    assert!(before.iter().filter(|p| p.split(' ').count() == 2).count() == 3, "not nested: {before:?}");
    let img = w.join("img");
    let d = ferry(&["dump", "-t", &pid.to_string(), "-D", &path_str(&img)]);
    assert!(d.status.success(), "ferry dump: {}", String::from_utf8_lossy(&d.stderr));
    wait_for("the dumped tree to go", Duration::from_secs(20), || !pid_alive(pid));
    let restored_pidfile = w.join("restored.pid");
    let r = ferry(&["restore", "-d", "-D", &path_str(&img), "--pidfile", &path_str(&restored_pidfile)]);
    assert!(r.status.success(), "ferry restore: {}", String::from_utf8_lossy(&r.stderr));
    let restored: i32 = fs::read_to_string(&restored_pidfile).expect("pidfile").trim().parse().expect("pid");
    g.add(restored);
    assert_eq!(inner_pids(restored), before, "pids in the job's and the nested pid namespace");
}
