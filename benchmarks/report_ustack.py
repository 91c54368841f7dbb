#!/usr/bin/env python3
"""RESULTS-ustack.md from benchmarks/ustack.sh's raw.tsv and machine.tsv.

Every ratio is X/K within one round (paired), summarised over the clean pairs as
median [min..max]. Per-path figures are medians over the clean runs.
"""
import argparse
import csv
import statistics

PATHS = {"K": "kernel, no shim", "U": "shim, uring backend", "S": "shim, ustack backend (stackd)"}


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(v, nd=0):
    if v is None:
        return "–"
    return f"{v:,.{nd}f}"


def spread(xs, nd=2):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    return f"{statistics.median(xs):.{nd}f} [{min(xs):.{nd}f}..{max(xs):.{nd}f}] (n={len(xs)})"


STATIC_PATHS = """## What each path crosses

Two namespaces made by the script: `rsub-PID-s` (the server, and stackd for S) and
`rsub-PID-c` (the load generator). Per request (1 KiB echo shown; the others differ only
in sizes):

- **K** — client `write()` → client-namespace kernel TCP/IP → **veth** pair
  (`198.51.100.1` → `198.51.100.2`; veth's transmit hands the frame to the peer, whose
  receive runs in softirq on the *sending* CPU) → server-namespace kernel TCP → the
  server's `epoll_wait`/`read`/`write` system calls → back the same way. The veth keeps its
  default offloads (checksum, TSO, GRO: see `offloads_veth` above), so no checksum is
  computed in software.
- **U** — the same devices and the same kernel TCP as K; the server's socket I/O goes
  through its per-thread io_uring (multishot receive into provided buffers, sends queued
  and submitted with the next wait) instead of one system call per operation.
- **S** — client `write()` → client-namespace kernel TCP/IP → the **TAP** device's kernel
  side (`203.0.113.1`; transmit queues the frame on the TAP fd and wakes stackd) →
  stackd `read()`s the frame → smoltcp (IPv4 + TCP in user space, checksums in software) →
  the session's rx fifo in shared memory → an eventfd write wakes the server only if it
  announced that it sleeps → the shim's `read()` copies from the fifo (no system call) →
  the server's `write()` copies into the tx fifo and posts a ring message (stackd is woken
  through its eventfd only if it sleeps) → smoltcp builds the segment → stackd `write()`s
  the frame to the TAP, and inside that system call the client namespace's kernel receives
  it (so the client-side kernel receive work is charged to stackd, as in K the peer's
  receive is charged to the sender). The server's kernel socket for a connection is an
  unconnected placeholder; the listener also listens on the kernel (wildcard), unused here.
  The TAP is created by stackd in the server namespace and its kernel side moved into the
  client namespace, so the client's namespace has the same shape in all three paths
  (one device, a /24, the server one hop away). Different subnets (198.51.100.0/24 for the
  veth, 203.0.113.0/24 for the TAP) let both devices stay up for the whole run.

The two devices are not equivalent: a veth pair never leaves the kernel, a TAP crosses to
a user process and back (one `read`/`write` of the TAP fd per frame in stackd today). There
is no kernel-only path over a TAP without a second user-space forwarder, which would add
its own copies; the veth is the kernel's cheapest equivalent of one hop and is what
`run.sh` measures too.

**Pinning** (2 vCPUs): server (and its threads and nginx's worker) on CPU %(srv)s, stackd on
CPU %(sd)s, client on CPU %(cli)s. For S the server side (server + stackd) therefore has one
CPU, like the server (with its kernel TCP work) in K and U; stackd and the server take turns
on it, so every request needs both to run. `STACKD_CPU=1` puts stackd with the client
instead (not measured in the committed run).

**Payload copies per request** (from the code; 1 KiB each way, client side included):
K: 4 (client write, server read, server write, client read, each user↔skb). U: 6 (the
kernel fills a provided buffer that the shim copies into the application's buffer; the
application's write is copied into the shim's send queue, which the kernel copies). S: 10
— in: client write (user→skb), TAP read (skb→stackd's frame buffer, `crates/stackd/src/tap.rs`),
smoltcp frame→socket buffer, socket buffer→rx fifo (`stack/session.rs`), fifo→application
(shim); out: application→tx fifo, tx fifo→smoltcp socket buffer, socket buffer→frame, TAP
write (frame→skb), client read.
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", required=True)
    ap.add_argument("--machine", required=True)
    ap.add_argument("--md", required=True)
    a = ap.parse_args()

    machine = {}
    with open(a.machine) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("\t")
            machine[k] = v
    hz = float(machine.get("hz", "100") or 100)
    with open(a.raw) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))

    workloads = []  # rows' workload names in run order (redis: "redis c=N SET"/"GET")
    for r in rows:
        if r["workload"] not in workloads:
            workloads.append(r["workload"])
    # server-side figures: one row per run (redis: its SET row carries the run's figures)
    runs = [r for r in rows if not r["workload"].endswith(" GET")]

    def base(w):
        return w[:-4] if w.endswith(" SET") or w.endswith(" GET") else w

    def per_req(r, col, scale=1.0):
        v, n = num(r[col]), num(r["requests"])
        return v * scale / n if v is not None and n else None

    def cpu_us(r, col):
        return per_req(r, col, 1e6 / hz)

    def total_cpu_us(r):
        s, d = cpu_us(r, "srv_ticks"), cpu_us(r, "sd_ticks") or 0.0
        return s + d if s is not None else None

    def busy(r, col):
        t, s = num(r[col]), num(r["secs"])
        return 100.0 * t / hz / s if t is not None and s else None

    ok = lambda r: r["status"] == "ok"  # noqa: E731
    clean = [r for r in rows if ok(r)]
    clean_runs = [r for r in runs if ok(r)]

    def pairs(w, p, fn, rowset):
        out = []
        by = {(r["workload"], r["round"], r["path"]): r for r in rowset if ok(r)}
        for (wl, rnd, path), r in by.items():
            if wl == w and path == p and (wl, rnd, "K") in by:
                k, x = fn(by[(wl, rnd, "K")]), fn(r)
                if k and x is not None:
                    out.append(x / k)
        return out

    L = []
    L.append("# ringshim: ustack vs kernel vs uring")
    L.append("")
    L.append(f"Generated by `bash benchmarks/ustack.sh{' --quick' if machine.get('mode') == 'quick' else ''}` "
             f"on {machine.get('date')} ({machine.get('duration_s', '?')} s). Per-run data: "
             "`benchmarks/out-ustack/raw.tsv` (not committed); how it is measured: "
             "[README.md](README.md#ustack-vs-kernel-vs-uring-ustacksh).")
    L.append("")
    L.append("| | |")
    L.append("|---|---|")
    for k in ("kernel", "cpu", "ncpu", "mem", "virt", "hz", "git", "lib_sha256", "mode", "rounds", "retries",
              "steal_max", "foreign_max", "cpus", "load_start", "load_end", "nginx", "redis", "wrk",
              "echo_secs", "redis_n", "wrk_secs", "nginx_cases", "offloads_veth", "offloads_tap"):
        if k in machine:
            L.append(f"| {k} | {machine[k]} |")
    L.append("")
    L.append("**Paths.** K = the server without the shim; U = `LD_PRELOAD=libringshim.so` "
             "(`RINGSHIM_BACKEND=uring`, the default); S = `LD_PRELOAD=libringshim.so "
             "RINGSHIM_BACKEND=ustack` with a fresh `ringshim-stackd` per run. Same server binary, "
             "same configuration, same client, listening on the wildcard address in every path.")
    L.append("")
    L.append("**Ratios** are X/K within one round (K, U, S run one after the other, each on a fresh "
             "server), given as median [min..max] over the clean pairs. CPU per request is the "
             "server's utime+stime (all its processes and threads) plus, for S, stackd's, over the "
             "client's run, divided by the requests completed. Lower is better for p99 and CPU; "
             "higher for requests/s.")
    L.append("")

    # ---- ratios
    L.append("## Paired ratios")
    L.append("")
    L.append("| workload | U/K req/s | S/K req/s | U/K p99 | S/K p99 | U/K CPU/req (server) | S/K CPU/req (server + stackd) |")
    L.append("|---|---|---|---|---|---|---|")
    for w in workloads:
        rps = lambda r: num(r["rps"])  # noqa: E731
        p99 = lambda r: num(r["p99_us"])  # noqa: E731
        cells = [spread(pairs(w, "U", rps, rows)), spread(pairs(w, "S", rps, rows)),
                 spread(pairs(w, "U", p99, rows)), spread(pairs(w, "S", p99, rows))]
        if w.endswith(" GET"):
            cells += ["(with SET)", "(with SET)"]
        else:
            cells += [spread(pairs(w, "U", total_cpu_us, runs)), spread(pairs(w, "S", total_cpu_us, runs))]
        L.append(f"| {w} | " + " | ".join(cells) + " |")
    L.append("")
    L.append("Redis: SET and GET are separate rows for throughput and latency; the CPU figures "
             "cover the whole redis-benchmark run (both tests) and sit on the SET row.")
    L.append("")

    # ---- absolute figures
    L.append("## Medians per path")
    L.append("")
    L.append("| workload | path | runs | req/s | p50 µs | p99 µs | server CPU µs/req | stackd CPU µs/req | "
             "total µs/req | server syscalls/req | stackd syscalls/req | server ctx sw/req | stackd ctx sw/req |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for w in workloads:
        for p in "KUS":
            rs = [r for r in clean if r["workload"] == w and r["path"] == p]
            if not rs:
                if any(r["workload"] == w and r["path"] == p for r in rows):
                    L.append(f"| {w} | {p} | 0 | – | – | – | – | – | – | – | – | – | – |")
                continue
            srv = [r for r in clean_runs if r["workload"] == (w[:-4] + " SET" if w.endswith(" GET") else w)
                   and r["path"] == p]
            cols = [
                fmt(med(num(r["rps"]) for r in rs)),
                fmt(med(num(r["p50_us"]) for r in rs)),
                fmt(med(num(r["p99_us"]) for r in rs)),
            ]
            if w.endswith(" GET"):
                cols += ["(SET row)"] * 7
            else:
                cols += [
                    fmt(med(cpu_us(r, "srv_ticks") for r in srv), 1),
                    fmt(med(cpu_us(r, "sd_ticks") for r in srv), 1) if p == "S" else "–",
                    fmt(med(total_cpu_us(r) for r in srv), 1),
                    fmt(med(per_req(r, "srv_syscalls") for r in srv), 2),
                    fmt(med(per_req(r, "sd_syscalls") for r in srv), 2) if p == "S" else "–",
                    fmt(med(per_req(r, "srv_cs") for r in srv), 2),
                    fmt(med(per_req(r, "sd_cs") for r in srv), 2) if p == "S" else "–",
                ]
            L.append(f"| {w} | {p} | {len(rs)} | " + " | ".join(cols) + " |")
    L.append("")

    cpus = dict(x.split(" ") for x in machine.get("cpus", "server ?, stackd ?, client ?").split(", "))
    L.append(STATIC_PATHS.strip() % {"srv": cpus.get("server"), "sd": cpus.get("stackd"), "cli": cpus.get("client")})
    L.append("")
    # ---- what limits S
    L.append("## What limits ustack (measured, S runs)")
    L.append("")
    L.append("Busy % = CPU time over the client's run / its wall time (100 % = one whole CPU). "
             "Server and stackd share one CPU, the client has the other. stackd's counters "
             "(printed at its exit) cover its whole life — connection set-up and warm-up "
             "included — and are divided by the requests the client counted, so they are slight "
             "overestimates per request. *sleeps* = stackd's `epoll_wait`s that blocked (each one "
             "a wake-up later); *app wake-ups* = eventfd writes stackd made to wake the server; "
             "*user-space share* = stackd's utime / (utime+stime): the rest is system time, mostly "
             "the TAP's `read`/`write` — which includes the client namespace's kernel receive of "
             "every frame stackd writes.")
    L.append("")
    L.append("| workload | server busy % | stackd busy % | client busy % | stackd share of server-side CPU | "
             "stackd user-space share | stackd sleeps/req | app wake-ups/req | TAP frames/req (rx+tx) | K: server busy % | K: client busy % |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for w in workloads:
        if w.endswith(" GET"):
            continue
        srs = [r for r in clean_runs if r["workload"] == w and r["path"] == "S"]
        krs = [r for r in clean_runs if r["workload"] == w and r["path"] == "K"]
        if not srs:
            continue
        share = med((num(r["sd_ticks"]) / (num(r["sd_ticks"]) + num(r["srv_ticks"])) * 100)
                    if num(r["sd_ticks"]) is not None and (num(r["sd_ticks"]) + num(r["srv_ticks"])) > 0 else None
                    for r in srs)
        ushare = med(100 * num(r.get("sd_uticks")) / num(r["sd_ticks"])
                     if num(r.get("sd_uticks")) is not None and num(r["sd_ticks"]) else None for r in srs)
        frames = med(((num(r["sd_rx_frames"]) or 0) + (num(r["sd_tx_frames"]) or 0)) / num(r["requests"])
                     if num(r["requests"]) and r["sd_rx_frames"] else None for r in srs)
        L.append(f"| {base(w)} | {fmt(med(busy(r, 'srv_ticks') for r in srs))} | "
                 f"{fmt(med(busy(r, 'sd_ticks') for r in srs))} | {fmt(med(busy(r, 'cli_ticks') for r in srs))} | "
                 f"{fmt(share)} % | {fmt(ushare)} % | {fmt(med(per_req(r, 'sd_sleeps') for r in srs), 2)} | "
                 f"{fmt(med(per_req(r, 'sd_app_wakeups') for r in srs), 2)} | {fmt(frames, 2)} | "
                 f"{fmt(med(busy(r, 'srv_ticks') for r in krs))} | {fmt(med(busy(r, 'cli_ticks') for r in krs))} |")
    L.append("")

    # ---- every run
    L.append("## Every run (steal, foreign load, status)")
    L.append("")
    L.append("| workload | round | path | status | req/s | steal % | foreign CPUs | accelerated sockets | reason |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        L.append(f"| {r['workload']} | {r['round']} | {r['path']} | {r['status']} | {fmt(num(r['rps']))} | "
                 f"{r['steal_pct'] or '–'} | {r['foreign_cpus'] or '–'} | {r['accel_sockets'] or '–'} | "
                 f"{r['reason'] or ''} |")
    L.append("")
    dropped = [r for r in rows if r["status"] != "ok"]
    L.append(f"{len(dropped)} of {len(rows)} rows dropped or failed. A dropped K drops its round's "
             "pairs; a dropped U or S drops only that pair.")
    L.append("")

    text = "\n".join(L) + "\n"
    with open(a.md, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
