"""Fault injection at delivery: lost messages, partitions, crash-stop; keyed and shard-proof."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import cascade_config, sorted_events

import swarm
from swarm.errors import ConfigError
from swarm.faults import FaultsConfig
from swarm.rng import KeyedRNG


def with_faults(cfg, **faults):
    return cfg.model_copy(update={"faults": FaultsConfig.model_validate(faults)})


def ic(shards=1, **faults):
    return with_faults(cascade_config(n=3000, shards=shards, p=0.3, seed_count=10), **faults)


def test_faulty_runs_do_not_depend_on_sharding(tmp_path):
    faults = {"drop": 0.3, "partition": {"fraction": 0.4, "start": 1, "end": 4},
              "crash": {"fraction": 0.1, "at_step": 2}}
    for model, cfg in (("ic", ic), ("lt", lambda shards, **f: with_faults(
            cascade_config(n=3000, shards=shards, model="linear_threshold", seed_count=60),
            **f))):
        one = swarm.run(cfg(1, **faults), tmp_path / f"{model}1", backend="local")
        three = swarm.run(cfg(3, **faults), tmp_path / f"{model}3", backend="local")
        assert sorted_events(one).equals(sorted_events(three))
        dropped = one.metrics()["dropped_messages"].to_pylist()
        assert sum(dropped) > 0 and dropped == three.metrics()["dropped_messages"].to_pylist()


def test_dropping_every_message_leaves_only_the_seeds(tmp_path):
    clean = swarm.run(ic(), tmp_path / "clean", backend="local")
    lossy = swarm.run(ic(drop=0.5), tmp_path / "lossy", backend="local")
    dead = swarm.run(ic(drop=1.0), tmp_path / "dead", backend="local")
    assert dead.events().num_rows == 10
    assert 10 < lossy.events().num_rows < clean.events().num_rows


def test_no_activation_crosses_a_partition_and_crashed_agents_are_cut_off(tmp_path):
    rng = KeyedRNG(5)  # cascade_config's seed
    run = swarm.run(ic(partition={"fraction": 0.5, "start": 0, "end": 10_000}),
                    tmp_path / "p", backend="local")
    ev = run.events()
    child = np.asarray(ev["agent"])
    parent = np.asarray(ev["parent"].fill_null(-1))
    has = parent >= 0
    side = lambda ids: rng.uniform("fault_side", ids) < 0.5  # noqa: E731
    assert has.sum() > 20
    assert (side(child[has]) == side(parent[has])).all()

    run = swarm.run(ic(crash={"fraction": 0.3, "at_step": 0}), tmp_path / "c", backend="local")
    ev = run.events()
    child = np.asarray(ev["agent"])
    parent = np.asarray(ev["parent"].fill_null(-1))
    crashed = lambda ids: rng.uniform("fault_crash", ids) < 0.3  # noqa: E731
    assert not crashed(parent[parent >= 0]).any()  # crashed agents never pass anything on
    assert not crashed(child[parent >= 0]).any()  # and nothing reaches them
    assert (parent >= 0).sum() > 20


def test_resume_of_a_faulty_run_is_exact(tmp_path, monkeypatch):
    from test_checkpoint import crash_shards_at

    cfg = with_faults(cascade_config(n=3000, shards=2, model="sir", beta=0.15, gamma=0.1),
                      drop=0.2, crash={"fraction": 0.2, "at_step": 5},
                      delay={"steps": 2, "fraction": 0.5})
    cfg = cfg.model_copy(update={"checkpoint": swarm.config.CheckpointConfig(every=3),
                                 "steps": 30})
    reference = swarm.run(cfg, tmp_path / "ref", backend="local")
    undo = crash_shards_at(monkeypatch, 10)
    with pytest.raises(RuntimeError):
        swarm.run(cfg, tmp_path / "r", backend="local")
    undo()
    resumed = swarm.resume(tmp_path / "r")
    assert sorted_events(resumed).equals(sorted_events(reference))


def test_fault_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="faults.partition: end must be > start"):
        swarm.validate_config({**cascade_config().dump(),
                               "faults": {"partition": {"start": 5, "end": 5}}})
    with pytest.raises(ConfigError, match="faults.drop"):
        swarm.validate_config({**cascade_config().dump(), "faults": {"drop": 1.5}})


def test_delaying_every_message_stretches_the_cascade_in_time(tmp_path):
    clean = swarm.run(ic(), tmp_path / "clean", backend="local")
    slow = swarm.run(ic(shards=3, delay={"steps": 2, "fraction": 1.0}), tmp_path / "slow",
                     backend="local")
    # Each generation now takes 1 + 2 steps: the same agents activate, 3x later.
    # (Parents may differ: ties between simultaneous activators are broken by a
    # draw keyed by the step.)
    a, b = sorted_events(clean), sorted_events(slow)
    assert a.num_rows == b.num_rows > 30
    assert (np.asarray(b["step"]) == 3 * np.asarray(a["step"])).all()
    assert a["agent"].equals(b["agent"])


def test_a_crash_cuts_the_agent_off_from_its_crash_step(tmp_path):
    # Crash at step 3 of an SIR run: a message sent at step 2 reaches its
    # receiver at step 3, by which time a crashed receiver must take nothing in.
    rng = KeyedRNG(5)
    cfg = with_faults(cascade_config(n=3000, shards=2, model="sir", beta=0.2, gamma=0.1),
                      crash={"fraction": 0.3, "at_step": 3}, delay={"steps": 2, "fraction": 0.3})
    run = swarm.run(cfg, tmp_path / "c", backend="local")
    ev = run.events()
    step = np.asarray(ev["step"])
    child = np.asarray(ev["agent"])
    parent = np.asarray(ev["parent"].fill_null(-1))
    crashed = rng.uniform("fault_crash", child) < 0.3
    infected = parent >= 0
    assert (infected & (step < 3) & crashed).any()  # they took part before the crash
    assert not (infected & (step >= 3) & crashed).any()
    # Delivered at step t, a message was sent at t - 1, or at t - 3 if delayed.
    sent_after = infected & (step - 3 >= 3)
    assert sent_after.sum() > 20
    assert not (rng.uniform("fault_crash", parent[sent_after]) < 0.3).any()
    m = run.metrics()
    # Held messages are counted apart from what each step sent.
    assert sum(m["held_messages"].to_pylist()) > 0 and sum(m["dropped_messages"].to_pylist()) > 0


@pytest.mark.parametrize("kind", ["cascade", "commons", "consensus", "contract_net",
                                  "coordination", "feed",
                                  "games", "opinion"])
def test_crashed_agents_neither_act_nor_change_state_in_any_env(tmp_path, kind):
    """The engine applies crash-stop for every env: from its crash step on, a crashed
    agent leaves no event and its per-agent state stays as it was."""
    from swarm import checkpoint as ckpt
    from swarm.envs.testing import smoke_run_config
    from swarm.registry import ENVS

    env_cls = ENVS[kind]
    at, steps = 2, 8
    cfg = smoke_run_config(env_cls, steps=steps, checkpoint={"every": 1})
    cfg = with_faults(cfg, crash={"fraction": 0.3, "at_step": at})
    done = swarm.run(cfg, tmp_path / kind, backend="local")
    early = swarm.run(cfg.model_copy(update={"steps": at}), tmp_path / f"{kind}-early",
                      backend="local")
    n = cfg.graph.n
    down = np.flatnonzero(KeyedRNG(cfg.seed).uniform("fault_crash", np.arange(n)) < 0.3)
    ev = done.events()
    step, agent = np.asarray(ev["step"]), np.asarray(ev["agent"])
    assert not np.isin(agent[step >= at], down).any()

    def state(run):
        return ckpt.read_arrays(run.store, ckpt.shard_file(run.manifest["checkpoint"]["step"],
                                                           0))[0]

    before, after = state(early), state(done)
    assert early.manifest["checkpoint"]["step"] == at - 1
    assert done.manifest["checkpoint"]["step"] > at
    rows = [k for k, v in before.items() if k.startswith("env.") and v.ndim and v.shape[0] == n]
    # The cascade checkpoints its state sparsely: the events show its agents frozen.
    assert rows or kind == "cascade", "the env declares per-agent state"
    for key in rows:
        assert np.array_equal(before[key][down], after[key][down]), key


@pytest.mark.parametrize("model", ["independent_cascade", "linear_threshold"])
def test_sent_dropped_and_held_messages_count_in_one_unit(tmp_path, model):
    """`messages` counts one per receiver (a broadcast once per out-neighbour), the unit
    in which faults drop and delay: with every message lost, each step drops exactly
    what the step before sent."""
    extra = {"seed_count": 10} if model == "independent_cascade" else {"seed_count": 60}
    cfg = with_faults(cascade_config(n=2000, shards=2, model=model, **extra), drop=1.0)
    m = swarm.run(cfg, tmp_path / "r", backend="local").metrics().to_pydict()
    assert m["messages"][0] > 0
    assert m["dropped_messages"][1:] == m["messages"][:-1]
    delayed = with_faults(cascade_config(n=2000, model=model, **extra),
                          delay={"steps": 3, "fraction": 1.0})
    d = swarm.run(delayed, tmp_path / "d", backend="local").metrics().to_pydict()
    assert d["held_messages"][1] == d["messages"][0] > 0  # held at delivery, a step on


def test_crash_faults_on_small_feeds_and_all_crashed_mixed_populations(tmp_path):
    """Item tables whose length may equal the agent count are not per-agent state (the
    freeze leaves them alone), and a step where every agent of a mixed population has
    crashed still gives the env every action column."""
    from swarm.envs.feed import Feed
    from swarm.envs.testing import smoke_run_config

    small = smoke_run_config(Feed, steps=40, graph={"kind": "barabasi_albert", "n": 60, "m": 3})
    run = swarm.run(with_faults(small, crash={"fraction": 0.1, "at_step": 1}), tmp_path / "a",
                    backend="local")
    assert run.manifest["steps_run"] == 40
    mixed = smoke_run_config(Feed, steps=5, population={"groups": [
        {"fraction": 0.5}, {"fraction": 0.5}]})
    run = swarm.run(with_faults(mixed, crash={"fraction": 1.0, "at_step": 2}), tmp_path / "b",
                    backend="local")
    m = run.metrics().to_pydict()
    assert run.status == "completed" and np.asarray(run.events()["step"]).max() < 2
    assert m["active_agents"][2:] and not any(m["active_agents"][2:])  # then quiescent
