//! The shim's record of one TCP socket, shared by every fd that aliases it.
//!
//! A record is created at socket()/accept() for AF_INET/AF_INET6 stream sockets only
//! (UDP, Unix sockets, pipes and files are never tracked). It carries the routing
//! decision and, once a backend takes the socket, that backend's per-socket state.
//! dup()/dup2()/dup3()/F_DUPFD add aliases; the record lives until the last alias closes.

use crate::fdtable::{self, Entry};
use crate::pool::Pool;
use crate::route::{self, IpAddr128, Route};
use crate::stats;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicU8, Ordering};
use ringshim_common::stats::Counter;
use std::sync::Mutex;

/// Which engine carries a socket's bytes right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Engine {
    Kernel = 0,
    Uring = 1,
    /// Carried by ringshim-stackd (`crate::ustack`); the fd is a placeholder.
    Ustack = 2,
}

/// Up to this many fds may alias one accelerated socket; more dups demote a uring socket
/// to the kernel (a ustack one cannot move: an alias past the limit reaches only its
/// placeholder). Servers dup a socket once or twice; 16 leaves room for programs that
/// keep several duplicates open (the differential scenario dup_semantics holds six).
pub const MAX_ALIASES: usize = 16;

pub struct SocketRecord {
    pub id: AtomicU32,
    /// Live fds referring to this socket.
    pub aliases: [AtomicI32; MAX_ALIASES],
    pub alias_count: AtomicU32,
    pub family: AtomicI32,
    pub route: AtomicU8,
    pub engine: AtomicU8,
    pub listening: AtomicBool,
    /// O_NONBLOCK of the open file (shared by all aliases), tracked so accelerated reads
    /// need no fcntl.
    pub nonblocking: AtomicBool,
    /// Inode of the socket, to recognise an fd number reused behind the shim's back.
    pub ino: AtomicU64,
    /// Bumped on every reuse of the record: completions carry it and late ones are dropped.
    pub generation: AtomicU32,
    /// State of the accelerated data path (rings); untouched while on the kernel engine.
    pub io: Mutex<crate::uring::SockIo>,
    /// Futex word bumped whenever the socket's readiness changes, for threads blocked on
    /// it away from its owner ring.
    wake: AtomicU32,
    /// 1 + id of a ring whose thread waits in poll()/select() for this socket while its
    /// completions arrive on another thread's ring (0: none).
    remote: AtomicU32,
    /// The balance group and member of a reuseport listener, or of the listener that
    /// accepted this connection (see `crate::balance`); 0: none.
    pub balance: AtomicU32,
    /// The process image that counted this connection in (see `crate::balance`).
    pub balance_epoch: AtomicU32,
}

pub static SOCKETS: Pool<SocketRecord> = Pool::new(SocketRecord::new);

impl SocketRecord {
    fn new() -> SocketRecord {
        SocketRecord {
            id: AtomicU32::new(0),
            aliases: [const { AtomicI32::new(-1) }; MAX_ALIASES],
            alias_count: AtomicU32::new(0),
            family: AtomicI32::new(0),
            route: AtomicU8::new(0),
            engine: AtomicU8::new(0),
            listening: AtomicBool::new(false),
            nonblocking: AtomicBool::new(false),
            ino: AtomicU64::new(0),
            generation: AtomicU32::new(0),
            io: Mutex::new(crate::uring::SockIo::new()),
            wake: AtomicU32::new(0),
            remote: AtomicU32::new(0),
            balance: AtomicU32::new(0),
            balance_epoch: AtomicU32::new(0),
        }
    }

    pub fn remote_waker(&self) -> &AtomicU32 {
        &self.remote
    }

    pub fn wake_seq(&self) -> &AtomicU32 {
        &self.wake
    }

    #[inline]
    pub fn engine(&self) -> Engine {
        match self.engine.load(Ordering::Acquire) {
            1 => Engine::Uring,
            2 => Engine::Ustack,
            _ => Engine::Kernel,
        }
    }

    pub fn route(&self) -> Route {
        Route::from_u8(self.route.load(Ordering::Relaxed))
    }

    /// Any live fd of this socket (for system calls made on its behalf).
    pub fn any_fd(&self) -> i32 {
        self.aliases
            .iter()
            .map(|a| a.load(Ordering::Acquire))
            .find(|&fd| fd >= 0)
            .unwrap_or(-1)
    }

