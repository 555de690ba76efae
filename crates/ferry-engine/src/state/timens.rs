//! The time namespace: CLOCK_MONOTONIC and CLOCK_BOOTTIME as the tree sees them.
//!
//! A time namespace only holds two offsets, added to the machine's monotonic and boot-time
//! clocks. CRIU copies them as they are; that is right on the machine that dumped, but on a
//! machine that booted at another time the tree's clocks would jump by the difference of the
//! two boot times (backwards, typically: the destination booted later). ferry keeps the clocks
//! instead: the dump records what the tree's clocks read and CLOCK_REALTIME at that moment;
//! restore picks offsets so that each clock reads its dumped value plus the wall-clock time
//! that passed meanwhile (never less: a clock set back by NTP counts as no time). So a job
//! measuring elapsed time sees the time it really spent frozen and moving, no more and no less,
//! as a paused process would on one machine, and never a clock going backwards.
//!
//! "The machine's clocks" are ferry's own: offsets are read and written relative to ferry's
//! time namespace (`/proc/self/timens_offsets`), so a ferry that itself runs in a time
//! namespace acts as a machine whose clocks read as that namespace's (the migration test
//! gives its destination node such an offset, to play a machine that booted at another time).
//!
//! The kernel lets offsets be written only before a process enters the namespace: restore
//! computes them ([`plan`]) before it creates the namespace and writes them ([`write_offsets`])
//! from the process that made it (unshare(CLONE_NEWTIME) affects its future children only).

use crate::error::{Ctx, Error};
use crate::procfs;
use ferry_image::schema::NsxTimens;
use ferry_sys::nsctl::clock_ns;

const NS: i128 = 1_000_000_000;

/// Offsets (nanoseconds) of a time namespace relative to the host's clocks, as the kernel
/// takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offsets {
    pub monotonic: i128,
    pub boottime: i128,
}

/// Parse `/proc/PID/timens_offsets` ("monotonic SECS NSECS" and "boottime SECS NSECS" lines).
pub fn parse_offsets(text: &str) -> Option<Offsets> {
    let mut o = Offsets::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(clock), Some(s), Some(n)) = (it.next(), it.next(), it.next()) else { continue };
        let v = s.parse::<i128>().ok()? * NS + n.parse::<i128>().ok()?;
        match clock {
            "monotonic" | "1" => o.monotonic = v,
            "boottime" | "7" => o.boottime = v,
            _ => {}
        }
    }
    Some(o)
}

/// The text the kernel takes in `/proc/PID/timens_offsets` (nanoseconds in [0, 1e9)).
pub fn format_offsets(o: &Offsets) -> String {
    let f = |v: i128| format!("{} {}", v.div_euclid(NS), v.rem_euclid(NS));
    format!("monotonic {}\nboottime {}\n", f(o.monotonic), f(o.boottime))
}

fn read_offsets(pid: Option<i32>) -> Result<Offsets, Error> {
    let text = match pid {
        Some(p) => procfs::read_string(p, "timens_offsets")?,
        None => std::fs::read_to_string("/proc/self/timens_offsets")
            .ctx(|| "cannot read /proc/self/timens_offsets".into())?,
    };
    parse_offsets(&text).ok_or_else(|| Error::Invalid { object: "timens_offsets".into(), what: format!("unreadable: {text:?}") })
}

fn now(clock: libc::clockid_t, name: &str) -> Result<i128, Error> {
    clock_ns(clock).ctx(|| format!("cannot read {name}"))
}

/// Record the time namespace of `pid` (the tree's root), or None when it is ferry's own.
pub fn dump(pid: i32) -> Result<Option<NsxTimens>, Error> {
    let theirs = procfs::read_link(pid, "ns/time")?;
    let ours = std::fs::read_link("/proc/self/ns/time").ctx(|| "cannot read /proc/self/ns/time".into())?;
    if std::path::Path::new(&theirs) == ours {
        return Ok(None);
    }
    // (timens_offsets shows the namespace of the process's future children, which precheck
    // has made sure is its own.)
    let job = read_offsets(Some(pid))?;
    let own = read_offsets(None)?;
    let rel = Offsets { monotonic: job.monotonic - own.monotonic, boottime: job.boottime - own.boottime };
    let mono = now(libc::CLOCK_MONOTONIC, "CLOCK_MONOTONIC")?;
    let boot = now(libc::CLOCK_BOOTTIME, "CLOCK_BOOTTIME")?;
    let real = now(libc::CLOCK_REALTIME, "CLOCK_REALTIME")?;
    let n = |v: i128| i64::try_from(v).unwrap_or(i64::MAX);
    Ok(Some(NsxTimens {
        monotonic_ns: n(mono + rel.monotonic),
        boottime_ns: n(boot + rel.boottime),
        realtime_ns: n(real),
        monotonic_offset_ns: n(rel.monotonic),
        boottime_offset_ns: n(rel.boottime),
    }))
}

/// The offsets (relative to the host, as the kernel takes them) that make the recorded clocks
/// continue from now on. Call before the new namespace is created: it reads ferry's own
/// namespace's offsets.
pub fn plan(rec: &NsxTimens) -> Result<Offsets, Error> {
    let own = read_offsets(None)?;
    let real = now(libc::CLOCK_REALTIME, "CLOCK_REALTIME")?;
    let mono = now(libc::CLOCK_MONOTONIC, "CLOCK_MONOTONIC")?;
    let boot = now(libc::CLOCK_BOOTTIME, "CLOCK_BOOTTIME")?;
    let elapsed = (real - rec.realtime_ns as i128).max(0);
    Ok(offsets_for(rec, elapsed, (mono, boot), own))
}

/// The arithmetic of [`plan`]: clocks inside = recorded + elapsed; offset = that - ferry's
/// clock now + ferry's own offset (back to the host's reference).
fn offsets_for(rec: &NsxTimens, elapsed: i128, (mono, boot): (i128, i128), own: Offsets) -> Offsets {
    Offsets {
        monotonic: rec.monotonic_ns as i128 + elapsed - mono + own.monotonic,
        boottime: rec.boottime_ns as i128 + elapsed - boot + own.boottime,
    }
}

/// Write the offsets of the time namespace the calling process's next children will enter
/// (after unshare(CLONE_NEWTIME), before any child).
pub fn write_offsets(o: &Offsets) -> Result<(), Error> {
    std::fs::write("/proc/self/timens_offsets", format_offsets(o))
        .ctx(|| format!("cannot set the time namespace's offsets ({})", format_offsets(o).trim().replace('\n', ", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_text_round_trips_negative_values() {
        let o = Offsets { monotonic: -1_500_000_000, boottime: 42 };
        assert_eq!(format_offsets(&o), "monotonic -2 500000000\nboottime 0 42\n");
        assert_eq!(parse_offsets(&format_offsets(&o)), Some(o));
        assert_eq!(
            parse_offsets("monotonic           0         0\nboottime  3 5\n"),
            Some(Offsets { monotonic: 0, boottime: 3 * NS + 5 })
        );
    }

    #[test]
    fn a_later_booted_host_gets_offsets_that_keep_the_clocks() {
        // Dumped at inside 1000 s; the new host's clocks read 5 s (it booted later); 2 s passed.
        let rec = NsxTimens { monotonic_ns: 1000 * NS as i64, boottime_ns: 1100 * NS as i64, ..Default::default() };
        let o = offsets_for(&rec, 2 * NS, (5 * NS, 6 * NS), Offsets::default());
        assert_eq!(5 * NS + o.monotonic, 1002 * NS);
        assert_eq!(6 * NS + o.boottime, 1102 * NS);
    }
}
