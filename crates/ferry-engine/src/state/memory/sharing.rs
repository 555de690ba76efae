//! Pages shared copy-on-write between a parent and the children it forked, found at dump time.
//!
//! After `fork`, parent and child map the same physical pages until one of them writes. Storing
//! each process's memory on its own would double those pages in the image and, worse, in memory
//! after restore. So for a private anonymous mapping of a child whose parent has a mapping with
//! the same bounds, both pagemaps are read (`/proc/PID/pagemap`, physical frame numbers, which
//! root sees); pages on the same frame are not stored for the child. The mapping is marked
//! `cow`, and its `cow_holes` list the pages the parent has and the child does not (they must
//! read as zeros in the child). A zero-filled page of the child is not stored either: it becomes
//! a hole too (left out of the runs, it would show the parent's content).
//!
//! The same holds for the pages of a private *file* mapping a process wrote to (its anonymous,
//! copied-on-write pages): they are compared and shared the same way, a hole there meaning "the
//! file's bytes". How restore brings the sharing back: state/cow.rs.

use super::scan::resident;
use crate::error::{Ctx, Error};
use crate::procfs;
use ferry_image::{PageRange, Process, Vma, VmaKind, PAGE_SIZE};
use ferry_sys::process::{page_is, PageRegion};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

/// Pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;
const PM_PFN: u64 = (1 << 55) - 1;
/// Pages of pagemap read at a time (512 KiB of entries per process).
const BATCH: u64 = 64 << 10;

/// One process's pages shared copy-on-write with its parent or children, as the page dump must
/// know them.
#[derive(Default)]
pub struct Sharing {
    /// Pages its parent holds (same physical page): not stored for this process. Sorted.
    pub exclude: Vec<(u64, u64)>,
    /// Mappings (by start) with pages shared with the parent or a child: read through
    /// /proc/PID/mem, not `process_vm_readv`, whose read-only pin of a page that may be shared
    /// makes the kernel copy it first (FAULT_FLAG_UNSHARE): reading would undo the sharing.
    pub via_mem: std::collections::HashSet<u64>,
}

/// Mappings whose pages can be shared copy-on-write with a child: private anonymous ones, and
/// the anonymous (written, copied-on-write) pages of private file mappings.
pub(crate) fn shareable(v: &Vma) -> bool {
    // (A MAP_DROPPABLE mapping is wiped in a child at fork: never shared.)
    let anon = v.kind == VmaKind::Anon as i32 && !v.vm_flags.iter().any(|f| f == "dp");
    (anon || is_file(v)) && !v.sysv
}

pub(crate) fn is_file(v: &Vma) -> bool {
    v.kind == VmaKind::FilePrivate as i32
}

/// The same mapping in a parent and its child: bounds, and for a file the file and offset.
pub(crate) fn same_mapping(a: &Vma, b: &Vma) -> bool {
    (a.start, a.end, a.kind) == (b.start, b.end, b.kind)
        && (!is_file(a) || (a.path == b.path && a.offset == b.offset && a.shmem_id == b.shmem_id))
}

/// Where the parent of process `i` of `procs` (listed parents first) is, and its mappings whose
/// pages a child may share (without their pages).
fn parent_of(procs: &[Process], i: usize) -> Option<(usize, Vec<Vma>)> {
    let j = procs[..i].iter().position(|q| q.pid == procs[i].ppid && q.mm.is_some())?;
    let parent = procs[j]
        .mm
        .iter()
        .flat_map(|m| m.vmas.iter())
        .filter(|v| shareable(v))
        .map(|v| Vma { runs: Vec::new(), cow_holes: Vec::new(), ..v.clone() })
        .collect();
    Some((j, parent))
}

fn read_pagemap(pid: i32, f: &std::fs::File, start: u64, pages: u64) -> Result<Vec<u64>, Error> {
    let mut b = vec![0u8; pages as usize * 8];
    f.read_exact_at(&mut b, start / PAGE_SIZE * 8).ctx(|| format!("pid {pid}: cannot read pagemap at {start:#x}"))?;
    Ok(b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())).collect())
}

/// Whether two pagemap entries at one address, a process's and its parent's, are the same
/// anonymous frame: a page they share copy-on-write.
fn same_frame(x: u64, y: u64) -> bool {
    let present_anon = |e: u64| e & PM_PRESENT != 0 && e & PM_FILE == 0;
    present_anon(x) && present_anon(y) && x & PM_PFN != 0 && x & PM_PFN == y & PM_PFN
}

