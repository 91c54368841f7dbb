//! Sessions (connections) and listeners: smoltcp sockets tied to slots of an
//! application's segment.
//!
//! **Listen backlog.** smoltcp has no accept queue: one socket in LISTEN takes one SYN and
//! becomes the connection; a SYN that finds no listening socket is answered with RST. So a
//! listening port here is a pool of listening sockets on the same port, refilled after every
//! received frame that changed a socket (see `poll_network`), up to `max(backlog, 8)`
//! sockets in LISTEN (at most 64: smoltcp scans every socket for every segment), plus up to
//! 1024 half-open ones. A pooled socket whose handshake completes is handed to an
//! application at once as ACCEPTED: the accept queue is the application's ring.
//!
//! **Shared listeners.** A port's pool belongs to a [`ListenGroup`]; each LISTEN that gets
//! it is a [`Listener`] (a member, with its own id, cookie and worker). A LISTEN on a port
//! that already has a group joins it when the application's uid (SO_PEERCRED at attach)
//! is the group's and the address is the same (both the wildcard, or both the stack's
//! address); otherwise EADDRINUSE. That is how the workers of a forking server (nginx: the
//! master listens, each worker attaches on its own) or the reuseport listeners of a
//! threaded one share a port. Each completed connection goes to ONE member: the one with
//! the fewest sessions accepted through it and not yet closed by its application (CLOSE
//! frees the slot; a session reset by the peer still counts until then), ties broken
//! round robin in join order; a member whose application has no free session slot is
//! skipped (the connection is reset only when no member has one). UNLISTEN or the member
//! application's detach removes that member only; the pool, its half-open connections and
//! the other members' sessions are untouched. The last member's removal closes the pool.
//!
//! **Data.** Each turn moves bytes from smoltcp's receive buffer into the session's rx
//! fifo (the fifo's free space plus smoltcp's buffer is the advertised window) and from the
//! tx fifo into smoltcp's send buffer; RX and TX_SPACE are posted when their flags say the
//! application wants them.
//!
//! **Cork and push** (the kernel's TCP_CORK, MSG_MORE, and the push of an uncork or of
//! TCP_NODELAY; see `proto`, "Cork and push"). smoltcp has neither cork nor push, so both
//! live in that tx fifo → smoltcp move: while the application's cork bits are set, only
//! whole segments (MSS multiples) move and a partial tail waits in the fifo, for at most
//! [`CORK_CEILING`] (the kernel's 200 ms); a shutdown or close uncorks. A new push mark
//! moves everything before it and, for a session with Nagle on, turns Nagle off until
//! smoltcp's send buffer is empty (all acknowledged), so the tail leaves at once as the
//! kernel's push (TCP_NAGLE_PUSH) does instead of waiting for the ACK of what is in flight:
//! with the peer delaying that ACK, up to 40 ms. Then the application's setting is back.
//! Without that, a corked response (nginx's `tcp_nopush`: header, then sendfile body)
//! left as a lone header and a body held by Nagle until the peer's delayed ACK.
//!
//! **Ends.** SHUTDOWN(SHUT_WR) and CLOSE send FIN once the tx fifo is empty; CLOSE with
//! unread bytes, with ABORT, or with bytes arriving afterwards sends RST (as the kernel
//! does). A closed session's socket moves to the closing list, which keeps it until its
//! FIN or RST is out (TIME-WAIT is not kept: smoltcp's fixed 10 s would hold 256 KiB of
//! buffers per connection), bounded by `CLOSE_TIMEOUT`; the slot is free at once.

use std::time::Duration as StdDuration;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{self, State};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{IpAddress, IpEndpoint, IpListenEndpoint};

use super::app::App;
use super::{
    log, Stack, ACK_DELAY, CLOSE_TIMEOUT, CORK_CEILING, RETRANSMIT_TIMEOUT, SOCKET_RX_BYTES,
    SOCKET_TX_BYTES,
};
use crate::config::LogLevel;
use crate::proto::{
    msg_flags, session_generation, session_id, session_index, sockopt, Endpoint, Fifo, Msg,
    MsgKind, Segment, SendHint, SessionId, NO_SESSION,
};

/// Most sockets in LISTEN per listener.
const MAX_LISTENING_POOL: usize = 64;
/// Most half-open (SYN-RECEIVED) connections per listener: the kernel's SYN queue is
/// separate from the accept backlog too (tcp_max_syn_backlog), so the app's backlog does
/// not bound it.
const MAX_EMBRYONIC: usize = 1024;

/// A session slot of an application's segment.
#[derive(Default)]
pub(crate) struct Slot {
    /// Bumped each time the slot is handed out, so stale ids are recognised.
    pub(crate) generation: u32,
    pub(crate) session: Option<Session>,
}

