//! Credentials and the authenticated, encrypted channel of a migration (docs/migration.md).
//!
//! A Noise `XX` handshake (Curve25519, ChaCha20-Poly1305, BLAKE2s — the `snow` crate, pure
//! Rust): each side proves it holds the private half of a static key, and accepts the other
//! only if that key is listed in its `trusted` file. Nothing but the 8-byte cleartext header
//! and the handshake messages (at most 1 KiB each on the destination) is read from a peer
//! before it is authenticated. The destination's side ([`Responder`]) is a state machine that
//! never touches a socket, so that `ferry serve` runs every handshake at once on one thread.

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

/// What the failed checks of a handshake say (the peer sees no more than that it failed).
const AUTH_FAILED: &str =
    "authentication failed (the peer does not hold a trusted key, or the stream was tampered with)";

/// What a destination tells a source whose key it does not trust (docs/migration.md).
pub const UNTRUSTED: &str = "the destination does not trust this node's key";

/// Longest handshake message a responder reads: XX messages 1 and 3 with the empty payloads
/// every ferry sends are 32 and 64 bytes long.
pub const HANDSHAKE_MSG_MAX: usize = 1024;

fn noise_err(e: snow::Error) -> anyhow::Error {
    anyhow::anyhow!("noise handshake: {e}")
}

fn frame(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + msg.len());
    out.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// The destination's side of the handshake, driven by the caller from a non-blocking socket:
/// it sends [`Responder::new`]'s header at once, then feeds each unit it has read in full (the
/// peer's 8-byte header, then each handshake message without its 2-byte length) to
/// [`Responder::feed`]. Nothing here blocks or reads a socket.
pub struct Responder {
    ours: [u8; 8],
    state: RState,
}

enum RState {
    Header,
    Msg1(Box<snow::HandshakeState>),
    Msg3(Box<snow::HandshakeState>),
    Over,
}

/// What a responder does after a unit.
pub enum Progress {
    /// Send these bytes (already framed), then read the next message.
    Reply(Vec<u8>),
    /// The peer is authenticated and trusted: the transport keys.
    Trusted(snow::TransportState),
    /// The handshake is sound but the peer's key is not trusted: the transport keys (to tell it
    /// so, and nothing else) and what the log says.
    Untrusted(snow::TransportState, String),
}

impl Responder {
    /// A responder and the header to send first.
    pub fn new() -> (Responder, [u8; 8]) {
        let ours = header();
        (Responder { ours, state: RState::Header }, ours)
    }

    /// Take the next unit from the peer; an error ends the connection.
    pub fn feed(&mut self, auth: &Auth, unit: &[u8]) -> Result<Progress> {
        match std::mem::replace(&mut self.state, RState::Over) {
            RState::Header => {
                let theirs: &[u8; 8] = unit.try_into().context("no protocol header from the peer")?;
                check_header(theirs)?;
                let prologue = [*theirs, self.ours].concat();
                let hs = snow::Builder::new(params())
                    .local_private_key(&auth.private)
                    .map_err(noise_err)?
                    .prologue(&prologue)
                    .map_err(noise_err)?
                    .build_responder()
                    .map_err(noise_err)?;
                self.state = RState::Msg1(Box::new(hs));
                Ok(Progress::Reply(Vec::new()))
            }
            RState::Msg1(mut hs) => {
                let mut payload = [0u8; HANDSHAKE_MSG_MAX];
                hs.read_message(unit, &mut payload).map_err(|_| anyhow::anyhow!(AUTH_FAILED))?;
                let mut msg = [0u8; HANDSHAKE_MSG_MAX];
                let n = hs.write_message(&[], &mut msg).map_err(noise_err)?;
                self.state = RState::Msg3(hs);
                Ok(Progress::Reply(frame(&msg[..n])))
            }
            RState::Msg3(mut hs) => {
                let mut payload = [0u8; HANDSHAKE_MSG_MAX];
                hs.read_message(unit, &mut payload).map_err(|_| anyhow::anyhow!(AUTH_FAILED))?;
                let verdict = auth.check(hs.get_remote_static());
                let noise = hs.into_transport_mode().map_err(noise_err)?;
                Ok(match verdict {
                    Ok(()) => Progress::Trusted(noise),
                    Err(e) => Progress::Untrusted(noise, format!("{e:#}")),
                })
            }
            RState::Over => bail!("handshake already over"),
        }
    }
}

/// One transport message (framed) holding `plain` (at most 65519 bytes): what [`Secure`]
/// would send, for a connection handled without one.
pub fn seal(noise: &mut snow::TransportState, plain: &[u8]) -> Result<Vec<u8>> {
    let mut out = vec![0u8; 2 + plain.len() + TAG_LEN];
    let n = noise.write_message(plain, &mut out[2..]).map_err(|e| anyhow::anyhow!("encrypt: {e}"))?;
    out[..2].copy_from_slice(&(n as u16).to_be_bytes());
    out.truncate(2 + n);
    Ok(out)
}

