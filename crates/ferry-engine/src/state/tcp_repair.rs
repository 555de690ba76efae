//! Established TCP connections (`dump --tcp-established`, CRIU's name), with the kernel's
//! TCP_REPAIR mode: at dump the socket is switched to repair mode through ferry's copy of it,
//! and its sequence numbers, both queues' bytes, negotiated options, window and timestamp are
//! read; the process is then killed with the socket still in repair mode, so the kernel closes
//! it without a FIN or RST and the peer notices nothing. At restore a new socket in repair mode
//! is given the same numbers, bound and "connected" without a handshake, its queues refilled,
//! and switched back to normal mode.
//!
//! Closing connections (libsoccr's way). The FINs are sequence numbers but no bytes: the
//! saved sequence numbers leave them out, the connection is rebuilt established in repair
//! mode, and its FINs are replayed in the order they came, so that the kernel's state machine
//! walks to the same state:
//! - this side's FIN (FIN_WAIT1, FIN_WAIT2, CLOSING, LAST_ACK): shutdown(SHUT_WR) in repair
//!   mode with the send queue selected puts it in the send queue as sent; it is retransmitted
//!   once repair mode is off until the peer acknowledges it (again);
//! - the peer's FIN (CLOSE_WAIT, CLOSING, LAST_ACK): a TCP segment from the peer's address
//!   (IPv4 or IPv6) with the next sequence number the socket expects, acknowledging what the
//!   peer had acknowledged but not this side's FIN, sent through a raw socket while the socket
//!   is still in repair mode (`give_fin`); it carries a mark the network lock lets through
//!   (`netlock::PASS_MARK`), and the socket's answer is dropped by the lock (the peer had
//!   that acknowledgement already). Only once every connection of the image is connected
//!   (`inet::connect_all`): where no lock holds the answer back, it must find the peer's socket.
//!
//! The order: CLOSING (both FINs crossed) replays this side's FIN first (FIN_WAIT1, then the
//! peer's FIN makes it CLOSING); LAST_ACK (the peer closed first) the peer's first (CLOSE_WAIT,
//! then the shutdown makes it LAST_ACK).
//!
//! SYN_SENT (CRIU's way, `connect_again`): the saved initial sequence number is set before
//! bind, and connect() with repair mode off sends the SYN again (dropped by the network lock
//! until the tree runs, then retransmitted); a blocking connect() the process was in restarts
//! and waits for the handshake.
//!
//! Each connection is blocked by the network lock (state/netlock.rs) before its queues are
//! read, until the restored socket leaves repair mode.

use crate::error::{Ctx, Error};
use ferry_image::TcpRepair;
use ferry_sys::consts::SO_BUF_LOCK;
use ferry_sys::inet as net;
use ferry_sys::sockopt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

const TCP_MAXSEG: i32 = 2;
const TCP_INFO: i32 = 11;
const TCP_REPAIR: i32 = 19;
const TCP_REPAIR_QUEUE: i32 = 20;
const TCP_QUEUE_SEQ: i32 = 21;
const TCP_REPAIR_OPTIONS: i32 = 22;
const TCP_TIMESTAMP: i32 = 24;
const TCP_REPAIR_WINDOW: i32 = 29;
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
const TCPI_OPT_TIMESTAMPS: u32 = 1;
const TCPI_OPT_SACK: u32 = 2;
const TCPI_OPT_WSCALE: u32 = 4;

/// Sockets switched to repair mode by this dump (ferry's copies), each with its SO_REUSEADDR
/// value of before. Unless the dump succeeds and kills the tree (`keep`), dropping this switches
/// them back, so a failed dump or `-R` leaves the connections working; and puts SO_REUSEADDR
/// back, which the kernel clears on leaving repair mode: a connection without it becomes a
/// TIME_WAIT socket that keeps the program's own listener (which has it) from binding its port
/// again, as after a restart or the restore of the `-R` image.
#[derive(Default)]
pub struct Repaired {
    socks: Vec<(OwnedFd, i32)>,
    /// Blocks their packets meanwhile; kept with them (`keep`), else removed after them.
    lock: Option<crate::state::netlock::Lock>,
    pub keep: bool,
}

