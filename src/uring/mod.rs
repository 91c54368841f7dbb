//! The `uring` engine: accelerated TCP sockets on per-thread io_uring rings.
//!
//! ## Receive
//! A socket's first interest in input (EPOLLIN registered, poll()ed, or a read that
//! finds nothing queued) arms one multishot recv on the ring of the calling thread,
//! which becomes the socket's *owner*. Completions queue the filled provided buffers on
//! the socket ([`queues::RxQueue`]); reads copy out across buffers and give them back.
//! Above `RINGSHIM_RECV_CAP` queued bytes the multishot is not re-armed, so TCP flow
//! control pushes back on the peer.
//!
//! ## Send
//! With nothing queued, a write from a thread that does not wait through the shim goes
//! straight to the kernel (exactly the kernel's semantics). On an event-loop thread the
//! bytes are copied into the socket's [`queues::TxQueue`] and one SENDMSG is queued on
//! the ring; it reaches the kernel with the loop's next wait, so a reply costs no
//! system call of its own. One send is in flight per socket (only a first attempt is
//! ordered, liburing#1001); short sends continue from where they stopped. Errors are
//! reported by the next call, SO_ERROR and EPOLLERR.
//!
//! ## Lifetimes
//! close() cancels the receive first (a pending recv holds its own file reference and
//! would keep the connection open), then keeps draining queued bytes on a private dup
//! of the descriptor for up to `RINGSHIM_CLOSE_DRAIN_MS`, like the kernel's own close.
//! fork children never touch the parent's rings: their copies of accelerated sockets
//! deliver what was already received and then use the kernel.

pub mod queues;
pub mod ring;
pub mod wait;

use crate::errno::{self, Errno};
use crate::real;
use crate::socket::{Engine, SocketRecord, SOCKETS};
use crate::stats;
use core::ffi::c_int;
use core::sync::atomic::Ordering;
use io_uring::{opcode, types};
use queues::{RxBuf, RxQueue, TxQueue};
use ring::{Op, Request, Ring};
use ringshim_common::config::Config;
use ringshim_common::stats::Counter;

/// Epoll instances one socket can be registered in while accelerated.
pub const MAX_WATCHERS: usize = 4;
const SEND_IOVS: usize = 8;

/// Per-socket state of the ring engine, guarded by the record's mutex.
pub struct SockIo {
    /// 1 + id of the ring holding this socket's operations; 0: none.
    pub owner: u32,
    /// Generation of the record when it was activated (carried in user_data).
    pub gen: u32,
    /// The fd ring operations use (a private dup once the application closed it).
    pub fd: i32,
    pub rx: RxQueue,
    pub recv_armed: bool,
    /// The multishot was not re-armed because the queue reached its cap.
    pub recv_paused: bool,
    pub eof: bool,
    /// Receive error to report once (ECONNRESET...).
    pub rx_error: i32,
    pub tx: TxQueue,
    /// Bytes covered by the SENDMSG in flight (0: none).
    pub send_inflight: usize,
    /// The ring batch the SENDMSG in flight was pushed in (see [`Ring::batch`]): while
    /// that batch is open the kernel has not read its msghdr, and bytes queued behind
    /// it join it instead of waiting for its completion (one send for a response's
    /// header and body, which is what TCP_CORK and the kernel's own coalescing give).
    send_batch: Option<u64>,
    send_iov: [libc::iovec; SEND_IOVS],
    send_msg: libc::msghdr,
    /// Send error: every later write fails with it.
    pub tx_error: i32,
    /// Error for the next SO_ERROR query.
    pub so_error: i32,
    pub shut_wr_pending: bool,
    pub shut_wr_done: bool,
    /// The application closed the last alias; queued bytes still draining.
    pub closing: bool,
    /// The application closed the socket and nothing is left to send: completions
    /// still in flight only give their buffers back.
    pub dead: bool,
    /// The peer reset the connection (reported as HUP from now on, EPIPE on send).
    pub peer_reset: bool,
    /// The send error has been returned to the application once.
    pub error_reported: bool,
    /// A write the kernel made directly (sendfile, splice, a direct send) found the
    /// socket buffer full: not writable until the poll armed on ring `wpoll_ring - 1`
    /// says so.
    pub kernel_wfull: bool,
    pub wpoll_ring: u32,
    pub drain_deadline_ms: u64,
    /// Rings cannot be used (fork child, demotion): deliver what is queued, then kernel.
    pub detached: bool,
    /// (epoll id, interest slot) of each epoll instance watching this socket.
    pub watchers: [(u32, u32); MAX_WATCHERS],
    pub nwatchers: usize,
    /// Threads blocked on this socket outside its owner ring (futex on the record).
    pub waiters: u32,
    /// The ustack engine's state of this socket (inactive on every other engine). It
    /// lives here so the merged readiness and its watcher lists serve both engines.
    pub us: crate::ustack::UsSock,
}

// SAFETY: the raw pointers in `send_msg`/`send_iov` point into this same value (a
// type-stable record) or into its queue's chunks; the mutex serialises access.
unsafe impl Send for SockIo {}

impl Default for SockIo {
    fn default() -> Self {
        Self::new()
    }
}

impl SockIo {
    pub const fn new() -> SockIo {
        SockIo {
            owner: 0,
            gen: 0,
            fd: -1,
            rx: RxQueue::new(),
            recv_armed: false,
            recv_paused: false,
            eof: false,
            rx_error: 0,
            tx: TxQueue::new(),
            send_inflight: 0,
            send_batch: None,
            send_iov: [libc::iovec {
                iov_base: core::ptr::null_mut(),
                iov_len: 0,
            }; SEND_IOVS],
            // SAFETY: msghdr is plain data; all-zero is valid (no name, no control).
            send_msg: unsafe { core::mem::zeroed() },
            tx_error: 0,
            so_error: 0,
            shut_wr_pending: false,
            shut_wr_done: false,
            closing: false,
            dead: false,
            peer_reset: false,
            error_reported: false,
            kernel_wfull: false,
            wpoll_ring: 0,
            drain_deadline_ms: 0,
            detached: false,
            watchers: [(0, 0); MAX_WATCHERS],
            nwatchers: 0,
            waiters: 0,
            us: crate::ustack::UsSock::new(),
        }
    }

    pub fn reset(&mut self) {
        self.rx.clear(&mut release_buffer);
        self.tx.clear();
        let watchers_cleared = SockIo::new();
        let rx = core::mem::take(&mut self.rx);
        let tx = core::mem::take(&mut self.tx);
        let mut us = core::mem::take(&mut self.us);
        us.clear();
        *self = watchers_cleared;
        self.rx = rx;
        self.tx = tx;
        self.us = us;
    }

    fn owner_ring(&self) -> Option<&'static Ring> {
        if self.owner == 0 {
            return None;
        }
        ring::by_id((self.owner - 1) as u16)
    }

    /// Nothing of this socket is in flight on any ring: ownership may move.
    fn idle_on_rings(&self) -> bool {
        !self.recv_armed && self.send_inflight == 0
    }

    /// The kernel-equivalent readiness (EPOLL* bits) of this socket.
    pub fn events(&self, send_cap: usize) -> u32 {
        if self.us.active() {
            return crate::ustack::events_of(&self.us);
        }
        let mut ev = 0u32;
        if !self.rx.is_empty() || self.eof || self.rx_error != 0 {
            ev |= (libc::EPOLLIN | libc::EPOLLRDNORM) as u32;
        }
        if self.eof {
            ev |= libc::EPOLLRDHUP as u32;
        }
        if self.tx_error != 0 || self.so_error != 0 {
            ev |= libc::EPOLLERR as u32;
        }
        let write_closed = self.shut_wr_pending || self.shut_wr_done;
        if self.tx_error != 0 || (self.eof && write_closed) || self.peer_reset {
            ev |= libc::EPOLLHUP as u32;
        }
        if self.tx_error != 0
            || write_closed
            || (self.tx.bytes() <= send_cap / 2 && !self.kernel_wfull)
        {
            ev |= (libc::EPOLLOUT | libc::EPOLLWRNORM) as u32;
        }
        ev
    }

    /// No byte, receive or send of this socket is held by the shim or a ring.
    pub fn holds_nothing(&self) -> bool {
        !self.us.active()
            && self.rx.is_empty()
            && !self.recv_armed
            && self.tx.is_empty()
            && self.send_inflight == 0
            && !self.shut_wr_pending
            && self.tx_error == 0
            && self.so_error == 0
            && self.wpoll_ring == 0
    }

    pub fn add_watcher(&mut self, ep: u32, slot: u32) -> bool {
        if self.nwatchers == MAX_WATCHERS {
            return false;
        }
        self.watchers[self.nwatchers] = (ep, slot);
        self.nwatchers += 1;
        true
    }

    pub fn remove_watcher(&mut self, ep: u32, slot: u32) {
        if let Some(i) = self.watchers[..self.nwatchers]
            .iter()
            .position(|&w| w == (ep, slot))
        {
            self.watchers[i] = self.watchers[self.nwatchers - 1];
            self.nwatchers -= 1;
        }
    }
}

