"""Shared fixtures: one embedded Ray per test session, small configs."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ["RAY_AUTH_MODE"] = "disabled"


@pytest.fixture(scope="session")
def ray_session():
    """An embedded Ray shared by every test that needs it (init costs 2-4 s)."""
    import ray

    if not ray.is_initialized():
        # address="local": a new Ray of our own even when a `ray start` cluster
        # runs on this machine (plain ray.init() would join it).
        ray.init(address="local", num_cpus=2, include_dashboard=False,
                 object_store_memory=256 * 1024**2, logging_level="WARNING")
    yield ray
    ray.shutdown()


def cascade_config(n=2000, shards=1, model="independent_cascade", graph=None, **env):
    """A validated cascade config on a small BA graph (override anything)."""
    from swarm import validate_config

    env_cfg = {"kind": "cascade", "model": model, **env}
    if model == "independent_cascade":
        env_cfg.setdefault("p", 0.1)
    raw = {
        "seed": 5,
        "steps": 500,
        "shards": shards,
        "graph": graph or {"kind": "barabasi_albert", "n": n, "m": 3},
        "env": env_cfg,
        "log": {"flush_every": 3},
    }
    return validate_config(raw)


def sorted_events(run):
    """Events without the shard column (which names the writer), in a canonical order.

    Runs that must agree (any shard count, partition, resume) compare equal this way.
    """
    import pyarrow as pa

    t = run.events().drop_columns(["shard"])
    t = t.set_column(t.schema.get_field_index("event"), "event", t["event"].cast(pa.string()))
    return t.sort_by([("step", "ascending"), ("agent", "ascending"), ("event", "ascending")])


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny random-weight causal LM saved as a checkpoint directory (nothing downloaded)."""
    from swarm.policies.testing import make_tiny_model

    return make_tiny_model(str(tmp_path_factory.mktemp("tiny-model")))


def llm_config(model_dir, n=400, shards=1, llm_fraction=0.7, steps=6, population=None,
               **policy):
    """Linear threshold on an ER graph where a fraction of agents decide with a tiny LLM."""
    from swarm import validate_config

    groups = [{"policy": {"kind": "llm", "model": model_dir, **policy},
               "fraction": llm_fraction}]
    if llm_fraction < 1:
        groups.insert(0, {"policy": {"kind": "default"}, "fraction": 1 - llm_fraction})
    return validate_config({
        "seed": 11, "steps": steps, "shards": shards, "partition": "hash",
        "graph": {"kind": "erdos_renyi", "n": n, "mean_degree": 8},
        "env": {"kind": "cascade", "model": "linear_threshold", "seed_fraction": 0.05},
        "checkpoint": {"every": 0},
        "population": population or {"groups": groups},
    })
