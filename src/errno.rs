//! The only place the shim writes `errno`.
//!
//! Internal code returns `Result<T, Errno>`; exports turn it into the C convention
//! (-1 and errno) through [`ret`] / [`ret_isize`], so the errno of a failed call is set
//! exactly once, after every internal call that might have clobbered it.

/// A positive errno value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

pub fn set(e: i32) {
    // SAFETY: __errno_location returns this thread's errno slot, always valid.
    unsafe { *libc::__errno_location() = e };
}

pub fn get() -> i32 {
    // SAFETY: as above.
    unsafe { *libc::__errno_location() }
}

/// The errno left by the last libc call, as an error.
pub fn last() -> Errno {
    Errno(get())
}

pub fn ret(r: Result<i32, Errno>) -> i32 {
    match r {
        Ok(v) => v,
        Err(Errno(e)) => {
            set(e);
            -1
        }
    }
}

pub fn ret_isize(r: Result<usize, Errno>) -> isize {
    match r {
        Ok(v) => v as isize,
        Err(Errno(e)) => {
            set(e);
            -1
        }
    }
}

/// Runs `f` and restores errno afterwards: for bookkeeping done after a successful real
/// call, which must not leak a stray errno to the application.
pub fn preserve<T>(f: impl FnOnce() -> T) -> T {
    let saved = get();
    let v = f();
    set(saved);
    v
}
