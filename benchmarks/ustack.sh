#!/usr/bin/env bash
# benchmarks/ustack.sh - the same unmodified servers on three paths, in paired rounds:
#   K  kernel, no shim
#   U  shim, RINGSHIM_BACKEND=uring (the default)
#   S  shim, RINGSHIM_BACKEND=ustack, through ringshim-stackd (smoltcp on a TAP device)
#
#   bash benchmarks/ustack.sh            # full run, 5 rounds (~10-15 min), as root
#   bash benchmarks/ustack.sh --quick    # smoke (<= 2 min): echo c=100, redis c=50, nginx c=64, 2 rounds
#   bash benchmarks/ustack.sh --only echo,redis,nginx [--rounds N] [--keep]
#
# Writes benchmarks/RESULTS-ustack.md (--quick: benchmarks/out-ustack/RESULTS-ustack.md) and
# the per-run data and logs in benchmarks/out-ustack/ (not committed). See benchmarks/README.md.
#
# Topology (two namespaces made here, TEST-NET addresses only; nothing leaves them):
#   rsub-PID-s  the server (every path); stackd (S)      rsub-PID-c  the load generator
#   K, U: veth pair     198.51.100.2 (server ns)  <->  198.51.100.1 (client ns)
#   S:    TAP rsubPID   203.0.113.2 (smoltcp, in stackd)  <->  203.0.113.1 (the TAP's kernel
#         side, moved into the client ns, so the client's namespace has the same shape)
# Two subnets so both devices can stay up for the whole run without routing ambiguity.
set -u -o pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=benchmarks/lib.sh
source "$BENCH/lib.sh"
ROOT="$(dirname "$BENCH")"
OUT="$BENCH/out-ustack"
BIN="$BENCH/target/bin"
LIB="$ROOT/target/release/libringshim.so"
STACKD="$ROOT/target/release/ringshim-stackd"
RSCLI="$ROOT/target/release/ringshim"

QUICK=0
ONLY="echo,redis,nginx"
ROUNDS=""
KEEP=0
while (($#)); do
    case "$1" in
    --quick) QUICK=1 ;;
    --only) ONLY="$2"; shift ;;
    --rounds) ROUNDS="$2"; shift ;;
    --keep) KEEP=1 ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "ustack.sh: unknown option '$1' (--quick, --only LIST, --rounds N, --keep)" >&2; exit 2 ;;
    esac
    shift
done

if ((QUICK)); then
    : "${ROUNDS:=2}"
    RETRIES=${RETRIES:-0}
    ECHO_CONNS=${ECHO_CONNS:-"100"}
    ECHO_SECS=${ECHO_SECS:-2}
    ECHO_WARM=${ECHO_WARM:-0.3}
    REDIS_CONNS=${REDIS_CONNS:-"50"}
    REDIS_N=${REDIS_N:-20000}
    NGINX_CASES=${NGINX_CASES:-"on:64"}
    WRK_SECS=${WRK_SECS:-2}
    DEADLINE=${DEADLINE:-110}
    QUIET_MAX=${QUIET_MAX:-3}
    REPORT="$OUT/RESULTS-ustack.md"
else
    : "${ROUNDS:=5}"
    RETRIES=${RETRIES:-2}
    ECHO_CONNS=${ECHO_CONNS:-"10 100"}
    ECHO_SECS=${ECHO_SECS:-4}
    ECHO_WARM=${ECHO_WARM:-0.5}
    REDIS_CONNS=${REDIS_CONNS:-"10 50"}
    REDIS_N=${REDIS_N:-50000}
    # sendfile:connections. "on" is Debian's nginx.conf (sendfile on; tcp_nopush on); "off"
    # shows ustack without the TCP_CORK interaction described in RESULTS-ustack.md.
    NGINX_CASES=${NGINX_CASES:-"on:16 on:64 off:64"}
    WRK_SECS=${WRK_SECS:-5}
    DEADLINE=${DEADLINE:-900}
    QUIET_MAX=${QUIET_MAX:-20}
    REPORT="$BENCH/RESULTS-ustack.md"
