//! `dump -R` from pages copied while the tree runs: the write tracking pre-copy migration uses
//! (precopy.rs: userfaultfd write-protection in async mode, `PAGEMAP_SCAN`), with the image's
//! page file as the destination.
//!
//! Before the freeze, ferry registers each process's private anonymous writable mappings with a
//! uffd of its own (a moment's freeze per process, counted in the frozen time), and copies every
//! present page of them into the page file, write-protecting them as it goes; a second or third
//! round copies what was written meanwhile (appended: the page runs point at the latest copy).
//! Then it reads the VmFlags (smaps, a walk of every page table: not under the freeze).
//!
//! Under the freeze: the tree's state as in any dump, then [`Pre::finish`] keeps the pages that
//! were copied, are still present and registered, and were not written since (precopy.rs's
//! invariant); every other page to store (written since, in a mapping made or moved since, or
//! outside the tracked mappings: stack, file mappings' dirty pages, shared memory up to
//! [`super::snapshot::shared_hold`]) is copied into ferry's memory ([`Pre::hold`]). The tree
//! then runs again, the uffds are closed (the kernel unregisters the mappings: no `uw` flag is
//! left, whatever happens, also when the dump fails), and the image is finished from the page
//! file and those copies.
//!
//! When much was written since the last round (more than [`copy_max`] of the process's anonymous
//! memory), the copy under the freeze would cost more than a fork: the dump takes the
//! copy-on-write snapshot of state/snapshot.rs instead, and the page file starts again.
//!
//! The VmFlags are read before the freeze and again once the tree runs: a mapping whose flags
//! differ (a `madvise` during the dump) makes the dump start again with the fork snapshot,
//! whose flags are the freeze's.

use crate::error::Error;
use crate::precopy::Tracker;
use crate::procfs;
use crate::state::memory::{FrozenMemory, Holds};
use ferry_image::{dir::StreamFile, ImageWriter, Mm, PageRun, VmaKind, PAGE_SIZE};
use ferry_sys::process::PageRegion;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::AsFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Whether `dump -R` takes its pages while the tree runs (this module): with plain page files.
/// `FERRY_DUMP_R=fork` always takes the fork snapshots.
pub fn wanted() -> bool {
    if std::env::var("FERRY_DUMP_R").is_ok_and(|v| v == "fork") {
        return false;
    }
    crate::state::memory::page_compression() == 0
}

/// The most bytes (per process) copied under the freeze before the fork snapshot is cheaper:
/// 1/32 of its anonymous memory, at least 4 MiB (a fork copies the page tables, ~27 ms per GiB
/// of 4 KiB pages on a quiet machine here; a copy of 1/32 GiB takes about as long).
/// `FERRY_DUMP_R_COPY_MAX=BYTES` sets another limit.
pub fn copy_max(rss_anon: u64) -> u64 {
    if let Some(v) = std::env::var("FERRY_DUMP_R_COPY_MAX").ok().and_then(|v| v.parse().ok()) {
        return v;
    }
    (rss_anon / 32).max(4 << 20)
}

/// What the rounds made of a page they read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Copy {
    /// Stored in the page file at this offset.
    At(u64),
    /// All zeros: recorded, not stored.
    Zero,
    /// On the same frame as its parent's page (shared copy-on-write since a fork): not stored,
    /// the parent's copy serves if it still is at the freeze (see [`Pre::hold`]).
    Shared,
}

impl Copy {
    /// The same kind of copy `by` bytes further on.
    fn advanced(self, by: u64) -> Copy {
        match self {
            Copy::At(o) => Copy::At(o + by),
            other => other,
        }
    }
}

/// What the rounds made of each page they read: address → (end, copy). A later copy replaces
/// the earlier one.
#[derive(Default)]
struct Copies(BTreeMap<u64, (u64, Copy)>);

