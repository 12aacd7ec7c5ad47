"""Checkpoints, resume, Ctrl-C and shard restarts: a stopped run finishes with the same log."""

import os
import signal

import numpy as np
import pyarrow.compute as pc
import pytest
from conftest import cascade_config, crash_shards_at, sir_config, sorted_events

import swarm
from swarm.errors import ClusterError, LogError, RunInterrupted


def same_metrics(a, b) -> None:
    keep = [c for c in a.metrics().column_names if "seconds" not in c and "cross" not in c]
    assert a.metrics().select(keep).equals(b.metrics().select(keep))


def test_checkpoint_files_and_only_the_last_two_kept(reference):
    m = reference.manifest
    assert m["steps_run"] > 12, "the reference run must outlast several checkpoints"
    step = m["checkpoint"]["step"]
    assert (step + 1) % 4 == 0 and step >= m["steps_run"] - 5
    # The previous checkpoint stays, for a resume to fall back on if the last is damaged.
    previous = m["previous_checkpoint"]["step"]
    assert previous == step - 4
    state = os.path.join(reference.path, "state")
    assert sorted(os.listdir(state)) == [f"step={previous:08d}", f"step={step:08d}"]
    files = os.listdir(os.path.join(state, f"step={step:08d}"))
    assert {"shard=0.arrow", "shard=1.arrow", "metrics.arrow"} <= set(files)
    # Every one of them is listed in the manifest with its rows, bytes and checksum.
    listed = m["checkpoint"]["files"]
    assert set(listed) == {f"state/step={step:08d}/{f}" for f in files}
    assert all(rec["bytes"] > 0 and len(rec["xxh3_128"]) == 32 for rec in listed.values())
    assert m["checkpoint"]["log"] == {"0": m["checkpoint"]["log"]["0"],
                                      "1": m["checkpoint"]["log"]["1"]}
    arrays, meta = swarm.checkpoint.read_arrays(reference.store,
                                                f"state/step={step:08d}/shard=0.arrow")
    assert meta["step"] == step and arrays["env.ever_active"].ndim == 0
    # Sparse state: only the agents the epidemic reached, never all 1500.
    touched = arrays["env.touched"]
    assert 0 < touched.shape[0] < 1500 and (arrays["env.touched_status"] > 0).all()


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path, monkeypatch, reference):
    undo = crash_shards_at(monkeypatch, 14, shard=1, message="power cut")
    with pytest.raises(RuntimeError, match="power cut"):
        swarm.run(sir_config(), tmp_path / "r", backend="local")
    crashed = swarm.open_run(tmp_path / "r")
    assert crashed.status == "failed" and crashed.manifest["checkpoint"]["step"] == 11
    # Shard 0 flushed steps past the checkpoint on its way out: resume must drop them.
    assert pc.max(crashed.events()["step"]).as_py() > 11
    undo()
    resumed = swarm.resume(tmp_path / "r")
    assert resumed.status == "completed" and resumed.manifest["resumed_from"] == 11
    assert sorted_events(resumed).equals(sorted_events(reference))
    same_metrics(resumed, reference)
    with pytest.raises(LogError, match="already completed"):
        swarm.resume(tmp_path / "r")


def test_resume_without_a_checkpoint_starts_over(tmp_path, monkeypatch, reference):
    undo = crash_shards_at(monkeypatch, 2)
    with pytest.raises(RuntimeError):
        swarm.run(sir_config(), tmp_path / "r", backend="local")
    undo()
    resumed = swarm.resume(tmp_path / "r")
    assert resumed.manifest["resumed_from"] == -1
    assert sorted_events(resumed).equals(sorted_events(reference))