impl Drop for Repaired {
    fn drop(&mut self) {
        if self.keep {
            if let Some(l) = self.lock.take() {
                l.keep();
            }
        } else {
            for (s, reuse) in &self.socks {
                if let Err(e) = sockopt::set_int(s.as_fd(), libc::IPPROTO_TCP, TCP_REPAIR, 0) {
                    tracing::error!(error = %e, "cannot switch a TCP connection back from repair mode");
                } else if *reuse != 0 {
                    if let Err(e) = sockopt::set_int(s.as_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, *reuse) {
                        tracing::error!(error = %e, "cannot set SO_REUSEADDR again on a TCP connection");
                    }
                }
            }
        }
    }
}

/// How long `connect` waits for the connection's address pair to come free: a TIME_WAIT socket
/// left by the connection's earlier life (the tree dumped with `-R` ran on and closed it) gives
/// the pair to a socket in repair mode only in a later second than its last timestamp, and
/// only where `net.ipv4.tcp_tw_reuse` allows (1; the default 2 for loopback only).
const TIME_WAIT_GRACE: std::time::Duration = std::time::Duration::from_millis(2500);

/// "Connect" a socket in repair mode to `peer` (no packet is sent). While the address pair is
/// taken (EADDRNOTAVAIL: a TIME_WAIT socket of the same connection), try again for
/// `TIME_WAIT_GRACE`, then fail saying why and what to do.
pub fn connect(obj: &str, sock: BorrowedFd<'_>, peer: &std::net::SocketAddr) -> Result<(), Error> {
    let started = std::time::Instant::now();
    loop {
        match net::connect(sock, peer) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) && started.elapsed() < TIME_WAIT_GRACE => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                return Err(Error::Invalid {
                    object: obj.into(),
                    what: format!(
                        "cannot connect to {peer}: the address pair is taken, most likely by the TIME_WAIT socket this connection left when it closed after the dump (-R); wait for it to expire (60 s), allow its reuse (sysctl net.ipv4.tcp_tw_reuse=1), or restore with --tcp-close"
                    ),
                });
            }
            Err(e) => return Err(Error::Sys { object: format!("{obj}: cannot connect to {peer}"), source: e }),
        }
    }
}

/// Room for what a peek of the send queue may return beyond its `SIOCOUTQ` bytes: the kernel
/// copies whole buffers from the first one on, and the first may start before `snd_una` (a
/// segment the peer acknowledged in part stays whole until it is retransmitted).
const SEND_PEEK_SLACK: usize = 4 << 20;

/// The sequence number that follows the last byte of queue `which` (TCP_QUEUE_SEQ: `rcv_nxt`
/// for the receive queue, `write_seq` for the send queue) and the `len` bytes before it.
fn queue(sock: BorrowedFd<'_>, which: i32, len: usize) -> std::io::Result<(u32, Vec<u8>)> {
    sockopt::set_int(sock, libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, which)?;
    let seq = sockopt::get_int(sock, libc::IPPROTO_TCP, TCP_QUEUE_SEQ)? as u32;
    if len == 0 {
        return Ok((seq, Vec::new()));
    }
    let cap = if which == TCP_SEND_QUEUE { len + SEND_PEEK_SLACK } else { len };
    let mut data = vec![0u8; cap];
    let n = net::recv(sock, &mut data, libc::MSG_PEEK | libc::MSG_DONTWAIT)?;
    if n > len && n < cap {
        // Bytes the peer has acknowledged already lead the first buffer: the queue proper is
        // the last `len` bytes.
        data.drain(..n - len);
        data.truncate(len);
    } else {
        // Short, or too long to tell where the queue starts: the caller's size check fails.
        data.truncate(n);
    }
    Ok((seq, data))
}

