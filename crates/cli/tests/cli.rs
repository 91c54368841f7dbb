//! Black-box tests of the `ringshim` binary: spawn it the way an operator would and check
//! exit status, stdout and stderr. Stats pages are synthesised from the layout constants
//! of `ringshim_common::stats`, so these tests need no running shim.

use ringshim_common::stats::{self, Counter, Header, Page, Slot, MAGIC, SLOTS, VERSION};
use std::mem::{offset_of, size_of};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ringshim() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringshim"));
    // A clean environment, so RINGSHIM_* variables of whoever runs the tests do not leak in.
    cmd.env_clear().env("PATH", "/usr/bin:/bin");
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("spawn ringshim");
    (
        status.code().expect("exited normally"),
        text(&stdout),
        text(&stderr),
    )
}

/// A private temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("ringshim-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------- run

/// An existing file to stand in for the library; ld.so complains about it on stderr and
/// carries on, which is all these tests need.
fn dummy_library(dir: &TempDir) -> PathBuf {
    let lib = dir.0.join("libringshim.so");
    std::fs::write(&lib, b"not an ELF file").unwrap();
    lib
}

#[test]
fn run_with_bad_backend_exits_2_naming_variable_value_and_accepted_values() {
    let dir = TempDir::new("badbackend");
    let (code, stdout, stderr) = run(ringshim()
        .env("RINGSHIM_LIBRARY", dummy_library(&dir))
        .env("RINGSHIM_BACKEND", "dpdk")
        .args(["run", "/bin/echo", "started"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        !stdout.contains("started"),
        "the command must not run: {stdout}"
    );
    let line = stderr.lines().next().unwrap();
    assert!(line.contains("RINGSHIM_BACKEND"), "{stderr}");
    assert!(line.contains("dpdk"), "{stderr}");
    assert!(line.contains("uring, ustack, kernel"), "{stderr}");
}

#[test]
fn run_reports_every_bad_variable() {
    let (code, _, stderr) = run(ringshim()
        .env("RINGSHIM_SQ_ENTRIES", "300")
        .env("RINGSHIM_BALANCE", "random")
        .args(["run", "true"]));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("RINGSHIM_SQ_ENTRIES") && stderr.contains("RINGSHIM_BALANCE"),
        "{stderr}"
    );
}

#[test]
fn run_with_unknown_profile_or_backend_flag_or_no_command_exits_2() {
    let (code, _, stderr) = run(ringshim().args(["run", "--profile", "turbo", "true"]));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("turbo") && stderr.contains("latency"),
        "{stderr}"
    );

    let (code, _, stderr) = run(ringshim().args(["run", "--backend", "dpdk", "true"]));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("dpdk") && stderr.contains("uring, ustack, kernel"),
        "{stderr}"
    );

    let (code, _, stderr) = run(ringshim().args(["run"]));
    assert_eq!(code, 2);
    assert!(stderr.contains("missing command"), "{stderr}");
}

#[test]
fn run_puts_library_first_in_ld_preload_and_keeps_existing_entries() {
    let dir = TempDir::new("preload");
    let lib = dummy_library(&dir);
    let (code, stdout, stderr) = run(ringshim()
        .env("RINGSHIM_LIBRARY", &lib)
        .env("LD_PRELOAD", "/nonexistent/liba.so /nonexistent/libb.so")
        .args(["run", "/bin/sh", "-c", "echo $LD_PRELOAD"]));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.trim(),
        format!(
            "{}:/nonexistent/liba.so:/nonexistent/libb.so",
            lib.display()
        )
    );
}

#[test]
fn run_does_not_list_the_library_twice() {
    let dir = TempDir::new("preload-dup");
    let lib = dummy_library(&dir);
    let existing = format!("{}:/nonexistent/liba.so", lib.display());
    let (code, stdout, _) = run(ringshim()
        .env("RINGSHIM_LIBRARY", &lib)
        .env("LD_PRELOAD", &existing)
        .args(["run", "--", "/bin/sh", "-c", "echo $LD_PRELOAD"]));
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), existing);
}

