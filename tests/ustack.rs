//! The ustack backend under real programs: `RINGSHIM_BACKEND=ustack` routes an
//! unmodified program's non-loopback TCP through `ringshim-stackd` (smoltcp on a TAP
//! device), while loopback stays on the kernel.
//!
//! Topology (the stackd test harness, `crates/stackd/tests/common`): a namespace the test
//! creates, with stackd on 198.51.100.2 owning TAP `rsus0` and the kernel side of the TAP
//! on 198.51.100.1 (TEST-NET-2 only). The program under the shim runs in that namespace,
//! so its stackd sockets talk across the TAP to kernel sockets of the same namespace.
//!
//! Needs root (namespaces, TAP); skipped with a message otherwise, a failure under
//! `CI=true`. Every child is killed by PID when its guard drops.

mod common;
#[path = "../crates/stackd/tests/common/mod.rs"]
#[allow(unused_imports)]
mod stackd;

use common::*;
use stackd::Stackd;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

fn python() -> PathBuf {
    // The real interpreter, not a pyenv shim script (BRIEF: known traps).
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn script(name: &str) -> PathBuf {
    repo_root().join("tests/ustack").join(name)
}

/// `argv` inside the namespace under the shim with the ustack backend on `st`.
fn under_shim(st: &Stackd, argv: &[&Path], extra_env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &st.ns.name]).args(argv);
    cmd.env("LD_PRELOAD", shim_lib())
        .env("RINGSHIM_BACKEND", "ustack")
        .env("RINGSHIM_STACKD", &st.control)
        .env("RINGSHIM_LOG", "info");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd
}

/// A kernel TCP connection made from inside namespace `ns` (usable from any thread).
fn connect_in(ns: &str, addr: &str) -> TcpStream {
    let (ns, addr) = (format!("/run/netns/{ns}"), addr.to_string());
    std::thread::spawn(move || {
        let f = std::fs::File::open(&ns).expect("open netns");
        // SAFETY: setns on a namespace fd we opened; it changes only this thread.
        let r = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns");
        TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    })
    .join()
    .expect("connect thread")
}

fn ready(test: &str) -> bool {
    require(
        is_root(),
        &format!("{test}: root (network namespaces, TAP devices)"),
    )
}

/// One kernel client's checksummed echo exchange.
fn echo_exchange(mut s: TcpStream, rounds: usize, seed: usize) {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for k in 0..rounds {
        let len = 1 + (seed * 7919 + k * 104_729) % 30_000;
        let msg: Vec<u8> = (0..len).map(|i| (i * 31 + seed + k) as u8).collect();
        s.write_all(&msg).unwrap();
        let mut got = vec![0u8; len];
        s.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("client {seed} round {k}: {e}"));
        assert!(got == msg, "client {seed} round {k}: echo differs");
    }
}

