//! Shared helpers of the black-box test suites: build the shim and the C test programs
//! once, spawn programs with and without `LD_PRELOAD`, and decide whether a test that
//! needs io_uring or root may skip (never under `CI=true`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Absolute path of `libringshim.so`: `$RINGSHIM_LIB`, or a fresh debug build.
pub fn shim_lib() -> PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        if let Ok(p) = std::env::var("RINGSHIM_LIB") {
            return PathBuf::from(p);
        }
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "ringshim", "--lib"])
            .current_dir(repo_root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of the shim failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo_root().join("target"));
        let lib = target.join("debug").join("libringshim.so");
        assert!(lib.exists(), "{} missing", lib.display());
        lib
    })
    .clone()
}

/// Compiles `tests/progs/<name>.c` (once per test binary) and returns the executable.
pub fn c_program(name: &str) -> PathBuf {
    c_program_with(name, "", &[])
}

/// Like [`c_program`], with extra compiler flags (they come last, so `-O2` overrides the
/// default `-O1`). The executable is named `<name><variant>` so that differently-compiled
/// builds of one source never overwrite each other.
pub fn c_program_with(name: &str, variant: &str, extra_flags: &[&str]) -> PathBuf {
    // Tests of one binary run on parallel threads: serialise the up-to-date check and the
    // compile so two threads never write the same temporary file.
    static BUILD_LOCK: Mutex<()> = Mutex::new(());
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let out_dir = repo_root().join("target").join("test-progs");
    std::fs::create_dir_all(&out_dir).unwrap();
    let progs = repo_root().join("tests").join("progs");
    let src = progs.join(format!("{name}.c"));
    let exe = out_dir.join(format!("{name}{variant}"));
    // A program is stale when it is older than its source or than any shared header in
    // tests/progs (the programs include them with #include "...").
    let src_time = std::fs::metadata(&src).and_then(|m| m.modified());
    let newest_header = std::fs::read_dir(&progs)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "h"))
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max();
    let fresh = match (src_time, std::fs::metadata(&exe).and_then(|m| m.modified())) {
        (Ok(s), Ok(built)) => built >= s && newest_header.is_none_or(|h| built >= h),
        _ => false,
    };
    if !fresh {
        // Build to a temporary name and rename, so parallel test binaries never run a
        // half-written executable.
        let tmp = out_dir.join(format!("{name}{variant}.{}.tmp", std::process::id()));
        let status = Command::new("cc")
            .args(["-O1", "-g", "-Wall", "-D_GNU_SOURCE", "-pthread"])
            .args(extra_flags)
            .arg("-o")
            .arg(&tmp)
            .arg(&src)
            .status()
            .expect("run cc");
        assert!(
            status.success(),
            "cc {} {:?} failed",
            src.display(),
            extra_flags
        );
        std::fs::rename(&tmp, &exe).unwrap();
    }
    exe
}

/// True when running in CI, where skipping an io_uring or namespace test is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// Skips (returns false) or, in CI, panics when a capability is missing.
pub fn require(capability_present: bool, what: &str) -> bool {
    if capability_present {
        return true;
    }
    if in_ci() {
        panic!("{what} is unavailable, and CI=true forbids skipping");
    }
    eprintln!("SKIP: {what} is unavailable on this host");
    false
}

/// Whether io_uring_setup works for this process.
pub fn io_uring_available() -> bool {
    io_uring::IoUring::new(8).is_ok()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A command that runs `program` under the shim with the given extra environment.
pub fn shimmed(program: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("LD_PRELOAD", shim_lib());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Makes `cmd` start inside network namespace `name` (a /run/netns name): setns in the
/// child before exec, so no `ip netns exec` process runs under the shim too.
pub fn enter_netns(cmd: &mut Command, name: &str) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let ns = std::fs::File::open(format!("/run/netns/{name}"))
        .unwrap_or_else(|e| panic!("open netns {name}: {e}"));
    // SAFETY: the closure runs in the forked child before exec and only makes one
    // async-signal-safe system call on an fd the parent keeps open (moved into it).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// The environment configurations every preload test runs under: the plain kernel,
/// the shim on its kernel path, and the shim accelerating loopback.
pub const MODES: &[(&str, &[(&str, &str)])] = &[
    ("shim-default", &[]),
    (
        "shim-kernel-backend",
        &[
            ("RINGSHIM_BACKEND", "kernel"),
            ("RINGSHIM_KERNEL_NETS", "none"),
        ],
    ),
    (
        "shim-uring-loopback",
        &[
            ("RINGSHIM_BACKEND", "uring"),
            ("RINGSHIM_KERNEL_NETS", "none"),
        ],
    ),
];

// ---------------------------------------------------------------------------------------
// Long-running processes, /proc sampling and live counters (tests/stress.rs, idle.rs,
// failopen.rs).

/// Path of the `ringshim` CLI, built once per test binary (`cargo build -p ringshim-cli`;
/// a no-op when it is up to date, and a stale CLI could misread a newer counter page).
pub fn ringshim_cli() -> PathBuf {
    static CLI: OnceLock<PathBuf> = OnceLock::new();
    CLI.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "ringshim-cli"])
            .current_dir(repo_root())
            .status()
            .expect("run cargo build -p ringshim-cli");
        assert!(status.success(), "cargo build of ringshim-cli failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo_root().join("target"));
        let cli = target.join("debug").join("ringshim");
        assert!(cli.exists(), "{} missing", cli.display());
        cli
    })
    .clone()
}