#[test]
fn run_with_missing_library_exits_2() {
    let (code, _, stderr) = run(ringshim()
        .env("RINGSHIM_LIBRARY", "/nonexistent/libringshim.so")
        .args(["run", "true"]));
    assert_eq!(code, 2);
    assert!(stderr.contains("RINGSHIM_LIBRARY"), "{stderr}");
}

#[test]
fn profile_values_reach_the_child_and_explicit_variables_win() {
    let dir = TempDir::new("profile");
    let (code, stdout, stderr) = run(ringshim()
        .env("RINGSHIM_LIBRARY", dummy_library(&dir))
        .env("RINGSHIM_SQPOLL", "0")
        .args([
            "run",
            "--profile",
            "throughput",
            "--backend",
            "kernel",
            "/bin/sh",
            "-c",
        ])
        .arg("echo sqpoll=$RINGSHIM_SQPOLL buf=$RINGSHIM_BUF_SIZE backend=$RINGSHIM_BACKEND"));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "sqpoll=0 buf=65536 backend=kernel");
}

#[test]
fn run_passes_arguments_through_untouched_and_exits_127_when_exec_fails() {
    let dir = TempDir::new("args");
    let lib = dummy_library(&dir);
    let (code, stdout, _) = run(ringshim().env("RINGSHIM_LIBRARY", &lib).args([
        "run",
        "/bin/echo",
        "--profile",
        "x",
        "a b",
    ]));
    assert_eq!(code, 0);
    assert_eq!(stdout, "--profile x a b\n");

    let (code, _, stderr) = run(ringshim()
        .env("RINGSHIM_LIBRARY", &lib)
        .args(["run", "/nonexistent/program"]));
    assert_eq!(code, 127);
    assert!(
        stderr.contains("cannot execute /nonexistent/program"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------- doctor

#[test]
fn doctor_mentions_io_uring_and_every_backend() {
    let (code, stdout, stderr) = run(ringshim().arg("doctor"));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("io_uring_setup"), "{stdout}");
    assert!(stdout.contains("RLIMIT_MEMLOCK"), "{stdout}");
    for backend in ["uring", "ustack", "kernel"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.get(2..).is_some_and(|l| l.starts_with(backend))),
            "{backend}: {stdout}"
        );
    }
    assert!(stdout.contains("/run/ringshim/stackd.sock"), "{stdout}");
}

#[test]
fn doctor_json_parses() {
    let (code, stdout, _) = run(ringshim().args(["doctor", "--json"]));
    assert_eq!(code, 0);
    let v = json::parse(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    let backends = v.get("backends").unwrap().as_array().unwrap();
    assert_eq!(backends.len(), 3);
    assert_eq!(backends[0].get("name").unwrap().as_str(), Some("uring"));
    assert!(v.get("host").unwrap().get("io_uring_setup").is_some());
    assert_eq!(
        v.get("config")
            .unwrap()
            .get("values")
            .unwrap()
            .get("RINGSHIM_BACKEND")
            .unwrap()
            .as_str(),
        Some("uring")
    );
}

#[test]
fn doctor_with_bad_configuration_reports_and_exits_2() {
    let (code, stdout, stderr) = run(ringshim()
        .env("RINGSHIM_KERNEL_NETS", "banana")
        .arg("doctor"));
    assert_eq!(code, 2);
    assert!(
        stdout.contains("io_uring_setup"),
        "the report is still printed: {stdout}"
    );
    assert!(stdout.contains("configuration is invalid"), "{stdout}");
    assert!(stderr.contains("RINGSHIM_KERNEL_NETS"), "{stderr}");
}

#[test]
fn doctor_reports_simulated_failure() {
    let (code, stdout, _) = run(ringshim()
        .env("RINGSHIM_SIMULATE_URING_FAILURE", "EPERM")
        .arg("doctor"));
    assert_eq!(code, 0);
    assert!(
        stdout.contains("falls back to kernel because RINGSHIM_SIMULATE_URING_FAILURE"),
        "{stdout}"
    );
}

/// Installs a seccomp filter in the child that fails io_uring_setup with `errno`, the way
/// container runtimes do, so the doctor's failure path runs for real.
fn deny_io_uring_setup(cmd: &mut Command, errno: i32) {
    // io_uring_setup is 425 on every architecture with the generic syscall table.
    const NR_IO_URING_SETUP: u32 = 425;
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let filter = [
        op(
            libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
            0,
            0,
            offset_of!(libc::seccomp_data, nr) as u32,
        ),
        op(
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            0,
            1,
            NR_IO_URING_SETUP,
        ),
        op(
            libc::BPF_RET | libc::BPF_K,
            0,
            0,
            libc::SECCOMP_RET_ERRNO | errno as u32,
        ),
        op(libc::BPF_RET | libc::BPF_K, 0, 0, libc::SECCOMP_RET_ALLOW),
    ];
    // SAFETY: the closure runs between fork and exec and only makes two prctl calls on
    // memory (`filter`, moved into the closure) that stays alive until exec.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr().cast_mut(),
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &prog as *const libc::sock_fprog,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
}

#[test]
fn doctor_explains_seccomp_eperm_and_enosys() {
    for (errno, name, hint) in [
        (libc::EPERM, "EPERM", "seccomp"),
        (libc::ENOSYS, "ENOSYS", "without io_uring"),
    ] {
        let mut cmd = ringshim();
        cmd.arg("doctor");
        deny_io_uring_setup(&mut cmd, errno);
        let (code, stdout, stderr) = run(&mut cmd);
        assert_eq!(code, 0, "doctor reports, it does not fail: {stderr}");
        let setup = stdout
            .lines()
            .find(|l| l.trim_start().starts_with("io_uring_setup"))
            .unwrap();
        assert!(setup.contains(name) && setup.contains(hint), "{setup}");
        let uring = stdout
            .lines()
            .find(|l| l.get(2..).is_some_and(|l| l.starts_with("uring")))
            .unwrap();
        assert!(
            uring.contains("falls back to kernel because io_uring_setup fails")
                && uring.contains(name),
            "{uring}"
        );
        assert!(stdout.contains("not tried"), "{stdout}");
    }
}

// ---------------------------------------------------------------------------- stat

/// A slot in use: tid, ring fd, and the counters to set.
type SlotSpec<'a> = (u32, i32, &'a [(Counter, u64)]);

