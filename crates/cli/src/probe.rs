//! Host probes for `ringshim doctor`: each one tries the real operation the shim will
//! need (creating a ring, an SQPOLL ring, a provided-buffer ring, a multishot receive)
//! rather than guessing from the kernel version, because seccomp filters, sysctls and
//! backports make version numbers lie.
//!
//! Probes run as the doctor's own user, under its own seccomp filter: a server started by
//! a different user or in a different container can see different answers.

use io_uring::types::{BufRingEntry, Fd};
use io_uring::{cqueue, opcode, squeue, IoUring};
use std::io;
use std::time::{Duration, Instant};

/// The outcome of one probe; `Err` carries the kernel's errno.
pub type Probe = Result<(), io::Error>;

pub struct Host {
    /// `uname -srm`.
    pub kernel: String,
    pub setup: Probe,
    /// Contents of /proc/sys/kernel/io_uring_disabled (absent before Linux 6.6).
    pub io_uring_disabled: Option<String>,
    pub io_uring_group: Option<String>,
    /// The probes below need a working plain ring; `None` = not tried.
    pub sqpoll: Option<Probe>,
    pub single_issuer_defer_taskrun: Option<Probe>,
    pub buf_ring: Option<Probe>,
    pub multishot_recv: Option<Probe>,
    /// Opcode name and whether IORING_REGISTER_PROBE says it is supported.
    pub opcodes: Option<Vec<(&'static str, bool)>>,
    /// RLIMIT_MEMLOCK (soft, hard); `None` = unlimited.
    pub memlock: (Option<u64>, Option<u64>),
}

pub fn host() -> Host {
    let setup = IoUring::new(8).map(drop);
    let works = setup.is_ok();
    let (buf_ring, multishot_recv) = if works {
        let (b, m) = buf_ring_and_multishot_recv();
        (Some(b), m)
    } else {
        (None, None)
    };
    Host {
        kernel: kernel(),
        setup,
        io_uring_disabled: sysctl("io_uring_disabled"),
        io_uring_group: sysctl("io_uring_group"),
        sqpoll: works.then(|| {
            IoUring::<squeue::Entry, cqueue::Entry>::builder()
                .setup_sqpoll(50)
                .build(8)
                .map(drop)
        }),
        single_issuer_defer_taskrun: works.then(|| {
            IoUring::<squeue::Entry, cqueue::Entry>::builder()
                .setup_single_issuer()
                .setup_defer_taskrun()
                .build(8)
                .map(drop)
        }),
        buf_ring,
        multishot_recv,
        opcodes: if works { opcodes().ok() } else { None },
        memlock: memlock(),
    }
}

fn kernel() -> String {
    // SAFETY: utsname is plain bytes; all-zero is a valid value for uname to fill.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return format!("unknown ({})", io::Error::last_os_error());
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    format!(
        "{} {} {}",
        field(&u.sysname),
        field(&u.release),
        field(&u.machine)
    )
}

fn sysctl(name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/kernel/{name}"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn memlock() -> (Option<u64>, Option<u64>) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return (None, None);
    }
    let finite = |v: libc::rlim_t| (v != libc::RLIM_INFINITY).then_some(v);
    (finite(lim.rlim_cur), finite(lim.rlim_max))
}

/// Opcodes the shim's uring backend relies on, by the names io_uring uses.
fn opcodes() -> io::Result<Vec<(&'static str, bool)>> {
    let ring = IoUring::new(8)?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    Ok([
        ("recv", opcode::RecvMulti::CODE),
        ("send", opcode::Send::CODE),
        ("sendmsg", opcode::SendMsg::CODE),
        ("send_zc", opcode::SendZc::CODE),
        ("accept", opcode::Accept::CODE),
        ("connect", opcode::Connect::CODE),
        ("poll_add", opcode::PollAdd::CODE),
        ("async_cancel", opcode::AsyncCancel::CODE),
        ("epoll_wait", opcode::EpollWait::CODE),
    ]
    .into_iter()
    .map(|(name, code)| (name, probe.is_supported(code)))
    .collect())
}

const BUFS: u16 = 8;
const BUF_LEN: usize = 64;
/// One page: the ring entries first, the buffers after them.
const REGION: usize = 4096;
const BUFFERS_AT: usize = 512;

/// Registers a provided-buffer ring and runs one multishot receive into it over a Unix
/// socketpair (no network involved): the exact mechanism the uring backend receives with.
fn buf_ring_and_multishot_recv() -> (Probe, Option<Probe>) {
    let ring = match IoUring::new(8) {
        Ok(r) => r,
        Err(e) => return (Err(e), None),
    };
    // SAFETY: an anonymous private mapping; the kernel chooses the address.
    let region = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            REGION,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if region == libc::MAP_FAILED {
        return (Err(io::Error::last_os_error()), None);
    }
    let entries = region.cast::<BufRingEntry>();
    for i in 0..BUFS {
        // SAFETY: entry `i` lies in the first BUFS*16 bytes of our fresh mapping, which
        // nothing else references yet.
        let entry = unsafe { &mut *entries.add(usize::from(i)) };
        entry.set_addr(region as u64 + (BUFFERS_AT + usize::from(i) * BUF_LEN) as u64);
        entry.set_len(BUF_LEN as u32);
        entry.set_bid(i);
    }
    // SAFETY: the tail field overlays entry 0's reserved half-word inside our mapping; the
    // kernel does not read it before registration, so a plain write is enough.
    unsafe { BufRingEntry::tail(entries).cast_mut().write(BUFS) };

    // SAFETY: the mapping stays valid until after the ring is dropped below, or forever if
    // the receive could not be proven finished (the region is then leaked on purpose).
    let registered = unsafe {
        ring.submitter()
            .register_buf_ring_with_flags(region as u64, BUFS, 0, 0)
    };
    if let Err(e) = registered {
        drop(ring);
        // SAFETY: the kernel rejected the registration, so nothing refers to the region.
        unsafe { libc::munmap(region, REGION) };
        return (Err(e), None);
    }
    let (recv, finished) = multishot_recv(ring);
    if finished {
        // SAFETY: the ring (and with it the buffer ring registration) is gone and no
        // receive is in flight, so the kernel holds no reference to the region.
        unsafe { libc::munmap(region, REGION) };
    }
    // Otherwise the region is leaked on purpose: a receive the kernel might still complete
    // must never write into memory we gave back.
    (Ok(()), Some(recv))
}

