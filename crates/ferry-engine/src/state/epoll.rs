//! epoll: every registered target (fd number, events, data) from fdinfo. The instance is
//! created in ferry; the targets are registered again in a restored child once its fd table is
//! in place, so each registration names the same fd number and file as before.
//!
//! A registration's key is (file, fd number), and the fd number need not lead to that file any
//! more: the program may have closed it (the registration lives as long as the file, here held
//! at another fd) or put another file there. Dump therefore finds each target's file among all
//! fds of the tree with `kcmp(KCMP_EPOLL_TFD)` (`src_pid`, `src_fd`). Restore registers every
//! target of an instance once, in one process holding it (`owner`), through the instance's
//! prepared fd (above the base, the same description): when the target's number does not hold
//! the target's file in that process, the file's prepared fd is put at that number for the
//! `EPOLL_CTL_ADD` and the number then gets back what it holds (or is closed). A target whose
//! file no process of the tree holds (kept alive outside, or only in flight) is refused.

use crate::error::Error;
use ferry_image::{EpollTarget, File, Process};
use std::collections::HashMap;

/// Parse one "tfd:" value: "   3 events: 80000019 data:  1234  pos:0 ino:1a sdev:10".
fn parse_target(v: &str) -> Option<EpollTarget> {
    let mut it = v.split_whitespace();
    let fd = it.next()?.parse().ok()?;
    let mut events = None;
    let mut data = None;
    while let Some(tok) = it.next() {
        match tok {
            "events:" => events = u32::from_str_radix(it.next()?, 16).ok(),
            "data:" => data = u64::from_str_radix(it.next()?, 16).ok(),
            _ => {}
        }
    }
    Some(EpollTarget { fd, events: events?, data: data?, ..Default::default() })
}

/// Fill `f` from the fdinfo lines of an epoll instance.
pub fn collect(pid: i32, fd: i32, info: &ferry_proc::FdInfo, f: &mut File) -> Result<(), Error> {
    for v in info.all("tfd") {
        let t = parse_target(v).ok_or_else(|| Error::Invalid {
            object: format!("/proc/{pid}/fdinfo/{fd}"),
            what: format!("malformed epoll target tfd: {v}"),
        })?;
        f.epoll_targets.push(t);
    }
    Ok(())
}

/// Once the whole tree is collected: for every target of every instance, the fd of the tree
/// that holds its file (`kcmp(KCMP_EPOLL_TFD)`: the registered number in a process holding the
/// instance first, then every fd of the tree), and the one process that registers it again (the
/// first of the image holding the instance). Every copy of a shared instance gets the same.
pub fn assign_owners(procs: &mut [Process]) -> Result<(), Error> {
    let n = procs.len();
    let mut done: HashMap<u32, Vec<EpollTarget>> = HashMap::new();
    for pi in 0..n {
        for fi in 0..procs[pi].files.len() {
            if procs[pi].files[fi].epoll_targets.is_empty() {
                continue;
            }
            let sid = procs[pi].files[fi].shared_id;
            if let Some(t) = done.get(&sid).filter(|_| sid != 0) {
                procs[pi].files[fi].epoll_targets = t.clone();
                continue;
            }
            let p = &procs[pi];
            let efd = p.fds.iter().find(|d| d.file as usize == fi).map(|d| d.fd).unwrap_or(-1);
            // Processes holding this instance, in image order (the first one registers).
            let holders: Vec<usize> = (0..n)
                .filter(|&q| q == pi || (sid != 0 && procs[q].files.iter().any(|f| f.shared_id == sid)))
                .collect();
            let owner = procs[holders[0]].pid;
            let same = |q: &Process, fd: i32, t: &EpollTarget, toff: u32| {
                ferry_sys::process::kcmp_epoll_target(q.pid, p.pid, fd, efd, t.fd, toff).ok() == Some(0)
            };
            let mut targets = p.files[fi].epoll_targets.clone();
            let mut seen: HashMap<i32, u32> = HashMap::new();
            for t in targets.iter_mut() {
                // The n-th registration of the same fd number (of different files).
                let toff = *seen.entry(t.fd).and_modify(|c| *c += 1).or_insert(0);
                let at_number = holders
                    .iter()
                    .map(|&q| &procs[q])
                    .find(|q| q.fds.iter().any(|d| d.fd == t.fd) && same(q, t.fd, t, toff));
                let src = at_number.map(|q| (q.pid, t.fd)).or_else(|| {
                    procs
                        .iter()
                        .filter(|q| !q.zombie)
                        .flat_map(|q| q.fds.iter().map(move |d| (q, d.fd)))
                        .find(|(q, fd)| same(q, *fd, t, toff))
                        .map(|(q, fd)| (q.pid, fd))
                });
                let Some((src_pid, src_fd)) = src else {
                    return Err(Error::Unsupported {
                        pid: p.pid,
                        what: format!(
                            "fd {efd}: an epoll target (fd {}) whose file no process of the dump holds open",
                            t.fd
                        ),
                    });
                };
                (t.owner, t.src_pid, t.src_fd) = (owner, src_pid, src_fd);
            }
            if sid != 0 {
                done.insert(sid, targets.clone());
            }
            procs[pi].files[fi].epoll_targets = targets;
        }
    }
    Ok(())
}

