#!/usr/bin/env python3
"""Turn benchmarks/out/raw.tsv (one row per run, written by run.sh) into RESULTS.md and a plot.

Ratios are computed per round (X/A with the A of the same round), then summarised as
median [min..max] over the clean rounds. Only the standard library is needed for the
Markdown; the plot uses matplotlib, else gnuplot, else is skipped (and RESULTS.md says so).
"""
import argparse
import csv
import os
import shutil
import statistics
import subprocess
import tempfile
from collections import OrderedDict, defaultdict

MODES = ["A", "B", "C", "D", "N"]
HZ = os.sysconf("SC_CLK_TCK")
MODE_NAMES = {
    "A": "A: no shim",
    "B": "B: shim (accelerated)",
    "C": "C: shim loaded, RINGSHIM=0",
    "D": "D: shim + SQPOLL",
    "N": "N: native io_uring echo",
}
# (column, label, higher_is_better)
METRICS = [
    ("rps", "requests/s", True),
    ("p50_us", "p50 latency (µs)", False),
    ("p99_us", "p99 latency (µs)", False),
    ("p999_us", "p99.9 latency (µs)", False),
    ("sys_per_req", "server syscalls / request", False),
    ("cpu_us_per_req", "server CPU µs / request", False),
    ("srv_busy_pct", "server CPU busy % (of one CPU)", False),
    ("enters_per_req", "shim ring_enters / request", False),
    ("avoided_per_req", "shim syscalls_avoided / request", False),
]


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(v, digits=None):
    if v is None:
        return "–"
    if digits is not None:
        return f"{v:.{digits}f}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def fmt_ratio(rs):
    rs = [r for r in rs if r is not None]
    if not rs:
        return "–"
    m = statistics.median(rs)
    if len(rs) == 1:
        return f"{m:.3f}"
    return f"{m:.3f} [{min(rs):.3f}..{max(rs):.3f}]"


def load(raw):
    rows = []
    with open(raw) as f:
        for r in csv.DictReader(f, delimiter="\t"):
            req = num(r.get("requests"))
            ticks, secs = num(r.get("srv_cpu_ticks")), num(r.get("secs"))
            r["srv_busy_pct"] = f"{ticks / HZ / secs * 100:.1f}" if ticks is not None and secs else ""
            for src, dst in (("ring_enters", "enters_per_req"), ("syscalls_avoided", "avoided_per_req")):
                v = num(r.get(src))
                r[dst] = f"{v / req:.4f}" if v is not None and req else ""
            rows.append(r)
    return rows


