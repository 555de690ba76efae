//! File descriptors in flight (SCM_RIGHTS) in unix sockets' receive queues.
//!
//! The peek that reads a queue (state/unix.rs) installs copies of each message's fds in ferry.
//! Each copy is matched with `kcmp(KCMP_FILE)` to an fd of the tree holding the same open file
//! description, which the message then names (`InFlightFd { pid, fd }`).
//!
//! A file that no process of the tree holds any more (its sender closed it after sendmsg) lives
//! only in the message. It is collected from ferry's copy like any fd of its kind
//! (`files::collect_one` on ferry's own `/proc/PID/fd`, fdinfo and a `pidfd_getfd` copy), and
//! recorded as an entry of the `files` of the process holding the socket that no fd of that
//! process refers to; the message names it by its index (`InFlightFd { pid, file }`). Restore
//! opens it with that process's other files (above the fd base, so the forked process never has
//! it at a number of its own and loses ferry's copy with its helper fds), and `unix::fill` puts
//! it into the message: once restore lets go of its copy, the message holds the only reference,
//! as before the dump.
//!
//! Such a file may be a unix socket whose own queue holds fds (nesting): its peek adds them to
//! the list, and the pass goes on until no new file comes up. A file met twice (sent in two
//! messages, or sockets in each other's queues) is collected once (kcmp among ferry's copies).
//! ferry keeps its copies until the dump ends: a pipe's unread bytes are read through them
//! (`files::finish_pipes`).
//!
//! Carried kinds: regular files and directories (offset, flags; deleted ones through a ghost
//! file), plain character devices, pipe ends, FIFOs, memfds, eventfds, timerfds, signalfds and
//! unix sockets. Refused by name: other kinds in flight only (epoll, inotify, fanotify, pidfds,
//! inet, packet and netlink sockets, terminals ...), and a file with a lock, an owner
//! (F_SETOWN) or O_ASYNC, which belong to an fd table ferry has none of for it.

use crate::error::{Ctx, Error};
use crate::procfs;
use crate::state::files::{self, TreeFiles};
use ferry_image::{FileKind, ImageWriter, InFlightFd, Process};
use ferry_sys::consts::KCMP_FILE;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// The kinds of file carried when only a message holds them.
const CARRIED: &[FileKind] = &[
    FileKind::Regular,
    FileKind::Directory,
    FileKind::CharDevice,
    FileKind::Pipe,
    FileKind::Fifo,
    FileKind::Memfd,
    FileKind::Eventfd,
    FileKind::Timerfd,
    FileKind::Signalfd,
    FileKind::UnixSocket,
];

/// Once every process's fds are collected (before pipes are finished): name every fd in flight
/// of the queues read so far, collecting the files only the messages hold, and write the names
/// into every copy of each socket's record.
pub fn collect(procs: &mut [Process], img: &mut ImageWriter, tree: &mut TreeFiles) -> Result<(), Error> {
    let me = std::process::id() as i32;
    let own = ferry_sys::process::pidfd_open(me).ctx(|| format!("pid {me} (ferry): pidfd_open"))?;
    // Files only in flight, collected so far: ferry's copy and where the image has it.
    let mut only: Vec<(OwnedFd, InFlightFd)> = Vec::new();
    loop {
        let batch = tree.unix.take_in_flight();
        if batch.is_empty() {
            break;
        }
        for (ino, msgs) in batch {
            let Some((hp, hfd)) = holder(procs, ino) else { continue };
            let mut rights: Vec<(usize, Vec<InFlightFd>)> = Vec::new();
            for (m, fds) in msgs {
                let mut named = Vec::new();
                for f in fds {
                    if let Some(n) = in_tree(procs, me, f.as_fd()) {
                        named.push(n);
                        continue;
                    }
                    let seen = only.iter().find(|(c, _)| same_file(me, c.as_fd(), f.as_fd()));
                    if let Some((_, n)) = seen {
                        named.push(n.clone());
                        continue;
                    }
                    let n = collect_file(procs, (hp, hfd, ino), img, tree, (me, own.as_fd(), f.as_fd()))?;
                    named.push(n.clone());
                    only.push((f, n));
                }
                rights.push((m, named));
            }
            for u in procs.iter_mut().flat_map(|p| p.files.iter_mut()).filter_map(|f| f.unix.as_mut()) {
                if u.ino == ino {
                    for (m, named) in &rights {
                        if let Some(msg) = u.queue.get_mut(*m) {
                            msg.rights = named.clone();
                        }
                    }
                }
            }
        }
    }
    tree.unix.keep_copies(only.into_iter().map(|(c, _)| c));
    Ok(())
}

