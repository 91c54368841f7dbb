//! Applications: the control connection (credentials, ATTACH, WORKER_ADD, death), the
//! segment, workers with their rings and eventfds, and the message traffic on the rings.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;

use super::session::Slot;
use super::{epoll_add, epoll_del, log, Stack, Token};
use crate::config::{Config, LogLevel};
use crate::proto::{
    self, control_kind, ControlReply, ControlRequest, Corrupt, Direction, Msg, MsgKind, Ring,
    Segment, SegmentLayout,
};
use crate::sys::{self, Mapping};

/// Most messages taken from one worker's ring per loop turn, so one busy worker cannot
/// starve the others.
const MESSAGES_PER_TURN: usize = 256;
/// Control connections (attached or not) stackd keeps at once.
const MAX_CONTROL_CONNECTIONS: usize = 4096;

/// One application worker as stackd sees it.
pub(crate) struct WorkerState {
    pub(crate) app_wake: OwnedFd,
    pub(crate) stack_wake: OwnedFd,
    pub(crate) to_app: Ring,
    pub(crate) from_app: Ring,
    /// Messages that did not fit in the ring, in order; flushed before any new one.
    pub(crate) outbox: VecDeque<Msg>,
    /// Something was pushed since the last wake-up check.
    pub(crate) posted: bool,
    /// The app freed ring space it was waiting for: wake it even if nothing was posted.
    pub(crate) wake_for_space: bool,
}

/// The attached part of an application.
pub(crate) struct Attached {
    pub(crate) segment: Segment,
    pub(crate) workers: Vec<WorkerState>,
    pub(crate) slots: Vec<Slot>,
    pub(crate) free_slots: Vec<u32>,
    // Dropped last (field order): every view above points into it.
    _mapping: Mapping,
}

/// An application process connected to the control socket.
pub struct App {
    pub(crate) id: u32,
    pub(crate) name: String,
    pub(crate) pid: i32,
    /// The peer's uid from SO_PEERCRED at connect time: listeners on one port are shared
    /// only between applications of the same uid.
    pub(crate) uid: u32,
    control: OwnedFd,
    /// Credentials passed the check; otherwise the first request is answered EACCES.
    allowed: bool,
    pub(crate) attached: Option<Attached>,
    /// The app broke the protocol (corrupt indices): detach it at the end of the turn.
    pub(crate) broken: bool,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("pid", &self.pid)
            .field("uid", &self.uid)
            .finish()
    }
}

impl App {
    /// Posts a message to one of the app's workers (queued locally while its ring is
    /// full). Returns false if the worker does not exist.
    pub(crate) fn post(&mut self, worker: u32, msg: Msg) -> bool {
        let Some(attached) = self.attached.as_mut() else {
            return false;
        };
        let Some(state) = attached.workers.get_mut(worker as usize) else {
            return false;
        };
        if state.outbox.is_empty() {
            match state.to_app.push(&msg) {
                Ok(true) => {
                    state.posted = true;
                    return true;
                }
                Ok(false) => {}
                Err(Corrupt) => {
                    self.broken = true;
                    return true;
                }
            }
        }
        state.outbox.push_back(msg);
        true
    }
}

