//! `dump -R` of a small tree: the image is built in memory while the tree is frozen and only
//! written to its directory once the tree runs again.
//!
//! With `-R` the tree may run again as soon as everything is captured; creating, writing,
//! syncing and renaming the image's files on a file system (new pages of a tmpfs, a disk's
//! fsync) need not happen while it is stopped. For a process of a few MiB that was about half
//! of its freeze. Only for small trees (ferry's memory must stay bounded): the resident sets
//! of the tree's processes must add up to at most [`ESTIMATE_LIMIT`], and the in-memory image
//! may not grow past [`HARD_LIMIT`] — if it does (the tree grew meanwhile), that dump is
//! abandoned, which leaves the tree as it was, and it is dumped again the ordinary way.

use crate::dump::{dump_with, DumpOptions, DumpReport};
use crate::error::Error;
use ferry_image::{ImageSink, ImageWriter, Inventory, RecordKind};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Trees whose resident memory adds up to more than this are dumped straight to disk.
pub const ESTIMATE_LIMIT: u64 = 16 << 20;
/// The in-memory image never holds more than this.
pub const HARD_LIMIT: u64 = 48 << 20;

#[derive(Default)]
struct MemSink {
    files: Vec<(u32, String, Vec<u8>)>,
    inventory: Option<Vec<u8>>,
    bytes: u64,
    overflow: bool,
}

impl ImageSink for MemSink {
    fn begin(&mut self, id: u32, name: &str) -> io::Result<()> {
        self.files.push((id, name.to_string(), Vec::new()));
        Ok(())
    }

    fn data(&mut self, id: u32, bytes: &[u8]) -> io::Result<()> {
        self.bytes += bytes.len() as u64;
        if self.bytes > HARD_LIMIT {
            self.overflow = true;
            return Err(io::Error::other(format!("in-memory image over {} MiB", HARD_LIMIT >> 20)));
        }
        match self.files.iter_mut().rev().find(|f| f.0 == id) {
            Some(f) => f.2.extend_from_slice(bytes),
            None => return Err(io::Error::other("data for a file that was not begun")),
        }
        Ok(())
    }

    fn end(&mut self, id: u32, size: u64, _crc32: u32) -> io::Result<()> {
        match self.files.iter().rev().find(|f| f.0 == id) {
            Some(f) if f.2.len() as u64 == size => Ok(()),
            _ => Err(io::Error::other("file size mismatch in the in-memory image")),
        }
    }

    fn commit(&mut self, inventory: &[u8]) -> io::Result<()> {
        self.inventory = Some(inventory.to_vec());
        Ok(())
    }
}

/// Resident bytes of `root` and its descendants, from `/proc/PID/statm` (an over-estimate of
/// what the image stores: clean file pages count too). `None` if any could not be read.
fn tree_resident(root: i32) -> Option<u64> {
    let page = 4096u64;
    let mut total = 0u64;
    let mut queue = vec![root];
    while let Some(pid) = queue.pop() {
        let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
        total += statm.split_whitespace().nth(1)?.parse::<u64>().ok()? * page;
        queue.extend(crate::dump::children_of(pid).ok()?);
    }
    Some(total)
}

/// Whether [`dump`] would take the in-memory way for this dump.
pub fn applies(opts: &DumpOptions) -> bool {
    opts.leave_running && tree_resident(opts.pid).is_some_and(|r| r <= ESTIMATE_LIMIT)
}

/// Dump with the image in memory while frozen, then write it to `opts.dir`. `Ok(None)`: the
/// image outgrew [`HARD_LIMIT`] and nothing was written (the tree was left as it was).
pub fn dump(opts: &DumpOptions) -> Result<Option<DumpReport>, Error> {
    // Prepare the directory first (and invalidate an older image there), as the ordinary way does.
    drop(ImageWriter::create(&opts.dir)?);
    let sink = Arc::new(Mutex::new(MemSink::default()));
    let shared: Arc<Mutex<dyn ImageSink>> = sink.clone();
    let result = dump_with(opts, || Ok(ImageWriter::to_sink(shared)), |_| Ok(()));
    let mut mem = std::mem::take(&mut *sink.lock().unwrap_or_else(|p| p.into_inner()));
    let mut report = match result {
        Ok(r) => r,
        Err(_) if mem.overflow => return Ok(None),
        Err(e) => return Err(e),
    };
    let t = Instant::now();
    let inventory = mem
        .inventory
        .take()
        .ok_or_else(|| Error::Invalid { object: opts.dir.display().to_string(), what: "no inventory".into() })?;
    let inventory: Inventory = ferry_image::decode_record("inventory", RecordKind::Inventory, &inventory)?;
    let mut img = ImageWriter::create(&opts.dir)?;
    for (_, name, bytes) in &mem.files {
        img.write_file(name, bytes)?;
    }
    img.commit(inventory)?;
    report.total += t.elapsed();
    tracing::info!(
        bytes = mem.bytes,
        "image built in memory while frozen, written after the tree ran again in {:.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );
    Ok(Some(report))
}
