//! State CRIU restores that ferry refused until now: seccomp (filters per thread, shared across
//! threads and with a child, strict mode; user notification refused), AIO rings (requests in
//! flight refused), deleted cwd and directories, deleted FIFOs and device nodes, ptys with
//! unread data.

use crate::common::*;

fn seccomp(mode: &str) -> Spec {
    let mut s = Spec::c("seccomp").args(&[mode]);
    s.name = format!("seccomp-{mode}");
    s
}

#[test]
fn seccomp_filters_control() {
    control(&seccomp("filter"));
}

/// Filters synced across threads (TSYNC), one thread's own filter, a child's inherited chain
/// with its own filter on top, a filter with SECCOMP_FILTER_FLAG_LOG: after restore each thread
/// and the child get the exact errno of their filters, and a TSYNC shows the threads still
/// share the main thread's filter object.
#[test]
fn seccomp_filters_threads_and_child() {
    cycle_tree(&seccomp("filter"), &[]);
}

#[test]
fn seccomp_strict_control() {
    control(&seccomp("strict"));
}

/// A child in strict mode, blocked in read(): restored, it reads, writes, and dies of SIGKILL
/// on its next other syscall.
#[test]
fn seccomp_strict_child() {
    cycle_tree(&seccomp("strict"), &[]);
}

/// A filter that can return SECCOMP_RET_USER_NOTIF: its listener cannot be carried, refused.
#[test]
fn seccomp_user_notif_refused() {
    let run = Run::start(&seccomp("notif"));
    dump_refused(run.pid, &run.w.join("img"), "user notification");
    run.expect_running_untraced("after the refused dump");
}

#[test]
fn ghost_nodes_control() {
    control(&Spec::c("ghostnodes"));
}

/// A removed cwd, a removed directory open twice, a removed FIFO with unread bytes, and a
/// removed device node under a removed directory: each comes back removed (st_nlink 0) with
/// its mode, shared as before, and still works.
#[test]
fn ghost_nodes() {
    // No fingerprint: the removed device node under a removed directory comes back under a
    // hidden name in /tmp, so its fd link reads another "PATH (deleted)" (docs/ARCHITECTURE.md).
    cycle(&Spec::c("ghostnodes").without_fingerprint());
}

#[test]
fn pty_queued_control() {
    control(&Spec::c("pty_queued"));
}

/// A pty pair with bytes queued both ways (output for the master, a complete line and a line
/// being typed for the slave, their echo): the restored pair gives back the same bytes.
#[test]
fn pty_queued() {
    cycle(&Spec::c("pty_queued"));
}

/// The dump reads the queued bytes and puts them back: a process left running (`-R`) still
/// reads them all, once.
#[test]
fn pty_queued_dump_leave_running() {
    left_running_passes(&Spec::c("pty_queued"));
}

/// `dump -R`, then go: the workload left running passes.
fn left_running_passes(spec: &Spec) {
    let mut run = Run::start(spec);
    run.dump_ok(&["-R"]);
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload left running");
}

#[test]
fn aio_ring_control() {
    control(&Spec::c("aio_ring"));
}

/// An AIO context whose ring was run around once, with 6 completed reads (eventfd-notified)
/// not yet reaped across the ring's end: restored at the same address (the context id), it
/// gives exactly those 6 events, no other, and takes new requests.
#[test]
fn aio_ring() {
    cycle(&Spec::c("aio_ring"));
}

/// The dump submits requests of its own to count the free slots: left running (`-R`), the
/// process sees none of them, only its own 6 events, and goes on.
#[test]
fn aio_ring_dump_leave_running() {
    left_running_passes(&Spec::c("aio_ring"));
}

fn aio_in_flight() -> Spec {
    let mut s = Spec::c("aio_ring").args(&["inflight"]);
    s.name = "aio_ring-inflight".into();
    s
}

#[test]
fn aio_ring_in_flight_control() {
    control(&aio_in_flight());
}

/// A poll request on an empty pipe is in flight: it cannot be carried, the dump is refused by
/// name, and the process still gets its completed read and then the poll's event.
#[test]
fn aio_ring_in_flight_refused() {
    refused_then_intact(aio_in_flight(), &["AIO ring", "in flight"]);
}

/// A child forked after io_setup has its parent's ring mapped but no context: refused by name
/// (restoring the mapping as plain memory would make it a copy that no longer follows the
/// parent's ring), the tree running on.
#[test]
fn aio_ring_inherited_over_fork_refused() {
    let mut s = Spec::c("aio_ring").args(&["forked"]);
    s.name = "aio_ring-forked".into();
    refused_then_intact(s, &["AIO ring", "inherited over fork"]);
}
