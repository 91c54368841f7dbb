//! Command-line flags of `ringshim-stackd`. A bad flag is one line naming the flag, the
//! value and what is accepted ([`ConfigError`]); `main` prints it and exits with 2.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::proto::DEFAULT_CONTROL_PATH;

/// How much stackd says on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Error,
    Info,
    Debug,
}

/// The interface stackd owns, and how it opens it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// A TAP device to create or attach to (in stackd's network namespace).
    Tap(String),
    /// An existing Ethernet interface, through an AF_PACKET socket.
    Packet(String),
}

impl DeviceSpec {
    pub fn name(&self) -> &str {
        match self {
            DeviceSpec::Tap(name) | DeviceSpec::Packet(name) => name,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub device: DeviceSpec,
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    /// `--mac`; without it a TAP gets 02:72:73 + the last three bytes of the address, an
    /// AF_PACKET interface keeps its own.
    pub mac: Option<[u8; 6]>,
    pub control: PathBuf,
    /// Besides stackd's own uid, peers in this group may attach.
    pub allow_group: Option<u32>,
    pub log: LogLevel,
    /// After activity, keep polling (device and rings) this long before sleeping; 0 = sleep
    /// at once (the default: idle costs nothing).
    pub busy_poll: std::time::Duration,
}

/// One line for the operator: which flag, which value, what would have been accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What `--help` prints.
pub const USAGE: &str = "\
usage: ringshim-stackd (--tap NAME | --packet IFNAME) --ip A.B.C.D/NN [--gateway A.B.C.D]
                       [--mac XX:XX:XX:XX:XX:XX] [--control PATH] [--allow-group GID]
                       [--busy-poll-us N] [--log error|info|debug]

Runs ringshim's user-space TCP/IP stack on a network interface of the current network namespace
(a TAP device, or an existing Ethernet interface through AF_PACKET) and serves applications
(the ringshim shim with RINGSHIM_BACKEND=ustack) over a unix control socket and shared memory.

  --tap NAME          TAP device to create or attach to (1-15 characters); stackd brings it up
  --packet IFNAME     existing Ethernet interface (a veth end, a NIC) to own through an AF_PACKET
                      socket; it should carry no kernel IP address (one equal to --ip is refused)
                      and stackd brings it up. Offloads may stay on at both ends of a veth pair:
                      stackd completes the checksums a peer left to offload and takes its TSO/GSO
                      frames (up to 64 KiB)
  --ip A.B.C.D/NN     the stack's own address and prefix (the kernel side must not use it)
  --gateway A.B.C.D   default route for destinations outside the prefix
  --mac MAC           the stack's MAC address (default: with --tap 02:72:73 + the last three bytes
                      of --ip; with --packet the interface's own; another one puts the interface
                      in promiscuous mode while stackd runs)
  --control PATH      control socket (default /run/ringshim/stackd.sock)
  --allow-group GID   also accept applications whose primary or supplementary group is GID
                      (default: only stackd's own uid)
  --busy-poll-us N    after activity, poll for N microseconds (0-100000) before sleeping:
                      fewer wake-ups under load for a core's worth of CPU (default 0: off)
  --log LEVEL         error, info (default) or debug";

fn bad(flag: &str, value: &str, accepted: &str) -> ConfigError {
    ConfigError(format!(
        "ringshim-stackd: {flag} {value:?} is not valid: expected {accepted}"
    ))
}

fn parse_ipv4(flag: &str, value: &str, accepted: &str) -> Result<Ipv4Addr, ConfigError> {
    value.parse().map_err(|_| bad(flag, value, accepted))
}

fn parse_mac(value: &str) -> Result<[u8; 6], ConfigError> {
    const ACCEPTED: &str =
        "six hex bytes separated by ':' with the multicast bit clear, e.g. 02:72:73:00:00:02";
    let parts: Vec<&str> = value.split(':').collect();
    if parts.len() != 6 {
        return Err(bad("--mac", value, ACCEPTED));
    }
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(parts) {
        if part.len() != 2 {
            return Err(bad("--mac", value, ACCEPTED));
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad("--mac", value, ACCEPTED))?;
    }
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(bad("--mac", value, ACCEPTED));
    }
    Ok(mac)
}

/// What parsing produced: a configuration, or a request for the usage text.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Run(Config),
    Help,
}

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Parsed, ConfigError> {
    let mut device: Option<DeviceSpec> = None;
    let mut ip = None;
    let mut gateway = None;
    let mut mac = None;
    let mut control = PathBuf::from(DEFAULT_CONTROL_PATH);
    let mut allow_group = None;
    let mut log = LogLevel::Info;
    let mut busy_poll = std::time::Duration::ZERO;

    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if flag == "--help" || flag == "-h" {
            return Ok(Parsed::Help);
        }
        const FLAGS: &str =
            "one of --tap, --packet, --ip, --gateway, --mac, --control, --allow-group, --busy-poll-us, --log, --help";
        if !matches!(
            flag.as_str(),
            "--tap"
                | "--packet"
                | "--ip"
                | "--gateway"
                | "--mac"
                | "--control"
                | "--allow-group"
                | "--busy-poll-us"
                | "--log"
        ) {
            return Err(ConfigError(format!(
                "ringshim-stackd: unknown argument {arg:?}: expected {FLAGS}"
            )));
        }
        let value = match inline.or_else(|| args.next()) {
            Some(v) => v,
            None => {
                return Err(ConfigError(format!(
                    "ringshim-stackd: {flag} needs a value (see --help)"
                )))
            }
        };
        match flag.as_str() {
            "--tap" | "--packet" => {
                let ok = !value.is_empty()
                    && value.len() <= 15
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if !ok {
                    return Err(bad(
                        &flag,
                        &value,
                        "an interface name of 1-15 characters from [A-Za-z0-9-_.]",
                    ));
                }
                if let Some(first) = &device {
                    let first = match first {
                        DeviceSpec::Tap(_) => "--tap",
                        DeviceSpec::Packet(_) => "--packet",
                    };
                    return Err(ConfigError(format!(
                        "ringshim-stackd: {flag} {value:?}: stackd owns one interface and {first} \
                         already names it (--tap and --packet are mutually exclusive)"
                    )));
                }
                device = Some(if flag == "--tap" {
                    DeviceSpec::Tap(value)
                } else {
                    DeviceSpec::Packet(value)
                });
            }
            "--ip" => {
                const ACCEPTED: &str =
                    "A.B.C.D/NN (an IPv4 unicast address and a prefix length 1-32)";
                let (addr, len) = value
                    .split_once('/')
                    .ok_or_else(|| bad("--ip", &value, ACCEPTED))?;
                let addr: Ipv4Addr = addr.parse().map_err(|_| bad("--ip", &value, ACCEPTED))?;
                let len: u8 = len.parse().map_err(|_| bad("--ip", &value, ACCEPTED))?;
                if !(1..=32).contains(&len)
                    || addr.is_unspecified()
                    || addr.is_multicast()
                    || addr.is_broadcast()
                {
                    return Err(bad("--ip", &value, ACCEPTED));
                }
                ip = Some((addr, len));
            }
            "--gateway" => {
                const ACCEPTED: &str = "an IPv4 unicast address A.B.C.D";
                let addr = parse_ipv4("--gateway", &value, ACCEPTED)?;
                if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() {
                    return Err(bad("--gateway", &value, ACCEPTED));
                }
                gateway = Some(addr);
            }
            "--mac" => mac = Some(parse_mac(&value)?),
            "--control" => {
                if value.is_empty() || value.len() >= 108 || value.contains('\0') {
                    return Err(bad(
                        "--control",
                        &value,
                        "a filesystem path shorter than 108 bytes",
                    ));
                }
                control = PathBuf::from(value);
            }
            "--allow-group" => {
                allow_group = Some(value.parse::<u32>().map_err(|_| {
                    bad("--allow-group", &value, "a numeric group id (0-4294967294)")
                })?);
                if allow_group == Some(u32::MAX) {
                    return Err(bad(
                        "--allow-group",
                        &value,
                        "a numeric group id (0-4294967294)",
                    ));
                }
            }
            "--busy-poll-us" => {
                let us = value
                    .parse::<u64>()
                    .ok()
                    .filter(|us| *us <= 100_000)
                    .ok_or_else(|| bad("--busy-poll-us", &value, "microseconds, 0-100000"))?;
                busy_poll = std::time::Duration::from_micros(us);
            }
            "--log" => {
                log = match value.as_str() {
                    "error" => LogLevel::Error,
                    "info" => LogLevel::Info,
                    "debug" => LogLevel::Debug,
                    _ => return Err(bad("--log", &value, "error, info or debug")),
                }
            }
            _ => unreachable!("filtered above"),
        }
    }

    let device = device.ok_or_else(|| {
        ConfigError(
            "ringshim-stackd: an interface is required: --tap NAME or --packet IFNAME (see --help)"
                .to_string(),
        )
    })?;
    let (ip, prefix_len) = ip.ok_or_else(|| {
        ConfigError("ringshim-stackd: --ip A.B.C.D/NN is required (see --help)".to_string())
    })?;
    Ok(Parsed::Run(Config {
        device,
        ip,
        prefix_len,
        gateway,
        mac,
        control,
        allow_group,
        log,
        busy_poll,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_full_command_line_parses() {
        let parsed = parse(args(&[
            "--tap",
            "rs0",
            "--ip=198.51.100.2/24",
            "--gateway",
            "198.51.100.1",
            "--mac",
            "02:00:00:00:00:02",
            "--control",
            "/tmp/x.sock",
            "--allow-group",
            "100",
            "--log",
            "debug",
        ]))
        .unwrap();
        let Parsed::Run(cfg) = parsed else {
            panic!("expected a config")
        };
        assert_eq!(cfg.ip, Ipv4Addr::new(198, 51, 100, 2));
        assert_eq!(cfg.prefix_len, 24);
        assert_eq!(cfg.mac, Some([2, 0, 0, 0, 0, 2]));
        assert_eq!(cfg.device, DeviceSpec::Tap("rs0".into()));
        assert_eq!(cfg.allow_group, Some(100));
        assert_eq!(cfg.log, LogLevel::Debug);
    }

    #[test]
    fn bad_values_name_flag_value_and_accepted_values() {
        for (list, flag) in [
            (&["--tap", "rs0", "--ip", "198.51.100.2"][..], "--ip"),
            (&["--tap", "rs0", "--ip", "198.51.100.2/33"][..], "--ip"),
            (
                &["--tap", "this-name-is-too-long", "--ip", "1.2.3.4/8"][..],
                "--tap",
            ),
            (
                &[
                    "--tap",
                    "rs0",
                    "--ip",
                    "1.2.3.4/8",
                    "--mac",
                    "01:00:00:00:00:01",
                ][..],
                "--mac",
            ),
            (
                &[
                    "--tap",
                    "rs0",
                    "--ip",
                    "1.2.3.4/8",
                    "--allow-group",
                    "wheel",
                ][..],
                "--allow-group",
            ),
            (
                &["--tap", "rs0", "--ip", "1.2.3.4/8", "--log", "loud"][..],
                "--log",
            ),
            (
                &["--tap", "rs0", "--ip", "1.2.3.4/8", "--gateway", "x"][..],
                "--gateway",
            ),
        ] {
            let err = parse(args(list)).unwrap_err().0;
            assert!(err.contains(flag) && err.contains("expected"), "{err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
        let err = parse(args(&["--bogus"])).unwrap_err().0;
        assert!(err.contains("--bogus") && err.contains("--tap"), "{err}");
        let err = parse(args(&["--ip", "1.2.3.4/8"])).unwrap_err().0;
        assert!(err.contains("--tap") && err.contains("--packet"), "{err}");
        assert_eq!(parse(args(&["--help"])), Ok(Parsed::Help));
    }

    #[test]
    fn packet_and_tap_are_one_or_the_other() {
        let Ok(Parsed::Run(cfg)) = parse(args(&["--packet", "veth0", "--ip", "198.51.100.2/24"]))
        else {
            panic!("expected a config")
        };
        assert_eq!(cfg.device, DeviceSpec::Packet("veth0".into()));
        assert_eq!(cfg.mac, None);
        for list in [
            &["--tap", "rs0", "--packet", "veth0", "--ip", "1.2.3.4/8"][..],
            &["--packet", "veth0", "--tap", "rs0", "--ip", "1.2.3.4/8"][..],
            &["--packet", "a", "--packet", "b", "--ip", "1.2.3.4/8"][..],
        ] {
            let err = parse(args(list)).unwrap_err().0;
            assert!(err.contains("mutually exclusive"), "{err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
        let err = parse(args(&["--packet", "", "--ip", "1.2.3.4/8"]))
            .unwrap_err()
            .0;
        assert!(
            err.contains("--packet") && err.contains("expected"),
            "{err}"
        );
    }
}
