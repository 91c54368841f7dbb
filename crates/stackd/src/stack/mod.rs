//! The stack process: one thread, one loop.
//!
//! Each turn of the loop:
//! 1. take the applications' messages off their app→stack rings ([`app`]);
//! 2. run smoltcp: receive frames one by one (refilling listen pools after every frame
//!    that changed a socket, so a burst of SYNs finds listeners: [`session`]), then
//!    transmit;
//! 3. move bytes between smoltcp's socket buffers and the sessions' shared fifos, and
//!    turn socket state changes into messages ([`session`]);
//!
//! repeated while anything moved (sleeping right after one poll stalls: a transmit can
//! make room for more). Then the loop sleeps in `epoll_wait` over the device's descriptor
//! (a TAP or an AF_PACKET socket: both read one frame per call, [`crate::device`]), the
//! control listener, every application's control connection and `stack_wake` eventfds,
//! a signalfd (SIGTERM/SIGINT) and a timerfd armed from smoltcp's `poll_delay()`. With
//! no traffic and no timers it sleeps for good: idle costs no CPU.

mod app;
mod session;

use std::collections::{HashMap, HashSet};
use std::io;
use std::mem::zeroed;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration as StdDuration;

use smoltcp::iface::{Config as IfaceConfig, Interface, PollIngressSingleResult, SocketSet};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

use crate::config::{Config, DeviceSpec, LogLevel};
use crate::device::FrameDevice;
use crate::sys::cvt;

pub use app::App;
use session::{Closing, ListenGroup, Listener};

static LOG_LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

/// Whether messages of `level` are printed.
pub fn log_enabled(level: LogLevel) -> bool {
    level as u8 <= LOG_LEVEL.load(Ordering::Relaxed)
}

macro_rules! log {
    ($level:expr, $($arg:tt)*) => {
        if $crate::stack::log_enabled($level) {
            eprintln!("ringshim-stackd: {}", format_args!($($arg)*));
        }
    };
}
pub(crate) use log;

/// What an epoll event is about (the top byte of its token).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token {
    Device,
    ControlListener,
    Timer,
    Signal,
    /// An application's control connection.
    AppControl(u32),
    /// An application worker's `stack_wake` eventfd.
    WorkerWake(u32, u16),
}

impl Token {
    fn encode(self) -> u64 {
        match self {
            Token::Device => 1 << 56,
            Token::ControlListener => 2 << 56,
            Token::Timer => 3 << 56,
            Token::Signal => 4 << 56,
            Token::AppControl(app) => (5 << 56) | (u64::from(app) << 16),
            Token::WorkerWake(app, worker) => {
                (6 << 56) | (u64::from(app) << 16) | u64::from(worker)
            }
        }
    }
    fn decode(raw: u64) -> Option<Token> {
        let app = ((raw >> 16) & 0xffff_ffff) as u32;
        let worker = (raw & 0xffff) as u16;
        Some(match raw >> 56 {
            1 => Token::Device,
            2 => Token::ControlListener,
            3 => Token::Timer,
            4 => Token::Signal,
            5 => Token::AppControl(app),
            6 => Token::WorkerWake(app, worker),
            _ => return None,
        })
    }
}

