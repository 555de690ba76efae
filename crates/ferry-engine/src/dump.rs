//! The dump pipeline: seize & freeze -> check for unsupported state -> collect each kind ->
//! write the image -> kill (or resume with `-R`).
//!
//! "Nothing lost": until the inventory is committed, every error path detaches from the target
//! with its original registers and signal mask, so a failed dump leaves it running as if
//! nothing happened. Syscall injection (the only moment the target's registers are not its
//! own) is kept to one short window before page data is written; if ferry itself is killed
//! outside that window, the kernel detaches the target and it simply continues.

use crate::error::{Ctx, Error};
use crate::inject::{find_syscall_insn, wait_stopped, Injector};
use crate::procfs;
use crate::state::{cpu, creds, files, memory, rseq, signals, task, timers};
use ferry_image::{ImageWriter, Inventory, Process, Thread};
use ferry_sys::consts::{PTRACE_EVENT_STOP, PTRACE_O_TRACESYSGOOD};
use ferry_sys::ptrace::{self, WaitStatus};
use ferry_sys::UserRegs;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What to dump and how.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    pub pid: i32,
    pub dir: PathBuf,
    /// Leave the process running after the dump (`-R`).
    pub leave_running: bool,
}

/// Figures about a finished dump.
#[derive(Debug, Clone, Default)]
pub struct DumpReport {
    pub pages_bytes: u64,
    pub vmas: usize,
    pub fds: usize,
    /// Time from freeze to the image being committed.
    pub frozen: Duration,
    pub total: Duration,
}

/// A seized, stopped target. Dropping it without `release` puts back the original registers
/// and mask and detaches, so the target continues as if nothing happened.
struct Frozen {
    pid: i32,
    regs: UserRegs,
    sigmask: u64,
    touched: bool,
    done: bool,
}

impl Frozen {
    fn seize(pid: i32) -> Result<Frozen, Error> {
        ptrace::seize(pid, PTRACE_O_TRACESYSGOOD).map_err(|source| match source.raw_os_error() {
            Some(libc::ESRCH) => Error::NoProcess { pid },
            _ => Error::Attach { pid, source },
        })?;
        let mut f = Frozen { pid, regs: ferry_sys::zeroed_regs(), sigmask: 0, touched: false, done: false };
        ptrace::interrupt(pid).map_err(|source| Error::Attach { pid, source })?;
        loop {
            match wait_stopped(pid).map_err(|_| Error::Exited { pid })? {
                WaitStatus::Stopped { sig: libc::SIGTRAP, event: PTRACE_EVENT_STOP } => break,
                // A group stop (SIGSTOP/SIGTSTP) reported through the seize: also an event stop.
                WaitStatus::Stopped { event: PTRACE_EVENT_STOP, .. } => break,
                // A signal was about to be delivered: deliver it and let the interrupt land after.
                WaitStatus::Stopped { sig, .. } => {
                    ptrace::cont(pid, sig).map_err(|source| Error::Attach { pid, source })?;
                }
                _ => {}
            }
        }
        f.regs = ptrace::get_regs(pid).ctx(|| format!("pid {pid}: cannot read registers"))?;
        f.sigmask = ptrace::get_sigmask(pid).ctx(|| format!("pid {pid}: cannot read the signal mask"))?;
        Ok(f)
    }

    /// Put the target back as it was and let it run.
    fn resume(&mut self) -> Result<(), Error> {
        let pid = self.pid;
        ptrace::set_sigmask(pid, self.sigmask).ctx(|| format!("pid {pid}: cannot put back the signal mask"))?;
        if self.touched {
            // The last stop was a syscall-exit stop of an injected call: the kernel will not
            // apply syscall restart on the way out, so hand it the already-restarted registers.
            let regs = cpu::resume_regs(&self.regs, true);
            ptrace::set_regs(pid, &regs).ctx(|| format!("pid {pid}: cannot put back registers"))?;
        }
        ptrace::detach(pid, 0).ctx(|| format!("pid {pid}: cannot detach"))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.resume() {
                tracing::error!(pid = self.pid, error = %e, "could not resume the target after a failed dump");
            }
        }
    }
}

fn precheck(pid: i32) -> Result<(ferry_proc::Status, ferry_proc::Stat), Error> {
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
    if st.threads > 1 {
        return Err(Error::Unsupported { pid, what: format!("a multi-threaded process ({} threads)", st.threads) });
    }
    let children = procfs::read_string(pid, &format!("task/{pid}/children"))?;
    if !children.trim().is_empty() {
        return Err(Error::Unsupported {
            pid,
            what: format!("a process with children ({}) (process trees)", children.trim()),
        });
    }
    if st.seccomp != 0 {
        return Err(Error::Unsupported { pid, what: format!("seccomp mode {}", st.seccomp) });
    }
    if st.ns_pid.len() > 1 {
        return Err(Error::Unsupported { pid, what: "a process in a nested PID namespace".into() });
    }
    Ok((st, stat))
}

