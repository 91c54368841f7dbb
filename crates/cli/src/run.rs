//! `ringshim run`: validate the configuration the library will see, put the library
//! first in LD_PRELOAD and exec the command.
//!
//! Validation uses the library's own parser ([`Config::parse`]) on exactly the
//! environment the child gets, so `run` refuses precisely what the library would reject
//! (the library itself would only log one line and stay on the kernel path, which an
//! operator easily misses).

use crate::args::{Arg, Args};
use crate::{Failure, Outcome};
use ringshim_common::config::{self, Config};
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

pub const LIBRARY_NAME: &str = "libringshim.so";

/// Install locations searched after the executable's own directory.
const SYSTEM_LIBRARIES: &[&str] = &[
    "/usr/lib/ringshim/libringshim.so",
    "/usr/local/lib/ringshim/libringshim.so",
];

const BACKENDS: &[&str] = &["uring", "ustack", "kernel"];

#[derive(Debug, Default)]
struct RunArgs {
    profile: Option<String>,
    backend: Option<String>,
    command: Vec<OsString>,
}

pub fn main(argv: Vec<OsString>) -> Outcome {
    let run = parse_args(argv)?;
    let vars = child_variables(run.profile.as_deref(), run.backend.as_deref(), |k| {
        std::env::var_os(k).is_some()
    })?;

    let (_, errors) = Config::parse(|k| vars.get(k).cloned().or_else(|| env_lossy(k)));
    if !errors.is_empty() {
        let mut lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        // The library would carry on without acceleration; the launcher is the one place
        // that can refuse before the server starts, so it does.
        lines.push(format!(
            "ringshim: not starting {}: fix the configuration above",
            run.command[0].to_string_lossy()
        ));
        return Err(Failure { code: 2, lines });
    }

    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf));
    let system: Vec<&Path> = SYSTEM_LIBRARIES.iter().map(Path::new).collect();
    let library = find_library(
        std::env::var_os("RINGSHIM_LIBRARY"),
        exe_dir.as_deref(),
        &system,
    )?;
    let preload = merge_preload(std::env::var_os("LD_PRELOAD").as_deref(), &library);

    let (program, args) = run
        .command
        .split_first()
        .expect("parse_args guarantees a command");
    let err = std::process::Command::new(program)
        .args(args)
        .envs(&vars)
        .env("LD_PRELOAD", preload)
        .exec();
    Err(Failure {
        code: 127,
        lines: vec![format!(
            "ringshim: cannot execute {}: {err}",
            program.to_string_lossy()
        )],
    })
}

/// Non-UTF-8 values are passed on lossily so the parser reports them instead of treating
/// the variable as unset.
fn env_lossy(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

fn parse_args(argv: Vec<OsString>) -> Result<RunArgs, Failure> {
    let mut args = Args::new(argv);
    let mut run = RunArgs::default();
    while let Some(arg) = args.next() {
        match arg {
            Arg::Flag(name, attached) if name == "--profile" || name == "-p" => {
                run.profile = Some(args.value("--profile", attached)?);
            }
            Arg::Flag(name, attached) if name == "--backend" || name == "-b" => {
                run.backend = Some(args.value("--backend", attached)?);
            }
            Arg::Flag(name, _) => {
                return Err(Failure::usage(format!(
                    "run: unknown option {name}; usage: {}",
                    usage_line()
                )));
            }
            Arg::EndOfFlags => {
                run.command = args.remaining();
                break;
            }
            Arg::Operand(word) => {
                run.command = std::iter::once(word).chain(args.remaining()).collect();
                break;
            }
        }
    }
    if run.command.is_empty() {
        return Err(Failure::usage(format!(
            "run: missing command; usage: {}",
            usage_line()
        )));
    }
    Ok(run)
}

fn usage_line() -> &'static str {
    "ringshim run [--profile NAME] [--backend uring|ustack|kernel] [--] CMD [ARGS...]"
}

/// The variables `run` sets in the child: the profile's, except those the user already
/// set (an explicit variable is a deliberate choice, a profile only a default), then
/// RINGSHIM_BACKEND from `--backend` (the flag is the most explicit of all).
fn child_variables(
    profile: Option<&str>,
    backend: Option<&str>,
    is_set: impl Fn(&str) -> bool,
) -> Result<BTreeMap<String, String>, Failure> {
    let mut vars = BTreeMap::new();
    if let Some(name) = profile {
        let Some(group) = config::profile(name) else {
            let known: Vec<&str> = config::PROFILES.iter().map(|(n, _, _)| *n).collect();
            return Err(Failure::usage(format!(
                "unknown profile {name:?}; accepted profiles: {}",
                known.join(", ")
            )));
        };
        for (k, v) in group {
            if !is_set(k) {
                vars.insert(k.to_string(), v.to_string());
            }
        }
    }
    if let Some(b) = backend {
        if !BACKENDS.contains(&b) {
            return Err(Failure::usage(format!(
                "unknown backend {b:?} for --backend; accepted values: {}",
                BACKENDS.join(", ")
            )));
        }
        vars.insert("RINGSHIM_BACKEND".to_string(), b.to_string());
    }
    Ok(vars)
}

