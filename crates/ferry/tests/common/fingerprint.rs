//! "Never silently different" (issue 11), checked from outside: a process tree's fingerprint is
//! what the kernel reports about every process, thread and fd of it (/proc, sock_diag,
//! getsockopt), taken before the dump and again after the restore; the two must be equal but for
//! the entries of [`ALLOWED`], each of which says why it may differ (the same reasons are in
//! docs/ARCHITECTURE.md, "Kept, checked, or deliberately not kept").
//!
//! The workloads check the state they set up; this catches what none of them thought of.
//!
//! Pids and tids are compared as they are (ferry gives every process and thread its old id).
//! Inode numbers (of pipes, sockets, anon inodes, files, namespaces) are renamed `i1, i2, ...` in
//! the order they first appear, so a recreated object compares equal when it is shared the same
//! way; a namespace shared with the test itself reads `host`.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::fd::AsFd;
use std::process::Command;

/// Differences that are right: (key pattern, reason). A key is what follows the `pid N ` /
/// `pid N tid T ` scope, a `*` in a pattern stands for any text.
pub const ALLOWED: &[(&str, &str)] = &[
    ("status VmPeak", "peak of the address space: the restoring child runs ferry's code first"),
    ("status VmHWM", "peak resident set: the restoring child runs ferry's code first"),
    ("status VmRSS", "resident pages: file pages come back on first touch, zero pages are not stored"),
    ("status Rss*", "resident pages: file pages come back on first touch, zero pages are not stored"),
    ("status VmPTE", "page tables follow the resident pages"),
    ("status *voluntary_ctxt_switches", "scheduler counters"),
    ("status SigQ", "signals queued for the whole real user id, by any process"),
    ("status FDSize", "the fd table's capacity grows with the highest fd ferry used in the child"),
    ("stat minflt", "fault counters"),
    ("stat majflt", "fault counters"),
    ("stat cminflt", "fault counters of reaped children"),
    ("stat cmajflt", "fault counters of reaped children"),
    ("stat utime", "cpu time"),
    ("stat stime", "cpu time"),
    ("stat cutime", "cpu time of reaped children"),
    ("stat cstime", "cpu time of reaped children"),
    ("stat starttime", "the restored process is a new one"),
    ("stat rss", "resident pages (see status VmRSS)"),
    ("stat processor", "the cpu it last ran on"),
    ("stat wchan", "whether it runs at that moment (0 or 1 since Linux 5.16, like State R or S)"),
    ("stat delayacct_blkio_ticks", "block i/o delay counter"),
    ("zombie status Sig*", "a zombie never runs again: its signal dispositions and mask are not recorded"),
    ("zombie stat blocked", "a zombie never runs again: its signal dispositions and mask are not recorded"),
    ("zombie stat sig*", "a zombie never runs again: its signal dispositions and mask are not recorded"),
    ("zombie status Cpus_allowed*", "a zombie never runs again: its cpu affinity is not recorded"),
    (
        "stat flags PF_FORKNOEXEC|PF_SUPERPRIV",
        "accounting bits: forked by ferry and never executed, used root's privileges while rebuilt",
    ),
    ("sessionid", "the audit session id: the kernel hands out a new one whenever loginuid is written"),
    ("fd * sock unix wmem", "memory of the unread bytes sent, which depends on how they were cut into messages"),
    ("fd * fdinfo ticks", "a periodic timer's expirations go on counting while nobody reads them"),
    ("fd * fdinfo mnt_id", "a mount namespace made anew numbers its mounts anew"),
    ("fd * fdinfo eventfd-id", "the kernel numbers eventfds itself (an identity, like the inode)"),
    ("fd * fdinfo it_value", "a running timer's time to expiry moves"),
];

