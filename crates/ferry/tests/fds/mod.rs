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

/// The go signal sent as soon as the tree is released (`FERRY_FAULT=signal-after-release`,
/// before the pidfile is written), as a supervisor may: it must wake the main thread frozen in
/// sigsuspend(). Until a released thread has run, the kernel takes it for one with a signal
/// pending and gives a process-wide signal to another thread: here the thread sleeping in
/// pause(), which took go for good, and the workload hung (seen once in CI under load).
#[test]
fn cycle_pidfds_go_at_release() {
    let mut run = Run::start(&pidfd());
    run.dump_ok(&[]);
    run.reap_dumped();
    wait_image_pids_gone(&run.img());
    run.ferry_env.push(("FERRY_FAULT", "signal-after-release:12"));
    // (No wait for the pidfile: with go at once, the workload may be done before it is read.)
    run.spawn_restore("restore", &run.img(), &[]);
    let status = run.wait_restore_exit();
    run.expect_pass(status, "pidfd");
}

/// A pidfd of a process outside the tree (the test itself) is refused, naming the fd and the
/// process; the workload carries on with it.
#[test]
fn refuses_pidfd_of_a_process_outside() {
    refused_then_intact(pidfd().args(&["outside"]), &["fd 20: a pidfd of process"]);
}

fn inflight() -> Spec {
    Spec::c("inflight")
}

#[test]
fn control_fds_in_flight() {
    control(&inflight());
    control(&inflight().args(&["stream"]));
    control(&inflight().args(&["stream-closed"]));
    control(&inflight_stream());
}

/// File descriptors in flight (SCM_RIGHTS) in datagram and seqpacket queues, of files the tree
/// still holds (an eventfd, a pipe end, a child's memfd): every message comes back in order
/// with its fds, each the same open file description as before.
#[test]
fn cycle_fds_in_flight() {
    cycle_tree(&inflight(), &[]);
}

/// dump -R peeks at the queues without taking a message or an fd off them.
#[test]
fn leave_running_fds_in_flight() {
    left_running_intact(&inflight());
}

/// Fds in flight in a byte stream: each buffer that carried fds comes back starting and ending
/// where it did (a peek glues the bytes of earlier writes to it, so dump takes the queue off
/// and sends it back): a one-byte read gets no fd, a read that reaches a buffer with fds gets
/// them with the same bytes as before.
#[test]
fn cycle_fds_in_flight_in_a_stream() {
    cycle_tree(&inflight().args(&["stream"]), &[]);
}

fn inflight_stream() -> Spec {
    Spec::c("inflight_stream")
}

/// Both directions of a stream socketpair with fds in flight between plain bytes (a pipe end,
/// a file at its offset and a socket only in flight, the sending socket itself, a child's
/// memfd), a partly read buffer in each, credentials (SO_PASSCRED) from two senders: after
/// restore every recvmsg of a schedule of sizes gets the same byte count, fds and sender as
/// on a reference pair read before the dump, and each fd is the right object.
#[test]
fn cycle_fds_in_flight_in_both_directions_of_a_stream() {
    cycle_tree(&inflight_stream(), &[]);
}

/// dump -R takes a stream's queue off and sends it back: the reads after it are the reference's.
#[test]
fn leave_running_fds_in_flight_in_a_stream() {
    let mut run = Run::start(&inflight_stream());
    run.dump_ok(&["-R"]);
    run.expect_running_untraced("after dump -R");
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload left running");
}

/// Fds in flight in a byte stream whose writer closed its end are refused by name (where the
/// buffers carrying them start can only be read by taking the queue off, and it cannot be sent
/// back without the peer); the stream, its buffers and its fds are intact after the refused
/// dump.
#[test]
fn refuses_fds_in_flight_in_a_stream_whose_peer_is_closed() {
    let mut run = Run::start(&inflight().args(&["stream-closed"]));
    dump_refused(run.pid, &run.w.join("img"), "in flight (SCM_RIGHTS) in its byte stream and its peer is closed");
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload after a refused dump");
}

fn inflight_many() -> Spec {
    Spec::c("inflight_many")
}

#[test]
fn control_fds_in_flight_beyond_a_small_fd_table() {
    control(&inflight_many().args(&["stream"]));
}

/// A stream with 1000 fds in flight (four buffers of 250), dumped by a ferry whose fd table
/// holds them once (the peek's copies) but not twice (the queue taken off, state/unix.rs
/// split_stream): the dump fails naming the socket and ferry's RLIMIT_NOFILE before it takes
/// anything off, and the stream, its buffers and its fds are intact after it. (It took the
/// queue off: the kernel closed the fds a read could not install, lost to the process.)
#[test]
fn stream_fds_in_flight_beyond_ferrys_fd_table_left_intact() {
    let mut run = Run::start(&inflight_many().args(&["stream"]));
    dump_refused_with_nofile(run.pid, &run.img(), 1400, "raise its RLIMIT_NOFILE");
    run.go();
    let status = run.wait_child_exit();
    run.expect_pass(status, "the workload after a failed dump");
}

/// An out-of-band byte (MSG_OOB) pending in a unix stream is refused by name (a peek skips
/// it: the image lacked it and the restore succeeded without it; with fds in flight the queue
/// taken off and sent back dropped it from the running process); the byte, its mark and the
/// stream are intact after the refused dump.
#[test]
fn refuses_an_out_of_band_byte_in_a_unix_stream() {
    let expect = ["out-of-band byte pending", "unix stream socket"];
    control(&Spec::c("unix_oob"));
    refused_then_intact(Spec::c("unix_oob"), &expect);
    refused_then_intact(Spec::c("unix_oob").args(&["fds"]), &expect);
}

fn inflight_only() -> Spec {
    Spec::c("inflight_only")
}

#[test]
fn control_fds_only_in_flight() {
    control(&inflight_only());
    control(&inflight_only().args(&["epoll"]));
}

/// Files only in flight (SCM_RIGHTS; the sender closed its fds after sendmsg) in datagram and
/// seqpacket queues: pipe ends (one whose write end stays, one whose two ends are both only in
/// flight), a stream socket with its own queue, an eventfd sent three times, a regular file at
/// its offset, a deleted file, a memfd, and a socket whose queue holds a memfd and a socket
/// whose queue holds an eventfd (three levels). Each comes back in its message with its state.
#[test]
fn cycle_fds_only_in_flight() {
    cycle_tree(&inflight_only(), &[]);
}

/// dump -R collects the files only in flight through ferry's copies, and leaves every message
/// and file where it was.
#[test]
fn leave_running_fds_only_in_flight() {
    left_running_intact(&inflight_only());
}

/// A file of a kind not carried when only a message holds it (an epoll instance) is refused
/// by name; the message and its fd are still there after the refused dump.
#[test]
fn refuses_epoll_only_in_flight() {
    refused_then_intact(
        inflight_only().args(&["epoll"]),
        &["anon_inode:[eventpoll], a file of a kind not carried in flight"],
    );
}
