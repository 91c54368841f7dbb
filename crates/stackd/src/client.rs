//! The application side of the protocol, for tests, tools and as the reference the shim
//! follows: attach, register workers, exchange messages, move bytes through the fifos.
//!
//! This module uses std and libc directly, so it is not for the shim's hook paths as it
//! stands (there, every call must go to the real libc functions); [`crate::proto`] is.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::proto::{
    self, control_kind, ControlReply, ControlRequest, Corrupt, Direction, Fifo, Msg, MsgKind, Ring,
    Segment, SegmentHeader, SegmentLayout, SessionId,
};
use crate::sys::{self, Mapping};

/// Sizes asked for at ATTACH (0 = stackd's default).
#[derive(Clone, Debug, Default)]
pub struct AttachOptions {
    pub name: String,
    pub max_workers: u32,
    pub sessions: u32,
    pub fifo_bytes: u32,
    pub ring_slots: u32,
}

fn corrupt(_: Corrupt) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "shared ring or fifo indices are corrupt",
    )
}

fn protocol_error(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// One application's attachment: the control connection and the mapped segment.
#[derive(Debug)]
pub struct Attachment {
    control: Mutex<OwnedFd>,
    mapping: Arc<Mapping>,
    segment: Segment,
}

/// Sends a request and waits for its reply and descriptors.
fn exchange(control: RawFd, request: &ControlRequest) -> io::Result<(ControlReply, Vec<OwnedFd>)> {
    sys::send_with_fds(control, proto::plain_bytes(request), &[])?;
    let mut buf = [0u8; 64];
    let (len, fds) = sys::recv_with_fds(control, &mut buf)?;
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "stackd closed the control connection",
        ));
    }
    let reply: ControlReply =
        proto::read_plain(&buf[..len]).ok_or_else(|| protocol_error("short control reply"))?;
    if reply.magic != proto::CONTROL_MAGIC || reply.version != proto::PROTOCOL_VERSION {
        return Err(protocol_error(
            "control reply has a foreign magic or version",
        ));
    }
    if reply.result != 0 {
        return Err(io::Error::from_raw_os_error(reply.result));
    }
    Ok((reply, fds))
}

/// stackd's counters (`ringshim stat --stackd`), over a connection of its own that never
/// attaches. A peer stackd does not serve gets EACCES, as for ATTACH.
pub fn stats(control_path: &Path) -> io::Result<proto::StatsReply> {
    let control = sys::connect_seqpacket(control_path)?;
    let request = ControlRequest::new(control_kind::STATS);
    sys::send_with_fds(control.as_raw_fd(), proto::plain_bytes(&request), &[])?;
    let mut buf = [0u8; std::mem::size_of::<proto::StatsReply>() + 8];
    let (len, _) = sys::recv_with_fds(control.as_raw_fd(), &mut buf)?;
    if let Some(reply) = proto::read_plain::<proto::StatsReply>(&buf[..len]) {
        if reply.magic != proto::CONTROL_MAGIC || reply.version != proto::PROTOCOL_VERSION {
            return Err(protocol_error("stats reply has a foreign magic or version"));
        }
        return Ok(reply);
    }
    // A refusal is a plain ControlReply carrying the errno.
    match proto::read_plain::<ControlReply>(&buf[..len]) {
        Some(r) if r.result != 0 => Err(io::Error::from_raw_os_error(r.result)),
        _ if len == 0 => Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "stackd closed the control connection",
        )),
        _ => Err(protocol_error("short stats reply")),
    }
}

