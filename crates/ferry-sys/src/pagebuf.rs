//! Page-aligned buffers for bulk copies.
//!
//! The kernel copies page data with `rep movsb`; on this class of CPU (AMD EPYC, in a VM) a
//! destination that is not page-aligned — as any `Vec<u8>` from malloc is, 16 bytes past a page
//! boundary for large sizes — makes `process_vm_readv` into it about 3.5 times slower
//! (1 GiB: 1.1 s instead of 0.3 s, measured). Buffers that pages are copied into or out of
//! are therefore whole pages of their own.

use std::io;
use std::ops::{Deref, DerefMut};
use std::os::fd::{AsRawFd, BorrowedFd};

/// A zero-filled, page-aligned, private anonymous mapping of `len` bytes.
pub struct PageBuf {
    ptr: *mut u8,
    len: usize,
}

impl PageBuf {
    /// Map `len` bytes (rounded up to whole pages; the slice is exactly `len` long).
    pub fn new(len: usize) -> io::Result<PageBuf> {
        if len == 0 {
            return Ok(PageBuf { ptr: std::ptr::NonNull::dangling().as_ptr(), len: 0 });
        }
        // SAFETY: a fresh private mapping chosen by the kernel; nothing else aliases it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(PageBuf { ptr: ptr.cast(), len })
    }
}

impl Deref for PageBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len is a live read-write mapping owned by self (or len is 0).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl DerefMut for PageBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for PageBuf {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmapping the mapping we own; no borrow of it outlives self.
            unsafe {
                libc::munmap(self.ptr.cast(), self.len);
            }
        }
    }
}

// SAFETY: PageBuf owns its mapping exclusively, like a Vec<u8>; moving it to another thread
// moves that ownership.
unsafe impl Send for PageBuf {}

/// `fallocate(FALLOC_FL_KEEP_SIZE)`: allocate the blocks (on tmpfs, the pages) of
/// `off..off + len` of a file ahead of writing them, without changing its size. Writing into
/// allocated tmpfs pages then costs only the copy (1 GiB: 0.2 s instead of 0.5 s, the
/// allocation itself 0.35 s, measured) — which lets another thread pay for the allocation.
pub fn preallocate(fd: BorrowedFd<'_>, off: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: plain integer arguments on a descriptor we borrow.
    let r = unsafe { libc::fallocate(fd.as_raw_fd(), libc::FALLOC_FL_KEEP_SIZE, off as i64, len as i64) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Free the blocks of `len` bytes at `off` in the file `fd`, past its end (the part of a
/// [`preallocate`]d range that was not written), keeping its size.
pub fn release(fd: BorrowedFd<'_>, off: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: plain integer arguments on a descriptor we borrow.
    let r = unsafe { libc::fallocate(fd.as_raw_fd(), mode, off as i64, len as i64) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_zeroed_writable() {
        let mut b = PageBuf::new(3 * 4096 + 5).unwrap();
        assert_eq!(b.as_ptr() as usize % 4096, 0);
        assert_eq!(b.len(), 3 * 4096 + 5);
        assert!(b.iter().all(|&x| x == 0));
        b[3 * 4096 + 4] = 7;
        assert_eq!(b[3 * 4096 + 4], 7);
        assert!(PageBuf::new(0).unwrap().is_empty());
    }
}
