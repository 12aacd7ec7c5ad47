"""The consensus env: the test kit, agreement without faults, Byzantine leaders, crashes, drops."""

import pytest

import swarm
import swarm.envs.consensus  # noqa: F401  (registers env.kind: consensus)
from swarm.config import validate_config
from swarm.envs.consensus import Consensus, ConsensusConfig, agreement_step
from swarm.envs.testing import check_determinism, check_env_api

_RING = {"kind": "watts_strogatz", "n": 200, "k": 6, "p": 0.1}
# Gossip mixes slowly on a ring-like graph; a random graph agrees in a few dozen steps.
_RANDOM = {"kind": "erdos_renyi", "n": 200, "mean_degree": 10}


def _run(tmp_path, env: dict, steps: int, faults: dict | None = None, graph: dict | None = None):
    cfg = validate_config({"seed": 7, "steps": steps, "shards": 1, "checkpoint": {"every": 0},
                           "graph": graph or _RING, "faults": faults or {},
                           "env": {"kind": "consensus", **env}})
    run = swarm.run(cfg, tmp_path / "r", backend="local", progress=False)
    return run.metrics().to_pydict()


@pytest.mark.parametrize("env", [
    {"protocol": "gossip", "log_every": 5},
    {"protocol": "majority", "values": 3, "byzantine": 0.1},
    {"protocol": "leader_commit", "values": 3, "byzantine": 0.1},
])
def test_the_kit_passes(env, tmp_path, monkeypatch):
    smoke = {**Consensus.smoke_config, "env": {"kind": "consensus", **env}}
    cls = type("ConsensusVariant", (Consensus,), {"smoke_config": smoke})
    monkeypatch.setitem(swarm.envs.ENV_REGISTRY, "consensus", cls)
    check_env_api(cls)
    check_determinism(cls, tmp_path)


@pytest.mark.parametrize("env, steps, graph", [
    ({"protocol": "gossip", "log_every": 100}, 60, _RANDOM),
    ({"protocol": "majority", "values": 4}, 12, None),
    ({"protocol": "leader_commit", "values": 4}, 30, None),
])
def test_no_faults_reach_agreement_with_validity(env, steps, graph, tmp_path):
    m = _run(tmp_path, env, steps, graph=graph)
    when = agreement_step(m)
    assert when is not None, f"{env['protocol']} never agreed"
    assert m["agreement"][-1] == 1 and m["validity"][-1] == 1
    assert m["safety_violations"][-1] == 0
    assert sum(m["messages"]) > 0


def test_leader_commit_with_over_a_third_byzantine_loses_liveness_not_safety(tmp_path):
    """With 40% Byzantine agents no value ever reaches the 2/3 quorum: liveness is lost.

    Honest votes are at most 60% of the expected ones, and Byzantine voters
    send each receiver a value other than the proposal (under a Byzantine
    leader, honest votes split too). Every honest agent reads the same global
    tally and at most one value can pass 2/3, so safety holds: nobody decides.
    """
    m = _run(tmp_path, {"protocol": "leader_commit", "byzantine": 0.4}, 30)
    assert max(m["decided"]) == 0.0 and max(m["agreement"]) == 0
    assert max(m["safety_violations"]) == 0
    # Below the bound the same protocol agrees.
    ok = _run(tmp_path / "ok", {"protocol": "leader_commit", "byzantine": 0.1}, 30)
    assert ok["agreement"][-1] == 1 and ok["validity"][-1] == 1


@pytest.mark.parametrize("env", [{"protocol": "majority"}, {"protocol": "leader_commit"}])
def test_crash_faults_below_the_bound_keep_agreement(env, tmp_path):
    # Crashed agents hear nothing and never decide: agreement asks 85% of the honest.
    m = _run(tmp_path, {**env, "decide_share": 0.85}, 20,
             faults={"crash": {"fraction": 0.1, "at_step": 0}})
    assert m["agreement"][-1] == 1 and m["validity"][-1] == 1
    assert m["safety_violations"][-1] == 0
    assert 0.85 <= m["decided"][-1] < 1.0


def test_gossip_converges_despite_dropped_messages(tmp_path):
    clean = agreement_step(_run(tmp_path / "a", {"protocol": "gossip", "log_every": 100}, 80,
                                graph=_RANDOM))
    m = _run(tmp_path / "b", {"protocol": "gossip", "log_every": 100}, 80,
             faults={"drop": 0.1}, graph=_RANDOM)
    lossy = agreement_step(m)
    assert clean is not None and lossy is not None and lossy >= clean
    assert m["validity"][-1] == 1


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="do not apply to protocol='gossip'"):
        ConsensusConfig(protocol="gossip", values=3)
    with pytest.raises(ValueError, match="values"):
        ConsensusConfig(protocol="majority", values=9)
