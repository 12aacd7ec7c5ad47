"""The built-in graphs, generated slice by slice: no process ever needs the whole graph.

Every generator here answers one question: the out-edges of the agents in an
id range ``[lo, hi)``. Its randomness is keyed by agent ids, edge ids and
fixed blocks of ids (never by shards), so any cut of ``[0, n)`` into ranges
gives the same graph; that is what keeps a run's events the same for any
number of shards. A range's draws are returned as directed (src, dst) pairs;
most have their source inside the range, and the few that do not (the
reverse of a rewired Watts–Strogatz edge, the reverse of a
Barabási–Albert edge) travel once, at build time, to the shard that owns
their source. The shard merges what it drew and what it received into its
CSR rows (duplicates and self-loops merge away).

- ``erdos_renyi`` and ``sbm``: the adjacency matrix is cut into cells by a
  grid of id blocks (and the SBM's community borders). A cell's edge count
  is a binomial draw keyed by the cell, its edges distinct pairs keyed by
  (cell, index, round). The shard owning a block regenerates the cells it
  touches in its rows and in its columns, so nothing travels (the scheme of
  KaGen's communication-free generators: Funke et al., 2019).
- ``watts_strogatz``: each ring edge (v, v + j) is rewired or not by a draw
  keyed by (v, j), so both of its ends know; a rewired edge's new end is told.
- ``barabasi_albert``: edge e copies the endpoint in slot r(e) of the edges
  before its source, r keyed by e; following copies back to a source slot
  gives the target without communication (Sanders and Schulz, "Scalable
  generation of scale-free graphs", 2016). The reverse edges are told.
- ``configuration``: stubs ordered by a keyed random key and paired in
  order; the degree list lives in the config, so every shard pairs all stubs
  and keeps its own.
- ``delaunay``: point v's coordinates are uniforms keyed by v, so every
  shard computes the same points and the same triangulation (qhull is
  deterministic for the same input) and keeps the edges of its own sources;
  nothing travels, but every shard pays for the whole triangulation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from swarm.errors import GraphError
from swarm.graph import ragged_arange
from swarm.rng import KeyedRNG, mix64

if TYPE_CHECKING:
    from swarm.graph import CSRGraph

__all__ = ["GeneratedSlice", "graph_size", "generate", "generation_ranges", "block_bounds",
           "edge_key", "row_key", "whole_graph", "build_graph", "graph_seed", "SHARD_LOCAL_KINDS",
           "delaunay_points"]

#: Graph kinds a shard generates (or reads) itself.
SHARD_LOCAL_KINDS = ("erdos_renyi", "sbm", "watts_strogatz", "barabasi_albert",
                     "configuration", "delaunay", "edgelist")
#: The smallest id block of the cell grid, and the most blocks per side.
BLOCK_MIN = 1 << 17
MAX_BLOCKS = 1024
_K_MIX = np.uint64(0x9E3779B97F4A7C15)


def edge_key(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The key of directed edges (src, dst) for per-edge draws, as int64.

    A pure function of the two agent ids, so it is the same whatever shard
    holds the edge and wherever the edge sits in any array. ``mix64`` is a
    bijection: two edges from one source never share a key.
    """
    h = np.asarray(src).astype(np.uint64)
    h ^= _K_MIX
    mix64(h)
    h += np.asarray(dst).astype(np.uint64)
    return h.view(np.int64)


def row_key(src: np.ndarray) -> np.ndarray:
    """``edge_key``'s part that depends on the source only (add the destination to it)."""
    h = np.asarray(src).astype(np.uint64)
    h ^= _K_MIX
    mix64(h)
    return h


def graph_size(gc) -> int:
    """Agents of a built-in graph config, from the config alone."""
    if gc.kind == "sbm":
        return int(sum(gc.sizes))
    if gc.kind == "configuration":
        return len(gc.degrees)
    return int(gc.n)


def generation_ranges(n: int, parts: int) -> np.ndarray:
    """``parts + 1`` bounds cutting ``[0, n)`` into near-equal id ranges."""
    return (np.arange(parts + 1, dtype=np.int64) * n) // parts


def block_bounds(n: int, borders=()) -> np.ndarray:
    """The cell grid's block borders: a function of ``n`` (and community borders) only."""
    c = max(1, min(MAX_BLOCKS, math.ceil(n / BLOCK_MIN)))
    grid = (np.arange(c + 1, dtype=np.int64) * n) // c
    return np.unique(np.concatenate([grid, np.asarray(borders, dtype=np.int64)]))


