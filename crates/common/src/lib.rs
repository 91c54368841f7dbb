//! What `libringshim.so` and the `ringshim` CLI share, kept in a crate without any
//! interposing exports so that binaries can link it safely.
//!
//! - [`config`]: the environment variables, their defaults, validation and profiles.
//! - [`stats`]: the layout of the per-process live counter page read by `ringshim stat`.

pub mod config;
pub mod stats;
