//! userfaultfd write-protect tracking and PAGEMAP_SCAN with its write-protect flags, for
//! pre-copy migration (the uffd itself is created inside the target by an injected syscall).

use crate::consts::PmScanArg;
use crate::cvt_i;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// x86-64 `userfaultfd` syscall number.
pub const NR_USERFAULTFD: u64 = 323;
/// userfaultfd(2) flag: handle user-space faults only (allowed without privilege).
pub const UFFD_USER_MODE_ONLY: u64 = 1;
/// Write-protect faults resolved by the kernel itself, only recorded in the page tables.
pub const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
pub const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
/// PAGEMAP_SCAN flags: write-protect the matching pages; fail on pages not async-WP enabled.
pub const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
pub const PM_SCAN_CHECK_WPASYNC: u64 = 1 << 1;
/// Page category: written since it was last write-protected.
pub const PAGE_IS_WRITTEN: u64 = 1 << 1;

const UFFD_API: u64 = 0xAA;
const UFFDIO_API: libc::c_ulong = 0xC018_AA3F;
const UFFDIO_REGISTER: libc::c_ulong = 0xC020_AA00;
const PAGEMAP_SCAN: libc::c_ulong = 0xC060_6610;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

/// `UFFDIO_API` handshake with `features`.
pub fn api(uffd: BorrowedFd<'_>, features: u64) -> io::Result<()> {
    let mut a = UffdioApi { api: UFFD_API, features, ioctls: 0 };
    // SAFETY: `a` is a valid uffdio_api for the duration of the call.
    cvt_i(unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_API, &mut a as *mut UffdioApi) })?;
    Ok(())
}

/// `UFFDIO_REGISTER` of `start..start+len` (of the mm the uffd belongs to) with `mode`.
pub fn register(uffd: BorrowedFd<'_>, start: u64, len: u64, mode: u64) -> io::Result<()> {
    let mut r = UffdioRegister { start, len, mode, ioctls: 0 };
    // SAFETY: `r` is a valid uffdio_register for the duration of the call.
    cvt_i(unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_REGISTER, &mut r as *mut UffdioRegister) })?;
    Ok(())
}

/// The full `PAGEMAP_SCAN` of `start..end`: pages whose categories (xor `inverted`) have all of
/// `mask` and any of `anyof`, as (start, end) ranges; with `PM_SCAN_WP_MATCHING` in `flags`
/// they are write-protected again as they are reported.
pub fn scan(
    pagemap: BorrowedFd<'_>,
    start: u64,
    end: u64,
    flags: u64,
    inverted: u64,
    mask: u64,
    anyof: u64,
) -> io::Result<Vec<(u64, u64)>> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut cur = start;
    let mut buf = vec![[0u64; 3]; 512];
    while cur < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags,
            start: cur,
            end,
            vec: buf.as_mut_ptr() as u64,
            vec_len: buf.len() as u64,
            category_inverted: inverted,
            category_mask: mask,
            category_anyof_mask: anyof,
            return_mask: mask | anyof,
            ..Default::default()
        };
        // SAFETY: `arg` is a valid pm_scan_arg; `vec` points to `vec_len` writable page_region
        // entries (three u64 each).
        let n = cvt_i(unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg as *mut PmScanArg) })?;
        for r in &buf[..n as usize] {
            match out.last_mut() {
                Some(last) if last.1 == r[0] => last.1 = r[1],
                _ => out.push((r[0], r[1])),
            }
        }
        if arg.walk_end <= cur {
            break;
        }
        cur = arg.walk_end;
    }
    Ok(out)
}

// ---- MISSING mode, for post-copy migration (lazy pages) ----

/// UFFDIO_REGISTER mode: report faults on pages that are not there.
pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
/// Non-cooperative events: the target forked (a new uffd for the child arrives with the event).
pub const UFFD_FEATURE_EVENT_FORK: u64 = 1 << 1;
/// The target moved a registered range (mremap).
pub const UFFD_FEATURE_EVENT_REMAP: u64 = 1 << 2;
/// The target dropped pages of a registered range (MADV_DONTNEED, MADV_REMOVE).
pub const UFFD_FEATURE_EVENT_REMOVE: u64 = 1 << 3;
/// The target unmapped a registered range.
pub const UFFD_FEATURE_EVENT_UNMAP: u64 = 1 << 6;

const UFFDIO_COPY: libc::c_ulong = 0xC028_AA03;
const UFFDIO_ZEROPAGE: libc::c_ulong = 0xC020_AA04;

#[repr(C)]
#[derive(Default)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioZeropage {
    start: u64,
    len: u64,
    mode: u64,
    zeropage: i64,
}

/// `UFFDIO_COPY` — atomically fill `dst..dst+src.len()` (missing pages of a registered range)
/// with `src` and wake the threads waiting on them. Returns the bytes copied: fewer than asked
/// (with the error that stopped it) when the range meets a page that is already there
/// (`EEXIST`), the mm is changing (`EAGAIN`: read the pending events first), or is gone
/// (`ESRCH`, `ENOENT`). See ioctl_userfaultfd(2).
pub fn copy(uffd: BorrowedFd<'_>, dst: u64, src: &[u8]) -> (u64, Option<io::Error>) {
    let mut c = UffdioCopy { dst, src: src.as_ptr() as u64, len: src.len() as u64, mode: 0, copy: 0 };
    // SAFETY: `c` is a valid uffdio_copy; `src` is readable for `len` bytes during the call
    // (the kernel only reads it).
    let r = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_COPY, &mut c as *mut UffdioCopy) };
    if r == 0 {
        return (src.len() as u64, None);
    }
    let err = io::Error::last_os_error();
    (c.copy.max(0) as u64, Some(err))
}