const ST_ESTABLISHED: u32 = 1;
const ST_SYN_SENT: u32 = 2;
/// TCP_SYN_SENT: a connect() waiting for the answer to its SYN.
pub const SYN_SENT: u32 = ST_SYN_SENT;
const ST_FIN_WAIT1: u32 = 4;
const ST_FIN_WAIT2: u32 = 5;
const ST_CLOSE_WAIT: u32 = 8;
const ST_LAST_ACK: u32 = 9;
const ST_CLOSING: u32 = 11;

/// The TCP states `--tcp-established` carries.
pub fn carried_state(state: u32) -> bool {
    matches!(
        state,
        ST_SYN_SENT | ST_ESTABLISHED | ST_FIN_WAIT1 | ST_FIN_WAIT2 | ST_CLOSE_WAIT | ST_LAST_ACK | ST_CLOSING
    )
}

/// Whether this side sent its FIN in `state` (it is then the last sequence number sent).
pub fn sent_fin(state: u32) -> bool {
    matches!(state, ST_FIN_WAIT1 | ST_FIN_WAIT2 | ST_CLOSING | ST_LAST_ACK)
}

/// Whether this side's FIN is sent and not acknowledged yet in `state` (it counts in SIOCOUTQ).
fn fin_unacked(state: u32) -> bool {
    matches!(state, ST_FIN_WAIT1 | ST_CLOSING | ST_LAST_ACK)
}

/// Whether the peer's FIN arrived in `state` (it is then the last sequence number received).
pub fn got_fin(state: u32) -> bool {
    matches!(state, ST_CLOSE_WAIT | ST_CLOSING | ST_LAST_ACK)
}

