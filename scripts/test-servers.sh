#!/usr/bin/env bash
# Real, unmodified servers from Debian packages under the shim, each compared with the
# same run without it:
#
#   redis    redis-server; redis-cli round-trips a 1 MiB value; redis-benchmark SET/GET;
#            the keyspace and the server's own command counters are checked afterwards;
#            BGSAVE (fork) must finish ok.
#   nginx    2 worker processes (LD_PRELOAD given to the master, inherited by the forked
#            workers): a 1 KiB and a 1 MiB static file and the same through proxy_pass to
#            a second server block (upstream keepalive); curl compares sha256; wrk must
#            see no non-2xx/3xx answers and no socket errors; a reload (SIGHUP, new
#            workers forked) must keep serving.
#   haproxy  2 threads (the Envoy-like multi-threaded proxy) in front of an nginx; wrk.
#
# Each runs in two places:
#   loopback  everything on 127.0.0.1, RINGSHIM_KERNEL_NETS=none so loopback is routed
#             through the shim;
#   netns     server in namespace rs-srv-PID at 198.51.100.1 (TEST-NET-2), clients in
#             rs-cli-PID at 198.51.100.2 over a veth pair, the shim in its default
#             configuration (only loopback stays on the kernel: the TEST-NET traffic is
#             accelerated, nginx's proxy_pass to 127.0.0.1 stays on the kernel path).
#
#   bash scripts/test-servers.sh [loopback] [netns]     (default: both; netns needs root)
#
# Environment: RINGSHIM_LIB (default target/release/libringshim.so), CI=true (a missing
# netns capability is a failure instead of a skip), KEEP_WORKDIR=1 (keep the temp dir).
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
    for f in "$1"/redis.log "$1"/error.log "$1"/nginx.out "$1"/haproxy.log; do
        [[ -s "$f" ]] || continue
        printf '  --- tail of %s ---\n' "$f"
        tail -n 15 "$f" | sed 's/^/  | /'
    done
}

# sha FILE: its sha256.
sha() { sha256sum "$1" | cut -d' ' -f1; }

# metric LABEL UNIT VALUE: one throughput figure of the current mode, for the summary.
metric() { printf '%s\t%s\t%s\t%s\n' "$1" "$MODE" "$3" "$2" >>"$WORK/metrics.tsv"; }

