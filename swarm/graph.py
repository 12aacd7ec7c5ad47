"""Graphs in, CSR out: the population's social graph as out-edge arrays.

networkx is the front door (any Graph/DiGraph), edge-list files (text or
Parquet) are the bulk door, and the built-in generators produce CSR directly
from vectorized numpy, because a networkx graph of a million nodes costs tens
of seconds and over a gigabyte. Internally every graph is directed: an
undirected edge becomes two directed ones. Out-edges are who receives what an
agent emits.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from swarm.errors import GraphError

#: Most agents a graph may have: ten times the 10^10 a 100-node cluster is meant to
#: hold, so that a typo or a stray id is a named error, not a huge allocation.
MAX_AGENTS = 10**11

__all__ = [
    "CSRGraph",
    "ragged_arange",
    "from_edges",
    "from_networkx",
    "read_edgelist",
    "barabasi_albert",
    "watts_strogatz",
    "erdos_renyi",
    "sbm",
    "configuration",
    "delaunay",
    "bfs_levels",
    "double_sweep_diameter",
]


@dataclass(frozen=True)
class CSRGraph:
    """Out-edges in compressed sparse row form.

    ``indices[indptr[v]:indptr[v + 1]]`` are the agents ``v`` sends to, sorted.
    Keyed randomness identifies an edge by its two ends
    (``swarm.graphgen.edge_key``), never by its position, so nothing depends on
    how the graph is partitioned.
    """

    indptr: np.ndarray
    indices: np.ndarray
    directed: bool = False

    @property
    def n(self) -> int:
        return int(self.indptr.shape[0] - 1)

    @property
    def num_edges(self) -> int:
        """Directed edges stored (twice the undirected edge count)."""
        return int(self.indices.shape[0])

    def out_degree(self) -> np.ndarray:
        return np.diff(self.indptr)

    def in_degree(self) -> np.ndarray:
        return np.bincount(self.indices, minlength=self.n)

    def sources(self) -> np.ndarray:
        """The source agent of every edge (the COO row array)."""
        return np.repeat(np.arange(self.n, dtype=np.int64), self.out_degree())

    def stats(self) -> dict:
        deg = self.out_degree()
        return {
            "n": self.n,
            "directed_edges": self.num_edges,
            "directed": self.directed,
            "mean_out_degree": float(deg.mean()) if self.n else 0.0,
            "max_out_degree": int(deg.max()) if self.n else 0,
        }

    def to_networkx(self):
        """A networkx DiGraph (or Graph when undirected) of this graph; small n only."""
        import networkx as nx

        g = nx.DiGraph() if self.directed else nx.Graph()
        g.add_nodes_from(range(self.n))
        g.add_edges_from(zip(self.sources().tolist(), self.indices.tolist(), strict=True))
        return g


def from_edges(
    src: np.ndarray, dst: np.ndarray, n: int, directed: bool = False, dedupe: bool = True
) -> CSRGraph:
    """Build CSR from edge arrays; drops self-loops and merges parallel edges.

    One sort of the combined key ``src * n + dst`` both orders the edges by
    source and exposes duplicates (np.unique would sort too, but ~100x slower
    on 1e7 int64 here).

    Examples
    --------
    >>> g = from_edges(np.array([0, 1, 1]), np.array([1, 2, 2]), n=3)
    >>> g.indptr.tolist(), g.indices.tolist()
    ([0, 1, 3, 4], [1, 0, 2, 1])
    """
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    if src.shape != dst.shape:
        raise GraphError(f"src and dst differ in length: {src.shape[0]} vs {dst.shape[0]}")
    if n < 0:
        raise GraphError(f"n must be >= 0; got {n}")
    if src.size and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= n):
        raise GraphError(f"edge endpoints must be in [0, {n}); got [{min(src.min(), dst.min())}, "
                         f"{max(src.max(), dst.max())}]")
    keep = src != dst
    if not directed:
        key = np.concatenate([src[keep] * n + dst[keep], dst[keep] * n + src[keep]])
    else:
        key = src[keep] * n + dst[keep]
    key.sort()
    if dedupe and key.size:
        first = np.empty(key.shape, dtype=bool)
        first[0] = True
        np.not_equal(key[1:], key[:-1], out=first[1:])
        key = key[first]
    s, d = np.divmod(key, n) if n else (key, key)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(s, minlength=n), out=indptr[1:])
    return CSRGraph(indptr=indptr, indices=d.astype(np.int64, copy=False), directed=directed)


def from_networkx(graph) -> tuple[CSRGraph, list | None]:
    """Convert any networkx Graph or DiGraph.

    Returns the CSR graph and the node labels in agent-id order (``None`` when
    the nodes already are 0..n-1). Agent ``i`` is ``labels[i]``.
    """
    import networkx as nx

    if not isinstance(graph, nx.Graph):
        raise GraphError(f"expected a networkx Graph or DiGraph; got {type(graph).__name__}")
    nodes = list(graph.nodes())
    n = len(nodes)
    identity = all(isinstance(v, (int, np.integer)) for v in nodes) and set(nodes) == set(range(n))
    index = None if identity else {v: i for i, v in enumerate(nodes)}
    m = graph.number_of_edges()
    src = np.empty(m, dtype=np.int64)
    dst = np.empty(m, dtype=np.int64)
    for j, (u, v) in enumerate(graph.edges()):
        src[j], dst[j] = (u, v) if index is None else (index[u], index[v])
    csr = from_edges(src, dst, n, directed=graph.is_directed())
    return csr, (None if identity else nodes)


def read_edgelist(
    path: str | os.PathLike, directed: bool = False, n: int | None = None,
    check: Callable[[int, int], None] | None = None,
) -> CSRGraph:
    """Read an edge list: text (``u v`` per line, ``#`` comments) or Parquet (src, dst columns).

    Node ids must be non-negative integers; ``n`` defaults to max id + 1.
    A malformed text line raises GraphError naming the file, line number and content.
    ``check(n, directed_edges)`` runs once the ids are read, before any array
    is sized by ``n`` (the memory guard: one id of 2e9 means 2e9 agents).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise GraphError(f"edge list not found: {path}")
    from swarm.edgelist import read_all

    src, dst = read_all(path)
    if src.size and min(src.min(), dst.min()) < 0:
        raise GraphError(f"{path}: node ids must be non-negative integers")
    top = int(max(src.max(), dst.max())) + 1 if src.size else 0
    if n is None:
        n = top
    elif n < top:
        raise GraphError(f"{path}: graph.n={n} but the edge list names node {top - 1}; "
                         f"set n >= {top} or leave it out")
    if n > MAX_AGENTS:
        raise GraphError(f"{path}: the edge list names node {top - 1:,}, so the graph would "
                         f"have {n:,} agents; ids must be below {MAX_AGENTS:,}. Renumber "
                         "the nodes 0..n-1")
    if check is not None:
        check(n, src.shape[0] * (1 if directed else 2))
    return from_edges(src, dst, n, directed=directed)


def ragged_arange(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(s, s + c)`` for each (s, c), in one cumulative sum.

    Examples
    --------
    >>> ragged_arange(np.array([5, 0, 9]), np.array([2, 0, 3])).tolist()
    [5, 6, 9, 10, 11]
    """
    nz = counts > 0
    st, ct = starts[nz], counts[nz]
    total = int(ct.sum())
    out = np.ones(total, dtype=np.int64)
    if total == 0:
        return out
    offsets = np.cumsum(ct) - ct
    out[0] = st[0]
    out[offsets[1:]] = st[1:] - (st[:-1] + ct[:-1] - 1)
    np.cumsum(out, out=out)
    return out


# --- distances ----------------------------------------------------------------


def bfs_levels(indptr: np.ndarray, indices: np.ndarray, source: int) -> np.ndarray:
    """Hop distances from ``source`` along out-edges: int32, -1 where unreachable.

    One set of numpy operations per level, over the CSR slices of the whole
    frontier at once (``ragged_arange``): O(n + m) array work in all, and a
    Python loop only as long as the eccentricity of ``source``.

    Examples
    --------
    >>> g = from_edges(np.array([0, 1, 2]), np.array([1, 2, 3]), n=5)  # a path, node 4 alone
    >>> bfs_levels(g.indptr, g.indices, 1).tolist()
    [1, 0, 1, 2, -1]
    """
    indptr = np.asarray(indptr)
    n = indptr.shape[0] - 1
    if not 0 <= source < n:
        raise GraphError(f"source must be in [0, {n}); got {source}")
    dist = np.full(n, -1, dtype=np.int32)
    dist[source] = 0
    # A node reached from two frontier nodes appears twice; one of its positions wins a
    # write into ``slot`` and only that one is kept: dedup without a sort per level.
    slot = np.empty(n, dtype=np.int64)
    frontier = np.array([source], dtype=np.int64)
    level = 0
    while frontier.size:
        level += 1
        starts = indptr[frontier]
        nbrs = indices[ragged_arange(starts, indptr[frontier + 1] - starts)]
        nbrs = nbrs[dist[nbrs] < 0]
        pos = np.arange(nbrs.shape[0], dtype=np.int64)
        slot[nbrs] = pos
        frontier = nbrs[slot[nbrs] == pos].astype(np.int64, copy=False)
        dist[frontier] = level
    return dist


def double_sweep_diameter(indptr: np.ndarray, indices: np.ndarray, start: int = 0
                          ) -> tuple[int, int]:
    """Bounds ``(lower, upper)`` on the diameter from two BFS sweeps (Magnien et al., 2009).

    A BFS from ``start`` finds a farthest node ``u``; a BFS from ``u`` gives
    ``lower = ecc(u)``, a lower bound that is exact on trees and usually exact
    or a few hops short elsewhere (31 vs 29 on a 3,000-point ``delaunay``).
    ``upper = 2 * ecc(start)`` (every pair is within ``ecc(start)`` of ``start``).
    The bounds are for an undirected graph (stored in both directions); on a
    directed one edges are followed as stored and the bounds are heuristics.
    On a disconnected graph both bounds are of the connected component of
    ``start`` only (the diameter of the whole graph is infinite).

    Examples
    --------
    >>> n = 10
    >>> g = from_edges(np.arange(n - 1), np.arange(1, n), n=n)  # the path 0 - 1 - ... - 9
    >>> double_sweep_diameter(g.indptr, g.indices, start=4)
    (9, 10)
    """
    first = bfs_levels(indptr, indices, start)
    far = int(np.argmax(first))
    second = bfs_levels(indptr, indices, far)
    return int(second.max()), 2 * int(first.max())


# --- generators ---------------------------------------------------------------
#
# The whole graph in one process, drawn by ``swarm.graphgen`` exactly as a run's
# shards draw their slices (same seed, same graph, for any shard count).


def _whole(seed: int, **fields) -> CSRGraph:
    from types import SimpleNamespace

    from swarm.graphgen import whole_graph

    return whole_graph(SimpleNamespace(**fields), int(seed))


def barabasi_albert(n: int, m: int, seed: int = 0) -> CSRGraph:
    """Preferential attachment (Barabási–Albert): a star on ``m + 1`` nodes, then each
    node attaches ``m`` edges to endpoints copied uniformly from the earlier nodes' edges
    (Batagelj & Brandes 2005), which is attachment proportional to degree. Repeated
    picks by one node merge, so a few nodes end with fewer than ``m`` new edges."""
    if m < 1 or m >= n:
        raise GraphError(f"barabasi_albert needs 1 <= m < n; got m={m}, n={n}")
    return _whole(seed, kind="barabasi_albert", n=n, m=m)


def watts_strogatz(n: int, k: int, p: float, seed: int = 0) -> CSRGraph:
    """Ring lattice with ``k`` nearest neighbours, each edge rewired with probability ``p``.

    A rewired edge keeps its source and takes a uniform random target; edges
    that become self-loops or duplicates are dropped (networkx resamples
    them instead; at small p the difference is a fraction p*k/n of edges).
    """
    if k < 2 or k % 2 or k >= n:
        raise GraphError(f"watts_strogatz needs an even k with 2 <= k < n; got k={k}, n={n}")
    if not 0 <= p <= 1:
        raise GraphError(f"watts_strogatz needs 0 <= p <= 1; got p={p}")
    return _whole(seed, kind="watts_strogatz", n=n, k=k, p=p)


def erdos_renyi(n: int, mean_degree: float, seed: int = 0) -> CSRGraph:
    """G(n, p) with p = mean_degree / (n - 1), exactly: binomial edge counts per cell of
    the adjacency matrix, then distinct uniform pairs in each cell."""
    if n < 2:
        raise GraphError(f"erdos_renyi needs n >= 2; got n={n}")
    if not 0 <= mean_degree <= n - 1:
        raise GraphError(f"erdos_renyi needs 0 <= mean_degree <= n - 1; got {mean_degree}")
    return _whole(seed, kind="erdos_renyi", n=n, mean_degree=mean_degree)


def sbm(sizes: Sequence[int], p: Sequence[Sequence[float]], seed: int = 0) -> CSRGraph:
    """Stochastic block model: blocks of ``sizes``, edge probability ``p[a][b]`` between blocks."""
    sizes = [int(s) for s in sizes]
    k = len(sizes)
    pm = np.asarray(p, dtype=float)
    if k == 0 or min(sizes) < 1:
        raise GraphError(f"sbm needs at least one block, all of size >= 1; got sizes={sizes}")
    if pm.shape != (k, k):
        raise GraphError(f"sbm p must be a {k}x{k} matrix (a row per block); got {pm.shape}")
    if not np.allclose(pm, pm.T):
        raise GraphError("sbm p must be symmetric (undirected blocks); got p != p.T")
    if (pm < 0).any() or (pm > 1).any():
        raise GraphError("sbm p entries must lie in [0, 1]")
    return _whole(seed, kind="sbm", sizes=sizes, p=pm.tolist())


def configuration(degrees: Sequence[int] | np.ndarray, seed: int = 0) -> CSRGraph:
    """Configuration model: stubs paired uniformly; self-loops and multi-edges are dropped."""
    deg = np.asarray(degrees)
    if deg.ndim != 1 or deg.size == 0 or not np.issubdtype(deg.dtype, np.integer):
        raise GraphError("configuration needs a non-empty 1-d sequence of integer degrees")
    if (deg < 0).any():
        raise GraphError(f"configuration degrees must be >= 0; got {int(deg.min())}")
    if int(deg.sum()) % 2:
        raise GraphError(f"configuration degrees must sum to an even number; got {int(deg.sum())} "
                         "(add or remove one stub)")
    return _whole(seed, kind="configuration", degrees=deg.tolist())


def delaunay(n: int, seed: int = 0) -> CSRGraph:
    """The Delaunay triangulation of ``n`` uniform points in the unit square (scipy/qhull):
    planar, mean degree just under 6; point coordinates are
    ``swarm.graphgen.delaunay_points(n, KeyedRNG(seed))``."""
    if n < 3:
        raise GraphError(f"delaunay needs n >= 3 points; got n={n}")
    return _whole(seed, kind="delaunay", n=n)
