//! Namespaces (state/namespaces.rs) and mount trees (state/mounts.rs): a process in namespaces
//! of its own comes back in new ones with the same content, and checks its own view.

use crate::common::*;

fn nsview(mode: &str) -> Spec {
    Spec::c("nsview").args(&[mode])
}

#[test]
fn ns_uts_control() {
    control(&nsview("uts"));
}

/// A process in its own uts namespace keeps its host and domain name.
#[test]
fn ns_uts_names_restored() {
    cycle(&nsview("uts"));
}