/// Save the connection `sock` (ferry's copy, taken with pidfd_getfd) and its state, read
/// once it is locked (a FIN may have arrived meanwhile); it stays in repair mode, registered
/// in `repaired`.
pub fn collect(
    pid: i32,
    obj: &str,
    sock: OwnedFd,
    peer: Option<std::net::SocketAddr>,
    repaired: &mut Repaired,
) -> Result<(TcpRepair, u32), Error> {
    let s = sock.as_fd();
    let ctx = |what: &str| format!("{obj}: {what}");
    // Nothing may reach the socket once its queues are read: lock first, then repair mode,
    // then the sizes and the queues (acknowledgements and data keep arriving until the lock
    // is in place, even with the process frozen: sizes taken before would not match the
    // sequence numbers read after, and bytes would be lost or sent twice).
    let local = net::sock_name(s).ctx(|| ctx("getsockname"))?;
    let (Some(local), Some(peer)) = (local, peer) else {
        return Err(Error::Invalid { object: obj.into(), what: "a connection without two addresses".into() });
    };
    let lock = match &mut repaired.lock {
        Some(l) => l,
        // (in the connection's network namespace: all of the tree is in its root's)
        None => repaired.lock.insert(crate::state::netlock::Lock::new(pid)?),
    };
    lock.add(&local, &peer)?;
    let lock_name = lock.name().to_string();
    let reuse = sockopt::get_int(s, libc::SOL_SOCKET, libc::SO_REUSEADDR).ctx(|| ctx("SO_REUSEADDR"))?;
    sockopt::set_int(s, libc::IPPROTO_TCP, TCP_REPAIR, 1)
        .ctx(|| ctx("cannot switch to TCP_REPAIR mode (needs CAP_NET_ADMIN)"))?;
    let s = {
        repaired.socks.push((sock, reuse));
        repaired
            .socks
            .last()
            .map(|(o, _)| o.as_fd())
            .ok_or_else(|| Error::Invalid { object: obj.into(), what: "lost socket".into() })?
    };
    let inq = net::inq(s).ctx(|| ctx("SIOCINQ"))? as usize;
    let outq = net::outq(s).ctx(|| ctx("SIOCOUTQ"))? as usize;
    let info = sockopt::get_raw(s, libc::IPPROTO_TCP, TCP_INFO, 104).ctx(|| ctx("TCP_INFO"))?;
    let byte = |i: usize| info.get(i).copied().unwrap_or(0) as u32;
    let state = byte(0);
    if !carried_state(state) {
        return Err(Error::Invalid {
            object: obj.into(),
            what: format!("the connection moved to TCP state {state} while it was saved (dump again)"),
        });
    }
    // A FIN (or SYN) not acknowledged yet counts in SIOCOUTQ but is no byte of the queue.
    let outq = if fin_unacked(state) || state == ST_SYN_SENT { outq.saturating_sub(1) } else { outq };
    if state == ST_SYN_SENT && (outq > 0 || inq > 0) {
        return Err(Error::Invalid {
            object: obj.into(),
            what: "a connection in SYN_SENT with data queued (TCP Fast Open) is not supported yet".into(),
        });
    }
    let (recv_seq, recv_queue) = queue(s, TCP_RECV_QUEUE, inq).ctx(|| ctx("cannot read the receive queue"))?;
    let (send_seq, send_queue) = queue(s, TCP_SEND_QUEUE, outq).ctx(|| ctx("cannot read the send queue"))?;
    // The FINs are sequence numbers: without them the numbers are those of an established
    // connection, which restore rebuilds and then closes half again.
    // (SYN_SENT: the SYN too, which restore sends again with this initial sequence number.)
    let send_seq = if sent_fin(state) || state == ST_SYN_SENT { send_seq.wrapping_sub(1) } else { send_seq };
    let recv_seq = if got_fin(state) { recv_seq.wrapping_sub(1) } else { recv_seq };
    let mut window = sockopt::get_raw(s, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, 20).ctx(|| ctx("TCP_REPAIR_WINDOW"))?;
    // struct tcp_repair_window's rcv_wup (at 16) may count the peer's FIN, which the restored
    // socket has not received yet (the kernel refuses a rcv_wup past rcv_nxt).
    if let Some(b) = window.get_mut(16..20) {
        let wup = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
        if (wup.wrapping_sub(recv_seq) as i32) > 0 {
            b.copy_from_slice(&recv_seq.to_ne_bytes());
        }
    }
    let timestamp = sockopt::get_int(s, libc::IPPROTO_TCP, TCP_TIMESTAMP).ctx(|| ctx("TCP_TIMESTAMP"))? as u32;
    let mss = sockopt::get_int(s, libc::IPPROTO_TCP, TCP_MAXSEG).ctx(|| ctx("TCP_MAXSEG"))? as u32;
    if recv_queue.len() != inq || send_queue.len() != outq {
        return Err(Error::Invalid {
            object: obj.into(),
            what: format!(
                "read {} of {inq} queued bytes received and {} of {outq} to send",
                recv_queue.len(),
                send_queue.len()
            ),
        });
    }
    Ok((
        TcpRepair {
            send_seq,
            recv_seq,
            send_queue,
            recv_queue,
            mss,
            snd_wscale: byte(6) & 0xf,
            rcv_wscale: byte(6) >> 4,
            options: byte(5),
            window,
            timestamp,
            lock: lock_name,
        },
        state,
    ))
}

fn fill(sock: BorrowedFd<'_>, which: i32, data: &[u8]) -> std::io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    // Make room for the whole queue (it fit in the old socket's buffer, which may have grown
    // by autotuning): the buffer size is forced, then its lock is put back as it was.
    let (get, force) = if which == TCP_SEND_QUEUE {
        (libc::SO_SNDBUF, libc::SO_SNDBUFFORCE)
    } else {
        (libc::SO_RCVBUF, libc::SO_RCVBUFFORCE)
    };
    let locks = sockopt::get_int(sock, libc::SOL_SOCKET, SO_BUF_LOCK).ok();
    let have = sockopt::get_int(sock, libc::SOL_SOCKET, get)? as usize;
    let forced = have < 2 * data.len() + (1 << 20);
    if forced {
        sockopt::set_int(sock, libc::SOL_SOCKET, force, (2 * data.len() + (1 << 20)) as i32)?;
    }
    sockopt::set_int(sock, libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, which)?;
    let mut off = 0;
    while off < data.len() {
        let end = (off + 32 * 1024).min(data.len());
        off += net::send(sock, &data[off..end], libc::MSG_DONTWAIT)?;
    }
    // The buffer size as it was (a size the program set must read back the same; the queue
    // may exceed it, as it did in the old socket), then its lock.
    if forced {
        sockopt::set_int(sock, libc::SOL_SOCKET, force, (have / 2) as i32)?;
    }
    if let Some(l) = locks {
        sockopt::set_int(sock, libc::SOL_SOCKET, SO_BUF_LOCK, l)?;
    }
    Ok(())
}

