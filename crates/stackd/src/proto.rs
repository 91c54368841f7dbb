//! The protocol between `ringshim-stackd` and the applications it serves.
//!
//! Two channels, after VPP's session layer (see `crates/stackd/README.md`):
//!
//! 1. **Control**, out of band: a unix `SOCK_SEQPACKET` socket (default
//!    [`DEFAULT_CONTROL_PATH`]). One connection per application process. Requests are one
//!    [`ControlRequest`] datagram each, replies one [`ControlReply`] with descriptors in
//!    `SCM_RIGHTS`:
//!    - `ATTACH` (first and once): the reply carries the application's **segment** (a
//!      memfd, mode 0600, sealed against resizing) and worker 0's eventfd pair.
//!    - `WORKER_ADD`: another worker (one per application thread); the reply carries its
//!      eventfd pair.
//!
//!    The connection is the application's lifeline: when stackd sees EOF or an error on
//!    it, the application is dead; stackd resets its connections, closes its listeners
//!    (on a shared port: its memberships only, see [`MsgKind::Listen`]) and unmaps its
//!    segment.
//! 2. **Data**, in the segment ([`SegmentLayout`]): per worker two single-producer
//!    single-consumer rings of 64-byte [`Msg`]s (app → stack, stack → app), and per
//!    session an rx and a tx byte [`Fifo`], addressed by session index, never by pointer.
//!
//! ## Wake-ups
//! Every worker has two eventfds: `app_wake` (stackd writes, the application waits on it,
//! e.g. as a member of its epoll set) and `stack_wake` (the application writes, stackd
//! waits on it). A producer writes the consumer's eventfd only when the consumer said it
//! may sleep ([`Ring::prepare_sleep`] / [`Ring::wake_needed`]), so a busy consumer costs
//! no system calls. A producer that finds a ring full marks itself waiting and is woken by
//! the consumer through its own eventfd once a slot is free.
//!
//! For the shim: `app_wake` can sit in the application's kernel epoll set (the readiness
//! merge). Call [`Ring::prepare_sleep`] on the worker's stack→app ring before entering
//! `epoll_wait` and [`Ring::woke`] after it; a message that arrives in between makes the
//! eventfd readable, so any waiter of that epoll fd wakes. Reset the eventfd (read it)
//! before draining the ring, never after, or a wake-up can be lost.
//!
//! ## Data notifications
//! `TX` (app → stack) and `RX` (stack → app) are sent only when a fifo's event flag flips
//! from 0 to 1 ([`Fifo::producer_should_notify`]): the consumer clears the flag when it
//! takes the message off its ring and before it drains ([`Fifo::consumer_clear_event`]),
//! so one message covers every byte enqueued before the drain. The clear on taking the
//! message is the one that matters: a drain that clears and then also reads bytes
//! enqueued just after the clear leaves the flag set by their message, and a consumer
//! that then sleeps with that message already taken would never hear of the next bytes
//! (their producer sees the flag still set and posts nothing). A producer that finds a fifo full asks for a space notice
//! ([`Fifo::request_space_notice`]): the consumer answers with `RX_DRAINED` (app → stack)
//! or `TX_SPACE` (stack → app) after it frees space.
//!
//! ## Cork and push
//! The tx fifo also carries how the application wants its bytes sent, as the kernel's
//! TCP_CORK, MSG_MORE and TCP_NODELAY do: the application sets cork bits
//! ([`Fifo::producer_set_cork`]) *before* it enqueues the bytes they cover, and on uncork
//! (or TCP_NODELAY on, or a send without MSG_MORE after one with it) records a **push
//! mark**, the fifo position up to which everything is to leave now
//! ([`Fifo::producer_push`]), then wakes stackd (SETOPT [`sockopt::CORK`], or the TX
//! of the bytes). stackd reads both on every pass ([`Fifo::consumer_send_hint`]): while
//! corked it moves only full segments into TCP and keeps a partial tail in the fifo (at
//! most 200 ms, the kernel's ceiling); a new push mark moves everything before it and
//! sends it without waiting for Nagle. Both fields are zero after a reset (not corked,
//! nothing to push), which is also what an application that never sets them gets.
//!
//! ## Trust
//! The segment is writable by the application, so stackd treats every value in it as
//! untrusted: positions are masked into their buffer, a ring or fifo whose indices claim
//! more than its capacity is reported as [`Corrupt`] (stackd then drops that application),
//! and the layout is the one stackd computed, never one read back from shared memory. An
//! application can only damage its own sessions.
//!
//! Everything here is plain memory and atomics: no system calls and no allocation, so the
//! shim can use this module on its hook paths.

use core::mem::size_of;
use core::ptr;
use core::sync::atomic::{fence, AtomicU32, Ordering};

/// Where stackd listens unless told otherwise (`--control`).
pub const DEFAULT_CONTROL_PATH: &str = "/run/ringshim/stackd.sock";
/// First word of every control datagram.
pub const CONTROL_MAGIC: u32 = u32::from_le_bytes(*b"RSCT");
/// First word of the segment header.
pub const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"RSSTKSEG");
/// Bumped on any incompatible change of a type in this module.
pub const PROTOCOL_VERSION: u32 = 1;
/// Producer and consumer fields live on separate lines of this size (no false sharing).
pub const CACHE_LINE: usize = 64;
const PAGE: u64 = 4096;

/// Bounds stackd applies to an ATTACH request (values outside are clamped, not refused).
pub mod limits {
    pub const MAX_WORKERS: u32 = 64;
    pub const DEFAULT_WORKERS: u32 = 8;
    pub const MAX_SESSIONS: u32 = 65_536;
    pub const DEFAULT_SESSIONS: u32 = 1024;
    pub const MIN_FIFO_BYTES: u32 = 4096;
    pub const MAX_FIFO_BYTES: u32 = 4 << 20;
    pub const DEFAULT_FIFO_BYTES: u32 = 64 << 10;
    pub const MIN_RING_SLOTS: u32 = 64;
    pub const MAX_RING_SLOTS: u32 = 65_536;
    pub const DEFAULT_RING_SLOTS: u32 = 1024;
}

// ---------------------------------------------------------------------------------------
// Control channel
// ---------------------------------------------------------------------------------------

/// `ControlRequest::kind`.
pub mod control_kind {
    /// First request on a connection: creates the segment and worker 0.
    pub const ATTACH: u32 = 1;
    /// Registers another worker (application thread) of the same attachment.
    pub const WORKER_ADD: u32 = 2;
    /// stackd's counters, answered with a [`super::StatsReply`] (`ringshim stat
    /// --stackd`); allowed on a connection that never attaches, to the same peers.
    pub const STATS: u32 = 3;
}

/// The values of a [`StatsReply`], in order: gauges first (what stackd holds now), then
/// counters since it started. Names follow `ringshim stat`'s (snake case).
pub const STATS_NAMES: [&str; STATS_COUNT] = [
    "uptime_seconds",
    "apps_now",
    "sessions_now",
    "listeners_now",
    "closing_now",
    "apps_attached",
    "apps_refused",
    "apps_detached",
    "sessions_accepted",
    "sessions_connected",
    "accepts_refused_no_slot",
    "sessions_reset_on_detach",
    "messages_to_apps",
    "messages_from_apps",
    "app_wakeups",
    "sleeps",
    "rx_frames",
    "tx_frames",
    "rx_errors",
    "tx_errors",
    "rx_oversize",
    "rx_checksums_completed",
];
/// How many values of the above a gauge is (not a counter: no rate).
pub const STATS_GAUGES: usize = 5;
pub const STATS_COUNT: usize = 22;