def family(wl):
    if wl.startswith("echo open"):
        return "openloop"
    return wl.split()[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--raw", required=True)
    ap.add_argument("--machine", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--png", required=True)
    ap.add_argument("--plot", default="matplotlib")
    a = ap.parse_args()

    machine = OrderedDict()
    multi = defaultdict(list)
    with open(a.machine) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("\t")
            machine[k] = v
            multi[k].append(v)
    # run.sh --more appends: add up the durations, list the continuations
    for k in ("duration_s", "quiet_waited_s"):
        if multi[k]:
            machine[k] = str(sum(int(x or 0) for x in multi[k]))
    if multi["load_end"]:
        machine["load_end"] = " / ".join(multi["load_end"])
    rows = load(a.raw)

    workloads = list(OrderedDict.fromkeys(r["workload"] for r in rows))
    ok = [r for r in rows if r["status"] == "ok"]
    # per workload -> round -> mode -> row
    by = defaultdict(lambda: defaultdict(dict))
    for r in ok:
        by[r["workload"]][r["round"]][r["mode"]] = r

    def ratios(wl, mode, col):
        out = []
        for rnd, ms in sorted(by[wl].items()):
            if "A" in ms and mode in ms:
                x, b = num(ms[mode].get(col)), num(ms["A"].get(col))
                if x is not None and b:
                    out.append(x / b)
        return out

    def values(wl, mode, col):
        return [num(ms[mode].get(col)) for ms in by[wl].values() if mode in ms]

    def modes_of(wl):
        present = {r["mode"] for r in rows if r["workload"] == wl}
        return [m for m in MODES if m in present]

    md = []
    p = md.append
    p("# ringshim benchmark results")
    p("")
    p(f"Produced by `bash benchmarks/run.sh{' --quick' if machine.get('mode') == 'quick' else ''}` "
      f"({machine.get('mode')} mode) on {machine.get('date')}. Every number below was measured in that run; "
      "the per-run data is in `benchmarks/results-raw.tsv`. How to read it: `benchmarks/README.md`.")
    p("")
    p("## Machine")
    p("")
    p("| | |")
    p("|---|---|")
    for k, label in [("date", "date"), ("kernel", "kernel"), ("cpu", "CPU model"), ("ncpu", "CPUs"),
                     ("mem", "memory"), ("virt", "virtualisation"), ("git", "ringshim commit (+dirty: uncommitted changes in src/ or crates/)"),
                     ("lib_sha256", "libringshim.so sha256"),
                     ("nginx", "nginx"), ("redis", "redis"), ("wrk", "wrk"), ("liburing", "liburing-dev"),
                     ("perf", "perf")]:
        p(f"| {label} | {machine.get(k, '')} |")
    p(f"| load average at start / end | {machine.get('load_start', '')} / {machine.get('load_end', '')} |")
    for c in multi["continued"]:
        p(f"| continued | {c}: re-ran only the rounds still missing, same library (sha256 {machine.get('lib_sha256', '')[:12]}) |")
    p(f"| run length | {machine.get('duration_s', '?')} s; waited {machine.get('quiet_waited_s', '0')} s for other load to pass |")
    p(f"| rounds | {machine.get('rounds')} clean A/X pairs wanted per mode and workload, up to {machine.get('retries')} extra rounds to replace dropped runs |")
    p(f"| contamination rule | a run with steal > {machine.get('steal_max')}% or other processes using > {machine.get('foreign_max')} CPUs on average is dropped (a dropped A ends its round) |")
    p(f"| run lengths | echo {machine.get('echo_secs')} s (+{machine.get('echo_warm')} s warm-up), redis -n {machine.get('redis_n')} per test, wrk {machine.get('wrk_secs')} s, open loop {machine.get('open_secs')} s at {machine.get('open_conns')} connections |")
    p("")
    p("Machine notes: a shared 2-vCPU VM. Server pinned to CPU 0, load generator to CPU 1, in two network "
      "namespaces over a veth pair (198.51.100.1 ↔ 198.51.100.2). The load generator has one CPU and does "
      "about as much work per request as the server, so throughput and latency move little; the shim's "
      "effect shows first in server syscalls and CPU per request. The \"server CPU busy %\" row shows "
      "whether the server was saturated as well. "
      "Other engineers' jobs ran on this machine during the run: per-run steal and foreign CPU are in the "
      "tables and in the raw data.")
    p("")

    # ------------------------------------------------------------------ targets
    def target_rows():
        out = []
        fam_sys = {"echo": 0.25, "redis": 0.33, "nginx": 0.5}
        for wl in workloads:
            fam = family(wl)
            if fam == "openloop":
                continue
            if fam == "redis" and wl.endswith("GET"):
                sys_dup = True  # server-side figures are shared by the SET and GET rows of a run
            else:
                sys_dup = False
            if fam in fam_sys and not sys_dup:
                out.append(("syscalls/request B/A", wl.replace(" SET", " (SET+GET)"), "≤", fam_sys[fam],
                            ratios(wl, "B", "sys_per_req")))
            if not sys_dup:
                out.append(("CPU/request B/A", wl.replace(" SET", " (SET+GET)"), "≤", 1.0,
                            ratios(wl, "B", "cpu_us_per_req")))
            out.append(("throughput B/A", wl, "≥", 0.98, ratios(wl, "B", "rps")))
            out.append(("p99 B/A", wl, "≤", 1.05, ratios(wl, "B", "p99_us")))
            if "C" in modes_of(wl) and not sys_dup:
                out.append(("kernel-path CPU/request C/A", wl.replace(" SET", " (SET+GET)"), "≤", 1.02,
                            ratios(wl, "C", "cpu_us_per_req")))
        return out

    p("## Targets")
    p("")
    p("Judged on the median of the per-round ratios; \"spread crosses\" means some rounds were on the other "
      "side of the target. redis SET and GET run in one server process, so its syscalls and CPU per request "
      "cover both tests.")
    p("")
    p("| target | workload | B/A (or C/A) median [min..max] | rounds | verdict |")
    p("|---|---|---|---|---|")
    tally = defaultdict(lambda: [0, 0])
    for name, wl, op, lim, rs in target_rows():
        if not rs:
            verdict = "no data"
        else:
            m = statistics.median(rs)
            met = m <= lim if op == "≤" else m >= lim
            allmet = all((r <= lim if op == "≤" else r >= lim) for r in rs)
            verdict = ("**met**" if met else "**not met**") + ("" if allmet == met else " (spread crosses)")
            tally[name][0 if met else 1] += 1
        p(f"| {name} {op} {lim} | {wl} | {fmt_ratio(rs)} | {len(rs)} | {verdict} |")
    p("")
    if tally:
        p("Tally: " + "; ".join(f"{k}: {v[0]} met, {v[1]} not met" for k, v in tally.items()) + ".")
        p("")

    # ------------------------------------------------------------------ per workload
    p("## Results per workload")
    p("")
    p("Values are medians over the clean rounds; ratio columns are median [min..max] of the per-round "
      "ratio to mode A of the same round. " + "; ".join(f"{MODE_NAMES[m]}" for m in MODES) + ".")
    p("")
    for wl in workloads:
        ms = modes_of(wl)
        nclean = len([1 for rnd in by[wl].values() if "A" in rnd])
        p(f"### {wl}")
        p("")
        cols = ["metric"] + ms + [f"{m}/A" for m in ms if m != "A"]
        p("| " + " | ".join(cols) + " |")
        p("|---" * len(cols) + "|")
        for col, label, _ in METRICS:
            vals = [med(values(wl, m, col)) for m in ms]
            if all(v is None for v in vals):
                continue
            rat = [fmt_ratio(ratios(wl, m, col)) for m in ms if m != "A"]
            p("| " + " | ".join([label] + [fmt(v) for v in vals] + rat) + " |")
        st = [num(r["steal_pct"]) for r in ok if r["workload"] == wl]
        fo = [num(r["foreign_cpus"]) for r in ok if r["workload"] == wl]
        st = [x for x in st if x is not None]
        fo = [x for x in fo if x is not None]
        dropped = [r for r in rows if r["workload"] == wl and r["status"] in ("dropped", "failed")]
        dropped_rounds = sorted({(r["attempt"]) for r in dropped})
        p("")
        pairs = ", ".join(f"{m} {len(ratios(wl, m, 'rps'))}" for m in ms if m != "A")
        line = f"Rounds with a clean baseline A: {nclean}" + (f"; clean pairs per mode: {pairs}." if pairs else ".")
        if st:
            line += f" Steal during clean runs: max {max(st):.1f}%; other processes: max {max(fo):.2f} CPUs."
        if dropped_rounds:
            line += f" Dropped attempts: {len(dropped_rounds)} (see below)."
        p(line)
        fb = [num(r["fallbacks"]) for r in ok if r["workload"] == wl and r["mode"] in "BD" and r["fallbacks"]]
        dm = [num(r["demotions"]) for r in ok if r["workload"] == wl and r["mode"] in "BD" and r["demotions"]]
        su = [num(r["sockets_on_uring"]) for r in ok if r["workload"] == wl and r["mode"] in "BD" and r["sockets_on_uring"]]
        if su:
            p(f"Shim sockets on uring per run: {int(min(su))}..{int(max(su))}; fallbacks max {int(max(fb) if fb else 0)}; "
              f"demotions max {int(max(dm) if dm else 0)}.")
        p("")

    # ------------------------------------------------------------------ open loop summary
    ol = [wl for wl in workloads if family(wl) == "openloop"]
    if ol:
        p("## Open-loop latency (echo, fixed offered rate)")
        p("")
        p(f"Offered rate = percentage of the median closed-loop A throughput at {machine.get('open_conns')} "
          f"connections ({machine.get('open_capacity')} req/s). Latency is measured from each request's scheduled "
          "send time (queueing included).")
        p("")
        ms_all = [m for m in MODES if any(m in modes_of(wl) for wl in ol)]
        p("| offered | " + " | ".join(f"{m} p50 / p99 / p99.9 (µs)" for m in ms_all) + " | B/A p99 | B/A p99.9 |")
        p("|---" * (1 + len(ms_all) + 2) + "|")
        for wl in ol:
            cells = []
            for m in ms_all:
                cells.append(" / ".join(fmt(med(values(wl, m, c))) for c in ("p50_us", "p99_us", "p999_us")))
            p(f"| {wl.split()[2]} | " + " | ".join(cells) + f" | {fmt_ratio(ratios(wl, 'B', 'p99_us'))} | "
              f"{fmt_ratio(ratios(wl, 'B', 'p999_us'))} |")
        p("")

    # ------------------------------------------------------------------ dropped / failed
    p("## Dropped and failed runs")
    p("")
    bad = [r for r in rows if r["status"] != "ok"]
    if not bad:
        p("None: every round was clean.")
    else:
        p("A dropped run is not in any table above. When the dropped run is a round's baseline A, the round "
          "stopped there; later rounds re-ran A and the modes still short of clean pairs.")
        p("")
        p("| workload | attempt | mode | reason | rps | steal % | foreign CPUs | load before → after |")
        p("|---|---|---|---|---|---|---|---|")
        for r in bad:
            p(f"| {r['workload']} | {r['attempt']} | {r['mode']} | {r['reason']} | {r['rps'] or '–'} | "
              f"{r['steal_pct'] or '–'} | {r['foreign_cpus'] or '–'} | {r['load_before']} → {r['load_after']} |")
    p("")
    fails = [r for r in rows if "failed" in r["status"] or "failed" in r["reason"]]
    if fails:
        p("Failures (error text as the script recorded it):")
        p("")
        seen = set()
        for r in fails:
            key = (r["workload"], r["mode"], r["reason"])
            if key in seen:
                continue
            seen.add(key)
            p(f"- {r['workload']} mode {r['mode']}: {r['reason']}")
        p("")

    # ------------------------------------------------------------------ plot
    plot_note = make_plot(a, workloads, ol, modes_of, ratios, values, machine)
    p("## Plot")
    p("")
    p(plot_note)
    p("")
    with open(a.md, "w") as f:
        f.write("\n".join(md))


def make_plot(a, workloads, ol, modes_of, ratios, values, machine):
    closed = [wl for wl in workloads if family(wl) != "openloop"]
    panels = [("sys_per_req", "syscalls / request (X/A)"), ("cpu_us_per_req", "CPU / request (X/A)"),
              ("rps", "requests/s (X/A)"), ("p99_us", "p99 latency (X/A)")]
    if a.plot == "matplotlib":
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except Exception as e:  # noqa: BLE001
            return f"No plot: matplotlib failed to load ({e})."
        fig, axes = plt.subplots(5, 1, figsize=(15, 22))
        colors = {"B": "tab:blue", "C": "tab:gray", "D": "tab:orange", "N": "tab:green"}
        for ax, (col, title) in zip(axes, panels):
            xs = list(range(len(closed)))
            width = 0.2
            for k, m in enumerate("BCDN"):
                meds, lo, hi, pos = [], [], [], []
                for i, wl in enumerate(closed):
                    rs = ratios(wl, m, col)
                    if not rs:
                        continue
                    md_ = statistics.median(rs)
                    meds.append(md_)
                    lo.append(md_ - min(rs))
                    hi.append(max(rs) - md_)
                    pos.append(i + (k - 1.5) * width)
                if meds:
                    ax.bar(pos, meds, width, yerr=[lo, hi], capsize=2, color=colors[m], label=MODE_NAMES[m])
            ax.axhline(1.0, color="black", linewidth=0.8)
            ax.set_yscale("log")  # outliers (a stalled mode) would flatten everything else
            ax.set_xticks(xs)
            ax.set_xticklabels(closed, rotation=25, ha="right", fontsize=8)
            ax.set_title(title + " — log scale; median, whiskers min..max over rounds")
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))
        ax = axes[4]
        if ol:
            for m, c in (("A", "black"), ("B", "tab:blue"), ("N", "tab:green")):
                pts = []
                for wl in ol:
                    pct = float(wl.split()[2].rstrip("%"))
                    v99 = med(values(wl, m, "p99_us"))
                    v999 = med(values(wl, m, "p999_us"))
                    if v99 is not None:
                        pts.append((pct, v99, v999))
                if pts:
                    pts.sort()
                    ax.plot([x[0] for x in pts], [x[1] for x in pts], "o-", color=c, label=f"{MODE_NAMES[m]} p99")
                    ax.plot([x[0] for x in pts], [x[2] for x in pts], "s--", color=c, label=f"{MODE_NAMES[m]} p99.9")
            ax.set_xlabel("offered load (% of closed-loop capacity)")
            ax.set_ylabel("latency (µs)")
            ax.set_yscale("log")
            ax.set_title("echo open loop: tail latency vs offered load (medians over rounds)")
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))
        else:
            ax.set_visible(False)
        fig.suptitle(f"ringshim paired A/B, {machine.get('date')}, {machine.get('kernel')}, {machine.get('mode')} mode")
        fig.tight_layout(rect=(0, 0, 1, 0.98))
        fig.savefig(a.png, dpi=80)
        return f"![results]({os.path.basename(a.png)})\n\n`{os.path.basename(a.png)}`: per-workload X/A ratios (median, whiskers min..max) of syscalls, CPU, throughput and p99 per request, and the open-loop tail latency."
    if a.plot == "gnuplot" and shutil.which("gnuplot"):
        d = tempfile.mkdtemp()
        dat = os.path.join(d, "r.dat")
        with open(dat, "w") as f:
            for i, wl in enumerate(closed):
                cells = []
                for col, _ in panels:
                    rs = ratios(wl, "B", col)
                    cells += [statistics.median(rs) if rs else "NaN", min(rs) if rs else "NaN", max(rs) if rs else "NaN"]
                f.write(f"{i} \"{wl}\" " + " ".join(str(c) for c in cells) + "\n")
        script = f"""set terminal png size 1200,1400
set output '{a.png}'
set multiplot layout 4,1 title 'ringshim B/A ratios (median, min..max)'
set style data yerrorbars
set xtics rotate by -25 font ',8'
set yrange [0:*]
"""
        for k, (_, title) in enumerate(panels):
            c = 3 + 3 * k
            script += f"set title '{title}'\nplot '{dat}' using 1:{c}:{c + 1}:{c + 2}:xtic(2) with yerrorbars title 'B/A', 1 notitle\n"
        script += "unset multiplot\n"
        subprocess.run(["gnuplot"], input=script.encode(), check=False)
        return f"![results]({os.path.basename(a.png)})\n\n(gnuplot: B/A ratios only.)"
    return "No plot: neither matplotlib nor gnuplot was available."


if __name__ == "__main__":
    main()
