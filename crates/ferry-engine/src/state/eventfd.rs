//! eventfd: the counter and semaphore mode, read from fdinfo; recreated with the same values.

use crate::error::{Ctx, Error};
use ferry_image::File;
use std::os::fd::OwnedFd;

/// Fill `f` from the fdinfo lines of an eventfd.
pub fn collect(pid: i32, fd: i32, info: &ferry_proc::FdInfo, f: &mut File) -> Result<(), Error> {
    let bad = || Error::Invalid { object: format!("/proc/{pid}/fdinfo/{fd}"), what: "malformed eventfd fields".into() };
    f.counter = u64::from_str_radix(info.get("eventfd-count").ok_or_else(bad)?, 16).map_err(|_| bad())?;
    f.semaphore = info.get("eventfd-semaphore").is_some_and(|v| v == "1");
    Ok(())
}

/// Create the eventfd in ferry (its counter must fit the eventfd(2) initial value).
pub fn prepare(obj: &str, f: &File) -> Result<OwnedFd, Error> {
    let count = u32::try_from(f.counter).map_err(|_| Error::Invalid {
        object: obj.into(),
        what: format!("eventfd counter {} does not fit 32 bits", f.counter),
    })?;
    let mut flags = libc::EFD_CLOEXEC | (f.flags as i32 & libc::O_NONBLOCK);
    if f.semaphore {
        flags |= libc::EFD_SEMAPHORE;
    }
    ferry_sys::process::eventfd(count, flags).ctx(|| format!("{obj}: cannot create the eventfd"))
}
