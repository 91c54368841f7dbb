//! One io_uring per thread: creation, the provided-buffer ring, submission and reaping.
//!
//! A ring is created lazily by the first thread that needs one and is used only by that
//! thread (it is set up SINGLE_ISSUER | DEFER_TASKRUN where the kernel allows, so
//! completions appear only when the owner enters the kernel; see anchors/io_uring.md
//! T1). Other threads reach a ring through two lock-free queues — buffers to give back
//! and requests (arm, send, cancel) — and an eventfd the ring watches with a multishot
//! poll, so writing it wakes the owner out of its wait.
//!
//! Rings are never destroyed while the process lives: sockets may still reference their
//! buffers. They are not inherited either (MADV_DONTFORK): a fork child starts without.

use crate::errno::Errno;
use crate::stats;
use core::cell::{Cell, UnsafeCell};
use core::sync::atomic::{AtomicPtr, AtomicU16, AtomicU32, Ordering};
use crossbeam_queue::ArrayQueue;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use ringshim_common::config::Config;
use ringshim_common::stats::Counter;

/// What a completion is about: the low 8 bits of user_data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Recv = 1,
    Send = 2,
    Cancel = 3,
    /// The kernel epoll set of an epoll instance became readable.
    EpollReady = 4,
    /// The ring's wake eventfd was written by another thread.
    Wake = 5,
    /// A kernel fd watched for one poll()/select() call.
    PollFd = 6,
    /// The socket's kernel send buffer has room again (after a write the kernel made
    /// directly, such as sendfile, stopped short).
    WriteReady = 7,
}

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            1 => Op::Recv,
            2 => Op::Send,
            3 => Op::Cancel,
            4 => Op::EpollReady,
            5 => Op::Wake,
            6 => Op::PollFd,
            7 => Op::WriteReady,
            _ => return None,
        })
    }
}

/// The generation bits user_data has room for.
pub const GEN_MASK: u32 = 0xff_ffff;

/// user_data layout: op (8 bits) | generation (24 bits) | object id (32 bits).
pub fn user_data(op: Op, id: u32, gen: u32) -> u64 {
    op as u64 | (u64::from(gen & GEN_MASK) << 8) | (u64::from(id) << 32)
}

pub fn decode(ud: u64) -> (Option<Op>, u32, u32) {
    (
        Op::from_u8(ud as u8),
        (ud >> 32) as u32,
        ((ud >> 8) as u32) & GEN_MASK,
    )
}

/// A request another thread leaves for a ring's owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Request {
    ArmRecv = 1,
    Send = 2,
    CancelRecv = 3,
}

/// The provided-buffer ring: `entries` buffers of `size` bytes the kernel picks from.
struct BufRing {
    /// The shared ring of `io_uring_buf` entries (16 bytes each).
    entries: *mut u8,
    mask: u16,
    base: *mut u8,
    size: u32,
    /// Local tail; published to the kernel by [`BufRing::publish`].
    tail: Cell<u16>,
    published: Cell<u16>,
}

const BGID: u16 = 0;

impl BufRing {
    fn new(count: u32, size: u32) -> Result<BufRing, Errno> {
        let ring_bytes = count as usize * 16;
        // SAFETY: anonymous mappings; checked for failure below.
        let entries = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                ring_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if entries == libc::MAP_FAILED {
            return Err(crate::errno::last());
        }
        let buf_bytes = count as usize * size as usize;
        // SAFETY: as above. Private (copied on fork) on purpose: a fork child may still
        // have to deliver bytes that were received before the fork.
        let base = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                buf_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            let e = crate::errno::last();
            // SAFETY: unmapping what we just mapped.
            unsafe { libc::munmap(entries, ring_bytes) };
            return Err(e);
        }
        let br = BufRing {
            entries: entries.cast(),
            mask: (count - 1) as u16,
            base: base.cast(),
            size,
            tail: Cell::new(0),
            published: Cell::new(0),
        };
        for bid in 0..count {
            br.add(bid as u16);
        }
        br.publish();
        Ok(br)
    }

    fn addr(&self, bid: u16) -> *mut u8 {
        // SAFETY: bid < count, so the offset is inside the buffer mapping.
        unsafe { self.base.add(bid as usize * self.size as usize) }
    }

    /// Gives buffer `bid` back to the kernel (visible after `publish`).
    fn add(&self, bid: u16) {
        let t = self.tail.get();
        let idx = (t & self.mask) as usize;
        // SAFETY: idx <= mask, inside the entries mapping; only the owner thread writes
        // entries, and the kernel reads an entry only after the tail covering it is
        // published with Release ordering.
        unsafe {
            let e = self.entries.add(idx * 16);
            core::ptr::write_unaligned(e.cast::<u64>(), self.addr(bid) as u64);
            core::ptr::write_unaligned(e.add(8).cast::<u32>(), self.size);
            core::ptr::write_unaligned(e.add(12).cast::<u16>(), bid);
        }
        self.tail.set(t.wrapping_add(1));
    }

    fn publish(&self) {
        let t = self.tail.get();
        if t != self.published.get() {
            // SAFETY: the ring's tail is the u16 at byte 14 of the mapping (it overlays
            // the first entry's reserved field); the kernel reads it with acquire
            // semantics, so a release store publishes the entries written before.
            let tail = unsafe { &*(self.entries.add(14) as *const AtomicU16) };
            tail.store(t, Ordering::Release);
            self.published.set(t);
        }
    }
}

