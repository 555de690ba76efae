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
    if o.mode != mode::STOP_AND_COPY {
        bail!("only stop-and-copy migration is implemented in this version (no --pre-copy / --post-copy yet)");
    }
    let auth = Auth::load(o.auth)?;
    let addr = resolve(o.to)?;
    let sock =
        TcpStream::connect_timeout(&addr, Duration::from_secs(10)).with_context(|| format!("connect to {addr}"))?;
    sock.set_nodelay(true)?;
    sock.set_read_timeout(Some(o.timeout))?;
    sock.set_write_timeout(Some(o.timeout))?;
    let mut sec = Secure::handshake(sock, &auth, true).with_context(|| format!("{addr}"))?;
    eprintln!("migrate: {addr} authenticated");
    let mut hello = super::channel::PROTOCOL_VERSION.to_le_bytes().to_vec();
    hello.push(o.mode);
    send_now(&mut sec, kind::HELLO, &hello)?;
    match recv(&mut sec, 4096).context("waiting for the destination to get ready")? {
        (kind::READY, _) => {}
        (kind::FAILED, why) => bail!("the destination refused the migration: {}", text(&why)),
        (k, _) => bail!("unexpected message {k} from the destination"),
    }
    let sink =
        Arc::new(Mutex::new(NetSink { sec, image_bytes: 0, last_progress: Instant::now(), started: Instant::now() }));
    let dyn_sink: Arc<Mutex<dyn ImageSink>> = sink.clone();
    let opts = ferry_engine::dump::DumpOptions { pid, dir: "<stream>".into(), leave_running: false, tcp_close: false };
    let mut downtime = Duration::ZERO;
    let mut remote = (0i32, 0u32);
    let res = ferry_engine::dump::dump_with(
        &opts,
        || {
            eprintln!("migrate: pid {pid} frozen, streaming its image");
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
                    Ok(())
                }
                Ok((kind::FAILED, why)) => Err(err(format!("the destination failed: {}", text(&why)))),
                Ok((k, _)) => Err(err(format!("unexpected message {k} from the destination"))),
                Err(e) => Err(err(format!("the destination did not confirm: {e:#}"))),
            }
        },
    );
    let mut s = lock(&sink);
    match res {
        Ok(r) => {
            let _ = send_now(&mut s.sec, kind::FINISHED, &[]);
            println!(
                "migrated pid {pid} to {addr} (pid {} there): mode=stop-and-copy total_ms={} bytes_sent={} image_bytes={} pages_bytes={} restore_ms={} downtime_ms={}",
                remote.0,
                t0.elapsed().as_millis(),
                s.sec.wire_sent,
                s.image_bytes,
                r.pages_bytes,
                remote.1,
                downtime.as_millis()
            );
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
