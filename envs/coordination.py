"""AgentsNet's coordination tasks on a graph, at any size and under faults.

One env, five tasks (``task``), after AgentsNet (Grötschla et al., 2025; the
repository floriangroetschla/AgentsNet): agents sit on an undirected graph,
talk only to their neighbours in synchronous rounds, and each ends with an
answer. AgentsNet's agents send text; here a message is a small record (a
kind and a number), and an LLM-style agent's message is its current answer.

========================  ==========================================  =====================
task                      answer (``answer`` events: ``item``)        rule (the baseline)
========================  ==========================================  =====================
``colouring``             a group 0 .. k-1; k = Δ + 1 (AgentsNet)     ``delta_colouring``
``vertex_cover``          1: a coordinator (in the cover), 0: not     ``matching_cover``
``matching``              the partner's id, -1: none                  ``israeli_itai``
``leader_election``       the leader's id (its own id: "I lead")      ``floodmax``
``consensus``             0 or 1                                      ``flooding``
========================  ==========================================  =====================

An agent logs an ``answer`` event whenever its answer changes, so its final
answer is its last one; ``swarm.analysis.agentsnet`` validates a run from its
events and graph alone (the success criteria are there). Consensus agents
also log their initial value (``propose``, step 0), and adversaries are
listed at step 0 (``adversary``: 1 Byzantine, 2 Sybil).

**Rounds.** AgentsNet's rule (its ``main.py``): ``2 D + 1`` message rounds,
``D`` the graph's diameter, for consensus and leader election, and for the
other tasks once ``n > 16``; below that, 4, 5 or 6 rounds for ``n`` up to 4,
8 or 16 (their ``main.sh``). Agents send at steps ``0 .. R - 1`` and answer at
step ``R`` (the last messages arrive then); ``rounds: until_done`` drops the
budget (the classical algorithms then run until every agent is settled, the
run's ``steps`` at most), and an integer sets it. At scale the exact diameter
is out of reach: ``D`` is the double-sweep BFS bound
(``swarm.graph.double_sweep_diameter``): the eccentricity of a node found
farthest from node 0, a lower bound on ``D`` that is usually exact and never
below ``D / 2``, so ``2 D + 1`` rounds still let a flood cross the graph. The
driver builds the whole graph once for it (and for Δ); give ``diameter`` (and
``colours``) to skip that.

**The baselines** (rules in ``swarm.policies.coordination``; the env keeps the
per-edge bookkeeping and offers each agent keyed random draws, the rules
choose):

* colouring: randomized (Δ + 1) colouring. Each round an unsettled agent
  either fixes the tentative group it announced last round, when no neighbour
  announced the same one (tentative or fixed), or announces a new tentative
  group drawn uniformly from those no neighbour has fixed. O(log n) rounds.
* matching: Israeli–Itai, in phases of three rounds: every unmatched agent
  proposes to a random unmatched neighbour; every agent proposed to accepts
  one proposal at random; the accepted proposals form paths and cycles, in
  which every agent chooses one of its (at most two) edges at random, and an
  edge both ends chose is matched. Matched agents tell their neighbours; an
  agent whose neighbours are all matched or settled answers "none".
* vertex cover: the endpoints of that maximal matching (a 2-approximation),
  then pruned to a minimal cover, as AgentsNet scores it: once all its
  neighbours are settled, a coordinator whose neighbours are all
  coordinators is redundant; it announces so, and leaves the cover when no
  redundant neighbour has a smaller id (so no two neighbours leave at once).
* leader election: min-id flooding (FloodMax with the smallest id): every
  agent floods the smallest id it has heard; after ``R`` rounds all name it.
* consensus: flooding of the smallest proposal (each agent proposes a keyed
  0 or 1); every agent ends on a value some agent proposed.

By default (``schedule: news``) only agents with something to do take part
in a round: the unsettled ones, and in the flooding tasks those that heard a
smaller value; the others would repeat themselves. ``schedule: every_round``
asks every agent every round, as AgentsNet does its LLM agents.

**LLM-style agents** choose their answer every round and announce it to
their neighbours; their prompts carry what the neighbours announced last
round (counts and a few ids, below), and their last round's choice is their
final answer. Labels: ``Group 1`` .. ``Group k`` (k = ``colours``, or 8 when
it is left to the graph), ``yes`` / ``no`` (vertex cover, leader election:
"no" names the smallest id heard), ``none`` / ``1`` .. ``8`` (matching: the
neighbour of that rank by id, among the first eight), ``0`` / ``1``. With
prompt dedup, agents in equal situations share one model call. The tiny
random-weight model of the tests answers at random, so its scores mean
nothing.

**Faults.** Drop, delay, partition and crash come from the engine's
injection. Adversaries (``byzantine``, ``sybil``: keyed shares of the agents)
are the env's and never go through a policy; they are excluded from
validation. Their lies, per task:

* colouring: every round each announces a fixed group drawn afresh (all of
  a Sybil controller's identities the same one), which neighbours must avoid;
* matching, vertex cover: each accepts every proposal and chooses every
  proposer, so honest agents match with it and never look further;
* leader election: each floods an id that no agent has (a Sybil controller's
  identities the same one), smaller than every real id;
* consensus: min-flooding has no lie that moves an honest agent off a valid
  value (0, the smallest, is what it converges to); adversaries withhold,
  relaying nothing, which cuts paths as a crash does.

Metrics per step: ``changed`` (answers changed), ``working`` (honest agents
not settled), ``adversaries``; constants ``rounds_budget`` (0: none),
``diameter_lower``, ``diameter_upper`` and ``colours``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from swarm.contract import as_numpy
from swarm.envs.base import (
    ChoiceSpec,
    Column,
    Env,
    Inbox,
    ShardView,
    StepResult,
    make_events,
    register_env,
)
from swarm.envs.consensus import AdversaryConfig, _adversaries

__all__ = ["LLM_LABELS", "MAX_LABELS", "RULES", "TASKS", "Coordination", "CoordinationConfig",
           "agentsnet_rounds"]

TASKS = ("colouring", "vertex_cover", "matching", "leader_election", "consensus")
#: Each task's classical algorithm (its rule's key in ``swarm.registry.POLICIES``).
RULES = {"colouring": "delta_colouring", "vertex_cover": "matching_cover",
         "matching": "israeli_itai", "leader_election": "floodmax", "consensus": "flooding"}
#: The most groups (colouring) or neighbours (matching) an LLM-style agent chooses among.
MAX_LABELS = 8
#: LLM-style agents' labels per task (colouring's are ``Group 1`` .. ``Group k``).
LLM_LABELS = {"vertex_cover": ("no", "yes"), "leader_election": ("no", "yes"),
              "consensus": ("0", "1"),
              "matching": ("none", *map(str, range(1, MAX_LABELS + 1)))}

# Broadcast kinds (``kind``); ``a`` is the number a message carries.
_TENTATIVE, _FIXED = 1, 2              # colouring: a group
_MATCHED, _UNMATCHED = 3, 4            # matching: settled in / out
_CANDIDATE, _WITHDRAW, _LEFT = 5, 6, 7  # vertex cover pruning
_VALUE = 8                             # flooding: an id or a value
_NAME = 9                              # matching, vertex cover: an LLM-style agent's answer
# Direct kinds (Israeli–Itai).
_PROPOSE, _ACCEPT, _CHOOSE = 1, 2, 3
# A neighbour's state as an agent knows it (per CSR position; matching, vertex cover).
_LIVE, _IN, _OUT, _GONE, _CAND = 0, 1, 2, 3, 4
_NONE = np.iinfo(np.int64).max  # "heard nothing" in a min


def agentsnet_rounds(task: str, n: int, diameter: int) -> int:
    """AgentsNet's message rounds for ``task`` on ``n`` agents with diameter ``diameter``.

    >>> agentsnet_rounds("consensus", 8, 3), agentsnet_rounds("matching", 8, 3)
    (7, 5)
    >>> agentsnet_rounds("colouring", 100, 6)
    13
    """
    if task in ("consensus", "leader_election") or n > 16:
        return 2 * diameter + 1
    return 4 if n <= 4 else 5 if n <= 8 else 6


class CoordinationConfig(AdversaryConfig):
    """The task, its round budget, and the adversaries (``byzantine``, ``sybil``)."""

    kind: Literal["coordination"] = "coordination"
    applies_to = {"task": {"colouring": {"colours"}}}
    task: Literal["colouring", "vertex_cover", "matching", "leader_election",
                  "consensus"] = "consensus"
    """Which of AgentsNet's five tasks (module docstring)."""
    rounds: Annotated[int, Field(ge=1)] | Literal["agentsnet", "until_done"] = "agentsnet"
    """Message rounds: AgentsNet's rule from the diameter, none (``until_done``: until every
    agent is settled, the run's ``steps`` at most), or a number."""
    diameter: int | None = Field(None, ge=0)
    """The diameter AgentsNet's rule uses; default the double-sweep BFS bound of the graph
    (the driver builds the whole graph for it)."""
    colours: int | None = Field(None, ge=1)
    """colouring: the groups allowed; default Δ + 1 (AgentsNet's rule)."""
    schedule: Literal["news", "every_round"] = "news"
    """Who takes part in a round: agents with something to do (``news``), or all
    (``every_round``, as AgentsNet asks its LLM agents)."""


