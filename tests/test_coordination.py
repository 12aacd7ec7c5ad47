"""The coordination env: AgentsNet's five tasks, their classical baselines, rounds, faults.

Success is judged by ``swarm.analysis.agentsnet.validate``, which reads only the
event log and the graph (its own tests plant defects in hand-made answers).
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import sorted_events

import swarm
from swarm.analysis.agentsnet import final_answers, last_change_step, validate
from swarm.envs.coordination import TASKS, Coordination, agentsnet_rounds
from swarm.envs.testing import check_env_api
from swarm.graph import double_sweep_diameter
from swarm.graphgen import build_graph

FAMILIES = {"ws": {"kind": "watts_strogatz", "n": 300, "k": 4, "p": 0.4},
            "ba": {"kind": "barabasi_albert", "n": 300, "m": 2},
            "dt": {"kind": "delaunay", "n": 300}}


def _config(task: str, graph: dict, *, steps: int = 400, shards: int = 1, seed: int = 1,
            faults: dict | None = None, **env):
    return swarm.validate_config({
        "seed": seed, "steps": steps, "shards": shards, "partition": "hash", "graph": graph,
        "checkpoint": {"every": 0}, "faults": faults or {},
        "env": {"kind": "coordination", "task": task, **env}})


def _run(config, tmp_path, name: str = "r"):
    return swarm.run(config, tmp_path / name, backend="local")


def _check(run, config, exclude=None) -> dict:
    colours = int(run.metrics()["colours"][0].as_py()) or None
    return validate(config.env.task, run.events(), build_graph(config),
                    colours=colours if config.env.task == "colouring" else None,
                    exclude=exclude)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("task", TASKS)
def test_the_baselines_solve_every_task_within_agentsnets_rounds(task, family, tmp_path):
    config = _config(task, FAMILIES[family])
    run = _run(config, tmp_path)
    result = _check(run, config)
    assert result["success"], result
    assert result["score"] == 1.0
    m = run.metrics()
    budget = int(m["rounds_budget"][0].as_py())
    assert budget == 2 * int(m["diameter_lower"][0].as_py()) + 1
    assert last_change_step(run.events()) <= budget
    assert m.num_rows <= budget + 1  # sends at 0 .. R-1, answers at R at the latest


@pytest.mark.parametrize("seed", [3, 5])
def test_agents_unmatched_when_the_rounds_run_out_answer_none(seed, tmp_path):
    """AgentsNet's budget at n=100 on BA (2 D + 1 = 11) can end Israeli–Itai before an
    agent whose neighbours all matched elsewhere has said so: it answers none then."""
    config = _config("matching", {"kind": "barabasi_albert", "n": 100, "m": 2}, seed=seed)
    run = _run(config, tmp_path)
    answer, answered = final_answers(run.events(), 100)
    assert answered.all()
    assert _check(run, config)["success"]


def test_the_round_budget_is_agentsnets_rule_on_the_double_sweep_bound(tmp_path):
    graph = {"kind": "watts_strogatz", "n": 120, "k": 4, "p": 0.2}
    config = _config("leader_election", graph, schedule="every_round")
    g = build_graph(config)
    lo, hi = double_sweep_diameter(g.indptr, g.indices)
    exact = nx.diameter(nx.Graph(zip(np.repeat(np.arange(g.n), np.diff(g.indptr)).tolist(),
                                     g.indices.tolist(), strict=True)))
    assert lo <= exact <= hi and 2 * lo + 1 >= exact  # a flood still crosses the graph
    run = _run(config, tmp_path)
    m = run.metrics()
    budget = agentsnet_rounds("leader_election", 120, lo)
    assert int(m["rounds_budget"][0].as_py()) == budget
    # Every agent speaks every round (every_round) until the budget, then answers once.
    assert m.num_rows == budget + 1
    messages = np.asarray(m["messages"])
    assert (messages[:budget] > 0).all() and messages[budget] == 0
    assert agentsnet_rounds("matching", 8, 3) == 5 and agentsnet_rounds("colouring", 16, 9) == 6
    assert agentsnet_rounds("consensus", 8, 3) == 7


def test_a_given_diameter_and_budget_skip_the_graph(tmp_path):
    assert not Coordination.needs_graph(_config("matching", FAMILIES["ws"],
                                                rounds="until_done").env)
    assert not Coordination.needs_graph(_config("consensus", FAMILIES["ws"], diameter=4).env)
    assert Coordination.needs_graph(_config("colouring", FAMILIES["ws"], rounds=5).env)
    config = _config("consensus", FAMILIES["ws"], diameter=4)
    run = _run(config, tmp_path)
    assert int(run.metrics()["rounds_budget"][0].as_py()) == 9


@pytest.mark.parametrize("task", TASKS)
def test_the_same_events_on_one_and_two_shards_under_faults(task, tmp_path):
    graph = {"kind": "watts_strogatz", "n": 200, "k": 4, "p": 0.4}
    faults = {"drop": 0.1, "delay": {"steps": 1, "fraction": 0.2}}
    runs = [_run(_config(task, graph, shards=k, faults=faults, byzantine=0.05), tmp_path,
                 f"s{k}") for k in (1, 2)]
    assert runs[0].events().num_rows > 0
    assert sorted_events(runs[0]).equals(sorted_events(runs[1]))
    keep = [c for c in runs[0].metrics().column_names
            if c not in ("cross_shard_messages", "cross_shard_bytes")]
    assert runs[0].metrics().select(keep).equals(runs[1].metrics().select(keep))


@pytest.mark.parametrize("task", TASKS)
def test_the_env_kit_passes_for_every_task(task, monkeypatch):
    smoke = {**Coordination.smoke_config,
             "env": {"kind": "coordination", "task": task, "byzantine": 0.05}}
    monkeypatch.setattr(Coordination, "smoke_config", smoke)
    check_env_api(Coordination, steps=8)


def _events(run, kind: str) -> pa.Table:
    ev = run.events()
    return ev.filter(pc.equal(ev["event"].cast(pa.string()), kind))


def test_byzantine_agents_flood_a_leader_nobody_is(tmp_path):
    config = _config("leader_election", FAMILIES["ws"], byzantine=0.05)
    run = _run(config, tmp_path)
    result = _check(run, config)
    assert result["adversaries"] > 0 and not result["success"]
    answer, answered = final_answers(run.events(), 300)
    adv = np.asarray(_events(run, "adversary")["agent"])
    honest = np.setdiff1d(np.arange(300), adv)
    # Honest agents name an id no agent has (logged as null: -1), none of them leads.
    assert answered[honest].all() and (answer[honest] < 0).all()
    # Without them the same graph elects agent 0.
    clean = _config("leader_election", FAMILIES["ws"])
    assert _check(_run(clean, tmp_path, "clean"), clean)["success"]


def test_byzantine_acceptors_leave_honest_agents_matched_to_them(tmp_path):
    config = _config("matching", FAMILIES["ws"], byzantine=0.1)
    result = _check(_run(config, tmp_path), config)
    assert not result["success"] and result["score"] < 1.0
    assert result["bad_agents"].size > 0


def test_message_loss_breaks_a_colouring_and_the_validator_sees_where(tmp_path):
    config = _config("colouring", FAMILIES["ws"], faults={"drop": 0.6})
    run = _run(config, tmp_path)
    result = _check(run, config)
    g = build_graph(config)
    answer, _ = final_answers(run.events(), g.n)
    src = np.repeat(np.arange(g.n), np.diff(g.indptr))
    clash = (answer[src] == answer[g.indices]) & (answer[src] >= 0)
    assert clash.any() and not result["success"]
    assert set(np.unique(src[clash])) <= set(result["bad_agents"].tolist())


def test_crashed_agents_stop_answering_and_are_left_out(tmp_path):
    from swarm.faults import Faults
    from swarm.rng import KeyedRNG

    config = _config("consensus", FAMILIES["dt"], faults={"crash": {"fraction": 0.1,
                                                                    "at_step": 1}})
    run = _run(config, tmp_path)
    crashed = np.flatnonzero(Faults(config.faults, KeyedRNG(config.seed)).crashed(
        np.arange(300), 1))
    assert crashed.size > 0
    answers = _events(run, "answer")
    late = pc.and_(pc.is_in(answers["agent"], pa.array(crashed)),
                   pc.greater_equal(answers["step"], 1))
    assert not pc.any(late).as_py()
    result = _check(run, config, exclude=crashed)
    assert result["agents"] == 300 - crashed.size


def _llm_config(task: str, model_dir: str, n: int, steps: int, **env):
    policy = {"kind": "llm", "model": model_dir, "dtype": "float64", "temperature": 30.0,
              "memory": 1}
    return swarm.validate_config({
        "seed": 7, "steps": steps, "graph": {"kind": "watts_strogatz", "n": n, "k": 4,
                                             "p": 0.4},
        "checkpoint": {"every": 0}, "population": {"groups": [{"policy": policy, "fraction": 1.0}]},
        "env": {"kind": "coordination", "task": task, "schedule": "every_round", **env}})


@pytest.mark.parametrize("task", TASKS)
def test_llm_style_agents_answer_every_task_and_are_scored(task, tiny_model, tmp_path):
    """The tiny random-weight model answers at random: its scores mean nothing, but they
    are computed from what it answered, through the same validators."""
    extra = {"colours": 4} if task == "colouring" else {}
    config = _llm_config(task, tiny_model, 30, 10, rounds=3, **extra)
    run = _run(config, tmp_path)
    m = run.metrics()
    assert m.num_rows == 4  # three message rounds, then the answers
    assert sum(m["policy_decisions"].to_pylist()) == 4 * 30
    assert 0 < sum(m["policy_calls"].to_pylist()) <= 4 * 30  # dedup shares calls
    answer, answered = final_answers(run.events(), 30)
    result = _check(run, config)
    assert 0.0 <= result["score"] <= 1.0 and result["agents"] == 30
    if task != "matching":  # "none" is -1, no answer event unless it changes
        assert answered.any()


@pytest.mark.slow
def test_llm_style_agents_run_at_a_thousand_agents(tiny_model, tmp_path):
    config = _llm_config("consensus", tiny_model, 1000, 40)
    run = _run(config, tmp_path)
    result = _check(run, config)
    assert result["agents"] == 1000 and run.metrics().num_rows > 3
