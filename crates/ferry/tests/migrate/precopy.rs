//! Pre-copy into a live restore: the pre-copied pages go to their own addresses in `ferry
//! serve`, the restored tree inherits them (docs/migration.md, "Where does a pre-copied page
//! go"), so the downtime does not grow with the memory.

use super::*;

/// A nearly idle 512 MiB process (one page written every 10 ms): pre-copy pauses it for less
/// than a tenth of what stop-and-copy does, measured in the same test; both restored copies
/// check every page themselves.
#[test]
fn migrate_pre_copy_512mib_idle_downtime_a_tenth_of_stop_and_copy() {
    let _heavy = heavy_lock();
    let stop = migrate_and_verify_rate(512, 0, &[], "");
    let pre = migrate_and_verify_rate(512, 0, &["--pre-copy"], "");
    eprintln!("512 MiB idle: stop-and-copy downtime {stop} ms, pre-copy downtime {pre} ms");
    assert!(pre * 10 < stop, "pre-copy downtime {pre} ms is not under a tenth of stop-and-copy's {stop} ms");
}

/// Pages sent in a round and then dropped (MADV_DONTNEED, some written again), before or during
/// the final round: the restored memory is the one at the freeze (the dirtier checks every
/// page: dropped ones must read as zeros).
#[test]
fn migrate_pre_copy_pages_dropped_come_back_as_at_the_freeze() {
    migrate_and_verify_rate(128, 2048, &["--pre-copy"], "drop");
}

/// Pages sent in a round and then mapped anew at the same address (munmap, mmap MAP_FIXED)
/// with other content: the restored memory is the one at the freeze. (A round's
/// PAGEMAP_SCAN with PM_SCAN_CHECK_WPASYNC failed with EPERM at the new, unregistered mapping
/// after it had write-protected written pages before it without reporting them: 1 to 20 of
/// 32768 pages came back with their older copy.)
#[test]
fn migrate_pre_copy_pages_mapped_anew_come_back_as_at_the_freeze() {
    migrate_and_verify_rate(128, 2048, &["--pre-copy"], "remap");
}

/// Memory mapped MAP_NORESERVE (as jemalloc maps its heaps: redis) is handed over in place too
/// (it went into the image after the freeze before), in a mapping made anew without reserve
/// that the pages move into: the restored process finds its mapping as at ready (bounds,
/// permissions, the whole VmFlags line: "nr", no "ac") and every page as at the freeze (some
/// dropped with MADV_DONTNEED, which must read as zeros).
#[test]
fn migrate_pre_copy_noreserve_memory_handed_over_in_place() {
    migrate_and_verify_rate(128, 2048, &["--pre-copy"], "noreserve,drop");
}

/// The mappings a pre-copy migration made in `ferry serve` (pid `pid`) overlapping `lo..hi`.
fn serve_maps_in(pid: i32, lo: u64, hi: u64) -> Vec<String> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines()
        .filter(|l| {
            let Some((a, b)) = l.split_whitespace().next().and_then(|r| r.split_once('-')) else { return false };
            let (a, b) = (u64::from_str_radix(a, 16).unwrap_or(0), u64::from_str_radix(b, 16).unwrap_or(0));
            a < hi && b > lo
        })
        .map(str::to_string)
        .collect()
}

fn rss_kib(pid: i32) -> u64 {
    super::serve::usage(pid).0
}

/// A pre-copy migration whose restore fails on the destination (the pid is taken: no pid
/// namespace, both nodes on this machine) after its memory was put in place there: `ferry
/// serve` unmaps all of it (its resident memory and its mappings go back) and the source
/// resumes its tree.
#[test]
fn migrate_pre_copy_failed_restore_leaves_nothing_mapped_in_serve() {
    let _heavy = heavy_lock();
    let nodes = Nodes::new();
    let wl = Workload::start(&nodes, "migrate-pre-fails", 128, false);
    let auth = wl.w.join("auth");
    keygen(&auth);
    let server = Server::start(&nodes, &wl.w, &auth, &[]);
    let serve_pid = server.child.id() as i32;
    assert_eq!(fs::read_to_string(format!("/proc/{serve_pid}/comm")).unwrap_or_default().trim(), "ferry");
    // the workload's memory: its largest anonymous mapping
    let maps = fs::read_to_string(format!("/proc/{}/maps", wl.pid)).expect("workload maps");
    let (lo, hi) = maps
        .lines()
        .filter(|l| l.split_whitespace().count() == 5)
        .filter_map(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
        })
        .max_by_key(|(a, b)| b - a)
        .expect("an anonymous mapping");
    assert!(hi - lo >= 128 << 20, "{lo:#x}-{hi:#x}");
    let rss0 = rss_kib(serve_pid);
    let m = migrate_with(&nodes, &wl, &auth, "migrate", &["--pre-copy"]);
    assert!(!m.ok, "the migration succeeded although the pid is taken: {}", m.stdout);
    assert!(m.stderr.contains("already in use") && m.stderr.contains("keeps running here"), "{}", m.stderr);
    wait_for("the restore failure on the destination", Duration::from_secs(20), || {
        server.log().contains("restore failed")
    });
    assert!(in_place_mib(&server.log()) >= 64, "the memory was not put in place: {}", server.log());
    let left = serve_maps_in(serve_pid, lo, hi);
    assert!(left.is_empty(), "ferry serve keeps mappings at the workload's addresses: {left:?}");
    let rss = rss_kib(serve_pid);
    assert!(rss < rss0 + 32 * 1024, "ferry serve's resident memory went from {rss0} KiB to {rss} KiB");
    eprintln!("serve's resident memory: {rss0} KiB before, {rss} KiB after the failed migration");
    wl.expect_running_here("after a failed restore on the destination");
    wl.go_and_pass(wl.pid);
}

/// Pre-copy downtime figures for docs/migration.md (ignored by default: `cargo test --release
/// -p ferry --test e2e -- --ignored migrate_pre_copy_downtime_figures --nocapture`): a nearly
/// idle 1 GiB process and a 256 MiB one written at 10 MB/s, 5 runs each, medians.
#[test]
#[ignore]
fn migrate_pre_copy_downtime_figures() {
    let _heavy = heavy_lock();
    let median = |mut v: Vec<u64>| {
        v.sort_unstable();
        v[v.len() / 2]
    };
    let idle: Vec<u64> = (0..5).map(|_| migrate_and_verify_rate(1024, 0, &["--pre-copy"], "")).collect();
    let writer: Vec<u64> = (0..5).map(|_| migrate_and_verify_rate(256, 10240, &["--pre-copy"], "")).collect();
    eprintln!("pre-copy 1 GiB idle: downtime_ms {idle:?}, median {}", median(idle.clone()));
    eprintln!("pre-copy 256 MiB at 10 MB/s: downtime_ms {writer:?}, median {}", median(writer.clone()));
}
