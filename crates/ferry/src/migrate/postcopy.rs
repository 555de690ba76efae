//! Post-copy: after RESTORED, the source serves the lazy pages of its frozen tree and the
//! destination fills them into the running tree with userfaultfd (ferry-engine's `postcopy`
//! module holds the memory side; this one, the two loops on the connection).
//!
//! Source: answers each LAZY_WANT at once (the page and up to 15 following ones not sent
//! yet), and between requests streams every other page in address order (LAZY_PAGES, or
//! LAZY_ZERO for pages that are present but zero); then LAZY_DONE, and it waits for
//! LAZY_COMPLETE before it kills its copy.
//!
//! Destination: one thread polls the connection and every uffd. A fault becomes a LAZY_WANT
//! (once per source page); each page that arrives is copied (UFFDIO_COPY) into every restored
//! mm that still waits for it at some address (a forked child, a moved range); EEXIST means
//! the process has the page already. At LAZY_DONE it closes its uffds (the kernel unregisters
//! the ranges: what is still missing there was never in the source's memory, and reads as
//! zero) and answers LAZY_COMPLETE.
//!
//! A broken connection is fatal by nature: the memory is split between two nodes. The
//! destination kills its tree, the source kills its frozen copy (the destination copy has run
//! and may have acted on the world: resuming the source's could do things twice).

use super::channel::Secure;
use super::{kind, recv, send, send_now, text, Fields, MAX_MSG};
use anyhow::{bail, Context, Result};
use ferry_engine::postcopy::{LazyMm, LazySource, Piece, PAGE};
use ferry_sys::uffd::{self, Event};
use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

fn send_piece(sec: &mut Secure, p: Piece<'_>) -> io::Result<()> {
    match p {
        Piece::Data(pid, addr, bytes) => {
            let mut head = [0u8; 17];
            head[0] = kind::LAZY_PAGES;
            head[1..5].copy_from_slice(&((bytes.len() + 12) as u32).to_le_bytes());
            head[5..9].copy_from_slice(&(pid as u32).to_le_bytes());
            head[9..].copy_from_slice(&addr.to_le_bytes());
            sec.write(&head)?;
            sec.write(bytes)
        }
        Piece::Zero(pid, addr, len) => {
            let mut p = (pid as u32).to_le_bytes().to_vec();
            p.extend_from_slice(&addr.to_le_bytes());
            p.extend_from_slice(&len.to_le_bytes());
            send(sec, kind::LAZY_ZERO, &p)
        }
    }
}

fn readable(sec: &Secure, timeout_ms: i32) -> Result<bool> {
    if sec.has_buffered() {
        return Ok(true);
    }
    let fd = sec.socket().as_fd();
    Ok(ferry_sys::process::poll_readable(&[fd], timeout_ms).context("poll")?[0])
}

/// Keep the socket's queue in that direction short: the answer to a fault queues behind the
/// background pages already in it (the kernel doubles the value set).
fn shallow_queue(sec: &Secure, opt: i32) {
    let _ = ferry_sys::sockopt::set_int(sec.socket().as_fd(), libc::SOL_SOCKET, opt, QUEUE_BYTES);
}

/// See [`shallow_queue`].
const QUEUE_BYTES: i32 = 256 << 10;

/// Source: serve the lazy pages of the frozen tree until the destination has them all.
/// Returns the page bytes sent.
pub fn serve_pages(sec: &mut Secure, src: &mut LazySource, timeout: Duration) -> Result<(u64, u64)> {
    shallow_queue(sec, libc::SO_SNDBUF);
    let mut done_sent = false;
    let mut wants = 0u64;
    let mut last_heard = Instant::now();
    loop {
        while readable(sec, 0)? {
            last_heard = Instant::now();
            let (k, p) = recv(sec, 4096).context("reading the destination's requests")?;
            let mut f = Fields(&p);
            match k {
                // (after LAZY_DONE, a want can only be for a page the source never had: the
                // destination's closing of its uffds gives it as zero)
                kind::LAZY_WANT if done_sent => {}
                kind::LAZY_WANT => {
                    let (pid, addr) = (f.u32()? as i32, f.u64()?);
                    wants += 1;
                    src.want(pid, addr, &mut |piece| send_piece(sec, piece))?;
                    sec.flush()?;
                }
                kind::LAZY_COMPLETE if done_sent => return Ok((src.bytes_sent, wants)),
                kind::FAILED => bail!("the destination failed: {}", text(&p)),
                k => bail!("unexpected message {k} from the destination during post-copy"),
            }
        }
        if !done_sent {
            if !src.background(&mut |piece| send_piece(sec, piece))? {
                send_now(sec, kind::LAZY_DONE, &[])?;
                done_sent = true;
            }
        } else if !readable(sec, 1000)? && last_heard.elapsed() > timeout {
            bail!("the destination did not confirm that every page arrived within {} s", timeout.as_secs());
        }
    }
}

