//! fanotify groups (fanotify(7)): their init flags and every mark (inode, mount, filesystem),
//! with its mask, ignored mask and flags.
//!
//! Dump: fdinfo says it all: `fanotify flags:F event-flags:E` (fanotify_init's two
//! arguments), then one line per mark: `fanotify ino:I sdev:D mflags:M mask:K ignored_mask:G
//! fhandle-bytes:.. fhandle-type:.. f_handle:..` for an inode (its path found from the handle,
//! as for inotify watches), `fanotify mnt_id:N ...` for a mount (its mount point in
//! mountinfo), `fanotify sdev:D ...` for a filesystem (the mount point of a mount of it).
//! Refused by name: unread events (FIONREAD on a `pidfd_getfd` copy: events cannot be put
//! back), and marks asking for permission events (FAN_*_PERM, FAN_PRE_ACCESS): the process
//! answers them, and an event waiting for its answer cannot be seen from outside nor moved.
//!
//! Restore (in ferry, before the fork): fanotify_init with the same flags, then each mark
//! with FAN_MARK_ADD (and FAN_MARK_EVICTABLE if it was), its ignored mask added apart (with
//! FAN_MARK_IGNORED_SURV_MODIFY, or as FAN_MARK_IGNORE, as fdinfo's mflags say).

use crate::error::{Ctx, Error};
use crate::procfs;
use ferry_image::{FanotifyGroup, FanotifyMark, File};
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};

const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_DONT_FOLLOW: u32 = 0x4;
const FAN_MARK_MOUNT: u32 = 0x10;
const FAN_MARK_IGNORED_MASK: u32 = 0x20;
const FAN_MARK_IGNORED_SURV_MODIFY: u32 = 0x40;
const FAN_MARK_FILESYSTEM: u32 = 0x100;
const FAN_MARK_EVICTABLE: u32 = 0x200;
const FAN_MARK_IGNORE: u32 = 0x400;
/// The mflags fdinfo may report that restore knows how to give back.
const KNOWN_MFLAGS: u32 = FAN_MARK_IGNORED_SURV_MODIFY | FAN_MARK_EVICTABLE | FAN_MARK_IGNORE;
/// FAN_OPEN_PERM, FAN_ACCESS_PERM, FAN_OPEN_EXEC_PERM, FAN_PRE_ACCESS.
const PERMISSION_EVENTS: u64 = 0x0001_0000 | 0x0002_0000 | 0x0004_0000 | 0x0010_0000;

const KIND_NAMES: [&str; 3] = ["inode", "mount", "filesystem"];

/// `key:HEX` fields of an fdinfo value.
fn field(v: &str, key: &str) -> Option<u64> {
    v.split_whitespace()
        .find_map(|t| t.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|x| u64::from_str_radix(x, 16).ok())
}

fn hex_bytes(v: &str) -> Option<Vec<u8>> {
    (0..v.len() / 2).map(|i| u8::from_str_radix(v.get(2 * i..2 * i + 2)?, 16).ok()).collect()
}

