//! Raw syscalls a process makes on itself. The restore engine's forked children use these
//! (not glibc's wrappers, whose caches and hidden flags would be wrong after `clone3`).

use crate::{cvt, cvt_i};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

/// The kernel's `struct sigaction` for `rt_sigaction(2)` on x86_64 (not glibc's).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelSigaction {
    pub handler: u64,
    pub flags: u64,
    pub restorer: u64,
    pub mask: u64,
}

/// Page size of this machine.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as u64 }
}

/// `rt_sigaction(2)` raw — install `act` for `sig` in the calling process.
pub fn rt_sigaction(sig: i32, act: &KernelSigaction) -> io::Result<()> {
    // SAFETY: `act` is a valid kernel sigaction; the old-action pointer is null; sigsetsize 8.
    cvt(unsafe { libc::syscall(libc::SYS_rt_sigaction, sig, act as *const KernelSigaction, 0usize, 8usize) }).map(drop)
}

/// `rt_sigprocmask(SIG_SETMASK)` raw — returns the previous mask.
pub fn set_sigmask_self(mask: u64) -> io::Result<u64> {
    let mut old = 0u64;
    // SAFETY: valid pointers to 8-byte masks.
    cvt(unsafe { libc::syscall(libc::SYS_rt_sigprocmask, libc::SIG_SETMASK, &mask, &mut old, 8usize) })?;
    Ok(old)
}

/// Wait for one of the (blocked) signals in `mask` and return its number (`sigwaitinfo`).
pub fn sigwait(mask: u64) -> io::Result<i32> {
    // SAFETY: a valid 8-byte mask; no siginfo or timeout buffers.
    cvt(unsafe {
        libc::syscall(
            libc::SYS_rt_sigtimedwait,
            &mask,
            std::ptr::null_mut::<libc::siginfo_t>(),
            std::ptr::null::<libc::timespec>(),
            8usize,
        )
    })
    .map(|r| r as i32)
}

/// `prctl(2)` with integer arguments.
pub fn prctl(option: i32, a2: u64, a3: u64, a4: u64, a5: u64) -> io::Result<i32> {
    // SAFETY: only integer-argument prctl options are passed by callers.
    cvt_i(unsafe { libc::prctl(option, a2, a3, a4, a5) })
}

/// `prctl(PR_SET_NAME)` — set comm (at most 15 bytes used).
pub fn set_comm(name: &[u8]) -> io::Result<()> {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name[..n]);
    // SAFETY: buf is a NUL-terminated 16-byte buffer.
    cvt_i(unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr()) }).map(drop)
}

/// `personality(2)`.
pub fn personality(p: u64) -> io::Result<()> {
    // SAFETY: integer argument.
    let r = unsafe { libc::personality(p as libc::c_ulong) };
    cvt_i(r).map(drop)
}

/// `umask(2)`.
pub fn umask(mask: u32) {
    // SAFETY: cannot fail.
    unsafe {
        libc::umask(mask);
    }
}

/// `setsid(2)`.
pub fn setsid() -> io::Result<()> {
    // SAFETY: no arguments.
    cvt_i(unsafe { libc::setsid() }).map(drop)
}

/// `setpgid(2)`.
pub fn setpgid(pid: i32, pgid: i32) -> io::Result<()> {
    // SAFETY: integer arguments.
    cvt_i(unsafe { libc::setpgid(pid, pgid) }).map(drop)
}

/// `listen(2)` again on a listening socket: sets its accept queue's length (`backlog`, capped
/// by the kernel at `net.core.somaxconn`).
pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    // SAFETY: integer arguments; `fd` is borrowed for the call.
    cvt_i(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map(drop)
}

/// `fcntl(F_DUPFD_CLOEXEC)` — a copy of `fd` numbered at least `min`.
pub fn dup_above(fd: BorrowedFd<'_>, min: i32) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: integer arguments.
    let n = cvt_i(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) })?;
    // SAFETY: the kernel just created fd `n` for us; we are its only owner.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(n) })
}

/// `fcntl(F_DUPFD_CLOEXEC)` of fd number `fd`, which no Rust object here owns (an fd this
/// process was started with and was told about, like `restore --inherit-fd fd[N]:KEY`): a copy
/// numbered at least `min`. EBADF if `fd` is not open.
pub fn dup_number_above(fd: i32, min: i32) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: integer arguments; a number that is not open fails with EBADF.
    let n = cvt_i(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) })?;
    // SAFETY: the kernel just created fd `n` for us; we are its only owner.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(n) })
}

