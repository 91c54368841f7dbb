//! The environment configuration: one table of variables, one parser.
//!
//! The shim parses the environment exactly once, when it loads (nginx rebuilds `environ`
//! in its workers, so a later `getenv` would see nothing). The CLI parses the same
//! variables with the same code before it execs, so `ringshim run` refuses exactly the
//! values the library would reject.
//!
//! Parsing allocates; that is fine because it runs once, during set-up.

use std::fmt;

/// Which engine carries accelerated sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Per-thread io_uring rings.
    Uring,
    /// The user-space stack in `ringshim-stackd`.
    Ustack,
    /// Plain kernel calls; everything passes through.
    Kernel,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Uring => "uring",
            Backend::Ustack => "ustack",
            Backend::Kernel => "kernel",
        }
    }
}

/// How new connections of a multi-threaded server are spread over its threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    Off,
    Exact,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Off = 0,
    Error = 1,
    Warn = 2,
    Info = 3,
    Debug = 4,
}

impl LogLevel {
    pub fn name(self) -> &'static str {
        match self {
            LogLevel::Off => "off",
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
        }
    }
}

/// An IPv4 or IPv6 network in CIDR form, stored as a 128-bit address (IPv4 mapped into
/// `::ffff:0:0/96`) so one comparison serves both families.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: u128,
    pub prefix: u8,
}

impl Cidr {
    pub fn v4(octets: [u8; 4], prefix: u8) -> Cidr {
        Cidr {
            addr: v4_mapped(octets),
            prefix: prefix + 96,
        }
    }

    pub fn contains(&self, addr: u128) -> bool {
        if self.prefix == 0 {
            return true;
        }
        let mask = u128::MAX << (128 - u32::from(self.prefix));
        (addr & mask) == (self.addr & mask)
    }

    fn parse(text: &str) -> Option<Cidr> {
        let (ip, prefix) = match text.split_once('/') {
            Some((ip, p)) => (ip, Some(p.parse::<u8>().ok()?)),
            None => (text, None),
        };
        if let Ok(v4) = ip.parse::<std::net::Ipv4Addr>() {
            let p = prefix.unwrap_or(32);
            if p > 32 {
                return None;
            }
            return Some(Cidr::v4(v4.octets(), p));
        }
        let v6 = ip.parse::<std::net::Ipv6Addr>().ok()?;
        let p = prefix.unwrap_or(128);
        if p > 128 {
            return None;
        }
        Some(Cidr {
            addr: u128::from_be_bytes(v6.octets()),
            prefix: p,
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.addr.to_be_bytes();
        if self.prefix >= 96 && bytes[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
            let v4 = std::net::Ipv4Addr::new(bytes[12], bytes[13], bytes[14], bytes[15]);
            write!(f, "{}/{}", v4, self.prefix - 96)
        } else {
            write!(f, "{}/{}", std::net::Ipv6Addr::from(bytes), self.prefix)
        }
    }
}

/// Maps an IPv4 address into the IPv6 space the way the kernel does for dual-stack sockets.
pub fn v4_mapped(octets: [u8; 4]) -> u128 {
    (0xffffu128 << 32) | u128::from(u32::from_be_bytes(octets))
}

/// The fixed capacity of the kernel-network list, so the shim can keep it in a plain array.
pub const MAX_KERNEL_NETS: usize = 16;

/// Everything the shim reads from the environment.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `RINGSHIM=0` loads the library but keeps every call on the kernel path.
    pub enabled: bool,
    pub backend: Backend,
    /// Networks whose sockets stay on the kernel stack (default: loopback).
    pub kernel_nets: Vec<Cidr>,
    pub sqpoll: bool,
    pub sqpoll_idle_ms: u32,
    /// CPU the shared SQPOLL thread is pinned to; `None` leaves it to the scheduler.
    pub sqpoll_cpu: Option<u32>,
    pub sq_entries: u32,
    pub cq_entries: u32,
    pub buf_count: u32,
    pub buf_size: u32,
    /// Per-socket cap of received bytes queued in the shim before TCP is pushed back.
    pub recv_cap: u32,
    /// Per-socket cap of accepted-but-unsent bytes before write() returns EAGAIN.
    pub send_cap: u32,
    /// How long a closed socket may keep draining accepted bytes in the background.
    pub close_drain_ms: u32,
    pub balance: Balance,
    pub log_level: LogLevel,
    /// `%p` in the path is replaced by the process id.
    pub log_file: Option<String>,
    pub stats: bool,
    pub stats_dir: String,
    pub stackd_socket: String,
    /// Test/diagnostic switch: behave as if io_uring_setup failed with this errno.
    pub simulate_uring_failure: Option<i32>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            backend: Backend::Uring,
            kernel_nets: loopback_nets(),
            sqpoll: false,
            sqpoll_idle_ms: 50,
            sqpoll_cpu: None,
            sq_entries: 256,
            cq_entries: 4096,
            buf_count: 1024,
            buf_size: 16384,
            recv_cap: 256 * 1024,
            send_cap: 256 * 1024,
            close_drain_ms: 5000,
            balance: Balance::Off,
            log_level: LogLevel::Warn,
            log_file: None,
            stats: true,
            stats_dir: String::from("/dev/shm"),
            stackd_socket: String::from("/run/ringshim/stackd.sock"),
            simulate_uring_failure: None,
        }
    }
}

