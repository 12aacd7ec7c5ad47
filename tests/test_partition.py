"""Partitions: graph-aware kinds cut fewer edges, stay balanced, repeat, and never change events."""

import sys
import typing
import warnings

import numpy as np
import pytest
from conftest import cascade_config, sorted_events

import swarm
from swarm.config import RunConfig
from swarm.errors import ConfigError
from swarm.graph import barabasi_albert, erdos_renyi, from_edges, watts_strogatz
from swarm.partition import PARTITION_KINDS, Partition


@pytest.fixture(scope="module")
def ba():
    return barabasi_albert(20_000, 5, seed=1)


def cut(part, graph):
    return part.stats(graph)["edge_cut_fraction"]


def assert_valid_and_balanced(part, graph, tol=0.05):
    owner = part.shard_of(np.arange(graph.n))
    assert owner.min() >= 0 and owner.max() < part.num_shards
    sizes = np.bincount(owner, minlength=part.num_shards)
    even = graph.n / part.num_shards
    assert np.all(np.abs(sizes - even) <= tol * even), sizes
    ids = [part.agents_of(k) for k in range(part.num_shards)]
    assert all(np.all(np.diff(a) > 0) for a in ids), "agents_of is sorted"
    assert np.array_equal(np.sort(np.concatenate(ids)), np.arange(graph.n))


def test_kinds_match_the_config_field():
    assert typing.get_args(RunConfig.model_fields["partition"].annotation) == PARTITION_KINDS


@pytest.mark.parametrize("k", [2, 4])
def test_metis_cuts_far_fewer_edges_than_hash(ba, k):
    hash_cut = cut(Partition("hash", ba.n, k), ba)
    part = Partition("metis", ba.n, k, graph=ba, seed=3)
    assert part.kind == "metis" and part.contiguous_start(0) is None
    assert_valid_and_balanced(part, ba)
    # BA is an expander: no balanced cut is small. The best METIS finds (even
    # with ncuts=20) is ~0.59x hash's cut for 2 shards and ~0.63x for 4.
    assert cut(part, ba) <= 0.7 * hash_cut
    # Where the graph has locality, the cut is a small fraction of hash's.
    ws = watts_strogatz(20_000, 10, 0.05, seed=1)
    ws_hash_cut = cut(Partition("hash", ws.n, k), ws)
    assert cut(Partition("metis", ws.n, k, graph=ws), ws) <= 0.5 * ws_hash_cut


def test_graph_partitions_repeat_and_use_a_small_dtype(ba):
    for kind in ("metis", "label_propagation"):
        a = Partition(kind, ba.n, 4, graph=ba, seed=7).shard_of(np.arange(ba.n))
        b = Partition(kind, ba.n, 4, graph=ba, seed=7).shard_of(np.arange(ba.n))
        assert np.array_equal(a, b), kind
        assert a.dtype == np.int8, "one byte per agent"


def test_one_shard_needs_no_metis(ba, monkeypatch):
    import pymetis

    def boom(*args, **kwargs):
        raise AssertionError("METIS called for one shard")

    monkeypatch.setattr(pymetis, "part_graph", boom)
    part = Partition("metis", ba.n, 1, graph=ba)
    assert part.agents_of(0).size == ba.n and cut(part, ba) == 0.0


@pytest.mark.parametrize("k", [2, 4])
def test_without_pymetis_metis_warns_and_falls_back_to_label_propagation(ba, k, monkeypatch):
    monkeypatch.setitem(sys.modules, "pymetis", None)
    with pytest.warns(UserWarning, match="pip install pymetis"):
        part = Partition("metis", ba.n, k, graph=ba)
    assert part.kind == "label_propagation"
    assert_valid_and_balanced(part, ba, tol=0.001)
    # measured ~0.67x hash's cut (METIS ~0.6x) on this graph
    assert cut(part, ba) <= 0.75 * cut(Partition("hash", ba.n, k), ba)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        named = Partition("label_propagation", ba.n, k, graph=ba)
    assert np.array_equal(named.shard_of(np.arange(ba.n)), part.shard_of(np.arange(ba.n)))


@pytest.mark.parametrize("kind", ["metis", "label_propagation"])
def test_directed_and_disconnected_graphs(kind):
    # A DAG (each BA edge kept one way) and a graph of many small components
    # with isolated agents: both are partitioned over their undirected edges.
    ba = barabasi_albert(6000, 4, seed=2)
    src = ba.sources()
    down = src > ba.indices
    dag = from_edges(src[down], ba.indices[down], ba.n, directed=True)
    sparse = erdos_renyi(6000, 0.8, seed=2)
    assert np.count_nonzero(sparse.out_degree() == 0) > 1000
    for g in (dag, sparse):
        part = Partition(kind, g.n, 3, graph=g, seed=1)
        assert_valid_and_balanced(part, g)
        stats = part.stats(g)
        assert sum(stats["edges_per_shard"]) == g.num_edges
        assert stats["edge_cut_fraction"] < 0.7 * cut(Partition("hash", g.n, 3), g)


def test_events_are_identical_under_every_partition(tmp_path):
    base = cascade_config(n=3000, shards=3)
    runs = {kind: swarm.run(base.model_copy(update={"partition": kind}), tmp_path / kind,
                            backend="local")
            for kind in PARTITION_KINDS}
    reference = sorted_events(runs["contiguous"])
    assert reference.num_rows > 100
    for kind, run in runs.items():
        assert sorted_events(run).equals(reference), kind
        assert run.manifest["partition"]["kind"] == kind
    cuts = {kind: run.manifest["partition"]["edge_cut_fraction"] for kind, run in runs.items()}
    assert cuts["metis"] < cuts["label_propagation"] < cuts["contiguous"] < cuts["hash"], cuts


def test_manifest_names_the_kind_the_cut_and_the_time(tmp_path):
    cfg = cascade_config(n=2000, shards=2).model_copy(update={"partition": "metis"})
    stats = swarm.run(cfg, tmp_path / "m", backend="local").manifest["partition"]
    assert stats["kind"] == "metis" and stats["shards"] == 2
    assert 0 < stats["edge_cut_fraction"] < 0.5 and stats["cut_edges"] > 0
    assert stats["build_seconds"] >= 0


def test_unknown_kinds_and_a_missing_graph_say_what_is_allowed(ba):
    raw = cascade_config().dump()
    raw["partition"] = "spectral"
    with pytest.raises(ConfigError) as info:
        swarm.validate_config(raw)
    for name in PARTITION_KINDS:
        assert repr(name) in str(info.value)
    with pytest.raises(ConfigError, match="'label_propagation'"):
        Partition("spectral", ba.n, 2)
    with pytest.raises(ConfigError, match="graph=g"):
        Partition("metis", ba.n, 2)
