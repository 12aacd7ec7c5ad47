"""Agreement protocols on the graph: gossip, majority vote, leader commit.

One env, three protocols (``protocol``), each an honest rule in
``swarm.policies.consensus`` (the decide stage); task allocation by bids is
its own env (``swarm.envs.contract_net``). ``observe`` absorbs what arrived
and reads the last global tally; ``apply`` decides or votes and sends. Agents
talk to their out-neighbours by broadcast, which the engine's fault injection
(``faults:`` of the run config: drop, delay, partition, crash-stop) acts on
like any other message.

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
Adversaries (a keyed ``byzantine`` share and a keyed ``sybil.identities``
share of the agents, disjoint) are modelled in the env, not as a policy, and
are excluded from every metric:

* Byzantine agents act independently and equivocate: each of their votes
  carries a keyed random value (per receiving edge and step) other than the
  current plurality (majority) or the posted proposal (leader commit), drawn
  from the honest values and ``values``; a Byzantine leader sends each agent
  its own keyed proposal.
* Sybil identities are grouped under ``sybil.controllers`` controllers (a
  keyed draw per identity) and vote together: every identity of controller
  ``c`` votes ``values + 1 + c`` every round, and a Sybil leader proposes it
  to everyone. Concentrated votes can win the plurality, and then honest
  majority voters adopt a value no honest agent proposed (a validity
  failure).

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
``f`` below about 0.18 and majority its 1/2 for ``f`` below about 0.29.
Separately, an agent that has never heard from a neighbour (cut off by a
partition) ignores the tally.

Metrics, over the honest agents that have not crashed (the *correct* ones),
finished in ``derive_metrics`` from counters and the exact ``value_variance``:

* ``decided``: share of correct agents that decided (gossip: whose value
  moved by at most ``tolerance`` this step);
* ``agreement``: 1 when at least ``decide_share`` of the correct agents
  decided and all honest decisions are the same value (gossip: the std of
  correct values is below ``tolerance``);
* ``validity``: 1 when there is agreement on a value some honest agent
  proposed (gossip: every correct value lies within the range of the honest
  initial values);
* ``safety_violations``: distinct values decided by honest agents, minus 1
  (0 for gossip);
* ``std``: gossip, the correct values' standard deviation;
* ``honest_vote_share``: at tally steps, the votes heard from honest
  senders over the expected votes (what honest voters can give any value);
  ``foreign_votes`` counts votes heard for values no honest agent proposed.

Messages used are the engine's ``messages`` metric. Steps to agreement:
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
whatever their policy. In ``gossip`` (a continuous value) they choose ``keep``
(their value) or ``average`` (the rule's step: the mean of their value and the
heard ones), prompted with their value and the heard mean (``value``,
``heard_mean``, ``nbr_count``). In a mixed population the rule's rows read
``ballot = -1`` (gossip: ``move = -1``; the population's fill for rows a group
did not decide), so ``apply`` takes the rule's vote and decision (value)
there. A failed model call (``on_error: idle``) abstains. The tiny
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
    Column,
    Env,
    EnvConfig,
    Inbox,
    ShardView,
    StepResult,
    Variance,
    make_events,
    register_env,
)

#: The LLM-style agents' label for a vote without a value (after the values' labels).
ABSTAIN = "abstain"
#: The protocols LLM-style agents vote in (gossip's choice is a step: ``GOSSIP_MOVES``).
LLM_PROTOCOLS = ("majority", "leader_commit")
#: gossip: what LLM-style agents choose: keep their value, or average it with the heard ones.
GOSSIP_MOVES = ("keep", "average")

__all__ = ["ABSTAIN", "GOSSIP_MOVES", "LLM_PROTOCOLS", "MAX_CONTROLLERS", "MAX_VALUES",
           "AdversaryConfig", "Consensus", "ConsensusConfig", "SybilConfig", "agreement_step",
           "epoch_leader"]

#: The most distinct honest proposals a vote protocol may have (metric columns are fixed).
MAX_VALUES = 8
#: The most Sybil controllers (each has its own vote value).
MAX_CONTROLLERS = 4
# Vote values a run can carry: honest proposals, the foreign value, one per controller.
_MAX_DOMAIN = MAX_VALUES + 1 + MAX_CONTROLLERS
_HONEST, _BYZANTINE, _SYBIL = 0, 1, 2  # the ``adversary`` code of a broadcast's sender


class SybilConfig(StrictModel):
    """Sybil identities: a keyed share of the agents, run by controllers that vote together."""

    identities: float = Field(gt=0.0, lt=1.0)
    """Share of agents that are Sybil identities (a keyed draw per agent; never Byzantine)."""
    controllers: int = Field(1, ge=1, le=MAX_CONTROLLERS)
    """How many controllers the identities are split among (a keyed draw per identity)."""


class AdversaryConfig(EnvConfig):
    """The adversaries of a coordination env: Byzantine agents and Sybil identities."""

    byzantine: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of Byzantine agents (a keyed draw per agent); each acts on its own."""
    sybil: SybilConfig | None = None
    """Sybil identities grouped under controllers; all of a controller's identities act
    alike."""

    @model_validator(mode="after")
    def _some_honest(self):
        if self.sybil is not None and self.byzantine + self.sybil.identities >= 1.0:
            raise ValueError(f"byzantine + sybil.identities must be < 1 (some agents must be "
                             f"honest); got {self.byzantine} + {self.sybil.identities}")
        return self


