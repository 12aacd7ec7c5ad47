"""Analysis harness: ``swarm analyze`` on a million-agent feed run with over 10 M events.

What it measures
----------------
A feed run of ``--n`` (default 1,000,000) heuristic agents (Barabási–Albert
follow graph, m=5, 20% active per step) for ``--steps`` (default 10) steps is
made first (in a subprocess, on an embedded local Ray, 2 shards; reused when
``--run`` names an existing one). Then ``swarm analyze`` runs on it in a fresh
subprocess, so its peak memory is its own: the table gives each analysis's
wall time (the report's own timings) and the process's peak resident memory.
Baseline in the same run: reading the event columns the analyses use, alone
(the floor any analysis pays).

How to run
----------
From the repository root::

    .venv/bin/python -m benchmarks.bench_analysis          # or: make bench-analysis
    .venv/bin/python -m benchmarks.bench_analysis --n 200000 --steps 10

Target printed at the end: every analysis except betweenness under 2 minutes,
and the analyzing process under 4 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_scale import _render

COLUMNS = ["step", "agent", "event", "target", "item", "root", "parent", "value"]


def _log(msg: str) -> None:
    print(f"[bench_analysis {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


MAKE_RUN = """
import sys, swarm
n, steps, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
cfg = swarm.validate_config({
    "seed": 7, "steps": steps, "shards": 2, "partition": "hash",
    "graph": {"kind": "barabasi_albert", "n": n, "m": 5},
    "env": {"kind": "feed", "activity": 0.2},
    "log": {"flush_every": 5}, "checkpoint": {"every": 0}})
run = swarm.run(cfg, out, progress=False)
print(run.manifest["events"])
"""

ANALYZE = """
import json, resource, sys, time
COLUMNS = sys.argv[3].split(",")
t0 = time.perf_counter()
from swarm import open_run
run = open_run(sys.argv[1])
t = time.perf_counter()
events = run.events(columns=COLUMNS)
read = time.perf_counter() - t
del events
from swarm.analysis.report import analyze, write_report
result = analyze(run)
write_report(result, sys.argv[2])
print(json.dumps({"read_seconds": read, "seconds": result["seconds"],
                  "wall": time.perf_counter() - t0,
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--run", help="Analyze this existing run instead of making one.")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    tmp = Path(tempfile.mkdtemp(prefix="bench_analysis-"))
    run_dir = args.run or str(tmp / "feed")
    if not args.run:
        _log(f"making a feed run: n={args.n:,}, {args.steps} steps")
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", MAKE_RUN, str(args.n), str(args.steps),
                              run_dir], capture_output=True, text=True, env=env, check=True)
        _log(f"run made in {time.perf_counter() - t:.1f} s: {int(out.stdout.split()[-1]):,} "
             "events")
    _log("analyzing (fresh process)")
    out = subprocess.run([sys.executable, "-c", ANALYZE, run_dir, str(tmp / "analysis"),
                          ",".join(COLUMNS)],
                         capture_output=True, text=True, env=env, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    manifest = json.loads((Path(run_dir) / "manifest.json").read_text())
    rows = [["read event columns (floor)", f"{res['read_seconds']:.2f}"]]
    rows += [[name, f"{sec:.2f}"] for name, sec in res["seconds"].items() if name != "total"]
    rows += [["all analyses (report written)", f"{res['seconds']['total']:.2f}"]]
    print(f"run: {manifest['graph']['n']:,} agents, {manifest['steps_run']} steps, "
          f"{manifest['events']:,} events")
    print(_render(["analysis", "seconds"], rows, args.markdown))
    print(f"peak memory of the analyzing process: {res['peak_rss_gib']:.2f} GiB; "
          f"process wall time {res['wall']:.1f} s")
    slow = [k for k, v in res["seconds"].items() if k != "total" and v > 120]
    ok = not slow and res["peak_rss_gib"] < 4.0
    print(f"target every analysis < 2 min and < 4 GiB: {'met' if ok else 'MISSED'}"
          + (f" (over 2 min: {', '.join(slow)})" if slow else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
