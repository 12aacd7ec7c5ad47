"""Coordination protocols on the graph: gossip, majority vote, leader commit, contract-net.

One env, four protocols (``protocol``), each an honest rule in
``swarm.policies.consensus`` (the decide stage). ``observe`` absorbs what
arrived and reads the last global tally; ``apply`` decides, votes or bids and
sends. Agents talk to their out-neighbours by broadcast (contract-net: by
direct messages to and from task managers), which the engine's fault
injection (``faults:`` of the run config: drop, delay, partition, crash-stop)
acts on like any other message.

Vote values: ``0 .. values - 1`` are the honest proposals (a keyed draw per
agent); ``values`` is a value no honest agent proposes, which Byzantine lies
may carry; ``values + 1 + c`` is Sybil controller ``c``'s value.

* ``gossip``: every agent holds a value in [0, 1] (a keyed uniform draw) and
  each step moves to the mean of its own value and those its in-neighbours
  broadcast last step. Byzantine agents broadcast 1.0 and Sybil identities
  0.0, every step, dragging honest agents out of the range they started in.
* ``majority`` (rounds of voting): every agent votes its proposal to its
  neighbours. Each receiver reports the votes it heard, per value, into the
  run's totals, so step ``s + 2`` sees the global tally of the votes cast at
  ``s`` (a vote counts once per neighbour that heard it: votes are weighted
  by out-degree). A value with more than half of the *expected* votes (the
  sum of in-degrees: lost messages count against every value) is decided;
  otherwise agents adopt the plurality (ties to the smallest value, whatever
  value it is) and vote again. Votes are cast at steps ``0 .. rounds - 1``.
* ``leader_commit``: step 0 is a hello broadcast, then epochs of three
  steps (``phase = (step - 1) % 3``, ``epoch = (step - 1) // 3``) with a
  keyed leader per epoch (``epoch_leader``), chosen among all agents:

  - PROPOSE: the leader, if it has heard from a neighbour and has not
    crashed, posts its proposal (its decided value, else its initial one)
    on the totals channel, which reaches every agent, and logs ``propose``;
  - VOTE: every agent broadcasts a vote: its decided value if it has one,
    else the proposal it received;
  - TALLY: receivers report the votes they heard, per value, into totals;
  - the next PROPOSE step reads the global tally first: a value with more
    than 2/3 of the expected votes is committed. Otherwise the epoch failed;
    the next leader tries.

  With a Byzantine share ``b``, honest votes are at most ``1 - b`` of the
  expected ones, so once ``b > 1/3`` no value passes and nothing is decided.
* ``contract_net`` (task allocation by bids): ``tasks`` tasks, each with a
  keyed manager agent; every (agent, task) pair has a keyed cost in [0, 1).
  Rounds of four steps: at ``step % 4 == 0`` managers announce their tasks
  that no agent has confirmed yet on the totals channel (a population-wide
  notice board, so every agent may bid: the auction is not limited to the
  manager's neighbours); at ``% 4 == 1`` every agent that holds no task bids
  its cost for the cheapest announced task, a direct message to the manager;
  a manager awards each task to its lowest bid (ties to the smallest agent
  id) as the bids arrive; an awarded agent that still holds no task takes it
  (``allocate``) and confirms to the manager, which closes the task. An agent
  holds one task at a time. A holder that sees its task announced again (its
  confirm was lost or late) confirms again instead of bidding. Bids, awards
  and confirms are direct messages, so faults hit them; a confirm lost (or
  late) until the task is awarded again leaves it held by two agents (a
  safety violation: nothing cancels the second award). Managers run their
  auctions honestly whatever the agent is; the adversary bids.

Adversaries (a keyed ``byzantine`` share and a keyed ``sybil.identities``
share of the agents, disjoint) are modelled in the env, not as a policy, and
are excluded from every metric:

* Byzantine agents act independently and equivocate: each of their votes
  carries a keyed random value (per receiving edge and step) other than the
  current plurality (majority) or the posted proposal (leader commit), drawn
  from the honest values and ``values``; a Byzantine leader sends each agent
  its own keyed proposal. In contract-net they bid 0 on a keyed announced
  task, take what they win, and never do it: their tasks count as not
  allocated.
* Sybil identities are grouped under ``sybil.controllers`` controllers (a
  keyed draw per identity) and vote together: every identity of controller
  ``c`` votes ``values + 1 + c`` every round, and a Sybil leader proposes it
  to everyone. Concentrated votes can win the plurality, and then honest
  majority voters adopt a value no honest agent proposed (a validity
  failure). In contract-net all identities of a controller bid 0 on the same
  keyed task each round.

The tally is a trusted aggregator. Totals are the simulator's reliable
population-wide channel (the engine does not fault it): receivers report
honestly what they heard, and every agent reads the same sum. Byzantine
agents lie in their messages, never in the tally, and a Byzantine leader
cannot post two proposals there. So leader commit's safety holds by
construction (one global tally, at most one value above 2/3): this is a
modelling limit, not a property of a protocol over real links, where a
Byzantine reporter or an equivocating aggregator could split honest agents.
Faults on votes cost only liveness: they lower every count.

Crash-stop (``faults.crash``): an agent crashed by a step (``Faults.crashed``)
is frozen from that step on: it does not decide, propose, vote, bid, award or
confirm, and its gossip value stays (the engine already cuts its messages). A
decision it made before its crash stands (it counts for safety and validity),
but crashed agents are not required to decide: they leave the denominators of ``decided`` and
``agreement``, the usual convention for crash-stop. Votes still count
against every crashed receiver, so a crashed share ``f`` leaves about
``(1 - f)**2`` of the expected votes: leader commit keeps its 2/3 quorum for
``f`` below about 0.18 and majority its 1/2 for ``f`` below about 0.29. A
crashed manager's tasks drop out of contract-net's tasks; a task its holder
took before crashing stays allocated. Separately, an agent that has never
heard from a neighbour (cut off by a partition) ignores the tally.

Metrics, as additive integer parts finished in ``derive_metrics`` over the
honest agents that have not crashed (the *correct* ones):

* ``decided``: share of correct agents that decided (gossip: whose value
  moved by at most ``tolerance`` this step; contract-net: share of live
  tasks allocated);
* ``agreement``: 1 when at least ``decide_share`` of the correct agents
  decided and all honest decisions are the same value (gossip: the std of
  correct values is below ``tolerance``; contract-net: every task of a live
  manager is held by exactly one honest agent and none by two);
* ``validity``: 1 when there is agreement on a value some honest agent
  proposed (gossip: every correct value lies within the range of the honest
  initial values; contract-net: agreement, and every holder bid for its
  task);
* ``safety_violations``: distinct values decided by honest agents, minus 1
  (0 for gossip; contract-net: extra holders of tasks held by several);
* ``std``: gossip, the correct values' standard deviation;
* ``honest_vote_share``: at tally steps, the votes heard from honest
  senders over the expected votes (what honest voters can give any value);
  ``foreign_votes`` counts votes heard for values no honest agent proposed;
* ``cost_ratio``: contract-net, the summed cost of the allocated tasks over
  that of a greedy allocation (repeatedly the cheapest free honest agent and
  open task, without faults) of the same tasks; greedy is not optimal, so
  the ratio can fall below 1.

Contract-net's task metrics are computed by each task's manager from the
previous step's holder counts (totals), so they lag one step. Messages used
are the engine's ``messages`` metric. Steps to agreement:
``agreement_step(run.metrics())``.

LLM-style agents (``population.groups`` with ``policy: {kind: llm, ...}``)
take part in ``majority`` and ``leader_commit``: each step they choose a
ballot, one of the honest values (labels ``"0"`` .. ``"values - 1"``) or
``abstain`` (a vote that carries no value: receivers hear from the agent but
count nothing, like a lost vote). Their vote is that ballot, whether or not
they decided (the rule votes its decision); an LLM-style leader proposes its
ballot at the PROPOSE step (abstaining, it proposes nothing and the epoch
fails), and only the ballots of the steps that send votes or proposals count.
Deciding stays the protocol's: an LLM-style agent decides the tally's top
value once it passes the quorum, as the rule does. Prompts show the votes
heard last round per value (``heard0`` ..; ``heard_other`` for values no honest
agent proposed), the last global tally (``top``, ``top_votes``, ``expected``),
the agent's preference and decision (``pref``, ``locked``) and, in
``leader_commit``, the proposal received and whether the agent leads the epoch
(``proposal``, ``leader``). Byzantine and Sybil agents act as the adversary
whatever their policy. ``gossip`` (a continuous value) and ``contract_net``
(a bid per task) have no discrete choice: a population with LLM-style agents
is refused for them before the run. The rule marks its rows with ``ballot =
-1``, so in a mixed population ``apply`` takes the rule's vote and decision
for those rows. A failed model call (``on_error: idle``) abstains. The tiny
random-weight model of the tests answers at random.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from swarm.config_base import StrictModel
from swarm.contract import as_numpy
from swarm.envs.base import (
    ChoiceSpec,
    Env,
    EnvConfig,
    Inbox,
    ShardView,
    StepResult,
    make_events,
    register_env,
)

#: "No bid" in contract-net cost tables: above every real cost (the rule's value too).
UNAVAILABLE = 2**63 - 1
#: The LLM-style agents' label for a vote without a value (after the values' labels).
ABSTAIN = "abstain"
#: The protocols LLM-style agents can take part in (the others have no discrete choice).
LLM_PROTOCOLS = ("majority", "leader_commit")

__all__ = ["ABSTAIN", "LLM_PROTOCOLS", "MAX_CONTROLLERS", "MAX_TASKS", "MAX_VALUES",
           "Consensus", "ConsensusConfig",
           "SybilConfig", "agreement_step", "epoch_leader"]

#: The most distinct honest proposals a vote protocol may have (metric columns are fixed).
MAX_VALUES = 8
#: The most Sybil controllers (each has its own vote value).
MAX_CONTROLLERS = 4
#: The most contract-net tasks (an agent's bids are a 64-bit mask).
MAX_TASKS = 64
# Vote values a run can carry: honest proposals, the foreign value, one per controller.
_MAX_DOMAIN = MAX_VALUES + 1 + MAX_CONTROLLERS
_FIXED = float(2**32)  # fixed-point scale of gossip's metric parts and of task costs
_BID, _AWARD, _CONFIRM = 0, 1, 2  # contract-net message kinds
_HONEST, _BYZANTINE, _SYBIL = 0, 1, 2  # the ``adversary`` code of a broadcast's sender


class SybilConfig(StrictModel):
    """Sybil identities: a keyed share of the agents, run by controllers that vote together."""

    identities: float = Field(gt=0.0, lt=1.0)
    """Share of agents that are Sybil identities (a keyed draw per agent; never Byzantine)."""
    controllers: int = Field(1, ge=1, le=MAX_CONTROLLERS)
    """How many controllers the identities are split among (a keyed draw per identity)."""


class ConsensusConfig(EnvConfig):
    """Protocol, initial proposals, adversary and what counts as agreement."""

    kind: Literal["consensus"] = "consensus"
    protocol: Literal["gossip", "majority", "leader_commit", "contract_net"] = "gossip"
    """The protocol (module docstring); LLM-style agents take part in majority and
    leader_commit only (they vote one of the values or abstain)."""
    values: int = Field(2, ge=2, le=MAX_VALUES)
    """majority, leader_commit: number of distinct initial proposals (a keyed draw per agent)."""
    byzantine: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of Byzantine agents (a keyed draw per agent); each equivocates on its own."""
    sybil: SybilConfig | None = None
    """Sybil identities grouped under controllers; all of a controller's identities vote alike."""
    rounds: int = Field(10, ge=1)
    """majority: the steps at which votes are cast (0 .. rounds - 1)."""
    tolerance: float = Field(1e-3, gt=0.0)
    """gossip: agreement when the honest values' std is below this."""
    decide_share: float = Field(1.0, gt=0.0, le=1.0)
    """majority, leader_commit: share of correct (honest, not crashed) agents that must decide
    for agreement (lower it under message loss or partitions: an agent that never heard from a
    neighbour does not decide)."""
    log_every: int = Field(10, ge=1)
    """gossip: log a ``value`` event for every agent at steps 0, log_every, ... and at the
    run's last step (``steps - 1``)."""
    tasks: int = Field(8, ge=1, le=MAX_TASKS)
    """contract_net: number of tasks to allocate (each with a keyed manager)."""

    @model_validator(mode="after")
    def _check(self) -> ConsensusConfig:
        only = {"gossip": {"values", "rounds", "decide_share", "tasks"},
                "majority": {"tolerance", "log_every", "tasks"},
                "leader_commit": {"tolerance", "log_every", "rounds", "tasks"},
                "contract_net": {"values", "rounds", "tolerance", "log_every",
                                 "decide_share"}}[self.protocol]
        foreign = {k for k in only & self.model_fields_set
                   if getattr(self, k) != type(self).model_fields[k].default}
        if foreign:
            raise ValueError(f"{sorted(foreign)} do not apply to protocol={self.protocol!r}")
        if self.sybil is not None and self.byzantine + self.sybil.identities >= 1.0:
            raise ValueError(f"byzantine + sybil.identities must be < 1 (some agents must be "
                             f"honest); got {self.byzantine} + {self.sybil.identities}")
        return self


