#!/usr/bin/env bash
# Real, unmodified servers from Debian packages under the shim, each compared with the
# same run without it:
#
#   redis    redis-server; redis-cli round-trips a 1 MiB value; redis-benchmark SET/GET;
#            the keyspace and the server's own command counters are checked afterwards;
#            BGSAVE (fork) while two clients INCR counters (redis-cli, one connection:
#            every reply 1..20000 in order; redis-benchmark, 4 connections: the final
#            value exact) must finish ok, and redis-check-rdb must find dump.rdb valid.
#   nginx    2 worker processes (LD_PRELOAD given to the master, inherited by the forked
#            workers): a 1 KiB and a 1 MiB static file and the same through proxy_pass to
#            a second server block (upstream keepalive); curl compares sha256; wrk must
#            see no non-2xx/3xx answers and no socket errors; a reload (SIGHUP, new
#            workers forked) must keep serving.
#   haproxy  2 threads in front of an nginx; wrk. (haproxy 2.6's threads share one
#            listener: not Envoy's model, hence mtproxy.)
#   mtproxy  the project's own Envoy-shaped proxy (tests/progs/mt_proxy.c, compiled into
#            the work dir): 2 threads, each with its own edge-triggered epoll and its own
#            SO_REUSEPORT listener on one port, one upstream connection per client, in
#            front of an nginx. Checked: one listener per thread; curl 1 KiB and 1 MiB
#            (single and keep-alive) and 16 MiB read at 16 MB/s (backpressure: some
#            proxy write must find its destination full), sha256 equal; a client reset
#            mid-transfer; wrk; a half-close both ways through a second proxy to a sink
#            that answers only after the FIN (scripts/lib/mtproxy_client.py); the same
#            proxy against a refusing upstream (the client is reset at once); no socket
#            left open; exit 0 on SIGTERM with every thread having accepted connections
#            (its per-thread counts); with the shim, every mt_proxy thread's own
#            counters show accepts and io_uring sockets, and every client and upstream
#            socket went onto io_uring. netns only: 20 sequential `Connection: close`
#            requests and 20 held connections of one client through a fresh proxy, with
#            the shim under RINGSHIM_BALANCE=exact (asserted: all 20 closed ones on one
#            thread, ties going to the lowest listener; the held ones 10/10), without it
#            under the kernel's hash (shown).
#
# Server shapes of issue #5 (netns place only, each without and with the shim):
#   redis shapes  a master with io-threads 4 + io-threads-do-reads and an AOF: MONITOR;
#                 redis-benchmark through the I/O threads; 16 MiB values; a replica
#                 (full diskless sync of 1000 keys + 16 MiB, then the stream); pub/sub to
#                 50 subscribers (scripts/lib/redis_pubsub.py); BGREWRITEAOF while a
#                 client INCRs, then redis-check-aof and a reload of the AOF.
#   nginx shapes  2 workers with `listen ... reuseport` (every worker served), with
#                 accept_mutex on and off; a reload (SIGHUP) and a graceful quit (SIGQUIT)
#                 while wrk runs: no non-2xx, and wrk's errors and the time the old
#                 processes take to exit compared with the run without the shim.
#
#   nginx upgrade  the binary upgrade under a 4 s wrk: USR2 (the master execs itself with
#                 a cleaned environment; the new master and workers must carry the shim,
#                 and their connections, accepted on inherited listeners, be on io_uring),
#                 WINCH (old workers exit), QUIT of the old master; no non-2xx, wrk's
#                 errors compared with the run without the shim (WINCH ends the old
#                 workers' keep-alive connections: 32 read errors both ways here), both
#                 generations answered requests, 1 MiB through proxy_pass afterwards.
#
# Each of the first four and nginx upgrade runs in two places:
#   loopback  everything on 127.0.0.1, RINGSHIM_KERNEL_NETS=none so loopback is routed
#             through the shim;
#   netns     server in namespace rs-srv-PID at 198.51.100.1 (TEST-NET-2), clients in
#             rs-cli-PID at 198.51.100.2 over a veth pair, the shim in its default
#             configuration (only loopback stays on the kernel: the TEST-NET traffic is
#             accelerated, nginx's proxy_pass to 127.0.0.1 stays on the kernel path).
#
#   bash scripts/test-servers.sh [loopback] [netns]     (default: both; netns needs root)
#   RS_SCENARIOS=mtproxy,nginx bash scripts/test-servers.sh     (only these; names: redis
#       nginx haproxy mtproxy redis-shapes nginx-shapes nginx-upgrade; default: all)
#
# Environment: RINGSHIM_LIB (default target/release/libringshim.so), CI=true (a missing
# netns capability is a failure instead of a skip), KEEP_WORKDIR=1 (keep the temp dir),
# RS_SCENARIOS (above).
# All traffic stays on 127.0.0.1 or inside the namespaces this script creates; every
# load run is bounded in requests or seconds and by `timeout`.
set -euo pipefail

# shellcheck source=scripts/lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

SRV_ADDR_NS=198.51.100.1
CLI_ADDR_NS=198.51.100.2
NS_SRV="rs-srv-$$"
NS_CLI="rs-cli-$$"
VETH_SRV="rs-s$$" # interface names are limited to 15 characters
VETH_CLI="rs-c$$"
NETNS_CREATED=0

WORK=""
MTPROXY="" # the compiled tests/progs/mt_proxy.c
SCENARIO_NAMES="redis nginx haproxy mtproxy redis-shapes nginx-shapes nginx-upgrade"
RESULTS=() # "name|PASS|seconds" rows for the summary

# ---------------------------------------------------------------------------------------
# Where a scenario runs: sets ADDR, SRV_PRE (prefix for server commands), CLI_PRE (for
# client commands), SHIM_ENV (environment of the server with the shim) per place/mode.
place() {
    local where="$1" mode="$2"
    MODE="$mode"
    if [[ "$where" == netns ]]; then
        ADDR=$SRV_ADDR_NS
        SRV_PRE=(ip netns exec "$NS_SRV")
        CLI_PRE=(ip netns exec "$NS_CLI")
        NS_FOR_PORTS="$NS_SRV"
        CLI_NS="$NS_CLI"
        # Default routing: only loopback on the kernel, so the TEST-NET path is accelerated.
        SHIM_NETS=(-u RINGSHIM_KERNEL_NETS)
    else
        ADDR=127.0.0.1
        SRV_PRE=()
        CLI_PRE=()
        NS_FOR_PORTS=""
        CLI_NS=""
        # Test setting: loopback is routed through the shim too.
        SHIM_NETS=(RINGSHIM_KERNEL_NETS=none)
    fi
    if [[ "$mode" == shim ]]; then
        # The counters go to $RINGSHIM_STATS_DIR, a directory of this run (world-writable:
        # nginx workers run as nobody) instead of /dev/shm, so nothing is left behind.
        SHIM_ENV=(env "${SHIM_NETS[@]}" LD_PRELOAD="$RS_LIB")
    else
        SHIM_ENV=(env -u LD_PRELOAD)
    fi
}

# check_preload MODE PID...: the shim must be mapped into every process with the shim
# and into none without it (otherwise the comparison would be meaningless).
check_preload() {
    local mode="$1" pid
    shift
    for pid in "$@"; do
        if [[ "$mode" == shim ]]; then
            shim_loaded "$pid" || die "libringshim is not mapped into pid $pid ($(cat "/proc/$pid/comm" 2>/dev/null))"
        else
            ! shim_loaded "$pid" || die "libringshim is mapped into pid $pid although not preloaded"
        fi
    done
    ok "preload $([[ "$mode" == shim ]] && echo present || echo absent) in pid(s) $*"
}

# expect_comm PID NAME: the recorded PID is the server itself (env and ip netns exec
# exec'd into it), not a wrapper: signals and counters must reach the right process.
expect_comm() {
    local comm
    comm="$(cat "/proc/$1/comm" 2>/dev/null)" || die "pid $1 is gone"
    [[ "$comm" == "$2"* ]] || die "pid $1 is '$comm', expected $2"
}

# dump_logs DIR: the tail of a failed scenario's server logs.
dump_logs() {
    local f
    for f in "$1"/redis.log "$1"/master.log "$1"/replica.log "$1"/error.log "$1"/nginx.out "$1"/haproxy.log "$1"/mtproxy*.log; do
        [[ -s "$f" ]] || continue
        printf '  --- tail of %s ---\n' "$f"
        tail -n 15 "$f" | sed 's/^/  | /'
    done
}

# sha FILE: its sha256.
sha() { sha256sum "$1" | cut -d' ' -f1; }

# metric LABEL UNIT VALUE: one throughput figure of the current mode, for the summary.
metric() { printf '%s\t%s\t%s\t%s\n' "$1" "$MODE" "$3" "$2" >>"$WORK/metrics.tsv"; }

# wrk_check LABEL URL LOG [SECONDS]: bounded wrk run (2 threads, 32 connections, 3 s
# unless told); fails on any non-2xx/3xx answer, socket error, or no request at all.
wrk_check() {
    local label="$1" url="$2" logf="$3" secs="${4:-3}" reqs rps
    "${CLI_PRE[@]}" timeout 30 wrk -t2 -c32 -d"${secs}s" --timeout 5s "$url" >"$logf" 2>&1 ||
        { cat "$logf"; die "wrk $url failed"; }
    if grep -q 'Non-2xx or 3xx responses' "$logf"; then
        cat "$logf"
        die "wrk $url: $(grep 'Non-2xx' "$logf" | xargs)"
    fi
    if grep -q 'Socket errors' "$logf"; then
        cat "$logf"
        die "wrk $url: $(grep 'Socket errors' "$logf" | xargs)"
    fi
    reqs="$(awk '/requests in/ { print $1 }' "$logf")"
    rps="$(awk '/^Requests\/sec:/ { print $2 }' "$logf")"
    [[ "${reqs:-0}" -gt 0 ]] || { cat "$logf"; die "wrk $url: no requests completed"; }
    metric "$label" "req/s" "$rps"
    ok "wrk $url: $reqs requests, $rps req/s, no errors"
}

# no_crash_lines LOG PATTERN WHAT: fails if LOG matches PATTERN (crash/alert lines).
no_crash_lines() {
    if grep -Eq "$2" "$1"; then
        grep -E "$2" "$1" | head -20
        die "$3 ($1)"
    fi
}

# ---------------------------------------------------------------------------------------
# redis