/// The summed live counters of a shimmed process (`ringshim stat PID --json`, "totals").
/// Err when the process has no page (not shimmed, passive, or not yet publishing).
pub fn shim_counters(pid: u32) -> Result<std::collections::BTreeMap<String, u64>, String> {
    let out = Command::new(ringshim_cli())
        .args(["stat", &pid.to_string(), "--json"])
        .output()
        .map_err(|e| format!("run ringshim stat: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "ringshim stat {pid} --json: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // The CLI's JSON is flat enough that a scan for the totals object suffices (the
    // test binaries carry no JSON parser).
    let start = text
        .find("\"totals\":{")
        .ok_or_else(|| format!("no totals in {text}"))?
        + "\"totals\":{".len();
    let end = start
        + text[start..]
            .find('}')
            .ok_or_else(|| format!("unterminated totals in {text}"))?;
    let mut map = std::collections::BTreeMap::new();
    for pair in text[start..end].split(',') {
        let (k, v) = pair
            .split_once(':')
            .ok_or_else(|| format!("bad pair {pair}"))?;
        let v: u64 = v
            .trim()
            .parse()
            .map_err(|e| format!("bad value {pair}: {e}"))?;
        map.insert(k.trim().trim_matches('"').to_string(), v);
    }
    Ok(map)
}

/// Sends `sig` to one process, by PID (never by name).
pub fn send_signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Removes the counter page a shimmed process left behind: a process that is killed
/// cannot unlink it (the shim unlinks it at a normal exit).
pub fn remove_stats_page(pid: u32) {
    let _ = std::fs::remove_file(format!("/dev/shm/ringshim.{pid}"));
}

/// A scratch directory under target/test-scratch, removed when dropped.
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(tag: &str) -> TestDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = repo_root()
            .join("target")
            .join("test-scratch")
            .join(format!(
                "{tag}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TestDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a bounded run produced. `status` is None when it was killed at its limit.
pub struct Limited {
    pub status: Option<std::process::ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: std::time::Duration,
}

impl Limited {
    pub fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    pub fn describe(&self) -> String {
        let status = match self.status {
            Some(s) => format!("{s}"),
            None => "killed at its time limit".to_string(),
        };
        format!(
            "{status} after {:.1} s\n--- stdout\n{}--- stderr\n{}",
            self.elapsed.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `cmd` to completion or until `limit` (then kills it by PID). Output goes to files,
/// so a stray grandchild holding a pipe cannot keep the harness waiting.
pub fn run_limited(mut cmd: Command, limit: std::time::Duration) -> Limited {
    let dir = TestDir::new("run");
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(dir.path("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.path("stderr")).unwrap());
    let start = std::time::Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pid = child.id();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for child") {
            break Some(s);
        }
        if start.elapsed() >= limit {
            send_signal(pid, libc::SIGKILL);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    remove_stats_page(pid);
    let read = |name| {
        String::from_utf8_lossy(&std::fs::read(dir.path(name)).unwrap_or_default()).into_owned()
    };
    Limited {
        status,
        stdout: read("stdout"),
        stderr: read("stderr"),
        elapsed: start.elapsed(),
    }
}

/// A long-running child (a server) with its output in files. Dropping it kills it by PID
/// (even when the test panics) and removes its counter page.
pub struct LiveProcess {
    pub child: std::process::Child,
    pub pid: u32,
    dir: TestDir,
}

impl LiveProcess {
    /// Spawns `cmd` (stdin: a pipe the test may close, see [`LiveProcess::close_stdin`]).
    pub fn spawn(mut cmd: Command) -> LiveProcess {
        let dir = TestDir::new("live");
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::fs::File::create(dir.path("stdout")).unwrap())
            .stderr(std::fs::File::create(dir.path("stderr")).unwrap());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        LiveProcess {
            pid: child.id(),
            child,
            dir,
        }
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.dir.path("stdout")).unwrap_or_default())
            .into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.dir.path("stderr")).unwrap_or_default())
            .into_owned()
    }

    /// Waits until stdout has a line starting with `prefix` and returns the rest of it.
    /// Panics (with the output) if the process exits first or `limit` passes.
    pub fn wait_line(&mut self, prefix: &str, limit: std::time::Duration) -> String {
        let start = std::time::Instant::now();
        loop {
            if let Some(line) = self.stdout().lines().find(|l| l.starts_with(prefix)) {
                return line[prefix.len()..].trim().to_string();
            }
            if let Ok(Some(s)) = self.child.try_wait() {
                panic!(
                    "pid {} exited ({s}) before printing {prefix:?}\n--- stdout\n{}--- stderr\n{}",
                    self.pid,
                    self.stdout(),
                    self.stderr()
                );
            }
            assert!(
                start.elapsed() < limit,
                "pid {} printed no {prefix:?} within {limit:?}\n--- stdout\n{}--- stderr\n{}",
                self.pid,
                self.stdout(),
                self.stderr()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Closes the child's stdin (programs that wait for it then exit).
    pub fn close_stdin(&mut self) {
        drop(self.child.stdin.take());
    }

    /// Waits up to `limit` for the process to exit; None if it is still running.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if start.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for LiveProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            send_signal(self.pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        remove_stats_page(self.pid);
    }
}

/// What /proc says about a process at one moment.
#[derive(Clone, Debug, Default)]
pub struct ProcSample {
    /// Open descriptors, and how many of them are sockets.
    pub fds: usize,
    pub socket_fds: usize,
    /// readlink() of every non-socket descriptor (to show what the shim added).
    pub other_fds: Vec<String>,
    pub rss_kib: u64,
    /// utime + stime of the whole process (all threads), in clock ticks.
    pub cpu_ticks: u64,
    /// Per thread: (tid, voluntary, involuntary context switches).
    pub threads: Vec<(u32, u64, u64)>,
}

impl ProcSample {
    pub fn ctxt_switches(&self) -> u64 {
        self.threads.iter().map(|t| t.1 + t.2).sum()
    }
}

/// Clock ticks per second (the unit of utime/stime in /proc/PID/stat).
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Reads descriptors, RSS, CPU time and per-thread context switches of `pid`.
pub fn sample_process(pid: u32) -> ProcSample {
    let mut s = ProcSample::default();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            s.fds += 1;
            let target = std::fs::read_link(e.path())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            if target.starts_with("socket:") {
                s.socket_fds += 1;
            } else {
                s.other_fds.push(target);
            }
        }
    }
    s.other_fds.sort();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.rss_kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // Fields after the command name (which may contain spaces): utime and stime are the
    // 14th and 15th fields overall, the 12th and 13th after ") ".
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) {
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        s.cpu_ticks = field(11) + field(12);
    }
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let tid: u32 = t.file_name().to_string_lossy().parse().unwrap_or(0);
            let st = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            let get = |key: &str| {
                st.lines()
                    .find(|l| l.starts_with(key))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            s.threads.push((
                tid,
                get("voluntary_ctxt_switches:"),
                get("nonvoluntary_ctxt_switches:"),
            ));
        }
    }
    s.threads.sort();
    s
}

/// A command for `program` with a predictable environment: under the shim with exactly
/// `shim_env` (Some), or without it (None); never an inherited LD_PRELOAD or RINGSHIM_*.
pub fn shim_command(program: &Path, shim_env: Option<&[(&str, &str)]>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_remove("LD_PRELOAD");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("RINGSHIM_") {
            cmd.env_remove(&key);
        }
    }
    if let Some(env) = shim_env {
        cmd.env("LD_PRELOAD", shim_lib());
        for (k, v) in env {
            cmd.env(k, v);
        }
    }
    cmd
}

/// The shell command line that reproduces a run (for failure messages).
pub fn repro_line(program: &Path, args: &[&str], shim_env: Option<&[(&str, &str)]>) -> String {
    let mut parts = Vec::new();
    if let Some(env) = shim_env {
        parts.push(format!("LD_PRELOAD={}", shim_lib().display()));
        parts.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
    }
    parts.push(program.display().to_string());
    parts.extend(args.iter().map(|a| a.to_string()));
    parts.join(" ")
}