/// Gives a received buffer back to the ring it came from.
pub fn release_buffer(ring_id: u16, bid: u16) {
    if let Some(r) = ring::by_id(ring_id) {
        r.give_back(bid);
    }
}

static AVAILABLE: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Decides once, at load, whether the engine can run here; logs why not.
pub fn probe(cfg: &Config) -> bool {
    if let Some(e) = cfg.simulate_uring_failure {
        crate::log_warn!("io_uring unavailable (simulated errno {e} by RINGSHIM_SIMULATE_URING_FAILURE); sockets stay on the kernel path");
        return false;
    }
    let mut small = cfg.clone();
    small.sq_entries = 8;
    small.cq_entries = 16;
    let ok = match ring::build_uring(&small) {
        Ok(probe_ring) => {
            // Setup alone proves little: a seccomp profile may allow io_uring_setup and
            // refuse io_uring_enter or io_uring_register. Exercise both.
            let verdict = ring::exercise(&probe_ring.0);
            if verdict.is_ok() && probe_ring.0.params().is_setup_sqpoll() {
                ring::anchor_sqpoll(std::os::fd::AsRawFd::as_raw_fd(&probe_ring.0));
            }
            // Kept, not dropped: tearing a ring down queues work that interrupts this
            // thread's next blocking call with a spurious EINTR.
            core::mem::forget(probe_ring);
            match verdict {
                Ok(()) => true,
                Err((what, Errno(e))) => {
                    crate::log_warn!("io_uring unavailable ({what} failed, errno {e}: a seccomp filter allows only part of io_uring?); sockets stay on the kernel path");
                    false
                }
            }
        }
        Err(Errno(e)) => {
            let why = match e {
                libc::EPERM => {
                    "EPERM: blocked by seccomp, or kernel.io_uring_disabled forbids this user"
                }
                libc::ENOSYS => "ENOSYS: kernel without io_uring, or a seccomp filter",
                libc::ENOMEM => "ENOMEM: RLIMIT_MEMLOCK or memory cgroup limit",
                _ => "io_uring_setup failed",
            };
            crate::log_warn!(
                "io_uring unavailable ({why}, errno {e}); sockets stay on the kernel path"
            );
            false
        }
    };
    AVAILABLE.store(ok, Ordering::Release);
    ok
}

#[inline]
pub fn available() -> bool {
    AVAILABLE.load(Ordering::Acquire)
}

fn cfg() -> &'static Config {
    crate::init::config()
}

fn now_ms() -> u64 {
    // SAFETY: valid out-pointer.
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Moves a connected socket onto the ring engine. Registrations the application made
/// in kernel epoll sets (before a non-blocking connect finished) move into the shim.
pub fn activate(rec: &'static SocketRecord, fd: c_int) {
    if !available() {
        return;
    }
    if ring::mine().is_none() {
        // This thread cannot have a ring (its creation failed and was logged): the
        // socket stays on the kernel path rather than depend on one.
        stats::bump(Counter::Fallbacks);
        return;
    }
    {
        let mut io = rec.lock_io();
        io.reset();
        io.gen = rec.generation.load(Ordering::Acquire);
        io.fd = fd;
    }
    rec.engine.store(Engine::Uring as u8, Ordering::Release);
    stats::bump(Counter::SocketsOnUring);
    wait::adopt_kernel_registrations(rec, fd);
}

/// Wakes whatever waits on this socket: epoll instances watching it, and threads
/// blocked on it. Called with the socket's lock released.
pub fn notify(rec: &SocketRecord, watchers: &[(u32, u32)], waiters: bool) {
    for &(ep, slot) in watchers {
        wait::mark_ready(ep, slot);
    }
    let remote = rec.remote_waker().swap(0, Ordering::AcqRel);
    if remote != 0 {
        if let Some(r) = ring::by_id((remote - 1) as u16) {
            r.wake();
        }
    }
    if waiters {
        wake_waiters(rec);
    }
}

fn wake_waiters(rec: &SocketRecord) {
    let word = rec.wake_seq();
    word.fetch_add(1, Ordering::Release);
    // SAFETY: futex wake on an AtomicU32 inside a type-stable record.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        )
    };
}

/// Arms the socket's receive if it should be armed, on its owner ring (taking
/// ownership when nothing of it is in flight elsewhere).
fn ensure_recv(rec: &SocketRecord, io: &mut SockIo) {
    if io.us.active() {
        // stackd pushes bytes into the session's fifo: nothing to arm.
        return;
    }
    if io.recv_armed || io.eof || io.rx_error != 0 || io.detached || io.closing || io.dead {
        return;
    }
    let c = cfg();
    // A socket may hold at most a 64th of the thread's buffers (and RECV_CAP bytes):
    // one slow reader must not starve every other connection of the thread.
    let max_bufs = (c.buf_count as usize / 64).clamp(4, queues::RX_SLOTS - 8);
    if io.rx.bytes() >= c.recv_cap as usize || queues::RX_SLOTS - io.rx.slots_free() >= max_bufs {
        if !io.recv_paused {
            stats::bump(Counter::RecvPaused);
        }
        io.recv_paused = true;
        return;
    }
    io.recv_paused = false;
    let Some(mine) = ring::mine() else {
        return;
    };
    // Only a thread that waits through the shim reaps its ring: a receive armed
    // anywhere else would never complete. Such threads read directly instead.
    let movable = io.owner == 0 || (io.owner != u32::from(mine.id) + 1 && io.idle_on_rings());
    if movable && mine.loop_thread() {
        io.owner = u32::from(mine.id) + 1;
    }
    let id = rec.id.load(Ordering::Relaxed);
    if io.owner == 0 {
        return;
    }
    if io.owner == u32::from(mine.id) + 1 {
        mine.push(ring::recv_multi(io.fd, id, io.gen));
        mine.recv_started();
        io.recv_armed = true;
    } else if let Some(owner) = io.owner_ring() {
        owner.post_request(id, io.gen, Request::ArmRecv);
    }
}

/// The kernel wrote on the socket itself (sendfile, splice, a direct send) and stopped
/// short: the socket buffer is full. Readiness must say "not writable" until the
/// kernel says otherwise, or an edge-triggered loop would wait for an EPOLLOUT that
/// never comes.
pub fn kernel_write_blocked(rec: &'static SocketRecord) {
    // Only a thread that waits through the shim reaps the poll's completion.
    let Some(mine) = ring::current().filter(|r| r.loop_thread()) else {
        return;
    };
    let mut io = rec.lock_io();
    if io.detached || io.dead || io.closing {
        return;
    }
    io.kernel_wfull = true;
    if io.wpoll_ring != 0 {
        return;
    }
    let id = rec.id.load(Ordering::Relaxed);
    mine.push(
        opcode::PollAdd::new(types::Fd(io.fd), libc::POLLOUT as u32)
            .build()
            .user_data(ring::user_data(Op::WriteReady, id, io.gen)),
    );
    io.wpoll_ring = u32::from(mine.id) + 1;
}

/// Arms the POLLOUT poll that clears `kernel_wfull` and resumes queued sends.
fn arm_write_ready(ring: &Ring, rec: &SocketRecord, io: &mut SockIo) {
    if io.wpoll_ring != 0 {
        return;
    }
    let id = rec.id.load(Ordering::Relaxed);
    ring.push(
        opcode::PollAdd::new(types::Fd(io.fd), libc::POLLOUT as u32)
            .build()
            .user_data(ring::user_data(Op::WriteReady, id, io.gen)),
    );
    io.wpoll_ring = u32::from(ring.id) + 1;
}

