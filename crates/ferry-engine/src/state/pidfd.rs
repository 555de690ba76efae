//! pidfds (`anon_inode:[pidfd]`): fdinfo names the process ("Pid:", in ferry's pid namespace;
//! -1 once it exited and was reaped); the flags are the file's (`PIDFD_NONBLOCK` = O_NONBLOCK,
//! `PIDFD_THREAD` = O_EXCL for a pidfd of a thread).
//!
//! A pidfd of a process or thread of the tree is opened again with `pidfd_open` by the process
//! holding it, injected once the whole tree exists and its own threads do (`restore`): a
//! thread's pidfd must therefore name a thread of its holder or of a process restored before
//! it, else the dump refuses it. Until then its fd number holds a placeholder (/dev/null), so
//! the fd table keeps its shape. A pidfd of a process that had exited (as CRIU 4 does, with a
//! temporary process) is a pidfd of a child ferry forks and reaps while it prepares the files
//! (`prepare`): it reports the same (no pid, ESRCH to signals, readable). A pidfd of a process
//! outside the dump is refused, as CRIU does. A pidfd shared by several processes (inherited
//! across fork) comes back as one description per process: their O_NONBLOCK is not shared.

use crate::error::{Ctx, Error};
use crate::inject::Injector;
use ferry_image::{File, FileKind, PidfdTarget, Process};
use ferry_sys::consts::nr;
use std::os::fd::OwnedFd;

/// The pidfd flags a file keeps: PIDFD_NONBLOCK and PIDFD_THREAD.
const FLAGS: u32 = (libc::O_NONBLOCK | libc::O_EXCL) as u32;

pub fn is_pidfd(link: &str) -> bool {
    link == "anon_inode:[pidfd]"
}

/// Fill `f` from the fdinfo of pidfd `fd` of `pid`.
pub fn collect(pid: i32, fd: i32, info: &ferry_proc::FdInfo, f: &mut File) -> Result<(), Error> {
    let target: i32 = info.get("Pid").and_then(|v| v.trim().parse().ok()).ok_or_else(|| Error::Invalid {
        object: format!("/proc/{pid}/fdinfo/{fd}"),
        what: "a pidfd without a Pid: line".into(),
    })?;
    let thread = f.flags & libc::O_EXCL as u32 != 0;
    f.kind = FileKind::Pidfd as i32;
    f.describe = match target {
        t if t < 0 => "pidfd of a process that exited".into(),
        t => format!("pidfd of {} {t}", if thread { "thread" } else { "process" }),
    };
    f.pidfd = Some(PidfdTarget { pid: target.max(0), dead: target < 0 });
    Ok(())
}

/// Once the tree is collected: every live pidfd must name a process of the tree (a zombie
/// included), or a thread of its holder or of a process before it in the image (restored
/// before it).
pub fn finish(procs: &[Process], zombies: &[Process]) -> Result<(), Error> {
    for (hi, p) in procs.iter().enumerate() {
        for (i, f) in p.files.iter().enumerate() {
            let Some(t) = f.pidfd.as_ref().filter(|t| !t.dead) else { continue };
            let fd = p.fds.iter().find(|d| d.file as usize == i).map(|d| d.fd).unwrap_or(-1);
            let refuse = |what: String| Error::Unsupported { pid: p.pid, what: format!("fd {fd}: {what}") };
            if procs.iter().chain(zombies).any(|q| q.pid == t.pid) {
                continue;
            }
            match procs.iter().position(|q| q.threads.iter().any(|th| th.tid == t.pid)) {
                Some(j) if f.flags & libc::O_EXCL as u32 == 0 => {
                    // (pidfd_open refuses a thread without PIDFD_THREAD: the kernel would not
                    // have made this one.)
                    return Err(refuse(format!(
                        "a pidfd of thread {} of pid {} without PIDFD_THREAD",
                        t.pid, procs[j].pid
                    )));
                }
                Some(j) if j > hi => {
                    return Err(refuse(format!(
                        "a pidfd of thread {} of pid {} (a process restored after this one)",
                        t.pid, procs[j].pid
                    )))
                }
                Some(_) => {}
                None => return Err(refuse(format!("a pidfd of process {} outside the dump", t.pid))),
            }
        }
    }
    Ok(())
}

/// At restore, in ferry: the file a forked child puts at the pidfd's number until `restore`
/// (a placeholder), or for the pidfd of a dead process, that pidfd itself.
pub fn prepare(obj: &str, f: &File) -> Result<OwnedFd, Error> {
    if f.pidfd.as_ref().is_some_and(|t| t.dead) {
        return ferry_sys::process::dead_pidfd(f.flags & FLAGS)
            .ctx(|| format!("{obj}: cannot make a pidfd of an exited process"));
    }
    let null = c"/dev/null";
    ferry_sys::process::open_raw(null, libc::O_RDONLY | libc::O_CLOEXEC, 0)
        .ctx(|| format!("{obj}: cannot open /dev/null as a placeholder"))
}

/// In the tracer, once the process's threads exist: open every live pidfd again inside the
/// process (`pidfd_open`, `dup3` onto its number, `close`).
pub fn restore(inj: &Injector, pid: i32, p: &Process) -> Result<(), Error> {
    for (i, f) in p.files.iter().enumerate() {
        let Some(t) = f.pidfd.as_ref().filter(|t| !t.dead) else { continue };
        let obj = || format!("pid {pid}: pidfd of {}", t.pid);
        let n = inj.call(nr::PIDFD_OPEN, &[t.pid as u64, (f.flags & FLAGS) as u64]).ctx(obj)?;
        // Every fd of this description (dups of one another) gets the same new one.
        let r = p.fds.iter().filter(|d| d.file as usize == i).try_for_each(|d| {
            let cloexec = if d.cloexec { libc::O_CLOEXEC as u64 } else { 0 };
            inj.call(nr::DUP3, &[n, d.fd as u64, cloexec]).map(drop)
        });
        inj.call(nr::CLOSE, &[n]).ctx(obj)?;
        r.ctx(obj)?;
    }
    Ok(())
}
