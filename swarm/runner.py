"""``run`` and ``resume``: plan the graph, partition, start the shards, keep the manifest true.

The driver never holds the graph of a run built from its config under a
contiguous or hash partition: it sizes it from the config (an edge list in
one streaming pass of its ids), and the shards build their own slices
(``swarm.shardgraph``). Only a graph passed in from Python, or a METIS /
label-propagation partition, is held whole by the driver, which then hands
each shard its rows. The step loop is ``swarm.driver``, where shards run is
``swarm.executors``, the metrics rows ``swarm.metrics``.
"""

from __future__ import annotations

import os
import sys
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
from swarm.driver import Driver, SigintToStop, drop_chunks_after, kept
from swarm.edgelist import edgelist_size
from swarm.envs.base import ENV_REGISTRY
from swarm.errors import (
    ConfigError,
    GraphError,
    IntegrityError,
    LeaseError,
    LogError,
    RunInterrupted,
    StorageError,
    SwarmError,
)
from swarm.executors import connect
from swarm.graph import CSRGraph, ragged_arange
from swarm.graphgen import build_graph, graph_seed, graph_size
from swarm.lease import Lease
from swarm.memory import check_memory, estimate_for, estimate_from_config, estimate_memory
from swarm.metrics import metric_columns, timing_columns, write_metrics
from swarm.partition import ID_KINDS, Partition
from swarm.policy_actors import PolicyServers
from swarm.population import check_population, load_personas
from swarm.registry import POLICIES
from swarm.rng import KeyedRNG
from swarm.rundir import (
    FORMAT,
    METRICS,
    STATE,
    TIMINGS,
    Run,
    check_files,
    create_run_dir,
    open_run,
    verify_files,
    versions,
    write_manifest,
)
from swarm.shard import ShardSpec
from swarm.shardgraph import GraphSource, index_dtype
from swarm.storage import RunStore, hash_file

__all__ = ["run", "resume", "build_graph"]


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
    if partition is not None or config.partition not in ID_KINDS:
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
            steps=config.steps,
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
        # Edges drawn or listed twice merge into one; self-loops are dropped (an edge
        # list's, a rewired ring edge's); both counted here, directed edges.
        "merged_edges": sum(s.get("merged_edges", 0) for s in stats),
        "self_loops_dropped": sum(s.get("self_loops", 0) for s in stats),
        "graph_bytes_per_shard": [s["graph_bytes"] for s in stats],
        # Each shard's build: draw, merge into rows, in-degrees and tables; its memory then.
        "shard_build": [{k: s[k] for k in ("draw_seconds", "assemble_seconds",
                                            "finish_seconds", "peak_rss_mib")} for s in stats],
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
    connect(backend, address)
    check = None
    if config.memory_check:
        # From the config alone, before anything is allocated: a graph too big
        # for the cluster is refused in a second, not after minutes of building.
        estimate = estimate_from_config(config, env_cls, backend) if graph is None else None
        if estimate is not None:
            check_memory(estimate, backend=backend)

        def check(n: int, edges: int) -> None:
            check_memory(estimate_for(n, edges, config, env_cls, backend=backend),
                         backend=backend)
    plan = _plan_graph(config, graph, partition, check)
    if plan.n < 1:
        raise GraphError("the graph has no agents")
    part, env_cls, setup, personas = _prepare(config, plan, partition, backend)
    if config.memory_check and plan.source == "argument":  # the others were checked above
        check_memory(estimate_memory(plan.held, config, env_cls, backend), backend=backend)
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
                 "metrics": list(metric_columns(env_cls))},
            timings={"graph_seconds": round(plan.seconds, 4)},
        )
        # What `swarm resume` cannot rebuild from the config alone.
        if plan.source == "argument":
            _keep(manifest, ckpt.write_arrays(store, GRAPH_FILE, {"indptr": plan.held.indptr,
                                                                  "indices": plan.held.indices},
                                              {"directed": plan.held.directed}))
        if part.kind not in ID_KINDS:
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
    prior = open_run(path)
    store = prior.store
    # Before the lease, so that nothing is written for a run that is refused.
    config = validate_config(prior.manifest["config"])
    _check_resume_trust(config, store, trust_endpoint)
    lease = Lease(store, attempt=prior.manifest.get("resumes", 0) + 2).acquire()
    try:
        # Read again under the lease: a driver that just finished changed it.
        manifest = open_run(store.uri).manifest
        if manifest.get("status") == "completed":
            raise LogError(f"{prior.path} already completed; nothing to resume")
        config = validate_config(manifest["config"])
        if manifest["config"] != prior.manifest["config"]:
            # The manifest was replaced since the check above: check what will run.
            _check_resume_trust(config, store, trust_endpoint)
        backend = backend or manifest.get("backend", "ray")
        if backend not in ("ray", "local"):
            raise ConfigError(f"backend must be 'ray' or 'local'; got {backend!r}")
        connect(backend, address)
        plan, saved = _saved_graph(config, store, manifest)
        part, env_cls, setup, personas = _prepare(config, plan, saved, backend)
        restore, rows = _choose_checkpoint(store, manifest)
    except BaseException:
        lease.release()
        raise
    if "env" not in manifest:  # killed before its first full manifest
        manifest["env"] = {"kind": env_cls.name, "event_types": list(env_cls.event_types),
                           "metrics": list(metric_columns(env_cls)),
                           # What a reader shows first (analysis never imports the env).
                           "summary_metrics": list(env_cls.summary_metrics
                                                   or env_cls.derived_metric_names
                                                   or env_cls.metric_names)}
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


