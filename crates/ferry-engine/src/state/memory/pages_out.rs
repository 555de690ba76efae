//! The page dump: reading the pages to store out of a process (or out of its `dump -R`
//! snapshot), dropping the zero pages, and writing the rest as page runs into its page file,
//! plain or zstd-compressed. The pipelines decide which pages (sharing, pre-copy, post-copy) and
//! hand that down in a [`PagesFrom`].

use super::scan::regions_to_store;
use super::sharing::Sharing;
use crate::error::{Ctx, Error};
use crate::procfs;
use ferry_image::{ImageWriter, Mm, PageRun, Vma, VmaKind, PAGE_SIZE};
use ferry_sys::pagebuf::PageBuf;
use ferry_sys::process::{vm_read, PageRegion};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

/// Bytes copied at a time from the target's memory, and buffers of that size in flight.
pub(crate) const CHUNK: usize = 2 << 20;
const BUFFERS: usize = 3;

/// How the page dump takes one process's pages, as the pipeline above decides.
pub struct PagesFrom<'a> {
    /// Pages shared copy-on-write with its parent (stored with the parent), and the mappings
    /// read through /proc/PID/mem ([`super::sharing::find`]).
    pub sharing: &'a Sharing,
    /// Its memory as frozen, when the tree runs again while the pages are written (`dump -R`).
    pub snap: Option<&'a dyn FrozenMemory>,
    /// Of the regions of a mapping to store, those the image takes now: a pipeline that sends
    /// pages another way leaves them out (sent by a pre-copy round; sent by post-copy later).
    pub keep: &'a dyn Fn(&Vma, Vec<PageRegion>) -> Vec<PageRegion>,
}

/// The memory of a process as it was at the freeze, held while the tree runs again (`dump -R`'s
/// copy-on-write snapshot, state/snapshot.rs).
pub trait FrozenMemory: Sync {
    /// The process whose /proc/PID/pagemap and mem hold that memory.
    fn pid(&self) -> i32;
    /// What was taken of its mappings while frozen.
    fn holds(&self) -> &super::Holds;
    /// Page runs of the mapping at `start` already in the page file (`dump -R` from pages
    /// copied while the tree ran, state/tracked.rs).
    fn placed(&self, _start: u64) -> &[PageRun] {
        &[]
    }
    /// The page file, already started (header and the pages [`FrozenMemory::placed`] points
    /// at), once: the page dump appends to it.
    fn stream(&self) -> Option<ferry_image::dir::StreamFile> {
        None
    }
}

/// What a snapshot holds for one mapping besides its copy of the memory.
pub enum Held {
    /// Copies taken while frozen: (address, index of the copy).
    Copied(Vec<(u64, usize)>),
    /// The shared memory object, opened while frozen, read at the end of the dump.
    Object(std::fs::File),
}

/// One piece of memory to copy into the page file: `len` bytes of mapping `vma` at `addr`.
struct Job {
    vma: usize,
    addr: u64,
    len: usize,
    from: Source,
    /// Drop zero pages (see [`store_chunk`]).
    skip_zero: bool,
}

enum Source {
    /// process_vm_readv of the target.
    Readv,
    /// /proc/PID/mem (mappings without PROT_READ).
    Mem,
    /// Shared memory object `files[i]`, at this offset.
    Object(usize, u64),
    /// Copy `i` a snapshot holds (taken while the tree was frozen), at this offset.
    Held(usize, usize),
}

/// Whether `out` was started already (a page file the pages copied while the tree ran went
/// into, header first: state/tracked.rs).
fn started_plain(out: &ferry_image::dir::StreamFile) -> bool {
    !out.is_empty()
}

/// Whether pages of this kind of mapping are stored in the image.
fn stores_pages(kind: VmaKind) -> bool {
    matches!(kind, VmaKind::Anon | VmaKind::SharedAnon | VmaKind::FilePrivate)
}

