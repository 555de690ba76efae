//! Pre-copy: send memory while the tree runs, then only what was written since.
//!
//! Writes are tracked with userfaultfd write-protection in async mode: a uffd is created inside
//! each process by an injected `userfaultfd(2)`, taken with `pidfd_getfd` (and closed in the
//! target, so its fd table is unchanged), and its private anonymous writable mappings are
//! registered in WP mode. `PAGEMAP_SCAN` with `PM_SCAN_WP_MATCHING` then returns the pages
//! written since the last scan and write-protects them again, atomically.
//!
//! The invariant that makes the final, frozen dump correct whatever the tree did meanwhile
//! (mappings that appear, grow, move or vanish): a page is left out of the final image only if
//! it was sent in a round, lies in a mapping that is still registered (`uw` in VmFlags), is
//! present, and is not written since it was last write-protected. Everything else goes into the
//! image as in a plain dump. The pages left out are listed ([`Keep`]) so that the destination
//! puts the copies it already has into the image.

use crate::error::{Ctx, Error};
use crate::procfs;
use ferry_sys::uffd;
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;

const CHUNK: usize = 1 << 20;

/// One tracked process.
struct Tracked {
    host_pid: i32,
    image_pid: i32,
    uffd: OwnedFd,
    pagemap: std::fs::File,
    /// /proc/PID/mem: read through it, not `process_vm_readv`, which would unshare pages the
    /// process shares copy-on-write with its parent or children (see state/cow.rs).
    mem: std::fs::File,
    /// Registered ranges still scanned.
    ranges: Vec<(u64, u64)>,
    /// Pages sent in some round: (start, end) as sent, in sending order (sorted and merged
    /// at the freeze).
    sent: Vec<(u64, u64)>,
}

/// Pages the final image leaves out for one process (the destination has them).
#[derive(Debug, Clone)]
pub struct Keep {
    pub host_pid: i32,
    pub image_pid: i32,
    pub ranges: Vec<(u64, u64)>,
}

/// The write trackers of a tree. Dropping it closes the uffds: the kernel unregisters the
/// mappings and the processes run on untracked.
pub struct Tracker {
    procs: Vec<Tracked>,
}

/// Pages `dump_pages` must leave out, per host pid (set by [`Tracker::finish`] for the next dump
/// of this process, cleared by [`clear_skips`]).
static SKIP: Mutex<Option<SkipMap>> = Mutex::new(None);

/// Page ranges to leave out, per host pid.
type SkipMap = HashMap<i32, Vec<(u64, u64)>>;

/// Where a round hands its pages: (host pid, address, bytes).
pub type PageSink<'a> = dyn FnMut(i32, u64, &[u8]) -> std::io::Result<()> + 'a;

/// Ranges of `pid`'s mappings that may be registered for WP: the private anonymous writable
/// ones (/proc/PID/maps; smaps, which says `uw`, walks every page to count them, ~0.1 s per GiB
/// here: too slow under the freeze). Whether each still is, [`Tracker::finish`] asks the
/// kernel while it scans it (`PM_SCAN_CHECK_WPASYNC`: EPERM if not).
fn maybe_registered(pid: i32) -> Result<Vec<(u64, u64)>, Error> {
    let text = procfs::read_string(pid, "maps")?;
    let maps = procfs::parse(pid, "maps", ferry_proc::parse_maps(&text))?;
    Ok(maps.into_iter().filter(trackable).map(|m| (m.start, m.end)).collect())
}

/// Mappings pre-copy registers: private anonymous (heap included), readable and writable.
fn trackable(m: &ferry_proc::MapEntry) -> bool {
    let anon = matches!(m.path.as_deref(), None | Some("") | Some("[heap]"));
    anon && m.perms.read && m.perms.write && !m.perms.shared
}

