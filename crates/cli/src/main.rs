//! `ringshim`: the launcher and operator CLI of libringshim.so.
//!
//! This file only dispatches subcommands and turns their outcome into an exit status:
//! 0 success, 1 a runtime failure (`stat` could not read a page), 2 bad usage or bad
//! configuration, 127 the command given to `run` could not be executed.
//!
//! Arguments are parsed by hand (see [`args`]): the grammar is four subcommands with a
//! handful of flags, and `run` must stop at the first word of the child command, which a
//! small cursor expresses more plainly than a parser crate — and the binary keeps no
//! dependencies beyond libc, io-uring and ringshim-common.
//!
//! The binary never links the root `ringshim` crate: that one carries the interposing
//! exports (socket, read, epoll_wait, ...) which must never shadow libc in the CLI itself.

mod args;
mod doctor;
mod json;
mod page;
mod probe;
mod run;
mod stackd_stat;
mod stat;

use std::ffi::OsString;
use std::process::ExitCode;

/// Why a subcommand stopped, and with which exit status.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    /// Printed to stderr one per line, as given.
    pub lines: Vec<String>,
}

impl Failure {
    /// Bad command line or configuration: exit 2.
    pub fn usage(message: impl std::fmt::Display) -> Failure {
        Failure {
            code: 2,
            lines: vec![format!("ringshim: {message}")],
        }
    }

    /// A runtime error (missing page, permission denied): exit 1.
    pub fn runtime(message: impl std::fmt::Display) -> Failure {
        Failure {
            code: 1,
            lines: vec![format!("ringshim: {message}")],
        }
    }
}

pub type Outcome = Result<(), Failure>;

fn main() -> ExitCode {
    let mut argv: Vec<OsString> = std::env::args_os().skip(1).collect();
    let outcome = if argv.is_empty() {
        Err(Failure {
            code: 2,
            lines: vec![usage()],
        })
    } else {
        let sub = argv.remove(0);
        match sub.to_str() {
            Some("run") => run::main(argv),
            Some("doctor") => doctor::main(argv),
            Some("stat") => stat::main(argv),
            Some("version" | "--version" | "-V") => print_out(&version_line()),
            Some("help" | "--help" | "-h") => print_out(&usage()),
            _ => Err(Failure::usage(format!(
                "unknown command {:?}; try `ringshim help`",
                sub.to_string_lossy()
            ))),
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            for line in &failure.lines {
                eprintln!("{line}");
            }
            ExitCode::from(failure.code)
        }
    }
}

/// Prints to stdout. When the reader went away (`ringshim stat PID --watch | head`) it
/// stops the subcommand quietly with status 0, as a SIGPIPE-killed filter would appear to
/// a pipeline — std ignores SIGPIPE, so `println!` would panic instead, and a watch loop
/// that swallowed the error would spin on forever.
pub fn print_out(text: &str) -> Outcome {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure {
            code: 0,
            lines: Vec::new(),
        }),
        Err(e) => Err(Failure::runtime(format!("cannot write to stdout: {e}"))),
    }
}

/// Version and the build facts that do not need git: a binary found in a container image
/// should say what it is and which stats page layout it reads.
fn version_line() -> String {
    format!(
        "ringshim {} ({}-{}, {} build, stats page v{}, {} counters)\n",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        std::env::consts::OS,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        ringshim_common::stats::VERSION,
        ringshim_common::stats::COUNTERS,
    )
}

fn usage() -> String {
    let mut text = format!(
        "ringshim {version} - run unmodified TCP servers with their socket I/O on io_uring

Usage:
  ringshim run [--profile NAME] [--backend uring|ustack|kernel] [--] CMD [ARGS...]
      Validate the RINGSHIM_* configuration, put libringshim.so first in LD_PRELOAD
      and execute CMD. Variables already set in the environment win over the profile;
      --backend wins over RINGSHIM_BACKEND.
  ringshim doctor [--json]
      Report what works on this host (io_uring, SQPOLL, buffer rings, limits), the
      configuration from the environment, and what each backend will do.
  ringshim stat PID [--watch [SECS]] [--count N] [--json | --prometheus] [--dir DIR]
      Show the live counters of process PID (needs RINGSHIM_STATS=1 in that process).
      --watch reprints every SECS seconds (default 1) with per-second rates;
      --count stops after N reports.
  ringshim stat --list [--dir DIR]
      List the stats pages of running processes; remove our own stale pages.
  ringshim stat --stackd [SOCKET] [--json | --prometheus]
      Show the counters of ringshim-stackd listening at SOCKET (default
      $RINGSHIM_STACKD, else /run/ringshim/stackd.sock).
  ringshim version | --version
  ringshim help | --help

Profiles:
",
        version = env!("CARGO_PKG_VERSION")
    );
    for (name, what, vars) in ringshim_common::config::PROFILES {
        let set: Vec<String> = vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
        text.push_str(&format!(
            "  {name:<12} {what}\n  {:<12} {}\n",
            "",
            set.join(" ")
        ));
    }
    text.push_str(
        "
Environment:
  RINGSHIM_LIBRARY    path of libringshim.so for `run` (default: next to this
                      executable, ../lib/ringshim/, /usr/lib/ringshim/,
                      /usr/local/lib/ringshim/)
  RINGSHIM_STATS_DIR  where `stat` looks for pages (default /dev/shm)
  RINGSHIM_*          library configuration; `ringshim doctor` lists every variable

Exit status: 0 success, 1 stat failed, 2 bad usage or configuration,
127 CMD could not be executed.
",
    );
    text
}
