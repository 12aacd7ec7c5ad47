"""Exposure response: does the k-th exposure to an item make adoption more or less likely?

For every (agent, item) pair, where an item is a cascade ``root``, the
exposures the agent received before it adopted (or the log ended) and when:
``exposure_table``. In the ``feed`` env every impression is logged as a
``view`` whose ``target`` is the author who exposed the viewer. The ``cascade``
env's linear threshold logs only adoptions (``activate``), and its exposures
follow from the graph: an agent that activates at step t exposes each of its
out-neighbours at step t + 1 (the LT broadcast), so the exposers of an agent
are its in-neighbours active before its own adoption.

Four views of the same question, all pure functions of that table:

* ``exposure_curve``: p(k), the share of agents ever k-exposed who adopted
  before the (k + 1)-th exposure, with Wilson intervals (Romero, Meeder and
  Kleinberg 2011; Ugander et al. 2012);
* ``exposure_cox``: a Cox model with the exposure count as a time-varying
  covariate (lifelines ``CoxTimeVaryingFitter``): the hazard ratio per exposure;
* ``exposure_cloglog``: the same hazard in discrete time, a complementary
  log-log GLM on person-steps, since integer steps make many tied times;
* ``injection_effect``: the randomized check. The cascade env's ``inject``
  option adds exposures to a keyed random subset of agents; adoption of the
  injected against the rest tells what an extra exposure does.

A falling p(k) or a hazard ratio below 1 does not by itself show diminishing
returns to exposure: agents differ, and when each has its own constant
adoption chance per exposure, the eager ones adopt early and leave the
reluctant ones at high k, so the pooled curve falls although no agent's
chance changes (selection on unobserved susceptibility). Only the injection
test compares like with like. Every result says what it rests on in its
``basis`` field: ``"observational"`` (curve, Cox, GLM) or ``"randomized
injection"``; a conclusion about the causal effect of exposure should rest on
the latter.

Examples
--------
A feed log: agent 7 sees root 100 from authors 1 and 2, and reposts it at
step 3; agent 8 sees it twice from author 1 and never reposts.

>>> import pyarrow as pa
>>> ev = pa.table({
...     "step": [0, 1, 2, 3, 3, 1, 4],
...     "agent": [1, 7, 7, 7, 7, 8, 8],
...     "event": ["post", "view", "view", "view", "repost", "view", "view"],
...     "target": [None, 1, 1, 2, 2, 1, 1],
...     "item": [100, 100, 101, 102, 103, 100, 101],
...     "root": [100, 100, 100, 100, 100, 100, 100],
... })
>>> t = exposure_table(ev)
>>> t.select(["agent", "exposers_before_adoption", "impressions", "adopted"]).to_pylist()
... # doctest: +NORMALIZE_WHITESPACE
[{'agent': 7, 'exposers_before_adoption': 2, 'impressions': 3, 'adopted': True},
 {'agent': 8, 'exposers_before_adoption': 1, 'impressions': 2, 'adopted': False}]
>>> c = exposure_curve(t, max_k=2)
>>> c.column("exposed").to_pylist(), c.column("adopted").to_pylist()
([2, 1], [0, 1])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy import stats

from swarm.graph import ragged_arange

__all__ = [
    "exposure_cloglog",
    "exposure_cox",
    "exposure_curve",
    "exposure_table",
    "injection_effect",
]

OBSERVATIONAL = "observational"
RANDOMIZED = "randomized injection"


# -- the table ---------------------------------------------------------------


def _events_of(events: pa.Table, name: str, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Columns (nulls as -1) of the events named ``name``."""
    t = events.filter(pc.equal(events.column("event").cast(pa.string()), name))
    return {c: np.asarray(t.column(c).fill_null(-1)).astype(np.int64) for c in columns}


