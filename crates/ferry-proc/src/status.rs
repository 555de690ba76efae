//! `/proc/PID/status`: a task's credentials, signal state, capabilities, seccomp mode and its
//! pids in every nested pid namespace — the things ferry must put back exactly and that
//! `stat` does not carry.
//!
//! Lines are `Key:\tvalue`. Fields present since before any kernel ferry supports are
//! required; fields newer kernels added (`Umask` 4.7, `NStgid` 4.1, `CapAmb` 4.3, `NoNewPrivs`
//! 4.10, `Seccomp_filters` 5.9) default when absent. Unknown keys are skipped.

use crate::{bad, bad_line, dec, hex, radix, ParseError};

/// The fields of `/proc/PID/status` ferry uses.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    /// The task's comm, with the `\n` and `\\` escapes status uses decoded.
    pub name: String,
    pub umask: Option<u32>,
    /// `R`, `S`, `D`, `T`, `t`, `Z`, ... — the letter before the description.
    pub state: char,
    pub tgid: i32,
    pub pid: i32,
    pub ppid: i32,
    /// Pid of the tracer, 0 if untraced.
    pub tracer_pid: i32,
    /// Real, effective, saved, filesystem.
    pub uid: [u32; 4],
    /// Real, effective, saved, filesystem.
    pub gid: [u32; 4],
    pub groups: Vec<u32>,
    /// Ids in each pid namespace from the one `/proc` belongs to down to the task's own; empty
    /// on kernels without these lines.
    pub ns_tgid: Vec<i32>,
    pub ns_pid: Vec<i32>,
    pub ns_pgid: Vec<i32>,
    pub ns_sid: Vec<i32>,
    pub threads: u32,
    /// Queued signals and the RLIMIT_SIGPENDING limit.
    pub sig_q: (u64, u64),
    pub sig_pnd: u64,
    pub shd_pnd: u64,
    pub sig_blk: u64,
    pub sig_ign: u64,
    pub sig_cgt: u64,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: bool,
    /// 0 disabled, 1 strict, 2 filter.
    pub seccomp: u32,
    pub seccomp_filters: u32,
    /// Resident anonymous memory in KiB (`RssAnon`; none for kernel threads).
    pub rss_anon_kib: u64,
}

const FILE: &str = "status";

/// Every key read; the first `REQUIRED` of them must be present.
const FIELDS: &[&str] = &[
    "Name",
    "State",
    "Tgid",
    "Pid",
    "PPid",
    "TracerPid",
    "Uid",
    "Gid",
    "Groups",
    "Threads",
    "SigQ",
    "SigPnd",
    "ShdPnd",
    "SigBlk",
    "SigIgn",
    "SigCgt",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    // optional from here
    "Umask",
    "NStgid",
    "NSpid",
    "NSpgid",
    "NSsid",
    "CapAmb",
    "NoNewPrivs",
    "Seccomp",
    "Seccomp_filters",
    "RssAnon",
];
const REQUIRED: usize = 20;

/// Parse `/proc/PID/status`.
pub fn parse_status(text: &str) -> Result<Status, ParseError> {
    let mut s = Status::default();
    let mut seen = [false; FIELDS.len()];
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (key, raw) = line.split_once(':').ok_or_else(|| bad_line(FILE, line))?;
        let Some(i) = FIELDS.iter().position(|f| *f == key) else {
            continue;
        };
        let k = FIELDS[i];
        seen[i] = true;
        let v = raw.trim();
        let err = || bad(FILE, k, v);
        match k {
            // Only the tab after the colon is padding: a comm may start or end with blanks.
            "Name" => s.name = unescape_name(raw.strip_prefix('\t').unwrap_or(raw)),
            "Umask" => s.umask = Some(u32::try_from(radix(FILE, k, v, 8)?).map_err(|_| err())?),
            "State" => s.state = v.chars().next().ok_or_else(err)?,
            "Tgid" => s.tgid = dec(FILE, k, v)?,
            "Pid" => s.pid = dec(FILE, k, v)?,
            "PPid" => s.ppid = dec(FILE, k, v)?,
            "TracerPid" => s.tracer_pid = dec(FILE, k, v)?,
            "Uid" => s.uid = list(k, v)?.try_into().map_err(|_| err())?,
            "Gid" => s.gid = list(k, v)?.try_into().map_err(|_| err())?,
            "Groups" => s.groups = list(k, v)?,
            "NStgid" => s.ns_tgid = list(k, v)?,
            "NSpid" => s.ns_pid = list(k, v)?,
            "NSpgid" => s.ns_pgid = list(k, v)?,
            "NSsid" => s.ns_sid = list(k, v)?,
            "Threads" => s.threads = dec(FILE, k, v)?,
            "RssAnon" => s.rss_anon_kib = dec(FILE, k, v.trim_end_matches("kB").trim_end())?,
            "SigQ" => {
                let (queued, limit) = v.split_once('/').ok_or_else(err)?;
                s.sig_q = (dec(FILE, k, queued).map_err(|_| err())?, dec(FILE, k, limit).map_err(|_| err())?);
            }
            "SigPnd" => s.sig_pnd = hex(FILE, k, v)?,
            "ShdPnd" => s.shd_pnd = hex(FILE, k, v)?,
            "SigBlk" => s.sig_blk = hex(FILE, k, v)?,
            "SigIgn" => s.sig_ign = hex(FILE, k, v)?,
            "SigCgt" => s.sig_cgt = hex(FILE, k, v)?,
            "CapInh" => s.cap_inh = hex(FILE, k, v)?,
            "CapPrm" => s.cap_prm = hex(FILE, k, v)?,
            "CapEff" => s.cap_eff = hex(FILE, k, v)?,
            "CapBnd" => s.cap_bnd = hex(FILE, k, v)?,
            "CapAmb" => s.cap_amb = hex(FILE, k, v)?,
            "NoNewPrivs" => {
                s.no_new_privs = match v {
                    "0" => false,
                    "1" => true,
                    _ => return Err(err()),
                }
            }
            "Seccomp" => s.seccomp = dec(FILE, k, v)?,
            "Seccomp_filters" => s.seccomp_filters = dec(FILE, k, v)?,
            _ => {}
        }
    }
    if let Some(i) = seen[..REQUIRED].iter().position(|s| !s) {
        return Err(ParseError::Missing { file: FILE, field: FIELDS[i] });
    }
    Ok(s)
}

