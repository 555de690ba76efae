//! userfaultfd write-protect tracking and PAGEMAP_SCAN with its write-protect flags, for
//! pre-copy migration (the uffd itself is created inside the target by an injected syscall).

use crate::cvt_i;
use crate::process::PmScanArg;
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
