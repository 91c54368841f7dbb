//! `ringshim doctor`: what will work on this host and why not — the host probes, the
//! configuration the environment gives, and one verdict per backend.
//!
//! Exit status 0 whatever the host lacks (the library fails open, so a missing io_uring
//! is information, not an error); 2 when the configuration is invalid, since `run`
//! would refuse it.

use crate::args::{no_value, Arg, Args};
use crate::json::{self, Object};
use crate::probe::{self, Host};
use crate::{print_out, Failure, Outcome};
use ringshim_common::config::{Backend, Config, ConfigError};
use std::ffi::OsString;
use std::fmt::Write;
use std::path::Path;

pub fn main(argv: Vec<OsString>) -> Outcome {
    let mut as_json = false;
    let mut args = Args::new(argv);
    while let Some(arg) = args.next() {
        match arg {
            Arg::Flag(name, attached) if name == "--json" => {
                no_value(&name, attached)?;
                as_json = true;
            }
            Arg::Flag(name, _) => {
                return Err(Failure::usage(format!("doctor: unknown option {name}")))
            }
            Arg::Operand(w) => {
                return Err(Failure::usage(format!(
                    "doctor: unexpected argument {:?}",
                    w.to_string_lossy()
                )))
            }
            Arg::EndOfFlags => {}
        }
    }

    // Lossy, so that a non-UTF-8 value is reported rather than taken as unset.
    let (config, errors) =
        Config::parse(|k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned()));
    let host = probe::host();
    let verdicts = verdicts(
        &config,
        errors.is_empty(),
        &host,
        &stackd_state(&config.stackd_socket),
    );
    let report = if as_json {
        render_json(&host, &config, &errors, &verdicts)
    } else {
        render_text(&host, &config, &errors, &verdicts)
    };
    print_out(&report)?;
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Failure {
            code: 2,
            lines: errors.iter().map(ToString::to_string).collect(),
        })
    }
}

/// What one backend will do on this host with this configuration.
pub struct Verdict {
    pub backend: Backend,
    pub selected: bool,
    /// Whether sockets routed to it get the backend (false = kernel path).
    pub works: bool,
    pub text: String,
}

/// State of the ringshim-stackd control socket.
#[derive(Debug, PartialEq)]
pub enum Stackd {
    Socket,
    NotASocket,
    Missing,
    Inaccessible(String),
}

fn stackd_state(path: &str) -> Stackd {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::metadata(Path::new(path)) {
        Ok(m) if m.file_type().is_socket() => Stackd::Socket,
        Ok(_) => Stackd::NotASocket,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stackd::Missing,
        Err(e) => Stackd::Inaccessible(e.to_string()),
    }
}

/// Mirrors the library's fail-open rules: invalid configuration, RINGSHIM=0, a simulated
/// or real set-up failure, or a missing receive mechanism all mean the kernel path.
pub fn verdicts(config: &Config, config_ok: bool, host: &Host, stackd: &Stackd) -> Vec<Verdict> {
    let common_block = if !config_ok {
        Some(
            "falls back to kernel because the configuration is invalid (see the errors above)"
                .to_string(),
        )
    } else if !config.enabled {
        Some("passes every call through because RINGSHIM=0".to_string())
    } else {
        None
    };

    let uring = common_block
        .clone()
        .map(|t| (false, t))
        .unwrap_or_else(|| uring_verdict(config, host));
    let ustack = common_block.map(|t| (false, t)).unwrap_or_else(|| match stackd {
        Stackd::Socket => (true, format!("attaches to ringshim-stackd at {} (socket present)", config.stackd_socket)),
        Stackd::NotASocket => (false, format!("falls back to kernel because {} is not a socket", config.stackd_socket)),
        Stackd::Missing => (
            false,
            format!("falls back to kernel because no ringshim-stackd socket exists at {} (start ringshim-stackd or set RINGSHIM_STACKD)", config.stackd_socket),
        ),
        Stackd::Inaccessible(e) => (false, format!("falls back to kernel because {} cannot be checked: {e}", config.stackd_socket)),
    });
    let kernel = (true, "always works: the plain kernel path".to_string());

    [
        (Backend::Uring, uring),
        (Backend::Ustack, ustack),
        (Backend::Kernel, kernel),
    ]
    .into_iter()
    .map(|(backend, (works, text))| Verdict {
        backend,
        selected: config.backend == backend,
        works,
        text,
    })
    .collect()
}

