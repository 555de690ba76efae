//! State CRIU restores that ferry refused until now: seccomp (filters per thread, shared across
//! threads and with a child, strict mode; user notification refused), AIO rings, deleted cwd and
//! directories, deleted FIFOs and device nodes, ptys with unread data.

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
    cycle(&Spec::c("ghostnodes"));
}
