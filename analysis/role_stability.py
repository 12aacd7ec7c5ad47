"""Do agents keep their role? Role labels matched across windows, and the switches counted.

``match_roles`` maps one window's roles onto another's (Hungarian method on
role profiles); ``role_changes`` counts, for each pair of consecutive
windows, the agents whose role changed after matching; ``roles_by_window``
makes the windows from a run's events, standardized together so that a role
means the same in every window.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from swarm.analysis.role_clustering import _best_k, _standardize
from swarm.analysis.role_features import (
    INTERACTIONS,
    _state,
    agent_features,
    interaction_edges,
)

__all__ = ["match_roles", "role_changes", "roles_by_window"]

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
