//! Unix domain sockets: creating, binding and connecting them by raw `sun_path` bytes (a leading
//! NUL byte names an abstract address), peeking at their receive queues, and the
//! `NETLINK_SOCK_DIAG` dump that describes every unix socket of the system.

use crate::{cvt_i, sockdiag};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

fn owned(fd: i32) -> OwnedFd {
    // SAFETY: callers pass an fd the kernel just returned to us; we are its only owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Build a `sockaddr_un` for `name` (raw `sun_path` bytes); returns it with its length.
fn sockaddr(name: &[u8]) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain integers; all-zero is valid.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if name.len() > sa.sun_path.len() {
        return Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in sa.sun_path.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    Ok((sa, (std::mem::size_of::<libc::sa_family_t>() + name.len()) as libc::socklen_t))
}

/// `socket(AF_UNIX, ty | SOCK_CLOEXEC, 0)`.
pub fn socket(ty: i32) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments.
    cvt_i(unsafe { libc::socket(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0) }).map(owned)
}

/// `socketpair(AF_UNIX, ty | SOCK_CLOEXEC, 0)`.
pub fn socketpair(ty: i32) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid two-int array.
    cvt_i(unsafe { libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) })?;
    Ok((owned(fds[0]), owned(fds[1])))
}

/// `bind(2)` to a unix address given as raw `sun_path` bytes.
pub fn bind(fd: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let (sa, len) = sockaddr(name)?;
    // SAFETY: sa is a valid sockaddr_un of at least `len` bytes.
    cvt_i(unsafe { libc::bind(fd.as_raw_fd(), (&sa as *const libc::sockaddr_un).cast(), len) }).map(drop)
}

/// `bind(2)` to a relative path `name`, resolved in directory `dir`: on a short-lived thread
/// that first gives itself its own working directory (`unshare(CLONE_FS)`, then `fchdir`), so
/// the socket gets exactly `name` as its address and the process's own cwd never moves.
pub fn bind_in(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: integer argument; only this thread's fs context (cwd, root, umask) is
            // copied and affected.
            cvt_i(unsafe { libc::unshare(libc::CLONE_FS) })?;
            // SAFETY: `dir` is a valid fd for the duration of the call; it changes this
            // thread's private cwd only.
            cvt_i(unsafe { libc::fchdir(dir.as_raw_fd()) })?;
            bind(fd, name)
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the bind thread panicked")))
    })
}

/// `connect(2)` to a unix address given as raw `sun_path` bytes.
pub fn connect(fd: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let (sa, len) = sockaddr(name)?;
    loop {
        // SAFETY: sa is a valid sockaddr_un of at least `len` bytes.
        let r = unsafe { libc::connect(fd.as_raw_fd(), (&sa as *const libc::sockaddr_un).cast(), len) };
        match cvt_i(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r.map(drop),
        }
    }
}

/// `listen(2)`.
pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    // SAFETY: integer arguments.
    cvt_i(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map(drop)
}

/// `accept4(2)` with `SOCK_CLOEXEC`, ignoring the peer address.
pub fn accept(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: null address pointers are allowed.
    cvt_i(unsafe { libc::accept4(fd.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) })
        .map(owned)
}

/// `shutdown(2)`.
pub fn shutdown(fd: BorrowedFd<'_>, how: i32) -> io::Result<()> {
    // SAFETY: integer arguments.
    cvt_i(unsafe { libc::shutdown(fd.as_raw_fd(), how) }).map(drop)
}

/// `getsockname(2)` (or `getpeername(2)` with `peer`): the raw `sun_path` bytes of the address.
pub fn name(fd: BorrowedFd<'_>, peer: bool) -> io::Result<Vec<u8>> {
    // SAFETY: sockaddr_un is plain integers; all-zero is valid.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    let p = (&mut sa as *mut libc::sockaddr_un).cast();
    // SAFETY: sa and len are valid out-pointers; len holds the size of sa.
    cvt_i(unsafe {
        if peer {
            libc::getpeername(fd.as_raw_fd(), p, &mut len)
        } else {
            libc::getsockname(fd.as_raw_fd(), p, &mut len)
        }
    })?;
    let n = (len as usize).saturating_sub(std::mem::size_of::<libc::sa_family_t>()).min(sa.sun_path.len());
    Ok(sa.sun_path[..n].iter().map(|&c| c as u8).collect())
}

