//! The `ustack` engine: TCP sockets carried by `ringshim-stackd`, a user-space TCP/IP
//! stack in another process, through shared memory (the VPP host stack + VCL model).
//!
//! ## The link
//! The first socket routed to this engine attaches the process to stackd over its unix
//! control socket (`RINGSHIM_STACKD`): stackd answers with a memfd segment (message rings
//! and per-session byte fifos, see `ringshim_stackd::proto`) and the eventfds of worker 0.
//! Every other thread that sends messages registers a worker of its own (WORKER_ADD), so
//! each thread produces on its own app→stack ring (seed 003: one VCL worker per thread).
//! Messages from stackd for a session arrive on the ring of the worker that created it;
//! any thread may drain any worker's stack→app ring ([`pump`], one drainer at a time per
//! ring), because the thread that waits for a socket is not always the one that made it.
//!
//! ## Readiness
//! Each worker's `app_wake` eventfd is a member of every epoll instance that watches a
//! ustack socket, tagged [`WAKE_TAG`]: stackd writes it when it posts to a ring whose
//! consumer announced sleep, so the application's one kernel epoll wakes for both stacks
//! (the eventfd nesting of BRIEF invariant 6). Socket readiness itself is computed from the
//! session state and the fifos' fill levels ([`session::UsSock::events`]) and served by the
//! shim's merged epoll (`uring::wait`) like the ring engine's.
//!
//! ## Placeholders
//! The application keeps the fd it got from socket() (connect) or a fresh unconnected
//! kernel TCP socket (accept): a real descriptor that fcntl, fstat, dup and close accept
//! (BRIEF invariant 1). Its addresses, SO_ERROR and data calls are answered by the shim.
//!
//! ## Listeners
//! A listener the application opens on a wildcard or non-kernel-net address keeps its
//! kernel socket (loopback peers still reach it) and also listens in stackd on the same
//! port. Its epoll registration is kept in both places: the kernel reports kernel
//! connections, the shim reports the connections stackd completed; accept() takes
//! stackd's first, then the kernel's.
//!
//! ## Failure
//! If stackd cannot be reached, the reason is logged once and sockets take the kernel path
//! (BRIEF invariant 5). A fork child drops the parent's link (it must not touch its
//! rings); its copies of ustack sockets report a reset.

pub mod io;
pub mod session;

use crate::errno::Errno;
use crate::real;
use crate::socket::{SocketRecord, SOCKETS};
use core::cell::Cell;
use core::sync::atomic::{
    AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, Ordering,
};
use ringshim_stackd::proto::{
    self, control_kind, ControlReply, ControlRequest, Direction, Fifo, Msg, MsgKind, Ring, Segment,
    SegmentHeader, SegmentLayout, NO_SESSION,
};
pub use session::{Phase, UsSock};

/// data of the worker eventfds in the application's kernel epoll sets ("RSUSTACK");
/// filtered from results like the bridge.
pub const WAKE_TAG: u64 = 0x5253_5553_5441_434b;
/// data of the control connection in the same sets ("RSUSCTRL"): readable only when
/// stackd is gone (EOF), see [`check_link`].
pub const CONTROL_TAG: u64 = 0x5253_5553_4354_524c;

/// Workers asked for at ATTACH (stackd's maximum): one per application thread that
/// sends; threads past it share worker 0.
const MAX_WORKERS: usize = proto::limits::MAX_WORKERS as usize;
/// Session slots a segment can have; the session → socket map is sized for them.
const MAX_SESSIONS: usize = proto::limits::MAX_SESSIONS as usize;

/// One worker of this process: its eventfds and who is using its rings.
struct Worker {
    app_wake: AtomicI32,
    stack_wake: AtomicI32,
    /// Producers of the app→stack ring (the SPSC protocol allows one at a time; threads
    /// past MAX_WORKERS share worker 0).
    push_lock: AtomicBool,
    /// The thread draining the stack→app ring.
    pump_lock: AtomicBool,
}

impl Worker {
    const fn new() -> Worker {
        Worker {
            app_wake: AtomicI32::new(-1),
            stack_wake: AtomicI32::new(-1),
            push_lock: AtomicBool::new(false),
            pump_lock: AtomicBool::new(false),
        }
    }
}

/// This process's attachment to stackd.
struct Link {
    pid: u32,
    /// The control connection; -1 once stackd is gone (closing it took it out of
    /// every epoll set).
    control: AtomicI32,
    segment: Segment,
    map_len: usize,
    workers: [Worker; MAX_WORKERS],
    nworkers: AtomicU32,
    /// Serialises WORKER_ADD on the control socket.
    control_lock: AtomicBool,
}

