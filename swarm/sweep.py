"""Sweeps: the same run over a grid of config values, one run directory per point.

``swarm sweep CONFIG --grid env.p=0.05,0.1,0.2 --grid seed=1,2 --out DIR`` runs the
cartesian product of the grid. Each point is the base config with its values
set (like ``--set``), validated on its own, and run as one Ray task (its
shards in-process inside the task, so points run side by side on a cluster).
A point that is invalid or fails is recorded with its error; the others go
on. ``DIR/index.arrow`` lists every point: its values, run directory,
status, error, steps, events and run time, and the final step's metrics.
"""

from __future__ import annotations

import itertools
import os
import time
import traceback
from typing import Any

import pyarrow as pa
import yaml

from swarm.config import apply_overrides, read_config_file, validate_config
from swarm.config_file import parse_yaml
from swarm.errors import ConfigError, SwarmError
from swarm.storage import RunStore

__all__ = ["parse_grid", "sweep"]

INDEX = "index.arrow"
MANIFEST = "sweep.json"


def parse_grid(items: list[str]) -> dict[str, list[Any]]:
    """``["env.p=0.05,0.1", "seed=1,2"]`` -> ``{"env.p": [0.05, 0.1], "seed": [1, 2]}``.

    Values are parsed as one YAML flow list, so numbers stay numbers and a
    value may itself be a list (``key=[1,2],[3,4]``; quote it on a shell).

    Examples
    --------
    >>> parse_grid(["env.p=0.05,0.1", "env.model=sir", "graph.sizes=[10,20],[30]"])
    {'env.p': [0.05, 0.1], 'env.model': ['sir'], 'graph.sizes': [[10, 20], [30]]}
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid expects dotted.key=v1,v2,...; got {item!r}")
        key, _, text = item.partition("=")
        key = key.strip()
        if not key or not all(key.split(".")):
            raise ConfigError(f"--grid key {key!r} is empty or has an empty part")
        if key in grid:
            raise ConfigError(f"--grid names {key!r} twice; give all its values in one --grid")
        try:  # a YAML flow list, so values may be lists themselves: k=[1,2],[3,4]
            values = parse_yaml(f"[{text}]", f"--grid {key}")
        except ConfigError as exc:
            raise ConfigError(f"{exc} (comma-separated values expected)") from None
        if not values:
            raise ConfigError(f"--grid {key}: give at least one value")
        grid[key] = values
    if not grid:
        raise ConfigError("a sweep needs at least one --grid key=v1,v2")
    return grid


def _point_label(values: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in values.items())


def _run_point(raw: dict, out: str) -> dict:
    """One point: validate and run in this process; a failure is returned, not raised."""
    import swarm

    t0 = time.perf_counter()
    try:
        cfg = validate_config(raw)
        run = swarm.run(cfg, out, backend="local", progress=False)
    except Exception as exc:  # reported in the index; the sweep goes on
        detail = str(exc) if isinstance(exc, SwarmError) else \
            "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return {"status": "failed", "error": f"{type(exc).__name__}: {detail}",
                "seconds": time.perf_counter() - t0}
    m = run.manifest
    metrics = run.metrics()
    last = metrics.slice(metrics.num_rows - 1).to_pylist()[0] if metrics.num_rows else {}
    return {"status": m["status"], "error": None, "steps_run": m.get("steps_run"),
            "events": m.get("events"), "run_seconds": m["timings"].get("run_seconds"),
            "seconds": time.perf_counter() - t0,
            "final": {k: v for k, v in last.items() if "seconds" not in k}}


def sweep(config: str | dict, grid: dict[str, list[Any]], out: str | os.PathLike, *,
          overrides: list[str] | None = None, backend: str = "ray",
          address: str | None = None, overwrite: bool = False,
          on_point=None) -> pa.Table:
    """Run every point of ``grid`` over the base ``config`` (a YAML path or a raw dict).

    Parameters
    ----------
    config : str or dict
        The base config; ``overrides`` (``dotted.key=value``) apply first.
    grid : dict
        Dotted keys to lists of values (see ``parse_grid``).
    out : path or URI
        The sweep directory: ``point-NNN/`` run directories and ``index.arrow``.
    backend : {"ray", "local"}
        ``ray``: one task per point on an embedded or ``address`` Ray;
        ``local``: one point after another in this process.
    on_point : callable, optional
        Called with each finished point's index row.

    Returns
    -------
    pyarrow.Table
        The index, one row per point in grid order.
    """
    if backend not in ("ray", "local"):
        raise ConfigError(f"backend must be 'ray' or 'local'; got {backend!r}")
    raw = read_config_file(config) if isinstance(config, (str, os.PathLike)) else dict(config)
    raw = apply_overrides(raw, overrides)
    store = RunStore(os.fspath(out))
    if store.exists("") and store.listdir(""):
        if not overwrite or not store.exists(MANIFEST):
            raise ConfigError(
                f"{store.uri} already holds files; choose a new --out"
                + (" (or pass --overwrite to replace an earlier sweep)" if not overwrite else
                   " (--overwrite only replaces a directory that holds a swarm sweep)"))
        store.clear()
    store.makedirs("")
    keys = list(grid)
    points = [dict(zip(keys, combo, strict=True))
              for combo in itertools.product(*(grid[k] for k in keys))]
    raws = [apply_overrides(raw, [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}"
                                  .replace("\n...", "") for k, v in p.items()])
            for p in points]
    dirs = [store.child_uri(f"point-{i:03d}") for i in range(len(points))]
    summary = {"config": raw, "grid": grid, "points": len(points), "status": "running"}
    store.write_json(MANIFEST, summary)  # first, so --overwrite knows this is a sweep
    # Points not finished (yet, or ever, after an interruption) show as "pending".
    results: list[dict] = [{"status": "pending"} for _ in points]

    def write_index() -> pa.Table:
        rows = [_index_row(i, p, d, r)
                for i, (p, d, r) in enumerate(zip(points, dirs, results, strict=True))]
        columns = list(dict.fromkeys(k for row in rows for k in row))  # failed lack metrics
        index = pa.Table.from_pylist([{k: row.get(k) for k in columns} for row in rows])
        store.write_table(INDEX, index)
        return index

    def finish(i: int, result: dict) -> None:
        results[i] = result
        write_index()  # after every point, so an interrupted sweep keeps what it finished
        if on_point is not None:
            on_point(_index_row(i, points[i], dirs[i], result))

    status = "interrupted"
    try:
        if backend == "local":
            for i, (r, d) in enumerate(zip(raws, dirs, strict=True)):
                finish(i, _run_point(r, d))
        else:
            _run_on_ray(raws, dirs, address, finish)
        status = "completed"
    finally:
        index = write_index()
        store.write_json(MANIFEST, {**summary, "status": status, "failed": sum(
            r["status"] == "failed" for r in results)})
    return index


def _run_on_ray(raws: list[dict], dirs: list[str], address: str | None, finish) -> None:
    """One task per point; pending tasks are cancelled if the sweep itself stops."""
    import ray

    from swarm.cluster.connect import ensure_ray

    ensure_ray(address)
    task = ray.remote(num_cpus=1, max_retries=0)(_run_point)
    pending = {task.remote(r, d): i for i, (r, d) in enumerate(zip(raws, dirs, strict=True))}
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            try:
                finish(i, ray.get(done[0]))
            except ray.exceptions.RayError as exc:  # the task's worker or node died
                finish(i, {"status": "failed", "error": f"{type(exc).__name__}: {exc}"})
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)


def _index_row(i: int, values: dict[str, Any], run_dir: str, result: dict) -> dict:
    row: dict[str, Any] = {"point": i}
    # Values as text: a grid may mix types (0.1 and "auto") that one Arrow column cannot.
    row.update({k: yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("\n...")
                for k, v in values.items()})
    row.update(run_dir=run_dir, status=result["status"], error=result.get("error"),
               steps_run=result.get("steps_run"), events=result.get("events"),
               run_seconds=result.get("run_seconds"))
    for k, v in (result.get("final") or {}).items():
        if k != "step":
            row[f"final_{k}"] = v
    return row