/// A page image in the layout of `ringshim_common::stats::Page`.
fn page_bytes(pid: u32, backend: &str, active: bool, slots: &[SlotSpec]) -> Vec<u8> {
    let mut b = vec![0u8; size_of::<Page>()];
    let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
    put(offset_of!(Header, magic), &MAGIC.to_ne_bytes());
    put(offset_of!(Header, version), &VERSION.to_ne_bytes());
    put(offset_of!(Header, pid), &pid.to_ne_bytes());
    put(offset_of!(Header, slots), &(SLOTS as u32).to_ne_bytes());
    put(
        offset_of!(Header, counters),
        &(stats::COUNTERS as u32).to_ne_bytes(),
    );
    put(offset_of!(Header, backend), backend.as_bytes());
    put(
        offset_of!(Header, backend_active),
        &u32::from(active).to_ne_bytes(),
    );
    for (i, (tid, ring_fd, counters)) in slots.iter().enumerate() {
        let base = offset_of!(Page, slots) + i * size_of::<Slot>();
        put(base + offset_of!(Slot, tid), &tid.to_ne_bytes());
        put(base + offset_of!(Slot, ring_fd), &ring_fd.to_ne_bytes());
        for (c, v) in counters.iter() {
            put(
                base + offset_of!(Slot, counters) + 8 * (*c as usize),
                &v.to_ne_bytes(),
            );
        }
    }
    b
}

/// Our own pid: alive for the whole test, which is what `stat` checks.
fn live_pid() -> u32 {
    std::process::id()
}

/// The pid of a process that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

fn write_page(dir: &Path, pid: u32) {
    let bytes = page_bytes(
        pid,
        "uring",
        true,
        &[
            (
                pid,
                7,
                &[
                    (Counter::BytesSent, 1000),
                    (Counter::Accepts, 3),
                    (Counter::RingEnters, 10),
                ],
            ),
            (
                pid + 1,
                8,
                &[(Counter::BytesSent, 24), (Counter::RingEnters, 5)],
            ),
            (pid + 2, -1, &[]),
        ],
    );
    std::fs::write(dir.join(format!("ringshim.{pid}")), bytes).unwrap();
}

fn total_line<'a>(stdout: &'a str, counter: &str) -> Option<Vec<&'a str>> {
    stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&counter))
}