/// Fill `f` from the fdinfo of a fanotify group (fd `fd` of `pid`).
pub fn collect(pid: i32, fd: i32, info: &ferry_proc::FdInfo, f: &mut File) -> Result<(), Error> {
    let unsupported = |what: String| Error::Unsupported { pid, what: format!("fd {fd}: fanotify {what}") };
    let bad = |v: &str| Error::Invalid {
        object: format!("/proc/{pid}/fdinfo/{fd}"),
        what: format!("malformed fanotify line: {v}"),
    };
    let pidfd = ferry_sys::process::pidfd_open(pid).ctx(|| format!("pid {pid}: pidfd_open"))?;
    let copy = ferry_sys::process::pidfd_getfd(pidfd.as_fd(), fd).ctx(|| format!("pid {pid} fd {fd}: pidfd_getfd"))?;
    let queued = ferry_sys::objects::fionread(copy.as_fd()).ctx(|| format!("pid {pid} fd {fd}: FIONREAD"))?;
    if queued > 0 {
        return Err(unsupported(format!("with {queued} bytes of unread events (queued events cannot be saved)")));
    }
    let head = info.get("fanotify flags").ok_or_else(|| bad("no flags line"))?;
    let flags =
        head.split_whitespace().next().and_then(|x| u32::from_str_radix(x, 16).ok()).ok_or_else(|| bad(head))?;
    let event_flags = field(head, "event-flags").ok_or_else(|| bad(head))? as u32;
    let mut g = FanotifyGroup { flags, event_flags, marks: Vec::new() };
    let mounts = || -> Result<Vec<ferry_proc::MountInfo>, Error> {
        let text = procfs::read_string(pid, "mountinfo")?;
        procfs::parse(pid, "mountinfo", ferry_proc::parse_mountinfo(&text))
    };
    for (key, v) in info.raw.iter().filter(|(k, _)| k.starts_with("fanotify ") && k != "fanotify flags") {
        // The key holds the first field's name; its value opens `v`.
        let first = v.split_whitespace().next().and_then(|x| u64::from_str_radix(x, 16).ok()).ok_or_else(|| bad(v))?;
        let mut m = FanotifyMark {
            mflags: field(v, "mflags").ok_or_else(|| bad(v))? as u32,
            mask: field(v, "mask").ok_or_else(|| bad(v))?,
            ignored_mask: field(v, "ignored_mask").ok_or_else(|| bad(v))?,
            ..Default::default()
        };
        match key.as_str() {
            "fanotify ino" => {
                let sdev = field(v, "sdev").ok_or_else(|| bad(v))?;
                let handle_type = field(v, "fhandle-type").unwrap_or(0) as i32;
                let handle = v
                    .split_whitespace()
                    .find_map(|t| t.strip_prefix("f_handle:"))
                    .map(|h| hex_bytes(h).ok_or_else(|| bad(v)))
                    .transpose()?
                    .unwrap_or_default();
                m.kind = 0;
                m.path = crate::state::inotify::path_of(pid, sdev, first, handle_type, &handle)
                    .map_err(|what| unsupported(format!("inode mark {what}")))?;
            }
            "fanotify mnt_id" => {
                m.kind = 1;
                m.path = mounts()?
                    .into_iter()
                    .find(|x| u64::from(x.mnt_id) == first)
                    .map(|x| x.mount_point)
                    .ok_or_else(|| unsupported(format!("mount mark on mount {first}, which is not visible")))?;
            }
            "fanotify sdev" => {
                let (major, minor) = ((first >> 20) as u32, (first & 0xfffff) as u32);
                m.kind = 2;
                m.path = mounts()?
                    .into_iter()
                    .find(|x| (x.dev_major, x.dev_minor) == (major, minor))
                    .map(|x| x.mount_point)
                    .ok_or_else(|| {
                        unsupported(format!("filesystem mark on device {major}:{minor}, which has no mount visible"))
                    })?;
            }
            _ => return Err(unsupported(format!("mark of a kind ferry does not know: {key}:{v}"))),
        }
        let kind = KIND_NAMES[m.kind as usize];
        if (m.mask | m.ignored_mask) & PERMISSION_EVENTS != 0 {
            return Err(unsupported(format!(
                "{kind} mark on {} asks for permission events (mask {:#x}), which the process answers and ferry cannot carry",
                m.path, m.mask
            )));
        }
        if m.mflags & !KNOWN_MFLAGS != 0 {
            return Err(unsupported(format!(
                "{kind} mark on {} with mark flags {:#x} ferry does not know",
                m.path, m.mflags
            )));
        }
        g.marks.push(m);
    }
    // fdinfo lists the group's marks newest first (the kernel adds each at the head of its
    // list): restore adds them oldest first, so that the new group lists them alike.
    g.marks.reverse();
    f.describe = format!("anon_inode:[fanotify] ({} marks)", g.marks.len());
    f.fanotify = Some(g);
    Ok(())
}

/// Create the fanotify group in ferry with every mark.
pub fn prepare(obj: &str, f: &File) -> Result<OwnedFd, Error> {
    let g =
        f.fanotify.as_ref().ok_or_else(|| Error::Invalid { object: obj.into(), what: "no fanotify record".into() })?;
    // (The very flags, FAN_CLOEXEC or not, so fdinfo reads the same: ferry's copy is dup'ed with
    // FD_CLOEXEC and closed by `files::prepare`.)
    let fd = ferry_sys::fanotify::init(g.flags, g.event_flags)
        .ctx(|| format!("{obj}: fanotify_init({:#x}, {:#x})", g.flags, g.event_flags))?;
    for m in &g.marks {
        let path = CString::new(m.path.as_bytes())
            .map_err(|_| Error::Invalid { object: obj.into(), what: "path has a NUL byte".into() })?;
        let kind = match m.kind {
            0 => FAN_MARK_DONT_FOLLOW,
            1 => FAN_MARK_MOUNT,
            2 => FAN_MARK_FILESYSTEM,
            k => return Err(Error::Invalid { object: obj.into(), what: format!("fanotify mark of kind {k}") }),
        };
        let evictable = m.mflags & FAN_MARK_EVICTABLE;
        let what = KIND_NAMES[m.kind as usize];
        if m.mask != 0 {
            ferry_sys::fanotify::mark(fd.as_fd(), FAN_MARK_ADD | kind | evictable, m.mask, &path)
                .ctx(|| format!("{obj}: cannot mark {} ({what}) again", m.path))?;
        }
        if m.ignored_mask != 0 {
            let how = match m.mflags & FAN_MARK_IGNORE {
                0 => FAN_MARK_IGNORED_MASK | (m.mflags & FAN_MARK_IGNORED_SURV_MODIFY),
                _ => FAN_MARK_IGNORE | (m.mflags & FAN_MARK_IGNORED_SURV_MODIFY),
            };
            ferry_sys::fanotify::mark(fd.as_fd(), FAN_MARK_ADD | kind | evictable | how, m.ignored_mask, &path)
                .ctx(|| format!("{obj}: cannot put back the ignored mask of {} ({what})", m.path))?;
        }
    }
    ferry_sys::process::set_status_flags(fd.as_fd(), f.flags as i32 & libc::O_NONBLOCK).ctx(|| obj.to_string())?;
    Ok(fd)
}
