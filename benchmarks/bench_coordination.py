"""Coordination harness: AgentsNet's five tasks by classical baselines, 1e2 to 1e6 agents.

What it measures
----------------
The ``coordination`` env (``swarm.envs.coordination``) runs each of AgentsNet's
tasks (colouring, vertex_cover, matching, leader_election, consensus) with its
classical rule (randomized Δ+1 colouring, Israeli–Itai matching and the cover
pruned from it, min-id flooding, min-value flooding) within AgentsNet's round
budget ``R = 2 D + 1`` (``rounds: agentsnet``, the env's default). Each run is
judged by ``swarm.analysis.agentsnet.validate``, which reads only the event log
and the graph. The grid: task × graph family (AgentsNet's: Watts–Strogatz k=4
p=0.4, Barabási–Albert m=2, Delaunay) × n ∈ {1e2, 1e4, 1e6} × fault ∈ {none,
drop f, crash f, byzantine f}, f ∈ {0.1, 0.33}. ``drop``: each message copy is
lost with probability f; ``crash``: a keyed share f of the agents crash-stops at
step 0 (left out of validation, as the env leaves them out of ``working``);
``byzantine``: a keyed share f lies (the env's adversaries, left out of
validation by the validator itself). At n=1e6 only ``none`` and ``drop:0.1``
run (``--large-faults``). Seeds 1..S: ``--seeds-small`` (5) at n <= 1e2,
``--seeds-medium`` (3) below 1e6, ``--seeds-large`` (1) from 1e6.

Runs with n below ``--process-n`` (1e6) are in-process
(``swarm.run(backend="local")``, one shard, no Ray), after an untimed warm-up;
from it, every run is a fresh child process, ``swarm run CONFIG --out DIR``, as
a user types it (Python and Ray start, graph build and diameter bound, the
steps, the event log), timed whole. Validation (and the bench's own build of
the graph for it) is never timed.

Columns: ``success`` (seeds whose every included agent satisfies the task),
``score`` (AgentsNet's fractional score, mean over seeds), ``rounds`` (the last
step with an answer change, mean and max over seeds; honest, not-crashed agents),
``R`` (the budget; its range where the graph's diameter bound varies by seed),
``msg/agent`` (the engine's ``messages``, one per receiver, summed over the run,
/ n), ``wall s`` (mean per seed; ``proc``: whole process), ``x none`` (wall time
against the fault-free cell of the same task, graph and n, measured in the same
run), ``notes``: ``left`` (agents still working at the end, the rule's tasks
that settle: colouring, matching, vertex cover), ``parts`` (connected components
of the subgraph the included agents induce, mean over seeds, under crash and
byzantine: a leader or a consensus value cannot cross a cut), errors.

How to run
----------
From the repository root (``make bench-coordination`` runs the first line)::

    .venv/bin/python -m benchmarks.bench_coordination
    .venv/bin/python -m benchmarks.bench_coordination --quick --seeds-small 2
    .venv/bin/python -m benchmarks.bench_coordination --sizes 1e4 --tasks matching \\
        --families ws --faults none,drop:0.33 --markdown

The default grid is sized for 20-25 minutes on a 2-core machine: ``--quick``
(n=1e2 and 1e4 only, 840 in-process runs) takes under a minute there, the
rest is the 30 whole-process runs at n=1e6 (``--run-timeout`` stops a hung
one). Target printed at the end (the issue's):
the classical baselines solve every fault-free instance at n=1e6 on this
machine, each in under 2 minutes whole-process. Every fault-free instance the
baseline did not solve, at any n, is listed with its config to reproduce it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.bench_scale import _render

ROOT = Path(__file__).resolve().parents[1]
SWARM = str(Path(sys.executable).with_name("swarm"))
TASKS = ("colouring", "vertex_cover", "matching", "leader_election", "consensus")
#: AgentsNet's graph families (n is filled in per cell).
FAMILIES = {"ws": ("WS", {"kind": "watts_strogatz", "k": 4, "p": 0.4}),
            "ba": ("BA", {"kind": "barabasi_albert", "m": 2}),
            "delaunay": ("Delaunay", {"kind": "delaunay"})}
FAULTS = ("none", "drop:0.1", "drop:0.33", "crash:0.1", "crash:0.33", "byzantine:0.1",
          "byzantine:0.33")
#: The tasks whose rule settles agents (``working`` counts those left).
SETTLING = ("colouring", "vertex_cover", "matching")
STEPS = 100_000  # far above any budget: runs stop at R + 1 steps or when quiescent
TARGET_N, TARGET_SECONDS = 1_000_000, 120.0


def _log(msg: str) -> None:
    print(f"[bench_coordination {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- configs ---------------------------------------------------------------------------


def parse_fault(fault: str) -> tuple[str, float]:
    """``"drop:0.1"`` -> ``("drop", 0.1)``; ``"none"`` -> ``("none", 0.0)``."""
    if fault == "none":
        return "none", 0.0
    kind, _, f = fault.partition(":")
    if kind not in ("drop", "crash", "byzantine") or not f:
        raise SystemExit(f"--faults: {fault!r} is not none, drop:F, crash:F or byzantine:F")
    return kind, float(f)


def raw_config(task: str, family: str, n: int, fault: str, seed: int) -> dict:
    """The run config of one trial, as a plain dict (what ``swarm run`` reads as JSON)."""
    kind, f = parse_fault(fault)
    env = {"kind": "coordination", "task": task, "rounds": "agentsnet"}
    faults: dict = {}
    if kind == "drop":
        faults["drop"] = f
    elif kind == "crash":
        faults["crash"] = {"fraction": f, "at_step": 0}
    elif kind == "byzantine":
        env["byzantine"] = f
    return {"seed": seed, "steps": STEPS, "shards": 1, "checkpoint": {"every": 0},
            "graph": {**FAMILIES[family][1], "n": n}, "env": env, "faults": faults}


def seeds_for(n: int, args) -> int:
    if n <= 100:
        return args.seeds_small
    return args.seeds_medium if n < TARGET_N else args.seeds_large


# --- one trial -------------------------------------------------------------------------


@dataclass
class Trial:
    raw: dict
    seconds: float = 0.0
    success: bool = False
    score: float = 0.0
    rounds: int | None = None
    budget: int = 0
    steps: int = 0
    messages: float = 0.0
    left: int = 0
    parts: int = 0
    problem: str = ""
    whole: bool = False
    manifest: dict = field(default_factory=dict)


def _components(graph, keep: np.ndarray) -> int:
    """Connected components of the subgraph of ``graph`` that the ``keep`` agents induce."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    n = graph.indptr.shape[0] - 1
    rows = np.repeat(np.arange(n), np.diff(graph.indptr))
    cols = np.asarray(graph.indices, dtype=np.int64)
    both = keep[rows] & keep[cols]
    idx = np.flatnonzero(keep)
    remap = np.full(n, -1, np.int64)
    remap[idx] = np.arange(idx.size)
    a = sp.coo_matrix((np.ones(int(both.sum()), np.int8), (remap[rows[both]], remap[cols[both]])),
                      shape=(idx.size, idx.size))
    return int(connected_components(a, directed=False)[0]) if idx.size else 0


