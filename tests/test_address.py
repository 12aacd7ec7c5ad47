"""Joining an existing cluster: `swarm run --address` / RAY_ADDRESS on a real two-node Ray.

A head and a worker node run as `ray start --block` subprocesses on 127.0.0.1,
each in its own process group and temp dir, and are stopped by signalling
those processes; never `ray stop`, which would end every Ray of this user,
the test session's own embedded Ray included. `swarm run` runs as a
subprocess because this pytest process holds an embedded Ray of its own.
test_jobs.py starts its head with the same helper.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from conftest import TINY_CONFIG

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: `ray` and `swarm` live here

def free_ports(k: int) -> list[int]:
    """k TCP ports free on 127.0.0.1 right now (held together so they differ)."""
    socks = [socket.socket() for _ in range(k)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def cluster_env(**extra: str) -> dict[str, str]:
    """The environment for Ray nodes and `swarm` subprocesses: no inherited address."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(
        RAY_AUTH_MODE="disabled",
        RAY_USAGE_STATS_ENABLED="0",
        # SIGTERM makes a node drain for up to 30 s before it exits; a test
        # node has nothing to drain.
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
        # A job's entrypoint runs `swarm` from the head's PATH.
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    env.update(extra)
    return env


class RayNode:
    """One `ray start --block` process: a head or a worker node on 127.0.0.1.

    Every port it opens is chosen free (the defaults, 6379, 8265, 10001, 52365,
    would collide with other Rays on this machine), and it writes under its
    own --temp-dir.
    """

    def __init__(self, args: list[str], temp_dir: str, log_name: str,
                 env: dict[str, str] | None = None):
        self.temp_dir = temp_dir
        self.log_path = os.path.join(temp_dir, log_name)
        agent, agent_grpc, metrics, runtime_env = free_ports(4)
        cmd = [
            str(BIN / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1",
            "--temp-dir", temp_dir, "--disable-usage-stats",
            "--object-store-memory", str(128 * 1024**2),
            "--dashboard-agent-listen-port", str(agent),
            "--dashboard-agent-grpc-port", str(agent_grpc),
            "--metrics-export-port", str(metrics),
            "--runtime-env-agent-port", str(runtime_env),
            *args,
        ]
        with open(self.log_path, "wb") as log:
            # Its own session: a stray child can be killed as one group, and a
            # Ctrl-C aimed at pytest does not reach the nodes half-way.
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         env=env or cluster_env(), start_new_session=True)

    @classmethod
    def head(cls, num_cpus: int, dashboard: bool, env: dict[str, str] | None = None) -> RayNode:
        temp_dir = tempfile.mkdtemp(prefix="swr", dir="/tmp")  # short: socket paths <= 107
        gcs, dash, client = free_ports(3)
        args = ["--head", "--port", str(gcs), "--num-cpus", str(num_cpus),
                "--ray-client-server-port", str(client)]
        if dashboard:
            args += ["--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
                     "--dashboard-port", str(dash)]
        else:
            args += ["--include-dashboard", "false"]
        node = cls(args, temp_dir, "head.log", env)
        node.gcs_address = f"127.0.0.1:{gcs}"
        node.dashboard_url = f"http://127.0.0.1:{dash}" if dashboard else None
        return node

    @classmethod
    def worker(cls, head: RayNode, num_cpus: int) -> RayNode:
        node = cls(["--address", head.gcs_address, "--num-cpus", str(num_cpus)],
                   head.temp_dir, "worker.log")
        node.gcs_address = head.gcs_address
        return node

    def log_tail(self) -> str:
        return Path(self.log_path).read_text(errors="replace")[-3000:]

    def _wait(self, ready, what: str, timeout: float = 90) -> None:
        """Poll ``ready()`` until true; fail early if `ray start` exits, late with its log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited ({self.proc.returncode}):\n"
                                   f"{self.log_tail()}")
            try:
                if ready():
                    return
            except Exception:  # not up yet
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{what} after {timeout} s:\n{self.log_tail()}")

    def wait_alive_nodes(self, count: int, timeout: float = 90) -> None:
        """Wait until the GCS lists ``count`` live nodes (the raylets have registered)."""
        self._wait(lambda: alive_nodes(self.gcs_address) >= count,
                   f"{count} Ray nodes not alive", timeout)

    def wait_dashboard(self, timeout: float = 90) -> None:
        import requests

        def answers() -> bool:
            r = requests.get(f"{self.dashboard_url}/api/version", timeout=2)
            return r.status_code == 200 and bool(r.json().get("ray_version"))

        self._wait(answers, "the dashboard did not answer", timeout)

    def stop(self) -> None:
        """SIGTERM the `ray start --block` process (it stops its node), then clean up."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        try:  # anything of this node's still alive (its group is only its own processes)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(timeout=10)


