//! Cross-process access: memory, file descriptors, limits, and `clone3` with chosen PIDs.

use crate::consts::PmScanArg;
use crate::{cvt, cvt_i};
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `process_vm_readv(2)` — copy `buf.len()` bytes from `addr` in `pid` into `buf`.
/// Returns the number of bytes read (short on an unmapped or unreadable page).
pub fn vm_read(pid: i32, addr: u64, buf: &mut [u8]) -> io::Result<usize> {
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: `local` describes memory we exclusively borrow; `remote` is only interpreted
    // by the kernel in the other process's address space.
    let r = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    cvt(r as libc::c_long).map(|n| n as usize)
}

/// `process_vm_writev(2)` — copy `buf` to `addr` in `pid`. Returns bytes written.
pub fn vm_write(pid: i32, addr: u64, buf: &[u8]) -> io::Result<usize> {
    let local = libc::iovec { iov_base: buf.as_ptr() as *mut libc::c_void, iov_len: buf.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: `local` describes memory we borrow for reading only; `remote` lives in the
    // other process.
    let r = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
    cvt(r as libc::c_long).map(|n| n as usize)
}

/// `pidfd_open(2)` — a pidfd referring to `pid`.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) })?;
    // SAFETY: the kernel just returned this fd to us; we are its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_open(2)` with `flags` (`PIDFD_NONBLOCK` = O_NONBLOCK, `PIDFD_THREAD` = O_EXCL).
pub fn pidfd_open_flags(pid: i32, flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) })?;
    // SAFETY: the kernel just returned this fd to us; we are its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// A pidfd (opened with `flags`) of a process that has exited and was reaped: a child forked
/// for the purpose, which exits at once, is opened while it is a zombie, then reaped.
pub fn dead_pidfd(flags: u32) -> io::Result<OwnedFd> {
    match fork()? {
        Fork::Child => crate::raw::exit_now(0),
        Fork::Parent(pid) => {
            let r = pidfd_open_flags(pid, flags);
            let mut status = 0;
            // SAFETY: `status` is a valid int; `pid` is our own child.
            let w = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
            let fd = r?;
            crate::cvt_i(w)?;
            Ok(fd)
        }
    }
}

/// `pidfd_getfd(2)` — duplicate file descriptor `targetfd` of the process behind `pidfd`.
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, targetfd: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), targetfd, 0) })?;
    // SAFETY: the kernel just returned this fd to us; we are its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `kcmp(2)` — compare a kernel object of two processes; 0 means the same object.
pub fn kcmp(pid1: i32, pid2: i32, kind: i32, idx1: u64, idx2: u64) -> io::Result<i32> {
    // SAFETY: plain integer arguments.
    cvt(unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, kind, idx1, idx2) }).map(|r| r as i32)
}

/// `kcmp(KCMP_EPOLL_TFD)`: 0 when fd `fd1` of `pid1` is the file registered as target `tfd`
/// (the `toff`-th registration of that fd number) in epoll fd `efd` of `pid2`.
pub fn kcmp_epoll_target(pid1: i32, pid2: i32, fd1: i32, efd: i32, tfd: i32, toff: u32) -> io::Result<i32> {
    let slot: [u32; 3] = [efd as u32, tfd as u32, toff];
    // SAFETY: `slot` is a valid struct kcmp_epoll_slot that outlives the call.
    cvt(unsafe { libc::syscall(libc::SYS_kcmp, pid1, pid2, 7, fd1 as u64, slot.as_ptr() as u64) }).map(|r| r as i32)
}

/// `prlimit64(2)` write — set the (soft, hard) limit of `resource` in `pid`.
pub fn set_rlimit(pid: i32, resource: u32, soft: u64, hard: u64) -> io::Result<()> {
    let new = libc::rlimit64 { rlim_cur: soft, rlim_max: hard };
    // SAFETY: `new` is a valid pointer; old limit is null.
    cvt_i(unsafe { libc::prlimit64(pid, resource as _, &new, std::ptr::null_mut()) }).map(drop)
}

