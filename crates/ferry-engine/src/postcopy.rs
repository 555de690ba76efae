//! Post-copy migration (CRIU's "lazy pages"): the tree resumes on the destination before its
//! private anonymous memory is there; each missing page is fetched from the source when a
//! thread touches it, while the rest streams in the background.
//!
//! Dump side: with [`set_lazy_dump`], the next dump marks each private anonymous readable
//! mapping `lazy` and leaves its pages out of the image, except the few pages the restore
//! itself makes the kernel touch (each thread's rseq area, which the kernel writes when the
//! rseq registration returns to user space) and the page under each thread's stack pointer
//! (touched at once anyway). What the frozen source still holds is then served by
//! [`LazySource`]: the pages asked for first, everything else in address order.
//!
//! Restore side: with [`accept_lazy`], the tracer creates a userfaultfd inside each restored
//! process right after its memory is rebuilt (an injected `userfaultfd(2)` while the process
//! still has ferry's credentials, taken with `pidfd_getfd`, closed in the target: its fd table
//! is unchanged) and registers the lazy mappings in MISSING mode only at the very end, just
//! before the tree is released, once no injected syscall can touch its memory any more (a
//! fault then would wait for a server that does not run yet). Kernel-mode faults (a `read()`
//! into a lazy buffer, rseq updates) are served too: the uffd is not `UFFD_USER_MODE_ONLY`.
//!
//! The mm-changing events are asked for (`EVENT_FORK`, `EVENT_REMAP`, `EVENT_REMOVE`,
//! `EVENT_UNMAP`) so that the server keeps, per restored mm, which of its addresses still
//! wait for which source page: a forked child gets the pages its parent had not received yet,
//! a moved range gets its pages at the new address, dropped or unmapped ranges get none.

use crate::error::{Ctx, Error};
use crate::inject::Injector;
use crate::procfs;
use ferry_image::{Mm, Process, VmaKind};
use ferry_sys::process::{page_is, vm_read, PageRegion};
use ferry_sys::uffd;
use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;

pub const PAGE: u64 = 4096;

/// Features asked of each uffd (see the module doc).
pub const FEATURES: u64 = uffd::UFFD_FEATURE_EVENT_FORK
    | uffd::UFFD_FEATURE_EVENT_REMAP
    | uffd::UFFD_FEATURE_EVENT_REMOVE
    | uffd::UFFD_FEATURE_EVENT_UNMAP;

// ---------------------------------------------------------------------------------------------
// Dump side

/// One process of a lazy dump.
struct Marked {
    host_pid: i32,
    image_pid: i32,
    /// The lazy mappings.
    ranges: Vec<(u64, u64)>,
    /// Pages of lazy mappings the image holds anyway (sorted page addresses).
    eager: Vec<u64>,
    /// Present pages of the lazy mappings, less the eager ones, at the freeze.
    todo: Vec<(u64, u64)>,
}

/// Set by [`set_lazy_dump`], filled by [`mark`] during the dump.
static LAZY: Mutex<Option<Vec<Marked>>> = Mutex::new(None);

fn lazy_state() -> std::sync::MutexGuard<'static, Option<Vec<Marked>>> {
    LAZY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether the next dump leaves private anonymous memory out (post-copy migration).
pub fn set_lazy_dump(on: bool) {
    *lazy_state() = if on { Some(Vec::new()) } else { None };
}

/// Whether dumps leave private anonymous memory out now.
pub fn lazy_dump() -> bool {
    lazy_state().is_some()
}

/// Whether this mapping's pages can be fetched later: private anonymous, readable, not locked
/// (restore's `mlock` would fault it all in before it is registered).
fn can_be_lazy(v: &ferry_image::Vma) -> bool {
    v.kind == VmaKind::Anon as i32
        && !v.sysv
        && v.prot & libc::PROT_READ as u32 != 0
        && !v.vm_flags.iter().any(|f| f == "lo")
}