/// Sizes of smoltcp's own per-connection buffers (the shared fifos come on top).
const SOCKET_RX_BYTES: usize = 128 << 10;
const SOCKET_TX_BYTES: usize = 128 << 10;
/// smoltcp's default delayed ACK is 10 ms; a request/response exchange that does not
/// piggyback its ACK would wait that long. 1 ms keeps the ACK-every-other-segment
/// behaviour for bulk transfers (smoltcp acks at once past one MSS) without the stall.
const ACK_DELAY: Duration = Duration::from_millis(1);
/// A connection that gets no answer to what it sent (SYN or data) for this long is
/// dropped (ETIMEDOUT).
const RETRANSMIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a connection the application closed may take to finish (FIN-WAIT-2 and
/// friends) before it is reset, as the kernel's tcp_fin_timeout.
const CLOSE_TIMEOUT: StdDuration = StdDuration::from_secs(60);
/// Longest a cork (TCP_CORK, MSG_MORE) holds a partial segment, as the kernel's ceiling
/// (tcp(7)).
const CORK_CEILING: Duration = Duration::from_millis(200);
/// Turns of the loop without sleeping before stackd checks epoll anyway (fairness to new
/// control connections under load).
const MAX_ROUNDS_PER_WAKE: u32 = 64;
const EPHEMERAL_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

/// Counters printed at exit and answered to STATS (`ringshim stat --stackd`).
#[derive(Clone, Copy, Debug, Default)]
pub struct StackCounters {
    pub apps_attached: u64,
    pub apps_refused: u64,
    pub apps_detached: u64,
    pub sessions_accepted: u64,
    pub sessions_connected: u64,
    pub accepts_refused_no_slot: u64,
    pub sessions_reset_on_detach: u64,
    pub messages_to_apps: u64,
    pub messages_from_apps: u64,
    pub app_wakeups: u64,
    pub sleeps: u64,
    /// A cork started holding a partial segment in a tx fifo.
    pub cork_holds: u64,
    /// Push marks honoured (uncork, TCP_NODELAY on, a send after MSG_MORE ones).
    pub cork_pushes: u64,
    /// Cork holds ended by [`CORK_CEILING`].
    pub cork_ceiling_flushes: u64,
}

/// The whole stack process.
pub struct Stack {
    pub(crate) config: Config,
    started: std::time::Instant,
    pub(crate) iface: Interface,
    pub(crate) device: FrameDevice,
    pub(crate) sockets: SocketSet<'static>,
    epoll: OwnedFd,
    timer: OwnedFd,
    signals: OwnedFd,
    control: OwnedFd,
    pub(crate) apps: HashMap<u32, App>,
    next_app_id: u32,
    /// Every LISTEN that got a port, by the id BOUND gave it.
    pub(crate) listeners: HashMap<u32, Listener>,
    /// Listening ports: each one's pool and members.
    pub(crate) groups: HashMap<u16, ListenGroup>,
    next_listener_id: u32,
    pub(crate) ports_in_use: HashSet<u16>,
    next_ephemeral: u16,
    pub(crate) closing: Vec<Closing>,
    /// When the first cork's hold ends (the timer fires then), from the last session pass.
    pub(crate) cork_deadline: Option<Instant>,
    own_uid: u32,
    stop: bool,
    pub counters: StackCounters,
}

impl Stack {
    /// The STATS answer: gauges of the moment, then the counters (proto::STATS_NAMES).
    pub(crate) fn stats(&self) -> crate::proto::StatsReply {
        let sessions: usize = self
            .apps
            .values()
            .filter_map(|a| a.attached.as_ref())
            .map(|a| a.slots.iter().filter(|s| s.session.is_some()).count())
            .sum();
        let (c, d) = (&self.counters, &self.device.counters);
        let values = [
            self.started.elapsed().as_secs(),
            self.apps.values().filter(|a| a.attached.is_some()).count() as u64,
            sessions as u64,
            self.listeners.len() as u64,
            self.closing.len() as u64,
            c.apps_attached,
            c.apps_refused,
            c.apps_detached,
            c.sessions_accepted,
            c.sessions_connected,
            c.accepts_refused_no_slot,
            c.sessions_reset_on_detach,
            c.messages_to_apps,
            c.messages_from_apps,
            c.app_wakeups,
            c.sleeps,
            d.rx_frames,
            d.tx_frames,
            d.rx_errors,
            d.tx_errors,
            d.rx_oversize,
            d.rx_checksums_completed,
        ];
        crate::proto::StatsReply {
            magic: crate::proto::CONTROL_MAGIC,
            version: crate::proto::PROTOCOL_VERSION,
            kind: crate::proto::control_kind::STATS,
            result: 0,
            count: values.len() as u32,
            reserved: 0,
            values,
        }
    }
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("config", &self.config)
            .field("apps", &self.apps.len())
            .field("listeners", &self.listeners.len())
            .field("counters", &self.counters)
            .finish()
    }
}

