"""Coordination protocols on the graph: gossip averaging, majority vote, leader-based commit.

One env, three protocols (``protocol``), each an honest rule in
``swarm.policies.consensus``. Agents talk to their out-neighbours by
broadcast, which the engine's fault injection (``faults:`` of the run
config: drop, partition, crash-stop) acts on like any other message. A keyed
``byzantine`` fraction of the agents is the adversary; they are modelled in
the env (they are not a policy) and are excluded from every metric.

* ``gossip``: every agent holds a value in [0, 1] (a keyed uniform draw) and
  each step moves to the mean of its own value and those its in-neighbours
  broadcast last step. Byzantine agents broadcast 1.0, the extreme value,
  every step, dragging honest agents out of the range they started in.
* ``majority`` (rounds of voting): every agent starts with one of ``values``
  proposals (keyed) and votes it to its neighbours. Each receiver reports
  the votes it heard, per value, into the run's totals, so step ``s + 2``
  sees the global tally of the votes cast at ``s`` (a vote counts once per
  neighbour that heard it: votes are weighted by out-degree). A value with
  more than half of the *expected* votes (the sum of in-degrees: lost
  messages count against every value) is decided by every agent that has
  ever heard from a neighbour; otherwise agents adopt the plurality (ties to
  the smallest value) and vote again. Votes are cast at steps ``0 ..
  rounds - 1``. Byzantine voters equivocate: each of their messages carries a
  keyed random value other than the current plurality, different per receiver.
* ``leader_commit``: step 0 is a hello broadcast, then epochs of three
  steps (``phase = (step - 1) % 3``, ``epoch = (step - 1) // 3``) with a
  keyed leader per epoch, chosen among all agents:

  - PROPOSE: the leader, if it has heard from a neighbour (a crashed leader
    has not), posts its proposal (its decided value, else its initial one)
    on the totals channel, which reaches every agent;
  - VOTE: every agent broadcasts a vote: its decided value if it has one,
    else the proposal it received;
  - TALLY: receivers report the votes they heard, per value, into totals;
  - the next PROPOSE step reads the global tally first: a value with more
    than 2/3 of the expected votes is committed by every agent that has ever
    heard from a neighbour. Otherwise the epoch failed; the next leader tries.

  A Byzantine leader proposes a keyed random value to each agent
  (equivocation); Byzantine voters send each receiver a keyed value other
  than the honest proposal (any value under a Byzantine leader). Because
  every agent reads the same global tally and at most one value can pass
  2/3, honest agents never decide differently: Byzantine agents break
  *liveness*, not safety. With a Byzantine share ``b``, honest votes are at
  most ``1 - b`` of the expected ones, so once ``b > 1/3`` no value ever
  passes and nothing is decided.

The totals channel is the simulator's reliable population-wide broadcast
(the engine does not fault it); an agent that has never heard from a
neighbour (a crashed one, in practice) ignores it, so crashed agents never
decide. Faulty sends cost only liveness: they lower every count.

Metrics, as additive integer parts finished in ``derive_metrics`` over the
honest agents: ``decided`` (share of honest agents that decided; gossip:
whose value moved by at most ``tolerance`` this step), ``agreement`` (1 when
at least ``decide_share`` of the honest agents decided and all decided the
same value; gossip: when the population std of honest values is below
``tolerance``), ``validity`` (1 when there is agreement on a value some honest
agent proposed; gossip: every honest value lies within the range of the
honest initial values), ``safety_violations`` (distinct values decided by
honest agents, minus 1; 0 for gossip), ``std`` (gossip: honest values'
standard deviation). Messages used are the engine's ``messages`` metric.
Steps to agreement: ``agreement_step(run.metrics())``.

Simplification: Sybil identities are not modelled separately; a controller's
identities behave like Byzantine agents (they follow the same adversarial
schedule), so set ``byzantine`` to the identities' share.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from swarm.envs.base import Env, EnvConfig, Inbox, ShardView, StepResult, make_events, register_env
from swarm.policies.base import as_numpy
from swarm.policies.consensus import GossipAverage, LeaderCommitVote, MajorityVote

__all__ = ["MAX_VALUES", "Consensus", "ConsensusConfig", "agreement_step"]

#: The most distinct proposals a vote protocol may have (metric columns are fixed).
MAX_VALUES = 8
_FIXED = float(2**32)  # fixed-point scale of gossip's metric parts


class ConsensusConfig(EnvConfig):
    """Protocol, initial proposals, adversary and what counts as agreement."""

    kind: Literal["consensus"] = "consensus"
    protocol: Literal["gossip", "majority", "leader_commit"] = "gossip"
    values: int = Field(2, ge=2, le=MAX_VALUES)
    """majority, leader_commit: number of distinct initial proposals (a keyed draw per agent)."""
    byzantine: float = Field(0.0, ge=0.0, lt=1.0)
    """Share of Byzantine agents (a keyed draw per agent); they send adversarial values."""
    rounds: int = Field(10, ge=1)
    """majority: the steps at which votes are cast (0 .. rounds - 1)."""
    tolerance: float = Field(1e-3, gt=0.0)
    """gossip: agreement when the honest values' std is below this."""
    decide_share: float = Field(1.0, gt=0.0, le=1.0)
    """majority, leader_commit: share of honest agents that must decide for agreement
    (lower it under crash faults: crashed agents hear nothing and never decide)."""
    log_every: int = Field(10, ge=1)
    """gossip: log a ``value`` event for every agent at steps 0, log_every, ..."""

    @model_validator(mode="after")
    def _check(self) -> ConsensusConfig:
        only = {"gossip": {"values", "rounds", "decide_share"},
                "majority": {"tolerance", "log_every"},
                "leader_commit": {"tolerance", "log_every", "rounds"}}[self.protocol]
        foreign = {k for k in only & self.model_fields_set
                   if getattr(self, k) != type(self).model_fields[k].default}
        if foreign:
            raise ValueError(f"{sorted(foreign)} do not apply to protocol={self.protocol!r}")
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


