//! fork and exec: what the shim must do when the process image or its copy changes.
//!
//! fork: the child must never touch its parent's rings (a SINGLE_ISSUER ring rejects
//! other tasks, and completions belong to the parent). The prepare handler hands this
//! thread's queued sends to the kernel first, so no byte is in the shim twice.
//!
//! exec: the new image starts with an empty shim, so queued sends are flushed before
//! the call. Programs that exec with a cleaned environment (nginx's USR2 binary upgrade
//! keeps only TZ and its `env` directives) would lose the preload; like OpenOnload,
//! ringshim re-injects `LD_PRELOAD` and the `RINGSHIM_*` variables it was loaded with,
//! unless the new environment sets `LD_PRELOAD` itself or `RINGSHIM=0`.

use core::ffi::c_char;
use core::sync::atomic::{AtomicPtr, Ordering};
use std::ffi::CString;

/// The `KEY=VALUE` strings to re-inject on exec, captured at load.
static INJECT: AtomicPtr<Vec<CString>> = AtomicPtr::new(core::ptr::null_mut());

pub fn capture_environment() {
    let vars: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k == "LD_PRELOAD" || k.to_str().is_some_and(|k| k.starts_with("RINGSHIM")))
        .filter_map(|(k, v)| {
            let mut s = k.into_encoded_bytes();
            s.push(b'=');
            s.extend_from_slice(v.as_encoded_bytes());
            CString::new(s).ok()
        })
        .collect();
    if vars
        .iter()
        .any(|v| v.as_bytes().starts_with(b"LD_PRELOAD="))
    {
        INJECT.store(Box::leak(Box::new(vars)), Ordering::Release);
    }
}

extern "C" fn prepare_fork() {
    if crate::init::is_active() {
        crate::init::in_shim(crate::uring::before_fork);
    }
}

extern "C" fn child_after_fork() {
    if crate::init::is_active() {
        crate::init::in_shim(|| {
            crate::uring::after_fork_child();
            crate::ustack::after_fork_child();
            crate::balance::after_fork_child();
            crate::stats::forget_after_fork();
        });
    }
}

pub fn register_fork_handlers() {
    // SAFETY: the handlers are plain functions valid for the life of the process.
    unsafe { libc::pthread_atfork(Some(prepare_fork), None, Some(child_after_fork)) };
}

/// Reads a NULL-terminated array of C strings.
///
/// # Safety
/// `envp` must be null or a valid NULL-terminated array.
unsafe fn entries<'a>(envp: *const *const c_char) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    if envp.is_null() {
        return out;
    }
    let mut i = 0;
    loop {
        // SAFETY: caller contract: valid until the terminating NULL.
        let p = unsafe { *envp.add(i) };
        if p.is_null() {
            break;
        }
        // SAFETY: each entry is a NUL-terminated string.
        out.push(unsafe { core::ffi::CStr::from_ptr(p) }.to_bytes());
        i += 1;
    }
    out
}

/// The environment to pass to exec: `envp` itself, or `envp` plus the captured shim
/// variables when the new environment dropped LD_PRELOAD. The returned vector owns the
/// pointer array; it must outlive the exec call.
///
/// # Safety
/// `envp` must be null or a valid NULL-terminated array.
pub unsafe fn environment_for_exec(envp: *const *const c_char) -> Option<Vec<*const c_char>> {
    let inject = INJECT.load(Ordering::Acquire);
    if inject.is_null() {
        return None;
    }
    // SAFETY: leaked at init, never freed.
    let inject = unsafe { &*inject };
    // SAFETY: caller contract.
    let existing = unsafe { entries(envp) };
    if existing
        .iter()
        .any(|e| e.starts_with(b"LD_PRELOAD=") || *e == b"RINGSHIM=0")
    {
        return None;
    }
    let key = |e: &[u8]| e.iter().position(|&b| b == b'=').map(|i| e[..=i].to_vec());
    let mut out: Vec<*const c_char> = Vec::with_capacity(existing.len() + inject.len() + 1);
    let mut i = 0;
    while i < existing.len() {
        // SAFETY: same array as read above.
        out.push(unsafe { *envp.add(i) });
        i += 1;
    }
    for var in inject {
        let k = key(var.as_bytes());
        if !existing
            .iter()
            .any(|e| k.as_ref().is_some_and(|k| e.starts_with(k)))
        {
            out.push(var.as_ptr());
        }
    }
    out.push(core::ptr::null());
    crate::log_debug!("exec: re-injecting LD_PRELOAD and RINGSHIM_* into a cleaned environment");
    Some(out)
}

/// Everything queued in the shim leaves before the image is replaced.
pub fn before_exec() {
    crate::init::in_shim(|| {
        crate::uring::flush_all();
        crate::balance::before_exec();
    });
}
