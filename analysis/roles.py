"""Roles of agents: per-agent features, role clusters checked against a null, core-periphery, churn.

Read after a run, from the interaction graph (who reposted, liked or
commented whom: ``agent -> target`` in the feed's events) and optionally the
events themselves. Four questions:

* **What does each agent look like?** ``agent_features``: in/out degree and
  strength, reciprocity, clustering, k-core number, betweenness (exact, or
  estimated from a seeded sample of sources), and with events the counts by
  action type, the share of reposts among an agent's items and the share of
  its posts that started a cascade. Triangles, cores and betweenness are
  computed with numpy and scipy.sparse (degree-ordered triangle counting,
  batched peeling, level-synchronous Brandes over a batch of sources).
* **Are there roles?** ``roles``: k-means or a Gaussian mixture over
  log1p-transformed, standardized features, k chosen by silhouette over
  ``k_range``. A heavy-tailed graph without any planted roles already gives a
  high silhouette (one huge cluster and a few hubs), so every result comes
  with the same pipeline on degree-preserving rewirings of the graph
  (``rewire``, a vectorized double-edge swap) and with the agreement (ARI)
  of clusterings from different seeds. ``rolx`` is the second method: NMF
  (scikit-learn) over ReFeX recursive features, RolX-style.
* **Is there a core?** ``core_periphery``: the Borgatti-Everett discrete
  model, tested against degree-preserving rewirings.
* **Do agents keep their role?** ``role_changes`` matches role labels of
  consecutive windows (Hungarian method on role profiles) and counts the
  agents whose role changed; ``roles_by_window`` makes the windows from events.

The degree-preserving null keeps every agent's degrees and its behaviour
columns (counts from events are node attributes, not edges), so a role
result that beats it is structure beyond degrees, not a difference in
activity. Directed swaps keep in- and out-degrees but not reciprocity.

Examples
--------
Two triangles joined by a bridge:

>>> import numpy as np
>>> src = np.array([0, 1, 2, 3, 4, 5, 2])
>>> dst = np.array([1, 2, 0, 4, 5, 3, 3])
>>> f = agent_features(src, dst, n=6)
>>> f.column("out_degree").to_pylist(), f.column("core").to_pylist()
([1, 1, 2, 1, 1, 1], [2, 2, 2, 2, 2, 2])
>>> [round(c, 3) for c in f.column("clustering").to_pylist()]
[1.0, 1.0, 0.333, 0.333, 1.0, 1.0]
>>> cp = core_periphery(src, dst, n=6, n_null=9, seed=1)
>>> int(cp.core.sum()) >= 2, 0 < cp.p_value <= 1
(True, True)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import sparse

from swarm.graph import ragged_arange

__all__ = [
    "agent_features",
    "interaction_edges",
    "rewire",
    "RoleResult",
    "roles",
    "RolXResult",
    "refex_features",
    "rolx",
    "CorePeriphery",
    "core_periphery",
    "match_roles",
    "role_changes",
    "roles_by_window",
]

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


# --- degree-preserving null ---------------------------------------------------------


def _in_sorted(sorted_keys: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Which of ``q`` are in ``sorted_keys``. The queries are sorted first: a search
    with sorted queries walks memory in order (several times faster on big arrays)."""
    if sorted_keys.size == 0 or q.size == 0:
        return np.zeros(q.shape[0], dtype=bool)
    order = np.argsort(q, kind="stable")
    qs = q[order]
    pos = np.minimum(np.searchsorted(sorted_keys, qs), sorted_keys.shape[0] - 1)
    out = np.empty(q.shape[0], dtype=bool)
    out[order] = sorted_keys[pos] == qs
    return out