#[test]
fn stat_prints_totals_threads_and_backend() {
    let dir = TempDir::new("stat-text");
    let pid = live_pid();
    write_page(&dir.0, pid);
    let (code, stdout, stderr) = run(ringshim()
        .args(["stat", &pid.to_string(), "--dir"])
        .arg(&dir.0));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("backend uring (active)"), "{stdout}");
    assert!(stdout.contains("3 threads"), "{stdout}");
    assert_eq!(total_line(&stdout, "bytes_sent").unwrap()[1], "1024");
    assert_eq!(total_line(&stdout, "ring_enters").unwrap()[1], "15");
    assert_eq!(total_line(&stdout, "accepts").unwrap()[1], "3");
    for name in stats::COUNTER_NAMES {
        assert!(
            total_line(&stdout, name).is_some(),
            "every counter is printed: {name}"
        );
    }
    assert!(
        stdout.contains(&format!(
            "thread {} ring_fd 8: ring_enters=5 bytes_sent=24",
            pid + 1
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("thread {} ring_fd -1: (all zero)", pid + 2)),
        "{stdout}"
    );
}

#[test]
fn stat_dir_defaults_to_ringshim_stats_dir() {
    let dir = TempDir::new("stat-env");
    let pid = live_pid();
    write_page(&dir.0, pid);
    let (code, stdout, _) = run(ringshim()
        .env("RINGSHIM_STATS_DIR", &dir.0)
        .args(["stat", &pid.to_string()]));
    assert_eq!(code, 0);
    assert_eq!(total_line(&stdout, "bytes_sent").unwrap()[1], "1024");
}