/// Finds libringshim.so: `explicit` ($RINGSHIM_LIBRARY) must exist if given — falling
/// back silently would run a different build than the operator asked for. Otherwise the
/// executable's directory (cargo's target/<profile>/ holds both), `<exe>/../lib/ringshim/`
/// (an install prefix), then the system locations.
pub fn find_library(
    explicit: Option<OsString>,
    exe_dir: Option<&Path>,
    system: &[&Path],
) -> Result<PathBuf, Failure> {
    let found = if let Some(path) = explicit.filter(|p| !p.is_empty()) {
        let path = std::path::absolute(&path).map_err(|e| {
            Failure::usage(format!(
                "RINGSHIM_LIBRARY={:?}: {e}",
                path.to_string_lossy()
            ))
        })?;
        if !path.is_file() {
            return Err(Failure::usage(format!(
                "RINGSHIM_LIBRARY={:?} is not an existing file",
                path.display().to_string()
            )));
        }
        path
    } else {
        let mut candidates = Vec::new();
        if let Some(dir) = exe_dir {
            candidates.push(dir.join(LIBRARY_NAME));
            if let Some(prefix) = dir.parent() {
                candidates.push(prefix.join("lib/ringshim").join(LIBRARY_NAME));
            }
        }
        candidates.extend(system.iter().map(|p| p.to_path_buf()));
        match candidates.iter().find(|p| p.is_file()) {
            Some(p) => std::path::absolute(p).unwrap_or_else(|_| p.clone()),
            None => {
                let tried: Vec<String> =
                    candidates.iter().map(|p| p.display().to_string()).collect();
                return Err(Failure::usage(format!(
                    "cannot find {LIBRARY_NAME} (tried {}); set RINGSHIM_LIBRARY to its path",
                    tried.join(", ")
                )));
            }
        }
    };
    // ld.so splits LD_PRELOAD at spaces and colons and has no quoting.
    if found
        .as_os_str()
        .as_bytes()
        .iter()
        .any(|b| matches!(b, b' ' | b':'))
    {
        return Err(Failure::usage(format!(
            "library path {:?} contains a space or colon, which LD_PRELOAD cannot express",
            found.display().to_string()
        )));
    }
    Ok(found)
}