def rewire(src, dst, n: int, *, directed: bool, swaps: float = 10.0, seed: int = 0,
           max_rounds: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Degree-preserving rewiring by double-edge swaps, many at once.

    Each round pairs the edges at random and proposes every pair's swap:
    ``(a, b), (c, d) -> (a, d), (c, b)`` (undirected: with a random
    orientation of the second edge, so both swap kinds occur). A swap is
    refused if it makes a self-loop, an edge that exists, or an edge another
    swap of the round also makes; the rest apply together. Rounds repeat until
    ``swaps`` times the edge count have been applied (or ``max_rounds``).
    Degrees (in- and out-degrees when directed) stay exactly as they were.

    Parameters
    ----------
    src, dst : int arrays
        The edges; duplicates and self-loops are dropped first, and when not
        ``directed`` each pair is one undirected edge whatever its order.
    directed : bool
        Keep in- and out-degrees (directed) or degrees (undirected).

    Returns
    -------
    (src, dst)
        The rewired edges, one row per edge (undirected: ``src < dst``).

    Examples
    --------
    >>> s, d = rewire(np.array([0, 2, 4, 6]), np.array([1, 3, 5, 7]), 8, directed=False, seed=3)
    >>> np.bincount(np.r_[s, d], minlength=8).tolist()
    [1, 1, 1, 1, 1, 1, 1, 1]
    """
    src, dst, _ = _check_edges(src, dst, n)
    if not directed:
        src, dst = np.minimum(src, dst), np.maximum(src, dst)
    a, b, _ = _unique_edges(src, dst, n, np.ones(src.shape[0]))
    m = a.shape[0]
    if m < 2:
        return a, b
    rng = _rng(seed, 2)
    target = swaps * m
    max_rounds = max_rounds if max_rounds is not None else int(40 * swaps) + 20
    done, rounds = 0, 0
    while done < target and rounds < max_rounds:
        rounds += 1
        keys = np.sort(a * n + b)
        perm = rng.permutation(m)
        half = m // 2
        e1, e2 = perm[:half], perm[half:2 * half]
        p, q = a[e1], b[e1]
        if directed:
            x, y = a[e2], b[e2]
        else:
            flip = rng.random(half) < 0.5
            x, y = np.where(flip, b[e2], a[e2]), np.where(flip, a[e2], b[e2])
        # new edges: (p, y) and (x, q)
        n1s, n1d, n2s, n2d = p, y, x, q
        if not directed:
            n1s, n1d = np.minimum(p, y), np.maximum(p, y)
            n2s, n2d = np.minimum(x, q), np.maximum(x, q)
        k1, k2 = n1s * n + n1d, n2s * n + n2d
        ok = (n1s != n1d) & (n2s != n2d) & (k1 != k2)
        ok &= ~_in_sorted(keys, k1) & ~_in_sorted(keys, k2)
        # Two accepted swaps that make the same edge: refuse both.
        idx = np.flatnonzero(ok)
        made = np.concatenate([k1[idx], k2[idx]])
        owner = np.concatenate([idx, idx])
        order = np.argsort(made, kind="stable")
        ms = made[order]
        dup = np.zeros(ms.shape[0], dtype=bool)
        if ms.size > 1:
            same = ms[1:] == ms[:-1]
            dup[1:] |= same
            dup[:-1] |= same
        ok[owner[order][dup]] = False
        a[e1[ok]], b[e1[ok]] = n1s[ok], n1d[ok]
        a[e2[ok]], b[e2[ok]] = n2s[ok], n2d[ok]
        done += int(ok.sum())
    return a, b


def _rewired_edges(s, d, n: int, symmetric: bool, swaps: float, seed: int):
    """Rewire distinct directed edges; a symmetric graph is rewired undirected, both ways out."""
    if symmetric:
        keep = s < d
        a, b = rewire(s[keep], d[keep], n, directed=False, swaps=swaps, seed=seed)
        return np.concatenate([a, b]), np.concatenate([b, a])
    return rewire(s, d, n, directed=True, swaps=swaps, seed=seed)


# --- roles by clustering ------------------------------------------------------------


def _standardize(table: pa.Table, columns: Sequence[str] | None, rare: float = 0.01):
    """log1p, z-score; constant, NaN and duplicate columns dropped. Returns (Z, names).

    A column where fewer than ``rare`` of the agents differ from its most
    common value is dropped as well: z-scored, those few agents sit tens of
    standard deviations out and make a "role" of their own with a silhouette
    near 1 (a Barabási-Albert graph's core number is m for all but a handful
    of agents, for instance).
    """
    names = [c for c in (columns or table.column_names) if c != "agent"]
    missing = [c for c in names if c not in table.column_names]
    if missing:
        raise ValueError(f"feature columns {missing} not in the table; have {table.column_names}")
    x = np.column_stack([np.asarray(table.column(c), dtype=np.float64) for c in names])
    if np.nanmin(x, initial=0.0) < 0:
        raise ValueError("features must be non-negative for log1p")
    z = np.log1p(x)
    mu, sd = z.mean(axis=0), z.std(axis=0)
    keep = np.isfinite(mu) & (sd > 1e-12)
    for j in np.flatnonzero(keep):  # a loop over columns, not agents
        keep[j] = np.unique(z[:, j], return_counts=True)[1].max() <= (1.0 - rare) * z.shape[0]
    z = (z[:, keep] - mu[keep]) / sd[keep]
    kept = [c for c, k in zip(names, keep, strict=True) if k]
    # Identical columns (in = out on undirected graphs) would count one feature twice.
    _, first = np.unique(np.round(z, 10), axis=1, return_index=True)
    first = np.sort(first)
    return z[:, first], [kept[i] for i in first]


def _cluster(z: np.ndarray, k: int, method: str, state: int, n_init: int) -> np.ndarray:
    with warnings.catch_warnings():
        # Ties in heavy-tailed features can leave fewer distinct points than
        # clusters; such a k simply scores badly.
        warnings.simplefilter("ignore")
        if method == "kmeans":
            from sklearn.cluster import KMeans

            return KMeans(n_clusters=k, n_init=n_init, random_state=state).fit_predict(z)
        from sklearn.mixture import GaussianMixture

        gm = GaussianMixture(n_components=k, covariance_type="full", n_init=n_init,
                             reg_covar=1e-4, random_state=state)
        return gm.fit(z).predict(z)


def _silhouette(z: np.ndarray, labels: np.ndarray, sample: int, state: int) -> float:
    from sklearn.metrics import silhouette_score

    if z.shape[0] > sample:  # a seeded sample of agents: silhouette costs O(n^2)
        pick = np.sort(_rng(state).choice(z.shape[0], sample, replace=False))
        z, labels = z[pick], labels[pick]
    distinct = np.unique(labels).shape[0]
    if distinct < 2 or distinct >= z.shape[0]:
        return -1.0  # undefined (a tiny cluster missed by the sample, or one point each)
    return float(silhouette_score(z, labels))


def _best_k(z, k_range, method, seed, key, sample, n_init):
    scores = {}
    best = (-np.inf, None, None)
    for k in k_range:
        if k >= z.shape[0]:
            break
        lab = _cluster(z, k, method, _state(seed, key, k), n_init)
        sil = _silhouette(z, lab, sample, _state(seed, key, 100 + k))
        scores[int(k)] = sil
        if sil > best[0]:
            best = (sil, int(k), lab)
    if best[1] is None:
        raise ValueError(f"no k in k_range={list(k_range)} is below the number of agents "
                         f"({z.shape[0]})")
    return best[1], best[0], best[2], scores


def _mean_pairwise_ari(labelings: list[np.ndarray]) -> float:
    from sklearn.metrics import adjusted_rand_score

    vals = [adjusted_rand_score(labelings[i], labelings[j])
            for i in range(len(labelings)) for j in range(i + 1, len(labelings))]
    return float(np.mean(vals)) if vals else float("nan")


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Relabel so role 0 is the largest (ties: the lower old label)."""
    sizes = np.bincount(labels)
    order = np.lexsort((np.arange(sizes.shape[0]), -sizes))
    new = np.empty_like(order)
    new[order] = np.arange(order.shape[0])
    return new[labels]


def _profiles(features: pa.Table, labels: np.ndarray, k: int) -> pa.Table:
    sizes = np.bincount(labels, minlength=k)
    cols = {"role": np.arange(k, dtype=np.int64), "size": sizes.astype(np.int64)}
    for c in features.column_names:
        if c == "agent":
            continue
        x = np.asarray(features.column(c), dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            cols[c] = np.bincount(labels, weights=x, minlength=k) / sizes
    return pa.table(cols)


@dataclass
class RoleResult:
    """What ``roles`` found, next to the same pipeline on degree-preserving rewirings."""

    method: str
    k: int
    silhouette: float
    #: Silhouette of each k tried.
    silhouette_by_k: dict[int, float]
    #: Role of each agent (0 = the largest role).
    labels: np.ndarray
    sizes: list[int]
    #: One row per role: ``role``, ``size`` and the mean of every raw feature.
    profiles: pa.Table
    #: Columns used after dropping constant and duplicate ones.
    columns: list[str]
    #: Best silhouette (k chosen the same way) on each rewiring.
    null_silhouettes: np.ndarray
    null_mean: float
    null_sd: float
    beats_null: bool
    rule: str
    #: Mean pairwise adjusted Rand index of clusterings at k from different seeds.
    ari_seeds: float
    #: The same on the rewirings (mean over them).
    null_ari_seeds: float
    features: pa.Table = field(repr=False)

    def summary(self) -> dict:
        """The scalars, for printing or a results table."""
        return {"method": self.method, "k": self.k, "silhouette": self.silhouette,
                "sizes": self.sizes, "null_mean": self.null_mean, "null_sd": self.null_sd,
                "beats_null": self.beats_null, "ari_seeds": self.ari_seeds,
                "null_ari_seeds": self.null_ari_seeds}


def _role_run(features, columns, method, k_range, seed, key, n_seeds, sample):
    z, used = _standardize(features, columns)
    if z.shape[1] == 0:
        raise ValueError("every feature column is constant: nothing to cluster")
    k, sil, lab, scores = _best_k(z, k_range, method, seed, key, sample, n_init=4)
    # Stability: one initialization per seed, so the seed is what varies.
    runs = [_cluster(z, k, method, _state(seed, key, 1000 + i), 1) for i in range(n_seeds)]
    return k, sil, _by_size(lab), scores, _mean_pairwise_ari(runs), used


def roles(src, dst, n: int, *, events: pa.Table | None = None, weight=None,
          method: str = "kmeans", k_range: Sequence[int] = range(2, 9),
          columns: Sequence[str] | None = None, n_null: int = 5, n_seeds: int = 5,
          swaps: float = 10.0, margin: float = 0.05, betweenness_sample: int | None = 128,
          silhouette_sample: int = 2000, seed: int = 0) -> RoleResult:
    """Cluster agents into roles and check the result against degree-preserving rewirings.

    Features (``agent_features``; ``columns`` picks some, default all) are
    log1p-transformed and standardized; constant, nearly constant (under 1%
    of agents off the most common value) and duplicate columns are dropped.
    k-means (``method="kmeans"``) or a Gaussian mixture (``"gmm"``) is fitted
    for each k in ``k_range`` and the k with the best silhouette kept. The
    whole pipeline (features, k by silhouette) is repeated on ``n_null``
    rewirings of the graph (``rewire``; undirected when the edges are
    symmetric), with the behaviour columns kept as they are.

    The rule: ``beats_null`` is True when the silhouette exceeds the null's
    mean by more than ``max(2 * null_sd, margin)``. A high silhouette alone
    means little: heavy-tailed degrees already give one (a huge cluster and
    the hubs), and the null has the same degrees. ``ari_seeds`` (the mean
    pairwise ARI of clusterings at the chosen k from ``n_seeds`` single
    initializations) says whether the partition is reproducible; it is no
    test against the null (a rewired heavy-tailed graph scores above 0.9 too).

    Examples
    --------
    Eight near-cliques of 10, a sparse periphery of 200 and 25 connectors:

    >>> from swarm.graph import sbm
    >>> p = np.zeros((10, 10))
    >>> p[range(8), range(8)], p[8, 8], p[9, :], p[:, 9] = 0.9, 0.02, 0.1, 0.1
    >>> g = sbm([10] * 8 + [200, 25], p, seed=2)
    >>> r = roles(g.sources(), g.indices, g.n, n_null=3, n_seeds=3, seed=2)
    >>> r.k, r.sizes, r.ari_seeds
    (3, [200, 80, 25], 1.0)
    >>> r.null_silhouettes.shape, r.rule
    ((3,), 'silhouette > null mean + max(2 * null sd, 0.05)')
    """
    if method not in ("kmeans", "gmm"):
        raise ValueError(f"method must be 'kmeans' or 'gmm'; got {method!r}")
    src, dst, w = _check_edges(src, dst, n, weight)
    s, d, ws = _unique_edges(src, dst, n, w)
    symmetric = _is_symmetric(s, d, n)
    feats = agent_features(s, d, n, events, weight=ws, betweenness_sample=betweenness_sample,
                           seed=seed)
    k, sil, lab, scores, ari, used = _role_run(feats, columns, method, k_range, seed, 0,
                                               n_seeds, silhouette_sample)
    null_sil, null_ari = [], []
    for r in range(n_null):
        rs, rd = _rewired_edges(s, d, n, symmetric, swaps, _state(seed, 3, r))
        # Weights do not survive a swap; the null is about who links to whom.
        nf = agent_features(rs, rd, n, events, betweenness_sample=betweenness_sample,
                            seed=_state(seed, 4, r))
        _, nsil, _, _, nari, _ = _role_run(nf, columns or used, method, k_range, seed,
                                           10 + r, n_seeds, silhouette_sample)
        null_sil.append(nsil)
        null_ari.append(nari)
    null_sil = np.asarray(null_sil, dtype=np.float64)
    mean = float(null_sil.mean()) if n_null else float("nan")
    sd = float(null_sil.std(ddof=1)) if n_null > 1 else 0.0
    beats = bool(n_null and sil > mean + max(2.0 * sd, margin))
    return RoleResult(
        method=method, k=k, silhouette=sil, silhouette_by_k=scores, labels=lab,
        sizes=np.bincount(lab, minlength=k).tolist(), profiles=_profiles(feats, lab, k),
        columns=used, null_silhouettes=null_sil, null_mean=mean, null_sd=sd, beats_null=beats,
        rule=f"silhouette > null mean + max(2 * null sd, {margin})", ari_seeds=ari,
        null_ari_seeds=float(np.mean(null_ari)) if null_ari else float("nan"), features=feats)


# --- RolX ------------------------------------------------------------------------------


def refex_features(src, dst, n: int, *, rounds: int = 2, weight=None,
                   prune: float = 0.99) -> tuple[np.ndarray, list[str]]:
    """ReFeX recursive features: base features, then neighbour sums and means, ``rounds`` times.

    Base features (per agent): in/out degree and strength, and of the
    undirected egonet the edges inside it (degree + triangles) and the edges
    leaving it. Each round adds, for every feature of the previous round, its
    sum and mean over the agent's (undirected) neighbours. After each round a
    feature whose log1p values correlate above ``prune`` with a kept one is
    dropped (ReFeX's pruning, with a correlation in place of its log bins).

    Returns
    -------
    (X, names)
        Non-negative features (n x f) and their names, e.g. ``mean(sum(in_degree))``.
    """
    src, dst, w = _check_edges(src, dst, n, weight)
    s, d, _ = _unique_edges(src, dst, n, w)
    u = _undirected(s, d, n)
    deg = np.diff(u.indptr).astype(np.float64)
    tri = _triangles(u).astype(np.float64)
    inside = deg + tri
    leaving = (deg + u @ deg) - 2.0 * inside
    cols = [np.bincount(d, minlength=n).astype(np.float64),
            np.bincount(s, minlength=n).astype(np.float64),
            np.bincount(dst, weights=w, minlength=n), np.bincount(src, weights=w, minlength=n),
            inside, np.maximum(leaving, 0.0)]
    names = ["in_degree", "out_degree", "in_strength", "out_strength", "ego_inside",
             "ego_leaving"]
    x = np.column_stack(cols)
    x, names = _prune(x, names, 0, prune)
    last = list(range(x.shape[1]))
    safe = np.where(deg > 0, deg, 1.0)
    for _ in range(rounds):
        prev = x[:, last]
        sums = np.asarray(u @ prev)
        means = sums / safe[:, None]
        new_names = ([f"sum({names[i]})" for i in last] + [f"mean({names[i]})" for i in last])
        start = x.shape[1]
        x, names = _prune(np.column_stack([x, sums, means]), names + new_names, start, prune)
        last = list(range(start, x.shape[1]))
        if not last:
            break
    return x, names


def _prune(x: np.ndarray, names: list[str], start: int, prune: float):
    """Drop columns from ``start`` on that are constant or correlate > prune with a kept one."""
    lx = np.log1p(x)
    sd = lx.std(axis=0)
    keep = list(range(start))
    for j in range(start, x.shape[1]):
        if sd[j] <= 1e-12:
            continue
        if keep:
            kk = [i for i in keep if sd[i] > 1e-12]
            if kk:
                c = np.corrcoef(lx[:, kk + [j]], rowvar=False)[-1, :-1]
                if np.nanmax(np.abs(c)) > prune:
                    continue
        keep.append(j)
    return x[:, keep], [names[i] for i in keep]


@dataclass
class RolXResult:
    """What ``rolx`` found: soft role memberships and what each role is made of."""

    k: int
    #: Non-negative membership of each agent in each role (n x k).
    memberships: np.ndarray
    #: The role of largest membership (0 for an agent with none).
    role: np.ndarray
    #: Each role's loading on each feature (k x f).
    definitions: np.ndarray
    feature_names: list[str]
    #: Description length (bits) of each k tried, when ``criterion="mdl"``.
    description_length: dict[int, float]
    #: Silhouette of the argmax roles for each k tried.
    silhouette_by_k: dict[int, float]
    criterion: str


def rolx(src, dst, n: int, *, k_range: Sequence[int] = range(2, 9), rounds: int = 2,
         criterion: str = "silhouette", weight=None, seed: int = 0) -> RolXResult:
    """RolX: NMF of ReFeX features into soft roles (scikit-learn's NMF).

    The ReFeX features (``refex_features``) are log1p-transformed and scaled
    to [0, 1] per column, then factored ``V ~ G F`` (agents x roles, roles x
    features) for each k (``init="nndsvda"``, so deterministic). By default
    (``criterion="silhouette"``) k is the one whose argmax roles have the best
    silhouette on the scaled features. ``"mdl"`` minimizes a description
    length instead: ``k (n + f) / 2 * log2(n f)`` bits for the model plus
    ``n f / 2 * log2(RSS / (n f))`` for a Gaussian error (a BIC in bits; RolX's
    own quantizes values and uses a KL error). On ReFeX features, which are
    nearly all degree-like, the error keeps falling fast with k and "mdl"
    picks more roles than were planted (5 of 3 on the test graph, with argmax
    roles that match them poorly), so it is not the default.

    The argmax of the memberships is a hard role; a row of ``memberships``
    is the mix. Argmax roles are less stable than ``roles`` clusters: NMF is
    parts-based, and its components split agents by overall magnitude as
    much as by shape.

    Examples
    --------
    >>> from swarm.graph import sbm
    >>> g = sbm([60, 60], [[0.3, 0.01], [0.01, 0.03]], seed=1)
    >>> r = rolx(g.sources(), g.indices, g.n, k_range=range(2, 5))
    >>> bool((r.memberships >= 0).all()), r.memberships.shape[0]
    (True, 120)
    """
    from sklearn.decomposition import NMF

    if criterion not in ("mdl", "silhouette"):
        raise ValueError(f"criterion must be 'mdl' or 'silhouette'; got {criterion!r}")
    x, names = refex_features(src, dst, n, rounds=rounds, weight=weight)
    v = np.log1p(x)
    top = v.max(axis=0)
    v = v / np.where(top > 0, top, 1.0)
    nf = v.size
    dl, sils, fits = {}, {}, {}
    for k in k_range:
        if k > min(v.shape):
            break
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings at max_iter
            model = NMF(n_components=k, init="nndsvda", max_iter=1000,
                        random_state=_state(seed, 5, k))
            g = model.fit_transform(v)
        f = model.components_
        rss = float(((v - g @ f) ** 2).sum())
        dl[int(k)] = (k * (v.shape[0] + v.shape[1]) / 2.0 * np.log2(nf)
                      + nf / 2.0 * np.log2(max(rss, 1e-300) / nf))
        lab = g.argmax(axis=1)
        sils[int(k)] = _silhouette(v, lab, 2000, _state(seed, 6, k))
        fits[int(k)] = (g, f)
    if not fits:
        raise ValueError(f"no k in k_range={list(k_range)} fits {v.shape[1]} features")
    score = dl if criterion == "mdl" else {k: -s for k, s in sils.items()}
    k = min(score, key=score.get)
    g, f = fits[k]
    return RolXResult(k=k, memberships=g, role=g.argmax(axis=1), definitions=f,
                      feature_names=names, description_length=dl if criterion == "mdl" else {},
                      silhouette_by_k=sils, criterion=criterion)


# --- core-periphery --------------------------------------------------------------------


def _be_rho(e_cc, e_pp, c, n: int, m: int, pattern: str):
    """Correlation of adjacency and ideal pattern over node pairs, from block edge counts.

    Both are binary over the pairs compared, so Pearson's r is
    ``(P n11 - n1a n1d) / sqrt(n1a (P - n1a) n1d (P - n1d))``.
    """
    e_cc = np.asarray(e_cc, dtype=np.float64)
    e_pp = np.asarray(e_pp, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    cc = c * (c - 1) / 2.0
    pp = (n - c) * (n - c - 1) / 2.0
    if pattern == "missing":  # core-periphery pairs left out of the correlation
        p_all, n1d, n11, n1a = cc + pp, cc, e_cc, e_cc + e_pp
    else:  # core-periphery pairs ideally tied
        p_all = np.full_like(c, n * (n - 1) / 2.0)
        n1d, n11, n1a = p_all - pp, m - e_pp, np.full_like(c, float(m))
    den = n1a * (p_all - n1a) * n1d * (p_all - n1d)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (p_all * n11 - n1a * n1d) / np.sqrt(den)
    return np.where(den > 0, r, -np.inf)


def _fit_core(u: sparse.csr_matrix, pattern: str, max_flips: int | None = None):
    """Best discrete core: the best top-c by degree, then single flips while rho improves."""
    n = u.shape[0]
    deg = np.diff(u.indptr).astype(np.int64)
    coo = sparse.triu(u, k=1).tocoo()
    i, j = coo.row.astype(np.int64), coo.col.astype(np.int64)
    m = i.shape[0]
    rank = np.empty(n, dtype=np.int64)
    rank[np.lexsort((np.arange(n), -deg))] = np.arange(n)
    hi = np.maximum(rank[i], rank[j])
    lo = np.minimum(rank[i], rank[j])
    c = np.arange(n + 1)
    # Edges inside the top c: both ranks < c; inside the rest: both ranks >= c.
    e_cc = np.concatenate([[0], np.cumsum(np.bincount(hi, minlength=n))])
    e_pp = m - np.concatenate([[0], np.cumsum(np.bincount(lo, minlength=n))])
    rho = _be_rho(e_cc, e_pp, c, n, m, pattern)
    best_c = int(np.argmax(rho))
    core = rank < best_c
    kc = np.asarray(u @ core.astype(np.float64)).ravel()
    cur_cc, cur_pp, cur_c = float(e_cc[best_c]), float(e_pp[best_c]), best_c
    cur = float(rho[best_c])
    max_flips = max_flips if max_flips is not None else 4 * n
    for _ in range(max_flips):
        sign = np.where(core, -1.0, 1.0)  # +1: periphery -> core
        f_cc = cur_cc + sign * kc
        f_pp = cur_pp - sign * (deg - kc)
        f_c = cur_c + sign
        r = _be_rho(f_cc, f_pp, f_c, n, m, pattern)
        v = int(np.argmax(r))
        if not r[v] > cur + 1e-12:
            break
        cur_cc, cur_pp, cur_c, cur = float(f_cc[v]), float(f_pp[v]), int(f_c[v]), float(r[v])
        core[v] = not core[v]
        lo_, hi_ = u.indptr[v], u.indptr[v + 1]
        kc[u.indices[lo_:hi_]] += sign[v]
    return core, cur


@dataclass
class CorePeriphery:
    """A Borgatti-Everett discrete core and its significance against rewirings."""

    #: Whether each agent is in the core.
    core: np.ndarray
    #: Correlation of the adjacency with the ideal pattern.
    rho: float
    pattern: str
    #: Best rho (same optimizer) on each degree-preserving rewiring.
    null_rhos: np.ndarray
    null_mean: float
    null_sd: float
    #: (1 + rewirings with rho >= observed) / (1 + rewirings).
    p_value: float

    @property
    def z(self) -> float:
        return (self.rho - self.null_mean) / self.null_sd if self.null_sd > 0 else float("inf")


def core_periphery(src, dst, n: int, *, pattern: str = "missing", n_null: int = 49,
                   swaps: float = 5.0, seed: int = 0) -> CorePeriphery:
    """Borgatti-Everett discrete core-periphery fit, tested against degree-preserving rewirings.

    The graph is taken as undirected and simple. The ideal pattern ties
    every core pair and no periphery pair; core-periphery pairs are left out
    of the correlation (``pattern="missing"``, Borgatti and Everett's
    version that does not force a density on them) or ideally tied
    (``"connected"``). The fit maximizes Pearson's r between adjacency and
    pattern over node pairs: the best core among the top-c agents by degree
    (every c at once, by cumulative edge counts), then single flips of the
    best gain until none improves r.

    The null is the same fit on ``n_null`` rewirings (``rewire``, undirected):
    a graph whose core is only its high-degree agents scores about as well
    as its rewirings; ``p_value`` is the share of rewirings scoring at least
    as high (with the observed one counted, so at least 1 / (n_null + 1)).
    Each flip costs O(n); the start from the degree order leaves few to do on
    planted graphs, more on large heavy-tailed ones (a second or two at
    n = 1e5 before the gain vanishes), times ``n_null + 1`` fits.
    """
    if pattern not in ("missing", "connected"):
        raise ValueError(f"pattern must be 'missing' or 'connected'; got {pattern!r}")
    src, dst, w = _check_edges(src, dst, n)
    s, d, _ = _unique_edges(src, dst, n, w)
    u = _undirected(s, d, n)
    core, rho = _fit_core(u, pattern)
    coo = sparse.triu(u, k=1).tocoo()
    a, b = coo.row.astype(np.int64), coo.col.astype(np.int64)
    null = np.empty(n_null)
    for r in range(n_null):
        ra, rb = rewire(a, b, n, directed=False, swaps=swaps, seed=_state(seed, 7, r))
        null[r] = _fit_core(_undirected(ra, rb, n), pattern)[1]
    mean = float(null.mean()) if n_null else float("nan")
    sd = float(null.std(ddof=1)) if n_null > 1 else 0.0
    p = (1.0 + float((null >= rho).sum())) / (n_null + 1.0)
    return CorePeriphery(core=core, rho=rho, pattern=pattern, null_rhos=null, null_mean=mean,
                         null_sd=sd, p_value=p)


# --- role stability over windows ------------------------------------------------------------


def match_roles(profiles_a, profiles_b) -> np.ndarray:
    """Map the roles of window b onto those of window a by the Hungarian method on profiles.

    Profiles (roles x features) are z-scored per feature over both windows
    together, and the assignment minimizes the summed Euclidean distance
    (``scipy.optimize.linear_sum_assignment``). Returns, for each role of b,
    its role in a; roles of b left over (b has more) get new ids from
    ``len(profiles_a)`` on.

    Examples
    --------
    >>> match_roles([[0.0, 1.0], [5.0, 0.0]], [[5.1, 0.1], [0.2, 0.9]]).tolist()
    [1, 0]
    """
    from scipy.optimize import linear_sum_assignment

    pa_, pb = np.asarray(profiles_a, dtype=np.float64), np.asarray(profiles_b, dtype=np.float64)
    if pa_.ndim != 2 or pb.ndim != 2 or pa_.shape[1] != pb.shape[1]:
        raise ValueError(f"profiles must be (roles x features) with the same features; got "
                         f"{pa_.shape} and {pb.shape}")
    both = np.vstack([pa_, pb])
    mu, sd = both.mean(axis=0), both.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    za, zb = (pa_ - mu) / sd, (pb - mu) / sd
    cost = np.sqrt(((zb[:, None, :] - za[None, :, :]) ** 2).sum(axis=2))
    rows, cols = linear_sum_assignment(cost)
    out = np.full(pb.shape[0], -1, dtype=np.int64)
    out[rows] = cols
    extra = out < 0
    out[extra] = pa_.shape[0] + np.arange(int(extra.sum()))
    return out


def _overlap_profiles(a: np.ndarray, b: np.ndarray):
    """Match by agents shared: profiles whose matching maximizes the overlap of roles."""
    from scipy.optimize import linear_sum_assignment

    ka, kb = int(a.max()) + 1, int(b.max()) + 1
    both = (a >= 0) & (b >= 0)
    cont = np.bincount(b[both] * ka + a[both], minlength=ka * kb).reshape(kb, ka)
    rows, cols = linear_sum_assignment(-cont)
    out = np.full(kb, -1, dtype=np.int64)
    out[rows] = cols
    extra = out < 0
    out[extra] = ka + np.arange(int(extra.sum()))
    return out


def role_changes(labels: Sequence[np.ndarray], profiles: Sequence | None = None) -> pa.Table:
    """How many agents change role between consecutive windows, after matching role labels.

    Parameters
    ----------
    labels : sequence of int arrays
        Each window's role per agent (same agents, same order); -1 marks an
        agent absent from a window, left out of the comparisons it is in.
    profiles : sequence of (roles x features) arrays, optional
        Each window's role profiles (``RoleResult.profiles`` columns, say).
        Labels of window t+1 are matched to window t by ``match_roles``;
        without profiles, by the assignment that keeps most agents' roles.

    Returns
    -------
    pyarrow.Table
        One row per pair of consecutive windows: ``window`` (the later one),
        ``agents`` (present in both), ``changed`` (how many changed role),
        ``share`` (changed / agents).

    Examples
    --------
    >>> a = np.array([0, 0, 1, 1, 2])
    >>> t = role_changes([a, (a + 1) % 3, np.array([1, 1, 2, 0, 0])])
    >>> t.column("changed").to_pylist(), t.column("share").to_pylist()
    ([0, 1], [0.0, 0.2])
    """
    labels = [np.asarray(x, dtype=np.int64) for x in labels]
    if len({x.shape for x in labels}) > 1:
        raise ValueError("every window needs one label per agent (same length); got lengths "
                         f"{[x.shape[0] for x in labels]}")
    if profiles is not None and len(profiles) != len(labels):
        raise ValueError(f"profiles must have one entry per window ({len(labels)}); "
                         f"got {len(profiles)}")
    rows = {"window": [], "agents": [], "changed": [], "share": []}
    for t in range(1, len(labels)):
        a, b = labels[t - 1], labels[t]
        both = (a >= 0) & (b >= 0)
        if not both.any():
            mapped = b
        elif profiles is not None:
            mapped = np.where(b >= 0, match_roles(profiles[t - 1], profiles[t])[b], -1)
        else:
            mapped = np.where(b >= 0, _overlap_profiles(a, b)[np.maximum(b, 0)], -1)
        changed = int((a[both] != mapped[both]).sum())
        count = int(both.sum())
        rows["window"].append(t)
        rows["agents"].append(count)
        rows["changed"].append(changed)
        rows["share"].append(changed / count if count else float("nan"))
    return pa.table({"window": pa.array(rows["window"], pa.int64()),
                     "agents": pa.array(rows["agents"], pa.int64()),
                     "changed": pa.array(rows["changed"], pa.int64()),
                     "share": pa.array(rows["share"], pa.float64())})


def roles_by_window(events: pa.Table, n: int, window: int, *, k: int | None = None,
                    kinds: Sequence[str] = INTERACTIONS, k_range: Sequence[int] = range(2, 9),
                    betweenness_sample: int | None = 64, seed: int = 0):
    """Roles in each window of ``window`` steps of the events, ready for ``role_changes``.

    Each window's interaction graph and behaviour give features
    (``agent_features``); they are log1p-transformed and standardized over all
    windows together, so a role means the same everywhere. k (given, or by
    silhouette over the pooled agent-windows) is fixed; k-means runs per
    window. Agents with no events in a window are -1 there.

    Returns
    -------
    (labels, profiles)
        Per window, the role per agent and the role profiles (mean
        standardized features, roles x features) for ``role_changes``.
    """
    step = np.asarray(events.column("step"), dtype=np.int64)
    agent = np.asarray(events.column("agent").fill_null(-1), dtype=np.int64)
    if window < 1:
        raise ValueError(f"window must be >= 1 step; got {window}")
    first = int(step.min()) if step.size else 0
    win = (step - first) // window
    n_win = int(win.max()) + 1 if step.size else 0
    tables, present = [], []
    for t in range(n_win):
        ev = events.filter(pa.array(win == t))
        e = interaction_edges(ev, kinds)
        s = np.asarray(e.column("src"))
        d = np.asarray(e.column("dst"))
        tables.append(agent_features(s, d, n, ev, weight=np.asarray(e.column("weight")),
                                     betweenness_sample=betweenness_sample,
                                     seed=_state(seed, 8, t)))
        present.append(np.bincount(agent[(win == t) & (agent >= 0)], minlength=n) > 0)
    # Pool all agent-windows so that every window is standardized the same way.
    common = sorted(set.intersection(*[set(t.column_names) for t in tables])) if tables else []
    common = [c for c in common if c != "agent"]
    pooled = pa.concat_tables([t.select(common) for t in tables]) if tables else None
    z, used = _standardize(pooled, common) if tables else (np.zeros((0, 0)), [])
    mask = np.concatenate(present) if present else np.zeros(0, bool)
    if k is None:
        k = _best_k(z[mask], k_range, "kmeans", seed, 9, 2000, n_init=4)[0]
    from sklearn.cluster import KMeans

    labels, profiles = [], []
    for t in range(n_win):
        zt = z[t * n:(t + 1) * n]
        here = present[t]
        lab = np.full(n, -1, dtype=np.int64)
        kt = min(k, int(here.sum()))
        if kt >= 1:
            km = KMeans(n_clusters=kt, n_init=4, random_state=_state(seed, 10, t))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lab[here] = km.fit_predict(zt[here])
            profiles.append(km.cluster_centers_)
        else:
            profiles.append(np.zeros((0, z.shape[1])))
        labels.append(lab)
    return labels, profiles