def judge(trial: Trial, cfg, run, graph) -> None:
    """Fill ``trial`` from a finished run: the validator's verdict, rounds, messages."""
    import pyarrow.compute as pc

    from swarm.analysis.agentsnet import adversaries, last_change_step, validate
    from swarm.faults import Faults
    from swarm.rng import KeyedRNG

    task = cfg.env.task
    events, m = run.events(), run.metrics()
    n = graph.indptr.shape[0] - 1
    last = int(np.max(m["step"])) if m.num_rows else 0
    crashed = None
    if cfg.faults.crash is not None:
        # The shard's own draw (Shard.rng is KeyedRNG(seed)): the same agents crash here.
        mask = Faults(cfg.faults, KeyedRNG(cfg.seed)).crashed(np.arange(n), last)
        crashed = np.flatnonzero(mask)
        ans = events.filter(pc.equal(events["event"].cast("string"), "answer"))
        late = np.isin(np.asarray(ans["agent"]), crashed) & (
            np.asarray(ans["step"]) >= cfg.faults.crash.at_step)
        if late.any():
            trial.problem = f"{int(late.sum())} answers from crashed agents"
    colours = int(m["colours"][0].as_py()) if task == "colouring" else None
    res = validate(task, events, graph, colours=colours, exclude=crashed)
    trial.success, trial.score = res["success"], float(res["score"])
    trial.rounds = last_change_step(events, exclude=crashed)
    trial.budget = int(m["rounds_budget"][0].as_py())
    trial.steps = m.num_rows
    trial.messages = float(np.sum(np.asarray(m["messages"], dtype=np.int64))) / n
    trial.left = int(m["working"][-1].as_py()) if task in SETTLING else 0
    if crashed is not None or cfg.env.byzantine:
        keep = ~adversaries(events, n)
        if crashed is not None:
            keep[crashed] = False
        trial.parts = _components(graph, keep)