/// `UFFDIO_ZEROPAGE` — fill missing pages of `start..start+len` with zeros and wake their
/// waiters. Same partial results as [`copy`].
pub fn zeropage(uffd: BorrowedFd<'_>, start: u64, len: u64) -> (u64, Option<io::Error>) {
    let mut z = UffdioZeropage { start, len, mode: 0, zeropage: 0 };
    // SAFETY: `z` is a valid uffdio_zeropage for the duration of the call.
    let r = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_ZEROPAGE, &mut z as *mut UffdioZeropage) };
    if r == 0 {
        return (len, None);
    }
    let err = io::Error::last_os_error();
    (z.zeropage.max(0) as u64, Some(err))
}

/// One `struct uffd_msg`, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A thread faulted on a missing page at this address.
    PageFault { address: u64 },
    /// The process forked; the child's uffd (now an fd of this process).
    Fork { uffd: i32 },
    /// `from..from+len` moved to `to` (mremap).
    Remap { from: u64, to: u64, len: u64 },
    /// Pages of `start..end` were dropped (MADV_DONTNEED/MADV_REMOVE).
    Remove { start: u64, end: u64 },
    /// `start..end` was unmapped.
    Unmap { start: u64, end: u64 },
    /// An event this code does not know.
    Other(u8),
}

/// `read(2)` of the pending messages of a non-blocking uffd (at most 64): an empty list when
/// there is none (`EAGAIN`).
pub fn read_events(uffd: BorrowedFd<'_>) -> io::Result<Vec<Event>> {
    let mut buf = [0u8; 32 * 64];
    // SAFETY: `buf` is writable for its length.
    let n = unsafe { libc::read(uffd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock { Ok(Vec::new()) } else { Err(e) };
    }
    let u64at = |m: &[u8], o: usize| u64::from_ne_bytes(m[o..o + 8].try_into().unwrap_or([0; 8]));
    Ok(buf[..n as usize]
        .chunks_exact(32)
        .map(|m| match m[0] {
            0x12 => Event::PageFault { address: u64at(m, 16) },
            0x13 => Event::Fork { uffd: u32::from_ne_bytes(m[8..12].try_into().unwrap_or([0; 4])) as i32 },
            0x14 => Event::Remap { from: u64at(m, 8), to: u64at(m, 16), len: u64at(m, 24) },
            0x15 => Event::Remove { start: u64at(m, 8), end: u64at(m, 16) },
            0x16 => Event::Unmap { start: u64at(m, 8), end: u64at(m, 16) },
            k => Event::Other(k),
        })
        .collect())
}

/// Own the uffd a fork event installed in this process (`Event::Fork`).
pub fn own_fork_uffd(fd: i32) -> io::Result<std::os::fd::OwnedFd> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: the kernel installed `fd` in this process's table when it queued the fork event
    // that was just read; nothing else knows of it, so it gets exactly one owner here.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

// ---- UFFDIO_MOVE, for pages handed from one mapping of this process to another ----

/// UFFDIO_API feature: `UFFDIO_MOVE` (Linux 6.8).
pub const UFFD_FEATURE_MOVE: u64 = 1 << 16;

const UFFDIO_MOVE: libc::c_ulong = 0xC028_AA05;

#[repr(C)]
#[derive(Default)]
struct UffdioMove {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    moved: i64,
}

/// A userfaultfd of the calling process itself (close-on-exec, non-blocking); closing it
/// unregisters every range registered with it.
pub fn own() -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: integer arguments only.
    let fd = crate::cvt(unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: the kernel just installed `fd` in this process's table for this call alone.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) })
}

/// `UFFDIO_MOVE` — move the pages of `src..src+len` (private anonymous memory of the uffd's
/// process, not shared with another process) to `dst..dst+len` (a range registered with `uffd`
/// where no page is): page-table entries move, the pages are not copied (a 2 MiB huge page
/// moves whole when both ends are aligned alike). `src` then reads as zeros. Returns the bytes
/// moved: fewer than asked with the error that stopped it (`EAGAIN`: try again; `EBUSY`: a page
/// is shared or pinned; `ENOENT`: a page of `src` is not there). See ioctl_userfaultfd(2).
pub fn move_pages(uffd: BorrowedFd<'_>, dst: u64, src: u64, len: u64) -> (u64, Option<io::Error>) {
    let mut m = UffdioMove { dst, src, len, mode: 0, moved: 0 };
    // SAFETY: `m` is a valid uffdio_move for the duration of the call; the kernel checks that
    // both ranges are mapped in this process and moves no page Rust code references (the caller
    // only passes ranges of regions it owns, see raw::RawRegion).
    let r = unsafe { libc::ioctl(uffd.as_raw_fd(), UFFDIO_MOVE, &mut m as *mut UffdioMove) };
    if r == 0 {
        return (len, None);
    }
    let err = io::Error::last_os_error();
    (m.moved.max(0) as u64, Some(err))
}