/// State only the owner thread touches.
struct Local {
    /// SQEs pushed but not yet handed to the kernel.
    unsubmitted: u32,
    /// Counts hand-overs of the submission queue to the kernel: an SQE pushed while
    /// this was N is still unread by the kernel as long as it is N (without SQPOLL).
    batch: u64,
    /// The thread waits through the shim (epoll/poll): sends can ride on its next wait.
    loop_thread: bool,
    /// Sockets (id, gen) whose receive stopped for lack of buffers.
    starved: Vec<(u32, u32)>,
    /// Closed sockets (id, gen) still draining sends.
    draining: Vec<(u32, u32)>,
    /// Epoll instances whose kernel set this ring watches.
    epoll_watch: Vec<EpollWatch>,
    /// SENDMSGs submitted and not yet completed.
    sends_in_flight: u32,
    /// Multishot receives armed on this ring and not yet terminated: other threads
    /// waiting on those sockets rely on this thread reaping the ring.
    recvs_armed: u32,
    /// Buffers given back since the starved receives were last retried.
    returned: u32,
}

pub struct Ring {
    pub id: u16,
    uring: UnsafeCell<IoUring>,
    bufs: BufRing,
    /// Buffer ids handed back by other threads.
    returns: ArrayQueue<u16>,
    /// Requests from other threads: socket id, generation, request kind.
    requests: ArrayQueue<(u32, u32, Request)>,
    wake_fd: i32,
    local: UnsafeCell<Local>,
    pub defer_taskrun: bool,
    pub sqpoll: bool,
}

// SAFETY: fields touched by other threads are the lock-free queues and the eventfd;
// everything in UnsafeCell is touched by the owner thread only (see module docs).
unsafe impl Sync for Ring {}
// SAFETY: as above.
unsafe impl Send for Ring {}

const MAX_RINGS: usize = 1024;
static RINGS: [AtomicPtr<Ring>; MAX_RINGS] =
    [const { AtomicPtr::new(core::ptr::null_mut()) }; MAX_RINGS];
static NEXT_ID: AtomicU32 = AtomicU32::new(0);
/// fd of the first SQPOLL ring, which later rings attach to (one shared SQ thread).
static SQPOLL_ATTACH: core::sync::atomic::AtomicI32 = core::sync::atomic::AtomicI32::new(-1);

thread_local! {
    static CURRENT: Cell<*const Ring> = const { Cell::new(core::ptr::null()) };
    /// Ring creation failed on this thread; do not retry on every call.
    static CREATE_FAILED: Cell<bool> = const { Cell::new(false) };
    /// A ring call is running on this thread: a signal handler must not re-enter it.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// The ring with this id, if it is alive in this process.
pub fn by_id(id: u16) -> Option<&'static Ring> {
    let p = RINGS.get(id as usize)?.load(Ordering::Acquire);
    // SAFETY: rings are leaked, never freed while the process lives.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// This thread's ring without creating one.
#[inline]
pub fn current() -> Option<&'static Ring> {
    let p = CURRENT.with(|c| c.get());
    // SAFETY: as in by_id.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// This thread's ring, created on first use. None when rings are unavailable here (or
/// creation would happen inside a ring call).
pub fn mine() -> Option<&'static Ring> {
    if let Some(r) = current() {
        return Some(r);
    }
    if BUSY.with(|b| b.get()) {
        return None;
    }
    if !super::available() {
        // Not the uring backend (ustack waits on its eventfds), or io_uring failed.
        return None;
    }
    if CREATE_FAILED.with(|c| c.get()) {
        return None;
    }
    match Ring::create(crate::init::config()) {
        Ok(r) => {
            CURRENT.with(|c| c.set(r));
            Some(r)
        }
        Err((what, Errno(e))) => {
            CREATE_FAILED.with(|c| c.set(true));
            crate::log_warn!("could not create this thread's ring ({what}: errno {e}); its sockets use the slower shared path");
            None
        }
    }
}

