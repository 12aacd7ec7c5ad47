"""`swarm plan` and the memory guard plan from the config alone; `swarm graph partition`
splits an edge list into per-shard files that run as one edge list."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import cli, sorted_events

import swarm
from swarm import validate_config
from swarm.envs import ENV_REGISTRY
from swarm.errors import ClusterError
from swarm.memory import GIB, check_memory, estimate_from_config


def _write(tmp_path, raw, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


BIG = {"seed": 1, "steps": 10, "shards": 200,
       "graph": {"kind": "erdos_renyi", "n": 10**9, "mean_degree": 4},
       "env": {"kind": "cascade", "model": "independent_cascade", "p": 0.3}}


def test_plan_for_a_billion_agents_names_shards_nodes_and_traffic(tmp_path):
    out = cli("plan", _write(tmp_path, BIG), "--nodes", 100, "--node-memory", 128)
    assert out.exit_code == 0, out.stdout
    text = out.stdout
    assert "agents 1,000,000,000" in text and "graph built by the shards" in text
    assert "per shard:" in text and "B per agent" in text and "per step" in text
    assert "the cluster has 100: fits" in text
    # Too few nodes: the plan is printed and the exit code says it does not fit.
    small = cli("plan", _write(tmp_path, BIG), "--nodes", 1, "--node-memory", 128)
    assert small.exit_code == 1 and "does NOT fit" in small.stdout


def test_plan_per_shard_shrinks_with_shards_and_a_metis_partition_holds_the_graph(tmp_path):
    cfg = validate_config(BIG)
    cascade = ENV_REGISTRY["cascade"]
    many = estimate_from_config(cfg, cascade)
    few = estimate_from_config(cfg.model_copy(update={"shards": 20}), cascade)
    assert many.per_shard < few.per_shard and many.shard_local
    # The driver holds only O(shards) state when shards build their slices...
    assert many.driver < 2 * GIB
    metis = estimate_from_config(cfg.model_copy(update={"partition": "metis"}), cascade)
    # ...and the whole graph (and its build) under METIS.
    assert not metis.shard_local and metis.driver > 50 * GIB


def test_a_run_bigger_than_the_machine_is_refused_with_the_plan(tmp_path):
    cfg = validate_config({**BIG, "shards": 2})
    est = estimate_from_config(cfg, ENV_REGISTRY["cascade"])
    with pytest.raises(ClusterError, match=r"2 shards x [0-9.]+ GiB"):
        check_memory(est, available=(24 * GIB, 24 * GIB))


def test_plan_of_an_edge_list_reads_its_ids(tmp_path):
    path = tmp_path / "e.txt"
    path.write_text("0 1\n1 2\n2 3\n7 3\n")
    raw = {"graph": {"kind": "edgelist", "path": str(path)}, "env": {"kind": "cascade"}}
    out = cli("plan", _write(tmp_path, raw))
    assert out.exit_code == 0 and "agents 8, directed edges about 8" in out.stdout


def test_graph_partition_writes_shard_files_that_run_like_the_original(tmp_path):
    rng = np.random.default_rng(3)
    src, dst = rng.integers(0, 3000, 12000), rng.integers(0, 3000, 12000)
    edges = tmp_path / "edges.txt"
    edges.write_text("".join(f"{u} {v}\n" for u, v in zip(src, dst, strict=True)))
    out = cli("graph", "partition", edges, "--shards", 3, "--out", tmp_path / "parts")
    assert out.exit_code == 0, out.stdout + out.stderr
    files = sorted(p.name for p in (tmp_path / "parts").iterdir())
    assert files == ["shard=0.parquet", "shard=1.parquet", "shard=2.parquet"]
    assert sum(pq.read_metadata(tmp_path / "parts" / f).num_rows for f in files) == 24000
    again = cli("graph", "partition", edges, "--shards", 3, "--out", tmp_path / "parts")
    assert again.exit_code == 2 and "not an empty folder" in again.stderr
    (tmp_path / "a_file").write_text("keep me")
    onto_file = cli("graph", "partition", edges, "--shards", 3, "--out", tmp_path / "a_file")
    assert onto_file.exit_code == 2 and (tmp_path / "a_file").read_text() == "keep me"

    def config(graph):
        return validate_config({"seed": 2, "steps": 6, "shards": 3, "graph": graph,
                                "env": {"kind": "cascade", "model": "independent_cascade",
                                        "p": 0.2, "seed_fraction": 0.01}})

    a = swarm.run(config({"kind": "edgelist", "path": str(edges), "n": 3000}),
                  tmp_path / "a", backend="local")
    b = swarm.run(config({"kind": "edgelist", "path": str(tmp_path / "parts"),
                          "directed": True, "n": 3000}), tmp_path / "b", backend="local")
    assert a.manifest["graph"]["directed_edges"] == b.manifest["graph"]["directed_edges"]
    assert a.manifest["graph"]["built_by"] == "shards"
    assert sorted_events(a).equals(sorted_events(b))


def test_self_loops_and_repeated_edges_of_an_edge_list_are_counted(tmp_path):
    path = tmp_path / "e.txt"
    path.write_text("0 1\n1 2\n2 2\n1 0\n3 4\n3 4\n")
    cfg = validate_config({"seed": 1, "steps": 2, "shards": 2,
                           "graph": {"kind": "edgelist", "path": str(path)},
                           "env": {"kind": "cascade", "model": "independent_cascade",
                                   "p": 0.5}})
    g = swarm.run(cfg, tmp_path / "r", backend="local").manifest["graph"]
    # Undirected: each line is two directed edges. (2, 2) twice is dropped; (0, 1) and
    # (1, 0) are one edge listed twice, (3, 4) too: 4 directed repeats merge.
    assert g["self_loops_dropped"] == 2 and g["merged_edges"] == 4
    assert g["directed_edges"] == 6 and g["n"] == 5
