//! Kernel objects beyond plain files: inotify, file handles, SysV shared memory, memfd seals,
//! and the FIONREAD query.

use crate::cvt_i;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `ioctl(FIONREAD)` — bytes (or, for inotify, bytes of events) waiting to be read.
pub fn fionread(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: n is a valid out-pointer for FIONREAD.
    cvt_i(unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) })?;
    Ok(n.max(0) as usize)
}

/// `inotify_init1(2)`.
pub fn inotify_init(flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain flags.
    let fd = cvt_i(unsafe { libc::inotify_init1(flags) })?;
    // SAFETY: fresh fd owned by us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `inotify_add_watch(2)` — returns the watch descriptor.
pub fn inotify_add_watch(fd: BorrowedFd<'_>, path: &CStr, mask: u32) -> io::Result<i32> {
    // SAFETY: path is a valid C string.
    cvt_i(unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) })
}

/// `inotify_rm_watch(2)`.
pub fn inotify_rm_watch(fd: BorrowedFd<'_>, wd: i32) -> io::Result<()> {
    // SAFETY: plain integers.
    cvt_i(unsafe { libc::inotify_rm_watch(fd.as_raw_fd(), wd) }).map(drop)
}

/// `open_by_handle_at(2)` with a handle of `handle_type` whose bytes are `handle`.
pub fn open_by_handle(mount_fd: BorrowedFd<'_>, handle_type: i32, handle: &[u8], flags: i32) -> io::Result<OwnedFd> {
    // struct file_handle { unsigned int handle_bytes; int handle_type; unsigned char f_handle[]; },
    // built in a u32 buffer so it is suitably aligned.
    let mut buf = vec![0u32; 2 + handle.len().div_ceil(4)];
    buf[0] = handle.len() as u32;
    buf[1] = handle_type as u32;
    let mut bytes: Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
    bytes[8..8 + handle.len()].copy_from_slice(handle);
    for (w, c) in buf.iter_mut().zip(bytes.chunks_exact(4)) {
        *w = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
    }
    // SAFETY: buf holds a complete struct file_handle with handle_bytes bytes of handle.
    let fd = cvt_i(unsafe {
        libc::syscall(libc::SYS_open_by_handle_at, mount_fd.as_raw_fd(), buf.as_mut_ptr(), flags) as libc::c_int
    })?;
    // SAFETY: fresh fd owned by us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `shmget(2)` — returns the shmid.
pub fn shmget(key: i32, size: u64, flags: i32) -> io::Result<i32> {
    // SAFETY: plain integers.
    cvt_i(unsafe { libc::shmget(key, size as usize, flags) })
}

/// `shmctl(IPC_SET)`: owner, group and permission bits of a segment.
pub fn shm_set_owner(id: i32, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
    // SAFETY: an all-zero shmid_ds is a valid value.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is a valid out-pointer.
    cvt_i(unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) })?;
    ds.shm_perm.uid = uid;
    ds.shm_perm.gid = gid;
    ds.shm_perm.mode = (mode & 0o777) as _;
    // SAFETY: ds is a valid, filled shmid_ds.
    cvt_i(unsafe { libc::shmctl(id, libc::IPC_SET, &mut ds) }).map(drop)
}

/// `shmctl(IPC_STAT)`: the size of a segment in bytes.
pub fn shm_size(id: i32) -> io::Result<u64> {
    // SAFETY: an all-zero shmid_ds is a valid value.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is a valid out-pointer.
    cvt_i(unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) })?;
    Ok(ds.shm_segsz as u64)
}

/// `shmctl(IPC_RMID)`.
pub fn shm_rmid(id: i32) -> io::Result<()> {
    // SAFETY: IPC_RMID ignores the buffer.
    cvt_i(unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) }).map(drop)
}

/// A segment attached in this process for the duration of one copy.
struct Attached(*mut libc::c_void);

impl Drop for Attached {
    fn drop(&mut self) {
        // SAFETY: self.0 was returned by shmat and is detached exactly once.
        unsafe { libc::shmdt(self.0) };
    }
}

