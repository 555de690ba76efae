//! Process attributes: comm, cwd, root, umask, personality, rlimits, process group and session,
//! dumpable, parent-death signal, child-subreaper flag, oom_score_adj, the audit loginuid,
//! PR_SET_THP_DISABLE and membarrier registrations.
//!
//! oom_score_adj is written from outside (/proc/PID/oom_score_adj, as root); loginuid only the
//! process itself may write (the kernel refuses any other writer), so the restored child writes
//! its own before it gives itself to the tracer; THP_DISABLE and membarrier are per address
//! space and asked for by injected calls (membarrier registrations cannot be read from outside,
//! and MEMBARRIER_CMD_GET_REGISTRATIONS needs Linux 6.3).

use crate::error::{Ctx, Error};
use crate::inject::Injector;
use crate::procfs;
use ferry_image::{Process, Rlimit, ThreadSched};
use ferry_sys::consts::nr;
use ferry_sys::process::{set_rlimit, vm_read};
use ferry_sys::raw;
use std::time::{Duration, Instant};

const RLIMIT_NLIMITS: u32 = 16;
const PR_SET_PDEATHSIG: u64 = 1;
const PR_GET_PDEATHSIG: u64 = 2;
const PR_GET_DUMPABLE: u64 = 3;
const PR_SET_DUMPABLE: u64 = 4;
const PR_SET_CHILD_SUBREAPER: u64 = 36;
const PR_GET_CHILD_SUBREAPER: u64 = 37;
const PR_SET_THP_DISABLE: u64 = 41;
const PR_GET_THP_DISABLE: u64 = 42;
const MEMBARRIER_CMD_GET_REGISTRATIONS: u64 = 1 << 9;
/// The MEMBARRIER_CMD_REGISTER_* commands GET_REGISTRATIONS reports (GLOBAL_EXPEDITED,
/// PRIVATE_EXPEDITED, PRIVATE_EXPEDITED_SYNC_CORE, PRIVATE_EXPEDITED_RSEQ), in the order they
/// are registered again.
const MEMBARRIER_REGISTER: [u32; 4] = [1 << 2, 1 << 4, 1 << 6, 1 << 8];

/// Collect what /proc shows without injection.
pub fn collect(pid: i32, st: &ferry_proc::Status, stat: &ferry_proc::Stat, p: &mut Process) -> Result<(), Error> {
    p.pid = pid;
    p.ppid = stat.ppid;
    p.pgid = stat.pgrp;
    p.sid = stat.session;
    p.tty_nr = stat.tty_nr as u32;
    p.exit_signal = stat.exit_signal;
    p.comm = st.name.clone();
    p.umask = st.umask.unwrap_or(0o022);
    p.nice = ferry_sys::process::get_nice(pid).ctx(|| format!("pid {pid}: cannot read the nice value"))?;
    (p.sched_policy, p.sched_priority) =
        ferry_sys::process::get_scheduler(pid).ctx(|| format!("pid {pid}: cannot read the scheduling policy"))?;
    p.cpu_affinity =
        ferry_sys::process::get_affinity(pid).ctx(|| format!("pid {pid}: cannot read the CPU affinity"))?;
    p.cwd = procfs::read_link(pid, "cwd")?;
    p.root = procfs::read_link(pid, "root")?;
    if p.cwd.ends_with(" (deleted)") {
        // A removed cwd is recreated, entered and removed again (state/ghost_node.rs).
        let at = procfs::path(pid, "cwd");
        let md = std::fs::metadata(&at).ctx(|| format!("pid {pid}: cannot stat its cwd {}", p.cwd))?;
        if let Some((path, g)) = crate::state::ghost_node::collect(&p.cwd, &md) {
            p.cwd = path;
            p.cwd_ghost = Some(g);
        }
    }
    for (what, path) in [("cwd", &p.cwd), ("root", &p.root)] {
        if path.ends_with(" (deleted)") {
            return Err(Error::Unsupported { pid, what: format!("a deleted {what} ({path})") });
        }
    }
    let pers = procfs::read_string(pid, "personality")?;
    p.personality = u64::from_str_radix(pers.trim(), 16).map_err(|_| Error::Invalid {
        object: format!("/proc/{pid}/personality"),
        what: format!("bad value {pers:?}"),
    })?;
    let number = |name: &str| -> Result<i64, Error> {
        let text = procfs::read_string(pid, name)?;
        text.trim().parse().map_err(|_| Error::Invalid {
            object: format!("/proc/{pid}/{name}"),
            what: format!("bad value {:?}", text.trim()),
        })
    };
    p.oom_score_adj = number("oom_score_adj")? as i32;
    // (No /proc/PID/loginuid without CONFIG_AUDIT: nothing to keep.)
    if procfs::path(pid, "loginuid").exists() {
        p.loginuid = Some(number("loginuid")? as u32);
    }
    Ok(())
}