impl Copies {
    fn insert(&mut self, a: u64, b: u64, copy: Copy) {
        // Cut what overlaps a..b out of the entries there.
        let before = self.0.range(..a).next_back().map(|(&s, &e)| (s, e));
        if let Some((s, (e, o))) = before {
            if e > a {
                self.0.insert(s, (a, o));
                if e > b {
                    self.0.insert(b, (e, o.advanced(b - s)));
                }
            }
        }
        let inside: Vec<(u64, (u64, Copy))> = self.0.range(a..b).map(|(&s, &v)| (s, v)).collect();
        for (s, (e, o)) in inside {
            self.0.remove(&s);
            if e > b {
                self.0.insert(b, (e, o.advanced(b - s)));
            }
        }
        self.0.insert(a, (b, copy));
    }

    /// The entries overlapping `a..b`, cut to it: (start, end, copy at start).
    fn within(&self, a: u64, b: u64) -> impl Iterator<Item = (u64, u64, Copy)> + '_ {
        let first = self.0.range(..=a).next_back().map_or(a, |(&s, _)| s);
        self.0.range(first..b).filter_map(move |(&s, &(e, c))| {
            let (lo, hi) = (s.max(a), e.min(b));
            (lo < hi).then(|| (lo, hi, c.advanced(lo - s)))
        })
    }

    /// The parts of `a..b` whose copies `want` takes, appended to `out` (merged).
    fn ranges(&self, a: u64, b: u64, want: impl Fn(Copy) -> bool, out: &mut Vec<(u64, u64)>) {
        for (lo, hi, _) in self.within(a, b).filter(|&(_, _, c)| want(c)) {
            match out.last_mut() {
                Some(last) if last.1 == lo => last.1 = hi,
                _ => out.push((lo, hi)),
            }
        }
    }

    /// The page runs of `a..b` (every page of which was copied): stored copies only.
    fn runs(&self, a: u64, b: u64, out: &mut Vec<PageRun>) {
        for (addr, hi, copy) in self.within(a, b) {
            let Copy::At(offset) = copy else { continue };
            let nr_pages = (hi - addr) / PAGE_SIZE;
            match out.last_mut() {
                Some(r) if r.addr + r.nr_pages * PAGE_SIZE == addr && r.offset + r.nr_pages * PAGE_SIZE == offset => {
                    r.nr_pages += nr_pages
                }
                _ => out.push(PageRun { addr, nr_pages, offset }),
            }
        }
    }
}

/// The pages of one process copied before the freeze, and what is taken of it under it.
pub struct Pre {
    pub pid: i32,
    /// When the dump started (the rounds are part of it).
    pub started: Instant,
    tracker: Option<Tracker>,
    /// Its page file, holding the copies (taken by the page dump, [`FrozenMemory::stream`]).
    stream: Mutex<Option<StreamFile>>,
    copies: Copies,
    /// VmFlags read before the freeze: start → (end, flags).
    flags_before: HashMap<u64, (u64, Vec<String>)>,
    /// The pages kept from the rounds (sorted, disjoint), found under the freeze.
    kept: Vec<(u64, u64)>,
    /// The pages a round found on the parent's frames and not written since (sorted).
    found_shared: Vec<(u64, u64)>,
    /// The pages kept from the rounds, per mapping (by start), as page runs.
    placed: HashMap<u64, Vec<PageRun>>,
    /// What was taken while frozen.
    holds: Holds,
    /// How long the process was frozen to start tracking it.
    pub frozen_to_track: Duration,
    /// Bytes of the page file copied from a pre-dump's (the parent image, predump.rs): the
    /// copies below this offset were not read again from the process.
    parent_len: u64,
    /// Of the pages kept ([`Pre::finish`]), the bytes whose copy is the pre-dump's.
    pub kept_from_parent: u64,
}

/// A pre-dump's copies of one process and its write tracking, for the next dump (or pre-dump)
/// to start from (predump.rs).
pub struct FromParent {
    /// The parent image's page file of the process (verified).
    pub pages: std::fs::File,
    /// The userfaultfd the pre-dump registered the process's mappings with, from the keeper.
    pub uffd: std::os::fd::OwnedFd,
    /// The pages copied there (the latest copy of each page), and those found zero.
    pub runs: Vec<PageRun>,
    pub zeros: Vec<(u64, u64)>,
}