/// Whether this thread is inside a ring call (a signal handler may have interrupted it).
pub fn busy() -> bool {
    BUSY.with(|b| b.get())
}

/// Runs `f` with this thread's ring marked busy.
pub fn with_busy<T>(f: impl FnOnce() -> T) -> T {
    let prev = BUSY.with(|b| b.replace(true));
    let v = f();
    BUSY.with(|b| b.set(prev));
    v
}

/// Builds the io_uring with the best flags this kernel accepts, its fd moved to a high
/// number (see `crate::internal_fd`).
pub fn build_uring(cfg: &Config) -> Result<(IoUring, bool), Errno> {
    let (u, defer) = build_uring_low(cfg)?;
    let low = std::os::fd::AsRawFd::as_raw_fd(&u);
    let high = crate::internal_fd::move_high_dup(low);
    if high == low {
        return Ok((u, defer));
    }
    let params = u.params().clone();
    // Dropping the first handle only closes the low number and its mapping: the high
    // duplicate keeps the ring alive, so no teardown work reaches this thread.
    drop(u);
    // SAFETY: `high` is an io_uring fd with exactly these parameters.
    match unsafe { IoUring::from_fd(high, params) } {
        Ok(u) => Ok((u, defer)),
        Err(e) => Err(Errno(e.raw_os_error().unwrap_or(libc::EINVAL))),
    }
}

/// Makes `fd` (an SQPOLL ring that stays open) the one whose SQ thread every later
/// ring attaches to, unless one was chosen already. The load-time probe ring is the
/// first SQPOLL ring; without this its own SQ thread would be a second one.
pub fn anchor_sqpoll(fd: i32) {
    let _ = SQPOLL_ATTACH.compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Acquire);
}

fn build_uring_low(cfg: &Config) -> Result<(IoUring, bool), Errno> {
    if cfg.sqpoll {
        let mut b = IoUring::builder();
        b.dontfork()
            .setup_cqsize(cfg.cq_entries)
            .setup_clamp()
            .setup_sqpoll(cfg.sqpoll_idle_ms)
            .setup_single_issuer();
        if let Some(cpu) = cfg.sqpoll_cpu {
            b.setup_sqpoll_cpu(cpu);
        }
        let attach = SQPOLL_ATTACH.load(Ordering::Acquire);
        if attach >= 0 {
            b.setup_attach_wq(attach);
        }
        match b.build(cfg.sq_entries) {
            Ok(u) => return Ok((u, false)),
            Err(e) => crate::log_info!(
                "SQPOLL ring refused (errno {}); using an interrupt-driven ring",
                e.raw_os_error().unwrap_or(0)
            ),
        }
    }
    let mut b = IoUring::builder();
    b.dontfork()
        .setup_cqsize(cfg.cq_entries)
        .setup_clamp()
        .setup_submit_all()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag();
    if let Ok(u) = b.build(cfg.sq_entries) {
        return Ok((u, true));
    }
    // Kernels before 6.1: cooperative task running (5.19+), then plain.
    let mut b = IoUring::builder();
    b.dontfork()
        .setup_cqsize(cfg.cq_entries)
        .setup_clamp()
        .setup_coop_taskrun()
        .setup_taskrun_flag();
    if let Ok(u) = b.build(cfg.sq_entries) {
        return Ok((u, false));
    }
    let mut b = IoUring::builder();
    b.dontfork().setup_cqsize(cfg.cq_entries);
    b.build(cfg.sq_entries)
        .map(|u| (u, false))
        .map_err(|e| Errno(e.raw_os_error().unwrap_or(libc::EINVAL)))
}

