//! Memory shared copy-on-write between a parent and the children it forked stays shared after
//! restore (state/cow.rs): stored once in the image, mapped once in memory.

use crate::common::*;
use std::fs;
use std::time::Duration;

fn cow(mib: &str) -> Spec {
    Spec::c("cow").args(&[mib]).ready_timeout(Duration::from_secs(60))
}

/// Sum of a field of /proc/PID/smaps_rollup (KiB) over the tree.
fn tree_kib(pid: i32, field: &str) -> (usize, u64) {
    let pids = tree_pids(pid);
    let total = pids
        .iter()
        .map(|p| {
            let text = fs::read_to_string(format!("/proc/{p}/smaps_rollup")).expect("read smaps_rollup");
            text.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .expect("field in smaps_rollup")
        })
        .sum();
    (pids.len(), total)
}

#[test]
fn cow_control() {
    control(&cow("8"));
}

/// A parent, child and grandchild sharing 64 MiB copy-on-write (each has rewritten some pages,
/// dropped others, zeroed one): every process finds its own view after restore, the image holds
/// the shared pages once, and the tree's PSS stays what it was (it would triple if each
/// process got its own copy).
#[test]
fn cow_pages_stay_shared() {
    let mut run = Run::start(&cow("64"));
    let (n, pss_before) = tree_kib(run.pid, "Pss:");
    assert_eq!(n, 3, "the workload should be three processes");
    let (_, rss_before) = tree_kib(run.pid, "Rss:");
    run.dump_ok(&[]);
    run.reap_dumped();
    let img = run.img();
    wait_image_pids_gone(&img);
    let stored = page_files_bytes(&img);
    let pidfile = run.spawn_restore("restore", &img, &[]);
    run.wait_pidfile(&pidfile);
    let (n, pss_after) = tree_kib(run.pid, "Pss:");
    let (_, rss_after) = tree_kib(run.pid, "Rss:");
    eprintln!(
        "cow: 3 processes sharing 64 MiB: page files {} KiB; PSS {pss_before} -> {pss_after} KiB, RSS {rss_before} -> {rss_after} KiB",
        stored >> 10
    );
    assert_eq!(n, 3, "the restored tree should be three processes");
    // 64 MiB + the heap + a sixteenth of the pages rewritten by each process, plus slack.
    assert!(stored < 90 << 20, "the image stores shared pages more than once: {stored} bytes of page files");
    assert!(
        pss_after < pss_before + pss_before / 5 + 4096,
        "pages are no longer shared after restore: PSS {pss_before} KiB before, {pss_after} KiB after"
    );
    run.go();
    let status = run.wait_restore_exit();
    run.expect_pass(status, "ferry restore");
}

/// The tracer's way (when a process cannot premap a shared mapping itself, forced here with
/// FERRY_COW_PREMAP=0): each process is rebuilt from its parent's pages plus its own, correct
/// though no longer shared.
#[test]
fn cow_built_by_the_tracer_when_not_premapped() {
    let mut run = Run::start(&cow("8"));
    run.dump_ok(&[]);
    run.reap_dumped();
    wait_image_pids_gone(&run.img());
    run.ferry_env.push(("FERRY_COW_PREMAP", "0"));
    run.restore_and_verify("ferry restore (tracer-built shared memory)");
}

/// `dump -R` reads the tree's memory without unsharing it (process_vm_readv would: the kernel
/// copies a page that may be shared before pinning it), so the tree that runs on uses the
/// memory it used before, and carries on correctly.
#[test]
fn cow_dump_leave_running_keeps_sharing() {
    let mut run = Run::start(&cow("32"));
    let (_, pss_before) = tree_kib(run.pid, "Pss:");
    run.dump_ok(&["-R"]);
    let (n, pss_after) = tree_kib(run.pid, "Pss:");
    assert_eq!(n, 3, "the tree should still be three processes");
    assert!(
        pss_after < pss_before + pss_before / 10 + 2048,
        "dumping unshared the tree's pages: PSS {pss_before} KiB before, {pss_after} KiB after"
    );
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the tree after dump -R");
}