/// How many more fds this process can open: the free numbers below its soft `RLIMIT_NOFILE`
/// (the numbers in /proc/self/fd below it are taken).
pub fn fd_room() -> io::Result<usize> {
    // SAFETY: rlimit64 is plain integers; all-zero is valid.
    let mut lim: libc::rlimit64 = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is a valid out-pointer; no new limit is given.
    cvt_i(unsafe { libc::prlimit64(0, libc::RLIMIT_NOFILE, std::ptr::null(), &mut lim) })?;
    let soft = lim.rlim_cur.min(i32::MAX as u64) as usize;
    let taken = std::fs::read_dir("/proc/self/fd")?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<usize>().ok())
        .filter(|&fd| fd < soft)
        .count();
    // (the directory's own fd was among them while it was read)
    Ok(soft.saturating_sub(taken.saturating_sub(1)))
}

/// `get_robust_list(2)` — (head, len) of the robust futex list of thread `tid`.
pub fn get_robust_list(tid: i32) -> io::Result<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: usize = 0;
    // SAFETY: both out-pointers are valid for the call.
    cvt(unsafe { libc::syscall(libc::SYS_get_robust_list, tid, &mut head, &mut len) })?;
    Ok((head, len as u64))
}

/// `kill(2)`.
pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: plain integer arguments.
    cvt_i(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// `kill(pid, SIGKILL)`, then `waitpid` until child `pid` is gone (past the stops a tracer
/// sees): for a helper or stand-in that failed midway. Errors are ignored (it may be gone).
pub fn kill_and_reap(pid: i32) {
    use crate::ptrace::WaitStatus;
    let _ = kill(pid, libc::SIGKILL);
    while let Ok(Some((_, WaitStatus::Stopped { .. } | WaitStatus::Continued))) = crate::ptrace::wait(pid, false) {}
}

// (Defined below this module, in raw.rs, which needs it too.)
pub use crate::raw::page_size;

/// Result of [`clone3_with_pid`].
pub enum Fork {
    Parent(i32),
    Child,
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// `clone3(2)` with `set_tid` — fork this process so the child gets exactly PID `pid`
/// (in the caller's PID namespace), like `fork()` otherwise (SIGCHLD on exit).
///
/// The child must not rely on glibc's cached thread id (raise(), pthread_self()->tid ...);
/// use raw syscalls there. The caller must be single-threaded.
pub fn clone3_with_pid(pid: i32) -> io::Result<Fork> {
    clone3_with_pid_flags(pid, 0)
}

/// [`clone3_with_pid`] with clone flags: `CLONE_FILES` (the child shares the caller's fd table)
/// is the one ferry uses. Flags that share the address space (`CLONE_VM`) must not be given.
pub fn clone3_with_pid_flags(pid: i32, flags: u64) -> io::Result<Fork> {
    if flags & (libc::CLONE_VM as u64 | libc::CLONE_VFORK as u64) != 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let tid = [pid];
    let args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        set_tid: tid.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // SAFETY: without CLONE_VM the child gets a copy of our address space, so continuing on
    // the same stack is fine (this is what fork() does); `args` and `tid` outlive the call.
    let r =
        cvt(unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) })?;
    Ok(if r == 0 { Fork::Child } else { Fork::Parent(r as i32) })
}

/// `setgroups(groups)`, `setresgid(gid, gid, gid)`, `setresuid(uid, uid, uid)` as raw
/// syscalls, keeping the capabilities (`SECBIT_NO_SETUID_FIXUP` first): only the calling
/// thread changes (glibc's wrappers would signal every thread it knows of, which in a child
/// forked from a threaded process do not exist).
pub fn set_ids_raw(uid: u32, gid: u32, groups: &[u32]) -> io::Result<()> {
    const PR_SET_SECUREBITS: i32 = 28;
    const SECBIT_NO_SETUID_FIXUP: u64 = 1 << 2;
    // SAFETY: integer arguments.
    cvt(unsafe { libc::syscall(libc::SYS_prctl, PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP, 0, 0, 0) })?;
    // SAFETY: `groups` is valid for reads of `groups.len()` gid_t (u32) values.
    cvt(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) })?;
    // SAFETY: integer arguments.
    cvt(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) })?;
    // SAFETY: integer arguments.
    cvt(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) }).map(drop)
}

