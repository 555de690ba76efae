//! `/proc/PID/maps`: the list of VMAs ferry walks to decide what memory to dump and how to
//! recreate each mapping (file-backed, anonymous, shared, special).
//!
//! A line is `start-end perms offset major:minor inode` followed, for named mappings, by
//! padding and the path. The path is everything after that padding — it may contain spaces
//! and `)` — so the line is not split on whitespace beyond the inode. `smaps` headers use the
//! same format, so [`parse_line`] is shared with it.

use crate::{bad_line, ParseError};

/// Protection and sharing of a mapping, from the four-character `rwxp`/`rwxs` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Perms {
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// `s` (MAP_SHARED) rather than `p` (MAP_PRIVATE).
    pub shared: bool,
}

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub perms: Perms,
    /// Offset into the file (or page offset for some special mappings), in bytes.
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// Path or pseudo-name (`[heap]`, `[stack]`, `[vdso]`, `[vvar]`, `[vvar_vclock]`,
    /// `[vsyscall]`, `[anon:name]`, ...), `None` for anonymous memory; the ` (deleted)` suffix
    /// is stripped and reported in `deleted`.
    ///
    /// A newline in a file name, which the kernel writes as `\012`, is decoded; nothing else
    /// in a maps path is escaped.
    pub path: Option<String>,
    pub deleted: bool,
}

const DELETED: &str = " (deleted)";

/// Parse all of `/proc/PID/maps`.
pub fn parse_maps(text: &str) -> Result<Vec<MapEntry>, ParseError> {
    text.lines().filter(|l| !l.is_empty()).map(|l| parse_line("maps", l)).collect()
}

/// Parse one maps-format line; `file` names the file for errors ("maps" or "smaps").
pub(crate) fn parse_line(file: &'static str, line: &str) -> Result<MapEntry, ParseError> {
    let err = || bad_line(file, line);
    let (range, rest) = next_field(line).ok_or_else(err)?;
    let (perms, rest) = next_field(rest).ok_or_else(err)?;
    let (offset, rest) = next_field(rest).ok_or_else(err)?;
    let (dev, rest) = next_field(rest).ok_or_else(err)?;
    // The inode is the last field that may end the line: unnamed mappings have no path.
    let (inode, rest) = next_field(rest).unwrap_or((rest.trim_start_matches(' '), ""));

    let (start, end) = range.split_once('-').ok_or_else(err)?;
    let (major, minor) = dev.split_once(':').ok_or_else(err)?;
    let hex = |s: &str| crate::radix(file, "", s, 16).map_err(|_| err());
    let start = hex(start)?;
    let end = hex(end)?;
    if end < start {
        return Err(err());
    }

    let path = rest.trim_start_matches(' ');
    let (path, deleted) = match path.strip_suffix(DELETED) {
        Some(p) => (p, true),
        None => (path, false),
    };
    Ok(MapEntry {
        start,
        end,
        perms: parse_perms(perms).ok_or_else(err)?,
        offset: hex(offset)?,
        dev_major: u32::try_from(hex(major)?).map_err(|_| err())?,
        dev_minor: u32::try_from(hex(minor)?).map_err(|_| err())?,
        inode: inode.parse().map_err(|_| err())?,
        path: (!path.is_empty()).then(|| path.replace("\\012", "\n")),
        deleted,
    })
}

/// Split off the next space-separated field, skipping leading spaces; `None` if no space
/// follows it (the field would end the line) or nothing is left.
fn next_field(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start_matches(' ');
    let (field, rest) = s.split_once(' ')?;
    (!field.is_empty()).then_some((field, rest))
}

