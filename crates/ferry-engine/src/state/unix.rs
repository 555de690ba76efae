//! Unix domain sockets: stream, datagram and seqpacket; socketpairs, listeners, accepted and
//! connected sockets, names by path and abstract; the queued data with its message boundaries.
//!
//! Dump asks the kernel about every unix socket once (`NETLINK_SOCK_DIAG`: type, state, name,
//! peer inode, queue lengths, the clients waiting in each listener's accept queue) and finds
//! the image's sockets by inode. The receive queue is read from a `pidfd_getfd` copy with
//! `MSG_PEEK`, stepping with `SO_PEEK_OFF` (put back afterwards), so a failed dump or `dump -R`
//! leaves every byte where it was. Unix sockets keep nothing in a send queue: what a socket sent
//! and its peer did not read is in the peer's receive queue, so reading every receive queue
//! captures all data in flight.
//!
//! File descriptors in flight (SCM_RIGHTS): the peek installs copies of them in ferry, which
//! state/inflight.rs matches with the tree's fds or collects as files only the message holds
//! (`InFlightFd`). In a byte stream a peek glues the bytes of earlier writes to the buffer
//! (skb) carrying the fds and stops right after it, so its end is known but not its start, and
//! only a reading recvmsg shows that: the queue is taken off and sent back from the peer at
//! once (`split_stream`), and each buffer with fds becomes a message of its own. CRIU sends the
//! glued bytes with the fds, which hands a reader the fds earlier than the original would.
//!
//! Network namespaces: a unix socket is in the one it was created in (not necessarily its
//! process's: a pair made before an unshare), and sock_diag lists each namespace's own. Dump
//! lists the namespace of each process holding a socket and, for one not found there, the
//! socket's own (`SIOCGSKNS`), and records it (`UnixSocket.netns`: 0 for the tree's root's, or a
//! nested one of the image, state/nested_ns.rs; any other is refused). Restore makes each socket
//! from ferry's thread in that namespace: abstract names are bound and looked up in their
//! socket's, so the same name in two namespaces comes back twice.
//!
//! Names: a relative path is bound again in the directory it was bound in, the process's cwd
//! or root where sock_diag's socket file (device, inode) is found (`name_dir`; bound from a
//! thread with its own cwd, `unixsock::bind_in`). A socket whose file was unlinked is bound at
//! its path (whatever holds the path now steps aside for a moment), and its file renamed to a
//! hidden name through which connections and datagrams reach it until restore is done.
//!
//! Restore rebuilds the whole graph in ferry before anything is forked, in an order that makes
//! every name and connection come out as it was: pairs first (socketpair, or connect + accept on
//! a temporary listener bound to the listener's name, so the accepted end carries that name),
//! then listeners with their backlog, then the other sockets; then one-way datagram
//! connections, connections still waiting in an accept queue (their client connects to the
//! restored listener) (`prepare`). Each socketpair(), listen() and connect() there runs as the
//! process whose credentials the socket reported for its peer (state/peercred.rs); a connected
//! pair whose ends report different ones is connected again, not made as a pair. Once every
//! file of the image is open (`fill`): the queued
//! data sent again from the peer (or the sender named in each datagram) into the right receive
//! queue, with its fds, and last buffer sizes, SO_PASSCRED, shutdown and SO_PEEK_OFF.

use crate::error::{Ctx, Error};
use crate::state::peercred::Creators;
use ferry_image::{File, FileKind, InFlightFd, PeerCred, Process, UnixMessage, UnixSocket};
use ferry_sys::sockopt;
use ferry_sys::unixsock as us;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

const UDIAG_SHOW_NAME: u32 = 1;
const UDIAG_SHOW_VFS: u32 = 2;
const UDIAG_SHOW_PEER: u32 = 4;
const UDIAG_SHOW_ICONS: u32 = 8;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_VFS: u16 = 1;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_ICONS: u16 = 3;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;

const TCP_ESTABLISHED: u32 = 1;
const TCP_LISTEN: u32 = 10;

/// What sock_diag says about one unix socket.
#[derive(Debug, Clone, Default)]
struct Diag {
    ty: u32,
    state: u32,
    name: Vec<u8>,
    /// (device, inode) of the socket file, for a socket bound to a path by itself.
    vfs: Option<(u32, u32)>,
    /// `Some(0)`: connected to a peer that has no inode (closed, or a connection not accepted yet).
    peer: Option<u32>,
    icons: Vec<u32>,
    /// Bytes queued for reading (datagrams: the first one only); a listener's accept queue length.
    rqueue: u32,
    /// Bytes sent and not read yet; a listener's backlog.
    wqueue: u32,
    shutdown: u32,
    /// The network namespace it is in (sock_diag lists each namespace's own), by inode.
    netns: u64,
}

/// Every unix socket of the network namespaces the tree's sockets are in, each namespace read
/// once per dump on first use.
#[derive(Default)]
pub struct Table {
    socks: HashMap<u32, Diag>,
    /// The network namespaces listed so far, by inode.
    listed: std::collections::HashSet<u64>,
    /// Client inode -> listener inode, for connections waiting in an accept queue.
    listener_of: HashMap<u32, u32>,
    /// Fds in flight in the receive queues read so far: (socket inode, (message index, ferry's
    /// copies of its fds)), matched with the tree's fds by state/inflight.rs.
    in_flight: Vec<(u32, Rights)>,
    /// ferry's copies of the files only in flight, kept until the dump ends.
    held: Vec<OwnedFd>,
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    b.get(o..o + 4).map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

impl Table {
    /// List the network namespace of `pid`, a process of the tree (sock_diag answers for the
    /// namespace of the asking socket), if not listed yet.
    fn load(&mut self, pid: i32) -> Result<(), Error> {
        let path = crate::procfs::path(pid, "ns/net");
        let ns = std::fs::File::open(&path).ctx(|| format!("cannot open {}", path.display()))?;
        self.load_ns(ns.as_fd())
    }

    /// List the network namespace `ns`, if not listed yet.
    fn load_ns(&mut self, ns: BorrowedFd<'_>) -> Result<(), Error> {
        let netns = ferry_sys::process::fstat(ns).ctx(|| "cannot stat a network namespace".into())?.st_ino;
        if !self.listed.contains(&netns) {
            let show = UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN;
            let msgs = crate::state::netns::in_netns(ns, || {
                us::unix_diag_dump(show).ctx(|| "sock_diag dump of unix sockets".into())
            })?;
            self.listed.insert(netns);
            for m in msgs {
                let mut d = Diag { ty: m.ty as u32, state: m.state as u32, netns, ..Default::default() };
                for (ty, v) in m.attrs {
                    match ty {
                        UNIX_DIAG_NAME => d.name = v,
                        UNIX_DIAG_VFS => d.vfs = u32_at(&v, 0).zip(u32_at(&v, 4)).map(|(ino, dev)| (dev, ino)),
                        UNIX_DIAG_PEER => d.peer = u32_at(&v, 0),
                        UNIX_DIAG_ICONS => d.icons = v.chunks_exact(4).filter_map(|c| u32_at(c, 0)).collect(),
                        UNIX_DIAG_RQLEN => {
                            d.rqueue = u32_at(&v, 0).unwrap_or(0);
                            d.wqueue = u32_at(&v, 4).unwrap_or(0);
                        }
                        UNIX_DIAG_SHUTDOWN => d.shutdown = v.first().copied().unwrap_or(0) as u32,
                        _ => {}
                    }
                }
                for &c in &d.icons {
                    self.listener_of.insert(c, m.ino);
                }
                self.socks.insert(m.ino, d);
            }
        }
        Ok(())
    }

    /// Socket `ino` (ferry's copy `copy`) of `pid`, looked for in the process's network
    /// namespace, then in the one the socket itself is in (created before the process moved, or
    /// passed from another namespace): `SIOCGSKNS` on the copy.
    fn find(&mut self, pid: i32, copy: BorrowedFd<'_>, ino: u32) -> Result<Option<&Diag>, Error> {
        self.load(pid)?;
        if !self.socks.contains_key(&ino) {
            // (Not a socket that has a network namespace: not a unix socket either.)
            if let Ok(ns) = ferry_sys::ns::socket_netns(copy) {
                self.load_ns(ns.as_fd())?;
            }
        }
        Ok(self.socks.get(&ino))
    }

    fn get(&self, ino: u32) -> Option<&Diag> {
        self.socks.get(&ino)
    }

    /// The fds in flight of the queues read since the last call: (socket inode, (message
    /// index, ferry's copies of its fds)).
    pub fn take_in_flight(&mut self) -> Vec<(u32, Rights)> {
        std::mem::take(&mut self.in_flight)
    }

