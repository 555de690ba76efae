//! Classic BPF socket filters (`SO_ATTACH_FILTER`, `SO_LOCK_FILTER`), for every kind of socket
//! ferry restores (unix and inet sockets).
//!
//! The kernel hands a classic filter back as it was attached (`SO_GET_FILTER`), so it is saved
//! as its instructions and attached again to the new socket. An eBPF program (`SO_ATTACH_BPF`,
//! `SO_ATTACH_REUSEPORT_*`) cannot be read back: such a socket is refused.

use ferry_sys::sockopt;
use std::os::fd::BorrowedFd;

/// The socket's filter and whether it is locked; `Err(what)` names what cannot be saved.
pub fn collect(sock: BorrowedFd<'_>) -> Result<(Vec<u8>, bool), String> {
    match sockopt::get_filter(sock) {
        Ok(None) => Ok((Vec::new(), false)),
        Ok(Some(code)) => {
            let locked = sockopt::get_int(sock, libc::SOL_SOCKET, libc::SO_LOCK_FILTER).unwrap_or(0) != 0;
            Ok((code, locked))
        }
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
            Err("an eBPF socket filter (SO_ATTACH_BPF), which cannot be read back".into())
        }
        Err(e) => Err(format!("a socket filter that cannot be read ({e})")),
    }
}

/// Attach `code` (if any) to the new socket, and lock it if it was.
pub fn restore(sock: BorrowedFd<'_>, code: &[u8], locked: bool) -> std::io::Result<()> {
    if code.is_empty() {
        return Ok(());
    }
    sockopt::attach_filter(sock, code)?;
    if locked {
        sockopt::set_int(sock, libc::SOL_SOCKET, libc::SO_LOCK_FILTER, 1)?;
    }
    Ok(())
}
