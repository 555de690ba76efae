//! ferry's engines: [`dump`] freezes a process and writes an image, [`restore`] brings it back.
//!
//! Both pipelines are synchronous and run on one thread, because ptrace ties every tracee to
//! the thread that attached it. Each kind of kernel state lives in one module under [`state`]
//! that knows how to collect it at dump time and recreate it at restore time; the pipelines
//! only sequence those modules. The only `unsafe` code is in `ferry-sys`.

pub mod check;
pub mod dump;
mod error;
pub mod freeze;
pub mod inject;
pub mod launch;
pub mod postcopy;
pub mod precopy;
pub mod predump;
mod procfs;
pub mod restore;
pub mod state;
pub mod validate;

pub use error::Error;

/// Result type of the engines.
pub type Result<T, E = Error> = std::result::Result<T, E>;
