//! read, readv, write, writev, recv, recvfrom, recvmsg, recvmmsg, send, sendto, sendmsg,
//! sendmmsg, sendfile, sendfile64, splice, and the fortify variants __read_chk,
//! __recv_chk, __recvfrom_chk.

use crate::errno;
use crate::init::ensure_init;
use crate::ops::data_socket;
use crate::real;
use crate::uring;
use core::ffi::{c_int, c_uint, c_void};
use libc::{
    iovec, mmsghdr, msghdr, off64_t, off_t, size_t, sockaddr, socklen_t, ssize_t, timespec,
};

fn one_iov(buf: *const c_void, len: size_t) -> [iovec; 1] {
    [iovec {
        iov_base: buf as *mut c_void,
        iov_len: len,
    }]
}

/// The iovecs of a caller's (iov, count) pair, or EINVAL as the kernel says it.
///
/// # Safety
/// `iov` must point to `cnt` iovecs when `cnt` is positive.
unsafe fn iovecs<'a>(iov: *const iovec, cnt: c_int) -> Result<&'a [iovec], errno::Errno> {
    if !(0..=libc::UIO_MAXIOV).contains(&cnt) {
        return Err(errno::Errno(libc::EINVAL));
    }
    if cnt == 0 {
        return Ok(&[]);
    }
    // SAFETY: caller contract.
    Ok(unsafe { core::slice::from_raw_parts(iov, cnt as usize) })
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, count: size_t) -> ssize_t {
    // read() of nothing returns at once in the kernel, without looking at the socket.
    if count > 0 && ensure_init() {
        if let Some(rec) = data_socket(fd) {
            return errno::ret_isize(crate::engine::recv(rec, fd, &one_iov(buf, count), 0));
        }
    }
    // A loop thread's queued ring work must not wait behind a call the shim does not
    // serve (a read of a pipe, a file, a kernel socket).
    crate::uring::submit_pending();
    // SAFETY: forwarded unchanged.
    unsafe { real::read(fd, buf, count) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn __read_chk(
    fd: c_int,
    buf: *mut c_void,
    count: size_t,
    buflen: size_t,
) -> ssize_t {
    if count > 0 && count <= buflen && ensure_init() {
        if let Some(rec) = data_socket(fd) {
            return errno::ret_isize(crate::engine::recv(rec, fd, &one_iov(buf, count), 0));
        }
    }
    // SAFETY: forwarded unchanged (the real one aborts on overflow, as it must).
    unsafe { real::__read_chk(fd, buf, count, buflen) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
    if ensure_init() {
        if let Some(rec) = data_socket(fd) {
            // SAFETY: caller contract of readv.
            let r = unsafe { iovecs(iov, cnt) }.and_then(|v| {
                // Like read(), an empty readv returns at once.
                if v.iter().all(|x| x.iov_len == 0) {
                    Ok(0)
                } else {
                    crate::engine::recv(rec, fd, v, 0)
                }
            });
            return errno::ret_isize(r);
        }
    }
    // A loop thread's queued ring work must not wait behind a call the shim does not
    // serve (a read of a pipe, a file, a kernel socket).
    crate::uring::submit_pending();
    // SAFETY: forwarded unchanged.
    unsafe { real::readv(fd, iov, cnt) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, count: size_t) -> ssize_t {
    if ensure_init() {
        if let Some(rec) = data_socket(fd) {
            return errno::ret_isize(crate::engine::send(rec, fd, &one_iov(buf, count), 0));
        }
    }
    // A loop thread's queued ring work must not wait behind a call the shim does not
    // serve (a read of a pipe, a file, a kernel socket).
    crate::uring::submit_pending();
    // SAFETY: forwarded unchanged.
    unsafe { real::write(fd, buf, count) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
    if ensure_init() {
        if let Some(rec) = data_socket(fd) {
            // SAFETY: caller contract of writev.
            let r = unsafe { iovecs(iov, cnt) }.and_then(|v| crate::engine::send(rec, fd, v, 0));
            return errno::ret_isize(r);
        }
    }
    // A loop thread's queued ring work must not wait behind a call the shim does not
    // serve (a read of a pipe, a file, a kernel socket).
    crate::uring::submit_pending();
    // SAFETY: forwarded unchanged.
    unsafe { real::writev(fd, iov, cnt) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, len: size_t, flags: c_int) -> ssize_t {
    if ensure_init() {
        if let Some(rec) = data_socket(fd) {
            return errno::ret_isize(crate::engine::recv(rec, fd, &one_iov(buf, len), flags));
        }
    }
    // A loop thread's queued ring work must not wait behind a call the shim does not
    // serve (a read of a pipe, a file, a kernel socket).
    crate::uring::submit_pending();
    // SAFETY: forwarded unchanged.
    unsafe { real::recv(fd, buf, len, flags) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn __recv_chk(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    buflen: size_t,
    flags: c_int,
) -> ssize_t {
    if len <= buflen && ensure_init() {
        if let Some(rec) = data_socket(fd) {
            return errno::ret_isize(crate::engine::recv(rec, fd, &one_iov(buf, len), flags));
        }
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::__recv_chk(fd, buf, len, buflen, flags) }
}

/// TCP reports no source address: the kernel sets the returned length to 0.
///
/// # Safety
/// `alen` null or writable.
unsafe fn clear_source_address(addr: *mut sockaddr, alen: *mut socklen_t) {
    if !addr.is_null() && !alen.is_null() {
        // SAFETY: caller contract.
        unsafe { *alen = 0 };
    }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
) -> ssize_t {
    if ensure_init() {
        if let Some(rec) = data_socket(fd) {
            let r = crate::engine::recv(rec, fd, &one_iov(buf, len), flags);
            if r.is_ok() {
                // SAFETY: caller contract of recvfrom.
                unsafe { clear_source_address(addr, alen) };
            }
            return errno::ret_isize(r);
        }
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::recvfrom(fd, buf, len, flags, addr, alen) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn __recvfrom_chk(
    fd: c_int,
    buf: *mut c_void,
    len: size_t,
    buflen: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
) -> ssize_t {
    if len <= buflen && ensure_init() {
        if let Some(rec) = data_socket(fd) {
            let r = crate::engine::recv(rec, fd, &one_iov(buf, len), flags);
            if r.is_ok() {
                // SAFETY: caller contract of recvfrom.
                unsafe { clear_source_address(addr, alen) };
            }
            return errno::ret_isize(r);
        }
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::__recvfrom_chk(fd, buf, len, buflen, flags, addr, alen) }
}

/// recvmsg on an accelerated socket: bytes only; no ancillary data exists on this path.
///
/// # Safety
/// `msg` must be a valid msghdr.
unsafe fn recvmsg_accel(
    rec: &'static crate::socket::SocketRecord,
    fd: c_int,
    msg: *mut msghdr,
    flags: c_int,
) -> Result<usize, errno::Errno> {
    if msg.is_null() {
        return Err(errno::Errno(libc::EFAULT));
    }
    // SAFETY: caller contract.
    let m = unsafe { &mut *msg };
    // SAFETY: the msghdr's iovec array, validated like readv's.
    let iov = unsafe { iovecs(m.msg_iov, m.msg_iovlen as c_int) }?;
    let n = crate::engine::recv(rec, fd, iov, flags)?;
    m.msg_namelen = 0;
    m.msg_controllen = 0;
    m.msg_flags = 0;
    Ok(n)
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    if ensure_init() {
        if let Some(rec) = data_socket(fd) {
            // SAFETY: caller contract of recvmsg.
            return errno::ret_isize(unsafe { recvmsg_accel(rec, fd, msg, flags) });
        }
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::recvmsg(fd, msg, flags) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn recvmmsg(
    fd: c_int,
    msgs: *mut mmsghdr,
    vlen: c_uint,
    flags: c_int,
    timeout: *mut timespec,
) -> c_int {
    if ensure_init() {
        if let Some(rec) = data_socket(fd) {
            // On a stream socket each message is one recvmsg; stop at the first that
            // would block (and report the count, as the kernel does).
            let mut done = 0u32;
            let flags_after_first = flags & !libc::MSG_WAITFORONE
                | if flags & libc::MSG_WAITFORONE != 0 {
                    libc::MSG_DONTWAIT
                } else {
                    0
                };
            while done < vlen {
                let f = if done == 0 {
                    flags & !libc::MSG_WAITFORONE
                } else {
                    flags_after_first
                };
                // SAFETY: `msgs` holds `vlen` entries per the caller's contract.
                let m = unsafe { &mut *msgs.add(done as usize) };
                // SAFETY: as above.
                match unsafe { recvmsg_accel(rec, fd, &mut m.msg_hdr, f) } {
                    Ok(n) => {
                        m.msg_len = n as c_uint;
                        done += 1;
                        if n == 0 {
                            break;
                        }
                    }
                    Err(e) if done == 0 => return errno::ret(Err(e)),
                    Err(_) => break,
                }
            }
            return done as c_int;
        }
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::recvmmsg(fd, msgs, vlen, flags, timeout) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, len: size_t, flags: c_int) -> ssize_t {
    if ensure_init() {
        if let Some(rec) = data_socket(fd) {
            return errno::ret_isize(crate::engine::send(rec, fd, &one_iov(buf, len), flags));
        }
    }
    // A loop thread's queued ring work must not wait behind a call the shim does not
    // serve (a read of a pipe, a file, a kernel socket).
    crate::uring::submit_pending();
    // SAFETY: forwarded unchanged.
    unsafe { real::send(fd, buf, len, flags) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    len: size_t,
    flags: c_int,
    addr: *const sockaddr,
    alen: socklen_t,
) -> ssize_t {
    if ensure_init() {
        if let Some(rec) = data_socket(fd) {
            // A connected TCP socket ignores the destination, as the kernel does.
            return errno::ret_isize(crate::engine::send(rec, fd, &one_iov(buf, len), flags));
        }
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::sendto(fd, buf, len, flags, addr, alen) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    if ensure_init() && !msg.is_null() {
        if let Some(rec) = data_socket(fd) {
            // SAFETY: caller contract of sendmsg.
            let m = unsafe { &*msg };
            if m.msg_controllen == 0 {
                // SAFETY: the msghdr's iovecs.
                let r = unsafe { iovecs(m.msg_iov, m.msg_iovlen as c_int) }
                    .and_then(|v| crate::engine::send(rec, fd, v, flags));
                return errno::ret_isize(r);
            }
            // Ancillary data (SCM_RIGHTS...) is beyond the ring path: hand the socket
            // to the kernel for good, after everything queued has left.
            uring::demote(rec, "sendmsg with ancillary data");
        }
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::sendmsg(fd, msg, flags) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn sendmmsg(
    fd: c_int,
    msgs: *mut mmsghdr,
    vlen: c_uint,
    flags: c_int,
) -> c_int {
    if ensure_init() {
        if let Some(rec) = data_socket(fd) {
            let mut done = 0u32;
            while done < vlen {
                // SAFETY: `msgs` holds `vlen` entries per the caller's contract.
                let m = unsafe { &mut *msgs.add(done as usize) };
                // SAFETY: the msghdr's iovecs.
                let r = unsafe { iovecs(m.msg_hdr.msg_iov, m.msg_hdr.msg_iovlen as c_int) }
                    .and_then(|v| crate::engine::send(rec, fd, v, flags));
                match r {
                    Ok(n) => {
                        m.msg_len = n as c_uint;
                        done += 1;
                    }
                    Err(e) if done == 0 => return errno::ret(Err(e)),
                    Err(_) => break,
                }
            }
            return done as c_int;
        }
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::sendmmsg(fd, msgs, vlen, flags) }
}

/// Bytes the shim still holds for `fd` must leave before the kernel sends anything
/// itself (sendfile, splice), or the stream would be reordered.
fn flush_before_kernel_write(fd: c_int) {
    if let Some(rec) = data_socket(fd) {
        uring::flush(rec);
    }
}

/// After the kernel wrote to `fd` itself: a short or would-block result means its send
/// buffer is full, which the shim's readiness must reflect.
fn after_kernel_write(fd: c_int, asked: size_t, result: ssize_t) {
    let blocked = if result < 0 {
        errno::get() == libc::EAGAIN
    } else {
        (result as size_t) < asked
    };
    if blocked {
        if let Some(rec) = crate::socket::accelerated(fd) {
            errno::preserve(|| uring::kernel_write_blocked(rec));
        }
    }
}

/// sendfile/sendfile64 on an accelerated socket: queued behind bytes the shim holds
/// when there are any, else the kernel's own sendfile.
fn sendfile_common(
    out_fd: c_int,
    in_fd: c_int,
    offset: *mut off64_t,
    count: size_t,
) -> Option<ssize_t> {
    let rec = data_socket(out_fd)?;
    if rec.engine() == crate::socket::Engine::Ustack {
        // SAFETY: `offset` comes from the caller of sendfile, with its contract.
        let r = unsafe { crate::engine::sendfile_ustack(rec, out_fd, in_fd, offset, count) };
        return Some(errno::ret_isize(r));
    }
    // SAFETY: `offset` comes from the caller of sendfile, with its contract.
    if let Some(r) = unsafe { uring::sendfile_queued(rec, in_fd, offset, count) } {
        return Some(errno::ret_isize(r));
    }
    flush_before_kernel_write(out_fd);
    None
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn sendfile(
    out_fd: c_int,
    in_fd: c_int,
    offset: *mut off_t,
    count: size_t,
) -> ssize_t {
    if ensure_init() {
        // off_t is 64-bit on the platforms the shim builds for.
        if let Some(r) = sendfile_common(out_fd, in_fd, offset.cast(), count) {
            return r;
        }
        // SAFETY: forwarded unchanged.
        let r = unsafe { real::sendfile(out_fd, in_fd, offset, count) };
        after_kernel_write(out_fd, count, r);
        return r;
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::sendfile(out_fd, in_fd, offset, count) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn sendfile64(
    out_fd: c_int,
    in_fd: c_int,
    offset: *mut off64_t,
    count: size_t,
) -> ssize_t {
    if ensure_init() {
        if let Some(r) = sendfile_common(out_fd, in_fd, offset, count) {
            return r;
        }
        // SAFETY: forwarded unchanged.
        let r = unsafe { real::sendfile64(out_fd, in_fd, offset, count) };
        after_kernel_write(out_fd, count, r);
        return r;
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::sendfile64(out_fd, in_fd, offset, count) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn splice(
    fd_in: c_int,
    off_in: *mut off64_t,
    fd_out: c_int,
    off_out: *mut off64_t,
    len: size_t,
    flags: c_uint,
) -> ssize_t {
    if ensure_init() {
        if [fd_in, fd_out].iter().any(|&fd| {
            crate::socket::accelerated(fd)
                .is_some_and(|r| r.engine() == crate::socket::Engine::Ustack)
        }) {
            // The kernel cannot reach a stackd session's bytes.
            errno::set(libc::EINVAL);
            return -1;
        }
        flush_before_kernel_write(fd_out);
        if let Some(rec) = data_socket(fd_in) {
            // Reading a ring socket through a pipe: the kernel cannot see bytes the
            // shim already received, so the socket returns to the kernel for good once
            // they are delivered.
            uring::demote(rec, "splice from socket");
            if let Some(rec) = data_socket(fd_in) {
                // Still holding received bytes: deliver them (a short splice).
                return errno::ret_isize(uring::splice_out_queued(rec, fd_in, fd_out, len));
            }
        }
    }
    // SAFETY: forwarded unchanged.
    let r = unsafe { real::splice(fd_in, off_in, fd_out, off_out, len, flags) };
    if ensure_init() {
        after_kernel_write(fd_out, len, r);
    }
    r
}
