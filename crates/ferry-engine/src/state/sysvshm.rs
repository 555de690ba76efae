//! SysV shared memory (`shmget`/`shmat`) attached by processes of the tree.
//!
//! A mapping `/SYSV%08x (deleted)` is an attachment; its inode number in /proc/PID/maps is the
//! shmid. Dump: each segment is recorded once (key, id, size, mode with SHM_DEST when IPC_RMID
//! was done, owner, from /proc/sysvipc/shm), with the first process of the tree attaching it,
//! and its content is copied once into `sysvshm-ID.img` (ferry attaches it read-only, copies,
//! detaches: a SysV shm file has no read()). A segment in huge pages (SHM_HUGETLB) records
//! their size (`huge_page_size`, from the file system of ferry's attachment: hugetlbfs).
//!
//! Restore: before the fork, ferry recreates each segment with the same id (the id is written
//! to /proc/sys/kernel/shm_next_id, then `shmget(key, size, IPC_CREAT|IPC_EXCL|mode)`), sets
//! its owner and mode and fills it (one in huge pages with SHM_HUGETLB and the same page size:
//! without enough of them free, the restore fails naming the segment and the pages it needs,
//! before any process is created). A keyed segment is not removed when its processes die: if
//! the very segment (same key, id and size) outlived the dump and no process is attached to it,
//! it is removed and recreated from the image (PostgreSQL's case: its postmaster keeps a keyed
//! segment); a key or id in use otherwise is an error that says what holds it. The tracer then
//! attaches the segment in every process with an injected `shmat` at its old address (read-only
//! when no mapping of it could write, SHM_EXEC when one executes), unmaps the parts the process
//! had detached and sets each mapping's protection. Once every process is attached, segments
//! that were marked IPC_RMID are marked again, so they go away with their last detach as before.
//! A restore that fails removes the segments it created.
//!
//! Not kept: the times and pids of the last attach/detach (shm_atime, shm_lpid...), creator
//! ids (cuid/cgid), SHM_LOCK.

use crate::error::{Ctx, Error};
use crate::inject::Injector;
use ferry_image::{ImageWriter, Process, SysvShm, Vma};
use ferry_sys::consts::nr;
use ferry_sys::objects::{shm_read, shm_rmid, shm_set_owner, shm_write, shmget};
use std::collections::{BTreeMap, HashSet};

const SHM_DEST: u32 = 0o1000;

/// Whether `m` is a SysV shared memory attachment: the kernel names the segment's file
/// `SYSV%08x` (its key), unlinked; not any mapped file whose name merely starts so.
pub fn is_attachment(m: &ferry_proc::MapEntry) -> bool {
    m.deleted
        && m.path
            .as_deref()
            .and_then(|p| p.strip_prefix("/SYSV"))
            .is_some_and(|k| k.len() == 8 && k.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether a process with maps `maps_text` has a SysV segment attached.
pub fn any_attached(pid: i32, maps_text: &str) -> Result<bool, Error> {
    Ok(crate::procfs::parse(pid, "maps", ferry_proc::parse_maps(maps_text))?.iter().any(is_attachment))
}

/// Mark `v` (a `/SYSV` mapping whose maps inode is `shmid`) as a SysV attachment.
pub fn scan(v: &mut Vma, shmid: u64) {
    v.sysv = true;
    v.sysv_shmid = shmid as i32;
}

/// One line of /proc/sysvipc/shm.
fn parse_table(text: &str) -> Vec<SysvShm> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 9 {
            continue;
        }
        let (Ok(key), Ok(shmid), Ok(mode), Ok(size), Ok(uid), Ok(gid)) = (
            f[0].parse::<i32>(),
            f[1].parse::<i32>(),
            u32::from_str_radix(f[2], 8),
            f[3].parse::<u64>(),
            f[7].parse::<u32>(),
            f[8].parse::<u32>(),
        ) else {
            continue;
        };
        out.push(SysvShm { key, shmid, size, mode, uid, gid, ..Default::default() });
    }
    out
}

