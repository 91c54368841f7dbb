//! RINGSHIM_BALANCE=exact: a multi-threaded server with one SO_REUSEPORT listener per
//! worker thread (tests/progs/bl_reuseport.c). Without the shim the kernel's hash
//! spreads connections as it likes; with exact balancing every worker gets the same
//! share, and workers emptied by closes get the next connections.

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
