//! Sanity of an image's records before anything is created from them.
//!
//! Checksums prove a record is what the dump wrote, not that it makes sense: a hand-edited
//! image, or one a migration peer built, can be well-formed and still name an fd table entry
//! that does not exist or mappings that overlap. Restore code indexes and maps from these
//! records, some of it in forked children; every index and range it trusts is checked here, so
//! a bad image is refused with one line naming the object, never a panic.

use crate::error::Error;
use ferry_image::{Process, VmaKind, PAGE_SIZE};
use std::collections::HashSet;

fn bad(pid: i32, what: String) -> Error {
    Error::Invalid { object: format!("pid {pid} in the image"), what }
}

fn aligned(a: u64) -> bool {
    a.is_multiple_of(PAGE_SIZE)
}

/// Check every process record (see the module doc).
pub fn processes(procs: &[Process]) -> Result<(), Error> {
    // An fd number at or above ferry's hard RLIMIT_NOFILE could not be given back anyway.
    let max_fd = crate::state::task::own_nofile_hard().unwrap_or(1 << 20).min(1 << 30) as i32;
    let mut ids = HashSet::new();
    for p in procs {
        let pid = p.pid;
        if pid <= 0 || !ids.insert(pid) {
            return Err(bad(pid, "a pid that is not positive or appears twice".into()));
        }
        if p.zombie {
            continue;
        }
        for t in p.threads.iter().skip(1) {
            if t.tid <= 0 || !ids.insert(t.tid) {
                return Err(bad(pid, format!("thread id {} is not positive or appears twice", t.tid)));
            }
        }
        if let Some(t) = p.threads.iter().find(|t| ![0, 512, 513, 514].contains(&t.restart)) {
            return Err(bad(pid, format!("thread {} has an unknown syscall restart code {}", t.tid, t.restart)));
        }
        let mut fds = HashSet::new();
        for f in &p.fds {
            if !(0..max_fd).contains(&f.fd) || !fds.insert(f.fd) {
                return Err(bad(
                    pid,
                    format!(
                        "fd {} is negative, at or above the open-file limit here ({max_fd}), or appears twice",
                        f.fd
                    ),
                ));
            }
            if f.file as usize >= p.files.len() {
                return Err(bad(pid, format!("fd {} refers to open file {}, which is not recorded", f.fd, f.file)));
            }
        }
        if let Some(c) = p.cgroups.iter().find(|c| !crate::state::cgroup::plain_path(&c.path)) {
            return Err(bad(pid, format!("cgroup path {:?} is not a plain path", c.path)));
        }
        let Some(mm) = &p.mm else { return Err(bad(pid, "no memory record".into())) };
        let mut prev_end = 0u64;
        for v in &mm.vmas {
            let obj = || format!("mapping {:#x}-{:#x}", v.start, v.end);
            // (The vsyscall page is the kernel's, above user space, and never mapped by restore.)
            let top = if v.kind == VmaKind::Vsyscall as i32 { u64::MAX } else { crate::state::memory::TASK_SIZE };
            if !aligned(v.start) || !aligned(v.end) || v.start >= v.end || v.end > top || v.start < prev_end {
                return Err(bad(pid, format!("{} is unaligned, empty, out of range or overlaps another", obj())));
            }
            prev_end = v.end;
            let inside = |addr: u64, pages: u64| {
                pages.checked_mul(PAGE_SIZE).and_then(|l| addr.checked_add(l)).is_some_and(|e| e <= v.end)
                    && addr >= v.start
                    && aligned(addr)
            };
            for r in &v.runs {
                if !inside(r.addr, r.nr_pages) || !aligned(r.offset) {
                    return Err(bad(pid, format!("{}: a page run at {:#x} lies outside it", obj(), r.addr)));
                }
            }
            for h in &v.cow_holes {
                if !inside(h.addr, h.nr_pages) {
                    return Err(bad(pid, format!("{}: a hole at {:#x} lies outside it", obj(), h.addr)));
                }
            }
            if v.cow && !procs.iter().any(|q| q.pid == p.ppid && !q.zombie && q.pid != pid) {
                return Err(bad(pid, format!("{} shares pages with a parent that is not in the image", obj())));
            }
        }
    }
    Ok(())
}