pub fn loopback_nets() -> Vec<Cidr> {
    vec![
        Cidr::v4([127, 0, 0, 0], 8),
        Cidr {
            addr: 1,
            prefix: 128,
        },
    ]
}

/// One rejected variable. Its `Display` is the single line the shim and the CLI print.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub accepted: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ringshim: invalid {}={:?}; accepted values: {}; staying on the kernel path",
            self.var, self.value, self.accepted
        )
    }
}

/// Documentation of one variable: the README table and `ringshim doctor` print these.
pub struct VarSpec {
    pub name: &'static str,
    pub default: &'static str,
    pub accepted: &'static str,
    pub effect: &'static str,
}

pub const VARIABLES: &[VarSpec] = &[
    VarSpec { name: "RINGSHIM", default: "1", accepted: "0, 1", effect: "0 loads the library but passes every call through to libc" },
    VarSpec { name: "RINGSHIM_BACKEND", default: "uring", accepted: "uring, ustack, kernel", effect: "engine for accelerated (non-kernel-network) TCP sockets" },
    VarSpec { name: "RINGSHIM_KERNEL_NETS", default: "loopback", accepted: "comma-separated CIDRs and/or `loopback`, or `none`", effect: "peers/local addresses in these networks stay on the kernel stack; `none` accelerates loopback too" },
    VarSpec { name: "RINGSHIM_SQPOLL", default: "0", accepted: "0, 1", effect: "share one SQPOLL kernel thread between all rings (zero submit syscalls while busy)" },
    VarSpec { name: "RINGSHIM_SQPOLL_IDLE_MS", default: "50", accepted: "1..=10000", effect: "SQPOLL thread idles out after this many ms without work" },
    VarSpec { name: "RINGSHIM_SQPOLL_CPU", default: "none", accepted: "a CPU number, or none", effect: "pin the SQPOLL thread to this CPU" },
    VarSpec { name: "RINGSHIM_SQ_ENTRIES", default: "256", accepted: "power of two, 8..=32768", effect: "submission queue size of each per-thread ring" },
    VarSpec { name: "RINGSHIM_CQ_ENTRIES", default: "4096", accepted: "power of two, 16..=65536, >= 2x SQ", effect: "completion queue size of each per-thread ring" },
    VarSpec { name: "RINGSHIM_BUF_COUNT", default: "1024", accepted: "power of two, 16..=32768", effect: "provided receive buffers per thread" },
    VarSpec { name: "RINGSHIM_BUF_SIZE", default: "16384", accepted: "1024..=1048576", effect: "bytes per provided receive buffer" },
    VarSpec { name: "RINGSHIM_RECV_CAP", default: "262144", accepted: "4096..=67108864", effect: "received bytes queued per socket before TCP is pushed back" },
    VarSpec { name: "RINGSHIM_SEND_CAP", default: "262144", accepted: "4096..=67108864", effect: "unsent bytes buffered per socket before write() returns EAGAIN" },
    VarSpec { name: "RINGSHIM_CLOSE_DRAIN_MS", default: "5000", accepted: "0..=600000", effect: "bound on draining accepted bytes after close()" },
    VarSpec { name: "RINGSHIM_BALANCE", default: "off", accepted: "off, exact", effect: "exact: each new connection of a group of SO_REUSEPORT listeners goes to the listener (worker) with the fewest open connections (eBPF steering; needs CAP_BPF, else the kernel hash stays)" },
    VarSpec { name: "RINGSHIM_LOG", default: "warn", accepted: "off, error, warn, info, debug", effect: "log level (stderr or RINGSHIM_LOG_FILE)" },
    VarSpec { name: "RINGSHIM_LOG_FILE", default: "(stderr)", accepted: "a path; %p becomes the pid", effect: "append log lines to this file instead of stderr" },
    VarSpec { name: "RINGSHIM_STATS", default: "1", accepted: "0, 1", effect: "publish live counters for `ringshim stat PID`" },
    VarSpec { name: "RINGSHIM_STATS_DIR", default: "/dev/shm", accepted: "an absolute directory path", effect: "where per-process counter pages (ringshim.PID, mode 0600) live" },
    VarSpec { name: "RINGSHIM_STACKD", default: "/run/ringshim/stackd.sock", accepted: "an absolute path", effect: "control socket of ringshim-stackd (ustack backend)" },
    VarSpec { name: "RINGSHIM_SIMULATE_URING_FAILURE", default: "(unset)", accepted: "EPERM, ENOSYS, ENOMEM", effect: "test switch: take the io_uring set-up failure path with this errno" },
];

