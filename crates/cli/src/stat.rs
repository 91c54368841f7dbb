//! `ringshim stat`: live counters of a shimmed process, as text, JSON or Prometheus
//! exposition, once or every few seconds with rates; and `stat --list` to find (and clean
//! up after) shimmed processes. `stat --stackd` is [`crate::stackd_stat`].

use crate::args::{no_value, Arg, Args};
use crate::json::{self, Object};
use crate::page::{self, ReadError, Snapshot};
use crate::{print_out, Failure, Outcome};
use std::ffi::OsString;
use std::fmt::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    Text,
    Json,
    Prometheus,
}

#[derive(Debug, PartialEq)]
struct StatArgs {
    pid: Option<u32>,
    list: bool,
    /// Seconds between reports; `None` = one report.
    watch: Option<f64>,
    /// Stop after this many reports (bounds `--watch` for scripts and tests).
    count: Option<u64>,
    format: Format,
    dir: PathBuf,
}

pub fn main(argv: Vec<OsString>) -> Outcome {
    if argv
        .iter()
        .any(|a| a == "--stackd" || a.to_string_lossy().starts_with("--stackd="))
    {
        return crate::stackd_stat::main(argv);
    }
    let stat = parse_args(argv, std::env::var_os("RINGSHIM_STATS_DIR"))?;
    if stat.list {
        return list(&stat.dir);
    }
    let pid = stat.pid.expect("parse_args requires a pid without --list");
    show(&stat, pid)
}

fn parse_args(argv: Vec<OsString>, stats_dir: Option<OsString>) -> Result<StatArgs, Failure> {
    let mut args = Args::new(argv);
    let mut stat = StatArgs {
        pid: None,
        list: false,
        watch: None,
        count: None,
        format: Format::Text,
        dir: stats_dir
            .filter(|d| !d.is_empty())
            .map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from),
    };
    // Bounded above so the sleep duration cannot overflow.
    let positive = |w: &str| w.parse::<f64>().is_ok_and(|s| s > 0.0 && s <= 86_400.0);
    let mut formats = 0;
    // `stat --watch 1234` means pid 1234 at the default interval: a number taken as the
    // interval is given back as the PID if no other PID follows.
    let mut interval_word: Option<String> = None;
    while let Some(arg) = args.next() {
        match arg {
            Arg::Flag(name, attached) => match name.as_str() {
                "--watch" | "-w" => {
                    interval_word = None;
                    let secs = match attached {
                        Some(v) => v,
                        None => {
                            interval_word = args.optional_value(positive);
                            interval_word.clone().unwrap_or_else(|| "1".to_string())
                        }
                    };
                    if !positive(&secs) {
                        return Err(Failure::usage(format!(
                            "stat: --watch needs seconds between 0 and 86400, not {secs:?}"
                        )));
                    }
                    stat.watch = Some(secs.parse().expect("checked above"));
                }
                "--count" | "-n" => {
                    let n = args.value("--count", attached)?;
                    stat.count = Some(n.parse().ok().filter(|&n| n > 0).ok_or_else(|| {
                        Failure::usage(format!("stat: --count needs a positive integer, not {n:?}"))
                    })?);
                }
                "--json" | "--prometheus" => {
                    no_value(&name, attached)?;
                    formats += 1;
                    stat.format = if name == "--json" {
                        Format::Json
                    } else {
                        Format::Prometheus
                    };
                }
                "--dir" => stat.dir = PathBuf::from(args.value("--dir", attached)?),
                "--list" => {
                    no_value(&name, attached)?;
                    stat.list = true;
                }
                _ => {
                    return Err(Failure::usage(format!(
                        "stat: unknown option {name}; usage: {}",
                        usage_line()
                    )))
                }
            },
            Arg::Operand(word) => {
                let text = word.to_string_lossy();
                let pid = text
                    .parse::<u32>()
                    .ok()
                    .filter(|&p| p > 0 && p <= i32::MAX as u32);
                match (pid, stat.pid) {
                    (Some(p), None) => stat.pid = Some(p),
                    (None, _) => {
                        return Err(Failure::usage(format!(
                            "stat: {text:?} is not a process id"
                        )))
                    }
                    (Some(_), Some(_)) => return Err(Failure::usage("stat: give one PID")),
                }
            }
            Arg::EndOfFlags => {}
        }
    }
    if formats > 1 {
        return Err(Failure::usage(
            "stat: choose one of --json and --prometheus",
        ));
    }
    if let (None, Some(word)) = (stat.pid, interval_word) {
        if let Ok(pid) = word.parse::<u32>() {
            stat.pid = Some(pid).filter(|&p| p > 0 && p <= i32::MAX as u32);
            stat.watch = Some(1.0);
        }
    }
    if stat.count.is_some() && stat.watch.is_none() {
        stat.watch = Some(1.0);
    }
    match (stat.list, stat.pid) {
        (true, Some(_)) => Err(Failure::usage("stat: --list takes no PID")),
        (true, None) if stat.watch.is_some() || formats > 0 => {
            Err(Failure::usage("stat: --list only combines with --dir"))
        }
        (false, None) => Err(Failure::usage(format!(
            "stat: missing PID; usage: {}",
            usage_line()
        ))),
        _ => Ok(stat),
    }
}

