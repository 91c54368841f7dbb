#!/usr/bin/env bash
# benchmarks/balance.sh - RINGSHIM_BALANCE=off (the kernel's reuseport hash) vs exact under
# a skewed connection load (issue #5). As root (network namespaces, CAP_BPF for exact).
#
#   bash benchmarks/balance.sh              # 7 clean A/B pairs + 2 control runs (~2-3 min) -> benchmarks/BALANCE.md
#   bash benchmarks/balance.sh --quick      # 1 pair + controls, 2 s runs (~20 s) -> benchmarks/out-balance/BALANCE.md
#   bash benchmarks/balance.sh [--pairs N] [--md PATH] [--keep]
#
# Server: balance_server.c, WORKERS threads each with its own SO_REUSEPORT listener and
# epoll loop, all pinned to CPU 0, under LD_PRELOAD=libringshim.so in both modes:
#   A  RINGSHIM_BALANCE=off     (the kernel hashes each connection's 4-tuple)
#   B  RINGSHIM_BALANCE=exact   (the shim's SK_REUSEPORT program: fewest open connections)
# Client: balance_client.c pinned to CPU 1. One big client (198.51.100.2) opens CONNS
# connections one after another and a small one (198.51.100.3) SMALL, interleaved; each
# waits for the greeting byte naming the worker that accepted it. Then closed-loop 1 KiB
# echo on all of them for WARM + SECS seconds.
# A pair runs A then B, each on a freshly started server (new port). A run whose steal
# exceeds STEAL_MAX % or whose foreign CPU use (everything but this benchmark's server and
# client) exceeds FOREIGN_MAX CPUs is contaminated; its whole pair is dropped and another
# pair run, up to RETRIES extra pairs. After the pairs, CTL_RUNS clean unpaired runs of two controls:
#   S  one worker (shim, off): the latency floor of CPU 0 without time-slicing between workers
#   K  WORKERS workers without the shim (the kernel's hash, no LD_PRELOAD)
#
# Topology: two network namespaces made here (rsbal-s-PID 198.51.100.1/24, rsbal-c-PID
# 198.51.100.2/24 + .3, TEST-NET-2, over a veth pair). No traffic leaves them. Everything
# started is stopped by PID and the namespaces deleted on any exit. Raw data and logs go
# to benchmarks/out-balance/ (not committed).
#
# Environment overrides: WORKERS=4 CONNS=64 SMALL=8 SECS=5 WARM=0.5 STEAL_MAX=5
# FOREIGN_MAX=0.15 RETRIES=8 QUIET_MAX=60 DROP_PAUSE=10 (s after a dropped pair) CTL_RUNS=3
# CTL_RETRIES=3 DEADLINE=2400 (s: no new run starts after it; the report is written anyway).
set -u -o pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=benchmarks/lib.sh
source "$BENCH/lib.sh"
ROOT="$(dirname "$BENCH")"
OUT="$BENCH/out-balance"
BIN="$BENCH/target/balance-bin" # not target/bin: run.sh may be building there at the same time
LIB="$ROOT/target/release/libringshim.so"
RSCLI="$ROOT/target/release/ringshim"

QUICK=0
PAIRS=""
MD=""
KEEP=0
while (($#)); do
    case "$1" in
    --quick) QUICK=1 ;;
    --pairs) PAIRS="$2"; shift ;;
    --md) MD="$2"; shift ;;
    --keep) KEEP=1 ;;
    -h | --help) sed -n '2,30p' "$0"; exit 0 ;;
    *) echo "balance.sh: unknown option '$1' (--quick, --pairs N, --md PATH, --keep)" >&2; exit 2 ;;
    esac
    shift
done

WORKERS=${WORKERS:-4}
CONNS=${CONNS:-64}
SMALL=${SMALL:-8}
STEAL_MAX=${STEAL_MAX:-5}
FOREIGN_MAX=${FOREIGN_MAX:-0.15}
CTL_RETRIES=${CTL_RETRIES:-3}
if ((QUICK)); then
    : "${PAIRS:=1}"
    SECS=${SECS:-2}
    WARM=${WARM:-0.3}
    RETRIES=${RETRIES:-2}
    QUIET_MAX=${QUIET_MAX:-20}
    DROP_PAUSE=${DROP_PAUSE:-3}
    CTL_RUNS=${CTL_RUNS:-1}
    DEADLINE=${DEADLINE:-300}
    : "${MD:=$OUT/BALANCE.md}" # a smoke run does not overwrite the committed report
else
    : "${PAIRS:=7}"
    SECS=${SECS:-5}
    WARM=${WARM:-0.5}
    RETRIES=${RETRIES:-8}
    QUIET_MAX=${QUIET_MAX:-60}
    CTL_RUNS=${CTL_RUNS:-3}
    DEADLINE=${DEADLINE:-2400}
    : "${MD:=$BENCH/BALANCE.md}"
