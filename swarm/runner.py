"""The driver: build the graph, partition it, start shards, run rounds, write the manifest.

Each step the driver asks every shard to run its round, passing it the
object refs of the messages other shards addressed to it in the previous
step (the exchange, through Ray's object store, shard to shard), then waits
for the tiny per-shard summaries (the barrier) to update progress, decide on
early stop and record a metrics row. The driver never touches agent data.
It submits step t+1 before waiting on step t, and a lone shard, which has
nobody to exchange with, runs a batch of steps per call.

Every ``checkpoint.every`` steps the shards write their state; when a shard
or its node dies the driver restarts all shards from the last complete
checkpoint (bounded by ``fault_tolerance.max_restarts``), and Ctrl-C stops
after the current step with a checkpoint that ``swarm resume`` continues.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from swarm import checkpoint as ckpt
from swarm import graph as graphs
from swarm.config import RunConfig, validate_config
from swarm.edgelist import edgelist_size
from swarm.envs.base import ENV_REGISTRY
from swarm.errors import (
    ClusterError,
    ConfigError,
    GraphError,
    IntegrityError,
    LeaseError,
    LogError,
    RunInterrupted,
    ShardFailure,
    StorageError,
    SwarmError,
)
from swarm.eventlog import chunk_number
from swarm.graph import CSRGraph, ragged_arange
from swarm.graphgen import graph_size, whole_graph
from swarm.lease import Lease
from swarm.memory import check_memory, estimate_for, estimate_from_config, estimate_memory
from swarm.partition import Partition
from swarm.policy_server import PolicyServers
from swarm.population import POLICY_METRICS, check_population, load_personas
from swarm.rng import KeyedRNG
from swarm.rundir import (
    FORMAT,
    METRICS,
    STATE,
    Run,
    check_files,
    create_run_dir,
    open_run,
    verify_files,
    versions,
    write_manifest,
)
from swarm.shard import Shard, ShardSpec, build_shards, is_quiescent
from swarm.shardgraph import GraphSource, index_dtype
from swarm.storage import RunStore, hash_file

__all__ = ["run", "resume", "build_graph"]


def graph_seed(config: RunConfig) -> int:
    """The graph generators' seed, derived from the run seed."""
    return int(KeyedRNG(config.seed).bits("graph", np.zeros(1, np.int64))[0] >> np.uint64(1))


def build_graph(config: RunConfig, check: Callable[[int, int], None] | None = None
                ) -> CSRGraph:
    """The whole graph a config names, in this process: the same graph the shards of a
    run build slice by slice, for any shard count (for analysis, tests and METIS).

    ``check(n, directed_edges)`` runs on an edge list's sizes before its arrays
    are allocated (the memory guard; generators are checked from the config).
    """
    g = config.graph
    if g.kind == "edgelist":
        return graphs.read_edgelist(g.path, directed=g.directed, n=g.n, check=check)
    return whole_graph(g, graph_seed(config))


@dataclass
class _GraphPlan:
    """The run's graph as the driver knows it: its size, and the whole graph only where
    one process must hold it (passed in from Python, or partitioned by METIS)."""

    n: int
    directed: bool
    source: str  # "config" or "argument"
    held: CSRGraph | None = None
    seconds: float = 0.0
    #: Set once the shards have built their slices (sizes, timings, cut).
    stats: list[dict] | None = None


def _plan_graph(config: RunConfig, graph, partition, check) -> _GraphPlan:
    """Size the graph from the config (streaming an edge list's ids), or take/build the
    whole graph where the partition needs it; nothing is generated here otherwise."""
    t0 = time.perf_counter()
    gc = config.graph
    if graph is not None:
        held = graph if isinstance(graph, CSRGraph) else graphs.from_networkx(graph)[0]
        return _GraphPlan(held.n, held.directed, "argument", held, time.perf_counter() - t0)
    if partition is not None or config.partition not in SHARD_LOCAL_PARTITIONS:
        held = build_graph(config, check=check)
        return _GraphPlan(held.n, held.directed, "config", held, time.perf_counter() - t0)
    if gc.kind == "edgelist":
        top, rows = edgelist_size(gc.path)
        n = top if gc.n is None else gc.n
        if n < top:
            raise GraphError(f"{gc.path}: graph.n={n} but the edge list names node {top - 1}; "
                             f"set n >= {top} or leave it out")
        if check is not None:
            check(n, rows * (1 if gc.directed else 2))
        return _GraphPlan(n, gc.directed, "config", None, time.perf_counter() - t0)
    return _GraphPlan(graph_size(gc), False, "config", None, time.perf_counter() - t0)


#: Partitions under which shards build their own slices (the others read the whole graph).
SHARD_LOCAL_PARTITIONS = ("contiguous", "hash")


def _shard_specs(config: RunConfig, plan: _GraphPlan, part: Partition, setup: dict,
                 store: RunStore, personas=None, servers: PolicyServers | None = None
                 ) -> list[ShardSpec]:
    specs = []
    for k in range(part.num_shards):
        if plan.held is None:
            source = GraphSource(plan.n, plan.directed, config=config.graph,
                                 seed=graph_seed(config))
        else:
            graph = plan.held
            agents = part.agents_of(k)
            starts = graph.indptr[agents]
            counts = graph.indptr[agents + 1] - starts
            indptr = np.zeros(agents.shape[0] + 1, dtype=np.int64)
            np.cumsum(counts, out=indptr[1:])
            indices = graph.indices[ragged_arange(starts, counts)].astype(index_dtype(graph.n))
            source = GraphSource(plan.n, plan.directed, indptr=indptr, indices=indices)
        specs.append(ShardSpec(
            shard=k, num_shards=part.num_shards, seed=config.seed, partition=part,
            graph=source, env_config=config.env, env_setup=setup,
            store=store, flush_every=config.log.flush_every,
            population=config.population, personas=personas, faults=config.faults,
            backends=servers.backends_for(k) if servers is not None else {},
        ))
    return specs