/// In the child, after the fd table is in place: register again every target it owns (each
/// target of a shared instance is registered by one process). `numbers` are the prepared fds of
/// this process's files; `prepared(pid, fd)` is the prepared fd of fd `fd` of process `pid` of
/// the image (every prepared fd of the tree is still open in every child at this point).
pub fn apply_in_child(p: &Process, numbers: &[i32], prepared: &dyn Fn(i32, i32) -> Option<i32>) -> Result<(), String> {
    use ferry_sys::raw::{close, dup3_numbers};
    let mut done = std::collections::HashSet::new();
    for (i, f) in p.files.iter().enumerate() {
        if f.epoll_targets.is_empty() || (f.shared_id != 0 && !done.insert(f.shared_id)) {
            continue;
        }
        let Some(epfd) = p.fds.iter().find(|d| d.file as usize == i).map(|d| d.fd) else { continue };
        // The instance's own prepared fd: out of the way of the numbers juggled below.
        let ep = numbers.get(i).copied().unwrap_or(epfd);
        for t in f.epoll_targets.iter().filter(|t| t.owner == p.pid || t.owner == 0) {
            let fail = |e: std::io::Error| format!("epoll fd {epfd}: cannot register fd {}: {e}", t.fd);
            let src = match t.src_pid {
                0 => None,
                pid => Some(
                    prepared(pid, t.src_fd)
                        .ok_or_else(|| format!("epoll fd {epfd}: the file of target fd {} is missing", t.fd))?,
                ),
            };
            let here = p.fds.iter().find(|d| d.fd == t.fd);
            let held = here.map(|d| numbers.get(d.file as usize).copied().unwrap_or(-1));
            let Some(src) = src.filter(|&s| held != Some(s)) else {
                ferry_sys::process::epoll_add_numbers(ep, t.fd, t.events, t.data).map_err(fail)?;
                continue;
            };
            dup3_numbers(src, t.fd, true).map_err(fail)?;
            ferry_sys::process::epoll_add_numbers(ep, t.fd, t.events, t.data).map_err(fail)?;
            match here.zip(held) {
                Some((d, h)) => dup3_numbers(h, t.fd, d.cloexec).map_err(fail)?,
                None => close(t.fd).map_err(fail)?,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_target() {
        let t = super::parse_target("       3 events: 80000019 data:             1234  pos:0 ino:1a sdev:10")
            .expect("parses");
        assert_eq!((t.fd, t.events, t.data), (3, 0x8000_0019, 0x1234));
    }
}
