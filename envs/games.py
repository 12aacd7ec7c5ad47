"""Repeated 2x2 games between graph neighbours: who cooperates, and which strategies spread.

Every step is a round, and step t's events and metrics row hold round t: its
moves and their payoffs. Each agent makes one move (C or D) per round that it
plays against all its neighbours. A round's moves are chosen one step ahead:
at step t ``observe`` settles round t, whose moves arrived from the
in-neighbours at the end of step t-1 (an agent's payoff is the sum, over the
in-neighbours whose moves arrived, of its row payoff
``payoffs[my_move][their_move]``; on an undirected graph each pair plays once
and each side gets its row payoff; minus punishment); the policy then picks,
from round t's outcome, the strategy (imitation) and move of round t+1, which
``apply`` broadcasts with the agent's strategy and round t's payoff. Round 0
is the opening, which needs no decision: always_defect opens with D, every
other strategy with C (as ``swarm.policies.games`` plays them), and every shard
knows its in-neighbours' openings from their keyed strategy draws, as if they
had been sent at step -1 (the faults of that step apply). Payoffs are computed
from counts of C and D received, so they do not depend on the order messages
arrive in.

LLM-style agents (``population.groups`` with ``policy: {kind: llm, ...}``)
choose the next round's move themselves: ``cooperate`` or ``defect`` (the
labels are the move codes 0 = C and 1 = D), prompted with how many of their
neighbours cooperated and defected in the round just settled, their own
payoff of it and the game's payoffs (``Games.choice_spec``; fields
``neighbours``, ``coop``, ``defect``, ``good``, ``payoff``, ``action``). Their
strategy never changes (no imitation): it is the one they drew, which sets
their opening move and is what their neighbours see and may imitate. In a
mixed population the rule's rows read ``move = -1`` (the population's fill for
rows a group did not decide), so ``apply`` takes the rule's strategy and move
for those rows and the model's move for the
others. A failed model call (``on_error: idle``) cooperates. The tiny
random-weight model of the tests answers at random.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator, model_validator

from swarm.config_base import StrictModel
from swarm.contract import as_numpy
from swarm.envs.base import (
    ChoiceSpec,
    Column,
    Env,
    EnvConfig,
    Inbox,
    ShardView,
    StepResult,
    Sum,
    make_events,
    register_env,
)

#: The strategies of the repeated game, in code order (``strategy`` columns hold the index).
STRATEGIES = ("always_cooperate", "always_defect", "tit_for_tat", "win_stay_lose_shift")
#: What LLM-style agents choose between: their index is the move code (0 = C, 1 = D).
MOVES = ("cooperate", "defect")

__all__ = ["GAME_PAYOFFS", "MOVES", "Games", "GamesConfig", "PunishmentConfig"]

#: Row player's payoff ``[my_move][their_move]``, moves 0 = C, 1 = D.
#: battle_of_the_sexes in its symmetric form: C = yield to the partner's
#: favourite, D = insist on one's own; meeting pays 2 to the one whose
#: favourite it is and 1 to the other, missing each other pays 0.
GAME_PAYOFFS: dict[str, list[list[float]]] = {
    "prisoners_dilemma": [[3.0, 0.0], [5.0, 1.0]],  # R, S / T, P
    "stag_hunt": [[4.0, 0.0], [3.0, 3.0]],  # stag-stag, stag-hare / hare-stag, hare-hare
    "battle_of_the_sexes": [[0.0, 1.0], [2.0, 0.0]],
}


class PunishmentConfig(StrictModel):
    """Costly punishment: every agent that cooperated punishes each neighbour that defected."""

    cost: float = Field(1.0, ge=0.0)
    """What the punisher pays per neighbour punished."""
    fine: float = Field(3.0, ge=0.0)
    """What a defector pays per neighbour that punishes it."""


class GamesConfig(EnvConfig):
    """The game, the initial strategies, imitation and punishment."""

    kind: Literal["games"] = "games"
    game: Literal["prisoners_dilemma", "stag_hunt", "battle_of_the_sexes", "custom"] = (
        "prisoners_dilemma")
    """The 2x2 game; its payoff matrix is ``GAME_PAYOFFS[game]`` unless ``payoffs`` is given."""
    payoffs: list[list[float]] | None = None
    """Row player's payoff ``[[CC, CD], [DC, DD]]`` (0 = C, 1 = D); required for ``custom``."""
    strategies: dict[str, float] = Field(
        default_factory=lambda: {"tit_for_tat": 0.5, "always_defect": 0.5})
    """Shares of the initial strategies (normalized), drawn per agent by a keyed draw; names
    from always_cooperate, always_defect, tit_for_tat, win_stay_lose_shift."""
    imitation: float = Field(0.0, ge=0.0, le=1.0)
    """Per-step probability that an agent adopts the strategy of its best-scoring neighbour
    (when that one scored strictly more; ties by smallest id). 0: strategies are fixed."""
    tft_threshold: float = Field(0.5, ge=0.0, le=1.0)
    """tit_for_tat cooperates when at least this share of its neighbours cooperated last
    round: 0.5 is majority with ties cooperating, 1.0 defects after any defection."""
    aspiration: float | None = None
    """win_stay_lose_shift stays when last round's payoff per game reached this; default the
    mean of the four payoffs (PD: wins on T and R, loses on P and S)."""
    punishment: PunishmentConfig | None = None
    """Costly punishment; none by default."""
    reputation: bool = False
    """tit_for_tat judges neighbours by reputation (good standing: cooperated in at least half
    of their moves so far) instead of their last move."""
    log_every: int = Field(1, ge=1)
    """Log ``payoff`` events for rounds 0, k, 2k, ... and the run's last only (``switch``
    events always)."""

    @field_validator("payoffs")
    @classmethod
    def _two_by_two(cls, v: list[list[float]] | None) -> list[list[float]] | None:
        if v is not None and (len(v) != 2 or any(len(row) != 2 for row in v)):
            raise ValueError(f"payoffs must be a 2x2 matrix [[CC, CD], [DC, DD]]; got {v}")
        return v

    @field_validator("strategies")
    @classmethod
    def _known_shares(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(STRATEGIES))
        if unknown:
            raise ValueError(f"unknown strategies {unknown}; allowed: {list(STRATEGIES)}")
        if any(s < 0 for s in v.values()) or sum(v.values()) <= 0:
            raise ValueError(f"strategy shares must be >= 0 with a positive sum; got {v}")
        return v

    @model_validator(mode="after")
    def _custom_needs_payoffs(self) -> GamesConfig:
        if self.game == "custom" and self.payoffs is None:
            raise ValueError("game=custom needs payoffs: [[CC, CD], [DC, DD]]")
        return self

    def payoff_matrix(self) -> np.ndarray:
        """The row player's 2x2 payoff matrix as float64."""
        return np.asarray(self.payoffs if self.payoffs is not None else GAME_PAYOFFS[self.game],
                          dtype=np.float64)


