//! The interposed C symbols, and nothing else.
//!
//! Every export has one shape: `ensure_init()` (is the shim active and not re-entered?)
//! → is this fd the shim's? → the accelerated path, or the real libc function with the
//! arguments unchanged. Results of accelerated paths are `Result<_, Errno>` turned into
//! the C convention in [`crate::errno`], the one place errno is written.
//!
//! The symbols are compiled without `#[no_mangle]` in unit-test builds, so the test
//! harness's own I/O is never hijacked.
//!
//! # Safety
//! Each export has exactly the contract of the libc function of the same name; pointer
//! arguments are forwarded to the kernel, which validates them, except where a comment
//! says the shim reads them itself.
#![allow(clippy::missing_safety_doc)]

pub mod block;
pub mod fd;
pub mod info;
pub mod io;
pub mod poll;
pub mod process;
pub mod socket;
