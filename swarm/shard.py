"""One shard of the population: a plain class the runner makes into a Ray actor.

A shard owns a partition of the agents (their state columns, their CSR rows,
their inbox, their policy and their event log) and runs the round on them:
observe -> decide -> apply -> log -> hand outgoing messages to the exchange,
grouped per destination shard as columnar arrays. It knows nothing of Ray,
so it unit-tests as an ordinary object.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from swarm.envs.base import ENV_REGISTRY, EnvConfig, ShardView
from swarm.eventlog import EventLog
from swarm.partition import Partition
from swarm.policies.base import PolicyContext
from swarm.rng import KeyedRNG

__all__ = ["Shard", "ShardSpec"]

Messages = dict[str, np.ndarray]


@dataclass
class ShardSpec:
    """Everything a shard needs to start: its agents, its edges, the env and the log."""

    shard: int
    num_shards: int
    seed: int
    partition: Partition
    agents: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    row_shift: np.ndarray
    in_degree: np.ndarray
    env_config: EnvConfig
    env_setup: dict[str, Any] = field(default_factory=dict)
    events_dir: str = ""
    flush_every: int = 10


def _concat(parts: list[Messages]) -> Messages | None:
    parts = [p for p in parts if p is not None and p["dst"].shape[0]]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class Shard:
    """Runs the round for the agents of one partition."""

    def __init__(self, spec: ShardSpec):
        self.id = spec.shard
        self.num_shards = spec.num_shards
        self.partition = spec.partition
        self.rng = KeyedRNG(spec.seed)
        self.view = ShardView(
            shard=spec.shard,
            num_shards=spec.num_shards,
            agents=spec.agents,
            indptr=spec.indptr,
            indices=spec.indices,
            row_shift=spec.row_shift,
            in_degree=spec.in_degree,
            rng=self.rng,
            contiguous_start=spec.partition.contiguous_start(spec.shard),
        )
        _touch(spec.indptr, spec.indices, spec.row_shift, spec.in_degree)
        env_cls = ENV_REGISTRY[spec.env_config.kind]
        self.env = env_cls(spec.env_config, self.view, spec.env_setup)
        self.policy = self.env.default_policy()
        self.log = EventLog(spec.events_dir, spec.shard, env_cls.event_types,
                            env_cls.event_columns, spec.flush_every)
        self._own_inbox: Messages | None = None
        self.steps_done = 0

    def step(self, step: int, *inbox_parts: Messages | None) -> tuple:
        """Run one round; returns ``(summary, outbox_to_shard_0, ..., outbox_to_shard_K-1)``.

        The outbox to this shard itself stays here (None in its slot) and is
        delivered at the next step without a trip through the object store.
        """
        t0 = time.perf_counter()
        inbox = _concat([*inbox_parts, self._own_inbox])
        self._own_inbox = None
        batch = self.env.observe(step, inbox)
        actions = self.policy.decide(batch, PolicyContext(step=step, rng=self.rng))
        result = self.env.apply(step, batch, actions)
        self.log.append(step, result.events)
        self.log.end_step(step)
        outboxes = self._route(result.messages)
        n_msgs = result.messages["dst"].shape[0] if result.messages else 0
        cross = sum(o["dst"].shape[0] for o in outboxes if o is not None)
        self.steps_done = step + 1
        summary = {
            "shard": self.id,
            "active": result.active,
            "events": int(result.events["agent"].shape[0]),
            "messages": int(n_msgs),
            "cross_shard_messages": int(cross),
            "metrics": result.metrics,
            "seconds": time.perf_counter() - t0,
        }
        return (summary, *outboxes)

    def run_steps(self, start: int, count: int, max_seconds: float = 0.25) -> list[dict]:
        """Run up to ``count`` steps in one call; only for a single shard (no exchange).

        Stops early when the population is quiescent or after ``max_seconds``,
        so the caller can still show progress. Each summary gains ``step``.
        """
        if self.num_shards != 1:
            raise RuntimeError("run_steps needs the only shard: others wait for its messages")
        t_end = time.perf_counter() + max_seconds
        out = []
        for step in range(start, start + count):
            summary = self.step(step)[0]
            summary["step"] = step
            out.append(summary)
            if (summary["active"] == 0 and summary["messages"] == 0) or (
                time.perf_counter() > t_end
            ):
                break
        return out

    def _route(self, messages: Messages | None) -> list[Messages | None]:
        out: list[Messages | None] = [None] * self.num_shards
        if messages is None or messages["dst"].shape[0] == 0:
            return out
        if self.num_shards == 1:
            self._own_inbox = messages
            return out
        dest = self.partition.shard_of(messages["dst"])
        order = np.argsort(dest, kind="stable")
        bounds = np.searchsorted(dest[order], np.arange(self.num_shards + 1))
        for k in range(self.num_shards):
            lo, hi = bounds[k], bounds[k + 1]
            if hi == lo:
                continue
            sel = order[lo:hi]
            part = {name: col[sel] for name, col in messages.items()}
            if k == self.id:
                self._own_inbox = part
            else:
                out[k] = part
        return out

    def close(self) -> dict:
        """Flush the remaining events; report rows written and peak memory."""
        self.log.flush()
        return {"shard": self.id, "rows": self.log.rows_written, "peak_rss_mib": _peak_rss_mib()}

    def health(self) -> dict:
        return {"shard": self.id, "ok": True, "steps_done": self.steps_done,
                "peak_rss_mib": _peak_rss_mib()}


def _touch(*arrays: np.ndarray) -> None:
    """Fault in the pages of arrays mapped from Ray's object store now, during set-up,
    rather than at random inside the first steps' timings."""
    for a in arrays:
        if a.size:
            a.reshape(-1)[:: max(1, 4096 // a.itemsize)].sum()


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
