"""The cascade env end to end: determinism across shards, exact trees, theory."""

import numpy as np
import pyarrow.compute as pc
import pytest
from conftest import cascade_config, sorted_events

import swarm
from swarm.runner import build_graph


@pytest.mark.parametrize("model, extra", [("independent_cascade", {}), ("sir", {}),
                                          ("linear_threshold", {})])
def test_same_events_for_any_shard_count_and_partition(tmp_path, model, extra):
    base = cascade_config(n=3000, shards=1, model=model, **extra)
    reference = sorted_events(swarm.run(base, tmp_path / "k1", backend="local"))
    assert reference.num_rows > 100
    n = base.graph.n
    variants = [
        ("k2", {"shards": 2}, None),
        ("k3h", {"shards": 3, "partition": "hash"}, None),
        ("k4r", {"shards": 4}, np.random.default_rng(1).integers(0, 4, n)),
    ]
    for name, change, explicit in variants:
        cfg = base.model_copy(update=change)
        got = sorted_events(swarm.run(cfg, tmp_path / name, backend="local", partition=explicit))
        assert got.equals(reference), f"{model}: {name} differs from 1 shard"


def test_ray_shards_match_local(tmp_path, ray_session):
    runs, steps = {}, {}
    for k in (1, 2, 3):
        cfg = cascade_config(n=4000, shards=k, p=0.08)
        run = swarm.run(cfg, tmp_path / f"ray{k}", progress=False)
        runs[k], steps[k] = sorted_events(run), run.metrics()["ever_active"].to_pylist()
    run = swarm.run(cascade_config(n=4000, shards=2, p=0.08), tmp_path / "local", backend="local")
    local = sorted_events(run)
    assert steps[1] == steps[2] == steps[3] == run.metrics()["ever_active"].to_pylist()
    assert runs[1].num_rows > 50
    assert runs[1].equals(runs[2]) and runs[2].equals(runs[3]) and runs[1].equals(local)


@pytest.mark.parametrize("model", ["independent_cascade", "linear_threshold", "sir"])
def test_every_activation_follows_an_edge_from_an_earlier_active_parent(tmp_path, model):
    cfg = cascade_config(n=3000, shards=2, model=model)
    run = swarm.run(cfg, tmp_path / "r", backend="local")
    g = build_graph(cfg)
    ev = run.events()
    act = ev.filter(pc.equal(ev["event"].cast("string"), "activate")).to_pydict()
    agents = np.array(act["agent"])
    assert len(np.unique(agents)) == len(agents), "one activate event per agent"
    when = dict(zip(act["agent"], act["step"], strict=True))
    root_of = dict(zip(act["agent"], act["root"], strict=True))
    seeds = set(swarm.envs.Cascade.prepare(cfg.env, g.n, swarm.rng.KeyedRNG(cfg.seed))["seed_ids"]
                .tolist())
    edges = set(zip(g.sources().tolist(), g.indices.tolist(), strict=True))
    for a, s, parent, root in zip(act["agent"], act["step"], act["parent"], act["root"],
                                  strict=True):
        if parent is None:
            assert a in seeds and s == 0 and root == a
            continue
        assert when[parent] < s, "parent active earlier"
        assert (parent, a) in edges, "activation follows an edge"
        assert root_of[parent] == root, "root inherited from the parent"
    assert seeds <= set(act["agent"])
    if model == "sir":
        rec = ev.filter(pc.equal(ev["event"].cast("string"), "recover")).to_pydict()
        assert rec["agent"], "some agents recover"
        assert all(when[a] <= s for a, s in zip(rec["agent"], rec["step"], strict=True))


def _ic_final_fraction(c, p, rho):
    # Fixed-point iteration from S = 1 decreases monotonically to the largest root.
    s = 1.0
    for _ in range(10_000):
        s = 1 - (1 - rho) * np.exp(-c * p * s)
    return s


@pytest.mark.parametrize("c, p", [(10.0, 0.2), (6.0, 0.25)])
def test_independent_cascade_matches_mean_field_theory_on_erdos_renyi(tmp_path, c, p):
    # On ER(n, c) the final active fraction S of IC with seed fraction rho solves
    # S = 1 - (1 - rho) exp(-c p S) as n -> inf. Above threshold the standard
    # deviation of S is about sqrt(S(1-S)/n) / (1 - c p (1-S)): ~0.003 for
    # n = 50,000 at these points. Averaging 3 seeds, a tolerance of 0.01 is
    # over 5 standard deviations while a wrong rule (e.g. repeated chances,
    # giving S ~ 1) or ignoring a fifth of the edges would miss by more.
    n, rho = 50_000, 0.01
    expected = _ic_final_fraction(c, p, rho)
    got = []
    for seed in (1, 2, 3):
        cfg = swarm.validate_config({
            "seed": seed, "steps": 1000,
            "graph": {"kind": "erdos_renyi", "n": n, "mean_degree": c},
            "env": {"kind": "cascade", "p": p, "seed_fraction": rho},
        })
        run = swarm.run(cfg, tmp_path / f"s{seed}", backend="local")
        assert run.manifest["stop_reason"] == "quiescent"
        got.append(run.events().num_rows / n)
    assert abs(np.mean(got) - expected) < 0.01, (got, expected)


