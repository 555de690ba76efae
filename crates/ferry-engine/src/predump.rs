//! Incremental images (CRIU's `pre-dump`, `parent_img`, `track_mem`): a pre-dump copies the
//! tree's memory while it runs and leaves its write tracking on; the next dump (or pre-dump)
//! names it as its parent, copies its page file and re-reads only what was written since.
//!
//! The tracking is pre-copy's (precopy.rs, state/tracked.rs): a userfaultfd per process, its
//! private anonymous writable mappings registered for write-protection in async mode. It lives
//! as long as its userfaultfd is open, and runc and Podman start a new `criu swrk` for each
//! step: so a pre-dump hands the userfaultfds to a small detached keeper (`ferry track-keeper
//! SOCKET`, started by the pre-dump, no other fd inherited) that holds them until the next dump
//! connects to its socket (0600 in /run/ferry, root only: SO_PEERCRED checked both ways), takes
//! them and the keeper exits; it also exits when every tracked process is gone.
//!
//! A pre-dump image is memory only: its inventory has `pre_dump` set (the page runs of each
//! process, by pid and start time, and the keeper's socket), no process record; restore refuses
//! it. The dump taken from it copies its page files into its own image (it stays complete by
//! itself: restore and verification are unchanged), then keeps a page of the pre-dump only under
//! pre-copy's invariant: the page is still registered, present, and not written since it was
//! write-protected. Anything that does not match (keeper gone, a process not the same: pid and
//! start time; exec'd, mapping changed: no longer registered) is copied as in a plain dump.

use crate::error::{Ctx, Error};
use crate::procfs;
use crate::state::tracked::{self, FromParent};
use ferry_image::{ImageReader, ImageWriter, Inventory, PageRun, PreDump, PreDumpProc, PAGE_SIZE};
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Where keepers put their sockets.
const KEEPER_DIR: &str = "/run/ferry";

/// Most processes a keeper holds the tracking of (one SCM_RIGHTS message: the kernel's
/// SCM_MAX_FD is 253).
const MAX_TRACKED: usize = 200;

/// What a pre-dump did.
#[derive(Debug, Clone, Default)]
pub struct PreDumpReport {
    /// Pages of every mapping of the tree, pages copied from the tree by this pre-dump, pages
    /// copied from the parent's page files.
    pub pages_scanned: u64,
    pub pages_written: u64,
    pub pages_from_parent: u64,
    /// Processes whose tracking the keeper holds.
    pub tracked: usize,
}

/// Pre-dump the tree rooted at `root` into `dir` (from `parents`, see [`take_parent`]): its
/// memory copied while it runs (never frozen but for the moment each process's mappings are
/// registered), its tracking handed to a keeper.
pub fn pre_dump(root: i32, dir: &Path, mut parents: HashMap<i32, FromParent>) -> Result<PreDumpReport, Error> {
    if root <= 0 || !procfs::path(root, "").exists() {
        return Err(Error::NoProcess { pid: root });
    }
    if !tracked::wanted() {
        return Err(Error::Unsupported {
            pid: root,
            what: "a pre-dump with compressed page files (FERRY_PAGE_COMPRESSION)".into(),
        });
    }
    let mut img = ImageWriter::prepare(dir)?;
    let mut procs = Vec::new();
    let mut held: Vec<(i32, u64, OwnedFd)> = Vec::new();
    let mut report = PreDumpReport::default();
    let mut ppids = HashMap::from([(root, 0)]);
    for pid in crate::freeze::tree_pids(root) {
        let ppid = ppids.get(&pid).copied().unwrap_or(0);
        for c in crate::procfs::children_of(pid).unwrap_or_default() {
            ppids.insert(c, pid);
        }
        let started = procfs::start_time(pid).ok_or(Error::NoProcess { pid })?;
        let image_pid = crate::freeze::image_pid(root, pid);
        let from = parents.remove(&pid);
        let d = tracked::Pre::pre_dump(root, pid, ppid, &mut img, from)?;
        report.pages_written += d.written / PAGE_SIZE;
        report.pages_from_parent += d.from_parent.saturating_sub(ferry_image::pages_header().len() as u64) / PAGE_SIZE;
        let zeros =
            d.zeros.iter().map(|&(a, b)| PageRun { addr: a, nr_pages: (b - a) / PAGE_SIZE, offset: 0 }).collect();
        let tracked = held.len() < MAX_TRACKED;
        procs.push(PreDumpProc { pid, start_time: started, image_pid, tracked, runs: d.runs, zeros });
        if tracked {
            held.push((pid, started, d.uffd));
        }
        let maps = procfs::read_string(pid, "maps")?;
        report.pages_scanned += procfs::parse(pid, "maps", ferry_proc::parse_maps(&maps))?
            .iter()
            .map(|m| (m.end - m.start) / PAGE_SIZE)
            .sum::<u64>();
    }
    report.tracked = held.len();
    let (keeper_socket, keeper_pid) = spawn_keeper(root, &held)?;
    drop(held); // (the keeper holds them now)
    let inventory = Inventory {
        tool_version: env!("CARGO_PKG_VERSION").into(),
        root_pid: crate::freeze::image_pid(root, root),
        kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().into(),
        created_unix_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        pre_dump: Some(PreDump { keeper_socket: keeper_socket.display().to_string(), keeper_pid, procs }),
        ..Default::default()
    };
    img.commit(inventory)?;
    tracing::info!(root, tracked = report.tracked, pages = report.pages_written, "pre-dump committed");
    Ok(report)
}

