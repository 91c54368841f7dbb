#!/usr/bin/env bash
# THE test command: everything CI checks, in order, stopping at the first failure.
#
#   bash scripts/test.sh              all stages
#   bash scripts/test.sh STAGE...     only these (e.g. `bash scripts/test.sh build servers`)
#   bash scripts/test.sh --list       the stages
#
# Stages:
#   lint        shellcheck scripts/ and .ci/run (skipped with a note if not installed)
#   build       cargo build --release --workspace (the .so and the CLI the later stages use)
#   fmt         cargo fmt --all --check
#   clippy      cargo clippy --workspace --all-targets -- -D warnings
#   cargo-test  cargo test --workspace: unit, kernel, preload and differential tests
#   servers     scripts/test-servers.sh: redis, nginx, haproxy, mt_proxy with and without the shim
#   cpython     scripts/test-cpython.sh: CPython's socket suites with and without the shim
#
# Which libringshim.so: `cargo test` builds and uses the debug library (debug assertions
# and overflow checks catch more in the preload and differential tests); the servers and
# CPython stages use the release library from the build stage (what users run). Setting
# RINGSHIM_LIB=/abs/path/libringshim.so makes every stage use that file.
#
# Requirements: scripts/install-deps.sh (root; CI runs it first).
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

ALL_STAGES=(lint build fmt clippy cargo-test servers cpython)
DONE=() # "stage|seconds|result"

stage_lint() {
    if ! command -v shellcheck >/dev/null; then
        info "shellcheck not installed: skipped (apt-get install shellcheck)"
        return 0
    fi
    shellcheck -x "$RS_ROOT"/scripts/*.sh "$RS_ROOT"/scripts/lib/*.sh "$RS_ROOT/.ci/run"
    info "scripts are shellcheck-clean"
}
stage_build() { cargo build --release --workspace; }
stage_fmt() { cargo fmt --all --check; }
stage_clippy() { cargo clippy --workspace --all-targets -- -D warnings; }
stage_cargo-test() {
    if [[ -n "${RINGSHIM_LIB:-}" ]]; then
        info "RINGSHIM_LIB=$RINGSHIM_LIB (given by the caller)"
        timeout --kill-after=30 1200 cargo test --workspace
    else
        # tests/common builds target/debug/libringshim.so when RINGSHIM_LIB is unset.
        (unset RINGSHIM_LIB && timeout --kill-after=30 1200 cargo test --workspace)
    fi
}
stage_servers() { timeout --kill-after=30 900 bash "$RS_ROOT/scripts/test-servers.sh"; }
stage_cpython() { timeout --kill-after=30 1500 bash "$RS_ROOT/scripts/test-cpython.sh"; }

report() {
    local row name secs res total=0 pass=0 fail=0
    printf '\n%sStage durations%s\n' "$RS_B" "$RS_N"
    for row in "${DONE[@]}"; do
        IFS='|' read -r name secs res <<<"$row"
        printf '  %-12s %8ss  %s\n' "$name" "$secs" "$res"
        total="$(awk -v a="$total" -v b="$secs" 'BEGIN { printf "%.1f", a + b }')"
        if [[ "$res" == PASS ]]; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
    done
    printf '  %-12s %8ss\n' total "$total"
    log "stages: $pass passed, $fail failed"
}

run_stage() {
    local name="$1" t0 rc
    printf '\n%s======== %s ========%s\n' "$RS_B" "$name" "$RS_N"
    t0="$(now_s)"
    set +e
    ("stage_$name")
    rc=$?
    set -e
    if ((rc == 0)); then
        DONE+=("$name|$(elapsed "$t0")|PASS")
    else
        DONE+=("$name|$(elapsed "$t0")|FAIL (exit $rc)")
        printf '\n%s################################################################%s\n' "$RS_R" "$RS_N"
        printf '%s#  FAILED: stage "%s" (exit %s)%s\n' "$RS_R" "$name" "$rc" "$RS_N"
        printf '%s#  rerun it alone: bash scripts/test.sh %s%s\n' "$RS_R" "$name" "$RS_N"
        printf '%s################################################################%s\n' "$RS_R" "$RS_N"
        report
        exit 1
    fi
}

main() {
    local -a stages=("$@")
    local s
    if [[ "${1:-}" == --list ]]; then
        printf '%s\n' "${ALL_STAGES[@]}"
        return 0
    fi
    ((${#stages[@]} > 0)) || stages=("${ALL_STAGES[@]}")
    for s in "${stages[@]}"; do
        declare -F "stage_$s" >/dev/null || die "unknown stage '$s' (stages: ${ALL_STAGES[*]})"
    done
    cd "$RS_ROOT"
    # An explicit library must be absolute: LD_PRELOAD and the Rust tests resolve a
    # relative one differently.
    if [[ -n "${RINGSHIM_LIB:-}" ]]; then
        RINGSHIM_LIB="$(realpath "$RINGSHIM_LIB")"
        export RINGSHIM_LIB
    fi
    # A fresh machine: what the stages need is installed first (idempotent, ~1 s when
    # everything is present). Without root the stages report what is missing.
    if ((EUID == 0)) && [[ "${RINGSHIM_SKIP_DEPS:-0}" != 1 ]]; then
        bash "$RS_ROOT/scripts/install-deps.sh" >/dev/null || die "scripts/install-deps.sh failed"
    fi
    log "ringshim tests: ${stages[*]}   ($(git -C "$RS_ROOT" rev-parse --short HEAD 2>/dev/null || echo 'no git'), CI=${CI:-unset})"
    for s in "${stages[@]}"; do
        run_stage "$s"
    done
    printf '\n%sAll stages passed.%s\n' "$RS_G" "$RS_N"
    report
}

main "$@"