/// One message (or stream chunk) seen by [`peek`].
#[derive(Debug, Default)]
pub struct Peeked {
    /// The bytes copied (at most the buffer's size).
    pub data: Vec<u8>,
    /// The full length of the datagram (`MSG_TRUNC`): more than `data.len()` if the buffer was short.
    pub len: usize,
    /// The sender's address (raw `sun_path` bytes), empty if it had none.
    pub from: Vec<u8>,
    /// The file descriptors carried (SCM_RIGHTS): peeking installed copies of them in this
    /// process (close-on-exec).
    pub fds: Vec<OwnedFd>,
    /// The sender's credentials (SCM_CREDENTIALS, pid in this process's pid namespace), when
    /// the socket has `SO_PASSCRED` on.
    pub cred: Option<libc::ucred>,
    /// The kernel dropped control data (`MSG_CTRUNC`): fds that did not fit in this process's
    /// fd table (`RLIMIT_NOFILE`) were closed, not installed. [`peek`] answers that with
    /// `EMFILE` (the queue still holds them); after [`take`] they are gone.
    pub truncated: bool,
}

/// `recvmsg(2)` with `MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC | MSG_CMSG_CLOEXEC`: copy the next
/// message (from the socket's peek offset, see `SO_PEEK_OFF`) without taking it off the queue.
/// `None` when nothing (more) is queued. Fds that do not fit in this process's fd table make
/// it fail with `EMFILE` (the kernel would hand a partial list, see [`Peeked::truncated`]).
pub fn peek(fd: BorrowedFd<'_>, cap: usize) -> io::Result<Option<Peeked>> {
    match recv_msg(fd, cap, libc::MSG_PEEK | libc::MSG_TRUNC)? {
        Some(p) if p.truncated => Err(io::Error::from_raw_os_error(libc::EMFILE)),
        p => Ok(p),
    }
}

/// Whether stream socket `fd` holds an out-of-band byte not read yet (`send(MSG_OOB)`): a
/// `recv(MSG_OOB | MSG_PEEK)` finds it (and takes nothing). `SO_OOBINLINE`, under which the
/// kernel answers EINVAL, is off for the probe and put back. A reading `recv` that passes the
/// byte drops it, and a peek skips it.
pub fn oob_pending(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let inline = crate::sockopt::get_int(fd, libc::SOL_SOCKET, libc::SO_OOBINLINE)?;
    if inline != 0 {
        crate::sockopt::set_int(fd, libc::SOL_SOCKET, libc::SO_OOBINLINE, 0)?;
    }
    let mut b = [0u8; 1];
    let r = loop {
        // SAFETY: `b` is a live buffer of the length given.
        let n = unsafe {
            libc::recv(fd.as_raw_fd(), b.as_mut_ptr().cast(), 1, libc::MSG_OOB | libc::MSG_PEEK | libc::MSG_DONTWAIT)
        };
        let e = io::Error::last_os_error();
        match (n, e.raw_os_error()) {
            (n, _) if n >= 0 => break Ok(true),
            (_, Some(libc::EINTR)) => continue,
            // (none pending, or a kernel without AF_UNIX_OOB)
            (_, Some(libc::EINVAL | libc::EOPNOTSUPP | libc::EAGAIN)) => break Ok(false),
            _ => break Err(e),
        }
    };
    if inline != 0 {
        crate::sockopt::set_int(fd, libc::SOL_SOCKET, libc::SO_OOBINLINE, inline)?;
    }
    r
}

/// `recvmsg(2)` with `MSG_DONTWAIT | MSG_CMSG_CLOEXEC`: take at most `cap` bytes of the next
/// message (a stream's next bytes) off the queue, with the fds and credentials that come with
/// them, as a reader would. `None` when nothing (more) is queued. The bytes are returned
/// even when fds were dropped ([`Peeked::truncated`]): check that there is room for them first.
pub fn take(fd: BorrowedFd<'_>, cap: usize) -> io::Result<Option<Peeked>> {
    recv_msg(fd, cap, 0)
}

