//! `/proc/PID/stat`: the one-line record ferry reads for process-tree ids (pgrp, session, tty),
//! start time (to tell a pid from its reuse) and the `mm` layout (`start_brk`, `arg_start`,
//! ...) that `prctl(PR_SET_MM_MAP)` needs on restore.
//!
//! The comm in parentheses is not escaped and may hold spaces, `)` and even newlines, so it
//! runs from the first `(` to the LAST `)`; after it the fields are space-separated. Fields
//! 45–52 (`start_data` .. `exit_code`) appeared in Linux 3.5 and are required.

use crate::{bad, dec, ParseError};

/// The fields of `/proc/PID/stat` ferry uses, named as in proc(5).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stat {
    pub pid: i32,
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub tty_nr: i32,
    /// Foreground process group of the controlling terminal, -1 without one.
    pub tpgid: i32,
    pub flags: u32,
    /// Nice value, -20..19.
    pub nice: i64,
    pub num_threads: i64,
    /// Clock ticks after boot.
    pub start_time: u64,
    pub vsize: u64,
    /// Resident pages.
    pub rss: i64,
    pub start_code: u64,
    pub end_code: u64,
    pub start_stack: u64,
    pub exit_signal: i32,
    pub processor: i32,
    pub start_data: u64,
    pub end_data: u64,
    pub start_brk: u64,
    pub arg_start: u64,
    pub arg_end: u64,
    pub env_start: u64,
    pub env_end: u64,
    pub exit_code: i32,
}

const FILE: &str = "stat";
/// Fields in a complete record, counting pid and comm.
const FIELDS: usize = 52;

/// Parse `/proc/PID/stat` (or `/proc/PID/task/TID/stat`).
pub fn parse_stat(text: &str) -> Result<Stat, ParseError> {
    let text = text.strip_suffix('\n').unwrap_or(text);
    let open = text.find(" (").ok_or_else(|| bad(FILE, "comm", text))?;
    let close = text.rfind(')').ok_or_else(|| bad(FILE, "comm", text))?;
    let comm = text.get(open + 2..close).ok_or_else(|| bad(FILE, "comm", text))?;
    let rest = &text[close + 1..];
    if !rest.starts_with(' ') {
        return Err(bad(FILE, "comm", text));
    }
    let f: Vec<&str> = rest.split_whitespace().collect();
    if f.len() + 2 < FIELDS {
        return Err(ParseError::TooFewFields { file: FILE, got: f.len() + 2, want: FIELDS });
    }
    // `f[n - 3]` is field n (1-based) of proc(5).
    let state = match f[0].as_bytes() {
        [c] => char::from(*c),
        _ => return Err(bad(FILE, "state", f[0])),
    };
    Ok(Stat {
        pid: dec(FILE, "pid", &text[..open])?,
        comm: comm.to_owned(),
        state,
        ppid: dec(FILE, "ppid", f[1])?,
        pgrp: dec(FILE, "pgrp", f[2])?,
        session: dec(FILE, "session", f[3])?,
        tty_nr: dec(FILE, "tty_nr", f[4])?,
        tpgid: dec(FILE, "tpgid", f[5])?,
        flags: dec(FILE, "flags", f[6])?,
        nice: dec(FILE, "nice", f[16])?,
        num_threads: dec(FILE, "num_threads", f[17])?,
        start_time: dec(FILE, "starttime", f[19])?,
        vsize: dec(FILE, "vsize", f[20])?,
        rss: dec(FILE, "rss", f[21])?,
        start_code: dec(FILE, "startcode", f[23])?,
        end_code: dec(FILE, "endcode", f[24])?,
        start_stack: dec(FILE, "startstack", f[25])?,
        exit_signal: dec(FILE, "exit_signal", f[35])?,
        processor: dec(FILE, "processor", f[36])?,
        start_data: dec(FILE, "start_data", f[42])?,
        end_data: dec(FILE, "end_data", f[43])?,
        start_brk: dec(FILE, "start_brk", f[44])?,
        arg_start: dec(FILE, "arg_start", f[45])?,
        arg_end: dec(FILE, "arg_end", f[46])?,
        env_start: dec(FILE, "env_start", f[47])?,
        env_end: dec(FILE, "env_end", f[48])?,
        exit_code: dec(FILE, "exit_code", f[49])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Numbers 4..=52 stand in for fields 4..=52, so each lands where it is checked.
    fn line(comm: &str) -> String {
        let rest: Vec<String> = (4..=FIELDS).map(|n| n.to_string()).collect();
        format!("77 ({comm}) S {}\n", rest.join(" "))
    }

    #[test]
    fn fields_land_in_place() {
        let s = parse_stat(&line("cat")).expect("parses");
        assert_eq!((s.pid, s.comm.as_str(), s.state), (77, "cat", 'S'));
        assert_eq!((s.ppid, s.pgrp, s.session, s.tty_nr, s.tpgid), (4, 5, 6, 7, 8));
        assert_eq!(s.flags, 9);
        assert_eq!((s.nice, s.num_threads, s.start_time), (19, 20, 22));
        assert_eq!((s.vsize, s.rss), (23, 24));
        assert_eq!((s.start_code, s.end_code, s.start_stack), (26, 27, 28));
        assert_eq!((s.exit_signal, s.processor), (38, 39));
        assert_eq!((s.start_data, s.end_data, s.start_brk), (45, 46, 47));
        assert_eq!((s.arg_start, s.arg_end, s.env_start, s.env_end), (48, 49, 50, 51));
        assert_eq!(s.exit_code, 52);
    }

    #[test]
    fn comm_with_parens_spaces_and_newline() {
        for comm in [") (", "a) (b) 1", "x) S 1 2 3", "x\ny\tz ", "", "(", " )"] {
            let s = parse_stat(&line(comm)).expect("parses");
            assert_eq!(s.comm, comm);
            assert_eq!((s.state, s.ppid, s.exit_code), ('S', 4, 52));
        }
    }

    #[test]
    fn extra_trailing_fields_are_ignored() {
        let text = line("x").replace('\n', " 53 54\n");
        assert_eq!(parse_stat(&text).expect("parses").exit_code, 52);
    }

    #[test]
    fn short_record_is_an_error() {
        let text = "1 (init) S 0 1 1 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 5";
        assert_eq!(parse_stat(text).map_err(|e| e.to_string()), Err("stat has 22 fields, want at least 52".into()));
    }

    #[test]
    fn malformed_records_are_errors() {
        assert!(parse_stat("").is_err());
        assert!(parse_stat("12 cat S 1").is_err());
        assert!(parse_stat(&line("x").replace("77 (", "77(")).is_err());
        assert!(parse_stat(&line("x").replace(") S", ")S")).is_err());
        assert!(parse_stat(&line("x").replace(") S", ") SS")).is_err());
        assert_eq!(
            parse_stat(&line("x").replace("77", "x7")).map_err(|e| e.to_string()),
            Err(r#"bad pid "x7" in stat"#.into())
        );
        assert_eq!(
            parse_stat(&line("x").replace(" 47 ", " -47 ")).map_err(|e| e.to_string()),
            Err(r#"bad start_brk "-47" in stat"#.into())
        );
    }
}