/// Write the pages that only memory holds into `pages-PID.img`, filling each mapping's runs.
/// Returns the number of bytes of page data stored.
///
/// Two threads, one per core: one copies the target's memory into a few buffers
/// (`process_vm_readv`), the other drops the zero pages, checksums and writes the rest, so
/// both copies proceed at once and the memory ferry uses stays a few chunks.
///
/// With `from.snap` (`dump -R`, the tree running again), the memory is that of the process's
/// copy-on-write snapshot (state/snapshot.rs), read through its /proc/PID/mem (which, unlike
/// `process_vm_readv`, does not unshare the pages), and the mappings it has no copy of come
/// from what it took while the tree was frozen.
pub fn dump_pages(
    pid: i32,
    image_pid: i32,
    mm: &mut Mm,
    img: &mut ImageWriter,
    shmem_done: &mut std::collections::HashSet<(u64, u64, u64)>,
    from: &PagesFrom<'_>,
) -> Result<u64, Error> {
    let &PagesFrom { sharing, snap, keep } = from;
    let name = ferry_image::pages_file(image_pid);
    let started = snap.and_then(|s| s.stream());
    let out = match started {
        Some(s) => s,
        None => img.stream(&name)?,
    };
    let path = out.path().display().to_string();
    let werr = |e: std::io::Error| Error::Sys { object: format!("cannot write {path}"), source: e };
    let mut out = match started_plain(&out) {
        true => PageSink::Plain(out),
        false => PageSink::new(out, page_compression()).map_err(werr)?,
    };
    let src = snap.map_or(pid, |s| s.pid());
    let pagemap = procfs::open(src, "pagemap")?;
    let mem = procfs::open(src, "mem")?;
    // (Pieces of a copy taken while frozen, in chunks.)
    let held_jobs = |jobs: &mut Vec<Job>, i: usize, parts: &[(u64, usize)], skip_zero: bool| {
        for &(addr, c) in parts {
            let len = snap.map_or(0, |s| s.holds().copy(c).len());
            let mut at = 0;
            while at < len {
                let n = (len - at).min(CHUNK);
                jobs.push(Job { vma: i, addr: addr + at as u64, len: n, from: Source::Held(c, at), skip_zero });
                at += n;
            }
        }
    };
    let mut jobs = Vec::new();
    let mut objects = Vec::new();
    for (i, v) in mm.vmas.iter_mut().enumerate() {
        let kind = VmaKind::try_from(v.kind).unwrap_or(VmaKind::Invalid);
        if !stores_pages(kind) || v.sysv {
            continue; // (SysV segments: stored once each, see state/sysvshm.rs)
        }
        // Shared memory: the object's content, read through /proc/PID/map_files (pages that only
        // other processes of the tree faulted in are not in this one's page tables), stored once
        // per range of the object however many processes map it.
        if kind == VmaKind::SharedAnon {
            if !shmem_done.insert((v.shmem_id, v.offset, v.end - v.start)) {
                continue;
            }
            let obj = match snap.and_then(|s| s.holds().held(v.start)) {
                Some(Held::Copied(parts)) => {
                    held_jobs(&mut jobs, i, parts, true);
                    continue;
                }
                // (Opened while frozen: the same object even if it was unmapped since.)
                Some(Held::Object(f)) => {
                    f.try_clone().ctx(|| format!("pid {pid}: cannot open shared memory at {:#x}", v.start))?
                }
                None => {
                    let mf = procfs::path(pid, &format!("map_files/{:x}-{:x}", v.start, v.end));
                    std::fs::File::open(&mf)
                        .ctx(|| format!("pid {pid}: cannot open shared memory at {:#x}", v.start))?
                }
            };
            objects.push(obj);
            let mut at = 0u64;
            while at < v.end - v.start {
                let len = ((v.end - v.start - at) as usize).min(CHUNK);
                jobs.push(Job {
                    vma: i,
                    addr: v.start + at,
                    len,
                    from: Source::Object(objects.len() - 1, v.offset + at),
                    skip_zero: true,
                });
                at += len as u64;
            }
            continue;
        }
        // (Zeros of a private file mapping would come back as the file's bytes.)
        let skip_zero = kind != VmaKind::FilePrivate;
        if let Some(Held::Copied(parts)) = snap.and_then(|s| s.holds().held(v.start)) {
            held_jobs(&mut jobs, i, parts, skip_zero);
            continue;
        }
        let regions = keep(v, regions_to_store(pagemap.as_fd(), pid, v, &sharing.exclude)?);
        let readable = v.prot & libc::PROT_READ as u32 != 0 && !sharing.via_mem.contains(&v.start) && snap.is_none();
        for r in regions {
            let mut addr = r.start;
            while addr < r.end {
                let len = ((r.end - addr) as usize).min(CHUNK);
                let from = if readable { Source::Readv } else { Source::Mem };
                jobs.push(Job { vma: i, addr, len, from, skip_zero });
                addr += len as u64;
            }
        }
    }
    // The reader side also finds the pages to keep, and checksums them while they are in its
    // cache when the writer side is the slower one (see [`Kept`] and the loop below).
    let prehash = out.takes_prehashed();
    let read = |job: &Job, buf: &mut [u8], hash: bool| -> Result<Kept, Error> {
        let chunk = &mut buf[..job.len];
        let addr = job.addr;
        let got = match job.from {
            Source::Readv => vm_read(pid, addr, chunk).ctx(|| format!("pid {pid}: cannot read memory at {addr:#x}"))?,
            Source::Mem => mem.read_at(chunk, addr).ctx(|| format!("pid {pid}: cannot read memory at {addr:#x}"))?,
            Source::Object(o, off) => {
                objects[o]
                    .read_exact_at(chunk, off)
                    .ctx(|| format!("pid {pid}: cannot read shared memory at {addr:#x}"))?;
                job.len
            }
            Source::Held(c, off) => {
                let copy = snap.map_or(&[][..], |s| s.holds().copy(c));
                match copy.get(off..off + job.len) {
                    Some(b) => chunk.copy_from_slice(b),
                    None => {
                        return Err(Error::Invalid { object: format!("pid {pid}"), what: "copy out of bounds".into() })
                    }
                }
                job.len
            }
        };
        if got != job.len {
            return Err(Error::Invalid {
                object: format!("pid {pid}"),
                what: format!("short read of memory at {addr:#x}"),
            });
        }
        Ok(Kept::scan(chunk, job.skip_zero, hash && prehash))
    };
    let mut stored = 0u64;
    let vmas = &mut mm.vmas;
    let mut store = |job: &Job, buf: &[u8], kept: &Kept, out: &mut PageSink| -> Result<(), Error> {
        stored += store_chunk(&mut vmas[job.vma], &buf[..job.len], job.addr, kept, out).map_err(werr)?;
        Ok(())
    };
    let total: usize = jobs.iter().map(|j| j.len).sum();
    if total <= 2 * CHUNK {
        // Little memory: not worth a thread, nor a big buffer to fault in (fresh memory is
        // slow to touch in a VM): one small buffer, reused.
        const SMALL: usize = 128 << 10;
        let mut buf = PageBuf::new(SMALL.min(total)).ctx(|| "cannot allocate a page buffer".into())?;
        for job in &jobs {
            let mut at = 0;
            while at < job.len {
                let len = (job.len - at).min(SMALL);
                let from = match job.from {
                    Source::Object(o, off) => Source::Object(o, off + at as u64),
                    Source::Held(c, off) => Source::Held(c, off + at),
                    Source::Readv => Source::Readv,
                    Source::Mem => Source::Mem,
                };
                let piece = Job { vma: job.vma, addr: job.addr + at as u64, len, from, skip_zero: job.skip_zero };
                let kept = read(&piece, &mut buf, true)?;
                store(&piece, &buf, &kept, &mut out)?;
                at += len;
            }
        }
    } else {
        std::thread::scope(|sc| -> Result<(), Error> {
            type Full = (usize, PageBuf, Result<Kept, Error>);
            let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Full>(BUFFERS);
            let (free_tx, free_rx) = std::sync::mpsc::channel::<PageBuf>();
            for _ in 0..BUFFERS {
                let _ = free_tx.send(PageBuf::new(CHUNK).ctx(|| "cannot allocate a page buffer".into())?);
            }
            let jobs = &jobs;
            let read = &read;
            // While the writer is behind (no free buffer), the reader allocates the file's
            // blocks for the chunks it already handed over and the writer has not reached (it
            // knows where each kept page lands), so that the writer's write() of them only
            // copies. Which thread pays for the allocation follows which one has time to spare.
            let mut prealloc = out.plain_file().and_then(|f| f.try_clone().ok());
            let mut next = out.len();
            let mut ahead = std::collections::VecDeque::new();
            sc.spawn(move || {
                for (i, job) in jobs.iter().enumerate() {
                    let mut buf = free_rx.try_recv();
                    // No free buffer: the writer is behind, and this thread has time to
                    // checksum the chunk; otherwise the writer checksums it as it writes.
                    // (Into blocks allocated before the freeze the writer only copies, and
                    // was the idle one: 1 GiB, reader 350-400 ms with the CRC, writer ~190.)
                    let writer_behind = buf.is_err();
                    while buf.is_err() {
                        // newest first: the writer reaches it last
                        let (Some(f), Some((off, len))) = (&prealloc, ahead.pop_back()) else { break };
                        if ferry_sys::pagebuf::preallocate(f.as_fd(), off, len).is_err() {
                            prealloc = None; // (a file system without fallocate: just write)
                        }
                        buf = free_rx.try_recv();
                    }
                    let Ok(mut buf) = buf.or_else(|_| free_rx.recv()) else { return };
                    let r = read(job, &mut buf, writer_behind);
                    if let Ok(kept) = &r {
                        let len: u64 = kept.runs.iter().map(|&(a, b)| (b - a) as u64 * PAGE_SIZE).sum();
                        ahead.push_back((next, len));
                        next += len;
                        if ahead.len() > BUFFERS {
                            ahead.pop_front(); // written by now: its buffer came back
                        }
                    }
                    let failed = r.is_err();
                    if full_tx.send((i, buf, r)).is_err() || failed {
                        return;
                    }
                }
            });
            for _ in 0..jobs.len() {
                let Ok((i, buf, r)) = full_rx.recv() else {
                    return Err(Error::Invalid { object: format!("pid {pid}"), what: "memory reader stopped".into() });
                };
                store(&jobs[i], &buf, &r?, &mut out)?;
                let _ = free_tx.send(buf);
            }
            Ok(())
        })?;
    }
    if let Some(snap) = snap {
        // The pages already in the page file (disjoint from those stored now).
        for v in mm.vmas.iter_mut() {
            let placed = snap.placed(v.start);
            if !placed.is_empty() {
                stored += placed.iter().map(|r| r.nr_pages * PAGE_SIZE).sum::<u64>();
                v.runs.extend_from_slice(placed);
                v.runs.sort_unstable_by_key(|r| r.addr);
            }
            // (Holes found while frozen, from the pages kept, and now, from those stored.)
            v.cow_holes.sort_unstable_by_key(|h| h.addr);
        }
    }
    img.finish_stream(out.finish().map_err(werr)?)?;
    mm.pages_bytes = stored;
    Ok(stored)
}