# wrk_check LABEL URL LOG: bounded wrk run (2 threads, 32 connections, 3 s); fails on any
# non-2xx/3xx answer, socket error, or no request at all.
wrk_check() {
    local label="$1" url="$2" logf="$3" reqs rps
    "${CLI_PRE[@]}" timeout 30 wrk -t2 -c32 -d3s --timeout 5s "$url" >"$logf" 2>&1 ||
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

    # fork(): BGSAVE forks a child that writes the dataset while the parent keeps serving.
    local i st=""
    rcli BGSAVE >/dev/null || die "BGSAVE refused"
    for ((i = 0; i < 100; i++)); do
        st="$(rcli INFO persistence | tr -d '\r')"
        grep -q '^rdb_bgsave_in_progress:0' <<<"$st" && break
        sleep 0.1
    done
    grep -q '^rdb_last_bgsave_status:ok' <<<"$st" || die "BGSAVE did not finish ok: $(grep bgsave <<<"$st" | xargs)"
    [[ -s "$d/dump.rdb" ]] || die "BGSAVE wrote no dump.rdb"
    [[ "$(rcli DBSIZE)" == 2 ]] || die "keyspace changed after BGSAVE"
    ok "BGSAVE (fork) finished ok and the server still answers"

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

# nginx_conf DIR FRONT_ADDR FRONT_PORT BACK_PORT: 2 workers; the front server serves the
# files and proxies /proxy/ to the back server block on 127.0.0.1 (upstream keepalive).
nginx_conf() {
    local d="$1" addr="$2" p1="$3" p2="$4"
    cat >"$d/nginx.conf" <<EOF
# generated by scripts/test-servers.sh
worker_processes 2;
daemon off;
master_process on;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 1024; }
http {
    access_log $d/access.log;
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
        listen $addr:$p1;
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

# start_nginx DIR (uses ADDR, SRV_PRE, SHIM_ENV): sets NGINX_PID, NGINX_PORT, NGINX_WORKERS.
start_nginx() {
    local d="$1" p2 i
    write_site "$d"
    NGINX_PORT="$(free_port "$NS_FOR_PORTS")"
    p2="$(free_port "$NS_FOR_PORTS")"
    while [[ "$p2" == "$NGINX_PORT" ]]; do p2="$(free_port "$NS_FOR_PORTS")"; done
    nginx_conf "$d" "$ADDR" "$NGINX_PORT" "$p2"
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

# scenario_nginx_upgrade: nginx's binary upgrade under the shim. USR2 makes the master
# exec its own binary with an environment rebuilt from scratch (only TZ and `env`
# directives survive): the shim must re-inject LD_PRELOAD and RINGSHIM_* so the new
# master and its workers still carry it, and the service must not stop. nginx honours
# USR2 only when daemonized (its parent must change), so this one runs with daemon on,
# on loopback with the shim routing loopback.
scenario_nginx_upgrade() {
    local d old new i w
    place loopback shim
    d="$WORK/nginx-upgrade"
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
    env "${SHIM_ENV[@]}" "$(command -v nginx)" -p "$d" -c "$d/nginx.conf" -e "$d/error.log" ||
        die "nginx (daemon) did not start"
    for ((i = 0; i < 50; i++)); do [[ -s "$d/nginx.pid" ]] && break; sleep 0.1; done
    old="$(cat "$d/nginx.pid")"
    wait_tcp "$ADDR" "$NGINX_PORT" "$old" 15 "$CLI_NS" || die "nginx did not listen"
    shim_loaded "$old" || die "the old master does not carry the shim"
    kill -USR2 "$old"
    for ((i = 0; i < 50; i++)); do
        [[ -s "$d/nginx.pid.oldbin" && -s "$d/nginx.pid" && "$(cat "$d/nginx.pid")" != "$old" ]] && break
        sleep 0.1
    done
    new="$(cat "$d/nginx.pid")"
    [[ "$new" != "$old" ]] || die "USR2 started no new master"
    shim_loaded "$new" || die "the new master (pid $new) lost the preload across its cleaned exec"
    ok "USR2: new master $new carries the shim (LD_PRELOAD re-injected into the rebuilt environment)"
    kill -QUIT "$old"
    for ((i = 0; i < 50; i++)); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
    timeout 30 curl -sS --fail --max-time 20 -o "$d/got" "http://$ADDR:$NGINX_PORT/proxy/1m.bin" || die "curl after the upgrade failed"
    [[ "$(sha "$d/got")" == "$(sha "$d/www/1m.bin")" ]] || die "after the upgrade: content differs"
    for w in $(pgrep -P "$new"); do
        shim_loaded "$w" || die "worker $w of the new master lacks the shim"
    done
    ok "old master quit; the new binary's workers serve through the shim"
    kill -QUIT "$new"
    for ((i = 0; i < 50; i++)); do kill -0 "$new" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$new" 2>/dev/null && stop_pid "$new" 5
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
        log "  Throughput (informational; 2 shared cores, not a benchmark):"
        printf '    %-28s %12s %12s %8s\n' "" "no shim" "shim" "unit"
        awk -F'\t' '{ v[$1, $2] = $3; u[$1] = $4 }
                     END { for (k in u) printf "    %-28s %12s %12s %8s\n", k, v[k, "kernel"], v[k, "shim"], u[k] }' \
            "$WORK/metrics.tsv" | sort
    fi
    log ""
    log "servers: $pass passed, $fail failed, $skip skipped"
    ((fail == 0))
}

main() {
    local -a places=("$@")
    ((${#places[@]} > 0)) || places=(loopback netns)
    local where mode
    for where in "${places[@]}"; do
        [[ "$where" == loopback || "$where" == netns ]] || die "unknown place '$where' (loopback, netns)"
    done
    require_cmd redis-server redis-cli redis-benchmark nginx haproxy curl wrk ss ip sha256sum timeout python3
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
            run_scenario "redis   $where $mode" scenario_redis "$where" "$mode"
            run_scenario "nginx   $where $mode" scenario_nginx "$where" "$mode"
            run_scenario "haproxy $where $mode" scenario_haproxy "$where" "$mode"
        done
        if [[ "$where" == loopback ]]; then
            run_scenario "nginx   USR2 upgrade" scenario_nginx_upgrade
        fi
    done
    summary
}

main "$@"
