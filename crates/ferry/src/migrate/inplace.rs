//! Pre-copy on the destination: each pre-copied page goes to its own address in `ferry serve`'s
//! address space (private anonymous memory mapped there, `MAP_FIXED_NOREPLACE`, in 2 MiB
//! chunks), so that the restore, which serve runs in-process, hands whole mappings to the
//! restored process (it is forked from serve and inherits them copy-on-write: page tables are
//! copied, no page is) instead of writing them to an image and reading them back
//! (ferry-engine state/premapped.rs; docs/migration.md, "Where does a pre-copied page go").
//!
//! A page whose address is taken (serve's own memory, or another process's pages) goes to the
//! staging file instead ([`super::serve`]'s `PageStore`), and so does a whole mapping that
//! cannot be handed over (see [`InPlace::hand_over`]). Every area is unmapped when the value is
//! dropped: a failed migration leaves nothing mapped.

use anyhow::{Context, Result};
use ferry_engine::state::memory::Premapped;
use ferry_image::{Vma, VmaKind};
use ferry_sys::raw::RawRegion;
use std::collections::{BTreeMap, HashMap};

const PAGE: u64 = 4096;
/// Areas are mapped in chunks of this alignment (where nothing else is).
const CHUNK: u64 = 2 << 20;

/// One area: pages of one process (by its pid on the source).
struct Area {
    host: u32,
    region: RawRegion,
}

pub struct InPlace {
    /// By start address; never overlapping.
    areas: BTreeMap<u64, Area>,
    /// Addresses left alone: below serve's main stack, which must stay free to grow into.
    reserved: (u64, u64),
    /// Regions handed to the restore (whole mappings of the final image).
    handed: Vec<Premapped>,
    /// Bytes placed (pages written, counting pages sent again).
    pub placed: u64,
    /// Per 2 MiB chunk not collapsed yet: which of its pages were placed.
    filling: HashMap<u64, Filling>,
    /// Chunks made huge pages.
    pub collapsed: u64,
    /// Bytes of mappings made anew without reserve that were copied rather than moved.
    pub copied: u64,
    /// `FERRY_PRECOPY_IN_PLACE=0`: every page goes to the staging file (the path before memory
    /// in place; a way out should it ever misbehave).
    off: bool,
}

/// The pages of one 2 MiB chunk placed so far (a bit each).
#[derive(Default)]
struct Filling {
    bits: [u64; (CHUNK / PAGE / 64) as usize],
    count: u32,
}

/// Byte ranges (offsets into a PAGES frame) that could not be put in place.
pub type Unplaced = Vec<(usize, usize)>;

/// Room left below serve's main stack (the kernel keeps a guard gap below a stack, and a
/// mapping there would stop it from growing).
const STACK_ROOM: u64 = 64 << 20;

