//! Pages shared copy-on-write between a parent and the children it forked.
//!
//! After `fork`, parent and child map the same physical pages until one of them writes. Storing
//! each process's memory on its own would double those pages in the image and, worse, in memory
//! after restore. So:
//!
//! - **Dump**: for a private anonymous mapping of a child whose parent has a mapping with the
//!   same bounds, both pagemaps are read (`/proc/PID/pagemap`, physical frame numbers, which root
//!   sees); pages on the same frame are not stored for the child. The mapping is marked `cow`,
//!   and its `cow_holes` list the pages the parent has and the child does not (they must read as
//!   zeros in the child). A zero-filled page of the child is not stored either: it becomes a
//!   hole too (left out of the runs, it would show the parent's content).
//! - **Restore**: while the tree is forked, a process whose children need one of its mappings
//!   maps it itself (still running ferry's code, `MAP_FIXED_NOREPLACE`) and fills it *before* it
//!   forks them, so they inherit it copy-on-write, exactly as before. A child that inherited
//!   such a mapping only applies its own layer (its holes, then its stored pages). The tracer
//!   leaves these premapped ranges alone. If a range cannot be premapped (ferry's own memory
//!   happens to sit there in the forked copy), the tracer builds it afterwards from the chain of
//!   layers (the parent's, then the child's): same content, without the sharing.
//!
//! The same holds for the pages of a private *file* mapping a process wrote to (its anonymous,
//! copied-on-write pages): they are compared and shared the same way, a hole there meaning "the
//! file's bytes" (MADV_DONTNEED on a private file mapping gives those back), and a premapped
//! file mapping maps the file (the fd opened for it before the fork).

use crate::error::{Ctx, Error};
use crate::procfs;
use ferry_image::{PageRange, Process, Vma, VmaKind, PAGE_SIZE};
use ferry_sys::process::{page_is, PageRegion};
use ferry_sys::raw::RawRegion;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

/// Pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;
const PM_PFN: u64 = (1 << 55) - 1;
/// Pages of pagemap read at a time (512 KiB of entries per process).
const BATCH: u64 = 64 << 10;

/// What `dump_pages` must know of one process's sharing.
#[derive(Default)]
pub struct Dump {
    /// Pages its parent holds (same physical page): not stored for this process. Sorted.
    pub exclude: Vec<(u64, u64)>,
    /// Mappings (by start) with pages shared with the parent or a child: read through
    /// /proc/PID/mem, not `process_vm_readv`, whose read-only pin of a page that may be shared
    /// makes the kernel copy it first (FAULT_FLAG_UNSHARE): reading would undo the sharing.
    pub via_mem: std::collections::HashSet<u64>,
}

/// Mappings whose pages can be shared copy-on-write with a child: private anonymous ones, and
/// the anonymous (written, copied-on-write) pages of private file mappings.
fn shareable(v: &Vma) -> bool {
    // (A MAP_DROPPABLE mapping is wiped in a child at fork: never shared.)
    let anon = v.kind == VmaKind::Anon as i32 && !v.vm_flags.iter().any(|f| f == "dp");
    (anon || is_file(v)) && !v.sysv
}

fn is_file(v: &Vma) -> bool {
    v.kind == VmaKind::FilePrivate as i32
}

/// The same mapping in a parent and its child: bounds, and for a file the file and offset.
fn same_mapping(a: &Vma, b: &Vma) -> bool {
    (a.start, a.end, a.kind) == (b.start, b.end, b.kind)
        && (!is_file(a) || (a.path == b.path && a.offset == b.offset && a.shmem_id == b.shmem_id))
}

fn read_pagemap(pid: i32, f: &std::fs::File, start: u64, pages: u64) -> Result<Vec<u64>, Error> {
    let mut b = vec![0u8; pages as usize * 8];
    f.read_exact_at(&mut b, start / PAGE_SIZE * 8).ctx(|| format!("pid {pid}: cannot read pagemap at {start:#x}"))?;
    Ok(b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())).collect())
}

