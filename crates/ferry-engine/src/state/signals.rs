//! Signals: the handler table, the blocked mask, queued signals with their siginfo, and the
//! alternate signal stack.
//!
//! The handler table and sigaltstack are only visible from inside the process, so they are read
//! with injected `rt_sigaction`/`sigaltstack` calls. Pending signals are read without
//! dequeuing them (PTRACE_PEEKSIGINFO) and queued again at restore with `rt_sigqueueinfo`
//! injected into the restored process itself, which lets any `si_code` through unchanged.

use crate::error::{Ctx, Error};
use crate::inject::Injector;
use ferry_image::{Process, SigAction, SigAltStack, Siginfo, Thread};
use ferry_sys::consts::nr;
use ferry_sys::process::{vm_read, vm_write};
use ferry_sys::ptrace;
use ferry_sys::raw::{self, KernelSigaction};

const SIGKILL: i32 = 9;
const SIGSTOP: i32 = 19;

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[i * 8..i * 8 + 8]);
    u64::from_le_bytes(w)
}

/// The signals whose disposition must be read from inside: those `/proc/PID/status` lists as
/// caught (`SigCgt`) or ignored (`SigIgn`), and SIGCHLD, whose SA_NOCLDSTOP/SA_NOCLDWAIT flags
/// change what the kernel does even with SIG_DFL. For any other signal the handler is SIG_DFL,
/// and its flags and mask have no effect (no handler ever runs): they are not kept, so a
/// restored process's `sigaction(sig, NULL, &old)` reports 0 for them. Each injected call is
/// two ptrace stops; reading all 62 cost a small process about 2 ms of its freeze.
pub fn signals_to_read(sig_cgt: u64, sig_ign: u64) -> impl Iterator<Item = i32> {
    let set = sig_cgt | sig_ign | 1u64 << (libc::SIGCHLD - 1);
    (1..=64i32).filter(move |&sig| set & (1u64 << (sig - 1)) != 0 && sig != SIGKILL && sig != SIGSTOP)
}

/// Read the signal dispositions that are not SIG_DFL (see [`signals_to_read`]) with injected
/// `rt_sigaction` calls.
pub fn collect_actions(inj: &Injector, scratch: u64, st: &ferry_proc::Status, p: &mut Process) -> Result<(), Error> {
    let pid = inj.pid();
    for sig in signals_to_read(st.sig_cgt, st.sig_ign) {
        inj.call(nr::RT_SIGACTION, &[sig as u64, 0, scratch, 8])
            .ctx(|| format!("pid {pid}: cannot read the action of signal {sig}"))?;
        let mut b = [0u8; 32];
        vm_read(pid, scratch, &mut b).ctx(|| format!("pid {pid}: cannot read back signal action {sig}"))?;
        let a = SigAction {
            sig,
            handler: u64_at(&b, 0),
            flags: u64_at(&b, 1),
            restorer: u64_at(&b, 2),
            mask: u64_at(&b, 3),
        };
        if a.handler != 0 || a.flags != 0 || a.mask != 0 {
            p.sigactions.push(a);
        }
    }
    Ok(())
}

/// Read the thread's alternate signal stack, blocked mask and private pending queue, and the
/// process's shared pending queue.
pub fn collect_thread(inj: &Injector, scratch: u64, sigmask: u64, t: &mut Thread) -> Result<(), Error> {
    let pid = inj.pid();
    inj.call(nr::SIGALTSTACK, &[0, scratch]).ctx(|| format!("pid {pid}: cannot read sigaltstack"))?;
    let mut b = [0u8; 24];
    vm_read(pid, scratch, &mut b).ctx(|| format!("pid {pid}: cannot read back sigaltstack"))?;
    let flags = u64_at(&b, 1) as i32 & !libc::SS_ONSTACK;
    t.altstack = Some(SigAltStack { sp: u64_at(&b, 0), flags, size: u64_at(&b, 2) });
    t.sigmask = sigmask;
    t.pending = peek(t.tid, false)?;
    Ok(())
}

/// Queued signals of a thread (`shared == false`) or of its whole process.
pub fn peek(tid: i32, shared: bool) -> Result<Vec<Siginfo>, Error> {
    let raw = ptrace::peek_siginfo(tid, shared).ctx(|| format!("pid {tid}: cannot read pending signals"))?;
    Ok(raw
        .into_iter()
        .map(|si| Siginfo { signo: i32::from_le_bytes([si[0], si[1], si[2], si[3]]), raw: si.to_vec() })
        .collect())
}

/// In the restored child (still ferry's code): install every saved handler. Handler addresses
/// point into memory that does not exist yet, which is fine: all signals stay blocked until the
/// tracer sets the final mask.
pub fn apply_in_child(p: &Process) -> Result<(), String> {
    // The child inherited ferry's dispositions (Rust's SIGSEGV handler, ignored SIGINT in a
    // background job ...): start from defaults.
    for sig in 1..=64 {
        if sig != SIGKILL && sig != SIGSTOP {
            let _ = raw::rt_sigaction(sig, &KernelSigaction::default());
        }
    }
    for a in &p.sigactions {
        let k = KernelSigaction { handler: a.handler, flags: a.flags, restorer: a.restorer, mask: a.mask };
        raw::rt_sigaction(a.sig, &k).map_err(|e| format!("cannot set the action of signal {}: {e}", a.sig))?;
    }
    Ok(())
}