fn random_seed() -> u64 {
    let mut seed = 0u64;
    // SAFETY: fills 8 bytes of a live u64; on failure the seed stays time-based below.
    let got = unsafe { libc::getrandom((&mut seed as *mut u64).cast(), 8, 0) };
    if got != 8 {
        seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x5eed, |d| d.as_nanos() as u64);
    }
    seed
}

fn epoll_add(epoll: RawFd, fd: RawFd, events: u32, token: Token) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events,
        u64: token.encode(),
    };
    // SAFETY: a live epoll_event; plain system call.
    cvt(unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) })?;
    Ok(())
}

fn epoll_del(epoll: RawFd, fd: RawFd) {
    // SAFETY: plain system call; a stale fd only yields an error we ignore (the
    // registration is gone with it).
    unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
}

impl Stack {
    /// Opens the device, sets up smoltcp and binds the control socket.
    pub fn new(config: Config) -> io::Result<Stack> {
        LOG_LEVEL.store(config.log as u8, Ordering::Relaxed);
        let (mut device, mac) = match &config.device {
            DeviceSpec::Tap(name) => {
                let device = crate::tap::open(name).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot open TAP device {name:?}: {e}"))
                })?;
                let o = config.ip.octets();
                (
                    device,
                    config.mac.unwrap_or([0x02, 0x72, 0x73, o[1], o[2], o[3]]),
                )
            }
            DeviceSpec::Packet(name) => {
                let opened = crate::packet::open(name, config.ip, config.mac).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("cannot open interface {name:?} (AF_PACKET): {e}"),
                    )
                })?;
                for warning in &opened.warnings {
                    log!(LogLevel::Error, "warning: {warning}");
                }
                (opened.device, opened.mac)
            }
        };
        let started = std::time::Instant::now();
        let mut iface_config = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(mac)));
        iface_config.random_seed = random_seed();
        let mut iface = Interface::new(iface_config, &mut device, Instant::from_micros(0));
        iface.update_ip_addrs(|addrs| {
            // The vector has room for several addresses; the first push cannot fail.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(config.ip), config.prefix_len));
        });
        if let Some(gateway) = config.gateway {
            iface
                .routes_mut()
                .add_default_ipv4_route(gateway)
                .map_err(|_| io::Error::other("route table full"))?;
        }

        // SAFETY: plain system calls returning new descriptors we own.
        let (epoll, timer) = unsafe {
            let epoll = cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?;
            let epoll = OwnedFd::from_raw_fd(epoll);
            let timer = cvt(libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            ))?;
            (epoll, OwnedFd::from_raw_fd(timer))
        };
        let signals = signal_fd()?;
        let control = app::bind_control(&config)?;

        epoll_add(
            epoll.as_raw_fd(),
            device.as_raw_fd(),
            libc::EPOLLIN as u32,
            Token::Device,
        )?;
        epoll_add(
            epoll.as_raw_fd(),
            control.as_raw_fd(),
            libc::EPOLLIN as u32,
            Token::ControlListener,
        )?;
        epoll_add(
            epoll.as_raw_fd(),
            timer.as_raw_fd(),
            libc::EPOLLIN as u32,
            Token::Timer,
        )?;
        epoll_add(
            epoll.as_raw_fd(),
            signals.as_raw_fd(),
            libc::EPOLLIN as u32,
            Token::Signal,
        )?;

        log!(
            LogLevel::Info,
            "serving {}/{} on {} {} (MAC {}, MTU {}), control socket {}",
            config.ip,
            config.prefix_len,
            device.kind().label(),
            config.device.name(),
            EthernetAddress(mac),
            device.mtu(),
            config.control.display()
        );
        let next_ephemeral = EPHEMERAL_PORTS.start() + (random_seed() % 16384) as u16;
        Ok(Stack {
            config,
            started,
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            epoll,
            timer,
            signals,
            control,
            apps: HashMap::new(),
            next_app_id: 1,
            listeners: HashMap::new(),
            groups: HashMap::new(),
            next_listener_id: 1,
            ports_in_use: HashSet::new(),
            next_ephemeral,
            closing: Vec::new(),
            cork_deadline: None,
            // SAFETY: geteuid cannot fail.
            own_uid: unsafe { libc::geteuid() },
            stop: false,
            counters: StackCounters::default(),
        })
    }

    /// smoltcp's clock: microseconds since start, from the monotonic clock (wall-clock
    /// jumps must not fire or stall TCP timers).
    pub(crate) fn now(&self) -> Instant {
        Instant::from_micros(self.started.elapsed().as_micros() as i64)
    }

    /// Serves until SIGTERM or SIGINT, or until the device fails.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events: Vec<libc::epoll_event> = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
        let mut last_activity = std::time::Instant::now();
        while !self.stop {
            let mut rounds = 0;
            loop {
                let mut progress = self.drain_app_rings();
                progress |= self.poll_network();
                progress |= self.service_sessions();
                self.reap_closing();
                rounds += 1;
                if progress {
                    last_activity = std::time::Instant::now();
                }
                if !progress || rounds >= MAX_ROUNDS_PER_WAKE {
                    break;
                }
            }
            self.flush_and_wake_apps();
            self.drop_broken_apps();
            if let Some(err) = self.device.fatal.take() {
                return Err(io::Error::new(
                    err.kind(),
                    format!("{} device failed: {err}", self.device.kind().label()),
                ));
            }

            // Busy-poll (opt-in): without the sleeping flags set, applications post
            // without writing eventfds, and the device is checked with a zero timeout.
            let busy =
                !self.config.busy_poll.is_zero() && last_activity.elapsed() < self.config.busy_poll;
            let timeout = if busy || rounds >= MAX_ROUNDS_PER_WAKE || !self.prepare_sleep() {
                0
            } else {
                self.arm_timer()?;
                self.counters.sleeps += 1;
                -1
            };
            // SAFETY: the buffer holds events.len() entries.
            let ready = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    timeout,
                )
            };
            self.woke();
            if ready < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err);
            }
            for event in &events[..ready as usize] {
                let (raw, flags) = (event.u64, event.events);
                match Token::decode(raw) {
                    Some(Token::Device) | None => {}
                    Some(Token::Timer) => drain_counter(self.timer.as_raw_fd()),
                    Some(Token::Signal) => self.on_signal(),
                    Some(Token::ControlListener) => self.accept_control_connections(),
                    Some(Token::AppControl(app)) => self.on_app_control(app, flags),
                    Some(Token::WorkerWake(app, worker)) => self.on_worker_wake(app, worker),
                }
            }
        }
        self.shutdown();
        Ok(())
    }

    /// Runs smoltcp: every queued frame (one at a time, refilling listen pools after a
    /// frame that changed a socket), then everything there is to transmit.
    fn poll_network(&mut self) -> bool {
        let now = self.now();
        let mut progress = false;
        self.iface.poll_maintenance(now);
        loop {
            match self
                .iface
                .poll_ingress_single(now, &mut self.device, &mut self.sockets)
            {
                PollIngressSingleResult::None => break,
                PollIngressSingleResult::PacketProcessed => progress = true,
                PollIngressSingleResult::SocketStateChanged => {
                    progress = true;
                    self.service_listeners();
                }
            }
        }
        while self
            .iface
            .poll_egress(now, &mut self.device, &mut self.sockets)
            == smoltcp::iface::PollResult::SocketStateChanged
        {
            progress = true;
        }
        progress
    }

    /// Arms the timerfd for smoltcp's next deadline, the earliest close timeout and the end
    /// of the first cork's hold, or disarms it when there is none.
    fn arm_timer(&mut self) -> io::Result<()> {
        let now = self.now();
        let mut delay: Option<StdDuration> = self
            .iface
            .poll_delay(now, &self.sockets)
            .map(|d| StdDuration::from_micros(d.total_micros()));
        let since_start = self.started.elapsed();
        for closing in &self.closing {
            let left = closing.deadline.saturating_sub(since_start);
            delay = Some(delay.map_or(left, |d| d.min(left)));
        }
        if let Some(deadline) = self.cork_deadline {
            let left = if deadline > now {
                StdDuration::from_micros((deadline - now).total_micros())
            } else {
                StdDuration::ZERO
            };
            delay = Some(delay.map_or(left, |d| d.min(left)));
        }
        // SAFETY: itimerspec is plain data.
        let mut spec: libc::itimerspec = unsafe { zeroed() };
        if let Some(delay) = delay {
            // A zero it_value would disarm the timer; fire as soon as possible instead.
            let delay = delay.max(StdDuration::from_micros(1));
            spec.it_value.tv_sec = delay.as_secs() as libc::time_t;
            spec.it_value.tv_nsec = delay.subsec_nanos() as libc::c_long;
        }
        // SAFETY: a live itimerspec; plain system call.
        cvt(unsafe {
            libc::timerfd_settime(self.timer.as_raw_fd(), 0, &spec, std::ptr::null_mut())
        })?;
        Ok(())
    }

    fn on_signal(&mut self) {
        // SAFETY: reads one signalfd_siginfo into a zeroed buffer of its size.
        let mut info: libc::signalfd_siginfo = unsafe { zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: as above.
        let n = unsafe {
            libc::read(
                self.signals.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        if n == size as isize {
            log!(LogLevel::Info, "signal {}: shutting down", info.ssi_signo);
            self.stop = true;
        }
    }

    /// Graceful stop: reset every connection (the peers learn at once), remove the
    /// control socket, print the counters.
    fn shutdown(&mut self) {
        let ids: Vec<u32> = self.apps.keys().copied().collect();
        for id in ids {
            self.detach_app(id, "stackd is stopping");
        }
        // Let the resets go out.
        let now = self.now();
        let _ = self.iface.poll(now, &mut self.device, &mut self.sockets);
        let _ = std::fs::remove_file(&self.config.control);
        log!(
            LogLevel::Info,
            "stopped; counters {:?}; device {:?}{}",
            self.counters,
            self.device.counters,
            self.device
                .kernel_drops()
                .map_or(String::new(), |n| format!(
                    "; dropped by the kernel (queue full) {n}"
                ))
        );
    }

    /// A free local port for an outgoing connection or a port-0 listener.
    pub(crate) fn pick_ephemeral_port(&mut self) -> Option<u16> {
        let span = u32::from(EPHEMERAL_PORTS.end() - EPHEMERAL_PORTS.start()) + 1;
        for _ in 0..span {
            let port = self.next_ephemeral;
            self.next_ephemeral = if port >= *EPHEMERAL_PORTS.end() {
                *EPHEMERAL_PORTS.start()
            } else {
                port + 1
            };
            if !self.ports_in_use.contains(&port) && !self.groups.contains_key(&port) {
                return Some(port);
            }
        }
        None
    }

    pub(crate) fn new_listener_id(&mut self) -> u32 {
        let id = self.next_listener_id;
        self.next_listener_id = self.next_listener_id.wrapping_add(1).max(1);
        id
    }

    pub(crate) fn new_app_id(&mut self) -> u32 {
        loop {
            let id = self.next_app_id;
            self.next_app_id = self.next_app_id.wrapping_add(1).max(1);
            if !self.apps.contains_key(&id) {
                return id;
            }
        }
    }
}

/// Blocks SIGTERM and SIGINT for the process and returns a signalfd that reports them.
fn signal_fd() -> io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset; plain system calls.
    unsafe {
        let mut set: libc::sigset_t = zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        cvt(libc::pthread_sigmask(
            libc::SIG_BLOCK,
            &set,
            std::ptr::null_mut(),
        ))?;
        let fd = cvt(libc::signalfd(
            -1,
            &set,
            libc::SFD_NONBLOCK | libc::SFD_CLOEXEC,
        ))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Reads an 8-byte counter (timerfd, eventfd) to reset it.
fn drain_counter(fd: RawFd) {
    let mut value = 0u64;
    // SAFETY: reads 8 bytes into a live u64; EAGAIN is fine.
    unsafe { libc::read(fd, (&mut value as *mut u64).cast(), 8) };
}
