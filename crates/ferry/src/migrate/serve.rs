//! `ferry serve`: the destination side. Authenticate each peer, receive its image into a
//! private staging directory in memory (tmpfs), restore the tree, tell the source it runs.
//!
//! Handshakes run all at once on a thread of their own with non-blocking sockets ([`Gate`]):
//! a peer gets 10 s for its whole handshake, and connections not authenticated yet are capped
//! in total and per address (past a cap the oldest is closed), so that no stalled, slow or
//! flooding peer delays another. Authenticated migrations are then served one at a time by the
//! main thread (a restore drives its processes with ptrace from this thread, and reaping
//! between migrations must not race with it), with at most 60 s of silence each.

use super::channel::{seal, Auth, Progress, Responder, Secure, HANDSHAKE_MSG_MAX, UNTRUSTED};
use super::inplace::InPlace;
use super::{kind, message, mode, recv, recv_into, send_now, text, Fields, MAX_MSG};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What one peer may send.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Sum of the image's file sizes.
    pub max_image_bytes: u64,
    /// Files in the image.
    pub max_files: usize,
    /// Processes (and zombies) in the tree.
    pub max_processes: usize,
    /// Size of any file but page data (process records, ghost files...).
    pub max_record_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_image_bytes: 16 << 30, max_files: 4096, max_processes: 512, max_record_bytes: 64 << 20 }
    }
}

pub struct ServeOptions<'a> {
    pub listen: &'a str,
    pub auth: &'a Path,
    pub staging: &'a Path,
    pub limits: Limits,
    /// Stop after this many authenticated connections (tests); None: serve forever.
    pub max_migrations: Option<u64>,
    /// Caps on connections still in their handshake.
    pub caps: HandshakeCaps,
    /// This node's side of the trees' namespaces (`--external veth[..]`: where the outside
    /// ends of their veths go here).
    pub ns: ferry_engine::state::namespaces::RestoreNs,
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The filesystem type of the mount holding `path` (the longest mount point that prefixes it).
fn fs_type(path: &Path) -> Option<String> {
    let mounts = fs::read_to_string("/proc/self/mounts").ok()?;
    let path = path.canonicalize().ok()?;
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let mut w = line.split_whitespace();
        let (_, mp, ty) = (w.next()?, w.next()?.replace("\\040", " "), w.next()?.to_string());
        if path.starts_with(&mp) && best.as_ref().is_none_or(|(l, _)| mp.len() >= *l) {
            best = Some((mp.len(), ty));
        }
    }
    best.map(|b| b.1)
}

/// Staging dirs left by a `ferry serve` that died mid-transfer (memory: they must not pile up).
fn remove_stale(staging: &Path) {
    let Ok(entries) = fs::read_dir(staging) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("ferry-serve-").and_then(|r| r.split('-').next()?.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(e.path());
            eprintln!("serve: removed {}, left by a ferry serve that died", e.path().display());
        }
    }
}

fn reap_children() {
    while let Ok(Some(_)) = ferry_sys::ptrace::wait(-1, true) {}
}

pub fn serve(o: &ServeOptions) -> Result<()> {
    let auth = Auth::load(o.auth)?;
    match fs_type(o.staging).as_deref() {
        Some("tmpfs" | "ramfs") => {}
        Some(other) => bail!(
            "staging area {} is on {other}, not in memory (tmpfs): images hold process memory and must not touch a disk",
            o.staging.display()
        ),
        None => bail!("staging area {} does not exist", o.staging.display()),
    }
    remove_stale(o.staging);
    let caps = o.caps.clone().fit_fd_limit()?;
    let listener = TcpListener::bind(o.listen).with_context(|| format!("cannot listen on {}", o.listen))?;
    listener.set_nonblocking(true)?;
    // A longer accept queue than std's 128: a burst of connections waits there for the loop
    // (which accepts them at once, and closes the excess) instead of having its handshakes
    // dropped by the kernel, where an honest one would wait for a retransmission.
    ferry_sys::raw::listen(listener.as_fd(), BACKLOG).context("listen")?;
    let key: String = auth.public.iter().map(|b| format!("{b:02x}")).collect();
    println!("serving on {} (node key {key})", listener.local_addr()?);
    let _ = std::io::stdout().flush();
    // Grow the fd table now, while this is the only thread: growing a table that two threads
    // share waits for an RCU grace period (~20 ms), and the restore moves its fds high.
    if let Ok(fd) = ferry_sys::raw::dup_above(listener.as_fd(), FD_TABLE - 1) {
        drop(fd);
    }
    // Handshakes run on their own thread, never blocked by a peer; this thread runs the
    // authenticated migrations one at a time (a restore traces its tree from this thread, and
    // reaping between migrations must not race with it).
    let (tx, rx) = mpsc::sync_channel::<Authenticated>(QUEUED_MAX);
    let gate = std::thread::Builder::new()
        .name("handshakes".into())
        .spawn(move || Gate::new(listener, auth, caps, tx).run())
        .context("cannot start the handshake thread")?;
    let mut n = 0u64;
    loop {
        reap_children();
        let (sec, peer) = match rx.recv_timeout(Duration::from_millis(100)) {
            // (its buffers are allocated only now, not while it waits)
            Ok((sock, noise, peer)) => (Secure::new(sock, noise), peer),
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return match gate.join() {
                    Ok(Err(e)) => Err(e),
                    _ => bail!("the handshake thread ended"),
                };
            }
        };
        n += 1;
        let dir = o.staging.join(format!("ferry-serve-{}-{n}", std::process::id()));
        match handle(sec, &o.limits, &dir, &o.ns) {
            Ok(Some(pid)) => eprintln!("serve: migration from {peer} done: the tree runs as pid {pid}"),
            Ok(None) => {}
            Err(e) => eprintln!("serve: migration from {peer} failed: {e:#}"),
        }
        let _ = fs::remove_dir_all(&dir);
        if o.max_migrations.is_some_and(|m| n >= m) {
            return Ok(());
        }
    }
}