def _graph_stats(plan: _GraphPlan, part: Partition) -> tuple[dict, dict]:
    """The manifest's graph and partition entries, from the shards' slice sizes."""
    stats = sorted(plan.stats, key=lambda s: s["shard"])
    edges = sum(s["edges"] for s in stats)
    cut = sum(s["cut_edges"] for s in stats)
    graph = {
        "n": plan.n,
        "directed_edges": edges,
        "directed": plan.directed,
        "mean_out_degree": edges / plan.n if plan.n else 0.0,
        "max_out_degree": max(s["max_out_degree"] for s in stats),
        "build_seconds": round(plan.seconds + max(
            s["draw_seconds"] + s["assemble_seconds"] + s["finish_seconds"] for s in stats), 4),
        "built_by": "driver" if plan.held is not None else "shards",
        "merged_edges": sum(s.get("merged_edges", 0) for s in stats),
        "graph_bytes_per_shard": [s["graph_bytes"] for s in stats],
    }
    partition = {
        "kind": part.kind,
        "shards": part.num_shards,
        "agents_per_shard": [s["agents"] for s in stats],
        "edges_per_shard": [s["edges"] for s in stats],
        "cut_edges": cut,
        "edge_cut_fraction": cut / edges if edges else 0.0,
        "build_seconds": round(part.build_seconds, 4),
    }
    return graph, partition


class _LocalShards:
    """Shards as plain objects in this process (``backend="local"``): same round, no Ray."""

    pipelined = False

    def __init__(self, specs, restore_step: int | None, restore_files: tuple[str, ...] = ()):
        self.shards, self.stats = build_shards(specs, restore_step, restore_files)

    def submit(self, step: int, outs: list[list[Any]] | None, checkpoint: bool = False):
        k = len(self.shards)
        return [
            s.step(step, *([] if outs is None else [outs[i][j] for i in range(k) if i != j]),
                   checkpoint=checkpoint)
            for j, s in enumerate(self.shards)
        ]

    def collect(self, results):
        return [r[0] for r in results], [list(r[1:]) for r in results]

    def run_steps(self, start: int, count: int, checkpoint_every: int) -> list[dict]:
        return self.shards[0].run_steps(start, count, checkpoint_every)

    def checkpoint(self, step: int) -> list[dict]:
        return [s.checkpoint(step) for s in self.shards]

    def close(self):
        return [s.close() for s in self.shards]

    def kill(self) -> None:
        """Drop the shards without flushing anything."""
        self.shards = []

    def abort(self) -> list[dict]:
        """Close what can be closed on the way out of a failure; the reports of those."""
        reports = []
        for s in self.shards:
            try:
                reports.append(s.close())
            except Exception:  # best effort on the way out of a failure
                pass
        return reports


