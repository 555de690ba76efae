//! Per-thread links the kernel keeps into user memory: the rseq area (glibc registers one in
//! every thread), the robust futex list, and clear_child_tid (set_tid_address).
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
