//! Levelled logging that is safe on hook paths.
//!
//! Lines are formatted with `core::fmt` into a stack buffer (no allocation) and written
//! with a raw `write(2)` system call, so logging never re-enters the shim's own `write`
//! export and never touches stdio's locks or buffers (the host may be inside printf).

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicI32, AtomicU8, Ordering};
use ringshim_common::config::LogLevel;

static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Warn as u8);
/// Where lines go; stderr until a log file is opened.
static SINK_FD: AtomicI32 = AtomicI32::new(2);

pub fn set_level(level: LogLevel) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: LogLevel) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed) && level != LogLevel::Off
}

/// Opens the log file (once, at load) on a high descriptor number, so it stays out of the
/// way of programs that expect small fd numbers, and survives privilege drops of the
/// host (the fd was opened while it could).
pub fn open_file(path: &str) {
    let mut buf = [0u8; 512];
    let mut w = StackBuf::new(&mut buf);
    let pid = std::process::id();
    let mut rest = path;
    while let Some(i) = rest.find("%p") {
        let _ = write!(w, "{}{}", &rest[..i], pid);
        rest = &rest[i + 2..];
    }
    let _ = w.write_str(rest);
    let len = w.len;
    if len + 1 >= buf.len() {
        return;
    }
    buf[len] = 0;
    // SAFETY: `buf` is NUL-terminated; flags and mode are valid for open(2).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            buf.as_ptr(),
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
            0o644,
        )
    } as i32;
    if fd < 0 {
        crate::log_warn!(
            "cannot open RINGSHIM_LOG_FILE {}: errno {}",
            path,
            crate::errno::get()
        );
        return;
    }
    SINK_FD.store(crate::internal_fd::move_high(fd), Ordering::Relaxed);
}

/// The descriptor the log writes to (the shim must never treat it as an app fd).
pub fn sink_fd() -> i32 {
    SINK_FD.load(Ordering::Relaxed)
}

#[doc(hidden)]
pub fn emit(level: LogLevel, args: fmt::Arguments<'_>) {
    let mut buf = [0u8; 768];
    let mut w = StackBuf::new(&mut buf);
    // SAFETY: getpid/gettid have no preconditions.
    let (pid, tid) = unsafe { (libc::getpid(), libc::syscall(libc::SYS_gettid)) };
    let _ = write!(w, "ringshim[{pid}:{tid}] {}: ", level.name());
    let _ = w.write_fmt(args);
    let len = w.len.min(buf.len() - 1);
    buf[len] = b'\n';
    crate::errno::preserve(|| {
        // SAFETY: writing bytes we own to a descriptor; failure is ignored on purpose
        // (a log line must never change the host's behaviour).
        unsafe {
            libc::syscall(
                libc::SYS_write,
                SINK_FD.load(Ordering::Relaxed),
                buf.as_ptr(),
                len + 1,
            )
        };
    });
}

/// A `fmt::Write` over a fixed byte buffer that silently truncates.
pub struct StackBuf<'a> {
    buf: &'a mut [u8],
    pub len: usize,
}

impl<'a> StackBuf<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        StackBuf { buf, len: 0 }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Write for StackBuf<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

#[macro_export]
macro_rules! log_at {
    ($lvl:expr, $($arg:tt)*) => {
        if $crate::log::enabled($lvl) {
            $crate::log::emit($lvl, format_args!($($arg)*));
        }
    };
}
#[macro_export]
macro_rules! log_error { ($($arg:tt)*) => { $crate::log_at!(ringshim_common::config::LogLevel::Error, $($arg)*) }; }
#[macro_export]
macro_rules! log_warn { ($($arg:tt)*) => { $crate::log_at!(ringshim_common::config::LogLevel::Warn, $($arg)*) }; }
#[macro_export]
macro_rules! log_info { ($($arg:tt)*) => { $crate::log_at!(ringshim_common::config::LogLevel::Info, $($arg)*) }; }
#[macro_export]
macro_rules! log_debug { ($($arg:tt)*) => { $crate::log_at!(ringshim_common::config::LogLevel::Debug, $($arg)*) }; }

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_buf_truncates_instead_of_failing() {
        let mut b = [0u8; 4];
        let mut w = StackBuf::new(&mut b);
        write!(w, "{}", 123456).unwrap();
        assert_eq!(w.as_bytes(), b"1234");
    }
}