/// What a pre-dump leaves of one process: its tracking (the userfaultfd) and the copies in its
/// page file (sorted, disjoint).
pub struct PreDumped {
    pub uffd: std::os::fd::OwnedFd,
    pub runs: Vec<PageRun>,
    pub zeros: Vec<(u64, u64)>,
    /// Bytes of the page file copied from the parent's, and written by this pre-dump.
    pub from_parent: u64,
    pub written: u64,
}

/// VmFlags without the userfaultfd registration that is ferry's own (`uw`: the tracking).
fn own_flags_out(mut flags: Vec<String>) -> Vec<String> {
    flags.retain(|f| f != "uw");
    flags
}

fn smaps_flags(pid: i32) -> Result<HashMap<u64, (u64, Vec<String>)>, Error> {
    let text = procfs::read_string(pid, "smaps")?;
    Ok(procfs::parse(pid, "smaps", ferry_proc::parse_smaps(&text))?
        .into_iter()
        .map(|s| (s.start, (s.end, own_flags_out(s.vm_flags))))
        .collect())
}

/// The process's resident anonymous memory, in bytes (`RssAnon`).
fn rss_anon(pid: i32) -> Result<u64, Error> {
    let status = procfs::read_string(pid, "status")?;
    Ok(procfs::parse(pid, "status", ferry_proc::parse_status(&status))?.rss_anon_kib * 1024)
}

/// The parent of a process of the tree, whose pages its child may share copy-on-write.
struct Parent {
    pid: i32,
    /// Its /proc/PID/pagemap, and the child's.
    pagemap: std::fs::File,
    child_pagemap: std::fs::File,
}

impl Parent {
    /// The parts (byte offsets) of the `len` bytes at `addr` the child read that are not on
    /// its parent's frames; those that are are recorded in `copies` as [`Copy::Shared`].
    fn own_pages(&self, pid: i32, addr: u64, len: usize, copies: &mut Copies) -> std::io::Result<Vec<(usize, usize)>> {
        let pages = len as u64 / PAGE_SIZE;
        let same = crate::state::memory::sharing::same_frames(
            (pid, &self.child_pagemap),
            (self.pid, &self.pagemap),
            addr,
            pages,
        )
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        let mut own: Vec<(usize, usize)> = Vec::new();
        let page = PAGE_SIZE as usize;
        for (k, shared) in same.into_iter().enumerate() {
            let (a, b) = (k * page, (k + 1) * page);
            if shared {
                copies.insert(addr + a as u64, addr + b as u64, Copy::Shared);
                continue;
            }
            match own.last_mut() {
                Some(last) if last.1 == a => last.1 = b,
                _ => own.push((a, b)),
            }
        }
        Ok(own)
    }
}

/// Buffers of pages in flight between the reading and the writing thread of the rounds.
const BUFFERS: usize = 4;

