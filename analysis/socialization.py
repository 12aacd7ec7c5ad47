"""Socialization and influence: does the population settle, do agents change, who leads.

Measures over step windows (``window`` steps each), from the event log. An
agent's *mix* in a window is the share of each action type among its events
(views excluded by default: they are exposures, not actions); the
population's mix is the same over all agents.

* ``collective_stabilization``: total-variation distance between the
  population's mix in consecutive windows, and the first window from which it
  stays below ``threshold``;
* ``individual_turnover``: per window, the mean total-variation distance
  between each agent's own mix and its mix in the previous window (agents
  active in both);
* ``individual_inertia``: per window, the mean cosine similarity of an agent's
  mix to its own mix in the previous window, next to its similarity to the mean
  mix of its neighbours in the previous window (inertia: self > neighbours);
* ``influence_persistence``: the agents who received the most engagement
  (``target`` of likes, reposts and comments) per window, and the Jaccard
  overlap of consecutive windows' top ``top``.

Everything is sparse matrix algebra over (agent x action type) counts; no
Python loop per agent. Windows without events are skipped.

Examples
--------
>>> import numpy as np
>>> step = np.array([0, 0, 1, 1, 2, 2, 3, 3])
>>> agent = np.array([0, 1, 0, 1, 0, 1, 0, 1])
>>> code = np.array([0, 1, 0, 1, 1, 0, 1, 0])   # agents swap behaviour at step 2
>>> t = individual_turnover(step, agent, code, window=2)
>>> t.column("turnover").to_pylist()
[1.0]
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

__all__ = ["action_columns", "collective_stabilization", "individual_inertia",
           "individual_turnover", "influence_persistence"]

ENGAGEMENT = ("like", "repost", "comment")


def action_columns(events: pa.Table, exclude: tuple[str, ...] = ("view",)):
    """(step, agent, code, names) of the events that are actions (``exclude`` dropped)."""
    names = events.column("event").cast(pa.string())
    keep = pc.invert(pc.is_in(names, pa.array(list(exclude), pa.string())))
    t = events.filter(keep)
    kinds = t.column("event").cast(pa.string())
    uniq = sorted(set(kinds.unique().to_pylist()))
    code = np.asarray(pc.index_in(kinds, pa.array(uniq, pa.string()))).astype(np.int64)
    return (np.asarray(t.column("step")).astype(np.int64),
            np.asarray(t.column("agent")).astype(np.int64), code, uniq)


def _mixes(step, agent, code, window: int, n: int = 0):
    """Per window (ascending): (window id, csr matrix agent x type of shares, active mask),
    with at least ``n`` rows."""
    if step.shape[0] == 0:
        return []
    n = max(n, int(agent.max()) + 1)
    types = int(code.max()) + 1
    win = step // window
    out = []
    order = np.argsort(win, kind="stable")
    w_sorted = win[order]
    bounds = np.flatnonzero(np.diff(w_sorted)) + 1
    for part in np.split(order, bounds):
        counts = sp.csr_matrix((np.ones(part.shape[0]), (agent[part], code[part])),
                               shape=(n, types))
        totals = np.asarray(counts.sum(axis=1)).ravel()
        active = totals > 0
        shares = sp.diags(np.where(active, 1.0 / np.maximum(totals, 1), 0.0)) @ counts
        out.append((int(win[part[0]]), shares.tocsr(), active))
    return out


def collective_stabilization(step, agent, code, window: int = 5,
                             threshold: float = 0.05) -> tuple[pa.Table, int | None]:
    """Distance of the population's action mix from the previous window's; when it settles.

    Returns the table (``window``, ``first_step``, ``distance``: total variation,
    0 to 1) and the first window from which every later distance is below
    ``threshold`` (None if it never settles).
    """
    types = int(code.max()) + 1 if code.shape[0] else 0
    win = step // window
    n_win = int(win.max()) + 1 if win.shape[0] else 0
    mix = np.bincount(win * types + code, minlength=n_win * types).reshape(n_win, types)
    wins = np.flatnonzero(mix.sum(axis=1))  # windows with events
    mix = mix[wins].astype(np.float64)
    mix /= np.maximum(mix.sum(axis=1, keepdims=True), 1.0)
    dist = np.r_[np.nan, 0.5 * np.abs(np.diff(mix, axis=0)).sum(axis=1)]
    below = dist[1:] < threshold
    settled = None
    if below.shape[0] and below[-1]:
        # The start of the final run of windows below the threshold.
        last_above = np.flatnonzero(~below)
        # Below from the start: settled at the first window; else after the last jump.
        settled = int(wins[last_above[-1] + 2]) if last_above.shape[0] else int(wins[0])
    table = pa.table({"window": pa.array(wins.astype(np.int64)),
                      "first_step": pa.array((wins * window).astype(np.int64)),
                      "distance": pa.array(dist)})
    return table, settled


def individual_turnover(step, agent, code, window: int = 5) -> pa.Table:
    """Mean change of agents' own action mixes between consecutive windows."""
    mixes = _mixes(step, agent, code, window)
    rows = []
    for (_, m0, a0), (w1, m1, a1) in zip(mixes, mixes[1:], strict=False):
        both = a0 & a1
        if not both.any():
            continue
        tv = 0.5 * np.asarray(abs(m1 - m0).sum(axis=1)).ravel()[both]
        rows.append((w1, float(tv.mean()), int(both.sum())))
    return pa.table({"window": pa.array([r[0] for r in rows], pa.int64()),
                     "turnover": pa.array([r[1] for r in rows], pa.float64()),
                     "agents": pa.array([r[2] for r in rows], pa.int64())})


