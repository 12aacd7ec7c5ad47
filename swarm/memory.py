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

__all__ = ["MemoryEstimate", "estimate_memory", "estimate_from_config", "estimate_for",
           "expected_edges", "check_memory", "available_memory"]

GIB = 1024**3
# Measured: building BA at n=1e6 (1e7 directed edges, 88 MB of CSR) peaked
# 412 MiB above the start, about 5x the finished graph.
BUILD_FACTOR = 5.0
# Per in-edge of a shard when every sender broadcasts at once (the worst
# step): receiver row, sender, edge id, one payload column, masks and copies.
MESSAGE_BYTES_PER_EDGE = 48
# Event buffers between flushes and Arrow chunks being written, per agent.
EVENT_BYTES_PER_AGENT = 64
# A Ray worker process (Python, numpy, pyarrow, torch imported) before any data.
PROCESS_BYTES = 300 * 1024**2


@dataclass
class MemoryEstimate:
    """Peak bytes of a run: the driver, the object store copy of the shard specs, the shards."""

    driver: int
    object_store: int
    per_shard: int
    shards: int

    @property
    def total(self) -> int:
        return self.driver + self.object_store + self.per_shard * self.shards


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
    return None


def estimate_from_config(config, env_cls) -> MemoryEstimate | None:
    """``estimate_memory`` before anything is built: sizes from the config alone (None for
    an edge list; ``estimate_for`` checks it once its ids are read)."""
    sizes = expected_edges(config.graph)
    return None if sizes is None else estimate_for(*sizes, config, env_cls)


def estimate_memory(graph, config, env_cls) -> MemoryEstimate:
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
    return estimate_for(graph.n, graph.num_edges, config, env_cls)


def estimate_for(n: int, edges: int, config, env_cls) -> MemoryEstimate:
    """The estimate for a graph of ``n`` agents and ``edges`` directed edges."""
    k = config.shards
    csr = 8 * (n + 1) + 8 * edges
    # Shard specs: CSR slices (indptr, indices, row shift, in-degree) and, for
    # broadcasting envs on several shards, the fan-out tables (12 B per edge).
    fanout = 12 * edges + 24 * n if (env_cls.uses_broadcasts(config.env) and k > 1) else 0
    specs = 8 * edges + 28 * n + fanout
    driver = int(max(BUILD_FACTOR * csr, csr + specs + 8 * n)) + PROCESS_BYTES
    n_k, e_k = math.ceil(n / k), math.ceil(edges / k)
    # A graph-aware partition gives every shard the whole assignment (1 B per agent).
    assignment = n if config.partition not in ("contiguous", "hash") else 0
    per_shard = (PROCESS_BYTES + n_k * (env_cls.state_bytes_per_agent + EVENT_BYTES_PER_AGENT)
                 + e_k * MESSAGE_BYTES_PER_EDGE + assignment)
    return MemoryEstimate(driver=driver, object_store=specs, per_shard=per_shard, shards=k)


def available_memory(backend: str) -> tuple[int, int]:
    """(total bytes available to the run, bytes of the largest node)."""
    if backend == "ray":
        import ray

        nodes = [nd for nd in ray.nodes() if nd.get("Alive")]
        sizes = [int(nd["Resources"].get("memory", 0) + nd["Resources"].get(
            "object_store_memory", 0)) for nd in nodes]
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
