//! `/proc/PID/timers`: the POSIX timers (`timer_create`) of a process, which ferry recreates
//! with the same id, clock, signal, `sigev_value` and notification target. Their remaining
//! time comes from `timer_gettime` in the parasite, not from here.
//!
//! Each timer is four lines, `ID:`, `signal: SIGNO/SIGEV_VALUE_HEX`, `notify: MODE/pid.N` or
//! `MODE/tid.N` (`tid` meaning `SIGEV_THREAD_ID`), `ClockID:`; a new `ID:` starts the next
//! timer. Unknown lines are skipped.

use crate::{bad, bad_line, dec, hex, ParseError};

/// One POSIX timer of `/proc/PID/timers`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PosixTimer {
    pub id: i32,
    pub signo: i32,
    /// `sigev_value` as the pointer-sized integer the kernel prints.
    pub sigev_value: u64,
    /// `"signal"`, `"thread"` or `"none"` — `sigev_notify` without `SIGEV_THREAD_ID`.
    pub notify: String,
    /// The pid or, with `notify_thread_id`, the tid the signal goes to.
    pub notify_tid: i32,
    /// `SIGEV_THREAD_ID` was set: the file says `tid.N` rather than `pid.N`.
    pub notify_thread_id: bool,
    /// May be negative: CPU-time clocks of a given process or thread.
    pub clock_id: i32,
}

const FILE: &str = "timers";

/// The timer being assembled, with which of its lines have been seen.
#[derive(Default)]
struct Partial {
    timer: PosixTimer,
    signal: bool,
    notify: bool,
    clock: bool,
}

impl Partial {
    fn finish(self) -> Result<PosixTimer, ParseError> {
        let missing = |field| Err(ParseError::Missing { file: FILE, field });
        match self {
            Partial { signal: false, .. } => missing("signal"),
            Partial { notify: false, .. } => missing("notify"),
            Partial { clock: false, .. } => missing("ClockID"),
            Partial { timer, .. } => Ok(timer),
        }
    }
}

/// Parse `/proc/PID/timers`.
pub fn parse_timers(text: &str) -> Result<Vec<PosixTimer>, ParseError> {
    let mut out = Vec::new();
    let mut cur: Option<Partial> = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (key, v) = line.split_once(':').ok_or_else(|| bad_line(FILE, line))?;
        let v = v.trim();
        if key == "ID" {
            if let Some(p) = cur.take() {
                out.push(p.finish()?);
            }
            cur = Some(Partial {
                timer: PosixTimer { id: dec(FILE, "ID", v)?, ..PosixTimer::default() },
                ..Partial::default()
            });
            continue;
        }
        let p = cur.as_mut().ok_or_else(|| bad_line(FILE, line))?;
        match key {
            "signal" => {
                let (signo, value) = v.split_once('/').ok_or_else(|| bad(FILE, "signal", v))?;
                p.timer.signo = dec(FILE, "signal", signo)?;
                p.timer.sigev_value = hex(FILE, "signal", value)?;
                p.signal = true;
            }
            "notify" => {
                let err = || bad(FILE, "notify", v);
                let (mode, target) = v.split_once('/').ok_or_else(err)?;
                let (kind, id) = target.split_once('.').ok_or_else(err)?;
                if !matches!(mode, "signal" | "thread" | "none") {
                    return Err(err());
                }
                p.timer.notify = mode.to_owned();
                p.timer.notify_thread_id = match kind {
                    "pid" => false,
                    "tid" => true,
                    _ => return Err(err()),
                };
                p.timer.notify_tid = dec(FILE, "notify", id)?;
                p.notify = true;
            }
            "ClockID" => {
                p.timer.clock_id = dec(FILE, "ClockID", v)?;
                p.clock = true;
            }
            _ => {}
        }
    }
    if let Some(p) = cur {
        out.push(p.finish()?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_notify_form() {
        let text = "ID: 2\nsignal: 35/000000000000002a\nnotify: signal/tid.3317\nClockID: 7\n\
ID: 1\nsignal: 14/00000000deadbeef\nnotify: none/pid.3317\nClockID: 0\n\
ID: 0\nsignal: 0/0000000000000000\nnotify: thread/pid.9\nClockID: -6\n";
        let t = parse_timers(text).expect("parses");
        assert_eq!(
            t,
            vec![
                PosixTimer {
                    id: 2,
                    signo: 35,
                    sigev_value: 42,
                    notify: "signal".into(),
                    notify_tid: 3317,
                    notify_thread_id: true,
                    clock_id: 7
                },
                PosixTimer {
                    id: 1,
                    signo: 14,
                    sigev_value: 0xdead_beef,
                    notify: "none".into(),
                    notify_tid: 3317,
                    notify_thread_id: false,
                    clock_id: 0
                },
                PosixTimer {
                    id: 0,
                    signo: 0,
                    sigev_value: 0,
                    notify: "thread".into(),
                    notify_tid: 9,
                    notify_thread_id: false,
                    clock_id: -6
                },
            ]
        );
    }

    #[test]
    fn no_timers() {
        assert_eq!(parse_timers(""), Ok(vec![]));
    }

    #[test]
    fn incomplete_timer_is_an_error() {
        assert_eq!(
            parse_timers("ID: 0\nnotify: signal/pid.1\nClockID: 1\nID: 1\n").map_err(|e| e.to_string()),
            Err("missing signal in timers".into())
        );
        assert_eq!(
            parse_timers("ID: 0\nsignal: 14/0\nnotify: signal/pid.1\n").map_err(|e| e.to_string()),
            Err("missing ClockID in timers".into())
        );
    }

    #[test]
    fn malformed_lines_are_errors() {
        let head = "ID: 0\nsignal: 14/0\nClockID: 1\n";
        for (notify, msg) in [
            ("notify: signal", r#"bad notify "signal" in timers"#),
            ("notify: signal/pid1", r#"bad notify "signal/pid1" in timers"#),
            ("notify: sig/pid.1", r#"bad notify "sig/pid.1" in timers"#),
            ("notify: signal/pgid.1", r#"bad notify "signal/pgid.1" in timers"#),
            ("notify: signal/pid.x", r#"bad notify "x" in timers"#),
        ] {
            assert_eq!(parse_timers(&format!("{head}{notify}\n")).map_err(|e| e.to_string()), Err(msg.into()));
        }
        assert!(parse_timers("signal: 14/0\n").is_err());
        assert!(parse_timers("ID: x\n").is_err());
        assert!(parse_timers("ID: 0\nsignal: 14\n").is_err());
        assert!(parse_timers("ID: 0\nsignal: 14/xyz\n").is_err());
        assert!(parse_timers("ID 0\n").is_err());
    }
}