fn recv_msg(fd: BorrowedFd<'_>, cap: usize, flags: libc::c_int) -> io::Result<Option<Peeked>> {
    let mut data = vec![0u8; cap];
    // SAFETY: sockaddr_un is plain integers; all-zero is valid.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut control = vec![0u64; 512];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
    // SAFETY: msghdr is plain integers and pointers; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut sa as *mut libc::sockaddr_un).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() * 8;
    let flags = flags | libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC;
    let n = loop {
        // SAFETY: every pointer in msg refers to a live buffer of the length given beside it.
        let r = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, flags) };
        if r >= 0 {
            break r as usize;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(None),
            _ => return Err(e),
        }
    };
    let mut fds = Vec::new();
    let mut cred = None;
    // SAFETY: msg was filled by the kernel; CMSG_* walk the control buffer it described.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !c.is_null() {
        // SAFETY: c points at a complete cmsghdr inside `control` (CMSG_FIRSTHDR/NXTHDR check it).
        let h = unsafe { &*c };
        if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) is a constant computation.
            let head = unsafe { libc::CMSG_LEN(0) } as usize;
            let count = (h.cmsg_len as usize).saturating_sub(head) / std::mem::size_of::<libc::c_int>();
            // SAFETY: the payload of an SCM_RIGHTS cmsg is `count` ints, inside `control`.
            let p = unsafe { libc::CMSG_DATA(c) } as *const libc::c_int;
            for i in 0..count {
                // SAFETY: i < count, within the payload; the fd was just installed in our table
                // for us (MSG_PEEK duplicates them, a read moves them) and nothing else owns it.
                fds.push(owned(unsafe { p.add(i).read_unaligned() }));
            }
        }
        // SAFETY: CMSG_LEN is a constant computation.
        let cred_len = unsafe { libc::CMSG_LEN(std::mem::size_of::<libc::ucred>() as u32) } as usize;
        if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SCM_CREDENTIALS && h.cmsg_len as usize >= cred_len {
            // SAFETY: the payload holds a whole ucred (checked just above), inside `control`.
            cred = Some(unsafe { (libc::CMSG_DATA(c) as *const libc::ucred).read_unaligned() });
        }
        // SAFETY: msg and c are valid as above.
        c = unsafe { libc::CMSG_NXTHDR(&msg, c) };
    }
    let from_len = (msg.msg_namelen as usize).saturating_sub(std::mem::size_of::<libc::sa_family_t>());
    let from = sa.sun_path[..from_len.min(sa.sun_path.len())].iter().map(|&c| c as u8).collect();
    data.truncate(n.min(cap));
    let truncated = msg.msg_flags & libc::MSG_CTRUNC != 0;
    Ok(Some(Peeked { data, len: n, from, fds, cred, truncated }))
}

/// `sendmsg(2)` with `MSG_DONTWAIT | MSG_NOSIGNAL` of `data` with the file descriptors `fds`
/// (SCM_RIGHTS, none if empty) and the sender's credentials `cred` (SCM_CREDENTIALS: root may
/// give any existing pid of its pid namespace, any uid and gid), to `to` (raw `sun_path` bytes)
/// or, when `None`, to the connected peer.
pub fn send_with(
    fd: BorrowedFd<'_>,
    data: &[u8],
    to: Option<&[u8]>,
    fds: &[BorrowedFd<'_>],
    cred: Option<libc::ucred>,
) -> io::Result<usize> {
    let addr = to.map(sockaddr).transpose()?;
    let raw: Vec<libc::c_int> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let bytes = std::mem::size_of_val(raw.as_slice());
    let cred_bytes = std::mem::size_of::<libc::ucred>();
    // SAFETY: CMSG_SPACE is a constant computation.
    let cmsg_space = |n: usize| unsafe { libc::CMSG_SPACE(n as u32) } as usize;
    let rights_space = if raw.is_empty() { 0 } else { cmsg_space(bytes) };
    let cred_space = if cred.is_some() { cmsg_space(cred_bytes) } else { 0 };
    let space = rights_space + cred_space;
    let mut control = vec![0u64; space.div_ceil(8).max(1)];
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: msghdr is plain integers and pointers; all-zero is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    if let Some((sa, len)) = &addr {
        msg.msg_name = (sa as *const libc::sockaddr_un) as *mut libc::c_void;
        msg.msg_namelen = *len;
    }
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if space > 0 {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space;
    }
    // SAFETY: the control buffer is `space` long: CMSG_SPACE of each header written, in order,
    // so each header and its payload lies inside it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        if !raw.is_empty() && !c.is_null() {
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(bytes as u32) as usize;
            std::ptr::copy_nonoverlapping(raw.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), bytes);
            c = (c as *mut u8).add(rights_space).cast();
        }
        if let Some(u) = cred {
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_CREDENTIALS;
            (*c).cmsg_len = libc::CMSG_LEN(cred_bytes as u32) as usize;
            (libc::CMSG_DATA(c) as *mut libc::ucred).write_unaligned(u);
        }
    }
    loop {
        // SAFETY: every pointer in msg refers to a live buffer of the length given beside it
        // (the kernel only reads the iovec's data).
        let r = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `sendto(2)` with `MSG_DONTWAIT | MSG_NOSIGNAL`, to `to` (raw `sun_path` bytes) or, when `None`,
/// to the connected peer. Returns the number of bytes sent.
pub fn send(fd: BorrowedFd<'_>, data: &[u8], to: Option<&[u8]>) -> io::Result<usize> {
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    let addr = to.map(sockaddr).transpose()?;
    loop {
        let (p, len) = match &addr {
            Some((sa, len)) => ((sa as *const libc::sockaddr_un).cast::<libc::sockaddr>(), *len),
            None => (std::ptr::null(), 0),
        };
        // SAFETY: data is valid for reads of data.len() bytes; p is null or a valid sockaddr_un of `len` bytes.
        let r = unsafe { libc::sendto(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), flags, p, len) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One `sock_diag` answer: the `unix_diag_msg` header fields and the raw attributes.
#[derive(Debug, Clone, Default)]
pub struct DiagMsg {
    pub ty: u8,
    pub state: u8,
    pub ino: u32,
    /// (attribute type, payload).
    pub attrs: Vec<(u16, Vec<u8>)>,
}

/// Dump every unix socket of this network namespace with `NETLINK_SOCK_DIAG`
/// (`SOCK_DIAG_BY_FAMILY`, `struct unix_diag_req` with `udiag_show = show`); see sock_diag(7).
pub fn unix_diag_dump(show: u32) -> io::Result<Vec<DiagMsg>> {
    // unix_diag_req (24 bytes)
    let mut req = Vec::with_capacity(24);
    req.push(libc::AF_UNIX as u8);
    req.push(0);
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes()); // all states
    req.extend_from_slice(&0u32.to_ne_bytes()); // ino
    req.extend_from_slice(&show.to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]); // no cookie
    let mut out = Vec::new();
    sockdiag::dump(&req, |body| {
        if body.len() < 16 {
            return Err(sockdiag::bad());
        }
        let ino = sockdiag::rd32(body, 4).ok_or_else(sockdiag::bad)?;
        let attrs = sockdiag::attrs(body, 16)?.into_iter().map(|(t, v)| (t, v.to_vec())).collect();
        out.push(DiagMsg { ty: body[1], state: body[2], ino, attrs });
        Ok(())
    })?;
    Ok(out)
}

/// Take over a socket inherited at fd number `fd` (`ferry swrk FD`, where the client passes its
/// end of a socketpair): it must be an AF_UNIX socket of type `ty`; it is moved to a new
/// close-on-exec number (so no process ferry creates inherits it) and `fd` is closed. On error
/// `fd` is left as it was.
pub fn adopt_inherited(fd: i32, ty: i32) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    let get = |opt: i32| -> io::Result<i32> {
        let mut v: i32 = 0;
        let mut len = std::mem::size_of::<i32>() as libc::socklen_t;
        // SAFETY: `v` is valid for writes of `len` bytes; a bad fd is an error, not UB.
        cvt_i(unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&mut v as *mut i32).cast(), &mut len) })?;
        Ok(v)
    };
    if get(libc::SO_DOMAIN)? != libc::AF_UNIX || get(libc::SO_TYPE)? != ty {
        return Err(io::Error::from_raw_os_error(libc::EPROTOTYPE));
    }
    // SAFETY: integer arguments; the kernel checks `fd`.
    let new = cvt_i(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) })?;
    // SAFETY: `fd` was inherited and is owned by no Rust object; we replace it with `new`.
    unsafe { libc::close(fd) };
    Ok(owned(new))
}