/// A connection owned by an application.
pub(crate) struct Session {
    pub(crate) handle: SocketHandle,
    pub(crate) worker: u32,
    /// The listener (member) it was accepted through, whose open count it is in.
    listener: Option<u32>,
    /// CONNECT's cookie (for CONNECTED and a CLOSE of a pending connect).
    cookie: u64,
    /// The ephemeral port this session reserved (outgoing connections).
    pub(crate) local_port: Option<u16>,
    connecting: Option<Instant>,
    last_state: State,
    fin_reported: bool,
    reset_reported: bool,
    shutdown_requested: bool,
    fin_queued: bool,
    app_closed: bool,
    /// The application's TCP_NODELAY (Nagle is off meanwhile while `pushing`).
    nodelay: bool,
    /// The tx fifo's push mark as last honoured.
    push_mark: u32,
    /// Nagle is off for a push until smoltcp's send buffer is empty.
    pushing: bool,
    /// Since when a cork holds a partial segment in the tx fifo.
    corked_since: Option<Instant>,
}

impl Session {
    fn new(handle: SocketHandle, worker: u32, state: State, nodelay: bool) -> Session {
        Session {
            handle,
            worker,
            listener: None,
            cookie: 0,
            local_port: None,
            connecting: None,
            last_state: state,
            fin_reported: false,
            reset_reported: false,
            shutdown_requested: false,
            fin_queued: false,
            app_closed: false,
            nodelay,
            push_mark: 0,
            pushing: false,
            corked_since: None,
        }
    }
}

/// A socket on its way out (FIN or RST still to send), no longer any app's.
pub(crate) struct Closing {
    handle: SocketHandle,
    port: Option<u16>,
    /// Time since stackd's start after which it is reset.
    pub(crate) deadline: StdDuration,
    /// Seen finished once; removed on the next pass (after one more transmit).
    finished: bool,
    /// Reset at its deadline; if even the RST cannot leave (no ARP answer), it is dropped
    /// at the next deadline.
    reset_at_deadline: bool,
}

/// One LISTEN that got a port: an application's membership of the port's
/// [`ListenGroup`], under the id BOUND gave it (UNLISTEN names it).
pub(crate) struct Listener {
    pub(crate) app: u32,
    worker: u32,
    cookie: u64,
    port: u16,
    /// This member's backlog, clamped: the pool keeps the largest of its members'.
    target_listening: usize,
    nodelay: bool,
    /// Sessions accepted through this member that its application has not closed yet.
    open: u32,
    /// False for a passive member (LISTEN with PASSIVE): it is given no connections.
    accepting: bool,
}

/// A listening port: a pool of smoltcp sockets in LISTEN (and half-open ones) shared by
/// its members, every one an application of `uid`.
pub(crate) struct ListenGroup {
    uid: u32,
    endpoint: IpListenEndpoint,
    /// Listener ids, in join order.
    members: Vec<u32>,
    /// Position in `members` where the round robin among equally loaded members starts.
    next: usize,
    target_listening: usize,
    max_embryonic: usize,
    /// For new pool sockets (the first member's); each accepted socket then takes its
    /// member's setting.
    nodelay: bool,
    pool: Vec<SocketHandle>,
}

fn to_endpoint(ep: Option<IpEndpoint>) -> Endpoint {
    match ep {
        Some(IpEndpoint {
            addr: IpAddress::Ipv4(addr),
            port,
        }) => Endpoint::new(addr.octets(), port),
        _ => Endpoint::default(),
    }
}

/// A smoltcp socket with stackd's buffers and TCP settings.
fn new_socket(nodelay: bool) -> tcp::Socket<'static> {
    let mut socket = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0u8; SOCKET_RX_BYTES]),
        tcp::SocketBuffer::new(vec![0u8; SOCKET_TX_BYTES]),
    );
    socket.set_ack_delay(Some(ACK_DELAY));
    socket.set_nagle_enabled(!nodelay);
    socket.set_timeout(Some(RETRANSMIT_TIMEOUT));
    socket
}

/// The cork state of a session pass (see the module documentation).
#[derive(Clone, Copy, Debug)]
struct Corks {
    now: Instant,
    /// The segment size a cork fills before bytes move (the interface's MTU less the
    /// IPv4 and TCP headers).
    mss: u32,
    /// The earliest end of a cork's hold ([`CORK_CEILING`]), for the loop's timer.
    deadline: Option<Instant>,
    counters: CorkCounters,
}

impl Corks {
    /// How many of the tx fifo's bytes may move into smoltcp now: all of them unless a
    /// cork holds a partial segment (see the module documentation).
    fn allows(&mut self, session: &mut Session, hint: &SendHint, capacity: u32) -> usize {
        let closing = session.shutdown_requested || session.app_closed;
        // A fifo too small for a segment (jumbo MTU) cannot wait for one: the tail held
        // stays under half of it, so a writer always finds room.
        let segment = self.mss.min(capacity / 2).max(1);
        if !hint.corked || closing {
            session.corked_since = None;
            return hint.len as usize;
        }
        let allowed = (hint.len - hint.len % segment).max(hint.push_len);
        if allowed == hint.len {
            session.corked_since = None;
            return allowed as usize;
        }
        let since = match session.corked_since {
            Some(since) => since,
            None => {
                self.counters.holds += 1;
                session.corked_since = Some(self.now);
                self.now
            }
        };
        let deadline = since + CORK_CEILING;
        if self.now >= deadline {
            self.counters.ceiling_flushes += 1;
            session.corked_since = None;
            return hint.len as usize;
        }
        self.deadline = Some(self.deadline.map_or(deadline, |d| d.min(deadline)));
        allowed as usize
    }
}