/// `library` first, then the existing entries in their order. Entries naming the same
/// file, or another copy of libringshim.so, are dropped: two copies of the shim in one
/// process would both run their constructors and fight over the same descriptors.
pub fn merge_preload(existing: Option<&OsStr>, library: &Path) -> OsString {
    let mut merged = library.as_os_str().to_os_string();
    let existing = existing.map(OsStr::as_bytes).unwrap_or_default();
    for entry in existing
        .split(|b| matches!(b, b' ' | b':'))
        .filter(|e| !e.is_empty())
    {
        let path = Path::new(OsStr::from_bytes(entry));
        if path == library
            || path.file_name() == Some(OsStr::new(LIBRARY_NAME))
            || same_file(path, library)
        {
            continue;
        }
        merged.push(":");
        merged.push(path.as_os_str());
    }
    merged
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A private directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("ringshim-run-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn file(&self, rel: &str) -> PathBuf {
            let path = self.0.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"").unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn os(s: &str) -> OsString {
        OsString::from(s)
    }

    #[test]
    fn preload_puts_library_first_and_keeps_others() {
        let lib = Path::new("/opt/rs/libringshim.so");
        assert_eq!(merge_preload(None, lib), os("/opt/rs/libringshim.so"));
        assert_eq!(
            merge_preload(Some(&os("")), lib),
            os("/opt/rs/libringshim.so")
        );
        assert_eq!(
            merge_preload(Some(&os("/a/liba.so /b/libb.so:libc.so")), lib),
            os("/opt/rs/libringshim.so:/a/liba.so:/b/libb.so:libc.so")
        );
    }

    #[test]
    fn preload_never_lists_the_shim_twice() {
        let lib = Path::new("/opt/rs/libringshim.so");
        let merged = merge_preload(
            Some(&os(
                "/a/liba.so:/opt/rs/libringshim.so  /usr/lib/ringshim/libringshim.so",
            )),
            lib,
        );
        assert_eq!(merged, os("/opt/rs/libringshim.so:/a/liba.so"));
    }

    #[test]
    fn preload_drops_another_name_for_the_same_file() {
        let tmp = TempDir::new("samefile");
        let real = tmp.file("real/libshim-build.so");
        let link = tmp.0.join("link.so");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let merged = merge_preload(Some(link.as_os_str()), &real);
        assert_eq!(merged, real.as_os_str());
    }

    #[test]
    fn library_from_environment_must_exist() {
        let tmp = TempDir::new("explicit");
        let lib = tmp.file("custom.so");
        assert_eq!(
            find_library(Some(lib.clone().into()), None, &[]).unwrap(),
            lib
        );
        let missing = tmp.0.join("missing.so");
        let err = find_library(Some(missing.into()), Some(&tmp.0), &[&lib]).unwrap_err();
        assert_eq!(err.code, 2);
        assert!(err.lines[0].contains("RINGSHIM_LIBRARY"), "{:?}", err.lines);
    }

    #[test]
    fn relative_library_from_environment_becomes_absolute() {
        let found = find_library(Some(os("Cargo.toml")), None, &[]).unwrap();
        assert!(found.is_absolute());
        assert!(found.ends_with("Cargo.toml"));
    }

    #[test]
    fn library_lookup_order() {
        let tmp = TempDir::new("order");
        let bin = tmp.0.join("prefix/bin");
        std::fs::create_dir_all(&bin).unwrap();
        let system = tmp.file("sys/libringshim.so");
        let later = tmp.file("sys2/libringshim.so");
        let systems = [system.as_path(), later.as_path()];

        assert_eq!(find_library(None, Some(&bin), &systems).unwrap(), system);
        let installed = tmp.file("prefix/lib/ringshim/libringshim.so");
        assert_eq!(find_library(None, Some(&bin), &systems).unwrap(), installed);
        let beside = tmp.file("prefix/bin/libringshim.so");
        assert_eq!(find_library(None, Some(&bin), &systems).unwrap(), beside);
        // An empty RINGSHIM_LIBRARY counts as unset.
        assert_eq!(
            find_library(Some(os("")), Some(&bin), &systems).unwrap(),
            beside
        );
    }

    #[test]
    fn no_library_anywhere_is_exit_2_naming_the_places() {
        let tmp = TempDir::new("none");
        let absent = tmp.0.join("nope/libringshim.so");
        let err = find_library(None, Some(&tmp.0), &[&absent]).unwrap_err();
        assert_eq!(err.code, 2);
        assert!(
            err.lines[0].contains("nope/libringshim.so"),
            "{:?}",
            err.lines
        );
    }

    #[test]
    fn library_path_with_colon_is_refused() {
        let tmp = TempDir::new("colon");
        let lib = tmp.file("a:b/libringshim.so");
        assert_eq!(
            find_library(Some(lib.into()), None, &[]).unwrap_err().code,
            2
        );
    }

    #[test]
    fn explicit_variables_win_over_the_profile_and_flag_wins_over_all() {
        let vars = child_variables(Some("throughput"), Some("kernel"), |k| {
            k == "RINGSHIM_SQPOLL"
        })
        .unwrap();
        assert!(!vars.contains_key("RINGSHIM_SQPOLL"));
        assert_eq!(vars["RINGSHIM_BUF_SIZE"], "65536");
        assert_eq!(vars["RINGSHIM_BACKEND"], "kernel");
        let vars = child_variables(None, Some("ustack"), |_| true).unwrap();
        assert_eq!(vars["RINGSHIM_BACKEND"], "ustack");
    }

    #[test]
    fn unknown_profile_and_backend_are_usage_errors() {
        let err = child_variables(Some("turbo"), None, |_| false).unwrap_err();
        assert_eq!(err.code, 2);
        assert!(
            err.lines[0].contains("latency, throughput"),
            "{:?}",
            err.lines
        );
        let err = child_variables(None, Some("dpdk"), |_| false).unwrap_err();
        assert!(
            err.lines[0].contains("uring, ustack, kernel"),
            "{:?}",
            err.lines
        );
    }

    #[test]
    fn command_starts_at_first_operand_or_after_double_dash() {
        let run = parse_args(vec![
            os("-p"),
            os("latency"),
            os("nginx"),
            os("-g"),
            os("daemon off;"),
        ])
        .unwrap();
        assert_eq!(run.profile.as_deref(), Some("latency"));
        assert_eq!(run.command, vec![os("nginx"), os("-g"), os("daemon off;")]);
        let run = parse_args(vec![os("--backend=kernel"), os("--"), os("--weird-name")]).unwrap();
        assert_eq!(run.command, vec![os("--weird-name")]);
        assert_eq!(
            parse_args(vec![os("--profile"), os("latency")])
                .unwrap_err()
                .code,
            2
        );
        assert_eq!(
            parse_args(vec![os("--frobnicate"), os("x")])
                .unwrap_err()
                .code,
            2
        );
    }
}