scenario_redis() {
    local where="$1" mode="$2" d port pid big
    place "$where" "$mode"
    d="$WORK/redis-$where-$mode"
    SCEN_DIR="$d"
    mkdir -p "$d"
    port="$(free_port "$NS_FOR_PORTS")"
    start_bg "$d/redis.log" "${SRV_PRE[@]}" "${SHIM_ENV[@]}" redis-server \
        --bind "$ADDR" --port "$port" --save '' --appendonly no --daemonize no \
        --protected-mode no --dir "$d" --logfile ''
    pid=$RS_LAST_PID
    wait_tcp "$ADDR" "$port" "$pid" 15 "$CLI_NS" || die "redis-server did not start"
    expect_comm "$pid" redis-server
    ok "redis-server pid $pid listens on $ADDR:$port"
    check_preload "$mode" "$pid"

    rcli() { "${CLI_PRE[@]}" timeout 30 redis-cli -h "$ADDR" -p "$port" "$@"; }
    [[ "$(rcli PING)" == PONG ]] || die "PING did not answer PONG"

    # 1 MiB of random bytes (NULs and newlines included): SET through stdin, GET raw.
    big="$d/big.in"
    head -c 1048576 /dev/urandom >"$big"
    [[ "$(rcli -x SET big <"$big")" == OK ]] || die "SET big failed"
    rcli --raw GET big >"$d/big.out"
    # --raw appends one newline.
    [[ "$(stat -c %s "$d/big.out")" == 1048577 ]] || die "GET big returned $(stat -c %s "$d/big.out") bytes, expected 1048576+1"
    [[ "$(head -c 1048576 "$d/big.out" | sha256sum | cut -d' ' -f1)" == "$(sha "$big")" ]] || die "GET big: content differs"
    ok "1 MiB value round-trips (sha256 equal)"

    # Bounded load: 20000 requests per test, 50 connections, 1 KiB values.
    "${CLI_PRE[@]}" timeout 120 redis-benchmark -h "$ADDR" -p "$port" -q -n 20000 -c 50 -d 1024 -t set,get \
        >"$d/bench.raw" 2>&1 || { tr '\r' '\n' <"$d/bench.raw" | tail -20; die "redis-benchmark failed"; }
    tr '\r' '\n' <"$d/bench.raw" | grep -E '^(SET|GET): .*requests per second' >"$d/bench.txt" ||
        { tr '\r' '\n' <"$d/bench.raw" | tail -20; die "redis-benchmark printed no results"; }
    [[ "$(grep -c . "$d/bench.txt")" == 2 ]] || { cat "$d/bench.txt"; die "redis-benchmark: expected a SET and a GET line"; }
    sed 's/^/       /' "$d/bench.txt"
    metric "redis $where SET" "req/s" "$(awk '/^SET:/ { print $2 }' "$d/bench.txt")"
    metric "redis $where GET" "req/s" "$(awk '/^GET:/ { print $2 }' "$d/bench.txt")"

    # Without -r, redis-benchmark uses the one key "key:__rand_int__": the keyspace must be
    # exactly that key (1 KiB of 'x') and our 1 MiB value, which must still be intact.
    local n len cmds
    n="$(rcli DBSIZE)"
    [[ "$n" == 2 ]] || die "DBSIZE is $n, expected 2 (big, key:__rand_int__); keys: $(rcli --scan | head | xargs)"
    len="$(rcli STRLEN key:__rand_int__)"
    [[ "$len" == 1024 ]] || die "STRLEN key:__rand_int__ is $len, expected 1024"
    # (To a file first: `head -c` closing the pipe early would SIGPIPE redis-cli.)
    rcli --raw GET big >"$d/big.out2"
    head -c 1048576 "$d/big.out2" | cmp -s - "$big" || die "1 MiB value changed during the benchmark"
    # Every benchmark request reached the server: 2 x 20000 commands at least.
    cmds="$(rcli INFO stats | tr -d '\r' | awk -F: '$1 == "total_commands_processed" { print $2 }')"
    ((cmds >= 40000)) || die "server processed $cmds commands, expected >= 40000"
    ok "keyspace: 2 keys as expected; server processed $cmds commands"

    # fork() while clients write: BGSAVE's child writes the dataset while the parent keeps
    # serving two writers, started first: redis-cli INCRs one counter 20000 times on one
    # connection (every reply is kept: exactly 1..20000 in order) and redis-benchmark
    # INCRs another 40000 times from 4 connections (the final value must be exact).
    local i st="" seqpid ctrpid before overlapped=0 nseq=20000 nctr=40000
    before="$(rcli INFO stats | tr -d '\r' | awk -F: '$1 == "total_commands_processed" { print $2 }')"
    start_bg "$d/seq.out" "${CLI_PRE[@]}" timeout 60 redis-cli -h "$ADDR" -p "$port" -r "$nseq" INCR rdb:seq
    seqpid=$RS_LAST_PID
    start_bg "$d/ctr.log" "${CLI_PRE[@]}" timeout 60 redis-benchmark -h "$ADDR" -p "$port" -q -n "$nctr" -c 4 INCR rdb:ctr
    ctrpid=$RS_LAST_PID
    for ((i = 0; i < 100; i++)); do
        (($(rcli INFO stats | tr -d '\r' | awk -F: '$1 == "total_commands_processed" { print $2 }') > before + 1000)) && break
        sleep 0.05
    done
    rcli BGSAVE >/dev/null || die "BGSAVE refused"
    for ((i = 0; i < 100; i++)); do
        st="$(rcli INFO persistence | tr -d '\r')"
        grep -q '^rdb_bgsave_in_progress:0' <<<"$st" && break
        sleep 0.1
    done
    { alive "$seqpid" || alive "$ctrpid"; } && overlapped=1
    grep -q '^rdb_last_bgsave_status:ok' <<<"$st" || die "BGSAVE did not finish ok: $(grep bgsave <<<"$st" | xargs)"
    wait "$seqpid" || die "the writer redis-cli -r $nseq INCR failed: $(tail -3 "$d/seq.out" | xargs)"
    wait "$ctrpid" || { tr '\r' '\n' <"$d/ctr.log" | tail -5; die "the writer redis-benchmark INCR failed"; }
    seq 1 "$nseq" | cmp -s - "$d/seq.out" ||
        die "redis-cli INCR replies are not 1..$nseq in order: $(grep -c . "$d/seq.out") lines, $(grep -cvE '^[0-9]+$' "$d/seq.out") not integers, last '$(tail -1 "$d/seq.out")'"
    ! grep -qi 'error' "$d/ctr.log" || { tr '\r' '\n' <"$d/ctr.log" | grep -i error | head -5; die "redis-benchmark INCR saw errors"; }
    [[ "$(rcli GET rdb:ctr)" == "$nctr" ]] || die "rdb:ctr is $(rcli GET rdb:ctr), expected $nctr"
    ((overlapped)) || warn "both writers had finished before BGSAVE did (no overlap this time)"
    [[ -s "$d/dump.rdb" ]] || die "BGSAVE wrote no dump.rdb"
    timeout 60 redis-check-rdb "$d/dump.rdb" >"$d/check-rdb.out" 2>&1 || { cat "$d/check-rdb.out"; die "redis-check-rdb: dump.rdb is not valid"; }
    grep -q 'RDB looks OK' "$d/check-rdb.out" || { cat "$d/check-rdb.out"; die "redis-check-rdb did not report dump.rdb valid"; }
    [[ "$(rcli DBSIZE)" == 4 ]] || die "DBSIZE is $(rcli DBSIZE) after BGSAVE, expected 4 (big, key:__rand_int__, rdb:seq, rdb:ctr)"
    ok "BGSAVE (fork) ok while $nseq + $nctr INCRs ran$( ((overlapped)) && echo ' (overlapping)'): replies 1..$nseq in order, rdb:ctr = $nctr; redis-check-rdb: RDB looks OK, $(grep -m1 'keys read' "$d/check-rdb.out" | sed 's/^\[info\] //')"

    if [[ "$mode" == shim ]]; then
        show_stats "$pid" "redis-server"
        # The data sockets really ran on io_uring: received through multishot
        # completions, replies sent by ring submissions.
        assert_counter "$pid" sockets_on_uring 1
        assert_counter "$pid" recv_completions 1
        assert_counter "$pid" send_submissions 1
        ok "counters: redis-server's client sockets were on io_uring"
    fi
    alive "$pid" || die "redis-server died"
    stop_pid "$pid" 10
    no_crash_lines "$d/redis.log" 'crashed by signal|Guru Meditation|ASSERTION FAILED' "redis-server crashed"
}

# ---------------------------------------------------------------------------------------
# nginx

# write_site DIR: the static files (random content, so a mix-up cannot go unnoticed).
write_site() {
    mkdir -p "$1/www"
    head -c 1024 /dev/urandom >"$1/www/1k.bin"
    head -c 1048576 /dev/urandom >"$1/www/1m.bin"
    chmod -R a+rX "$1"
}

# nginx_conf DIR FRONT_ADDR FRONT_PORT BACK_PORT [EVENTS] [LISTEN_OPTS]: 2 workers; the
# front server serves the files and proxies /proxy/ to the back server block on 127.0.0.1
# (upstream keepalive). EVENTS goes into the events block (accept_mutex on;), LISTEN_OPTS
# after the front listen address (reuseport). The access log records the worker's pid and
# the connection number of every request (which worker served which connection).
nginx_conf() {
    local d="$1" addr="$2" p1="$3" p2="$4" events="${5:-}" lopts="${6:-}"
    cat >"$d/nginx.conf" <<EOF
# generated by scripts/test-servers.sh
worker_processes 2;
daemon off;
master_process on;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 1024; $events }
http {
    log_format rs '\$pid \$connection \$status';
    access_log $d/access.log rs;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    default_type application/octet-stream;
    keepalive_requests 100000;
    sendfile on;
    upstream back {
        server 127.0.0.1:$p2;
        keepalive 16;
    }
    server {
        listen $addr:$p1${lopts:+ $lopts};
        root $d/www;
        location / { }
        location /proxy/ {
            proxy_pass http://back/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    server {
        listen 127.0.0.1:$p2;
        root $d/www;
        location / { }
    }
}
EOF
    mkdir -p "$d/tmp"
    chmod -R a+rwX "$d/tmp"
}

