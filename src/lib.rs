//! # ringshim: TCP through per-thread io_uring rings, for programs that never asked
//!
//! `libringshim.so` is loaded with `LD_PRELOAD` into an unmodified, dynamically linked
//! server. It interposes the BSD socket API and the readiness calls around it, and
//! gives every TCP socket one of two data paths:
//!
//! - the **kernel path**: the real libc call, untouched. Every socket starts here, and
//!   loopback (or whatever `RINGSHIM_KERNEL_NETS` lists) stays here, so admin and
//!   health endpoints behave exactly as without the shim;
//! - an **accelerated engine**: the `uring` engine receives through a multishot recv
//!   into a per-thread provided-buffer ring and queues sends that are submitted with
//!   the thread's next wait, so a busy event loop makes one `io_uring_enter` where it
//!   used to make an `epoll_wait`, a `read` and a `write` per request. The `ustack`
//!   engine ([`ustack`]) hands the bytes to `ringshim-stackd`, a user-space TCP/IP stack
//!   in another process, through shared-memory fifos; its wake-ups are eventfds that sit
//!   in the application's own epoll sets.
//!
//! ## How a call flows
//! Each export in [`exports`] has one shape: [`init::ensure_init`] (one atomic load;
//! false before or during initialisation, when the configuration disables the shim, or
//! when the shim re-enters itself) → the [`fdtable`] says whether the fd is one of the
//! shim's → the engine's path, or the real function from [`real`]. Errors travel as
//! `Result<_, Errno>` and are written to errno in [`errno`] only.
//!
//! ## Routing
//! [`route`] decides when an address becomes known: bind() to a specific address,
//! connect(), accept(). The decision is stored in the [`socket::SocketRecord`], which all
//! dup aliases of the fd share. An accelerated socket is still a real kernel socket with
//! its real fd number (the rings operate on it), so fcntl, getsockopt, fstat and
//! inheritance across fork and exec keep working.
//!
//! ## Readiness
//! The application's epoll fd stays a real kernel epoll fd. Accelerated sockets are not
//! in its kernel set; their readiness lives in the shim ([`epoll`]), and `epoll_wait`
//! becomes one `io_uring_enter` that submits queued work, waits for completions and
//! watches the kernel epoll fd through a poll request, so kernel fds and accelerated
//! sockets wake the same waiter ([`uring::wait`]). An eventfd member of the kernel set
//! makes the shim's readiness visible to other waiters (nested epolls, other threads).
//!
//! ## Rules inside the library
//! No panics and no allocation on hook paths after set-up; raw `write(2)` for logging
//! ([`log`]); no std I/O or std::net (they would land back in the exports). Records live
//! in type-stable [`pool`]s so a racing lookup never touches freed memory. Counters for
//! `ringshim stat` live in a shared page ([`stats`]).
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_debug_implementations)]
#![allow(missing_debug_implementations)]

#[macro_use]
pub mod log;
pub mod balance;
pub mod engine;
pub mod epoll;
pub mod errno;
pub mod exports;
pub mod fdtable;
pub mod init;
pub mod internal_fd;
pub mod ops;
pub mod pool;
pub mod process;
pub mod real;
pub mod route;
pub mod socket;
pub mod stats;
pub mod uring;
pub mod ustack;
