//! Per-thread links the kernel keeps into user memory: the rseq area (glibc registers one in
//! every thread), the robust futex list, and clear_child_tid (set_tid_address).
//!
//! A thread frozen inside an rseq critical section is moved to the section's abort handler
//! first (`abort_critical_section`), as the kernel itself would do when it preempts it: it
//! must not resume inside the section after the restore (on another CPU, maybe, and with the
//! kernel no longer knowing it is in one: the syscalls ferry makes the thread run clear the
//! area's `rseq_cs`, as any return to user space outside the section does).
//!
//! A restored child is a fork of ferry and inherits ferry's own rseq registration, pointing
//! into ferry's TLS. That registration must be dropped before ferry's memory is unmapped, or
//! the kernel would write the CPU number into whatever is mapped there next.

use crate::error::{Ctx, Error};
use crate::inject::Injector;
use ferry_image::{Rseq, Thread};
use ferry_sys::consts::{nr, PR_GET_TID_ADDRESS, RSEQ_FLAG_UNREGISTER};
use ferry_sys::process::{get_robust_list, vm_read};
use ferry_sys::ptrace;

/// Collect the thread's rseq registration, robust list and clear_child_tid.
pub fn collect(inj: &Injector, scratch: u64, t: &mut Thread) -> Result<(), Error> {
    let tid = t.tid;
    let conf = ptrace::get_rseq_config(tid).ctx(|| format!("pid {tid}: cannot read the rseq configuration"))?;
    if conf.rseq_abi_pointer != 0 {
        t.rseq = Some(Rseq { addr: conf.rseq_abi_pointer, len: conf.rseq_abi_size, signature: conf.signature });
    }
    let (head, len) = get_robust_list(tid).ctx(|| format!("pid {tid}: cannot read the robust futex list"))?;
    t.robust_list_head = head;
    t.robust_list_len = len;
    inj.call(nr::PRCTL, &[PR_GET_TID_ADDRESS as u64, scratch, 0, 0, 0])
        .ctx(|| format!("pid {tid}: cannot read clear_child_tid"))?;
    let mut b = [0u8; 8];
    vm_read(tid, scratch, &mut b).ctx(|| format!("pid {tid}: cannot read back clear_child_tid"))?;
    t.clear_child_tid = u64::from_le_bytes(b);
    Ok(())
}

/// Drop the rseq registration a freshly forked child inherited from ferry.
pub fn unregister_inherited(inj: &Injector) -> Result<(), Error> {
    let pid = inj.pid();
    let conf = ptrace::get_rseq_config(pid).ctx(|| format!("pid {pid}: cannot read the rseq configuration"))?;
    if conf.rseq_abi_pointer != 0 {
        inj.call(
            nr::RSEQ,
            &[conf.rseq_abi_pointer, conf.rseq_abi_size as u64, RSEQ_FLAG_UNREGISTER, conf.signature as u64],
        )
        .ctx(|| format!("pid {pid}: cannot unregister the inherited rseq area"))?;
    }
    Ok(())
}

/// Re-establish the thread's rseq area, robust list and clear_child_tid.
pub fn restore(inj: &Injector, t: &Thread) -> Result<(), Error> {
    let pid = inj.pid();
    if let Some(r) = &t.rseq {
        inj.call(nr::RSEQ, &[r.addr, r.len as u64, 0, r.signature as u64])
            .ctx(|| format!("pid {pid}: cannot register rseq at {:#x}", r.addr))?;
    }
    if t.robust_list_head != 0 {
        inj.call(nr::SET_ROBUST_LIST, &[t.robust_list_head, t.robust_list_len])
            .ctx(|| format!("pid {pid}: cannot set the robust list at {:#x}", t.robust_list_head))?;
    }
    inj.call(nr::SET_TID_ADDRESS, &[t.clear_child_tid]).ctx(|| format!("pid {pid}: cannot set clear_child_tid"))?;
    Ok(())
}

/// If thread `tid` (frozen, with registers `regs`) is stopped in user code inside the critical
/// section its rseq area names (`rseq_cs`, `struct rseq_cs`: version, flags, start_ip,
/// post_commit_offset, abort_ip), move it to the abort handler and clear `rseq_cs`, as the kernel
/// does when it preempts or signals a thread there. Returns whether it moved the thread.
pub fn abort_critical_section(tid: i32, regs: &mut ferry_sys::UserRegs) -> Result<bool, Error> {
    if regs.orig_rax != u64::MAX {
        return Ok(false); // in a syscall: not inside a section (the kernel forbids syscalls there)
    }
    let conf = ptrace::get_rseq_config(tid).ctx(|| format!("pid {tid}: cannot read the rseq configuration"))?;
    if conf.rseq_abi_pointer == 0 {
        return Ok(false);
    }
    let cs_field = conf.rseq_abi_pointer + 8;
    let mut b = [0u8; 8];
    vm_read(tid, cs_field, &mut b).ctx(|| format!("pid {tid}: cannot read rseq_cs at {cs_field:#x}"))?;
    let cs = u64::from_le_bytes(b);
    if cs == 0 {
        return Ok(false);
    }
    let mut d = [0u8; 32];
    if vm_read(tid, cs, &mut d).is_err() {
        return Ok(false); // (a stale pointer: the kernel ignores it outside a section too)
    }
    let word = |i: usize| u64::from_le_bytes(d[i..i + 8].try_into().unwrap_or_default());
    let (start, len, abort) = (word(8), word(16), word(24));
    if regs.rip < start || regs.rip - start >= len {
        return Ok(false);
    }
    let mut sig = [0u8; 4];
    vm_read(tid, abort.wrapping_sub(4), &mut sig)
        .ctx(|| format!("pid {tid}: cannot read the rseq abort signature at {:#x}", abort.wrapping_sub(4)))?;
    if u32::from_le_bytes(sig) != conf.signature {
        return Err(Error::Invalid {
            object: format!("pid {tid}"),
            what: format!("stopped in an rseq critical section whose abort handler {abort:#x} has a wrong signature"),
        });
    }
    ferry_sys::process::vm_write(tid, cs_field, &[0u8; 8])
        .ctx(|| format!("pid {tid}: cannot clear rseq_cs at {cs_field:#x}"))?;
    ptrace::set_regs(tid, &ferry_sys::UserRegs { rip: abort, ..*regs })
        .ctx(|| format!("pid {tid}: cannot move to the rseq abort handler"))?;
    regs.rip = abort;
    tracing::debug!(tid, from = start, to = abort, "thread moved out of its rseq critical section");
    Ok(true)
}