/// Caps on peers that have not authenticated yet (`ferry serve` flags).
#[derive(Debug, Clone)]
pub struct HandshakeCaps {
    /// Handshakes in progress at once, in total.
    pub total: usize,
    /// Handshakes in progress at once from one address (IPv4) or /64 (IPv6).
    pub per_addr: usize,
    /// Time for the whole handshake, from the accept to the last message.
    pub deadline: Duration,
}

impl Default for HandshakeCaps {
    fn default() -> HandshakeCaps {
        HandshakeCaps { total: 256, per_addr: 8, deadline: HANDSHAKE_TIMEOUT }
    }
}

/// The listening socket's accept queue (capped by net.core.somaxconn).
const BACKLOG: i32 = 1024;
/// The fd table grown at startup (fds below this number never grow it).
const FD_TABLE: i32 = 1024;
/// Authenticated connections waiting for the migration in progress to end.
const QUEUED_MAX: usize = 64;
/// Fds kept for the migration in progress (image files, the restored tree's fds, pipes).
const FD_RESERVE: u64 = 256;

impl HandshakeCaps {
    /// Caps that fit in the fd limit (RLIMIT_NOFILE, soft): every pending handshake holds a
    /// socket, and the migration in progress needs its own fds.
    fn fit_fd_limit(mut self) -> Result<HandshakeCaps> {
        if self.total == 0 || self.per_addr == 0 {
            bail!("handshake caps must be at least 1");
        }
        let soft = fd_limit().context("cannot read the fd limit (/proc/self/limits)")?;
        let room = soft.saturating_sub(FD_RESERVE + QUEUED_MAX as u64 + 16);
        if room < self.total as u64 {
            if room < 16 {
                bail!("the fd limit ({soft}) leaves no room for connections: raise ulimit -n");
            }
            eprintln!("serve: at most {room} handshakes at once (fd limit {soft}), not {}", self.total);
            self.total = room as usize;
        }
        self.per_addr = self.per_addr.min(self.total);
        Ok(self)
    }
}

/// The soft RLIMIT_NOFILE ("unlimited": u64::MAX).
fn fd_limit() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.strip_prefix("Max open files")?.split_whitespace().next()?;
    Some(if soft == "unlimited" { u64::MAX } else { soft.parse().ok()? })
}