def _segments(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and lengths of the runs of equal values in sorted ``keys``."""
    if not keys.size:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    return starts, np.diff(np.append(starts, keys.size))


def _at(rows: np.ndarray, r: np.ndarray, values, fill) -> np.ndarray:
    """``values`` of the pairs (``r``, value) placed at the positions of sorted ``rows`` (the
    batch), ``fill`` elsewhere: per-batch columns without an array over every agent."""
    out = np.full(rows.shape[0], fill, np.int64)
    if not r.size or not rows.size:
        return out
    idx = np.minimum(np.searchsorted(rows, r), rows.shape[0] - 1)
    ok = rows[idx] == r
    out[idx[ok]] = np.broadcast_to(values, r.shape)[ok]
    return out


def _count(rows: np.ndarray, r: np.ndarray) -> np.ndarray:
    """How often each of sorted ``rows`` occurs in ``r``."""
    if not r.size:
        return np.zeros(rows.shape[0], np.int64)
    r = np.sort(r)
    starts, counts = _segments(r)
    return _at(rows, r[starts], counts, 0)


@register_env
class Coordination(Env):
    """AgentsNet's five coordination tasks with classical baselines (module docstring)."""

    name = "coordination"
    Config = CoordinationConfig
    event_types = ("answer", "propose", "adversary")
    actions = ("colour", "fix", "target", "leave", "best", "choice")
    metric_names = ("changed", "working", "adversaries", "rounds_budget", "diameter_lower",
                    "diameter_upper", "colours")
    summary_metrics = ("working",)
    broadcast_fields = {"a": np.int64, "kind": np.int8}
    message_fields = {"src": np.int64, "kind": np.int8}
    state = {"answer": Column(np.int64, -1),
             "settled": Column(bool),
             "fixed": Column(bool),           # colouring: the group is final
             "partner": Column(np.int64, -1),  # matching: -1 none
             "prop": Column(np.int64, -1),     # this phase: whom I proposed to
             "acc": Column(np.int64, -1),      # whose proposal I accepted
             "chosen": Column(np.int64, -1),   # the edge I chose
             "live": Column(np.int64),         # neighbours still unmatched
             "outs": Column(np.int64),         # neighbours out of the cover
             "cand": Column(bool),             # vertex cover: announced redundant
             "best": Column(np.int64),         # flooding: the smallest value heard
             "heard_best": Column(np.int64, _NONE)}  # leader: smallest other id heard
    state_attrs = ("nbr", "taken_row", "taken_col")
    state_bytes_per_agent = 40  # per-edge neighbour states (~6 edges) and taken groups
    smoke_config = {"steps": 30,
                    "graph": {"kind": "watts_strogatz", "n": 200, "k": 4, "p": 0.4},
                    "env": {"kind": "coordination", "task": "matching",
                            "rounds": "until_done"}}

    # -- set-up ----------------------------------------------------------------

    @classmethod
    def prepare(cls, config: CoordinationConfig, n: int, rng) -> dict[str, np.ndarray]:
        d = -1 if config.diameter is None else config.diameter
        return {"n": np.array([n], np.int64), "diameter": np.array([d, d], np.int64),
                "max_degree": np.array([-1], np.int64)}

    @classmethod
    def needs_graph(cls, config: CoordinationConfig) -> bool:
        return ((config.rounds == "agentsnet" and config.diameter is None)
                or (config.task == "colouring" and config.colours is None))

    @classmethod
    def prepare_graph(cls, config: CoordinationConfig, graph) -> dict[str, np.ndarray]:
        from swarm.graph import double_sweep_diameter

        deg = np.diff(graph.indptr)
        out = {"max_degree": np.array([int(deg.max()) if deg.size else 0], np.int64)}
        if config.diameter is None:
            lo, hi = double_sweep_diameter(graph.indptr, graph.indices)
            out["diameter"] = np.array([lo, hi], np.int64)
        return out

    @classmethod
    def budget(cls, config: CoordinationConfig, setup: Mapping[str, np.ndarray]) -> int:
        """The message rounds of a run (0: no budget)."""
        if config.rounds == "until_done":
            return 0
        if config.rounds != "agentsnet":
            return int(config.rounds)
        d = int(setup["diameter"][0])
        if d < 0:
            raise ValueError("rounds: agentsnet needs the graph's diameter: give env.diameter "
                             "or let the driver build the graph")
        return agentsnet_rounds(config.task, int(setup["n"][0]), d)

    @classmethod
    def groups(cls, config: CoordinationConfig, setup: Mapping[str, np.ndarray]) -> int:
        """colouring: the groups allowed (``colours``, else Δ + 1)."""
        if config.colours is not None:
            return int(config.colours)
        delta = int(setup["max_degree"][0])
        if delta < 0:
            raise ValueError("colouring needs the graph's maximum degree: give env.colours or "
                             "let the driver build the graph")
        return delta + 1

    def __init__(self, config: CoordinationConfig, view: ShardView,
                 setup: Mapping[str, np.ndarray]):
        super().__init__(config, view, setup)
        n, ids = view.n_local, view.agents
        self.N = int(setup["n"][0])
        self.R = self.budget(config, setup)
        self.k = self.groups(config, setup) if config.task == "colouring" else 0
        self.byz, self.sybil, self.controller = _adversaries(config, ids, view.rng)
        self.adv = self.byz | self.sybil
        self.deg = np.diff(view.indptr).astype(np.int64)
        self.live[:] = self.deg
        self.nbr = np.zeros(view.indices.shape[0], np.int8)
        self.taken_row = np.empty(0, np.int64)
        self.taken_col = np.empty(0, np.int64)
        if config.task == "leader_election":
            self.best[:] = ids
        elif config.task == "consensus":
            self.best[:] = (view.rng.bits("coordination_value", ids) & np.uint64(1)
                            ).astype(np.int64)
        # CSR positions by (row, neighbour): to find where a message's sender sits.
        self._ekey = np.repeat(np.arange(n, dtype=np.int64), self.deg) * self.N + \
            view.indices.astype(np.int64)
        self._eorder = None
        if self._ekey.size > 1 and (np.diff(self._ekey) < 0).any():
            self._eorder = np.argsort(self._ekey, kind="stable")
            self._ekey = self._ekey[self._eorder]
        self._todo = self._unsettled()
        self._rows = np.empty(0, np.int64)
        self._news: dict[str, np.ndarray] = {}
        self._heard_min = self._heard = self._heard0 = None  # flooding's scratch

    def _unsettled(self) -> np.ndarray:
        return np.flatnonzero(~self.settled)

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        super().load_state_dict(state)
        self._todo = self._unsettled()

    # -- LLM-style agents ----------------------------------------------------------

    @classmethod
    def observation_schema(cls, config: CoordinationConfig) -> tuple[str, ...]:
        common = ("agent", "mine", "nbrs", "rounds_left")
        if config.task == "colouring":
            return (*common, "clash", "free_pick", "lowest_free", "colours", "group",
                    "free_group")
        if config.task in ("matching", "vertex_cover"):
            return (*common, "phase", "pick", "offer", "h_pick", "may_leave", "named_me",
                    "first_namer", "unnamed", "said_yes", "said_no",
                    *(f"nbr{i}" for i in range(1, MAX_LABELS + 1)))
        return (*common, "best", "heard_min", "heard", "heard0", "heard1", "smallest_heard")

    @classmethod
    def action_schema(cls, config: CoordinationConfig) -> tuple[str, ...]:
        return cls.actions

    @classmethod
    def choice_spec(cls, config: CoordinationConfig) -> ChoiceSpec:
        task = config.task
        intro = ("You are {persona}, one of a network of agents; you talk only with your "
                 "{nbrs} neighbours, in rounds. {rounds_left} rounds are left. ")
        if task == "colouring":
            k = config.colours or MAX_LABELS
            labels = tuple(f"Group {i}" for i in range(1, k + 1))
            return ChoiceSpec(
                action="choice", labels=labels, idle=0,
                fields=("nbrs", "rounds_left", "group", "clash", "free_group"),
                template=intro + (
                    "Neighbours must never be in the same group. You are in Group {group} "
                    "(0: none yet); {clash} neighbours announced the same group; the lowest "
                    "group no neighbour has fixed is Group {free_group} (0: none).\nYour "
                    "last choices: {memory}.\nYou can pick {actions}.\nYou pick"))
        if task in ("matching", "vertex_cover"):
            nbrs = ", ".join(f"{i}: {{nbr{i}}}" for i in range(1, MAX_LABELS + 1))
            if task == "matching":
                return ChoiceSpec(
                    action="choice", labels=LLM_LABELS["matching"], idle=0,
                    fields=("nbrs", "rounds_left", "mine", "named_me", "first_namer",
                            "unnamed", *(f"nbr{i}" for i in range(1, MAX_LABELS + 1))),
                    template=intro + (
                        "Form pairs with one neighbour each, who must name you back; name "
                        "none only if all your neighbours are taken. Your neighbours (-1: "
                        "none) are " + nbrs + ". Last round {named_me} neighbours named you "
                        "(the first: number {first_namer}, 0: none) and {unnamed} named "
                        "nobody. You named agent {mine} (-1: none).\nYour last choices: "
                        "{memory}.\nYou can answer {actions}.\nYou answer"))
            return ChoiceSpec(
                action="choice", labels=LLM_LABELS["vertex_cover"], idle=0,
                fields=("nbrs", "rounds_left", "mine", "said_yes", "said_no"),
                template=intro + (
                    "Choose coordinators so that of every two neighbours at least one is a "
                    "coordinator, and every coordinator has a neighbour who is not. Last "
                    "round {said_yes} neighbours said they coordinate and {said_no} said "
                    "they do not. You said {mine} (1: yes, 0: no, -1: nothing yet).\nYour "
                    "last choices: {memory}.\nAre you a coordinator? Answer {actions}.\n"
                    "You answer"))
        if task == "leader_election":
            return ChoiceSpec(
                action="choice", labels=LLM_LABELS["leader_election"], idle=0,
                fields=("agent", "nbrs", "rounds_left", "smallest_heard"),
                template=intro + (
                    "Elect exactly one leader. Your id is {agent}; the smallest other id you "
                    "have heard of is {smallest_heard} (-1: none yet).\nYour last choices: "
                    "{memory}.\nAre you the leader? Answer {actions}.\nYou answer"))
        return ChoiceSpec(
            action="choice", labels=LLM_LABELS["consensus"], idle=0,
            fields=("nbrs", "rounds_left", "best", "heard0", "heard1"),
            template=intro + (
                "All of you must agree on 0 or 1. Your value is {best}; last round {heard0} "
                "neighbours said 0 and {heard1} said 1.\nYour last choices: {memory}.\nYou "
                "can say {actions}.\nYou say"))

    def default_policy(self):
        return RULES[self.config.task], {}

    # -- the round -------------------------------------------------------------------

    def _positions(self, rows: np.ndarray, src: np.ndarray) -> np.ndarray:
        """CSR positions of ``src`` among the neighbours of local ``rows`` (-1: not one)."""
        key = rows.astype(np.int64) * self.N + src.astype(np.int64)
        at = np.searchsorted(self._ekey, key)
        ok = at < self._ekey.size
        ok[ok] = self._ekey[at[ok]] == key[ok]
        pos = at if self._eorder is None else self._eorder[np.minimum(at, self._eorder.size - 1)]
        return np.where(ok, pos, -1)

    def _choose(self, stream: str, rows: np.ndarray, cand: np.ndarray, step: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One keyed uniform pick among each row's candidates (global ids or codes >= 0):
        (rows, pick, candidates per row); independent of arrival order."""
        key = rows.astype(np.int64) * self.N + cand.astype(np.int64)
        key.sort()
        starts, counts = _segments(key // self.N)
        r = key[starts] // self.N
        draw = (self.view.rng.bits(stream, self.view.agents[r], step=step)
                % counts.astype(np.uint64)).astype(np.int64)
        return r, key[starts + draw] % self.N, counts

    def _arrivals(self, inbox: Inbox) -> dict[str, np.ndarray]:
        b = inbox.broadcast
        if b is None or not len(b):
            return {"row": np.empty(0, np.int64), "src": np.empty(0, np.int64),
                    "a": np.empty(0, np.int64), "kind": np.empty(0, np.int8)}
        got = b.take(fields=("src", "a", "kind"))
        got["row"] = got["row"].astype(np.int64)
        return got

    def _direct(self, inbox: Inbox) -> dict[str, np.ndarray]:
        d = inbox.direct
        if d is None or not d["dst"].shape[0]:
            return {"row": np.empty(0, np.int64), "src": np.empty(0, np.int64),
                    "kind": np.empty(0, np.int8)}
        return {"row": self.view.local_index(d["dst"]).astype(np.int64),
                "src": d["src"].astype(np.int64), "kind": d["kind"]}

    def _batch_rows(self, rows: np.ndarray, step: int) -> np.ndarray:
        """The rows asked this round: ``rows`` (honest, with something to do), or every
        honest row (``every_round``), none once the budget is spent."""
        if self.R and step > self.R:
            return np.empty(0, np.int64)
        if self.config.schedule == "every_round":
            rows = np.arange(self.view.n_local)
        return rows[~self.adv[rows]]

    def observe(self, step: int, inbox: Inbox) -> dict[str, np.ndarray]:
        got, direct = self._arrivals(inbox), self._direct(inbox)
        task = self.config.task
        if task == "colouring":
            rows, cols = self._observe_colouring(step, got)
        elif task in ("matching", "vertex_cover"):
            rows, cols = self._observe_matching(step, got, direct)
        else:
            rows, cols = self._observe_flooding(step, got)
        self._rows = rows
        n = rows.shape[0]
        left = (self.R - step) if self.R else -1
        batch = {"agent": self.view.agents[rows], "mine": self.answer[rows],
                 "nbrs": self.deg[rows], "rounds_left": np.full(n, left, np.int64)}
        batch.update(cols)
        return batch

    # colouring -----------------------------------------------------------------

    def _observe_colouring(self, step: int, got: dict) -> tuple[np.ndarray, dict]:
        colours = (got["kind"] == _TENTATIVE) | (got["kind"] == _FIXED)
        fixed = got["kind"] == _FIXED
        if fixed.any():  # neighbours' fixed groups, kept while the receiver is unsettled
            keep = fixed & ~self.settled[got["row"]]
            self.taken_row = np.concatenate([self.taken_row, got["row"][keep]])
            self.taken_col = np.concatenate([self.taken_col, got["a"][keep]])
        rows = self._batch_rows(self._todo, step)
        keep = ~self.settled[self.taken_row]  # only unsettled agents need them
        self.taken_row, self.taken_col = self.taken_row[keep], self.taken_col[keep]
        k = self.k
        # Distinct (row, group) pairs of fixed groups, sorted: the groups a row must avoid.
        tk = np.sort(self.taken_row * (k + 1) + np.clip(self.taken_col, 0, k))
        if tk.size:
            tk = tk[np.concatenate([[True], tk[1:] != tk[:-1]])]
        t_row, t_col = tk // (k + 1), tk % (k + 1)
        t_in = t_col < k
        t_row, t_col = t_row[t_in], t_col[t_in]
        starts, counts = _segments(t_row)
        rank = np.arange(t_row.size) - np.repeat(starts, counts)
        # s = group - rank is non-decreasing within a row: the r-th free group is
        # r + #{s <= r} (so a searchsorted over (row, s) finds it for every row at once).
        skey = t_row * (k + 1) + (t_col - rank)
        free = k - _at(rows, t_row[starts], counts, 0)

        def kth_free(r: np.ndarray) -> np.ndarray:
            base = rows * (k + 1)
            return r + np.searchsorted(skey, base + r, side="right") - \
                np.searchsorted(skey, base, side="left")

        draw = self.view.rng.bits("coordination_colour", self.view.agents[rows], step=step)
        r = (draw % np.maximum(free, 1).astype(np.uint64)).astype(np.int64)
        pick = np.where(free > 0, kth_free(r), -1)
        lowest = np.where(free > 0, kth_free(np.zeros(rows.shape[0], np.int64)), -1)
        # Clashes: neighbours announcing my group this round, or having fixed it.
        mine = self.answer[rows]
        same = colours & (got["a"] == self.answer[got["row"]]) & (got["a"] >= 0)
        clash_n = _count(rows, got["row"][same])
        # ... or having fixed it: (row, mine) among the sorted (row, group) pairs.
        tcomb = t_row * (k + 1) + t_col
        q = rows * (k + 1) + mine
        at = np.searchsorted(tcomb, q)
        fixed_mine = (mine >= 0) & (at < tcomb.size)
        fixed_mine[fixed_mine] = tcomb[at[fixed_mine]] == q[fixed_mine]
        clash = clash_n + fixed_mine
        return rows, {"clash": clash.astype(np.int64), "free_pick": pick,
                      "lowest_free": lowest, "colours": np.full(rows.shape[0], k, np.int64),
                      # 1-based, as the labels: what LLM-style agents' prompts show
                      "group": mine + 1, "free_group": lowest + 1}

    def _apply_colouring(self, step: int, rows: np.ndarray, actions: dict):
        choice = self._col(actions, "choice", rows.shape[0])
        llm = choice >= 0
        colour = np.where(llm, choice, self._col(actions, "colour", rows.shape[0]))
        colour = np.where(self.fixed[rows], self.answer[rows], colour)  # final stays final
        fix = ~llm & (self._col(actions, "fix", rows.shape[0]) > 0) & (colour >= 0)
        changed = colour != self.answer[rows]
        self.answer[rows] = colour
        self.fixed[rows] |= fix
        self.settled[rows] |= fix
        sends = not self.R or step < self.R
        src, a, kind = rows, colour, np.where(fix, _FIXED, _TENTATIVE).astype(np.int8)
        out = self._adversary_colours(step)
        b = None
        if sends:
            ok = a >= 0
            b = (np.concatenate([src[ok], out[0]]), np.concatenate([a[ok], out[1]]),
                 np.concatenate([kind[ok], np.full(out[0].shape[0], _FIXED, np.int8)]))
        return rows[changed], colour[changed], b

    def _adversary_colours(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        rows = np.flatnonzero(self.adv)
        if not rows.size or (self.R and step >= self.R):
            return np.empty(0, np.int64), np.empty(0, np.int64)
        ids = self.view.agents[rows]
        key = np.where(self.sybil[rows], self.N + self.controller[rows], ids)
        g = (self.view.rng.bits("coordination_lie", key, step=step) % np.uint64(self.k))
        return rows, g.astype(np.int64)

    # matching and vertex cover -------------------------------------------------

    def _observe_matching(self, step: int, got: dict, direct: dict
                          ) -> tuple[np.ndarray, dict]:
        view = self.view
        vc = self.config.task == "vertex_cover"
        # What neighbours announced: settled in or out, pruning, LLM-style names.
        code = {_MATCHED: _IN, _UNMATCHED: _OUT, _CANDIDATE: _CAND, _WITHDRAW: _IN,
                _LEFT: _GONE}
        rows = self._todo
        brows = self._batch_rows(rows, step)  # the batch (sorted)
        zeros = np.zeros(brows.shape[0], np.int64)
        named_me = first_namer = unnamed = said_yes = said_no = zeros
        for kind, new in code.items():
            sel = got["kind"] == kind
            if not sel.any():
                continue
            at, pos = got["row"][sel], self._positions(got["row"][sel], got["src"][sel])
            ok = pos >= 0
            at, pos = at[ok], pos[ok]
            was = self.nbr[pos]
            if new in (_IN, _OUT):
                np.subtract.at(self.live, at[was == _LIVE], 1)
            if new in (_OUT, _GONE):
                np.add.at(self.outs, at, 1)
            self.nbr[pos] = new
        names = got["kind"] == _NAME
        if names.any():  # LLM-style agents' answers
            nr, na = got["row"][names], got["a"][names]
            said_yes, said_no = _count(brows, nr[na == 1]), _count(brows, nr[na == 0])
            me = view.agents[nr] == na
            named_me, unnamed = _count(brows, nr[me]), _count(brows, nr[na < 0])
            first_namer = self._rank_of(brows, nr[me], got["src"][names][me])
        phase = step % 3
        self._news = {}
        pick = offer = h_pick = np.full(brows.shape[0], -1, np.int64)
        may_leave = zeros
        d = direct
        if phase == 0:
            # CHOOSE messages of the last phase: an edge both ends chose is matched.
            ch = d["kind"] == _CHOOSE
            r, x = d["row"][ch], d["src"][ch]
            hit = (self.chosen[r] == x) & (self.partner[r] < 0) & ~self.adv[r]
            newly = r[hit]
            self.partner[newly] = x[hit]
            self._news["matched"] = newly
            self.prop[rows], self.acc[rows], self.chosen[rows] = -1, -1, -1
            free = rows[(self.partner[rows] < 0) & ~self.adv[rows]]
            alone = free[self.live[free] == 0]
            self._news["alone"] = alone
            seek = free[self.live[free] > 0]
            starts, counts = view.indptr[seek], self.deg[seek]
            from swarm.graph import ragged_arange

            pos = ragged_arange(starts, counts)
            owner = np.repeat(seek, counts)
            live = self.nbr[pos] == _LIVE
            if live.any():
                r, c, _ = self._choose("coordination_propose", owner[live],
                                       view.indices[pos[live]].astype(np.int64), step)
                pick = _at(brows, r, c, -1)
        elif phase == 1:
            pr = (d["kind"] == _PROPOSE) & (self.partner[d["row"]] < 0)
            if pr.any():
                r, c, _ = self._choose("coordination_accept", d["row"][pr], d["src"][pr], step)
                offer = _at(brows, r, c, -1)
                self._news["offers"] = (d["row"][pr], d["src"][pr])
        else:
            ac = d["kind"] == _ACCEPT
            r, x = d["row"][ac], d["src"][ac]
            ok = self.prop[r] == x  # my proposal was accepted: an edge of mine
            took = rows[self.acc[rows] >= 0]  # I accepted a proposal: the other edge
            cand_r = np.concatenate([r[ok], took])
            cand_x = np.concatenate([x[ok], self.acc[took]])
            if cand_r.size:
                r2, c2, _ = self._choose("coordination_choose", cand_r, cand_x, step)
                h_pick = _at(brows, r2, c2, -1)
            self._news["accepted_by"] = (r, x)
        if vc:
            may_leave = _at(brows, self._prune_state(rows), 1, 0)
        rows = brows
        nbr_ids = self._first_neighbours(rows)
        cols = {"phase": np.full(rows.shape[0], phase, np.int64), "pick": pick,
                "offer": offer, "h_pick": h_pick, "may_leave": may_leave,
                "named_me": named_me, "first_namer": first_namer,
                "unnamed": unnamed, "said_yes": said_yes, "said_no": said_no}
        cols.update({f"nbr{i + 1}": nbr_ids[:, i] for i in range(MAX_LABELS)})
        return rows, cols

    def _rank_of(self, batch: np.ndarray, rows: np.ndarray, src: np.ndarray) -> np.ndarray:
        """Per batch row, the 1-based rank (by id, among its first ``MAX_LABELS``
        neighbours) of the lowest-ranked ``src`` naming it (pairs ``rows``, ``src``); 0:
        none."""
        pos = self._positions(rows, src)
        ok = pos >= 0
        rank = pos[ok] - self.view.indptr[rows[ok]] + 1
        ok2 = rank <= MAX_LABELS
        r, k = rows[ok][ok2], rank[ok2]
        order = np.lexsort((k, r))
        r, k = r[order], k[order]
        first = np.concatenate([[True], r[1:] != r[:-1]]) if r.size else np.empty(0, bool)
        return _at(batch, r[first], k[first], 0)

    def _first_neighbours(self, rows: np.ndarray) -> np.ndarray:
        """The ids of each row's first ``MAX_LABELS`` neighbours (-1 past its degree)."""
        out = np.full((rows.shape[0], MAX_LABELS), -1, np.int64)
        if self.config.schedule != "every_round":
            return out  # only LLM-style agents read them
        start = self.view.indptr[rows]
        for i in range(MAX_LABELS):
            ok = self.deg[rows] > i
            out[ok, i] = self.view.indices[start[ok] + i]
        return out

    def _prune_state(self, rows: np.ndarray) -> np.ndarray:
        """vertex cover: the rows that may leave the cover this round, and the candidacy
        changes the round announces (``self._news``)."""
        cover = rows[(self.partner[rows] >= 0) & (self.live[rows] == 0) & (self.answer[rows] == 1)]
        redundant = cover[self.outs[cover] == 0]
        withdraw = cover[(self.outs[cover] > 0) & self.cand[cover]]
        self.cand[withdraw] = False
        fresh = redundant[~self.cand[redundant]]
        old = redundant[self.cand[redundant]]
        may = np.empty(0, np.int64)
        if old.size:
            from swarm.graph import ragged_arange

            pos = ragged_arange(self.view.indptr[old], self.deg[old])
            owner = np.repeat(old, self.deg[old])
            c = self.nbr[pos] == _CAND
            smaller = c & (self.view.indices[pos].astype(np.int64) < self.view.agents[owner])
            blocked = _count(old, owner[smaller]) > 0
            may = old[~blocked]
        self.cand[fresh] = True
        self._news["candidates"], self._news["withdrawn"] = fresh, withdraw
        # Settled: out of the cover, or in it with a neighbour out (final either way).
        done = cover[self.outs[cover] > 0]
        self.settled[done] = True
        return may

    def _apply_matching(self, step: int, rows: np.ndarray, actions: dict):
        view = self.view
        vc = self.config.task == "vertex_cover"
        m = rows.shape[0]
        choice = self._col(actions, "choice", m)
        llm = choice >= 0
        target = self._col(actions, "target", m)
        phase = step % 3
        sends = not self.R or step < self.R
        ev_rows, ev_item = [], []
        b_src, b_a, b_kind = [], [], []
        d_dst, d_src, d_kind = [], [], []
        news = self._news
        matched = news.get("matched", np.empty(0, np.int64))
        alone = news.get("alone", np.empty(0, np.int64))
        if matched.size:
            self.answer[matched] = 1 if vc else self.partner[matched]
            ev_rows.append(matched)
            ev_item.append(self.answer[matched])
            b_src.append(matched)
            b_a.append(self.partner[matched])
            b_kind.append(np.full(matched.size, _MATCHED, np.int8))
            if not vc:
                self.settled[matched] = True
        if alone.size:
            self.answer[alone] = 0 if vc else -1
            self.settled[alone] = True
            ev_rows.append(alone)
            ev_item.append(self.answer[alone])
            b_src.append(alone)
            b_a.append(np.full(alone.size, -1, np.int64))
            b_kind.append(np.full(alone.size, _UNMATCHED, np.int8))
        rule = rows[~llm]
        tgt = target[~llm]
        go = tgt >= 0
        if phase == 0:
            self.prop[rule[go]] = tgt[go]
        elif phase == 1:
            self.acc[rule[go]] = tgt[go]
        else:
            self.chosen[rule[go]] = tgt[go]
        kind = (_PROPOSE, _ACCEPT, _CHOOSE)[phase]
        d_dst.append(tgt[go])
        d_src.append(view.agents[rule[go]])
        d_kind.append(np.full(int(go.sum()), kind, np.int8))
        if vc:
            leave = rule[(self._col(actions, "leave", m)[~llm] > 0)]
            leave = leave[self.cand[leave] & (self.outs[leave] == 0)]
            self.answer[leave] = 0
            self.cand[leave] = False
            self.settled[leave] = True
            ev_rows.append(leave)
            ev_item.append(np.zeros(leave.size, np.int64))
            for group, code in ((news.get("candidates"), _CANDIDATE),
                                (news.get("withdrawn"), _WITHDRAW), (leave, _LEFT)):
                if group is not None and group.size:
                    b_src.append(group)
                    b_a.append(np.full(group.size, -1, np.int64))
                    b_kind.append(np.full(group.size, code, np.int8))
        if llm.any():
            lr, lc = rows[llm], choice[llm]
            if vc:
                new = lc.astype(np.int64)
            else:
                rank = lc - 1
                start = view.indptr[lr]
                ok = (rank >= 0) & (rank < self.deg[lr])
                new = np.full(lr.size, -1, np.int64)
                new[ok] = view.indices[start[ok] + rank[ok]]
            changed = new != self.answer[lr]
            self.answer[lr] = new
            ev_rows.append(lr[changed])
            ev_item.append(new[changed])
            b_src.append(lr)
            b_a.append(new)
            b_kind.append(np.full(lr.size, _NAME, np.int8))
        self._adversary_matching(phase, d_dst, d_src, d_kind)
        ev = (np.concatenate(ev_rows), np.concatenate(ev_item)) if ev_rows else None
        b = d = None
        if sends:
            if b_src:
                b = (np.concatenate(b_src), np.concatenate(b_a), np.concatenate(b_kind))
            d = (np.concatenate(d_dst), np.concatenate(d_src), np.concatenate(d_kind))
        if ev is None:
            return np.empty(0, np.int64), np.empty(0, np.int64), b, d
        return ev[0], ev[1], b, d

    def _adversary_matching(self, phase: int, d_dst, d_src, d_kind) -> None:
        """Byzantine and Sybil agents accept every proposal and choose every proposer."""
        if phase == 1 and "offers" in self._news:
            r, x = self._news["offers"]
            bad = self.adv[r]
            d_dst.append(x[bad])
            d_src.append(self.view.agents[r[bad]])
            d_kind.append(np.full(int(bad.sum()), _ACCEPT, np.int8))
            self._adv_offers = (r[bad], x[bad])
        elif phase == 2 and getattr(self, "_adv_offers", None) is not None:
            r, x = self._adv_offers
            d_dst.append(x)
            d_src.append(self.view.agents[r])
            d_kind.append(np.full(r.size, _CHOOSE, np.int8))
            self._adv_offers = None

    # leader election and consensus ----------------------------------------------

    def _observe_flooding(self, step: int, got: dict) -> tuple[np.ndarray, dict]:
        n = self.view.n_local
        val = got["kind"] == _VALUE
        row, a = got["row"][val], got["a"][val]
        if self.config.task == "consensus":
            ok = (a == 0) | (a == 1)  # an honest agent ignores values outside {0, 1}
            row, a = row[ok], a[ok]
        # Per-agent scratch kept between rounds (fresh memory per round costs more than
        # the round's work); only the rows that heard something are touched and reset.
        if self._heard_min is None:
            self._heard_min = np.full(n, _NONE, np.int64)
            self._heard = np.zeros(n, np.int64)
            self._heard0 = np.zeros(n, np.int64)
        np.minimum.at(self._heard_min, row, a)
        np.add.at(self._heard, row, 1)
        np.add.at(self._heard0, row[a == 0], 1)
        touched = np.flatnonzero(self._heard) if row.size else np.empty(0, np.int64)
        rows = np.arange(n) if step == 0 else touched
        if self.config.task == "leader_election":
            other = a != self.view.agents[row]
            np.minimum.at(self.heard_best, row[other], a[other])
        rows = self._batch_rows(rows, step)
        cols: dict[str, np.ndarray] = {"best": self.best[rows],
                                       "heard_min": self._heard_min[rows],
                                       "heard": self._heard[rows],
                                       "heard0": self._heard0[rows]}
        cols["heard1"] = cols["heard"] - cols["heard0"]
        self._heard_min[touched], self._heard[touched], self._heard0[touched] = _NONE, 0, 0
        hb = self.heard_best[rows]
        cols["smallest_heard"] = np.where(hb < _NONE, hb, -1)
        return rows, cols

    def _apply_flooding(self, step: int, rows: np.ndarray, actions: dict):
        view = self.view
        m = rows.shape[0]
        choice = self._col(actions, "choice", m)
        llm = choice >= 0
        best = self._col(actions, "best", m)
        if self.config.task == "leader_election":
            me = view.agents[rows]
            hb = self.heard_best[rows]
            llm_best = np.where(choice == 1, me, np.where(hb < _NONE, hb, -1))
        else:
            llm_best = choice
        new = np.where(llm, llm_best, best)
        old = self.best[rows]
        changed = (new != old) | (step == 0)
        self.best[rows] = new
        self.answer[rows] = new
        sends = not self.R or step < self.R
        # every_round: every agent asked speaks (AgentsNet); else only those that changed.
        moved = changed | (self.config.schedule == "every_round")
        src, a = rows[moved], new[moved]
        if step == 0:  # adversaries flood their lie (leader election) or withhold
            adv = np.flatnonzero(self.adv)
            if self.config.task == "leader_election" and adv.size:
                fake = np.where(self.sybil[adv], -(1 + self.N + self.controller[adv]),
                                -(1 + view.agents[adv]))
                src, a = np.concatenate([src, adv]), np.concatenate([a, fake])
        b = (src, a, np.full(src.size, _VALUE, np.int8)) if sends and src.size else None
        return rows[changed], new[changed], b

    # -- apply ---------------------------------------------------------------------

    @staticmethod
    def _col(actions: dict, name: str, m: int) -> np.ndarray:
        v = actions.get(name)
        if v is None:
            return np.full(m, -1, np.int64)
        return np.asarray(as_numpy(v)).astype(np.int64)

    def apply(self, step: int, batch: dict[str, np.ndarray], actions: dict) -> StepResult:
        view, task = self.view, self.config.task
        rows = self._rows
        d = None
        if task == "colouring":
            ev_rows, ev_item, b = self._apply_colouring(step, rows, actions)
        elif task in ("matching", "vertex_cover"):
            ev_rows, ev_item, b, d = self._apply_matching(step, rows, actions)
        else:
            ev_rows, ev_item, b = self._apply_flooding(step, rows, actions)
        events = [make_events(np.zeros(ev_rows.size, np.int8), view.agents[ev_rows],
                              item=ev_item, value=ev_item.astype(np.float64))]
        if step == 0:
            adv = np.flatnonzero(self.adv)
            events.append(make_events(np.full(adv.size, 2, np.int8), view.agents[adv],
                                      item=np.where(self.byz[adv], 1, 2),
                                      value=self.controller[adv].astype(np.float64)))
            if task == "consensus":
                honest = np.flatnonzero(~self.adv)
                init = (view.rng.bits("coordination_value", view.agents[honest])
                        & np.uint64(1)).astype(np.int64)
                events.append(make_events(np.ones(honest.size, np.int8), view.agents[honest],
                                          item=init, value=init.astype(np.float64)))
        # Budget spent (or the run's last step): unmatched agents answer "none".
        last = (self.R and step == self.R) or (view.steps is not None and step == view.steps - 1)
        if last and task in ("matching", "vertex_cover"):
            # Still unsettled, with no answer (matching: none, -1, is also the start).
            quiet = self._todo[~self.adv[self._todo] & ~self.settled[self._todo]]
            none = 0 if task == "vertex_cover" else -1
            quiet = quiet[self.answer[quiet] == -1]
            self.answer[quiet] = none
            events.append(make_events(np.zeros(quiet.size, np.int8), view.agents[quiet],
                                      item=np.full(quiet.size, none), value=np.full(
                                          quiet.size, float(none))))
        if task in ("leader_election", "consensus"):
            working = 0  # flooding settles nobody: it stops when nothing changes
        else:
            self._todo = self._todo[~self.settled[self._todo]]
            todo = self._todo[~self.adv[self._todo]]
            if view.down is not None and view.down.size:
                todo = todo[~np.isin(todo, view.down)]
            working = int(todo.size)
        budget_left = not self.R or step < self.R
        events = {k: np.concatenate([e[k] for e in events]) for k in events[0]}
        broadcasts = messages = None
        if b is not None and b[0].size:
            broadcasts = {"src": view.agents[b[0]], "a": b[1].astype(np.int64),
                          "kind": b[2].astype(np.int8)}
        if d is not None and d[0].size:
            messages = {"dst": d[0].astype(np.int64), "src": d[1].astype(np.int64),
                        "kind": d[2].astype(np.int8)}
        first = view.shard == 0
        lo, hi = (int(x) for x in self.setup["diameter"])
        metrics = {"changed": int(ev_rows.size), "working": working,
                   "adversaries": int(self.adv.sum()),
                   "rounds_budget": self.R if first else 0,
                   "diameter_lower": lo if first else 0, "diameter_upper": hi if first else 0,
                   "colours": self.k if first else 0}
        if self.config.schedule == "every_round" and self.R:
            working = max(working, int(rows.size))  # everyone speaks until the budget
        active = working if budget_left else 0
        return StepResult(events=events, messages=messages, broadcasts=broadcasts,
                          active=active, metrics=metrics)
