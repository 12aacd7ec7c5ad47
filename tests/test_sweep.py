"""Sweeps: a grid of config values, one run per point, failures reported not fatal."""

from __future__ import annotations

import pyarrow as pa
import pytest
from test_cli import swarm_cli

from swarm.errors import ConfigError
from swarm.sweep import parse_grid, sweep

BASE = {"seed": 2, "steps": 40, "graph": {"kind": "barabasi_albert", "n": 800, "m": 3},
        "env": {"kind": "cascade", "p": 0.05, "seed_count": 5}, "checkpoint": {"every": 0}}


def test_grid_points_run_as_ray_tasks_and_a_bad_point_is_reported(ray_session, tmp_path):
    grid = parse_grid(["env.p=0.02,0.3,2.0", "seed=1,2"])
    index = sweep(BASE, grid, tmp_path / "s")
    assert index.num_rows == 6
    rows = index.to_pylist()
    assert [(r["env.p"], r["seed"]) for r in rows] == [
        ("0.02", "1"), ("0.02", "2"), ("0.3", "1"), ("0.3", "2"), ("2.0", "1"), ("2.0", "2")]
    bad = [r for r in rows if r["env.p"] == "2.0"]
    assert all(r["status"] == "failed" and "env.p" in r["error"] for r in bad)
    good = [r for r in rows if r["status"] == "completed"]
    assert len(good) == 4
    low = sum(r["final_ever_active"] for r in good if r["env.p"] == "0.02")
    high = sum(r["final_ever_active"] for r in good if r["env.p"] == "0.3")
    assert high > 2 * low  # the swept value reached the runs
    stored = pa.ipc.open_file(tmp_path / "s" / "index.arrow").read_all()
    assert stored.equals(index)
    assert (tmp_path / "s" / "point-002" / "manifest.json").exists()
    with pytest.raises(ConfigError, match="already holds files"):
        sweep(BASE, grid, tmp_path / "s", backend="local")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("not a sweep")
    with pytest.raises(ConfigError, match="only replaces a directory that holds a swarm sweep"):
        sweep(BASE, grid, tmp_path / "mine", backend="local", overwrite=True)
    assert (tmp_path / "mine" / "thesis.tex").exists()
    again = sweep(BASE, {"seed": [7]}, tmp_path / "s", backend="local", overwrite=True)
    assert again.num_rows == 1 and not (tmp_path / "s" / "point-002").exists()


def test_grid_parsing_errors_are_clear():
    with pytest.raises(ConfigError, match="dotted.key=v1,v2"):
        parse_grid(["env.p"])
    with pytest.raises(ConfigError, match="twice"):
        parse_grid(["seed=1", "seed=2"])


@pytest.mark.integration  # `swarm sweep` as a subprocess
def test_sweep_cli_runs_points_locally_and_exits_1_on_a_failed_point(tmp_path):
    proc = swarm_cli("sweep", "examples/cascade.yaml", "--grid", "env.p=0.1,1.5", "--set",
                     "graph.n=2000", "--out", tmp_path / "s", "--local", check=False)
    assert proc.returncode == 1, proc.stderr
    assert "point   0 [env.p=0.1]: completed" in proc.stdout
    assert "point   1 [env.p=1.5]: failed" in proc.stdout and "2 points, 1 failed" in proc.stdout


def test_an_interrupted_sweep_keeps_the_points_it_finished(tmp_path):
    import json

    def stop_after_first(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sweep(BASE, {"seed": [1, 2, 3]}, tmp_path / "s", backend="local",
              on_point=stop_after_first)
    index = pa.ipc.open_file(tmp_path / "s" / "index.arrow").read_all()
    assert index["status"].to_pylist() == ["completed", "pending", "pending"]
    assert json.loads((tmp_path / "s" / "sweep.json").read_text())["status"] == "interrupted"