/// Before bind: repair mode and the sequence numbers of the first queued byte of each queue.
pub fn prepare_before_bind(obj: &str, sock: BorrowedFd<'_>, r: &TcpRepair) -> Result<(), Error> {
    let ctx = |what: &str| format!("{obj}: {what}");
    sockopt::set_int(sock, libc::IPPROTO_TCP, TCP_REPAIR, 1)
        .ctx(|| ctx("cannot switch to TCP_REPAIR mode (needs CAP_NET_ADMIN)"))?;
    for (which, seq, len) in
        [(TCP_RECV_QUEUE, r.recv_seq, r.recv_queue.len()), (TCP_SEND_QUEUE, r.send_seq, r.send_queue.len())]
    {
        sockopt::set_int(sock, libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, which).ctx(|| ctx("TCP_REPAIR_QUEUE"))?;
        sockopt::set_int(sock, libc::IPPROTO_TCP, TCP_QUEUE_SEQ, seq.wrapping_sub(len as u32) as i32)
            .ctx(|| ctx("TCP_QUEUE_SEQ"))?;
    }
    Ok(())
}

/// After connect (which in repair mode makes the connection established without a packet):
/// options, window, queued bytes, timestamp. Repair mode is left later (`release_all`).
pub fn finish_after_connect(obj: &str, sock: BorrowedFd<'_>, state: u32, r: &TcpRepair) -> Result<(), Error> {
    let ctx = |what: &str| format!("{obj}: {what}");
    if state == ST_SYN_SENT {
        // Nothing negotiated, nothing queued: the handshake does it all again.
        return Ok(());
    }
    let mut opts: Vec<(u32, u32)> = vec![(TCPOPT_MSS, r.mss)];
    if r.options & TCPI_OPT_WSCALE != 0 {
        opts.push((TCPOPT_WINDOW, r.snd_wscale | (r.rcv_wscale << 16)));
    }
    if r.options & TCPI_OPT_SACK != 0 {
        opts.push((TCPOPT_SACK_PERM, 0));
    }
    if r.options & TCPI_OPT_TIMESTAMPS != 0 {
        opts.push((TCPOPT_TIMESTAMP, 0));
    }
    let raw: Vec<u8> = opts.iter().flat_map(|(c, v)| c.to_ne_bytes().into_iter().chain(v.to_ne_bytes())).collect();
    sockopt::set_raw(sock, libc::IPPROTO_TCP, TCP_REPAIR_OPTIONS, &raw).ctx(|| ctx("TCP_REPAIR_OPTIONS"))?;
    if r.options & TCPI_OPT_TIMESTAMPS != 0 {
        sockopt::set_int(sock, libc::IPPROTO_TCP, TCP_TIMESTAMP, r.timestamp as i32).ctx(|| ctx("TCP_TIMESTAMP"))?;
    }
    fill(sock, TCP_SEND_QUEUE, &r.send_queue).ctx(|| ctx("cannot refill the send queue"))?;
    fill(sock, TCP_RECV_QUEUE, &r.recv_queue).ctx(|| ctx("cannot refill the receive queue"))?;
    if r.window.len() == 20 {
        sockopt::set_raw(sock, libc::IPPROTO_TCP, TCP_REPAIR_WINDOW, &r.window).ctx(|| ctx("TCP_REPAIR_WINDOW"))?;
    }
    Ok(())
}