/// What the session pass decided about a session.
enum Disposition {
    Keep,
    /// A connect failed before the app learned the session: remove the socket now.
    Discard,
    /// The app closed it and its last bytes are in smoltcp: move it to the closing list.
    Retire,
}

/// Everything the pass over one session needs besides the session.
struct Pass<'a> {
    sockets: &'a mut smoltcp::iface::SocketSet<'static>,
    posts: &'a mut Vec<(u32, Msg)>,
    now: Instant,
    broken: bool,
    corks: Corks,
}

/// What corks did (counted in [`super::StackCounters`]).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct CorkCounters {
    /// A cork began holding a partial segment.
    pub(crate) holds: u64,
    /// Push marks honoured (uncork, TCP_NODELAY on, a send after MSG_MORE ones).
    pub(crate) pushes: u64,
    /// Holds ended by the ceiling.
    pub(crate) ceiling_flushes: u64,
}

impl Pass<'_> {
    /// One session: connect completion, bytes both ways, FIN and RST, close.
    fn service(
        &mut self,
        session: &mut Session,
        id: SessionId,
        rx: Fifo,
        tx: Fifo,
    ) -> (bool, Disposition) {
        let socket = self.sockets.get_mut::<tcp::Socket>(session.handle);
        let state = socket.state();
        let mut progress = false;

        if let Some(started) = session.connecting {
            match state {
                State::SynSent | State::SynReceived => return (false, Disposition::Keep),
                State::Closed | State::TimeWait | State::Listen => {
                    // smoltcp drops a SYN nobody answers after RETRANSMIT_TIMEOUT; an
                    // earlier end is the peer's RST.
                    let waited = self.now - started;
                    let errno = if waited + Duration::from_secs(1) >= RETRANSMIT_TIMEOUT {
                        libc::ETIMEDOUT
                    } else {
                        libc::ECONNREFUSED
                    };
                    let mut msg = Msg::new(MsgKind::Connected);
                    msg.cookie = session.cookie;
                    msg.session = NO_SESSION;
                    msg.result = errno;
                    self.posts.push((session.worker, msg));
                    return (true, Disposition::Discard);
                }
                _ => {
                    session.connecting = None;
                    let mut msg = Msg::for_session(MsgKind::Connected, id);
                    msg.cookie = session.cookie;
                    msg.local = to_endpoint(socket.local_endpoint());
                    msg.remote = to_endpoint(socket.remote_endpoint());
                    self.posts.push((session.worker, msg));
                    progress = true;
                }
            }
        }

        // Received bytes: smoltcp → rx fifo.
        if !session.app_closed {
            let mut moved = 0usize;
            loop {
                let mut corrupt = false;
                let got = socket.recv(|buf| {
                    let n = rx.enqueue(buf).unwrap_or_else(|_| {
                        corrupt = true;
                        0
                    });
                    (n, n)
                });
                self.broken |= corrupt;
                match got {
                    Ok(n) if n > 0 => moved += n,
                    _ => break,
                }
            }
            if moved > 0 {
                progress = true;
                if rx.producer_should_notify() {
                    self.posts
                        .push((session.worker, Msg::for_session(MsgKind::Rx, id)));
                }
            }
            if socket.recv_queue() > 0 {
                // The fifo is full: ask for RX_DRAINED. Space that appeared meanwhile is
                // used on the next turn.
                match rx.request_space_notice() {
                    Ok(free) if free > 0 => progress = true,
                    Ok(_) => {}
                    Err(_) => self.broken = true,
                }
            }
        } else if socket.recv_queue() > 0 && socket.is_active() {
            // Bytes arrived after the application closed: the kernel answers with RST.
            socket.abort();
            return (true, Disposition::Retire);
        }

        // A push has left once everything is acknowledged: the app's Nagle setting again.
        if session.pushing && socket.send_queue() == 0 {
            session.pushing = false;
            socket.set_nagle_enabled(!session.nodelay);
        }

        // Bytes to send: tx fifo → smoltcp, as far as a cork lets them.
        if socket.may_send() && !session.fin_queued {
            if !tx.is_empty() {
                tx.consumer_clear_event();
            }
            // After the clear (and its fence): bytes enqueued meanwhile post a new TX.
            let hint = tx.consumer_send_hint().unwrap_or_else(|_| {
                self.broken = true;
                SendHint::default()
            });
            if hint.push_mark != session.push_mark {
                session.push_mark = hint.push_mark;
                self.corks.counters.pushes += 1;
                if !session.nodelay {
                    socket.set_nagle_enabled(false);
                    session.pushing = true;
                    // smoltcp may now send what Nagle held: one more turn.
                    progress = true;
                }
            }
            let allowed = self.corks.allows(session, &hint, tx.capacity());
            let mut moved = 0usize;
            while moved < allowed {
                let mut corrupt = false;
                let left = allowed - moved;
                let sent = socket.send(|buf| {
                    let take = buf.len().min(left);
                    let n = tx.peek(&mut buf[..take]).unwrap_or_else(|_| {
                        corrupt = true;
                        0
                    });
                    if tx.consume(n as u32).is_err() {
                        corrupt = true;
                    }
                    (n, n)
                });
                self.broken |= corrupt;
                match sent {
                    Ok(n) if n > 0 && !corrupt => moved += n,
                    _ => break,
                }
            }
            if moved > 0 {
                progress = true;
                if tx.consumer_take_space_request() {
                    self.posts
                        .push((session.worker, Msg::for_session(MsgKind::TxSpace, id)));
                }
            }
        }

        // SHUTDOWN(SHUT_WR) or CLOSE: FIN once everything written is in smoltcp.
        if (session.shutdown_requested || session.app_closed)
            && !session.fin_queued
            && (tx.is_empty() || !socket.may_send())
        {
            socket.close();
            session.fin_queued = true;
            progress = true;
        }

        let state = socket.state();
        let peer_finished = matches!(
            state,
            State::CloseWait | State::LastAck | State::Closing | State::TimeWait
        ) || (state == State::Closed
            && matches!(session.last_state, State::LastAck | State::TimeWait));
        if !session.app_closed {
            if peer_finished && !session.fin_reported && socket.recv_queue() == 0 {
                session.fin_reported = true;
                self.posts
                    .push((session.worker, Msg::for_session(MsgKind::Disconnected, id)));
                progress = true;
            }
            // Only the pass that sees the socket close decides: on the next one
            // `last_state` is Closed too, and a graceful end would read as a reset.
            let newly_closed = state == State::Closed && session.last_state != State::Closed;
            if newly_closed && !peer_finished && !session.reset_reported {
                session.reset_reported = true;
                let mut msg = Msg::for_session(MsgKind::Reset, id);
                msg.result = libc::ECONNRESET;
                self.posts.push((session.worker, msg));
                progress = true;
            }
        }
        session.last_state = state;

        if session.app_closed && (session.fin_queued || state == State::Closed) {
            return (true, Disposition::Retire);
        }
        (progress, Disposition::Keep)
    }
}

