//! SO_PEERCRED (and SO_PEERGROUPS) of unix sockets: what a socket reports as its peer's
//! credentials — pid, euid, egid and supplementary groups.
//!
//! The kernel takes them from the calling process, once: at socketpair() (both ends get the
//! caller's), at connect() (the client gets those its listener took at listen(), the accepted
//! socket the connecting process's), and at listen() (the listener's own, handed to clients).
//! Nothing can set them afterwards. Restore makes every socket in ferry (state/unix.rs), which
//! would give each ferry's pid and root's ids; so each of those calls runs instead in a
//! short-lived helper process that has the recorded pid (clone3 with set_tid, free since the
//! tree is not forked yet) and ids (keeping ferry's capabilities, so it reaches any socket
//! file), and shares ferry's fd table (CLONE_FILES), so the socket it makes or connects is
//! ferry's. The helper exits and is reaped before the tree is forked, and the restored process
//! takes the same pid.
//!
//! What the peer then reports: the same pid, uid, gid and groups. SO_PEERPIDFD, though, names
//! the helper's pid (the kernel keeps a reference to the struct pid, not the number), which
//! has exited: a pidfd of a process that is gone ("Pid: -1" in its fdinfo), as for a peer that
//! exited in the original. Not done — the peer reports ferry's pid and ids as before — when the
//! tree has a pid namespace of its own (its pids do not exist yet), when the recorded pid is
//! taken by a process outside the tree (a supervisor that made the pair and still runs), and
//! when ferry may not take the ids (no CAP_SETUID/CAP_SETGID/CAP_SETPCAP), with a log line. A
//! connection waiting in an accept queue is connected again from ferry: accept() then reports
//! ferry's credentials for it (the embryo socket has no inode, and what it holds cannot be read
//! at dump).

use ferry_image::{PeerCred, Process, UnixSocket};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// Record SO_PEERCRED and SO_PEERGROUPS of ferry's copy `c` of a unix socket.
pub fn collect(c: BorrowedFd<'_>, u: &mut UnixSocket) -> std::io::Result<()> {
    let cr = ferry_sys::unixsock::peer_cred(c)?;
    if cr.pid == 0 {
        return Ok(()); // never connected (the kernel reports uid and gid -1 then, as it will)
    }
    let groups = ferry_sys::unixsock::peer_groups(c)?;
    u.peer_cred = Some(PeerCred { pid: cr.pid, uid: cr.uid, gid: cr.gid, groups, in_tree: false });
    Ok(())
}

/// Mark the credentials whose pid is a process of the tree (its pid follows the process).
pub fn finish(procs: &mut [Process]) {
    let pids: std::collections::HashSet<i32> = procs.iter().map(|p| p.pid).collect();
    for c in procs.iter_mut().flat_map(|p| p.files.iter_mut()).filter_map(|f| f.unix.as_mut()?.peer_cred.as_mut()) {
        c.in_tree = pids.contains(&c.pid);
    }
}

/// A helper's exit code: it could not take the recorded ids (no CAP_SETUID, CAP_SETGID or
/// CAP_SETPCAP here); errno values of the call itself are below.
const NO_IDS: i32 = 255;

/// Runs the calls that set a socket's peer credentials as the recorded process.
pub struct Creators {
    /// False when the tree gets a pid namespace of its own: its pids do not exist yet.
    enabled: bool,
}

impl Creators {
    pub fn new(enabled: bool) -> Creators {
        Creators { enabled }
    }

    /// Run `op` in a helper process with `cred`'s pid and ids that shares ferry's fd table, or
    /// in ferry itself when there are no credentials to give or the pid is taken. `op` runs in
    /// a forked child: raw syscalls only (no allocation, no logging).
    pub fn run(
        &self,
        cred: Option<&PeerCred>,
        obj: &str,
        op: &mut dyn FnMut() -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let Some(c) = cred.filter(|_| self.enabled) else { return op() };
        let helper = ferry_sys::process::spawn_raw(Some(c.pid), libc::CLONE_FILES as u64, &mut || {
            if ferry_sys::process::set_ids_raw(c.uid, c.gid, &c.groups).is_err() {
                return NO_IDS;
            }
            match op() {
                Ok(()) => 0,
                Err(e) => e.raw_os_error().unwrap_or(libc::EIO).clamp(1, NO_IDS - 1),
            }
        });
        match helper {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                tracing::info!(
                    object = obj,
                    pid = c.pid,
                    "pid taken: the socket's peer credentials are ferry's (SO_PEERCRED differs)"
                );
                op()
            }
            Err(e) => Err(e),
            Ok(h) => match reaped(h)? {
                Some((_, ferry_sys::ptrace::WaitStatus::Exited(0))) => Ok(()),
                Some((_, ferry_sys::ptrace::WaitStatus::Exited(NO_IDS))) => {
                    tracing::info!(
                        object = obj,
                        uid = c.uid,
                        gid = c.gid,
                        "cannot take these ids here: the socket's peer credentials are ferry's (SO_PEERCRED differs)"
                    );
                    op()
                }
                Some((_, ferry_sys::ptrace::WaitStatus::Exited(code))) => Err(std::io::Error::from_raw_os_error(code)),
                other => Err(std::io::Error::other(format!("the helper with pid {} ended: {other:?}", c.pid))),
            },
        }
    }

    /// `socketpair(ty)` as `cred`'s process.
    pub fn socketpair(&self, ty: i32, cred: Option<&PeerCred>, obj: &str) -> std::io::Result<(OwnedFd, OwnedFd)> {
        let (a, b) = ferry_sys::unixsock::socketpair(ty)?;
        if cred.is_some() && self.enabled {
            // The helper's pair takes the numbers of this one (the fd table is shared).
            let (na, nb) = (a.as_raw_fd(), b.as_raw_fd());
            self.run(cred, obj, &mut || {
                let (x, y) = ferry_sys::unixsock::socketpair(ty)?;
                ferry_sys::raw::dup3_numbers(x.as_raw_fd(), na, true)?;
                ferry_sys::raw::dup3_numbers(y.as_raw_fd(), nb, true)
            })?;
        }
        Ok((a, b))
    }
}

/// The end of helper `h`: its status once it exited or was killed. A wait that fails, or that
/// sees the helper otherwise (stopped), kills it and reaps it before the error, so no helper
/// is left behind (running with the fd table shared, or a zombie).
fn reaped(h: i32) -> std::io::Result<Option<(i32, ferry_sys::ptrace::WaitStatus)>> {
    use ferry_sys::ptrace::WaitStatus;
    match ferry_sys::ptrace::wait(h, false) {
        r @ Ok(Some((_, WaitStatus::Exited(_) | WaitStatus::Signaled(_)))) => r,
        r => {
            ferry_sys::process::kill_and_reap(h);
            r
        }
    }
}