/// Where a restored mm still waits for source pages: `start..end` there holds source page
/// `src + (a - start)` of the source process.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Seg {
    start: u64,
    end: u64,
    src: u64,
}

/// Which addresses of one restored mm still wait for which source pages, kept right through
/// the mm's events.
#[derive(Debug, Clone, Default, PartialEq)]
struct Segs(Vec<Seg>);

impl Segs {
    /// `start..end` waits for nothing any more (dropped, unmapped).
    fn cut(&mut self, start: u64, end: u64) {
        let mut out = Vec::with_capacity(self.0.len() + 1);
        for s in &self.0 {
            if s.end <= start || s.start >= end {
                out.push(*s);
                continue;
            }
            if s.start < start {
                out.push(Seg { start: s.start, end: start, src: s.src });
            }
            if s.end > end {
                out.push(Seg { start: end, end: s.end, src: s.src + (end - s.start) });
            }
        }
        self.0 = out;
    }

    /// `from..from+len` moved to `to` (what was at `to` is gone).
    fn remap(&mut self, from: u64, to: u64, len: u64) {
        let mut moved = Vec::new();
        for s in &self.0 {
            let (a, b) = (s.start.max(from), s.end.min(from + len));
            if a < b {
                moved.push(Seg { start: to + (a - from), end: to + (b - from), src: s.src + (a - s.start) });
            }
        }
        self.cut(from, from + len);
        self.cut(to, to + len);
        self.0.extend(moved);
        self.0.sort_by_key(|s| s.start);
    }

    /// The source page that address `addr` waits for.
    fn source_of(&self, addr: u64) -> Option<u64> {
        self.0.iter().find(|s| s.start <= addr && addr < s.end).map(|s| s.src + (addr - s.start))
    }

    /// Where source pages `src..src+len` go: (destination address, offset in them, length).
    fn targets(&self, src: u64, len: u64) -> Vec<(u64, u64, u64)> {
        self.0
            .iter()
            .filter_map(|s| {
                let (a, b) = (src.max(s.src), (src + len).min(s.src + (s.end - s.start)));
                (a < b).then(|| (s.start + (a - s.src), a - src, b - a))
            })
            .collect()
    }
}

/// A restored address space with lazy pages.
struct Mm {
    /// The source process its pages come from (a forked child: its ancestor's).
    src_pid: i32,
    uffd: OwnedFd,
    segs: Segs,
    /// Its process is gone.
    dead: bool,
    what: String,
}

/// What the destination did, for its log.
#[derive(Default, Debug)]
pub struct FetchStats {
    pub faults: u64,
    pub bytes: u64,
    pub forks: u64,
    /// From a LAZY_WANT to its page's arrival: total and worst.
    pub wait_total: Duration,
    pub wait_max: Duration,
}