/// Nice value, scheduling policy and CPU affinity are per thread; the process's (`p.nice` ...)
/// are its main thread's. Thread `tid`'s own, when any differs from those (None: the same).
pub fn collect_thread_sched(pid: i32, tid: i32, p: &Process) -> Result<Option<ThreadSched>, Error> {
    use ferry_sys::process as sp;
    if tid == pid {
        return Ok(None);
    }
    let nice = sp::get_nice(tid).ctx(|| format!("pid {pid} thread {tid}: cannot read the nice value"))?;
    let (policy, prio) = sp::get_scheduler(tid).ctx(|| format!("pid {pid} thread {tid}: cannot read the policy"))?;
    let aff = sp::get_affinity(tid).ctx(|| format!("pid {pid} thread {tid}: cannot read the CPU affinity"))?;
    if nice == p.nice && (policy, prio) == (p.sched_policy, p.sched_priority) && aff == p.cpu_affinity {
        return Ok(None);
    }
    Ok(Some(ThreadSched { nice, sched_policy: policy, sched_priority: prio, cpu_affinity: aff }))
}

/// Resource limits, read from inside with injected `prlimit64(0, ..)`: reading another
/// process's limits from outside needs CAP_SYS_RESOURCE when its uids differ.
pub fn collect_rlimits(inj: &Injector, scratch: u64, p: &mut Process) -> Result<(), Error> {
    let pid = inj.pid();
    // /proc/PID/limits has them all in one read (no injected call, which keeps the freeze
    // short); it is the same kernel data, only formatted. Any surprise there: ask the process.
    if let Some(limits) = procfs::read_string(pid, "limits").ok().and_then(|t| parse_limits(&t)) {
        p.rlimits.extend(limits);
        return Ok(());
    }
    for resource in 0..RLIMIT_NLIMITS {
        inj.call(nr::PRLIMIT64, &[0, resource as u64, 0, scratch])
            .ctx(|| format!("pid {pid}: cannot read rlimit {resource}"))?;
        let mut b = [0u8; 16];
        vm_read(pid, scratch, &mut b).ctx(|| format!("pid {pid}: cannot read back rlimit {resource}"))?;
        let cur = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        let max = u64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]);
        p.rlimits.push(Rlimit { resource, cur, max });
    }
    Ok(())
}

/// ferry's own hard limit on open files (RLIMIT_NOFILE), from /proc/self/limits.
pub(crate) fn own_nofile_hard() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_limits(&text)?.into_iter().find(|r| r.resource == libc::RLIMIT_NOFILE).map(|r| r.max)
}

/// /proc/PID/limits: a header line, then one line per resource in RLIMIT_* order, printed as
/// `%-25s %-20s %-20s %-10s` (name, soft, hard, unit), each value a number or "unlimited".
fn parse_limits(text: &str) -> Option<Vec<Rlimit>> {
    let value = |s: &str| match s.trim() {
        "unlimited" => Some(u64::MAX),
        v => v.parse::<u64>().ok(),
    };
    let rows: Vec<&str> = text.lines().skip(1).collect();
    if rows.len() != RLIMIT_NLIMITS as usize {
        return None;
    }
    rows.iter()
        .zip(0..)
        .map(|(row, resource)| Some(Rlimit { resource, cur: value(row.get(26..46)?)?, max: value(row.get(47..67)?)? }))
        .collect()
}

