//! The fd table: regular files (offset, flags, FD_CLOEXEC, shared descriptions), directories,
//! harmless character devices, files deleted while open, pipes, and fds inherited from outside.
//!
//! Restore opens every file description in ferry before forking, so a missing file is reported
//! before any process exists; the forked child only `dup3`s them onto their old numbers.

use crate::error::{Ctx, Error};
use crate::procfs;
use crate::state::{
    epoll, eventfd, external, fanotify, fifo, fown, ghost_node, inet, inotify, locks, memfd_seals, netlink, netns,
    packet, pidfd, pipes, signalfd, timerfd, tty, tun, unix,
};
use ferry_image::{Fd, File, FileKind, ImageWriter, Process};
use ferry_sys::consts::KCMP_FILE;
use ferry_sys::process::{kcmp, open_raw};
use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// Character devices any process may hold that carry no state: (major, minor, path).
const PLAIN_DEVICES: &[(u32, u32, &str)] =
    &[(1, 3, "/dev/null"), (1, 5, "/dev/zero"), (1, 7, "/dev/full"), (1, 8, "/dev/random"), (1, 9, "/dev/urandom")];

/// Name an fd target for an "is not supported" error.
fn unsupported_kind(link: &str) -> String {
    if link == "anon_inode:[io_uring]" {
        return "io_uring".into();
    }
    if let Some(rest) = link.strip_prefix("anon_inode:") {
        return rest.trim_matches(|c| c == '[' || c == ']').to_string();
    }
    if link.starts_with("socket:") {
        return format!("socket {}", link.trim_start_matches("socket:"));
    }
    link.to_string()
}

/// One end of a pipe: (process index, pid, fd).
type PipeEnd = (usize, i32, i32);

/// What the fd tables of the processes dumped so far share: file descriptions (found with
/// `kcmp` across processes) and pipe ends, so that a tree is restored wired together.
#[derive(Default)]
pub struct TreeFiles {
    /// (process index, file index, pid, fd) of one fd per file description seen so far.
    reps: Vec<(usize, usize, i32, i32)>,
    /// Pipe inode -> (read ends, write ends).
    pipe_ends: HashMap<u64, (Vec<PipeEnd>, Vec<PipeEnd>)>,
    next_shared: u32,
    /// What to do with TCP connections (`--tcp-close`, `--tcp-established`).
    pub connections: inet::Connections,
    /// FIFOs whose unread bytes are already stored.
    fifos: fifo::Seen,
    /// The pids of the dumped tree (to tell a FIFO's holders outside it).
    pub pids: std::collections::HashSet<i32>,
    /// Terminals: pty masters and fds on terminals that may be outside the tree.
    pub tty: tty::TreeTty,
    /// Every unix socket of the system (sock_diag), read on first use.
    pub unix: unix::Table,
    /// `--external file[MNT_ID:INO]` keys: such files are `Inherited` (state/external.rs).
    pub external_files: std::collections::HashSet<String>,
    /// The tree's root's network namespace (inode): where its tun devices must be (state/tun.rs).
    pub root_net: u64,
}