def _check_resume_trust(config: RunConfig, store: RunStore, trust: bool) -> None:
    """Each policy kind in the config checks a run from elsewhere before it resumes
    (``check_resumed_run``: LLM-style agents refuse another user's endpoints unless
    ``trust``)."""
    for kind in sorted({g.policy.kind for g in config.population.groups} - {"default"}):
        check = getattr(POLICIES[kind], "check_resumed_run", None)
        if check is not None:
            check(config, store, trust)


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
        drop_chunks_after(manifest["files"], ckp.get("log", {}))
        return ckp["step"], rows
    if problems:
        _warn(f"{'; '.join(problems)}; no intact checkpoint is left, so the run starts again "
              f"from step 0 (steps 0..{newest} are run again; keyed randomness makes them "
              "the same)")
    manifest.pop("checkpoint", None)
    manifest.pop("previous_checkpoint", None)
    drop_chunks_after(manifest["files"], {})
    return None, []


def _verify_chunks_before(store: RunStore, files: dict[str, dict], log: dict) -> None:
    """The event chunks a checkpoint keeps (those before its log position) must be there."""
    keep = {rel: rec for rel, rec in files.items() if kept(rel, log)}
    check_files(store, keep, "event chunk")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _prepare(config: RunConfig, plan: _GraphPlan, partition: np.ndarray | None, backend: str):
    """Partition, the env's global set-up and the population, shared by run and resume.

    Everything here can fail on bad input, and does so before anything is written.
    """
    part = Partition(config.partition if partition is None else partition, plan.n,
                     config.shards, graph=plan.held, seed=config.seed)
    env_cls = ENV_REGISTRY[config.env.kind]
    try:
        setup = env_cls.prepare(config.env, plan.n, KeyedRNG(config.seed))
        if env_cls.needs_graph(config.env):
            # Set-up that needs the whole graph (a diameter): built once, here, and
            # handed to the shards in slices rather than built again there.
            if plan.held is None:
                plan.held = build_graph(config)
            setup.update(env_cls.prepare_graph(config.env, plan.held))
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
            driver = Driver(config, store, manifest, specs, backend, plan.n, progress,
                             on_step, lease)
            del specs
            driver.start(restore_step, rows or [], restore_files)
            plan.stats = driver.shards.stats
            _record_graph(manifest, plan, part, store)
            driver._save()
            setup_seconds = time.perf_counter() - t_setup
            with SigintToStop(driver):
                driver.loop()
            t_close = time.perf_counter()
            reports = driver.shards.close()
            for report in reports:
                driver.absorb_files(report["files"])
            driver.drop_unfinished_checkpoints()
            close_seconds = time.perf_counter() - t_close
            _keep(manifest, write_metrics(store, METRICS, driver.rows,
                                           metric_columns(env_cls), timing_names=()))
            _keep(manifest, write_metrics(store, TIMINGS, driver.rows, None,
                                           timing_columns(env_cls)))
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


