#!/usr/bin/env bash
# benchmarks/lib.sh - helpers shared by run.sh, balance.sh and ustack.sh (sourced).
# Expects NCPU, FOREIGN_MAX and QUIET_MAX to be set by the caller before wait_quiet runs.

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

kill_wait() { # PID...: TERM, then KILL after 5 s; only our own PIDs
    local p i
    for p in "$@"; do
        [[ -n "$p" ]] || continue
        kill -TERM "$p" 2>/dev/null || continue
        for ((i = 0; i < 50; i++)); do
            kill -0 "$p" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
}

procstat() { # "busy total steal" jiffies of the whole machine, from /proc/stat
    local u n s i w q sq st
    read -r _ u n s i w q sq st _ </proc/stat
    echo "$((u + n + s + q + sq)) $((u + n + s + i + w + q + sq + st)) $st"
}

pid_cpu() { # PID...: utime+stime (USER_HZ) of each PID's thread group, summed
    local p s fld t=0
    for p in "$@"; do
        [[ -n "$p" ]] || continue
        s="$(cat "/proc/$p/stat" 2>/dev/null)" || continue
        s="${s##*) }"
        read -ra fld <<<"$s"
        t=$((t + fld[11] + fld[12]))
    done
    echo "$t"
}

own_children_cpu() { # cutime+cstime of this shell: children reaped so far (the clients)
    local s fld
    s="$(cat /proc/$$/stat)"
    s="${s##*) }"
    read -ra fld <<<"$s"
    echo $((fld[13] + fld[14]))
}

to_us() { # wrk latency "1.23ms" -> µs
    awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) f = 1; else if (v ~ /ms$/) f = 1000; else if (v ~ /s$/) f = 1000000; else f = 1; printf "%.0f", n * f }'
}

# wait_quiet: wait (at most QUIET_MAX s) until other processes use < FOREIGN_MAX CPUs;
# QUIET_WAITED sums the seconds waited over the run (reported with the results).
QUIET_WAITED=0
wait_quiet() {
    local a b t0 t1 busy tot cpus waited=0
    while :; do
        read -r a t0 _ <<<"$(procstat)"
        sleep 0.5
        read -r b t1 _ <<<"$(procstat)"
        busy=$((b - a))
        tot=$((t1 - t0))
        ((tot > 0)) || tot=1
        cpus="$(awk -v b="$busy" -v t="$tot" -v n="$NCPU" 'BEGIN { printf "%.2f", b / t * n }')"
        if awk -v c="$cpus" -v m="$FOREIGN_MAX" 'BEGIN { exit !(c <= m) }'; then break; fi
        if ((waited >= QUIET_MAX)); then
            log "machine still busy ($cpus CPUs used by others) after ${waited}s; running anyway"
            break
        fi
        ((waited == 0)) && log "machine busy ($cpus CPUs used by others): waiting up to ${QUIET_MAX}s"
        sleep 1
        waited=$((waited + 1))
        QUIET_WAITED=$((QUIET_WAITED + 1))
    done
}
