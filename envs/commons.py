"""A renewable commons: a shared stock with logistic regrowth that every agent harvests.

The round. In ``observe`` each shard advances its own copy of the stock with
the population's total harvest of the previous round, which the engine
delivers summed over all shards as ``Inbox.totals`` (an exact sum of the
harvests, rounded once, so every shard computes bit-identical stocks whatever
the shard count)::

    S(t+1) = max(0, S(t) + r S(t) (1 - S(t) / K) - H(t))

with ``K = capacity * n`` (the capacity scales with the population, so a
config means the same at any n) and ``r = growth``. The default policy
(the policy ``harvest_norm``, ``swarm.policies.commons.HarvestNorm``) decides each agent's request;
``apply`` turns requests into harvests, logs them and, with ``talk``,
broadcasts each agent's harvest to its out-neighbours, whose norms move
toward it at the next round.

Demand. An agent's base request is ``demand * r * capacity / 4``: the
maximum sustainable yield ``r K / 4`` (regrowth at ``S = K / 2``) shared
equally, times ``demand``. Each agent multiplies it by a keyed greed factor
drawn uniformly from ``[1 - greed, 1 + greed]`` (mean 1). Demand above 1 can
never be met sustainably: the stock collapses; well below 1 it settles at
the stable root of ``r x (1 - x) = demand * r / 4`` (x = S / K).

Scaling rule. A shard does not know the other shards' requests of the same
round, so the scale factor comes from the previous round's total request
``R(t-1)`` (also in ``Inbox.totals``): every harvest is ``request * min(1,
S(t) / R(t-1))``, the same factor on every shard. At step 0 the expected
total request ``n * base request`` stands in for ``R(-1)``. When requests
rise faster than that (talk, or a recovering stock) the round may take
slightly more than the stock; the floor at 0 then empties it.

Collapse. Once the stock an agent sees at the start of a round is below
``collapse_threshold * K`` the resource is collapsed for good: regrowth
stops, harvests are 0, nobody broadcasts, and the run ends as quiescent.
A ``collapse`` event is logged once, for agent 0 (on whichever shard holds
it), with the stock as its value.

Metrics (one row per step, declared reductions the engine computes exactly):
``stock`` (at the start of the round), ``total_harvest``, ``gini`` of the
round's harvests, ``collapsed`` (0/1), ``rounds_survived`` (rounds so far
that started with a live stock), ``agents``.

Harvest units. A harvest is a whole number of units of ``base / 64`` (1/64 of
an agent's base request; the scaled request rounded to the nearest unit), so
``gini`` is the engine's exact ``Gini`` reduction of the units:
``sum_i sum_j |x_i - x_j| / (2 n^2 mean)`` of the logged harvests, whatever
the shard count (0 when all harvests are equal, as after a collapse).

LLM-style agents (``population.groups`` with ``policy: {kind: llm, ...}``; a
GovSim-style commons is such a config) choose their request among the harvest
levels ``none``, ``low``, ``fair`` and ``high``: 0, 0.5, 1 and 1.5 times the
base request (whole harvest units; no greed factor, no scarcity cut), scaled
like any request. The prompt shows the stock as a share of the capacity and,
with ``talk``, how many neighbours were heard and their mean harvest last
round as a multiple of the base request (fields ``stock_fraction``,
``nbr_count``, ``nbr_mean``); with ``talk`` their harvest is broadcast as the
rule's is. Their norm is kept unchanged (only the rule reads it). In a mixed
population the rule's rows read ``harvest_level = -1`` (the population's fill
for rows a group did not decide), so ``apply`` takes the rule's request there
and the level's for the others. A
failed model call (``on_error: idle``) harvests nothing. The tiny random-weight
model of the tests answers at random.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from swarm.contract import as_numpy
from swarm.envs.base import (
    ChoiceSpec,
    Column,
    Count,
    Env,
    EnvConfig,
    Gini,
    Inbox,
    Max,
    ShardView,
    StepResult,
    Sum,
    make_events,
    register_env,
)

__all__ = ["HARVEST_LEVELS", "LEVEL_FACTORS", "UNITS_PER_BASE", "Commons", "CommonsConfig",
           "next_stock", "rounds_survived"]

#: Harvest units per base request (a harvest is a whole number of them).
UNITS_PER_BASE = 64
#: What LLM-style agents choose between, and each level's request in base requests
#: (multiples of 1/2, so whole harvest units; none first: the idle choice).
HARVEST_LEVELS = ("none", "low", "fair", "high")
LEVEL_FACTORS = (0.0, 0.5, 1.0, 1.5)


class CommonsConfig(EnvConfig):
    """The resource, the agents' demand, and how they talk and react to scarcity."""

    kind: Literal["commons"] = "commons"
    capacity: float = Field(100.0, gt=0.0)
    """Carrying capacity per agent: the stock's capacity is ``K = capacity * n``."""
    initial: float = Field(0.8, gt=0.0, le=1.0)
    """The initial stock as a fraction of K."""
    growth: float = Field(0.25, gt=0.0, le=1.0)
    """Logistic growth rate r: regrowth per round is ``r S (1 - S / K)``."""
    collapse_threshold: float = Field(0.05, ge=0.0, lt=1.0)
    """The resource collapses for good once the stock is below this fraction of K."""
    demand: float = Field(0.8, ge=0.0)
    """Each agent's base request as a multiple of its share of the maximum sustainable yield
    (``r K / 4`` split equally): 1.0 takes exactly the MSY, above 1 collapses the stock."""
    greed: float = Field(0.5, ge=0.0, lt=1.0)
    """Heterogeneity: each agent's request is multiplied by a keyed draw from
    U(1 - greed, 1 + greed)."""
    talk: bool = False
    """Agents broadcast their harvest to their out-neighbours, whose norms (intended harvests)
    move toward the neighbours' mean by ``conformity`` each round."""
    conformity: float = Field(0.3, ge=0.0, le=1.0)
    """talk: weight of the neighbours' mean harvest in an agent's norm update."""
    scarcity_response: float = Field(0.0, ge=0.0, le=1.0)
    """Stock level (fraction of K) below which agents cut their requests in proportion:
    ``request = norm * min(1, (S / K) / scarcity_response)``. 0: no response."""
    log_every: int = Field(10, ge=1)
    """Log a ``harvest`` event for every agent at steps 0, log_every, 2*log_every, ... and
    at the run's last step (``steps - 1``)."""

    @model_validator(mode="after")
    def _check(self) -> CommonsConfig:
        if not self.talk and "conformity" in self.model_fields_set and \
                self.conformity != type(self).model_fields["conformity"].default:
            raise ValueError("conformity applies only with talk: true; set talk: true or "
                             "drop conformity")
        if self.initial <= self.collapse_threshold:
            raise ValueError(f"initial ({self.initial}) must be above collapse_threshold "
                             f"({self.collapse_threshold}), or the run starts collapsed")
        return self

    def base_request(self) -> float:
        """An agent's request before greed: ``demand`` times its share of the MSY."""
        return self.demand * self.growth * self.capacity / 4.0


