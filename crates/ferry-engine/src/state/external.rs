//! Files whose other end is outside the dumped tree, and how a supervisor names them: CRIU's
//! `dump --external` and `restore --inherit-fd`.
//!
//! Dump. A pipe with one end in the tree and the other outside (a supervisor's pipe leaked into
//! the job, a shell pipeline's neighbour) is dumped on any fd: its capacity, and its unread bytes
//! when the tree holds the read end (`tee`, nothing consumed); `Pipe.external` marks it. At fds
//! 0-2 it stays `Inherited` as before (restore hands over ferry's own fd 0-2). A unix socket
//! connected to a peer outside is refused unless named with `--external unix[INO]` (INO: the
//! inode of the tree's socket, as `/proc/PID/fd/N` shows it); it then becomes an `Inherited`
//! file whose `external_key` is `socket:[INO]`.
//!
//! A terminal outside the tree (not a pty whose master is in the tree) is refused on fds above 2
//! and needs `--shell-job` on fds 0-2, unless named with `--external tty[RDEV:DEV]` (CRIU's key:
//! `st_rdev` and `st_dev` of the terminal, hexadecimal): then it is an `Inherited` file with that
//! key, on any fd.
//!
//! A file the dump cannot reopen by its path (`--external file[MNT_ID:INO]`, CRIU's key: the fd's
//! mount id and the inode, hexadecimal) becomes an `Inherited` file with that key, likewise.
//!
//! Restore. Every file description of the image has a key (`key_of`: `pipe:[INO]`,
//! `socket:[INO]`, or a path relative to the root, without its leading '/'); `--inherit-fd
//! fd[N]:KEY` replaces the description with that key by ferry's own fd N, at every fd (and in
//! every process) that used it. An inherited pipe gets no bytes from the image (as in CRIU: the
//! supervisor owns that pipe). Without `--inherit-fd`, an external pipe is created anew and its
//! outside end closed, as if the peer had exited: the reader drains what was unread, then sees
//! EOF; the writer gets EPIPE (SIGPIPE). An external socket without its `--inherit-fd` is
//! refused, naming the option to give. A key that matches nothing is reported with a warning
//! (CRIU ignores it silently).

use crate::error::Error;
use ferry_image::{File, FileKind};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::os::fd::RawFd;

/// `restore --inherit-fd fd[N]:KEY`: the file description of the image whose key is `key`
/// (`pipe:[INO]`, `socket:[INO]`, a path relative to the root such as `var/log/app.log`) is
/// replaced by ferry's own fd `fd` (which must be open in ferry). Several may be given; CRIU's
/// RPC `inherit_fd { key, fd }` maps onto it one to one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InheritFd {
    pub key: String,
    pub fd: RawFd,
}

impl std::str::FromStr for InheritFd {
    type Err = String;

    /// CRIU's syntax: `fd[N]:KEY`.
    fn from_str(s: &str) -> Result<InheritFd, String> {
        let bad = || format!("{s:?} is not fd[N]:KEY (e.g. fd[3]:pipe:[12345])");
        let rest = s.strip_prefix("fd[").ok_or_else(bad)?;
        let (n, key) = rest.split_once("]:").ok_or_else(bad)?;
        let fd: RawFd = n.parse().map_err(|_| bad())?;
        if fd < 0 || key.is_empty() {
            return Err(bad());
        }
        Ok(InheritFd { key: key.to_string(), fd })
    }
}