/// Returns the probe result and whether the ring is gone with no receive in flight.
fn multishot_recv(mut ring: IoUring) -> (Probe, bool) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return (Err(io::Error::last_os_error()), true);
    }
    let close_both = || {
        for fd in fds {
            // SAFETY: both descriptors were created above and are closed exactly once.
            unsafe { libc::close(fd) };
        }
    };
    // Data is queued before the receive is submitted so that it completes at once.
    // SAFETY: writes one byte from a valid buffer to our own socket.
    if unsafe { libc::write(fds[1], b"x".as_ptr().cast(), 1) } != 1 {
        let e = io::Error::last_os_error();
        close_both();
        return (Err(e), true);
    }
    let sqe = opcode::RecvMulti::new(Fd(fds[0]), 0).build().user_data(1);
    // SAFETY: the entry refers only to our socket and the registered buffer group, both
    // of which outlive the request (see the callers).
    if let Err(e) = unsafe { ring.submission().push(&sqe) }
        .map_err(|_| io::Error::other("submission queue full"))
    {
        close_both();
        return (Err(e), true);
    }
    if let Err(e) = ring.submit() {
        close_both();
        return (Err(e), true);
    }
    let first = wait_cqe(&mut ring);
    // Closing the peer ends a multishot receive that is still armed (EOF completes it).
    // SAFETY: our descriptor, closed once; fds[0] is closed after the ring is gone.
    unsafe { libc::close(fds[1]) };
    let result = match first {
        None => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no completion within 1 s",
        )),
        Some((res, _)) if res < 0 => Err(io::Error::from_raw_os_error(-res)),
        Some((1, flags)) if cqueue::buffer_select(flags).is_some() && cqueue::more(flags) => Ok(()),
        Some((res, flags)) => Err(io::Error::other(format!(
            "unexpected completion (res {res}, flags {flags:#x})"
        ))),
    };
    // The request is finished when its last completion (one without MORE) has arrived.
    let mut done = matches!(first, Some((_, flags)) if !cqueue::more(flags));
    while !done {
        match wait_cqe(&mut ring) {
            Some((_, flags)) => done = !cqueue::more(flags),
            None => break,
        }
    }
    drop(ring);
    // SAFETY: our descriptor, closed once.
    unsafe { libc::close(fds[0]) };
    (result, done)
}

/// Polls the completion queue without blocking in the kernel, so a kernel that never
/// completes the request cannot hang `doctor`.
fn wait_cqe(ring: &mut IoUring) -> Option<(i32, u32)> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        if let Some(cqe) = ring.completion().next() {
            return Some((cqe.result(), cqe.flags()));
        }
        if Instant::now() > deadline {
            return None;
        }
        // Nudges task work (completions) along on kernels that defer it to the next enter.
        let _ = ring.submit();
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A one-line explanation of why io_uring_setup failed, for operators.
pub fn explain_setup_error(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => {
            "EPERM: denied by a seccomp filter (container runtimes block io_uring by default) or by kernel.io_uring_disabled".to_string()
        }
        Some(libc::ENOSYS) => "ENOSYS: kernel built without io_uring, or a seccomp filter answering ENOSYS".to_string(),
        Some(libc::ENOMEM) => "ENOMEM: not enough lockable memory (raise RLIMIT_MEMLOCK; kernels before 5.12 charge rings to it)".to_string(),
        Some(libc::EINVAL) => "EINVAL: this kernel does not support the requested ring flags".to_string(),
        Some(libc::EMFILE | libc::ENFILE) => "EMFILE/ENFILE: out of file descriptors".to_string(),
        _ => e.to_string(),
    }
}

/// What a value of kernel.io_uring_disabled means.
pub fn explain_disabled(value: &str, group: Option<&str>) -> String {
    match value {
        "0" => "io_uring available to all processes".to_string(),
        "1" => format!(
            "io_uring only for CAP_SYS_ADMIN and members of io_uring_group ({})",
            group.unwrap_or("unknown")
        ),
        "2" => "io_uring disabled for everyone".to_string(),
        other => format!("unknown value {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explanations_name_the_likely_cause() {
        assert!(
            explain_setup_error(&io::Error::from_raw_os_error(libc::EPERM)).contains("seccomp")
        );
        assert!(
            explain_setup_error(&io::Error::from_raw_os_error(libc::EPERM))
                .contains("io_uring_disabled")
        );
        assert!(
            explain_setup_error(&io::Error::from_raw_os_error(libc::ENOSYS))
                .contains("without io_uring")
        );
        assert!(explain_disabled("1", Some("1001")).contains("1001"));
        assert!(explain_disabled("2", None).contains("disabled"));
    }

    #[test]
    fn probing_never_panics_or_hangs() {
        let host = host();
        assert!(!host.kernel.is_empty());
        // Where rings work, the derived probes must have been tried.
        if host.setup.is_ok() {
            assert!(host.sqpoll.is_some() && host.buf_ring.is_some() && host.opcodes.is_some());
        } else {
            assert!(host.sqpoll.is_none() && host.multishot_recv.is_none());
        }
    }
}
