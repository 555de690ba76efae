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
    Some(EpollTarget { fd, events: events?, data: data? })
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

/// Check that every target is an fd of the process (a registration outliving its fd cannot be
/// recreated).
pub fn check_targets(p: &Process) -> Result<(), Error> {
    for (i, f) in p.files.iter().enumerate() {
        for t in &f.epoll_targets {
            if !p.fds.iter().any(|d| d.fd == t.fd) {
                let epfd = p.fds.iter().find(|d| d.file as usize == i).map(|d| d.fd).unwrap_or(-1);
                return Err(Error::Unsupported {
                    pid: p.pid,
                    what: format!("fd {epfd}: an epoll target (fd {}) that is no longer open", t.fd),
                });
            }
        }
    }
    Ok(())
}

/// In the child, after the fd table is in place: register every target again.
pub fn apply_in_child(p: &Process) -> Result<(), String> {
    for (i, f) in p.files.iter().enumerate() {
        if f.epoll_targets.is_empty() {
            continue;
        }
        let Some(epfd) = p.fds.iter().find(|d| d.file as usize == i).map(|d| d.fd) else { continue };
        for t in &f.epoll_targets {
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