/// Once every process is collected: record each attached segment once, with its content.
pub fn collect(procs: &mut [Process], img: &mut ImageWriter) -> Result<(), Error> {
    let mut done = HashSet::new();
    let mut table: Option<Vec<SysvShm>> = None;
    for p in procs.iter_mut() {
        let pid = p.pid;
        let Some(mm) = p.mm.as_ref() else { continue };
        let ids: Vec<(i32, u64)> = mm.vmas.iter().filter(|v| v.sysv).map(|v| (v.sysv_shmid, v.start)).collect();
        for (id, start) in ids {
            if !done.insert(id) {
                continue;
            }
            let obj = || format!("pid {pid}: SysV shared memory id {id} at {start:#x}");
            if table.is_none() {
                let text =
                    std::fs::read_to_string("/proc/sysvipc/shm").ctx(|| "cannot read /proc/sysvipc/shm".to_string())?;
                table = Some(parse_table(&text));
            }
            let mut seg = table.as_ref().and_then(|t| t.iter().find(|s| s.shmid == id).cloned()).ok_or_else(|| {
                Error::Unsupported {
                    pid,
                    what: format!("mapping {start:#x}: SysV shared memory id {id} is not in /proc/sysvipc/shm"),
                }
            })?;
            let mut content = vec![0u8; seg.size as usize];
            seg.huge_page_size = shm_read(id, &mut content).ctx(|| format!("{}: cannot read it", obj()))?;
            seg.data = format!("sysvshm-{id}.img");
            img.write_file(&seg.data, &content)?;
            p.sysv_shm.push(seg);
        }
    }
    Ok(())
}

/// The segments recreated for a restore; dropped without `finish`, it removes them again.
pub struct Created {
    segs: Vec<SysvShm>,
    done: bool,
    /// The ipc namespace they were made in (the tree's, which ferry's thread leaves after the
    /// fork): removals happen there.
    ns: Option<std::fs::File>,
}

impl Created {
    /// Run `f` in the namespace the segments were made in.
    fn in_their_ns(&self, f: impl FnOnce() -> Result<(), Error> + Send) -> Result<(), Error> {
        match &self.ns {
            Some(ns) => {
                use std::os::fd::AsFd;
                crate::state::nsfile::in_ns(ns.as_fd(), libc::CLONE_NEWIPC, f)
            }
            None => f(),
        }
    }
}

impl Drop for Created {
    fn drop(&mut self) {
        if !self.done && !self.segs.is_empty() {
            let segs = &self.segs;
            let _ = self.in_their_ns(|| {
                for s in segs {
                    let _ = shm_rmid(s.shmid);
                }
                Ok(())
            });
        }
    }
}

impl Created {
    /// Every process is attached: mark again the segments that were marked IPC_RMID.
    pub fn finish(mut self) -> Result<(), Error> {
        self.done = true;
        let segs = &self.segs;
        self.in_their_ns(|| {
            for s in segs {
                if s.mode & SHM_DEST != 0 {
                    shm_rmid(s.shmid).ctx(|| format!("SysV shared memory id {}: IPC_RMID", s.shmid))?;
                }
            }
            Ok(())
        })
    }
}

/// A segment as /proc/sysvipc/shm shows it now: (key, id, size, processes attached).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Live {
    key: i32,
    shmid: i32,
    size: u64,
    nattch: u64,
}

fn parse_live(text: &str) -> Vec<Live> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            Some(Live {
                key: f.first()?.parse().ok()?,
                shmid: f.get(1)?.parse().ok()?,
                size: f.get(3)?.parse().ok()?,
                nattch: f.get(6)?.parse().ok()?,
            })
        })
        .collect()
}

fn live_segments() -> Result<Vec<Live>, Error> {
    let text = std::fs::read_to_string("/proc/sysvipc/shm").ctx(|| "cannot read /proc/sysvipc/shm".to_string())?;
    Ok(parse_live(&text))
}