/// [`clone3_with_pid_flags`] with a pid at several levels of nested pid namespaces: `tids[0]`
/// in the innermost (the caller's, or with `CLONE_NEWPID` the new one, where it must be 1),
/// then one per enclosing namespace, outwards (`set_tid` as clone3(2) takes it).
pub fn clone3_with_pids(tids: &[i32], flags: u64) -> io::Result<Fork> {
    if flags & (libc::CLONE_VM as u64 | libc::CLONE_VFORK as u64) != 0 || tids.is_empty() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        set_tid: tids.as_ptr() as u64,
        set_tid_size: tids.len() as u64,
        ..Default::default()
    };
    // SAFETY: as in clone3_with_pid_flags: no CLONE_VM, so the child runs on its own copy of
    // the stack; `args` and `tids` (set_tid_size entries) outlive the call.
    let r =
        cvt(unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) })?;
    Ok(if r == 0 { Fork::Child } else { Fork::Parent(r as i32) })
}

/// `clone3(flags)` without a chosen pid. Same caveats as [`clone3_with_pid`].
fn clone3_flags(flags: u64) -> io::Result<Fork> {
    let args = CloneArgs { flags, exit_signal: libc::SIGCHLD as u64, ..Default::default() };
    // SAFETY: as in clone3_with_pid: no CLONE_VM, so the child runs on its own copy of the stack.
    let r =
        cvt(unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) })?;
    Ok(if r == 0 { Fork::Child } else { Fork::Parent(r as i32) })
}

/// `clone3(CLONE_PARENT | flags)`, with the child's pid chosen (`set_tid`) when `pid` is given:
/// the child is a sibling of the caller, a child of the caller's parent (CRIU's `rst_sibling`,
/// for an RPC client that waits for the restored process). Same caveats as [`clone3_with_pid`].
pub fn clone3_sibling(pid: Option<i32>, flags: u64) -> io::Result<Fork> {
    let tid = [pid.unwrap_or(0)];
    let args = CloneArgs {
        flags: flags | libc::CLONE_PARENT as u64,
        // (clone3 wants 0 here with CLONE_PARENT: the child takes the caller's own exit signal,
        // SIGCHLD for a process its parent forked.)
        exit_signal: 0,
        set_tid: if pid.is_some() { tid.as_ptr() as u64 } else { 0 },
        set_tid_size: u64::from(pid.is_some()),
        ..Default::default()
    };
    // SAFETY: as in clone3_with_pid: no CLONE_VM, so the child runs on its own copy of the
    // stack; `args` and `tid` outlive the call.
    let r =
        cvt(unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) })?;
    Ok(if r == 0 { Fork::Child } else { Fork::Parent(r as i32) })
}

/// A child process that runs `child` and exits with the code it returns: with pid `pid` when
/// given ([`clone3_with_pid_flags`], which says which `flags` may be given: `CLONE_FILES` to
/// share the caller's fd table), else any. Returns its pid; the caller reaps it. `child` runs in
/// a copy of a process that may have other threads: raw syscalls only (no allocation, no lock,
/// no logging).
pub fn spawn_raw(pid: Option<i32>, flags: u64, child: &mut dyn FnMut() -> i32) -> io::Result<i32> {
    let forked = match pid {
        Some(p) => clone3_with_pid_flags(p, flags)?,
        None => clone3_flags(flags)?,
    };
    match forked {
        Fork::Child => crate::raw::exit_now(child()),
        Fork::Parent(c) => Ok(c),
    }
}

/// A stand-in process: a child ([`spawn_raw`], with pid `pid` when given) that only waits, in
/// `pause()`, to be killed, and dies with its parent (`PR_SET_PDEATHSIG`). Restore sends queued
/// unix messages "from" it when their sender is gone (the kernel takes only an existing pid in
/// SCM_CREDENTIALS), then kills and reaps it.
pub fn stand_in(pid: Option<i32>) -> io::Result<i32> {
    spawn_raw(pid, 0, &mut || loop {
        // SAFETY: prctl and pause take plain integers and touch no memory of ours.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
            libc::pause();
        }
    })
}