/// Before any page of the tree is read: for each process (`host` gives the pid ferry sees for
/// each entry of `procs`, listed parents first), find the pages of its private anonymous
/// mappings that are its parent's too, mark those mappings `cow` with their holes, and say
/// what the page dump must skip or read differently.
pub fn find(procs: &mut [Process], host: &[i32]) -> Result<Vec<Dump>, Error> {
    let mut out: Vec<Dump> = procs.iter().map(|_| Dump::default()).collect();
    if crate::postcopy::lazy_dump() {
        // Post-copy sends private anonymous memory page by page to each process's uffd after
        // the restore: nothing to premap, so each process gets its own copy (not shared).
        return Ok(out);
    }
    for i in 0..procs.len() {
        let Some(j) = procs[..i].iter().position(|q| q.pid == procs[i].ppid && q.mm.is_some()) else { continue };
        let parent: Vec<Vma> = procs[j]
            .mm
            .iter()
            .flat_map(|m| m.vmas.iter())
            .filter(|v| shareable(v))
            .map(|v| Vma { runs: Vec::new(), cow_holes: Vec::new(), ..v.clone() })
            .collect();
        let (pid, ppid) = (host[i], host[j]);
        let Some(mm) = procs[i].mm.as_mut() else { continue };
        let mut files = None;
        for v in mm.vmas.iter_mut().filter(|v| shareable(v) && parent.iter().any(|w| same_mapping(v, w))) {
            let (mine, theirs) = match &files {
                Some(f) => f,
                None => files.insert((procfs::open(pid, "pagemap")?, procfs::open(ppid, "pagemap")?)),
            };
            let also = page_is::PFNZERO | page_is::FILE;
            let regions = crate::state::memory::resident(mine.as_fd(), pid, v.start, v.end, also)?;
            let (shared, holes) = compare(pid, ppid, mine, theirs, v, &regions)?;
            if shared.is_empty() {
                continue;
            }
            v.cow = true;
            v.cow_holes = holes;
            out[i].exclude.extend(shared);
            out[i].via_mem.insert(v.start);
            out[j].via_mem.insert(v.start);
        }
        out[i].exclude.sort_unstable();
    }
    Ok(out)
}

type Ranges = Vec<(u64, u64)>;

/// The pages of `v` that process `pid` shares with its parent `ppid` (same frame), and the
/// holes: pages with no content here (absent, or the zero page) that the parent has.
fn compare(
    pid: i32,
    ppid: i32,
    mine: &std::fs::File,
    theirs: &std::fs::File,
    v: &Vma,
    regions: &[PageRegion],
) -> Result<(Ranges, Vec<PageRange>), Error> {
    let mut shared: Ranges = Vec::new();
    let mut holes: Vec<PageRange> = Vec::new();
    let mut ri = 0; // regions are in address order: the first one not yet behind `addr`
    let file = is_file(v);
    let mut at = v.start;
    while at < v.end {
        let n = ((v.end - at) / PAGE_SIZE).min(BATCH);
        let a = read_pagemap(pid, mine, at, n)?;
        let b = read_pagemap(ppid, theirs, at, n)?;
        for i in 0..n as usize {
            let addr = at + i as u64 * PAGE_SIZE;
            while ri < regions.len() && regions[ri].end <= addr {
                ri += 1;
            }
            // A page of its own here: not the zero page, and in a file mapping not the file's
            // (page cache) page but a copy (present anonymous, or swapped).
            let content = regions.get(ri).is_some_and(|r| {
                r.start <= addr
                    && r.categories & page_is::PFNZERO == 0
                    && (!file || r.categories & page_is::FILE == 0 || r.categories & page_is::SWAPPED != 0)
            });
            let (x, y) = (a[i], b[i]);
            let pfn = x & PM_PFN;
            // (The parent's page of a file mapping that is the file's own is not a layer.)
            let parent_has = y & PM_SWAPPED != 0 || (y & PM_PRESENT != 0 && (!file || y & PM_FILE == 0));
            if content
                && x & PM_PRESENT != 0
                && x & PM_FILE == 0
                && y & PM_PRESENT != 0
                && y & PM_FILE == 0
                && pfn != 0
                && pfn == y & PM_PFN
            {
                match shared.last_mut() {
                    Some(l) if l.1 == addr => l.1 += PAGE_SIZE,
                    _ => shared.push((addr, addr + PAGE_SIZE)),
                }
            } else if !content && parent_has {
                match holes.last_mut() {
                    Some(h) if h.addr + h.nr_pages * PAGE_SIZE == addr => h.nr_pages += 1,
                    _ => holes.push(PageRange { addr, nr_pages: 1 }),
                }
            }
        }
        at += n * PAGE_SIZE;
    }
    Ok((shared, holes))
}

