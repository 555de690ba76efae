//! The address space: every mapping with its protection and backing, the pages that only
//! memory holds, the mm fields (brk, arg/env bounds, auxv, exe link) and the vDSO.
//!
//! Only pages the kernel reports present or swapped are considered (PAGEMAP_SCAN, one ioctl
//! per mapping instead of 8 bytes of pagemap per page), clean file pages and the shared zero
//! page are skipped by category, and pages that read back as all zeros are not stored either.
//! Restore maps everything at its old address with injected `mmap(MAP_FIXED)`, has the process
//! read its stored pages itself with injected `preadv` calls from the page file (one copy, out
//! of the page cache, none of it through ferry's memory), then applies the final protections.

use crate::error::{Ctx, Error};
use crate::inject::{Batch, Injector};
use crate::procfs;
use ferry_image::{ImageWriter, Mm, PageRun, Process, Vma, VmaKind, PAGE_SIZE};
use ferry_proc::MapEntry;
use ferry_sys::consts::{nr, PR_SET_MM, PR_SET_MM_MAP};
use ferry_sys::pagebuf::PageBuf;
use ferry_sys::process::{page_is, pagemap_scan, vm_read, PageRegion};
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt};

/// Bytes copied at a time from the target's memory, and buffers of that size in flight.
const CHUNK: usize = 2 << 20;
const BUFFERS: usize = 3;

fn prot_of(m: &MapEntry) -> u32 {
    let mut p = 0;
    if m.perms.read {
        p |= libc::PROT_READ;
    }
    if m.perms.write {
        p |= libc::PROT_WRITE;
    }
    if m.perms.exec {
        p |= libc::PROT_EXEC;
    }
    p as u32
}

/// Describe the mappings of `pid`, refusing the kinds ferry cannot restore yet. Also returns
/// the parsed maps (the injector looks for code sequences in them).
pub fn scan(
    pid: i32,
    img: &mut ImageWriter,
    ghosts: &mut Vec<ferry_image::GhostFile>,
) -> Result<(Vec<Vma>, Vec<MapEntry>), Error> {
    use crate::state::files::ghost;
    let maps_text = procfs::read_string(pid, "maps")?;
    let maps = procfs::parse(pid, "maps", ferry_proc::parse_maps(&maps_text))?;
    let smaps_text = procfs::read_string(pid, "smaps")?;
    let smaps = procfs::parse(pid, "smaps", ferry_proc::parse_smaps(&smaps_text))?;
    let flags: HashMap<u64, Vec<String>> = smaps.into_iter().map(|s| (s.start, s.vm_flags)).collect();
    // A file is usually mapped several times (text, rodata, data ...): stat it and check its
    // path once (maps names its device and inode), the process is frozen meanwhile.
    let mut files: HashMap<(u32, u32, u64, &str), (std::fs::Metadata, bool)> = HashMap::new();
    let mut out = Vec::new();
    for m in &maps {
        let at =
            |what: String| Error::Unsupported { pid, what: format!("mapping {:#x}-{:#x}: {what}", m.start, m.end) };
        let mut v = Vma {
            start: m.start,
            end: m.end,
            prot: prot_of(m),
            offset: m.offset,
            path: m.path.clone().unwrap_or_default(),
            vm_flags: flags.get(&m.start).cloned().unwrap_or_default(),
            ..Default::default()
        };
        if let Some((_, what)) = REFUSED_FLAGS.iter().find(|(f, _)| v.vm_flags.iter().any(|x| x == f)) {
            return Err(at(what.to_string()));
        }
        let anon = if m.perms.shared { VmaKind::SharedAnon } else { VmaKind::Anon };
        let kind = match m.path.as_deref() {
            None => anon,
            Some("[heap]") | Some("[stack]") => anon,
            Some(s) if s.starts_with("[anon:") || s.starts_with("[anon_shmem:") => anon,
            Some("[vdso]") => VmaKind::Vdso,
            Some("[vvar]") => VmaKind::Vvar,
            Some("[vvar_vclock]") => VmaKind::VvarVclock,
            Some("[vsyscall]") => VmaKind::Vsyscall,
            Some("/dev/zero") if m.deleted || !m.perms.shared => anon,
            Some(s) if s.starts_with("/memfd:") && m.perms.shared => {
                // Its pages go into the page file; its mode, owner and times are kept here.
                let mf = procfs::path(pid, &format!("map_files/{:x}-{:x}", m.start, m.end));
                let md =
                    std::fs::metadata(&mf).ctx(|| format!("pid {pid}: cannot stat {s} mapped at {:#x}", m.start))?;
                ghost::save_attrs(ghosts, &format!("memfd-{}.img", md.ino()), &md);
                VmaKind::SharedAnon
            }
            Some(s) if s.starts_with("/memfd:") => {
                // A private mapping of a memfd: like a private file mapping, with the memfd's
                // content (saved once per object, as for an fd) as the file.
                let mf = procfs::path(pid, &format!("map_files/{:x}-{:x}", m.start, m.end));
                let md =
                    std::fs::metadata(&mf).ctx(|| format!("pid {pid}: cannot stat {s} mapped at {:#x}", m.start))?;
                ghost::save(img, ghosts, &format!("memfd-{}.img", md.ino()), &mf, &md)?;
                v.shmem_id = md.ino();
                v.file_size = md.size();
                VmaKind::FilePrivate
            }
            Some(s) if s.starts_with("/SYSV") && m.perms.shared && !v.vm_flags.iter().any(|f| f == "ht") => {
                crate::state::sysvshm::scan(&mut v, m.inode);
                VmaKind::SharedAnon
            }
            Some(s) if s.starts_with("/SYSV") => return Err(at(format!("SysV shared memory {s} in huge pages"))),
            // The ring of an io_setup() context: state/aio.rs reads and recreates it.
            Some(s) if s.starts_with("/[aio]") => VmaKind::AioRing,
            Some(s) if s.starts_with('/') => {
                let mf = procfs::path(pid, &format!("map_files/{:x}-{:x}", m.start, m.end));
                let key = (m.dev_major, m.dev_minor, m.inode, s);
                let (md, reachable) = match files.get(&key) {
                    Some(known) => known.clone(),
                    None => {
                        let md = std::fs::metadata(&mf)
                            .ctx(|| format!("pid {pid}: cannot stat {s} mapped at {:#x}", m.start))?;
                        let reachable = std::fs::metadata(procfs::in_root(pid, s))
                            .is_ok_and(|o| (o.dev(), o.ino()) == (md.dev(), md.ino()));
                        files.insert(key, (md.clone(), reachable));
                        (md, reachable)
                    }
                };
                if !md.file_type().is_file() {
                    return Err(at(format!("device or special file {s}")));
                }
                if !(m.deleted || md.nlink() == 0 || reachable) {
                    return Err(at(format!(
                        "{s}: the path does not lead to the mapped file (another mount, or replaced)"
                    )));
                }
                v.file_size = md.size();
                v.file_mtime_ns = md.mtime() * 1_000_000_000 + md.mtime_nsec();
                v.file_writable = m.perms.shared && (m.perms.write || v.vm_flags.iter().any(|f| f == "mw"));
                if m.deleted || md.nlink() == 0 {
                    // One ghost per file, shared with its fds and other processes (state/files.rs).
                    let name = ghost::name(md.dev(), md.ino());
                    ghost::save(img, ghosts, &name, &mf, &md)?;
                    v.ghost = name;
                }
                if m.perms.shared {
                    VmaKind::FileShared
                } else {
                    VmaKind::FilePrivate
                }
            }
            Some(other) => return Err(at(other.to_string())),
        };
        if kind == VmaKind::SharedAnon && !v.sysv {
            v.shmem_id = m.inode;
        }
        v.kind = kind as i32;
        out.push(v);
    }
    Ok((out, maps))
}

