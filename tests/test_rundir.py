"""Run directories: layout, atomic chunks, refusal to overwrite, clear errors on damage."""

import json
import os

import pyarrow as pa
import pytest
from conftest import cascade_config

import swarm
from swarm.errors import LogError
from swarm.partition import Partition
from swarm.runner import _GraphPlan, _shard_specs, build_graph
from swarm.shard import Shard, build_shards
from swarm.storage import RunStore


def test_layout_manifest_and_chunks(tmp_path):
    cfg = cascade_config(n=3000, shards=2)
    run = swarm.run(cfg, tmp_path / "r", backend="local")
    m = run.manifest
    assert m["status"] == "completed" and m["seed"] == cfg.seed
    assert m["config"]["env"]["p"] == cfg.env.p
    assert m["graph"]["n"] == 3000 and m["partition"]["agents_per_shard"] == [1500, 1500]
    assert 0 < m["partition"]["edge_cut_fraction"] < 1
    assert set(m["versions"]) >= {"swarm", "numpy", "pyarrow", "ray"}
    files = sorted(os.listdir(tmp_path / "r" / "events" / "shard=0"))
    assert files and all(f.startswith("part-") and f.endswith(".arrow") for f in files)
    # flush_every=3: one chunk per 3 steps with events, no temporary files left.
    assert len(files) >= 2 and not any(f.startswith(".") for f in files)
    ev = run.events()
    assert ev.schema.field("event").type == pa.dictionary(pa.int8(), pa.string())
    assert ev.column_names[:9] == ["step", "shard", "agent", "event", "target", "item", "root",
                                   "parent", "value"]
    assert ev.num_rows == m["events"] == run.metrics()["events"].to_numpy().sum()
    metrics = run.metrics()
    assert metrics["step"].to_pylist() == list(range(m["steps_run"]))
    assert metrics["ever_active"][-1].as_py() == ev.num_rows


def test_refuses_to_overwrite_and_keeps_the_old_run(tmp_path):
    cfg = cascade_config(n=500)
    first = swarm.run(cfg, tmp_path / "r", backend="local")
    rows = first.events().num_rows
    with pytest.raises(LogError, match="already holds files"):
        swarm.run(cfg, tmp_path / "r", backend="local")
    assert swarm.open_run(tmp_path / "r").events().num_rows == rows
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(LogError, match="only replaces a directory that holds a swarm run"):
        swarm.run(cfg, tmp_path / "other", backend="local", overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    again = swarm.run(cfg, tmp_path / "r", backend="local", overwrite=True)
    assert again.events().num_rows == rows


def test_damaged_runs_give_clear_errors(tmp_path):
    with pytest.raises(LogError, match="not found"):
        swarm.open_run(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LogError, match="manifest.json is missing"):
        swarm.open_run(tmp_path / "empty")
    run = swarm.run(cascade_config(n=500), tmp_path / "r", backend="local")
    chunk = tmp_path / "r" / "events" / "shard=0" / "part-00000.arrow"
    chunk.write_bytes(chunk.read_bytes()[:40])
    with pytest.raises(LogError, match="part-00000.arrow has 40 bytes but the manifest says"):
        swarm.open_run(run.path).events()
    (tmp_path / "r" / "manifest.json").write_text("{not json")
    with pytest.raises(LogError, match="corrupt"):
        swarm.open_run(run.path)


def test_failed_run_is_marked_failed(tmp_path, monkeypatch):
    real_step = Shard.step

    def boom_at_5(self, step, *parts, **kw):
        if step == 5:
            raise RuntimeError("shard exploded")
        return real_step(self, step, *parts, **kw)

    monkeypatch.setattr(Shard, "step", boom_at_5)
    cfg = cascade_config(n=3000, model="sir", beta=0.2).model_copy(
        update={"log": swarm.config.LogConfig(flush_every=100)})
    with pytest.raises(RuntimeError, match="exploded"):
        swarm.run(cfg, tmp_path / "r", backend="local")
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "shard exploded" in manifest["error"]
    # The events of the five finished steps were flushed on the way out.
    steps = swarm.open_run(tmp_path / "r").events()["step"].to_pylist()
    assert steps and set(steps) == set(range(5))


def test_shard_pickled_mid_run_continues_identically(tmp_path):
    import pickle

    cfg = cascade_config(n=2000, model="sir", beta=0.2)
    g = build_graph(cfg)
    part = Partition("contiguous", g.n, 1)
    setup = swarm.envs.Cascade.prepare(cfg.env, g.n, swarm.rng.KeyedRNG(cfg.seed))
    (spec,) = _shard_specs(cfg, _GraphPlan(g.n, False, "config"), part, setup,
                           RunStore(tmp_path))
    ((shard,), _) = build_shards([spec])
    for t in range(3):
        shard.step(t)
    clone = pickle.loads(pickle.dumps(shard))
    for t in range(3, 8):
        a, b = shard.step(t), clone.step(t)
        assert a[0]["events"] == b[0]["events"] and a[0]["active"] == b[0]["active"]
    assert (shard.env.status == clone.env.status).all()
    assert shard.health()["steps_done"] == 8