fn usage_line() -> &'static str {
    "ringshim stat PID [--watch [SECS]] [--count N] [--json | --prometheus] [--dir DIR] | ringshim stat --list [--dir DIR]"
}

/// Whether a process with this id exists (EPERM: it exists but belongs to someone else).
/// Ids are as seen from our pid namespace: a page written from another namespace into a
/// shared directory looks dead here.
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission; nothing is delivered.
    let found = unsafe { libc::kill(pid, 0) } == 0;
    found || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn read_failure(path: &Path, pid: u32, err: ReadError) -> Failure {
    match err {
        ReadError::Io(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let running = if process_alive(pid) { "" } else { " (no process with that id is running)" };
            Failure::runtime(format!(
                "no stats page {}{running}: is {pid} running under ringshim with RINGSHIM_STATS=1?",
                path.display()
            ))
        }
        ReadError::Io(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Failure::runtime(format!(
            "cannot read {}: permission denied (pages are mode 0600 and belong to the process's user; run as that user or root)",
            path.display()
        )),
        ReadError::Io(e) => Failure::runtime(format!("cannot read {}: {e}", path.display())),
        ReadError::Format(msg) => Failure::runtime(format!("cannot read {}: {msg}", path.display())),
    }
}

fn show(stat: &StatArgs, pid: u32) -> Outcome {
    let path = page::path(&stat.dir, pid);
    let start = Instant::now();
    let mut previous: Option<(Instant, Snapshot)> = None;
    let mut reports = 0u64;
    loop {
        let snap = match page::read(&path) {
            Ok(s) => s,
            // A page removed while watching means the process went away.
            Err(ReadError::Io(e))
                if previous.is_some() && e.kind() == std::io::ErrorKind::NotFound =>
            {
                eprintln!(
                    "ringshim: stats page {} is gone; process {pid} exited",
                    path.display()
                );
                return Ok(());
            }
            Err(e) => return Err(read_failure(&path, pid, e)),
        };
        let now = Instant::now();
        let alive = process_alive(pid);
        let rates = previous
            .as_ref()
            .map(|(then, old)| rates(old, &snap, now.duration_since(*then)));
        let report = Report {
            pid,
            alive,
            snap: &snap,
            rates: rates.as_deref(),
        };
        let text = match stat.format {
            Format::Text if stat.watch.is_some() => {
                format!(
                    "--- t+{:.1}s\n{}",
                    now.duration_since(start).as_secs_f64(),
                    render_text(&report)
                )
            }
            Format::Text => render_text(&report),
            Format::Json => render_json(&report),
            Format::Prometheus => render_prometheus(&report),
        };
        print_out(&text)?;
        reports += 1;

        let Some(interval) = stat.watch else {
            return Ok(());
        };
        if stat.count.is_some_and(|n| reports >= n) {
            return Ok(());
        }
        if !alive {
            eprintln!("ringshim: process {pid} is not running; stopping");
            return Ok(());
        }
        previous = Some((now, snap));
        std::thread::sleep(Duration::from_secs_f64(interval));
    }
}

/// Per-second change of every total. A total can shrink when a thread exits and its slot
/// is reused; that reads as 0, not as a huge negative rate.
fn rates(old: &Snapshot, new: &Snapshot, elapsed: Duration) -> Vec<f64> {
    let secs = elapsed.as_secs_f64().max(1e-9);
    new.totals
        .iter()
        .enumerate()
        .map(|(i, &v)| v.saturating_sub(old.totals.get(i).copied().unwrap_or(0)) as f64 / secs)
        .collect()
}

struct Report<'a> {
    pid: u32,
    alive: bool,
    snap: &'a Snapshot,
    rates: Option<&'a [f64]>,
}

