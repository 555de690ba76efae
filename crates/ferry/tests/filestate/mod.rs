//! File state that must come back exactly (issue 11, "Files"): each test runs one mode of the
//! `filestate` workload (see its header), which records what the kernel reports about its
//! files before the checkpoint and compares it after the restore.

use crate::common::Spec;

fn spec(mode: &str) -> Spec {
    Spec::c("filestate").args(&[mode])
}

macro_rules! filestate_tests {
    ($($mode:ident),* $(,)?) => {
        mod control {
            $(#[test] fn $mode() { crate::common::control(&super::spec(stringify!($mode))); })*
        }
        mod cycle {
            $(#[test] fn $mode() { crate::common::cycle(&super::spec(stringify!($mode))); })*
        }
    };
}

filestate_tests!(pipe_reopen, fown, times, owner, sparse, devnode, memfd_exec);