impl Ring {
    fn create(cfg: &Config) -> Result<&'static Ring, (&'static str, Errno)> {
        let id = NEXT_ID.fetch_add(1, Ordering::AcqRel);
        if id as usize >= MAX_RINGS {
            return Err(("ring limit", Errno(libc::EMFILE)));
        }
        let (uring, defer_taskrun) =
            crate::init::in_shim(|| build_uring(cfg)).map_err(|e| ("io_uring_setup", e))?;
        let sqpoll = uring.params().is_setup_sqpoll();
        if sqpoll {
            anchor_sqpoll(std::os::fd::AsRawFd::as_raw_fd(&uring));
        }
        let bufs = BufRing::new(cfg.buf_count, cfg.buf_size).map_err(|e| ("buffer memory", e))?;
        // SAFETY: the entries mapping is page aligned, holds buf_count entries, and
        // stays mapped for the life of the process.
        unsafe {
            uring.submitter().register_buf_ring_with_flags(
                bufs.entries as u64,
                cfg.buf_count as u16,
                BGID,
                0,
            )
        }
        .map_err(|e| {
            (
                "register_buf_ring",
                Errno(e.raw_os_error().unwrap_or(libc::EINVAL)),
            )
        })?;
        let wake_fd = crate::internal_fd::eventfd();
        if wake_fd < 0 {
            return Err(("eventfd", crate::errno::last()));
        }
        let ring = Box::leak(Box::new(Ring {
            id: id as u16,
            uring: UnsafeCell::new(uring),
            bufs,
            returns: ArrayQueue::new(cfg.buf_count as usize),
            requests: ArrayQueue::new(4096),
            wake_fd,
            local: UnsafeCell::new(Local {
                unsubmitted: 0,
                batch: 0,
                loop_thread: false,
                starved: Vec::new(),
                draining: Vec::new(),
                epoll_watch: Vec::new(),
                sends_in_flight: 0,
                recvs_armed: 0,
                returned: 0,
            }),
            defer_taskrun,
            sqpoll,
        }));
        ring.push(
            opcode::PollAdd::new(types::Fd(wake_fd), libc::POLLIN as u32)
                .multi(true)
                .build()
                .user_data(user_data(Op::Wake, 0, 0)),
        );
        RINGS[id as usize].store(ring, Ordering::Release);
        register_thread_exit(ring);
        stats::bump(Counter::RingsCreated);
        stats::set_ring_fd(std::os::fd::AsRawFd::as_raw_fd(ring.uring()));
        crate::log_debug!(
            "ring {} created (fd {}, {}, {} buffers of {} bytes)",
            id,
            std::os::fd::AsRawFd::as_raw_fd(ring.uring()),
            if sqpoll {
                "SQPOLL"
            } else if defer_taskrun {
                "SINGLE_ISSUER|DEFER_TASKRUN"
            } else {
                "COOP_TASKRUN"
            },
            cfg.buf_count,
            cfg.buf_size
        );
        Ok(ring)
    }

    #[allow(clippy::mut_from_ref)]
    fn uring(&self) -> &mut IoUring {
        // SAFETY: only the owner thread calls this (module invariant), and no two
        // borrows overlap: every method takes what it needs and returns.
        unsafe { &mut *self.uring.get() }
    }

    #[allow(clippy::mut_from_ref)]
    fn local(&self) -> &mut Local {
        // SAFETY: owner thread only; borrows never overlap (see `uring`).
        unsafe { &mut *self.local.get() }
    }

    pub fn buffer_addr(&self, bid: u16) -> *const u8 {
        self.bufs.addr(bid)
    }

    pub fn is_mine(&self) -> bool {
        current().is_some_and(|r| core::ptr::eq(r, self))
    }

    /// Queues an SQE; submits first if the queue is full.
    pub fn push(&self, sqe: squeue::Entry) {
        let u = self.uring();
        // SAFETY: every buffer an SQE points at lives in a type-stable record or the
        // leaked ring and stays valid until its completion is reaped.
        while unsafe { u.submission().push(&sqe) }.is_err() {
            let _ = self.submit();
        }
        self.local().unsubmitted += 1;
    }

    /// The current submission batch, or None when the kernel may read SQEs at any
    /// time (SQPOLL). An SQE pushed in batch N is unread while `batch() == Some(N)`,
    /// so the memory it points at (a SENDMSG's msghdr) may still change.
    pub fn batch(&self) -> Option<u64> {
        (!self.sqpoll).then(|| self.local().batch)
    }

    pub fn has_unsubmitted(&self) -> bool {
        self.local().unsubmitted > 0
    }

    /// Hands queued SQEs to the kernel (and runs deferred completions) without waiting.
    pub fn submit(&self) -> Result<(), Errno> {
        let u = self.uring();
        let needs_enter = self.local().unsubmitted > 0
            || u.submission().taskrun()
            || u.submission().cq_overflow();
        if !needs_enter {
            return Ok(());
        }
        self.local().unsubmitted = 0;
        self.local().batch += 1;
        stats::bump(Counter::RingEnters);
        match u.submit() {
            Ok(_) => Ok(()),
            Err(e) => match e.raw_os_error().unwrap_or(libc::EIO) {
                libc::EINTR | libc::EAGAIN | libc::EBUSY => Ok(()),
                other => Err(Errno(other)),
            },
        }
    }

    /// Submits and sleeps until at least one completion, the timeout, or a signal;
    /// `sigmask` replaces the thread's mask for the duration of the sleep, atomically
    /// (as ppoll/epoll_pwait do).
    ///
    /// The enter is issued directly rather than through the crate, whose extended
    /// argument passes sizeof(sigset_t) (128) where the kernel requires _NSIG/8 (8).
    pub fn wait(
        &self,
        timeout: Option<libc::timespec>,
        sigmask: Option<&libc::sigset_t>,
    ) -> Result<(), Errno> {
        #[repr(C)]
        struct GeteventsArg {
            sigmask: u64,
            sigmask_sz: u32,
            min_wait_usec: u32,
            ts: u64,
        }
        const ENTER_GETEVENTS: u32 = 1;
        const ENTER_SQ_WAKEUP: u32 = 2;
        const ENTER_EXT_ARG: u32 = 8;
        let u = self.uring();
        let to_submit = u.submission().len() as u32;
        self.local().unsubmitted = 0;
        self.local().batch += 1;
        stats::bump(Counter::RingEnters);
        let started = if timeout.is_some() { now_ns() } else { 0 };
        let ts = timeout;
        let arg = GeteventsArg {
            sigmask: sigmask.map_or(0, |m| m as *const libc::sigset_t as u64),
            sigmask_sz: if sigmask.is_some() { 8 } else { 0 },
            min_wait_usec: 0,
            ts: ts.as_ref().map_or(0, |t| t as *const libc::timespec as u64),
        };
        let mut flags = ENTER_GETEVENTS | ENTER_EXT_ARG;
        if self.sqpoll {
            core::sync::atomic::fence(Ordering::SeqCst);
            if u.submission().need_wakeup() {
                flags |= ENTER_SQ_WAKEUP;
            }
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(u);
        // SAFETY: io_uring_enter on our ring with a correctly sized extended argument
        // that outlives the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_io_uring_enter,
                fd,
                to_submit,
                1u32,
                flags,
                &arg as *const GeteventsArg,
                core::mem::size_of::<GeteventsArg>(),
            )
        };
        if r >= 0 {
            // With SQEs submitted, enter reports the count even when a signal cut the
            // wait short. A wait ends early without a completion only for a signal, so
            // an empty queue before the deadline means EINTR (the handler already ran).
            let cq_empty = u.completion().is_empty() && !u.submission().taskrun();
            if r > 0 && cq_empty && timeout.is_none_or(|t| now_ns() < started + ts_ns(&t)) {
                return Err(Errno(libc::EINTR));
            }
            return Ok(());
        }
        match crate::errno::get() {
            libc::ETIME | libc::EAGAIN | libc::EBUSY => Ok(()),
            other => Err(Errno(other)),
        }
    }

    /// Sleeps on the ring. With an application signal mask (epoll_pwait, ppoll,
    /// pselect), every signal is blocked while the shim decides to sleep, so one
    /// arriving in that window is delivered during the sleep (EINTR), as the atomic
    /// mask swap of those calls promises.
    /// `still_idle` is the last check, made with signals blocked.
    pub fn sleep(
        &self,
        timeout: Option<libc::timespec>,
        app_mask: Option<&libc::sigset_t>,
        still_idle: impl FnOnce() -> bool,
    ) -> Result<(), Errno> {
        let Some(app_mask) = app_mask else {
            // No mask to apply atomically: like the kernel's own epoll_wait/poll, a
            // signal handled just before the sleep is not noticed until it ends. This
            // saves two system calls per sleep on the hot path.
            if !still_idle() {
                return Ok(());
            }
            return with_busy(|| self.wait(timeout, None));
        };
        // SAFETY: sigset_t is plain data; sigfillset/pthread_sigmask get valid pointers.
        let mut all: libc::sigset_t = unsafe { core::mem::zeroed() };
        // SAFETY: as above.
        let mut old: libc::sigset_t = unsafe { core::mem::zeroed() };
        // SAFETY: valid sets; glibc keeps its internal signals unblocked.
        unsafe {
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        }
        let r = if still_idle() {
            with_busy(|| self.wait(timeout, Some(app_mask)))
        } else {
            Ok(())
        };
        // SAFETY: restoring the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut()) };
        r
    }

    /// Copies out up to `out.len()` completions. Call [`Ring::submit`] first when
    /// deferred task work may be pending.
    pub fn take_completions(&self, out: &mut [(u64, i32, u32)]) -> usize {
        let mut cq = self.uring().completion();
        let mut n = 0;
        while n < out.len() {
            let Some(cqe) = cq.next() else { break };
            out[n] = (cqe.user_data(), cqe.result(), cqe.flags());
            n += 1;
        }
        n
    }

    /// Deferred completions wait in the kernel for an enter with GETEVENTS (the
    /// TASKRUN flag the kernel sets in the shared ring).
    pub fn work_pending_in_kernel(&self) -> bool {
        self.uring().submission().taskrun()
    }

    /// Completions are waiting in user memory, or deferred work needs an enter.
    pub fn work_pending(&self) -> bool {
        let u = self.uring();
        if u.submission().taskrun() {
            return true;
        }
        !u.completion().is_empty()
    }

    /// Gives a buffer back (owner thread: directly; others: through the queue).
    pub fn give_back(&self, bid: u16) {
        if self.is_mine() {
            self.bufs.add(bid);
            self.local().returned += 1;
        } else if self.returns.push(bid).is_err() {
            // Cannot happen: the queue holds every buffer id. Losing one buffer is
            // harmless; losing bytes would not be.
            crate::log_debug!("buffer return queue full; buffer {} dropped", bid);
        }
    }

    /// Owner: takes back buffers returned by other threads and publishes the tail.
    pub fn replenish(&self) {
        while let Some(bid) = self.returns.pop() {
            self.bufs.add(bid);
            self.local().returned += 1;
        }
        self.bufs.publish();
    }

    /// Buffers given back since the last call (receives that ran out may retry).
    pub fn take_returned(&self) -> u32 {
        core::mem::take(&mut self.local().returned)
    }

    /// Wakes the owner out of its wait (through the eventfd its ring polls).
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes to our own eventfd.
        unsafe { libc::syscall(libc::SYS_write, self.wake_fd, &one as *const u64, 8) };
    }

    pub fn post_request(&self, id: u32, gen: u32, req: Request) {
        let _ = self.requests.push((id, gen, req));
        let one: u64 = 1;
        // SAFETY: writing 8 bytes to our own eventfd; failure (counter full) still
        // leaves it readable, which is all that matters.
        unsafe { libc::syscall(libc::SYS_write, self.wake_fd, &one as *const u64, 8) };
    }

    pub fn next_request(&self) -> Option<(u32, u32, Request)> {
        self.requests.pop()
    }

    /// The wake eventfd fired: drain it; re-arm the multishot poll if it ended.
    pub fn on_wake(&self, more: bool) {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes from our own non-blocking eventfd.
        unsafe { libc::syscall(libc::SYS_read, self.wake_fd, &mut v as *mut u64, 8) };
        if !more {
            self.push(
                opcode::PollAdd::new(types::Fd(self.wake_fd), libc::POLLIN as u32)
                    .multi(true)
                    .build()
                    .user_data(user_data(Op::Wake, 0, 0)),
            );
        }
    }

    pub fn send_started(&self) {
        self.local().sends_in_flight += 1;
    }

    pub fn send_finished(&self) {
        let l = self.local();
        l.sends_in_flight = l.sends_in_flight.saturating_sub(1);
    }

    pub fn recv_started(&self) {
        self.local().recvs_armed += 1;
    }

    pub fn recv_finished(&self) {
        let l = self.local();
        l.recvs_armed = l.recvs_armed.saturating_sub(1);
    }

    /// Sends in flight, closed sockets still draining, or receives armed on this ring:
    /// work whose completions only this thread reaps.
    pub fn holds_work(&self) -> bool {
        let l = self.local();
        l.sends_in_flight > 0 || !l.draining.is_empty() || l.recvs_armed > 0
    }

    pub fn set_loop_thread(&self) {
        self.local().loop_thread = true;
    }

    pub fn loop_thread(&self) -> bool {
        self.local().loop_thread
    }

    pub fn starve(&self, id: u32, gen: u32) {
        self.local().starved.push((id, gen));
    }

    /// Up to `n` of the sockets whose receive ran out of buffers, oldest first.
    pub fn take_starved(&self, n: usize) -> Vec<(u32, u32)> {
        let l = &mut self.local().starved;
        let k = n.min(l.len());
        l.drain(..k).collect()
    }

    pub fn has_starved(&self) -> bool {
        !self.local().starved.is_empty()
    }

    pub fn add_draining(&self, id: u32, gen: u32) {
        self.local().draining.push((id, gen));
    }

    pub fn draining(&self) -> &mut Vec<(u32, u32)> {
        &mut self.local().draining
    }

    /// Whether the kernel set of epoll `ep` (in its `incarnation`) must be checked: its
    /// poll fired, or none is armed for this incarnation. Clears the mark.
    pub fn epoll_check_needed(&self, ep: u32, incarnation: u32) -> bool {
        let w = &mut self.local().epoll_watch;
        match w.iter_mut().find(|e| e.ep == ep) {
            Some(e) if e.incarnation == incarnation && e.armed && !e.fired => false,
            Some(e) => {
                e.fired = false;
                true
            }
            None => true,
        }
    }

    /// Arms a one-shot poll on the kernel epoll fd so its readiness wakes this ring. A
    /// watch left from an earlier epoll in the same slot is cancelled and replaced: it
    /// polls a file nobody can reach any more and would never fire for this one.
    pub fn arm_epoll_watch(&self, ep: u32, incarnation: u32, epfd: i32) {
        let w = &mut self.local().epoll_watch;
        let i = match w.iter().position(|e| e.ep == ep) {
            Some(i) => i,
            None => {
                w.push(EpollWatch::new(ep, incarnation));
                w.len() - 1
            }
        };
        let stale = w[i].incarnation != incarnation;
        let stale_armed = stale && w[i].armed;
        let old = w[i].incarnation;
        if stale {
            w[i] = EpollWatch::new(ep, incarnation);
        }
        let arm = !w[i].armed;
        w[i].armed = true;
        if stale_armed {
            self.cancel_epoll_poll(ep, old);
        }
        if arm {
            self.push(
                opcode::PollAdd::new(types::Fd(epfd), libc::POLLIN as u32)
                    .build()
                    .user_data(user_data(Op::EpollReady, ep, incarnation)),
            );
        }
    }

    /// The poll armed by [`arm_epoll_watch`] completed (`tag` is the incarnation it was
    /// armed for, as user_data carries it).
    pub fn on_epoll_ready(&self, ep: u32, tag: u32) {
        if let Some(e) = self.local().epoll_watch.iter_mut().find(|e| e.ep == ep) {
            if e.incarnation & GEN_MASK == tag {
                e.armed = false;
                e.fired = true;
            }
        }
    }

    /// Forgets the watch on an epoll instance being closed, cancelling its poll.
    pub fn forget_epoll(&self, ep: u32, incarnation: u32) {
        let w = &mut self.local().epoll_watch;
        let Some(i) = w
            .iter()
            .position(|e| e.ep == ep && e.incarnation == incarnation)
        else {
            return;
        };
        let armed = w.swap_remove(i).armed;
        if armed {
            self.cancel_epoll_poll(ep, incarnation);
        }
    }

    fn cancel_epoll_poll(&self, ep: u32, incarnation: u32) {
        self.push(
            opcode::AsyncCancel::new(user_data(Op::EpollReady, ep, incarnation))
                .build()
                .user_data(user_data(Op::Cancel, 0, 0)),
        );
    }
}

