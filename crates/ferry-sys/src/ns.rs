//! Namespaces and mounts: `setns`, `unshare`, `mount`, `umount2`, `pivot_root`,
//! `open_tree`/`move_mount`, `sethostname`/`setdomainname`, `mknod`, and what tmpfs content
//! needs (`lchown`, `utimensat` on a symbolic link).

use crate::cvt_i;
use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `setns(2)`: move the calling thread into the namespace `fd` refers to (`nstype`: a
/// `CLONE_NEW*` flag, or 0 for any).
pub fn setns(fd: BorrowedFd<'_>, nstype: i32) -> io::Result<()> {
    // SAFETY: integer arguments.
    cvt_i(unsafe { libc::setns(fd.as_raw_fd(), nstype) }).map(drop)
}

/// `unshare(2)` for the calling thread (`CLONE_FS`, `CLONE_NEW*`).
pub fn unshare(flags: i32) -> io::Result<()> {
    // SAFETY: integer argument.
    cvt_i(unsafe { libc::unshare(flags) }).map(drop)
}

/// `mount(2)`. `source`, `fstype` and `data` may be absent.
pub fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: u64,
    data: Option<&CStr>,
) -> io::Result<()> {
    let p = |s: Option<&CStr>| s.map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: every pointer is a valid C string or null, which mount(2) accepts for these.
    cvt_i(unsafe {
        libc::mount(p(source), target.as_ptr(), p(fstype), flags as libc::c_ulong, p(data) as *const libc::c_void)
    })
    .map(drop)
}

/// `umount2(2)`.
pub fn umount2(target: &CStr, flags: i32) -> io::Result<()> {
    // SAFETY: valid C string.
    cvt_i(unsafe { libc::umount2(target.as_ptr(), flags) }).map(drop)
}

/// `pivot_root(2)` (no libc wrapper).
pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> io::Result<()> {
    // SAFETY: valid C strings.
    crate::cvt(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) }).map(drop)
}

/// `sethostname(2)` in the calling thread's uts namespace.
pub fn sethostname(name: &[u8]) -> io::Result<()> {
    // SAFETY: pointer and length of a live slice.
    cvt_i(unsafe { libc::sethostname(name.as_ptr() as *const libc::c_char, name.len()) }).map(drop)
}

/// `setdomainname(2)` in the calling thread's uts namespace.
pub fn setdomainname(name: &[u8]) -> io::Result<()> {
    // SAFETY: pointer and length of a live slice.
    cvt_i(unsafe { libc::setdomainname(name.as_ptr() as *const libc::c_char, name.len()) }).map(drop)
}

/// `uname(2)`: (nodename, domainname) of the calling thread's uts namespace.
pub fn uts_names() -> io::Result<(Vec<u8>, Vec<u8>)> {
    // SAFETY: utsname is plain data; zeroed is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a utsname.
    cvt_i(unsafe { libc::uname(&mut u) })?;
    let field = |f: &[libc::c_char]| f.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect::<Vec<u8>>();
    Ok((field(&u.nodename), field(&u.domainname)))
}

/// `mknod(2)` (device nodes, FIFOs, sockets' placeholders).
pub fn mknod(path: &CStr, mode: u32, rdev: u64) -> io::Result<()> {
    // SAFETY: valid C string.
    cvt_i(unsafe { libc::mknod(path.as_ptr(), mode as libc::mode_t, rdev as libc::dev_t) }).map(drop)
}

/// `lchown(2)`: the owner of a path without following a final symbolic link.
pub fn lchown(path: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: valid C string.
    cvt_i(unsafe { libc::lchown(path.as_ptr(), uid, gid) }).map(drop)
}

/// `utimensat(AT_FDCWD, path, [atime, mtime], AT_SYMLINK_NOFOLLOW)`, times in ns since the epoch.
pub fn set_times_nofollow(path: &CStr, atime_ns: i64, mtime_ns: i64) -> io::Result<()> {
    let ts = |ns: i64| libc::timespec { tv_sec: ns.div_euclid(1_000_000_000), tv_nsec: ns.rem_euclid(1_000_000_000) };
    let t = [ts(atime_ns), ts(mtime_ns)];
    // SAFETY: valid C string and a two-element timespec array.
    cvt_i(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), t.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) }).map(drop)
}