/// `dup3(2)` by numbers, in a forked child arranging its fd table. Neither number is owned by
/// any Rust object in the child (they were inherited across the fork).
pub fn dup3_numbers(old: i32, newfd: i32, cloexec: bool) -> io::Result<()> {
    if old == newfd {
        return set_cloexec(newfd, cloexec);
    }
    let flags = if cloexec { libc::O_CLOEXEC } else { 0 };
    // SAFETY: integer arguments; `newfd` is meant to be replaced.
    cvt_i(unsafe { libc::dup3(old, newfd, flags) }).map(drop)
}

/// `fcntl(F_SETFL)` clearing then setting O_ASYNC on fd number `fd` (which need not be owned
/// here: a forked child arranging its fd table): registers `fd` as the number a SIGIO reports.
pub fn reset_async_numbers(fd: i32) -> io::Result<()> {
    // SAFETY: fcntl on an fd number only reads/changes that fd's flags; a bad number is EBADF.
    let flags = cvt_i(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: as above.
    cvt_i(unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_ASYNC) })?;
    // SAFETY: as above.
    cvt_i(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_ASYNC) }).map(drop)
}

/// `fcntl(F_SETFD)` by number.
pub fn set_cloexec(fd: i32, cloexec: bool) -> io::Result<()> {
    // SAFETY: integer arguments.
    cvt_i(unsafe { libc::fcntl(fd, libc::F_SETFD, if cloexec { libc::FD_CLOEXEC } else { 0 }) }).map(drop)
}

/// `close_range(2)` — close every fd in `first..=last`.
pub fn close_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: closing fds by number; callers own none of these numbers as OwnedFd.
    cvt(unsafe { libc::syscall(libc::SYS_close_range, first, last, 0) }).map(drop)
}

/// `close(2)` by number.
pub fn close(fd: i32) -> io::Result<()> {
    // SAFETY: closing by number; the caller holds no OwnedFd for it.
    cvt_i(unsafe { libc::close(fd) }).map(drop)
}

/// `lseek(2)` to an absolute offset, by number.
pub fn seek_to(fd: i32, off: u64) -> io::Result<()> {
    // SAFETY: integer arguments.
    let r = unsafe { libc::lseek64(fd, off as i64, libc::SEEK_SET) };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `write(2)` the whole buffer to fd number `fd`.
pub fn write_all(fd: i32, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: buf is valid for reads of buf.len() bytes.
        let r = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        buf = &buf[r as usize..];
    }
    Ok(())
}

/// `tgkill(2)` the calling thread with `sig` (raw: the pid/tid come from the kernel, not glibc).
pub fn raise_raw(sig: i32) -> io::Result<()> {
    // SAFETY: plain syscalls with integer arguments.
    let pid = unsafe { libc::syscall(libc::SYS_getpid) };
    // SAFETY: as above.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    // SAFETY: as above.
    cvt(unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, sig) }).map(drop)
}

/// `exit_group(2)` without running atexit handlers or flushing stdio (for forked children).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust state.
    unsafe { libc::_exit(code) }
}

/// `mmap(2)` anonymous memory at a fixed address that must be free (`MAP_FIXED_NOREPLACE`),
/// in the calling process. Returns the address.
pub fn mmap_anon_noreplace(addr: u64, len: u64, prot: i32) -> io::Result<u64> {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so no Rust memory is
    // affected; the new mapping is not referenced by Rust code except through raw writes.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            len as usize,
            prot,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    if p as u64 != addr {
        return Err(io::Error::from_raw_os_error(libc::EEXIST));
    }
    Ok(addr)
}

/// Copy `data` into memory this process mapped with [`mmap_anon_noreplace`] (writable).
///
/// # Safety
/// `addr..addr+data.len()` must be a writable mapping created by the caller that no Rust
/// reference points into.
pub unsafe fn poke_own(addr: u64, data: &[u8]) {
    // SAFETY: guaranteed by the caller.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), addr as *mut u8, data.len()) }
}

/// `mprotect(2)` in the calling process.
///
/// # Safety
/// The range must not hold memory that Rust code still writes through (e.g. a trampoline the
/// caller mapped itself).
pub unsafe fn mprotect_own(addr: u64, len: u64, prot: i32) -> io::Result<()> {
    // SAFETY: guaranteed by the caller.
    cvt_i(unsafe { libc::mprotect(addr as *mut libc::c_void, len as usize, prot) }).map(drop)
}