/// Attachment state: not tried yet, attached, or failed (logged once; kernel path).
const UNTRIED: u8 = 0;
const ATTACHED: u8 = 1;
const FAILED: u8 = 2;
const ATTACHING: u8 = 3;
static STATE: AtomicU8 = AtomicU8::new(UNTRIED);
static LINK: AtomicPtr<Link> = AtomicPtr::new(core::ptr::null_mut());
/// Bumped whenever the link changes (attach, fork child), so threads re-register.
static EPOCH: AtomicU32 = AtomicU32::new(1);
/// session index → 1 + socket record id (0: none).
static BY_SESSION: [AtomicU32; MAX_SESSIONS] = [const { AtomicU32::new(0) }; MAX_SESSIONS];
/// Sessions whose end (DISCONNECTED or RESET) stackd reported while they still waited in
/// a listener's accept queue: no socket owns them yet, so the end is kept here, per
/// session index, until accept() binds the session ([`take_early_end`]). A client that
/// connects, sends its request and closes before the server accepts is common (wrk at
/// the end of a run, health checks); without this its EOF was lost and the server held
/// the connection until its own timeout (nginx's graceful quit waited 60 s).
static EARLY_END: [AtomicU64; MAX_SESSIONS] = [const { AtomicU64::new(NO_SESSION) }; MAX_SESSIONS];
/// The error of an early end: 0 for an orderly one (EOF), else the reset's errno.
static EARLY_ERROR: [AtomicI32; MAX_SESSIONS] = [const { AtomicI32::new(0) }; MAX_SESSIONS];
/// Threads sleeping in a blocking ustack call (see [`wake_blocked`]).
static BLOCKED: AtomicU32 = AtomicU32::new(0);

thread_local! {
    /// (epoch, worker index) of this thread.
    static MY_WORKER: Cell<(u32, u32)> = const { Cell::new((0, 0)) };
}

fn link() -> Option<&'static Link> {
    let p = LINK.load(Ordering::Acquire);
    // SAFETY: set once per attach to a leaked Box that is never freed.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// Whether the backend is configured and stackd reachable (attaching on first use).
pub fn available() -> bool {
    match STATE.load(Ordering::Acquire) {
        ATTACHED => true,
        FAILED => false,
        _ => attach(),
    }
}

/// Attached to stackd now (never attaches by itself).
pub fn attached() -> bool {
    STATE.load(Ordering::Acquire) == ATTACHED
}

#[cold]
fn attach() -> bool {
    if STATE
        .compare_exchange(UNTRIED, ATTACHING, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        // Another thread attaches: wait for its verdict (a few milliseconds at most).
        for _ in 0..5000 {
            match STATE.load(Ordering::Acquire) {
                ATTACHED => return true,
                FAILED => return false,
                _ => {
                    // SAFETY: plain sleep.
                    unsafe { libc::usleep(1000) };
                }
            }
        }
        return false;
    }
    let path = crate::init::config().stackd_socket.clone();
    match crate::errno::preserve(|| connect_and_attach(&path)) {
        Ok(l) => {
            LINK.store(Box::leak(Box::new(l)), Ordering::Release);
            EPOCH.fetch_add(1, Ordering::AcqRel);
            STATE.store(ATTACHED, Ordering::Release);
            crate::stats::set_backend_active(true);
            crate::log_info!("ustack: attached to ringshim-stackd at {path}");
            true
        }
        Err((what, Errno(e))) => {
            STATE.store(FAILED, Ordering::Release);
            crate::log_warn!(
                "ustack: ringshim-stackd unavailable at {path} ({what}, errno {e}); sockets stay on the kernel path"
            );
            false
        }
    }
}