def test_ctrl_c_finishes_the_step_checkpoints_and_resumes(tmp_path, reference):
    def interrupt(row):
        if row["step"] == 6:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(RunInterrupted, match="swarm resume") as info:
        swarm.run(sir_config(), tmp_path / "r", backend="local", on_step=interrupt)
    stopped = swarm.open_run(tmp_path / "r")
    assert stopped.status == "interrupted"
    assert stopped.manifest["checkpoint"]["step"] == info.value.step == 6
    resumed = swarm.resume(tmp_path / "r")
    assert sorted_events(resumed).equals(sorted_events(reference))
    same_metrics(resumed, reference)


def test_run_directory_as_file_uri(tmp_path, reference):
    uri = f"file://{tmp_path}/r"
    run = swarm.run(sir_config(), uri, backend="local")
    assert run.path == uri and run.status == "completed"
    assert os.path.exists(tmp_path / "r" / "manifest.json")
    assert sorted_events(swarm.open_run(uri)).equals(sorted_events(reference))


def test_fan_out_ships_a_broadcast_once_per_shard(tmp_path):
    import networkx as nx

    # A star: the centre (agent 0, shard 0) exposes 99 leaves, half of them on
    # shard 1; linear threshold exposes every out-neighbour, so it broadcasts.
    cfg = cascade_config(shards=2, seed_ids=[0], model="linear_threshold", threshold=0.5)
    run = swarm.run(cfg, tmp_path / "r", graph=nx.star_graph(99), backend="local")
    m = run.metrics().to_pylist()
    # One transfer crosses shards; the messages are its 99 receivers (the unit faults use).
    assert m[0]["cross_shard_messages"] == 1 and m[0]["messages"] == 99
    assert 0 < m[0]["cross_shard_bytes"] <= 64
    assert m[1]["new_active"] == 99
    # Independent cascade sends only transmissions, one message per edge.
    ic = swarm.run(cascade_config(shards=2, seed_ids=[0], p=1.0), tmp_path / "ic",
                   graph=nx.star_graph(99), backend="local").metrics().to_pylist()
    assert ic[0]["cross_shard_messages"] == 50 and ic[1]["new_active"] == 99


def test_cross_shard_traffic_is_measured(ray_session, tmp_path):
    one = swarm.run(sir_config(shards=1), tmp_path / "one")
    two = swarm.run(sir_config(shards=2), tmp_path / "two")
    assert pc.sum(one.metrics()["cross_shard_bytes"]).as_py() == 0
    assert pc.sum(two.metrics()["cross_shard_bytes"]).as_py() > 0
    assert sorted_events(one).equals(sorted_events(two))


def _kill_shard_at(step_to_kill, run_dir, shard=1):
    import ray

    done = []

    def hook(row):
        if row["step"] == step_to_kill and not done:
            run_id = swarm.open_run(run_dir).manifest["run_id"]
            actor = ray.get_actor(f"swarm-{run_id}-a0-shard{shard}")
            os.kill(ray.get(actor.health.remote())["pid"], signal.SIGKILL)
            done.append(step_to_kill)

    return hook


def test_killed_shard_actor_restarts_from_the_checkpoint(ray_session, tmp_path, reference):
    out = tmp_path / "r"
    run = swarm.run(sir_config(), out, on_step=_kill_shard_at(9, out))
    assert run.status == "completed" and run.manifest["restarts"] == 1
    assert sorted_events(run).equals(sorted_events(reference))
    same_metrics(run, reference)


def test_restarts_run_out_then_resume_works(ray_session, tmp_path, reference):
    out = tmp_path / "r"
    cfg = sir_config(fault_tolerance=swarm.config.FaultToleranceConfig(max_restarts=0))
    with pytest.raises(ClusterError, match="max_restarts=0.*swarm resume") as info:
        swarm.run(cfg, out, on_step=_kill_shard_at(9, out))
    assert info.value.exit_code == 3  # a run-time failure, not bad input
    failed = swarm.open_run(out)
    assert failed.status == "failed" and failed.manifest["checkpoint"]["step"] == 7
    resumed = swarm.resume(out)
    assert sorted_events(resumed).equals(sorted_events(reference))


