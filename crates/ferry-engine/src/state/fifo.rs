//! FIFOs (named pipes): every open description is reopened by path at restore, with its access
//! mode and status flags (O_NONBLOCK), and the bytes in flight go back into the FIFO.
//!
//! Dump: the unread bytes are copied once per FIFO (device, inode) with `tee(2)` from a new
//! read end opened through `/proc/PID/fd/N` (`O_RDONLY|O_NONBLOCK` never blocks on a FIFO and
//! works whatever the access mode of the process's own fd), so nothing is consumed. They are
//! stored in `File.fifo_data` of the first description of that FIFO in the tree.
//!
//! Restore (in ferry, before the fork): the path is opened `O_RDWR|O_NONBLOCK` first (which
//! never blocks and counts as reader and writer), so that opening the real end `O_RDONLY` or
//! `O_WRONLY` does not wait for a peer; then the bytes are written back through that helper,
//! which is closed. The restored descriptions keep the FIFO's buffer alive. The capacity is
//! raised if the bytes need it; a capacity set with F_SETPIPE_SZ is otherwise not kept.
//!
//! A FIFO must exist at its path at restore (not recreated: a FIFO is a file system object that
//! outlives the processes); a missing path or a path that is no longer a FIFO is an error.
//!
//! A FIFO whose other end a process outside the tree holds (a supervisor; found at dump by the
//! FIFO's device and inode among every process's fds, `File.fifo_held_outside`, each holder
//! recorded with its start time in `File.fifo_holders`) keeps the kernel's pipe alive after
//! the tree is killed, with its bytes: an outside reader may read them before the restore, an
//! outside writer add to them. If one of those holders (the same process: same pid and start
//! time) still has it at restore, that pipe is the one the dump saw: the bytes are not written
//! again (that would hand an outside reader what it already read). A process that opened the
//! FIFO only after the dump does not count: the dump's pipe may have died in between. If none
//! of them holds it any more and one of them could read it, the restore is refused naming the
//! FIFO: that reader may or may not have read the bytes before it closed, which nothing shows.
//! Otherwise (no holder at dump, or only writers, all gone: the pipe died with its last
//! holder), the FIFO is a new pipe and gets the bytes; one that already holds bytes then (a
//! process outside the image opened it since and wrote into it) is refused rather than mixing
//! old and new bytes. Not seen: a holder that closed the FIFO and opened it again (the pipe
//! may have died in between) is taken for one that kept it. Images written before the holders
//! were recorded take any process holding the FIFO at restore for one of them.
//!
//! Writing the bytes back moves the FIFO's mtime (and ctime): its atime and mtime as the dump
//! saw them (stored with the description that carries the bytes) are put back after.

use crate::error::{Ctx, Error};
use crate::procfs;
use ferry_image::{FifoHolder, File};
use ferry_sys::objects::fionread;
use ferry_sys::process::{fstat, open_raw, pipe_size, set_pipe_size};
use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// FIFOs (device, inode) whose bytes are already in the image.
pub type Seen = HashSet<(u64, u64)>;

/// The processes other than those `inside` says (and ferry) that hold an fd on the FIFO
/// (`dev`, `ino`), each with its start time and whether one of its fds on it can read.
fn holders(dev: u64, ino: u64, inside: &dyn Fn(i32) -> bool) -> Vec<FifoHolder> {
    let me = std::process::id() as i32;
    let Ok(procs) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for p in procs.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()) {
        if p == me || inside(p) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{p}/fd")) else { continue };
        let mut holder: Option<FifoHolder> = None;
        for fd in fds.flatten() {
            if !std::fs::metadata(fd.path()).is_ok_and(|m| m.file_type().is_fifo() && m.dev() == dev && m.ino() == ino)
            {
                continue;
            }
            let h = holder.get_or_insert_with(|| FifoHolder {
                pid: p,
                start_time: procfs::start_time(p).unwrap_or(0),
                reads: false,
            });
            h.reads |= reads(p, &fd.file_name().to_string_lossy());
        }
        found.extend(holder);
    }
    found
}

/// Whether fd `fd` of `pid` was opened for reading (its fdinfo's access mode; unreadable: yes).
fn reads(pid: i32, fd: &str) -> bool {
    let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else { return true };
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|v| i32::from_str_radix(v.trim(), 8).ok())
        .unwrap_or(libc::O_RDWR);
    flags & libc::O_ACCMODE != libc::O_WRONLY
}