/// The copies and the tracking a dump (or pre-dump) of the tree starts from, taken from the
/// pre-dump in `parent` and its keeper (which exits). Empty, with a log line, when the keeper is
/// gone: everything is copied again. An image that is not a pre-dump is refused.
pub fn take_parent(parent: &Path) -> Result<HashMap<i32, FromParent>, Error> {
    let img = ImageReader::open(parent)?;
    let Some(pre) = img.inventory().pre_dump.clone() else {
        return Err(Error::Invalid {
            object: parent.display().to_string(),
            what: "not a pre-dump image (ferry takes only a pre-dump as the parent of a dump)".into(),
        });
    };
    let mut uffds = match fetch_uffds(&pre) {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(parent = %parent.display(), error = %e, "the pre-dump's write tracking is gone: every page is copied again");
            return Ok(HashMap::new());
        }
    };
    let mut out = HashMap::new();
    for p in pre.procs.iter().filter(|p| p.tracked) {
        let Some(uffd) = uffds.remove(&(p.pid, p.start_time)) else {
            tracing::info!(pid = p.pid, "not tracked since the pre-dump: copied whole");
            continue;
        };
        if procfs::start_time(p.pid) != Some(p.start_time) {
            tracing::info!(pid = p.pid, "not the process of the pre-dump (exited, pid reused): its pages are not kept");
            continue;
        }
        let name = ferry_image::pages_file(p.image_pid);
        img.verify_where(|n| n == name)?;
        let pages = img.open_file(&name)?;
        let zeros = p.zeros.iter().map(|z| (z.addr, z.addr + z.nr_pages * PAGE_SIZE)).collect();
        out.insert(p.pid, FromParent { pages, uffd, runs: p.runs.clone(), zeros });
    }
    Ok(out)
}

/// The socket path of a new keeper for the tree rooted at `root`.
fn keeper_path(root: i32) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    Path::new(KEEPER_DIR).join(format!("track-{root}-{nanos}.sock"))
}

/// The header of the keeper's messages: one line `PID START_TIME` per userfaultfd, in order.
fn header(held: &[(i32, u64)]) -> Vec<u8> {
    held.iter().map(|(p, s)| format!("{p} {s}\n")).collect::<String>().into_bytes()
}

fn parse_header(data: &[u8]) -> Option<Vec<(i32, u64)>> {
    std::str::from_utf8(data)
        .ok()?
        .lines()
        .map(|l| {
            let (p, s) = l.split_once(' ')?;
            Some((p.parse().ok()?, s.parse().ok()?))
        })
        .collect()
}

