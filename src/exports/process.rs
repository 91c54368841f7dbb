//! The exec family: flush queued bytes, keep the preload, then the real call.
//! (fork needs no export: `crate::process` registers pthread_atfork handlers. The
//! variadic execl/execle/execlp are in `src/variadic.c`, which builds an argument
//! vector and calls the exports here.)

use crate::init::ensure_init;
use crate::process::{before_exec, environment_for_exec};
use crate::real;
use core::ffi::{c_char, c_int};

extern "C" {
    static mut environ: *const *const c_char;
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    if ensure_init() {
        before_exec();
        // SAFETY: `envp` is the caller's valid environment array.
        if let Some(env) = unsafe { environment_for_exec(envp) } {
            // SAFETY: `env` is a NULL-terminated array that outlives the call.
            return unsafe { real::execve(path, argv, env.as_ptr()) };
        }
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::execve(path, argv, envp) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: `environ` is the process environment; execv is execve with it.
    unsafe { execve(path, argv, environ) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn execvpe(
    file: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    if ensure_init() {
        before_exec();
        // SAFETY: caller's environment array.
        if let Some(env) = unsafe { environment_for_exec(envp) } {
            // SAFETY: NULL-terminated array outliving the call.
            return unsafe { real::execvpe(file, argv, env.as_ptr()) };
        }
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::execvpe(file, argv, envp) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: `environ` is the process environment; execvp is execvpe with it.
    unsafe { execvpe(file, argv, environ) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn fexecve(
    fd: c_int,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    if ensure_init() {
        before_exec();
        // SAFETY: caller's environment array.
        if let Some(env) = unsafe { environment_for_exec(envp) } {
            // SAFETY: NULL-terminated array outliving the call.
            return unsafe { real::fexecve(fd, argv, env.as_ptr()) };
        }
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::fexecve(fd, argv, envp) }
}