fi

SRV_IP=198.51.100.1
CLI_IP=198.51.100.2
CLI2_IP=198.51.100.3
NS_SRV="rsbal-s-$$"
NS_CLI="rsbal-c-$$"
VETH_S="rsbls$$"
VETH_C="rsblc$$"
SRV_CPU=0
CLI_CPU=1
PORT_BASE=7100
NCPU=$(nproc)

[[ $EUID -eq 0 ]] || die "run as root (network namespaces; CAP_BPF for RINGSHIM_BALANCE=exact)"
((NCPU >= 2)) || die "needs 2 CPUs (server on CPU 0, client on CPU 1)"
[[ "$PAIRS" =~ ^[1-9][0-9]*$ ]] || die "--pairs wants a positive number"

# ------------------------------------------------------------------------ state + cleanup
WORK=""
NETNS=0
SRV_WRAP="" # the timeout(1) process the server runs under
SRV_PID=""  # the server itself
CLI_PID=""

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    kill_wait "$CLI_PID" "$SRV_WRAP"
    # The server is the wrapper's child; if it outlived the wrapper, end it too (by PID).
    [[ -n "$SRV_PID" ]] && kill -0 "$SRV_PID" 2>/dev/null && kill -KILL "$SRV_PID" 2>/dev/null
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
    if [[ ! -f "$LIB" || ! -x "$RSCLI" ]]; then
        log "cargo build --release --workspace (library or CLI missing)"
        (cd "$ROOT" && cargo build --release --workspace -q) || die "cargo build failed"
    fi
    [[ -f "$LIB" && -x "$RSCLI" ]] || die "missing $LIB or $RSCLI"
    mkdir -p "$BIN"
    gcc -O2 -Wall -pthread -o "$BIN/balance_server" "$BENCH/balance_server.c" || die "balance_server.c does not build"
    gcc -O2 -Wall -o "$BIN/balance_client" "$BENCH/balance_client.c" || die "balance_client.c does not build"
}

# ------------------------------------------------------------------------ topology
setup_netns() {
    ip netns add "$NS_SRV" || die "ip netns add $NS_SRV"
    NETNS=1
    ip netns add "$NS_CLI" || die "ip netns add $NS_CLI"
    ip link add "$VETH_S" netns "$NS_SRV" type veth peer name "$VETH_C" netns "$NS_CLI" || die "veth"
    ip -n "$NS_SRV" addr add "$SRV_IP/24" dev "$VETH_S"
    ip -n "$NS_CLI" addr add "$CLI_IP/24" dev "$VETH_C"
    ip -n "$NS_CLI" addr add "$CLI2_IP/24" dev "$VETH_C"
    ip -n "$NS_SRV" link set lo up
    ip -n "$NS_CLI" link set lo up
    ip -n "$NS_SRV" link set "$VETH_S" up
    ip -n "$NS_CLI" link set "$VETH_C" up
    ip -n "$NS_CLI" route get "$SRV_IP" >/dev/null || die "no route $CLI_IP -> $SRV_IP"
    log "namespaces $NS_SRV ($SRV_IP) <-> $NS_CLI ($CLI_IP, $CLI2_IP) over $VETH_S/$VETH_C"
}

# ------------------------------------------------------------------------ measurement helpers (as run.sh)
# procstat: "busy total steal" in USER_HZ ticks summed over all CPUs.

loadavg1() { cut -d' ' -f1 /proc/loadavg; }

# ------------------------------------------------------------------------ one run
RAW="$OUT/raw.tsv"
HEADER="pair	attempt	mode	balance	status	reason	counts	max	min	spread	rps	p50_us	p99_us	p999_us	max_us	small_p99_us	worker_rps	worker_p99_us	conn_req_min	conn_req_max	requests	srv_accepted	balance_decisions	balance_misses	sockets_on_uring	accepts	fallbacks	steal_pct	foreign_cpus	srv_cpu_ticks	load_before	load_after	secs"
RUN_N=0

start_server() { # BALANCE(off|exact|none: no shim) WORKERS PORT LOG
    local bal="$1" workers="$2" port="$3" logf="$4" i menv
    if [[ "$bal" == none ]]; then
        menv=(env -u LD_PRELOAD)
    else
        menv=(env LD_PRELOAD="$LIB" RINGSHIM_BALANCE="$bal" RINGSHIM_STATS_DIR="$WORK/stats")
    fi
    ip netns exec "$NS_SRV" timeout -k 5 $((${SECS%.*} + 90)) taskset -c "$SRV_CPU" \
        "${menv[@]}" "$BIN/balance_server" -a "$SRV_IP" -p "$port" -t "$workers" >"$logf" 2>&1 &
    SRV_WRAP=$!
    SRV_PID=""
    for ((i = 0; i < 200; i++)); do
        SRV_PID="$(pgrep -P "$SRV_WRAP" -x balance_server | head -1)"
        [[ -n "$SRV_PID" ]] && grep -q 'balance_server: ready' "$logf" && return 0
        kill -0 "$SRV_WRAP" 2>/dev/null || break
        sleep 0.05
    done
    RUN_ERR="server did not start: $(tail -3 "$logf" | tr '\n' ' ')"
    return 1
}

