import networkx as nx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from swarm import graph as G
from swarm.errors import GraphError


def edge_set(g: G.CSRGraph) -> set:
    return set(zip(g.sources().tolist(), g.indices.tolist(), strict=True))


def check_csr(g: G.CSRGraph):
    assert g.indptr[0] == 0 and g.indptr[-1] == g.num_edges
    assert np.all(np.diff(g.indptr) >= 0)
    src = g.sources()
    assert np.all(src != g.indices), "self-loop"
    key = src * g.n + g.indices
    assert np.all(np.diff(key) > 0), "rows sorted, no duplicate edges"
    if not g.directed:
        assert edge_set(g) == {(v, u) for u, v in edge_set(g)}, "undirected = both directions"


def test_from_edges_symmetrizes_and_dedupes():
    g = G.from_edges(np.array([0, 1, 1, 2, 2]), np.array([1, 2, 2, 2, 0]), n=4)
    check_csr(g)
    assert edge_set(g) == {(0, 1), (1, 0), (1, 2), (2, 1), (2, 0), (0, 2)}
    assert g.out_degree().tolist() == [2, 2, 2, 0]
    d = G.from_edges(np.array([0, 1]), np.array([1, 2]), n=3, directed=True)
    assert edge_set(d) == {(0, 1), (1, 2)}


def test_from_networkx_graph_and_digraph():
    und = nx.karate_club_graph()
    g, labels = G.from_networkx(und)
    check_csr(g)
    assert labels is None
    assert g.num_edges == 2 * und.number_of_edges()
    assert edge_set(g) == {(u, v) for u, v in und.edges()} | {(v, u) for u, v in und.edges()}
    dg = nx.DiGraph([("a", "b"), ("b", "c"), ("c", "a"), ("a", "c")])
    d, labels = G.from_networkx(dg)
    assert d.directed and d.num_edges == 4
    assert {(labels[u], labels[v]) for u, v in edge_set(d)} == set(dg.edges())
    with pytest.raises(GraphError, match="networkx"):
        G.from_networkx([(0, 1)])


def test_barabasi_albert_degrees():
    n, m = 20_000, 4
    g = G.barabasi_albert(n, m, seed=3)
    check_csr(g)
    deg = g.out_degree()
    # ~m edges per new node, both directions; a handful of repeated picks merged.
    assert abs(g.num_edges - 2 * m * (n - m - 1) - 2 * m) < 0.01 * g.num_edges
    assert deg.min() >= 1 and np.mean(deg >= m) > 0.99
    assert deg.max() > 20 * m  # heavy tail: hubs exist
    # The tail exponent of BA is 3: P(k >= 2k0) / P(k >= k0) ~ 2**-2.
    k0 = 16
    ratio = np.mean(deg >= 2 * k0) / np.mean(deg >= k0)
    assert 0.17 < ratio < 0.35
    assert np.array_equal(G.barabasi_albert(500, 2, seed=1).indices,
                          G.barabasi_albert(500, 2, seed=1).indices)


def test_erdos_renyi_watts_strogatz_sbm_configuration():
    er = G.erdos_renyi(20_000, 8.0, seed=1)
    check_csr(er)
    assert abs(er.out_degree().mean() - 8.0) < 0.15
    ws = G.watts_strogatz(10_000, 6, 0.0, seed=1)
    check_csr(ws)
    assert np.all(ws.out_degree() == 6)
    ws2 = G.watts_strogatz(10_000, 6, 0.2, seed=1)
    assert abs(ws2.out_degree().mean() - 6) < 0.05
    s = G.sbm([3000, 3000], [[0.004, 0.0002], [0.0002, 0.004]], seed=2)
    check_csr(s)
    src = s.sources()
    same = (src < 3000) == (s.indices < 3000)
    # expected within-block edges (directed): 2 * C(3000,2) * .004 * 2 blocks
    assert abs(same.sum() - 2 * 2 * 3000 * 2999 / 2 * 0.004) < 600
    assert abs((~same).sum() - 2 * 3000 * 3000 * 0.0002) < 250
    deg = np.full(5000, 3)
    deg[0] = 5
    c = G.configuration(deg, seed=0)
    check_csr(c)
    assert np.all(c.out_degree() <= deg) and c.out_degree().sum() > 0.99 * deg.sum()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: G.barabasi_albert(5, 5), "m < n"),
        (lambda: G.watts_strogatz(10, 3, 0.1), "even k"),
        (lambda: G.watts_strogatz(10, 4, 1.5), "p <= 1"),
        (lambda: G.erdos_renyi(10, 20), "mean_degree"),
        (lambda: G.sbm([5, 5], [[0.1]]), "2x2"),
        (lambda: G.sbm([5, 5], [[0.1, 0.2], [0.3, 0.1]]), "symmetric"),
        (lambda: G.configuration([1, 1, 1]), "even"),
        (lambda: G.configuration([1, -1]), ">= 0"),
        (lambda: G.from_edges(np.array([0]), np.array([7]), n=3), r"\[0, 3\)"),
    ],
)
def test_impossible_graphs_are_rejected(call, match):
    with pytest.raises(GraphError, match=match):
        call()


