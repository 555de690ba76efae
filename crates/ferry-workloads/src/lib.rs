//! The workload programs that ferry's integration tests checkpoint and restore.
//!
//! Each workload sets up one kind of kernel state, announces `ready`, waits for SIGUSR2 and
//! then checks that the state survived (see `c/common.h` for the protocol). They are C, built by
//! `build.rs`, because several kinds of state (raw registers, sigaltstack, rseq, robust lists)
//! are most directly set up and read back from C.

include!(concat!(env!("OUT_DIR"), "/workloads.rs"));

/// Absolute path of the executable of workload `name` (a file stem in `c/`, e.g. `"mem_anon"`).
///
/// # Panics
/// If there is no such workload: a test naming a workload that does not exist is a bug in the
/// test.
pub fn path(name: &str) -> std::path::PathBuf {
    match WORKLOADS.iter().find(|(n, _)| *n == name) {
        Some((_, p)) => std::path::PathBuf::from(p),
        None => {
            let known: Vec<&str> = WORKLOADS.iter().map(|(n, _)| *n).collect();
            panic!("no workload named {name:?} (known: {})", known.join(", "))
        }
    }
}

/// Absolute path of a script workload shipped in `py/` (e.g. `"bigdict.py"`).
pub fn script(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("py").join(name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_workload_is_built() {
        assert!(!super::WORKLOADS.is_empty());
        for (name, path) in super::WORKLOADS {
            let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("workload {name}: {path}: {e}"));
            assert!(meta.is_file(), "workload {name}: {path} is not a file");
        }
    }
}
