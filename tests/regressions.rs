//! Regression tests, each named after the bug it reproduces. Every program runs without
//! the shim (it must pass there, or the test itself is wrong) and with loopback routed
//! through the io_uring engine.

mod common;

use std::process::Command;

fn run_both(program: &str) {
    let exe = common::c_program(program);
    let plain = Command::new(&exe).output().expect("spawn");
    assert!(
        plain.status.success(),
        "{program} fails without the shim: {}",
        String::from_utf8_lossy(&plain.stderr)
    );
    if !common::require(common::io_uring_available(), "io_uring") {
        return;
    }
    let shimmed = common::shimmed(
        &exe,
        &[
            ("RINGSHIM_BACKEND", "uring"),
            ("RINGSHIM_KERNEL_NETS", "none"),
        ],
    )
    .output()
    .expect("spawn");
    assert!(
        shimmed.status.success(),
        "{program} fails under the shim (reproduce: LD_PRELOAD={} RINGSHIM_KERNEL_NETS=none {}):\n{}{}",
        common::shim_lib().display(),
        exe.display(),
        String::from_utf8_lossy(&shimmed.stdout),
        String::from_utf8_lossy(&shimmed.stderr)
    );
}

/// nginx over a veth stalled sending a 1 MiB file: sendfile() stopped short, and the
/// edge-triggered EPOLLOUT that should follow never came (readiness came from the shim's
/// empty send queue instead of the full kernel buffer).
#[test]
fn sendfile_et_backpressure_completes() {
    run_both("rg_sendfile_et");
}