/// The rounds before the freeze (at most 4: until one is under 2 MiB or stops shrinking): this
/// thread reads the pages (`Tracker::round`) and tells the zero ones, another appends the rest
/// to `stream` and hashes them (its BLAKE3 digest is the slower half), so that both cores work.
/// Returns the stream and the bytes the last round found written.
fn copy_rounds(
    pid: i32,
    tracker: &mut Tracker,
    mut stream: StreamFile,
    copies: &mut Copies,
    parent: Option<&Parent>,
) -> Result<(StreamFile, u64), Error> {
    let path = stream.path().display().to_string();
    let werr = |e: std::io::Error| Error::Sys { object: format!("cannot write {path}"), source: e };
    let stopped = || std::io::Error::other("the page writer stopped");
    let mut next = stream.len();
    std::thread::scope(|sc| {
        let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(BUFFERS);
        let (free_tx, free_rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let writer = sc.spawn(move || -> std::io::Result<StreamFile> {
            for buf in full_rx {
                stream.write_all(&buf)?;
                let _ = free_tx.send(buf);
            }
            Ok(stream)
        });
        let mut made = 0;
        let mut rounds = || -> Result<u64, Error> {
            let (mut prev, mut last) = (u64::MAX, 0);
            for round in 0..4 {
                let t = Instant::now();
                let mut stored = 0u64;
                let sent = tracker.round(&mut |_, addr, bytes| {
                    // (Whole pages: those on the parent's frames and zero ones are recorded, not
                    // stored.)
                    let own = match parent {
                        Some(p) => p.own_pages(pid, addr, bytes.len(), copies)?,
                        None => vec![(0, bytes.len())],
                    };
                    let runs = own.into_iter().flat_map(|(from, to)| {
                        crate::state::memory::zero_runs(&bytes[from..to])
                            .into_iter()
                            .map(move |(i, j, zero)| (from + i, from + j, zero))
                    });
                    for (i, j, zero) in runs {
                        let (a, b) = (addr + i as u64, addr + j as u64);
                        if zero {
                            copies.insert(a, b, Copy::Zero);
                        } else {
                            let mut buf = match free_rx.try_recv() {
                                Ok(buf) => buf,
                                Err(_) if made <= BUFFERS => {
                                    made += 1;
                                    Vec::new()
                                }
                                Err(_) => free_rx.recv().map_err(|_| stopped())?,
                            };
                            buf.clear();
                            buf.extend_from_slice(&bytes[i..j]);
                            full_tx.send(buf).map_err(|_| stopped())?;
                            copies.insert(a, b, Copy::At(next));
                            next += b - a;
                            stored += b - a;
                        }
                    }
                    Ok(())
                })?;
                tracing::info!(
                    pid,
                    round = round + 1,
                    sent,
                    stored,
                    round_ms = t.elapsed().as_secs_f64() * 1e3,
                    "dump -R: pages copied while running"
                );
                last = sent;
                if sent < 2 << 20 || sent.saturating_mul(10) > prev.saturating_mul(8) {
                    break;
                }
                prev = sent;
            }
            Ok(last)
        };
        let got = rounds();
        drop(full_tx);
        // (The writer's own error first: a failed write stops the reader too.)
        let stream =
            writer.join().map_err(|_| werr(std::io::Error::other("the page writer panicked")))?.map_err(werr)?;
        Ok((stream, got?))
    })
}

/// What [`begin`] made of a process before the freeze.
struct Begun {
    tracker: Tracker,
    copies: Copies,
    stream: StreamFile,
    /// Bytes the last round found written.
    last: u64,
    frozen_to_track: Duration,
    parent_len: u64,
}

/// Track `pid` (or take up a pre-dump's tracking of it, `from`) and copy its pages into its
/// page file in `img`: the pre-dump's page file first, as it is, then what the rounds find.
fn begin(root: i32, pid: i32, ppid: i32, img: &mut ImageWriter, from: Option<FromParent>) -> Result<Begun, Error> {
    let image_pid = crate::freeze::image_pid(root, pid);
    let parent = match ppid {
        0 => None,
        _ => Some(Parent {
            pid: ppid,
            pagemap: procfs::open(ppid, "pagemap")?,
            child_pagemap: procfs::open(pid, "pagemap")?,
        }),
    };
    let mut stream = img.stream(&ferry_image::pages_file(image_pid))?;
    let path = stream.path().display().to_string();
    let werr = |e: std::io::Error| Error::Sys { object: format!("cannot write {path}"), source: e };
    let mut copies = Copies::default();
    let (mut tracker, frozen_to_track, parent_len) = match from {
        None => {
            let t = Instant::now();
            let tracker = Tracker::start_one(root, pid)?;
            let frozen_to_track = t.elapsed();
            stream.write_all(&ferry_image::pages_header()).map_err(werr)?;
            (tracker, frozen_to_track, 0)
        }
        Some(f) => {
            let len = copy_parent_pages(&f.pages, &mut stream).map_err(werr)?;
            let header = ferry_image::pages_header().len() as u64;
            let mut sent = Vec::with_capacity(f.runs.len() + f.zeros.len());
            for r in &f.runs {
                let bytes = r.nr_pages.saturating_mul(PAGE_SIZE);
                let fits = r.offset >= header && r.offset.checked_add(bytes).is_some_and(|e| e <= len);
                if r.addr % PAGE_SIZE != 0 || r.offset % PAGE_SIZE != header % PAGE_SIZE || !fits {
                    return Err(Error::Invalid {
                        object: format!("pid {pid}: the pre-dump's page runs"),
                        what: format!(
                            "run {:#x}+{} pages at offset {} of a {len}-byte page file",
                            r.addr, r.nr_pages, r.offset
                        ),
                    });
                }
                copies.insert(r.addr, r.addr + bytes, Copy::At(r.offset));
                sent.push((r.addr, r.addr + bytes));
            }
            for &(a, z) in &f.zeros {
                copies.insert(a, z, Copy::Zero);
                sent.push((a, z));
            }
            (Tracker::adopt(root, pid, f.uffd, sent)?, Duration::ZERO, len)
        }
    };
    let (stream, last) = copy_rounds(pid, &mut tracker, stream, &mut copies, parent.as_ref())?;
    Ok(Begun { tracker, copies, stream, last, frozen_to_track, parent_len })
}

/// Copy a pre-dump's page file `from` (the whole file, its header included: the offsets stay)
/// into `to`, before the freeze. Returns its length.
fn copy_parent_pages(from: &std::fs::File, to: &mut StreamFile) -> std::io::Result<u64> {
    use std::io::Read;
    let mut buf = vec![0u8; 1 << 20];
    let mut from = from;
    let mut len = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(len);
        }
        to.write_all(&buf[..n])?;
        len += n as u64;
    }
}

