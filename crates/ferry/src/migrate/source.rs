//! `ferry migrate`: the source side. Connect and authenticate, freeze the tree, stream its
//! image, and keep it frozen until the destination says the tree runs there; on any failure
//! before that, resume it here.

use super::channel::{Auth, Secure};
use super::{kind, mode, recv, send, send_now, text, Fields, MAX_MSG};
use anyhow::{bail, Context, Result};
use ferry_image::ImageSink;
use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The image stream: every file of the dump goes through the encrypted connection.
struct NetSink {
    sec: Secure,
    /// Image bytes handed over (file contents).
    image_bytes: u64,
    last_progress: Instant,
    started: Instant,
}

impl NetSink {
    fn progress(&mut self, force: bool) {
        if force || self.last_progress.elapsed() >= Duration::from_millis(500) {
            self.last_progress = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(1e-3);
            eprintln!(
                "migrate: sent {} MiB ({:.0} MiB/s)",
                self.sec.wire_sent >> 20,
                self.sec.wire_sent as f64 / secs / 1048576.0
            );
        }
    }
}

impl ImageSink for NetSink {
    fn begin(&mut self, id: u32, name: &str) -> io::Result<()> {
        let mut p = id.to_le_bytes().to_vec();
        p.extend_from_slice(name.as_bytes());
        send(&mut self.sec, kind::FILE_BEGIN, &p)
    }

    fn data(&mut self, id: u32, bytes: &[u8]) -> io::Result<()> {
        for piece in bytes.chunks(MAX_MSG - 4) {
            let mut head = [0u8; 9];
            head[0] = kind::FILE_DATA;
            head[1..5].copy_from_slice(&((piece.len() + 4) as u32).to_le_bytes());
            head[5..].copy_from_slice(&id.to_le_bytes());
            self.sec.write(&head)?;
            self.sec.write(piece)?;
        }
        self.image_bytes += bytes.len() as u64;
        self.progress(false);
        Ok(())
    }

    fn end(&mut self, id: u32, size: u64, crc32: u32) -> io::Result<()> {
        let mut p = id.to_le_bytes().to_vec();
        p.extend_from_slice(&size.to_le_bytes());
        p.extend_from_slice(&crc32.to_le_bytes());
        send(&mut self.sec, kind::FILE_END, &p)
    }

    fn commit(&mut self, inventory: &[u8]) -> io::Result<()> {
        send_now(&mut self.sec, kind::COMMIT, inventory)?;
        self.progress(true);
        Ok(())
    }
}

pub struct MigrateOptions<'a> {
    pub pid: i32,
    pub to: &'a str,
    pub auth: &'a Path,
    pub mode: u8,
    /// How long to wait for the destination at each step.
    pub timeout: Duration,
    /// Established TCP connections move with the tree (TCP_REPAIR), or come back closed.
    pub tcp_established: bool,
    pub tcp_close: bool,
    /// Namespace externals of the tree (`--external veth[..]`).
    pub ns: ferry_engine::state::namespaces::DumpNs,
}

/// Rounds of pre-copy while the tree runs: everything first, then what was written since, until
/// a round is small (under 4 MiB) or stops shrinking (less than 20% smaller than the previous
/// one), at most 10 rounds.
fn precopy_rounds(pid: i32, sink: &Mutex<NetSink>, rounds: &mut u32) -> Result<ferry_engine::precopy::Tracker> {
    let mut tracker =
        ferry_engine::precopy::Tracker::start(pid).with_context(|| format!("pid {pid}: cannot track its writes"))?;
    let mut prev = u64::MAX;
    for r in 0..10 {
        let t = Instant::now();
        let mut s = lock(sink);
        let sent = tracker.round(&mut |host, addr, bytes| {
            // whole pages per message
            const PIECE: usize = MAX_MSG - 4096;
            for (i, piece) in bytes.chunks(PIECE).enumerate() {
                let mut head = [0u8; 17];
                head[0] = kind::PAGES;
                head[1..5].copy_from_slice(&((piece.len() + 12) as u32).to_le_bytes());
                head[5..9].copy_from_slice(&(host as u32).to_le_bytes());
                head[9..].copy_from_slice(&(addr + (i * PIECE) as u64).to_le_bytes());
                s.sec.write(&head)?;
                s.sec.write(piece)?;
            }
            s.progress(false);
            Ok(())
        })?;
        s.sec.flush()?;
        *rounds = r + 1;
        eprintln!("migrate: pre-copy round {}: {} MiB in {} ms", r + 1, sent >> 20, t.elapsed().as_millis());
        if sent < 4 << 20 || sent.saturating_mul(10) > prev.saturating_mul(8) {
            break;
        }
        prev = sent;
    }
    Ok(tracker)
}