/// What to do about a segment of the image given the segments that exist now.
#[derive(Debug, PartialEq, Eq)]
enum Clash {
    /// Neither its key nor its id is in use.
    None,
    /// The segment itself outlived the dump (same key, id and size) and nobody is attached: it
    /// is removed and recreated from the image, which holds its content as the tree saw it.
    Stale,
    /// In use by someone else (or by a copy of the tree still running): the error says so.
    Taken(String),
}

fn clash(s: &SysvShm, live: &[Live]) -> Clash {
    let by_id = live.iter().find(|l| l.shmid == s.shmid);
    let by_key = if s.key == 0 { None } else { live.iter().find(|l| l.key == s.key) };
    match (by_id, by_key) {
        (None, None) => Clash::None,
        (Some(l), _) if l.key == s.key && l.size == s.size => {
            if l.nattch == 0 {
                Clash::Stale
            } else {
                Clash::Taken(format!(
                    "the segment (key {:#x}, id {}) still exists and {} process(es) are attached to it (is the dumped tree still running?); stop them, or remove it with `ipcrm -m {}` if it is not needed",
                    s.key, s.shmid, l.nattch, s.shmid
                ))
            }
        }
        (_, Some(l)) => Clash::Taken(format!(
            "the key {:#x} is taken by another segment (id {}, {} bytes, {} process(es) attached); remove it with `ipcrm -m {}` if it is a leftover",
            s.key, l.shmid, l.size, l.nattch, l.shmid
        )),
        (Some(l), None) => Clash::Taken(format!(
            "the id {} is taken by another segment (key {:#x}, {} bytes, {} process(es) attached); remove it with `ipcrm -m {}` if it is a leftover",
            s.shmid, l.key, l.size, l.nattch, l.shmid
        )),
    }
}

/// Before the fork: recreate every segment with its id, key, mode, owner and content. A segment
/// that outlived the dump unused (a keyed segment nobody removed: PostgreSQL's) is replaced by
/// the image's copy; one in use, or another segment on its key or id, fails the restore with
/// what to do.
pub fn prepare(procs: &[Process], img: &ferry_image::ImageReader) -> Result<Created, Error> {
    // (ferry's thread may be in the tree's own ipc namespace now: state/namespaces.rs)
    let ns = match (std::fs::read_link("/proc/thread-self/ns/ipc"), std::fs::read_link("/proc/self/ns/ipc")) {
        (Ok(a), Ok(b)) if a != b => Some(
            std::fs::File::open("/proc/thread-self/ns/ipc").ctx(|| "cannot open /proc/thread-self/ns/ipc".into())?,
        ),
        _ => None,
    };
    let mut created = Created { segs: Vec::new(), done: false, ns };
    let segs: Vec<&SysvShm> = procs.iter().flat_map(|p| p.sysv_shm.iter()).collect();
    let live = if segs.is_empty() { Vec::new() } else { live_segments()? };
    for s in segs {
        let obj = || format!("SysV shared memory id {} (key {:#x})", s.shmid, s.key);
        let content = img.read_file(&s.data)?;
        if content.len() as u64 != s.size {
            return Err(Error::Invalid { object: obj(), what: "content size differs from the segment size".into() });
        }
        match clash(s, &live) {
            Clash::None => {}
            Clash::Taken(what) => return Err(Error::Invalid { object: obj(), what }),
            Clash::Stale => {
                tracing::info!("{}: outlived the dump unused; recreated from the image", obj());
                match shm_rmid(s.shmid) {
                    Ok(()) => {}
                    // (gone meanwhile: nothing to remove)
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) || e.raw_os_error() == Some(libc::EIDRM) => {}
                    Err(e) => {
                        return Err(Error::Sys {
                            object: format!("{}: removing the segment left from the dump", obj()),
                            source: e,
                        })
                    }
                }
            }
        }
        std::fs::write("/proc/sys/kernel/shm_next_id", s.shmid.to_string())
            .ctx(|| format!("{}: cannot write /proc/sys/kernel/shm_next_id", obj()))?;
        let huge = ferry_sys::objects::shm_huge_flags(s.huge_page_size);
        let got = shmget(s.key, s.size, libc::IPC_CREAT | libc::IPC_EXCL | huge | (s.mode & 0o777) as i32);
        let _ = std::fs::write("/proc/sys/kernel/shm_next_id", "-1");
        let got = match got {
            Ok(id) => id,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                return Err(Error::Invalid { object: obj(), what: format!("the key {:#x} is taken", s.key) })
            }
            Err(e) if huge != 0 => return Err(no_huge_pages(&obj(), s, e)),
            Err(e) => return Err(Error::Sys { object: format!("{}: shmget", obj()), source: e }),
        };
        if got != s.shmid {
            let _ = shm_rmid(got);
            return Err(Error::Invalid { object: obj(), what: format!("the id {} is taken", s.shmid) });
        }
        created.segs.push(s.clone());
        shm_set_owner(got, s.uid, s.gid, s.mode).ctx(|| format!("{}: cannot set owner and mode", obj()))?;
        shm_write(got, &content).ctx(|| format!("{}: cannot fill it", obj()))?;
    }
    Ok(created)
}