/// `chroot(2)`.
pub fn chroot(path: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: valid C string.
    cvt_i(unsafe { libc::chroot(path.as_ptr()) }).map(drop)
}

/// `fchdir(2)`.
pub fn fchdir(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: integer argument.
    cvt_i(unsafe { libc::fchdir(fd.as_raw_fd()) }).map(drop)
}

/// Map `len` bytes at `addr` (which must be free: `MAP_FIXED_NOREPLACE`) in the calling process,
/// copy `code` to its start and make the first page read+execute (the rest stays read+write).
/// Used by restore children for the syscall trampoline the tracer drives.
pub fn map_trampoline(addr: u64, len: u64, code: &[u8]) -> io::Result<()> {
    let page = page_size();
    if code.len() as u64 > page || len < page {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    mmap_anon_noreplace(addr, len, libc::PROT_READ | libc::PROT_WRITE)?;
    // SAFETY: the range was just created by MAP_FIXED_NOREPLACE, is writable, and no Rust
    // reference points into it; `code` fits in the first page.
    unsafe {
        poke_own(addr, code);
        mprotect_own(addr, page, libc::PROT_READ | libc::PROT_EXEC)
    }
}

/// `read(2)` once into `buf` from fd number `fd`; returns the byte count.
pub fn read_once(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of buf.len() bytes.
    let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Private anonymous memory the calling process mapped at a fixed address for a program it is
/// about to become (a restore child premapping memory its children will share copy-on-write).
/// Rust code never holds a reference into it: it is only written through the kernel (`pread`,
/// `madvise`). After `fork` each process owns its own copy of the value and of the mapping.
#[derive(Debug)]
pub struct RawRegion {
    start: u64,
    end: u64,
}

impl RawRegion {
    /// Map `start..end` read+write (`MAP_FIXED_NOREPLACE`: fails with EEXIST if anything is
    /// there), growing down like a stack if `grows_down`, not accounted if `noreserve`
    /// (`MAP_NORESERVE`).
    pub fn map(start: u64, end: u64, grows_down: bool, noreserve: bool) -> io::Result<RawRegion> {
        let flags = libc::MAP_ANONYMOUS | if grows_down { libc::MAP_GROWSDOWN } else { 0 };
        RawRegion::map_private(start, end, flags, noreserve, -1, 0)
    }

    /// Map `start..end` of the file behind `fd` from byte `offset`, private and read+write
    /// (`MAP_FIXED_NOREPLACE`, as [`RawRegion::map`]).
    pub fn map_file(start: u64, end: u64, fd: i32, offset: u64, noreserve: bool) -> io::Result<RawRegion> {
        RawRegion::map_private(start, end, 0, noreserve, fd, offset)
    }

    /// `mmap(MAP_PRIVATE | MAP_FIXED_NOREPLACE | flags)` of `start..end`, read+write.
    fn map_private(start: u64, end: u64, flags: i32, noreserve: bool, fd: i32, offset: u64) -> io::Result<RawRegion> {
        let page = page_size();
        if !start.is_multiple_of(page) || !end.is_multiple_of(page) || end <= start || !offset.is_multiple_of(page) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let flags =
            libc::MAP_PRIVATE | libc::MAP_FIXED_NOREPLACE | flags | if noreserve { libc::MAP_NORESERVE } else { 0 };
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping, so no memory Rust
        // uses is affected; the new range is only written through the kernel.
        let p = unsafe {
            libc::mmap(
                start as *mut libc::c_void,
                (end - start) as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        if p as u64 != start {
            // An old kernel that ignored NOREPLACE: give the address back.
            // SAFETY: the kernel just created this mapping for us; nothing references it.
            unsafe { libc::munmap(p, (end - start) as usize) };
            return Err(io::Error::from_raw_os_error(libc::EEXIST));
        }
        Ok(RawRegion { start, end })
    }

    pub fn start(&self) -> u64 {
        self.start
    }

    pub fn end(&self) -> u64 {
        self.end
    }

    fn check(&self, addr: u64, len: u64) -> io::Result<()> {
        match addr.checked_add(len) {
            Some(e) if addr >= self.start && e <= self.end => Ok(()),
            _ => Err(io::Error::from_raw_os_error(libc::EFAULT)),
        }
    }

    /// Fill `addr..addr+len` (inside the region) from `fd` at offset `off`; a file that ends
    /// first is an error (UnexpectedEof).
    pub fn read_from(&self, fd: i32, addr: u64, len: u64, off: u64) -> io::Result<()> {
        self.check(addr, len)?;
        let mut done = 0u64;
        while done < len {
            // SAFETY: the destination lies inside the region (checked), which this process
            // mapped writable and no Rust reference points into.
            let n = unsafe {
                libc::pread64(fd, (addr + done) as *mut libc::c_void, (len - done) as usize, (off + done) as i64)
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            done += n as u64;
        }
        Ok(())
    }

    /// Drop the pages of `addr..addr+len` (inside the region): they read as zeros again.
    pub fn zero(&self, addr: u64, len: u64) -> io::Result<()> {
        self.check(addr, len)?;
        // SAFETY: private memory of the region (anonymous: it reads zeros again; of a file: the
        // file's bytes again), referenced by no Rust code.
        cvt_i(unsafe { libc::madvise(addr as *mut libc::c_void, len as usize, libc::MADV_DONTNEED) }).map(drop)
    }

    /// Copy `bytes` to `addr` (inside the region).
    pub fn write(&self, addr: u64, bytes: &[u8]) -> io::Result<()> {
        self.check(addr, bytes.len() as u64)?;
        // SAFETY: the destination lies inside the region (checked), which this process mapped
        // read+write and no Rust reference points into; `bytes` is ordinary memory outside it
        // (a Rust slice cannot point into the region, see the type's documentation).
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len()) };
        Ok(())
    }

    /// Copy `buf.len()` bytes from `addr` (inside the region) into `buf`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check(addr, buf.len() as u64)?;
        // SAFETY: the source lies inside the region (checked), mapped readable by this process
        // and written only through this type or the kernel; `buf` is outside it.
        unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }

    /// Make `addr..addr+len` (inside the region, 2 MiB aligned) transparent huge pages now
    /// (`MADV_COLLAPSE`, Linux 6.1), whatever the system's THP setting; the mapping's flags do
    /// not change. The content is the same.
    pub fn collapse(&self, addr: u64, len: u64) -> io::Result<()> {
        const MADV_COLLAPSE: i32 = 25;
        self.check(addr, len)?;
        // SAFETY: the range is inside the region (checked); collapsing keeps its content.
        cvt_i(unsafe { libc::madvise(addr as *mut libc::c_void, len as usize, MADV_COLLAPSE) }).map(drop)
    }

    /// Whether `addr..addr+len` lies inside the region.
    pub fn holds(&self, addr: u64, len: u64) -> bool {
        self.check(addr, len).is_ok()
    }

    /// Cut the region in two at `at` (page aligned, strictly inside); the mapping is unchanged.
    pub fn split(self, at: u64) -> Result<(RawRegion, RawRegion), RawRegion> {
        if at <= self.start || at >= self.end || !at.is_multiple_of(page_size()) {
            return Err(self);
        }
        Ok((RawRegion { start: self.start, end: at }, RawRegion { start: at, end: self.end }))
    }

    /// One region of two that touch (`self` ending where `next` starts); the mappings are
    /// unchanged.
    pub fn join(self, next: RawRegion) -> Result<RawRegion, (RawRegion, RawRegion)> {
        if self.end != next.start {
            return Err((self, next));
        }
        Ok(RawRegion { start: self.start, end: next.end })
    }

    /// The same range mapped anew with `MAP_NORESERVE` (no commit charge: smaps VmFlags `nr`
    /// and not `ac`, which no call can change on an existing mapping), holding the bytes the
    /// region has in `keep` (page-aligned ranges inside it) and zeros elsewhere. The pages are
    /// moved, not copied (`UFFDIO_MOVE`, Linux 6.8: page-table entries only, whole 2 MiB huge
    /// pages included); those the kernel cannot move (an older kernel, a page shared or
    /// pinned) are copied. Returns the new region and the bytes copied. On an error nothing of
    /// either mapping is left.
    pub fn renew_noreserve(self, keep: &[(u64, u64)]) -> io::Result<(RawRegion, u64)> {
        const PMD: u64 = 2 << 20;
        let (start, len) = (self.start, self.end - self.start);
        if keep.iter().any(|&(a, b)| a < self.start || b > self.end || a > b) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // 1. The pages step aside, to an address at the same offset in a 2 MiB chunk (so that
        //    huge pages move whole): a reservation with room for the alignment, then mremap.
        let resv_len = len + PMD;
        // SAFETY: a new mapping at an address the kernel chooses; nothing references it.
        let resv = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                resv_len as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if resv == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            let _ = self.unmap();
            return Err(e);
        }
        let resv = resv as u64;
        let aside = resv + (start % PMD + PMD - resv % PMD) % PMD;
        // SAFETY: moves this region (referenced by no Rust code) over part of the reservation
        // just made (MREMAP_FIXED replaces only that).
        let p = unsafe {
            libc::mremap(
                start as *mut libc::c_void,
                len as usize,
                len as usize,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                aside as *mut libc::c_void,
            )
        };
        if p == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            // SAFETY: the reservation just made (PROT_NONE, never referenced).
            unsafe { libc::munmap(resv as *mut libc::c_void, resv_len as usize) };
            let _ = self.unmap();
            return Err(e);
        }
        for (a, b) in [(resv, aside), (aside + len, resv + resv_len)] {
            if b > a {
                // SAFETY: what is left of the reservation (PROT_NONE, never referenced).
                unsafe { libc::munmap(a as *mut libc::c_void, (b - a) as usize) };
            }
        }
        let aside = RawRegion { start: aside, end: aside + len };
        // 2. The new mapping where the region was.
        let new = match RawRegion::map(start, start + len, false, true) {
            Ok(r) => r,
            Err(e) => {
                let _ = aside.unmap();
                return Err(e);
            }
        };
        // 3. The pages move in (the target of UFFDIO_MOVE must be registered with the uffd).
        let mut left: Vec<(u64, u64)> = keep.iter().copied().filter(|r| r.1 > r.0).collect();
        let uffd = crate::uffd::own().and_then(|u| {
            crate::uffd::api(u.as_fd(), crate::uffd::UFFD_FEATURE_MOVE)?;
            crate::uffd::register(u.as_fd(), start, len, crate::uffd::UFFDIO_REGISTER_MODE_MISSING)?;
            Ok(u)
        });
        if let Ok(u) = &uffd {
            let mut rest = Vec::new();
            for &(a, b) in &left {
                let mut at = a;
                while at < b {
                    let (n, err) = crate::uffd::move_pages(u.as_fd(), at, at - start + aside.start, b - at);
                    at += n;
                    match err {
                        None => {}
                        Some(e) if e.raw_os_error() == Some(libc::EAGAIN) => {}
                        Some(_) => {
                            rest.push((at, b));
                            break;
                        }
                    }
                }
            }
            left = rest;
        }
        // (closing the uffd unregisters the range: a write to it no longer waits for a reader)
        drop(uffd);
        // 4. What did not move is copied.
        let mut copied = 0;
        for &(a, b) in &left {
            // SAFETY: both ranges lie in regions this function owns, mapped read+write, which
            // no Rust reference points into; they do not overlap (different addresses, same
            // length).
            unsafe {
                std::ptr::copy_nonoverlapping((a - start + aside.start) as *const u8, a as *mut u8, (b - a) as usize)
            };
            copied += b - a;
        }
        let _ = aside.unmap();
        Ok((new, copied))
    }

    /// Unmap the region.
    pub fn unmap(self) -> io::Result<()> {
        // SAFETY: the region is ours and nothing references it; `self` is consumed.
        cvt_i(unsafe { libc::munmap(self.start as *mut libc::c_void, (self.end - self.start) as usize) }).map(drop)
    }
}

