"""One shard of the population: a plain class the runner makes into a Ray actor.

A shard owns a partition of the agents (their state columns, their CSR rows,
their inbox, their policy and their event log) and runs the round on them:
observe -> decide -> apply -> log -> hand outgoing messages to the exchange,
grouped per destination shard as columnar arrays. A broadcast (one sender,
all its out-neighbours) crosses to each destination shard once and is fanned
out there through the shard's ``Fanout`` table. The shard also writes and
restores its checkpoints. It knows nothing of Ray, so it unit-tests as an
ordinary object.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from swarm import checkpoint as ckpt
from swarm.envs.base import ENV_REGISTRY, EnvConfig, FannedOut, Inbox, ShardView
from swarm.errors import LogError
from swarm.eventlog import EventLog
from swarm.faults import Faults, FaultsConfig
from swarm.graph import ragged_arange
from swarm.partition import Partition
from swarm.population import Population, PopulationConfig
from swarm.reductions import decode_total, encode_total, partials
from swarm.rng import KeyedRNG
from swarm.shardgraph import Edges, GraphSource, SliceBuilder, split_by_shard
from swarm.storage import RunStore

__all__ = ["Shard", "ShardSpec", "build_shards", "inbound", "is_quiescent"]

Messages = dict[str, np.ndarray]
#: What one shard sends another in a step: {"direct": Messages, "broadcast": Messages}.
Outbox = dict[str, Messages]


@dataclass
class ShardSpec:
    """Everything a shard needs to start: where its slice of the graph comes from (it
    builds the slice itself), the env, the population and the log."""

    shard: int
    num_shards: int
    seed: int
    partition: Partition
    graph: GraphSource
    env_config: EnvConfig
    env_setup: dict[str, Any] = field(default_factory=dict)
    store: RunStore | None = None
    flush_every: int = 10
    population: PopulationConfig = field(default_factory=PopulationConfig)
    personas: Any = None
    #: Backends of policy-server groups (group index -> ServerBackend).
    backends: dict[int, Any] = field(default_factory=dict)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    #: The run's configured steps (its last step is ``steps - 1``); 0 when unknown.
    steps: int = 0


def _concat(parts: list[Messages | None]) -> Messages | None:
    parts = [p for p in parts if p is not None and next(iter(p.values())).shape[0]]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _nbytes(box: Outbox | None) -> int:
    if not box:
        return 0
    return sum(a.nbytes for m in box.values() for a in m.values())


class Shard:
    """Runs the round for the agents of one partition."""

    def __init__(self, spec: ShardSpec, restore_step: int | None = None,
                 restore_files: tuple[str, ...] = ()):
        self.id = spec.shard
        #: The files of the checkpoint to restore, as the manifest lists them.
        self.checkpoint_files = frozenset(restore_files)
        self.restore_step = restore_step
        self.num_shards = spec.num_shards
        self.partition = spec.partition
        self.store = spec.store
        self.spec = spec
        self.rng = KeyedRNG(spec.seed)
        self.builder = SliceBuilder(spec.graph, spec.shard, spec.partition,
                                    spec.partition.agents_of(spec.shard))
        self.steps_done = 0

    # -- building the slice (see swarm.shardgraph) ------------------------------------

    def draw(self) -> tuple:
        """Draw or read this shard's part of the graph; returns the edges for each shard
        (``None`` in this shard's own slot)."""
        return tuple(self.builder.draw())

    def assemble(self, *received: Edges | None) -> tuple:
        """Merge the edges drawn here and received into rows; returns what a directed
        graph sends on (in-edges for their targets' shards)."""
        return tuple(self.builder.assemble(*received))

    def finish(self, *received: Edges | None) -> dict:
        """In-degrees, routing tables, env, population and log: ready to step.

        Returns the slice's sizes for the driver (it keeps only these)."""
        spec, b = self.spec, self.builder
        env_cls = ENV_REGISTRY[spec.env_config.kind]
        fanout = env_cls.uses_broadcasts(spec.env_config) and self.num_shards > 1
        in_degree, self.fanout = b.finish(*received, fanout=fanout)
        self.faults = Faults(spec.faults, self.rng) if spec.faults.active else None
        self._down_rows: np.ndarray | None = None  # crashed agents' rows, once known
        self.view = ShardView(
            shard=spec.shard,
            num_shards=spec.num_shards,
            agents=b.agents,
            indptr=b.indptr,
            indices=b.indices,
            in_degree=in_degree,
            rng=self.rng,
            contiguous_start=spec.partition.contiguous_start(spec.shard),
            faults=self.faults,
            steps=spec.steps or None,
        )
        if self.fanout is not None or self.num_shards == 1:
            self.view.in_edges_fn = self._in_edges
        _touch(b.indptr, b.indices, in_degree)
        self.env = env_cls(spec.env_config, self.view, spec.env_setup)
        self.reductions = env_cls.metrics
        self.population = Population(spec.population, self.env, self.view, spec.personas,
                                     spec.backends)
        self.log = EventLog(spec.store, f"events/shard={spec.shard}", spec.shard,
                            env_cls.event_types, env_cls.event_columns, spec.flush_every)
        # Messages to this shard's own agents never leave it; `_restored` holds
        # what other shards sent in the checkpoint step, read back on restart.
        self._own: Outbox | None = None
        self._restored: list[tuple[int, Outbox | None]] = []
        # Messages the delay fault holds back: delivery step -> {"direct"|"broadcast": cols}.
        self._held: dict[int, Outbox] = {}
        self._sent: list[Outbox | None] = [None] * self.num_shards
        if self.restore_step is None:
            self.log.rewind(0, 0)  # a fresh start after a failure: nothing of the old try
        else:
            self._restore(self.restore_step)
        return self.slice_stats()

    def slice_stats(self) -> dict:
        """Sizes of this shard's slice: agents, out-edges, cut edges, max degree, bytes."""
        view = self.view
        deg = np.diff(view.indptr)
        cut = 0
        if self.num_shards > 1 and view.indices.size:
            if view.contiguous_start is not None:
                lo = view.contiguous_start
                cut = int(np.count_nonzero((view.indices < lo)
                                           | (view.indices >= lo + view.n_local)))
            else:
                cut = int(np.count_nonzero(self.partition.shard_of(view.indices) != self.id))
        return {
            "shard": self.id,
            "agents": view.n_local,
            "edges": int(view.indices.shape[0]),
            "cut_edges": cut,
            "max_out_degree": int(deg.max()) if deg.size else 0,
            "graph_bytes": int(view.indptr.nbytes + view.indices.nbytes
                               + view.in_degree.nbytes + view.agents.nbytes),
            "fanout_bytes": self.fanout.nbytes if self.fanout is not None else 0,
            **{k: (round(v, 4) if isinstance(v, float) else v)
               for k, v in self.builder.stats.items()},
            "peak_rss_mib": _peak_rss_mib(),
        }

    # -- the round ---------------------------------------------------------------

    def step(self, step: int, *inbox_parts: Outbox | None, checkpoint: bool = False) -> tuple:
        """Run one round; returns ``(summary, outbox_to_shard_0, ..., outbox_to_shard_K-1)``.

        The outbox to this shard itself stays here (None in its slot) and is
        delivered at the next step without a trip through the object store.
        With ``checkpoint`` the shard writes its state after the step.
        """
        t0 = time.perf_counter()
        senders = [k for k in range(self.num_shards) if k != self.id]
        # Step 0 gets no parts (nobody has sent yet); later steps one per other shard.
        parts = [*zip(senders, inbox_parts, strict=False), *self._restored,
                 (self.id, self._own)]
        self._own, self._restored = None, []
        broadcasts = [self._slots(k, p.get("broadcast")) for k, p in parts if p]
        parts = [p for _, p in parts]
        inbox = Inbox(direct=_concat([p.get("direct") for p in parts if p]),
                      broadcast=self._fan_out(broadcasts),
                      totals=_sum_totals([p.get("totals") for p in parts if p]),
                      shared=_concat([p.get("shared") for p in parts if p]))
        dropped = self._inject_faults(inbox, step) if self.faults is not None else 0
        # Crashed agents neither decide, send nor change state, in every env.
        down = self._crashed_rows(step)
        self.view.down = down
        frozen = self._freeze(down) if down is not None else None
        t1 = time.perf_counter()
        batch = self.env.observe(step, inbox)
        t2 = time.perf_counter()
        if down is None:
            actions, decided = self.population.decide(batch, step, self.rng)
        else:
            actions, decided = self._decide_alive(batch, step, down)
        t3 = time.perf_counter()
        result = self.env.apply(step, batch, actions)
        if down is not None:
            self._thaw(frozen, down)
            self._silence(result, down)
        t4 = time.perf_counter()
        self.log.append(step, result.events)
        if not checkpoint:
            self.log.end_step(step)
        t5 = time.perf_counter()
        outboxes = self._route(result.messages, result.broadcasts, result.totals,
                               result.shared)
        self._sent = outboxes
        # Where the shard's time went: delivery (inbox, fan-out, faults) and routing
        # are its part of the exchange; observe, decide, apply and log are the round.
        stages = {"deliver": t1 - t0, "observe": t2 - t1, "decide": t3 - t2, "apply": t4 - t3,
                  "log": t5 - t4, "route": time.perf_counter() - t5}
        # Messages sent, in the unit faults drop and delay them in: one per receiver
        # (a broadcast counts once per out-neighbour, as its copies are dropped).
        n_msgs = 0 if result.messages is None else result.messages["dst"].shape[0]
        if result.broadcasts is not None and result.broadcasts["src"].shape[0]:
            rows = self.view.local_index(result.broadcasts["src"])
            n_msgs += int((self.view.indptr[rows + 1] - self.view.indptr[rows]).sum())
        summary = {
            "shard": self.id,
            "active": result.active,
            "events": int(result.events["agent"].shape[0]),
            "messages": int(n_msgs),
            "cross_shard_messages": int(sum(
                m[next(iter(m))].shape[0] for o in outboxes if o for kind, m in o.items()
                if kind in ("direct", "broadcast"))),
            "cross_shard_bytes": int(sum(_nbytes(o) for o in outboxes)),
            "metrics": result.metrics,
            "reduced": self._reduce(result) if self.reductions else None,
            "policy": decided,
            "dropped_messages": dropped,
            # Held back by the delay fault: not sent this step, but they keep a run going.
            "held_messages": self._held_count() if self.faults is not None else 0,
            "stages": stages,
        }
        self.steps_done = step + 1
        if checkpoint:
            self.log.flush()  # a checkpoint step ends a chunk (flush_every aside)
            t_ck = time.perf_counter()
            summary.update(self._write_state(step))
            summary["checkpoint"] = step
            summary["checkpoint_seconds"] = time.perf_counter() - t_ck
        # Chunks finished this step, for the manifest's list of files.
        summary["files"] = self.log.take_files()
        summary["seconds"] = time.perf_counter() - t0
        return (summary, *outboxes)

    def run_steps(self, start: int, count: int, checkpoint_every: int = 0,
                  max_seconds: float = 0.25) -> list[dict]:
        """Run up to ``count`` steps in one call; only for a single shard (no exchange).

        Stops early when the population is quiescent or after ``max_seconds``,
        so the caller can still show progress. Each summary gains ``step``.
        """
        if self.num_shards != 1:
            raise RuntimeError("run_steps needs the only shard: others wait for its messages")
        t_end = time.perf_counter() + max_seconds
        out = []
        for step in range(start, start + count):
            due = checkpoint_every > 0 and (step + 1) % checkpoint_every == 0
            summary = self.step(step, checkpoint=due)[0]
            summary["step"] = step
            out.append(summary)
            if is_quiescent(summary) or (
                time.perf_counter() > t_end
            ):
                break
        return out

    def _in_edges(self) -> tuple[np.ndarray, np.ndarray]:
        """The edges into this shard's agents: (sources' global ids, receivers' local rows)."""
        if self.fanout is None:  # one shard: every edge is an out-edge of a local row
            view = self.view
            return (np.repeat(view.agents, np.diff(view.indptr)),
                    view.local_index(view.indices).astype(np.int64))
        fan = self.fanout
        return (np.repeat(fan.recv_src, np.diff(fan.recv_indptr)),
                fan.recv_row.astype(np.int64))

    def _reduce(self, result) -> dict:
        """This shard's exact partial of each declared metric (see swarm.reductions)."""
        env, values = self.env, result.values

        def get(name):
            if name == "__agents__":
                return self.view.n_local
            if name in values:
                return values[name]
            return getattr(env, name) if name in env.state else None

        return partials(self.reductions, get)

    # -- crash faults: the engine's, the same in every env ----------------------------

    def _crashed_rows(self, step: int) -> np.ndarray | None:
        """Local rows of the agents crashed by ``step`` (None when there are none)."""
        if self.faults is None or self.faults.config.crash is None:
            return None
        if step < self.faults.config.crash.at_step:
            return None
        if self._down_rows is None:  # crash-stop: the same agents from at_step on
            self._down_rows = np.flatnonzero(self.faults.crashed(self.view.agents, step))
        return self._down_rows if self._down_rows.size else None

    def _decide_alive(self, batch: dict, step: int, down: np.ndarray) -> tuple[dict, dict]:
        """Decide for the rows of agents that have not crashed; a crashed agent's rows get
        zero actions (the env's state of it is restored after apply in any case)."""
        if "agent" not in batch:
            return self.population.decide(batch, step, self.rng)
        from swarm.contract import as_numpy

        agents = as_numpy(batch["agent"])
        dead = np.zeros(self.view.n_local, dtype=bool)
        dead[down] = True
        alive = np.flatnonzero(~dead[self.view.local_index(agents)]) if agents.size else \
            np.empty(0, np.int64)
        if alive.shape[0] == agents.shape[0]:
            return self.population.decide(batch, step, self.rng)
        return self.population.decide_rows(batch, alive, step, self.rng)

    def _freeze(self, down: np.ndarray) -> dict[str, np.ndarray]:
        """The rows ``down`` of every per-agent state array, before observe."""
        return {name: arr[down].copy() for name, arr in self._agent_arrays().items()}

    def _thaw(self, frozen: dict[str, np.ndarray], down: np.ndarray) -> None:
        """Put the crashed agents' state back as it was before observe."""
        arrays = self._agent_arrays()
        for name, rows in frozen.items():
            arrays[name][down] = rows

    def _agent_arrays(self) -> dict[str, np.ndarray]:
        """The env's per-agent state: its declared ``state`` columns and ``agent_state``
        (never guessed from an array's length: an item table may match it by chance)."""
        n, env = self.view.n_local, self.env
        out = {}
        for name in dict.fromkeys((*env.state, *env.agent_state)):
            arr = getattr(env, name, None)
            if arr is None and name in env.agent_state:
                continue  # an optional array the env does not use in this run
            if not isinstance(arr, np.ndarray) or not arr.ndim or arr.shape[0] != n:
                raise RuntimeError(f"env {env.name!r}: per-agent state {name!r} must stay an "
                                   f"array with one row per agent ({n}); write into it "
                                   "instead of replacing it")
            out[name] = arr
        return out

    def _silence(self, result, down: np.ndarray) -> None:
        """A crashed agent sends nothing and leaves no event."""
        dead_ids = self.view.agents[down]

        def keep(ids: np.ndarray) -> np.ndarray:
            return ~np.isin(ids, dead_ids)

        ev = result.events
        if ev["agent"].shape[0]:
            ok = keep(ev["agent"])
            if not ok.all():
                result.events = {k: v[ok] for k, v in ev.items()}
        for attr, who in (("messages", "src"), ("broadcasts", "src")):
            cols = getattr(result, attr)
            if cols is not None and who not in cols:
                raise ValueError(f"env {self.env.name!r}: {attr} need a {who!r} column (the "
                                 "sender) under crash faults")
            if cols is not None and cols[who].shape[0]:
                ok = keep(cols[who])
                if not ok.all():
                    setattr(result, attr, {k: v[ok] for k, v in cols.items()})

    # -- exchange ----------------------------------------------------------------

    def _inject_faults(self, inbox: Inbox, step: int) -> int:
        """Remove what the faults lose from ``inbox``, hold back what they delay and add
        what was held back for this step; returns how many were lost."""
        sent = step - 1  # delivered now, sent in the previous step
        dropped = 0
        late = self.faults.config.delay
        held: Outbox = {}
        d = inbox.direct
        if d is not None:
            gone = self.faults.lost(d["src"], d["dst"], sent)
            dropped += int(gone.sum())
            wait = ~gone & self.faults.delayed(d["src"], d["dst"], sent)
            if wait.any():
                held["direct"] = {k: v[wait] for k, v in d.items()}
            if gone.any() or wait.any():
                inbox.direct = _concat([{k: v[~(gone | wait)] for k, v in d.items()}])
        b = inbox.broadcast
        if b is not None and len(b):
            senders = b.sources()
            receivers = self.view.agents[b.receiver_rows()]
            gone = self.faults.lost(senders, receivers, sent, key=b.edge)
            dropped += int(gone.sum())
            wait = ~gone & self.faults.delayed(senders, receivers, sent, key=b.edge)
            if wait.any():
                held["broadcast"] = b.take(np.flatnonzero(wait))
            if gone.any() or wait.any():
                inbox.broadcast = b.keep(~(gone | wait))
        if held:
            self._held[step + late.steps] = held
        due = self._held.pop(step, None)
        if due and self.faults.config.crash is not None:
            # A receiver that crashed while the message was held never gets it.
            due, lost_late = self._drop_crashed(due, step)
            dropped += lost_late
        if due:  # held back earlier: delivered now, after the faults of its own step
            if "direct" in due:
                inbox.direct = _concat([inbox.direct, due["direct"]])
            if "broadcast" in due:
                parts = [due["broadcast"]]
                if inbox.broadcast is not None and len(inbox.broadcast):
                    parts.insert(0, inbox.broadcast.take())
                inbox.broadcast = FannedOut.from_columns(_concat(parts))
        return dropped

    def _drop_crashed(self, box: Outbox, step: int) -> tuple[Outbox, int]:
        """``box`` without what goes to receivers crashed by ``step``; and how many that was."""
        out: Outbox = {}
        lost = 0
        for kind, cols in box.items():
            dst = cols["dst"] if kind == "direct" else self.view.agents[cols["row"]]
            gone = self.faults.crashed(dst, step)
            lost += int(gone.sum())
            if not gone.all():
                out[kind] = {k: v[~gone] for k, v in cols.items()}
        return out, lost

    def _held_count(self) -> int:
        return sum(next(iter(m.values())).shape[0] for box in self._held.values()
                   for m in box.values())


    def _route(self, messages: Messages | None, broadcasts: Messages | None,
               totals: dict[str, int | np.ndarray] | None = None,
               shared: Messages | None = None) -> list[Outbox | None]:
        """Group outgoing messages by destination shard; keep this shard's own part.

        ``totals`` (the env's additive contributions) and ``shared`` (its table for
        every shard) go to every shard, this one included.
        """
        single = self.num_shards == 1  # everything stays here: no routing at all
        groups: dict[str, list[Messages | None]] = {}
        if messages is not None and messages["dst"].shape[0]:
            groups["direct"] = [messages] if single else self._split(
                messages, self.partition.shard_of(messages["dst"]))
        if broadcasts is not None and broadcasts["src"].shape[0]:
            if single:
                groups["broadcast"] = [broadcasts]
            else:
                # One copy per destination shard that holds an out-neighbour.
                fan = self.fanout
                rows = self.view.local_index(broadcasts["src"])
                starts = fan.dest_indptr[rows]
                counts = fan.dest_indptr[rows + 1] - starts
                pairs = ragged_arange(starts, counts)
                which = np.repeat(np.arange(rows.shape[0]), counts)
                # The slot replaces the sender id: the receiver reads it back from its table.
                cols = {"slot": fan.dest_slot[pairs]}
                cols.update({k: v[which] for k, v in broadcasts.items() if k != "src"})
                groups["broadcast"] = self._split(cols, fan.dest_shard[pairs])
        boxes: list[Outbox] = [{} for _ in range(self.num_shards)]
        if totals:
            part = {k: encode_total(v) for k, v in totals.items()}
            groups["totals"] = [part] * self.num_shards
        if shared and next(iter(shared.values())).shape[0]:
            groups["shared"] = [shared] * self.num_shards
        for kind, parts in groups.items():
            for k, part in enumerate(parts):
                if part is not None:
                    boxes[k][kind] = part
        self._own = boxes[self.id] or None
        return [None if k == self.id else (box or None) for k, box in enumerate(boxes)]

    def _split(self, cols: Messages, dest: np.ndarray) -> list[Messages | None]:
        """``cols`` cut into one part per destination shard (None where nothing goes)."""
        return split_by_shard(cols, dest, self.num_shards)

    def _slots(self, sender: int, part: Messages | None) -> Messages | None:
        """A broadcast part from shard ``sender`` with its slots made rows of this shard's
        receiving table (a copy: the sender's part may be shared)."""
        if part is None or self.fanout is None or "slot" not in part:
            return part
        return {**part, "slot": part["slot"] + self.fanout.recv_base[sender]}

    def _fan_out(self, parts: list[Messages | None]) -> FannedOut | None:
        """Broadcasts that arrived, as one entry per (sender, local receiver) edge."""
        b = _concat(parts)
        if b is None:
            return None
        view = self.view
        if self.fanout is None:  # one shard: every out-edge is local
            pos, edge, counts = view.out_edges(view.local_index(b["src"]))
            receivers, to_row = view.indices, view.local_index
        else:
            fan = self.fanout
            slot = b.pop("slot")
            starts = fan.recv_indptr[slot]
            counts = fan.recv_indptr[slot + 1] - starts
            pos = ragged_arange(starts, counts)
            edge = fan.recv_edge[pos]
            receivers, to_row = fan.recv_row, _as_int64
            b = {"src": fan.recv_src[slot], **b}
        return FannedOut(edge, pos, receivers, to_row, counts, b)

    # -- checkpoints -------------------------------------------------------------

    def checkpoint(self, step: int) -> dict:
        """Flush events and write this shard's state after ``step``; returns the records of
        the files written (``files``: event chunks, ``checkpoint_files``) and the log position."""
        self.log.flush()
        written = self._write_state(step)
        return {**written, "files": self.log.take_files()}

    def _write_state(self, step: int) -> dict:
        """Write the checkpoint files of ``step``; {"checkpoint_files": records, "log": ...}."""
        arrays = {f"env.{k}": v for k, v in self.env.state_dict().items()}
        arrays.update({f"pop.{k}": v for k, v in self.population.state_dict().items()})
        for due, box in self._held.items():
            for kind, cols in box.items():
                arrays.update({f"held.{due}.{kind}.{k}": v for k, v in cols.items()})
        for kind, cols in (self._own or {}).items():
            arrays.update({f"own.{kind}.{k}": v for k, v in cols.items()})
        meta = {"step": step, "shard": self.id, "num_shards": self.num_shards,
                **{f"log_{k}": v for k, v in self.log.position().items()}}
        files = [ckpt.write_arrays(self.store, ckpt.shard_file(step, self.id), arrays, meta)]
        for k, box in enumerate(self._sent):
            if box:
                cols = {f"{kind}.{name}": v for kind, m in box.items() for name, v in m.items()}
                files.append(ckpt.write_arrays(self.store, ckpt.messages_file(step, self.id, k),
                                               cols))
        return {"shard": self.id, "checkpoint_files": files, "log": self.log.position()}

    def _restore(self, step: int) -> None:
        arrays, meta = ckpt.read_arrays(self.store, ckpt.shard_file(step, self.id))
        if meta.get("num_shards") != self.num_shards:
            raise LogError(f"the checkpoint of step {step} was written by "
                           f"{meta.get('num_shards')} shards, not {self.num_shards}; resume "
                           "with the run's own config (its `shards` and `partition`)")
        self.env.load_state_dict({k[4:]: v for k, v in arrays.items() if k.startswith("env.")})
        self.population.load_state_dict({k[4:]: v for k, v in arrays.items()
                                         if k.startswith("pop.")})
        self._own = _unflatten({k[4:]: v for k, v in arrays.items() if k.startswith("own.")})
        self._held = {}
        for key, value in arrays.items():
            if key.startswith("held."):
                _, due, kind, name = key.split(".", 3)
                self._held.setdefault(int(due), {}).setdefault(kind, {})[name] = value
        self.log.rewind(meta["log_parts"], meta["log_rows"])
        # The senders' message files are those the manifest lists for this
        # checkpoint (the driver checked them before starting the shards): a
        # file that went missing is an error here, never an empty inbox.
        for sender in range(self.num_shards):
            rel = ckpt.messages_file(step, sender, self.id)
            if rel in self.checkpoint_files or (not self.checkpoint_files
                                                and self.store.exists(rel)):
                cols, _ = ckpt.read_arrays(self.store, rel)
                self._restored.append((sender, _unflatten(cols)))
        self.steps_done = step + 1

    def close(self) -> dict:
        """Flush the remaining events; report rows written, the last chunks and peak memory."""
        self.log.flush()
        self.population.close()
        return {"shard": self.id, "rows": self.log.rows_written, "files": self.log.take_files(),
                "peak_rss_mib": _peak_rss_mib()}

    def health(self) -> dict:
        return {"shard": self.id, "ok": True, "steps_done": self.steps_done, "pid": os.getpid(),
                "peak_rss_mib": _peak_rss_mib()}


def inbound(parts: list, j: int) -> list:
    """What shard ``j`` receives: ``parts[i][j]`` from every other shard ``i``, in order."""
    return [parts[i][j] for i in range(len(parts)) if i != j]


def build_shards(specs: list[ShardSpec], restore_step: int | None = None,
                 restore_files: tuple[str, ...] = ()) -> tuple[list[Shard], list[dict]]:
    """Shards in this process, their slices built through the same three calls as on Ray."""
    shards = [Shard(s, restore_step, restore_files) for s in specs]
    drawn = [s.draw() for s in shards]
    sent = [s.assemble(*inbound(drawn, j)) for j, s in enumerate(shards)]
    del drawn
    stats = [s.finish(*inbound(sent, j)) for j, s in enumerate(shards)]
    return shards, stats


def is_quiescent(summary: dict) -> bool:
    """Nothing active, nothing sent and nothing held back for later: the run is over."""
    return (summary["active"] == 0 and summary["messages"] == 0
            and summary.get("held_messages", 0) == 0)


def _sum_totals(parts: list[Messages | None]) -> dict[str, int] | None:
    """Every shard's contributions summed exactly, so the order of arrival is irrelevant."""
    parts = [p for p in parts if p]
    if not parts:
        return None
    keys = set(parts[0])
    if any(set(p) != keys for p in parts):
        raise ValueError(f"StepResult.totals must have the same keys on every shard and "
                         f"step; got {sorted({k for p in parts for k in p})} vs {sorted(keys)}")
    return {k: decode_total([p[k] for p in parts]) for k in parts[0]}


def _as_int64(rows: np.ndarray) -> np.ndarray:
    return rows.astype(np.int64)


def _unflatten(cols: dict[str, np.ndarray]) -> Outbox | None:
    box: Outbox = {}
    for key, value in cols.items():
        kind, name = key.split(".", 1)
        box.setdefault(kind, {})[name] = value
    return box or None


def _touch(*arrays: np.ndarray) -> None:
    """Fault in the pages of arrays mapped from Ray's object store now, during set-up,
    rather than at random inside the first steps' timings."""
    for a in arrays:
        if a.size:
            a.reshape(-1)[:: max(1, 4096 // a.itemsize)].sum()


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
