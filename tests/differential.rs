//! Differential tests (invariant 8, "errors match the kernel"): every scenario in
//! `tests/diff/scenarios/*.scn` is run by the C runner `tests/diff/runner.c` once without
//! the shim and once under each configuration in `common::MODES`; the traces (return
//! values, errno names, data) must be identical. See tests/diff/README.md for the DSL.
//!
//! Before comparing, each scenario must be sound on the plain kernel: it completes, its
//! `=>` expectations hold, and two runs give the same trace (otherwise a difference could
//! be the scenario's own race rather than the shim). Under the shim the runner must report
//! that libringshim.so is really mapped: ld.so only warns when a preload fails, and a
//! comparison of two unshimmed runs would pass silently.
//!
//! A failure prints, per configuration, a unified diff (no shim → shim) and the command
//! that reproduces it.

mod common;

use common::{
    enter_netns, io_uring_available, is_root, repo_root, require, shim_lib, shimmed, MODES,
};
use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The runner ends itself after 10 s (alarm); this only catches a runner that cannot
/// (e.g. SIGALRM blocked by a broken preload).
const HARD_TIMEOUT: Duration = Duration::from_secs(30);

/// Self-test variables: read by the runner only in tests/diff/selftest/*.scn. Deliberately
/// not RINGSHIM_*, so the shim's configuration parser never sees them.
const SELFTEST_VAR: &str = "DIFF_RUNNER_SELFTEST";
const SELFTEST_EXIT_VAR: &str = "DIFF_RUNNER_SELFTEST_EXIT";

fn diff_dir() -> PathBuf {
    repo_root().join("tests").join("diff")
}

/// Compiles tests/diff/runner.c once per test binary. -Werror: the runner is meant to be
/// warning-free under -Wall -Wextra, and a warning is more likely a bug than noise.
fn runner() -> PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| {
        let out_dir = repo_root().join("target").join("test-progs");
        std::fs::create_dir_all(&out_dir).unwrap();
        let src = diff_dir().join("runner.c");
        let exe = out_dir.join("diff-runner");
        let fresh = match (std::fs::metadata(&src), std::fs::metadata(&exe)) {
            (Ok(s), Ok(e)) => e.modified().unwrap() >= s.modified().unwrap(),
            _ => false,
        };
        if !fresh {
            // Temporary name + rename: other test binaries may run the old one meanwhile.
            let tmp = out_dir.join(format!("diff-runner.{}.tmp", std::process::id()));
            let status = Command::new("cc")
                .args([
                    "-O1",
                    "-g",
                    "-Wall",
                    "-Wextra",
                    "-Werror",
                    "-D_GNU_SOURCE",
                    "-o",
                ])
                .arg(&tmp)
                .arg(&src)
                .status()
                .expect("run cc");
            assert!(status.success(), "cc {} failed", src.display());
            std::fs::rename(&tmp, &exe).unwrap();
        }
        exe
    })
    .clone()
}

struct Run {
    stdout: String,
    stderr: String,
    /// Exit code, or None when killed by a signal / the hard timeout.
    code: Option<i32>,
    timed_out: bool,
}

impl Run {
    /// What is compared: the trace plus how the runner ended (a crash or an early exit
    /// under the shim must show up even if the printed lines happen to agree).
    fn trace(&self) -> String {
        let mut t = self.stdout.clone();
        if !t.is_empty() && !t.ends_with('\n') {
            t.push('\n');
        }
        match (self.timed_out, self.code) {
            (true, _) => t.push_str("# runner killed after the hard timeout\n"),
            (false, Some(0)) => {}
            (false, Some(c)) => t.push_str(&format!("# runner exit status {c}\n")),
            (false, None) => t.push_str("# runner killed by a signal\n"),
        }
        t
    }

    fn preload(&self) -> Option<&str> {
        self.stderr
            .lines()
            .find_map(|l| l.strip_prefix("ringshim-diff: preload="))
    }
}

