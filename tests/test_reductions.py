"""swarm.reductions: exact, shard-count invariant metrics (checked against numpy)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from swarm.reductions import (
    Count,
    Gini,
    Histogram,
    Max,
    Mean,
    Min,
    Sum,
    Variance,
    decode_total,
    encode_total,
    finish_all,
    merge_all,
    partials,
)


def _split(reductions, values: dict, parts: int, order=None) -> dict:
    """Each reduction computed with the values cut into ``parts`` shards (merged in
    ``order``)."""
    n = len(next(iter(values.values())))
    cuts = np.array_split(np.arange(n), parts)
    shards = [partials(reductions, lambda name, c=c: (len(c) if name == "__agents__"
                                                      else np.asarray(values[name])[c]))
              for c in cuts]
    if order is not None:
        shards = [shards[i] for i in order]
    return finish_all(reductions, merge_all(reductions, shards))


def test_reductions_equal_numpy_and_do_not_depend_on_the_split():
    rng = np.random.default_rng(1)
    x = rng.normal(size=10_001) * 10.0 ** rng.integers(-8, 8, 10_001)
    units = rng.integers(0, 50, 10_001)
    flag = x > 0
    reductions = {"sum": Sum("x"), "mean": Mean("x"), "var": Variance("x"),
                  "share": Mean("flag"), "n": Count(), "pos": Count("x", where="flag"),
                  "lo": Min("x"), "hi": Max("x"), "gini": Gini("units"),
                  "hist": Histogram("units", edges=(0, 10, 20, 50))}
    values = {"x": x, "units": units, "flag": flag}
    one = _split(reductions, values, 1)
    exact = sum(Fraction(v) for v in x.tolist())
    assert one["sum"] == float(exact)  # the exactly rounded sum, not numpy's
    assert one["mean"] == pytest.approx(x.mean(), rel=1e-12)
    assert one["var"] == pytest.approx(x.var(), rel=1e-9)
    assert one["share"] == flag.mean() and one["n"] == x.size and one["pos"] == flag.sum()
    assert (one["lo"], one["hi"]) == (x.min(), x.max())
    pairs = np.abs(units[:, None] - units[None, :]).sum()
    assert one["gini"] == pytest.approx(pairs / (2 * units.size**2 * units.mean()), rel=1e-12)
    assert [one[f"hist_{i}"] for i in range(3)] == np.histogram(units, (0, 10, 20, 50))[0].tolist()
    for parts, order in ((2, None), (7, None), (7, [6, 2, 0, 5, 1, 4, 3]), (40, None)):
        assert _split(reductions, values, parts, order) == one


def test_variance_is_exact_and_never_negative():
    for c in (0.7, 0.1, 1e-300, 3.0):
        x = np.full(1001, c)
        assert _split({"v": Variance("x")}, {"x": x}, 3)["v"] == 0.0
    x = np.array([1e8 + 1, 1e8 - 1])
    assert _split({"v": Variance("x")}, {"x": x}, 2)["v"] == 1.0


def test_edge_cases_empty_shards_nan_ints_and_scalars():
    empty = {"x": np.zeros(0)}
    out = _split({"m": Mean("x"), "v": Variance("x"), "s": Sum("x"), "lo": Min("x"),
                  "g": Gini("x")}, empty, 1)
    assert np.isnan(out["m"]) and np.isnan(out["v"]) and out["s"] == 0 and np.isnan(out["lo"])
    assert np.isnan(out["g"])
    assert _split({"g": Gini("u")}, {"u": np.zeros(10, np.int64)}, 2)["g"] == 0.0
    big = np.full(4, 2**62, dtype=np.int64)  # their sum overflows int64
    assert _split({"s": Sum("u"), "m": Mean("u")}, {"u": big}, 2) == {"s": 2**64, "m": 2**62}
    with pytest.raises(ValueError, match="finite"):
        _split({"lo": Min("x")}, {"x": np.array([1.0, np.nan])}, 1)
    with pytest.raises(ValueError, match="finite"):
        _split({"m": Mean("x")}, {"x": np.array([1.0, np.nan])}, 1)
    # A 0-d value (a number every shard knows, such as a stock) reduces like one row.
    get = {"x": np.float64(2.5)}.get
    p = partials({"hi": Max("x"), "n": Count("x")}, get)
    assert finish_all({"hi": Max("x"), "n": Count("x")}, p) == {"hi": 2.5, "n": 1}


def test_totals_between_shards_are_exact():
    a, b = np.array([0.1, 0.2]), np.array([0.3, 1e-30])
    assert decode_total([encode_total(a), encode_total(b)]) == float(
        Fraction(0.1) + Fraction(0.2) + Fraction(0.3) + Fraction(1e-30))
    assert decode_total([encode_total(np.array([2**62, 2**62])), encode_total(3)]) == 2**63 + 3
    with pytest.raises(ValueError, match="int on every shard"):
        decode_total([encode_total(1), encode_total(np.array([0.5]))])
