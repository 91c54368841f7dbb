#!/usr/bin/env bash
# benchmarks/run.sh - paired A/B benchmarks of ringshim on unmodified servers.
#
#   bash benchmarks/run.sh            # full run (~15 min), as root
#   bash benchmarks/run.sh --quick    # CI smoke (~3 min): fewer workloads, short runs, 2 rounds
#   bash benchmarks/run.sh --only echo,redis,nginx,openloop [--rounds N] [--keep]
#   bash benchmarks/run.sh --more     # keep benchmarks/out/raw.tsv and run only the rounds still
#                                     # missing (pairs dropped for contamination); same library only
#
# Writes benchmarks/RESULTS.md, benchmarks/results.png, and the raw per-run data in
# benchmarks/out/ (raw.tsv, logs; not committed). See benchmarks/README.md.
#
# Topology: two network namespaces made here (rsb-srv-PID 198.51.100.1/24, rsb-cli-PID
# 198.51.100.2/24, TEST-NET-2, over a veth pair); server pinned to CPU 0, load generator to
# CPU 1. No traffic leaves these namespaces. Everything started is stopped by PID, and the
# namespaces deleted, on any exit.
#
# Modes (one "round" runs each in this order; ratios are X/A within the round):
#   A  no shim                         B  shim, default routing (198.51.100.x accelerated)
#   C  shim loaded, RINGSHIM=0         D  shim + RINGSHIM_SQPOLL=1 RINGSHIM_SQPOLL_CPU=0
#   N  native io_uring echo server (echo workloads only; the upper bound)
set -u -o pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=benchmarks/lib.sh
source "$BENCH/lib.sh"
ROOT="$(dirname "$BENCH")"
OUT="$BENCH/out"
BIN="$BENCH/target/bin"
LIB="$ROOT/target/release/libringshim.so"
RSCLI="$ROOT/target/release/ringshim"

# ------------------------------------------------------------------------ options
QUICK=0
ONLY="echo,redis,nginx,openloop"
ROUNDS=""
KEEP=0
MORE=0
while (($#)); do
    case "$1" in
    --quick) QUICK=1 ;;
    --only) ONLY="$2"; shift ;;
    --rounds) ROUNDS="$2"; shift ;;
    --keep) KEEP=1 ;;
    --more) MORE=1 ;;
    -h | --help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option '$1' (--quick, --only LIST, --rounds N, --keep, --more)" >&2; exit 2 ;;
    esac
    shift
done

if ((QUICK)); then
    : "${ROUNDS:=2}"
    RETRIES=${RETRIES:-3}           # extra rounds allowed per workload to replace dropped ones
    ECHO_CONNS=${ECHO_CONNS:-"100"}
    ECHO_SECS=${ECHO_SECS:-2}
    ECHO_WARM=${ECHO_WARM:-0.3}
    REDIS_CONNS=${REDIS_CONNS:-"50"}
    REDIS_N=${REDIS_N:-40000}
    NGINX_CASES=${NGINX_CASES:-"1:static:ABCD 1:proxy:AB"}
    WRK_SECS=${WRK_SECS:-3}
    OPEN_PCTS=${OPEN_PCTS:-"50"}
    OPEN_SECS=${OPEN_SECS:-2}
    QUIET_MAX=${QUIET_MAX:-20}
else
    : "${ROUNDS:=3}"
    RETRIES=${RETRIES:-4}
    ECHO_CONNS=${ECHO_CONNS:-"10 100 1000"}
    ECHO_SECS=${ECHO_SECS:-4}
    ECHO_WARM=${ECHO_WARM:-0.5}
    REDIS_CONNS=${REDIS_CONNS:-"10 50"}
    REDIS_N=${REDIS_N:-100000}
    # workers:case:modes
    NGINX_CASES=${NGINX_CASES:-"1:static:ABCD 1:proxy:ABC 2:static:AB 2:proxy:AB"}
    WRK_SECS=${WRK_SECS:-10}
    OPEN_PCTS=${OPEN_PCTS:-"25 50 75"}
    OPEN_SECS=${OPEN_SECS:-4}
    QUIET_MAX=${QUIET_MAX:-60}
fi
ECHO_MODES=${ECHO_MODES:-ABCDN}
REDIS_MODES=${REDIS_MODES:-ABCD}
OPEN_MODES=${OPEN_MODES:-ABN}
OPEN_CONNS=${OPEN_CONNS:-100}
# Debian's nginx.conf has "sendfile on; tcp_nopush on;": the default here too (off: plain writes).
NGINX_SENDFILE=${NGINX_SENDFILE:-on}
# Contamination thresholds: a run is contaminated when the machine's steal exceeds
# STEAL_MAX % of CPU time, or CPU used by processes other than this benchmark's exceeds
# FOREIGN_MAX CPUs on average over the run. Its whole round is then dropped and re-run.
STEAL_MAX=${STEAL_MAX:-5}
FOREIGN_MAX=${FOREIGN_MAX:-0.15}