/// Where the runs of one comparison happen. The loopback suite runs everything here; the
/// ustack variants run the baseline in a namespace whose kernel owns the mapped
/// addresses and the shimmed runs beside stackd, both with the runner's DIFF_ADDR_*
/// mapping.
#[derive(Clone, Copy, Default)]
struct Placement<'a> {
    /// Network namespace (a /run/netns name) of the runs without the shim.
    baseline_netns: Option<&'a str>,
    /// Network namespace of the runs under the shim.
    shim_netns: Option<&'a str>,
    /// Environment of every run, with and without the shim (the address mapping).
    env: &'a [(&'a str, &'a str)],
}

/// Runs the runner on `scn` where `place` says: without LD_PRELOAD when `env` is None,
/// else under the shim with the given configuration.
fn run_at(scn: &Path, env: Option<&[(&str, &str)]>, place: &Placement) -> Run {
    let exe = runner();
    let mut cmd = match env {
        None => {
            let mut c = Command::new(&exe);
            c.env_remove("LD_PRELOAD");
            c
        }
        Some(e) => shimmed(&exe, e),
    };
    for (k, v) in place.env {
        cmd.env(k, v);
    }
    let netns = if env.is_none() {
        place.baseline_netns
    } else {
        place.shim_netns
    };
    if let Some(ns) = netns {
        enter_netns(&mut cmd, ns);
    }
    cmd.arg(scn)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn diff runner");
    // Read both pipes on threads so a chatty shim log can never block the runner.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + HARD_TIMEOUT;
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for diff runner") {
            break st;
        }
        if Instant::now() > deadline {
            timed_out = true;
            let _ = child.kill(); // our own child, by pid
            break child.wait().expect("reap diff runner");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Run {
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
        code: status.code(),
        timed_out,
    }
}

/// Line-based unified diff (LCS; traces are a few hundred lines at most).
fn unified_diff(a: &str, b: &str, a_name: &str, b_name: &str) -> String {
    let a: Vec<&str> = a.lines().collect();
    let b: Vec<&str> = b.lines().collect();
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    // (tag, line in a, line in b): ' ' both, '-' only a, '+' only b
    let mut ops: Vec<(char, usize, usize)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            ops.push((' ', i, j));
            i += 1;
            j += 1;
        } else if j == m || (i < n && lcs[i + 1][j] >= lcs[i][j + 1]) {
            ops.push(('-', i, j));
            i += 1;
        } else {
            ops.push(('+', i, j));
            j += 1;
        }
    }
    const CONTEXT: usize = 3;
    let changed: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| o.0 != ' ')
        .map(|(k, _)| k)
        .collect();
    let mut out = format!("--- {a_name}\n+++ {b_name}\n");
    let mut k = 0;
    while k < changed.len() {
        let start = changed[k].saturating_sub(CONTEXT);
        let mut end = changed[k];
        while k + 1 < changed.len() && changed[k + 1] <= end + 2 * CONTEXT + 1 {
            k += 1;
            end = changed[k];
        }
        let end = (end + CONTEXT + 1).min(ops.len());
        let hunk = &ops[start..end];
        let a_len = hunk.iter().filter(|o| o.0 != '+').count();
        let b_len = hunk.iter().filter(|o| o.0 != '-').count();
        out.push_str(&format!(
            "@@ -{},{} +{},{} @@\n",
            hunk[0].1 + 1,
            a_len,
            hunk[0].2 + 1,
            b_len
        ));
        for &(tag, ai, bj) in hunk {
            let line = if tag == '+' { b[bj] } else { a[ai] };
            out.push_str(&format!("{tag}{line}\n"));
        }
        k += 1;
    }
    out
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-=:,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Compares the unshimmed trace of `scn` with each configuration. Ok(reports): one report
/// per configuration whose trace differs (empty = all equal). Err: the scenario itself is
/// broken or nondeterministic on the plain kernel, or the shim was not loaded.
fn differences(scn: &Path, modes: &[(&str, &[(&str, &str)])]) -> Result<Vec<String>, String> {
    differences_at(scn, modes, &Placement::default()).map(|c| c.reports)
}

/// One scenario compared under some configurations.
struct Comparison {
    /// One report per configuration whose trace differs (empty = all equal).
    reports: Vec<String>,
    /// The shimmed runs' stderr (the shim's log), one per configuration that ran.
    shim_stderr: Vec<String>,
}