/// This ring's watch on the kernel set of one epoll instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EpollWatch {
    ep: u32,
    /// The [`crate::epoll::EpollRecord::incarnation`] the watch belongs to.
    incarnation: u32,
    /// A poll is in flight on the epoll fd.
    armed: bool,
    /// The poll completed since the kernel set was last checked.
    fired: bool,
}

impl EpollWatch {
    fn new(ep: u32, incarnation: u32) -> EpollWatch {
        EpollWatch {
            ep,
            incarnation,
            armed: false,
            fired: false,
        }
    }
}

/// Set once: the pthread key whose destructor runs when a thread with a ring exits.
static EXIT_KEY: core::sync::atomic::AtomicU32 = core::sync::atomic::AtomicU32::new(u32::MAX);

extern "C" fn thread_exit(ring: *mut libc::c_void) {
    if ring.is_null() {
        return;
    }
    // SAFETY: the value stored by register_thread_exit: a leaked Ring.
    let ring = unsafe { &*(ring as *const Ring) };
    crate::uring::on_thread_exit(ring);
}

extern "C" fn process_exit() {
    if let Some(ring) = current() {
        crate::uring::on_thread_exit(ring);
    }
}

/// Arranges for [`crate::uring::on_thread_exit`] to run when this thread ends (a
/// pthread key destructor: no Rust thread-local destructor, which could allocate or
/// run after the TLS it needs is gone).
fn register_thread_exit(ring: &'static Ring) {
    let mut key = EXIT_KEY.load(Ordering::Acquire);
    if key == u32::MAX {
        let mut k: libc::pthread_key_t = 0;
        // SAFETY: valid out-pointer and a plain destructor function.
        if unsafe { libc::pthread_key_create(&mut k, Some(thread_exit)) } != 0 {
            return;
        }
        key = match EXIT_KEY.compare_exchange(u32::MAX, k, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                // exit() runs no pthread key destructors: the exiting thread's queued
                // sends and draining closes get the same bounded flush from atexit.
                // SAFETY: registering a plain function, once per process image.
                unsafe { libc::atexit(process_exit) };
                k
            }
            Err(existing) => {
                // SAFETY: deleting the key this thread just created and lost the race with.
                unsafe { libc::pthread_key_delete(k) };
                existing
            }
        };
    }
    // SAFETY: a key created above; the value is a leaked, never-freed ring.
    unsafe { libc::pthread_setspecific(key, ring as *const Ring as *const libc::c_void) };
}

