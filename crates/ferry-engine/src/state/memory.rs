//! The address space: every mapping with its protection and backing, the pages that only
//! memory holds, the mm fields (brk, arg/env bounds, auxv, exe link) and the vDSO.
//!
//! Only pages the kernel reports present or swapped are considered (PAGEMAP_SCAN, one ioctl
//! per mapping instead of 8 bytes of pagemap per page), clean file pages and the shared zero
//! page are skipped by category, and pages that read back as all zeros are not stored either.
//! Restore maps everything at its old address with injected `mmap(MAP_FIXED)`, has the process
//! read its stored pages itself with injected `preadv` calls from the page file (one copy, out
//! of the page cache, none of it through ferry's memory), then applies the final protections.

mod pages_out;
mod scan;
pub mod sharing;

pub use pages_out::{dump_pages, set_page_compression, FrozenMemory, Held, PagesFrom};
pub(crate) use pages_out::{page_compression, CHUNK};
pub use scan::{collect_mm, scan};
pub(crate) use scan::{regions_to_store, resident, subtract};
pub use sharing::Sharing;

use crate::error::{Ctx, Error};
use crate::inject::{Batch, Injector};
use crate::procfs;
use ferry_image::{Mm, PageRun, Process, Vma, VmaKind, PAGE_SIZE};
use ferry_sys::consts::{nr, PR_SET_MM, PR_SET_MM_MAP};
use ferry_sys::pagebuf::PageBuf;
use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt};

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
/// the ones `scan` refuses are in [`scan::REFUSED_FLAGS`]; `um uw ui` see there. `sd` (soft-dirty) is not kept: every
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
