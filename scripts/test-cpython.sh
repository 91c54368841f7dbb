#!/usr/bin/env bash
# Conformance: CPython's own socket suites, run once without the shim and once with it
# (LD_PRELOAD, RINGSHIM_KERNEL_NETS=none so loopback is routed through the shim,
# RINGSHIM_BACKEND=uring). Fails if any test that passed without the shim fails, errors,
# or does not report (crashed/timed-out worker) with it.
#
#   bash scripts/test-cpython.sh
#
# Suites: test_socket test_selectors test_epoll test_asyncio.{test_streams,test_events,
# test_sock_lowlevel} in one regrtest run (-j2), and test_socketserver on its own with
# `-u network` (it only uses localhost; no other module gets that resource, some would
# reach out to internet hosts).
#
# Tests that fail with the shim are run again with it (regrtest --matchfile, at most 50);
# one that then passes is reported as FLAKY but does not fail the run, unless
# CPYTHON_STRICT=1. A module that hangs past --timeout or crashes reports nothing: its
# tests count as failures, and the log tells where it hung.
#
# Environment: PYTHON (interpreter; default python3 on PATH, resolved to the real
# executable), RINGSHIM_LIB (default target/release/libringshim.so), CPYTHON_STRICT=1.
# Logs, junit XML, shim logs and counter pages: target/cpython-logs/.
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

LOGDIR="$RS_ROOT/target/cpython-logs"
MAIN_TESTS=(test_socket test_selectors test_epoll
    test_asyncio.test_streams test_asyncio.test_events test_asyncio.test_sock_lowlevel)
NET_TESTS=(test_socketserver)
# The VSOCK test hangs forever in accept() on these VMs, with or without a preload.
# Given after any --matchfile: regrtest applies its filters last-first, and an --ignore
# given before a --matchfile would let every non-ignored test through.
# --timeout bounds each test *module* (regrtest kills a worker whose module runs longer and
# loses that module's results): test_socket, the slowest, takes 35-65 s on the 2-core CI.
COMMON_ARGS=(--timeout 180 --ignore '*ThreadedVSOCKSocketStreamTest*')
# Seconds for one whole regrtest run: 6 modules on 2 workers, even if three of them hang
# until --timeout, fit; the stage stays well inside CI's time when the shim is broken.
OUTER_TIMEOUT=600
RERUN_TIMEOUT=300
RERUN_MAX=50 # more failures than this are not flakiness: no rerun

PY=""
TIMES=()

# regrtest NAME MODE ARGS...: one `python -m test` run; MODE is kernel or shim. Writes
# $LOGDIR/NAME-MODE.{log,xml}. regrtest's own exit status is reported, not fatal: the
# junit comparison decides.
regrtest() {
    local name="$1" mode="$2" t0 rc out
    shift 2
    out="$LOGDIR/$name-$mode"
    local -a envv
    if [[ "$mode" == shim ]]; then
        mkdir -p "$LOGDIR/shim-logs" "$LOGDIR/stats"
        # The shim's own log lines go to files, not to the tests' stderr: several tests
        # assert on a child interpreter's exact stderr.
        envv=(LD_PRELOAD="$RS_LIB" RINGSHIM_KERNEL_NETS=none RINGSHIM_BACKEND=uring
            RINGSHIM_LOG_FILE="$LOGDIR/shim-logs/shim.%p.log" RINGSHIM_STATS_DIR="$LOGDIR/stats")
    else
        envv=(-u LD_PRELOAD)
    fi
    # regrtest writes temporary directories into its working directory.
    mkdir -p "$LOGDIR/cwd-$name-$mode"
    log "  python -m test $* ($mode) > ${out#"$RS_ROOT"/}.log"
    t0="$(now_s)"
    set +e
    # env --default-signal=INT: a Python started from a non-interactive shell inherits
    # SIGINT ignored, and some asyncio tests then spin forever. </dev/null: no tty games.
    (cd "$LOGDIR/cwd-$name-$mode" &&
        timeout --kill-after=30 "${LIMIT:-$OUTER_TIMEOUT}" env --default-signal=INT "${envv[@]}" \
            "$PY" -m test --junit-xml "$out.xml" "$@" "${COMMON_ARGS[@]}" >"$out.log" 2>&1 </dev/null)
    rc=$?
    set -e
    TIMES+=("$name $mode|$(elapsed "$t0")|$rc")
    case $rc in
        0) info "-> all passed ($(elapsed "$t0")s)" ;;
        124 | 137) warn "$name ($mode) hit the outer timeout of ${LIMIT:-$OUTER_TIMEOUT}s" ;;
        *) info "-> regrtest exit $rc ($(elapsed "$t0")s): $(grep -E '^(Result|[0-9]+ tests? (failed|crashed)|.* failed:?$)' "$out.log" | tail -3 | xargs)" ;;
    esac
}

# ids_in FILE MODULE...: true if FILE lists a test id of one of the modules.
ids_in() {
    local f="$1" m
    shift
    for m in "$@"; do
        grep -qF "test.$m." "$f" && return 0
    done
    return 1
}