fn on_write_ready(id: u32, gen: u32) {
    let Some(rec) = socket_for(id, gen) else {
        return;
    };
    let mut io = rec.lock_io();
    io.wpoll_ring = 0;
    io.kernel_wfull = false;
    // Sends that came back with EAGAIN resume now.
    submit_send(rec, &mut io);
    let (watchers, n, waiters) = (io.watchers, io.nwatchers, io.waiters > 0);
    drop(io);
    notify(rec, &watchers[..n], waiters);
}

/// Queues the next SENDMSG for the socket's queued bytes on its owner ring.
fn submit_send(rec: &SocketRecord, io: &mut SockIo) {
    if io.tx.is_empty() || io.detached {
        return;
    }
    let mine = ring::mine();
    if io.send_inflight != 0 {
        grow_unsubmitted_send(io, mine);
        return;
    }
    if let Some(m) = mine {
        let moving = io.owner != u32::from(m.id) + 1 && io.idle_on_rings() && m.loop_thread();
        if io.owner == 0 || moving {
            io.owner = u32::from(m.id) + 1;
        }
    }
    let id = rec.id.load(Ordering::Relaxed);
    match (mine, io.owner_ring()) {
        (Some(m), Some(o)) if core::ptr::eq(m, o) => {
            let n = io.tx.front_iovecs(&mut io.send_iov);
            io.send_inflight = io.send_iov[..n].iter().map(|v| v.iov_len).sum();
            io.send_msg.msg_iov = io.send_iov.as_mut_ptr();
            io.send_msg.msg_iovlen = n as _;
            io.send_batch = m.batch();
            // No MSG_WAITALL: io_uring retries a short send internally, and when the
            // retry meets a reset it consumes the socket's error yet reports only the
            // bytes sent before it; the receive then sees a clean end-of-file and the
            // reset is lost. A short completion is resubmitted by `on_send` instead,
            // and that send gets the error.
            let sqe = opcode::SendMsg::new(types::Fd(io.fd), &io.send_msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
                .user_data(ring::user_data(Op::Send, id, io.gen));
            m.push(sqe);
            m.send_started();
            stats::bump(Counter::SendSubmissions);
        }
        (_, Some(o)) => o.post_request(id, io.gen, Request::Send),
        _ => {}
    }
}

/// Widens the SENDMSG in flight to every queued byte its iovecs can hold, if the
/// kernel has not read it yet (same ring, same open batch).
fn grow_unsubmitted_send(io: &mut SockIo, mine: Option<&'static Ring>) {
    let Some(m) = mine else { return };
    let same_ring = io.owner_ring().is_some_and(|o| core::ptr::eq(m, o));
    if !same_ring || io.send_batch.is_none() || io.send_batch != m.batch() {
        return;
    }
    let n = io.tx.front_iovecs(&mut io.send_iov);
    let bytes: usize = io.send_iov[..n].iter().map(|v| v.iov_len).sum();
    if bytes > io.send_inflight {
        io.send_inflight = bytes;
        io.send_msg.msg_iovlen = n as _;
        stats::bump(Counter::SendsCoalesced);
    }
}

/// The socket for a completion, if it is still the same socket (generation check).
fn socket_for(id: u32, gen: u32) -> Option<&'static SocketRecord> {
    let rec = SOCKETS.get(id)?;
    (rec.generation.load(Ordering::Acquire) & ring::GEN_MASK == gen & ring::GEN_MASK).then_some(rec)
}

/// Runs everything pending on this thread's ring: returned buffers, requests from
/// other threads, completions. Returns the number of completions handled.
pub fn process(ring: &Ring) -> usize {
    ring::with_busy(|| process_inner(ring, true))
}

/// [`process`] without entering the kernel: handles only what is already in user
/// memory. The event loop uses this and lets its one wait submit and reap the rest.
pub fn process_local(ring: &Ring) -> usize {
    ring::with_busy(|| process_inner(ring, false))
}

fn process_inner(ring: &Ring, may_enter: bool) -> usize {
    ring.replenish();
    while let Some((id, gen, req)) = ring.next_request() {
        if req == Request::CancelRecv {
            // Issued even if the record was reused meanwhile: the user_data carries the
            // old generation, and a forgotten receive would hold the socket open.
            for op in [Op::Recv, Op::WriteReady] {
                ring.push(
                    opcode::AsyncCancel::new(ring::user_data(op, id, gen))
                        .build()
                        .user_data(ring::user_data(Op::Cancel, 0, 0)),
                );
            }
            continue;
        }
        let Some(rec) = socket_for(id, gen) else {
            continue;
        };
        let mut io = rec.lock_io();
        match req {
            Request::ArmRecv => ensure_recv(rec, &mut io),
            Request::Send => submit_send(rec, &mut io),
            Request::CancelRecv => {}
        }
    }
    if may_enter && (ring.work_pending() || ring.has_unsubmitted()) {
        let _ = ring.submit();
    }
    let mut handled = 0;
    let mut batch = [(0u64, 0i32, 0u32); 128];
    loop {
        let n = ring.take_completions(&mut batch);
        for &(ud, res, flags) in &batch[..n] {
            complete(ring, ud, res, flags);
        }
        handled += n;
        stats::add(Counter::Completions, n as u64);
        if n < batch.len() {
            break;
        }
    }
    ring.replenish();
    // Receives that ran out of buffers retry only as buffers come back, a few per
    // returned buffer: retrying all of them at once just fails again (a storm of
    // ENOBUFS completions). Until then their reads go straight to the kernel.
    let returned = ring.take_returned() as usize;
    if ring.has_starved() && returned > 0 {
        for (id, gen) in ring.take_starved(returned) {
            if let Some(rec) = socket_for(id, gen) {
                let mut io = rec.lock_io();
                ensure_recv(rec, &mut io);
            }
        }
    }
    if !ring.draining().is_empty() {
        check_drain_deadlines(ring);
    }
    handled
}

fn complete(ring: &Ring, ud: u64, res: i32, flags: u32) {
    let (op, id, gen) = ring::decode(ud);
    match op {
        Some(Op::Recv) => on_recv(ring, id, gen, res, flags),
        Some(Op::Send) => on_send(ring, id, gen, res),
        Some(Op::EpollReady) => ring.on_epoll_ready(id, gen),
        Some(Op::Wake) => ring.on_wake(ring::more(flags)),
        Some(Op::PollFd) => wait::on_poll_fd(id, gen, res),
        Some(Op::WriteReady) => on_write_ready(id, gen),
        Some(Op::Cancel) | None => {}
    }
}

fn on_recv(ring: &Ring, id: u32, gen: u32, res: i32, flags: u32) {
    let bid = ring::buffer_select(flags);
    if !ring::more(flags) {
        ring.recv_finished();
    }
    let Some(rec) = socket_for(id, gen) else {
        if let Some(b) = bid {
            ring.give_back(b);
        }
        return;
    };
    let more = ring::more(flags);
    let mut io = rec.lock_io();
    if io.closing || io.detached || io.dead {
        if let Some(b) = bid {
            ring.give_back(b);
        }
        if !more {
            io.recv_armed = false;
        }
        return;
    }
    if !more {
        io.recv_armed = false;
    }
    match (res, bid) {
        (n, Some(b)) if n > 0 => {
            io.rx.push(
                RxBuf {
                    addr: ring.buffer_addr(b),
                    ring: ring.id,
                    bid: b,
                    off: 0,
                    len: n as u32,
                },
                &mut release_buffer,
            );
            stats::add(Counter::BytesReceived, n as u64);
            stats::bump(Counter::RecvCompletions);
            if !io.recv_armed {
                ensure_recv(rec, &mut io);
            }
        }
        (0, None) => io.eof = true,
        (e, _) if e == -libc::ENOBUFS => {
            stats::bump(Counter::NoBuffers);
            ring.starve(id, gen);
        }
        (e, b) if e < 0 => {
            if let Some(b) = b {
                ring.give_back(b);
            }
            if e != -libc::ECANCELED {
                io.rx_error = -e;
                io.peer_reset |= e == -libc::ECONNRESET || e == -libc::EPIPE;
                io.so_error = -e;
            }
        }
        (_, Some(b)) => ring.give_back(b),
        _ => {}
    }
    let (watchers, n, waiters) = (io.watchers, io.nwatchers, io.waiters > 0);
    drop(io);
    notify(rec, &watchers[..n], waiters);
}

