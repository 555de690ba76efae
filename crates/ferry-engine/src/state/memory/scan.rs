//! What a process's address space holds, read at dump time: its mappings (kind, protection,
//! backing, VmFlags), its mm fields, and which of their pages are resident and go into the
//! image (one `PAGEMAP_SCAN` ioctl per mapping, pages told apart by category).

use crate::error::{Ctx, Error};
use crate::inject::Injector;
use crate::procfs;
use ferry_image::{ImageWriter, Mm, Vma, VmaKind};
use ferry_proc::MapEntry;
use ferry_sys::consts::nr;
use ferry_sys::process::{page_is, pagemap_scan, vm_read, PageRegion};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

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

/// The smaps VmFlags of each mapping of `pid`, by end address: a stack (MAP_GROWSDOWN) that grew
/// down while ferry injected syscalls (their scratch memory lies below the stack pointer) keeps
/// its end. (smaps walks the page tables
/// to count what is resident: for a large process, as long as a fork.)
pub(crate) fn vm_flags(pid: i32) -> Result<HashMap<u64, Vec<String>>, Error> {
    let smaps_text = procfs::read_string(pid, "smaps")?;
    let smaps = procfs::parse(pid, "smaps", ferry_proc::parse_smaps(&smaps_text))?;
    Ok(smaps.into_iter().map(|s| (s.end, s.vm_flags)).collect())
}

/// What follows from a mapping's VmFlags once they are known: the refused ones, and whether a
/// shared file mapping may write its file.
pub(crate) fn check_flags(pid: i32, v: &mut Vma) -> Result<(), Error> {
    if let Some((_, what)) = REFUSED_FLAGS.iter().find(|(f, _)| v.vm_flags.iter().any(|x| x == f)) {
        return Err(Error::Unsupported { pid, what: format!("mapping {:#x}-{:#x}: {what}", v.start, v.end) });
    }
    if v.kind == VmaKind::FileShared as i32 {
        v.file_writable = v.prot & libc::PROT_WRITE as u32 != 0 || v.vm_flags.iter().any(|f| f == "mw");
    }
    Ok(())
}

/// Describe the mappings of `pid`, refusing the kinds ferry cannot restore yet. Also returns
/// the parsed maps (the injector looks for code sequences in them). Without `with_flags`, the
/// VmFlags are left empty, to be filled (and checked, [`check_flags`]) later: `dump -R` reads
/// them from the snapshot once the tree runs again (state/snapshot.rs).
pub fn scan(
    pid: i32,
    img: &mut ImageWriter,
    ghosts: &mut Vec<ferry_image::GhostFile>,
    with_flags: bool,
) -> Result<(Vec<Vma>, Vec<MapEntry>), Error> {
    use crate::state::files::ghost;
    let maps_text = procfs::read_string(pid, "maps")?;
    let maps = procfs::parse(pid, "maps", ferry_proc::parse_maps(&maps_text))?;
    let flags = if with_flags { vm_flags(pid)? } else { HashMap::new() };
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
            vm_flags: flags.get(&m.end).cloned().unwrap_or_default(),
            ..Default::default()
        };
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
            // (In huge pages too: the segment's record says so, state/sysvshm.rs.)
            Some(_) if crate::state::sysvshm::is_attachment(m) && m.perms.shared => {
                crate::state::sysvshm::scan(&mut v, m.inode);
                VmaKind::SharedAnon
            }
            Some(s) if crate::state::sysvshm::is_attachment(m) => {
                return Err(at(format!("SysV shared memory {s} mapped privately")))
            }
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
        check_flags(pid, &mut v)?;
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

/// The pages of private mapping `v` that go into the page file: present or swapped in
/// `pagemap` (that of pid `pid`, or of its snapshot), not the shared zero page, not a clean page
/// of the mapped file, nor in `exclude` (sorted: the pages the parent holds, see
/// [`super::sharing`]). (A pipeline that sends some pages another way leaves them out itself:
/// see [`super::PagesFrom::keep`].)
pub(crate) fn regions_to_store(
    pagemap: std::os::fd::BorrowedFd<'_>,
    pid: i32,
    v: &Vma,
    exclude: &[(u64, u64)],
) -> Result<Vec<PageRegion>, Error> {
    let kind = VmaKind::try_from(v.kind).unwrap_or(VmaKind::Invalid);
    // (PAGE_IS_FILE costs the kernel a look at each page's `struct page`, a cache miss per
    // page; the entries alone tell the rest. Only a private file mapping holds file pages.)
    let file = if kind == VmaKind::FilePrivate { page_is::FILE } else { 0 };
    let regions = resident(pagemap, pid, v.start, v.end, file | page_is::PFNZERO)?;
    let mut regions = subtract(regions, exclude); // pages the parent holds
    regions.retain(|r| {
        // (A clean page of a private file mapping: the file has it.)
        let clean_file =
            kind == VmaKind::FilePrivate && r.categories & page_is::FILE != 0 && r.categories & page_is::SWAPPED == 0;
        r.categories & page_is::PFNZERO == 0 && !clean_file
    });
    Ok(regions)
}

/// smaps VmFlags of state ferry cannot restore: a shadow stack, guard regions
/// (MADV_GUARD_INSTALL, which pagemap alone can locate), MAP_SYNC, arm64 MTE. (userfaultfd
/// registrations, `um uw ui`, live as long as their userfaultfd: one the process holds is refused
/// as an fd; the one pre-copy migration registers is ferry's own and is not kept.)
pub(crate) const REFUSED_FLAGS: [(&str, &str); 4] = [
    ("ss", "a shadow stack"),
    ("gu", "guard regions (MADV_GUARD_INSTALL)"),
    ("sf", "MAP_SYNC"),
    ("mt", "memory tagging (MTE)"),
];
