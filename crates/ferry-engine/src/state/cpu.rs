//! Registers: general purpose (with fs/gs base) and the full XSAVE area, plus the syscall
//! restart rules for a thread frozen inside a blocking system call.

use crate::error::{Ctx, Error};
use ferry_image::{Regs, Thread};
use ferry_sys::consts::*;
use ferry_sys::{ptrace, UserRegs};

const NR_RESTART_SYSCALL: u64 = 219;
const NR_POLL: u64 = 7;
const NR_NANOSLEEP: u64 = 35;
const NR_FUTEX: u64 = 202;
const NR_CLOCK_NANOSLEEP: u64 = 230;
const FUTEX_WAIT: u64 = 0;
const FUTEX_WAIT_BITSET: u64 = 9;
/// `FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME`: the op without them.
const FUTEX_CMD_MASK: u64 = !(128 | 256);

/// How a thread frozen in a syscall must continue. The kernel would sort this out when the
/// thread leaves the stop; a restored thread never goes through that path (its `orig_rax` is
/// -1), so ferry applies the same rules as arch/x86/kernel/signal.c with no handler to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Not in a syscall, or the syscall already finished: resume as is.
    None,
    /// Re-execute the syscall (ERESTARTSYS/ERESTARTNOINTR/ERESTARTNOHAND).
    Again,
    /// The kernel's restart block (nanosleep, poll with timeout, futex wait with timeout ...):
    /// only usable by the same task. A restored task calls the syscall again: a relative sleep
    /// with the remaining time the kernel wrote to its `rem` argument (or its whole request if
    /// it had none), poll and futex waits with their original arguments (so a relative
    /// timeout starts over: waiting longer is allowed, ending early or with an EINTR that no
    /// signal explains is not). Other calls get EINTR, as if a signal handler had run.
    Block,
}

/// Classify the registers of a thread frozen by ptrace.
pub fn restart_kind(r: &UserRegs) -> Restart {
    if (r.orig_rax as i64) < 0 {
        return Restart::None;
    }
    match -(r.rax as i64) {
        ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => Restart::Again,
        ERESTART_RESTARTBLOCK => Restart::Block,
        _ => Restart::None,
    }
}

/// Whether a syscall interrupted with a restart block is called again by a restored task
/// (rather than failed with EINTR): see [`Restart::Block`].
fn reissued(r: &UserRegs) -> bool {
    match r.orig_rax {
        NR_POLL | NR_NANOSLEEP | NR_CLOCK_NANOSLEEP => true,
        NR_FUTEX => matches!(r.rsi & FUTEX_CMD_MASK, FUTEX_WAIT | FUTEX_WAIT_BITSET),
        _ => false,
    }
}

/// Registers to resume with: in the image (`same_task == false`) or in the very same task
/// after `dump -R` (`same_task == true`, where the restart block is still valid).
pub fn resume_regs(r: &UserRegs, same_task: bool) -> UserRegs {
    let mut out = *r;
    match restart_kind(r) {
        Restart::None => {}
        Restart::Again => {
            out.rax = r.orig_rax;
            out.rip -= 2;
        }
        Restart::Block if same_task => {
            out.rax = NR_RESTART_SYSCALL;
            out.rip -= 2;
        }
        // poll(2) with a timeout: run it again with its original arguments (and so its whole
        // timeout) rather than fail it with EINTR, which no signal explains and which programs
        // such as script(1) take as fatal.
        Restart::Block if r.orig_rax == NR_POLL => {
            out.rax = r.orig_rax;
            out.rip -= 2;
        }
        // nanosleep(req, rem), clock_nanosleep(clock, flags, req, rem): an interrupted relative
        // sleep has its remaining time in *rem already (the kernel writes it before it returns
        // -ERESTART_RESTARTBLOCK); call it again with rem as the request. (An absolute sleep
        // is restarted by ERESTARTNOHAND, never this way.) The argument register is the only
        // one changed; the syscall ABI leaves argument registers as they were, and the C
        // wrappers do not read them again after the call.
        Restart::Block if r.orig_rax == NR_NANOSLEEP => {
            out.rax = r.orig_rax;
            out.rip -= 2;
            if r.rsi != 0 {
                out.rdi = r.rsi;
            }
        }
        Restart::Block if r.orig_rax == NR_CLOCK_NANOSLEEP => {
            out.rax = r.orig_rax;
            out.rip -= 2;
            if r.r10 != 0 {
                out.rdx = r.r10;
            }
        }
        // futex(FUTEX_WAIT[_BITSET]) with a timeout: wait again (an absolute timeout keeps its
        // deadline; a value changed meanwhile returns EAGAIN, as it would have).
        Restart::Block if reissued(r) => {
            out.rax = r.orig_rax;
            out.rip -= 2;
        }
        Restart::Block => out.rax = (-(libc::EINTR as i64)) as u64,
    }
    out.orig_rax = u64::MAX;
    out
}