/// One `--external` value (CRIU's forms). `Unix` is what the dump itself uses; the namespace
/// forms are parsed and kept, unchanged, for the code that restores namespaces (mounts,
/// network): ferry refuses processes in other namespaces today, so they change nothing yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum External {
    /// `unix[INO]`: the tree's unix socket of inode INO, connected to a peer outside the tree,
    /// may be dumped; restore takes it from `--inherit-fd fd[N]:socket:[INO]`.
    Unix(u32),
    /// `tty[RDEV:DEV]` (hexadecimal, as CRIU prints them: the terminal's `st_rdev` and `st_dev`):
    /// a terminal outside the tree, held on any fd, may be dumped; restore takes it from
    /// `--inherit-fd fd[N]:tty[RDEV:DEV]`.
    Tty { rdev: u64, dev: u64 },
    /// `file[MNT_ID:INO]` (hexadecimal, as CRIU prints them: the fd's `mnt_id` from fdinfo and
    /// the file's inode): a file the dump cannot reopen by path (replaced, overmounted, on a
    /// mount of another namespace, a POSIX message queue ...) is dumped as external; restore
    /// takes it from `--inherit-fd fd[N]:file[MNT_ID:INO]`.
    File { mnt_id: u32, ino: u64 },
    /// `mnt[KEY]:VALUE` (`mnt[]` alone: every external mount, CRIU's auto-detection; key and
    /// value empty then; `mnt[KEY]` without a value: value empty).
    Mount { key: String, value: String },
    /// `net[INO]:VALUE`: a network namespace of the tree (inode INO) is an external one.
    Net { key: String, value: String },
    /// `veth[IFNAME]:OUTNAME[@BRIDGE]`: the inside veth IFNAME's peer outside is OUTNAME,
    /// optionally attached to BRIDGE.
    Veth { inside: String, outside: String, bridge: Option<String> },
    /// `macvlan[IFNAME]:OUTNAME`.
    Macvlan { inside: String, outside: String },
}

impl std::str::FromStr for External {
    type Err = String;

    fn from_str(s: &str) -> Result<External, String> {
        let bad = |why: &str| format!("--external {s:?}: {why}");
        let (kind, rest) = s.split_once('[').ok_or_else(|| bad("expected KIND[KEY] (e.g. unix[12345])"))?;
        let (key, value) = rest.split_once(']').ok_or_else(|| bad("no closing ']'"))?;
        let value = match value {
            "" => None,
            v => Some(v.strip_prefix(':').ok_or_else(|| bad("expected ':' after ']'"))?.to_string()),
        };
        let need_value = |what: &str| value.clone().filter(|v| !v.is_empty()).ok_or_else(|| bad(what));
        match kind {
            "unix" => {
                if value.is_some() {
                    return Err(bad("unix[INO] takes no value"));
                }
                key.parse().map(External::Unix).map_err(|_| bad("unix[INO] needs a socket inode number"))
            }
            "tty" => {
                if value.is_some() {
                    return Err(bad("tty[RDEV:DEV] takes no value"));
                }
                let hex = |x: &str| u64::from_str_radix(x, 16).ok();
                match key.split_once(':').and_then(|(r, d)| Some((hex(r)?, hex(d)?))) {
                    Some((rdev, dev)) => Ok(External::Tty { rdev, dev }),
                    None => Err(bad("tty[RDEV:DEV] needs two hexadecimal device numbers")),
                }
            }
            "file" => {
                if value.is_some() {
                    return Err(bad("file[MNT_ID:INO] takes no value"));
                }
                let pair = key
                    .split_once(':')
                    .and_then(|(m, i)| Some((u32::from_str_radix(m, 16).ok()?, u64::from_str_radix(i, 16).ok()?)));
                match pair {
                    Some((mnt_id, ino)) => Ok(External::File { mnt_id, ino }),
                    None => Err(bad("file[MNT_ID:INO] needs a mount id and an inode number, in hexadecimal")),
                }
            }
            "mnt" => Ok(External::Mount { key: key.to_string(), value: value.unwrap_or_default() }),
            "net" => Ok(External::Net { key: key.to_string(), value: need_value("net[INO]:VALUE needs a value")? }),
            "veth" => {
                let v = need_value("veth[IFNAME]:OUTNAME[@BRIDGE] needs OUTNAME")?;
                let (outside, bridge) = match v.split_once('@') {
                    Some((o, b)) => (o.to_string(), Some(b.to_string())),
                    None => (v, None),
                };
                Ok(External::Veth { inside: key.to_string(), outside, bridge })
            }
            "macvlan" => Ok(External::Macvlan {
                inside: key.to_string(),
                outside: need_value("macvlan[IFNAME]:OUTNAME needs OUTNAME")?,
            }),
            "dev" | "pid" => Err(bad(&format!("{kind}[...] is not supported yet"))),
            _ => Err(bad(&format!("unknown kind {kind:?} (known: unix, tty, file, mnt, net, veth, macvlan)"))),
        }
    }
}

