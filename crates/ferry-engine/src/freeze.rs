//! Seize and freeze a process, and let it go exactly as it was: every thread stopped (an
//! interrupt stop, taken before any signal), its registers and signal mask saved, put back
//! and detached on every path, including a failed dump ("nothing lost", see dump.rs). Also the
//! checks that a process can be seized at all, borrowing a stopped thread for syscall
//! injection, and the pids of a running tree: the dump, pre-copy's write tracking and the
//! `dump -R` snapshot all stop processes this way.

use crate::error::{Ctx, Error};
use crate::inject::{find_syscall_insn, Injector};
use crate::procfs::{self, children_of, list_tids};
use crate::state::{cpu, rseq};
use ferry_image::Thread;
use ferry_sys::consts::{PTRACE_EVENT_STOP, PTRACE_O_SUSPEND_SECCOMP, PTRACE_O_TRACESYSGOOD};
use ferry_sys::ptrace::{self, WaitStatus};
use ferry_sys::UserRegs;
use std::time::{Duration, Instant};

/// One seized, stopped thread.
pub(crate) struct FrozenThread {
    pub(crate) tid: i32,
    regs: UserRegs,
    pub(crate) sigmask: u64,
    /// Its registers were borrowed for injection: resume with restart-adjusted registers.
    touched: bool,
    /// It reached its interrupt stop. (One that did not before the freeze timeout stays
    /// seized until ferry exits, when the kernel detaches it: it cannot be detached running.)
    stopped: bool,
}

/// A seized, stopped target (every thread). Dropping it without `release` puts back each
/// thread's registers and mask and detaches, so the target continues as if nothing happened.
pub(crate) struct Frozen {
    pub(crate) pid: i32,
    pub(crate) threads: Vec<FrozenThread>,
    pub(crate) done: bool,
    /// The process was in a job-control stop when seized: the signal that stopped it. (Detached,
    /// it goes back into that stop by itself: the kernel keeps a group stop across ptrace.)
    pub(crate) stop_signal: i32,
    /// Stop it with SIGSTOP when it is let go (`dump -R --leave-stopped`).
    pub(crate) leave_stopped: bool,
    /// The threads [`Frozen::resume`] detached, with their count of turns on a CPU before
    /// (for [`Frozen::wait_ran`]).
    released: Vec<(i32, i32, Option<u64>)>,
}

/// Wait, until `deadline`, for the interrupt stop of a seized thread (a thread in an
/// uninterruptible sleep stops only when it leaves it). Returns the job-control signal that
/// holds it stopped (the process is in a group stop: SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU), or 0.
fn stop_one(pid: i32, tid: i32, deadline: Instant) -> Result<i32, Error> {
    let mut nap = Duration::from_micros(5);
    loop {
        let status = match ptrace::wait(tid, true).map_err(|_| Error::Exited { pid })? {
            Some((_, s @ WaitStatus::Stopped { .. })) => s,
            Some((_, WaitStatus::Exited(_) | WaitStatus::Signaled(_))) => return Err(Error::Exited { pid }),
            Some((_, WaitStatus::Continued)) => continue,
            None if Instant::now() < deadline => {
                std::thread::sleep(nap);
                nap = (nap * 2).min(Duration::from_millis(2));
                continue;
            }
            None => {
                let state = procfs::read_string(pid, &format!("task/{tid}/stat"))
                    .ok()
                    .and_then(|t| t.rsplit_once(") ").and_then(|(_, r)| r.chars().next()))
                    .unwrap_or('?');
                return Err(Error::Invalid {
                    object: format!("pid {pid} thread {tid}"),
                    what: format!(
                        "did not stop within the freeze timeout (state {state}{}); try a longer --timeout",
                        if state == 'D' { ": an uninterruptible sleep, e.g. on a file system or device" } else { "" }
                    ),
                });
            }
        };
        match status {
            // The kernel reports an interrupt stop with SIGTRAP, unless the process is in a
            // group stop: then with the signal that stopped it.
            WaitStatus::Stopped { event: PTRACE_EVENT_STOP, sig } => {
                return Ok(match sig {
                    libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => sig,
                    _ => 0,
                })
            }
            // A signal was about to be delivered: deliver it and let the interrupt land after.
            WaitStatus::Stopped { sig, .. } => {
                ptrace::cont(tid, sig).map_err(|source| Error::Attach { pid, source })?;
            }
            _ => {}
        }
    }
}

