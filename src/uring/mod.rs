//! The io_uring engine (foundation stub: reports itself unavailable, so every socket
//! routed to it falls back to the kernel path and no socket is ever accelerated).

pub mod wait;

use crate::errno::Errno;
use crate::socket::SocketRecord;
use core::ffi::c_int;
use ringshim_common::config::Config;

#[derive(Default)]
pub struct SockIo {}

impl SockIo {
    pub const fn new() -> SockIo {
        SockIo {}
    }
    pub fn reset(&mut self) {}
}

pub fn probe(_cfg: &Config) -> bool {
    crate::log_warn!("io_uring engine not built yet; sockets stay on the kernel path");
    false
}
pub fn available() -> bool {
    false
}
pub fn activate(_rec: &SocketRecord, _fd: c_int) {}
pub fn demote(_rec: &SocketRecord, _why: &str) {}
pub fn on_last_close(_rec: &SocketRecord, _app_close: bool) {}
pub fn unwatch(_rec: &SocketRecord, _epoll: u32, _fd: c_int) {}
pub fn recv(
    _rec: &SocketRecord,
    _fd: c_int,
    _iov: &[libc::iovec],
    _flags: c_int,
) -> Result<usize, Errno> {
    Err(Errno(libc::EIO))
}
pub fn send(
    _rec: &SocketRecord,
    _fd: c_int,
    _iov: &[libc::iovec],
    _flags: c_int,
) -> Result<usize, Errno> {
    Err(Errno(libc::EIO))
}
pub fn shutdown(_rec: &SocketRecord, fd: c_int, how: c_int) -> Result<c_int, Errno> {
    // SAFETY: plain forward.
    let r = unsafe { crate::real::shutdown(fd, how) };
    if r < 0 {
        Err(crate::errno::last())
    } else {
        Ok(r)
    }
}
/// # Safety
/// As getsockopt(2).
pub unsafe fn getsockopt(
    _rec: &SocketRecord,
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut libc::c_void,
    len: *mut libc::socklen_t,
) -> Result<c_int, Errno> {
    // SAFETY: plain forward.
    let r = unsafe { crate::real::getsockopt(fd, level, name, val, len) };
    if r < 0 {
        Err(crate::errno::last())
    } else {
        Ok(r)
    }
}
pub fn before_setsockopt(_rec: &SocketRecord, _level: c_int, _name: c_int) {}
/// # Safety
/// As ioctl(2).
pub unsafe fn ioctl(
    _rec: &SocketRecord,
    _fd: c_int,
    _req: libc::c_ulong,
    _arg: usize,
) -> Option<Result<c_int, Errno>> {
    None
}
pub fn flush(_rec: &SocketRecord) {}
pub fn flush_all() {}
pub fn splice_out_queued(
    _rec: &SocketRecord,
    _fd_in: c_int,
    _fd_out: c_int,
    _len: usize,
) -> Result<usize, Errno> {
    Err(Errno(libc::EIO))
}
pub fn submit_pending() {}
pub fn before_fork() {}
pub fn after_fork_child() {}
