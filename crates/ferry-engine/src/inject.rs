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

/// Wait for the `int3` at `at` of ferry's trampoline (the stop reports `rip` just after it).
/// Another stop is let pass (SIGSTOP, or a SIGTRAP someone else sent); a fault of the
/// trampoline's own code (a bad address in a batch table) is an error, not a loop.
fn wait_trap(pid: i32, at: u64) -> io::Result<()> {
    loop {
        match wait_stopped(pid)? {
            WaitStatus::Stopped { sig: libc::SIGTRAP, event: 0 } if ptrace::get_regs(pid)?.rip == at + 1 => {
                return Ok(())
            }
            WaitStatus::Stopped { sig: s @ (libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE), event: 0 } => {
                return Err(io::Error::other(format!("process {pid} faulted (signal {s}) in ferry's trampoline")))
            }
            _ => ptrace::cont(pid, 0)?,
        }
    }
}

/// Fault injection for tests (like CRIU_FAULT): `FERRY_FAULT=kill-at-injection:N` makes ferry
/// SIGKILL itself when it is about to run its N-th injected syscall (counting from 1), with the
/// target's registers borrowed — the worst moment to die.
/// A batch of `calls` counts as that many.
fn fault_point(calls: u64) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let Ok(spec) = std::env::var("FERRY_FAULT") else { return };
    let Some(n) = spec.strip_prefix("kill-at-injection:").and_then(|n| n.parse::<u64>().ok()) else { return };
    let before = COUNT.fetch_add(calls, Ordering::Relaxed);
    if (before + 1..=before + calls).contains(&n) {
        let _ = ferry_sys::process::kill(std::process::id() as i32, libc::SIGKILL);
    }
}

/// Fault injection for tests: `FERRY_FAULT=NAME` makes ferry SIGKILL itself at the point
/// called NAME (`kill-after-resume`: a `dump -R` with a snapshot, once the tree runs again;
/// `kill-after-snapshot`: just after a process's snapshot is taken, the tree frozen and that
/// process's main thread borrowed for injection).
pub fn fault_point_named(name: &str) {
    if std::env::var("FERRY_FAULT").is_ok_and(|f| f == name) {
        let _ = ferry_sys::process::kill(std::process::id() as i32, libc::SIGKILL);
    }
}

/// Fault injection for tests: `FERRY_FAULT=NAME` makes the step at the point named `NAME`
/// fail (an error, where [`fault_point_named`] kills ferry).
pub fn fault_fail_named(name: &str) -> Result<(), crate::error::Error> {
    if std::env::var("FERRY_FAULT").is_ok_and(|f| f == name) {
        return Err(crate::error::Error::Invalid { object: "fault injection".into(), what: name.into() });
    }
    Ok(())
}

/// Fault injection for tests: `FERRY_FAULT=signal-at-release:SIG` makes a restore send signal
/// SIG to the tree's root just before releasing it — a signal arriving at the worst moment for
/// a process frozen inside a syscall (it must end or restart the call as the kernel would).
pub fn fault_signal_at_release() -> Option<i32> {
    std::env::var("FERRY_FAULT").ok()?.strip_prefix("signal-at-release:")?.parse().ok()
}

/// Fault injection for tests: `FERRY_FAULT=NAME:MS` makes ferry wait MS ms at the point
/// called NAME (`pause-before-sockets`: a restore, once the tree's namespaces are made and
/// before its sockets exist), to hold a window open for a test.
pub fn fault_pause_named(name: &str) -> Option<std::time::Duration> {
    let ms = std::env::var("FERRY_FAULT").ok()?.strip_prefix(name)?.strip_prefix(':')?.parse().ok()?;
    Some(std::time::Duration::from_millis(ms))
}