fn differences_at(
    scn: &Path,
    modes: &[(&str, &[(&str, &str)])],
    place: &Placement,
) -> Result<Comparison, String> {
    let base = run_at(scn, None, place);
    let base_trace = base.trace();
    if base.code != Some(0) || !base.stdout.ends_with("# end\n") {
        return Err(format!(
            "{} is broken on the plain kernel (fix the scenario, not the shim):\n{}\nstderr:\n{}",
            scn.display(),
            base_trace,
            base.stderr
        ));
    }
    if base.preload() != Some("none") {
        return Err(format!(
            "baseline run of {} had a preload: {:?}",
            scn.display(),
            base.preload()
        ));
    }
    let again = run_at(scn, None, place);
    if again.trace() != base_trace {
        return Err(format!(
            "{} is nondeterministic without the shim (a race in the scenario: wait for a condition \
             with wait_bytes/wait_readable/wait_revents before reading):\n{}",
            scn.display(),
            unified_diff(&base_trace, &again.trace(), "no-shim run 1", "no-shim run 2")
        ));
    }
    let lib = shim_lib();
    let mut reports = Vec::new();
    let mut shim_stderr = Vec::new();
    for (mode, env) in modes {
        if mode.contains("uring")
            && !require(
                io_uring_available(),
                "io_uring (for the uring loopback mode)",
            )
        {
            continue;
        }
        let shim = run_at(scn, Some(env), place);
        match shim.preload() {
            Some(p) if p.contains("libringshim") => {}
            other => {
                return Err(format!(
                    "[{mode}] libringshim.so was not mapped into the runner (preload={other:?}); \
                     the comparison would be meaningless.\nstderr:\n{}",
                    shim.stderr
                ))
            }
        }
        let shim_trace = shim.trace();
        if shim_trace != base_trace {
            let envs: String = place
                .env
                .iter()
                .chain(env.iter())
                .map(|(k, v)| format!("{k}={} ", shell_quote(v)))
                .collect();
            let stderr_tail: Vec<&str> = shim.stderr.lines().rev().take(20).collect();
            reports.push(format!(
                "[{mode}] trace differs from the kernel's\n{}\nreproduce:\n  {}LD_PRELOAD={} {} {}\n  \
                 (or: cargo test --test differential -- {})\nshim run stderr (last lines):\n  {}\n",
                unified_diff(&base_trace, &shim_trace, "no shim", mode),
                place
                    .shim_netns
                    .map(|ns| format!("ip netns exec {ns} env "))
                    .unwrap_or_default()
                    + &envs,
                shell_quote(&lib.display().to_string()),
                shell_quote(&runner().display().to_string()),
                shell_quote(&scn.display().to_string()),
                scn.file_stem().unwrap().to_string_lossy(),
                stderr_tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
            ));
        }
        shim_stderr.push(shim.stderr);
    }
    Ok(Comparison {
        reports,
        shim_stderr,
    })
}

fn check(name: &str) {
    let scn = diff_dir().join("scenarios").join(format!("{name}.scn"));
    match differences(&scn, MODES) {
        Err(e) => panic!("{e}"),
        Ok(reports) if reports.is_empty() => {}
        Ok(reports) => panic!(
            "scenario {name}: the shim changes what the program sees\n\n{}",
            reports.join("\n")
        ),
    }
}