    pub fn lock_io(&self) -> std::sync::MutexGuard<'_, crate::uring::SockIo> {
        self.io.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add_alias(&self, fd: i32) -> bool {
        for a in &self.aliases {
            if a.compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.alias_count.fetch_add(1, Ordering::AcqRel);
                return true;
            }
        }
        false
    }

    /// Removes `fd`; returns the number of aliases left.
    fn remove_alias(&self, fd: i32) -> u32 {
        for a in &self.aliases {
            if a.compare_exchange(fd, -1, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                return self.alias_count.fetch_sub(1, Ordering::AcqRel) - 1;
            }
        }
        self.alias_count.load(Ordering::Acquire)
    }

    /// Whether `fd` still refers to this socket (false if it was closed and reused
    /// behind the shim's back). Costs an fstat: slow paths only.
    pub fn verify(&self, fd: i32) -> bool {
        inode_of(fd).is_some_and(|ino| ino == self.ino.load(Ordering::Relaxed))
    }
}

fn inode_of(fd: i32) -> Option<u64> {
    // SAFETY: zeroed stat is a valid out-buffer; raw syscall keeps fstat off any hook.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: valid pointer to a stat buffer.
    let r = unsafe { libc::syscall(libc::SYS_fstat, fd, &mut st as *mut libc::stat) };
    (r == 0).then_some(st.st_ino)
}

/// The record of a tracked socket fd.
#[inline]
pub fn lookup(fd: i32) -> Option<&'static SocketRecord> {
    match fdtable::get(fd)? {
        Entry::Socket(id) => SOCKETS.get(id),
        _ => None,
    }
}

/// The record of `fd` if its bytes go through an accelerated engine.
#[inline]
pub fn accelerated(fd: i32) -> Option<&'static SocketRecord> {
    lookup(fd).filter(|s| s.engine() != Engine::Kernel)
}

/// Starts tracking a new TCP socket fd (from socket() or accept()).
pub fn track(fd: i32, family: i32, nonblocking: bool) -> Option<&'static SocketRecord> {
    if !fdtable::trackable(fd) {
        return None;
    }
    forget_stale(fd);
    stats::ensure_published();
    let id = SOCKETS.alloc()?;
    let rec = SOCKETS.get(id)?;
    rec.id.store(id, Ordering::Relaxed);
    rec.family.store(family, Ordering::Relaxed);
    rec.route.store(Route::Undecided as u8, Ordering::Relaxed);
    rec.engine.store(Engine::Kernel as u8, Ordering::Relaxed);
    rec.listening.store(false, Ordering::Relaxed);
    rec.balance.store(0, Ordering::Relaxed);
    rec.nonblocking.store(nonblocking, Ordering::Relaxed);
    rec.ino.store(inode_of(fd).unwrap_or(0), Ordering::Relaxed);
    rec.generation.fetch_add(1, Ordering::AcqRel);
    rec.lock_io().reset();
    rec.add_alias(fd);
    fdtable::claim(fd, Entry::Socket(id));
    stats::bump(Counter::SocketsCreated);
    Some(rec)
}

/// A TCP listener the shim never saw created — inherited across exec (nginx's USR2
/// upgrade hands its listeners to the new binary, whose shim starts empty) or from a
/// socket-activating parent — becomes tracked when the application first accepts on it,
/// so its connections are routed like those of listeners created here. Only an untracked
/// fd is examined; a non-TCP one costs one getsockopt per accept and stays untracked.
pub fn adopt_listener(fd: i32) -> Option<&'static SocketRecord> {
    if fdtable::get(fd).is_some() || !fdtable::trackable(fd) {
        return None;
    }
    let opt = |name: i32| -> Option<i32> {
        let mut v: i32 = 0;
        let mut len = core::mem::size_of::<i32>() as libc::socklen_t;
        // SAFETY: an int-sized buffer with its true length.
        let r = unsafe {
            crate::real::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                (&mut v as *mut i32).cast(),
                &mut len,
            )
        };
        (r == 0).then_some(v)
    };
    let family = opt(libc::SO_DOMAIN)?;
    if !(family == libc::AF_INET || family == libc::AF_INET6)
        || opt(libc::SO_TYPE)? != libc::SOCK_STREAM
        || opt(libc::SO_PROTOCOL)? != libc::IPPROTO_TCP
        || opt(libc::SO_ACCEPTCONN)? != 1
    {
        return None;
    }
    // SAFETY: F_GETFL on a descriptor that exists (getsockopt just succeeded on it).
    let fl = unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFL) };
    let rec = track(fd, family, fl >= 0 && (fl as i32) & libc::O_NONBLOCK != 0)?;
    rec.listening.store(true, Ordering::Relaxed);
    crate::log_debug!("fd {} is an inherited TCP listener: now tracked", fd);
    Some(rec)
}

