//! timerfd: clock, remaining time, interval and the expirations not yet read (ticks), from
//! fdinfo; recreated with a relative timer for the remaining time and TFD_IOC_SET_TICKS.

use crate::error::{Ctx, Error};
use ferry_image::File;
use std::os::fd::{AsFd, OwnedFd};

/// "(sec, nsec)" → nanoseconds.
fn pair_ns(v: &str) -> Option<u64> {
    let v = v.trim().strip_prefix('(')?.strip_suffix(')')?;
    let (s, n) = v.split_once(',')?;
    Some(s.trim().parse::<u64>().ok()? * 1_000_000_000 + n.trim().parse::<u64>().ok()?)
}

/// Fill `f` from the fdinfo lines of a timerfd.
pub fn collect(pid: i32, fd: i32, info: &ferry_proc::FdInfo, f: &mut File) -> Result<(), Error> {
    let bad = || Error::Invalid { object: format!("/proc/{pid}/fdinfo/{fd}"), what: "malformed timerfd fields".into() };
    f.clockid = info.get("clockid").and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    f.ticks = info.get("ticks").and_then(|v| v.parse().ok()).ok_or_else(bad)?;
    f.settime_flags = info.get("settime flags").and_then(|v| u32::from_str_radix(v, 8).ok()).ok_or_else(bad)?;
    // TFD_TIMER_CANCEL_ON_SET needs the absolute deadline, which fdinfo does not give.
    if f.settime_flags & 2 != 0 {
        return Err(Error::Unsupported { pid, what: format!("fd {fd}: a timerfd with TFD_TIMER_CANCEL_ON_SET") });
    }
    f.value_ns = info.get("it_value").and_then(pair_ns).ok_or_else(bad)?;
    f.interval_ns = info.get("it_interval").and_then(pair_ns).ok_or_else(bad)?;
    Ok(())
}

/// Create and arm the timerfd in ferry.
pub fn prepare(obj: &str, f: &File) -> Result<OwnedFd, Error> {
    let flags = libc::TFD_CLOEXEC | (f.flags as i32 & libc::O_NONBLOCK);
    let fd =
        ferry_sys::process::timerfd_create(f.clockid, flags).ctx(|| format!("{obj}: cannot create the timerfd"))?;
    if f.value_ns != 0 {
        // fdinfo reports the remaining time, so re-arm relative to now (TFD_TIMER_ABSTIME
        // would need the old absolute deadline, which fdinfo does not give).
        ferry_sys::process::timerfd_settime(fd.as_fd(), 0, f.value_ns, f.interval_ns)
            .ctx(|| format!("{obj}: cannot arm the timerfd"))?;
    }
    if f.ticks != 0 {
        ferry_sys::process::timerfd_set_ticks(fd.as_fd(), f.ticks)
            .ctx(|| format!("{obj}: cannot set the timerfd ticks"))?;
    }
    Ok(fd)
}
