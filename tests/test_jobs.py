"""`swarm submit`, `swarm status`, `swarm logs` against a real local head's Jobs API.

One head with a dashboard serves every test here (it takes 5-10 s to start);
it runs as a `ray start --block` subprocess and is stopped by signalling that
process (see test_address.py, whose helper it shares), never by `ray stop`.
"""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest
from test_address import RayNode, cluster_env, sorted_events, swarm_cli


@pytest.fixture(scope="module")
def jobs_head():
    """A head with its dashboard on 127.0.0.1 and 2 CPUs: the job's 2 shards fit."""
    head = RayNode.head(num_cpus=2, dashboard=True)
    try:
        head.wait_dashboard()
        head.wait_alive_nodes(1)
        yield head
    finally:
        head.stop()
        shutil.rmtree(head.temp_dir, ignore_errors=True)


def wait_done(job_id: str, address: str, timeout: float = 90) -> str:
    from swarm.cluster.jobs import job_status

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = job_status(job_id, address=address)
        if report.done:
            return report.status
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} not done after {timeout} s")


# A job runs a driver on the head (~16 s on 2 cores). `make test` submits to a head in
# test_cluster_surface.py and keeps the error paths below.
@pytest.mark.slow
def test_submit_then_status_then_logs(jobs_head, tiny_work, tmp_path):
    import swarm

    out = tmp_path / "cluster-run"
    address = jobs_head.dashboard_url
    proc = swarm_cli("submit", "tiny.yaml", "--out", out, "--address", address,
                     "--shards", "2", "--set", "env.p=0.12", cwd=tiny_work)
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"^submitted job (\S+) to (\S+)$", proc.stdout, re.M)
    assert match and match.group(2) == address, proc.stdout
    job_id = match.group(1)
    assert f"swarm status {job_id} --address {address}" in proc.stdout

    assert wait_done(job_id, address) == "SUCCEEDED", swarm_cli(
        "logs", job_id, "--address", address).stdout
    status = swarm_cli("status", job_id, "--address", address)
    assert status.returncode == 0 and "status: SUCCEEDED" in status.stdout
    assert f"run directory: {out}" in status.stdout

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["partition"]["shards"] == 2
    assert manifest["config"]["env"]["p"] == 0.12  # the --set reached the cluster
    # The same config run here with no Ray leaves the same events.
    cfg = swarm.load_config(str(tiny_work / "tiny.yaml"), ["env.p=0.12"])
    swarm.run(cfg, str(tmp_path / "local"), backend="local", progress=False)
    assert sorted_events(out) == sorted_events(tmp_path / "local")

    # RAY_API_SERVER_ADDRESS stands in for --address.
    logs = swarm_cli("logs", job_id, env=cluster_env(RAY_API_SERVER_ADDRESS=address))
    assert logs.returncode == 0, logs.stderr
    assert f"run directory: {out}" in logs.stdout
    assert re.search(r"^steps: \d+ \(quiescent\)", logs.stdout, re.M), logs.stdout
    followed = swarm_cli("logs", job_id, "--address", address, "--follow", timeout=60)
    assert followed.returncode == 0 and f"run directory: {out}" in followed.stdout


def test_unknown_job_and_bad_input_exit_2(jobs_head, tiny_work, monkeypatch):
    from typer.testing import CliRunner

    from swarm.cli import app

    runner = CliRunner()
    address = jobs_head.dashboard_url
    result = runner.invoke(app, ["status", "no-such-job", "--address", address])
    assert result.exit_code == 2 and "no job 'no-such-job'" in result.output
    # The job sees only the uploaded folder (the current one), so the config must be in it.
    result = runner.invoke(app, ["submit", str(tiny_work / "tiny.yaml"), "--out", "/x",
                                 "--address", address])
    assert result.exit_code == 2 and "is outside the folder" in result.output
    monkeypatch.chdir(tiny_work)
    # A relative run directory would land in the job's throw-away working copy.
    result = runner.invoke(app, ["submit", "tiny.yaml", "--out", "runs/x", "--address", address])
    assert result.exit_code == 2 and "is relative" in result.output
    # A bad config fails here, before anything is uploaded.
    result = runner.invoke(app, ["submit", "tiny.yaml", "--out", "/x", "--set", "env.p=3",
                                 "--address", address])
    assert result.exit_code == 2 and "env.p" in result.output
    # The GCS port is no Jobs API.
    result = runner.invoke(app, ["status", "j", "--address", jobs_head.gcs_address])
    assert result.exit_code == 2 and "is not a Ray dashboard" in result.output


def test_submit_to_an_unreachable_address_fails_fast(tiny_work, tmp_path):
    t0 = time.monotonic()
    proc = swarm_cli("submit", "tiny.yaml", "--out", tmp_path / "r", "--address",
                     "http://127.0.0.1:1", cwd=tiny_work, timeout=60)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: nothing answers at Ray Jobs "
                                                   "address 'http://127.0.0.1:1'"), proc.stderr
    assert "--address http://HEAD:8265" in lines[0]
    assert elapsed < 20, elapsed