impl Stack {
    fn post_to(&mut self, app: u32, worker: u32, msg: Msg) {
        if let Some(app) = self.apps.get_mut(&app) {
            app.post(worker, msg);
            self.counters.messages_to_apps += 1;
        }
    }

    pub(super) fn on_listen(&mut self, app: u32, worker: u32, msg: &Msg) {
        let mut reply = Msg::new(MsgKind::Bound);
        reply.cookie = msg.cookie;
        let Some(uid) = self.apps.get(&app).map(|a| a.uid) else {
            return;
        };
        let addr = match msg.local.addr {
            [0, 0, 0, 0] => None,
            a if a == self.config.ip.octets() => Some(IpAddress::Ipv4(a.into())),
            _ => {
                reply.result = libc::EADDRNOTAVAIL;
                return self.post_to(app, worker, reply);
            }
        };
        // The same member again (app, cookie and port): a passive one starts accepting.
        if let Some((&id, member)) = self
            .listeners
            .iter_mut()
            .find(|(_, l)| l.app == app && l.cookie == msg.cookie && l.port == msg.local.port)
        {
            member.accepting |= msg.flags & msg_flags::PASSIVE == 0;
            let port = member.port;
            let bound_addr = self.groups.get(&port).and_then(|g| g.endpoint.addr);
            log!(
                LogLevel::Debug,
                "app {app}: listener {id} on port {port} accepts"
            );
            self.service_listeners();
            reply.arg = id;
            reply.local =
                Endpoint::new(bound_addr.map_or([0; 4], |_| self.config.ip.octets()), port);
            return self.post_to(app, worker, reply);
        }
        // Port 0 picks a port nobody listens on: it never joins.
        let port = if msg.local.port == 0 {
            self.pick_ephemeral_port()
        } else {
            Some(msg.local.port)
        };
        let Some(port) = port else {
            reply.result = libc::EADDRINUSE;
            return self.post_to(app, worker, reply);
        };
        let target_listening = (msg.arg as usize).clamp(8, MAX_LISTENING_POOL);
        let nodelay = msg.flags & msg_flags::NODELAY != 0;
        let accepting = msg.flags & msg_flags::PASSIVE == 0;
        let endpoint = IpListenEndpoint { addr, port };
        let joined = match self.groups.get(&port) {
            None => false,
            Some(group)
                if group.endpoint == endpoint
                    && (group.uid == uid || self.parent_is_member(app, group)) =>
            {
                true
            }
            Some(group) => {
                log!(
                    LogLevel::Debug,
                    "app {app} (uid {uid}): port {port} is taken by uid {} on {}",
                    group.uid,
                    group.endpoint
                );
                reply.result = libc::EADDRINUSE;
                return self.post_to(app, worker, reply);
            }
        };
        let id = self.new_listener_id();
        self.listeners.insert(
            id,
            Listener {
                app,
                worker,
                cookie: msg.cookie,
                port,
                target_listening,
                nodelay,
                open: 0,
                accepting,
            },
        );
        let group = self.groups.entry(port).or_insert_with(|| ListenGroup {
            uid,
            endpoint,
            members: Vec::new(),
            next: 0,
            target_listening,
            max_embryonic: MAX_EMBRYONIC,
            nodelay,
            pool: Vec::new(),
        });
        group.members.push(id);
        group.target_listening = group.target_listening.max(target_listening);
        let members = group.members.len();
        self.service_listeners();
        reply.arg = id;
        reply.local = Endpoint::new(addr.map_or([0; 4], |_| self.config.ip.octets()), port);
        if joined {
            log!(
                LogLevel::Debug,
                "app {app}: listener {id} joins port {port} ({members} members)"
            );
        } else {
            log!(LogLevel::Debug, "app {app}: listener {id} on port {port}");
        }
        self.post_to(app, worker, reply);
    }

