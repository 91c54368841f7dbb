#!/usr/bin/env python3
"""Read a ringshim live-counter page (<RINGSHIM_STATS_DIR>/ringshim.<pid>) without the CLI.

The scripts prefer `ringshim stat PID`; this is the fallback while the CLI is being
written, and the reader behind `assert_counter`. The layout (header, slot size, counter
names) is taken from crates/common/src/stats.rs at run time, so it cannot drift from the
Rust definition silently: if the page's magic or version does not match, it says so.

Usage:
  statpage.py --pid PID [--dir DIR]                 human-readable summary
  statpage.py --pid PID [--dir DIR] --json          all counters as JSON
  statpage.py --pid PID [--dir DIR] --counter NAME  one counter (sum over thread slots)
  statpage.py --from-json NAME < stat.json          a counter out of `ringshim stat --json`
"""
import argparse
import json
import os
import re
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STATS_RS = os.path.join(ROOT, "crates", "common", "src", "stats.rs")

HEADER = struct.Struct("<QIIII16sI20x")  # 64 bytes, see `struct Header`
MAGIC = int.from_bytes(b"RSHMSTAT", "little")


def layout():
    src = open(STATS_RS, encoding="utf-8").read()

    def const(name):
        m = re.search(r"pub const %s: \w+ = (\d+);" % name, src)
        if not m:
            raise SystemExit("statpage.py: %s not found in %s" % (name, STATS_RS))
        return int(m.group(1))

    m = re.search(r"COUNTER_NAMES: &\[&str\] = &\[(.*?)\];", src, re.S)
    if not m:
        raise SystemExit("statpage.py: COUNTER_NAMES not found in %s" % STATS_RS)
    names = re.findall(r'"([a-z0-9_]+)"', m.group(1))
    return const("VERSION"), const("COUNTER_CAPACITY"), names


def read_page(pid, directory):
    version, capacity, names = layout()
    path = os.path.join(directory, "ringshim.%d" % pid)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise SystemExit("no stats page %s (process not shimmed, RINGSHIM_STATS=0, or the shim does not publish yet)" % path)
    if len(data) < HEADER.size:
        raise SystemExit("%s: %d bytes, shorter than the header" % (path, len(data)))
    magic, ver, hpid, slots, counters, backend, active = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise SystemExit("%s: bad magic %#x" % (path, magic))
    if ver != version:
        raise SystemExit("%s: page version %d, this reader knows %d" % (path, ver, version))
    slot = struct.Struct("<Ii%dQ" % capacity)
    totals = [0] * len(names)
    threads = 0
    rings = 0
    for i in range(slots):
        off = HEADER.size + i * slot.size
        if off + slot.size > len(data):
            break
        vals = slot.unpack_from(data, off)
        tid, ring_fd, cs = vals[0], vals[1], vals[2:]
        if tid:
            threads += 1
        if ring_fd >= 0 and tid:
            rings += 1
        for j in range(min(len(names), counters)):
            totals[j] += cs[j]
    return {
        "pid": hpid,
        "backend": backend.rstrip(b"\0").decode(errors="replace"),
        "backend_active": bool(active),
        "threads": threads,
        "rings": rings,
        "counters": dict(zip(names, totals)),
    }


def from_json(name):
    doc = json.load(sys.stdin)
    found = []

    def walk(o):
        if isinstance(o, dict):
            for k, v in o.items():
                if k == name and isinstance(v, int) and not isinstance(v, bool):
                    found.append(v)
                else:
                    walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    # Prefer the process totals ("totals" in `ringshim stat --json`) over per-thread
    # copies and rates.
    if isinstance(doc, dict):
        for key in ("totals", "counters"):
            if isinstance(doc.get(key), dict) and isinstance(doc[key].get(name), int):
                print(doc[key][name])
                return 0
    walk(doc)
    if not found:
        return 1
    print(found[0])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pid", type=int)
    ap.add_argument("--dir", default=os.environ.get("RINGSHIM_STATS_DIR") or "/dev/shm")
    ap.add_argument("--counter")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--from-json", metavar="NAME")
    a = ap.parse_args()
    if a.from_json:
        return from_json(a.from_json)
    if a.pid is None:
        ap.error("--pid is required")
    page = read_page(a.pid, a.dir)
    if a.counter:
        if a.counter not in page["counters"]:
            raise SystemExit("unknown counter %s (known: %s)" % (a.counter, ", ".join(page["counters"])))
        print(page["counters"][a.counter])
    elif a.json:
        print(json.dumps(page, indent=2))
    else:
        print("pid %d  backend %s (%s)  threads %d  rings %d" % (
            page["pid"], page["backend"], "active" if page["backend_active"] else "fallen back to kernel",
            page["threads"], page["rings"]))
        nonzero = [(k, v) for k, v in page["counters"].items() if v]
        if not nonzero:
            print("all counters are zero")
        for k, v in nonzero:
            print("%-24s %d" % (k, v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