fn on_send(ring: &Ring, id: u32, gen: u32, res: i32) {
    ring.send_finished();
    let Some(rec) = socket_for(id, gen) else {
        return;
    };
    let mut io = rec.lock_io();
    io.send_inflight = 0;
    if io.dead {
        io.tx.clear();
        return;
    }
    if res > 0 {
        io.tx.consume(res as usize);
        stats::add(Counter::BytesSent, res as u64);
        if !io.tx.is_empty() {
            submit_send(rec, &mut io);
        } else if io.shut_wr_pending && !io.shut_wr_done {
            io.shut_wr_done = true;
            // SAFETY: plain shutdown of the socket's own fd.
            unsafe { real::shutdown(io.fd, libc::SHUT_WR) };
        }
    } else if res == -libc::EAGAIN || res == -libc::EINTR {
        // The kernel gave the send back without waiting (seen on a non-blocking socket
        // whose buffer was full): the bytes are still ours. Retry once the socket is
        // writable, never drop them.
        arm_write_ready(ring, rec, &mut io);
    } else if res < 0 && res != -libc::ECANCELED {
        io.tx_error = -res;
        io.so_error = -res;
        io.tx.clear();
    } else if res == -libc::ECANCELED {
        io.tx.clear();
    }
    if io.closing && io.tx.is_empty() && io.send_inflight == 0 {
        finish_drain(ring, rec, &mut io, id);
        return;
    }
    let (watchers, n, waiters) = (io.watchers, io.nwatchers, io.waiters > 0);
    drop(io);
    notify(rec, &watchers[..n], waiters);
}

/// The last bytes of a closed socket left: close the private descriptor and free the
/// record.
fn finish_drain(ring: &Ring, rec: &SocketRecord, io: &mut SockIo, id: u32) {
    if io.shut_wr_pending && !io.shut_wr_done {
        // SAFETY: our private dup.
        unsafe { real::shutdown(io.fd, libc::SHUT_WR) };
    }
    // SAFETY: the private dup made at close; nobody else knows this number.
    unsafe { real::close(io.fd) };
    io.fd = -1;
    io.closing = false;
    ring.draining().retain(|&(i, _)| i != id);
    rec.engine.store(Engine::Kernel as u8, Ordering::Release);
    if io.waiters > 0 {
        wake_waiters(rec);
    }
    SOCKETS.release(id);
}

fn check_drain_deadlines(ring: &Ring) {
    let now = now_ms();
    let list: Vec<(u32, u32)> = ring.draining().clone();
    for (id, gen) in list {
        let Some(rec) = socket_for(id, gen) else {
            ring.draining().retain(|&(i, _)| i != id);
            continue;
        };
        let mut io = rec.lock_io();
        if io.closing && now >= io.drain_deadline_ms {
            crate::log_debug!(
                "socket {} close drain timed out with {} bytes unsent",
                id,
                io.tx.bytes()
            );
            io.tx.clear();
            if io.send_inflight != 0 {
                ring.push(
                    opcode::AsyncCancel::new(ring::user_data(Op::Send, id, gen))
                        .build()
                        .user_data(ring::user_data(Op::Cancel, 0, 0)),
                );
                io.drain_deadline_ms = u64::MAX;
            } else {
                finish_drain(ring, rec, &mut io, id);
            }
        }
    }
}

/// Submits queued SQEs and runs the completions they cause right away (cancellations
/// complete through deferred task work, which only an enter with GETEVENTS runs).
pub(crate) fn settle(ring: &Ring) {
    for _ in 0..2 {
        if ring.has_unsubmitted() || ring.work_pending() {
            let _ = ring::with_busy(|| ring.submit());
        }
    }
    process(ring);
}

/// An epoll instance is being closed: this thread's ring stops watching its kernel set
/// (a no-op without a ring, or if another thread's ring held the watch).
pub fn forget_epoll(ep: u32, incarnation: u32) {
    if let Some(r) = ring::current() {
        r.forget_epoll(ep, incarnation);
    }
}

/// Whether this thread's ring holds work only this thread reaps: sends in flight,
/// closed sockets draining, or armed receives. Its waits must then go through the ring
/// even when they watch only kernel fds, or that work would never continue. The
/// receives matter as much as the sends: a thread that read a socket to EAGAIN owns
/// its receive, and if it then sleeps in poll() on a pipe, another thread's epoll_wait
/// on that socket never hears of the next bytes (pl_threads mixed, one run in twenty).
#[inline]
pub fn ring_holds_work() -> bool {
    ring::current().is_some_and(|r| r.holds_work())
}

/// Hands this thread's queued SQEs to the kernel. Cheap when there are none: called
/// before every wait the shim does not serve itself.
#[inline]
pub fn submit_pending() {
    if let Some(r) = ring::current() {
        // From a signal handler that interrupted the shim's own ring call, submitting
        // would touch the queue mid-update: the interrupted call submits anyway.
        if r.has_unsubmitted() && !ring::busy() {
            let _ = ring::with_busy(|| r.submit());
        }
    }
}

/// Raises SIGPIPE for the calling thread, as the kernel does for a send on a closed
/// connection without MSG_NOSIGNAL.
pub(crate) fn sigpipe(flags: c_int) {
    if flags & libc::MSG_NOSIGNAL == 0 {
        // SAFETY: signalling the calling thread.
        unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGPIPE) };
    }
}

/// Blocks until `ready(io)` holds or the timeout passes. On the owner thread the wait is
/// the ring itself; elsewhere a futex on the record, woken by the owner's completions.
fn block_until(
    rec: &SocketRecord,
    timeout_ms: Option<u64>,
    ready: impl Fn(&SockIo) -> bool,
) -> Result<(), Errno> {
    let deadline = timeout_ms.map(|t| now_ms() + t);
    loop {
        let mine = ring::mine();
        let (owner_is_me, seq) = {
            let mut io = rec.lock_io();
            if ready(&io) {
                return Ok(());
            }
            if let Some(m) = mine {
                if io.owner == 0 || (io.owner != u32::from(m.id) + 1 && io.idle_on_rings()) {
                    io.owner = u32::from(m.id) + 1;
                }
            }
            ensure_recv(rec, &mut io);
            submit_send(rec, &mut io);
            let me = mine.is_some_and(|m| io.owner == u32::from(m.id) + 1);
            if !me {
                io.waiters += 1;
            }
            (me, rec.wake_seq().load(Ordering::Acquire))
        };
        let left = match deadline {
            Some(d) => {
                let now = now_ms();
                if now >= d {
                    if !owner_is_me {
                        rec.lock_io().waiters -= 1;
                    }
                    return Err(Errno(libc::EAGAIN));
                }
                Some(d - now)
            }
            None => None,
        };
        let r = if owner_is_me {
            let m = mine.unwrap_or_else(|| unreachable!());
            process(m);
            if ready(&rec.lock_io()) {
                return Ok(());
            }
            let ts = left.map(|l| libc::timespec {
                tv_sec: (l / 1000) as i64,
                tv_nsec: ((l % 1000) * 1_000_000) as i64,
            });
            let r = m.sleep(ts, None, || !ready(&rec.lock_io()));
            process(m);
            r
        } else {
            if let Some(o) = rec.lock_io().owner_ring() {
                o.post_request(
                    rec.id.load(Ordering::Relaxed),
                    rec.lock_io().gen,
                    Request::ArmRecv,
                );
            }
            let ts = left.map(|l| libc::timespec {
                tv_sec: (l / 1000) as i64,
                tv_nsec: ((l % 1000) * 1_000_000) as i64,
            });
            // SAFETY: futex wait on the record's sequence word with our own timeout.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    rec.wake_seq().as_ptr(),
                    libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                    seq,
                    ts.as_ref()
                        .map_or(core::ptr::null(), |t| t as *const libc::timespec),
                )
            };
            rec.lock_io().waiters -= 1;
            if r < 0 && errno::get() == libc::EINTR {
                Err(Errno(libc::EINTR))
            } else {
                Ok(())
            }
        };
        r?;
    }
}

