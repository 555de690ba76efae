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
//! from the thread that made it (unshare(CLONE_NEWTIME) affects its future children only),
//! which must be ferry's main thread: `/proc/PID/timens_offsets` is the main thread's.
//!
//! A time namespace owned by the tree's user namespace must be made from inside it, and ferry's
//! thread cannot join one made elsewhere (`setns(CLONE_NEWTIME)` needs a single-threaded
//! caller: EUSERS): state/userns.rs's helper makes it with the other namespaces it owns, ferry
//! writes the same planned offsets to the helper's `timens_offsets`, and the tree's init joins
//! it (restore.rs) before it forks; ferry's thread leaves its own children's namespace as it is.

use super::nsctx::{DumpCtx, Handover, RestoreCtx};
use crate::error::{Ctx, Error};
use crate::procfs;
use ferry_image::{Namespaces, NsxTimens};
use ferry_sys::nsctl::{clock_ns, unshare, CLONE_NEWTIME};
use std::sync::OnceLock;

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
    parse_offsets(&text)
        .ok_or_else(|| Error::Invalid { object: "timens_offsets".into(), what: format!("unreadable: {text:?}") })
}

fn link(path: &str) -> Result<std::path::PathBuf, Error> {
    std::fs::read_link(path).ctx(|| format!("cannot read link {path}"))
}

/// The offsets of ferry's own time namespace. The kernel shows a thread only the offsets of
/// the namespace its children go to, which a restore changes for good in a multi-threaded
/// ferry (`ferry serve`: setns back into a time namespace needs a single-threaded caller):
/// read once, while that is still ferry's own, and kept.
pub fn own_offsets() -> Result<Offsets, Error> {
    static OWN: OnceLock<Offsets> = OnceLock::new();
    if let Some(o) = OWN.get() {
        return Ok(*o);
    }
    if link("/proc/self/ns/time")? != link("/proc/self/ns/time_for_children")? {
        return Err(Error::Invalid {
            object: "ferry's own time namespace".into(),
            what: "its offsets cannot be read: its main thread's children already go to another one".into(),
        });
    }
    let o = read_offsets(None)?;
    Ok(*OWN.get_or_init(|| o))
}

fn now(clock: libc::clockid_t, name: &str) -> Result<i128, Error> {
    clock_ns(clock).ctx(|| format!("cannot read {name}"))
}

/// Dump (a namespace module, state/namespaces.rs): the tree's clocks now.
pub(crate) fn dump(ctx: &mut DumpCtx<'_>, out: &mut Namespaces) -> Result<(), Error> {
    out.nsx_time = Some(record(ctx.pid)?);
    Ok(())
}

/// Restore: unlike the other kinds, the time namespace is made here (the framework leaves it
/// out of its unshare), because its offsets must be computed from ferry's own namespace before
/// the thread's children are switched to the new one, and written before any child exists.
pub(crate) fn restore(_ctx: &RestoreCtx<'_>, ns: &Namespaces, _h: &mut Handover) -> Result<(), Error> {
    let t = recorded(ns)?;
    if owned_by_tree(ns) {
        // (made, with its offsets, by state/userns.rs's helper inside the tree's user namespace)
        return Ok(());
    }
    main_thread()?;
    let o = plan(t)?;
    unshare(CLONE_NEWTIME).ctx(|| "cannot create the tree's time namespace".into())?;
    write_offsets(&o)
}

/// The clocks the image recorded for the tree's time namespace.
pub(crate) fn recorded(ns: &Namespaces) -> Result<&NsxTimens, Error> {
    ns.nsx_time.as_ref().ok_or_else(|| Error::Invalid {
        object: "image namespaces".into(),
        what: "a time namespace without its clocks".into(),
    })
}

/// Whether the tree's time namespace was owned by its user namespace (made from inside it).
pub(crate) fn owned_by_tree(ns: &Namespaces) -> bool {
    ns.userns.as_ref().is_some_and(|u| u.owned.iter().any(|o| o == "time"))
}