static COMPRESSION: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Compress the page files of the dumps that follow with zstd at this level (`dump --compress`);
/// 0 stores them plain (the default: restore then reads them without any copy through ferry).
pub fn set_page_compression(level: i32) {
    COMPRESSION.store(level, std::sync::atomic::Ordering::Relaxed);
}

pub(crate) fn page_compression() -> i32 {
    COMPRESSION.load(std::sync::atomic::Ordering::Relaxed)
}

/// Where page data goes: the page file itself, or a zstd stream into it (multithreaded, one
/// worker per CPU). Offsets are those of the plain file either way.
enum PageSink {
    Plain(ferry_image::dir::StreamFile),
    Zstd(Box<zstd::stream::write::Encoder<'static, ferry_image::dir::StreamFile>>, u64),
}

impl PageSink {
    fn new(mut out: ferry_image::dir::StreamFile, level: i32) -> std::io::Result<PageSink> {
        if level == 0 {
            out.write_all(&ferry_image::pages_header())?;
            return Ok(PageSink::Plain(out));
        }
        out.write_all(&ferry_image::pages_header_zstd())?;
        let mut enc = zstd::stream::write::Encoder::new(out, level)?;
        let cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
        if cpus > 1 {
            enc.multithread(cpus)?;
        }
        enc.include_checksum(true)?;
        Ok(PageSink::Zstd(Box::new(enc), PAGE_SIZE))
    }

    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self {
            PageSink::Plain(f) => f.write_all(b),
            PageSink::Zstd(e, len) => {
                std::io::Write::write_all(e, b)?;
                *len += b.len() as u64;
                Ok(())
            }
        }
    }