/// SO_RCVTIMEO / SO_SNDTIMEO of the socket, in ms (None: wait forever).
pub(crate) fn socket_timeout(fd: c_int, opt: c_int) -> Option<u64> {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut len = core::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: valid out-buffer and length.
    let r = unsafe {
        real::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut tv as *mut libc::timeval).cast(),
            &mut len,
        )
    };
    if r != 0 || (tv.tv_sec == 0 && tv.tv_usec == 0) {
        return None;
    }
    Some(tv.tv_sec as u64 * 1000 + tv.tv_usec as u64 / 1000)
}

fn iov_total(iov: &[libc::iovec]) -> usize {
    iov.iter()
        .map(|v| v.iov_len)
        .fold(0usize, |a, b| a.saturating_add(b))
}

/// recv()/read()/readv()/recvmsg() on an accelerated socket.
pub fn recv(
    rec: &'static SocketRecord,
    fd: c_int,
    iov: &[libc::iovec],
    flags: c_int,
) -> Result<usize, Errno> {
    stats::bump(Counter::CallsIntercepted);
    if flags & libc::MSG_OOB != 0 {
        demote(rec, "MSG_OOB receive");
        return kernel_recv(fd, iov, flags);
    }
    let want = iov_total(iov);
    let peek = flags & libc::MSG_PEEK != 0;
    let nonblocking = flags & libc::MSG_DONTWAIT != 0 || rec.nonblocking.load(Ordering::Relaxed);
    let waitall = flags & libc::MSG_WAITALL != 0 && !peek && !nonblocking;
    let mut done = 0usize;
    let mut retried = false;
    loop {
        let mut io = rec.lock_io();
        if io.detached && io.rx.is_empty() {
            drop(io);
            finish_detach(rec);
            if done > 0 {
                return Ok(done);
            }
            return kernel_recv(fd, iov, flags);
        }
        if !io.rx.is_empty() && want > done {
            let n = if flags & libc::MSG_TRUNC != 0 {
                io.rx.discard(want - done, &mut release_buffer)
            } else {
                let mut slices: [&mut [u8]; 16] = Default::default();
                let mut ns = 0;
                let mut skip = done;
                for v in iov {
                    if ns == slices.len() {
                        break;
                    }
                    if skip >= v.iov_len {
                        skip -= v.iov_len;
                        continue;
                    }
                    // SAFETY: the caller's iovec describes writable memory of iov_len
                    // bytes (read(2) contract); we write at most that.
                    slices[ns] = unsafe {
                        core::slice::from_raw_parts_mut(
                            (v.iov_base as *mut u8).add(skip),
                            v.iov_len - skip,
                        )
                    };
                    skip = 0;
                    ns += 1;
                }
                io.rx
                    .read_into(&mut slices[..ns], peek, &mut release_buffer)
            };
            done += n;
            stats::bump(Counter::SyscallsAvoided);
            if io.recv_paused && io.rx.bytes() < cfg().recv_cap as usize / 2 {
                ensure_recv(rec, &mut io);
            }
            if !waitall || done == want || io.eof || io.rx_error != 0 {
                return Ok(done);
            }
            continue;
        }
        if done > 0 && (!waitall || want == done) {
            return Ok(done);
        }
        if want == 0 {
            if !io.rx.is_empty() || io.eof {
                return Ok(0);
            }
            // Nothing held by the shim: the kernel's answer for an empty read is exact.
            drop(io);
            let extra = if nonblocking { libc::MSG_DONTWAIT } else { 0 };
            return kernel_recv(fd, iov, flags | extra);
        }
        if io.rx_error != 0 {
            let e = io.rx_error;
            io.rx_error = 0;
            io.so_error = 0;
            io.eof = true;
            if done > 0 {
                return Ok(done);
            }
            return Err(Errno(e));
        }
        if io.eof && done == 0 && io.send_inflight != 0 && !retried {
            // A reset wakes the in-flight send and the receive together; the send takes
            // the socket's error and the receive sees end-of-file. Run the send's
            // completion before answering, so a reset is not reported as a clean EOF.
            if let Some(m) = ring::current() {
                if io.owner == u32::from(m.id) + 1 {
                    drop(io);
                    process(m);
                    retried = true;
                    continue;
                }
            }
        }
        if io.eof && done == 0 && io.tx_error != 0 && !io.error_reported {
            // The ring's send met the reset and took the socket's error, so the receive
            // saw a plain end-of-file. The kernel would have given that error to this
            // read (the application's first call after the reset): report it once
            // here; later writes get EPIPE.
            let e = io.tx_error;
            io.error_reported = true;
            io.tx_error = libc::EPIPE;
            io.so_error = 0;
            return Err(Errno(e));
        }
        if io.eof {
            if done == 0 && flags & libc::MSG_PEEK == 0 && io.holds_nothing() {
                drop(io);
                retire_after_eof(rec);
            }
            return Ok(done);
        }
        if !io.recv_armed && !io.closing && done == 0 {
            // Nothing queued and no receive in flight anywhere: the kernel socket holds
            // the next bytes, so a direct call is exact and costs what it always cost.
            drop(io);
            let r = kernel_recv(
                fd,
                iov,
                flags | if nonblocking { libc::MSG_DONTWAIT } else { 0 },
            );
            match r {
                Err(Errno(libc::EAGAIN)) if nonblocking => {
                    let mut io = rec.lock_io();
                    ensure_recv(rec, &mut io);
                    return Err(Errno(libc::EAGAIN));
                }
                Ok(0) if flags & libc::MSG_PEEK == 0 => {
                    let idle = {
                        let mut io = rec.lock_io();
                        io.eof = true;
                        io.holds_nothing()
                    };
                    if idle {
                        retire_after_eof(rec);
                    }
                    return Ok(0);
                }
                Err(Errno(e)) if e == libc::ECONNRESET => {
                    let mut io = rec.lock_io();
                    io.peer_reset = true;
                    io.eof = true;
                    return Err(Errno(e));
                }
                other => return other,
            }
        }
        ensure_recv(rec, &mut io);
        if nonblocking && !retried {
            // Bytes may already have arrived with their completion still deferred in
            // this thread's ring: run it before answering EAGAIN.
            if let Some(m) = ring::current() {
                if io.owner == u32::from(m.id) + 1 && (m.work_pending() || m.has_unsubmitted()) {
                    drop(io);
                    process(m);
                    retried = true;
                    continue;
                }
            }
        }
        if nonblocking {
            return if done > 0 {
                Ok(done)
            } else {
                Err(Errno(libc::EAGAIN))
            };
        }
        drop(io);
        let timeout = socket_timeout(fd, libc::SO_RCVTIMEO);
        match block_until(rec, timeout, |io| {
            !io.rx.is_empty() || io.eof || io.rx_error != 0 || io.detached
        }) {
            Ok(()) => {}
            Err(e) if done > 0 && e.0 == libc::EAGAIN => return Ok(done),
            Err(e) => return Err(e),
        }
    }
}

fn kernel_recv(fd: c_int, iov: &[libc::iovec], flags: c_int) -> Result<usize, Errno> {
    // Sends this thread queued on its ring go first: the peer may be waiting for them
    // before it answers what this call waits for.
    submit_pending();
    // SAFETY: all-zero msghdr is valid; the iovecs are the caller's.
    let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: forwarding the caller's buffers to the kernel.
    let r = unsafe { real::recvmsg(fd, &mut msg, flags) };
    if r < 0 {
        Err(errno::last())
    } else {
        Ok(r as usize)
    }
}