def _row_cosine(a: sp.csr_matrix, b: sp.csr_matrix) -> np.ndarray:
    num = np.asarray(a.multiply(b).sum(axis=1)).ravel()
    na = np.sqrt(np.asarray(a.multiply(a).sum(axis=1)).ravel())
    nb = np.sqrt(np.asarray(b.multiply(b).sum(axis=1)).ravel())
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / (na * nb)


def individual_inertia(step, agent, code, src: np.ndarray, dst: np.ndarray, n: int,
                       window: int = 5) -> pa.Table:
    """Similarity of agents to their own past vs to their neighbours' past, per window.

    ``src -> dst`` are the graph's edges (dst hears src: its neighbours are its
    in-neighbours). Per window: ``self_similarity`` (cosine to its own mix in the
    previous window) and ``neighbour_similarity`` (cosine to the mean mix of its
    in-neighbours in the previous window), over agents active in both windows
    with at least one active in-neighbour. ``inertia`` is their difference.
    """
    size = max(n, int(agent.max()) + 1 if agent.shape[0] else 0,
               int(src.max()) + 1 if src.shape[0] else 0, int(dst.max()) + 1 if dst.shape[0] else 0)
    mixes = _mixes(step, agent, code, window, size)
    adj = sp.csr_matrix((np.ones(src.shape[0]), (dst, src)), shape=(size, size))
    rows = []
    for (_, m0, a0), (w1, m1, a1) in zip(mixes, mixes[1:], strict=False):
        heard = np.asarray(adj @ a0.astype(np.float64)).ravel()
        nbr = sp.diags(np.where(heard > 0, 1.0 / np.maximum(heard, 1), 0.0)) @ (adj @ m0)
        ok = a0 & a1 & (heard > 0)
        if not ok.any():
            continue
        own = _row_cosine(m1, m0)[ok]
        other = _row_cosine(m1, sp.csr_matrix(nbr))[ok]
        rows.append((w1, float(np.nanmean(own)), float(np.nanmean(other)), int(ok.sum())))
    return pa.table({
        "window": pa.array([r[0] for r in rows], pa.int64()),
        "self_similarity": pa.array([r[1] for r in rows], pa.float64()),
        "neighbour_similarity": pa.array([r[2] for r in rows], pa.float64()),
        "inertia": pa.array([r[1] - r[2] for r in rows], pa.float64()),
        "agents": pa.array([r[3] for r in rows], pa.int64()),
    })


def influence_persistence(events: pa.Table, window: int = 5, top: int = 100) -> pa.Table:
    """Top receivers of engagement per window and the overlap with the previous window's.

    Engagement: ``target`` of like, repost and comment events. Returns per
    window the top count used (``min(top, receivers)``) and the Jaccard overlap
    of the top sets of this window and the previous one.
    """
    names = events.column("event").cast(pa.string())
    t = events.filter(pc.is_in(names, pa.array(list(ENGAGEMENT), pa.string())))
    target = np.asarray(t.column("target").fill_null(-1)).astype(np.int64)
    step = np.asarray(t.column("step")).astype(np.int64)
    keep = target >= 0
    target, win = target[keep], step[keep] // window
    rows, prev = [], None
    order = np.argsort(win, kind="stable")
    for part in np.split(order, np.flatnonzero(np.diff(win[order])) + 1) if order.size else []:
        counts = np.bincount(target[part])
        k = int(min(top, np.count_nonzero(counts)))
        # The k most engaged (ties to the smaller id: a stable sort of -counts).
        best = set(np.argsort(-counts, kind="stable")[:k].tolist())
        jac = float(len(best & prev) / len(best | prev)) if prev is not None and best | prev \
            else float("nan")
        rows.append((int(win[part[0]]), k, jac))
        prev = best
    return pa.table({"window": pa.array([r[0] for r in rows], pa.int64()),
                     "top": pa.array([r[1] for r in rows], pa.int64()),
                     "overlap": pa.array([r[2] for r in rows], pa.float64())})
