"""Opinion dynamics on the graph: DeGroot, Friedkin-Johnsen, Deffuant, Hegselmann-Krause.

Every agent holds an opinion in [0, 1]^dims (a scalar when ``dims = 1``).
Each step every agent broadcasts its opinion to its out-neighbours; at the
next step each agent updates from what its in-neighbours held (a synchronous
update: everyone reads the previous step's opinions):

* ``degroot``: ``x <- w x + (1 - w) * mean of in-neighbours`` (``w =
  self_weight``; the lazy part makes the chain aperiodic, so it converges on
  bipartite graphs too). On a connected undirected graph every opinion tends
  to the degree-weighted mean of the initial opinions.
* ``friedkin_johnsen``: ``x <- s x(0) + (1 - s) * [DeGroot update]``
  (``s = stubbornness``): agents keep a pull toward their prejudice, so
  disagreement persists.
* ``hegselmann_krause``: the mean of the agent's own opinion and those of the
  in-neighbours within ``confidence`` (Euclidean distance for vectors).
* ``deffuant``: each agent meets one in-neighbour per step, the one with the
  smallest keyed hash of (agent, neighbour, step), and moves a fraction
  ``mu`` toward it if it is within ``confidence``. Only the receiver moves:
  the pairing is asymmetric (a symmetric pair update would need a matching
  across shards, and on average an edge is met from both ends anyway).

The update rules are the default policies (``swarm.policies.opinion``); the
env aggregates the inbox into per-agent columns for them, sorting the
received opinions by (receiver, sender) before any float sum, so results do
not depend on sharding.

Metrics are declared reductions (``metrics``), which the engine computes
exactly for any shard count: ``variance`` is the population variance
(summed over dimensions for vectors: the trace of the covariance), ``mean``
the mean of dimension 0, ``m2``..``m4`` its raw moments. Derived from them:
``bimodality`` is Sarle's bimodality coefficient of dimension 0
(``(skew^2 + 1) / kurtosis``; above 5/9 hints at two modes; NaN when the
std is below ``BIMODALITY_MIN_STD`` = 0.01, where it says nothing about
modes); ``group_distance`` is the mean opinion
(dimension 0) of agents above 0.5 minus that of agents at or below 0.5 (0
when a side is empty; a fixed split, so two clusters on one side of 0.5 do
not show in it); ``consensus`` is 1 when the population standard
deviation (square root of ``variance``) is below ``tolerance``. The metrics
table has one row per step, so *when* consensus was reached is the first
step with ``consensus = 1``: ``consensus_step(run.metrics())`` reads it.

Messages never stop: agents broadcast every step (a receiver keeps no memory
of its neighbours' opinions), so a run lasts ``steps`` steps even once
opinions are stationary. ``active`` counts agents whose opinion moved by more
than ``tolerance`` (any coordinate) in the step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from swarm.contract import as_numpy
from swarm.envs.base import (
    ChoiceSpec,
    Column,
    Env,
    EnvConfig,
    Inbox,
    Mean,
    ShardView,
    StepResult,
    Variance,
    make_events,
    register_env,
)

__all__ = ["MAX_DIMS", "Opinion", "OpinionConfig", "consensus_step"]

#: Smallest population std at which ``bimodality`` is reported (NaN below).
BIMODALITY_MIN_STD = 0.01

#: The most opinion dimensions a run may have (the broadcast fields are fixed).
MAX_DIMS = 4
#: What LLM-style agents choose: keep their opinion, or take on the one they heard.
UPDATES = ("keep", "move")


class OpinionConfig(EnvConfig):
    """Update rule, initial opinions and what counts as consensus."""

    kind: Literal["opinion"] = "opinion"
    applies_to = {"model": {"degroot": {"self_weight"},
                            "friedkin_johnsen": {"self_weight", "stubbornness"},
                            "deffuant": {"confidence", "mu"},
                            "hegselmann_krause": {"confidence"}},
                  "initial": {"uniform": set(), "normal": {"initial_mean", "initial_std"}}}
    model: Literal["degroot", "friedkin_johnsen", "deffuant", "hegselmann_krause"] = "degroot"
    dims: int = Field(1, ge=1, le=MAX_DIMS)
    """Opinion dimensions: 1 for scalar opinions, up to 4 for vector opinions."""
    initial: Literal["uniform", "normal"] = "uniform"
    """Initial opinions, one keyed draw per agent and dimension: U(0, 1), or
    N(initial_mean, initial_std) clipped to [0, 1]."""
    initial_mean: float = Field(0.5, ge=0.0, le=1.0)
    """initial=normal: the mean of the initial opinions."""
    initial_std: float = Field(0.15, gt=0.0)
    """initial=normal: the standard deviation of the initial opinions (before clipping)."""
    self_weight: float = Field(0.5, ge=0.0, lt=1.0)
    """degroot, friedkin_johnsen: weight of the agent's own opinion in an update."""
    stubbornness: float = Field(0.0, ge=0.0, le=1.0)
    """friedkin_johnsen: pull toward the agent's initial opinion each step."""
    confidence: float = Field(0.2, gt=0.0)
    """deffuant, hegselmann_krause: only neighbours within this distance count."""
    mu: float = Field(0.5, gt=0.0, le=1.0)
    """deffuant: the fraction of the distance moved toward the partner met."""
    tolerance: float = Field(1e-4, gt=0.0)
    """Consensus when the population standard deviation is below this; an agent
    is active in a step when its opinion moved by more than this."""
    log_every: int = Field(10, ge=1)
    """Log an ``opinion`` event for every agent at steps 0, log_every, 2*log_every, ... and
    at the run's last step (``steps - 1``), so the log always ends with the final opinions."""