# repro_hint FILE [module]: a command that runs the first listed test alone with the
# shim (or, with `module`, its whole module).
repro_hint() {
    local id m mod=""
    id="$(head -n 1 "$1")"
    for m in "${MAIN_TESTS[@]}" "${NET_TESTS[@]}"; do
        [[ "$id" == "test.$m."* ]] && mod="$m"
    done
    local net=""
    [[ "$mod" == test_socketserver ]] && net="-u network "
    local match="-m $id "
    [[ "${2:-}" == module ]] && match=""
    printf 'env --default-signal=INT LD_PRELOAD=%s RINGSHIM_KERNEL_NETS=none RINGSHIM_BACKEND=uring %s -m test -v --timeout 180 --ignore '\''*ThreadedVSOCKSocketStreamTest*'\'' %s%s%s' \
        "$RS_LIB" "$PY" "$net" "$match" "${mod:-MODULE}"
}

main() {
    require_cmd timeout env python3
    require_lib
    PY="$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')"
    "$PY" -c 'import test.test_socket, test.libregrtest' 2>/dev/null ||
        die "$PY lacks CPython's test package: run 'bash scripts/install-deps.sh'"
    rm -rf "$LOGDIR"
    mkdir -p "$LOGDIR"
    log "interpreter: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"
    log "shim:        $RS_LIB"
    log "logs:        ${LOGDIR#"$RS_ROOT"/}/"

    # ld.so only warns about an LD_PRELOAD it cannot load and runs the program anyway:
    # make sure the interpreter really gets the shim, or the comparison means nothing.
    env LD_PRELOAD="$RS_LIB" "$PY" -c 'import sys; sys.exit(0 if "libringshim" in open("/proc/self/maps").read() else 1)' ||
        die "$PY does not load $RS_LIB through LD_PRELOAD"

    # Sequential runs, each with -j2: the machine has 2 cores, and timing-sensitive tests
    # must not compete with another whole suite.
    section "Without the shim"
    regrtest main kernel -j2 "${MAIN_TESTS[@]}"
    regrtest net kernel -u network "${NET_TESTS[@]}"
    section "With the shim (RINGSHIM_KERNEL_NETS=none, RINGSHIM_BACKEND=uring)"
    regrtest main shim -j2 "${MAIN_TESTS[@]}"
    regrtest net shim -u network "${NET_TESTS[@]}"

    local cmp="$RS_ROOT/scripts/lib/junit_compare.py"
    local -a base=("$LOGDIR/main-kernel.xml" "$LOGDIR/net-kernel.xml")
    local -a shim=("$LOGDIR/main-shim.xml" "$LOGDIR/net-shim.xml")
    local -a rerun=() strict=()
    [[ "${CPYTHON_STRICT:-0}" == 1 ]] && strict=(--strict)
    "$PY" "$cmp" --base "${base[@]}" --shim "${shim[@]}" --failing-out "$LOGDIR/rerun.txt" --no-report
    local nreg
    nreg="$(wc -l <"$LOGDIR/rerun.txt")"
    if ((nreg > RERUN_MAX)); then
        section "$nreg tests failed with the shim: more than $RERUN_MAX, no rerun"
    elif ((nreg > 0)); then
        section "Running the $nreg failed test(s) again with the shim"
        # Each group again with the same flags, if it has a regressed test.
        if ids_in "$LOGDIR/rerun.txt" "${MAIN_TESTS[@]}"; then
            LIMIT=$RERUN_TIMEOUT regrtest main-rerun shim -j2 --matchfile "$LOGDIR/rerun.txt" "${MAIN_TESTS[@]}"
            rerun+=("$LOGDIR/main-rerun-shim.xml")
        fi
        if ids_in "$LOGDIR/rerun.txt" "${NET_TESTS[@]}"; then
            LIMIT=$RERUN_TIMEOUT regrtest net-rerun shim -u network --matchfile "$LOGDIR/rerun.txt" "${NET_TESTS[@]}"
            rerun+=("$LOGDIR/net-rerun-shim.xml")
        fi
        rerun=(--rerun "${rerun[@]}")
    fi

    section "Timings"
    local row n secs rc
    for row in "${TIMES[@]}"; do
        IFS='|' read -r n secs rc <<<"$row"
        printf '  %-22s %7ss  regrtest exit %s\n' "$n" "$secs" "$rc"
    done
    local nlogs
    nlogs="$(find "$LOGDIR/shim-logs" -type f -size +0 2>/dev/null | wc -l)"
    if ((nlogs > 0)); then
        log "  non-empty shim log files: $nlogs (${LOGDIR#"$RS_ROOT"/}/shim-logs/); most frequent lines:"
        cat "$LOGDIR"/shim-logs/* | sed -E 's/[0-9]+/N/g' | sort | uniq -c | sort -rn | head -5 | sed 's/^/    /'
    fi

    section "Comparison"
    if ! "$PY" "$cmp" --base "${base[@]}" --shim "${shim[@]}" "${rerun[@]}" "${strict[@]}" \
        --failing-out "$LOGDIR/failed-with-shim.txt" \
        --logs "$LOGDIR/main-shim.log" "$LOGDIR/net-shim.log"; then
        log ""
        # A test that reported a failure reproduces alone; one of a hung module may
        # need its module around it (the summary names where it hung).
        if [[ -s "$LOGDIR/rerun.txt" ]]; then
            log "Reproduce one: (cd /tmp && $(repro_hint "$LOGDIR/rerun.txt"))"
        else
            log "Reproduce: (cd /tmp && $(repro_hint "$LOGDIR/failed-with-shim.txt" module))"
        fi
        die "CPython tests that pass without the shim fail with it (logs: ${LOGDIR#"$RS_ROOT"/}/)"
    fi
}

main "$@"
