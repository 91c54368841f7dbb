# shellcheck shell=bash
# Shared helpers of the ringshim scripts: logging, the shim's location, free ports,
# background processes that are always ended by PID, and the live-counter helpers.
#
# Sourced, never executed. Callers run with `set -euo pipefail`.

# Repository root: this file lives in scripts/lib/.
RS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export RS_ROOT

# The library the server and CPython tests preload: the release build (what users run),
# unless the caller points RINGSHIM_LIB somewhere else.
RS_LIB="${RINGSHIM_LIB:-$RS_ROOT/target/release/libringshim.so}"
RS_CLI="${RINGSHIM_CLI:-$RS_ROOT/target/release/ringshim}"

# Colours only on a terminal (CI logs stay plain).
if [[ -t 1 ]]; then
    RS_B=$'\e[1m' RS_R=$'\e[31m' RS_G=$'\e[32m' RS_Y=$'\e[33m' RS_N=$'\e[0m'
else
    RS_B='' RS_R='' RS_G='' RS_Y='' RS_N=''
fi

log() { printf '%s\n' "$*"; }
info() { printf '  %s\n' "$*"; }
warn() { printf '%sWARNING:%s %s\n' "$RS_Y" "$RS_N" "$*" >&2; }
section() { printf '\n%s==> %s%s\n' "$RS_B" "$*" "$RS_N"; }
ok() { printf '  %sok%s   %s\n' "$RS_G" "$RS_N" "$*"; }
die() {
    printf '%sFAILED:%s %s\n' "$RS_R" "$RS_N" "$*" >&2
    exit 1
}

is_ci() { [[ "${CI:-}" == "true" || "${CI:-}" == "1" ]]; }

require_cmd() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || die "'$c' is not installed: run 'bash scripts/install-deps.sh' (as root)"
    done
}