def run_in_process(raw: dict, work: Path, graph) -> Trial:
    import swarm

    trial = Trial(raw)
    cfg = swarm.validate_config(raw)
    out = work / "run"
    t0 = time.perf_counter()
    run = swarm.run(cfg, out=out, overwrite=True, backend="local", progress=False)
    trial.seconds = time.perf_counter() - t0
    judge(trial, cfg, run, graph)
    shutil.rmtree(out, ignore_errors=True)
    return trial


def run_whole_process(raw: dict, work: Path, graph, timeout: float) -> Trial:
    """``swarm run CONFIG --out DIR`` in a fresh child process, timed whole."""
    import swarm

    trial = Trial(raw, whole=True)
    path, out = work / "config.json", work / "run"
    path.write_text(json.dumps(raw))  # JSON is YAML: `swarm run` reads it as is
    cmd = [SWARM, "run", str(path), "--out", str(out), "--overwrite", "--no-progress"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    trial.seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"swarm run exited {proc.returncode}:\n"
                           f"{(proc.stdout + proc.stderr)[-2000:]}")
    run = swarm.open_run(out)
    trial.manifest = run.manifest
    judge(trial, swarm.validate_config(raw), run, graph)
    shutil.rmtree(out, ignore_errors=True)
    return trial


# --- the grid --------------------------------------------------------------------------


def _graph(raw: dict, cache: dict):
    import swarm
    from swarm.graphgen import build_graph

    key = (json.dumps(raw["graph"], sort_keys=True), raw["seed"])
    if key not in cache:
        cache[key] = build_graph(swarm.validate_config(raw))
    return cache[key]


def warm_up(work: Path, families: list[str]) -> None:
    """One untimed tiny run per task and family: imports, each generator's first call, the
    first arrow writes."""
    import swarm

    for family in families:
        for task in TASKS:
            raw = raw_config(task, family, 100, "none", 1)
            swarm.run(swarm.validate_config(raw), out=work / "warm", overwrite=True,
                      backend="local", progress=False)
    shutil.rmtree(work / "warm", ignore_errors=True)


def _fmt_n(n: int) -> str:
    """1e2, 1e4, 1e6 for powers of ten, else the number with separators."""
    e = round(np.log10(n)) if n > 0 else 0
    return f"1e{e}" if 10**e == n else f"{n:,}"


