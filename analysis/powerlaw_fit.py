"""Power-law fits of cascade sizes with the ``powerlaw`` package, done the careful way.

Three defaults of ``powerlaw.Fit`` bias results on cascade sizes, so this
module sets them explicitly:

* sizes are integers: ``discrete=True`` (the package's default is continuous,
  which biases alpha);
* ``powerlaw`` 2.0 bounds alpha to [0, 3] unless told otherwise, so a light
  tail silently reads alpha = 3: the range here is ``alpha_range`` (default
  1 to 6), wide enough for heavy and light tails, and a fit at its edge is
  flagged (``at_range_edge``);
* xmin is chosen by minimizing the KS distance (the package's method), unless
  given.

The result carries alpha with its standard error, xmin, the tail size, the KS
distance, and likelihood-ratio tests of the power law against the lognormal,
exponential and truncated power law (``R`` > 0 favours the power law, ``p``
is the significance of the sign; the truncated power law is nested, so its
``p`` uses the nested test). With ``bootstrap`` > 0 the whole procedure
(xmin included) is rerun on resampled data for a percentile interval of alpha,
which, unlike ``sigma``, counts the uncertainty of xmin.

Examples
--------
>>> import numpy as np
>>> sizes = np.random.default_rng(0).zipf(2.5, 5000)
>>> fit = fit_power_law(sizes)
>>> abs(fit.alpha - 2.5) < 3 * fit.sigma, fit.xmin
(True, 1)
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["PowerLawFit", "fit_power_law"]

ALTERNATIVES = ("lognormal", "exponential", "truncated_power_law")


@dataclass
class PowerLawFit:
    """What ``fit_power_law`` found (see the module docstring)."""

    alpha: float
    sigma: float
    """Standard error of alpha (the package's asymptotic ``standard_err``; xmin taken as known)."""
    xmin: int
    n: int
    n_tail: int
    ks: float
    at_range_edge: bool
    alpha_range: tuple[float, float]
    #: Per alternative: {"R": normalized log-likelihood ratio, "p": its significance}.
    compare: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Percentile interval of alpha over bootstrap refits (xmin refitted too).
    alpha_ci: tuple[float, float] | None = None
    bootstrap: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def preferred(self, alternative: str, level: float = 0.1) -> str:
        """Which of power law and ``alternative`` the ratio test favours at ``level``
        ("power_law", the alternative, or "neither" when the sign is not significant)."""
        c = self.compare[alternative]
        if c["p"] >= level:
            return "neither"
        return "power_law" if c["R"] > 0 else alternative


def _fit(data: np.ndarray, alpha_range, xmin):
    import powerlaw

    kwargs = {"xmin": float(xmin)} if xmin is not None else {}
    with warnings.catch_warnings():
        # The package warns about fits near parameter edges and divisions in its
        # likelihoods; the edge case is reported in the result instead.
        warnings.simplefilter("ignore")
        return powerlaw.Fit(data, discrete=True, verbose=0,
                            parameter_ranges={"alpha": list(alpha_range)}, **kwargs)


def fit_power_law(sizes, alpha_range: tuple[float, float] = (1.0, 6.0), xmin: int | None = None,
                  bootstrap: int = 0, seed: int = 0, ci: float = 0.95) -> PowerLawFit:
    """Fit a discrete power law to ``sizes`` (positive integers), with model comparisons.

    Parameters
    ----------
    sizes : array-like of int
        Cascade sizes (values < 1 are an error).
    alpha_range : (low, high)
        Bounds of alpha for the numerical fit; a result within 1% of an edge
        sets ``at_range_edge`` (widen the range).
    xmin : int, optional
        Fix the start of the tail; default: the KS-minimizing xmin.
    bootstrap : int
        Refits on resampled sizes for ``alpha_ci`` (0: none).
    seed : int
        Seed of the bootstrap resampling.
    """
    data = np.asarray(sizes)
    if data.ndim != 1 or data.shape[0] < 2:
        raise ValueError(f"need a 1-d array of at least 2 sizes; got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.integer):
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            raise ValueError("sizes must be integers (counts of nodes)")
        data = data.astype(np.int64)
    if data.min() < 1:
        raise ValueError(f"sizes must be >= 1; got a minimum of {data.min()}")
    if data.min() == data.max():
        raise ValueError("all sizes are equal: there is no distribution to fit")
    lo, hi = float(alpha_range[0]), float(alpha_range[1])
    if not 0 < lo < hi:
        raise ValueError(f"alpha_range must be (low, high) with 0 < low < high; got {alpha_range}")
    f = _fit(data, (lo, hi), xmin)
    compare = {}
    with warnings.catch_warnings():  # the package fits lazily, on first access
        warnings.simplefilter("ignore")
        pl = f.power_law
        for alt in ALTERNATIVES:
            nested = alt == "truncated_power_law"
            r, p = f.distribution_compare("power_law", alt, normalized_ratio=True, nested=nested)
            compare[alt] = {"R": float(r), "p": float(p)}
    width = hi - lo
    out = PowerLawFit(
        alpha=float(pl.alpha), sigma=float(pl.standard_err), xmin=int(round(f.xmin)),
        n=int(data.shape[0]), n_tail=int(f.n_tail), ks=float(pl.D),
        at_range_edge=bool(pl.alpha < lo + 0.01 * width or pl.alpha > hi - 0.01 * width),
        alpha_range=(lo, hi), compare=compare, bootstrap=int(bootstrap))
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        alphas = np.empty(bootstrap)
        for b in range(bootstrap):  # each refit is the whole procedure, xmin included
            sample = data[rng.integers(0, data.shape[0], data.shape[0])]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                alphas[b] = _fit(sample, (lo, hi), xmin).power_law.alpha
        tail = (1.0 - ci) / 2.0
        out.alpha_ci = (float(np.quantile(alphas, tail)), float(np.quantile(alphas, 1 - tail)))
    return out
