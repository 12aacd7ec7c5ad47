"""Every registered env passes the test kit (``swarm.envs.testing``)."""

from __future__ import annotations

import numpy as np
import pytest

from swarm.envs import ENV_REGISTRY
from swarm.envs.testing import check_determinism, check_env_api

ENVS = sorted(ENV_REGISTRY)


@pytest.mark.parametrize("name", ENVS)
def test_env_passes_the_api_check(name):
    check_env_api(ENV_REGISTRY[name])


@pytest.mark.parametrize("name", ENVS)
def test_env_is_deterministic_across_runs_and_shards(name, tmp_path):
    check_determinism(ENV_REGISTRY[name], tmp_path)


@pytest.mark.parametrize("name", ENVS)
def test_env_is_deterministic_under_faults(name, tmp_path):
    runs = check_determinism(ENV_REGISTRY[name], tmp_path, faults={
        "drop": 0.2, "crash": {"fraction": 0.1, "at_step": 2},
        "partition": {"fraction": 0.5, "start": 3, "end": 6},
        "delay": {"steps": 2, "fraction": 0.3}})
    m = runs[0].metrics()
    # The faults did something: messages were lost and others held back.
    assert sum(m["dropped_messages"].to_pylist()) > 0
    assert sum(m["held_messages"].to_pylist()) > 0


def _cascade_kind(kind: str) -> tuple[type, dict]:
    """The config class and smoke config of a cascade variant registered as ``kind``."""
    from typing import Literal

    from pydantic import create_model

    from swarm.envs.cascade import Cascade, CascadeConfig

    config = create_model(f"{kind}Config", __base__=CascadeConfig,
                          kind=(Literal[kind], kind))
    return config, {**Cascade.smoke_config, "env": {**Cascade.smoke_config["env"], "kind": kind}}


def test_the_kit_catches_an_env_that_depends_on_sharding(tmp_path):
    from swarm.envs.base import register_env
    from swarm.envs.cascade import Cascade

    class Leaky(Cascade):
        """Logs its shard count: a result that depends on sharding."""

        name = "leaky_test_env"
        Config, smoke_config = _cascade_kind(name)

        def apply(self, step, batch, actions):
            result = super().apply(step, batch, actions)
            result.events["value"][:] = self.view.num_shards
            return result

    register_env(Leaky)
    try:
        check_env_api(Leaky)  # its declarations are fine
        with pytest.raises(AssertionError, match="1 and 3 shards logged different events"):
            check_determinism(Leaky, tmp_path)
    finally:
        ENV_REGISTRY.unregister(Leaky.name)


def test_the_kit_catches_state_missing_from_checkpoints():
    from typing import Literal

    from swarm.envs.base import register_env
    from swarm.envs.commons import Commons, CommonsConfig

    class ForgetfulConfig(CommonsConfig):
        kind: Literal["forgetful_test_env"] = "forgetful_test_env"

    class Forgetful(Commons):
        """Does not checkpoint the agents' harvest norms."""

        name = "forgetful_test_env"
        Config = ForgetfulConfig
        state = {}  # norm kept as a plain attribute, not a declared column

        def __init__(self, config, view, setup):
            self.norm = np.zeros(view.n_local)
            super().__init__(config, view, setup)
        smoke_config = {**Commons.smoke_config,
                        "env": {**Commons.smoke_config["env"], "kind": "forgetful_test_env"}}

    register_env(Forgetful)
    try:
        with pytest.raises(AssertionError, match="restored from a checkpoint"):
            check_env_api(Forgetful, steps=8)
    finally:
        ENV_REGISTRY.unregister(Forgetful.name)


@pytest.mark.parametrize("declared", ["metric", "timing"])
def test_the_kit_fails_wall_clock_in_deterministic_metrics(tmp_path, declared):
    """A wall-clock figure among the deterministic metrics fails the determinism kit,
    whatever its name; declared as a timing metric it goes to timings.arrow and passes."""
    import time

    from swarm.envs.base import register_env
    from swarm.envs.cascade import Cascade

    class Clocked(Cascade):
        name = "clocked_test_env"
        Config, smoke_config = _cascade_kind(name)
        if declared == "metric":
            metric_names = (*Cascade.metric_names, "work_time")  # not a "seconds" name
        else:
            timing_metrics = ("work_time",)

        def apply(self, step, batch, actions):
            result = super().apply(step, batch, actions)
            result.metrics["work_time"] = time.perf_counter()
            return result

    register_env(Clocked)
    try:
        if declared == "metric":
            with pytest.raises(AssertionError, match="metrics"):
                check_determinism(Clocked, tmp_path)
        else:
            runs = check_determinism(Clocked, tmp_path)
            assert "work_time" in runs[0].timings().column_names
            assert "work_time" not in runs[0].metrics().column_names
    finally:
        ENV_REGISTRY.unregister(Clocked.name)
