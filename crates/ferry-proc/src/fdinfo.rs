//! `/proc/PID/fdinfo/FD`: the file position, open flags and mount of every fd ferry dumps,
//! plus the kind-specific state (eventfd counter, timerfd settings, signalfd mask, inotify
//! watches, epoll targets) that only this file exposes.
//!
//! The common head (`pos`, `flags`, `mnt_id`, `ino`) is parsed here; the kind-specific lines are
//! kept verbatim in [`FdInfo::raw`] for the code that dumps that kind to interpret, since their
//! shapes differ (`tfd: 5 events: 19 data: ...` is one epoll line, not three keys).

use crate::{dec, radix, ParseError};

/// `/proc/PID/fdinfo/FD`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FdInfo {
    pub pos: u64,
    /// `O_*` flags of the open file description, plus `O_CLOEXEC` for the fd (octal in the file).
    pub flags: u32,
    pub mnt_id: u32,
    /// Inode number (Linux 5.14+).
    pub ino: Option<u64>,
    /// Every line split at the first `:`, both sides trimmed, in file order; keys that occur on
    /// several lines (`tfd`, `inotify wd`) repeat. A line without a `:` is kept whole as the key
    /// with an empty value.
    pub raw: Vec<(String, String)>,
}

const FILE: &str = "fdinfo";

/// Parse `/proc/PID/fdinfo/FD`.
impl FdInfo {
    /// The (trimmed) value of the first `key:` line, for the kind-specific fields.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.raw.iter().find(|(k, _)| k == key).map(|(_, v)| v.trim())
    }

    /// The (trimmed) values of every `key:` line (epoll `tfd`, `lock` ...), in order.
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.raw.iter().filter(move |(k, _)| k == key).map(|(_, v)| v.trim())
    }
}

pub fn parse_fdinfo(text: &str) -> Result<FdInfo, ParseError> {
    let raw: Vec<(String, String)> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap_or((l, ""));
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect();
    let get = |field: &'static str| {
        raw.iter().find(|(k, _)| k == field).map(|(_, v)| v.as_str()).ok_or(ParseError::Missing { file: FILE, field })
    };
    let flags = get("flags")?;
    Ok(FdInfo {
        pos: dec(FILE, "pos", get("pos")?)?,
        flags: u32::try_from(radix(FILE, "flags", flags, 8)?).map_err(|_| crate::bad(FILE, "flags", flags))?,
        mnt_id: dec(FILE, "mnt_id", get("mnt_id")?)?,
        ino: get("ino").ok().map(|v| dec(FILE, "ino", v)).transpose()?,
        raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn head_and_raw() {
        let fi = parse_fdinfo("pos:\t100\nflags:\t02100002\nmnt_id:\t27\nino:\t10010778\n").expect("parses");
        assert_eq!((fi.pos, fi.flags, fi.mnt_id, fi.ino), (100, 0o2100002, 27, Some(10010778)));
        assert_eq!(fi.raw, kv(&[("pos", "100"), ("flags", "02100002"), ("mnt_id", "27"), ("ino", "10010778")]));
    }

    #[test]
    fn ino_is_optional() {
        let fi = parse_fdinfo("pos:\t0\nflags:\t00\nmnt_id:\t9\n").expect("parses");
        assert_eq!(fi.ino, None);
    }

    #[test]
    fn kind_specific_lines_are_kept_in_order() {
        let text = "pos:\t0\nflags:\t02\nmnt_id:\t17\n\
tfd:        8 events:       1d data:                7  pos:0 ino:1a sdev:10\n\
tfd:        7 events:       19 data:             1234  pos:0 ino:1a sdev:10\n\
  op=0, task_works=0\n";
        let fi = parse_fdinfo(text).expect("parses");
        assert_eq!(
            &fi.raw[3..],
            &kv(&[
                ("tfd", "8 events:       1d data:                7  pos:0 ino:1a sdev:10"),
                ("tfd", "7 events:       19 data:             1234  pos:0 ino:1a sdev:10"),
                ("op=0, task_works=0", ""),
            ])[..]
        );
    }

    #[test]
    fn missing_and_bad_head_fields_are_errors() {
        assert_eq!(
            parse_fdinfo("pos:\t0\nflags:\t02\n").map_err(|e| e.to_string()),
            Err("missing mnt_id in fdinfo".into())
        );
        assert_eq!(
            parse_fdinfo("pos:\t0\nflags:\t09\nmnt_id:\t1\n").map_err(|e| e.to_string()),
            Err(r#"bad flags "09" in fdinfo"#.into())
        );
        assert!(parse_fdinfo("pos:\t0\nflags:\t077777777777\nmnt_id:\t1\n").is_err());
        assert!(parse_fdinfo("pos:\t-1\nflags:\t0\nmnt_id:\t1\n").is_err());
        assert!(parse_fdinfo("pos:\t0\nflags:\t0\nmnt_id:\t1\nino:\tx\n").is_err());
    }
}
