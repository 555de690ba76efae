//! Credentials and the authenticated, encrypted channel of a migration (docs/migration.md).
//!
//! A Noise `XX` handshake (Curve25519, ChaCha20-Poly1305, BLAKE2s — the `snow` crate, pure
//! Rust): each side proves it holds the private half of a static key, and accepts the other
//! only if that key is listed in its `trusted` file. Nothing but the 8-byte cleartext header
//! and the three handshake messages is read from a peer before it is authenticated.

use anyhow::{bail, Context, Result};
use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// The cleartext header each side sends first: magic, protocol version (big endian), reserved.
pub const MAGIC: &[u8; 4] = b"FRYM";
pub const PROTOCOL_VERSION: u16 = 2;
/// The oldest version still spoken (1: no post-copy).
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// Largest Noise message (the spec's limit) and the plaintext one can carry.
const NOISE_MAX: usize = 65535;
const TAG_LEN: usize = 16;
const PLAIN_MAX: usize = NOISE_MAX - TAG_LEN;

pub const KEY_FILE: &str = "node.key";
pub const PUB_FILE: &str = "node.pub";
pub const TRUSTED_FILE: &str = "trusted";

fn params() -> snow::params::NoiseParams {
    NOISE_PARAMS.parse().expect("valid Noise parameters")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn write_0600(path: &Path, text: &str) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all().with_context(|| format!("cannot write {}", path.display()))
}

/// `ferry keygen DIR`: a new static key pair, and a `trusted` list holding its own public key
/// (so that the same DIR copied to every node works as is). Every file is mode 0600.
pub fn keygen(dir: &Path) -> Result<String> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    if dir.join(KEY_FILE).exists() {
        bail!("{} already exists: refusing to replace a node's key", dir.join(KEY_FILE).display());
    }
    let kp = snow::Builder::new(params()).generate_keypair().map_err(|e| anyhow::anyhow!("key generation: {e}"))?;
    let public = hex(&kp.public);
    write_0600(&dir.join(KEY_FILE), &format!("{}\n", hex(&kp.private)))?;
    write_0600(&dir.join(PUB_FILE), &format!("{public}\n"))?;
    let trusted = dir.join(TRUSTED_FILE);
    if trusted.exists() {
        let mut f = fs::OpenOptions::new().append(true).open(&trusted)?;
        f.write_all(format!("{public} this node\n").as_bytes())?;
    } else {
        write_0600(
            &trusted,
            &format!(
                "# public keys of the peers this node accepts, one per line (hex; text after it is a comment)\n{public} this node\n"
            ),
        )?;
    }
    Ok(public)
}

/// A node's credentials: its key pair and the public keys it trusts.
pub struct Auth {
    private: Vec<u8>,
    pub public: Vec<u8>,
    trusted: Vec<Vec<u8>>,
}

fn read_private(path: &Path) -> Result<String> {
    let meta = fs::metadata(path).with_context(|| format!("cannot read {} (run ferry keygen)", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!("{} is readable by others (mode {:o}): chmod 600 it", path.display(), meta.permissions().mode() & 0o777);
    }
    fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

impl Auth {
    pub fn load(dir: &Path) -> Result<Auth> {
        let key = read_private(&dir.join(KEY_FILE))?;
        let private = unhex(&key).filter(|k| k.len() == 32).with_context(|| format!("{}: not a key", KEY_FILE))?;
        let pubtext = fs::read_to_string(dir.join(PUB_FILE))
            .with_context(|| format!("cannot read {}", dir.join(PUB_FILE).display()))?;
        let public = unhex(&pubtext).filter(|k| k.len() == 32).with_context(|| format!("{PUB_FILE}: not a key"))?;
        let text = read_private(&dir.join(TRUSTED_FILE))?;
        let mut trusted = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let word = line.split_whitespace().next().unwrap_or("");
            if word.is_empty() || word.starts_with('#') {
                continue;
            }
            let k = unhex(word)
                .filter(|k| k.len() == 32)
                .with_context(|| format!("{}:{}: not a public key", TRUSTED_FILE, n + 1))?;
            trusted.push(k);
        }
        if trusted.is_empty() {
            bail!("{} lists no key: no peer could be accepted", dir.join(TRUSTED_FILE).display());
        }
        Ok(Auth { private, public, trusted })
    }

    /// The node key as an image signing key (`dump --sign`): XEdDSA over the same X25519 key
    /// (crates/ferry-image/src/sign.rs), so the public key peers already trust verifies it.
    pub fn signing_key(&self) -> Result<ferry_image::sign::SigningKey> {
        let private: [u8; 32] = self.private.as_slice().try_into().context("node.key: not a key")?;
        let key = ferry_image::sign::SigningKey::from_bytes(private);
        if key.public()[..] != self.public[..] {
            bail!("{KEY_FILE} and {PUB_FILE} do not match: not one key pair");
        }
        Ok(key)
    }

    /// The trusted public keys (`restore --verify`).
    pub fn trusted_keys(&self) -> Vec<[u8; 32]> {
        self.trusted.iter().filter_map(|k| k.as_slice().try_into().ok()).collect()
    }

    fn check(&self, remote: Option<&[u8]>) -> Result<()> {
        let remote = remote.context("the peer sent no static key")?;
        if !self.trusted.iter().any(|k| k == remote) {
            bail!("peer key {} is not in the trusted list: authentication refused", hex(remote));
        }
        Ok(())
    }
}

fn header() -> [u8; 8] {
    let v = PROTOCOL_VERSION.to_be_bytes();
    [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], v[0], v[1], 0, 0]
}

