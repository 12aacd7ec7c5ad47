"""The ``delaunay`` graph kind: scipy's triangulation of keyed points, the same for any
cut of the id range into parts, checked against scipy and the planar edge count."""

import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import Delaunay

import swarm
from swarm import graph as G
from swarm.config import MAX_DELAUNAY_AGENTS
from swarm.errors import ConfigError, GraphError
from swarm.graphgen import generate, generation_ranges, whole_graph
from swarm.memory import expected_edges
from swarm.rng import KeyedRNG

N, SEED = 2000, 7


def _gc(n=N):
    return swarm.validate_config({"graph": {"kind": "delaunay", "n": n},
                                  "env": {"kind": "cascade"}}).graph


def _keys(src, dst, n):
    return np.sort(np.asarray(src, np.int64) * n + np.asarray(dst, np.int64))


def _sliced(gc, seed, parts):
    """Every part's draws over its range of ``generation_ranges``, joined, as sorted keys."""
    bounds = generation_ranges(gc.n, parts)
    src, dst = [], []
    for j in range(parts):
        for s, d in generate(gc, seed, int(bounds[j]), int(bounds[j + 1]), j, parts).loose:
            src.append(s)
            dst.append(d)
    return _keys(np.concatenate(src), np.concatenate(dst), gc.n)


def test_edges_are_scipys_triangulation_of_the_keyed_points():
    g = whole_graph(_gc(), SEED)
    rng = KeyedRNG(SEED)
    ids = np.arange(N, dtype=np.int64)
    tri = Delaunay(np.column_stack([rng.uniform("graph.delaunay.x", ids),
                                    rng.uniform("graph.delaunay.y", ids)]))
    s = tri.simplices.astype(np.int64)
    a, b = s.ravel(), s[:, [1, 2, 0]].ravel()
    want = np.unique(np.concatenate([a * N + b, b * N + a]))
    assert np.array_equal(g.sources() * N + g.indices, want)


def test_edge_count_is_planar_connected_and_symmetric():
    g = whole_graph(_gc(), SEED)
    edges = g.num_edges // 2
    assert 2.9 * N < edges <= 3 * N - 6
    src = g.sources()
    assert not (src == g.indices).any()
    assert np.array_equal(_keys(src, g.indices, N), _keys(g.indices, src, N))
    adj = csr_matrix((np.ones(g.num_edges), g.indices, g.indptr), shape=(N, N))
    assert connected_components(adj, directed=False)[0] == 1
    assert g.out_degree().min() >= 2


@pytest.mark.parametrize("parts", [2, 3, 7])
def test_same_graph_from_one_part_and_from_several(parts):
    gc = _gc()
    one = _sliced(gc, SEED, 1)
    assert np.array_equal(_sliced(gc, SEED, parts), one)
    assert np.all(np.diff(one) > 0), "each part's edges are merged once"
    g = whole_graph(gc, SEED)
    assert np.array_equal(one, g.sources() * N + g.indices)


def test_same_seed_same_graph_other_seed_other_graph():
    gc = _gc()
    a, b, c = whole_graph(gc, SEED), whole_graph(gc, SEED), whole_graph(gc, SEED + 1)
    assert np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices[:500], c.indices[:500])
    assert np.array_equal(G.delaunay(N, seed=SEED).indices, a.indices)


@pytest.mark.parametrize("n", [2, MAX_DELAUNAY_AGENTS + 1])
def test_n_out_of_range_is_a_one_line_error_naming_graph_n(n):
    with pytest.raises(ConfigError) as err:
        _gc(n)
    header, *problems = str(err.value).splitlines()
    assert header == "invalid config:"
    assert len(problems) == 1 and problems[0].strip().startswith("graph.n: "), problems
    with pytest.raises(GraphError, match="n >= 3"):
        G.delaunay(2)


def test_memory_estimate_counts_a_whole_triangulation_per_shard():
    from swarm.envs import ENV_REGISTRY
    from swarm.memory import DELAUNAY_BUILD_BYTES_PER_POINT, estimate_from_config

    n = 1_000_000
    cfgs = [swarm.validate_config({"graph": graph, "env": {"kind": "cascade"}, "shards": 4})
            for graph in ({"kind": "delaunay", "n": n},
                          {"kind": "watts_strogatz", "n": n, "k": 6, "p": 0.0})]
    assert expected_edges(cfgs[0].graph) == (n, 6 * n)
    dt, ws = (estimate_from_config(c, ENV_REGISTRY["cascade"]) for c in cfgs)
    assert dt.per_shard - ws.per_shard >= DELAUNAY_BUILD_BYTES_PER_POINT * n
    assert dt.object_store == 0  # every shard keeps its own sources' edges: nothing travels
