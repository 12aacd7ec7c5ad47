"""What a run exposes to the network, and what it leaves behind.

The embedded Ray (`swarm run` without --address) must listen on loopback
only, want a token of its own, and go when its driver goes, SIGKILL
included. Each driver here is a subprocess that starts it through
``ensure_ray``: this pytest process may hold an embedded Ray of its own.

A cluster with token authentication (a `ray start --head` subprocess with
RAY_AUTH_MODE=token, see test_address.py) must be joined with its token, and
refuse us in one clear line without it.
"""

from __future__ import annotations

import importlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from test_address import RayNode, cluster_env, swarm_cli

# Starts the embedded Ray the way `swarm run` does, puts one actor on it (a
# worker process with its own gRPC server) that starts a child process of its
# own (as a shard may), reports, then waits for stdin to close.
DRIVER = textwrap.dedent("""
    import json, os, subprocess, sys
    from swarm.cluster.connect import ensure_ray
    import ray

    ensure_ray(num_cpus=1)

    @ray.remote
    class Echo:
        def pid(self):
            return os.getpid()

        def spawn(self):
            self.child = subprocess.Popen(["sleep", "600"])
            return self.child.pid

    actor = Echo.remote()
    print(json.dumps({
        "pid": os.getpid(),
        "actor": ray.get(actor.pid.remote()),
        "actor_child": ray.get(actor.spawn.remote()),
        "gcs": ray.get_runtime_context().gcs_address,
    }), flush=True)
    sys.stdin.read()
""")


def _psutil():
    import ray  # noqa: F401  (puts the psutil that ray[default] bundles on sys.path)

    return importlib.import_module("psutil")  # after ray, or it may not be found


def process_tree(pid: int) -> list:
    psutil = _psutil()
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def listening_sockets(procs) -> set[tuple[str, str, int, str]]:
    """(kind, ip, port, process name) of every TCP listener and unconnected UDP socket."""
    psutil = _psutil()
    found = set()
    for p in procs:
        try:
            name = p.name()
            for c in p.net_connections(kind="inet"):
                if c.type == socket.SOCK_STREAM and c.status == psutil.CONN_LISTEN:
                    found.add(("tcp", c.laddr.ip, c.laddr.port, name))
                elif c.type == socket.SOCK_DGRAM and not c.raddr:
                    found.add(("udp", c.laddr.ip, c.laddr.port, name))
        except psutil.Error:  # a worker that just exited
            continue
    return found


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    return (mapped or addr).is_loopback


def gone(proc) -> bool:
    """True once ``proc`` has exited (a zombie counts: nothing of it runs or listens)."""
    psutil = _psutil()
    try:
        # is_running() first: it also says False when the pid now names another process.
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def names(procs) -> set[str]:
    found = set()
    for p in procs:
        try:
            found.add(p.name())
        except Exception:  # an idle worker that just exited
            pass
    return found


