//! The parts of the `ferry` command that other code reaches: `ferry inspect` and the migration
//! protocol (its message framing and the destination's receive loop), for the fuzz targets in
//! `fuzz/`. The command line itself is `main.rs`.

pub mod inspect;
pub mod migrate;
