"""Cascade trees from root/parent columns: size, depth, breadth, structural virality, timing.

A cascade is the tree of adoptions that grew from one root: every node names
its parent (null or -1 at the root) and its root. What a node is depends on
the env: an agent in the ``cascade`` env (``activate`` events), an item in
the ``feed`` (``post`` and ``repost`` events). A cascade's size counts
people: the distinct agents among its nodes (the feed lets an agent share a
cascade once, but older logs may hold repeats). Everything is vectorized over
numpy columns: depths by pointer jumping, subtree sizes level by level from
the leaves, groups by a sort; no Python object per node.

Structural virality (Goel, Anderson, Hofman and Watts, 2016) is the mean
shortest-path distance between two distinct nodes of the undirected tree. An
edge whose lower side holds ``s`` of the ``n`` nodes lies on ``s * (n - s)``
of the paths, so the mean is ``sum_e s_e (n - s_e) / (n (n - 1) / 2)``, from
the subtree sizes in O(n).

Examples
--------
A star with 4 leaves and a path of 4 nodes:

>>> import numpy as np
>>> node = np.array([0, 1, 2, 3, 4, 10, 11, 12, 13])
>>> parent = np.array([-1, 0, 0, 0, 0, -1, 10, 11, 12])
>>> root = np.array([0, 0, 0, 0, 0, 10, 10, 10, 10])
>>> step = np.array([0, 1, 1, 1, 1, 0, 1, 2, 3])
>>> t = cascade_table(node, parent, root, step)
>>> t.column("size").to_pylist(), t.column("depth").to_pylist()
([5, 4], [1, 3])
>>> [round(v, 4) for v in t.column("structural_virality").to_pylist()]
[1.6, 1.6667]
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["cascade_table", "cascades", "cascade_nodes"]


def _index_of(node: np.ndarray, sorted_ids: np.ndarray, order: np.ndarray,
              ids: np.ndarray) -> np.ndarray:
    """Row of each id among ``node`` (``sorted_ids = node[order]``); -1 if absent."""
    out = np.full(ids.shape[0], -1, dtype=np.int64)
    if node.shape[0] == 0 or ids.shape[0] == 0:
        return out
    lo, hi = int(sorted_ids[0]), int(sorted_ids[-1])
    if hi - lo < 4 * node.shape[0] + 1024:  # ids close to dense (agents): a lookup table
        table = np.full(hi - lo + 1, -1, dtype=np.int64)
        table[node - lo] = np.arange(node.shape[0])
        ok = (ids >= lo) & (ids <= hi)
        out[ok] = table[ids[ok] - lo]
        return out
    # Sparse ids (items): search with sorted queries, which walks memory in order.
    q = np.argsort(ids, kind="stable")
    pos = np.minimum(np.searchsorted(sorted_ids, ids[q]), sorted_ids.shape[0] - 1)
    found = sorted_ids[pos] == ids[q]
    out[q[found]] = order[pos[found]]
    return out


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``keys`` (ascending) and each entry's group index, by one sort
    (``np.unique`` with ``return_inverse`` is much slower on large arrays)."""
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    new = np.ones(k.shape[0], dtype=bool)
    new[1:] = k[1:] != k[:-1]
    inverse = np.empty(keys.shape[0], dtype=np.int64)
    inverse[order] = np.cumsum(new) - 1
    return k[new], inverse


def _depths(up: np.ndarray) -> np.ndarray:
    """Hops from each node to its root, where ``up[i]`` is i's parent row (i at a root)."""
    depth = (up != np.arange(up.shape[0])).astype(np.int64)
    anc = up.copy()
    while True:  # pointer jumping: log2(depth) rounds over all nodes
        nxt = anc[anc]
        if np.array_equal(nxt, anc):
            return depth
        depth = depth + depth[anc]
        anc = nxt