def _fixed(values: np.ndarray) -> int:
    return int(np.rint(values * _FIXED).astype(np.int64).sum())


def _byzantine(rng, ids: np.ndarray, share: float) -> np.ndarray:
    return rng.bernoulli("consensus_byzantine", ids, p=share) if share > 0 else \
        np.zeros(ids.shape[0], dtype=bool)


def _other_value(bits: np.ndarray, avoid: np.ndarray | int, values: int) -> np.ndarray:
    """A keyed value different from ``avoid`` (any value where ``avoid`` < 0)."""
    avoid = np.broadcast_to(np.asarray(avoid, dtype=np.int64), bits.shape)
    any_value = (bits % np.uint64(values)).astype(np.int64)
    r = (bits % np.uint64(values - 1)).astype(np.int64)
    other = r + (r >= avoid)
    return np.where(avoid >= 0, other, any_value)


@register_env
class Consensus(Env):
    """Agreement protocols under Byzantine agents and engine faults (see the module docstring)."""

    name = "consensus"
    Config = ConsensusConfig
    event_types = ("decide", "value")
    metric_names = (
        "honest", "honest_decided", "share_fx",
        *(f"decided{v}" for v in range(MAX_VALUES)),
        *(f"proposed{v}" for v in range(MAX_VALUES)),
        "gossip_agents", "value_fx", "valuesq_fx", "in_range", "tolerance_fx",
    )
    derived_metric_names = ("agreement", "decided", "validity", "safety_violations", "std")
    summary_metrics = ("agreement", "decided", "validity", "safety_violations")
    broadcast_fields = {"value": np.float64, "vote": np.int64, "byz": np.int8}
    state_attrs = ("value", "pref", "locked", "heard", "honest_proposal")
    state_bytes_per_agent = 32
    smoke_config = {"steps": 20,
                    "graph": {"kind": "watts_strogatz", "n": 200, "k": 6, "p": 0.1},
                    "env": {"kind": "consensus", "protocol": "gossip", "log_every": 5}}

    def __init__(self, config: ConsensusConfig, view: ShardView, setup: Mapping[str, np.ndarray]):
        super().__init__(config, view, setup)
        ids = view.agents
        self.byz = _byzantine(view.rng, ids, config.byzantine)
        self.value = view.rng.uniform("consensus_init", ids)
        self.value[self.byz] = 1.0
        self.initial = (view.rng.bits("consensus_init", ids) % np.uint64(config.values)).astype(
            np.int64)
        self.pref = self.initial.copy()
        self.locked = np.full(view.n_local, -1, dtype=np.int64)
        self.heard = np.zeros(view.n_local, dtype=bool)
        #: leader_commit: the honest leader's proposal of the current epoch (-1: none).
        self.honest_proposal = -1
        self._received: dict[str, np.ndarray] = {}

    @classmethod
    def prepare(cls, config: ConsensusConfig, n: int, rng) -> dict[str, np.ndarray]:
        ids = np.arange(n, dtype=np.int64)
        honest = ~_byzantine(rng, ids, config.byzantine)
        init = rng.uniform("consensus_init", ids)[honest]
        lo, hi = (float(init.min()), float(init.max())) if init.size else (0.0, 1.0)
        return {"n": np.array([n], dtype=np.int64), "range": np.array([lo, hi])}

    def default_policy(self):
        return {"gossip": GossipAverage, "majority": MajorityVote,
                "leader_commit": LeaderCommitVote}[self.config.protocol]()

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        super().load_state_dict(state)
        self.heard = np.asarray(self.heard, dtype=bool)
        self.honest_proposal = int(self.honest_proposal)

    # -- the round -----------------------------------------------------------

    def _phase(self, step: int) -> tuple[str, int]:
        """leader_commit: the phase of ``step`` and its epoch."""
        if step == 0:
            return "hello", -1
        return ("propose", "vote", "tally")[(step - 1) % 3], (step - 1) // 3

    def _leader(self, epoch: int) -> int:
        n = int(self.setup["n"][0])
        return int(self.view.rng.bits("consensus_leader", np.array([epoch]))[0] % np.uint64(n))

    def _tally(self, totals: dict[str, int] | None) -> tuple[int, int, int]:
        """(top value, its votes, expected votes) of the last global tally; top -1: none."""
        if totals is None:
            return -1, 0, 0
        counts = np.array([int(totals[f"votes{v}"]) for v in range(self.config.values)])
        if counts.max() == 0:
            return -1, 0, 0
        top = int(counts.argmax())  # ties: the smallest value
        return top, int(counts[top]), int(totals["expected"])

    def observe(self, step: int, inbox: Inbox) -> dict[str, np.ndarray]:
        cfg, view = self.config, self.view
        n = view.n_local
        b = inbox.broadcast
        got = b.take() if b is not None and len(b) else None
        if got is not None:
            order = np.lexsort((got["src"], got["row"]))
            got = {k: v[order] for k, v in got.items()}
            self.heard[got["row"]] = True
        batch: dict[str, np.ndarray] = {"agent": view.agents.copy()}
        if cfg.protocol == "gossip":
            rows = got["row"].astype(np.int64) if got is not None else np.empty(0, np.int64)
            vals = got["value"] if got is not None else np.empty(0)
            batch.update(own=self.value.copy(),
                         nbr_sum=np.bincount(rows, weights=vals, minlength=n),
                         nbr_count=np.bincount(rows, minlength=n).astype(np.float64))
            return batch
        top, top_votes, expected = self._tally(inbox.totals)
        proposal = np.full(n, -1, dtype=np.int64)
        if cfg.protocol == "leader_commit":
            phase, epoch = self._phase(step)
            if phase == "vote" and inbox.totals is not None:
                posted = int(inbox.totals["proposal"])
                self.honest_proposal = posted - 1 if posted > 0 else -1
                proposal[:] = self.honest_proposal
                if int(inbox.totals["byz_leader"]) > 0:
                    bits = view.rng.bits("consensus_byz_proposal", view.agents, step=epoch)
                    proposal = _other_value(bits, -1, cfg.values)
            avoid = self.honest_proposal
        else:
            avoid = top
        self._received = self._votes(step, got, avoid)
        batch.update(pref=self.pref.copy(), locked=self.locked.copy(), proposal=proposal,
                     top=np.full(n, top, dtype=np.int64),
                     top_votes=np.full(n, top_votes, dtype=np.int64),
                     expected=np.full(n, expected, dtype=np.int64), heard=self.heard.copy())
        return batch

    def _votes(self, step: int, got: dict | None, avoid: int) -> dict[str, np.ndarray]:
        """Votes heard this step per value (Byzantine senders' replaced by their lie)."""
        if got is None:
            return {"row": np.empty(0, np.int64), "vote": np.empty(0, np.int64)}
        vote = got["vote"].astype(np.int64)
        byz = got["byz"].astype(bool) & (vote >= 0)
        if byz.any():
            # Equivocation: each receiver gets its own keyed value (per edge and step).
            bits = self.view.rng.bits("consensus_byz_vote", got["edge"][byz], step=step)
            vote[byz] = _other_value(bits, avoid, self.config.values)
        keep = vote >= 0
        return {"row": got["row"][keep].astype(np.int64), "vote": vote[keep]}

    def apply(self, step: int, batch: dict[str, np.ndarray], actions: dict) -> StepResult:
        cfg, view = self.config, self.view
        if cfg.protocol == "gossip":
            return self._apply_gossip(step, actions)
        n, honest = view.n_local, ~self.byz
        vote = np.asarray(as_numpy(actions["vote"]), dtype=np.int64)
        decide = np.asarray(as_numpy(actions["decide"]), dtype=np.int64)
        phase, epoch = self._phase(step) if cfg.protocol == "leader_commit" else ("vote", -1)
        if cfg.protocol == "leader_commit" and phase != "propose":
            decide = np.full(n, -1, dtype=np.int64)
        new = honest & (decide >= 0) & (self.locked < 0)
        self.locked[new] = decide[new]
        if cfg.protocol == "majority":
            self.pref = np.where(honest, vote, self.pref)
        totals = {f"votes{v}": 0 for v in range(cfg.values)}
        totals.update(expected=0, proposal=0, byz_leader=0)
        tally = cfg.protocol == "majority" and 1 <= step <= cfg.rounds or phase == "tally"
        if tally:
            rx = self._received
            for v in range(cfg.values):
                totals[f"votes{v}"] = int((rx["vote"] == v).sum())
            totals["expected"] = int(view.in_degree.astype(np.int64).sum())
        if phase == "propose":
            leader = self._leader(epoch)
            row = int(np.searchsorted(view.agents, leader))
            if row < n and view.agents[row] == leader and self.heard[row]:
                if self.byz[row]:
                    totals["byz_leader"] = 1
                else:
                    mine = self.locked[row] if self.locked[row] >= 0 else self.initial[row]
                    totals["proposal"] = int(mine) + 1
        sends = step < cfg.rounds if cfg.protocol == "majority" else phase in ("hello", "vote")
        broadcasts = None
        if sends:
            out = np.where(honest, vote, 0) if phase != "hello" else np.full(n, -1, np.int64)
            broadcasts = {"src": view.agents, "value": np.zeros(n),
                          "vote": out.astype(np.int64), "byz": self.byz.astype(np.int8)}
        rows = np.flatnonzero(new)
        events = make_events(np.zeros(rows.shape[0], np.int8), view.agents[rows],
                             item=self.locked[rows], value=self.locked[rows].astype(np.float64))
        undecided = int((honest & (self.locked < 0)).sum())
        # A tally still in flight can decide agents; leader epochs go on until ``steps``.
        going = cfg.protocol == "leader_commit" or step <= cfg.rounds
        return StepResult(events=events, messages=None, broadcasts=broadcasts, totals=totals,
                          active=undecided if going else 0, metrics=self._vote_metrics())

    def _apply_gossip(self, step: int, actions: dict) -> StepResult:
        cfg, view = self.config, self.view
        new = np.asarray(as_numpy(actions["value"]), dtype=np.float64)
        new = np.where(self.byz, 1.0, new)
        settled = np.abs(new - self.value) <= cfg.tolerance
        self.value = new
        if step % cfg.log_every == 0:
            events = make_events(np.ones(view.n_local, np.int8), view.agents, value=new)
        else:
            events = make_events(np.empty(0, np.int8), np.empty(0, np.int64))
        honest = ~self.byz
        lo, hi = self.setup["range"]
        x = new[honest]
        metrics = self._vote_metrics()
        metrics.update(gossip_agents=int(honest.sum()), value_fx=_fixed(x),
                       valuesq_fx=_fixed(x * x),
                       in_range=int(((x >= lo) & (x <= hi)).sum()),
                       honest_decided=int(settled[honest].sum()),
                       tolerance_fx=int(honest.sum()) * int(round(min(cfg.tolerance, 1.0)
                                                                  * _FIXED)))
        return StepResult(events=events, messages=None,
                          broadcasts={"src": view.agents, "value": new,
                                      "vote": np.full(view.n_local, -1, np.int64),
                                      "byz": self.byz.astype(np.int8)},
                          active=int((~settled).sum()), metrics=metrics)

    def _vote_metrics(self) -> dict[str, int]:
        honest = ~self.byz
        h = int(honest.sum())
        locked, initial = self.locked[honest], self.initial[honest]
        out = {"honest": h, "honest_decided": int((locked >= 0).sum()),
               "share_fx": h * int(round(self.config.decide_share * _FIXED)),
               "gossip_agents": 0, "value_fx": 0, "valuesq_fx": 0, "in_range": 0,
               "tolerance_fx": 0}
        gossip = self.config.protocol == "gossip"
        for v in range(MAX_VALUES):
            out[f"decided{v}"] = 0 if gossip else int((locked == v).sum())
            out[f"proposed{v}"] = 0 if gossip else int((initial == v).sum())
        return out

    @classmethod
    def derive_metrics(cls, totals: Mapping[str, float]) -> dict[str, float]:
        h = int(totals["honest"])
        if h == 0:
            return {"agreement": 0, "decided": float("nan"), "validity": 0,
                    "safety_violations": 0, "std": float("nan")}
        decided = int(totals["honest_decided"])
        g = int(totals["gossip_agents"])
        if g:
            f = _FIXED
            s1, s2 = int(totals["value_fx"]), int(totals["valuesq_fx"])
            std = float(np.sqrt(max((g * s2 * f - s1 * s1) / (g * g * f * f), 0.0)))
            agreement = int(std < int(totals["tolerance_fx"]) / (g * f))
            return {"agreement": agreement, "decided": decided / h,
                    "validity": int(agreement and int(totals["in_range"]) == g),
                    "safety_violations": 0, "std": std}
        per_value = [int(totals[f"decided{v}"]) for v in range(MAX_VALUES)]
        chosen = [v for v, c in enumerate(per_value) if c]
        agreement = int(len(chosen) == 1 and decided * _FIXED >= int(totals["share_fx"]))
        valid = int(agreement and int(totals[f"proposed{chosen[0]}"]) > 0) if chosen else 0
        return {"agreement": agreement, "decided": decided / h, "validity": valid,
                "safety_violations": max(len(chosen) - 1, 0), "std": float("nan")}
