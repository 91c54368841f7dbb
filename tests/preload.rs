//! Preload tests: real programs run under `LD_PRELOAD=libringshim.so`, checked for what a
//! user would see. Every scenario runs without the shim first (the reference: if it fails
//! there, the test itself or the host is at fault) and then in each of `common::MODES`.
//!
//! The C programs in `tests/progs/pl_*.c` are self-checking (exit 0 = pass; a `FAIL` line
//! on stderr otherwise; 77 = cannot run on this host) and assert kernel behaviour exactly,
//! so they keep meaning the same thing once loopback is accelerated
//! (`RINGSHIM_BACKEND=uring RINGSHIM_KERNEL_NETS=none`). System tools (sh, ls, python3,
//! curl) show the shim is invisible to ordinary programs.
//!
//! Every child is bounded: it is killed (by PID) after `TIMEOUT`, and its output goes to
//! files rather than pipes so that a stray grandchild cannot keep the harness waiting.

mod common;

use common::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

/// Upper bound for one program run; the C programs' own watchdogs fire at 10 s and say
/// which step hung, so this only catches what they cannot (e.g. a hang in exit).
const TIMEOUT: Duration = Duration::from_secs(20);
/// Exit status with which a test program says "not possible on this host".
const SKIP_CODE: i32 = 77;

// ---------------------------------------------------------------------------------------
// Modes

/// One way of running a program: without the shim, or with it and some environment.
#[derive(Clone, Copy)]
struct Mode {
    name: &'static str,
    /// `None`: no LD_PRELOAD at all.
    env: Option<&'static [(&'static str, &'static str)]>,
}

const NO_SHIM: Mode = Mode {
    name: "no-shim",
    env: None,
};

/// The reference run first, then every shim configuration this host can run. A mode that
/// needs io_uring is skipped when io_uring is unavailable (a failure under `CI=true`).
fn active_modes() -> Vec<Mode> {
    let mut modes = vec![NO_SHIM];
    for &(name, env) in MODES {
        let needs_uring = env
            .iter()
            .any(|&(k, v)| k == "RINGSHIM_BACKEND" && v == "uring");
        if needs_uring && !require(io_uring_available(), &format!("io_uring (mode {name})")) {
            continue;
        }
        modes.push(Mode {
            name,
            env: Some(env),
        });
    }
    modes
}

/// A command for `program` in `mode`, with a clean, predictable environment: no inherited
/// LD_PRELOAD or RINGSHIM_* settings, no proxies (traffic must stay on loopback).
fn command_in(mode: Mode, program: &Path) -> Command {
    let mut cmd = match mode.env {
        Some(env) => shimmed(program, env),
        None => Command::new(program),
    };
    // `shimmed` sets LD_PRELOAD itself, so only the reference run removes it.
    if mode.env.is_none() {
        cmd.env_remove("LD_PRELOAD");
    }
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        let configured = mode.env.is_some_and(|env| env.iter().any(|&(e, _)| e == k));
        if k.starts_with("RINGSHIM_") && !configured {
            cmd.env_remove(&key);
        }
    }
    for proxy in [
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
    ] {
        cmd.env_remove(proxy);
    }
    cmd
}

/// Quotes `s` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A shell line that reproduces a run by hand.
fn repro(mode: Mode, program: &Path, args: &[&str]) -> String {
    let mut words = vec!["env".to_string()];
    match mode.env {
        Some(env) => {
            words.push(format!("LD_PRELOAD={}", shim_lib().display()));
            words.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        }
        None => words.push("-u LD_PRELOAD".to_string()),
    }
    words.push(shell_quote(&program.display().to_string()));
    words.extend(args.iter().map(|a| shell_quote(a)));
    words.join(" ")
}

// ---------------------------------------------------------------------------------------
// Running with a timeout