fn check_header(h: &[u8; 8]) -> Result<()> {
    if &h[..4] != MAGIC {
        bail!("the peer is not a ferry migration endpoint (bad magic)");
    }
    let v = u16::from_be_bytes([h[4], h[5]]);
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&v) {
        bail!(
            "the peer speaks migration protocol version {v}, this ferry speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}"
        );
    }
    Ok(())
}

fn send_raw(sock: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| io::Error::other("noise message too long"))?;
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(msg);
    sock.write_all(&out)
}

fn recv_raw(sock: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut len = [0u8; 2];
    sock.read_exact(&mut len)?;
    buf.resize(u16::from_be_bytes(len) as usize, 0);
    sock.read_exact(buf)
}

/// Socket errors in words: a timeout shows as EAGAIN, a peer gone as an unexpected EOF.
fn explain(e: io::Error) -> io::Error {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
            io::Error::new(io::ErrorKind::TimedOut, "timed out: the peer took or sent nothing in time")
        }
        io::ErrorKind::UnexpectedEof => io::Error::new(io::ErrorKind::UnexpectedEof, "the peer closed the connection"),
        _ => e,
    }
}

/// An authenticated, encrypted connection: a byte stream in both directions, cut into Noise
/// transport messages of at most 64 KiB.
pub struct Secure {
    sock: TcpStream,
    noise: snow::TransportState,
    wbuf: Vec<u8>,
    rbuf: Vec<u8>,
    rpos: usize,
    frame: Vec<u8>,
    /// Bytes that went on the wire, headers and tags included.
    pub wire_sent: u64,
}