def test_sir_final_size_matches_bond_percolation_on_erdos_renyi(tmp_path):
    # An agent transmits in the step it is infected and recovers at a step's end with
    # probability gamma: k ~ Geometric(gamma) on 1, 2, ... steps of tries, so an edge
    # transmits with T = beta / (1 - (1 - beta)(1 - gamma)) and the final share S
    # solves S = 1 - (1 - rho) exp(-c T S). Here T = 0.455, S = 0.744; one standard
    # deviation of S is about sqrt(S(1-S)/n) / (1 - c T (1-S)) = 0.0037 at n = 50,000,
    # 0.0026 over two seeds, so 0.012 is over 4 of them, while the timings one might
    # get wrong miss by far more: recovering before the first try (k on 0, 1, ...:
    # S = 0.42), one more try after recovery (S = 0.86), T = beta / (beta + gamma)
    # of continuous time (S = 0.65).
    n, c, beta, gamma, rho = 50_000, 4.0, 0.2, 0.3, 0.01
    t = beta / (1 - (1 - beta) * (1 - gamma))
    expected = _ic_final_fraction(c, t, rho)
    got, periods = [], []
    for seed in (1, 2):
        cfg = swarm.validate_config({
            "seed": seed, "steps": 1000, "shards": 1,
            "graph": {"kind": "erdos_renyi", "n": n, "mean_degree": c},
            "env": {"kind": "cascade", "model": "sir", "beta": beta, "gamma": gamma,
                    "seed_fraction": rho},
        })
        run = swarm.run(cfg, tmp_path / f"s{seed}", backend="local", progress=False)
        assert run.manifest["stop_reason"] == "quiescent"
        ev = run.events()
        kind = ev["event"].cast("string")
        act = ev.filter(pc.equal(kind, "activate")).sort_by("agent")
        rec = ev.filter(pc.equal(kind, "recover")).sort_by("agent")
        got.append(act.num_rows / n)
        # Everyone infected recovered, after 1, 2, ... steps of tries (recovery step
        # minus infection step, plus one).
        assert rec["agent"].equals(act["agent"])
        periods.append(np.asarray(rec["step"]) - np.asarray(act["step"]) + 1)
    assert abs(np.mean(got) - expected) < 0.012, (got, expected)
    k = np.concatenate(periods)
    assert k.min() == 1 and abs(k.mean() - 1 / gamma) < 0.05, k.mean()
    assert abs((k == 1).mean() - gamma) < 0.01


def test_seeding_by_count_and_ids(tmp_path):
    cfg = cascade_config(n=1000, seed_count=7, p=0.0)
    ev = swarm.run(cfg, tmp_path / "c", backend="local").events()
    assert ev.num_rows == 7 and set(ev["step"].to_pylist()) == {0}
    cfg = cascade_config(n=1000, seed_ids=[3, 999, 3], p=0.0)
    ev = swarm.run(cfg, tmp_path / "i", backend="local").events()
    assert sorted(ev["agent"].to_pylist()) == [3, 999]
    with pytest.raises(swarm.ConfigError, match="seed_ids names agent 5000"):
        swarm.run(cascade_config(n=1000, seed_ids=[5000]), tmp_path / "x", backend="local")
    assert not (tmp_path / "x").exists(), "a rejected config writes nothing"


def test_linear_threshold_fixed_threshold_is_deterministic_spread(tmp_path):
    # A path 0-1-2-...: in-degree 2 inside, threshold 0.5 -> one active
    # neighbour suffices, so the whole path activates one hop per step.
    import networkx as nx

    cfg = cascade_config(model="linear_threshold", threshold=0.5, seed_ids=[0])
    run = swarm.run(cfg, tmp_path / "p", graph=nx.path_graph(30), backend="local")
    ev = run.events().sort_by("agent").to_pydict()
    assert ev["agent"] == list(range(30)) and ev["step"] == list(range(30))
    assert ev["parent"] == [None, *range(29)]


def test_quiescence_and_max_steps(tmp_path):
    cfg = cascade_config(n=2000, p=0.0)
    run = swarm.run(cfg, tmp_path / "q", backend="local")
    # step 0 activates the seeds, step 1 finds nothing active and nothing in flight
    assert run.manifest["stop_reason"] == "quiescent" and run.manifest["steps_run"] == 2
    cfg = cascade_config(n=2000, model="sir", beta=0.3, gamma=0.0).model_copy(update={"steps": 4})
    run = swarm.run(cfg, tmp_path / "m", backend="local")
    assert run.manifest["stop_reason"] == "max_steps" and run.metrics().num_rows == 4