SRV_IP=198.51.100.1
CLI_IP=198.51.100.2
NS_SRV="rsb-srv-$$"
NS_CLI="rsb-cli-$$"
VETH_S="rsbs$$"
VETH_C="rsbc$$"
SRV_CPU=0
CLI_CPU=1
NCPU=$(nproc)
HZ=$(getconf CLK_TCK)

[[ $EUID -eq 0 ]] || die "run as root (network namespaces, perf)"
((NCPU >= 2)) || die "needs 2 CPUs (server on CPU 0, client on CPU 1)"

# ------------------------------------------------------------------------ state + cleanup
WORK=""
NETNS=0
PERF_PID=""
SRV_PID=""
UPS_PID=""
UPS_PIDS=""
CLI_PID=""
CTL_FD=""
ACK_FD=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    kill_wait "$CLI_PID" "$SRV_PID" "$PERF_PID" "$UPS_PID"
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

# ------------------------------------------------------------------------ dependencies + build
ensure_deps() {
    local missing=() p
    for p in redis-server redis-benchmark nginx wrk ip ethtool taskset gcc ss; do
        command -v "$p" >/dev/null || missing+=("$p")
    done
    [[ -x /usr/bin/perf ]] || command -v perf >/dev/null || missing+=(perf)
    if ((${#missing[@]})); then
        log "missing: ${missing[*]} -> scripts/install-deps.sh"
        bash "$ROOT/scripts/install-deps.sh" || log "install-deps.sh failed"
    fi
    export DEBIAN_FRONTEND=noninteractive
    local apt=()
    [[ -f /usr/include/liburing.h ]] || apt+=(liburing-dev)
    command -v nginx >/dev/null || apt+=(nginx-light)
    command -v perf >/dev/null || apt+=(linux-perf)
    if ((${#apt[@]})); then
        log "apt-get install ${apt[*]}"
        apt-get update -q -o DPkg::Lock::Timeout=600 >/dev/null 2>&1
        apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=600 "${apt[@]}" >/dev/null ||
            log "apt-get install ${apt[*]} failed"
    fi
    PLOT=none
    if python3 -c 'import matplotlib' 2>/dev/null; then
        PLOT=matplotlib
    elif python3 -m pip install -q matplotlib >/dev/null 2>&1 && python3 -c 'import matplotlib' 2>/dev/null; then
        PLOT=matplotlib
    else
        command -v gnuplot >/dev/null || apt-get install -y -q --no-install-recommends gnuplot-nox >/dev/null 2>&1
        command -v gnuplot >/dev/null && PLOT=gnuplot
    fi
    log "plotting with: $PLOT"
}

build() {
    log "cargo build --release --workspace"
    (cd "$ROOT" && cargo build --release --workspace -q) || die "cargo build failed"
    [[ -f "$LIB" && -x "$RSCLI" ]] || die "missing $LIB or $RSCLI after the build"
    mkdir -p "$BIN"
    gcc -O2 -Wall -o "$BIN/echo_epoll" "$BENCH/echo_epoll.c" || die "echo_epoll.c does not build"
    gcc -O2 -Wall -o "$BIN/echo_client" "$BENCH/echo_client.c" || die "echo_client.c does not build"
    if gcc -O2 -Wall -o "$BIN/echo_uring" "$BENCH/echo_uring.c" -luring; then
        HAVE_URING=1
    else
        HAVE_URING=0
        log "echo_uring.c does not build (liburing-dev missing?): mode N skipped"
    fi
}

# ------------------------------------------------------------------------ topology
setup_netns() {
    ip netns add "$NS_SRV" || die "ip netns add $NS_SRV"
    NETNS=1
    ip netns add "$NS_CLI" || die "ip netns add $NS_CLI"
    ip link add "$VETH_S" netns "$NS_SRV" type veth peer name "$VETH_C" netns "$NS_CLI" || die "veth"
    ip -n "$NS_SRV" addr add "$SRV_IP/24" dev "$VETH_S"
    ip -n "$NS_CLI" addr add "$CLI_IP/24" dev "$VETH_C"
    ip -n "$NS_SRV" link set lo up
    ip -n "$NS_CLI" link set lo up
    ip -n "$NS_SRV" link set "$VETH_S" up
    ip -n "$NS_CLI" link set "$VETH_C" up
    ip -n "$NS_CLI" route get "$SRV_IP" >/dev/null || die "no route $CLI_IP -> $SRV_IP"
    log "namespaces $NS_SRV ($SRV_IP) <-> $NS_CLI ($CLI_IP) over $VETH_S/$VETH_C"
}

# ------------------------------------------------------------------------ measurement helpers
# procstat: "busy total steal" in USER_HZ ticks summed over all CPUs; busy counts
# user+nice+system+irq+softirq (the tick accounting of this kernel charges softirq to the
# interrupted task as well, so a task's utime+stime and these columns compare).

# pid_cpu PID...: utime+stime (USER_HZ) of each PID's thread group, summed.

# own_children_cpu: cutime+cstime of this shell (children reaped so far).

loadavg1() { cut -d' ' -f1 /proc/loadavg; }

# mode_env MODE: the env(1) prefix of the server for that mode.
mode_env() {
    case "$1" in
    A | N) MENV=(env -u LD_PRELOAD) ;;
    B) MENV=(env LD_PRELOAD="$LIB" RINGSHIM_STATS_DIR="$WORK/stats") ;;
    C) MENV=(env LD_PRELOAD="$LIB" RINGSHIM=0 RINGSHIM_STATS_DIR="$WORK/stats") ;;
    D) MENV=(env LD_PRELOAD="$LIB" RINGSHIM_SQPOLL=1 RINGSHIM_SQPOLL_CPU="$SRV_CPU" RINGSHIM_STATS_DIR="$WORK/stats") ;;
    esac
}

wait_port() { # PORT: until something listens on it in the server namespace (10 s)
    local i
    for ((i = 0; i < 200; i++)); do
        ip netns exec "$NS_SRV" ss -Hltn "sport = :$1" 2>/dev/null | grep -q . && return 0
        sleep 0.05
    done
    return 1
}

# start_server MODE PORT LOG CMD...: the server under `perf stat` (all threads and child
# processes counted; counting disabled until enable_count), pinned to SRV_CPU.
# Sets PERF_PID, SRV_PID (the server itself), SRV_PIDS (server + its worker processes).
start_server() {
    local mode="$1" port="$2" logf="$3" i
    shift 3
    mode_env "$mode"
    rm -f "$WORK/ctl" "$WORK/ack" "$WORK/perf.out"
    mkfifo "$WORK/ctl" "$WORK/ack"
    exec {CTL_FD}<>"$WORK/ctl" {ACK_FD}<>"$WORK/ack"
    ip netns exec "$NS_SRV" /usr/bin/perf stat -e raw_syscalls:sys_enter -x, -o "$WORK/perf.out" \
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
    wait_port "$port" || { RUN_ERR="nothing listens on $port: $(tail -3 "$logf" | tr '\n' ' ')"; return 1; }
    SRV_PIDS=("$SRV_PID")
    return 0
}

# server_children N: wait until the server has N child processes (nginx workers).
server_children() {
    local want="$1" i kids
    for ((i = 0; i < 200; i++)); do
        mapfile -t kids < <(pgrep -P "$SRV_PID")
        ((${#kids[@]} >= want)) && { SRV_PIDS=("$SRV_PID" "${kids[@]}"); return 0; }
        sleep 0.05
    done
    return 1
}

check_preload() { # MODE: the library is mapped into every server process iff the mode preloads it
    local p
    for p in "${SRV_PIDS[@]}"; do
        if [[ "$1" == [BCD] ]]; then
            grep -q libringshim "/proc/$p/maps" 2>/dev/null || { RUN_ERR="libringshim not mapped in pid $p"; return 1; }
        else
            ! grep -q libringshim "/proc/$p/maps" 2>/dev/null || { RUN_ERR="libringshim mapped in pid $p in mode $1"; return 1; }
        fi
    done
}

perf_ctl() { # enable|disable
    echo "$1" >&"$CTL_FD"
    local ack=""
    read -r -t 5 -u "$ACK_FD" ack || true
    [[ "$ack" == ack* ]] || log "perf did not acknowledge '$1'"
}

# shim_counters: sum of the shim's totals over SRV_PIDS -> SHIM_* variables.
shim_counters() {
    SHIM_ENTERS="" SHIM_AVOIDED="" SHIM_URING="" SHIM_FALLBACKS="" SHIM_DEMOTIONS=""
    local p js e1 a1 u1 f1 d1
    local e=0 a=0 u=0 f=0 d=0 got=0
    for p in "${SRV_PIDS[@]}"; do
        js="$("$RSCLI" stat "$p" --json --dir "$WORK/stats" 2>/dev/null)" || continue
        got=1
        read -r e1 a1 u1 f1 d1 < <(python3 -c '
import json,sys
t=json.load(sys.stdin).get("totals",{})
print(*(t.get(k,0) for k in ("ring_enters","syscalls_avoided","sockets_on_uring","fallbacks","demotions")))' <<<"$js")
        e=$((e + e1)) a=$((a + a1)) u=$((u + u1)) f=$((f + f1)) d=$((d + d1))
    done
    if ((got)); then
        SHIM_ENTERS=$e SHIM_AVOIDED=$a SHIM_URING=$u SHIM_FALLBACKS=$f SHIM_DEMOTIONS=$d
    fi
}

stop_server() {
    kill_wait "$SRV_PID"
    # perf exits after its child; give it a moment, then make sure.
    local i
    for ((i = 0; i < 50; i++)); do
        kill -0 "$PERF_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill_wait "$PERF_PID"
    SRV_PID="" PERF_PID=""
    exec {CTL_FD}>&- {ACK_FD}>&-
    SYSCALLS="$(awk -F, '/raw_syscalls:sys_enter/ { print $1 }' "$WORK/perf.out" 2>/dev/null)"
    [[ "$SYSCALLS" =~ ^[0-9]+$ ]] || SYSCALLS=""
}

# ------------------------------------------------------------------------ clients
# Each sets RPS P50 P99 P999 (µs) REQS (requests completed while counting) CERR (errors)
# and, for redis, SUBROWS (per-test rows "name rps p50 p99").
client_echo() { # CONNS SECS WARM [RATE]
    local conns="$1" secs="$2" warm="$3" rate="${4:-0}" f="$WORK/client.out"
    ip netns exec "$NS_CLI" timeout $((${secs%.*} + 40)) taskset -c "$CLI_CPU" \
        "$BIN/echo_client" -a "$SRV_IP" -p 7000 -c "$conns" -d "$secs" -w "$warm" -r "$rate" >"$f" 2>&1 &
    CLI_PID=$!
    wait "$CLI_PID"
    local rc=$?
    CLI_PID=""
    ((rc == 0)) || { RUN_ERR="echo_client exit $rc: $(tail -2 "$f" | tr '\n' ' ')"; return 1; }
    local line
    line="$(grep '^rps=' "$f")" || { RUN_ERR="echo_client printed no result"; return 1; }
    kv() { sed -n "s/.*\b$1=\([0-9.]*\).*/\1/p" <<<"$line"; }
    RPS="$(kv rps)" P50="$(kv p50_us)" P99="$(kv p99_us)" P999="$(kv p999_us)" REQS="$(kv total)" CERR="$(kv errors)"
    ((CERR == 0)) || { RUN_ERR="echo_client: $CERR errors"; return 1; }
}

client_redis() { # CONNS N
    local conns="$1" n="$2" f="$WORK/client.out"
    ip netns exec "$NS_CLI" timeout 120 taskset -c "$CLI_CPU" \
        redis-benchmark -h "$SRV_IP" -p 6379 -t set,get -d 1024 -c "$conns" -n "$n" --csv >"$f" 2>&1 &
    CLI_PID=$!
    wait "$CLI_PID"
    local rc=$?
    CLI_PID=""
    ((rc == 0)) || { RUN_ERR="redis-benchmark exit $rc: $(tail -2 "$f" | tr '\n' ' ')"; return 1; }
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    SUBROWS="$(awk -F, '$1 ~ /^"(SET|GET)"$/ { gsub(/"/, ""); printf "%s %s %.0f %.0f\n", $1, $2, $5 * 1000, $7 * 1000 }' "$f")"
    [[ $(wc -l <<<"$SUBROWS") -eq 2 ]] || { RUN_ERR="redis-benchmark output not understood: $(head -c 200 "$f")"; return 1; }
    REQS=$((2 * n)) CERR=0
}

client_wrk() { # PATH SECS
    local path="$1" secs="$2" f="$WORK/client.out"
    ip netns exec "$NS_CLI" timeout $((secs + 30)) taskset -c "$CLI_CPU" \
        wrk -t1 -c64 -d"${secs}s" --latency --timeout 5s "http://$SRV_IP:8080$path" >"$f" 2>&1 &
    CLI_PID=$!
    wait "$CLI_PID"
    local rc=$?
    CLI_PID=""
    ((rc == 0)) || { RUN_ERR="wrk exit $rc: $(tail -2 "$f" | tr '\n' ' ')"; return 1; }
    RPS="$(awk '/^Requests\/sec:/ { print $2 }' "$f")"
    REQS="$(awk '/requests in/ { print $1 }' "$f")"
    P50="$(to_us "$(awk '$1 == "50%" { print $2 }' "$f")")"
    P99="$(to_us "$(awk '$1 == "99%" { print $2 }' "$f")")"
    P999=""
    CERR=0
    if grep -qE 'Non-2xx|Socket errors' "$f"; then
        CERR=1
        RUN_ERR="wrk: $(grep -E 'Non-2xx|Socket errors' "$f" | xargs)"
        return 1
    fi
    [[ -n "$RPS" && "${REQS:-0}" -gt 0 ]] || { RUN_ERR="wrk: no requests"; return 1; }
}

# ------------------------------------------------------------------------ one run
# run_one WORKLOAD MODE KIND ARGS... -> appends rows to $ROUND_FILE; returns 2 when
# contaminated, 1 when failed.
RAW="$OUT/raw.tsv"
HEADER="workload	round	attempt	mode	status	reason	rps	p50_us	p99_us	p999_us	requests	syscalls	srv_cpu_ticks	sys_per_req	cpu_us_per_req	steal_pct	foreign_cpus	load_before	load_after	ring_enters	syscalls_avoided	sockets_on_uring	fallbacks	demotions	secs"

emit() { # WORKLOAD STATUS REASON RPS P50 P99 P999
    local sys_req cpu_req
    sys_req="$(awk -v s="${SYSCALLS:-}" -v r="${REQS:-0}" 'BEGIN { if (s == "" || r + 0 == 0) print ""; else printf "%.4f", s / r }')"
    cpu_req="$(awk -v c="${SRV_TICKS:-}" -v r="${REQS:-0}" -v hz="$HZ" 'BEGIN { if (c == "" || r + 0 == 0) print ""; else printf "%.3f", c / hz * 1e6 / r }')"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$1" "$ROUND" "$ATTEMPT" "$MODE" "$2" "$3" "$4" "$5" "$6" "$7" "${REQS:-}" "${SYSCALLS:-}" "${SRV_TICKS:-}" \
        "$sys_req" "$cpu_req" "${STEAL_PCT:-}" "${FOREIGN:-}" "${LOAD0:-}" "${LOAD1:-}" "${SHIM_ENTERS:-}" \
        "${SHIM_AVOIDED:-}" "${SHIM_URING:-}" "${SHIM_FALLBACKS:-}" "${SHIM_DEMOTIONS:-}" "${ELAPSED:-}" >>"$ROUND_FILE"
}

run_one() {
    local wl="$1" kind="$2"
    shift 2
    local port logf tag="${wl// /_}-r$ROUND.$ATTEMPT-$MODE"
    logf="$OUT/logs/$tag.log"
    RUN_ERR="" RPS="" P50="" P99="" P999="" REQS="" SYSCALLS="" SRV_TICKS="" STEAL_PCT="" FOREIGN=""
    SHIM_ENTERS="" SHIM_AVOIDED="" SHIM_URING="" SHIM_FALLBACKS="" SHIM_DEMOTIONS="" SUBROWS="" ELAPSED=""
    LOAD0="$(loadavg1)"
    local ok=1
    case "$kind" in
    echo)
        port=7000
        if [[ "$MODE" == N ]]; then
            start_server "$MODE" "$port" "$logf" "$BIN/echo_uring" "$SRV_IP" "$port" || ok=0
        else
            start_server "$MODE" "$port" "$logf" "$BIN/echo_epoll" "$SRV_IP" "$port" || ok=0
        fi
        ;;
    redis)
        port=6379
        mkdir -p "$WORK/redis"
        start_server "$MODE" "$port" "$logf" redis-server --bind "$SRV_IP" --port "$port" --save "" \
            --appendonly no --protected-mode no --daemonize no --dir "$WORK/redis" || ok=0
        ;;
    nginx)
        port=8080
        start_server "$MODE" "$port" "$logf" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx-w$1.conf" || ok=0
        ((ok)) && { server_children "$1" || { RUN_ERR="nginx workers did not start"; ok=0; }; }
        ;;
    esac
    ((ok)) && { check_preload "$MODE" || ok=0; }
    if ((ok)); then
        local s0 s1 b0 t0 st0 b1 t1 st1 c0 c1 u0 u1 w0 w1
        sleep 0.2
        c0="$(own_children_cpu)"
        s0="$(pid_cpu "${SRV_PIDS[@]}")"
        u0="$(pid_cpu $UPS_PIDS)"
        read -r b0 t0 st0 <<<"$(procstat)"
        w0=$EPOCHREALTIME
        perf_ctl enable
        case "$kind" in
        echo) client_echo "$@" || ok=0 ;;
        redis) client_redis "$@" || ok=0 ;;
        nginx) client_wrk "$2" "$3" || ok=0 ;;
        esac
        perf_ctl disable
        w1=$EPOCHREALTIME
        read -r b1 t1 st1 <<<"$(procstat)"
        s1="$(pid_cpu "${SRV_PIDS[@]}")"
        u1="$(pid_cpu $UPS_PIDS)"
        c1="$(own_children_cpu)"
        [[ "$MODE" == [BD] ]] && shim_counters
        SRV_TICKS=$((s1 - s0))
        ELAPSED="$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.2f", b - a }')"
        STEAL_PCT="$(awk -v s=$((st1 - st0)) -v t=$((t1 - t0)) 'BEGIN { printf "%.2f", (t > 0 ? 100 * s / t : 0) }')"
        FOREIGN="$(awk -v b=$((b1 - b0)) -v o=$((s1 - s0 + c1 - c0 + u1 - u0)) -v t=$((t1 - t0)) -v n="$NCPU" \
            'BEGIN { f = t > 0 ? (b - o) / (t / n) : 0; if (f < 0) f = 0; printf "%.2f", f }')"
    fi
    [[ -n "$PERF_PID" ]] && stop_server
    [[ -n "$SRV_PID" ]] && stop_server
    LOAD1="$(loadavg1)"
    if [[ "$MODE" == [BD] && -n "$SHIM_URING" && "$SHIM_URING" -eq 0 && $ok -eq 1 ]]; then
        RUN_ERR="shim accelerated no socket (sockets_on_uring=0; fallbacks=$SHIM_FALLBACKS)"
        ok=0
    fi
    if ((!ok)); then
        log "  $wl $MODE: FAILED: $RUN_ERR"
        emit "$wl" failed "$RUN_ERR" "" "" "" ""
        return 1
    fi
    local status=ok reason=""
    if awk -v s="$STEAL_PCT" -v m="$STEAL_MAX" 'BEGIN { exit !(s > m) }'; then
        status=contaminated reason="steal ${STEAL_PCT}%"
    fi
    if awk -v f="$FOREIGN" -v m="$FOREIGN_MAX" 'BEGIN { exit !(f > m) }'; then
        status=contaminated reason="${reason:+$reason, }foreign load ${FOREIGN} CPUs"
    fi
    if [[ "$kind" == redis ]]; then
        local name rps p50 p99
        while read -r name rps p50 p99; do
            emit "$wl $name" "$status" "$reason" "$rps" "$p50" "$p99" ""
        done <<<"$SUBROWS"
        RPS="$(awk '{ s += $2 } END { printf "%.0f", s / NR }' <<<"$SUBROWS")"
    else
        emit "$wl" "$status" "$reason" "$RPS" "$P50" "$P99" "$P999"
    fi
    log "  $wl $MODE: rps=$RPS p50=${P50:-?}us p99=${P99:-?}us syscalls=$SYSCALLS reqs=$REQS cpu_ticks=$SRV_TICKS steal=$STEAL_PCT% foreign=$FOREIGN ${SHIM_ENTERS:+enters=$SHIM_ENTERS avoided=$SHIM_AVOIDED} $status"
    [[ "$status" == ok ]] || return 2
    return 0
}