stop_server() {
    kill_wait "$SRV_WRAP" # timeout(1) passes the TERM on to the server, which prints its counts
    [[ -n "$SRV_PID" ]] && kill -0 "$SRV_PID" 2>/dev/null && kill_wait "$SRV_PID"
    SRV_WRAP="" SRV_PID=""
}

# Modes: A = shim, RINGSHIM_BALANCE=off; B = shim, exact (both WORKERS workers). Controls,
# run once after the pairs: S = shim, off, a single worker (the latency floor of this
# CPU without time-slicing between workers); K = WORKERS workers without the shim.
run_one() { # MODE PAIR ATTEMPT -> one row in $ROUND_FILE; returns 0 ok, 2 contaminated, 1 failed
    local mode="$1" pair="$2" attempt="$3" bal workers="$WORKERS" port logf clif line ok=1
    case "$mode" in
    A) bal=off ;;
    B) bal=exact ;;
    S) bal=off workers=1 ;;
    K) bal=none ;;
    esac
    RUN_N=$((RUN_N + 1))
    port=$((PORT_BASE + RUN_N))
    logf="$OUT/logs/p$pair.$attempt-$mode-server.log"
    clif="$OUT/logs/p$pair.$attempt-$mode-client.log"
    RUN_ERR="" line="" STEAL_PCT="" FOREIGN="" SRV_TICKS="" ELAPSED="" SRV_ACC=""
    local bd="" bm="" su="" ac="" fb=""
    local load0 load1
    load0="$(loadavg1)"
    start_server "$bal" "$workers" "$port" "$logf" || ok=0
    if ((ok)) && [[ "$bal" != none ]] && ! grep -q libringshim "/proc/$SRV_PID/maps" 2>/dev/null; then
        RUN_ERR="libringshim not mapped in the server (pid $SRV_PID)"
        ok=0
    elif ((ok)) && [[ "$bal" == none ]] && grep -q libringshim "/proc/$SRV_PID/maps" 2>/dev/null; then
        RUN_ERR="libringshim mapped in the server without LD_PRELOAD (pid $SRV_PID)"
        ok=0
    fi
    if ((ok)); then
        local s0 s1 b0 t0 st0 b1 t1 st1 c0 c1 w0 w1 rc
        sleep 0.2
        c0="$(own_children_cpu)"
        s0="$(pid_cpu "$SRV_PID")"
        read -r b0 t0 st0 <<<"$(procstat)"
        w0=$EPOCHREALTIME
        ip netns exec "$NS_CLI" timeout -k 5 $((${SECS%.*} + 40)) taskset -c "$CLI_CPU" \
            "$BIN/balance_client" -a "$SRV_IP" -p "$port" -t "$workers" -c "$CONNS" -b "$CLI_IP" \
            -k "$SMALL" -x "$CLI2_IP" -d "$SECS" -w "$WARM" >"$clif" 2>&1 &
        CLI_PID=$!
        wait "$CLI_PID"
        rc=$?
        CLI_PID=""
        w1=$EPOCHREALTIME
        read -r b1 t1 st1 <<<"$(procstat)"
        s1="$(pid_cpu "$SRV_PID")"
        c1="$(own_children_cpu)"
        # The shim's counters, read while the server still runs.
        local js
        if [[ "$bal" != none ]] && js="$("$RSCLI" stat "$SRV_PID" --json --dir "$WORK/stats" 2>/dev/null)"; then
            read -r bd bm su ac fb < <(python3 -c '
import json,sys
t=json.load(sys.stdin).get("totals",{})
print(*(t.get(k,0) for k in ("balance_decisions","balance_misses","sockets_on_uring","accepts","fallbacks")))' <<<"$js")
        fi
        SRV_TICKS=$((s1 - s0))
        ELAPSED="$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.2f", b - a }')"
        STEAL_PCT="$(awk -v s=$((st1 - st0)) -v t=$((t1 - t0)) 'BEGIN { printf "%.2f", (t > 0 ? 100 * s / t : 0) }')"
        FOREIGN="$(awk -v b=$((b1 - b0)) -v o=$((s1 - s0 + c1 - c0)) -v t=$((t1 - t0)) -v n="$NCPU" \
            'BEGIN { f = t > 0 ? (b - o) / (t / n) : 0; if (f < 0) f = 0; printf "%.2f", f }')"
        line="$(grep '^workers=' "$clif")"
        if ((rc != 0)); then
            RUN_ERR="balance_client exit $rc: $(tail -2 "$clif" | tr '\n' ' ')"
            ok=0
        elif [[ -z "$line" ]]; then
            RUN_ERR="balance_client printed no result"
            ok=0
        fi
    fi
    [[ -n "$SRV_WRAP" ]] && stop_server
    SRV_ACC="$(sed -n 's/.*accepted=\([0-9,]*\).*/\1/p' "$logf" 2>/dev/null | tail -1)"
    load1="$(loadavg1)"
    if ((ok)) && [[ "$bal" != none ]]; then
        if grep -q 'unavailable' "$logf"; then
            RUN_ERR="shim: $(grep -m1 unavailable "$logf")"
            ok=0
        elif [[ -z "$su" ]]; then
            RUN_ERR="no shim counters (ringshim stat failed)"
            ok=0
        elif ((su == 0)); then
            RUN_ERR="the shim accelerated no socket (sockets_on_uring=0)"
            ok=0
        elif [[ "$bal" == exact && "$bd" -eq 0 ]]; then
            RUN_ERR="exact: balance_decisions=0 (steering not active)"
            ok=0
        elif [[ "$bal" == off && "$bd" -ne 0 ]]; then
            RUN_ERR="off: balance_decisions=$bd (steering active without RINGSHIM_BALANCE=exact?)"
            ok=0
        fi
    fi
    kv() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$line"; }
    local status=ok reason="$RUN_ERR"
    if ((!ok)); then
        status=failed
        if [[ -n "$STEAL_PCT" ]] && awk -v s="$STEAL_PCT" -v m="$STEAL_MAX" -v f="$FOREIGN" -v fm="$FOREIGN_MAX" \
            'BEGIN { exit !(s > m || f > fm) }'; then
            reason="$reason; during contamination: steal ${STEAL_PCT}%, foreign load ${FOREIGN} CPUs"
        fi
    else
        if awk -v s="$STEAL_PCT" -v m="$STEAL_MAX" 'BEGIN { exit !(s > m) }'; then
            status=contaminated reason="steal ${STEAL_PCT}%"
        fi
        if awk -v f="$FOREIGN" -v m="$FOREIGN_MAX" 'BEGIN { exit !(f > m) }'; then
            status=contaminated reason="${reason:+$reason, }foreign load ${FOREIGN} CPUs"
        fi
    fi
    [[ "$mode" == S ]] && bal="off, 1 worker"
    [[ "$mode" == K ]] && bal="no shim"
    printf '%s\t' "$pair" "$attempt" "$mode" "$bal" "$status" "$reason" \
        "$(kv counts)" "$(kv max)" "$(kv min)" "$(kv spread)" "$(kv rps)" "$(kv p50_us)" "$(kv p99_us)" \
        "$(kv p999_us)" "$(kv max_us)" "$(kv small_p99_us)" "$(kv worker_rps)" "$(kv worker_p99_us)" \
        "$(kv conn_req_min)" "$(kv conn_req_max)" "$(kv requests)" "$SRV_ACC" "$bd" "$bm" "$su" "$ac" "$fb" \
        "$STEAL_PCT" "$FOREIGN" "$SRV_TICKS" "$load0" "$load1" >>"$ROUND_FILE"
    printf '%s\n' "$ELAPSED" >>"$ROUND_FILE"
    log "  pair $pair $mode ($bal): counts=$(kv counts) spread=$(kv spread) rps=$(kv rps) p50=$(kv p50_us)us p99=$(kv p99_us)us p999=$(kv p999_us)us decisions=$bd misses=$bm steal=$STEAL_PCT% foreign=$FOREIGN $status${reason:+ ($reason)}"
    case "$status" in
    ok) return 0 ;;
    contaminated) return 2 ;;
    *) return 1 ;;
    esac
}

