//! Memory and process attributes that used to come back silently different (issue 11 §1): each
//! workload checks its own state after the restore; `control_*` runs it without ferry.

use crate::common::*;

fn procattrs(mode: &str) -> Spec {
    Spec::c("procattrs").args(&[mode])
}

/// oom_score_adj comes back (the restored process first has ferry's).
#[test]
fn oom_score_adj() {
    cycle(&procattrs("oom"));
}

/// The audit loginuid comes back (only the process itself may write it).
#[test]
fn loginuid() {
    cycle(&procattrs("loginuid"));
}

/// PR_SET_THP_DISABLE comes back.
#[test]
fn thp_disable() {
    cycle(&procattrs("thp"));
}

/// membarrier registrations come back: the expedited barriers work without registering again.
#[test]
fn membarrier_registrations() {
    cycle(&procattrs("membarrier"));
}

/// A periodic timerfd that expired unread: its missed expirations are all read after restore,
/// and it keeps expiring.
#[test]
fn timerfd_expired_periodic() {
    cycle(&procattrs("timerfd"));
}

/// The owner, group and mode of a pty slave (fchown/fchmod by the process) come back.
#[test]
fn pty_slave_owner_and_mode() {
    cycle(&procattrs("pty"));
}

/// Threads with their own nice value, policy (SCHED_BATCH, SCHED_IDLE with reset-on-fork) and
/// CPU affinity: each thread has its own again after restore (they used to be refused).
#[test]
fn thread_sched_kept() {
    cycle(&Spec::c("threadsched"));
}

#[test]
fn control_threadsched() {
    control(&Spec::c("threadsched"));
}

/// The property for process attributes: every line of /proc/PID/status reads the same after
/// restore, but those that change by design (docs/ARCHITECTURE.md).
#[test]
fn proc_status_unchanged() {
    cycle(&procattrs("status"));
}

/// A process that unshared a time (or pid) namespace for its future children, before any
/// fork, keeps it for them (state/nested_ns.rs; nsx::nested checks a child forked after).
#[test]
fn time_and_pid_namespace_for_children_restored() {
    for mode in ["timens", "pidns"] {
        cycle(&procattrs(mode));
    }
}

#[test]
fn control_procattrs() {
    for mode in ["oom", "loginuid", "thp", "membarrier", "timerfd", "pty", "status", "timens", "pidns"] {
        control(&procattrs(mode));
    }
}

fn memlayout(seed: u64, fork: bool) -> Spec {
    let seed = seed.to_string();
    match fork {
        true => Spec::c("memlayout").args(&[&seed, "fork"]),
        false => Spec::c("memlayout").args(&[&seed]),
    }
}

/// MADV_WIPEONFORK and MAP_DROPPABLE mappings in a parent and the child it forked: each finds
/// its own bytes and smaps flags after restore.
#[test]
fn wipeonfork_and_droppable_in_parent_and_child() {
    cycle_tree(&memlayout(0, true), &[]);
}

/// The property: random mapping layouts and advice (memlayout SEED), every byte and every smaps
/// flag of every mapping the same after restore, in one process and in a parent and its child.
#[test]
fn random_layouts_keep_bytes_and_flags() {
    for seed in 1..=8 {
        cycle(&memlayout(seed, false));
        cycle_tree(&memlayout(seed + 100, true), &[]);
    }
}

#[test]
fn control_memlayout() {
    for seed in [0, 1, 2, 3, 101, 102] {
        control(&memlayout(seed, false));
        control(&memlayout(seed, true));
    }
}

/// Anonymous PSS (KiB) of the tree rooted at `pid`, from /proc/PID/smaps_rollup.
fn tree_pss_anon(pid: i32) -> u64 {
    tree_pids(pid)
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(format!("/proc/{p}/smaps_rollup")).expect("read smaps_rollup");
            text.lines()
                .find_map(|l| l.strip_prefix("Pss_Anon:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .expect("Pss_Anon in smaps_rollup")
        })
        .sum()
}

/// The written pages of a private file mapping that a parent shares copy-on-write with its
/// child (32 MiB, about 16 MiB still shared): each finds its own view after restore, and the
/// tree's anonymous PSS stays what it was (it grows by the shared part when each process gets
/// its own copy).
#[test]
fn private_file_pages_stay_shared() {
    let spec = Spec::c("cow_file").args(&["32"]);
    let mut run = Run::start(&spec);
    let before = tree_pss_anon(run.pid);
    run.dump_ok(&[]);
    run.reap_dumped();
    let img = run.img();
    wait_image_pids_gone(&img);
    let pidfile = run.spawn_restore("restore", &img, &[]);
    run.wait_pidfile(&pidfile);
    let after = tree_pss_anon(run.pid);
    eprintln!("tree Pss_Anon: {before} KiB before, {after} KiB after");
    if after > before + 4096 {
        run.fail(&format!("the tree's anonymous PSS grew from {before} KiB to {after} KiB: the pages are not shared"));
    }
    run.go();
    let status = run.wait_restore_exit();
    run.expect_pass(status, "ferry restore");
}

#[test]
fn control_cow_file() {
    control(&Spec::c("cow_file").args(&["8"]));
}

/// A thread busy inside an rseq critical section when frozen resumes at the section's abort
/// handler, never inside it: moved between CPUs after restore, it never sees another CPU inside
/// a section.
#[test]
fn rseq_busy_thread() {
    cycle(&Spec::c("rseq_busy"));
}

#[test]
fn control_rseq_busy() {
    control(&Spec::c("rseq_busy"));
}