fn kernel_send(fd: c_int, iov: &[libc::iovec], flags: c_int) -> Result<usize, Errno> {
    submit_pending();
    // SAFETY: all-zero msghdr is valid; the iovecs are the caller's.
    let mut msg: libc::msghdr = unsafe { core::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: forwarding the caller's buffers to the kernel.
    let r = unsafe { real::sendmsg(fd, &msg, flags) };
    if r < 0 {
        Err(errno::last())
    } else {
        Ok(r as usize)
    }
}

/// send()/write()/writev()/sendmsg() on an accelerated socket.
pub fn send(
    rec: &'static SocketRecord,
    fd: c_int,
    iov: &[libc::iovec],
    flags: c_int,
) -> Result<usize, Errno> {
    stats::bump(Counter::CallsIntercepted);
    if flags & libc::MSG_OOB != 0 {
        demote(rec, "MSG_OOB send");
        return kernel_send(fd, iov, flags);
    }
    let total = iov_total(iov);
    let nonblocking = flags & libc::MSG_DONTWAIT != 0 || rec.nonblocking.load(Ordering::Relaxed);
    let cap = cfg().send_cap as usize;
    let mut accepted = 0usize;
    loop {
        let mut io = rec.lock_io();
        if io.tx_error != 0 {
            let e = io.tx_error;
            io.so_error = 0;
            if e == libc::ECONNRESET {
                // Reported once, as the kernel reports a reset; afterwards EPIPE.
                io.tx_error = libc::EPIPE;
            }
            io.error_reported = true;
            if e == libc::EPIPE {
                sigpipe(flags);
            }
            return if accepted > 0 {
                Ok(accepted)
            } else {
                Err(Errno(e))
            };
        }
        if io.shut_wr_pending || io.shut_wr_done {
            sigpipe(flags);
            return Err(Errno(libc::EPIPE));
        }
        if io.peer_reset && !io.detached {
            // The reset is reported once (by whichever call sees it first), then EPIPE.
            if io.rx_error != 0 {
                let e = io.rx_error;
                io.rx_error = 0;
                io.so_error = 0;
                io.eof = true;
                return Err(Errno(e));
            }
            sigpipe(flags);
            return Err(Errno(libc::EPIPE));
        }
        let loop_thread = ring::current().is_some_and(|r| r.loop_thread());
        if io.detached
            || (io.tx.is_empty()
                && io.send_inflight == 0
                && (!loop_thread || !nonblocking)
                && accepted == 0)
        {
            // Nothing queued: the kernel call is exact. Event-loop threads batch instead.
            drop(io);
            let r = kernel_send(fd, iov, flags);
            match r {
                Ok(n) if n < total => kernel_write_blocked(rec),
                Err(Errno(libc::EAGAIN)) => kernel_write_blocked(rec),
                _ => {}
            }
            return r;
        }
        // Copy as much as the cap allows, across the caller's iovecs.
        let mut skip = accepted;
        for v in iov {
            if skip >= v.iov_len {
                skip -= v.iov_len;
                continue;
            }
            // SAFETY: the caller's iovec describes readable memory (write(2) contract).
            let data = unsafe {
                core::slice::from_raw_parts((v.iov_base as *const u8).add(skip), v.iov_len - skip)
            };
            skip = 0;
            let n = io.tx.push(data, cap);
            accepted += n;
            if n < data.len() {
                break;
            }
        }
        submit_send(rec, &mut io);
        if accepted == total {
            stats::bump(Counter::SyscallsAvoided);
            return Ok(total);
        }
        if nonblocking {
            if accepted == 0 {
                stats::bump(Counter::SendBackpressure);
                return Err(Errno(libc::EAGAIN));
            }
            return Ok(accepted);
        }
        drop(io);
        let timeout = socket_timeout(fd, libc::SO_SNDTIMEO);
        match block_until(rec, timeout, |io| {
            io.tx.bytes() <= cap / 2 || io.tx_error != 0
        }) {
            Ok(()) => {}
            Err(e) if accepted > 0 && e.0 == libc::EAGAIN => return Ok(accepted),
            Err(e) => return if accepted > 0 { Ok(accepted) } else { Err(e) },
        }
    }
}

/// sendfile() to an accelerated socket that still has bytes queued: rather than wait
/// for the queue to drain (a round trip per response for nginx, which writes headers
/// and then sendfile()s the body), the file's bytes are read into the queue behind
/// them — order kept, and the call costs one pread instead of a wait and a sendfile.
/// None: nothing is queued, the real sendfile is exact.
///
/// # Safety
/// `offset` must be null or point to a valid, writable offset (as for sendfile(2)).
pub unsafe fn sendfile_queued(
    rec: &'static SocketRecord,
    in_fd: c_int,
    offset: *mut libc::off64_t,
    count: usize,
) -> Option<Result<usize, Errno>> {
    let cap = cfg().send_cap as usize;
    let mut io = rec.lock_io();
    if io.detached || (io.tx.is_empty() && io.send_inflight == 0) {
        return None;
    }
    if io.tx_error != 0 || io.shut_wr_pending || io.shut_wr_done {
        // The kernel's own answer (EPIPE...) after the queue is dealt with.
        return None;
    }
    let mut pos: libc::off64_t = if offset.is_null() {
        0
    } else {
        // SAFETY: caller's offset pointer, as sendfile(2) reads it.
        unsafe { *offset }
    };
    let r = io.tx.push_with(count, cap, |buf: &mut [u8]| {
        // SAFETY: reading into the queue's free space, of exactly buf.len() bytes.
        let n = unsafe {
            if offset.is_null() {
                real::read(in_fd, buf.as_mut_ptr().cast(), buf.len())
            } else {
                libc::pread64(in_fd, buf.as_mut_ptr().cast(), buf.len(), pos)
            }
        };
        if n < 0 {
            return Err(errno::last());
        }
        pos += n as libc::off64_t;
        Ok(n as usize)
    });
    match r {
        Ok(0) if count > 0 => {
            // Queue full (or end of file): the kernel's sendfile semantics decide.
            drop(io);
            None
        }
        Ok(n) => {
            if !offset.is_null() {
                // SAFETY: as above; sendfile advances the caller's offset.
                unsafe { *offset = pos };
            }
            submit_send(rec, &mut io);
            stats::bump(Counter::SyscallsAvoided);
            Some(Ok(n))
        }
        Err(_) => None,
    }
}

/// Waits until every queued byte of the socket reached the kernel (before sendfile,
/// splice, fork, exec and demotion, which write through the kernel directly).
pub fn flush(rec: &'static SocketRecord) {
    let pending = {
        let io = rec.lock_io();
        !io.tx.is_empty() || io.send_inflight != 0
    };
    if pending {
        let _ = block_until(rec, Some(u64::from(cfg().close_drain_ms)), |io| {
            (io.tx.is_empty() && io.send_inflight == 0) || io.tx_error != 0
        });
    }
}

/// The application uncorks (or sets TCP_NODELAY) to push what it wrote. Bytes queued
/// behind the SENDMSG already handed over would follow the push as a separate send,
/// and Nagle would hold that sub-MSS tail for the peer's delayed ACK (40 ms): let them
/// reach the kernel first, as they would have without the shim. One SENDMSG covering
/// everything (the usual case, see `grow_unsubmitted_send`) leaves with the loop's next
/// wait, right after the option: uncorked, with nothing unacknowledged, it goes out at
/// once, so the extra system call is spent only on a split. Bounded: a socket that cannot take the bytes
/// within a few milliseconds is sending full segments, where Nagle does not matter.
fn flush_before_push(rec: &'static SocketRecord) {
    let split = {
        let io = rec.lock_io();
        !io.detached && io.tx.bytes() > io.send_inflight
    };
    if split {
        // Completed, not merely submitted: an SQPOLL thread may not have run the last
        // SENDMSG yet when the option reaches the kernel.
        let _ = block_until(rec, Some(5), |io| {
            (io.tx.is_empty() && io.send_inflight == 0) || io.tx_error != 0
        });
    }
}

/// Flushes every accelerated socket (exec, fork).
pub fn flush_all() {
    if !available() {
        return;
    }
    let mut fds: Vec<i32> = Vec::new();
    crate::fdtable::for_each(|fd, e| {
        if matches!(e, crate::fdtable::Entry::Socket(_)) {
            fds.push(fd);
        }
    });
    for fd in fds {
        if let Some(rec) = crate::socket::accelerated(fd) {
            flush(rec);
        }
    }
}

/// A thread with a ring is exiting: bytes queued on its ring (sockets it owns, closed
/// sockets still draining) must still leave, so they are flushed now, each bounded by
/// `RINGSHIM_CLOSE_DRAIN_MS`; afterwards nothing of the ring is used again.
pub fn on_thread_exit(ring: &'static Ring) {
    let me = u32::from(ring.id) + 1;
    let deadline = now_ms() + u64::from(cfg().close_drain_ms);
    loop {
        // Reap first, so a completion that just finished the last drain or send ends
        // the loop instead of leading into a sleep nothing would wake.
        process(ring);
        if !submit_exit_sends(ring, me) || now_ms() >= deadline {
            break;
        }
        let left = deadline - now_ms();
        let ts = libc::timespec {
            tv_sec: (left / 1000) as i64,
            tv_nsec: ((left % 1000) * 1_000_000) as i64,
        };
        let _ = ring.sleep(Some(ts), None, || true);
    }
}

/// Resubmits the sends of every socket owned by ring `me`; whether anything (a send or
/// a drain) is still pending on the ring.
fn submit_exit_sends(ring: &Ring, me: u32) -> bool {
    let mut pending = !ring.draining().is_empty();
    for id in 0..SOCKETS.high_water() {
        let Some(rec) = SOCKETS.get(id) else { continue };
        if rec.engine() != Engine::Uring {
            continue;
        }
        let Ok(mut io) = rec.io.try_lock() else {
            continue;
        };
        if io.owner == me && (!io.tx.is_empty() || io.send_inflight != 0) {
            pending = true;
            submit_send(rec, &mut io);
        }
    }
    pending
}

pub fn before_fork() {
    flush_all();
}

/// In the fork child: rings belong to the parent. Accelerated sockets keep the bytes
/// already received (delivered first) and use the kernel afterwards; bytes the parent
/// still had queued to send are the parent's to send.
pub fn after_fork_child() {
    ring::forget_all_after_fork();
    for id in 0..SOCKETS.high_water() {
        let Some(rec) = SOCKETS.get(id) else { continue };
        if rec.engine() != Engine::Uring {
            continue;
        }
        // A lock held by a parent thread at fork time is held forever in the child:
        // such a socket is left alone rather than deadlocking the child.
        let Ok(mut io) = rec.io.try_lock() else {
            continue;
        };
        io.owner = 0;
        io.recv_armed = false;
        io.send_inflight = 0;
        io.tx.clear();
        io.detached = true;
        io.waiters = 0;
        if io.closing {
            // A parent's draining close: the child's copy of the private dup is closed.
            // SAFETY: our private descriptor.
            unsafe { real::close(io.fd) };
            io.closing = false;
        }
    }
    wait::FORK_EPOCH.fetch_add(1, Ordering::AcqRel);
}

/// Moves a socket to the kernel for good, after flushing queued sends; received bytes
/// are still delivered first.
pub fn demote(rec: &'static SocketRecord, why: &str) {
    if rec.engine() != Engine::Uring {
        return;
    }
    flush(rec);
    let id = rec.id.load(Ordering::Relaxed);
    {
        let io = rec.lock_io();
        if io.detached {
            return;
        }
        if io.recv_armed {
            match (ring::current(), io.owner_ring()) {
                (Some(m), Some(o)) if core::ptr::eq(m, o) => {
                    m.push(
                        opcode::AsyncCancel::new(ring::user_data(Op::Recv, id, io.gen))
                            .build()
                            .user_data(ring::user_data(Op::Cancel, 0, 0)),
                    );
                }
                (_, Some(o)) => o.post_request(id, io.gen, Request::CancelRecv),
                _ => {}
            }
        }
    }
    // Wait for the receive to stop so no byte is taken by the ring after this point.
    let _ = block_until(rec, Some(1000), |io| !io.recv_armed);
    rec.lock_io().detached = true;
    stats::bump(Counter::Demotions);
    crate::log_debug!("socket {} demoted to the kernel path: {}", id, why);
    if rec.lock_io().rx.is_empty() {
        finish_detach(rec);
    }
}

/// A detached socket has delivered everything the ring received: it becomes a plain
/// kernel socket, registered in the kernel epoll sets that watch it.
pub(crate) fn finish_detach(rec: &'static SocketRecord) {
    if rec.engine() != Engine::Uring {
        return;
    }
    let watchers = {
        let mut io = rec.lock_io();
        let w = io.watchers;
        let n = io.nwatchers;
        io.nwatchers = 0;
        (w, n)
    };
    rec.route
        .store(crate::route::Route::Demoted as u8, Ordering::Relaxed);
    rec.engine.store(Engine::Kernel as u8, Ordering::Release);
    for &(ep, slot) in &watchers.0[..watchers.1] {
        wait::return_to_kernel(ep, slot);
    }
}

/// The application read end-of-file and the shim holds nothing of the socket any more:
/// it is handed back to the kernel, whose readiness is now exact (a later reset shows up
/// as POLLERR there, while no ring receive could report it after end-of-file).
fn retire_after_eof(rec: &'static SocketRecord) {
    rec.lock_io().detached = true;
    finish_detach(rec);
}

/// The last alias was closed (or the number was reused, `app_close` false). Returns
/// true when the record must stay alive because queued bytes are still draining.
pub fn on_last_close(rec: &'static SocketRecord, app_close: bool) -> bool {
    let id = rec.id.load(Ordering::Relaxed);
    let mut io = rec.lock_io();
    let mine = ring::current();
    let owner_is_me = matches!((mine, io.owner_ring()), (Some(m), Some(o)) if core::ptr::eq(m, o));
    if io.recv_armed {
        let cancel = ring::user_data(Op::Recv, id, io.gen);
        if owner_is_me {
            let m = mine.unwrap_or_else(|| unreachable!());
            m.push(
                opcode::AsyncCancel::new(cancel)
                    .build()
                    .user_data(ring::user_data(Op::Cancel, 0, 0)),
            );
        } else if let Some(o) = io.owner_ring() {
            o.post_request(id, io.gen, Request::CancelRecv);
        }
    }
    if io.wpoll_ring != 0 {
        let cancel = ring::user_data(Op::WriteReady, id, io.gen);
        match (mine, ring::by_id((io.wpoll_ring - 1) as u16)) {
            (Some(m), Some(w)) if core::ptr::eq(m, w) => {
                m.push(
                    opcode::AsyncCancel::new(cancel)
                        .build()
                        .user_data(ring::user_data(Op::Cancel, 0, 0)),
                );
            }
            (_, Some(w)) => w.post_request(id, io.gen, Request::CancelRecv),
            _ => {}
        }
        io.wpoll_ring = 0;
    }
    io.rx.clear(&mut release_buffer);
    io.nwatchers = 0;
    let pending = !io.tx.is_empty() || io.send_inflight != 0;
    if !app_close || !pending || io.detached {
        io.tx.clear();
        io.closing = false;
        io.dead = true;
        drop(io);
        if owner_is_me {
            // The cancelled receive must be gone before the descriptor is: it holds its
            // own reference to the socket and would keep the connection open (no FIN).
            settle(mine.unwrap_or_else(|| unreachable!()));
        }
        return false;
    }
    // SO_LINGER decides: {on, 0} discards (RST), {on, t} blocks up to t, off drains in
    // the background like the kernel.
    let mut linger = libc::linger {
        l_onoff: 0,
        l_linger: 0,
    };
    let mut len = core::mem::size_of::<libc::linger>() as libc::socklen_t;
    // SAFETY: valid out-buffer.
    unsafe {
        real::getsockopt(
            io.fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&mut linger as *mut libc::linger).cast(),
            &mut len,
        )
    };
    if linger.l_onoff != 0 && linger.l_linger == 0 {
        io.tx.clear();
        io.dead = true;
        if let Some(m) = mine.filter(|_| owner_is_me) {
            if io.send_inflight != 0 {
                m.push(
                    opcode::AsyncCancel::new(ring::user_data(Op::Send, id, io.gen))
                        .build()
                        .user_data(ring::user_data(Op::Cancel, 0, 0)),
                );
            }
            drop(io);
            settle(m);
        }
        return false;
    }
    // SAFETY: duplicating the socket's fd, which is still open (the real close has not
    // happened yet).
    let private = unsafe { real::fcntl(io.fd, libc::F_DUPFD_CLOEXEC, 0) };
    if private < 0 {
        drop(io);
        flush(rec);
        return false;
    }
    stats::bump(Counter::ClosesDraining);
    let gen = io.gen;
    if owner_is_me {
        // The in-flight send names the old fd number: hand it to the kernel now,
        // before that number is closed.
        let _ = mine.map(|m| ring::with_busy(|| m.submit()));
    }
    io.fd = private;
    io.closing = true;
    let bound = if linger.l_onoff != 0 {
        linger.l_linger as u64 * 1000
    } else {
        u64::from(cfg().close_drain_ms)
    };
    io.drain_deadline_ms = now_ms() + bound;
    if io.send_inflight == 0 {
        submit_send(rec, &mut io);
    }
    let owner = io.owner_ring();
    drop(io);
    if let Some(o) = owner {
        if o.is_mine() {
            o.add_draining(id, gen);
        }
    }
    if linger.l_onoff != 0 {
        let _ = block_until(rec, Some(bound), |io| !io.closing);
    }
    true
}