struct Dest {
    mms: Vec<Mm>,
    requested: HashSet<(i32, u64)>,
    /// When each page asked for and not arrived yet was asked for.
    asked: HashMap<(i32, u64), Instant>,
    /// Faults outside what still comes from the source: zero pages to put in place.
    zero_retry: Vec<(usize, u64)>,
    stats: FetchStats,
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

impl Dest {
    /// Read and apply the pending events of mm `i`; faults become requests.
    fn events(&mut self, i: usize, sec: &mut Secure) -> Result<()> {
        loop {
            let evs = match uffd::read_events(self.mms[i].uffd.as_fd()) {
                Ok(e) => e,
                Err(e) if errno(&e) == libc::EBADF || errno(&e) == libc::ESRCH => {
                    self.mms[i].dead = true;
                    return Ok(());
                }
                Err(e) => return Err(e).with_context(|| format!("{}: reading its userfaultfd", self.mms[i].what)),
            };
            if evs.is_empty() {
                return Ok(());
            }
            for ev in evs {
                match ev {
                    Event::PageFault { address } => {
                        let page = address & !(PAGE - 1);
                        let m = &self.mms[i];
                        match m.segs.source_of(page) {
                            Some(src) => {
                                if self.requested.insert((m.src_pid, src)) {
                                    self.stats.faults += 1;
                                    self.asked.insert((m.src_pid, src), Instant::now());
                                    let mut p = (m.src_pid as u32).to_le_bytes().to_vec();
                                    p.extend_from_slice(&src.to_le_bytes());
                                    send_now(sec, kind::LAZY_WANT, &p).context("cannot ask the source for a page")?;
                                }
                            }
                            None => self.zero_retry.push((i, page)),
                        }
                    }
                    Event::Fork { uffd: fd } => {
                        let ufd = uffd::own_fork_uffd(fd).context("fork event")?;
                        let child = Mm {
                            src_pid: self.mms[i].src_pid,
                            uffd: ufd,
                            segs: self.mms[i].segs.clone(),
                            dead: false,
                            what: format!("a child of {}", self.mms[i].what),
                        };
                        self.stats.forks += 1;
                        self.mms.push(child);
                    }
                    Event::Remap { from, to, len } => self.mms[i].segs.remap(from, to, len),
                    Event::Remove { start, end } | Event::Unmap { start, end } => self.mms[i].segs.cut(start, end),
                    Event::Other(_) => {}
                }
            }
        }
    }

    /// Zero pages for faults where nothing comes from the source (memory that was never
    /// there, or was dropped since).
    fn zero_faults(&mut self, sec: &mut Secure) -> Result<()> {
        for (i, page) in std::mem::take(&mut self.zero_retry) {
            if self.mms[i].dead {
                continue;
            }
            let (_, err) = uffd::zeropage(self.mms[i].uffd.as_fd(), page, PAGE);
            match err.as_ref().map(errno) {
                None | Some(libc::EEXIST) | Some(libc::ENOENT) | Some(libc::EFAULT) => {}
                Some(libc::ESRCH) => self.mms[i].dead = true,
                Some(libc::EAGAIN) => {
                    self.zero_retry.push((i, page));
                    self.events(i, sec)?;
                }
                Some(_) => {
                    return Err(err.unwrap_or_else(|| io::Error::other("?")))
                        .with_context(|| format!("{}: UFFDIO_ZEROPAGE at {page:#x}", self.mms[i].what))
                }
            }
        }
        Ok(())
    }

    /// Source page(s) `src..src+len` of `pid` arrived (`data`, or zeros): into every mm that
    /// waits for them.
    fn deliver(&mut self, pid: i32, src: u64, len: u64, data: Option<&[u8]>, sec: &mut Secure) -> Result<()> {
        if !self.asked.is_empty() {
            let mut a = src;
            while a < src + len {
                if let Some(t) = self.asked.remove(&(pid, a)) {
                    let w = t.elapsed();
                    self.stats.wait_total += w;
                    self.stats.wait_max = self.stats.wait_max.max(w);
                }
                a += PAGE;
            }
        }
        // (a fork meanwhile adds an mm that may wait for these pages too)
        let mut i = 0;
        while i < self.mms.len() {
            i += 1;
            let i = i - 1;
            if self.mms[i].src_pid != pid || self.mms[i].dead {
                continue;
            }
            let mut tries = 0u32;
            'again: loop {
                let targets = self.mms[i].segs.targets(src, len);
                for (dst, off, n) in targets {
                    let mut done = 0u64;
                    while done < n {
                        let (k, err) = match data {
                            Some(d) => uffd::copy(
                                self.mms[i].uffd.as_fd(),
                                dst + done,
                                &d[(off + done) as usize..(off + n) as usize],
                            ),
                            None => uffd::zeropage(self.mms[i].uffd.as_fd(), dst + done, n - done),
                        };
                        done += k;
                        match err.as_ref().map(errno) {
                            None => break,
                            Some(libc::EEXIST) | Some(libc::ENOENT) | Some(libc::EFAULT) => done += PAGE,
                            Some(libc::ESRCH) => {
                                self.mms[i].dead = true;
                                break 'again;
                            }
                            Some(libc::EAGAIN) if tries < 100_000 => {
                                // the mm is changing: its event first, then the addresses again
                                tries += 1;
                                self.events(i, sec)?;
                                if tries > 100 {
                                    std::thread::sleep(Duration::from_micros(200));
                                }
                                continue 'again;
                            }
                            Some(_) => {
                                return Err(err.unwrap_or_else(|| io::Error::other("?")))
                                    .with_context(|| format!("{}: UFFDIO_COPY at {:#x}", self.mms[i].what, dst + done))
                            }
                        }
                    }
                }
                break;
            }
        }
        Ok(())
    }
}