/// A scratch directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("ringshim-preload-{}-{tag}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Outcome {
    /// `None` when the run was killed for exceeding its time limit.
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Outcome {
    fn passed(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    fn skipped(&self) -> bool {
        self.status.and_then(|s| s.code()) == Some(SKIP_CODE)
    }

    fn describe(&self) -> String {
        let status = match self.status {
            None => format!("KILLED after exceeding {TIMEOUT:?}"),
            Some(s) => format!("{s}"),
        };
        format!(
            "status: {status} after {:.2?}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.elapsed, self.stdout, self.stderr
        )
    }
}

/// Kills a child by PID; the waiting thread reaps it, so the PID cannot be reused first.
fn kill_pid(pid: u32) {
    // SAFETY: kill has no memory-safety preconditions; the PID is our unreaped child.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
}

/// Runs `cmd` to completion or until `limit`, capturing stdout and stderr.
fn run_bounded(mut cmd: Command, limit: Duration) -> Outcome {
    let scratch = Scratch::new("out");
    let out = std::fs::File::create(scratch.path("stdout")).unwrap();
    let err = std::fs::File::create(scratch.path("stderr")).unwrap();
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(limit) {
        Ok(status) => Some(status.expect("wait for child")),
        Err(_) => {
            kill_pid(pid);
            let _ = rx.recv();
            None
        }
    };
    let elapsed = start.elapsed();
    waiter.join().unwrap();
    let read = |name| {
        String::from_utf8_lossy(&std::fs::read(scratch.path(name)).unwrap_or_default()).into_owned()
    };
    Outcome {
        status,
        stdout: read("stdout"),
        stderr: read("stderr"),
        elapsed,
    }
}

/// A long-running child (a server) that is killed by PID when dropped, even on panic.
struct Background {
    child: Child,
}

impl Drop for Background {
    fn drop(&mut self) {
        kill_pid(self.child.id());
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Scenario driver

/// Runs `program args` without the shim and in every mode; panics with a report of every
/// failing mode (with the command that reproduces it) after trying them all.
fn scenario(program: &Path, args: &[&str]) {
    let mut failures = Vec::new();
    let (mut reference_skipped, mut reference_failed) = (false, false);
    for mode in active_modes() {
        let mut cmd = command_in(mode, program);
        cmd.args(args);
        let outcome = run_bounded(cmd, TIMEOUT);
        if mode.env.is_none() && outcome.skipped() {
            eprintln!(
                "SKIP: {} {:?} cannot run on this host:\n{}",
                program.display(),
                args,
                outcome.stdout
            );
            reference_skipped = true;
            continue;
        }
        if outcome.passed() || (reference_skipped && outcome.skipped()) {
            continue;
        }
        let note = if mode.env.is_none() {
            reference_failed = true;
            "fails WITHOUT the shim: the test or the host is at fault"
        } else if reference_failed {
            "fails without the shim too"
        } else if reference_skipped {
            "skipped without the shim but not with it"
        } else {
            "passes without the shim, fails with it"
        };
        failures.push(format!(
            "=== mode {} ({note})\nreproduce: {}\n{}",
            mode.name,
            repro(mode, program, args),
            outcome.describe()
        ));
    }
    assert!(
        failures.is_empty(),
        "{} {:?}:\n{}",
        program.display(),
        args,
        failures.join("\n")
    );
}

/// One test per (program, scenario), plus `C_CASES`, the same list for the runs that go
/// through every case at once (the ustack variants).
macro_rules! scenarios {
    ($($prog:literal { $($test:ident => $arg:literal),* $(,)? })*) => {
        $($(
            #[test]
            fn $test() {
                scenario(&c_program($prog), &[$arg]);
            }
        )*)*
        /// (program, test name, scenario argument) of every C program scenario.
        const C_CASES: &[(&str, &str, &str)] = &[$($(($prog, stringify!($test), $arg)),*),*];
    };
}

// ---------------------------------------------------------------------------------------
// C program scenarios

scenarios! {
    "pl_echo" {
        echo_blocking => "blocking",
        echo_nonblocking_epoll => "epoll_nb",
        echo_bulk_8mib_both_directions => "bulk",
        echo_ipv6 => "ipv6",
        accept4_flags => "accept4",
        sockname_peername_agree => "names",
        udp_unix_pipes_untouched => "untouched",
    }

    "pl_epoll" {
        epoll_level_triggered => "lt",
        epoll_edge_triggered => "et",
        epoll_oneshot => "oneshot",
        epoll_rdhup_half_close => "rdhup",
        epoll_out_on_connect => "connect_out",
        epoll_refused_connect_so_error => "refused",
        epoll_ctl_errors => "ctl_errors",
        epoll_registration_follows_open_file => "dup",
        epoll_timeout_no_spin => "timeout",
        epoll_pwait_sigmask => "pwait",
        epoll_pwait2 => "pwait2",
        epoll_shared_across_fork => "fork",
        epoll_nested_and_polled => "nested",
        epoll_close_removes => "close_removes",
        epoll_one_event_waits_take_turns => "fairness",
        epoll_in_a_reused_slot_hears_its_kernel_members => "reused_slot",
    }

    "pl_poll" {
        poll_mixed_socket_pipe => "poll",
        ppoll_mixed_and_sigmask => "ppoll",
        select_mixed_socket_pipe => "select",
        pselect_mixed_and_sigmask => "pselect",
        poll_hup_rdhup_reset => "hup",
        poll_nval => "nval",
    }

    "pl_fd" {
        dup_survives_close => "dup",
        dup2_replaces_socket => "dup2",
        dup3_flags => "dup3",
        fcntl_dupfd_cloexec => "dupfd",
        fork_child_uses_socket => "fork_child",
        fork_parent_keeps_socket => "fork_parent",
        fork_shared_receive_queue => "fork_shared_read",
        exec_inherits_socket => "exec",
        posix_spawn_inherits_socket => "spawn",
        close_range_then_reuse => "close_range",
        stdio_on_socket => "stdio",
        scm_rights_passes_socket => "scm_rights",
        nonblock_fcntl_fionbio_timeouts => "nonblock",
        ioctl_fionread_outq => "fionread",
    }

    "pl_signal" {
        signal_interrupts_epoll_wait => "epoll",
        signal_interrupts_poll_select => "poll",
        signal_interrupts_recv => "recv",
    }

    "pl_io" {
        sendfile_data => "sendfile",
        sendfile_splice_write_order => "sendfile_order",
        half_close => "halfclose",
        shutdown_read => "shut_rd",
        epipe_and_sigpipe => "epipe",
        readv_writev_sendmsg_recvmsg => "vec",
        recv_peek => "peek",
        recv_waitall => "waitall",
        msg_dontwait => "dontwait",
        sendmmsg_recvmmsg_tcp => "mmsg",
        close_delivers_pending_bytes => "close_drain",
    }

    "pl_threads" {
        threads_accept_io_and_shared_epoll => "mixed",
        epoll_waiter_hears_a_socket_another_thread_read_to_eagain => "reader_sleeps_elsewhere",
    }
}

/// The program built with `-O2 -D_FORTIFY_SOURCE=2`, so that its reads and polls go
/// through glibc's checked entry points.
fn fortify_program() -> PathBuf {
    c_program_with(
        "pl_fortify",
        "-fortify",
        &["-O2", "-U_FORTIFY_SOURCE", "-D_FORTIFY_SOURCE=2"],
    )
}

#[test]
fn fortify_variants_are_exercised() {
    let exe = fortify_program();
    // Guard the premise: if the compiler stopped emitting the _chk calls, the scenario
    // below would silently test the plain functions instead.
    let nm = Command::new("nm")
        .arg("-D")
        .arg(&exe)
        .output()
        .expect("run nm");
    assert!(nm.status.success(), "nm -D failed");
    let imports = String::from_utf8_lossy(&nm.stdout);
    for sym in [
        "__read_chk",
        "__recv_chk",
        "__recvfrom_chk",
        "__poll_chk",
        "__ppoll_chk",
    ] {
        assert!(
            imports.lines().any(|l| l
                .split_whitespace()
                .last()
                .is_some_and(|s| s.split('@').next() == Some(sym))),
            "{} does not import {sym}; imports:\n{imports}",
            exe.display()
        );
    }
    scenario(&exe, &["calls"]);
}

#[test]
fn fortify_overflow_still_aborts() {
    scenario(&fortify_program(), &["overflow"]);
}

// ---------------------------------------------------------------------------------------
// System tools

/// The real python3 executable (not a pyenv shim script, which would run bash under
/// LD_PRELOAD first), or `None` when python3 is absent.
fn python3() -> Option<PathBuf> {
    static PY: OnceLock<Option<PathBuf>> = OnceLock::new();
    PY.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .ok()?;
        let path = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
        (out.status.success() && path.is_absolute()).then_some(path)
    })
    .clone()
}

/// What a tool run must leave on stderr.
#[derive(Clone, Copy, PartialEq)]
enum Stderr {
    /// Nothing at all: the shim is invisible to a program that never uses a socket.
    Empty,
    /// Anything (shown in failure reports): for socket programs, where the shim may
    /// legitimately log, e.g. that it fell back to the kernel path.
    Any,
}

/// Runs a tool in every mode; asserts exit 0, stdout identical to the reference run (and
/// to `expect_stdout` when given), and the `stderr` rule. Returns the reference stdout.
fn tool_unchanged(
    program: &Path,
    args: &[&str],
    expect_stdout: Option<&str>,
    stderr: Stderr,
) -> String {
    let mut reference: Option<String> = None;
    let mut failures = Vec::new();
    for mode in active_modes() {
        let mut cmd = command_in(mode, program);
        cmd.args(args);
        let o = run_bounded(cmd, TIMEOUT);
        let mut problems = Vec::new();
        if !o.passed() {
            problems.push("did not exit 0".to_string());
        }
        if stderr == Stderr::Empty && !o.stderr.is_empty() {
            problems.push("wrote to stderr".to_string());
        }
        if let Some(want) = expect_stdout {
            if o.stdout != want {
                problems.push(format!("stdout differs from {want:?}"));
            }
        }
        match &reference {
            None => reference = Some(o.stdout.clone()),
            Some(r) if *r != o.stdout => problems.push(format!(
                "stdout differs from the run without the shim:\n{r}"
            )),
            Some(_) => {}
        }
        if !problems.is_empty() {
            failures.push(format!(
                "=== mode {}: {}\nreproduce: {}\n{}",
                mode.name,
                problems.join("; "),
                repro(mode, program, args),
                o.describe()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}:\n{}",
        program.display(),
        failures.join("\n")
    );
    reference.unwrap_or_default()
}

#[test]
fn tool_sh_output_unchanged() {
    let script = "echo hi; printf '%s\\n' a b; echo abc | tr a-c x-z; (exit 3); echo status=$?";
    tool_unchanged(
        Path::new("/bin/sh"),
        &["-c", script],
        Some("hi\na\nb\nxyz\nstatus=3\n"),
        Stderr::Empty,
    );
}

#[test]
fn tool_sh_exit_status_preserved() {
    let mut failures = Vec::new();
    for mode in active_modes() {
        let mut cmd = command_in(mode, Path::new("/bin/sh"));
        cmd.args(["-c", "exit 7"]);
        let o = run_bounded(cmd, TIMEOUT);
        if o.status.and_then(|s| s.code()) != Some(7) || !o.stderr.is_empty() {
            failures.push(format!(
                "=== mode {}: expected exit status 7 and no stderr\nreproduce: {}\n{}",
                mode.name,
                repro(mode, Path::new("/bin/sh"), &["-c", "exit 7"]),
                o.describe()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "sh -c 'exit 7':\n{}",
        failures.join("\n")
    );
}

#[test]
fn tool_ls_output_unchanged() {
    let dir = Scratch::new("ls");
    for name in ["alpha", "beta.txt", "gamma"] {
        std::fs::write(dir.path(name), name.repeat(3)).unwrap();
    }
    std::fs::create_dir(dir.path("sub")).unwrap();
    let d = dir.0.to_str().unwrap();
    tool_unchanged(Path::new("/bin/ls"), &["-l", d], None, Stderr::Empty);
    tool_unchanged(
        Path::new("/bin/ls"),
        &[d],
        Some("alpha\nbeta.txt\ngamma\nsub\n"),
        Stderr::Empty,
    );
}

/// Python: a threaded blocking echo and a selectors (epoll) event loop over 127.0.0.1.
const PY_ECHO: &str = r#"
import hashlib, selectors, socket, threading
data = bytes(range(256)) * 4096 + b"tail"

srv = socket.create_server(("127.0.0.1", 0))
srv.settimeout(10)
port = srv.getsockname()[1]
def serve():
    conn, _ = srv.accept()
    conn.settimeout(10)
    with conn:
        while True:
            d = conn.recv(65536)
            if not d:
                break
            conn.sendall(d)
t = threading.Thread(target=serve)
t.start()
c = socket.create_connection(("127.0.0.1", port), timeout=10)
def send():
    c.sendall(data)
    c.shutdown(socket.SHUT_WR)
threading.Thread(target=send).start()
got = bytearray()
while True:
    d = c.recv(65536)
    if not d:
        break
    got += d
t.join()
assert got == data, ("threaded echo", len(got), len(data))

# Non-blocking: one selector drives a listener, a server side and a client side.
sel = selectors.DefaultSelector()
lst = socket.create_server(("127.0.0.1", 0))
lst.setblocking(False)
sel.register(lst, selectors.EVENT_READ, "listen")
cli = socket.socket()
cli.setblocking(False)
cli.connect_ex(("127.0.0.1", lst.getsockname()[1]))
sel.register(cli, selectors.EVENT_WRITE, "client")
out, echoed, pending = memoryview(data), bytearray(), {}
while len(echoed) < len(data):
    events = sel.select(timeout=10)
    assert events, "selector stalled"
    for key, mask in events:
        if key.data == "listen":
            s, _ = lst.accept()
            s.setblocking(False)
            pending[s] = bytearray()
            sel.register(s, selectors.EVENT_READ, "server")
        elif key.data == "server":
            s = key.fileobj
            if mask & selectors.EVENT_READ:
                d = s.recv(65536)
                pending[s] += d
            if pending[s]:
                try:
                    n = s.send(pending[s])
                    del pending[s][:n]
                except BlockingIOError:
                    pass
            sel.modify(s, selectors.EVENT_READ | (selectors.EVENT_WRITE if pending[s] else 0), "server")
        else:
            if mask & selectors.EVENT_WRITE and out:
                try:
                    n = cli.send(out[:65536])
                    out = out[n:]
                except BlockingIOError:
                    pass
            if mask & selectors.EVENT_READ:
                echoed += cli.recv(65536)
            sel.modify(cli, selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0), "client")
assert echoed == data, ("selector echo", len(echoed))
print("ok", len(data), hashlib.sha256(data).hexdigest())
"#;

#[test]
fn tool_python_socket_echo() {
    let Some(py) = python3() else {
        require(false, "python3");
        return;
    };
    // The digest line is compared across modes by tool_unchanged; here, check its shape.
    let out = tool_unchanged(&py, &["-c", PY_ECHO], None, Stderr::Any);
    assert!(
        out.starts_with("ok 1048580 "),
        "unexpected python output: {out:?}"
    );
}

/// Serves `dir` on 127.0.0.1 (ephemeral port) with python's http.server in `mode`.
const PY_HTTP: &str = r#"
import functools, http.server, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

fn start_http_server(py: &Path, mode: Mode, dir: &Path, log: &Path) -> (Background, u16) {
    let mut cmd = command_in(mode, py);
    cmd.args(["-c", PY_HTTP]).arg(dir);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap());
    let mut child = cmd.spawn().expect("spawn python http.server");
    let stdout = child.stdout.take().unwrap();
    let server = Background { child };
    // Read the port on a thread so a server that never prints cannot hang the test.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
    let port = line.trim().parse().unwrap_or_else(|_| {
        panic!(
            "mode {}: http.server did not report its port (got {line:?}); its log:\n{}",
            mode.name,
            std::fs::read_to_string(log).unwrap_or_default()
        )
    });
    (server, port)
}

#[test]
fn tool_curl_against_python_http_server() {
    let Some(py) = python3() else {
        require(false, "python3");
        return;
    };
    if !require(Path::new("/usr/bin/curl").exists(), "curl") {
        return;
    }
    let site = Scratch::new("site");
    // 1 MiB + a bit of non-repeating-looking content, and a small text file.
    let blob: Vec<u8> = (0u32..(1 << 20) + 333)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(site.path("blob.bin"), &blob).unwrap();
    std::fs::write(site.path("hello.txt"), "hello over loopback\n").unwrap();
    let mut failures = Vec::new();
    for mode in active_modes() {
        // Both the server and curl run in the mode under test.
        let (server, port) = start_http_server(
            &py,
            mode,
            &site.0,
            &site.path(&format!("server-{}.log", mode.name)),
        );
        let got = site.path(&format!("got-{}.bin", mode.name));
        let blob_url = format!("http://127.0.0.1:{port}/blob.bin");
        let hello_url = format!("http://127.0.0.1:{port}/hello.txt");
        let args: Vec<&str> = vec![
            "--silent",
            "--show-error",
            "--fail",
            "--noproxy",
            "*",
            "--max-time",
            "20",
            "-o",
            got.to_str().unwrap(),
            &blob_url,
            "-o",
            "-",
            &hello_url,
        ];
        let mut cmd = command_in(mode, Path::new("/usr/bin/curl"));
        cmd.args(&args);
        let o = run_bounded(cmd, TIMEOUT);
        drop(server);
        let body_ok = std::fs::read(&got).map(|b| b == blob).unwrap_or(false);
        if !o.passed() || !body_ok || o.stdout != "hello over loopback\n" {
            failures.push(format!(
                "=== mode {}: curl failed or got wrong data (blob intact: {body_ok})\nreproduce (server in the same mode): {}\n{}\n--- server log ---\n{}",
                mode.name,
                repro(mode, Path::new("/usr/bin/curl"), &args),
                o.describe(),
                std::fs::read_to_string(site.path(&format!("server-{}.log", mode.name))).unwrap_or_default()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "curl vs python http.server:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// The C program scenarios across the ustack backend (issue 6). The programs' TCP helpers
// read PL_ADDR_LISTEN / PL_ADDR_CONNECT / PL_ADDR_CLIENT (tests/progs/pl_util.h), which
// move their connections off loopback onto the TAP of a ringshim-stackd this test starts:
// one end of every connection in stackd, the other on the kernel, as in the differential
// variants (tests/differential.rs). The reference runs without the shim in a namespace
// whose kernel owns both addresses; each case must pass there and under the shim.

#[path = "../crates/stackd/tests/common/mod.rs"]
#[allow(unused_imports)]
mod stackd;

struct UstackVariant {
    name: &'static str,
    /// PL_ADDR_* of the reference run (kernel to kernel).
    reference_env: &'static [(&'static str, &'static str)],
    /// PL_ADDR_* and shim configuration of the run across stackd.
    shim_env: &'static [(&'static str, &'static str)],
}

/// Listeners on the wildcard (a listener of both stacks); clients reach stackd's
/// 198.51.100.2 through the kernel, so every accepted socket is stackd's.
const USTACK_SERVER: UstackVariant = UstackVariant {
    name: "ustack-server",
    reference_env: &[
        ("PL_ADDR_LISTEN", "0.0.0.0"),
        ("PL_ADDR_CONNECT", "198.51.100.2"),
        ("PL_ADDR_CLIENT", "198.51.100.2"),
    ],
    shim_env: &[
        ("PL_ADDR_LISTEN", "0.0.0.0"),
        ("PL_ADDR_CONNECT", "198.51.100.2"),
        ("PL_ADDR_CLIENT", "198.51.100.1"),
        ("RINGSHIM_KERNEL_NETS", "loopback,198.51.100.2/32"),
    ],
};

/// Listeners on the TAP's kernel address; clients connect there through stackd.
const USTACK_CLIENT: UstackVariant = UstackVariant {
    name: "ustack-client",
    reference_env: &[
        ("PL_ADDR_LISTEN", "198.51.100.1"),
        ("PL_ADDR_CONNECT", "198.51.100.1"),
        ("PL_ADDR_CLIENT", "198.51.100.1"),
    ],
    shim_env: &[
        ("PL_ADDR_LISTEN", "198.51.100.1"),
        ("PL_ADDR_CONNECT", "198.51.100.1"),
        ("PL_ADDR_CLIENT", "198.51.100.2"),
    ],
};

const FORK_COPIES_RESET: &str =
    "a fork child's copies of stackd connections report a reset (README: ustack limits)";
const EXEC_LOSES_SESSIONS: &str =
    "exec (and a socket passed to another process) keeps only the placeholder: the \
     stackd session belongs to the process image that made it (README: ustack limits)";
const NO_SPLICE: &str = "splice to or from a ustack socket is EINVAL (README: ustack limits)";
const GLIBC_INTERNAL_IO: &str =
    "stdio on a socket (fdopen) reads and writes through glibc-internal calls no export \
     sees: on a ustack socket they reach the unconnected placeholder (README: ustack limits)";

/// (variant, test, why the case cannot pass across stackd). Each must still fail — a
/// listed case that passes fails the run, so the list cannot go stale — except open
/// bugs ("BUG: ..."), which may be races.
const USTACK_DIFFERENCES: &[(&str, &str, &str)] = &[
    (
        "ustack-server",
        "epoll_shared_across_fork",
        FORK_COPIES_RESET,
    ),
    ("ustack-server", "fork_child_uses_socket", FORK_COPIES_RESET),
    (
        "ustack-server",
        "fork_parent_keeps_socket",
        FORK_COPIES_RESET,
    ),
    (
        "ustack-server",
        "fork_shared_receive_queue",
        FORK_COPIES_RESET,
    ),
    ("ustack-server", "exec_inherits_socket", EXEC_LOSES_SESSIONS),
    (
        "ustack-server",
        "posix_spawn_inherits_socket",
        EXEC_LOSES_SESSIONS,
    ),
    (
        "ustack-server",
        "scm_rights_passes_socket",
        EXEC_LOSES_SESSIONS,
    ),
    ("ustack-server", "stdio_on_socket", GLIBC_INTERNAL_IO),
    ("ustack-client", "sendfile_splice_write_order", NO_SPLICE),
];

fn check_ustack(variant: &UstackVariant) {
    if !require(
        is_root(),
        &format!("preload {}: root (network namespaces, TAP)", variant.name),
    ) {
        return;
    }
    let (st, reference_ns) = stackd::Stackd::start_with_kernel_twin();
    let control = st.control.to_str().expect("control path").to_string();
    let mut env: Vec<(&str, &str)> = vec![
        ("RINGSHIM_BACKEND", "ustack"),
        ("RINGSHIM_STACKD", &control),
        ("RINGSHIM_LOG", "debug"),
    ];
    env.extend_from_slice(variant.shim_env);
    // Leaked for the 'static Mode; one small Vec per variant per test run.
    let env: &'static [(&'static str, &'static str)] = Box::leak(
        env.into_iter()
            .map(|(k, v)| (k, &*Box::leak(v.to_string().into_boxed_str())))
            .collect::<Vec<_>>()
            .into_boxed_slice(),
    );
    let shim = Mode {
        name: variant.name,
        env: Some(env),
    };
    let only = std::env::var("PRELOAD_USTACK_CASES").ok();
    let mut failures = Vec::new();
    let mut through_stackd = 0;
    for &(prog, test, arg) in C_CASES {
        if only
            .as_ref()
            .is_some_and(|o| !o.split(',').any(|x| x == test))
        {
            continue;
        }
        let program = c_program(prog);
        let mut reference = command_in(NO_SHIM, &program);
        reference
            .args([arg])
            .envs(variant.reference_env.iter().copied());
        enter_netns(&mut reference, &reference_ns.name);
        let reference = run_bounded(reference, TIMEOUT);
        if reference.skipped() {
            continue;
        }
        if !reference.passed() {
            failures.push(format!(
                "{test}: fails WITHOUT the shim (kernel to kernel, namespace {}): the test \
                 or the mapping is at fault\n{}",
                reference_ns.name,
                reference.describe()
            ));
            continue;
        }
        let mut cmd = command_in(shim, &program);
        cmd.args([arg]);
        enter_netns(&mut cmd, &st.ns.name);
        let outcome = run_bounded(cmd, TIMEOUT);
        let known = USTACK_DIFFERENCES
            .iter()
            .find(|(v, t, _)| *v == variant.name && *t == test);
        match (outcome.passed(), known) {
            (true, None) => {
                if outcome.stderr.contains("(backend ustack)")
                    || outcome.stderr.contains("through stackd")
                {
                    through_stackd += 1;
                }
            }
            (false, Some(_)) => {}
            // An open bug may be a race that did not strike this time.
            (true, Some((_, _, why))) if why.starts_with("BUG") => {
                eprintln!("{}: {test} ({why}) passed this time", variant.name)
            }
            (true, Some((_, _, why))) => failures.push(format!(
                "{test} is listed in USTACK_DIFFERENCES ({why}) but passes: remove it"
            )),
            (false, None) => failures.push(format!(
                "{test}: passes kernel to kernel, fails across stackd\nreproduce: ip netns exec {} {}\n{}",
                st.ns.name,
                repro(shim, &program, &[arg]),
                outcome.describe()
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{}: {} case(s) failed\n\n{}",
        variant.name,
        failures.len(),
        failures.join("\n\n")
    );
    assert!(
        only.is_some() || through_stackd >= 30,
        "{}: only {through_stackd} cases used stackd",
        variant.name
    );
}

#[test]
fn c_programs_with_the_accepting_side_in_stackd() {
    check_ustack(&USTACK_SERVER);
}

#[test]
fn c_programs_with_the_connecting_side_in_stackd() {
    check_ustack(&USTACK_CLIENT);
}