def cascade_table(node: np.ndarray, parent: np.ndarray, root: np.ndarray,
                  step: np.ndarray, agent: np.ndarray | None = None) -> pa.Table:
    """One row per cascade (root): its size, depth, breadth, virality and timing.

    Parameters
    ----------
    node, parent, root, step : arrays of equal length
        One entry per node (unique ``node`` ids); ``parent`` is -1 at roots.
        A node whose parent is not among the nodes starts its own tree (a
        partial log, say); ``root`` is then ignored in favour of the tree found.
    agent : array of the same length, optional
        Who made each node, where nodes are not agents (the feed's items): the
        size then counts distinct agents, so an agent that shared a cascade
        twice (a log of an older feed) counts once. Default: each node is an agent.

    Returns
    -------
    pyarrow.Table
        ``root``, ``size`` (distinct agents), ``nodes`` (tree nodes: ``size`` where
        each agent joins once), ``depth`` (longest root-to-node path),
        ``max_breadth`` (most nodes at one depth), ``structural_virality`` (of the
        tree of nodes; NaN for a single node), ``start_step``, ``half_steps``
        (steps from the root until half the agents had joined, each at its first
        node), ``duration`` (steps from the root to the last node), sorted by
        ``root``.
    """
    node = np.asarray(node, dtype=np.int64)
    parent = np.asarray(parent, dtype=np.int64)
    step = np.asarray(step, dtype=np.int64)
    n = node.shape[0]
    order = np.argsort(node, kind="stable")
    sorted_ids = node[order]
    if n > 1 and (sorted_ids[1:] == sorted_ids[:-1]).any():
        dup = sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]][0]
        raise ValueError(f"node {dup} appears twice: each node joins one cascade once "
                         "(filter the events to adoptions first)")
    up = _index_of(node, sorted_ids, order, parent)
    rows = np.arange(n)
    up = np.where(up < 0, rows, up)
    depth = _depths(up)
    # The root row of every node: jump to the top.
    top = up.copy()
    while True:
        nxt = top[top]
        if np.array_equal(nxt, top):
            break
        top = nxt
    roots, tree = _groups(top)
    k = roots.shape[0]
    size = np.bincount(tree, minlength=k)
    max_depth = np.zeros(k, dtype=np.int64)
    np.maximum.at(max_depth, tree, depth)
    # Breadth: nodes per (tree, depth); the most at any depth.
    width = int(depth.max()) + 1 if n else 1
    per_level = np.bincount(tree * width + depth, minlength=k * width).reshape(k, width)
    breadth = per_level.max(axis=1) if n else np.zeros(0, np.int64)
    # Subtree sizes, from the deepest level up: each level adds into its parents.
    sub = np.ones(n, dtype=np.int64)
    by_depth = np.argsort(depth, kind="stable")
    bounds = np.searchsorted(depth[by_depth], np.arange(width + 1))
    for d in range(width - 1, 0, -1):
        lvl = by_depth[bounds[d]:bounds[d + 1]]
        np.add.at(sub, up[lvl], sub[lvl])
    child = depth > 0
    n_tree = size[tree].astype(np.float64)
    paths = np.bincount(tree[child], weights=(sub[child] * (n_tree[child] - sub[child])),
                        minlength=k)
    pairs = size.astype(np.float64) * (size - 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        virality = np.where(size > 1, paths / pairs, np.nan)
    nodes = size
    # People, not nodes: each (tree, agent) pair once, at its first step.
    j_tree, j_step = tree, step
    if agent is not None and n:
        agent = np.asarray(agent, dtype=np.int64)
        o = np.lexsort((step, agent, tree))
        first_join = np.ones(n, dtype=bool)
        first_join[1:] = (tree[o][1:] != tree[o][:-1]) | (agent[o][1:] != agent[o][:-1])
        j_tree, j_step = tree[o][first_join], step[o][first_join]
        size = np.bincount(j_tree, minlength=k)
    # Timing: steps from the root until half the agents (rounded up) had joined.
    start = step[roots]
    o = np.lexsort((j_step, j_tree))
    t_sorted, s_sorted = j_tree[o], j_step[o]
    first = np.searchsorted(t_sorted, np.arange(k))
    half_at = first + (size + 1) // 2 - 1
    half_steps = s_sorted[half_at] - start if n else np.zeros(0, np.int64)
    last = np.zeros(k, dtype=np.int64)
    np.maximum.at(last, tree, step)
    return pa.table({
        "root": pa.array(node[roots]),
        "size": pa.array(size.astype(np.int64)),
        "nodes": pa.array(nodes.astype(np.int64)),
        "depth": pa.array(max_depth),
        "max_breadth": pa.array(breadth.astype(np.int64)),
        "structural_virality": pa.array(virality.astype(np.float64)),
        "start_step": pa.array(start),
        "half_steps": pa.array(half_steps.astype(np.int64)),
        "duration": pa.array((last - start).astype(np.int64)),
    }).sort_by("root")


def cascade_nodes(events: pa.Table) -> dict[str, np.ndarray]:
    """The cascade nodes of a run's events: ``node``, ``parent``, ``root``, ``step``, ``agent``.

    Items in a feed run (``post`` and ``repost`` events: a node is an item, made
    by ``agent``); agents otherwise (``activate`` events of the cascade env: a
    node is an agent).
    """
    kinds = set(events.column("event").cast(pa.string()).unique().to_pylist())
    if {"post", "repost"} & kinds:
        sel, node_col = ("post", "repost"), "item"
    elif "activate" in kinds:
        sel, node_col = ("activate",), "agent"
    else:
        raise ValueError(f"no cascade events in this log (event types: {sorted(kinds)}); "
                         "cascades come from the cascade env (activate) or the feed "
                         "(post, repost)")
    t = events.filter(pc.is_in(events.column("event").cast(pa.string()), pa.array(sel)))
    return {
        "node": np.asarray(t.column(node_col).fill_null(-1)),
        "parent": np.asarray(t.column("parent").fill_null(-1)),
        "root": np.asarray(t.column("root").fill_null(-1)),
        "step": np.asarray(t.column("step")).astype(np.int64),
        "agent": np.asarray(t.column("agent")).astype(np.int64),
    }


def cascades(run) -> pa.Table:
    """``cascade_table`` of a run (a ``swarm.Run`` or the path of a run directory)."""
    if not hasattr(run, "events"):
        from swarm import open_run

        run = open_run(run)
    events = run.events(columns=["step", "agent", "event", "item", "root", "parent"])
    return cascade_table(**cascade_nodes(events))