    /// Whether the parent process of `app` is an application that is a member of
    /// `group`: the fork child of a listener inherited its socket.
    fn parent_is_member(&self, app: u32, group: &ListenGroup) -> bool {
        let Some(parent) = self
            .apps
            .get(&app)
            .and_then(|a| crate::sys::parent_pid(a.pid))
        else {
            return false;
        };
        group.members.iter().any(|id| {
            self.listeners
                .get(id)
                .and_then(|l| self.apps.get(&l.app))
                .is_some_and(|a| a.pid == parent)
        })
    }

    /// Removes one member; the last member's removal closes the port's pool (its
    /// half-open connections are reset). Sessions already accepted stay their apps'.
    pub(crate) fn close_listener(&mut self, id: u32) {
        let Some(listener) = self.listeners.remove(&id) else {
            return;
        };
        let port = listener.port;
        let Some(group) = self.groups.get_mut(&port) else {
            return;
        };
        group.members.retain(|&member| member != id);
        if !group.members.is_empty() {
            let listeners = &self.listeners;
            group.target_listening = group
                .members
                .iter()
                .filter_map(|member| listeners.get(member))
                .map(|member| member.target_listening)
                .max()
                .unwrap_or(group.target_listening);
            log!(
                LogLevel::Debug,
                "listener {id} leaves port {port} ({} members left)",
                group.members.len()
            );
            return;
        }
        let Some(group) = self.groups.remove(&port) else {
            return;
        };
        for handle in group.pool {
            if self.sockets.get::<tcp::Socket>(handle).state() == State::Listen {
                self.sockets.remove(handle);
            } else {
                self.abort_socket(handle, None);
            }
        }
    }

    /// Refills every port's pool and hands completed handshakes to their apps.
    pub(super) fn service_listeners(&mut self) {
        let mut accepted: Vec<(u16, SocketHandle)> = Vec::new();
        let mut dead: Vec<SocketHandle> = Vec::new();
        for (&port, group) in self.groups.iter_mut() {
            let sockets = &mut self.sockets;
            // Without an accepting member, completed handshakes wait in the pool (a
            // kernel backlog); the pool's bound caps them.
            let accepting = group
                .members
                .iter()
                .any(|id| self.listeners.get(id).is_some_and(|l| l.accepting));
            let mut listening = 0;
            group
                .pool
                .retain(|&handle| match sockets.get::<tcp::Socket>(handle).state() {
                    State::Listen => {
                        listening += 1;
                        true
                    }
                    State::SynReceived => true,
                    State::Established | State::CloseWait if accepting => {
                        accepted.push((port, handle));
                        false
                    }
                    State::Established | State::CloseWait => true,
                    _ => {
                        dead.push(handle);
                        false
                    }
                });
            while listening < group.target_listening
                && group.pool.len() < group.target_listening + group.max_embryonic
            {
                let mut socket = new_socket(group.nodelay);
                if socket.listen(group.endpoint).is_err() {
                    break;
                }
                group.pool.push(sockets.add(socket));
                listening += 1;
            }
        }
        for handle in dead {
            self.abort_socket(handle, None);
        }
        for (port, handle) in accepted {
            self.accept(port, handle);
        }
    }

    /// The port's members in the order they should be offered a new connection: fewest
    /// open sessions first, equals in round-robin order starting at the group's cursor.
    fn accept_order(&self, group: &ListenGroup) -> Vec<(usize, u32)> {
        let count = group.members.len();
        let mut order: Vec<(u32, usize, usize, u32)> = group
            .members
            .iter()
            .enumerate()
            .filter_map(|(position, id)| {
                let open = self.listeners.get(id).filter(|l| l.accepting)?.open;
                let turn = (position + count - group.next % count) % count;
                Some((open, turn, position, *id))
            })
            .collect();
        order.sort_unstable();
        order.into_iter().map(|(_, _, pos, id)| (pos, id)).collect()
    }