def alive_nodes(gcs_address: str) -> int:
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(gcs_address) as channel:
        reply = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetAllNodeInfo(
            gcs_service_pb2.GetAllNodeInfoRequest(), timeout=2)
    return sum(1 for n in reply.node_info_list if n.state == 0)  # 0: ALIVE


def cluster_drivers(gcs_address: str) -> list[str]:
    """The command lines of every driver that has connected to the cluster."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(gcs_address) as channel:
        reply = gcs_service_pb2_grpc.JobInfoGcsServiceStub(channel).GetAllJobInfo(
            gcs_service_pb2.GetAllJobInfoRequest(), timeout=5)
    return [j.entrypoint for j in reply.job_info_list]


def swarm_cli(*args, env: dict[str, str] | None = None, cwd: Path = ROOT,
              timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "swarm.cli", *map(str, args)],
                          capture_output=True, text=True, env=env or cluster_env(), cwd=cwd,
                          timeout=timeout)


def sorted_events(path) -> list[dict]:
    import swarm

    rows = swarm.open_run(str(path)).events().to_pylist()  # `event` is dictionary-encoded
    return sorted(rows, key=lambda r: (r["step"], r["agent"], r["event"]))


@pytest.fixture(scope="module")
def two_nodes():
    """A head (1 CPU, no dashboard) and a worker (1 CPU): two 1-CPU shards need both."""
    head = RayNode.head(num_cpus=1, dashboard=False)
    worker = None
    try:
        head.wait_alive_nodes(1)
        worker = RayNode.worker(head, num_cpus=1)
        head.wait_alive_nodes(2)
        yield head
    finally:
        for node in (worker, head):
            if node is not None:
                node.stop()
        shutil.rmtree(head.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def local_events(tmp_path_factory):
    """The tiny config's events, run in this process with no Ray: the reference."""
    import swarm

    work = tmp_path_factory.mktemp("address")
    (work / "tiny.yaml").write_text(TINY_CONFIG)
    cfg = swarm.load_config(str(work / "tiny.yaml"))
    swarm.run(cfg, str(work / "local"), backend="local", progress=False)
    events = sorted_events(work / "local")
    assert len(events) > 20  # a cascade that spread, or the comparisons below are vacuous
    return work, events


# A two-node cluster (~20 s on 2 cores). `make test` joins a running head in
# test_cluster_surface.py and runs on two nodes in test_node_failure.py.
@pytest.mark.slow
@pytest.mark.parametrize("how", ["--address", "RAY_ADDRESS"])
def test_run_joins_the_cluster_and_matches_a_local_run(two_nodes, local_events, how):
    work, reference = local_events
    out = work / f"joined-{how.strip('-')}"
    args = ["run", work / "tiny.yaml", "--out", out, "--shards", "2", "--no-progress"]
    if how == "--address":
        proc = swarm_cli(*args, "--address", two_nodes.gcs_address)
    else:
        proc = swarm_cli(*args, env=cluster_env(RAY_ADDRESS=two_nodes.gcs_address))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["partition"]["shards"] == 2
    assert manifest["address"] == two_nodes.gcs_address
    # Its driver really joined this cluster (an embedded Ray would finish too).
    assert any(str(out) in entry for entry in cluster_drivers(two_nodes.gcs_address))
    assert sorted_events(out) == reference


class _NotAGcs:
    """A TCP server on 127.0.0.1 that is not a Ray GCS: it answers like a web server,
    or (``silent``) accepts and never says a word."""

    def __init__(self, silent: bool = False):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.silent, self.held = silent, []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.silent:
                self.held.append(conn)
            else:
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                conn.close()

    def close(self):
        self.sock.close()
        for c in self.held:
            c.close()


def test_wrong_address_fails_fast_with_a_clear_message(tmp_path):
    server = _NotAGcs()
    try:
        t0 = time.monotonic()
        proc = swarm_cli("run", "examples/cascade.yaml", "--out", tmp_path / "r",
                         "--set", "graph.n=500", "--address", server.address, timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        server.close()
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert f"{server.address!r} answers but is not a Ray cluster's GCS" in lines[0]
    assert "6379" in lines[0]  # says which port is the right one
    assert elapsed < 20, elapsed  # interpreter start and imports included; ray.init took minutes
    assert not (tmp_path / "r").exists()


def test_silent_server_and_dashboard_url_are_refused_in_seconds():
    from swarm.cluster import connect
    from swarm.errors import ClusterError

    server = _NotAGcs(silent=True)
    try:
        t0 = time.monotonic()
        with pytest.raises(ClusterError, match="did not answer within 1 s"):
            connect._check_gcs(server.address, timeout=1.0)
        assert time.monotonic() - t0 < 5
    finally:
        server.close()
    with pytest.raises(ClusterError, match="swarm submit CONFIG --address http://h:8265"):
        connect._check_reachable("http://h:8265")
