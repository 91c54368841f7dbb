//! # ringshim-stackd: a user-space TCP/IP stack process, and how applications reach it
//!
//! The `ustack` backend of ringshim runs TCP outside the kernel, in this separate process,
//! the way VPP's host stack serves applications through VCL: the stack owns a network
//! interface (a TAP device, or an existing interface through AF_PACKET), runs a maintained TCP/IP implementation (smoltcp) on it,
//! and exchanges connection events and bytes with each application through shared memory,
//! with eventfd wake-ups only when the other side may be asleep.
//!
//! - [`proto`]: the protocol, as `#[repr(C)]` types and lock-free views over a shared
//!   segment (rings of messages, byte fifos). No system calls, no allocation: the shim
//!   uses this module on its hook paths.
//! - [`client`]: the application side (attach, workers, reads and writes), used by the
//!   tests and as the reference for the shim.
//! - [`sys`]: the few system calls both sides need (eventfd, memfd, SCM_RIGHTS,
//!   SO_PEERCRED).
//! - with the `stack` feature (default): [`config`] (flags), [`device`] (the interface as
//!   a smoltcp device, opened by [`tap`] or [`packet`]) and
//!   [`stack`] (the event loop: smoltcp, the listen-backlog layer, sessions, apps).
//!
//! The shim depends on this crate with `default-features = false`, which leaves smoltcp
//! out of its build.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod client;
pub mod proto;
pub mod sys;

#[cfg(feature = "stack")]
pub mod config;
#[cfg(feature = "stack")]
pub mod device;
#[cfg(feature = "stack")]
pub mod packet;
#[cfg(feature = "stack")]
pub mod stack;
#[cfg(feature = "stack")]
pub mod tap;
