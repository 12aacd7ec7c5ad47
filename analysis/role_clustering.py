"""Roles by clustering agent features, checked against degree-preserving rewirings.

``roles`` fits k-means or a Gaussian mixture over log1p-transformed,
standardized ``agent_features``, k chosen by silhouette over ``k_range``. A
heavy-tailed graph without any planted roles already gives a high
silhouette (one huge cluster and a few hubs), so every ``RoleResult`` comes
with the same pipeline on ``rewire`` nulls and with the agreement (ARI) of
clusterings from different seeds. The standardization, clustering and
silhouette helpers here are also used by ``rolx`` and ``role_stability``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from swarm.analysis.rewiring import _rewired_edges
from swarm.analysis.role_features import (
    _check_edges,
    _is_symmetric,
    _rng,
    _state,
    _unique_edges,
    agent_features,
)

__all__ = ["RoleResult", "roles"]

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
