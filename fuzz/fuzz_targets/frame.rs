//! The migration protocol as `ferry serve` reads it from a peer, over a real loopback TCP
//! connection and the real `Secure` channel (crates/ferry/src/migrate/channel.rs).
//!
//! Input: one mode byte, then the bytes the peer sends.
//! - Mode bit 0 clear (an unauthenticated peer): the bytes go on the wire as they are, into
//!   the cleartext header check and the Noise handshake's framing. No input may get through
//!   the handshake: that would mean a peer without a trusted key was accepted.
//! - Mode bit 0 set (a peer that holds a trusted key): this target makes the handshake as the
//!   source, then sends the bytes as the plaintext of the encrypted stream, into the messages
//!   (`kind: u8, len: u32 LE, payload`) and the destination's receive loop
//!   (`migrate::serve::receive`: files, pre-copy PAGES and KEEP, COMMIT), which writes into a
//!   staging directory of this process's own.

#![no_main]

use ferry::migrate::channel::{Auth, Secure};
use ferry::migrate::serve::{receive, Limits};
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

struct Setup {
    listener: TcpListener,
    addr: SocketAddr,
    auth: Auth,
    stage: PathBuf,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
        let base = PathBuf::from(format!("{base}/ferry-fuzz-frame-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).expect("scratch directory");
        let keys = base.join("keys");
        ferry::migrate::keygen(&keys).expect("keygen");
        let auth = Auth::load(&keys).expect("keys");
        let listener = TcpListener::bind("127.0.0.1:0").expect("loopback listener");
        let addr = listener.local_addr().expect("listener address");
        Setup { listener, addr, auth, stage: base.join("stage") }
    })
}

/// Read what the destination sends until it closes the connection (so that it never blocks
/// on a full socket buffer, and its writes never meet a closed socket).
fn drain(mut s: TcpStream) {
    let mut buf = [0u8; 4096];
    while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, bytes)) = data.split_first() else { return };
    let authenticated = mode & 1 == 1;
    let s = setup();
    let client = TcpStream::connect(s.addr).expect("connect on loopback");
    let (server, _) = s.listener.accept().expect("accept on loopback");
    for t in [&client, &server] {
        t.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        t.set_write_timeout(Some(Duration::from_secs(20))).expect("timeout");
    }
    let bytes = bytes.to_vec();
    let peer = std::thread::spawn(move || {
        if authenticated {
            let mut sec = Secure::handshake(client, &setup().auth).expect("handshake with a trusted key");
            let raw = sec.socket().try_clone().expect("socket");
            // (the destination may stop reading and close before the end: not an error here)
            let _ = sec.write(&bytes).and_then(|()| sec.flush());
            let _ = raw.shutdown(Shutdown::Write);
            drain(raw);
        } else {
            let mut c = client;
            let _ = c.write_all(&bytes);
            let _ = c.shutdown(Shutdown::Write);
            drain(c);
        }
    });
    match Secure::accept(server, &s.auth) {
        Ok(mut sec) => {
            assert!(authenticated, "the handshake accepted a peer that holds no key");
            let _ = std::fs::remove_dir_all(&s.stage);
            let limits = Limits { max_image_bytes: 64 << 20, ..Limits::default() };
            if let Err(e) = receive(&mut sec, &limits, &s.stage) {
                let _ = format!("{e:#}");
            }
        }
        Err(e) => {
            assert!(!authenticated, "the handshake with a trusted key failed: {e:#}");
        }
    }
    peer.join().expect("peer thread");
});