impl Secure {
    /// Both roles: headers, then the three messages of XX; each side checks the other's static
    /// key against its trusted list before anything else is exchanged.
    pub fn handshake(mut sock: TcpStream, auth: &Auth, initiator: bool) -> Result<Secure> {
        let ours = header();
        sock.write_all(&ours).context("cannot send the protocol header")?;
        let mut theirs = [0u8; 8];
        sock.read_exact(&mut theirs).context("no protocol header from the peer")?;
        check_header(&theirs)?;
        let prologue: Vec<u8> = if initiator { [ours, theirs].concat() } else { [theirs, ours].concat() };
        let e = |e: snow::Error| anyhow::anyhow!("noise handshake: {e}");
        let b =
            snow::Builder::new(params()).local_private_key(&auth.private).map_err(e)?.prologue(&prologue).map_err(e)?;
        let mut hs = if initiator { b.build_initiator() } else { b.build_responder() }.map_err(e)?;
        let mut msg = vec![0u8; NOISE_MAX];
        let mut inbuf = Vec::new();
        let mut payload = vec![0u8; NOISE_MAX];
        let failed = "authentication failed (the peer does not hold a trusted key, or the stream was tampered with)";
        if initiator {
            let n = hs.write_message(&[], &mut msg).map_err(e)?;
            send_raw(&mut sock, &msg[..n]).context("handshake")?;
            recv_raw(&mut sock, &mut inbuf).context("handshake: the peer closed the connection")?;
            hs.read_message(&inbuf, &mut payload).map_err(|_| anyhow::anyhow!(failed))?;
            auth.check(hs.get_remote_static())?;
            let n = hs.write_message(&[], &mut msg).map_err(e)?;
            send_raw(&mut sock, &msg[..n]).context("handshake")?;
        } else {
            recv_raw(&mut sock, &mut inbuf).context("handshake: the peer closed the connection")?;
            hs.read_message(&inbuf, &mut payload).map_err(|_| anyhow::anyhow!(failed))?;
            let n = hs.write_message(&[], &mut msg).map_err(e)?;
            send_raw(&mut sock, &msg[..n]).context("handshake")?;
            recv_raw(&mut sock, &mut inbuf).context("handshake: the peer closed the connection")?;
            hs.read_message(&inbuf, &mut payload).map_err(|_| anyhow::anyhow!(failed))?;
            auth.check(hs.get_remote_static())?;
        }
        let noise = hs.into_transport_mode().map_err(e)?;
        Ok(Secure {
            sock,
            noise,
            wbuf: Vec::with_capacity(PLAIN_MAX),
            rbuf: Vec::new(),
            rpos: 0,
            frame: vec![0u8; 2 + NOISE_MAX],
            wire_sent: 0,
        })
    }

    pub fn socket(&self) -> &TcpStream {
        &self.sock
    }

    /// Whether received bytes wait in the decrypted buffer (a poll of the socket would not see
    /// them).
    pub fn has_buffered(&self) -> bool {
        self.rpos < self.rbuf.len()
    }

    fn send_frame(&mut self, plain_len: usize) -> io::Result<()> {
        let n = self
            .noise
            .write_message(&self.wbuf[..plain_len], &mut self.frame[2..])
            .map_err(|e| io::Error::other(format!("encrypt: {e}")))?;
        self.frame[..2].copy_from_slice(&(n as u16).to_be_bytes());
        self.sock.write_all(&self.frame[..2 + n]).map_err(explain)?;
        self.wire_sent += 2 + n as u64;
        self.wbuf.drain(..plain_len);
        Ok(())
    }

    /// Queue bytes; full transport messages are sent at once.
    pub fn write(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            if self.wbuf.is_empty() && buf.len() >= PLAIN_MAX {
                // a whole message straight from the caller's bytes
                let n = self
                    .noise
                    .write_message(&buf[..PLAIN_MAX], &mut self.frame[2..])
                    .map_err(|e| io::Error::other(format!("encrypt: {e}")))?;
                self.frame[..2].copy_from_slice(&(n as u16).to_be_bytes());
                self.sock.write_all(&self.frame[..2 + n]).map_err(explain)?;
                self.wire_sent += 2 + n as u64;
                buf = &buf[PLAIN_MAX..];
                continue;
            }
            let take = (PLAIN_MAX - self.wbuf.len()).min(buf.len());
            self.wbuf.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.wbuf.len() == PLAIN_MAX {
                self.send_frame(PLAIN_MAX)?;
            }
        }
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.send_frame(self.wbuf.len())?;
        }
        Ok(())
    }

    pub fn read_exact(&mut self, mut out: &mut [u8]) -> io::Result<()> {
        while !out.is_empty() {
            if self.rpos == self.rbuf.len() {
                let mut len = [0u8; 2];
                self.sock.read_exact(&mut len).map_err(explain)?;
                let len = u16::from_be_bytes(len) as usize;
                self.sock.read_exact(&mut self.frame[..len]).map_err(explain)?;
                self.rbuf.resize(NOISE_MAX, 0);
                let n = self
                    .noise
                    .read_message(&self.frame[..len], &mut self.rbuf)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a message failed authentication"))?;
                self.rbuf.truncate(n);
                self.rpos = 0;
                continue;
            }
            let take = (self.rbuf.len() - self.rpos).min(out.len());
            out[..take].copy_from_slice(&self.rbuf[self.rpos..self.rpos + take]);
            self.rpos += take;
            out = &mut out[take..];
        }
        Ok(())
    }
}
