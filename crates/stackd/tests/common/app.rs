//! A test application speaking the protocol through `ringshim_stackd::client`: an echo
//! server for any number of sessions, and a few helpers around single requests.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ringshim_stackd::client::{self, AttachOptions, Attachment, Worker};
use ringshim_stackd::proto::{msg_flags, Endpoint, Msg, MsgKind, SessionId};

#[derive(Default)]
struct EchoSession {
    /// Bytes read from rx and not yet accepted by tx.
    pending: Vec<u8>,
    peer_finished: bool,
}

/// An echo server over stackd.
pub struct EchoApp {
    pub attachment: Attachment,
    pub worker: Worker,
    sessions: HashMap<SessionId, EchoSession>,
    pub accepted: usize,
    /// The remote endpoint of every ACCEPTED, in order (which kernel client it serves).
    pub peers: Vec<Endpoint>,
    /// The listener id (`arg`) of every ACCEPTED, in order.
    pub accepted_via: Vec<u32>,
    pub resets: usize,
    pub closed: usize,
}

impl EchoApp {
    pub fn attach(control: &Path) -> io::Result<EchoApp> {
        let (attachment, worker) = client::attach(
            control,
            &AttachOptions {
                name: "echo-test".into(),
                ..Default::default()
            },
        )?;
        Ok(EchoApp {
            attachment,
            worker,
            sessions: HashMap::new(),
            accepted: 0,
            peers: Vec::new(),
            accepted_via: Vec::new(),
            resets: 0,
            closed: 0,
        })
    }

    /// LISTEN and wait for BOUND; returns (listener id, port).
    pub fn listen(&mut self, port: u16, backlog: u32) -> (u32, u16) {
        let reply = self.try_listen([0; 4], port, backlog);
        assert_eq!(reply.result, 0, "BOUND result");
        (reply.arg, reply.local.port)
    }

    /// LISTEN on `addr:port` and return BOUND as it came (result not checked).
    pub fn try_listen(&mut self, addr: [u8; 4], port: u16, backlog: u32) -> Msg {
        let mut msg = Msg::new(MsgKind::Listen);
        msg.cookie = 0x11;
        msg.local = Endpoint::new(addr, port);
        msg.arg = backlog;
        msg.flags = msg_flags::NODELAY;
        self.worker.send(&msg).expect("send LISTEN");
        let reply = self.expect_kind(MsgKind::Bound);
        assert_eq!(reply.cookie, 0x11);
        reply
    }

    /// UNLISTEN the listener BOUND named `id`.
    pub fn unlisten(&mut self, id: u32) {
        let mut msg = Msg::new(MsgKind::Unlisten);
        msg.arg = id;
        self.worker.send(&msg).expect("send UNLISTEN");
    }

    /// Whether this app accepted the connection whose kernel end is bound to `port`.
    pub fn served_port(&self, port: u16) -> bool {
        self.peers.iter().any(|p| p.port == port)
    }

    /// Serves on a thread of its own until [`Serving::stop`], like a worker process would.
    pub fn serve_in_background(mut self) -> Serving {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                self.step(Duration::from_millis(20)).expect("app step");
            }
            self
        });
        Serving {
            stop,
            thread: Some(thread),
        }
    }

    /// Serves messages until one of `kind` arrives (which is returned, not served).
    pub fn expect_kind(&mut self, kind: MsgKind) -> Msg {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {kind:?} within 10 s");
            if let Some(msg) = self.worker.recv(Some(left)).expect("recv") {
                if msg.kind() == Some(kind) {
                    return msg;
                }
                self.handle(msg).expect("handle");
            }
        }
    }

    /// Serves whatever arrives within `timeout`; returns whether anything did.
    pub fn step(&mut self, timeout: Duration) -> io::Result<bool> {
        let Some(msg) = self.worker.recv(Some(timeout))? else {
            return Ok(false);
        };
        self.handle(msg)?;
        while let Some(msg) = self.worker.try_recv()? {
            self.handle(msg)?;
        }
        Ok(true)
    }

    pub fn handle(&mut self, msg: Msg) -> io::Result<()> {
        match msg.kind() {
            Some(MsgKind::Accepted) => {
                self.accepted += 1;
                self.peers.push(msg.remote);
                self.accepted_via.push(msg.arg);
                self.sessions.insert(msg.session, EchoSession::default());
                self.pump(msg.session)
            }
            Some(MsgKind::Rx) | Some(MsgKind::TxSpace) => self.pump(msg.session),
            Some(MsgKind::Disconnected) => {
                if let Some(s) = self.sessions.get_mut(&msg.session) {
                    s.peer_finished = true;
                }
                self.pump(msg.session)
            }
            Some(MsgKind::Reset) => {
                self.resets += 1;
                if self.sessions.remove(&msg.session).is_some() {
                    self.worker
                        .send(&Msg::for_session(MsgKind::Close, msg.session))?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Moves bytes rx → tx for one session; closes it once the peer finished and all its
    /// bytes went back.
    fn pump(&mut self, id: SessionId) -> io::Result<()> {
        let Some(session) = self.sessions.get_mut(&id) else {
            return Ok(());
        };
        let mut buf = vec![0u8; 64 << 10];
        loop {
            if !session.pending.is_empty() {
                let n = self.worker.write(id, &session.pending)?;
                session.pending.drain(..n);
                if !session.pending.is_empty() {
                    // TX_SPACE will call us again.
                    break;
                }
            }
            let n = self.worker.read(id, &mut buf)?;
            if n == 0 {
                break;
            }
            session.pending.extend_from_slice(&buf[..n]);
        }
        if session.peer_finished
            && session.pending.is_empty()
            && self.worker.rx_fifo(id)?.is_empty()
        {
            self.sessions.remove(&id);
            self.closed += 1;
            self.worker.send(&Msg::for_session(MsgKind::Close, id))?;
        }
        Ok(())
    }
}

/// An [`EchoApp`] serving on its own thread.
pub struct Serving {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<EchoApp>>,
}

impl Serving {
    /// Stops serving and gives the app back (to inspect it, or to serve it again).
    pub fn stop(mut self) -> EchoApp {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("still serving");
        thread.join().expect("serving thread panicked")
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