/// Describe where the thread stopped, for `inspect`.
pub fn describe(r: &UserRegs) -> String {
    match restart_kind(r) {
        Restart::None if (r.orig_rax as i64) >= 0 => format!("after syscall {}", r.orig_rax),
        Restart::None => "running in user space".into(),
        Restart::Again => format!("in syscall {} (will be restarted)", r.orig_rax),
        Restart::Block if reissued(r) => format!("in syscall {} (restart block: called again)", r.orig_rax),
        Restart::Block => format!("in syscall {} (restart block: will return EINTR)", r.orig_rax),
    }
}

pub fn regs_to_image(r: &UserRegs) -> Regs {
    Regs {
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        rbp: r.rbp,
        rbx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        rax: r.rax,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        orig_rax: r.orig_rax,
        rip: r.rip,
        cs: r.cs,
        eflags: r.eflags,
        rsp: r.rsp,
        ss: r.ss,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
        ds: r.ds,
        es: r.es,
        fs: r.fs,
        gs: r.gs,
    }
}

pub fn regs_from_image(i: &Regs, base: &UserRegs) -> UserRegs {
    let mut r = *base;
    r.r15 = i.r15;
    r.r14 = i.r14;
    r.r13 = i.r13;
    r.r12 = i.r12;
    r.rbp = i.rbp;
    r.rbx = i.rbx;
    r.r11 = i.r11;
    r.r10 = i.r10;
    r.r9 = i.r9;
    r.r8 = i.r8;
    r.rax = i.rax;
    r.rcx = i.rcx;
    r.rdx = i.rdx;
    r.rsi = i.rsi;
    r.rdi = i.rdi;
    r.orig_rax = i.orig_rax;
    r.rip = i.rip;
    r.cs = i.cs;
    r.eflags = i.eflags;
    r.rsp = i.rsp;
    r.ss = i.ss;
    r.fs_base = i.fs_base;
    r.gs_base = i.gs_base;
    r.ds = i.ds;
    r.es = i.es;
    r.fs = i.fs;
    r.gs = i.gs;
    r
}

/// Collect registers and XSAVE state of a frozen thread into `t`. Returns the raw registers.
pub fn collect(tid: i32, t: &mut Thread) -> Result<UserRegs, Error> {
    let regs = ptrace::get_regs(tid).ctx(|| format!("pid {tid}: cannot read registers"))?;
    t.xstate = ptrace::get_xstate(tid).ctx(|| format!("pid {tid}: cannot read the XSAVE state"))?;
    t.regs = Some(regs_to_image(&resume_regs(&regs, false)));
    t.restart = match restart_kind(&regs) {
        Restart::Again => (regs.rax as i64).unsigned_abs() as u32,
        // Called again on restore (see `resume_regs`): released as if the call had returned
        // ERESTARTNOHAND, so the kernel restarts it, or ends it with EINTR if a signal handler
        // runs first, exactly as it would for an interrupted call.
        Restart::Block if reissued(&regs) => ERESTARTNOHAND as u32,
        _ => 0,
    };
    t.stopped_in = describe(&regs);
    Ok(regs)
}

/// The XSAVE feature bitmap stored in an XSAVE area (bytes 512..520, XSTATE_BV of the header
/// is at 512; the kernel's xfeatures mask of the whole area lives in the software-reserved
/// bytes 464..472 of the legacy area).
pub fn xstate_features(xstate: &[u8]) -> u64 {
    crate::inject::xsave_word(xstate, 464).unwrap_or(0)
}

/// Check that this machine can load `img`'s XSAVE area into thread `tid` (a restored child
/// whose own area tells what this CPU and kernel support).
pub fn check_compatible(pid: i32, tid: i32, img: &[u8]) -> Result<(), Error> {
    let here = ptrace::get_xstate(tid).ctx(|| format!("pid {tid}: cannot read the XSAVE state"))?;
    let (want, have) = (xstate_features(img), xstate_features(&here));
    if want & !have != 0 || img.len() > here.len() {
        return Err(Error::Invalid {
            object: format!("pid {pid}"),
            what: format!(
                "the image's CPU state (xfeatures {want:#x}, {} bytes) does not fit this CPU (xfeatures {have:#x}, {} bytes)",
                img.len(),
                here.len()
            ),
        });
    }
    Ok(())
}

