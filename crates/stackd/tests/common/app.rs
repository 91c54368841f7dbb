//! A test application speaking the protocol through `ringshim_stackd::client`: an echo
//! server for any number of sessions, and a few helpers around single requests.

use std::collections::HashMap;
use std::io;
use std::path::Path;
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
            resets: 0,
            closed: 0,
        })
    }

    /// LISTEN and wait for BOUND; returns (listener id, port).
    pub fn listen(&mut self, port: u16, backlog: u32) -> (u32, u16) {
        let mut msg = Msg::new(MsgKind::Listen);
        msg.cookie = 0x11;
        msg.local = Endpoint::new([0; 4], port);
        msg.arg = backlog;
        msg.flags = msg_flags::NODELAY;
        self.worker.send(&msg).expect("send LISTEN");
        let reply = self.expect_kind(MsgKind::Bound);
        assert_eq!(reply.result, 0, "BOUND result");
        assert_eq!(reply.cookie, 0x11);
        (reply.arg, reply.local.port)
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