/// The error of a segment of huge pages that cannot be made again: how many pages it needs, and
/// how many of that size the node has free (`/sys/kernel/mm/hugepages`).
pub(crate) fn no_huge_pages(obj: &str, s: &SysvShm, e: std::io::Error) -> Error {
    let kib = s.huge_page_size >> 10;
    let free = std::fs::read_to_string(format!("/sys/kernel/mm/hugepages/hugepages-{kib}kB/free_hugepages"))
        .map_or_else(|_| "none configured".to_string(), |t| format!("{} free", t.trim()));
    Error::Invalid {
        object: obj.to_string(),
        what: format!(
            "cannot make it again in huge pages of {kib} kB ({} needed, {free} on this node; vm.nr_hugepages reserves them): {e}",
            s.size.div_ceil(s.huge_page_size)
        ),
    }
}

/// By the tracer, in an address space emptied but for the vDSO: attach every segment the
/// process had at its old address, with its old protections.
pub fn attach(inj: &Injector, p: &Process, vmas: &[Vma]) -> Result<(), Error> {
    let pid = p.pid;
    // (shmid, attach address) -> the mappings of that attachment
    let mut groups: BTreeMap<(i32, u64), Vec<&Vma>> = BTreeMap::new();
    for v in vmas.iter().filter(|v| v.sysv) {
        groups.entry((v.sysv_shmid, v.start - v.offset)).or_default().push(v);
    }
    for ((id, base), maps) in groups {
        let obj = || format!("pid {pid}: SysV shared memory id {id} at {base:#x}");
        let may_write = maps.iter().any(|v| v.vm_flags.iter().any(|f| f == "mw"));
        let exec = maps.iter().any(|v| v.prot & libc::PROT_EXEC as u32 != 0);
        let mut flags = if may_write { 0 } else { libc::SHM_RDONLY };
        if exec {
            flags |= libc::SHM_EXEC;
        }
        let at =
            inj.call(libc::SYS_shmat as u64, &[id as u64, base, flags as u64]).ctx(|| format!("{}: shmat", obj()))?;
        if at != base {
            return Err(Error::Invalid { object: obj(), what: format!("shmat attached it at {at:#x}") });
        }
        // Where the attachment ends, from the process's maps (the segment is in the tree's ipc
        // namespace, which need not be ferry's).
        let maps_text = crate::procfs::read_string(inj.pid(), "maps")?;
        let now = crate::procfs::parse(inj.pid(), "maps", ferry_proc::parse_maps(&maps_text))?;
        let end =
            now.iter().find(|m| m.start == base && m.inode == id as u64).map(|m| m.end).ok_or_else(|| {
                Error::Invalid { object: obj(), what: "not in the process's maps after shmat".into() }
            })?;
        // Parts of the attachment the process had unmapped.
        let mut at = base;
        for v in &maps {
            if v.start > at {
                inj.call(nr::MUNMAP, &[at, v.start - at]).ctx(|| format!("{}: munmap", obj()))?;
            }
            at = v.end;
        }
        if end > at {
            inj.call(nr::MUNMAP, &[at, end - at]).ctx(|| format!("{}: munmap", obj()))?;
        }
        let attached = libc::PROT_READ as u32
            | if may_write { libc::PROT_WRITE as u32 } else { 0 }
            | if exec { libc::PROT_EXEC as u32 } else { 0 };
        for v in maps.iter().filter(|v| v.prot != attached) {
            inj.call(nr::MPROTECT, &[v.start, v.end - v.start, v.prot as u64])
                .ctx(|| format!("{}: mprotect {:#x}", obj(), v.start))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_segment_is_recreated_others_refused() {
        let seg = SysvShm { key: 0x1234, shmid: 7, size: 100, mode: 0o600, ..Default::default() };
        let live = |key, shmid, size, nattch| Live { key, shmid, size, nattch };
        assert_eq!(clash(&seg, &[]), Clash::None);
        assert_eq!(clash(&seg, &[live(0x99, 3, 100, 0)]), Clash::None);
        assert_eq!(clash(&seg, &[live(0x1234, 7, 100, 0)]), Clash::Stale);
        let taken = |l: Live| match clash(&seg, &[l]) {
            Clash::Taken(why) => why,
            other => panic!("{other:?}"),
        };
        assert!(taken(live(0x1234, 7, 100, 2)).contains("2 process(es) are attached"));
        assert!(taken(live(0x1234, 9, 100, 0)).contains("ipcrm -m 9"));
        assert!(taken(live(0x1234, 7, 200, 0)).contains("ipcrm -m 7"));
        assert!(taken(live(0x55, 7, 100, 0)).contains("the id 7 is taken"));
        let private = SysvShm { key: 0, ..seg.clone() };
        assert_eq!(clash(&private, &[live(0, 3, 100, 1)]), Clash::None);
        assert_eq!(
            parse_live("key shmid perms size cpid lpid nattch\n 4660 7 600 100 1 1 3 0 0 0 0\n"),
            vec![live(0x1234, 7, 100, 3)]
        );
    }

    #[test]
    fn attachment_is_the_kernel_name_only() {
        let attached = |line: &str| any_attached(1, &format!("{line}\n")).expect("maps line");
        assert!(attached("7f0000000000-7f0000001000 rw-s 00000000 00:01 32770      /SYSV00001234 (deleted)"));
        // A file whose name merely starts so, under the root or elsewhere: no segment.
        assert!(!attached("7f0000000000-7f0000001000 rw-s 00000000 08:01 1234       /SYSV00001234"));
        assert!(!attached("7f0000000000-7f0000001000 rw-s 00000000 08:01 1234       /SYSVnotes (deleted)"));
        assert!(!attached("7f0000000000-7f0000001000 rw-s 00000000 08:01 1234       /tmp/x/SYSV00001234 (deleted)"));
        assert!(!attached("7f0000000000-7f0000001000 rw-s 00000000 08:01 1234       /data/SYSV (deleted)"));
    }

    #[test]
    fn parses_sysvipc_shm() {
        let t = super::parse_table(
            "       key      shmid perms                  size  cpid  lpid nattch   uid   gid  cuid  cgid      atime      dtime      ctime                   rss                  swap\n      4660          0   640                 10000 28383 28383      1     0     0     0     0 1795748827          0 1795748827                     0                     0\n         0          1  1600                  5000 28383 28383      1     5     6     0     0 1795748827          0 1795748827                     0                     0\n",
        );
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].key, t[0].shmid, t[0].mode, t[0].size), (0x1234, 0, 0o640, 10000));
        assert_eq!((t[1].key, t[1].shmid, t[1].mode, t[1].uid, t[1].gid), (0, 1, 0o1600, 5, 6));
    }
}
