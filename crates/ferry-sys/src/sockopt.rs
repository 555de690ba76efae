//! Socket options, for every kind of socket (`getsockopt(2)`/`setsockopt(2)`).

use crate::cvt_i;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `getsockopt(2)` — the option's raw value (at most `cap` bytes, as long as the kernel says).
pub fn get_raw(fd: BorrowedFd<'_>, level: i32, name: i32, cap: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; cap];
    let mut len = cap as libc::socklen_t;
    // SAFETY: `buf` is valid for writes of `len` bytes and `len` is a valid in/out pointer.
    cvt_i(unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, buf.as_mut_ptr().cast(), &mut len) })?;
    buf.truncate((len as usize).min(cap));
    Ok(buf)
}

/// `getsockopt(2)` with an empty buffer — the length the kernel reports (for SO_GET_FILTER:
/// the number of instructions of the attached classic BPF filter).
pub fn get_len(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<usize> {
    let mut len: libc::socklen_t = 0;
    // SAFETY: a zero-length buffer: the kernel writes nothing to the (dangling, never read)
    // pointer and only updates `len`.
    cvt_i(unsafe {
        libc::getsockopt(fd.as_raw_fd(), level, name, std::ptr::NonNull::<u8>::dangling().as_ptr().cast(), &mut len)
    })?;
    Ok(len as usize)
}

/// `getsockopt(2)` of an `int` option.
pub fn get_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<i32> {
    let v = get_raw(fd, level, name, 4)?;
    let mut b = [0u8; 4];
    b[..v.len().min(4)].copy_from_slice(&v[..v.len().min(4)]);
    Ok(i32::from_ne_bytes(b))
}

/// `setsockopt(2)` with a raw value.
pub fn set_raw(fd: BorrowedFd<'_>, level: i32, name: i32, value: &[u8]) -> io::Result<()> {
    // SAFETY: `value` is valid for reads of its length.
    cvt_i(unsafe {
        libc::setsockopt(fd.as_raw_fd(), level, name, value.as_ptr().cast(), value.len() as libc::socklen_t)
    })
    .map(drop)
}

/// `setsockopt(2)` of an `int` option.
pub fn set_int(fd: BorrowedFd<'_>, level: i32, name: i32, value: i32) -> io::Result<()> {
    set_raw(fd, level, name, &value.to_ne_bytes())
}

/// `getsockopt(2)` of a `struct timeval` option (`SO_RCVTIMEO`, `SO_SNDTIMEO`), in microseconds.
pub fn get_timeout_us(fd: BorrowedFd<'_>, opt: i32) -> io::Result<u64> {
    let mut tv = libc::timeval { tv_sec: 0, tv_usec: 0 };
    let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: tv and len are valid out-pointers of the sizes given.
    cvt_i(unsafe {
        libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, opt, (&mut tv as *mut libc::timeval).cast(), &mut len)
    })?;
    Ok(tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64)
}

/// `setsockopt(2)` of a `struct timeval` option, from microseconds.
pub fn set_timeout_us(fd: BorrowedFd<'_>, opt: i32, us: u64) -> io::Result<()> {
    let tv = libc::timeval { tv_sec: (us / 1_000_000) as libc::time_t, tv_usec: (us % 1_000_000) as libc::suseconds_t };
    let len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: tv is a valid timeval of `len` bytes.
    cvt_i(unsafe { libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, opt, (&tv as *const libc::timeval).cast(), len) })
        .map(drop)
}

/// The classic BPF filter attached to a socket (`SO_GET_FILTER`), as the raw array of
/// `struct sock_filter` (8 bytes per instruction); `None` without a filter. An eBPF program
/// (`SO_ATTACH_BPF`) cannot be read back: the kernel answers EACCES.
pub fn get_filter(fd: BorrowedFd<'_>) -> io::Result<Option<Vec<u8>>> {
    // For SO_GET_FILTER the length is counted in instructions, not bytes.
    let n = get_len(fd, libc::SOL_SOCKET, libc::SO_GET_FILTER)?;
    if n == 0 {
        return Ok(None);
    }
    let mut buf = vec![0u8; n * 8];
    let mut len = n as libc::socklen_t;
    // SAFETY: `buf` holds `len` sock_filter entries of 8 bytes; `len` is a valid in/out pointer.
    cvt_i(unsafe {
        libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_GET_FILTER, buf.as_mut_ptr().cast(), &mut len)
    })?;
    buf.truncate(len as usize * 8);
    Ok(Some(buf))
}

/// Attach a classic BPF filter (`SO_ATTACH_FILTER`) given as `struct sock_filter` entries.
pub fn attach_filter(fd: BorrowedFd<'_>, code: &[u8]) -> io::Result<()> {
    if code.is_empty() || !code.len().is_multiple_of(8) || code.len() / 8 > u16::MAX as usize {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // The kernel copies the instructions; alignment of sock_filter is 4.
    let insns: Vec<libc::sock_filter> = code
        .chunks_exact(8)
        .map(|c| libc::sock_filter {
            code: u16::from_ne_bytes([c[0], c[1]]),
            jt: c[2],
            jf: c[3],
            k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
        })
        .collect();
    let prog = libc::sock_fprog { len: insns.len() as u16, filter: insns.as_ptr() as *mut libc::sock_filter };
    let size = std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t;
    // SAFETY: `prog` points to `len` valid instructions that outlive the call.
    cvt_i(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            size,
        )
    })
    .map(drop)
}
