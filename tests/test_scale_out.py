"""The driver never holds the graph: on a three-node cluster its memory does not grow with n,
and the shards' own slices give the events of a one-process run."""

import json
import subprocess
import sys

import pytest
from conftest import sorted_events

import swarm
from swarm import validate_config

# Three nodes and n up to 2e6: about a minute on 2 cores. `make test` keeps a multi-node
# run in tests/test_node_failure.py; `make test-slow` runs these.
pytestmark = pytest.mark.slow


def _config(n: int, shards: int, kind: str = "erdos_renyi", partition: str = "contiguous"):
    graph = ({"kind": "erdos_renyi", "n": n, "mean_degree": 6} if kind == "erdos_renyi"
             else {"kind": "barabasi_albert", "n": n, "m": 3})
    return validate_config({
        "seed": 4, "steps": 8, "shards": shards, "partition": partition, "graph": graph,
        "env": {"kind": "cascade", "model": "independent_cascade", "p": 0.1,
                "seed_fraction": 0.001},
        "checkpoint": {"every": 0},
    })


@pytest.fixture(scope="module")
def three_nodes():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()  # the session's embedded Ray; later tests start a fresh one
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "object_store_memory": 300 * 1024**2})
    for _ in range(3):
        c.add_node(num_cpus=1, object_store_memory=300 * 1024**2)
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="WARNING")
    yield c
    ray.shutdown()
    c.shutdown()


_DRIVER = """
import json, resource, sys
import ray
import swarm
from swarm import validate_config
cfg = validate_config(json.loads(sys.argv[2]))
ray.init(address=sys.argv[1], logging_level="WARNING")
run = swarm.run(cfg, sys.argv[3], address=sys.argv[1], progress=False)
print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "n": run.manifest["graph"]["n"], "built_by": run.manifest["graph"]["built_by"],
                  "edges": run.manifest["graph"]["directed_edges"]}))
"""


def test_driver_memory_does_not_grow_with_n_on_three_nodes(three_nodes, tmp_path):
    """A driver process of its own per run: its peak RSS at n=2e6 is within 100 MB of n=1e5."""
    peaks = {}
    for n in (100_000, 2_000_000):
        raw = _config(n, 3).dump()
        out = subprocess.run([sys.executable, "-c", _DRIVER, three_nodes.address,
                              json.dumps(raw), str(tmp_path / f"r{n}")],
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        report = json.loads(out.stdout.strip().splitlines()[-1])
        assert report["n"] == n and report["built_by"] == "shards"
        assert report["edges"] > 5 * n
        peaks[n] = report["peak_mib"]
    assert peaks[2_000_000] - peaks[100_000] < 100, peaks


@pytest.mark.parametrize("kind,partition", [("erdos_renyi", "contiguous"),
                                            ("barabasi_albert", "hash")])
def test_shard_built_slices_on_three_nodes_match_one_process(three_nodes, tmp_path, kind,
                                                             partition):
    ref = swarm.run(_config(20_000, 1, kind), tmp_path / "one", backend="local")
    run = swarm.run(_config(20_000, 3, kind, partition), tmp_path / "three",
                    address=three_nodes.address, progress=False)
    assert run.manifest["graph"]["directed_edges"] == ref.manifest["graph"]["directed_edges"]
    assert run.manifest["partition"]["cut_edges"] > 0
    assert sorted_events(run).equals(sorted_events(ref))
