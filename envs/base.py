"""The env contract: what an interaction model declares and does in a round.

An env owns the state columns of the agents on one shard and implements two
vectorized halves of the round: ``observe`` (absorb the inbox delivered at
the end of the previous step, build the batch the policy decides on) and
``apply`` (turn the policy's actions into state changes, events and outgoing
messages). The engine does the rest (decide, log, exchange, barrier) and
never names a concrete env: it looks envs up in ``ENV_REGISTRY`` by
``config.env.kind``. Envs know nothing of Ray.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
from pydantic import model_validator

from swarm.config_base import StrictModel
from swarm.contract import ChoiceSpec
from swarm.eventlog import COMMON_EVENT_COLUMNS, make_events
from swarm.graph import ragged_arange
from swarm.graphgen import row_key as _row_key
from swarm.reductions import (
    Count,
    Gini,
    Histogram,
    Max,
    Mean,
    Min,
    Reduction,
    Share,
    Sum,
    Variance,
)
from swarm.registry import ENVS
from swarm.rng import KeyedRNG

__all__ = [
    "ENV_REGISTRY",
    "COMMON_EVENT_COLUMNS",
    "ChoiceSpec",
    "Column",
    "Count",
    "Gini",
    "Histogram",
    "Max",
    "Mean",
    "Min",
    "Reduction",
    "Share",
    "Sum",
    "Variance",
    "Env",
    "EnvConfig",
    "FannedOut",
    "Inbox",
    "ShardView",
    "StepResult",
    "make_events",
    "register_env",
]

@dataclass(frozen=True)
class Column:
    """One per-agent state column: its dtype, trailing shape and initial value.

    ``shape`` entries are ints or names of config fields (``("dims",)``). The env
    gets the column as an attribute (rows: the shard's agents), and checkpoints,
    memory estimates and crash faults follow from the declaration.
    """

    dtype: Any
    fill: Any = 0
    shape: tuple[int | str, ...] = ()

    def trailing(self, config: Any) -> tuple[int, ...]:
        return tuple(getattr(config, d) if isinstance(d, str) else int(d) for d in self.shape)

    def nbytes_per_agent(self, config: Any) -> int:
        return int(np.dtype(self.dtype).itemsize * int(np.prod(self.trailing(config))))


class EnvConfig(StrictModel):
    """Base of every env's config; ``kind`` selects the env in the registry.

    ``applies_to`` declares fields that belong to some variants only: ``{"model":
    {"sir": {"beta", "gamma"}, ...}}``. Setting a field of another variant is an
    error that names it, unless it is left at its default (a dumped config, such as
    a run's manifest, lists every field).
    """

    kind: str
    applies_to: ClassVar[dict[str, dict[str, set[str]]]] = {}

    @model_validator(mode="after")
    def _variant_fields(self):
        for selector, table in self.applies_to.items():
            chosen = getattr(self, selector)
            mine = table.get(chosen, set())
            foreign = {k for params in table.values() for k in params - mine
                       if k in self.model_fields_set
                       and getattr(self, k) != type(self).model_fields[k].default}
            if foreign:
                raise ValueError(f"{sorted(foreign)} do not apply to {selector}={chosen!r}; its "
                                 f"parameters are {sorted(mine)}")
        return self


@dataclass
class ShardView:
    """What an env sees of its shard: its agents, their out-edges, the keyed RNG.

    ``indices`` holds global agent ids (int32 where they fit). An edge's key
    for per-edge draws is ``swarm.graphgen.edge_key(src, dst)``: a function of
    its two ends, the same on any shard (``out_edges`` returns it).
    """

    shard: int
    num_shards: int
    agents: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    in_degree: np.ndarray
    rng: KeyedRNG
    contiguous_start: int | None = None
    #: The run's injected faults (``swarm.faults.Faults``), None in a run without any.
    #: The engine already keeps crashed agents from acting; an env asks ``faults.crashed``
    #: only for metrics that leave them out (a protocol's correct agents).
    faults: Any = None
    #: Set by the shard: returns the edges into its agents (see ``in_edges``).
    in_edges_fn: Any = None
    #: The run's configured number of steps (None where unknown): periodic logging
    #: also logs the last step, ``steps - 1`` (see ``log_due``).
    steps: int | None = None
    #: Local rows of the agents crashed by the current step (set by the shard before
    #: observe; None: none). See ``acting``.
    down: np.ndarray | None = None

    def acting(self, rows: np.ndarray) -> np.ndarray:
        """Which local ``rows`` belong to agents that act this step: not crashed. An env
        that chooses whom to work on (the feed's active agents) asks this; the engine
        already keeps crashed agents from deciding, sending and changing state."""
        if self.down is None:
            return np.ones(np.shape(rows)[0], dtype=bool)
        return ~np.isin(rows, self.down)

    def log_due(self, step: int, every: int) -> bool:
        """Whether periodic events are logged at ``step``: every ``every``-th step and the
        run's last one, so a log always ends with the final state."""
        return step % every == 0 or (self.steps is not None and step == self.steps - 1)

    @property
    def n_local(self) -> int:
        return int(self.agents.shape[0])

    def local_index(self, ids: np.ndarray) -> np.ndarray:
        """Local row of each global agent id (the ids must belong to this shard)."""
        if self.contiguous_start is not None:
            return ids - self.contiguous_start
        return np.searchsorted(self.agents, ids)

    def out_edges(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Out-edges of local ``rows``: (CSR positions, edge keys, edges per row).

        Positions index ``indices`` (the receivers); ``edge_sources`` maps a
        subset of them back to their source rows, so a caller that keeps 5% of
        the edges never builds the other 95% of the source column.
        """
        starts = self.indptr[rows]
        counts = self.indptr[rows + 1] - starts
        pos = ragged_arange(starts, counts)
        edge = np.repeat(_row_key(self.agents[rows]), counts)
        edge += self.indices[pos].astype(np.uint64)
        return pos, edge.view(np.int64), counts

    def in_edges(self) -> tuple[np.ndarray, np.ndarray]:
        """The edges into this shard's agents: (sources' global ids, receivers' local rows).

        Built from the fan-out tables, so only for envs that broadcast (and any
        one-shard run); the arrays are made on each call, so keep the result.
        """
        if self.in_edges_fn is None:
            raise RuntimeError("in_edges needs a shard's fan-out tables: the env must declare "
                               "broadcast_fields")
        return self.in_edges_fn()

    @staticmethod
    def edge_sources(rows: np.ndarray, counts: np.ndarray, which: np.ndarray) -> np.ndarray:
        """Source rows of the edges at indices ``which`` of an ``out_edges(rows)`` result."""
        return rows[np.searchsorted(np.cumsum(counts), which, side="right")]

    def __post_init__(self):
        # Agents that form one id range (any partition with one shard, say)
        # map to local rows by a subtraction instead of a binary search.
        a = self.agents
        if self.contiguous_start is None and a.size and a[-1] - a[0] + 1 == a.size:
            self.contiguous_start = int(a[0])


@dataclass
class StepResult:
    """What ``Env.apply`` hands back to the engine for one step.

    ``messages`` go point to point: a ``dst`` column (global id of the
    receiver) plus the env's ``message_fields``. ``broadcasts`` go from a
    sender to all its out-neighbours: a ``src`` column (a local agent's global
    id) plus the env's ``broadcast_fields``; the engine ships each broadcast
    once to every shard holding an out-neighbour and fans it out there.
    """

    events: dict[str, np.ndarray]
    messages: dict[str, np.ndarray] | None
    active: int
    metrics: dict[str, float] = field(default_factory=dict)
    broadcasts: dict[str, np.ndarray] | None = None
    #: Contributions to population-wide totals (a vote count, the step's harvests):
    #: summed over all shards and delivered to every shard at the next step as
    #: ``Inbox.totals``, so every shard sees the same global value. An int, or an
    #: array of floats the engine sums exactly (one rounding, at the end), so the
    #: total does not depend on the shard count. Return the same keys every step.
    #: Totals alone do not keep a run going: it stops when ``active`` is 0 and no
    #: message was sent.
    totals: dict[str, int | np.ndarray] | None = None
    #: Per-step arrays the env's declared ``metrics`` reduce (besides its state
    #: columns): the step's harvests, payoffs, moves. Any length; a reduction with
    #: ``where`` needs a boolean array of the same length.
    values: dict[str, np.ndarray] = field(default_factory=dict)
    #: A small table every shard sees at the next step (an all-gather): equal-length
    #: columns, concatenated over the shards into ``Inbox.shared`` in no fixed order,
    #: so sort it by a key before use. For population-wide rankings (the feed's
    #: trending items: each shard sends its local top, every shard keeps the global
    #: top of the union). Like totals, it is not faulted and keeps no run going.
    shared: dict[str, np.ndarray] | None = None


class FannedOut:
    """Broadcasts fanned out to a shard's receivers: one entry per (sender, receiver) edge.

    Only the edge keys exist up front (``edge``, the key for per-edge
    draws); ``take`` builds the other columns (``row``: the receiver's local
    row, ``src``, and the env's ``broadcast_fields``) for the entries asked
    for, so an env that keeps 5% of the edges after a draw never builds the
    other 95%. Entry order depends on arrival order: envs must not rely on it.
    """

    def __init__(self, edge: np.ndarray, pos: np.ndarray, receivers: np.ndarray,
                 to_row, counts: np.ndarray, senders: dict[str, np.ndarray]):
        self.edge = edge
        self._pos, self._receivers, self._to_row = pos, receivers, to_row
        self._ends = np.cumsum(counts)
        self._senders = senders
        self._sender: np.ndarray | None = None  # per entry, once entries were filtered

    def __len__(self) -> int:
        return int(self.edge.shape[0])

    def sender_index(self, which: np.ndarray | None = None) -> np.ndarray:
        """Index of each entry's sender in the broadcast columns (entries ``which``)."""
        if which is None:
            if self._sender is not None:
                return self._sender
            # Entries are grouped by sender: a repeat, not a search per entry.
            return np.repeat(np.arange(self._ends.shape[0]), np.diff(self._ends, prepend=0))
        if self._sender is not None:
            return self._sender[which]
        return np.searchsorted(self._ends, which, side="right")

    @classmethod
    def from_columns(cls, cols: dict[str, np.ndarray]) -> FannedOut:
        """Entries given as full columns (``row``, ``edge``, ``src``, fields): for copies
        the engine held back and delivers late."""
        m = cols["edge"].shape[0]
        senders = {k: v for k, v in cols.items() if k not in ("row", "edge")}
        return cls(cols["edge"], np.arange(m), cols["row"].astype(np.int64), _identity,
                   np.ones(m, dtype=np.int64), senders)

    def sender_column(self, name: str) -> np.ndarray:
        """Broadcast field ``name`` per sender (index it with ``sender_index``): cheaper
        than per entry when an env can work per sender first."""
        return self._senders[name]

    def sources(self) -> np.ndarray:
        """The global id of every entry's sender."""
        return self._senders["src"][self.sender_index()]

    def receiver_rows(self, which: np.ndarray | None = None) -> np.ndarray:
        """The local row of each entry's receiver."""
        pos = self._pos if which is None else self._pos[which]
        return self._to_row(self._receivers[pos])

    def keep(self, mask: np.ndarray) -> FannedOut:
        """Only the entries where ``mask`` is True (the engine's fault injection)."""
        which = np.flatnonzero(mask)
        out = FannedOut.__new__(FannedOut)
        out.edge, out._pos = self.edge[which], self._pos[which]
        out._receivers, out._to_row = self._receivers, self._to_row
        out._ends, out._senders = self._ends, self._senders
        out._sender = self.sender_index(which)
        return out

    def take(self, which: np.ndarray | None = None,
             fields: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Columns ``row``, ``src``, ``edge`` and the broadcast fields of entries ``which``
        (all entries by default; only ``row`` and ``fields`` when those are named)."""
        sender = self.sender_index(which)
        if which is None:
            pos, edge = self._pos, self.edge
        else:
            pos, edge = self._pos[which], self.edge[which]
        out = {"row": self._to_row(self._receivers[pos])}
        if fields is None:
            out["edge"] = edge
        out.update({name: col[sender] for name, col in self._senders.items()
                    if fields is None or name in fields})
        return out


def _identity(rows: np.ndarray) -> np.ndarray:
    return rows


@dataclass
class Inbox:
    """What was delivered to a shard's agents at the end of the previous step.

    ``direct``: point-to-point messages (``dst`` plus ``message_fields``).
    ``broadcast``: broadcasts fanned out to this shard's receivers (see
    ``FannedOut``), or None when none arrived. ``totals``: the previous step's
    ``StepResult.totals`` summed over every shard (None at step 0).
    ``shared``: the previous step's ``StepResult.shared`` of every shard, concatenated.
    """

    direct: dict[str, np.ndarray] | None = None
    broadcast: FannedOut | None = None
    totals: dict[str, int | float] | None = None
    #: Every shard's ``StepResult.shared`` of the previous step, concatenated (None: none).
    shared: dict[str, np.ndarray] | None = None


class Env:
    """Base class of every interaction model.

    Subclasses set the class attributes and implement ``observe`` and
    ``apply``; ``prepare`` runs once on the driver for whatever needs the
    whole population (for example choosing seed agents by global rank).

    Quiescence: a step whose ``StepResult.active`` is 0 on every shard and
    that sends no messages ends the run. The env promises that nothing would
    happen afterwards; the engine may already have started one more step
    (it pipelines the barrier), which must then produce no events.
    """

    name: ClassVar[str]
    Config: ClassVar[type[EnvConfig]]
    #: The values of the ``event`` column, in a fixed order (their codes).
    event_types: ClassVar[tuple[str, ...]]
    #: Extra nullable event columns beyond COMMON_EVENT_COLUMNS. As in the common
    #: ones, NaN (floats) and negative values (ints) are logged as null.
    event_columns: ClassVar[dict[str, pa.DataType]] = {}
    #: Per-agent state columns (name -> ``Column``): allocated as attributes before
    #: ``setup``, saved in checkpoints, counted by the memory estimate, and held still
    #: by the engine for crashed agents.
    state: ClassVar[dict[str, Column]] = {}
    #: Per-step metrics as reductions (name -> ``Mean("opinion")``, ...) of state
    #: columns or ``StepResult.values``; the engine computes them exactly, the same for
    #: any shard count (see ``swarm.reductions``).
    metrics: ClassVar[dict[str, Reduction]] = {}
    #: What a policy sees: columns every batch of ``observe`` carries (``agent``, the
    #: global id of each row's agent, first). ``observation_schema`` may add per config.
    observation: ClassVar[tuple[str, ...]] = ("agent",)
    #: What a policy may return: the action columns ``apply`` reads. A policy that
    #: returns anything else is an error, named with the policy and the env.
    actions: ClassVar[tuple[str, ...]] = ()
    #: Per-step counters summed over shards into the metrics table.
    metric_names: ClassVar[tuple[str, ...]] = ()
    #: Wall-clock metrics of the env's own (seconds spent in a recommender, say): summed
    #: over shards into ``timings.arrow``, never into the deterministic metrics.
    timing_metrics: ClassVar[tuple[str, ...]] = ()
    #: Per-step metrics computed from the summed counters by ``derive_metrics``
    #: (a variance from counts, sums and sums of squares, say).
    derived_metric_names: ClassVar[tuple[str, ...]] = ()
    #: The metrics ``swarm run`` prints after a run (default: the derived ones,
    #: else all); additive bookkeeping parts are rarely worth a reader's time.
    summary_metrics: ClassVar[tuple[str, ...]] = ()
    #: Message fields besides ``dst`` (global id of the receiving agent).
    message_fields: ClassVar[dict[str, np.dtype]] = {}
    #: Broadcast fields besides ``src``; an env that broadcasts must declare them,
    #: so the engine builds the fan-out tables only for envs that need them.
    broadcast_fields: ClassVar[dict[str, np.dtype]] = {}
    #: Attributes that make up the env's state on a shard (numpy arrays or
    #: scalars): what ``state_dict`` saves in a checkpoint and restores.
    state_attrs: ClassVar[tuple[str, ...]] = ()
    #: Per-agent arrays besides the ``state`` columns (rows: local agents) that the
    #: engine keeps unchanged for a crashed agent, as it keeps the columns. A crashed
    #: agent neither decides, sends nor changes state, in every env: the engine sees to
    #: it (``ShardView.acting`` tells an env which rows to work on).
    agent_state: ClassVar[tuple[str, ...]] = ()
    #: Bytes of state per agent (for the memory guard's estimate before a run).
    state_bytes_per_agent: ClassVar[int] = 16
    #: The share of a shard's agents (and their edges) the busiest step works on, for
    #: the same estimate: 1 where every agent acts every step.
    peak_active_share: ClassVar[float] = 1.0
    #: A small raw run config (graph, env, steps, ...) that exercises the env in a
    #: few seconds: what ``swarm.envs.testing`` checks it with.
    smoke_config: ClassVar[dict] = {}

    def __init__(self, config: EnvConfig, view: ShardView, setup: Mapping[str, np.ndarray]):
        self.config = config
        self.view = view
        self.setup = setup
        for name, col in self.state.items():
            setattr(self, name, np.full((view.n_local, *col.trailing(config)), col.fill,
                                        dtype=col.dtype))

    @classmethod
    def bytes_per_agent(cls, config: EnvConfig) -> int:
        """State bytes per agent for the memory guard: the declared columns, or
        ``state_bytes_per_agent`` for an env without them."""
        if not cls.state:
            return cls.state_bytes_per_agent
        return sum(c.nbytes_per_agent(config) for c in cls.state.values()) + \
            (cls.state_bytes_per_agent if cls.state_attrs else 0)

    @classmethod
    def prepare(cls, config: EnvConfig, n: int, rng: KeyedRNG) -> dict[str, np.ndarray]:
        """Global set-up computed once on the driver and given to every shard."""
        return {}

    @classmethod
    def needs_graph(cls, config: EnvConfig) -> bool:
        """Whether the set-up of a run with ``config`` needs the whole graph
        (``prepare_graph``): the driver then builds it once, at the run's start."""
        return False

    @classmethod
    def prepare_graph(cls, config: EnvConfig, graph) -> dict[str, np.ndarray]:
        """Global set-up from the whole graph (a ``swarm.graph.CSRGraph``: its diameter,
        say), merged into ``prepare``'s; called only where ``needs_graph`` says so."""
        return {}

    @classmethod
    def derive_metrics(cls, totals: Mapping[str, float],
                       config: EnvConfig | None = None) -> dict[str, float]:
        """Metrics derived from the step's population-wide values, once, on the driver.

        ``totals`` holds the counters (``metric_names``) summed over all shards and
        the declared ``metrics``, finished; ``config`` is the run's env config.
        Returns ``derived_metric_names`` (a consensus flag from a variance, say).
        """
        return {}

    @classmethod
    def observation_schema(cls, config: EnvConfig) -> tuple[str, ...]:
        """The batch columns of a run with ``config`` (default: ``observation``)."""
        return cls.observation

    @classmethod
    def action_schema(cls, config: EnvConfig) -> tuple[str, ...]:
        """The action columns a policy may return in a run with ``config`` (``actions``)."""
        return cls.actions

    @classmethod
    def uses_broadcasts(cls, config: EnvConfig) -> bool:
        """Whether a run with ``config`` broadcasts (the engine then builds fan-out tables)."""
        return bool(cls.broadcast_fields)

    @classmethod
    def choice_spec(cls, config: EnvConfig) -> ChoiceSpec | None:
        """What an LLM-style policy decides in a run with ``config`` (None: no LLM agents).

        The batch must then carry an ``agent`` column (global ids): the engine
        groups rows by the agent's policy and keys per-agent draws by it.
        """
        return None

    def default_policy(self):
        """The heuristic policy agents follow when the config names none."""
        raise NotImplementedError(f"env {self.name!r} must define default_policy()")

    def observe(self, step: int, inbox: Inbox) -> dict[str, np.ndarray]:
        """Absorb the inbox delivered at the end of the last step; return the policy's batch."""
        raise NotImplementedError(f"env {self.name!r} must implement observe()")

    def apply(self, step: int, batch: dict[str, np.ndarray], actions: dict) -> StepResult:
        """Turn the policy's actions into state changes, events and outgoing messages."""
        raise NotImplementedError(f"env {self.name!r} must implement apply()")

    def state_dict(self) -> dict[str, np.ndarray]:
        """The env's state on this shard, for a checkpoint (``state_attrs``; None skipped).

        Called between steps, never between ``observe`` and ``apply``. Envs
        whose state is not plain attributes override this and ``load_state_dict``.
        """
        return {name: np.asarray(getattr(self, name)) for name in (*self.state, *self.state_attrs)
                if getattr(self, name, None) is not None}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore what ``state_dict`` returned (0-d arrays become Python scalars)."""
        unknown = set(state) - set(self.state) - set(self.state_attrs)
        if unknown:
            raise ValueError(f"checkpoint holds state {sorted(unknown)} that env {self.name!r} "
                             f"does not declare; its state is {[*self.state, *self.state_attrs]}")
        for name, value in state.items():
            if name in self.state:  # a copy: restored arrays may be read-only views
                getattr(self, name)[...] = np.asarray(value).reshape(getattr(self, name).shape)
            else:
                setattr(self, name, value.item() if value.ndim == 0 else value)

    @classmethod
    def event_code(cls, name: str) -> int:
        return cls.event_types.index(name)


#: Envs by ``env.kind`` (``swarm.registry.ENVS``: entry points of group ``swarm.envs``,
#: loaded when first named, plus classes registered with ``register_env``).
ENV_REGISTRY = ENVS


def register_env(cls: type[Env]) -> type[Env]:
    """Class decorator: make an env available to configs as ``env.kind: <cls.name>``.

    A package's envs are found without importing it first when it declares them as
    entry points (group ``swarm.envs``, ``name = "module:Class"``)."""
    ENVS.register(cls.name, cls)
    return cls