/// stackd's answer to STATS: `count` values named by [`STATS_NAMES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsReply {
    pub magic: u32,
    pub version: u32,
    pub kind: u32,
    /// 0, or a positive errno (EACCES: peer credentials refused).
    pub result: i32,
    pub count: u32,
    pub reserved: u32,
    pub values: [u64; STATS_COUNT],
}

/// One control datagram from the application.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlRequest {
    pub magic: u32,
    pub version: u32,
    /// A [`control_kind`] value.
    pub kind: u32,
    /// ATTACH: how many workers the segment has room for (0 = default).
    pub max_workers: u32,
    /// ATTACH: how many sessions at once (0 = default).
    pub sessions: u32,
    /// ATTACH: bytes per rx and per tx fifo, rounded up to a power of two (0 = default).
    pub fifo_bytes: u32,
    /// ATTACH: slots per message ring, rounded up to a power of two (0 = default).
    pub ring_slots: u32,
    pub reserved: u32,
    /// ATTACH: a name for stackd's log (NUL-padded, e.g. the program name).
    pub name: [u8; 32],
}

impl ControlRequest {
    /// A request of `kind` with every size left to stackd's defaults.
    pub fn new(kind: u32) -> Self {
        ControlRequest {
            magic: CONTROL_MAGIC,
            version: PROTOCOL_VERSION,
            kind,
            ..Default::default()
        }
    }
}

/// stackd's answer to one [`ControlRequest`].
///
/// Descriptors (`SCM_RIGHTS`), in this order: ATTACH → segment memfd, `app_wake`,
/// `stack_wake`; WORKER_ADD → `app_wake`, `stack_wake`. None when `result != 0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlReply {
    pub magic: u32,
    pub version: u32,
    /// The request's kind.
    pub kind: u32,
    /// 0, or a positive errno: EACCES (peer credentials refused), EPROTO (malformed or
    /// out-of-order request), ENOSPC (no free worker), ENOMEM (segment creation failed).
    pub result: i32,
    /// The new worker's index.
    pub worker: u32,
    /// How many descriptors travel with this reply.
    pub fd_count: u32,
    /// ATTACH: the segment's size in bytes (also in its header).
    pub segment_bytes: u64,
}

impl ControlReply {
    pub fn new(kind: u32, result: i32) -> Self {
        ControlReply {
            magic: CONTROL_MAGIC,
            version: PROTOCOL_VERSION,
            kind,
            result,
            ..Default::default()
        }
    }
}

