//! `/proc/PID/smaps`: what `maps` does not say about a VMA — its `VmFlags` (madvise state
//! such as `dd`/`wf`/`hg`, `gd` for stack guard, `io`/`pf` for special mappings ferry must not
//! read) and how much of it is resident, anonymous or swapped, which decides whether its pages
//! need dumping at all.
//!
//! Each mapping is a `maps`-format header line followed by `Key: value` lines. Only the keys
//! ferry uses are read; the rest (and new ones) are skipped.

use crate::{bad, bad_line, maps, ParseError};

/// One mapping of `/proc/PID/smaps`: its range, the `VmFlags` two-letter codes, and
/// Rss/Anonymous/Swap in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SmapsEntry {
    pub start: u64,
    pub end: u64,
    /// Two-letter codes in file order, e.g. `["rd", "wr", "mr", "mw", "me", "ac"]`.
    pub vm_flags: Vec<String>,
    /// Resident bytes.
    pub rss: u64,
    /// Resident anonymous (including COWed private file) bytes.
    pub anonymous: u64,
    /// Swapped-out bytes.
    pub swap: u64,
}

const FILE: &str = "smaps";

/// Parse all of `/proc/PID/smaps`.
pub fn parse_smaps(text: &str) -> Result<Vec<SmapsEntry>, ParseError> {
    let mut out: Vec<SmapsEntry> = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let first = line.split(' ').next().unwrap_or_default();
        let Some(key) = first.strip_suffix(':') else {
            let m = maps::parse_line(FILE, line)?;
            out.push(SmapsEntry { start: m.start, end: m.end, ..SmapsEntry::default() });
            continue;
        };
        let entry = out.last_mut().ok_or_else(|| bad_line(FILE, line))?;
        let value = line[first.len()..].trim();
        match key {
            "Rss" => entry.rss = kib(line, "Rss", value)?,
            "Anonymous" => entry.anonymous = kib(line, "Anonymous", value)?,
            "Swap" => entry.swap = kib(line, "Swap", value)?,
            "VmFlags" => entry.vm_flags = value.split_whitespace().map(String::from).collect(),
            _ => {}
        }
    }
    Ok(out)
}

/// A `N kB` value, in bytes.
fn kib(line: &str, field: &'static str, value: &str) -> Result<u64, ParseError> {
    let n = value.strip_suffix(" kB").ok_or_else(|| bad_line(FILE, line))?.trim_end();
    crate::radix(FILE, field, n, 10)?.checked_mul(1024).ok_or_else(|| bad(FILE, field, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "\
7f12c95e2000-7f12c95e3000 rw-p 00000000 fe:00 10010779                   /tmp/cap/gone.bin (deleted)
Size:                  4 kB
Rss:                   4 kB
Anonymous:             4 kB
Swap:                  0 kB
THPeligible:           0
VmFlags: rd wr mr mw me ac 
7ffe3ef0c000-7ffe3ef2d000 rw-p 00000000 00:00 0 
Rss:                  28 kB
Anonymous:            20 kB
Swap:                 12 kB
ProtectionKey:         0
VmFlags: rd wr mr mw me gd ac 
";

    #[test]
    fn two_entries() {
        let v = parse_smaps(TWO).expect("parses");
        assert_eq!(
            v,
            vec![
                SmapsEntry {
                    start: 0x7f12_c95e_2000,
                    end: 0x7f12_c95e_3000,
                    vm_flags: ["rd", "wr", "mr", "mw", "me", "ac"].map(String::from).to_vec(),
                    rss: 4096,
                    anonymous: 4096,
                    swap: 0,
                },
                SmapsEntry {
                    start: 0x7ffe_3ef0_c000,
                    end: 0x7ffe_3ef2_d000,
                    vm_flags: ["rd", "wr", "mr", "mw", "me", "gd", "ac"].map(String::from).to_vec(),
                    rss: 28 * 1024,
                    anonymous: 20 * 1024,
                    swap: 12 * 1024,
                },
            ]
        );
    }

    #[test]
    fn empty_vmflags_and_missing_keys_default() {
        let v = parse_smaps("1000-2000 ---p 00000000 00:00 0 \nVmFlags: \n").expect("parses");
        assert_eq!(v.len(), 1);
        assert!(v[0].vm_flags.is_empty());
        assert_eq!(v[0].rss, 0);
    }

    #[test]
    fn field_before_header_is_an_error() {
        assert_eq!(parse_smaps("Rss: 4 kB\n"), Err(ParseError::BadLine { file: "smaps", line: "Rss: 4 kB".into() }));
    }

    #[test]
    fn bad_sizes_are_errors() {
        let e = parse_smaps("1000-2000 ---p 00000000 00:00 0 \nRss: 4 MB\n").expect_err("unit");
        assert_eq!(e.to_string(), r#"bad line "Rss: 4 MB" in smaps"#);
        let e = parse_smaps("1000-2000 ---p 00000000 00:00 0 \nSwap: x kB\n").expect_err("num");
        assert_eq!(e.to_string(), r#"bad Swap "x" in smaps"#);
        let e = parse_smaps("1000-2000 ---p 00000000 00:00 0 \nRss: 18446744073709551615 kB\n").expect_err("overflow");
        assert!(matches!(e, ParseError::BadField { field: "Rss", .. }));
    }

    #[test]
    fn bad_header_is_an_error() {
        assert!(matches!(parse_smaps("1000-2000 ---p\n"), Err(ParseError::BadLine { file: "smaps", .. })));
    }
}
