//! The ustack backend under real programs: `RINGSHIM_BACKEND=ustack` routes an
//! unmodified program's non-loopback TCP through `ringshim-stackd` (smoltcp on a TAP
//! device), while loopback stays on the kernel.
//!
//! Topologies (the stackd test harness, `crates/stackd/tests/common`; TEST-NET-2 only):
//! - TAP: a namespace the test creates, with stackd on 198.51.100.2 owning TAP `rsus0`
//!   and the kernel side of the TAP on 198.51.100.1. The program under the shim runs in
//!   that namespace, so its stackd sockets talk across the TAP to kernel sockets of the
//!   same namespace.
//! - AF_PACKET (the redis test): two namespaces joined by a veth pair; stackd owns the
//!   address-less end `rsvA` (198.51.100.2) in the first, where the program runs too (its
//!   kernel stack there has loopback only), and the peers are kernel sockets on
//!   198.51.100.1 in the second.
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
    cmd.args(["netns", "exec", app_ns(st)]).args(argv);
    cmd.env("LD_PRELOAD", shim_lib())
        .env("RINGSHIM_BACKEND", "ustack")
        .env("RINGSHIM_STACKD", &st.control)
        .env("RINGSHIM_LOG", "info");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd
}

/// Where the program under the shim runs: stackd's namespace (with a TAP it is also the
/// peers' namespace).
fn app_ns(st: &Stackd) -> &str {
    &st.stack_ns.as_ref().unwrap_or(&st.ns).name
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

/// A kernel echo server on the TAP's kernel side (`addr` on 198.51.100.1), a thread per
/// connection, for as long as the test runs.
fn kernel_echo_server(st: &Stackd, addr: &'static str) {
    let listener: TcpListener = st
        .ns
        .run_in(move || TcpListener::bind(addr).expect("bind kernel server"));
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
}

/// Regression: a reader that consumed bytes before it took their RX message off the ring
/// (recv() cleared the fifo's event flag, stackd added bytes and posted RX, the same recv
/// read them) slept with the flag still set; stackd saw it set and never announced the
/// next bytes. CPython's socket timeout then expired with the echo waiting in the fifo
/// (the final exchange of clients.py took 10 s in one run of four). The same on the tx
/// side in stackd (a TX taken after its bytes had gone). Here poll() waits forever, so
/// the lost announcement hangs (LIMIT) instead of passing late.
#[test]
fn reader_that_drained_before_taking_the_rx_notice_hears_the_next_bytes() {
    if !ready("reader_that_drained_before_taking_the_rx_notice_hears_the_next_bytes") {
        return;
    }
    let st = Stackd::start(&[]);
    kernel_echo_server(&st, "198.51.100.1:7202");
    let py = python();
    let reader = script("poll_reader.py");
    let r = run_limited(
        under_shim(
            &st,
            &[
                &py,
                &reader,
                Path::new("198.51.100.1"),
                Path::new("7202"),
                Path::new("600"),
            ],
            &[],
        ),
        LIMIT,
    );
    assert!(r.ok() && r.stdout.contains("ok"), "{}", r.describe());
}

#[test]
fn threaded_blocking_clients_connect_out_through_stackd() {
    if !ready("threaded_blocking_clients_connect_out_through_stackd") {
        return;
    }
    let st = Stackd::start(&[]);
    kernel_echo_server(&st, "198.51.100.1:7200");
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
    // Over AF_PACKET on a veth end, the peer's offloads left on (stackd completes the
    // checksums).
    let st = Stackd::start_packet(&[], false);
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
    let mut get = Command::new("ip");
    get.args(["netns", "exec", app_ns(&st)]).args([
        "redis-cli",
        "-h",
        "127.0.0.1",
        "-p",
        "6390",
        "get",
        "big",
    ]);
    let get = run_limited(get, LIMIT);
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

/// tests/ustack/late_accept.py under the shim on `port`, accepting `n` connections once
/// its stdin closes; `watch` registers the listener in an epoll set first.
fn start_late_accept(st: &Stackd, port: u16, n: u32, watch: bool) -> LiveProcess {
    let (py, server) = (python(), script("late_accept.py"));
    let (port, n) = (port.to_string(), n.to_string());
    let mut argv: Vec<&Path> = vec![&py, &server, Path::new(&port), Path::new(&n)];
    if watch {
        argv.push(Path::new("watch"));
    }
    let mut srv = LiveProcess::spawn(under_shim(st, &argv, &[]));
    srv.wait_line("listening", LIMIT);
    srv
}

/// Regression: an end (FIN or RST) that stackd reported while the connection still
/// waited in the accept queue was dropped, since no socket owned the session yet; the
/// server then never saw EOF and held the connection until its own timeout (nginx's
/// graceful quit hung 60 s after wrk's last connections closed unaccepted).
#[test]
fn eof_and_reset_before_accept_are_not_lost() {
    if !ready("eof_and_reset_before_accept_are_not_lost") {
        return;
    }
    let st = Stackd::start(&[]);
    let mut srv = start_late_accept(&st, 7300, 2, true);
    // Connection 0 sends and closes (FIN), connection 1 sends and resets (linger 0),
    // both before the server accepts either.
    let mut orderly = connect_in(&st.ns.name, "198.51.100.2:7300");
    orderly.write_all(b"request 0").unwrap();
    drop(orderly);
    // stackd has taken the FIN once the kernel side sits in FIN-WAIT-2.
    let mut acked = false;
    for _ in 0..200 {
        let mut ss = Command::new("ip");
        ss.args([
            "netns",
            "exec",
            &st.ns.name,
            "ss",
            "-tanH",
            "state",
            "fin-wait-2",
        ]);
        if run_limited(ss, LIMIT).stdout.contains("198.51.100.2:7300") {
            acked = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert!(
        acked,
        "stackd never acknowledged the FIN\n{}",
        st.log_text()
    );
    let reset = connect_in(&st.ns.name, "198.51.100.2:7300");
    (&reset).write_all(b"request 1").unwrap();
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own with a correctly sized linger value.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&reset),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "SO_LINGER");
    drop(reset);
    // The RST leaves no kernel state to watch; give stackd a moment to take it (a late
    // one only makes this half of the test pass without exercising the bug).
    std::thread::sleep(Duration::from_millis(300));
    srv.close_stdin();
    let first = srv.wait_line("conn 0:", LIMIT);
    let second = srv.wait_line("conn 1:", LIMIT);
    assert_eq!(first, "9 bytes then eof", "{}", srv.stderr());
    assert_eq!(second, "9 bytes then reset", "{}", srv.stderr());
    assert!(
        srv.wait_exit(LIMIT).is_some_and(|s| s.success()),
        "{}",
        srv.stderr()
    );
}

/// A listener that has only been listen()ed is a passive member of its port in stackd:
/// peers that connect before the first accept wait in stackd's backlog (the kernel's
/// behaviour) instead of being refused, and their data and FIN are all there at accept.
#[test]
fn connections_before_the_first_accept_wait_in_the_backlog() {
    if !ready("connections_before_the_first_accept_wait_in_the_backlog") {
        return;
    }
    let st = Stackd::start(&[]);
    let mut srv = start_late_accept(&st, 7301, 3, false);
    let mut held = Vec::new();
    for k in 0..3 {
        let mut c = connect_in(&st.ns.name, "198.51.100.2:7301");
        c.write_all(format!("request {k}").as_bytes()).unwrap();
        if k == 2 {
            held.push(c); // stays open: accept must still find it
        } // the others close here (FIN)
    }
    srv.close_stdin();
    assert_eq!(srv.wait_line("conn 0:", LIMIT), "9 bytes then eof");
    assert_eq!(srv.wait_line("conn 1:", LIMIT), "9 bytes then eof");
    // The third peer never closes: 10 s without an end, as on the kernel.
    assert_eq!(srv.wait_line("conn 2:", LIMIT), "9 bytes then nothing");
    assert!(
        srv.wait_exit(LIMIT).is_some_and(|s| s.success()),
        "{}",
        srv.stderr()
    );
}

#[test]
fn a_thousand_connections_checksummed_through_stackd() {
    if !ready("a_thousand_connections_checksummed_through_stackd") {
        return;
    }
    let st = Stackd::start(&[]);
    let prog = c_program_with("st_stress", "", &["-Wextra"]);
    // The server under the shim on the wildcard (both stacks), two threads with their own
    // epoll instances sharing the listener, edge-triggered.
    let mut server = LiveProcess::spawn({
        let mut c = under_shim(&st, &[&prog], &[("ST_SERVER_ADDR", "0.0.0.0")]);
        c.args(["server", "et", "shared", "2"]);
        c
    });
    let port = server.wait_line("PORT ", LIMIT);
    // A kernel client: 1,000 concurrent connections with random 1 B..256 KiB messages,
    // half-closes, resets and slow readers, every byte checksummed; then 2,000 short
    // connections.
    let mut client = Command::new("ip");
    client
        .args(["netns", "exec", &st.ns.name])
        .arg(&prog)
        .args(["client", &port, "1000", "2000", "11", "262144"])
        .env("ST_CLIENT_ADDR", "198.51.100.2");
    let r = run_limited(client, Duration::from_secs(120));
    assert!(
        r.ok() && r.stdout.contains("CLIENT ok"),
        "{}\n{}",
        r.describe(),
        server.stderr()
    );
    let counters = shim_counters(server.pid).expect("server counters");
    assert!(
        counters["sockets_on_ustack"] >= 3000,
        "every connection through stackd: {counters:?}"
    );
    send_signal(server.pid, libc::SIGTERM);
    assert!(
        server.wait_exit(LIMIT).is_some_and(|s| s.success()),
        "{}",
        server.stderr()
    );
    let summary = server.stdout();
    assert!(
        summary.contains("accepted=3000 closed=3000") && summary.contains("leftover=0"),
        "{summary}"
    );
}

/// Kills (by PID) every child of a process when dropped: nginx workers outlive a
/// master that is killed.
struct ChildrenKiller(u32);

impl Drop for ChildrenKiller {
    fn drop(&mut self) {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        for e in dir.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 2..].split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(self.0) {
                send_signal(pid, libc::SIGKILL);
            }
        }
    }
}