/// A whitespace-separated list of numbers; the error shows the whole value.
fn list<T: std::str::FromStr>(field: &'static str, v: &str) -> Result<Vec<T>, ParseError> {
    v.split_whitespace().map(|x| x.parse().map_err(|_| bad(FILE, field, v))).collect()
}

/// Undo the escaping status applies to the comm: newline as `\n`, backslash as `\\`.
fn unescape_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.clone().next() {
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            _ => {
                out.push('\\');
                continue;
            }
        }
        chars.next();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every required field, as an old kernel (no Umask, NS*, CapAmb, NoNewPrivs, Seccomp*)
    /// prints them.
    const OLD: &str = "Name:\tinit\nState:\tS (sleeping)\nTgid:\t1\nPid:\t1\nPPid:\t0\n\
TracerPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\nThreads:\t1\nSigQ:\t0/1024\n\
SigPnd:\t0000000000000000\nShdPnd:\t0000000000000000\nSigBlk:\t0000000000000000\n\
SigIgn:\tfffffffe57f0d8fc\nSigCgt:\t00000000280b2603\nCapInh:\t0000000000000000\n\
CapPrm:\tffffffffffffffff\nCapEff:\tffffffffffffffff\nCapBnd:\tffffffffffffffff\n";

    #[test]
    fn optional_fields_default() {
        let s = parse_status(OLD).expect("parses");
        assert_eq!(s.name, "init");
        assert_eq!(s.umask, None);
        assert_eq!(s.state, 'S');
        assert!(s.groups.is_empty());
        assert!(s.ns_tgid.is_empty() && s.ns_pid.is_empty());
        assert_eq!(s.sig_q, (0, 1024));
        assert_eq!(s.sig_ign, 0xffff_fffe_57f0_d8fc);
        assert_eq!(s.cap_amb, 0);
        assert!(!s.no_new_privs);
        assert_eq!((s.seccomp, s.seccomp_filters), (0, 0));
    }

    #[test]
    fn missing_required_field_is_named() {
        let text = OLD.replace("CapBnd:\tffffffffffffffff\n", "");
        assert_eq!(parse_status(&text), Err(ParseError::Missing { file: "status", field: "CapBnd" }));
        let text = OLD.replace("Uid:", "Uidx:");
        assert_eq!(parse_status(&text).map_err(|e| e.to_string()), Err("missing Uid in status".into()));
    }

    #[test]
    fn name_escapes_and_blanks() {
        let text = OLD.replace("Name:\tinit", "Name:\tx\\ny\tz \\\\ \\q ");
        assert_eq!(parse_status(&text).expect("parses").name, "x\ny\tz \\ \\q ");
        let text = OLD.replace("Name:\tinit", "Name:\ta: b");
        assert_eq!(parse_status(&text).expect("parses").name, "a: b");
    }

    #[test]
    fn bad_values_are_errors() {
        for (from, to, msg) in [
            ("Uid:\t0\t0\t0\t0", "Uid:\t0\t0\t0", r#"bad Uid "0\t0\t0" in status"#),
            ("Gid:\t0\t0\t0\t0", "Gid:\t0\tx\t0\t0", r#"bad Gid "0\tx\t0\t0" in status"#),
            ("SigQ:\t0/1024", "SigQ:\t0", r#"bad SigQ "0" in status"#),
            ("SigBlk:\t0000000000000000", "SigBlk:\tzz", r#"bad SigBlk "zz" in status"#),
            ("State:\tS (sleeping)", "State:\t", r#"bad State "" in status"#),
            ("Pid:\t1", "Pid:\tone", r#"bad Pid "one" in status"#),
            ("Threads:\t1", "Threads\t1", r#"bad line "Threads\t1" in status"#),
        ] {
            let text = OLD.replace(from, to);
            assert_eq!(parse_status(&text).map_err(|e| e.to_string()), Err(msg.to_string()));
        }
        let text = format!("{OLD}NoNewPrivs:\t2\n");
        assert!(parse_status(&text).is_err());
        let text = format!("{OLD}Umask:\t0089\n");
        assert!(parse_status(&text).is_err());
    }
}