/// A peer's address as the per-address cap counts it: IPv4 whole, IPv6 by /64 (what one host
/// usually gets).
fn addr_key(a: &SocketAddr) -> IpAddr {
    match a.ip().to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// A connection whose peer is authenticated and trusted, on its way to the migration thread.
type Authenticated = (TcpStream, snow::TransportState, SocketAddr);

/// One connection whose handshake is in progress (or, refused, being drained before closing).
struct Pending {
    sock: TcpStream,
    peer: SocketAddr,
    key: IpAddr,
    since: Instant,
    deadline: Instant,
    hs: Responder,
    /// The unit being read: its bytes so far, and how many it needs.
    buf: Vec<u8>,
    need: usize,
    /// Reading a message's 2-byte length (else its body, or the header).
    at_len: bool,
    /// Refused: told why, write side shut; read and dropped until the peer closes.
    draining: bool,
}

/// What one readable connection came to.
enum Outcome {
    Wait,
    Close(Option<String>),
    Trusted(snow::TransportState),
}

/// Accepts connections and runs every handshake at once on one thread, with non-blocking
/// sockets: nothing a peer does (or does not do) blocks it. Each peer gets `deadline` for the
/// whole handshake; past the caps the oldest handshake (from that address, or in all) is closed
/// to make room, so a flood neither fills the accept queue nor pushes out a peer that
/// completes its handshake in a reasonable time.
struct Gate {
    listener: TcpListener,
    auth: Auth,
    caps: HandshakeCaps,
    tx: mpsc::SyncSender<Authenticated>,
    pending: Vec<Pending>,
    log: LogLimit,
}

impl Gate {
    fn new(listener: TcpListener, auth: Auth, caps: HandshakeCaps, tx: mpsc::SyncSender<Authenticated>) -> Gate {
        Gate { listener, auth, caps, tx, pending: Vec::new(), log: LogLimit::default() }
    }

    fn run(mut self) -> Result<()> {
        loop {
            let now = Instant::now();
            let mut i = 0;
            while i < self.pending.len() {
                if self.pending[i].deadline <= now {
                    let p = self.pending.swap_remove(i);
                    if !p.draining {
                        self.log.refused(&p.peer, "the handshake took longer than its deadline");
                    }
                } else {
                    i += 1;
                }
            }
            self.log.tick();
            let wait = self
                .pending
                .iter()
                .map(|p| p.deadline)
                .min()
                .map_or(Duration::from_secs(1), |d| d.saturating_duration_since(now));
            let timeout = wait.min(Duration::from_secs(1)).as_millis() as i32 + 1;
            let ready = {
                let mut fds = vec![self.listener.as_fd()];
                fds.extend(self.pending.iter().map(|p| p.sock.as_fd()));
                ferry_sys::process::poll_readable(&fds, timeout).context("poll")?
            };
            for i in (0..self.pending.len()).rev() {
                if !ready[i + 1] {
                    continue;
                }
                match self.step(i) {
                    Outcome::Wait => {}
                    Outcome::Close(why) => {
                        let p = self.pending.swap_remove(i);
                        if let Some(why) = why {
                            self.log.refused(&p.peer, &why);
                        }
                    }
                    Outcome::Trusted(noise) => {
                        let p = self.pending.swap_remove(i);
                        self.hand_over(p, noise);
                    }
                }
            }
            if ready[0] {
                self.accept()?;
            }
        }
    }

    /// Accept what waits in the queue (a bounded batch, so that handshakes keep moving).
    fn accept(&mut self) -> Result<()> {
        for _ in 0..256 {
            let (sock, peer) = match self.listener.accept() {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)) =>
                {
                    // Out of fds (the migration in progress holds many): make room, or wait.
                    self.log.note(&format!("serve: cannot accept a connection: {e}"));
                    if self.pending.is_empty() {
                        std::thread::sleep(Duration::from_millis(50));
                    } else {
                        self.evict(None);
                    }
                    return Ok(());
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO)) => continue,
                Err(e) => return Err(e).context("accept"),
            };
            self.admit(sock, peer);
        }
        Ok(())
    }

    /// Close the oldest handshake (from `key` only, if given).
    fn evict(&mut self, key: Option<IpAddr>) {
        let oldest = self
            .pending
            .iter()
            .enumerate()
            .filter(|(_, p)| key.is_none_or(|k| p.key == k))
            .min_by_key(|(_, p)| p.since)
            .map(|(i, _)| i);
        if let Some(i) = oldest {
            let p = self.pending.swap_remove(i);
            self.log.refused(&p.peer, "closed to make room for a newer connection (too many handshakes at once)");
        }
    }

    fn admit(&mut self, sock: TcpStream, peer: SocketAddr) {
        let key = addr_key(&peer);
        if self.pending.iter().filter(|p| p.key == key).count() >= self.caps.per_addr {
            self.evict(Some(key));
        } else if self.pending.len() >= self.caps.total {
            self.evict(None);
        }
        let (hs, header) = Responder::new();
        // 8 bytes on a fresh connection: they fit in its send buffer, or the peer is gone.
        if sock.set_nonblocking(true).is_err() || !matches!((&sock).write(&header), Ok(8)) {
            self.log.refused(&peer, "cannot send the protocol header");
            return;
        }
        let _ = sock.set_nodelay(true);
        let now = Instant::now();
        self.pending.push(Pending {
            sock,
            peer,
            key,
            since: now,
            deadline: now + self.caps.deadline,
            hs,
            buf: Vec::with_capacity(8),
            need: 8,
            at_len: false,
            draining: false,
        });
    }

    /// Read what a readable connection has for the unit in progress; act on a complete unit.
    fn step(&mut self, i: usize) -> Outcome {
        let p = &mut self.pending[i];
        if p.draining {
            let mut sink = [0u8; 1024];
            return match (&p.sock).read(&mut sink) {
                Ok(0) => Outcome::Close(None),
                Ok(_) => Outcome::Wait,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Outcome::Wait,
                Err(_) => Outcome::Close(None),
            };
        }
        let have = p.buf.len();
        p.buf.resize(p.need, 0);
        let got = match (&p.sock).read(&mut p.buf[have..]) {
            Ok(0) => {
                return Outcome::Close(Some(format!(
                    "the peer closed the connection during the handshake ({} bytes into a unit)",
                    have
                )))
            }
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => 0,
            Err(e) => return Outcome::Close(Some(format!("{e}"))),
        };
        p.buf.truncate(have + got);
        if p.buf.len() < p.need {
            return Outcome::Wait;
        }
        let unit = std::mem::take(&mut p.buf);
        if p.at_len {
            let len = u16::from_be_bytes([unit[0], unit[1]]) as usize;
            if len == 0 || len > HANDSHAKE_MSG_MAX {
                return Outcome::Close(Some(format!(
                    "a handshake message of {len} bytes (at most {HANDSHAKE_MSG_MAX})"
                )));
            }
            (p.at_len, p.need) = (false, len);
            return Outcome::Wait;
        }
        match p.hs.feed(&self.auth, &unit) {
            Ok(Progress::Reply(out)) => {
                // (under 100 bytes, the peer having sent its part: it fits, or the peer is gone)
                if !out.is_empty() && !matches!((&p.sock).write(&out), Ok(n) if n == out.len()) {
                    return Outcome::Close(Some("cannot send a handshake message".into()));
                }
                (p.at_len, p.need) = (true, 2);
                Outcome::Wait
            }
            Ok(Progress::Trusted(noise)) => Outcome::Trusted(noise),
            Ok(Progress::Untrusted(noise, why)) => {
                // Tell the peer, in the channel it just set up, then let it close first (closing
                // with its HELLO unread would reset the connection, and could lose the reason).
                let mut noise = noise;
                if let Ok(out) = seal(&mut noise, &message(kind::FAILED, UNTRUSTED.as_bytes())) {
                    let _ = (&p.sock).write(&out);
                }
                let _ = p.sock.shutdown(Shutdown::Write);
                p.draining = true;
                p.deadline = p.deadline.min(Instant::now() + DRAIN_TIME);
                let peer = p.peer;
                self.log.refused(&peer, &why);
                Outcome::Wait
            }
            Err(e) => Outcome::Close(Some(format!("{e:#}"))),
        }
    }

    /// An authenticated peer goes to the migration thread (or is told it is busy).
    fn hand_over(&mut self, p: Pending, noise: snow::TransportState) {
        let ready = p.sock.set_nonblocking(false).is_ok()
            && p.sock.set_read_timeout(Some(IDLE_TIMEOUT)).is_ok()
            && p.sock.set_write_timeout(Some(IDLE_TIMEOUT)).is_ok();
        if !ready {
            self.log.refused(&p.peer, "cannot set up the connection");
            return;
        }
        let peer = p.peer;
        eprintln!("serve: {peer} authenticated in {} ms", p.since.elapsed().as_millis());
        match self.tx.try_send((p.sock, noise, peer)) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full((sock, mut noise, _))) => {
                // (a few bytes on a fresh connection: they fit, or the peer is gone)
                let why = format!("the destination is busy ({QUEUED_MAX} migrations already wait): try again later");
                if let Ok(out) = seal(&mut noise, &message(kind::FAILED, why.as_bytes())) {
                    let _ = sock.set_nonblocking(true);
                    let _ = (&sock).write(&out);
                }
                eprintln!("serve: migration from {peer} refused: {why}");
            }
            Err(mpsc::TrySendError::Disconnected(_)) => {}
        }
    }
}
/// How long a refused peer may take to close after it was told why.
const DRAIN_TIME: Duration = Duration::from_secs(2);