def next_stock(stock: float, capacity: float, growth: float, harvest: float) -> float:
    """The stock after one round of logistic regrowth and a total ``harvest``, floored at 0.

    Examples
    --------
    >>> next_stock(500.0, 1000.0, 0.2, 30.0)
    520.0
    """
    return max(0.0, stock + growth * stock * (1.0 - stock / capacity) - harvest)


def rounds_survived(metrics: Any) -> int:
    """Rounds that started with a live stock in a commons run (its last ``rounds_survived``).

    Examples
    --------
    >>> rounds_survived({"rounds_survived": [1, 2, 2]})
    2
    """
    cols = metrics.to_pydict() if hasattr(metrics, "to_pydict") else metrics
    values = cols["rounds_survived"]
    return int(values[-1]) if len(values) else 0


@register_env
class Commons(Env):
    """A shared renewable stock harvested each round (see the module docstring)."""

    name = "commons"
    Config = CommonsConfig
    event_types = ("harvest", "collapse")
    observation = ("agent", "norm", "stock_fraction", "nbr_sum", "nbr_count", "nbr_mean")
    # harvest_level: LLM-style agents' choice among HARVEST_LEVELS (other rows: -1).
    actions = ("request", "norm", "harvest_level")
    # stock, collapsed and rounds_survived are the same on every shard: their Max is it.
    metrics = {"stock": Max("stock"), "total_harvest": Sum("harvest"), "gini": Gini("units"),
               "collapsed": Max("collapsed"), "rounds_survived": Max("rounds_survived"),
               "agents": Count()}
    summary_metrics = ("stock", "total_harvest", "gini", "collapsed", "rounds_survived")
    broadcast_fields = {"harvest": np.float64}
    state = {"norm": Column(np.float64)}  # each agent's intended harvest
    state_attrs = ("stock", "collapsed", "collapse_step")
    smoke_config = {"steps": 20,
                    "graph": {"kind": "watts_strogatz", "n": 300, "k": 4, "p": 0.1},
                    "env": {"kind": "commons", "talk": True, "scarcity_response": 0.5,
                            "log_every": 5}}

    def __init__(self, config: CommonsConfig, view: ShardView, setup: Mapping[str, np.ndarray]):
        super().__init__(config, view, setup)
        self.n_total = int(np.asarray(setup["n"]))
        self.capacity = config.capacity * self.n_total
        self.base = config.base_request()
        self.unit = self.base / UNITS_PER_BASE  # a harvest is a whole number of them
        greed = 1.0 + config.greed * (2.0 * view.rng.uniform("commons_greed", view.agents) - 1.0)
        self.norm[:] = self.base * greed
        self.stock = config.initial * self.capacity
        self.collapsed = False
        self.collapse_step = -1
        self._scale = 1.0

    @classmethod
    def prepare(cls, config: CommonsConfig, n: int, rng) -> dict[str, np.ndarray]:
        return {"n": np.asarray(n, dtype=np.int64)}

    @classmethod
    def uses_broadcasts(cls, config: CommonsConfig) -> bool:
        return config.talk

    def default_policy(self):
        cfg = self.config
        return "harvest_norm", {"conformity": cfg.conformity if cfg.talk else 0.0,
                                "scarcity_level": cfg.scarcity_response}

    @classmethod
    def choice_spec(cls, config: CommonsConfig) -> ChoiceSpec:
        # What the neighbours took is there to read only with talk (zeros otherwise),
        # so a template may name it only then.
        heard = ("\nLast round your {nbr_count:.0f} neighbours took on average "
                 "{nbr_mean:.2f} times the fair share." if config.talk else "")
        return ChoiceSpec(
            action="harvest_level", labels=HARVEST_LEVELS, idle=0,
            fields=("stock_fraction", *(("nbr_count", "nbr_mean") if config.talk else ())),
            template=("You are {persona}.\nEveryone harvests a shared renewable resource each "
                      "round. It regrows fastest at half of its capacity and collapses for "
                      f"good below {config.collapse_threshold:.0%} of it; it is now at "
                      "{stock_fraction:.0%} of its capacity." + heard + "\nA low, fair or "
                      "high harvest is half, one or one and a half times your fair share; "
                      "none takes nothing.\nYour last harvests: {memory}.\nYou can take "
                      "{actions}.\nYour harvest this round is"),
        )

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        super().load_state_dict(state)
        self.stock = float(self.stock)
        self.collapsed = bool(self.collapsed)
        self.collapse_step = int(self.collapse_step)

    # -- the round -----------------------------------------------------------

    def observe(self, step: int, inbox: Inbox) -> dict[str, np.ndarray]:
        cfg, view = self.config, self.view
        n = view.n_local
        totals = inbox.totals
        if totals is not None and not self.collapsed:
            self.stock = next_stock(self.stock, self.capacity, cfg.growth, totals["harvest"])
        if not self.collapsed and self.stock < cfg.collapse_threshold * self.capacity:
            self.collapsed, self.collapse_step = True, step
        # The previous round's total request sets this round's scale, identically everywhere.
        wanted = totals["request"] if totals is not None else self.n_total * self.base
        self._scale = 0.0 if self.collapsed else (
            min(1.0, self.stock / wanted) if wanted > 0 else 1.0)
        nbr_sum, nbr_count = np.zeros(n), np.zeros(n)
        b = inbox.broadcast
        if cfg.talk and b is not None and len(b):
            got = b.take()
            # bincount adds in input order: sort by (receiver, sender) so the sums do
            # not depend on the order broadcasts arrived in.
            order = np.lexsort((got["src"], got["row"]))
            rows = got["row"][order].astype(np.int64)
            nbr_sum = np.bincount(rows, weights=got["harvest"][order], minlength=n)
            nbr_count = np.bincount(rows, minlength=n).astype(np.float64)
        # For LLM-style agents' prompts: what the neighbours took, in base requests.
        nbr_mean = nbr_sum / np.maximum(nbr_count, 1.0) / self.base if self.base > 0 else \
            np.zeros(n)
        return {"agent": view.agents.copy(), "norm": self.norm.copy(),
                "stock_fraction": np.full(n, self.stock / self.capacity),
                "nbr_sum": nbr_sum, "nbr_count": nbr_count, "nbr_mean": nbr_mean}

    def _requests(self, actions: dict) -> np.ndarray:
        """Each agent's request (>= 0), from the rule's rows (``request``, ``norm``;
        ``harvest_level`` -1) and the LLM-style agents' (a level; their norm kept).

        Updates the norms. In a mixed population a group's rows read -1 (NaN) in the
        columns only the other group returns (``Population``), so ``harvest_level`` -1
        tells the rule's rows apart; a population of LLM-style agents only gives the level.
        """
        level = actions.get("harvest_level")
        level = (np.full(self.view.n_local, -1, np.int64) if level is None
                 else as_numpy(level).astype(np.int64))
        llm = level >= 0
        request = np.asarray(LEVEL_FACTORS)[np.maximum(level, 0)] * self.base
        if "request" in actions:
            ruled = np.asarray(as_numpy(actions["request"]), dtype=np.float64)
            request = np.where(llm, request, ruled)
        if "norm" in actions:
            norm = np.asarray(as_numpy(actions["norm"]), dtype=np.float64)
            self.norm[:] = np.where(llm, self.norm, norm)
        return np.maximum(request, 0.0)

    def apply(self, step: int, batch: dict[str, np.ndarray], actions: dict) -> StepResult:
        cfg, view = self.config, self.view
        n = view.n_local
        request = self._requests(actions)
        # Whole harvest units: the Gini of integers is exact.
        units = np.rint(request * self._scale / self.unit).astype(np.int64)
        harvest = units * self.unit
        alive = not self.collapsed

        codes, agents, values = [], [], []
        if alive and view.log_due(step, cfg.log_every):
            codes.append(np.zeros(n, np.int8))
            agents.append(view.agents)
            values.append(harvest)
        if step == self.collapse_step:
            holds = np.flatnonzero(view.agents == 0)
            codes.append(np.ones(holds.shape[0], np.int8))
            agents.append(view.agents[holds])
            values.append(np.full(holds.shape[0], self.stock))
        if codes:
            events = make_events(np.concatenate(codes), np.concatenate(agents),
                                 value=np.concatenate(values))
        else:
            events = make_events(np.empty(0, np.int8), np.empty(0, np.int64))
        broadcasts = {"src": view.agents, "harvest": harvest} if cfg.talk and alive else None
        survived = self.collapse_step if self.collapsed else step + 1
        return StepResult(events=events, messages=None, broadcasts=broadcasts,
                          active=n if alive else 0,
                          totals={"harvest": harvest, "request": request if alive else
                                  np.zeros(0)},
                          values={"harvest": harvest, "units": units,
                                  "stock": np.array([self.stock]),
                                  "collapsed": np.array([int(self.collapsed)]),
                                  "rounds_survived": np.array([survived])})
