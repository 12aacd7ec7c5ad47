"""Which shard owns which agent: id ranges, a hash of the id, a graph partition, or an array.

The partition decides cross-shard traffic (its edge cut) but never the
results: keyed randomness makes every partition give the same events. The
graph-aware kinds cut fewer edges: ``metis`` runs METIS (through pymetis);
``label_propagation`` is the numpy fallback where pymetis is missing: an
ordering of the agents (breadth-first, or by id) cut into equal pieces, then
rounds of balanced label propagation that swap agents towards the shard
holding most of their neighbours.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from swarm.errors import ConfigError, GraphError
from swarm.graph import CSRGraph, ragged_arange
from swarm.rng import mix64, stream_id

__all__ = ["Partition", "PARTITION_KINDS", "ID_KINDS"]

PARTITION_KINDS = ("contiguous", "hash", "metis", "label_propagation")
"""The strategy names ``Partition`` (and ``RunConfig.partition``) accept."""

_GRAPH_KINDS = ("metis", "label_propagation")
#: The kinds that need no graph (an agent's shard follows from its id): under them the
#: shards build their own slices and the driver never holds the graph.
ID_KINDS = ("contiguous", "hash")


class Partition:
    """Agent-to-shard assignment for ``n`` agents over ``num_shards`` shards.

    Parameters
    ----------
    kind : {"contiguous", "hash", "metis", "label_propagation"} or numpy array
        A strategy name, or an explicit int array of length ``n`` giving each
        agent's shard. ``metis`` falls back to ``label_propagation``, with a
        warning, where pymetis is not installed.
    n : int
        Number of agents.
    num_shards : int
        Number of shards.
    graph : CSRGraph, optional
        The graph; required by the graph-aware kinds, which read its edges in
        both directions.
    seed : int
        The run seed; METIS draws its random choices from a seed derived from
        it (``label_propagation`` draws none).

    Attributes
    ----------
    kind : str
        The strategy that produced the assignment (``label_propagation`` when
        ``metis`` fell back, ``explicit`` for an array).
    build_seconds : float
        Time spent computing the assignment.

    Examples
    --------
    >>> from swarm.graph import watts_strogatz
    >>> g = watts_strogatz(2000, 10, 0.01, seed=1)
    >>> part = Partition("label_propagation", g.n, 4, graph=g)
    >>> part.stats(g)["agents_per_shard"]
    [500, 500, 500, 500]
    >>> part.stats(g)["edge_cut_fraction"] < 0.05
    True
    """

    def __init__(self, kind, n: int, num_shards: int, *, graph: CSRGraph | None = None,
                 seed: int = 0):
        if num_shards < 1:
            raise ConfigError(f"shards must be >= 1; got {num_shards}")
        t_start = time.perf_counter()
        self.n, self.num_shards = int(n), int(num_shards)
        self._assignment = None
        dtype = _shard_dtype(self.num_shards)
        if isinstance(kind, np.ndarray):
            a = kind.astype(np.int64)
            if a.shape != (n,) or (n and (a.min() < 0 or a.max() >= num_shards)):
                raise ConfigError(
                    f"an explicit partition must be an int array of length n={n} with values in "
                    f"[0, {num_shards}); got shape {a.shape}"
                )
            self.kind, self._assignment = "explicit", a.astype(dtype)
        elif kind in ID_KINDS:
            self.kind = kind
        elif kind in _GRAPH_KINDS:
            if graph is None:
                raise ConfigError(f"partition {kind!r} reads the graph; pass it: "
                                  f"Partition({kind!r}, n, shards, graph=g)")
            if graph.n != self.n:
                raise ConfigError(f"the graph has {graph.n} agents but n={n}")
            self.kind, assignment = _graph_partition(kind, graph, self.num_shards, seed)
            self._assignment = assignment.astype(dtype)
        else:
            allowed = ", ".join(repr(k) for k in PARTITION_KINDS)
            raise ConfigError(f"partition must be one of {allowed} or an int array of shards; "
                              f"got {kind!r}")
        self.bounds = (np.arange(num_shards + 1, dtype=np.int64) * n) // num_shards
        self.build_seconds = time.perf_counter() - t_start

    def shard_of(self, ids: np.ndarray) -> np.ndarray:
        """The shard of each global agent id (a small int dtype for array-backed kinds)."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.kind == "contiguous":
            return np.searchsorted(self.bounds, ids, side="right") - 1
        if self.kind == "hash":
            h = ids.astype(np.uint64)
            return (mix64(h) % np.uint64(self.num_shards)).astype(np.int64)
        return self._assignment[ids]

    def agents_of(self, shard: int) -> np.ndarray:
        """Sorted global ids of the agents on ``shard``."""
        if self.kind == "contiguous":
            return np.arange(self.bounds[shard], self.bounds[shard + 1], dtype=np.int64)
        owner = self.shard_of(np.arange(self.n)) if self._assignment is None else self._assignment
        return np.flatnonzero(owner == shard).astype(np.int64)

    def contiguous_start(self, shard: int) -> int | None:
        return int(self.bounds[shard]) if self.kind == "contiguous" else None

    def stats(self, graph: CSRGraph) -> dict:
        """Agents and out-edges per shard, the fraction of edges that cross shards, build time."""
        owner = self.shard_of(np.arange(graph.n))
        deg = graph.out_degree()
        cut = 0
        if self.num_shards > 1 and graph.num_edges:
            cut = int(np.count_nonzero(np.repeat(owner, deg) != owner[graph.indices]))
        return {
            "kind": self.kind,
            "shards": self.num_shards,
            "agents_per_shard": np.bincount(owner, minlength=self.num_shards).tolist(),
            "edges_per_shard": np.bincount(owner, weights=deg, minlength=self.num_shards)
            .astype(np.int64)
            .tolist(),
            "cut_edges": cut,
            "edge_cut_fraction": cut / graph.num_edges if graph.num_edges else 0.0,
            "build_seconds": round(self.build_seconds, 4),
        }