pub fn unwatch(rec: &SocketRecord, ep: u32, slot: u32) {
    rec.lock_io().remove_watcher(ep, slot);
}

/// shutdown() on an accelerated socket: SHUT_WR waits behind queued bytes.
pub fn shutdown(rec: &'static SocketRecord, fd: c_int, how: c_int) -> Result<c_int, Errno> {
    if how == libc::SHUT_RD || how == libc::SHUT_RDWR {
        // After SHUT_RD Linux still queues (and returns) bytes that arrive; a multishot
        // receive would see end-of-file instead. Reads go back to the kernel.
        demote(rec, "shutdown(SHUT_RD)");
        if rec.engine() == Engine::Kernel {
            // SAFETY: plain forward.
            let r = unsafe { real::shutdown(fd, how) };
            return if r < 0 { Err(errno::last()) } else { Ok(r) };
        }
    }
    let mut io = rec.lock_io();
    let wr = how == libc::SHUT_WR || how == libc::SHUT_RDWR;
    let rd = how == libc::SHUT_RD || how == libc::SHUT_RDWR;
    if !(libc::SHUT_RD..=libc::SHUT_RDWR).contains(&how) {
        return Err(Errno(libc::EINVAL));
    }
    if wr && (!io.tx.is_empty() || io.send_inflight != 0) && !io.detached {
        io.shut_wr_pending = true;
        if rd {
            // SAFETY: plain shutdown of the read side.
            if unsafe { real::shutdown(fd, libc::SHUT_RD) } < 0 {
                return Err(errno::last());
            }
        }
        let (watchers, n, waiters) = (io.watchers, io.nwatchers, io.waiters > 0);
        drop(io);
        notify(rec, &watchers[..n], waiters);
        return Ok(0);
    }
    // SAFETY: plain forward.
    let r = unsafe { real::shutdown(fd, how) };
    if r < 0 {
        return Err(errno::last());
    }
    if wr {
        io.shut_wr_done = true;
    }
    let (watchers, n, waiters) = (io.watchers, io.nwatchers, io.waiters > 0);
    drop(io);
    notify(rec, &watchers[..n], waiters);
    Ok(r)
}

