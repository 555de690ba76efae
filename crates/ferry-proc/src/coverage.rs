//! "No silent loss", enforced: every key the kernel reports about the state ferry carries is
//! in one of three lists here — saved (ferry puts it back), checked (it follows from what is
//! saved and a workload compares it after restore, or the dump refuses a value ferry cannot
//! carry), or not kept (named in docs/ARCHITECTURE.md with the reason). The tests below read
//! what the running kernel reports for every process of the machine (/proc/*/status keys,
//! smaps VmFlags codes, the fdinfo keys of each kind of fd ferry carries) and fail on a key in
//! none of the lists, and on a "not kept" key the architecture document does not name: a
//! kernel that grows a field fails them until someone decides what ferry does with it.

/// What ferry does with the keys of one /proc file (or one kind of fd's fdinfo). A key ending
/// in `*` stands for every key it starts.
pub struct Coverage {
    pub what: &'static str,
    pub saved: &'static [&'static str],
    pub checked: &'static [&'static str],
    pub not_kept: &'static [&'static str],
}

impl Coverage {
    /// Whether `key` is in one of the three lists.
    pub fn covers(&self, key: &str) -> bool {
        let hit = |p: &&str| match p.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => key == *p,
        };
        self.saved.iter().any(hit) || self.checked.iter().any(hit) || self.not_kept.iter().any(hit)
    }
}

/// /proc/PID/status (state/task.rs, creds.rs, signals.rs; checked by `procattrs status`).
pub const STATUS: Coverage = Coverage {
    what: "/proc/PID/status",
    saved: &[
        "Name",
        "Umask",
        "Tgid",
        "Pid",
        "NStgid",
        "NSpid",
        "NSpgid",
        "NSsid",
        "Uid",
        "Gid",
        "Groups",
        "Threads",
        "SigPnd",
        "ShdPnd",
        "SigBlk",
        "SigIgn",
        "SigCgt",
        "CapInh",
        "CapPrm",
        "CapEff",
        "CapBnd",
        "CapAmb",
        "NoNewPrivs",
        "THP_enabled",
        "Cpus_allowed",
        "Cpus_allowed_list",
    ],
    // Compared equal after restore by `procattrs status` (Seccomp: a filter is refused).
    checked: &[
        "Ngid",
        "TracerPid",
        "Kthread",
        "HugetlbPages",
        "CoreDumping",
        "untag_mask",
        "Seccomp",
        "Seccomp_filters",
        "Mems_allowed",
        "Mems_allowed_list",
    ],
    not_kept: &[
        "PPid",
        "State",
        "Vm*",
        "Rss*",
        "voluntary_ctxt_switches",
        "nonvoluntary_ctxt_switches",
        "FDSize",
        "SigQ",
        "Speculation_Store_Bypass",
        "SpeculationIndirectBranch",
    ],
};

/// smaps VmFlags codes (state/memory.rs; checked by the `memlayout` workload).
pub const VMFLAGS: Coverage = Coverage {
    what: "smaps VmFlags",
    saved: &[
        "rd", "wr", "ex", "sh", "mr", "mw", "me", "ms", "gd", "nr", "dp", "dd", "dc", "wf", "hg", "nh", "sr", "rr",
        "mg", "lo", "lf", "sl", "ac", "ht",
    ],
    // Refused at dump (`REFUSED_FLAGS`), or special mappings the kernel recreates (vDSO, vvar)
    // or that are refused (device mappings).
    checked: &["ss", "gu", "sf", "mt", "de", "pf", "io", "mm", "ar"],
    not_kept: &["um", "uw", "ui", "sd", "bt"],
};

/// The fdinfo keys of every file description.
pub const FDINFO_COMMON: Coverage =
    Coverage { what: "fdinfo (every fd)", saved: &["pos", "flags", "lock"], checked: &["ino"], not_kept: &["mnt_id"] };

