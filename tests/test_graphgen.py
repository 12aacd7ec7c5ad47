"""Shard-local graphs: the same graph for any shard count, the right degree distributions,
edge lists read in parts, and sizes named by row group or line."""

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from swarm import validate_config
from swarm.errors import GraphError
from swarm.graph import read_edgelist
from swarm.graphgen import binomial_quantile, edge_key, graph_size, whole_graph
from swarm.partition import Partition
from swarm.shardgraph import GraphSource, SliceBuilder

GRAPHS = {
    "erdos_renyi": {"kind": "erdos_renyi", "n": 300_000, "mean_degree": 4},
    "sbm": {"kind": "sbm", "sizes": [150_000, 20_000, 100_000],
            "p": [[2e-5, 1e-6, 0], [1e-6, 4e-4, 2e-6], [0, 2e-6, 3e-5]]},
    "watts_strogatz": {"kind": "watts_strogatz", "n": 50_000, "k": 6, "p": 0.2},
    "barabasi_albert": {"kind": "barabasi_albert", "n": 50_000, "m": 3},
    "configuration": {"kind": "configuration", "degrees": [1, 2, 3, 4] * 2500},
    "delaunay": {"kind": "delaunay", "n": 20_000},
}


def _gc(raw):
    return validate_config({"graph": raw, "env": {"kind": "cascade"}}).graph


def _slices(gc, k, kind="contiguous", seed=11):
    """Every shard's rows built by SliceBuilder (draw, exchange, assemble), as (src, dst)."""
    n = graph_size(gc) if gc.kind != "edgelist" else gc.n
    part = Partition(kind, n, k)
    builders = [SliceBuilder(GraphSource(n, directed=getattr(gc, "directed", False), config=gc,
                                         seed=seed), j, part, part.agents_of(j))
                for j in range(k)]
    drawn = [b.draw() for b in builders]
    for j, b in enumerate(builders):
        b.assemble(*[drawn[i][j] for i in range(k) if i != j])
    src = np.concatenate([np.repeat(b.agents, np.diff(b.indptr)) for b in builders])
    dst = np.concatenate([b.indices.astype(np.int64) for b in builders])
    order = np.lexsort((dst, src))
    return n, src[order], dst[order]


# ER and SBM at 270,000-300,000 agents take seconds: `make check` keeps the other three.
@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.integration) if name in ("erdos_renyi", "sbm") else name
    for name in sorted(GRAPHS)])
def test_same_graph_for_one_two_three_shards_and_any_partition(name):
    gc = _gc(GRAPHS[name])
    whole = whole_graph(gc, 11)
    want = (whole.sources(), whole.indices)
    for k, kind in ((1, "contiguous"), (2, "contiguous"), (3, "contiguous"), (3, "hash")):
        n, src, dst = _slices(gc, k, kind)
        assert n == whole.n
        assert np.array_equal(src, want[0]) and np.array_equal(dst, want[1]), (k, kind)
    # Undirected and simple: every edge has its reverse; no loops.
    assert not (want[0] == want[1]).any()
    fwd = np.sort(want[0] * whole.n + want[1])
    assert np.array_equal(fwd, np.sort(want[1] * whole.n + want[0]))


def test_seed_changes_the_graph():
    gc = _gc(GRAPHS["erdos_renyi"])
    assert not np.array_equal(whole_graph(gc, 1).indices[:1000], whole_graph(gc, 2).indices[:1000])


def test_erdos_renyi_degrees_follow_the_binomial():
    n, c = 300_000, 4.0
    g = whole_graph(_gc({"kind": "erdos_renyi", "n": n, "mean_degree": c}), 3)
    # Edge count: Binomial(n(n-1)/2, p); within 5 standard deviations.
    pairs, p = n * (n - 1) / 2, c / (n - 1)
    assert abs(g.num_edges / 2 - pairs * p) < 5 * math.sqrt(pairs * p)
    deg = g.out_degree()
    counts = np.bincount(deg, minlength=15)[:15]
    from scipy.stats import binom

    expect = n * binom.pmf(np.arange(15), n - 1, p)
    # Each degree class within 5 sigma of its expected count (where it is not tiny).
    big = expect > 50
    assert (np.abs(counts[big] - expect[big]) < 5 * np.sqrt(expect[big])).all()


def test_barabasi_albert_degrees_follow_the_closed_form():
    n, m = 200_000, 3
    g = whole_graph(_gc({"kind": "barabasi_albert", "n": n, "m": m}), 5)
    deg = g.out_degree()
    assert deg.min() >= 1 and abs(deg.mean() - 2 * m) < 0.01 * 2 * m
    # P(k) = 2m(m+1) / (k(k+1)(k+2)) for k >= m (Bollobás et al.); compare k = m..m+6.
    ks = np.arange(m, m + 7)
    pk = 2 * m * (m + 1) / (ks * (ks + 1) * (ks + 2))
    got = np.array([(deg == k).mean() for k in ks])
    assert np.all(np.abs(got - pk) < 0.1 * pk), (got, pk)
    # A heavy tail: the largest degree is of order sqrt(n).
    assert deg.max() > 0.3 * m * math.sqrt(n)


def test_watts_strogatz_ring_and_rewiring():
    ring = whole_graph(_gc({"kind": "watts_strogatz", "n": 1000, "k": 4, "p": 0.0}), 1)
    assert (ring.out_degree() == 4).all()
    assert sorted(ring.indices[ring.indptr[0]:ring.indptr[1]].tolist()) == [1, 2, 998, 999]
    g = whole_graph(_gc({"kind": "watts_strogatz", "n": 100_000, "k": 6, "p": 0.3}), 1)
    src, dst = g.sources(), g.indices
    gap = np.minimum((dst - src) % g.n, (src - dst) % g.n)
    far = (gap > 3).mean()  # rewired edges (both directions) leave the ring
    assert abs(far - 0.3) < 0.01
    assert abs(g.out_degree().mean() - 6) < 0.01


