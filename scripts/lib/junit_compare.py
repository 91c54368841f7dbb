#!/usr/bin/env python3
"""Compare CPython regrtest results (--junit-xml) without and with the shim.

  junit_compare.py --base B.xml... --shim S.xml... [--rerun R.xml...] [--failing-out FILE]
                   [--strict] [--no-report]

A test "regresses" when it passed without the shim and, with the shim, failed, errored,
or did not report at all (its worker crashed or timed out). With --rerun (the regressed
tests run again with the shim), a regression that passes on the rerun is reported as
FLAKY and one that fails again as FAILED. Exit status 1 when a test FAILED (or, without
--rerun, regressed); --strict makes FLAKY count too.

Tests that passed without the shim and were skipped with it are listed as a warning: the
shim changed something a skip condition looks at.
"""
import argparse
import os
import re
import sys
import xml.etree.ElementTree as ET

RANK = {"skip": 0, "pass": 1, "fail": 2, "error": 3}


def outcomes(paths):
    res = {}
    for p in paths:
        if not os.path.exists(p) or os.path.getsize(p) == 0:
            print("note: %s missing (the run crashed or timed out before writing it)" % p)
            continue
        try:
            root = ET.parse(p).getroot()
        except ET.ParseError as e:
            print("note: %s unreadable: %s" % (p, e))
            continue
        for tc in root.iter("testcase"):
            name = tc.get("name")
            tags = {child.tag for child in tc}
            if "error" in tags:
                o = "error"
            elif "failure" in tags:
                o = "fail"
            elif "skipped" in tags:
                o = "skip"
            else:
                o = "pass"
            # A name can appear more than once (sub-tests): keep the worst.
            if name not in res or RANK[o] > RANK[res[name]]:
                res[name] = o
    return res


def module_of(test_id):
    """test.test_asyncio.test_events.EPollEventLoopTests.test_x -> test_asyncio.test_events"""
    parts = test_id.split(".")[1:]
    mod = []
    for p in parts:
        if p[:1].isupper():
            break
        mod.append(p)
    return ".".join(mod) or test_id


def log_report(paths):
    """regrtest's per-module verdicts other than "passed", and where a timed-out module hung
    (the first test_* frame of faulthandler's dump)."""
    verdict = re.compile(r"\[\s*\d+/\d+(?:/\d+)?\] (\S+) (?!passed)(.*?)(?: -- running.*)?$")
    frame = re.compile(r'File ".*/test/([\w/]+)\.py", line (\d+) in (test\w*)')
    lines = []
    for p in paths:
        if not os.path.exists(p):
            continue
        text = open(p, encoding="utf-8", errors="replace").read().splitlines()
        for i, line in enumerate(text):
            m = verdict.search(line)
            if m and not m.group(2).startswith("skipped"):
                lines.append("%s: %s" % (m.group(1), m.group(2)))
            if line.startswith("Timeout ("):
                for nxt in text[i + 1:i + 200]:
                    f = frame.search(nxt)
                    if f:
                        lines.append("timed out in %s (%s.py line %s)" % (f.group(3), f.group(1), f.group(2)))
                        break
    return lines


def show(title, ids, limit=200, count=True):
    if not ids:
        return
    print("%s (%d):" % (title, len(ids)) if count else title + ":")
    for i in ids[:limit]:
        print("    " + i)
    if len(ids) > limit:
        print("    ... and %d more" % (len(ids) - limit))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", nargs="+", required=True)
    ap.add_argument("--shim", nargs="+", required=True)
    ap.add_argument("--rerun", nargs="*", default=None)
    ap.add_argument("--failing-out")
    ap.add_argument("--strict", action="store_true")
    ap.add_argument("--no-report", action="store_true", help="only write --failing-out")
    ap.add_argument("--logs", nargs="*", default=[], help="regrtest logs of the shim runs")
    a = ap.parse_args()

    base = outcomes(a.base)
    shim = outcomes(a.shim)
    base_pass = sorted(t for t, o in base.items() if o == "pass")
    if not base_pass:
        print("no test passed without the shim: nothing to compare (is the test package installed?)")
        return 1
    regressed = [t for t in base_pass if shim.get(t, "missing") in ("fail", "error", "missing")]
    newly_skipped = [t for t in base_pass if shim.get(t) == "skip"]
    both_pass = [t for t in base_pass if shim.get(t) == "pass"]
    base_bad = sorted(t for t, o in base.items() if o in ("fail", "error"))
    reported = [t for t in regressed if t in shim]
    missing = [t for t in regressed if t not in shim]
    if a.no_report:
        # Only tests that reported a failure are worth a rerun: a module that hung or
        # crashed would most likely do it again, at the cost of another timeout.
        with open(a.failing_out, "w") as f:
            f.write("".join(t + "\n" for t in reported))
        return 0

    print("without the shim: %d passed, %d skipped, %d failed/errored" % (
        len(base_pass), sum(1 for o in base.values() if o == "skip"), len(base_bad)))
    print("with the shim:    %d passed, %d skipped, %d failed/errored, %d not reported" % (
        sum(1 for o in shim.values() if o == "pass"), sum(1 for o in shim.values() if o == "skip"),
        sum(1 for o in shim.values() if o in ("fail", "error")),
        sum(1 for t in base if t not in shim)))
    show("failed WITHOUT the shim too (not counted)", base_bad, 50)
    show("WARNING: passed without the shim, SKIPPED with it", newly_skipped)

    if a.failing_out:
        with open(a.failing_out, "w") as f:
            f.write("".join(t + "\n" for t in regressed))

    verdicts = log_report(a.logs)
    show("regrtest verdicts with the shim (other than passed)", verdicts)

    failed = reported
    flaky = []
    if a.rerun is not None and reported:
        rerun = outcomes(a.rerun)
        failed = [t for t in reported if rerun.get(t) != "pass"]
        flaky = [t for t in reported if rerun.get(t) == "pass"]
        show("FLAKY with the shim: failed, then passed when run again with the shim", flaky)
    show("FAILED with the shim (passed without it)", ["%s  [%s]" % (t, shim[t]) for t in failed])
    if missing:
        per_mod = {}
        for t in missing:
            per_mod.setdefault(module_of(t), []).append(t)
        rows = []
        for mod, ids in sorted(per_mod.items()):
            rows.append("%s: %d test(s) that pass without the shim not reported" % (mod, len(ids)))
            rows.extend("    " + t for t in ids[:5])
            if len(ids) > 5:
                rows.append("    ...")
        show("NOT REPORTED with the shim: %d test(s) (the module hung past --timeout or its worker crashed)"
             % len(missing), rows, 10_000, count=False)

    bad = len(failed) + len(missing) + (len(flaky) if a.strict else 0)
    print("cpython: %d passed, %d failed" % (len(both_pass) + (len(flaky) if not a.strict else 0), bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