fn uring_verdict(config: &Config, host: &Host) -> (bool, String) {
    if let Some(errno) = config.simulate_uring_failure {
        let e = std::io::Error::from_raw_os_error(errno);
        return (
            false,
            format!(
                "falls back to kernel because RINGSHIM_SIMULATE_URING_FAILURE simulates {}",
                probe::explain_setup_error(&e)
            ),
        );
    }
    if let Err(e) = &host.setup {
        return (
            false,
            format!(
                "falls back to kernel because io_uring_setup fails: {}",
                probe::explain_setup_error(e)
            ),
        );
    }
    let recv_problem = match (&host.buf_ring, &host.multishot_recv) {
        (Some(Err(e)), _) => Some(format!("registering a provided-buffer ring fails ({e})")),
        (_, Some(Err(e))) => Some(format!("multishot receive does not work ({e})")),
        _ => None,
    };
    if let Some(problem) = recv_problem {
        return (
            false,
            format!("falls back to kernel because {problem}; Linux 6.0 or later is needed"),
        );
    }
    let sqpoll = match (&host.sqpoll, config.sqpoll) {
        (_, false) => String::new(),
        (Some(Ok(())), true) => " with one shared SQPOLL thread".to_string(),
        (Some(Err(e)), true) => {
            format!(" without SQPOLL (RINGSHIM_SQPOLL=1, but SQPOLL set-up fails: {e})")
        }
        (None, true) => " without SQPOLL (not probed)".to_string(),
    };
    (true, format!("accelerates{sqpoll}"))
}

fn probe_text(p: Option<&probe::Probe>) -> String {
    match p {
        None => "not tried (io_uring_setup fails)".to_string(),
        Some(Ok(())) => "works".to_string(),
        Some(Err(e)) => format!("fails: {}", probe::explain_setup_error(e)),
    }
}

fn limit_text(v: Option<u64>) -> String {
    match v {
        None => "unlimited".to_string(),
        Some(b) if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        Some(b) => format!("{b} bytes"),
    }
}