def _first_per_key(agent: np.ndarray, root: np.ndarray,
                   step: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The earliest (agent, root, step) of each distinct (agent, root)."""
    o = np.lexsort((step, root, agent))
    a, r, s = agent[o], root[o], step[o]
    first = np.ones(a.shape[0], dtype=bool)
    first[1:] = (a[1:] != a[:-1]) | (r[1:] != r[:-1])
    return a[first], r[first], s[first]


def _graph_csr(graph: Any, n_hint: int) -> tuple[np.ndarray, np.ndarray]:
    """Out-edge CSR (indptr, indices) from a CSR object, a pair, or {"src", "dst"} edges."""
    if isinstance(graph, Mapping):
        src = np.asarray(graph["src"], dtype=np.int64)
        dst = np.asarray(graph["dst"], dtype=np.int64)
        n = int(max(n_hint, src.max(initial=-1) + 1, dst.max(initial=-1) + 1))
        o = np.argsort(src, kind="stable")
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
        return indptr, dst[o]
    if hasattr(graph, "indptr") and hasattr(graph, "indices"):
        return np.asarray(graph.indptr, np.int64), np.asarray(graph.indices, np.int64)
    if isinstance(graph, tuple) and len(graph) == 2:
        return np.asarray(graph[0], np.int64), np.asarray(graph[1], np.int64)
    raise TypeError("graph must be a CSR graph (an object with indptr and indices, e.g. "
                    "swarm.graph.CSRGraph), a tuple (indptr, indices) of out-edges, or a "
                    f"mapping with 'src' and 'dst' edge arrays; got {type(graph).__name__}")


def _cascade_exposures(events: pa.Table, graph: Any, end_step: int):
    """Impressions (agent, root, step, exposer), adoptions and per-agent stop steps."""
    act = _events_of(events, "activate", ("agent", "root", "step"))
    n_hint = int(act["agent"].max(initial=-1)) + 1
    indptr, indices = _graph_csr(graph, n_hint)
    n = indptr.shape[0] - 1
    if act["agent"].size and act["agent"].max() >= n:
        raise ValueError(f"agent {int(act['agent'].max())} activated but the graph has n={n} "
                         "agents: pass the run's graph")
    # An agent is exposed while susceptible: through its adoption step, else to the end.
    stop = np.full(n, end_step, dtype=np.int64)
    stop[act["agent"]] = act["step"]
    counts = indptr[act["agent"] + 1] - indptr[act["agent"]]
    pos = ragged_arange(indptr[act["agent"]], counts)
    exposer = np.repeat(act["agent"], counts)
    when = np.repeat(act["step"] + 1, counts)
    agent = indices[pos]
    keep = when <= stop[agent]
    in_degree = np.bincount(indices, minlength=n)
    imp = {"agent": agent[keep], "root": np.repeat(act["root"], counts)[keep],
           "step": when[keep], "exposer": exposer[keep]}
    return imp, act, stop, in_degree


def _feed_exposures(events: pa.Table):
    """Views before each (agent, root)'s first repost, reposts, and authors of roots."""
    view = _events_of(events, "view", ("agent", "root", "step", "target"))
    rep = _events_of(events, "repost", ("agent", "root", "step"))
    post = _events_of(events, "post", ("agent", "item"))
    # An agent's own items are not exposures, and reposting one's own root is no adoption.
    own = view["target"] == view["agent"]
    imp = {"agent": view["agent"][~own], "root": view["root"][~own],
           "step": view["step"][~own], "exposer": view["target"][~own]}
    return imp, rep, post


def exposure_table(events: pa.Table, graph: Any = None, *, end_step: int | None = None) -> pa.Table:
    """Per (agent, root): exposures before adoption (or the end), and the adoption.

    Parameters
    ----------
    events : pyarrow.Table
        A run's events (``swarm.Run.events()``): ``view`` and ``repost`` events
        of the ``feed`` env, or ``activate`` events of the ``cascade`` env's
        linear threshold (without message faults, which drop or delay exposures).
    graph : optional
        The cascade env's graph, needed there since exposures are not logged:
        a ``swarm.graph.CSRGraph``, a tuple ``(indptr, indices)`` of out-edges
        (``indices[indptr[u]:indptr[u + 1]]`` receive what u emits), or a
        mapping ``{"src": ..., "dst": ...}`` of edges. Ignored for the feed.
    end_step : int, optional
        The last step the log covers. Default: the largest step in ``events``.
        For a cascade run pass the run's last step (``max(run.metrics()["step"])``):
        a run that went quiescent ran one step past its last activation, and the
        exposures delivered in it count.

    Returns
    -------
    pyarrow.Table
        Sorted by ``agent``, ``root``; one row per pair with an exposure or an
        adoption:

        * ``exposers_before_adoption`` (k): distinct exposers up to and including
          the adoption step (the exposures an agent decided on), else to ``end_step``;
        * ``impressions``: exposures in the same window (a feed agent may see
          several items of one root from one exposer; >= k);
        * ``adopted``, ``adoption_step`` (null if not), ``first_exposure_step``
          (null for pairs never exposed: the cascade's seeds);
        * ``end_step``: the last step at risk (adoption, in the cascade also the
          agent's adoption of another root, which ends its exposure, else the end);
        * ``exposure_steps``: the step each distinct exposer first reached the
          agent, ascending (the time-varying covariate of ``exposure_cox``);
        * ``activity``: the agent's impressions summed over all its rows (a
          stratum for the hazard models); ``in_degree``: the agent's in-degree
          in the cascade's graph (null for the feed).

        Exposures injected by the cascade env's ``inject`` option are not in k
        (they have no exposer); ``injection_effect`` reads them.
    """
    kinds = set(events.column("event").cast(pa.string()).unique().to_pylist())
    last = int(pc.max(events.column("step")).as_py() or 0) if events.num_rows else 0
    end = last if end_step is None else int(end_step)
    in_degree = None
    if "repost" in kinds and "view" not in kinds:
        raise ValueError("this feed log has reposts but no views: exposures need the view "
                         "events; run the feed with log_views: true")
    if "view" in kinds:
        imp, adopt, post = _feed_exposures(events)
        adopt = dict(zip(("agent", "root", "step"),
                         _first_per_key(adopt["agent"], adopt["root"], adopt["step"]),
                         strict=True))
        per_agent_stop = None
        excluded = post  # (agent, item) of every original post: the root's author
    elif "activate" in kinds:
        if graph is None:
            raise ValueError("the cascade env does not log exposures: pass the run's graph "
                             "(swarm.graphgen.build_graph(config), or (indptr, indices))")
        imp, adopt, per_agent_stop, in_degree = _cascade_exposures(events, graph, end)
        excluded = None
    else:
        raise ValueError(f"no exposure events in this log (event types: {sorted(kinds)}); "
                         "exposures come from the feed (view, repost) or the cascade env's "
                         "linear threshold (activate, with the graph)")

    # Distinct (agent, root) pairs over impressions and adoptions, sorted.
    all_a = np.concatenate([imp["agent"], adopt["agent"]])
    all_r = np.concatenate([imp["root"], adopt["root"]])
    o = np.lexsort((all_r, all_a))
    new = np.ones(o.shape[0], dtype=bool)
    new[1:] = (all_a[o][1:] != all_a[o][:-1]) | (all_r[o][1:] != all_r[o][:-1])
    pair_of = np.empty(o.shape[0], dtype=np.int64)
    pair_of[o] = np.cumsum(new) - 1
    p_agent, p_root = all_a[o][new], all_r[o][new]
    m = p_agent.shape[0]
    n_imp = imp["agent"].shape[0]
    imp_pair, ad_pair = pair_of[:n_imp], pair_of[n_imp:]

    adopted = np.zeros(m, dtype=bool)
    adopted[ad_pair] = True
    adoption_step = np.full(m, -1, dtype=np.int64)
    adoption_step[ad_pair] = adopt["step"]
    if per_agent_stop is not None:
        pair_end = per_agent_stop[p_agent]
    else:
        pair_end = np.where(adopted, adoption_step, end)
    keep_imp = imp["step"] <= pair_end[imp_pair]
    keep_pair = np.ones(m, dtype=bool)
    if excluded is not None and excluded["item"].size:
        # Drop the pairs (author, own root): item ids are unique, so one search.
        o = np.argsort(excluded["item"])
        items, authors = excluded["item"][o], excluded["agent"][o]
        at = np.minimum(np.searchsorted(items, p_root), items.shape[0] - 1)
        keep_pair = ~((items[at] == p_root) & (authors[at] == p_agent))
    keep_imp &= keep_pair[imp_pair]
    i_pair, i_step, i_exp = imp_pair[keep_imp], imp["step"][keep_imp], imp["exposer"][keep_imp]

    impressions = np.bincount(i_pair, minlength=m)
    # First step of each distinct (pair, exposer).
    o = np.lexsort((i_step, i_exp, i_pair))
    fp, fe, fs = i_pair[o], i_exp[o], i_step[o]
    first = np.ones(fp.shape[0], dtype=bool)
    first[1:] = (fp[1:] != fp[:-1]) | (fe[1:] != fe[:-1])
    fp, fs = fp[first], fs[first]
    o = np.lexsort((fs, fp))
    fp, fs = fp[o], fs[o]
    k = np.bincount(fp, minlength=m)
    offsets = np.zeros(m + 1, dtype=np.int64)
    np.cumsum(k, out=offsets[1:])
    first_step = np.full(m, -1, dtype=np.int64)
    has = k > 0
    first_step[has] = fs[offsets[:-1][has]]

    # The agent's impressions over all its rows.
    agents_u, agent_row = np.unique(p_agent, return_inverse=True)
    per_agent = np.bincount(agent_row, weights=impressions, minlength=agents_u.shape[0])
    activity = per_agent[agent_row].astype(np.int64)

    sel = np.flatnonzero(keep_pair)
    steps_list = pa.ListArray.from_arrays(pa.array(offsets), pa.array(fs, pa.int64()))
    cols = {
        "agent": pa.array(p_agent),
        "root": pa.array(p_root),
        "exposers_before_adoption": pa.array(k),
        "impressions": pa.array(impressions.astype(np.int64)),
        "adopted": pa.array(adopted),
        "adoption_step": pa.array(adoption_step, mask=~adopted),
        "first_exposure_step": pa.array(first_step, mask=~has),
        "end_step": pa.array(pair_end.astype(np.int64)),
        "exposure_steps": steps_list,
        "activity": pa.array(activity),
        "in_degree": (pa.array(in_degree[p_agent].astype(np.int64)) if in_degree is not None
                      else pa.nulls(m, pa.int64())),
    }
    table = pa.table(cols)
    return table.take(pa.array(sel)) if sel.shape[0] < m else table


# -- p(k) ----------------------------------------------------------------------


def _wilson(successes: np.ndarray, trials: np.ndarray,
            confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion (NaN where there are no trials)."""
    z = stats.norm.ppf(0.5 + confidence / 2)
    n = np.asarray(trials, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = successes / n
        denom = 1 + z * z / n
        center = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return center - half, center + half


def _exposure_lists(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """``exposure_steps`` as (offsets from 0, values as floats), whatever its chunks or slice."""
    lists = table.column("exposure_steps").combine_chunks()
    offsets = np.asarray(lists.offsets).astype(np.int64)
    values = np.asarray(lists.flatten().fill_null(0)).astype(np.float64)
    return offsets - offsets[0], values


def _steps_runs(table: pa.Table):
    """The distinct exposure steps of every row: (row, step, count after it, last of row).

    ``count`` is the number of distinct exposers once that step's exposures
    arrived: the counts at which an agent decided. Rows are the table's rows.
    """
    offsets, values = _exposure_lists(table)
    lengths = np.diff(offsets)
    row = np.repeat(np.arange(lengths.shape[0]), lengths)
    pos = np.arange(values.shape[0]) - offsets[:-1][row] if values.size else row
    # The last entry of each run of equal steps within a row.
    last = np.ones(values.shape[0], dtype=bool)
    last[:-1] = (row[1:] != row[:-1]) | (values[1:] != values[:-1])
    row, step, count = row[last], values[last], pos[last] + 1
    end_of_row = np.ones(row.shape[0], dtype=bool)
    end_of_row[:-1] = row[1:] != row[:-1]
    return row, step, count.astype(np.int64), end_of_row


def exposure_curve(table: pa.Table, max_k: int = 10, *, confidence: float = 0.95) -> pa.Table:
    """p(k): the share of pairs ever k-exposed that adopted before the (k + 1)-th exposure.

    A pair is k-exposed when it held exactly k distinct exposers at the end of
    some step (its decision points): one whose count jumps from 1 to 3 in one
    step was never 2-exposed. It adopted at k when it adopted holding k.
    Pairs never exposed (seeds) are left out.

    Parameters
    ----------
    table : pyarrow.Table
        ``exposure_table``'s result (``exposure_steps``, ``adopted``,
        ``exposers_before_adoption``).
    max_k : int
        The largest k reported.
    confidence : float
        Level of the Wilson score intervals.

    Returns
    -------
    pyarrow.Table
        ``k`` (1..max_k), ``exposed``, ``adopted``, ``p`` (NaN where nobody was
        k-exposed), ``ci_low``, ``ci_high``; schema metadata ``basis`` is
        ``observational``: a falling curve may be selection, not diminishing
        returns (see the module docstring).

    Examples
    --------
    Four pairs exposed at steps 0, 1, 2, ...; two adopt holding 1 exposer, one
    holding 2, one never:

    >>> import pyarrow as pa
    >>> t = pa.table({"exposure_steps": [[0], [0], [0, 1], [0, 1, 2]],
    ...               "adopted": [True, True, True, False],
    ...               "exposers_before_adoption": [1, 1, 2, 3]})
    >>> c = exposure_curve(t, max_k=3)
    >>> c.column("exposed").to_pylist(), c.column("adopted").to_pylist()
    ([4, 2, 1], [2, 1, 0])
    >>> [round(v, 2) for v in c.column("p").to_pylist()]
    [0.5, 0.5, 0.0]
    """
    if max_k < 1:
        raise ValueError(f"max_k must be >= 1; got {max_k}")
    row, _, count, _ = _steps_runs(table)
    kk = count[count <= max_k]
    exposed = np.bincount(kk, minlength=max_k + 1)[1:]
    adopted_col = np.asarray(table.column("adopted").fill_null(False), dtype=bool)
    k_final = np.asarray(table.column("exposers_before_adoption"), dtype=np.int64)
    hit = adopted_col & (k_final >= 1) & (k_final <= max_k)
    adopted = np.bincount(k_final[hit], minlength=max_k + 1)[1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        p = adopted / exposed
    lo, hi = _wilson(adopted, exposed, confidence)
    out = pa.table({"k": pa.array(np.arange(1, max_k + 1, dtype=np.int64)),
                    "exposed": pa.array(exposed.astype(np.int64)),
                    "adopted": pa.array(adopted.astype(np.int64)),
                    "p": pa.array(p), "ci_low": pa.array(lo), "ci_high": pa.array(hi)})
    return out.replace_schema_metadata({"basis": OBSERVATIONAL})


# -- hazard models -----------------------------------------------------------------


def _strata_codes(table: pa.Table, strata, rows: np.ndarray, buckets: int) -> np.ndarray | None:
    """Integer stratum per row of ``rows``: a column (numeric ones in quantile buckets) or
    an array aligned with the table."""
    if strata is None:
        return None
    values = (np.asarray(table.column(strata).fill_null(-1)) if isinstance(strata, str)
              else np.asarray(strata))
    if values.shape[0] != table.num_rows:
        raise ValueError(f"strata has {values.shape[0]} entries but the table has "
                         f"{table.num_rows} rows")
    values = values[rows]
    uniq, codes = np.unique(values, return_inverse=True)
    if np.issubdtype(values.dtype, np.number) and uniq.shape[0] > buckets:
        edges = np.unique(np.quantile(values, np.linspace(0, 1, buckets + 1)[1:-1]))
        codes = np.searchsorted(edges, values, side="right")
    return codes.astype(np.int64)


def _exposed_rows(table: pa.Table) -> np.ndarray:
    return np.flatnonzero(np.diff(_exposure_lists(table)[0]) > 0)


def _intervals(table: pa.Table, step_lag: float) -> dict[str, np.ndarray]:
    """Long format (id, start, stop, exposures, event) of the exposed rows."""
    row, step, count, end_of_row = _steps_runs(table)
    end = np.asarray(table.column("end_step"), dtype=np.float64) + step_lag
    adopted = np.asarray(table.column("adopted").fill_null(False), dtype=bool)
    stop = np.empty(step.shape[0])
    stop[:-1] = step[1:]
    stop[end_of_row] = end[row[end_of_row]]
    if (stop <= step).any():
        raise ValueError("an interval ends before it starts: end_step must come after the "
                         "last exposure (integer steps need step_lag=1, exact times step_lag=0)")
    return {"id": row, "start": step, "stop": stop, "exposures": count,
            "event": (end_of_row & adopted[row]).astype(np.int64)}


def exposure_cox(table: pa.Table, *, strata: str | np.ndarray | None = None, buckets: int = 4,
                 step_lag: float = 1.0, confidence: float = 0.95,
                 penalizer: float = 0.0) -> dict[str, Any]:
    """Hazard ratio per exposure: a Cox model with the exposure count time-varying.

    Each exposed pair is at risk from its first exposure until its
    ``end_step``; its covariate is the number of distinct exposers so far,
    piecewise constant between exposure steps (long format built vectorized,
    fitted with lifelines ``CoxTimeVaryingFitter``, Efron ties).

    Parameters
    ----------
    table : pyarrow.Table
        ``exposure_table``'s result, or any table with ``exposure_steps``
        (list of times, ascending), ``end_step`` (adoption or censoring time)
        and ``adopted``; times may be floats.
    strata : str or array, optional
        A column of ``table`` (numeric ones, such as ``in_degree`` or
        ``activity``, cut into ``buckets`` quantile buckets) or one value per
        row: a baseline hazard per stratum.
    step_lag : float
        Time from the exposures of ``end_step`` to the decision there. Engine
        steps: 1 (a step's decision follows its exposures, so it falls in
        ``(s, s + 1]``); exact event times: 0.
    confidence : float
        Level of the confidence interval.
    penalizer : float
        Passed to lifelines (ridge on the coefficient), 0 for none.

    Returns
    -------
    dict
        ``log_hr`` (per exposure), ``se``, ``ci_low``, ``ci_high`` (of the log
        HR), ``hazard_ratio``, ``p_value``, ``concordance``, ``n_subjects``,
        ``n_events``, ``n_intervals``, ``strata``, ``concordance_method`` and
        ``basis`` (``observational``). CoxTimeVaryingFitter has no concordance,
        so it is computed with ``lifelines.utils.concordance_index`` in each
        risk set (every adoption time, and stratum): the pairs adopting then
        against the pairs still at risk, both scored by the hazard of the
        exposures they held at that time; the sets' values are averaged with
        their numbers of comparable pairs as weights (Harrell's C for a
        time-varying covariate). Scoring each pair by its final count instead
        would be biased: long follow-up collects exposures.

    Examples
    --------
    >>> import pyarrow as pa
    >>> t = pa.table({"exposure_steps": [[0], [0, 1], [0, 2], [0], [0, 1, 2], [0, 1]],
    ...               "end_step": [0, 3, 2, 4, 5, 1],
    ...               "adopted": [True, False, True, False, True, True]})
    >>> res = exposure_cox(t)
    >>> res["n_subjects"], res["n_events"], res["basis"]
    (6, 4, 'observational')
    """
    import pandas as pd
    from lifelines import CoxTimeVaryingFitter

    long = _intervals(table, step_lag)
    frame = pd.DataFrame(long)
    names, stratum = None, np.zeros(long["id"].shape[0], dtype=np.int64)
    if strata is not None:
        rows = _exposed_rows(table)
        codes = _strata_codes(table, strata, rows, buckets)
        stratum = codes[np.searchsorted(rows, long["id"])]
        frame["stratum"] = stratum
        names = ["stratum"]
    c_up, varies = _risk_set_concordance(long, stratum)
    if not varies:
        raise ValueError("the exposure count is not identified: at each adoption time every "
                         "pair at risk holds the same count (exposures arrive in lockstep), "
                         "so it is confounded with the baseline hazard; use exposure_curve")
    fitter = CoxTimeVaryingFitter(alpha=1 - confidence, penalizer=penalizer)
    fitter.fit(frame, id_col="id", event_col="event", start_col="start", stop_col="stop",
               strata=names, show_progress=False)
    coef = float(fitter.params_["exposures"])
    se = float(fitter.standard_errors_["exposures"])
    # C(-score) = 1 - C(score) when ties count one half.
    concordance = c_up if coef > 0 else (1 - c_up if coef < 0 else 0.5)
    z = stats.norm.ppf(0.5 + confidence / 2)
    last = np.ones(long["id"].shape[0], dtype=bool)
    last[:-1] = long["id"][1:] != long["id"][:-1]
    return {
        "log_hr": coef, "se": se, "ci_low": float(coef - z * se), "ci_high": float(coef + z * se),
        "hazard_ratio": float(np.exp(coef)),
        "p_value": float(2 * stats.norm.sf(abs(coef / se))) if se > 0 else float("nan"),
        "concordance": float(concordance),
        "concordance_method": "lifelines.utils.concordance_index per risk set, weighted by "
                              "comparable pairs (CoxTimeVaryingFitter has no concordance)",
        "n_subjects": int(last.sum()), "n_events": int(long["event"].sum()),
        "n_intervals": int(long["id"].shape[0]),
        "strata": strata if isinstance(strata, str) or strata is None else "array",
        "basis": OBSERVATIONAL,
    }


def _risk_set_concordance(long: dict[str, np.ndarray],
                          stratum: np.ndarray) -> tuple[float, bool]:
    """Harrell's C with a time-varying covariate, from lifelines' concordance_index per risk set.

    At each adoption time T (within a stratum) the adopting pairs are compared
    with every other pair at risk at T, all scored by the exposures held at T.
    Returns C for "more exposures, higher hazard" (1 - C for the reverse) and
    whether the exposures differ within any risk set (else no model can tell
    their effect from the baseline hazard).
    """
    from lifelines.utils import concordance_index

    start, stop, event = long["start"], long["stop"], long["event"].astype(bool)
    k = long["exposures"]
    keys = np.unique(np.stack([stratum[event], stop[event]], axis=1), axis=0)
    total = weight = 0.0
    varies = False
    for g, t in keys:  # one risk set per adoption time and stratum, not per pair
        at_risk = (stratum == g) & (start < t) & (stop >= t)
        now = at_risk & event & (stop == t)
        others = at_risk & ~now
        n_now, n_others = int(now.sum()), int(others.sum())
        held = k[at_risk]
        varies = varies or bool(held.min() != held.max())
        if n_others == 0:
            continue
        # Adopters at t, the rest later; higher scores mean longer survival: minus k.
        times = np.r_[np.zeros(n_now), np.ones(n_others)]
        c = concordance_index(times, -np.r_[k[now], k[others]].astype(np.float64),
                              np.r_[np.ones(n_now), np.zeros(n_others)])
        pairs = n_now * n_others
        total += c * pairs
        weight += pairs
    return (total / weight if weight else float("nan")), varies


def _baseline_groups(step: np.ndarray, event: np.ndarray) -> np.ndarray:
    """A group per step, steps merged forward until each group has events and non-events
    (a step where all or none adopted would push its coefficient to infinity)."""
    uniq, inv = np.unique(step, return_inverse=True)
    ev = np.bincount(inv, weights=event, minlength=uniq.shape[0])
    tot = np.bincount(inv, minlength=uniq.shape[0])
    group = np.empty(uniq.shape[0], dtype=np.int64)
    g, has_ev, has_non = 0, False, False
    for i in range(uniq.shape[0]):  # one pass over the distinct steps, not the rows
        group[i] = g
        has_ev |= ev[i] > 0
        has_non |= ev[i] < tot[i]
        if has_ev and has_non:
            g, has_ev, has_non = g + 1, False, False
    if g > 0 and group[-1] == g:  # an incomplete last group joins the one before
        group[group == g] = g - 1
    return group[inv]


def exposure_cloglog(table: pa.Table, *, strata: str | np.ndarray | None = None,
                     buckets: int = 4, baseline: str = "step",
                     confidence: float = 0.95) -> dict[str, Any]:
    """Discrete-time hazard per exposure: a complementary log-log GLM on person-steps.

    Every exposed pair contributes one row per step from its first exposure to
    its ``end_step`` (integer steps), with the exposers it held after that
    step's exposures and whether it adopted then. The cloglog link makes the
    coefficient the log hazard ratio of a continuous-time proportional hazards
    model observed in whole steps, so it estimates what ``exposure_cox`` does
    without its tie approximation. Rows with equal covariates are pooled into
    binomial counts (the same likelihood, far fewer rows).

    Parameters
    ----------
    table : pyarrow.Table
        As for ``exposure_cox``, with integer steps.
    strata : str or array, optional
        As for ``exposure_cox``; here a fixed effect per stratum.
    baseline : {"step", "constant"}
        ``step``: a baseline hazard per step (steps where all or no pairs
        adopted merged with the next); ``constant``: one intercept.
    confidence : float
        Level of the confidence interval.

    Returns
    -------
    dict
        ``coef`` (log hazard ratio per exposure), ``se``, ``ci_low``,
        ``ci_high``, ``hazard_ratio``, ``p_value``, ``n_person_steps``,
        ``n_events``, ``n_subjects``, ``baseline``, ``basis`` (``observational``).

    Examples
    --------
    >>> import pyarrow as pa
    >>> t = pa.table({"exposure_steps": [[0], [0, 1], [0, 2], [0], [0, 1, 2], [0, 1]],
    ...               "end_step": [0, 3, 2, 4, 5, 1],
    ...               "adopted": [True, False, True, False, True, True]})
    >>> res = exposure_cloglog(t, baseline="constant")
    >>> res["n_person_steps"], res["n_events"]
    (21, 4)
    """
    import statsmodels.api as sm

    if baseline not in ("step", "constant"):
        raise ValueError(f"baseline must be 'step' or 'constant'; got {baseline!r}")
    rows = _exposed_rows(table)
    offsets, values = _exposure_lists(table)
    end_all = np.asarray(table.column("end_step"))
    if not (np.all(np.mod(values, 1) == 0) and np.all(np.mod(end_all[rows], 1) == 0)):
        raise ValueError("exposure_cloglog needs integer steps; for exact times use exposure_cox")
    first = values[offsets[:-1][rows]].astype(np.int64)
    end = end_all[rows].astype(np.int64)
    if (end < first).any():
        raise ValueError("a pair ends before its first exposure: end_step < first exposure")
    length = end - first + 1
    which = np.repeat(np.arange(rows.shape[0]), length)
    step = ragged_arange(first, length)
    # Exposers held at each person-step: exposures of this row at or before the step.
    span = int(values.max(initial=0)) + int(end.max(initial=0)) + 2
    lengths = np.diff(offsets)
    owner = np.repeat(np.arange(lengths.shape[0]), lengths)
    keys = owner * span + values.astype(np.int64)  # sorted: rows in order, steps ascending
    k = np.searchsorted(keys, rows[which] * span + step, side="right") - offsets[rows[which]]
    adopted = np.asarray(table.column("adopted").fill_null(False), dtype=bool)[rows]
    event = (adopted[which] & (step == end[which])).astype(np.int64)
    parts = [k]
    if baseline == "step":
        parts.append(_baseline_groups(step, event))
    if strata is not None:
        parts.append(_strata_codes(table, strata, rows, buckets)[which])
    # Pool person-steps with equal covariates into (events, trials).
    cells, cell = np.unique(np.stack(parts, axis=1), axis=0, return_inverse=True)
    cell = cell.reshape(-1)
    events = np.bincount(cell, weights=event, minlength=cells.shape[0])
    trials = np.bincount(cell, minlength=cells.shape[0]).astype(np.float64)
    columns = [cells[:, 0].astype(np.float64)]
    for j in range(1, cells.shape[1]):  # dummies of each factor, first level dropped
        levels = np.unique(cells[:, j])
        columns += [(cells[:, j] == lv).astype(np.float64) for lv in levels[1:]]
    x = sm.add_constant(np.column_stack(columns), has_constant="add")
    family = sm.families.Binomial(link=sm.families.links.CLogLog())
    fit = sm.GLM(np.column_stack([events, trials - events]), x, family=family).fit()
    coef, se = float(fit.params[1]), float(fit.bse[1])
    z = stats.norm.ppf(0.5 + confidence / 2)
    return {
        "coef": coef, "se": se, "ci_low": float(coef - z * se), "ci_high": float(coef + z * se),
        "hazard_ratio": float(np.exp(coef)),
        "p_value": float(2 * stats.norm.sf(abs(coef / se))) if se > 0 else float("nan"),
        "n_person_steps": int(step.shape[0]), "n_events": int(event.sum()),
        "n_subjects": int(rows.shape[0]), "baseline": baseline, "basis": OBSERVATIONAL,
    }


# -- the randomized check ----------------------------------------------------------


def injection_effect(events: pa.Table, agents: int | np.ndarray, *,
                     adoption: str = "activate", confidence: float = 0.95) -> dict[str, Any]:
    """Adoption of injected against control agents: the causal test of exposure response.

    Reads the ``inject`` events of a cascade run with ``env.inject`` (or any
    log of the same shape). Eligible are the agents that had not adopted
    before the injection step; the injected are the eligible ones with an
    ``inject`` event, the control the other eligible agents (the assignment is
    a keyed random draw, so the two differ only by chance and by the injected
    exposures). The outcome is adoption at or after the injection step, within
    the run.

    Adopters expose their neighbours, so injected agents also raise the
    control group's adoption (interference): the difference is the direct
    effect of the injection at the injected share, and shrinks toward zero
    as spillover grows.

    Parameters
    ----------
    events : pyarrow.Table
        ``inject`` events (agent, step) and adoption events (agent, step).
    agents : int or array
        The population: ``n`` (agents 0..n-1, the run's ``graph.n``) or the ids.
    adoption : str
        The adoption event (``activate`` in the cascade env).
    confidence : float
        Level of the Newcombe (Wilson score) interval of the difference.

    Returns
    -------
    dict
        ``injection_step``, ``exposures`` (per injected agent, from the events'
        ``value``; NaN if absent), ``treated``, ``treated_adopted``,
        ``control``, ``control_adopted``, ``p_treated``, ``p_control``,
        ``difference`` (treated minus control), ``ci_low``, ``ci_high``,
        ``p_value`` (two-sided Fisher exact test), ``test`` and ``basis``
        (``randomized injection``).

    Examples
    --------
    >>> import pyarrow as pa
    >>> ev = pa.table({"step": [1, 1, 1, 2, 3, 0],
    ...                "agent": [0, 1, 2, 0, 1, 5],
    ...                "event": ["inject", "inject", "inject", "activate", "activate",
    ...                          "activate"]})
    >>> r = injection_effect(ev, 6)
    >>> r["treated"], r["treated_adopted"], r["control"], r["control_adopted"]
    (3, 2, 2, 0)
    >>> r["basis"]
    'randomized injection'
    """
    name = events.column("event").cast(pa.string())
    inj = events.filter(pc.equal(name, "inject"))
    if inj.num_rows == 0:
        raise ValueError("no inject events in this log: run the cascade env with "
                         "env.inject (e.g. {fraction: 0.1, exposures: 1, step: 1})")
    steps = np.unique(np.asarray(inj.column("step")))
    if steps.shape[0] > 1:
        raise ValueError(f"inject events at several steps {steps.tolist()}: one injection "
                         "step per run is expected")
    s = int(steps[0])
    ids = np.arange(agents, dtype=np.int64) if np.ndim(agents) == 0 else np.unique(agents)
    ad = events.filter(pc.equal(name, adoption))
    ad_agent = np.asarray(ad.column("agent"), dtype=np.int64)
    ad_step = np.asarray(ad.column("step"), dtype=np.int64)
    first = np.full(ids.shape[0], np.iinfo(np.int64).max)
    at = np.searchsorted(ids, ad_agent)
    ok = (at < ids.shape[0]) & (ids[np.minimum(at, ids.shape[0] - 1)] == ad_agent)
    np.minimum.at(first, at[ok], ad_step[ok])
    injected = np.isin(ids, np.asarray(inj.column("agent"), dtype=np.int64))
    eligible = first >= s
    adopted = eligible & (first < np.iinfo(np.int64).max)
    n1, n0 = int((eligible & injected).sum()), int((eligible & ~injected).sum())
    a1, a0 = int((adopted & injected).sum()), int((adopted & ~injected).sum())
    if n1 == 0 or n0 == 0:
        raise ValueError(f"need eligible agents in both groups; got {n1} injected and {n0} "
                         "control (is inject.fraction 1, or did everyone adopt before the "
                         "injection step?)")
    p1, p0 = a1 / n1, a0 / n0
    (l1, l0), (u1, u0) = _wilson(np.array([a1, a0]), np.array([n1, n0]), confidence)
    d = p1 - p0
    value = inj.column("value") if "value" in inj.column_names else None
    per = float(pc.mean(value).as_py()) if value is not None and value.null_count < len(value) \
        else float("nan")
    return {
        "injection_step": s, "exposures": per,
        "treated": n1, "treated_adopted": a1, "control": n0, "control_adopted": a0,
        "p_treated": p1, "p_control": p0, "difference": d,
        "ci_low": d - float(np.hypot(p1 - l1, u0 - p0)),
        "ci_high": d + float(np.hypot(u1 - p1, p0 - l0)),
        "p_value": float(stats.fisher_exact([[a1, n1 - a1], [a0, n0 - a0]])[1]),
        "test": "Fisher exact, two-sided",
        "basis": RANDOMIZED,
    }