def _shard_dtype(num_shards: int) -> type:
    # An assignment costs one entry per agent; int8 keeps 1e7 agents at 10 MB.
    for dtype in (np.int8, np.int16, np.int32):
        if num_shards - 1 <= np.iinfo(dtype).max:
            return dtype
    return np.int64


# --- graph-aware kinds --------------------------------------------------------


def _graph_partition(kind: str, graph: CSRGraph, k: int, seed: int) -> tuple[str, np.ndarray]:
    """The kind that actually ran and its assignment (int64, one shard per agent)."""
    if k == 1:
        return kind, np.zeros(graph.n, dtype=np.int64)
    indptr, adj = _symmetric_adjacency(graph)
    if kind == "metis":
        try:
            import pymetis
        except ImportError:
            warnings.warn(
                "partition 'metis' needs pymetis, which is not installed; using "
                "'label_propagation' instead (a larger edge cut). Fix: pip install pymetis",
                stacklevel=3,
            )
        else:
            return kind, _metis(pymetis, indptr, adj, k, seed)
    return "label_propagation", _label_propagation(indptr, adj, k)


def _symmetric_adjacency(graph: CSRGraph) -> tuple[np.ndarray, np.ndarray]:
    """CSR of the undirected graph: every edge both ways, no self-loops, no duplicates.

    One sort of ``src * n + dst`` orders and exposes duplicates (np.unique
    would sort too, but ~100x slower on 1e7 int64).
    """
    n = graph.n
    src, dst = graph.sources(), graph.indices.astype(np.int64, copy=False)
    keep = src != dst
    src, dst = src[keep], dst[keep]
    key = np.concatenate([src * n + dst, dst * n + src])
    del src, dst, keep
    key.sort()
    if key.size:
        first = np.empty(key.shape, dtype=bool)
        first[0] = True
        np.not_equal(key[1:], key[:-1], out=first[1:])
        key = key[first]
    s, d = np.divmod(key, n)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(s, minlength=n), out=indptr[1:])
    return indptr, d