fn lock(s: &Mutex<NetSink>) -> std::sync::MutexGuard<'_, NetSink> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn resolve(to: &str) -> Result<SocketAddr> {
    to.to_socket_addrs()
        .with_context(|| format!("cannot resolve {to}"))?
        .next()
        .with_context(|| format!("{to}: no address"))
}

pub fn migrate(o: &MigrateOptions) -> Result<()> {
    let t0 = Instant::now();
    let pid = o.pid;
    let auth = Auth::load(o.auth)?;
    let addr = resolve(o.to)?;
    let sock =
        TcpStream::connect_timeout(&addr, Duration::from_secs(10)).with_context(|| format!("connect to {addr}"))?;
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(o.timeout))?;
    sock.set_write_timeout(Some(o.timeout))?;
    let mut sec = Secure::handshake(sock, &auth).with_context(|| format!("{addr}"))?;
    // The destination checks our key only after the handshake's last message: its verdict (a
    // refusal, or READY) is the answer to HELLO, so "authenticated" is said only then.
    let mut hello = super::channel::PROTOCOL_VERSION.to_le_bytes().to_vec();
    hello.push(o.mode);
    send_now(&mut sec, kind::HELLO, &hello).with_context(|| format!("{addr}: cannot send HELLO"))?;
    match recv(&mut sec, 4096) {
        Ok((kind::READY, _)) => {}
        Ok((kind::FAILED, why)) => bail!("{addr}: the destination refused the migration: {}", text(&why)),
        Ok((k, _)) => bail!("{addr}: unexpected message {k} from the destination"),
        Err(e) => bail!(
            "{addr}: the destination answered nothing after the handshake ({e:#}): it may not trust this node's key, or be busy"
        ),
    }
    eprintln!("migrate: {addr} authenticated");
    let sink =
        Arc::new(Mutex::new(NetSink { sec, image_bytes: 0, last_progress: Instant::now(), started: Instant::now() }));
    let dyn_sink: Arc<Mutex<dyn ImageSink>> = sink.clone();
    let mut tracker = None;
    let mut rounds = 0;
    if o.mode == mode::PRE_COPY {
        tracker = Some(precopy_rounds(pid, &sink, &mut rounds)?);
    }
    let opts = ferry_engine::dump::DumpOptions {
        pid,
        dir: "<stream>".into(),
        leave_running: false,
        tcp_close: o.tcp_close,
        tcp_established: o.tcp_established,
        skip_in_flight: false,
        shell_job: false,
        orphan_pts_master: false,
        leave_stopped: false,
        freeze_timeout: Duration::from_secs(10),
        sign: None,
        ns: o.ns.clone(),
        external: Vec::new(),
        snapshot: false,
    };
    let mut downtime = Duration::ZERO;
    let mut remote = (0i32, 0u32);
    let post_copy = o.mode == mode::POST_COPY;
    // post-copy: (lazy bytes, pages asked for, time until the last page), or why it broke
    let mut lazy: Option<Result<(u64, u64, Duration)>> = None;
    ferry_engine::postcopy::set_lazy_dump(post_copy);
    let res = ferry_engine::dump::dump_with(
        &opts,
        || {
            eprintln!("migrate: pid {pid} frozen, streaming its image");
            let t_freeze = Instant::now();
            if let Some(t) = tracker.as_mut() {
                let keeps = t.finish()?;
                let mut s = lock(&sink);
                let kept: u64 = keeps.iter().flat_map(|k| k.ranges.iter()).map(|r| r.1 - r.0).sum();
                for k in keeps {
                    for part in k.ranges.chunks(60_000) {
                        let mut p = (k.host_pid as u32).to_le_bytes().to_vec();
                        p.extend_from_slice(&(k.image_pid as u32).to_le_bytes());
                        for r in part {
                            p.extend_from_slice(&r.0.to_le_bytes());
                            p.extend_from_slice(&r.1.to_le_bytes());
                        }
                        send(&mut s.sec, kind::KEEP, &p).map_err(|e| ferry_engine::Error::Sys {
                            object: "migration: cannot send".into(),
                            source: e,
                        })?;
                    }
                }
                eprintln!(
                    "migrate: {} MiB already there and unchanged ({} ms after the freeze)",
                    kept >> 20,
                    t_freeze.elapsed().as_millis()
                );
            }
            Ok(ferry_image::ImageWriter::to_sink(dyn_sink))
        },
        |t_frozen| {
            let mut s = lock(&sink);
            eprintln!("migrate: image sent, the destination restores it (pid {pid} stays frozen here)");
            let err =
                |what: String| ferry_engine::Error::Sys { object: "migration".into(), source: io::Error::other(what) };
            match recv(&mut s.sec, 4096) {
                Ok((kind::RESTORED, p)) => {
                    downtime = t_frozen.elapsed();
                    let mut f = Fields(&p);
                    remote = (f.u32().unwrap_or(0) as i32, f.u32().unwrap_or(0));
                    if post_copy {
                        // The tree runs there now: from here on this copy is only the page
                        // store, and it dies whatever happens (see postcopy.rs).
                        let mut src = ferry_engine::postcopy::LazySource::take();
                        eprintln!(
                            "migrate: pid {pid} runs on the destination; serving its {} MiB of lazy pages",
                            src.lazy_bytes() >> 20
                        );
                        let t = Instant::now();
                        lazy = Some(src.exit_kill().map_err(anyhow::Error::new).and_then(|()| {
                            super::postcopy::serve_pages(&mut s.sec, &mut src, o.timeout)
                                .map(|(bytes, wants)| (bytes, wants, t.elapsed()))
                        }));
                    }
                    Ok(())
                }
                Ok((kind::FAILED, why)) => Err(err(format!("the destination failed: {}", text(&why)))),
                Ok((k, _)) => Err(err(format!("unexpected message {k} from the destination"))),
                Err(e) => Err(err(format!("the destination did not confirm: {e:#}"))),
            }
        },
    );
    ferry_engine::postcopy::set_lazy_dump(false);
    let mut s = lock(&sink);
    if let (Ok(_), Some(Err(e))) = (&res, &lazy) {
        let _ = send_now(&mut s.sec, kind::ABORT, format!("post-copy: {e:#}").as_bytes());
        bail!(
            "POST-COPY FAILED for pid {pid} after it resumed on {addr}: {e:#}; its memory was split between the two nodes, so the process is lost: the copy here is killed and the destination kills its own"
        );
    }
    match res {
        Ok(r) => {
            let _ = send_now(&mut s.sec, kind::FINISHED, &[]);
            let lazy_fields = match &lazy {
                Some(Ok((bytes, wants, t))) => {
                    format!(" lazy_bytes={bytes} lazy_faults={wants} lazy_ms={}", t.as_millis())
                }
                _ => String::new(),
            };
            println!(
                "migrated pid {pid} to {addr} (pid {} there): mode={} rounds={rounds} total_ms={} bytes_sent={} image_bytes={} pages_bytes={} restore_ms={} downtime_ms={}{lazy_fields}",
                remote.0,
                match o.mode {
                    mode::PRE_COPY => "pre-copy",
                    mode::POST_COPY => "post-copy",
                    _ => "stop-and-copy",
                },
                t0.elapsed().as_millis(),
                s.sec.wire_sent,
                s.image_bytes,
                r.pages_bytes,
                remote.1,
                downtime.as_millis()
            );
            for l in &r.locks {
                eprintln!(
                    "migrate: the moved TCP connections stay blocked on this node (nftables table inet {l}); once their address routes to {addr}, remove it: nft delete table inet {l}"
                );
            }
            Ok(())
        }
        Err(e) => {
            let why = format!("{e}");
            let _ = send_now(&mut s.sec, kind::ABORT, why.as_bytes());
            Err(anyhow::Error::new(e)
                .context(format!("migration of pid {pid} to {addr} failed; pid {pid} keeps running here")))
        }
    }
}
