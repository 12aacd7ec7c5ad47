"""The driver: build the graph, partition it, start shards, run rounds, write the manifest.

Each step the driver asks every shard to run its round, passing it the
object refs of the messages other shards addressed to it in the previous
step (the exchange, through Ray's object store, shard to shard), then waits
for the tiny per-shard summaries (the barrier) to update progress, decide on
early stop and record a metrics row. The driver never touches agent data.
It submits step t+1 before waiting on step t, and a lone shard, which has
nobody to exchange with, runs a batch of steps per call.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from swarm import graph as graphs
from swarm.config import RunConfig
from swarm.envs.base import ENV_REGISTRY
from swarm.errors import ConfigError, GraphError
from swarm.eventlog import write_ipc_atomic
from swarm.graph import CSRGraph
from swarm.partition import Partition
from swarm.rng import KeyedRNG
from swarm.rundir import EVENTS, METRICS, Run, create_run_dir, open_run, versions, write_manifest
from swarm.shard import Shard, ShardSpec

__all__ = ["run", "build_graph"]


def build_graph(config: RunConfig) -> CSRGraph:
    """Build the graph a config names; the generator seed derives from the run seed."""
    g = config.graph
    seed = int(KeyedRNG(config.seed).bits("graph", np.zeros(1, np.int64))[0] >> np.uint64(1))
    if g.kind == "barabasi_albert":
        return graphs.barabasi_albert(g.n, g.m, seed=seed)
    if g.kind == "watts_strogatz":
        return graphs.watts_strogatz(g.n, g.k, g.p, seed=seed)
    if g.kind == "erdos_renyi":
        return graphs.erdos_renyi(g.n, g.mean_degree, seed=seed)
    if g.kind == "sbm":
        return graphs.sbm(g.sizes, g.p, seed=seed)
    if g.kind == "configuration":
        return graphs.configuration(np.asarray(g.degrees, dtype=np.int64), seed=seed)
    if g.kind == "edgelist":
        return graphs.read_edgelist(g.path, directed=g.directed, n=g.n)
    raise ConfigError(f"graph.kind {g.kind!r} has no builder")  # pragma: no cover


def _shard_specs(config: RunConfig, graph: CSRGraph, part: Partition, setup: dict,
                 events_root: str) -> list[ShardSpec]:
    in_degree = graph.in_degree().astype(np.int32)
    specs = []
    for k in range(part.num_shards):
        agents = part.agents_of(k)
        starts, ends = graph.indptr[agents], graph.indptr[agents + 1]
        counts = ends - starts
        indptr = np.zeros(agents.shape[0] + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        if part.kind == "contiguous":
            lo = int(graph.indptr[agents[0]]) if agents.size else 0
            indices = graph.indices[lo: lo + int(indptr[-1])].copy()
        else:
            pos = np.arange(indptr[-1], dtype=np.int64) + np.repeat(starts - indptr[:-1], counts)
            indices = graph.indices[pos]
        specs.append(ShardSpec(
            shard=k, num_shards=part.num_shards, seed=config.seed, partition=part,
            agents=agents, indptr=indptr, indices=indices,
            row_shift=(starts - indptr[:-1]).astype(np.int64),
            in_degree=in_degree[agents], env_config=config.env, env_setup=setup,
            events_dir=os.path.join(events_root, f"shard={k}"),
            flush_every=config.log.flush_every,
        ))
    return specs


class _LocalShards:
    """Shards as plain objects in this process (``backend="local"``): same round, no Ray."""

    pipelined = False

    def __init__(self, specs):
        self.shards = [Shard(s) for s in specs]

    def submit(self, step: int, outs: list[list[Any]] | None):
        k = len(self.shards)
        results = [
            s.step(step, *([] if outs is None else [outs[i][j] for i in range(k) if i != j]))
            for j, s in enumerate(self.shards)
        ]
        return results

    def collect(self, results):
        return [r[0] for r in results], [list(r[1:]) for r in results]

    def run_steps(self, start: int, count: int) -> list[dict]:
        return self.shards[0].run_steps(start, count)

    def close(self):
        return [s.close() for s in self.shards]

    def abort(self) -> None:
        for s in self.shards:
            try:
                s.close()
            except Exception:  # best effort on the way out of a failure
                pass


class _RayShards:
    """Shards as Ray actors; messages move shard to shard as object refs.

    ``pipelined``: the driver submits step t+1 (whose inputs are step t's
    outbox refs, not their values) before it waits for step t's summaries,
    so the barrier's round trip overlaps the shards' work. When step t turns
    out quiescent, step t+1 has nothing to do by the env contract and its
    results are dropped.
    """

    pipelined = True

    def __init__(self, specs, address: str | None):
        import ray

        from swarm.cluster.connect import ensure_ray, shard_cpus

        ensure_ray(address)  # no-op when run() already connected
        self.ray = ray
        cpus = shard_cpus(len(specs))
        actor = ray.remote(num_cpus=cpus)(Shard)
        self.actors = [actor.remote(s) for s in specs]
        ray.get([a.health.remote() for a in self.actors])
        self._step = [a.step.options(num_returns=len(specs) + 1) for a in self.actors]

    def submit(self, step: int, outs: list[list[Any]] | None):
        k = len(self.actors)
        return [
            method.remote(step, *([] if outs is None else [outs[i][j] for i in range(k) if i != j]))
            for j, method in enumerate(self._step)
        ]

    def collect(self, refs):
        summaries = self.ray.get([r[0] for r in refs])
        return summaries, [list(r[1:]) for r in refs]

    def run_steps(self, start: int, count: int) -> list[dict]:
        return self.ray.get(self.actors[0].run_steps.remote(start, count))

    def close(self):
        reports = self.ray.get([a.close.remote() for a in self.actors])
        for a in self.actors:
            self.ray.kill(a)
        return reports

    def abort(self) -> None:
        from ray.exceptions import GetTimeoutError, RayError

        try:
            self.ray.get([a.close.remote() for a in self.actors], timeout=10)
        except (RayError, GetTimeoutError):
            pass  # a dead shard's unflushed steps are lost; the others' are kept
        for a in self.actors:
            self.ray.kill(a)


def run(
    config: RunConfig,
    out: str | os.PathLike,
    *,
    graph: CSRGraph | Any | None = None,
    partition: np.ndarray | None = None,
    address: str | None = None,
    backend: str = "ray",
    overwrite: bool = False,
    progress: bool | None = None,
    on_step: Callable[[dict], None] | None = None,
) -> Run:
    """Run a population and return the opened run directory.

    Parameters
    ----------
    config : RunConfig
        A validated config (``swarm.load_config`` / ``swarm.validate_config``).
    out : path
        The run directory to create; it must not hold files yet.
    graph : CSRGraph or networkx graph, optional
        Use this graph instead of building ``config.graph``.
    partition : int array, optional
        An explicit shard per agent instead of ``config.partition``.
    address : str, optional
        A Ray cluster to join; default an embedded local Ray.
    backend : {"ray", "local"}
        ``local`` runs the shards in this process (for debugging and tests).
    """
    if not isinstance(config, RunConfig):
        raise ConfigError(f"run() needs a RunConfig (see swarm.load_config); got {type(config)}")
    if backend not in ("ray", "local"):
        raise ConfigError(f"backend must be 'ray' or 'local'; got {backend!r}")
    t_start = time.perf_counter()
    graph_source = "config" if graph is None else "argument"
    if graph is None:
        graph = build_graph(config)
    elif not isinstance(graph, CSRGraph):
        graph, _labels = graphs.from_networkx(graph)
    graph_seconds = time.perf_counter() - t_start
    if graph.n < 1:
        raise GraphError("the graph has no agents")
    part = Partition(config.partition if partition is None else partition, graph.n, config.shards)
    env_cls = ENV_REGISTRY[config.env.kind]
    try:
        setup = env_cls.prepare(config.env, graph.n, KeyedRNG(config.seed))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None

    if backend == "ray":
        from swarm.cluster.connect import ensure_ray

        ensure_ray(address)  # an unreachable cluster fails here, before anything is written
    path = create_run_dir(out, overwrite=overwrite)
    manifest: dict[str, Any] = {
        "format": "swarm-run/1",
        "status": "running",
        "created_unix": time.time(),
        "config": config.dump(),
        "seed": config.seed,
        "versions": versions(),
        # `source: argument` means the caller passed the graph and config.graph
        # only describes what they said it was; these stats are the real graph's.
        "graph": {**graph.stats(), "source": graph_source,
                  "build_seconds": round(graph_seconds, 4)},
        "partition": part.stats(graph),
        "env": {"kind": env_cls.name, "event_types": list(env_cls.event_types),
                "metrics": list(env_cls.metric_names)},
        "backend": backend,
        "address": address or os.environ.get("RAY_ADDRESS"),
    }
    write_manifest(path, manifest)
    shards = None
    try:
        t_setup = time.perf_counter()
        specs = _shard_specs(config, graph, part, setup, os.path.join(path, EVENTS))
        n = graph.n
        del graph
        shards = _LocalShards(specs) if backend == "local" else _RayShards(specs, address)
        del specs
        setup_seconds = time.perf_counter() - t_setup
        rows, stop_reason, run_seconds = _loop(config, shards, n, progress, on_step)
        t_close = time.perf_counter()
        reports = shards.close()
        close_seconds = time.perf_counter() - t_close
        _write_metrics(path, rows, env_cls.metric_names)
    except BaseException as exc:
        if shards is not None:
            shards.abort()  # keep the events of finished steps, free the actors
        manifest["status"] = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        manifest["error"] = f"{type(exc).__name__}: {exc}"
        write_manifest(path, manifest)
        raise
    manifest.update(
        status="completed",
        steps_run=len(rows),
        stop_reason=stop_reason,
        events=int(sum(r["rows"] for r in reports)),
        shard_peak_rss_mib=[round(r["peak_rss_mib"], 1) for r in reports],
        timings={
            "graph_seconds": round(graph_seconds, 4),
            "setup_seconds": round(setup_seconds, 4),
            "run_seconds": round(run_seconds, 4),
            "close_seconds": round(close_seconds, 4),
        },
    )
    write_manifest(path, manifest)
    return open_run(path)


def _row(step: int, summaries: list[dict], seconds: float) -> dict:
    """One metrics row from the shards' summaries of one step."""
    row = {
        "step": step,
        "active": sum(s["active"] for s in summaries),
        "events": sum(s["events"] for s in summaries),
        "messages": sum(s["messages"] for s in summaries),
        "cross_shard_messages": sum(s["cross_shard_messages"] for s in summaries),
        "seconds": seconds,
        # The slowest shard's own work; the rest of `seconds` is exchange and barrier.
        "shard_seconds_max": max(s["seconds"] for s in summaries),
    }
    for name in summaries[0]["metrics"]:
        row[name] = sum(s["metrics"][name] for s in summaries)
    return row


