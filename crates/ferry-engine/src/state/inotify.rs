//! inotify: every watch with its descriptor number (wd) and event mask, the watched file found
//! again by path.
//!
//! Dump: fdinfo lists each watch as `inotify wd:N ino:I sdev:D mask:M ... fhandle-bytes:B
//! fhandle-type:T f_handle:HEX`. The watched inode is opened with `open_by_handle_at` (the
//! mount fd is the mount point of a mount of the same device in the process's mountinfo), and
//! its path is the `/proc/self/fd` link of that fd, checked against the inode and device.
//! Queued events cannot be read without consuming them, so an instance with unread events
//! (FIONREAD on a `pidfd_getfd` copy) is refused.
//!
//! Restore (in ferry, before the fork): `inotify_init1`, then the watches in wd order. The
//! kernel hands out wds cyclically (`idr_alloc_cyclic`: each new watch gets the number after
//! the last one given, even if that one was removed), so a watch that comes back with a smaller
//! wd than wanted is removed and added again until the numbers meet. Removing a watch queues
//! an IN_IGNORED event; those are read away at the end, so the restored instance starts with
//! an empty queue as the dumped one had.

use crate::error::{Ctx, Error};
use crate::procfs;
use ferry_image::{File, InotifyWatch};
use ferry_sys::objects::{fionread, inotify_add_watch, inotify_init, inotify_rm_watch, open_by_handle};
use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

/// One parsed `inotify wd:` line.
#[derive(Debug, PartialEq, Eq)]
struct Line {
    wd: i32,
    ino: u64,
    sdev: u64,
    mask: u32,
    handle_type: i32,
    handle: Vec<u8>,
}

fn parse_line(v: &str) -> Option<Line> {
    let mut it = v.split_whitespace();
    let wd = it.next()?.parse().ok()?;
    let mut l = Line { wd, ino: 0, sdev: 0, mask: 0, handle_type: 0, handle: Vec::new() };
    let mut bytes = None;
    for tok in it {
        let (k, val) = tok.split_once(':')?;
        match k {
            "ino" => l.ino = u64::from_str_radix(val, 16).ok()?,
            "sdev" => l.sdev = u64::from_str_radix(val, 16).ok()?,
            "mask" => l.mask = u32::from_str_radix(val, 16).ok()?,
            "fhandle-bytes" => bytes = Some(usize::from_str_radix(val, 16).ok()?),
            "fhandle-type" => l.handle_type = i32::from_str_radix(val, 16).ok()?,
            "f_handle" => {
                l.handle = (0..val.len() / 2)
                    .map(|i| u8::from_str_radix(&val[2 * i..2 * i + 2], 16))
                    .collect::<Result<_, _>>()
                    .ok()?
            }
            _ => {}
        }
    }
    if bytes? != l.handle.len() {
        return None;
    }
    Some(l)
}

/// Open the mount point of a mount of device `major:minor` seen by `pid`.
pub(crate) fn mount_fd(pid: i32, major: u32, minor: u32) -> Result<Option<std::fs::File>, Error> {
    let text = procfs::read_string(pid, "mountinfo")?;
    let mounts = procfs::parse(pid, "mountinfo", ferry_proc::parse_mountinfo(&text))?;
    for m in mounts.iter().filter(|m| (m.dev_major, m.dev_minor) == (major, minor)) {
        if let Ok(f) = std::fs::File::open(&m.mount_point) {
            return Ok(Some(f));
        }
    }
    Ok(None)
}

/// The path of inode `ino` on device `sdev` (the kernel's dev_t, as fdinfo prints it) seen by
/// `pid`, from its file handle (fdinfo's `fhandle-type`, `f_handle`); `Err` says why not, for
/// an "is not supported" error (inotify watches and fanotify inode marks).
pub(crate) fn path_of(pid: i32, sdev: u64, ino: u64, handle_type: i32, handle: &[u8]) -> Result<String, String> {
    let (major, minor) = ((sdev >> 20) as u32, (sdev & 0xfffff) as u32);
    let what = format!("(inode {ino} on device {major}:{minor})");
    if handle.is_empty() {
        return Err(format!("{what}: the file system gives no file handle"));
    }
    let mnt = mount_fd(pid, major, minor)
        .map_err(|e| format!("{what}: {e}"))?
        .ok_or_else(|| format!("{what}: no mount of that device is visible"))?;
    let file = open_by_handle(mnt.as_fd(), handle_type, handle, libc::O_PATH | libc::O_CLOEXEC)
        .map_err(|e| format!("{what}: cannot open it by handle: {e}"))?;
    let path = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| format!("{what}: {e}"))?
        .to_string_lossy()
        .into_owned();
    let same = std::fs::symlink_metadata(&path)
        .map(|md| md.ino() == ino && libc::major(md.dev()) == major && libc::minor(md.dev()) == minor)
        .unwrap_or(false);
    if !same {
        return Err(format!("{what}: its path {path} cannot be found (deleted?)"));
    }
    Ok(path)
}