class _RayShards:
    """Shards as Ray actors; messages move shard to shard as object refs.

    ``pipelined``: the driver submits step t+1 (whose inputs are step t's
    outbox refs, not their values) before it waits for step t's summaries,
    so the barrier's round trip overlaps the shards' work. When step t turns
    out quiescent, step t+1 has nothing to do by the env contract and its
    results are dropped.
    """

    pipelined = True
    #: How long new shard actors may take to be placed and built before the
    #: run gives up (a cluster without room for them leaves them pending).
    start_timeout = 120.0

    def __init__(self, spec_refs, restore_step: int | None, name: str,
                 restore_files: tuple[str, ...] = ()):
        import ray

        from swarm.cluster.connect import shard_cpus

        self.ray = ray
        cpus = shard_cpus(len(spec_refs))
        # Restarts are the driver's job (from a checkpoint, all shards together):
        # Ray restarting one actor from its constructor would lose its state.
        actor = ray.remote(num_cpus=cpus, max_restarts=0)(Shard)
        # Named `swarm-<run id>-<attempt>-shard<k>` so operators (and tests) can find them.
        self.actors = [actor.options(name=f"{name}-shard{k}").remote(s, restore_step,
                                                                     restore_files)
                       for k, s in enumerate(spec_refs)]
        try:
            ray.get([a.health.remote() for a in self.actors], timeout=self.start_timeout)
            self.stats = self._build()
        except ray.exceptions.GetTimeoutError:
            self.kill()
            raise ClusterError(
                f"{len(spec_refs)} shard actors ({cpus:g} CPU each) could not start within "
                f"{self.start_timeout:.0f} s: the cluster has {ray.cluster_resources()}. Add "
                "nodes or lower `shards`."
            ) from None
        except BaseException:
            self.kill()  # the shards that did start must not keep their CPUs
            raise
        self._step = [a.step.options(num_returns=len(spec_refs) + 1) for a in self.actors]

    def _build(self) -> list[dict]:
        """The shards build their slices: edges go shard to shard as object refs (the
        driver passes refs, never the edges), then each reports its slice's sizes."""
        k = len(self.actors)
        if k == 1:
            a = self.actors[0]
            a.draw.remote()
            a.assemble.remote()
            return self.ray.get([a.finish.remote()])
        drawn = [a.draw.options(num_returns=k).remote() for a in self.actors]
        sent = [a.assemble.options(num_returns=k).remote(
            *[drawn[i][j] for i in range(k) if i != j]) for j, a in enumerate(self.actors)]
        del drawn
        return self.ray.get([a.finish.remote(*[sent[i][j] for i in range(k) if i != j])
                             for j, a in enumerate(self.actors)])

    def submit(self, step: int, outs: list[list[Any]] | None, checkpoint: bool = False):
        k = len(self.actors)
        return [
            method.remote(step, *([] if outs is None else [outs[i][j] for i in range(k) if i != j]),
                          checkpoint=checkpoint)
            for j, method in enumerate(self._step)
        ]

    def collect(self, refs):
        summaries = self.ray.get([r[0] for r in refs])
        return summaries, [list(r[1:]) for r in refs]

    def run_steps(self, start: int, count: int, checkpoint_every: int) -> list[dict]:
        return self.ray.get(self.actors[0].run_steps.remote(start, count, checkpoint_every))

    def checkpoint(self, step: int) -> list[dict]:
        return self.ray.get([a.checkpoint.remote(step) for a in self.actors])

    def close(self):
        reports = self.ray.get([a.close.remote() for a in self.actors])
        self.kill()
        return reports

    def kill(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:  # already dead with its node
                pass

    def abort(self) -> list[dict]:
        """Close what can be closed on the way out of a failure; the reports of those."""
        from ray.exceptions import GetTimeoutError, RayError

        refs = [a.close.remote() for a in self.actors]
        reports = []
        for ref in refs:
            try:
                reports.append(self.ray.get(ref, timeout=10))
            except (RayError, GetTimeoutError):
                pass  # a dead shard's unflushed steps are lost; the others' are kept
        self.kill()
        return reports


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
    out : path or URI
        The run directory to create (a local path, ``file://``, ``s3://``,
        ... through pyarrow.fs); it must not hold files yet.
    graph : CSRGraph or networkx graph, optional
        Use this graph instead of building ``config.graph``.
    partition : int array, optional
        An explicit shard per agent instead of ``config.partition``.
    address : str, optional
        A Ray cluster to join; default an embedded local Ray.
    backend : {"ray", "local"}
        ``local`` runs the shards in this process (for debugging and tests).
    on_step : callable, optional
        Called with each step's metrics row (progress hooks, tests).

    Raises
    ------
    RunInterrupted
        On Ctrl-C, after the current step and a checkpoint; ``swarm resume``
        continues the run.
    LeaseError
        ``out`` holds a run that another driver is still writing.
    StorageError
        A file could not be written (a full disk, no permission); the run is
        marked ``failed`` where the manifest can still be written.
    """
    if not isinstance(config, RunConfig):
        raise ConfigError(f"run() needs a RunConfig (see swarm.load_config); got {type(config)}")
    if backend not in ("ray", "local"):
        raise ConfigError(f"backend must be 'ray' or 'local'; got {backend!r}")
    env_cls = ENV_REGISTRY[config.env.kind]
    _connect(backend, address)
    check = None
    if config.memory_check:
        # From the config alone, before anything is allocated: a graph too big
        # for the cluster is refused in a second, not after minutes of building.
        if graph is None and (estimate := estimate_from_config(config, env_cls)) is not None:
            check_memory(estimate, backend=backend)

        def check(n: int, edges: int) -> None:
            check_memory(estimate_for(n, edges, config, env_cls), backend=backend)
    plan = _plan_graph(config, graph, partition, check)
    if plan.n < 1:
        raise GraphError("the graph has no agents")
    part, env_cls, setup, personas = _prepare(config, plan, partition, backend)
    if config.memory_check and plan.source == "argument":  # the others were checked above
        check_memory(estimate_memory(plan.held, config, env_cls), backend=backend)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "run_id": uuid.uuid4().hex[:12],
        "status": "starting",
        "created_unix": time.time(),
        "config": config.dump(),
        "seed": config.seed,
        "versions": versions(),
        "graph": {"source": plan.source},
        "partition": {"source": "config" if partition is None else "argument"},
        "backend": backend,
        "address": address or os.environ.get("RAY_ADDRESS"),
        "files": {},
    }
    # The manifest is the first file of the run: a kill at any later moment
    # leaves a directory that `--overwrite` replaces and `resume` restarts.
    store, lease = create_run_dir(out, overwrite=overwrite, manifest=manifest)
    try:
        manifest.update(
            status="running",
            env={"kind": env_cls.name, "event_types": list(env_cls.event_types),
                 "metrics": list(_metric_columns(env_cls))},
            timings={"graph_seconds": round(plan.seconds, 4)},
        )
        # What `swarm resume` cannot rebuild from the config alone.
        if plan.source == "argument":
            _keep(manifest, ckpt.write_arrays(store, GRAPH_FILE, {"indptr": plan.held.indptr,
                                                                  "indices": plan.held.indices},
                                              {"directed": plan.held.directed}))
        if part.kind not in ("contiguous", "hash"):
            _keep(manifest, ckpt.write_arrays(
                store, PARTITION_FILE, {"shard": part.shard_of(np.arange(plan.n,
                                                                         dtype=np.int64))}))
        write_manifest(store, manifest)
    except BaseException:
        try:
            _mark_failed(store, manifest, *sys.exc_info()[:2])
        finally:
            lease.release()
        raise
    return _execute(config, store, manifest, plan, part, setup, personas, lease=lease,
                    backend=backend, progress=progress, on_step=on_step)


GRAPH_FILE = f"{STATE}/graph.arrow"
PARTITION_FILE = f"{STATE}/partition.arrow"


def _keep(manifest: dict, record: dict) -> None:
    """List a file the driver wrote in the manifest's ``files``."""
    manifest["files"][record["path"]] = {k: v for k, v in record.items() if k != "path"}


def resume(
    path: str | os.PathLike,
    *,
    address: str | None = None,
    backend: str | None = None,
    progress: bool | None = None,
    on_step: Callable[[dict], None] | None = None,
    trust_endpoint: bool = False,
) -> Run:
    """Continue a stopped, interrupted or failed run from its last complete checkpoint.

    Events after the checkpoint are discarded and replayed (keyed randomness
    makes the replay exact), so the finished log equals an uninterrupted
    run's. Without a checkpoint the run starts again from step 0. The
    checkpoint's files are checked against their checksums first; a damaged
    one gives way to the previous checkpoint, or to step 0, with a warning
    that says how many steps are replayed.

    Raises
    ------
    LeaseError
        Another driver is running or resuming this run right now.
    IntegrityError
        A file the run needs is missing or changed and no earlier state can
        stand in for it.
    ConfigError
        The run calls model endpoints, was written by another user, and
        ``trust_endpoint`` is False (``swarm resume --trust-endpoint``).
    """
    from swarm.policies.endpoints import check_endpoints_trusted

    prior = open_run(path)
    store = prior.store
    # Before the lease, so that nothing is written for a run that is refused.
    config = validate_config(prior.manifest["config"])
    check_endpoints_trusted(config, store, trust_endpoint)
    lease = Lease(store, attempt=prior.manifest.get("resumes", 0) + 2).acquire()
    try:
        # Read again under the lease: a driver that just finished changed it.
        manifest = open_run(store.uri).manifest
        if manifest.get("status") == "completed":
            raise LogError(f"{prior.path} already completed; nothing to resume")
        config = validate_config(manifest["config"])
        if manifest["config"] != prior.manifest["config"]:
            # The manifest was replaced since the check above: check what will run.
            check_endpoints_trusted(config, store, trust_endpoint)
        backend = backend or manifest.get("backend", "ray")
        if backend not in ("ray", "local"):
            raise ConfigError(f"backend must be 'ray' or 'local'; got {backend!r}")
        _connect(backend, address)
        plan, saved = _saved_graph(config, store, manifest)
        part, env_cls, setup, personas = _prepare(config, plan, saved, backend)
        restore, rows = _choose_checkpoint(store, manifest)
    except BaseException:
        lease.release()
        raise
    if "env" not in manifest:  # killed before its first full manifest
        manifest["env"] = {"kind": env_cls.name, "event_types": list(env_cls.event_types),
                           "metrics": list(_metric_columns(env_cls))}
    manifest.setdefault("timings", {})
    manifest.update(status="running", error=None,
                    resumes=manifest.get("resumes", 0) + 1,
                    resumed_from=-1 if restore is None else restore)
    try:
        write_manifest(store, manifest)
    except BaseException:
        lease.release()
        raise
    files = tuple(manifest.get("checkpoint", {}).get("files", {})) if restore is not None else ()
    return _execute(config, store, manifest, plan, part, setup, personas, lease=lease,
                    backend=backend, progress=progress, on_step=on_step,
                    restore_step=restore, rows=rows, restore_files=files)


def _saved_graph(config: RunConfig, store: RunStore, manifest: dict
                 ) -> tuple[_GraphPlan, np.ndarray | None]:
    """The run's graph plan and explicit partition, read back (checked) where the config
    cannot rebuild them. The shards check their rebuilt slices against the manifest."""
    listed = isinstance(manifest.get("files"), dict)
    files = manifest.get("files") or {}
    saved = None
    if PARTITION_FILE in files or (not listed and store.exists(PARTITION_FILE)):
        verify_files(store, {PARTITION_FILE: files[PARTITION_FILE]} if listed else {})
        saved = ckpt.read_arrays(store, PARTITION_FILE)[0]["shard"]
    elif manifest.get("partition", {}).get("source") == "argument":
        raise LogError(f"{store.uri}: the run's partition was passed in Python and not saved; "
                       "start a new run")
    if manifest["graph"].get("source") == "argument":
        if not store.exists(GRAPH_FILE) or (listed and GRAPH_FILE not in files):
            raise LogError(f"{store.uri}: the graph was passed in Python and not saved; "
                           "start a new run")
        verify_files(store, {GRAPH_FILE: files[GRAPH_FILE]} if listed else {})
        arrays, meta = ckpt.read_arrays(store, GRAPH_FILE)
        graph = CSRGraph(arrays["indptr"], arrays["indices"], directed=meta["directed"])
        plan = _GraphPlan(graph.n, graph.directed, "argument", graph)
    else:
        plan = _plan_graph(config, None, saved, None)
    if plan.n != manifest["graph"].get("n", plan.n):
        raise LogError(f"{store.uri}: the graph now has n={plan.n} agents, the run had "
                       f"{manifest['graph']['n']}; was the edge list changed?")
    return plan, saved


def _choose_checkpoint(store: RunStore, manifest: dict) -> tuple[int | None, list[dict]]:
    """The newest checkpoint whose files and earlier event chunks are intact, and its
    metrics rows; falls back to the previous checkpoint, then to step 0, saying so.

    Updates the manifest: the chosen checkpoint becomes ``checkpoint`` and the
    event chunks after it are dropped from ``files`` (the shards delete them).
    """
    if not isinstance(manifest.get("files"), dict):
        # Written by an older swarm: nothing lists its files, so nothing vouches for its
        # checkpoint or chunks. Step 0 replays them all (keyed randomness: the same rows).
        _warn(f"{store.uri} was written by an older swarm ({manifest.get('format')}), whose "
              "manifest lists no files; the run starts again from step 0")
        manifest.update(format=FORMAT, files={})
        for rel in (GRAPH_FILE, PARTITION_FILE):
            if store.exists(rel):
                _keep(manifest, {"path": rel, **hash_file(store, rel)})
        manifest.pop("checkpoint", None)
        return None, []
    candidates = [c for c in (manifest.get("checkpoint"), manifest.get("previous_checkpoint"))
                  if isinstance(c, dict) and isinstance(c.get("step"), int) and c["step"] >= 0]
    newest = candidates[0]["step"] if candidates else None
    problems = []
    for ckp in candidates:
        try:
            verify_files(store, ckp.get("files", {}))
            _verify_chunks_before(store, manifest["files"], ckp.get("log", {}))
            snapshot = f"{ckpt.step_dir(ckp['step'])}/metrics.arrow"
            rows = store.read_table(snapshot).to_pylist()
        except (LogError, FileNotFoundError, OSError, pa.ArrowInvalid) as exc:
            problems.append(f"checkpoint of step {ckp['step']}: {exc}")
            continue
        if ckp["step"] != newest:  # the damaged newer one is no fallback
            _warn(f"{problems[0]}; resuming from the previous checkpoint, of step "
                  f"{ckp['step']} (steps {ckp['step'] + 1}..{newest} are run again)")
            manifest["checkpoint"], manifest["previous_checkpoint"] = ckp, None
        _drop_chunks_after(manifest["files"], ckp.get("log", {}))
        return ckp["step"], rows
    if problems:
        _warn(f"{'; '.join(problems)}; no intact checkpoint is left, so the run starts again "
              f"from step 0 (steps 0..{newest} are run again; keyed randomness makes them "
              "the same)")
    manifest.pop("checkpoint", None)
    manifest.pop("previous_checkpoint", None)
    _drop_chunks_after(manifest["files"], {})
    return None, []


def _verify_chunks_before(store: RunStore, files: dict[str, dict], log: dict) -> None:
    """The event chunks a checkpoint keeps (those before its log position) must be there."""
    keep = {rel: rec for rel, rec in files.items() if _kept(rel, log)}
    check_files(store, keep, "event chunk")


def _kept(rel: str, log: dict) -> bool:
    """Whether event chunk ``rel`` precedes the log position ``log`` ({shard: parts})."""
    if not rel.startswith("events/shard="):
        return True
    shard = rel.split("/", 2)[1].removeprefix("shard=")
    return chunk_number(rel) < int(log.get(shard, 0))


def _drop_chunks_after(files: dict[str, dict], log: dict) -> None:
    for rel in [rel for rel in files if not _kept(rel, log)]:
        del files[rel]
    files.pop(METRICS, None)  # rewritten when the run completes


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _connect(backend: str, address: str | None) -> None:
    if backend == "ray":
        from swarm.cluster.connect import ensure_ray

        ensure_ray(address)


def _prepare(config: RunConfig, plan: _GraphPlan, partition: np.ndarray | None, backend: str):
    """Partition, the env's global set-up and the population, shared by run and resume.

    Everything here can fail on bad input, and does so before anything is written.
    """
    part = Partition(config.partition if partition is None else partition, plan.n,
                     config.shards, graph=plan.held, seed=config.seed)
    env_cls = ENV_REGISTRY[config.env.kind]
    try:
        setup = env_cls.prepare(config.env, plan.n, KeyedRNG(config.seed))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if config.faults.active and "src" not in env_cls.message_fields and env_cls.message_fields:
        raise ConfigError(f"faults: env {env_cls.name!r} sends messages without a 'src' "
                          "field, so the engine cannot tell who sent what; add src to its "
                          "message_fields")
    pop = config.population
    personas = load_personas(pop.personas) if pop.personas is not None else None
    check_population(pop, env_cls, config.env, personas, plan.n, backend)
    return part, env_cls, setup, personas


def _mark_failed(store: RunStore, manifest: dict, kind, exc) -> bool:
    """Record how the run ended in its manifest; False when even that write failed."""
    interrupted = kind is not None and issubclass(kind, (KeyboardInterrupt, RunInterrupted))
    manifest["status"] = "interrupted" if interrupted else "failed"
    manifest["error"] = f"{kind.__name__ if kind else 'Error'}: {_cause(exc)}"
    try:
        write_manifest(store, manifest)
    except StorageError:
        return False
    return True


def _cause(exc) -> BaseException | None:
    """The error a shard raised, when ``exc`` is Ray's wrapper of it."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _execute(config: RunConfig, store: RunStore, manifest: dict, plan: _GraphPlan,
             part: Partition, setup: dict, personas, *, lease: Lease, backend, progress,
             on_step, restore_step: int | None = None, rows: list[dict] | None = None,
             restore_files: tuple[str, ...] = ()) -> Run:
    """Start the shards, run the rounds, close, and keep the manifest true on every exit."""
    env_cls = ENV_REGISTRY[config.env.kind]
    driver = servers = None
    try:
        try:
            t_setup = time.perf_counter()
            servers = PolicyServers(config, backend)
            specs = _shard_specs(config, plan, part, setup, store, personas, servers)
            plan.held = None  # the shards have their rows (in the specs): drop the graph
            driver = _Driver(config, store, manifest, specs, backend, plan.n, progress,
                             on_step, lease)
            del specs
            driver.start(restore_step, rows or [], restore_files)
            plan.stats = driver.shards.stats
            _record_graph(manifest, plan, part, store)
            driver._save()
            setup_seconds = time.perf_counter() - t_setup
            with _SigintToStop(driver):
                driver.loop()
            t_close = time.perf_counter()
            reports = driver.shards.close()
            for report in reports:
                driver.absorb_files(report["files"])
            driver.drop_unfinished_checkpoints()
            close_seconds = time.perf_counter() - t_close
            _keep(manifest, _write_metrics(store, METRICS, driver.rows,
                                           _metric_columns(env_cls)))
            events = int(sum(r["rows"] for r in reports))
            listed = sum(rec["rows"] for rel, rec in manifest["files"].items()
                         if rel.startswith("events/"))
            if listed != events:  # a chunk written but never reported: a bug, said loudly
                raise IntegrityError(f"the shards wrote {events:,} events but the manifest "
                                     f"lists chunks of {listed:,}")
        except BaseException as exc:
            if lease.lost or isinstance(_cause(exc), LeaseError):
                # Another driver holds the run now: write nothing more into it.
                if driver is not None and driver.shards is not None:
                    driver.shards.kill()
                raise
            if driver is not None and driver.shards is not None:
                # Keep the events of finished steps (listed), free the actors.
                for report in driver.shards.abort():
                    driver.absorb_files(report["files"], save=False)
            _raise_failure(store, manifest, exc)
        finally:
            if servers is not None:
                if servers.servers:
                    try:
                        manifest["policy_servers"] = servers.stats()
                    except Exception as exc:  # a dead server has no stats; the outcome stands
                        manifest["policy_servers"] = f"unavailable: {type(exc).__name__}"
                servers.close()
        rows = driver.rows
        manifest.update(
            status="completed",
            error=None,
            steps_run=len(rows),
            stop_reason=driver.stop_reason,
            events=events,
            shard_peak_rss_mib=[round(r["peak_rss_mib"], 1) for r in reports],
            restarts=driver.prior_restarts + driver.restarts,
        )
        manifest["timings"].update(
            setup_seconds=round(setup_seconds, 4),
            run_seconds=round(driver.run_seconds, 4),
            close_seconds=round(close_seconds, 4),
            # The slowest shard's state writes per checkpoint, plus the driver's
            # bookkeeping (metrics snapshot, manifest, deleting the old checkpoint).
            checkpoint_seconds=round(sum(r.get("checkpoint_seconds", 0.0) for r in rows)
                                     + driver.checkpoint_driver_seconds, 4),
        )
        try:
            lease.check()
            write_manifest(store, manifest)
        except StorageError as exc:
            raise StorageError(f"{exc}; every step ran, but the manifest could not be marked "
                               f"completed. When fixed, finish with: swarm resume {store.uri}"
                               ) from None
    finally:
        lease.release()
    return open_run(store.uri)


def _record_graph(manifest: dict, plan: _GraphPlan, part: Partition, store: RunStore) -> None:
    """Put the built graph's sizes in the manifest; on a resume, check that the shards
    rebuilt the graph the run had (an edge list changed since is an error, not a mix)."""
    graph, partition = _graph_stats(plan, part)
    before = manifest.get("graph", {})
    for key in ("n", "directed_edges"):
        if key in before and before[key] != graph[key]:
            raise LogError(f"{store.uri}: the rebuilt graph has {key}={graph[key]:,}, the run "
                           f"had {before[key]:,}; was the edge list changed? Start a new run")
    manifest["graph"] = {**graph, "source": before.get("source", plan.source)}
    manifest["partition"] = {**partition,
                             "source": manifest.get("partition", {}).get("source", "config")}
    manifest["timings"]["graph_seconds"] = graph["build_seconds"]


def _raise_failure(store: RunStore, manifest: dict, exc: BaseException) -> None:
    """Mark the manifest failed (or interrupted) and raise what the user should see."""
    cause = _cause(exc)
    marked = _mark_failed(store, manifest, type(cause), cause)
    if isinstance(cause, StorageError):
        state = ("the run is marked failed" if marked else
                 "the manifest could not be marked failed either")
        raise StorageError(f"{cause}; {state}. When fixed, continue with: swarm resume "
                           f"{store.uri}") from None
    if cause is not exc and isinstance(cause, SwarmError):
        raise cause from None  # a shard's own error, without Ray's wrapper and traceback
    raise exc


class _SigintToStop:
    """Ctrl-C asks the driver to stop after the current step and write a checkpoint;
    a second Ctrl-C stops at once. Only the main thread can take signals."""

    def __init__(self, driver: _Driver):
        self.driver = driver

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.driver.stop_requested:
            raise KeyboardInterrupt
        self.driver.stop_requested = True
        print("\nstopping after this step and writing a checkpoint "
              "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


class _Driver:
    """The loop over steps: barrier, metrics rows, checkpoints, restarts, stop on Ctrl-C."""

    #: Seconds between manifest writes that only add newly written chunks.
    manifest_interval = 5.0

    def __init__(self, config: RunConfig, store: RunStore, manifest: dict, specs, backend: str,
                 n: int, progress: bool | None, on_step, lease: Lease):
        self.config, self.store, self.manifest = config, store, manifest
        self.lease = lease
        # Checkpoint files and log positions the shards reported, per step, until
        # every shard has written and the checkpoint is declared complete.
        self._pending: dict[int, dict] = {}
        self._manifest_written = time.monotonic()
        self._unsaved = False
        self.backend, self.n, self.on_step = backend, n, on_step
        self.show = sys.stderr.isatty() if progress is None else progress
        self.every = config.checkpoint.every
        self.derive = ENV_REGISTRY[config.env.kind].derive_metrics
        self.restarts = 0
        self.prior_restarts = manifest.get("restarts", 0)  # from before a resume
        self.checkpoint_driver_seconds = 0.0
        self.stop_requested = False
        self.stop_reason = "max_steps"
        self.run_seconds = 0.0
        self.shards = None
        self.last_checkpoint: int | None = manifest.get("checkpoint", {}).get("step")
        if backend == "ray":
            import ray

            # In the object store once, so restarts re-create actors from it.
            self.specs = [ray.put(s) for s in specs]
        else:
            self.specs = specs

    def _make_shards(self, restore_step: int | None, restore_files: tuple[str, ...] = ()):
        if self.backend == "local":
            return _LocalShards(self.specs, restore_step, restore_files)
        return _RayShards(self.specs, restore_step,
                          f"swarm-{self.manifest['run_id']}-a{self.restarts}", restore_files)

    def start(self, restore_step: int | None, rows: list[dict],
              restore_files: tuple[str, ...] = ()) -> None:
        self.rows = rows
        self.start_step = 0 if restore_step is None else restore_step + 1
        self.shards = self._make_shards(restore_step, restore_files)

    # -- the manifest's list of files ----------------------------------------------

    def absorb(self, summaries: list[dict], step: int | None = None) -> None:
        """Take the file records from shard summaries (event chunks, checkpoint files)."""
        for s in summaries:
            self.absorb_files(s.get("files", ()))
            if "checkpoint_files" in s:
                at = s.get("checkpoint", step)
                pending = self._pending.setdefault(at, {"files": {}, "log": {}})
                pending["files"].update((f["path"], _record(f)) for f in s["checkpoint_files"])
                pending["log"][str(s["shard"])] = s["log"]["parts"]

    def absorb_files(self, files, save: bool = True) -> None:
        """List finished chunks; write the manifest when the last write is a while ago
        (``save=False`` on the way out of a failure, which writes it once, marked)."""
        for f in files:
            self.manifest["files"][f["path"]] = _record(f)
            self._unsaved = True
        if save and self._unsaved and (time.monotonic() - self._manifest_written
                                       > self.manifest_interval):
            self._save()

    def _save(self) -> None:
        self.lease.check()
        write_manifest(self.store, self.manifest)
        self._manifest_written, self._unsaved = time.monotonic(), False

    def loop(self) -> None:
        bar = _Progress(self.config.steps, self.n) if self.show else None
        t0 = time.perf_counter()
        try:
            # A resume may find nothing left: all steps run, or the checkpoint's step
            # was the quiescent one the run stopped at.
            while self.start_step < self.config.steps and not (
                    self.rows and is_quiescent(self.rows[-1])):
                try:
                    if self.config.shards == 1:
                        self._loop_single(bar)
                    else:
                        self._loop_exchange(bar)
                    break
                except Exception as exc:
                    if not self._recoverable(exc):
                        raise
                    self._restart(exc)
        finally:
            if bar:
                bar.close()
            self.run_seconds = time.perf_counter() - t0
        if self.rows:
            last = self.rows[-1]
            if is_quiescent(last):
                self.stop_reason = "quiescent"

    # -- steps -------------------------------------------------------------------

    def _emit(self, row: dict, bar) -> bool:
        self.rows.append(row)
        if bar:
            bar.update(row["step"], row)
        if self.on_step:
            self.on_step(row)
        return is_quiescent(row)

    def _due(self, step: int) -> bool:
        return self.every > 0 and (step + 1) % self.every == 0

    def _loop_single(self, bar) -> None:
        # One shard exchanges with nobody: it runs a batch of steps per call (up
        # to a quarter second) and the driver's round trip is paid per batch.
        step, steps = self.start_step, self.config.steps
        while step < steps:
            batch = self.shards.run_steps(step, steps - step, self.every)
            for s in batch:
                self.absorb([s])
                done = self._emit(_row(s["step"], [s], s["seconds"], self.derive), bar)
                if "checkpoint" in s:
                    self._checkpoint_complete(s["step"])
                if done:
                    return
            step += len(batch)
            if self.stop_requested and step < steps:
                self._stop(step - 1)

    def _loop_exchange(self, bar) -> None:
        # Step t+1 is submitted on step t's outbox refs before the driver waits
        # for step t's summaries, so the barrier's round trip overlaps the work.
        # If step t turns out quiescent, step t+1 finds nothing to do (by the env
        # contract) and its results are dropped.
        steps = self.config.steps
        t_prev = time.perf_counter()
        step = self.start_step
        handle = self.shards.submit(step, None, self._due(step))
        while step < steps:
            ahead = None
            if self.shards.pipelined and step + 1 < steps and not self.stop_requested:
                ahead = self.shards.submit(step + 1, [list(r[1:]) for r in handle],
                                           self._due(step + 1))
            summaries, outs = self.shards.collect(handle)
            self.absorb(summaries)
            now = time.perf_counter()
            done = self._emit(_row(step, summaries, now - t_prev, self.derive), bar)
            if "checkpoint" in summaries[0]:
                self._checkpoint_complete(step)
            if done:
                if ahead is not None:
                    # Nothing happened in the step run ahead, but it may have
                    # flushed buffered events: its chunks belong in the manifest.
                    self.absorb(self.shards.collect(ahead)[0])
                return
            t_prev = now
            if self.stop_requested:
                if ahead is not None:  # finish the step already under way
                    step += 1
                    summaries, _ = self.shards.collect(ahead)
                    self.absorb(summaries)
                    done = self._emit(_row(step, summaries, time.perf_counter() - t_prev,
                                           self.derive), bar)
                    if "checkpoint" in summaries[0]:
                        self._checkpoint_complete(step)
                    if done:
                        return
                if step >= steps - 1:  # nothing was left to stop: the run is complete
                    return
                self._stop(step)
            step += 1
            if step < steps:
                handle = ahead if ahead is not None else self.shards.submit(
                    step, outs, self._due(step))

    # -- checkpoints, stops and restarts -------------------------------------------

    def _checkpoint_complete(self, step: int) -> None:
        """Every shard wrote step ``step``: record it with its files, keep the previous one
        (a resume falls back to it if this one is damaged), drop older ones."""
        t0 = time.perf_counter()
        snapshot = _write_metrics(self.store, f"{ckpt.step_dir(step)}/metrics.arrow",
                                  self.rows[: step + 1],
                                  _metric_columns(ENV_REGISTRY[self.config.env.kind]))
        pending = self._pending.pop(step, {"files": {}, "log": {}})
        self._pending = {k: v for k, v in self._pending.items() if k > step}
        pending["files"][snapshot["path"]] = _record(snapshot)
        self.last_checkpoint = step
        previous = self.manifest.get("checkpoint")
        self.manifest["previous_checkpoint"] = previous if previous and previous["step"] < step \
            else None
        self.manifest["checkpoint"] = {"step": step, "path": ckpt.step_dir(step),
                                       "unix": time.time(), **pending}
        self._save()
        # Only older ones: with every=1 the next step's checkpoint may be being
        # written right now (the driver runs one step ahead).
        keep = self.manifest["previous_checkpoint"]["step"] if self.manifest[
            "previous_checkpoint"] else step
        for name in self.store.listdir(STATE):
            if name.startswith("step=") and int(name[5:]) < keep:
                self.store.delete(f"{STATE}/{name}")
        self.checkpoint_driver_seconds += time.perf_counter() - t0

    def drop_unfinished_checkpoints(self) -> None:
        """A step run ahead of a quiescent one may have started a checkpoint; drop it."""
        last = -1 if self.last_checkpoint is None else self.last_checkpoint
        for name in self.store.listdir(STATE):
            if name.startswith("step=") and int(name[5:]) > last:
                self.store.delete(f"{STATE}/{name}")

    def _stop(self, step: int) -> None:
        """Ctrl-C: write a checkpoint of the last finished step and stop."""
        if self.last_checkpoint != step:
            self.absorb(self.shards.checkpoint(step), step)
            self._checkpoint_complete(step)
        raise RunInterrupted(
            f"interrupted after step {step}; checkpoint written. Continue with: "
            f"swarm resume {self.store.uri}", self.store.uri, step)

    def _recoverable(self, exc: Exception) -> bool:
        if self.backend != "ray":
            return False
        from ray.exceptions import RayError, RayTaskError

        # A dead actor, a lost node or lost objects are worth a restart; a
        # shard's own exception (a bug, bad data) would fail again on replay.
        if isinstance(exc, RayTaskError):
            return isinstance(exc.cause, RayError)
        return isinstance(exc, RayError)

    def _restart(self, exc: Exception) -> None:
        self.shards.kill()
        self.shards = None
        limit = self.config.fault_tolerance.max_restarts
        where = (f"the checkpoint of step {self.last_checkpoint}"
                 if self.last_checkpoint is not None else "step 0 (no checkpoint yet)")
        keep = 0 if self.last_checkpoint is None else self.last_checkpoint + 1
        del self.rows[keep:]
        self.start_step = keep
        # The new shards delete the chunks written after the checkpoint; so does the list.
        checkpoint = self.manifest.get("checkpoint") if self.last_checkpoint is not None else None
        _drop_chunks_after(self.manifest["files"], (checkpoint or {}).get("log", {}))
        self._pending.clear()
        files = tuple((checkpoint or {}).get("files", {}))
        while self.shards is None:  # a start that fails (no room yet) uses a restart too
            self.restarts += 1
            self.manifest["restarts"] = self.prior_restarts + self.restarts
            self._save()
            if self.restarts > limit:
                raise ShardFailure(
                    f"a shard died ({type(exc).__name__}: {exc}) and "
                    f"fault_tolerance.max_restarts={limit} restarts are used up. Fix the "
                    f"cause, then continue from {where} with: swarm resume {self.store.uri}"
                ) from exc
            print(f"shard failure ({type(exc).__name__}); restart {self.restarts}/{limit} "
                  f"from {where}", file=sys.stderr, flush=True)
            try:
                self.shards = self._make_shards(self.last_checkpoint, files)
            except Exception as again:
                if not self._recoverable(again):
                    raise
                exc = again


#: The shard's stages timed in every step besides decide (metrics ``<stage>_seconds``).
STAGES = ("deliver", "observe", "apply", "log", "route")


def _row(step: int, summaries: list[dict], seconds: float, derive=None) -> dict:
    """One metrics row from the shards' summaries of one step."""
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
    if derive is not None:
        row.update(derive(totals))
    return row


def _record(file: dict) -> dict:
    """A file record as the manifest keeps it (its path is the key)."""
    return {k: v for k, v in file.items() if k != "path"}


def _metric_columns(env_cls) -> tuple[str, ...]:
    return (*env_cls.metric_names, *env_cls.derived_metric_names)


def _write_metrics(store: RunStore, rel: str, rows: list[dict], metric_names) -> dict:
    """Write the metrics table; returns its file record (with ``path``)."""
    floats = ("seconds", "shard_seconds_max", "checkpoint_seconds", "decide_seconds",
              *(f"{stage}_seconds" for stage in STAGES))
    cols = ["step", "active", "events", "messages", "cross_shard_messages", "cross_shard_bytes",
            "dropped_messages", "held_messages", *floats, *POLICY_METRICS, *metric_names]
    types = {"step": pa.int32(), **{c: pa.float64() for c in floats}}
    for c in metric_names:  # env metrics: float64 when any step's value is a float
        if any(isinstance(r.get(c), (float, np.floating)) for r in rows):
            types[c] = pa.float64()
    table = pa.table({c: pa.array([r.get(c, 0) for r in rows], type=types.get(c, pa.int64()))
                      for c in cols})
    return {"path": rel, **store.write_table(rel, table)}


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
