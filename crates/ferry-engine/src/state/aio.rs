//! AIO contexts (`io_setup`): the ring mapping `/[aio]`, whose address is the context id the
//! process passes to `io_submit`/`io_getevents`, and the completed events not yet reaped in it.
//!
//! Dump (injected in the main thread, under the freeze): the ring's header and its events
//! `head..tail` are read, and requests still in flight are looked for. The kernel shows them
//! nowhere (CRIU does not look: "XXX: wait aio completion"), but its accounting gives them
//! away: every submitted request holds one of the context's `nr - 1` slots until its event is
//! reaped, and the free slots sit in a global counter (which only ever moves by `req_batch`, so
//! a remainder of `(nr - 1) % req_batch` stays there out of reach) and in per-CPU caches. So
//! ferry submits harmless requests of its own (zero-byte reads of a memfd, which complete at
//! once) from each CPU in turn until none is accepted: the slots neither taken by ferry nor by
//! an event in the ring, past that remainder, are requests in flight, and the dump is refused
//! by name. (A CPU the process may not run on could hide cached slots: counted as in flight,
//! the error is on the side of a refusal, never of a silent loss.) ferry's events are then
//! skipped over: the process's own unreaped events are moved to just before the new tail and
//! `head` to them, as if it had reaped events that were never its own; and ferry submits more
//! until it has submitted a multiple of `nr`, so that `head`, `tail` and the events' slots end
//! as they were (a process left running by `dump -R` sees the same ring).
//!
//! Restore (by the tracer, after the address space): `io_setup` with the number of events that
//! gives a ring of the same size, `mremap` to the old address (the kernel moves the context id
//! with it: `aio_ring_mremap`), then the kernel's own tail is brought to the old `tail` with
//! ferry's zero-byte reads (those before the old `head` reaped, the others left in the ring to
//! hold their slots), whose events are finally overwritten with the saved ones.

use crate::error::{Ctx, Error};
use crate::inject::Injector;
use ferry_image::{AioRing, Mm, Process, Vma, VmaKind};
use ferry_sys::consts::nr;
use ferry_sys::process::{vm_read, vm_write};

/// `struct aio_ring` (fs/aio.c): magic, features and header length the kernel writes.
const MAGIC: u32 = 0xa10a_10a1;
const COMPAT_FEATURES: u32 = 1;
const HEADER: u64 = 32;
/// `struct io_event`.
const EVENT: u64 = 32;
const IOCB_CMD_PREAD: u16 = 0;
/// `aio_data` of ferry's own requests ("ferryaio").
const COOKIE: u64 = 0x6665_7272_7961_696f;
/// ferry's requests submitted per `io_submit`.
const BATCH: u64 = 256;

/// The header fields ferry uses, checked against the mapping's size.
struct Header {
    id: u32,
    nr: u32,
    head: u32,
    tail: u32,
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// The header of the whole ring `b` (as [`read_ring`] reads it), checked against its size: the
/// events it counts are all in `b`.
fn header(b: &[u8]) -> Result<Header, String> {
    let h = header_only(b)?;
    if u64::from(h.nr) != (b.len() as u64 - HEADER) / EVENT || h.head >= h.nr || h.tail >= h.nr {
        return Err(format!("a header that does not fit the mapping (nr {}, head {}, tail {})", h.nr, h.head, h.tail));
    }
    Ok(h)
}

/// The header alone (`b` may hold no event): magic, features and length checked.
fn header_only(b: &[u8]) -> Result<Header, String> {
    if b.len() < HEADER as usize {
        return Err("shorter than its header".into());
    }
    let w = |i: usize| u32_at(b, 4 * i);
    let h = Header { id: w(0), nr: w(1), head: w(2), tail: w(3) };
    let (magic, compat, incompat, hlen) = (w(4), w(5), w(6), w(7));
    if magic != MAGIC || compat != COMPAT_FEATURES || incompat != 0 || hlen != HEADER as u32 {
        return Err(format!("an unknown header (magic {magic:#x}, features {compat}/{incompat}, length {hlen})"));
    }
    Ok(h)
}

/// Events from `from` to `to` (ring positions, wrapping at `nr`), in order.
fn events(ring: &[u8], nr: u32, from: u32, to: u32) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut i = from;
    while i != to {
        let at = (HEADER + u64::from(i) * EVENT) as usize;
        out.push(&ring[at..at + EVENT as usize]);
        i = (i + 1) % nr;
    }
    out
}

