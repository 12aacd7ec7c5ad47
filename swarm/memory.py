"""The memory guard: estimate a run's peak memory before starting it, refuse what cannot fit.

A run that does not fit dies minutes in, from the kernel's OOM killer, with
nothing useful in its log. The estimate counts what the engine actually
allocates (bytes per agent and per edge of each structure), so a refusal can
say what would fit instead: how many nodes of the cluster's size, or how
many shards per node.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from swarm.errors import ClusterError
from swarm.partition import ID_KINDS

__all__ = ["MemoryEstimate", "estimate_memory", "estimate_from_config", "estimate_for",
           "expected_edges", "check_memory", "available_memory"]

GIB = 1024**3
# A graph built whole in one process (METIS, a graph passed in): measured, building BA
# at n=1e6 (1e7 directed edges, 88 MB of CSR) peaked 412 MiB above the start, ~5x.
BUILD_FACTOR = 5.0
# Per in-edge of a shard when every sender sends at once (the worst step):
# receiver row, sender, edge key, one payload column, masks and copies.
MESSAGE_BYTES_PER_EDGE = 48
# Event buffers between flushes and Arrow chunks being written, per agent.
EVENT_BYTES_PER_AGENT = 64
# A Ray worker process (Python, numpy, pyarrow, torch imported) before any data.
PROCESS_BYTES = 300 * 1024**2
# Ray's own processes on a node (GCS, raylet, agents, log monitor), proportional set size.
RAY_NODE_BYTES = 600 * 1024**2
# A shard's build, per directed edge it holds: edges drawn by others arrive as (src,
# dst) int64 pairs and are merged by one int64 sort key (about 32 B at the peak);
# a generator whose rows come out complete (erdos_renyi, sbm) keeps int32 pieces
# and joins them once (8 B).
LOOSE_BUILD_BYTES_PER_EDGE = 32
PIECE_BUILD_BYTES_PER_EDGE = 8
# Broadcast routing tables, per in-edge: kept (receiver row, edge key, sender) and
# the transient sort while they are built.
FANOUT_BYTES_PER_EDGE = 20
FANOUT_BUILD_BYTES_PER_EDGE = 40
# A Delaunay graph's build triangulates all n points in every generating process:
# measured at n=1e5 and 1e6, qhull's peak is about 650 B per point (points, facets).
DELAUNAY_BUILD_BYTES_PER_POINT = 700
# What one message costs on the wire between shards (receiver id, sender id, payload).
WIRE_BYTES_PER_MESSAGE = 24


@dataclass
class MemoryEstimate:
    """Peak bytes of a run: the driver, the object store, the shards; and the bound on
    bytes that cross between shards in one step."""

    driver: int
    object_store: int
    per_shard: int
    shards: int
    #: Bytes of the shards' slices once built (CSR, agent ids, in-degrees).
    graph_per_shard: int = 0
    #: At most this many bytes cross between shards in a step (every edge used once).
    exchange_per_step: int = 0
    #: Whether the shards build their own slices (else the driver holds the graph).
    shard_local: bool = True

    @property
    def total(self) -> int:
        return self.driver + self.object_store + self.per_shard * self.shards

    def nodes_needed(self, node_bytes: int) -> int:
        """Nodes of ``node_bytes`` each that hold this run (0 if one shard does not fit)."""
        per_node = (node_bytes - RAY_NODE_BYTES) // max(self.per_shard, 1)
        if per_node <= 0:
            return 0
        first = max((node_bytes - RAY_NODE_BYTES - self.driver - self.object_store)
                    // self.per_shard, 0)
        return 1 + math.ceil(max(self.shards - first, 0) / per_node)


def expected_edges(graph_config) -> tuple[int, int] | None:
    """(agents, directed edges) a graph config will build, from the config alone; None
    for an edge list, whose size is known only once its ids are read.

    Examples
    --------
    >>> from swarm import validate_config
    >>> cfg = validate_config({"graph": {"kind": "barabasi_albert", "n": 1000, "m": 3},
    ...                        "env": {"kind": "cascade"}})
    >>> expected_edges(cfg.graph)
    (1000, 6000)
    """
    g = graph_config
    if g.kind == "barabasi_albert":
        return g.n, 2 * g.m * g.n
    if g.kind == "watts_strogatz":
        return g.n, g.k * g.n
    if g.kind == "erdos_renyi":
        return g.n, math.ceil(g.mean_degree * g.n)
    if g.kind == "sbm":
        sizes = g.sizes
        pairs = sum(g.p[i][j] * sizes[i] * (sizes[j] - (i == j))
                    for i in range(len(sizes)) for j in range(len(sizes)))
        return sum(sizes), math.ceil(pairs)
    if g.kind == "configuration":
        return len(g.degrees), sum(g.degrees)
    if g.kind == "delaunay":  # 3n - 3 - hull undirected edges, the hull ~ log n
        return g.n, 6 * g.n
    return None


def estimate_from_config(config, env_cls, backend: str = "ray") -> MemoryEstimate | None:
    """``estimate_memory`` before anything is built: sizes from the config alone (None for
    an edge list; ``estimate_for`` checks it once its ids are read)."""
    sizes = expected_edges(config.graph)
    return None if sizes is None else estimate_for(*sizes, config, env_cls, backend=backend)


def estimate_memory(graph, config, env_cls, backend: str = "ray") -> MemoryEstimate:
    """Estimate the peak memory of running ``config`` on ``graph``.

    Examples
    --------
    >>> from swarm import graph as graphs, validate_config
    >>> from swarm.envs import ENV_REGISTRY
    >>> g = graphs.erdos_renyi(1000, 4.0, seed=1)
    >>> cfg = validate_config({"graph": {"kind": "erdos_renyi", "n": 1000, "mean_degree": 4},
    ...                        "env": {"kind": "cascade"}, "shards": 2})
    >>> est = estimate_memory(g, cfg, ENV_REGISTRY["cascade"])
    >>> est.shards, est.per_shard > est.object_store // 2
    (2, True)
    """
    return estimate_for(graph.n, graph.num_edges, config, env_cls, held=True, backend=backend)


def estimate_for(n: int, edges: int, config, env_cls, held: bool | None = None,
                 backend: str = "ray") -> MemoryEstimate:
    """The estimate for a graph of ``n`` agents and ``edges`` directed edges.

    ``backend="local"``: the shards live in the driver's process and no Ray runs, so
    neither Ray's processes nor a worker process per shard are counted.

    ``held``: the driver holds the whole graph (passed in, or a METIS partition);
    by default decided from the config, as the runner decides.
    """
    k = config.shards
    if held is None:
        held = config.partition not in ID_KINDS
    idx = 4 if n < 2**31 else 8
    n_k, e_k = math.ceil(n / k), math.ceil(edges / k)
    graph = 8 * (n_k + 1) + idx * e_k + 8 * n_k + 4 * n_k  # indptr, indices, ids, in-degree
    broadcasts = env_cls.uses_broadcasts(config.env) and k > 1
    fanout = FANOUT_BYTES_PER_EDGE * e_k if broadcasts else 0
    # The busiest step: the share of agents acting (and of edges used) at once.
    active = env_cls.peak_active_share
    state = n_k * (env_cls.bytes_per_agent(config.env) + active * EVENT_BYTES_PER_AGENT)
    run = PROCESS_BYTES + graph + fanout + state + active * e_k * MESSAGE_BYTES_PER_EDGE
    pieces = config.graph.kind in ("erdos_renyi", "sbm") and config.partition == "contiguous"
    # Whoever draws a Delaunay graph triangulates all of it (each shard, or the driver).
    triangulation = (DELAUNAY_BUILD_BYTES_PER_POINT * n
                     if getattr(config.graph, "kind", None) == "delaunay" else 0)
    if held:
        build = graph  # the rows arrive made
        specs = graph * k  # each shard's rows, once in the object store
        driver = int(max(BUILD_FACTOR, 1.0) * (8 * (n + 1) + 8 * edges)) + PROCESS_BYTES
        driver += 8 * n  # the partition's assignment
        driver += triangulation
        store = specs
    else:
        per_edge = PIECE_BUILD_BYTES_PER_EDGE if pieces else LOOSE_BUILD_BYTES_PER_EDGE
        build = graph + per_edge * e_k + 8 * n_k  # and the row counts
        build += triangulation
        driver = PROCESS_BYTES
        # Edges drawn for another shard's agents cross once, as int64 pairs.
        foreign = 1.0  # under hash, every drawn edge; under contiguous, by generator
        if config.partition == "contiguous":
            foreign = {"erdos_renyi": 0.0, "sbm": 0.0, "delaunay": 0.0, "barabasi_albert": 0.5,
                       "watts_strogatz": getattr(config.graph, "p", 0.0) / 2}.get(
                config.graph.kind, 1.0)
        store = int(16 * edges * foreign * (k - 1) / k) if k > 1 else 0
    build_peak = PROCESS_BYTES + build + (FANOUT_BUILD_BYTES_PER_EDGE * e_k if broadcasts
                                          else 0)
    # A graph-aware partition gives every shard the whole assignment (1 B per agent).
    per_shard = int(max(run, build_peak)) + (n if config.partition not in ID_KINDS else 0)
    cut = (k - 1) / k  # a random graph under any id-blind partition
    exchange = int(WIRE_BYTES_PER_MESSAGE * edges * cut)
    if backend == "local":
        per_shard -= PROCESS_BYTES
    else:
        driver += RAY_NODE_BYTES
    return MemoryEstimate(driver=driver, object_store=store,
                          per_shard=per_shard, shards=k, graph_per_shard=graph,
                          exchange_per_step=exchange, shard_local=not held)


def available_memory(backend: str) -> tuple[int, int]:
    """(total bytes available to the run, bytes of the largest node)."""
    if backend == "ray":
        from swarm.executors import node_memory

        sizes = node_memory()
        if sizes and max(sizes) > 0:
            return sum(sizes), max(sizes)
    avail = _meminfo_available()
    return avail, avail


def _meminfo_available() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(estimate: MemoryEstimate, backend: str = "ray",
                 available: tuple[int, int] | None = None) -> None:
    """Raise ClusterError when ``estimate`` exceeds the memory of the cluster (or machine)."""
    total, node = available if available is not None else available_memory(backend)
    need = estimate.total
    if need <= total and estimate.per_shard <= node:
        return
    driver_side = estimate.driver + estimate.object_store
    fit_here = max(node - driver_side, 0) // estimate.per_shard
    per_node = node // estimate.per_shard
    if per_node == 0:
        advice = (f"One shard alone needs {estimate.per_shard / GIB:.2f} GiB, more than the "
                  "largest node: raise `shards` so each holds fewer agents.")
    else:
        nodes = 1 + math.ceil(max(estimate.shards - fit_here, 0) / per_node)
        advice = (f"A node of this size holds the driver and {fit_here} such shards, or "
                  f"{per_node} shards alone: this run needs about {nodes} nodes of this size.")
    raise ClusterError(
        f"this run needs about {need / GIB:.1f} GiB at its peak (driver and graph "
        f"{estimate.driver / GIB:.1f} GiB, object store {estimate.object_store / GIB:.1f} GiB, "
        f"{estimate.shards} shards x {estimate.per_shard / GIB:.2f} GiB) but the "
        f"{'cluster' if backend == 'ray' else 'machine'} has {total / GIB:.1f} GiB "
        f"(largest node {node / GIB:.1f} GiB). {advice} "
        "Lower graph.n, add nodes, or set memory_check: false to start anyway."
    )


def plan_for(config, nodes: int | None = None, node_bytes: int | None = None
             ) -> tuple[str, bool]:
    """``swarm plan``: the estimate of ``config`` as text, and whether it fits ``nodes``
    nodes of ``node_bytes`` (True when no node count is given and one node suffices)."""
    from swarm.envs import ENV_REGISTRY

    env_cls = ENV_REGISTRY[config.env.kind]
    sizes = expected_edges(config.graph)
    if sizes is None:  # an edge list: its ids, read in one streaming pass
        from swarm.edgelist import edgelist_size

        top, rows = edgelist_size(config.graph.path)
        sizes = (config.graph.n or top, rows * (1 if config.graph.directed else 2))
    n, edges = sizes
    est = estimate_for(n, edges, config, env_cls)
    node_bytes = node_bytes or _meminfo_available()
    need = est.nodes_needed(node_bytes)
    fits = need > 0 and (need <= (nodes or 1))

    def gib(b):
        return f"{b / GIB:,.2f} GiB"

    lines = [
        f"agents {n:,}, directed edges about {edges:,}, {est.shards} shard(s), graph built by "
        f"{'the shards' if est.shard_local else 'the driver (whole graph in one process)'}",
        f"per shard:   {gib(est.per_shard)} at peak (graph slice {gib(est.graph_per_shard)})",
        f"driver:      {gib(est.driver)} (with Ray's processes on its node)",
        f"object store: {gib(est.object_store)} (edges crossing once at build time)",
        f"total:       {gib(est.total)}, {est.total / max(n, 1):,.0f} B per agent",
        f"exchange:    at most {gib(est.exchange_per_step)} per step between shards "
        f"({est.exchange_per_step / max(n, 1):,.1f} B per agent)",
    ]
    if need == 0:
        lines.append(f"nodes:       one shard alone exceeds a node of {gib(node_bytes)}: "
                     "raise `shards`")
    else:
        lines.append(f"nodes:       {need:,} node(s) of {gib(node_bytes)}"
                     + ("" if nodes is None else f"; the cluster has {nodes:,}: "
                        + ("fits" if fits else "does NOT fit")))
    return "\n".join(lines), fits