impl Pre {
    /// Before the freeze: track `pid`, a process of the tree rooted at `root`, and copy its
    /// memory into its page file in `img` (named by the pid the image gives it). Pages it
    /// shares copy-on-write with its parent `ppid` in the tree (0 for the root) are left to the
    /// parent's copies.
    pub fn start(
        root: i32,
        pid: i32,
        ppid: i32,
        img: &mut ImageWriter,
        from: Option<FromParent>,
    ) -> Result<Pre, Error> {
        let started = Instant::now();
        let b = begin(root, pid, ppid, img, from)?;
        let (tracker, copies, stream, last, frozen_to_track, parent_len) =
            (b.tracker, b.copies, b.stream, b.last, b.frozen_to_track, b.parent_len);
        // Written faster than it is copied: what the last round found is about what the freeze
        // would have to copy. Over twice the limit, the fork is taken at once (and the freeze
        // spares the scan).
        let rss_anon = rss_anon(pid)?;
        if last > 2 * copy_max(rss_anon) {
            tracing::info!(pid, last, "dump -R: written too fast to copy ahead: a fork snapshot instead");
            return Err(Error::Invalid {
                object: format!("pid {pid}"),
                what: format!("{last} bytes written in the last round"),
            });
        }
        let t = Instant::now();
        let flags_before = smaps_flags(pid)?;
        tracing::info!(pid, smaps_ms = t.elapsed().as_secs_f64() * 1e3, "dump -R: VmFlags read before the freeze");
        Ok(Pre {
            pid,
            started,
            tracker: Some(tracker),
            stream: Mutex::new(Some(stream)),
            copies,
            flags_before,
            kept: Vec::new(),
            found_shared: Vec::new(),
            placed: HashMap::new(),
            holds: Holds::default(),
            frozen_to_track,
            parent_len,
            kept_from_parent: 0,
        })
    }