/// The most a ring maps: `io_setup` takes at most 0x10000000 bytes of events (fs/aio.c), plus
/// the header, rounded up to pages (up to 64 KiB).
const MAX_RING: u64 = 0x1000_0000 + (64 << 10);

/// `len` bytes of the ring at `at`, whole: a length out of what the kernel makes or a short read
/// is an error (the length comes from the target's mappings, or the image).
fn read_ring(pid: i32, at: u64, len: u64) -> Result<Vec<u8>, Error> {
    let object = || format!("pid {pid}: the AIO ring at {at:#x}");
    if !(HEADER..=MAX_RING).contains(&len) {
        return Err(Error::Invalid { object: object(), what: format!("maps {len} bytes (at most {MAX_RING})") });
    }
    let mut b = vec![0u8; len as usize];
    let n = vm_read(pid, at, &mut b).ctx(|| format!("pid {pid}: cannot read the AIO ring at {at:#x}"))?;
    if n != b.len() {
        return Err(Error::Invalid { object: object(), what: format!("only {n} of its {len} bytes could be read") });
    }
    Ok(b)
}

/// Write `evs` at ring positions `from..` (in at most two pieces: the ring's end, its start)
/// and set the header's `head` to `from`.
fn put_events(pid: i32, at: u64, nr: u32, from: u32, evs: &[&[u8]]) -> Result<(), Error> {
    let first = evs.len().min((nr - from) as usize);
    for (pos, part) in [(from, &evs[..first]), (0, &evs[first..])] {
        if !part.is_empty() {
            vm_write(pid, at + HEADER + u64::from(pos) * EVENT, &part.concat())
                .ctx(|| format!("pid {pid}: cannot write the events of the AIO ring at {at:#x}"))?;
        }
    }
    vm_write(pid, at + 8, &from.to_le_bytes())
        .ctx(|| format!("pid {pid}: cannot write the AIO ring's head at {at:#x}"))?;
    Ok(())
}

/// CPUs listed as in /sys/devices/system/cpu/online ("0-3,6").
fn cpu_list(what: &str) -> Result<Vec<usize>, Error> {
    let path = format!("/sys/devices/system/cpu/{what}");
    let text = std::fs::read_to_string(&path).ctx(|| format!("cannot read {path}"))?;
    let bad = || Error::Invalid { object: path.clone(), what: format!("not a CPU list: {:?}", text.trim()) };
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|s| !s.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (usize, usize) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        out.extend(a..=b);
    }
    Ok(out)
}

/// ferry's own requests in the tracee: a memfd, one zero-byte read of it at `scratch + 64`, and
/// `BATCH` pointers to it at `scratch + 128` (2176 bytes of scratch in all).
struct Probe<'a> {
    inj: &'a Injector,
    ctx: u64,
    fd: u64,
    iocb: u64,
    ptrs: u64,
}