/// One layer of a shared mapping's content: pages to drop, then pages to read from `pages`
/// (an fd number every process of the restored tree has, and the file's length).
pub struct Layer<'a> {
    pub pages: Option<(i32, u64)>,
    pub holes: &'a [PageRange],
    pub vma: &'a Vma,
}

/// The index in `procs` of `p`'s parent, if it is in the image.
fn parent_of(procs: &[Process], p: &Process) -> Option<usize> {
    procs.iter().position(|q| q.pid == p.ppid && !q.zombie && q.pid != p.pid)
}

fn same_bounds<'a>(p: &'a Process, v: &Vma) -> Option<&'a Vma> {
    p.mm.as_ref()?.vmas.iter().find(|w| same_mapping(v, w) && shareable(w))
}

/// The layers that make mapping `v` of `procs[idx]`, the oldest ancestor's first, its own last.
pub fn chain<'a>(
    procs: &'a [Process],
    pages: &[Option<(i32, u64)>],
    idx: usize,
    v: &'a Vma,
) -> Result<Vec<Layer<'a>>, Error> {
    let mut out = vec![Layer { pages: pages[idx], holes: &v.cow_holes, vma: v }];
    let (mut cur, mut w) = (idx, v);
    while w.cow {
        let p = &procs[cur];
        let bad = |what: &str| Error::Invalid {
            object: format!("pid {} mapping {:#x}-{:#x}", p.pid, w.start, w.end),
            what: what.into(),
        };
        let up = parent_of(procs, p).ok_or_else(|| bad("shares pages with a parent that is not in the image"))?;
        if out.len() > procs.len() {
            return Err(bad("its parents form a loop"));
        }
        w = same_bounds(&procs[up], w).ok_or_else(|| bad("shares pages with a parent that has no such mapping"))?;
        out.push(Layer { pages: pages[up], holes: &w.cow_holes, vma: w });
        cur = up;
    }
    out.reverse();
    Ok(out)
}

/// Mappings of `procs[idx]` that are premapped at restore: shared with its parent, or with one
/// of its children.
fn wanted<'a>(procs: &'a [Process], idx: usize) -> impl Iterator<Item = &'a Vma> + 'a {
    let me = &procs[idx];
    let vmas = me.mm.as_ref().map(|m| m.vmas.as_slice()).unwrap_or_default();
    vmas.iter().filter(move |v| {
        shareable(v)
            && (v.cow
                || procs.iter().any(|c| {
                    c.ppid == me.pid && c.pid != me.pid && !c.zombie && same_bounds(c, v).is_some_and(|w| w.cow)
                }))
    })
}

/// A mapping a restore child made itself, with the image pid whose content it holds.
#[derive(Debug)]
pub struct Premapped {
    pub region: RawRegion,
    pub owner: i32,
}

pub(crate) fn apply(region: &RawRegion, layer: &Layer<'_>) -> Result<(), String> {
    let v = layer.vma;
    let obj = || format!("mapping {:#x}-{:#x}", v.start, v.end);
    for h in layer.holes {
        region.zero(h.addr, h.nr_pages * PAGE_SIZE).map_err(|e| format!("{}: cannot drop a page: {e}", obj()))?;
    }
    if v.runs.is_empty() {
        return Ok(());
    }
    let (fd, len) = layer.pages.ok_or_else(|| format!("{}: page runs but no page file", obj()))?;
    for r in &v.runs {
        let n = r.nr_pages * PAGE_SIZE;
        if !crate::state::memory::run_in_bounds(r, v, len) {
            return Err(format!("{}: page run at {:#x} is out of bounds", obj(), r.addr));
        }
        region.read_from(fd, r.addr, n, r.offset).map_err(|e| format!("{}: cannot read pages: {e}", obj()))?;
    }
    Ok(())
}