    /// A pre-dump (predump.rs): [`Pre::start`]'s rounds, no freeze; the page file is finished
    /// into `img` and the tracking handed back, still on.
    pub fn pre_dump(
        root: i32,
        pid: i32,
        ppid: i32,
        img: &mut ImageWriter,
        from: Option<FromParent>,
    ) -> Result<PreDumped, Error> {
        let b = begin(root, pid, ppid, img, from)?;
        // Only the copies the tracker still vouches for (a range it dropped, a page unmapped
        // meanwhile: not): the next dump keeps them only if not written since.
        let (mut runs, mut zeros) = (Vec::new(), Vec::new());
        for (a, z) in b.tracker.sent() {
            b.copies.runs(a, z, &mut runs);
            b.copies.ranges(a, z, |c| c == Copy::Zero, &mut zeros);
        }
        let written = b.stream.len().saturating_sub(b.parent_len.max(ferry_image::pages_header().len() as u64));
        img.finish_stream(b.stream)?;
        let mut uffds = b.tracker.into_uffds();
        let uffd = uffds.pop().map(|(_, fd)| fd).ok_or_else(|| Error::Invalid {
            object: format!("pid {pid}"),
            what: "no write tracking to hand over".into(),
        })?;
        Ok(PreDumped { uffd, runs, zeros, from_parent: b.parent_len, written })
    }

    /// Frozen, first thing: the pages kept from the rounds (precopy.rs's invariant, see the
    /// module doc). Returns whether what is left is small enough to copy now; if not, the
    /// tracking ends and the page file is dropped (the fork snapshot takes everything).
    pub fn finish(&mut self) -> Result<bool, Error> {
        let pid = self.pid;
        let t = Instant::now();
        let Some(tracker) = self.tracker.as_mut() else { return Ok(false) };
        let keeps = tracker.finish()?;
        crate::inject::fault_fail_named("fail-tracked-finish")?;
        let mut clean: Vec<(u64, u64)> = keeps.into_iter().flat_map(|k| k.ranges).collect();
        clean.sort_unstable();
        // Kept: the clean pages the rounds copied (or found zero). Those they found on the
        // parent's frames are not: whether they still are is found under the freeze
        // (sharing.rs), and the process then copies those no longer shared in `hold`.
        let (mut kept, mut shared) = (Vec::new(), Vec::new());
        for &(a, b) in &clean {
            self.copies.ranges(a, b, |c| c != Copy::Shared, &mut kept);
            self.copies.ranges(a, b, |c| c == Copy::Shared, &mut shared);
        }
        let bytes = |r: &[(u64, u64)]| r.iter().map(|r| r.1 - r.0).sum::<u64>();
        let (kept_bytes, shared_bytes) = (bytes(&kept), bytes(&shared));
        let parent_len = self.parent_len;
        let mut from_parent = Vec::new();
        for &(a, b) in &kept {
            self.copies.ranges(a, b, |c| matches!(c, Copy::At(o) if o < parent_len), &mut from_parent);
        }
        self.kept_from_parent = bytes(&from_parent);
        let rss_anon = rss_anon(pid)?;
        // (Pages shared with the parent are counted as if they still were.)
        let left = rss_anon.saturating_sub(kept_bytes + shared_bytes);
        let small = left <= copy_max(rss_anon);
        tracing::info!(
            pid,
            kept_bytes,
            kept_from_parent = self.kept_from_parent,
            shared_bytes,
            left,
            small,
            finish_ms = t.elapsed().as_secs_f64() * 1e3,
            "dump -R: pages kept from the rounds"
        );
        if !small {
            self.end_tracking();
            drop(self.stream.lock().unwrap_or_else(|p| p.into_inner()).take());
            return Ok(false);
        }
        self.kept = kept;
        self.found_shared = shared;
        Ok(true)
    }

    /// Under the freeze, after [`Pre::finish`]: the pages kept from the rounds (sorted).
    pub fn kept(&self) -> &[(u64, u64)] {
        &self.kept
    }