/// For each of the `pages` pages from `start`: whether process `pid` (its pagemap `mine`) has
/// it on the same anonymous frame as its parent `ppid` (`theirs`). (`dump -R` leaves those out
/// of a child's copies made while the tree runs, state/tracked.rs.)
pub(crate) fn same_frames(
    (pid, mine): (i32, &std::fs::File),
    (ppid, theirs): (i32, &std::fs::File),
    start: u64,
    pages: u64,
) -> Result<Vec<bool>, Error> {
    let a = read_pagemap(pid, mine, start, pages)?;
    let b = read_pagemap(ppid, theirs, start, pages)?;
    Ok(a.iter().zip(&b).map(|(&x, &y)| same_frame(x, y)).collect())
}

/// Before any page of the tree is read: for each process (`host` gives the pid ferry sees for
/// each entry of `procs`, listed parents first), find the pages of its private anonymous
/// mappings that are its parent's too, mark those mappings `cow` with their holes, and say
/// what the page dump must skip or read differently.
pub fn find(procs: &mut [Process], host: &[i32]) -> Result<Vec<Sharing>, Error> {
    let mut out: Vec<Sharing> = procs.iter().map(|_| Sharing::default()).collect();
    for i in 0..procs.len() {
        let Some((j, parent)) = parent_of(procs, i) else { continue };
        let (pid, ppid) = (host[i], host[j]);
        let Some(mm) = procs[i].mm.as_mut() else { continue };
        let mut files = None;
        for v in mm.vmas.iter_mut().filter(|v| shareable(v) && parent.iter().any(|w| same_mapping(v, w))) {
            let (mine, theirs) = match &files {
                Some(f) => f,
                None => files.insert((procfs::open(pid, "pagemap")?, procfs::open(ppid, "pagemap")?)),
            };
            let also = page_is::PFNZERO | page_is::FILE;
            let regions = resident(mine.as_fd(), pid, v.start, v.end, also)?;
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

/// The parts of `a` (sorted, disjoint) that lie in `b` (sorted, disjoint).
fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Ranges {
    let (mut out, mut j): (Ranges, usize) = (Vec::new(), 0);
    for &(s, e) in a {
        while j < b.len() && b[j].1 <= s {
            j += 1;
        }
        let mut k = j;
        while k < b.len() && b[k].0 < e {
            out.push((s.max(b[k].0), e.min(b[k].1)));
            k += 1;
        }
    }
    out
}

/// [`find`] without reading a page table, for `dump -R` from pages copied while the tree ran
/// (state/tracked.rs), under the freeze. `found[i]`: the pages process i found on its parent's
/// frames in a round (`sharing::same_frames`) and did not write since; `stable[i]`: the pages
/// process i copied in a round and did not write since (both sorted). A page found shared that
/// the parent did not write since either (it holds it in `stable`, or leaves it to its own
/// parent) still holds, in both, what it held when it was found shared: it is stored once,
/// with the parent. A mapping with such pages is marked `cow`, and every other page of it is a
/// hole in the child's layer (its own pages are written over the holes at restore, the rest
/// read as zeros, or as the file's bytes).
pub fn from_rounds(procs: &mut [Process], found: &[Ranges], stable: &[Ranges]) -> Vec<Sharing> {
    let mut out: Vec<Sharing> = procs.iter().map(|_| Sharing::default()).collect();
    for i in 0..procs.len() {
        let Some((j, parent)) = parent_of(procs, i) else { continue };
        let mut theirs: Ranges = stable.get(j).cloned().unwrap_or_default();
        theirs.extend_from_slice(&out[j].exclude);
        theirs.sort_unstable();
        let mut merged: Ranges = Vec::with_capacity(theirs.len());
        for (a, b) in theirs {
            match merged.last_mut() {
                Some(l) if l.1 >= a => l.1 = l.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        let ok = intersect(found.get(i).map_or(&[][..], |f| &f[..]), &merged);
        let Some(mm) = procs[i].mm.as_mut() else { continue };
        for v in mm.vmas.iter_mut().filter(|v| shareable(v) && parent.iter().any(|w| same_mapping(v, w))) {
            let shared = intersect(&ok, &[(v.start, v.end)]);
            if shared.is_empty() {
                continue;
            }
            let mut holes = Vec::new();
            let mut at = v.start;
            for &(a, b) in shared.iter().chain([(v.end, v.end)].iter()) {
                if a > at {
                    holes.push(PageRange { addr: at, nr_pages: (a - at) / PAGE_SIZE });
                }
                at = b;
            }
            v.cow = true;
            v.cow_holes = holes;
            out[i].exclude.extend(shared);
            out[i].via_mem.insert(v.start);
            out[j].via_mem.insert(v.start);
        }
        out[i].exclude.sort_unstable();
    }
    out
}

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
            // (The parent's page of a file mapping that is the file's own is not a layer.)
            let parent_has = y & PM_SWAPPED != 0 || (y & PM_PRESENT != 0 && (!file || y & PM_FILE == 0));
            if content && same_frame(x, y) {
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
