//! Where a stored page goes at restore. One answer for each kind of memory:
//!
//! - shared memory (MAP_SHARED anonymous, shared memfds): into the memfd that recreates the
//!   object, written by ferry before the tree is forked ([`copy_runs`], from `prepare`);
//! - private memory a parent shares copy-on-write with its children, and memory a restore
//!   receives in place (state/premapped.rs): premapped by the process itself while the tree is
//!   forked, layer by layer (its parent's content, then its own holes and runs: a [`Layer`],
//!   [`apply_here`]), before it forks its children (which of its mappings is state/cow.rs's
//!   answer);
//! - everything else: read by the process itself from its page file with injected `preadv`
//!   calls ([`fill`]): its own runs, and the layers of memory shared with a parent that could
//!   not be premapped;
//!
//! Both ways take a layer's pages from one place, [`Layer::places`]: the same pages dropped and
//! the same runs read, whether the process does it itself or the tracer makes it.
//! - lazy mappings of a post-copy migration: nothing here, each page is fetched from the source
//!   when it is touched (postcopy.rs).
//!
//! Every run is checked against its mapping and its page file first ([`run_in_bounds`]). A
//! compressed page file is decompressed into a memfd first, never beyond where its runs end.

use super::pages_out::CHUNK;
use crate::error::{Ctx, Error};
use crate::inject::Batch;
use ferry_image::{Mm, PageRange, PageRun, Vma, VmaKind, PAGE_SIZE};
use ferry_sys::consts::nr;
use ferry_sys::pagebuf::PageBuf;
use ferry_sys::raw::RawRegion;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// Where the last page run of `mm` ends in its page file: no page is read beyond it.
pub(super) fn runs_end(mm: &Mm) -> u64 {
    let ends = mm.vmas.iter().flat_map(|v| &v.runs);
    ends.map(|r| r.offset.saturating_add(r.nr_pages.saturating_mul(PAGE_SIZE))).max().unwrap_or(0)
}

/// The page file of `pid`, to read pages from at their offsets: the file itself, or for a
/// compressed one (`dump --compress`) a memfd it is decompressed into first, up to `need`
/// bytes (where its last page run ends).
pub(super) fn open_pages(img: &ferry_image::ImageReader, pid: i32, need: u64) -> Result<std::fs::File, Error> {
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

/// Shared memory: the runs of mapping `v` from page file `pages` into `f`, the memfd that holds
/// the object (at the mapping's offset in it), by ferry before the tree is forked, so that
/// every mapping of the object sees them from the start.
pub(super) fn copy_runs(pages: &File, f: &File, v: &Vma, obj: &dyn Fn() -> String) -> Result<(), Error> {
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
    Ok(())
}

/// Whether page run `r` lies inside mapping `v` and inside a page file of `file_len` bytes.
pub(crate) fn run_in_bounds(r: &PageRun, v: &Vma, file_len: u64) -> bool {
    let len = r.nr_pages.saturating_mul(PAGE_SIZE);
    r.offset.checked_add(len).is_some_and(|e| e <= file_len)
        && r.addr >= v.start
        && r.addr.checked_add(len).is_some_and(|e| e <= v.end)
}

/// Where the pages of one [`Layer`] go, in this order: `drop`, its holes (address, length:
/// they read as zeros again, or as the file's bytes in a private file mapping), then `read`,
/// its runs (address, length, offset in page file `fd`).
pub(crate) struct Places {
    pub drop: Vec<(u64, u64)>,
    pub read: Vec<(u64, u64, u64)>,
    pub fd: i32,
}

impl Layer<'_> {
    /// Where this layer's pages go, every hole and run checked against its mapping and every
    /// run against its page file (`pid` names the process in the error).
    pub(crate) fn places(&self, pid: i32) -> Result<Places, Error> {
        let v = self.vma;
        let bad =
            |what: String| Error::Invalid { object: format!("pid {pid}: mapping {:#x}-{:#x}", v.start, v.end), what };
        let inside = |addr: u64, len: u64| addr >= v.start && addr.checked_add(len).is_some_and(|e| e <= v.end);
        let mut drop = Vec::with_capacity(self.holes.len());
        for h in self.holes {
            let len = h.nr_pages.saturating_mul(PAGE_SIZE);
            if !inside(h.addr, len) {
                return Err(bad(format!("a hole at {:#x} is out of bounds", h.addr)));
            }
            drop.push((h.addr, len));
        }
        let (fd, file_len) = match (self.pages, v.runs.is_empty()) {
            (Some(p), _) => p,
            (None, true) => (-1, 0),
            (None, false) => return Err(bad("page runs but no page file".into())),
        };
        let mut read = Vec::with_capacity(v.runs.len());
        for r in &v.runs {
            if !run_in_bounds(r, v, file_len) {
                return Err(bad(format!("page run at {:#x} is out of bounds", r.addr)));
            }
            read.push((r.addr, r.nr_pages * PAGE_SIZE, r.offset));
        }
        Ok(Places { drop, read, fd })
    }
}