/// Attaches to the stackd listening at `control_path`; returns the attachment and its
/// worker 0.
pub fn attach(control_path: &Path, options: &AttachOptions) -> io::Result<(Attachment, Worker)> {
    let control = sys::connect_seqpacket(control_path)?;
    let mut request = ControlRequest::new(control_kind::ATTACH);
    request.max_workers = options.max_workers;
    request.sessions = options.sessions;
    request.fifo_bytes = options.fifo_bytes;
    request.ring_slots = options.ring_slots;
    for (dst, src) in request.name.iter_mut().zip(options.name.bytes().take(31)) {
        *dst = src;
    }
    let (reply, fds) = exchange(control.as_raw_fd(), &request)?;
    let [segment_fd, app_wake, stack_wake]: [OwnedFd; 3] = fds
        .try_into()
        .map_err(|_| protocol_error("ATTACH reply must carry three descriptors"))?;
    let size = sys::file_size(segment_fd.as_raw_fd())?;
    if size != reply.segment_bytes || size < 4096 {
        return Err(protocol_error("segment size differs from the reply"));
    }
    let mapping = Mapping::map(segment_fd.as_raw_fd(), size as usize)?;
    // SAFETY: the mapping is at least one page long and page-aligned; SegmentHeader is
    // plain integers.
    let header: SegmentHeader =
        unsafe { std::ptr::read_volatile(mapping.as_ptr().cast::<SegmentHeader>()) };
    let layout = SegmentLayout::from_header(&header)
        .map_err(|_| protocol_error("segment header is malformed"))?;
    if layout.segment_bytes != size {
        return Err(protocol_error(
            "segment header disagrees with the file size",
        ));
    }
    // SAFETY: the mapping covers layout.segment_bytes and lives in an Arc that every view
    // holder (Attachment, Worker) keeps.
    let segment = unsafe { Segment::new(mapping.as_ptr(), layout) };
    let mapping = Arc::new(mapping);
    let worker = Worker::new(reply.worker, app_wake, stack_wake, segment, mapping.clone())?;
    Ok((
        Attachment {
            control: Mutex::new(control),
            mapping,
            segment,
        },
        worker,
    ))
}

impl Attachment {
    /// Registers another worker (e.g. for another thread).
    pub fn add_worker(&self) -> io::Result<Worker> {
        let control = self
            .control
            .lock()
            .map_err(|_| protocol_error("control lock poisoned"))?;
        let (reply, fds) = exchange(
            control.as_raw_fd(),
            &ControlRequest::new(control_kind::WORKER_ADD),
        )?;
        let [app_wake, stack_wake]: [OwnedFd; 2] = fds
            .try_into()
            .map_err(|_| protocol_error("WORKER_ADD reply must carry two descriptors"))?;
        Worker::new(
            reply.worker,
            app_wake,
            stack_wake,
            self.segment,
            self.mapping.clone(),
        )
    }

    pub fn layout(&self) -> &SegmentLayout {
        self.segment.layout()
    }

    /// The raw view of the segment (diagnostics, and tests that play a misbehaving app).
    pub fn segment(&self) -> Segment {
        self.segment
    }

    /// The control connection (its closing is how stackd learns the application is gone).
    pub fn control_fd(&self) -> RawFd {
        match self.control.lock() {
            Ok(fd) => fd.as_raw_fd(),
            Err(poisoned) => poisoned.into_inner().as_raw_fd(),
        }
    }
}

/// One worker: its two rings and eventfds. Use it from one thread at a time.
#[derive(Debug)]
pub struct Worker {
    index: u32,
    app_wake: OwnedFd,
    stack_wake: OwnedFd,
    to_stack: Ring,
    from_stack: Ring,
    segment: Segment,
    _mapping: Arc<Mapping>,
}