/// A launcher profile: name, one-line description, and the variables it sets.
pub type Profile = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// Launcher profiles: named groups of variables, like OpenOnload's `onload -p`.
pub const PROFILES: &[Profile] = &[
    (
        "latency",
        "small batches, small queues: every byte leaves as soon as possible",
        &[
            ("RINGSHIM_SEND_CAP", "65536"),
            ("RINGSHIM_RECV_CAP", "65536"),
            ("RINGSHIM_BUF_SIZE", "4096"),
        ],
    ),
    (
        "throughput",
        "large buffers and queues; SQPOLL shared thread for zero submit syscalls under load",
        &[
            ("RINGSHIM_SQPOLL", "1"),
            ("RINGSHIM_BUF_SIZE", "65536"),
            ("RINGSHIM_RECV_CAP", "1048576"),
            ("RINGSHIM_SEND_CAP", "1048576"),
        ],
    ),
];

pub fn profile(name: &str) -> Option<&'static [(&'static str, &'static str)]> {
    PROFILES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, vars)| *vars)
}

impl Config {
    /// Parses every variable through `lookup`. Returns the configuration and every error;
    /// with any error the caller must run on the kernel path.
    pub fn parse(lookup: impl Fn(&str) -> Option<String>) -> (Config, Vec<ConfigError>) {
        let mut cfg = Config::default();
        let mut errors = Vec::new();
        let get = |var: &'static str, accepted: &'static str| -> Option<(String, Reject)> {
            lookup(var).map(|v| (v, Reject { var, accepted }))
        };

        if let Some((v, r)) = get("RINGSHIM", "0, 1") {
            r.apply(&mut errors, &v, parse_bool(&v), |b| cfg.enabled = b);
        }
        if let Some((v, r)) = get("RINGSHIM_BACKEND", "uring, ustack, kernel") {
            let b = match v.trim() {
                "uring" => Some(Backend::Uring),
                "ustack" => Some(Backend::Ustack),
                "kernel" => Some(Backend::Kernel),
                _ => None,
            };
            r.apply(&mut errors, &v, b, |b| cfg.backend = b);
        }
        if let Some((v, r)) = get(
            "RINGSHIM_KERNEL_NETS",
            "comma-separated CIDRs and/or `loopback`, or `none`",
        ) {
            r.apply(&mut errors, &v, parse_nets(&v), |n| cfg.kernel_nets = n);
        }
        if let Some((v, r)) = get("RINGSHIM_SQPOLL", "0, 1") {
            r.apply(&mut errors, &v, parse_bool(&v), |b| cfg.sqpoll = b);
        }
        if let Some((v, r)) = get("RINGSHIM_SQPOLL_IDLE_MS", "1..=10000") {
            r.apply(&mut errors, &v, parse_range(&v, 1, 10_000), |n| {
                cfg.sqpoll_idle_ms = n
            });
        }
        if let Some((v, r)) = get("RINGSHIM_SQPOLL_CPU", "a CPU number, or none") {
            let cpu = if v.trim() == "none" {
                Some(None)
            } else {
                parse_range(&v, 0, 4095).map(Some)
            };
            r.apply(&mut errors, &v, cpu, |c| cfg.sqpoll_cpu = c);
        }
        if let Some((v, r)) = get("RINGSHIM_SQ_ENTRIES", "power of two, 8..=32768") {
            r.apply(&mut errors, &v, parse_pow2(&v, 8, 32768), |n| {
                cfg.sq_entries = n
            });
        }
        if let Some((v, r)) = get("RINGSHIM_CQ_ENTRIES", "power of two, 16..=65536, >= 2x SQ") {
            r.apply(&mut errors, &v, parse_pow2(&v, 16, 65536), |n| {
                cfg.cq_entries = n
            });
        }
        if let Some((v, r)) = get("RINGSHIM_BUF_COUNT", "power of two, 16..=32768") {
            r.apply(&mut errors, &v, parse_pow2(&v, 16, 32768), |n| {
                cfg.buf_count = n
            });
        }
        if let Some((v, r)) = get("RINGSHIM_BUF_SIZE", "1024..=1048576") {
            r.apply(&mut errors, &v, parse_range(&v, 1024, 1 << 20), |n| {
                cfg.buf_size = n
            });
        }
        if let Some((v, r)) = get("RINGSHIM_RECV_CAP", "4096..=67108864") {
            r.apply(&mut errors, &v, parse_range(&v, 4096, 64 << 20), |n| {
                cfg.recv_cap = n
            });
        }
        if let Some((v, r)) = get("RINGSHIM_SEND_CAP", "4096..=67108864") {
            r.apply(&mut errors, &v, parse_range(&v, 4096, 64 << 20), |n| {
                cfg.send_cap = n
            });
        }
        if let Some((v, r)) = get("RINGSHIM_CLOSE_DRAIN_MS", "0..=600000") {
            r.apply(&mut errors, &v, parse_range(&v, 0, 600_000), |n| {
                cfg.close_drain_ms = n
            });
        }
        if let Some((v, r)) = get("RINGSHIM_BALANCE", "off, exact") {
            let b = match v.trim() {
                "off" => Some(Balance::Off),
                "exact" => Some(Balance::Exact),
                _ => None,
            };
            r.apply(&mut errors, &v, b, |b| cfg.balance = b);
        }
        if let Some((v, r)) = get("RINGSHIM_LOG", "off, error, warn, info, debug") {
            let l = match v.trim() {
                "off" | "0" => Some(LogLevel::Off),
                "error" => Some(LogLevel::Error),
                "warn" => Some(LogLevel::Warn),
                "info" => Some(LogLevel::Info),
                "debug" => Some(LogLevel::Debug),
                _ => None,
            };
            r.apply(&mut errors, &v, l, |l| cfg.log_level = l);
        }
        if let Some((v, r)) = get("RINGSHIM_LOG_FILE", "a path; %p becomes the pid") {
            let p = if v.is_empty() {
                None
            } else {
                Some(Some(v.clone()))
            };
            r.apply(&mut errors, &v, p, |p| cfg.log_file = p);
        }
        if let Some((v, r)) = get("RINGSHIM_STATS", "0, 1") {
            r.apply(&mut errors, &v, parse_bool(&v), |b| cfg.stats = b);
        }
        if let Some((v, r)) = get("RINGSHIM_STATS_DIR", "an absolute directory path") {
            let p = if v.starts_with('/') {
                Some(v.trim_end_matches('/').to_string())
            } else {
                None
            };
            r.apply(&mut errors, &v, p, |p| {
                cfg.stats_dir = if p.is_empty() { "/".into() } else { p }
            });
        }
        if let Some((v, r)) = get("RINGSHIM_STACKD", "an absolute path") {
            let p = if v.starts_with('/') {
                Some(v.clone())
            } else {
                None
            };
            r.apply(&mut errors, &v, p, |p| cfg.stackd_socket = p);
        }
        if let Some((v, r)) = get("RINGSHIM_SIMULATE_URING_FAILURE", "EPERM, ENOSYS, ENOMEM") {
            let e = match v.trim() {
                "EPERM" => Some(Some(1)),
                "ENOSYS" => Some(Some(38)),
                "ENOMEM" => Some(Some(12)),
                _ => None,
            };
            r.apply(&mut errors, &v, e, |e| cfg.simulate_uring_failure = e);
        }
        if errors.is_empty() && cfg.cq_entries < 2 * cfg.sq_entries {
            errors.push(ConfigError {
                var: "RINGSHIM_CQ_ENTRIES",
                value: cfg.cq_entries.to_string(),
                accepted: "power of two, 16..=65536, >= 2x SQ",
            });
        }
        (cfg, errors)
    }

