//! RINGSHIM_BALANCE=exact: a multi-threaded server with one SO_REUSEPORT listener per
//! worker thread (tests/progs/bl_reuseport.c). Without the shim the kernel's hash
//! spreads connections as it likes; with exact balancing every worker gets the same
//! share, and workers emptied by closes get the next connections. The same for a
//! multi-process server: nginx's master creates the reuseport listeners, its forked
//! workers accept on them.

mod common;

use std::process::Command;

#[test]
fn exact_balance_spreads_evenly_and_refills_emptied_workers() {
    let exe = common::c_program("bl_reuseport");
    let limit = std::time::Duration::from_secs(60);
    let plain = common::run_limited(Command::new(&exe), limit);
    assert!(
        plain.ok(),
        "bl_reuseport fails without the shim: {}",
        plain.describe()
    );
    println!("kernel hash:\n{}", plain.stdout);
    // Loading the reuseport program needs CAP_BPF; CI runs as root.
    if !common::require(
        common::is_root(),
        "root (CAP_BPF for the reuseport program)",
    ) {
        return;
    }
    for nets in ["loopback", "none"] {
        let shimmed = common::run_limited(
            common::shimmed(
                &exe,
                &[
                    ("RINGSHIM_BALANCE", "exact"),
                    ("RINGSHIM_KERNEL_NETS", nets),
                    ("BALANCE_EXPECT_EXACT", "1"),
                ],
            ),
            limit,
        );
        assert!(
            shimmed.ok() && !shimmed.stderr.contains("unavailable"),
            "exact balance (RINGSHIM_KERNEL_NETS={nets}) failed: {}",
            shimmed.describe()
        );
        println!("exact (RINGSHIM_KERNEL_NETS={nets}):\n{}", shimmed.stdout);
    }
}

/// Without RINGSHIM_BALANCE the shim leaves reuseport alone: the program must see
/// whatever the kernel's hash does, not fail.
#[test]
fn balance_off_keeps_the_kernel_hash() {
    let exe = common::c_program("bl_reuseport");
    let r = common::run_limited(
        common::shimmed(&exe, &[]),
        std::time::Duration::from_secs(60),
    );
    assert!(r.ok(), "{}", r.describe());
}

/// nginx started in the foreground (`daemon off`, master and 2 workers) for the test's
/// duration; dropping it stops the master (which stops its workers), then kills by PID
/// whatever worker is left.
struct Nginx {
    master: common::LiveProcess,
    workers: Vec<u32>,
}

