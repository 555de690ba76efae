//! Directories and FIFOs removed while in use: a cwd or an open directory fd whose directory
//! was rmdir'ed, an open FIFO whose node was unlinked.
//!
//! Dump: the fd's (or cwd's) /proc link reads "PATH (deleted)" and `stat` through it shows
//! `st_nlink` 0; its identity, mode and owner are recorded (`GhostInode`). A FIFO's unread
//! bytes are read like any FIFO's (state/fifo.rs), through /proc/PID/fd/N.
//!
//! Restore, in ferry before the fork: the node is created again at its old path (or, if that
//! name is taken or its parent is gone too, at a hidden name beside it or in /tmp), given its
//! mode and owner, opened once (a directory `O_PATH`, a FIFO `O_RDWR|O_NONBLOCK`, which never
//! waits for a peer) and removed again. Every description of it (and the cwd) is then opened
//! through /proc/self/fd/N of that one fd, so they share the new inode as they shared the old
//! one. A removed directory reports `st_nlink` 0 and lists nothing; a removed FIFO still works
//! as a pipe between whoever holds it.

use crate::error::{Ctx, Error};
use ferry_image::GhostInode;
use ferry_sys::process::open_raw;
use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// If `link` (a /proc/PID/fd/N or cwd link target, stat'ed through the link as `md`) names a
/// removed directory or FIFO: its old path and record.
pub fn collect(link: &str, md: &std::fs::Metadata) -> Option<(String, GhostInode)> {
    let path = link.strip_suffix(" (deleted)")?;
    let ft = md.file_type();
    if md.nlink() != 0 || !(ft.is_dir() || std::os::unix::fs::FileTypeExt::is_fifo(&ft)) {
        return None;
    }
    Some((path.to_string(), GhostInode { dev: md.dev(), ino: md.ino(), mode: md.mode(), uid: md.uid(), gid: md.gid() }))
}

/// The removed nodes recreated so far in this restore, by their identity at dump time.
#[derive(Default)]
pub struct Nodes {
    held: HashMap<(u64, u64), OwnedFd>,
}

impl Nodes {
    /// A path that opens the recreated node `g` (old path `path`): /proc/self/fd/N of ferry's
    /// own fd of it, valid while `self` lives.
    pub fn proc_path(&mut self, path: &str, g: &GhostInode) -> Result<String, Error> {
        let key = (g.dev, g.ino);
        if let std::collections::hash_map::Entry::Vacant(e) = self.held.entry(key) {
            let fd = recreate(path, g)?;
            e.insert(fd);
        }
        Ok(format!("/proc/self/fd/{}", self.held[&key].as_raw_fd()))
    }

    /// A new description, opened with `flags`, of the recreated node `g` (old path `path`).
    pub fn open(&mut self, path: &str, g: &GhostInode, flags: i32) -> Result<OwnedFd, Error> {
        let again = self.proc_path(path, g)?;
        let c = CString::new(again).map_err(|_| Error::Invalid { object: path.into(), what: "bad path".into() })?;
        open_raw(&c, flags | libc::O_CLOEXEC, 0).ctx(|| format!("cannot reopen the recreated {path} (removed)"))
    }
}

fn is_dir(g: &GhostInode) -> bool {
    g.mode & libc::S_IFMT == libc::S_IFDIR
}

fn create_at(at: &Path, g: &GhostInode) -> std::io::Result<()> {
    if is_dir(g) {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(0o700).create(at)
    } else {
        let c = CString::new(at.as_os_str().as_encoded_bytes()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        ferry_sys::objects::mknod(&c, libc::S_IFIFO | 0o600, 0)
    }
}

/// Create the node, open it (held), set its mode and owner, and remove it.
fn recreate(path: &str, g: &GhostInode) -> Result<OwnedFd, Error> {
    let kind = if is_dir(g) { "directory" } else { "FIFO" };
    if !is_dir(g) && g.mode & libc::S_IFMT != libc::S_IFIFO {
        return Err(Error::Invalid { object: path.into(), what: format!("a removed node of mode {:o}", g.mode) });
    }
    let orig = Path::new(path);
    let base = orig.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "node".into());
    let hidden = format!(".{base}.ferry-ghost-{}-{}", std::process::id(), g.ino);
    let mut candidates: Vec<PathBuf> = vec![orig.to_path_buf()];
    if let Some(parent) = orig.parent() {
        candidates.push(parent.join(&hidden));
    }
    candidates.push(Path::new("/tmp").join(&hidden));
    let mut created = None;
    for at in candidates {
        match create_at(&at, g) {
            Ok(()) => {
                created = Some(at);
                break;
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::NotFound) => continue,
            Err(e) => {
                return Err(Error::Sys { object: format!("cannot create the {kind} {}", at.display()), source: e })
            }
        }
    }
    let at = created.ok_or_else(|| Error::Invalid {
        object: path.into(),
        what: format!("cannot find a free name to recreate the removed {kind}"),
    })?;
    let r = (|| -> Result<OwnedFd, Error> {
        let c = CString::new(at.as_os_str().as_encoded_bytes())
            .map_err(|_| Error::Invalid { object: path.into(), what: "path has a NUL byte".into() })?;
        let flags = if is_dir(g) { libc::O_RDONLY | libc::O_DIRECTORY } else { libc::O_RDWR | libc::O_NONBLOCK };
        let fd = open_raw(&c, flags | libc::O_CLOEXEC, 0).ctx(|| format!("cannot open {}", at.display()))?;
        ferry_sys::objects::fchown(fd.as_fd(), g.uid, g.gid).ctx(|| format!("cannot chown {}", at.display()))?;
        ferry_sys::objects::fchmod(fd.as_fd(), g.mode & 0o7777).ctx(|| format!("cannot chmod {}", at.display()))?;
        Ok(fd)
    })();
    let removed = if is_dir(g) { std::fs::remove_dir(&at) } else { std::fs::remove_file(&at) };
    let fd = r?;
    removed.ctx(|| format!("cannot remove the recreated {kind} {}", at.display()))?;
    Ok(fd)
}
