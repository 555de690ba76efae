//! Post-copy migration (`ferry migrate --post-copy`): the tree runs on the destination at once
//! and its memory follows on fault and in the background (docs/migration.md, "Post-copy").

use super::*;

/// The 256 MiB writer moves with `--post-copy`: a small image (its memory is lazy), then every
/// page; it keeps writing and then finds every page consistent.
#[test]
fn migrate_post_copy_256mib_writer() {
    let _heavy = heavy_lock();
    migrate_and_verify_with(256, &["--post-copy"], false);
}

/// Post-copy with mappings that change under the restored process while its pages are still
/// coming: it unmaps, maps anew, mremaps and rewrites small mappings every 10 ms (`churn`).
#[test]
fn migrate_post_copy_mappings_change_while_lazy() {
    let _heavy = heavy_lock();
    migrate_and_verify_with(256, &["--post-copy"], true);
}

/// Post-copy of a process that forks while its memory is still lazy: every 200 ms a child
/// checks its whole copy of the memory (the pages its parent had not received yet reach it
/// through the userfaultfd the fork event brings).
#[test]
fn migrate_post_copy_process_forks_while_lazy() {
    let _heavy = heavy_lock();
    migrate_and_verify_mode(256, &["--post-copy"], "fork");
}

/// Post-copy of a process whose 4 threads write its memory and have the kernel read and write
/// it (pwrite/pread of lazy pages: faults in kernel mode), all waiting on the same uffd.
#[test]
fn migrate_post_copy_threads_and_kernel_faults() {
    let _heavy = heavy_lock();
    migrate_and_verify_mode(256, &["--post-copy"], "threads");
}

/// The restored pid in the destination's log ("restored in N ms as pid P").
fn restored_pid(log: &str) -> Option<i32> {
    log.split("as pid ").nth(1)?.split_whitespace().next()?.parse().ok()
}

/// The source dies while the destination still lacks pages: the destination cannot complete
/// the process and must kill it, and say so; the source's frozen copy dies with it (a
/// post-copy cannot be undone: the process is lost, never left running with holes).
#[test]
fn migrate_post_copy_source_killed_destination_kills_its_copy() {
    let _heavy = heavy_lock();
    let nodes = Nodes::new();
    let wl = Workload::start(&nodes, "migrate-post-kill", 1024, true);
    let auth = wl.w.join("auth");
    keygen(&auth);
    let server = Server::start(&nodes, &wl.w, &auth, &[]);
    let (mut child, out, err) = spawn_migrate(&nodes, &wl, &auth, "migrate", &["--post-copy"]);
    wait_for("the tree to run on the destination", Duration::from_secs(120), || {
        fs::read_to_string(&err).unwrap_or_default().contains("serving its")
    });
    child.kill().expect("kill ferry migrate");
    let _ = child.wait();
    assert!(
        !fs::read_to_string(&out).unwrap_or_default().contains("migrated pid"),
        "the migration completed before the source was killed: the test did not test anything"
    );
    wait_for("the destination to give up", Duration::from_secs(90), || server.log().contains("POST-COPY FAILED"));
    let log = server.log();
    let remote = restored_pid(&log).unwrap_or_else(|| panic!("no restored pid in the log: {log}"));
    wait_for("the destination's copy to be killed", Duration::from_secs(30), || !pid_alive(remote));
    wait_for("the source's frozen copy to die", Duration::from_secs(30), || !pid_alive(wl.pid));
    assert!(!wl.w.join("result").exists(), "a process with missing memory went on to report a result");
}

/// The destination (`ferry serve`) is SIGKILLed during post-copy: the source says so loudly,
/// exits non-zero and does not resume its copy (the destination's has run); the destination's
/// copy is killed by the watchdog ferry serve left for this.
#[test]
fn migrate_post_copy_destination_killed_source_fails_loudly() {
    let _heavy = heavy_lock();
    let nodes = Nodes::new();
    let wl = Workload::start(&nodes, "migrate-post-dkill", 1024, true);
    let auth = wl.w.join("auth");
    keygen(&auth);
    let mut server = Server::start(&nodes, &wl.w, &auth, &[]);
    let (mut child, out, err) = spawn_migrate(&nodes, &wl, &auth, "migrate", &["--post-copy"]);
    wait_for("the tree to run on the destination", Duration::from_secs(120), || {
        fs::read_to_string(&err).unwrap_or_default().contains("serving its")
    });
    wait_for("the destination's log", Duration::from_secs(30), || restored_pid(&server.log()).is_some());
    let remote = restored_pid(&server.log()).unwrap_or_default();
    server.child.kill().expect("kill ferry serve");
    let _ = server.child.wait();
    let status = wait_timeout(&mut child, Duration::from_secs(60)).expect("ferry migrate did not end");
    let stderr = fs::read_to_string(&err).unwrap_or_default();
    assert!(
        !fs::read_to_string(&out).unwrap_or_default().contains("migrated pid"),
        "the migration completed before the destination was killed: the test did not test anything"
    );
    assert!(!status.success(), "ferry migrate succeeded with the destination gone: {stderr}");
    assert!(stderr.contains("POST-COPY FAILED") && stderr.contains("lost"), "{stderr}");
    wait_for("the source's copy to be killed", Duration::from_secs(30), || !pid_alive(wl.pid));
    // ferry serve was SIGKILLed: its watchdog kills the restored tree (which must not run on
    // with zeros where its missing memory was)
    wait_for("the destination's copy to be killed", Duration::from_secs(30), || !pid_alive(remote));
    assert!(!wl.w.join("result").exists(), "a process with missing memory went on to report a result");
}

/// A lazy image (post-copy) is only for `ferry serve`; and post-copy of a tree that cannot be
/// dumped is refused before anything happens, the tree running on untouched.
#[test]
fn migrate_post_copy_unsupported_refused_up_front() {
    let nodes = Nodes::new();
    let wl = Workload::start(&nodes, "migrate-post-refused", 16, true);
    let auth = wl.w.join("auth");
    keygen(&auth);
    let _server = Server::start(&nodes, &wl.w, &auth, &[]);
    // the workload traced by another process: refused by any dump
    let held = HeldTraced::new(wl.pid);
    let m = migrate_with(&nodes, &wl, &auth, "migrate", &["--post-copy"]);
    drop(held);
    assert!(!m.ok && m.stderr.contains("already traced"), "{}", m.stderr);
    assert!(!m.stdout.contains("migrated pid"), "{}", m.stdout);
    wl.expect_running_here("after post-copy was refused");
    wl.go_and_pass(wl.pid);
}
