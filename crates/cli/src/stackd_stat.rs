//! `ringshim stat --stackd [SOCKET]`: the counters of a running `ringshim-stackd`, read
//! over its control socket (a STATS request on a connection that never attaches; stackd
//! answers only the peers it would serve: its own uid, root, or `--allow-group`).

use crate::args::{no_value, Arg, Args};
use crate::json::Object;
use crate::{print_out, Failure, Outcome};
use ringshim_stackd::proto::{StatsReply, STATS_GAUGES, STATS_NAMES};
use std::ffi::OsString;
use std::fmt::Write;
use std::path::PathBuf;

/// Where stackd listens when neither the command line nor RINGSHIM_STACKD says.
const DEFAULT_SOCKET: &str = "/run/ringshim/stackd.sock";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    Text,
    Json,
    Prometheus,
}

/// `argv`: what follows `stat`, `--stackd` included.
pub fn main(argv: Vec<OsString>) -> Outcome {
    let (socket, format) = parse_args(argv, std::env::var_os("RINGSHIM_STACKD"))?;
    let reply = ringshim_stackd::client::stats(&socket).map_err(|e| {
        let hint = match e.raw_os_error() {
            Some(libc::EACCES) => " (stackd serves its own uid, root and its --allow-group)",
            Some(libc::ENOENT) | Some(libc::ECONNREFUSED) => " (is ringshim-stackd running?)",
            _ => "",
        };
        Failure::runtime(format!("stackd at {}: {e}{hint}", socket.display()))
    })?;
    let socket = socket.display().to_string();
    print_out(&match format {
        Format::Text => render_text(&socket, &reply),
        Format::Json => render_json(&socket, &reply),
        Format::Prometheus => render_prometheus(&socket, &reply),
    })
}

fn parse_args(
    argv: Vec<OsString>,
    env_socket: Option<OsString>,
) -> Result<(PathBuf, Format), Failure> {
    let mut args = Args::new(argv);
    let mut socket = env_socket
        .filter(|s| !s.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from);
    let mut format = Format::Text;
    let mut formats = 0;
    while let Some(arg) = args.next() {
        match arg {
            Arg::Flag(name, attached) => match name.as_str() {
                "--stackd" => {
                    if let Some(path) =
                        attached.or_else(|| args.optional_value(|w| w.starts_with('/')))
                    {
                        socket = PathBuf::from(path);
                    }
                }
                "--json" => {
                    no_value(&name, attached)?;
                    format = Format::Json;
                    formats += 1;
                }
                "--prometheus" => {
                    no_value(&name, attached)?;
                    format = Format::Prometheus;
                    formats += 1;
                }
                other => {
                    return Err(Failure::usage(format!(
                        "stat --stackd: unknown flag {other} (--json, --prometheus)"
                    )))
                }
            },
            Arg::Operand(word) => {
                return Err(Failure::usage(format!(
                "stat --stackd: unexpected {word:?} (the socket path is absolute: --stackd /path)"
            )))
            }
            Arg::EndOfFlags => {}
        }
    }
    if formats > 1 {
        return Err(Failure::usage(
            "stat: --json and --prometheus exclude each other",
        ));
    }
    Ok((socket, format))
}

fn values(reply: &StatsReply) -> impl Iterator<Item = (usize, &'static str, u64)> + '_ {
    let n = (reply.count as usize).min(STATS_NAMES.len());
    (0..n).map(|i| (i, STATS_NAMES[i], reply.values[i]))
}

fn render_text(socket: &str, reply: &StatsReply) -> String {
    let mut out = format!("ringshim-stackd at {socket}\n");
    for (i, name, v) in values(reply) {
        if i == STATS_GAUGES {
            out.push_str("since start:\n");
        }
        let _ = writeln!(out, "  {name:<26} {v}");
    }
    out
}

fn render_json(socket: &str, reply: &StatsReply) -> String {
    let mut o = Object::new().str("stackd", socket);
    for (_, name, v) in values(reply) {
        o = o.num(name, v);
    }
    o.finish() + "\n"
}

fn render_prometheus(socket: &str, reply: &StatsReply) -> String {
    let socket = socket.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out = String::new();
    for (i, name, v) in values(reply) {
        let kind = if i < STATS_GAUGES { "gauge" } else { "counter" };
        let _ = writeln!(out, "# TYPE ringshim_stackd_{name} {kind}");
        let _ = writeln!(out, "ringshim_stackd_{name}{{socket=\"{socket}\"}} {v}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply() -> StatsReply {
        let mut r = StatsReply {
            count: STATS_NAMES.len() as u32,
            ..Default::default()
        };
        for (i, v) in r.values.iter_mut().enumerate() {
            *v = i as u64 * 10;
        }
        r
    }

    fn args(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_socket_comes_from_the_flag_then_the_environment_then_the_default() {
        let (s, f) = parse_args(args(&["--stackd", "/tmp/x.sock", "--json"]), None).unwrap();
        assert_eq!((s, f), (PathBuf::from("/tmp/x.sock"), Format::Json));
        let (s, _) = parse_args(args(&["--stackd"]), Some("/run/y.sock".into())).unwrap();
        assert_eq!(s, PathBuf::from("/run/y.sock"));
        let (s, f) = parse_args(args(&["--stackd", "--prometheus"]), None).unwrap();
        assert_eq!((s, f), (PathBuf::from(DEFAULT_SOCKET), Format::Prometheus));
        assert!(parse_args(args(&["--stackd", "--json", "--prometheus"]), None).is_err());
        assert!(parse_args(args(&["--stackd", "1234"]), None).is_err());
    }

    #[test]
    fn renderings_name_every_value_and_tell_gauges_from_counters() {
        let r = reply();
        let text = render_text("/s", &r);
        assert!(text.contains("  sessions_now               20\n"), "{text}");
        assert!(text.contains("since start:\n  apps_attached"), "{text}");
        let json = render_json("/s", &r);
        assert!(
            json.starts_with(r#"{"stackd":"/s","uptime_seconds":0,"apps_now":10"#),
            "{json}"
        );
        let prom = render_prometheus("/s", &r);
        assert!(
            prom.contains("# TYPE ringshim_stackd_listeners_now gauge\n"),
            "{prom}"
        );
        assert!(prom.contains("# TYPE ringshim_stackd_rx_frames counter\nringshim_stackd_rx_frames{socket=\"/s\"} 160\n"), "{prom}");
    }
}