    /// Gives an established pooled socket to one member of the port's group as a new
    /// session (see the module documentation for the choice).
    fn accept(&mut self, port: u16, handle: SocketHandle) {
        let Some(group) = self.groups.get(&port) else {
            return self.abort_socket(handle, None);
        };
        let order = self.accept_order(group);
        let socket = self.sockets.get::<tcp::Socket>(handle);
        let (local, remote, state) = (
            to_endpoint(socket.local_endpoint()),
            to_endpoint(socket.remote_endpoint()),
            socket.state(),
        );
        for (position, listener_id) in order {
            let Some(listener) = self.listeners.get(&listener_id) else {
                continue;
            };
            let (app_id, worker, cookie, nodelay) = (
                listener.app,
                listener.worker,
                listener.cookie,
                listener.nodelay,
            );
            let mut session = Session::new(handle, worker, state, nodelay);
            session.listener = Some(listener_id);
            let Some(id) = self
                .apps
                .get_mut(&app_id)
                .and_then(|app| allocate_slot(app, session))
            else {
                log!(
                    LogLevel::Debug,
                    "app {app_id}: no free session slot for a connection on port {port}"
                );
                continue;
            };
            if let Some(listener) = self.listeners.get_mut(&listener_id) {
                listener.open += 1;
            }
            if let Some(group) = self.groups.get_mut(&port) {
                group.next = position + 1;
            }
            self.sockets
                .get_mut::<tcp::Socket>(handle)
                .set_nagle_enabled(!nodelay);
            self.counters.sessions_accepted += 1;
            let mut msg = Msg::for_session(MsgKind::Accepted, id);
            msg.cookie = cookie;
            msg.arg = listener_id;
            msg.local = local;
            msg.remote = remote;
            return self.post_to(app_id, worker, msg);
        }
        self.counters.accepts_refused_no_slot += 1;
        log!(
            LogLevel::Debug,
            "port {port}: no member has a free session slot; resetting a new connection"
        );
        self.abort_socket(handle, None)
    }

    /// A session accepted through `listener` is closed by its app: one fewer open.
    fn release_accepted(&mut self, app: u32, listener: Option<u32>) {
        if let Some(listener) = listener
            .and_then(|id| self.listeners.get_mut(&id))
            .filter(|l| l.app == app)
        {
            listener.open = listener.open.saturating_sub(1);
        }
    }

    pub(super) fn on_connect(&mut self, app: u32, worker: u32, msg: &Msg) {
        let fail = |stack: &mut Stack, errno: i32| {
            let mut reply = Msg::new(MsgKind::Connected);
            reply.cookie = msg.cookie;
            reply.session = NO_SESSION;
            reply.result = errno;
            reply.remote = msg.remote;
            stack.post_to(app, worker, reply);
        };
        let own = self.config.ip.octets();
        if msg.remote.addr == [0; 4] || msg.remote.port == 0 {
            return fail(self, libc::EINVAL);
        }
        if msg.remote.addr == own {
            // smoltcp cannot talk to itself.
            return fail(self, libc::ECONNREFUSED);
        }
        if msg.local.addr != [0; 4] && msg.local.addr != own {
            return fail(self, libc::EADDRNOTAVAIL);
        }
        let (port, reserved) = if msg.local.port != 0 {
            (msg.local.port, None)
        } else {
            match self.pick_ephemeral_port() {
                Some(port) => (port, Some(port)),
                None => return fail(self, libc::EAGAIN),
            }
        };
        let nodelay = msg.flags & msg_flags::NODELAY != 0;
        let mut socket = new_socket(nodelay);
        let remote = IpEndpoint::new(IpAddress::Ipv4(msg.remote.addr.into()), msg.remote.port);
        let local = IpListenEndpoint {
            addr: (msg.local.addr != [0; 4]).then(|| IpAddress::Ipv4(own.into())),
            port,
        };
        if let Err(err) = socket.connect(self.iface.context(), remote, local) {
            log!(LogLevel::Debug, "app {app}: connect to {remote}: {err}");
            return fail(self, libc::ENETUNREACH);
        }
        let handle = self.sockets.add(socket);
        let mut session = Session::new(handle, worker, State::SynSent, nodelay);
        session.cookie = msg.cookie;
        session.local_port = reserved;
        session.connecting = Some(self.now());
        if let Some(port) = reserved {
            self.ports_in_use.insert(port);
        }
        let allocated = self
            .apps
            .get_mut(&app)
            .and_then(|a| allocate_slot(a, session));
        if allocated.is_none() {
            self.sockets.remove(handle);
            if let Some(port) = reserved {
                self.ports_in_use.remove(&port);
            }
            return fail(self, libc::ENOBUFS);
        }
        self.counters.sessions_connected += 1;
    }

