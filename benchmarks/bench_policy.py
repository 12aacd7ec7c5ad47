"""Policy harness: LLM-style agents per agent, batched, and batched with deduplication.

What it measures
----------------
``--n`` (default 10,000) LLM-style agents for ``--steps`` (default 5) steps of the
cascade env's linear-threshold model (an Erdős–Rényi graph, mean degree 20, 10%
seeds; every exposed agent decides to share or ignore) with a tiny random-weight
causal LM (``swarm.policies.testing.make_tiny_model``) on the CPU, and a persona
table of ``--personas`` (default 100) rows. Three modes, one run each, same seed:

* ``per agent``: one model call per agent, the way an agent-by-agent simulator
  calls its model: the same backend, called once per deciding agent with that
  agent's prompt (its allowed actions scored in one forward pass);
* ``batched``: every deciding agent's prompt in batched forward passes
  (``dedup: false``, ``batch_size: --batch``);
* ``batched + dedup``: identical prompts inferred once (``dedup: true``), with the
  observation bucketed (``influence`` to 0.25) so that agents with the same persona
  and a similar situation share a prompt.

Columns: ``decisions`` (agent decisions made by the model, summed over steps),
``model calls`` (prompts the model ran on), ``decide s`` (time in the decide stage),
``run s`` (the step loop), ``decisions/s`` (decisions / decide s), ``decide share``
(decide s / run s: the rest is observe, apply, log and exchange). The per-agent
mode is slow, so by default it runs ``--per-agent-steps`` (2) steps; its rate is
per decision and compares directly. All modes must choose the same actions on the
steps they share (checked by a hash of the events); the harness fails otherwise.

How to run
----------
From the repository root::

    .venv/bin/python -m benchmarks.bench_policy              # or: make bench-policy
    .venv/bin/python -m benchmarks.bench_policy --dtype float32 --markdown
    .venv/bin/python -m benchmarks.bench_policy --device cuda --hidden 512 --layers 8

Targets printed at the end: batched >= 20x per-agent decisions/s; dedup cuts model
calls >= 10x on the 100-persona population.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_scale import _render

TEMPLATE = ("You are {persona}.\nAbout {influence:.2f} of the people you follow shared a post."
            "\nYour last action: {memory}.\nYou can {actions}.\nYou choose to")


def _log(msg: str) -> None:
    print(f"[bench_policy {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _personas(path: Path, count: int) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    moods = ["curious", "sceptical", "cheerful", "busy", "anxious", "loyal", "bored", "bold",
             "careful", "chatty"]
    jobs = ["teacher", "nurse", "student", "farmer", "engineer", "artist", "driver", "cook",
            "lawyer", "retiree"]
    desc = [f"a {moods[i % 10]} {jobs[(i // 10) % 10]} (persona {i})" for i in range(count)]
    pq.write_table(pa.table({"description": desc}), path)
    return str(path)


def _config(args, model_dir: str, personas: str, steps: int, **policy):
    from swarm import validate_config

    return validate_config({
        "seed": 7, "steps": steps, "shards": 1,
        "graph": {"kind": "erdos_renyi", "n": int(args.n), "mean_degree": 20},
        "env": {"kind": "cascade", "model": "linear_threshold", "seed_fraction": 0.1},
        "checkpoint": {"every": 0},
        "population": {"personas": personas, "groups": [{"fraction": 1.0, "policy": {
            "kind": "llm", "model": model_dir, "device": args.device, "dtype": args.dtype,
            "template": TEMPLATE, "memory": 1, "bucket": {"influence": 0.25}, **policy}}]},
    })


def _digest(run, steps: int) -> str:
    import pyarrow.compute as pc

    ev = run.events(columns=["step", "agent", "parent"])
    ev = ev.filter(pc.less(ev["step"], steps)).sort_by([("step", "ascending"),
                                                        ("agent", "ascending")])
    h = hashlib.sha1()
    for c in ev.columns:
        h.update(c.to_numpy(zero_copy_only=False).tobytes())
    return h.hexdigest()[:12]


class _PerAgent:
    """The baseline: the same backend, one call per agent (one prompt per call)."""

    def __init__(self, inner):
        self.inner = inner

    def score(self, prompts, continuations):
        import numpy as np

        return np.concatenate([self.inner.score([p], continuations) for p in prompts])

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _one(args, name: str, model_dir: str, personas: str, work: Path, steps: int,
         per_agent: bool = False, **policy) -> dict:
    import swarm
    import swarm.policies.llm as llm

    _log(f"{name}: {steps} steps ...")
    out = work / name.replace(" ", "-").replace("+", "and")
    make = llm.make_backend
    if per_agent:  # the runs are in-process (backend="local"), so this reaches the shard
        llm.make_backend = lambda cfg, **kw: _PerAgent(make(cfg, **kw))
    try:
        run = swarm.run(_config(args, model_dir, personas, steps, **policy), out,
                        backend="local", progress=False)
    finally:
        llm.make_backend = make
    # Counts from the metrics table, seconds from the timings table.
    m = {**run.metrics().to_pydict(), **run.timings().to_pydict()}
    decide, seconds = sum(m["decide_seconds"]), sum(m["seconds"])
    result = {
        "mode": name, "steps": len(m["step"]),
        "decisions": int(sum(m["policy_decisions"])), "calls": int(sum(m["policy_calls"])),
        "decide_seconds": decide, "run_seconds": seconds,
        "decisions_per_s": sum(m["policy_decisions"]) / max(decide, 1e-9),
        "decide_share": decide / max(seconds, 1e-9),
        "digest": _digest(run, args.per_agent_steps),
    }
    _log(f"{name}: {result['decisions']} decisions, {result['calls']} calls, "
         f"{result['decisions_per_s']:.0f} decisions/s")
    shutil.rmtree(out, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=float, default=10_000, help="agents (all LLM-style)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--per-agent-steps", type=int, default=2,
                    help="steps of the slow per-agent mode (its rate is per decision)")
    ap.add_argument("--personas", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64, help="batch_size of the batched modes")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--hidden", type=int, default=64, help="tiny model width")
    ap.add_argument("--layers", type=int, default=2, help="tiny model depth")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--out", default="benchmarks/results_policy.json")
    args = ap.parse_args(argv)
    from swarm.policies.testing import make_tiny_model

    work = Path(tempfile.mkdtemp(prefix="bench-policy-"))
    try:
        heads = max(1, args.hidden // 64) * 4 if args.hidden % 64 == 0 else 1
        model_dir = make_tiny_model(str(work / "model"), n_layer=args.layers,
                                    hidden=args.hidden, n_head=heads)
        personas = _personas(work / "personas.parquet", args.personas)
        rows = [
            _one(args, "per agent", model_dir, personas, work, args.per_agent_steps,
                 per_agent=True, dedup=False),
            _one(args, "batched", model_dir, personas, work, args.steps, dedup=False,
                 batch_size=args.batch),
            _one(args, "batched + dedup", model_dir, personas, work, args.steps, dedup=True,
                 batch_size=args.batch),
        ]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    digests = {r["digest"] for r in rows}
    print(_table(rows, args.markdown))
    print()
    print(_targets(rows, args.markdown))
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    if len(digests) != 1:
        print(f"MODES DISAGREE on the first {args.per_agent_steps} steps: {digests}",
              file=sys.stderr)
        return 1
    return 0


def _table(rows: list[dict], markdown: bool) -> str:
    base = rows[0]["decisions_per_s"]
    header = ["mode", "steps", "decisions", "model calls", "decide s", "run s", "decisions/s",
              "x per agent", "decide share"]
    body = [[r["mode"], str(r["steps"]), f"{r['decisions']:,}", f"{r['calls']:,}",
             f"{r['decide_seconds']:.2f}", f"{r['run_seconds']:.2f}",
             f"{r['decisions_per_s']:,.0f}", f"{r['decisions_per_s'] / base:.1f}x",
             f"{r['decide_share']:.1%}"] for r in rows]
    return _render(header, body, markdown)


def _targets(rows: list[dict], markdown: bool) -> str:
    per_agent, batched, dedup = rows
    speed = batched["decisions_per_s"] / per_agent["decisions_per_s"]
    cut = (dedup["decisions"] / max(dedup["calls"], 1))
    lines = [["batched >= 20x per-agent decisions/s", f"{speed:.1f}x",
              "met" if speed >= 20 else "missed"],
             ["dedup cuts model calls >= 10x (decisions / calls)", f"{cut:.1f}x",
              "met" if cut >= 10 else "missed"]]
    return _render(["target", "measured", "status"], lines, markdown)


if __name__ == "__main__":
    sys.exit(main())