/// Every variable's parsed value, in the order of the VARIABLES table.
pub fn effective(config: &Config) -> Vec<(&'static str, String)> {
    let nets = if config.kernel_nets.is_empty() {
        "none".to_string()
    } else {
        config
            .kernel_nets
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let flag = |b: bool| if b { "1" } else { "0" }.to_string();
    let errno = |e: i32| match e {
        libc::EPERM => "EPERM".to_string(),
        libc::ENOSYS => "ENOSYS".to_string(),
        libc::ENOMEM => "ENOMEM".to_string(),
        other => format!("errno {other}"),
    };
    vec![
        ("RINGSHIM", flag(config.enabled)),
        ("RINGSHIM_BACKEND", config.backend.name().to_string()),
        ("RINGSHIM_KERNEL_NETS", nets),
        ("RINGSHIM_SQPOLL", flag(config.sqpoll)),
        ("RINGSHIM_SQPOLL_IDLE_MS", config.sqpoll_idle_ms.to_string()),
        (
            "RINGSHIM_SQPOLL_CPU",
            config
                .sqpoll_cpu
                .map_or("none".to_string(), |c| c.to_string()),
        ),
        ("RINGSHIM_SQ_ENTRIES", config.sq_entries.to_string()),
        ("RINGSHIM_CQ_ENTRIES", config.cq_entries.to_string()),
        ("RINGSHIM_BUF_COUNT", config.buf_count.to_string()),
        ("RINGSHIM_BUF_SIZE", config.buf_size.to_string()),
        ("RINGSHIM_RECV_CAP", config.recv_cap.to_string()),
        ("RINGSHIM_SEND_CAP", config.send_cap.to_string()),
        ("RINGSHIM_CLOSE_DRAIN_MS", config.close_drain_ms.to_string()),
        (
            "RINGSHIM_BALANCE",
            format!("{:?}", config.balance).to_lowercase(),
        ),
        ("RINGSHIM_LOG", config.log_level.name().to_string()),
        (
            "RINGSHIM_LOG_FILE",
            config
                .log_file
                .clone()
                .unwrap_or_else(|| "(stderr)".to_string()),
        ),
        ("RINGSHIM_STATS", flag(config.stats)),
        ("RINGSHIM_STATS_DIR", config.stats_dir.clone()),
        ("RINGSHIM_STACKD", config.stackd_socket.clone()),
        (
            "RINGSHIM_SIMULATE_URING_FAILURE",
            config
                .simulate_uring_failure
                .map_or("(unset)".to_string(), errno),
        ),
    ]
}

fn host_lines(host: &Host) -> Vec<(&'static str, String)> {
    let mut lines = vec![("kernel", host.kernel.clone())];
    lines.push((
        "io_uring_setup",
        match &host.setup {
            Ok(()) => "works".to_string(),
            Err(e) => format!("fails: {}", probe::explain_setup_error(e)),
        },
    ));
    lines.push((
        "io_uring_disabled",
        match &host.io_uring_disabled {
            Some(v) => format!(
                "{v} ({})",
                probe::explain_disabled(v, host.io_uring_group.as_deref())
            ),
            None => "absent (kernel before 6.6: no such switch)".to_string(),
        },
    ));
    lines.push((
        "io_uring_group",
        host.io_uring_group
            .clone()
            .unwrap_or_else(|| "absent".to_string()),
    ));
    lines.push(("SQPOLL", probe_text(host.sqpoll.as_ref())));
    lines.push((
        "SINGLE_ISSUER|DEFER_TASKRUN",
        probe_text(host.single_issuer_defer_taskrun.as_ref()),
    ));
    lines.push(("provided-buffer ring", probe_text(host.buf_ring.as_ref())));
    lines.push((
        "multishot receive",
        match &host.multishot_recv {
            None if host.setup.is_ok() => "not tried (no buffer ring)".to_string(),
            other => probe_text(other.as_ref()),
        },
    ));
    lines.push((
        "opcodes",
        match &host.opcodes {
            None => "not probed".to_string(),
            Some(ops) => ops
                .iter()
                .map(|(n, ok)| format!("{n} {}", if *ok { "yes" } else { "no" }))
                .collect::<Vec<_>>()
                .join(", "),
        },
    ));
    lines.push((
        "RLIMIT_MEMLOCK",
        format!(
            "{} soft, {} hard (kernels before 5.12 charge ring memory to it)",
            limit_text(host.memlock.0),
            limit_text(host.memlock.1)
        ),
    ));
    lines
}

fn render_text(
    host: &Host,
    config: &Config,
    errors: &[ConfigError],
    verdicts: &[Verdict],
) -> String {
    let mut out = String::new();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let _ = writeln!(
        out,
        "ringshim doctor {} (probing as uid {euid})\n",
        env!("CARGO_PKG_VERSION")
    );
    let _ = writeln!(out, "host io_uring");
    for (k, v) in host_lines(host) {
        let _ = writeln!(out, "  {k:<28} {v}");
    }

    let _ = writeln!(out, "\nconfiguration (from the environment)");
    for (name, value) in effective(config) {
        let source = if std::env::var_os(name).is_some() {
            "set"
        } else {
            "default"
        };
        let bad = errors.iter().any(|e| e.var == name);
        let note = if bad { "INVALID, default used" } else { source };
        let _ = writeln!(out, "  {name:<32} {value:<24} ({note})");
    }
    if errors.is_empty() {
        let _ = writeln!(out, "  no errors");
    } else {
        for e in errors {
            let _ = writeln!(out, "  error: {e}");
        }
    }

    let _ = writeln!(out, "\nbackends");
    for v in verdicts {
        let mark = if v.selected { "*" } else { " " };
        let _ = writeln!(out, "{mark} {:<7} {}", v.backend.name(), v.text);
    }
    let _ = writeln!(
        out,
        "(* = RINGSHIM_BACKEND; sockets in RINGSHIM_KERNEL_NETS always use the kernel)"
    );
    out
}

fn probe_json(p: Option<&probe::Probe>) -> String {
    match p {
        None => "null".to_string(),
        Some(Ok(())) => Object::new().bool("works", true).finish(),
        Some(Err(e)) => Object::new()
            .bool("works", false)
            .str("error", &probe::explain_setup_error(e))
            .finish(),
    }
}

fn render_json(
    host: &Host,
    config: &Config,
    errors: &[ConfigError],
    verdicts: &[Verdict],
) -> String {
    let opcodes = host.opcodes.as_ref().map_or("null".to_string(), |ops| {
        ops.iter()
            .fold(Object::new(), |o, (n, ok)| o.bool(n, *ok))
            .finish()
    });
    let host_json = Object::new()
        .str("kernel", &host.kernel)
        .raw("io_uring_setup", probe_json(Some(&host.setup)))
        .opt_str("io_uring_disabled", host.io_uring_disabled.as_deref())
        .opt_str("io_uring_group", host.io_uring_group.as_deref())
        .raw("sqpoll", probe_json(host.sqpoll.as_ref()))
        .raw(
            "single_issuer_defer_taskrun",
            probe_json(host.single_issuer_defer_taskrun.as_ref()),
        )
        .raw("buf_ring", probe_json(host.buf_ring.as_ref()))
        .raw("multishot_recv", probe_json(host.multishot_recv.as_ref()))
        .raw("opcodes", opcodes)
        .raw(
            "memlock_soft",
            host.memlock.0.map_or("null".to_string(), |v| v.to_string()),
        )
        .raw(
            "memlock_hard",
            host.memlock.1.map_or("null".to_string(), |v| v.to_string()),
        )
        .finish();
    let values = effective(config)
        .into_iter()
        .fold(Object::new(), |o, (k, v)| o.str(k, &v))
        .finish();
    let errors_json = json::array(errors.iter().map(|e| {
        Object::new()
            .str("variable", e.var)
            .str("value", &e.value)
            .str("accepted", e.accepted)
            .str("message", &e.to_string())
            .finish()
    }));
    let backends = json::array(verdicts.iter().map(|v| {
        Object::new()
            .str("name", v.backend.name())
            .bool("selected", v.selected)
            .bool("works", v.works)
            .str("verdict", &v.text)
            .finish()
    }));
    let mut out = Object::new()
        .str("version", env!("CARGO_PKG_VERSION"))
        .raw("host", host_json)
        .raw(
            "config",
            Object::new()
                .bool("valid", errors.is_empty())
                .raw("values", values)
                .raw("errors", errors_json)
                .finish(),
        )
        .raw("backends", backends)
        .finish();
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringshim_common::config::VARIABLES;

    fn host(setup: probe::Probe, recv: Option<probe::Probe>) -> Host {
        let works = setup.is_ok();
        Host {
            kernel: "Linux 6.1 x86_64".into(),
            setup,
            io_uring_disabled: Some("0".into()),
            io_uring_group: Some("-1".into()),
            sqpoll: works.then_some(Ok(())),
            single_issuer_defer_taskrun: works.then_some(Ok(())),
            buf_ring: works.then_some(Ok(())),
            multishot_recv: recv,
            opcodes: None,
            memlock: (Some(8 << 20), None),
        }
    }

    fn verdict_of(v: &[Verdict], b: Backend) -> &Verdict {
        v.iter().find(|x| x.backend == b).unwrap()
    }

    #[test]
    fn every_variable_has_an_effective_value() {
        let names: Vec<&str> = effective(&Config::default())
            .iter()
            .map(|(n, _)| *n)
            .collect();
        let documented: Vec<&str> = VARIABLES.iter().map(|v| v.name).collect();
        assert_eq!(names, documented);
    }

    #[test]
    fn uring_falls_back_with_the_reason() {
        let cfg = Config::default();
        let eperm = host(Err(std::io::Error::from_raw_os_error(libc::EPERM)), None);
        let v = verdicts(&cfg, true, &eperm, &Stackd::Missing);
        let uring = verdict_of(&v, Backend::Uring);
        assert!(!uring.works && uring.selected);
        assert!(
            uring.text.starts_with("falls back to kernel because"),
            "{}",
            uring.text
        );
        assert!(uring.text.contains("EPERM"), "{}", uring.text);

        let old = host(
            Ok(()),
            Some(Err(std::io::Error::from_raw_os_error(libc::EINVAL))),
        );
        assert!(verdict_of(
            &verdicts(&cfg, true, &old, &Stackd::Missing),
            Backend::Uring
        )
        .text
        .contains("multishot"));

        let good = host(Ok(()), Some(Ok(())));
        assert_eq!(
            verdict_of(
                &verdicts(&cfg, true, &good, &Stackd::Missing),
                Backend::Uring
            )
            .text,
            "accelerates"
        );
        assert_eq!(
            verdict_of(
                &verdicts(&cfg, false, &good, &Stackd::Socket),
                Backend::Uring
            )
            .text,
            "falls back to kernel because the configuration is invalid (see the errors above)"
        );
        let simulated = Config {
            simulate_uring_failure: Some(libc::ENOSYS),
            ..Config::default()
        };
        assert!(verdict_of(
            &verdicts(&simulated, true, &good, &Stackd::Missing),
            Backend::Uring
        )
        .text
        .contains("SIMULATE"));
        let sqpoll = Config {
            sqpoll: true,
            ..Config::default()
        };
        assert!(verdict_of(
            &verdicts(&sqpoll, true, &good, &Stackd::Missing),
            Backend::Uring
        )
        .text
        .contains("SQPOLL"));
    }

    #[test]
    fn ustack_depends_on_the_stackd_socket_and_kernel_always_works() {
        let cfg = Config {
            backend: Backend::Ustack,
            ..Config::default()
        };
        let h = host(Ok(()), Some(Ok(())));
        let v = verdicts(&cfg, true, &h, &Stackd::Socket);
        assert!(verdict_of(&v, Backend::Ustack).works && verdict_of(&v, Backend::Ustack).selected);
        let v = verdicts(&cfg, true, &h, &Stackd::Missing);
        assert!(verdict_of(&v, Backend::Ustack)
            .text
            .contains("/run/ringshim/stackd.sock"));
        assert!(verdict_of(&v, Backend::Kernel).works);
    }

    #[test]
    fn stackd_state_tells_sockets_from_files() {
        assert_eq!(
            stackd_state("/nonexistent/ringshim/stackd.sock"),
            Stackd::Missing
        );
        assert_eq!(stackd_state("/"), Stackd::NotASocket);
        let path =
            std::env::temp_dir().join(format!("ringshim-doctor-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert_eq!(stackd_state(path.to_str().unwrap()), Stackd::Socket);
        drop(listener);
        std::fs::remove_file(&path).unwrap();
    }
}