/// Log lines about refused connections: at most 20 per 10 s, then how many were left out (a
/// flood must not flood the log).
struct LogLimit {
    since: Instant,
    lines: u32,
    left_out: u64,
}

impl Default for LogLimit {
    fn default() -> LogLimit {
        LogLimit { since: Instant::now(), lines: 0, left_out: 0 }
    }
}

impl LogLimit {
    fn tick(&mut self) {
        if self.since.elapsed() >= Duration::from_secs(10) {
            if self.left_out > 0 {
                eprintln!(
                    "serve: {} more refused connections not logged (in {} s)",
                    self.left_out,
                    self.since.elapsed().as_secs()
                );
            }
            *self = LogLimit::default();
        }
    }

    fn note(&mut self, line: &str) {
        self.tick();
        if self.lines < 20 {
            self.lines += 1;
            eprintln!("{line}");
        } else {
            self.left_out += 1;
        }
    }

    fn refused(&mut self, peer: &SocketAddr, why: &str) {
        self.note(&format!("serve: migration from {peer} failed: peer refused: {why}"));
    }
}

/// A file being received.
struct Incoming {
    name: String,
    file: File,
    len: u64,
    hasher: crc32fast::Hasher,
}

const PAGE: usize = 4096;

/// Pre-copied pages of one process, in a file of the staging area that is already laid out as
/// a page file: its header page, then each page as it arrives (a page sent again is appended
/// again; the index points at its latest copy). Its checksum is kept as it grows, so that
/// turning it into the image's page file at the end costs only the final round's bytes.
struct PageStore {
    file: File,
    len: u64,
    hasher: crc32fast::Hasher,
    b3: blake3::Hasher,
    index: HashMap<u64, u64>,
    path: PathBuf,
}

impl PageStore {
    fn create(dir: &Path, host: u32) -> Result<PageStore> {
        let path = dir.join(format!(".precopy-{host}"));
        let file = fs::OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path)?;
        let mut st = PageStore {
            file,
            len: 0,
            hasher: crc32fast::Hasher::new(),
            b3: blake3::Hasher::new(),
            index: HashMap::new(),
            path,
        };
        st.append(&ferry_image::pages_header())?;
        Ok(st)
    }

    fn append(&mut self, bytes: &[u8]) -> Result<()> {
        self.file.write_all(bytes).context("cannot write pre-copied pages (staging area full?)")?;
        self.hasher.update(bytes);
        self.b3.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }
}