impl InPlace {
    /// `enabled` false: every page goes to the staging file (as with `FERRY_PRECOPY_IN_PLACE=0`).
    pub fn new(enabled: bool) -> InPlace {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let stack = maps.lines().find(|l| l.ends_with("[stack]")).and_then(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some((u64::from_str_radix(a, 16).ok()?, u64::from_str_radix(b, 16).ok()?))
        });
        // (no stack line: nothing is mapped at all, as if the stack took the whole top)
        let reserved = stack.map_or((1 << 46, u64::MAX), |(a, b)| (a.saturating_sub(STACK_ROOM), b));
        InPlace {
            areas: BTreeMap::new(),
            reserved,
            handed: Vec::new(),
            placed: 0,
            filling: HashMap::new(),
            collapsed: 0,
            copied: 0,
            off: !enabled || std::env::var_os("FERRY_PRECOPY_IN_PLACE").is_some_and(|v| v == "0"),
        }
    }

    /// Map `s..e` read+write for `host`, unless it touches the reserved range or anything mapped.
    fn map_area(&mut self, host: u32, s: u64, e: u64) -> bool {
        if s < self.reserved.1 && e > self.reserved.0 {
            return false;
        }
        match RawRegion::map(s, e, false, false) {
            Ok(region) => {
                self.areas.insert(s, Area { host, region });
                true
            }
            Err(_) => false,
        }
    }

    /// The area holding `addr`, if any.
    fn area_at(&self, addr: u64) -> Option<&Area> {
        let (_, a) = self.areas.range(..=addr).next_back()?;
        a.region.holds(addr, 1).then_some(a)
    }

    /// Where the free stretch around `addr` (in no area) ends and starts.
    fn free_around(&self, addr: u64) -> (u64, u64) {
        let lo = self.areas.range(..=addr).next_back().map_or(0, |(_, a)| a.region.end());
        let hi = self.areas.range(addr + 1..).next().map_or(u64::MAX, |(s, _)| *s);
        (lo, hi)
    }

    /// Map an area for `host` around `a..b` (free of areas): its 2 MiB chunks if nothing is
    /// there, else the pages alone. Whether it worked.
    fn map(&mut self, host: u32, a: u64, b: u64) -> bool {
        let (lo, hi) = self.free_around(a);
        let wide = ((a / CHUNK * CHUNK).max(lo), b.div_ceil(CHUNK).saturating_mul(CHUNK).min(hi));
        self.map_area(host, wide.0, wide.1) || self.map_area(host, a, b)
    }

    /// Put the pages of a PAGES frame (`bytes` at `addr`, whole pages) in place; returns the
    /// byte ranges of `bytes` that could not be.
    pub fn put(&mut self, host: u32, addr: u64, bytes: &[u8]) -> Unplaced {
        if self.off {
            return vec![(0, bytes.len())];
        }
        let end = addr + bytes.len() as u64;
        let mut out: Unplaced = Vec::new();
        let mut at = addr;
        let mut tried = false;
        while at < end {
            let off = (at - addr) as usize;
            match self.area_at(at) {
                Some(a) => {
                    let upto = a.region.end().min(end);
                    let n = (upto - at) as usize;
                    if a.host == host && a.region.write(at, &bytes[off..off + n]).is_ok() {
                        self.placed += n as u64;
                        self.count_placed(at, upto);
                    } else {
                        out.push((off, off + n));
                    }
                    at = upto;
                    tried = false;
                }
                None => {
                    let (_, hi) = self.free_around(at);
                    let upto = hi.min(end);
                    if tried || !self.map(host, at, upto) {
                        out.push((off, (upto - addr) as usize));
                        at = upto;
                        tried = false;
                    } else {
                        tried = true;
                    }
                }
            }
        }
        out
    }

    /// Note pages `a..b` (in one area) placed; a 2 MiB chunk whose every page is there becomes
    /// one transparent huge page (`MADV_COLLAPSE`): the restored root's fork then copies one
    /// page-table entry for it instead of 512 (about 25 ms per GiB saved at each fork along
    /// the tree, and as much at each unmap), and its memory is not larger than the source's.
    /// The content, and the mapping's flags, are the same.
    fn count_placed(&mut self, a: u64, b: u64) {
        let mut p = a;
        while p < b {
            let base = p / CHUNK * CHUNK;
            let f = self.filling.entry(base).or_default();
            let upto = (base + CHUNK).min(b);
            while p < upto {
                let i = ((p - base) / PAGE) as usize;
                if f.bits[i / 64] & (1 << (i % 64)) == 0 {
                    f.bits[i / 64] |= 1 << (i % 64);
                    f.count += 1;
                }
                p += PAGE;
            }
            if f.count as u64 == CHUNK / PAGE {
                self.filling.remove(&base);
                if let Some(a) = self.area_at(base).filter(|a| a.region.holds(base, CHUNK)) {
                    if a.region.collapse(base, CHUNK).is_ok() {
                        self.collapsed += 1;
                    }
                }
            }
        }
    }

    /// Whether `addr` (one page) of `host` has a copy in place.
    pub fn holds(&self, host: u32, addr: u64) -> bool {
        self.area_at(addr).is_some_and(|a| a.host == host)
    }

    /// Copy the page at `addr` from its area.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
        let a = self.area_at(addr).context("no page in place there")?;
        a.region.read(addr, buf).with_context(|| format!("cannot read the page in place at {addr:#x}"))
    }

    pub fn write(&self, addr: u64, bytes: &[u8]) -> Result<()> {
        let a = self.area_at(addr).context("no page in place there")?;
        a.region.write(addr, bytes).with_context(|| format!("cannot write the page in place at {addr:#x}"))
    }

    /// After the freeze, for process `host` (image pid `pid`) whose final record has `vmas`
    /// and whose kept pages (the latest copies at the destination) are `kept` (sorted): hand
    /// over each private anonymous mapping that holds kept pages and lies entirely in this
    /// process's areas or in free space (mapped now), with its pages that are not kept dropped
    /// (the final image has them, or they are zero). `fetch` copies a kept page whose latest
    /// copy is not in place (the staging file) into place. Returns the kept ranges left for
    /// the image (mappings not handed over: special flags, collisions).
    pub fn hand_over(
        &mut self,
        host: u32,
        pid: i32,
        vmas: &[Vma],
        kept: &[(u64, u64)],
        fetch: &mut dyn FnMut(u64, &InPlace) -> Result<bool>,
    ) -> Result<Vec<(u64, u64)>> {
        if self.off {
            return Ok(kept.to_vec());
        }
        let mut left: Vec<(u64, u64)> = Vec::new();
        let mut taken: Vec<(u64, u64)> = Vec::new();
        for v in vmas {
            let mine: Vec<(u64, u64)> = kept
                .iter()
                .filter(|r| r.0 < v.end && r.1 > v.start)
                .map(|r| (r.0.max(v.start), r.1.min(v.end)))
                .collect();
            if mine.is_empty() || !eligible(v) || !self.cover(host, v.start, v.end) {
                continue;
            }
            // kept pages whose latest copy is in the staging file come into place
            for &(a, b) in &mine {
                let mut p = a;
                while p < b {
                    fetch(p, self)?;
                    p += PAGE;
                }
            }
            let region = self.carve(v.start, v.end).with_context(|| format!("pid {pid}: mapping {:#x}", v.start))?;
            let region = if v.vm_flags.iter().any(|f| f == "nr") {
                // MAP_NORESERVE (jemalloc's heaps): only a mapping made so has it, so the kept
                // pages move into one (their page-table entries, not their bytes)
                let (region, copied) = region
                    .renew_noreserve(&mine)
                    .with_context(|| format!("pid {pid}: cannot map {:#x} anew without reserve", v.start))?;
                self.copied += copied;
                region
            } else {
                let mut at = v.start;
                for &(a, b) in mine.iter().chain([(v.end, v.end)].iter()) {
                    if a > at {
                        region.zero(at, a - at).with_context(|| format!("pid {pid}: cannot drop pages at {at:#x}"))?;
                    }
                    at = at.max(b);
                }
                region
            };
            self.handed.push(Premapped { region, owner: pid });
            taken.push((v.start, v.end));
        }
        for &(a, b) in kept {
            // (the parts of each kept range outside the mappings handed over)
            let mut at = a;
            for &(s, e) in taken.iter().filter(|t| t.0 < b && t.1 > a) {
                if s > at {
                    left.push((at, s));
                }
                at = at.max(e);
            }
            if at < b {
                left.push((at, b));
            }
        }
        left.sort_unstable();
        Ok(left)
    }

    /// Whether `start..end` is made only of areas of `host`, mapping the free parts now.
    fn cover(&mut self, host: u32, start: u64, end: u64) -> bool {
        let mut at = start;
        while at < end {
            match self.area_at(at) {
                Some(a) if a.host == host => at = a.region.end(),
                Some(_) => return false,
                None => {
                    let (_, hi) = self.free_around(at);
                    let upto = hi.min(end);
                    if !self.map_area(host, at, upto) {
                        return false;
                    }
                    at = upto;
                }
            }
        }
        true
    }

    /// Take `start..end` (covered by areas) out of the areas, as one region.
    fn carve(&mut self, start: u64, end: u64) -> Result<RawRegion> {
        let first = self.area_at(start).map(|a| a.region.start()).context("not in place")?;
        let keys: Vec<u64> = self.areas.range(first..end).map(|(k, _)| *k).collect();
        let mut out: Option<RawRegion> = None;
        for k in keys {
            let Some(a) = self.areas.remove(&k) else { continue };
            let mut r = a.region;
            if r.start() < start {
                let (left, right) = r.split(start).map_err(|_| anyhow::anyhow!("cannot split at {start:#x}"))?;
                self.areas.insert(left.start(), Area { host: a.host, region: left });
                r = right;
            }
            if r.end() > end {
                let (left, right) = r.split(end).map_err(|_| anyhow::anyhow!("cannot split at {end:#x}"))?;
                self.areas.insert(right.start(), Area { host: a.host, region: right });
                r = left;
            }
            out = Some(match out {
                None => r,
                Some(o) => o.join(r).map_err(|_| anyhow::anyhow!("areas around {start:#x} do not touch"))?,
            });
        }
        let r = out.context("not in place")?;
        anyhow::ensure!((r.start(), r.end()) == (start, end), "areas do not cover {start:#x}-{end:#x}");
        Ok(r)
    }

    /// Unmap the areas not handed over (their pages went into the image): the restored tree
    /// must not inherit them.
    pub fn drop_rest(&mut self) {
        for (_, a) in std::mem::take(&mut self.areas) {
            let _ = a.region.unmap();
        }
    }

    /// The regions for the restore ([`ferry_engine::restore::restore_in_place`]).
    pub fn handed(&mut self) -> &mut Vec<Premapped> {
        &mut self.handed
    }

    /// Bytes handed over.
    pub fn handed_bytes(&self) -> u64 {
        self.handed.iter().map(|p| p.region.end() - p.region.start()).sum()
    }
}

/// Mappings that can be handed over: private anonymous, without flags a plain read+write
/// anonymous mapping would not have (growing down, droppable; no reserve is made anew, see
/// [`RawRegion::renew_noreserve`]), not marked MADV_NOHUGEPAGE (serve may have collapsed its
/// pages into huge ones), not SysV, not shared copy-on-write with a parent (its content is a
/// layer over the parent's).
fn eligible(v: &Vma) -> bool {
    let has = |f: &str| v.vm_flags.iter().any(|x| x == f);
    v.kind == VmaKind::Anon as i32 && !v.sysv && !v.cow && !has("gd") && !has("dp") && !has("nh")
}

impl Drop for InPlace {
    fn drop(&mut self) {
        self.drop_rest();
        for p in self.handed.drain(..) {
            let _ = p.region.unmap();
        }
    }
}