/// Reads a `#[repr(C)]` plain-data value from the front of a received datagram.
///
/// Only for the types of this module, every bit pattern of which is valid.
pub fn read_plain<T: Plain>(bytes: &[u8]) -> Option<T> {
    if bytes.len() < size_of::<T>() {
        return None;
    }
    // SAFETY: the length was checked; T is Plain (all-integer repr(C), any bit pattern is
    // a valid value) and read_unaligned copes with the buffer's alignment.
    Some(unsafe { ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// The bytes of a plain-data value, to send it.
pub fn plain_bytes<T: Plain>(value: &T) -> &[u8] {
    // SAFETY: T is Plain: repr(C) with explicit padding fields, so every byte is
    // initialised; the slice borrows `value` for its lifetime.
    unsafe { core::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
}

/// Marker for the `#[repr(C)]` all-integer types of this module.
///
/// # Safety
/// Implementors have no padding bytes and accept every bit pattern.
pub unsafe trait Plain: Copy {}
// SAFETY: all fields are integers or integer arrays, sizes add up without padding.
unsafe impl Plain for ControlRequest {}
// SAFETY: as above (4 × u32 + i32 + u32 + u32 + u64 = 32 bytes, u64 at offset 24).
unsafe impl Plain for ControlReply {}
// SAFETY: as above (integers only, no padding: 6 × u32 then u64s).
unsafe impl Plain for StatsReply {}
// SAFETY: as above, checked by the size assertion below.
unsafe impl Plain for Msg {}

// ---------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------

/// An IPv4 endpoint as carried in messages (port in host byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: [u8; 4],
    pub port: u16,
    pub reserved: u16,
}

impl Endpoint {
    pub fn new(addr: [u8; 4], port: u16) -> Self {
        Endpoint {
            addr,
            port,
            reserved: 0,
        }
    }
}

impl From<std::net::SocketAddrV4> for Endpoint {
    fn from(sa: std::net::SocketAddrV4) -> Self {
        Endpoint::new(sa.ip().octets(), sa.port())
    }
}

impl From<Endpoint> for std::net::SocketAddrV4 {
    fn from(ep: Endpoint) -> Self {
        std::net::SocketAddrV4::new(ep.addr.into(), ep.port)
    }
}

/// A session (connection) handle: slot index in the low half, the slot's generation in the
/// high half, so a late message about a recycled slot is recognisably stale.
pub type SessionId = u64;
/// "No session": a failed CONNECTED, or a CLOSE that names a pending connect by cookie.
pub const NO_SESSION: SessionId = u64::MAX;

pub fn session_id(index: u32, generation: u32) -> SessionId {
    (u64::from(generation) << 32) | u64::from(index)
}
pub fn session_index(id: SessionId) -> u32 {
    id as u32
}
pub fn session_generation(id: SessionId) -> u32 {
    (id >> 32) as u32
}

/// One ring slot. Which fields mean what depends on [`MsgKind`]; unused fields are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Msg {
    /// A [`MsgKind`] value (kept raw: shared memory may hold anything).
    pub kind: u16,
    /// [`msg_flags`] bits.
    pub flags: u16,
    /// 0 or a positive errno.
    pub result: i32,
    pub session: SessionId,
    /// The application's own handle, echoed back in replies (BOUND, CONNECTED, ACCEPTED
    /// carries the listener's).
    pub cookie: u64,
    pub local: Endpoint,
    pub remote: Endpoint,
    pub arg: u32,
    pub value: u32,
    pub reserved: [u32; 4],
}

const _: () = assert!(size_of::<Msg>() == 64);
const _: () = assert!(size_of::<ControlRequest>() == 64);
const _: () = assert!(size_of::<ControlReply>() == 32);
const _: () = assert!(size_of::<StatsReply>() == 24 + 8 * STATS_COUNT);

impl Msg {
    pub fn new(kind: MsgKind) -> Self {
        Msg {
            kind: kind as u16,
            ..Default::default()
        }
    }
    pub fn for_session(kind: MsgKind, session: SessionId) -> Self {
        Msg {
            session,
            ..Msg::new(kind)
        }
    }
    pub fn kind(&self) -> Option<MsgKind> {
        MsgKind::from_raw(self.kind)
    }
}

/// Bits of [`Msg::flags`].
pub mod msg_flags {
    /// LISTEN / CONNECT: disable Nagle on the connection(s) (TCP_NODELAY).
    pub const NODELAY: u16 = 1;
    /// CLOSE: reset instead of a graceful close (SO_LINGER with a zero timeout).
    pub const ABORT: u16 = 2;
    /// LISTEN: the member holds the port but takes no connections yet (see
    /// [`MsgKind::Listen`]: passive members).
    pub const PASSIVE: u16 = 4;
}

/// Options for SETOPT (`arg`), with their `value`.
pub mod sockopt {
    /// value: 0 = Nagle on, 1 = off.
    pub const NODELAY: u32 = 1;
    /// value: keep-alive interval in seconds, 0 = off.
    pub const KEEPALIVE_SECS: u32 = 2;
    /// value: TCP_CORK, 1 = on, 0 = off. The state itself travels in the tx fifo (see
    /// the module documentation, "Cork and push"); the message wakes stackd to honour a
    /// push mark set with the uncork.
    pub const CORK: u32 = 3;
}

/// Bits of the tx fifo's cork word ([`Fifo::producer_set_cork`]).
pub mod cork {
    /// TCP_CORK is on.
    pub const OPTION: u32 = 1;
    /// The last send had MSG_MORE.
    pub const MORE: u32 = 2;
}

/// What a message is. App → stack kinds are below 64, stack → app kinds from 64.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgKind {
    /// cookie, local (0.0.0.0 = any address of the stack; port 0 = pick one), arg =
    /// backlog, flags NODELAY. Answered by BOUND.
    ///
    /// **Shared ports.** A LISTEN on a port that already listens *joins* it (the workers
    /// of a forking server, each attached on its own, all listening on what they
    /// inherited) when the application's uid (SO_PEERCRED, taken when it connected to the
    /// control socket) is the uid of the applications listening there and `local.addr`
    /// is the same (both 0.0.0.0, or both the stack's address). Any other uid or address:
    /// BOUND with EADDRINUSE. stackd does not look at SO_REUSEPORT: the kernel side of
    /// the shim's listener has already refused a bind the kernel would refuse. Each
    /// LISTEN that gets the port is a member with its own listener id, cookie and worker;
    /// the port's pool of listening sockets is as large as its largest member's backlog
    /// asks and lives while one member remains.
    ///
    /// **Passive members.** flags PASSIVE: the member holds the port (listen() was called)
    /// but is given no connections; a later LISTEN with the same cookie and without
    /// PASSIVE makes it an accepting member (BOUND again, same listener id). Connections
    /// that complete while no member accepts wait in the port's pool, as in a kernel
    /// backlog, and go to the first member that accepts. This is how a server that
    /// listens and accepts later, and nginx's master (listens, forks workers, never
    /// accepts), behave as on the kernel. A process whose parent is a member joins the
    /// port whatever its uid: it inherited the listening socket (nginx's master is root,
    /// its workers nobody).
    Listen = 1,
    /// arg = the listener id from BOUND. Removes that listener (no reply). On a shared
    /// port only this member goes: the port keeps listening for the others, and nothing
    /// accepted is reset (neither the others' sessions nor this application's). When the
    /// last member goes (UNLISTEN or its application's detach), the port stops listening
    /// and its half-open connections are reset.
    Unlisten = 2,
    /// cookie, remote, local (optional address/port), flags NODELAY. Answered by CONNECTED.
    Connect = 3,
    /// session: bytes were put in its tx fifo while the event flag was clear.
    Tx = 4,
    /// session, arg = `libc::SHUT_WR` or `SHUT_RDWR`: FIN after the tx fifo is drained.
    Shutdown = 5,
    /// session (or NO_SESSION + cookie of a pending CONNECT), flags ABORT. The application
    /// is done with the session; stackd sends what the tx fifo still holds, then FIN (or
    /// RST with ABORT, or when unread bytes remain, as the kernel does). No reply; the
    /// slot may be reused afterwards.
    Close = 6,
    /// session, arg = [`sockopt`] option, value.
    SetOpt = 7,
    /// session: the application freed space in the rx fifo after stackd asked for it.
    RxDrained = 8,

    /// cookie, arg = listener id (this LISTEN's own, also when it joined a shared port),
    /// local (the bound port), result (EADDRINUSE: the port listens for another uid or
    /// another address, or no port 0 pick was free; EADDRNOTAVAIL; EINVAL).
    Bound = 64,
    /// cookie = the listener's cookie, arg = listener id, session = the new session,
    /// local, remote. Sent when the handshake completes (the backlog is the ring), to
    /// the worker that sent the LISTEN. On a shared port each connection goes to exactly
    /// one member: the one with the fewest sessions accepted through it and not yet
    /// CLOSEd by its application (a session the peer reset counts until its CLOSE); ties
    /// go round robin in join order. A member whose application has no free session slot
    /// is passed over; the connection is reset only when no member has one.
    Accepted = 65,
    /// cookie, session (NO_SESSION on failure), local, remote, result (ECONNREFUSED,
    /// ETIMEDOUT, EADDRNOTAVAIL, ENETUNREACH, ENOBUFS).
    Connected = 66,
    /// session: bytes were put in its rx fifo while the event flag was clear.
    Rx = 67,
    /// session: the tx fifo has space again after the application asked for a notice.
    TxSpace = 68,
    /// session: the peer finished sending (FIN); every byte before it is in the rx fifo.
    Disconnected = 69,
    /// session, result = ECONNRESET: the connection is gone (reset by the peer or timed
    /// out); bytes already in the rx fifo stay readable. The slot stays the application's
    /// until it sends CLOSE, as after every other end of a session.
    Reset = 70,
}

impl MsgKind {
    pub fn from_raw(raw: u16) -> Option<MsgKind> {
        use MsgKind::*;
        Some(match raw {
            1 => Listen,
            2 => Unlisten,
            3 => Connect,
            4 => Tx,
            5 => Shutdown,
            6 => Close,
            7 => SetOpt,
            8 => RxDrained,
            64 => Bound,
            65 => Accepted,
            66 => Connected,
            67 => Rx,
            68 => TxSpace,
            69 => Disconnected,
            70 => Reset,
            _ => return None,
        })
    }
}

// ---------------------------------------------------------------------------------------
// Segment layout
// ---------------------------------------------------------------------------------------

/// The segment's first bytes, written by stackd before the memfd is handed over.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SegmentHeader {
    pub magic: u64,
    pub version: u32,
    pub max_workers: u32,
    pub ring_slots: u32,
    pub sessions: u32,
    pub fifo_bytes: u32,
    pub reserved: u32,
    pub rings_offset: u64,
    pub sessions_offset: u64,
    pub fifo_data_offset: u64,
    pub segment_bytes: u64,
}

/// Where everything is in a segment. Both sides compute it from the four sizes.
///
/// ```text
/// 0                 SegmentHeader (one page)
/// rings_offset      per worker w: ring app→stack, ring stack→app (each page-aligned:
///                   RingHeader, then ring_slots × Msg)
/// sessions_offset   per session s: SessionShared (rx FifoHeader, tx FifoHeader)
/// fifo_data_offset  per session s: rx bytes [fifo_bytes], tx bytes [fifo_bytes]
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentLayout {
    pub max_workers: u32,
    pub ring_slots: u32,
    pub sessions: u32,
    pub fifo_bytes: u32,
    pub ring_bytes: u64,
    pub rings_offset: u64,
    pub sessions_offset: u64,
    pub fifo_data_offset: u64,
    pub segment_bytes: u64,
}

/// The layout's sizes are out of range (not a power of two, zero, or too large).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayoutError;

fn align_up(value: u64, to: u64) -> Option<u64> {
    Some(value.checked_add(to - 1)? / to * to)
}

