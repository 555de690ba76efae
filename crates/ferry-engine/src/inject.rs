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
    /// The `syscall` is followed by `int3` (ferry's own trampoline): one stop per call
    /// instead of two.
    int3_after: bool,
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

/// Fault injection for tests (like CRIU_FAULT): `FERRY_FAULT=kill-at-injection:N` makes ferry
/// SIGKILL itself when it is about to run its N-th injected syscall (counting from 1), with the
/// target's registers borrowed — the worst moment to die.
fn fault_point() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let Ok(spec) = std::env::var("FERRY_FAULT") else { return };
    let Some(n) = spec.strip_prefix("kill-at-injection:").and_then(|n| n.parse::<u64>().ok()) else { return };
    if COUNT.fetch_add(1, Ordering::Relaxed) + 1 == n {
        let _ = ferry_sys::process::kill(std::process::id() as i32, libc::SIGKILL);
    }
}

impl Injector {
    /// `base` supplies the segment registers and stack; `syscall_at` is the address of a
    /// `0f 05` (syscall) instruction mapped executable in the tracee.
    pub fn new(pid: i32, syscall_at: u64, base: UserRegs) -> Injector {
        Injector { pid, syscall_at, base, int3_after: false }
    }

    /// An injector for a trampoline holding `syscall; int3` at `syscall_at`.
    pub fn with_int3(pid: i32, syscall_at: u64, base: UserRegs) -> Injector {
        Injector { pid, syscall_at, base, int3_after: true }
    }

    /// The tracee this injector drives.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Run syscall `nr` with up to six arguments; returns the raw result (negative errno on
    /// failure, as the kernel returns it).
    pub fn raw(&self, nr: u64, args: &[u64]) -> io::Result<i64> {
        self.run(nr, args, self.int3_after)
    }

    /// Run a syscall that unmaps the trampoline itself: the `int3` after it would not exist
    /// any more, so stop at the syscall exit instead.
    pub fn raw_last(&self, nr: u64, args: &[u64]) -> io::Result<i64> {
        self.run(nr, args, false)
    }