/// Receive one message with fds on `sock`, waiting at most `ms` milliseconds.
fn recv_fds(sock: BorrowedFd<'_>, ms: i32, what: &str) -> Result<ferry_sys::unixsock::Peeked, Error> {
    let ready = ferry_sys::process::poll_readable(&[sock], ms).ctx(|| format!("{what}: poll"))?;
    if !ready[0] {
        return Err(Error::Invalid { object: what.into(), what: format!("no answer within {ms} ms") });
    }
    ferry_sys::unixsock::take(sock, 1 << 16)
        .ctx(|| format!("{what}: recvmsg"))?
        .ok_or_else(|| Error::Invalid { object: what.into(), what: "closed without an answer".into() })
}

/// Start the keeper of `held` (pid, start time, userfaultfd): it binds its socket, takes the
/// fds over a socketpair, and answers once it holds them. Returns its socket and pid.
fn spawn_keeper(root: i32, held: &[(i32, u64, OwnedFd)]) -> Result<(PathBuf, i32), Error> {
    use std::os::unix::fs::DirBuilderExt;
    use std::os::unix::process::CommandExt;
    if held.is_empty() {
        return Ok((PathBuf::new(), 0));
    }
    match std::fs::DirBuilder::new().mode(0o700).create(KEEPER_DIR) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).ctx(|| format!("cannot create {KEEPER_DIR}")),
    }
    let path = keeper_path(root);
    let (ours, theirs) =
        ferry_sys::unixsock::socketpair(libc::SOCK_SEQPACKET).ctx(|| "keeper: socketpair".to_string())?;
    let exe = std::fs::read_link("/proc/self/exe").ctx(|| "cannot read /proc/self/exe".to_string())?;
    let child = std::process::Command::new(exe)
        .arg("track-keeper")
        .arg(&path)
        .stdin(std::process::Stdio::from(theirs))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .ctx(|| "cannot start the keeper (ferry track-keeper)".to_string())?;
    let ids: Vec<(i32, u64)> = held.iter().map(|(p, s, _)| (*p, *s)).collect();
    let fds: Vec<BorrowedFd<'_>> = held.iter().map(|(_, _, f)| f.as_fd()).collect();
    ferry_sys::unixsock::send_with(ours.as_fd(), &header(&ids), None, &fds, None)
        .ctx(|| "keeper: cannot hand it the userfaultfds".to_string())?;
    let got = recv_fds(ours.as_fd(), 10_000, "keeper")?;
    if got.data != b"ready" {
        return Err(Error::Invalid {
            object: "keeper".into(),
            what: format!("answered {:?}", String::from_utf8_lossy(&got.data)),
        });
    }
    tracing::info!(keeper = child.id(), socket = %path.display(), processes = held.len(), "write tracking handed to the keeper");
    Ok((path, child.id() as i32))
}

/// Take the userfaultfds from the pre-dump's keeper: (pid, start time) → userfaultfd.
fn fetch_uffds(pre: &PreDump) -> Result<HashMap<(i32, u64), OwnedFd>, Error> {
    if pre.keeper_socket.is_empty() {
        return Ok(HashMap::new());
    }
    let what = format!("keeper {}", pre.keeper_socket);
    let sock = ferry_sys::unixsock::socket(libc::SOCK_SEQPACKET).ctx(|| format!("{what}: socket"))?;
    if let Err(e) = ferry_sys::unixsock::connect(sock.as_fd(), pre.keeper_socket.as_bytes()) {
        if e.raw_os_error() == Some(libc::ECONNREFUSED) {
            // Nobody listens: the keeper was killed and left its socket file; nothing will
            // listen there again.
            let _ = std::fs::remove_file(&pre.keeper_socket);
        }
        return Err(e).ctx(|| format!("{what}: connect"));
    }
    let cred = ferry_sys::unixsock::peer_cred(sock.as_fd()).ctx(|| format!("{what}: SO_PEERCRED"))?;
    if cred.uid != 0 || cred.pid != pre.keeper_pid {
        return Err(Error::Invalid {
            object: what,
            what: format!("held by pid {} uid {}, not the keeper (pid {}, root)", cred.pid, cred.uid, pre.keeper_pid),
        });
    }
    ferry_sys::unixsock::send(sock.as_fd(), b"take", None).ctx(|| format!("{what}: send"))?;
    let got = recv_fds(sock.as_fd(), 10_000, &what)?;
    let ids = parse_header(&got.data).filter(|ids| ids.len() == got.fds.len()).ok_or_else(|| Error::Invalid {
        object: what.clone(),
        what: format!("a bad answer ({} bytes, {} fds)", got.data.len(), got.fds.len()),
    })?;
    Ok(ids.into_iter().zip(got.fds).collect())
}

