"""RolX: soft roles by non-negative matrix factorization of ReFeX recursive features.

``refex_features`` builds base features (degrees, strengths, egonet edges)
and their neighbour sums and means, round after round, pruning correlated
ones; ``rolx`` factors them with scikit-learn's NMF into memberships and
role definitions, k by silhouette (or a description length). The second
role method next to ``roles``' clusters.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from swarm.analysis.role_clustering import _silhouette
from swarm.analysis.role_features import (
    _check_edges,
    _state,
    _triangles,
    _undirected,
    _unique_edges,
)

__all__ = ["RolXResult", "refex_features", "rolx"]

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