/// getsockopt: SO_ERROR reports errors the ring saw; everything else is the kernel's.
///
/// # Safety
/// As getsockopt(2).
pub unsafe fn getsockopt(
    rec: &SocketRecord,
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut libc::c_void,
    len: *mut libc::socklen_t,
) -> Result<c_int, Errno> {
    if level == libc::SOL_SOCKET && name == libc::SO_ERROR && !val.is_null() && !len.is_null() {
        let mut io = rec.lock_io();
        // SAFETY: caller contract: *len readable.
        if io.so_error != 0 && unsafe { *len } as usize >= core::mem::size_of::<c_int>() {
            let e = io.so_error;
            io.so_error = 0;
            // SAFETY: caller contract: at least *len >= 4 writable bytes.
            unsafe {
                *(val as *mut c_int) = e;
                *len = core::mem::size_of::<c_int>() as libc::socklen_t;
            }
            return Ok(0);
        }
    }
    // SAFETY: plain forward.
    let r = unsafe { real::getsockopt(fd, level, name, val, len) };
    if r < 0 {
        Err(errno::last())
    } else {
        Ok(r)
    }
}

/// Options that change the data path in ways the ring engine does not model send the
/// socket back to the kernel before they take effect; options that push out pending
/// data (uncorking, enabling TCP_NODELAY) first let the shim's queued bytes reach it.
///
/// # Safety
/// `val` must be readable for `len` bytes, as for setsockopt(2).
pub unsafe fn before_setsockopt(
    rec: &'static SocketRecord,
    level: c_int,
    name: c_int,
    val: *const libc::c_void,
    len: libc::socklen_t,
) {
    if level == libc::IPPROTO_TCP
        && (name == libc::TCP_CORK || name == libc::TCP_NODELAY)
        && !val.is_null()
        && len as usize >= core::mem::size_of::<c_int>()
    {
        // SAFETY: caller contract: at least an int readable at `val`.
        let on = unsafe { core::ptr::read_unaligned(val as *const c_int) } != 0;
        if (name == libc::TCP_CORK) != on {
            flush_before_push(rec);
        }
    }
    let unsupported = match level {
        libc::SOL_SOCKET => matches!(
            name,
            libc::SO_OOBINLINE
                | libc::SO_RCVLOWAT
                | libc::SO_TIMESTAMP
                | libc::SO_TIMESTAMPNS
                | libc::SO_TIMESTAMPING
                | libc::SO_ZEROCOPY
        ),
        libc::IPPROTO_TCP => matches!(name, libc::TCP_REPAIR | libc::TCP_INQ),
        _ => false,
    };
    if unsupported {
        demote(rec, "socket option outside the ring engine's model");
    }
}

/// ioctl requests whose answer depends on bytes the shim holds.
///
/// # Safety
/// `arg` must be valid for the request, as for ioctl(2).
pub unsafe fn ioctl(
    rec: &SocketRecord,
    fd: c_int,
    request: libc::c_ulong,
    arg: usize,
) -> Option<Result<c_int, Errno>> {
    if request == libc::FIONREAD {
        // Completions still deferred in this thread's ring hold bytes the answer must
        // include (a later read must be able to return them).
        if let Some(m) = ring::current() {
            if m.work_pending() || m.has_unsubmitted() {
                process(m);
            }
        }
    } else if request == libc::TIOCOUTQ {
        submit_pending();
    }
    let held = {
        let io = rec.lock_io();
        match request {
            libc::FIONREAD => io.rx.bytes(),
            libc::TIOCOUTQ => io.tx.bytes(),
            _ => return None,
        }
    };
    let mut kernel: c_int = 0;
    // SAFETY: our own int as the out-argument.
    let r = unsafe { real::ioctl(fd, request, &mut kernel as *mut c_int as usize) };
    if r < 0 {
        return Some(Err(errno::last()));
    }
    if arg == 0 {
        return Some(Err(Errno(libc::EFAULT)));
    }
    // SAFETY: the caller passed a pointer to an int for these requests.
    unsafe { *(arg as *mut c_int) = kernel.saturating_add(held as c_int) };
    Some(Ok(0))
}

/// splice from an accelerated socket that still holds received bytes: they go out
/// first, through a plain write to the destination.
pub fn splice_out_queued(
    rec: &'static SocketRecord,
    fd_in: c_int,
    fd_out: c_int,
    len: usize,
) -> Result<usize, Errno> {
    let mut buf = [0u8; 16384];
    let n = len.min(buf.len());
    let iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: n,
    }];
    let got = recv(rec, fd_in, &iov, libc::MSG_PEEK | libc::MSG_DONTWAIT)?;
    // SAFETY: writing our own buffer.
    let w = unsafe { real::write(fd_out, buf.as_ptr().cast(), got) };
    if w < 0 {
        return Err(errno::last());
    }
    let drop_iov = [libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: w as usize,
    }];
    recv(rec, fd_in, &drop_iov, libc::MSG_DONTWAIT)?;
    Ok(w as usize)
}
