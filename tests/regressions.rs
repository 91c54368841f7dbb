//! Regression tests, each named after the bug it reproduces. Every program runs without
//! the shim (it must pass there, or the test itself is wrong) and with loopback routed
//! through the io_uring engine.

mod common;

use std::process::Command;

fn run_both(program: &str, extra_env: &[(&str, &str)]) {
    // Bounded: a regression that stalls must fail the test, not hang CI.
    let limit = std::time::Duration::from_secs(60);
    let exe = common::c_program(program);
    let plain = common::run_limited(Command::new(&exe), limit);
    assert!(
        plain.ok(),
        "{program} fails without the shim: {}",
        plain.describe()
    );
    if !common::require(common::io_uring_available(), "io_uring") {
        return;
    }
    let mut env = vec![
        ("RINGSHIM_BACKEND", "uring"),
        ("RINGSHIM_KERNEL_NETS", "none"),
    ];
    env.extend_from_slice(extra_env);
    let shimmed = common::run_limited(common::shimmed(&exe, &env), limit);
    assert!(
        shimmed.ok(),
        "{program} fails under the shim (reproduce: LD_PRELOAD={} RINGSHIM_KERNEL_NETS=none {}):\n{}",
        common::shim_lib().display(),
        exe.display(),
        shimmed.describe()
    );
}

/// nginx over a veth stalled sending a 1 MiB file: sendfile() stopped short, and the
/// edge-triggered EPOLLOUT that should follow never came (readiness came from the shim's
/// empty send queue instead of the full kernel buffer).
#[test]
fn sendfile_et_backpressure_completes() {
    run_both("rg_sendfile_et", &[]);
}

/// nginx with `sendfile on; tcp_nopush on;` took 44 ms per keepalive response: the
/// header and the body queued under TCP_CORK went out as two sends after the uncork,
/// and Nagle held the body for the client's delayed ACK.
#[test]
fn corked_response_leaves_in_one_segment() {
    run_both("rg_cork_split", &[]);
}

/// With RINGSHIM_SQPOLL=1 the ring built at load to probe io_uring had an SQ thread of
/// its own that no later ring attached to: two kernel threads polling instead of one.
#[test]
fn sqpoll_rings_share_one_kernel_thread() {
    run_both("rg_sqpoll_threads", &[("RINGSHIM_SQPOLL", "1")]);
}

/// An event-loop process that wrote its reply and called exit() lost the reply: it was
/// queued for the loop's next wait, and exit() runs no thread-exit destructors.
#[test]
fn reply_written_before_exit_reaches_the_peer() {
    run_both("rg_exit_flush", &[]);
}

/// nginx's binary upgrade (USR2) hands its listeners to the exec'd binary, whose shim
/// never saw them created: accept() passed through and every connection of the upgraded
/// server stayed on the kernel path although its workers carried the shim.
#[test]
fn inherited_listener_is_accelerated() {
    run_both("rg_inherited_listener", &[]);
}
