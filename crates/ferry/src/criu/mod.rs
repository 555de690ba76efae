//! ferry as the CRIU that container runtimes call: CRIU's RPC messages (`rpc.rs`), the
//! `swrk` server that runc, Podman (through runc), crun and go-criu speak to (`swrk.rs`), and
//! CRIU's command line when ferry is installed under the name `criu` (`cli.rs`).
//!
//! The CRIU version ferry reports is [`CRIU_MAJOR`].[`CRIU_MINOR`] (3.17): the release Debian 12
//! ships with runc 1.1.5 and Podman 4.3, the clients ferry is tested with. Clients pick their
//! code paths by this number: Podman refuses anything older than 3.11, runc uses the cgroup v2
//! freezer from 3.14 on and status notifications from 3.15 on; a newer number would make a
//! client send options of later CRIU releases that it was never tested against here.
//! docs/containers.md says more.

pub mod cli;
pub mod rpc;
pub mod swrk;

/// The CRIU major version ferry answers as.
pub const CRIU_MAJOR: i32 = 3;
/// The CRIU minor version ferry answers as.
pub const CRIU_MINOR: i32 = 17;