# ------------------------------------------------------------------------ report
record_machine() {
    {
        echo "date	$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
        echo "kernel	$(uname -r)"
        echo "cpu	$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
        echo "ncpu	$NCPU"
        echo "mem	$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
        echo "virt	$(systemd-detect-virt 2>/dev/null || echo unknown)"
        echo "lib_sha256	$(sha256sum "$LIB" | cut -d' ' -f1)"
        echo "git	$(cd "$ROOT" && git log -1 --format=%h -- src crates Cargo.toml Cargo.lock build.rs 2>/dev/null) (last commit touching the shim; HEAD $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null))$(cd "$ROOT" && git diff --quiet HEAD -- src crates 2>/dev/null || echo ' +uncommitted changes in src/ or crates/')"
        echo "lib_mtime	$(date -u -r "$LIB" '+%Y-%m-%d %H:%M:%S UTC')"
        echo "mode	$([[ $QUICK == 1 ]] && echo quick || echo full)"
        echo "pairs	$PAIRS"
        echo "ctl_runs	$CTL_RUNS"
        echo "retries	$RETRIES"
        echo "drop_pause	${DROP_PAUSE:-10}"
        echo "deadline	$DEADLINE"
        echo "workers	$WORKERS"
        echo "conns	$CONNS"
        echo "small	$SMALL"
        echo "secs	$SECS"
        echo "warm	$WARM"
        echo "steal_max	$STEAL_MAX"
        echo "foreign_max	$FOREIGN_MAX"
        echo "load_start	$(cut -d' ' -f1-3 /proc/loadavg)"
    } >"$OUT/machine.tsv"
}

