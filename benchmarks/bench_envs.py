"""Env harness: the feed at n=1e5 with the recommender on, and consensus gossip at n=1e6.

What it measures
----------------
* ``feed``: ``--feed-n`` (default 100,000) heuristic agents on a Barabási–Albert
  follow graph (m=5) for ``--feed-steps`` (50) steps, 20% of agents active per
  step, feeds of 5 items from the timeline and a 32-item trending pool. Runs on
  ``--shards`` (2) shards of an embedded local Ray, the way ``swarm run`` does.
  Baselines in the same run: the same feed with the recommender off (timeline
  only, no trending pool), and the same feed on one in-process shard.
* ``gossip``: consensus gossip averaging at ``--gossip-n`` (1,000,000) agents on
  a Barabási–Albert graph (m=3) for ``--gossip-steps`` (20) steps. Baseline: the
  same averaging as bare numpy (one gather and one ``bincount`` per step over
  the same CSR graph): the floor of what any engine can do per step here.

Columns: ``agent-steps/s`` (n * steps / the step loop's seconds), ``x floor`` or
``x base`` (ratio to the baseline run measured here), and each stage's share of
the step loop's wall time, from the per-step metrics: ``deliver`` (inbox,
fan-out, faults), ``recommend`` (the feed's ranking, part of observe), ``observe``
(the rest of it: timelines, the trending pool), ``decide``, ``apply``, ``log``,
``route`` (grouping outgoing messages), and ``exchange`` (the rest of the wall
time: object store transfers and the driver's barrier). Stages are the slowest
shard's per step, so shares of a multi-shard run add up to a little over 100%
when shards are uneven.

How to run
----------
From the repository root::

    .venv/bin/python -m benchmarks.bench_envs            # or: make bench-envs
    .venv/bin/python -m benchmarks.bench_envs --markdown --feed-n 20000 --gossip-n 100000

Targets printed at the end: feed >= 200,000 agent-steps/s on this 2-core machine;
no stage above 50% of step time (a stage above it is named, with the reason in
README.md's figures).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_scale import _render

STAGES = ("deliver", "recommend", "observe", "decide", "apply", "log", "route", "exchange")


def _log(msg: str) -> None:
    print(f"[bench_envs {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def feed_config(n: int, steps: int, shards: int, recommender: bool = True):
    import swarm

    return swarm.validate_config({
        "seed": 7, "steps": steps, "shards": shards, "partition": "hash",
        "graph": {"kind": "barabasi_albert", "n": n, "m": 5},
        "env": {"kind": "feed", "activity": 0.2, "feed_size": 5, "pool": 32,
                "recommender": {"enabled": recommender}},
        "log": {"flush_every": 10}, "checkpoint": {"every": 0},
    })


def gossip_config(n: int, steps: int, shards: int):
    import swarm

    return swarm.validate_config({
        "seed": 7, "steps": steps, "shards": shards, "partition": "contiguous",
        "graph": {"kind": "barabasi_albert", "n": n, "m": 3},
        "env": {"kind": "consensus", "protocol": "gossip", "tolerance": 1e-9},
        "log": {"flush_every": 10}, "checkpoint": {"every": 0},
    })


def _measure(label: str, cfg, out: Path, backend: str) -> dict:
    import swarm

    _log(f"{label}: n={cfg.graph.n:,}, {cfg.steps} steps, {cfg.shards} shard(s), {backend}")
    run = swarm.run(cfg, out, backend=backend, progress=False)
    m = run.timings()
    loop = run.manifest["timings"]["run_seconds"]
    steps = m.num_rows
    total = {c: float(np.sum(m[c])) for c in m.column_names if "seconds" in c}
    shares = {
        "deliver": total["deliver_seconds"],
        "observe": total["observe_seconds"],
        "decide": total["decide_seconds"],
        "apply": total["apply_seconds"],
        "log": total["log_seconds"],
        "route": total["route_seconds"],
        "exchange": max(total["seconds"] - total["shard_seconds_max"], 0.0),
    }
    if "recommend_seconds" in total:  # summed over shards: the mean shard's share
        shares["recommend"] = total["recommend_seconds"] / cfg.shards
        shares["observe"] = max(shares["observe"] - shares["recommend"], 0.0)
    row = {"label": label, "n": cfg.graph.n, "steps": steps, "shards": cfg.shards,
           "loop_s": loop, "rate": cfg.graph.n * steps / loop, "events": run.manifest["events"],
           "share": {k: v / total["seconds"] for k, v in shares.items()}}
    _log(f"{label}: {row['rate']:,.0f} agent-steps/s, {loop:.2f} s loop")
    shutil.rmtree(out, ignore_errors=True)
    return row


def gossip_floor(n: int, steps: int) -> float:
    """Seconds for ``steps`` steps of gossip averaging as bare numpy on the same graph."""
    from swarm.runner import build_graph

    graph = build_graph(gossip_config(n, steps, 1))
    rows = np.repeat(np.arange(graph.n), np.diff(graph.indptr))
    deg = np.maximum(np.bincount(graph.indices, minlength=graph.n), 1)
    x = np.random.default_rng(0).uniform(size=graph.n)
    t0 = time.perf_counter()
    for _ in range(steps):
        # Each agent: the mean of its own value and its in-neighbours' mean.
        x = 0.5 * (x + np.bincount(graph.indices, weights=x[rows], minlength=graph.n) / deg)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--feed-n", type=int, default=100_000)
    p.add_argument("--feed-steps", type=int, default=50)
    p.add_argument("--gossip-n", type=int, default=1_000_000)
    p.add_argument("--gossip-steps", type=int, default=20)
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    tmp = Path(tempfile.mkdtemp(prefix="bench_envs-"))
    rows = []
    try:
        fn, fs = args.feed_n, args.feed_steps
        feed = _measure("feed", feed_config(fn, fs, args.shards), tmp / "feed", "ray")
        off = _measure("feed, recommender off", feed_config(fn, fs, args.shards, False),
                       tmp / "off", "ray")
        one = _measure("feed, 1 shard in-process", feed_config(fn, fs, 1), tmp / "one", "local")
        gossip = _measure("gossip", gossip_config(args.gossip_n, args.gossip_steps, args.shards),
                          tmp / "gossip", "ray")
        floor = gossip_floor(args.gossip_n, args.gossip_steps)
        _log(f"gossip floor (bare numpy): {floor:.2f} s")
        feed["vs"] = f"{feed['rate'] / off['rate']:.2f}x off"
        off["vs"] = "base"
        one["vs"] = f"{feed['rate'] / one['rate']:.2f}x (2 vs 1)"
        gossip["vs"] = f"{gossip['loop_s'] / floor:.1f}x floor"
        rows = [feed, off, one, gossip]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    header = ["run", "n", "steps", "shards", "loop s", "agent-steps/s", "ratio",
              *[f"{s} %" for s in STAGES]]
    body = [[r["label"], f"{r['n']:,}", str(r["steps"]), str(r["shards"]), f"{r['loop_s']:.2f}",
             f"{r['rate']:,.0f}", r["vs"],
             *[(f"{100 * r['share'][s]:.0f}" if s in r["share"] else "-") for s in STAGES]]
            for r in rows]
    print(_render(header, body, args.markdown))
    print(f"gossip floor (bare numpy, same graph): {floor:.2f} s for {args.gossip_steps} steps "
          f"({args.gossip_n * args.gossip_steps / floor:,.0f} agent-steps/s)")
    ok = feed["rate"] >= 200_000
    print(f"target feed >= 200,000 agent-steps/s: {'met' if ok else 'MISSED'} "
          f"({feed['rate']:,.0f})")
    for r in rows:
        top = max(r["share"], key=r["share"].get)
        if r["share"][top] > 0.5:
            print(f"note: {r['label']}: {top} takes {100 * r['share'][top]:.0f}% of step time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
