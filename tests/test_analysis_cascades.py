"""Cascade trees: closed forms of structural virality, and trees read from engine runs."""

from __future__ import annotations

import math

import networkx as nx
import numpy as np
import pytest
from conftest import cascade_config

import swarm
from swarm.analysis.cascades import cascade_table, cascades


def star(n: int, offset: int = 0):
    node = np.arange(n) + offset
    parent = np.where(node == offset, -1, offset)
    return node, parent, np.full(n, offset), np.r_[0, np.ones(n - 1, np.int64)]


def path(n: int, offset: int = 0):
    node = np.arange(n) + offset
    parent = np.r_[-1, node[:-1]]
    return node, parent, np.full(n, offset), np.arange(n)


@pytest.mark.parametrize("n", [2, 3, 10, 257])
def test_structural_virality_of_a_star_and_a_path_is_exact(n):
    parts = [star(n), path(n, offset=10_000)]
    cols = [np.concatenate(c) for c in zip(*parts, strict=True)]
    t = cascade_table(*cols)
    v = t.column("structural_virality").to_pylist()
    assert v[0] == pytest.approx(2 * (n - 1) / n, rel=1e-12)
    assert v[1] == pytest.approx((n + 1) / 3, rel=1e-12)
    assert t.column("depth").to_pylist() == [1 if n > 1 else 0, n - 1]
    assert t.column("max_breadth").to_pylist() == [max(n - 1, 1), 1]
    assert t.column("size").to_pylist() == [n, n]


def test_a_deep_path_is_handled_level_by_level():
    t = cascade_table(*path(5000))
    assert t.column("structural_virality")[0].as_py() == pytest.approx(5001 / 3, rel=1e-12)
    assert t.column("depth")[0].as_py() == 4999


def expected_distance(n: int) -> float:
    """Mean distance between two distinct vertices of a uniform random labelled tree.

    The path between two given vertices has k edges in (n-2)!/(n-k-1)! * (k+1) *
    n^(n-k-2) of the n^(n-2) labelled trees (choose the k-1 inner vertices in
    order, then a forest on the k+1 path vertices as roots).
    """
    return sum(k * math.perm(n - 2, k - 1) * (k + 1) / n**k for k in range(1, n))


def test_mean_virality_of_uniform_random_labelled_trees_matches_the_exact_expectation():
    n, trials = 12, 3000
    rng = np.random.default_rng(1)
    nodes, parents, roots, steps = [], [], [], []
    for t in range(trials):
        tree = nx.from_prufer_sequence(rng.integers(0, n, n - 2).tolist())
        parent = np.full(n, -1)
        for child, par in nx.bfs_predecessors(tree, 0):
            parent[child] = par
        depth = nx.single_source_shortest_path_length(tree, 0)
        base = t * n
        nodes.append(np.arange(n) + base)
        parents.append(np.where(parent < 0, -1, parent + base))
        roots.append(np.full(n, base))
        steps.append(np.array([depth[i] for i in range(n)]))
    table = cascade_table(*(np.concatenate(c) for c in (nodes, parents, roots, steps)))
    v = np.asarray(table.column("structural_virality"))
    exact = expected_distance(n)
    se = v.std(ddof=1) / math.sqrt(trials)
    # Within 4 standard errors (a false alarm about once in 16,000 runs).
    assert abs(v.mean() - exact) < 4 * se, (v.mean(), exact, se)
    assert expected_distance(3) == pytest.approx(4 / 3)  # the only tree is a path


def test_timing_depth_and_breadth_of_a_hand_built_tree():
    #      0 (step 0)
    #    1   2        (steps 1, 1)
    #  3 4 5          (steps 2, 4, 6) under 1, 1, 2
    node = np.array([0, 1, 2, 3, 4, 5])
    parent = np.array([-1, 0, 0, 1, 1, 2])
    t = cascade_table(node, parent, np.zeros(6, np.int64), np.array([0, 1, 1, 2, 4, 6]))
    row = {c: t.column(c)[0].as_py() for c in t.column_names}
    assert row["size"] == 6 and row["depth"] == 2 and row["max_breadth"] == 3
    assert row["half_steps"] == 1  # 3 of 6 nodes had joined by step 1
    assert row["duration"] == 6
    # Distances: 5 edges with lower sides 3, 2, 1, 1, 1 -> (3*3 + 2*4 + 3*5) / 15.
    assert row["structural_virality"] == pytest.approx((9 + 8 + 15) / 15)


def test_a_cascade_counts_people_not_shares():
    # Items 0..5 of one tree (0 -> 1 -> 2, 0 -> 3 -> 4, 3 -> 5) by agents 7, 8, 7, 9, 8, 8:
    # agent 7 posted and reposted, agent 8 reposted three times.
    node = np.arange(6)
    parent = np.array([-1, 0, 1, 0, 3, 3])
    step = np.array([0, 1, 2, 1, 3, 5])
    agent = np.array([7, 8, 7, 9, 8, 8])
    t = cascade_table(node, parent, np.zeros(6, np.int64), step, agent=agent)
    row = {c: t.column(c)[0].as_py() for c in t.column_names}
    assert row["size"] == 3 and row["nodes"] == 6
    assert row["half_steps"] == 1  # agents 7 (step 0) and 8 (step 1) are half of three
    assert row["depth"] == 2 and row["duration"] == 5  # the tree is still the items'
    plain = cascade_table(node, parent, np.zeros(6, np.int64), step)
    assert plain.column("size")[0].as_py() == 6


def test_a_node_twice_is_an_error():
    with pytest.raises(ValueError, match="node 1 appears twice"):
        cascade_table(np.array([0, 1, 1]), np.array([-1, 0, 0]), np.zeros(3, np.int64),
                      np.zeros(3, np.int64))


def test_cascades_of_engine_runs_cover_every_adoption(tmp_path):
    run = swarm.run(cascade_config(n=3000, shards=2, p=0.2, seed_count=20), tmp_path / "ic",
                    backend="local")
    t = cascades(run)
    activations = run.events().num_rows
    assert t.num_rows == 20 and sum(t.column("size").to_pylist()) == activations
    assert max(t.column("depth").to_pylist()) >= 2

    feed = swarm.validate_config({
        "seed": 3, "steps": 10, "shards": 2, "graph": {"kind": "barabasi_albert", "n": 800,
                                                       "m": 3},
        "env": {"kind": "feed", "activity": 0.5, "rules": {"post": 0.2, "repost": -2.0}}})
    frun = swarm.run(feed, tmp_path / "feed", backend="local")
    ft = cascades(str(frun.path))
    ev = frun.events()
    kinds = ev.column("event").cast("string").to_pylist()
    assert ft.num_rows == kinds.count("post")
    assert sum(ft.column("size").to_pylist()) == kinds.count("post") + kinds.count("repost")
    assert max(ft.column("depth").to_pylist()) >= 2
