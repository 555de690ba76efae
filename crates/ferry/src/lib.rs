//! The parts of the `ferry` command that other code reaches: `ferry inspect`, the migration
//! protocol (its message framing and the destination's receive loop), for the fuzz targets in
//! `fuzz/`, and CRIU's RPC and command line (`criu`: `ferry swrk`, ferry called as `criu`). The command line itself is `main.rs`.

pub mod criu;
pub mod inspect;
pub mod migrate;
