//! epoll: every registered target (fd number, events, data) from fdinfo. The instance is
//! created in ferry; the targets are registered again in the restored child once its fd table
//! is in place, so each registration names the same fd number and file as before.

use crate::error::Error;
use ferry_image::{EpollTarget, File, Process};

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
    Some(EpollTarget { fd, events: events?, data: data?, owner: 0 })
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

/// Once the whole tree is collected: find, for every target, the process whose fd is that very
/// file (`kcmp(KCMP_EPOLL_TFD)`) among those holding the epoll instance; it registers the
/// target at restore. A registration that outlived its fd cannot be recreated: refused.
pub fn assign_owners(procs: &mut [Process]) -> Result<(), Error> {
    let n = procs.len();
    for pi in 0..n {
        for fi in 0..procs[pi].files.len() {
            if procs[pi].files[fi].epoll_targets.is_empty() {
                continue;
            }
            let p = &procs[pi];
            let efd = p.fds.iter().find(|d| d.file as usize == fi).map(|d| d.fd).unwrap_or(-1);
            let sid = p.files[fi].shared_id;
            // Processes holding this instance: this one first, then the others in image order.
            let holders: Vec<usize> = std::iter::once(pi)
                .chain((0..n).filter(|&q| q != pi && sid != 0 && procs[q].files.iter().any(|f| f.shared_id == sid)))
                .collect();
            let mut owners = Vec::new();
            for t in &p.files[fi].epoll_targets {
                let owner = holders.iter().map(|&q| &procs[q]).find(|q| {
                    q.fds.iter().any(|d| d.fd == t.fd)
                        && ferry_sys::process::kcmp_epoll_target(q.pid, p.pid, t.fd, efd, t.fd, 0).ok() == Some(0)
                });
                match owner {
                    Some(q) => owners.push(q.pid),
                    None => {
                        return Err(Error::Unsupported {
                            pid: p.pid,
                            what: format!("fd {efd}: an epoll target (fd {}) that is no longer open", t.fd),
                        })
                    }
                }
            }
            for (t, o) in procs[pi].files[fi].epoll_targets.iter_mut().zip(owners) {
                t.owner = o;
            }
        }
    }
    Ok(())
}

/// In the child, after the fd table is in place: register again every target it owns (of a
/// shared instance, each process registers its own).
pub fn apply_in_child(p: &Process) -> Result<(), String> {
    let mut done = std::collections::HashSet::new();
    for (i, f) in p.files.iter().enumerate() {
        if f.epoll_targets.is_empty() || (f.shared_id != 0 && !done.insert(f.shared_id)) {
            continue;
        }
        let Some(epfd) = p.fds.iter().find(|d| d.file as usize == i).map(|d| d.fd) else { continue };
        for t in f.epoll_targets.iter().filter(|t| t.owner == p.pid || t.owner == 0) {
            ferry_sys::process::epoll_add_numbers(epfd, t.fd, t.events, t.data)
                .map_err(|e| format!("epoll fd {epfd}: cannot register fd {}: {e}", t.fd))?;
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