/// Fault injection for tests: `FERRY_FAULT=signal-after-release:SIG` makes a restore send
/// signal SIG to the tree's root as soon as the tree is released, before the pidfile is written
/// and the restore returns: a supervisor's signal that comes as early as it can.
pub fn fault_signal_after_release() -> Option<i32> {
    std::env::var("FERRY_FAULT").ok()?.strip_prefix("signal-after-release:")?.parse().ok()
}

/// Fault injection for tests: `FERRY_FAULT=pause-after-children:MS` makes a dump wait MS ms
/// after it listed the children of each frozen process, before it freezes them: a child that
/// exits meanwhile becomes a zombie its frozen parent cannot reap (the race of a server's
/// worker that exits just as the dump starts).
pub fn fault_pause_after_children() -> Option<std::time::Duration> {
    let ms = std::env::var("FERRY_FAULT").ok()?.strip_prefix("pause-after-children:")?.parse().ok()?;
    Some(std::time::Duration::from_millis(ms))
}

/// ferry's restore trampoline code (the first bytes of its code page): a single `syscall; int3`
/// at offset 0 ([`Injector::with_int3`]), and at [`BATCH_LOOP`] a loop that runs a table of
/// calls ([`Batch`]). The loop reads records of eight words from `rbx` — number, six
/// arguments, expected result — runs each, and stops at `int3` on the first result that differs
/// from the expected one or at a record whose number is `u64::MAX`; `rbx` then points at that
/// record. It touches no stack and no memory but the table. (x86-64; from `as`:)
///
/// ```text
///  0: syscall; int3; nops
/// 16: mov rax,[rbx]; cmp rax,-1; je done
///     mov rdi,[rbx+8]; mov rsi,[rbx+16]; mov rdx,[rbx+24]
///     mov r10,[rbx+32]; mov r8,[rbx+40]; mov r9,[rbx+48]
///     syscall; cmp rax,[rbx+56]; jne done
///     add rbx,64; jmp 16
/// done: int3
/// ```
pub const TRAMPOLINE_CODE: [u8; 64] = [
    0x0f, 0x05, 0xcc, 0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0x00, 0x00, 0x00, 0x00, 0x00, 0x66, 0x90, //
    0x48, 0x8b, 0x03, 0x48, 0x83, 0xf8, 0xff, 0x74, 0x26, 0x48, 0x8b, 0x7b, 0x08, 0x48, 0x8b, 0x73, //
    0x10, 0x48, 0x8b, 0x53, 0x18, 0x4c, 0x8b, 0x53, 0x20, 0x4c, 0x8b, 0x43, 0x28, 0x4c, 0x8b, 0x4b, //
    0x30, 0x0f, 0x05, 0x48, 0x3b, 0x43, 0x38, 0x75, 0x06, 0x48, 0x83, 0xc3, 0x40, 0xeb, 0xd1, 0xcc,
];
/// Offset of the batch loop in [`TRAMPOLINE_CODE`].
const BATCH_LOOP: u64 = 16;
/// Bytes per record of a batch's table.
const RECORD: usize = 64;

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

    /// Run a syscall without the `int3` after it, stopping at the syscall exit instead: for the
    /// call that unmaps the trampoline itself (the `int3` would be gone), and for one that must
    /// not be followed by a trap (the forced SIGTRAP of an `int3` while SIGTRAP is blocked
    /// resets its disposition to SIG_DFL).
    /// Like [`Injector::call`], a negative result an `io::Error`.
    pub fn call_exit_stop(&self, nr: u64, args: &[u64]) -> io::Result<u64> {
        errno(self.run(nr, args, false)?)
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
        fault_point(1);
        if int3 {
            ptrace::cont(self.pid, 0)?;
            wait_trap(self.pid, self.syscall_at + 2)?;
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

    /// Run an injected `clone` with no flags and exit signal 0 — a fork whose end sends the
    /// target no SIGCHLD and that a plain `wait()` does not see — with PTRACE_O_TRACECLONE, so
    /// that the child is attached to ferry and stopped before it runs a single instruction.
    /// `options` are the thread's ptrace options, put back afterwards. The child gets
    /// PTRACE_O_EXITKILL as soon as it stops (it dies with ferry), and `child_sp` as its stack
    /// pointer (an unmapped address: should ferry die before that, its first `ret` faults and
    /// kills it before it can run the target's code). Returns the child's id as ferry sees it.
    pub fn fork_traced(&self, options: u32, child_sp: u64) -> io::Result<i32> {
        use ferry_sys::consts::{PTRACE_EVENT_CLONE, PTRACE_O_EXITKILL, PTRACE_O_TRACECLONE};
        let pid = self.pid;
        ptrace::set_options(pid, options | PTRACE_O_TRACECLONE)?;
        let mut child = None;
        let r = (|| -> io::Result<i32> {
            let mut r = self.base;
            r.rip = self.syscall_at;
            r.rax = nr::CLONE;
            r.orig_rax = u64::MAX;
            (r.rdi, r.rsi, r.rdx, r.r10, r.r8) = (0, child_sp, 0, 0, 0);
            ptrace::set_regs(pid, &r)?;
            fault_point(1);
            for _stop in 0..2 {
                ptrace::syscall(pid, 0)?;
                loop {
                    match wait_stopped(pid)? {
                        WaitStatus::Stopped { sig: SYSCALL_STOP, .. } => break,
                        WaitStatus::Stopped { event: PTRACE_EVENT_CLONE, .. } => {
                            let c = ptrace::get_event_msg(pid)? as i32;
                            child = Some(c);
                            // (Reported once its creation is complete: it stops before it
                            // returns to user space.)
                            wait_stopped(c)?;
                            ptrace::set_options(c, PTRACE_O_EXITKILL)?;
                            ptrace::syscall(pid, 0)?;
                        }
                        _ => ptrace::syscall(pid, 0)?,
                    }
                }
            }
            let rax = ptrace::get_regs(pid)?.rax as i64;
            match child {
                Some(c) => Ok(c),
                None => Err(errno(rax).err().unwrap_or_else(|| io::Error::other("no clone event"))),
            }
        })();
        let r = ptrace::set_options(pid, options).and(r);
        if let (Err(_), Some(c)) = (&r, child) {
            // (Killed and waited for by its tracer, ferry; see state/snapshot.rs for its parent.)
            ferry_sys::process::kill_and_reap(c);
        }
        r
    }

    /// Like [`Injector::raw`], but a negative result becomes an `io::Error`.
    pub fn call(&self, nr: u64, args: &[u64]) -> io::Result<u64> {
        errno(self.raw(nr, args)?)
    }

    /// Run the batch loop of ferry's trampoline on the table at `table` (`calls` records and a
    /// terminator); returns `rbx` (the record it stopped at) and `rax` (that record's result).
    fn run_table(&self, table: u64, calls: u64) -> io::Result<(u64, i64)> {
        debug_assert!(self.int3_after, "only ferry's own trampoline has the batch loop");
        let mut r = self.base;
        r.rip = self.syscall_at + BATCH_LOOP;
        r.rbx = table;
        r.orig_rax = u64::MAX;
        ptrace::set_regs(self.pid, &r)?;
        fault_point(calls);
        ptrace::cont(self.pid, 0)?;
        wait_trap(self.pid, self.syscall_at + TRAMPOLINE_CODE.len() as u64 - 1)?;
        let out = ptrace::get_regs(self.pid)?;
        Ok((out.rbx, out.rax as i64))
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

/// Syscalls queued for ferry's trampoline to run back to back: one ptrace stop for the lot
/// instead of one per call (a stop costs 30-600 µs on this kind of VM; a tiny process's memory
/// takes ~40 calls). Each call has the result it must return (an address for `mmap`/`mremap`,
/// a byte count for `preadv`, 0 for the rest); the first other result stops the batch, and the
/// error names that call. Calls run in order; the table and their argument blocks live in the
/// trampoline's data area, `area`, which no call may unmap.
pub struct Batch<'a> {
    inj: &'a Injector,
    area: u64,
    /// Records that fit in the table (the last slot is kept for the terminator).
    table_cap: usize,
    /// Bytes of argument blocks that fit after the table.
    data_cap: usize,
    table: Vec<u8>,
    data: Vec<u8>,
    what: Vec<(String, u64)>,
    /// An argument block was placed and its call not queued yet.
    data_pending: bool,
}

impl<'a> Batch<'a> {
    /// A batch for `inj` (on ferry's trampoline) using `len` bytes of tracee memory at `area`:
    /// a quarter for the table, the rest for argument blocks.
    pub fn new(inj: &'a Injector, area: u64, len: u64) -> Batch<'a> {
        let table_cap = (len as usize / 4) / RECORD;
        let data_cap = len as usize - table_cap * RECORD;
        Batch {
            inj,
            area,
            table_cap,
            data_cap,
            table: Vec::new(),
            data: Vec::new(),
            what: Vec::new(),
            data_pending: false,
        }
    }

    /// The tracee.
    pub fn pid(&self) -> i32 {
        self.inj.pid
    }

    /// Queue syscall `nr` that must return `expect`; `what` names it in an error.
    pub fn push(
        &mut self,
        nr: u64,
        args: &[u64],
        expect: u64,
        what: impl FnOnce() -> String,
    ) -> Result<(), crate::error::Error> {
        if self.what.len() + 1 >= self.table_cap {
            self.flush()?;
        }
        self.data_pending = false;
        let mut a = [0u64; 6];
        a[..args.len()].copy_from_slice(args);
        for w in [nr, a[0], a[1], a[2], a[3], a[4], a[5], expect] {
            self.table.extend_from_slice(&w.to_le_bytes());
        }
        self.what.push((what(), expect));
        Ok(())
    }

    /// Place an argument block of `len` bytes, built by `build` from its address in the tracee,
    /// for the call queued next (which is then sure to join the same batch).
    pub fn data(&mut self, len: usize, build: impl FnOnce(u64) -> Vec<u8>) -> Result<u64, crate::error::Error> {
        debug_assert!(!self.data_pending, "two argument blocks for one call: the first could be flushed");
        self.data_pending = true;
        let len8 = len.next_multiple_of(8);
        if len8 > self.data_cap {
            return Err(crate::error::Error::Invalid {
                object: format!("pid {}", self.inj.pid),
                what: format!("an argument block of {len} bytes does not fit in the trampoline"),
            });
        }
        if self.data.len() + len8 > self.data_cap || self.what.len() + 2 >= self.table_cap {
            self.flush()?;
        }
        let at = self.area + (self.table_cap * RECORD + self.data.len()) as u64;
        let bytes = build(at);
        debug_assert_eq!(bytes.len(), len);
        self.data.extend_from_slice(&bytes);
        self.data.resize(self.data.len().next_multiple_of(8), 0);
        Ok(at)
    }

    /// Run what is queued; the first call that does not return what it must is the error.
    pub fn flush(&mut self) -> Result<(), crate::error::Error> {
        use crate::error::{Ctx, Error};
        if self.what.is_empty() {
            return Ok(());
        }
        let pid = self.inj.pid;
        self.table.extend_from_slice(&u64::MAX.to_le_bytes());
        let vm_write = ferry_sys::process::vm_write;
        vm_write(pid, self.area, &self.table).ctx(|| format!("pid {pid}: cannot write the syscall table"))?;
        if !self.data.is_empty() {
            let at = self.area + (self.table_cap * RECORD) as u64;
            vm_write(pid, at, &self.data).ctx(|| format!("pid {pid}: cannot write syscall arguments"))?;
        }
        let n = self.what.len() as u64;
        let (rbx, rax) =
            self.inj.run_table(self.area, n).ctx(|| format!("pid {pid}: cannot run a batch of {n} syscalls"))?;
        let at = rbx.wrapping_sub(self.area) / RECORD as u64;
        let what = std::mem::take(&mut self.what);
        self.table.clear();
        self.data.clear();
        if at == n {
            return Ok(());
        }
        let Some((object, expect)) = what.into_iter().nth(at as usize) else {
            return Err(Error::Invalid { object: format!("pid {pid}"), what: format!("batch stopped at {rbx:#x}") });
        };
        Err(if (-4095..0).contains(&rax) {
            Error::Sys { object, source: io::Error::from_raw_os_error(-rax as i32) }
        } else {
            Error::Invalid { object, what: format!("returned {rax:#x} instead of {expect:#x}") }
        })
    }
}

/// A syscall's raw result: -4095..-1 is an errno.
fn errno(r: i64) -> io::Result<u64> {
    if (-4095..0).contains(&r) {
        Err(io::Error::from_raw_os_error(-r as i32))
    } else {
        Ok(r as u64)
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
        if let Some(i) = memchr::memmem::find(&buf[..n], &[0x0f, 0x05]) {
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
            if *k == key && found.iter().zip(pats).all(|(f, p)| f.is_some_and(|a| holds(pid, a, p))) {
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
        // A file's code is read from the file (the page cache), which is much cheaper than
        // reading the target's memory (~40 µs per 64 KiB here, its page tables walked and
        // filled); what is found there is checked in the target's memory below.
        let file = match m.inode {
            0 => None,
            _ => std::fs::File::open(crate::procfs::path(pid, &format!("map_files/{:x}-{:x}", m.start, m.end))).ok(),
        };
        let mut at = m.start;
        while at < end {
            let len = ((end - at) as usize).min(STEP + overlap);
            let read = match &file {
                Some(f) => std::os::unix::fs::FileExt::read_at(f, &mut buf[..len], m.offset + (at - m.start))
                    .or_else(|_| ferry_sys::process::vm_read(pid, at, &mut buf[..len])),
                None => ferry_sys::process::vm_read(pid, at, &mut buf[..len]),
            };
            let Ok(n) = read else { continue 'maps };
            for (k, pat) in pats.iter().enumerate() {
                if found[k].is_none() {
                    found[k] = memchr::memmem::find(&buf[..n], pat).map(|i| at + i as u64);
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
    // What was found in a file must be in the target's memory too (a debugger's breakpoint, a
    // patched page): else not found.
    for (k, pat) in pats.iter().enumerate() {
        if found[k].is_some_and(|a| !holds(pid, a, pat)) {
            found[k] = None;
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

/// Whether the target's memory at `addr` holds `pat`.
fn holds(pid: i32, addr: u64, pat: &[u8]) -> bool {
    let mut b = vec![0u8; pat.len()];
    matches!(ferry_sys::process::vm_read(pid, addr, &mut b), Ok(n) if n == pat.len() && b == pat)
}

/// The components `0..=i` of XCR0 whose state lies within the first `size` bytes of a
/// standard-format XSAVE area, as a mask.
fn within(size: usize) -> u64 {
    let mut mask = 0b11; // x87 and SSE: the legacy area
    for c in 2..63 {
        match ferry_sys::raw::xsave_component(c) {
            Some((len, off)) if (off + len) as usize <= size => mask |= 1 << c,
            _ => {}
        }
    }
    mask
}

/// The little-endian word at byte `at` of an XSAVE area (`None` past its end): XCR0 at 464
/// (PTRACE_GETREGSET's software-reserved bytes), XSTATE_BV at 512.
pub fn xsave_word(xstate: &[u8], at: usize) -> Option<u64> {
    xstate.get(at..at.checked_add(8)?)?.try_into().ok().map(u64::from_le_bytes)
}

/// How much of the thread's XSAVE area (`xstate`, as PTRACE_GETREGSET gives it: as large as the
/// largest state this kernel supports, e.g. 11 KiB with AMX) the rescue frame carries: up to the
/// end of the last component in use (XSTATE_BV, bytes 512..520). A component not in use is in its
/// init state, which is what rt_sigreturn gives a component the frame leaves out; the kernel also
/// refuses an area larger than the process's own (without AMX permission, ~2.7 KiB), and the
/// frame must fit in the mapped part of the stack below the stack pointer.
fn frame_xstate_size(xstate: &[u8]) -> usize {
    const LEGACY_AND_HEADER: usize = 512 + 64;
    if xstate.len() <= LEGACY_AND_HEADER {
        return xstate.len();
    }
    let Some(in_use) = xsave_word(xstate, 512) else { return xstate.len() };
    let mut end = LEGACY_AND_HEADER;
    for c in 2..63 {
        if in_use & (1 << c) != 0 {
            match ferry_sys::raw::xsave_component(c) {
                Some((len, off)) => end = end.max((off + len) as usize),
                None => return xstate.len(),
            }
        }
    }
    end.min(xstate.len())
}

/// Make the main thread's stack (`[stack]`, MAP_GROWSDOWN) reach down to `low` if the stack
/// pointer sits closer than that to its lowest mapped page (a thread waiting in a deep call,
/// e.g. below a large local array): ferry writes its frame with process_vm_writev, which does
/// not grow a stack (EFAULT), while the target's own accesses do. One injected
/// `clock_gettime(CLOCK_MONOTONIC, low)` has the kernel write there on the target's behalf. The
/// mappings read before keep the old start; the dump records those (the pages below hold only
/// ferry's frame), and VmFlags are matched by end (memory::vm_flags). Without the safety net
/// for this one call: a ferry killed during it leaves the thread after a syscall instruction
/// that is not its own.
fn grow_stack_to(pid: i32, maps: &[ferry_proc::MapEntry], orig: &UserRegs, low: u64) -> io::Result<()> {
    let Some(stack) = maps.iter().find(|m| m.start <= orig.rsp && orig.rsp < m.end) else { return Ok(()) };
    if stack.start <= low || stack.path.as_deref() != Some("[stack]") {
        return Ok(());
    }
    let Some(syscall_at) = find_syscall_insn(pid, maps) else { return Ok(()) };
    let mut base = *orig;
    base.rsp = low & !15;
    let r =
        Injector::new(pid, syscall_at, base).call(libc::SYS_clock_gettime as u64, &[libc::CLOCK_MONOTONIC as u64, low]);
    ptrace::set_regs(pid, orig)?;
    r.map(drop)
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
    // PTRACE_GETREGSET puts XCR0 in the first software-reserved bytes; a signal frame wants
    // struct _fpx_sw_bytes there instead (magic1, extended size, xfeatures, xstate size).
    // (An area without the XSAVE header, 576 bytes: no frame, the bare injector.)
    let (Some(xcr0), true) = (xsave_word(xstate, 464), xstate.len() >= 512 + 64) else { return Ok(None) };
    let xstate_size = frame_xstate_size(xstate);
    let xstate = &xstate[..xstate_size];
    let [Some(syscall_ret), Some(restorer)] =
        find_patterns(pid, maps, &[&[0x0f, 0x05, 0xc3], &[0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05]])
    else {
        return Ok(None);
    };
    let mut fp = xstate.to_vec();
    fp[464..512].fill(0);
    fp[464..468].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
    fp[468..472].copy_from_slice(&((xstate_size + 4) as u32).to_le_bytes());
    fp[472..480].copy_from_slice(&(xcr0 & within(xstate_size)).to_le_bytes());
    fp[480..484].copy_from_slice(&(xstate_size as u32).to_le_bytes());
    fp.extend_from_slice(&FP_XSTATE_MAGIC2.to_le_bytes());
    let top = orig.rsp - 128;
    let fp_addr = (top - fp.len() as u64) & !63;
    let frame = (fp_addr - 440) & !15;
    let scratch = (frame - 4096) & !63;
    grow_stack_to(pid, maps, orig, scratch)?;

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
