//! timerfd: clock, remaining time, interval and the expirations not yet read (ticks), from
//! fdinfo; recreated with a relative timer for the remaining time and TFD_IOC_SET_TICKS.
//!
//! A periodic timer that expired is not re-armed by the kernel until someone reads it (or asks
//! `timerfd_gettime`): until then fdinfo shows 1 tick and no remaining time, as if the timer were
//! spent. Its missed expirations and its next one are brought up to date first, by
//! `timerfd_gettime` on a duplicate of the fd (`pidfd_getfd`: the same timer), which is what any
//! read by the process would do.

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
    let interval = info.get("it_interval").and_then(pair_ns).unwrap_or(0);
    let value = info.get("it_value").and_then(pair_ns).unwrap_or(0);
    if interval != 0 && value == 0 {
        // Expired and periodic: update it (see the module doc), then read fdinfo again.
        let pidfd = ferry_sys::process::pidfd_open(pid).ctx(|| format!("pid {pid}: pidfd_open"))?;
        let dup = ferry_sys::process::pidfd_getfd(pidfd.as_fd(), fd)
            .ctx(|| format!("pid {pid} fd {fd}: cannot duplicate the timerfd"))?;
        ferry_sys::process::timerfd_gettime(dup.as_fd())
            .ctx(|| format!("pid {pid} fd {fd}: cannot update the expired timerfd"))?;
        let name = format!("fdinfo/{fd}");
        let text = crate::procfs::read_string(pid, &name)?;
        let info = crate::procfs::parse(pid, &name, ferry_proc::parse_fdinfo(&text))?;
        return collect_info(pid, fd, &info, f);
    }
    collect_info(pid, fd, info, f)
}

fn collect_info(pid: i32, fd: i32, info: &ferry_proc::FdInfo, f: &mut File) -> Result<(), Error> {
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