#[test]
fn stat_json_parses_with_totals_and_threads() {
    let dir = TempDir::new("stat-json");
    let pid = live_pid();
    write_page(&dir.0, pid);
    let (code, stdout, _) = run(ringshim()
        .args(["stat", &pid.to_string(), "--json", "--dir"])
        .arg(&dir.0));
    assert_eq!(code, 0);
    let v = json::parse(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(v.get("pid").unwrap().as_num(), Some(f64::from(pid)));
    assert_eq!(v.get("backend").unwrap().as_str(), Some("uring"));
    assert_eq!(v.get("backend_active"), Some(&json::Value::Bool(true)));
    assert_eq!(
        v.get("totals").unwrap().get("bytes_sent").unwrap().as_num(),
        Some(1024.0)
    );
    let threads = v.get("threads").unwrap().as_array().unwrap();
    assert_eq!(threads.len(), 3);
    assert_eq!(threads[1].get("ring_fd").unwrap().as_num(), Some(8.0));
    assert_eq!(
        threads[1]
            .get("counters")
            .unwrap()
            .get("bytes_sent")
            .unwrap()
            .as_num(),
        Some(24.0)
    );
}

#[test]
fn stat_prometheus_exposition() {
    let dir = TempDir::new("stat-prom");
    let pid = live_pid();
    write_page(&dir.0, pid);
    let (code, stdout, _) = run(ringshim()
        .args(["stat", &pid.to_string(), "--prometheus", "--dir"])
        .arg(&dir.0));
    assert_eq!(code, 0);
    assert!(
        stdout.contains(&format!("ringshim_bytes_sent{{pid=\"{pid}\"}} 1024\n")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "ringshim_bytes_sent{{pid=\"{pid}\",tid=\"{}\"}} 24\n",
            pid + 1
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("# TYPE ringshim_bytes_sent counter\n"),
        "{stdout}"
    );
    // Every sample line: name{labels} integer.
    for line in stdout.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(
            series.starts_with("ringshim_") && series.ends_with('}'),
            "{line}"
        );
        value.parse::<u64>().unwrap_or_else(|_| panic!("{line}"));
    }
}

#[test]
fn stat_watch_reprints_with_rates_and_stops_after_count() {
    let dir = TempDir::new("stat-watch");
    let pid = live_pid();
    write_page(&dir.0, pid);
    let (code, stdout, _) = run(ringshim()
        .args([
            "stat",
            &pid.to_string(),
            "--watch",
            "0.05",
            "--count",
            "3",
            "--dir",
        ])
        .arg(&dir.0));
    assert_eq!(code, 0);
    assert_eq!(stdout.matches("--- t+").count(), 3, "{stdout}");
    assert_eq!(
        stdout.matches("per second").count(),
        2,
        "the first report has no rate: {stdout}"
    );

    let (code, stdout, _) = run(ringshim()
        .args([
            "stat",
            &pid.to_string(),
            "--json",
            "--watch=0.05",
            "--count=2",
            "--dir",
        ])
        .arg(&dir.0));
    assert_eq!(code, 0);
    let reports: Vec<json::Value> = stdout.lines().map(|l| json::parse(l).unwrap()).collect();
    assert_eq!(reports.len(), 2);
    assert!(reports[0].get("rates").is_none());
    assert_eq!(
        reports[1]
            .get("rates")
            .unwrap()
            .get("bytes_sent")
            .unwrap()
            .as_num(),
        Some(0.0)
    );
}

#[test]
fn stat_watch_stops_when_the_reader_goes_away() {
    use std::io::Read;
    let dir = TempDir::new("stat-pipe");
    let pid = live_pid();
    write_page(&dir.0, pid);
    let mut child = ringshim()
        .args(["stat", &pid.to_string(), "--watch", "0.02", "--dir"])
        .arg(&dir.0)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The read end is closed here; the next report hits EPIPE.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("stat --watch kept running after its reader went away");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
}

#[test]
fn stat_on_missing_page_exits_1_with_the_hint() {
    let dir = TempDir::new("stat-missing");
    let pid = dead_pid();
    let (code, stdout, stderr) = run(ringshim()
        .args(["stat", &pid.to_string(), "--dir"])
        .arg(&dir.0));
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    assert!(
        stderr.contains(&format!(
            "is {pid} running under ringshim with RINGSHIM_STATS=1?"
        )),
        "{stderr}"
    );
}

#[test]
fn stat_on_garbage_page_exits_1() {
    let dir = TempDir::new("stat-garbage");
    let pid = live_pid();
    std::fs::write(dir.0.join(format!("ringshim.{pid}")), vec![7u8; 4096]).unwrap();
    let (code, _, stderr) = run(ringshim()
        .args(["stat", &pid.to_string(), "--dir"])
        .arg(&dir.0));
    assert_eq!(code, 1);
    assert!(stderr.contains("not a ringshim stats page"), "{stderr}");
}

#[test]
fn stat_on_unreadable_page_exits_1_saying_permission_denied() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        eprintln!("skipped: root reads files whatever their mode");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("stat-perm");
    let pid = live_pid();
    write_page(&dir.0, pid);
    let path = dir.0.join(format!("ringshim.{pid}"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o000)).unwrap();
    let (code, _, stderr) = run(ringshim()
        .args(["stat", &pid.to_string(), "--dir"])
        .arg(&dir.0));
    assert_eq!(code, 1);
    assert!(stderr.contains("permission denied"), "{stderr}");
}

#[test]
fn stat_list_shows_live_pages_and_removes_stale_ones() {
    let dir = TempDir::new("stat-list");
    let live = live_pid();
    let dead = dead_pid();
    write_page(&dir.0, live);
    write_page(&dir.0, dead);
    std::fs::write(dir.0.join("ringshim.notapid"), b"").unwrap();
    let (code, stdout, stderr) = run(ringshim().args(["stat", "--list", "--dir"]).arg(&dir.0));
    assert_eq!(code, 0, "{stderr}");
    let row = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(&live.to_string()))
        .unwrap();
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>()[1..4],
        ["uring", "yes", "3"],
        "{row}"
    );
    assert!(stdout.contains("removed stale page"), "{stdout}");
    assert!(dir.0.join(format!("ringshim.{live}")).exists());
    assert!(!dir.0.join(format!("ringshim.{dead}")).exists());
    assert!(
        dir.0.join("ringshim.notapid").exists(),
        "only pages are touched"
    );
}

// ---------------------------------------------------------------------------- misc

