//! fcntl, fcntl64, ioctl, dup, dup2, dup3: descriptor flags and aliases; fclose, whose
//! close of the descriptor happens inside glibc.

use crate::errno;
use crate::init::ensure_init;
use crate::real;
use crate::socket as sock;
use core::ffi::{c_int, c_ulong};
use core::sync::atomic::Ordering;

/// fcntl is variadic in C; on x86-64 and AArch64 Linux the optional argument travels in
/// a register, so declaring it as one machine word is ABI-correct for every command.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    // SAFETY: forwarded unchanged.
    let r = unsafe { real::fcntl(fd, cmd, arg) };
    if r >= 0 && ensure_init() {
        after_fcntl(fd, cmd, arg, r);
    }
    r
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    // SAFETY: forwarded unchanged.
    let r = unsafe { real::fcntl64(fd, cmd, arg) };
    if r >= 0 && ensure_init() {
        after_fcntl(fd, cmd, arg, r);
    }
    r
}

fn after_fcntl(fd: c_int, cmd: c_int, arg: usize, result: c_int) {
    match cmd {
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => errno::preserve(|| sock::alias(fd, result)),
        libc::F_SETFL => {
            if let Some(rec) = sock::lookup(fd) {
                rec.nonblocking
                    .store(arg as c_int & libc::O_NONBLOCK != 0, Ordering::Relaxed);
            }
        }
        _ => {}
    }
}

/// ioctl's third argument is variadic in C; see `fcntl` for why one word is correct.
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn ioctl(fd: c_int, request: c_ulong, arg: usize) -> c_int {
    if ensure_init() {
        if let Some(rec) = sock::lookup(fd) {
            if rec.engine() != sock::Engine::Kernel {
                // SAFETY: `arg` is the caller's pointer for the request.
                if let Some(r) = unsafe { crate::engine::ioctl(rec, fd, request, arg) } {
                    return errno::ret(r);
                }
            }
            // SAFETY: forwarded unchanged.
            let r = unsafe { real::ioctl(fd, request, arg) };
            if r == 0 && request == libc::FIONBIO && arg != 0 {
                // SAFETY: the kernel just read an int from `arg`.
                let on = unsafe { *(arg as *const c_int) } != 0;
                rec.nonblocking.store(on, Ordering::Relaxed);
            }
            return r;
        }
    }
    // SAFETY: forwarded unchanged.
    unsafe { real::ioctl(fd, request, arg) }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    // SAFETY: forwarded unchanged.
    let r = unsafe { real::dup(fd) };
    if r >= 0 && ensure_init() {
        errno::preserve(|| sock::alias(fd, r));
    }
    r
}

/// dup2/dup3 close `fd2` implicitly when it is open: the shim must release its state
/// (cancelling ring operations) first, but only if the call can succeed (a failed call
/// leaves `fd2` as it was, still the application's).
fn release_target(fd: c_int, fd2: c_int) {
    if fd == fd2 || crate::fdtable::get(fd2).is_none() {
        return;
    }
    // SAFETY: F_GETFD has no side effects; checks that `fd` is open.
    if unsafe { real::fcntl(fd, libc::F_GETFD, 0) } >= 0 {
        errno::preserve(|| sock::on_close(fd2));
    }
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn dup2(fd: c_int, fd2: c_int) -> c_int {
    let active = ensure_init();
    if active {
        release_target(fd, fd2);
    }
    // SAFETY: forwarded unchanged.
    let r = unsafe { real::dup2(fd, fd2) };
    if r >= 0 && active && fd != fd2 {
        errno::preserve(|| sock::alias(fd, r));
    }
    r
}

#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn dup3(fd: c_int, fd2: c_int, flags: c_int) -> c_int {
    let active = ensure_init();
    // The kernel's own EINVAL cases, checked before fd2 is released: flags other than
    // O_CLOEXEC, and fd2 == fd.
    if active && flags & !libc::O_CLOEXEC == 0 && fd != fd2 {
        release_target(fd, fd2);
    }
    // SAFETY: forwarded unchanged.
    let r = unsafe { real::dup3(fd, fd2, flags) };
    if r >= 0 && active {
        errno::preserve(|| sock::alias(fd, r));
    }
    r
}

/// fclose() of a stream over a socket (fdopen): glibc flushes the buffer through the
/// interposed write, then closes the descriptor with its internal close, which no
/// export sees. Without this the shim would learn of it only when the number is reused
/// (a ustack session would stay open: the peer would never get its FIN).
#[cfg_attr(not(test), unsafe(no_mangle))]
pub unsafe extern "C" fn fclose(stream: *mut libc::FILE) -> c_int {
    let tracked = if !stream.is_null() && ensure_init() {
        // SAFETY: the caller's open stream; fileno only reads it.
        let fd = unsafe { libc::fileno(stream) };
        (fd >= 0 && crate::fdtable::get(fd).is_some()).then_some(fd)
    } else {
        None
    };
    // SAFETY: forwarded unchanged.
    let r = unsafe { real::fclose(stream) };
    if let Some(fd) = tracked {
        errno::preserve(|| {
            // The stream's descriptor is gone unless another thread already reopened the
            // number (then that open found the old entry stale and dropped it).
            // SAFETY: F_GETFD has no side effects.
            if unsafe { real::fcntl(fd, libc::F_GETFD, 0) } < 0 {
                sock::on_close(fd);
            }
        });
    }
    r
}