impl<'a> Probe<'a> {
    fn open(inj: &'a Injector, scratch: u64, ctx: u64) -> Result<Probe<'a>, Error> {
        let pid = inj.pid();
        vm_write(pid, scratch, b"ferry-aio\0").ctx(|| format!("pid {pid}: cannot write a memfd name"))?;
        let fd = inj
            .call(nr::MEMFD_CREATE, &[scratch, libc::MFD_CLOEXEC as u64])
            .ctx(|| format!("pid {pid}: cannot create a memfd for the AIO ring at {ctx:#x}"))?;
        let (iocb, ptrs) = (scratch + 64, scratch + 128);
        let mut cb = Vec::with_capacity(64);
        cb.extend_from_slice(&COOKIE.to_le_bytes()); // aio_data
        cb.extend_from_slice(&[0u8; 8]); // aio_key, aio_rw_flags
        cb.extend_from_slice(&IOCB_CMD_PREAD.to_le_bytes());
        cb.extend_from_slice(&0u16.to_le_bytes()); // aio_reqprio
        cb.extend_from_slice(&(fd as u32).to_le_bytes());
        cb.extend_from_slice(&(scratch + 64).to_le_bytes()); // aio_buf (nothing is read)
        cb.extend_from_slice(&[0u8; 32]); // nbytes, offset, reserved2, flags, resfd
        let table: Vec<u8> = (0..BATCH).flat_map(|_| iocb.to_le_bytes()).collect();
        let probe = Probe { inj, ctx, fd, iocb, ptrs };
        vm_write(pid, iocb, &cb)
            .and_then(|_| vm_write(pid, ptrs, &table))
            .ctx(|| format!("pid {pid}: cannot write AIO requests"))
            .inspect_err(|_| probe.close())?;
        Ok(probe)
    }

    /// Submit up to `n` (at most `BATCH`) requests; how many the context took.
    fn submit(&self, n: u64) -> Result<u64, Error> {
        let pid = self.inj.pid();
        let r = self
            .inj
            .raw(nr::IO_SUBMIT, &[self.ctx, n.min(BATCH), self.ptrs])
            .ctx(|| format!("pid {pid}: io_submit on the AIO ring at {:#x}", self.ctx))?;
        match r {
            r if r >= 0 => Ok(r as u64),
            r if r == -i64::from(libc::EAGAIN) => Ok(0),
            r => Err(Error::Sys {
                object: format!("pid {pid}: io_submit on the AIO ring at {:#x}", self.ctx),
                source: std::io::Error::from_raw_os_error(-r as i32),
            }),
        }
    }

    /// Submit until the context takes no more (the free slots the calling CPU can reach).
    fn drain(&self) -> Result<u64, Error> {
        let mut total = 0;
        loop {
            let k = self.submit(BATCH)?;
            if k == 0 {
                return Ok(total);
            }
            total += k;
        }
    }

    fn is_ours(&self, e: &[u8]) -> bool {
        e[..8] == COOKIE.to_le_bytes() && e[8..16] == self.iocb.to_le_bytes()
    }

    fn close(&self) {
        let _ = self.inj.call(nr::CLOSE, &[self.fd]);
    }
}

/// At dump, by the main thread's injector: every AIO ring of `mm`, with its unreaped events;
/// a ring with requests in flight is refused by name.
pub fn collect(inj: &Injector, scratch: u64, mm: &mut Mm) -> Result<(), Error> {
    for v in mm.vmas.iter_mut().filter(|v| v.kind == VmaKind::AioRing as i32) {
        v.aio = Some(dump_ring(inj, scratch, v.start, v.end - v.start)?);
    }
    Ok(())
}

fn dump_ring(inj: &Injector, scratch: u64, at: u64, len: u64) -> Result<AioRing, Error> {
    let pid = inj.pid();
    let refuse = |what: String| Error::Unsupported { pid, what: format!("an AIO ring (io_setup) at {at:#x} {what}") };
    let ring = read_ring(pid, at, len)?;
    let h = header(&ring).map_err(|e| refuse(format!("with {e}")))?;
    // (A child forked after io_setup has its parent's ring mapped, but no context.)
    if inj.raw(nr::IO_SUBMIT, &[at, 0, 0]).ctx(|| format!("pid {pid}: io_submit"))? != 0 {
        return Err(refuse("inherited over fork (a mapping of the parent's ring, no context of its own)".into()));
    }
    let saved = AioRing {
        nr: h.nr,
        head: h.head,
        tail: h.tail,
        id: h.id,
        events: events(&ring, h.nr, h.head, h.tail).concat(),
    };
    let unreaped = (h.tail + h.nr - h.head) % h.nr;

    // Drain the free slots from every CPU, the thread pinned to each in turn.
    let probe = Probe::open(inj, scratch, at)?;
    let mask = ferry_sys::process::get_affinity(pid).ctx(|| format!("pid {pid}: cannot read its CPU affinity"))?;
    let drained = (|| -> Result<(u64, bool), Error> {
        let (mut total, mut everywhere) = (0, true);
        for cpu in cpu_list("online")? {
            if ferry_sys::process::set_affinity(pid, &ferry_sys::process::one_cpu_mask(cpu)).is_err() {
                everywhere = false;
                continue;
            }
            total += probe.drain()?;
        }
        Ok((total, everywhere))
    })();
    let back =
        ferry_sys::process::set_affinity(pid, &mask).ctx(|| format!("pid {pid}: cannot put back its CPU affinity"));
    // Skip ferry's events, keep the process's: theirs just before the tail, `head` on them;
    // and more of ferry's requests until the tail is where it was (a multiple of nr of them).
    let mut submitted = *drained.as_ref().map(|(d, _)| d).unwrap_or(&0);
    let theirs = (|| -> Result<u32, Error> {
        loop {
            let now = read_ring(pid, at, len)?;
            let n = header(&now).map_err(|e| refuse(format!("with {e}")))?;
            let theirs: Vec<&[u8]> =
                events(&now, n.nr, n.head, n.tail).into_iter().filter(|e| !probe.is_ours(e)).collect();
            let from = (n.tail + n.nr - theirs.len() as u32) % n.nr;
            put_events(pid, at, n.nr, from, &theirs)?;
            let left = (u64::from(n.nr) - submitted % u64::from(n.nr)) % u64::from(n.nr);
            if left == 0 {
                return Ok(theirs.len() as u32);
            }
            match probe.submit(left)? {
                0 => return Err(refuse("that takes none of ferry's requests to put its tail back".into())),
                k => submitted += k,
            }
        }
    })();
    probe.close();
    let (drained, everywhere) = drained?;
    back?;
    let theirs = theirs?;
    if theirs != unreaped {
        return Err(refuse(format!(
            "with {} request(s) in flight (they completed while it was frozen)",
            theirs.saturating_sub(unreaped)
        )));
    }
    // The slots: nr - 1 = free (global remainder + caches ferry drained) + held (in flight,
    // unreaped events, ferry's events).
    let possible = cpu_list("possible")?.len().max(1) as u64;
    let batch = ((u64::from(h.nr) - 1) / (possible * 4)).max(1);
    let remainder = (u64::from(h.nr) - 1) % batch;
    let in_flight = (u64::from(h.nr) - 1).checked_sub(remainder + u64::from(unreaped) + drained);
    match in_flight {
        Some(0) => Ok(saved),
        Some(k) if everywhere => Err(refuse(format!("with {k} request(s) in flight (submitted, not completed)"))),
        Some(k) => Err(refuse(format!(
            "with {k} request(s) in flight (submitted, not completed), or slots cached on a CPU it may not run on"
        ))),
        None => Err(Error::Invalid {
            object: format!("pid {pid}: the AIO ring at {at:#x}"),
            what: format!("{drained} requests accepted with {unreaped} events unreaped in a ring of {}", h.nr),
        }),
    }
}

/// By the tracer, after the address space: recreate each AIO context at its old address
/// (in the order of the kernel's ids, which are given in order too) with its unreaped events.
pub fn restore(inj: &Injector, scratch: u64, p: &Process) -> Result<(), Error> {
    let Some(mm) = &p.mm else { return Ok(()) };
    let mut rings: Vec<&Vma> = mm.vmas.iter().filter(|v| v.kind == VmaKind::AioRing as i32).collect();
    rings.sort_by_key(|v| v.aio.as_ref().map(|a| a.id));
    for v in rings {
        restore_ring(inj, scratch, v)?;
    }
    Ok(())
}

fn restore_ring(inj: &Injector, scratch: u64, v: &Vma) -> Result<(), Error> {
    let pid = inj.pid();
    let (at, len) = (v.start, v.end - v.start);
    let object = || format!("pid {pid}: the AIO ring at {at:#x}");
    let bad = |what: String| Error::Invalid { object: object(), what };
    let a = v.aio.as_ref().ok_or_else(|| bad("no ring state in the image".into()))?;
    if len < HEADER + EVENT || u64::from(a.nr) != (len - HEADER) / EVENT || a.head >= a.nr || a.tail >= a.nr {
        return Err(bad(format!("an inconsistent ring state (nr {}, head {}, tail {})", a.nr, a.head, a.tail)));
    }
    let unreaped = ((u64::from(a.tail) + u64::from(a.nr) - u64::from(a.head)) % u64::from(a.nr)) as u32;
    if a.events.len() as u64 != u64::from(unreaped) * EVENT {
        return Err(bad(format!("{} bytes of events for {unreaped} events", a.events.len())));
    }
    // The kernel sizes the ring for max(n, 4 * CPUs) * 2 + 2 events, rounded up to pages.
    vm_write(pid, scratch, &0u64.to_le_bytes()).ctx(|| format!("pid {pid}: cannot write an aio context"))?;
    inj.call(nr::IO_SETUP, &[u64::from(a.nr.saturating_sub(2) / 2), scratch])
        .ctx(|| format!("{}: io_setup", object()))?;
    let mut b = [0u8; 8];
    vm_read(pid, scratch, &mut b).ctx(|| format!("pid {pid}: cannot read the new aio context"))?;
    let ctx = u64::from_le_bytes(b);
    let made = header_only(&read_ring(pid, ctx, HEADER + EVENT)?);
    if made.as_ref().map(|h| h.nr) != Ok(a.nr) {
        return Err(bad(format!("io_setup here makes a different ring than the image's {} events", a.nr)));
    }
    if ctx != at {
        let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64;
        let r = inj.call(nr::MREMAP, &[ctx, len, len, flags, at]).ctx(|| format!("{}: mremap", object()))?;
        if r != at {
            return Err(bad(format!("mremap moved it to {r:#x}")));
        }
    }
    if inj.raw(nr::IO_SUBMIT, &[at, 0, 0]).ctx(|| format!("pid {pid}: io_submit"))? != 0 {
        return Err(bad("the moved ring is not the context's (mremap did not move the context id)".into()));
    }
    // The kernel's tail to `head` (those events reaped), then to `tail` (those kept).
    let probe = Probe::open(inj, scratch, at)?;
    let filled = (|| -> Result<(), Error> {
        let mut done = 0u64;
        while done < u64::from(a.head) {
            let k = probe.submit(u64::from(a.head) - done)?;
            if k == 0 {
                return Err(bad("the new context takes no more requests".into()));
            }
            done += k;
            let now = header(&read_ring(pid, at, len)?).map_err(bad)?;
            vm_write(pid, at + 8, &now.tail.to_le_bytes()).ctx(|| format!("{}: cannot write head", object()))?;
        }
        let mut done = 0u64;
        while done < u64::from(unreaped) {
            let k = probe.submit(u64::from(unreaped) - done)?;
            if k == 0 {
                return Err(bad(format!("the new context takes {done} requests, not the {unreaped} it held")));
            }
            done += k;
        }
        let now = header(&read_ring(pid, at, len)?).map_err(bad)?;
        if (now.head, now.tail) != (a.head, a.tail) {
            return Err(bad(format!("head and tail came out {}/{}, not {}/{}", now.head, now.tail, a.head, a.tail)));
        }
        let evs: Vec<&[u8]> = a.events.chunks_exact(EVENT as usize).collect();
        put_events(pid, at, a.nr, a.head, &evs)
    })();
    probe.close();
    filled?;
    let rw = (libc::PROT_READ | libc::PROT_WRITE) as u32;
    if v.prot != rw {
        inj.call(nr::MPROTECT, &[at, len, u64::from(v.prot)]).ctx(|| format!("{}: mprotect", object()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(nr: u32, head: u32, tail: u32, events: usize) -> Vec<u8> {
        let mut b = Vec::new();
        for w in [1, nr, head, tail, MAGIC, COMPAT_FEATURES, 0, HEADER as u32] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.resize(HEADER as usize + events * EVENT as usize, 0);
        b
    }

    #[test]
    fn a_header_counts_only_the_events_read() {
        let whole = ring(4, 1, 3, 4);
        let h = header(&whole).expect("a whole ring");
        assert_eq!(events(&whole, h.nr, h.head, h.tail).len(), 2);
        // (Its mapping's length once said the ring held 4 events, read or not: a short read
        // then indexed past the bytes read.)
        assert!(header(&ring(4, 1, 3, 2)).is_err());
        assert!(header(&ring(4, 4, 0, 4)).is_err());
        assert!(header(&whole[..HEADER as usize - 1]).is_err());
        assert!(header_only(&whole[..HEADER as usize]).is_ok_and(|h| h.nr == 4));
    }
}