/// Fill `f` from the fdinfo lines of an inotify instance (fd `fd` of `pid`).
pub fn collect(pid: i32, fd: i32, info: &ferry_proc::FdInfo, f: &mut File) -> Result<(), Error> {
    let unsupported = |what: String| Error::Unsupported { pid, what: format!("fd {fd}: inotify {what}") };
    let pidfd = ferry_sys::process::pidfd_open(pid).ctx(|| format!("pid {pid}: pidfd_open"))?;
    let copy = ferry_sys::process::pidfd_getfd(pidfd.as_fd(), fd).ctx(|| format!("pid {pid} fd {fd}: pidfd_getfd"))?;
    let queued = fionread(copy.as_fd()).ctx(|| format!("pid {pid} fd {fd}: FIONREAD"))?;
    if queued > 0 {
        return Err(unsupported(format!("with {queued} bytes of unread events (queued events cannot be saved)")));
    }
    for v in info.all("inotify wd") {
        let l = parse_line(v).ok_or_else(|| Error::Invalid {
            object: format!("/proc/{pid}/fdinfo/{fd}"),
            what: format!("malformed inotify line: {v}"),
        })?;
        let watch = format!("watch {}", l.wd);
        let path = path_of(pid, l.sdev, l.ino, l.handle_type, &l.handle)
            .map_err(|what| unsupported(format!("{watch} {what}")))?;
        f.inotify_watches.push(InotifyWatch { wd: l.wd, mask: l.mask, path, ino: l.ino });
    }
    f.inotify_watches.sort_by_key(|w| w.wd);
    Ok(())
}

/// How many add/remove rounds restore spends to reach a wanted wd before giving up.
const MAX_WD_ROUNDS: i64 = 1 << 20;

/// Create the inotify instance in ferry with every watch at its old wd.
pub fn prepare(obj: &str, f: &File) -> Result<OwnedFd, Error> {
    let fd = inotify_init(libc::IN_NONBLOCK | libc::IN_CLOEXEC).ctx(|| format!("{obj}: inotify_init1"))?;
    let mut drain = std::fs::File::from(fd.try_clone().ctx(|| obj.to_string())?);
    let mut buf = vec![0u8; 64 * 1024];
    let mut empty_queue = |drain: &mut std::fs::File| -> Result<(), Error> {
        loop {
            match drain.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(Error::Sys { object: format!("{obj}: cannot read inotify events"), source: e }),
            }
        }
    };
    let mut rounds = 0i64;
    for w in &f.inotify_watches {
        let path = CString::new(w.path.as_bytes())
            .map_err(|_| Error::Invalid { object: obj.into(), what: "path has a NUL byte".into() })?;
        loop {
            let got = inotify_add_watch(fd.as_fd(), &path, w.mask | libc::IN_DONT_FOLLOW)
                .ctx(|| format!("{obj}: cannot watch {} again", w.path))?;
            if got == w.wd {
                break;
            }
            if got > w.wd || rounds > MAX_WD_ROUNDS {
                return Err(Error::Invalid {
                    object: obj.into(),
                    what: format!(
                        "cannot get inotify watch descriptor {} for {} (the kernel gave {got})",
                        w.wd, w.path
                    ),
                });
            }
            inotify_rm_watch(fd.as_fd(), got).ctx(|| format!("{obj}: inotify_rm_watch"))?;
            rounds += 1;
            if rounds % 4096 == 0 {
                empty_queue(&mut drain)?;
            }
        }
    }
    empty_queue(&mut drain)?;
    ferry_sys::process::set_status_flags(fd.as_fd(), f.flags as i32 & libc::O_NONBLOCK).ctx(|| obj.to_string())?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_watch_line() {
        let l = super::parse_line(
            "3 ino:3c4a7 sdev:fe00000 mask:100 ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:a7c4030000000000",
        )
        .expect("parses");
        assert_eq!((l.wd, l.ino, l.sdev, l.mask, l.handle_type), (3, 0x3c4a7, 0xfe00000, 0x100, 1));
        assert_eq!(l.handle, vec![0xa7, 0xc4, 0x03, 0, 0, 0, 0, 0]);
    }
}
