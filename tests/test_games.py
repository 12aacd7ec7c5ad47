"""The games env: the test kit, hand-computed payoffs, the TFT/ALLD ordering, imitation."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pyarrow.compute as pc
import pytest

import swarm
import swarm.envs.games  # noqa: F401 - registers env.kind "games"
from swarm.envs.games import STRATEGIES, Games, GamesConfig
from swarm.envs.testing import check_determinism, check_env_api, smoke_run_config
from swarm.policies.base import PolicyContext
from swarm.policies.games import GameStrategies
from swarm.rng import KeyedRNG
from swarm.runner import build_graph

PD = {"prisoners_dilemma": (5, 3, 1, 0)}  # T, R, P, S


def _run(tmp_path, name, graph, env, steps, shards=1):
    cfg = smoke_run_config(Games, shards=shards, graph=graph, steps=steps,
                           env={"kind": "games", **env})
    return swarm.run(cfg, tmp_path / name, backend="local", progress=False)


def _events(run, kind):
    ev = run.events()
    return ev.filter(pc.equal(ev["event"].cast("string"), kind)).to_pydict()


def _payoffs(run):
    """{agent: ({round: payoff}, strategy)} from the ``payoff`` events (step t: round t)."""
    ev = _events(run, "payoff")
    out: dict[int, tuple[dict, str]] = defaultdict(lambda: ({}, ""))
    for step, agent, value, strategy in zip(ev["step"], ev["agent"], ev["value"], ev["strategy"],
                                            strict=True):
        rounds, _ = out[agent]
        rounds[step] = value
        out[agent] = (rounds, strategy)
    return out


def test_games_passes_the_api_check():
    check_env_api(Games)


def test_games_is_deterministic_across_runs_and_shards(tmp_path):
    check_determinism(Games, tmp_path)


def test_games_with_punishment_and_full_imitation_is_deterministic(tmp_path, monkeypatch):
    smoke = {**Games.smoke_config, "steps": 12,
             "env": {"kind": "games", "game": "stag_hunt", "imitation": 1.0,
                     "punishment": {"cost": 0.5, "fine": 1.5}, "reputation": True,
                     "strategies": {s: 0.25 for s in STRATEGIES}}}
    monkeypatch.setattr(Games, "smoke_config", smoke)
    check_determinism(Games, tmp_path)


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="game=custom needs payoffs"):
        GamesConfig(game="custom")
    with pytest.raises(ValueError, match="unknown strategies"):
        GamesConfig(strategies={"grim_trigger": 1.0})
    with pytest.raises(ValueError, match="2x2"):
        GamesConfig(payoffs=[[1, 2, 3], [4, 5, 6]])
    assert GamesConfig(game="custom", payoffs=[[2, 0], [1, 1]]).payoff_matrix().tolist() == [
        [2.0, 0.0], [1.0, 1.0]]


# Prisoner's dilemma T=5, R=3, P=1, S=0 between the two agents of a pair, per
# round (r0, r1, r2, r3), for the row agent's and the column agent's strategy.
# WSLS aspiration is the mean payoff 2.25: it wins on T and R, loses on P and S.
_PAIR = {
    ("always_cooperate", "always_defect"): ([0, 0, 0, 0], [5, 5, 5, 5]),
    ("always_defect", "always_defect"): ([1, 1, 1, 1], [1, 1, 1, 1]),
    # TFT is exploited once, then both defect: T once then P.
    ("tit_for_tat", "always_defect"): ([0, 1, 1, 1], [5, 1, 1, 1]),
    # WSLS loses on S (switch to D), loses on P (switch back to C), and so on.
    ("win_stay_lose_shift", "always_defect"): ([0, 1, 0, 1], [5, 1, 5, 1]),
}


def test_payoffs_of_isolated_pairs_equal_hand_computed_values(tmp_path):
    pairs = 60
    path = tmp_path / "pairs.txt"
    path.write_text("".join(f"{2 * i} {2 * i + 1}\n" for i in range(pairs)))
    run = _run(tmp_path, "pairs", {"kind": "edgelist", "path": str(path)},
               {"strategies": {s: 0.25 for s in STRATEGIES}}, steps=5, shards=2)
    got = _payoffs(run)
    seen = set()
    for i in range(pairs):
        (pa_, sa), (pb, sb) = got[2 * i], got[2 * i + 1]
        if (sa, sb) in _PAIR:
            want_a, want_b = _PAIR[(sa, sb)]
        elif (sb, sa) in _PAIR:
            want_b, want_a = _PAIR[(sb, sa)]
        else:
            want_a = want_b = [3] * 4  # every other pair cooperates for ever: R each
        seen.add(tuple(sorted((sa, sb))))
        assert [pa_[r] for r in range(4)] == want_a, (sa, sb)
        assert [pb[r] for r in range(4)] == want_b, (sa, sb)
    assert len(seen) >= 8, f"too few strategy pairs drawn: {seen}"


def test_punishment_costs_the_punisher_and_fines_the_defector(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("".join(f"{2 * i} {2 * i + 1}\n" for i in range(30)))
    run = _run(tmp_path, "pun", {"kind": "edgelist", "path": str(path)},
               {"strategies": {"always_cooperate": 0.5, "always_defect": 0.5},
                "punishment": {"cost": 1.0, "fine": 3.0}}, steps=3)
    got = _payoffs(run)
    want = {("always_cooperate", "always_defect"): (0 - 1, 5 - 3),
            ("always_cooperate", "always_cooperate"): (3, 3),
            ("always_defect", "always_defect"): (1, 1)}
    mixed = 0
    for i in range(30):
        (pa_, sa), (pb, sb) = got[2 * i], got[2 * i + 1]
        if (sa, sb) in want:
            assert (pa_[0], pb[0]) == want[(sa, sb)]
            mixed += sa != sb
        else:
            assert (pb[0], pa_[0]) == want[(sb, sa)]
    m = run.metrics().to_pydict()
    assert mixed > 0 and m["punishments"][1] > 0
    # Always-defectors lose their standing with their first move, cooperators keep it.
    n_allc = sum(strategy == "always_cooperate" for _, strategy in got.values())
    assert m["good_standing"] == [n_allc] * 3


def test_defectors_against_tit_for_tat_on_a_ring_give_the_known_payoff_ordering(tmp_path):
    n, rounds = 240, 6
    run = _run(tmp_path, "ring", {"kind": "watts_strogatz", "n": n, "k": 2, "p": 0.0},
               {"strategies": {"tit_for_tat": 0.5, "always_defect": 0.5}}, steps=rounds + 1,
               shards=3)
    got = _payoffs(run)
    s = [got[i][1] for i in range(n)]
    T, R, P, S = PD["prisoners_dilemma"]
    by_kind = defaultdict(list)
    for i in range(n):
        kind = (s[(i - 1) % n], s[i], s[(i + 1) % n])
        by_kind[kind].append([got[i][0][r] for r in range(rounds)])
    tft, alld = "tit_for_tat", "always_defect"
    # Round 0, everyone opens (TFT: C): per game T > R > P > S, two games each.
    assert all(p[0] == 2 * T for p in by_kind[(tft, alld, tft)])
    assert all(p[0] == 2 * R for p in by_kind[(tft, tft, tft)])
    assert all(p[0] == 2 * P for p in by_kind[(alld, alld, alld)])
    assert all(p[0] == 2 * S for p in by_kind[(alld, tft, alld)])
    # A lone TFT retaliates from round 1 (its neighbours defected); TFT with a
    # TFT neighbour keeps cooperating (majority rule, ties cooperate).
    assert all(p[1:] == [2 * P] * (rounds - 1) for p in by_kind[(alld, tft, alld)])
    assert all(p == [2 * R] * rounds for p in by_kind[(tft, tft, tft)])
    assert all(p == [2 * P] * rounds for p in by_kind[(alld, alld, alld)])
    # ALLD between two lone TFTs earns T once per game, then P.
    lone = [i for i in range(n) if (s[i - 1], s[i], s[(i + 1) % n]) == (tft, alld, tft)
            and s[i - 2] == alld and s[(i + 2) % n] == alld]
    assert lone and all(got[i][0][0] == 2 * T and got[i][0][1] == 2 * P for i in lone)
    mean = {k: np.mean(v) for k, v in by_kind.items()}
    assert mean[(tft, tft, tft)] == 2 * R > mean[(alld, alld, alld)] == 2 * P
    for kind in [(tft, alld, tft), (tft, tft, tft), (alld, alld, alld), (alld, tft, alld)]:
        assert by_kind[kind], f"the ring drew no {kind}"


def test_a_metrics_row_holds_the_moves_and_payoffs_of_its_step(tmp_path):
    # A ring lattice (k=4): every agent has neighbours, so every agent logs a payoff
    # event each round, and the events of step t give step t's metrics exactly.
    steps = 6
    run = _run(tmp_path, "row", Games.smoke_config["graph"],
               {"strategies": {s: 0.25 for s in STRATEGIES}, "imitation": 0.3,
                "punishment": {"cost": 0.5, "fine": 1.0}}, steps=steps, shards=2)
    m = run.metrics().to_pydict()
    ev = _events(run, "payoff")
    step, value = np.asarray(ev["step"]), np.asarray(ev["value"], dtype=np.float64)
    move, strategy = np.asarray(ev["item"]), np.asarray(ev["strategy"])
    assert m["mean_payoff"][0] != 0 and m["games"][0] > 0  # round 0 is played at step 0
    assert sorted(set(step.tolist())) == list(range(steps))
    for t in range(steps):
        at = step == t
        assert at.sum() == m["players"][t] == 300
        assert m["total_payoff"][t] == pytest.approx(value[at].sum(), rel=1e-6)
        assert m["mean_payoff"][t] == pytest.approx(value[at].mean(), abs=1e-5)
        assert m["cooperators"][t] == (move[at] == 0).sum()
        for s in STRATEGIES:
            assert m[f"count_{s}"][t] == (strategy[at] == s).sum(), (t, s)
    # Switches chosen at step t show in the strategies of round t + 1.
    sw = _events(run, "switch")
    assert len(sw["agent"]) > 10
    agent = np.asarray(ev["agent"])
    for a, s, new in zip(sw["agent"], sw["step"], sw["strategy"], strict=True):
        if s + 1 < steps:
            assert strategy[(step == s + 1) & (agent == a)].tolist() == [new]


def test_periodic_payoff_events_end_with_the_last_round(tmp_path):
    for steps, logged in ((7, {0, 3, 6}), (8, {0, 3, 6, 7})):
        run = _run(tmp_path, f"s{steps}", Games.smoke_config["graph"],
                   {"log_every": 3}, steps=steps)
        assert set(_events(run, "payoff")["step"]) == logged


def test_metrics_are_consistent(tmp_path):
    run = _run(tmp_path, "m", Games.smoke_config["graph"],
               {"strategies": {"tit_for_tat": 0.3, "always_defect": 0.7}}, steps=4)
    m = run.metrics().to_pydict()
    assert m["players"] == [300] * 4
    assert all(abs(sum(m[f"share_{s}"][t] for s in STRATEGIES) - 1) < 1e-12 for t in range(4))
    assert m["cooperation_rate"][0] == m["share_tit_for_tat"][0]  # TFT opens with C
    assert m["games"][0] == m["games"][1] > 0  # round 0 is played at step 0
    assert m["mean_payoff"][1] == pytest.approx(m["total_payoff"][1] / 300, rel=1e-12)


def test_imitation_copies_a_better_scoring_neighbour(tmp_path):
    graph = {"kind": "watts_strogatz", "n": 400, "k": 4, "p": 0.1}
    run = _run(tmp_path, "imit", graph,
               {"imitation": 1.0, "strategies": {"always_cooperate": 0.5, "always_defect": 0.5}},
               steps=12, shards=2)
    g = build_graph(smoke_run_config(Games, graph=graph))
    edges = set(zip(g.sources().tolist(), g.indices.tolist(), strict=True))
    pay = _events(run, "payoff")
    played = {(st, a): (v, strat) for st, a, v, strat in zip(
        pay["step"], pay["agent"], pay["value"], pay["strategy"], strict=True)}
    sw = _events(run, "switch")
    assert len(sw["agent"]) > 0
    for st, a, target, value, new in zip(sw["step"], sw["agent"], sw["target"], sw["value"],
                                         sw["strategy"], strict=True):
        assert (target, a) in edges
        # The neighbour's strategy of this step's round (broadcast at step - 1 with its
        # move) and its score then (round step - 1's, logged at step - 1); the agent
        # scored less in that round.
        assert played[(st, target)][1] == new
        assert played[(st - 1, target)][0] == value
        assert played[(st - 1, a)][0] < value


def test_imitation_spreads_defection_in_mixed_pairs(tmp_path):
    # In a pair ALLC earns S=0 against ALLD's T=5, so with imitation=1 every
    # cooperator paired with a defector adopts always_defect at step 1 (the
    # scores of round 0 arrive with the moves of round 1), from round 2 on, and
    # nothing changes after.
    pairs = 50
    path = tmp_path / "pairs.txt"
    path.write_text("".join(f"{2 * i} {2 * i + 1}\n" for i in range(pairs)))
    run = _run(tmp_path, "pairs", {"kind": "edgelist", "path": str(path)},
               {"imitation": 1.0, "strategies": {"always_cooperate": 0.5, "always_defect": 0.5}},
               steps=5, shards=2)
    pay = _events(run, "payoff")
    start = {a: strat for st, a, strat in zip(pay["step"], pay["agent"], pay["strategy"],
                                              strict=True) if st == 1}
    mixed = [i for i in range(pairs) if start[2 * i] != start[2 * i + 1]]
    sw = _events(run, "switch")
    assert mixed and sorted(sw["agent"]) == sorted(
        2 * i if start[2 * i] == "always_cooperate" else 2 * i + 1 for i in mixed)
    assert set(sw["step"]) == {1} and set(sw["strategy"]) == {"always_defect"}
    m = run.metrics().to_pydict()
    assert m["switches"] == [0, len(mixed), 0, 0, 0]
    assert m["count_always_defect"][2] == m["count_always_defect"][1] + len(mixed)
    assert m["count_always_defect"][-1] == m["count_always_defect"][0] + len(mixed)


def _batch(**cols):
    n = len(cols["strategy"])
    base = {"agent": np.arange(n, dtype=np.int64), "strategy": np.zeros(n, np.int8),
            "action": np.full(n, -1, np.int8),
            "neighbours": np.full(n, 2, np.int64), "coop": np.zeros(n, np.int64),
            "good": np.zeros(n, np.int64), "payoff": np.zeros(n),
            "own_score": np.zeros(n), "best_score": np.full(n, -np.inf),
            "best_strategy": np.full(n, -1, np.int8)}
    base.update({k: np.asarray(v, dtype=base[k].dtype) for k, v in cols.items()})
    return base


def test_strategy_rules_decide_hand_checked_moves():
    ALLC, ALLD, TFT, WSLS = range(4)  # noqa: N806 - the strategy codes
    batch = _batch(
        strategy=[ALLC, ALLD, TFT, TFT, TFT, WSLS, WSLS, WSLS, WSLS, WSLS],
        action=[0, 1, 0, 0, -1, 0, 0, 1, 1, -1],
        neighbours=[2, 2, 2, 2, 0, 2, 2, 2, 2, 2],
        coop=[0, 2, 1, 0, 0, 0, 0, 0, 0, 0],
        good=[0, 0, 0, 2, 0, 0, 0, 0, 0, 0],
        # WSLS per game: 3 >= 2.25 stays (C), 0 shifts to D, 1 shifts to C, 5 stays (D).
        payoff=[0, 0, 0, 0, 0, 6, 0, 2, 10, 0],
    )
    ctx = PolicyContext(step=3, rng=KeyedRNG(1))
    moves = GameStrategies(aspiration=2.25).decide(batch, ctx)["action"].tolist()
    # TFT: a tie cooperates, no cooperator defects, no moves seen cooperates.
    assert moves == [0, 1, 0, 1, 0, 0, 1, 0, 1, 0]
    by_reputation = GameStrategies(2.25, reputation=True).decide(batch, ctx)["action"].tolist()
    assert by_reputation[2:4] == [1, 0]  # judged by standing, not by last round's moves
    strict = GameStrategies(2.25, tft_threshold=1.0).decide(batch, ctx)["action"].tolist()
    assert strict[2] == 1


def test_imitation_adopts_only_a_strictly_better_neighbour():
    batch = _batch(strategy=[0, 0, 0], own_score=[1.0, 1.0, 1.0], best_score=[2.0, 1.0, -np.inf],
                   best_strategy=[1, 1, -1])
    out = GameStrategies(2.25, imitation=1.0).decide(batch, PolicyContext(0, KeyedRNG(1)))
    assert out["strategy"].tolist() == [1, 0, 0]
    assert out["action"].tolist() == [1, 0, 0]  # the new strategy already moves this round


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path):
    from conftest import interrupted_then_resumed

    def config():
        return smoke_run_config(Games, shards=2, steps=12, checkpoint={"every": 4},
                                env={**Games.smoke_config["env"], "reputation": True,
                                     "punishment": {"cost": 1.0, "fine": 2.0}})

    reference, resumed = interrupted_then_resumed(config(), tmp_path, 6)
    assert resumed.manifest["resumed_from"] >= 4
    key = [("step", "ascending"), ("agent", "ascending"), ("event", "ascending")]

    def canonical(run):
        ev = run.events().drop_columns(["shard"])
        return ev.set_column(ev.schema.get_field_index("event"), "event",
                             ev["event"].cast("string")).sort_by(key)

    assert canonical(resumed).equals(canonical(reference))
    cols = ["step", "cooperators", "total_payoff", "good_standing", "switches"]
    assert resumed.metrics().select(cols).equals(reference.metrics().select(cols))