/// `cpuid` leaf 0xD, sub-leaf `component` — the (size, offset) of that XSAVE state component in
/// the standard (non-compacted) format user space and signal frames use (Intel SDM vol. 1
/// §13.2). `None` for the legacy components 0 and 1 or one the CPU does not describe.
pub fn xsave_component(component: u32) -> Option<(u32, u32)> {
    if !(2..63).contains(&component) {
        return None;
    }
    // SAFETY: cpuid is available on every x86-64 CPU and only reads CPU information; leaf 0xD
    // exists wherever XSAVE does, and a component it does not know reads back as zeros.
    #[allow(unused_unsafe)]
    let r = unsafe { std::arch::x86_64::__cpuid_count(0xd, component) };
    (r.eax != 0).then_some((r.eax, r.ebx))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: u64 = 4096;

    /// A fresh private anonymous read+write mapping of `len` bytes, 2 MiB aligned plus one page
    /// (so that it holds a whole aligned 2 MiB chunk and ends that are not aligned).
    fn region(len: u64) -> RawRegion {
        let pmd = 2 << 20;
        // SAFETY: a new mapping at an address the kernel chooses; nothing references it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                (len + 2 * pmd) as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let start = (p as u64).next_multiple_of(pmd) + PAGE;
        let whole = RawRegion { start: p as u64, end: p as u64 + len + 2 * pmd };
        let (head, rest) = whole.split(start).unwrap();
        let (mine, tail) = rest.split(start + len).unwrap();
        head.unmap().unwrap();
        tail.unmap().unwrap();
        mine
    }

    fn page_of(r: &RawRegion, addr: u64) -> Vec<u8> {
        let mut buf = vec![0u8; PAGE as usize];
        r.read(addr, &mut buf).unwrap();
        buf
    }

    fn pattern(addr: u64) -> Vec<u8> {
        (0..PAGE).map(|i| ((addr / PAGE).wrapping_mul(31) ^ i) as u8 | 1).collect()
    }

    /// The bounds and VmFlags of the mapping holding `addr` (this process's smaps).
    fn flags_at(addr: u64) -> (u64, u64, Vec<String>) {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut cur = None;
        for l in smaps.lines() {
            if let Some(f) = l.strip_prefix("VmFlags:") {
                if let Some((a, b)) = cur.take() {
                    return (a, b, f.split_whitespace().map(str::to_string).collect());
                }
            } else if let Some((a, b)) = l.split_whitespace().next().and_then(|r| r.split_once('-')) {
                if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                    cur = (a <= addr && addr < b).then_some((a, b));
                }
            }
        }
        panic!("no mapping at {addr:#x}");
    }

    /// Renew a filled region keeping `keep`, with `share` forked into a child that keeps the
    /// pages shared (UFFDIO_MOVE refuses those: they are copied); check bytes and flags.
    fn renew_and_check(share: bool) -> (u64, u64) {
        // (one at a time: the child forked by one would share the other's pages too)
        static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
        let len = (4 << 20) + 3 * PAGE;
        let r = region(len);
        let s = r.start();
        let mut p = s;
        while p < r.end() {
            r.write(p, &pattern(p)).unwrap();
            p += PAGE;
        }
        let chunk = (s + (2 << 20)) & !((2 << 20) - 1);
        let _ = r.collapse(chunk, 2 << 20); // (a huge page, moved whole, where THP exists)
        let keep = [(s, s + PAGE), (s + 3 * PAGE, chunk + (2 << 20) + PAGE), (r.end() - PAGE, r.end())];
        let mut child = None;
        if share {
            let mut fds = [0i32; 2];
            // SAFETY: `fds` has room for the two descriptors.
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
            // SAFETY: the child only calls read(2) and _exit(2) (async-signal-safe).
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                let mut b = [0u8; 1];
                // SAFETY: reads one byte into `b`, then leaves without running any Rust code.
                unsafe {
                    libc::read(fds[0], b.as_mut_ptr().cast(), 1);
                    libc::_exit(0)
                }
            }
            assert!(pid > 0);
            child = Some((pid, fds));
        }
        let (n, copied) = r.renew_noreserve(&keep).unwrap();
        if let Some((pid, fds)) = child {
            // SAFETY: plain fd and pid arguments of our own pipe and child.
            unsafe {
                libc::write(fds[1], b"x".as_ptr().cast(), 1);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
                libc::close(fds[0]);
                libc::close(fds[1]);
            }
        }
        assert_eq!((n.start(), n.end()), (s, s + len));
        let mut p = s;
        while p < n.end() {
            let kept = keep.iter().any(|&(a, b)| a <= p && p < b);
            let want = if kept { pattern(p) } else { vec![0u8; PAGE as usize] };
            assert!(page_of(&n, p) == want, "page {:#x} (kept: {kept})", p - s);
            p += PAGE;
        }
        let (a, b, flags) = flags_at(s);
        assert!(a <= s && b >= s + len, "{a:#x}-{b:#x}");
        assert!(flags.iter().any(|f| f == "nr") && !flags.iter().any(|f| f == "ac"), "{flags:?}");
        assert!(!flags.iter().any(|f| f.starts_with('u')), "still registered: {flags:?}");
        n.unmap().unwrap();
        (copied, keep.iter().map(|r| r.1 - r.0).sum())
    }

    #[test]
    fn renew_noreserve_moves_the_kept_pages() {
        assert_eq!(renew_and_check(false).0, 0, "pages copied, not moved");
    }

    #[test]
    fn renew_noreserve_copies_pages_it_cannot_move() {
        // (every page is shared with the child: none moves)
        let (copied, kept) = renew_and_check(true);
        assert_eq!(copied, kept);
    }
}
