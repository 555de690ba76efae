//! ptrace(2) wrappers. One tracer thread owns every tracee (the kernel ties a tracee to the
//! thread that attached it), so nothing here is `Sync`-sensitive; callers stay single-threaded.

use crate::consts::*;
use crate::{cvt, UserRegs};
use std::io;

fn ptrace(req: u32, pid: i32, addr: usize, data: usize) -> io::Result<libc::c_long> {
    // SAFETY: every caller passes `addr`/`data` that are either plain integers or pointers to
    // live, correctly sized buffers owned by the caller for the duration of the call.
    let r = unsafe { libc::ptrace(req as _, pid, addr as *mut libc::c_void, data as *mut libc::c_void) };
    cvt(r)
}

/// `ptrace(PTRACE_SEIZE, ..)` — attach without stopping the tracee.
pub fn seize(pid: i32, options: u32) -> io::Result<()> {
    ptrace(PTRACE_SEIZE, pid, 0, options as usize).map(drop)
}

/// `ptrace(PTRACE_INTERRUPT, ..)` — stop a seized tracee (reported as `PTRACE_EVENT_STOP`).
pub fn interrupt(pid: i32) -> io::Result<()> {
    ptrace(PTRACE_INTERRUPT, pid, 0, 0).map(drop)
}

/// `ptrace(PTRACE_SETOPTIONS, ..)`.
pub fn set_options(pid: i32, options: u32) -> io::Result<()> {
    ptrace(libc::PTRACE_SETOPTIONS, pid, 0, options as usize).map(drop)
}

/// `ptrace(PTRACE_GETEVENTMSG, ..)` — at a ptrace event stop, the event's message (for
/// `PTRACE_EVENT_CLONE`, the new task's id as the tracer sees it).
pub fn get_event_msg(pid: i32) -> io::Result<u64> {
    let mut msg: libc::c_ulong = 0;
    ptrace(libc::PTRACE_GETEVENTMSG, pid, 0, &mut msg as *mut libc::c_ulong as usize)?;
    Ok(msg as u64)
}

/// `ptrace(PTRACE_CONT, ..)` — resume, delivering `sig` (0 for none).
pub fn cont(pid: i32, sig: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_CONT, pid, 0, sig as usize).map(drop)
}

/// `ptrace(PTRACE_SYSCALL, ..)` — resume until the next syscall entry or exit.
pub fn syscall(pid: i32, sig: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_SYSCALL, pid, 0, sig as usize).map(drop)
}

/// `ptrace(PTRACE_DETACH, ..)` — let the tracee go, delivering `sig` (0 for none).
pub fn detach(pid: i32, sig: i32) -> io::Result<()> {
    ptrace(libc::PTRACE_DETACH, pid, 0, sig as usize).map(drop)
}

/// `ptrace(PTRACE_GETREGS, ..)` — general registers, including `orig_rax`, `fs_base`, `gs_base`.
pub fn get_regs(pid: i32) -> io::Result<UserRegs> {
    // SAFETY: user_regs_struct is plain old data; all-zero is a valid value.
    let mut regs: UserRegs = unsafe { std::mem::zeroed() };
    ptrace(libc::PTRACE_GETREGS, pid, 0, &mut regs as *mut UserRegs as usize)?;
    Ok(regs)
}

/// `ptrace(PTRACE_SETREGS, ..)`.
pub fn set_regs(pid: i32, regs: &UserRegs) -> io::Result<()> {
    ptrace(libc::PTRACE_SETREGS, pid, 0, regs as *const UserRegs as usize).map(drop)
}