impl SegmentLayout {
    /// The layout for these sizes; `ring_slots` and `fifo_bytes` must be powers of two.
    pub fn new(
        max_workers: u32,
        sessions: u32,
        fifo_bytes: u32,
        ring_slots: u32,
    ) -> Result<SegmentLayout, LayoutError> {
        if max_workers == 0
            || max_workers > limits::MAX_WORKERS
            || sessions == 0
            || sessions > limits::MAX_SESSIONS
            || !fifo_bytes.is_power_of_two()
            || !(limits::MIN_FIFO_BYTES..=limits::MAX_FIFO_BYTES).contains(&fifo_bytes)
            || !ring_slots.is_power_of_two()
            || !(limits::MIN_RING_SLOTS..=limits::MAX_RING_SLOTS).contains(&ring_slots)
        {
            return Err(LayoutError);
        }
        let compute = || -> Option<SegmentLayout> {
            let ring_bytes = align_up(
                size_of::<RingHeader>() as u64 + u64::from(ring_slots) * size_of::<Msg>() as u64,
                PAGE,
            )?;
            let rings_offset = PAGE;
            let sessions_offset = rings_offset + u64::from(max_workers) * 2 * ring_bytes;
            let fifo_data_offset = align_up(
                sessions_offset + u64::from(sessions) * size_of::<SessionShared>() as u64,
                PAGE,
            )?;
            let segment_bytes =
                fifo_data_offset.checked_add(u64::from(sessions) * 2 * u64::from(fifo_bytes))?;
            Some(SegmentLayout {
                max_workers,
                ring_slots,
                sessions,
                fifo_bytes,
                ring_bytes,
                rings_offset,
                sessions_offset,
                fifo_data_offset,
                segment_bytes,
            })
        };
        compute().ok_or(LayoutError)
    }

    /// The layout stackd would create for this request (sizes clamped and rounded).
    pub fn for_request(request: &ControlRequest) -> Result<SegmentLayout, LayoutError> {
        fn pick(requested: u32, default: u32, min: u32, max: u32) -> u32 {
            let value = if requested == 0 { default } else { requested };
            value.clamp(min, max)
        }
        let max_workers = pick(
            request.max_workers,
            limits::DEFAULT_WORKERS,
            1,
            limits::MAX_WORKERS,
        );
        let sessions = pick(
            request.sessions,
            limits::DEFAULT_SESSIONS,
            1,
            limits::MAX_SESSIONS,
        );
        let fifo_bytes = pick(
            request.fifo_bytes,
            limits::DEFAULT_FIFO_BYTES,
            limits::MIN_FIFO_BYTES,
            limits::MAX_FIFO_BYTES,
        )
        .next_power_of_two();
        let ring_slots = pick(
            request.ring_slots,
            limits::DEFAULT_RING_SLOTS,
            limits::MIN_RING_SLOTS,
            limits::MAX_RING_SLOTS,
        )
        .next_power_of_two();
        SegmentLayout::new(max_workers, sessions, fifo_bytes, ring_slots)
    }

    /// The header stackd writes for this layout.
    pub fn header(&self) -> SegmentHeader {
        SegmentHeader {
            magic: SEGMENT_MAGIC,
            version: PROTOCOL_VERSION,
            max_workers: self.max_workers,
            ring_slots: self.ring_slots,
            sessions: self.sessions,
            fifo_bytes: self.fifo_bytes,
            reserved: 0,
            rings_offset: self.rings_offset,
            sessions_offset: self.sessions_offset,
            fifo_data_offset: self.fifo_data_offset,
            segment_bytes: self.segment_bytes,
        }
    }

    /// The layout a header describes, if it is well formed and matches what these sizes
    /// compute to (the application's check of a segment it received).
    pub fn from_header(header: &SegmentHeader) -> Result<SegmentLayout, LayoutError> {
        if header.magic != SEGMENT_MAGIC || header.version != PROTOCOL_VERSION {
            return Err(LayoutError);
        }
        let layout = SegmentLayout::new(
            header.max_workers,
            header.sessions,
            header.fifo_bytes,
            header.ring_slots,
        )?;
        if layout.header() != *header {
            return Err(LayoutError);
        }
        Ok(layout)
    }
}

/// Which way a ring carries messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    AppToStack,
    StackToApp,
}

/// A mapped segment: the views of its rings and fifos.
///
/// Holds a raw pointer; the owner keeps the mapping alive for as long as the `Segment`
/// and every view taken from it are used.
#[derive(Clone, Copy, Debug)]
pub struct Segment {
    base: *mut u8,
    layout: SegmentLayout,
}

// SAFETY: a Segment is a pointer into a shared mapping whose every mutable field is an
// atomic or a byte buffer governed by the SPSC protocol; moving the view between threads
// changes nothing about that.
unsafe impl Send for Segment {}
// SAFETY: as above; methods take &self and touch shared memory only through atomics and
// raw copies.
unsafe impl Sync for Segment {}

impl Segment {
    /// A view of the mapping at `base`.
    ///
    /// # Safety
    /// `base` is page-aligned and points to a readable and writable mapping of at least
    /// `layout.segment_bytes` bytes that outlives the view and all views derived from it.
    pub unsafe fn new(base: *mut u8, layout: SegmentLayout) -> Segment {
        Segment { base, layout }
    }

    pub fn layout(&self) -> &SegmentLayout {
        &self.layout
    }

    pub fn base(&self) -> *mut u8 {
        self.base
    }

    /// Writes the header (stackd, before handing out the memfd).
    pub fn write_header(&self) {
        // SAFETY: offset 0 is inside the mapping and page-aligned (enough for the header);
        // nobody else sees the segment yet.
        unsafe { ptr::write(self.base.cast::<SegmentHeader>(), self.layout.header()) }
    }

    /// The ring carrying `direction` messages of `worker`, if the worker exists.
    pub fn ring(&self, worker: u32, direction: Direction) -> Option<Ring> {
        if worker >= self.layout.max_workers {
            return None;
        }
        let index = u64::from(worker) * 2 + (direction == Direction::StackToApp) as u64;
        let offset = self.layout.rings_offset + index * self.layout.ring_bytes;
        // SAFETY: offset + ring_bytes lies inside the segment (layout arithmetic), the
        // offset is page-aligned, and the header is followed by ring_slots messages.
        unsafe {
            let header = self.base.add(offset as usize).cast::<RingHeader>();
            Some(Ring {
                header,
                slots: header.add(1).cast::<Msg>(),
                mask: self.layout.ring_slots - 1,
            })
        }
    }

    /// The session's receive fifo (stack produces, app consumes).
    pub fn rx_fifo(&self, session: u32) -> Option<Fifo> {
        self.fifo(session, 0)
    }

    /// The session's transmit fifo (app produces, stack consumes).
    pub fn tx_fifo(&self, session: u32) -> Option<Fifo> {
        self.fifo(session, 1)
    }

    fn fifo(&self, session: u32, which: u64) -> Option<Fifo> {
        if session >= self.layout.sessions {
            return None;
        }
        let shared_offset = self.layout.sessions_offset
            + u64::from(session) * size_of::<SessionShared>() as u64
            + which * size_of::<FifoHeader>() as u64;
        let data_offset = self.layout.fifo_data_offset
            + (u64::from(session) * 2 + which) * u64::from(self.layout.fifo_bytes);
        // SAFETY: both offsets lie inside the segment for session < sessions (layout
        // arithmetic); FifoHeader offsets are multiples of the cache line.
        unsafe {
            Some(Fifo {
                header: self.base.add(shared_offset as usize).cast::<FifoHeader>(),
                data: self.base.add(data_offset as usize),
                capacity: self.layout.fifo_bytes,
            })
        }
    }

