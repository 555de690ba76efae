//! seccomp: strict mode and filter chains, per thread.
//!
//! The kernel keeps seccomp state per thread: a mode (`Seccomp:` in /proc/PID/task/TID/status)
//! and, in filter mode, a pointer to the newest filter of a chain whose older filters may be
//! shared with other threads (a thread created after a filter was installed points to it too;
//! SECCOMP_FILTER_FLAG_TSYNC points every thread at the caller's chain). A forked child gets
//! its parent's chain the same way.
//!
//! Dump, from outside: `PTRACE_SECCOMP_GET_FILTER` reads each filter of a thread's chain
//! (index 0 is the oldest), `PTRACE_SECCOMP_GET_METADATA` its kept flags (SECCOMP_FILTER_FLAG_LOG). The
//! kernel offers no kcmp mode for filters, so, as CRIU does, two threads share a filter when it
//! is the same program with the same flags at the same place of the chain, on shared older
//! filters. Every thread is seized with `PTRACE_O_SUSPEND_SECCOMP`, so ferry's injected
//! syscalls are not filtered (nor killed in strict mode). A filter that can return
//! SECCOMP_RET_USER_NOTIF is refused: its listener fd (held by a supervisor, usually outside
//! the tree) cannot be carried.
//!
//! Restore, from inside, with the restored process seized with `PTRACE_O_SUSPEND_SECCOMP` too
//! (so no later step of the restore is blocked by the filters it installs): the main thread
//! installs the filters every thread shares (the chains' common oldest part) with injected
//! `seccomp(SECCOMP_SET_MODE_FILTER)` before it creates the other threads, which inherit them
//! as the same kernel objects (so a later TSYNC by the process works as it would have); each
//! thread then installs the rest of its own chain, and a thread in strict mode enters it with
//! `seccomp(SECCOMP_SET_MODE_STRICT)` once it created every thread. Between processes nothing
//! is shared: each process installs its own copy, which filters exactly the same (the kernel
//! offers no way to tell whether two processes share a filter object).

use crate::error::{Ctx, Error};
use crate::inject::Injector;
use crate::procfs;
use ferry_image::{Process, SeccompFilter, Thread};
use ferry_sys::consts::{
    nr, SECCOMP_FILTER_FLAG_LOG, SECCOMP_RET_ACTION_FULL, SECCOMP_RET_USER_NOTIF, SECCOMP_SET_MODE_FILTER,
    SECCOMP_SET_MODE_STRICT,
};
use ferry_sys::ptrace;

/// The longest filter chain the kernel accepts (MAX_INSNS_PER_PATH, 32768 instructions over
/// the chain; each filter costs 4 more): no thread can hold more filters than this.
const MAX_FILTERS: u64 = 8192;

/// The seccomp mode of thread `tid` of `pid` (0 none, 1 strict, 2 filter).
pub fn mode(pid: i32, tid: i32) -> Result<u32, Error> {
    let text = procfs::read_string(pid, &format!("task/{tid}/status"))?;
    Ok(procfs::parse(pid, "task status", ferry_proc::parse_status(&text))?.seccomp)
}

/// Whether any thread of the process image uses seccomp (restore then seizes it with
/// `PTRACE_O_SUSPEND_SECCOMP`).
pub fn used(p: &Process) -> bool {
    p.threads.iter().any(|t| t.seccomp_mode != 0)
}

/// Collect thread `t`'s seccomp mode and filter chain; filters already found in an earlier
/// thread of `p` at the same place of a shared chain are referenced, not copied.
pub fn collect(pid: i32, p: &mut Process, t: &mut Thread) -> Result<(), Error> {
    let tid = t.tid;
    t.seccomp_mode = mode(pid, tid)?;
    match t.seccomp_mode {
        0 | 1 => return Ok(()),
        2 => {}
        m => return Err(Error::Unsupported { pid, what: format!("seccomp mode {m} (thread {tid})") }),
    }
    let mut oldest_first = Vec::new();
    for index in 0..MAX_FILTERS {
        let Some(program) = ptrace::seccomp_filter(tid, index).ctx(|| {
            format!("pid {pid} thread {tid}: cannot read seccomp filter {index} (PTRACE_SECCOMP_GET_FILTER)")
        })?
        else {
            break;
        };
        let flags = ptrace::seccomp_metadata(tid, index)
            .ctx(|| format!("pid {pid} thread {tid}: cannot read seccomp filter {index}'s flags"))?
            & SECCOMP_FILTER_FLAG_LOG;
        if can_notify(&program) {
            return Err(Error::Unsupported {
                pid,
                what: format!(
                    "a seccomp filter with user notification (SECCOMP_RET_USER_NOTIF, thread {tid}; its listener fd cannot be carried)"
                ),
            });
        }
        oldest_first.push(SeccompFilter { program, flags });
    }
    t.seccomp_chain.clear();
    for f in oldest_first {
        let at = t.seccomp_chain.len();
        // The same filter object: an earlier thread has this program at this place, on the
        // same older filters.
        let shared = p.threads.iter().find_map(|o| {
            let id = *o.seccomp_chain.get(at)?;
            (o.seccomp_chain[..at] == t.seccomp_chain[..] && p.seccomp_filters.get(id as usize) == Some(&f))
                .then_some(id)
        });
        let id = match shared {
            Some(id) => id,
            None => {
                p.seccomp_filters.push(f);
                (p.seccomp_filters.len() - 1) as u32
            }
        };
        t.seccomp_chain.push(id);
    }
    Ok(())
}