/// The fields of /proc/PID/stat after the command, from field 3 on (proc(5)).
const STAT_FIELDS: &[&str] = &[
    "state",
    "ppid",
    "pgrp",
    "session",
    "tty_nr",
    "tpgid",
    "flags",
    "minflt",
    "cminflt",
    "majflt",
    "cmajflt",
    "utime",
    "stime",
    "cutime",
    "cstime",
    "priority",
    "nice",
    "num_threads",
    "itrealvalue",
    "starttime",
    "vsize",
    "rss",
    "rsslim",
    "startcode",
    "endcode",
    "startstack",
    "kstkesp",
    "kstkeip",
    "signal",
    "blocked",
    "sigignore",
    "sigcatch",
    "wchan",
    "nswap",
    "cnswap",
    "exit_signal",
    "processor",
    "rt_priority",
    "policy",
    "delayacct_blkio_ticks",
    "guest_time",
    "cguest_time",
    "start_data",
    "end_data",
    "start_brk",
    "arg_start",
    "arg_end",
    "env_start",
    "env_end",
    "exit_code",
];

/// What the kernel reports about a tree: (scope, key) -> value.
#[derive(Debug, Clone, PartialEq)]
pub struct Fingerprint(BTreeMap<(String, String), String>);

/// The fingerprint of the tree rooted at `pid`.
pub fn fingerprint(pid: i32) -> Fingerprint {
    let pids = super::tree_pids(pid);
    let mut fp = Collect { out: BTreeMap::new(), zombie: false, host_ns: HashMap::new() };
    for ns in ns_names("self") {
        if let Ok(link) = fs::read_link(format!("/proc/self/ns/{ns}")) {
            fp.host_ns.insert(link.to_string_lossy().into_owned(), ());
        }
    }
    let unix = unix_diag();
    for &p in &pids {
        fp.process(p, &pids, &unix);
    }
    Fingerprint(rename_inodes(fp.out))
}

impl Fingerprint {
    /// The differences to `after` that no entry of [`ALLOWED`] explains, one line each.
    pub fn differences(&self, after: &Fingerprint) -> Vec<String> {
        let mut out = Vec::new();
        let keys: std::collections::BTreeSet<_> = self.0.keys().chain(after.0.keys()).collect();
        for key in keys {
            let (a, b) = (self.0.get(key), after.0.get(key));
            // A zombie's keys start with "zombie ": the general entries apply to them too.
            let general = key.1.strip_prefix("zombie ").unwrap_or(&key.1);
            if a == b || ALLOWED.iter().any(|(pat, _)| glob(pat, &key.1) || glob(pat, general)) {
                continue;
            }
            let show = |v: Option<&String>| v.map_or("(missing)".to_string(), |v| format!("{v:?}"));
            out.push(format!("{} {}: {} before, {} after", key.0, key.1, show(a), show(b)));
        }
        out
    }

    /// The whole fingerprint as text (for a failure report).
    pub fn text(&self) -> String {
        self.0.iter().map(|((s, k), v)| format!("{s} {k}: {v}\n")).collect()
    }
}

