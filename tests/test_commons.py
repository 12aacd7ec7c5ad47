"""The commons env: the test kit, collapse vs survival, the stock update, Gini, resume."""

import numpy as np
import pytest

import swarm
import swarm.envs.commons  # noqa: F401  (registers env.kind: commons)
from swarm.config import validate_config
from swarm.envs.commons import (
    Commons,
    CommonsConfig,
    rounds_survived,
)
from swarm.envs.testing import check_determinism, check_env_api

_GRAPH = {"kind": "watts_strogatz", "n": 400, "k": 4, "p": 0.1}


def _config(env: dict, steps: int, graph: dict | None = None, shards: int = 1,
            checkpoint_every: int = 0):
    return validate_config({"seed": 7, "steps": steps, "shards": shards,
                            "checkpoint": {"every": checkpoint_every}, "graph": graph or _GRAPH,
                            "env": {"kind": "commons", **env}})


def _run(cfg, path):
    return swarm.run(cfg, path, backend="local", progress=False)


@pytest.mark.parametrize("talk", [True, False])
def test_the_kit_passes(talk, tmp_path, monkeypatch):
    smoke = {**Commons.smoke_config, "env": {**Commons.smoke_config["env"], "talk": talk}}
    cls = type("CommonsVariant", (Commons,), {"smoke_config": smoke})
    # The kit checks that the class it runs is the registered one.
    monkeypatch.setitem(swarm.envs.ENV_REGISTRY, "commons", cls)
    check_env_api(cls)
    check_determinism(cls, tmp_path)


def test_harvest_above_regrowth_collapses_below_it_survives(tmp_path):
    over = _run(_config({"demand": 1.6, "talk": True}, steps=60), tmp_path / "over")
    m = over.metrics().to_pydict()
    assert m["collapsed"][-1] == 1 and m["stock"][-1] < 0.05 * 100.0 * 400
    under = _run(_config({"demand": 0.6, "talk": True}, steps=60), tmp_path / "under")
    m = under.metrics().to_pydict()
    assert len(m["step"]) == 60 and max(m["collapsed"]) == 0
    assert rounds_survived(under.metrics()) == 60 and min(m["stock"]) > 0.5 * 100.0 * 400
    assert 0 < rounds_survived(over.metrics()) < 60


def test_stock_update_equals_a_hand_computation(tmp_path):
    graph = {"kind": "erdos_renyi", "n": 5, "mean_degree": 2}
    env = {"capacity": 10.0, "initial": 0.5, "growth": 0.4, "demand": 2.0, "greed": 0.0,
           "log_every": 1}
    run = _run(_config(env, steps=2, graph=graph), tmp_path / "r")
    m = run.metrics().to_pydict()
    k = 10.0 * 5
    s0 = 0.5 * k
    harvest = 5 * 2.0 * 0.4 * 10.0 / 4  # five agents, demand times their MSY share, no greed
    assert m["stock"][0] == pytest.approx(s0)
    assert m["total_harvest"][0] == pytest.approx(harvest, abs=1e-5)
    assert m["stock"][1] == pytest.approx(s0 + 0.4 * s0 * (1 - s0 / k) - harvest, abs=1e-5)
    assert m["gini"][0] == pytest.approx(0.0)


def test_gini_of_equal_and_single_harvests():
    from swarm.reductions import Gini

    g = Gini("units")

    def gini(values, parts=3):
        chunks = np.array_split(np.asarray(values, dtype=np.int64), parts)
        acc = g.partial(chunks[0])
        for c in chunks[1:]:
            acc = g.merge(acc, g.partial(c))
        return g.finish(acc)

    assert gini(np.full(1000, 40)) == 0.0
    n = 1000
    assert gini(np.r_[np.zeros(n - 1), 63]) == pytest.approx(1 - 1 / n)
    # 1..m has Gini (m - 1) / (3 m) exactly, however the values are split.
    assert gini(np.arange(1, 64).repeat(10)) == pytest.approx(62 / 189, rel=1e-15)
    assert gini(np.arange(1, 64).repeat(10), parts=1) == gini(np.arange(1, 64).repeat(10))


