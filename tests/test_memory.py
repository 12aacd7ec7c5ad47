"""The memory guard refuses runs that cannot fit, before writing anything, and says what fits."""

import os

import pytest
from conftest import cascade_config

import swarm
from swarm.envs import ENV_REGISTRY
from swarm.errors import ClusterError
from swarm.memory import GIB, MemoryEstimate, check_memory, estimate_memory
from swarm.runner import build_graph


def test_estimate_grows_with_the_graph_and_splits_over_shards():
    cascade = ENV_REGISTRY["cascade"]
    small_cfg, big_cfg = cascade_config(n=2000), cascade_config(n=20000)
    small = estimate_memory(build_graph(small_cfg), small_cfg, cascade)
    big = estimate_memory(build_graph(big_cfg), big_cfg, cascade)
    assert big.total > small.total and big.per_shard > small.per_shard
    four_cfg = cascade_config(n=20000, shards=4)
    four = estimate_memory(build_graph(four_cfg), four_cfg, cascade)
    assert four.per_shard < big.per_shard
    # Linear threshold broadcasts: on several shards each needs fan-out tables.
    lt_cfg = cascade_config(n=20000, shards=4, model="linear_threshold")
    lt = estimate_memory(build_graph(lt_cfg), lt_cfg, cascade)
    assert lt.per_shard > four.per_shard
    # A graph passed in is held by the driver and copied to the object store once.
    assert four.object_store > 0 and not four.shard_local


def test_refusal_names_the_need_the_room_and_what_would_fit():
    est = MemoryEstimate(driver=4 * GIB, object_store=2 * GIB, per_shard=3 * GIB, shards=8)
    with pytest.raises(ClusterError) as info:
        check_memory(est, available=(16 * GIB, 16 * GIB))
    msg = str(info.value)
    assert "30.0 GiB" in msg and "16.0 GiB" in msg
    # A 16 GiB node holds the driver side (6 GiB) and 3 shards; the other 5
    # shards fit a second node (5 x 3 GiB).
    assert "3 such shards" in msg and "5 shards alone" in msg and "about 2 nodes" in msg
    assert "memory_check: false" in msg
    check_memory(est, available=(64 * GIB, 32 * GIB))  # fits: no error
    huge = MemoryEstimate(driver=GIB, object_store=GIB, per_shard=40 * GIB, shards=2)
    with pytest.raises(ClusterError, match="raise `shards`"):
        check_memory(huge, available=(64 * GIB, 32 * GIB))


def test_run_refuses_before_writing_anything(tmp_path, monkeypatch):
    monkeypatch.setattr(swarm.memory, "available_memory", lambda backend: (10**8, 10**8))
    cfg = cascade_config(n=5000)
    with pytest.raises(ClusterError, match="needs about"):
        swarm.run(cfg, tmp_path / "r", backend="local")
    assert not os.path.exists(tmp_path / "r")
    off = cfg.model_copy(update={"memory_check": False})
    assert swarm.run(off, tmp_path / "r", backend="local").status == "completed"