    fn run(&self, nr: u64, args: &[u64], int3: bool) -> io::Result<i64> {
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
        fault_point();
        if int3 {
            ptrace::cont(self.pid, 0)?;
            loop {
                match wait_stopped(self.pid)? {
                    WaitStatus::Stopped { sig: libc::SIGTRAP, event: 0 } => break,
                    _ => ptrace::cont(self.pid, 0)?,
                }
            }
        } else {
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

/// Where a dump-time injector parks its safety net on the target's stack.
pub struct Rescue {
    /// Scratch memory for syscall arguments (below the safety net).
    pub scratch: u64,
}

const UC_FP_XSTATE: u64 = 1;
const UC_SIGCONTEXT_SS: u64 = 2;
const UC_STRICT_RESTORE_SS: u64 = 4;
const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;

/// Addresses of the first occurrence of each of `pats` in the executable mappings of `pid`
/// (libc and the dynamic loader first), read in small chunks and stopping as soon as all are
/// found: the whole of libc's text is over a megabyte, and the target is frozen meanwhile.
/// Remembered for the executable mappings last searched (every thread of a process, and
/// forked processes that kept their parent's layout, have the same: same files at the same
/// addresses, so the same code).
fn find_patterns(pid: i32, maps: &[ferry_proc::MapEntry], pats: &[&[u8]; 2]) -> [Option<u64>; 2] {
    type Key = (Vec<u8>, Vec<(u64, u64, u64, u64)>);
    static LAST: std::sync::Mutex<Option<(Key, [Option<u64>; 2])>> = std::sync::Mutex::new(None);
    let mut candidates: Vec<&ferry_proc::MapEntry> =
        maps.iter().filter(|m| m.perms.exec && m.perms.read && m.end < 0xffff_ffff_ff60_0000).collect();
    let key: Key = (pats.concat(), candidates.iter().map(|m| (m.start, m.end, m.offset, m.inode)).collect());
    if let Ok(last) = LAST.lock() {
        if let Some((k, found)) = last.as_ref() {
            if *k == key {
                return *found;
            }
        }
    }
    // libc and the dynamic loader first: they hold the sequences we look for.
    candidates.sort_by_key(|m| !m.path.as_deref().is_some_and(|p| p.contains("libc.so") || p.contains("ld-linux")));
    const STEP: usize = 64 << 10;
    let overlap = pats.iter().map(|p| p.len()).max().unwrap_or(1) - 1;
    // Page-aligned (the kernel copies into a destination off a page boundary much slower).
    let mut block = vec![0u8; STEP + overlap + 4096];
    let at0 = block.as_ptr().align_offset(4096).min(4096);
    let buf = &mut block[at0..at0 + STEP + overlap];
    let mut found = [None, None];
    'maps: for m in candidates {
        let end = m.end.min(m.start + (8 << 20));
        let mut at = m.start;
        while at < end {
            let len = ((end - at) as usize).min(STEP + overlap);
            let Ok(n) = ferry_sys::process::vm_read(pid, at, &mut buf[..len]) else { continue 'maps };
            for (k, pat) in pats.iter().enumerate() {
                if found[k].is_none() {
                    found[k] = buf[..n].windows(pat.len()).position(|w| w == *pat).map(|i| at + i as u64);
                }
            }
            if found.iter().all(|f| f.is_some()) {
                break 'maps;
            }
            if n < len {
                break;
            }
            at += STEP as u64;
        }
    }
    // Only code of files (or the vDSO) is the same wherever the same layout is: not JIT code.
    let stable = |a: u64| {
        maps.iter().any(|m| m.start <= a && a < m.end && (m.inode != 0 || m.path.as_deref() == Some("[vdso]")))
    };
    if let (Ok(mut last), true) = (LAST.lock(), found.iter().all(|f| f.is_some_and(stable))) {
        *last = Some((key, found));
    }
    found
}

/// Build a dump-time injector that cannot leave the target broken if ferry dies mid-way.
///
/// Injected syscalls run at a `syscall; ret` sequence with the stack pointer on an
/// `rt_sigframe` that ferry wrote below the target's red zone: its return slot points at a
/// `mov $15,%rax; syscall` (rt_sigreturn) sequence and its ucontext holds the target's own
/// registers (already adjusted for syscall restart), signal mask and XSAVE state. In normal
/// operation ferry stops the thread at each syscall exit and the `ret` never runs. If ferry is
/// killed at any point, the kernel detaches the target, which finishes the (read-only) query,
/// returns into rt_sigreturn and resumes exactly where it was frozen.
///
/// Returns `None` when the target has no such code sequences (a static binary without a
/// signal restorer), in which case the caller falls back to a bare injector.
pub fn with_rescue(
    pid: i32,
    maps: &[ferry_proc::MapEntry],
    orig: &UserRegs,
    resume: &UserRegs,
    xstate: &[u8],
    sigmask: u64,
) -> io::Result<Option<(Injector, Rescue)>> {
    if xstate.len() < 512 + 64 {
        return Ok(None);
    }
    // PTRACE_GETREGSET puts XCR0 in the first software-reserved bytes; a signal frame wants
    // struct _fpx_sw_bytes there instead (magic1, extended size, xfeatures, xstate size).
    let xcr0 = u64::from_le_bytes([
        xstate[464],
        xstate[465],
        xstate[466],
        xstate[467],
        xstate[468],
        xstate[469],
        xstate[470],
        xstate[471],
    ]);
    let xstate_size = xstate.len();
    let [Some(syscall_ret), Some(restorer)] =
        find_patterns(pid, maps, &[&[0x0f, 0x05, 0xc3], &[0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05]])
    else {
        return Ok(None);
    };
    let mut fp = xstate.to_vec();
    fp[464..512].fill(0);
    fp[464..468].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
    fp[468..472].copy_from_slice(&((xstate_size + 4) as u32).to_le_bytes());
    fp[472..480].copy_from_slice(&xcr0.to_le_bytes());
    fp[480..484].copy_from_slice(&(xstate_size as u32).to_le_bytes());
    fp.extend_from_slice(&FP_XSTATE_MAGIC2.to_le_bytes());
    let top = orig.rsp - 128;
    let fp_addr = (top - fp.len() as u64) & !63;
    let frame = (fp_addr - 440) & !15;
    let scratch = (frame - 4096) & !63;

    let mut f: Vec<u8> = Vec::with_capacity(440);
    let mut put = |w: u64| f.extend_from_slice(&w.to_le_bytes());
    put(restorer); // pretcode
    put(UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS); // uc_flags
    put(0); // uc_link
    put(0); // uc_stack.ss_sp
    put(4); // uc_stack.ss_flags: an invalid mode, so rt_sigreturn leaves the altstack alone
    put(0); // uc_stack.ss_size
    let r = resume;
    for w in [
        r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rdi, r.rsi, r.rbp, r.rbx, r.rdx, r.rax, r.rcx, r.rsp,
        r.rip, r.eflags,
    ] {
        put(w);
    }
    // cs, gs, fs, ss (u16 each)
    put((r.cs & 0xffff) | (r.ss & 0xffff) << 48);
    put(0); // err
    put(0); // trapno
    put(sigmask); // oldmask
    put(0); // cr2
    put(fp_addr); // fpstate
    for _ in 0..8 {
        put(0); // reserved1
    }
    put(sigmask); // uc_sigmask
    f.resize(440, 0); // siginfo
    ferry_sys::process::vm_write(pid, fp_addr, &fp)?;
    ferry_sys::process::vm_write(pid, frame, &f)?;
    let mut base = *orig;
    base.rsp = frame;
    // Arm the net before anything else changes: from here on, a detached target executes the
    // `ret` into rt_sigreturn and is back in its own context, with its own signal mask.
    let mut armed = base;
    armed.rip = syscall_ret + 2;
    armed.orig_rax = u64::MAX;
    ptrace::set_regs(pid, &armed)?;
    Ok(Some((Injector::new(pid, syscall_ret, base), Rescue { scratch })))
}
