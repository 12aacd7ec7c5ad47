"""Speed harness for independent cascade (IC): swarm against a numpy floor, NDlib and Mesa.

What it measures
----------------
For each size ``n`` (default 1e4, 1e5, 1e6) on a Barabási–Albert graph with ``m = 5``:

* **Graph build** (second table): swarm's vectorized generator
  ``swarm.graph.barabasi_albert(n, 5, seed=1)``, and for ``n <= 1e6`` also
  ``networkx.barabasi_albert_graph(n, 5, seed=1)`` followed by
  ``swarm.graph.from_networkx``. Each is timed separately, with the extra peak memory
  (growth of the process's ``ru_maxrss`` high-water mark over the build) measured in a
  fresh child process.
* **Simulation** (main table), all on the same CSR graph (swarm's generator), the same
  seed agents (the ones swarm itself picks: ``Cascade.prepare(...)["seed_ids"]``) and the
  same ``p``, each run in its own fresh child process so that its peak memory is clean:

  - ``bare numpy``: ``benchmarks.baselines.bare_numpy_ic``, a frontier-based numpy loop with
    no logging. It is the speed floor ("x floor" = time / this time at the same ``n``).
  - ``swarm, 1 shard`` and ``swarm, 2 shards``: ``swarm.run`` end to end on an embedded
    local Ray. "sim s" is ``run_seconds + close_seconds`` from the run manifest (the step
    loop including the Arrow event log, plus the final flush); "setup s" is
    ``setup_seconds`` (starting the shard actors and shipping them their graph slices);
    "ray init s" is ``swarm.cluster.connect.ensure_ray()``. The graph is built in the
    child before and is not included. Peak memory is the driver's peak RSS plus the sum of
    the shard actors' peak RSS, an upper bound (pages shared between processes, e.g.
    Ray's object store, are counted in each).
  - ``NDlib`` and ``Mesa``: ``benchmarks.baselines.ndlib_ic`` / ``mesa_ic``, given
    ``--budget`` seconds of simulation each. Once one fails to finish within the budget it
    is skipped at larger ``n``, and so is a run whose simulation time, scaled linearly in
    ``n`` from the previous size, would exceed the budget. "swarm speedup" = their
    simulation time / swarm's 2-shard simulation time.

"rounds" counts propagation rounds (generations whose non-empty frontier tried its
out-edges), as the baselines do; swarm's manifest ``steps_run`` is one more, because its
last step observes that nothing arrived (the raw value is kept in the JSON). Timings are
the median over ``--repeats`` runs. Peak memory is the process's whole peak RSS (Python,
imports and the graph included), not only the simulation's.

At the default ``p = 0.05`` the cascade is near threshold (about 7% of nodes end active)
and runs for a few dozen rounds over small frontiers, so fixed per-round overhead
dominates; ``--heavy`` adds a second workload at ``p = 0.2`` where the work per round
dominates. The harness ends by printing the targets and whether they are met: swarm
(1 and 2 shards) within 3x of the bare floor at n = 1e6; swarm at least 50x faster than NDlib and
Mesa at n = 1e5; swarm's peak memory at n = 1e6 under 2 GiB.

How to run
----------
From the repository root, with the benchmark dependencies installed
(``.venv/bin/pip install -r benchmarks/requirements.txt``)::

    .venv/bin/python -m benchmarks.bench_cascade                      # 1e4, 1e5, 1e6
    .venv/bin/python -m benchmarks.bench_cascade --sizes 1e4,1e5 --markdown
    .venv/bin/python -m benchmarks.bench_cascade --skip ndlib,mesa --heavy --repeats 3

Options: ``--sizes``, ``--p``, ``--seed-fraction``, ``--repeats``, ``--budget`` (seconds of
simulation per NDlib / Mesa run), ``--skip`` (any of numpy, swarm1, swarm2, swarm, ndlib,
mesa, networkx), ``--heavy``, ``--markdown``, ``--child-timeout`` and ``--out`` (JSON with
every figure, default ``benchmarks/results.json``). Progress goes to stderr, the tables
to stdout. Run it on an otherwise idle machine: it measures wall-clock time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

M = 5
"""Edges per new node of the Barabási–Albert graph."""
GRAPH_SEED = 1
"""Seed of the graph generators (swarm's and networkx's)."""
RUN_SEED = 1
"""swarm's run seed (which picks the seed agents) and the baselines' RNG seed."""
HEAVY_P = 0.2
"""Transmission probability of the ``--heavy`` workload."""
NETWORKX_MAX_N = 1_000_000
"""Largest n for which the networkx graph build is measured."""
CHILD_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}
"""Environment added for every child process."""

IMPLS = ("numpy", "swarm1", "swarm2", "ndlib", "mesa")
LABELS = {
    "numpy": "bare numpy (floor)",
    "swarm1": "swarm, 1 shard",
    "swarm2": "swarm, 2 shards",
    "ndlib": "NDlib",
    "mesa": "Mesa",
}
SKIPPABLE = (*IMPLS, "swarm", "networkx")
BUDGETED = ("ndlib", "mesa")
REPO_ROOT = Path(__file__).resolve().parent.parent

SPEEDUP_TARGET = 50.0
FLOOR_TARGET = 3.0
MEMORY_TARGET_MIB = 2048.0


# --- helpers shared by parent and children --------------------------------------------------


def _peak_rss_mib() -> float:
    """Peak resident set size of this process so far.

    Returns
    -------
    float
        ``ru_maxrss`` in MiB (Linux reports KiB; macOS bytes).
    """
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0**2 if sys.platform == "darwin" else 1024.0)


def _current_rss_mib() -> float | None:
    """Current resident set size of this process.

    Returns
    -------
    float or None
        RSS in MiB from ``/proc/self/statm``; None where that file does not exist.
    """
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 1024.0**2


def _sha1(array: np.ndarray) -> str:
    """Fingerprint an array's contents.

    Parameters
    ----------
    array : numpy.ndarray
        Any array; it is hashed as contiguous int64.

    Returns
    -------
    str
        Hex SHA-1 digest.
    """
    return hashlib.sha1(np.ascontiguousarray(array, dtype=np.int64).tobytes()).hexdigest()


def swarm_config(n: int, p: float, seed_fraction: float, shards: int) -> dict:
    """The raw swarm config of one benchmark run.

    Parameters
    ----------
    n : int
        Number of agents.
    p : float
        IC transmission probability.
    seed_fraction : float
        Fraction of agents active at step 0.
    shards : int
        Number of shard actors.

    Returns
    -------
    dict
        A config for ``swarm.validate_config``.
    """
    return {
        "seed": RUN_SEED,
        "steps": 10000,
        "shards": shards,
        "graph": {"kind": "barabasi_albert", "n": n, "m": M},
        "env": {
            "kind": "cascade",
            "model": "independent_cascade",
            "p": p,
            "seed_fraction": seed_fraction,
        },
        "log": {"flush_every": 10},
    }


# --- child tasks (each runs in a fresh process) ---------------------------------------------


def _child_prep(task: dict) -> dict:
    """Build swarm's BA graph, pick the seed agents and save both for the baselines.

    Parameters
    ----------
    task : dict
        ``n``, ``p``, ``seed_fraction`` and ``data_dir`` (where ``indptr.npy``,
        ``indices.npy`` and ``seeds.npy`` are written).

    Returns
    -------
    dict
        Build time, extra peak and retained memory, edge count and fingerprints.
    """
    import swarm
    from swarm.envs import Cascade
    from swarm.graph import barabasi_albert
    from swarm.rng import KeyedRNG

    n = task["n"]
    peak0, rss0 = _peak_rss_mib(), _current_rss_mib()
    t0 = time.perf_counter()
    g = barabasi_albert(n, M, seed=GRAPH_SEED)
    build_seconds = time.perf_counter() - t0
    peak1, rss1 = _peak_rss_mib(), _current_rss_mib()

    cfg = swarm.validate_config(swarm_config(n, task["p"], task["seed_fraction"], 1))
    seeds = Cascade.prepare(cfg.env, n, KeyedRNG(cfg.seed))["seed_ids"]
    seeds = np.asarray(seeds, dtype=np.int64)
    data = Path(task["data_dir"])
    np.save(data / "indptr.npy", g.indptr)
    np.save(data / "indices.npy", g.indices)
    np.save(data / "seeds.npy", seeds)
    return {
        "build_seconds": build_seconds,
        "extra_peak_mib": peak1 - peak0,
        "retained_mib": None if rss0 is None else rss1 - rss0,
        "directed_edges": g.num_edges,
        "max_degree": int(g.out_degree().max()),
        "num_seeds": int(seeds.size),
        "graph_sha1": _sha1(g.indices),
        "seeds_sha1": _sha1(seeds),
    }


def _child_networkx(task: dict) -> dict:
    """Build the BA graph with networkx, then convert it with ``swarm.graph.from_networkx``.

    Parameters
    ----------
    task : dict
        ``n``.

    Returns
    -------
    dict
        Times and extra peak memory of both stages, and the retained size of the networkx
        graph.
    """
    import networkx as nx

    from swarm.graph import from_networkx

    n = task["n"]
    peak0, rss0 = _peak_rss_mib(), _current_rss_mib()
    t0 = time.perf_counter()
    g = nx.barabasi_albert_graph(n, M, seed=GRAPH_SEED)
    t1 = time.perf_counter()
    peak1, rss1 = _peak_rss_mib(), _current_rss_mib()
    csr, labels = from_networkx(g)
    t2 = time.perf_counter()
    peak2 = _peak_rss_mib()
    return {
        "build_seconds": t1 - t0,
        "extra_peak_mib": peak1 - peak0,
        "retained_mib": None if rss0 is None else rss1 - rss0,
        "convert_seconds": t2 - t1,
        "convert_extra_peak_mib": peak2 - peak1,
        "directed_edges": csr.num_edges,
        "identity_labels": labels is None,
    }


def _child_baseline(task: dict) -> dict:
    """Run one baseline of ``benchmarks.baselines`` on the saved graph and seeds.

    Parameters
    ----------
    task : dict
        ``impl`` (numpy, ndlib or mesa), ``p``, ``budget`` and ``data_dir``.

    Returns
    -------
    dict
        The baseline's result dict plus ``peak_mib`` (the process's peak RSS).
    """
    from benchmarks import baselines

    data = Path(task["data_dir"])
    indptr = np.load(data / "indptr.npy")
    indices = np.load(data / "indices.npy")
    seeds = np.load(data / "seeds.npy")
    peak_loaded = _peak_rss_mib()
    impl, p = task["impl"], task["p"]
    if impl == "numpy":
        res = baselines.bare_numpy_ic(indptr, indices, seeds, p, RUN_SEED)
    elif impl == "ndlib":
        res = baselines.ndlib_ic(indptr, indices, seeds, p, RUN_SEED, time_budget_s=task["budget"])
    elif impl == "mesa":
        res = baselines.mesa_ic(indptr, indices, seeds, p, RUN_SEED, time_budget_s=task["budget"])
    else:
        raise ValueError(f"unknown baseline {impl!r}")
    return {**res, "rounds": res["steps"], "peak_mib": _peak_rss_mib(),
            "peak_after_load_mib": peak_loaded}


def _child_swarm(task: dict) -> dict:
    """Run swarm end to end on an embedded local Ray.

    The graph is built first (not timed as simulation), then Ray is started with
    ``ensure_ray`` (timed as ``ray_init_seconds``), then ``swarm.run`` runs into a temporary
    directory that is deleted afterwards.

    Parameters
    ----------
    task : dict
        ``n``, ``p``, ``seed_fraction``, ``shards`` and the prep step's ``graph_sha1`` and
        ``seeds_sha1``.

    Returns
    -------
    dict
        Manifest timings, rounds, final active count, driver and shard peak RSS, and
        whether the graph and the seed agents match the ones the baselines got.
    """
    import pyarrow.compute as pc
    import ray

    import swarm
    from swarm.cluster.connect import ensure_ray
    from swarm.graph import barabasi_albert

    n, shards = task["n"], task["shards"]
    t0 = time.perf_counter()
    g = barabasi_albert(n, M, seed=GRAPH_SEED)
    graph_seconds = time.perf_counter() - t0
    graph_match = _sha1(g.indices) == task["graph_sha1"]
    cfg = swarm.validate_config(swarm_config(n, task["p"], task["seed_fraction"], shards))
    peak_before_ray = _peak_rss_mib()

    t0 = time.perf_counter()
    ensure_ray()
    ray_init_seconds = time.perf_counter() - t0
    tmp = tempfile.mkdtemp(prefix="bench_cascade_run_")
    try:
        t0 = time.perf_counter()
        run = swarm.run(cfg, os.path.join(tmp, "run"), graph=g, progress=False)
        call_seconds = time.perf_counter() - t0
        driver_peak = _peak_rss_mib()
        man = run.manifest
        timings = man["timings"]
        metrics = run.metrics()
        final_active = int(metrics.column("ever_active")[-1].as_py()) if metrics.num_rows else 0
        first = run.events(columns=["agent", "parent"], filter=pc.field("step") == 0)
        seed_agents = np.sort(first.column("agent").to_numpy())
        seeds_match = (_sha1(seed_agents) == task["seeds_sha1"]
                       and first.column("parent").null_count == first.num_rows)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        ray.shutdown()
    steps_run = int(man["steps_run"])
    quiescent = man["stop_reason"] == "quiescent"
    shard_peaks = [float(x) for x in man["shard_peak_rss_mib"]]
    return {
        "final_active": final_active,
        "events": int(man["events"]),
        "steps_run": steps_run,
        "rounds": steps_run - 1 if quiescent else steps_run,
        "stop_reason": man["stop_reason"],
        "completed": quiescent,
        "seconds": timings["run_seconds"] + timings["close_seconds"],
        "setup_seconds": timings["setup_seconds"],
        "timings": timings,
        "ray_init_seconds": ray_init_seconds,
        "run_call_seconds": call_seconds,
        "graph_seconds": graph_seconds,
        "driver_peak_mib": driver_peak,
        "driver_peak_before_ray_mib": peak_before_ray,
        "shard_peak_mib": shard_peaks,
        "peak_mib": driver_peak + sum(shard_peaks),
        "graph_match": graph_match,
        "seeds_match": bool(seeds_match),
    }


CHILD_TASKS = {
    "prep": _child_prep,
    "networkx": _child_networkx,
    "baseline": _child_baseline,
    "swarm": _child_swarm,
}


def _child_main(task_path: str, result_path: str) -> None:
    """Entry point of a child process: run the task in ``task_path``, write its result.

    Parameters
    ----------
    task_path : str
        JSON file with the task (``kind`` picks the function in ``CHILD_TASKS``).
    result_path : str
        Where the result is written as JSON.
    """
    with open(task_path) as fh:
        task = json.load(fh)
    result = CHILD_TASKS[task["kind"]](task)
    with open(result_path, "w") as fh:
        json.dump(result, fh)


# --- parent: orchestration ------------------------------------------------------------------


def _run_child(task: dict, work: Path, timeout: float) -> dict:
    """Run one task in a fresh ``python -m benchmarks.bench_cascade --child`` process.

    Parameters
    ----------
    task : dict
        The task (JSON-serialisable).
    work : pathlib.Path
        Scratch directory for the task and result files.
    timeout : float
        Wall-clock limit for the child, in seconds.

    Returns
    -------
    dict
        The child's result, or ``{"error": ...}`` when it failed or timed out.
    """
    fd, task_path = tempfile.mkstemp(suffix=".json", dir=work)
    with os.fdopen(fd, "w") as fh:
        json.dump(task, fh)
    result_path = task_path[:-5] + ".result.json"
    env = {**os.environ, **CHILD_ENV}
    cmd = [sys.executable, "-m", "benchmarks.bench_cascade", "--child", task_path, result_path]
    # Its own process group, so that a timeout also ends what it started (Ray's services).
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0 or not os.path.exists(result_path):
        tail = (stderr or stdout or "").strip().splitlines()[-15:]
        return {"error": f"exit code {proc.returncode}", "stderr_tail": tail}
    with open(result_path) as fh:
        return json.load(fh)


def _log(msg: str) -> None:
    """Print a progress line to stderr.

    Parameters
    ----------
    msg : str
        The line.
    """
    print(msg, file=sys.stderr, flush=True)


def _parse_sizes(text: str) -> list[int]:
    """Parse ``--sizes``.

    Parameters
    ----------
    text : str
        Comma-separated sizes such as ``"1e4,1e5,1e6"``.

    Returns
    -------
    list of int
        The sizes, in the order given.
    """
    sizes = []
    for item in text.split(","):
        value = float(item.strip())
        if value != int(value) or value <= M + 1:
            raise argparse.ArgumentTypeError(f"size {item!r} must be an integer > {M + 1}")
        sizes.append(int(value))
    return sizes


def _parse_skip(text: str) -> set[str]:
    """Parse ``--skip``.

    Parameters
    ----------
    text : str
        Comma-separated names from ``SKIPPABLE`` (may be empty).

    Returns
    -------
    set of str
        The skipped implementations (``swarm`` expands to both swarm runs).
    """
    names = {s.strip().lower() for s in text.split(",") if s.strip()}
    unknown = names - set(SKIPPABLE)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown --skip name(s) {sorted(unknown)}; choose from {', '.join(SKIPPABLE)}")
    if "swarm" in names:
        names |= {"swarm1", "swarm2"}
    return names


def _aggregate(impl: str, n: int, p: float, results: list[dict]) -> dict:
    """Combine the repeats of one (implementation, n, p) into one table row.

    Parameters
    ----------
    impl : str
        Key of ``LABELS``.
    n : int
        Number of nodes.
    p : float
        Transmission probability.
    results : list of dict
        One child result per repeat.

    Returns
    -------
    dict
        The row: medians of the timings, max of the peaks, mean of the final active
        count, status ``ok`` / ``incomplete`` / ``error``, and the raw repeats.
    """
    row = {"impl": impl, "label": LABELS[impl], "n": n, "p": p, "repeats": results}
    errors = [r for r in results if "error" in r]
    if errors:
        row.update(status="error", note=errors[0]["error"])
        return row
    med = statistics.median
    row.update(
        status="ok" if all(r["completed"] for r in results) else "incomplete",
        note="" if all(r["completed"] for r in results) else "budget ran out",
        rounds=med(r["rounds"] for r in results),
        final_active=statistics.fmean(r["final_active"] for r in results),
        seconds=med(r["seconds"] for r in results),
        setup_seconds=med(r["setup_seconds"] for r in results),
        peak_mib=max(r["peak_mib"] for r in results),
    )
    row["final_active_fraction"] = row["final_active"] / n
    if impl.startswith("swarm"):
        row["ray_init_seconds"] = med(r["ray_init_seconds"] for r in results)
        if not all(r["graph_match"] and r["seeds_match"] for r in results):
            row["note"] = "graph or seeds differ from the baselines'!"
        elif any(r["events"] != r["final_active"] for r in results):
            row["note"] = "event rows != ever_active!"
    return row


def _skip_reason(impl: str, p: float, n: int, history: dict, budget: float) -> str | None:
    """Decide whether a budgeted baseline is skipped at this size.

    Parameters
    ----------
    impl : str
        ``ndlib`` or ``mesa``.
    p : float
        Transmission probability of the workload.
    n : int
        Size about to run.
    history : dict
        ``(impl, p) -> row`` of the last size run for that pair.
    budget : float
        Simulation budget in seconds.

    Returns
    -------
    str or None
        The note for a skipped row, or None to run it.
    """
    prev = history.get((impl, p))
    if prev is None:
        return None
    if prev["status"] != "ok":
        return f"skipped ({prev['status']} at n={prev['n']:,})"
    est = prev["seconds"] * n / prev["n"]
    if est > budget:
        return f"skipped (est. {_fmt_seconds(est)}s)"
    return None


def _add_ratios(rows: list[dict]) -> None:
    """Fill the "x floor" and "swarm speedup" columns in place.

    Parameters
    ----------
    rows : list of dict
        All rows; ratios are taken within the same (n, p).
    """
    by_key = {(r["impl"], r["n"], r["p"]): r for r in rows}
    for r in rows:
        r["x_floor"] = r["swarm_speedup"] = None
        if r["status"] not in ("ok", "incomplete"):
            continue
        floor = by_key.get(("numpy", r["n"], r["p"]))
        if floor and floor["status"] == "ok" and floor["seconds"] > 0:
            r["x_floor"] = r["seconds"] / floor["seconds"]
        sw = by_key.get(("swarm2", r["n"], r["p"]))
        if r["impl"] in BUDGETED and sw and sw["status"] == "ok" and sw["seconds"] > 0:
            r["swarm_speedup"] = r["seconds"] / sw["seconds"]


def _evaluate_targets(rows: list[dict], p: float) -> list[dict]:
    """Check the performance targets on one workload.

    Parameters
    ----------
    rows : list of dict
        All rows (with ratios filled in).
    p : float
        The workload's transmission probability.

    Returns
    -------
    list of dict
        One entry per target: ``target``, ``value`` (str), ``met`` (True, False or None
        when it could not be measured).
    """
    by_key = {(r["impl"], r["n"]): r for r in rows if r["p"] == p}

    def ok(key):
        row = by_key.get(key)
        return row if row and row["status"] == "ok" else None

    out = []
    for sw_impl in ("swarm1", "swarm2"):
        sw = ok((sw_impl, 1_000_000))
        ratio = sw["x_floor"] if sw else None
        out.append({
            "target": f"{LABELS[sw_impl]} within {FLOOR_TARGET:g}x of the bare numpy floor "
                      "at n=1e6",
            "value": "not measured" if ratio is None else f"{ratio:.2f}x floor",
            "met": None if ratio is None else ratio <= FLOOR_TARGET,
        })
    for sw_impl in ("swarm1", "swarm2"):
        for impl in BUDGETED:
            base, sw = by_key.get((impl, 100_000)), ok((sw_impl, 100_000))
            target = (f"{LABELS[sw_impl]} at least {SPEEDUP_TARGET:g}x faster than "
                      f"{LABELS[impl]} at n=1e5")
            if base and base["status"] in ("ok", "incomplete") and sw and sw["seconds"] > 0:
                speedup = base["seconds"] / sw["seconds"]
                if base["status"] == "incomplete":
                    # The baseline did not finish: its true time exceeds what was measured.
                    out.append({"target": target,
                                "value": f">= {speedup:.0f}x (baseline incomplete)",
                                "met": True if speedup >= SPEEDUP_TARGET else None})
                else:
                    out.append({"target": target, "value": f"{speedup:.1f}x",
                                "met": speedup >= SPEEDUP_TARGET})
            else:
                out.append({"target": target, "value": "not measured", "met": None})
    for impl in ("swarm2", "swarm1"):
        row = ok((impl, 1_000_000))
        out.append({
            "target": f"{LABELS[impl]} peak memory at n=1e6 under {MEMORY_TARGET_MIB / 1024:g} GiB"
                      " (driver + shards, upper bound)",
            "value": "not measured" if row is None else f"{row['peak_mib']:.0f} MiB",
            "met": None if row is None else row["peak_mib"] < MEMORY_TARGET_MIB,
        })
    return out


# --- tables ---------------------------------------------------------------------------------


def _fmt_seconds(x: float | None) -> str:
    """Format a duration compactly.

    Parameters
    ----------
    x : float or None
        Seconds.

    Returns
    -------
    str
        E.g. ``0.0123``, ``1.23``, ``123``; ``-`` for None.
    """
    if x is None:
        return "-"
    if x < 0.1:
        return f"{x:.4f}"
    if x < 10:
        return f"{x:.3f}"
    if x < 100:
        return f"{x:.1f}"
    return f"{x:.0f}"


def _fmt_ratio(x: float | None, prefix: str = "") -> str:
    """Format a ratio.

    Parameters
    ----------
    x : float or None
        The ratio.
    prefix : str, optional
        Put before the number (``">"`` for a lower bound).

    Returns
    -------
    str
        E.g. ``2.41x``, ``137x``; ``-`` for None.
    """
    if x is None:
        return "-"
    return prefix + (f"{x:.2f}x" if x < 10 else f"{x:.0f}x")


def _render(header: list[str], body: list[list[str]], markdown: bool,
            left: tuple[int, ...] = (0,)) -> str:
    """Render an aligned plain-text or Markdown table.

    Parameters
    ----------
    header : list of str
        Column titles.
    body : list of list of str
        Cells.
    markdown : bool
        Markdown pipe table instead of plain text.
    left : tuple of int, optional
        Indices of the columns aligned left (the rest align right); negative ones count
        from the end.

    Returns
    -------
    str
        The table.
    """
    widths = [max(len(c) for c in col) for col in zip(header, *body, strict=True)]
    left = {i % len(widths) for i in left}

    def line(cells):
        parts = [c.ljust(w) if i in left else c.rjust(w)
                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "| " + " | ".join(parts) + " |" if markdown else "  ".join(parts).rstrip()

    if markdown:
        rule = "|" + "|".join(
            ("-" * (w + 1) + "-" if i in left else "-" * (w + 1) + ":")
            for i, w in enumerate(widths)) + "|"
    else:
        rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in body)])


def format_results_table(rows: list[dict], budget: float, markdown: bool = False) -> str:
    """The main table: one row per (n, p, implementation).

    Parameters
    ----------
    rows : list of dict
        Rows from ``_aggregate`` / skipped rows, with ratios filled in.
    budget : float
        The baselines' budget, for the footnote.
    markdown : bool, optional
        Markdown instead of plain text.

    Returns
    -------
    str
        The table and its footnotes.
    """
    header = ["implementation", "p", "n", "rounds", "active frac", "sim s", "setup s",
              "ray init s", "peak MiB", "x floor", "swarm speedup", "note"]
    body = []
    for r in rows:
        has = r["status"] in ("ok", "incomplete")
        peak = "-"
        if has:
            peak = f"{r['peak_mib']:.0f}" + ("*" if r["impl"].startswith("swarm") else "")
        sim = "-"
        if has:
            sim = _fmt_seconds(r["seconds"]) if r["status"] == "ok" else f">{_fmt_seconds(budget)}"
        # An incomplete baseline's time is a lower bound, and so are its ratios.
        bound = ">" if r["status"] == "incomplete" else ""
        body.append([
            r["label"],
            f"{r['p']:g}",
            f"{r['n']:,}",
            f"{r['rounds']:g}" if has else "-",
            f"{r['final_active_fraction']:.4f}" if has else "-",
            sim,
            _fmt_seconds(r["setup_seconds"]) if has else "-",
            _fmt_seconds(r.get("ray_init_seconds")),
            peak,
            _fmt_ratio(r.get("x_floor"), bound),
            _fmt_ratio(r.get("swarm_speedup"), bound),
            r.get("note", ""),
        ])
    notes = [
        "sim s: simulation only (swarm: run_seconds + close_seconds, i.e. the step loop with "
        "event logging and the final flush); setup s: graph/model/actor setup, timed apart.",
        "x floor: sim s / bare numpy sim s at the same n and p; swarm speedup: baseline sim s "
        "/ swarm (2 shards) sim s.",
        "* swarm peak = driver peak RSS + sum of shard actors' peak RSS (an upper bound); "
        "other peaks are the child process's peak RSS. All include Python, imports and graph.",
    ]
    sep = "\n\n" if markdown else "\n"
    return _render(header, body, markdown, left=(0, -1)) + sep + sep.join(notes)


def format_graph_table(graph_rows: list[dict], markdown: bool = False) -> str:
    """The graph-build table: swarm's generator vs networkx + ``from_networkx``.

    Parameters
    ----------
    graph_rows : list of dict
        One entry per n with ``swarm`` and ``networkx`` results.
    markdown : bool, optional
        Markdown instead of plain text.

    Returns
    -------
    str
        The table and its footnote.
    """
    header = ["n", "directed edges", "swarm BA s", "swarm BA +peak MiB", "networkx BA s",
              "networkx +peak MiB", "from_networkx s", "from_networkx +peak MiB",
              "networkx total / swarm"]
    body = []
    for g in graph_rows:
        sw, nxr = g.get("swarm") or {}, g.get("networkx") or {}
        sw_ok, nx_ok = "error" not in sw and sw, "error" not in nxr and nxr
        ratio = None
        if sw_ok and nx_ok and sw["build_seconds"] > 0:
            ratio = (nxr["build_seconds"] + nxr["convert_seconds"]) / sw["build_seconds"]
        body.append([
            f"{g['n']:,}",
            f"{sw['directed_edges']:,}" if sw_ok else "-",
            _fmt_seconds(sw["build_seconds"]) if sw_ok else "-",
            f"{sw['extra_peak_mib']:.0f}" if sw_ok else "-",
            _fmt_seconds(nxr["build_seconds"]) if nx_ok else g.get("networkx_note", "-"),
            f"{nxr['extra_peak_mib']:.0f}" if nx_ok else "-",
            _fmt_seconds(nxr["convert_seconds"]) if nx_ok else "-",
            f"{nxr['convert_extra_peak_mib']:.0f}" if nx_ok else "-",
            _fmt_ratio(ratio),
        ])
    note = ("+peak MiB: growth of the process's peak RSS during that stage, in a fresh child "
            "process (from_networkx's is on top of the networkx graph's).")
    return _render(header, body, markdown, left=()) + ("\n\n" if markdown else "\n") + note


def format_targets(targets: dict[str, list[dict]], markdown: bool = False) -> str:
    """List the targets and whether they are met.

    Parameters
    ----------
    targets : dict
        Workload title -> entries from ``_evaluate_targets``.
    markdown : bool, optional
        A Markdown list instead of plain text.

    Returns
    -------
    str
        One line per target.
    """
    lines = []
    for title, entries in targets.items():
        lines.append(f"Targets, {title}:")
        if markdown:
            lines.append("")
        for t in entries:
            if markdown:
                mark = {True: "**met**", False: "**NOT met**", None: "n/a"}[t["met"]]
                lines.append(f"- {mark}: {t['target']}: {t['value']}")
            else:
                mark = {True: "MET    ", False: "NOT MET", None: "n/a    "}[t["met"]]
                lines.append(f"  [{mark}] {t['target']}: {t['value']}")
        if markdown:
            lines.append("")
    return "\n".join(lines).rstrip()


# --- main -----------------------------------------------------------------------------------


def _build_parser() -> argparse.ArgumentParser:
    """The command-line parser.

    Returns
    -------
    argparse.ArgumentParser
        The parser.
    """
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_cascade",
        description="Independent-cascade speed harness: swarm vs bare numpy, NDlib and Mesa.",
    )
    ap.add_argument("--sizes", type=_parse_sizes, default=_parse_sizes("1e4,1e5,1e6"),
                    help="comma-separated graph sizes (default 1e4,1e5,1e6)")
    ap.add_argument("--p", type=float, default=0.05, help="IC transmission probability")
    ap.add_argument("--seed-fraction", type=float, default=0.01,
                    help="fraction of agents active at step 0")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs per (n, implementation); timings are medians")
    ap.add_argument("--budget", type=float, default=300.0,
                    help="seconds of simulation per NDlib / Mesa run")
    ap.add_argument("--skip", type=_parse_skip, default=set(),
                    help=f"comma-separated implementations to skip: {', '.join(SKIPPABLE)}")
    ap.add_argument("--heavy", action="store_true",
                    help=f"also run a work-dominated workload at p={HEAVY_P:g}")
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables")
    ap.add_argument("--child-timeout", type=float, default=3600.0,
                    help="wall-clock limit of one child process, seconds")
    ap.add_argument("--out", default="benchmarks/results.json", help="JSON results file")
    ap.add_argument("--child", nargs=2, metavar=("TASK", "RESULT"), help=argparse.SUPPRESS)
    return ap


def _versions() -> dict:
    """Versions of the packages involved.

    Returns
    -------
    dict
        Package name -> version string (``None`` when not installed).
    """
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("swarm", "ray", "numpy", "networkx", "pyarrow", "ndlib", "mesa"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print and save the results.

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0, or 1 when a child failed.
    """
    args = _build_parser().parse_args(argv)
    if args.child:
        _child_main(*args.child)
        return 0
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")

    workloads = [("main", args.p)] + ([("heavy", HEAVY_P)] if args.heavy else [])
    impls = [i for i in IMPLS if i not in args.skip]
    rows: list[dict] = []
    graph_rows: list[dict] = []
    history: dict = {}
    failed = False
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench_cascade_"))
    timeout = args.child_timeout
    try:
        for n in args.sizes:
            data = work / f"n{n}"
            data.mkdir()
            _log(f"[n={n:,}] building swarm BA graph and seeds")
            prep = _run_child({"kind": "prep", "n": n, "p": args.p,
                               "seed_fraction": args.seed_fraction,
                               "data_dir": str(data)}, work, timeout)
            grow = {"n": n, "swarm": prep}
            graph_rows.append(grow)
            if "error" in prep:
                _log(f"  prep failed: {prep}")
                failed = True
                continue
            _log(f"  swarm BA: {prep['build_seconds']:.3f} s, {prep['directed_edges']:,} "
                 f"directed edges, {prep['num_seeds']:,} seeds")
            if "networkx" in args.skip:
                grow["networkx_note"] = "skipped"
            elif n > NETWORKX_MAX_N:
                grow["networkx_note"] = "not run"
            else:
                _log(f"[n={n:,}] building networkx BA graph")
                grow["networkx"] = _run_child({"kind": "networkx", "n": n}, work, timeout)
                failed |= "error" in grow["networkx"]
                _log(f"  networkx: {grow['networkx']}")
            for _, p in workloads:
                for impl in impls:
                    if impl in BUDGETED:
                        reason = _skip_reason(impl, p, n, history, args.budget)
                        if reason:
                            _log(f"[n={n:,} p={p:g}] {impl}: {reason}")
                            rows.append({"impl": impl, "label": LABELS[impl], "n": n, "p": p,
                                         "status": "skipped", "note": reason, "repeats": []})
                            continue
                    results = []
                    for rep in range(args.repeats):
                        _log(f"[n={n:,} p={p:g}] {impl} (repeat {rep + 1}/{args.repeats})")
                        if impl.startswith("swarm"):
                            task = {"kind": "swarm", "n": n, "p": p, "shards": int(impl[-1]),
                                    "seed_fraction": args.seed_fraction,
                                    "graph_sha1": prep["graph_sha1"],
                                    "seeds_sha1": prep["seeds_sha1"]}
                        else:
                            task = {"kind": "baseline", "impl": impl, "p": p,
                                    "budget": args.budget, "data_dir": str(data)}
                        res = _run_child(task, work, timeout)
                        results.append(res)
                        if "error" in res:
                            _log(f"  FAILED: {res}")
                            failed = True
                            break
                        _log(f"  sim {res['seconds']:.3f} s, setup {res['setup_seconds']:.3f} s,"
                             f" active {res['final_active']:,}, rounds {res['rounds']},"
                             f" peak {res['peak_mib']:.0f} MiB")
                    row = _aggregate(impl, n, p, results)
                    rows.append(row)
                    history[(impl, p)] = row
            shutil.rmtree(data, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    order = {impl: i for i, impl in enumerate(IMPLS)}
    rows.sort(key=lambda r: (r["p"] != args.p, r["p"], r["n"], order[r["impl"]]))
    _add_ratios(rows)
    targets = {}
    for name, p in workloads:
        title = f"p={p:g}" + (" (headline workload)" if name == "main" else " (heavy workload)")
        targets[title] = _evaluate_targets(rows, p)

    print(f"Independent cascade on Barabási–Albert graphs (m={M}), seed fraction "
          f"{args.seed_fraction:g}, {args.repeats} repeat(s), {os.cpu_count()} CPUs\n")
    print(format_results_table(rows, args.budget, args.markdown), flush=True)
    print("\nGraph build (swarm generator vs networkx + from_networkx):\n")
    print(format_graph_table(graph_rows, args.markdown))
    print()
    print(format_targets(targets, args.markdown))

    out = {
        "created_unix": time.time(),
        "wall_seconds": time.perf_counter() - t_start,
        "args": {k: sorted(v) if isinstance(v, set) else v
                 for k, v in vars(args).items() if k != "child"},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "versions": _versions(),
        "graph": {"kind": "barabasi_albert", "m": M, "seed": GRAPH_SEED},
        "run_seed": RUN_SEED,
        "workloads": {name: p for name, p in workloads},
        "rows": rows,
        "graph_build": graph_rows,
        "targets": targets,
    }
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(out, indent=2))
    _log(f"results written to {out_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