fn render_text(r: &Report) -> String {
    let s = r.snap;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pid {} ({}), backend {} ({}), {} thread{}",
        r.pid,
        if r.alive {
            "running"
        } else {
            "not running: stale page"
        },
        if s.backend.is_empty() {
            "?"
        } else {
            &s.backend
        },
        if s.backend_active {
            "active"
        } else {
            "inactive: fell back to kernel"
        },
        s.threads.len(),
        if s.threads.len() == 1 { "" } else { "s" }
    );
    if s.pid != r.pid {
        let _ = writeln!(out, "warning: the page says it belongs to pid {}", s.pid);
    }
    match r.rates {
        Some(_) => {
            let _ = writeln!(
                out,
                "  {:<24} {:>20} {:>14}",
                "counter", "total", "per second"
            );
        }
        None => {
            let _ = writeln!(out, "  {:<24} {:>20}", "counter", "total");
        }
    }
    for (i, (name, total)) in s.names.iter().zip(&s.totals).enumerate() {
        match r.rates {
            Some(rates) => {
                let _ = writeln!(
                    out,
                    "  {name:<24} {total:>20} {:>14.1}",
                    rates.get(i).copied().unwrap_or(0.0)
                );
            }
            None => {
                let _ = writeln!(out, "  {name:<24} {total:>20}");
            }
        }
    }
    for t in &s.threads {
        let nonzero: Vec<String> = s
            .names
            .iter()
            .zip(&t.counters)
            .filter(|(_, &v)| v != 0)
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        let counters = if nonzero.is_empty() {
            "(all zero)".to_string()
        } else {
            nonzero.join(" ")
        };
        let _ = writeln!(out, "thread {} ring_fd {}: {counters}", t.tid, t.ring_fd);
    }
    out
}

fn counters_json(names: &[String], values: impl IntoIterator<Item = String>) -> String {
    names
        .iter()
        .zip(values)
        .fold(Object::new(), |o, (n, v)| o.raw(n, v))
        .finish()
}

fn render_json(r: &Report) -> String {
    let s = r.snap;
    let threads = json::array(s.threads.iter().map(|t| {
        Object::new()
            .num("tid", t.tid)
            .num("ring_fd", t.ring_fd)
            .raw(
                "counters",
                counters_json(&s.names, t.counters.iter().map(u64::to_string)),
            )
            .finish()
    }));
    let mut o = Object::new()
        .num("pid", r.pid)
        .bool("alive", r.alive)
        .num("page_pid", s.pid)
        .str("backend", &s.backend)
        .bool("backend_active", s.backend_active)
        .raw(
            "totals",
            counters_json(&s.names, s.totals.iter().map(u64::to_string)),
        );
    if let Some(rates) = r.rates {
        o = o.raw(
            "rates",
            counters_json(&s.names, rates.iter().map(|&x| json::float(x))),
        );
    }
    let mut out = o.raw("threads", threads).finish();
    out.push('\n');
    out
}