macro_rules! scenarios {
    ($($name:ident)*) => {
        /// One test per scenario file, so `cargo test --test differential -- NAME` runs one.
        mod scenario {
            $( #[test] fn $name() { super::check(stringify!($name)); } )*
        }
        const LISTED: &[&str] = &[$(stringify!($name)),*];
    };
}

scenarios! {
    accept4_flags
    accept_nonblocking
    accept_not_listening
    bad_addrlen
    bind_in_use
    bind_twice
    close_dup_keeps_alive
    connect_refused_blocking
    connect_refused_nonblocking
    connect_twice
    double_close
    dup_semantics
    ebadf_after_close
    ebadf_never_opened
    econnreset_linger0
    econnreset_queued_data
    econnreset_unread_data
    efault_buffers
    eof_after_peer_close
    epoll_ctl_errors
    epoll_dup_close
    epoll_edge_triggered
    epoll_level_triggered
    epoll_oneshot
    epoll_rdhup
    epoll_wait_errors
    fcntl_getfl
    fionbio
    fionread
    getpeername_unconnected
    getsockopt_type_domain
    half_close
    ipv6_echo
    large_send_epoll
    listen_connected
    msg_peek
    msg_trunc_tcp
    msg_waitall
    nonblock_recv_empty
    oob_urgent_data
    poll_pollnval
    readv_writev
    recv_unconnected_tcp
    select_readiness
    send_after_peer_close
    send_unconnected_tcp
    sendmsg_recvmsg_iov
    sendto_connected_tcp
    setsockopt_errors
    short_read_gather
    shutdown_rd_read
    shutdown_unconnected
    shutdown_wr_write
    so_rcvbuf
    so_rcvtimeo
    socket_create_errors
    socketpair_unix
    tcp_connect_unspec
    tcp_echo_basic
    tcp_nodelay
    udp_loopback
    wrong_family
    zero_length_io
}

/// A scenario file without a test would silently never run.
#[test]
fn every_scenario_file_has_a_test() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(diff_dir().join("scenarios"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "scn"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    let listed: BTreeSet<String> = LISTED.iter().map(|s| s.to_string()).collect();
    let missing: Vec<_> = on_disk.difference(&listed).collect();
    let stale: Vec<_> = listed.difference(&on_disk).collect();
    assert!(
        missing.is_empty(),
        "scenario files without a test (add them to scenarios! in differential.rs): {missing:?}"
    );
    assert!(stale.is_empty(), "tests without a scenario file: {stale:?}");
    assert!(
        on_disk.len() >= 45,
        "the suite promises at least 45 scenarios, found {}",
        on_disk.len()
    );
}

/// The comparison must be able to fail. A configuration that differs from the baseline
/// only by an environment variable the runner prints (in a self-test scenario only) has to
/// be reported, through the same code path as the real scenarios, with a diff naming the
/// line; the same scenario without that variable must compare equal.
#[test]
fn comparison_detects_a_changed_trace() {
    let scn = diff_dir().join("selftest").join("env_probe.scn");
    let perturbed: &[(&str, &[(&str, &str)])] = &[("selftest-perturbed", &[(SELFTEST_VAR, "1")])];
    let reports = differences(&scn, perturbed).expect("self-test scenario runs");
    assert_eq!(
        reports.len(),
        1,
        "a changed trace was not reported: {reports:?}"
    );
    let r = &reports[0];
    assert!(
        r.contains(&format!("-L3: getenv {SELFTEST_VAR} -> unset")),
        "diff lacks the baseline line:\n{r}"
    );
    assert!(
        r.contains(&format!("+L3: getenv {SELFTEST_VAR} -> set \"1\"")),
        "diff lacks the shim line:\n{r}"
    );
    assert!(
        r.contains("reproduce:"),
        "report lacks the reproduction command:\n{r}"
    );

    let control = differences(&scn, &[("selftest-control", &[])]).expect("self-test scenario runs");
    assert!(
        control.is_empty(),
        "self-test scenario differs without the perturbation: {control:?}"
    );
}

/// A run that stops early with status 0 (as a shim that exits or execs the program away
/// might) prints a prefix of the right trace: it must still count as a difference.
#[test]
fn comparison_detects_a_truncated_trace() {
    let scn = diff_dir().join("selftest").join("early_exit.scn");
    let perturbed: &[(&str, &[(&str, &str)])] =
        &[("selftest-early-exit", &[(SELFTEST_EXIT_VAR, "1")])];
    let reports = differences(&scn, perturbed).expect("self-test scenario runs");
    assert_eq!(
        reports.len(),
        1,
        "a truncated trace was not reported: {reports:?}"
    );
    assert!(
        reports[0].contains("-# end"),
        "diff does not show the missing end marker:\n{}",
        reports[0]
    );
}

#[test]
fn unified_diff_shows_changes_with_context() {
    let a: String = (1..=20).map(|i| format!("{i}\n")).collect();
    // two changes far apart: two hunks with three lines of context each
    let b: String = (1..=21)
        .filter(|&i| i != 18)
        .map(|i| {
            if i == 5 {
                "five\n".to_string()
            } else {
                format!("{i}\n")
            }
        })
        .collect();
    let d = unified_diff(&a, &b, "a", "b");
    assert!(
        d.starts_with("--- a\n+++ b\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n"),
        "{d}"
    );
    assert!(
        d.ends_with("@@ -15,6 +15,6 @@\n 15\n 16\n 17\n-18\n 19\n 20\n+21\n"),
        "{d}"
    );
    assert_eq!(unified_diff(&a, &a, "a", "b"), "--- a\n+++ b\n");
}

// ---------------------------------------------------------------------------------------
// The same scenarios across the ustack backend (issue 6). The scenarios talk over
// 127.0.0.1, which stays on the kernel under any backend; the runner's address mapping
// (DIFF_ADDR_*, tests/diff/runner.c) moves their TCP onto the TAP of a ringshim-stackd the
// test starts, one end of each connection in stackd and the other on the kernel:
//
// - ustack-server: listeners bind the wildcard (a listener of both stacks), clients
//   connect to stackd's 198.51.100.2 on the kernel (RINGSHIM_KERNEL_NETS keeps that one
//   address on the kernel for the client side), so every accepted socket is stackd's.
// - ustack-client: listeners bind the TAP's kernel address 198.51.100.1, clients connect
//   there through stackd, so every connecting socket is stackd's.
//
// The baseline (no shim) runs in a namespace whose kernel owns both addresses on `lo`,
// with the same mapping, and every mapped address prints as 127.0.0.1: the traces compare
// byte for byte. Where ustack cannot give the kernel's answer the scenario is listed in
// USTACK_DIFFERENCES with the reason (README "The ustack backend" has the same list), and
// it must still differ: a listed scenario that starts to match fails the test, so the
// list never goes stale.

#[path = "../crates/stackd/tests/common/mod.rs"]
#[allow(unused_imports)]
mod stackd;

struct UstackVariant {
    name: &'static str,
    /// The runner's DIFF_ADDR_* mapping (baseline and shimmed runs alike).
    mapping: &'static [(&'static str, &'static str)],
    /// Shim configuration beyond the backend and the control socket.
    shim_env: &'static [(&'static str, &'static str)],
    /// A line of the shim's debug log proving a socket of the run went through stackd.
    used_stackd: &'static str,
}

const USTACK_SERVER: UstackVariant = UstackVariant {
    name: "ustack-server",
    mapping: &[
        ("DIFF_ADDR_BIND", "0.0.0.0"),
        ("DIFF_ADDR_CONNECT", "198.51.100.2"),
        ("DIFF_ADDR_ALIASES", "0.0.0.0,198.51.100.1,198.51.100.2"),
    ],
    shim_env: &[("RINGSHIM_KERNEL_NETS", "loopback,198.51.100.2/32")],
    used_stackd: "through stackd",
};

const USTACK_CLIENT: UstackVariant = UstackVariant {
    name: "ustack-client",
    mapping: &[
        ("DIFF_ADDR_BIND", "198.51.100.1"),
        ("DIFF_ADDR_CONNECT", "198.51.100.1"),
        ("DIFF_ADDR_ALIASES", "198.51.100.1,198.51.100.2"),
    ],
    shim_env: &[],
    used_stackd: "(backend ustack)",
};

/// Scenarios with no IPv4 TCP to move: the mapping leaves them on the kernel, so running
/// them here would only repeat the loopback suite.
const USTACK_NOT_APPLICABLE: &[(&str, &str)] = &[
    ("ipv6_echo", "IPv6 (::1): stackd is IPv4 only"),
    ("socketpair_unix", "unix sockets"),
    ("udp_loopback", "UDP: stackd carries TCP only"),
];

const EFAULT_IN_USER_SPACE: &str = "EFAULT: the shim copies the bytes in user space, so a bad \
     buffer is a SIGSEGV (as in any user-space stack); the kernel checks the pointer";
const NO_URGENT_DATA_IN: &str =
    "urgent data: smoltcp ignores the urgent pointer, the urgent byte arrives inline and \
     POLLPRI never comes";
const NO_URGENT_DATA_OUT: &str = "urgent data: smoltcp cannot send it, MSG_OOB is EOPNOTSUPP";

/// (variant, scenario, why ustack's answer differs from the kernel's).
const USTACK_DIFFERENCES: &[(&str, &str, &str)] = &[
    ("ustack-server", "efault_buffers", EFAULT_IN_USER_SPACE),
    ("ustack-server", "oob_urgent_data", NO_URGENT_DATA_IN),
    ("ustack-client", "efault_buffers", EFAULT_IN_USER_SPACE),
    ("ustack-client", "oob_urgent_data", NO_URGENT_DATA_OUT),
];

fn check_ustack(variant: &UstackVariant) {
    if !require(
        is_root(),
        &format!(
            "differential {}: root (network namespaces, TAP)",
            variant.name
        ),
    ) {
        return;
    }
    let (st, baseline) = stackd::Stackd::start_with_kernel_twin();
    let control = st.control.to_str().expect("control path").to_string();
    let mut env: Vec<(&str, &str)> = vec![
        ("RINGSHIM_BACKEND", "ustack"),
        ("RINGSHIM_STACKD", &control),
        ("RINGSHIM_LOG", "debug"),
    ];
    env.extend_from_slice(variant.shim_env);
    let modes = [(variant.name, env.as_slice())];
    let place = Placement {
        baseline_netns: Some(&baseline.name),
        shim_netns: Some(&st.ns.name),
        env: variant.mapping,
    };
    // Debugging aids: DIFF_USTACK_SCENARIOS=a,b runs only those, DIFF_USTACK_REPEAT=N each
    // N times (a difference that comes and goes is a race to find, not noise).
    let only = std::env::var("DIFF_USTACK_SCENARIOS").ok();
    let repeat: usize = std::env::var("DIFF_USTACK_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let selected: Vec<&str> = LISTED
        .iter()
        .copied()
        .filter(|n| only.as_ref().is_none_or(|o| o.split(',').any(|x| x == *n)))
        .flat_map(|n| std::iter::repeat_n(n, repeat))
        .collect();
    let mut failures = Vec::new();
    let mut through_stackd = Vec::new();
    for name in &selected {
        if USTACK_NOT_APPLICABLE.iter().any(|(n, _)| n == name) {
            continue;
        }
        let scn = diff_dir().join("scenarios").join(format!("{name}.scn"));
        let known = USTACK_DIFFERENCES
            .iter()
            .find(|(v, n, _)| *v == variant.name && n == name);
        match (differences_at(&scn, &modes, &place), known) {
            (Err(e), _) => failures.push(e),
            (Ok(c), None) if !c.reports.is_empty() => {
                failures.push(format!("scenario {name}:\n{}", c.reports.join("\n")))
            }
            (Ok(c), Some((_, _, why))) if c.reports.is_empty() => failures.push(format!(
                "scenario {name} is listed in USTACK_DIFFERENCES ({why}) but now matches \
                 the kernel: remove it from the list (and from the README)"
            )),
            (Ok(c), _) => {
                if c.shim_stderr
                    .iter()
                    .any(|e| e.contains(variant.used_stackd))
                {
                    through_stackd.push(*name);
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{}: {} of {} scenarios failed\n\n{}\n\nstackd log (tail):\n{}",
        variant.name,
        failures.len(),
        LISTED.len() - USTACK_NOT_APPLICABLE.len(),
        failures.join("\n\n"),
        tail(&st.log_text(), 30)
    );
    // The mapping must really have moved the suite onto stackd, not left it on loopback.
    assert!(
        only.is_some() || through_stackd.len() >= 30,
        "{}: only {} scenarios used stackd: {through_stackd:?}",
        variant.name,
        through_stackd.len()
    );
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn scenarios_with_the_accepting_side_in_stackd() {
    check_ustack(&USTACK_SERVER);
}

#[test]
fn scenarios_with_the_connecting_side_in_stackd() {
    check_ustack(&USTACK_CLIENT);
}