/// Proves a freshly built ring usable: a NOP through io_uring_enter, and a buffer ring
/// through io_uring_register (registered and removed again).
pub fn exercise(u: &IoUring) -> Result<(), (&'static str, Errno)> {
    let errno_of = |e: std::io::Error| Errno(e.raw_os_error().unwrap_or(libc::EINVAL));
    // SAFETY: a NOP references no memory.
    unsafe {
        u.submission_shared()
            .push(&opcode::Nop::new().build().user_data(0))
    }
    .map_err(|_| ("io_uring_enter", Errno(libc::EBUSY)))?;
    u.submit_and_wait(1)
        .map_err(|e| ("io_uring_enter", errno_of(e)))?;
    // SAFETY: draining the one completion of the NOP on the thread that owns the ring.
    unsafe { u.completion_shared().for_each(drop) };
    let entries: usize = 16;
    // SAFETY: anonymous mapping for a 16-entry buffer ring, unmapped below.
    let mem = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err(("mmap", crate::errno::last()));
    }
    const PROBE_BGID: u16 = 0x7ffe;
    // SAFETY: page-aligned memory for `entries` entries that outlives the registration.
    let r = unsafe {
        u.submitter()
            .register_buf_ring_with_flags(mem as u64, entries as u16, PROBE_BGID, 0)
    }
    .map_err(|e| ("io_uring_register", errno_of(e)));
    if r.is_ok() {
        let _ = u.submitter().unregister_buf_ring(PROBE_BGID);
    }
    // SAFETY: unmapping our own mapping (no longer registered).
    unsafe { libc::munmap(mem, 4096) };
    r
}