@register_env
class Games(Env):
    """Repeated 2x2 games with per-agent moves, strategy imitation and punishment.

    Rounds and lags: step t settles round t (moves chosen at step t-1; round 0's
    are the openings) and chooses round t+1. Events: ``payoff`` at step t
    reports round t of an agent that received moves (``item`` its move, 0 = C,
    1 = D; ``value`` its payoff; ``strategy`` the one it played), at steps 0,
    ``log_every``, 2 ``log_every``, ... and the run's last; ``switch`` at step t
    when imitation changed an agent's strategy from round t+1 on (``target`` the
    neighbour imitated, ``value`` that neighbour's score, ``strategy`` the new
    one). Metrics at step t: round t's moves, strategies, games, payoffs and
    punishments, the standing after it, and the switches chosen at step t.
    Imitation compares scores of round t-1 (a neighbour's arrives with its move
    of round t).

    Reputation (``reputation: true``) is image scoring without gossip: each
    agent broadcasts whether it is in good standing (cooperated in at least
    half of its moves so far); tit_for_tat then counts neighbours in good
    standing instead of last round's cooperators.
    """

    name = "games"
    Config = GamesConfig
    event_types = ("payoff", "switch")
    event_columns = {"strategy": pa.string()}
    observation = ("agent", "strategy", "action", "neighbours", "coop", "defect", "good",
                   "payoff", "own_score", "best_score", "best_strategy")
    # move: LLM-style agents' next move (other rows: -1).
    actions = ("strategy", "action", "move")
    metric_names = ("players", "cooperators", "games", "punishments", "switches",
                    "good_standing", *(f"count_{s}" for s in STRATEGIES))
    # The round's payoffs, summed exactly over the agents that played.
    metrics = {"total_payoff": Sum("payoff", where="played")}
    derived_metric_names = ("cooperation_rate", "mean_payoff", "mean_payoff_per_game",
                            "good_standing_share",
                            *(f"share_{s}" for s in STRATEGIES))
    summary_metrics = ("cooperation_rate", "mean_payoff", "switches",
                       *(f"share_{s}" for s in STRATEGIES))
    broadcast_fields = {"action": np.int8, "strategy": np.int8, "score": np.float64,
                        "good": np.int8}
    state = {"strategy": Column(np.int8),
             "action": Column(np.int8),      # the move of the round the next observe settles
             "payoff": Column(np.float64),   # the latest settled round's payoff
             # Reputation: the agent's own moves so far (the opening included), how many C.
             "moves": Column(np.int32, 1),
             "coop_moves": Column(np.int32)}
    smoke_config = {"steps": 15, "graph": {"kind": "watts_strogatz", "n": 300, "k": 4, "p": 0.1},
                    "env": {"kind": "games", "imitation": 0.1,
                            "strategies": {s: 0.25 for s in STRATEGIES}}}

    def __init__(self, config: GamesConfig, view: ShardView, setup: Mapping[str, np.ndarray]):
        super().__init__(config, view, setup)
        self.matrix = config.payoff_matrix()
        self.strategy[:] = self.initial_strategy(view.agents)
        self.action[:] = self.opening(self.strategy)  # round 0's move
        self.coop_moves[:] = self.action == 0
        self._pending: dict[str, np.ndarray] = {}

    def initial_strategy(self, agents: np.ndarray) -> np.ndarray:
        """The strategy codes ``agents`` (global ids) start with: a keyed draw per agent,
        so the same assignment whatever the sharding, and known to every shard."""
        cfg = self.config
        # In STRATEGIES order, so the order of the config's keys changes nothing.
        names = [s for s in STRATEGIES if s in cfg.strategies]
        shares = np.array([cfg.strategies[s] for s in names], dtype=np.float64)
        codes = np.array([STRATEGIES.index(s) for s in names], dtype=np.int8)
        u = self.view.rng.uniform("strategy", agents)
        cum = np.cumsum(shares / shares.sum())
        return codes[np.minimum(np.searchsorted(cum, u, side="right"), len(names) - 1)]

    @staticmethod
    def opening(strategy: np.ndarray) -> np.ndarray:
        """Round 0's move of each strategy code: D (1) for always_defect, C (0) otherwise."""
        return (strategy == STRATEGIES.index("always_defect")).astype(np.int8)

    def _openings(self) -> dict[str, np.ndarray]:
        """Round 0's moves of this shard's in-neighbours, as a step -1 broadcast would bring
        them (``row``, ``src``, ``action``, ``good``; no score: no round was played before)."""
        view = self.view
        src, row = view.in_edges()
        if view.faults is not None:
            keep = ~view.faults.lost(src, view.agents[row], -1)
            src, row = src[keep], row[keep]
        move = self.opening(self.initial_strategy(src))
        return {"row": row, "src": src, "action": move, "good": (move == 0).astype(np.int8)}

    def default_policy(self) -> tuple[str, dict]:
        c = self.config
        aspiration = float(self.matrix.mean()) if c.aspiration is None else c.aspiration
        return "game_strategies", {"aspiration": aspiration, "tft_threshold": c.tft_threshold,
                                   "imitation": c.imitation, "reputation": c.reputation}

    @classmethod
    def choice_spec(cls, config: GamesConfig) -> ChoiceSpec:
        # The label index is the move code, so the model's answer is the next move
        # as it stands; the payoffs are written into the default prompt as numbers.
        (cc, cd), (dc, dd) = config.payoff_matrix().tolist()
        rules = (f"A game pays you {cc:g} if you both cooperate, {cd:g} if you cooperate and "
                 f"they defect, {dc:g} if you defect and they cooperate, and {dd:g} if you "
                 "both defect.")
        if config.punishment is not None:
            p = config.punishment
            rules += (f" Everyone who cooperates fines each neighbour who defected {p.fine:g}, "
                      f"at a cost of {p.cost:g} to themselves.")
        standing = (" {good} of them are in good standing (they cooperated in at least half "
                    "of their moves so far)." if config.reputation else "")
        return ChoiceSpec(
            action="move", labels=MOVES, idle=0,
            fields=("neighbours", "coop", "defect", "good", "payoff", "action"),
            template=("You are {persona}.\nEach round you make one move, cooperate or defect, "
                      "and play it against each of your neighbours. " + rules + "\nLast "
                      "round {coop} of your {neighbours} neighbours cooperated and {defect} "
                      "defected, and you earned {payoff:g} in total." + standing + "\nYour "
                      "last moves: {memory}.\nYou can {actions}.\nYou choose to"),
        )

    # -- the round -----------------------------------------------------------

    def observe(self, step: int, inbox: Inbox) -> dict[str, np.ndarray]:
        view, n = self.view, self.view.n_local
        coop = np.zeros(n, dtype=np.int64)
        defect = np.zeros(n, dtype=np.int64)
        good = np.zeros(n, dtype=np.int64)
        best_score = np.full(n, -np.inf)
        best_strategy = np.full(n, -1, dtype=np.int8)
        best_src = np.full(n, -1, dtype=np.int64)
        b = inbox.broadcast
        got = b.take() if b is not None and len(b) else self._openings() if step == 0 else None
        if got is not None:
            rows, move = got["row"], got["action"]
            coop = np.bincount(rows[move == 0], minlength=n)
            defect = np.bincount(rows[move == 1], minlength=n)
            good = np.bincount(rows[got["good"] == 1], minlength=n)
            if self.config.imitation > 0 and "score" in got:
                # Best neighbour: highest score, ties by the smallest sender id;
                # sorting makes it independent of arrival order.
                order = np.lexsort((got["src"], -got["score"], rows))
                r = rows[order]
                first = np.ones(r.shape[0], dtype=bool)
                first[1:] = r[1:] != r[:-1]
                win = order[first]
                best_score[rows[win]] = got["score"][win]
                best_strategy[rows[win]] = got["strategy"][win]
                best_src[rows[win]] = got["src"][win]
        neighbours = coop + defect
        # Settle this step's round: counts times payoffs, exact and order-free.
        own_score = self.payoff.copy()  # last round's: the round the neighbours' scores are of
        played = (self.action >= 0) & (neighbours > 0)
        a = np.maximum(self.action, 0)
        payoff = coop * self.matrix[a, 0] + defect * self.matrix[a, 1]
        punishments = 0
        if self.config.punishment is not None:
            p = self.config.punishment
            cooperated = a == 0
            payoff -= np.where(cooperated, p.cost * defect, p.fine * coop)
            punishments = int(defect[cooperated & played].sum())
        self.payoff[:] = np.where(played, payoff, 0.0)
        self._pending = {"played": played, "best_src": best_src,
                         "games": int(neighbours[played].sum()), "punishments": punishments}
        return {
            # A copy: the shard's id array may be read-only (Ray's object store),
            # which torch warns about when it wraps it.
            "agent": view.agents.copy(),
            "strategy": self.strategy,
            "action": self.action,
            "neighbours": neighbours,
            "coop": coop,
            "defect": defect,  # for LLM-style agents' prompts (the rule reads coop)
            "good": good,
            "payoff": self.payoff,
            "own_score": own_score,
            "best_score": best_score,
            "best_strategy": best_strategy,
        }

    def _next_round(self, actions: dict) -> tuple[np.ndarray, np.ndarray]:
        """Each agent's strategy and move for the next round, from the rule's rows
        (``strategy``, ``action``; ``move`` -1) and the LLM-style agents' (``move``
        0 or 1, their strategy kept).

        In a mixed population a group's rows read -1 in the columns only the other
        group returns (``Population``), so ``move`` -1 tells the rule's rows apart; a
        population of LLM-style agents only gives ``move``.
        """
        move = actions.get("move")
        chosen = (np.full(self.view.n_local, -1, np.int8) if move is None
                  else as_numpy(move).astype(np.int8))
        llm = chosen >= 0
        strategy, action = self.strategy, chosen
        if "strategy" in actions:
            strategy = np.where(llm, self.strategy, as_numpy(actions["strategy"]).astype(np.int8))
        if "action" in actions:
            action = np.where(llm, chosen, as_numpy(actions["action"]).astype(np.int8))
        return strategy, action.astype(np.int8, copy=False)

    def apply(self, step: int, batch: dict[str, np.ndarray], actions: dict) -> StepResult:
        view, pend = self.view, self._pending
        names = np.array(STRATEGIES, dtype=object)
        new_strategy, next_move = self._next_round(actions)
        switched = np.flatnonzero(new_strategy != self.strategy)
        parts = []
        # This step's round (its moves, strategies and payoffs), before the next is chosen.
        if view.log_due(step, self.config.log_every):
            rows = np.flatnonzero(pend["played"])
            parts.append(make_events(
                np.full(rows.shape[0], self.event_code("payoff"), np.int8), view.agents[rows],
                item=self.action[rows].astype(np.int64), value=self.payoff[rows],
                strategy=names[self.strategy[rows]]))
        if switched.shape[0]:
            parts.append(make_events(
                np.full(switched.shape[0], self.event_code("switch"), np.int8),
                view.agents[switched], target=pend["best_src"][switched],
                value=np.asarray(batch["best_score"])[switched],
                strategy=names[new_strategy[switched]]))
        if parts:
            events = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        else:
            events = make_events(np.empty(0, np.int8), np.empty(0, np.int64),
                                 strategy=np.empty(0, dtype=object))
        counts = np.bincount(self.strategy, minlength=len(STRATEGIES))
        played = pend["played"]
        metrics = {
            "players": view.n_local,
            "cooperators": int((self.action == 0).sum()),
            "games": pend["games"],
            "punishments": pend["punishments"],
            "switches": int(switched.shape[0]),
            # Standing after this round's move (ties are good standing).
            "good_standing": int((2 * self.coop_moves >= self.moves).sum()),
            **{f"count_{s}": int(c) for s, c in zip(STRATEGIES, counts, strict=True)},
        }
        self._pending = {}
        # The next round: the policy's strategy and move, sent with this round's payoff.
        self.strategy[:] = new_strategy
        self.action[:] = next_move
        self.moves += 1
        self.coop_moves += self.action == 0
        good = (2 * self.coop_moves >= self.moves).astype(np.int8)
        return StepResult(
            events=events, messages=None, active=view.n_local, metrics=metrics,
            broadcasts={"src": view.agents, "action": self.action.copy(),
                        "strategy": self.strategy.copy(), "score": self.payoff.copy(),
                        "good": good},
            values={"played": played},
        )

    @classmethod
    def derive_metrics(cls, totals: Mapping[str, float],
                       config: EnvConfig | None = None) -> dict[str, float]:
        players = totals["players"]
        payoff = totals["total_payoff"]
        out = {
            "cooperation_rate": totals["cooperators"] / players if players else 0.0,
            "mean_payoff": payoff / players if players else 0.0,
            "mean_payoff_per_game": payoff / totals["games"] if totals["games"] else 0.0,
            "good_standing_share": totals["good_standing"] / players if players else 0.0,
        }
        out.update({f"share_{s}": totals[f"count_{s}"] / players if players else 0.0
                    for s in STRATEGIES})
        return {k: float(v) for k, v in out.items()}