/// The parts of `clean` (sorted) that lie in `sent` (sorted, disjoint), appended to `out`.
fn intersect(clean: &[(u64, u64)], sent: &[(u64, u64)], out: &mut Vec<(u64, u64)>) {
    let mut j = sent.partition_point(|s| s.1 <= clean.first().map_or(0, |c| c.0));
    for &(a, b) in clean {
        while j < sent.len() && sent[j].1 <= a {
            j += 1;
        }
        let mut k = j;
        while k < sent.len() && sent[k].0 < b {
            let (s, e) = (sent[k].0.max(a), sent[k].1.min(b));
            match out.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => out.push((s, e)),
            }
            k += 1;
        }
    }
}

/// `ranges` sorted, the overlapping and touching ones merged.
fn merge(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match merged.last_mut() {
            Some(last) if last.1 >= a => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

/// Remove `a..b` from `sent` (unsorted, as sent): the copies sent there are no longer known to
/// be the latest.
fn forget(sent: &mut Vec<(u64, u64)>, a: u64, b: u64) {
    let mut out = Vec::with_capacity(sent.len() + 1);
    for &(s, e) in sent.iter() {
        if e <= a || s >= b {
            out.push((s, e));
            continue;
        }
        if s < a {
            out.push((s, a));
        }
        if e > b {
            out.push((b, e));
        }
    }
    *sent = out;
}

impl Tracker {
    /// Start tracking every process of the tree rooted at `root`. A process that cannot be
    /// tracked is simply copied whole in the final dump.
    pub fn start(root: i32) -> Result<Tracker, Error> {
        let mut procs = Vec::new();
        for pid in crate::freeze::tree_pids(root) {
            match track(root, pid) {
                Ok(t) => procs.push(t),
                Err(e) => tracing::warn!(pid, error = %e, "pre-copy: not tracked, copied whole at the end"),
            }
        }
        Ok(Tracker { procs })
    }

    /// Start tracking one process `pid` of the tree rooted at `root` (`dump -R`, one tracker per
    /// process, state/tracked.rs). Unlike [`Tracker::start`], a failure is the caller's.
    pub fn start_one(root: i32, pid: i32) -> Result<Tracker, Error> {
        Ok(Tracker { procs: vec![track(root, pid)?] })
    }

    /// Take up the tracking of `pid` (a process of the tree rooted at `root`) that an earlier
    /// ferry started and handed over with its userfaultfd `uffd` (a pre-dump, predump.rs):
    /// `sent` are the pages whose copies that run took, which are kept only under the same
    /// invariant (still registered, present, not written since).
    pub fn adopt(root: i32, pid: i32, uffd: OwnedFd, sent: Vec<(u64, u64)>) -> Result<Tracker, Error> {
        let ranges = maybe_registered(pid)?;
        let t = Tracked {
            host_pid: pid,
            image_pid: crate::freeze::image_pid(root, pid),
            uffd,
            pagemap: procfs::open(pid, "pagemap")?,
            mem: procfs::open(pid, "mem")?,
            ranges,
            sent,
        };
        Ok(Tracker { procs: vec![t] })
    }

    /// The pages sent in some round (sorted, merged), of all the tracked processes.
    pub fn sent(&self) -> Vec<(u64, u64)> {
        merge(self.procs.iter().flat_map(|t| t.sent.iter().copied()).collect())
    }

    /// The userfaultfds of the tracked processes, the tracking left on (a pre-dump hands them to
    /// its keeper).
    pub fn into_uffds(mut self) -> Vec<(i32, OwnedFd)> {
        std::mem::take(&mut self.procs).into_iter().map(|t| (t.host_pid, t.uffd)).collect()
    }

    /// One round: every page written since the last round (all present pages the first time)
    /// is write-protected again and handed to `send(host_pid, addr, bytes)`. Returns the bytes
    /// sent.
    pub fn round(&mut self, send: &mut PageSink<'_>) -> Result<u64, Error> {
        let mut total = 0;
        let mut buf = vec![0u8; CHUNK];
        for t in self.procs.iter_mut() {
            let pid = t.host_pid;
            let mut keep = Vec::new();
            for &(start, end) in &t.ranges {
                // Without PM_SCAN_CHECK_WPASYNC: a mapping that is not registered (mapped anew
                // in the middle of a registered one, moved by mremap) is skipped, not an error.
                // With it the walk failed there with EPERM after it had already write-protected
                // the written pages before that mapping, which it then never reported: they
                // looked clean at the freeze and were kept with their older copy.
                let regions = match uffd::scan(
                    t.pagemap.as_fd(),
                    start,
                    end,
                    uffd::PM_SCAN_WP_MATCHING,
                    0,
                    uffd::PAGE_IS_WRITTEN,
                    ferry_sys::process::page_is::PRESENT | ferry_sys::process::page_is::SWAPPED,
                ) {
                    Ok(r) => r,
                    Err(e) => {
                        // Part of the range may have been write-protected without being
                        // reported: no copy sent in it may be kept; its pages go in the final
                        // dump.
                        tracing::info!(pid, start, error = %e, "pre-copy: range dropped");
                        forget(&mut t.sent, start, end);
                        continue;
                    }
                };
                keep.push((start, end));
                for (rs, re) in regions {
                    let mut addr = rs;
                    while addr < re {
                        let len = ((re - addr) as usize).min(CHUNK);
                        let got =
                            std::os::unix::fs::FileExt::read_at(&t.mem, &mut buf[..len], addr).unwrap_or_default();
                        if got == 0 {
                            // unmapped meanwhile: protected but not read, so no earlier copy of
                            // these pages may be kept either
                            forget(&mut t.sent, addr, re);
                            break;
                        }
                        send(pid, addr, &buf[..got]).ctx(|| "pre-copy: cannot send pages".to_string())?;
                        match t.sent.last_mut() {
                            Some(last) if last.1 == addr => last.1 = addr + got as u64,
                            _ => t.sent.push((addr, addr + got as u64)),
                        }
                        total += got as u64;
                        addr += got as u64;
                    }
                }
            }
            t.ranges = keep;
        }
        Ok(total)
    }

    /// With the tree frozen: the pages the final dump leaves out (see the module doc), which
    /// are also registered for `dump_pages` to skip.
    pub fn finish(&mut self) -> Result<Vec<Keep>, Error> {
        let mut out = Vec::new();
        let mut skips = HashMap::new();
        for t in self.procs.iter() {
            let pid = t.host_pid;
            let merged = merge(t.sent.clone());
            let mut ranges: Vec<(u64, u64)> = Vec::new();
            for (start, end) in maybe_registered(pid)? {
                // present, not written since last protected, in a mapping still registered
                let clean = match uffd::scan(
                    t.pagemap.as_fd(),
                    start,
                    end,
                    uffd::PM_SCAN_CHECK_WPASYNC,
                    uffd::PAGE_IS_WRITTEN,
                    uffd::PAGE_IS_WRITTEN,
                    ferry_sys::process::page_is::PRESENT | ferry_sys::process::page_is::SWAPPED,
                ) {
                    Ok(c) => c,
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => continue, // not registered
                    Err(e) => return Err(e).ctx(|| format!("pid {pid}: PAGEMAP_SCAN of {start:#x}-{end:#x}")),
                };
                intersect(&clean, &merged, &mut ranges);
            }
            skips.insert(pid, ranges.clone());
            out.push(Keep { host_pid: pid, image_pid: t.image_pid, ranges });
        }
        // (Added to those of the other trackers of the dump: one per process for `dump -R`.)
        SKIP.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(HashMap::new).extend(skips);
        Ok(out)
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        clear_skips();
    }
}

/// Forget the pages to skip: the next dump stores everything again.
pub fn clear_skips() {
    *SKIP.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

/// `regions` (of a PAGEMAP_SCAN of process `pid`) less the pages pre-copy left out.
pub fn without_skipped(pid: i32, regions: Vec<ferry_sys::process::PageRegion>) -> Vec<ferry_sys::process::PageRegion> {
    let guard = SKIP.lock().unwrap_or_else(|p| p.into_inner());
    let Some(skip) = guard.as_ref().and_then(|m| m.get(&pid)) else {
        return regions;
    };
    crate::state::memory::subtract(regions, skip) // (skip ranges are sorted and disjoint)
}

/// Whether writes can be tracked here (a userfaultfd with write-protection in async mode):
/// CRIU's `mem_track` feature, which pre-dumps need.
pub fn can_track() -> bool {
    uffd::own().is_ok_and(|fd| uffd::api(fd.as_fd(), uffd::UFFD_FEATURE_WP_ASYNC).is_ok())
}

fn track(root: i32, pid: i32) -> Result<Tracked, Error> {
    let pidfd = ferry_sys::process::pidfd_open(pid).ctx(|| format!("pid {pid}: pidfd_open"))?;
    // Everything under the freeze: the mappings read are the mappings registered (a stale
    // range would split a mapping the process then sees as two, and mremap of it would fail).
    let (uffd, ranges) = crate::freeze::with_injector(pid, |inj, _scratch| {
        let maps_text = procfs::read_string(pid, "maps")?;
        let maps = procfs::parse(pid, "maps", ferry_proc::parse_maps(&maps_text))?;
        let fd = inj
            .call(uffd::NR_USERFAULTFD, &[(libc::O_CLOEXEC | libc::O_NONBLOCK) as u64 | uffd::UFFD_USER_MODE_ONLY])
            .ctx(|| format!("pid {pid}: injected userfaultfd()"))?;
        let ours = ferry_sys::process::pidfd_getfd(pidfd.as_fd(), fd as i32);
        let closed = inj.call(ferry_sys::consts::nr::CLOSE, &[fd]);
        let uffd = ours.ctx(|| format!("pid {pid}: pidfd_getfd of its userfaultfd"))?;
        closed.ctx(|| format!("pid {pid}: injected close()"))?;
        uffd::api(uffd.as_fd(), uffd::UFFD_FEATURE_WP_ASYNC).ctx(|| format!("pid {pid}: UFFDIO_API (WP_ASYNC)"))?;
        let mut ranges = Vec::new();
        for m in &maps {
            if !trackable(m) {
                continue;
            }
            match uffd::register(uffd.as_fd(), m.start, m.end - m.start, uffd::UFFDIO_REGISTER_MODE_WP) {
                Ok(()) => ranges.push((m.start, m.end)),
                Err(e) => tracing::info!(pid, start = m.start, error = %e, "pre-copy: mapping not tracked"),
            }
        }
        Ok((uffd, ranges))
    })?;
    let pagemap = procfs::open(pid, "pagemap")?;
    let mem = procfs::open(pid, "mem")?;
    Ok(Tracked {
        host_pid: pid,
        image_pid: crate::freeze::image_pid(root, pid),
        uffd,
        pagemap,
        mem,
        ranges,
        sent: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::{forget, intersect};

    #[test]
    fn forgotten_pages_are_no_longer_sent() {
        let mut sent = vec![(0x5000, 0x9000), (0x0, 0x2000), (0x2000, 0x3000), (0xa000, 0xb000)];
        forget(&mut sent, 0x1000, 0x6000);
        assert_eq!(sent, vec![(0x6000, 0x9000), (0x0, 0x1000), (0xa000, 0xb000)]);
        forget(&mut sent, 0x7000, 0x8000);
        assert_eq!(sent, vec![(0x6000, 0x7000), (0x8000, 0x9000), (0x0, 0x1000), (0xa000, 0xb000)]);
    }

    #[test]
    fn kept_pages_are_clean_and_sent() {
        let mut out = Vec::new();
        let clean = [(0x1000, 0x5000), (0x8000, 0x9000), (0x10000, 0x20000)];
        let sent = [(0x0, 0x2000), (0x3000, 0x9000), (0x12000, 0x13000), (0x13000, 0x14000), (0x30000, 0x31000)];
        intersect(&clean, &sent, &mut out);
        assert_eq!(out, vec![(0x1000, 0x2000), (0x3000, 0x5000), (0x8000, 0x9000), (0x12000, 0x14000)]);
        let mut none = Vec::new();
        intersect(&clean, &[], &mut none);
        assert!(none.is_empty());
    }
}
