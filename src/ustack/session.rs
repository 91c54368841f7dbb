//! What the shim knows of one socket carried by ringshim-stackd, and the readiness the
//! kernel would report for it. Pure state: no system calls, no shared memory (the fifo
//! fill levels are passed in), so the state machine is unit-tested on its own.

use ringshim_stackd::proto::{Endpoint, SessionId, NO_SESSION};
use std::collections::VecDeque;

/// Where a ustack socket is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not carried by stackd (a uring or kernel socket).
    None,
    /// CONNECT sent, CONNECTED not yet received.
    Connecting,
    /// A session exists: bytes flow through its fifos.
    Connected,
    /// CONNECTED said no: the errno is in `error` until SO_ERROR or a call reports it.
    Failed,
    /// A listener: stackd listens on its port too (the kernel socket keeps listening).
    Listening,
    /// The process forked and this copy lost its stackd attachment (see `ustack::after_fork_child`).
    Orphaned,
}

/// A connection stackd completed for a listener, waiting for accept().
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    pub session: SessionId,
    pub local: Endpoint,
    pub remote: Endpoint,
}

/// Accepted-but-not-accept()ed connections one listener holds before stackd's further
/// ones are refused (the kernel's somaxconn default).
pub const ACCEPT_QUEUE_MAX: usize = 4096;

/// Per-socket state of the ustack engine, kept under the socket record's mutex.
#[derive(Debug)]
pub struct UsSock {
    pub phase: Phase,
    pub session: SessionId,
    /// Cookie the CONNECT or LISTEN carried (identifies this record and its reuse).
    pub cookie: u64,
    pub local: Endpoint,
    pub remote: Endpoint,
    /// The peer sent FIN (every byte before it is in the rx fifo).
    pub eof: bool,
    /// The connection was reset or timed out: reads report `error` once, then 0.
    pub reset: bool,
    /// Pending error for the next call or SO_ERROR (positive errno, 0: none).
    pub error: i32,
    /// shutdown(SHUT_WR) sent.
    pub shut_wr: bool,
    /// shutdown(SHUT_RD): reads return 0 from now on.
    pub shut_rd: bool,
    /// A non-blocking connect() said EINPROGRESS and no connect() has reported its
    /// outcome yet (the next one does).
    pub connect_unreported: bool,
    pub nodelay: bool,
    /// TCP_CORK is on (kept here until a connecting socket's session exists; the session's
    /// tx fifo carries it to stackd).
    pub cork: bool,
    /// A listener: LISTEN was answered by BOUND in this process (see `io::join`), and the
    /// backlog listen() asked for.
    pub joined: bool,
    /// A listener stackd knows as a passive member (listen() told it; not accepting yet).
    pub passive: bool,
    pub backlog: u32,
    /// LISTEN: the listener id from BOUND, and BOUND's result (None: not answered yet).
    pub listener: u32,
    pub bound: Option<i32>,
    pub accept_queue: VecDeque<Pending>,
}

impl Default for UsSock {
    fn default() -> Self {
        Self::new()
    }
}

impl UsSock {
    pub const fn new() -> UsSock {
        UsSock {
            phase: Phase::None,
            session: NO_SESSION,
            cookie: 0,
            local: Endpoint {
                addr: [0; 4],
                port: 0,
                reserved: 0,
            },
            remote: Endpoint {
                addr: [0; 4],
                port: 0,
                reserved: 0,
            },
            eof: false,
            reset: false,
            error: 0,
            shut_wr: false,
            shut_rd: false,
            connect_unreported: false,
            nodelay: false,
            cork: false,
            joined: false,
            passive: false,
            backlog: 0,
            listener: 0,
            bound: None,
            accept_queue: VecDeque::new(),
        }
    }

    /// Back to "not a ustack socket", keeping the accept queue's allocation.
    pub fn clear(&mut self) {
        let mut queue = core::mem::take(&mut self.accept_queue);
        queue.clear();
        *self = UsSock::new();
        self.accept_queue = queue;
    }

    pub fn active(&self) -> bool {
        self.phase != Phase::None
    }

    /// stackd reported the end of the session: orderly (`error` 0) or a reset. A reset
    /// after the peer's FIN while this side still may send (Linux's CLOSE_WAIT) is EPIPE,
    /// as tcp_reset() reports it; any other reset keeps its errno.
    pub fn peer_ended(&mut self, error: i32) {
        if error == 0 {
            self.eof = true;
            return;
        }
        self.reset = true;
        self.error = if error == libc::ECONNRESET && self.eof && !self.shut_wr {
            libc::EPIPE
        } else {
            error
        };
    }

    /// The error to report once (SO_ERROR semantics: reading it clears it).
    pub fn take_error(&mut self) -> i32 {
        core::mem::take(&mut self.error)
    }

