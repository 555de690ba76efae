//! `/proc/PID/mountinfo`: the mount table, which ferry needs to turn the `mnt_id` of an fd
//! (from fdinfo) into a path it can reopen on restore, and to tell which mounts are shared.
//!
//! A line is `id parent major:minor root mount-point options [optional...] - fstype source
//! super-options`. Fields are separated by single spaces and never contain one (the kernel
//! writes space, tab, newline and backslash as `\ooo`), so the line is split on `' '` exactly —
//! which also keeps an empty source (`tmpfs  rw`) as an empty field.

use crate::{bad, bad_line, dec, unescape_octal, ParseError};

/// One line of `/proc/PID/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MountInfo {
    pub mnt_id: u32,
    pub parent_id: u32,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// Root of the mount within its filesystem (not `/` for bind mounts), unescaped.
    pub root: String,
    /// Unescaped, relative to the reading process's root.
    pub mount_point: String,
    /// Per-mount options (`rw,nosuid,relatime`), as written (escaped).
    pub mount_options: String,
    /// Propagation tags: `shared:N`, `master:N`, `propagate_from:N`, `unbindable`.
    pub optional_fields: Vec<String>,
    /// Unescaped.
    pub fs_type: String,
    /// Unescaped; may be empty.
    pub source: String,
    /// Superblock options, as written (escaped).
    pub super_options: String,
}

const FILE: &str = "mountinfo";

/// Parse all of `/proc/PID/mountinfo`.
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountInfo>, ParseError> {
    text.lines().filter(|l| !l.is_empty()).map(parse_line).collect()
}

fn parse_line(line: &str) -> Result<MountInfo, ParseError> {
    let f: Vec<&str> = line.split(' ').collect();
    let sep = f
        .iter()
        .skip(6)
        .position(|x| *x == "-")
        .map(|i| i + 6)
        .filter(|sep| f.len() >= sep + 4)
        .ok_or_else(|| bad_line(FILE, line))?;
    let (major, minor) = f[2].split_once(':').ok_or_else(|| bad(FILE, "major:minor", f[2]))?;
    Ok(MountInfo {
        mnt_id: dec(FILE, "mount id", f[0])?,
        parent_id: dec(FILE, "parent id", f[1])?,
        dev_major: dec(FILE, "major:minor", major)?,
        dev_minor: dec(FILE, "major:minor", minor)?,
        root: unescape_octal(f[3]),
        mount_point: unescape_octal(f[4]),
        mount_options: f[5].to_owned(),
        optional_fields: f[6..sep].iter().map(|s| s.to_string()).collect(),
        fs_type: unescape_octal(f[sep + 1]),
        source: unescape_octal(f[sep + 2]),
        super_options: f[sep + 3].to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_line() {
        let m =
            parse_line(r"36 35 98:0 /mnt1 /mnt\0402 rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue")
                .expect("parses");
        assert_eq!(
            m,
            MountInfo {
                mnt_id: 36,
                parent_id: 35,
                dev_major: 98,
                dev_minor: 0,
                root: "/mnt1".into(),
                mount_point: "/mnt 2".into(),
                mount_options: "rw,noatime".into(),
                optional_fields: vec!["master:1".into(), "shared:7".into()],
                fs_type: "ext3".into(),
                source: "/dev/root".into(),
                super_options: "rw,errors=continue".into(),
            }
        );
    }

    #[test]
    fn empty_source_and_no_optional_fields() {
        let m = parse_line("64 43 0:40 / /tmp/x rw,relatime - tmpfs  rw").expect("parses");
        assert_eq!(m.source, "");
        assert!(m.optional_fields.is_empty());
        assert_eq!(m.super_options, "rw");
    }

    #[test]
    fn a_mount_point_named_dash_is_not_the_separator() {
        let m = parse_line("1 2 0:1 - - rw - tmpfs src rw").expect("parses");
        assert_eq!((m.root.as_str(), m.mount_point.as_str()), ("-", "-"));
        assert_eq!(m.fs_type, "tmpfs");
    }

    #[test]
    fn malformed_lines_are_errors() {
        for line in [
            "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 ext3 /dev/root rw",
            "36 35 98:0 /mnt1 /mnt2 rw - ext3 /dev/root",
            "36 35 98:0 /mnt1 - ext3 /dev/root rw",
        ] {
            assert_eq!(parse_line(line), Err(ParseError::BadLine { file: "mountinfo", line: line.into() }));
        }
        assert_eq!(
            parse_line("36 35 98-0 / / rw - ext3 /dev/root rw").map_err(|e| e.to_string()),
            Err(r#"bad major:minor "98-0" in mountinfo"#.into())
        );
        assert_eq!(
            parse_line("x 35 98:0 / / rw - ext3 /dev/root rw").map_err(|e| e.to_string()),
            Err(r#"bad mount id "x" in mountinfo"#.into())
        );
    }
}