impl Frozen {
    /// Seize and stop every thread; threads created meanwhile are caught by listing again
    /// until the list is stable (a stopped thread cannot create more).
    pub(crate) fn seize(pid: i32, deadline: Instant) -> Result<Frozen, Error> {
        let mut f = Frozen {
            pid,
            threads: Vec::new(),
            done: false,
            stop_signal: 0,
            leave_stopped: false,
            released: Vec::new(),
        };
        loop {
            let mut new = Vec::new();
            for tid in list_tids(pid)? {
                if f.threads.iter().any(|t| t.tid == tid) {
                    continue;
                }
                // With its seccomp filters (or strict mode) suspended while ferry holds it, so
                // that ferry's injected syscalls are not filtered (state/seccomp.rs). (A ferry
                // that is itself under seccomp may not suspend it: then without.)
                let seized = match ptrace::seize(tid, PTRACE_O_TRACESYSGOOD | PTRACE_O_SUSPEND_SECCOMP) {
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => ptrace::seize(tid, PTRACE_O_TRACESYSGOOD),
                    r => r,
                };
                match seized {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) && tid != pid => continue, // exited
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Err(Error::NoProcess { pid }),
                    Err(source) => return Err(Error::Attach { pid, source }),
                }
                f.threads.push(FrozenThread {
                    tid,
                    regs: ferry_sys::zeroed_regs(),
                    sigmask: 0,
                    touched: false,
                    stopped: false,
                });
                ptrace::interrupt(tid).map_err(|source| Error::Attach { pid, source })?;
                new.push(tid);
            }
            if new.is_empty() {
                break;
            }
            for tid in new {
                let sig = stop_one(pid, tid, deadline)?;
                if tid == pid {
                    f.stop_signal = sig;
                }
                if let Some(t) = f.threads.iter_mut().find(|t| t.tid == tid) {
                    t.stopped = true;
                }
            }
        }
        f.threads.sort_by_key(|t| (t.tid != pid, t.tid));
        for t in &mut f.threads {
            let tid = t.tid;
            t.regs = ptrace::get_regs(tid).ctx(|| format!("pid {pid} thread {tid}: cannot read registers"))?;
            // Out of an rseq critical section first, as preemption would (state/rseq.rs).
            rseq::abort_critical_section(tid, &mut t.regs)?;
            t.sigmask =
                ptrace::get_sigmask(tid).ctx(|| format!("pid {pid} thread {tid}: cannot read the signal mask"))?;
        }
        Ok(f)
    }

    /// Put the target back as it was and let it run (or stay in the job-control stop it was
    /// in; with `leave_stopped`, stopped with SIGSTOP).
    pub(crate) fn resume(&mut self) -> Result<(), Error> {
        let pid = self.pid;
        let mut first_err = None;
        let mut ready = Vec::new();
        for t in self.threads.iter().filter(|t| t.stopped) {
            let tid = t.tid;
            let r = (|| {
                // The mask first, then the registers (see inject::with_rescue): until the
                // registers change, a ferry killed here leaves the target on its way back
                // through the rescue frame or with its own restart-adjusted registers.
                ptrace::set_sigmask(tid, t.sigmask)
                    .ctx(|| format!("pid {pid} thread {tid}: cannot put back the signal mask"))?;
                if t.touched {
                    // The last stop was a syscall-exit stop of an injected call, from which the
                    // kernel would not apply syscall restart: move to a stop from which it does
                    // (the interrupt is taken before any signal: no signal is lost on the way),
                    // and give back the registers exactly as they were frozen (a signal that
                    // arrives as the thread resumes then ends or restarts the call as it would
                    // have without ferry).
                    cpu::park(tid)?;
                    ptrace::set_regs(tid, &t.regs)
                        .ctx(|| format!("pid {pid} thread {tid}: cannot put back registers"))?;
                }
                Ok::<(), Error>(())
            })();
            match r {
                Ok(()) => ready.push(tid),
                Err(e) => {
                    first_err.get_or_insert(e);
                    ready.push(tid); // (detached all the same: a traced thread would stay stuck)
                }
            }
        }
        if self.leave_stopped && self.stop_signal == 0 {
            // Queued while every thread is still in a ptrace stop: each takes it before it
            // returns to user space, so the process runs no instruction before it stops.
            if let Err(e) = ferry_sys::process::kill(pid, libc::SIGSTOP) {
                first_err
                    .get_or_insert(Error::Sys { object: format!("pid {pid}: cannot stop it (SIGSTOP)"), source: e });
            }
        }
        if let Some(sig) = crate::inject::fault_signal_at_release() {
            let _ = ferry_sys::process::kill(pid, sig);
        }
        self.released = ready.iter().map(|&tid| (pid, tid, crate::state::task::timeslices(pid, tid))).collect();
        for tid in ready {
            if let Err(e) = ptrace::detach(tid, 0).ctx(|| format!("pid {pid} thread {tid}: cannot detach")) {
                first_err.get_or_insert(e);
            }
        }
        if self.leave_stopped && self.stop_signal == 0 {
            // Detached, the process takes the SIGSTOP on its way out of the kernel: wait (a
            // little) until it shows stopped, so that it is stopped once ferry returns.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
            let stopped = || {
                procfs::read_string(pid, "stat")
                    .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T')))
            };
            while !stopped() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        self.done = true;
        first_err.map_or(Ok(()), Err)
    }

    /// Once resumed: wait until every thread detached has been on a CPU since, as a restore
    /// waits for the threads it releases (`task::wait_released_ran`, which says why: until
    /// then a signal sent to the process, by whoever learnt that `dump -R` returned, goes to
    /// another thread than the one the original would have woken).
    pub(crate) fn wait_ran(&self) {
        crate::state::task::wait_released_ran(&self.released);
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.resume() {
                tracing::error!(pid = self.pid, error = %e, "could not resume the target after a failed dump");
            }
            self.wait_ran();
        }
    }
}