/// `readlinkat(dirfd, name)`, e.g. "self" in an fd of a /proc mount: the caller's pid as that
/// proc instance's pid namespace sees it.
/// Takes an fd number: a forked restore child uses one it inherited.
pub fn readlinkat_number(dir: i32, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C string and a buffer of the given length.
    let n = crate::cvt(unsafe {
        libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr() as *mut libc::c_char, buf.len()) as libc::c_long
    })?;
    buf.truncate(n as usize);
    Ok(buf)
}

/// [`openat`] with a directory fd number (a forked restore child uses one it inherited).
pub fn openat_number(dir: i32, name: &CStr, flags: i32) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: valid C string; integer arguments (a bad number fails with EBADF).
    let n = cvt_i(unsafe { libc::openat(dir, name.as_ptr(), flags) })?;
    // SAFETY: the kernel just created fd `n` for us; we are its only owner.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(n) })
}

/// `setns(2)` with an fd number ferry's caller handed over (`--inherit-fd`), not owned here.
pub fn setns_number(fd: i32, nstype: i32) -> io::Result<()> {
    // SAFETY: integer arguments; a bad number fails with EBADF.
    cvt_i(unsafe { libc::setns(fd, nstype) }).map(drop)
}

/// `open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC [| AT_RECURSIVE])`: a
/// detached copy of the mount at `path`, alone (to read what the mounts below it hide) or with
/// every mount below it (`recursive`; unbindable ones are left out), for [`move_mount_onto`].
/// See open_tree(2).
pub fn open_tree_clone(path: &CStr, recursive: bool) -> io::Result<std::os::fd::OwnedFd> {
    const OPEN_TREE_CLONE: libc::c_long = 1;
    const AT_RECURSIVE: libc::c_long = 0x8000;
    let rec = if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: valid C string; integer flags.
    let n = crate::cvt(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_long | rec,
        )
    })?;
    // SAFETY: the kernel just created fd `n` for us; we are its only owner.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(n as i32) })
}

/// `move_mount(tree, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)`: attach the detached
/// mount tree `tree` (from [`open_tree_clone`]) at `target` of the caller's mount namespace,
/// on top of what is mounted there. See move_mount(2).
pub fn move_mount_onto(tree: BorrowedFd<'_>, target: &CStr) -> io::Result<()> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_long = 4;
    // SAFETY: valid C strings; integer arguments; `tree` is an open fd.
    crate::cvt(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// `openat(2)` of `name` in directory `dir` (an image directory opened before ferry moves into
/// a tree's mount namespace, where its path no longer resolves).
pub fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: valid C string; integer arguments.
    let n = cvt_i(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) })?;
    // SAFETY: the kernel just created fd `n` for us; we are its only owner.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(n) })
}

/// `ioctl(NS_GET_USERNS)` on a namespace file: a new fd of the user namespace that owns it.
pub fn owner_userns(ns: BorrowedFd<'_>) -> io::Result<std::os::fd::OwnedFd> {
    ns_ioctl(ns, 0xb701)
}

/// `ioctl(NS_GET_PARENT)` on a user (or pid) namespace file: a new fd of its parent.
pub fn parent_ns(ns: BorrowedFd<'_>) -> io::Result<std::os::fd::OwnedFd> {
    ns_ioctl(ns, 0xb702)
}

/// `ioctl(SIOCGSKNS)` on a socket: a new fd of the network namespace the socket is in (the
/// one it was created in).
pub fn socket_netns(sock: BorrowedFd<'_>) -> io::Result<std::os::fd::OwnedFd> {
    ns_ioctl(sock, 0x894c)
}

fn ns_ioctl(ns: BorrowedFd<'_>, req: libc::c_ulong) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: these ioctls take no argument and return a new fd.
    let n = cvt_i(unsafe { libc::ioctl(ns.as_raw_fd(), req) })?;
    // SAFETY: the kernel just created fd `n` for us; we are its only owner.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(n) })
}

/// In a process that just made its own user namespace: become uid and gid 0 of it (both
/// mapped by then), with no supplementary groups (`setgroups`, `setresgid`, `setresuid`).
pub fn become_root_inside() -> io::Result<()> {
    // SAFETY: integer arguments; a null list with size 0.
    cvt_i(unsafe { libc::setgroups(0, std::ptr::null()) })?;
    // SAFETY: integer arguments.
    cvt_i(unsafe { libc::setresgid(0, 0, 0) })?;
    // SAFETY: integer arguments.
    cvt_i(unsafe { libc::setresuid(0, 0, 0) }).map(drop)
}
