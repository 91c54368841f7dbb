//! Shared helpers of the black-box test suites: build the shim and the C test programs
//! once, spawn programs with and without `LD_PRELOAD`, and decide whether a test that
//! needs io_uring or root may skip (never under `CI=true`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Absolute path of `libringshim.so`: `$RINGSHIM_LIB`, or a fresh debug build.
pub fn shim_lib() -> PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        if let Ok(p) = std::env::var("RINGSHIM_LIB") {
            return PathBuf::from(p);
        }
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "ringshim", "--lib"])
            .current_dir(repo_root())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of the shim failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo_root().join("target"));
        let lib = target.join("debug").join("libringshim.so");
        assert!(lib.exists(), "{} missing", lib.display());
        lib
    })
    .clone()
}

/// Compiles `tests/progs/<name>.c` (once per test binary) and returns the executable.
pub fn c_program(name: &str) -> PathBuf {
    c_program_with(name, "", &[])
}

/// Like [`c_program`], with extra compiler flags (they come last, so `-O2` overrides the
/// default `-O1`). The executable is named `<name><variant>` so that differently-compiled
/// builds of one source never overwrite each other.
pub fn c_program_with(name: &str, variant: &str, extra_flags: &[&str]) -> PathBuf {
    // Tests of one binary run on parallel threads: serialise the up-to-date check and the
    // compile so two threads never write the same temporary file.
    static BUILD_LOCK: Mutex<()> = Mutex::new(());
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let out_dir = repo_root().join("target").join("test-progs");
    std::fs::create_dir_all(&out_dir).unwrap();
    let progs = repo_root().join("tests").join("progs");
    let src = progs.join(format!("{name}.c"));
    let exe = out_dir.join(format!("{name}{variant}"));
    // A program is stale when it is older than its source or than any shared header in
    // tests/progs (the programs include them with #include "...").
    let src_time = std::fs::metadata(&src).and_then(|m| m.modified());
    let newest_header = std::fs::read_dir(&progs)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "h"))
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max();
    let fresh = match (src_time, std::fs::metadata(&exe).and_then(|m| m.modified())) {
        (Ok(s), Ok(built)) => built >= s && newest_header.is_none_or(|h| built >= h),
        _ => false,
    };
    if !fresh {
        // Build to a temporary name and rename, so parallel test binaries never run a
        // half-written executable.
        let tmp = out_dir.join(format!("{name}{variant}.{}.tmp", std::process::id()));
        let status = Command::new("cc")
            .args(["-O1", "-g", "-Wall", "-D_GNU_SOURCE", "-pthread"])
            .args(extra_flags)
            .arg("-o")
            .arg(&tmp)
            .arg(&src)
            .status()
            .expect("run cc");
        assert!(
            status.success(),
            "cc {} {:?} failed",
            src.display(),
            extra_flags
        );
        std::fs::rename(&tmp, &exe).unwrap();
    }
    exe
}

/// True when running in CI, where skipping an io_uring or namespace test is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// Skips (returns false) or, in CI, panics when a capability is missing.
pub fn require(capability_present: bool, what: &str) -> bool {
    if capability_present {
        return true;
    }
    if in_ci() {
        panic!("{what} is unavailable, and CI=true forbids skipping");
    }
    eprintln!("SKIP: {what} is unavailable on this host");
    false
}

/// Whether io_uring_setup works for this process.
pub fn io_uring_available() -> bool {
    io_uring::IoUring::new(8).is_ok()
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A command that runs `program` under the shim with the given extra environment.
pub fn shimmed(program: &Path, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("LD_PRELOAD", shim_lib());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// The environment configurations every preload test runs under: the plain kernel,
/// the shim on its kernel path, and the shim accelerating loopback.
pub const MODES: &[(&str, &[(&str, &str)])] = &[
    ("shim-default", &[]),
    (
        "shim-kernel-backend",
        &[
            ("RINGSHIM_BACKEND", "kernel"),
            ("RINGSHIM_KERNEL_NETS", "none"),
        ],
    ),
    (
        "shim-uring-loopback",
        &[
            ("RINGSHIM_BACKEND", "uring"),
            ("RINGSHIM_KERNEL_NETS", "none"),
        ],
    ),
];