/// The unix socket inodes named with `--external unix[INO]`.
pub fn unix_inodes(external: &[External]) -> HashSet<u32> {
    external.iter().filter_map(|e| if let External::Unix(i) = e { Some(*i) } else { None }).collect()
}

/// The key of a terminal with device number `rdev` whose node is on device `dev`, as CRIU
/// writes it: `tty[RDEV:DEV]` in hexadecimal.
pub fn tty_key(rdev: u64, dev: u64) -> String {
    format!("tty[{rdev:x}:{dev:x}]")
}

/// The terminal keys named with `--external tty[RDEV:DEV]` (normalized by [`tty_key`]).
pub fn tty_keys(external: &[External]) -> HashSet<String> {
    external
        .iter()
        .filter_map(|e| if let External::Tty { rdev, dev } = e { Some(tty_key(*rdev, *dev)) } else { None })
        .collect()
}

/// The key of a file with inode `ino` opened on mount `mnt_id`, as CRIU writes it:
/// `file[MNT_ID:INO]` in hexadecimal.
pub fn file_key(mnt_id: u32, ino: u64) -> String {
    format!("file[{mnt_id:x}:{ino:x}]")
}

/// The file keys named with `--external file[MNT_ID:INO]` (normalized by [`file_key`]).
pub fn file_keys(external: &[External]) -> HashSet<String> {
    external
        .iter()
        .filter_map(|e| if let External::File { mnt_id, ino } = e { Some(file_key(*mnt_id, *ino)) } else { None })
        .collect()
}

/// The key `--inherit-fd` names file description `f` by: `pipe:[INO]` for a pipe end,
/// `socket:[INO]` for a unix socket, the key recorded for an external file, the link of an fd
/// 0-2 inherited at dump, a path relative to the root for a file, FIFO, directory or device;
/// `None` for what cannot be inherited (deleted files, memfds, anonymous inodes, ptys of the
/// tree, inet sockets).
pub fn key_of(f: &File) -> Option<String> {
    let rel = |p: &str| p.trim_start_matches('/').to_string();
    match FileKind::try_from(f.kind).ok()? {
        FileKind::Inherited if !f.external_key.is_empty() => Some(f.external_key.clone()),
        FileKind::Inherited if f.describe.starts_with('/') => Some(rel(&f.describe)),
        FileKind::Inherited => Some(f.describe.clone()),
        FileKind::Pipe => Some(format!("pipe:[{}]", f.pipe_ino)),
        FileKind::UnixSocket => f.unix.as_ref().map(|u| format!("socket:[{}]", u.ino)),
        FileKind::Regular | FileKind::CharDevice if f.ghost.is_empty() => Some(rel(&f.path)),
        FileKind::Directory | FileKind::Fifo => Some(rel(&f.path)),
        _ => None,
    }
}

/// The `--inherit-fd` list of one restore, and which keys were used.
#[derive(Default)]
pub struct Inherit {
    by_key: HashMap<String, RawFd>,
    used: RefCell<HashSet<String>>,
}

impl Inherit {
    /// Check that every fd is open in ferry and every key given once.
    pub fn new(list: &[InheritFd]) -> Result<Inherit, Error> {
        let mut by_key = HashMap::new();
        for i in list {
            let obj = || format!("--inherit-fd fd[{}]:{}", i.fd, i.key);
            if ferry_sys::raw::dup_number_above(i.fd, 0).is_err() {
                return Err(Error::Invalid { object: obj(), what: format!("fd {} is not open in ferry", i.fd) });
            }
            if by_key.insert(i.key.clone(), i.fd).is_some() {
                return Err(Error::Invalid { object: obj(), what: format!("key {} given twice", i.key) });
            }
        }
        Ok(Inherit { by_key, used: RefCell::new(HashSet::new()) })
    }

    /// The fd a supervisor gave for `f`, if any (and mark its key used).
    pub fn lookup(&self, f: &File) -> Option<(String, RawFd)> {
        if self.by_key.is_empty() {
            return None;
        }
        let key = key_of(f)?;
        let fd = *self.by_key.get(&key)?;
        self.used.borrow_mut().insert(key.clone());
        Some((key, fd))
    }

