//! `/proc/PID/cgroup`: one line per cgroup hierarchy, `id:controllers:path`. Controllers are
//! a comma list (`cpu,cpuacct`, `name=systemd`) for a v1 hierarchy and empty for the v2 one
//! (id 0). The path may contain ':' (only the first two separate fields).

use crate::{bad_line, dec, ParseError};

/// One line of `/proc/PID/cgroup`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CgroupLine {
    pub hierarchy_id: u32,
    /// Comma-separated controllers (v1), empty for cgroup v2.
    pub controllers: String,
    /// Path from the hierarchy's root (as the reading process's cgroup namespace sees it).
    pub path: String,
}

const FILE: &str = "cgroup";

/// Parse all of `/proc/PID/cgroup`.
pub fn parse_cgroup(text: &str) -> Result<Vec<CgroupLine>, ParseError> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut it = l.splitn(3, ':');
            match (it.next(), it.next(), it.next()) {
                (Some(id), Some(c), Some(path)) if path.starts_with('/') => Ok(CgroupLine {
                    hierarchy_id: dec(FILE, "hierarchy id", id)?,
                    controllers: c.to_string(),
                    path: path.to_string(),
                }),
                _ => Err(bad_line(FILE, l)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_lines() {
        let t = "9:name=systemd:/\n4:memory:/process_api/ab:c\n1:cpu,cpuacct:/x\n0::/\n";
        let l = parse_cgroup(t).expect("parse");
        assert_eq!(l.len(), 4);
        assert_eq!(l[0].controllers, "name=systemd");
        assert_eq!(l[1].path, "/process_api/ab:c");
        assert_eq!((l[2].hierarchy_id, l[2].controllers.as_str()), (1, "cpu,cpuacct"));
        assert_eq!((l[3].hierarchy_id, l[3].controllers.as_str(), l[3].path.as_str()), (0, "", "/"));
        assert!(parse_cgroup("4:memory\n").is_err());
        assert!(parse_cgroup("x:memory:/\n").is_err());
    }
}