    /// Parses the process environment.
    pub fn from_env() -> (Config, Vec<ConfigError>) {
        Config::parse(|k| std::env::var(k).ok())
    }

    /// Whether an address (IPv4 mapped, see [`v4_mapped`]) must stay on the kernel stack.
    pub fn is_kernel_net(&self, addr: u128) -> bool {
        self.kernel_nets.iter().any(|n| n.contains(addr))
    }
}

struct Reject {
    var: &'static str,
    accepted: &'static str,
}

impl Reject {
    fn apply<T>(
        self,
        errors: &mut Vec<ConfigError>,
        raw: &str,
        parsed: Option<T>,
        set: impl FnOnce(T),
    ) {
        match parsed {
            Some(v) => set(v),
            None => errors.push(ConfigError {
                var: self.var,
                value: raw.to_string(),
                accepted: self.accepted,
            }),
        }
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim() {
        "0" => Some(false),
        "1" => Some(true),
        _ => None,
    }
}

fn parse_range(v: &str, lo: u32, hi: u32) -> Option<u32> {
    v.trim()
        .parse::<u32>()
        .ok()
        .filter(|n| (lo..=hi).contains(n))
}

fn parse_pow2(v: &str, lo: u32, hi: u32) -> Option<u32> {
    parse_range(v, lo, hi).filter(|n| n.is_power_of_two())
}

fn parse_nets(v: &str) -> Option<Vec<Cidr>> {
    let v = v.trim();
    if v == "none" {
        return Some(Vec::new());
    }
    let mut nets = Vec::new();
    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if item == "loopback" {
            nets.extend(loopback_nets());
        } else {
            nets.push(Cidr::parse(item)?);
        }
    }
    if nets.is_empty() || nets.len() > MAX_KERNEL_NETS {
        return None;
    }
    Some(nets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> (Config, Vec<ConfigError>) {
        Config::parse(|k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn defaults_when_environment_is_empty() {
        let (cfg, errors) = parse(&[]);
        assert!(errors.is_empty());
        assert_eq!(cfg, Config::default());
        assert!(cfg.is_kernel_net(v4_mapped([127, 0, 0, 1])));
        assert!(cfg.is_kernel_net(1));
        assert!(!cfg.is_kernel_net(v4_mapped([192, 0, 2, 1])));
    }

    #[test]
    fn bad_backend_names_variable_value_and_accepted_values() {
        let (_, errors) = parse(&[("RINGSHIM_BACKEND", "dpdk")]);
        assert_eq!(errors.len(), 1);
        let line = errors[0].to_string();
        assert!(line.contains("RINGSHIM_BACKEND"), "{line}");
        assert!(line.contains("\"dpdk\""), "{line}");
        assert!(line.contains("uring, ustack, kernel"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn kernel_nets_none_accelerates_loopback() {
        let (cfg, errors) = parse(&[("RINGSHIM_KERNEL_NETS", "none")]);
        assert!(errors.is_empty());
        assert!(!cfg.is_kernel_net(v4_mapped([127, 0, 0, 1])));
    }

    #[test]
    fn kernel_nets_list_with_loopback_keyword() {
        let (cfg, errors) = parse(&[(
            "RINGSHIM_KERNEL_NETS",
            "loopback, 198.51.100.0/24,2001:db8::/32",
        )]);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(cfg.is_kernel_net(v4_mapped([198, 51, 100, 7])));
        assert!(!cfg.is_kernel_net(v4_mapped([198, 51, 101, 7])));
        assert!(cfg.is_kernel_net(0x2001_0db8_0000_0000_0000_0000_0000_0001));
        assert!(cfg.is_kernel_net(v4_mapped([127, 9, 9, 9])));
    }

    #[test]
    fn kernel_nets_rejects_garbage_and_oversized_prefix() {
        for bad in ["10.0.0.0/33", "banana", "", "::1/129"] {
            let (_, errors) = parse(&[("RINGSHIM_KERNEL_NETS", bad)]);
            assert_eq!(errors.len(), 1, "{bad}");
        }
    }

    #[test]
    fn numeric_bounds_and_powers_of_two() {
        assert_eq!(parse(&[("RINGSHIM_SQ_ENTRIES", "300")]).1.len(), 1);
        assert_eq!(parse(&[("RINGSHIM_SQ_ENTRIES", "512")]).1.len(), 0);
        assert_eq!(parse(&[("RINGSHIM_BUF_SIZE", "12")]).1.len(), 1);
        assert_eq!(
            parse(&[
                ("RINGSHIM_SQ_ENTRIES", "4096"),
                ("RINGSHIM_CQ_ENTRIES", "4096")
            ])
            .1
            .len(),
            1
        );
    }

    #[test]
    fn every_variable_is_documented_and_parsed() {
        for spec in VARIABLES {
            // A value no variable accepts must be reported against that variable.
            let (_, errors) = parse(&[(spec.name, "\u{1}bogus")]);
            if spec.name == "RINGSHIM_LOG_FILE" {
                continue; // any path is acceptable
            }
            assert_eq!(errors.len(), 1, "{}", spec.name);
            assert_eq!(errors[0].var, spec.name);
        }
    }

    #[test]
    fn readme_documents_every_variable() {
        let readme = include_str!("../../../README.md");
        for spec in VARIABLES {
            assert!(
                readme.contains(&format!("| `{}` |", spec.name)),
                "README lacks a row for {}",
                spec.name
            );
        }
    }

    #[test]
    fn profiles_only_set_valid_values() {
        for (name, _, vars) in PROFILES {
            let (_, errors) = parse(vars);
            assert!(errors.is_empty(), "profile {name}: {errors:?}");
        }
    }

    #[test]
    fn cidr_display_round_trips() {
        assert_eq!(Cidr::v4([10, 1, 0, 0], 16).to_string(), "10.1.0.0/16");
        assert_eq!(
            Cidr {
                addr: 1,
                prefix: 128
            }
            .to_string(),
            "::1/128"
        );
    }
}