def _loop(config: RunConfig, shards, n: int, progress: bool | None,
          on_step: Callable[[dict], None] | None):
    rows: list[dict] = []
    show = sys.stderr.isatty() if progress is None else progress
    bar = _Progress(config.steps, n) if show else None

    def emit(row: dict) -> bool:
        rows.append(row)
        if bar:
            bar.update(row["step"], row)
        if on_step:
            on_step(row)
        return row["active"] == 0 and row["messages"] == 0

    t0 = time.perf_counter()
    try:
        if config.shards == 1:
            _loop_single(config.steps, shards, emit)
        else:
            _loop_exchange(config.steps, shards, emit)
    finally:
        if bar:
            bar.close()
    last = rows[-1]
    stop_reason = "quiescent" if last["active"] == 0 and last["messages"] == 0 else "max_steps"
    return rows, stop_reason, time.perf_counter() - t0


def _loop_single(steps: int, shards, emit: Callable[[dict], bool]) -> None:
    # One shard exchanges with nobody: it runs a batch of steps per call (up
    # to a quarter second) and the driver's round trip is paid per batch.
    step = 0
    while step < steps:
        batch = shards.run_steps(step, steps - step)
        for s in batch:
            if emit(_row(s["step"], [s], s["seconds"])):
                return
        step += len(batch)