/// A plain `fork()` through clone3.
pub fn fork() -> io::Result<Fork> {
    clone3_flags(0)
}

/// `clone3(CLONE_NEWPID)`: the child is pid 1 of a new pid namespace (`ferry run --pidns`, and
/// the restore of such a namespace's init).
pub fn clone3_new_pidns() -> io::Result<Fork> {
    clone3_flags(libc::CLONE_NEWPID as u64)
}

/// A read-only, shared mapping of a whole file, for handing page data to the kernel without an
/// extra copy.
pub struct Mmap {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mmap {
    /// `mmap(2)` `len` bytes of `fd` from offset 0, read-only and shared.
    pub fn map_readonly(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mmap> {
        if len == 0 {
            return Ok(Mmap { ptr: std::ptr::NonNull::dangling().as_ptr(), len: 0 });
        }
        // SAFETY: a fresh mapping chosen by the kernel; nothing else aliases it.
        let ptr =
            unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, fd.as_raw_fd(), 0) };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mmap { ptr, len })
    }

    /// The mapped bytes. The file must not be truncated while mapped (ferry's own image files).
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len is a live PROT_READ mapping owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.len) }
    }

    /// `madvise(MADV_SEQUENTIAL | MADV_WILLNEED)` hint for a range.
    pub fn advise_sequential(&self) {
        if self.len > 0 {
            // SAFETY: advisory call on our own mapping.
            unsafe {
                libc::madvise(self.ptr, self.len, libc::MADV_SEQUENTIAL);
            }
        }
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmapping the mapping we own; no references outlive self.
            unsafe {
                libc::munmap(self.ptr, self.len);
            }
        }
    }
}

// SAFETY: the mapping is read-only and owned; sharing &[u8] views across threads is fine.
unsafe impl Send for Mmap {}
// SAFETY: see above.
unsafe impl Sync for Mmap {}

/// `open(2)` with raw flags (the flags a checkpointed fd had) and mode.
pub fn open_raw(path: &CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: path is a valid NUL-terminated string.
    let fd = cvt_i(unsafe { libc::open(path.as_ptr(), flags, mode) })?;
    // SAFETY: fresh fd owned by us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pipe2(2)` — (read end, write end).
pub fn pipe2(flags: i32) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid two-int array.
    cvt_i(unsafe { libc::pipe2(fds.as_mut_ptr(), flags) })?;
    // SAFETY: two fresh fds owned by us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `tee(2)` — copy up to `len` bytes from pipe `from` into pipe `to` without consuming them.
pub fn tee(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize, nonblock: bool) -> io::Result<usize> {
    let flags = if nonblock { libc::SPLICE_F_NONBLOCK } else { 0 };
    // SAFETY: plain fds and integers.
    let r = unsafe { libc::tee(from.as_raw_fd(), to.as_raw_fd(), len, flags) };
    cvt(r as libc::c_long).map(|n| n as usize)
}

/// `fcntl(F_GETPIPE_SZ)`.
pub fn pipe_size(fd: BorrowedFd<'_>) -> io::Result<usize> {
    // SAFETY: plain fd and command.
    cvt_i(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) }).map(|n| n as usize)
}

/// `fcntl(F_SETPIPE_SZ)`.
pub fn set_pipe_size(fd: BorrowedFd<'_>, size: usize) -> io::Result<()> {
    // SAFETY: plain fd and integers.
    cvt_i(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) }).map(drop)
}

/// `fcntl(F_GETFL)`.
pub fn status_flags(fd: BorrowedFd<'_>) -> io::Result<i32> {
    // SAFETY: plain fd and command.
    cvt_i(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })
}

/// `fcntl(F_SETFL)`.
pub fn set_status_flags(fd: BorrowedFd<'_>, flags: i32) -> io::Result<()> {
    // SAFETY: plain fd and integers.
    cvt_i(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags) }).map(drop)
}