#[test]
fn version_and_help() {
    for arg in ["version", "--version"] {
        let (code, stdout, _) = run(ringshim().arg(arg));
        assert_eq!(code, 0);
        assert!(
            stdout.starts_with(&format!("ringshim {}", env!("CARGO_PKG_VERSION"))),
            "{stdout}"
        );
    }
    for arg in ["help", "--help"] {
        let (code, stdout, _) = run(ringshim().arg(arg));
        assert_eq!(code, 0);
        for sub in [
            "ringshim run",
            "ringshim doctor",
            "ringshim stat PID",
            "ringshim stat --list",
            "throughput",
        ] {
            assert!(stdout.contains(sub), "{sub}: {stdout}");
        }
    }
    let (code, _, stderr) = run(ringshim().arg("frobnicate"));
    assert_eq!(code, 2);
    assert!(stderr.contains("frobnicate"), "{stderr}");
    let (code, _, stderr) = run(&mut ringshim());
    assert_eq!(code, 2);
    assert!(stderr.contains("Usage:"), "{stderr}");
}

#[test]
fn binary_defines_none_of_the_interposed_functions() {
    // Linking the shim's exports into the CLI would make the CLI's own socket and read
    // calls go through the shim; the crate graph forbids it, this checks the result.
    let Ok(out) = Command::new("nm")
        .arg("--defined-only")
        .arg(env!("CARGO_BIN_EXE_ringshim"))
        .output()
    else {
        eprintln!("skipped: nm is not installed");
        return;
    };
    assert!(out.status.success());
    let symbols = text(&out.stdout);
    for name in [
        "socket",
        "connect",
        "accept4",
        "read",
        "write",
        "epoll_wait",
        "close",
    ] {
        let defined = symbols
            .lines()
            .any(|l| l.split_whitespace().nth(2) == Some(name));
        assert!(!defined, "ringshim defines {name}");
    }
}

/// A strict JSON reader (RFC 8259), so the tests check the output really is JSON without
/// adding a dependency to the workspace lock file.
mod json {
    #[derive(Debug, PartialEq)]
    pub enum Value {
        Null,
        Bool(bool),
        Num(f64),
        Str(String),
        Arr(Vec<Value>),
        Obj(Vec<(String, Value)>),
    }

    impl Value {
        pub fn get(&self, key: &str) -> Option<&Value> {
            match self {
                Value::Obj(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
                _ => None,
            }
        }
        pub fn as_str(&self) -> Option<&str> {
            if let Value::Str(s) = self {
                Some(s)
            } else {
                None
            }
        }
        pub fn as_num(&self) -> Option<f64> {
            if let Value::Num(n) = self {
                Some(*n)
            } else {
                None
            }
        }
        pub fn as_array(&self) -> Option<&[Value]> {
            if let Value::Arr(a) = self {
                Some(a)
            } else {
                None
            }
        }
    }