/// Freeze `opts.pid`, write its image to `opts.dir`, then kill it (or let it run with `-R`).
pub fn dump(opts: &DumpOptions) -> Result<DumpReport, Error> {
    let t0 = Instant::now();
    let pid = opts.pid;
    let _span = tracing::info_span!("dump", pid).entered();
    precheck(pid)?;
    let pidfd = ferry_sys::process::pidfd_open(pid).map_err(|_| Error::NoProcess { pid })?;
    let mut frozen = Frozen::seize(pid)?;
    let t_frozen = Instant::now();
    tracing::info!("frozen");
    // Re-read under the freeze: nothing can change now.
    let (st, stat) = precheck(pid)?;
    let mut img = ImageWriter::create(&opts.dir)?;
    let mut p = Process::default();
    task::collect(pid, &st, &stat, &mut p)?;
    files::collect(pid, pidfd.as_fd(), &mut img, &mut p)?;
    let vmas = memory::scan(pid, &mut img)?;
    let maps_text = procfs::read_string(pid, "maps")?;
    let maps = procfs::parse(pid, "maps", ferry_proc::parse_maps(&maps_text))?;
    let mut t = Thread { tid: pid, comm: st.name.clone(), ..Default::default() };
    cpu::collect(pid, &mut t)?;
    tracing::info!(vmas = vmas.len(), fds = p.fds.len(), "collected fds and mappings");

    // The injection window: all signals blocked, registers borrowed — with a sigreturn safety
    // net on the target's stack so that a SIGKILL of ferry now cannot harm it (inject.rs).
    let resume = cpu::resume_regs(&frozen.regs, true);
    frozen.touched = true;
    let (inj, scratch) = match crate::inject::with_rescue(pid, &maps, &frozen.regs, &resume, &t.xstate, frozen.sigmask)
        .ctx(|| format!("pid {pid}: cannot prepare syscall injection"))?
    {
        Some((inj, rescue)) => (inj, rescue.scratch),
        None => {
            tracing::warn!(
                pid,
                "no sigreturn sequence in the target: if ferry is killed in the next milliseconds the target may crash"
            );
            let syscall_at = find_syscall_insn(pid, &maps).ok_or_else(|| Error::Invalid {
                object: format!("pid {pid}"),
                what: "no syscall instruction found in any executable mapping".into(),
            })?;
            (Injector::new(pid, syscall_at, frozen.regs), (frozen.regs.rsp - 128 - 4096) & !63)
        }
    };
    ptrace::set_sigmask(pid, !0).ctx(|| format!("pid {pid}: cannot block signals"))?;
    let injected = (|| -> Result<ferry_image::Mm, Error> {
        signals::collect_actions(&inj, scratch, &mut p)?;
        signals::collect_thread(&inj, scratch, frozen.sigmask, &mut t)?;
        rseq::collect(&inj, scratch, &mut t)?;
        timers::collect(&inj, scratch, &mut p)?;
        creds::collect(&inj, &st, &mut p)?;
        task::collect_injected(&inj, scratch, &mut p)?;
        task::collect_rlimits(&inj, scratch, &mut p)?;
        memory::collect_mm(&inj, &stat, vmas)
    })();
    // Back to the target's own mask and registers (in that order: see inject::with_rescue)
    // before the long part.
    ptrace::set_sigmask(pid, frozen.sigmask).ctx(|| format!("pid {pid}: cannot put back the signal mask"))?;
    ptrace::set_regs(pid, &resume).ctx(|| format!("pid {pid}: cannot put back registers"))?;
    let mut mm = injected?;
    p.shared_pending = signals::peek(pid, true)?;
    p.threads.push(t);

    let pages_bytes = memory::dump_pages(pid, &mut mm, &mut img)?;
    let vmas_n = mm.vmas.len();
    p.mm = Some(mm);
    img.write_process(&p)?;
    let inventory = Inventory {
        tool_version: env!("CARGO_PKG_VERSION").into(),
        root_pid: pid,
        pids: vec![pid],
        kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().into(),
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        ..Default::default()
    };
    img.commit(inventory)?;
    let frozen_for = t_frozen.elapsed();
    tracing::info!(pages_bytes, "image committed");

    if opts.leave_running {
        frozen.resume()?;
    } else {
        ferry_sys::process::kill(pid, libc::SIGKILL).ctx(|| format!("pid {pid}: cannot kill"))?;
        frozen.done = true;
        // Collect the tracee exit notification so it does not linger on our side.
        let _ = ptrace::wait(pid, false);
    }
    Ok(DumpReport { pages_bytes, vmas: vmas_n, fds: p.fds.len(), frozen: frozen_for, total: t0.elapsed() })
}