impl Secure {
    /// The source's side: headers, then the three messages of XX; the destination's static key
    /// is checked against the trusted list before message 3 goes out.
    pub fn handshake(mut sock: TcpStream, auth: &Auth) -> Result<Secure> {
        let ours = header();
        sock.write_all(&ours).context("cannot send the protocol header")?;
        let mut theirs = [0u8; 8];
        sock.read_exact(&mut theirs).map_err(explain).context("no protocol header from the peer")?;
        check_header(&theirs)?;
        let prologue: Vec<u8> = [ours, theirs].concat();
        let mut hs = snow::Builder::new(params())
            .local_private_key(&auth.private)
            .map_err(noise_err)?
            .prologue(&prologue)
            .map_err(noise_err)?
            .build_initiator()
            .map_err(noise_err)?;
        let mut msg = vec![0u8; NOISE_MAX];
        let mut inbuf = Vec::new();
        let mut payload = vec![0u8; NOISE_MAX];
        let n = hs.write_message(&[], &mut msg).map_err(noise_err)?;
        send_raw(&mut sock, &msg[..n]).context("handshake")?;
        recv_raw(&mut sock, &mut inbuf).map_err(explain).context("handshake")?;
        hs.read_message(&inbuf, &mut payload).map_err(|_| anyhow::anyhow!(AUTH_FAILED))?;
        auth.check(hs.get_remote_static())?;
        let n = hs.write_message(&[], &mut msg).map_err(noise_err)?;
        send_raw(&mut sock, &msg[..n]).context("handshake")?;
        let noise = hs.into_transport_mode().map_err(noise_err)?;
        Ok(Secure::new(sock, noise))
    }

    /// The destination's side over a blocking socket, for tests and fuzzing (`ferry serve`
    /// drives the same [`Responder`] from its poll loop): the peer must be trusted.
    pub fn accept(mut sock: TcpStream, auth: &Auth) -> Result<Secure> {
        let (mut r, ours) = Responder::new();
        sock.write_all(&ours).context("cannot send the protocol header")?;
        let mut unit = vec![0u8; 8];
        sock.read_exact(&mut unit).map_err(explain).context("no protocol header from the peer")?;
        loop {
            match r.feed(auth, &unit)? {
                Progress::Reply(bytes) => {
                    sock.write_all(&bytes).context("handshake")?;
                    recv_raw(&mut sock, &mut unit).map_err(explain).context("handshake")?;
                }
                Progress::Trusted(noise) => return Ok(Secure::new(sock, noise)),
                Progress::Untrusted(_, why) => bail!("{why}"),
            }
        }
    }

    /// A connection whose handshake is over (the responder's, driven by `ferry serve`).
    pub fn new(sock: TcpStream, noise: snow::TransportState) -> Secure {
        Secure {
            sock,
            noise,
            wbuf: Vec::with_capacity(PLAIN_MAX),
            rbuf: Vec::new(),
            rpos: 0,
            frame: vec![0u8; 2 + NOISE_MAX],
            wire_sent: 0,
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Auth {
        let kp = snow::Builder::new(params()).generate_keypair().expect("keypair");
        Auth { private: kp.private, public: kp.public.clone(), trusted: vec![kp.public] }
    }

    /// The source's side of XX by hand against a [`Responder`]; returns the source's transport
    /// state and what the responder came to.
    fn run(src: &Auth, dst: &Auth) -> (snow::TransportState, Progress) {
        let (mut r, theirs) = Responder::new();
        let ours = header();
        let prologue = [ours, theirs].concat();
        let mut hs = snow::Builder::new(params())
            .local_private_key(&src.private)
            .expect("key")
            .prologue(&prologue)
            .expect("prologue")
            .build_initiator()
            .expect("initiator");
        let (mut msg, mut payload) = ([0u8; 1024], [0u8; 1024]);
        assert!(matches!(r.feed(dst, &ours).expect("header"), Progress::Reply(v) if v.is_empty()));
        let n = hs.write_message(&[], &mut msg).expect("msg 1");
        let Progress::Reply(m2) = r.feed(dst, &msg[..n]).expect("msg 1 fed") else { panic!("no message 2") };
        assert_eq!(u16::from_be_bytes([m2[0], m2[1]]) as usize, m2.len() - 2);
        hs.read_message(&m2[2..], &mut payload).expect("msg 2");
        let n = hs.write_message(&[], &mut msg).expect("msg 3");
        let p = r.feed(dst, &msg[..n]).expect("msg 3 fed");
        (hs.into_transport_mode().expect("transport"), p)
    }

    #[test]
    fn responder_accepts_a_trusted_key() {
        let (a, mut b) = (node(), node());
        b.trusted.push(a.public.clone());
        let (mut src, p) = run(&a, &b);
        let Progress::Trusted(mut dst) = p else { panic!("trusted key refused") };
        let sealed = seal(&mut dst, b"ready").expect("seal");
        let mut out = [0u8; 64];
        let n = src.read_message(&sealed[2..], &mut out).expect("open");
        assert_eq!(&out[..n], b"ready");
    }

    #[test]
    fn responder_tells_an_untrusted_key_so() {
        let (a, b) = (node(), node());
        let (mut src, p) = run(&a, &b);
        let Progress::Untrusted(mut dst, why) = p else { panic!("untrusted key accepted") };
        assert!(why.contains("not in the trusted list"), "{why}");
        let sealed = seal(&mut dst, UNTRUSTED.as_bytes()).expect("seal");
        let mut out = [0u8; 128];
        let n = src.read_message(&sealed[2..], &mut out).expect("open");
        assert_eq!(&out[..n], UNTRUSTED.as_bytes());
    }

    #[test]
    fn responder_refuses_a_bad_header_or_message() {
        let b = node();
        let (mut r, _) = Responder::new();
        assert!(r.feed(&b, b"GET / HT").is_err());
        let (mut r, _) = Responder::new();
        r.feed(&b, &header()).expect("header");
        assert!(r.feed(&b, &[0u8; 7]).is_err(), "a short message 1 was taken");
    }
}