fn parse_perms(s: &str) -> Option<Perms> {
    let flag = |c: u8, set: u8| match c {
        b'-' => Some(false),
        c if c == set => Some(true),
        _ => None,
    };
    match s.as_bytes() {
        [r, w, x, p] => Some(Perms {
            read: flag(*r, b'r')?,
            write: flag(*w, b'w')?,
            exec: flag(*x, b'x')?,
            shared: match p {
                b's' => true,
                b'p' => false,
                _ => return None,
            },
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(line: &str) -> MapEntry {
        parse_line("maps", line).expect("line parses")
    }

    #[test]
    fn file_mapping() {
        let e = one("55fcf4640000-55fcf4641000 r-xp 00001000 fe:00 10010782                   /tmp/cap/cap");
        assert_eq!(
            e,
            MapEntry {
                start: 0x55fc_f464_0000,
                end: 0x55fc_f464_1000,
                perms: Perms { read: true, write: false, exec: true, shared: false },
                offset: 0x1000,
                dev_major: 0xfe,
                dev_minor: 0,
                inode: 10010782,
                path: Some("/tmp/cap/cap".into()),
                deleted: false,
            }
        );
    }

    #[test]
    fn anonymous_with_and_without_trailing_space() {
        for line in
            ["7f12c93f5000-7f12c93fa000 rw-p 00000000 00:00 0 ", "7f12c93f5000-7f12c93fa000 rw-p 00000000 00:00 0"]
        {
            let e = one(line);
            assert_eq!(e.path, None);
            assert_eq!(e.inode, 0);
            assert!(!e.deleted);
        }
    }

    #[test]
    fn path_with_spaces_and_parens_is_kept_whole() {
        let e = one("7f12c95e3000-7f12c95e5000 r--s 00000000 fe:00 10010778                   /tmp/a b ) (x).bin");
        assert_eq!(e.path.as_deref(), Some("/tmp/a b ) (x).bin"));
        assert!(e.perms.shared);
    }

    #[test]
    fn trailing_spaces_in_file_name_are_kept() {
        let e = one("1000-2000 r--p 00000000 fe:00 1 /tmp/x  ");
        assert_eq!(e.path.as_deref(), Some("/tmp/x  "));
    }

    #[test]
    fn deleted_suffix_is_stripped() {
        let e = one("7f12c95de000-7f12c95e1000 rw-s 00000000 00:01 1024                       /dev/zero (deleted)");
        assert_eq!(e.path.as_deref(), Some("/dev/zero"));
        assert!(e.deleted);
        let e = one(
            "7f12c95dd000-7f12c95de000 rw-s 00000000 00:01 1025                       /memfd:ferry memfd (deleted)",
        );
        assert_eq!(e.path.as_deref(), Some("/memfd:ferry memfd"));
        assert!(e.deleted);
    }

    #[test]
    fn escaped_newline_is_decoded() {
        let e =
            one(r"7f12c95e1000-7f12c95e2000 r--p 00000000 fe:00 10010780                   /tmp/new\012line (deleted)");
        assert_eq!(e.path.as_deref(), Some("/tmp/new\nline"));
        assert!(e.deleted);
    }

    #[test]
    fn pseudo_names() {
        let e = one("ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]");
        assert_eq!(e.path.as_deref(), Some("[vsyscall]"));
        assert_eq!(e.perms, Perms { exec: true, ..Perms::default() });
        let e = one("7f0000000000-7f0000002000 rw-p 00000000 00:00 0                          [anon:ferry test]");
        assert_eq!(e.path.as_deref(), Some("[anon:ferry test]"));
    }

    #[test]
    fn wide_device_numbers() {
        let e = one("1000-2000 r--p 00000000 103:1f 5 /x");
        assert_eq!((e.dev_major, e.dev_minor), (0x103, 0x1f));
    }

    #[test]
    fn bad_lines_are_errors() {
        for line in [
            "",
            "1000-2000",
            "1000 r--p 00000000 fe:00 1 /x",
            "1000-zz r--p 00000000 fe:00 1 /x",
            "2000-1000 r--p 00000000 fe:00 1 /x",
            "1000-2000 r--q 00000000 fe:00 1 /x",
            "1000-2000 r-- 00000000 fe:00 1 /x",
            "1000-2000 r--p 00000000 fe00 1 /x",
            "1000-2000 r--p 00000000 fe:00 x /x",
            "1000-2000 r--p +0000000 fe:00 1 /x",
        ] {
            assert_eq!(
                parse_line("maps", line),
                Err(ParseError::BadLine { file: "maps", line: line.into() }),
                "{line:?}"
            );
        }
    }

    #[test]
    fn error_message_names_line_and_file() {
        let e = parse_maps("nonsense\n").expect_err("bad maps");
        assert_eq!(e.to_string(), r#"bad line "nonsense" in maps"#);
    }
}
