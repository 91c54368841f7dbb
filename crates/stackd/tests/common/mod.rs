//! Test fixtures: private network namespaces (TEST-NET-2 addresses only), a
//! `ringshim-stackd` owning an interface inside one, and ways to act in them.
//!
//! Topology with a TAP ([`Stackd::start`], most tests):
//!
//! ```text
//!   namespace rs-us-<pid>-<n>
//!     ringshim-stackd  198.51.100.2  (smoltcp, on TAP rsus0)
//!     kernel side      198.51.100.1  (address of rsus0; the tests' kernel clients)
//!   the test process (outside the namespace) = the application, attached over the
//!   control socket <tmp>/stackd.sock and shared memory
//! ```
//!
//! Topology with AF_PACKET ([`Stackd::start_packet`]): two namespaces and a veth pair.
//!
//! ```text
//!   namespace rs-pk-<pid>-<n> (stack_ns)        namespace rs-pk-<pid>-<m> (ns)
//!     rsvA, no address  <---- veth ---->          rsvB 198.51.100.1/24 (kernel clients)
//!     ringshim-stackd --packet rsvA --ip 198.51.100.2/24
//! ```
//!
//! Everything is removed by Drop guards: processes are killed by PID, the namespace deleted.
#![allow(dead_code)]

pub mod app;

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const STACK_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const KERNEL_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const TAP: &str = "rsus0";
/// The veth end stackd owns (in `stack_ns`) and the kernel's end (in `ns`).
pub const VETH_STACK: &str = "rsvA";
pub const VETH_KERNEL: &str = "rsvB";

/// True when the test may run. Not root: skip with a message, unless CI=true, where a skip
/// is a failure (CI runs as root and must run these tests).
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    let message = format!("{test}: needs root (network namespaces, TAP devices)");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{message}; CI=true, so a skip is a failure");
    }
    // Straight to the stderr handle: libtest captures eprintln! of passing tests.
    let _ = writeln!(std::io::stderr(), "SKIPPED {message}");
    false
}

fn run(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Netns {
        Netns::with_prefix("rs-us")
    }

    /// A namespace named `<prefix>-<pid>-<n>` (the prefix keeps concurrent suites of
    /// other topologies from colliding).
    pub fn with_prefix(prefix: &str) -> Netns {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = Netns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        // No IPv6 chatter (router solicitations, MLD) on the TAP: smoltcp here is IPv4 only.
        // Written from a thread inside the namespace (/proc/sys/net is the caller's
        // namespace's); a kernel without IPv6 has no such files, which is just as good.
        ns.run_in(|| {
            for conf in ["default", "all"] {
                let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1");
            }
        });
        ns
    }

    /// Runs a command inside the namespace and asserts it succeeded.
    pub fn exec(&self, argv: &[&str]) {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv));
    }

    /// Runs `f` on a thread that entered the namespace (sockets it creates live there;
    /// they can be used from any thread afterwards).
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on a namespace fd we opened; it changes only this thread.
            let ret = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(ret, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread panicked")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// One ethtool "set" command with an `ethtool_value` (`{cmd, data}`) on interface `name`
/// of the calling thread's namespace.
pub fn ethtool_set(name: &str, cmd: u32, data: u32) -> std::io::Result<()> {
    let mut value: [u32; 2] = [cmd, data];
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    assert!(name.len() < req.ifr_name.len());
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = value.as_mut_ptr().cast();
    // SAFETY: plain socket; SIOCETHTOOL reads the ifreq and the ethtool_value it points
    // to, both alive for the call; the descriptor is closed right after.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let ret = libc::ioctl(sock, libc::SIOCETHTOOL, &mut req);
        let err = std::io::Error::last_os_error();
        libc::close(sock);
        if ret < 0 {
            return Err(err);
        }
    }
    Ok(())
}

/// A child process killed by PID on drop.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    pub fn kill9(&mut self) {
        // SAFETY: signals our own child by PID.
        unsafe { libc::kill(self.pid(), libc::SIGKILL) };
        let _ = self.0.wait();
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.alive() {
            // SAFETY: signals our own child by PID.
            unsafe { libc::kill(self.pid(), libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while self.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if self.alive() {
                self.kill9();
            }
        }
        let _ = self.0.wait();
    }
}

/// A temporary directory (mode 0755), removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(name);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The stackd binary: cargo's own for this crate's tests; for the shim's tests (another
/// package, which cargo gives no binary path) built with `cargo build -p ringshim-stackd`
/// into the same target directory as the test binary.
pub fn stackd_bin() -> PathBuf {
    if let Some(bin) = option_env!("CARGO_BIN_EXE_ringshim-stackd") {
        return PathBuf::from(bin);
    }
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        // target/<profile>/deps/<test> → target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary under target/<profile>/deps")
            .to_path_buf();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-q", "-p", "ringshim-stackd"]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        run(&mut cmd);
        let bin = profile_dir.join("ringshim-stackd");
        assert!(bin.exists(), "{} missing", bin.display());
        bin
    })
    .clone()
}

/// stackd running in its own namespace. Field order = drop order: the process first,
/// then the namespaces, then the directory.
pub struct Stackd {
    pub process: ChildGuard,
    /// Where the kernel side lives (the tests' kernel clients and servers): stackd's own
    /// namespace with a TAP, the veth peer's with AF_PACKET.
    pub ns: Netns,
    /// stackd's namespace when it is not `ns` (AF_PACKET).
    pub stack_ns: Option<Netns>,
    pub dir: TempDir,
    pub control: PathBuf,
    pub log: PathBuf,
}