    /// The EPOLL* bits the kernel would report, given how many bytes wait in the rx fifo
    /// and how much room the tx fifo has.
    pub fn events(&self, rx_bytes: u32, tx_free: u32) -> u32 {
        const IN: u32 = (libc::EPOLLIN | libc::EPOLLRDNORM) as u32;
        const OUT: u32 = (libc::EPOLLOUT | libc::EPOLLWRNORM) as u32;
        const ERR: u32 = libc::EPOLLERR as u32;
        const HUP: u32 = libc::EPOLLHUP as u32;
        const RDHUP: u32 = libc::EPOLLRDHUP as u32;
        match self.phase {
            Phase::None => 0,
            Phase::Connecting => 0,
            // A refused connect: a closed socket with both directions shut, so
            // IN|OUT|HUP|RDHUP, and ERR until SO_ERROR is read.
            Phase::Failed => IN | OUT | HUP | RDHUP | if self.error != 0 { ERR } else { 0 },
            Phase::Listening => {
                if self.accept_queue.is_empty() {
                    0
                } else {
                    IN
                }
            }
            Phase::Orphaned => IN | OUT | HUP | RDHUP | ERR,
            Phase::Connected => {
                let mut ev = 0;
                if rx_bytes > 0 || self.eof || self.reset || self.shut_rd {
                    ev |= IN;
                }
                if self.eof || self.shut_rd {
                    ev |= RDHUP;
                }
                if self.reset {
                    ev |= HUP | RDHUP | OUT;
                }
                if self.error != 0 {
                    ev |= ERR;
                }
                if self.eof && self.shut_wr {
                    ev |= HUP;
                }
                if self.shut_wr || tx_free > 0 {
                    ev |= OUT;
                }
                ev
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IN: u32 = libc::EPOLLIN as u32;
    const OUT: u32 = libc::EPOLLOUT as u32;
    const ERR: u32 = libc::EPOLLERR as u32;
    const HUP: u32 = libc::EPOLLHUP as u32;
    const RDHUP: u32 = libc::EPOLLRDHUP as u32;

    fn connected() -> UsSock {
        UsSock {
            phase: Phase::Connected,
            ..UsSock::new()
        }
    }

    #[test]
    fn a_connected_socket_is_readable_only_with_bytes_or_an_end() {
        let s = connected();
        assert_eq!(s.events(0, 100) & (IN | OUT), OUT);
        assert_eq!(s.events(5, 100) & IN, IN);
        assert_eq!(s.events(0, 0) & OUT, 0, "a full tx fifo is not writable");
        let mut s = connected();
        s.eof = true;
        assert_eq!(s.events(0, 100) & (IN | RDHUP | HUP), IN | RDHUP);
        s.shut_wr = true;
        assert_eq!(s.events(0, 100) & HUP, HUP, "both directions closed: HUP");
    }

    #[test]
    fn a_reset_reads_and_writes_and_hangs_up_as_the_kernel_reports_it() {
        let mut s = connected();
        s.reset = true;
        s.error = libc::ECONNRESET;
        let ev = s.events(0, 0);
        assert_eq!(
            ev & (IN | OUT | ERR | HUP | RDHUP),
            IN | OUT | ERR | HUP | RDHUP
        );
        assert_eq!(s.take_error(), libc::ECONNRESET);
        assert_eq!(s.events(0, 0) & ERR, 0, "the error is reported once");
    }

    #[test]
    fn a_reset_after_the_peers_fin_is_epipe_while_this_side_may_still_send() {
        let mut s = connected();
        s.peer_ended(0);
        s.peer_ended(libc::ECONNRESET);
        assert_eq!(s.take_error(), libc::EPIPE, "CLOSE_WAIT: EPIPE");
        let mut s = connected();
        s.peer_ended(0);
        s.shut_wr = true;
        s.peer_ended(libc::ECONNRESET);
        assert_eq!(s.take_error(), libc::ECONNRESET, "LAST_ACK: ECONNRESET");
        let mut s = connected();
        s.peer_ended(libc::ECONNRESET);
        assert_eq!(s.take_error(), libc::ECONNRESET);
        assert!(s.reset && !s.eof);
    }

    #[test]
    fn a_connect_in_progress_is_silent_and_a_refused_one_reports_its_error() {
        let mut s = UsSock {
            phase: Phase::Connecting,
            ..UsSock::new()
        };
        assert_eq!(s.events(0, 100), 0);
        s.phase = Phase::Failed;
        s.error = libc::ECONNREFUSED;
        assert_eq!(s.events(0, 0) & (OUT | ERR | HUP), OUT | ERR | HUP);
        s.take_error();
        assert_eq!(s.events(0, 0) & ERR, 0);
    }

    #[test]
    fn a_listener_is_readable_while_connections_wait() {
        let mut s = UsSock {
            phase: Phase::Listening,
            ..UsSock::new()
        };
        assert_eq!(s.events(0, 0), 0);
        s.accept_queue.push_back(Pending {
            session: 7,
            local: Endpoint::new([198, 51, 100, 2], 80),
            remote: Endpoint::new([198, 51, 100, 1], 4000),
        });
        assert_eq!(s.events(0, 0), (libc::EPOLLIN | libc::EPOLLRDNORM) as u32);
        s.clear();
        assert!(!s.active());
        assert!(s.accept_queue.is_empty());
    }
}