/// `*` in `pat` matches any text.
fn glob(pat: &str, s: &str) -> bool {
    let mut parts = pat.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = s.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

struct Collect {
    out: BTreeMap<(String, String), String>,
    /// Whether the process being collected is a zombie (its keys start with "zombie ").
    zombie: bool,
    host_ns: HashMap<String, ()>,
}

/// `ino#N` marks an inode number that `rename_inodes` replaces.
fn ino(n: u64) -> String {
    format!("ino#{n}")
}

impl Collect {
    fn put(&mut self, scope: &str, key: impl Into<String>, value: impl Into<String>) {
        let key = if self.zombie { format!("zombie {}", key.into()) } else { key.into() };
        self.out.insert((scope.to_string(), key), value.into());
    }

    fn process(&mut self, pid: i32, tree: &[i32], unix: &HashMap<u64, String>) {
        let s = format!("pid {pid}");
        let dir = format!("/proc/{pid}");
        let read = |f: &str| fs::read_to_string(format!("{dir}/{f}")).unwrap_or_else(|e| format!("({e})"));
        let outside = |ppid: &str| ppid.trim().parse::<i32>().is_ok_and(|p| !tree.contains(&p));
        self.zombie = stat_fields(&read("stat")).first().is_some_and(|(_, state)| state == "Z");
        for (k, v) in status_lines(&read("status")) {
            // The root's parent is outside the tree: the test before, ferry restore after.
            let v = if k == "PPid" && outside(&v) { "(outside the tree)".to_string() } else { v };
            self.put(&s, format!("status {k}"), v);
        }
        for (k, v) in stat_fields(&read("stat")) {
            let v = if k == "ppid" && outside(&v) { "(outside the tree)".to_string() } else { v };
            self.put(&s, format!("stat {k}"), v);
        }
        self.split_flags(&s);
        for l in read("limits").lines().skip(1) {
            let (name, rest) = l.split_at(l.len().min(26));
            self.put(&s, format!("limits {}", name.trim()), rest.split_whitespace().collect::<Vec<_>>().join(" "));
        }
        for f in ["personality", "oom_score_adj", "loginuid", "sessionid", "comm", "timerslack_ns", "cpuset", "cgroup"]
        {
            self.put(&s, f, read(f).trim_end());
        }
        for f in ["cmdline", "environ"] {
            let v = fs::read(format!("{dir}/{f}")).map(|b| String::from_utf8_lossy(&b).replace('\0', "\\0"));
            self.put(&s, f, v.unwrap_or_else(|e| format!("({e})")));
        }
        for f in ["cwd", "root", "exe"] {
            self.put(&s, f, link(&format!("{dir}/{f}")));
        }
        // The mounts of the test's own mount namespace are not the tree's (other tests mount).
        let own_mnt = fs::read_link(format!("{dir}/ns/mnt")).ok() != fs::read_link("/proc/self/ns/mnt").ok();
        for l in read("mountinfo").lines().filter(|_| own_mnt) {
            // Drop the mount and parent ids; key by mount point.
            let fields: Vec<&str> = l.split(' ').collect();
            if fields.len() > 4 {
                self.put(&s, format!("mountinfo {}", fields[4]), fields[2..].join(" "));
            }
        }
        for ns in ns_names(&pid.to_string()) {
            let l = link(&format!("{dir}/ns/{ns}"));
            let v = if self.host_ns.contains_key(&l) { "host".to_string() } else { rename_bracketed(&l) };
            self.put(&s, format!("ns {ns}"), v);
        }
        match fs::read(format!("{dir}/auxv")) {
            Ok(b) => {
                for pair in b.chunks_exact(16) {
                    let word = |o: usize| u64::from_ne_bytes(pair[o..o + 8].try_into().unwrap_or([0; 8]));
                    if word(0) != 0 {
                        self.put(&s, format!("auxv {}", word(0)), format!("{:#x}", word(8)));
                    }
                }
            }
            Err(e) => self.put(&s, "auxv", format!("({e})")),
        }
        self.mappings(&s, &read("smaps"));
        self.fds(&s, pid, unix);
        let mut tids: Vec<i32> = fs::read_dir(format!("{dir}/task"))
            .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
            .unwrap_or_default();
        tids.sort();
        for tid in tids {
            let t = format!("pid {pid} tid {tid}");
            let read =
                |f: &str| fs::read_to_string(format!("{dir}/task/{tid}/{f}")).unwrap_or_else(|e| format!("({e})"));
            if tid != pid {
                for (k, v) in status_lines(&read("status")) {
                    let v = if k == "PPid" && outside(&v) { "(outside the tree)".to_string() } else { v };
                    self.put(&t, format!("status {k}"), v);
                }
                for (k, v) in stat_fields(&read("stat")) {
                    let v = if k == "ppid" && outside(&v) { "(outside the tree)".to_string() } else { v };
                    self.put(&t, format!("stat {k}"), v);
                }
                self.split_flags(&t);
                self.put(&t, "comm", read("comm").trim_end());
            }
            self.put(&t, "ioprio", ioprio(tid));
        }
    }

    /// The accounting bits of `stat flags` (PF_FORKNOEXEC 0x40, PF_SUPERPRIV 0x100) apart.
    fn split_flags(&mut self, scope: &str) {
        const ACCOUNTING: u64 = 0x40 | 0x100;
        let key = |k: &str| (scope.to_string(), if self.zombie { format!("zombie {k}") } else { k.to_string() });
        let Some(flags) = self.out.get(&key("stat flags")).and_then(|v| v.parse::<u64>().ok()) else { return };
        self.put(scope, "stat flags", format!("{:#x}", flags & !ACCOUNTING));
        self.put(scope, "stat flags PF_FORKNOEXEC|PF_SUPERPRIV", format!("{:#x}", flags & ACCOUNTING));
    }

    /// Every mapping of /proc/PID/smaps: what it is and its VmFlags (neighbours alike in all of
    /// it merged, as the kernel merges them when they are made anew).
    fn mappings(&mut self, s: &str, smaps: &str) {
        struct Map {
            start: u64,
            end: u64,
            off: u64,
            file: bool,
            what: String,
        }
        let mut maps: Vec<Map> = Vec::new();
        let push = |maps: &mut Vec<Map>, m: Map| match maps.last_mut() {
            Some(l) if l.end == m.start && l.what == m.what && (!m.file || l.off + (l.end - l.start) == m.off) => {
                l.end = m.end
            }
            _ => maps.push(m),
        };
        let mut cur: Option<Map> = None;
        for l in smaps.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            let range = f.first().and_then(|r| r.split_once('-')).filter(|_| !f[0].ends_with(':'));
            if let Some((a, b)) = range {
                let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else { continue };
                if let Some(m) = cur.take() {
                    push(&mut maps, m);
                }
                let off = f.get(2).and_then(|o| u64::from_str_radix(o, 16).ok()).unwrap_or(0);
                let inode = f.get(4).and_then(|i| i.parse::<u64>().ok()).unwrap_or(0);
                let path = f.get(5..).map(|p| p.join(" ")).unwrap_or_default();
                let id = if inode == 0 { "0".to_string() } else { ino(inode) };
                let what = format!("{} {} {id} {path}", f.get(1).unwrap_or(&""), f.get(3).unwrap_or(&""));
                cur = Some(Map { start, end, off, file: inode != 0, what });
            } else if let (Some(k), Some(m)) = (l.split_once(':').map(|(k, _)| k), cur.as_mut()) {
                if ["VmFlags", "ProtectionKey", "THPeligible"].contains(&k) {
                    m.what = format!("{} | {}", m.what, l.split_whitespace().collect::<Vec<_>>().join(" "));
                }
            }
        }
        if let Some(m) = cur.take() {
            push(&mut maps, m);
        }
        for m in maps {
            let off = if m.file { format!(" @{:#x}", m.off) } else { String::new() };
            self.put(s, format!("map {:x}-{:x}", m.start, m.end), format!("{}{off}", m.what));
        }
    }

    /// Every fd: its link, its fdinfo lines, and for a socket what getsockopt and sock_diag say.
    fn fds(&mut self, s: &str, pid: i32, unix: &HashMap<u64, String>) {
        let mut fds: Vec<i32> = fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
            .unwrap_or_default();
        fds.sort();
        let pidfd = ferry_sys::process::pidfd_open(pid).ok();
        for fd in fds {
            let l = link(&format!("/proc/{pid}/fd/{fd}"));
            self.put(s, format!("fd {fd}"), rename_bracketed(&l));
            let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_else(|e| format!("({e})"));
            let mut seen: HashMap<String, usize> = HashMap::new();
            for line in info.lines() {
                let (k, v) = line.split_once(':').unwrap_or((line, ""));
                let k = k.trim().to_string();
                // An epoll's targets and an inotify's watches are listed in the kernel's tree
                // order (by address): keyed by target fd and watch descriptor instead.
                let k = match k.as_str() {
                    "tfd" => format!("tfd {}", v.split_whitespace().next().unwrap_or("")),
                    "inotify wd" => format!("inotify wd {}", v.split_whitespace().next().unwrap_or("")),
                    _ => k,
                };
                let n = seen.entry(k.clone()).or_default();
                let key = if *n == 0 { format!("fd {fd} fdinfo {k}") } else { format!("fd {fd} fdinfo {k} #{n}") };
                *n += 1;
                let v = v.trim();
                let v =
                    if k == "ino" { v.parse().map(ino).unwrap_or_else(|_| v.to_string()) } else { rename_hex_ino(v) };
                self.put(s, key, v);
            }
            if let (Some(inode), Some(pidfd)) = (l.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')), &pidfd) {
                let inode: u64 = inode.parse().unwrap_or(0);
                if let Some(d) = unix.get(&inode) {
                    self.put(s, format!("fd {fd} unix_diag"), d.clone());
                }
                match ferry_sys::process::pidfd_getfd(pidfd.as_fd(), fd) {
                    Ok(sock) => {
                        for (k, v) in socket_options(sock.as_fd(), inode) {
                            self.put(s, format!("fd {fd} sock {k}"), v);
                        }
                    }
                    Err(e) => self.put(s, format!("fd {fd} sock"), format!("(pidfd_getfd: {e})")),
                }
            }
        }
    }
}

