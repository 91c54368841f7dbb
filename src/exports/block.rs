//! Blocking calls that have nothing to do with sockets: sleeps, signal waits, thread
//! joins, child waits.
//!
//! An event-loop thread's writes are batched: they reach the kernel with the thread's
//! next wait through the shim. A thread that writes and then blocks somewhere else
//! (joins a worker, sleeps, waits for a child) would hold its bytes for as long as it
//! blocks — for ever, if what it waits for is the peer's reply. Each of these calls
//! therefore hands the thread's queued submissions to the kernel first (nothing at all
//! when none are queued: one thread-local load), then makes the real call unchanged.

use crate::real;
use core::ffi::{c_int, c_uint, c_void};
use libc::{pid_t, sigset_t, timespec};

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn nanosleep(req: *const timespec, rem: *mut timespec) -> c_int {
    crate::uring::submit_pending();
    // SAFETY: forwarded unchanged.
    unsafe { real::nanosleep(req, rem) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn clock_nanosleep(
    clock: libc::clockid_t,
    flags: c_int,
    req: *const timespec,
    rem: *mut timespec,
) -> c_int {
    crate::uring::submit_pending();
    // SAFETY: forwarded unchanged.
    unsafe { real::clock_nanosleep(clock, flags, req, rem) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn usleep(usec: libc::useconds_t) -> c_int {
    crate::uring::submit_pending();
    // SAFETY: forwarded unchanged.
    unsafe { real::usleep(usec) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn sleep(secs: c_uint) -> c_uint {
    crate::uring::submit_pending();
    // SAFETY: forwarded unchanged.
    unsafe { real::sleep(secs) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn pause() -> c_int {
    crate::uring::submit_pending();
    // SAFETY: forwarded unchanged.
    unsafe { real::pause() }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn sigsuspend(mask: *const sigset_t) -> c_int {
    crate::uring::submit_pending();
    // SAFETY: forwarded unchanged.
    unsafe { real::sigsuspend(mask) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn sigwait(set: *const sigset_t, sig: *mut c_int) -> c_int {
    crate::uring::submit_pending();
    // SAFETY: forwarded unchanged.
    unsafe { real::sigwait(set, sig) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn sigwaitinfo(set: *const sigset_t, info: *mut libc::siginfo_t) -> c_int {
    crate::uring::submit_pending();
    // SAFETY: forwarded unchanged.
    unsafe { real::sigwaitinfo(set, info) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn sigtimedwait(
    set: *const sigset_t,
    info: *mut libc::siginfo_t,
    timeout: *const timespec,
) -> c_int {
    crate::uring::submit_pending();
    // SAFETY: forwarded unchanged.
    unsafe { real::sigtimedwait(set, info, timeout) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn pthread_join(thread: libc::pthread_t, ret: *mut *mut c_void) -> c_int {
    crate::uring::submit_pending();
    // SAFETY: forwarded unchanged.
    unsafe { real::pthread_join(thread, ret) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn sem_wait(sem: *mut libc::sem_t) -> c_int {
    crate::uring::submit_pending();
    // SAFETY: forwarded unchanged.
    unsafe { real::sem_wait(sem) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn wait(status: *mut c_int) -> pid_t {
    crate::uring::submit_pending();
    // SAFETY: forwarded unchanged.
    unsafe { real::wait(status) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn waitpid(pid: pid_t, status: *mut c_int, options: c_int) -> pid_t {
    crate::uring::submit_pending();
    // SAFETY: forwarded unchanged.
    unsafe { real::waitpid(pid, status, options) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn wait4(
    pid: pid_t,
    status: *mut c_int,
    options: c_int,
    usage: *mut libc::rusage,
) -> pid_t {
    crate::uring::submit_pending();
    // SAFETY: forwarded unchanged.
    unsafe { real::wait4(pid, status, options, usage) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn waitid(
    idtype: libc::idtype_t,
    id: libc::id_t,
    info: *mut libc::siginfo_t,
    options: c_int,
) -> c_int {
    crate::uring::submit_pending();
    // SAFETY: forwarded unchanged.
    unsafe { real::waitid(idtype, id, info, options) }
}
