"""One metrics row per step, from the shards' summaries, and the metrics tables.

A run's metrics are two tables. ``metrics.arrow`` holds what the run computes:
counts and the env's declared metrics, equal for equal configs and seeds on
any shard count (what the determinism kit compares). ``timings.arrow`` holds
wall-clock seconds (each stage of the slowest shard, the env's declared
``timing_metrics``), which differ from run to run and never enter the first.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa

from swarm.population import POLICY_METRICS
from swarm.reductions import Histogram, Reduction, finish_all, merge_all
from swarm.storage import RunStore

__all__ = ["STAGES", "ENGINE_TIMINGS", "row", "record", "metric_columns", "timing_columns",
           "write_metrics"]


#: The shard's stages timed in every step besides decide (metrics ``<stage>_seconds``).
STAGES = ("deliver", "observe", "apply", "log", "route")
#: The engine's wall-clock columns (``timings.arrow``).
ENGINE_TIMINGS = ("seconds", "shard_seconds_max", "checkpoint_seconds", "decide_seconds",
                  *(f"{stage}_seconds" for stage in STAGES))


def row(step: int, summaries: list[dict], seconds: float, derive=None,
        reductions: Mapping[str, Reduction] | None = None) -> dict:
    """One metrics row from the shards' summaries of one step: counters summed, the env's
    declared reductions merged and finished, then its derived metrics."""
    row = {
        "step": step,
        "active": sum(s["active"] for s in summaries),
        "events": sum(s["events"] for s in summaries),
        "messages": sum(s["messages"] for s in summaries),
        "cross_shard_messages": sum(s["cross_shard_messages"] for s in summaries),
        "cross_shard_bytes": sum(s["cross_shard_bytes"] for s in summaries),
        "seconds": seconds,
        # The slowest shard's own work; the rest of `seconds` is exchange and barrier.
        "shard_seconds_max": max(s["seconds"] for s in summaries),
        "checkpoint_seconds": max(s.get("checkpoint_seconds", 0.0) for s in summaries),
        # The slowest shard's decide stage (policies, model calls included).
        "decide_seconds": max(s["policy"]["decide_seconds"] for s in summaries),
        "dropped_messages": sum(s.get("dropped_messages", 0) for s in summaries),
        "held_messages": sum(s.get("held_messages", 0) for s in summaries),
    }
    # Each stage of the slowest shard at it (decide_seconds above is the decide stage).
    for stage in STAGES:
        row[f"{stage}_seconds"] = max(s["stages"][stage] for s in summaries)
    for name in POLICY_METRICS:
        row[name] = sum(s["policy"][name] for s in summaries)
    totals = {name: sum(s["metrics"][name] for s in summaries) for name in summaries[0]["metrics"]}
    row.update(totals)
    if reductions:
        parts = [s["reduced"] for s in summaries if s.get("reduced") is not None]
        finished = finish_all(reductions, merge_all(reductions, parts))
        totals.update(finished)
        row.update(finished)
    if derive is not None:
        row.update(derive(totals))
    return row


def record(file: dict) -> dict:
    """A file record as the manifest keeps it (its path is the key)."""
    return {k: v for k, v in file.items() if k != "path"}


def metric_columns(env_cls) -> tuple[str, ...]:
    """The env's deterministic metric columns: counters, declared reductions (a histogram's
    bins each), derived metrics."""
    reduced = []
    for name, r in getattr(env_cls, "metrics", {}).items():
        if isinstance(r, Histogram):
            reduced.extend(f"{name}_{i}" for i in range(len(r.edges) - 1))
        else:
            reduced.append(name)
    return (*env_cls.metric_names, *reduced, *env_cls.derived_metric_names)


def timing_columns(env_cls) -> tuple[str, ...]:
    """The wall-clock columns of a run of ``env_cls``: the engine's and the env's."""
    return (*ENGINE_TIMINGS, *getattr(env_cls, "timing_metrics", ()))


def write_metrics(store: RunStore, rel: str, rows: list[dict], metric_names,
                  timing_names: tuple[str, ...] = ENGINE_TIMINGS) -> dict:
    """Write one metrics table of the columns named; returns its file record (with ``path``).

    ``metric_names`` are the env's; ``timing_names`` the wall-clock columns to include
    (none for ``metrics.arrow``, only those for ``timings.arrow``: pass
    ``metric_names=None``)."""
    floats = tuple(timing_names)
    if metric_names is None:
        cols = ["step", *floats]
    else:
        cols = ["step", "active", "events", "messages", "cross_shard_messages",
                "cross_shard_bytes", "dropped_messages", "held_messages", *floats,
                *POLICY_METRICS, *metric_names]
    types = {"step": pa.int32(), **{c: pa.float64() for c in floats}}
    for c in metric_names or ():  # env metrics: float64 when any step's value is a float
        if any(isinstance(r.get(c), (float, np.floating)) for r in rows):
            types[c] = pa.float64()
    table = pa.table({c: pa.array([r.get(c, 0) for r in rows], type=types.get(c, pa.int64()))
                      for c in cols})
    return {"path": rel, **store.write_table(rel, table)}