    /// Under the freeze, after [`Pre::finish`]: the pages a round found on the parent's frames
    /// and not written since (sorted; see `sharing::from_rounds`).
    pub fn found_shared(&self) -> &[(u64, u64)] {
        &self.found_shared
    }

    /// Close the uffd: the kernel unregisters the mappings (no `uw` flag left).
    pub fn end_tracking(&mut self) {
        self.tracker = None;
    }

    /// Still frozen, after the tree's state: the VmFlags of `mm` as read before the freeze (see
    /// [`Pre::check_flags`]), before the tree's copy-on-write sharing is looked for (which
    /// needs them).
    pub fn flags_before(&self, mm: &mut Mm) -> Result<(), Error> {
        for v in mm.vmas.iter_mut() {
            if let Some((end, flags)) = self.flags_before.get(&v.start) {
                if *end == v.end {
                    v.vm_flags = flags.clone();
                    crate::state::memory::check_flags(self.pid, v)?;
                }
            }
        }
        Ok(())
    }

    /// Still frozen, after [`Pre::flags_before`] and the sharing: a copy of every page to store
    /// that the rounds did not keep. Pages on the parent's frames (`sharing.exclude`) are the
    /// parent's to store, kept or not. `shared_seen` and
    /// `budget` are the dump's, as for a snapshot ([`super::snapshot::Snapshot::hold`]).
    pub fn hold(
        &mut self,
        mm: &mut Mm,
        sharing: &crate::state::memory::Sharing,
        shared_seen: &mut HashSet<(u64, u64, u64)>,
        budget: &mut u64,
    ) -> Result<(), Error> {
        let pid = self.pid;
        let t = Instant::now();
        let mem = procfs::open(pid, "mem")?;
        let pagemap = procfs::open(pid, "pagemap")?;
        let mut bytes = 0u64;
        let as_regions = |r: &[(u64, u64)]| -> Vec<PageRegion> {
            r.iter().map(|&(start, end)| PageRegion { start, end, categories: 0 }).collect()
        };
        for v in mm.vmas.iter_mut() {
            let kind = VmaKind::try_from(v.kind).unwrap_or(VmaKind::Invalid);
            if v.sysv {
                continue;
            }
            if kind == VmaKind::SharedAnon {
                self.holds.shared(pid, v, shared_seen, budget)?;
                continue;
            }
            if !matches!(kind, VmaKind::Anon | VmaKind::FilePrivate) {
                continue;
            }
            let from = self.kept.partition_point(|r| r.1 <= v.start);
            let kept: Vec<(u64, u64)> = self.kept[from..]
                .iter()
                .take_while(|r| r.0 < v.end)
                .map(|r| (r.0.max(v.start), r.1.min(v.end)))
                .collect();
            let kept: Vec<(u64, u64)> = crate::state::memory::subtract(as_regions(&kept), &sharing.exclude)
                .into_iter()
                .map(|r| (r.start, r.end))
                .collect();
            let regions = crate::state::memory::regions_to_store(pagemap.as_fd(), pid, v, &sharing.exclude)?;
            let regions = crate::state::memory::subtract(regions, &kept);
            bytes += self.holds.copy_regions(&mem, pid, v.start, regions)?;
            let mut runs = Vec::new();
            for &(a, b) in &kept {
                self.copies.runs(a, b, &mut runs);
            }
            self.placed.insert(v.start, runs);
        }
        tracing::info!(pid, bytes, hold_ms = t.elapsed().as_secs_f64() * 1e3, "dump -R: the rest copied while frozen");
        Ok(())
    }

