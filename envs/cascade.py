"""Pure diffusion on the graph: independent cascade, linear threshold and SIR.

The validation workhorse. Every newly active agent gets exactly one
``activate`` event with its ``parent`` (who activated it; null for seeds) and
its ``root`` (the seed whose cascade it joined), so cascade trees are exact.
When several neighbours activate an agent in the same step, the parent is the
one with the smallest keyed hash of (receiver, sender): unbiased, and the
same whatever order messages arrive in or however agents are sharded.

SIR timing. An agent infected at step t (its ``activate`` event; seeds at
step 0) is infectious from that step on: it tries every out-edge at step t
(each transmits with probability ``beta``, an independent keyed draw per edge
and step) and then, at the end of the step, recovers with probability
``gamma`` (its ``recover`` event at that step). So it transmits in k >= 1
steps, k geometric on 1, 2, ... with mean 1 / gamma, and an edge from it
transmits with probability ``T = beta / (1 - (1 - beta) (1 - gamma))``
over its infection; the neighbour it reaches becomes infected at step t + 1.
On a sparse random graph of mean degree c the final share ever infected S
then solves ``S = 1 - (1 - rho) exp(-c T S)`` (rho: the seeds' share), the
bond-percolation limit (tested on Erdos-Renyi graphs).

With ``inject`` (linear threshold only), a keyed random subset of agents gets
extra exposures at one step, each logged as an ``inject`` event: a randomized
test of exposure response (``swarm.analysis.exposure.injection_effect``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import pyarrow as pa
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
from swarm.rng import KeyedRNG

__all__ = ["Cascade", "CascadeConfig", "InjectConfig"]

SUSCEPTIBLE, ACTIVE, RECOVERED = 0, 1, 2


class InjectConfig(StrictModel):
    """Extra exposures for a keyed random subset of agents: a randomized experiment.

    At ``step`` every agent drawn (a keyed draw per agent id, so the same set on
    any shard count) that is still susceptible gets ``exposures`` added to its
    exposure count, as if that many more in-neighbours had shared, and an
    ``inject`` event (``value`` = the exposures added). The extra exposures
    carry no item, so they alone do not make an agent decide: they count from
    its next real exposure on. Agents not drawn are the control group
    (``swarm.analysis.exposure.injection_effect``).
    """

    fraction: float = Field(gt=0.0, le=1.0)
    """Probability that an agent is drawn for injection."""
    exposures: int = Field(1, ge=1)
    """Exposures added to the count of each injected agent."""
    step: int = Field(1, ge=1)
    """The step at which exposures are injected (step 0 is seeding)."""


class CascadeConfig(EnvConfig):
    """Diffusion model and seeding. Give at most one of the ``seed_*`` keys."""

    kind: Literal["cascade"] = "cascade"
    applies_to = {"model": {"independent_cascade": {"p"}, "linear_threshold": {"threshold"},
                            "sir": {"beta", "gamma"}}}
    model: Literal["independent_cascade", "linear_threshold", "sir"] = "independent_cascade"
    p: float = Field(0.05, ge=0.0, le=1.0)
    """independent_cascade: probability that an activation crosses an out-edge (one chance)."""
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    """linear_threshold: one threshold for all agents; unset draws one per agent from U(0, 1)."""
    beta: float = Field(0.05, ge=0.0, le=1.0)
    """sir: per-step probability that an infected agent infects an out-neighbour, from the
    step it was infected in (it transmits in that step already)."""
    gamma: float = Field(0.2, ge=0.0, le=1.0)
    """sir: probability that an infected agent recovers at the end of each step it was
    infectious in, its first included: it transmits in 1, 2, ... steps (geometric, mean
    1 / gamma); 0 never recovers."""
    seed_fraction: float | None = Field(None, gt=0.0, le=1.0)
    """Fraction of agents active at step 0 (rounded, at least 1). Default 0.01."""
    seed_count: int | None = Field(None, ge=1)
    """Number of agents active at step 0."""
    seed_ids: list[int] | None = None
    """Explicit agent ids active at step 0."""
    inject: InjectConfig | None = None
    """linear_threshold: extra exposures for a random subset of agents at one step
    (a causal test of exposure response), e.g. ``{fraction: 0.1, exposures: 1, step: 1}``."""

    @model_validator(mode="after")
    def _check(self) -> CascadeConfig:
        seed_keys = ("seed_fraction", "seed_count", "seed_ids")
        given = [k for k in seed_keys if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"give one of seed_fraction, seed_count, seed_ids; got {given}")
        if self.seed_ids is not None and (not self.seed_ids or min(self.seed_ids) < 0):
            raise ValueError("seed_ids must be a non-empty list of agent ids >= 0")
        if self.inject is not None and self.model != "linear_threshold":
            raise ValueError(f"inject applies to model='linear_threshold' only (the only model "
                             f"with an exposure count); got model={self.model!r}: remove inject "
                             "or set model: linear_threshold")
        return self


@register_env
class Cascade(Env):
    """Independent cascade, linear threshold (weights 1/in-degree) or SIR.

    IC and SIR decide at the sender: the policy draws per out-edge of each
    newly active (IC) or infectious (SIR) agent, keyed by the edge (its two ends),
    and only transmissions travel, as point-to-point messages. LT exposes every
    out-neighbour, so newly active agents broadcast their root: the engine
    ships a broadcast once to each shard and fans it out there, where the
    policy decides per exposed agent whether it adopts.

    With ``inject`` (LT only), the agents drawn for injection that are still
    susceptible at ``inject.step`` get extra exposures and an ``inject`` event;
    until that step shard 0 reports one more active agent than it has, so the
    run is not found quiescent (and its events dropped) before the injection.
    """

    name = "cascade"
    Config = CascadeConfig
    # New types go at the end: the codes of the existing ones must not change.
    event_types = ("activate", "recover", "inject")
    agent_state = ("status", "root", "exposures")
    actions = ("transmit", "adopt", "text")

    @classmethod
    def observation_schema(cls, config: CascadeConfig) -> tuple[str, ...]:
        # IC and SIR decide per out-edge of a transmitter; LT per exposed agent.
        if config.model != "linear_threshold":
            return ("edge",)
        return ("agent", "influence", "threshold", "exposures", "in_degree")
    # What an LLM-style agent wrote when it shared (null for rule-based agents).
    event_columns = {"text": pa.string()}
    metric_names = ("new_active", "recovered", "ever_active")
    message_fields = {"src": np.int64, "root": np.int64}
    broadcast_fields = {"root": np.int64}
    # status 1 + root 8 + infected list 8 + LT exposures 4 and threshold 8.
    state_bytes_per_agent = 29
    # A step acts on its frontier, not on every agent. Measured: IC p=0.3 on ER c=4 at
    # 1e8 peaked at 1.5M new actives (1.5% of agents) in one step; 0.1 leaves room for
    # denser graphs and faster cascades (an upper figure, not a fit).
    peak_active_share = 0.1
    smoke_config = {"steps": 30, "graph": {"kind": "barabasi_albert", "n": 600, "m": 3},
                    "env": {"kind": "cascade", "model": "sir", "beta": 0.2, "gamma": 0.2,
                            "seed_count": 5}}

    def __init__(self, config: CascadeConfig, view: ShardView, setup: Mapping[str, np.ndarray]):
        super().__init__(config, view, setup)
        n = view.n_local
        self.status = np.zeros(n, dtype=np.int8)
        self.root = np.full(n, -1, dtype=np.int64)
        self.infected = np.empty(0, dtype=np.int64)  # sir: local rows still infectious
        self.ever_active = 0
        self.exposures = None
        if config.model == "linear_threshold":
            self.exposures = np.zeros(n, dtype=np.int32)
            # A keyed draw per agent: recomputed on restart, so not part of the state.
            if config.threshold is None:
                self.threshold = view.rng.uniform("lt_threshold", view.agents)
            else:
                self.threshold = np.full(n, config.threshold)
        seeds = np.asarray(setup["seed_ids"], dtype=np.int64)
        mine = seeds[(seeds >= view.agents[0]) & (seeds <= view.agents[-1])] if n else seeds[:0]
        rows = view.local_index(mine)
        ok = (rows >= 0) & (rows < n)
        ok[ok] &= view.agents[rows[ok]] == mine[ok]
        self._seed_rows = np.sort(rows[ok])
        # Handed from observe to apply within a step: what the policy decides
        # on (IC, SIR: transmitter rows and their out-edges; LT: receiver rows,
        # senders, roots) and the activations to log.
        self._candidates = None
        self._pending: dict[str, np.ndarray] = {}
        self._injected = np.empty(0, np.int64)  # rows injected this step, logged in apply
        # Rows that left the defaults, in chunks (for sparse checkpoints).
        self._touched: list[np.ndarray] = []

    @classmethod
    def prepare(cls, config: CascadeConfig, n: int, rng: KeyedRNG) -> dict[str, np.ndarray]:
        if config.seed_ids is not None:
            ids = np.unique(np.asarray(config.seed_ids, dtype=np.int64))
            if ids[-1] >= n:
                raise ValueError(f"env.seed_ids names agent {ids[-1]} but the graph has n={n}")
            return {"seed_ids": ids}
        if config.seed_count is not None:
            if config.seed_count > n:
                raise ValueError(f"env.seed_count={config.seed_count} exceeds the graph's n={n}")
            count = config.seed_count
        else:
            fraction = 0.01 if config.seed_fraction is None else config.seed_fraction
            count = max(1, round(fraction * n))
        # The `count` agents with the smallest keyed hash: a uniform sample
        # that depends only on the seed, never on sharding.
        keys = rng.bits("seeds", np.arange(n, dtype=np.int64))
        ids = np.argpartition(keys, count - 1)[:count] if count < n else np.arange(n)
        return {"seed_ids": np.sort(ids.astype(np.int64))}

    @classmethod
    def choice_spec(cls, config: CascadeConfig) -> ChoiceSpec | None:
        # Only linear threshold decides per agent (share an item it was exposed
        # to, or not); IC and SIR decide per edge, which is not an agent's choice.
        if config.model != "linear_threshold":
            return None
        return ChoiceSpec(
            action="adopt", labels=("ignore", "share"),
            fields=("exposures", "in_degree", "influence"), idle=0, text="text",
            template=("You are {persona}.\n{exposures} of the {in_degree} people you follow "
                      "shared a post.\nYour last actions: {memory}.\nYou can {actions}.\n"
                      "You choose to"),
            text_template=("You are {persona}. You {choice} a post that {exposures} people "
                           "you follow shared, and you add a short comment:"),
        )

    @classmethod
    def uses_broadcasts(cls, config: CascadeConfig) -> bool:
        return config.model == "linear_threshold"

    def default_policy(self):
        if self.config.model == "independent_cascade":
            return "edge_transmission", {"p": self.config.p, "once": True}
        if self.config.model == "sir":
            return "edge_transmission", {"p": self.config.beta, "once": False}
        return "linear_threshold", {}

    # -- checkpoints -----------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        # Sparse: agents never reached keep the defaults (susceptible, no root)
        # and are usually the great majority. The rows that left
        # them are collected as they change, so a checkpoint never sweeps all agents.
        touched = self._collect("_touched")
        state = {"touched": touched, "touched_status": self.status[touched],
                 "touched_root": self.root[touched], "infected": self.infected,
                 "ever_active": np.asarray(self.ever_active)}
        if self.exposures is not None:
            # Dense: exposure reaches most agents in a linear-threshold run, and
            # a copy of 4 bytes per agent is cheaper than tracking who changed.
            state["exposures"] = self.exposures
        return state

    def _collect(self, name: str) -> np.ndarray:
        """The rows in the chunk list ``name`` (each row appears once), merged into one chunk."""
        chunks = getattr(self, name)
        rows = np.concatenate(chunks) if chunks else np.empty(0, np.int64)
        setattr(self, name, [rows])
        return rows

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.status[:] = SUSCEPTIBLE
        self.root[:] = -1
        self.status[state["touched"]] = state["touched_status"]
        self.root[state["touched"]] = state["touched_root"]
        self._touched = [state["touched"]]
        self.infected = state["infected"]
        self.ever_active = int(state["ever_active"])
        if self.exposures is not None:
            self.exposures[:] = state["exposures"]

    # -- the round -----------------------------------------------------------

    def _winners(self, step: int, rows: np.ndarray, src: np.ndarray):
        """Per distinct receiver row (ascending): the winning message's index and the count."""
        key = self.view.rng.bits("parent", self.view.agents[rows], src, step=step)
        # Group by row with one plain sort, then take each group's smallest key (the
        # lowest index among equal keys): cheaper than a two-key lexsort.
        order = np.argsort(rows, kind="stable")
        r = rows[order]
        first = np.ones(r.shape[0], dtype=bool)
        first[1:] = r[1:] != r[:-1]
        starts = np.flatnonzero(first)
        counts = np.diff(np.append(starts, r.shape[0]))
        if starts.shape[0] == r.shape[0]:  # one message per row: nothing to choose
            return order, counts
        k = key[order]
        low = np.minimum.reduceat(k, starts)
        hit = np.flatnonzero(k == np.repeat(low, counts))
        # The first hit of each group (hits come in group order).
        group = np.searchsorted(starts, hit, side="right") - 1
        firsts = np.ones(hit.shape[0], dtype=bool)
        firsts[1:] = group[1:] != group[:-1]
        # Every group holds its own minimum, so there is one first hit per group; among
        # equal keys (a sender twice) it is the lowest message index (a stable sort).
        return order[hit[firsts]], counts

    def _activate(self, rows: np.ndarray, parent: np.ndarray, root: np.ndarray,
                  text: np.ndarray | None = None) -> None:
        if rows.shape[0]:
            self._touched.append(rows)
        self.status[rows] = ACTIVE
        self.root[rows] = root
        self.ever_active += rows.shape[0]
        self._pending = {"rows": rows, "parent": parent, "root": root}
        if text is not None:
            self._pending["text"] = text

    def _inject(self, inject: InjectConfig) -> None:
        """Add the injected exposures to the drawn agents that are still susceptible."""
        view = self.view
        drawn = view.rng.bernoulli("inject", view.agents, p=inject.fraction)
        rows = np.flatnonzero(drawn & (self.status == SUSCEPTIBLE))
        self.exposures[rows] += np.int32(inject.exposures)
        self._injected = rows

    def _with_inject_events(self, events: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``events`` followed by one ``inject`` event per agent injected this step."""
        rows, self._injected = self._injected, np.empty(0, np.int64)
        extra = make_events(np.full(rows.shape[0], self.event_code("inject"), np.int8),
                            self.view.agents[rows],
                            value=np.full(rows.shape[0], self.config.inject.exposures))
        if "text" in events:
            extra["text"] = np.full(rows.shape[0], None, object)
        return {k: np.concatenate([v, extra[k]]) for k, v in events.items()}

    def observe(self, step: int, inbox: Inbox) -> dict[str, np.ndarray]:
        view, model = self.view, self.config.model
        self._candidates, self._pending = None, {}
        if step == 0:
            rows = self._seed_rows
            self._activate(rows, np.full(rows.shape[0], -1, np.int64), view.agents[rows])
        elif model == "linear_threshold":
            inject = self.config.inject
            if inject is not None and step == inject.step:
                self._inject(inject)
            b = inbox.broadcast
            if b is not None and len(b):
                got = b.take()
                open_ = np.flatnonzero(self.status[got["row"]] == SUSCEPTIBLE)
                rows, src, root = got["row"][open_], got["src"][open_], got["root"][open_]
                win, counts = self._winners(step, rows, src)
                uniq = rows[win]
                self.exposures[uniq] += counts.astype(np.int32)
                self._candidates = (uniq, src[win], root[win])
                in_degree = view.in_degree[uniq]
                return {
                    "agent": view.agents[uniq],
                    "influence": self.exposures[uniq] / np.maximum(in_degree, 1),
                    "threshold": self.threshold[uniq],
                    "exposures": self.exposures[uniq],
                    "in_degree": in_degree,
                }
        elif inbox.direct is not None and inbox.direct["dst"].shape[0]:
            d = inbox.direct
            rows = view.local_index(d["dst"])
            open_ = np.flatnonzero(self.status[rows] == SUSCEPTIBLE)
            rows, src, root = rows[open_], d["src"][open_], d["root"][open_]
            win, _ = self._winners(step, rows, src)
            self._activate(rows[win], src[win], root[win])
        if model == "linear_threshold":
            empty = np.empty(0, dtype=np.float64)
            return {"agent": np.empty(0, np.int64), "influence": empty, "threshold": empty,
                    "exposures": np.empty(0, np.int32), "in_degree": np.empty(0, np.int32)}
        # IC and SIR: the transmitters' out-edges, each decided by its keyed draw.
        new = self._pending["rows"] if self._pending else np.empty(0, np.int64)
        if model == "sir":
            if new.shape[0]:
                self.infected = np.concatenate([self.infected, new])
            transmitters = self.infected  # every infectious agent tries again each step
        else:
            transmitters = new
        pos, edge, counts = view.out_edges(transmitters)
        self._candidates = (transmitters, pos, counts)
        return {"edge": edge}

    def apply(self, step: int, batch: dict[str, np.ndarray], actions: dict) -> StepResult:
        view, model = self.view, self.config.model
        messages = broadcasts = None
        if model == "linear_threshold":
            if self._candidates is not None:
                rows, src, root = self._candidates
                adopt = as_numpy(actions["adopt"]).astype(bool)
                text = actions.get("text")
                if text is not None:
                    text = np.asarray(text, dtype=object)[adopt]
                self._activate(rows[adopt], src[adopt], root[adopt], text)
            new = self._pending["rows"] if self._pending else np.empty(0, np.int64)
            broadcasts = {"src": view.agents[new], "root": self.root[new]}
        else:
            # Only the edges that transmit travel, point to point: at small p that
            # is a few percent of what a broadcast to every neighbour would be.
            rows, pos, counts = self._candidates
            keep = np.flatnonzero(as_numpy(actions["transmit"]))
            src_rows = view.edge_sources(rows, counts, keep)
            messages = {"dst": view.indices[pos[keep]], "src": view.agents[src_rows],
                        "root": self.root[src_rows]}
        pend = self._pending
        new = pend["rows"] if pend else np.empty(0, np.int64)
        recovered = np.empty(0, dtype=np.int64)
        if model == "sir" and self.infected.shape[0]:
            rec = view.rng.bernoulli("recover", view.agents[self.infected], p=self.config.gamma,
                                     step=step)
            recovered = self.infected[rec]
            self.status[recovered] = RECOVERED
            self.infected = self.infected[~rec]
        n_new = new.shape[0]
        if n_new or recovered.shape[0]:
            code_a, code_r = self.event_code("activate"), self.event_code("recover")
            none = np.full(recovered.shape[0], -1, np.int64)
            events = make_events(
                np.concatenate([np.full(n_new, code_a, np.int8),
                                np.full(recovered.shape[0], code_r, np.int8)]),
                np.concatenate([view.agents[new], view.agents[recovered]]),
                parent=np.concatenate([pend["parent"] if n_new else none[:0], none]),
                root=np.concatenate([pend["root"] if n_new else none[:0], self.root[recovered]]),
            )
            if "text" in pend:
                events["text"] = np.concatenate([pend["text"],
                                                 np.full(recovered.shape[0], None, object)])
        else:
            events = make_events(np.empty(0, np.int8), np.empty(0, np.int64))
        if self._injected.shape[0]:
            events = self._with_inject_events(events)
        self._pending, self._candidates = {}, None
        active = self.infected.shape[0] if model == "sir" else n_new
        inject = self.config.inject
        if inject is not None and step < inject.step and view.shard == 0:
            # Hold the run open until the injection: a quiescent step would end it
            # first. One count from shard 0 only, so the sum is shard-independent.
            active += 1
        return StepResult(
            events=events,
            messages=messages,
            broadcasts=broadcasts,
            active=int(active),
            metrics={"new_active": n_new, "recovered": int(recovered.shape[0]),
                     "ever_active": self.ever_active},
        )