    /// The slot a message names, if it is live and of the current generation.
    fn session_mut(&mut self, app: u32, id: SessionId) -> Option<(&mut Session, Segment)> {
        let attached = self.apps.get_mut(&app)?.attached.as_mut()?;
        let slot = attached.slots.get_mut(session_index(id) as usize)?;
        if slot.generation != session_generation(id) {
            return None;
        }
        Some((slot.session.as_mut()?, attached.segment))
    }

    /// TX: re-arms the session's tx notification before the pass drains its fifo.
    pub(super) fn on_tx_notice(&mut self, app: u32, msg: &Msg) {
        let index = session_index(msg.session);
        if let Some((_, segment)) = self.session_mut(app, msg.session) {
            if let Some(tx) = segment.tx_fifo(index) {
                tx.consumer_clear_event();
            }
        }
    }

    pub(super) fn on_close(&mut self, app: u32, msg: &Msg) {
        let index = if msg.session == NO_SESSION {
            // A pending connect, named by its cookie.
            let Some(attached) = self.apps.get(&app).and_then(|a| a.attached.as_ref()) else {
                return;
            };
            let found = attached.slots.iter().position(|slot| {
                slot.session
                    .as_ref()
                    .is_some_and(|s| s.connecting.is_some() && s.cookie == msg.cookie)
            });
            match found {
                Some(index) => index as u32,
                None => return,
            }
        } else {
            let Some((_, _)) = self.session_mut(app, msg.session) else {
                return;
            };
            session_index(msg.session)
        };
        let Some((session, segment)) = self.session_mut_by_index(app, index) else {
            return;
        };
        session.app_closed = true;
        let unread = segment.rx_fifo(index).is_some_and(|f| !f.is_empty());
        let handle = session.handle;
        let abort = msg.flags & msg_flags::ABORT != 0
            || unread
            || session.connecting.is_some()
            || self.sockets.get::<tcp::Socket>(handle).recv_queue() > 0;
        if abort {
            if let Some(session) = self.free_slot(app, index) {
                self.release_accepted(app, session.listener);
                self.abort_socket(session.handle, session.local_port);
            }
        }
        // Otherwise the session pass sends what is queued, then FIN, and retires it.
    }

    fn session_mut_by_index(&mut self, app: u32, index: u32) -> Option<(&mut Session, Segment)> {
        let attached = self.apps.get_mut(&app)?.attached.as_mut()?;
        let segment = attached.segment;
        Some((
            attached.slots.get_mut(index as usize)?.session.as_mut()?,
            segment,
        ))
    }

    /// Empties a slot and returns its session (the socket is the caller's to dispose of).
    fn free_slot(&mut self, app: u32, index: u32) -> Option<Session> {
        let attached = self.apps.get_mut(&app)?.attached.as_mut()?;
        let session = attached.slots.get_mut(index as usize)?.session.take()?;
        attached.free_slots.push(index);
        Some(session)
    }

    pub(super) fn on_shutdown(&mut self, app: u32, msg: &Msg) {
        if msg.arg != libc::SHUT_WR as u32 && msg.arg != libc::SHUT_RDWR as u32 {
            return;
        }
        if let Some((session, _)) = self.session_mut(app, msg.session) {
            session.shutdown_requested = true;
        }
    }

    pub(super) fn on_setopt(&mut self, app: u32, msg: &Msg) {
        let Some((session, _)) = self.session_mut(app, msg.session) else {
            return;
        };
        let handle = session.handle;
        match msg.arg {
            sockopt::NODELAY => {
                session.nodelay = msg.value != 0;
                // A push in progress restores the setting when it is done.
                if !session.pushing {
                    self.sockets
                        .get_mut::<tcp::Socket>(handle)
                        .set_nagle_enabled(msg.value == 0);
                }
            }
            sockopt::KEEPALIVE_SECS => self
                .sockets
                .get_mut::<tcp::Socket>(handle)
                .set_keep_alive((msg.value > 0).then(|| Duration::from_secs(u64::from(msg.value)))),
            // The cork and the push mark are in the tx fifo; the session pass that follows
            // this message honours them.
            sockopt::CORK => {}
            _ => {}
        }
    }

    /// Resets a socket and keeps it until the RST is out. A socket that never heard from
    /// its peer (LISTEN, SYN-SENT) or has no peer left goes at once: nobody has state to
    /// reset, and an RST to a neighbour that never answered ARP would hold smoltcp's one
    /// ARP request per second (interface-wide) for everyone else.
    pub(crate) fn abort_socket(&mut self, handle: SocketHandle, port: Option<u16>) {
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        let nobody_to_tell = match socket.state() {
            State::Listen | State::SynSent => true,
            State::Closed => socket.remote_endpoint().is_none(),
            _ => false,
        };
        if nobody_to_tell {
            self.sockets.remove(handle);
            if let Some(port) = port {
                self.ports_in_use.remove(&port);
            }
            return;
        }
        socket.abort();
        self.retire(handle, port);
    }

