#!/usr/bin/env bash
# A one-minute tour: an unmodified redis-server under ringshim, a short benchmark, and
# what the shim intercepted and where it routed the sockets.
#
#   bash scripts/demo.sh
#
# Loopback is normally kept on the kernel stack; the demo sets RINGSHIM_KERNEL_NETS=none
# so the benchmark's 127.0.0.1 traffic goes through the shim. Nothing leaves the machine.
# Needs: cargo, redis-server, redis-tools (bash scripts/install-deps.sh installs them).
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

WORK=""
REDIS_PID=""

cleanup() {
    local rc=$?
    stop_all
    # The counter page of our server, if the shim left one (it cannot remove it itself
    # when the process ends by a signal).
    if [[ -n "$REDIS_PID" ]]; then rm -f "${RINGSHIM_STATS_DIR:-/dev/shm}/ringshim.$REDIS_PID"; fi
    [[ -n "$WORK" ]] && rm -rf "$WORK"
    exit "$rc"
}

# cli_runs: true when the built CLI's `run` really execs the command with the shim
# preloaded (an early stub of the CLI may accept anything and do nothing).
cli_runs() {
    [[ -x "$RS_CLI" ]] || return 1
    local out
    # shellcheck disable=SC2016 # expanded by the inner sh
    out="$(timeout 10 "$RS_CLI" run -- sh -c 'printf "%s" "$LD_PRELOAD"' 2>/dev/null)" || return 1
    [[ "$out" == *libringshim* ]]
}

main() {
    cd "$RS_ROOT"
    if ((EUID == 0)) && [[ "${RINGSHIM_SKIP_DEPS:-0}" != 1 ]]; then
        bash "$RS_ROOT/scripts/install-deps.sh" >/dev/null || die "scripts/install-deps.sh failed"
    fi
    log "${RS_B}ringshim demo${RS_N}: redis-server, unmodified, with its TCP routed through ringshim"
    require_cmd cargo redis-server redis-cli redis-benchmark

    WORK="$(mktemp -d /tmp/ringshim-demo.XXXXXX)"
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    section "1. Build (release)"
    # Compiler chatter only if the build fails.
    cargo build --release --workspace --quiet >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; die "cargo build failed"; }
    require_lib
    info "library: ${RS_LIB#"$RS_ROOT"/}"

    section "2. Start redis-server under the shim"
    local port
    port="$(free_port "")"
    export RINGSHIM_KERNEL_NETS=none RINGSHIM_LOG=info
    local -a redis=(redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no
        --daemonize no --dir "$WORK" --logfile '')
    local shown
    shown="$(printf '%q ' "${redis[@]}")"
    if cli_runs; then
        info "\$ RINGSHIM_KERNEL_NETS=none RINGSHIM_LOG=info target/release/ringshim run -- $shown"
        start_bg "$WORK/redis.log" "$RS_CLI" run -- "${redis[@]}"
    else
        info "(the ringshim CLI cannot 'run' yet: preloading the library directly)"
        info "\$ LD_PRELOAD=${RS_LIB#"$RS_ROOT"/} RINGSHIM_KERNEL_NETS=none RINGSHIM_LOG=info $shown"
        start_bg "$WORK/redis.log" env LD_PRELOAD="$RS_LIB" "${redis[@]}"
    fi
    wait_tcp 127.0.0.1 "$port" "$RS_LAST_PID" 15 || { cat "$WORK/redis.log"; die "redis-server did not start"; }
    # Redis says its own PID (the launcher may not be the server process).
    REDIS_PID="$(redis-cli -p "$port" INFO server | tr -d '\r' | awk -F: '$1 == "process_id" { print $2 }')"
    [[ -n "$REDIS_PID" ]] || REDIS_PID=$RS_LAST_PID
    if shim_loaded "$REDIS_PID"; then
        info "redis-server is up: pid $REDIS_PID, 127.0.0.1:$port, libringshim.so mapped into it"
    else
        die "redis-server (pid $REDIS_PID) runs WITHOUT libringshim.so mapped: the preload did not happen"
    fi

    section "3. Benchmark: redis-benchmark -n 50000 -c 50 -d 1024 -t set,get"
    timeout 180 redis-benchmark -h 127.0.0.1 -p "$port" -q -n 50000 -c 50 -d 1024 -t set,get 2>&1 |
        tr '\r' '\n' | grep -E 'requests per second|rror' | sed 's/^/  /'

    section "4. What the shim intercepted and routed (pid $REDIS_PID)"
    if cli_has stat; then
        info "\$ ringshim stat $REDIS_PID"
    fi
    show_stats "$REDIS_PID" "redis-server"
    if grep -qi ringshim "$WORK/redis.log"; then
        log "  -- the shim's log (RINGSHIM_LOG=info) --"
        grep -i ringshim "$WORK/redis.log" | head -n 20 | sed 's/^/     /'
    else
        info "(the shim logged nothing at info level)"
    fi

    section "5. Stop redis-server (pid $REDIS_PID)"
    stop_all
    info "stopped. Try it on your own server:"
    info "  ringshim run -- nginx -g 'daemon off;'     or   LD_PRELOAD=$RS_LIB <your server>"
}

main "$@"