    /// Once the tree runs again: the VmFlags read now must be those read before the freeze
    /// (a mapping made since takes them from now). Returns false if one differs, or a mapping
    /// of the freeze is in neither read: the dump is then taken again, with a fork snapshot.
    pub fn check_flags(&self, mm: &mut Mm) -> Result<bool, Error> {
        let t = Instant::now();
        let after = smaps_flags(self.pid)?;
        for v in mm.vmas.iter_mut() {
            let before = self.flags_before.get(&v.start).filter(|(e, _)| *e == v.end);
            let now = after.get(&v.start).filter(|(e, _)| *e == v.end);
            match (before, now) {
                (Some((_, b)), Some((_, n))) if b == n => {}
                // (Gone since the thaw: as read before the freeze, which nothing contradicts.)
                (Some(_), None) => {}
                (None, Some((_, n))) => {
                    v.vm_flags = n.clone();
                    crate::state::memory::check_flags(self.pid, v)?;
                }
                _ => {
                    tracing::info!(
                        pid = self.pid,
                        at = v.start,
                        "dump -R: the VmFlags of a mapping changed during the dump"
                    );
                    return Ok(false);
                }
            }
        }
        tracing::info!(pid = self.pid, smaps_ms = t.elapsed().as_secs_f64() * 1e3, "dump -R: VmFlags checked");
        Ok(true)
    }
}

impl FrozenMemory for Pre {
    fn pid(&self) -> i32 {
        self.pid
    }

    fn holds(&self) -> &Holds {
        &self.holds
    }

    fn placed(&self, start: u64) -> &[PageRun] {
        self.placed.get(&start).map_or(&[][..], |r| &r[..])
    }

    fn stream(&self) -> Option<StreamFile> {
        self.stream.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

#[cfg(test)]
mod tests {
    use super::{Copies, Copy};
    use ferry_image::PageRun;

    #[test]
    fn later_copies_replace_earlier_ones() {
        let mut c = Copies::default();
        c.insert(0x0, 0x8000, Copy::At(0x1000));
        c.insert(0x2000, 0x4000, Copy::At(0x20000));
        c.insert(0x5000, 0x6000, Copy::Zero);
        let mut runs = Vec::new();
        c.runs(0x1000, 0x8000, &mut runs);
        let r = |addr, nr_pages, offset| PageRun { addr, nr_pages, offset };
        assert_eq!(runs, vec![r(0x1000, 1, 0x2000), r(0x2000, 2, 0x20000), r(0x4000, 1, 0x5000), r(0x6000, 2, 0x7000)]);
        c.insert(0x0, 0x9000, Copy::At(0x40000));
        let mut all = Vec::new();
        c.runs(0x0, 0x9000, &mut all);
        assert_eq!(all, vec![r(0x0, 9, 0x40000)]);
    }

    #[test]
    fn shared_pages_are_neither_stored_nor_kept() {
        let mut c = Copies::default();
        c.insert(0x0, 0x6000, Copy::At(0x1000));
        c.insert(0x1000, 0x3000, Copy::Shared);
        c.insert(0x4000, 0x5000, Copy::Zero);
        let (mut own, mut shared, mut zeros) = (Vec::new(), Vec::new(), Vec::new());
        c.ranges(0x0, 0x8000, |k| k != Copy::Shared, &mut own);
        c.ranges(0x0, 0x8000, |k| k == Copy::Shared, &mut shared);
        c.ranges(0x0, 0x8000, |k| k == Copy::Zero, &mut zeros);
        assert_eq!(own, vec![(0x0, 0x1000), (0x3000, 0x6000)]);
        assert_eq!(shared, vec![(0x1000, 0x3000)]);
        assert_eq!(zeros, vec![(0x4000, 0x5000)]);
        let mut runs = Vec::new();
        c.runs(0x0, 0x6000, &mut runs);
        let r = |addr, nr_pages, offset| PageRun { addr, nr_pages, offset };
        assert_eq!(runs, vec![r(0x0, 1, 0x1000), r(0x3000, 1, 0x4000), r(0x5000, 1, 0x6000)]);
        // (The parent wrote a shared page, the child copied it in a later round: its own again.)
        c.insert(0x2000, 0x3000, Copy::At(0x9000));
        let mut own = Vec::new();
        c.ranges(0x0, 0x3000, |k| k != Copy::Shared, &mut own);
        assert_eq!(own, vec![(0x0, 0x1000), (0x2000, 0x3000)]);
    }
}
