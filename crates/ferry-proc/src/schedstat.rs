//! `/proc/PID/task/TID/schedstat`: three numbers, the time the task spent on a CPU (ns), the
//! time it waited to get one (ns), and how many times it was put on a CPU ("timeslices run").
//! Restore reads the last before and after it releases a thread: a change means the thread has
//! run since (see ferry-engine's restore, `wait_released_ran`).

use crate::{dec, ParseError};

/// The fields of `schedstat`, named as in the kernel's Documentation/scheduler/sched-stats.rst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SchedStat {
    pub run_ns: u64,
    pub wait_ns: u64,
    pub timeslices: u64,
}

const FILE: &str = "schedstat";

/// Parse `/proc/PID/schedstat` (or `/proc/PID/task/TID/schedstat`).
pub fn parse_schedstat(text: &str) -> Result<SchedStat, ParseError> {
    let f: Vec<&str> = text.split_whitespace().collect();
    if f.len() < 3 {
        return Err(ParseError::TooFewFields { file: FILE, got: f.len(), want: 3 });
    }
    Ok(SchedStat {
        run_ns: dec(FILE, "run time", f[0])?,
        wait_ns: dec(FILE, "wait time", f[1])?,
        timeslices: dec(FILE, "timeslices", f[2])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_numbers() {
        let s = parse_schedstat("1523367 78629 12\n").expect("parses");
        assert_eq!(s, SchedStat { run_ns: 1523367, wait_ns: 78629, timeslices: 12 });
    }

    #[test]
    fn refuses_short_or_bad_records() {
        assert!(matches!(parse_schedstat("1 2\n"), Err(ParseError::TooFewFields { got: 2, .. })));
        assert!(matches!(parse_schedstat("1 2 x\n"), Err(ParseError::BadField { field: "timeslices", .. })));
    }
}
