//! The symbols `include/ringshim.h` declares: the only exports that are not libc's.

use core::ffi::{c_char, c_int, CStr};
use ringshim_common::stats::COUNTER_NAMES;

#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn ringshim_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn ringshim_active() -> c_int {
    crate::init::ensure_init();
    c_int::from(crate::init::is_active())
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub extern "C" fn ringshim_backend_available() -> c_int {
    if !crate::init::is_active() {
        return 0;
    }
    c_int::from(crate::init::backend_active())
}

/// # Safety
/// `name` must be null or a NUL-terminated string.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn ringshim_counter(name: *const c_char) -> u64 {
    if name.is_null() {
        return u64::MAX;
    }
    // SAFETY: caller contract.
    let name = unsafe { CStr::from_ptr(name) }.to_bytes();
    match COUNTER_NAMES.iter().position(|n| n.as_bytes() == name) {
        Some(i) => crate::stats::total_index(i),
        None => u64::MAX,
    }
}
