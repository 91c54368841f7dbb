//! Which engine serves a call on an accelerated socket: one `match` per operation, so
//! each export keeps its single shape (init → is it ours? → engine or libc) whatever
//! the backend.

use crate::errno::Errno;
use crate::socket::{Engine, SocketRecord};
use core::ffi::{c_int, c_void};

pub fn recv(
    rec: &'static SocketRecord,
    fd: c_int,
    iov: &[libc::iovec],
    flags: c_int,
) -> Result<usize, Errno> {
    match rec.engine() {
        Engine::Ustack => crate::ustack::io::recv(rec, fd, iov, flags),
        _ => crate::uring::recv(rec, fd, iov, flags),
    }
}

pub fn send(
    rec: &'static SocketRecord,
    fd: c_int,
    iov: &[libc::iovec],
    flags: c_int,
) -> Result<usize, Errno> {
    match rec.engine() {
        Engine::Ustack => crate::ustack::io::send(rec, fd, iov, flags),
        _ => crate::uring::send(rec, fd, iov, flags),
    }
}

pub fn shutdown(rec: &'static SocketRecord, fd: c_int, how: c_int) -> Result<c_int, Errno> {
    match rec.engine() {
        Engine::Ustack => crate::ustack::io::shutdown(rec, fd, how),
        _ => crate::uring::shutdown(rec, fd, how),
    }
}

/// # Safety
/// As getsockopt(2).
pub unsafe fn getsockopt(
    rec: &SocketRecord,
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut libc::socklen_t,
) -> Result<c_int, Errno> {
    // SAFETY: forwarded caller contract.
    unsafe {
        match rec.engine() {
            Engine::Ustack => crate::ustack::io::getsockopt(rec, fd, level, name, val, len),
            _ => crate::uring::getsockopt(rec, fd, level, name, val, len),
        }
    }
}

/// # Safety
/// `val` readable for `len` bytes.
pub unsafe fn before_setsockopt(
    rec: &'static SocketRecord,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: libc::socklen_t,
) {
    // SAFETY: forwarded caller contract.
    unsafe {
        match rec.engine() {
            Engine::Ustack => crate::ustack::io::before_setsockopt(rec, level, name, val, len),
            _ => crate::uring::before_setsockopt(rec, level, name, val, len),
        }
    }
}

/// # Safety
/// `arg` as the request defines it.
pub unsafe fn ioctl(
    rec: &SocketRecord,
    fd: c_int,
    request: libc::c_ulong,
    arg: usize,
) -> Option<Result<c_int, Errno>> {
    match rec.engine() {
        Engine::Ustack => {
            let n = crate::ustack::io::ioctl(rec, request)?;
            if arg == 0 {
                return Some(Err(Errno(libc::EFAULT)));
            }
            // SAFETY: FIONREAD/TIOCOUTQ write one int at `arg`.
            unsafe { (arg as *mut c_int).write_unaligned(n) };
            Some(Ok(0))
        }
        // SAFETY: forwarded caller contract.
        _ => unsafe { crate::uring::ioctl(rec, fd, request, arg) },
    }
}

/// sendfile() to a ustack socket: the kernel cannot write into stackd's fifo, so the
/// file is read (pread, or read at the file position) and sent through the session.
///
/// # Safety
/// `offset` null or a valid off64_t.
pub unsafe fn sendfile_ustack(
    rec: &'static SocketRecord,
    fd: c_int,
    in_fd: c_int,
    offset: *mut libc::off64_t,
    count: usize,
) -> Result<usize, Errno> {
    let mut buf = [0u8; 16384];
    let mut done = 0usize;
    while done < count {
        let want = (count - done).min(buf.len());
        // SAFETY: our buffer; `offset` per the caller's contract.
        let got = unsafe {
            if offset.is_null() {
                crate::real::read(in_fd, buf.as_mut_ptr().cast(), want)
            } else {
                libc::pread64(in_fd, buf.as_mut_ptr().cast(), want, *offset)
            }
        };
        if got < 0 {
            return if done > 0 {
                Ok(done)
            } else {
                Err(crate::errno::last())
            };
        }
        if got == 0 {
            break;
        }
        let iov = [libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: got as usize,
        }];
        let sent = match crate::ustack::io::send(rec, fd, &iov, libc::MSG_NOSIGNAL) {
            Ok(n) => n,
            Err(e) if done == 0 => return Err(e),
            Err(_) => 0,
        };
        if sent < got as usize && offset.is_null() && sent > 0 {
            // Give back what the socket did not take, so the file position stays right.
            // SAFETY: plain lseek on the caller's file.
            unsafe { libc::lseek64(in_fd, sent as i64 - got as i64, libc::SEEK_CUR) };
        } else if sent < got as usize && offset.is_null() {
            // SAFETY: as above.
            unsafe { libc::lseek64(in_fd, -got as i64, libc::SEEK_CUR) };
        }
        done += sent;
        if !offset.is_null() {
            // SAFETY: caller's valid offset.
            unsafe { *offset += sent as i64 };
        }
        if sent < got as usize {
            break;
        }
    }
    Ok(done)
}