    fn retire(&mut self, handle: SocketHandle, port: Option<u16>) {
        self.closing.push(Closing {
            handle,
            port,
            deadline: self.started.elapsed() + CLOSE_TIMEOUT,
            finished: false,
            reset_at_deadline: false,
        });
    }

    /// Moves bytes and events for every session of every app.
    pub(super) fn service_sessions(&mut self) -> bool {
        self.service_listeners();
        let mut progress = false;
        let now = self.now();
        let mut posts: Vec<(u32, Msg)> = Vec::new();
        let mut retired: Vec<(SocketHandle, Option<u16>)> = Vec::new();
        let mut discarded: Vec<(SocketHandle, Option<u16>)> = Vec::new();
        let mut released: Vec<(u32, Option<u32>)> = Vec::new();
        let mut corks = Corks {
            now,
            mss: (self.device.mtu() as u32).saturating_sub(40),
            deadline: None,
            counters: CorkCounters::default(),
        };
        for app in self.apps.values_mut() {
            let Some(attached) = app.attached.as_mut() else {
                continue;
            };
            posts.clear();
            let mut pass = Pass {
                sockets: &mut self.sockets,
                posts: &mut posts,
                now,
                broken: false,
                corks,
            };
            let segment = attached.segment;
            for (index, slot) in attached.slots.iter_mut().enumerate() {
                let Some(session) = slot.session.as_mut() else {
                    continue;
                };
                let (Some(rx), Some(tx)) =
                    (segment.rx_fifo(index as u32), segment.tx_fifo(index as u32))
                else {
                    continue;
                };
                let id = session_id(index as u32, slot.generation);
                let (moved, disposition) = pass.service(session, id, rx, tx);
                progress |= moved;
                match disposition {
                    Disposition::Keep => continue,
                    Disposition::Discard => discarded.push((session.handle, session.local_port)),
                    Disposition::Retire => retired.push((session.handle, session.local_port)),
                }
                released.push((app.id, session.listener));
                slot.session = None;
                attached.free_slots.push(index as u32);
            }
            app.broken |= pass.broken;
            corks = pass.corks;
            for &(worker, msg) in posts.iter() {
                app.post(worker, msg);
                self.counters.messages_to_apps += 1;
            }
        }
        self.cork_deadline = corks.deadline;
        self.counters.cork_holds += corks.counters.holds;
        self.counters.cork_pushes += corks.counters.pushes;
        self.counters.cork_ceiling_flushes += corks.counters.ceiling_flushes;
        for (handle, port) in discarded {
            self.sockets.remove(handle);
            if let Some(port) = port {
                self.ports_in_use.remove(&port);
            }
        }
        for (handle, port) in retired {
            self.retire(handle, port);
        }
        for (app, listener) in released {
            self.release_accepted(app, listener);
        }
        progress
    }

    /// Removes closing sockets whose FIN or RST is out; resets those past their deadline.
    pub(super) fn reap_closing(&mut self) -> bool {
        let since_start = self.started.elapsed();
        let mut progress = false;
        let mut removed: Vec<(SocketHandle, Option<u16>)> = Vec::new();
        let sockets = &mut self.sockets;
        self.closing.retain_mut(|entry| {
            let socket = sockets.get_mut::<tcp::Socket>(entry.handle);
            if socket.recv_queue() > 0 && socket.is_active() && !entry.reset_at_deadline {
                // Bytes for a socket the app closed (FIN-WAIT): nobody will read them, and
                // the kernel answers with RST so the sender learns it (EPIPE there).
                socket.abort();
                entry.reset_at_deadline = true;
                entry.deadline = since_start + StdDuration::from_secs(5);
                progress = true;
                return true;
            }
            let done = match socket.state() {
                State::Closed => socket.remote_endpoint().is_none(),
                State::TimeWait => true,
                _ => false,
            };
            if !done {
                if since_start >= entry.deadline {
                    if entry.reset_at_deadline {
                        removed.push((entry.handle, entry.port));
                        return false;
                    }
                    socket.abort();
                    entry.reset_at_deadline = true;
                    entry.deadline = since_start + StdDuration::from_secs(5);
                    progress = true;
                }
                return true;
            }
            if entry.finished {
                removed.push((entry.handle, entry.port));
                return false;
            }
            // One more turn, so a final ACK or RST is transmitted first.
            entry.finished = true;
            progress = true;
            true
        });
        for (handle, port) in removed {
            self.sockets.remove(handle);
            if let Some(port) = port {
                self.ports_in_use.remove(&port);
            }
        }
        progress
    }
}

/// Hands out a free slot of the app for `session`; returns its id.
fn allocate_slot(app: &mut App, session: Session) -> Option<SessionId> {
    let attached = app.attached.as_mut()?;
    let index = attached.free_slots.pop()?;
    let slot = attached.slots.get_mut(index as usize)?;
    slot.generation = slot.generation.wrapping_add(1);
    attached.segment.reset_session(index);
    slot.session = Some(session);
    Some(session_id(index, slot.generation))
}