/// `ptrace(PTRACE_GETREGSET, NT_X86_XSTATE)` — the complete XSAVE area (x87, SSE, AVX, AVX-512 ...).
pub fn get_xstate(pid: i32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    ptrace(libc::PTRACE_GETREGSET, pid, NT_X86_XSTATE as usize, &mut iov as *mut libc::iovec as usize)?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

/// `ptrace(PTRACE_SETREGSET, NT_X86_XSTATE)`.
pub fn set_xstate(pid: i32, xstate: &[u8]) -> io::Result<()> {
    let mut iov = libc::iovec { iov_base: xstate.as_ptr() as *mut libc::c_void, iov_len: xstate.len() };
    ptrace(libc::PTRACE_SETREGSET, pid, NT_X86_XSTATE as usize, &mut iov as *mut libc::iovec as usize).map(drop)
}

/// `ptrace(PTRACE_GETSIGMASK, ..)` — the tracee's blocked-signal mask.
pub fn get_sigmask(pid: i32) -> io::Result<u64> {
    let mut mask = 0u64;
    ptrace(PTRACE_GETSIGMASK, pid, 8, &mut mask as *mut u64 as usize)?;
    Ok(mask)
}

/// `ptrace(PTRACE_SETSIGMASK, ..)`.
pub fn set_sigmask(pid: i32, mask: u64) -> io::Result<()> {
    ptrace(PTRACE_SETSIGMASK, pid, 8, &mask as *const u64 as usize).map(drop)
}

#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

/// `ptrace(PTRACE_PEEKSIGINFO, ..)` — the queued (pending) signals, without dequeuing them:
/// the thread's private queue, or with `shared` the process-wide one. Each entry is a raw
/// 128-byte `siginfo_t`.
pub fn peek_siginfo(pid: i32, shared: bool) -> io::Result<Vec<[u8; 128]>> {
    let mut out = Vec::new();
    loop {
        let mut batch = [[0u8; 128]; 32];
        let args = PeekSiginfoArgs {
            off: out.len() as u64,
            flags: if shared { PTRACE_PEEKSIGINFO_SHARED } else { 0 },
            nr: batch.len() as i32,
        };
        let n = ptrace(PTRACE_PEEKSIGINFO, pid, &args as *const PeekSiginfoArgs as usize, batch.as_mut_ptr() as usize)?
            as usize;
        out.extend_from_slice(&batch[..n.min(batch.len())]);
        if n < batch.len() {
            return Ok(out);
        }
    }
}

/// What `PTRACE_GET_RSEQ_CONFIGURATION` reports about a thread's rseq registration.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RseqConfig {
    pub rseq_abi_pointer: u64,
    pub rseq_abi_size: u32,
    pub signature: u32,
    pub flags: u32,
    pub pad: u32,
}

/// `ptrace(PTRACE_GET_RSEQ_CONFIGURATION, ..)` — the thread's registered rseq area, if any.
pub fn get_rseq_config(pid: i32) -> io::Result<RseqConfig> {
    let mut conf = RseqConfig::default();
    ptrace(
        PTRACE_GET_RSEQ_CONFIGURATION,
        pid,
        std::mem::size_of::<RseqConfig>(),
        &mut conf as *mut RseqConfig as usize,
    )?;
    Ok(conf)
}

/// `ptrace(PTRACE_SECCOMP_GET_FILTER, ..)`: the classic BPF program of the thread's seccomp
/// filter `index` (0: the oldest, the first installed), as raw `struct sock_filter` bytes; `None`
/// past the newest filter (ENOENT).
pub fn seccomp_filter(tid: i32, index: u64) -> io::Result<Option<Vec<u8>>> {
    let n = match ptrace(PTRACE_SECCOMP_GET_FILTER, tid, index as usize, 0) {
        Ok(n) => n as usize,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; n * 8];
    // (A filter cannot change while the thread is stopped: filters are only ever added by the
    // thread itself or by a sibling's TSYNC, and every thread is stopped.)
    let got = ptrace(PTRACE_SECCOMP_GET_FILTER, tid, index as usize, buf.as_mut_ptr() as usize)? as usize;
    buf.truncate(got.min(n) * 8);
    Ok(Some(buf))
}

/// `ptrace(PTRACE_SECCOMP_GET_METADATA, ..)`: the flags filter `index` was installed with that
/// the kernel keeps (SECCOMP_FILTER_FLAG_LOG).
pub fn seccomp_metadata(tid: i32, index: u64) -> io::Result<u64> {
    // struct seccomp_metadata { __u64 filter_off; __u64 flags; }
    let mut md = [index, 0u64];
    ptrace(PTRACE_SECCOMP_GET_METADATA, tid, std::mem::size_of_val(&md), md.as_mut_ptr() as usize)?;
    Ok(md[1])
}

/// The decoded result of `waitpid` on a tracee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStatus {
    Exited(i32),
    Signaled(i32),
    /// Stopped with this signal; `event` is the ptrace event (status >> 16), 0 if none.
    Stopped {
        sig: i32,
        event: i32,
    },
    Continued,
}

/// `waitpid(2)` with `__WALL`; `nohang` adds `WNOHANG` (returns `None` if nothing changed).
pub fn wait(pid: i32, nohang: bool) -> io::Result<Option<(i32, WaitStatus)>> {
    let mut status = 0;
    let flags = libc::__WALL | if nohang { libc::WNOHANG } else { 0 };
    loop {
        // SAFETY: status is a valid out-pointer for the call.
        let r = unsafe { libc::waitpid(pid, &mut status, flags) };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Ok(None);
        }
        let ws = if libc::WIFEXITED(status) {
            WaitStatus::Exited(libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            WaitStatus::Signaled(libc::WTERMSIG(status))
        } else if libc::WIFSTOPPED(status) {
            WaitStatus::Stopped { sig: libc::WSTOPSIG(status), event: (status >> 16) & 0xff }
        } else {
            WaitStatus::Continued
        };
        return Ok(Some((r, ws)));
    }
}
