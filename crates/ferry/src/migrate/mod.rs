//! Live migration between nodes: `ferry keygen`, `ferry serve`, `ferry migrate`.
//!
//! The protocol is described in docs/migration.md. After the authenticated handshake
//! ([`channel`]), both sides exchange messages `kind: u8, len: u32 LE, payload` over the
//! encrypted byte stream.

use anyhow::{bail, Context, Result};
use std::io;

pub mod channel;
mod inplace;
pub mod postcopy;
pub mod serve;
pub mod source;

pub use channel::keygen;
use channel::Secure;

/// Message kinds (docs/migration.md).
pub mod kind {
    /// source -> destination: protocol version (u16 LE), mode (u8).
    pub const HELLO: u8 = 1;
    /// destination -> source: ready to receive (empty).
    pub const READY: u8 = 2;
    /// source -> destination: file id (u32 LE), name.
    pub const FILE_BEGIN: u8 = 3;
    /// source -> destination: file id (u32 LE), bytes.
    pub const FILE_DATA: u8 = 4;
    /// source -> destination: file id (u32 LE), size (u64 LE), crc32 (u32 LE).
    pub const FILE_END: u8 = 5;
    /// source -> destination: the inventory record; the image is complete.
    pub const COMMIT: u8 = 6;
    /// destination -> source: the tree runs; its root pid there (i32 LE), restore ms (u32 LE).
    pub const RESTORED: u8 = 7;
    /// destination -> source: the migration failed there; a one-line reason.
    pub const FAILED: u8 = 8;
    /// source -> destination: the source's copy is killed; the migration is over.
    pub const FINISHED: u8 = 9;
    /// source -> destination: the source gave up (and resumed its copy); a one-line reason.
    pub const ABORT: u8 = 10;
    /// pre-copy, source -> destination, while the tree runs: host pid (u32 LE), address (u64
    /// LE), page bytes (whole pages).
    pub const PAGES: u8 = 11;
    /// pre-copy, source -> destination, after the freeze: host pid (u32 LE), image pid (u32
    /// LE), then (start u64 LE, end u64 LE) ranges of pages the image leaves out and the
    /// destination fills from the PAGES it kept (their latest copy). May repeat for one pid.
    pub const KEEP: u8 = 12;
    /// post-copy, destination -> source: image pid (u32 LE), address (u64 LE) of a page a
    /// restored thread waits for.
    pub const LAZY_WANT: u8 = 13;
    /// post-copy, source -> destination: image pid (u32 LE), address (u64 LE), page bytes.
    pub const LAZY_PAGES: u8 = 14;
    /// post-copy, source -> destination: image pid (u32 LE), address (u64 LE), length (u64
    /// LE) of pages that are zero.
    pub const LAZY_ZERO: u8 = 15;
    /// post-copy, source -> destination: every page has been sent (empty).
    pub const LAZY_DONE: u8 = 16;
    /// post-copy, destination -> source: every page is in place (empty).
    pub const LAZY_COMPLETE: u8 = 17;
}

/// Migration modes as HELLO carries them.
pub mod mode {
    pub const STOP_AND_COPY: u8 = 0;
    pub const PRE_COPY: u8 = 1;
    pub const POST_COPY: u8 = 2;
}

/// Largest payload of one message: file data is cut in pieces of this size.
pub const MAX_MSG: usize = 1 << 20;

pub fn send(sec: &mut Secure, kind: u8, payload: &[u8]) -> io::Result<()> {
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    sec.write(&head)?;
    sec.write(payload)
}

/// A whole message (kind, length, payload) as [`send`] puts it on the stream.
pub fn message(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(5 + payload.len());
    m.push(kind);
    m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    m.extend_from_slice(payload);
    m
}

/// Send and push out at once (control messages).
pub fn send_now(sec: &mut Secure, kind: u8, payload: &[u8]) -> io::Result<()> {
    send(sec, kind, payload)?;
    sec.flush()
}

/// Receive one message; a payload longer than `max` is refused before it is read.
pub fn recv(sec: &mut Secure, max: usize) -> Result<(u8, Vec<u8>)> {
    let mut payload = Vec::new();
    let kind = recv_into(sec, max, &mut payload)?;
    Ok((kind, payload))
}

/// [`recv`] into a buffer that is reused from message to message (no fresh allocation, and
/// so no fresh page faults, per megabyte of image).
pub fn recv_into(sec: &mut Secure, max: usize, payload: &mut Vec<u8>) -> Result<u8> {
    let mut head = [0u8; 5];
    sec.read_exact(&mut head)?;
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > max {
        bail!("message of kind {} carries {len} bytes, more than the {max} allowed", head[0]);
    }
    payload.resize(len, 0);
    sec.read_exact(payload)?;
    Ok(head[0])
}

/// Little-endian field readers over a payload.
pub struct Fields<'a>(pub &'a [u8]);

impl Fields<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if self.0.len() < n {
            bail!("truncated message");
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().context("u16")?))
    }
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().context("u32")?))
    }
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().context("u64")?))
    }
    pub fn rest(&mut self) -> &[u8] {
        std::mem::take(&mut self.0)
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).chars().filter(|c| !c.is_control()).take(500).collect()
}