/// The mm fields; `brk` comes from an injected `brk(0)`.
pub fn collect_mm(inj: &Injector, stat: &ferry_proc::Stat, vmas: Vec<Vma>) -> Result<Mm, Error> {
    let pid = inj.pid();
    let brk = inj.call(nr::BRK, &[0]).ctx(|| format!("pid {pid}: cannot read brk"))?;
    let auxv_raw = procfs::read_bytes(pid, "auxv")?;
    let auxv = procfs::parse(pid, "auxv", ferry_proc::parse_auxv(&auxv_raw))?;
    let mut mm = Mm {
        start_code: stat.start_code,
        end_code: stat.end_code,
        start_data: stat.start_data,
        end_data: stat.end_data,
        start_brk: stat.start_brk,
        brk,
        start_stack: stat.start_stack,
        arg_start: stat.arg_start,
        arg_end: stat.arg_end,
        env_start: stat.env_start,
        env_end: stat.env_end,
        auxv: auxv.iter().flat_map(|(k, v)| [*k, *v]).collect(),
        exe_path: procfs::read_link(pid, "exe")?,
        vmas,
        ..Default::default()
    };
    if let Some(v) = mm.vmas.iter().find(|v| v.kind == VmaKind::Vdso as i32) {
        let mut buf = vec![0u8; (v.end - v.start) as usize];
        let n = vm_read(pid, v.start, &mut buf).ctx(|| format!("pid {pid}: cannot read the vDSO"))?;
        mm.vdso_crc32 = crc32fast::hash(&buf[..n]);
        mm.vdso_size = n as u64;
    }
    Ok(mm)
}

/// The vDSO of this very process (ferry), to compare with an image's.
pub fn own_vdso() -> Result<(u32, u64), Error> {
    let maps = std::fs::read_to_string("/proc/self/maps").ctx(|| "cannot read /proc/self/maps".into())?;
    let maps = ferry_proc::parse_maps(&maps)
        .map_err(|e| Error::Invalid { object: "/proc/self/maps".into(), what: e.to_string() })?;
    let Some(v) = maps.iter().find(|m| m.path.as_deref() == Some("[vdso]")) else { return Ok((0, 0)) };
    let mut buf = vec![0u8; (v.end - v.start) as usize];
    let f = std::fs::File::open("/proc/self/mem").ctx(|| "cannot open /proc/self/mem".into())?;
    f.read_exact_at(&mut buf, v.start).ctx(|| "cannot read own vDSO".into())?;
    Ok((crc32fast::hash(&buf), buf.len() as u64))
}

/// The pages of `[start, end)` present in memory or swapped out (`PAGEMAP_SCAN` of `pagemap`,
/// pid `pid`'s), in regions that also differ in the categories of `also` (e.g. zero pages).
pub(crate) fn resident(
    pagemap: std::os::fd::BorrowedFd<'_>,
    pid: i32,
    start: u64,
    end: u64,
    also: u64,
) -> Result<Vec<PageRegion>, Error> {
    let want = page_is::PRESENT | page_is::SWAPPED;
    pagemap_scan(pagemap, start, end, want, want | also)
        .ctx(|| format!("pid {pid}: PAGEMAP_SCAN of {start:#x}-{end:#x}"))
}

fn is_zero(page: &[u8]) -> bool {
    page.chunks_exact(16).all(|c| u128::from_ne_bytes(c.try_into().unwrap_or([1; 16])) == 0)
}

/// `regions` minus the sorted, disjoint ranges `skip`.
pub(crate) fn subtract(regions: Vec<PageRegion>, skip: &[(u64, u64)]) -> Vec<PageRegion> {
    if skip.is_empty() {
        return regions;
    }
    let mut out = Vec::with_capacity(regions.len());
    for r in regions {
        let mut cur = r.start;
        let first = skip.partition_point(|s| s.1 <= r.start);
        for s in &skip[first..] {
            if s.0 >= r.end {
                break;
            }
            if s.0 > cur {
                out.push(PageRegion { start: cur, end: s.0, categories: r.categories });
            }
            cur = cur.max(s.1);
        }
        if cur < r.end {
            out.push(PageRegion { start: cur, end: r.end, categories: r.categories });
        }
    }
    out
}

/// Whether pages of this kind of mapping are stored in the image.
fn stores_pages(kind: VmaKind) -> bool {
    matches!(kind, VmaKind::Anon | VmaKind::SharedAnon | VmaKind::FilePrivate)
}

