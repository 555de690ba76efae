//! Running single system calls inside a stopped tracee, without any code of ours in it.
//!
//! The tracee's registers are pointed at an existing `syscall` instruction (found in its vDSO
//! at dump time; ferry's own trampoline page at restore time), with `orig_rax = -1` so the
//! kernel's syscall-restart logic stays out of the way. `PTRACE_SYSCALL` runs it to the
//! syscall-entry stop and again to the syscall-exit stop, where rax holds the result; the next
//! instruction is never executed. The caller restores the original registers afterwards.

use ferry_sys::consts::nr;
use ferry_sys::ptrace::{self, WaitStatus};
use ferry_sys::UserRegs;
use std::io;

/// Injects syscalls into one stopped thread.
pub struct Injector {
    pid: i32,
    syscall_at: u64,
    base: UserRegs,
}

/// Block until `pid` reports a ptrace stop; an exit is an error.
pub fn wait_stopped(pid: i32) -> io::Result<WaitStatus> {
    loop {
        match ptrace::wait(pid, false)? {
            Some((_, WaitStatus::Continued)) | None => continue,
            Some((_, s @ WaitStatus::Stopped { .. })) => return Ok(s),
            Some((_, WaitStatus::Exited(c))) => {
                return Err(io::Error::other(format!("process {pid} exited with status {c}")))
            }
            Some((_, WaitStatus::Signaled(s))) => {
                return Err(io::Error::other(format!("process {pid} was killed by signal {s}")))
            }
        }
    }
}

const SYSCALL_STOP: i32 = libc::SIGTRAP | 0x80;

impl Injector {
    /// `base` supplies the segment registers and stack; `syscall_at` is the address of a
    /// `0f 05` (syscall) instruction mapped executable in the tracee.
    pub fn new(pid: i32, syscall_at: u64, base: UserRegs) -> Injector {
        Injector { pid, syscall_at, base }
    }

    /// The tracee this injector drives.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Run syscall `nr` with up to six arguments; returns the raw result (negative errno on
    /// failure, as the kernel returns it).
    pub fn raw(&self, nr: u64, args: &[u64]) -> io::Result<i64> {
        let mut r = self.base;
        r.rip = self.syscall_at;
        r.rax = nr;
        r.orig_rax = u64::MAX;
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        r.rdi = a[0];
        r.rsi = a[1];
        r.rdx = a[2];
        r.r10 = a[3];
        r.r8 = a[4];
        r.r9 = a[5];
        ptrace::set_regs(self.pid, &r)?;
        for _stop in 0..2 {
            ptrace::syscall(self.pid, 0)?;
            loop {
                match wait_stopped(self.pid)? {
                    WaitStatus::Stopped { sig: SYSCALL_STOP, .. } => break,
                    // A stop for another reason (a signal arriving while everything is
                    // blocked can only be SIGSTOP/SIGKILL): keep going without delivering it.
                    _ => ptrace::syscall(self.pid, 0)?,
                }
            }
        }
        let out = ptrace::get_regs(self.pid)?;
        Ok(out.rax as i64)
    }

    /// Like [`Injector::raw`], but a negative result becomes an `io::Error`.
    pub fn call(&self, nr: u64, args: &[u64]) -> io::Result<u64> {
        let r = self.raw(nr, args)?;
        if (-4095..0).contains(&r) {
            Err(io::Error::from_raw_os_error(-r as i32))
        } else {
            Ok(r as u64)
        }
    }

    /// Inject `mmap` and check the kernel placed it where asked.
    pub fn mmap_fixed(&self, addr: u64, len: u64, prot: u64, flags: u64, fd: i64, off: u64) -> io::Result<()> {
        let r = self.call(nr::MMAP, &[addr, len, prot, flags | libc::MAP_FIXED as u64, fd as u64, off])?;
        if r != addr {
            return Err(io::Error::other(format!("mmap landed at {r:#x}")));
        }
        Ok(())
    }
}

/// Find a `syscall` instruction (0f 05) in an executable mapping of `pid`, preferring the vDSO.
pub fn find_syscall_insn(pid: i32, maps: &[ferry_proc::MapEntry]) -> Option<u64> {
    let mut candidates: Vec<&ferry_proc::MapEntry> = maps.iter().filter(|m| m.perms.exec && m.perms.read).collect();
    candidates.sort_by_key(|m| m.path.as_deref() != Some("[vdso]"));
    for m in candidates {
        let len = (m.end - m.start).min(1 << 20) as usize;
        let mut buf = vec![0u8; len];
        let Ok(n) = ferry_sys::process::vm_read(pid, m.start, &mut buf) else { continue };
        if let Some(i) = buf[..n].windows(2).position(|w| w == [0x0f, 0x05]) {
            return Some(m.start + i as u64);
        }
    }
    None
}