/// Make the pre-copy file of a process its page file: append the final round's page file (its
/// runs move by the offset it lands at), add runs for the pages the final image left out (the
/// latest copy of each), and put the new sizes and checksums into the inventory.
fn fill_kept(
    dir: &Path,
    inv: &mut ferry_image::Inventory,
    (host, pid): (u32, i32),
    ranges: &[(u64, u64)],
    mut st: PageStore,
    inplace: &InPlace,
) -> Result<()> {
    let pf = ferry_image::process_file(pid);
    let pages_name = ferry_image::pages_file(pid);
    let ppath = dir.join(&pf);
    let raw = fs::read(&ppath).with_context(|| format!("KEEP for pid {pid}, which the image does not have"))?;
    let mut p: ferry_image::Process = ferry_image::decode_record(&pf, ferry_image::RecordKind::Process, &raw)?;
    let mm = p.mm.as_mut().context("process record without memory")?;
    let pages_path = dir.join(&pages_name);
    let last = fs::read(&pages_path).with_context(|| format!("{pages_name} missing"))?;
    let base = st.len;
    st.append(&last)?;
    // Kept pages whose latest copy is in place (in a mapping not handed over) join the file.
    let mut page = vec![0u8; PAGE];
    for &(start, end) in ranges {
        for a in (start..end).step_by(PAGE) {
            if !st.index.contains_key(&a) && inplace.holds(host, a) {
                inplace.read(a, &mut page)?;
                let at = st.len;
                st.append(&page)?;
                st.index.insert(a, at);
            }
        }
    }
    for v in mm.vmas.iter_mut() {
        for r in v.runs.iter_mut() {
            r.offset = r
                .offset
                .checked_add(base)
                .with_context(|| format!("pid {pid}: a page run's offset is out of range"))?;
        }
    }
    let mut filled = 0u64;
    let mut vi = 0usize;
    for &(start, end) in ranges {
        let mut a = start;
        while a < end {
            let off = *st.index.get(&a).with_context(|| format!("pid {pid}: page {a:#x} was never sent"))?;
            if !(mm.vmas.get(vi).is_some_and(|v| v.start <= a && a < v.end)) {
                vi = mm
                    .vmas
                    .iter()
                    .position(|v| v.start <= a && a < v.end)
                    .with_context(|| format!("pid {pid}: kept page {a:#x} is in no mapping"))?;
            }
            let v = &mut mm.vmas[vi];
            // (a run that would end beyond the address space is a bad record: start a new one,
            // which the image's checks refuse)
            let ends = |r: &ferry_image::PageRun, from: u64| r.nr_pages.checked_mul(PAGE as u64)?.checked_add(from);
            match v.runs.last_mut() {
                Some(last) if ends(last, last.addr) == Some(a) && ends(last, last.offset) == Some(off) => {
                    last.nr_pages += 1
                }
                _ => v.runs.push(ferry_image::PageRun { addr: a, nr_pages: 1, offset: off }),
            }
            filled += PAGE as u64;
            a += PAGE as u64;
        }
    }
    mm.pages_bytes = mm.pages_bytes.saturating_add(filled);
    let rec = ferry_image::encode_record(ferry_image::RecordKind::Process, &p);
    fs::write(&ppath, &rec)?;
    let d = inv.files.iter_mut().find(|d| d.name == pf).with_context(|| format!("{pf} not in the inventory"))?;
    (d.size, d.crc32, d.blake3) = (rec.len() as u64, crc32fast::hash(&rec), blake3::hash(&rec).as_bytes().to_vec());
    let (size, crc, b3) = (st.len, st.hasher.clone().finalize(), st.b3.finalize().as_bytes().to_vec());
    drop(st.file);
    fs::rename(&st.path, &pages_path)?;
    let d = inv.files.iter_mut().find(|d| d.name == pages_name).context("page file not in the inventory")?;
    (d.size, d.crc32, d.blake3) = (size, crc, b3);
    Ok(())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name != ferry_image::INVENTORY
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// One authenticated connection. Ok(None): the peer went away before sending an image
/// (nothing to do).
fn handle(
    mut sec: Secure,
    limits: &Limits,
    dir: &Path,
    ns: &ferry_engine::state::namespaces::RestoreNs,
) -> Result<Option<i32>> {
    let (k, hello) = recv(&mut sec, 64)?;
    if k != kind::HELLO {
        bail!("expected HELLO, got message {k}");
    }
    let mut f = Fields(&hello);
    let (version, m) = (f.u16()?, f.u8()?);
    let known = (super::channel::MIN_PROTOCOL_VERSION..=super::channel::PROTOCOL_VERSION).contains(&version);
    if !known || !(matches!(m, mode::STOP_AND_COPY | mode::PRE_COPY) || (m == mode::POST_COPY && version >= 2)) {
        let why = format!(
            "unsupported protocol version {version} or mode {m} (this node: stop-and-copy, pre-copy, post-copy from v2)"
        );
        let _ = send_now(&mut sec, kind::FAILED, why.as_bytes());
        bail!("{why}");
    }
    let t0 = Instant::now();
    let mut got = match receive_in(&mut sec, limits, dir, true) {
        Ok(got) => got,
        Err(e) => {
            let _ = send_now(&mut sec, kind::FAILED, format!("{e:#}").as_bytes());
            return Err(e);
        }
    };
    let received = t0.elapsed();
    let t1 = Instant::now();
    let opts = ferry_engine::restore::RestoreOptions {
        dir: dir.to_path_buf(),
        pidfile: None,
        shell_job: false,
        tcp_close: false,
        leave_stopped: false,
        cgroups: true,
        trusted: None,
        sibling: false,
        orphan_pts_master: false,
        ns: ns.clone(),
        inherit_fds: Vec::new(),
        external: Vec::new(),
    };
    let post_copy = m == mode::POST_COPY;
    ferry_engine::postcopy::accept_lazy(post_copy);
    // On this machine the source's listeners still hold their socket files: taken over here,
    // put back (on drop) if the migration does not go through.
    ferry_engine::state::unix::take_over_source_files(true);
    let restored = ferry_engine::restore::restore_in_place(&opts, got.inplace.handed(), &mut |_| Ok(()));
    ferry_engine::state::unix::take_over_source_files(false);
    let taken = ferry_engine::state::unix::taken_over();
    let lazies = ferry_engine::postcopy::take_registered();
    ferry_engine::postcopy::accept_lazy(false);
    let r = match restored {
        Ok(r) => r,
        Err(e) => {
            let why = format!("restore failed: {e}");
            let _ = send_now(&mut sec, kind::FAILED, why.as_bytes());
            bail!("{why}");
        }
    };
    let restore_ms = t1.elapsed().as_millis() as u32;
    // The pages are in the processes now: the staging copy goes at once.
    let _ = fs::remove_dir_all(dir);
    // A source that gave up meanwhile (its timeout) has resumed its copy: ours must not run.
    if source_gone(&sec) {
        if post_copy {
            super::postcopy::kill_tree(r.pid); // (it runs already, and may have forked)
        } else {
            let _ = ferry_sys::process::kill(r.pid, libc::SIGKILL);
        }
        bail!("the source gave up before the restore finished; restored pid {} killed", r.pid);
    }
    let mut p = (r.pid as u32).to_le_bytes().to_vec();
    p.extend_from_slice(&restore_ms.to_le_bytes());
    if let Err(e) = send_now(&mut sec, kind::RESTORED, &p) {
        if post_copy {
            super::postcopy::kill_tree(r.pid); // (it runs already, and may have forked)
        } else {
            let _ = ferry_sys::process::kill(r.pid, libc::SIGKILL);
        }
        bail!("cannot confirm to the source ({e}); restored pid {} killed, the source resumes its copy", r.pid);
    }
    // Confirmed: the source dies now.
    taken.confirm();
    // The tree has its own copies of the memory in place now: ours go (its writes then find
    // pages of their own, not shared with serve).
    let t_unmap = Instant::now();
    let handed = got.inplace.handed_bytes();
    drop(got.inplace);
    eprintln!("serve: image received in {} ms, restored in {restore_ms} ms as pid {}", received.as_millis(), r.pid);
    if let Some(k) = got.final_round {
        eprintln!(
            "serve: pre-copy: final round received in {} ms, pages placed in {} ms; restore: verify {} ms, tree forked in {} ms ({} MiB handed over in place), rest {} ms; unmapped serve's copy in {} ms",
            k.as_millis(),
            got.placing.as_millis(),
            r.verify.as_millis(),
            r.forked.as_millis(),
            handed >> 20,
            r.total.saturating_sub(r.forked).as_millis(),
            t_unmap.elapsed().as_millis()
        );
    }
    if post_copy {
        let t = Instant::now();
        match super::postcopy::fetch_pages(&mut sec, r.pid, lazies, IDLE_TIMEOUT, limits.max_image_bytes) {
            Ok(st) => eprintln!(
                "serve: post-copy: every page in {} ms after the restore ({} MiB, {} pages asked for on fault, waited {} us on average, {} us at most; {} forks)",
                t.elapsed().as_millis(),
                st.bytes >> 20,
                st.faults,
                st.wait_total.as_micros() / u128::from(st.faults.max(1)),
                st.wait_max.as_micros(),
                st.forks
            ),
            Err(e) => {
                super::postcopy::kill_tree(r.pid);
                let _ = send_now(&mut sec, kind::FAILED, format!("post-copy: {e:#}").as_bytes());
                bail!(
                    "POST-COPY FAILED: {e:#}; the restored tree (pid {}) is missing memory and was killed (unrecoverable: the process is lost)",
                    r.pid
                );
            }
        }
    }
    match recv(&mut sec, 4096) {
        Ok((kind::FINISHED, _)) => {}
        Ok((k, m)) => eprintln!("serve: warning: got message {k} ({}) instead of FINISHED", text(&m)),
        Err(e) => eprintln!(
            "serve: warning: no FINISHED from the source ({e:#}); the tree keeps running here (pid {})",
            r.pid
        ),
    }
    Ok(Some(r.pid))
}

/// Whether the source closed the connection or sent something (ABORT) while we restored.
fn source_gone(sec: &Secure) -> bool {
    let s = sec.socket();
    if s.set_nonblocking(true).is_err() {
        return true;
    }
    let mut b = [0u8; 1];
    let gone = !matches!(s.peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    let _ = s.set_nonblocking(false);
    gone
}

/// Receive the files of an image into `dir` (created 0700), with the peer's limits; pre-copied
/// pages all go to the image (nothing is mapped in place). (Public for the `frame` fuzz target,
/// fuzz/, and the wire tests.)
pub fn receive(sec: &mut Secure, limits: &Limits, dir: &Path) -> Result<()> {
    receive_in(sec, limits, dir, false).map(drop)
}

/// [`receive`] as a migration receives: pre-copied pages go in place, in this process (all of
/// it unmapped again on return). (Public for the wire tests.)
pub fn receive_in_place(sec: &mut Secure, limits: &Limits, dir: &Path) -> Result<()> {
    receive_in(sec, limits, dir, true).map(drop)
}

/// What [`receive_in`] leaves for the restore besides the image.
struct Received {
    /// Pre-copied memory in place, and the mappings handed over for the restore.
    inplace: InPlace,
    /// Pre-copy: from the first KEEP (the source is frozen) to the COMMIT.
    final_round: Option<Duration>,
    /// Pre-copy: putting the kept pages where the restore takes them, at the COMMIT.
    placing: Duration,
}

fn receive_in(sec: &mut Secure, limits: &Limits, dir: &Path, in_place: bool) -> Result<Received> {
    fs::DirBuilder::new().mode(0o700).create(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    send_now(sec, kind::READY, &[])?;
    let mut open: HashMap<u32, Incoming> = HashMap::new();
    let mut names = std::collections::HashSet::new();
    let mut total = 0u64;
    // pre-copy: the latest copy of each page sent while the tree ran, per host pid
    let mut store: HashMap<u32, PageStore> = HashMap::new();
    // (every process pages were sent for, in place or in the store: the limit counts them all)
    let mut hosts: std::collections::HashSet<u32> = std::collections::HashSet::new();
    let mut keeps: HashMap<u32, (u32, Vec<(u64, u64)>)> = HashMap::new();
    let mut inplace = InPlace::new(in_place);
    let mut first_keep: Option<Instant> = None;
    let mut payload = Vec::with_capacity(MAX_MSG);
    loop {
        let k = recv_into(sec, MAX_MSG, &mut payload)?;
        let mut f = Fields(&payload);
        match k {
            kind::FILE_BEGIN => {
                let id = f.u32()?;
                let name = String::from_utf8(f.rest().to_vec()).unwrap_or_default();
                if !valid_name(&name) {
                    bail!("refused file name {:?}", text(name.as_bytes()));
                }
                if names.len() >= limits.max_files || open.len() >= 16 {
                    bail!("more than {} files (or 16 open at once): refused", limits.max_files);
                }
                if !names.insert(name.clone()) || open.contains_key(&id) {
                    bail!("file {name} sent twice");
                }
                let path = dir.join(&name);
                let file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                open.insert(id, Incoming { name, file, len: 0, hasher: crc32fast::Hasher::new() });
            }
            kind::FILE_DATA => {
                let id = f.u32()?;
                let bytes = f.rest();
                let inc = open.get_mut(&id).context("data for a file that is not open")?;
                total += bytes.len() as u64;
                inc.len += bytes.len() as u64;
                if total > limits.max_image_bytes {
                    bail!("the image exceeds {} MiB: refused", limits.max_image_bytes >> 20);
                }
                if !inc.name.starts_with("pages-") && inc.len > limits.max_record_bytes {
                    bail!("{} exceeds {} MiB: refused", inc.name, limits.max_record_bytes >> 20);
                }
                inc.hasher.update(bytes);
                inc.file.write_all(bytes).with_context(|| format!("cannot write {} (staging area full?)", inc.name))?;
            }
            kind::FILE_END => {
                let (id, size, crc) = (f.u32()?, f.u64()?, f.u32()?);
                let inc = open.remove(&id).context("end of a file that is not open")?;
                if inc.len != size || inc.hasher.finalize() != crc {
                    bail!("{}: size or checksum mismatch", inc.name);
                }
            }
            kind::PAGES => {
                let (host, addr) = (f.u32()?, f.u64()?);
                let bytes = f.rest();
                if bytes.len() % PAGE != 0 || addr % PAGE as u64 != 0 {
                    bail!("pre-copy pages not page aligned");
                }
                if addr.checked_add(bytes.len() as u64).is_none() {
                    bail!("pre-copy pages at {addr:#x} run past the end of the address space");
                }
                total += bytes.len() as u64;
                if total > limits.max_image_bytes {
                    bail!("the image exceeds {} MiB: refused", limits.max_image_bytes >> 20);
                }
                if !hosts.contains(&host) && hosts.len() >= limits.max_processes {
                    bail!("pages of more than {} processes: refused", limits.max_processes);
                }
                hosts.insert(host);
                // At its own address if it can (inplace.rs), else in the staging file.
                let unplaced = inplace.put(host, addr, bytes);
                if let Some(st) = store.get_mut(&host).filter(|st| !st.index.is_empty()) {
                    for i in 0..bytes.len() / PAGE {
                        st.index.remove(&(addr + (i * PAGE) as u64)); // (the latest copy is elsewhere now)
                    }
                }
                for (a, b) in unplaced {
                    let st = match store.entry(host) {
                        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::hash_map::Entry::Vacant(e) => e.insert(PageStore::create(dir, host)?),
                    };
                    let at = st.len;
                    st.append(&bytes[a..b])?;
                    for i in 0..(b - a) / PAGE {
                        st.index.insert(addr + (a + i * PAGE) as u64, at + (i * PAGE) as u64);
                    }
                }
            }
            kind::KEEP => {
                let (host, image_pid) = (f.u32()?, f.u32()?);
                first_keep.get_or_insert_with(Instant::now);
                let e = keeps.entry(host).or_insert((image_pid, Vec::new()));
                while !f.0.is_empty() {
                    let (a, b) = (f.u64()?, f.u64()?);
                    if a >= b || a % PAGE as u64 != 0 || b % PAGE as u64 != 0 {
                        bail!("bad KEEP range");
                    }
                    e.1.push((a, b));
                }
            }
            kind::COMMIT => {
                if !open.is_empty() {
                    bail!("commit with files still open");
                }
                let mut inv: ferry_image::Inventory =
                    ferry_image::decode_record("inventory", ferry_image::RecordKind::Inventory, &payload)?;
                if inv.pids.len() > limits.max_processes {
                    bail!("{} processes, more than the {} allowed: refused", inv.pids.len(), limits.max_processes);
                }
                if inv.files.len() != names.len() || inv.files.iter().any(|d| !names.contains(&d.name)) {
                    bail!("the inventory does not list the files that were sent");
                }
                let final_round = first_keep.map(|t| t.elapsed());
                let mut bytes = payload.clone();
                let t = Instant::now();
                if !keeps.is_empty() {
                    let mut to_image = 0u64;
                    for (host, (image_pid, ranges)) in keeps.iter_mut() {
                        if ranges.is_empty() {
                            continue; // nothing left out: the final page file is complete
                        }
                        ranges.sort_unstable();
                        let (host, pid) = (*host, *image_pid as i32);
                        let pf = ferry_image::process_file(pid);
                        let raw = fs::read(dir.join(&pf))
                            .with_context(|| format!("KEEP for pid {pid}, which the image does not have"))?;
                        let p: ferry_image::Process =
                            ferry_image::decode_record(&pf, ferry_image::RecordKind::Process, &raw)?;
                        let vmas = p.mm.as_ref().map(|m| m.vmas.as_slice()).unwrap_or_default();
                        let staged = store.get(&host);
                        // (a kept page whose latest copy is in the staging file comes into place)
                        let mut fetch = |a: u64, ip: &InPlace| -> Result<bool> {
                            let Some((st, &off)) = staged.and_then(|st| Some((st, st.index.get(&a)?))) else {
                                return Ok(false);
                            };
                            let mut page = vec![0u8; PAGE];
                            std::os::unix::fs::FileExt::read_exact_at(&st.file, &mut page, off)
                                .context("cannot read a pre-copied page back")?;
                            ip.write(a, &page)?;
                            Ok(true)
                        };
                        let left = inplace.hand_over(host, pid, vmas, ranges, &mut fetch)?;
                        if left.is_empty() {
                            continue;
                        }
                        to_image += left.iter().map(|r| r.1 - r.0).sum::<u64>();
                        let st = match store.remove(&host) {
                            Some(st) => st,
                            None => PageStore::create(dir, host)?,
                        };
                        fill_kept(dir, &mut inv, (host, pid), &left, st, &inplace)?;
                    }
                    bytes = ferry_image::encode_record(ferry_image::RecordKind::Inventory, &inv);
                    eprintln!(
                        "serve: pre-copied pages: {} MiB handed over in place ({} MiB as huge pages, {} KiB copied into mappings made anew), {} MiB put in the image, in {} ms",
                        inplace.handed_bytes() >> 20,
                        inplace.collapsed * 2,
                        inplace.copied >> 10,
                        to_image >> 20,
                        t.elapsed().as_millis()
                    );
                }
                // What was not handed over is in the image now: the tree must not inherit it.
                inplace.drop_rest();
                let path: PathBuf = dir.join(ferry_image::INVENTORY);
                let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path)?;
                file.write_all(&bytes)?;
                return Ok(Received { inplace, final_round, placing: t.elapsed() });
            }
            kind::ABORT => bail!("the source aborted: {}", text(f.rest())),
            k => bail!("unexpected message {k}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::addr_key;
    use std::net::{IpAddr, SocketAddr};

    fn key(a: &str) -> IpAddr {
        addr_key(&a.parse::<SocketAddr>().expect("address"))
    }

    #[test]
    fn per_address_key() {
        assert_eq!(key("10.0.0.1:5"), key("10.0.0.1:6"));
        assert_ne!(key("10.0.0.1:5"), key("10.0.0.2:5"));
        // a v4 client of a dual-stack listener counts as its IPv4 address
        assert_eq!(key("[::ffff:10.0.0.1]:5"), key("10.0.0.1:7"));
        // IPv6: one /64
        assert_eq!(key("[2001:db8:1:2::1]:5"), key("[2001:db8:1:2:ffff::9]:5"));
        assert_ne!(key("[2001:db8:1:2::1]:5"), key("[2001:db8:1:3::1]:5"));
    }
}