impl Nginx {
    /// `listen 127.0.0.1:PORT reuseport`: the master creates one listener per worker
    /// before it forks them. Each request is answered with the worker's pid, from the
    /// configuration (no file is read: the workers run as nobody).
    fn start(dir: &common::TestDir, shim: Option<&[(&str, &str)]>) -> (Nginx, u16) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.0.display();
        std::fs::create_dir_all(dir.path("tmp")).unwrap();
        let conf = dir.path("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "worker_processes 2;\ndaemon off;\nmaster_process on;\npid {d}/nginx.pid;\n\
                 error_log {d}/error.log warn;\nevents {{ worker_connections 256; }}\n\
                 http {{\n  access_log off;\n\
                 client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n\
                 fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n\
                 scgi_temp_path {d}/tmp/scgi;\n  keepalive_timeout 60s;\n\
                 server {{ listen 127.0.0.1:{port} reuseport; location / {{ return 200 \"$pid\\n\"; }} }}\n}}\n"
            ),
        )
        .unwrap();
        let nginx = std::path::Path::new("nginx");
        let mut cmd = match shim {
            Some(env) => common::shimmed(nginx, env),
            None => Command::new(nginx),
        };
        cmd.arg("-p").arg(&dir.0).arg("-c").arg(&conf);
        cmd.arg("-e").arg(dir.path("error.log"));
        let master = common::LiveProcess::spawn(cmd);
        // The listeners exist before the workers are forked, so two workers mean the
        // server is ready; probing the port instead would open a connection of its own.
        let t0 = std::time::Instant::now();
        let workers = loop {
            let children =
                std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", master.pid))
                    .unwrap_or_default();
            let w: Vec<u32> = children
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            if w.len() == 2 {
                break w;
            }
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(10),
                "nginx has {} workers after 10 s: {}{}",
                w.len(),
                master.stderr(),
                std::fs::read_to_string(dir.path("error.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        (Nginx { master, workers }, port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        common::send_signal(self.master.pid, libc::SIGTERM);
        let _ = self.master.wait_exit(std::time::Duration::from_secs(5));
        for &w in &self.workers {
            // Still a worker of ours only while its parent is our (unreaped) master,
            // or adopted by init after it: it was forked by our nginx, not reused, as
            // long as its parent is the master or 1.
            let stat = std::fs::read_to_string(format!("/proc/{w}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(1));
            if ppid == Some(&self.master.pid.to_string()) || ppid == Some("1") {
                common::send_signal(w, libc::SIGKILL);
            }
        }
    }
}

/// Opens `n` connections one after another, each answered before the next opens, and
/// keeps them all open; returns them (closed when dropped) and, in order, the pid of
/// the worker that answered each.
fn hold_connections(port: u16, n: usize) -> (Vec<std::net::TcpStream>, Vec<u32>) {
    use std::io::{Read, Write};
    (0..n)
        .map(|i| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            let body = loop {
                let text = String::from_utf8_lossy(&got).into_owned();
                if let Some((_, body)) = text.split_once("\r\n\r\n") {
                    if body.ends_with('\n') {
                        assert!(text.starts_with("HTTP/1.1 200"), "connection {i}: {text}");
                        break body.trim().to_string();
                    }
                }
                let k = s.read(&mut buf).unwrap();
                assert!(k > 0, "connection {i}: EOF after {text:?}");
                got.extend_from_slice(&buf[..k]);
            };
            let pid: u32 = body
                .parse()
                .unwrap_or_else(|_| panic!("connection {i}: body {body:?}"));
            (s, pid)
        })
        .unzip()
}

/// Connections per worker, in the order of `workers`.
fn per_worker(served: &[u32], workers: &[u32]) -> Vec<usize> {
    workers
        .iter()
        .map(|w| served.iter().filter(|p| *p == w).count())
        .collect()
}

/// nginx with 2 workers and `listen ... reuseport` (multi-process: the master creates
/// the listeners, the forked workers inherit the steering): 20 connections held open one
/// after another land 10/10 under RINGSHIM_BALANCE=exact, alternating (each new one goes
/// to the worker with fewer open connections, ties to the first listener: by chance
/// that order has probability 2^-19). The kernel's hash of the same client's
/// connections is printed for contrast, not asserted.
#[test]
fn exact_balance_spreads_nginx_reuseport_workers_evenly() {
    if !common::require(Command::new("nginx").arg("-v").output().is_ok(), "nginx") {
        return;
    }
    let dir = common::TestDir::new("balance-nginx-hash");
    let (nginx, port) = Nginx::start(&dir, None);
    let (held, served) = hold_connections(port, 20);
    let hash = per_worker(&served, &nginx.workers);
    drop(held);
    drop(nginx);
    println!("kernel hash, 20 held connections per worker: {hash:?}");

    // The master needs CAP_BPF to load the reuseport program; CI runs as root.
    if !common::require(
        common::is_root(),
        "root (CAP_BPF for the reuseport program)",
    ) {
        return;
    }
    let dir = common::TestDir::new("balance-nginx-exact");
    let (nginx, port) = Nginx::start(&dir, Some(&[("RINGSHIM_BALANCE", "exact")]));
    let (held, served) = hold_connections(port, 20);
    let exact = per_worker(&served, &nginx.workers);
    let stderr = nginx.master.stderr();
    drop(held);
    drop(nginx);
    println!("exact, 20 held connections per worker: {exact:?}");
    assert!(
        !stderr.contains("unavailable"),
        "RINGSHIM_BALANCE=exact could not be set up: {stderr}"
    );
    assert_eq!(
        exact,
        vec![10, 10],
        "exact: 20 held connections per worker, expected 10/10 (kernel hash in this run: {hash:?}); {stderr}"
    );
    assert!(
        served.windows(2).all(|w| w[0] != w[1]),
        "exact: the workers that answered, in order, do not alternate: {served:?}"
    );
}
