"""Metrics declared as reductions: computed by the engine, exactly, for any shard count.

An env names its per-step metrics as reductions of arrays it holds (a state
column, reduced over the shard's agents after the step) or hands back
(``StepResult.values``): ``Mean("opinion")``, ``Variance("opinion")``,
``Share("adopted")``, ``Gini("harvest")``. Each shard turns its part into an
exact partial (integers: counts, sums as integer multiples of a power of two,
histograms), the driver adds the partials with integer arithmetic and
finishes each metric once, with one rounding. So a metric is the same number
whatever the shard count or the order shards report in, and no env writes
fixed-point arithmetic or sorts before a float sum.

Floats are summed exactly: a float64 is ``m * 2**e`` with an integer ``m`` of
53 bits, so a sum of floats is an integer multiple of the smallest ``2**e``,
held as a Python int. Squares (``Variance``) are split exactly into a rounded
product and its error (Dekker's two-product), so a variance is exact too, and
never negative. Integers are summed as Python ints (no overflow). NaN is an
error in every reduction: it would make the result depend on the order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

__all__ = ["Count", "Gini", "Histogram", "Max", "Mean", "Min", "Reduction", "Share", "Sum",
           "Variance", "decode_total", "encode_total", "exact_sum", "finish_all", "merge_all",
           "partials"]

#: Values per ``bincount`` call in ``exact_sum``: its float64 totals of 27-bit halves
#: stay exact below 2**53, i.e. for fewer than 2**26 values.
_CHUNK = 1 << 24


def exact_sum(values: Any) -> tuple[int, int]:
    """``(N, e)`` with ``sum(values) == N * 2**e`` exactly (float64 values).

    >>> n, e = exact_sum([0.1, 0.2, -0.3])
    >>> Fraction(n) * Fraction(2) ** e == Fraction(0.1) + Fraction(0.2) - Fraction(0.3)
    True
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[x != 0]
    if x.size == 0:
        return 0, 0
    if not np.isfinite(x).all():
        raise ValueError("a metric's values must be finite; got NaN or infinity")
    total, base = 0, None
    for lo in range(0, x.size, _CHUNK):
        part = x[lo:lo + _CHUNK]
        m, e = np.frexp(part)
        mi = np.ldexp(m, 53).astype(np.int64)  # exact: |mi| < 2**53
        emin = int(e.min())
        k = (e - emin).astype(np.int64)
        hi = mi >> 26  # floor, so lo below is in [0, 2**26)
        sh = np.bincount(k, weights=hi.astype(np.float64))
        sl = np.bincount(k, weights=(mi - (hi << 26)).astype(np.float64))
        n = 0
        for i in np.flatnonzero((sh != 0) | (sl != 0)).tolist():
            n += ((int(sh[i]) << 26) + int(sl[i])) << i
        total, base = _add((total, base), (n, emin - 53))
    return total, base


def _int_sum(x: np.ndarray) -> int:
    """The exact sum of an integer array (int64 halves, then Python ints: no overflow)."""
    x = np.asarray(x).astype(np.int64, copy=False).ravel()
    if x.size == 0:
        return 0
    hi, lo = x >> 32, x & 0xFFFFFFFF  # each sum fits in int64 for < 2**31 values
    total = 0
    for a in range(0, x.size, 1 << 30):
        total += (int(hi[a:a + (1 << 30)].sum()) << 32) + int(lo[a:a + (1 << 30)].sum())
    return total