@pytest.fixture
def embedded_driver(tmp_path):
    """A driver subprocess with an embedded Ray and one actor: (Popen, report, its tree).

    RAY_AUTH_MODE=disabled in its environment, as the Makefile used to set; HOME
    is a temporary folder, so a token Ray wrote to ~/.ray would show.
    """
    env = cluster_env(HOME=str(tmp_path), RAY_AUTH_MODE="disabled")
    proc = subprocess.Popen([sys.executable, "-c", DRIVER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env, text=True)
    tree = []
    try:
        line = proc.stdout.readline()
        assert line, f"the driver exited ({proc.wait()}) before reporting"
        report = json.loads(line)
        tree = process_tree(proc.pid)
        yield proc, report, tree
    finally:
        proc.kill()
        proc.wait()
        for p in tree:  # whatever outlived the driver (the old code's agents: a minute)
            try:
                p.kill()
            except Exception:
                pass


def test_embedded_ray_listens_on_loopback_only_and_wants_a_token(embedded_driver, tmp_path):
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    proc, report, tree = embedded_driver
    assert {"gcs_server", "raylet"} <= names(tree)
    assert report["actor"] in {p.pid for p in tree}
    # Agents open their ports a moment after they start: look for a few seconds.
    sockets = set()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        sockets |= listening_sockets(process_tree(proc.pid))
        time.sleep(0.5)
    owners = {name for _, _, _, name in sockets}
    assert {"gcs_server", "raylet"} <= owners, sockets  # or the scan saw nothing
    outside = sorted(s for s in sockets if not is_loopback(s[1]))
    assert not outside, f"listening beyond loopback: {outside}"

    # Its GCS wants a token, although RAY_AUTH_MODE=disabled was in the environment.
    with grpc.insecure_channel(report["gcs"]) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetClusterId(gcs_service_pb2.GetClusterIdRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert not (tmp_path / ".ray").exists()  # the token went into no file
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0


def test_killing_the_driver_ends_every_ray_process_within_seconds(embedded_driver):
    proc, report, tree = embedded_driver
    # The agents the raylet starts outlived a killed driver by a minute. A
    # worker's own child must go too.
    assert {"ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names(tree), names(tree)
    assert {report["actor"], report["actor_child"]} <= {p.pid for p in tree}
    os.kill(proc.pid, signal.SIGKILL)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10 and not all(gone(p) for p in tree):
        time.sleep(0.1)
    left = [(p.pid, p.name()) for p in tree if not gone(p)]
    assert not left, f"still running 10 s after the driver was killed: {left}"


# --- a cluster with token authentication -------------------------------------------------


def _auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
def token_head():
    """A head with RAY_AUTH_MODE=token, its dashboard on 127.0.0.1, 1 CPU; yields (head, token)."""
    import grpc
    import requests
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    token = secrets.token_hex(32)
    head = RayNode.head(num_cpus=1, dashboard=True,
                        env=cluster_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token))

    def alive() -> bool:
        with grpc.insecure_channel(head.gcs_address) as channel:
            reply = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetAllNodeInfo(
                gcs_service_pb2.GetAllNodeInfoRequest(), timeout=2, metadata=_auth(token))
        return any(n.state == 0 for n in reply.node_info_list)

    def dashboard() -> bool:
        r = requests.get(f"{head.dashboard_url}/api/version", timeout=2,
                         headers=dict(_auth(token)))
        return r.status_code == 200

    try:
        head._wait(alive, "the token head's node is not alive")
        head._wait(dashboard, "the token head's dashboard did not answer")
        yield head, token
    finally:
        head.stop()
        shutil.rmtree(head.temp_dir, ignore_errors=True)


def no_token_env(tmp_path, **extra):
    """A client environment with no token anywhere Ray looks (HOME: no ~/.ray/auth_token)."""
    env = cluster_env(HOME=str(tmp_path), **extra)
    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        if key not in extra:
            env.pop(key, None)
    return env


@pytest.mark.parametrize("case,expected", [
    # Unset takes the same path: Ray sends no token unless RAY_AUTH_MODE=token.
    ("disabled", "requires a token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN"),
    ("wrong", "refused the token from RAY_AUTH_TOKEN"),
    ("mode only", "RAY_AUTH_MODE=token but no token is set"),
])
def test_joining_a_token_cluster_without_its_token_fails_in_one_line(
        token_head, tiny_work, tmp_path, case, expected):
    head, _ = token_head
    extra = {"disabled": {"RAY_AUTH_MODE": "disabled"},
             "wrong": {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64},
             "mode only": {"RAY_AUTH_MODE": "token"}}[case]
    t0 = time.monotonic()
    proc = swarm_cli("run", "tiny.yaml", "--out", tmp_path / "r", "--address",
                     head.gcs_address, env=no_token_env(tmp_path, **extra), cwd=tiny_work,
                     timeout=120)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert expected in lines[0], lines[0]
    assert elapsed < 30, elapsed  # interpreter start and imports included
    assert not (tmp_path / "r").exists()


def test_run_joins_a_token_cluster_with_its_token(token_head, tiny_work, tmp_path):
    head, token = token_head
    out = tmp_path / "joined"
    proc = swarm_cli("run", "tiny.yaml", "--out", out, "--shards", "1", "--no-progress",
                     "--address", head.gcs_address, cwd=tiny_work,
                     env=no_token_env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["address"] == head.gcs_address


def submit_with_token(head, token, tiny_work, tmp_path, out) -> str:
    """`swarm submit` the tiny config with the cluster's token; returns the job id."""
    proc = swarm_cli("submit", "tiny.yaml", "--out", out, "--address", head.dashboard_url,
                     "--shards", "1", cwd=tiny_work,
                     env=no_token_env(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token))
    assert proc.returncode == 0, proc.stderr
    return re.search(r"^submitted job (\S+) to ", proc.stdout, re.M).group(1)


def test_submit_needs_the_token_of_a_token_cluster(token_head, tiny_work, tmp_path):
    head, token = token_head
    refused = swarm_cli("submit", "tiny.yaml", "--out", tmp_path / "job", "--address",
                        head.dashboard_url, env=no_token_env(tmp_path), cwd=tiny_work)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "requires a token: set RAY_AUTH_MODE=token" in lines[0], lines
    job_id = submit_with_token(head, token, tiny_work, tmp_path, tmp_path / "job")
    from ray.job_submission import JobSubmissionClient

    # Accepted is all this test asks; the head's one CPU is for the next test.
    JobSubmissionClient(head.dashboard_url, headers=dict(_auth(token))).stop_job(job_id)


@pytest.mark.slow  # 13-18 s more on 2 cores: the job starts a driver on the head
def test_a_job_on_a_token_cluster_joins_it_and_finishes(token_head, tiny_work, tmp_path):
    from ray.job_submission import JobSubmissionClient

    head, token = token_head
    job_id = submit_with_token(head, token, tiny_work, tmp_path, tmp_path / "job")
    client = JobSubmissionClient(head.dashboard_url, headers=dict(_auth(token)))
    deadline = time.monotonic() + 120
    while not client.get_job_status(job_id).is_terminal():
        assert time.monotonic() < deadline, client.get_job_logs(job_id)
        time.sleep(1)
    # The job's own `swarm run` joined the cluster with the token the head runs with.
    assert client.get_job_status(job_id).value == "SUCCEEDED", client.get_job_logs(job_id)
    assert json.loads((tmp_path / "job" / "manifest.json").read_text())["status"] == "completed"
