//! Parsers for the `/proc` files ferry reads while dumping a process.
//!
//! Every parser takes the file's contents (text, or bytes for `auxv`) rather than a pid, so the
//! format handling is tested on captured fixtures without ptrace, root or a live target. Reading
//! the file is the caller's job; `/proc/PID/*` of a stopped tracee does not change under us.
//!
//! The parsers are strict about the fields ferry uses — a misread address, fd flag or signal
//! mask would produce an image that restores into a subtly different process, so a line that
//! does not have the expected shape is an error, never skipped. They are lenient about keys
//! they do not know, because every kernel release adds some.
//!
//! Inputs are `&str`: a path that is not UTF-8 makes reading the file as a string fail, which
//! is the caller's cue to refuse the dump rather than store a mangled name.

#![forbid(unsafe_code)]

mod auxv;
mod cgroup;
pub mod coverage;
mod fdinfo;
mod maps;
mod mountinfo;
mod netsock;
mod schedstat;
mod smaps;
mod stat;
mod status;
mod timers;

pub use auxv::{parse_auxv, AT_NULL};
pub use cgroup::{parse_cgroup, CgroupLine};
pub use fdinfo::{parse_fdinfo, FdInfo};
pub use maps::{parse_maps, MapEntry, Perms};
pub use mountinfo::{parse_mountinfo, MountInfo};
pub use netsock::{parse_net_sockets, NetSocket};
pub use schedstat::{parse_schedstat, SchedStat};
pub use smaps::{parse_smaps, SmapsEntry};
pub use stat::{parse_stat, Stat};
pub use status::{parse_status, Status};
pub use timers::{parse_timers, PosixTimer};

use std::str::FromStr;

/// Why a `/proc` file could not be parsed. `file` names the `/proc` file kind ("maps", "stat").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A line does not have the shape its file uses.
    #[error("bad line {line:?} in {file}")]
    BadLine { file: &'static str, line: String },
    /// A field is present but its value does not parse.
    #[error("bad {field} {value:?} in {file}")]
    BadField { file: &'static str, field: &'static str, value: String },
    /// A field ferry needs is absent.
    #[error("missing {field} in {file}")]
    Missing { file: &'static str, field: &'static str },
    /// A whitespace-separated record ends before the fields ferry needs.
    #[error("{file} has {got} fields, want at least {want}")]
    TooFewFields { file: &'static str, got: usize, want: usize },
    /// `auxv` is a sequence of 16-byte (key, value) pairs; anything else is truncated.
    #[error("auxv length {len} is not a multiple of 16")]
    AuxvLength { len: usize },
    /// `auxv` ended without its `AT_NULL` terminator.
    #[error("auxv has no AT_NULL entry")]
    AuxvUnterminated,
}

/// Decode the `\ooo` octal escapes `/proc` uses for awkward bytes in paths: `seq_path` and
/// friends write space as `\040`, tab `\011`, newline `\012` and backslash `\134` in
/// `mountinfo`, and newline as `\012` in `maps`.
///
/// Only a backslash followed by exactly three octal digits naming a byte (`\000`..`\377`) is
/// decoded; any other backslash is kept as is. Decoded bytes that do not form UTF-8 become
/// U+FFFD — the kernel only escapes ASCII, so that cannot come from a real `/proc` file.
pub fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if let Some(byte) = octal_byte(&b[i + 1..]) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// The byte named by three leading octal digits of `b`, if they are there and fit in a byte.
fn octal_byte(b: &[u8]) -> Option<u8> {
    let d = b.get(..3)?;
    if !d.iter().all(|c| (b'0'..=b'7').contains(c)) || d[0] > b'3' {
        return None;
    }
    Some(((d[0] - b'0') << 6) | ((d[1] - b'0') << 3) | (d[2] - b'0'))
}

/// Parse a decimal field, naming it in the error.
pub(crate) fn dec<T: FromStr>(file: &'static str, field: &'static str, s: &str) -> Result<T, ParseError> {
    s.parse().map_err(|_| bad(file, field, s))
}

/// Parse a hexadecimal field (no `0x`), naming it in the error.
pub(crate) fn hex(file: &'static str, field: &'static str, s: &str) -> Result<u64, ParseError> {
    radix(file, field, s, 16)
}

/// Parse an unsigned field in `radix`; unlike `from_str_radix` this refuses a sign.
pub(crate) fn radix(file: &'static str, field: &'static str, s: &str, radix: u32) -> Result<u64, ParseError> {
    if s.starts_with('+') {
        return Err(bad(file, field, s));
    }
    u64::from_str_radix(s, radix).map_err(|_| bad(file, field, s))
}

pub(crate) fn bad(file: &'static str, field: &'static str, value: &str) -> ParseError {
    ParseError::BadField { file, field, value: value.to_owned() }
}

pub(crate) fn bad_line(file: &'static str, line: &str) -> ParseError {
    ParseError::BadLine { file, line: line.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_decodes_proc_escapes() {
        assert_eq!(unescape_octal(r"/mnt/a\040b\011c\012d\134e"), "/mnt/a b\tc\nd\\e");
    }

    #[test]
    fn unescape_keeps_other_backslashes() {
        assert_eq!(unescape_octal(r"a\b"), r"a\b");
        assert_eq!(unescape_octal(r"a\04"), r"a\04");
        assert_eq!(unescape_octal(r"a\"), r"a\");
        assert_eq!(unescape_octal(r"\400"), r"\400");
        assert_eq!(unescape_octal(r"\08x"), r"\08x");
        assert_eq!(unescape_octal("plain/ü"), "plain/ü");
    }

    #[test]
    fn unescape_escaped_backslash_is_not_reescaped() {
        // "\134040" is a literal backslash followed by "040", not a space.
        assert_eq!(unescape_octal(r"\134040"), r"\040");
    }

    #[test]
    fn radix_refuses_sign() {
        assert!(radix("t", "f", "+1", 16).is_err());
        assert_eq!(radix("t", "f", "ff", 16), Ok(255));
    }
}
