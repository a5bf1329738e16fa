"""Run the long fuzz profile in chunks that fit a session, and keep the running totals.

A chunk is numbered; chunk ``n`` runs every long fuzz test with ``--hypothesis-seed=SEED0+n``
(a fixed seed schedule: a chunk replays exactly, on the same code, from its number), and
appends one JSON line per test to ``docs/fuzz_chunks.jsonl``: examples passed / failed
(hypothesis's own statistics), wall and CPU time, commit, CPU model, date.  A failing chunk
is recorded as failed with the tail of its output; rerun it with the same number to replay.

    python tools/fuzz_chunk.py next                   # the first chunk number not yet recorded
    python tools/fuzz_chunk.py run 3                  # run chunk 3 with the default sizes
    python tools/fuzz_chunk.py run 3 --only test_fuzz_long=50 --nice 10
    python tools/fuzz_chunk.py table                  # running totals (markdown), for docs/reliability.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOG = ROOT / "docs" / "fuzz_chunks.jsonl"
SEED0 = 10_000

# test id -> examples per chunk (about 45 min of one idle core in all, on the 2-core EPYC)
TESTS = {
    "tests/test_fuzz.py::test_fuzz_long": 150,
    "tests/test_fuzz_arrays.py::test_fuzz_arrays_long": 60,
    "tests/test_fuzz.py::test_fuzz_zoo": 40,
    "tests/test_compose_fuzz.py::test_fuzz_compositions_long": 40,
    "tests/test_fuzz.py::test_fuzz_ptx_host_long": 30,
    "tests/test_kinks.py::test_fuzz_at_kinks_long": 100,
}
# hypothesis's statistics line: "150 passing examples, 0 failing examples, 12 invalid examples"
# (the version that ran chunks 0-4), "150 passing, 0 failing, and 12 invalid test cases" (6.170)
STATS = re.compile(r"(\d+) passing(?: examples?)?, (\d+) failing(?: examples?)?, (?:and )?(\d+) invalid")


def short(test: str) -> str:
    return test.split("::")[-1]


def records() -> list[dict]:
    if not LOG.exists():
        return []
    return [json.loads(line) for line in LOG.read_text().splitlines() if line.strip()]


def use_log(path: str | None) -> None:
    global LOG
    if path:
        LOG = Path(path).resolve()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    # changes other than the record file itself (which every chunk before this one appended to)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                            ":(exclude)docs/fuzz_chunks.jsonl"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + ("+dirty" if dirty else "")


def run_test(test: str, examples: int, seed: int, niceness: int) -> dict:
    env = dict(os.environ, HYPOTHESIS_PROFILE="long", RNNCOMP_FUZZ_EXAMPLES=str(examples))
    cmd = ["nice", "-n", str(niceness), sys.executable, "-m", "pytest", "-m", "fuzz", test,
           f"--hypothesis-seed={seed}", "--hypothesis-show-statistics", "-q", "-p", "no:cacheprovider"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.time() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = proc.stdout + proc.stderr
    passed = failed = invalid = 0
    for m in STATS.finditer(out):  # one line per phase (reuse, generate, shrink)
        passed += int(m[1])
        failed += int(m[2])
        invalid += int(m[3])
    skipped = " skipped" in out.splitlines()[-1] if out.strip() else False
    result = "pass" if proc.returncode == 0 and not skipped else "skipped" if skipped else "fail"
    rec = {"test": short(test), "seed": seed, "asked": examples, "passed": passed, "failed": failed,
           "invalid": invalid, "result": result, "wall_s": round(wall, 1),
           "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1)}
    if result != "pass":
        rec["tail"] = out[-3000:]
    return rec


def cmd_run(args) -> int:
    chunk = args.chunk
    if any(r["chunk"] == chunk for r in records()) and not args.again:
        sys.exit(f"chunk {chunk} is already recorded in {LOG}; "
                 f"`next` gives a new number, --again replays it")
    sizes = dict(TESTS)
    if args.only:
        sizes = {}
        for item in args.only:
            name, _, n = item.partition("=")
            full = [t for t in TESTS if short(t) == name]
            if not full or not n.isdigit():
                sys.exit(f"--only {item!r}: expected TEST=N with TEST one of {sorted(map(short, TESTS))}")
            sizes[full[0]] = int(n)
    status = 0
    for test, n in sizes.items():
        rec = run_test(test, n, SEED0 + chunk, args.nice)
        rec = {"chunk": chunk, **rec, "commit": commit(), "cpu": cpu_model(),
               "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
        with LOG.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")
        print(f"chunk {chunk} {rec['test']}: {rec['result']}, {rec['passed']} passing, "
              f"{rec['failed']} failing, {rec['wall_s']} s wall, {rec['cpu_s']} s CPU", flush=True)
        status |= rec["result"] == "fail"
    return status


def cmd_table(_args) -> int:
    recs = records()
    tests = sorted({r["test"] for r in recs})
    print("| chunk | seed | date | commit | " + " | ".join(f"`{t}`" for t in tests) + " | result |")
    print("|---|---|---|---|" + "---|" * len(tests) + "---|")
    for chunk in sorted({r["chunk"] for r in recs}):
        rs = [r for r in recs if r["chunk"] == chunk]
        cells = []
        for t in tests:
            got = [r for r in rs if r["test"] == t]
            cells.append(" + ".join(str(r["passed"]) for r in got) if got else "")
        bad = [r["test"] for r in rs if r["result"] == "fail"]
        print(f"| {chunk} | {rs[0]['seed']} | {rs[0]['date'][:10]} | {rs[0]['commit']} | "
              + " | ".join(cells) + f" | {'FAIL: ' + ', '.join(bad) if bad else 'all pass'} |")
    total = sum(r["passed"] for r in recs)
    failing = sum(r["failed"] for r in recs)
    cpu = sum(r["cpu_s"] for r in recs) / 3600
    print(f"\nIn all: {total} passing examples over {len({r['chunk'] for r in recs})} chunks, "
          f"{failing} failing, {cpu:.1f} CPU hours.")
    return 0


def cmd_next(_args) -> int:
    print(max((r["chunk"] for r in records()), default=-1) + 1)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run one chunk and record it")
    run.add_argument("chunk", type=int)
    run.add_argument("--only", nargs="+", metavar="TEST=N", help="run only these tests, N examples each")
    run.add_argument("--nice", type=int, default=10, help="niceness of the pytest processes (default 10)")
    run.add_argument("--again", action="store_true", help="replay a chunk that is already recorded")
    sub.add_parser("table", help="print the running totals as a markdown table")
    sub.add_parser("next", help="print the first unrecorded chunk number")
    ap.add_argument("--log", help=f"the record file (default {LOG.relative_to(ROOT)})")
    args = ap.parse_args(argv)
    use_log(args.log)
    return {"run": cmd_run, "table": cmd_table, "next": cmd_next}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
