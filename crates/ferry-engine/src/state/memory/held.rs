//! What `dump -R` takes of a process's memory while the tree is frozen, when the rest is read
//! once it runs again (from its copy-on-write snapshot, state/snapshot.rs, or from the pages
//! copied ahead, state/tracked.rs): shared anonymous memory (which no snapshot keeps as it
//! was), and copies of the pages neither holds.

use super::pages_out::Held;
use crate::error::{Ctx, Error};
use crate::procfs;
use ferry_image::Vma;
use ferry_sys::process::PageRegion;
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;

/// The mappings' holdings of one process, by mapping start, and the copies they point at.
#[derive(Default)]
pub struct Holds {
    held: HashMap<u64, Held>,
    copies: Vec<Vec<u8>>,
}

impl Holds {
    /// The shared anonymous mapping `v` of `pid`: each range of a shared object once per dump
    /// (`shared_seen`), copied whole while `budget` lasts, else opened to be read at the end of
    /// the dump (`content_at_end`).
    pub fn shared(
        &mut self,
        pid: i32,
        v: &mut Vma,
        shared_seen: &mut HashSet<(u64, u64, u64)>,
        budget: &mut u64,
    ) -> Result<(), Error> {
        let len = v.end - v.start;
        if !shared_seen.insert((v.shmem_id, v.offset, len)) {
            return Ok(());
        }
        let mf = procfs::path(pid, &format!("map_files/{:x}-{:x}", v.start, v.end));
        let obj = std::fs::File::open(&mf).ctx(|| format!("pid {pid}: cannot open shared memory at {:#x}", v.start))?;
        if len > *budget {
            v.content_at_end = true;
            self.held.insert(v.start, Held::Object(obj));
            return Ok(());
        }
        *budget -= len;
        let mut buf = vec![0u8; len as usize];
        obj.read_exact_at(&mut buf, v.offset)
            .ctx(|| format!("pid {pid}: cannot read shared memory at {:#x}", v.start))?;
        self.copies.push(buf);
        self.held.insert(v.start, Held::Copied(vec![(v.start, self.copies.len() - 1)]));
        Ok(())
    }

    /// Copies of `regions` of the mapping at `start`, read through `pid`'s /proc/PID/mem `mem`.
    /// Returns the bytes copied.
    pub fn copy_regions(
        &mut self,
        mem: &std::fs::File,
        pid: i32,
        start: u64,
        regions: Vec<PageRegion>,
    ) -> Result<u64, Error> {
        let mut parts = Vec::new();
        let mut bytes = 0;
        for r in regions {
            let mut buf = vec![0u8; (r.end - r.start) as usize];
            mem.read_exact_at(&mut buf, r.start).ctx(|| format!("pid {pid}: cannot read memory at {:#x}", r.start))?;
            bytes += buf.len() as u64;
            self.copies.push(buf);
            parts.push((r.start, self.copies.len() - 1));
        }
        self.held.insert(start, Held::Copied(parts));
        Ok(bytes)
    }

    /// What was taken of the mapping at `start` while frozen, if anything.
    pub fn held(&self, start: u64) -> Option<&Held> {
        self.held.get(&start)
    }

    /// Copy `i` taken while frozen.
    pub fn copy(&self, i: usize) -> &[u8] {
        self.copies.get(i).map_or(&[][..], |c| &c[..])
    }
}
