//! The one place in ferry where `unsafe` lives.
//!
//! Everything ferry asks of the kernel that the standard library does not wrap — ptrace,
//! `process_vm_readv`, `clone3` with `set_tid`, `pidfd_getfd`, `kcmp`, `prlimit64`, raw
//! signal syscalls — goes through a small safe function here. Each wrapper names its syscall in
//! the first doc line, returns `io::Result`, turns out-parameters into return values and holds
//! file descriptors as `OwnedFd`. The crates above this one are `#![forbid(unsafe_code)]`.
//!
//! Constants that Debian 12's libc headers (and sometimes the `libc` crate) lack are taken from
//! the kernel's uapi headers and defined here.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod consts;
pub mod fanotify;
pub mod inet;
pub mod ns;
pub mod nsctl;
pub mod objects;
pub mod pagebuf;
pub mod pktnl;
pub mod posixmq;
pub mod process;
pub mod ptrace;
pub mod raw;
mod sockdiag;
pub mod sockopt;
pub mod sysvipc;
pub mod tty;
pub mod tun;
pub mod uffd;
pub mod unixsock;

pub use libc::user_regs_struct as UserRegs;

use std::io;

/// Turn a `-1`-on-error libc return value into an `io::Result`.
pub(crate) fn cvt(r: libc::c_long) -> io::Result<libc::c_long> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Turn a `-1`-on-error `c_int` return value into an `io::Result`.
pub(crate) fn cvt_i(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// An all-zero register set (a starting point for building registers in tests and tools).
pub fn zeroed_regs() -> UserRegs {
    // SAFETY: user_regs_struct consists of integers only; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}
