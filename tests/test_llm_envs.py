"""LLM-style agents in every env that declares a choice: a config, not code.

Each env's ``choice_spec`` gives the LLM policy its labels and prompt fields.
Every case runs a mixed population (half the env's rule, half a tiny
random-weight model scoring in float64, so its answers are random but exact)
on 1 and 2 shards, and the two runs must log the same events and metrics.
Envs (or configs) without a choice are skipped; a population with LLM-style
agents is refused for them before the run.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from conftest import sorted_events

import swarm
from swarm.envs.base import ENV_REGISTRY
from swarm.errors import ConfigError

#: A small graph every case runs on (undirected, so games and votes go both ways).
GRAPH = {"kind": "watts_strogatz", "n": 200, "k": 6, "p": 0.1}

#: name -> (env config, steps, bucket): each env with a discrete choice, a few steps.
#: ``bucket`` coarsens the prompts' numbers so that prompts repeat (the tiny model
#: then runs a few hundred times per run, not thousands; the actions stay exact).
CASES = {
    "cascade_lt": ({"kind": "cascade", "model": "linear_threshold", "seed_fraction": 0.05}, 6,
                   {}),
    "feed": ({"kind": "feed", "activity": 0.5, "pool": 16, "rules": {"post": 0.2}}, 4,
             {"sim": 0.5, "hot": 100.0, "proof": 4.0, "topic": float(2**62)}),
    "games": ({"kind": "games", "imitation": 0.3,
               "strategies": {"tit_for_tat": 0.5, "always_defect": 0.25,
                              "win_stay_lose_shift": 0.25}}, 5,
              {"payoff": 10.0, "coop": 2.0, "defect": 2.0}),
    "games_reputation": ({"kind": "games", "game": "stag_hunt", "reputation": True,
                          "punishment": {"cost": 0.5, "fine": 1.0}}, 3,
                         {"payoff": 10.0, "coop": 2.0, "defect": 2.0, "good": 2.0}),
    "commons": ({"kind": "commons", "talk": True, "scarcity_response": 0.5, "log_every": 1}, 5,
                {"nbr_mean": 0.5, "nbr_count": 3.0}),
    "consensus_majority": ({"kind": "consensus", "protocol": "majority", "values": 3,
                            "rounds": 4, "byzantine": 0.1}, 6,
                           {"heard0": 3.0, "heard1": 3.0, "heard2": 3.0, "heard_other": 3.0}),
    "consensus_leader": ({"kind": "consensus", "protocol": "leader_commit",
                          "sybil": {"identities": 0.1}}, 10, {}),
    "consensus_gossip": ({"kind": "consensus", "protocol": "gossip", "byzantine": 0.05}, 5,
                         {"value": 0.1, "heard_mean": 0.1, "nbr_count": 3.0}),
    "contract_net": ({"kind": "contract_net", "tasks": 6, "byzantine": 0.02}, 12,
                     {"best_cost": 0.25, "open_tasks": 3.0}),
    "opinion": (None, 5, {}),  # its smoke config, with the first model that has a choice
}

#: Metrics that depend on the sharding: messages between shards, and model calls
#: (each shard deduplicates its own prompts).
_PER_SHARD = ("cross_shard_messages", "cross_shard_bytes", "policy_calls",
              "policy_calls_saved", "policy_text_calls")


def _opinion_env() -> dict | None:
    """The opinion env's smoke config with a model whose choice_spec is not None (the
    opinion env is developed beside this one: it may have no choice yet)."""
    cls = ENV_REGISTRY["opinion"]
    base = dict(cls.smoke_config["env"])
    models = cls.Config.model_fields["model"].annotation.__args__
    for model in (base.get("model"), *models):
        env = {**base, "model": model}
        if cls.choice_spec(cls.Config.model_validate(env)) is not None:
            return env
    return None


def _case(name: str) -> tuple[dict, int, dict]:
    """The case's env config, steps and buckets; skipped where the env has no choice."""
    env, steps, bucket = CASES[name]
    if name == "opinion":
        env = _opinion_env()
    cls = ENV_REGISTRY[env["kind"]] if env is not None else None
    if env is None or cls.choice_spec(cls.Config.model_validate(env)) is None:
        pytest.skip(f"{name}: no choice for LLM-style agents")
    return env, steps, bucket


def _config(env: dict, steps: int, model_dir: str, shards: int = 1, llm_fraction: float = 0.5,
            **policy):
    """A run of ``env`` on GRAPH where ``llm_fraction`` of the agents are LLM-style.

    float64 scores make the actions exact on any batching; a high temperature
    spreads the random model's answers over every label (its log-likelihoods
    favour the labels with fewest tokens by tens of nats)."""
    policy = {"kind": "llm", "model": model_dir, "dtype": "float64", "temperature": 30.0,
              "memory": 1, **policy}
    groups = [{"policy": policy, "fraction": llm_fraction}]
    if llm_fraction < 1:
        groups.insert(0, {"policy": {"kind": "default"}, "fraction": 1 - llm_fraction})
    return swarm.validate_config({
        "seed": 7, "steps": steps, "shards": shards, "partition": "hash", "graph": GRAPH,
        "env": env, "checkpoint": {"every": 0}, "population": {"groups": groups},
    })


def _metrics(run) -> dict[str, np.ndarray]:
    """The run's metrics that must not depend on the sharding, as arrays by name."""
    m = run.metrics()
    return {c: np.asarray(m[c]) for c in m.column_names if c not in _PER_SHARD}