def test_text_edgelist(tmp_path):
    p = tmp_path / "edges.txt"
    p.write_text("# a comment\n0 1\n1 2 0.5\n\n2\t3\n")
    g = G.read_edgelist(p)
    assert edge_set(g) == {(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2)}
    d = G.read_edgelist(p, directed=True, n=10)
    assert d.n == 10 and edge_set(d) == {(0, 1), (1, 2), (2, 3)}


@pytest.mark.parametrize("bad, lineno", [("0 1\n1 x\n", 2), ("0 1\n# c\n\n7\n", 4),
                                         ("0 1\n1 2 3 4\n", 2)])
def test_malformed_text_edgelist_names_the_line(tmp_path, bad, lineno):
    p = tmp_path / "bad.txt"
    p.write_text(bad)
    with pytest.raises(GraphError, match=rf"line {lineno}: expected 'src dst'"):
        G.read_edgelist(p)


def test_parquet_edgelist(tmp_path):
    p = tmp_path / "edges.parquet"
    pq.write_table(pa.table({"src": [0, 1, 2], "dst": [1, 2, 0]}), p)
    assert edge_set(G.read_edgelist(p, directed=True)) == {(0, 1), (1, 2), (2, 0)}
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"src": ["a"], "dst": ["b"]}), bad)
    with pytest.raises(GraphError, match="integer node ids"):
        G.read_edgelist(bad)
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(GraphError, match="not a readable Parquet"):
        G.read_edgelist(junk)
    with pytest.raises(GraphError, match="not found"):
        G.read_edgelist(tmp_path / "missing.txt")


def _small_graphs():
    yield "path", nx.path_graph(40)
    yield "cycle", nx.cycle_graph(41)
    yield "tree", nx.random_labeled_tree(200, seed=3)
    yield "star", nx.star_graph(30)
    for seed in range(3):
        yield f"ws{seed}", nx.connected_watts_strogatz_graph(300, 4, 0.1, seed=seed)
        yield f"ba{seed}", nx.barabasi_albert_graph(300, 2, seed=seed)


@pytest.mark.parametrize("name,nxg", [pytest.param(name, g, id=name)
                                      for name, g in _small_graphs()])
def test_bfs_levels_and_double_sweep_bounds_match_networkx(name, nxg):
    g, labels = G.from_networkx(nxg)
    assert labels is None
    for source in (0, g.n // 2, g.n - 1):
        want = nx.single_source_shortest_path_length(nxg, source)
        got = G.bfs_levels(g.indptr, g.indices, source)
        assert got.dtype == np.int32
        assert {v: int(d) for v, d in enumerate(got)} == want
    diameter = nx.diameter(nxg)
    for start in (0, g.n // 3):
        lower, upper = G.double_sweep_diameter(g.indptr, g.indices, start=start)
        assert lower <= diameter <= upper
        if name in ("path", "tree", "star"):
            assert lower == diameter  # exact on trees


def test_bfs_on_a_disconnected_graph_stays_in_the_component():
    nxg = nx.disjoint_union(nx.path_graph(5), nx.cycle_graph(8))
    g, _ = G.from_networkx(nxg)
    dist = G.bfs_levels(g.indptr, g.indices, 0)
    assert dist.tolist() == [0, 1, 2, 3, 4] + [-1] * 8
    assert G.double_sweep_diameter(g.indptr, g.indices, start=0) == (4, 8)
    assert G.double_sweep_diameter(g.indptr, g.indices, start=5) == (4, 8)
    with pytest.raises(GraphError, match="source must be in"):
        G.bfs_levels(g.indptr, g.indices, 13)


def test_bfs_levels_follow_out_edges_of_a_directed_graph():
    g = G.from_edges(np.array([0, 1, 3]), np.array([1, 2, 2]), n=4, directed=True)
    assert G.bfs_levels(g.indptr, g.indices, 0).tolist() == [0, 1, 2, -1]
    assert G.bfs_levels(g.indptr, g.indices, 2).tolist() == [-1, -1, 0, -1]
