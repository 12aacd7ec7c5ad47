"""Coordination outcomes of consensus, commons and games runs, and conditions compared.

``coordination_summary(metrics, env)`` reads a run's per-step metrics table:

* consensus and contract_net: ``agreement`` (reached or not), ``steps_to_agreement`` (the first
  step with agreement, None if never), ``validity`` and ``decided`` at the
  last step, the most ``safety_violations`` seen, and messages used in all;
* commons: ``survived``, ``rounds_survived``, the final ``stock``, the total
  harvest, the mean ``gini``;
* games: the final and mean ``cooperation_rate``.

``compare_conditions(a, b)`` compares one outcome between two conditions
(say, runs with a coordination protocol vs a matched baseline): the
difference of means, Cohen's d (pooled standard deviation) and a two-sided
permutation-test p value. ``sweep_comparison`` does it for every value of
one grid key of a ``swarm sweep`` against a baseline value, pairing nothing
but the key (other grid keys, seeds say, are the replicates).

Examples
--------
>>> r = compare_conditions([1.0, 1.2, 0.9, 1.1], [0.2, 0.1, 0.3, 0.2], seed=0)
>>> round(r["difference"], 3), r["p_value"] < 0.05
(0.85, True)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

__all__ = ["compare_conditions", "coordination_summary", "sweep_comparison"]


def _col(metrics: pa.Table, name: str) -> np.ndarray | None:
    """The column as floats; None when it is missing or empty."""
    if name not in metrics.column_names or metrics.num_rows == 0:
        return None
    return np.asarray(metrics.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)


def _last(metrics: pa.Table, name: str) -> float | None:
    x = _col(metrics, name)
    return None if x is None else float(x[-1])


def _agg(metrics: pa.Table, name: str, how) -> float | None:
    x = _col(metrics, name)
    return None if x is None or not np.isfinite(x).any() else float(how(x))


def coordination_summary(metrics: pa.Table, env: str) -> dict:
    """The outcome of one run from its metrics table (see the module docstring); a value
    is None where the table lacks its column (a failed run, say)."""
    out: dict = {"env": env, "steps": metrics.num_rows}
    if env in ("consensus", "contract_net"):
        agree = _col(metrics, "agreement")
        hit = np.flatnonzero(agree > 0.5) if agree is not None else np.empty(0, np.int64)
        safety = _agg(metrics, "safety_violations", np.nanmax)
        messages = _agg(metrics, "messages", np.nansum)
        out.update(
            agreement=bool(agree is not None and hit.shape[0] > 0 and agree[-1] > 0.5),
            steps_to_agreement=int(np.asarray(metrics.column("step"))[hit[0]])
            if hit.shape[0] else None,
            validity=_last(metrics, "validity"), decided=_last(metrics, "decided"),
            safety_violations=None if safety is None else int(safety),
            messages=None if messages is None else int(messages))
    elif env == "commons":
        collapsed = _last(metrics, "collapsed")
        rounds = _last(metrics, "rounds_survived")
        out.update(
            survived=None if collapsed is None else bool(collapsed < 0.5),
            rounds_survived=None if rounds is None else int(rounds),
            final_stock=_last(metrics, "stock"),
            total_harvest=_agg(metrics, "total_harvest", np.nansum),
            mean_gini=_agg(metrics, "gini", np.nanmean))
    elif env == "games":
        out.update(final_cooperation=_last(metrics, "cooperation_rate"),
                   mean_cooperation=_agg(metrics, "cooperation_rate", np.nanmean))
    return out


def compare_conditions(a, b, permutations: int = 10_000, seed: int = 0) -> dict:
    """Difference of means (a - b), Cohen's d and a two-sided permutation p value."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"need at least 2 finite values per condition; got {a.shape[0]} "
                         f"and {b.shape[0]}")
    diff = float(a.mean() - b.mean())
    pooled = np.sqrt(((a.shape[0] - 1) * a.var(ddof=1) + (b.shape[0] - 1) * b.var(ddof=1))
                     / (a.shape[0] + b.shape[0] - 2))
    d = diff / pooled if pooled > 0 else (0.0 if diff == 0 else float(np.sign(diff) * np.inf))
    both = np.concatenate([a, b])
    rng = np.random.default_rng(seed)
    # Every permutation at once: rows of shuffled labels (the first a.size go to "a").
    keys = rng.random((permutations, both.shape[0]))
    idx = np.argsort(keys, axis=1)[:, : a.shape[0]]
    sum_a = both[idx].sum(axis=1)
    perm = sum_a / a.shape[0] - (both.sum() - sum_a) / b.shape[0]
    p = (np.count_nonzero(np.abs(perm) >= abs(diff) - 1e-12) + 1) / (permutations + 1)
    return {"difference": diff, "cohens_d": float(d), "p_value": float(p),
            "n_a": int(a.shape[0]), "n_b": int(b.shape[0]), "mean_a": float(a.mean()),
            "mean_b": float(b.mean())}


def sweep_comparison(sweep_dir: str | Path, metric: str, key: str, baseline) -> pa.Table:
    """Each value of grid key ``key`` vs the ``baseline`` value, on final ``metric``
    (a metric name, read from the index's ``final_<metric>`` column).

    Reads the sweep's ``index.arrow`` (completed points only); the other grid
    keys are the replicates. One row per non-baseline value.
    """
    import pyarrow.feather as feather

    index = feather.read_table(str(Path(sweep_dir) / "index.arrow"))
    if key not in index.column_names:
        raise ValueError(f"{key!r} is not a grid key of this sweep; columns: "
                         f"{index.column_names}")
    if metric not in index.column_names and f"final_{metric}" in index.column_names:
        metric = f"final_{metric}"  # the index names final metrics final_<name>
    if metric not in index.column_names:
        raise ValueError(f"no final metric {metric!r} in the sweep index; columns: "
                         f"{index.column_names}")
    import yaml

    # The index holds grid values as YAML text (a grid may mix types).
    baseline = yaml.safe_dump(baseline, default_flow_style=True).strip().removesuffix("\n...")
    rows = [r for r in index.to_pylist() if r.get("status") == "completed"]
    values: dict = {}
    for r in rows:
        values.setdefault(r[key], []).append(r[metric])
    if baseline not in values:
        raise ValueError(f"no completed point with {key}={baseline!r}; values: "
                         f"{sorted(values, key=str)}")
    out = []
    for v, xs in sorted(values.items(), key=lambda kv: str(kv[0])):
        if v == baseline:
            continue
        out.append({key: str(v), **compare_conditions(xs, values[baseline])})
    return pa.Table.from_pylist(out)
