//! CRIU's command line, when ferry runs under the name `criu` (a symlink is enough): what
//! runc, Podman and people type. `criu --version`/`-V`, `criu check [--feature NAME]` and
//! `criu swrk FD` are answered here; every other command line (`criu dump -t PID -D DIR ...`,
//! `criu restore -D DIR -d ...`) goes to ferry's own parser, whose `dump` and `restore` take
//! CRIU's flags (docs/criu-compat.md) and refuse the ones ferry cannot honour.

use super::{CRIU_MAJOR, CRIU_MINOR};
use std::ffi::OsString;

/// Whether ferry was started as `criu` (the basename of argv[0]).
pub fn called_as_criu(argv0: Option<&OsString>) -> bool {
    argv0.and_then(|a| std::path::Path::new(a).file_name().map(|n| n == "criu")).unwrap_or(false)
}

/// What the `criu` command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Criu {
    /// `--version` or `-V`.
    Version,
    /// `check`, with `--feature NAME`s (or `--all`, `--extra`, which change nothing here).
    Check { features: Vec<String> },
    /// `swrk FD`.
    Swrk { fd: i32 },
    /// Anything else: ferry's parser with these arguments (argv[0] is "ferry").
    Ferry(Vec<OsString>),
    /// A command line this mode cannot take, with the reason.
    Bad(String),
}

/// Read a `criu ...` command line (argv[0] included).
pub fn parse(args: Vec<OsString>) -> Criu {
    let rest: Vec<String> = args.iter().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    if rest.iter().any(|a| a == "--version" || a == "-V") {
        return Criu::Version;
    }
    // The command is the first word that is not an option (CRIU's global options may precede it).
    let cmd = rest.iter().position(|a| !a.starts_with('-'));
    match cmd.map(|i| (i, rest[i].as_str())) {
        Some((i, "check")) => {
            let mut features = Vec::new();
            let mut it = rest[i + 1..].iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--feature" => match it.next() {
                        Some(f) => features.push(f.clone()),
                        None => return Criu::Bad("check --feature needs a feature name".into()),
                    },
                    f if f.starts_with("--feature=") => features.push(f["--feature=".len()..].to_string()),
                    "--all" | "--extra" => {}
                    other => return Criu::Bad(format!("check: unknown option {other}")),
                }
            }
            Criu::Check { features }
        }
        Some((i, "swrk")) => match rest.get(i + 1).map(|s| s.parse::<i32>()) {
            Some(Ok(fd)) if fd >= 0 => Criu::Swrk { fd },
            _ => Criu::Bad("swrk needs a file descriptor number".into()),
        },
        // (`criu pre-dump ...` is ferry's `dump --pre-dump ...`.)
        Some((i, "pre-dump")) => {
            let mut v = vec![OsString::from("ferry")];
            v.extend(args.into_iter().skip(1).enumerate().flat_map(|(k, a)| match k == i {
                true => vec![OsString::from("dump"), OsString::from("--pre-dump")],
                false => vec![a],
            }));
            Criu::Ferry(v)
        }
        _ => {
            let mut v = vec![OsString::from("ferry")];
            v.extend(args.into_iter().skip(1));
            Criu::Ferry(v)
        }
    }
}

/// CRIU's `--version` text.
pub fn version_text() -> String {
    format!("Version: {CRIU_MAJOR}.{CRIU_MINOR}\n")
}

/// `criu check`: "Looks good." and 0 when ferry can dump and restore here; with features, one
/// line each, 0 only if every one is there. A feature is one of `ferry check`'s names (CRIU's
/// own feature names that ferry has no equivalent for are "not supported").
pub fn check(features: &[String]) -> i32 {
    let feats = ferry_engine::check::run();
    if features.is_empty() {
        let missing: Vec<_> = feats.iter().filter(|f| f.required && !f.present).collect();
        for f in &missing {
            eprintln!("Error: {}: {}", f.name, f.detail);
        }
        if missing.is_empty() {
            println!("Looks good.");
            return 0;
        }
        return 1;
    }
    let mut code = 0;
    for name in features {
        match feats.iter().find(|f| f.name == name) {
            Some(f) if f.present => println!("{name} is supported"),
            _ => {
                println!("{name} is NOT supported");
                code = 1;
            }
        }
    }
    code
}
