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