/// The fdinfo keys of the fd kinds ferry carries that have keys of their own, by the fd's
/// /proc/PID/fd link (a link ending in `:` stands for every link it starts).
pub const FDINFO_KINDS: &[(&str, Coverage)] = &[
    (
        "anon_inode:[eventfd]",
        Coverage {
            what: "eventfd fdinfo",
            saved: &["eventfd-count", "eventfd-semaphore"],
            checked: &[],
            not_kept: &["eventfd-id"],
        },
    ),
    (
        "anon_inode:[timerfd]",
        Coverage {
            what: "timerfd fdinfo",
            saved: &["clockid", "ticks", "settime flags", "it_value", "it_interval"],
            checked: &[],
            not_kept: &[],
        },
    ),
    ("anon_inode:[signalfd]", Coverage { what: "signalfd fdinfo", saved: &["sigmask"], checked: &[], not_kept: &[] }),
    ("anon_inode:[eventpoll]", Coverage { what: "epoll fdinfo", saved: &["tfd"], checked: &[], not_kept: &[] }),
    ("anon_inode:inotify", Coverage { what: "inotify fdinfo", saved: &["inotify wd"], checked: &[], not_kept: &[] }),
    (
        "anon_inode:[fanotify]",
        Coverage {
            what: "fanotify fdinfo",
            saved: &["fanotify flags", "fanotify ino", "fanotify mnt_id", "fanotify sdev"],
            checked: &[],
            not_kept: &[],
        },
    ),
    ("/dev/ptmx", Coverage { what: "pty master fdinfo", saved: &["tty-index"], checked: &[], not_kept: &[] }),
    // Every socket (a link prefix): `scm_fds`, the fds in flight in a unix socket's queue, are
    // refused at dump (state/unix.rs).
    ("socket:", Coverage { what: "socket fdinfo", saved: &[], checked: &["scm_fds"], not_kept: &[] }),
];