def consensus_step(metrics: Any) -> int | None:
    """The first step with ``consensus = 1`` in a run's metrics table (None: never).

    Parameters
    ----------
    metrics : pyarrow.Table or mapping of columns
        ``run.metrics()`` of an opinion run (columns ``step`` and ``consensus``).

    Examples
    --------
    >>> consensus_step({"step": [0, 1, 2, 3], "consensus": [0, 0, 1, 1]})
    2
    """
    cols = metrics.to_pydict() if hasattr(metrics, "to_pydict") else metrics
    for step, reached in zip(cols["step"], cols["consensus"], strict=True):
        if reached == 1:
            return int(step)
    return None


@register_env
class Opinion(Env):
    """Opinions averaged over in-neighbours (see the module docstring for the models)."""

    name = "opinion"
    Config = OpinionConfig
    event_types = ("opinion",)
    # value holds dimension 0; dimensions 1..3 of vector opinions (null for scalars).
    event_columns = {f"op{d}": pa.float32() for d in range(1, MAX_DIMS)}
    state = {"opinion": Column(np.float64, shape=("dims",)),
             "initial": Column(np.float64, shape=("dims",))}
    metrics = {
        "variance": Variance("opinion"),
        "mean": Mean("opinion", dim=0),
        # Raw moments of dimension 0 and the two sides of 0.5, for the derived metrics.
        "m2": Mean("x0_2"), "m3": Mean("x0_3"), "m4": Mean("x0_4"),
        "high_mean": Mean("opinion", dim=0, where="high"),
        "low_mean": Mean("opinion", dim=0, where="low"),
    }
    derived_metric_names = ("bimodality", "group_distance", "consensus")
    summary_metrics = ("variance", "bimodality", "group_distance", "consensus")
    broadcast_fields = {f"op{d}": np.float64 for d in range(MAX_DIMS)}
    observation = ("agent", "own", "opinion", "heard", "heard_count", "target")
    # update: LLM-style agents' choice (other rows: -1).
    actions = ("opinion", "update")
    smoke_config = {"steps": 20,
                    "graph": {"kind": "watts_strogatz", "n": 300, "k": 6, "p": 0.1},
                    "env": {"kind": "opinion", "model": "degroot", "log_every": 5}}

    def __init__(self, config: OpinionConfig, view: ShardView, setup: Mapping[str, np.ndarray]):
        super().__init__(config, view, setup)
        self.initial[...] = self._draw_initial()
        self.opinion[...] = self.initial

    def _draw_initial(self) -> np.ndarray:
        cfg, view = self.config, self.view
        cols = []
        for d in range(cfg.dims):
            u = view.rng.uniform("opinion_init", view.agents, draw=d)
            if cfg.initial == "normal":
                # Box-Muller from a second keyed uniform per agent and dimension.
                v = view.rng.uniform("opinion_init", view.agents, draw=MAX_DIMS + d)
                z = np.sqrt(-2.0 * np.log1p(-u)) * np.cos(2.0 * np.pi * v)
                u = np.clip(cfg.initial_mean + cfg.initial_std * z, 0.0, 1.0)
            cols.append(u)
        return np.stack(cols, axis=1) if cols else np.empty((view.n_local, 0))

    def default_policy(self):
        cfg = self.config
        if cfg.model == "deffuant":
            return "deffuant", {"mu": cfg.mu}
        if cfg.model == "hegselmann_krause":
            return "hegselmann_krause", {}
        stubborn = cfg.stubbornness if cfg.model == "friedkin_johnsen" else 0.0
        return "degroot", {"self_weight": cfg.self_weight, "stubbornness": stubborn}

    # -- the round -----------------------------------------------------------

    def _received(self, step: int, inbox: Inbox) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Received (row, src, opinions), sorted by (receiver row, sender id)."""
        dims = self.config.dims
        b = inbox.broadcast
        if step == 0 or b is None or not len(b):
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, dims))
        got = b.take()
        order = np.lexsort((got["src"], got["row"]))
        ops = np.stack([got[f"op{d}"][order] for d in range(dims)], axis=1)
        return got["row"][order].astype(np.int64), got["src"][order], ops

    def observe(self, step: int, inbox: Inbox) -> dict[str, np.ndarray]:
        cfg, view = self.config, self.view
        n, dims = view.n_local, cfg.dims
        rows, src, ops = self._received(step, inbox)
        own = self.opinion
        batch = {"agent": view.agents.copy(), "own": own.copy()}
        if cfg.model == "deffuant":
            partner = own.copy()
            has = np.zeros(n, dtype=bool)
            if rows.shape[0]:
                key = view.rng.bits("deffuant", view.agents[rows], src, step=step)
                order = np.lexsort((key, rows))
                r = rows[order]
                first = np.ones(r.shape[0], dtype=bool)
                first[1:] = r[1:] != r[:-1]
                pick = order[first]
                met = rows[pick]
                close = np.linalg.norm(ops[pick] - own[met], axis=1) <= cfg.confidence
                partner[met[close]] = ops[pick[close]]
                has[met[close]] = True
            batch.update(partner=partner, has_partner=has)
            return self._heard(batch, partner, has.astype(np.int64))
        if cfg.model == "hegselmann_krause" and rows.shape[0]:
            keep = np.linalg.norm(ops - own[rows], axis=1) <= cfg.confidence
            rows, ops = rows[keep], ops[keep]
        # bincount adds in input order, and the input is sorted by (row, src):
        # the same sums whatever order the broadcasts arrived in.
        nbr_sum = np.stack([np.bincount(rows, weights=ops[:, d], minlength=n)
                            for d in range(dims)], axis=1) if dims else np.empty((n, 0))
        batch.update(nbr_sum=nbr_sum, nbr_count=np.bincount(rows, minlength=n).astype(np.float64))
        if cfg.model == "friedkin_johnsen":
            batch["anchor"] = self.initial
        count = batch["nbr_count"]
        mean = np.where(count[:, None] > 0, nbr_sum / np.maximum(count, 1)[:, None], own)
        return self._heard(batch, mean, count.astype(np.int64))

    @staticmethod
    def _heard(batch: dict, target: np.ndarray, count: np.ndarray) -> dict:
        """The prompt fields of LLM-style agents: own and heard opinion (dimension 0), and
        ``target``, what ``move`` takes on."""
        batch.update(opinion=batch["own"][:, 0].copy(), heard=target[:, 0].copy(),
                     heard_count=count, target=target)
        return batch

    @classmethod
    def choice_spec(cls, config: OpinionConfig) -> ChoiceSpec:
        # An LLM-style agent keeps its opinion or takes on the one it heard: the mean of
        # its in-neighbours' (those within confidence for hegselmann_krause), or for
        # deffuant its partner's.
        return ChoiceSpec(
            action="update", labels=UPDATES, idle=0,
            fields=("opinion", "heard", "heard_count"),
            template=("You are {persona}.\nYour opinion on the issue, from 0 to 1, is "
                      "{opinion:.2f}. The {heard_count} people you listen to hold "
                      "{heard:.2f} on average.\nYour last choices: {memory}.\nYou can "
                      "{actions}.\nYou choose to"))

    def apply(self, step: int, batch: dict[str, np.ndarray], actions: dict) -> StepResult:
        cfg, view = self.config, self.view
        new = self._new_opinions(batch, actions)
        moved = np.abs(new - self.opinion).max(axis=1) > cfg.tolerance if new.size else \
            np.zeros(new.shape[0], dtype=bool)
        self.opinion[...] = new
        if view.log_due(step, cfg.log_every):
            extra = {f"op{d}": new[:, d].astype(np.float32) for d in range(1, cfg.dims)}
            events = make_events(np.zeros(view.n_local, np.int8), view.agents,
                                 value=new[:, 0], **extra)
        else:
            events = make_events(np.empty(0, np.int8), np.empty(0, np.int64))
        broadcasts = {"src": view.agents}
        zeros = np.zeros(view.n_local)
        for d in range(MAX_DIMS):
            broadcasts[f"op{d}"] = new[:, d].copy() if d < cfg.dims else zeros
        x0 = new[:, 0]
        sq = x0 * x0
        high = x0 > 0.5
        return StepResult(events=events, messages=None, broadcasts=broadcasts,
                          active=int(moved.sum()),
                          values={"x0_2": sq, "x0_3": sq * x0, "x0_4": sq * sq,
                                  "high": high, "low": ~high})

    def _new_opinions(self, batch: dict, actions: dict) -> np.ndarray:
        """The rule's opinions (its rows say ``update`` -1), and for LLM-style agents their
        own (``keep``) or the heard one (``move``)."""
        n, dims = self.view.n_local, self.config.dims
        update = actions.get("update")
        chosen = np.full(n, -1) if update is None else as_numpy(update).astype(np.int64)
        rule = actions.get("opinion")
        new = (np.asarray(as_numpy(rule), dtype=np.float64).reshape(-1, dims) if rule is not None
               else self.opinion.copy())
        keep, move = chosen == UPDATES.index("keep"), chosen == UPDATES.index("move")
        new[keep] = self.opinion[keep]
        new[move] = batch["target"][move]
        return new

    @classmethod
    def derive_metrics(cls, totals: Mapping[str, float],
                       config: OpinionConfig | None = None) -> dict[str, float]:
        tolerance = (config or OpinionConfig()).tolerance
        variance, m1 = totals["variance"], totals["mean"]
        if not np.isfinite(variance):  # no agents
            return {"bimodality": float("nan"), "group_distance": 0.0, "consensus": 0}
        # Central moments of dimension 0 from its raw ones (each mean exact, rounded once).
        r2, r3, r4 = totals["m2"], totals["m3"], totals["m4"]
        c2 = max(r2 - m1 * m1, 0.0)
        c3 = r3 - 3 * m1 * r2 + 2 * m1**3
        c4 = r4 - 4 * m1 * r3 + 6 * m1 * m1 * r2 - 3 * m1**4
        if c2 > 0 and c4 > 0 and np.sqrt(c2) >= max(tolerance, BIMODALITY_MIN_STD):
            bimodality = (c3 * c3 / c2**3 + 1.0) / (c4 / (c2 * c2))
        else:
            bimodality = float("nan")
        hi, lo = totals["high_mean"], totals["low_mean"]
        distance = hi - lo if np.isfinite(hi) and np.isfinite(lo) else 0.0
        return {"bimodality": float(bimodality), "group_distance": float(distance),
                "consensus": int(np.sqrt(max(variance, 0.0)) < tolerance)}