# METIS runs in a child process of its own: in a process where Ray is running
# (the driver), repeated calls with the same seed were seen to return
# different partitions (1 in 10 at n=2e4), so it gets a quiet process.
_METIS_CHILD = """
import sys
import numpy as np
import pymetis
folder, k, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
indptr, adj = np.load(folder + "/indptr.npy"), np.load(folder + "/adj.npy")
options = pymetis.Options(seed=seed)
csr = getattr(pymetis, "CSRAdjacency", None)  # pymetis >= 2025.2; xadj/adjncy before
if csr is not None:
    result = pymetis.part_graph(k, csr(indptr, adj), options=options)
else:
    result = pymetis.part_graph(k, xadj=indptr, adjncy=adj, options=options)
np.save(folder + "/parts.npy", np.asarray(result[1], dtype=np.int64))
"""


def _metis(pymetis, indptr: np.ndarray, adj: np.ndarray, k: int, seed: int) -> np.ndarray:
    import subprocess
    import sys
    import tempfile

    if adj.size == 0:  # nothing to cut; METIS has nothing to work with either
        return (np.arange(indptr.size - 1, dtype=np.int64) * k) // (indptr.size - 1)
    # METIS draws random matchings from its own generator; seed it from the
    # run seed so a run's partition (and so its timings) repeat.
    h = mix64(np.array([seed ^ stream_id("partition.metis")], dtype=np.uint64))
    metis_seed = int(h[0] & np.uint64(0x7FFFFFFF))
    with tempfile.TemporaryDirectory(prefix="swarm-metis-") as folder:
        np.save(f"{folder}/indptr.npy", indptr)
        np.save(f"{folder}/adj.npy", adj)
        proc = subprocess.run([sys.executable, "-c", _METIS_CHILD, folder, str(k),
                               str(metis_seed)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise GraphError(f"METIS failed on this graph ({proc.stderr.strip()[-500:]}); "
                             "use partition: label_propagation or hash")
        return np.load(f"{folder}/parts.npy")


def _label_propagation(indptr: np.ndarray, adj: np.ndarray, k: int,
                       max_rounds: int = 30) -> np.ndarray:
    """Two orders, each cut into k equal pieces and refined; the lower cut wins.

    The breadth-first order suits graphs whose ids say nothing (BA, ER); the
    id order suits those numbered with locality (a ring lattice, SBM blocks,
    many edge lists), where it beats the breadth-first start several times.
    """
    n = indptr.size - 1
    pieces = (np.arange(n, dtype=np.int64) * k) // n
    by_bfs = np.empty(n, dtype=np.int64)
    by_bfs[_bfs_order(indptr, adj)] = pieces
    best, best_cut = _refine(indptr, adj, by_bfs, k, max_rounds)
    by_id, id_cut = _refine(indptr, adj, pieces, k, max_rounds)
    return by_id if id_cut < best_cut else best


def _components(indptr: np.ndarray, adj: np.ndarray) -> np.ndarray:
    """Connected component of each agent, labelled by its smallest member.

    Hook-and-jump: every tree root adjacent to a smaller root hooks onto it,
    then pointer jumping flattens the trees to stars. Each round merges every
    tree with at least one neighbour, so O(log n) rounds of O(edges), whatever
    the diameter.
    """
    n = indptr.size - 1
    src = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    upper = src < adj  # each undirected edge once
    src, dst = src[upper], adj[upper]
    label = np.arange(n, dtype=np.int64)
    while src.size:
        ls, ld = label[src], label[dst]
        open_ = ls != ld
        src, dst, ls, ld = src[open_], dst[open_], ls[open_], ld[open_]
        if not src.size:
            break
        np.minimum.at(label, np.maximum(ls, ld), np.minimum(ls, ld))
        while True:
            jumped = label[label]
            if np.array_equal(jumped, label):
                break
            label = jumped
    return label


def _bfs_order(indptr: np.ndarray, adj: np.ndarray) -> np.ndarray:
    """Agents in breadth-first order, one component after another.

    All components grow at once from their smallest agent, one level per
    round: a level's out-edges are gathered in frontier order and each newly
    reached agent keeps its first arrival, so neighbours stay near their
    parent in the order. A stable sort by component then makes each
    component contiguous. Costs one round per level of the deepest search.
    """
    n = indptr.size - 1
    label = _components(indptr, adj)
    frontier = np.flatnonzero(label == np.arange(n))
    seen = np.zeros(n, dtype=bool)
    seen[frontier] = True
    levels = [frontier]
    while frontier.size:
        starts = indptr[frontier]
        reached = adj[ragged_arange(starts, indptr[frontier + 1] - starts)]
        reached = reached[~seen[reached]]
        if not reached.size:
            break
        by_agent = np.argsort(reached, kind="stable")
        first = np.empty(reached.shape, dtype=bool)
        first[by_agent[0]] = True
        sorted_agents = reached[by_agent]
        first[by_agent[1:]] = sorted_agents[1:] != sorted_agents[:-1]
        frontier = reached[first]
        seen[frontier] = True
        levels.append(frontier)
    order = np.concatenate(levels)
    return order[np.argsort(label[order], kind="stable")]


def _refine(indptr: np.ndarray, adj: np.ndarray, owner: np.ndarray, k: int,
            max_rounds: int, min_gain: float = 1e-4) -> tuple[np.ndarray, int]:
    """Balanced label propagation: swap agents towards their neighbours' shard.

    Each round, an agent gains by moving to the shard holding most of its
    neighbours. For each ordered pair of shards (a, b) only min(wanting a->b,
    wanting b->a) agents move each way, the highest gains first, so shard
    sizes never change. Moves are simultaneous, so a round can undo some of
    its own gain: stop once a round improves the cut by under ``min_gain`` of
    the edges, keeping the best assignment seen. The per-shard neighbour
    counts are built once and then updated from the movers' edges only.
    Returns the assignment and its cut (in directed edges of ``adj``).
    """
    n = owner.size
    if adj.size == 0:
        return owner, 0
    deg = np.diff(indptr)
    counts = np.bincount(np.repeat(np.arange(n, dtype=np.int64) * k, deg) + owner[adj],
                         minlength=n * k).reshape(n, k)
    flat = counts.reshape(-1)
    agents = np.arange(n)
    best, best_cut = owner, np.inf
    for _ in range(max_rounds):
        here = counts[agents, owner]
        cut = adj.size - int(here.sum())
        if cut > best_cut - min_gain * adj.size:
            if cut < best_cut:
                best, best_cut = owner, cut
            break
        best, best_cut = owner, cut
        target = counts.argmax(axis=1)
        gain = counts[agents, target] - here
        movers = np.flatnonzero(gain > 0)
        pair = owner[movers] * k + target[movers]
        wanting = np.bincount(pair, minlength=k * k).reshape(k, k)
        quota = np.minimum(wanting, wanting.T).ravel()
        by_pair = np.lexsort((-gain[movers], pair))  # highest gain first, then lowest id
        pair_sorted = pair[by_pair]
        rank = np.arange(movers.size) - np.searchsorted(pair_sorted, pair_sorted)
        chosen = movers[by_pair[rank < quota[pair_sorted]]]
        if not chosen.size:
            break
        old, new = owner[chosen], target[chosen]
        owner = owner.copy()
        owner[chosen] = new
        d = deg[chosen]
        rows = adj[ragged_arange(indptr[chosen], d)] * k
        np.subtract.at(flat, rows + np.repeat(old, d), 1)
        np.add.at(flat, rows + np.repeat(new, d), 1)
    return best, int(best_cut)