/// Whether a classic BPF program has a `ret #k` whose action is SECCOMP_RET_USER_NOTIF.
fn can_notify(program: &[u8]) -> bool {
    const BPF_RET_K: u16 = 0x06;
    program.chunks_exact(8).any(|i| {
        let code = u16::from_le_bytes([i[0], i[1]]);
        let k = u32::from_le_bytes([i[4], i[5], i[6], i[7]]);
        code == BPF_RET_K && k & SECCOMP_RET_ACTION_FULL == SECCOMP_RET_USER_NOTIF
    })
}

/// How many of the oldest filters every thread of `p` shares (the main thread installs them
/// before it creates the others).
fn shared_len(p: &Process) -> usize {
    let Some(first) = p.threads.first() else { return 0 };
    let mut n = first.seccomp_chain.len();
    for t in &p.threads[1..] {
        n = n.min(t.seccomp_chain.iter().zip(&first.seccomp_chain).take_while(|(a, b)| a == b).count());
    }
    n
}

fn install(inj: &Injector, scratch: u64, p: &Process, chain: &[u32]) -> Result<(), Error> {
    let pid = inj.pid();
    for &id in chain {
        let f = p.seccomp_filters.get(id as usize).ok_or_else(|| Error::Invalid {
            object: format!("pid {}", p.pid),
            what: format!("seccomp filter {id} is not in the image"),
        })?;
        let insns = f.program.len() / 8;
        if insns == 0 || insns > 4096 || f.program.len() % 8 != 0 {
            return Err(Error::Invalid {
                object: format!("pid {} seccomp filter {id}", p.pid),
                what: format!("a program of {} bytes is not a classic BPF filter", f.program.len()),
            });
        }
        // struct sock_fprog { unsigned short len; struct sock_filter *filter; }, program after it.
        let mut b = Vec::with_capacity(16 + f.program.len());
        b.extend_from_slice(&(insns as u64).to_le_bytes());
        b.extend_from_slice(&(scratch + 16).to_le_bytes());
        b.extend_from_slice(&f.program);
        ferry_sys::process::vm_write(pid, scratch, &b)
            .ctx(|| format!("pid {pid}: cannot write seccomp filter {id}"))?;
        inj.call(nr::SECCOMP, &[SECCOMP_SET_MODE_FILTER, f.flags & SECCOMP_FILTER_FLAG_LOG, scratch])
            .ctx(|| format!("pid {pid}: cannot install seccomp filter {id}"))?;
    }
    Ok(())
}

/// In the main thread, before the other threads exist: the filters every thread shares.
pub fn restore_shared(inj: &Injector, scratch: u64, p: &Process) -> Result<(), Error> {
    let Some(t) = p.threads.first() else { return Ok(()) };
    install(inj, scratch, p, &t.seccomp_chain[..shared_len(p)])
}

/// In thread `t` (the main thread once every other thread exists): the rest of its chain,
/// or strict mode.
pub fn restore_own(inj: &Injector, scratch: u64, p: &Process, t: &Thread) -> Result<(), Error> {
    install(inj, scratch, p, &t.seccomp_chain[shared_len(p)..])?;
    if t.seccomp_mode == 1 {
        let tid = inj.pid();
        inj.call(nr::SECCOMP, &[SECCOMP_SET_MODE_STRICT, 0, 0])
            .ctx(|| format!("pid {} thread {tid}: cannot enter seccomp strict mode", p.pid))?;
    }
    Ok(())
}