    /// Whether [`PageSink::write_runs`] wants the CRC-32 of what it is given (a plain page
    /// file's checksum is that of its bytes; a compressed one's is of the zstd stream).
    fn takes_prehashed(&self) -> bool {
        matches!(self, PageSink::Plain(_))
    }

    /// Append `bufs` in order; `crc` is their CRC-32 when [`PageSink::takes_prehashed`].
    fn write_runs(&mut self, bufs: &[&[u8]], crc: Option<&crc32fast::Hasher>) -> std::io::Result<()> {
        match (self, crc) {
            (PageSink::Plain(f), Some(crc)) => f.write_all_prehashed(bufs, crc),
            (sink, _) => bufs.iter().try_for_each(|b| sink.write_all(b)),
        }
    }

    /// The page file, when it is written plain into a directory.
    fn plain_file(&self) -> Option<&std::fs::File> {
        match self {
            PageSink::Plain(f) => f.file(),
            PageSink::Zstd(..) => None,
        }
    }

    /// Offset in the (plain) page file the next bytes land at.
    fn len(&self) -> u64 {
        match self {
            PageSink::Plain(f) => f.len(),
            PageSink::Zstd(_, len) => *len,
        }
    }

    fn finish(self) -> std::io::Result<ferry_image::dir::StreamFile> {
        match self {
            PageSink::Plain(f) => Ok(f),
            PageSink::Zstd(e, _) => e.finish(),
        }
    }
}

