//! File locks: POSIX (fcntl) record locks, flock locks and open-file-description locks, read
//! from the "lock:" lines of /proc/PID/fdinfo and taken again by the restored process itself
//! (POSIX locks belong to a process, so only the process can hold them) once its fd table is in
//! place. A lock someone else took meanwhile makes the restore fail, naming the fd.

use crate::error::{Ctx, Error};
use crate::inject::Injector;
use ferry_image::{FileLock, Process};
use ferry_sys::consts::nr;
use ferry_sys::process::vm_write;

const POSIX: i32 = 1;
const FLOCK: i32 = 2;
const OFD: i32 = 3;

/// Parse one "lock:" value: "1: POSIX  ADVISORY  WRITE 1234 fe:00:5678 100 149".
/// Waiters ("1: -> POSIX ...") are skipped: the waiting thread is blocked in its syscall and
/// asks again after restore.
fn parse(pid: i32, fd: i32, v: &str) -> Result<Option<FileLock>, Error> {
    let toks: Vec<&str> = v.split_whitespace().collect();
    if toks.get(1) == Some(&"->") {
        return Ok(None);
    }
    let bad = |what: &str| Error::Unsupported { pid, what: format!("fd {fd}: file lock {v:?} ({what})") };
    if toks.len() < 8 {
        return Err(bad("unrecognized"));
    }
    let kind = match toks[1] {
        "POSIX" => POSIX,
        "FLOCK" => FLOCK,
        "OFDLCK" => OFD,
        _ => return Err(bad("lease or delegation")),
    };
    if toks[2] != "ADVISORY" {
        return Err(bad("not advisory"));
    }
    let write = match toks[3] {
        "WRITE" => true,
        "READ" => false,
        _ => return Err(bad("unknown type")),
    };
    let start = toks[6].parse().map_err(|_| bad("bad start"))?;
    let end = if toks[7] == "EOF" { u64::MAX } else { toks[7].parse().map_err(|_| bad("bad end"))? };
    Ok(Some(FileLock { kind, write, start, end }))
}

/// Locks shown in one fd's fdinfo lines.
pub fn collect(pid: i32, fd: i32, info: &ferry_proc::FdInfo) -> Result<Vec<FileLock>, Error> {
    let mut out = Vec::new();
    for v in info.all("lock") {
        if let Some(l) = parse(pid, fd, v)? {
            out.push(l);
        }
    }
    Ok(out)
}

/// By the tracer, after ferry's helper fds are closed in the restored process (closing any fd
/// of a file drops the process's POSIX locks on it): take every lock again, from inside.
pub fn restore(inj: &Injector, scratch: u64, p: &Process) -> Result<(), Error> {
    let pid = p.pid;
    for f in &p.fds {
        for l in &f.locks {
            let what = || {
                format!(
                    "pid {pid} fd {}: cannot take back its lock on bytes {}.. (held by another process?)",
                    f.fd, l.start
                )
            };
            if l.kind == FLOCK {
                let op = if l.write { libc::LOCK_EX } else { libc::LOCK_SH } | libc::LOCK_NB;
                inj.call(nr::FLOCK, &[f.fd as u64, op as u64]).ctx(what)?;
                continue;
            }
            let len = if l.end == u64::MAX { 0 } else { l.end - l.start + 1 };
            // struct flock: l_type, l_whence (i16), pad, l_start, l_len (i64), l_pid (i32), pad
            let mut b = Vec::with_capacity(32);
            b.extend_from_slice(&(if l.write { libc::F_WRLCK } else { libc::F_RDLCK } as i16).to_le_bytes());
            b.extend_from_slice(&(libc::SEEK_SET as i16).to_le_bytes());
            b.extend_from_slice(&[0u8; 4]);
            b.extend_from_slice(&l.start.to_le_bytes());
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&[0u8; 8]);
            vm_write(pid, scratch, &b).ctx(what)?;
            let cmd = if l.kind == OFD { libc::F_OFD_SETLK } else { libc::F_SETLK };
            inj.call(nr::FCNTL, &[f.fd as u64, cmd as u64, scratch]).ctx(what)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_lock_lines() {
        let l =
            super::parse(1, 3, "1: POSIX  ADVISORY  WRITE 31033 fe:00:10011301 100 149").expect("ok").expect("lock");
        assert_eq!((l.kind, l.write, l.start, l.end), (1, true, 100, 149));
        let l = super::parse(1, 3, "2: FLOCK  ADVISORY  READ 31033 fe:00:10011301 0 EOF").expect("ok").expect("lock");
        assert_eq!((l.kind, l.write, l.end), (2, false, u64::MAX));
        assert!(super::parse(1, 3, "1: -> POSIX  ADVISORY  WRITE 31033 fe:00:1 0 EOF").expect("ok").is_none());
        assert!(super::parse(1, 3, "1: LEASE  ACTIVE    READ 31033 fe:00:1 0 EOF").is_err());
    }
}
