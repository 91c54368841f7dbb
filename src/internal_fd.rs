//! Descriptors the shim opens for itself (rings, eventfds, the log) live at high
//! numbers.
//!
//! The kernel hands out the lowest free number, so a ring created lazily right after
//! the application closed fd 5 would become fd 5: a later poll() of the closed fd would
//! see the ring instead of POLLNVAL, a read would fail with the wrong errno. Moving
//! internal descriptors to the top of the RLIMIT_NOFILE range keeps the numbers the
//! application knows about exactly as the kernel would leave them.

use core::sync::atomic::{AtomicI32, Ordering};

static BASE: AtomicI32 = AtomicI32::new(0);

fn base() -> i32 {
    let b = BASE.load(Ordering::Relaxed);
    if b > 0 {
        return b;
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur.min(1 << 20) as i32
    } else {
        1024
    };
    // The top 64 numbers under the soft limit: the application reaches them only when it
    // is about to run out anyway.
    let b = (soft - 64).max(3);
    BASE.store(b, Ordering::Relaxed);
    b
}

/// Moves `fd` to a high number (close-on-exec) and returns the new number; keeps the
/// original when no high number is free.
pub fn move_high(fd: i32) -> i32 {
    let fd = move_high_untracked(fd);
    mark(fd);
    fd
}

/// Records `fd` as the shim's own: the application's close() of it is ignored (it did
/// not open it; a close-everything loop must not take the shim's rings away).
pub fn mark(fd: i32) {
    if fd >= 0 {
        crate::fdtable::claim(fd, crate::fdtable::Entry::Internal);
    }
}

fn move_high_untracked(fd: i32) -> i32 {
    if fd < 0 || fd >= base() {
        return fd;
    }
    // SAFETY: duplicating a descriptor the shim owns.
    let high = unsafe { crate::real::fcntl(fd, libc::F_DUPFD_CLOEXEC, base() as usize) };
    if high < 0 {
        return fd;
    }
    // SAFETY: closing the low duplicate the shim owns (raw syscall: not an app close).
    unsafe { libc::syscall(libc::SYS_close, fd) };
    high
}

/// A non-blocking, close-on-exec eventfd at a high number.
pub fn eventfd() -> i32 {
    // SAFETY: plain eventfd creation.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    move_high(fd)
}

/// Duplicates `fd` to a high number without closing the original (the caller closes it
/// through its own handle); returns `fd` itself when that is impossible.
pub fn move_high_dup(fd: i32) -> i32 {
    if fd < 0 || fd >= base() {
        return fd;
    }
    // SAFETY: duplicating a descriptor the shim owns.
    let high = unsafe { crate::real::fcntl(fd, libc::F_DUPFD_CLOEXEC, base() as usize) };
    let out = if high < 0 { fd } else { high };
    mark(out);
    out
}
