//! The address space rebuilt at restore: the files its mappings need, opened in ferry before
//! the fork; the trampoline ferry runs its calls from; then, by the tracer, every mapping at
//! its old address, its pages (pages_in.rs), its final protections and flags, and the mm
//! fields.

use super::pages_in::{copy_runs, fill, open_pages, runs_end, Tracer};
use crate::error::{Ctx, Error};
use crate::inject::{Batch, Injector};
use crate::procfs;
use ferry_image::{Mm, Process, Vma, VmaKind, PAGE_SIZE};
use ferry_sys::consts::{nr, PR_SET_MM, PR_SET_MM_MAP};
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
                    // The kernel's own kind of object ("/dev/zero (deleted)" in maps); a memfd
                    // where map_files cannot be opened.
                    ferry_sys::process::shared_anon_file(ferry_sys::process::page_size() as usize)
                        .or_else(|_| ferry_sys::process::memfd(&name))
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
                copy_runs(pages, f, v, &obj)?;
            }
            // Mapped through a read-only description (a memfd reopened O_RDONLY): the kernel
            // left out VM_SHARED and VM_MAYWRITE (`sh`, `mw`), so mprotect(PROT_WRITE) failed.
            // The same again: mapped from a read-only reopening of ferry's memfd. (`sh` without
            // `mw` is a write-sealed memfd's, which its seals give back.)
            let n = if !v.vm_flags.is_empty() && !v.vm_flags.iter().any(|f| f == "mw" || f == "sh") {
                let ro = std::fs::File::open(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(f)))
                    .ctx(|| format!("{}: cannot reopen the memfd read-only", obj()))?;
                let ro = ferry_sys::raw::dup_above(ro.as_fd(), base).ctx(obj)?;
                let num = std::os::fd::AsRawFd::as_raw_fd(&ro);
                out.owned.push(ro);
                num
            } else {
                n
            };
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
    shared: &Tracer<'_>,
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
    // 4. Page contents: the process reads them itself from its page file (pages_in.rs).
    fill(&mut b, mm, prep.pages_fd, prep.pages_len, shared)?;
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
/// the ones `scan` refuses are in [`super::scan::REFUSED_FLAGS`]; `um uw ui` see there. `sd` (soft-dirty) is not kept: every
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