/// Collect the fd table of `pid` into `p.fds` and `p.files`; deleted files' content goes
/// into ghost files of the image. `done` are the processes of the tree collected before (index
/// `done.len()` is this one); descriptions shared with them get a common `shared_id`.
pub fn collect(
    pid: i32,
    img: &mut ImageWriter,
    p: &mut Process,
    done: &mut [Process],
    tree: &mut TreeFiles,
) -> Result<(), Error> {
    let me = done.len();
    let dir = procfs::path(pid, "fd");
    let mut fds: Vec<i32> = std::fs::read_dir(&dir)
        .ctx(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    // Representative fd of each file description of this process, to find dups with kcmp.
    let mut reps: Vec<(i32, u32)> = Vec::new();
    let pidfd = ferry_sys::process::pidfd_open(pid).ctx(|| format!("pid {pid}: pidfd_open"))?;
    for fd in fds {
        let link = procfs::read_link(pid, &format!("fd/{fd}"))?;
        let info_text = procfs::read_string(pid, &format!("fdinfo/{fd}"))?;
        let info = procfs::parse(pid, &format!("fdinfo/{fd}"), ferry_proc::parse_fdinfo(&info_text))?;
        let cloexec = info.flags & libc::O_CLOEXEC as u32 != 0;
        let mut shared = None;
        for (rep, idx) in &reps {
            if kcmp(pid, pid, KCMP_FILE, *rep as u64, fd as u64).ctx(|| format!("pid {pid} fd {fd}: kcmp"))? == 0 {
                shared = Some(*idx);
                break;
            }
        }
        if let Some(idx) = shared {
            p.fds.push(Fd { fd, cloexec, file: idx, locks: locks::collect(pid, fd, &info)? });
            continue;
        }
        // The same description in another process of the tree (inherited across fork).
        let mut other = None;
        for &(pi, fi, opid, ofd) in tree.reps.iter().filter(|r| r.0 != me) {
            if kcmp(opid, pid, KCMP_FILE, ofd as u64, fd as u64)
                .ctx(|| format!("pid {pid} fd {fd}: kcmp with pid {opid}"))?
                == 0
            {
                other = Some((pi, fi));
                break;
            }
        }
        if let Some((pi, fi)) = other {
            let f = &mut done[pi].files[fi];
            if f.shared_id == 0 {
                tree.next_shared += 1;
                f.shared_id = tree.next_shared;
            }
            let idx = p.files.len() as u32;
            p.files.push(f.clone());
            reps.push((fd, idx));
            p.fds.push(Fd { fd, cloexec, file: idx, locks: locks::collect(pid, fd, &info)? });
            continue;
        }
        let file = collect_one((pid, std::os::fd::AsFd::as_fd(&pidfd), fd), &link, &info, img, p, me, tree)?;
        let idx = p.files.len() as u32;
        p.files.push(file);
        reps.push((fd, idx));
        tree.reps.push((me, idx as usize, pid, fd));
        p.fds.push(Fd { fd, cloexec, file: idx, locks: locks::collect(pid, fd, &info)? });
    }
    Ok(())
}

/// The open file description behind fd `fd` of `pid` (its link `link`, its fdinfo `info`), a
/// description no fd collected before shares; deleted files' content goes into ghost files
/// recorded in `p` (process `me` of the tree). Also used for the files found only in flight in
/// a unix socket's queue (state/unix.rs), through ferry's own copies of them. `pidfd` is
/// `pid`'s.
pub fn collect_one(
    (pid, pidfd, fd): (i32, std::os::fd::BorrowedFd<'_>, i32),
    link: &str,
    info: &ferry_proc::FdInfo,
    img: &mut ImageWriter,
    p: &mut Process,
    me: usize,
    tree: &mut TreeFiles,
) -> Result<File, Error> {
    let link = link.to_string();
    let flags = info.flags & !(libc::O_CLOEXEC as u32);
    {
        let unsupported = |what: String| Error::Unsupported { pid, what: format!("fd {fd}: {what}") };
        let mut file = File { flags, pos: info.pos, describe: link.clone(), ..Default::default() };
        // (A socket: ferry's one copy of it, which every module below asks.)
        let sock = match link.starts_with("socket:") {
            true => Some(
                ferry_sys::process::pidfd_getfd(pidfd, fd)
                    .ctx(|| format!("pid {pid} fd {fd} ({link}): cannot take a copy with pidfd_getfd"))?,
            ),
            false => None,
        };
        if let Some(s) = &sock {
            netns::refuse_socket_elsewhere(pid, fd, std::os::fd::AsFd::as_fd(s))?;
        }
        if let Some(ino) = pipes::pipe_ino(&link) {
            file.kind = FileKind::Pipe as i32;
            file.pipe_ino = ino;
            let ends = tree.pipe_ends.entry(ino).or_default();
            if flags & libc::O_ACCMODE as u32 == libc::O_RDONLY as u32 {
                ends.0.push((me, pid, fd));
            } else {
                ends.1.push((me, pid, fd));
            }
        } else if let Some(name) = link.strip_prefix("/memfd:") {
            // A memfd: its content goes into the image once per object (inode).
            let fdpath = procfs::path(pid, &format!("fd/{fd}"));
            let md = std::fs::metadata(&fdpath).ctx(|| format!("pid {pid} fd {fd}: cannot stat {link}"))?;
            file.kind = FileKind::Memfd as i32;
            file.path = name.trim_end_matches(" (deleted)").to_string();
            file.ino = md.ino();
            file.size = md.size();
            let ghost = format!("memfd-{}.img", md.ino());
            ghost::save(img, &mut p.ghosts, &ghost, &fdpath, &md)?;
            file.mode = md.mode();
            file.ghost = ghost;
            file.seals = memfd_seals::collect(pid, fd)?;
        } else if link.starts_with('/') {
            let fdpath = procfs::path(pid, &format!("fd/{fd}"));
            let md = std::fs::metadata(&fdpath).ctx(|| format!("pid {pid} fd {fd}: cannot stat {link}"))?;
            let key = external::file_key(info.mnt_id, md.ino());
            if tree.external_files.contains(&key) {
                // Named external: a supervisor gives it back at restore (--inherit-fd).
                file.kind = FileKind::Inherited as i32;
                file.describe = format!("{link} (external {key})");
                file.external_key = key;
                return Ok(file);
            }
            let ft = md.file_type();
            file.mode = md.mode();
            file.size = md.size();
            let deleted = link.ends_with(" (deleted)") && md.nlink() == 0;
            file.path = if deleted { link.trim_end_matches(" (deleted)").to_string() } else { link.clone() };
            // Restore reopens by path: the path must lead to this very file (not so for a POSIX
            // message queue, a file of another mount, or a path reused since).
            let same = |p: &str| {
                std::fs::metadata(procfs::in_root(pid, p)).is_ok_and(|o| (o.dev(), o.ino()) == (md.dev(), md.ino()))
            };
            if !deleted && !same(&link) {
                return Err(unsupported(format!("{link}: the path does not lead to this open file (a POSIX message queue, a file on another mount, or replaced); dump --external {key} lets it be given back with restore --inherit-fd")));
            }
            if ft.is_file() {
                file.kind = FileKind::Regular as i32;
                if deleted {
                    // One ghost per file, whatever holds it (fds, mappings, processes).
                    let name = ghost::name(md.dev(), md.ino());
                    ghost::save(img, &mut p.ghosts, &name, &fdpath, &md)?;
                    file.ghost = name;
                }
            } else if ft.is_dir() {
                // A removed directory is recreated, opened and removed again (state/ghost_node.rs).
                file.ghost_inode = ghost_node::collect(&link, &md).map(|(_, g)| g);
                if deleted && file.ghost_inode.is_none() {
                    return Err(unsupported(format!("deleted directory {link}")));
                }
                file.kind = FileKind::Directory as i32;
            } else if ft.is_char_device() {
                let (maj, min) = (libc::major(md.rdev()), libc::minor(md.rdev()));
                if PLAIN_DEVICES.iter().any(|(a, b, _)| (*a, *b) == (maj, min)) {
                    // Reopened by its path (checked above to lead to this node); a deleted node
                    // is recreated with mknod, its mode and owner.
                    file.kind = FileKind::CharDevice as i32;
                    if deleted {
                        let name = ghost::name(md.dev(), md.ino());
                        ghost::save(img, &mut p.ghosts, &name, &fdpath, &md)?;
                        file.ghost = name;
                    }
                } else if tty::is_tty_major(maj) {
                    tty::collect(pid, fd, &link, md.rdev(), &mut file, &mut tree.tty)?;
                } else if (maj, min) == tun::TUN_DEVICE && !deleted {
                    tun::collect(pid, pidfd, fd, tree.root_net, &mut file)?;
                } else {
                    return Err(unsupported(format!("device {link}")));
                }
            } else if ft.is_fifo() {
                // A removed FIFO is recreated, opened and removed again (state/ghost_node.rs).
                file.ghost_inode = ghost_node::collect(&link, &md).map(|(_, g)| g);
                if deleted && file.ghost_inode.is_none() {
                    return Err(unsupported(format!("deleted FIFO {link}")));
                }
                file.kind = FileKind::Fifo as i32;
                fifo::collect(pid, fd, &md, (&mut tree.fifos, &tree.pids), &mut file)?;
            } else {
                return Err(unsupported(format!("special file {link}")));
            }
        } else if let Some(s) = &sock {
            if !collect_socket((pid, fd, s), &link, tree, &mut file)? {
                return Err(unsupported(unsupported_kind(&link)));
            }
        } else if link == "anon_inode:[eventfd]" {
            file.kind = FileKind::Eventfd as i32;
            eventfd::collect(pid, fd, info, &mut file)?;
        } else if link == "anon_inode:[timerfd]" {
            file.kind = FileKind::Timerfd as i32;
            timerfd::collect(pid, fd, info, &mut file)?;
        } else if pidfd::is_pidfd(&link) {
            pidfd::collect(pid, fd, info, &mut file)?;
        } else if link == "anon_inode:[signalfd]" {
            file.kind = FileKind::Signalfd as i32;
            signalfd::collect(pid, fd, info, &mut file)?;
        } else if link == "anon_inode:inotify" {
            file.kind = FileKind::Inotify as i32;
            inotify::collect(pid, fd, info, &mut file)?;
        } else if link == "anon_inode:[fanotify]" {
            file.kind = FileKind::Fanotify as i32;
            fanotify::collect(pid, fd, info, &mut file)?;
        } else if link == "anon_inode:[eventpoll]" {
            file.kind = FileKind::Epoll as i32;
            epoll::collect(pid, fd, info, &mut file)?;
        } else {
            return Err(unsupported(unsupported_kind(&link)));
        }
        fown::collect(pidfd, pid, fd, &mut file)?;
        Ok(file)
    }
}

/// Socket `link` at fd `fd` of `pid`, asked through `copy`, ferry's one copy of it: AF_INET and
/// AF_INET6 (state/inet.rs), AF_PACKET and AF_NETLINK (state/packet.rs, state/netlink.rs), one
/// at fds 0-2 (inherited, unless a unix socket of the image), a unix socket (state/unix.rs).
/// False for another kind.
fn collect_socket(
    (pid, fd, copy): (i32, i32, &OwnedFd),
    link: &str,
    tree: &mut TreeFiles,
    file: &mut File,
) -> Result<bool, Error> {
    let sock = std::os::fd::AsFd::as_fd(copy);
    if inet::collect((pid, fd, copy), link, &mut tree.connections, file)?
        || packet::collect(pid, fd, link, sock, file)?
        || netlink::collect(pid, fd, link, sock, file)?
    {
        return Ok(true);
    }
    if fd <= 2 {
        file.kind = FileKind::Inherited as i32;
        unix::collect_stdio((pid, fd, sock), link, &mut tree.unix, &tree.pids, file)?;
        return Ok(true);
    }
    if unix::is_unix(&mut tree.unix, pid, sock, link)? {
        file.kind = FileKind::UnixSocket as i32;
        unix::collect((pid, fd, sock), link, &mut tree.unix, &tree.pids, file)?;
        return Ok(true);
    }
    Ok(false)
}

/// Once every process is collected: pipes with both ends in the tree keep their unread bytes
/// (stored with the process holding the first read end). A pipe whose other end is outside the
/// tree is inherited when the tree holds it only at fds 0-2 (restore hands over ferry's own);
/// otherwise it is an external pipe (state/external.rs): its capacity, and its unread bytes if
/// the tree holds the read end, restored as a pipe whose outside end is closed.
pub fn finish_pipes(procs: &mut [Process], tree: &mut TreeFiles) -> Result<(), Error> {
    let mut inos: Vec<_> = std::mem::take(&mut tree.pipe_ends).into_iter().collect();
    inos.sort_by_key(|(ino, _)| *ino);
    for (ino, (readers, writers)) in inos {
        let external = readers.is_empty() || writers.is_empty();
        let stdio_only = readers.iter().chain(writers.iter()).all(|&(_, _, fd)| fd <= 2);
        if !external || !stdio_only {
            let (&(pi, pid, fd), read_end) = match readers.first() {
                Some(r) => (r, true),
                None => (
                    writers
                        .first()
                        .ok_or_else(|| Error::Invalid { object: format!("pipe:[{ino}]"), what: "no end".into() })?,
                    false,
                ),
            };
            let pidfd = ferry_sys::process::pidfd_open(pid).ctx(|| format!("pid {pid}: pidfd_open"))?;
            let mut pipe = if read_end {
                pipes::collect(pid, std::os::fd::AsFd::as_fd(&pidfd), fd, ino)?
            } else {
                pipes::collect_capacity(pid, std::os::fd::AsFd::as_fd(&pidfd), fd, ino)?
            };
            pipe.external = external;
            if external {
                for f in procs.iter_mut().flat_map(|p| p.files.iter_mut()) {
                    if f.kind == FileKind::Pipe as i32 && f.pipe_ino == ino {
                        f.describe = format!("pipe:[{ino}] (other end outside the tree)");
                    }
                }
                tracing::info!(pid, fd, ino, read_end, "pipe with its other end outside the tree: restored with that end closed unless --inherit-fd gives it");
            }
            procs[pi].pipes.push(pipe);
            continue;
        }
        for &(pi, _, fd) in readers.iter().chain(writers.iter()) {
            let p = &mut procs[pi];
            let idx = p.fds.iter().find(|f| f.fd == fd).map(|f| f.file as usize);
            if let Some(i) = idx {
                p.files[i].kind = FileKind::Inherited as i32;
                let sid = p.files[i].shared_id;
                if sid != 0 {
                    for q in procs.iter_mut() {
                        for f in q.files.iter_mut().filter(|f| f.shared_id == sid) {
                            f.kind = FileKind::Inherited as i32;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Files opened for the restored process, at fd numbers at or above a base that collides with
/// nothing the child needs.
pub struct Prepared {
    /// Number of each `Process.files` entry's fd in ferry (and so in the forked child).
    pub numbers: Vec<i32>,
    pub owned: Vec<OwnedFd>,
}

fn cstr(path: &str) -> Result<CString, Error> {
    CString::new(path).map_err(|_| Error::Invalid { object: path.into(), what: "path has a NUL byte".into() })
}

/// What the whole image's processes share, opened once before any process's files: pipes,
/// unix sockets, terminals.
pub struct Objects<'a> {
    pub pipes: &'a pipes::Prepared,
    pub unix: &'a unix::Prepared,
    pub ttys: &'a tty::Restore,
    /// `--inherit-fd`: descriptions a supervisor gives back (state/external.rs).
    pub inherit: &'a external::Inherit,
}

/// Open every file description in ferry (`base` = lowest number the copies may take).
pub fn prepare(
    p: &Process,
    img: &ferry_image::ImageReader,
    objects: &Objects<'_>,
    base: i32,
    shared: &mut HashMap<u32, i32>,
    shmem: &mut HashMap<u64, (i32, std::fs::File)>,
    ghosts: &mut ghost::Ghosts,
) -> Result<Prepared, Error> {
    let (pipes, unix, ttys) = (objects.pipes, objects.unix, objects.ttys);
    let pid = p.pid;
    let mut out = Prepared { numbers: Vec::new(), owned: Vec::new() };
    // Connections restored with TCP_REPAIR go last: a listener binds its port normally before a
    // connection that shares it binds with the force-reuse of repair mode.
    let repaired = |f: &File| f.inet.as_ref().is_some_and(inet::repaired);
    let order: Vec<usize> = (0..p.files.len())
        .filter(|&i| !repaired(&p.files[i]))
        .chain((0..p.files.len()).filter(|&i| repaired(&p.files[i])))
        .collect();
    let mut numbers = vec![-1; p.files.len()];
    for i in order {
        let f = &p.files[i];
        // A description shared with a process prepared before: the very same fd.
        if let Some(n) = (f.shared_id != 0).then(|| shared.get(&f.shared_id).copied()).flatten() {
            numbers[i] = n;
            continue;
        }
        let fd_of = || p.fds.iter().find(|d| d.file as usize == i).map(|d| d.fd).unwrap_or(-1);
        let obj = || format!("pid {pid} fd {}: {}", fd_of(), f.describe);
        if let Some((key, given)) = objects.inherit.lookup(f) {
            // ferry's own fd `given`, from the supervisor, in place of the image's description.
            let n = ferry_sys::raw::dup_number_above(given, base)
                .ctx(|| format!("{}: cannot take fd {given} (--inherit-fd fd[{given}]:{key})", obj()))?;
            tracing::info!(pid, fd = fd_of(), key, given, "file restored from an inherited fd");
            if f.shared_id != 0 {
                shared.insert(f.shared_id, n.as_raw_fd());
            }
            numbers[i] = n.as_raw_fd();
            out.owned.push(n);
            continue;
        }
        let flags = (f.flags as i32) & !(libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC) | libc::O_CLOEXEC;
        let fd: OwnedFd = match FileKind::try_from(f.kind).unwrap_or(FileKind::Invalid) {
            FileKind::Regular if !f.ghost.is_empty() => {
                ghosts.open(img, &f.ghost, &f.path, f.mode, flags, false).map_err(|e| match e {
                    Error::Sys { source, .. } => Error::Sys { object: obj(), source },
                    other => other,
                })?
            }
            FileKind::CharDevice if !f.ghost.is_empty() => {
                ghosts.open(img, &f.ghost, &f.path, f.mode, flags, false).map_err(|e| match e {
                    Error::Sys { source, .. } => Error::Sys { object: obj(), source },
                    other => other,
                })?
            }
            FileKind::Directory if f.ghost_inode.is_some() => {
                let g = f.ghost_inode.as_ref().ok_or_else(|| Error::Invalid { object: obj(), what: "lost".into() })?;
                ghosts.nodes.open(&f.path, g, flags)?
            }
            FileKind::Regular | FileKind::Directory | FileKind::CharDevice => {
                let fd = open_raw(&cstr(&f.path)?, flags, 0).ctx(|| format!("{}: cannot open {}", obj(), f.path))?;
                if f.kind == FileKind::Regular as i32 {
                    let md = ferry_sys::process::fstat(std::os::fd::AsFd::as_fd(&fd)).ctx(obj)?;
                    if (md.st_size as u64) < f.pos && f.flags & libc::O_APPEND as u32 == 0 {
                        tracing::warn!(file = %f.path, "file is shorter than the saved offset");
                    }
                }
                fd
            }
            FileKind::Tun => tun::open(f, flags, &obj)?,
            FileKind::Pipe => pipes
                .open(f.pipe_ino, f.flags as i32)
                .ctx(obj)?
                .ok_or_else(|| Error::Invalid { object: obj(), what: "pipe missing from image".into() })?,
            FileKind::Inherited if !f.external_key.is_empty() => {
                return Err(Error::Invalid {
                    object: obj(),
                    what: format!(
                        "belongs to a peer outside the image; give it back with restore --inherit-fd fd[N]:{}",
                        f.external_key
                    ),
                })
            }
            FileKind::Inherited => {
                use std::os::fd::AsFd;
                let n = fd_of();
                let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
                let own = match n {
                    0 => stdin.as_fd(),
                    1 => stdout.as_fd(),
                    2 => stderr.as_fd(),
                    _ => return Err(Error::Invalid { object: obj(), what: "only fds 0-2 can be inherited".into() }),
                };
                let dup = ferry_sys::raw::dup_above(own, base).map_err(|_| Error::Invalid {
                    object: obj(),
                    what: format!("was inherited from outside the image, and ferry has no fd {n} to hand over"),
                })?;
                if f.shared_id != 0 {
                    shared.insert(f.shared_id, dup.as_raw_fd());
                }
                numbers[i] = dup.as_raw_fd();
                out.owned.push(dup);
                continue;
            }
            FileKind::Memfd => {
                if let std::collections::hash_map::Entry::Vacant(e) = shmem.entry(f.ino) {
                    let name = CString::new(f.path.as_bytes()).unwrap_or_default();
                    let mfd = memfd_seals::create(&name).ctx(|| format!("{}: cannot create the memfd", obj()))?;
                    let n = ferry_sys::raw::dup_above(std::os::fd::AsFd::as_fd(&mfd), base).ctx(obj)?;
                    let file = std::fs::File::from(mfd);
                    ghost::fill(&file, img, &f.ghost, ghosts.record(&f.ghost))?;
                    e.insert((n.as_raw_fd(), file));
                    out.owned.push(n);
                }
                // A new description of the same memory object, with this fd's flags and offset.
                let (_, file) =
                    shmem.get(&f.ino).ok_or_else(|| Error::Invalid { object: obj(), what: "lost memfd".into() })?;
                let path = format!("/proc/self/fd/{}", file.as_raw_fd());
                let fd = open_raw(&cstr(&path)?, flags, 0).ctx(|| format!("{}: cannot reopen the memfd", obj()))?;
                ferry_sys::raw::seek_to(fd.as_raw_fd(), f.pos).ctx(obj)?;
                fd
            }
            FileKind::PtyMaster | FileKind::PtySlave => tty::open(&obj(), f, ttys)?,
            FileKind::UnixSocket => {
                let s = f
                    .unix
                    .as_ref()
                    .and_then(|u| unix.get(&u.ino))
                    .ok_or_else(|| Error::Invalid { object: obj(), what: "socket missing from the image".into() })?;
                let fd = s.try_clone().ctx(obj)?;
                ferry_sys::process::set_status_flags(std::os::fd::AsFd::as_fd(&fd), f.flags as i32).ctx(obj)?;
                fd
            }
            FileKind::Eventfd => eventfd::prepare(&obj(), f)?,
            FileKind::Timerfd => timerfd::prepare(&obj(), f)?,
            FileKind::Signalfd => signalfd::prepare(&obj(), f)?,
            FileKind::InetSocket => inet::prepare(&obj(), f)?,
            FileKind::Fifo => match &f.ghost_inode {
                // A removed FIFO: through the one recreated (and removed again) for it.
                Some(g) => fifo::prepare(&obj(), f, flags, &ghosts.nodes.proc_path(&f.path, g)?)?,
                None => fifo::prepare(&obj(), f, flags, &f.path)?,
            },
            FileKind::Inotify => inotify::prepare(&obj(), f)?,
            FileKind::Fanotify => fanotify::prepare(&obj(), f)?,
            FileKind::PacketSocket => packet::prepare(&obj(), f)?,
            FileKind::NetlinkSocket => netlink::prepare(&obj(), f)?,
            FileKind::Pidfd => pidfd::prepare(&obj(), f)?,
            FileKind::Epoll => ferry_sys::process::epoll_create(libc::EPOLL_CLOEXEC)
                .ctx(|| format!("{}: cannot create the epoll instance", obj()))?,
            FileKind::Invalid => return Err(Error::Invalid { object: obj(), what: "unknown file kind".into() }),
        };
        if matches!(FileKind::try_from(f.kind), Ok(FileKind::Regular) | Ok(FileKind::Directory)) {
            ferry_sys::raw::seek_to(fd.as_raw_fd(), f.pos).ctx(|| format!("{}: cannot seek to {}", obj(), f.pos))?;
        }
        let n = ferry_sys::raw::dup_above(std::os::fd::AsFd::as_fd(&fd), base).ctx(obj)?;
        drop(fd);
        if f.shared_id != 0 {
            shared.insert(f.shared_id, n.as_raw_fd());
        }
        numbers[i] = n.as_raw_fd();
        out.owned.push(n);
    }
    out.numbers = numbers;
    Ok(out)
}

/// In the child: put every fd at its number with its FD_CLOEXEC flag, and close every other
/// fd below `base`.
pub fn apply_in_child(p: &Process, prepared_numbers: &[i32], base: i32) -> Result<(), String> {
    let mut wanted = vec![false; base as usize];
    for f in &p.fds {
        let src = prepared_numbers[f.file as usize];
        ferry_sys::raw::dup3_numbers(src, f.fd, f.cloexec).map_err(|e| format!("fd {}: dup3: {e}", f.fd))?;
        if (f.fd as usize) < wanted.len() {
            wanted[f.fd as usize] = true;
        }
    }
    let mut fd = 0;
    while fd < base {
        if wanted[fd as usize] {
            fd += 1;
            continue;
        }
        let start = fd;
        while fd < base && !wanted[fd as usize] {
            fd += 1;
        }
        ferry_sys::raw::close_range(start as u32, (fd - 1) as u32).map_err(|e| format!("close_range: {e}"))?;
    }
    Ok(())
}

/// Files deleted while open (and memfds, and deleted device nodes): their data and attributes
/// travel in the image, and the file is put back under its name (or a temporary one beside it),
/// opened, and unlinked again.
///
/// Dump (`save`): the data extents are found with SEEK_DATA/SEEK_HOLE and only their bytes are
/// stored, one after the other, in the content file (`ghost-DEV-INO.img`, `memfd-INO.img`);
/// the extents, the size, mode, owner, atime and mtime (and a device node's rdev) go into a
/// `GhostFile` record of the first process that holds the file. The file is read with
/// O_NOATIME, so the dump does not change its atime.
///
/// Restore (`Ghosts::open`, `fill`): the data is written back at its offsets and the file
/// truncated to its size, so holes stay holes and the size is exact; then fchown, fchmod (the
/// umask does not apply) and futimens, in that order (chown clears setuid/setgid; writes move
/// the times). A device node is recreated with mknod. A memfd's times are set once every
/// process's shared pages are in it (`memfd_attrs`).
pub mod ghost {
    use super::*;
    use ferry_image::{Extent, GhostFile};
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicU64, Ordering};

    static LIMIT: AtomicU64 = AtomicU64::new(u64::MAX);

    /// The most data a deleted file may carry into the image in the dumps that follow (CRIU's
    /// `--ghost-limit`); a larger one fails the dump, naming it. Unlimited by default (CRIU's
    /// default is 1 MiB). Memfds are not deleted files: their content always travels.
    pub fn set_limit(bytes: u64) {
        LIMIT.store(bytes, Ordering::Relaxed);
    }

    /// The image file holding the content of deleted file `ino` of device `dev`.
    pub fn name(dev: u64, ino: u64) -> String {
        format!("ghost-{dev:x}-{ino}.img")
    }

    fn ns(sec: i64, nsec: i64) -> i64 {
        sec * 1_000_000_000 + nsec
    }

    /// The attributes `fstat` reports of `md`, for a `GhostFile` named `name`.
    fn attrs(name: &str, md: &std::fs::Metadata) -> GhostFile {
        let special = md.file_type().is_char_device() || md.file_type().is_block_device();
        GhostFile {
            name: name.to_string(),
            size: md.size(),
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
            atime_ns: ns(md.atime(), md.atime_nsec()),
            mtime_ns: ns(md.mtime(), md.mtime_nsec()),
            rdev: if special { md.rdev() } else { 0 },
            data: Vec::new(),
            attrs_only: false,
        }
    }

    /// Save file `path` (a /proc fd or map_files link; metadata `md`) as `name`: its data once
    /// per image, its attributes into `ghosts` (the record of the process being dumped).
    pub fn save(
        img: &mut ImageWriter,
        ghosts: &mut Vec<GhostFile>,
        name: &str,
        path: &std::path::Path,
        md: &std::fs::Metadata,
    ) -> Result<(), Error> {
        if img.has_file(name) {
            return Ok(());
        }
        let mut g = attrs(name, md);
        let obj = || format!("cannot read {}", path.display());
        let mut out = img.stream(name)?;
        if md.file_type().is_file() {
            let p = cstr(&path.to_string_lossy())?;
            let f = match open_raw(&p, libc::O_RDONLY | libc::O_NOATIME | libc::O_CLOEXEC, 0) {
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => open_raw(&p, libc::O_RDONLY | libc::O_CLOEXEC, 0),
                r => r,
            }
            .ctx(obj)?;
            g.data = extents(f.as_fd(), md.size()).ctx(obj)?;
            let bytes: u64 = g.data.iter().map(|e| e.len).sum();
            let limit = LIMIT.load(Ordering::Relaxed);
            if name.starts_with("ghost-") && bytes > limit {
                let what =
                    std::fs::read_link(path).map_or_else(|_| path.display().to_string(), |l| l.display().to_string());
                return Err(Error::Invalid {
                    object: format!("{} ({what})", path.display()),
                    what: format!("a deleted file with {bytes} bytes of data, over --ghost-limit {limit}"),
                });
            }
            copy_out(&std::fs::File::from(f), &g.data, &mut out).ctx(obj)?;
        }
        img.finish_stream(out)?;
        ghosts.push(g);
        Ok(())
    }

    /// Append the bytes of `f`'s `extents` to `out`, in order, a MiB at a time (shared with
    /// tmpfs content, state/mounts.rs).
    pub(crate) fn copy_out(
        f: &std::fs::File,
        extents: &[Extent],
        out: &mut ferry_image::StreamFile,
    ) -> std::io::Result<()> {
        let mut buf = vec![0u8; (extents.iter().map(|e| e.len).max().unwrap_or(0)).min(1 << 20) as usize];
        for e in extents {
            let mut done = 0;
            while done < e.len {
                let n = ((e.len - done) as usize).min(buf.len());
                f.read_exact_at(&mut buf[..n], e.offset + done)?;
                out.write_all(&buf[..n])?;
                done += n as u64;
            }
        }
        Ok(())
    }

    /// Write into `f` (fresh and empty) the next bytes of `src` at `extents`' offsets, a MiB at
    /// a time, then make it `size` long: holes stay holes. The inverse of [`copy_out`]; an
    /// error says what is wrong (extents out of order, `src` too short, a failed write).
    pub(crate) fn write_extents(
        src: &mut impl std::io::Read,
        extents: &[Extent],
        size: u64,
        f: &std::fs::File,
    ) -> Result<(), String> {
        let mut buf = vec![0u8; (extents.iter().map(|e| e.len).max().unwrap_or(0)).min(1 << 20) as usize];
        let mut end = 0u64;
        for e in extents {
            let stop = e.offset.checked_add(e.len).ok_or("extent overflows")?;
            if e.offset < end || stop > size {
                return Err("extents out of order or past the end of the file".into());
            }
            let mut done = 0;
            while done < e.len {
                let n = ((e.len - done) as usize).min(buf.len());
                src.read_exact(&mut buf[..n]).map_err(|x| match x.kind() {
                    std::io::ErrorKind::UnexpectedEof => "shorter than its extents".to_string(),
                    _ => format!("cannot read: {x}"),
                })?;
                f.write_all_at(&buf[..n], e.offset + done).map_err(|x| format!("cannot write: {x}"))?;
                done += n as u64;
            }
            end = stop;
        }
        f.set_len(size).map_err(|x| format!("cannot set its size: {x}"))
    }

    /// Record only the attributes of memfd `name` (its pages are in the page file).
    pub fn save_attrs(ghosts: &mut Vec<GhostFile>, name: &str, md: &std::fs::Metadata) {
        if !ghosts.iter().any(|g| g.name == name) {
            ghosts.push(GhostFile { attrs_only: true, ..attrs(name, md) });
        }
    }

    /// The data extents of `fd` (size `size`): SEEK_DATA/SEEK_HOLE, or the whole file where the
    /// file system does not report holes.
    pub(crate) fn extents(fd: std::os::fd::BorrowedFd<'_>, size: u64) -> std::io::Result<Vec<Extent>> {
        use ferry_sys::objects::{seek_data, seek_hole};
        let mut out = Vec::new();
        let mut off = 0;
        while off < size {
            let start = match seek_data(fd, off) {
                Ok(Some(d)) => d.min(size),
                Ok(None) => break,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)) => {
                    return Ok(vec![Extent { offset: 0, len: size }]);
                }
                Err(e) => return Err(e),
            };
            let end = seek_hole(fd, start)?.min(size);
            if end > start {
                out.push(Extent { offset: start, len: end - start });
            }
            off = end.max(start + 1);
        }
        Ok(out)
    }

    /// Every `GhostFile` of the image by name (an entry with the data layout wins over an
    /// attributes-only one).
    pub fn records(procs: &[Process]) -> HashMap<String, GhostFile> {
        let mut out: HashMap<String, GhostFile> = HashMap::new();
        for g in procs.iter().flat_map(|p| p.ghosts.iter()) {
            match out.get(&g.name) {
                Some(have) if !have.attrs_only || g.attrs_only => {}
                _ => {
                    out.insert(g.name.clone(), g.clone());
                }
            }
        }
        out
    }

    /// Write the content `name` into `f` (fresh and empty): the extents of `g` at their
    /// offsets, then the exact size; without a record (an older image) the content is the
    /// whole file.
    pub fn fill(
        f: &std::fs::File,
        img: &ferry_image::ImageReader,
        name: &str,
        g: Option<&GhostFile>,
    ) -> Result<(), Error> {
        // (Streamed: the image's upfront check read the file and its digests already.)
        let content = img.open_file(name)?;
        let size = content.metadata().ctx(|| format!("cannot read {name}"))?.len();
        let whole = [Extent { offset: 0, len: size }];
        let (extents, len) = match g.filter(|g| !g.attrs_only) {
            Some(g) => (&g.data[..], g.size),
            None => (&whole[..], size),
        };
        let bad = |what: String| Error::Invalid { object: name.to_string(), what };
        let mut src = &content;
        write_extents(&mut src, extents, len, f).map_err(bad)?;
        if std::io::Read::read(&mut src, &mut [0u8; 1]).map_err(|e| bad(format!("cannot read: {e}")))? != 0 {
            return Err(bad("longer than its extents".into()));
        }
        Ok(())
    }

    /// Put back owner, mode and times of the recreated file `fd` (in this order).
    pub fn set_attrs(fd: std::os::fd::BorrowedFd<'_>, g: &GhostFile, what: &str) -> Result<(), Error> {
        use ferry_sys::objects::{fchmod, fchown, futimens};
        fchown(fd, g.uid, g.gid).ctx(|| format!("{what}: cannot give it back to {}:{}", g.uid, g.gid))?;
        fchmod(fd, g.mode).ctx(|| format!("{what}: cannot chmod {:o}", g.mode & 0o7777))?;
        futimens(fd, g.atime_ns, g.mtime_ns).ctx(|| format!("{what}: cannot set its times"))
    }

    /// Mode, owner and times of every recreated memfd, once all its data is in.
    pub fn memfd_attrs(procs: &[Process], shmem: &HashMap<u64, (i32, std::fs::File)>) -> Result<(), Error> {
        let records = records(procs);
        for (ino, (_, f)) in shmem {
            if let Some(g) = records.get(&format!("memfd-{ino}.img")) {
                set_attrs(f.as_fd(), g, &format!("memfd {ino}"))?;
            }
        }
        Ok(())
    }

    /// The deleted files recreated so far in this restore, by ghost name: each is recreated
    /// once (then unlinked) and every fd or mapping of it reopens that one inode, so they still
    /// share it as they did.
    pub struct Ghosts {
        files: HashMap<String, OwnedFd>,
        records: HashMap<String, GhostFile>,
        /// Removed directories and FIFOs (and cwds), recreated once each.
        pub nodes: crate::state::ghost_node::Nodes,
    }

    impl Ghosts {
        pub fn new(procs: &[Process]) -> Ghosts {
            Ghosts { files: HashMap::new(), records: records(procs), nodes: Default::default() }
        }

        /// The record of content file `name`, if the image has one.
        pub fn record(&self, name: &str) -> Option<&GhostFile> {
            self.records.get(name)
        }

        /// An fd of the recreated file `name` (content from the image, at `path` or beside it,
        /// created with `mode` unless the image recorded its own), opened with `flags`;
        /// executable (some x bit) if `exec`.
        pub fn open(
            &mut self,
            img: &ferry_image::ImageReader,
            name: &str,
            path: &str,
            mode: u32,
            flags: i32,
            exec: bool,
        ) -> Result<OwnedFd, Error> {
            if !self.files.contains_key(name) {
                let mode = if exec { mode | 0o100 } else { mode };
                // Read-only: a writer would keep the file from becoming an exe (ETXTBSY).
                let g = self.records.get(name);
                let fd = recreate(img, name, path, mode, g, libc::O_RDONLY | libc::O_CLOEXEC)?;
                self.files.insert(name.to_string(), fd);
            }
            let keep = &self.files[name];
            if exec {
                let st =
                    ferry_sys::process::fstat(std::os::fd::AsFd::as_fd(keep)).ctx(|| format!("{path} (recreated)"))?;
                if st.st_mode & 0o111 == 0 {
                    std::fs::File::from(keep.try_clone().ctx(|| path.to_string())?)
                        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode((st.st_mode | 0o100) & 0o7777))
                        .ctx(|| format!("{path} (recreated): chmod"))?;
                }
            }
            let again = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(keep));
            open_raw(&cstr(&again)?, flags, 0).ctx(|| format!("cannot reopen the recreated {path}"))
        }
    }

    /// Create the file (a device node if `g` says so) at `path` or a hidden name beside it.
    fn create_at(tmp: &std::path::Path, mode: u32, g: Option<&GhostFile>) -> std::io::Result<()> {
        match g.filter(|g| g.rdev != 0) {
            Some(g) => ferry_sys::objects::mknod(
                &CString::new(tmp.as_os_str().as_encoded_bytes()).map_err(|_| std::io::ErrorKind::InvalidInput)?,
                (g.mode & libc::S_IFMT) | 0o600,
                g.rdev,
            ),
            None => {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new().write(true).create_new(true).mode(mode & 0o7777).open(tmp).map(drop)
            }
        }
    }

    fn recreate(
        img: &ferry_image::ImageReader,
        name: &str,
        path: &str,
        mode: u32,
        g: Option<&GhostFile>,
        flags: i32,
    ) -> Result<OwnedFd, Error> {
        let orig = std::path::Path::new(path);
        let parent = orig.parent().filter(|d| d.is_dir()).unwrap_or(std::path::Path::new("/tmp"));
        let base = orig.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        // Prefer the original name (so /proc/PID/fd shows the same "path (deleted)"); if a new
        // file took that name meanwhile, use a hidden temporary name beside it.
        let candidates = [orig.to_path_buf(), parent.join(format!(".{base}.ferry-ghost-{}", std::process::id()))];
        let mut created = None;
        for tmp in candidates {
            match create_at(&tmp, mode, g) {
                Ok(()) => {
                    created = Some(tmp);
                    break;
                }
                // (Its directory may be gone too: then the hidden name in /tmp.)
                Err(e) if matches!(e.kind(), std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::NotFound) => {
                    continue
                }
                Err(e) => return Err(Error::Sys { object: format!("cannot create {}", tmp.display()), source: e }),
            }
        }
        let tmp = created.ok_or_else(|| Error::Invalid {
            object: path.into(),
            what: "cannot find a free name to recreate the deleted file".into(),
        })?;
        let r = (|| {
            let tmp_c = cstr(&tmp.to_string_lossy())?;
            if g.is_some_and(|g| g.rdev != 0) {
                let fd = open_raw(&tmp_c, flags, 0).ctx(|| format!("cannot open {}", tmp.display()))?;
                if let Some(g) = g {
                    set_attrs(fd.as_fd(), g, &tmp.display().to_string())?;
                }
                return Ok(fd);
            }
            let w = open_raw(&tmp_c, libc::O_WRONLY | libc::O_CLOEXEC, 0)
                .ctx(|| format!("cannot open {}", tmp.display()))?;
            let w = std::fs::File::from(w);
            fill(&w, img, name, g)?;
            match g {
                Some(g) => set_attrs(w.as_fd(), g, &tmp.display().to_string())?,
                // (Older images: the mode it was opened with, whatever the umask.)
                None => {
                    ferry_sys::objects::fchmod(w.as_fd(), mode).ctx(|| format!("cannot chmod {}", tmp.display()))?
                }
            }
            drop(w);
            open_raw(&tmp_c, flags, 0).ctx(|| format!("cannot open {}", tmp.display()))
        })();
        let _ = std::fs::remove_file(&tmp);
        r
    }
}