def agreement_step(metrics: Any) -> int | None:
    """The first step with ``agreement = 1`` in a run's metrics table (None: never).

    Examples
    --------
    >>> agreement_step({"step": [0, 1, 2, 3], "agreement": [0, 0, 1, 1]})
    2
    """
    cols = metrics.to_pydict() if hasattr(metrics, "to_pydict") else metrics
    for step, reached in zip(cols["step"], cols["agreement"], strict=True):
        if reached == 1:
            return int(step)
    return None


def epoch_leader(epoch: int, n: int, rng) -> int:
    """leader_commit: the keyed leader (a global agent id) of ``epoch`` among ``n`` agents.

    Examples
    --------
    >>> from swarm.rng import KeyedRNG
    >>> 0 <= epoch_leader(3, 100, KeyedRNG(7)) < 100
    True
    """
    return int(rng.bits("consensus_leader", np.array([epoch]))[0] % np.uint64(n))


def _exact_sums(rows: np.ndarray, sender: np.ndarray, values: np.ndarray,
                n: int) -> np.ndarray:
    """Per-row sums of ``values[sender]`` (values in [0, 1]) that do not depend on order.

    Float addition is not associative, and arrival order depends on sharding.
    Each sender's value is cut into two 26-bit integer halves (of ``value *
    2**52``); float64 sums of such integers are exact below 2**53, so in any
    order, and the halves recombine to the sum to within 2**-52 per value. No
    sort needed, and the cut is made once per sender, not per edge.

    >>> r, s, v = np.array([0, 0, 1]), np.array([0, 1, 2]), np.array([0.1, 0.2, 0.3])
    >>> (_exact_sums(r, s, v, 2) == _exact_sums(r[::-1], s[::-1], v, 2)).all()
    np.True_
    """
    if values.shape[0] and not (values.min() >= 0.0 and values.max() <= 1.0):
        raise ValueError("gossip values must lie in [0, 1] (a policy returned "
                         f"{values.min()}..{values.max()}); clip them in the policy")
    q = np.rint(values * 2.0**52).astype(np.int64)
    hi = (q >> 26).astype(np.float64)
    lo = (q & ((1 << 26) - 1)).astype(np.float64)
    return (np.bincount(rows, weights=hi[sender], minlength=n) * 2.0**-26
            + np.bincount(rows, weights=lo[sender], minlength=n) * 2.0**-52)