def _same_metrics(a: dict, b: dict) -> bool:
    # NaN (a share with nothing to divide) equals NaN here, unlike in Table.equals.
    return a.keys() == b.keys() and all(
        np.array_equal(a[c], b[c], equal_nan=a[c].dtype.kind == "f") for c in a)


@pytest.mark.parametrize("name", list(CASES))
def test_mixed_llm_population_is_the_same_on_1_and_2_shards(name, tiny_model, tmp_path):
    env, steps, bucket = _case(name)
    runs = [swarm.run(_config(env, steps, tiny_model, shards=k, bucket=bucket),
                      tmp_path / f"s{k}", backend="local") for k in (1, 2)]
    one, two = runs
    assert one.events().num_rows > 0
    assert sorted_events(one).equals(sorted_events(two))
    assert _same_metrics(_metrics(one), _metrics(two))
    m = one.metrics()
    assert sum(m["policy_decisions"].to_pylist()) > 0  # the model decided for its agents
    assert sum(m["policy_fallbacks"].to_pylist()) == 0


def _steered(labels: tuple[str, ...], wanted: str) -> dict[str, str]:
    """Continuations that make the tiny model answer ``wanted``: a random-weight model
    gives a one-token text tens of nats more than a many-token one."""
    return {lb: " " + lb if lb == wanted else " " + " ".join([lb] * 6) for lb in labels}


def _events(run, kind: str) -> pa.Table:
    ev = run.events()
    return ev.filter(pa.compute.equal(ev["event"].cast(pa.string()), kind))


def test_llm_players_choose_their_moves_and_keep_their_strategy(tiny_model, tmp_path):
    from swarm.envs.games import MOVES

    # Cooperators who imitate whenever a neighbour scored more: as LLM-style agents
    # told to defect, they defect from round 1 on and never switch strategy.
    env = {"kind": "games", "imitation": 1.0, "strategies": {"always_cooperate": 1.0}}
    run = swarm.run(_config(env, 4, tiny_model, llm_fraction=1.0, temperature=0.0,
                            actions=_steered(MOVES, "defect")), tmp_path / "r", backend="local")
    assert _events(run, "switch").num_rows == 0
    pay = _events(run, "payoff")
    first = pa.compute.equal(pay["step"], 0)
    assert set(pay.filter(first)["item"].to_pylist()) == {0}  # the strategy's opening
    later = pay.filter(pa.compute.invert(first))
    assert set(later["item"].to_pylist()) == {1}
    assert set(later["strategy"].to_pylist()) == {"always_cooperate"}
    assert run.metrics()["cooperation_rate"].to_pylist()[1:] == [0.0] * 3


def test_llm_harvests_are_levels_of_the_base_request(tiny_model, tmp_path):
    from swarm.envs.commons import LEVEL_FACTORS, CommonsConfig

    env = {"kind": "commons", "talk": True, "log_every": 1}
    run = swarm.run(_config(env, 3, tiny_model, llm_fraction=1.0), tmp_path / "r",
                    backend="local")
    harvest = _events(run, "harvest")
    first = harvest.filter(pa.compute.equal(harvest["step"], 0))  # the stock covers it all
    base = CommonsConfig.model_validate(env).base_request()
    levels = {round(f * base, 9) for f in LEVEL_FACTORS}
    taken = {round(v, 9) for v in first["value"].to_pylist()}
    assert taken <= levels and len(taken) > 1


@pytest.mark.parametrize("protocol", ["majority", "leader_commit"])
def test_llm_ballots_are_votes_and_proposals(protocol, tiny_model, tmp_path):
    from swarm.envs.consensus import ABSTAIN

    env = {"kind": "consensus", "protocol": protocol, "values": 3}
    labels = ("0", "1", "2", ABSTAIN)
    # Everyone votes (and a leader proposes) 1: the tally decides 1 for every agent.
    run = swarm.run(_config(env, 9, tiny_model, llm_fraction=1.0, temperature=0.0,
                            actions=_steered(labels, "1")), tmp_path / "one", backend="local")
    decided = _events(run, "decide")
    assert decided.num_rows == GRAPH["n"] and set(decided["item"].to_pylist()) == {1}
    assert run.metrics()["agreement"].to_pylist()[-1] == 1
    if protocol == "leader_commit":
        assert set(_events(run, "propose")["item"].to_pylist()) == {1}
    # Everyone abstains: no vote counts (and no leader proposes), nothing is decided.
    run = swarm.run(_config(env, 9, tiny_model, llm_fraction=1.0, temperature=0.0,
                            actions=_steered(labels, ABSTAIN)), tmp_path / "none",
                    backend="local")
    assert run.events().num_rows == 0
    assert sum(run.metrics()["honest_votes"].to_pylist()) == 0


@pytest.mark.parametrize("env", [{"kind": "cascade", "model": "independent_cascade"},
                                 {"kind": "cascade", "model": "sir"}])
def test_models_without_a_discrete_choice_refuse_llm_agents(env, tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="no choice for LLM-style agents"):
        swarm.run(_config(env, 3, tiny_model), tmp_path / "r", backend="local")
    assert not (tmp_path / "r" / "events").exists()


def test_the_llm_commons_example_runs(tiny_model, tmp_path):
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "llm_commons.yaml"
    config = tmp_path / "llm_commons.yaml"
    config.write_text(example.read_text().replace("runs/tiny-model", tiny_model))
    cfg = swarm.load_config(config, ["steps=3", "graph.n=200", "shards=1",
                                     "checkpoint.every=0"])
    run = swarm.run(cfg, tmp_path / "r", backend="local", progress=False)
    assert sum(run.metrics()["policy_decisions"].to_pylist()) > 0
