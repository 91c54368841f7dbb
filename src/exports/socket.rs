//! socket, socketpair, bind, listen, accept, accept4, connect, shutdown, close,
//! getsockname, getpeername, getsockopt, setsockopt.

use crate::errno;
use crate::init::ensure_init;
use crate::real;
use crate::route;
use crate::socket::{self as sock};
use core::ffi::{c_int, c_void};
use libc::{sockaddr, socklen_t};

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    // SAFETY: forwarded unchanged.
    let fd = unsafe { real::socket(domain, ty, protocol) };
    if fd >= 0 && ensure_init() {
        errno::preserve(|| crate::ops::on_new_socket(fd, domain, ty));
    }
    fd
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn socketpair(
    domain: c_int,
    ty: c_int,
    protocol: c_int,
    sv: *mut c_int,
) -> c_int {
    // SAFETY: forwarded unchanged.
    let r = unsafe { real::socketpair(domain, ty, protocol, sv) };
    if r == 0 && ensure_init() {
        // SAFETY: on success the kernel wrote two fds into `sv`.
        let (a, b) = unsafe { (*sv, *sv.add(1)) };
        errno::preserve(|| {
            sock::forget_stale(a);
            sock::forget_stale(b);
        });
    }
    r
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: forwarded unchanged.
    let r = unsafe { real::bind(fd, addr, len) };
    if r == 0 && ensure_init() {
        if let Some(rec) = sock::lookup(fd) {
            // SAFETY: the kernel accepted `addr` with `len`, so it is readable.
            if let Some(ip) = unsafe { route::sockaddr_ip(addr, len) } {
                if !ip.is_unspecified() {
                    errno::preserve(|| sock::route_by_address(rec, fd, ip, "bound to"));
                }
            }
        }
    }
    r
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    if ensure_init() && sock::lookup(fd).is_some_and(crate::ustack::io::refuses_listen) {
        return errno::ret(Err(crate::errno::Errno(libc::EINVAL)));
    }
    // SAFETY: forwarded unchanged.
    let r = unsafe { real::listen(fd, backlog) };
    if r == 0 && ensure_init() {
        if let Some(rec) = sock::lookup(fd) {
            rec.listening
                .store(true, core::sync::atomic::Ordering::Relaxed);
            errno::preserve(|| {
                crate::balance::on_listen(rec, fd);
                crate::ustack::io::on_listen(rec, fd, backlog);
            });
        }
    }
    r
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: same contract as accept4 with no flags.
    unsafe { accept4(fd, addr, len, 0) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    if ensure_init()
        && (sock::lookup(fd).is_some() || errno::preserve(|| sock::adopt_listener(fd)).is_some())
    {
        // SAFETY: the caller's pointers are used as accept4 would use them.
        return unsafe { crate::ops::accept(fd, addr, len, flags) };
    }
    // SAFETY: forwarded unchanged.
    let nfd = unsafe { real::accept4(fd, addr, len, flags) };
    if nfd >= 0 && ensure_init() {
        errno::preserve(|| sock::forget_stale(nfd));
    }
    nfd
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    if ensure_init() {
        if let Some(rec) = sock::lookup(fd) {
            // SAFETY: caller's pointers, validated by the kernel; the shim reads `addr`
            // only within `len`.
            return unsafe { crate::ops::connect(rec, fd, addr, len) };
        }
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::connect(fd, addr, len) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn shutdown(fd: c_int, how: c_int) -> c_int {
    if ensure_init() {
        if let Some(rec) = sock::accelerated(fd) {
            return errno::ret(crate::engine::shutdown(rec, fd, how));
        }
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::shutdown(fd, how) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if ensure_init() && crate::fdtable::get(fd).is_some() {
        if crate::fdtable::get(fd) == Some(crate::fdtable::Entry::Internal) {
            // The shim's own descriptor (a close-everything loop): the application never
            // opened it, and closing it would take a ring away from under the shim.
            return 0;
        }
        // Ring operations on the socket are cancelled before the descriptor goes
        // (a pending receive holds its own file reference and would keep the
        // connection open forever otherwise).
        errno::preserve(|| sock::on_close(fd));
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::close(fd) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    if ensure_init() {
        if let Some(rec) = sock::accelerated(fd) {
            // SAFETY: the caller's buffers, written within *len.
            if let Some(r) = unsafe { crate::ustack::io::name(rec, false, addr, len) } {
                return errno::ret(r);
            }
        }
    }
    // SAFETY: forwarded unchanged; the kernel socket is the truth for its addresses.
    unsafe { real::getsockname(fd, addr, len) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    if ensure_init() {
        if let Some(rec) = sock::accelerated(fd) {
            // SAFETY: the caller's buffers, written within *len.
            if let Some(r) = unsafe { crate::ustack::io::name(rec, true, addr, len) } {
                return errno::ret(r);
            }
        }
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::getpeername(fd, addr, len) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    if ensure_init() {
        if let Some(rec) = sock::accelerated(fd) {
            // SAFETY: caller's buffers, written only within *len.
            return errno::ret(unsafe {
                crate::engine::getsockopt(rec, fd, level, name, val, len)
            });
        }
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::getsockopt(fd, level, name, val, len) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> c_int {
    if ensure_init() {
        if let Some(rec) = sock::accelerated(fd) {
            // SAFETY: the caller's option buffer of `len` bytes (read only if an int).
            unsafe { crate::engine::before_setsockopt(rec, level, name, val, len) };
        }
    }
    // SAFETY: forwarded unchanged: the kernel socket holds every option.
    unsafe { real::setsockopt(fd, level, name, val, len) }
}

/// close_range(2): the same release as close() for every tracked fd in the range, and
/// the shim's own descriptors are left open (see `close`).
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn close_range(
    first: libc::c_uint,
    last: libc::c_uint,
    flags: c_int,
) -> c_int {
    if !ensure_init() || flags & (libc::CLOSE_RANGE_CLOEXEC as c_int) != 0 || first > last {
        // SAFETY: forwarded unchanged.
        return unsafe { real::close_range(first, last, flags) };
    }
    let mut internal: Vec<c_int> = Vec::new();
    errno::preserve(|| {
        crate::fdtable::for_each(|fd, e| {
            if (fd as u32) < first || (fd as u32) > last {
                return;
            }
            if e == crate::fdtable::Entry::Internal {
                internal.push(fd);
            } else {
                sock::on_close(fd);
            }
        })
    });
    // Close around the shim's descriptors.
    let mut start = first;
    for fd in internal {
        let fd = fd as u32;
        if fd > start {
            // SAFETY: a sub-range of the caller's range.
            let r = unsafe { real::close_range(start, fd - 1, flags) };
            if r < 0 {
                return r;
            }
        }
        start = fd + 1;
    }
    if start <= last && start >= first {
        // SAFETY: the rest of the caller's range.
        return unsafe { real::close_range(start, last, flags) };
    }
    0
}
