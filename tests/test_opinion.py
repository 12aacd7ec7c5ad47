"""The opinion env: the test kit, DeGroot's limit, stubbornness, bounded confidence."""

import numpy as np
import pyarrow.compute as pc
import pytest

import swarm
import swarm.envs.opinion  # noqa: F401  (registers env.kind: opinion)
from swarm.config import validate_config
from swarm.envs.opinion import Opinion, OpinionConfig, consensus_step
from swarm.envs.testing import check_determinism, check_env_api
from swarm.errors import ConfigError
from swarm.runner import build_graph


def _config(env: dict, steps: int, graph: dict | None = None, shards: int = 1,
            checkpoint_every: int = 0):
    graph = graph or {"kind": "barabasi_albert", "n": 500, "m": 3}
    return validate_config({"seed": 5, "steps": steps, "shards": shards,
                            "checkpoint": {"every": checkpoint_every}, "graph": graph,
                            "env": {"kind": "opinion", **env}})


def _opinions_at(run, step: int) -> np.ndarray:
    """Opinion (dimension 0) of every agent logged at ``step``, indexed by agent id."""
    ev = run.events()
    ev = ev.filter(pc.equal(ev["step"], step)).sort_by("agent")
    assert np.array_equal(ev["agent"].to_numpy(), np.arange(ev.num_rows))
    return ev["value"].to_numpy().astype(np.float64)


def _variant(env: dict, dims: int = 1):
    """An Opinion subclass whose smoke config runs ``env`` (for the kit's checks)."""
    smoke = {**Opinion.smoke_config, "env": {**Opinion.smoke_config["env"], **env, "dims": dims}}
    return type("OpinionVariant", (Opinion,), {"smoke_config": smoke})


@pytest.mark.parametrize("env, dims", [
    ({"model": "degroot"}, 1),
    ({"model": "hegselmann_krause", "confidence": 0.15}, 1),
    ({"model": "deffuant", "confidence": 0.3}, 2),
    ({"model": "friedkin_johnsen", "stubbornness": 0.2, "initial": "normal"}, 3),
])
def test_the_kit_passes(env, dims, tmp_path, monkeypatch):
    cls = _variant(env, dims)
    # The kit checks that the class it runs is the registered one.
    monkeypatch.setitem(swarm.envs.ENV_REGISTRY, "opinion", cls)
    check_env_api(cls)
    check_determinism(cls, tmp_path)


def test_degroot_converges_to_the_degree_weighted_mean(tmp_path):
    cfg = _config({"model": "degroot", "self_weight": 0.5, "log_every": 100}, steps=301)
    run = swarm.run(cfg, tmp_path / "r", backend="local", progress=False)
    x0, final = _opinions_at(run, 0), _opinions_at(run, 300)
    degree = build_graph(cfg).in_degree().astype(np.float64)
    weighted = float((degree * x0).sum() / degree.sum())
    assert np.abs(final - weighted).max() < 1e-4
    # Unequal degrees (BA): the plain mean is a different limit, so this can fail.
    assert np.abs(final - x0.mean()).min() > 5e-4
    m = run.metrics().to_pydict()
    assert m["consensus"][-1] == 1 and m["variance"][-1] < 1e-8
    when = consensus_step(run.metrics())
    assert when is not None and 0 < when <= 300
    assert all(c == 1 for c in m["consensus"][when:])
    assert m["active"][-1] == 0


def test_friedkin_johnsen_stubbornness_keeps_disagreement(tmp_path):
    cfg = _config({"model": "friedkin_johnsen", "stubbornness": 0.3, "log_every": 50}, steps=101)
    m = swarm.run(cfg, tmp_path / "r", backend="local", progress=False).metrics().to_pydict()
    assert m["variance"][-1] > 1e-3 and m["consensus"][-1] == 0
    # It settles all the same: the FJ map is a contraction.
    assert m["active"][-1] == 0


def test_hegselmann_krause_clusters_with_small_confidence(tmp_path):
    graph = {"kind": "erdos_renyi", "n": 500, "mean_degree": 20}
    small = swarm.run(_config({"model": "hegselmann_krause", "confidence": 0.08,
                               "log_every": 50}, steps=101, graph=graph),
                      tmp_path / "small", backend="local", progress=False)
    m = small.metrics().to_pydict()
    assert m["consensus"][-1] == 0 and m["group_distance"][-1] > 0.3
    clusters = np.unique(np.round(_opinions_at(small, 100), 2))
    assert clusters.shape[0] >= 3
    large = swarm.run(_config({"model": "hegselmann_krause", "confidence": 1.0,
                               "log_every": 50}, steps=101, graph=graph),
                      tmp_path / "large", backend="local", progress=False)
    m = large.metrics().to_pydict()
    assert m["consensus"][-1] == 1 and m["group_distance"][-1] == 0.0


def test_deffuant_vector_opinions_move_only_within_confidence(tmp_path):
    cfg = _config({"model": "deffuant", "dims": 2, "confidence": 0.5, "log_every": 40},
                  steps=41)
    run = swarm.run(cfg, tmp_path / "r", backend="local", progress=False)
    m = run.metrics().to_pydict()
    assert m["variance"][-1] < m["variance"][0]
    ev = run.events()
    assert ev["op1"].null_count == 0 and ev["op2"].null_count == ev.num_rows
    none = swarm.run(_config({"model": "deffuant", "dims": 2, "confidence": 1e-6,
                              "log_every": 40}, steps=41), tmp_path / "none",
                     backend="local", progress=False)
    assert np.array_equal(_opinions_at(none, 0), _opinions_at(none, 40))


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="do not apply to model='degroot'"):
        OpinionConfig(model="degroot", confidence=0.1)
    with pytest.raises(ConfigError, match="dims"):
        _config({"dims": 5}, steps=1)