require_lib() {
    [[ -f "$RS_LIB" ]] || die "$RS_LIB does not exist: build it with 'cargo build --release --workspace'"
    [[ "$RS_LIB" == /* ]] || die "RINGSHIM_LIB must be an absolute path (LD_PRELOAD resolves relative names differently): $RS_LIB"
}

# ---------------------------------------------------------------------------------------
# Ports

# free_port [NETNS]: prints a TCP port nobody listens on (in NETNS if given). Picked at
# random below the kernel's ephemeral range (32768+), so a client's outgoing connection
# can never already hold it.
free_port() {
    local ns="${1:-}" p i
    for ((i = 0; i < 200; i++)); do
        p=$((10000 + RANDOM % 22000))
        # (No `| grep -q`: with pipefail, grep exiting first could SIGPIPE ss.)
        if [[ -n "$ns" ]]; then
            [[ -n "$(ip netns exec "$ns" ss -Htln "sport = :$p")" ]] || { echo "$p"; return 0; }
        else
            [[ -n "$(ss -Htln "sport = :$p")" ]] || { echo "$p"; return 0; }
        fi
    done
    die "no free TCP port found"
}

# wait_tcp HOST PORT PID [SECONDS] [NETNS]: waits until HOST:PORT accepts connections,
# failing early (with the log hint) if PID died meanwhile.
wait_tcp() {
    local host="$1" port="$2" pid="$3" secs="${4:-15}" ns="${5:-}" i
    local -a pre=()
    [[ -n "$ns" ]] && pre=(ip netns exec "$ns")
    for ((i = 0; i < secs * 10; i++)); do
        if ! alive "$pid"; then
            echo "process $pid exited before listening on $host:$port" >&2
            return 1
        fi
        # shellcheck disable=SC2016 # $0/$1 are expanded by the inner bash
        if "${pre[@]}" timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "nothing listens on $host:$port after ${secs}s" >&2
    return 1
}

# ---------------------------------------------------------------------------------------
# Background processes. Everything a script starts is recorded here and ended by PID in
# the cleanup trap: never pkill/killall, which could hit the machine's other processes.

RS_PIDS=()

# start_bg LOGFILE CMD...: runs CMD in the background (stdout+stderr to LOGFILE) and
# sets RS_LAST_PID. Commands that exec (env, ip netns exec, timeout --foreground are not
# used here) keep that PID, so it is the server's own PID.
start_bg() {
    local logf="$1"
    shift
    "$@" >"$logf" 2>&1 </dev/null &
    RS_LAST_PID=$!
    RS_PIDS+=("$RS_LAST_PID")
}

# alive PID: true while PID runs (a zombie, an exited child not yet reaped, does not count).
alive() {
    local st
    st="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
    [[ -n "$st" && "$st" != Z* ]]
}

# stop_pid PID [GRACE_SECONDS]: SIGTERM, wait for the exit, SIGKILL after the grace period.
stop_pid() {
    local pid="$1" grace="${2:-10}" i
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < grace * 10; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            warn "process $pid ignored SIGTERM for ${grace}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    # Reap it if it is our child (no-op otherwise).
    wait "$pid" 2>/dev/null || true
}

# stop_all: ends every recorded process, newest first.
stop_all() {
    local i
    for ((i = ${#RS_PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${RS_PIDS[$i]}" 5
    done
    RS_PIDS=()
}

# children PID: PIDs of PID's direct children (nginx workers), space separated.
children() {
    ps -o pid= --ppid "$1" 2>/dev/null | tr -s ' \n' ' ' | sed 's/^ //; s/ $//'
}

# shim_loaded PID: true when libringshim is mapped into PID (the preload really happened).
shim_loaded() {
    grep -q 'libringshim' "/proc/$1/maps" 2>/dev/null
}

# ---------------------------------------------------------------------------------------
# Live counters (`ringshim stat PID`, or the stats page read directly).

# cli_has SUBCOMMAND: true when the built CLI lists SUBCOMMAND in its help. The CLI is
# being written; an early stub that accepts everything silently must not count.
cli_has() {
    [[ -x "$RS_CLI" ]] || return 1
    local help
    help="$(timeout 5 "$RS_CLI" --help 2>&1)" || true
    grep -qw -- "$1" <<<"$help"
}

# show_stats PID [LABEL]: informational; never fails.
show_stats() {
    local pid="$1" label="${2:-pid $1}" out=""
    log "  -- live counters of $label (pid $pid) --"
    if cli_has stat; then
        if out="$(timeout 5 "$RS_CLI" stat "$pid" 2>&1)" && [[ -n "$out" ]]; then
            printf '%s\n' "$out" | sed 's/^/     /'
            return 0
        fi
        info "ringshim stat $pid: ${out:-no output} (falling back to the stats page)"
    fi
    if out="$(python3 "$RS_ROOT/scripts/lib/statpage.py" --pid "$pid" 2>&1)"; then
        printf '%s\n' "$out" | sed 's/^/     /'
    else
        info "(no counters: $out)"
    fi
    return 0
}

# counter_value PIDS NAME: prints the sum of counter NAME over the comma-separated PIDS
# (an nginx master and its workers each have their own page). Fails if unreadable.
# A process publishes its page when it first tracks a socket, so a worker that never got
# a connection has none: such pids count as 0, and only "no page at all" is an error.
counter_value() {
    local pids="$1" name="$2" pid total=0 v json found=0
    local -a list
    IFS=',' read -r -a list <<<"$pids"
    for pid in "${list[@]}"; do
        v=""
        if cli_has stat && json="$(timeout 5 "$RS_CLI" stat "$pid" --json 2>/dev/null)"; then
            v="$(python3 "$RS_ROOT/scripts/lib/statpage.py" --from-json "$name" <<<"$json" 2>/dev/null)" || v=""
        fi
        if [[ -z "$v" ]]; then
            v="$(python3 "$RS_ROOT/scripts/lib/statpage.py" --pid "$pid" --counter "$name" 2>/dev/null)" || continue
        fi
        found=1
        total=$((total + v))
    done
    ((found)) || return 1
    echo "$total"
}

# assert_counter PIDS NAME MIN: fails unless counter NAME summed over PIDS is >= MIN.
# Adding a counter check to a scenario is this one line, e.g.
#   assert_counter "$pid" routed_accelerated 1
assert_counter() {
    local pids="$1" name="$2" min="$3" v
    v="$(counter_value "$pids" "$name")" || { echo "assert_counter: cannot read $name of $pids" >&2; return 1; }
    if ((v < min)); then
        echo "assert_counter: $name of $pids is $v, expected >= $min" >&2
        return 1
    fi
    ok "counter $name of $pids = $v (>= $min)"
}

# ---------------------------------------------------------------------------------------
# Timing

# now_s: seconds since the epoch with millisecond precision.
now_s() { date +%s.%N | cut -c1-14; }
# elapsed START: seconds since START (from now_s), one decimal.
elapsed() { awk -v a="$1" -v b="$(now_s)" 'BEGIN { printf "%.1f", b - a }'; }