/// By the tracer, after the process's last `int3` stop (every thread created): its SIGTRAP
/// action again — each forced SIGTRAP of the trampoline's `int3`, blocked, reset it to SIG_DFL
/// (and unblocked it) — then its pending SIGTRAPs, process-wide and per thread; each call
/// injected without a trap, with SIGTRAP blocked again first so that none is taken before the
/// release (which sets the image's mask).
pub fn restore_sigtrap(inj: &Injector, scratch: u64, p: &Process) -> Result<(), Error> {
    let pid = inj.pid();
    let pending = |si: &&Siginfo| si.signo == libc::SIGTRAP;
    let action = p.sigactions.iter().find(|a| a.sig == libc::SIGTRAP);
    let queued = p.shared_pending.iter().filter(pending).count()
        + p.threads.iter().flat_map(|t| t.pending.iter()).filter(pending).count();
    if action.is_none() && queued == 0 {
        return Ok(());
    }
    ptrace::set_sigmask(pid, !0).ctx(|| format!("pid {pid}: cannot block signals"))?;
    let call = |what: String, nr: u64, args: &[u64], bytes: &[u8]| -> Result<(), Error> {
        vm_write(pid, scratch, bytes).ctx(|| format!("pid {pid}: cannot write {what}"))?;
        inj.call_exit_stop(nr, args).ctx(|| format!("pid {pid}: {what}")).map(drop)
    };
    if let Some(a) = action {
        let mut b = Vec::with_capacity(32);
        for w in [a.handler, a.flags, a.restorer, a.mask] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        call("the action of SIGTRAP".into(), nr::RT_SIGACTION, &[libc::SIGTRAP as u64, scratch, 0, 8], &b)?;
    }
    let trap = libc::SIGTRAP as u64;
    for si in p.shared_pending.iter().filter(pending) {
        call("a pending SIGTRAP".into(), nr::RT_SIGQUEUEINFO, &[p.pid as u64, trap, scratch], &si.raw)?;
    }
    for t in &p.threads {
        for si in t.pending.iter().filter(pending) {
            let args = [p.pid as u64, t.tid as u64, trap, scratch];
            call(format!("a pending SIGTRAP of thread {}", t.tid), nr::RT_TGSIGQUEUEINFO, &args, &si.raw)?;
        }
    }
    Ok(())
}

/// By the tracer: alternate stack and queued signals of a thread (and, for the main thread,
/// the process-wide queue). The blocked mask is set at release time.
pub fn restore_thread(inj: &Injector, scratch: u64, p: &Process, t: &Thread, main: bool) -> Result<(), Error> {
    let pid = inj.pid();
    // Always set it: the child inherited ferry's own alternate stack (Rust's std installs one),
    // which points into memory that no longer exists.
    let ss = t.altstack.clone().unwrap_or(SigAltStack { sp: 0, flags: libc::SS_DISABLE, size: 0 });
    let mut b = Vec::with_capacity(24);
    if ss.flags & libc::SS_DISABLE != 0 {
        b.extend_from_slice(&0u64.to_le_bytes());
        b.extend_from_slice(&(libc::SS_DISABLE as u64).to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
    } else {
        b.extend_from_slice(&ss.sp.to_le_bytes());
        b.extend_from_slice(&(ss.flags as u32 as u64).to_le_bytes());
        b.extend_from_slice(&ss.size.to_le_bytes());
    }
    vm_write(pid, scratch, &b).ctx(|| format!("pid {pid}: cannot write sigaltstack"))?;
    inj.call(nr::SIGALTSTACK, &[scratch, 0]).ctx(|| format!("pid {pid}: cannot set sigaltstack at {:#x}", ss.sp))?;
    let queue = |si: &Siginfo, shared: bool| -> Result<(), Error> {
        vm_write(pid, scratch, &si.raw).ctx(|| format!("pid {pid}: cannot write siginfo"))?;
        let r = if shared {
            inj.call(nr::RT_SIGQUEUEINFO, &[p.pid as u64, si.signo as u64, scratch])
        } else {
            inj.call(nr::RT_TGSIGQUEUEINFO, &[p.pid as u64, t.tid as u64, si.signo as u64, scratch])
        };
        r.ctx(|| format!("pid {pid}: cannot queue pending signal {}", si.signo)).map(drop)
    };
    // (A pending SIGTRAP is queued last, by `restore_sigtrap`: the trampoline's own traps would
    // take its place or let it be delivered and lost.)
    if main {
        for si in p.shared_pending.iter().filter(|si| si.signo != libc::SIGTRAP) {
            queue(si, true)?;
        }
    }
    for si in t.pending.iter().filter(|si| si.signo != libc::SIGTRAP) {
        queue(si, false)?;
    }
    Ok(())
}
