//! Idle means asleep (BRIEF invariant 4): a server holding accelerated connections with
//! no traffic must make no wake-ups beyond its own timers — no spinning, no polling.
//!
//! The server (tests/progs/st_idle.c) is one thread in one epoll_wait. Both tests run
//! the shimmed server (`RINGSHIM_BACKEND=uring RINGSHIM_KERNEL_NETS=none`, its 100
//! connections on io_uring, checked with `ringshim stat`) side by side with the same
//! program without the shim, measured over the same 10 s window from /proc: CPU time
//! (utime+stime, all threads) and voluntary+involuntary context switches of every thread.
//! These budgets are the point of the tests, so they are timing assertions on purpose;
//! they are measured over the whole window and leave room for scheduler noise.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const CONNS: usize = 100;
const WINDOW: Duration = Duration::from_secs(10);
/// Context switches tolerated in a window where nothing should wake the process.
const HANDFUL: u64 = 5;
/// CPU budget while idle, as a fraction of wall time.
const CPU_BUDGET: f64 = 0.01;
const TICK_MS: u64 = 100;

const URING: &[(&str, &str)] = &[
    ("RINGSHIM_BACKEND", "uring"),
    ("RINGSHIM_KERNEL_NETS", "none"),
];

fn idle_program() -> PathBuf {
    c_program_with("st_idle", "", &["-Wextra"])
}

/// An st_idle process with its 100 connections set up (each echoed one byte).
struct Idle {
    name: &'static str,
    proc: LiveProcess,
    conns: Vec<TcpStream>,
    repro: String,
}

fn start(name: &'static str, args: &[&str], env: Option<&[(&str, &str)]>) -> Idle {
    let prog = idle_program();
    let mut cmd = shim_command(&prog, env);
    cmd.args(args);
    let mut proc = LiveProcess::spawn(cmd);
    let port: u16 = proc
        .wait_line("PORT ", Duration::from_secs(20))
        .parse()
        .expect("port number");
    let mut conns = Vec::with_capacity(CONNS);
    for _ in 0..CONNS {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to st_idle");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        conns.push(s);
    }
    for s in &mut conns {
        s.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).expect("echo of the set-up byte");
        assert_eq!(&b, b"x");
    }
    proc.wait_line("READY", Duration::from_secs(20));
    Idle {
        name,
        proc,
        conns,
        repro: repro_line(&prog, args, env),
    }
}

/// Closes the connections; the program then exits 0 and prints its summary line.
fn finish(mut idle: Idle) -> String {
    idle.conns.clear();
    match idle.proc.wait_exit(Duration::from_secs(20)) {
        Some(s) if s.success() => idle.proc.stdout(),
        other => panic!(
            "[{}] did not exit cleanly after its peers closed ({other:?})\n--- stderr\n{}\n  repro: {}",
            idle.name,
            idle.proc.stderr(),
            idle.repro
        ),
    }
}

/// Proves the shimmed server's connections are really on io_uring.
fn assert_accelerated(idle: &Idle) {
    let c = shim_counters(idle.proc.pid).unwrap_or_else(|e| panic!("[{}] {e}", idle.name));
    let on_uring = c.get("sockets_on_uring").copied().unwrap_or(0);
    println!(
        "[{}] ringshim stat: sockets_on_uring={on_uring} recv_completions={} rings_created={}",
        idle.name,
        c.get("recv_completions").copied().unwrap_or(0),
        c.get("rings_created").copied().unwrap_or(0)
    );
    assert!(
        on_uring >= CONNS as u64,
        "[{}] only {on_uring} of {CONNS} connections on io_uring",
        idle.name
    );
}

/// CPU seconds and context switches of `pid` between two samples.
struct Usage {
    cpu_secs: f64,
    switches: u64,
    per_thread: Vec<String>,
}

fn usage(before: &ProcSample, after: &ProcSample) -> Usage {
    let hz = clock_ticks_per_sec() as f64;
    let per_thread = after
        .threads
        .iter()
        .map(|&(tid, v, i)| {
            let (v0, i0) = before
                .threads
                .iter()
                .find(|t| t.0 == tid)
                .map(|t| (t.1, t.2))
                .unwrap_or((0, 0));
            format!("tid {tid}: +{} voluntary, +{} involuntary", v - v0, i - i0)
        })
        .collect();
    Usage {
        cpu_secs: after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64 / hz,
        switches: after.ctxt_switches().saturating_sub(before.ctxt_switches()),
        per_thread,
    }
}

/// Samples every process at the start and end of one window; returns the usages and
/// the window's real length.
fn measure(procs: &[&Idle]) -> (Vec<Usage>, f64) {
    // The set-up traffic is over; give its last completions a moment to land before
    // the window opens (the window itself then has nothing to do).
    std::thread::sleep(Duration::from_millis(300));
    let before: Vec<ProcSample> = procs.iter().map(|p| sample_process(p.proc.pid)).collect();
    let t0 = Instant::now();
    std::thread::sleep(WINDOW);
    let after: Vec<ProcSample> = procs.iter().map(|p| sample_process(p.proc.pid)).collect();
    let secs = t0.elapsed().as_secs_f64();
    (
        before
            .iter()
            .zip(&after)
            .map(|(b, a)| usage(b, a))
            .collect(),
        secs,
    )
}