/// In the restore child of `procs[idx]`, before it forks anything: keep the mappings it
/// inherited from its parent that it shares (applying its own layer), drop the other inherited
/// ones, and map and fill the rest of what it or its children share. A mapping that cannot be
/// placed (EEXIST: ferry's own memory is there) is left to the tracer.
pub fn premap(
    procs: &[Process],
    pages: &[Option<(i32, u64)>],
    vma_fds: &std::collections::HashMap<usize, i32>,
    idx: usize,
    inherited: Vec<Premapped>,
) -> Result<Vec<Premapped>, String> {
    let me = &procs[idx];
    // Its own content already (memory in place, state/premapped.rs): kept as it is.
    let (mut out, inherited): (Vec<Premapped>, Vec<Premapped>) = inherited.into_iter().partition(|p| p.owner == me.pid);
    let mut inherited: Vec<Option<Premapped>> = inherited.into_iter().map(Some).collect();
    let mut todo = Vec::new();
    for v in wanted(procs, idx) {
        if out.iter().any(|p| (p.region.start(), p.region.end()) == (v.start, v.end)) {
            continue;
        }
        let slot = inherited.iter_mut().find(|s| {
            s.as_ref().is_some_and(|s| s.owner == me.ppid && (s.region.start(), s.region.end()) == (v.start, v.end))
        });
        match slot.and_then(|s| s.take()) {
            Some(p) if v.cow => {
                apply(&p.region, &Layer { pages: pages[idx], holes: &v.cow_holes, vma: v })?;
                out.push(Premapped { region: p.region, owner: me.pid });
            }
            Some(p) => {
                // The parent's, but not shared with it after all: map this process's own.
                p.region.unmap().map_err(|e| format!("cannot unmap an inherited mapping: {e}"))?;
                todo.push(v);
            }
            None => todo.push(v),
        }
    }
    for p in inherited.into_iter().flatten() {
        p.region.unmap().map_err(|e| format!("cannot unmap an inherited mapping: {e}"))?;
    }
    for v in todo {
        let has = |flag: &str| v.vm_flags.iter().any(|f| f == flag);
        let mapped = match is_file(v) {
            true => {
                // (The file opened for this mapping, at its number in every restored process.)
                let vmas = me.mm.as_ref().map(|m| m.vmas.as_slice()).unwrap_or_default();
                let fd = vmas.iter().position(|w| std::ptr::eq(w, v)).and_then(|i| vma_fds.get(&i));
                match fd {
                    Some(&fd) => RawRegion::map_file(v.start, v.end, fd, v.offset, has("nr")),
                    None => return Err(format!("mapping {:#x}-{:#x}: no open file for {}", v.start, v.end, v.path)),
                }
            }
            false => RawRegion::map(v.start, v.end, has("gd"), has("nr")),
        };
        let region = match mapped {
            Ok(r) => r,
            Err(_) => continue, // the tracer rebuilds it
        };
        let layers = chain(procs, pages, idx, v).map_err(|e| e.to_string())?;
        for l in &layers {
            apply(&region, l)?;
        }
        out.push(Premapped { region, owner: me.pid });
    }
    Ok(out)
}

/// What the tracer must know of one process's shared mappings: the ranges the process premapped
/// itself (left alone), and, for each shared mapping it could not premap, the layers to build
/// it from (by vma index).
pub struct Tracer<'a> {
    pub kept: Vec<(u64, u64)>,
    pub chains: Vec<(usize, Vec<Layer<'a>>)>,
}

impl Tracer<'_> {
    pub fn is_kept(&self, v: &Vma) -> bool {
        self.kept.contains(&(v.start, v.end))
    }
}

pub fn for_tracer<'a>(
    procs: &'a [Process],
    pages: &[Option<(i32, u64)>],
    idx: usize,
    kept: Vec<(u64, u64)>,
) -> Result<Tracer<'a>, Error> {
    let mut chains = Vec::new();
    let vmas = procs[idx].mm.as_ref().map(|m| m.vmas.as_slice()).unwrap_or_default();
    for (i, v) in vmas.iter().enumerate() {
        if v.cow && !kept.contains(&(v.start, v.end)) {
            chains.push((i, chain(procs, pages, idx, v)?));
        }
    }
    Ok(Tracer { kept, chains })
}