/// SYN_SENT (CRIU's way): connect with repair mode off, which sends the SYN again with the
/// saved initial sequence number (set with TCP_QUEUE_SEQ before bind; the network lock drops
/// it until the tree runs, then it is retransmitted), without waiting; then repair mode on
/// again, as for the other connections.
pub fn connect_again(obj: &str, sock: BorrowedFd<'_>, peer: &std::net::SocketAddr) -> Result<(), Error> {
    let ctx = |what: &str| format!("{obj}: {what}");
    let flags = ferry_sys::process::status_flags(sock).ctx(|| ctx("F_GETFL"))?;
    ferry_sys::process::set_status_flags(sock, flags | libc::O_NONBLOCK).ctx(|| ctx("F_SETFL"))?;
    sockopt::set_int(sock, libc::IPPROTO_TCP, TCP_REPAIR, 0).ctx(|| ctx("cannot leave TCP_REPAIR mode"))?;
    let r = net::connect(sock, peer);
    ferry_sys::process::set_status_flags(sock, flags).ctx(|| ctx("F_SETFL"))?;
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Ok(()) => {}
        Err(e) => return Err(Error::Sys { object: ctx(&format!("cannot connect to {peer} again")), source: e }),
    }
    sockopt::set_int(sock, libc::IPPROTO_TCP, TCP_REPAIR, 1).ctx(|| ctx("cannot switch to TCP_REPAIR mode"))
}

