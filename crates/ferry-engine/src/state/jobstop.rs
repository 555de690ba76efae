//! Job-control stops (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU: a group stop), restored as they were,
//! as CRIU does, and three things a plain `kill(pid, SIGSTOP)` after the release gets wrong:
//!
//! * a signal pending in the stopped process (sent while it was stopped) must stay pending
//!   until SIGCONT; released with the stop signal queued beside it, the kernel takes the lower
//!   numbered first (SIGUSR1 before SIGSTOP): its handler would run in a "stopped" process;
//! * the stop the parent had already collected (`waitpid(WUNTRACED)`) must not be reported to
//!   it again, and one it had not must be reported once;
//! * the parent must not get a SIGCHLD for a stop that happened before the dump.
//!
//! So the tracer makes the stop itself, before the release: every thread blocks every signal
//! but the stop signal, the stop signal is queued, and each thread is let go from its ptrace
//! stop to the group-stop trap (it never leaves the kernel's signal code: no instruction of
//! its own runs, and its registers, already final, are not touched). Released there, the
//! kernel puts each thread back in the group stop without a second report (`__ptrace_unlink`).
//! Then, in a parent of the tree, with an injected call: the new stop report is collected if
//! the original had collected it (`Process.stop_collected`, read at dump with
//! `waitid(WNOWAIT)` in the parent), and the SIGCHLD the stop sent is dequeued unless the
//! parent had one pending in the image.
//!
//! A SIGTSTP, SIGTTIN or SIGTTOU sent to an orphaned process group is discarded by the kernel
//! (a restored tree can be one when its root's old parent is gone): such a process is stopped
//! with SIGSTOP instead, which is never discarded, and a warning says so.

use crate::error::{Ctx, Error};
use crate::inject::{find_syscall_insn, wait_stopped, Injector};
use crate::procfs;
use ferry_image::Process;
use ferry_sys::consts::{nr, PTRACE_EVENT_STOP};
use ferry_sys::ptrace::{self, WaitStatus};

/// One restored process to put in its stop: its pid, the stop signal, and each thread (main
/// thread first) with its final blocked mask.
pub(crate) struct Stop {
    pub(crate) pid: i32,
    pub(crate) sig: i32,
    pub(crate) threads: Vec<(i32, u64)>,
}

/// The pid `child` has in the pid namespace of `parent` (its last id there: NSpid lists one
/// per level, the parent's namespace is at the parent's depth).
fn pid_seen_by(parent: i32, child: i32) -> Result<i32, Error> {
    let ids = |pid: i32| -> Result<Vec<i32>, Error> {
        let text = procfs::read_string(pid, "status")?;
        Ok(procfs::parse(pid, "status", ferry_proc::parse_status(&text))?.ns_pid)
    };
    let depth = ids(parent)?.len().max(1);
    Ok(ids(child)?.get(depth - 1).copied().unwrap_or(child))
}

/// At dump, in parent `pid` (its main thread borrowed, `scratch` 128 writable bytes): which of
/// its `stopped` children's stops it has already collected (`waitid(WSTOPPED|WNOHANG|WNOWAIT)`
/// finds no report for them).
pub fn collected_stops(inj: &Injector, scratch: u64, pid: i32, stopped: &[i32]) -> Result<Vec<i32>, Error> {
    let mut out = Vec::new();
    let children = crate::procfs::children_of(pid)?;
    for &c in stopped.iter().filter(|c| children.contains(c)) {
        let id = pid_seen_by(pid, c)?;
        ferry_sys::process::vm_write(pid, scratch, &[0u8; 128]).ctx(|| format!("pid {pid}: cannot clear siginfo"))?;
        let flags = (libc::WSTOPPED | libc::WNOHANG | libc::WNOWAIT) as u64;
        inj.call(nr::WAITID, &[libc::P_PID as u64, id as u64, scratch, flags, 0])
            .ctx(|| format!("pid {pid}: cannot ask for the stop report of child {c}"))?;
        let mut si = [0u8; 20];
        ferry_sys::process::vm_read(pid, scratch, &mut si).ctx(|| format!("pid {pid}: cannot read siginfo"))?;
        // (si_pid at offset 16: no report pending, the parent has collected it)
        if i32::from_le_bytes([si[16], si[17], si[18], si[19]]) == 0 {
            out.push(c);
        }
    }
    Ok(out)
}

/// Whether the process group of `pid` is orphaned (no member has a parent in another group of
/// the same session, the parent not being pid 1): the kernel discards SIGTSTP, SIGTTIN and
/// SIGTTOU there (`will_become_orphaned_pgrp`).
fn pgrp_orphaned(pid: i32) -> bool {
    let stat = |p: i32| {
        procfs::read_string(p, "stat")
            .ok()
            .and_then(|t| ferry_proc::parse_stat(&t).ok())
            .map(|s| (s.ppid, s.pgrp, s.session))
    };
    let Some((_, pgrp, _)) = stat(pid) else { return false };
    let Ok(dir) = std::fs::read_dir("/proc") else { return false };
    for e in dir.flatten() {
        let Some(q) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let Some((ppid, g, sid)) = stat(q) else { continue };
        if g != pgrp || ppid <= 1 {
            continue;
        }
        if stat(ppid).is_some_and(|(_, pg, ps)| pg != pgrp && ps == sid) {
            return false;
        }
    }
    true
}