/// Destination: fill the lazy pages of the restored tree as the source sends them, the faulting
/// ones first. On error the caller kills the tree.
/// `max_bytes`: page bytes the source may send (the destination's image cap).
pub fn fetch_pages(
    sec: &mut Secure,
    root: i32,
    lazies: Vec<LazyMm>,
    idle: Duration,
    max_bytes: u64,
) -> Result<FetchStats> {
    let mut d = Dest {
        mms: Vec::new(),
        requested: HashSet::new(),
        asked: HashMap::new(),
        zero_retry: Vec::new(),
        stats: FetchStats::default(),
    };
    for l in lazies {
        let segs = Segs(l.ranges.iter().map(|&(s, e)| Seg { start: s, end: e, src: s }).collect());
        d.mms.push(Mm {
            src_pid: l.image_pid,
            uffd: l.uffd,
            segs,
            dead: false,
            what: format!("pid {} (restored as {})", l.image_pid, l.host_pid),
        });
    }
    let dog = Watchdog::start(root)?;
    shallow_queue(sec, libc::SO_RCVBUF);
    let mut payload = Vec::with_capacity(MAX_MSG);
    let mut last_heard = Instant::now();
    loop {
        let live: Vec<usize> = (0..d.mms.len()).filter(|&i| !d.mms[i].dead).collect();
        let ready = if sec.has_buffered() {
            vec![true; 1 + live.len()]
        } else {
            let mut fds: Vec<BorrowedFd<'_>> = vec![sec.socket().as_fd()];
            fds.extend(live.iter().map(|&i| d.mms[i].uffd.as_fd()));
            let timeout = if d.zero_retry.is_empty() { 1000 } else { 1 };
            ferry_sys::process::poll_readable(&fds, timeout).context("poll")?
        };
        for (j, &i) in live.iter().enumerate() {
            if ready[1 + j] {
                d.events(i, sec)?;
            }
        }
        d.zero_faults(sec)?;
        if !ready[0] {
            if last_heard.elapsed() > idle {
                bail!("the source sent nothing for {} s during post-copy", idle.as_secs());
            }
            continue;
        }
        // A burst of messages from the source, then the faults again.
        let t = Instant::now();
        loop {
            last_heard = Instant::now();
            let k = super::recv_into(sec, MAX_MSG, &mut payload).context("post-copy: the source")?;
            let mut f = Fields(&payload);
            match k {
                kind::LAZY_PAGES => {
                    let (pid, addr) = (f.u32()? as i32, f.u64()?);
                    let bytes = f.rest();
                    if bytes.len() % PAGE as usize != 0 || addr % PAGE != 0 {
                        bail!("post-copy pages not page aligned");
                    }
                    d.stats.bytes += bytes.len() as u64;
                    if d.stats.bytes > max_bytes {
                        bail!("the source sent more than {} MiB of pages: refused", max_bytes >> 20);
                    }
                    d.deliver(pid, addr, bytes.len() as u64, Some(bytes), sec)?;
                }
                kind::LAZY_ZERO => {
                    let (pid, addr, len) = (f.u32()? as i32, f.u64()?, f.u64()?);
                    if len % PAGE != 0 || addr % PAGE != 0 || len > 1 << 30 {
                        bail!("post-copy zero range not page aligned");
                    }
                    d.deliver(pid, addr, len, None, sec)?;
                }
                kind::LAZY_DONE => {
                    // Everything the source had is in: what is still missing reads as zero once
                    // the ranges are unregistered (the uffds closed).
                    d.zero_faults(sec)?;
                    dog.disarm();
                    drop(d.mms);
                    send_now(sec, kind::LAZY_COMPLETE, &[])?;
                    return Ok(d.stats);
                }
                kind::ABORT => bail!("the source aborted: {}", text(f.rest())),
                k => bail!("unexpected message {k} during post-copy"),
            }
            if !sec.has_buffered() || t.elapsed() > Duration::from_millis(2) {
                break;
            }
        }
    }
}

