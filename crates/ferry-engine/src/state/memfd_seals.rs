//! memfd seals: read with F_GET_SEALS on a `pidfd_getfd` copy at dump, put back with
//! F_ADD_SEALS at restore on a memfd created with MFD_ALLOW_SEALING.
//!
//! Order matters at restore. The content is written (and mappings filled) first, so
//! F_SEAL_WRITE, F_SEAL_GROW, F_SEAL_SHRINK and F_SEAL_EXEC are added in ferry once every
//! process's files and mappings are prepared but before the tree maps anything: F_SEAL_WRITE
//! cannot be added while a shared mapping may write (even a read-only one opened from a
//! writable fd), and once it is there the kernel maps shared read-only mappings without
//! VM_MAYWRITE. F_SEAL_FUTURE_WRITE forbids new writable mappings but tolerates existing ones,
//! so it is added after every process's memory is rebuilt, together with F_SEAL_SEAL (which
//! must come last). A memfd created without MFD_ALLOW_SEALING reports F_SEAL_SEAL alone, which
//! gives the same result.

use crate::error::{Ctx, Error};
use ferry_image::{FileKind, Process};
use ferry_sys::objects::{add_seals, get_seals, memfd_with};
use std::collections::HashMap;
use std::ffi::CStr;
use std::os::fd::{AsFd, OwnedFd};

/// Seals that must wait until the restored processes have their mappings.
const LATE: u32 = (libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL) as u32;

/// F_GET_SEALS of fd `fd` of `pid` (a memfd).
pub fn collect(pid: i32, fd: i32) -> Result<u32, Error> {
    let pidfd = ferry_sys::process::pidfd_open(pid).ctx(|| format!("pid {pid}: pidfd_open"))?;
    let copy = ferry_sys::process::pidfd_getfd(pidfd.as_fd(), fd).ctx(|| format!("pid {pid} fd {fd}: pidfd_getfd"))?;
    get_seals(copy.as_fd()).ctx(|| format!("pid {pid} fd {fd}: F_GET_SEALS"))
}

/// A memfd that can take seals later.
pub fn create(name: &CStr) -> std::io::Result<OwnedFd> {
    memfd_with(name, libc::MFD_ALLOW_SEALING)
}

/// Seals per memfd inode, from the fd tables of the image.
fn wanted(procs: &[Process]) -> HashMap<u64, u32> {
    let mut out = HashMap::new();
    for f in procs.iter().flat_map(|p| p.files.iter()).filter(|f| f.kind == FileKind::Memfd as i32) {
        if f.seals != 0 {
            out.insert(f.ino, f.seals);
        }
    }
    out
}

fn apply(procs: &[Process], shmem: &HashMap<u64, (i32, std::fs::File)>, late: bool) -> Result<(), Error> {
    for (ino, seals) in wanted(procs) {
        let seals = if late { seals & LATE } else { seals & !LATE };
        if seals == 0 {
            continue;
        }
        let (_, file) = shmem
            .get(&ino)
            .ok_or_else(|| Error::Invalid { object: format!("memfd {ino}"), what: "not prepared".into() })?;
        add_seals(file.as_fd(), seals).ctx(|| format!("memfd {ino}: cannot add seals {seals:#x}"))?;
    }
    Ok(())
}

/// Before the fork: every seal but F_SEAL_FUTURE_WRITE and F_SEAL_SEAL.
pub fn apply_early(procs: &[Process], shmem: &HashMap<u64, (i32, std::fs::File)>) -> Result<(), Error> {
    apply(procs, shmem, false)
}

/// Once every process's memory is rebuilt: F_SEAL_FUTURE_WRITE and F_SEAL_SEAL.
pub fn apply_late(procs: &[Process], shmem: &HashMap<u64, (i32, std::fs::File)>) -> Result<(), Error> {
    apply(procs, shmem, true)
}
