//! File descriptors that name other kernel objects: pidfds (of a child, of the process itself,
//! of a thread, of a process that exited), and what must be refused (a pidfd of a process
//! outside the dump).

use crate::common::*;

fn pidfd() -> Spec {
    Spec::c("pidfd")
}

#[test]
fn control_pidfds() {
    control(&pidfd());
}

/// Every kind of pidfd comes back naming the same process or thread with the same flags
/// (PIDFD_NONBLOCK, PIDFD_THREAD, FD_CLOEXEC, a dup sharing the description); the child's
/// exit status is collected through its pidfd after restore.
#[test]
fn cycle_pidfds() {
    cycle_tree(&pidfd(), &[]);
}

/// A pidfd of a process outside the tree (the test itself) is refused, naming the fd and the
/// process; the workload carries on with it.
#[test]
fn refuses_pidfd_of_a_process_outside() {
    let mut run = Run::start(&pidfd().args(&["outside"]));
    dump_refused(run.pid, &run.w.join("img"), "fd 20: a pidfd of process");
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload after a refused dump");
}