/// The restored tree (root `root`) and every descendant, SIGKILLed: a post-copy that cannot
/// complete must not leave a process with holes in its memory.
pub fn kill_tree(root: i32) {
    for pid in ferry_engine::freeze::tree_pids(root).iter().rev() {
        let _ = ferry_sys::process::kill(*pid, libc::SIGKILL);
    }
}

/// A small process that kills the restored tree if this `ferry serve` dies (even by SIGKILL)
/// before every page is in: without it, the kernel would close the uffds with ferry, and the
/// tree would run on with zeros where its memory should be. It holds copies of the uffds
/// (faults then wait instead of reading zeros) and a pipe from us; EOF without a word means
/// we are gone.
pub struct Watchdog {
    pipe: Option<std::fs::File>,
    pid: i32,
}

impl Watchdog {
    /// Fork the watchdog of the tree rooted at `root` (called with no other thread running).
    pub fn start(root: i32) -> Result<Watchdog> {
        let (r, w) = ferry_sys::process::pipe2(libc::O_CLOEXEC).context("cannot create a pipe")?;
        match ferry_sys::process::fork().context("cannot fork the post-copy watchdog")? {
            ferry_sys::process::Fork::Child => {
                drop(w);
                let mut b = [0u8; 1];
                let said = std::io::Read::read(&mut std::fs::File::from(r), &mut b).unwrap_or(0);
                if said != 1 || b[0] != b'k' {
                    kill_tree(root);
                }
                ferry_sys::raw::exit_now(0)
            }
            ferry_sys::process::Fork::Parent(pid) => Ok(Watchdog { pipe: Some(std::fs::File::from(w)), pid }),
        }
    }

    /// Every page is in: the watchdog leaves (and closes its uffd copies) before we go on.
    pub fn disarm(mut self) {
        if let Some(mut p) = self.pipe.take() {
            let _ = std::io::Write::write_all(&mut p, b"k");
        }
        let _ = ferry_sys::ptrace::wait(self.pid, false);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if self.pipe.take().is_some() {
            // closed without a word: it kills the tree
            let _ = ferry_sys::ptrace::wait(self.pid, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Seg, Segs};

    const P: u64 = 4096;

    fn segs(v: &[(u64, u64, u64)]) -> Segs {
        Segs(v.iter().map(|&(start, end, src)| Seg { start, end, src }).collect())
    }

    #[test]
    fn cut_splits_and_drops() {
        let mut s = segs(&[(0x10000, 0x20000, 0x10000)]);
        s.cut(0x14000, 0x15000);
        assert_eq!(s, segs(&[(0x10000, 0x14000, 0x10000), (0x15000, 0x20000, 0x15000)]));
        assert_eq!(s.source_of(0x14000), None);
        assert_eq!(s.source_of(0x15000 + P), Some(0x15000 + P));
        s.cut(0, 0x30000);
        assert_eq!(s, Segs::default());
    }

    #[test]
    fn remap_moves_what_waits_and_replaces_the_target() {
        // 0x10000..0x20000 waits; 0x50000..0x52000 waits for its own pages
        let mut s = segs(&[(0x10000, 0x20000, 0x10000), (0x50000, 0x52000, 0x50000)]);
        // mremap(0x18000, 0x10000 -> 0x4f000): the upper half of the first range moves over part
        // of the second
        s.remap(0x18000, 0x4f000, 0x8000);
        assert_eq!(s.source_of(0x18000), None, "the old place waits for nothing");
        assert_eq!(s.source_of(0x4f000), Some(0x18000));
        assert_eq!(s.source_of(0x4f000 + 0x7000), Some(0x1f000));
        assert_eq!(s.source_of(0x10000), Some(0x10000), "the part that stayed");
        assert_eq!(s.source_of(0x50000), Some(0x19000), "overwritten by the move");
        // the page of source 0x1f000 goes to its new address only
        assert_eq!(s.targets(0x1f000, P), vec![(0x56000, 0, P)]);
        // a run of source pages across the split lands in two places
        assert_eq!(s.targets(0x17000, 2 * P), vec![(0x17000, 0, P), (0x4f000, P, P)]);
    }

    #[test]
    fn targets_of_pages_nobody_waits_for() {
        let s = segs(&[(0x10000, 0x11000, 0x10000)]);
        assert!(s.targets(0x20000, 16 * P).is_empty());
    }
}
