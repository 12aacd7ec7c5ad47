"""docs/writing-an-env.md: its voter model runs as written and passes the env kit."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import swarm
from swarm.envs.testing import check_determinism, check_env_api, smoke_run_config
from swarm.registry import ENVS, POLICIES

DOC = Path(__file__).resolve().parents[1] / "docs" / "writing-an-env.md"


@pytest.fixture(scope="module")
def voter():
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)[0]
    assert len(code.splitlines()) <= 80, "the tutorial env (rule included) fits in 80 lines"
    module = types.ModuleType("voter_tutorial")
    sys.modules[module.__name__] = module
    exec(compile(code, str(DOC), "exec"), module.__dict__)
    yield module
    ENVS.unregister("voter")
    POLICIES.unregister("voter_copy")
    del sys.modules[module.__name__]


def test_the_tutorial_env_passes_the_kit(voter, tmp_path):
    check_env_api(voter.Voter)
    check_determinism(voter.Voter, tmp_path)


def test_the_voter_metrics_match_its_events(voter, tmp_path):
    cfg = smoke_run_config(voter.Voter, shards=2, steps=12)
    run = swarm.run(cfg, tmp_path / "voter", backend="local")
    n = cfg.graph.n
    opinion = (swarm.rng.KeyedRNG(cfg.seed).bits("voter_init", np.arange(n))
               % np.uint64(2)).astype(np.int64)
    ev, m = run.events(), run.metrics().to_pydict()
    step, agent = np.asarray(ev["step"]), np.asarray(ev["agent"])
    value = np.asarray(ev["value"]).astype(np.int64)
    for s in range(cfg.steps):
        at = step == s
        assert m["switches"][s] == int(at.sum())
        opinion[agent[at]] = value[at]
        assert m["share_one"][s] == pytest.approx(opinion.mean(), abs=0)
    assert sum(m["switches"]) > 0