/// Collect what only the process itself can tell (dumpable, pdeathsig, subreaper).
pub fn collect_injected(inj: &Injector, scratch: u64, p: &mut Process) -> Result<(), Error> {
    let pid = inj.pid();
    p.dumpable =
        inj.call(nr::PRCTL, &[PR_GET_DUMPABLE, 0, 0, 0, 0]).ctx(|| format!("pid {pid}: cannot read dumpable"))? as i32;
    let mut b = [0u8; 4];
    inj.call(nr::PRCTL, &[PR_GET_PDEATHSIG, scratch, 0, 0, 0]).ctx(|| format!("pid {pid}: cannot read pdeathsig"))?;
    vm_read(pid, scratch, &mut b).ctx(|| format!("pid {pid}: cannot read back pdeathsig"))?;
    p.pdeathsig = i32::from_le_bytes(b);
    inj.call(nr::PRCTL, &[PR_GET_CHILD_SUBREAPER, scratch, 0, 0, 0])
        .ctx(|| format!("pid {pid}: cannot read child_subreaper"))?;
    vm_read(pid, scratch, &mut b).ctx(|| format!("pid {pid}: cannot read back child_subreaper"))?;
    p.child_subreaper = i32::from_le_bytes(b) != 0;
    p.thp_disable = inj
        .call(nr::PRCTL, &[PR_GET_THP_DISABLE, 0, 0, 0, 0])
        .ctx(|| format!("pid {pid}: cannot read PR_GET_THP_DISABLE"))? as u32;
    p.membarrier = match inj.call(nr::MEMBARRIER, &[MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0]) {
        Ok(r) => r as u32,
        // Before Linux 6.3 the registrations cannot be read: refuse rather than lose any.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            return Err(Error::Unsupported {
                pid,
                what: "a kernel without MEMBARRIER_CMD_GET_REGISTRATIONS (Linux 6.3)".into(),
            })
        }
        // A kernel without membarrier: no registration to keep.
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => 0,
        Err(e) => return Err(e).ctx(|| format!("pid {pid}: cannot read the membarrier registrations")),
    };
    Ok(())
}

/// In the restored child: loginuid, root, cwd (given as an open directory fd), umask, personality,
/// comm.
pub fn apply_in_child(p: &Process, cwd_fd: std::os::fd::BorrowedFd<'_>) -> Result<(), String> {
    // Only the process itself may write its loginuid (before a chroot hides /proc; more than
    // once only with CAP_AUDIT_CONTROL).
    if let Some(uid) = p.loginuid {
        let now = std::fs::read_to_string("/proc/self/loginuid").map_err(|e| format!("read loginuid: {e}"))?;
        if now.trim() != uid.to_string() {
            std::fs::write("/proc/self/loginuid", uid.to_string()).map_err(|e| format!("loginuid {uid}: {e}"))?;
        }
    }
    if p.root != "/" {
        let root = std::ffi::CString::new(p.root.as_bytes()).map_err(|_| "root path has a NUL byte".to_string())?;
        raw::chroot(&root).map_err(|e| format!("chroot {}: {e}", p.root))?;
    }
    raw::fchdir(cwd_fd).map_err(|e| format!("chdir {}: {e}", p.cwd))?;
    raw::umask(p.umask);
    raw::personality(p.personality).map_err(|e| format!("personality {:#x}: {e}", p.personality))?;
    raw::set_comm(p.comm.as_bytes()).map_err(|e| format!("comm: {e}"))?;
    Ok(())
}