/// In the process itself (a restore child, still running ferry's code, before it forks): put
/// layer `l` into `region`, a mapping it made or inherited at the layer's addresses.
pub(crate) fn apply_here(region: &RawRegion, pid: i32, l: &Layer<'_>) -> Result<(), String> {
    let at = l.places(pid).map_err(|e| e.to_string())?;
    let obj = || format!("pid {pid}: mapping {:#x}-{:#x}", l.vma.start, l.vma.end);
    for &(addr, len) in &at.drop {
        region.zero(addr, len).map_err(|e| format!("{}: cannot drop a page: {e}", obj()))?;
    }
    for &(addr, len, off) in &at.read {
        region.read_from(at.fd, addr, len, off).map_err(|e| format!("{}: cannot read pages: {e}", obj()))?;
    }
    Ok(())
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

/// By the tracer, on batch `b`: the page contents of the process whose memory `mm` describes.
/// The process reads them itself from its page file (fd `pages_fd` in it, `pages_len` bytes)
/// with injected `preadv` calls, one copy from the page cache into its memory (like a plain
/// read()), and ferry never maps or buffers them. Runs that follow each other in the file share
/// a call. Shared memory is in its memfd already ([`copy_runs`]), what the process premapped
/// itself is left alone, and memory shared with the parent that could not be premapped is built
/// from its layers (`shared`).
pub(super) fn fill(
    b: &mut Batch<'_>,
    mm: &Mm,
    pages_fd: Option<i32>,
    pages_len: u64,
    shared: &Tracer<'_>,
) -> Result<(), Error> {
    let pid = b.pid();
    let pages = pages_fd.map(|fd| (fd, pages_len));
    // Its own runs, one layer per mapping, in one series of reads (the page file in order).
    let mut segs: Vec<(u64, u64, u64)> = Vec::new(); // (addr, len, file offset)
    for (i, v) in mm.vmas.iter().enumerate() {
        if v.kind == VmaKind::SharedAnon as i32 || shared.is_kept(v) || shared.chains.iter().any(|c| c.0 == i) {
            continue; // already in its memfd, premapped, or built from its layers below
        }
        segs.extend(Layer { pages, holes: &[], vma: v }.places(pid)?.read);
    }
    if let (false, Some(fd)) = (segs.is_empty(), pages_fd) {
        read_pages(b, fd, &segs)?;
    }
    // Memory shared with the parent that could not be premapped: the parent's content (and its
    // parent's ...), then this process's holes and pages.
    for (_, layers) in &shared.chains {
        for l in layers {
            let at = l.places(pid)?;
            for &(addr, len) in &at.drop {
                b.push(nr::MADVISE, &[addr, len, libc::MADV_DONTNEED as u64], 0, || {
                    format!("pid {pid}: cannot drop pages at {addr:#x}")
                })?;
            }
            if !at.read.is_empty() {
                read_pages(b, at.fd, &at.read)?;
            }
        }
    }
    Ok(())
}

/// One layer of a shared mapping's content: pages to drop, then pages to read from `pages`
/// (an fd number every process of the restored tree has, and the file's length).
pub struct Layer<'a> {
    pub pages: Option<(i32, u64)>,
    pub holes: &'a [PageRange],
    pub vma: &'a Vma,
}

/// A mapping a restore child holds already, made by itself (state/cow.rs) or received in place
/// (state/premapped.rs), with the image pid whose content it holds.
#[derive(Debug)]
pub struct Premapped {
    pub region: RawRegion,
    pub owner: i32,
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
    fn a_layer_places_its_holes_then_its_runs_each_checked() {
        let vma = |runs: Vec<PageRun>| Vma { start: 0x10000, end: 0x20000, runs, ..Default::default() };
        let run = |addr, nr_pages, offset| PageRun { addr, nr_pages, offset };
        let hole = |addr, nr_pages| PageRange { addr, nr_pages };
        let v = vma(vec![run(0x11000, 2, 0), run(0x1f000, 1, 8192)]);
        let holes = [hole(0x10000, 1)];
        let at = Layer { pages: Some((7, 3 * 4096)), holes: &holes, vma: &v }.places(1).expect("in bounds");
        assert_eq!(at.drop, [(0x10000, 4096)]);
        assert_eq!(at.read, [(0x11000, 8192, 0), (0x1f000, 4096, 8192)]);
        assert_eq!(at.fd, 7);
        // a run past the page file's end, a hole past the mapping's, runs without a page file
        let short = Layer { pages: Some((7, 2 * 4096)), holes: &[], vma: &v }.places(1);
        assert!(matches!(short, Err(Error::Invalid { .. })), "{:?}", short.err());
        let out = [hole(0x1f000, 2)];
        let past = Layer { pages: Some((7, 3 * 4096)), holes: &out, vma: &v }.places(1);
        assert!(matches!(past, Err(Error::Invalid { .. })), "{:?}", past.err());
        let none = Layer { pages: None, holes: &[], vma: &v }.places(1);
        assert!(matches!(none, Err(Error::Invalid { .. })), "{:?}", none.err());
        // holes alone need no page file
        let empty = vma(Vec::new());
        let only = Layer { pages: None, holes: &holes, vma: &empty }.places(1).expect("holes only");
        assert!(only.read.is_empty() && only.drop.len() == 1);
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