    /// Whether a pipe's bytes must stay out: the pipe comes from the supervisor.
    pub fn has_pipe(&self, ino: u64) -> bool {
        self.by_key.contains_key(&format!("pipe:[{ino}]"))
    }

    /// Count `key` as used by something other than a file (an external namespace joined by
    /// state/namespaces.rs: runc's `extRootNetNS`).
    pub fn mark_used(&self, key: &str) {
        if self.by_key.contains_key(key) {
            self.used.borrow_mut().insert(key.to_string());
        }
    }

    /// Warn about every key that matched no file of the image.
    pub fn warn_unused(&self) {
        let used = self.used.borrow();
        let mut unused: Vec<_> = self.by_key.iter().filter(|(k, _)| !used.contains(*k)).collect();
        unused.sort();
        for (key, fd) in unused {
            tracing::warn!("--inherit-fd fd[{fd}]:{key}: no file of the image has this key; fd {fd} is not used");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_inherit_fd() {
        let i: InheritFd = "fd[7]:pipe:[1234]".parse().expect("valid");
        assert_eq!(i, InheritFd { key: "pipe:[1234]".into(), fd: 7 });
        let i: InheritFd = "fd[0]:var/log/a.log".parse().expect("valid");
        assert_eq!(i.key, "var/log/a.log");
        for bad in ["7:pipe:[1]", "fd[x]:a", "fd[-1]:a", "fd[3]:", "fd[3]pipe"] {
            assert!(bad.parse::<InheritFd>().is_err(), "{bad}");
        }
    }

    #[test]
    fn parse_external() {
        assert_eq!("unix[42]".parse::<External>().expect("valid"), External::Unix(42));
        assert_eq!(
            "mnt[/data]:vol1".parse::<External>().expect("valid"),
            External::Mount { key: "/data".into(), value: "vol1".into() }
        );
        assert_eq!(
            "mnt[]".parse::<External>().expect("valid"),
            External::Mount { key: String::new(), value: String::new() }
        );
        assert_eq!(
            "veth[eth0]:veth123@br0".parse::<External>().expect("valid"),
            External::Veth { inside: "eth0".into(), outside: "veth123".into(), bridge: Some("br0".into()) }
        );
        assert_eq!(
            "net[4026531840]:extnet".parse::<External>().expect("valid"),
            External::Net { key: "4026531840".into(), value: "extnet".into() }
        );
        assert_eq!("tty[8800:D]".parse::<External>().expect("valid"), External::Tty { rdev: 0x8800, dev: 0xd });
        assert_eq!(tty_key(0x8800, 0xd), "tty[8800:d]");
        assert_eq!("file[1f:A0]".parse::<External>().expect("valid"), External::File { mnt_id: 0x1f, ino: 0xa0 });
        assert_eq!(file_key(0x1f, 0xa0), "file[1f:a0]");
        for bad in
            ["unix[x]", "unix[1]:v", "bogus[1]", "tty[1]", "tty[x:2]", "file[3]", "dev[1]", "net[1]", "veth[a]", "unix"]
        {
            assert!(bad.parse::<External>().is_err(), "{bad}");
        }
    }

    #[test]
    fn keys() {
        let pipe = File { kind: FileKind::Pipe as i32, pipe_ino: 9, ..Default::default() };
        assert_eq!(key_of(&pipe).as_deref(), Some("pipe:[9]"));
        let reg = File { kind: FileKind::Regular as i32, path: "/var/log/a".into(), ..Default::default() };
        assert_eq!(key_of(&reg).as_deref(), Some("var/log/a"));
        let ghost = File { ghost: "ghost-1-2.img".into(), ..reg };
        assert_eq!(key_of(&ghost), None);
        let ext = File {
            kind: FileKind::Inherited as i32,
            describe: "unix stream".into(),
            external_key: "socket:[5]".into(),
            ..Default::default()
        };
        assert_eq!(key_of(&ext).as_deref(), Some("socket:[5]"));
        let stdio = File { kind: FileKind::Inherited as i32, describe: "pipe:[77]".into(), ..Default::default() };
        assert_eq!(key_of(&stdio).as_deref(), Some("pipe:[77]"));
    }
}
