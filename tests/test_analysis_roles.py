"""Roles: features against networkx, role clusters against a degree-preserving null, core-periphery.

Every graph is made here: stochastic block models with planted roles or a
planted core, and rewired heavy-tailed graphs with nothing planted.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import adjusted_rand_score

from swarm.analysis.roles import (
    agent_features,
    core_periphery,
    interaction_edges,
    rewire,
    role_changes,
    roles,
    roles_by_window,
    rolx,
)
from swarm.graph import barabasi_albert, sbm


def planted_roles(seed: int = 0):
    """Three roles: 15 near-cliques of 20 (high clustering), a sparse periphery of 600,
    and 100 connectors tied to everyone at random (high degree, low clustering)."""
    nb = 15
    p = np.zeros((nb + 2, nb + 2))
    p[np.arange(nb), np.arange(nb)] = 0.9
    p[nb, nb] = 0.005
    p[:, nb + 1] = p[nb + 1, :] = 0.03
    g = sbm([20] * nb + [600, 100], p, seed=seed)
    truth = np.r_[np.zeros(300, int), np.ones(600, int), np.full(100, 2)]
    return g, truth


def edges(g):
    return g.sources(), g.indices, g.n


# --- 1. core-periphery ------------------------------------------------------------------


def core_sbm(p_core, p_cross, p_periphery, seed=0):
    g = sbm([100, 900], [[p_core, p_cross], [p_cross, p_periphery]], seed=seed)
    return g, np.r_[np.ones(100, bool), np.zeros(900, bool)]


def test_core_periphery_recovers_a_planted_core_that_beats_rewirings():
    # The core is denser, and its ties to the periphery sparser, than its degrees imply.
    g, truth = core_sbm(0.4, 0.03, 0.006)
    cp = core_periphery(*edges(g), n_null=49, seed=0)
    ari = adjusted_rand_score(truth, cp.core)
    print(f"cohesive core: ARI {ari:.3f}, core {cp.core.sum()}, rho {cp.rho:.4f}, null "
          f"{cp.null_mean:.4f} +- {cp.null_sd:.4f}, z {cp.z:.1f}, p {cp.p_value:.3f}")
    assert ari > 0.9
    assert cp.p_value < 0.05 and cp.z > 5
    assert cp.null_rhos.shape == (49,)


def test_a_core_that_the_degrees_explain_is_found_but_not_significant():
    # 100 core nodes at p=0.3, 900 periphery at 0.005, 0.05 between: the
    # configuration model with these degrees puts about 0.35, 0.0056 and 0.044
    # in the blocks, so the rewirings have the same core.
    g, truth = core_sbm(0.3, 0.05, 0.005)
    cp = core_periphery(*edges(g), n_null=19, seed=0)
    ari = adjusted_rand_score(truth, cp.core)
    print(f"degree-made core: ARI {ari:.3f}, rho {cp.rho:.4f}, null {cp.null_mean:.4f} +- "
          f"{cp.null_sd:.4f}, p {cp.p_value:.3f}")
    assert ari > 0.9
    assert cp.p_value > 0.05
    # The 'connected' pattern (core-periphery pairs ideally tied) runs too.
    assert core_periphery(*edges(g), n_null=2, pattern="connected").core.sum() > 50


# --- 2. roles against the null ---------------------------------------------------------------


def test_roles_on_a_rewired_heavy_tailed_graph_do_not_beat_the_null():
    g = barabasi_albert(1000, 3, seed=2)
    s, d = rewire(g.sources(), g.indices, g.n, directed=False, seed=2)
    r = roles(np.r_[s, d], np.r_[d, s], g.n, n_null=4, n_seeds=3, betweenness_sample=32, seed=2)
    print("rewired BA:", r.summary(), "null", np.round(r.null_silhouettes, 3))
    assert r.silhouette > 0.5  # high, as heavy tails make it...
    assert not r.beats_null  # ...and no higher than on rewirings
    assert sum(r.sizes) == g.n and r.sizes[0] > 0.4 * g.n  # one large role
    assert r.rule.startswith("silhouette > null mean")


def test_planted_roles_beat_the_null_and_are_recovered():
    g, truth = planted_roles(seed=0)
    r = roles(*edges(g), n_null=4, n_seeds=3, betweenness_sample=32, seed=0)
    ari = adjusted_rand_score(truth, r.labels)
    print("planted:", r.summary(), "null", np.round(r.null_silhouettes, 3),
          f"ARI vs plant {ari:.3f}")
    assert r.beats_null
    assert r.silhouette > r.null_mean + 0.1
    assert ari > 0.9
    assert r.ari_seeds > 0.7
    prof = r.profiles.to_pydict()
    big = int(np.argmax(prof["clustering"]))
    assert prof["clustering"][big] > 0.5 and 250 <= prof["size"][big] <= 350  # the cliques
    assert r.profiles.num_rows == r.k and r.features.num_rows == g.n


def test_roles_with_a_gaussian_mixture_and_behaviour_columns():
    g, truth = planted_roles(seed=1)
    # Behaviour that goes with the plant: connectors post, the others like.
    rng = np.random.default_rng(1)
    count = rng.poisson(np.where(truth == 2, 8, 3))
    agent = np.repeat(np.arange(g.n), count)
    ev = pa.table({"agent": agent, "event": np.where(truth[agent] == 2, "post", "like")})
    r = roles(*edges(g), events=ev, method="gmm", k_range=range(2, 6), n_null=2, n_seeds=2,
              betweenness_sample=16, seed=1)
    ari = adjusted_rand_score(truth, r.labels)
    print("gmm:", r.summary(), r.columns, f"ARI vs plant {ari:.3f}")
    assert "n_post" in r.columns and "n_like" in r.columns
    assert "cascades_started" not in r.columns  # constant (no reposts): dropped
    assert ari > 0.8
    with pytest.raises(ValueError, match="method"):
        roles(*edges(g), method="dbscan")


# --- 3. features ------------------------------------------------------------------------------


def test_features_of_a_hand_built_graph_match_networkx():
    # A reciprocated triangle 0-1-2, a one-way tail 2 -> 3 -> 4, a mutual pair
    # 4 <-> 5, an isolated agent 6, and a repeated edge (strength, not degree).
    src = np.array([0, 1, 1, 2, 2, 0, 2, 3, 4, 5, 3])
    dst = np.array([1, 0, 2, 1, 0, 2, 3, 4, 5, 4, 4])
    f = agent_features(src, dst, 7, betweenness_sample=100)
    dg = nx.DiGraph()
    dg.add_nodes_from(range(7))
    dg.add_edges_from(zip(src.tolist(), dst.tolist(), strict=True))
    ug = dg.to_undirected()
    assert f.column("in_degree").to_pylist() == [dg.in_degree(v) for v in range(7)]
    assert f.column("out_degree").to_pylist() == [dg.out_degree(v) for v in range(7)]
    assert f.column("out_strength").to_pylist() == [2, 2, 3, 2, 1, 1, 0]
    recip = [nx.reciprocity(dg, v) if dg.degree(v) else 0.0 for v in range(7)]
    assert f.column("reciprocity").to_pylist() == pytest.approx(recip)
    assert f.column("reciprocity").to_pylist()[:4] == pytest.approx([1, 1, 0.8, 0])
    cl = nx.clustering(ug)
    assert f.column("clustering").to_pylist() == pytest.approx([cl[v] for v in range(7)])
    core = nx.core_number(ug)
    assert f.column("core").to_pylist() == [core[v] for v in range(7)]
    assert f.column("core").to_pylist() == [2, 2, 2, 1, 1, 1, 0]
    bc = nx.betweenness_centrality(dg)
    assert f.column("betweenness").to_pylist() == pytest.approx([bc[v] for v in range(7)])


@pytest.mark.parametrize("seed", [0, 1])
def test_features_of_random_graphs_match_networkx(seed):
    rng = np.random.default_rng(seed)
    src, dst = rng.integers(0, 80, 500), rng.integers(0, 80, 500)
    f = agent_features(src, dst, 80, betweenness_sample=80)
    dg = nx.DiGraph()
    dg.add_nodes_from(range(80))
    dg.add_edges_from((a, b) for a, b in zip(src.tolist(), dst.tolist(), strict=True) if a != b)
    ug = dg.to_undirected()
    cl, core = nx.clustering(ug), nx.core_number(ug)
    assert f.column("clustering").to_pylist() == pytest.approx([cl[v] for v in range(80)])
    assert f.column("core").to_pylist() == [core[v] for v in range(80)]
    bc = nx.betweenness_centrality(dg)
    assert f.column("betweenness").to_pylist() == pytest.approx([bc[v] for v in range(80)])
    # Undirected (both directions listed): networkx's undirected betweenness.
    g = barabasi_albert(300, 2, seed=seed)
    fu = agent_features(*edges(g), betweenness_sample=300)
    bu = nx.betweenness_centrality(g.to_networkx())
    assert fu.column("betweenness").to_pylist() == pytest.approx([bu[v] for v in range(300)])
    # A sample is networkx's estimator: seeded, scaled by n / sample, close to exact.
    s1 = agent_features(*edges(g), betweenness_sample=150, seed=3).column("betweenness")
    s2 = agent_features(*edges(g), betweenness_sample=150, seed=3).column("betweenness")
    assert s1.equals(s2)
    exact = np.asarray(fu.column("betweenness"))
    assert np.corrcoef(np.asarray(s1), exact)[0, 1] > 0.9


def test_core_number_and_triangles_on_a_larger_heavy_tailed_graph():
    g = barabasi_albert(3000, 4, seed=5)
    s, d = rewire(g.sources(), g.indices, g.n, directed=False, seed=1)
    f = agent_features(s, d, g.n, betweenness_sample=None)
    ug = nx.Graph()
    ug.add_nodes_from(range(g.n))
    ug.add_edges_from(zip(s.tolist(), d.tolist(), strict=True))
    cl, core = nx.clustering(ug), nx.core_number(ug)
    assert f.column("core").to_pylist() == [core[v] for v in range(g.n)]
    assert f.column("clustering").to_pylist() == pytest.approx([cl[v] for v in range(g.n)])
    assert np.isnan(np.asarray(f.column("betweenness"))).all()


def test_behaviour_features_and_interaction_edges_from_feed_events():
    # Agent 0 posts items 10 and 11; 1 reposts 10 (a cascade from 0's post);
    # 2 likes 1's repost and comments on 11; 1 likes 11 twice.
    ev = pa.table({
        "step": [0, 0, 1, 2, 2, 3, 3],
        "agent": [0, 0, 1, 2, 2, 1, 1],
        "event": pa.array(["post", "post", "repost", "like", "comment", "like", "like"])
        .dictionary_encode(),
        "item": [10, 11, 20, 20, 11, 11, 11],
        "root": [10, 11, 10, 10, 11, 11, 11],
        "target": [None, None, 0, 1, 0, 0, 0],
    })
    e = interaction_edges(ev)
    assert e.column("src").to_pylist() == [1, 2, 2]
    assert e.column("dst").to_pylist() == [0, 0, 1]
    assert e.column("weight").to_pylist() == [3, 1, 1]
    assert e.column("n_like").to_pylist() == [2, 0, 1]
    f = agent_features(e.column("src"), e.column("dst"), 3, ev, weight=e.column("weight"))
    assert f.column("n_post").to_pylist() == [2, 0, 0]
    assert f.column("n_like").to_pylist() == [0, 2, 1]
    assert f.column("repost_share").to_pylist() == [0.0, 1.0, 0.0]
    assert f.column("cascades_started").to_pylist() == [1, 0, 0]
    assert f.column("cascade_start_rate").to_pylist() == [0.5, 0.0, 0.0]
    assert f.column("in_strength").to_pylist() == [4.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="n="):
        agent_features(np.array([0]), np.array([5]), 3)


@pytest.mark.parametrize("directed", [False, True])
def test_rewiring_keeps_degrees_and_stays_simple(directed):
    g = barabasi_albert(2000, 3, seed=0)
    s0, d0 = g.sources(), g.indices
    if not directed:
        keep = s0 < d0
        s0, d0 = s0[keep], d0[keep]
    else:  # a directed graph: keep one direction of each edge at random
        flip = np.random.default_rng(0).random(s0.shape[0]) < 0.5
        keep = s0 < d0
        s0, d0 = np.where(flip, s0, d0)[keep], np.where(flip, d0, s0)[keep]
    s, d = rewire(s0, d0, g.n, directed=directed, swaps=5, seed=4)
    if directed:
        assert (np.bincount(s, minlength=g.n) == np.bincount(s0, minlength=g.n)).all()
        assert (np.bincount(d, minlength=g.n) == np.bincount(d0, minlength=g.n)).all()
    else:
        assert (np.bincount(np.r_[s, d], minlength=g.n)
                == np.bincount(np.r_[s0, d0], minlength=g.n)).all()
    assert (s != d).all() and np.unique(s * g.n + d).shape[0] == s.shape[0]
    kept = np.isin(s * g.n + d, s0 * g.n + d0).mean()
    print(f"directed={directed}: share of edges kept {kept:.3f}")
    assert kept < 0.1


# --- 4. role stability -----------------------------------------------------------------------


def test_role_changes_match_labels_and_measure_switches():
    rng = np.random.default_rng(0)
    n, k = 1000, 4
    lab = rng.integers(0, k, n)
    prof = rng.normal(size=(k, 5)) * 3
    # Identical windows: no change.
    t = role_changes([lab, lab, lab], [prof, prof, prof])
    assert t.column("changed").to_pylist() == [0, 0] and t.column("share").to_pylist() == [0, 0]
    # Permuted labels (with the profiles permuted alike, plus noise): matched, no change.
    perm = rng.permutation(k)
    noisy = prof[np.argsort(perm)] + rng.normal(scale=0.1, size=prof.shape)
    assert role_changes([lab, perm[lab]], [prof, noisy]).column("changed").to_pylist() == [0]
    assert role_changes([lab, perm[lab]]).column("changed").to_pylist() == [0]  # by overlap
    # 15% of agents switch to another role; two agents are absent in the later window.
    moved = lab.copy()
    who = rng.choice(n, 150, replace=False)
    moved[who] = (lab[who] + rng.integers(1, k, 150)) % k
    later = perm[moved]
    later[[who[0], np.setdiff1d(np.arange(n), who)[0]]] = -1
    t = role_changes([lab, later], [prof, noisy])
    assert t.column("agents").to_pylist() == [n - 2]
    assert t.column("changed").to_pylist() == [149]
    assert t.column("share")[0].as_py() == pytest.approx(149 / (n - 2))
    # A new role in the later window counts as a change for its agents.
    extra = lab.copy()
    extra[:10] = k
    t = role_changes([lab, extra], [prof, np.vstack([prof, prof[:1] + 50])])
    assert t.column("changed").to_pylist() == [10]


def test_roles_by_window_from_events_counts_the_agents_that_switch():
    rng = np.random.default_rng(1)
    n, steps = 200, 30
    rows = {"step": [], "agent": [], "event": [], "target": [], "item": [], "root": []}
    for step in range(steps):
        posters = np.arange(100)
        if step >= 20:  # third window: agents 0-19 and 100-119 swap behaviour
            posters = np.r_[np.arange(20, 100), np.arange(100, 120)]
        likers = np.setdiff1d(np.arange(n), posters)
        for a in posters:
            rows["step"].append(step), rows["agent"].append(int(a)), rows["event"].append("post")
            rows["target"].append(None), rows["item"].append(step * n + int(a))
            rows["root"].append(step * n + int(a))
        for a in likers:
            to = int(rng.choice(posters))
            rows["step"].append(step), rows["agent"].append(int(a)), rows["event"].append("like")
            rows["target"].append(to), rows["item"].append(step * n + to)
            rows["root"].append(step * n + to)
    ev = pa.table(rows)
    labels, profiles = roles_by_window(ev, n, window=10, k=2, betweenness_sample=None)
    assert len(labels) == 3 and all((x >= 0).all() for x in labels)
    t = role_changes(labels, profiles)
    print(t.to_pydict())
    assert t.column("share").to_pylist() == pytest.approx([0.0, 0.2])


# --- 5. RolX -----------------------------------------------------------------------------


def test_rolx_memberships_are_nonnegative_and_follow_the_plant():
    g, truth = planted_roles(seed=0)
    r = rolx(*edges(g), seed=0)
    ari = adjusted_rand_score(truth, r.role)
    print(f"rolx: k {r.k}, ARI vs plant {ari:.3f}, silhouette by k "
          f"{ {k: round(v, 3) for k, v in r.silhouette_by_k.items()} }, "
          f"{len(r.feature_names)} features")
    assert r.memberships.shape == (g.n, r.k) and (r.memberships >= 0).all()
    assert r.definitions.shape == (r.k, len(r.feature_names)) and (r.definitions >= 0).all()
    assert ari > 0.6
    mdl = rolx(*edges(g), criterion="mdl", k_range=range(2, 5), seed=0)
    assert set(mdl.description_length) == {2, 3, 4} and mdl.k in (2, 3, 4)


# --- 6. the entry point ---------------------------------------------------------------------


def test_roles_module_re_exports_every_topic_module_public_name():
    import importlib

    from swarm.analysis import roles as entry

    topics = ["role_features", "rewiring", "role_clustering", "rolx", "core_periphery",
              "role_stability"]
    exported = set()
    for name in topics:
        module = importlib.import_module(f"swarm.analysis.{name}")
        assert module.__doc__, name
        for public in module.__all__:
            assert getattr(entry, public) is getattr(module, public), (name, public)
        exported |= set(module.__all__)
    assert set(entry.__all__) | {"INTERACTIONS"} == exported