def _numpy_gini(x: np.ndarray) -> float:
    """sum_i sum_j |x_i - x_j| / (2 n^2 mean), straight from the definition."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.abs(x[:, None] - x[None, :]).sum() / (2 * x.shape[0] ** 2 * x.mean()))


def test_gini_equals_numpy_on_the_logged_harvests_on_any_shard_count(tmp_path):
    import pyarrow.compute as pc

    # Little greed and talk pull harvests close together: a Gini far below a 64-bin
    # histogram's resolution, which used to read 0 there.
    env = {"greed": 0.06, "talk": True, "conformity": 0.5, "scarcity_response": 0.5,
           "log_every": 4}
    runs = [_run(_config(env, steps=13, shards=k), tmp_path / f"k{k}") for k in (1, 2)]
    m = runs[0].metrics().to_pydict()
    ev = runs[0].events()
    harvest = ev.filter(pc.equal(ev["event"].cast("string"), "harvest"))
    steps = sorted(set(harvest["step"].to_pylist()))
    assert steps == [0, 4, 8, 12]
    for s in steps:
        x = np.asarray(harvest.filter(pc.equal(harvest["step"], s))["value"])
        assert x.shape[0] == 400 and x.std() > 0
        want = _numpy_gini(x)
        assert m["gini"][s] == pytest.approx(want, rel=1e-12, abs=1e-15), (s, m["gini"][s], want)
        assert m["total_harvest"][s] == pytest.approx(x.astype(np.float64).sum(), rel=1e-12)
    assert 0 < min(m["gini"]) < 0.01
    assert runs[1].metrics()["gini"].to_pylist() == m["gini"]


def test_greedy_agents_make_unequal_harvests(tmp_path):
    cfg = _config({"greed": 0.9, "talk": False, "log_every": 100}, steps=2)
    m = _run(cfg, tmp_path / "r").metrics().to_pydict()
    # U(0.1, 1.9) multipliers: Gini = 0.9 / 3 = 0.3.
    assert m["gini"][0] == pytest.approx(0.3, abs=0.03)


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="conformity applies only with talk"):
        CommonsConfig(conformity=0.9)
    with pytest.raises(ValueError, match="collapse_threshold"):
        CommonsConfig(initial=0.01)


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    from swarm.shard import Shard

    env = {"demand": 1.3, "talk": True, "scarcity_response": 0.3, "log_every": 3}
    cfg = _config(env, steps=20, shards=2, checkpoint_every=5)
    reference = _run(cfg, tmp_path / "ref")
    real_step = Shard.step

    def step_or_crash(self, t, *parts, **kw):
        if t == 12 and self.id == 1:
            raise RuntimeError("power cut")
        return real_step(self, t, *parts, **kw)

    monkeypatch.setattr(Shard, "step", step_or_crash)
    with pytest.raises(RuntimeError, match="power cut"):
        _run(cfg, tmp_path / "r")
    monkeypatch.setattr(Shard, "step", real_step)
    resumed = swarm.resume(tmp_path / "r", backend="local", progress=False)
    assert resumed.manifest["resumed_from"] == 9
    keep = [c for c in reference.metrics().column_names if "seconds" not in c]
    assert resumed.metrics().select(keep).equals(reference.metrics().select(keep))
    key = [("step", "ascending"), ("agent", "ascending")]
    assert resumed.events().drop_columns(["shard"]).sort_by(key).equals(
        reference.events().drop_columns(["shard"]).sort_by(key))


def test_periodic_harvest_events_end_with_the_last_step(tmp_path):
    run = _run(_config({"log_every": 5}, steps=12), tmp_path / "r")
    assert sorted(set(run.events()["step"].to_pylist())) == [0, 5, 10, 11]