    /// Keep ferry's copies of files only in flight open until the dump ends.
    pub fn keep_copies(&mut self, copies: impl Iterator<Item = OwnedFd>) {
        self.held.extend(copies);
    }
}

/// Parse "socket:[1234]".
fn socket_ino(link: &str) -> Option<u32> {
    link.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// Is socket `link` of `pid` (ferry's copy `copy`) a unix socket?
pub fn is_unix(table: &mut Table, pid: i32, copy: BorrowedFd<'_>, link: &str) -> Result<bool, Error> {
    match socket_ino(link) {
        Some(ino) => match table.find(pid, copy, ino) {
            Ok(d) => Ok(d.is_some()),
            Err(e) => {
                // Without sock_diag (no unix_diag in this kernel) the socket is refused as unknown.
                tracing::warn!(error = %e, "cannot list unix sockets");
                Ok(false)
            }
        },
        None => Ok(false),
    }
}

fn type_name(ty: u32) -> &'static str {
    match ty as i32 {
        libc::SOCK_STREAM => "stream",
        libc::SOCK_DGRAM => "dgram",
        libc::SOCK_SEQPACKET => "seqpacket",
        _ => "unknown-type",
    }
}

/// A name for messages: "@abstract" or the path.
pub fn show_name(name: &[u8]) -> String {
    match name.split_first() {
        None => "(unnamed)".into(),
        Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
        Some(_) => String::from_utf8_lossy(trim_path(name)).into_owned(),
    }
}

/// A path name without its trailing NUL bytes.
fn trim_path(name: &[u8]) -> &[u8] {
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    &name[..end]
}

fn is_path(name: &[u8]) -> bool {
    name.first().is_some_and(|&b| b != 0)
}

fn path_of(name: &[u8]) -> std::path::PathBuf {
    use std::os::unix::ffi::OsStrExt;
    std::path::PathBuf::from(std::ffi::OsStr::from_bytes(trim_path(name)))
}

/// The directory a relative socket name was bound in: the working directory or the root of
/// `pid` if the socket file `vfs` (sock_diag's device, inode) is there under that name.
fn bind_dir(pid: i32, name: &[u8], (dev, ino): (u32, u32)) -> Option<String> {
    ["cwd", "root"].into_iter().find_map(|which| {
        let m = std::fs::symlink_metadata(crate::procfs::path(pid, which).join(path_of(name))).ok()?;
        let same = m.ino() == ino as u64 && libc::major(m.dev()) == dev >> 20 && libc::minor(m.dev()) == dev & 0xfffff;
        same.then(|| crate::procfs::read_link(pid, which).ok()).flatten()
    })
}

/// The address to reach socket `u` by (connect, sendto) and its socket file's path: its name,
/// or for a relative name, the name under the directory it was bound in.
fn conn_addr(u: &UnixSocket) -> Vec<u8> {
    if !is_path(&u.name) || u.name[0] == b'/' || u.name_dir.is_empty() {
        return u.name.clone();
    }
    let mut a = u.name_dir.trim_end_matches('/').as_bytes().to_vec();
    a.push(b'/');
    a.extend_from_slice(trim_path(&u.name));
    a
}

/// Collect the unix socket behind fd `fd` of `pid` (its link is `link`, ferry's copy `c`) into
/// `f`. `pids`: the processes of the tree (where the peer of a stream with fds in flight is
/// looked for).
pub fn collect(
    (pid, fd, c): (i32, i32, BorrowedFd<'_>),
    link: &str,
    table: &mut Table,
    pids: &HashSet<i32>,
    f: &mut File,
) -> Result<(), Error> {
    let ino = socket_ino(link).unwrap_or(0);
    let d = table.find(pid, c, ino)?.cloned().unwrap_or_default();
    let unsupported = |what: String| Error::Unsupported {
        pid,
        what: format!("fd {fd}: unix {} socket:[{ino}] {what}", type_name(d.ty)),
    };
    if !matches!(d.ty as i32, libc::SOCK_STREAM | libc::SOCK_DGRAM | libc::SOCK_SEQPACKET) {
        return Err(unsupported("of this type".into()));
    }
    // (netns: the namespace's inode until `place_in_netns` tells the root's from nested ones)
    let mut u =
        UnixSocket { ino, sock_type: d.ty, state: d.state, name: d.name.clone(), netns: d.netns, ..Default::default() };
    let owner = std::fs::metadata(crate::procfs::path(pid, &format!("fd/{fd}")))
        .map_err(|e| Error::Sys { object: format!("pid {pid} fd {fd}: cannot stat its socket"), source: e })?;
    (u.owner_uid, u.owner_gid) = (owner.uid(), owner.gid());
    if is_path(&d.name) && d.name[0] != b'/' {
        // A relative name: sock_diag gives it as bound. Its directory is the working directory
        // or the root of the process if the socket file is found there (as CRIU looks); an
        // accepted socket carrying such a name only needs a place to bind a temporary listener
        // of that name at restore: its working directory.
        u.name_dir = match d.vfs {
            Some(vfs) => bind_dir(pid, &d.name, vfs).ok_or_else(|| {
                unsupported(format!(
                    "bound to the relative path {}, whose socket file is neither in the working directory nor the root of the process (unlinked, or the process moved since bind)",
                    show_name(&d.name)
                ))
            })?,
            None => crate::procfs::read_link(pid, "cwd")?,
        };
    }
    // Does the socket hold its name itself, or carry its listener's (accepted)? A path-bound
    // socket has a socket file (vfs). For abstract names: listeners and datagram sockets bound;
    // of a connected pair the accepted end is the newer socket (created by connect()).
    u.bound = if d.name.is_empty() {
        false
    } else if is_path(&d.name) {
        d.vfs.is_some()
    } else if d.state == TCP_ESTABLISHED && d.ty as i32 != libc::SOCK_DGRAM {
        match d.peer {
            // A client still waiting to be accepted bound its name itself.
            _ if table.listener_of.contains_key(&ino) => true,
            Some(0) => false,
            Some(p) => table.get(p).is_some_and(|pd| !pd.name.is_empty() && p > ino),
            None => true,
        }
    } else {
        true
    };
    if let (true, Some((dev, vino))) = (is_path(&d.name), d.vfs) {
        // The socket file may have been unlinked (or replaced) since bind.
        let md = std::fs::symlink_metadata(crate::procfs::in_root(pid, &path_of(&conn_addr(&u)).to_string_lossy()))
            .ok()
            .filter(|m| {
                // sock_diag reports the kernel's dev_t (major << 20 | minor).
                m.ino() == vino as u64 && libc::major(m.dev()) == dev >> 20 && libc::minor(m.dev()) == dev & 0xfffff
            });
        u.unlinked = md.is_none();
        if let Some(m) = md {
            (u.file_mode, u.file_uid, u.file_gid) = (m.mode() & 0o7777, m.uid(), m.gid());
            (u.file_dev, u.file_ino) = (m.dev(), m.ino());
        }
    }
    match d.peer {
        Some(0) => {
            if let Some(&l) = table.listener_of.get(&ino) {
                if d.wqueue > 0 {
                    return Err(unsupported(
                        "sent data on a connection its listener has not accepted yet (it cannot be read back)".into(),
                    ));
                }
                u.listener = l;
            } else {
                u.peer_dead = true;
            }
        }
        Some(p) => {
            u.peer = p;
            u.peer_name = table.get(p).map(|pd| pd.name.clone()).unwrap_or_default();
        }
        None => {}
    }
    let obj = || format!("pid {pid} fd {fd} (unix socket:[{ino}])");
    u.passcred = sockopt::get_int(c, libc::SOL_SOCKET, libc::SO_PASSCRED).ctx(obj)? != 0;
    u.rcvbuf = sockopt::get_int(c, libc::SOL_SOCKET, libc::SO_RCVBUF).ctx(obj)? as u32;
    u.sndbuf = sockopt::get_int(c, libc::SOL_SOCKET, libc::SO_SNDBUF).ctx(obj)? as u32;
    u.rcvtimeo_us = sockopt::get_timeout_us(c, libc::SO_RCVTIMEO).ctx(obj)?;
    u.sndtimeo_us = sockopt::get_timeout_us(c, libc::SO_SNDTIMEO).ctx(obj)?;
    crate::state::peercred::collect(c, &mut u).ctx(obj)?;
    (u.filter, u.filter_locked) =
        crate::state::sockfilter::collect(c).map_err(|what| unsupported(format!("with {what}")))?;
    u.shutdown = d.shutdown;
    if d.state == TCP_LISTEN {
        u.backlog = d.wqueue;
        u.pending = d.icons.clone();
        u.peek_off = -1;
    } else {
        u.peek_off = sockopt::get_int(c, libc::SOL_SOCKET, libc::SO_PEEK_OFF).ctx(obj)?;
        // (A peek skips an out-of-band byte, and a read that passes it drops it: the image
        // would lack it, and `split_stream` would take it from the process.)
        if d.ty as i32 == libc::SOCK_STREAM && us::oob_pending(c).ctx(obj)? {
            return Err(unsupported("with an out-of-band byte pending (sent with MSG_OOB, not read yet)".into()));
        }
        let queue = read_queue(c, d.ty as i32, u.peek_off, (d.shutdown & 1 != 0, d.rqueue as usize), &obj);
        let (mut queue, mut rights) = queue.ctx(obj)?;
        if d.ty as i32 == libc::SOCK_STREAM && !rights.is_empty() {
            // Where each buffer carrying fds starts: only a read tells (see `split_stream`).
            let n: usize = rights.iter().map(|(_, f)| f.len()).sum();
            let refuse = |why: String| {
                unsupported(format!(
                    "has {n} file descriptor(s) in flight (SCM_RIGHTS) in its byte stream and {why}: where the bytes carrying them start can only be read by taking the queue off and sending it back from the peer"
                ))
            };
            let peer = stream_peer(&d, pids).map_err(refuse)?;
            (queue, rights) =
                split_stream(c, peer.as_fd(), u.peek_off, (&queue, &rights), &obj).map_err(|e| match e {
                    Split::Refused(why) => refuse(why),
                    Split::Sys(e) => e,
                })?;
        }
        if !rights.is_empty() {
            table.in_flight.push((ino, rights));
        }
        if d.ty as i32 != libc::SOCK_DGRAM {
            let total: usize = queue.iter().map(|m| m.data.len()).sum();
            if total != d.rqueue as usize {
                return Err(Error::Invalid {
                    object: obj(),
                    what: format!("read {total} queued bytes, the kernel reports {}", d.rqueue),
                });
            }
        }
        u.queue = queue;
    }
    let mut describe = format!("unix {} socket:[{ino}] {}", type_name(d.ty), show_name(&d.name));
    if d.state == TCP_LISTEN {
        describe += &format!(", listening (backlog {}, {} waiting)", u.backlog, u.pending.len());
    } else if u.peer != 0 {
        describe += &format!(", connected to socket:[{}]", u.peer);
    } else if u.peer_dead {
        describe += ", peer closed";
    } else if u.listener != 0 {
        describe += &format!(", waiting to be accepted by socket:[{}]", u.listener);
    }
    if !u.queue.is_empty() {
        let bytes: usize = u.queue.iter().map(|m| m.data.len()).sum();
        describe += &format!(", {} queued message(s) of {bytes} bytes", u.queue.len());
    }
    f.describe = describe;
    f.unix = Some(u);
    Ok(())
}

/// A socket at fd 0-2 stays inherited (ferry hands over its own fd at restore) unless it is a
/// unix socket connected to a socket of the image, which `finish` decides once the whole tree
/// is collected: collect it as far as possible and mark it.
pub fn collect_stdio(
    (pid, fd, c): (i32, i32, BorrowedFd<'_>),
    link: &str,
    table: &mut Table,
    pids: &HashSet<i32>,
    f: &mut File,
) -> Result<(), Error> {
    if !is_unix(table, pid, c, link)? {
        return Ok(());
    }
    let mut probe = f.clone();
    match collect((pid, fd, c), link, table, pids, &mut probe) {
        Ok(()) => {
            if let Some(u) = probe.unix.as_mut() {
                u.stdio = true;
            }
            probe.kind = FileKind::UnixSocket as i32;
            *f = probe;
        }
        Err(e) => tracing::debug!(pid, fd, error = %e, "socket at fd 0-2 stays inherited"),
    }
    Ok(())
}

/// The copies of the fds in flight of a receive queue's messages that carry some, by message
/// index.
pub type Rights = Vec<(usize, Vec<OwnedFd>)>;

/// The messages of a receive queue, and its fds in flight.
type Queue = (Vec<UnixMessage>, Rights);

/// Peek at the whole receive queue of a socket (a copy of the target's): one message per
/// datagram/record, a stream's bytes in one per sender, and the bytes up to the end of each
/// stream buffer carrying fds in one with them (where that buffer starts is for
/// `split_stream`). `SO_PEEK_OFF` is put back to `old_off` whatever happens.
///
/// A seqpacket socket that can receive no more (`shut_rd`: its peer closed or shut down) answers
/// an empty queue with a zero-length "end of file" rather than EAGAIN: once every queued byte
/// (`rqueue`) was seen, a zero-length answer ends the queue.
fn read_queue(
    c: BorrowedFd<'_>,
    ty: i32,
    old_off: i32,
    (shut_rd, rqueue): (bool, usize),
    obj: &dyn Fn() -> String,
) -> std::io::Result<Queue> {
    // SO_PASSCRED on for the peek (put back afterwards): each message's sender credentials come
    // with it, and a stream peek stops where they change (the kernel never glues the bytes of
    // different senders into one read then), which gives the boundaries a reader sees.
    let old_passcred = sockopt::get_int(c, libc::SOL_SOCKET, libc::SO_PASSCRED)?;
    sockopt::set_int(c, libc::SOL_SOCKET, libc::SO_PASSCRED, 1)?;
    if let Err(e) = sockopt::set_int(c, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0) {
        let _ = sockopt::set_int(c, libc::SOL_SOCKET, libc::SO_PASSCRED, old_passcred);
        return Err(e);
    }
    let r = (|| -> std::io::Result<Queue> {
        let mut out = Vec::new();
        let mut rights = Vec::new();
        let mut cap = 256 * 1024;
        let mut seen = 0;
        loop {
            let off = sockopt::get_int(c, libc::SOL_SOCKET, libc::SO_PEEK_OFF)?;
            let Some(p) = us::peek(c, cap)? else { break };
            let stream = ty == libc::SOCK_STREAM;
            if stream && p.data.is_empty() {
                break;
            }
            if !stream && p.len > p.data.len() {
                // A datagram bigger than the buffer: read it again, whole.
                sockopt::set_int(c, libc::SOL_SOCKET, libc::SO_PEEK_OFF, off)?;
                cap = p.len;
                continue;
            }
            if ty == libc::SOCK_SEQPACKET && shut_rd && p.len == 0 && seen >= rqueue {
                break;
            }
            seen += p.data.len();
            let from = if stream { Vec::new() } else { p.from };
            let m = with_cred(UnixMessage { data: p.data, from, ..Default::default() }, p.cred);
            let last_plain = rights.last().is_none_or(|(i, _)| i + 1 != out.len());
            match out.last_mut() {
                // A stream: the bytes of one sender in a row are one message (a peek may stop
                // earlier), but a peek that brings fds stops right after their buffer, whose
                // bytes stay apart; a datagram or record is one message by itself.
                Some(last) if stream && p.fds.is_empty() && last_plain && same_sender(last, &m) => {
                    last.data.extend_from_slice(&m.data);
                    continue;
                }
                _ => {}
            }
            if !p.fds.is_empty() {
                rights.push((out.len(), p.fds));
            }
            out.push(m);
            if out.len() > 1_000_000 {
                tracing::warn!(object = obj(), "more than a million queued datagrams");
                return Err(std::io::Error::from_raw_os_error(libc::E2BIG));
            }
        }
        Ok((out, rights))
    })();
    let put_back = sockopt::set_int(c, libc::SOL_SOCKET, libc::SO_PEEK_OFF, old_off);
    let passcred_back = sockopt::set_int(c, libc::SOL_SOCKET, libc::SO_PASSCRED, old_passcred);
    let out = r?;
    put_back?;
    passcred_back?;
    Ok(out)
}

/// `m` with the sender's credentials of a peek (pid as ferry sees it: `finish` tells a process
/// of the tree). Pid 0: the kernel recorded none (it does only when the sender or the receiver
/// had SO_PASSCRED on at the time), and a message resent without any gets none either.
fn with_cred(m: UnixMessage, cred: Option<libc::ucred>) -> UnixMessage {
    match cred {
        Some(c) if c.pid != 0 => {
            UnixMessage { has_cred: true, sender_pid: c.pid, sender_uid: c.uid, sender_gid: c.gid, ..m }
        }
        _ => m,
    }
}

fn same_sender(a: &UnixMessage, b: &UnixMessage) -> bool {
    (a.has_cred, a.sender_pid, a.sender_uid, a.sender_gid) == (b.has_cred, b.sender_pid, b.sender_uid, b.sender_gid)
}

/// Why a stream's fds in flight could not be placed: refused (why, for the message), or a
/// system error.
enum Split {
    Refused(String),
    Sys(Error),
}

/// The largest buffer (skb) unix_stream_sendmsg makes: SKB_MAX_HEAD(0) + UNIX_SKB_FRAGS_SZ,
/// about 36 KiB with 4 KiB pages, 128 KiB with 64 KiB pages; with room to spare. A buffer
/// carrying fds starts at most this far before its end.
const STREAM_BUF_MAX: usize = 256 * 1024;

/// A copy of the peer of stream socket `d` (whose queue holds fds in flight), from a process of
/// the tree (`pids`) holding it; why not, for the refusal.
fn stream_peer(d: &Diag, pids: &HashSet<i32>) -> Result<OwnedFd, String> {
    let peer = match d.peer {
        Some(p) if p != 0 => p,
        _ => return Err("its peer is closed".into()),
    };
    if d.shutdown & 1 != 0 {
        return Err("it is shut down for reading (or its peer for writing)".into());
    }
    let want = format!("socket:[{peer}]");
    let mut sorted: Vec<i32> = pids.iter().copied().collect();
    sorted.sort_unstable();
    for pid in sorted {
        let Ok(dir) = std::fs::read_dir(crate::procfs::path(pid, "fd")) else { continue };
        for e in dir.flatten() {
            let Some(fd) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
            if std::fs::read_link(e.path()).is_ok_and(|l| l.as_os_str() == want.as_str()) {
                let copy = ferry_sys::process::pidfd_open(pid)
                    .and_then(|p| ferry_sys::process::pidfd_getfd(p.as_fd(), fd))
                    .map_err(|e| format!("its peer {want} at pid {pid} fd {fd} cannot be copied ({e})"))?;
                return Ok(copy);
            }
        }
    }
    Err(format!("its peer {want} is held by no process of the dump (only in flight, or outside it)"))
}

/// A stream's queue with fds in flight, in the messages a reader would see: where a buffer
/// (skb) carrying fds starts cannot be peeked (a peek glues earlier bytes to it, and even a
/// one-byte peek before it brings its fds: unix_stream_read_generic's MSG_PEEK path goes on
/// to the next buffers once its size is used up, until one carries fds), but a read of one
/// byte gets them exactly when that byte is the buffer's first. So the queue is taken off
/// (`c`, the receiving socket, frozen with its whole tree): in large reads up to
/// `STREAM_BUF_MAX` before the end of each buffer with fds (a peek stops right after one), then
/// one byte at a time until the fds come, then the rest of that buffer; and sent straight back
/// from the peer (`peer`), each piece with one sendmsg, its fds and its sender's credentials,
/// so the queue holds the same bytes, in buffers starting and ending with fds where they did.
/// The result is that list of messages: plain bytes (one per sender in a row), and each buffer
/// carrying fds by itself with them, checked against the peek (`peeked`).
///
/// Meanwhile the peer's send buffer is raised (one sendmsg puts a whole buffer back) and
/// SO_PASSCRED/SO_PASSPIDFD are off on both ends (bytes that had no credentials get none);
/// they, and `SO_PEEK_OFF` (`old_off`), are put back after.
fn split_stream(
    c: BorrowedFd<'_>,
    peer: BorrowedFd<'_>,
    old_off: i32,
    (peeked, peeked_rights): (&[UnixMessage], &Rights),
    obj: &dyn Fn() -> String,
) -> Result<Queue, Split> {
    let sys =
        |what: &str, e: std::io::Error| Split::Sys(Error::Sys { object: format!("{}: {what}", obj()), source: e });
    // Where each buffer with fds ends, and how many it carries.
    let mut ends: Vec<(usize, usize)> = Vec::new();
    let mut total = 0;
    for (i, m) in peeked.iter().enumerate() {
        total += m.data.len();
        if let Some((_, fds)) = peeked_rights.iter().find(|(j, _)| *j == i) {
            ends.push((total, fds.len()));
        }
    }
    // Credentials go back as they were: the kernel takes a pid only if it exists.
    if let Some(m) = peeked.iter().find(|m| m.has_cred && ferry_sys::process::pidfd_open(m.sender_pid).is_err()) {
        return Err(Split::Refused(format!(
            "a sender of its queued bytes (SCM_CREDENTIALS), pid {}, has exited",
            m.sender_pid
        )));
    }
    let get = |s: BorrowedFd<'_>, opt: i32| sockopt::get_int(s, libc::SOL_SOCKET, opt);
    let opts = |s: BorrowedFd<'_>| -> std::io::Result<(i32, i32)> {
        // (SO_PASSPIDFD: since Linux 6.5.)
        Ok((get(s, libc::SO_PASSCRED)?, get(s, libc::SO_PASSPIDFD).unwrap_or(0)))
    };
    let (own, theirs) =
        (opts(c).map_err(|e| sys("SO_PASSCRED", e))?, opts(peer).map_err(|e| sys("its peer's SO_PASSCRED", e))?);
    let sndbuf = get(peer, libc::SO_SNDBUF).map_err(|e| sys("its peer's SO_SNDBUF", e))?;
    let set = |s: BorrowedFd<'_>, opt: i32, v: i32| sockopt::set_int(s, libc::SOL_SOCKET, opt, v);
    let set_opts = |s: BorrowedFd<'_>, (cred, pidfd): (i32, i32)| -> std::io::Result<()> {
        set(s, libc::SO_PASSCRED, cred)?;
        if pidfd != 0 || get(s, libc::SO_PASSPIDFD).is_ok_and(|v| v != 0) {
            set(s, libc::SO_PASSPIDFD, pidfd)?;
        }
        Ok(())
    };
    // Every fd taken off stays in ferry until it is sent back: one that does not fit in its fd
    // table would be closed by the kernel, lost to the process (`Peeked::truncated`).
    let n: usize = ends.iter().map(|&(_, k)| k).sum();
    let room = ferry_sys::process::fd_room().map_err(|e| sys("ferry's fd table", e))?;
    if room < n + 16 {
        return Err(sys(
            &format!(
                "{n} fds in flight to take off its queue, and ferry has room for {room} more (raise its RLIMIT_NOFILE)"
            ),
            std::io::Error::from_raw_os_error(libc::EMFILE),
        ));
    }
    // 1. Take the queue off (SO_PASSCRED on: each read's sender credentials come with it, and a
    // read stops where they change).
    let mut taken: Vec<(usize, us::Peeked)> = Vec::new();
    let took = (|| -> std::io::Result<()> {
        set_opts(peer, (0, 0))?;
        set_opts(c, (1, 0))?;
        let (mut pos, mut next, mut seen) = (0, 0, false);
        loop {
            let size = match ends.get(next) {
                Some(&(e, _)) if pos >= e => {
                    (next, seen) = (next + 1, false);
                    continue;
                }
                Some(&(e, _)) if pos + STREAM_BUF_MAX < e => e - STREAM_BUF_MAX - pos,
                Some(&(e, _)) if seen => e - pos,
                Some(_) => 1,
                None => total.saturating_sub(pos).max(1),
            };
            let Some(t) = us::take(c, size.min(4 << 20))? else { break };
            if t.data.is_empty() {
                break;
            }
            seen |= !t.fds.is_empty();
            let (n, truncated) = (t.data.len(), t.truncated);
            taken.push((pos, t));
            pos += n;
            if truncated {
                return Err(std::io::Error::from_raw_os_error(libc::EMFILE));
            }
        }
        Ok(())
    })();
    if took.is_err() {
        // The rest of the queue is taken off too: sent back behind what was taken, it would come
        // before it.
        let mut pos = taken.last().map_or(0, |(p, t)| p + t.data.len());
        while let Ok(Some(t)) = us::take(c, 4 << 20) {
            if t.data.is_empty() {
                break;
            }
            let n = t.data.len();
            taken.push((pos, t));
            pos += n;
        }
    }
    // 2. The pieces a reader would see.
    let mut out: Vec<UnixMessage> = Vec::new();
    let mut rights: Rights = Vec::new();
    let mut fd_end = 0;
    for (start, t) in taken {
        let m = with_cred(UnixMessage { data: t.data, ..Default::default() }, t.cred);
        let last_plain = rights.last().is_none_or(|(i, _)| i + 1 != out.len());
        match out.last_mut() {
            Some(last) if t.fds.is_empty() && (last_plain || start < fd_end) && same_sender(last, &m) => {
                last.data.extend_from_slice(&m.data);
                continue;
            }
            _ => {}
        }
        if !t.fds.is_empty() {
            fd_end = ends.iter().map(|&(e, _)| e).find(|&e| e > start).unwrap_or(start + m.data.len());
            rights.push((out.len(), t.fds));
        }
        out.push(m);
    }
    // 3. Sent back from the peer, whatever happened.
    let put = (|| -> std::io::Result<()> {
        set_opts(c, (0, 0))?;
        set(peer, libc::SO_SNDBUFFORCE, 64 << 20)?;
        for (i, m) in out.iter().enumerate() {
            let fds: Vec<BorrowedFd<'_>> = rights
                .iter()
                .find(|(j, _)| *j == i)
                .map(|(_, f)| f.iter().map(|x| x.as_fd()).collect())
                .unwrap_or_default();
            let cred = m.has_cred.then_some(libc::ucred { pid: m.sender_pid, uid: m.sender_uid, gid: m.sender_gid });
            send_all(peer, &m.data, (None, true), &fds, cred)?;
        }
        Ok(())
    })();
    let back = set(peer, libc::SO_SNDBUFFORCE, sndbuf / 2)
        .and_then(|()| set_opts(c, own))
        .and_then(|()| set_opts(peer, theirs))
        .and_then(|()| set(c, libc::SO_PEEK_OFF, old_off));
    if let Err(e) = put {
        tracing::error!(object = obj(), error = %e, "bytes taken off a stream's queue could not all be sent back: the process lost them");
        return Err(sys("cannot send the bytes taken off its queue back from its peer (the process lost them)", e));
    }
    took.map_err(|e| sys("cannot take its queue off", e))?;
    back.map_err(|e| sys("cannot put its options back", e))?;
    // 4. The same bytes as peeked, and the buffers with fds end where a peek stopped.
    let same = out.iter().flat_map(|m| m.data.iter()).eq(peeked.iter().flat_map(|m| m.data.iter()));
    let mut pos = 0;
    let mut got_ends = Vec::new();
    for (i, m) in out.iter().enumerate() {
        pos += m.data.len();
        if let Some((_, f)) = rights.iter().find(|(j, _)| *j == i) {
            got_ends.push((pos, f.len()));
        }
    }
    if !same || got_ends != ends {
        return Err(Split::Refused(format!(
            "its buffers did not read back as peeked (ends with fds {ends:?} peeked, {got_ends:?} read)"
        )));
    }
    Ok((out, rights))
}

/// Once every process is collected (and the fds in flight named, state/inflight.rs): a
/// connected socket must have its peer in the image (a datagram socket connected to a named
/// socket outside is reconnected by name), and a connection waiting in an accept queue must
/// have both ends in the image.
///
/// A stream or seqpacket socket connected to a peer outside whose inode is in `external`
/// (`dump --external unix[INO]`) becomes an `Inherited` file with the key `socket:[INO]`:
/// restore takes it from `--inherit-fd` (state/external.rs).
pub fn finish(
    procs: &mut [Process],
    _table: &mut Table,
    external: &std::collections::HashSet<u32>,
) -> Result<(), Error> {
    let in_image = |procs: &[Process]| {
        let mut inos = std::collections::HashSet::new();
        for f in procs.iter().flat_map(|p| p.files.iter()).filter(|f| f.kind == FileKind::UnixSocket as i32) {
            if let Some(u) = &f.unix {
                inos.insert(u.ino);
            }
        }
        inos
    };
    // Sockets found at fd 0-2 stay in the image only if connected to a socket of the image.
    let all = in_image(procs);
    for f in procs.iter_mut().flat_map(|p| p.files.iter_mut()) {
        if let Some(ino) = f.unix.as_ref().filter(|u| u.stdio && !(u.peer != 0 && all.contains(&u.peer))).map(|u| u.ino)
        {
            f.kind = FileKind::Inherited as i32;
            f.unix = None;
            // (The link, as --inherit-fd names it: socket:[INO].)
            f.describe = format!("socket:[{ino}]");
        }
    }
    let inos = in_image(procs);
    let mut named = std::collections::HashSet::new();
    for p in procs.iter_mut() {
        let pid = p.pid;
        for (i, f) in p.files.iter_mut().enumerate() {
            let outside = f.unix.as_ref().is_some_and(|u| u.peer != 0 && !inos.contains(&u.peer));
            if let (true, Some(ino)) = (outside, f.unix.as_ref().map(|u| u.ino).filter(|i| external.contains(i))) {
                // Named external: what a supervisor hands back at restore; its queue stays with it.
                f.kind = FileKind::Inherited as i32;
                f.external_key = format!("socket:[{ino}]");
                f.describe += " (external)";
                f.unix = None;
                named.insert(ino);
                continue;
            }
            let Some(u) = f.unix.as_mut() else { continue };
            let fd = p.fds.iter().find(|d| d.file as usize == i).map(|d| d.fd).unwrap_or(-1);
            let what = |w: String| Error::Unsupported {
                pid,
                what: format!("fd {fd}: unix {} socket:[{}] {w}", type_name(u.sock_type), u.ino),
            };
            if u.peer != 0 && !inos.contains(&u.peer) {
                if u.sock_type as i32 == libc::SOCK_DGRAM && !u.peer_name.is_empty() {
                    u.peer = 0;
                } else {
                    return Err(what(format!(
                        "connected to socket:[{}] {} outside the dump (dump --external unix[{}] lets it be dumped, to be given back with restore --inherit-fd fd[N]:socket:[{}])",
                        u.peer,
                        show_name(&u.peer_name),
                        u.ino,
                        u.ino
                    )));
                }
            }
            if u.peer != 0 {
                u.peer_name.clear();
            }
            if u.listener != 0 && !inos.contains(&u.listener) {
                return Err(what(format!("waits to be accepted by listener socket:[{}] outside the dump", u.listener)));
            }
            if let Some(c) = u.pending.iter().find(|c| !inos.contains(c)) {
                return Err(what(format!(
                    "listening on {} has a connection from socket:[{c}] outside the dump in its accept queue",
                    show_name(&u.name)
                )));
            }
        }
    }
    let mut unused: Vec<_> = external.difference(&named).collect();
    unused.sort();
    for ino in unused {
        tracing::warn!("--external unix[{ino}]: no socket of the tree with this inode is connected outside it");
    }
    senders_in_tree(procs);
    crate::state::peercred::finish(procs);
    Ok(())
}

/// At dump, once the nested namespaces are known (state/nested_ns.rs): each socket's network
/// namespace, 0 for the tree's root's (inode `root_net`) or a nested one of the image; a socket
/// in any other (one no process of the tree is in) is refused.
pub fn place_in_netns(procs: &mut [Process], root_net: u64, nested: &[ferry_image::NestedNs]) -> Result<(), Error> {
    for p in procs.iter_mut() {
        let pid = p.pid;
        for (i, f) in p.files.iter_mut().enumerate() {
            let Some(u) = f.unix.as_mut() else { continue };
            if u.netns == root_net {
                u.netns = 0;
            } else if !nested.iter().any(|n| n.kind == "net" && n.inode == u.netns) {
                let fd = p.fds.iter().find(|d| d.file as usize == i).map(|d| d.fd).unwrap_or(-1);
                return Err(Error::Unsupported {
                    pid,
                    what: format!(
                        "fd {fd}: unix {} socket:[{}] in a network namespace (net:[{}]) no process of the tree is in",
                        type_name(u.sock_type),
                        u.ino,
                        u.netns
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Mark each queued message whose sender (by the pid ferry saw) is a process of the tree: its
/// pid follows the process (to the namespace's own id, to the restored host pid).
fn senders_in_tree(procs: &mut [Process]) {
    let pids: std::collections::HashSet<i32> = procs.iter().filter(|p| !p.zombie).map(|p| p.pid).collect();
    let queues = procs.iter_mut().flat_map(|p| p.files.iter_mut()).filter_map(|f| f.unix.as_mut());
    for m in queues.flat_map(|u| u.queue.iter_mut()).filter(|m| m.has_cred) {
        m.sender_in_tree = pids.contains(&m.sender_pid);
    }
}

/// The restored sockets, keyed by their inode in the image, and what `fill` needs to finish
/// them.
pub struct Prepared {
    fds: HashMap<u32, OwnedFd>,
    /// The other ends of sockets whose peer was closed: they send the queued data, then go.
    partners: HashMap<u32, OwnedFd>,
    names: Names,
}

impl Prepared {
    /// The restored socket of inode `ino` of the image.
    pub fn get(&self, ino: &u32) -> Option<&OwnedFd> {
        self.fds.get(ino)
    }
}

/// Every unix socket of the image by inode, with a name for messages (the first process
/// holding it).
fn sockets(procs: &[Process]) -> BTreeMap<u32, (&UnixSocket, String)> {
    let mut socks: BTreeMap<u32, (&UnixSocket, String)> = BTreeMap::new();
    for p in procs.iter().filter(|p| !p.zombie) {
        for (i, f) in p.files.iter().enumerate() {
            if let (true, Some(u)) = (f.kind == FileKind::UnixSocket as i32, &f.unix) {
                let fd = p.fds.iter().find(|d| d.file as usize == i).map(|d| d.fd).unwrap_or(-1);
                socks.entry(u.ino).or_insert((u, format!("pid {} fd {fd}: {}", p.pid, f.describe)));
            }
        }
    }
    socks
}

/// Restores of a migration (`ferry serve`): the source of the image is frozen until the
/// restore is confirmed, and dies then; on the same machine (two network namespaces, one file
/// system) its listeners still hold their socket files. See [`take_over_source_files`].
static TAKE_OVER: AtomicBool = AtomicBool::new(false);
static TAKEN: Mutex<Vec<(PathBuf, PathBuf)>> = Mutex::new(Vec::new());

/// For the restores that follow (`on`): a socket file found at a socket's name that is the very
/// file the image recorded (same device and inode: the frozen source's own socket, on this
/// machine) is taken over: renamed aside to a hidden name beside it, and the restored socket
/// bound at the name. [`TakenOver`] (from [`taken_over`]) then removes those files once the
/// migration is confirmed, or puts them back if it is not (the source resumes with its names).
/// Off, such a file is refused as in use, as any live socket's.
pub fn take_over_source_files(on: bool) {
    TAKE_OVER.store(on, Ordering::SeqCst);
}

/// The socket files of a migration's source taken over by the restores since the last call:
/// (hidden name, name).
pub fn taken_over() -> TakenOver {
    TakenOver(std::mem::take(&mut *TAKEN.lock().unwrap_or_else(|p| p.into_inner())))
}

/// Socket files of a migration's source moved aside by its restore: put back on drop unless
/// [`TakenOver::confirm`]ed.
#[must_use]
pub struct TakenOver(Vec<(PathBuf, PathBuf)>);

impl TakenOver {
    /// The source is gone for good: its socket files go.
    pub fn confirm(mut self) {
        for (aside, _) in self.0.drain(..) {
            let _ = std::fs::remove_file(aside);
        }
    }
}

impl Drop for TakenOver {
    /// The source goes on: each file back at its name (replacing the restored socket's).
    fn drop(&mut self) {
        for (aside, name) in self.0.drain(..) {
            if let Err(e) = std::fs::rename(&aside, &name) {
                tracing::warn!(
                    "cannot put the source's socket file {} back at {}: {e}",
                    aside.display(),
                    name.display()
                );
            }
        }
    }
}

/// The hidden name beside `path` that a migration's restore moves the source's socket file
/// (inode `ino`) to ([`take_over_source_files`]).
fn source_aside(path: &std::path::Path, ino: u64) -> PathBuf {
    let base = path.file_name().map(|b| b.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{base}.ferry-source-{ino}"))
}

/// A migration that failed, at its source, before the tree resumes: the socket files of
/// `procs` that a destination on this machine moved aside and did not put back (killed before
/// [`TakenOver`]'s drop) go back to their names, so the source keeps them.
pub fn give_back_taken(procs: &[Process]) {
    for u in procs.iter().flat_map(|p| p.files.iter()).filter_map(|f| f.unix.as_ref()) {
        let name = conn_addr(u);
        if u.file_ino == 0 || !is_path(&name) {
            continue;
        }
        let path = path_of(&name);
        let aside = source_aside(&path, u.file_ino);
        match std::fs::symlink_metadata(&aside) {
            Ok(md) if (md.dev(), md.ino()) == (u.file_dev, u.file_ino) => match std::fs::rename(&aside, &path) {
                Ok(()) => tracing::info!(path = %path.display(), "socket file given back by a failed migration"),
                Err(e) => {
                    tracing::warn!("cannot put the socket file {} back at {}: {e}", aside.display(), path.display())
                }
            },
            _ => {}
        }
    }
}

/// Make the name of `u` free for bind(): nothing to do for an abstract name; for a path, remove
/// a stale socket file (one nobody listens on), or in a migration take over the source's own
/// (`take_over_source_files`). Returns whether a file was there.
fn free_path(u: &UnixSocket, obj: &str) -> Result<bool, Error> {
    let name = conn_addr(u);
    if !is_path(&name) {
        return Ok(false);
    }
    let path = path_of(&name);
    let md = match std::fs::symlink_metadata(&path) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::Sys { object: format!("{obj}: cannot look at {}", path.display()), source: e }),
    };
    let invalid = |what: String| Error::Invalid { object: obj.into(), what };
    if !md.file_type().is_socket() {
        return Err(invalid(format!("{} exists and is not a socket", path.display())));
    }
    if TAKE_OVER.load(Ordering::SeqCst) && u.file_ino != 0 && (md.dev(), md.ino()) == (u.file_dev, u.file_ino) {
        // (No probe: a connection in the source's backlog would be one it never had.)
        let aside = source_aside(&path, u.file_ino);
        std::fs::rename(&path, &aside)
            .ctx(|| format!("{obj}: cannot move the migration source's {} aside", path.display()))?;
        tracing::info!(path = %path.display(), "socket file of the migration's source taken over");
        TAKEN.lock().unwrap_or_else(|p| p.into_inner()).push((aside, path));
        crate::inject::fault_point_named("kill-after-takeover");
        return Ok(true);
    }
    let probe = us::socket(libc::SOCK_STREAM).ctx(|| obj.into())?;
    match us::connect(probe.as_fd(), &name) {
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            std::fs::remove_file(&path).ctx(|| format!("{obj}: cannot remove the stale {}", path.display()))?;
            Ok(true)
        }
        _ => Err(invalid(format!("{} is in use by a live socket", path.display()))),
    }
}

/// bind() `s` to the name of `u`: a relative name in the directory it was bound in.
fn bind_as(s: BorrowedFd<'_>, u: &UnixSocket) -> std::io::Result<()> {
    if is_path(&u.name) && u.name[0] != b'/' && !u.name_dir.is_empty() {
        let dir = std::fs::File::open(&u.name_dir)?;
        return us::bind_in(s, dir.as_fd(), &u.name);
    }
    us::bind(s, &u.name)
}

/// Where each bound socket of the restore can be reached (its name; for a socket whose file
/// was unlinked, a hidden path its file is renamed to until the connections and datagrams
/// that need it are in), and those hidden files, removed when this is dropped.
#[derive(Default)]
struct Names {
    addr: HashMap<u32, Vec<u8>>,
    hidden: Vec<std::path::PathBuf>,
}

impl Names {
    /// The address that reaches socket `u` (bound by this restore), or its name.
    fn of(&self, u: &UnixSocket) -> Vec<u8> {
        self.addr.get(&u.ino).cloned().unwrap_or_else(|| conn_addr(u))
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        for h in &self.hidden {
            let _ = std::fs::remove_file(h);
        }
    }
}

fn bind_name(s: BorrowedFd<'_>, u: &UnixSocket, obj: &str, names: &mut Names) -> Result<(), Error> {
    let addr = conn_addr(u);
    let cannot = || format!("{obj}: cannot bind to {}", show_name(&u.name));
    if u.unlinked && is_path(&u.name) {
        // The name only, no file: whatever holds the path now steps aside for the bind, and the
        // new socket file is moved to a hidden name (the socket keeps its name) until the end.
        use std::os::unix::ffi::OsStrExt;
        let path = path_of(&addr);
        let base = path.file_name().map(|b| b.to_string_lossy().into_owned()).unwrap_or_default();
        let aside = path.with_file_name(format!(".{base}.ferry-aside-{}", std::process::id()));
        let hidden = path.with_file_name(format!(".ferry-sock-{}-{}", std::process::id(), u.ino));
        let moved = match std::fs::symlink_metadata(&path) {
            Ok(_) => {
                std::fs::rename(&path, &aside).ctx(|| format!("{obj}: cannot move {} aside", path.display()))?;
                true
            }
            Err(_) => false,
        };
        let r = bind_as(s, u)
            .ctx(cannot)
            .and_then(|()| std::fs::rename(&path, &hidden).ctx(|| format!("{obj}: cannot unlink {}", path.display())));
        if moved {
            std::fs::rename(&aside, &path).ctx(|| format!("{obj}: cannot put {} back", path.display()))?;
        }
        r?;
        names.addr.insert(u.ino, hidden.as_os_str().as_bytes().to_vec());
        names.hidden.push(hidden);
        return Ok(());
    }
    free_path(u, obj)?;
    bind_as(s, u).ctx(cannot)?;
    if u.file_mode != 0 && is_path(&u.name) {
        // Who may connect: the socket file's owner and mode, not ferry's umask.
        use std::os::unix::fs::PermissionsExt;
        let path = path_of(&addr);
        let ctx = || format!("{obj}: cannot give {} its owner and mode", path.display());
        std::os::unix::fs::chown(&path, Some(u.file_uid), Some(u.file_gid)).ctx(ctx)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(u.file_mode)).ctx(ctx)?;
    }
    names.addr.insert(u.ino, addr);
    Ok(())
}

/// An accepted socket: `client` connects to a temporary listener bound to the name of `srv`,
/// and the accepted end carries that name. The listener listens as `as_listener` (the client's
/// peer credentials), the client connects as `srv`'s peer (state/peercred.rs).
fn accept_via(
    ty: i32,
    srv: &UnixSocket,
    (client, as_listener): (BorrowedFd<'_>, Option<&PeerCred>),
    obj: &str,
    creators: &Creators,
) -> Result<OwnedFd, Error> {
    let addr = conn_addr(srv);
    let existed = free_path(srv, obj)?;
    let ctx = || format!("{obj}: cannot connect through a temporary listener at {}", show_name(&srv.name));
    let l = us::socket(ty).ctx(ctx)?;
    bind_as(l.as_fd(), srv).ctx(ctx)?;
    let lfd = l.as_fd();
    creators.run(as_listener, obj, &mut || us::listen(lfd, 1)).ctx(ctx)?;
    creators.run(srv.peer_cred.as_ref(), obj, &mut || us::connect(client, &addr)).ctx(ctx)?;
    let s = us::accept(l.as_fd()).ctx(ctx)?;
    drop(l);
    if !existed && is_path(&addr) {
        std::fs::remove_file(path_of(&addr)).ctx(ctx)?;
    }
    Ok(s)
}

/// What restore gives each queued message as its sender's credentials (SCM_CREDENTIALS), `None`
/// for the restoring ferry's own.
pub type SenderOf<'a> = dyn Fn(&UnixMessage) -> Option<libc::ucred> + 'a;

/// Send message `m` from `s` with its fds in flight, if any (`fd_of`), and its sender's
/// credentials (`cred`); the rest of a stream's bytes after a short send follow with the same
/// credentials (never glued to another sender's), a short datagram is an error.
fn send_msg<'f>(
    s: BorrowedFd<'_>,
    m: &UnixMessage,
    (to, stream): (Option<&[u8]>, bool),
    obj: &str,
    fd_of: &dyn Fn(&InFlightFd) -> Option<BorrowedFd<'f>>,
    cred: Option<libc::ucred>,
) -> Result<(), Error> {
    let fds = m
        .rights
        .iter()
        .map(|r| {
            fd_of(r).ok_or_else(|| Error::Invalid {
                object: obj.into(),
                what: match r.file {
                    Some(i) => format!("its file in flight, file {i} of pid {}, is missing from the image", r.pid),
                    None => format!("its fd in flight, fd {} of pid {}, is missing from the image", r.fd, r.pid),
                },
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    send_all(s, &m.data, (to, stream), &fds, cred).ctx(|| match (fds.is_empty(), cred) {
        (false, _) => format!("{obj}: cannot queue a message with its fds in flight again"),
        (true, Some(c)) => {
            format!("{obj}: cannot queue its data again as sent by pid {} (uid {}, gid {})", c.pid, c.uid, c.gid)
        }
        (true, None) => format!("{obj}: cannot queue its data again"),
    })
}

/// Send `data` from `s` (to `to`, or the peer) with the fds `fds` and the credentials `cred`;
/// the rest of a stream's bytes after a short send follow, with no fds and the same
/// credentials; a short datagram is an error.
fn send_all(
    s: BorrowedFd<'_>,
    data: &[u8],
    (to, stream): (Option<&[u8]>, bool),
    fds: &[BorrowedFd<'_>],
    cred: Option<libc::ucred>,
) -> std::io::Result<()> {
    let mut off = 0;
    loop {
        let rights = if off == 0 { fds } else { &[] };
        let n = us::send_with(s, &data[off..], to, rights, cred)?;
        off += n;
        if off >= data.len() {
            return Ok(());
        }
        if !stream || n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("queued {off} of {} bytes", data.len()),
            ));
        }
    }
}

/// At restore: moves ferry's restoring thread into a network namespace of the image (a
/// socket's `netns`: 0 for the tree's root's), where the next sockets are made (an abstract
/// name is bound and looked up in the namespace of its socket; an accepted socket is made in
/// its client's).
pub type EnterNet<'a> = dyn Fn(u64) -> Result<(), Error> + 'a;

/// Recreate every unix socket of the image (all processes together: peers and listeners may be
/// in different processes), with names, connections, accept queues and queued data, each in
/// its network namespace (`enter`; the thread is back in the root's when this returns).
/// `creators` makes each socket's peer credentials (state/peercred.rs).
pub fn prepare(procs: &[Process], creators: &Creators, enter: &EnterNet<'_>) -> Result<Prepared, Error> {
    let r = prepare_in(procs, creators, enter);
    enter(0)?;
    r
}

fn prepare_in(procs: &[Process], creators: &Creators, enter: &EnterNet<'_>) -> Result<Prepared, Error> {
    let socks = sockets(procs);
    let mut fds: HashMap<u32, OwnedFd> = HashMap::new();
    let mut names = Names::default();
    let mut partners: HashMap<u32, OwnedFd> = HashMap::new();
    let mutual = |u: &UnixSocket| u.peer != 0 && socks.get(&u.peer).is_some_and(|(v, _)| v.peer == u.ino);
    let accepted = |u: &UnixSocket| !u.bound && !u.name.is_empty();
    // 1. Connected pairs.
    for (&ino, (u, obj)) in &socks {
        if fds.contains_key(&ino) || !mutual(u) {
            continue;
        }
        let (v, vobj) = &socks[&u.peer];
        let ty = u.sock_type as i32;
        // (Both ends of a connection are in one namespace: an accepted socket is made in its
        // client's.)
        enter(u.netns)?;
        // Ends whose peer credentials differ were connected, not made as a pair: the named
        // end (which carries its listener's name and file) is accepted again (state/peercred.rs).
        let differ = u.peer_cred.is_some() && v.peer_cred.is_some() && u.peer_cred != v.peer_cred;
        let server =
            |x: &UnixSocket, y: &UnixSocket| accepted(x) || (differ && !x.name.is_empty() && y.name.is_empty());
        if ty != libc::SOCK_DGRAM && (server(u, v) || server(v, u)) {
            let ((srv, sobj), (cli, cobj)) = if server(u, v) { ((u, obj), (v, vobj)) } else { ((v, vobj), (u, obj)) };
            let c = us::socket(ty).ctx(|| cobj.clone())?;
            if cli.bound {
                bind_name(c.as_fd(), cli, cobj, &mut names)?;
            }
            let s = accept_via(ty, srv, (c.as_fd(), cli.peer_cred.as_ref()), sobj, creators)?;
            fds.insert(srv.ino, s);
            fds.insert(cli.ino, c);
        } else {
            // (Both ends of a socketpair report its creator; ends that differ came from somewhere
            // a pair cannot reproduce: they report ferry's.)
            let cred = u.peer_cred.as_ref().filter(|&c| Some(c) == v.peer_cred.as_ref());
            let (a, b) = creators.socketpair(ty, cred, obj).ctx(|| format!("{obj}: socketpair"))?;
            if u.bound {
                bind_name(a.as_fd(), u, obj, &mut names)?;
            }
            if v.bound {
                bind_name(b.as_fd(), v, vobj, &mut names)?;
            }
            fds.insert(u.ino, a);
            fds.insert(v.ino, b);
        }
    }
    // 2. A peer that was closed: a pair whose other end sends the queued data, then closes.
    for (&ino, (u, obj)) in &socks {
        if fds.contains_key(&ino) || !u.peer_dead {
            continue;
        }
        let ty = u.sock_type as i32;
        enter(u.netns)?;
        let (a, b) = if ty != libc::SOCK_DGRAM && accepted(u) {
            // An accepted socket whose client is gone: accepted again, from a client that goes.
            let c = us::socket(ty).ctx(|| obj.clone())?;
            (accept_via(ty, u, (c.as_fd(), None), obj, creators)?, c)
        } else {
            let (a, b) = creators.socketpair(ty, u.peer_cred.as_ref(), obj).ctx(|| format!("{obj}: socketpair"))?;
            if u.bound {
                bind_name(a.as_fd(), u, obj, &mut names)?;
            }
            (a, b)
        };
        fds.insert(ino, a);
        partners.insert(ino, b);
    }
    // 3. Listeners, then 4. every other socket.
    for pass in [true, false] {
        for (&ino, (u, obj)) in &socks {
            if fds.contains_key(&ino) || (u.state == TCP_LISTEN) != pass {
                continue;
            }
            enter(u.netns)?;
            let s = us::socket(u.sock_type as i32).ctx(|| obj.clone())?;
            if u.bound {
                bind_name(s.as_fd(), u, obj, &mut names)?;
            }
            if pass {
                let backlog = u.backlog.min(i32::MAX as u32) as i32;
                let fd = s.as_fd();
                creators
                    .run(u.peer_cred.as_ref(), obj, &mut || us::listen(fd, backlog))
                    .ctx(|| format!("{obj}: listen"))?;
            }
            fds.insert(ino, s);
        }
    }
    // 5. One-way datagram connections (to a socket of the image, or to a name outside).
    for (&ino, (u, obj)) in &socks {
        if u.sock_type as i32 != libc::SOCK_DGRAM || mutual(u) || u.peer_dead {
            continue;
        }
        let to = if u.peer != 0 {
            socks
                .get(&u.peer)
                .map(|(v, _)| if v.name.is_empty() { Vec::new() } else { names.of(v) })
                .unwrap_or_default()
        } else {
            u.peer_name.clone()
        };
        if to.is_empty() {
            if u.peer != 0 {
                return Err(Error::Invalid {
                    object: obj.clone(),
                    what: format!("connected to socket:[{}], which has no name to connect to", u.peer),
                });
            }
            continue;
        }
        us::connect(fds[&ino].as_fd(), &to).ctx(|| format!("{obj}: cannot connect to {}", show_name(&to)))?;
    }
    // 6. Connections waiting in accept queues, oldest first.
    for (u, obj) in socks.values().filter(|(u, _)| u.state == TCP_LISTEN) {
        for c in &u.pending {
            let (cu, cobj) = socks.get(c).ok_or_else(|| Error::Invalid {
                object: obj.clone(),
                what: format!("pending client socket:[{c}] missing from the image"),
            })?;
            let cfd = fds[&cu.ino].as_fd();
            ferry_sys::process::set_status_flags(cfd, libc::O_NONBLOCK).ctx(|| cobj.clone())?;
            us::connect(cfd, &names.of(u)).ctx(|| format!("{cobj}: cannot connect to {}", show_name(&u.name)))?;
        }
    }
    // Owners: the restore made every socket as root (or in a helper with the peer's ids).
    for (ino, fd) in &fds {
        if let Some((u, obj)) = socks.get(ino).filter(|(u, _)| (u.owner_uid, u.owner_gid) != (0, 0)) {
            ferry_sys::objects::fchown(fd.as_fd(), u.owner_uid, u.owner_gid)
                .ctx(|| format!("{obj}: cannot give it its owner {}:{}", u.owner_uid, u.owner_gid))?;
        }
    }
    Ok(Prepared { fds, partners, names })
}

/// Once every file of the image is open in ferry and the tree's processes exist: the queued
/// data, sent again into each receive queue with its fds in flight (`fd_of`: ferry's fd of that
/// description) and its sender's credentials (`sender_of`: the kernel takes a pid only
/// if it exists), then buffer sizes, SO_PASSCRED, filters, shutdown and SO_PEEK_OFF.
pub fn fill<'f>(
    prep: &mut Prepared,
    procs: &[Process],
    fd_of: &dyn Fn(&InFlightFd) -> Option<BorrowedFd<'f>>,
    sender_of: &SenderOf<'_>,
    enter: &EnterNet<'_>,
) -> Result<(), Error> {
    let r = fill_in(prep, procs, fd_of, sender_of, enter);
    enter(0)?;
    r
}

fn fill_in<'f>(
    prep: &mut Prepared,
    procs: &[Process],
    fd_of: &dyn Fn(&InFlightFd) -> Option<BorrowedFd<'f>>,
    sender_of: &SenderOf<'_>,
    enter: &EnterNet<'_>,
) -> Result<(), Error> {
    let socks = sockets(procs);
    let Prepared { fds, partners, names } = prep;
    let partners = std::mem::take(partners);
    let mutual = |u: &UnixSocket| u.peer != 0 && socks.get(&u.peer).is_some_and(|(v, _)| v.peer == u.ino);
    // 7. Queued data, sent again into each receive queue (large send buffers meanwhile).
    let big = 64 << 20;
    let mut temps: Vec<OwnedFd> = Vec::new();
    for s in fds.values().chain(partners.values()) {
        let _ = sockopt::set_int(s.as_fd(), libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, big);
    }
    for (&ino, (u, obj)) in &socks {
        let ty = u.sock_type as i32;
        for m in &u.queue {
            let peer_fd = if mutual(u) { fds.get(&u.peer) } else { partners.get(&ino) };
            if ty != libc::SOCK_DGRAM {
                let s = peer_fd.ok_or_else(|| Error::Invalid {
                    object: obj.clone(),
                    what: "queued data but no peer to send it from".into(),
                })?;
                send_msg(s.as_fd(), m, (None, ty == libc::SOCK_STREAM), obj, fd_of, sender_of(m))?;
                continue;
            }
            // A datagram: from the socket named as its sender if it is in the image, else from
            // the connected peer, else from a temporary socket (bound to the sender's name if
            // that name is free).
            let named = (!m.from.is_empty())
                .then(|| socks.iter().find(|(_, (v, _))| v.bound && v.name == m.from).map(|(i, _)| *i))
                .flatten();
            let to_addr = names.of(u);
            let to = (!u.name.is_empty()).then_some(to_addr.as_slice());
            let (sender, is_peer): (BorrowedFd<'_>, bool) = if let Some(x) = named {
                (fds[&x].as_fd(), mutual(u) && x == u.peer)
            } else if let (true, Some(s)) = (m.from.is_empty() || to.is_none(), peer_fd) {
                (s.as_fd(), true)
            } else {
                // (In the receiver's namespace: the names are looked up there.)
                enter(u.netns)?;
                let t = us::socket(libc::SOCK_DGRAM).ctx(|| obj.clone())?;
                if !m.from.is_empty() {
                    let free = !is_path(&m.from) || !path_of(&m.from).exists();
                    if free && us::bind(t.as_fd(), &m.from).is_ok() {
                        if is_path(&m.from) {
                            let _ = std::fs::remove_file(path_of(&m.from));
                        }
                    } else {
                        tracing::warn!(
                            object = obj,
                            from = show_name(&m.from),
                            "queued datagram loses its sender's name"
                        );
                    }
                }
                temps.push(t);
                (temps[temps.len() - 1].as_fd(), false)
            };
            // Through the connection when the sender is the receiver's peer (no queue limit
            // then, as for the original), else to the receiver's name.
            let dest = if is_peer { None } else { to };
            if dest.is_none() && !is_peer {
                return Err(Error::Invalid {
                    object: obj.clone(),
                    what: "a queued datagram from a sender that is not its peer, and the socket has no name".into(),
                });
            }
            send_msg(sender, m, (dest, false), obj, fd_of, sender_of(m))?;
        }
    }
    drop(temps);
    // 8. Closed peers go now (the survivor sees the hang-up), then options and shutdown.
    drop(partners);
    for (&ino, (u, obj)) in &socks {
        let s = fds[&ino].as_fd();
        let ctx = || obj.clone();
        if u.sndbuf != 0 {
            sockopt::set_int(s, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, (u.sndbuf / 2) as i32).ctx(ctx)?;
        }
        if u.rcvbuf != 0 && sockopt::get_int(s, libc::SOL_SOCKET, libc::SO_RCVBUF).ctx(ctx)? != u.rcvbuf as i32 {
            sockopt::set_int(s, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, (u.rcvbuf / 2) as i32).ctx(ctx)?;
        }
        if u.rcvtimeo_us != 0 {
            sockopt::set_timeout_us(s, libc::SO_RCVTIMEO, u.rcvtimeo_us).ctx(ctx)?;
        }
        if u.sndtimeo_us != 0 {
            sockopt::set_timeout_us(s, libc::SO_SNDTIMEO, u.sndtimeo_us).ctx(ctx)?;
        }
        if u.passcred {
            sockopt::set_int(s, libc::SOL_SOCKET, libc::SO_PASSCRED, 1).ctx(ctx)?;
        }
        // (After the queued data went back in: the filter would have judged it again.)
        crate::state::sockfilter::restore(s, &u.filter, u.filter_locked).ctx(ctx)?;
        let how = match u.shutdown & 3 {
            1 => Some(libc::SHUT_RD),
            2 => Some(libc::SHUT_WR),
            3 => Some(libc::SHUT_RDWR),
            _ => None,
        };
        if let Some(how) = how {
            match us::shutdown(s, how) {
                Ok(()) => {}
                // Shutting down an unconnected datagram socket is refused; its bits only matter
                // once connected.
                Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {}
                Err(e) => return Err(Error::Sys { object: format!("{obj}: shutdown"), source: e }),
            }
        }
        if u.peek_off >= 0 && u.state != TCP_LISTEN {
            sockopt::set_int(s, libc::SOL_SOCKET, libc::SO_PEEK_OFF, u.peek_off).ctx(ctx)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(socket_ino("socket:[1234]"), Some(1234));
        assert_eq!(socket_ino("pipe:[1234]"), None);
        assert_eq!(show_name(b"\0ferry"), "@ferry");
        assert_eq!(show_name(b"/tmp/s.sock\0"), "/tmp/s.sock");
        assert_eq!(show_name(b""), "(unnamed)");
        assert!(is_path(b"/a\0") && !is_path(b"\0a") && !is_path(b""));
        assert_eq!(path_of(b"/tmp/s.sock\0"), std::path::PathBuf::from("/tmp/s.sock"));
    }

    /// A migration's restore takes over the live socket file of the frozen source (the very
    /// file the image recorded), and gives it back unless the migration is confirmed; any other
    /// live socket's file is refused as in use, and without a migration so is the source's.
    #[test]
    fn migration_takes_over_the_source_socket_file() {
        use std::io::{Read, Write};
        let dir = std::env::temp_dir().join(format!("ferry-unix-takeover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("s.sock");
        let source = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let md = std::fs::metadata(&path).expect("stat");
        let mut name = path.as_os_str().as_encoded_bytes().to_vec();
        name.push(0);
        let u = UnixSocket { name, bound: true, file_dev: md.dev(), file_ino: md.ino(), ..Default::default() };
        let other = UnixSocket { file_ino: md.ino() + 1, ..u.clone() };
        let in_use = |u: &UnixSocket| free_path(u, "t").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(in_use(&u).contains("in use by a live socket"));
        take_over_source_files(true);
        assert!(in_use(&other).contains("in use by a live socket"), "another socket's file was taken");
        for confirm in [false, true] {
            assert!(free_path(&u, "t").expect("take over"), "no file was there");
            assert!(!path.exists(), "the source's file is still at its name");
            let taken = taken_over();
            if confirm {
                taken.confirm();
                assert!(!path.exists() && std::fs::read_dir(&dir).expect("ls").next().is_none(), "left a file");
            } else {
                drop(taken);
                // (The probes' connections, closed, wait in its queue first.)
                source.set_nonblocking(true).expect("nonblocking");
                while source.accept().is_ok() {}
                source.set_nonblocking(false).expect("blocking");
                let mut c = std::os::unix::net::UnixStream::connect(&path).expect("the source's name is back");
                let (mut s, _) = source.accept().expect("accept");
                s.write_all(b"x").expect("write");
                let mut b = [0u8; 1];
                c.read_exact(&mut b).expect("read");
            }
        }
        take_over_source_files(false);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