report() {
    python3 - "$RAW" "$OUT/machine.tsv" "$MD" <<'PY'
import csv, statistics, sys

raw, machine, md = sys.argv[1:4]
m = dict(l.rstrip("\n").split("\t", 1) for l in open(machine) if "\t" in l)
rows = list(csv.DictReader(open(raw), delimiter="\t"))
ok = [r for r in rows if r["status"] == "ok"]
pairs = sorted({r["pair"] for r in ok if r["mode"] == "A"} & {r["pair"] for r in ok if r["mode"] == "B"}, key=int)
by = {(r["pair"], r["mode"]): r for r in ok}

def num(v):
    if v in ("", None):
        return None
    return float("inf") if v == "inf" else float(v)

def med(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None, None
    return statistics.median(vals), min(vals), max(vals)

def fmt(v, nd=0):
    if v is None:
        return "-"
    if v == float("inf"):
        return "inf"
    return f"{v:.{nd}f}"

def msr(t, nd=0):
    md_, lo, hi = t
    if md_ is None:
        return "-"
    return f"{fmt(md_, nd)} [{fmt(lo, nd)}..{fmt(hi, nd)}]"

def col(mode, key):
    return [num(by[(p, mode)][key]) for p in pairs]

def ratio(key):
    out = []
    for p in pairs:
        a, b = num(by[(p, "A")][key]), num(by[(p, "B")][key])
        out.append(b / a if a else None)
    return out

L = []
w = L.append
w("# Connection balancing: kernel hash vs `RINGSHIM_BALANCE=exact`")
w("")
w(f"Generated by `bash benchmarks/balance.sh{' --quick' if m.get('mode') == 'quick' else ''}` (issue #5). "
  "Raw per-run data and logs: `benchmarks/out-balance/` (not committed).")
w("")
w("| | |")
w("|---|---|")
for k, label in [("date", "date"), ("kernel", "kernel"), ("cpu", "CPU"), ("ncpu", "CPUs"), ("mem", "memory"),
                 ("virt", "virtualisation"), ("git", "commit"), ("lib_sha256", "libringshim.so sha256"),
                 ("lib_mtime", "libringshim.so built"), ("load_start", "load average at start"),
                 ("load_end", "load average at end"), ("duration_s", "duration (s)")]:
    if k in m:
        w(f"| {label} | {m[k]} |")
w(f"| settings | PAIRS={m.get('pairs')} RETRIES={m.get('retries')} DROP_PAUSE={m.get('drop_pause')} "
  f"CTL_RUNS={m.get('ctl_runs')} DEADLINE={m.get('deadline')} WORKERS={m.get('workers')} CONNS={m.get('conns')} SMALL={m.get('small')} "
  f"SECS={m.get('secs')} WARM={m.get('warm')} STEAL_MAX={m.get('steal_max')} FOREIGN_MAX={m.get('foreign_max')} |")
w("")
w("**Set-up.** `balance_server` (plain libc): "
  f"{m['workers']} worker threads, each with its own `SO_REUSEPORT` listener on 198.51.100.1 and its own epoll "
  "loop, all pinned to CPU 0, under `LD_PRELOAD=libringshim.so` in both modes (default routing: the sockets run "
  "on io_uring). **A** = `RINGSHIM_BALANCE=off` (the kernel's reuseport hash of the 4-tuple), "
  "**B** = `RINGSHIM_BALANCE=exact` (the shim's `SK_REUSEPORT` program steers each new connection to the "
  "listener with the fewest open connections). "
  f"`balance_client` on CPU 1 in a second namespace: a big client (198.51.100.2) opens {m['conns']} connections "
  f"one after another and a small client (198.51.100.3) {m['small']}, interleaved; each connection waits for "
  "the server's greeting byte (which worker accepted it) before the next one is opened. Then closed-loop 1 KiB "
  f"echo on all {int(m['conns']) + int(m['small'])} connections for {m['warm']} s warm-up + {m['secs']} s "
  "measured. A pair = A then B, each on a fresh server; "
  f"a run with steal > {m['steal_max']} % or foreign CPU > {m['foreign_max']} CPUs is contaminated and its "
  "pair is dropped and replaced.")
w("")
w("*spread* = max/min connections per worker (1.00 = perfectly even; inf = a worker got none). "
  "*decisions*/*misses* = the shim's `balance_decisions` / `balance_misses` (`ringshim stat PID`, read while the "
  "server runs, after the load).")
w("")
w(f"## Medians over {len(pairs)} clean pairs: median [min..max]")
w("")
w("| | A: kernel hash | B: exact | B/A per pair |")
w("|---|---|---|---|")
w(f"| connection spread max/min | {msr(med(col('A','spread')), 2)} | {msr(med(col('B','spread')), 2)} | |")
w(f"| connections on busiest worker | {msr(med(col('A','max')))} | {msr(med(col('B','max')))} | |")
w(f"| connections on idlest worker | {msr(med(col('A','min')))} | {msr(med(col('B','min')))} | |")
w(f"| p99 latency (µs) | {msr(med(col('A','p99_us')))} | {msr(med(col('B','p99_us')))} | {msr(med(ratio('p99_us')), 3)} |")
w(f"| requests/s | {msr(med(col('A','rps')))} | {msr(med(col('B','rps')))} | {msr(med(ratio('rps')), 3)} |")
w(f"| p50 latency (µs) | {msr(med(col('A','p50_us')))} | {msr(med(col('B','p50_us')))} | {msr(med(ratio('p50_us')), 3)} |")
w(f"| p99.9 latency (µs) | {msr(med(col('A','p999_us')))} | {msr(med(col('B','p999_us')))} | {msr(med(ratio('p999_us')), 3)} |")
w(f"| small client's p99 (µs) | {msr(med(col('A','small_p99_us')))} | {msr(med(col('B','small_p99_us')))} | {msr(med(ratio('small_p99_us')), 3)} |")
cr = {mode: [num(by[(p, mode)]["conn_req_max"]) / num(by[(p, mode)]["conn_req_min"])
             if num(by[(p, mode)]["conn_req_min"]) else float("inf") for p in pairs] for mode in "AB"}
w(f"| per-connection requests max/min | {msr(med(cr['A']), 2)} | {msr(med(cr['B']), 2)} | |")
w("")
w("## Every run")
w("")
w("| pair | mode | status | connections per worker | spread | p99 µs | requests/s | p50 µs | p99.9 µs | server's own count | decisions | misses | steal % | foreign CPUs |")
w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for r in rows:
    if r["mode"] not in "AB":
        continue
    st = r["status"] + (f" ({r['reason']})" if r["reason"] else "")
    w(f"| {r['pair']} | {r['mode']} {r['balance']} | {st} | {r['counts'].replace(',', ' / ')} | {r['spread']} | "
      f"{r['p99_us']} | {r['rps']} | {r['p50_us']} | {r['p999_us']} | {r['srv_accepted'].replace(',', ' / ')} | "
      f"{r['balance_decisions']} | {r['balance_misses']} | {r['steal_pct']} | {r['foreign_cpus']} |")
w("")
w("Per-worker detail of the clean runs (requests/s and p99 per worker, 10 µs resolution):")
w("")
w("| pair | mode | connections | requests/s per worker | p99 µs per worker |")
w("|---|---|---|---|---|")
for p in pairs:
    for mode in "AB":
        r = by[(p, mode)]
        w(f"| {p} | {mode} | {r['counts'].replace(',', ' / ')} | {r['worker_rps'].replace(',', ' / ')} | "
          f"{r['worker_p99_us'].replace(',', ' / ')} |")
w("")

ctl = [r for r in rows if r["mode"] in ("S", "K")]
ctl_ok = {c: [r for r in ctl if r["mode"] == c and r["status"] == "ok"] for c in "SK"}
def cmed(c, key, nd=0):
    return msr(med([num(r[key]) for r in ctl_ok[c]]), nd)
if ctl:
    w(f"## Controls (not paired; {m.get('ctl_runs', '?')} clean runs wanted of each)")
    w("")
    w(f"**S**: the same load on a single worker (shim loaded, `off`): the latency floor of one CPU without "
      f"time-slicing between worker threads. **K**: {m['workers']} workers without the shim (kernel hash).")
    w("")
    w("| run | status | connections per worker | spread | p99 µs | requests/s | p50 µs | p99.9 µs | steal % | foreign CPUs |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for r in ctl:
        st = r["status"] + (f" ({r['reason']})" if r["reason"] else "")
        w(f"| {r['mode']} ({r['balance']}) | {st} | {r['counts'].replace(',', ' / ')} | {r['spread']} | {r['p99_us']} | "
          f"{r['rps']} | {r['p50_us']} | {r['p999_us']} | {r['steal_pct']} | {r['foreign_cpus']} |")
    w("")
    w("| clean runs: median [min..max] | S: 1 worker, shim | K: " + m["workers"] + " workers, no shim |")
    w("|---|---|---|")
    w(f"| runs | {len(ctl_ok['S'])} | {len(ctl_ok['K'])} |")
    w(f"| connection spread max/min | {cmed('S', 'spread', 2)} | {cmed('K', 'spread', 2)} |")
    w(f"| p99 latency (µs) | {cmed('S', 'p99_us')} | {cmed('K', 'p99_us')} |")
    w(f"| requests/s | {cmed('S', 'rps')} | {cmed('K', 'rps')} |")
    w(f"| p50 latency (µs) | {cmed('S', 'p50_us')} | {cmed('K', 'p50_us')} |")
    w(f"| p99.9 latency (µs) | {cmed('S', 'p999_us')} | {cmed('K', 'p999_us')} |")
    w("")

# ---- reading, from the numbers
w("## Reading")
w("")
if not pairs:
    w("No clean pair: nothing to conclude (see the runs above).")
else:
    sa, sb = col("A", "spread"), col("B", "spread")
    even_b = all(v is not None and v <= 1.0 + 1e-9 for v in sb)
    w(f"- **Spread.** With the kernel's hash the per-worker connection counts of the same skewed load spread "
      f"{fmt(min(sa), 2)}..{fmt(max(sa), 2)} (max/min; median {fmt(statistics.median(sa), 2)}). "
      + (f"With `exact` every clean pair came out perfectly even (spread 1.00: "
         f"{by[(pairs[0], 'B')]['counts'].replace(',', '/')})."
         if even_b else
         f"With `exact` the spread was {fmt(min(sb), 2)}..{fmt(max(sb), 2)}: NOT always even — see the "
         "per-run table and the `balance_misses` column."))
    misses = [num(by[(p, "B")]["balance_misses"]) for p in pairs]
    w(f"  The shim counted {fmt(min(misses))}..{fmt(max(misses))} `balance_misses` per exact run "
      "(connections that landed on a listener other than the target of the moment).")
    def verdict(key, better_low=True):
        rr = [v for v in ratio(key) if v is not None]
        if not rr:
            return "no data"
        md_, lo, hi = statistics.median(rr), min(rr), max(rr)
        if len(rr) < 3:
            return f"B/A median {md_:.3f} [{lo:.3f}..{hi:.3f}] from only {len(rr)} pair(s): too few to conclude"
        if lo <= 1.0 <= hi:
            return f"B/A median {md_:.3f} [{lo:.3f}..{hi:.3f}]: the spread crosses 1, no consistent difference"
        better = (hi < 1.0) if better_low else (lo > 1.0)
        size = " (by less than 2 % at the median: small)" if abs(md_ - 1.0) < 0.02 else ""
        return (f"B/A median {md_:.3f} [{lo:.3f}..{hi:.3f}]: "
                + ("better" if better else "worse") + f" with exact in every one of the {len(rr)} pairs" + size)
    w(f"- **p99 latency:** {verdict('p99_us')}.")
    w(f"- **p99.9 latency:** {verdict('p999_us')}.")
    w(f"- **requests/s:** {verdict('rps', better_low=False)}.")
    w(f"- **Per-connection fairness** (requests the busiest connection completed / the least busy): "
      f"hash {msr(med(cr['A']), 2)}, exact {msr(med(cr['B']), 2)}"
      + (": every exact run was fairer than every hash run." if len(pairs) >= 3 and max(cr["B"]) < min(cr["A"]) else "."))
    pa, pb = med(col("A", "p99_us"))[0], med(col("B", "p99_us"))[0]
    if ctl_ok["S"]:
        s99 = med([num(r["p99_us"]) for r in ctl_ok["S"]])[0]
        line = (f"- **Where the tail comes from.** One worker on the same CPU with the same load (control S) had "
                f"p99 {cmed('S', 'p99_us')} µs, against medians of {fmt(pa)} (hash) and {fmt(pb)} µs (exact) with "
                f"{m['workers']} workers")
        k99 = None
        if ctl_ok["K"]:
            k99 = med([num(r["p99_us"]) for r in ctl_ok["K"]])[0]
            line += f"; {m['workers']} workers without the shim (control K) had {cmed('K', 'p99_us')} µs"
        line += "."
        if s99 and pa and pb and s99 < pa / 2 and s99 < pb / 2:
            line += (f" The multi-millisecond p99 comes with {m['workers']} worker threads time-sliced on one CPU "
                     "(it is not there with one worker)")
            if k99 is not None and k99 > s99 * 2:
                line += ", with or without the shim,"
            elif k99 is not None:
                line += " (but see control K: without the shim the median tail was low — compare its runs),"
            line += " whichever way the connections are spread; even spreading does not remove it."
        w(line)
w("")
w("**What this set-up can and cannot show.** All worker threads share one pinned CPU (CPU 0), as in the main "
  "harness, so an uneven spread cannot leave a CPU idle while another is overloaded: the scheduler divides the one "
  "CPU between the worker threads that have work, whatever their connection counts. What an uneven spread can still "
  "change here is *which connections wait*: the scheduler shares the CPU roughly per thread, not per connection, so "
  "connections on a crowded worker may be served less often than those on a sparse one (the per-connection "
  "requests max/min row and the per-worker table show whether that happened). On a machine with one CPU per worker "
  "the hash's imbalance would also idle CPUs and cap throughput; this 2-vCPU VM, with the client on the other CPU, "
  "cannot show that. Read the connection spread as the direct effect of `exact`, and the latency and throughput "
  "rows as what it did to one CPU's worth of workers on this machine.")
w("")
dropped = [r for r in rows if r["status"] != "ok"]
if dropped:
    w("## Dropped and failed runs")
    w("")
    for r in dropped:
        w(f"- pair {r['pair']} (attempt {r['attempt']}) {r['mode']} {r['balance']}: {r['status']}: {r['reason']}")
    w("")
open(md, "w").write("\n".join(L))
print(f"wrote {md}")
PY
}

# ------------------------------------------------------------------------ main
main() {
    local t_start=$SECONDS
    build
    rm -rf "$OUT"
    mkdir -p "$OUT/logs"
    WORK="$(mktemp -d /tmp/rsbal.XXXXXX)"
    mkdir -p "$WORK/stats"
    local v
    for v in $(compgen -e | grep '^RINGSHIM' || true); do unset "$v"; done
    record_machine
    printf '%s\n' "$HEADER" >"$RAW"
    setup_netns

    local have=0 attempts=0 rca rcb why
    while ((have < PAIRS && attempts < PAIRS + RETRIES)); do
        if ((SECONDS - t_start > DEADLINE)); then
            log "DEADLINE ($DEADLINE s) reached: no more pairs"
            break
        fi
        attempts=$((attempts + 1))
        ROUND_FILE="$WORK/round.tsv"
        : >"$ROUND_FILE"
        wait_quiet
        run_one A "$attempts" "$attempts"
        rca=$?
        rcb=1
        if ((rca == 0)); then
            run_one B "$attempts" "$attempts"
            rcb=$?
        fi
        if ((rca == 0 && rcb == 0)); then
            cat "$ROUND_FILE" >>"$RAW"
            have=$((have + 1))
        else
            # A pair stands or falls together: mark the clean half dropped too.
            why="$(awk -F'\t' '$5 != "ok" { print $3 ": " $6; exit }' "$ROUND_FILE")"
            awk -F'\t' -v OFS='\t' -v why="$why" '{
                if ($5 == "ok") { $5 = "dropped"; $6 = "other half of the pair " why }
                else if ($5 == "contaminated") $5 = "dropped"
                print }' "$ROUND_FILE" >>"$RAW"
            log "  pair $attempts dropped ($why); pausing ${DROP_PAUSE:-10} s"
            sleep "${DROP_PAUSE:-10}" # steal comes in waves; wait_quiet cannot see it while idle
        fi
    done
    ((have < PAIRS)) && log "only $have clean pairs of $PAIRS after $attempts attempts"
    # Controls, not paired: CTL_RUNS clean runs of S and of K, alternating, with at most
    # CTL_RUNS + CTL_RETRIES attempts each.
    local cm i
    local -A cgot=([S]=0 [K]=0) ctry=([S]=0 [K]=0)
    for ((i = 0; i < 2 * (CTL_RUNS + CTL_RETRIES); i++)); do
        cm=S
        ((i % 2)) && cm=K
        ((cgot[$cm] < CTL_RUNS && ctry[$cm] < CTL_RUNS + CTL_RETRIES)) || continue
        if ((SECONDS - t_start > DEADLINE)); then
            log "DEADLINE ($DEADLINE s) reached: no more control runs"
            break
        fi
        ctry[$cm]=$((ctry[$cm] + 1))
        ROUND_FILE="$WORK/round.tsv"
        : >"$ROUND_FILE"
        wait_quiet
        run_one "$cm" "ctl${ctry[$cm]}" "${ctry[$cm]}"
        rca=$?
        awk -F'\t' -v OFS='\t' '{ if ($5 == "contaminated") $5 = "dropped"; print }' "$ROUND_FILE" >>"$RAW"
        if ((rca == 0)); then
            cgot[$cm]=$((cgot[$cm] + 1))
        else
            sleep "${DROP_PAUSE:-10}"
        fi
    done
    {
        echo "load_end	$(cut -d' ' -f1-3 /proc/loadavg)"
        echo "quiet_waited_s	$QUIET_WAITED"
        echo "duration_s	$((SECONDS - t_start))"
    } >>"$OUT/machine.tsv"
    report || die "report failed"
    log "done in $((SECONDS - t_start)) s: $MD"
}

main