    /// Empties both fifos of a session slot and clears their flags (stackd, before it
    /// hands the slot out again; the application no longer touches a closed session).
    pub fn reset_session(&self, session: u32) {
        for fifo in [self.rx_fifo(session), self.tx_fifo(session)]
            .into_iter()
            .flatten()
        {
            fifo.reset();
        }
    }
}

// ---------------------------------------------------------------------------------------
// Rings
// ---------------------------------------------------------------------------------------

#[repr(C, align(64))]
#[derive(Debug, Default)]
struct ProducerLine {
    /// Next slot the producer writes (free-running, wraps at 2^32).
    tail: AtomicU32,
    /// The producer found the ring full and waits for the consumer to free a slot.
    waiting_for_space: AtomicU32,
}

#[repr(C, align(64))]
#[derive(Debug, Default)]
struct ConsumerLine {
    /// Next slot the consumer reads.
    head: AtomicU32,
    /// The consumer is about to sleep on its eventfd: the producer must write it.
    sleeping: AtomicU32,
}

/// The head of a ring in the segment.
#[repr(C)]
#[derive(Debug, Default)]
pub struct RingHeader {
    producer: ProducerLine,
    consumer: ConsumerLine,
}

/// The ring's indices claim more entries than it has: the other side wrote garbage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Corrupt;

/// A view of one single-producer single-consumer message ring.
///
/// Each side must call only its own methods (producer: `push`, `wake_needed`,
/// `wait_for_space`; consumer: `pop`, `prepare_sleep`, `woke`, `space_waiter`).
#[derive(Clone, Copy, Debug)]
pub struct Ring {
    header: *mut RingHeader,
    slots: *mut Msg,
    mask: u32,
}

// SAFETY: see Segment; the view is a pointer into shared memory accessed through atomics.
unsafe impl Send for Ring {}
// SAFETY: as above.
unsafe impl Sync for Ring {}

impl Ring {
    fn header(&self) -> &RingHeader {
        // SAFETY: the pointer came from Segment::ring, inside a live mapping; the header
        // holds only atomics, so shared references to it are sound.
        unsafe { &*self.header }
    }

    pub fn capacity(&self) -> u32 {
        self.mask + 1
    }

    /// Producer: appends a message; false when the ring is full.
    pub fn push(&self, msg: &Msg) -> Result<bool, Corrupt> {
        let header = self.header();
        // Only the producer writes tail, so a relaxed load sees its own last store.
        let tail = header.producer.tail.load(Ordering::Relaxed);
        // Acquire: the consumer's reads of the slots it released happened before.
        let head = header.consumer.head.load(Ordering::Acquire);
        let used = tail.wrapping_sub(head);
        if used > self.capacity() {
            return Err(Corrupt);
        }
        if used == self.capacity() {
            return Ok(false);
        }
        // SAFETY: the index is masked into the slot array; the slot is free (between
        // tail and head + capacity), so the consumer does not read it now.
        unsafe { ptr::write_volatile(self.slots.add((tail & self.mask) as usize), *msg) };
        // Release: the slot's contents are visible before the consumer sees the new tail.
        header
            .producer
            .tail
            .store(tail.wrapping_add(1), Ordering::Release);
        Ok(true)
    }

    /// Producer, after one or more pushes: whether the consumer may be asleep and must be
    /// woken through its eventfd. Clears the consumer's sleeping flag, so a burst of
    /// messages costs one eventfd write.
    pub fn wake_needed(&self) -> bool {
        // Pairs with the fence in prepare_sleep: either the consumer sees our new tail, or
        // we see its sleeping flag (Dekker).
        fence(Ordering::SeqCst);
        let header = self.header();
        header.consumer.sleeping.load(Ordering::Relaxed) != 0
            && header.consumer.sleeping.swap(0, Ordering::Relaxed) != 0
    }

    /// Consumer: takes the next message, if any.
    pub fn pop(&self) -> Result<Option<Msg>, Corrupt> {
        let header = self.header();
        let head = header.consumer.head.load(Ordering::Relaxed);
        // Acquire: pairs with push's Release, so the slot's contents are visible.
        let tail = header.producer.tail.load(Ordering::Acquire);
        let available = tail.wrapping_sub(head);
        if available > self.capacity() {
            return Err(Corrupt);
        }
        if available == 0 {
            return Ok(None);
        }
        // SAFETY: masked index inside the slot array; the slot was published by push.
        let msg = unsafe { ptr::read_volatile(self.slots.add((head & self.mask) as usize)) };
        // Release: our read of the slot completes before the producer may overwrite it.
        header
            .consumer
            .head
            .store(head.wrapping_add(1), Ordering::Release);
        Ok(Some(msg))
    }

    /// Consumer: whether a message is waiting (a hint; `pop` is the truth).
    pub fn is_empty(&self) -> bool {
        let header = self.header();
        header.producer.tail.load(Ordering::Acquire) == header.consumer.head.load(Ordering::Relaxed)
    }

    /// Consumer, before sleeping on its eventfd: announces the sleep and re-checks. Returns
    /// true if the ring is still empty (sleep), false if a message arrived (do not sleep;
    /// the flag is withdrawn).
    pub fn prepare_sleep(&self) -> bool {
        let header = self.header();
        header.consumer.sleeping.store(1, Ordering::Relaxed);
        // Pairs with the fence in wake_needed (Dekker).
        fence(Ordering::SeqCst);
        if self.is_empty() {
            true
        } else {
            header.consumer.sleeping.store(0, Ordering::Relaxed);
            false
        }
    }

    /// Consumer, after waking: withdraws the sleeping flag (saves the producer a write).
    pub fn woke(&self) {
        self.header().consumer.sleeping.store(0, Ordering::Relaxed);
    }