/// The pages of private mapping `v` that go into the page file: present or swapped in
/// `pagemap` (that of pid `pid`, or of its snapshot), not the shared zero page, not a clean page
/// of the mapped file, not held by the parent (`sharing`), nor sent by a pre-copy round or left
/// for post-copy.
pub(crate) fn regions_to_store(
    pagemap: std::os::fd::BorrowedFd<'_>,
    pid: i32,
    v: &Vma,
    sharing: &crate::state::cow::Dump,
) -> Result<Vec<PageRegion>, Error> {
    let kind = VmaKind::try_from(v.kind).unwrap_or(VmaKind::Invalid);
    let regions = resident(pagemap, pid, v.start, v.end, page_is::FILE | page_is::PFNZERO)?;
    let regions = subtract(regions, &sharing.exclude); // pages the parent holds
    let regions = crate::precopy::without_skipped(pid, regions); // pages a pre-copy round sent
    let mut regions = crate::postcopy::eager_only(pid, v, regions); // post-copy: pages sent later
    regions.retain(|r| {
        // (A clean page of a private file mapping: the file has it.)
        let clean_file =
            kind == VmaKind::FilePrivate && r.categories & page_is::FILE != 0 && r.categories & page_is::SWAPPED == 0;
        r.categories & page_is::PFNZERO == 0 && !clean_file
    });
    Ok(regions)
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

/// Write the pages that only memory holds into `pages-PID.img`, filling each mapping's runs.
/// Returns the number of bytes of page data stored.
///
/// Two threads, one per core: one copies the target's memory into a few buffers
/// (`process_vm_readv`), the other drops the zero pages, checksums and writes the rest, so
/// both copies proceed at once and the memory ferry uses stays a few chunks.
///
/// With `snap` (`dump -R`, the tree running again), the memory is that of the process's
/// copy-on-write snapshot (state/snapshot.rs), read through its /proc/PID/mem (which, unlike
/// `process_vm_readv`, does not unshare the pages), and the mappings it has no copy of come
/// from what it took while the tree was frozen.
pub fn dump_pages(
    pid: i32,
    image_pid: i32,
    mm: &mut Mm,
    img: &mut ImageWriter,
    shmem_done: &mut std::collections::HashSet<(u64, u64, u64)>,
    sharing: &crate::state::cow::Dump,
    snap: Option<&crate::state::snapshot::Snapshot>,
) -> Result<u64, Error> {
    use crate::state::snapshot::Held;
    let name = ferry_image::pages_file(image_pid);
    let out = img.stream(&name)?;
    let path = out.path().display().to_string();
    let werr = |e: std::io::Error| Error::Sys { object: format!("cannot write {path}"), source: e };
    let mut out = PageSink::new(out, page_compression()).map_err(werr)?;
    let src = snap.map_or(pid, |s| s.pid);
    let pagemap = procfs::open(src, "pagemap")?;
    let mem = procfs::open(src, "mem")?;
    // (Pieces of a copy taken while frozen, in chunks.)
    let held_jobs = |jobs: &mut Vec<Job>, i: usize, parts: &[(u64, usize)], skip_zero: bool| {
        for &(addr, c) in parts {
            let len = snap.map_or(0, |s| s.copy(c).len());
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
            let obj = match snap.and_then(|s| s.held(v.start)) {
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
        if let Some(Held::Copied(parts)) = snap.and_then(|s| s.held(v.start)) {
            held_jobs(&mut jobs, i, parts, skip_zero);
            continue;
        }
        let regions = regions_to_store(pagemap.as_fd(), pid, v, sharing)?;
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
                let copy = snap.map_or(&[][..], |s| s.copy(c));
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

/// Files backing the mappings, opened in ferry before the fork (numbers at or above a base
/// that collides with nothing), and the exe file.
pub struct Prepared {
    /// fd number for each vma index that needs one.
    pub vma_fd: HashMap<usize, i32>,
    pub exe_fd: Option<i32>,
    /// The page file, which the restored process reads its pages from itself (injected `preadv`).
    pub pages_fd: Option<i32>,
    /// Length of the (plain) page data behind `pages_fd`.
    pub pages_len: u64,
    pub owned: Vec<std::os::fd::OwnedFd>,
}

/// Open every file a mapping needs, checking it did not change since the dump.
pub fn prepare(
    p: &Process,
    img: &ferry_image::ImageReader,
    base: i32,
    shmem: &mut HashMap<u64, (i32, std::fs::File)>,
    ghosts: &mut crate::state::files::ghost::Ghosts,
) -> Result<Prepared, Error> {
    let pid = p.pid;
    let mm =
        p.mm.as_ref()
            .ok_or_else(|| Error::Invalid { object: format!("pid {pid}"), what: "no memory record".into() })?;
    let mut out = Prepared { vma_fd: HashMap::new(), exe_fd: None, pages_fd: None, pages_len: 0, owned: Vec::new() };
    let pages = match mm.vmas.iter().any(|v| !v.runs.is_empty()) {
        true => Some(open_pages(img, pid, runs_end(mm))?),
        false => None,
    };
    if let Some(f) =
        pages.as_ref().filter(|_| mm.vmas.iter().any(|v| v.kind != VmaKind::SharedAnon as i32 && !v.runs.is_empty()))
    {
        let n = ferry_sys::raw::dup_above(f.as_fd(), base).ctx(|| format!("pid {pid}: page file"))?;
        out.pages_fd = Some(std::os::fd::AsRawFd::as_raw_fd(&n));
        out.pages_len = f.metadata().ctx(|| format!("pid {pid}: page file"))?.len();
        out.owned.push(n);
    }
    let mut by_key: HashMap<(String, bool), i32> = HashMap::new();
    for (i, v) in mm.vmas.iter().enumerate() {
        let kind = VmaKind::try_from(v.kind).unwrap_or(VmaKind::Invalid);
        if v.sysv {
            continue; // attached with shmat by the tracer
        }
        if kind == VmaKind::SharedAnon {
            // One memfd per shared memory object, for every process that maps it; the stored
            // pages go into it here, so every mapping sees the same memory from the start.
            let obj = || format!("pid {pid} shared memory {:#x}-{:#x}", v.start, v.end);
            if let std::collections::hash_map::Entry::Vacant(e) = shmem.entry(v.shmem_id) {
                let name = v.path.strip_prefix("/memfd:").unwrap_or("ferry-shmem");
                let name = std::ffi::CString::new(name).unwrap_or_default();
                let fd = if v.path.starts_with("/memfd:") {
                    crate::state::memfd_seals::create(&name) // a memfd's fd may bring seals
                } else {
                    ferry_sys::process::memfd(&name)
                }
                .ctx(obj)?;
                let n = ferry_sys::raw::dup_above(fd.as_fd(), base).ctx(obj)?;
                let num = std::os::fd::AsRawFd::as_raw_fd(&n);
                out.owned.push(n);
                e.insert((num, std::fs::File::from(fd)));
            }
            let (n, f) =
                shmem.get(&v.shmem_id).ok_or_else(|| Error::Invalid { object: obj(), what: "lost memfd".into() })?;
            let n = *n;
            let end = v.offset + (v.end - v.start);
            if f.metadata().ctx(obj)?.len() < end {
                f.set_len(end).ctx(obj)?;
            }
            if let (false, Some(pages)) = (v.runs.is_empty(), pages.as_ref()) {
                let mut buf = PageBuf::new(CHUNK).ctx(obj)?;
                for r in &v.runs {
                    let mut done = 0u64;
                    let total = r.nr_pages * PAGE_SIZE;
                    while done < total {
                        let n = ((total - done) as usize).min(CHUNK);
                        pages.read_exact_at(&mut buf[..n], r.offset + done).ctx(obj)?;
                        f.write_all_at(&buf[..n], v.offset + (r.addr - v.start) + done).ctx(obj)?;
                        done += n as u64;
                    }
                }
            }
            out.vma_fd.insert(i, n);
            continue;
        }
        if !matches!(kind, VmaKind::FilePrivate | VmaKind::FileShared) {
            continue;
        }
        if kind == VmaKind::FilePrivate && v.shmem_id != 0 {
            // A private mapping of a memfd: the memfd of that object (restored once, whichever
            // fd or mapping needs it first).
            let obj = || format!("pid {pid} private mapping {:#x}-{:#x} of {}", v.start, v.end, v.path);
            if let std::collections::hash_map::Entry::Vacant(e) = shmem.entry(v.shmem_id) {
                let content = format!("memfd-{}.img", v.shmem_id);
                let name = v.path.strip_prefix("/memfd:").unwrap_or(&v.path).trim_end_matches(" (deleted)");
                let name = std::ffi::CString::new(name).unwrap_or_default();
                let fd = crate::state::memfd_seals::create(&name).ctx(obj)?;
                let n = ferry_sys::raw::dup_above(fd.as_fd(), base).ctx(obj)?;
                let num = std::os::fd::AsRawFd::as_raw_fd(&n);
                out.owned.push(n);
                let f = std::fs::File::from(fd);
                crate::state::files::ghost::fill(&f, img, &content, ghosts.record(&content))?;
                e.insert((num, f));
            }
            let n = shmem
                .get(&v.shmem_id)
                .map(|(n, _)| *n)
                .ok_or_else(|| Error::Invalid { object: obj(), what: "lost memfd".into() })?;
            out.vma_fd.insert(i, n);
            continue;
        }
        let key = (if v.ghost.is_empty() { v.path.clone() } else { v.ghost.clone() }, v.file_writable);
        if let Some(n) = by_key.get(&key) {
            out.vma_fd.insert(i, *n);
            continue;
        }
        let obj = || format!("pid {pid} mapping {:#x}-{:#x} of {}", v.start, v.end, v.path);
        let flags = if v.file_writable { libc::O_RDWR } else { libc::O_RDONLY } | libc::O_CLOEXEC;
        let fd = if v.ghost.is_empty() {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(v.file_writable)
                .open(&v.path)
                .ctx(|| format!("{}: cannot open the file", obj()))?;
            let md = f.metadata().ctx(obj)?;
            let mtime = md.mtime() * 1_000_000_000 + md.mtime_nsec();
            if kind == VmaKind::FilePrivate && (md.size() != v.file_size || mtime != v.file_mtime_ns) {
                return Err(Error::Invalid {
                    object: obj(),
                    what: "the file changed since the dump (size or mtime differ)".into(),
                });
            }
            std::os::fd::OwnedFd::from(f)
        } else {
            {
                // Executable if any mapping of it is (a deleted exe must pass PR_SET_MM_MAP's exec check).
                let exec = mm.vmas.iter().any(|w| w.ghost == v.ghost && w.prot & libc::PROT_EXEC as u32 != 0);
                ghosts.open(img, &v.ghost, &v.path, 0o600, flags, exec)?
            }
        };
        let n = ferry_sys::raw::dup_above(fd.as_fd(), base).ctx(obj)?;
        let num = std::os::fd::AsRawFd::as_raw_fd(&n);
        out.owned.push(n);
        by_key.insert(key, num);
        out.vma_fd.insert(i, num);
    }
    // The exe link: the file itself, or for a deleted executable the ghost its mapping was
    // recreated from (so the link reads "PATH (deleted)" as before).
    let exe = mm.exe_path.trim_end_matches(" (deleted)");
    if !mm.exe_path.is_empty() {
        let obj = || format!("pid {pid}: exe {}", mm.exe_path);
        let mapped = mm.vmas.iter().enumerate().find(|(_, v)| v.path == exe && !v.ghost.is_empty());
        if let (true, Some((i, _))) = (mm.exe_path.ends_with(" (deleted)"), mapped) {
            out.exe_fd = out.vma_fd.get(&i).copied();
        } else {
            let f = std::fs::File::open(exe).ctx(|| format!("{}: cannot open the executable", obj()))?;
            // The restored process starts as a copy of ferry: when its executable is ferry's own
            // (a `ferry run --pidns` init), the link is right already, and the kernel refuses to
            // replace an exe that is still mapped.
            use std::os::unix::fs::MetadataExt;
            let same = |a: &std::fs::Metadata, b: &std::fs::Metadata| (a.dev(), a.ino()) == (b.dev(), b.ino());
            let own = std::fs::metadata("/proc/self/exe").ok();
            if !matches!((f.metadata().ok(), own), (Some(a), Some(b)) if same(&a, &b)) {
                let n = ferry_sys::raw::dup_above(f.as_fd(), base).ctx(obj)?;
                out.exe_fd = Some(std::os::fd::AsRawFd::as_raw_fd(&n));
                out.owned.push(n);
            }
        }
    }
    Ok(out)
}

/// Where the last page run of `mm` ends in its page file: no page is read beyond it.
fn runs_end(mm: &Mm) -> u64 {
    let ends = mm.vmas.iter().flat_map(|v| &v.runs);
    ends.map(|r| r.offset.saturating_add(r.nr_pages.saturating_mul(PAGE_SIZE))).max().unwrap_or(0)
}

/// The page file of `pid`, to read pages from at their offsets: the file itself, or for a
/// compressed one (`dump --compress`) a memfd it is decompressed into first, up to `need`
/// bytes (where its last page run ends).
fn open_pages(img: &ferry_image::ImageReader, pid: i32, need: u64) -> Result<std::fs::File, Error> {
    let path = img.path(&ferry_image::pages_file(pid));
    let obj = || format!("{}", path.display());
    let f = img.open_file(&ferry_image::pages_file(pid))?;
    let mut head = vec![0u8; PAGE_SIZE as usize];
    f.read_exact_at(&mut head, 0).ctx(obj)?;
    if !ferry_image::pages_compressed(&head) {
        return Ok(f);
    }
    let name = std::ffi::CString::new(format!("ferry-pages-{pid}")).unwrap_or_default();
    let mut plain = std::fs::File::from(ferry_sys::process::memfd(&name).ctx(obj)?);
    std::io::Write::write_all(&mut plain, &head).ctx(obj)?;
    let mut src = std::io::BufReader::with_capacity(1 << 20, f);
    std::io::Seek::seek(&mut src, std::io::SeekFrom::Start(PAGE_SIZE)).ctx(obj)?;
    decompress_pages(src, &mut plain, need.saturating_sub(PAGE_SIZE), &obj)?;
    Ok(plain)
}

/// Decompress the zstd stream of a compressed page file (what follows its header page) into
/// `out`, refusing to write more than `limit` bytes: a few kilobytes of zstd can claim
/// gigabytes of zeros, and restore decompresses into memory, so a corrupted or hostile file
/// must not get more than its page runs can ever read. Returns the bytes written.
pub fn decompress_pages(
    src: impl std::io::BufRead,
    out: &mut impl std::io::Write,
    limit: u64,
    obj: &dyn Fn() -> String,
) -> Result<u64, Error> {
    let mut dec = zstd::stream::read::Decoder::with_buffer(src).ctx(obj)?;
    let mut buf = PageBuf::new(CHUNK).ctx(obj)?;
    let mut total = 0u64;
    loop {
        let n = std::io::Read::read(&mut dec, &mut buf)
            .map_err(|e| Error::Invalid { object: obj(), what: format!("cannot decompress the page file: {e}") })?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
        if total > limit {
            return Err(Error::Invalid {
                object: obj(),
                what: format!("decompresses to more than the {limit} bytes its page runs use"),
            });
        }
        out.write_all(&buf[..n]).ctx(obj)?;
    }
}

/// Addresses ferry uses inside a child while it rebuilds the address space.
#[derive(Debug, Clone, Copy)]
pub struct Trampoline {
    /// Code page: `syscall; int3`.
    pub code: u64,
    /// Data pages for syscall arguments and batch tables ([`DATA_LEN`] bytes).
    pub data: u64,
    /// Free virtual space to park the vDSO while it moves.
    pub park: u64,
}

/// Pages ferry maps for the trampoline (code + 15 data) and keeps free for parking the vDSO.
pub const TRAMPOLINE_PAGES: u64 = 16;
/// Bytes of the trampoline's data area.
pub const DATA_LEN: u64 = (TRAMPOLINE_PAGES - 1) * PAGE_SIZE;
pub const PARK_PAGES: u64 = 64;
/// Top of the user address space with 4-level paging.
pub(crate) const TASK_SIZE: u64 = 0x7fff_ffff_f000;

/// Pick a trampoline address that overlaps neither the image's mappings nor ferry's own.
pub fn choose_trampoline(vmas: &[Vma]) -> Result<Trampoline, Error> {
    let own = std::fs::read_to_string("/proc/self/maps").ctx(|| "cannot read /proc/self/maps".into())?;
    let own = ferry_proc::parse_maps(&own)
        .map_err(|e| Error::Invalid { object: "/proc/self/maps".into(), what: e.to_string() })?;
    let len = (TRAMPOLINE_PAGES + PARK_PAGES) * PAGE_SIZE;
    let busy: Vec<(u64, u64)> =
        own.iter().map(|m| (m.start, m.end)).chain(vmas.iter().map(|v| (v.start, v.end))).collect();
    let free = |a: u64| busy.iter().all(|&(s, e)| a + len <= s || a >= e);
    let mut a = 0x1000_0000u64;
    while a < 0x7f00_0000_0000 {
        if free(a) {
            return Ok(Trampoline { code: a, data: a + PAGE_SIZE, park: a + TRAMPOLINE_PAGES * PAGE_SIZE });
        }
        a += 0x1000_0000;
    }
    Err(Error::Invalid { object: "address space".into(), what: "no free room for ferry's restore trampoline".into() })
}

fn special(kind: VmaKind) -> bool {
    matches!(kind, VmaKind::Vdso | VmaKind::Vvar | VmaKind::VvarVclock)
}

fn special_kind(path: Option<&str>) -> Option<VmaKind> {
    match path {
        Some("[vdso]") => Some(VmaKind::Vdso),
        Some("[vvar]") => Some(VmaKind::Vvar),
        Some("[vvar_vclock]") => Some(VmaKind::VvarVclock),
        _ => None,
    }
}

/// By the tracer: replace the child's address space (ferry's) with the image's.
///
/// Every call below is queued on one [`Batch`] that the trampoline runs in a few stops; the
/// order is the order of the calls. Mappings the process premapped itself while forking (memory shared copy-on-write with its
/// children, `shared.kept`) stay as they are; only their protection and flags are set here.
pub fn restore(
    inj: &Injector,
    tr: &Trampoline,
    p: &Process,
    prep: &Prepared,
    shared: &crate::state::cow::Tracer<'_>,
) -> Result<(), Error> {
    let pid = inj.pid();
    let mm =
        p.mm.as_ref()
            .ok_or_else(|| Error::Invalid { object: format!("pid {pid}"), what: "no memory record".into() })?;
    let cur_text = procfs::read_string(pid, "maps")?;
    let cur = procfs::parse(pid, "maps", ferry_proc::parse_maps(&cur_text))?;
    let mut b = Batch::new(inj, tr.data, DATA_LEN);
    // 1. Park the vDSO family inside the trampoline's reserve, then drop everything of ferry's
    //    around the reserve in two calls (munmap of holes is allowed).
    let mut parked: HashMap<VmaKind, (u64, u64)> = HashMap::new();
    let mut park_at = tr.park;
    for m in &cur {
        let Some(k) = special_kind(m.path.as_deref()) else { continue };
        let len = m.end - m.start;
        if park_at + len > tr.park + PARK_PAGES * PAGE_SIZE {
            return Err(Error::Invalid { object: format!("pid {pid}"), what: "vDSO too large to park".into() });
        }
        b.push(
            nr::MREMAP,
            &[m.start, len, len, (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64, park_at],
            park_at,
            || format!("pid {pid}: cannot move {} at {:#x}", m.path.as_deref().unwrap_or(""), m.start),
        )?;
        parked.insert(k, (park_at, len));
        park_at += len;
    }
    let reserve_end = tr.park + PARK_PAGES * PAGE_SIZE;
    let mut keep: Vec<(u64, u64)> = shared.kept.clone();
    keep.push((tr.code, reserve_end));
    keep.sort_unstable();
    let mut s = 0u64;
    for &(ks, ke) in keep.iter().chain([(TASK_SIZE, TASK_SIZE)].iter()) {
        if ks > s {
            b.push(nr::MUNMAP, &[s, ks - s], 0, || format!("pid {pid}: cannot unmap {s:#x}-{ks:#x}"))?;
        }
        s = s.max(ke);
    }
    // 2. The vDSO family goes to its old addresses.
    for v in mm.vmas.iter() {
        let kind = VmaKind::try_from(v.kind).unwrap_or(VmaKind::Invalid);
        if !special(kind) {
            continue;
        }
        let Some((at, len)) = parked.remove(&kind) else {
            return Err(Error::Invalid {
                object: format!("pid {pid}"),
                what: format!("this kernel has no {} mapping (vDSO layout differs)", v.path),
            });
        };
        if len != v.end - v.start {
            return Err(Error::Invalid {
                object: format!("pid {pid}"),
                what: format!("{} is {} bytes here but {} in the image (vDSO differs)", v.path, len, v.end - v.start),
            });
        }
        b.push(
            nr::MREMAP,
            &[at, len, len, (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as u64, v.start],
            v.start,
            || format!("pid {pid}: cannot move {} to {:#x}", v.path, v.start),
        )?;
    }
    for (_, (at, len)) in parked {
        b.push(nr::MUNMAP, &[at, len], 0, || format!("pid {pid}: cannot unmap parked vDSO part"))?;
    }
    // 3. SysV shared memory attachments, then every other mapping, writable while we fill it.
    if mm.vmas.iter().any(|v| v.sysv) {
        b.flush()?;
        crate::state::sysvshm::attach(inj, p, &mm.vmas)?;
    }
    let mut reprotect = Vec::new();
    let mut accounted = Vec::new();
    for (i, v) in mm.vmas.iter().enumerate().filter(|(_, v)| !v.sysv) {
        let kind = VmaKind::try_from(v.kind).unwrap_or(VmaKind::Invalid);
        let len = v.end - v.start;
        let mut prot = v.prot as u64;
        let has = |flag: &str| v.vm_flags.iter().any(|f| f == flag);
        let mut flags = match kind {
            // (MAP_DROPPABLE implies NORESERVE, WIPEONFORK and DONTDUMP.)
            VmaKind::Anon if has("dp") => MAP_DROPPABLE | libc::MAP_ANONYMOUS,
            VmaKind::Anon => libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            VmaKind::SharedAnon => libc::MAP_SHARED,
            VmaKind::FilePrivate => libc::MAP_PRIVATE,
            VmaKind::FileShared => libc::MAP_SHARED,
            _ => continue,
        } as u64;
        if has("gd") {
            flags |= libc::MAP_GROWSDOWN as u64;
        }
        if has("nr") && !has("dp") {
            flags |= libc::MAP_NORESERVE as u64;
        }
        if shared.is_kept(v) {
            if prot != (libc::PROT_READ | libc::PROT_WRITE) as u64 {
                reprotect.push(i); // premapped read+write
            }
            continue;
        }
        // (Filled here: its own pages, or the layers of memory shared with the parent.)
        let filled = !v.runs.is_empty() || shared.chains.iter().any(|c| c.0 == i);
        // A private mapping that was writable once stays accounted ("ac", VM_ACCOUNT) when made
        // read-only: so it is mapped writable first too (an anonymous one only keeps it with
        // an anon_vma, which one written page gives it; see `accounted` below).
        let was_writable = has("ac") && matches!(kind, VmaKind::Anon | VmaKind::FilePrivate);
        if kind != VmaKind::SharedAnon
            && (filled || was_writable)
            && prot & (libc::PROT_READ | libc::PROT_WRITE) as u64 != (libc::PROT_READ | libc::PROT_WRITE) as u64
        {
            prot |= (libc::PROT_READ | libc::PROT_WRITE) as u64;
            reprotect.push(i);
            if was_writable && kind == VmaKind::Anon && !filled {
                accounted.push(i);
            }
        }
        if has("lo") && !has("lf") && prot == 0 {
            // mlock of an inaccessible mapping fails (it cannot fault its pages in): it was
            // locked while accessible, and is locked here before its final mprotect.
            prot = libc::PROT_READ as u64;
            reprotect.push(i);
        }
        let (fd, off) = match prep.vma_fd.get(&i) {
            Some(fd) => (*fd as i64, v.offset),
            None => (-1, 0),
        };
        b.push(nr::MMAP, &[v.start, len, prot, flags | libc::MAP_FIXED as u64, fd as u64, off], v.start, || {
            format!(
                "pid {pid}: cannot map {:#x}-{:#x} ({})",
                v.start,
                v.end,
                if v.path.is_empty() { "anonymous" } else { &v.path }
            )
        })?;
    }
    // 4. Page contents: the process reads them itself from the page file with injected
    //    `preadv` calls, one copy from the page cache into its memory (like a plain read()),
    //    and ferry never maps or buffers them. Runs that follow each other in the file share a call.
    let mut segs: Vec<(u64, u64, u64)> = Vec::new(); // (addr, len, file offset)
    for (i, v) in mm.vmas.iter().enumerate() {
        if v.kind == VmaKind::SharedAnon as i32 || shared.is_kept(v) || shared.chains.iter().any(|c| c.0 == i) {
            continue; // already in its memfd, premapped, or built from its layers below
        }
        segs.extend(run_segments(pid, v, prep.pages_len)?);
    }
    if !segs.is_empty() {
        let fd = prep.pages_fd.ok_or_else(|| Error::Invalid {
            object: format!("pid {pid}"),
            what: "page runs but no page file".into(),
        })?;
        read_pages(&mut b, fd, &segs)?;
    }
    // Memory shared with the parent that could not be premapped: the parent's content (and its
    // parent's ...), then this process's holes and pages.
    for (_, layers) in &shared.chains {
        for l in layers {
            for h in l.holes {
                b.push(nr::MADVISE, &[h.addr, h.nr_pages * PAGE_SIZE, libc::MADV_DONTNEED as u64], 0, || {
                    format!("pid {pid}: cannot drop pages at {:#x}", h.addr)
                })?;
            }
            let segs = run_segments(pid, l.vma, l.pages.map_or(0, |p| p.1))?;
            if let (false, Some((fd, _))) = (segs.is_empty(), l.pages) {
                read_pages(&mut b, fd, &segs)?;
            } else if !segs.is_empty() {
                return Err(Error::Invalid { object: format!("pid {pid}"), what: "page runs but no page file".into() });
            }
        }
    }
    // 5. Final protections and madvise flags.
    for &i in &accounted {
        // One page written and dropped: the mapping gets its anon_vma, and keeps VM_ACCOUNT.
        let v = &mm.vmas[i];
        for advice in [MADV_POPULATE_WRITE, libc::MADV_DONTNEED] {
            b.push(nr::MADVISE, &[v.start, PAGE_SIZE, advice as u64], 0, || {
                format!("pid {pid}: cannot madvise {:#x} ({advice})", v.start)
            })?;
        }
    }
    let lock = |b: &mut Batch<'_>, v: &Vma| -> Result<(), Error> {
        let has = |flag: &str| v.vm_flags.iter().any(|f| f == flag);
        if has("lf") {
            b.push(nr::MLOCK2, &[v.start, v.end - v.start, MLOCK_ONFAULT], 0, || {
                format!("pid {pid}: cannot mlock2 {:#x} (MLOCK_ONFAULT)", v.start)
            })
        } else if has("lo") {
            b.push(nr::MLOCK, &[v.start, v.end - v.start], 0, || format!("pid {pid}: cannot mlock {:#x}", v.start))
        } else {
            Ok(())
        }
    };
    for v in mm.vmas.iter().filter(|v| v.prot == 0) {
        lock(&mut b, v)?;
    }
    for i in reprotect {
        let v = &mm.vmas[i];
        b.push(nr::MPROTECT, &[v.start, v.end - v.start, v.prot as u64], 0, || {
            format!("pid {pid}: cannot mprotect {:#x}-{:#x}", v.start, v.end)
        })?;
    }
    for v in &mm.vmas {
        let has = |flag: &str| v.vm_flags.iter().any(|f| f == flag);
        for (flag, advice) in MADVISED {
            if has(flag) {
                b.push(nr::MADVISE, &[v.start, v.end - v.start, advice as u64], 0, || {
                    format!("pid {pid}: cannot madvise {:#x} ({flag})", v.start)
                })?;
            }
        }
        if v.prot != 0 {
            lock(&mut b, v)?;
        }
    }
    // 6. mm fields: brk, arg/env bounds (so /proc/PID/cmdline and environ read the same), auxv, exe.
    let map = b.data(128 + mm.auxv.len() * 8, |at| prctl_mm_map(mm, prep, at + 128))?;
    b.push(nr::PRCTL, &[PR_SET_MM as u64, PR_SET_MM_MAP, map, 104, 0], 0, || {
        format!("pid {pid}: PR_SET_MM_MAP (brk {:#x}, exe {})", mm.brk, mm.exe_path)
    })?;
    // 7. Sealed mappings (mseal), last: nothing may change them afterwards.
    for v in mm.vmas.iter().filter(|v| v.vm_flags.iter().any(|f| f == "sl")) {
        b.push(nr::MSEAL, &[v.start, v.end - v.start, 0], 0, || format!("pid {pid}: cannot mseal {:#x}", v.start))?;
    }
    b.flush()
}

/// `mmap` flag: memory the kernel may drop under pressure (Linux 6.11); not in libc yet.
const MAP_DROPPABLE: i32 = 0x08;
const MADV_POPULATE_WRITE: i32 = 23;
const MLOCK_ONFAULT: u64 = 1;

/// smaps VmFlags set again with `madvise` at restore. The other codes: `rd wr ex sh mr mw me
/// ms` follow from the protection, the kind of mapping and the file's open mode; `gd` (growsdown),
/// `nr` (MAP_NORESERVE), `dp` (MAP_DROPPABLE) are given to `mmap`; `ac` (accounted) follows from
/// mapping writable first; `lo`/`lf` are `mlock`/`mlock2(MLOCK_ONFAULT)`; `sl` is `mseal`. `de
/// pf io mm ar` only occur on special mappings (vDSO, devices), which are recreated or refused;
/// the ones `scan` refuses are in [`REFUSED_FLAGS`]; `um uw ui` see there. `sd` (soft-dirty) is not kept: every
/// restored mapping is new, hence soft-dirty (docs/ARCHITECTURE.md).
const MADVISED: [(&str, i32); 8] = [
    ("dd", libc::MADV_DONTDUMP),
    ("dc", libc::MADV_DONTFORK),
    ("wf", libc::MADV_WIPEONFORK),
    ("hg", libc::MADV_HUGEPAGE),
    ("nh", libc::MADV_NOHUGEPAGE),
    ("sr", libc::MADV_SEQUENTIAL),
    ("rr", libc::MADV_RANDOM),
    ("mg", libc::MADV_MERGEABLE),
];

/// smaps VmFlags of state ferry cannot restore: a shadow stack, guard regions
/// (MADV_GUARD_INSTALL, which pagemap alone can locate), MAP_SYNC, arm64 MTE. (userfaultfd
/// registrations, `um uw ui`, live as long as their userfaultfd: one the process holds is refused
/// as an fd; the one pre-copy migration registers is ferry's own and is not kept.)
const REFUSED_FLAGS: [(&str, &str); 4] = [
    ("ss", "a shadow stack"),
    ("gu", "guard regions (MADV_GUARD_INSTALL)"),
    ("sf", "MAP_SYNC"),
    ("mt", "memory tagging (MTE)"),
];

/// `struct prctl_mm_map` (104 bytes, padded to 128) followed by the auxv it points at, `auxv_addr`.
fn prctl_mm_map(mm: &Mm, prep: &Prepared, auxv_addr: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(128 + mm.auxv.len() * 8);
    for w in [
        mm.start_code,
        mm.end_code,
        mm.start_data,
        mm.end_data,
        mm.start_brk,
        mm.brk,
        mm.start_stack,
        mm.arg_start,
        mm.arg_end,
        mm.env_start,
        mm.env_end,
        auxv_addr,
    ] {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b.extend_from_slice(&((mm.auxv.len() * 8) as u32).to_le_bytes());
    b.extend_from_slice(&(prep.exe_fd.map(|f| f as u32).unwrap_or(u32::MAX)).to_le_bytes());
    b.resize(128, 0);
    for w in &mm.auxv {
        b.extend_from_slice(&w.to_le_bytes());
    }
    b
}

/// Whether page run `r` lies inside mapping `v` and inside a page file of `file_len` bytes.
pub(crate) fn run_in_bounds(r: &PageRun, v: &Vma, file_len: u64) -> bool {
    let len = r.nr_pages.saturating_mul(PAGE_SIZE);
    r.offset.checked_add(len).is_some_and(|e| e <= file_len)
        && r.addr >= v.start
        && r.addr.checked_add(len).is_some_and(|e| e <= v.end)
}

/// The runs of `v` as (address, length, file offset), checked against the page file's length.
fn run_segments(pid: i32, v: &Vma, file_len: u64) -> Result<Vec<(u64, u64, u64)>, Error> {
    v.runs
        .iter()
        .map(|r| match run_in_bounds(r, v, file_len) {
            true => Ok((r.addr, r.nr_pages * PAGE_SIZE, r.offset)),
            false => Err(Error::Invalid {
                object: format!("pid {pid}"),
                what: format!("page run at {:#x} is out of bounds", r.addr),
            }),
        })
        .collect()
}

/// Iovecs per `preadv` (one page of the trampoline's data area).
const IOVS_PER_CALL: usize = PAGE_SIZE as usize / 16;

/// By the tracer: make the process read `segs` (address, length, offset in page file `fd`) into
/// its own memory with `preadv` calls on batch `b`, one per stretch of the file read in order.
/// Each must read all it asks for (the runs were checked against the file's length).
fn read_pages(b: &mut Batch<'_>, fd: i32, segs: &[(u64, u64, u64)]) -> Result<(), Error> {
    const MAX: u64 = 1 << 30; // a read(2) moves at most 2 GiB - 4 KiB
    let pid = b.pid();
    // (Every segment in pieces a single read can move.)
    let segs: Vec<(u64, u64, u64)> = segs
        .iter()
        .flat_map(|&(a, l, o)| (0..l.div_ceil(MAX)).map(move |k| (a + k * MAX, (l - k * MAX).min(MAX), o + k * MAX)))
        .collect();
    let mut i = 0;
    while i < segs.len() {
        let off = segs[i].2;
        let mut iov = Vec::with_capacity(IOVS_PER_CALL * 16);
        let mut want = 0u64;
        let mut j = i;
        while j < segs.len() && iov.len() < IOVS_PER_CALL * 16 && want + segs[j].1 <= MAX {
            let (addr, len, o) = segs[j];
            if o != off + want {
                break; // not next in the file
            }
            iov.extend_from_slice(&addr.to_le_bytes());
            iov.extend_from_slice(&len.to_le_bytes());
            want += len;
            j += 1;
        }
        let at = b.data(iov.len(), |_| iov)?;
        let first = segs[i].0;
        b.push(nr::PREADV, &[fd as u64, at, (j - i) as u64, off, 0], want, || {
            format!("pid {pid}: cannot read its pages at {first:#x} from the page file (offset {off}, {want} bytes)")
        })?;
        i = j;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj() -> String {
        "pages-1.img".into()
    }

    #[test]
    fn a_page_file_that_decompresses_beyond_its_runs_is_refused() {
        // 64 MiB of zeros compress to a few kilobytes: a page file whose runs read 1 MiB must
        // not make restore fill 64 MiB of memory (found by review while fuzzing: see
        // docs/reliability.md).
        let z = zstd::encode_all(&vec![0u8; 64 << 20][..], 3).expect("compress");
        assert!(z.len() < 64 << 10, "{} bytes", z.len());
        let mut out = Vec::new();
        let r = decompress_pages(&z[..], &mut out, 1 << 20, &obj);
        assert!(matches!(r, Err(Error::Invalid { .. })), "{r:?}");
        assert!(out.len() <= 1 << 20, "wrote {} bytes", out.len());
        let mut out = Vec::new();
        assert_eq!(decompress_pages(&z[..], &mut out, 64 << 20, &obj).expect("fits"), 64 << 20);
        assert_eq!(out.len(), 64 << 20);
    }

    #[test]
    fn runs_end_is_where_the_last_run_ends() {
        let run = |offset, nr_pages| PageRun { addr: 0x1000, nr_pages, offset };
        let mm = Mm {
            vmas: vec![
                Vma { runs: vec![run(4096, 2), run(3 * 4096, 1)], ..Default::default() },
                Vma { runs: vec![run(8192, 1)], ..Default::default() },
            ],
            ..Default::default()
        };
        assert_eq!(runs_end(&mm), 4 * 4096);
        let huge =
            Mm { vmas: vec![Vma { runs: vec![run(u64::MAX, u64::MAX)], ..Default::default() }], ..Default::default() };
        assert_eq!(runs_end(&huge), u64::MAX);
        assert_eq!(runs_end(&Mm::default()), 0);
    }
}