/// Borrow thread `th` for injection, with the sigreturn safety net (see inject::with_rescue).
/// Returns the injector and its scratch address; all signals of the thread are blocked.
pub(crate) fn borrow(
    pid: i32,
    th: &mut FrozenThread,
    maps: &[ferry_proc::MapEntry],
    xstate: &[u8],
) -> Result<(Injector, u64), Error> {
    let tid = th.tid;
    let resume = cpu::resume_regs(&th.regs, true);
    th.touched = true;
    let (inj, scratch) = match crate::inject::with_rescue(tid, maps, &th.regs, &resume, xstate, th.sigmask)
        .ctx(|| format!("pid {pid} thread {tid}: cannot prepare syscall injection"))?
    {
        Some((inj, rescue)) => (inj, rescue.scratch),
        None => {
            tracing::warn!(
                pid,
                tid,
                "no sigreturn sequence in the target: if ferry is killed in the next milliseconds the target may crash"
            );
            let syscall_at = find_syscall_insn(pid, maps).ok_or_else(|| Error::Invalid {
                object: format!("pid {pid}"),
                what: "no syscall instruction found in any executable mapping".into(),
            })?;
            (Injector::new(tid, syscall_at, th.regs), (th.regs.rsp - 128 - 4096) & !63)
        }
    };
    ptrace::set_sigmask(tid, !0).ctx(|| format!("pid {pid} thread {tid}: cannot block signals"))?;
    Ok((inj, scratch))
}

/// Give a borrowed thread back its own mask and registers (in that order: see
/// inject::with_rescue).
pub(crate) fn give_back(pid: i32, th: &FrozenThread) -> Result<(), Error> {
    let tid = th.tid;
    ptrace::set_sigmask(tid, th.sigmask).ctx(|| format!("pid {pid} thread {tid}: cannot put back the signal mask"))?;
    ptrace::set_regs(tid, &cpu::resume_regs(&th.regs, true))
        .ctx(|| format!("pid {pid} thread {tid}: cannot put back registers"))
}