/// Wait for thread `tid`'s group-stop trap (a PTRACE_EVENT_STOP reporting the stop signal),
/// handing the stop signal on at its signal-delivery stop.
fn to_group_stop(pid: i32, tid: i32, sig: i32) -> Result<(), Error> {
    ptrace::cont(tid, 0).ctx(|| format!("pid {pid} thread {tid}: PTRACE_CONT"))?;
    loop {
        match wait_stopped(tid).ctx(|| format!("pid {pid} thread {tid}: did not stop"))? {
            WaitStatus::Stopped { event: PTRACE_EVENT_STOP, sig: s } if s == sig => return Ok(()),
            WaitStatus::Stopped { event: 0, sig: s } if s == sig => {
                ptrace::cont(tid, sig).ctx(|| format!("pid {pid} thread {tid}: PTRACE_CONT"))?
            }
            // (an interrupt's trap, or a SIGSTOP/SIGKILL, the only signals not blocked)
            _ => ptrace::cont(tid, 0).ctx(|| format!("pid {pid} thread {tid}: PTRACE_CONT"))?,
        }
    }
}

/// Put a restored process, every thread in a ptrace stop with its final registers and mask,
/// into its group stop, still traced. Returns the signal it stopped with.
pub(crate) fn enter(s: &Stop) -> Result<i32, Error> {
    let pid = s.pid;
    let mut sig = s.sig;
    if sig != libc::SIGSTOP && pgrp_orphaned(pid) {
        tracing::warn!(
            pid,
            sig,
            "the stop signal would be discarded (orphaned process group): stopped with SIGSTOP instead"
        );
        sig = libc::SIGSTOP;
    }
    let only = !(1u64 << (sig - 1));
    for &(tid, _) in &s.threads {
        ptrace::set_sigmask(tid, only).ctx(|| format!("pid {pid} thread {tid}: cannot set the signal mask"))?;
    }
    ferry_sys::process::kill(pid, sig).ctx(|| format!("pid {pid}: cannot stop it again (signal {sig})"))?;
    // The main thread takes the signal and starts the group stop; then each other thread joins it.
    for &(tid, _) in &s.threads {
        to_group_stop(pid, tid, sig)?;
    }
    for &(tid, mask) in &s.threads {
        ptrace::set_sigmask(tid, mask).ctx(|| format!("pid {pid} thread {tid}: cannot set the signal mask"))?;
    }
    Ok(sig)
}

/// In restored parent `pid` (every thread in a ptrace stop, its registers final), once its
/// children are in their stops: collect the reports of `collect` (children by pid as ferry
/// sees them), and dequeue the SIGCHLD their stops sent unless `keep_sigchld`. Its registers
/// and mask are put back as they were, from a stop in the kernel's signal code.
pub(crate) fn tidy_parent(p: &Process, pid: i32, collect: &[i32]) -> Result<(), Error> {
    let pending = |si: &ferry_image::Siginfo| si.signo == libc::SIGCHLD;
    let keep_sigchld =
        p.shared_pending.iter().any(pending) || p.threads.iter().flat_map(|t| t.pending.iter()).any(pending);
    if collect.is_empty() && keep_sigchld {
        return Ok(());
    }
    let maps_text = procfs::read_string(pid, "maps")?;
    let maps = procfs::parse(pid, "maps", ferry_proc::parse_maps(&maps_text))?;
    let at = find_syscall_insn(pid, &maps).ok_or_else(|| Error::Invalid {
        object: format!("pid {pid}"),
        what: "no syscall instruction found in any executable mapping".into(),
    })?;
    let regs = ptrace::get_regs(pid).ctx(|| format!("pid {pid}: cannot read registers"))?;
    let mask = ptrace::get_sigmask(pid).ctx(|| format!("pid {pid}: cannot read the signal mask"))?;
    ptrace::set_sigmask(pid, !0).ctx(|| format!("pid {pid}: cannot block signals"))?;
    let inj = Injector::new(pid, at, regs);
    let r = (|| -> Result<(), Error> {
        for &c in collect {
            let id = pid_seen_by(pid, c)?;
            let flags = (libc::WSTOPPED | libc::WNOHANG) as u64;
            inj.call(nr::WAITID, &[libc::P_PID as u64, id as u64, 0, flags, 0])
                .ctx(|| format!("pid {pid}: cannot collect the stop report of child {c}"))?;
        }
        if !keep_sigchld {
            // A sigset {SIGCHLD} and a zero timeout, below the red zone of its stack.
            let scratch = (regs.rsp - 128 - 64) & !15;
            // (what was there is put back after)
            let mut was = [0u8; 24];
            ferry_sys::process::vm_read(pid, scratch, &mut was).ctx(|| format!("pid {pid}: cannot read its stack"))?;
            let mut b = Vec::with_capacity(24);
            b.extend_from_slice(&(1u64 << (libc::SIGCHLD - 1)).to_le_bytes());
            b.extend_from_slice(&[0u8; 16]);
            ferry_sys::process::vm_write(pid, scratch, &b).ctx(|| format!("pid {pid}: cannot write sigset"))?;
            let r = inj.raw(nr::RT_SIGTIMEDWAIT, &[scratch, 0, scratch + 8, 8]);
            ferry_sys::process::vm_write(pid, scratch, &was).ctx(|| format!("pid {pid}: cannot write its stack"))?;
            r.ctx(|| format!("pid {pid}: cannot dequeue the SIGCHLD of its children's stops"))?;
        }
        Ok(())
    })();
    crate::state::cpu::park(pid)?;
    ptrace::set_regs(pid, &regs).ctx(|| format!("pid {pid}: cannot put back registers"))?;
    ptrace::set_sigmask(pid, mask).ctx(|| format!("pid {pid}: cannot put back the signal mask"))?;
    r
}