impl Stackd {
    /// Starts stackd (with `extra` flags) in a new namespace and configures the kernel
    /// side of its TAP device.
    pub fn start(extra: &[&str]) -> Stackd {
        let ns = Netns::new();
        let mut stackd = Stackd::spawn(ns, None, &["--tap", TAP], extra);
        // The TAP exists once stackd is serving.
        stackd.wait_for_control();
        stackd
            .ns
            .exec(&["ip", "addr", "add", "198.51.100.1/24", "dev", TAP]);
        stackd.ns.exec(&["ip", "link", "set", TAP, "up"]);
        stackd
    }

    /// The TAP topology plus a namespace whose kernel owns both of its addresses
    /// (198.51.100.1 and .2 on `lo`): what the same program does kernel to kernel, for
    /// the runs compared with a run across stackd (tests/differential.rs, preload.rs).
    /// IPv6 is back on `lo` in both, for programs that also use ::1.
    pub fn start_with_kernel_twin() -> (Stackd, Netns) {
        let st = Stackd::start(&[]);
        let twin = Netns::with_prefix("rs-tw");
        for a in ["198.51.100.1/32", "198.51.100.2/32"] {
            twin.exec(&["ip", "addr", "add", a, "dev", "lo"]);
        }
        for ns in [&st.ns, &twin] {
            ns.run_in(|| std::fs::write("/proc/sys/net/ipv6/conf/lo/disable_ipv6", "0"))
                .expect("enable IPv6 on lo");
        }
        (st, twin)
    }

    /// The AF_PACKET topology (module docs): a veth pair between a namespace of stackd's
    /// (`rsvA`, no address, `--packet rsvA`) and one of the kernel's (`rsvB`,
    /// 198.51.100.1/24). `peer_offloads_off` turns tx checksumming, TSO and GSO off on
    /// `rsvB` (`ethtool -K rsvB tx off tso off gso off`), as stackd's README asks of a
    /// veth peer.
    pub fn start_packet(extra: &[&str], peer_offloads_off: bool) -> Stackd {
        let stack_ns = Netns::with_prefix("rs-pk");
        let ns = Netns::with_prefix("rs-pk");
        // Created inside stackd's namespace, the peer moved at once: the names never
        // exist in the caller's namespace, so concurrent suites cannot collide on them.
        stack_ns.exec(&[
            "ip",
            "link",
            "add",
            VETH_STACK,
            "type",
            "veth",
            "peer",
            "name",
            VETH_KERNEL,
            "netns",
            &ns.name,
        ]);
        ns.exec(&["ip", "addr", "add", "198.51.100.1/24", "dev", VETH_KERNEL]);
        ns.exec(&["ip", "link", "set", VETH_KERNEL, "up"]);
        if peer_offloads_off {
            ns.run_in(|| {
                // ETHTOOL_STXCSUM, ETHTOOL_STSO, ETHTOOL_SGSO (here rather than through
                // stackd's library: the shim's tests share this file without its `stack`
                // feature, and the ethtool tool may not be installed).
                for cmd in [0x17, 0x1f, 0x24] {
                    ethtool_set(VETH_KERNEL, cmd, 0).expect("offloads off on the peer");
                }
            });
        }
        let mut stackd = Stackd::spawn(ns, Some(stack_ns), &["--packet", VETH_STACK], extra);
        stackd.wait_for_control();
        stackd
    }

    /// Starts stackd in `stack_ns` (or `ns`) with the device flags `device`.
    fn spawn(ns: Netns, stack_ns: Option<Netns>, device: &[&str], extra: &[&str]) -> Stackd {
        let dir = TempDir::new(&ns.name);
        let control = dir.0.join("stackd.sock");
        let log = dir.0.join("stackd.log");
        let child = Command::new("ip")
            .args(["netns", "exec", &stack_ns.as_ref().unwrap_or(&ns).name])
            .arg(stackd_bin())
            .args(device)
            .args(["--ip", "198.51.100.2/24", "--gateway", "198.51.100.1"])
            .arg("--control")
            .arg(&control)
            .args(extra)
            // For measurements, e.g. RINGSHIM_STACKD_TEST_ARGS="--busy-poll-us 50".
            .args(
                std::env::var("RINGSHIM_STACKD_TEST_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("create log"))
            .spawn()
            .expect("spawn stackd");
        Stackd {
            process: ChildGuard(child),
            ns,
            stack_ns,
            dir,
            control,
            log,
        }
    }

    fn wait_for_control(&mut self) {
        let stackd = self;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !stackd.control.exists() {
            assert!(
                stackd.process.alive(),
                "stackd exited early: {}",
                stackd.log_text()
            );
            assert!(
                Instant::now() < deadline,
                "stackd did not bind its control socket"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The stack's address with `port`.
    pub fn addr(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(STACK_IP, port)
    }

    /// How many segment mappings stackd has (one per attached application).
    pub fn mapped_segments(&self) -> usize {
        std::fs::read_to_string(format!("/proc/{}/maps", self.process.pid()))
            .expect("read /proc/PID/maps")
            .lines()
            .filter(|l| l.contains("memfd:ringshim-stackd-segment"))
            .count()
    }

    /// CPU time (user + system) of stackd so far, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.process.pid()))
            .expect("read /proc/PID/stat");
        // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }
}

/// Reads lines of a child's output until one ends with `want` (libtest may print the
/// test's name on the same line first); panics after 15 s.
pub fn wait_for_line(output: impl Read + Send + 'static, want: &str) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(line)) if line.trim_end().ends_with(want) => return,
            Ok(Ok(line)) => seen.push(line),
            other => panic!("no line {want:?} from the child ({other:?}); before: {seen:?}"),
        }
    }
}

/// A deterministic pseudo-random byte stream (xorshift).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// FNV-1a, to compare streams in messages.
pub fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