/// `pidns_root`: the dump's root when it is the init of a pid namespace (a child of ferry's),
/// whose processes may then be in that namespace.
pub(crate) fn precheck(
    pid: i32,
    root: i32,
    pidns_root: Option<i32>,
    ns: &crate::state::namespaces::DumpNs,
) -> Result<(ferry_proc::Status, ferry_proc::Stat), Error> {
    if pid <= 0 || !procfs::path(pid, "").exists() {
        return Err(Error::NoProcess { pid });
    }
    let st_text = procfs::read_string(pid, "status").map_err(|_| Error::NoProcess { pid })?;
    let st = procfs::parse(pid, "status", ferry_proc::parse_status(&st_text))?;
    let stat_text = procfs::read_string(pid, "stat")?;
    let stat = procfs::parse(pid, "stat", ferry_proc::parse_stat(&stat_text))?;
    if st.tgid != pid {
        return Err(Error::Invalid {
            object: format!("pid {pid}"),
            what: format!("is a thread of process {}; dump the process", st.tgid),
        });
    }
    if matches!(st.state, 'Z' | 'X') {
        return Err(Error::Invalid { object: format!("pid {pid}"), what: "is a zombie".into() });
    }
    if st.tracer_pid != 0 && st.tracer_pid != std::process::id() as i32 {
        return Err(Error::Invalid {
            object: format!("pid {pid}"),
            what: format!("is already traced by pid {}", st.tracer_pid),
        });
    }
    if stat.flags & 0x0020_0000 != 0 {
        return Err(Error::Unsupported { pid, what: "a kernel thread".into() });
    }
    // Every process in the root's namespaces; the root's own, where not ferry's, recreated
    // (or joined, when external) at restore: state/namespaces.rs.
    crate::state::nested_ns::check_same_as_root(pid, root)?;
    if pid == root {
        crate::state::namespaces::check_root(pid, ns)?;
    }
    // unshare(CLONE_NEWTIME / CLONE_NEWPID) leaves the process where it is and puts only its
    // future children in the new namespace (`*_for_children`): restore would lose that.
    for ns in ["time", "pid"] {
        let own = std::fs::read_link(procfs::path(pid, &format!("ns/{ns}"))).ok();
        let children = std::fs::read_link(procfs::path(pid, &format!("ns/{ns}_for_children")));
        // (A new pid namespace has no link until its first process exists: ENOENT.)
        let pending =
            matches!(&children, Err(e) if e.kind() == std::io::ErrorKind::NotFound) && procfs::path(pid, "ns").exists();
        let differs = own.is_some() && (pending || children.as_ref().is_ok_and(|c| Some(c) != own.as_ref()));
        // (A pid namespace for the children is carried, state/nested_ns.rs, for a process
        // that can be made again with it: decided under the freeze.)
        if differs && !(ns == "pid" && crate::state::nested_ns::pid_for_children_ok(pid)) {
            let why = match ns {
                "time" => crate::state::nested_ns::time_for_children_refusal(pid),
                _ => Some(String::new()),
            };
            if let Some(why) = why {
                return Err(Error::Unsupported {
                    pid,
                    what: format!("a process that unshared a {ns} namespace for its future children{why}"),
                });
            }
        }
    }
    // The tree's own pid namespace is ferry's, or a child of it whose init is the root; a
    // process of the tree may be in one nested below (state/nested_ns.rs checks, under the
    // freeze, that each such namespace's init is in the tree too).
    let tree_levels = if pidns_root.is_some() { 2 } else { 1 };
    if st.ns_pid.len() > 1 {
        let ns = |p: i32| std::fs::read_link(procfs::path(p, "ns/pid")).ok();
        let whole_ns = pidns_root.is_some_and(|r| st.ns_pid.len() == 2 && ns(pid).is_some() && ns(pid) == ns(r));
        let nested = pid != root && st.ns_pid.len() > tree_levels;
        if !whole_ns && !nested {
            return Err(Error::Unsupported {
                pid,
                what: format!(
                    "a process in a nested PID namespace (pid {} there; dump the namespace's init to take all of it)",
                    st.ns_pid.last().copied().unwrap_or(0)
                ),
            });
        }
    }
    Ok((st, stat))
}

/// The processes of the running tree rooted at `root` (itself first, parents before children;
/// a process that exits meanwhile just has no children).
pub fn tree_pids(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        out.extend(children_of(out[i]).unwrap_or_default());
        i += 1;
    }
    out
}

/// The pid a process of the tree rooted at `root` has in the image: its id in the tree's pid
/// namespace when the root is that namespace's init (as `dump` records it), else the host pid.
pub(crate) fn image_pid(root: i32, pid: i32) -> i32 {
    let nspid = |p: i32| {
        procfs::read_string(p, "status")
            .ok()
            .and_then(|t| ferry_proc::parse_status(&t).ok())
            .map(|st| st.ns_pid)
            .unwrap_or_default()
    };
    let r = nspid(root);
    if r.len() == 2 && r[1] == 1 {
        // (the tree's level: a process in a pid namespace nested below has more)
        nspid(pid).get(1).copied().unwrap_or(pid)
    } else {
        pid
    }
}

/// Freeze process `pid` (every thread) for a moment and run `f` with its main thread borrowed
/// for syscall injection (signals blocked, the sigreturn safety net in place), then put it
/// back and let it run. Used by pre-copy migration to create a userfaultfd inside the target.
pub fn with_injector<T>(pid: i32, f: impl FnOnce(&Injector, u64) -> Result<T, Error>) -> Result<T, Error> {
    precheck(pid, pid, Some(pid), &Default::default())?;
    let mut fr = Frozen::seize(pid, Instant::now() + Duration::from_secs(10))?;
    let maps_text = procfs::read_string(pid, "maps")?;
    let maps = procfs::parse(pid, "maps", ferry_proc::parse_maps(&maps_text))?;
    let mut t = Thread { tid: pid, ..Default::default() };
    cpu::collect(pid, &mut t)?;
    let (inj, scratch) = borrow(pid, &mut fr.threads[0], &maps, &t.xstate)?;
    let r = f(&inj, scratch);
    give_back(pid, &fr.threads[0])?;
    fr.resume()?;
    r
}