def _square_parts(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x * x`` as ``hi + lo`` exactly (Dekker's two-product; ``hi`` the rounded square)."""
    x = np.asarray(x, dtype=np.float64)
    hi = x * x
    c = x * 134217729.0  # 2**27 + 1: Veltkamp's split into two 26-bit halves
    xh = c - (c - x)
    xl = x - xh
    lo = ((xh * xh - hi) + 2.0 * xh * xl) + xl * xl
    return hi, lo


def _check_finite(x: np.ndarray, what: str) -> None:
    if x.dtype.kind == "f" and x.size and not np.isfinite(x).all():
        raise ValueError(f"{what}: a metric's values must be finite; got NaN or infinity")


def _add(a: tuple[int, int | None], b: tuple[int, int | None]) -> tuple[int, int]:
    """Sum of two exact ``(N, e)`` values."""
    (na, ea), (nb, eb) = a, b
    if ea is None or na == 0:
        return nb, (eb if eb is not None else 0)
    if eb is None or nb == 0:
        return na, ea
    e = min(ea, eb)
    return (na << (ea - e)) + (nb << (eb - e)), e


#: Bits per int64 limb of an exact sum sent between shards.
_LIMB = 62


def encode_total(value: Any) -> np.ndarray:
    """A shard's contribution to a population-wide total (``StepResult.totals``) as an int64
    array that travels and checkpoints like any message column: an int as itself
    (``[v]``); an array as its exact sum, ``[tag, exponent, sign, limbs...]`` (tag -2:
    integers, -1: floats).

    >>> decode_total([encode_total(np.array([0.1, 0.2])), encode_total(np.array([0.3]))])
    0.6
    >>> decode_total([encode_total(2), encode_total(np.array([3, 4]))])
    9
    """
    if isinstance(value, (int, np.integer)):
        return np.array([int(value)], dtype=np.int64)
    value = np.asarray(value)
    if value.dtype.kind in "biu":
        tag, (n, e) = -2, (_int_sum(value), 0)
    else:
        tag, (n, e) = -1, exact_sum(value)
    limbs, rest = [], abs(n)
    while rest:
        limbs.append(rest & ((1 << _LIMB) - 1))
        rest >>= _LIMB
    return np.array([tag, e, -1 if n < 0 else 1, *limbs], dtype=np.int64)


def decode_total(parts: list[np.ndarray]) -> int | float:
    """The exact sum of every shard's ``encode_total`` part: an int for integers, else the
    float sum rounded once."""
    floats = [p.shape[0] > 1 and int(p[0]) == -1 for p in parts]
    if any(floats) and not all(floats):
        raise ValueError("a total must be an int on every shard or floats on every shard")
    acc: tuple[int, int | None] = (0, None)
    for p in parts:
        if p.shape[0] == 1:
            acc = _add(acc, (int(p[0]), 0))
            continue
        n = sum(int(limb) << (_LIMB * i) for i, limb in enumerate(p[3:].tolist()))
        acc = _add(acc, (int(p[2]) * n, int(p[1])))
    exact = _value((acc[0], acc[1] or 0))
    return float(exact) if all(floats) and parts else int(exact)


def _value(s: tuple[int, int]) -> Fraction:
    n, e = s
    return Fraction(n) * (Fraction(2) ** e)


@dataclass(frozen=True)
class Reduction:
    """A per-step metric: ``source`` (a state column or a ``StepResult.values`` key),
    optionally only where the boolean array ``where`` is True, and for a 2-d source
    one component ``dim`` (default: all components)."""

    source: str | None = None
    where: str | None = None
    dim: int | None = None

    def columns(self, get) -> np.ndarray:
        """The values this reduction reads, from ``get(name)`` (None: not there)."""
        x = get(self.source)
        if x is None:
            raise KeyError(f"metric source {self.source!r} is neither a state column nor a "
                           "key of StepResult.values")
        x = np.atleast_1d(np.asarray(x))
        if self.dim is not None:
            x = x[..., self.dim]
        if self.where is not None:
            x = x[np.asarray(get(self.where), dtype=bool)]
        return x

    def partial(self, x: np.ndarray) -> Any:
        raise NotImplementedError

    def merge(self, a: Any, b: Any) -> Any:
        raise NotImplementedError

    def finish(self, p: Any) -> float | int:
        raise NotImplementedError


@dataclass(frozen=True)
class Count(Reduction):
    """How many values (rows, or rows where ``where``); no ``source``: the agents."""

    def columns(self, get) -> np.ndarray:
        if self.source is None:
            n = get("__agents__")
            x = np.ones(n, dtype=bool)
            return x if self.where is None else x[np.asarray(get(self.where), dtype=bool)]
        return super().columns(get)

    def partial(self, x):
        return int(x.shape[0])

    def merge(self, a, b):
        return a + b

    def finish(self, p):
        return int(p)


@dataclass(frozen=True)
class Sum(Reduction):
    """The exact sum (an int for integer and boolean sources)."""

    def partial(self, x):
        if x.size == 0:
            return ("empty", 0)
        if x.dtype.kind in "biu":
            return ("int", _int_sum(x))
        return ("float", exact_sum(x))

    def merge(self, a, b):
        if a[0] == "empty":
            return b
        if b[0] == "empty":
            return a
        if a[0] == "int" and b[0] == "int":
            return ("int", a[1] + b[1])
        return ("float", _add(_as_exact(a), _as_exact(b)))

    def finish(self, p):
        return p[1] if p[0] in ("int", "empty") else float(_value(p[1]))


def _as_exact(p) -> tuple[int, int]:
    return (p[1], 0) if p[0] == "int" else p[1]


@dataclass(frozen=True)
class Mean(Reduction):
    """The mean, NaN when there is no value."""

    def partial(self, x):
        if x.dtype.kind in "biu":
            return int(x.size), (_int_sum(x), 0)
        return int(x.size), exact_sum(x)

    def merge(self, a, b):
        return a[0] + b[0], _add(a[1], b[1])

    def finish(self, p):
        return float(_value(p[1]) / p[0]) if p[0] else math.nan


@dataclass(frozen=True)
class Share(Mean):
    """The share of True values (a mean of booleans), NaN when there is no value."""


@dataclass(frozen=True)
class Variance(Reduction):
    """The population variance; for a 2-d source the total variance (the mean squared
    distance to the mean vector). NaN when there is no value."""

    def partial(self, x):
        x = np.asarray(x, dtype=np.float64)
        rows = int(x.shape[0])
        cols = [x] if x.ndim == 1 else [x[:, d] for d in range(x.shape[1])]
        hi, lo = _square_parts(x)
        _check_finite(hi, "Variance")
        return rows, [exact_sum(c) for c in cols], _add(exact_sum(hi), exact_sum(lo))

    def merge(self, a, b):
        if not a[0]:
            return b
        if not b[0]:
            return a
        return a[0] + b[0], [_add(s, t) for s, t in zip(a[1], b[1], strict=True)], \
            _add(a[2], b[2])

    def finish(self, p):
        n, sums, sq = p
        if not n:
            return math.nan
        mean_sq = sum((_value(s) / n) ** 2 for s in sums)
        return float(max(_value(sq) / n - mean_sq, Fraction(0)))


@dataclass(frozen=True)
class Min(Reduction):
    """The smallest value (NaN when there is none)."""

    def partial(self, x):
        _check_finite(x, "Min/Max")
        return x.min().item() if x.size else None

    def merge(self, a, b):
        return b if a is None else a if b is None else min(a, b)

    def finish(self, p):
        return math.nan if p is None else p


@dataclass(frozen=True)
class Max(Min):
    """The largest value (NaN when there is none)."""

    def partial(self, x):
        _check_finite(x, "Min/Max")
        return x.max().item() if x.size else None

    def merge(self, a, b):
        return b if a is None else a if b is None else max(a, b)


@dataclass(frozen=True)
class Histogram(Reduction):
    """Counts in the bins ``edges`` (``numpy.histogram``'s rule: the last bin is closed);
    one metric column per bin, ``<name>_<i>``."""

    edges: tuple[float, ...] = ()

    def partial(self, x):
        return np.histogram(x, bins=np.asarray(self.edges))[0].astype(np.int64)

    def merge(self, a, b):
        return a + b

    def finish(self, p):
        return [int(c) for c in p]


@dataclass(frozen=True)
class Gini(Reduction):
    """The Gini coefficient of non-negative integer values (a harvest in units, a wealth in
    coins): sum over all pairs of |x_i - x_j| / (2 n^2 mean), from an exact histogram.
    NaN when there is no value; 0 when all are equal (all 0 included)."""

    def partial(self, x):
        if x.size and x.dtype.kind not in "biu":
            if not np.array_equal(x, np.rint(x)):
                raise ValueError(f"Gini({self.source!r}) needs integer values (units); "
                                 "scale and round them in the env")
            x = x.astype(np.int64)
        if x.size and x.min() < 0:
            raise ValueError(f"Gini({self.source!r}) needs non-negative values")
        values, counts = _histogram(x.astype(np.int64))
        return values, counts

    def merge(self, a, b):
        values = np.concatenate([a[0], b[0]])
        counts = np.concatenate([a[1], b[1]])
        order = np.argsort(values, kind="stable")
        values, counts = values[order], counts[order]
        first = np.ones(values.shape[0], dtype=bool)
        first[1:] = values[1:] != values[:-1]
        idx = np.flatnonzero(first)
        return values[idx], np.add.reduceat(counts, idx) if idx.size else counts

    def finish(self, p):
        values, counts = p
        v = [int(a) for a in values.tolist()]
        c = [int(a) for a in counts.tolist()]
        n, total = sum(c), sum(a * b for a, b in zip(v, c, strict=True))
        if n == 0:
            return math.nan
        if total == 0:
            return 0.0  # all equal (to 0)
        pairs, below, below_sum = 0, 0, 0  # sum over pairs i < j of c_i c_j (v_j - v_i)
        for value, count in zip(v, c, strict=True):
            pairs += count * (value * below - below_sum)
            below += count
            below_sum += count * value
        return float(Fraction(pairs, n * total))


def _histogram(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values, counts) of non-negative ints, by bincount when the range is small."""
    if x.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    top = int(x.max())
    if top < 4 * x.size + 1024:
        counts = np.bincount(x)
        values = np.flatnonzero(counts)
        return values.astype(np.int64), counts[values].astype(np.int64)
    s = np.sort(x)
    first = np.ones(s.shape[0], dtype=bool)
    first[1:] = s[1:] != s[:-1]
    idx = np.flatnonzero(first)
    return s[idx], np.diff(np.append(idx, s.shape[0])).astype(np.int64)


def partials(reductions: Mapping[str, Reduction], get) -> dict[str, Any]:
    """Each reduction's exact partial on one shard (``get(name)``: its arrays)."""
    return {name: r.partial(r.columns(get)) for name, r in reductions.items()}


def merge_all(reductions: Mapping[str, Reduction], parts: list[dict[str, Any]]
              ) -> dict[str, Any]:
    """The shards' partials added up (exactly: the order does not matter)."""
    out: dict[str, Any] = {}
    for name, r in reductions.items():
        got = [p[name] for p in parts if name in p]
        acc = got[0] if got else None
        for p in got[1:]:
            acc = r.merge(acc, p)
        out[name] = acc
    return out


def finish_all(reductions: Mapping[str, Reduction], merged: Mapping[str, Any]
               ) -> dict[str, float | int]:
    """The metric values of a step (a histogram gives one column per bin)."""
    out: dict[str, float | int] = {}
    for name, r in reductions.items():
        if merged.get(name) is None:
            out[name] = math.nan
            continue
        value = r.finish(merged[name])
        if isinstance(value, list):
            out.update({f"{name}_{i}": c for i, c in enumerate(value)})
        else:
            out[name] = value
    return out