/// The kernel shows and takes a process's offsets (`/proc/PID/timens_offsets`) for its main
/// thread's namespace only: a time namespace is made and filled there.
fn main_thread() -> Result<(), Error> {
    let me = link("/proc/thread-self")?;
    if !me.ends_with(format!("task/{}", std::process::id())) {
        return Err(Error::Invalid {
            object: "the tree's time namespace".into(),
            what: format!("must be made by ferry's main thread, not thread {}", me.display()),
        });
    }
    Ok(())
}

/// Before a restore whose tree shares ferry's time namespace: make sure the restoring thread's
/// children go to ferry's own again (an earlier restore in the same thread moved them).
pub fn settle_children() -> Result<(), Error> {
    let own = link("/proc/thread-self/ns/time")?;
    if own == link("/proc/thread-self/ns/time_for_children")? {
        let _ = own_offsets();
        return Ok(());
    }
    main_thread()?;
    let fd = std::fs::File::open("/proc/thread-self/ns/time").ctx(|| "cannot open /proc/thread-self/ns/time".into())?;
    use std::os::fd::AsFd;
    if ferry_sys::nsctl::setns(fd.as_fd(), CLONE_NEWTIME).is_ok() {
        return Ok(());
    }
    // A multi-threaded ferry cannot go back: a fresh namespace with ferry's own offsets reads
    // the same clocks.
    let o = own_offsets()?;
    unshare(CLONE_NEWTIME).ctx(|| "cannot create a time namespace".into())?;
    write_offsets(&o)
}

/// The time namespace of `pid`'s future children (the tree's root's own, or a nested one's
/// member's: precheck made sure they are the same; or a pending one, state/nested_ns.rs).
pub(crate) fn record(pid: i32) -> Result<NsxTimens, Error> {
    // (timens_offsets shows the namespace of the process's future children, which precheck
    // has made sure is its own.)
    let job = read_offsets(Some(pid))?;
    let own = own_offsets()?;
    let rel = Offsets { monotonic: job.monotonic - own.monotonic, boottime: job.boottime - own.boottime };
    let mono = now(libc::CLOCK_MONOTONIC, "CLOCK_MONOTONIC")?;
    let boot = now(libc::CLOCK_BOOTTIME, "CLOCK_BOOTTIME")?;
    let real = now(libc::CLOCK_REALTIME, "CLOCK_REALTIME")?;
    let n = |v: i128| i64::try_from(v).unwrap_or(i64::MAX);
    Ok(NsxTimens {
        monotonic_ns: n(mono + rel.monotonic),
        boottime_ns: n(boot + rel.boottime),
        realtime_ns: n(real),
        monotonic_offset_ns: n(rel.monotonic),
        boottime_offset_ns: n(rel.boottime),
    })
}

/// The offsets (relative to the host, as the kernel takes them) that make the recorded clocks
/// continue from now on. Call before the new namespace is created: it reads ferry's own
/// namespace's offsets.
pub fn plan(rec: &NsxTimens) -> Result<Offsets, Error> {
    let own = own_offsets()?;
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

/// Write the offsets of the time namespace the calling thread's next children will enter
/// (after unshare(CLONE_NEWTIME), before any child).
pub fn write_offsets(o: &Offsets) -> Result<(), Error> {
    write_offsets_at("/proc/self/timens_offsets", o)
}

/// Write the offsets of the time namespace process `pid`'s next children will enter (it made
/// one with unshare(CLONE_NEWTIME) and has no child in it yet).
pub(crate) fn write_offsets_of(pid: i32, o: &Offsets) -> Result<(), Error> {
    write_offsets_at(&format!("/proc/{pid}/timens_offsets"), o)
}

fn write_offsets_at(path: &str, o: &Offsets) -> Result<(), Error> {
    std::fs::write(path, format_offsets(o)).ctx(|| {
        format!("cannot set the time namespace's offsets in {path} ({})", format_offsets(o).trim().replace('\n', ", "))
    })
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