type Failure = (&'static str, Errno);

fn last(what: &'static str) -> Failure {
    (what, crate::errno::last())
}

fn connect_and_attach(path: &str) -> Result<Link, Failure> {
    // SAFETY: plain socket creation.
    let control =
        unsafe { real::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    if control < 0 {
        return Err(last("socket"));
    }
    let control = crate::internal_fd::move_high(control);
    // SAFETY: all-zero sockaddr_un is valid.
    let mut sun: libc::sockaddr_un = unsafe { core::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if path.len() >= sun.sun_path.len() {
        close_fd(control);
        return Err(("control path too long", Errno(libc::ENAMETOOLONG)));
    }
    for (d, s) in sun.sun_path.iter_mut().zip(path.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: a valid sockaddr_un and its size.
    let r = unsafe {
        real::connect(
            control,
            (&sun as *const libc::sockaddr_un).cast(),
            core::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if r != 0 {
        let e = last("connect to the control socket");
        close_fd(control);
        return Err(e);
    }
    let mut request = ControlRequest::new(control_kind::ATTACH);
    request.max_workers = MAX_WORKERS as u32;
    let name = program_name();
    for (d, s) in request.name.iter_mut().zip(name.iter().take(31)) {
        *d = *s;
    }
    let mut fds = [-1; 3];
    let reply = match exchange(control, &request, &mut fds) {
        Ok(r) => r,
        Err(e) => {
            close_fd(control);
            return Err(e);
        }
    };
    let [segment_fd, app_wake, stack_wake] = fds;
    let mapped = map_segment(segment_fd, reply.segment_bytes);
    close_fd(segment_fd);
    let (segment, map_len) = match mapped {
        Ok(m) => m,
        Err(e) => {
            close_fd(app_wake);
            close_fd(stack_wake);
            close_fd(control);
            return Err(e);
        }
    };
    if segment.layout().sessions as usize > MAX_SESSIONS {
        return Err((
            "segment has more sessions than the shim maps",
            Errno(libc::EPROTO),
        ));
    }
    let l = Link {
        // SAFETY: getpid has no preconditions.
        pid: unsafe { libc::getpid() } as u32,
        control: AtomicI32::new(control),
        segment,
        map_len,
        workers: [const { Worker::new() }; MAX_WORKERS],
        nworkers: AtomicU32::new(1),
        control_lock: AtomicBool::new(false),
    };
    set_worker_fds(
        &l.workers[reply.worker as usize % MAX_WORKERS],
        app_wake,
        stack_wake,
    );
    MY_WORKER.with(|w| w.set((EPOCH.load(Ordering::Acquire) + 1, reply.worker)));
    Ok(l)
}

fn set_worker_fds(w: &Worker, app_wake: i32, stack_wake: i32) {
    let app_wake = crate::internal_fd::move_high(app_wake);
    let stack_wake = crate::internal_fd::move_high(stack_wake);
    // SAFETY: our own eventfd; the consumer side must never block in read().
    unsafe {
        let fl = real::fcntl(app_wake, libc::F_GETFL, 0);
        real::fcntl(app_wake, libc::F_SETFL, (fl | libc::O_NONBLOCK) as usize);
    }
    w.stack_wake.store(stack_wake, Ordering::Release);
    w.app_wake.store(app_wake, Ordering::Release);
}

fn program_name() -> Vec<u8> {
    std::fs::read("/proc/self/comm")
        .map(|mut v| {
            while v.last() == Some(&b'\n') {
                v.pop();
            }
            v
        })
        .unwrap_or_default()
}

fn close_fd(fd: i32) {
    if fd >= 0 {
        crate::fdtable::take(fd);
        // SAFETY: the shim's own descriptor.
        unsafe { real::close(fd) };
    }
}

/// Sends one control request and receives its reply with up to `fds.len()` descriptors.
fn exchange(
    control: i32,
    request: &ControlRequest,
    fds: &mut [i32],
) -> Result<ControlReply, Failure> {
    let bytes = proto::plain_bytes(request);
    // SAFETY: sending our own buffer.
    let n = unsafe {
        real::send(
            control,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    if n != bytes.len() as isize {
        return Err(last("send to the control socket"));
    }
    let mut buf = [0u8; 64];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for three descriptors of control data.
    let mut cmsg = [0u64; 8];
    // SAFETY: all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.as_mut_ptr().cast();
    msg.msg_controllen = core::mem::size_of_val(&cmsg);
    // SAFETY: msg points to live buffers of the sizes it states.
    let n = unsafe { real::recvmsg(control, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(last("receive from the control socket"));
    }
    if n == 0 {
        return Err((
            "stackd closed the control connection",
            Errno(libc::ECONNRESET),
        ));
    }
    // SAFETY: walking the control buffer the kernel filled, with libc's macros.
    let mut got = 0;
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<i32>();
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                for k in 0..count {
                    let fd = data.add(k).read_unaligned();
                    if got < fds.len() {
                        fds[got] = fd;
                        got += 1;
                    } else {
                        real::close(fd);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let reply: Option<ControlReply> = proto::read_plain(&buf[..n as usize]);
    let fail = |fds: &mut [i32], what, e| {
        for fd in fds.iter_mut() {
            close_fd(*fd);
            *fd = -1;
        }
        Err((what, Errno(e)))
    };
    let Some(reply) = reply else {
        return fail(fds, "short control reply", libc::EPROTO);
    };
    if reply.magic != proto::CONTROL_MAGIC || reply.version != proto::PROTOCOL_VERSION {
        return fail(
            fds,
            "control reply of another protocol version",
            libc::EPROTO,
        );
    }
    if reply.result != 0 {
        return fail(fds, "stackd refused the request", reply.result);
    }
    if got != fds.len() {
        return fail(fds, "control reply without its descriptors", libc::EPROTO);
    }
    Ok(reply)
}

fn map_segment(fd: i32, bytes: u64) -> Result<(Segment, usize), Failure> {
    // SAFETY: zeroed stat is a valid out-buffer.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: valid out-pointer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(last("fstat of the segment"));
    }
    if st.st_size as u64 != bytes || bytes < 4096 {
        return Err(("segment size differs from the reply", Errno(libc::EPROTO)));
    }
    // SAFETY: mapping the memfd stackd handed over, shared, for its whole size.
    let base = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            bytes as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(last("mmap of the segment"));
    }
    // SAFETY: the mapping is at least a page; the header is plain integers.
    let header: SegmentHeader = unsafe { core::ptr::read_volatile(base.cast::<SegmentHeader>()) };
    let layout = SegmentLayout::from_header(&header)
        .ok()
        .filter(|l| l.segment_bytes == bytes);
    let Some(layout) = layout else {
        // SAFETY: unmapping what we just mapped.
        unsafe { libc::munmap(base, bytes as usize) };
        return Err(("segment header is malformed", Errno(libc::EPROTO)));
    };
    // SAFETY: the mapping covers the layout and is never unmapped while the link lives
    // (a fork child unmaps it only after dropping the link).
    Ok((unsafe { Segment::new(base.cast(), layout) }, bytes as usize))
}

fn spin_lock(flag: &AtomicBool) {
    while flag
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
}

fn try_lock(flag: &AtomicBool) -> bool {
    flag.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
}

fn unlock(flag: &AtomicBool) {
    flag.store(false, Ordering::Release);
}

/// This thread's worker, registering one on first use.
fn my_worker(l: &'static Link) -> usize {
    let epoch = EPOCH.load(Ordering::Acquire);
    let (e, index) = MY_WORKER.with(|w| w.get());
    if e == epoch {
        return index as usize;
    }
    let index = add_worker(l).unwrap_or(0);
    MY_WORKER.with(|w| w.set((epoch, index as u32)));
    index
}

#[cold]
fn add_worker(l: &'static Link) -> Option<usize> {
    spin_lock(&l.control_lock);
    let mut fds = [-1; 2];
    let r = crate::errno::preserve(|| {
        exchange(
            l.control.load(Ordering::Acquire),
            &ControlRequest::new(control_kind::WORKER_ADD),
            &mut fds,
        )
    });
    let out = match r {
        Ok(reply) if (reply.worker as usize) < MAX_WORKERS => {
            let w = reply.worker as usize;
            set_worker_fds(&l.workers[w], fds[0], fds[1]);
            l.nworkers.fetch_max(w as u32 + 1, Ordering::AcqRel);
            Some(w)
        }
        Ok(_) => {
            close_fd(fds[0]);
            close_fd(fds[1]);
            None
        }
        Err((what, Errno(e))) => {
            crate::log_debug!(
                "ustack: WORKER_ADD failed ({what}, errno {e}); this thread shares worker 0"
            );
            None
        }
    };
    unlock(&l.control_lock);
    out
}

fn ring(l: &Link, w: usize, d: Direction) -> Option<Ring> {
    l.segment.ring(w as u32, d)
}

fn signal(fd: i32) {
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes to an eventfd (raw syscall: never re-enters the exports).
        unsafe { libc::syscall(libc::SYS_write, fd, &one as *const u64, 8) };
    }
}

fn drain_eventfd(fd: i32) {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes from our non-blocking eventfd.
    unsafe { libc::syscall(libc::SYS_read, fd, &mut v as *mut u64, 8) };
}

/// Posts a message to stackd on this thread's worker ring, waking stackd if it sleeps.
pub fn post(msg: &Msg) -> Result<(), Errno> {
    let Some(l) = link() else {
        return Err(Errno(libc::ECONNRESET));
    };
    if l.control.load(Ordering::Acquire) < 0 {
        return Err(Errno(libc::ECONNRESET));
    }
    let w = my_worker(l);
    let worker = &l.workers[w];
    let Some(r) = ring(l, w, Direction::AppToStack) else {
        return Err(Errno(libc::EIO));
    };
    spin_lock(&worker.push_lock);
    let mut waited = 0u32;
    let result = loop {
        match r.push(msg) {
            Ok(true) => break Ok(()),
            Ok(false) => {
                if r.wait_for_space() {
                    continue;
                }
                // stackd writes our app_wake when it frees a slot; 5 s bound.
                if waited >= 5000 || l.control.load(Ordering::Acquire) < 0 {
                    break Err(Errno(libc::ECONNRESET));
                }
                if waited % 100 == 99 {
                    // A full ring that does not drain: is stackd still there?
                    unlock(&worker.push_lock);
                    check_link();
                    spin_lock(&worker.push_lock);
                }
                waited += 1;
                let mut p = libc::pollfd {
                    fd: worker.app_wake.load(Ordering::Acquire),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one pollfd of ours.
                unsafe { real::poll(&mut p, 1, 1) };
            }
            Err(_) => break Err(Errno(libc::EIO)),
        }
    };
    let wake = result.is_ok() && r.wake_needed();
    unlock(&worker.push_lock);
    if wake {
        signal(worker.stack_wake.load(Ordering::Acquire));
    }
    result
}

/// The receive and transmit fifos of a session.
pub fn fifos(session: u64) -> Option<(Fifo, Fifo)> {
    let l = link()?;
    let index = proto::session_index(session);
    Some((l.segment.rx_fifo(index)?, l.segment.tx_fifo(index)?))
}

/// The readiness of a ustack socket (EPOLL* bits).
///
/// A connected socket whose tx fifo is full is not writable, and nothing but stackd's
/// TX_SPACE says when it becomes writable again: whoever finds it full (epoll, poll,
/// select) asks for that notice here, so EPOLLOUT comes back whatever the last send
/// did (a send that fills the fifo exactly leaves no request behind). The TX_SPACE
/// message marks the socket's watchers ready (`on_message`).
pub fn events_of(us: &UsSock) -> u32 {
    let (rx, tx_free) = match us.phase {
        Phase::Connected => fifos(us.session)
            .map(|(rx, tx)| (rx.len().unwrap_or(0), tx_room(&tx, us.shut_wr)))
            .unwrap_or((0, 0)),
        _ => (0, 0),
    };
    us.events(rx, tx_free)
}

/// The room in a session's tx fifo; when there is none (and the socket may still
/// send), a space notice is requested first, and the room read again after the request
/// (stackd may have consumed meanwhile and seen no request: then the room is nonzero).
fn tx_room(tx: &Fifo, shut_wr: bool) -> u32 {
    match tx.free_space() {
        Ok(0) if !shut_wr => tx.request_space_notice().unwrap_or(0),
        Ok(free) => free,
        Err(_) => 0,
    }
}

/// The cookie that names `rec` in CONNECT and LISTEN (its reuse generation included).
pub fn cookie_of(rec: &SocketRecord) -> u64 {
    (u64::from(rec.generation.load(Ordering::Acquire)) << 32)
        | u64::from(rec.id.load(Ordering::Relaxed))
}

fn by_cookie(cookie: u64) -> Option<&'static SocketRecord> {
    let rec = SOCKETS.get(cookie as u32)?;
    (rec.generation.load(Ordering::Acquire) == (cookie >> 32) as u32).then_some(rec)
}

/// Records that `session` belongs to `rec` (messages about it find the socket).
pub fn bind_session(session: u64, rec: &SocketRecord) {
    if let Some(slot) = BY_SESSION.get(proto::session_index(session) as usize) {
        slot.store(rec.id.load(Ordering::Relaxed) + 1, Ordering::Release);
    }
}

pub fn unbind_session(session: u64) {
    if session == NO_SESSION {
        return;
    }
    if let Some(slot) = BY_SESSION.get(proto::session_index(session) as usize) {
        slot.store(0, Ordering::Release);
    }
}

fn by_session(session: u64) -> Option<&'static SocketRecord> {
    let id = BY_SESSION
        .get(proto::session_index(session) as usize)?
        .load(Ordering::Acquire);
    SOCKETS.get(id.checked_sub(1)?)
}

/// Drains every worker's stack→app ring this thread can take; returns how many messages
/// it handled.
pub fn pump() -> usize {
    let Some(l) = link() else { return 0 };
    let mut handled = 0;
    for w in 0..l.nworkers.load(Ordering::Acquire) as usize {
        let Some(r) = ring(l, w, Direction::StackToApp) else {
            continue;
        };
        if r.is_empty() || !try_lock(&l.workers[w].pump_lock) {
            continue;
        }
        let mut popped = 0;
        while let Ok(Some(msg)) = r.pop() {
            on_message(&msg);
            popped += 1;
        }
        let space = popped > 0 && r.space_waiter();
        unlock(&l.workers[w].pump_lock);
        if space {
            signal(l.workers[w].stack_wake.load(Ordering::Acquire));
        }
        // Pairs with the count-then-check of a thread going to sleep (Dekker).
        core::sync::atomic::fence(Ordering::SeqCst);
        if popped > 0 && BLOCKED.load(Ordering::SeqCst) > 0 {
            wake_blocked(l, w);
        }
        handled += popped;
    }
    handled
}

/// Before sleeping on the workers' eventfds: announces the sleep on every ring. False if
/// a message arrived meanwhile (pump instead of sleeping).
pub fn prepare_sleep() -> bool {
    let Some(l) = link() else { return true };
    let mut may_sleep = true;
    for w in 0..l.nworkers.load(Ordering::Acquire) as usize {
        if let Some(r) = ring(l, w, Direction::StackToApp) {
            may_sleep &= r.prepare_sleep();
        }
    }
    may_sleep
}

/// A worker eventfd fired (WAKE_TAG seen, or a poll on it returned): reset them all.
pub fn woken() {
    let Some(l) = link() else { return };
    for w in 0..l.nworkers.load(Ordering::Acquire) as usize {
        drain_eventfd(l.workers[w].app_wake.load(Ordering::Acquire));
    }
}

/// The control connection, for a poll set (-1: none).
pub fn control_fd() -> i32 {
    link().map_or(-1, |l| l.control.load(Ordering::Acquire))
}

/// The control connection became readable: stackd sends nothing unasked, so this is
/// its end (EOF or an error). Every session is reset, listeners keep their kernel side,
/// and new sockets take the kernel path (BRIEF invariant 5).
pub fn check_link() {
    let Some(l) = link() else { return };
    let control = l.control.load(Ordering::Acquire);
    if control < 0 {
        return;
    }
    let mut b = 0u8;
    // SAFETY: a one-byte peek into our own buffer.
    let r = unsafe {
        real::recv(
            control,
            (&mut b as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if r > 0 || (r < 0 && crate::errno::get() == libc::EAGAIN) {
        return;
    }
    if l.control
        .compare_exchange(control, -1, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return;
    }
    STATE.store(FAILED, Ordering::Release);
    crate::stats::set_backend_active(false);
    crate::log_warn!("ustack: ringshim-stackd is gone; its connections are reset, new sockets take the kernel path");
    close_fd(control);
    for id in 0..SOCKETS.high_water() {
        let Some(rec) = SOCKETS.get(id) else { continue };
        if rec.engine() != crate::socket::Engine::Ustack {
            continue;
        }
        {
            let mut io = rec.lock_io();
            match io.us.phase {
                Phase::Connected if !io.us.reset => {
                    io.us.reset = true;
                    io.us.error = libc::ECONNRESET;
                }
                Phase::Connecting => {
                    io.us.phase = Phase::Failed;
                    io.us.error = libc::ECONNRESET;
                }
                Phase::Listening => {
                    io.us.cookie = 0;
                    io.us.accept_queue.clear();
                    io.us.phase = Phase::None;
                    rec.engine
                        .store(crate::socket::Engine::Kernel as u8, Ordering::Release);
                }
                _ => {}
            }
        }
        notify(rec);
    }
    if BLOCKED.load(Ordering::SeqCst) > 0 {
        wake_blocked(l, 0);
    }
}

/// The workers' eventfds, for a poll set (returns how many were written).
pub fn wake_fds(out: &mut [i32]) -> usize {
    let Some(l) = link() else { return 0 };
    let mut n = 0;
    for w in 0..l.nworkers.load(Ordering::Acquire) as usize {
        let fd = l.workers[w].app_wake.load(Ordering::Acquire);
        if fd >= 0 && n < out.len() {
            out[n] = fd;
            n += 1;
        }
    }
    n
}

/// How many workers exist now (an epoll instance registers each one's eventfd once).
pub fn worker_count() -> u32 {
    link().map_or(0, |l| l.nworkers.load(Ordering::Acquire))
}

/// Puts the eventfds of workers `from..` into the kernel set of `epfd` (and, with the
/// first, the control connection, whose EOF says stackd is gone).
pub fn register_wake_fds(epfd: i32, from: u32) -> u32 {
    let Some(l) = link() else { return from };
    let n = l.nworkers.load(Ordering::Acquire);
    let control = l.control.load(Ordering::Acquire);
    if from == 0 && control >= 0 {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: CONTROL_TAG,
        };
        // SAFETY: adding our control socket to the application's epoll instance.
        unsafe { real::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, control, &mut ev) };
    }
    for w in from..n {
        let fd = l.workers[w as usize].app_wake.load(Ordering::Acquire);
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: WAKE_TAG,
        };
        // SAFETY: adding our eventfd to the application's epoll instance.
        unsafe { real::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    }
    n
}

/// Threads blocked in a ustack call, by the private eventfd each sleeps on (-1: free).
/// The worker eventfds are shared by every sleeping thread, and whichever wakes first
/// drains them; so a thread that handled messages wakes every blocked thread through
/// its own descriptor, and each re-checks its socket.
const BLOCKED_SLOTS: usize = 256;
static BLOCKED_FDS: [AtomicI32; BLOCKED_SLOTS] = [const { AtomicI32::new(-1) }; BLOCKED_SLOTS];

thread_local! {
    static PRIVATE_WAKE: Cell<i32> = const { Cell::new(-1) };
}

/// A thread's registration as blocked; dropped when it wakes.
#[derive(Debug)]
pub struct Blocked {
    fd: i32,
    slot: Option<usize>,
}

impl Blocked {
    /// The descriptor to add to the sleep's poll set (-1: none, the worker eventfds
    /// are re-signalled instead).
    pub fn fd(&self) -> i32 {
        self.fd
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        if let Some(s) = self.slot {
            BLOCKED_FDS[s].store(-1, Ordering::Release);
        }
        BLOCKED.fetch_sub(1, Ordering::SeqCst);
        if self.fd >= 0 {
            drain_eventfd(self.fd);
        }
    }
}

/// Counts this thread as blocked (before its last look at its socket: see [`pump`]).
pub fn enter_blocked() -> Blocked {
    let mut fd = PRIVATE_WAKE.with(|c| c.get());
    if fd < 0 {
        fd = crate::internal_fd::eventfd();
        PRIVATE_WAKE.with(|c| c.set(fd));
    }
    let slot = (fd >= 0)
        .then(|| {
            BLOCKED_FDS.iter().position(|s| {
                s.compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            })
        })
        .flatten();
    BLOCKED.fetch_add(1, Ordering::SeqCst);
    Blocked {
        fd: if slot.is_some() { fd } else { -1 },
        slot,
    }
}

fn wake_blocked(l: &Link, w: usize) {
    let mut unregistered = BLOCKED.load(Ordering::SeqCst) as usize;
    for s in BLOCKED_FDS.iter() {
        let fd = s.load(Ordering::Acquire);
        if fd >= 0 {
            signal(fd);
            unregistered = unregistered.saturating_sub(1);
        }
    }
    if unregistered > 0 {
        // Threads past the slot table sleep on the worker eventfds only.
        signal(l.workers[w].app_wake.load(Ordering::Acquire));
    }
}

/// After a sleep on worker eventfds: resets those that fired.
pub fn woken_by(fds: &[libc::pollfd]) {
    for p in fds {
        if p.revents != 0 {
            drain_eventfd(p.fd);
        }
    }
}

fn notify(rec: &SocketRecord) {
    let (watchers, n) = {
        let io = rec.lock_io();
        (io.watchers, io.nwatchers)
    };
    crate::uring::notify(rec, &watchers[..n], false);
}

fn on_message(msg: &Msg) {
    match msg.kind() {
        Some(MsgKind::Bound) => {
            if let Some(rec) = by_cookie(msg.cookie) {
                let mut io = rec.lock_io();
                if io.us.cookie == msg.cookie {
                    io.us.bound = Some(msg.result);
                    io.us.listener = msg.arg;
                }
            }
        }
        Some(MsgKind::Accepted) => {
            let queued = by_cookie(msg.cookie).is_some_and(|rec| {
                let ok = {
                    let mut io = rec.lock_io();
                    let us = &mut io.us;
                    let ok = us.cookie == msg.cookie
                        && us.phase == Phase::Listening
                        && us.accept_queue.len() < session::ACCEPT_QUEUE_MAX;
                    if ok {
                        us.accept_queue.push_back(session::Pending {
                            session: msg.session,
                            local: msg.local,
                            remote: msg.remote,
                        });
                    }
                    ok
                };
                if ok {
                    notify(rec);
                }
                ok
            });
            if !queued {
                abort_session(msg.session);
            }
        }
        Some(MsgKind::Connected) => {
            let taken = by_cookie(msg.cookie).is_some_and(|rec| {
                let ok = {
                    let mut io = rec.lock_io();
                    let us = &mut io.us;
                    let ok = us.cookie == msg.cookie && us.phase == Phase::Connecting;
                    if ok {
                        if msg.result == 0 && msg.session != NO_SESSION {
                            us.phase = Phase::Connected;
                            us.session = msg.session;
                            us.local = msg.local;
                            us.remote = msg.remote;
                            if us.cork {
                                // TCP_CORK set while connecting: before any byte is written.
                                if let Some((_, tx)) = fifos(msg.session) {
                                    tx.producer_set_cork(proto::cork::OPTION, true);
                                }
                            }
                        } else {
                            us.phase = Phase::Failed;
                            us.error = if msg.result > 0 {
                                msg.result
                            } else {
                                libc::ECONNREFUSED
                            };
                        }
                    }
                    ok
                };
                if ok {
                    if msg.result == 0 && msg.session != NO_SESSION {
                        bind_session(msg.session, rec);
                    }
                    notify(rec);
                }
                ok
            });
            if !taken && msg.result == 0 {
                abort_session(msg.session);
            }
        }
        Some(MsgKind::Rx) => {
            if let Some(rec) = session_rec(msg.session) {
                // Re-armed before the watchers look, so bytes after their look post anew
                // (a reader that consumed these bytes before this message was taken
                // would otherwise sleep on a flag still set: a 10 s stall of a Python
                // socket with a timeout, ustack threaded_blocking test).
                if let Some((rx, _)) = fifos(msg.session) {
                    rx.consumer_clear_event();
                }
                notify(rec);
            }
        }
        Some(MsgKind::TxSpace) => {
            if let Some(rec) = session_rec(msg.session) {
                notify(rec);
            }
        }
        Some(MsgKind::Disconnected) => end_session(msg.session, 0),
        Some(MsgKind::Reset) => end_session(
            msg.session,
            if msg.result > 0 {
                msg.result
            } else {
                libc::ECONNRESET
            },
        ),
        _ => {}
    }
}

/// The peer ended `session`: orderly (`error` 0) or by a reset (`error` its errno).
fn end_session(session: u64, error: i32) {
    if let Some(rec) = session_rec(session) {
        apply_end(rec, error);
        return;
    }
    let i = proto::session_index(session) as usize;
    let (Some(slot), Some(err)) = (EARLY_END.get(i), EARLY_ERROR.get(i)) else {
        return;
    };
    // A reset after an orderly end still wins (the kernel reports ECONNRESET then).
    if error != 0 || slot.load(Ordering::Acquire) != session {
        err.store(error, Ordering::Relaxed);
    }
    slot.store(session, Ordering::SeqCst);
    // accept() may have bound the session between the look-up above and the store; then
    // it may also have missed the store, and whichever side swaps the slot applies it.
    if let Some(rec) = session_rec(session) {
        take_early_end(session, rec);
    }
}

/// Called by accept() once `session` is bound to `rec`: applies an end stackd reported
/// while the session still waited in the accept queue.
pub fn take_early_end(session: u64, rec: &SocketRecord) {
    let i = proto::session_index(session) as usize;
    let (Some(slot), Some(err)) = (EARLY_END.get(i), EARLY_ERROR.get(i)) else {
        return;
    };
    if slot
        .compare_exchange(session, NO_SESSION, Ordering::SeqCst, Ordering::SeqCst)
        .is_ok()
    {
        apply_end(rec, err.load(Ordering::Relaxed));
    }
}

fn apply_end(rec: &SocketRecord, error: i32) {
    rec.lock_io().us.peer_ended(error);
    notify(rec);
}

/// The socket that owns `session`, if its record still names it.
fn session_rec(session: u64) -> Option<&'static SocketRecord> {
    let rec = by_session(session)?;
    (rec.lock_io().us.session == session).then_some(rec)
}

fn abort_session(session: u64) {
    if session != NO_SESSION {
        let mut m = Msg::for_session(MsgKind::Close, session);
        m.flags = proto::msg_flags::ABORT;
        let _ = post(&m);
    }
}

/// fork child: the parent's link is not ours. Its descriptors are closed and its segment
/// unmapped; connections still marked ustack report a reset (`Phase::Orphaned`), and
/// listeners keep only their kernel side (stackd's side stays with the parent).
pub fn after_fork_child() {
    let p = LINK.swap(core::ptr::null_mut(), Ordering::AcqRel);
    if p.is_null() {
        return;
    }
    // SAFETY: leaked Box from attach; the child is single-threaded here and nothing else
    // holds views into the segment once every socket is orphaned below.
    let l = unsafe { &*p };
    let _ = l.pid;
    for id in 0..SOCKETS.high_water() {
        let Some(rec) = SOCKETS.get(id) else { continue };
        if rec.engine() == crate::socket::Engine::Ustack {
            let mut io = rec.lock_io();
            if io.us.phase == Phase::Listening {
                // Still a kernel listener; the child listens in stackd through its own
                // attachment when it first accepts (`io::join`).
                io.us.cookie = 0;
                io.us.joined = false;
                io.us.passive = false;
            } else {
                io.us.phase = Phase::Orphaned;
                io.us.session = NO_SESSION;
            }
            io.us.accept_queue.clear();
        }
    }
    for w in &l.workers {
        close_fd(w.app_wake.swap(-1, Ordering::AcqRel));
        close_fd(w.stack_wake.swap(-1, Ordering::AcqRel));
    }
    close_fd(l.control.swap(-1, Ordering::AcqRel));
    // SAFETY: the segment mapping of the parent's link; no view of it is used again.
    unsafe { libc::munmap(l.segment.base().cast(), l.map_len) };
    for s in BY_SESSION.iter() {
        s.store(0, Ordering::Relaxed);
    }
    EPOCH.fetch_add(1, Ordering::AcqRel);
    STATE.store(UNTRIED, Ordering::Release);
}