/// The process (index) holding the unix socket `ino`, and its fd there (-1 for a socket that
/// is itself only in flight). None for a socket at fd 0-2 that stays inherited (connected to
/// nothing of the image): its queue goes along with it.
fn holder(procs: &[Process], ino: u32) -> Option<(usize, i32)> {
    let unix_inos: std::collections::HashSet<u32> =
        procs.iter().flat_map(|p| p.files.iter()).filter_map(|f| f.unix.as_ref()).map(|u| u.ino).collect();
    procs.iter().enumerate().find_map(|(pi, p)| {
        let fi = p.files.iter().position(|f| {
            f.kind == FileKind::UnixSocket as i32
                && f.unix.as_ref().is_some_and(|u| u.ino == ino && (!u.stdio || unix_inos.contains(&u.peer)))
        })?;
        Some((pi, p.fds.iter().find(|d| d.file as usize == fi).map(|d| d.fd).unwrap_or(-1)))
    })
}

fn same_file(me: i32, a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
    ferry_sys::process::kcmp(me, me, KCMP_FILE, a.as_raw_fd() as u64, b.as_raw_fd() as u64).ok() == Some(0)
}

/// An fd of the tree that is the same open file description as ferry's copy `f`.
fn in_tree(procs: &[Process], me: i32, f: BorrowedFd<'_>) -> Option<InFlightFd> {
    procs.iter().filter(|q| !q.zombie).find_map(|q| {
        q.fds
            .iter()
            .find(|d| ferry_sys::process::kcmp(me, q.pid, KCMP_FILE, f.as_raw_fd() as u64, d.fd as u64).ok() == Some(0))
            .map(|d| InFlightFd { pid: q.pid, fd: d.fd, file: None })
    })
}

/// Collect the file behind ferry's copy `f` (only a message holds it) as a file of process
/// `hp` that no fd refers to.
fn collect_file(
    procs: &mut [Process],
    (hp, hfd, ino): (usize, i32, u32),
    img: &mut ImageWriter,
    tree: &mut TreeFiles,
    (me, own, f): (i32, BorrowedFd<'_>, BorrowedFd<'_>),
) -> Result<InFlightFd, Error> {
    let pid = procs[hp].pid;
    let fd = f.as_raw_fd();
    let refuse = |what: String| {
        Error::Unsupported {
        pid,
        what: format!(
            "fd {hfd}: unix socket:[{ino}] has a file descriptor in flight (SCM_RIGHTS) whose file no process of the dump holds open: {what}"
        ),
    }
    };
    let link = procfs::read_link(me, &format!("fd/{fd}"))?;
    let info_text = procfs::read_string(me, &format!("fdinfo/{fd}"))?;
    let info = procfs::parse(me, &format!("fdinfo/{fd}"), ferry_proc::parse_fdinfo(&info_text))?;
    let p = &mut procs[hp];
    let mut file = files::collect_one((me, own, fd), &link, &info, img, p, hp, tree).map_err(|e| match e {
        // (Named after ferry's copy: name the socket and the message's file instead.)
        Error::Unsupported { what, .. } => {
            refuse(what.strip_prefix(&format!("fd {fd}: ")).unwrap_or(&what).to_string())
        }
        other => other,
    })?;
    let kind = FileKind::try_from(file.kind).unwrap_or(FileKind::Invalid);
    if !CARRIED.contains(&kind) || !file.external_key.is_empty() {
        return Err(refuse(format!("{link}, a file of a kind not carried in flight")));
    }
    if file.owner.is_some() || file.flags & libc::O_ASYNC as u32 != 0 {
        return Err(refuse(format!("{link}, with an owner for SIGIO (F_SETOWN) or O_ASYNC")));
    }
    if !crate::state::locks::collect(me, fd, &info)?.is_empty() {
        return Err(refuse(format!("{link}, with a file lock")));
    }
    file.describe = format!("{} (in flight only, in socket:[{ino}])", file.describe);
    let idx = p.files.len() as u32;
    p.files.push(file);
    tracing::info!(pid, socket = ino, link, "a file only in flight (SCM_RIGHTS) is carried with its message");
    Ok(InFlightFd { pid, fd: -1, file: Some(idx) })
}