/// The links of the fd kinds ferry carries without keys of their own (beyond the common ones).
pub const FDINFO_PLAIN: &[&str] = &["pipe:", "socket:", "/"];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    const ARCHITECTURE: &str = include_str!("../../../docs/ARCHITECTURE.md");

    fn pids() -> Vec<String> {
        std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Keys in none of the lists, with where they were seen.
    fn uncovered(c: &Coverage, keys: impl IntoIterator<Item = (String, String)>) -> BTreeSet<String> {
        keys.into_iter().filter(|(k, _)| !c.covers(k)).map(|(k, at)| format!("{}: {k:?} (in {at})", c.what)).collect()
    }

    #[test]
    fn every_status_key_is_covered() {
        let mut keys = Vec::new();
        for pid in pids() {
            let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { continue };
            keys.extend(
                text.lines().filter_map(|l| Some((l.split_once(':')?.0.to_string(), format!("/proc/{pid}/status")))),
            );
        }
        assert!(keys.iter().any(|(k, _)| k == "SigBlk"), "no /proc/PID/status could be read");
        let missing = uncovered(&STATUS, keys);
        assert!(missing.is_empty(), "keys ferry neither saves, checks nor names as not kept: {missing:#?}");
    }

    #[test]
    fn every_vmflag_is_covered() {
        let mut keys = Vec::new();
        for pid in pids() {
            let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else { continue };
            for l in text.lines().filter_map(|l| l.strip_prefix("VmFlags:")) {
                keys.extend(l.split_whitespace().map(|c| (c.to_string(), format!("/proc/{pid}/smaps"))));
            }
        }
        assert!(keys.iter().any(|(k, _)| k == "rd"), "no smaps could be read");
        let missing = uncovered(&VMFLAGS, keys);
        assert!(missing.is_empty(), "VmFlags codes ferry neither saves, checks nor names as not kept: {missing:#?}");
    }

    /// Every fd of every process whose kind ferry carries (fds of other kinds are refused at
    /// dump, whatever their fdinfo says).
    #[test]
    fn every_fdinfo_key_is_covered() {
        // One fd of each kind in this process at least, whatever else runs on the machine.
        use ferry_sys::process as sp;
        let (r, _w) = sp::pipe2(libc::O_CLOEXEC).expect("pipe");
        let _e = sp::eventfd(3, libc::EFD_CLOEXEC).expect("eventfd");
        let t = sp::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC).expect("timerfd");
        sp::timerfd_settime(std::os::fd::AsFd::as_fd(&t), 0, 1 << 40, 1 << 30).expect("timerfd_settime");
        let _s = sp::signalfd(1 << 9, libc::SFD_CLOEXEC).expect("signalfd");
        let ep = sp::epoll_create(libc::EPOLL_CLOEXEC).expect("epoll");
        use std::os::fd::AsRawFd;
        sp::epoll_add_numbers(ep.as_raw_fd(), r.as_raw_fd(), libc::EPOLLIN as u32, 7).expect("epoll_ctl");
        let ino = ferry_sys::objects::inotify_init(libc::IN_CLOEXEC).expect("inotify");
        ferry_sys::objects::inotify_add_watch(std::os::fd::AsFd::as_fd(&ino), c"/", libc::IN_CREATE).expect("watch");
        let mut missing = BTreeSet::new();
        let mut kinds_seen = BTreeSet::new();
        for pid in pids() {
            let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { continue };
            for fd in fds.flatten() {
                let Ok(link) = std::fs::read_link(fd.path()) else { continue };
                let link = link.to_string_lossy().into_owned();
                let at = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
                let Ok(text) = std::fs::read_to_string(&at) else { continue };
                let Ok(info) = crate::parse_fdinfo(&text) else { continue };
                let kind = FDINFO_KINDS.iter().find(|(l, _)| link == *l || (l.ends_with(':') && link.starts_with(l)));
                if kind.is_none() && !FDINFO_PLAIN.iter().any(|p| link.starts_with(p)) {
                    continue;
                }
                kinds_seen.insert(kind.map_or("plain", |(l, _)| l));
                for (k, _) in &info.raw {
                    let own = kind.is_some_and(|(_, c)| c.covers(k));
                    if !own && !FDINFO_COMMON.covers(k) {
                        let what = kind.map_or("fdinfo", |(_, c)| c.what);
                        missing.insert(format!("{what}: {k:?} (in {at}, {link})"));
                    }
                }
            }
        }
        for k in [
            "plain",
            "anon_inode:[eventfd]",
            "anon_inode:[timerfd]",
            "anon_inode:[signalfd]",
            "anon_inode:[eventpoll]",
            "anon_inode:inotify",
        ] {
            assert!(kinds_seen.contains(k), "no fdinfo of {k} could be read");
        }
        assert!(missing.is_empty(), "fdinfo keys ferry neither saves, checks nor names as not kept: {missing:#?}");
    }

    /// What is not kept is named in docs/ARCHITECTURE.md (as a word, in its "not kept" text).
    #[test]
    fn not_kept_keys_are_documented() {
        let words = |text: &str, key: &str| {
            text.match_indices(key).any(|(i, _)| {
                let before = text[..i].chars().next_back().is_none_or(|c| !c.is_alphanumeric() && c != '_');
                let after = text[i + key.len()..].chars().next().is_none_or(|c| !c.is_alphanumeric() && c != '_');
                before && after
            })
        };
        let all = [&STATUS, &VMFLAGS, &FDINFO_COMMON].into_iter().chain(FDINFO_KINDS.iter().map(|(_, c)| c));
        let undocumented: Vec<String> = all
            .flat_map(|c| {
                c.not_kept.iter().filter(|k| !words(ARCHITECTURE, k)).map(move |k| format!("{}: {k}", c.what))
            })
            .collect();
        assert!(undocumented.is_empty(), "not kept, but docs/ARCHITECTURE.md does not say so: {undocumented:?}");
    }

    /// The lists themselves: no key in two of them.
    #[test]
    fn lists_do_not_overlap() {
        let all = [&STATUS, &VMFLAGS, &FDINFO_COMMON].into_iter().chain(FDINFO_KINDS.iter().map(|(_, c)| c));
        for c in all {
            let mut seen = BTreeSet::new();
            for k in c.saved.iter().chain(c.checked).chain(c.not_kept) {
                assert!(seen.insert(*k), "{}: {k} is in two lists", c.what);
            }
        }
    }
}