/// `getsockopt(SO_PEERCRED)`: pid, euid and egid the kernel took for the peer (at
/// socketpair(), connect() or, for a listener, listen()); pid 0 if none was ever taken.
pub fn peer_cred(fd: BorrowedFd<'_>) -> io::Result<libc::ucred> {
    let v = crate::sockopt::get_raw(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, 12)?;
    let word = |i: usize| -> io::Result<[u8; 4]> {
        v.get(i * 4..i * 4 + 4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
    };
    Ok(libc::ucred {
        pid: i32::from_ne_bytes(word(0)?),
        uid: u32::from_ne_bytes(word(1)?),
        gid: u32::from_ne_bytes(word(2)?),
    })
}

/// SO_PEERGROUPS (asm-generic/socket.h).
const SO_PEERGROUPS: i32 = 59;

/// `getsockopt(SO_PEERGROUPS)`: the supplementary groups of the peer's credentials.
pub fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut cap = 64 * 4;
    loop {
        let mut buf = vec![0u8; cap];
        let mut len = cap as libc::socklen_t;
        // SAFETY: `buf` is valid for writes of `len` bytes and `len` is a valid in/out pointer.
        let r = unsafe {
            libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, SO_PEERGROUPS, buf.as_mut_ptr().cast(), &mut len)
        };
        match cvt_i(r) {
            Ok(_) => {
                buf.truncate(len as usize);
                return Ok(buf.chunks_exact(4).map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect());
            }
            // (ERANGE: `len` now says how much is needed.)
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) && (len as usize) > cap => cap = len as usize,
            Err(e) => return Err(e),
        }
    }
}

/// The pid of the process that created the peer end of a connected unix socket (its
/// `SO_PEERCRED`; for a socketpair, the process that made the pair).
pub fn peer_pid(fd: BorrowedFd<'_>) -> io::Result<i32> {
    let v = crate::sockopt::get_raw(fd, libc::SOL_SOCKET, libc::SO_PEERCRED, 12)?;
    let b: [u8; 4] =
        v.get(..4).and_then(|b| b.try_into().ok()).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    Ok(i32::from_ne_bytes(b))
}