    /// Producer, after `push` returned false: asks for a wake-up when a slot frees.
    /// Returns true if a slot is free already (retry at once).
    pub fn wait_for_space(&self) -> bool {
        let header = self.header();
        header
            .producer
            .waiting_for_space
            .store(1, Ordering::Relaxed);
        // Pairs with the fence in space_waiter (Dekker).
        fence(Ordering::SeqCst);
        let used = header
            .producer
            .tail
            .load(Ordering::Relaxed)
            .wrapping_sub(header.consumer.head.load(Ordering::Acquire));
        if used < self.capacity() {
            header
                .producer
                .waiting_for_space
                .store(0, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Consumer, after popping: whether the producer waits for space and must be woken
    /// (through the producer's own eventfd). Clears the request.
    pub fn space_waiter(&self) -> bool {
        fence(Ordering::SeqCst);
        let header = self.header();
        header.producer.waiting_for_space.load(Ordering::Relaxed) != 0
            && header.producer.waiting_for_space.swap(0, Ordering::Relaxed) != 0
    }
}

// ---------------------------------------------------------------------------------------
// Fifos
// ---------------------------------------------------------------------------------------

#[repr(C, align(64))]
#[derive(Debug, Default)]
struct FifoProducerLine {
    /// Bytes ever enqueued (free-running).
    tail: AtomicU32,
    /// The producer found the fifo full and wants a space notice.
    wants_space_notice: AtomicU32,
    /// An RX/TX message is outstanding for bytes of this fifo (set by the producer when it
    /// posts one, cleared by the consumer before it drains).
    has_event: AtomicU32,
    /// tx: [`cork`] bits (0: send as Nagle allows).
    cork: AtomicU32,
    /// tx: the stream position (a `tail` value) up to which bytes are to be pushed.
    push_mark: AtomicU32,
}

#[repr(C, align(64))]
#[derive(Debug, Default)]
struct FifoConsumerLine {
    /// Bytes ever dequeued.
    head: AtomicU32,
}

/// The shared state of one byte fifo.
#[repr(C)]
#[derive(Debug, Default)]
pub struct FifoHeader {
    producer: FifoProducerLine,
    consumer: FifoConsumerLine,
}

/// The two fifo headers of a session slot.
#[repr(C)]
#[derive(Debug, Default)]
pub struct SessionShared {
    pub rx: FifoHeader,
    pub tx: FifoHeader,
}

/// What the producer of a tx fifo asks for its bytes ([`Fifo::consumer_send_hint`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendHint {
    /// Bytes waiting in the fifo.
    pub len: u32,
    /// Some cork bit is set: hold a partial segment.
    pub corked: bool,
    /// The push mark as last written (a change means a new push).
    pub push_mark: u32,
    /// How many of the waiting bytes lie before the push mark (0 when it is behind the
    /// head, or out of range).
    pub push_len: u32,
}

/// A view of one single-producer single-consumer byte fifo.
#[derive(Clone, Copy, Debug)]
pub struct Fifo {
    header: *mut FifoHeader,
    data: *mut u8,
    capacity: u32,
}

// SAFETY: see Segment.
unsafe impl Send for Fifo {}
// SAFETY: see Segment.
unsafe impl Sync for Fifo {}

impl Fifo {
    fn header(&self) -> &FifoHeader {
        // SAFETY: from Segment::fifo, inside a live mapping; atomics only.
        unsafe { &*self.header }
    }

    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Bytes waiting to be dequeued.
    pub fn len(&self) -> Result<u32, Corrupt> {
        let header = self.header();
        let used = header
            .producer
            .tail
            .load(Ordering::Acquire)
            .wrapping_sub(header.consumer.head.load(Ordering::Acquire));
        if used > self.capacity {
            Err(Corrupt)
        } else {
            Ok(used)
        }
    }

    pub fn is_empty(&self) -> bool {
        matches!(self.len(), Ok(0))
    }

    /// Producer: bytes that fit now.
    pub fn free_space(&self) -> Result<u32, Corrupt> {
        Ok(self.capacity - self.len()?)
    }

    /// Producer: copies as much of `src` as fits; returns how much.
    pub fn enqueue(&self, src: &[u8]) -> Result<usize, Corrupt> {
        let header = self.header();
        let tail = header.producer.tail.load(Ordering::Relaxed);
        // Acquire: the consumer finished reading the bytes it released.
        let head = header.consumer.head.load(Ordering::Acquire);
        let used = tail.wrapping_sub(head);
        if used > self.capacity {
            return Err(Corrupt);
        }
        let count = src.len().min((self.capacity - used) as usize);
        let start = (tail & (self.capacity - 1)) as usize;
        let first = count.min(self.capacity as usize - start);
        // SAFETY: start < capacity and first <= capacity - start, and the rest wraps to
        // offset 0 with count - first <= start bytes: both copies stay inside the data
        // area. The range is free space, which the consumer does not read.
        unsafe {
            ptr::copy_nonoverlapping(src.as_ptr(), self.data.add(start), first);
            ptr::copy_nonoverlapping(src.as_ptr().add(first), self.data, count - first);
        }
        // Release: the bytes are visible before the new tail.
        header
            .producer
            .tail
            .store(tail.wrapping_add(count as u32), Ordering::Release);
        Ok(count)
    }

    /// Consumer: copies up to `dst.len()` bytes out; returns how many.
    pub fn dequeue(&self, dst: &mut [u8]) -> Result<usize, Corrupt> {
        let count = self.peek(dst)?;
        self.consume(count as u32)?;
        Ok(count)
    }

    /// Consumer: copies up to `dst.len()` bytes out without consuming them.
    pub fn peek(&self, dst: &mut [u8]) -> Result<usize, Corrupt> {
        self.peek_at(0, dst)
    }

    /// Consumer: like `peek`, from `offset` bytes past the front (MSG_PEEK into several
    /// buffers fills them in turn).
    pub fn peek_at(&self, offset: usize, dst: &mut [u8]) -> Result<usize, Corrupt> {
        let header = self.header();
        let head = header.consumer.head.load(Ordering::Relaxed);
        // Acquire: pairs with enqueue's Release, so the bytes are visible.
        let tail = header.producer.tail.load(Ordering::Acquire);
        let available = tail.wrapping_sub(head);
        if available > self.capacity {
            return Err(Corrupt);
        }
        let Some(available) = (available as usize).checked_sub(offset) else {
            return Ok(0);
        };
        let count = dst.len().min(available);
        let head = head.wrapping_add(offset as u32);
        let start = (head & (self.capacity - 1)) as usize;
        let first = count.min(self.capacity as usize - start);
        // SAFETY: as in enqueue, both ranges are inside the data area; they hold published
        // bytes the producer does not overwrite until head moves.
        unsafe {
            ptr::copy_nonoverlapping(self.data.add(start), dst.as_mut_ptr(), first);
            ptr::copy_nonoverlapping(self.data, dst.as_mut_ptr().add(first), count - first);
        }
        Ok(count)
    }

    /// Consumer: drops `count` bytes from the front (after `peek`).
    pub fn consume(&self, count: u32) -> Result<(), Corrupt> {
        if count > self.len()? {
            return Err(Corrupt);
        }
        let header = self.header();
        let head = header.consumer.head.load(Ordering::Relaxed);
        // Release: our reads of those bytes complete before the producer may reuse them.
        header
            .consumer
            .head
            .store(head.wrapping_add(count), Ordering::Release);
        Ok(())
    }

    /// Producer, after enqueueing: whether to post the RX/TX message (the event flag
    /// flipped from 0 to 1).
    pub fn producer_should_notify(&self) -> bool {
        // Pairs with the fence in consumer_clear_event: either the consumer's drain sees
        // our bytes, or we see the flag it cleared and post a new message (Dekker).
        fence(Ordering::SeqCst);
        self.header().producer.has_event.swap(1, Ordering::Relaxed) == 0
    }

    /// Consumer, on taking an RX/TX message off its ring and before each drain: re-arms
    /// the notification (see the module documentation, "Data notifications").
    pub fn consumer_clear_event(&self) {
        self.header().producer.has_event.store(0, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// Producer, when the fifo was too full: asks the consumer to send a space notice.
    /// Returns the free space after the request (nonzero: space appeared meanwhile, the
    /// request may or may not be answered).
    pub fn request_space_notice(&self) -> Result<u32, Corrupt> {
        self.header()
            .producer
            .wants_space_notice
            .store(1, Ordering::Relaxed);
        // Pairs with the fence in consumer_take_space_request (Dekker).
        fence(Ordering::SeqCst);
        self.free_space()
    }

    /// Consumer, after dequeueing: whether the producer asked for a space notice (clears
    /// the request; send RX_DRAINED / TX_SPACE when true).
    pub fn consumer_take_space_request(&self) -> bool {
        fence(Ordering::SeqCst);
        let line = &self.header().producer;
        line.wants_space_notice.load(Ordering::Relaxed) != 0
            && line.wants_space_notice.swap(0, Ordering::Relaxed) != 0
    }

    /// Producer (tx): sets or clears `bits` of the cork word; returns the word before.
    /// Set them before enqueueing the bytes they are to cover (the enqueue's release of
    /// the tail publishes them with the bytes); clear them after the last covered byte is
    /// enqueued, then [`Fifo::producer_push`].
    pub fn producer_set_cork(&self, bits: u32, on: bool) -> u32 {
        let word = &self.header().producer.cork;
        // Release (clearing): the bytes enqueued before are visible with the uncork.
        if on {
            word.fetch_or(bits, Ordering::AcqRel)
        } else {
            word.fetch_and(!bits, Ordering::AcqRel)
        }
    }

    /// Producer (tx): the cork bits now (the producer's own view).
    pub fn producer_cork(&self) -> u32 {
        self.header().producer.cork.load(Ordering::Relaxed)
    }

    /// Producer (tx): marks everything enqueued so far to be pushed. False when nothing
    /// was enqueued since the last mark (no wake-up needed for it).
    pub fn producer_push(&self) -> bool {
        let line = &self.header().producer;
        // Only the producer writes tail and push_mark.
        let tail = line.tail.load(Ordering::Relaxed);
        if line.push_mark.load(Ordering::Relaxed) == tail {
            return false;
        }
        // Release: the cork bits cleared before are visible with the mark.
        line.push_mark.store(tail, Ordering::Release);
        true
    }

    /// Consumer (tx): the cork bits, the push mark, the fill level, and the cork bits
    /// again; corked if either read says so. A byte seen is then seen with the cork that
    /// covered it (the second read), a byte enqueued before an uncork is seen with the
    /// uncork (the first), and the bytes before a push mark with the mark.
    pub fn consumer_send_hint(&self) -> Result<SendHint, Corrupt> {
        let header = self.header();
        let before = header.producer.cork.load(Ordering::Acquire);
        let push_mark = header.producer.push_mark.load(Ordering::Acquire);
        let len = self.len()?;
        let after = header.producer.cork.load(Ordering::Acquire);
        let corked = (before | after) != 0;
        let head = header.consumer.head.load(Ordering::Relaxed);
        // A mark behind the head is spent.
        let ahead = push_mark.wrapping_sub(head);
        Ok(SendHint {
            len,
            corked,
            push_mark,
            push_len: if ahead <= self.capacity {
                ahead.min(len)
            } else {
                0
            },
        })
    }

    /// Empties the fifo and clears its flags (stackd, when a slot is recycled).
    pub fn reset(&self) {
        let header = self.header();
        header.producer.tail.store(0, Ordering::Relaxed);
        header.producer.cork.store(0, Ordering::Relaxed);
        header.producer.push_mark.store(0, Ordering::Relaxed);
        header.consumer.head.store(0, Ordering::Relaxed);
        header
            .producer
            .wants_space_notice
            .store(0, Ordering::Relaxed);
        header.producer.has_event.store(0, Ordering::Relaxed);
        // Release: the reset is visible before the message that hands the slot out.
        fence(Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Heap {
        ptr: *mut u8,
        layout: std::alloc::Layout,
    }
    impl Heap {
        fn new(bytes: u64) -> Heap {
            let layout = std::alloc::Layout::from_size_align(bytes as usize, 4096).unwrap();
            // SAFETY: nonzero size; zeroed memory is a valid initial segment.
            let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
            assert!(!ptr.is_null());
            Heap { ptr, layout }
        }
    }
    impl Drop for Heap {
        fn drop(&mut self) {
            // SAFETY: allocated in new with this layout.
            unsafe { std::alloc::dealloc(self.ptr, self.layout) }
        }
    }

    fn segment() -> (Heap, Segment) {
        let layout = SegmentLayout::new(2, 4, 4096, 64).unwrap();
        let heap = Heap::new(layout.segment_bytes);
        // SAFETY: the allocation is page-aligned, segment_bytes long and outlives the view
        // (the test keeps `heap`).
        let seg = unsafe { Segment::new(heap.ptr, layout) };
        seg.write_header();
        (heap, seg)
    }

    #[test]
    fn layout_is_consistent_and_rejects_bad_sizes() {
        let layout = SegmentLayout::new(2, 4, 4096, 64).unwrap();
        assert_eq!(layout.rings_offset % PAGE, 0);
        assert_eq!(layout.fifo_data_offset % PAGE, 0);
        assert_eq!(SegmentLayout::from_header(&layout.header()), Ok(layout));
        assert!(SegmentLayout::new(0, 4, 4096, 64).is_err());
        assert!(SegmentLayout::new(2, 4, 5000, 64).is_err());
        assert!(SegmentLayout::new(2, 4, 4096, 65).is_err());
        let mut bad = layout.header();
        bad.fifo_data_offset += 64;
        assert!(SegmentLayout::from_header(&bad).is_err());
        let req = ControlRequest::new(control_kind::ATTACH);
        let def = SegmentLayout::for_request(&req).unwrap();
        assert_eq!(def.sessions, limits::DEFAULT_SESSIONS);
        assert_eq!(def.fifo_bytes, limits::DEFAULT_FIFO_BYTES);
    }

    #[test]
    fn ring_is_fifo_bounded_and_detects_corruption() {
        let (_heap, seg) = segment();
        let ring = seg.ring(1, Direction::StackToApp).unwrap();
        assert!(seg.ring(2, Direction::AppToStack).is_none());
        for i in 0..64u64 {
            let mut m = Msg::new(MsgKind::Rx);
            m.cookie = i;
            assert_eq!(ring.push(&m), Ok(true));
        }
        assert_eq!(ring.push(&Msg::new(MsgKind::Rx)), Ok(false));
        assert!(!ring.wait_for_space());
        for i in 0..64u64 {
            assert_eq!(ring.pop().unwrap().unwrap().cookie, i);
            if i == 0 {
                assert!(ring.space_waiter());
                assert!(!ring.space_waiter());
            }
        }
        assert_eq!(ring.pop(), Ok(None));
        assert!(ring.prepare_sleep());
        ring.push(&Msg::new(MsgKind::Rx)).unwrap();
        assert!(ring.wake_needed());
        assert!(!ring.wake_needed(), "one wake per sleep");
        assert!(!ring.prepare_sleep(), "a message is waiting");
        // Garbage indices from the other side.
        // SAFETY: test-only poke at the header through the raw pointer.
        unsafe { (*ring.header).producer.tail.store(1000, Ordering::Relaxed) };
        assert_eq!(ring.pop(), Err(Corrupt));
    }

    #[test]
    fn fifo_wraps_and_flags_flip_once() {
        let (_heap, seg) = segment();
        let fifo = seg.tx_fifo(3).unwrap();
        assert!(seg.tx_fifo(4).is_none());
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut out = Vec::new();
        let mut sent = 0;
        let mut buf = [0u8; 1500];
        while out.len() < data.len() {
            sent += fifo
                .enqueue(&data[sent..(sent + 3000).min(data.len())])
                .unwrap();
            let n = fifo.dequeue(&mut buf).unwrap();
            out.extend_from_slice(&buf[..n]);
        }
        assert_eq!(out, data);
        assert!(fifo.producer_should_notify());
        assert!(!fifo.producer_should_notify());
        fifo.consumer_clear_event();
        assert!(fifo.producer_should_notify());
        assert_eq!(fifo.enqueue(&[0; 5000]), Ok(4096));
        assert_eq!(fifo.request_space_notice(), Ok(0));
        fifo.dequeue(&mut buf[..10]).unwrap();
        assert!(fifo.consumer_take_space_request());
        assert!(!fifo.consumer_take_space_request());
        seg.reset_session(3);
        assert!(fifo.is_empty());
        assert!(fifo.producer_should_notify());
    }

    #[test]
    fn peek_at_reads_past_the_front_across_the_wrap_without_consuming() {
        let (_heap, seg) = segment();
        let fifo = seg.rx_fifo(0).unwrap();
        // Move the front near the end of the 4 KiB data area so the peeks wrap.
        fifo.enqueue(&[0; 4000]).unwrap();
        fifo.consume(4000).unwrap();
        let data: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        fifo.enqueue(&data).unwrap();
        let (mut a, mut b) = ([0u8; 100], [0u8; 250]);
        assert_eq!(fifo.peek_at(0, &mut a), Ok(100));
        assert_eq!(fifo.peek_at(100, &mut b), Ok(200));
        assert_eq!((&a[..], &b[..200]), (&data[..100], &data[100..]));
        assert_eq!(fifo.peek_at(300, &mut b), Ok(0));
        assert_eq!(fifo.peek_at(301, &mut b), Ok(0));
        assert_eq!(fifo.len(), Ok(300));
    }

    #[test]
    fn cork_bits_and_push_marks_reach_the_consumer_and_reset_clears_them() {
        let (_heap, seg) = segment();
        let fifo = seg.tx_fifo(1).unwrap();
        assert_eq!(fifo.consumer_send_hint(), Ok(SendHint::default()));
        assert!(!fifo.producer_push(), "nothing enqueued: no push");
        // Corked before the bytes: the consumer sees them corked, nothing to push.
        fifo.producer_set_cork(cork::OPTION, true);
        fifo.enqueue(&[1; 100]).unwrap();
        let hint = fifo.consumer_send_hint().unwrap();
        assert!(hint.corked);
        assert_eq!((hint.len, hint.push_len, hint.push_mark), (100, 0, 0));
        // Uncork: the mark covers everything so far; a second push adds nothing.
        assert_eq!(fifo.producer_set_cork(cork::OPTION, false), cork::OPTION);
        assert!(fifo.producer_push());
        assert!(!fifo.producer_push());
        fifo.producer_set_cork(cork::MORE, true);
        fifo.enqueue(&[2; 50]).unwrap();
        let hint = fifo.consumer_send_hint().unwrap();
        assert!(hint.corked, "MSG_MORE bit");
        assert_eq!((hint.len, hint.push_len, hint.push_mark), (150, 100, 100));
        // Once the consumer is past the mark it is spent.
        let mut buf = [0u8; 120];
        assert_eq!(fifo.dequeue(&mut buf), Ok(120));
        let hint = fifo.consumer_send_hint().unwrap();
        assert_eq!((hint.len, hint.push_len), (30, 0));
        assert_eq!(fifo.producer_cork(), cork::MORE);
        seg.reset_session(1);
        assert_eq!(fifo.consumer_send_hint(), Ok(SendHint::default()));
        assert_eq!(fifo.producer_cork(), 0);
    }

    #[test]
    fn msg_kinds_round_trip() {
        for raw in 0..=u16::MAX {
            if let Some(kind) = MsgKind::from_raw(raw) {
                assert_eq!(kind as u16, raw);
            }
        }
        let id = session_id(7, 9);
        assert_eq!((session_index(id), session_generation(id)), (7, 9));
    }

    /// Waits for an eventfd with a generous timeout; a timeout means a lost wake-up.
    fn sleep_on(fd: std::os::fd::RawFd) {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, 5000) };
        assert_eq!(ready, 1, "lost wake-up: slept 5 s with work pending");
        crate::sys::eventfd_drain(fd);
    }

    /// Producer and consumer on two threads, each sleeping on its eventfd exactly as the
    /// protocol says: every message arrives in order and no wake-up is lost, across many
    /// full-ring and empty-ring transitions.
    #[test]
    fn ring_sleep_and_space_protocol_loses_no_wakeup_across_threads() {
        use std::os::fd::AsRawFd;
        let (heap, seg) = segment();
        let ring = seg.ring(0, Direction::AppToStack).unwrap();
        let consumer_wake = crate::sys::eventfd().unwrap();
        let producer_wake = crate::sys::eventfd().unwrap();
        const COUNT: u64 = 200_000;
        let (cw, pw) = (consumer_wake.as_raw_fd(), producer_wake.as_raw_fd());
        let consumer = std::thread::spawn(move || {
            let mut next = 0u64;
            while next < COUNT {
                match ring.pop().unwrap() {
                    Some(msg) => {
                        assert_eq!(msg.cookie, next);
                        next += 1;
                        if ring.space_waiter() {
                            crate::sys::eventfd_signal(pw).unwrap();
                        }
                    }
                    None => {
                        if ring.prepare_sleep() {
                            sleep_on(cw);
                            ring.woke();
                        }
                    }
                }
            }
        });
        for i in 0..COUNT {
            let mut msg = Msg::new(MsgKind::Tx);
            msg.cookie = i;
            loop {
                if ring.push(&msg).unwrap() {
                    break;
                }
                if !ring.wait_for_space() {
                    sleep_on(pw);
                }
            }
            if ring.wake_needed() {
                crate::sys::eventfd_signal(cw).unwrap();
            }
        }
        consumer.join().unwrap();
        drop(heap);
    }

    /// A byte stream through a fifo between two threads with TX-style event messages and
    /// space notices, both sides sleeping when they cannot proceed: the stream arrives
    /// intact and nobody sleeps forever.
    #[test]
    fn fifo_events_and_space_notices_lose_nothing_across_threads() {
        use std::os::fd::AsRawFd;
        let (heap, seg) = segment();
        let fifo = seg.tx_fifo(0).unwrap();
        let consumer_wake = crate::sys::eventfd().unwrap();
        let producer_wake = crate::sys::eventfd().unwrap();
        let (cw, pw) = (consumer_wake.as_raw_fd(), producer_wake.as_raw_fd());
        const LEN: usize = 4 << 20;
        let consumer = std::thread::spawn(move || {
            let mut got = 0usize;
            let mut hash = 0u64;
            let mut buf = [0u8; 3000];
            while got < LEN {
                // On an event: clear the flag, then drain.
                fifo.consumer_clear_event();
                let n = fifo.dequeue(&mut buf).unwrap();
                for &b in &buf[..n] {
                    hash = hash.wrapping_mul(31).wrapping_add(u64::from(b));
                }
                got += n;
                if n > 0 && fifo.consumer_take_space_request() {
                    crate::sys::eventfd_signal(pw).unwrap();
                }
                if n == 0 {
                    // Sleep until the producer posts an event (it does when the flag is
                    // clear, which it is: we cleared it above and found nothing).
                    sleep_on(cw);
                }
            }
            hash
        });
        let data: Vec<u8> = (0..LEN).map(|i| (i * 13 % 251) as u8).collect();
        let mut sent = 0usize;
        while sent < LEN {
            let n = fifo.enqueue(&data[sent..(sent + 5000).min(LEN)]).unwrap();
            sent += n;
            if n > 0 && fifo.producer_should_notify() {
                crate::sys::eventfd_signal(cw).unwrap();
            }
            if n == 0 && fifo.request_space_notice().unwrap() == 0 {
                sleep_on(pw);
            }
        }
        let want = data
            .iter()
            .fold(0u64, |h, &b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        assert_eq!(consumer.join().unwrap(), want);
        drop(heap);
    }
}