/// During a lazy dump, before the pages of `p` (frozen, host pid `host`) are written: mark its
/// lazy mappings and note what the background stream will have to send.
pub fn mark(host: i32, p: &Process, mm: &mut Mm) -> Result<(), Error> {
    let mut state = lazy_state();
    let Some(list) = state.as_mut() else { return Ok(()) };
    let mut eager: Vec<u64> = Vec::new();
    for t in &p.threads {
        if let Some(r) = &t.rseq {
            let mut a = r.addr & !(PAGE - 1);
            while a < r.addr + r.len.max(1) as u64 {
                eager.push(a);
                a += PAGE;
            }
        }
        if let Some(regs) = &t.regs {
            eager.push(regs.rsp & !(PAGE - 1));
            eager.push(regs.rsp.saturating_sub(128) & !(PAGE - 1));
        }
    }
    eager.sort_unstable();
    eager.dedup();
    let pagemap = procfs::open(host, "pagemap")?;
    let mut ranges = Vec::new();
    let mut todo: Vec<(u64, u64)> = Vec::new();
    for v in mm.vmas.iter_mut().filter(|v| can_be_lazy(v)) {
        v.lazy = true;
        ranges.push((v.start, v.end));
        let regions = crate::state::memory::resident(pagemap.as_fd(), host, v.start, v.end, page_is::PFNZERO)?;
        for r in regions.iter().filter(|r| r.categories & page_is::PFNZERO == 0) {
            let mut cur = r.start;
            for &e in eager.iter().filter(|&&e| e >= r.start && e < r.end) {
                if e > cur {
                    todo.push((cur, e));
                }
                cur = e + PAGE;
            }
            if cur < r.end {
                todo.push((cur, r.end));
            }
        }
    }
    list.push(Marked { host_pid: host, image_pid: p.pid, ranges, eager, todo });
    Ok(())
}

/// During a lazy dump, in `dump_pages`: the regions of mapping `v` of host pid `pid` to store.
/// For a lazy mapping, only its eager pages.
pub fn eager_only(pid: i32, v: &ferry_image::Vma, regions: Vec<PageRegion>) -> Vec<PageRegion> {
    if !v.lazy {
        return regions;
    }
    let state = lazy_state();
    let Some(m) = state.as_ref().and_then(|l| l.iter().find(|m| m.host_pid == pid)) else { return Vec::new() };
    let mut out = Vec::new();
    for r in regions {
        for &e in m.eager.iter().filter(|&&e| e >= r.start && e < r.end) {
            out.push(PageRegion { start: e, end: e + PAGE, categories: r.categories });
        }
    }
    out
}

/// One process whose lazy pages the source serves.
struct Served {
    host_pid: i32,
    image_pid: i32,
    ranges: Vec<(u64, u64)>,
    todo: Vec<(u64, u64)>,
    /// Pages sent (or known zero and said so), and the eager pages.
    sent: HashSet<u64>,
}

/// What the source sends: (image pid, address, page bytes), or zero pages (image pid,
/// address, length).
pub enum Piece<'a> {
    Data(i32, u64, &'a [u8]),
    Zero(i32, u64, u64),
}

/// The source's store of lazy pages: its frozen tree, read with `process_vm_readv`.
pub struct LazySource {
    procs: Vec<Served>,
    /// Background cursor: process, region, next address.
    cursor: (usize, usize, u64),
    buf: Vec<u8>,
    pub bytes_sent: u64,
}

/// Pages sent per background piece, and around a faulting page.
pub const BACKGROUND_PAGES: u64 = 64;
pub const WINDOW_PAGES: u64 = 16;

impl LazySource {
    /// After a lazy dump (tree still frozen): what it marked. Ends the lazy dump mode.
    pub fn take() -> LazySource {
        let marked = lazy_state().take().unwrap_or_default();
        let procs = marked
            .into_iter()
            .map(|m| Served {
                host_pid: m.host_pid,
                image_pid: m.image_pid,
                ranges: m.ranges,
                todo: m.todo,
                sent: m.eager.into_iter().collect(),
            })
            .collect();
        LazySource { procs, cursor: (0, 0, 0), buf: vec![0u8; (BACKGROUND_PAGES * PAGE) as usize], bytes_sent: 0 }
    }

