"""Exposure response: known hazard ratios recovered, selection told apart from causation,
tables read from engine runs, and the cascade env's injection experiment."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import cascade_config, sorted_events

import swarm
from swarm.analysis.exposure import (
    exposure_cloglog,
    exposure_cox,
    exposure_curve,
    exposure_table,
    injection_effect,
)
from swarm.errors import ConfigError
from swarm.runner import build_graph

LOG_HR = float(np.log(0.53))  # -0.635: the per-exposure hazard ratio simulated below


def lists(rows: np.ndarray, values: np.ndarray, n: int) -> pa.ListArray:
    """A list per row 0..n-1 of ``values`` (``rows`` ascending)."""
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def simulate_hazard(n=4000, steps=10, h0=0.3, q=0.5, seed=1):
    """Continuous-time adoption with hazard h0 * HR^(k - 1), k exposers held.

    Exposures arrive at integer times (one at 0, then one per step with
    probability q), so the hazard is constant within each step [t, t + 1) and
    the adoption time within the step is a truncated exponential. Returns the
    exact-time table and the same data seen in whole steps.
    """
    rng = np.random.default_rng(seed)
    arrive = rng.random((n, steps)) < q
    arrive[:, 0] = True
    k = np.cumsum(arrive, axis=1)
    rate = h0 * np.exp(LOG_HR * (k - 1))
    p_step = 1 - np.exp(-rate)
    adopt = rng.random((n, steps)) < p_step
    adopted = adopt.any(axis=1)
    step = np.where(adopted, adopt.argmax(axis=1), steps - 1)
    lam, pr = rate[np.arange(n), step], p_step[np.arange(n), step]
    time = step - np.log1p(-rng.random(n) * pr) / lam
    at_risk = arrive & (np.arange(steps)[None, :] <= step[:, None])
    rows, when = np.nonzero(at_risk)
    exposures = lists(rows, when.astype(np.int64), n)
    exact = pa.table({"exposure_steps": exposures, "adopted": adopted,
                      "end_step": np.where(adopted, time, float(steps))})
    stepped = pa.table({"exposure_steps": exposures, "adopted": adopted, "end_step": step})
    return exact, stepped


@pytest.mark.integration  # two survival fits on a large table: seconds
def test_cox_and_cloglog_recover_a_known_hazard_ratio_per_exposure():
    exact, stepped = simulate_hazard(n=2000)
    cox = exposure_cox(exact, step_lag=0.0)
    # Exact times: the Cox model is the true model, so the estimate is within 3 SE.
    assert abs(cox["log_hr"] - LOG_HR) < 3 * cox["se"], cox
    assert cox["se"] < 0.05 and cox["ci_low"] < LOG_HR < cox["ci_high"]
    assert cox["n_events"] > 1000 and 0.5 < cox["concordance"] < 1.0
    assert cox["basis"] == "observational"
    # Whole steps: the cloglog GLM is the grouped-time form of the same proportional
    # hazards model, so it recovers the log HR within 3 SE too (both baselines).
    for baseline in ("constant", "step"):
        glm = exposure_cloglog(stepped, baseline=baseline)
        assert abs(glm["coef"] - LOG_HR) < 3 * glm["se"], (baseline, glm)
    # Cox on the tied step times (Efron) lands near it: within 0.1.
    tied = exposure_cox(stepped)
    assert abs(tied["log_hr"] - LOG_HR) < 0.1, tied


def beta_population(n=20_000, a=1.0, b=3.0, seed=2):
    return np.random.default_rng(seed).beta(a, b, n)


def test_heterogeneous_constant_chances_make_p_k_fall_but_injection_finds_no_effect():
    p = beta_population()
    n, steps = p.shape[0], 10
    rng = np.random.default_rng(3)
    # Exposures arrive at random steps; each is an independent chance p_i of adopting,
    # whatever came before: no dose effect at all.
    arrive = rng.random((n, steps)) < 0.5
    arrive[:, 0] = True
    adopt = arrive & (rng.random((n, steps)) < p[:, None])
    adopted = adopt.any(axis=1)
    step = np.where(adopted, adopt.argmax(axis=1), steps - 1)
    rows, when = np.nonzero(arrive & (np.arange(steps)[None, :] <= step[:, None]))
    table = pa.table({"exposure_steps": lists(rows, when.astype(np.int64), n),
                      "adopted": adopted, "end_step": step,
                      "exposers_before_adoption": np.bincount(rows, minlength=n)})
    curve = exposure_curve(table, max_k=4).to_pydict()
    # Pooled p(k) = a / (a + b + k - 1): 0.25 at k=1, 0.143 at k=4; the eager adopt
    # first and leave the reluctant. The intervals do not overlap.
    assert curve["ci_high"][3] < curve["ci_low"][0]
    assert curve["p"][0] == pytest.approx(0.25, abs=0.015)
    assert curve["p"][3] == pytest.approx(1 / 7, abs=0.015)

    # The randomized check on the same population: the effect of extra exposures.
    null = injection_experiment(p, dose=False)
    assert null["p_value"] > 0.05, null
    assert null["ci_low"] < 0 < null["ci_high"] and abs(null["difference"]) < 0.02
    assert null["basis"] == "randomized injection"
    # Where held exposures do raise the chance (complex contagion), the same test sees it.
    dose = injection_experiment(p, dose=True)
    assert dose["difference"] > 0.05 and dose["p_value"] < 1e-6, dose


def injection_experiment(p: np.ndarray, dose: bool, before=3, extra=3, seed=4) -> dict:
    """Natural exposures at steps 0..before-1; at step ``before`` half the agents get
    ``extra`` exposures added to their count (no chance to adopt from those), then the
    natural exposure of that step. The outcome is adoption at it, logged as events.

    ``dose=False``: every exposure is a chance p_i, whatever the count.
    ``dose=True``: an exposure taken while holding k is a chance 1 - (1 - p_i)^k.
    """
    rng = np.random.default_rng(seed)
    n = p.shape[0]
    held = np.arange(1, before + 1)
    chance = 1 - (1 - p[:, None]) ** held[None, :] if dose else np.repeat(p[:, None], before, 1)
    early = rng.random((n, before)) < chance
    first = np.where(early.any(axis=1), early.argmax(axis=1), -1)
    injected = rng.random(n) < 0.5
    k = before + 1 + np.where(injected, extra, 0)
    chance = 1 - (1 - p) ** k if dose else p
    late = (first < 0) & (rng.random(n) < chance)
    agent = np.concatenate([np.flatnonzero(first >= 0), np.flatnonzero(late),
                            np.flatnonzero(injected)])
    events = pa.table({
        "step": np.concatenate([first[first >= 0], np.full(late.sum(), before),
                                np.full(injected.sum(), before)]).astype(np.int32),
        "agent": agent,
        "event": ["activate"] * int((first >= 0).sum() + late.sum())
        + ["inject"] * int(injected.sum()),
        "value": np.r_[np.full((first >= 0).sum() + late.sum(), np.nan),
                       np.full(injected.sum(), float(extra))],
    })
    return injection_effect(events, n)


@pytest.fixture(scope="module")
def lt_run(tmp_path_factory):
    cfg = cascade_config(n=2000, shards=2, model="linear_threshold")
    return cfg, swarm.run(cfg, tmp_path_factory.mktemp("lt") / "r", backend="local")


def test_exposure_table_of_a_linear_threshold_run_matches_the_engine(lt_run):
    from swarm.rng import KeyedRNG

    cfg, run = lt_run
    graph = build_graph(cfg)
    ev = run.events()
    end = max(run.metrics()["step"].to_pylist())
    t = exposure_table(ev, graph, end_step=end).to_pydict()
    agent, k = np.array(t["agent"]), np.array(t["exposers_before_adoption"])
    adopted, imp = np.array(t["adopted"]), np.array(t["impressions"])
    act = ev.filter(pc.equal(ev["event"].cast("string"), "activate"))
    seeds = set(act.filter(pc.is_null(act["parent"]))["agent"].to_pylist())
    assert int(adopted.sum()) == act.num_rows > 50
    assert set(agent[adopted].tolist()) == set(act["agent"].to_pylist())
    is_seed = np.isin(agent, list(seeds))
    assert (k[adopted & ~is_seed] >= 1).all() and (k[is_seed] == 0).all()
    assert (imp >= k).all() and (k >= 1).any()
    # The exposures rebuilt from the graph are the ones the env counted: each
    # adopter's total over roots reached its keyed LT threshold, nobody else's did.
    total = np.bincount(agent, weights=k, minlength=graph.n)
    influence = total / np.maximum(graph.in_degree(), 1)
    threshold = KeyedRNG(cfg.seed).uniform("lt_threshold", np.arange(graph.n))
    adopters = np.setdiff1d(agent[adopted], list(seeds))
    others = np.setdiff1d(np.arange(graph.n), agent[adopted])
    assert (influence[adopters] >= threshold[adopters]).all()
    assert (influence[others] < threshold[others]).all()
    # Every analysis runs on it.
    table = exposure_table(ev, graph, end_step=end)
    assert exposure_curve(table, 5).column("exposed").to_pylist()[0] > 300
    cox = exposure_cox(table, strata="in_degree")
    glm = exposure_cloglog(table, strata="in_degree")
    assert np.isfinite([cox["log_hr"], cox["se"], glm["coef"], glm["se"]]).all()


def test_exposure_table_of_a_feed_run_counts_views_before_the_first_repost(tmp_path):
    cfg = swarm.validate_config({
        "seed": 7, "steps": 12, "shards": 2, "partition": "hash",
        "graph": {"kind": "barabasi_albert", "n": 1200, "m": 3},
        "env": {"kind": "feed", "activity": 0.4, "seen": 64,
                "rules": {"post": 0.15, "repost": -2.5, "follow": -2.5, "unfollow": -2.0}},
        "checkpoint": {"every": 0},
    })
    ev = swarm.run(cfg, tmp_path / "feed", backend="local").events()
    t = exposure_table(ev).to_pydict()
    k, imp = np.array(t["exposers_before_adoption"]), np.array(t["impressions"])
    adopted = np.array(t["adopted"])
    assert (k[adopted] >= 1).all() and (imp >= k).all() and (k >= 1).all()
    rep = ev.filter(pc.equal(ev["event"].cast("string"), "repost")).to_pydict()
    post = ev.filter(pc.equal(ev["event"].cast("string"), "post")).to_pydict()
    author = dict(zip(post["item"], post["agent"], strict=True))
    first: dict = {}
    for a, r, s in zip(rep["agent"], rep["root"], rep["step"], strict=True):
        if author.get(r) != a:
            first[(a, r)] = min(s, first.get((a, r), s))
    assert len(first) > 300 and int(adopted.sum()) == len(first)
    got = {(a, r): s for a, r, s, ok in zip(t["agent"], t["root"], t["adoption_step"],
                                            t["adopted"], strict=True) if ok}
    assert got == first
    # Impressions before adoption: the views of that root at or before the repost step.
    view = ev.filter(pc.equal(ev["event"].cast("string"), "view")).to_pydict()
    seen: dict = {}
    for a, r, s, who in zip(view["agent"], view["root"], view["step"], view["target"],
                            strict=True):
        if who != a and author.get(r) != a and s <= first.get((a, r), 10**9):
            seen.setdefault((a, r), []).append(who)
    rows = {(a, r): (kk, ii) for a, r, kk, ii in zip(t["agent"], t["root"], k, imp,
                                                     strict=True)}
    assert all(rows[key] == (len(set(w)), len(w)) for key, w in seen.items())


def inject_config(shards=1, **inject):
    return cascade_config(n=2000, shards=shards, model="linear_threshold",
                          inject={"fraction": 0.3, "exposures": 1, "step": 1, **inject})


def test_injection_is_shard_independent_logged_and_raises_adoption(tmp_path):
    base = sorted_events(swarm.run(inject_config(), tmp_path / "k1", backend="local"))
    for name, cfg in (("k2", inject_config(shards=2)),
                      ("k3", inject_config(shards=3).model_copy(update={"partition": "hash"}))):
        got = sorted_events(swarm.run(cfg, tmp_path / name, backend="local"))
        assert got.equals(base), f"{name} differs from 1 shard"
    inj = base.filter(pc.equal(base["event"], "inject"))
    assert 0.27 < inj.num_rows / 2000 < 0.33
    assert set(inj["step"].to_pylist()) == {1} and set(inj["value"].to_pylist()) == {1.0}
    res = injection_effect(base, 2000)
    assert res["treated"] == inj.num_rows and res["injection_step"] == 1
    assert res["difference"] > 0.05 and res["p_value"] < 0.05 and res["ci_low"] > 0, res


def test_injection_holds_a_dying_run_open_until_its_step(tmp_path):
    # threshold 1: hardly anyone adopts and the cascade dies at once; the injection
    # at step 4 still happens, the same on 1 and 2 shards.
    def cfg(shards):
        return cascade_config(n=500, shards=shards, model="linear_threshold", threshold=1.0,
                              inject={"fraction": 0.5, "exposures": 2, "step": 4})

    runs = [swarm.run(cfg(k), tmp_path / f"k{k}", backend="local") for k in (1, 2)]
    a, b = (sorted_events(r) for r in runs)
    assert a.equals(b)
    inj = a.filter(pc.equal(a["event"], "inject"))
    assert inj.num_rows > 150 and set(inj["step"].to_pylist()) == {4}


def test_inject_config_errors_and_event_codes():
    from swarm.envs.cascade import Cascade

    with pytest.raises(ConfigError, match="inject applies to model='linear_threshold'"):
        cascade_config(model="sir", inject={"fraction": 0.1})
    with pytest.raises(ConfigError, match="fraction"):
        cascade_config(model="linear_threshold", inject={"fraction": 1.5})
    with pytest.raises(ConfigError, match="stepp"):
        cascade_config(model="linear_threshold", inject={"fraction": 0.1, "stepp": 2})
    # Existing codes keep their values; inject was appended.
    assert Cascade.event_types[:2] == ("activate", "recover")
    assert Cascade.event_code("inject") == 2


def test_analysis_errors_say_what_to_do():
    ev = pa.table({"step": [0], "agent": [1], "event": ["activate"]})
    with pytest.raises(ValueError, match="pass the run's graph"):
        exposure_table(ev)
    with pytest.raises(ValueError, match="no inject events"):
        injection_effect(ev, 3)
    with pytest.raises(ValueError, match="no exposure events"):
        exposure_table(pa.table({"step": [0], "agent": [1], "event": ["like"]}))
    # Exposures in lockstep (one per step for everyone): the count is the clock.
    lockstep = pa.table({"exposure_steps": [[0], [0, 1], [0, 1, 2], [0, 1, 2]],
                         "end_step": [0, 1, 2, 2], "adopted": [True, True, True, False]})
    with pytest.raises(ValueError, match="not identified"):
        exposure_cox(lockstep)