fi
PATHS=${PATHS:-KUS}
# A run is contaminated (dropped) when steal exceeds STEAL_MAX % of CPU time, or processes
# other than this benchmark's use more than FOREIGN_MAX CPUs on average. The default is
# looser than run.sh's 0.15 because other engineers' tests share this machine.
STEAL_MAX=${STEAL_MAX:-5}
FOREIGN_MAX=${FOREIGN_MAX:-0.30}
# Two vCPUs: the server side (server + stackd) on one, the load generator on the other,
# as for K and U where the server's own kernel TCP work runs on the server's CPU.
SRV_CPU=${SRV_CPU:-0}
STACKD_CPU=${STACKD_CPU:-0}
CLI_CPU=${CLI_CPU:-1}

KU_SRV=198.51.100.2
KU_CLI=198.51.100.1
S_SRV=203.0.113.2
S_CLI=203.0.113.1
NS_SRV="rsub-$$-s"
NS_CLI="rsub-$$-c"
VETH_S="rsubs$$"
VETH_C="rsubc$$"
TAP="rsub$$"
NCPU=$(nproc)

[[ $EUID -eq 0 ]] || die "run as root (network namespaces, TAP, perf)"
((NCPU >= 2)) || die "needs 2 CPUs"
((${#TAP} <= 15)) || TAP="rsub${TAP: -11}"

# ------------------------------------------------------------------------ state + cleanup
WORK=""
NETNS=0
PERF_PID=""
SRV_PID=""
SD_PID=""
SDPERF_PID=""
CLI_PID=""
CTL_FD=""
ACK_FD=""
SRV_PIDS=()

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    kill_wait "$CLI_PID" "$SRV_PID" "$PERF_PID" "$SDPERF_PID" "$SD_PID"
    # nginx workers outlive a master that was killed: stop them by PID too.
    local p
    for p in "${SRV_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    if ((NETNS)); then
        ip netns del "$NS_SRV" 2>/dev/null || true
        ip netns del "$NS_CLI" 2>/dev/null || true
    fi
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if ((KEEP)); then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ------------------------------------------------------------------------ build
build() {
    local p missing=()
    for p in redis-server redis-benchmark nginx wrk ip taskset gcc perf python3; do
        command -v "$p" >/dev/null || missing+=("$p")
    done
    if ((${#missing[@]})); then
        log "missing: ${missing[*]} -> scripts/install-deps.sh"
        bash "$ROOT/scripts/install-deps.sh" >/dev/null || die "install-deps.sh failed"
    fi
    log "cargo build --release -p ringshim -p ringshim-stackd -p ringshim-cli"
    (cd "$ROOT" && cargo build --release -q -p ringshim -p ringshim-stackd -p ringshim-cli) || die "cargo build failed"
    [[ -f "$LIB" && -x "$STACKD" && -x "$RSCLI" ]] || die "missing $LIB, $STACKD or $RSCLI after the build"
    mkdir -p "$BIN"
    gcc -O2 -Wall -o "$BIN/echo_epoll" "$BENCH/echo_epoll.c" || die "echo_epoll.c does not build"
    gcc -O2 -Wall -o "$BIN/echo_client" "$BENCH/echo_client.c" || die "echo_client.c does not build"
}

# ------------------------------------------------------------------------ topology
# Background jobs call "ip netns exec" directly, never these functions: $! must be the
# process itself (ip netns exec and taskset exec), not a subshell.
in_srv() { ip netns exec "$NS_SRV" "$@"; }
in_cli() { ip netns exec "$NS_CLI" "$@"; }

setup_netns() {
    ip netns add "$NS_SRV" || die "ip netns add $NS_SRV"
    NETNS=1
    ip netns add "$NS_CLI" || die "ip netns add $NS_CLI"
    local ns conf
    for ns in "$NS_SRV" "$NS_CLI"; do
        ip -n "$ns" link set lo up
        # No IPv6 chatter (router solicitations, MLD) on the TAP: stackd speaks IPv4 only.
        for conf in all default; do
            ip netns exec "$ns" sh -c "echo 1 >/proc/sys/net/ipv6/conf/$conf/disable_ipv6" 2>/dev/null || true
        done
    done
    ip link add "$VETH_S" netns "$NS_SRV" type veth peer name "$VETH_C" netns "$NS_CLI" || die "veth"
    ip -n "$NS_SRV" addr add "$KU_SRV/24" dev "$VETH_S"
    ip -n "$NS_CLI" addr add "$KU_CLI/24" dev "$VETH_C"
    ip -n "$NS_SRV" link set "$VETH_S" up
    ip -n "$NS_CLI" link set "$VETH_C" up
    log "namespaces $NS_SRV / $NS_CLI; veth $VETH_S ($KU_SRV) <-> $VETH_C ($KU_CLI)"
}

# start_stackd: a fresh stackd per S run (its exit counters are that run's). It creates the
# TAP in the server namespace; the TAP's kernel side then moves to the client namespace
# (the device keeps working for stackd's open fd).
start_stackd() {
    local i
    rm -f "$WORK/stackd.sock"
    ip netns exec "$NS_SRV" taskset -c "$STACKD_CPU" "$STACKD" --tap "$TAP" --ip "$S_SRV/24" --gateway "$S_CLI" \
        --control "$WORK/stackd.sock" --allow-group 65534 >/dev/null 2>"$SD_LOG" &
    SD_PID=$!
    for ((i = 0; i < 200; i++)); do
        [[ -S "$WORK/stackd.sock" ]] && break
        kill -0 "$SD_PID" 2>/dev/null || { RUN_ERR="stackd exited: $(tail -2 "$SD_LOG" | tr '\n' ' ')"; return 1; }
        sleep 0.05
    done
    [[ -S "$WORK/stackd.sock" ]] || { RUN_ERR="stackd did not bind its control socket"; return 1; }
    [[ "$(cat "/proc/$SD_PID/comm" 2>/dev/null)" == ringshim-stack* ]] || { RUN_ERR="stackd pid $SD_PID is $(cat "/proc/$SD_PID/comm" 2>/dev/null)"; return 1; }
    ip -n "$NS_SRV" link set "$TAP" netns "$NS_CLI" || { RUN_ERR="cannot move $TAP"; return 1; }
    ip -n "$NS_CLI" addr add "$S_CLI/24" dev "$TAP" || { RUN_ERR="addr on $TAP"; return 1; }
    ip -n "$NS_CLI" link set "$TAP" up || { RUN_ERR="$TAP up"; return 1; }
    grep -q '^offloads_tap' "$OUT/machine.tsv" 2>/dev/null ||
        echo "offloads_tap	$(ip netns exec "$NS_CLI" ethtool -k "$TAP" 2>/dev/null | awk '/^(tx-checksumming|tcp-segmentation-offload|generic-receive-offload):/ { printf "%s%s %s", s, $1, $2; s = ", " }')" >>"$OUT/machine.tsv"
}

stop_stackd() {
    [[ -n "$SD_PID" ]] || return 0
    kill_wait "$SD_PID"
    SD_PID=""
    # "stopped; counters StackCounters { ..., app_wakeups: N, sleeps: N }; device TapCounters { rx_frames: N, tx_frames: N, ... }"
    local line
    line="$(grep 'stopped; counters' "$SD_LOG" | tail -1)"
    sdc() { sed -n "s/.*\b$1: \([0-9]*\).*/\1/p" <<<"$line"; }
    SD_SLEEPS="$(sdc sleeps)" SD_WAKEUPS="$(sdc app_wakeups)" SD_RXF="$(sdc rx_frames)" SD_TXF="$(sdc tx_frames)"
}

# ------------------------------------------------------------------------ measurement helpers
# procstat: "busy total steal" in USER_HZ ticks over all CPUs (as run.sh).

utime_of() { # PID: utime (USER_HZ) alone: stackd's user-space share (smoltcp, fifos)
    local s fld
    [[ -n "$1" ]] || { echo 0; return; }
    s="$(cat "/proc/$1/stat" 2>/dev/null)" || { echo 0; return; }
    s="${s##*) }"
    read -ra fld <<<"$s"
    echo "${fld[11]}"
}

# path_env PATH: the env(1) prefix of the server.
path_env() {
    case "$1" in
    K) MENV=(env -u LD_PRELOAD) ;;
    U) MENV=(env LD_PRELOAD="$LIB" RINGSHIM_BACKEND=uring RINGSHIM_STATS_DIR="$WORK/stats") ;;
    S) MENV=(env LD_PRELOAD="$LIB" RINGSHIM_BACKEND=ustack RINGSHIM_STACKD="$WORK/stackd.sock"
        RINGSHIM_STATS_DIR="$WORK/stats" RINGSHIM_LOG=info) ;;
    esac
}

# probe IP PORT: a TCP connect from the client namespace succeeds (10 s). For S this is the
# only proof that stackd's side listens: the wildcard's kernel side is up earlier.
probe() {
    local i
    for ((i = 0; i < 200; i++)); do
        in_cli timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

# start_server PATH IP PORT LOG CMD...: under `perf stat` (all threads and children counted,
# counting off until perf_ctl enable), pinned to SRV_CPU.
start_server() {
    local path="$1" ip="$2" port="$3" logf="$4" i
    shift 4
    path_env "$path"
    rm -f "$WORK/ctl" "$WORK/ack" "$WORK/perf.out"
    mkfifo "$WORK/ctl" "$WORK/ack"
    exec {CTL_FD}<>"$WORK/ctl" {ACK_FD}<>"$WORK/ack"
    ip netns exec "$NS_SRV" perf stat -e raw_syscalls:sys_enter,context-switches -x, -o "$WORK/perf.out" \
        -D -1 --control "fifo:$WORK/ctl,$WORK/ack" -- \
        taskset -c "$SRV_CPU" "${MENV[@]}" "$@" >"$logf" 2>&1 &
    PERF_PID=$!
    SRV_PID=""
    for ((i = 0; i < 100; i++)); do
        SRV_PID="$(pgrep -P "$PERF_PID" | head -1)"
        [[ -n "$SRV_PID" ]] && break
        sleep 0.02
    done
    [[ -n "$SRV_PID" ]] || { RUN_ERR="server did not start"; return 1; }
    SRV_PIDS=("$SRV_PID")
    probe "$ip" "$port" || { RUN_ERR="no connection to $ip:$port: $(tail -3 "$logf" | tr '\n' ' ')"; return 1; }
}

server_children() { # N: wait for N child processes (nginx workers)
    local i kids
    for ((i = 0; i < 200; i++)); do
        mapfile -t kids < <(pgrep -P "$SRV_PID")
        ((${#kids[@]} >= $1)) && { SRV_PIDS=("$SRV_PID" "${kids[@]}"); return 0; }
        sleep 0.05
    done
    return 1
}

perf_ctl() { # enable|disable
    echo "$1" >&"$CTL_FD"
    local ack=""
    read -r -t 5 -u "$ACK_FD" ack || true
    [[ "$ack" == ack* ]] || log "perf did not acknowledge '$1'"
}

stop_server() {
    kill_wait "$SRV_PID"
    local i p
    for p in "${SRV_PIDS[@]:1}"; do kill_wait "$p"; done
    for ((i = 0; i < 50; i++)); do
        kill -0 "$PERF_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill_wait "$PERF_PID"
    SRV_PID="" PERF_PID="" SRV_PIDS=()
    exec {CTL_FD}>&- {ACK_FD}>&-
    SRV_SYS="$(awk -F, '/raw_syscalls:sys_enter/ { print $1 }' "$WORK/perf.out" 2>/dev/null)"
    SRV_CS="$(awk -F, '/context-switches/ { print $1 }' "$WORK/perf.out" 2>/dev/null)"
}

# accel_sockets PATH: sockets the shim put on the path's backend, summed over SRV_PIDS
# (read while the server runs). Empty for K.
accel_sockets() {
    local key p js n t=0 got=0
    case "$1" in U) key=sockets_on_uring ;; S) key=sockets_on_ustack ;; *) return 0 ;; esac
    for p in "${SRV_PIDS[@]}"; do
        js="$("$RSCLI" stat "$p" --json --dir "$WORK/stats" 2>/dev/null)" || continue
        n="$(python3 -c 'import json,sys; print(json.load(sys.stdin).get("totals",{}).get(sys.argv[1],0))' "$key" <<<"$js")" || continue
        t=$((t + n)) got=1
    done
    ((got)) && echo "$t"
}

check_preload() { # PATH: the library is mapped into every server process iff U or S
    local p
    for p in "${SRV_PIDS[@]}"; do
        if [[ "$1" == [US] ]]; then
            grep -q libringshim "/proc/$p/maps" 2>/dev/null || { RUN_ERR="libringshim not mapped in pid $p"; return 1; }
        else
            ! grep -q libringshim "/proc/$p/maps" 2>/dev/null || { RUN_ERR="libringshim mapped in pid $p under K"; return 1; }
        fi
    done
}

# ------------------------------------------------------------------------ clients
# Each sets RPS P50 P99 (µs) REQS (requests in the counted window) and, for redis, SUBROWS.
client_echo() { # IP CONNS SECS WARM
    local f="$WORK/client.out"
    ip netns exec "$NS_CLI" timeout $((${3%.*} + 30)) taskset -c "$CLI_CPU" \
        "$BIN/echo_client" -a "$1" -p 7000 -c "$2" -d "$3" -w "$4" >"$f" 2>&1 &
    CLI_PID=$!
    wait "$CLI_PID"
    local rc=$? line
    CLI_PID=""
    ((rc == 0)) || { RUN_ERR="echo_client exit $rc: $(tail -2 "$f" | tr '\n' ' ')"; return 1; }
    line="$(grep '^rps=' "$f")" || { RUN_ERR="echo_client printed no result"; return 1; }
    kv() { sed -n "s/.*\b$1=\([0-9.]*\).*/\1/p" <<<"$line"; }
    RPS="$(kv rps)" P50="$(kv p50_us)" P99="$(kv p99_us)" REQS="$(kv total)"
    (($(kv errors) == 0)) || { RUN_ERR="echo_client: $(kv errors) errors"; return 1; }
}

client_redis() { # IP CONNS N
    local f="$WORK/client.out"
    ip netns exec "$NS_CLI" timeout 120 taskset -c "$CLI_CPU" \
        redis-benchmark -h "$1" -p 6379 -t set,get -d 1024 -c "$2" -n "$3" --csv >"$f" 2>&1 &
    CLI_PID=$!
    wait "$CLI_PID"
    local rc=$?
    CLI_PID=""
    ((rc == 0)) || { RUN_ERR="redis-benchmark exit $rc: $(tail -2 "$f" | tr '\n' ' ')"; return 1; }
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    SUBROWS="$(awk -F, '$1 ~ /^"(SET|GET)"$/ { gsub(/"/, ""); printf "%s %s %.0f %.0f\n", $1, $2, $5 * 1000, $7 * 1000 }' "$f")"
    [[ $(wc -l <<<"$SUBROWS") -eq 2 ]] || { RUN_ERR="redis-benchmark output not understood: $(head -c 200 "$f")"; return 1; }
    REQS=$((2 * $3))
}

client_wrk() { # IP CONNS SECS
    local f="$WORK/client.out"
    ip netns exec "$NS_CLI" timeout $(($3 + 30)) taskset -c "$CLI_CPU" \
        wrk -t1 -c"$2" -d"$3s" --latency --timeout 5s "http://$1:8080/1k" >"$f" 2>&1 &
    CLI_PID=$!
    wait "$CLI_PID"
    local rc=$?
    CLI_PID=""
    ((rc == 0)) || { RUN_ERR="wrk exit $rc: $(tail -2 "$f" | tr '\n' ' ')"; return 1; }
    RPS="$(awk '/^Requests\/sec:/ { print $2 }' "$f")"
    REQS="$(awk '/requests in/ { print $1 }' "$f")"
    P50="$(to_us "$(awk '$1 == "50%" { print $2 }' "$f")")"
    P99="$(to_us "$(awk '$1 == "99%" { print $2 }' "$f")")"
    if grep -qE 'Non-2xx|Socket errors' "$f"; then
        RUN_ERR="wrk: $(grep -E 'Non-2xx|Socket errors' "$f" | xargs)"
        return 1
    fi
    [[ -n "$RPS" && "${REQS:-0}" -gt 0 ]] || { RUN_ERR="wrk: no requests"; return 1; }
}

# ------------------------------------------------------------------------ one run
RAW="$OUT/raw.tsv"
HEADER="workload	round	path	status	reason	rps	p50_us	p99_us	requests	srv_syscalls	srv_cs	srv_ticks	sd_syscalls	sd_cs	sd_ticks	cli_ticks	secs	steal_pct	foreign_cpus	sd_sleeps	sd_app_wakeups	sd_rx_frames	sd_tx_frames	accel_sockets	sd_uticks"

emit() { # WORKLOAD STATUS REASON RPS P50 P99
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$1" "$ROUND" "$P" "$2" "$3" "$4" "$5" "$6" "${REQS:-}" "${SRV_SYS:-}" "${SRV_CS:-}" "${SRV_TICKS:-}" \
        "${SD_SYS:-}" "${SD_CS:-}" "${SD_TICKS:-}" "${CLI_TICKS:-}" "${ELAPSED:-}" "${STEAL_PCT:-}" "${FOREIGN:-}" \
        "${SD_SLEEPS:-}" "${SD_WAKEUPS:-}" "${SD_RXF:-}" "${SD_TXF:-}" "${ACCEL:-}" "${SD_UTICKS:-}" >>"$RAW"
}

# run_one WORKLOAD KIND ARGS... (P = path) -> rows in $RAW; returns 1 failed, 2 contaminated.
run_one() {
    local wl="$1" kind="$2"
    shift 2
    local ip=$KU_SRV tag="${wl// /_}-r$ROUND-$P" ok=1 logf
    [[ "$P" == S ]] && ip=$S_SRV
    logf="$OUT/logs/$tag.log"
    SD_LOG="$OUT/logs/$tag.stackd.log"
    RUN_ERR="" RPS="" P50="" P99="" REQS="" SRV_SYS="" SRV_CS="" SRV_TICKS="" SD_SYS="" SD_CS="" SD_TICKS=""
    CLI_TICKS="" SD_UTICKS="" ELAPSED="" STEAL_PCT="" FOREIGN="" SD_SLEEPS="" SD_WAKEUPS="" SD_RXF="" SD_TXF="" ACCEL="" SUBROWS=""
    if [[ "$P" == S ]]; then start_stackd || ok=0; fi
    if ((ok)); then
        case "$kind" in
        echo) start_server "$P" "$ip" 7000 "$logf" "$BIN/echo_epoll" 0.0.0.0 7000 || ok=0 ;;
        redis)
            mkdir -p "$WORK/redis"
            start_server "$P" "$ip" 6379 "$logf" redis-server --bind 0.0.0.0 --port 6379 --save "" \
                --appendonly no --protected-mode no --daemonize no --dir "$WORK/redis" || ok=0
            ;;
        nginx)
            start_server "$P" "$ip" 8080 "$logf" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx-$NGINX_SF.conf" || ok=0
            ((ok)) && { server_children 1 || { RUN_ERR="nginx worker did not start"; ok=0; }; }
            ;;
        esac
    fi
    ((ok)) && { check_preload "$P" || ok=0; }
    if ((ok)); then
        local s0 s1 d0 d1 du0 du1 b0 t0 st0 b1 t1 st1 c0 c1 w0 w1 sdperf="$WORK/sdperf.out"
        if [[ "$P" == S ]]; then
            rm -f "$sdperf"
            perf stat -e raw_syscalls:sys_enter,context-switches -x, -o "$sdperf" -p "$SD_PID" 2>/dev/null &
            SDPERF_PID=$!
        fi
        sleep 0.3 # perf -p attaches asynchronously
        c0="$(own_children_cpu)"
        s0="$(pid_cpu "${SRV_PIDS[@]}")"
        d0="$(pid_cpu "$SD_PID")"
        du0="$(utime_of "$SD_PID")"
        read -r b0 t0 st0 <<<"$(procstat)"
        w0=$EPOCHREALTIME
        perf_ctl enable
        case "$kind" in
        echo) client_echo "$ip" "$@" || ok=0 ;;
        redis) client_redis "$ip" "$@" || ok=0 ;;
        nginx) client_wrk "$ip" "$@" || ok=0 ;;
        esac
        perf_ctl disable
        [[ -n "$SDPERF_PID" ]] && { kill -INT "$SDPERF_PID" 2>/dev/null; wait "$SDPERF_PID" 2>/dev/null; SDPERF_PID=""; }
        w1=$EPOCHREALTIME
        read -r b1 t1 st1 <<<"$(procstat)"
        s1="$(pid_cpu "${SRV_PIDS[@]}")"
        d1="$(pid_cpu "$SD_PID")"
        du1="$(utime_of "$SD_PID")"
        c1="$(own_children_cpu)"
        ACCEL="$(accel_sockets "$P")"
        SRV_TICKS=$((s1 - s0)) CLI_TICKS=$((c1 - c0))
        if [[ "$P" == S ]]; then
            SD_TICKS=$((d1 - d0)) SD_UTICKS=$((du1 - du0))
            SD_SYS="$(awk -F, '/raw_syscalls:sys_enter/ { print $1 }' "$sdperf" 2>/dev/null)"
            SD_CS="$(awk -F, '/context-switches/ { print $1 }' "$sdperf" 2>/dev/null)"
        fi
        ELAPSED="$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.2f", b - a }')"
        STEAL_PCT="$(awk -v s=$((st1 - st0)) -v t=$((t1 - t0)) 'BEGIN { printf "%.2f", (t > 0 ? 100 * s / t : 0) }')"
        FOREIGN="$(awk -v b=$((b1 - b0)) -v o=$((SRV_TICKS + ${SD_TICKS:-0} + CLI_TICKS)) -v t=$((t1 - t0)) -v n="$NCPU" \
            'BEGIN { f = t > 0 ? (b - o) / (t / n) : 0; if (f < 0) f = 0; printf "%.2f", f }')"
    fi
    [[ -n "$PERF_PID" ]] && stop_server
    stop_stackd
    if ((ok)) && [[ "$P" == [US] ]] && [[ "${ACCEL:-0}" -le 0 ]]; then
        RUN_ERR="the shim put no socket on the $P backend (accel_sockets=${ACCEL:-none})"
        ok=0
    fi
    if ((!ok)); then
        log "  $wl $P: FAILED: $RUN_ERR"
        emit "$wl" failed "$RUN_ERR" "" "" ""
        return 1
    fi
    local status=ok reason=""
    awk -v s="$STEAL_PCT" -v m="$STEAL_MAX" 'BEGIN { exit !(s > m) }' && status=dropped reason="steal ${STEAL_PCT}%"
    awk -v f="$FOREIGN" -v m="$FOREIGN_MAX" 'BEGIN { exit !(f > m) }' &&
        status=dropped reason="${reason:+$reason, }foreign load ${FOREIGN} CPUs"
    if [[ "$kind" == redis ]]; then
        local name rps p50 p99
        while read -r name rps p50 p99; do emit "$wl $name" "$status" "$reason" "$rps" "$p50" "$p99"; done <<<"$SUBROWS"
        RPS="$(awk '{ s += $2 } END { printf "%.0f", s / NR }' <<<"$SUBROWS")"
    else
        emit "$wl" "$status" "$reason" "$RPS" "$P50" "$P99"
    fi
    log "  $wl $P: rps=$RPS${P50:+ p50=${P50}us p99=${P99}us} srv_sys=$SRV_SYS srv_ticks=$SRV_TICKS${SD_TICKS:+ sd_ticks=$SD_TICKS sd_sys=$SD_SYS} accel=${ACCEL:-} steal=$STEAL_PCT% foreign=$FOREIGN $status${reason:+ ($reason)}"
    [[ "$status" == ok ]] || return 2
}