/// `fstat(2)`.
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat64> {
    // SAFETY: zeroed stat is a valid value to be overwritten.
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: st is a valid out-pointer.
    cvt_i(unsafe { libc::fstat64(fd.as_raw_fd(), &mut st) })?;
    Ok(st)
}

/// One region reported by `PAGEMAP_SCAN`: pages `start..end` all having `categories`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct PageRegion {
    pub start: u64,
    pub end: u64,
    pub categories: u64,
}

/// PAGEMAP_SCAN page categories (linux/fs.h).
pub mod page_is {
    pub const WPALLOWED: u64 = 1 << 0;
    pub const WRITTEN: u64 = 1 << 1;
    pub const FILE: u64 = 1 << 2;
    pub const PRESENT: u64 = 1 << 3;
    pub const SWAPPED: u64 = 1 << 4;
    pub const PFNZERO: u64 = 1 << 5;
    pub const HUGE: u64 = 1 << 6;
}

const PAGEMAP_SCAN: libc::c_ulong = 0xC060_6610;

/// `ioctl(PAGEMAP_SCAN)` on an open `/proc/PID/pagemap` — the regions of `start..end` that
/// have any of `anyof` categories, each with its categories masked by `ret_mask`. Scans the
/// whole range, in as many calls as needed.
pub fn pagemap_scan(
    pagemap: BorrowedFd<'_>,
    start: u64,
    end: u64,
    anyof: u64,
    ret_mask: u64,
) -> io::Result<Vec<PageRegion>> {
    let mut out: Vec<PageRegion> = Vec::new();
    let mut cur = start;
    let mut buf = vec![PageRegion { start: 0, end: 0, categories: 0 }; 512];
    while cur < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            start: cur,
            end,
            vec: buf.as_mut_ptr() as u64,
            vec_len: buf.len() as u64,
            category_anyof_mask: anyof,
            return_mask: ret_mask,
            ..Default::default()
        };
        // SAFETY: `arg` is a valid pm_scan_arg; `vec` points to `vec_len` writable
        // page_region entries (PageRegion is repr(C)-compatible: three u64).
        let n = cvt_i(unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg as *mut PmScanArg) })?;
        for r in &buf[..n as usize] {
            match out.last_mut() {
                Some(last) if last.end == r.start && last.categories == r.categories => last.end = r.end,
                _ => out.push(*r),
            }
        }
        if arg.walk_end <= cur {
            break;
        }
        cur = arg.walk_end;
    }
    Ok(out)
}

/// Whether `start..end` has at least one page with any of the `anyof` categories
/// (`PAGEMAP_SCAN` stopping at the first such page, `max_pages` 1): cheap where the range is
/// populated from its start, or has no page tables at all.
pub fn pagemap_any(pagemap: BorrowedFd<'_>, start: u64, end: u64, anyof: u64) -> io::Result<bool> {
    let mut buf = [PageRegion { start: 0, end: 0, categories: 0 }; 1];
    let mut arg = PmScanArg {
        size: std::mem::size_of::<PmScanArg>() as u64,
        start,
        end,
        vec: buf.as_mut_ptr() as u64,
        vec_len: 1,
        max_pages: 1,
        category_anyof_mask: anyof,
        return_mask: anyof,
        ..Default::default()
    };
    // SAFETY: `arg` is a valid pm_scan_arg; `vec` points to one writable page_region entry.
    let n = cvt_i(unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg as *mut PmScanArg) })?;
    Ok(n > 0)
}

/// `getpriority(PRIO_PROCESS, pid)` — the nice value.
pub fn get_nice(pid: i32) -> io::Result<i32> {
    // SAFETY: errno is reset first so a legitimate -1 can be told from an error.
    unsafe {
        *libc::__errno_location() = 0;
        let r = libc::getpriority(libc::PRIO_PROCESS, pid as libc::id_t);
        if r == -1 && *libc::__errno_location() != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(r)
    }
}

