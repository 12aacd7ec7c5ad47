"""Failure paths: a full disk, a vanished directory, a kill at the worst moment, a graph
too big for the machine. Each ends with one line, the right exit code and a run that
`swarm resume` or `--overwrite` can still handle.

A full disk is made real with /dev/full, bind-mounted where the run will write
its next temporary file (the ``full_disk`` fixture): that write fails with
ENOSPC, exactly as on a full file system.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import cascade_config, sir_config, sorted_events

import swarm
from swarm.errors import ClusterError, GraphError, StorageError
from swarm.shard import Shard

SWARM = [sys.executable, "-m", "swarm.cli"]


@pytest.mark.integration  # `swarm resume` as a subprocess, twice
def test_disk_full_marks_failed_and_resume_finishes(tmp_path, reference, full_disk):
    path = tmp_path / "r"

    def fill(row):
        if row["step"] == 5:
            full_disk(path / "state/step=00000011", "shard=0.arrow")

    with pytest.raises(StorageError, match=r"shard=0.arrow: no space left on device; the run is "
                                           r"marked failed\. When fixed, continue with"):
        swarm.run(sir_config(), path, backend="local", on_step=fill)
    m = json.loads((path / "manifest.json").read_text())
    assert m["status"] == "failed" and m["checkpoint"]["step"] == 7
    assert "no space left" in m["error"]
    # Space freed for shard 0, not for shard 1: the CLI stops again, exit 3, one line.
    full_disk.free()
    full_disk(path / "state/step=00000011", "shard=1.arrow")
    out = subprocess.run([*SWARM, "resume", str(path)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 3, out.stderr
    assert out.stderr.count("\n") == 1 and "shard=1.arrow: no space left on device" in out.stderr
    assert json.loads((path / "manifest.json").read_text())["status"] == "failed"
    full_disk.free()
    out = subprocess.run([*SWARM, "resume", str(path)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    resumed = swarm.open_run(path)
    assert sorted_events(resumed).equals(sorted_events(reference)) and resumed.verify() == []


def test_when_even_the_manifest_cannot_be_written_it_says_so(tmp_path, full_disk):
    path = tmp_path / "r"

    def fill(row):
        if row["step"] == 5:
            full_disk(path / "state/step=00000007", "shard=1.arrow")
            full_disk(path, "manifest.json")

    with pytest.raises(StorageError, match="the manifest could not be marked failed either"):
        swarm.run(sir_config(), path, backend="local", on_step=fill)
    assert json.loads((path / "manifest.json").read_text())["status"] == "running"
    full_disk.free()
    assert not (path / ".manifest.json.tmp").exists()  # space freed: resume goes on
    assert swarm.resume(path).status == "completed"


def test_a_vanished_run_directory_is_not_recreated(tmp_path):
    path = tmp_path / "r"

    def vanish(row):
        if row["step"] == 5:
            shutil.rmtree(path)

    with pytest.raises(StorageError, match="vanished"):
        swarm.run(sir_config(), path, backend="local", on_step=vanish)
    assert not path.exists()


def test_a_kill_before_the_first_full_manifest_leaves_a_usable_directory(tmp_path, reference,
                                                                       monkeypatch):
    import swarm.runner

    path = tmp_path / "r"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the moment after `starting` was written

    monkeypatch.setattr(swarm.runner, "write_manifest", killed)
    with pytest.raises(KeyboardInterrupt):
        swarm.run(sir_config(), path, backend="local")
    monkeypatch.undo()
    assert json.loads((path / "manifest.json").read_text())["status"] == "starting"
    resumed = swarm.resume(path)
    assert sorted_events(resumed).equals(sorted_events(reference))
    assert resumed.manifest["graph"]["n"] == 3000 and resumed.verify() == []
    # A directory holding only a dead run's lock file is as good as empty.
    other = tmp_path / "only-lock"
    other.mkdir()
    (other / ".lease.lock").write_text("")
    assert swarm.run(sir_config(), other, backend="local").status == "completed"
    assert swarm.run(sir_config(), path, backend="local", overwrite=True).status == "completed"


def test_analyze_replaces_its_files_whole_or_not_at_all(tmp_path, reference, full_disk):
    from swarm.analysis.report import analyze, write_report

    result = analyze(reference.path)
    out = tmp_path / "analysis"
    write_report(result, out)
    before = (out / "metrics.json").read_text()
    assert json.loads(before)["env"] == "cascade"
    full_disk(out, "metrics.json")
    with pytest.raises(StorageError, match="metrics.json: no space left on device"):
        write_report(result, out)
    assert (out / "metrics.json").read_text() == before  # not a 0-byte file
    full_disk.free()
    assert sorted(os.listdir(out)) == ["metrics.json", "report.html"]


def test_the_memory_guard_refuses_from_the_config_before_building(tmp_path, monkeypatch):
    import swarm.runner

    def never(*args, **kwargs):
        raise AssertionError("the graph was built before the memory check")

    monkeypatch.setattr(swarm.runner, "build_graph", never)
    cfg = cascade_config(graph={"kind": "erdos_renyi", "n": 500_000_000, "mean_degree": 4})
    with pytest.raises(ClusterError, match="GiB at its peak"):
        swarm.run(cfg, tmp_path / "r", backend="local")
    assert not (tmp_path / "r").exists()


def test_edge_list_ids_are_checked_before_arrays_are_sized(tmp_path, monkeypatch):
    import swarm.graph

    def never(*args, **kwargs):
        raise AssertionError("arrays were sized before the check")

    monkeypatch.setattr(swarm.graph, "from_edges", never)
    edges = tmp_path / "edges.txt"
    edges.write_text("0 1\n1 2000000000\n")  # one stray id means 2e9 agents
    cfg = cascade_config(graph={"kind": "edgelist", "path": str(edges)})
    with pytest.raises(ClusterError, match="GiB at its peak"):
        swarm.run(cfg, tmp_path / "r", backend="local")
    edges.write_text("0 1\n1 200000000000\n")
    with pytest.raises(GraphError, match="names node 200,000,000,000.*Renumber"):
        swarm.run(cfg, tmp_path / "r", backend="local")
    assert not (tmp_path / "r").exists()


def test_a_shards_storage_error_reaches_the_user_whole(tmp_path, monkeypatch):
    real_step = Shard.step

    def full(self, t, *parts, **kw):
        if t == 3:
            raise StorageError("cannot write somewhere: no space left on device")
        return real_step(self, t, *parts, **kw)

    monkeypatch.setattr(Shard, "step", full)
    with pytest.raises(StorageError) as info:
        swarm.run(sir_config(), tmp_path / "r", backend="local")
    assert str(info.value).startswith("cannot write somewhere: no space left on device; the "
                                      "run is marked failed")


def test_resume_from_a_checkpoint_at_the_quiescent_step_adds_no_step(tmp_path, full_disk):
    cfg = cascade_config(n=2000, shards=2).model_copy(
        update={"checkpoint": swarm.config.CheckpointConfig(every=1)})
    clean = swarm.run(cfg, tmp_path / "clean", backend="local")
    path = tmp_path / "r"

    def fill(row):  # every step runs; the last write, the metrics table, fails
        if row["step"] == 0:
            full_disk(path, "metrics.arrow")

    with pytest.raises(StorageError, match="metrics.arrow"):
        swarm.run(cfg, path, backend="local", on_step=fill)
    full_disk.free()
    resumed = swarm.resume(path)
    assert resumed.manifest["steps_run"] == clean.manifest["steps_run"]
    assert resumed.metrics().num_rows == clean.metrics().num_rows
    assert sorted_events(resumed).equals(sorted_events(clean))