/// The nginx configuration of the tests: `workers` worker processes (which run as
/// nobody, so stackd must accept that group), a 1 KiB and a 1 MiB file, sendfile and
/// tcp_nopush on, listening on the wildcard (both stacks), each request's worker pid in
/// the access log.
fn nginx_conf(dir: &Path, workers: u32, port: u16) -> PathBuf {
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let one_k: Vec<u8> = (0..1024u32).map(|i| (i * 7) as u8).collect();
    let one_m: Vec<u8> = (0..1u32 << 20).map(|i| (i * 13 + i / 4099) as u8).collect();
    std::fs::write(www.join("1k.bin"), one_k).unwrap();
    std::fs::write(www.join("1m.bin"), one_m).unwrap();
    let d = dir.display();
    let conf = format!(
        "worker_processes {workers};\ndaemon off;\nerror_log {d}/error.log info;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ log_format p \"$pid\"; access_log {d}/access.log p;\n\
           sendfile on; tcp_nopush on;\n\
           client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;\n\
           uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
           server {{ listen {port}; root {d}/www; }} }}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    // The workers (nobody) read the files and write temp files.
    let _ = Command::new("chmod")
        .args(["-R", "a+rwX"])
        .arg(dir)
        .status();
    path
}

#[test]
fn nginx_workers_share_the_port_in_stackd_and_serve_curl_and_wrk() {
    if !ready("nginx_workers_share_the_port_in_stackd_and_serve_curl_and_wrk") {
        return;
    }
    let have = Command::new("nginx")
        .arg("-v")
        .output()
        .is_ok_and(|o| o.status.success());
    if !require(have, "nginx (scripts/install-deps.sh installs it)") {
        return;
    }
    // nginx's workers run as nobody: stackd accepts its group (nogroup, 65534).
    let st = Stackd::start(&["--allow-group", "65534"]);
    let dir = TestDir::new("ustack-nginx");
    let conf = nginx_conf(&dir.0, 2, 8180);
    let mut srv = LiveProcess::spawn(under_shim(
        &st,
        &[Path::new("nginx"), Path::new("-c"), &conf],
        &[],
    ));
    // Declared after the master: dropped first, so a failing test leaves no workers.
    let _workers = ChildrenKiller(srv.pid);
    let in_ns = |argv: &[&str]| {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &st.ns.name]).args(argv);
        run_limited(c, LIMIT)
    };
    let got = dir.path("got");
    let mut fetched = false;
    for _ in 0..100 {
        let r = in_ns(&[
            "curl",
            "-sS",
            "--fail",
            "--max-time",
            "10",
            "-o",
            got.to_str().unwrap(),
            "http://198.51.100.2:8180/1m.bin",
        ]);
        if r.ok() {
            fetched = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = || std::fs::read_to_string(dir.path("error.log")).unwrap_or_default();
    assert!(
        fetched,
        "curl through stackd failed\n{}\n{}",
        srv.stderr(),
        log()
    );
    assert!(
        std::fs::read(&got).unwrap() == std::fs::read(dir.path("www/1m.bin")).unwrap(),
        "1 MiB through stackd differs"
    );
    let wrk = in_ns(&[
        "wrk",
        "-t2",
        "-c16",
        "-d2s",
        "http://198.51.100.2:8180/1k.bin",
    ]);
    assert!(wrk.ok(), "{}", wrk.describe());
    assert!(
        !wrk.stdout.contains("Socket errors") && !wrk.stdout.contains("Non-2xx"),
        "{}",
        wrk.stdout
    );
    let lo = in_ns(&[
        "curl",
        "-sS",
        "--fail",
        "-o",
        "/dev/null",
        "http://127.0.0.1:8180/1k.bin",
    ]);
    assert!(lo.ok(), "loopback (kernel) side: {}", lo.describe());
    // 198.51.100.2 exists only in stackd, so the answers above came through it. Both
    // workers (forked after the master's listen(), each attached on its own) listen in
    // stackd on the one port, and stackd gives each a share of wrk's 16 connections.
    let attached = st.log_text().matches("\"nginx\"").count();
    assert!(
        attached >= 2,
        "{attached} nginx attached: {}",
        st.log_text()
    );
    let pids: std::collections::BTreeSet<String> = std::fs::read_to_string(dir.path("access.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(pids.len(), 2, "requests served by workers {pids:?}");
    send_signal(srv.pid, libc::SIGQUIT);
    assert!(
        srv.wait_exit(LIMIT).is_some(),
        "nginx did not quit\n{}",
        log()
    );
}

/// How many segments with data the kernel socket `s` has received (TCP_INFO).
fn data_segments_in(s: &TcpStream) -> u32 {
    // SAFETY: tcp_info is plain data; all-zero is valid.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: TCP_INFO fills at most `len` bytes of our tcp_info.
    let r = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(s),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    assert_eq!(r, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    assert!(
        len as usize >= std::mem::offset_of!(libc::tcp_info, tcpi_data_segs_in) + 4,
        "kernel without tcpi_data_segs_in"
    );
    info.tcpi_data_segs_in
}

/// Stops stackd with SIGTERM and returns its exit line of counters.
fn stackd_exit_counters(st: &mut Stackd) -> String {
    // SAFETY: signals our own child (stackd, exec'd by ip netns exec) by PID.
    unsafe { libc::kill(st.process.pid(), libc::SIGTERM) };
    let _ = st.process.0.wait();
    let log = st.log_text();
    log.lines()
        .find(|l| l.contains("stopped; counters"))
        .unwrap_or_else(|| panic!("no counters in stackd's log\n{log}"))
        .to_string()
}

fn stackd_counter(line: &str, name: &str) -> u64 {
    let at = line
        .find(&format!("{name}: "))
        .unwrap_or_else(|| panic!("no {name} in {line}"));
    line[at + name.len() + 2..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("bad {name} in {line}"))
}

/// Regression (nginx `sendfile on; tcp_nopush on;` at 0.04x the kernel, p99 ~ 42 ms):
/// stackd ignored TCP_CORK, sent the header of a corked response at once, and smoltcp's
/// Nagle held the body until the peer's delayed ACK, 40 ms per response. Now a cork
/// holds the partial segment in the tx fifo, and the uncork (or the send without
/// MSG_MORE) pushes it: header and body leave together, as the kernel sends them. The
/// kernel peer counts the data segments it receives (TCP_INFO), so nothing is timed:
/// every response, also those with a pause between header and body, must arrive in one.
/// A cork never released still sends its bytes (the 200 ms ceiling).
#[test]
fn corked_response_leaves_stackd_in_one_segment_not_after_a_delayed_ack() {
    if !ready("corked_response_leaves_stackd_in_one_segment_not_after_a_delayed_ack") {
        return;
    }
    let mut st = Stackd::start(&[]);
    let py = python();
    let server = script("cork_server.py");
    let mut srv = LiveProcess::spawn(under_shim(&st, &[&py, &server, Path::new("7400")], &[]));
    srv.wait_line("listening", LIMIT);
    let mut peer = connect_in(&st.ns.name, "198.51.100.2:7400");
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let header: Vec<u8> = [&[b'h'; 179][..], b"\n"].concat();
    let body: Vec<u8> = (0..1024u32).map(|k| b'a' + (k % 26) as u8).collect();
    let want = [header, body].concat();
    const ROUNDS: u32 = 20;
    let mut split = Vec::new();
    for mode in ["cork", "more"] {
        for n in 0..ROUNDS {
            let before = data_segments_in(&peer);
            peer.write_all(format!("{mode} {n}").as_bytes()).unwrap();
            let mut got = vec![0u8; want.len()];
            peer.read_exact(&mut got)
                .unwrap_or_else(|e| panic!("{mode} {n}: {e}\n{}", srv.stderr()));
            assert!(got == want, "{mode} {n}: response differs");
            let segments = data_segments_in(&peer) - before;
            if segments != 1 {
                split.push(format!("{mode} {n}: {segments} segments"));
            }
        }
    }
    assert!(
        split.is_empty(),
        "corked responses arrived split: {split:?}\n{}",
        srv.stderr()
    );
    // Corked and never uncorked: the bytes still come (stackd's cork ceiling).
    peer.write_all(b"hold").unwrap();
    let mut held = [0u8; 100];
    peer.read_exact(&mut held)
        .unwrap_or_else(|e| panic!("corked bytes never sent: {e}\n{}", srv.stderr()));
    assert_eq!(held, [b'w'; 100]);
    drop(peer);
    assert_eq!(srv.wait_line("served", LIMIT), (2 * ROUNDS).to_string());
    assert!(
        srv.wait_exit(LIMIT).is_some_and(|s| s.success()),
        "{}",
        srv.stderr()
    );
    // The mechanism, as stackd counted it: every response was pushed, the hold ended at
    // the ceiling.
    let counters = stackd_exit_counters(&mut st);
    assert!(
        stackd_counter(&counters, "cork_pushes") >= u64::from(2 * ROUNDS),
        "{counters}"
    );
    assert!(
        stackd_counter(&counters, "cork_ceiling_flushes") >= 1,
        "{counters}"
    );
}

#[test]
fn killing_stackd_mid_transfer_resets_its_connections_and_new_sockets_use_the_kernel() {
    if !ready("killing_stackd_mid_transfer_resets_its_connections_and_new_sockets_use_the_kernel") {
        return;
    }
    let mut st = Stackd::start(&[]);
    let listener: TcpListener = st
        .ns
        .run_in(|| TcpListener::bind("198.51.100.1:7300").expect("bind kernel sink"));
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = listener.accept() {
            let mut buf = vec![0u8; 65536];
            while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
        }
    });
    let py = python();
    let stream = script("stream.py");
    let mut app = LiveProcess::spawn(under_shim(
        &st,
        &[&py, &stream, Path::new("198.51.100.1"), Path::new("7300")],
        &[],
    ));
    app.wait_line("connected", LIMIT);
    std::thread::sleep(Duration::from_millis(300));
    st.process.kill9();
    // The blocked sender learns of it at once (the control connection's EOF), the bytes
    // it wrote are reported lost, and the next socket goes to the kernel: it reaches the
    // sink through the kernel while the TAP's address is still there, or gets
    // ENETUNREACH once the TAP is gone with stackd; never a hang.
    let err = app.wait_line("error", Duration::from_secs(10));
    assert!(
        err.starts_with("ConnectionResetError 104") || err.starts_with("BrokenPipeError 32"),
        "{err}\n{}",
        app.stderr()
    );
    let second = app.wait_line("second connect", Duration::from_secs(10));
    assert!(
        second == "ok" || second.contains("101"),
        "second connect: {second}"
    );
    assert!(
        app.wait_exit(LIMIT).is_some_and(|s| s.success()),
        "{}",
        app.stderr()
    );
    assert!(
        app.stderr().contains("ringshim-stackd is gone"),
        "{}",
        app.stderr()
    );
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

#[test]
fn killing_the_app_mid_transfer_resets_its_peers_and_frees_its_segment_and_port() {
    if !ready("killing_the_app_mid_transfer_resets_its_peers_and_frees_its_segment_and_port") {
        return;
    }
    let st = Stackd::start(&[]);
    let py = python();
    let server = script("echo_server.py");
    let mut app = LiveProcess::spawn(under_shim(&st, &[&py, &server, Path::new("7400")], &[]));
    app.wait_line("listening", LIMIT);
    assert_eq!(st.mapped_segments(), 1, "the app's segment is mapped");
    // Eight kernel peers echo through stackd without pause; each reports after its
    // first exchanges, then keeps going until the connection ends.
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let peers: Vec<std::thread::JoinHandle<std::io::Error>> = (0..8)
        .map(|i| {
            let (ns, started) = (st.ns.name.clone(), started_tx.clone());
            std::thread::spawn(move || {
                let mut s = connect_in(&ns, "198.51.100.2:7400");
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let msg = vec![i as u8; 16_384];
                let mut got = vec![0u8; msg.len()];
                for round in 0.. {
                    if let Err(e) = s.write_all(&msg).and_then(|()| s.read_exact(&mut got)) {
                        return e;
                    }
                    assert!(got == msg, "peer {i}: echo differs");
                    if round == 3 {
                        started.send(()).unwrap();
                    }
                }
                unreachable!()
            })
        })
        .collect();
    for _ in 0..8 {
        started_rx.recv_timeout(LIMIT).expect("peers exchanging");
    }
    send_signal(app.pid, libc::SIGKILL);
    // Every peer learns of it as a reset or an end (never its 10 s read timeout): stackd
    // sees the control connection close and resets the app's connections.
    for p in peers {
        let e = p.join().expect("peer thread");
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::BrokenPipe
            ),
            "peer ended with {e:?} (a timeout means it was left hanging)\n{}",
            st.log_text()
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while st.mapped_segments() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        st.mapped_segments(),
        0,
        "the dead app's segment is still mapped\n{}",
        st.log_text()
    );
    assert!(
        st.log_text().contains("8 connection(s) reset"),
        "{}",
        st.log_text()
    );
    // The port is free for the next process.
    let mut again = LiveProcess::spawn(under_shim(&st, &[&py, &server, Path::new("7400")], &[]));
    again.wait_line("listening", LIMIT);
    echo_exchange(connect_in(&st.ns.name, "198.51.100.2:7400"), 3, 99);
    again.close_stdin();
    assert!(again.wait_exit(LIMIT).is_some_and(|s| s.success()));
}

#[test]
fn ringshim_stat_shows_stackd_counters_to_its_peers_only() {
    if !ready("ringshim_stat_shows_stackd_counters_to_its_peers_only") {
        return;
    }
    let st = Stackd::start(&[]);
    let py = python();
    let server = script("echo_server.py");
    let mut app = LiveProcess::spawn(under_shim(&st, &[&py, &server, Path::new("7500")], &[]));
    app.wait_line("listening", LIMIT);
    let held: Vec<TcpStream> = (0..3)
        .map(|i| {
            let mut s = connect_in(&st.ns.name, "198.51.100.2:7500");
            s.write_all(&[i; 100]).unwrap();
            let mut got = [0u8; 100];
            s.read_exact(&mut got).unwrap();
            s
        })
        .collect();
    let control = st.control.to_str().unwrap();
    let out = Command::new(ringshim_cli())
        .args(["stat", "--stackd", control, "--json"])
        .output()
        .expect("run ringshim stat --stackd");
    let json = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{json}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value = |name: &str| -> u64 {
        let key = format!("\"{name}\":");
        let at = json
            .find(&key)
            .unwrap_or_else(|| panic!("{name} missing: {json}"))
            + key.len();
        json[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("{name}: {json}"))
    };
    assert_eq!(value("apps_now"), 1, "{json}");
    assert_eq!(value("sessions_now"), 3, "{json}");
    assert!(value("listeners_now") >= 1, "{json}");
    assert!(value("sessions_accepted") >= 3, "{json}");
    assert!(value("rx_frames") > 0 && value("tx_frames") > 0, "{json}");
    // The text form, and no trace of the stats connection in stackd's log.
    let text = Command::new(ringshim_cli())
        .args(["stat", "--stackd", control])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    assert!(
        text.contains("sessions_now") && text.contains("since start:"),
        "{text}"
    );
    assert_eq!(
        st.log_text().matches("detached").count(),
        0,
        "{}",
        st.log_text()
    );
    // Another uid is refused, with the reason.
    let refused = {
        use std::os::unix::process::CommandExt;
        Command::new(ringshim_cli())
            .args(["stat", "--stackd", control])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    };
    let err = String::from_utf8_lossy(&refused.stderr).to_string();
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(err.to_lowercase().contains("permission denied"), "{err}");
    drop(held);
    app.close_stdin();
    assert!(app.wait_exit(LIMIT).is_some_and(|s| s.success()));
}

/// large_send_epoll's cause, on the blocking path (no scenario covers it: the runner has
/// one thread, and a blocked send needs a reader running meanwhile): a send that writes
/// part of its bytes and leaves the tx fifo full must ask stackd for TX_SPACE, or the
/// blocked sender sleeps forever once the reader is slower than the link (it used to
/// ask only when a call enqueued nothing; 8 MiB stalled after ~64 KiB every time).
#[test]
fn large_send_blocking_into_a_full_tx_fifo_waits_for_tx_space() {
    if !ready("large_send_blocking_into_a_full_tx_fifo_waits_for_tx_space") {
        return;
    }
    const N: usize = 8 << 20;
    let st = Stackd::start(&[]);
    let listener: TcpListener = st
        .ns
        .run_in(|| TcpListener::bind("198.51.100.1:7310").expect("bind kernel sink"));
    // A slow reader: the window closes, so the fifo stays full while the sender blocks.
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = vec![0u8; 16384];
        let mut got = 0usize;
        while got < N {
            let n = match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if buf[..n]
                .iter()
                .enumerate()
                .any(|(k, &b)| b != ((got + k) % 251) as u8)
            {
                return Err(format!("corrupt near byte {got}"));
            }
            got += n;
            std::thread::sleep(Duration::from_micros(500));
        }
        Ok(got)
    });
    let code = format!(
        "import socket\n\
         c = socket.create_connection(('198.51.100.1', 7310))\n\
         c.sendall((bytes(range(251)) * ({N} // 251 + 1))[:{N}])\n\
         print('sent', flush=True)\n\
         c.recv(1)\n"
    );
    let py = python();
    let mut app = LiveProcess::spawn(under_shim(
        &st,
        &[&py, Path::new("-c"), Path::new(&code)],
        &[],
    ));
    app.wait_line("sent", LIMIT);
    let got = reader.join().expect("reader");
    assert_eq!(got, Ok(N), "{}", app.stderr());
    assert!(
        app.wait_exit(LIMIT).is_some_and(|s| s.success()),
        "{}",
        app.stderr()
    );
}
