"""Scale-out harness: shards, partitions, cross-shard traffic and checkpoint cost.

What it measures
----------------
Independent cascade (``p``, default 0.05, and 1% seeds; or ``--model linear_threshold``,
whose agents broadcast to every out-neighbour) on one Barabási–Albert graph
(``m = 5``, default ``n = 1e6``) built once, on an embedded local Ray, for every
combination of shard count (default 1, 2, 4) and partition (contiguous, hash, metis):

* ``run s``: the manifest's ``run_seconds`` (the step loop with the Arrow event log),
  median over ``--repeats``; ``x 1 shard`` = 1-shard run time / this run time
  (throughput relative to one shard, same partition-independent workload).
* ``barrier ms/step``: mean over steps of (driver's step time - slowest shard's own
  work): what the exchange and the barrier cost per step.
* ``edge cut``: fraction of directed edges whose ends sit on different shards.
* ``cross KB/step``: mean bytes of messages shipped between shards per step
  (broadcasts cross once per destination shard and fan out at the receiver).
* ``partition s``: time to compute the partition (METIS through pymetis).
* ``ckpt``: the same run with ``checkpoint.every = 10``. ``ckpt share`` is the
  checkpoint time measured where it is spent (the slowest shard's state writes
  per checkpoint plus the driver's bookkeeping) over the run time: the
  checkpoint cost. ``run-time diff`` compares the medians of the runs with and
  without checkpoints; it includes the same cost but also run-to-run noise
  (+-15% here), so it is shown, not judged.

Every run must produce the same events (checked by count and a hash of the sorted
``(step, agent, parent)`` columns): partitions never change results.

How to run
----------
From the repository root::

    .venv/bin/python -m benchmarks.bench_scale                 # n=1e6, shards 1,2,4
    .venv/bin/python -m benchmarks.bench_scale --n 100000 --repeats 3 --markdown
    .venv/bin/python -m benchmarks.bench_scale --p 0.2         # heavier: most agents activate
    .venv/bin/python -m benchmarks.bench_scale --model linear_threshold   # broadcasts, fan-out

Targets printed at the end: 2 shards >= 1.6x the 1-shard throughput (best partition);
METIS edge cut <= half of hash's; checkpoint cost (``ckpt share``) < 10% of run time at
every = 10.
Run it on an otherwise idle machine: it measures wall-clock time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _log(msg: str) -> None:
    print(f"[bench_scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


MODEL = "independent_cascade"


def _config(n: int, p: float, shards: int, every: int):
    from swarm import validate_config

    env = {"kind": "cascade", "model": MODEL, "seed_fraction": 0.01}
    if MODEL == "independent_cascade":
        env["p"] = p
    return validate_config({
        "seed": 1, "steps": 1000, "shards": shards,
        "graph": {"kind": "barabasi_albert", "n": n, "m": 5},
        "env": env,
        "checkpoint": {"every": every},
        "log": {"flush_every": 10},
    })


def _digest(run) -> tuple[int, str]:
    ev = run.events(columns=["step", "agent", "parent"]).sort_by(
        [("step", "ascending"), ("agent", "ascending")])
    h = hashlib.sha1()
    for c in ev.columns:
        h.update(c.to_numpy(zero_copy_only=False).tobytes())
    return ev.num_rows, h.hexdigest()[:12]


def _one(graph, part_array, n, p, shards, every, work: Path, kind="contiguous") -> dict:
    import swarm

    out = work / f"run-{time.monotonic_ns()}"
    cfg = _config(n, p, shards, every).model_copy(update={"partition": kind})
    run = swarm.run(cfg, out, graph=graph, partition=part_array, progress=False)
    m = run.manifest
    metrics = run.metrics().to_pydict()
    seconds = np.array(metrics["seconds"])
    shard_s = np.array(metrics["shard_seconds_max"])
    rows, digest = _digest(run)
    result = {
        "run_seconds": m["timings"]["run_seconds"],
        "steps": m["steps_run"],
        "barrier_ms_per_step": float(np.mean(np.maximum(seconds - shard_s, 0)) * 1e3),
        "cross_kb_per_step": float(np.mean(metrics["cross_shard_bytes"]) / 1024),
        "checkpoint_seconds": m["timings"].get("checkpoint_seconds", 0.0),
        "edge_cut_fraction": m["partition"]["edge_cut_fraction"],
        "events": rows,
        "digest": digest,
    }
    shutil.rmtree(out, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=float, default=1e6)
    ap.add_argument("--p", type=float, default=0.05)
    ap.add_argument("--model", default="independent_cascade",
                    choices=["independent_cascade", "linear_threshold"],
                    help="linear_threshold broadcasts to every out-neighbour (fan-out)")
    ap.add_argument("--shards", default="1,2,4")
    ap.add_argument("--partitions", default="contiguous,hash,metis")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--out", default="benchmarks/results_scale.json")
    args = ap.parse_args(argv)
    global MODEL
    MODEL = args.model
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    from swarm.cluster.connect import ensure_ray
    from swarm.graph import barabasi_albert
    from swarm.partition import Partition

    n = int(args.n)
    t0 = time.perf_counter()
    graph = barabasi_albert(n, 5, seed=1)
    _log(f"BA n={n:,} m=5: {graph.num_edges:,} directed edges in "
         f"{time.perf_counter() - t0:.1f} s")
    ensure_ray()
    work = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    shard_counts = [int(s) for s in args.shards.split(",")]
    kinds = args.partitions.split(",")
    results = []
    try:
        # One discarded run first: the first actors of a fresh Ray pay for worker
        # start-up and imports that no later run pays.
        _one(graph, None, n, args.p, 2, 0, work)
        for k in shard_counts:
            for kind in (kinds if k > 1 else ["contiguous"]):
                t = time.perf_counter()
                part = Partition(kind, n, k, graph=graph, seed=1)
                part_seconds = time.perf_counter() - t
                # Contiguous and hash come from the config (their fast paths);
                # a graph-aware assignment is computed once and passed in.
                assignment = (part.shard_of(np.arange(n, dtype=np.int64))
                              if kind not in ("contiguous", "hash") else None)
                row = {"shards": k, "partition": kind if k > 1 else "-",
                       "partition_seconds": part_seconds}
                for every in (0, 10):
                    runs = []
                    for r in range(args.repeats):
                        runs.append(_one(graph, assignment, n, args.p, k, every, work,
                                         kind if assignment is None else "contiguous"))
                        _log(f"shards={k} {kind} every={every} #{r}: "
                             f"{runs[-1]['run_seconds']:.3f} s, {runs[-1]['steps']} steps")
                    med = {key: statistics.median(x[key] for x in runs)
                           for key in ("run_seconds", "barrier_ms_per_step",
                                       "cross_kb_per_step", "checkpoint_seconds")}
                    tag = "" if every == 0 else "_ckpt"
                    for key, v in med.items():
                        row[key + tag] = v
                    row["edge_cut_fraction"] = runs[0]["edge_cut_fraction"]
                    row["steps"] = runs[0]["steps"]
                    row.setdefault("digests", set()).update(x["digest"] for x in runs)
                    row["events"] = runs[0]["events"]
                results.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    base = next(r["run_seconds"] for r in results if r["shards"] == 1)
    digests = set().union(*(r.pop("digests") for r in results))
    for r in results:
        r["speedup_vs_1_shard"] = base / r["run_seconds"]
        r["checkpoint_overhead"] = r["run_seconds_ckpt"] / r["run_seconds"] - 1
        r["checkpoint_share"] = r["checkpoint_seconds_ckpt"] / r["run_seconds_ckpt"]
    print(_table(results, args.markdown))
    print()
    print(_targets(results, markdown=args.markdown))
    same = len(digests) == 1
    print(f"\nidentical events in every run: {'yes' if same else 'NO'} "
          f"({results[0]['events']:,} events, {results[0]['steps']} steps, n={n:,}, {args.model}"
          + (f", p={args.p})" if args.model == "independent_cascade" else ")"))
    Path(args.out).write_text(json.dumps({"n": n, "p": args.p, "rows": results}, indent=2))
    return 0 if same else 1


def _table(rows: list[dict], markdown: bool) -> str:
    header = ["shards", "partition", "edge cut", "partition s", "run s", "x 1 shard",
              "barrier ms/step", "cross KB/step", "run s (ckpt/10)", "run-time diff",
              "ckpt share"]
    body = [[str(r["shards"]), r["partition"], f"{r['edge_cut_fraction']:.1%}",
             f"{r['partition_seconds']:.2f}", f"{r['run_seconds']:.3f}",
             f"{r['speedup_vs_1_shard']:.2f}x", f"{r['barrier_ms_per_step']:.2f}",
             f"{r['cross_kb_per_step']:.0f}", f"{r['run_seconds_ckpt']:.3f}",
             f"{r['checkpoint_overhead']:+.0%}", f"{r['checkpoint_share']:.1%}"]
            for r in rows]
    return _render(header, body, markdown)


def _targets(rows: list[dict], markdown: bool) -> str:
    two = [r for r in rows if r["shards"] == 2]
    best2 = max((r["speedup_vs_1_shard"] for r in two), default=float("nan"))
    lines = [["2 shards >= 1.6x one shard (best partition)", f"{best2:.2f}x",
              "met" if best2 >= 1.6 else "missed"]]
    for k in sorted({r["shards"] for r in rows if r["shards"] > 1}):
        cut = {r["partition"]: r["edge_cut_fraction"] for r in rows if r["shards"] == k}
        if "metis" in cut and "hash" in cut:
            ratio = cut["metis"] / cut["hash"]
            lines.append([f"METIS cut <= 1/2 hash cut ({k} shards)", f"{ratio:.2f} of hash",
                          "met" if ratio <= 0.5 else "missed"])
    worst = max(r["checkpoint_share"] for r in rows)
    lines.append(["checkpoint cost < 10% of run time at every=10 (worst row)", f"{worst:.1%}",
                  "met" if worst < 0.10 else "missed"])
    return _render(["target", "measured", "status"], lines, markdown)


def _render(header: list[str], body: list[list[str]], markdown: bool) -> str:
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        out += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(out)
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*header)] + [fmt.format(*row) for row in body])


if __name__ == "__main__":
    sys.exit(main())
