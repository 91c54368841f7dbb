//! epoll_create, epoll_create1, epoll_ctl, epoll_wait, epoll_pwait, epoll_pwait2, poll,
//! ppoll, select, pselect, and the fortify variants __poll_chk, __ppoll_chk.
//!
//! Waits that involve no accelerated socket are the real calls (after handing the
//! thread's pending ring submissions to the kernel, so queued sends never wait behind
//! a sleep). The rest is `crate::uring::wait`.

use crate::epoll;
use crate::errno;
use crate::init::ensure_init;
use crate::real;
use crate::uring::{self, wait};
use core::ffi::c_int;
use libc::{epoll_event, fd_set, nfds_t, pollfd, sigset_t, size_t, timespec, timeval};

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn epoll_create(size: c_int) -> c_int {
    // SAFETY: forwarded unchanged.
    let fd = unsafe { real::epoll_create(size) };
    if fd >= 0 && ensure_init() {
        errno::preserve(|| epoll::track(fd));
    }
    fd
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn epoll_create1(flags: c_int) -> c_int {
    // SAFETY: forwarded unchanged.
    let fd = unsafe { real::epoll_create1(flags) };
    if fd >= 0 && ensure_init() {
        errno::preserve(|| epoll::track(fd));
    }
    fd
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn epoll_ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    event: *mut epoll_event,
) -> c_int {
    if ensure_init() {
        if let Some(ep) = epoll::lookup(epfd) {
            if fd != epfd {
                if let Some(rec) = crate::ops::data_socket(fd) {
                    // SAFETY: `event` is read as epoll_ctl would read it.
                    return errno::ret(unsafe { wait::epoll_ctl(ep, epfd, op, fd, rec, event) });
                }
                if let Some(inner) = epoll::lookup(fd) {
                    // An epoll instance nested in another: its shim readiness must be
                    // visible to the kernel from now on, and waits on the outer one
                    // must drive the rings that feed it.
                    wait::expose(inner, fd);
                    // SAFETY: forwarded unchanged.
                    let r = unsafe { real::epoll_ctl(epfd, op, fd, event) };
                    if r == 0 && op == libc::EPOLL_CTL_ADD {
                        ep.nested.fetch_add(1, core::sync::atomic::Ordering::AcqRel);
                    } else if r == 0 && op == libc::EPOLL_CTL_DEL {
                        let _ = ep.nested.fetch_update(
                            core::sync::atomic::Ordering::AcqRel,
                            core::sync::atomic::Ordering::Acquire,
                            |n| n.checked_sub(1),
                        );
                    }
                    return r;
                }
            }
            // SAFETY: forwarded unchanged.
            let r = unsafe { real::epoll_ctl(epfd, op, fd, event) };
            if r == 0 {
                // SAFETY: the kernel accepted the call, so `event` was readable (or
                // unused for DEL).
                let (events, data) = if event.is_null() {
                    (0, 0)
                } else {
                    unsafe { ((*event).events, (*event).u64) }
                };
                errno::preserve(|| epoll::record_ctl(ep, op, fd, events, data));
            }
            return r;
        }
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::epoll_ctl(epfd, op, fd, event) }
}

fn ms_timeout(ms: c_int) -> Option<timespec> {
    (ms >= 0).then(|| timespec {
        tv_sec: (ms / 1000) as i64,
        tv_nsec: ((ms % 1000) as i64) * 1_000_000,
    })
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn epoll_wait(
    epfd: c_int,
    events: *mut epoll_event,
    max: c_int,
    timeout: c_int,
) -> c_int {
    // SAFETY: same contract as epoll_pwait with no mask.
    unsafe { epoll_pwait(epfd, events, max, timeout, core::ptr::null()) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn epoll_pwait(
    epfd: c_int,
    events: *mut epoll_event,
    max: c_int,
    timeout: c_int,
    sigmask: *const sigset_t,
) -> c_int {
    if ensure_init() {
        if let Some(ep) = epoll::lookup(epfd) {
            if wait::merged(ep) {
                // SAFETY: caller's buffers, used as epoll_pwait would.
                return errno::ret(unsafe {
                    wait::epoll_wait(ep, epfd, events, max, ms_timeout(timeout), sigmask)
                });
            }
            // A tracked instance waits through the shim even before it has accelerated
            // members: another thread may add one meanwhile, and the shim's own
            // descriptors (the bridge, ustack's wake eventfds) then join the kernel set
            // and must be filtered out of what this wait returns.
            if uring::available() || crate::ustack::attached() {
                uring::submit_pending();
                // SAFETY: caller's buffers.
                return errno::ret(unsafe {
                    wait::epoll_wait_kernel(
                        ep,
                        epfd,
                        events,
                        max,
                        ms_timeout(timeout),
                        sigmask,
                        false,
                    )
                });
            }
        }
        uring::submit_pending();
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::epoll_pwait(epfd, events, max, timeout, sigmask) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn epoll_pwait2(
    epfd: c_int,
    events: *mut epoll_event,
    max: c_int,
    timeout: *const timespec,
    sigmask: *const sigset_t,
) -> c_int {
    if ensure_init() {
        if let Some(ep) = epoll::lookup(epfd) {
            if wait::merged(ep) {
                // SAFETY: `timeout` is null or readable per the caller's contract.
                let t = if timeout.is_null() {
                    None
                } else {
                    Some(unsafe { *timeout })
                };
                // SAFETY: caller's buffers.
                return errno::ret(unsafe { wait::epoll_wait(ep, epfd, events, max, t, sigmask) });
            }
            // A tracked instance waits through the shim even before it has accelerated
            // members: another thread may add one meanwhile, and the shim's own
            // descriptors (the bridge, ustack's wake eventfds) then join the kernel set
            // and must be filtered out of what this wait returns.
            if uring::available() || crate::ustack::attached() {
                uring::submit_pending();
                // SAFETY: `timeout` is null or readable per the caller's contract.
                let t = if timeout.is_null() {
                    None
                } else {
                    Some(unsafe { *timeout })
                };
                // SAFETY: caller's buffers.
                return errno::ret(unsafe {
                    wait::epoll_wait_kernel(ep, epfd, events, max, t, sigmask, true)
                });
            }
        }
        uring::submit_pending();
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::epoll_pwait2(epfd, events, max, timeout, sigmask) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn poll(fds: *mut pollfd, nfds: nfds_t, timeout: c_int) -> c_int {
    if ensure_init() {
        // SAFETY: `fds` holds `nfds` entries per the caller's contract.
        if unsafe { wait::poll_needs_shim(fds, nfds) } {
            // SAFETY: as above.
            return errno::ret(unsafe {
                wait::poll(fds, nfds, ms_timeout(timeout), core::ptr::null())
            });
        }
        uring::submit_pending();
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::poll(fds, nfds, timeout) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn __poll_chk(
    fds: *mut pollfd,
    nfds: nfds_t,
    timeout: c_int,
    fdslen: size_t,
) -> c_int {
    let fits = (nfds as usize)
        .checked_mul(core::mem::size_of::<pollfd>())
        .is_some_and(|n| n <= fdslen);
    if fits {
        // SAFETY: bounds verified as __poll_chk would.
        return unsafe { poll(fds, nfds, timeout) };
    }
    // SAFETY: forwarded unchanged (aborts, as it must).
    unsafe { real::__poll_chk(fds, nfds, timeout, fdslen) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn ppoll(
    fds: *mut pollfd,
    nfds: nfds_t,
    timeout: *const timespec,
    sigmask: *const sigset_t,
) -> c_int {
    if ensure_init() {
        // SAFETY: caller contract.
        if unsafe { wait::poll_needs_shim(fds, nfds) } {
            // SAFETY: `timeout` null or readable.
            let t = if timeout.is_null() {
                None
            } else {
                Some(unsafe { *timeout })
            };
            // SAFETY: caller contract.
            return errno::ret(unsafe { wait::poll(fds, nfds, t, sigmask) });
        }
        uring::submit_pending();
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::ppoll(fds, nfds, timeout, sigmask) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn __ppoll_chk(
    fds: *mut pollfd,
    nfds: nfds_t,
    timeout: *const timespec,
    sigmask: *const sigset_t,
    fdslen: size_t,
) -> c_int {
    let fits = (nfds as usize)
        .checked_mul(core::mem::size_of::<pollfd>())
        .is_some_and(|n| n <= fdslen);
    if fits {
        // SAFETY: bounds verified as __ppoll_chk would.
        return unsafe { ppoll(fds, nfds, timeout, sigmask) };
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::__ppoll_chk(fds, nfds, timeout, sigmask, fdslen) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn select(
    nfds: c_int,
    r: *mut fd_set,
    w: *mut fd_set,
    e: *mut fd_set,
    timeout: *mut timeval,
) -> c_int {
    if ensure_init() {
        // SAFETY: the sets hold at least `nfds` bits per the caller's contract.
        if unsafe { wait::select_needs_shim(nfds, r, w, e) } {
            // SAFETY: `timeout` null or readable.
            let t = if timeout.is_null() {
                None
            } else {
                let tv = unsafe { *timeout };
                Some(timespec {
                    tv_sec: tv.tv_sec,
                    tv_nsec: tv.tv_usec * 1000,
                })
            };
            // SAFETY: caller contract.
            let res = unsafe { wait::select(nfds, r, w, e, t, core::ptr::null()) };
            if !timeout.is_null() && res.is_ok() {
                // Linux select reports the time left; a ready result means "not all of it".
                // SAFETY: writable per the caller's contract.
                if res == Ok(0) {
                    unsafe {
                        *timeout = timeval {
                            tv_sec: 0,
                            tv_usec: 0,
                        }
                    };
                }
            }
            return errno::ret(res);
        }
        uring::submit_pending();
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::select(nfds, r, w, e, timeout) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn pselect(
    nfds: c_int,
    r: *mut fd_set,
    w: *mut fd_set,
    e: *mut fd_set,
    timeout: *const timespec,
    sigmask: *const sigset_t,
) -> c_int {
    if ensure_init() {
        // SAFETY: caller contract.
        if unsafe { wait::select_needs_shim(nfds, r, w, e) } {
            // SAFETY: `timeout` null or readable.
            let t = if timeout.is_null() {
                None
            } else {
                Some(unsafe { *timeout })
            };
            // SAFETY: caller contract.
            return errno::ret(unsafe { wait::select(nfds, r, w, e, t, sigmask) });
        }
        uring::submit_pending();
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::pselect(nfds, r, w, e, timeout, sigmask) }
}