/// Prometheus text exposition. Every counter family carries the process total (labels
/// `pid`) and one series per thread (labels `pid`, `tid`); aggregate with
/// `{tid=""}` to avoid counting a thread's share twice.
fn render_prometheus(r: &Report) -> String {
    let s = r.snap;
    let pid = r.pid;
    let mut out = String::new();
    let _ = writeln!(out, "# HELP ringshim_backend_active 1 when the configured backend is in use, 0 after a fallback to the kernel.");
    let _ = writeln!(out, "# TYPE ringshim_backend_active gauge");
    let backend = s
        .backend
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n");
    let _ = writeln!(
        out,
        "ringshim_backend_active{{pid=\"{pid}\",backend=\"{backend}\"}} {}",
        u8::from(s.backend_active)
    );
    let _ = writeln!(out, "# HELP ringshim_threads Threads with a counter slot.");
    let _ = writeln!(out, "# TYPE ringshim_threads gauge");
    let _ = writeln!(out, "ringshim_threads{{pid=\"{pid}\"}} {}", s.threads.len());
    for (i, name) in s.names.iter().enumerate() {
        let _ = writeln!(
            out,
            "# HELP ringshim_{name} ringshim {name}; the series without tid is the process total."
        );
        let _ = writeln!(out, "# TYPE ringshim_{name} counter");
        let _ = writeln!(out, "ringshim_{name}{{pid=\"{pid}\"}} {}", s.totals[i]);
        for t in &s.threads {
            let _ = writeln!(
                out,
                "ringshim_{name}{{pid=\"{pid}\",tid=\"{}\"}} {}",
                t.tid, t.counters[i]
            );
        }
    }
    out
}