def _fmt_budget(budgets: list[int]) -> str:
    lo, hi = min(budgets), max(budgets)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def summarize(cell: dict, trials: list[Trial], errors: list[str], base: dict | None) -> list[str]:
    task, family, n, fault = cell["task"], cell["family"], cell["n"], cell["fault"]
    label = [task, FAMILIES[family][0], _fmt_n(n), fault]
    ok = trials
    if not ok:
        return [*label, "0/0", "-", "-", "-", "-", "-", "-", "-", "error: " + errors[0][:60]]
    rounds = [t.rounds for t in ok if t.rounds is not None]
    wall = cell["wall"]
    notes = []
    if task in SETTLING and any(t.left for t in ok):
        notes.append(f"left {np.mean([t.left for t in ok]):.1f}")
    if any(t.parts for t in ok):
        notes.append(f"parts {np.mean([t.parts for t in ok]):.1f}")
    notes += sorted({t.problem for t in ok if t.problem})
    if errors:
        notes.append(f"{len(errors)} error(s)")
    return [*label,
            f"{sum(t.success for t in ok)}/{len(ok)}",
            f"{np.mean([t.score for t in ok]):.3f}",
            f"{np.mean(rounds):.1f}" if rounds else "-",
            str(max(rounds)) if rounds else "-",
            _fmt_budget([t.budget for t in ok]),
            f"{np.mean([t.messages for t in ok]):.1f}",
            f"{wall:.2f}" + (" proc" if ok[0].whole else ""),
            f"{wall / base['wall']:.2f}x" if base and base["wall"] else "",
            ", ".join(notes)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1e2,1e4,1e6", help="comma-separated n (1e2,1e4,1e6)")
    p.add_argument("--quick", action="store_true", help="n=1e2 and 1e4 only")
    p.add_argument("--seeds-small", type=int, default=5, help="seeds at n <= 100")
    p.add_argument("--seeds-medium", type=int, default=3, help="seeds for 100 < n < 1e6")
    p.add_argument("--seeds-large", type=int, default=1, help="seeds at n >= 1e6")
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--faults", default=",".join(FAULTS),
                   help="comma-separated: none, drop:F, crash:F, byzantine:F")
    p.add_argument("--large-faults", default="none,drop:0.1",
                   help="the faults that also run at n >= 1e6 (with --faults)")
    p.add_argument("--process-n", type=float, default=1e6,
                   help="from this n on, runs are whole `swarm run` processes")
    p.add_argument("--run-timeout", type=float, default=900,
                   help="seconds before a whole-process run is stopped and counted failed")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    if args.quick:
        sizes = [s for s in sizes if s <= 10_000] or [100, 10_000]
    tasks = args.tasks.split(",")
    families = args.families.split(",")
    faults = args.faults.split(",")
    large = set(args.large_faults.split(","))
    for name, given, known in (("--tasks", tasks, TASKS), ("--families", families, FAMILIES)):
        bad = [x for x in given if x not in known]
        if bad:
            raise SystemExit(f"{name}: unknown {bad}; choose from {', '.join(known)}")
    for f in faults:
        parse_fault(f)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    work = Path(tempfile.mkdtemp(prefix="bench_coordination-"))
    started = time.perf_counter()
    cells: list[dict] = []
    failures: list[str] = []
    try:
        warm_up(work, families)
        for n in sizes:
            whole = n >= args.process_n
            for family in families:
                cache: dict = {}  # graphs for validation, per seed; freed per family
                for task in tasks:
                    for fault in faults:
                        if n >= TARGET_N and fault not in large:
                            continue
                        cell = {"task": task, "family": family, "n": n, "fault": fault,
                                "trials": [], "errors": []}
                        t0 = time.perf_counter()
                        for seed in range(1, seeds_for(n, args) + 1):
                            raw = raw_config(task, family, n, fault, seed)
                            try:
                                graph = _graph(raw, cache)
                                cell["trials"].append(
                                    run_whole_process(raw, work, graph, args.run_timeout)
                                    if whole else run_in_process(raw, work, graph))
                            except Exception as exc:  # a failed run is a row, not the end
                                cell["errors"].append(f"{type(exc).__name__}: {exc}")
                                failures.append(f"{task} {family} n={n} {fault} seed={seed}: "
                                                f"{type(exc).__name__}: {exc}\n  config: "
                                                f"{json.dumps(raw)}")
                        won = sum(t.success for t in cell["trials"])
                        _log(f"{task} {family} n={n:,} {fault}: {won}/{len(cell['trials'])} "
                             f"solved, {time.perf_counter() - t0:.1f} s")
                        cells.append(cell)
                cache.clear()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.perf_counter() - started

    order = {k: i for i, k in enumerate(TASKS)}
    cells.sort(key=lambda c: (order[c["task"]], list(FAMILIES).index(c["family"]), c["n"],
                              FAULTS.index(c["fault"]) if c["fault"] in FAULTS else 99))
    for c in cells:
        c["wall"] = float(np.mean([t.seconds for t in c["trials"]])) if c["trials"] else 0.0
    clean = {(c["task"], c["family"], c["n"]): c for c in cells if c["fault"] == "none"}
    body = []
    for c in cells:
        base = clean.get((c["task"], c["family"], c["n"]))
        body.append(summarize(c, c["trials"], c["errors"], base if base is not c else None))
    header = ["task", "graph", "n", "fault", "success", "score", "rounds", "max", "R",
              "msg/agent", "wall s", "x none", "notes"]
    print(_render(header, body, args.markdown))
    whole = [(c, t) for c in cells for t in c["trials"] if t.whole]
    if whole:
        # Where a whole process's time goes (its manifest's timings).
        print("\nwhole-process runs (`swarm run`, Ray included): where the time goes")
        rows = []
        for c, t in whole:
            tm, g = t.manifest.get("timings", {}), t.manifest.get("graph", {})
            rows.append([c["task"], FAMILIES[c["family"]][0], _fmt_n(c["n"]), c["fault"],
                         str(t.raw["seed"]), f"{t.seconds:.1f}",
                         f"{g.get('build_seconds', 0.0):.1f}",
                         f"{tm.get('setup_seconds', 0.0):.1f}",
                         f"{tm.get('run_seconds', 0.0):.1f}", str(t.manifest.get("steps_run"))])
        print(_render(["task", "graph", "n", "fault", "seed", "whole s", "graph s",
                       "setup s", "steps s", "steps"], rows, args.markdown))
    print()
    print("AgentsNet (Grötschla et al., 2025) reports LLM agents at up to 100 agents, with "
          "success falling to near zero at 100 agents (their project page's words); its "
          "per-task numbers at 100 agents could not be retrieved here (no network), so none "
          "are given. The baselines above are classical distributed algorithms drawing keyed "
          "random numbers, not LLMs.")

    # Fault-free instances the baseline did not solve within R: the budget is too tight for
    # the rule, or a bug in the env or its rule (rerun the config with rounds: until_done).
    clean_trials = [(c, t) for c in cells if c["fault"] == "none" for t in c["trials"]]
    for title, picked in (
            ("fault-free instances NOT solved within R", [ct for ct in clean_trials
                                                           if not ct[1].success]),
            ("fault-free instances solved, but with agents still working at R (the rule had "
             "not finished)", [ct for ct in clean_trials if ct[1].success and ct[1].left])):
        if not picked:
            continue
        print(f"\n{title} ({len(picked)}):")
        for c, t in picked:
            print(f"  {c['task']} {c['family']} n={c['n']:,} seed={t.raw['seed']}: score "
                  f"{t.score:.3f}, last change {t.rounds}, R {t.budget}, working at the end "
                  f"{t.left}\n    config: {json.dumps(t.raw)}")
    if clean_trials and all(t.success and not t.left for _, t in clean_trials):
        print("\nevery fault-free instance was solved within AgentsNet's budget R.")
    if failures:
        print(f"\nruns that failed ({len(failures)}):")
        for f in failures:
            print("  " + f)
    print(f"\nbench time: {elapsed / 60:.1f} min")

    big = [c for c in cells if c["fault"] == "none" and c["n"] >= TARGET_N]
    target = (f"target: the classical baselines solve every fault-free instance at n=1e6 on "
              f"this machine, each task in under {TARGET_SECONDS:.0f} s whole-process: ")
    if not big:
        print(target + "not measured (no n >= 1e6 in --sizes)")
    else:
        trials = [(c, t) for c in big for t in c["trials"]]
        solved = sum(t.success for _, t in trials)
        expected = sum(seeds_for(c["n"], args) for c in big)
        worst_c, worst = max(trials, key=lambda ct: ct[1].seconds, default=(None, None))
        whole = all(t.whole for _, t in trials)
        ok = (solved == expected and whole and worst is not None
              and worst.seconds < TARGET_SECONDS)
        worst_s = (f"worst {worst.seconds:.0f} s ({worst_c['task']} on "
                   f"{FAMILIES[worst_c['family']][0]})" if worst else "no run finished")
        print(target + f"{'met' if ok else 'MISSED'} (solved {solved}/{expected}; {worst_s}"
              + ("" if whole else "; not timed whole-process: --process-n above 1e6") + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