    /// From now on the frozen tree dies with ferry (`PTRACE_O_EXITKILL` on every thread): once
    /// the destination runs its copy, a source killed mid-way must not let this one run on.
    pub fn exit_kill(&self) -> Result<(), Error> {
        use ferry_sys::consts::{PTRACE_O_EXITKILL, PTRACE_O_TRACESYSGOOD};
        for p in &self.procs {
            let pid = p.host_pid;
            let tids = std::fs::read_dir(procfs::path(pid, "task"))
                .ctx(|| format!("pid {pid}: cannot list its threads"))?
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok());
            for tid in tids {
                ferry_sys::ptrace::set_options(tid, PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL)
                    .ctx(|| format!("pid {pid} thread {tid}: cannot set PTRACE_O_EXITKILL"))?;
            }
        }
        Ok(())
    }

    /// Bytes of lazy pages the tree has (present at the freeze, not in the image).
    pub fn lazy_bytes(&self) -> u64 {
        self.procs.iter().flat_map(|p| p.todo.iter()).map(|r| r.1 - r.0).sum()
    }

    /// Read `len` bytes at `addr` of a process into the buffer and hand them out, the zero
    /// pages apart.
    fn emit(
        &mut self,
        i: usize,
        addr: u64,
        len: u64,
        out: &mut dyn FnMut(Piece<'_>) -> std::io::Result<()>,
    ) -> Result<(), Error> {
        let (host, image) = (self.procs[i].host_pid, self.procs[i].image_pid);
        let buf = &mut self.buf[..len as usize];
        let got = vm_read(host, addr, buf).ctx(|| format!("pid {host}: cannot read its memory at {addr:#x}"))?;
        if got as u64 != len {
            return Err(Error::Invalid { object: format!("pid {host}"), what: format!("short read at {addr:#x}") });
        }
        let sent = &mut self.procs[i].sent;
        for (s, e, zero) in crate::state::memory::zero_runs(buf) {
            let (at, end) = (s as u64, e as u64);
            let piece =
                if zero { Piece::Zero(image, addr + at, end - at) } else { Piece::Data(image, addr + at, &buf[s..e]) };
            out(piece).ctx(|| "post-copy: cannot send pages".into())?;
            if !zero {
                self.bytes_sent += end - at;
            }
            let mut a = addr + at;
            while a < addr + end {
                sent.insert(a);
                a += PAGE;
            }
        }
        Ok(())
    }

    /// The destination faulted on `addr` of process `image_pid`: send that page and the next
    /// ones not sent yet (up to [`WINDOW_PAGES`]) at once. Nothing if it was sent already (it
    /// is on its way). An address outside the lazy mappings is a protocol error.
    pub fn want(
        &mut self,
        image_pid: i32,
        addr: u64,
        out: &mut dyn FnMut(Piece<'_>) -> std::io::Result<()>,
    ) -> Result<(), Error> {
        let bad = |what: String| Error::Invalid { object: format!("post-copy request for pid {image_pid}"), what };
        let i =
            self.procs.iter().position(|p| p.image_pid == image_pid).ok_or_else(|| bad("no such process".into()))?;
        let addr = addr & !(PAGE - 1);
        let p = &self.procs[i];
        let Some(&(_, end)) = p.ranges.iter().find(|r| r.0 <= addr && addr < r.1) else {
            return Err(bad(format!("{addr:#x} is not in a lazy mapping")));
        };
        if p.sent.contains(&addr) {
            return Ok(());
        }
        let mut len = PAGE;
        while len < WINDOW_PAGES * PAGE && addr + len < end && !p.sent.contains(&(addr + len)) {
            len += PAGE;
        }
        self.emit(i, addr, len, out)
    }

    /// The next background piece (at most [`BACKGROUND_PAGES`] pages not sent yet). Returns
    /// false once every page is sent.
    pub fn background(&mut self, out: &mut dyn FnMut(Piece<'_>) -> std::io::Result<()>) -> Result<bool, Error> {
        loop {
            let (pi, ri, at) = self.cursor;
            let Some(p) = self.procs.get(pi) else { return Ok(false) };
            let Some(&(start, end)) = p.todo.get(ri) else {
                self.cursor = (pi + 1, 0, 0);
                continue;
            };
            let mut a = at.max(start);
            while a < end && p.sent.contains(&a) {
                a += PAGE;
            }
            if a >= end {
                self.cursor = (pi, ri + 1, 0);
                continue;
            }
            let mut len = PAGE;
            while len < BACKGROUND_PAGES * PAGE && a + len < end && !p.sent.contains(&(a + len)) {
                len += PAGE;
            }
            self.cursor = (pi, ri, a + len);
            self.emit(pi, a, len, out)?;
            return Ok(true);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Restore side

/// A restored process whose lazy mappings are registered with a userfaultfd (ferry's copy).
pub struct LazyMm {
    pub image_pid: i32,
    pub host_pid: i32,
    pub uffd: OwnedFd,
    /// The lazy mappings (registered once [`register_all`] returns).
    pub ranges: Vec<(u64, u64)>,
    /// The pages the image held in them (there already, never asked for).
    eager: Vec<(u64, u64)>,
}

thread_local! {
    static ACCEPT: Cell<bool> = const { Cell::new(false) };
    static PENDING: RefCell<Vec<LazyMm>> = const { RefCell::new(Vec::new()) };
}

/// Whether restores on this thread may restore lazy mappings (`ferry serve` in post-copy);
/// anything else refuses an image that has some. Also forgets uffds of a failed restore.
pub fn accept_lazy(on: bool) {
    ACCEPT.with(|a| a.set(on));
    PENDING.with(|p| p.borrow_mut().clear());
}

/// By the tracer, right after the memory of `p` (host pid `inj.pid()`) is rebuilt: create its
/// userfaultfd. Nothing for a process without lazy mappings.
pub fn create_uffd(inj: &Injector, p: &Process) -> Result<(), Error> {
    let Some(mm) = p.mm.as_ref() else { return Ok(()) };
    if !mm.vmas.iter().any(|v| v.lazy) {
        return Ok(());
    }
    let pid = inj.pid();
    if !ACCEPT.with(|a| a.get()) {
        return Err(Error::Unsupported {
            pid: p.pid,
            what: "an image with lazy memory (a post-copy migration stream) outside `ferry serve`".into(),
        });
    }
    if let Some(v) = mm.vmas.iter().find(|v| v.lazy && !can_be_lazy(v)) {
        return Err(Error::Invalid {
            object: format!("pid {}", p.pid),
            what: format!("mapping {:#x}-{:#x} is marked lazy but is not private anonymous memory", v.start, v.end),
        });
    }
    let pidfd = ferry_sys::process::pidfd_open(pid).ctx(|| format!("pid {pid}: pidfd_open"))?;
    let fd = inj
        .call(uffd::NR_USERFAULTFD, &[(libc::O_CLOEXEC | libc::O_NONBLOCK) as u64])
        .ctx(|| format!("pid {pid}: injected userfaultfd()"))?;
    let ours = ferry_sys::process::pidfd_getfd(pidfd.as_fd(), fd as i32);
    let closed = inj.call(ferry_sys::consts::nr::CLOSE, &[fd]);
    let ufd = ours.ctx(|| format!("pid {pid}: pidfd_getfd of its userfaultfd"))?;
    closed.ctx(|| format!("pid {pid}: injected close()"))?;
    uffd::api(ufd.as_fd(), FEATURES).ctx(|| format!("pid {pid}: UFFDIO_API (missing pages and mm events)"))?;
    let mut vmas = Vec::new();
    let mut eager = Vec::new();
    for v in mm.vmas.iter().filter(|v| v.lazy) {
        vmas.push((v.start, v.end));
        eager.extend(v.runs.iter().map(|r| (r.addr, r.addr + r.nr_pages * PAGE)));
    }
    PENDING.with(|l| l.borrow_mut().push(LazyMm { image_pid: p.pid, host_pid: pid, uffd: ufd, ranges: vmas, eager }));
    Ok(())
}

/// By the tracer, after every injected syscall, before the tree is released: check that the
/// restore left the lazy pages missing, and register the lazy mappings (MISSING mode).
pub fn register_all() -> Result<(), Error> {
    PENDING.with(|l| {
        for m in l.borrow().iter() {
            let pid = m.host_pid;
            let pagemap = procfs::open(pid, "pagemap")?;
            for &(start, end) in &m.ranges {
                let present = crate::state::memory::resident(pagemap.as_fd(), pid, start, end, 0)?;
                for r in present {
                    let mut a = r.start;
                    while a < r.end {
                        if !m.eager.iter().any(|e| e.0 <= a && a < e.1) {
                            return Err(Error::Invalid {
                                object: format!("pid {pid}"),
                                what: format!(
                                    "lazy page {a:#x} was populated during the restore (post-copy cannot fill it)"
                                ),
                            });
                        }
                        a += PAGE;
                    }
                }
                uffd::register(m.uffd.as_fd(), start, end - start, uffd::UFFDIO_REGISTER_MODE_MISSING)
                    .ctx(|| format!("pid {pid}: UFFDIO_REGISTER (missing) of {start:#x}-{end:#x}"))?;
            }
        }
        Ok(())
    })
}

/// After a successful restore: the registered processes, for the page server.
pub fn take_registered() -> Vec<LazyMm> {
    PENDING.with(|l| std::mem::take(&mut *l.borrow_mut()))
}