impl Worker {
    fn new(
        index: u32,
        app_wake: OwnedFd,
        stack_wake: OwnedFd,
        segment: Segment,
        mapping: Arc<Mapping>,
    ) -> io::Result<Worker> {
        let to_stack = segment
            .ring(index, Direction::AppToStack)
            .ok_or_else(|| protocol_error("worker index outside the segment"))?;
        let from_stack = segment
            .ring(index, Direction::StackToApp)
            .ok_or_else(|| protocol_error("worker index outside the segment"))?;
        Ok(Worker {
            index,
            app_wake,
            stack_wake,
            to_stack,
            from_stack,
            segment,
            _mapping: mapping,
        })
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    /// The eventfd stackd writes when this worker may be asleep (for an epoll set).
    pub fn wake_fd(&self) -> RawFd {
        self.app_wake.as_raw_fd()
    }

    /// Posts a message to stackd; waits (up to 10 s) while the ring is full.
    pub fn send(&self, msg: &Msg) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.to_stack.push(msg).map_err(corrupt)? {
                if self.to_stack.wake_needed() {
                    sys::eventfd_signal(self.stack_wake.as_raw_fd())?;
                }
                return Ok(());
            }
            if self.to_stack.wait_for_space() {
                continue;
            }
            // Make sure stackd is awake to drain the ring, then sleep until it frees a
            // slot (it writes our eventfd when it sees waiting_for_space).
            sys::eventfd_signal(self.stack_wake.as_raw_fd())?;
            let now = Instant::now();
            if now >= deadline {
                return Err(io::Error::from(io::ErrorKind::TimedOut));
            }
            wait_readable(self.app_wake.as_raw_fd(), Some(deadline - now))?;
            sys::eventfd_drain(self.app_wake.as_raw_fd());
        }
    }

    /// The next message from stackd, if one is waiting. An RX re-arms its session's
    /// notification as it is taken (proto, "Data notifications"), so a caller that
    /// already read those bytes still hears of the next ones.
    pub fn try_recv(&self) -> io::Result<Option<Msg>> {
        let msg = self.from_stack.pop().map_err(corrupt)?;
        if let Some(m) = &msg {
            if m.kind() == Some(MsgKind::Rx) {
                if let Ok(rx) = self.rx_fifo(m.session) {
                    rx.consumer_clear_event();
                }
            }
            if self.from_stack.space_waiter() {
                sys::eventfd_signal(self.stack_wake.as_raw_fd())?;
            }
        }
        Ok(msg)
    }

    /// The next message, sleeping on the eventfd up to `timeout` (None = forever).
    pub fn recv(&self, timeout: Option<Duration>) -> io::Result<Option<Msg>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(msg) = self.try_recv()? {
                return Ok(Some(msg));
            }
            let remaining = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(None);
                    }
                    Some(d - now)
                }
                None => None,
            };
            if self.from_stack.prepare_sleep() {
                wait_readable(self.app_wake.as_raw_fd(), remaining)?;
                sys::eventfd_drain(self.app_wake.as_raw_fd());
                self.from_stack.woke();
            }
        }
    }

    /// The session's receive fifo.
    pub fn rx_fifo(&self, session: SessionId) -> io::Result<Fifo> {
        self.segment
            .rx_fifo(proto::session_index(session))
            .ok_or_else(|| protocol_error("session index outside the segment"))
    }

    /// The session's transmit fifo.
    pub fn tx_fifo(&self, session: SessionId) -> io::Result<Fifo> {
        self.segment
            .tx_fifo(proto::session_index(session))
            .ok_or_else(|| protocol_error("session index outside the segment"))
    }

    /// Copies as much of `data` as fits into the session's tx fifo and tells stackd. When
    /// not everything fit, asks for a TX_SPACE notice (wait for it before writing more).
    pub fn write(&self, session: SessionId, data: &[u8]) -> io::Result<usize> {
        let fifo = self.tx_fifo(session)?;
        let mut written = fifo.enqueue(data).map_err(corrupt)?;
        if written < data.len() && fifo.request_space_notice().map_err(corrupt)? > 0 {
            // Space appeared between the enqueue and the request.
            written += fifo.enqueue(&data[written..]).map_err(corrupt)?;
        }
        if written > 0 && fifo.producer_should_notify() {
            self.send(&Msg::for_session(MsgKind::Tx, session))?;
        }
        Ok(written)
    }

    /// Copies received bytes of the session out; 0 when the fifo is empty.
    pub fn read(&self, session: SessionId, buf: &mut [u8]) -> io::Result<usize> {
        let fifo = self.rx_fifo(session)?;
        // Re-arm the RX notification before draining, so bytes enqueued after this
        // point produce a new message.
        fifo.consumer_clear_event();
        let read = fifo.dequeue(buf).map_err(corrupt)?;
        if read > 0 && fifo.consumer_take_space_request() {
            self.send(&Msg::for_session(MsgKind::RxDrained, session))?;
        }
        Ok(read)
    }
}

/// Waits until `fd` is readable or the timeout passes (EINTR retried).
fn wait_readable(fd: RawFd, timeout: Option<Duration>) -> io::Result<()> {
    let ms = timeout.map_or(-1, |t| t.as_millis().clamp(1, i32::MAX as u128) as i32);
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one live pollfd.
        let ret = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ret >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
