//! Merged readiness (foundation stub).

use crate::epoll::EpollRecord;
use crate::errno::Errno;
use crate::socket::SocketRecord;
use core::ffi::c_int;
use libc::{epoll_event, fd_set, nfds_t, pollfd, sigset_t, timespec};

pub fn merged(_ep: &EpollRecord) -> bool {
    false
}
pub fn expose(_ep: &EpollRecord, _fd: c_int) {}
/// # Safety
/// As epoll_ctl(2).
pub unsafe fn epoll_ctl(
    _ep: &EpollRecord,
    _epfd: c_int,
    _op: c_int,
    _fd: c_int,
    _rec: &SocketRecord,
    _ev: *mut epoll_event,
) -> Result<c_int, Errno> {
    Err(Errno(libc::EIO))
}
/// # Safety
/// As epoll_pwait2(2).
pub unsafe fn epoll_wait(
    _ep: &EpollRecord,
    _epfd: c_int,
    _events: *mut epoll_event,
    _max: c_int,
    _t: Option<timespec>,
    _mask: *const sigset_t,
) -> Result<c_int, Errno> {
    Err(Errno(libc::EIO))
}
/// # Safety
/// As poll(2).
pub unsafe fn poll_needs_shim(_fds: *mut pollfd, _n: nfds_t) -> bool {
    false
}
/// # Safety
/// As ppoll(2).
pub unsafe fn poll(
    _fds: *mut pollfd,
    _n: nfds_t,
    _t: Option<timespec>,
    _mask: *const sigset_t,
) -> Result<c_int, Errno> {
    Err(Errno(libc::EIO))
}
/// # Safety
/// As select(2).
pub unsafe fn select_needs_shim(
    _n: c_int,
    _r: *mut fd_set,
    _w: *mut fd_set,
    _e: *mut fd_set,
) -> bool {
    false
}
/// # Safety
/// As pselect(2).
pub unsafe fn select(
    _n: c_int,
    _r: *mut fd_set,
    _w: *mut fd_set,
    _e: *mut fd_set,
    _t: Option<timespec>,
    _mask: *const sigset_t,
) -> Result<c_int, Errno> {
    Err(Errno(libc::EIO))
}