class ConsensusConfig(AdversaryConfig):
    """Protocol, initial proposals, adversary and what counts as agreement."""

    kind: Literal["consensus"] = "consensus"
    applies_to = {"protocol": {"gossip": {"tolerance", "log_every"},
                               "majority": {"values", "rounds", "decide_share"},
                               "leader_commit": {"values", "decide_share"}}}
    protocol: Literal["gossip", "majority", "leader_commit"] = "gossip"
    """The protocol (module docstring); LLM-style agents take part in majority and
    leader_commit only (they vote one of the values or abstain). Task allocation by
    bids is its own env, ``kind: contract_net``."""
    values: int = Field(2, ge=2, le=MAX_VALUES)
    """majority, leader_commit: number of distinct initial proposals (a keyed draw per agent)."""
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
    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("protocol") == "contract_net":
            raise ValueError("contract_net is its own env now: write env.kind: contract_net "
                             "(with tasks, byzantine, sybil)")
        return data


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


def _adversaries(config: AdversaryConfig, ids: np.ndarray, rng
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


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray] | None:
    parts = [p for p in parts if p and next(iter(p.values())).shape[0]]
    if not parts:
        return None
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


@register_env
class Consensus(Env):
    """Agreement protocols under Byzantine and Sybil agents and engine faults (module docstring)."""

    name = "consensus"
    Config = ConsensusConfig
    event_types = ("decide", "value", "propose", "award", "allocate")
    # gossip: value and move; votes: vote, decide and ballot (move and ballot: LLM-style
    # agents' choices; other rows: -1).
    actions = ("value", "move", "vote", "decide", "ballot")
    metric_names = (
        "honest", "honest_decided",
        *(f"decided{v}" for v in range(_MAX_DOMAIN)),
        *(f"proposed{v}" for v in range(MAX_VALUES)),
        "gossip_agents", "in_range", "expected_votes", "honest_votes", "foreign_votes",
    )
    # gossip: the correct agents' values (their std decides agreement); NaN for votes.
    metrics = {"value_variance": Variance("value", where="correct")}
    derived_metric_names = ("agreement", "decided", "validity", "safety_violations", "std",
                            "honest_vote_share")
    summary_metrics = ("agreement", "decided", "validity", "safety_violations")
    broadcast_fields = {"value": np.float64, "vote": np.int64, "adversary": np.int8}
    state = {"value": Column(np.float64),   # gossip: the agent's value
             "pref": Column(np.int64),      # votes: the value it votes for
             "locked": Column(np.int64, -1),  # the value it decided (-1: none)
             "heard": Column(bool)}         # heard from a neighbour yet
    state_attrs = ("proposal",)
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
        self.value[:] = view.rng.uniform("consensus_init", ids)
        self.value[self.byz] = 1.0
        self.value[self.sybil] = 0.0
        self.initial = (view.rng.bits("consensus_init", ids) % np.uint64(config.values)).astype(
            np.int64)
        self.pref[:] = self.initial
        #: leader_commit: the proposal posted this epoch by an honest or Sybil leader (-1: none).
        self.proposal = -1
        # Passed from observe to apply within a step (never checkpointed: see Env.state_dict).
        self._down = np.zeros(n, dtype=bool)
        self._received: dict[str, np.ndarray] = {}
        self._totals: dict[str, int] | None = None

    @classmethod
    def prepare(cls, config: ConsensusConfig, n: int, rng) -> dict[str, np.ndarray]:
        ids = np.arange(n, dtype=np.int64)
        byz, sybil, _ = _adversaries(config, ids, rng)
        honest = ~(byz | sybil)
        init = rng.uniform("consensus_init", ids)[honest]
        lo, hi = (float(init.min()), float(init.max())) if init.size else (0.0, 1.0)
        return {"n": np.array([n], dtype=np.int64), "range": np.array([lo, hi])}

    @classmethod
    def observation_schema(cls, config: ConsensusConfig) -> tuple[str, ...]:
        if config.protocol == "gossip":
            return ("agent", "own", "nbr_sum", "nbr_count", "value", "heard_mean")
        return ("agent", "pref", "locked", "proposal", "top", "top_votes", "expected", "heard",
                "leader", *(f"heard{v}" for v in range(config.values)), "heard_other")

    @classmethod
    def choice_spec(cls, config: ConsensusConfig) -> ChoiceSpec | None:
        if config.protocol == "gossip":
            # A continuous value: LLM-style agents choose whether to take the step.
            return ChoiceSpec(
                action="move", labels=GOSSIP_MOVES, idle=0,
                fields=("value", "heard_mean", "nbr_count"),
                template=("You are {persona}.\nYour group wants to agree on one number. "
                          "Yours is {value:.3f}; the {nbr_count:.0f} people you heard hold "
                          "{heard_mean:.3f} on average.\nYour last choices: {memory}.\nYou "
                          "can {actions} (the mean of yours and theirs).\nYou choose to"))
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
        b = inbox.broadcast
        batch: dict[str, np.ndarray] = {"agent": view.agents.copy()}
        if cfg.protocol == "gossip":
            if b is not None and len(b):
                rows = b.receiver_rows().astype(np.int64)
                nbr_sum = _exact_sums(rows, b.sender_index(), b.sender_column("value"), n)
                self.heard[rows] = True
            else:
                rows, nbr_sum = np.empty(0, np.int64), np.zeros(n)
            count = np.bincount(rows, minlength=n).astype(np.float64)
            batch.update(own=self.value.copy(), nbr_sum=nbr_sum, nbr_count=count,
                         value=self.value.copy(),
                         heard_mean=np.where(count > 0, nbr_sum / np.maximum(count, 1.0),
                                             self.value))
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
            return self._apply_gossip(step, batch, actions)
        n, honest, acting = view.n_local, self.honest, ~self._down
        vote, decide, llm = self._cast(batch, actions)
        phase, epoch = self._phase(step) if cfg.protocol == "leader_commit" else ("vote", -1)
        if cfg.protocol == "leader_commit" and phase != "propose":
            decide = np.full(n, -1, dtype=np.int64)
        new = honest & acting & (decide >= 0) & (self.locked < 0)
        self.locked[new] = decide[new]
        if cfg.protocol == "majority":
            # An abstention (-1, LLM-style agents only) leaves the preference as it was.
            self.pref[:] = np.where(honest & acting & (vote >= 0), vote, self.pref)
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
                          active=undecided if going else 0, metrics=metrics,
                          # Votes carry no value: no row for value_variance to sum.
                          values={"correct": np.zeros(n, dtype=bool)})

    def _cast(self, batch: dict, actions: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vote, decide, llm): the rule's vote and decision on its rows (``ballot`` -1),
        and on LLM-style agents' rows (``llm``) their ballot (-1: abstain) and the
        protocol's decision (the tally's top value once it passes the quorum).

        In a mixed population a group's rows read -1 in the columns only the other
        group returns (``Population``), so ``ballot`` -1 tells the rule's rows apart;
        a population of LLM-style agents only gives ``ballot``.
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

    def _apply_gossip(self, step: int, batch: dict, actions: dict) -> StepResult:
        cfg, view = self.config, self.view
        new = (np.asarray(as_numpy(actions["value"]), dtype=np.float64) if "value" in actions
               else self.value.copy())
        move = actions.get("move")
        if move is not None:  # LLM-style agents' rows (the rule's say -1)
            move = as_numpy(move).astype(np.int64)
            average = (batch["own"] + batch["nbr_sum"]) / (batch["nbr_count"] + 1)
            new = np.where(move == GOSSIP_MOVES.index("keep"), self.value, new)
            new = np.where(move == GOSSIP_MOVES.index("average"), average, new)
        new = np.where(self.byz, 1.0, np.where(self.sybil, 0.0, new))
        new = np.where(self._down, self.value, new)  # crashed agents are frozen
        settled = np.abs(new - self.value) <= cfg.tolerance
        self.value[:] = new
        if view.log_due(step, cfg.log_every):
            events = make_events(np.ones(view.n_local, np.int8), view.agents, value=new)
        else:
            events = make_events(np.empty(0, np.int8), np.empty(0, np.int64))
        correct = self.honest & ~self._down
        lo, hi = self.setup["range"]
        x = new[correct]
        metrics = self._vote_metrics()
        metrics.update(gossip_agents=int(correct.sum()),
                       in_range=int(((x >= lo) & (x <= hi)).sum()),
                       honest_decided=int(settled[correct].sum()))
        acting = ~self._down
        return StepResult(events=events, messages=None,
                          broadcasts={"src": view.agents[acting], "value": new[acting],
                                      "vote": np.full(int(acting.sum()), -1, np.int64),
                                      "adversary": self.adversary[acting]},
                          active=int((~settled).sum()), metrics=metrics,
                          values={"correct": correct})

    def _vote_metrics(self) -> dict[str, int]:
        correct = self.honest & ~self._down
        h = int(correct.sum())
        # Decisions of honest agents that crashed later still count for safety and validity.
        locked, initial = self.locked[self.honest], self.initial[self.honest]
        out = {"honest": h, "honest_decided": int((self.locked[correct] >= 0).sum()),
               "gossip_agents": 0, "in_range": 0, "expected_votes": 0, "honest_votes": 0,
               "foreign_votes": 0}
        votes = self.config.protocol in ("majority", "leader_commit")
        decided = np.bincount(locked[locked >= 0], minlength=_MAX_DOMAIN) if votes else None
        proposed = np.bincount(initial, minlength=MAX_VALUES) if votes else None
        for v in range(_MAX_DOMAIN):
            out[f"decided{v}"] = int(decided[v]) if votes else 0
        for v in range(MAX_VALUES):
            out[f"proposed{v}"] = int(proposed[v]) if votes else 0
        return out

    @classmethod
    def derive_metrics(cls, totals: Mapping[str, float],
                       config: ConsensusConfig | None = None) -> dict[str, float]:
        cfg = config or ConsensusConfig()
        nan = float("nan")
        expected = int(totals["expected_votes"])
        shares = {"honest_vote_share": int(totals["honest_votes"]) / expected if expected
                  else nan}
        h = int(totals["honest"])
        if h == 0:
            return {"agreement": 0, "decided": nan, "validity": 0, "safety_violations": 0,
                    "std": nan, **shares}
        decided = int(totals["honest_decided"])
        g = int(totals["gossip_agents"])
        if g:
            std = float(np.sqrt(max(totals["value_variance"], 0.0)))
            agreement = int(std < cfg.tolerance)
            return {"agreement": agreement, "decided": decided / h,
                    "validity": int(agreement and int(totals["in_range"]) == g),
                    "safety_violations": 0, "std": std, **shares}
        per_value = [int(totals[f"decided{v}"]) for v in range(_MAX_DOMAIN)]
        chosen = [v for v, c in enumerate(per_value) if c]
        agreement = int(len(chosen) == 1 and decided >= cfg.decide_share * h)
        proposed = int(totals.get(f"proposed{chosen[0]}", 0)) if chosen else 0
        return {"agreement": agreement, "decided": decided / h,
                "validity": int(agreement and proposed > 0),
                "safety_violations": max(len(chosen) - 1, 0), "std": nan, **shares}