/// By the tracer from outside, for each of the process's threads `tids`: nice value, scheduling
/// policy, CPU affinity. An affinity naming CPUs this machine lacks becomes `fallback` (every
/// CPU ferry may use), with a warning; with none in the image, `fallback` too (ferry pinned the
/// process to its own CPU while rebuilding it).
pub fn restore_sched(
    pid: i32,
    tids: &[(i32, Option<&ThreadSched>)],
    p: &Process,
    fallback: &[u8],
) -> Result<(), Error> {
    use ferry_sys::process as sp;
    for &(tid, own) in tids {
        let (nice, policy, priority, affinity) = match own {
            Some(t) => (t.nice, t.sched_policy, t.sched_priority, &t.cpu_affinity),
            None => (p.nice, p.sched_policy, p.sched_priority, &p.cpu_affinity),
        };
        let now =
            sp::get_scheduler(tid).ctx(|| format!("pid {pid} thread {tid}: cannot read the scheduling policy"))?;
        if now != (policy, priority) {
            sp::set_scheduler(tid, policy, priority)
                .ctx(|| format!("pid {pid} thread {tid}: cannot set scheduling policy {policy} priority {priority}"))?;
        }
        sp::set_nice(tid, nice).ctx(|| format!("pid {pid} thread {tid}: cannot set nice {nice}"))?;
        let set = match affinity.is_empty() {
            true => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
            false => sp::set_affinity(tid, affinity),
        };
        if let Err(e) = set {
            if !affinity.is_empty() {
                tracing::warn!(pid, tid, error = %e, "cannot restore the CPU affinity; keeping every CPU");
            }
            if let Err(e) = sp::set_affinity(tid, fallback) {
                // (e.g. a cpuset that shares no CPU with ferry's mask: it keeps ferry's CPU)
                tracing::warn!(pid, tid, error = %e, "cannot set the CPU affinity");
            }
        }
    }
    Ok(())
}

/// By the tracer from outside: oom_score_adj (a restored process first has ferry's).
pub fn restore_oom_score_adj(pid: i32, p: &Process) -> Result<(), Error> {
    let path = procfs::path(pid, "oom_score_adj");
    let now = std::fs::read_to_string(&path).ctx(|| format!("pid {pid}: cannot read oom_score_adj"))?;
    if now.trim() != p.oom_score_adj.to_string() {
        std::fs::write(&path, p.oom_score_adj.to_string())
            .ctx(|| format!("pid {pid}: cannot set oom_score_adj to {}", p.oom_score_adj))?;
    }
    Ok(())
}

/// By the tracer from outside: resource limits.
pub fn restore_rlimits(pid: i32, p: &Process) -> Result<(), Error> {
    for r in &p.rlimits {
        set_rlimit(pid, r.resource, r.cur, r.max).ctx(|| {
            format!(
                "pid {pid}: cannot set rlimit {} to {}/{} (raising a hard limit needs CAP_SYS_RESOURCE)",
                r.resource, r.cur, r.max
            )
        })?;
    }
    Ok(())
}

/// By the tracer, after credentials (a uid change resets dumpable): dumpable, pdeathsig,
/// child_subreaper.
pub fn restore_late(inj: &Injector, p: &Process) -> Result<(), Error> {
    let pid = inj.pid();
    inj.call(nr::PRCTL, &[PR_SET_DUMPABLE, p.dumpable as u64, 0, 0, 0])
        .ctx(|| format!("pid {pid}: cannot set dumpable"))?;
    inj.call(nr::PRCTL, &[PR_SET_PDEATHSIG, p.pdeathsig as u64, 0, 0, 0])
        .ctx(|| format!("pid {pid}: cannot set pdeathsig"))?;
    if p.child_subreaper {
        inj.call(nr::PRCTL, &[PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0])
            .ctx(|| format!("pid {pid}: cannot set child_subreaper"))?;
    }
    Ok(())
}