/// Lists pages of live processes and removes our own pages of dead ones (a process that
/// died by a signal or `_exit` never removes its page). Pages of other users are only
/// reported: they may belong to a process in another pid namespace sharing the directory.
fn list(dir: &Path) -> Outcome {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Failure::runtime(format!("cannot list {}: {e}", dir.display())))?;
    let mut pids: Vec<u32> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("ringshim.")?
                .parse::<u32>()
                .ok()
        })
        .filter(|&p| p > 0)
        .collect();
    pids.sort_unstable();

    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let mut out = String::new();
    let mut live = 0;
    for pid in pids {
        let path = page::path(dir, pid);
        if process_alive(pid) {
            if live == 0 {
                let _ = writeln!(
                    out,
                    "{:<8} {:<8} {:<7} {:>7}  command",
                    "pid", "backend", "active", "threads"
                );
            }
            live += 1;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_default();
            match page::read(&path) {
                Ok(s) => {
                    let active = if s.backend_active { "yes" } else { "no" };
                    let _ = writeln!(
                        out,
                        "{pid:<8} {:<8} {active:<7} {:>7}  {comm}",
                        s.backend,
                        s.threads.len()
                    );
                }
                Err(e) => {
                    let why = match e {
                        ReadError::Io(e) => e.to_string(),
                        ReadError::Format(msg) => msg,
                    };
                    let _ = writeln!(
                        out,
                        "{pid:<8} {:<8} {:<7} {:>7}  {comm}  ({why})",
                        "?", "?", "?"
                    );
                }
            }
            continue;
        }
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.uid() == euid && m.is_file() => match std::fs::remove_file(&path) {
                Ok(()) => {
                    let _ = writeln!(
                        out,
                        "removed stale page {} (pid {pid} is not running)",
                        path.display()
                    );
                }
                Err(e) => {
                    let _ = writeln!(
                        out,
                        "stale page {} (pid {pid} is not running), cannot remove: {e}",
                        path.display()
                    );
                }
            },
            Ok(m) => {
                let _ = writeln!(
                    out,
                    "stale page {} (pid {pid} is not running here), owned by uid {}: left in place",
                    path.display(),
                    m.uid()
                );
            }
            Err(_) => {}
        }
    }
    if live == 0 {
        let _ = writeln!(
            out,
            "no running process has a stats page in {}",
            dir.display()
        );
    }
    print_out(&out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::fixture;

    fn os(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn watch_takes_an_optional_interval() {
        let a = parse_args(os(&["--watch", "123"]), None).unwrap();
        assert_eq!((a.pid, a.watch), (Some(123), Some(1.0)));
        let a = parse_args(os(&["--watch", "2", "123"]), None).unwrap();
        assert_eq!((a.pid, a.watch), (Some(123), Some(2.0)));
        let a = parse_args(os(&["123", "--watch", "2"]), None).unwrap();
        assert_eq!((a.pid, a.watch), (Some(123), Some(2.0)));
        let a = parse_args(os(&["123", "--watch=0.25"]), None).unwrap();
        assert_eq!((a.pid, a.watch), (Some(123), Some(0.25)));
    }

    #[test]
    fn parses_pid_flags_and_default_dir() {
        let a = parse_args(os(&["42", "--watch", "--json"]), None).unwrap();
        assert_eq!(
            (a.pid, a.watch, a.format, a.dir.clone()),
            (Some(42), Some(1.0), Format::Json, PathBuf::from("/dev/shm"))
        );
        let a = parse_args(
            os(&["42", "--watch", "0.5", "--count", "3", "--dir=/tmp/x"]),
            Some("/ignored".into()),
        )
        .unwrap();
        assert_eq!(
            (a.watch, a.count, a.dir.clone()),
            (Some(0.5), Some(3), PathBuf::from("/tmp/x"))
        );
        let a = parse_args(os(&["7", "--count", "2"]), Some("/run/rs".into())).unwrap();
        assert_eq!(
            (a.watch, a.dir.clone()),
            (Some(1.0), PathBuf::from("/run/rs"))
        );
        assert!(parse_args(os(&["--list"]), None).unwrap().list);
    }

    #[test]
    fn rejects_bad_combinations() {
        for bad in [
            &["--json"][..],
            &["x"],
            &["0"],
            &["1", "2"],
            &["1", "--json", "--prometheus"],
            &["1", "--count", "0"],
            &["1", "--watch=-1"],
            &["1", "--watch=1e300"],
            &["1", "--watch=NaN"],
            &["--list", "1"],
            &["--list", "--json"],
            &["1", "--bogus"],
        ] {
            assert_eq!(parse_args(os(bad), None).unwrap_err().code, 2, "{bad:?}");
        }
    }

    #[test]
    fn rates_are_per_second_and_never_negative() {
        let a = page::decode(&fixture::page(
            1,
            "uring",
            true,
            &[(1, 3, &[(0, 10), (1, 50)])],
        ))
        .unwrap();
        let b = page::decode(&fixture::page(
            1,
            "uring",
            true,
            &[(1, 3, &[(0, 30), (1, 20)])],
        ))
        .unwrap();
        let r = rates(&a, &b, Duration::from_secs(2));
        assert_eq!((r[0], r[1]), (10.0, 0.0));
    }

    #[test]
    fn text_lists_totals_and_nonzero_thread_counters() {
        let s = page::decode(&fixture::page(
            9,
            "uring",
            false,
            &[(10, 4, &[(2, 5)]), (11, -1, &[])],
        ))
        .unwrap();
        let text = render_text(&Report {
            pid: 9,
            alive: true,
            snap: &s,
            rates: None,
        });
        assert!(text.contains("backend uring (inactive"), "{text}");
        assert!(
            text.contains("thread 10 ring_fd 4: sockets_created=5"),
            "{text}"
        );
        assert!(text.contains("thread 11 ring_fd -1: (all zero)"), "{text}");
        assert_eq!(
            text.lines()
                .filter(|l| l.trim_start().starts_with("balance_misses"))
                .count(),
            1
        );
    }

    #[test]
    fn prometheus_has_totals_and_per_thread_series() {
        let s = page::decode(&fixture::page(
            9,
            "uring",
            true,
            &[(10, 4, &[(0, 5)]), (12, 4, &[(0, 1)])],
        ))
        .unwrap();
        let text = render_prometheus(&Report {
            pid: 9,
            alive: true,
            snap: &s,
            rates: None,
        });
        assert!(
            text.contains("ringshim_calls_intercepted{pid=\"9\"} 6\n"),
            "{text}"
        );
        assert!(
            text.contains("ringshim_calls_intercepted{pid=\"9\",tid=\"12\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE ringshim_calls_intercepted counter\n"),
            "{text}"
        );
    }

    #[test]
    fn process_alive_knows_ourselves() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(i32::MAX as u32));
        assert!(!process_alive(0));
    }
}