#[test]
fn event_loop_server_serves_stackd_peers_and_loopback_peers_at_once() {
    if !ready("event_loop_server_serves_stackd_peers_and_loopback_peers_at_once") {
        return;
    }
    let st = Stackd::start(&[]);
    let py = python();
    let server = script("echo_server.py");
    let mut srv = LiveProcess::spawn(under_shim(&st, &[&py, &server, Path::new("7100")], &[]));
    srv.wait_line("listening", LIMIT);
    // 20 peers through stackd (kernel clients on the TAP's other side) and 4 over
    // loopback (the kernel listener of the same socket), all at once.
    let clients: Vec<std::thread::JoinHandle<()>> = (0..24)
        .map(|i| {
            let ns = st.ns.name.clone();
            std::thread::spawn(move || {
                let host = if i < 20 { "198.51.100.2" } else { "127.0.0.1" };
                let s = connect_in(&ns, &format!("{host}:7100"));
                echo_exchange(s, 40, i);
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client failed");
    }
    srv.wait_line("closed 24", LIMIT);
    let counters = shim_counters(srv.pid).expect("server counters");
    // The listener and the 20 stackd connections; the loopback ones stayed kernel.
    assert_eq!(
        counters["sockets_on_ustack"],
        21,
        "counters {counters:?}\n{}",
        srv.stderr()
    );
    assert!(counters["routed_kernel_net"] >= 4, "{counters:?}");
    assert!(counters["bytes_received"] > 20 * 40 * 1000, "{counters:?}");
    srv.close_stdin();
    assert!(
        srv.wait_exit(LIMIT).is_some_and(|s| s.success()),
        "{}",
        srv.stderr()
    );
    assert!(
        srv.stderr().contains("attached to ringshim-stackd"),
        "{}",
        srv.stderr()
    );
}

#[test]
fn threaded_blocking_clients_connect_out_through_stackd() {
    if !ready("threaded_blocking_clients_connect_out_through_stackd") {
        return;
    }
    let st = Stackd::start(&[]);
    // A kernel echo server on the TAP's kernel side (198.51.100.1).
    let listener: TcpListener = st
        .ns
        .run_in(|| TcpListener::bind("198.51.100.1:7200").expect("bind kernel server"));
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = vec![0u8; 65536];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    let py = python();
    let clients = script("clients.py");
    let r = run_limited(
        under_shim(
            &st,
            &[
                &py,
                &clients,
                Path::new("198.51.100.1"),
                Path::new("7200"),
                Path::new("7201"),
                Path::new("12"),
                Path::new("30"),
            ],
            &[],
        ),
        LIMIT,
    );
    assert!(r.ok() && r.stdout.contains("ok"), "{}", r.describe());
}

#[test]
fn redis_server_serves_redis_benchmark_through_stackd() {
    if !ready("redis_server_serves_redis_benchmark_through_stackd") {
        return;
    }
    let have = Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !require(have, "redis-server (scripts/install-deps.sh installs it)") {
        return;
    }
    let st = Stackd::start(&[]);
    let dir = TestDir::new("ustack-redis");
    let srv_cmd = {
        let mut c = under_shim(&st, &[Path::new("redis-server")], &[]);
        c.args([
            "--port",
            "6390",
            "--bind",
            "0.0.0.0",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--dir",
        ])
        .arg(&dir.0);
        c
    };
    let mut srv = LiveProcess::spawn(srv_cmd);
    let in_ns = |argv: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &st.ns.name]).args(argv);
        run_limited(c, LIMIT)
    };
    let mut up = false;
    for _ in 0..100 {
        if in_ns(&["redis-cli", "-h", "198.51.100.2", "-p", "6390", "ping"])
            .stdout
            .contains("PONG")
        {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(up, "redis did not answer through stackd\n{}", srv.stderr());
    let bench = in_ns(&[
        "redis-benchmark",
        "-h",
        "198.51.100.2",
        "-p",
        "6390",
        "-n",
        "20000",
        "-c",
        "10",
        "-t",
        "set,get",
        "-d",
        "1024",
        "-q",
    ]);
    assert!(
        bench.ok() && bench.stdout.contains("GET:") && bench.stdout.contains("SET:"),
        "{}",
        bench.describe()
    );
    // A 1 MiB value written through stackd reads back the same over loopback (kernel).
    let value: String = (0..1 << 20)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let file = dir.path("value");
    std::fs::write(&file, &value).unwrap();
    let set = in_ns(&[
        "sh",
        "-c",
        &format!(
            "redis-cli -h 198.51.100.2 -p 6390 -x set big < {}",
            file.display()
        ),
    ]);
    assert!(set.stdout.contains("OK"), "{}", set.describe());
    let get = in_ns(&["redis-cli", "-h", "127.0.0.1", "-p", "6390", "get", "big"]);
    assert_eq!(get.stdout.trim_end(), value, "1 MiB value differs");
    let info = in_ns(&[
        "redis-cli",
        "-h",
        "198.51.100.2",
        "-p",
        "6390",
        "info",
        "stats",
    ]);
    let processed: u64 = info
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("total_commands_processed");
    assert!(processed >= 40_000, "{}", info.stdout);
    let counters = shim_counters(srv.pid).expect("redis counters");
    assert!(counters["sockets_on_ustack"] >= 11, "{counters:?}");
    send_signal(srv.pid, libc::SIGTERM);
    assert!(srv.wait_exit(LIMIT).is_some(), "{}", srv.stderr());
}

#[test]
fn without_stackd_sockets_take_the_kernel_path() {
    // No root needed: loopback accelerated, stackd absent.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut s = s;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&buf).unwrap();
    });
    let mut cmd = Command::new(python());
    cmd.args([
        "-c",
        &format!(
            "import socket; c = socket.create_connection(('127.0.0.1', {port})); \
             c.sendall(b'hello'); assert c.recv(5) == b'hello'; print('ok')"
        ),
    ])
    .env("LD_PRELOAD", shim_lib())
    .env("RINGSHIM_BACKEND", "ustack")
    .env("RINGSHIM_KERNEL_NETS", "none")
    .env("RINGSHIM_STACKD", "/nonexistent/stackd.sock");
    let r = run_limited(cmd, LIMIT);
    server.join().unwrap();
    assert!(r.ok() && r.stdout.contains("ok"), "{}", r.describe());
    assert!(
        r.stderr.contains("ringshim-stackd unavailable") && r.stderr.contains("kernel path"),
        "the fallback must be logged once: {}",
        r.describe()
    );
}