fn link(path: &str) -> String {
    fs::read_link(path).map(|l| l.to_string_lossy().into_owned()).unwrap_or_else(|e| format!("({e})"))
}

fn ns_names(pid: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(format!("/proc/{pid}/ns"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn status_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| {
            let v = v.split_whitespace().collect::<Vec<_>>().join(" ");
            // Running and sleeping are one to a restore (the scheduler decides); stopped,
            // traced and zombie are not.
            let v = if k == "State" && (v.starts_with('R') || v.starts_with('S')) { "R or S".to_string() } else { v };
            (k.to_string(), v)
        })
        .collect()
}

fn stat_fields(text: &str) -> Vec<(String, String)> {
    let Some((_, rest)) = text.rsplit_once(") ") else { return vec![("stat".into(), text.trim().into())] };
    rest.split_whitespace()
        .zip(STAT_FIELDS)
        .map(|(v, k)| {
            let v = if *k == "state" && (v == "R" || v == "S") { "R or S" } else { v };
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// `ionice -p TID` (the workspace forbids `unsafe`, so no ioprio_get here).
fn ioprio(tid: i32) -> String {
    match Command::new("ionice").args(["-p", &tid.to_string()]).output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Err(e) => format!("(ionice: {e})"),
    }
}

/// `pipe:[123]`, `net:[4026531840]` -> `pipe:[ino#123]`.
fn rename_bracketed(link: &str) -> String {
    match link.split_once(":[").and_then(|(kind, r)| Some((kind, r.strip_suffix(']')?.parse::<u64>().ok()?))) {
        Some((kind, n)) => format!("{kind}:[{}]", ino(n)),
        None => link.to_string(),
    }
}

/// The `ino:HEX` words of fdinfo lines (epoll tfd, inotify, fanotify) -> `ino:ino#N`.
fn rename_hex_ino(v: &str) -> String {
    v.split(' ')
        .map(|w| match w.strip_prefix("ino:").and_then(|h| u64::from_str_radix(h, 16).ok()) {
            Some(n) => format!("ino:{}", ino(n)),
            None => w.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Replace every `ino#N` by `iK`, K counting distinct N in key order.
fn rename_inodes(map: BTreeMap<(String, String), String>) -> BTreeMap<(String, String), String> {
    let mut names: HashMap<String, String> = HashMap::new();
    map.into_iter()
        .map(|(k, v)| {
            let mut out = String::new();
            let mut rest = v.as_str();
            while let Some(at) = rest.find("ino#") {
                out.push_str(&rest[..at]);
                let digits: String = rest[at + 4..].chars().take_while(|c| c.is_ascii_digit()).collect();
                let next = names.len() + 1;
                out.push_str(names.entry(digits.clone()).or_insert_with(|| format!("i{next}")));
                rest = &rest[at + 4 + digits.len()..];
            }
            out.push_str(rest);
            (k, out)
        })
        .collect()
}

/// Every unix socket of this network namespace, by inode: what sock_diag says.
fn unix_diag() -> HashMap<u64, String> {
    const SHOW: u32 = 1 | 4 | 0x10 | 0x40; // NAME, PEER, RQLEN, UID
    let Ok(msgs) = ferry_sys::unixsock::unix_diag_dump(SHOW) else { return HashMap::new() };
    msgs.into_iter()
        .map(|m| {
            let mut v = format!("type {} state {}", m.ty, m.state);
            for (t, p) in &m.attrs {
                let u32_at = |o: usize| p.get(o..o + 4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                match t {
                    0 => v += &format!(" name {:?}", String::from_utf8_lossy(p)),
                    2 => v += &format!(" peer {}", u32_at(0).map_or("?".into(), |i| ino(u64::from(i)))),
                    4 => v += &format!(" rqlen {:?}", u32_at(0)),
                    6 => v += &format!(" shutdown {:?}", p.first()),
                    7 => v += &format!(" uid {:?}", u32_at(0)),
                    _ => {}
                }
            }
            (u64::from(m.ino), v)
        })
        .collect()
}

/// What getsockopt, getsockname/getpeername, the queue ioctls and sock_diag say about a socket.
fn socket_options(fd: std::os::fd::BorrowedFd<'_>, inode: u64) -> Vec<(String, String)> {
    use ferry_sys::sockopt::get_raw;
    use libc::*;
    let mut out = Vec::new();
    let hex = |r: std::io::Result<Vec<u8>>| match r {
        Ok(b) => b.iter().map(|x| format!("{x:02x}")).collect::<String>(),
        Err(e) => format!("(errno {})", e.raw_os_error().unwrap_or(0)),
    };
    let int = |level, name| ferry_sys::sockopt::get_int(fd, level, name).unwrap_or(-1);
    let (domain, protocol) = (int(SOL_SOCKET, SO_DOMAIN), int(SOL_SOCKET, SO_PROTOCOL));
    let mut opts: Vec<(&str, i32, i32)> = vec![
        ("SO_TYPE", SOL_SOCKET, SO_TYPE),
        ("SO_PROTOCOL", SOL_SOCKET, SO_PROTOCOL),
        ("SO_DOMAIN", SOL_SOCKET, SO_DOMAIN),
        ("SO_ACCEPTCONN", SOL_SOCKET, SO_ACCEPTCONN),
        ("SO_REUSEADDR", SOL_SOCKET, SO_REUSEADDR),
        ("SO_REUSEPORT", SOL_SOCKET, SO_REUSEPORT),
        ("SO_KEEPALIVE", SOL_SOCKET, SO_KEEPALIVE),
        ("SO_BROADCAST", SOL_SOCKET, SO_BROADCAST),
        ("SO_DONTROUTE", SOL_SOCKET, SO_DONTROUTE),
        ("SO_LINGER", SOL_SOCKET, SO_LINGER),
        ("SO_OOBINLINE", SOL_SOCKET, SO_OOBINLINE),
        ("SO_SNDBUF", SOL_SOCKET, SO_SNDBUF),
        ("SO_RCVBUF", SOL_SOCKET, SO_RCVBUF),
        ("SO_RCVLOWAT", SOL_SOCKET, SO_RCVLOWAT),
        ("SO_RCVTIMEO", SOL_SOCKET, SO_RCVTIMEO),
        ("SO_SNDTIMEO", SOL_SOCKET, SO_SNDTIMEO),
        ("SO_PRIORITY", SOL_SOCKET, SO_PRIORITY),
        ("SO_MARK", SOL_SOCKET, SO_MARK),
        ("SO_PASSCRED", SOL_SOCKET, SO_PASSCRED),
        ("SO_PEERCRED", SOL_SOCKET, SO_PEERCRED),
        ("SO_BINDTODEVICE", SOL_SOCKET, SO_BINDTODEVICE),
        ("SO_TIMESTAMP", SOL_SOCKET, SO_TIMESTAMP),
        ("SO_BUSY_POLL", SOL_SOCKET, SO_BUSY_POLL),
    ];
    if domain == AF_INET {
        opts.extend([
            ("IP_TOS", IPPROTO_IP, IP_TOS),
            ("IP_TTL", IPPROTO_IP, IP_TTL),
            ("IP_RECVERR", IPPROTO_IP, IP_RECVERR),
            ("IP_MTU_DISCOVER", IPPROTO_IP, IP_MTU_DISCOVER),
            ("IP_FREEBIND", IPPROTO_IP, IP_FREEBIND),
            ("IP_TRANSPARENT", IPPROTO_IP, IP_TRANSPARENT),
            ("IP_MULTICAST_TTL", IPPROTO_IP, IP_MULTICAST_TTL),
            ("IP_MULTICAST_LOOP", IPPROTO_IP, IP_MULTICAST_LOOP),
        ]);
    }
    if domain == AF_INET6 {
        opts.extend([
            ("IPV6_V6ONLY", IPPROTO_IPV6, IPV6_V6ONLY),
            ("IPV6_UNICAST_HOPS", IPPROTO_IPV6, IPV6_UNICAST_HOPS),
            ("IPV6_TCLASS", IPPROTO_IPV6, IPV6_TCLASS),
        ]);
    }
    if protocol == IPPROTO_TCP && (domain == AF_INET || domain == AF_INET6) {
        opts.extend([
            ("TCP_NODELAY", IPPROTO_TCP, TCP_NODELAY),
            ("TCP_MAXSEG", IPPROTO_TCP, TCP_MAXSEG),
            ("TCP_CORK", IPPROTO_TCP, TCP_CORK),
            ("TCP_KEEPIDLE", IPPROTO_TCP, TCP_KEEPIDLE),
            ("TCP_KEEPINTVL", IPPROTO_TCP, TCP_KEEPINTVL),
            ("TCP_KEEPCNT", IPPROTO_TCP, TCP_KEEPCNT),
            ("TCP_SYNCNT", IPPROTO_TCP, TCP_SYNCNT),
            ("TCP_LINGER2", IPPROTO_TCP, TCP_LINGER2),
            ("TCP_DEFER_ACCEPT", IPPROTO_TCP, TCP_DEFER_ACCEPT),
            ("TCP_WINDOW_CLAMP", IPPROTO_TCP, TCP_WINDOW_CLAMP),
            ("TCP_CONGESTION", IPPROTO_TCP, TCP_CONGESTION),
            ("TCP_USER_TIMEOUT", IPPROTO_TCP, TCP_USER_TIMEOUT),
            ("TCP_NOTSENT_LOWAT", IPPROTO_TCP, TCP_NOTSENT_LOWAT),
        ]);
        let state = get_raw(fd, IPPROTO_TCP, TCP_INFO, 1).map(|b| b.first().copied().unwrap_or(0));
        out.push(("TCP_INFO state".to_string(), format!("{state:?}")));
    }
    if protocol == IPPROTO_UDP {
        opts.push(("UDP_CORK", IPPROTO_UDP, 1));
    }
    for (name, level, opt) in opts {
        out.push((name.to_string(), hex(get_raw(fd, level, opt, 64))));
    }
    if domain == AF_INET || domain == AF_INET6 {
        out.push(("name".into(), format!("{:?}", ferry_sys::inet::sock_name(fd).map_err(|e| e.raw_os_error()))));
        out.push(("peer".into(), format!("{:?}", ferry_sys::inet::peer_name(fd).map_err(|e| e.raw_os_error()))));
        let shutdown = ferry_sys::inet::diag_shutdown(domain, protocol, inode).map_err(|e| e.raw_os_error());
        out.push(("shutdown (sock_diag)".into(), format!("{shutdown:?}")));
    }
    if domain == AF_UNIX {
        let name = |peer| ferry_sys::unixsock::name(fd, peer).map(|n| String::from_utf8_lossy(&n).into_owned());
        out.push(("name".into(), format!("{:?}", name(false).map_err(|e| e.raw_os_error()))));
        out.push(("peer".into(), format!("{:?}", name(true).map_err(|e| e.raw_os_error()))));
    }
    out.push(("inq".into(), format!("{:?}", ferry_sys::inet::inq(fd).map_err(|e| e.raw_os_error()))));
    // For a unix socket SIOCOUTQ is the memory its sent, unread messages take, not bytes.
    let outq = if domain == AF_UNIX { "unix wmem" } else { "outq" };
    out.push((outq.into(), format!("{:?}", ferry_sys::inet::outq(fd).map_err(|e| e.raw_os_error()))));
    out
}

/// Every allowed difference is named in docs/ARCHITECTURE.md (as `PATTERN`).
#[test]
fn allowed_differences_are_documented() {
    const ARCHITECTURE: &str = include_str!("../../../../docs/ARCHITECTURE.md");
    let missing: Vec<&str> =
        ALLOWED.iter().map(|(p, _)| *p).filter(|p| !ARCHITECTURE.contains(&format!("`{p}`"))).collect();
    assert!(missing.is_empty(), "allowed fingerprint differences docs/ARCHITECTURE.md does not name: {missing:?}");
}