/// By the tracer, once the address space is rebuilt: PR_SET_THP_DISABLE and the membarrier
/// registrations (both belong to the address space).
pub fn restore_mm_attrs(inj: &Injector, p: &Process) -> Result<(), Error> {
    let pid = inj.pid();
    if p.thp_disable & 1 != 0 {
        inj.call(nr::PRCTL, &[PR_SET_THP_DISABLE, 1, (p.thp_disable & !1) as u64, 0, 0])
            .ctx(|| format!("pid {pid}: cannot set PR_SET_THP_DISABLE {:#x}", p.thp_disable))?;
    }
    let unknown = p.membarrier & !MEMBARRIER_REGISTER.iter().fold(0, |a, b| a | b);
    if unknown != 0 {
        return Err(Error::Invalid {
            object: format!("pid {pid}"),
            what: format!("unknown membarrier registrations {unknown:#x}"),
        });
    }
    for cmd in MEMBARRIER_REGISTER.into_iter().filter(|c| p.membarrier & c != 0) {
        inj.call(nr::MEMBARRIER, &[cmd as u64, 0, 0])
            .ctx(|| format!("pid {pid}: cannot register membarrier command {cmd:#x}"))?;
    }
    Ok(())
}

/// How many times thread `tid` of `pid` was put on a CPU (`schedstat`), if the kernel says.
pub fn timeslices(pid: i32, tid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(crate::procfs::path(pid, &format!("task/{tid}/schedstat"))).ok()?;
    ferry_proc::parse_schedstat(&text).ok().map(|s| s.timeslices)
}

/// Wait until every released thread (`held`: pid, tid and its count of turns on a CPU while
/// held) has been on a CPU since (or is gone). Until then the kernel takes it for a thread
/// with a signal pending (PTRACE_DETACH woke it with TIF_SIGPENDING set), and a signal sent to
/// its process goes to another thread that does not block it: a main thread frozen in
/// sigsuspend(), released, and sent a signal by whoever learnt that the restore was done (the
/// pidfile), missed it for good when another thread took it (`fds::cycle_pidfds` under load;
/// the original would have been woken). Once it ran, it took its own pending signals and
/// went back to what it was doing. Bounded (10 s, then a warning): the tree runs either way.
pub fn wait_released_ran(held: &[(i32, i32, Option<u64>)]) {
    let t = Instant::now();
    let deadline = t + Duration::from_secs(10);
    let mut left: Vec<&(i32, i32, Option<u64>)> = held.iter().filter(|h| h.2.is_some()).collect();
    while !left.is_empty() {
        left.retain(|&&(pid, tid, before)| timeslices(pid, tid).is_some_and(|now| Some(now) == before));
        if left.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let tids: Vec<i32> = left.iter().map(|h| h.1).collect();
            tracing::warn!(
                ?tids,
                "released threads not run after 10 s: a signal sent to their process now may go to another thread"
            );
            return;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    tracing::debug!(waited = ?t.elapsed(), threads = held.len(), "every released thread has run");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_text() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max file size             unlimited            unlimited            bytes     \n\
Max data size             unlimited            unlimited            bytes     \n\
Max stack size            8388608              unlimited            bytes     \n\
Max core file size        0                    unlimited            bytes     \n\
Max resident set          unlimited            unlimited            bytes     \n\
Max processes             96294                96294                processes \n\
Max open files            1024                 524288               files     \n\
Max locked memory         8388608              8388608              bytes     \n\
Max address space         unlimited            unlimited            bytes     \n\
Max file locks            unlimited            unlimited            locks     \n\
Max pending signals       96294                96294                signals   \n\
Max msgqueue size         819200               819200               bytes     \n\
Max nice priority         0                    0                    \n\
Max realtime priority     0                    0                    \n\
Max realtime timeout      unlimited            unlimited            us        \n";
        let l = parse_limits(text).expect("parses");
        assert_eq!(l.len(), 16);
        assert_eq!((l[3].resource, l[3].cur, l[3].max), (3, 8388608, u64::MAX));
        assert_eq!((l[7].cur, l[7].max), (1024, 524288));
        assert_eq!((l[13].cur, l[13].max), (0, 0));
        assert_eq!((l[15].resource, l[15].cur), (15, u64::MAX));
        assert!(parse_limits("Limit\nMax cpu time    what\n").is_none());
    }
}
