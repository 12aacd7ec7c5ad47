"""A worker node dies mid-run: the driver restarts its shards on a live node and finishes.

A real multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``:
a head without CPUs, so shards land on the two workers) with a fast health
check, so a removed node is declared dead in about a second.
"""

import pytest
from conftest import sorted_events
from test_checkpoint import same_metrics, sir_config

import swarm


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()  # the session's embedded Ray; later tests start a fresh one
    c = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": False,
            "object_store_memory": 200 * 1024**2,
            "_system_config": {
                "health_check_initial_delay_ms": 0,
                "health_check_period_ms": 200,
                "health_check_failure_threshold": 3,
            },
        },
    )
    workers = [c.add_node(num_cpus=1, object_store_memory=150 * 1024**2) for _ in range(2)]
    ray.init(address=c.address, logging_level="WARNING")
    c.wait_for_nodes()
    yield c, workers
    ray.shutdown()
    c.shutdown()


def test_removed_worker_node_restarts_shards_and_the_log_is_exact(cluster, tmp_path):
    c, workers = cluster
    reference = swarm.run(sir_config(), tmp_path / "ref", backend="local")
    removed = []

    def remove_a_worker(row):
        if row["step"] == 9 and not removed:
            c.remove_node(workers[1])
            removed.append(row["step"])

    run = swarm.run(sir_config(), tmp_path / "r", on_step=remove_a_worker)
    assert removed and run.status == "completed"
    assert run.manifest["restarts"] == 1
    assert sorted_events(run).equals(sorted_events(reference))
    same_metrics(run, reference)
