//! Socket lifecycle operations that decide routing: creation, accept, connect.
//!
//! These run the real call and then record what the kernel reported, so the
//! application always sees the kernel's own result and errno.

use crate::errno::{self, Errno};
use crate::real;
use crate::route;
use crate::socket::{self as sock, SocketRecord};
use crate::stats;
use core::ffi::c_int;
use libc::{sockaddr, socklen_t};
use ringshim_common::stats::Counter;

/// A socket() call returned `fd`: track TCP over IPv4/IPv6, forget anything else the
/// number used to be.
pub fn on_new_socket(fd: c_int, domain: c_int, ty: c_int) {
    let base_type = ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
    if (domain == libc::AF_INET || domain == libc::AF_INET6) && base_type == libc::SOCK_STREAM {
        sock::track(fd, domain, ty & libc::SOCK_NONBLOCK != 0);
    } else {
        sock::forget_stale(fd);
    }
}

/// accept4 on a tracked listener: a listener with a stackd side takes stackd's
/// connections first; otherwise the kernel's accept.
///
/// # Safety
/// `addr`/`len` as for accept4(2).
pub unsafe fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
    if let Some(listener) = sock::lookup(fd) {
        if crate::ustack::io::is_listener(listener) && crate::ustack::io::join(listener, fd) {
            // SAFETY: caller contract.
            return unsafe { crate::ustack::io::accept(listener, fd, addr, len, flags) };
        }
    }
    // SAFETY: caller contract.
    unsafe { accept_kernel(fd, addr, len, flags) }
}

/// The kernel's accept4 on a tracked listener: the peer address decides the new
/// socket's route, so the shim asks for it even when the caller passes no buffer.
///
/// # Safety
/// `addr`/`len` as for accept4(2).
pub unsafe fn accept_kernel(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut peer: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
    let mut peer_len = core::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
    // SAFETY: our own buffer with its true size.
    let nfd = unsafe {
        real::accept4(
            fd,
            (&mut peer as *mut libc::sockaddr_storage).cast(),
            &mut peer_len,
            flags,
        )
    };
    if nfd < 0 {
        return nfd;
    }
    if !addr.is_null() && !len.is_null() {
        // Copy out exactly as the kernel would: truncate to the caller's length and
        // report the full length.
        // SAFETY: the caller promised `*len` writable bytes at `addr`.
        unsafe {
            let n = (*len).min(peer_len) as usize;
            core::ptr::copy_nonoverlapping(
                (&peer as *const libc::sockaddr_storage).cast::<u8>(),
                addr.cast::<u8>(),
                n,
            );
            *len = peer_len;
        }
    }
    errno::preserve(|| {
        // A fork child's page is published by its first tracked socket: publish first,
        // or this accept is counted on the private page and lost (nginx workers
        // showed accepts one short).
        stats::ensure_published();
        stats::bump(Counter::Accepts);
        let family = i32::from(peer.ss_family);
        let Some(rec) = sock::track(nfd, family, flags & libc::SOCK_NONBLOCK != 0) else {
            return;
        };
        if let Some(listener) = sock::lookup(fd) {
            crate::balance::on_accept(listener, rec);
        }
        // SAFETY: our buffer, filled by the kernel up to peer_len.
        if let Some(ip) =
            unsafe { route::sockaddr_ip((&peer as *const libc::sockaddr_storage).cast(), peer_len) }
        {
            sock::route_by_address(rec, nfd, ip, "accepted from");
            if sock::wants_uring(rec) {
                crate::uring::activate(rec, nfd);
            }
        }
    });
    nfd
}

/// connect on a tracked socket: routed by the peer before the real call.
///
/// # Safety
/// `addr`/`len` as for connect(2).
pub unsafe fn connect(
    rec: &'static SocketRecord,
    fd: c_int,
    addr: *const sockaddr,
    len: socklen_t,
) -> c_int {
    if rec.engine() == sock::Engine::Uring {
        // Connecting an already-connected accelerated socket: the kernel answers
        // (EISCONN), exactly as without the shim.
        // SAFETY: forwarded unchanged.
        return unsafe { real::connect(fd, addr, len) };
    }
    // SAFETY: `len` bounds the read; the kernel validates the rest.
    let ip = unsafe { route::sockaddr_ip(addr, len) };
    if rec.engine() == sock::Engine::Ustack
        || (ip.is_some_and(|ip| {
            route::decide(crate::init::config(), ip) == route::Route::Accelerated
        }) && crate::ustack::io::wanted()
            // SAFETY: as above.
            && unsafe { crate::ustack::io::endpoint_of(addr, len) }.is_some()
            // SAFETY: as above.
            && unsafe { crate::ustack::io::may_connect(rec, fd, addr, len) })
    {
        if let Some(ip) = ip {
            errno::preserve(|| sock::route_by_address(rec, fd, ip, "connecting to"));
        }
        // SAFETY: caller contract.
        return errno::ret(unsafe { crate::ustack::io::connect(rec, fd, addr, len) });
    }
    // SAFETY: forwarded unchanged.
    let r = unsafe { real::connect(fd, addr, len) };
    let err = errno::get();
    if let Some(ip) = ip {
        if r == 0 || err == libc::EINPROGRESS {
            errno::preserve(|| {
                stats::bump(Counter::Connects);
                sock::route_by_address(rec, fd, ip, "connecting to");
                // A non-blocking connect in progress stays on the kernel until the
                // application first touches the data path: its EPOLLOUT/SO_ERROR
                // handshake must see the kernel's own answers.
                if r == 0 && sock::wants_uring(rec) {
                    crate::uring::activate(rec, fd);
                }
            });
        }
    }
    errno::set(err);
    r
}

/// The record of `fd` if its data path is accelerated — activating a socket whose
/// non-blocking connect was in progress, once the kernel says it is connected.
#[inline]
pub fn data_socket(fd: c_int) -> Option<&'static SocketRecord> {
    let rec = sock::lookup(fd)?;
    if rec.engine() != sock::Engine::Kernel {
        return Some(rec);
    }
    if !sock::wants_uring(rec) {
        return None;
    }
    activate_connected(rec, fd)
}

#[cold]
fn activate_connected(rec: &'static SocketRecord, fd: c_int) -> Option<&'static SocketRecord> {
    let connected = errno::preserve(|| {
        // SAFETY: all-zero sockaddr_storage is valid; our own buffer and length.
        let mut ss: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
        let mut l = core::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
        // SAFETY: as above.
        unsafe {
            real::getpeername(fd, (&mut ss as *mut libc::sockaddr_storage).cast(), &mut l) == 0
        }
    });
    if !connected {
        return None;
    }
    crate::uring::activate(rec, fd);
    (rec.engine() != sock::Engine::Kernel).then_some(rec)
}

pub fn err<T>(e: i32) -> Result<T, Errno> {
    Err(Errno(e))
}