class GeneratedSlice:
    """The draws of one id range: ``pieces`` are complete, sorted out-edges of row batches
    (erdos_renyi and sbm), ``loose`` are unsorted (src, dst) pairs to route by owner."""

    def __init__(self):
        self.pieces: Iterable[tuple[np.ndarray, np.ndarray]] = ()
        self.loose: list[tuple[np.ndarray, np.ndarray]] = []


def generate(gc, seed: int, lo: int, hi: int, part: int = 0, parts: int = 1,
             check=None) -> GeneratedSlice:
    """The draws of id range ``[lo, hi)`` (``part`` of ``parts``) for graph config ``gc``.

    ``seed`` is the graph's seed (derived from the run seed). For an edge list
    the range is ignored: part ``part`` reads its share of the file's row groups
    (or bytes). ``check`` validates edge-list ids as they are read.
    """
    rng = KeyedRNG(seed)
    out = GeneratedSlice()
    if gc.kind == "erdos_renyi":
        n = gc.n
        cells = _Cells(n, block_bounds(n), np.array([[gc.mean_degree / (n - 1)]]),
                       np.array([0, n], dtype=np.int64), rng)
        out.pieces = cells.rows(lo, hi)
    elif gc.kind == "sbm":
        sizes = np.asarray(gc.sizes, dtype=np.int64)
        borders = np.concatenate([[0], np.cumsum(sizes)])
        n = int(borders[-1])
        cells = _Cells(n, block_bounds(n, borders), np.asarray(gc.p, dtype=float), borders, rng)
        out.pieces = cells.rows(lo, hi)
    elif gc.kind == "watts_strogatz":
        out.loose.append(_watts_strogatz(gc.n, gc.k, gc.p, rng, lo, hi))
    elif gc.kind == "barabasi_albert":
        out.loose.append(_barabasi_albert(gc.n, gc.m, rng, lo, hi))
    elif gc.kind == "configuration":
        out.loose.append(_configuration(np.asarray(gc.degrees, dtype=np.int64), rng, lo, hi))
    elif gc.kind == "delaunay":
        out.loose.append(_delaunay(gc.n, rng, lo, hi))
    elif gc.kind == "edgelist":
        from swarm.edgelist import read_part

        out.loose.append(read_part(gc, part, parts, check))
    else:  # pragma: no cover - the config's union lists the kinds
        raise GraphError(f"graph.kind {gc.kind!r} has no slice generator")
    return out


# --- erdos_renyi and sbm: cells of the adjacency matrix ------------------------