def _fixed(values: np.ndarray) -> int:
    return int(np.rint(values * _FIXED).astype(np.int64).sum())


def _adversaries(config: ConsensusConfig, ids: np.ndarray, rng
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Byzantine, Sybil, controller) of the agents ``ids``: one keyed uniform per agent
    makes the two groups disjoint; controller is -1 for agents that are not Sybil."""
    b, s = config.byzantine, config.sybil
    none = np.zeros(ids.shape[0], dtype=bool)
    if b == 0 and s is None:
        return none, none, np.full(ids.shape[0], -1, dtype=np.int64)
    u = rng.uniform("consensus_byzantine", ids)
    byz = u < b
    if s is None:
        return byz, none, np.full(ids.shape[0], -1, dtype=np.int64)
    sybil = ~byz & (u < b + s.identities)
    pick = (rng.bits("consensus_sybil_controller", ids) % np.uint64(s.controllers)).astype(
        np.int64)
    return byz, sybil, np.where(sybil, pick, -1)


def _other_value(bits: np.ndarray, avoid: np.ndarray | int, options: int) -> np.ndarray:
    """A keyed value in ``0 .. options - 1`` other than ``avoid`` (any where ``avoid`` is not
    one of them)."""
    avoid = np.broadcast_to(np.asarray(avoid, dtype=np.int64), bits.shape)
    any_value = (bits % np.uint64(options)).astype(np.int64)
    r = (bits % np.uint64(options - 1)).astype(np.int64)
    other = r + (r >= avoid)
    return np.where((avoid >= 0) & (avoid < options), other, any_value)


def _task_cost(rng, agents: np.ndarray, tasks: np.ndarray | int) -> np.ndarray:
    """contract_net: the fixed-point cost (``cost * 2**32``, cost in [0, 1)) of each pair."""
    bits = rng.bits("consensus_task_cost", agents, np.asarray(tasks, dtype=np.int64))
    return (bits >> np.uint64(32)).astype(np.int64)


def _task_managers(rng, tasks: int, n: int) -> np.ndarray:
    ids = np.arange(tasks, dtype=np.int64)
    return (rng.bits("consensus_manager", ids) % np.uint64(n)).astype(np.int64)


def _greedy_costs(rng, agents: np.ndarray, tasks: int) -> np.ndarray:
    """Per task, the cost of the agent a greedy allocation gives it (-1: none).

    Greedy takes the cheapest (free agent, open task) pair until the tasks or
    the agents run out. Only each task's ``tasks`` cheapest agents can ever
    be its greedy pick (fewer than ``tasks`` agents are taken before it), so
    the loops run over tasks, never over agents.
    """
    out = np.full(tasks, -1, dtype=np.int64)
    if agents.size == 0:
        return out
    k = min(tasks, agents.size)
    cand = np.empty((tasks, k), dtype=np.int64)
    for t in range(tasks):
        c = _task_cost(rng, agents, t)
        cand[t] = agents[np.argpartition(c, k - 1)[:k]] if k < agents.size else agents
    pool = np.unique(cand)
    m = pool.size
    cost = _task_cost(rng, np.tile(pool, tasks),
                      np.repeat(np.arange(tasks, dtype=np.int64), m)).reshape(tasks, m)
    free_task, free_agent = np.ones(tasks, dtype=bool), np.ones(m, dtype=bool)
    for _ in range(k):
        masked = np.where(free_task[:, None] & free_agent[None, :], cost, UNAVAILABLE)
        t, a = divmod(int(masked.argmin()), m)  # ties: the smallest task, then agent
        out[t] = cost[t, a]
        free_task[t], free_agent[a] = False, False
    return out


def _messages(dst, src, kind: int, task, bid) -> dict[str, np.ndarray]:
    return {"dst": np.asarray(dst, dtype=np.int64), "src": np.asarray(src, dtype=np.int64),
            "kind": np.full(np.shape(dst)[0], kind, dtype=np.int8),
            "task": np.asarray(task, dtype=np.int64), "bid": np.asarray(bid, dtype=np.int64)}


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray] | None:
    parts = [p for p in parts if p and next(iter(p.values())).shape[0]]
    if not parts:
        return None
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _first_per(key: np.ndarray, *order_by: np.ndarray) -> np.ndarray:
    """Indices of the first entry per distinct ``key``, ordered by ``order_by`` (lexsort)."""
    order = np.lexsort((*order_by[::-1], key))
    first = np.ones(order.shape[0], dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    return order[first]


def _log_due(view: ShardView, step: int, every: int) -> bool:
    """Whether periodic events are logged at ``step``: every ``every``-th step, and the run's
    last (``ShardView.steps - 1``, where the engine gives the configured steps), so a log
    always ends with the final state."""
    steps = getattr(view, "steps", None)
    return step % every == 0 or (steps is not None and step == steps - 1)


@register_env
class Consensus(Env):
    """Agreement protocols under Byzantine and Sybil agents and engine faults (module docstring)."""

    name = "consensus"
    Config = ConsensusConfig
    event_types = ("decide", "value", "propose", "award", "allocate")
    # gossip: value; votes: vote, decide and ballot (LLM-style agents' choice; the
    # rule's rows: -1); contract_net: task, bid.
    actions = ("value", "vote", "decide", "ballot", "task", "bid")
    metric_names = (
        "honest", "honest_decided", "share_fx",
        *(f"decided{v}" for v in range(_MAX_DOMAIN)),
        *(f"proposed{v}" for v in range(MAX_VALUES)),
        "gossip_agents", "value_fx", "valuesq_fx", "in_range", "tolerance_fx",
        "expected_votes", "honest_votes", "foreign_votes",
        "tasks_total", "tasks_live", "tasks_allocated", "tasks_double", "cost_fx", "greedy_fx",
        "unbid_holds",
    )
    derived_metric_names = ("agreement", "decided", "validity", "safety_violations", "std",
                            "honest_vote_share", "cost_ratio")
    summary_metrics = ("agreement", "decided", "validity", "safety_violations")
    message_fields = {"src": np.int64, "kind": np.int8, "task": np.int64, "bid": np.int64}
    broadcast_fields = {"value": np.float64, "vote": np.int64, "adversary": np.int8}
    state_attrs = ("value", "pref", "locked", "heard", "proposal", "holds", "bid_mask",
                   "task_holder")
    state_bytes_per_agent = 48
    smoke_config = {"steps": 20,
                    "graph": {"kind": "watts_strogatz", "n": 200, "k": 6, "p": 0.1},
                    "env": {"kind": "consensus", "protocol": "gossip", "log_every": 5}}

    def __init__(self, config: ConsensusConfig, view: ShardView, setup: Mapping[str, np.ndarray]):
        super().__init__(config, view, setup)
        ids, n = view.agents, view.n_local
        self.byz, self.sybil, self.controller = _adversaries(config, ids, view.rng)
        self.honest = ~(self.byz | self.sybil)
        self.adversary = np.where(self.byz, _BYZANTINE, np.where(self.sybil, _SYBIL, _HONEST)
                                  ).astype(np.int8)
        #: The value each agent's controller votes (-1: not a Sybil identity).
        self.sybil_vote = np.where(self.sybil, config.values + 1 + self.controller, -1)
        self.domain = config.values + 1 + (config.sybil.controllers if config.sybil else 0)
        self.value = view.rng.uniform("consensus_init", ids)
        self.value[self.byz] = 1.0
        self.value[self.sybil] = 0.0
        self.initial = (view.rng.bits("consensus_init", ids) % np.uint64(config.values)).astype(
            np.int64)
        self.pref = self.initial.copy()
        self.locked = np.full(n, -1, dtype=np.int64)
        self.heard = np.zeros(n, dtype=bool)
        #: leader_commit: the proposal posted this epoch by an honest or Sybil leader (-1: none).
        self.proposal = -1
        self.holds = self.bid_mask = self.task_holder = None
        if config.protocol == "contract_net":
            #: The task each agent holds (-1: none) and the tasks it ever bid on (bit t).
            self.holds = np.full(n, -1, dtype=np.int64)
            self.bid_mask = np.zeros(n, dtype=np.uint64)
            #: Per task, the agent its manager (if on this shard) closed it for (-1: open).
            self.task_holder = np.full(config.tasks, -1, dtype=np.int64)
            managers = setup["managers"]
            pos = np.minimum(np.searchsorted(ids, managers), max(n - 1, 0))
            here = (ids[pos] == managers) if n else np.zeros(config.tasks, dtype=bool)
            #: Per task, the local row of its manager (-1: managed on another shard).
            self.task_row = np.where(here, pos, -1)
        # Passed from observe to apply within a step (never checkpointed: see Env.state_dict).
        self._down = np.zeros(n, dtype=bool)
        self._received: dict[str, np.ndarray] = {}
        self._totals: dict[str, int] | None = None
        self._pending: list[dict[str, np.ndarray]] = []
        self._events: list[dict[str, np.ndarray]] = []
        self._taken = 0

    @classmethod
    def prepare(cls, config: ConsensusConfig, n: int, rng) -> dict[str, np.ndarray]:
        ids = np.arange(n, dtype=np.int64)
        byz, sybil, _ = _adversaries(config, ids, rng)
        honest = ~(byz | sybil)
        init = rng.uniform("consensus_init", ids)[honest]
        lo, hi = (float(init.min()), float(init.max())) if init.size else (0.0, 1.0)
        out = {"n": np.array([n], dtype=np.int64), "range": np.array([lo, hi])}
        if config.protocol == "contract_net":
            out["managers"] = _task_managers(rng, config.tasks, n)
            out["greedy_cost"] = _greedy_costs(rng, ids[honest], config.tasks)
        return out

    @classmethod
    def uses_broadcasts(cls, config: ConsensusConfig) -> bool:
        return config.protocol != "contract_net"

    @classmethod
    def observation_schema(cls, config: ConsensusConfig) -> tuple[str, ...]:
        if config.protocol == "gossip":
            return ("agent", "own", "nbr_sum", "nbr_count")
        if config.protocol == "contract_net":
            return ("agent", "cost")
        return ("agent", "pref", "locked", "proposal", "top", "top_votes", "expected", "heard",
                "leader", *(f"heard{v}" for v in range(config.values)), "heard_other")

    @classmethod
    def choice_spec(cls, config: ConsensusConfig) -> ChoiceSpec | None:
        # gossip holds a continuous value and contract_net bids per task: no labels to
        # choose from, so the population refuses LLM-style agents there.
        if config.protocol not in LLM_PROTOCOLS:
            return None
        heard = ", ".join(f"{v}: {{heard{v}}}" for v in range(config.values))
        if config.byzantine > 0 or config.sybil is not None:
            heard += ", a value nobody honest proposed: {heard_other}"
        tally = ("In the last count of all votes, {top} led with {top_votes} of {expected} "
                 "votes (-1: no count yet). You prefer {pref}; you decided {locked} (-1: not "
                 "yet).\nYour last votes: {memory}.\nYou can vote {actions}.\nYou vote")
        if config.protocol == "majority":
            rules = ("Your group votes in rounds until more than half of all votes name one "
                     "value, which is then decided. Last round your neighbours voted " + heard
                     + ". ")
        else:
            rules = ("Your group agrees on a value in epochs: a leader proposes one, everyone "
                     "votes, and a value with more than two thirds of all votes is decided. "
                     "You lead this epoch: {leader} (1: yes, and your vote is your proposal). "
                     "The proposal you received: {proposal} (-1: none). ")
        fields = ("pref", "locked", "top", "top_votes", "expected")
        if config.protocol == "majority":
            fields += (*(f"heard{v}" for v in range(config.values)), "heard_other")
        else:
            fields += ("proposal", "leader")
        return ChoiceSpec(action="ballot", labels=(*map(str, range(config.values)), ABSTAIN),
                          idle=config.values, fields=fields,
                          template="You are {persona}.\n" + rules + tally)

    def default_policy(self):
        # Each protocol's rule is registered under the protocol's name.
        return self.config.protocol, {}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        super().load_state_dict(state)
        self.heard = np.asarray(self.heard, dtype=bool)
        self.proposal = int(self.proposal)

    # -- the round -----------------------------------------------------------

    def _phase(self, step: int) -> tuple[str, int]:
        """leader_commit: the phase of ``step`` and its epoch."""
        if step == 0:
            return "hello", -1
        return ("propose", "vote", "tally")[(step - 1) % 3], (step - 1) // 3

    def _crashed(self, step: int) -> np.ndarray:
        faults = self.view.faults
        if faults is None:
            return np.zeros(self.view.n_local, dtype=bool)
        return faults.crashed(self.view.agents, step)

    def _tally(self, totals: dict[str, int] | None) -> tuple[int, int, int]:
        """(top value, its votes, expected votes) of the last global tally; top -1: none."""
        if totals is None:
            return -1, 0, 0
        counts = np.array([int(totals[f"votes{v}"]) for v in range(self.domain)])
        if counts.max() == 0:
            return -1, 0, 0
        top = int(counts.argmax())  # ties: the smallest value
        return top, int(counts[top]), int(totals["expected"])

    def observe(self, step: int, inbox: Inbox) -> dict[str, np.ndarray]:
        cfg, view = self.config, self.view
        n = view.n_local
        self._down = self._crashed(step)
        self._totals = inbox.totals
        if cfg.protocol == "contract_net":
            return self._observe_tasks(step, inbox)
        b = inbox.broadcast
        batch: dict[str, np.ndarray] = {"agent": view.agents.copy()}
        if cfg.protocol == "gossip":
            if b is not None and len(b):
                rows = b.receiver_rows().astype(np.int64)
                nbr_sum = _exact_sums(rows, b.sender_index(), b.sender_column("value"), n)
                self.heard[rows] = True
            else:
                rows, nbr_sum = np.empty(0, np.int64), np.zeros(n)
            batch.update(own=self.value.copy(), nbr_sum=nbr_sum,
                         nbr_count=np.bincount(rows, minlength=n).astype(np.float64))
            return batch
        got = b.take() if b is not None and len(b) else None
        if got is not None:
            self.heard[got["row"]] = True
        if got is not None:
            # Arrival order depends on sharding (and on delays): votes in a fixed order.
            order = np.lexsort((got["value"], got["src"], got["row"]))
            got = {k: v[order] for k, v in got.items()}
        top, top_votes, expected = self._tally(inbox.totals)
        proposal = np.full(n, -1, dtype=np.int64)
        if cfg.protocol == "leader_commit":
            phase, epoch = self._phase(step)
            if phase == "vote" and inbox.totals is not None:
                posted = int(inbox.totals["proposal"])
                self.proposal = posted - 1 if posted > 0 else -1
                proposal[:] = self.proposal
                if int(inbox.totals["byz_leader"]) > 0:
                    bits = view.rng.bits("consensus_byz_proposal", view.agents, step=epoch)
                    proposal = _other_value(bits, -1, cfg.values + 1)
            avoid = self.proposal
        else:
            avoid = top
        self._received = self._votes(step, got, avoid)
        batch.update(pref=self.pref.copy(), locked=self.locked.copy(), proposal=proposal,
                     top=np.full(n, top, dtype=np.int64),
                     top_votes=np.full(n, top_votes, dtype=np.int64),
                     expected=np.full(n, expected, dtype=np.int64), heard=self.heard.copy())
        batch.update(self._prompt_columns(step))
        return batch

    def _prompt_columns(self, step: int) -> dict[str, np.ndarray]:
        """What LLM-style agents' prompts show besides the rule's columns: the votes each
        agent heard this step per honest value (``heard0`` ..) and for any other
        (``heard_other``), and whether it leads the epoch (``leader``, leader_commit)."""
        cfg, view, n = self.config, self.view, self.view.n_local
        rows, vote = self._received["row"], self._received["vote"]
        # One count per column (not an agents x domain table): these columns are built
        # for every run, LLM-style agents or not.
        out = {f"heard{v}": np.bincount(rows[vote == v], minlength=n)
               for v in range(cfg.values)}
        out["heard_other"] = np.bincount(rows[vote >= cfg.values], minlength=n)
        leader = np.zeros(n, dtype=np.int64)
        if cfg.protocol == "leader_commit" and step > 0:
            _, epoch = self._phase(step)
            leader[view.agents == epoch_leader(epoch, int(self.setup["n"][0]), view.rng)] = 1
        out["leader"] = leader
        return out

    def _votes(self, step: int, got: dict | None, avoid: int) -> dict[str, np.ndarray]:
        """Votes heard this step (Byzantine senders' replaced by their lie) and who sent them."""
        if got is None:
            return {"row": np.empty(0, np.int64), "vote": np.empty(0, np.int64),
                    "adversary": np.empty(0, np.int8)}
        vote = got["vote"].astype(np.int64)
        byz = (got["adversary"] == _BYZANTINE) & (vote >= 0)
        if byz.any():
            # Equivocation: each receiver gets its own keyed value (per edge and step).
            bits = self.view.rng.bits("consensus_byz_vote", got["edge"][byz], step=step)
            vote[byz] = _other_value(bits, avoid, self.config.values + 1)
        keep = (vote >= 0) & ~self._down[got["row"]]
        return {"row": got["row"][keep].astype(np.int64), "vote": vote[keep],
                "adversary": got["adversary"][keep]}

    def apply(self, step: int, batch: dict[str, np.ndarray], actions: dict) -> StepResult:
        cfg, view = self.config, self.view
        if cfg.protocol == "gossip":
            return self._apply_gossip(step, actions)
        if cfg.protocol == "contract_net":
            return self._apply_tasks(step, actions)
        n, honest, acting = view.n_local, self.honest, ~self._down
        vote, decide, llm = self._cast(batch, actions)
        phase, epoch = self._phase(step) if cfg.protocol == "leader_commit" else ("vote", -1)
        if cfg.protocol == "leader_commit" and phase != "propose":
            decide = np.full(n, -1, dtype=np.int64)
        new = honest & acting & (decide >= 0) & (self.locked < 0)
        self.locked[new] = decide[new]
        if cfg.protocol == "majority":
            # An abstention (-1, LLM-style agents only) leaves the preference as it was.
            self.pref = np.where(honest & acting & (vote >= 0), vote, self.pref)
        totals = {f"votes{v}": 0 for v in range(self.domain)}
        totals.update(expected=0, proposal=0, byz_leader=0)
        tallies = cfg.protocol == "majority" and 1 <= step <= cfg.rounds or phase == "tally"
        heard_votes = {"expected_votes": 0, "honest_votes": 0, "foreign_votes": 0}
        if tallies:
            rx = self._received
            counts = np.bincount(rx["vote"], minlength=self.domain)
            totals.update({f"votes{v}": int(counts[v]) for v in range(self.domain)})
            totals["expected"] = int(view.in_degree.astype(np.int64).sum())
            heard_votes = {"expected_votes": totals["expected"],
                           "honest_votes": int((rx["adversary"] == _HONEST).sum()),
                           "foreign_votes": int((rx["vote"] >= cfg.values).sum())}
        events = [make_events(np.zeros(int(new.sum()), np.int8), view.agents[new],
                              item=self.locked[new], value=self.locked[new].astype(np.float64))]
        if phase == "propose":
            leader = epoch_leader(epoch, int(self.setup["n"][0]), view.rng)
            row = int(np.searchsorted(view.agents, leader))
            if row < n and view.agents[row] == leader and self.heard[row] and acting[row]:
                if self.byz[row]:
                    totals["byz_leader"], mine = 1, -1  # a keyed proposal per agent
                elif self.sybil[row]:
                    mine = int(self.sybil_vote[row])
                elif llm[row]:
                    # An LLM-style leader proposes its ballot; abstaining, nothing.
                    mine = int(vote[row]) if vote[row] >= 0 else None
                else:
                    mine = int(self.locked[row] if self.locked[row] >= 0 else self.initial[row])
                if mine is not None:
                    totals["proposal"] = mine + 1
                    events.append(make_events(np.array([2], np.int8), np.array([leader]),
                                              item=np.array([mine]),
                                              value=np.array([mine if mine >= 0 else np.nan])))
        sends = step < cfg.rounds if cfg.protocol == "majority" else phase in ("hello", "vote")
        broadcasts = None
        if sends:
            out = np.where(self.sybil, self.sybil_vote, np.where(honest, vote, 0))
            if phase == "hello":
                out = np.full(n, -1, np.int64)
            broadcasts = {"src": view.agents[acting], "value": np.zeros(int(acting.sum())),
                          "vote": out[acting].astype(np.int64),
                          "adversary": self.adversary[acting]}
        undecided = int((honest & acting & (self.locked < 0)).sum())
        # A tally still in flight can decide agents; leader epochs go on until ``steps``.
        going = cfg.protocol == "leader_commit" or step <= cfg.rounds
        metrics = self._vote_metrics()
        metrics.update(heard_votes)
        return StepResult(events=_concat(events) or events[0], messages=None,
                          broadcasts=broadcasts, totals=totals,
                          active=undecided if going else 0, metrics=metrics)

    def _cast(self, batch: dict, actions: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vote, decide, llm): the rule's vote and decision on its rows (``ballot`` -1),
        and on LLM-style agents' rows (``llm``) their ballot (-1: abstain) and the
        protocol's decision (the tally's top value once it passes the quorum).

        A group's actions lack the other group's keys (the population fills such rows
        with zeros, so ``ballot`` -1 is what tells the rule's rows apart), and a
        population of LLM-style agents only gives ``ballot``.
        """
        cfg = self.config
        ballot = actions.get("ballot")
        ballot = (np.full(self.view.n_local, -1, np.int64) if ballot is None
                  else as_numpy(ballot).astype(np.int64))
        llm = ballot >= 0
        chosen = np.where(ballot < cfg.values, ballot, -1)  # the last label abstains

        def col(name: str) -> np.ndarray:
            return np.asarray(as_numpy(batch[name])).astype(np.int64)

        # The rule's quorum (swarm.policies.consensus), in exact integers: more than
        # half (majority) or two thirds (leader_commit) of the expected votes.
        num, den = (1, 2) if cfg.protocol == "majority" else (2, 3)
        top = col("top")
        passed = ((top >= 0) & (col("top_votes") * den > col("expected") * num)
                  & (col("heard") > 0) & (col("locked") < 0))
        own = np.where(passed, top, -1)
        vote, decide = chosen, own
        if "vote" in actions:
            vote = np.where(llm, chosen, as_numpy(actions["vote"]).astype(np.int64))
        if "decide" in actions:
            decide = np.where(llm, own, as_numpy(actions["decide"]).astype(np.int64))
        return vote, decide, llm

    def _apply_gossip(self, step: int, actions: dict) -> StepResult:
        cfg, view = self.config, self.view
        new = np.asarray(as_numpy(actions["value"]), dtype=np.float64)
        new = np.where(self.byz, 1.0, np.where(self.sybil, 0.0, new))
        new = np.where(self._down, self.value, new)  # crashed agents are frozen
        settled = np.abs(new - self.value) <= cfg.tolerance
        self.value = new
        if _log_due(view, step, cfg.log_every):
            events = make_events(np.ones(view.n_local, np.int8), view.agents, value=new)
        else:
            events = make_events(np.empty(0, np.int8), np.empty(0, np.int64))
        correct = self.honest & ~self._down
        lo, hi = self.setup["range"]
        x = new[correct]
        metrics = self._vote_metrics()
        metrics.update(gossip_agents=int(correct.sum()), value_fx=_fixed(x),
                       valuesq_fx=_fixed(x * x),
                       in_range=int(((x >= lo) & (x <= hi)).sum()),
                       honest_decided=int(settled[correct].sum()),
                       tolerance_fx=int(correct.sum()) * int(round(min(cfg.tolerance, 1.0)
                                                                   * _FIXED)))
        acting = ~self._down
        return StepResult(events=events, messages=None,
                          broadcasts={"src": view.agents[acting], "value": new[acting],
                                      "vote": np.full(int(acting.sum()), -1, np.int64),
                                      "adversary": self.adversary[acting]},
                          active=int((~settled).sum()), metrics=metrics)

    def _vote_metrics(self) -> dict[str, int]:
        correct = self.honest & ~self._down
        h = int(correct.sum())
        # Decisions of honest agents that crashed later still count for safety and validity.
        locked, initial = self.locked[self.honest], self.initial[self.honest]
        out = {"honest": h, "honest_decided": int((self.locked[correct] >= 0).sum()),
               "share_fx": h * int(round(self.config.decide_share * _FIXED)),
               "gossip_agents": 0, "value_fx": 0, "valuesq_fx": 0, "in_range": 0,
               "tolerance_fx": 0, "expected_votes": 0, "honest_votes": 0, "foreign_votes": 0,
               "tasks_total": 0, "tasks_live": 0, "tasks_allocated": 0, "tasks_double": 0,
               "cost_fx": 0, "greedy_fx": 0, "unbid_holds": 0}
        votes = self.config.protocol in ("majority", "leader_commit")
        decided = np.bincount(locked[locked >= 0], minlength=_MAX_DOMAIN) if votes else None
        proposed = np.bincount(initial, minlength=MAX_VALUES) if votes else None
        for v in range(_MAX_DOMAIN):
            out[f"decided{v}"] = int(decided[v]) if votes else 0
        for v in range(MAX_VALUES):
            out[f"proposed{v}"] = int(proposed[v]) if votes else 0
        return out

    # -- contract-net ----------------------------------------------------------

    def _observe_tasks(self, step: int, inbox: Inbox) -> dict[str, np.ndarray]:
        """Managers close confirmed tasks and award bids; agents take awards. Builds the
        bidding batch: costs of the announced tasks for agents that may bid."""
        cfg, view = self.config, self.view
        n, T = view.n_local, cfg.tasks
        self._pending, self._events, self._taken = [], [], 0
        d = inbox.direct
        if d is not None and d["dst"].shape[0]:
            rows = view.local_index(d["dst"])
            live = ~self._down[rows]
            kind, task, src = d["kind"], d["task"].astype(np.int64), d["src"]
            to_manager = live & (self.task_row[task] == rows)
            self._close(to_manager & (kind == _CONFIRM), task, src)
            self._award(to_manager & (kind == _BID) & (self.task_holder[task] < 0), d, task)
            self._take(live & (kind == _AWARD), rows, task, src)
        cost = np.full((n, T), UNAVAILABLE, dtype=np.int64)
        self._open = np.empty(0, dtype=np.int64)
        if step % 4 == 1 and inbox.totals is not None:
            self._open = np.flatnonzero([int(inbox.totals[f"open{t}"]) > 0 for t in range(T)])
            may_bid = np.flatnonzero(self.honest & ~self._down & (self.holds < 0))
            k = self._open.shape[0]
            if k and may_bid.shape[0]:
                c = _task_cost(view.rng, np.repeat(view.agents[may_bid], k),
                               np.tile(self._open, may_bid.shape[0]))
                cost[may_bid[:, None], self._open[None, :]] = c.reshape(-1, k)
        return {"agent": view.agents.copy(), "cost": cost}

    def _close(self, mask: np.ndarray, task: np.ndarray, src: np.ndarray) -> None:
        """Managers close each task for its first confirmer (the smallest agent id)."""
        which = np.flatnonzero(mask)
        if which.shape[0]:
            first = which[_first_per(task[which], src[which])]
            self.task_holder[task[first]] = src[first]

    def _award(self, mask: np.ndarray, d: dict, task: np.ndarray) -> None:
        """Managers award each open task to its lowest bid (ties: the smallest agent id)."""
        which = np.flatnonzero(mask)
        if not which.shape[0]:
            return
        win = which[_first_per(task[which], d["bid"][which], d["src"][which])]
        self._pending.append(_messages(d["src"][win], d["dst"][win], _AWARD, task[win],
                                       d["bid"][win]))
        self._events.append(make_events(np.full(win.shape[0], 3, np.int8), d["dst"][win],
                                        target=d["src"][win], item=task[win],
                                        value=d["bid"][win] / _FIXED))

    def _take(self, mask: np.ndarray, rows: np.ndarray, task: np.ndarray,
              src: np.ndarray) -> None:
        """Agents that hold no task take one award (the smallest task id) and confirm it."""
        which = np.flatnonzero(mask & (self.holds[rows] < 0))
        if not which.shape[0]:
            return
        take = which[_first_per(rows[which], task[which])]
        r, t = rows[take], task[take]
        self.holds[r] = t
        self._taken = int(r.shape[0])
        agents = self.view.agents[r]
        cost = _task_cost(self.view.rng, agents, t)
        self._pending.append(_messages(src[take], agents, _CONFIRM, t, cost))
        self._events.append(make_events(np.full(r.shape[0], 4, np.int8), agents, item=t,
                                        value=cost / _FIXED))

    def _bids(self, step: int, actions: dict) -> list[dict[str, np.ndarray]]:
        """This round's bids (honest from the policy, adversaries' of 0) and re-confirms."""
        view, open_ = self.view, self._open
        k = open_.shape[0]
        if not k:
            return []
        free = ~self._down & (self.holds < 0)
        task = np.where(self.honest & free,
                        np.asarray(as_numpy(actions["task"]), dtype=np.int64), -1)
        bid = np.asarray(as_numpy(actions["bid"]), dtype=np.int64).copy()
        byz, syb = self.byz & free, self.sybil & free
        if byz.any():  # each on its own keyed task
            bits = view.rng.bits("consensus_byz_task", view.agents[byz], step=step)
            task[byz], bid[byz] = open_[(bits % np.uint64(k)).astype(np.int64)], 0
        if syb.any():  # all identities of a controller on the same task
            bits = view.rng.bits("consensus_sybil_task", self.controller[syb], step=step)
            task[syb], bid[syb] = open_[(bits % np.uint64(k)).astype(np.int64)], 0
        rows = np.flatnonzero(task >= 0)
        self.bid_mask[rows] |= np.uint64(1) << task[rows].astype(np.uint64)
        managers = self.setup["managers"]
        out = [_messages(managers[task[rows]], view.agents[rows], _BID, task[rows], bid[rows])]
        again = np.flatnonzero(~self._down & (self.holds >= 0) & np.isin(self.holds, open_))
        if again.shape[0]:
            t = self.holds[again]
            out.append(_messages(managers[t], view.agents[again], _CONFIRM, t,
                                 _task_cost(view.rng, view.agents[again], t)))
        return out

    def _apply_tasks(self, step: int, actions: dict) -> StepResult:
        cfg, view = self.config, self.view
        T = cfg.tasks
        rows = self.task_row
        live = (rows >= 0) & ~self._down[np.maximum(rows, 0)] if view.n_local else rows >= 0
        unclosed = live & (self.task_holder < 0)
        opened = unclosed if step % 4 == 0 else np.zeros(T, dtype=bool)
        messages = _concat([*self._pending, *(self._bids(step, actions) if step % 4 == 1
                                              else [])])
        held = self.holds >= 0
        count = np.bincount(self.holds[held], minlength=T)
        holder = np.zeros(T, dtype=np.int64)
        np.add.at(holder, self.holds[held], view.agents[held])
        totals = {f"open{t}": int(opened[t]) for t in range(T)}
        totals.update({f"held{t}": int(count[t]) for t in range(T)})
        totals.update({f"holder{t}": int(holder[t]) for t in range(T)})
        events = _concat(self._events) or make_events(np.empty(0, np.int8), np.empty(0, np.int64))
        metrics = self._vote_metrics()
        metrics.update(self._task_metrics(live))
        # Open tasks keep the run going; so does a taken task, until its count is in the metrics.
        return StepResult(events=events, messages=messages, totals=totals,
                          active=int(unclosed.sum()) + self._taken, metrics=metrics)

    def _task_metrics(self, live: np.ndarray) -> dict[str, int]:
        """Each task's manager reports it, from the holder counts of the previous step."""
        cfg, rng = self.config, self.view.rng
        here = self.task_row >= 0
        tot = self._totals
        count = np.array([int(tot[f"held{t}"]) if tot else 0 for t in range(cfg.tasks)])
        holder = np.array([int(tot[f"holder{t}"]) if tot else 0 for t in range(cfg.tasks)],
                          dtype=np.int64)
        one = np.flatnonzero(live & (count == 1))
        byz, sybil, _ = _adversaries(cfg, holder[one], rng)
        done = one[~(byz | sybil)]
        greedy = self.setup["greedy_cost"][done]
        h = self.holds
        unbid = self.honest & (h >= 0) & (
            (self.bid_mask >> np.maximum(h, 0).astype(np.uint64)) & np.uint64(1) == 0)
        return {"tasks_total": int(here.sum()), "tasks_live": int(live.sum()),
                "tasks_allocated": int(done.shape[0]),
                "tasks_double": int(np.maximum(count[here] - 1, 0).sum()),
                "cost_fx": int(_task_cost(rng, holder[done], done).sum()),
                "greedy_fx": int(greedy[greedy >= 0].sum()),
                "honest_decided": int((h[self.honest & ~self._down] >= 0).sum()),
                "unbid_holds": int(unbid.sum())}

    @classmethod
    def derive_metrics(cls, totals: Mapping[str, float],
                       config: EnvConfig | None = None) -> dict[str, float]:
        nan = float("nan")
        expected = int(totals["expected_votes"])
        shares = {"honest_vote_share": int(totals["honest_votes"]) / expected if expected
                  else nan, "cost_ratio": nan}
        if int(totals["tasks_total"]):
            live, done = int(totals["tasks_live"]), int(totals["tasks_allocated"])
            double = int(totals["tasks_double"])
            agreement = int(live > 0 and done == live and double == 0)
            greedy = int(totals["greedy_fx"])
            return {"agreement": agreement, "decided": done / live if live else nan,
                    "validity": int(agreement and int(totals["unbid_holds"]) == 0),
                    "safety_violations": double, "std": nan,
                    "honest_vote_share": nan,
                    "cost_ratio": int(totals["cost_fx"]) / greedy if greedy else nan}
        h = int(totals["honest"])
        if h == 0:
            return {"agreement": 0, "decided": nan, "validity": 0, "safety_violations": 0,
                    "std": nan, **shares}
        decided = int(totals["honest_decided"])
        g = int(totals["gossip_agents"])
        if g:
            f = _FIXED
            s1, s2 = int(totals["value_fx"]), int(totals["valuesq_fx"])
            std = float(np.sqrt(max((g * s2 * f - s1 * s1) / (g * g * f * f), 0.0)))
            agreement = int(std < int(totals["tolerance_fx"]) / (g * f))
            return {"agreement": agreement, "decided": decided / h,
                    "validity": int(agreement and int(totals["in_range"]) == g),
                    "safety_violations": 0, "std": std, **shares}
        per_value = [int(totals[f"decided{v}"]) for v in range(_MAX_DOMAIN)]
        chosen = [v for v, c in enumerate(per_value) if c]
        agreement = int(len(chosen) == 1 and decided * _FIXED >= int(totals["share_fx"]))
        proposed = int(totals.get(f"proposed{chosen[0]}", 0)) if chosen else 0
        return {"agreement": agreement, "decided": decided / h,
                "validity": int(agreement and proposed > 0),
                "safety_violations": max(len(chosen) - 1, 0), "std": nan, **shares}