/// `setpriority(PRIO_PROCESS, pid, nice)`.
pub fn set_nice(pid: i32, nice: i32) -> io::Result<()> {
    // SAFETY: integer arguments.
    cvt_i(unsafe { libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, nice) }).map(drop)
}

/// `sched_getaffinity(2)` — the CPU mask as raw bytes.
pub fn get_affinity(pid: i32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 128];
    // SAFETY: buf is valid for buf.len() bytes; the raw syscall returns the bytes written.
    let n = cvt(unsafe { libc::syscall(libc::SYS_sched_getaffinity, pid, buf.len(), buf.as_mut_ptr()) })?;
    buf.truncate(n as usize);
    Ok(buf)
}

/// Bytes free for an unprivileged user on the file system holding `path` (`statvfs(3)`).
pub fn free_space(path: &std::path::Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c =
        std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: zeroed is a valid statvfs; `c` is a NUL-terminated path; `st` is a valid out-pointer.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    cvt_i(unsafe { libc::statvfs(c.as_ptr(), &mut st) })?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// `poll(2)` for input on `fds` for at most `timeout_ms` (-1: no limit): which are readable
/// (or hung up, or in error: a read then tells).
pub fn poll_readable(fds: &[BorrowedFd<'_>], timeout_ms: i32) -> io::Result<Vec<bool>> {
    let mut p: Vec<libc::pollfd> =
        fds.iter().map(|f| libc::pollfd { fd: f.as_raw_fd(), events: libc::POLLIN, revents: 0 }).collect();
    // SAFETY: `p` holds `p.len()` valid pollfd entries for the duration of the call.
    let r = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(e);
    }
    Ok(p.iter().map(|x| x.revents != 0).collect())
}

/// The CPU the calling thread runs on (`sched_getcpu(3)`).
pub fn current_cpu() -> Option<usize> {
    // SAFETY: no arguments.
    let c = unsafe { libc::sched_getcpu() };
    usize::try_from(c).ok()
}

/// A raw CPU mask (as [`set_affinity`] takes it) naming CPU `cpu` only.
pub fn one_cpu_mask(cpu: usize) -> Vec<u8> {
    let mut m = vec![0u8; (cpu / 64 + 1) * 8];
    m[cpu / 8] |= 1 << (cpu % 8);
    m
}

/// `sched_setaffinity(2)` with a raw CPU mask.
pub fn set_affinity(pid: i32, mask: &[u8]) -> io::Result<()> {
    // SAFETY: mask is valid for mask.len() bytes.
    cvt(unsafe { libc::syscall(libc::SYS_sched_setaffinity, pid, mask.len(), mask.as_ptr()) }).map(drop)
}

/// `sched_getscheduler(2)` + `sched_getparam(2)` — (policy, static priority).
pub fn get_scheduler(pid: i32) -> io::Result<(i32, i32)> {
    // SAFETY: integer argument.
    let policy = cvt_i(unsafe { libc::sched_getscheduler(pid) })?;
    let mut p = libc::sched_param { sched_priority: 0 };
    // SAFETY: p is a valid out-pointer.
    cvt_i(unsafe { libc::sched_getparam(pid, &mut p) })?;
    Ok((policy, p.sched_priority))
}

/// `sched_setscheduler(2)`.
pub fn set_scheduler(pid: i32, policy: i32, priority: i32) -> io::Result<()> {
    let p = libc::sched_param { sched_priority: priority };
    // SAFETY: p is a valid pointer.
    cvt_i(unsafe { libc::sched_setscheduler(pid, policy, &p) }).map(drop)
}

/// `eventfd(2)` with an initial counter and `EFD_*` flags.
pub fn eventfd(count: u32, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments.
    let fd = cvt_i(unsafe { libc::eventfd(count, flags) })?;
    // SAFETY: fresh fd owned by us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `timerfd_create(2)`.
pub fn timerfd_create(clockid: i32, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments.
    let fd = cvt_i(unsafe { libc::timerfd_create(clockid, flags) })?;
    // SAFETY: fresh fd owned by us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `timerfd_settime(2)` with relative (`flags` 0) or absolute times in nanoseconds.
pub fn timerfd_settime(fd: BorrowedFd<'_>, flags: i32, value_ns: u64, interval_ns: u64) -> io::Result<()> {
    let ts = |ns: u64| libc::timespec { tv_sec: (ns / 1_000_000_000) as i64, tv_nsec: (ns % 1_000_000_000) as i64 };
    let its = libc::itimerspec { it_interval: ts(interval_ns), it_value: ts(value_ns) };
    // SAFETY: its is a valid pointer; the old value is not requested.
    cvt_i(unsafe { libc::timerfd_settime(fd.as_raw_fd(), flags, &its, std::ptr::null_mut()) }).map(drop)
}

/// `timerfd_gettime(2)` — (remaining time, interval) in nanoseconds. On a periodic timer that
/// expired, the kernel first moves it to its next expiration and counts the missed ones in its
/// ticks (as a `read` would find them).
pub fn timerfd_gettime(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let mut its = libc::itimerspec {
        it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
        it_value: libc::timespec { tv_sec: 0, tv_nsec: 0 },
    };
    // SAFETY: its is a valid, writable itimerspec.
    cvt_i(unsafe { libc::timerfd_gettime(fd.as_raw_fd(), &mut its) })?;
    let ns = |t: libc::timespec| t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64;
    Ok((ns(its.it_value), ns(its.it_interval)))
}

/// `ioctl(TFD_IOC_SET_TICKS)` — set the number of expirations not yet read (CONFIG_CHECKPOINT_RESTORE).
pub fn timerfd_set_ticks(fd: BorrowedFd<'_>, ticks: u64) -> io::Result<()> {
    const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;
    // SAFETY: the ioctl reads one u64 from a valid pointer.
    cvt_i(unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS, &ticks) }).map(drop)
}

/// `signalfd(2)` creating a new signalfd for `mask`.
pub fn signalfd(mask: u64, flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: raw syscall with a pointer to an 8-byte kernel sigset.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_signalfd4, -1, &mask as *const u64, 8usize, flags) })?;
    // SAFETY: fresh fd owned by us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `epoll_create1(2)`.