def binomial_quantile(u: np.ndarray, trials: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The smallest k with P(Binomial(trials, p) <= k) >= u, for arrays (exact).

    A Cornish-Fisher guess from the normal quantile, then steps of one until
    the CDF (a regularized incomplete beta) brackets ``u``: about two CDF
    evaluations per value. (scipy.stats.binom.ppf gives the same answer, but
    importing scipy.stats costs 1.7 s here.)
    """
    from scipy.special import betainc, ndtri

    mu = trials * p
    sd = np.sqrt(np.maximum(mu * (1 - p), 1e-300))
    z = ndtri(u)
    guess = mu + sd * z + (z * z - 1) * (1 - 2 * p) / 6
    k = np.clip(np.floor(guess + 0.5), 0, trials)

    def cdf(x, which):
        out = np.ones_like(x)
        n_, p_ = trials[which], p[which]
        inside = (x >= 0) & (x < n_)
        out[x < 0] = 0.0
        xi = x[inside]
        out[inside] = betainc(n_[inside] - xi, xi + 1, 1 - p_[inside])
        return out

    todo = np.arange(u.shape[0])
    for _ in range(100_000):
        if not todo.size:
            break
        kk, uu = k[todo], u[todo]
        low = cdf(kk, todo) < uu
        k[todo[low]] += 1
        high = ~low & (cdf(kk - 1, todo) >= uu)
        k[todo[high]] -= 1
        todo = todo[low | high]
    return k.astype(np.int64)


class _Cells:
    """Undirected edges by cells (i <= j) of a block grid; each cell has one probability."""

    def __init__(self, n: int, bounds: np.ndarray, pm: np.ndarray, borders: np.ndarray,
                 rng: KeyedRNG):
        self.n, self.bounds, self.rng = n, bounds, rng
        self.c = bounds.shape[0] - 1
        size = np.diff(bounds)
        self.size = size
        community = np.searchsorted(borders, bounds[:-1], side="right") - 1
        self.p = pm[community[:, None], community[None, :]]
        self.max_pairs = int(size.max()) ** 2 if size.size else 0

    def _counts(self, ci: np.ndarray, cj: np.ndarray) -> np.ndarray:
        """Edges of cells (ci, cj), ci <= cj: binomial, keyed by the cell."""
        si, sj = self.size[ci], self.size[cj]
        pairs = np.where(ci == cj, si * (si - 1) // 2, si * sj).astype(np.float64)
        p = self.p[ci, cj]
        u = self.rng.uniform("graph.cells", ci * self.c + cj)
        u = np.clip(u, 1e-300, 1.0 - 2**-53)
        k = np.zeros(ci.shape[0], dtype=np.int64)
        live = (pairs > 0) & (p > 0)
        full = live & (p >= 1)
        k[full] = pairs[full]
        some = live & ~full
        if some.any():
            k[some] = binomial_quantile(u[some], pairs[some], p[some])
        return k

    def _edges(self, ci: np.ndarray, cj: np.ndarray, distinct: bool = True
               ) -> tuple[np.ndarray, np.ndarray]:
        """All edges (u < v) of cells (ci, cj): distinct pairs, drawn in rounds until distinct.

        ``distinct=False`` returns the first round as drawn (a repeated pair, or a
        diagonal cell's (a, a), left in): the caller checks for repeats itself and
        calls again when it finds one. Without repeats, both calls give the same edges.
        """
        counts = self._counts(ci, cj)
        pairs = self._pairs(ci, cj)
        dense = 2 * counts > pairs
        if dense.any():
            # A cell more than half full: its missing pairs are drawn instead (rejection
            # would need ever more rounds as the cell fills up), and it keeps the rest.
            su, sv = self._sample(ci[~dense], cj[~dense], counts[~dense], distinct)
            du, dv = self._all_but(ci[dense], cj[dense],
                                   *self._sample(ci[dense], cj[dense],
                                                 pairs[dense] - counts[dense], True))
            return np.concatenate([su, du]), np.concatenate([sv, dv])
        return self._sample(ci, cj, counts, distinct)

    def _pairs(self, ci: np.ndarray, cj: np.ndarray) -> np.ndarray:
        si, sj = self.size[ci], self.size[cj]
        return np.where(ci == cj, si * (si - 1) // 2, si * sj)

    def _all_but(self, ci: np.ndarray, cj: np.ndarray, gone_u: np.ndarray, gone_v: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Every pair (u < v on the diagonal) of cells (ci, cj) except those given."""
        height, width = self.size[ci], self.size[cj]
        cells = height * width
        cell = np.repeat(np.arange(ci.shape[0], dtype=np.int64), cells)
        flat = ragged_arange(np.zeros_like(cells), cells)
        a, b = np.divmod(flat, width[cell])
        keep = (ci != cj)[cell] | (a < b)
        u = self.bounds[ci][cell[keep]] + a[keep]
        v = self.bounds[cj][cell[keep]] + b[keep]
        # u * n + v fits int64: a dense cell of a graph with n > 3e9 would hold more
        # edges than any machine.
        n = np.int64(self.n)
        kept = ~np.isin(u * n + v, gone_u * n + gone_v)
        return u[kept], v[kept]

    def _sample(self, ci: np.ndarray, cj: np.ndarray, counts: np.ndarray, distinct: bool
                ) -> tuple[np.ndarray, np.ndarray]:
        """``counts[c]`` pairs of each cell c, uniform, keyed by (cell, index, round)."""
        total = int(counts.sum())
        if total == 0:
            e = np.empty(0, dtype=np.int64)
            return e, e
        cell = np.repeat(np.arange(ci.shape[0], dtype=np.int64), counts)
        index = ragged_arange(np.zeros_like(counts), counts)
        cid = (ci * self.c + cj)[cell]
        width = self.size[cj][cell]
        height = self.size[ci][cell]
        diag_cells = np.flatnonzero(ci == cj)
        a_out = np.empty(total, dtype=np.int64)
        b_out = np.empty(total, dtype=np.int64)
        todo = None  # all entries, in the first round
        for rnd in range(64):
            keys = (cid, index) if todo is None else (cid[todo], index[todo])
            bits = self.rng.bits("graph.pairs", *keys, draw=rnd)
            w = width if todo is None else width[todo]
            h = height if todo is None else height[todo]
            bits %= (h * w).astype(np.uint64)
            a, b = np.divmod(bits.view(np.int64), w)
            if diag_cells.size:
                # A diagonal cell's pairs are unordered: (a, b) and (b, a) are one pair.
                d = np.isin(cell if todo is None else cell[todo], diag_cells)
                swap = d & (a > b)
                a[swap], b[swap] = b[swap], a[swap]
            if todo is None:
                a_out, b_out = a, b
            else:
                a_out[todo], b_out[todo] = a, b
            if not distinct:
                break
            pos = a_out * width + b_out
            again = _repeats(cell, pos, self.max_pairs)
            if diag_cells.size:
                again |= (a_out == b_out) & np.isin(cell, diag_cells)
            todo = np.flatnonzero(again)
            if todo.size == 0:
                break
        else:  # pragma: no cover - needs a cell almost full after 64 rounds
            raise GraphError("a graph cell could not be filled with distinct pairs")
        u = self.bounds[ci][cell] + a_out
        v = self.bounds[cj][cell] + b_out
        return u, v

    def rows(self, lo: int, hi: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Out-edges of rows ``[lo, hi)``, one block at a time, sorted by (src, dst).

        Block b needs the cells of its row (b, j >= b) and of its column (i < b, b).
        A column cell whose row block is in the range was drawn already, with that
        block: its edges into later blocks are kept (as sort keys of those blocks'
        rows) instead of drawn twice. Only cells of blocks before the range are drawn
        for their column.
        """
        if hi <= lo:
            return
        first = int(np.searchsorted(self.bounds, lo, side="right") - 1)
        last = int(np.searchsorted(self.bounds, hi - 1, side="right") - 1)
        n = np.int64(self.n)
        kept: dict[int, list[np.ndarray]] = {}
        for b in range(first, last + 1):
            r0, r1 = max(lo, int(self.bounds[b])), min(hi, int(self.bounds[b + 1]))
            cj = np.arange(b, self.c, dtype=np.int64)
            ci = np.arange(0, first, dtype=np.int64)
            ci_ = np.concatenate([np.full(cj.shape, b, np.int64), ci])
            cj_ = np.concatenate([cj, np.full(ci.shape, b, np.int64)])
            extra = kept.pop(b, [])
            full = r0 == self.bounds[b] and r1 == self.bounds[b + 1]
            if full:
                # Every edge drawn here has an end in the block, so every edge is in
                # the sorted rows: a repeated pair shows as two equal neighbours and a
                # diagonal (a, a) as a loop. Without either, the first round is the answer.
                u, v = self._edges(ci_, cj_, distinct=False)
                src, dst = self._block_rows(u, v, r0, r1, extra)
                if src.size and ((src == dst).any()
                                 or ((src[1:] == src[:-1]) & (dst[1:] == dst[:-1])).any()):
                    full = False
            if not full:
                u, v = self._edges(ci_, cj_)
                src, dst = self._block_rows(u, v, r0, r1, extra)
            del extra
            # Edges into later blocks of the range: their rows' part, kept for them.
            later = np.flatnonzero((v >= self.bounds[b + 1]) & (v < hi))
            if later.size:
                lv, lu = v[later], u[later]
                blk = np.searchsorted(self.bounds, lv, side="right") - 1
                order = np.argsort(blk, kind="stable")
                blk, lv, lu = blk[order], lv[order], lu[order]
                cuts = np.flatnonzero(np.diff(blk)) + 1
                for part_b, part_v, part_u in zip(np.split(blk, cuts), np.split(lv, cuts),
                                                  np.split(lu, cuts), strict=True):
                    j = int(part_b[0])
                    kept.setdefault(j, []).append((part_v - self.bounds[j]) * n + part_u)
            del u, v
            yield src, dst

    def _block_rows(self, u: np.ndarray, v: np.ndarray, r0: int, r1: int,
                    extra: list[np.ndarray] = ()) -> tuple[np.ndarray, np.ndarray]:
        """The out-edges of rows [r0, r1) among undirected edges (u, v), and the kept
        ``extra`` sort keys ((row - r0) * n + dst), sorted."""
        n = np.int64(self.n)
        fwd = (u >= r0) & (u < r1)
        bwd = (v >= r0) & (v < r1)
        key = np.concatenate([(u[fwd] - r0) * n + v[fwd], (v[bwd] - r0) * n + u[bwd],
                              *extra])
        key.sort()
        src, dst = np.divmod(key, n)
        src += r0
        return src, dst


def _repeats(cell: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    """True where (cell, pos) repeats the same pair at a lower index of its cell.

    Entries come grouped by cell with indices ascending, so the first
    occurrence of a pair is the one kept. Repeats are rare (about k^2 / 2N per
    cell): one sort finds the repeated values, then only their entries are
    looked at.
    """
    out = np.zeros(pos.shape[0], dtype=bool)
    if pos.shape[0] < 2:
        return out
    if (int(cell[-1]) + 1) * width >= 2**62:  # pragma: no cover - n beyond ~10^11
        order = np.lexsort((pos, cell))
        dup = np.zeros(pos.shape[0], dtype=bool)
        dup[1:] = (cell[order][1:] == cell[order][:-1]) & (pos[order][1:] == pos[order][:-1])
        out[order[dup]] = True
        return out
    key = cell * np.int64(width) + pos
    probe = np.sort(key)
    twice = probe[1:][probe[1:] == probe[:-1]]
    if not twice.size:
        return out
    twice = np.unique(twice)
    at = np.minimum(np.searchsorted(twice, key), twice.shape[0] - 1)
    hit = np.flatnonzero(twice[at] == key)  # entries holding a repeated value, in order
    _, first = np.unique(key[hit], return_index=True)
    out[hit] = True
    out[hit[first]] = False
    return out


# --- watts_strogatz -------------------------------------------------------------


def _watts_strogatz(n: int, k: int, p: float, rng: KeyedRNG, lo: int, hi: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    half = k // 2
    v = np.repeat(np.arange(lo, hi, dtype=np.int64), half)
    j = np.tile(np.arange(1, half + 1, dtype=np.int64), hi - lo)

    def rewired(src, step):
        key = src * half + (step - 1)
        hit = rng.uniform("graph.ws.rewire", key) < p
        target = (rng.bits("graph.ws.target", key) % np.uint64(n)).astype(np.int64)
        return hit, target

    hit, target = rewired(v, j)
    fwd_dst = np.where(hit, target, (v + j) % n)
    # The ring edge (w, w + j) ending at v, when it was not rewired, is v's too.
    w = (np.repeat(np.arange(lo, hi, dtype=np.int64), half) - j) % n
    w_hit, _ = rewired(w, j)
    keep_back = ~w_hit
    src = np.concatenate([v, v[keep_back], target[hit]])
    dst = np.concatenate([fwd_dst, w[keep_back], v[hit]])
    return src, dst


# --- barabasi_albert --------------------------------------------------------------


def _barabasi_albert(n: int, m: int, rng: KeyedRNG, lo: int, hi: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Edges of sources in [lo, hi) and their reverses. Edges 0..m-1 form a star
    (i -> 0); node v > m owns edges ``m + (v - m - 1) m + t``, t < m, and each
    copies an endpoint of a uniform slot among the edges of nodes before v."""
    star = np.arange(max(lo, 1), min(hi, m + 1), dtype=np.int64)
    first = max(lo, m + 1)
    nodes = np.arange(first, max(first, hi), dtype=np.int64)
    e = (m + (np.repeat(nodes, m) - m - 1) * m + np.tile(np.arange(m, dtype=np.int64),
                                                            nodes.shape[0]))
    src_e = np.repeat(nodes, m)
    tgt = _ba_targets(e, m, rng)
    src = np.concatenate([star, np.zeros_like(star), src_e, tgt])
    dst = np.concatenate([np.zeros_like(star), star, tgt, src_e])
    return src, dst


def _ba_source(e: np.ndarray, m: int) -> np.ndarray:
    return np.where(e < m, e + 1, m + 1 + (e - m) // np.int64(m))


def _ba_targets(e: np.ndarray, m: int, rng: KeyedRNG) -> np.ndarray:
    """Targets of edges ``e`` (all >= m), following copied slots without communication."""
    out = np.empty(e.shape[0], dtype=np.int64)
    todo = np.arange(e.shape[0])
    cur = e.copy()
    while todo.size:
        c = cur[todo]
        star = c < m
        if star.any():  # a star edge's target is node 0
            out[todo[star]] = 0
            todo, c = todo[~star], c[~star]
            if not todo.size:
                break
        before = m + (_ba_source(c, m) - m - 1) * m  # edges of earlier nodes
        slot = (rng.bits("graph.ba", c) % (2 * before).astype(np.uint64)).astype(np.int64)
        even = (slot & 1) == 0
        out[todo[even]] = _ba_source(slot[even] >> 1, m)
        cur[todo[~even]] = slot[~even] >> 1
        todo = todo[~even]
    return out


# --- configuration ----------------------------------------------------------------


def _configuration(deg: np.ndarray, rng: KeyedRNG, lo: int, hi: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    stubs = np.repeat(np.arange(deg.shape[0], dtype=np.int64), deg)
    order = np.argsort(rng.bits("graph.stubs", np.arange(stubs.shape[0], dtype=np.int64)),
                       kind="stable")
    stubs = stubs[order]
    a, b = stubs[0::2], stubs[1::2]
    fa = (a >= lo) & (a < hi)
    fb = (b >= lo) & (b < hi)
    return np.concatenate([a[fa], b[fb]]), np.concatenate([b[fa], a[fb]])


# --- delaunay ---------------------------------------------------------------------


def delaunay_points(n: int, rng: KeyedRNG) -> np.ndarray:
    """The ``(n, 2)`` float64 points of a Delaunay graph: coordinates keyed by agent id."""
    ids = np.arange(n, dtype=np.int64)
    return np.column_stack([rng.uniform("graph.delaunay.x", ids),
                            rng.uniform("graph.delaunay.y", ids)])


def _delaunay(n: int, rng: KeyedRNG, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Edges (both directions) of the triangulation of all ``n`` points whose source is in
    [lo, hi), each once. This is the cost of the kind: every range triangulates every
    point (about 11 s and 650 B per point at n=1e6), since a triangle anywhere may
    hold an edge of the range. A point qhull leaves out (an exact duplicate, which
    53-bit uniforms make vanishingly rare) is an isolated agent."""
    from scipy.spatial import Delaunay

    simplices = Delaunay(delaunay_points(n, rng)).simplices  # (triangles, 3) int32
    a = simplices.ravel()
    b = simplices[:, [1, 2, 0]].ravel()
    del simplices
    src = np.concatenate([a, b])
    dst = np.concatenate([b, a])
    del a, b
    mine = (src >= lo) & (src < hi)
    # An inner edge lies on two triangles: one sort of src * n + dst merges the pair
    # (np.unique would sort too, ~100x slower here).
    key = src[mine].astype(np.int64) * np.int64(n) + dst[mine]
    del src, dst, mine
    key.sort()
    first = np.ones(key.shape[0], dtype=bool)
    first[1:] = key[1:] != key[:-1]
    return np.divmod(key[first], np.int64(n))


def whole_graph(gc, seed: int):
    """The graph of config ``gc`` in one process: the slices of one range, merged.

    The same graph the shards build for any shard count (analysis and tests
    use it; runs never do).
    """
    from swarm.graph import CSRGraph, from_edges, read_edgelist

    if gc.kind == "edgelist":
        return read_edgelist(gc.path, directed=gc.directed, n=gc.n)
    n = graph_size(gc)
    drawn = generate(gc, seed, 0, n)
    srcs, dsts = [], []
    for s, d in (*drawn.pieces, *drawn.loose):
        srcs.append(s)
        dsts.append(d)
    src = np.concatenate(srcs) if srcs else np.empty(0, np.int64)
    dst = np.concatenate(dsts) if dsts else np.empty(0, np.int64)
    g = from_edges(src, dst, n, directed=True)  # both directions are drawn already
    return CSRGraph(g.indptr, g.indices, directed=False)


# -- whole graphs of a run config ------------------------------------------------


def graph_seed(config) -> int:
    """The graph generators' seed, derived from the run seed."""
    return int(KeyedRNG(config.seed).bits("graph", np.zeros(1, np.int64))[0] >> np.uint64(1))


def build_graph(config, check: Callable[[int, int], None] | None = None) -> CSRGraph:
    """The whole graph a run config (``swarm.config.RunConfig``) names, in this process:
    the same graph the shards of a run build slice by slice, for any shard count (for
    analysis, tests and METIS).

    ``check(n, directed_edges)`` runs on an edge list's sizes before its arrays
    are allocated (the memory guard; generators are checked from the config).
    """
    g = config.graph
    if g.kind == "edgelist":
        from swarm.graph import read_edgelist

        return read_edgelist(g.path, directed=g.directed, n=g.n, check=check)
    return whole_graph(g, graph_seed(config))