def test_checkpoint_state_roundtrip_is_exact():
    arrays = {"a": np.arange(5, dtype=np.int8), "b": np.array(3.5), "c": np.empty(0, np.int64),
              "d": np.array([True, False])}
    back, meta = swarm.checkpoint.unpack(swarm.checkpoint.pack(arrays, {"step": 4}))
    assert meta == {"step": 4}
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        assert np.array_equal(back[k], v)


@pytest.mark.parametrize("model, params", [("linear_threshold", {}),
                                           ("independent_cascade", {"p": 0.2})])
def test_other_models_resume_exactly(tmp_path, monkeypatch, model, params):
    cfg = cascade_config(n=3000, shards=3, model=model, **params).model_copy(
        update={"checkpoint": swarm.config.CheckpointConfig(every=2)})
    ref = swarm.run(cfg, tmp_path / "ref", backend="local")
    assert ref.manifest["steps_run"] > 4
    undo = crash_shards_at(monkeypatch, 4)
    with pytest.raises(RuntimeError):
        swarm.run(cfg, tmp_path / "r", backend="local")
    undo()
    resumed = swarm.resume(tmp_path / "r")
    assert resumed.manifest["resumed_from"] == 3
    assert sorted_events(resumed).equals(sorted_events(ref))


def test_ctrl_c_in_the_last_step_completes_the_run(tmp_path):
    cfg = sir_config(steps=10)
    ref = swarm.run(cfg, tmp_path / "ref", backend="local")
    assert ref.manifest["steps_run"] == 10, "the run must reach max steps"

    def interrupt(row):
        if row["step"] == 9:
            os.kill(os.getpid(), signal.SIGINT)

    run = swarm.run(cfg, tmp_path / "r", backend="local", on_step=interrupt)
    assert run.status == "completed" and run.manifest["steps_run"] == 10
    assert sorted_events(run).equals(sorted_events(ref))


def test_resume_from_a_checkpoint_at_the_last_step_adds_nothing(tmp_path, monkeypatch):
    import swarm.runner as runner

    cfg = sir_config(steps=12)  # every=4: the last checkpoint is step 11, the last step
    ref = swarm.run(cfg, tmp_path / "ref", backend="local")
    real = runner.write_metrics

    def fail_final_metrics(store, rel, *args, **kwargs):
        if rel == "metrics.arrow":
            raise OSError("disk full")
        return real(store, rel, *args, **kwargs)

    monkeypatch.setattr(runner, "write_metrics", fail_final_metrics)
    with pytest.raises(OSError):
        swarm.run(cfg, tmp_path / "r", backend="local")
    monkeypatch.setattr(runner, "write_metrics", real)
    assert swarm.open_run(tmp_path / "r").manifest["checkpoint"]["step"] == 11
    resumed = swarm.resume(tmp_path / "r")
    assert resumed.status == "completed" and resumed.manifest["steps_run"] == 12
    assert sorted_events(resumed).equals(sorted_events(ref))
    same_metrics(resumed, ref)


def test_env_default_state_dict_round_trips_the_declared_attributes():
    from swarm.envs.base import Env

    class Counter(Env):
        name = "counter-test"
        state_attrs = ("count", "level", "unset")

        def __init__(self, count, level):
            self.count, self.level, self.unset = count, level, None

    a = Counter(3, np.arange(4.0))
    state = a.state_dict()
    assert set(state) == {"count", "level"}  # None is skipped
    back, _ = swarm.checkpoint.unpack(swarm.checkpoint.pack(state))
    b = Counter(0, np.zeros(4))
    b.load_state_dict(back)
    assert b.count == 3 and isinstance(b.count, int) and np.array_equal(b.level, a.level)
    with pytest.raises(ValueError, match="does not declare"):
        b.load_state_dict({"other": np.zeros(1)})