/// Which pages of a chunk of memory go into the page file, found by the thread that read the
/// chunk (while it is in that core's cache), with the CRC-32 of exactly those bytes when the
/// sink takes it precomputed (plain page files): the writing thread then only writes.
struct Kept {
    /// Runs of pages to store, as page index ranges within the chunk.
    runs: Vec<(usize, usize)>,
    crc: Option<crc32fast::Hasher>,
}

impl Kept {
    /// A zero page of anonymous memory comes back as zeros by itself; one of a private file
    /// mapping would come back with the file's bytes, so then `skip_zero` is false.
    fn scan(chunk: &[u8], skip_zero: bool, hash: bool) -> Kept {
        let pages = chunk.len() / PAGE_SIZE as usize;
        let page = |i: usize| &chunk[i * PAGE_SIZE as usize..(i + 1) * PAGE_SIZE as usize];
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for i in 0..pages {
            if skip_zero && is_zero(page(i)) {
                continue;
            }
            match runs.last_mut() {
                Some(r) if r.1 == i => r.1 = i + 1,
                _ => runs.push((i, i + 1)),
            }
        }
        let crc = hash.then(|| {
            let mut h = crc32fast::Hasher::new();
            for &(a, b) in &runs {
                h.update(&chunk[a * PAGE_SIZE as usize..b * PAGE_SIZE as usize]);
            }
            h
        });
        Kept { runs, crc }
    }
}

/// Append the kept pages of `chunk` (memory at `addr` of mapping `v`) to the page file,
/// extending `v.runs`.
fn store_chunk(v: &mut Vma, chunk: &[u8], addr: u64, kept: &Kept, out: &mut PageSink) -> std::io::Result<u64> {
    if v.cow {
        // A zero page left out of a mapping shared with the parent would show the parent's
        // page: it becomes a hole (dropped at restore) instead of stored zeros.
        let pages = chunk.len() / PAGE_SIZE as usize;
        let mut from = 0;
        for &(first, end) in kept.runs.iter().chain([(pages, pages)].iter()) {
            if first > from {
                let a = addr + from as u64 * PAGE_SIZE;
                match v.cow_holes.last_mut() {
                    Some(h) if h.addr + h.nr_pages * PAGE_SIZE == a => h.nr_pages += (first - from) as u64,
                    _ => v.cow_holes.push(ferry_image::PageRange { addr: a, nr_pages: (first - from) as u64 }),
                }
            }
            from = end;
        }
    }
    let mut stored = 0;
    let mut bufs = Vec::with_capacity(kept.runs.len());
    let mut offset = out.len();
    for &(first, end) in &kept.runs {
        let run_addr = addr + first as u64 * PAGE_SIZE;
        let bytes = &chunk[first * PAGE_SIZE as usize..end * PAGE_SIZE as usize];
        match v.runs.last_mut() {
            Some(last)
                if last.addr + last.nr_pages * PAGE_SIZE == run_addr
                    && last.offset + last.nr_pages * PAGE_SIZE == offset =>
            {
                last.nr_pages += (end - first) as u64;
            }
            _ => v.runs.push(PageRun { addr: run_addr, nr_pages: (end - first) as u64, offset }),
        }
        bufs.push(bytes);
        offset += bytes.len() as u64;
        stored += bytes.len() as u64;
    }
    out.write_runs(&bufs, kept.crc.as_ref())?;
    Ok(stored)
}

/// Whether a page is all zeros.
pub(crate) fn is_zero(page: &[u8]) -> bool {
    let mut words = page.chunks_exact(16);
    words.all(|c| u128::from_ne_bytes(c.try_into().unwrap_or([1; 16])) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}

/// `bytes` (pages from `addr`) cut into runs of whole pages that are all zero or not, in order:
/// (start, end, zero), byte offsets (a last partial page is a page of its own).
pub(crate) fn zero_runs(bytes: &[u8]) -> Vec<(usize, usize, bool)> {
    let mut out: Vec<(usize, usize, bool)> = Vec::new();
    for (i, page) in bytes.chunks(PAGE_SIZE as usize).enumerate() {
        let (start, zero) = (i * PAGE_SIZE as usize, is_zero(page));
        match out.last_mut() {
            Some(r) if r.2 == zero => r.1 = start + page.len(),
            _ => out.push((start, start + page.len(), zero)),
        }
    }
    out
}