# run_workload NAME KIND ARGS...: rounds of K U S (PATHS), each path on a fresh server (and
# a fresh stackd), until U and S each have ROUNDS clean pairs with their round's K, or
# ROUNDS + RETRIES rounds ran, or DEADLINE passed. A round whose K failed or was dropped
# pairs nothing; it is recorded and another round runs.
run_workload() {
    local wl="$1" kind="$2" i rc need
    shift 2
    local -A have=()
    for ((i = 1; i < ${#PATHS}; i++)); do have[${PATHS:i:1}]=0; done
    log "== $wl"
    ROUND=0
    while ((ROUND < ROUNDS + RETRIES)); do
        need=0
        for P in "${!have[@]}"; do ((have[$P] < ROUNDS)) && need=1; done
        ((need)) || break
        if ((SECONDS - T_START > DEADLINE)); then
            log "  deadline (${DEADLINE}s) passed: no more rounds"
            break
        fi
        ROUND=$((ROUND + 1))
        wait_quiet
        local k_ok=0
        for ((i = 0; i < ${#PATHS}; i++)); do
            P="${PATHS:i:1}"
            run_one "$wl" "$kind" "$@"
            rc=$?
            if [[ "$P" == K ]]; then
                ((rc == 0)) && k_ok=1
            elif ((k_ok && rc == 0)); then
                have[$P]=$((have[$P] + 1))
            fi
        done
    done
}

nginx_conf() { # SENDFILE (on|off): tcp_nopush follows it, as in Debian's nginx.conf
    mkdir -p "$WORK/nginx/tmp" "$WORK/nginx/logs"
    cat >"$WORK/nginx/nginx-$1.conf" <<EOF
worker_processes 1;
daemon off;
master_process on;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile $1;
    tcp_nopush $1;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path $WORK/nginx/tmp;
    proxy_temp_path $WORK/nginx/tmp;
    fastcgi_temp_path $WORK/nginx/tmp;
    uwsgi_temp_path $WORK/nginx/tmp;
    scgi_temp_path $WORK/nginx/tmp;
    server {
        listen 8080;
        root $WORK/www;
        location = /1k { }
    }
}
EOF
    chmod -R a+rwX "$WORK/nginx"
}

record_machine() {
    {
        echo "date	$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
        echo "kernel	$(uname -r)"
        echo "cpu	$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
        echo "ncpu	$NCPU"
        echo "mem	$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
        echo "virt	$(systemd-detect-virt 2>/dev/null || echo unknown)"
        echo "hz	$(getconf CLK_TCK)"
        echo "git	HEAD $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && git diff --quiet HEAD -- src crates 2>/dev/null || echo ' +dirty src/crates')"
        echo "lib_sha256	$(sha256sum "$LIB" | cut -c1-16)"
        echo "mode	$([[ $QUICK == 1 ]] && echo quick || echo full)"
        echo "rounds	$ROUNDS"
        echo "retries	$RETRIES"
        echo "steal_max	$STEAL_MAX"
        echo "foreign_max	$FOREIGN_MAX"
        echo "cpus	server $SRV_CPU, stackd $STACKD_CPU, client $CLI_CPU"
        echo "load_start	$(cut -d' ' -f1-3 /proc/loadavg)"
        echo "nginx	$(nginx -v 2>&1 | sed 's/.*\///')"
        echo "redis	$(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/')"
        echo "wrk	$(dpkg-query -W -f='${Version}' wrk 2>/dev/null)"
        echo "echo_secs	$ECHO_SECS (+ $ECHO_WARM warm-up)"
        echo "redis_n	$REDIS_N"
        echo "wrk_secs	$WRK_SECS"
        echo "nginx_cases	$NGINX_CASES (sendfile+tcp_nopush:connections)"
        echo "offloads_veth	$(in_srv ethtool -k "$VETH_S" 2>/dev/null | awk '/^(tx-checksumming|tcp-segmentation-offload|generic-receive-offload):/ { printf "%s%s %s", s, $1, $2; s = ", " }')"
    } >"$OUT/machine.tsv"
}

main() {
    T_START=$SECONDS
    build
    rm -rf "$OUT"
    mkdir -p "$OUT/logs"
    WORK="$(mktemp -d /tmp/rsub.XXXXXX)"
    # nginx's worker (nobody) reaches the control socket, the files and the stats dir.
    chmod 755 "$WORK"
    mkdir -p "$WORK/stats" "$WORK/www"
    chmod 1777 "$WORK/stats"
    head -c 1024 /dev/zero | tr '\0' 'x' >"$WORK/www/1k"
    chmod -R a+rX "$WORK/www"
    ulimit -n 65536 2>/dev/null || true
    local v
    for v in $(compgen -e | grep '^RINGSHIM' || true); do unset "$v"; done
    setup_netns
    record_machine
    printf '%s\n' "$HEADER" >"$RAW"
    local c
    if [[ ",$ONLY," == *,echo,* ]]; then
        for c in $ECHO_CONNS; do run_workload "echo c=$c" echo "$c" "$ECHO_SECS" "$ECHO_WARM"; done
    fi
    if [[ ",$ONLY," == *,redis,* ]]; then
        for c in $REDIS_CONNS; do run_workload "redis c=$c" redis "$c" "$REDIS_N"; done
    fi
    if [[ ",$ONLY," == *,nginx,* ]]; then
        local spec
        for spec in $NGINX_CASES; do
            NGINX_SF="${spec%%:*}" c="${spec##*:}"
            nginx_conf "$NGINX_SF"
            if [[ "$NGINX_SF" == on ]]; then
                run_workload "nginx c=$c" nginx "$c" "$WRK_SECS"
            else
                run_workload "nginx sendfile=off c=$c" nginx "$c" "$WRK_SECS"
            fi
        done
    fi
    {
        echo "load_end	$(cut -d' ' -f1-3 /proc/loadavg)"
        echo "duration_s	$((SECONDS - T_START))"
    } >>"$OUT/machine.tsv"
    python3 "$BENCH/report_ustack.py" --raw "$RAW" --machine "$OUT/machine.tsv" --md "$REPORT" || die "report_ustack.py failed"
    log "done in $((SECONDS - T_START)) s: $REPORT"
}

main
