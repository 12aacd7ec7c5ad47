"""Large-n checks, kept out of the default run: `make test-slow` (about a minute)."""

import numpy as np
import pytest

import swarm
from swarm.graph import barabasi_albert

pytestmark = pytest.mark.slow


def test_million_agents_two_ray_shards_equal_one_local_shard(tmp_path, ray_session):
    n = 1_000_000
    g = barabasi_albert(n, 5, seed=1)
    raw = {
        "seed": 1, "steps": 10_000, "shards": 1,
        "graph": {"kind": "barabasi_albert", "n": n, "m": 5},
        "env": {"kind": "cascade", "p": 0.05, "seed_fraction": 0.01},
    }
    one = swarm.run(swarm.validate_config(raw), tmp_path / "one", graph=g, backend="local")
    two = swarm.run(swarm.validate_config({**raw, "shards": 2}), tmp_path / "two", graph=g,
                    progress=False)
    a = one.events(columns=["step", "agent", "parent", "root"]).sort_by("agent")
    b = two.events(columns=["step", "agent", "parent", "root"]).sort_by("agent")
    assert a.num_rows > 0.05 * n and a.equals(b)
    assert two.manifest["stop_reason"] == "quiescent"
    # Peak memory of the shard actors stays far below the 2 GiB budget.
    assert sum(two.manifest["shard_peak_rss_mib"]) < 1536
    assert np.array_equal(one.metrics()["ever_active"].to_numpy(),
                          two.metrics()["ever_active"].to_numpy())