def _loop_exchange(steps: int, shards, emit: Callable[[dict], bool]) -> None:
    # Step t+1 is submitted on step t's outbox refs before the driver waits
    # for step t's summaries, so the barrier's round trip overlaps the work.
    # If step t turns out quiescent, step t+1 finds nothing to do (by the env
    # contract) and its results are dropped.
    t_prev = time.perf_counter()
    handle = shards.submit(0, None)
    for step in range(steps):
        ahead = None
        if shards.pipelined and step + 1 < steps:
            ahead = shards.submit(step + 1, [list(r[1:]) for r in handle])
        summaries, outs = shards.collect(handle)
        now = time.perf_counter()
        if emit(_row(step, summaries, now - t_prev)):
            return
        t_prev = now
        if step + 1 < steps:
            handle = ahead if ahead is not None else shards.submit(step + 1, outs)


def _write_metrics(path: str, rows: list[dict], metric_names) -> None:
    import pyarrow as pa

    cols = ["step", "active", "events", "messages", "cross_shard_messages", "seconds",
            "shard_seconds_max", *metric_names]
    types = {"step": pa.int32(), "seconds": pa.float64(), "shard_seconds_max": pa.float64()}
    table = pa.table({c: pa.array([r.get(c, 0) for r in rows], type=types.get(c, pa.int64()))
                      for c in cols})
    write_ipc_atomic(table, os.path.join(path, METRICS))


class _Progress:
    """A rich progress bar: steps done, active agents, agent-steps per second."""

    def __init__(self, steps: int, n: int):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.n = n
        self.t0 = time.perf_counter()
        self.progress = Progress(
            TextColumn("[bold]step {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("active {task.fields[active]:,}"),
            TextColumn("{task.fields[rate]} agents/s"),
            TimeElapsedColumn(),
            transient=False,
        )
        self.task = self.progress.add_task("run", total=steps, active=0, rate="-")
        self.progress.start()

    def update(self, step: int, row: dict) -> None:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        rate = self.n * (step + 1) / elapsed
        self.progress.update(self.task, completed=step + 1, active=row["active"],
                             rate=f"{rate:,.0f}")

    def close(self) -> None:
        self.progress.stop()
