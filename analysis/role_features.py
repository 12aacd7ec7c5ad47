"""Per-agent features of the interaction graph, the input of every role analysis.

``agent_features`` gives one row per agent: in/out degree and strength,
reciprocity, clustering, k-core number, betweenness (exact, or estimated
from a seeded sample of sources) and, with events, the counts by action
type, the share of reposts among an agent's items and the share of its posts
that started a cascade; ``interaction_edges`` makes the weighted graph of who
reposted, liked or commented whom from a run's events. Triangles, cores and
betweenness are computed with numpy and scipy.sparse (degree-ordered
triangle counting, batched peeling, level-synchronous Brandes over a batch
of sources). The edge-list checks, the sparse forms of the graph and the
keyed random streams defined here are shared by the other role modules
(``rewiring``, ``role_clustering``, ``rolx``, ``core_periphery``,
``role_stability``); ``swarm.analysis.roles`` re-exports the public names.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import sparse

from swarm.graph import ragged_arange

__all__ = ["INTERACTIONS", "agent_features", "interaction_edges"]

#: Interactions that make an edge agent -> target in ``interaction_edges``.
INTERACTIONS = ("repost", "like", "comment")


def _rng(seed: int, *key: int) -> np.random.Generator:
    """A generator keyed by (seed, *key): every draw derives from the one seed."""
    return np.random.default_rng([int(seed), *[int(k) for k in key]])


def _state(seed: int, *key: int) -> int:
    """An integer random_state for scikit-learn, keyed like ``_rng``."""
    return int(_rng(seed, *key).integers(2**31 - 1))


def _check_edges(src, dst, n: int, weight=None):
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    if src.shape != dst.shape or src.ndim != 1:
        raise ValueError(f"src and dst must be 1-d arrays of equal length; got shapes "
                         f"{src.shape} and {dst.shape}")
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    if src.size and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= n):
        raise ValueError(f"edge endpoints must lie in [0, n={n}); got "
                         f"[{min(src.min(), dst.min())}, {max(src.max(), dst.max())}] "
                         "(pass n = number of agents)")
    if weight is None:
        w = np.ones(src.shape[0])
    else:
        w = np.asarray(weight, dtype=np.float64)
        if w.shape != src.shape:
            raise ValueError(f"weight must have one entry per edge ({src.shape[0]}); "
                             f"got {w.shape[0]}")
    return src, dst, w


def _unique_edges(src, dst, n: int, w):
    """Distinct directed edges without self-loops, sorted by (src, dst), weights summed."""
    keep = src != dst
    key = src[keep] * n + dst[keep]
    ww = w[keep]
    order = np.argsort(key, kind="stable")
    key, ww = key[order], ww[order]
    if key.size == 0:
        e = np.empty(0, np.int64)
        return e, e.copy(), np.empty(0)
    first = np.ones(key.shape[0], dtype=bool)
    first[1:] = key[1:] != key[:-1]
    grp = np.cumsum(first) - 1
    wsum = np.bincount(grp, weights=ww)
    s, d = np.divmod(key[first], n)
    return s, d, wsum


def _is_symmetric(s, d, n: int) -> bool:
    """Whether the (distinct, sorted) directed edges list every edge both ways."""
    if s.size == 0:
        return True
    key = s * n + d
    rkey = np.sort(d * n + s)
    return bool(np.array_equal(key, rkey))


def _csr(s, d, n: int, values=None) -> sparse.csr_matrix:
    v = np.ones(s.shape[0]) if values is None else values
    return sparse.csr_matrix((v, (s, d)), shape=(n, n))


def _undirected(s, d, n: int) -> sparse.csr_matrix:
    """The simple undirected graph (binary, symmetric, no diagonal) of directed edges."""
    a = _csr(np.concatenate([s, d]), np.concatenate([d, s]), n)
    a.data[:] = 1.0
    a.sum_duplicates()
    a.data[:] = 1.0
    return a


def _triangles(u: sparse.csr_matrix) -> np.ndarray:
    """Triangles at each node of a simple undirected graph.

    Edges are oriented from lower to higher (degree, id) rank, which bounds
    every out-degree by sqrt(2m), so the sparse products stay small on
    heavy-tailed graphs. A triangle a < b < c (by rank) is one path a -> b -> c
    closed by a -> c: ``(L @ L) * L`` at (a, c) counts it for a and c,
    ``(L.T @ L) * L`` at (b, c) for b.
    """
    n = u.shape[0]
    deg = np.diff(u.indptr)
    rank = np.empty(n, dtype=np.int64)
    rank[np.lexsort((np.arange(n), deg))] = np.arange(n)
    coo = u.tocoo()
    up = rank[coo.row] < rank[coo.col]
    low = _csr(coo.row[up].astype(np.int64), coo.col[up].astype(np.int64), n)
    ends = (low @ low).multiply(low)
    middle = (low.T @ low).multiply(low)
    t = (np.asarray(ends.sum(axis=1)).ravel() + np.asarray(ends.sum(axis=0)).ravel()
         + np.asarray(middle.sum(axis=1)).ravel())
    return np.rint(t).astype(np.int64)


def _core_number(u: sparse.csr_matrix) -> np.ndarray:
    """k-core number of each node of a simple undirected graph, by batched peeling.

    At level k every live node of degree <= k is removed at once and its
    neighbours' degrees drop; nodes that fall to <= k join the next batch.
    A node removed at level k is in the k-core but not the (k+1)-core.
    """
    n = u.shape[0]
    indptr, indices = u.indptr.astype(np.int64), u.indices.astype(np.int64)
    deg0 = np.diff(indptr)
    deg = deg0.copy()
    core = np.zeros(n, dtype=np.int64)
    alive = np.ones(n, dtype=bool)
    left, k = n, 0
    while left:
        k = max(k, int(deg[alive].min()))
        batch = np.flatnonzero(alive & (deg <= k))
        while batch.size:
            alive[batch] = False
            core[batch] = k
            left -= batch.size
            nbr = indices[ragged_arange(indptr[batch], deg0[batch])]
            nbr = nbr[alive[nbr]]
            if nbr.size == 0:
                break
            hit, cnt = np.unique(nbr, return_counts=True)
            deg[hit] -= cnt
            batch = hit[deg[hit] <= k]
    return core


def _betweenness(s, d, n: int, sources: np.ndarray, batch: int | None = None) -> np.ndarray:
    """Brandes' dependencies summed over ``sources`` (directed, unweighted), in batches.

    A batch of sources is a dense (n x b) block: a breadth-first search of
    all of them at once, one sparse product per level, path counts ``sigma``
    carried forward; then dependencies flow back level by level,
    ``delta_v += sigma_v * sum_{w in succ(v), level w = level v + 1} (1 + delta_w) / sigma_w``.
    Equals networkx's unnormalized directed betweenness when ``sources`` is every node.
    """
    a = _csr(s, d, n)
    at = a.T.tocsr()
    out = np.zeros(n)
    if batch is None:
        batch = int(np.clip(2**22 // max(n, 1), 1, 64))
    for lo in range(0, sources.shape[0], batch):
        src = sources[lo:lo + batch]
        b = src.shape[0]
        cols = np.arange(b)
        sigma = np.zeros((n, b))
        sigma[src, cols] = 1.0
        level = np.full((n, b), -1, dtype=np.int32)
        level[src, cols] = 0
        frontier = sigma.copy()
        depth = 0
        while True:
            nxt = np.asarray(at @ frontier)
            nxt[level >= 0] = 0.0
            reached = nxt > 0
            if not reached.any():
                break
            depth += 1
            level[reached] = depth
            sigma[reached] = nxt[reached]
            frontier = np.where(reached, nxt, 0.0)
        delta = np.zeros((n, b))
        safe = np.where(sigma > 0, sigma, 1.0)
        for lv in range(depth, 0, -1):
            coef = np.where(level == lv, (1.0 + delta) / safe, 0.0)
            back = np.asarray(a @ coef)
            delta += np.where(level == lv - 1, sigma * back, 0.0)
        delta[level <= 0] = 0.0  # the source itself and unreached nodes gain nothing
        out += delta.sum(axis=1)
    return out


def _event_strings(events: pa.Table) -> pa.ChunkedArray:
    return events.column("event").cast(pa.string())


def _behaviour(events: pa.Table, n: int) -> dict[str, np.ndarray]:
    """Counts by event type per agent, the repost share and the cascade-starting rate."""
    for col in ("agent", "event"):
        if col not in events.column_names:
            raise ValueError(f"events need an {col!r} column; got {events.column_names}")
    kinds = _event_strings(events)
    types = sorted(t for t in kinds.unique().to_pylist() if t is not None)
    agent = np.asarray(events.column("agent").fill_null(-1), dtype=np.int64)
    if agent.size and (agent.min() < 0 or agent.max() >= n):
        raise ValueError(f"event agents must lie in [0, n={n}); got [{agent.min()}, "
                         f"{agent.max()}] (pass the run's number of agents as n)")
    code = np.asarray(pc.index_in(kinds, value_set=pa.array(types, pa.string())).fill_null(-1))
    ok = code >= 0
    t = len(types)
    counts = np.bincount(agent[ok] * t + code[ok], minlength=n * t).reshape(n, t)
    out = {f"n_{name}": counts[:, i].astype(np.int64) for i, name in enumerate(types)}
    if "post" in types or "repost" in types:
        posts = out.get("n_post", np.zeros(n, np.int64))
        reposts = out.get("n_repost", np.zeros(n, np.int64))
        total = posts + reposts
        out["repost_share"] = np.divide(reposts, total, out=np.zeros(n), where=total > 0)
        started = np.zeros(n, dtype=np.int64)
        if {"post", "repost"} <= set(types) and {"item", "root"} <= set(events.column_names):
            is_post = np.asarray(pc.equal(kinds, "post").fill_null(False))
            is_rep = np.asarray(pc.equal(kinds, "repost").fill_null(False))
            item = np.asarray(events.column("item").fill_null(-1), dtype=np.int64)
            root = np.asarray(events.column("root").fill_null(-1), dtype=np.int64)
            hit = is_post & np.isin(item, root[is_rep])
            started = np.bincount(agent[hit], minlength=n).astype(np.int64)
        out["cascades_started"] = started
        out["cascade_start_rate"] = np.divide(started, posts, out=np.zeros(n), where=posts > 0)
    return out


def agent_features(src, dst, n: int, events: pa.Table | None = None, *, weight=None,
                   betweenness_sample: int | None = 256, seed: int = 0) -> pa.Table:
    """One row per agent: structural features of the graph ``src -> dst``, behaviour from events.

    Parameters
    ----------
    src, dst : int arrays
        Directed edges (an undirected graph lists both directions, as
        ``CSRGraph.sources()`` and ``CSRGraph.indices`` do). Repeated edges
        add to strength, not to degree; self-loops are dropped.
    n : int
        Number of agents (ids 0..n-1).
    events : pyarrow.Table, optional
        A run's events (``agent``, ``event``; ``item`` and ``root`` for the
        cascade rate): adds ``n_<type>`` per event type present,
        ``repost_share`` (reposts / (posts + reposts)), ``cascades_started``
        (posts reposted at least once) and ``cascade_start_rate`` (that over
        posts), 0 where undefined.
    weight : float array, optional
        Edge weights for strength (default 1 per listed edge).
    betweenness_sample : int or None
        Sources for betweenness: exact when >= n, else a seeded uniform sample
        scaled by n / sample (networkx's estimator); None or 0 skips it (NaN).
    seed : int
        Seed of the betweenness sample.

    Returns
    -------
    pyarrow.Table
        ``agent``, ``in_degree``, ``out_degree`` (distinct neighbours),
        ``in_strength``, ``out_strength``, ``reciprocity`` (networkx's per
        node: 2 * mutual neighbours / (in + out), 0 without edges),
        ``clustering`` and ``core`` (of the undirected simple graph),
        ``betweenness`` (directed, normalized by (n-1)(n-2)), then the
        behaviour columns.
    """
    src, dst, w = _check_edges(src, dst, n, weight)
    out_strength = np.bincount(src, weights=w, minlength=n)
    in_strength = np.bincount(dst, weights=w, minlength=n)
    s, d, _ = _unique_edges(src, dst, n, w)
    out_deg = np.bincount(s, minlength=n)
    in_deg = np.bincount(d, minlength=n)
    key = s * n + d
    rkey = d * n + s
    pos = np.minimum(np.searchsorted(key, rkey), max(key.shape[0] - 1, 0))
    mutual = key[pos] == rkey if key.size else np.zeros(0, bool)
    both = in_deg + out_deg
    recip = np.divide(2.0 * np.bincount(s[mutual], minlength=n), both,
                      out=np.zeros(n), where=both > 0)
    u = _undirected(s, d, n)
    udeg = np.diff(u.indptr)
    tri = _triangles(u)
    pairs = udeg * (udeg - 1.0)
    clustering = np.divide(2.0 * tri, pairs, out=np.zeros(n), where=pairs > 0)
    core = _core_number(u) if n else np.zeros(0, np.int64)
    if betweenness_sample and n > 2:
        if betweenness_sample >= n:
            sources, scale = np.arange(n), 1.0
        else:
            sources = np.sort(_rng(seed, 1).choice(n, int(betweenness_sample), replace=False))
            scale = n / float(betweenness_sample)
        btw = _betweenness(s, d, n, sources) * scale / ((n - 1.0) * (n - 2.0))
    else:
        btw = np.full(n, np.nan)
    cols = {
        "agent": np.arange(n, dtype=np.int64),
        "in_degree": in_deg.astype(np.int64),
        "out_degree": out_deg.astype(np.int64),
        "in_strength": in_strength,
        "out_strength": out_strength,
        "reciprocity": recip,
        "clustering": clustering,
        "core": core,
        "betweenness": btw,
    }
    if events is not None:
        cols.update(_behaviour(events, n))
    return pa.table(cols)


def interaction_edges(events: pa.Table, kinds: Sequence[str] = INTERACTIONS) -> pa.Table:
    """The weighted interaction graph of feed events: who reposted, liked or commented whom.

    One row per (``src`` = agent, ``dst`` = target) pair with ``weight`` (the
    number of interactions) and ``n_<kind>`` per kind; self-interactions and
    rows without a target are dropped. Sorted by (src, dst).

    Examples
    --------
    >>> ev = pa.table({"agent": [1, 1, 2, 3, 3], "target": [0, 0, 0, 3, None],
    ...                "event": ["like", "repost", "like", "like", "post"]})
    >>> t = interaction_edges(ev)
    >>> t.column("src").to_pylist(), t.column("dst").to_pylist(), t.column("weight").to_pylist()
    ([1, 2], [0, 0], [2, 1])
    """
    for col in ("agent", "target", "event"):
        if col not in events.column_names:
            raise ValueError(f"events need an {col!r} column; got {events.column_names}")
    kinds = list(kinds)
    code = np.asarray(pc.index_in(_event_strings(events),
                                  value_set=pa.array(kinds, pa.string())).fill_null(-1))
    agent = np.asarray(events.column("agent").fill_null(-1), dtype=np.int64)
    target = np.asarray(events.column("target").fill_null(-1), dtype=np.int64)
    ok = (code >= 0) & (agent >= 0) & (target >= 0) & (agent != target)
    a, t, c = agent[ok], target[ok], code[ok]
    big = int(max(a.max(), t.max())) + 1 if a.size else 1
    key = a * big + t
    order = np.argsort(key, kind="stable")
    key, c = key[order], c[order]
    first = np.ones(key.shape[0], dtype=bool)
    first[1:] = key[1:] != key[:-1]
    grp = np.cumsum(first) - 1
    m = int(first.sum())
    s, d = np.divmod(key[first], big)
    cols = {"src": s.astype(np.int64), "dst": d.astype(np.int64),
            "weight": np.bincount(grp, minlength=m).astype(np.int64)}
    for i, kind in enumerate(kinds):
        cols[f"n_{kind}"] = np.bincount(grp[c == i], minlength=m).astype(np.int64)
    return pa.table(cols)