/// Drops whatever entry `fd` carried: the kernel just handed this number out again, so
/// the old descriptor was closed without the shim seeing it.
pub fn forget_stale(fd: i32) {
    if let Some(old) = fdtable::take(fd) {
        crate::log_debug!(
            "fd {} was closed behind the shim's back; dropping its record",
            fd
        );
        release_entry(fd, old, false);
    }
}

/// Registers `newfd` as an alias of the socket behind `oldfd` (dup family). Returns
/// false when the alias cannot be tracked; the caller then demotes the socket.
pub fn alias(oldfd: i32, newfd: i32) {
    forget_stale(newfd);
    let Some(Entry::Socket(id)) = fdtable::get(oldfd) else {
        if let Some(Entry::Epoll(id)) = fdtable::get(oldfd) {
            crate::epoll::alias(id, newfd);
        }
        return;
    };
    let Some(rec) = SOCKETS.get(id) else { return };
    if rec.add_alias(newfd) {
        fdtable::claim(newfd, Entry::Socket(id));
    } else {
        // Too many aliases to follow: the socket goes to the kernel for good, and the
        // extra fd is simply not tracked. (A ustack session cannot move to the kernel:
        // the extra alias is untracked and reaches only the placeholder.)
        crate::uring::demote(rec, "too many dup aliases");
    }
}

/// The application closed `fd` (the real close already succeeded or is about to).
pub fn on_close(fd: i32) {
    if let Some(e) = fdtable::take(fd) {
        release_entry(fd, e, true);
    }
}

fn release_entry(fd: i32, e: Entry, app_close: bool) {
    match e {
        Entry::Socket(id) => {
            let Some(rec) = SOCKETS.get(id) else { return };
            let left = rec.remove_alias(fd);
            if left > 0 && rec.engine() != Engine::Kernel {
                // Ring operations name an fd number: move them to a surviving alias.
                let mut io = rec.lock_io();
                if io.fd == fd {
                    io.fd = rec.any_fd();
                }
            }
            if left == 0 {
                crate::balance::on_release(rec);
                let (watchers, n) = {
                    let io = rec.lock_io();
                    (io.watchers, io.nwatchers)
                };
                crate::epoll::forget_socket(fd, id, &watchers[..n]);
                let draining = match rec.engine() {
                    Engine::Kernel => false,
                    Engine::Uring => crate::uring::on_last_close(rec, app_close),
                    Engine::Ustack => {
                        crate::ustack::io::on_last_close(rec, fd);
                        false
                    }
                };
                if !draining {
                    rec.engine.store(Engine::Kernel as u8, Ordering::Release);
                    SOCKETS.release(id);
                }
            }
        }
        Entry::Epoll(id) => crate::epoll::on_close(id, fd),
        Entry::Internal => {}
    }
}

/// Records the routing decision for an address that just became known.
pub fn route_by_address(rec: &SocketRecord, fd: i32, ip: IpAddr128, why: &str) {
    let cfg = crate::init::config();
    let decision = route::decide(cfg, ip);
    let decision = match decision {
        Route::Accelerated => {
            stats::bump(Counter::RoutedAccelerated);
            match cfg.backend {
                ringshim_common::config::Backend::Kernel => Route::Accelerated,
                ringshim_common::config::Backend::Uring if crate::uring::available() => {
                    Route::Accelerated
                }
                ringshim_common::config::Backend::Ustack if crate::ustack::available() => {
                    Route::Accelerated
                }
                _ => {
                    stats::bump(Counter::Fallbacks);
                    Route::Fallback
                }
            }
        }
        other => {
            stats::bump(Counter::RoutedKernelNet);
            other
        }
    };
    rec.route.store(decision as u8, Ordering::Relaxed);
    crate::log_debug!(
        "fd {} {} {} -> {} (backend {})",
        fd,
        why,
        route::Display(ip),
        decision.name(),
        if decision == Route::Accelerated {
            cfg.backend.name()
        } else {
            "kernel"
        }
    );
}

/// Whether this socket's bytes should move to the ring engine now.
pub fn wants_uring(rec: &SocketRecord) -> bool {
    rec.route() == Route::Accelerated
        && crate::init::config().backend == ringshim_common::config::Backend::Uring
        && !rec.listening.load(Ordering::Relaxed)
}