fn attach(id: i32, flags: i32) -> io::Result<Attached> {
    // SAFETY: shmat picks a free address itself (NULL), so it cannot clobber our mappings.
    let p = unsafe { libc::shmat(id, std::ptr::null(), flags) };
    if p as isize == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(Attached(p))
}

/// Copy the first `buf.len()` bytes of segment `id` (attached read-only, then detached).
/// Returns the size of the huge pages it is made of (`SHM_HUGETLB`: its file is on the kernel's
/// hugetlbfs, whose block size is the page size), or 0 for ordinary pages.
pub fn shm_read(id: i32, buf: &mut [u8]) -> io::Result<u64> {
    let a = attach(id, libc::SHM_RDONLY)?;
    // SAFETY: the segment is at least buf.len() bytes (the caller read its size) and stays
    // attached while we copy.
    unsafe { std::ptr::copy_nonoverlapping(a.0 as *const u8, buf.as_mut_ptr(), buf.len()) };
    // The attachment's mapping, in /proc/self/map_files ("START-END"), tells its file system.
    let start = format!("{:x}-", a.0 as usize);
    let link = std::fs::read_dir("/proc/self/map_files")?
        .flatten()
        .find(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&start)))
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the attachment is not in /proc/self/map_files"))?;
    let c = std::ffi::CString::new(link.path().as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: zeroed is a valid statfs; `c` is a NUL-terminated path; `st` a valid out-pointer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    cvt_i(unsafe { libc::statfs(c.as_ptr(), &mut st) })?;
    const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
    Ok(if st.f_type as i64 == HUGETLBFS_MAGIC { st.f_bsize as u64 } else { 0 })
}

/// `shmget` flags that make a segment of huge pages of `page` bytes (0: none):
/// SHM_HUGETLB with the page size's log2 in the SHM_HUGE_SHIFT bits.
pub fn shm_huge_flags(page: u64) -> i32 {
    const SHM_HUGE_SHIFT: u32 = 26;
    match page {
        0 => 0,
        p => libc::SHM_HUGETLB | ((p.trailing_zeros() as i32) << SHM_HUGE_SHIFT),
    }
}

/// Write `data` at the start of segment `id` (attached, then detached).
pub fn shm_write(id: i32, data: &[u8]) -> io::Result<()> {
    let a = attach(id, 0)?;
    // SAFETY: the caller created the segment with at least data.len() bytes; it stays
    // attached while we copy.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), a.0 as *mut u8, data.len()) };
    Ok(())
}

/// `memfd_create(2)` with flags (MFD_CLOEXEC is always added).
pub fn memfd_with(name: &CStr, flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: name is a valid C string.
    let fd = cvt_i(unsafe { libc::memfd_create(name.as_ptr(), flags | libc::MFD_CLOEXEC) })?;
    // SAFETY: fresh fd owned by us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `fcntl(F_GET_SEALS)`.
pub fn get_seals(fd: BorrowedFd<'_>) -> io::Result<u32> {
    // SAFETY: plain fd and command.
    cvt_i(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) }).map(|s| s as u32)
}

/// `fcntl(F_ADD_SEALS)`.
pub fn add_seals(fd: BorrowedFd<'_>, seals: u32) -> io::Result<()> {
    // SAFETY: plain fd and integers.
    cvt_i(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals as libc::c_int) }).map(drop)
}

/// `lseek(fd, off, SEEK_DATA)` — the start of the next data extent at or after `off`, or `None`
/// past the last one (ENXIO).
pub fn seek_data(fd: BorrowedFd<'_>, off: u64) -> io::Result<Option<u64>> {
    // SAFETY: plain fd and integers.
    let r = unsafe { libc::lseek64(fd.as_raw_fd(), off as i64, libc::SEEK_DATA) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENXIO) { Ok(None) } else { Err(e) };
    }
    Ok(Some(r as u64))
}