/// Binds the control socket: creates its directory, replaces a stale socket file (but
/// not a live stackd's), and sets its mode (0600, or 0660 with --allow-group's group).
pub(crate) fn bind_control(config: &Config) -> io::Result<OwnedFd> {
    let path = &config.control;
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))
            })?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
        }
    }
    if path.exists() {
        if sys::connect_seqpacket(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another stackd is serving {}", path.display()),
            ));
        }
        std::fs::remove_file(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot remove stale {}: {e}", path.display()),
            )
        })?;
    }
    let listener = sys::listen_seqpacket(path, 128).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot listen on {}: {e}", path.display()),
        )
    })?;
    let mode = if let Some(gid) = config.allow_group {
        std::os::unix::fs::chown(path, None, Some(gid))?;
        0o660
    } else {
        0o600
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

impl Stack {
    /// Whether a peer's credentials let it attach: stackd's own uid, or --allow-group as
    /// its primary or a supplementary group.
    fn peer_allowed(&self, sock: &OwnedFd) -> (bool, i32, u32) {
        let Ok(cred) = sys::peer_credentials(sock.as_raw_fd()) else {
            return (false, 0, u32::MAX);
        };
        if cred.uid == self.own_uid {
            return (true, cred.pid, cred.uid);
        }
        if let Some(group) = self.config.allow_group {
            if cred.gid == group {
                return (true, cred.pid, cred.uid);
            }
            if let Ok(groups) = sys::peer_groups(sock.as_raw_fd()) {
                if groups.contains(&group) {
                    return (true, cred.pid, cred.uid);
                }
            }
        }
        (false, cred.pid, cred.uid)
    }

    pub(super) fn accept_control_connections(&mut self) {
        loop {
            let sock = match sys::accept(self.control.as_raw_fd()) {
                Ok(Some(sock)) => sock,
                Ok(None) => return,
                Err(err) => {
                    // EMFILE and friends: the connection stays queued; try again later.
                    log!(LogLevel::Error, "accept on the control socket: {err}");
                    return;
                }
            };
            if self.apps.len() >= MAX_CONTROL_CONNECTIONS {
                log!(
                    LogLevel::Error,
                    "too many control connections; refusing one"
                );
                continue;
            }
            let (allowed, pid, uid) = self.peer_allowed(&sock);
            let id = self.new_app_id();
            if !allowed {
                self.counters.apps_refused += 1;
                log!(
                    LogLevel::Info,
                    "refusing pid {pid} uid {uid}: not uid {} nor in the allowed group",
                    self.own_uid
                );
            }
            if epoll_add(
                self.epoll.as_raw_fd(),
                sock.as_raw_fd(),
                (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
                Token::AppControl(id),
            )
            .is_err()
            {
                continue;
            }
            self.apps.insert(
                id,
                App {
                    id,
                    name: String::new(),
                    pid,
                    uid,
                    control: sock,
                    allowed,
                    attached: None,
                    broken: false,
                },
            );
        }
    }

    /// Requests or death on an application's control connection.
    pub(super) fn on_app_control(&mut self, id: u32, events: u32) {
        loop {
            let Some(app) = self.apps.get(&id) else {
                return;
            };
            let mut buf = [0u8; 128];
            let result = sys::recv_with_fds(app.control.as_raw_fd(), &mut buf);
            match result {
                Ok((0, _)) => {
                    self.detach_app(id, "control connection closed");
                    return;
                }
                Ok((len, _fds)) => {
                    // Descriptors an app sends are dropped (closed) here: none are expected.
                    if !self.on_control_request(id, &buf[..len]) {
                        return;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    if events & (libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLRDHUP) as u32 != 0 {
                        self.detach_app(id, "control connection hung up");
                    }
                    return;
                }
                Err(err) => {
                    let reason = format!("control connection error: {err}");
                    self.detach_app(id, &reason);
                    return;
                }
            }
        }
    }

    fn reply(&mut self, id: u32, reply: ControlReply, fds: &[i32]) -> bool {
        let Some(app) = self.apps.get(&id) else {
            return false;
        };
        if let Err(err) =
            sys::send_with_fds(app.control.as_raw_fd(), proto::plain_bytes(&reply), fds)
        {
            let reason = format!("cannot reply on the control connection: {err}");
            self.detach_app(id, &reason);
            return false;
        }
        true
    }

    /// Handles one request; returns false when the connection is gone.
    fn on_control_request(&mut self, id: u32, bytes: &[u8]) -> bool {
        let Some(app) = self.apps.get(&id) else {
            return false;
        };
        let request: Option<ControlRequest> = proto::read_plain(bytes);
        let kind = request.map_or(0, |r| r.kind);
        if !app.allowed {
            self.reply(id, ControlReply::new(kind, libc::EACCES), &[]);
            self.detach_app(id, "credentials refused");
            return false;
        }
        let Some(request) = request
            .filter(|r| r.magic == proto::CONTROL_MAGIC && r.version == proto::PROTOCOL_VERSION)
        else {
            self.reply(id, ControlReply::new(kind, libc::EPROTO), &[]);
            self.detach_app(id, "malformed control request");
            return false;
        };
        match (request.kind, app.attached.is_some()) {
            (control_kind::STATS, _) => self.send_stats(id),
            (control_kind::ATTACH, false) => self.attach(id, &request),
            (control_kind::WORKER_ADD, true) => self.add_worker(id),
            _ => {
                self.reply(id, ControlReply::new(kind, libc::EPROTO), &[]);
                self.detach_app(id, "control request out of order");
                false
            }
        }
    }

    /// STATS: the counters, on a connection of an allowed peer (attached or not).
    fn send_stats(&mut self, id: u32) -> bool {
        let reply = self.stats();
        let Some(app) = self.apps.get(&id) else {
            return false;
        };
        if let Err(err) =
            sys::send_with_fds(app.control.as_raw_fd(), proto::plain_bytes(&reply), &[])
        {
            self.detach_app(
                id,
                &format!("cannot reply on the control connection: {err}"),
            );
            return false;
        }
        true
    }

    /// Creates a worker's eventfds and registers its stack_wake with epoll.
    fn new_worker(&self, app: u32, index: u32, segment: &Segment) -> io::Result<WorkerState> {
        let (Some(to_app), Some(from_app)) = (
            segment.ring(index, Direction::StackToApp),
            segment.ring(index, Direction::AppToStack),
        ) else {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        };
        let app_wake = sys::eventfd()?;
        let stack_wake = sys::eventfd()?;
        epoll_add(
            self.epoll.as_raw_fd(),
            stack_wake.as_raw_fd(),
            libc::EPOLLIN as u32,
            Token::WorkerWake(app, index as u16),
        )?;
        Ok(WorkerState {
            app_wake,
            stack_wake,
            to_app,
            from_app,
            outbox: VecDeque::new(),
            posted: false,
            wake_for_space: false,
        })
    }

    fn attach(&mut self, id: u32, request: &ControlRequest) -> bool {
        let name_len = request.name.iter().position(|&b| b == 0).unwrap_or(32);
        let name = String::from_utf8_lossy(&request.name[..name_len]).into_owned();
        let created = (|| -> io::Result<(OwnedFd, Attached)> {
            let layout = SegmentLayout::for_request(request)
                .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            let memfd = sys::memfd_segment("ringshim-stackd-segment", layout.segment_bytes)?;
            let mapping = Mapping::map(memfd.as_raw_fd(), layout.segment_bytes as usize)?;
            // SAFETY: the mapping is page-aligned, segment_bytes long, and owned by the
            // Attached that holds every view of it (dropped after them).
            let segment = unsafe { Segment::new(mapping.as_ptr(), layout) };
            segment.write_header();
            let worker = self.new_worker(id, 0, &segment)?;
            Ok((
                memfd,
                Attached {
                    segment,
                    workers: vec![worker],
                    slots: (0..layout.sessions).map(|_| Slot::default()).collect(),
                    free_slots: (0..layout.sessions).rev().collect(),
                    _mapping: mapping,
                },
            ))
        })();
        let (memfd, attached) = match created {
            Ok(created) => created,
            Err(err) => {
                log!(
                    LogLevel::Error,
                    "cannot create a segment for app {id}: {err}"
                );
                let errno = err.raw_os_error().unwrap_or(libc::ENOMEM);
                self.reply(id, ControlReply::new(control_kind::ATTACH, errno), &[]);
                return true;
            }
        };
        let mut reply = ControlReply::new(control_kind::ATTACH, 0);
        reply.worker = 0;
        reply.fd_count = 3;
        reply.segment_bytes = attached.segment.layout().segment_bytes;
        let fds = [
            memfd.as_raw_fd(),
            attached.workers[0].app_wake.as_raw_fd(),
            attached.workers[0].stack_wake.as_raw_fd(),
        ];
        let layout = *attached.segment.layout();
        let Some(app) = self.apps.get_mut(&id) else {
            return false;
        };
        app.name = name;
        app.attached = Some(attached);
        let (pid, app_name) = (app.pid, app.name.clone());
        if !self.reply(id, reply, &fds) {
            return false;
        }
        self.counters.apps_attached += 1;
        log!(
            LogLevel::Info,
            "app {id} attached: pid {pid} {app_name:?}, {} sessions × {} B fifos, {} workers max, segment {} B",
            layout.sessions,
            layout.fifo_bytes,
            layout.max_workers,
            layout.segment_bytes
        );
        // Our copy of the memfd is closed here; the mapping stays.
        drop(memfd);
        true
    }

    fn add_worker(&mut self, id: u32) -> bool {
        let Some(attached) = self.apps.get(&id).and_then(|a| a.attached.as_ref()) else {
            return false;
        };
        let index = attached.workers.len() as u32;
        let segment = attached.segment;
        let worker = match self.new_worker(id, index, &segment) {
            Ok(worker) => worker,
            Err(err) => {
                let errno = err.raw_os_error().unwrap_or(libc::ENOMEM);
                return self.reply(id, ControlReply::new(control_kind::WORKER_ADD, errno), &[]);
            }
        };
        let fds = [worker.app_wake.as_raw_fd(), worker.stack_wake.as_raw_fd()];
        let mut reply = ControlReply::new(control_kind::WORKER_ADD, 0);
        reply.worker = index;
        reply.fd_count = 2;
        if let Some(attached) = self.apps.get_mut(&id).and_then(|a| a.attached.as_mut()) {
            attached.workers.push(worker);
        }
        self.reply(id, reply, &fds)
    }

    /// The app is gone (or stackd stops): reset its connections, close its listeners (its
    /// memberships only: a port shared with other applications keeps listening for them,
    /// and their connections are untouched), unmap its segment.
    pub(crate) fn detach_app(&mut self, id: u32, reason: &str) {
        let Some(mut app) = self.apps.remove(&id) else {
            return;
        };
        epoll_del(self.epoll.as_raw_fd(), app.control.as_raw_fd());
        let mut reset = 0;
        let was_attached = app.attached.is_some();
        if let Some(attached) = app.attached.take() {
            for worker in &attached.workers {
                epoll_del(self.epoll.as_raw_fd(), worker.stack_wake.as_raw_fd());
            }
            for slot in attached.slots {
                if let Some(session) = slot.session {
                    self.abort_socket(session.handle, session.local_port);
                    reset += 1;
                }
            }
            let owned: Vec<u32> = self
                .listeners
                .iter()
                .filter(|(_, l)| l.app == id)
                .map(|(&lid, _)| lid)
                .collect();
            for lid in owned {
                self.close_listener(lid);
            }
            self.counters.apps_detached += 1;
            self.counters.sessions_reset_on_detach += reset;
            // `attached` drops here: its mapping is unmapped after the views are gone.
        }
        // A connection that never attached (`ringshim stat --stackd`) leaves quietly.
        if app.allowed && was_attached {
            log!(
                LogLevel::Info,
                "app {id} (pid {} {:?}) detached: {reason}; {reset} connection(s) reset",
                app.pid,
                app.name
            );
        }
    }

    pub(super) fn drop_broken_apps(&mut self) {
        let broken: Vec<u32> = self
            .apps
            .values()
            .filter(|a| a.broken)
            .map(|a| a.id)
            .collect();
        for id in broken {
            self.detach_app(id, "corrupt shared-memory indices");
        }
    }

    pub(super) fn on_worker_wake(&mut self, app: u32, worker: u16) {
        if let Some(state) = self
            .apps
            .get(&app)
            .and_then(|a| a.attached.as_ref())
            .and_then(|a| a.workers.get(usize::from(worker)))
        {
            sys::eventfd_drain(state.stack_wake.as_raw_fd());
        }
    }

    /// Takes messages off every worker's app→stack ring and acts on them.
    pub(super) fn drain_app_rings(&mut self) -> bool {
        let mut progress = false;
        let ids: Vec<u32> = self.apps.keys().copied().collect();
        let mut batch: Vec<(u32, Msg)> = Vec::new();
        for id in ids {
            batch.clear();
            let Some(app) = self.apps.get_mut(&id) else {
                continue;
            };
            let Some(attached) = app.attached.as_mut() else {
                continue;
            };
            for (index, worker) in attached.workers.iter_mut().enumerate() {
                let mut popped = 0;
                while popped < MESSAGES_PER_TURN {
                    match worker.from_app.pop() {
                        Ok(Some(msg)) => {
                            batch.push((index as u32, msg));
                            popped += 1;
                        }
                        Ok(None) => break,
                        Err(Corrupt) => {
                            app.broken = true;
                            break;
                        }
                    }
                }
                if popped > 0 && worker.from_app.space_waiter() {
                    worker.wake_for_space = true;
                }
            }
            if app.broken {
                continue;
            }
            self.counters.messages_from_apps += batch.len() as u64;
            progress |= !batch.is_empty();
            for &(worker, msg) in batch.iter() {
                self.on_app_message(id, worker, msg);
            }
        }
        progress
    }

    /// Flushes outboxes into the rings and writes the eventfd of every worker that may
    /// sleep and got something (or got the ring space it waited for).
    pub(super) fn flush_and_wake_apps(&mut self) {
        for app in self.apps.values_mut() {
            let Some(attached) = app.attached.as_mut() else {
                continue;
            };
            for worker in &mut attached.workers {
                while let Some(msg) = worker.outbox.front() {
                    match worker.to_app.push(msg) {
                        Ok(true) => {
                            worker.outbox.pop_front();
                            worker.posted = true;
                        }
                        Ok(false) => {
                            if !worker.to_app.wait_for_space() {
                                break;
                            }
                        }
                        Err(Corrupt) => {
                            app.broken = true;
                            break;
                        }
                    }
                }
                let wake = (worker.posted && worker.to_app.wake_needed()) || worker.wake_for_space;
                worker.posted = false;
                worker.wake_for_space = false;
                if wake {
                    self.counters.app_wakeups += 1;
                    let _ = sys::eventfd_signal(worker.app_wake.as_raw_fd());
                }
            }
        }
    }

    /// Announces the coming sleep on every app→stack ring; false if a message slipped in
    /// (then stackd must not sleep).
    pub(super) fn prepare_sleep(&mut self) -> bool {
        let mut may_sleep = true;
        for app in self.apps.values() {
            let Some(attached) = app.attached.as_ref() else {
                continue;
            };
            for worker in &attached.workers {
                may_sleep &= worker.from_app.prepare_sleep();
                // An outbox waiting for ring space is woken through stack_wake too.
            }
        }
        may_sleep
    }

    pub(super) fn woke(&mut self) {
        for app in self.apps.values() {
            let Some(attached) = app.attached.as_ref() else {
                continue;
            };
            for worker in &attached.workers {
                worker.from_app.woke();
            }
        }
    }

    /// Dispatches one app→stack message.
    fn on_app_message(&mut self, app: u32, worker: u32, msg: Msg) {
        match msg.kind() {
            Some(MsgKind::Listen) => self.on_listen(app, worker, &msg),
            Some(MsgKind::Unlisten) => {
                if self.listeners.get(&msg.arg).is_some_and(|l| l.app == app) {
                    self.close_listener(msg.arg);
                }
            }
            Some(MsgKind::Connect) => self.on_connect(app, worker, &msg),
            Some(MsgKind::Close) => self.on_close(app, &msg),
            Some(MsgKind::Shutdown) => self.on_shutdown(app, &msg),
            Some(MsgKind::SetOpt) => self.on_setopt(app, &msg),
            // The session pass looks at every fifo anyway; a TX re-arms its fifo's
            // notification first (proto, "Data notifications"): the pass's own clear
            // comes only when it finds bytes, and bytes this message announced may
            // already have gone in an earlier pass.
            Some(MsgKind::Tx) => self.on_tx_notice(app, &msg),
            Some(MsgKind::RxDrained) => {}
            _ => log!(
                LogLevel::Debug,
                "app {app} worker {worker}: ignoring message kind {}",
                msg.kind
            ),
        }
    }
}
