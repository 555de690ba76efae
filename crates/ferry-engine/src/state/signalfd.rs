//! signalfd: the signal mask, from fdinfo; recreated with the same mask and flags.

use crate::error::{Ctx, Error};
use ferry_image::File;
use std::os::fd::OwnedFd;

/// Fill `f` from the fdinfo lines of a signalfd.
pub fn collect(pid: i32, fd: i32, info: &ferry_proc::FdInfo, f: &mut File) -> Result<(), Error> {
    let bad =
        || Error::Invalid { object: format!("/proc/{pid}/fdinfo/{fd}"), what: "malformed signalfd fields".into() };
    let v = info.get("sigmask").ok_or_else(bad)?;
    f.sigmask = u64::from_str_radix(v, 16).map_err(|_| bad())?;
    Ok(())
}

/// Create the signalfd in ferry.
pub fn prepare(obj: &str, f: &File) -> Result<OwnedFd, Error> {
    let flags = libc::SFD_CLOEXEC | (f.flags as i32 & libc::O_NONBLOCK);
    ferry_sys::process::signalfd(f.sigmask, flags).ctx(|| format!("{obj}: cannot create the signalfd"))
}