# start_nginx DIR [EVENTS] [LISTEN_OPTS] (uses ADDR, SRV_PRE, SHIM_ENV): sets NGINX_PID,
# NGINX_PORT, NGINX_WORKERS.
start_nginx() {
    local d="$1" p2 i
    write_site "$d"
    NGINX_PORT="$(free_port "$NS_FOR_PORTS")"
    p2="$(free_port "$NS_FOR_PORTS")"
    while [[ "$p2" == "$NGINX_PORT" ]]; do p2="$(free_port "$NS_FOR_PORTS")"; done
    nginx_conf "$d" "$ADDR" "$NGINX_PORT" "$p2" "${2:-}" "${3:-}"
    # -e: the error log before the configuration is read (not /var/log/nginx).
    start_bg "$d/nginx.out" "${SRV_PRE[@]}" "${SHIM_ENV[@]}" nginx -p "$d" -c "$d/nginx.conf" -e "$d/error.log"
    NGINX_PID=$RS_LAST_PID
    wait_tcp "$ADDR" "$NGINX_PORT" "$NGINX_PID" 15 "$CLI_NS" || die "nginx did not start"
    expect_comm "$NGINX_PID" nginx
    for ((i = 0; i < 50; i++)); do
        read -r -a NGINX_WORKERS <<<"$(children "$NGINX_PID")"
        ((${#NGINX_WORKERS[@]} >= 2)) && break
        sleep 0.1
    done
    ((${#NGINX_WORKERS[@]} == 2)) || die "nginx master $NGINX_PID has ${#NGINX_WORKERS[@]} workers, expected 2"
}

# stop_nginx DIR: master first (it ends its workers), then any worker left, by PID.
stop_nginx() {
    local w
    stop_pid "$NGINX_PID" 10
    for w in "${NGINX_WORKERS[@]}"; do stop_pid "$w" 5; done
    no_crash_lines "$1/error.log" '\[(alert|emerg|crit)\]' "nginx logged alerts"
}

scenario_nginx() {
    local where="$1" mode="$2" d f url w
    place "$where" "$mode"
    d="$WORK/nginx-$where-$mode"
    SCEN_DIR="$d"
    mkdir -p "$d"
    chmod 755 "$d"
    start_nginx "$d"
    ok "nginx master $NGINX_PID, workers ${NGINX_WORKERS[*]}, on $ADDR:$NGINX_PORT"
    check_preload "$mode" "$NGINX_PID" "${NGINX_WORKERS[@]}"

    # Each file directly and through proxy_pass; one curl per path, then all paths on one
    # keep-alive connection.
    local -a curl_args=()
    for f in 1k.bin 1m.bin proxy/1k.bin proxy/1m.bin; do
        url="http://$ADDR:$NGINX_PORT/$f"
        "${CLI_PRE[@]}" timeout 30 curl -sS --fail --max-time 20 -o "$d/got" "$url" || die "curl $url failed"
        [[ "$(sha "$d/got")" == "$(sha "$d/www/${f#proxy/}")" ]] || die "curl $url: content differs"
        curl_args+=(-o "$d/got.${f//\//_}" "$url")
    done
    "${CLI_PRE[@]}" timeout 60 curl -sS --fail --max-time 40 "${curl_args[@]}" || die "curl keep-alive sequence failed"
    for f in 1k.bin 1m.bin proxy/1k.bin proxy/1m.bin; do
        [[ "$(sha "$d/got.${f//\//_}")" == "$(sha "$d/www/${f#proxy/}")" ]] || die "keep-alive $f: content differs"
    done
    ok "curl: 1 KiB and 1 MiB, static and proxy_pass, single and keep-alive: sha256 equal"

    wrk_check "nginx $where static" "http://$ADDR:$NGINX_PORT/1k.bin" "$d/wrk-static.log"
    wrk_check "nginx $where proxy" "http://$ADDR:$NGINX_PORT/proxy/1k.bin" "$d/wrk-proxy.log"

    # Reload (SIGHUP): the master forks a new generation of workers, the old ones exit
    # gracefully; the site must keep serving from the new workers.
    local -a old=("${NGINX_WORKERS[@]}") now=()
    local i gone
    kill -HUP "$NGINX_PID"
    for ((i = 0; i < 100; i++)); do
        read -r -a now <<<"$(children "$NGINX_PID")"
        gone=1
        for w in "${old[@]}"; do alive "$w" && gone=0; done
        ((gone == 1 && ${#now[@]} == 2)) && break
        sleep 0.1
    done
    ((gone == 1 && ${#now[@]} == 2)) || die "after SIGHUP: workers ${now[*]:-none}, old ${old[*]} gone=$gone"
    NGINX_WORKERS=("${now[@]}")
    check_preload "$mode" "${NGINX_WORKERS[@]}"
    "${CLI_PRE[@]}" timeout 30 curl -sS --fail --max-time 20 -o "$d/got" "http://$ADDR:$NGINX_PORT/proxy/1m.bin" || die "curl after reload failed"
    [[ "$(sha "$d/got")" == "$(sha "$d/www/1m.bin")" ]] || die "after reload: content differs"
    ok "reload (SIGHUP): new workers ${NGINX_WORKERS[*]} serve correctly"

    alive "$NGINX_PID" || die "nginx master died"
    for w in "${NGINX_WORKERS[@]}"; do alive "$w" || die "nginx worker $w died"; done
    if [[ "$mode" == shim ]]; then
        show_stats "$NGINX_PID" "nginx master"
        for w in "${NGINX_WORKERS[@]}"; do show_stats "$w" "nginx worker"; done
        local workers
        workers="$(IFS=,; echo "${NGINX_WORKERS[*]}")"
        assert_counter "$workers" sockets_on_uring 1
        assert_counter "$workers" recv_completions 1
        if [[ "$where" == netns ]]; then
            # proxy_pass goes to 127.0.0.1: that upstream socket must stay on the kernel.
            assert_counter "$workers" routed_kernel_net 1
            ok "counters: TEST-NET client sockets on io_uring, the loopback upstream on the kernel"
        else
            ok "counters: nginx's sockets were on io_uring"
        fi
    fi
    stop_nginx "$d"
}

# ---------------------------------------------------------------------------------------
# haproxy (multi-threaded) in front of an nginx started the same way.

scenario_haproxy() {
    local where="$1" mode="$2" d port pid threads
    place "$where" "$mode"
    d="$WORK/haproxy-$where-$mode"
    SCEN_DIR="$d"
    mkdir -p "$d"
    chmod 755 "$d"
    start_nginx "$d"
    port="$(free_port "$NS_FOR_PORTS")"
    cat >"$d/haproxy.cfg" <<EOF
# generated by scripts/test-servers.sh
global
    nbthread 2
    maxconn 1024
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind $ADDR:$port
    default_backend be
backend be
    http-reuse always
    server s1 $ADDR:$NGINX_PORT
EOF
    # -db: stay in the foreground, so the recorded PID is haproxy's.
    start_bg "$d/haproxy.log" "${SRV_PRE[@]}" "${SHIM_ENV[@]}" haproxy -db -f "$d/haproxy.cfg"
    pid=$RS_LAST_PID
    wait_tcp "$ADDR" "$port" "$pid" 15 "$CLI_NS" || die "haproxy did not start"
    expect_comm "$pid" haproxy
    local -a tasks=("/proc/$pid/task"/*)
    threads=${#tasks[@]}
    ok "haproxy pid $pid ($threads threads) on $ADDR:$port -> nginx $NGINX_PORT"
    ((threads >= 2)) || die "haproxy runs $threads thread(s), expected 2"
    check_preload "$mode" "$pid"

    "${CLI_PRE[@]}" timeout 30 curl -sS --fail --max-time 20 -o "$d/got" "http://$ADDR:$port/1m.bin" || die "curl via haproxy failed"
    [[ "$(sha "$d/got")" == "$(sha "$d/www/1m.bin")" ]] || die "1 MiB via haproxy: content differs"
    ok "curl 1 MiB via haproxy: sha256 equal"
    wrk_check "haproxy $where" "http://$ADDR:$port/1k.bin" "$d/wrk.log"

    alive "$pid" || die "haproxy died"
    if [[ "$mode" == shim ]]; then
        show_stats "$pid" "haproxy"
        assert_counter "$pid" sockets_on_uring 1
        ok "counters: haproxy's sockets were on io_uring"
    fi
    stop_pid "$pid" 10
    stop_nginx "$d"
    no_crash_lines "$d/haproxy.log" '\[ALERT\]' "haproxy logged alerts"
}

# ---------------------------------------------------------------------------------------
# mt_proxy (tests/progs/mt_proxy.c): the Envoy thread model haproxy does not have here.
# haproxy 2.6 shares one listener between its threads; Envoy gives every worker thread
# its own event loop and its own SO_REUSEPORT listener. mt_proxy is that shape: N
# threads, each with its own epoll (edge-triggered) and listener on one address:port,
# one upstream connection per client connection.

MTP_THREADS=2

# srv_ss ARGS...: ss in the server's network namespace.
srv_ss() { "${SRV_PRE[@]}" ss "$@"; }

# mtproxy_start LOG PORT UPSTREAM_PORT [VAR=VALUE...]: mt_proxy with MTP_THREADS threads
# on ADDR:PORT in front of ADDR:UPSTREAM_PORT (server side, SHIM_ENV plus the variables
# given); sets MTP_PID. Waits for its "ready" line (every thread listens) rather than
# probing the port, so the per-thread counts hold only the scenario's own connections.
mtproxy_start() {
    local logf="$1" port="$2" up="$3" i n
    shift 3
    start_bg "$logf" "${SRV_PRE[@]}" "${SHIM_ENV[@]}" "$@" "$MTPROXY" \
        -l "$ADDR:$port" -u "$ADDR:$up" -t "$MTP_THREADS"
    MTP_PID=$RS_LAST_PID
    for ((i = 0; i < 150; i++)); do
        grep -qs '^mt_proxy: ready' "$logf" && break
        alive "$MTP_PID" || { cat "$logf"; die "mt_proxy exited before listening"; }
        sleep 0.1
    done
    grep -qs '^mt_proxy: ready' "$logf" || { cat "$logf"; die "mt_proxy not ready after 15 s"; }
    expect_comm "$MTP_PID" mt_proxy
    # The thread model itself: one listening socket per thread on the one port.
    n="$(srv_ss -Htlnp "sport = :$port" | awk -v p="pid=$MTP_PID," 'index($0, p) { n++ } END { print n + 0 }')"
    ((n == MTP_THREADS)) || { srv_ss -Htlnp "sport = :$port"; die "mt_proxy has $n listening sockets on port $port, expected $MTP_THREADS (one SO_REUSEPORT listener per thread)"; }
}

# mtproxy_idle PID: waits (at most 5 s) until PID holds no socket but its MTP_THREADS
# listeners (counted in /proc/PID/fd: a connection finished both ways but never closed
# is in no TCP state ss lists); fails naming what it still holds. Every client of the
# scenario has finished by then, so a socket left is one the proxy leaked.
mtproxy_idle() {
    local pid="$1" i n=0
    for ((i = 0; i < 100; i++)); do
        n="$(find "/proc/$pid/fd" -lname 'socket:*' 2>/dev/null | wc -l)" || true
        ((n == MTP_THREADS)) && return 0
        sleep 0.05
    done
    srv_ss -Htanp | grep -F "pid=$pid," || true
    die "mt_proxy $pid still holds $n sockets ($MTP_THREADS listeners) 5 s after its clients finished"
}

# mtproxy_stop PID LOG: SIGTERM; mt_proxy must exit 0 within 10 s having printed one
# "thread I accepted A open O stalled S" line per thread. Sets MTP_ACCEPTED (per thread,
# in thread order), MTP_TOTAL, MTP_OPEN and MTP_STALLED (sums over the threads).
mtproxy_stop() {
    local pid="$1" logf="$2" i rc=0 lines
    kill -TERM "$pid"
    for ((i = 0; i < 100; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        stop_pid "$pid" 1
        die "mt_proxy $pid did not exit within 10 s of SIGTERM"
    fi
    wait "$pid" || rc=$?
    ((rc == 0)) || { cat "$logf"; die "mt_proxy exited with status $rc after SIGTERM"; }
    lines="$(grep -c '^thread [0-9]* accepted [0-9]* open [0-9]* stalled [0-9]*$' "$logf" || true)"
    ((lines == MTP_THREADS)) || { cat "$logf"; die "mt_proxy printed $lines per-thread lines, expected $MTP_THREADS"; }
    read -r -a MTP_ACCEPTED <<<"$(awk '$1 == "thread" { printf "%s ", $4 }' "$logf")"
    MTP_TOTAL="$(awk '$1 == "thread" { n += $4 } END { print n + 0 }' "$logf")"
    MTP_OPEN="$(awk '$1 == "thread" { n += $6 } END { print n + 0 }' "$logf")"
    MTP_STALLED="$(awk '$1 == "thread" { n += $8 } END { print n + 0 }' "$logf")"
}

# spread: MTP_ACCEPTED as "a/b/..." into SPREAD, its extremes into SPREAD_MAX, SPREAD_MIN.
spread() {
    local v
    SPREAD_MAX=0 SPREAD_MIN=""
    for v in "${MTP_ACCEPTED[@]}"; do
        if ((v > SPREAD_MAX)); then SPREAD_MAX=$v; fi
        if [[ -z "$SPREAD_MIN" ]] || ((v < SPREAD_MIN)); then SPREAD_MIN=$v; fi
    done
    SPREAD="$(IFS=/; echo "${MTP_ACCEPTED[*]}")"
}

scenario_mtproxy() {
    local where="$1" mode="$2" d port pid f url got i
    place "$where" "$mode"
    d="$WORK/mtproxy-$where-$mode"
    SCEN_DIR="$d"
    mkdir -p "$d"
    chmod 755 "$d"
    start_nginx "$d"
    # Larger than the socket buffers between the proxy and a slow reader can hold.
    head -c 16777216 /dev/urandom >"$d/www/16m.bin"
    chmod a+r "$d/www/16m.bin"
    port="$(free_port "$NS_FOR_PORTS")"
    mtproxy_start "$d/mtproxy.log" "$port" "$NGINX_PORT"
    pid=$MTP_PID
    local workers
    workers="$(cat "/proc/$pid/task"/*/comm 2>/dev/null | grep -c '^mtp-w' || true)"
    ((workers == MTP_THREADS)) || die "mt_proxy runs $workers worker threads, expected $MTP_THREADS"
    ok "mt_proxy pid $pid: $MTP_THREADS threads, each with its own epoll and SO_REUSEPORT listener on $ADDR:$port -> nginx $NGINX_PORT"
    check_preload "$mode" "$pid"

    # 1 KiB and 1 MiB, one connection each, then both on one keep-alive connection.
    local -a curl_args=()
    for f in 1k.bin 1m.bin; do
        url="http://$ADDR:$port/$f"
        "${CLI_PRE[@]}" timeout 30 curl -sS --fail --max-time 20 -o "$d/got" "$url" || die "curl $url via mt_proxy failed"
        [[ "$(sha "$d/got")" == "$(sha "$d/www/$f")" ]] || die "curl $url via mt_proxy: content differs"
        curl_args+=(-o "$d/got.$f" "$url")
    done
    "${CLI_PRE[@]}" timeout 30 curl -sS --fail --max-time 20 "${curl_args[@]}" || die "curl keep-alive via mt_proxy failed"
    for f in 1k.bin 1m.bin; do
        [[ "$(sha "$d/got.$f")" == "$(sha "$d/www/$f")" ]] || die "keep-alive $f via mt_proxy: content differs"
    done
    ok "curl 1 KiB and 1 MiB via mt_proxy, single and keep-alive: sha256 equal"

    # Backpressure: a reader at 16 MB/s behind a fast upstream; the proxy must stop
    # reading nginx while the client's side is full (counted as "stalled" below).
    url="http://$ADDR:$port/16m.bin"
    "${CLI_PRE[@]}" timeout 30 curl -sS --fail --max-time 20 --limit-rate 16M -o "$d/got" "$url" || die "slow curl $url via mt_proxy failed"
    [[ "$(sha "$d/got")" == "$(sha "$d/www/16m.bin")" ]] || die "slow curl 16 MiB via mt_proxy: content differs"
    ok "slow reader (16 MB/s), 16 MiB via mt_proxy: sha256 equal"

    # A client reset in the middle of 16 MiB: the proxy ends both sockets, keeps serving.
    got="$("${CLI_PRE[@]}" timeout 30 python3 "$RS_ROOT/scripts/lib/mtproxy_client.py" reset "$ADDR" "$port" /16m.bin)" ||
        die "reset via mt_proxy: $got"
    "${CLI_PRE[@]}" timeout 30 curl -sS --fail --max-time 20 -o "$d/got" "http://$ADDR:$port/1k.bin" || die "curl after a client reset failed"
    [[ "$(sha "$d/got")" == "$(sha "$d/www/1k.bin")" ]] || die "curl after a client reset: content differs"
    ok "$got; the next request is served"

    wrk_check "mt_proxy $where" "http://$ADDR:$port/1k.bin" "$d/wrk.log" 2

    # Half-close, through a second mt_proxy whose upstream is a sink that answers only
    # after the FIN (scripts/lib/mtproxy_client.py): 4 MiB, the client's FIN, the same
    # 4 MiB back, then the sink's FIN. Then the sink stops, and the same proxy meets an
    # upstream that refuses: the client must see its connection end at once (reset).
    local sport dport sinkpid rc=0
    sport="$(free_port "$NS_FOR_PORTS")"
    dport="$(free_port "$NS_FOR_PORTS")"
    while [[ "$dport" == "$port" || "$dport" == "$sport" ]]; do dport="$(free_port "$NS_FOR_PORTS")"; done
    start_bg "$d/sink.log" "${SRV_PRE[@]}" python3 "$RS_ROOT/scripts/lib/mtproxy_client.py" sink "$ADDR" "$sport"
    sinkpid=$RS_LAST_PID
    wait_tcp "$ADDR" "$sport" "$sinkpid" 15 "$CLI_NS" || die "the sink did not start"
    mtproxy_start "$d/mtproxy-sink.log" "$dport" "$sport"
    got="$("${CLI_PRE[@]}" timeout 30 python3 "$RS_ROOT/scripts/lib/mtproxy_client.py" halfclose "$ADDR" "$dport" 4194304)" ||
        die "half-close via mt_proxy: $got"
    ok "$got"
    stop_pid "$sinkpid" 5
    no_crash_lines "$d/sink.log" '^sink:' "the sink saw an error"
    "${CLI_PRE[@]}" timeout 30 curl -sS --max-time 10 -o /dev/null "http://$ADDR:$dport/1k.bin" 2>"$d/curl-refused.err" || rc=$?
    # The reset can reach curl while it still waits for its connect to complete (7),
    # while it sends the request (55) or while it waits for the answer (56); 28 would
    # be a proxy that never ended the connection. That the proxy accepted the connection
    # (so 7 is its reset, not a refused SYN) is checked on its count below.
    ((rc == 7 || rc == 55 || rc == 56)) || { cat "$d/curl-refused.err"; die "curl via mt_proxy to a refusing upstream: exit $rc, expected 7, 55 or 56 (the proxy resets the connection)"; }
    mtproxy_idle "$MTP_PID"
    mtproxy_stop "$MTP_PID" "$d/mtproxy-sink.log"
    ((MTP_TOTAL == 2)) || die "mt_proxy (sink, then refusing upstream) accepted $MTP_TOTAL connections, expected 2"
    ((MTP_OPEN == 0)) || die "mt_proxy (sink, then refusing upstream) still had $MTP_OPEN connection(s) open"
    ok "refusing upstream: the proxy accepted the connection and reset it at once ($(head -c 80 "$d/curl-refused.err" | tr -d '\n'))"

    alive "$pid" || die "mt_proxy died"
    if [[ "$mode" == shim ]]; then
        show_stats "$pid" "mt_proxy"
        # Every worker thread accepted client connections itself and its sockets were
        # on its own io_uring.
        assert_thread_counter "$pid" mtp-w accepts 1
        assert_thread_counter "$pid" mtp-w sockets_on_uring 1
        # Every client connection (accepted) and every upstream one (connected) went
        # onto io_uring, not merely some.
        local acc con
        acc="$(counter_value "$pid" accepts)"
        con="$(counter_value "$pid" connects)"
        assert_counter "$pid" sockets_on_uring "$((acc + con))"
        ok "counters: all $acc client sockets and $con upstream sockets of mt_proxy were on io_uring"
    fi
    mtproxy_idle "$pid"
    mtproxy_stop "$pid" "$d/mtproxy.log"
    info "per-thread counts: $(grep '^thread ' "$d/mtproxy.log" | paste -sd';' | sed 's/;/; /g')"
    spread
    for i in "${!MTP_ACCEPTED[@]}"; do
        ((MTP_ACCEPTED[i] >= 1)) || die "mt_proxy thread $i accepted no connection (per thread: $SPREAD)"
    done
    ((MTP_OPEN == 0)) || die "mt_proxy had $MTP_OPEN connection(s) open at SIGTERM after every client finished"
    ((MTP_STALLED >= 1)) || die "no write of mt_proxy ever found its destination full: the slow reader did not exercise backpressure"
    ok "mt_proxy exited 0 on SIGTERM; every thread accepted connections ($SPREAD); none left open; $MTP_STALLED stalled writes"

    if [[ "$where" == netns ]]; then
        mtproxy_balance "$d"
    fi
    stop_nginx "$d"
    for f in "$d"/mtproxy*.log; do no_crash_lines "$f" '^mt_proxy: error' "mt_proxy reported an error"; done
}

# mtproxy_balance DIR: one client's connections, one after another, through a fresh
# mt_proxy: with the shim and RINGSHIM_BALANCE=exact (the reuseport eBPF steering of
# src/balance.rs) the spread is asserted, without the shim (the kernel's 4-tuple hash)
# only shown.
#   close  20 curl requests with `Connection: close`, each connection gone from the
#          proxy before the next starts. exact counts *open* connections, and each
#          connection meets only zeros, a tie, which goes to the lowest listener index:
#          all 20 land on one thread (under the hash: probability 2^-19).
#   held   20 connections, each answered and kept open before the next opens: exact
#          must alternate, 10/10 (max - min <= 1).
# Together they fail if the steering is off (close: spread), ignores closes (close:
# 10/10), or never retargets (held: 20/0).
mtproxy_balance() {
    local d="$1" port i a b f
    local -a benv=()
    [[ "$MODE" == shim ]] && benv=(RINGSHIM_BALANCE=exact)

    port="$(free_port "$NS_FOR_PORTS")"
    mtproxy_start "$d/mtproxy-close.log" "$port" "$NGINX_PORT" "${benv[@]}"
    for ((i = 0; i < 20; i++)); do
        "${CLI_PRE[@]}" timeout 30 curl -sS --fail --max-time 20 -H 'Connection: close' -o /dev/null "http://$ADDR:$port/1k.bin" ||
            die "curl $i (Connection: close) failed"
        mtproxy_idle "$MTP_PID"
    done
    [[ "$MODE" == shim ]] && assert_counter "$MTP_PID" balance_decisions 1
    mtproxy_stop "$MTP_PID" "$d/mtproxy-close.log"
    spread
    a=$SPREAD
    local close_max=$SPREAD_MAX

    port="$(free_port "$NS_FOR_PORTS")"
    mtproxy_start "$d/mtproxy-held.log" "$port" "$NGINX_PORT" "${benv[@]}"
    "${CLI_PRE[@]}" timeout 60 python3 "$RS_ROOT/scripts/lib/mtproxy_client.py" hold "$ADDR" "$port" 20 /1k.bin >/dev/null ||
        die "20 held connections via mt_proxy failed"
    [[ "$MODE" == shim ]] && assert_counter "$MTP_PID" balance_decisions 20
    mtproxy_idle "$MTP_PID"
    mtproxy_stop "$MTP_PID" "$d/mtproxy-held.log"
    spread
    b=$SPREAD

    if [[ "$MODE" != shim ]]; then
        ok "kernel hash, per-thread accepts: 20 sequential Connection: close $a; 20 held open $b"
        return 0
    fi
    for f in "$d/mtproxy-close.log" "$d/mtproxy-held.log"; do
        no_crash_lines "$f" 'unavailable' "RINGSHIM_BALANCE=exact could not be set up"
    done
    ((close_max == 20)) || die "exact, 20 sequential Connection: close: per thread $a, expected all 20 on one thread (ties to the lowest listener)"
    ((SPREAD_MAX - SPREAD_MIN <= 1)) || die "exact, 20 held connections: per thread $b, expected max - min <= 1"
    ok "exact, per-thread accepts: 20 sequential Connection: close $a (all on the lowest listener: ties); 20 held open $b (max - min $((SPREAD_MAX - SPREAD_MIN)))"
}

# ---------------------------------------------------------------------------------------
# Server shapes of issue #5: the same servers configured the ways production runs them.

# redis_at PORT ARGS...: redis-cli against ADDR:PORT from the client side, bounded.
redis_at() {
    local p="$1"
    shift
    "${CLI_PRE[@]}" timeout 30 redis-cli -h "$ADDR" -p "$p" "$@"
}

# redis_field PORT SECTION FIELD: one field of INFO SECTION.
redis_field() {
    redis_at "$1" INFO "$2" | tr -d '\r' | awk -F: -v f="$3" '$1 == f { print $2 }'
}

# assert_thread_counter PID COMM_PREFIX NAME MIN: every thread of PID whose name starts
# with COMM_PREFIX has its own counter NAME >= MIN (the per-thread slots of
# `ringshim stat --json`), and there is at least one such thread.
assert_thread_counter() {
    local pid="$1" prefix="$2" name="$3" min="$4" json out
    cli_has stat || { echo "assert_thread_counter: per-thread counters need 'ringshim stat' ($RS_CLI)" >&2; return 1; }
    json="$(timeout 5 "$RS_CLI" stat "$pid" --json 2>&1)" || { echo "assert_thread_counter: ringshim stat $pid: $json" >&2; return 1; }
    # shellcheck disable=SC2016 # python source, not shell
    out="$(python3 -c '
import json, os, sys
pid, prefix, name, mn = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
per = {str(t["tid"]): t["counters"].get(name, 0) for t in json.load(sys.stdin).get("threads", [])}
seen, bad = [], 0
for tid in sorted(os.listdir("/proc/%s/task" % pid), key=int):
    try:
        comm = open("/proc/%s/task/%s/comm" % (pid, tid)).read().strip()
    except OSError:
        continue
    if comm.startswith(prefix):
        v = per.get(tid, 0)
        seen.append("%s=%d" % (comm, v))
        bad += v < mn
print(" ".join(seen) or "no thread named %s* in pid %s" % (prefix, pid))
sys.exit(1 if bad or not seen else 0)' "$pid" "$prefix" "$name" "$min" <<<"$json")" || {
        echo "assert_thread_counter: $name of the $prefix* threads of $pid: $out (expected each >= $min)" >&2
        return 1
    }
    ok "counter $name per $prefix* thread of $pid: $out (each >= $min)"
}

# scenario_redis_shapes: one master with 4 I/O threads (reads too) and an append-only
# file, a replica of it, all under the shim in shim mode:
#   io-threads  redis-benchmark SET/GET 50 clients, 1 KiB; INFO must show the I/O
#               threads did reads and writes; the io_thd_* threads served the sockets;
#   MONITOR     a MONITOR client sees another client's SET;
#   16 MiB      SET through redis-cli -x, GET --raw: sha256 equal;
#   replica     started after 1000 keys + the 16 MiB value were written (full sync, a
#               diskless one through the master's fork child), then fed by the stream:
#               link up, DBSIZE and the 16 MiB value's sha256 equal, WAIT acknowledges;
#   pub/sub     50 subscribers, 200 messages: all received in order, PUBLISH returns 50;
#   AOF         BGREWRITEAOF while a client INCRs a counter 40000 times: the counter is
#               exact on master and replica, keys written before and after the rewrite are
#               intact, redis-check-aof finds the manifest and every part valid, and a
#               plain redis-server reloads the AOF with the same keyspace.
scenario_redis_shapes() {
    local where="$1" mode="$2" d mport rport mpid rpid i v
    place "$where" "$mode"
    d="$WORK/redis-shapes-$where-$mode"
    SCEN_DIR="$d"
    mkdir -p "$d/master" "$d/replica" "$d/reload"
    mport="$(free_port "$NS_FOR_PORTS")"
    rport="$(free_port "$NS_FOR_PORTS")"
    while [[ "$rport" == "$mport" ]]; do rport="$(free_port "$NS_FOR_PORTS")"; done

    start_bg "$d/master.log" "${SRV_PRE[@]}" "${SHIM_ENV[@]}" redis-server \
        --bind "$ADDR" --port "$mport" --save '' --daemonize no --protected-mode no \
        --dir "$d/master" --logfile '' \
        --io-threads 4 --io-threads-do-reads yes \
        --appendonly yes --appenddirname appendonlydir --appendfilename appendonly.aof \
        --repl-diskless-sync yes --repl-diskless-sync-delay 0
    mpid=$RS_LAST_PID
    wait_tcp "$ADDR" "$mport" "$mpid" 15 "$CLI_NS" || die "redis master did not start"
    expect_comm "$mpid" redis-server
    check_preload "$mode" "$mpid"
    ok "redis master pid $mpid on $ADDR:$mport (io-threads 4, reads too; appendonly)"

    # MONITOR: a second client's command must appear in the monitor stream.
    local monpid
    start_bg "$d/monitor.out" "${CLI_PRE[@]}" timeout 20 redis-cli -h "$ADDR" -p "$mport" MONITOR
    monpid=$RS_LAST_PID
    for ((i = 0; i < 50; i++)); do grep -q '^OK' "$d/monitor.out" && break; sleep 0.1; done
    grep -q '^OK' "$d/monitor.out" || { cat "$d/monitor.out"; die "MONITOR did not start"; }
    [[ "$(redis_at "$mport" SET monitor:k v)" == OK ]] || die "SET monitor:k failed"
    for ((i = 0; i < 50; i++)); do grep -q '"SET" "monitor:k" "v"' "$d/monitor.out" && break; sleep 0.1; done
    grep -q '"SET" "monitor:k" "v"' "$d/monitor.out" || { cat "$d/monitor.out"; die "MONITOR did not show SET monitor:k v"; }
    ok "MONITOR: $(grep -m1 '"monitor:k"' "$d/monitor.out")"
    stop_pid "$monpid" 5

    # I/O threads: 50 clients keep enough replies pending that redis hands reads and
    # writes to its io_thd_* threads.
    local -a bthreads=()
    redis-benchmark --help 2>&1 | grep -q -- '--threads' && bthreads=(--threads 2)
    "${CLI_PRE[@]}" timeout 150 redis-benchmark -h "$ADDR" -p "$mport" -q -n 20000 -c 50 -d 1024 -t set,get "${bthreads[@]}" \
        >"$d/bench.raw" 2>&1 || { tr '\r' '\n' <"$d/bench.raw" | tail -20; die "redis-benchmark (io-threads) failed"; }
    tr '\r' '\n' <"$d/bench.raw" | grep -E '^(SET|GET): .*requests per second' >"$d/bench.txt" ||
        { tr '\r' '\n' <"$d/bench.raw" | tail -20; die "redis-benchmark printed no results"; }
    [[ "$(grep -c . "$d/bench.txt")" == 2 ]] || { cat "$d/bench.txt"; die "redis-benchmark: expected a SET and a GET line"; }
    sed 's/^/       /' "$d/bench.txt"
    metric "redis io-threads SET" "req/s" "$(awk '/^SET:/ { print $2 }' "$d/bench.txt")"
    metric "redis io-threads GET" "req/s" "$(awk '/^GET:/ { print $2 }' "$d/bench.txt")"
    [[ "$(redis_at "$mport" STRLEN key:__rand_int__)" == 1024 ]] || die "STRLEN key:__rand_int__ is not 1024"
    redis_at "$mport" --raw GET key:__rand_int__ >"$d/val.out"
    # (redis-benchmark 7 fills values with random printable bytes; --raw adds a newline.)
    [[ "$(stat -c %s "$d/val.out")" == 1025 ]] || die "GET key:__rand_int__ returned $(stat -c %s "$d/val.out") bytes, expected 1024+1"
    [[ "$(redis_at "$mport" DBSIZE)" == 2 ]] || die "DBSIZE is $(redis_at "$mport" DBSIZE), expected 2 (monitor:k, key:__rand_int__)"
    local cmds tr_reads tr_writes
    cmds="$(redis_field "$mport" stats total_commands_processed)"
    tr_reads="$(redis_field "$mport" stats io_threaded_reads_processed)"
    tr_writes="$(redis_field "$mport" stats io_threaded_writes_processed)"
    ((cmds >= 40000)) || die "master processed $cmds commands, expected >= 40000"
    ((tr_reads > 0 && tr_writes > 0)) || die "the I/O threads did no work: io_threaded_reads_processed=$tr_reads io_threaded_writes_processed=$tr_writes"
    ok "io-threads: $cmds commands; I/O threads did $tr_reads reads and $tr_writes writes; value intact"
    if [[ "$mode" == shim ]]; then
        assert_counter "$mpid" sockets_on_uring 50
        assert_counter "$mpid" recv_completions 50
        # The io_thd_* threads read and wrote the io_uring sockets through the shim's
        # queues (the receives belong to the main thread's ring; the reads are copies).
        assert_thread_counter "$mpid" io_thd_ calls_intercepted 1
        assert_thread_counter "$mpid" io_thd_ syscalls_avoided 1
    fi

    # 16 MiB of random bytes through redis-cli -x; 1000 small keys through --pipe.
    head -c 16777216 /dev/urandom >"$d/big16.in"
    [[ "$(redis_at "$mport" -x SET big16 <"$d/big16.in")" == OK ]] || die "SET big16 (16 MiB) failed"
    redis_at "$mport" --raw GET big16 >"$d/big16.master"
    [[ "$(stat -c %s "$d/big16.master")" == 16777217 ]] || die "GET big16 returned $(stat -c %s "$d/big16.master") bytes, expected 16777216+1"
    head -c 16777216 "$d/big16.master" | cmp -s - "$d/big16.in" || die "GET big16: content differs"
    ok "16 MiB value round-trips through redis-cli -x / --raw GET (byte for byte)"
    awk 'BEGIN { for (i = 0; i < 1000; i++) { k = "rep:" i; v = "value-" i
                 printf "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n", length(k), k, length(v), v } }' >"$d/keys.resp"
    redis_at "$mport" --pipe <"$d/keys.resp" >"$d/pipe.out" 2>&1 || { cat "$d/pipe.out"; die "redis-cli --pipe failed"; }
    grep -q 'errors: 0, replies: 1000' "$d/pipe.out" || { cat "$d/pipe.out"; die "redis-cli --pipe: not 1000 clean replies"; }
    [[ "$(redis_at "$mport" DBSIZE)" == 1003 ]] || die "DBSIZE is $(redis_at "$mport" DBSIZE), expected 1003"

    # Replica, started now: a full (diskless) sync of 1003 keys and 16 MiB, then the stream.
    start_bg "$d/replica.log" "${SRV_PRE[@]}" "${SHIM_ENV[@]}" redis-server \
        --bind "$ADDR" --port "$rport" --save '' --appendonly no --daemonize no --protected-mode no \
        --dir "$d/replica" --logfile '' --replicaof "$ADDR" "$mport"
    rpid=$RS_LAST_PID
    wait_tcp "$ADDR" "$rport" "$rpid" 15 "$CLI_NS" || die "redis replica did not start"
    expect_comm "$rpid" redis-server
    check_preload "$mode" "$rpid"
    local link=""
    for ((i = 0; i < 300; i++)); do
        link="$(redis_at "$rport" INFO replication | tr -d '\r')"
        grep -q '^master_link_status:up' <<<"$link" && grep -q '^master_sync_in_progress:0' <<<"$link" && break
        sleep 0.1
    done
    grep -q '^master_link_status:up' <<<"$link" || die "replica link not up after 30s: $(grep -E '^master_(link|sync)' <<<"$link" | xargs)"
    [[ "$(redis_at "$rport" DBSIZE)" == 1003 ]] || die "replica DBSIZE is $(redis_at "$rport" DBSIZE), master 1003"
    redis_at "$rport" --raw GET big16 >"$d/big16.replica"
    [[ "$(sha "$d/big16.replica")" == "$(sha "$d/big16.master")" ]] || die "replica: the 16 MiB value differs from the master's"
    [[ "$(redis_at "$rport" GET rep:777)" == value-777 ]] || die "replica: rep:777 is not value-777"
    ok "replica pid $rpid on $ADDR:$rport: link up after full sync, DBSIZE 1003, 16 MiB sha256 equal"

    # Pub/sub fan-out from the client namespace.
    "${CLI_PRE[@]}" timeout 60 python3 "$RS_ROOT/scripts/lib/redis_pubsub.py" "$ADDR" "$mport" \
        --subscribers 50 --messages 200 --deadline 50 >"$d/pubsub.out" 2>&1 ||
        { cat "$d/pubsub.out"; die "pub/sub fan-out failed"; }
    ok "$(cat "$d/pubsub.out")"

    # BGREWRITEAOF while a client writes: 40000 INCRs of one counter from 4 connections.
    local wpid before st="" overlapped=0
    [[ "$(redis_at "$mport" SET aof:before before-rewrite)" == OK ]] || die "SET aof:before failed"
    before="$(redis_field "$mport" stats total_commands_processed)"
    start_bg "$d/writer.log" "${CLI_PRE[@]}" timeout 60 redis-benchmark -h "$ADDR" -p "$mport" -q -n 40000 -c 4 INCR aof:ctr
    wpid=$RS_LAST_PID
    for ((i = 0; i < 100; i++)); do
        (($(redis_field "$mport" stats total_commands_processed) > before + 500)) && break
        sleep 0.05
    done
    redis_at "$mport" BGREWRITEAOF >/dev/null || die "BGREWRITEAOF refused"
    for ((i = 0; i < 300; i++)); do
        st="$(redis_at "$mport" INFO persistence | tr -d '\r')"
        grep -q '^aof_rewrite_in_progress:0' <<<"$st" && grep -q '^aof_rewrite_scheduled:0' <<<"$st" && break
        sleep 0.1
    done
    alive "$wpid" && overlapped=1
    grep -q '^aof_last_bgrewrite_status:ok' <<<"$st" || die "BGREWRITEAOF did not finish ok: $(grep -E 'aof_(rewrite|last_bgrewrite)' <<<"$st" | xargs)"
    wait "$wpid" || { tr '\r' '\n' <"$d/writer.log" | tail -5; die "the writer (redis-benchmark INCR) failed"; }
    ((overlapped)) || warn "the writer had finished before the rewrite did (no overlap this time)"
    [[ "$(redis_at "$mport" SET aof:after after-rewrite)" == OK ]] || die "SET aof:after failed"
    [[ "$(redis_at "$mport" GET aof:ctr)" == 40000 ]] || die "aof:ctr is $(redis_at "$mport" GET aof:ctr) on the master, expected 40000"
    v="$(redis_at "$mport" WAIT 1 10000)"
    [[ "$v" == 1 ]] || die "WAIT 1 10000 answered '$v': the replica did not acknowledge the stream"
    [[ "$(redis_at "$rport" GET aof:ctr)" == 40000 ]] || die "aof:ctr is $(redis_at "$rport" GET aof:ctr) on the replica, expected 40000"
    [[ "$(redis_at "$rport" GET aof:after)" == after-rewrite ]] || die "aof:after missing on the replica"
    [[ "$(redis_at "$rport" DBSIZE)" == "$(redis_at "$mport" DBSIZE)" ]] || die "DBSIZE: replica $(redis_at "$rport" DBSIZE), master $(redis_at "$mport" DBSIZE)"
    ok "BGREWRITEAOF ok while 40000 INCRs ran$( ((overlapped)) && echo ' (overlapping)'); aof:ctr = 40000 on master and replica (WAIT 1)"

    alive "$mpid" || die "redis master died"
    alive "$rpid" || die "redis replica died"
    if [[ "$mode" == shim ]]; then
        show_stats "$mpid" "redis master"
        show_stats "$rpid" "redis replica"
        assert_counter "$mpid" routed_accelerated 50
        assert_counter "$mpid" send_submissions 1
        # The replica's link to the master (its connect) ran on io_uring: 16 MiB and more
        # arrived through receive completions.
        assert_counter "$rpid" connects 1
        assert_counter "$rpid" sockets_on_uring 1
        assert_counter "$rpid" recv_completions 1
        assert_counter "$rpid" bytes_received 16777216
        ok "counters: master clients, I/O threads and the replica link on io_uring"
    fi
    stop_pid "$rpid" 10
    # SIGTERM: redis flushes and closes the AOF before exiting.
    stop_pid "$mpid" 20
    no_crash_lines "$d/master.log" 'crashed by signal|Guru Meditation|ASSERTION FAILED' "redis master crashed"
    no_crash_lines "$d/replica.log" 'crashed by signal|Guru Meditation|ASSERTION FAILED' "redis replica crashed"

    # The AOF (Redis 7: a manifest in appenddirname naming base and incr parts).
    local man="$d/master/appendonlydir/appendonly.aof.manifest"
    [[ -s "$man" ]] || die "no AOF manifest at $man"
    timeout 60 redis-check-aof "$man" >"$d/check-aof.out" 2>&1 || { cat "$d/check-aof.out"; die "redis-check-aof: the AOF is not valid"; }
    grep -qi 'is valid' "$d/check-aof.out" || { cat "$d/check-aof.out"; die "redis-check-aof did not report the AOF valid"; }
    ok "redis-check-aof: $(grep -i 'valid' "$d/check-aof.out" | tail -1)"
    # Reload it with a plain redis-server (no shim, on loopback of the server namespace).
    local lport lpid
    cp -r "$d/master/appendonlydir" "$d/reload/"
    lport="$(free_port "$NS_FOR_PORTS")"
    start_bg "$d/reload.log" "${SRV_PRE[@]}" env -u LD_PRELOAD redis-server --bind 127.0.0.1 --port "$lport" \
        --save '' --daemonize no --dir "$d/reload" --logfile '' --appendonly yes --appenddirname appendonlydir
    lpid=$RS_LAST_PID
    wait_tcp 127.0.0.1 "$lport" "$lpid" 30 "$NS_FOR_PORTS" || die "redis-server did not load the AOF"
    rl() { "${SRV_PRE[@]}" timeout 30 redis-cli -h 127.0.0.1 -p "$lport" "$@"; }
    for ((i = 0; i < 100; i++)); do [[ "$(rl INFO persistence | tr -d '\r' | grep '^loading:')" == loading:0 ]] && break; sleep 0.1; done
    [[ "$(rl GET aof:before)" == before-rewrite && "$(rl GET aof:after)" == after-rewrite && "$(rl GET aof:ctr)" == 40000 ]] ||
        die "AOF reload: aof:before='$(rl GET aof:before)' aof:after='$(rl GET aof:after)' aof:ctr='$(rl GET aof:ctr)'"
    rl --raw GET big16 >"$d/big16.reload"
    [[ "$(sha "$d/big16.reload")" == "$(sha "$d/big16.master")" ]] || die "AOF reload: the 16 MiB value differs"
    [[ "$(rl DBSIZE)" == 1006 ]] || die "AOF reload: DBSIZE $(rl DBSIZE), expected 1006"
    ok "AOF reloaded by a plain redis-server: keys before/after the rewrite, the counter and 16 MiB intact"
    stop_pid "$lpid" 10
}

# wrk_bg LOG SECONDS URL: a bounded wrk in the background (2 threads, 32 connections);
# sets WRK_PID (wait for it with `wait`).
wrk_bg() {
    start_bg "$1" "${CLI_PRE[@]}" timeout $(($2 + 20)) wrk -t2 -c32 -d"$2s" --timeout 5s "$3"
    WRK_PID=$RS_LAST_PID
}

# wrk_field LOG NAME: one count of a wrk report: requests, non2xx, connect, read, write,
# timeout (0 when wrk printed no such line).
wrk_field() {
    case "$2" in
        requests) awk '/requests in/ { print $1; f = 1 } END { if (!f) print 0 }' "$1" ;;
        non2xx) awk '/Non-2xx or 3xx responses:/ { print $NF; f = 1 } END { if (!f) print 0 }' "$1" ;;
        *) awk -v k="$2" '/Socket errors:/ { for (i = 1; i < NF; i++) if ($i == k) { v = $(i + 1); sub(",", "", v); print v; f = 1 } }
                          END { if (!f) print 0 }' "$1" ;;
    esac
}

# against_kernel LABEL ERRORS: the kernel run records ERRORS as the baseline of LABEL; the
# shim run fails if its ERRORS exceed max(5, 2 x the kernel's). Both go to the summary.
against_kernel() {
    local label="$1" n="$2" base limit
    metric "$label" "errors" "$n"
    if [[ "$MODE" == kernel ]]; then
        printf '%s\t%s\n' "$label" "$n" >>"$WORK/baseline.tsv"
        ok "$label: $n errors (kernel baseline)"
        return 0
    fi
    base="$(awk -F'\t' -v l="$label" '$1 == l { v = $2 } END { print v }' "$WORK/baseline.tsv" 2>/dev/null)"
    [[ -n "$base" ]] || die "$label: no kernel baseline (did the kernel run of this scenario fail?)"
    limit=$((2 * base > 5 ? 2 * base : 5))
    ((n <= limit)) || die "$label: $n errors with the shim, $base without (limit $limit)"
    ok "$label: $n errors with the shim, $base without (limit $limit)"
}

# ms_against_kernel LABEL MS: a duration (ms) the kernel run records as the baseline of
# LABEL; the shim run fails if its MS exceeds max(2000, kernel + 1000).
ms_against_kernel() {
    local label="$1" n="$2" base limit
    metric "$label" "ms" "$n"
    if [[ "$MODE" == kernel ]]; then
        printf '%s\t%s\n' "$label" "$n" >>"$WORK/baseline.tsv"
        ok "$label: $n ms (kernel baseline)"
        return 0
    fi
    base="$(awk -F'\t' -v l="$label" '$1 == l { v = $2 } END { print v }' "$WORK/baseline.tsv" 2>/dev/null)"
    [[ -n "$base" ]] || die "$label: no kernel baseline (did the kernel run of this scenario fail?)"
    limit=$((base + 1000 > 2000 ? base + 1000 : 2000))
    ((n <= limit)) || die "$label: $n ms with the shim, $base ms without (limit $limit)"
    ok "$label: $n ms with the shim, $base ms without (limit $limit)"
}

# nginx_workers_served DIR PID...: each worker PID served at least one connection (the
# access log records the worker's pid and connection number per request).
nginx_workers_served() {
    local d="$1" w n
    shift
    for w in "$@"; do
        n="$(awk -v p="$w" '$1 == p { c[$2] = 1 } END { print length(c) }' "$d/access.log")"
        ((n > 0)) || die "worker $w served no connection (per worker: $(awk '{ c[$1 " " $2] = 1 } END { for (k in c) { split(k, a, " "); n[a[1]]++ } for (p in n) printf "%s:%d ", p, n[p] }' "$d/access.log"))"
        printf '%s ' "$w:$n"
    done
}

# scenario_nginx_shapes: nginx (2 workers) with `listen ... reuseport`, with accept_mutex
# on and off, and a reload (SIGHUP) and a graceful quit (SIGQUIT) while wrk runs, whose
# wrk errors and exit times are compared with the same run without the shim (last, so a
# failure there does not hide the other checks).
scenario_nginx_shapes() {
    local where="$1" mode="$2" d am served w i
    place "$where" "$mode"
    d="$WORK/nginx-shapes-$where-$mode"

    # listen ... reuseport: one listening socket per worker, the kernel hashes each
    # connection's 4-tuple to one of them; with 32 connections both workers get some.
    SCEN_DIR="$d/reuseport"
    mkdir -p "$SCEN_DIR"
    chmod 755 "$d" "$SCEN_DIR"
    start_nginx "$SCEN_DIR" "" reuseport
    check_preload "$mode" "$NGINX_PID" "${NGINX_WORKERS[@]}"
    wrk_check "nginx reuseport" "http://$ADDR:$NGINX_PORT/1k.bin" "$SCEN_DIR/wrk.log" 2
    served="$(nginx_workers_served "$SCEN_DIR" "${NGINX_WORKERS[@]}")"
    ok "reuseport: every worker served connections (pid:connections $served)"
    if [[ "$mode" == shim ]]; then
        for w in "${NGINX_WORKERS[@]}"; do
            show_stats "$w" "nginx worker (reuseport)"
            assert_counter "$w" accepts 1
            assert_counter "$w" sockets_on_uring 1
        done
    fi
    stop_nginx "$SCEN_DIR"

    # accept_mutex on (workers take turns watching the listener) and off (the default);
    # the "off" instance stays up for the reload and the quit under load.
    for am in on off; do
        SCEN_DIR="$d/mutex-$am"
        mkdir -p "$SCEN_DIR"
        chmod 755 "$d" "$SCEN_DIR"
        start_nginx "$SCEN_DIR" "accept_mutex $am;"
        check_preload "$mode" "$NGINX_PID" "${NGINX_WORKERS[@]}"
        wrk_check "nginx accept_mutex $am" "http://$ADDR:$NGINX_PORT/1k.bin" "$SCEN_DIR/wrk.log" 2
        if [[ "$mode" == shim ]]; then
            local workers
            workers="$(IFS=,; echo "${NGINX_WORKERS[*]}")"
            assert_counter "$workers" accepts 32
            assert_counter "$workers" sockets_on_uring 32
        fi
        [[ "$am" == off ]] && break
        stop_nginx "$SCEN_DIR"
    done

    # Reload under load (accept_mutex off instance): the listeners stay open, a new
    # generation of workers takes over, the old ones finish their requests and exit.
    local -a old=("${NGINX_WORKERS[@]}") now=()
    local gone=0 t0 ms f
    wrk_bg "$SCEN_DIR/wrk-reload.log" 4 "http://$ADDR:$NGINX_PORT/1k.bin"
    sleep 1
    t0="$(date +%s%3N)"
    kill -HUP "$NGINX_PID"
    for ((i = 0; i < 300; i++)); do
        read -r -a now <<<"$(children "$NGINX_PID")"
        gone=1
        for w in "${old[@]}"; do alive "$w" && gone=0; done
        ((gone == 1 && ${#now[@]} == 2)) && break
        sleep 0.05
    done
    ms=$(($(date +%s%3N) - t0))
    ((gone == 1 && ${#now[@]} == 2)) || die "reload under load: workers ${now[*]:-none}, old ${old[*]} gone=$gone after ${ms} ms"
    wait "$WRK_PID" || { cat "$SCEN_DIR/wrk-reload.log"; die "wrk (reload) failed"; }
    NGINX_WORKERS=("${now[@]}")
    check_preload "$mode" "${NGINX_WORKERS[@]}"
    f=$SCEN_DIR/wrk-reload.log
    (($(wrk_field "$f" requests) > 0)) || { cat "$f"; die "wrk (reload): no requests"; }
    (($(wrk_field "$f" non2xx) == 0)) || { cat "$f"; die "wrk (reload): $(wrk_field "$f" non2xx) non-2xx answers"; }
    info "reload under load: $(wrk_field "$f" requests) requests; socket errors connect $(wrk_field "$f" connect), read $(wrk_field "$f" read), write $(wrk_field "$f" write), timeout $(wrk_field "$f" timeout)"
    against_kernel "nginx reload errors" $(($(wrk_field "$f" connect) + $(wrk_field "$f" read) + $(wrk_field "$f" write) + $(wrk_field "$f" timeout)))
    ms_against_kernel "nginx reload old gone" "$ms"

    # Graceful quit under load: the master and its workers exit once their requests are
    # answered. After the listener closed, wrk's reconnects are refused (its non-blocking
    # connect reports that as a connect or write error, hundreds of thousands of them,
    # as many as it can loop): only read errors and timeouts (answers cut short) are
    # compared; the exit time is compared too.
    local -a ws=("${NGINX_WORKERS[@]}")
    wrk_bg "$SCEN_DIR/wrk-quit.log" 4 "http://$ADDR:$NGINX_PORT/1k.bin"
    sleep 1
    t0="$(date +%s%3N)"
    kill -QUIT "$NGINX_PID"
    for ((i = 0; i < 300; i++)); do
        gone=1
        for w in "$NGINX_PID" "${ws[@]}"; do alive "$w" && gone=0; done
        ((gone == 1)) && break
        sleep 0.05
    done
    ms=$(($(date +%s%3N) - t0))
    ((gone == 1)) || die "graceful quit under load: nginx still running after ${ms} ms (master $NGINX_PID, workers ${ws[*]})"
    wait "$WRK_PID" || { cat "$SCEN_DIR/wrk-quit.log"; die "wrk (quit) failed"; }
    f=$SCEN_DIR/wrk-quit.log
    (($(wrk_field "$f" requests) > 0)) || { cat "$f"; die "wrk (quit): no requests"; }
    (($(wrk_field "$f" non2xx) == 0)) || { cat "$f"; die "wrk (quit): $(wrk_field "$f" non2xx) non-2xx answers"; }
    info "quit under load: $(wrk_field "$f" requests) requests; socket errors connect $(wrk_field "$f" connect), read $(wrk_field "$f" read), write $(wrk_field "$f" write) (refused reconnects), timeout $(wrk_field "$f" timeout)"
    no_crash_lines "$SCEN_DIR/error.log" '\[(alert|emerg|crit)\]' "nginx logged alerts"
    against_kernel "nginx quit read+timeout" $(($(wrk_field "$f" read) + $(wrk_field "$f" timeout)))
    ms_against_kernel "nginx quit exit" "$ms"
}

# ---------------------------------------------------------------------------------------
# Network namespaces

setup_netns() {
    ip netns add "$NS_SRV" || return 1
    NETNS_CREATED=1
    ip netns add "$NS_CLI" || return 1
    ip link add "$VETH_SRV" netns "$NS_SRV" type veth peer name "$VETH_CLI" netns "$NS_CLI" || return 1
    ip -n "$NS_SRV" addr add "$SRV_ADDR_NS/24" dev "$VETH_SRV"
    ip -n "$NS_CLI" addr add "$CLI_ADDR_NS/24" dev "$VETH_CLI"
    ip -n "$NS_SRV" link set lo up
    ip -n "$NS_CLI" link set lo up
    ip -n "$NS_SRV" link set "$VETH_SRV" up
    ip -n "$NS_CLI" link set "$VETH_CLI" up
    # Finished checksums on the wire (see the brief: AF_PACKET users such as the ustack
    # backend see partial checksums otherwise). Harmless for the kernel path.
    ip netns exec "$NS_SRV" ethtool -K "$VETH_SRV" tx off tso off gso off >/dev/null 2>&1 || true
    ip netns exec "$NS_CLI" ethtool -K "$VETH_CLI" tx off tso off gso off >/dev/null 2>&1 || true
    info "namespaces $NS_SRV ($SRV_ADDR_NS) and $NS_CLI ($CLI_ADDR_NS) over $VETH_SRV/$VETH_CLI"
}

teardown_netns() {
    if ((NETNS_CREATED)); then
        # Deleting a namespace deletes its end of the veth pair, and so the pair.
        ip netns del "$NS_SRV" 2>/dev/null || true
        ip netns del "$NS_CLI" 2>/dev/null || true
        NETNS_CREATED=0
    fi
}

# ---------------------------------------------------------------------------------------

cleanup() {
    local rc=$?
    stop_all
    teardown_netns
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if [[ "${KEEP_WORKDIR:-0}" == 1 || $rc -ne 0 ]]; then
            info "work directory kept: $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}

# wait_gone SECONDS PID...: true once none of the PIDs runs (checked every 50 ms).
wait_gone() {
    local secs="$1" i p left
    shift
    for ((i = 0; i < secs * 20; i++)); do
        left=0
        for p in "$@"; do alive "$p" && left=1; done
        ((left == 0)) && return 0
        sleep 0.05
    done
    return 1
}

# scenario_nginx_upgrade WHERE MODE: nginx's binary upgrade while wrk runs. USR2 makes the
# master exec its own binary with an environment rebuilt from scratch (only TZ and `env`
# directives survive): the shim must re-inject LD_PRELOAD and RINGSHIM_* so the new
# master and its workers still carry it. Then WINCH (the old workers finish their
# requests and exit) and QUIT of the old master: the inherited listeners never close, so
# wrk (4 s, started 1 s before USR2) must see no non-2xx answer and no more socket errors
# than the same run without the shim (against_kernel), both generations of workers must
# have served it, and the new ones serve a 1 MiB proxy_pass afterwards. nginx honours
# USR2 only when daemonized (its parent must have changed), so this one runs with daemon
# on; the daemon stays in the namespace `ip netns exec` started it in.
scenario_nginx_upgrade() {
    local where="$1" mode="$2" d old new i w f
    place "$where" "$mode"
    d="$WORK/nginx-upgrade-$where-$mode"
    SCEN_DIR="$d"
    mkdir -p "$d"
    chmod 755 "$d"
    write_site "$d"
    NGINX_PORT="$(free_port "$NS_FOR_PORTS")"
    local p2
    p2="$(free_port "$NS_FOR_PORTS")"
    while [[ "$p2" == "$NGINX_PORT" ]]; do p2="$(free_port "$NS_FOR_PORTS")"; done
    nginx_conf "$d" "$ADDR" "$NGINX_PORT" "$p2"
    sed -i 's/^daemon off;/daemon on;/' "$d/nginx.conf"
    # The absolute path: the upgrade execs argv[0].
    "${SRV_PRE[@]}" "${SHIM_ENV[@]}" "$(command -v nginx)" -p "$d" -c "$d/nginx.conf" -e "$d/error.log" \
        >"$d/nginx.out" 2>&1 </dev/null || { cat "$d/nginx.out"; die "nginx (daemon) did not start"; }
    for ((i = 0; i < 50; i++)); do [[ -s "$d/nginx.pid" ]] && break; sleep 0.1; done
    old="$(cat "$d/nginx.pid")"
    # Not our children: recorded so that a failure's stop_all ends them too.
    RS_PIDS+=("$old")
    wait_tcp "$ADDR" "$NGINX_PORT" "$old" 15 "$CLI_NS" || die "nginx did not listen"
    expect_comm "$old" nginx
    local -a oldw=() neww=()
    for ((i = 0; i < 50; i++)); do
        read -r -a oldw <<<"$(children "$old")"
        ((${#oldw[@]} >= 2)) && break
        sleep 0.1
    done
    ((${#oldw[@]} == 2)) || die "old master $old has ${#oldw[@]} workers, expected 2"
    check_preload "$mode" "$old" "${oldw[@]}"
    ok "nginx (daemon) master $old, workers ${oldw[*]}, on $ADDR:$NGINX_PORT"

    wrk_bg "$d/wrk-upgrade.log" 4 "http://$ADDR:$NGINX_PORT/1k.bin"
    sleep 1
    kill -USR2 "$old"
    for ((i = 0; i < 100; i++)); do
        [[ -s "$d/nginx.pid.oldbin" && -s "$d/nginx.pid" && "$(cat "$d/nginx.pid")" != "$old" ]] && break
        sleep 0.05
    done
    new="$(cat "$d/nginx.pid")"
    [[ "$new" != "$old" ]] || die "USR2 started no new master"
    RS_PIDS+=("$new")
    for ((i = 0; i < 100; i++)); do
        read -r -a neww <<<"$(children "$new")"
        ((${#neww[@]} >= 2)) && break
        sleep 0.05
    done
    ((${#neww[@]} == 2)) || die "new master $new has ${#neww[@]} workers, expected 2"
    check_preload "$mode" "$new" "${neww[@]}"
    ok "USR2: new master $new, workers ${neww[*]}$([[ "$mode" == shim ]] && echo ', carrying the shim (LD_PRELOAD re-injected into the rebuilt environment)')"
    kill -WINCH "$old"
    wait_gone 15 "${oldw[@]}" || die "WINCH: old workers ${oldw[*]} still running after 15 s"
    kill -QUIT "$old"
    wait_gone 15 "$old" || die "QUIT: old master $old still running after 15 s"
    ok "WINCH: old workers exited; QUIT: old master exited; new master $new serves"
    alive "$WRK_PID" || warn "wrk had finished before the old master quit (the load did not span the whole upgrade)"
    wait "$WRK_PID" || { cat "$d/wrk-upgrade.log"; die "wrk (upgrade) failed"; }
    f=$d/wrk-upgrade.log
    (($(wrk_field "$f" requests) > 0)) || { cat "$f"; die "wrk (upgrade): no requests"; }
    (($(wrk_field "$f" non2xx) == 0)) || { cat "$f"; die "wrk (upgrade): $(wrk_field "$f" non2xx) non-2xx answers"; }
    # Both generations answered wrk's requests (the access log records the worker's pid).
    local nold=0 nnew=0
    for w in "${oldw[@]}"; do nold=$((nold + $(awk -v p="$w" '$1 == p' "$d/access.log" | wc -l))); done
    for w in "${neww[@]}"; do nnew=$((nnew + $(awk -v p="$w" '$1 == p' "$d/access.log" | wc -l))); done
    ((nold > 0 && nnew > 0)) || die "wrk across the upgrade: $nold requests answered by the old workers, $nnew by the new ones (expected both > 0)"
    info "upgrade under load: $(wrk_field "$f" requests) requests ($nold by the old workers, $nnew by the new); socket errors connect $(wrk_field "$f" connect), read $(wrk_field "$f" read), write $(wrk_field "$f" write), timeout $(wrk_field "$f" timeout)"
    against_kernel "nginx upgrade $where errors" $(($(wrk_field "$f" connect) + $(wrk_field "$f" read) + $(wrk_field "$f" write) + $(wrk_field "$f" timeout)))

    "${CLI_PRE[@]}" timeout 30 curl -sS --fail --max-time 20 -o "$d/got" "http://$ADDR:$NGINX_PORT/proxy/1m.bin" || die "curl after the upgrade failed"
    [[ "$(sha "$d/got")" == "$(sha "$d/www/1m.bin")" ]] || die "after the upgrade: content differs"
    ok "the new binary's workers serve 1 MiB through proxy_pass (sha256 equal)"
    if [[ "$mode" == shim ]]; then
        local workers
        workers="$(IFS=,; echo "${neww[*]}")"
        # wrk's 32 connections, reopened on the new workers, were accepted on listeners
        # the new image inherited (adopted at the first accept) and went onto io_uring.
        assert_counter "$workers" accepts 32
        assert_counter "$workers" sockets_on_uring 32
    fi
    kill -QUIT "$new"
    wait_gone 15 "$new" "${neww[@]}" || stop_pid "$new" 5
    no_crash_lines "$d/error.log" '\[(alert|emerg|crit)\]' "nginx logged alerts"
}

# run_scenario NAME FUNC ARGS...: runs FUNC in a subshell with errexit, so the first
# failing step ends that scenario only (its processes are stopped by its own trap) and
# the remaining scenarios still run; the result goes to the summary.
run_scenario() {
    local name="$1" t0 rc
    shift
    section "$name"
    t0="$(now_s)"
    set +e
    (
        set -eE
        SCEN_DIR=""
        # A step without its own `|| die` still says what failed.
        # shellcheck disable=SC2154 # rc is assigned inside the trap
        trap 'rc=$?; echo "FAILED: line $LINENO${FUNCNAME:+ in ${FUNCNAME[0]}, called from line ${BASH_LINENO[0]}}: $BASH_COMMAND (exit $rc)" >&2' ERR
        # On failure: the servers' log tails, then every process of the scenario ended.
        trap 'rc=$?; if ((rc != 0)) && [[ -n "$SCEN_DIR" ]]; then dump_logs "$SCEN_DIR"; fi; stop_all' EXIT
        trap 'exit 143' TERM INT
        "$@"
    )
    rc=$?
    set -e
    if ((rc == 0)); then
        RESULTS+=("$name|PASS|$(elapsed "$t0")")
    else
        RESULTS+=("$name|FAIL|$(elapsed "$t0")")
        printf '%s---- %s FAILED (logs in %s)%s\n' "$RS_R" "$name" "$WORK" "$RS_N"
    fi
}

summary() {
    local row name res secs pass=0 fail=0 skip=0
    section "Summary (test-servers.sh)"
    for row in "${RESULTS[@]}"; do
        IFS='|' read -r name res secs <<<"$row"
        case "$res" in
            PASS) pass=$((pass + 1)) ;;
            FAIL) fail=$((fail + 1)) ;;
            *) skip=$((skip + 1)) ;;
        esac
        printf '  %-28s %-5s %6ss\n' "$name" "$res" "$secs"
    done
    if [[ -s "$WORK/metrics.tsv" ]]; then
        log ""
        log "  Throughput, and the shapes' error counts and exit times (informational; 2 shared cores, not a benchmark):"
        printf '    %-28s %12s %12s %8s\n' "" "no shim" "shim" "unit"
        awk -F'\t' '{ v[$1, $2] = $3; u[$1] = $4 }
                     END { for (k in u) printf "    %-28s %12s %12s %8s\n", k, v[k, "kernel"], v[k, "shim"], u[k] }' \
            "$WORK/metrics.tsv" | sort
    fi
    log ""
    log "servers: $pass passed, $fail failed, $skip skipped"
    ((fail == 0))
}

# want NAME: true when scenario NAME is selected (RS_SCENARIOS unset or empty: all).
want() { [[ -z "${RS_SCENARIOS:-}" || ",${RS_SCENARIOS// /}," == *",$1,"* ]]; }

main() {
    local -a places=("$@")
    ((${#places[@]} > 0)) || places=(loopback netns)
    local where mode s
    for where in "${places[@]}"; do
        [[ "$where" == loopback || "$where" == netns ]] || die "unknown place '$where' (loopback, netns)"
    done
    local -a selected=()
    IFS=', ' read -r -a selected <<<"${RS_SCENARIOS:-}"
    for s in "${selected[@]}"; do
        [[ " $SCENARIO_NAMES " == *" $s "* ]] || die "RS_SCENARIOS: unknown scenario '$s' ($SCENARIO_NAMES)"
    done
    require_cmd redis-server redis-cli redis-benchmark redis-check-rdb redis-check-aof nginx haproxy curl wrk ss ip sha256sum timeout python3 cc
    require_lib

    WORK="$(mktemp -d /tmp/ringshim-servers.XXXXXX)"
    chmod 755 "$WORK"
    mkdir -p "$WORK/stats"
    chmod 1777 "$WORK/stats"
    # Where the shimmed servers publish their counters and where show_stats/assert_counter
    # (and `ringshim stat`) look for them.
    export RINGSHIM_STATS_DIR="$WORK/stats"
    : >"$WORK/metrics.tsv"
    trap cleanup EXIT
    # The project's own Envoy-shaped proxy, built from source for this run.
    MTPROXY="$WORK/mt_proxy"
    cc -O2 -g -Wall -Wextra -Werror -pthread -o "$MTPROXY" "$RS_ROOT/tests/progs/mt_proxy.c" ||
        die "cannot compile tests/progs/mt_proxy.c"
    trap 'exit 130' INT
    trap 'exit 143' TERM

    log "shim: $RS_LIB"
    log "work: $WORK"
    for where in "${places[@]}"; do
        if [[ "$where" == netns ]]; then
            section "network namespaces"
            if [[ "$(id -u)" != 0 ]] || ! setup_netns; then
                teardown_netns
                if is_ci; then
                    RESULTS+=("netns setup|FAIL|0")
                    printf '%sCannot create network namespaces (root and CAP_SYS_ADMIN needed): a failure under CI=true%s\n' "$RS_R" "$RS_N"
                    continue
                fi
                warn "SKIPPING the namespace scenarios: cannot create network namespaces (need root); set CI=true to make this a failure"
                RESULTS+=("netns (all)|SKIP|0")
                continue
            fi
        fi
        for mode in kernel shim; do
            want redis && run_scenario "redis   $where $mode" scenario_redis "$where" "$mode"
            want nginx && run_scenario "nginx   $where $mode" scenario_nginx "$where" "$mode"
            want haproxy && run_scenario "haproxy $where $mode" scenario_haproxy "$where" "$mode"
            want mtproxy && run_scenario "mtproxy $where $mode" scenario_mtproxy "$where" "$mode"
            if [[ "$where" == netns ]]; then
                # After the kernel run, whose error counts are the shim run's baseline.
                want redis-shapes && run_scenario "redis   shapes $where $mode" scenario_redis_shapes "$where" "$mode"
                want nginx-shapes && run_scenario "nginx   shapes $where $mode" scenario_nginx_shapes "$where" "$mode"
            fi
            # After the kernel run, whose error count is the shim run's baseline.
            want nginx-upgrade && run_scenario "nginx   upgrade $where $mode" scenario_nginx_upgrade "$where" "$mode"
        done
    done
    summary
}

main "$@"
