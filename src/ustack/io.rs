//! The socket calls of ustack sockets: connect, listen and accept, the data path through
//! the session fifos, shutdown and close, addresses and options.
//!
//! Every call answers as the kernel would for the same sequence (return value and errno),
//! from the session state the messages keep up to date ([`super::on_message`]). Blocking
//! calls sleep on the workers' eventfds ([`block_until`]), honouring SO_RCVTIMEO and
//! SO_SNDTIMEO.

use super::session::{Pending, Phase};
use super::{fifos, post, pump};
use crate::errno::Errno;
use crate::real;
use crate::socket::{Engine, SocketRecord};
use crate::stats;
use crate::uring::SockIo;
use core::ffi::{c_int, c_void};
use core::sync::atomic::Ordering;
use libc::{sockaddr, socklen_t};
use ringshim_common::stats::Counter;
use ringshim_stackd::proto::{self, Endpoint, Msg, MsgKind, NO_SESSION};

/// Bound on waiting for stackd's answer to LISTEN.
const BIND_WAIT_MS: u64 = 2000;

fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// The IPv4 endpoint of an AF_INET sockaddr, or of a v4-mapped AF_INET6 one (stackd
/// speaks IPv4 only).
///
/// # Safety
/// `addr` null or readable for `len` bytes.
pub unsafe fn endpoint_of(addr: *const sockaddr, len: socklen_t) -> Option<Endpoint> {
    if addr.is_null() || (len as usize) < core::mem::size_of::<libc::sa_family_t>() {
        return None;
    }
    // SAFETY: the family field is readable (checked above).
    let family = unsafe { core::ptr::read_unaligned(addr.cast::<libc::sa_family_t>()) };
    match i32::from(family) {
        libc::AF_INET if len as usize >= core::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: length checked.
            let sin = unsafe { core::ptr::read_unaligned(addr.cast::<libc::sockaddr_in>()) };
            Some(Endpoint::new(
                sin.sin_addr.s_addr.to_ne_bytes(),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 if len as usize >= core::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: length checked.
            let sin6 = unsafe { core::ptr::read_unaligned(addr.cast::<libc::sockaddr_in6>()) };
            let b = sin6.sin6_addr.s6_addr;
            (b[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff])
                .then(|| Endpoint::new([b[12], b[13], b[14], b[15]], u16::from_be(sin6.sin6_port)))
        }
        _ => None,
    }
}

/// Writes `ep` as the socket's family would show it; returns the full length.
fn write_sockaddr(family: i32, ep: &Endpoint, out: &mut libc::sockaddr_storage) -> socklen_t {
    if family == libc::AF_INET6 {
        // SAFETY: all-zero sockaddr_in6 is valid.
        let mut sin6: libc::sockaddr_in6 = unsafe { core::mem::zeroed() };
        sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sin6.sin6_port = ep.port.to_be();
        let mut b = [0u8; 16];
        b[10] = 0xff;
        b[11] = 0xff;
        b[12..].copy_from_slice(&ep.addr);
        sin6.sin6_addr.s6_addr = b;
        // SAFETY: sockaddr_storage is larger than sockaddr_in6 and suitably aligned.
        unsafe { core::ptr::write((out as *mut libc::sockaddr_storage).cast(), sin6) };
        core::mem::size_of::<libc::sockaddr_in6>() as socklen_t
    } else {
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: ep.port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(ep.addr),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: as above.
        unsafe { core::ptr::write((out as *mut libc::sockaddr_storage).cast(), sin) };
        core::mem::size_of::<libc::sockaddr_in>() as socklen_t
    }
}

/// Copies an address out as the kernel does: truncated to the caller's length, with the
/// full length reported.
///
/// # Safety
/// `addr`/`len` null or as for getsockname(2).
unsafe fn copy_out(
    family: i32,
    ep: &Endpoint,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> Result<(), Errno> {
    if addr.is_null() || len.is_null() {
        return Ok(());
    }
    // SAFETY: all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
    let full = write_sockaddr(family, ep, &mut ss);
    // SAFETY: the caller promised `*len` writable bytes at `addr`.
    unsafe {
        let n = (*len).min(full) as usize;
        core::ptr::copy_nonoverlapping(
            (&ss as *const libc::sockaddr_storage).cast::<u8>(),
            addr.cast::<u8>(),
            n,
        );
        *len = full;
    }
    Ok(())
}

/// Whether a socket connecting to or accepted from `ep`'s address goes to stackd.
pub fn wanted() -> bool {
    crate::init::config().backend == ringshim_common::config::Backend::Ustack && super::available()
}

/// Moves `rec` onto the ustack engine (its epoll registrations move into the shim).
fn adopt(rec: &'static SocketRecord, fd: c_int) {
    rec.engine.store(Engine::Ustack as u8, Ordering::Release);
    stats::bump(Counter::SocketsOnUstack);
    crate::uring::wait::adopt_kernel_registrations(rec, fd);
}

/// Sleeps until `ready` holds for the socket (or `extra_fd` is readable), the deadline
/// passes (EAGAIN, as SO_RCVTIMEO/SO_SNDTIMEO report it) or a signal arrives (EINTR).
fn block_until(
    rec: &SocketRecord,
    deadline_ms: Option<u64>,
    extra_fd: c_int,
    ready: impl Fn(&SockIo) -> bool,
) -> Result<(), Errno> {
    loop {
        pump();
        if ready(&rec.lock_io()) {
            return Ok(());
        }
        let mut wake = [-1; 65];
        let n = super::wake_fds(&mut wake[..64]);
        let mut fds = [libc::pollfd {
            fd: -1,
            events: libc::POLLIN,
            revents: 0,
        }; 68];
        for (p, &fd) in fds.iter_mut().zip(wake[..n].iter()) {
            p.fd = fd;
        }
        let mut count = n;
        let control = super::control_fd();
        fds[count].fd = control;
        count += 1;
        if extra_fd >= 0 {
            fds[count].fd = extra_fd;
            count += 1;
        }
        let private = count;
        let ms = match deadline_ms {
            None => -1,
            Some(d) => {
                let now = now_ms();
                if now >= d {
                    return Err(Errno(libc::EAGAIN));
                }
                (d - now).min(i32::MAX as u64) as c_int
            }
        };
        // Counted as blocked before the last look: a thread that handles this socket's
        // message after it either is seen here or sees the count and re-signals.
        let blocked = super::enter_blocked();
        fds[private].fd = blocked.fd();
        count += 1;
        if !super::prepare_sleep() || ready(&rec.lock_io()) {
            continue;
        }
        // SAFETY: our own pollfd array of `count` entries.
        let r = unsafe { real::poll(fds.as_mut_ptr(), count as libc::nfds_t, ms) };
        let err = crate::errno::get();
        drop(blocked);
        if r < 0 && err == libc::EINTR {
            return Err(Errno(libc::EINTR));
        }
        super::woken_by(&fds[..n]);
        if control >= 0 && fds[n].revents != 0 {
            super::check_link();
        }
        if extra_fd >= 0 && fds[n + 1].revents != 0 {
            return Ok(());
        }
    }
}

/// After a wait of a blocking recv/send/accept ended in EINTR: whether the kernel would
/// have restarted the call (signal(7): SA_RESTART, and no SO_RCVTIMEO/SO_SNDTIMEO, the
/// caller's part). The interrupting signal is not known once its handler ran, so the call
/// restarts only when every caught signal has SA_RESTART — exact for programs that use
/// one convention, EINTR (never a hang) for the mixed ones. One sigaction per signal,
/// paid only on an interruption.
fn interrupted_call_restarts() -> bool {
    (1..=libc::SIGRTMAX()).all(|sig| {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            return true;
        }
        // SAFETY: all-zero sigaction is a valid out buffer; querying changes nothing.
        let mut old: libc::sigaction = unsafe { core::mem::zeroed() };
        // SAFETY: a null new action only reads the current one into our buffer.
        if unsafe { libc::sigaction(sig, core::ptr::null(), &mut old) } != 0 {
            return true;
        }
        let caught = old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN;
        !caught || old.sa_flags & libc::SA_RESTART != 0
    })
}

fn timeout_deadline(fd: c_int, opt: c_int) -> Option<u64> {
    crate::uring::socket_timeout(fd, opt).map(|ms| now_ms() + ms)
}

/// connect() of a socket routed to stackd.
///
/// # Safety
/// `addr`/`len` as for connect(2).
pub unsafe fn connect(
    rec: &'static SocketRecord,
    fd: c_int,
    addr: *const sockaddr,
    len: socklen_t,
) -> Result<c_int, Errno> {
    // SAFETY: caller contract (at least the family is readable when len covers it).
    if (len as usize) >= core::mem::size_of::<libc::sa_family_t>()
        && i32::from(unsafe { core::ptr::read_unaligned(addr.cast::<libc::sa_family_t>()) })
            == libc::AF_UNSPEC
    {
        disconnect(rec);
        return Ok(0);
    }
    // SAFETY: caller contract.
    let Some(remote) = (unsafe { endpoint_of(addr, len) }) else {
        return Err(Errno(libc::EAFNOSUPPORT));
    };
    let nonblocking = rec.nonblocking.load(Ordering::Relaxed);
    let cookie = super::cookie_of(rec);
    {
        let mut io = rec.lock_io();
        // A non-blocking connect's outcome is also the answer of the next connect()
        // (Linux's SS_CONNECTING): 0 once it succeeded, its error once it failed (or
        // ECONNABORTED when SO_ERROR took the error first).
        let unreported = core::mem::take(&mut io.us.connect_unreported);
        match io.us.phase {
            Phase::Connecting => {
                io.us.connect_unreported = unreported;
                return Err(Errno(libc::EALREADY));
            }
            Phase::Connected if unreported => return Ok(0),
            Phase::Connected | Phase::Orphaned => return Err(Errno(libc::EISCONN)),
            Phase::Listening => return Err(Errno(libc::EISCONN)),
            Phase::Failed if unreported => {
                let e = io.us.take_error();
                io.us.clear();
                return Err(Errno(if e != 0 { e } else { libc::ECONNABORTED }));
            }
            Phase::None | Phase::Failed => {}
        }
        io.us.clear();
        io.us.phase = Phase::Connecting;
        io.us.cookie = cookie;
        io.us.remote = remote;
        io.us.connect_unreported = nonblocking;
    }
    // A port the application bound explicitly is kept (an address, too, when it is
    // stackd's own; stackd refuses any other with EADDRNOTAVAIL).
    let local = local_of_kernel_socket(fd).unwrap_or_default();
    let mut m = Msg::new(MsgKind::Connect);
    m.cookie = cookie;
    m.remote = remote;
    m.local = local;
    if rec.engine() != Engine::Ustack {
        adopt(rec, fd);
    }
    stats::bump(Counter::Connects);
    if let Err(e) = post(&m) {
        let mut io = rec.lock_io();
        io.us.phase = Phase::Failed;
        return Err(e);
    }
    if nonblocking {
        return Err(Errno(libc::EINPROGRESS));
    }
    block_until(rec, None, -1, |io| io.us.phase != Phase::Connecting)?;
    let mut io = rec.lock_io();
    match io.us.phase {
        Phase::Connected => Ok(0),
        _ => {
            let e = io.us.take_error();
            Err(Errno(if e != 0 { e } else { libc::ECONNREFUSED }))
        }
    }
}

/// connect(AF_UNSPEC): the kernel's tcp_disconnect — a connection is reset and the
/// socket is unconnected again (it may connect anew).
fn disconnect(rec: &'static SocketRecord) {
    let (phase, session, cookie) = {
        let mut io = rec.lock_io();
        let v = (io.us.phase, io.us.session, io.us.cookie);
        if matches!(v.0, Phase::Connected | Phase::Connecting | Phase::Failed) {
            io.us.clear();
        }
        v
    };
    let mut m = match phase {
        Phase::Connected => {
            super::unbind_session(session);
            Msg::for_session(MsgKind::Close, session)
        }
        Phase::Connecting => {
            let mut m = Msg::for_session(MsgKind::Close, NO_SESSION);
            m.cookie = cookie;
            m
        }
        _ => return,
    };
    m.flags = proto::msg_flags::ABORT;
    let _ = post(&m);
}

/// Whether connect() of `rec` (not yet a stackd socket) to `addr` may go to stackd: only
/// what the kernel would accept for an unconnected socket of its family. Anything else
/// (a bad length, the other family, a kernel socket that is already connected) goes to
/// the real connect(), which gives the kernel's own errno.
///
/// # Safety
/// `addr`/`len` as for connect(2).
pub unsafe fn may_connect(
    rec: &SocketRecord,
    fd: c_int,
    addr: *const sockaddr,
    len: socklen_t,
) -> bool {
    if len as usize > core::mem::size_of::<libc::sockaddr_storage>() {
        return false;
    }
    // SAFETY: caller contract; endpoint_of checked the length covers the family.
    let family = i32::from(unsafe { core::ptr::read_unaligned(addr.cast::<libc::sa_family_t>()) });
    if family != rec.family.load(Ordering::Relaxed) {
        return false;
    }
    // SAFETY: all-zero sockaddr_storage is valid; our own buffer and length.
    let mut ss: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
    let mut sl = core::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
    // SAFETY: our own buffer; the fd is the caller's socket.
    let connected =
        unsafe { real::getpeername(fd, (&mut ss as *mut libc::sockaddr_storage).cast(), &mut sl) }
            == 0;
    !connected
}

fn local_of_kernel_socket(fd: c_int) -> Option<Endpoint> {
    // SAFETY: all-zero sockaddr_storage is valid; our own buffer and length.
    let mut ss: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
    let mut l = core::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
    // SAFETY: as above.
    let r =
        unsafe { real::getsockname(fd, (&mut ss as *mut libc::sockaddr_storage).cast(), &mut l) };
    if r != 0 {
        return None;
    }
    // SAFETY: the kernel filled `l` bytes.
    let ep = unsafe { endpoint_of((&ss as *const libc::sockaddr_storage).cast(), l) };
    if ep.is_none() && i32::from(ss.ss_family) == libc::AF_INET6 {
        // `::` (a dual-stack wildcard): any IPv4 address.
        // SAFETY: the kernel wrote a sockaddr_in6.
        let sin6 = unsafe {
            core::ptr::read((&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>())
        };
        if sin6.sin6_addr.s6_addr == [0; 16] {
            return Some(Endpoint::new([0; 4], u16::from_be(sin6.sin6_port)));
        }
    }
    ep
}

/// listen() succeeded on the kernel socket: a wildcard listener becomes a listener of
/// both stacks. stackd is told at once, as a *passive* member of the port: peers that
/// connect before the first accept wait in stackd's backlog, as in the kernel's. The
/// member starts taking connections when this process first waits for or accepts one
/// ([`join`]): nginx's master listens and forks workers that accept, and connections
/// given to a member that never accepts would be stranded.
pub fn on_listen(rec: &'static SocketRecord, fd: c_int, backlog: c_int) {
    if crate::init::config().backend != ringshim_common::config::Backend::Ustack {
        return;
    }
    if rec.engine() == Engine::Ustack {
        // listen() again (a new backlog): stackd's side stays as it is.
        return;
    }
    let Some(local) = local_of_kernel_socket(fd) else {
        return;
    };
    // A bind to a specific address succeeded in the kernel, so that address is the
    // kernel's (stackd's own cannot be bound there): only wildcards have a stackd side.
    if local.addr != [0; 4] {
        return;
    }
    {
        let mut io = rec.lock_io();
        io.us.clear();
        io.us.phase = Phase::Listening;
        io.us.local = local;
        io.us.backlog = backlog.clamp(1, 65535) as u32;
    }
    rec.engine.store(Engine::Ustack as u8, Ordering::Release);
    listen_in_stackd(rec, fd, true);
}

/// Makes sure this process accepts in stackd for `rec` (a listener of both stacks);
/// false when stackd cannot (unreachable, port taken): the listener is then the
/// kernel's alone, for good.
pub fn join(rec: &'static SocketRecord, fd: c_int) -> bool {
    {
        let io = rec.lock_io();
        if io.us.phase != Phase::Listening {
            return false;
        }
        if io.us.joined {
            return true;
        }
    }
    listen_in_stackd(rec, fd, false)
}

/// LISTEN for `rec` in stackd, passive or accepting, and waits for BOUND. On failure the
/// listener becomes the kernel's alone.
fn listen_in_stackd(rec: &'static SocketRecord, fd: c_int, passive: bool) -> bool {
    let (local, backlog, passive_id) = {
        let io = rec.lock_io();
        (
            io.us.local,
            io.us.backlog,
            io.us.passive.then_some(io.us.listener),
        )
    };
    let cookie = super::cookie_of(rec);
    let result = if super::available() {
        {
            let mut io = rec.lock_io();
            io.us.cookie = cookie;
            io.us.bound = None;
            io.us.accept_queue.reserve(256);
        }
        let mut m = Msg::new(MsgKind::Listen);
        m.cookie = cookie;
        m.local = local;
        m.arg = backlog;
        if passive {
            m.flags = proto::msg_flags::PASSIVE;
        }
        let answered = post(&m).and_then(|()| {
            block_until(rec, Some(now_ms() + BIND_WAIT_MS), -1, |io| {
                io.us.bound.is_some()
            })
        });
        match (answered, rec.lock_io().us.bound) {
            (Ok(()), Some(r)) => r,
            _ => libc::ETIMEDOUT,
        }
    } else {
        libc::ENETUNREACH
    };
    if result == 0 {
        {
            let mut io = rec.lock_io();
            io.us.passive = passive;
            io.us.joined = !passive;
        }
        if passive_id.is_none() {
            stats::bump(Counter::SocketsOnUstack);
        }
        crate::log_debug!(
            "fd {fd}: listening on port {} in stackd too{}",
            local.port,
            if passive { " (passive)" } else { "" }
        );
        return true;
    }
    if super::available() {
        crate::log_warn!(
            "ustack: stackd could not listen on port {} (errno {result}); fd {fd} listens on the kernel stack only",
            local.port
        );
    }
    rec.lock_io().us.clear();
    // A passive member stackd still holds would keep the port from other processes.
    if let Some(id) = passive_id {
        let mut m = Msg::new(MsgKind::Unlisten);
        m.arg = id;
        let _ = post(&m);
    }
    rec.engine.store(Engine::Kernel as u8, Ordering::Release);
    false
}

/// listen() of a socket stackd carries a connection for: the kernel's EINVAL (the
/// unconnected placeholder would accept the listen).
pub fn refuses_listen(rec: &SocketRecord) -> bool {
    rec.engine() == Engine::Ustack
        && matches!(
            rec.lock_io().us.phase,
            Phase::Connected | Phase::Connecting | Phase::Orphaned
        )
}

/// Whether `rec` is a listener with a stackd side (its epoll registrations are kept in the
/// kernel set and in the shim).
pub fn is_listener(rec: &SocketRecord) -> bool {
    rec.engine() == Engine::Ustack && rec.lock_io().us.phase == Phase::Listening
}

/// accept4() on a listener with a stackd side: stackd's completed connections first, then
/// the kernel's.
///
/// # Safety
/// `addr`/`len` as for accept4(2).
pub unsafe fn accept(
    listener: &'static SocketRecord,
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    if flags & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) != 0 {
        crate::errno::set(libc::EINVAL);
        return -1;
    }
    let nonblocking = listener.nonblocking.load(Ordering::Relaxed);
    loop {
        pump();
        let pending = listener.lock_io().us.accept_queue.pop_front();
        if let Some(p) = pending {
            // SAFETY: caller contract.
            return match unsafe { accept_session(listener, p, addr, len, flags) } {
                Ok(nfd) => nfd,
                Err(Errno(e)) => {
                    crate::errno::set(e);
                    -1
                }
            };
        }
        if nonblocking {
            // SAFETY: caller contract; the kernel listener is non-blocking too.
            return unsafe { crate::ops::accept_kernel(fd, addr, len, flags) };
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd of ours.
        if unsafe { real::poll(&mut p, 1, 0) } > 0 {
            // SAFETY: caller contract; a connection waits, so this does not block long.
            return unsafe { crate::ops::accept_kernel(fd, addr, len, flags) };
        }
        let deadline = timeout_deadline(fd, libc::SO_RCVTIMEO);
        match block_until(listener, deadline, fd, |io| {
            !io.us.accept_queue.is_empty() || io.us.phase != Phase::Listening
        }) {
            Ok(()) => {}
            // Restarted as the kernel restarts accept() under SA_RESTART.
            Err(Errno(libc::EINTR)) if deadline.is_none() && interrupted_call_restarts() => {}
            Err(Errno(e)) => {
                crate::errno::set(e);
                return -1;
            }
        }
        if listener.lock_io().us.phase != Phase::Listening {
            // SAFETY: caller contract.
            return unsafe { crate::ops::accept_kernel(fd, addr, len, flags) };
        }
    }
}

/// A connection stackd completed becomes a new fd: an unconnected kernel TCP socket as
/// the placeholder (BRIEF invariant 1), with the session behind it.
///
/// # Safety
/// `addr`/`len` as for accept4(2).
unsafe fn accept_session(
    listener: &'static SocketRecord,
    p: Pending,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> Result<c_int, Errno> {
    let family = listener.family.load(Ordering::Relaxed);
    // SAFETY: plain socket creation.
    let nfd = unsafe { real::socket(family, libc::SOCK_STREAM | flags, 0) };
    if nfd < 0 {
        let e = crate::errno::get();
        super::abort_session(p.session);
        return Err(Errno(e));
    }
    stats::ensure_published();
    stats::bump(Counter::Accepts);
    let Some(rec) = crate::socket::track(nfd, family, flags & libc::SOCK_NONBLOCK != 0) else {
        // Untrackable (fd beyond the table): the session cannot be served.
        super::abort_session(p.session);
        // SAFETY: the fd we just created.
        unsafe { real::close(nfd) };
        return Err(Errno(libc::EMFILE));
    };
    rec.route
        .store(crate::route::Route::Accelerated as u8, Ordering::Relaxed);
    {
        let mut io = rec.lock_io();
        io.us.clear();
        io.us.phase = Phase::Connected;
        io.us.session = p.session;
        io.us.cookie = super::cookie_of(rec);
        io.us.local = p.local;
        io.us.remote = p.remote;
    }
    super::bind_session(p.session, rec);
    super::take_early_end(p.session, rec);
    rec.engine.store(Engine::Ustack as u8, Ordering::Release);
    stats::bump(Counter::SocketsOnUstack);
    stats::bump(Counter::RoutedAccelerated);
    // SAFETY: caller contract.
    unsafe { copy_out(family, &p.remote, addr, len)? };
    crate::log_debug!(
        "fd {nfd} accepted from {}.{}.{}.{}:{} through stackd",
        p.remote.addr[0],
        p.remote.addr[1],
        p.remote.addr[2],
        p.remote.addr[3],
        p.remote.port
    );
    Ok(nfd)
}

fn iov_total(iov: &[libc::iovec]) -> usize {
    iov.iter().fold(0usize, |a, v| a.saturating_add(v.iov_len))
}

/// read/recv/readv/recvmsg of a ustack socket.
pub fn recv(
    rec: &'static SocketRecord,
    fd: c_int,
    iov: &[libc::iovec],
    flags: c_int,
) -> Result<usize, Errno> {
    stats::bump(Counter::CallsIntercepted);
    if flags & libc::MSG_OOB != 0 {
        // No urgent data ever arrives through stackd.
        return Err(Errno(libc::EINVAL));
    }
    let want = iov_total(iov);
    let peek = flags & libc::MSG_PEEK != 0;
    let truncate = flags & libc::MSG_TRUNC != 0;
    let nonblocking = flags & libc::MSG_DONTWAIT != 0 || rec.nonblocking.load(Ordering::Relaxed);
    let waitall = flags & libc::MSG_WAITALL != 0 && !peek && !nonblocking;
    let deadline = if nonblocking {
        None
    } else {
        timeout_deadline(fd, libc::SO_RCVTIMEO)
    };
    let mut done = 0usize;
    loop {
        pump();
        let mut drained_request = false;
        let mut session = NO_SESSION;
        {
            let mut io = rec.lock_io();
            match io.us.phase {
                Phase::Connected => {}
                Phase::Connecting => {
                    if nonblocking {
                        return Err(Errno(libc::EAGAIN));
                    }
                }
                Phase::Failed => {
                    let e = io.us.take_error();
                    return Err(Errno(if e != 0 { e } else { libc::ENOTCONN }));
                }
                Phase::Orphaned => return Err(Errno(libc::ECONNRESET)),
                Phase::Listening | Phase::None => return Err(Errno(libc::ENOTCONN)),
            }
            if io.us.phase == Phase::Connected {
                session = io.us.session;
                if let Some((rx, _)) = fifos(session) {
                    rx.consumer_clear_event();
                    let queued = rx.len().map_err(|_| Errno(libc::EIO))? as usize;
                    if want == 0 {
                        // Nothing to copy: tcp_recvmsg returns 0 at once, except that a
                        // non-blocking call finding no bytes and no end says EAGAIN.
                        let nothing = queued == 0 && !io.us.eof && !io.us.reset && !io.us.shut_rd;
                        return if nothing && nonblocking {
                            Err(Errno(libc::EAGAIN))
                        } else {
                            Ok(0)
                        };
                    }
                    if peek {
                        // MSG_TRUNC: the length the copy would have had, no copy.
                        let n = if truncate {
                            queued.min(want)
                        } else {
                            peek_into(&rx, iov)?
                        };
                        if n > 0 {
                            return Ok(n);
                        }
                    } else if truncate {
                        // MSG_TRUNC on TCP discards the bytes instead of copying them.
                        let n = (want - done).min(queued);
                        rx.consume(n as u32).map_err(|_| Errno(libc::EIO))?;
                        done += n;
                        drained_request = done > 0 && rx.consumer_take_space_request();
                    } else {
                        let mut skip = done;
                        for v in iov {
                            if skip >= v.iov_len {
                                skip -= v.iov_len;
                                continue;
                            }
                            // SAFETY: the caller's buffer of iov_len writable bytes.
                            let dst = unsafe {
                                core::slice::from_raw_parts_mut(
                                    v.iov_base.cast::<u8>().add(skip),
                                    v.iov_len - skip,
                                )
                            };
                            skip = 0;
                            let n = rx.dequeue(dst).map_err(|_| Errno(libc::EIO))?;
                            done += n;
                            if n < dst.len() {
                                break;
                            }
                        }
                        drained_request = done > 0 && rx.consumer_take_space_request();
                    }
                }
                // After shutdown(SHUT_RD) the queued bytes are still read (Linux keeps
                // them, and keeps accepting more); an empty queue reads as the end.
                if io.us.shut_rd || (done > 0 && !(waitall && done < want)) {
                    drop(io);
                    finish_read(session, drained_request, done);
                    return Ok(done);
                }
                if io.us.reset {
                    if done > 0 {
                        drop(io);
                        finish_read(session, drained_request, done);
                        return Ok(done);
                    }
                    let e = io.us.take_error();
                    return if e != 0 { Err(Errno(e)) } else { Ok(0) };
                }
                if io.us.eof {
                    drop(io);
                    finish_read(session, drained_request, done);
                    return Ok(done);
                }
                if nonblocking {
                    drop(io);
                    finish_read(session, drained_request, done);
                    return if done > 0 {
                        Ok(done)
                    } else {
                        Err(Errno(libc::EAGAIN))
                    };
                }
            }
        }
        finish_read(session, drained_request, 0);
        match block_until(rec, deadline, -1, |io| {
            io.us.phase != Phase::Connected
                || io.us.eof
                || io.us.reset
                || fifos(io.us.session).is_some_and(|(rx, _)| !rx.is_empty())
        }) {
            Ok(()) => {}
            Err(e) if done > 0 && (e.0 == libc::EINTR || e.0 == libc::EAGAIN) => return Ok(done),
            Err(Errno(libc::EINTR)) if deadline.is_none() && interrupted_call_restarts() => {}
            Err(e) => return Err(e),
        }
    }
}

/// MSG_PEEK: fills the buffers in turn from the front of `rx`, consuming nothing.
fn peek_into(rx: &ringshim_stackd::proto::Fifo, iov: &[libc::iovec]) -> Result<usize, Errno> {
    let mut done = 0usize;
    for v in iov.iter().filter(|v| v.iov_len > 0) {
        // SAFETY: the caller's buffer of iov_len writable bytes.
        let dst = unsafe { core::slice::from_raw_parts_mut(v.iov_base.cast::<u8>(), v.iov_len) };
        let n = rx.peek_at(done, dst).map_err(|_| Errno(libc::EIO))?;
        done += n;
        if n < v.iov_len {
            break;
        }
    }
    Ok(done)
}

fn finish_read(session: u64, drained_request: bool, bytes: usize) {
    if bytes > 0 {
        stats::add(Counter::BytesReceived, bytes as u64);
    }
    if drained_request {
        let _ = post(&Msg::for_session(MsgKind::RxDrained, session));
    }
}

/// write/send/writev/sendmsg of a ustack socket.
pub fn send(
    rec: &'static SocketRecord,
    fd: c_int,
    iov: &[libc::iovec],
    flags: c_int,
) -> Result<usize, Errno> {
    stats::bump(Counter::CallsIntercepted);
    if flags & libc::MSG_OOB != 0 {
        return Err(Errno(libc::EOPNOTSUPP));
    }
    let total = iov_total(iov);
    let nonblocking = flags & libc::MSG_DONTWAIT != 0 || rec.nonblocking.load(Ordering::Relaxed);
    let deadline = if nonblocking {
        None
    } else {
        timeout_deadline(fd, libc::SO_SNDTIMEO)
    };
    let mut done = 0usize;
    loop {
        pump();
        let (session, notify, raced) = {
            let mut io = rec.lock_io();
            match io.us.phase {
                Phase::Connected => {}
                Phase::Connecting => {
                    if nonblocking {
                        return Err(Errno(libc::EAGAIN));
                    }
                }
                Phase::Failed => {
                    let e = io.us.take_error();
                    if e != 0 {
                        return Err(Errno(e));
                    }
                    crate::uring::sigpipe(flags);
                    return Err(Errno(libc::EPIPE));
                }
                Phase::Orphaned | Phase::Listening | Phase::None => {
                    crate::uring::sigpipe(flags);
                    return Err(Errno(libc::EPIPE));
                }
            }
            if io.us.phase == Phase::Connected {
                if io.us.reset {
                    let e = io.us.take_error();
                    if e != 0 {
                        return Err(Errno(e));
                    }
                    crate::uring::sigpipe(flags);
                    return Err(Errno(libc::EPIPE));
                }
                if io.us.shut_wr {
                    crate::uring::sigpipe(flags);
                    return Err(Errno(libc::EPIPE));
                }
                if total == 0 {
                    return Ok(0);
                }
                let session = io.us.session;
                let Some((_, tx)) = fifos(session) else {
                    return Err(Errno(libc::EIO));
                };
                // MSG_MORE corks this call's bytes; the next send without it pushes them.
                let more = flags & libc::MSG_MORE != 0;
                if more {
                    tx.producer_set_cork(proto::cork::MORE, true);
                }
                let mut skip = done;
                let before = done;
                for v in iov {
                    if skip >= v.iov_len {
                        skip -= v.iov_len;
                        continue;
                    }
                    // SAFETY: the caller's buffer of iov_len readable bytes.
                    let src = unsafe {
                        core::slice::from_raw_parts(
                            v.iov_base.cast::<u8>().add(skip),
                            v.iov_len - skip,
                        )
                    };
                    skip = 0;
                    let n = tx.enqueue(src).map_err(|_| Errno(libc::EIO))?;
                    done += n;
                    if n < src.len() {
                        break;
                    }
                }
                if !more && tx.producer_cork() & proto::cork::MORE != 0 {
                    tx.producer_set_cork(proto::cork::MORE, false);
                    tx.producer_push();
                }
                let notify = done > before && tx.producer_should_notify();
                let mut raced = false;
                if done < total {
                    // Full: ask stackd for TX_SPACE (a blocked send and EPOLLOUT wait for
                    // it, also after a partial write); space may have appeared meanwhile.
                    if tx.request_space_notice().unwrap_or(0) > 0 {
                        if done == before {
                            continue;
                        }
                        raced = true;
                    }
                }
                (session, notify, raced)
            } else {
                (NO_SESSION, false, false)
            }
        };
        if raced {
            // The space may come unannounced: the watchers look again (edge-triggered).
            super::notify(rec);
        }
        if notify {
            if let Err(e) = post(&Msg::for_session(MsgKind::Tx, session)) {
                return if done > 0 { Ok(done) } else { Err(e) };
            }
        }
        if done == total {
            stats::add(Counter::BytesSent, done as u64);
            return Ok(done);
        }
        if nonblocking {
            if done > 0 {
                stats::add(Counter::BytesSent, done as u64);
                return Ok(done);
            }
            return Err(Errno(libc::EAGAIN));
        }
        match block_until(rec, deadline, -1, |io| {
            io.us.phase != Phase::Connected
                || io.us.reset
                || fifos(io.us.session).is_some_and(|(_, tx)| tx.free_space().unwrap_or(0) > 0)
        }) {
            Ok(()) => {}
            Err(e) if done > 0 && (e.0 == libc::EINTR || e.0 == libc::EAGAIN) => {
                stats::add(Counter::BytesSent, done as u64);
                return Ok(done);
            }
            Err(Errno(libc::EINTR)) if deadline.is_none() && interrupted_call_restarts() => {}
            Err(e) => return Err(e),
        }
    }
}

/// shutdown() of a ustack socket.
pub fn shutdown(rec: &'static SocketRecord, fd: c_int, how: c_int) -> Result<c_int, Errno> {
    if rec.lock_io().us.phase == Phase::Listening {
        // The kernel listener answers (SHUT_WR: nothing; SHUT_RD: it stops listening and
        // resets what waits in its backlog); stackd's side then goes the same way.
        // SAFETY: plain system call on the caller's descriptor.
        if unsafe { real::shutdown(fd, how) } != 0 {
            return Err(crate::errno::last());
        }
        if how != libc::SHUT_WR {
            on_last_close(rec, fd);
            rec.engine.store(Engine::Kernel as u8, Ordering::Release);
        }
        return Ok(0);
    }
    if !(libc::SHUT_RD..=libc::SHUT_RDWR).contains(&how) {
        return Err(Errno(libc::EINVAL));
    }
    let session = {
        let mut io = rec.lock_io();
        if io.us.phase != Phase::Connected {
            return Err(Errno(libc::ENOTCONN));
        }
        if how != libc::SHUT_WR {
            io.us.shut_rd = true;
        }
        if how == libc::SHUT_RD || io.us.shut_wr {
            None
        } else {
            io.us.shut_wr = true;
            Some(io.us.session)
        }
    };
    if let Some(s) = session {
        let mut m = Msg::for_session(MsgKind::Shutdown, s);
        m.arg = libc::SHUT_WR as u32;
        post(&m)?;
    }
    let (watchers, n) = {
        let io = rec.lock_io();
        (io.watchers, io.nwatchers)
    };
    crate::uring::notify(rec, &watchers[..n], false);
    Ok(0)
}

/// The last descriptor of a ustack socket closed: stackd finishes (or resets) the session
/// on its own, as the kernel does after close().
pub fn on_last_close(rec: &'static SocketRecord, fd: c_int) {
    let (phase, session, listener, cookie) = {
        let mut io = rec.lock_io();
        let v = (io.us.phase, io.us.session, io.us.listener, io.us.cookie);
        let pending: Vec<Pending> = io.us.accept_queue.drain(..).collect();
        io.us.clear();
        drop(io);
        for p in pending {
            super::abort_session(p.session);
        }
        v
    };
    match phase {
        Phase::Connected => {
            super::unbind_session(session);
            let mut m = Msg::for_session(MsgKind::Close, session);
            if linger_zero(fd) {
                m.flags = proto::msg_flags::ABORT;
            }
            let _ = post(&m);
        }
        Phase::Connecting => {
            let mut m = Msg::for_session(MsgKind::Close, NO_SESSION);
            m.cookie = cookie;
            let _ = post(&m);
        }
        Phase::Listening if cookie != 0 => {
            let mut m = Msg::new(MsgKind::Unlisten);
            m.arg = listener;
            let _ = post(&m);
        }
        _ => {}
    }
}

fn linger_zero(fd: c_int) -> bool {
    let mut l = libc::linger {
        l_onoff: 0,
        l_linger: 0,
    };
    let mut len = core::mem::size_of::<libc::linger>() as socklen_t;
    // SAFETY: valid out-buffer and length.
    let r = unsafe {
        real::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&mut l as *mut libc::linger).cast(),
            &mut len,
        )
    };
    r == 0 && l.l_onoff != 0 && l.l_linger == 0
}

/// getsockname()/getpeername() of a ustack socket (None: the kernel socket answers).
///
/// # Safety
/// `addr`/`len` as for getsockname(2).
pub unsafe fn name(
    rec: &SocketRecord,
    peer: bool,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> Option<Result<c_int, Errno>> {
    let io = rec.lock_io();
    let family = rec.family.load(Ordering::Relaxed);
    match io.us.phase {
        Phase::Connected => {
            let ep = if peer { io.us.remote } else { io.us.local };
            // SAFETY: caller contract.
            Some(unsafe { copy_out(family, &ep, addr, len) }.map(|()| 0))
        }
        Phase::Connecting | Phase::Failed | Phase::Orphaned if peer => {
            Some(Err(Errno(libc::ENOTCONN)))
        }
        _ => None,
    }
}

/// getsockopt() of a ustack socket: SO_ERROR and the TCP_INFO-free basics from the
/// session; everything else from the placeholder kernel socket.
///
/// # Safety
/// `val`/`len` as for getsockopt(2).
pub unsafe fn getsockopt(
    rec: &SocketRecord,
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> Result<c_int, Errno> {
    if level == libc::SOL_SOCKET && name == libc::SO_ERROR && !val.is_null() && !len.is_null() {
        pump();
        let e = rec.lock_io().us.take_error();
        // SAFETY: the caller's int-sized buffer (checked).
        unsafe {
            if (*len as usize) < core::mem::size_of::<c_int>() {
                return Err(Errno(libc::EINVAL));
            }
            val.cast::<c_int>().write_unaligned(e);
            *len = core::mem::size_of::<c_int>() as socklen_t;
        }
        return Ok(0);
    }
    // SAFETY: forwarded to the placeholder, which holds every option the app set.
    let r = unsafe { real::getsockopt(fd, level, name, val, len) };
    if r == 0 {
        Ok(0)
    } else {
        Err(crate::errno::last())
    }
}

/// setsockopt() of a ustack socket: options stackd models are forwarded to it; every
/// option is also set on the placeholder (which answers getsockopt).
///
/// TCP_CORK is the tx fifo's cork bit, set before the bytes it covers are written; an
/// uncork, and TCP_NODELAY on, also set the fifo's push mark (everything written so far
/// leaves now, as the kernel's push) and wake stackd with SETOPT when bytes came since the
/// last push (see `proto`, "Cork and push").
///
/// # Safety
/// `val` readable for `len` bytes.
pub unsafe fn before_setsockopt(
    rec: &SocketRecord,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) {
    if val.is_null() || (len as usize) < core::mem::size_of::<c_int>() {
        return;
    }
    // SAFETY: at least an int is readable (checked).
    let v = unsafe { val.cast::<c_int>().read_unaligned() };
    let (opt, value) = match (level, name) {
        (libc::IPPROTO_TCP, libc::TCP_NODELAY) => (proto::sockopt::NODELAY, u32::from(v != 0)),
        (libc::IPPROTO_TCP, libc::TCP_CORK) => (proto::sockopt::CORK, u32::from(v != 0)),
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE) => {
            (proto::sockopt::KEEPALIVE_SECS, if v != 0 { 75 } else { 0 })
        }
        _ => return,
    };
    let session = {
        let mut io = rec.lock_io();
        if opt == proto::sockopt::NODELAY {
            io.us.nodelay = value != 0;
        }
        if opt == proto::sockopt::CORK {
            io.us.cork = value != 0;
        }
        let session = (io.us.phase == Phase::Connected).then_some(io.us.session);
        let fifo = session.and_then(fifos).map(|(_, tx)| tx);
        match (opt, fifo) {
            (proto::sockopt::CORK, Some(tx)) => {
                tx.producer_set_cork(proto::cork::OPTION, value != 0);
                // Corking needs no message: the bit travels with the bytes.
                (value == 0 && tx.producer_push()).then_some(io.us.session)
            }
            (proto::sockopt::CORK, None) => None,
            (proto::sockopt::NODELAY, Some(tx)) => {
                if value != 0 {
                    tx.producer_push();
                }
                session
            }
            _ => session,
        }
    };
    if let Some(s) = session {
        let mut m = Msg::for_session(MsgKind::SetOpt, s);
        m.arg = opt;
        m.value = value;
        let _ = post(&m);
    }
}

/// ioctl() requests with a ustack meaning (None: the placeholder answers).
pub fn ioctl(rec: &SocketRecord, request: libc::c_ulong) -> Option<c_int> {
    let io = rec.lock_io();
    let (rx, tx) = fifos(io.us.session)?;
    match request {
        libc::FIONREAD => Some(rx.len().unwrap_or(0) as c_int),
        libc::TIOCOUTQ => Some(tx.len().unwrap_or(0) as c_int),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_come_from_ipv4_and_v4_mapped_addresses_only() {
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 8080u16.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes([198, 51, 100, 2]),
            },
            sin_zero: [0; 8],
        };
        let len = core::mem::size_of::<libc::sockaddr_in>() as socklen_t;
        // SAFETY: a live local with its true length.
        let ep = unsafe { endpoint_of((&sin as *const libc::sockaddr_in).cast(), len) };
        assert_eq!(ep, Some(Endpoint::new([198, 51, 100, 2], 8080)));
        let mut ss: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
        let l6 = write_sockaddr(
            libc::AF_INET6,
            &Endpoint::new([198, 51, 100, 2], 8080),
            &mut ss,
        );
        // SAFETY: the storage holds a sockaddr_in6 of length l6.
        let back = unsafe { endpoint_of((&ss as *const libc::sockaddr_storage).cast(), l6) };
        assert_eq!(back, Some(Endpoint::new([198, 51, 100, 2], 8080)));
        let mut sin6: libc::sockaddr_in6 = unsafe { core::mem::zeroed() };
        sin6.sin6_family = libc::AF_INET6 as u16;
        sin6.sin6_addr.s6_addr[15] = 1; // ::1
        let l6 = core::mem::size_of::<libc::sockaddr_in6>() as socklen_t;
        // SAFETY: a live local with its true length.
        assert_eq!(
            unsafe { endpoint_of((&sin6 as *const libc::sockaddr_in6).cast(), l6) },
            None
        );
    }
}