/// After fork, in the child: the parent's rings are not ours. They stay mapped
/// (buffers may still hold received bytes) but are never used again.
pub fn forget_all_after_fork() {
    CURRENT.with(|c| c.set(core::ptr::null()));
    CREATE_FAILED.with(|c| c.set(false));
    BUSY.with(|b| b.set(false));
    for r in RINGS.iter() {
        r.store(core::ptr::null_mut(), Ordering::Release);
    }
    SQPOLL_ATTACH.store(-1, Ordering::Release);
}

pub fn buffer_select(flags: u32) -> Option<u16> {
    cqueue::buffer_select(flags)
}

pub fn more(flags: u32) -> bool {
    cqueue::more(flags)
}

pub fn recv_multi(fd: i32, id: u32, gen: u32) -> squeue::Entry {
    opcode::RecvMulti::new(types::Fd(fd), BGID)
        .build()
        .user_data(user_data(Op::Recv, id, gen))
}

fn now_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

fn ts_ns(t: &libc::timespec) -> u128 {
    t.tv_sec.max(0) as u128 * 1_000_000_000 + t.tv_nsec.max(0) as u128
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        let ud = user_data(Op::Send, 0xdead_beef, 0x12_3456);
        assert_eq!(decode(ud), (Some(Op::Send), 0xdead_beef, 0x12_3456));
        assert_eq!(decode(user_data(Op::Recv, 7, 0x1ff_ffff)).2, 0xff_ffff);
        assert_eq!(decode(0).0, None);
    }
}
