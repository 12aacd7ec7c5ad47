"""Smoke tests of the real entry point, as a subprocess, at small n."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SWARM = [sys.executable, "-m", "swarm.cli"]


def swarm_cli(*args, check=True):
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run([*SWARM, *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"swarm {args} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def test_run_then_query_then_info(tmp_path):
    out = tmp_path / "run"
    proc = swarm_cli("run", "examples/cascade.yaml", "--out", out, "--shards", "2",
                     "--set", "graph.n=3000", "--set", "env.p=0.2")
    assert f"run directory: {out}" in proc.stdout and "quiescent" in proc.stdout
    q = swarm_cli("query", out, "SELECT count(*) AS n, count(DISTINCT agent) AS a, "
                  "min(step) AS first FROM events", "--format", "json")
    (row,) = json.loads(q.stdout)
    assert row["n"] == row["a"] > 30 and row["first"] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["graph"]["n"] == 3000 and manifest["partition"]["shards"] == 2
    q = swarm_cli("query", out, "SELECT step, events FROM metrics ORDER BY step", "-f", "csv")
    lines = q.stdout.strip().splitlines()
    assert lines[0] == '"step","events"' and len(lines) == manifest["steps_run"] + 1
    table = swarm_cli("query", out, "SELECT event, count(*) AS n FROM events GROUP BY event")
    assert "activate" in table.stdout
    info = swarm_cli("info", out)
    assert "status: completed" in info.stdout


def test_bad_input_exits_2_with_a_clear_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("graph: {kind: barabasi_albert, n: 10, m: 20}\nenv: {kind: cascade, p: 2}\n")
    proc = swarm_cli("run", bad, "--out", tmp_path / "never", check=False)
    assert proc.returncode == 2
    assert "m must be < n" in proc.stderr and "env.p" in proc.stderr
    assert not (tmp_path / "never").exists()
    proc = swarm_cli("validate", bad, check=False)
    assert proc.returncode == 2 and "env.p" in proc.stderr
    ok = swarm_cli("validate", "examples/cascade.yaml", "--set", "graph.n=500")
    assert "valid" in ok.stdout and "n: 500" in ok.stdout
    proc = swarm_cli("query", tmp_path / "nope", "SELECT 1", check=False)
    assert proc.returncode == 2 and "not found" in proc.stderr


# The run starts its Ray before it reads the edge list (6-12 s on 2 cores). `make test`
# checks the parse errors in process (test_graph.py) and exit 2 on bad input above.
@pytest.mark.slow
@pytest.mark.parametrize("bad_line", ["0 1\n2 three\n"])
def test_malformed_edgelist_through_the_cli(tmp_path, bad_line):
    edges = tmp_path / "edges.txt"
    edges.write_text(bad_line)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"graph: {{kind: edgelist, path: {edges}}}\nenv: {{kind: cascade}}\n")
    proc = swarm_cli("run", cfg, "--out", tmp_path / "r", check=False)
    assert proc.returncode == 2 and "line 2" in proc.stderr and "'2 three'" in proc.stderr
    assert not (tmp_path / "r").exists()


def test_unreachable_cluster_fails_fast(tmp_path):
    import time

    t0 = time.monotonic()
    proc = swarm_cli("run", "examples/cascade.yaml", "--out", tmp_path / "r", "--set",
                     "graph.n=500", "--address", "127.0.0.1:1", check=False)
    assert proc.returncode == 2 and "nothing answers at Ray address '127.0.0.1:1'" in proc.stderr
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "r").exists()


# Two subprocess runs with their own Ray and a 2,000-step reference (~40 s on 2 cores).
# `make test` stops and resumes in process (test_checkpoint.py: Ctrl-C, crash, restarts)
# and runs `swarm resume` as a subprocess (test_lease.py, test_failures.py).
@pytest.mark.slow
def test_ctrl_c_checkpoints_then_resume_finishes(tmp_path):
    import signal
    import time

    from conftest import sorted_events

    import swarm

    out = tmp_path / "run"
    # SIR with gamma=0 never goes quiet: the run lasts all 2,000 steps (about 1 ms each,
    # seconds in all) unless stopped, so the Ctrl-C after the first checkpoint (step 49)
    # lands mid-run with time to spare.
    args = ["run", "examples/cascade.yaml", "--out", out, "--shards", "1", "--no-progress",
            "--set", "graph.n=3000", "--set", "env.model=sir", "--set", "env.p=0.05",
            "--set", "env.beta=0.01", "--set", "env.gamma=0.0", "--set", "steps=2000",
            "--set", "checkpoint.every=50"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.Popen([*SWARM, *map(str, args)], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    manifest_path = out / "manifest.json"
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until the run is stepping (a checkpoint exists)
        if manifest_path.exists() and "checkpoint" in json.loads(manifest_path.read_text()):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert f"swarm resume {out}" in stderr
    manifest = json.loads(manifest_path.read_text())
    step = manifest["checkpoint"]["step"]
    assert manifest["status"] == "interrupted" and 49 <= step < 1999
    assert (out / "state" / f"step={step:08d}" / "shard=0.arrow").exists()
    # `swarm resume` finishes the run: the same events as a run never stopped, once each.
    done = swarm_cli("resume", out, "--no-progress")
    resumed = swarm.open_run(out)
    assert resumed.status == "completed", done.stdout
    assert resumed.manifest["resumed_from"] == step and resumed.manifest["steps_run"] == 2000
    reference = swarm.run(swarm.validate_config(resumed.manifest["config"]), tmp_path / "ref",
                          backend="local")
    assert resumed.manifest["events"] == reference.manifest["events"] > 0
    assert sorted_events(resumed).equals(sorted_events(reference)) and resumed.verify() == []
    bad = swarm_cli("resume", tmp_path / "missing", check=False)
    assert bad.returncode == 2 and "run directory not found" in bad.stderr


# Four subprocesses that load torch and a model (~30 s on 2 cores); `make test` runs
# LLM agents in process (test_policies.py, test_feed.py).
@pytest.mark.slow
def test_llm_example_runs_with_a_tiny_model_made_by_the_cli(tmp_path):
    model = tmp_path / "tiny-model"
    made = subprocess.run([sys.executable, "-m", "swarm.policies.testing", str(model)],
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0 and (model / "config.json").exists(), made.stderr
    config = tmp_path / "llm.yaml"
    config.write_text((ROOT / "examples/llm_agents.yaml").read_text()
                      .replace("runs/tiny-model", str(model)))
    proc = swarm_cli("run", config, "--out", tmp_path / "r", "--shards", "1",
                     "--set", "graph.n=300", "--set", "steps=4")
    assert "models:" in proc.stdout and "model calls" in proc.stdout
    shares = swarm_cli("query", tmp_path / "r", "SELECT count(*) AS n, count(text) AS t "
                       "FROM events", "--format", "json")
    (row,) = json.loads(shares.stdout)
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    listed = sum(rec["rows"] for rel, rec in manifest["files"].items()
                 if rel.startswith("events/"))
    assert row["n"] == manifest["events"] == listed > 0  # the query sees every listed row
    # Only journalists' shares carry a comment: some rows have text, seeds and rules none.
    assert 0 < row["t"] < row["n"]
    bad = swarm_cli("run", config, "--out", tmp_path / "r2", "--set",
                    "population.personas=missing.csv", check=False)
    assert bad.returncode == 2 and "personas: file not found: missing.csv" in bad.stderr


# Each is a subprocess with its own Ray (~13 s on 2 cores). `make test` runs every
# example in process (test_analysis_report.py) and the cascade example on the CLI above.
@pytest.mark.slow
@pytest.mark.parametrize("example", ["opinion", "games", "commons", "consensus", "feed"])
def test_each_env_example_runs_on_the_cli(tmp_path, example):
    proc = swarm_cli("run", f"examples/{example}.yaml", "--out", tmp_path / "r", "--shards",
                     "1", "--set", "steps=3", "--set", "graph.n=500")
    assert f"last step ({example})" in proc.stdout
