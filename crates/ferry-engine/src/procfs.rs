//! Reading /proc files of a target, with the path in every error.

use crate::error::{Ctx, Error};
use std::path::PathBuf;

pub(crate) fn path(pid: i32, rest: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{rest}"))
}

pub(crate) fn read_string(pid: i32, rest: &str) -> Result<String, Error> {
    let p = path(pid, rest);
    std::fs::read_to_string(&p).ctx(|| format!("cannot read {}", p.display()))
}

pub(crate) fn read_bytes(pid: i32, rest: &str) -> Result<Vec<u8>, Error> {
    let p = path(pid, rest);
    std::fs::read(&p).ctx(|| format!("cannot read {}", p.display()))
}

/// Open a /proc file of `pid` for reading (pagemap, mem ...).
pub(crate) fn open(pid: i32, rest: &str) -> Result<std::fs::File, Error> {
    let p = path(pid, rest);
    std::fs::File::open(&p).ctx(|| format!("cannot open {}", p.display()))
}

pub(crate) fn read_link(pid: i32, rest: &str) -> Result<String, Error> {
    let p = path(pid, rest);
    let l = std::fs::read_link(&p).ctx(|| format!("cannot read link {}", p.display()))?;
    Ok(l.to_string_lossy().into_owned())
}

pub(crate) fn parse<T>(pid: i32, rest: &str, r: Result<T, ferry_proc::ParseError>) -> Result<T, Error> {
    r.map_err(|e| Error::Invalid { object: path(pid, rest).display().to_string(), what: e.to_string() })
}

/// Where ferry finds path `p` as process `pid` sees it: `p` itself when the process is in
/// ferry's mount namespace, else through the process's root (`/proc/PID/root/p`: a process
/// in a mount namespace of its own, state/mounts.rs).
pub(crate) fn in_root(pid: i32, p: &str) -> PathBuf {
    let own = std::fs::read_link("/proc/self/ns/mnt").ok();
    if own.is_some() && std::fs::read_link(path(pid, "ns/mnt")).ok() == own {
        return PathBuf::from(p);
    }
    path(pid, &format!("root/{}", p.trim_start_matches('/')))
}

/// The threads of `pid`, in order.
pub(crate) fn list_tids(pid: i32) -> Result<Vec<i32>, Error> {
    let dir = path(pid, "task");
    let mut tids: Vec<i32> = std::fs::read_dir(&dir)
        .map_err(|_| Error::NoProcess { pid })?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// The children of `pid` (of every thread of it).
pub(crate) fn children_of(pid: i32) -> Result<Vec<i32>, Error> {
    let mut out = Vec::new();
    for tid in list_tids(pid)? {
        let text = read_string(pid, &format!("task/{tid}/children"))?;
        out.extend(text.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
    }
    Ok(out)
}

/// A process's start time (clock ticks after boot, /proc/PID/stat): with its pid, what tells it
/// from a later process given the same pid. None if it is gone.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    let text = read_string(pid, "stat").ok()?;
    ferry_proc::parse_stat(&text).ok().map(|s| s.start_time)
}