/// 100 idle accelerated connections for 10 s: under 1% CPU, and asleep in one wait
/// (a handful of context switches at most, over all threads).
#[test]
fn idle_server_with_100_connections_sleeps() {
    let shimmed = require(io_uring_available(), "io_uring");
    let args = ["server", "100"];
    let mut procs = vec![start("no shim", &args, None)];
    if shimmed {
        procs.push(start("shim uring", &args, Some(URING)));
        assert_accelerated(&procs[1]);
    }
    let (usages, secs) = measure(&procs.iter().collect::<Vec<_>>());
    let mut failures = Vec::new();
    for (p, u) in procs.iter().zip(&usages) {
        let pct = 100.0 * u.cpu_secs / secs;
        println!(
            "[{}] idle {secs:.2} s: CPU {:.3} s ({pct:.3}% of wall), {} context switches ({})",
            p.name,
            u.cpu_secs,
            u.switches,
            u.per_thread.join("; ")
        );
        if u.cpu_secs > CPU_BUDGET * secs {
            failures.push(format!(
                "[{}] used {:.3} s of CPU in {secs:.2} s idle ({pct:.2}%, budget {}%)\n  repro: {}",
                p.name,
                u.cpu_secs,
                CPU_BUDGET * 100.0,
                p.repro
            ));
        }
        if u.switches > HANDFUL {
            failures.push(format!(
                "[{}] {} context switches in {secs:.2} s idle (at most {HANDFUL}): something wakes it ({})\n  repro: {}",
                p.name,
                u.switches,
                u.per_thread.join("; "),
                p.repro
            ));
        }
    }
    for p in procs {
        let name = p.name;
        let out = finish(p);
        println!("[{name}] {}", out.lines().last().unwrap_or(""));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// An event loop with a 100 ms timer (epoll_wait with a 100 ms timeout, in a loop) over
/// 100 idle accelerated connections wakes about 10 times a second — never more, and the
/// timeout is honoured (not stretched into a long sleep).
#[test]
fn idle_epoll_wait_timeout_wakes_ten_times_per_second() {
    let shimmed = require(io_uring_available(), "io_uring");
    let tick = TICK_MS.to_string();
    let args = ["tick", "100", &tick];
    let mut procs = vec![start("no shim", &args, None)];
    if shimmed {
        procs.push(start("shim uring", &args, Some(URING)));
        assert_accelerated(&procs[1]);
    }
    let (usages, secs) = measure(&procs.iter().collect::<Vec<_>>());
    // A 100 ms timeout cannot expire more often than this; every extra wake-up is the
    // shim's (or a stray event's) doing.
    let most = (secs * 1000.0 / TICK_MS as f64).floor() as u64 + 1 + HANDFUL;
    // Well below the nominal 100: only a timeout that is not honoured falls under it.
    let least = (secs * 1000.0 / TICK_MS as f64 / 2.0) as u64;
    let mut failures = Vec::new();
    for (p, u) in procs.iter().zip(&usages) {
        let rate = u.switches as f64 / secs;
        println!(
            "[{}] {secs:.2} s with a {TICK_MS} ms timeout: {} wake-ups ({rate:.1}/s), CPU {:.3} s ({})",
            p.name,
            u.switches,
            u.cpu_secs,
            u.per_thread.join("; ")
        );
        if u.switches > most || u.switches < least {
            failures.push(format!(
                "[{}] {} context switches in {secs:.2} s ({rate:.1}/s); expected {least}..={most} (about {}/s)\n  repro: {}",
                p.name,
                u.switches,
                1000 / TICK_MS,
                p.repro
            ));
        }
        if u.cpu_secs > CPU_BUDGET * secs {
            failures.push(format!(
                "[{}] used {:.3} s of CPU in {secs:.2} s of timer-only wake-ups\n  repro: {}",
                p.name, u.cpu_secs, p.repro
            ));
        }
    }
    for p in procs {
        let name = p.name;
        let out = finish(p);
        let line = out
            .lines()
            .find(|l| l.starts_with("TICKS"))
            .unwrap_or("")
            .to_string();
        println!("[{name}] {line}");
        // The program's own count: epoll_wait returned 0 (timed out) about every 100 ms.
        let timeouts: u64 = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("timeouts="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let run: f64 = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("secs="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let max_timeouts = (run * 1000.0 / TICK_MS as f64).floor() as u64 + 1;
        if timeouts > max_timeouts || (timeouts as f64) < run * 1000.0 / TICK_MS as f64 / 2.0 {
            failures.push(format!(
                "[{name}] epoll_wait timed out {timeouts} times in {run:.2} s with a {TICK_MS} ms timeout"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