/// `ferry track-keeper SOCKET` (started by [`pre_dump`], fd 0 its socketpair): hold the
/// userfaultfds until a root peer takes them over `SOCKET`, or every tracked process is gone.
pub fn keeper_main(path: &Path) -> Result<i32, Error> {
    // Nothing but the socketpair (fd 0) is kept of what the pre-dump's process inherited (a
    // client's pipe held open here would make it wait for the keeper's end).
    let _ = ferry_sys::raw::close_range(3, u32::MAX);
    // (fd 0 is the socketpair the pre-dump gave: moved off 0, close-on-exec.)
    let pair = ferry_sys::unixsock::adopt_inherited(0, libc::SOCK_SEQPACKET).ctx(|| "keeper: fd 0".to_string())?;
    let got = recv_fds(pair.as_fd(), 10_000, "keeper: the pre-dump")?;
    let ids = parse_header(&got.data)
        .filter(|ids| ids.len() == got.fds.len())
        .ok_or_else(|| Error::Invalid { object: "keeper".into(), what: "a bad message from the pre-dump".into() })?;
    let uffds = got.fds;
    // (Only the tracked processes' lifetimes: a pidfd each.)
    let mut pidfds: Vec<OwnedFd> = ids.iter().filter_map(|&(p, _)| ferry_sys::process::pidfd_open(p).ok()).collect();
    ferry_sys::raw::umask(0o077);
    let listener = ferry_sys::unixsock::socket(libc::SOCK_SEQPACKET).ctx(|| "keeper: socket".to_string())?;
    let name = path.as_os_str().as_encoded_bytes();
    ferry_sys::unixsock::bind(listener.as_fd(), name).ctx(|| format!("keeper: bind {}", path.display()))?;
    let _remove = RemoveOnDrop(path.to_path_buf());
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .ctx(|| format!("keeper: chmod {}", path.display()))?;
    }
    ferry_sys::unixsock::listen(listener.as_fd(), 4).ctx(|| "keeper: listen".to_string())?;
    ferry_sys::unixsock::send(pair.as_fd(), b"ready", None).ctx(|| "keeper: answer".to_string())?;
    drop(pair);
    loop {
        if pidfds.is_empty() {
            return Ok(0); // every tracked process is gone
        }
        let mut fds: Vec<BorrowedFd<'_>> = vec![listener.as_fd()];
        fds.extend(pidfds.iter().map(|f| f.as_fd()));
        let ready = ferry_sys::process::poll_readable(&fds, -1).ctx(|| "keeper: poll".to_string())?;
        let listen_ready = ready[0];
        let mut i = 0;
        pidfds.retain(|_| {
            i += 1;
            !ready[i]
        });
        if !listen_ready {
            continue;
        }
        let Ok(conn) = ferry_sys::unixsock::accept(listener.as_fd()) else { continue };
        // Root only: what it takes lets it see every write of the tree.
        if !ferry_sys::unixsock::peer_cred(conn.as_fd()).is_ok_and(|c| c.uid == 0) {
            continue;
        }
        if recv_fds(conn.as_fd(), 10_000, "keeper: the dump").is_err() {
            continue;
        }
        let fds: Vec<BorrowedFd<'_>> = uffds.iter().map(|f| f.as_fd()).collect();
        if ferry_sys::unixsock::send_with(conn.as_fd(), &header(&ids), None, &fds, None).is_ok() {
            return Ok(0);
        }
    }
}

/// Remove the keeper's socket file when it exits.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::{header, parse_header};

    #[test]
    fn keeper_header_round_trips() {
        let ids = vec![(12, 3456), (13, 3460)];
        assert_eq!(parse_header(&header(&ids)), Some(ids));
        assert_eq!(parse_header(b"12 x\n"), None);
    }
}