pub fn epoll_create(flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: integer argument.
    let fd = cvt_i(unsafe { libc::epoll_create1(flags) })?;
    // SAFETY: fresh fd owned by us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `epoll_ctl(EPOLL_CTL_ADD)` by fd numbers (in a restore child arranging its fd table).
pub fn epoll_add_numbers(epfd: i32, fd: i32, events: u32, data: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: ev is a valid epoll_event; the fds are plain numbers.
    cvt_i(unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) }).map(drop)
}

/// The shmem file of a fresh `mmap(MAP_SHARED | MAP_ANONYMOUS)` of `len` bytes, opened
/// read-write through `/proc/self/map_files` (CAP_SYS_ADMIN), the mapping itself gone: what
/// shared anonymous memory is made of, so that mappings of it read `/dev/zero (deleted)` in
/// /proc/PID/maps as the kernel names them (a memfd would read `/memfd:NAME (deleted)`).
pub fn shared_anon_file(len: usize) -> io::Result<OwnedFd> {
    let len = len.max(1);
    // SAFETY: a fresh anonymous mapping chosen by the kernel; nothing refers to it, and it is
    // unmapped below before returning.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let start = ptr as usize;
    let end = start + len.div_ceil(page_size() as usize) * page_size() as usize;
    let path = format!("/proc/self/map_files/{start:x}-{end:x}");
    let opened = std::fs::OpenOptions::new().read(true).write(true).open(path);
    // SAFETY: unmapping the mapping made above, which nothing else uses.
    unsafe { libc::munmap(ptr, len) };
    let f = opened?;
    // (map_files opens without O_CLOEXEC.)
    let fd = OwnedFd::from(f);
    // SAFETY: integer arguments on an fd we own.
    cvt_i(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) })?;
    Ok(fd)
}

/// `memfd_create(2)` with `MFD_CLOEXEC`.
pub fn memfd(name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: name is a valid C string.
    let fd = cvt_i(unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: fresh fd owned by us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