/// `lseek(fd, off, SEEK_HOLE)` — the start of the next hole at or after `off` (the end of the
/// file counts as one).
pub fn seek_hole(fd: BorrowedFd<'_>, off: u64) -> io::Result<u64> {
    // SAFETY: plain fd and integers.
    let r = unsafe { libc::lseek64(fd.as_raw_fd(), off as i64, libc::SEEK_HOLE) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as u64)
}

/// `fchown(2)`.
pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain fd and integers.
    cvt_i(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) }).map(drop)
}

/// `fchmod(2)` (permission bits, setuid, setgid, sticky; the umask does not apply).
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: plain fd and integers.
    cvt_i(unsafe { libc::fchmod(fd.as_raw_fd(), mode & 0o7777) }).map(drop)
}

/// `futimens(3)` — set the access and modification times (nanoseconds since the epoch).
pub fn futimens(fd: BorrowedFd<'_>, atime_ns: i64, mtime_ns: i64) -> io::Result<()> {
    let ts = |ns: i64| libc::timespec { tv_sec: ns.div_euclid(1_000_000_000), tv_nsec: ns.rem_euclid(1_000_000_000) };
    let times = [ts(atime_ns), ts(mtime_ns)];
    // SAFETY: times points to two valid timespecs.
    cvt_i(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) }).map(drop)
}

/// `mknod(2)` — create a device node (`mode` includes the file type bits).
pub fn mknod(path: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    // SAFETY: path is a valid C string.
    cvt_i(unsafe { libc::mknod(path.as_ptr(), mode, rdev) }).map(drop)
}

/// `fcntl(F_GETOWN_EX)` — who receives this description's SIGIO/SIGURG: (F_OWNER_TID,
/// F_OWNER_PID or F_OWNER_PGRP, id); id 0 means none.
pub fn get_owner(fd: BorrowedFd<'_>) -> io::Result<(i32, i32)> {
    let mut o = FOwnerEx { kind: 0, pid: 0 };
    // SAFETY: o is a valid out-pointer for F_GETOWN_EX (struct f_owner_ex).
    cvt_i(unsafe { libc::fcntl(fd.as_raw_fd(), F_GETOWN_EX, &mut o) })?;
    Ok((o.kind, o.pid))
}

/// `struct f_owner_ex` (missing from the libc crate).
#[repr(C)]
struct FOwnerEx {
    kind: libc::c_int,
    pid: libc::pid_t,
}
const F_SETOWN_EX: libc::c_int = 15;
const F_GETOWN_EX: libc::c_int = 16;
const F_SETSIG: libc::c_int = 10;
const F_GETSIG: libc::c_int = 11;

/// `fcntl(F_SETOWN_EX)`.
pub fn set_owner(fd: BorrowedFd<'_>, kind: i32, id: i32) -> io::Result<()> {
    let o = FOwnerEx { kind, pid: id };
    // SAFETY: o is a valid pointer for F_SETOWN_EX (struct f_owner_ex).
    cvt_i(unsafe { libc::fcntl(fd.as_raw_fd(), F_SETOWN_EX, &o) }).map(drop)
}

/// `fcntl(F_GETSIG)` — the signal sent instead of SIGIO (0: SIGIO).
pub fn get_owner_signal(fd: BorrowedFd<'_>) -> io::Result<i32> {
    // SAFETY: plain fd and command.
    cvt_i(unsafe { libc::fcntl(fd.as_raw_fd(), F_GETSIG) })
}

/// `fcntl(F_SETSIG)`.
pub fn set_owner_signal(fd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    // SAFETY: plain fd and integers.
    cvt_i(unsafe { libc::fcntl(fd.as_raw_fd(), F_SETSIG, sig) }).map(drop)
}

/// `fcntl(F_GETFL)` — access mode and status flags.
pub fn status_flags(fd: BorrowedFd<'_>) -> io::Result<i32> {
    // SAFETY: plain fd and command.
    cvt_i(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })
}