# run_workload NAME MODES KIND ARGS...: rounds of A followed by the other MODES. A round
# whose A is contaminated or failed is dropped whole; otherwise each other mode's run is
# kept or dropped on its own (its ratio pairs with this round's A). Rounds are repeated,
# each with A and only the modes still short of ROUNDS clean pairs, until every mode has
# ROUNDS clean pairs or ROUNDS + RETRIES rounds were run. Dropped runs stay in raw.tsv.
run_workload() {
    local wl="$1" modes="$2" kind="$3"
    shift 3
    local attempts=0 rc i m todo a_ok a_why short RETRIES="$RETRIES"
    local -A have=() st=()
    for ((i = 0; i < ${#modes}; i++)); do have[${modes:i:1}]=0; done
    if ((MORE)); then
        # clean pairs and rounds already in raw.tsv (redis rows are "NAME SET"/"NAME GET")
        for ((i = 0; i < ${#modes}; i++)); do
            m="${modes:i:1}"
            have[$m]="$(awk -F'\t' -v w="$wl" -v m="$m" '($1 == w || index($1, w " ") == 1) && $4 == m && $5 == "ok" { r[$2] = 1 } END { print length(r) }' "$RAW")"
        done
        attempts="$(awk -F'\t' -v w="$wl" '($1 == w || index($1, w " ") == 1) && $2 + 0 > n { n = $2 + 0 } END { print n + 0 }' "$RAW")"
        RETRIES=$((RETRIES + attempts))
    fi
    log "== $wl (modes $modes)"
    while ((attempts < ROUNDS + RETRIES)); do
        todo=A
        for ((i = 0; i < ${#modes}; i++)); do
            m="${modes:i:1}"
            [[ "$m" != A ]] && ((have[$m] < ROUNDS)) && todo+="$m"
        done
        if [[ "$todo" == A ]]; then
            [[ "$modes" == A ]] && ((have[A] < ROUNDS)) || break
        fi
        attempts=$((attempts + 1))
        ROUND=$attempts
        ATTEMPT=$attempts
        ROUND_FILE="$WORK/round.tsv"
        : >"$ROUND_FILE"
        wait_quiet
        a_ok=1 a_why=""
        st=()
        for ((i = 0; i < ${#todo}; i++)); do
            MODE="${todo:i:1}"
            run_one "$wl" "$kind" "$@"
            rc=$?
            st[$MODE]=$rc
            if [[ "$MODE" == A ]] && ((rc != 0)); then
                a_ok=0
                a_why="$(awk -F'\t' 'NR == 1 { print $6 }' "$ROUND_FILE")"
                # No baseline: the other modes of this round could not be paired.
                break
            fi
        done
        awk -F'\t' -v OFS='\t' -v aok="$a_ok" -v why="$a_why" '{
            if (!aok) { $6 = ($4 == "A") ? $6 : "baseline A of this round: " why; $5 = ($5 == "failed") ? "failed" : "dropped" }
            else if ($5 == "contaminated") $5 = "dropped"
            print }' "$ROUND_FILE" >>"$RAW"
        if ((a_ok)); then
            have[A]=$((have[A] + 1))
            for ((i = 1; i < ${#todo}; i++)); do
                m="${todo:i:1}"
                ((st[$m] == 0)) && have[$m]=$((have[$m] + 1))
            done
        else
            log "  round $attempts dropped: baseline A $a_why"
        fi
    done
    short=""
    for ((i = 0; i < ${#modes}; i++)); do
        m="${modes:i:1}"
        [[ "$m" == A ]] && continue
        ((have[$m] < ROUNDS)) && short+=" $m:${have[$m]}"
    done
    [[ -n "$short" ]] && log "  $wl: fewer than $ROUNDS clean pairs for:$short"
    return 0
}

# ------------------------------------------------------------------------ workloads
nginx_conf() { # WORKERS
    cat >"$WORK/nginx/nginx-w$1.conf" <<EOF
worker_processes $1;
daemon off;
master_process on;
pid $WORK/nginx/nginx-w$1.pid;
error_log $WORK/nginx/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile $NGINX_SENDFILE;
    tcp_nopush $NGINX_SENDFILE;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path $WORK/nginx/tmp;
    proxy_temp_path $WORK/nginx/tmp;
    upstream up {
        server $SRV_IP:8081;
        keepalive 64;
    }
    server {
        listen $SRV_IP:8080;
        root $WORK/www;
        location = /1k { }
        location /proxy/ {
            proxy_pass http://up/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}

start_upstream() {
    mkdir -p "$WORK/ups/tmp" "$WORK/ups/logs"
    cat >"$WORK/ups/nginx.conf" <<EOF
worker_processes 1;
daemon off;
master_process off;
pid $WORK/ups/nginx.pid;
error_log $WORK/ups/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path $WORK/ups/tmp;
    proxy_temp_path $WORK/ups/tmp;
    server {
        listen $SRV_IP:8081;
        root $WORK/www;
        location / { }
    }
}
EOF
    ip netns exec "$NS_SRV" taskset -c "$SRV_CPU" env -u LD_PRELOAD nginx -p "$WORK/ups" -c "$WORK/ups/nginx.conf" \
        >"$OUT/logs/upstream.log" 2>&1 &
    UPS_PID=$!
    wait_port 8081 || die "upstream nginx did not start: $(tail -3 "$OUT/logs/upstream.log")"
    UPS_PIDS="$UPS_PID"
}

record_machine() {
    {
        echo "date	$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
        echo "kernel	$(uname -r)"
        echo "cpu	$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
        echo "ncpu	$NCPU"
        echo "mem	$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
        echo "virt	$(systemd-detect-virt 2>/dev/null || echo unknown)"
        echo "lib_sha256	$(sha256sum "$LIB" | cut -d' ' -f1)"
        echo "git	$(cd "$ROOT" && git log -1 --format=%h -- src crates Cargo.toml Cargo.lock build.rs 2>/dev/null) (last commit touching the shim; HEAD $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null))$(cd "$ROOT" && git diff --quiet HEAD -- src crates 2>/dev/null || echo '+dirty')"
        echo "mode	$([[ $QUICK == 1 ]] && echo quick || echo full)"
        echo "rounds	$ROUNDS"
        echo "retries	$RETRIES"
        echo "steal_max	$STEAL_MAX"
        echo "foreign_max	$FOREIGN_MAX"
        echo "load_start	$(cut -d' ' -f1-3 /proc/loadavg)"
        echo "nginx	$(nginx -v 2>&1 | sed 's/.*\///')"
        echo "redis	$(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/')"
        echo "wrk	$(dpkg-query -W -f='${Version}' wrk 2>/dev/null)"
        echo "liburing	$(dpkg-query -W -f='${Version}' liburing-dev 2>/dev/null)"
        echo "perf	$(/usr/bin/perf version 2>/dev/null)"
        echo "echo_secs	$ECHO_SECS"
        echo "echo_warm	$ECHO_WARM"
        echo "redis_n	$REDIS_N"
        echo "wrk_secs	$WRK_SECS"
        echo "open_secs	$OPEN_SECS"
        echo "open_conns	$OPEN_CONNS"
        echo "nginx_sendfile	$NGINX_SENDFILE"
    } >"$OUT/machine.tsv"
}

main() {
    local t_start=$SECONDS
    ensure_deps
    build
    if ((MORE)); then
        [[ -s "$RAW" && -s "$OUT/machine.tsv" ]] || die "--more: no earlier run in $OUT"
        local had
        had="$(awk -F'\t' '$1 == "lib_sha256" { print $2 }' "$OUT/machine.tsv")"
        [[ "$had" == "$(sha256sum "$LIB" | cut -d' ' -f1)" ]] ||
            die "--more: $LIB is not the library the earlier run measured (rebuilt since?): start a new run"
    else
        rm -rf "$OUT"
    fi
    mkdir -p "$OUT/logs"
    WORK="$(mktemp -d /tmp/rsb.XXXXXX)"
    chmod 755 "$WORK"
    mkdir -p "$WORK/stats" "$WORK/www" "$WORK/nginx/tmp" "$WORK/nginx/logs"
    chmod 1777 "$WORK/stats"
    head -c 1024 /dev/zero | tr '\0' 'x' >"$WORK/www/1k"
    chmod -R a+rX "$WORK/www"
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    (($(ulimit -n) >= 2100)) || log "open-file limit $(ulimit -n): 1000-connection runs may fail"
    # Everything RINGSHIM_* from the caller's environment is dropped: the modes set their own.
    local v
    for v in $(compgen -e | grep '^RINGSHIM' || true); do unset "$v"; done
    if ((MORE)); then
        {
            echo "continued	$(date -u '+%Y-%m-%d %H:%M:%S UTC') (run.sh --more)"
            echo "load_start_more	$(cut -d' ' -f1-3 /proc/loadavg)"
        } >>"$OUT/machine.tsv"
    else
        record_machine
        printf '%s\n' "$HEADER" >"$RAW"
    fi
    setup_netns

    local c
    if [[ ",$ONLY," == *,echo,* ]]; then
        local em="$ECHO_MODES"
        ((HAVE_URING)) || em="${em//N/}"
        for c in $ECHO_CONNS; do
            run_workload "echo c=$c" "$em" echo "$c" "$ECHO_SECS" "$ECHO_WARM"
        done
    fi
    if [[ ",$ONLY," == *,redis,* ]]; then
        for c in $REDIS_CONNS; do
            run_workload "redis c=$c" "$REDIS_MODES" redis "$c" "$REDIS_N"
        done
    fi
    if [[ ",$ONLY," == *,nginx,* ]]; then
        start_upstream
        local spec w case modes path
        for spec in $NGINX_CASES; do
            IFS=: read -r w case modes <<<"$spec"
            nginx_conf "$w"
            path=/1k
            [[ "$case" == proxy ]] && path=/proxy/1k
            run_workload "nginx $case w=$w" "$modes" nginx "$w" "$path" "$WRK_SECS"
        done
        kill_wait "$UPS_PID"
        UPS_PID="" UPS_PIDS=""
    fi
    if [[ ",$ONLY," == *,openloop,* ]]; then
        # Capacity: median closed-loop A throughput at OPEN_CONNS connections from this run,
        # else a short measurement now.
        local cap
        cap="$(awk -F'\t' -v w="echo c=$OPEN_CONNS" '$1 == w && $4 == "A" && $5 == "ok" { print $7 }' "$RAW" | sort -n |
            awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)] }')"
        if [[ -z "$cap" ]]; then
            # no clean A: a dropped one still tells the capacity well enough to set the rates
            cap="$(awk -F'\t' -v w="echo c=$OPEN_CONNS" '$1 == w && $4 == "A" && $7 != "" { print $7 }' "$RAW" | sort -n |
                awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)] }')"
        fi
        if [[ -z "$cap" ]]; then
            ROUNDS_SAVE=$ROUNDS RETRIES_SAVE=$RETRIES
            ROUNDS=1 RETRIES=1
            run_workload "echo capacity c=$OPEN_CONNS" A echo "$OPEN_CONNS" "$ECHO_SECS" "$ECHO_WARM"
            ROUNDS=$ROUNDS_SAVE RETRIES=$RETRIES_SAVE
            cap="$(awk -F'\t' -v w="echo capacity c=$OPEN_CONNS" '$1 == w && $4 == "A" && $5 == "ok" { print $7 }' "$RAW" | head -1)"
        fi
        if [[ -n "$cap" ]]; then
            echo "open_capacity	$cap" >>"$OUT/machine.tsv"
            local pct em="$OPEN_MODES" rate
            ((HAVE_URING)) || em="${em//N/}"
            for pct in $OPEN_PCTS; do
                rate=$((cap * pct / 100))
                run_workload "echo open ${pct}% c=$OPEN_CONNS" "$em" echo "$OPEN_CONNS" "$OPEN_SECS" "$ECHO_WARM" "$rate"
            done
        else
            log "open-loop skipped: no capacity measurement"
            echo "open_capacity	" >>"$OUT/machine.tsv"
        fi
    fi
    {
        echo "load_end	$(cut -d' ' -f1-3 /proc/loadavg)"
        echo "quiet_waited_s	$QUIET_WAITED"
        echo "duration_s	$((SECONDS - t_start))"
    } >>"$OUT/machine.tsv"
    log "report"
    cp "$RAW" "$BENCH/results-raw.tsv"
    python3 "$BENCH/report.py" --raw "$RAW" --machine "$OUT/machine.tsv" --md "$BENCH/RESULTS.md" \
        --png "$BENCH/results.png" --plot "$PLOT" || die "report.py failed"
    log "done in $((SECONDS - t_start)) s: $BENCH/RESULTS.md, $BENCH/results.png"
}

main