def test_sbm_block_edge_counts():
    sizes = [40_000, 60_000]
    p = [[1e-4, 5e-6], [5e-6, 2e-4]]
    g = whole_graph(_gc({"kind": "sbm", "sizes": sizes, "p": p}), 9)
    src, dst = g.sources(), g.indices
    block = lambda x: (x >= sizes[0]).astype(int)  # noqa: E731
    for a in range(2):
        for b in range(2):
            got = int(((block(src) == a) & (block(dst) == b)).sum())
            pairs = sizes[a] * (sizes[a] - 1) if a == b else sizes[a] * sizes[b]
            mean = pairs * p[a][b]  # directed edges (both directions of each pair)
            assert abs(got - mean) < 5 * math.sqrt(2 * mean), (a, b, got, mean)


def test_configuration_keeps_the_degrees_up_to_merged_edges():
    degrees = np.array([1, 2, 3, 4] * 2500)
    g = whole_graph(_gc({"kind": "configuration", "degrees": degrees.tolist()}), 4)
    deg = g.out_degree()
    assert (deg <= degrees).all()
    assert deg.sum() > 0.99 * degrees.sum()


def test_binomial_quantile_matches_scipy():
    from scipy.stats import binom

    rng = np.random.default_rng(0)
    u = rng.random(3000)
    for trials, p in ((1.7e10, 4e-8), (100, 0.3), (45, 0.5), (7, 0.999), (1e12, 3e-9)):
        t = np.full(u.shape, trials)
        pp = np.full(u.shape, p)
        assert np.array_equal(binomial_quantile(u, t, pp), binom.ppf(u, t, pp).astype(np.int64))


def test_edge_key_is_a_function_of_the_two_ends():
    src = np.array([0, 0, 5, 5, 2**40])
    dst = np.array([1, 2, 1, 2, 7])
    keys = edge_key(src, dst)
    assert len(set(keys.tolist())) == 5
    # The same key whatever the ids' dtype (int32 CSR indices, int64 agent ids).
    assert np.array_equal(keys[:4], edge_key(src[:4], dst[:4].astype(np.int32)))
    assert edge_key(np.array([3]), np.array([4]))[0] != edge_key(np.array([4]), np.array([3]))[0]


# --- edge lists -------------------------------------------------------------------


def _random_edges(n=5000, m=20000, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, m), rng.integers(0, n, m)


@pytest.mark.parametrize("directed", [False, True])
def test_parquet_edge_list_read_in_parts_equals_one_read(tmp_path, directed):
    src, dst = _random_edges()
    path = tmp_path / "edges.parquet"
    pq.write_table(pa.table({"src": src, "dst": dst}), path, row_group_size=1500)
    one = read_edgelist(path, directed=directed, n=5000)
    gc = _gc({"kind": "edgelist", "path": str(path), "directed": directed, "n": 5000})
    for k in (1, 2, 3):
        n, s, d = _slices(gc, k)
        assert np.array_equal(s, one.sources()) and np.array_equal(d, one.indices), k


def test_text_edge_list_read_in_byte_ranges_equals_one_read(tmp_path):
    src, dst = _random_edges(m=5000)
    path = tmp_path / "edges.txt"
    lines = ["# a comment"] + [f"{u} {v}" for u, v in zip(src, dst, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    one = read_edgelist(path, n=5000)
    gc = _gc({"kind": "edgelist", "path": str(path), "n": 5000})
    for k in (2, 3, 7):
        n, s, d = _slices(gc, k)
        assert np.array_equal(s, one.sources()) and np.array_equal(d, one.indices), k


def test_edge_list_id_beyond_n_is_named_by_row_group(tmp_path):
    src, dst = _random_edges(n=100, m=1000)
    dst[700] = 250
    path = tmp_path / "edges.parquet"
    pq.write_table(pa.table({"src": src, "dst": dst}), path, row_group_size=300)
    gc = _gc({"kind": "edgelist", "path": str(path), "n": 100})
    with pytest.raises(GraphError, match=r"row group 2: node id 250 is outside \[0, 100\)"):
        _slices(gc, 2)


def test_edge_list_bad_line_is_named(tmp_path):
    path = tmp_path / "edges.txt"
    path.write_text("0 1\n1 2\n2 x\n3 4\n")
    gc = _gc({"kind": "edgelist", "path": str(path), "n": 10})
    with pytest.raises(GraphError, match=r"line 3: expected 'src dst'"):
        _slices(gc, 2)


def test_partition_edgelist_writes_one_file_per_shard(tmp_path):
    from swarm.edgelist import partition_edgelist

    src, dst = _random_edges()
    path = tmp_path / "edges.parquet"
    pq.write_table(pa.table({"src": src, "dst": dst}), path, row_group_size=4000)
    report = partition_edgelist(str(path), 3, str(tmp_path / "parts"))
    assert sum(report["directed_edges_per_shard"]) == 2 * src.shape[0]
    bounds = (np.arange(4) * report["n"]) // 3
    for k in range(3):
        t = pq.read_table(tmp_path / "parts" / f"shard={k}.parquet")
        s = t.column("src").to_numpy()
        assert ((s >= bounds[k]) & (s < bounds[k + 1])).all()
    # The folder is itself an edge list: the same graph as the original file.
    gc = _gc({"kind": "edgelist", "path": str(tmp_path / "parts"), "directed": True})
    n, s, d = _slices(gc.model_copy(update={"n": report["n"]}), 2)
    one = read_edgelist(path, n=report["n"])
    assert np.array_equal(s, one.sources()) and np.array_equal(d, one.indices)
