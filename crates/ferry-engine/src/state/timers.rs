//! Interval timers (setitimer) and POSIX timers (timer_create), with remaining time and
//! interval. Values are read with injected `getitimer`/`timer_gettime` and re-armed at the
//! very end of restore, so the time spent restoring does not eat into them. POSIX timers keep
//! their ids through PR_TIMER_CREATE_RESTORE_IDS (Linux 6.16+).

use crate::error::{Ctx, Error};
use crate::inject::Injector;
use crate::procfs;
use ferry_image::{ITimer, PosixTimer, Process};
use ferry_sys::consts::{nr, PR_TIMER_CREATE_RESTORE_IDS};
use ferry_sys::process::{vm_read, vm_write};

const SIGEV_SIGNAL: i32 = 0;
const SIGEV_NONE: i32 = 1;
const SIGEV_THREAD_ID: i32 = 4;

fn words(b: &[u8]) -> Vec<u64> {
    b.chunks_exact(8).map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect()
}

fn le(ws: &[u64]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Read the three itimers and every POSIX timer.
pub fn collect(inj: &Injector, scratch: u64, p: &mut Process) -> Result<(), Error> {
    let pid = inj.pid();
    for which in 0..3 {
        inj.call(nr::GETITIMER, &[which as u64, scratch]).ctx(|| format!("pid {pid}: cannot read itimer {which}"))?;
        let mut b = [0u8; 32];
        vm_read(pid, scratch, &mut b).ctx(|| format!("pid {pid}: cannot read back itimer {which}"))?;
        let w = words(&b);
        let t = ITimer { which, interval_us: w[0] * 1_000_000 + w[1], value_us: w[2] * 1_000_000 + w[3] };
        if t.value_us != 0 || t.interval_us != 0 {
            p.itimers.push(t);
        }
    }
    let text = procfs::read_string(pid, "timers")?;
    let timers = procfs::parse(pid, "timers", ferry_proc::parse_timers(&text))?;
    for t in timers {
        inj.call(nr::TIMER_GETTIME, &[t.id as u64, scratch])
            .ctx(|| format!("pid {pid}: cannot read POSIX timer {}", t.id))?;
        let mut b = [0u8; 32];
        vm_read(pid, scratch, &mut b).ctx(|| format!("pid {pid}: cannot read back POSIX timer {}", t.id))?;
        let w = words(&b);
        let overrun = inj.call(nr::TIMER_GETOVERRUN, &[t.id as u64]).unwrap_or(0) as i32;
        let mut notify = match t.notify.as_str() {
            "none" => SIGEV_NONE,
            "signal" => SIGEV_SIGNAL,
            other => {
                return Err(Error::Unsupported { pid, what: format!("POSIX timer {} with notify {other:?}", t.id) })
            }
        };
        if t.notify_thread_id {
            notify |= SIGEV_THREAD_ID;
        }
        p.posix_timers.push(PosixTimer {
            id: t.id,
            clock_id: t.clock_id,
            signo: t.signo,
            sigev_value: t.sigev_value,
            notify,
            notify_tid: t.notify_tid,
            interval_ns: w[0] * 1_000_000_000 + w[1],
            value_ns: w[2] * 1_000_000_000 + w[3],
            overrun,
        });
    }
    Ok(())
}

/// Recreate POSIX timers with their ids (disarmed) — before anything else could create one.
pub fn create_posix(inj: &Injector, scratch: u64, p: &Process) -> Result<(), Error> {
    let pid = inj.pid();
    if p.posix_timers.is_empty() {
        return Ok(());
    }
    inj.call(nr::PRCTL, &[PR_TIMER_CREATE_RESTORE_IDS as u64, 1, 0, 0, 0])
        .ctx(|| format!("pid {pid}: this kernel cannot restore POSIX timer ids (PR_TIMER_CREATE_RESTORE_IDS)"))?;
    for t in &p.posix_timers {
        // struct sigevent (64 bytes): sigval, signo, notify, tid; then the timer id slot.
        let mut ev = vec![0u8; 64];
        ev[0..8].copy_from_slice(&t.sigev_value.to_le_bytes());
        ev[8..12].copy_from_slice(&t.signo.to_le_bytes());
        ev[12..16].copy_from_slice(&t.notify.to_le_bytes());
        ev[16..20].copy_from_slice(&t.notify_tid.to_le_bytes());
        ev.extend_from_slice(&t.id.to_le_bytes());
        vm_write(pid, scratch, &ev).ctx(|| format!("pid {pid}: cannot write sigevent"))?;
        inj.call(nr::TIMER_CREATE, &[t.clock_id as u64, scratch, scratch + 64])
            .ctx(|| format!("pid {pid}: cannot recreate POSIX timer {}", t.id))?;
        let mut idb = [0u8; 4];
        vm_read(pid, scratch + 64, &mut idb).ctx(|| format!("pid {pid}: cannot read timer id"))?;
        let got = i32::from_le_bytes(idb);
        if got != t.id {
            return Err(Error::Invalid {
                object: format!("pid {pid}"),
                what: format!("POSIX timer {} came back as id {got}", t.id),
            });
        }
    }
    inj.call(nr::PRCTL, &[PR_TIMER_CREATE_RESTORE_IDS as u64, 0, 0, 0, 0])
        .ctx(|| format!("pid {pid}: cannot leave timer-restore mode"))?;
    Ok(())
}

/// Arm every timer with its remaining time: the last thing before release.
pub fn arm(inj: &Injector, scratch: u64, p: &Process) -> Result<(), Error> {
    let pid = inj.pid();
    for t in &p.itimers {
        let b =
            le(&[t.interval_us / 1_000_000, t.interval_us % 1_000_000, t.value_us / 1_000_000, t.value_us % 1_000_000]);
        vm_write(pid, scratch, &b).ctx(|| format!("pid {pid}: cannot write itimerval"))?;
        inj.call(nr::SETITIMER, &[t.which as u64, scratch, 0])
            .ctx(|| format!("pid {pid}: cannot set itimer {}", t.which))?;
    }
    for t in &p.posix_timers {
        if t.value_ns == 0 {
            continue;
        }
        let b = le(&[
            t.interval_ns / 1_000_000_000,
            t.interval_ns % 1_000_000_000,
            t.value_ns / 1_000_000_000,
            t.value_ns % 1_000_000_000,
        ]);
        vm_write(pid, scratch, &b).ctx(|| format!("pid {pid}: cannot write itimerspec"))?;
        inj.call(nr::TIMER_SETTIME, &[t.id as u64, 0, scratch, 0])
            .ctx(|| format!("pid {pid}: cannot arm POSIX timer {}", t.id))?;
    }
    Ok(())
}