/// Bring stopped thread `tid` to a stop inside the kernel's signal handling (a
/// `PTRACE_EVENT_STOP`): released from there, the thread goes through the kernel's own
/// syscall-restart rules with whatever registers it was given. (From a syscall-exit stop it
/// would not: rax would reach user space as is.) The thread does not run user code on the way.
pub fn park(tid: i32) -> Result<(), Error> {
    ptrace::interrupt(tid).ctx(|| format!("thread {tid}: PTRACE_INTERRUPT"))?;
    ptrace::cont(tid, 0).ctx(|| format!("thread {tid}: PTRACE_CONT"))?;
    loop {
        match crate::inject::wait_stopped(tid).ctx(|| format!("thread {tid}: did not stop"))? {
            ptrace::WaitStatus::Stopped { event: PTRACE_EVENT_STOP, .. } => return Ok(()),
            // A signal-delivery stop (every signal but SIGKILL/SIGSTOP is blocked meanwhile).
            _ => ptrace::cont(tid, 0).ctx(|| format!("thread {tid}: PTRACE_CONT"))?,
        }
    }
}

/// Load the final registers and XSAVE state; the thread runs them when released. A thread
/// frozen in a restartable syscall must be [`park`]ed first: it gets the interrupted state
/// (see `Thread::restart`) and the kernel restarts the call, or ends it for a signal.
pub fn restore(tid: i32, t: &Thread, base: &UserRegs) -> Result<(), Error> {
    let img = t
        .regs
        .as_ref()
        .ok_or_else(|| Error::Invalid { object: format!("thread {tid}"), what: "no registers in image".into() })?;
    let mut regs = regs_from_image(img, base);
    regs.orig_rax = u64::MAX;
    match i64::from(t.restart) {
        0 => {}
        code @ (ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND) => {
            regs.orig_rax = regs.rax;
            regs.rax = (-code) as u64;
            regs.rip = regs.rip.wrapping_add(2);
        }
        code => {
            return Err(Error::Invalid {
                object: format!("thread {tid}"),
                what: format!("unknown syscall restart code {code} in the image"),
            })
        }
    }
    if !t.xstate.is_empty() {
        ptrace::set_xstate(tid, &t.xstate).ctx(|| format!("pid {tid}: cannot load the XSAVE state"))?;
    }
    ptrace::set_regs(tid, &regs).ctx(|| format!("pid {tid}: cannot load registers"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(orig: i64, rax: i64) -> UserRegs {
        let mut r = ferry_sys::zeroed_regs();
        r.orig_rax = orig as u64;
        r.rax = rax as u64;
        r.rip = 0x1002;
        r
    }

    #[test]
    fn restart_rules() {
        let r = resume_regs(&regs(0, -ERESTARTSYS), false);
        assert_eq!((r.rax, r.rip, r.orig_rax), (0, 0x1000, u64::MAX));
        let r = resume_regs(&regs(34, -ERESTARTNOHAND), false);
        assert_eq!((r.rax, r.rip), (34, 0x1000));
        // nanosleep without rem: the whole request again
        let r = resume_regs(&regs(35, -ERESTART_RESTARTBLOCK), false);
        assert_eq!((r.rax, r.rip, r.rdi), (35, 0x1000, 0));
        // nanosleep(req, rem): rem becomes the request
        let mut n = regs(35, -ERESTART_RESTARTBLOCK);
        (n.rdi, n.rsi) = (0x5000, 0x6000);
        let r = resume_regs(&n, false);
        assert_eq!((r.rax, r.rip, r.rdi, r.rsi), (35, 0x1000, 0x6000, 0x6000));
        // clock_nanosleep(clock, 0, req, rem)
        let mut c = regs(230, -ERESTART_RESTARTBLOCK);
        (c.rdi, c.rsi, c.rdx, c.r10) = (1, 0, 0x5000, 0x6000);
        let r = resume_regs(&c, false);
        assert_eq!((r.rax, r.rip, r.rdi, r.rdx, r.r10), (230, 0x1000, 1, 0x6000, 0x6000));
        // futex(FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG) with a timeout: again as it was
        let mut f = regs(202, -ERESTART_RESTARTBLOCK);
        f.rsi = 9 | 128;
        let r = resume_regs(&f, false);
        assert_eq!((r.rax, r.rip), (202, 0x1000));
        // any other restart block: EINTR
        let r = resume_regs(&regs(202, -ERESTART_RESTARTBLOCK), false).rax;
        assert_eq!(r, 202, "FUTEX_WAIT (op 0) is a wait too");
        let r = resume_regs(&regs(61, -ERESTART_RESTARTBLOCK), false);
        assert_eq!((r.rax as i64, r.rip), (-(libc::EINTR as i64), 0x1002));
        let r = resume_regs(&regs(7, -ERESTART_RESTARTBLOCK), false);
        assert_eq!((r.rax, r.rip), (7, 0x1000));
        let r = resume_regs(&regs(35, -ERESTART_RESTARTBLOCK), true);
        assert_eq!((r.rax, r.rip), (NR_RESTART_SYSCALL, 0x1000));
        let r = resume_regs(&regs(-1, -ERESTARTSYS), false);
        assert_eq!((r.rax as i64, r.rip), (-ERESTARTSYS, 0x1002));
        let r = resume_regs(&regs(0, 5), false);
        assert_eq!((r.rax, r.rip), (5, 0x1002));
    }
}