/// Once every connection is connected (`inet::connect_all`), still in repair mode: replay the FINs of a closing
/// connection in the order they came (module doc). Returns the shutdown bits (`SHUT_RD` 1,
/// `SHUT_WR` 2) this did, which the caller leaves out.
pub fn replay_fins(obj: &str, sock: BorrowedFd<'_>, s: &ferry_image::InetSocket, r: &TcpRepair) -> Result<u32, Error> {
    let mut done = 0;
    let mine_first = sent_fin(s.state) && s.state != ST_LAST_ACK;
    if mine_first {
        send_own_fin(obj, sock)?;
        done |= 2;
    }
    if got_fin(s.state) {
        give_fin(obj, s, r)?;
        // (Loopback hands the segment over at once; another route may take a moment.)
        let want = if mine_first { ST_CLOSING } else { ST_CLOSE_WAIT };
        let mut now = 0;
        for _ in 0..200 {
            now = tcp_state(sock).ctx(|| format!("{obj}: TCP_INFO"))?;
            if now == want {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if now != want {
            return Err(Error::Invalid {
                object: obj.into(),
                what: format!("did not take its peer's FIN back (TCP state {now}, want {want})"),
            });
        }
        done |= 1;
    }
    if sent_fin(s.state) && !mine_first {
        send_own_fin(obj, sock)?;
        done |= 2;
    }
    Ok(done)
}

fn tcp_state(sock: BorrowedFd<'_>) -> std::io::Result<u32> {
    let info = sockopt::get_raw(sock, libc::IPPROTO_TCP, TCP_INFO, 104)?;
    Ok(info.first().copied().unwrap_or(0) as u32)
}

/// shutdown(SHUT_WR) in repair mode with the send queue selected: the FIN joins the send
/// queue as sent.
fn send_own_fin(obj: &str, sock: BorrowedFd<'_>) -> Result<(), Error> {
    sockopt::set_int(sock, libc::IPPROTO_TCP, TCP_REPAIR_QUEUE, TCP_SEND_QUEUE)
        .ctx(|| format!("{obj}: TCP_REPAIR_QUEUE"))?;
    net::shutdown(sock, libc::SHUT_WR).ctx(|| format!("{obj}: cannot queue its FIN again"))
}

/// Give the socket (in repair mode) its peer's FIN again: a segment from the peer's address
/// with the next sequence number the socket expects, acknowledging what the peer had
/// acknowledged (not this side's FIN), marked so that the network lock lets it in.
fn give_fin(obj: &str, s: &ferry_image::InetSocket, r: &TcpRepair) -> Result<(), Error> {
    let addr = |a: &str| {
        a.parse::<std::net::SocketAddr>()
            .map_err(|_| Error::Invalid { object: obj.into(), what: format!("bad address {a:?}") })
    };
    let (local, peer) = (addr(&s.local)?, addr(&s.peer)?);
    if !r.lock.is_empty() {
        crate::state::netlock::pass_marked(&r.lock)?;
    }
    let snd_una = r.send_seq.wrapping_sub(r.send_queue.len() as u32);
    // struct tcp_repair_window: snd_wl1, snd_wnd, ...: the window the peer offered.
    let snd_wnd = r.window.get(4..8).map_or(65535, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    let window = (snd_wnd >> r.snd_wscale).min(65535) as u16;
    let mark = Some(crate::state::netlock::PASS_MARK);
    net::send_tcp_segment(peer, local, r.recv_seq, snd_una, 0x11, window, mark)
        .ctx(|| format!("{obj}: cannot give back the peer's FIN"))
}

/// Whether `s` is a connection to put back with TCP_REPAIR (saved by `--tcp-established`, and
/// not dropped by `restore --tcp-close`).
pub fn repaired(s: &ferry_image::InetSocket) -> bool {
    s.repair.is_some() && !s.closed
}

/// Once every socket of the image exists: leave repair mode (each connection then sends a
/// window probe, which must find its peer restored already if the peer is in the image too).
pub fn release_all(procs: &[ferry_image::Process], numbers: &[Option<&[i32]>]) -> Result<(), Error> {
    let mut done = std::collections::HashSet::new();
    for (p, nums) in procs.iter().zip(numbers) {
        let Some(nums) = nums else { continue };
        for (i, f) in p.files.iter().enumerate() {
            let Some(s) = f.inet.as_ref().filter(|s| repaired(s)) else { continue };
            let n = nums.get(i).copied().unwrap_or(-1);
            if done.insert(n) {
                let obj = || format!("pid {}: {}", p.pid, f.describe);
                net::tcp_repair_off(n).ctx(|| format!("{}: cannot leave TCP_REPAIR mode", obj()))?;
                // Leaving repair mode resets SO_REUSEADDR (repair mode forced it on).
                if let Some(o) = s.opts.iter().find(|o| (o.level, o.name) == (libc::SOL_SOCKET, libc::SO_REUSEADDR)) {
                    let v = o.value.get(..4).map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    net::set_int_on(n, libc::SOL_SOCKET, libc::SO_REUSEADDR, v)
                        .ctx(|| format!("{}: cannot set SO_REUSEADDR", obj()))?;
                }
            }
        }
    }
    Ok(())
}

/// Once the tree (root `root`, as this node sees it) runs: let the connections' packets in
/// again, in the tree's network namespace (a restore that fails before keeps them blocked, so
/// that a second attempt still finds the peers waiting; a lock from a dump on another node is
/// not here).
pub fn unlock_all(procs: &[ferry_image::Process], root: i32) -> Result<(), Error> {
    let mut locks: Vec<&str> = procs.iter().flat_map(lock_names).collect();
    locks.sort_unstable();
    locks.dedup();
    for l in locks {
        crate::state::netlock::unlock(root, l)?;
    }
    Ok(())
}

/// The network locks the connections of `p` were dumped under.
pub fn lock_names(p: &ferry_image::Process) -> impl Iterator<Item = &str> {
    p.files.iter().filter_map(|f| f.inet.as_ref()?.repair.as_ref()).map(|r| r.lock.as_str()).filter(|l| !l.is_empty())
}

/// (local, peer) of every connection of the image restored with TCP_REPAIR: what a restore's
/// own network lock holds back (`netlock::Lock::hold_here`).
pub fn connections(procs: &[ferry_image::Process]) -> Vec<(std::net::SocketAddr, std::net::SocketAddr)> {
    let mut v: Vec<_> = procs
        .iter()
        .flat_map(|p| p.files.iter())
        .filter_map(|f| f.inet.as_ref().filter(|s| repaired(s)))
        .filter_map(|s| Some((s.local.parse().ok()?, s.peer.parse().ok()?)))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}