    pub fn parse(text: &str) -> Result<Value, String> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing data at {}", p.i));
        }
        Ok(v)
    }

    struct Parser<'a> {
        s: &'a [u8],
        i: usize,
    }

    impl Parser<'_> {
        fn ws(&mut self) {
            while self.s.get(self.i).is_some_and(|c| b" \t\r\n".contains(c)) {
                self.i += 1;
            }
        }

        fn eat(&mut self, c: u8) -> Result<(), String> {
            self.ws();
            if self.s.get(self.i) == Some(&c) {
                self.i += 1;
                Ok(())
            } else {
                Err(format!("expected {:?} at {}", c as char, self.i))
            }
        }

        fn value(&mut self) -> Result<Value, String> {
            self.ws();
            match self.s.get(self.i).copied() {
                Some(b'{') => {
                    self.i += 1;
                    let mut fields = Vec::new();
                    self.ws();
                    if self.s.get(self.i) == Some(&b'}') {
                        self.i += 1;
                        return Ok(Value::Obj(fields));
                    }
                    loop {
                        self.ws();
                        let key = self.string()?;
                        self.eat(b':')?;
                        fields.push((key, self.value()?));
                        self.ws();
                        match self.s.get(self.i) {
                            Some(b',') => self.i += 1,
                            Some(b'}') => {
                                self.i += 1;
                                return Ok(Value::Obj(fields));
                            }
                            _ => return Err(format!("bad object at {}", self.i)),
                        }
                    }
                }
                Some(b'[') => {
                    self.i += 1;
                    let mut items = Vec::new();
                    self.ws();
                    if self.s.get(self.i) == Some(&b']') {
                        self.i += 1;
                        return Ok(Value::Arr(items));
                    }
                    loop {
                        items.push(self.value()?);
                        self.ws();
                        match self.s.get(self.i) {
                            Some(b',') => self.i += 1,
                            Some(b']') => {
                                self.i += 1;
                                return Ok(Value::Arr(items));
                            }
                            _ => return Err(format!("bad array at {}", self.i)),
                        }
                    }
                }
                Some(b'"') => Ok(Value::Str(self.string()?)),
                Some(b't') => self.word("true", Value::Bool(true)),
                Some(b'f') => self.word("false", Value::Bool(false)),
                Some(b'n') => self.word("null", Value::Null),
                Some(b'-' | b'0'..=b'9') => self.number(),
                _ => Err(format!("unexpected input at {}", self.i)),
            }
        }

        fn word(&mut self, w: &str, v: Value) -> Result<Value, String> {
            if self.s[self.i..].starts_with(w.as_bytes()) {
                self.i += w.len();
                Ok(v)
            } else {
                Err(format!("bad literal at {}", self.i))
            }
        }

        fn number(&mut self) -> Result<Value, String> {
            let start = self.i;
            if self.s[self.i] == b'-' {
                self.i += 1;
            }
            let digits = |p: &mut Self| {
                let from = p.i;
                while p.s.get(p.i).is_some_and(u8::is_ascii_digit) {
                    p.i += 1;
                }
                p.i > from
            };
            if self.s.get(self.i) == Some(&b'0') {
                self.i += 1;
            } else if !digits(self) {
                return Err(format!("bad number at {start}"));
            }
            if self.s.get(self.i) == Some(&b'.') {
                self.i += 1;
                if !digits(self) {
                    return Err(format!("bad fraction at {start}"));
                }
            }
            if self.s.get(self.i).is_some_and(|c| *c == b'e' || *c == b'E') {
                self.i += 1;
                if self.s.get(self.i).is_some_and(|c| *c == b'+' || *c == b'-') {
                    self.i += 1;
                }
                if !digits(self) {
                    return Err(format!("bad exponent at {start}"));
                }
            }
            let text = std::str::from_utf8(&self.s[start..self.i]).unwrap();
            text.parse()
                .map(Value::Num)
                .map_err(|e| format!("{e} at {start}"))
        }

        fn string(&mut self) -> Result<String, String> {
            if self.s.get(self.i) != Some(&b'"') {
                return Err(format!("expected string at {}", self.i));
            }
            self.i += 1;
            let mut out = Vec::new();
            loop {
                let c = *self.s.get(self.i).ok_or("unterminated string")?;
                self.i += 1;
                match c {
                    b'"' => return String::from_utf8(out).map_err(|e| e.to_string()),
                    b'\\' => {
                        let e = *self.s.get(self.i).ok_or("unterminated escape")?;
                        self.i += 1;
                        match e {
                            b'"' | b'\\' | b'/' => out.push(e),
                            b'n' => out.push(b'\n'),
                            b't' => out.push(b'\t'),
                            b'r' => out.push(b'\r'),
                            b'b' => out.push(8),
                            b'f' => out.push(12),
                            b'u' => {
                                let hex = std::str::from_utf8(
                                    self.s.get(self.i..self.i + 4).ok_or("short \\u")?,
                                )
                                .map_err(|e| e.to_string())?;
                                let code =
                                    u32::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
                                self.i += 4;
                                let ch = char::from_u32(code)
                                    .ok_or("surrogate escapes are not produced by ringshim")?;
                                out.extend_from_slice(ch.to_string().as_bytes());
                            }
                            _ => return Err(format!("bad escape at {}", self.i)),
                        }
                    }
                    0..=0x1f => return Err(format!("raw control character at {}", self.i)),
                    _ => out.push(c),
                }
            }
        }
    }

    #[test]
    fn reader_rejects_what_is_not_json() {
        for bad in [
            "{",
            "{\"a\":}",
            "[1,]",
            "01",
            "\"\u{1}\"",
            "{} x",
            "nul",
            "1.",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse(r#" {"a": [1, -2.5e3, true, null, "x\n\u00e9"]} "#)
                .unwrap()
                .get("a")
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            5
        );
    }
}