/// Fill `f` for fd `fd` of `pid`, a FIFO at `f.path` with metadata `md`; `tree` are the pids
/// of the dumped tree.
pub fn collect(
    pid: i32,
    fd: i32,
    md: &std::fs::Metadata,
    (seen, tree): (&mut Seen, &HashSet<i32>),
    f: &mut File,
) -> Result<(), Error> {
    f.ino = md.ino();
    f.size = 0;
    if !seen.insert((md.dev(), md.ino())) {
        return Ok(());
    }
    f.atime_ns = md.atime() * 1_000_000_000 + md.atime_nsec();
    f.mtime_ns = md.mtime() * 1_000_000_000 + md.mtime_nsec();
    let obj = || format!("pid {pid} fd {fd} (FIFO {})", f.path);
    let link = procfs::path(pid, &format!("fd/{fd}"));
    let path = CString::new(link.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Invalid { object: obj(), what: "path has a NUL byte".into() })?;
    let reader = open_raw(&path, libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC, 0)
        .ctx(|| format!("{}: cannot open a reader", obj()))?;
    let (_, data) = crate::state::pipes::peek(reader.as_fd()).ctx(|| format!("{}: cannot peek", obj()))?;
    f.fifo_data = data;
    if !f.fifo_data.is_empty() {
        f.fifo_holders = holders(md.dev(), md.ino(), &|p| tree.contains(&p));
        f.fifo_held_outside = !f.fifo_holders.is_empty();
    }
    Ok(())
}

/// Open the description `f` (open flags `flags`) of a FIFO in ferry, through `at` (its path,
/// or /proc/self/fd/N of a removed one recreated, state/ghost_node.rs), writing back its bytes.
pub fn prepare(obj: &str, f: &File, flags: i32, at: &str) -> Result<OwnedFd, Error> {
    let path = CString::new(at.as_bytes())
        .map_err(|_| Error::Invalid { object: obj.into(), what: "path has a NUL byte".into() })?;
    let helper = open_raw(&path, libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC, 0).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Invalid { object: obj.into(), what: format!("the FIFO {} does not exist any more", f.path) }
        } else {
            Error::Sys { object: format!("{obj}: cannot open the FIFO {}", f.path), source: e }
        }
    })?;
    let st = fstat(helper.as_fd()).ctx(|| obj.to_string())?;
    if st.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return Err(Error::Invalid { object: obj.into(), what: format!("{} is not a FIFO any more", f.path) });
    }
    let fd = open_raw(&path, flags | libc::O_NONBLOCK, 0).ctx(|| format!("{obj}: cannot open the FIFO {}", f.path))?;
    ferry_sys::process::set_status_flags(fd.as_fd(), flags).ctx(|| obj.to_string())?;
    // The pipe the dump saw, kept alive by its holder outside: its bytes are where they were.
    let now = || holders(st.st_dev, st.st_ino, &|_| false);
    let alive = f.fifo_held_outside
        && match f.fifo_holders.is_empty() {
            // (An image from before the holders were recorded.)
            true => !now().is_empty(),
            false => {
                now().iter().any(|h| f.fifo_holders.iter().any(|d| d.pid == h.pid && d.start_time == h.start_time))
            }
        };
    if f.fifo_held_outside && !alive {
        if let Some(r) = f.fifo_holders.iter().find(|h| h.reads) {
            return Err(Error::Invalid {
                object: obj.into(),
                what: format!(
                    "the FIFO {} had {} unread bytes and a reader outside the image (pid {}) that has closed it since: whether it read them cannot be known",
                    f.path,
                    f.fifo_data.len(),
                    r.pid
                ),
            });
        }
    }
    if alive {
        tracing::info!(fifo = %f.path, "a process outside the image still holds the FIFO: its bytes stay as they are");
    }
    if !f.fifo_data.is_empty() && !alive {
        let queued = fionread(helper.as_fd()).ctx(|| obj.to_string())?;
        if queued > 0 {
            return Err(Error::Invalid {
                object: obj.into(),
                what: format!(
                    "the FIFO {} already holds {queued} unread bytes (another process keeps it open)",
                    f.path
                ),
            });
        }
        if f.fifo_data.len() > pipe_size(helper.as_fd()).ctx(|| obj.to_string())? {
            set_pipe_size(helper.as_fd(), f.fifo_data.len()).ctx(|| format!("{obj}: cannot grow the FIFO"))?;
        }
        ferry_sys::raw::write_all(helper.as_raw_fd(), &f.fifo_data)
            .ctx(|| format!("{obj}: cannot refill the FIFO {}", f.path))?;
        if f.atime_ns != 0 || f.mtime_ns != 0 {
            // Writing the bytes back moved the mtime: the FIFO's times as the dump saw them.
            ferry_sys::objects::futimens(helper.as_fd(), f.atime_ns, f.mtime_ns)
                .ctx(|| format!("{obj}: cannot set the times of the FIFO {}", f.path))?;
        }
    }
    Ok(fd)
}