def test_derived_metrics_of_a_two_point_population():
    # 2 agents at 0 and 1: variance 1/4, group distance 1, bimodality 1.
    totals = {"variance": 0.25, "mean": 0.5, "m2": 0.5, "m3": 0.5, "m4": 0.5,
              "high_mean": 1.0, "low_mean": 0.0}
    d = Opinion.derive_metrics(totals, OpinionConfig())
    assert d["group_distance"] == pytest.approx(1.0)
    assert d["bimodality"] == pytest.approx(1.0)
    assert d["consensus"] == 0


def test_declared_metrics_equal_numpy_on_the_opinions(tmp_path):
    """The engine's exact reductions against numpy on the shard's final state."""
    from swarm import checkpoint as ckpt

    cfg = _config({"model": "degroot"}, steps=6, shards=2, checkpoint_every=6)
    run = swarm.run(cfg, tmp_path / "r", backend="local")
    x = np.concatenate([ckpt.read_arrays(run.store, ckpt.shard_file(5, k))[0]["env.opinion"]
                        for k in range(2)])  # dims=1: checkpoints store columns flat
    last = run.metrics().slice(5).to_pylist()[0]
    assert last["variance"] == pytest.approx(np.var(x), rel=1e-12)
    assert last["mean"] == pytest.approx(np.mean(x), rel=1e-12)
    assert last["m4"] == pytest.approx(np.mean(x**4), rel=1e-12)
    assert last["high_mean"] == pytest.approx(x[x > 0.5].mean(), rel=1e-12)


@pytest.mark.parametrize("model", ["degroot", "hegselmann_krause", "deffuant"])
def test_observe_does_not_depend_on_arrival_order(model):
    """Broadcasts arriving in another sender order give bit-identical batches."""
    from swarm.envs.base import FannedOut, Inbox, ShardView
    from swarm.rng import KeyedRNG

    cfg = _config({"model": model, "confidence": 0.5} if model != "degroot" else {"model": model},
                  steps=2, graph={"kind": "erdos_renyi", "n": 200, "mean_degree": 60})
    g = build_graph(cfg)
    view = ShardView(shard=0, num_shards=1, agents=np.arange(g.n, dtype=np.int64),
                     indptr=g.indptr, indices=g.indices,
                     in_degree=g.in_degree().astype(np.int32), rng=KeyedRNG(cfg.seed))
    env = Opinion(cfg.env, view, {})
    # Opinions of very different magnitudes: float sums then depend on their order.
    env.opinion = (np.random.default_rng(0).random((g.n, 1)) ** 8)
    sent = {"src": view.agents, **{f"op{d}": np.zeros(g.n) for d in range(4)}}
    sent["op0"] = env.opinion[:, 0].copy()

    def batch_for(order):
        b = {k: v[order] for k, v in sent.items()}
        pos, edge, counts = view.out_edges(view.local_index(b["src"]))
        return env.observe(1, Inbox(broadcast=FannedOut(edge, pos, view.indices,
                                                        view.local_index, counts, b)))

    ref = batch_for(np.arange(g.n))
    for seed in (1, 2):
        got = batch_for(np.random.default_rng(seed).permutation(g.n))
        assert set(got) == set(ref)
        for k in ref:
            assert np.array_equal(got[k], ref[k]), f"{model}: {k} depends on arrival order"


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    from swarm.shard import Shard

    env = {"model": "friedkin_johnsen", "stubbornness": 0.2, "dims": 2, "log_every": 3}
    cfg = _config(env, steps=20, shards=2, checkpoint_every=5)
    reference = swarm.run(cfg, tmp_path / "ref", backend="local", progress=False)
    real_step = Shard.step

    def step_or_crash(self, t, *parts, **kw):
        if t == 12 and self.id == 1:
            raise RuntimeError("power cut")
        return real_step(self, t, *parts, **kw)

    monkeypatch.setattr(Shard, "step", step_or_crash)
    with pytest.raises(RuntimeError, match="power cut"):
        swarm.run(cfg, tmp_path / "r", backend="local", progress=False)
    monkeypatch.setattr(Shard, "step", real_step)
    resumed = swarm.resume(tmp_path / "r", backend="local", progress=False)
    assert resumed.manifest["resumed_from"] == 9
    keep = [c for c in reference.metrics().column_names if "seconds" not in c]
    assert resumed.metrics().select(keep).equals(reference.metrics().select(keep))
    key = [("step", "ascending"), ("agent", "ascending")]
    drop = ["shard"]
    assert resumed.events().drop_columns(drop).sort_by(key).equals(
        reference.events().drop_columns(drop).sort_by(key))


def test_periodic_opinion_events_end_with_the_last_step(tmp_path):
    run = swarm.run(_config({"model": "degroot", "log_every": 5}, steps=13), tmp_path / "r",
                    backend="local", progress=False)
    assert run.metrics().num_rows == 13
    assert sorted(set(run.events()["step"].to_pylist())) == [0, 5, 10, 12]
    assert _opinions_at(run, 12).shape[0] == 500  # the final opinions, every agent's
