"""Fault injection: lost messages, network partitions and crashed agents, for any env.

Applied by the engine at delivery (the observe stage of the receiving shard),
so every env gets the same faults without knowing about them. Every decision
is a keyed draw, so a faulty run is as reproducible as a clean one and does
not depend on sharding. Times are those of the sending step ``s`` (a message
sent at ``s`` is delivered at ``s + 1``):

* ``drop``: each message, and each (sender, receiver) copy of a broadcast, is
  lost with this probability, drawn per (sender, receiver, s) or (edge, s);
* ``partition``: a keyed ``fraction`` of agents forms side A; messages between
  side A and the rest are lost for ``start <= s < end``;
* ``crash``: a keyed ``fraction`` of agents crash-stops at ``at_step``: from
  then on nothing they send arrives and nothing delivered to them from that
  step on arrives. The shard also freezes them, the same way in every env
  (``Shard.step``): from their crash step a crashed agent does not decide, its
  events and outgoing messages are dropped, and its per-agent state
  (``Env.agent_state``) is restored after each step;
* ``delay``: a keyed ``fraction`` of the messages that are not lost arrive
  ``steps`` steps late (held by the receiving shard, and checkpointed with it).

Point-to-point messages must carry a ``src`` column for this (the engine checks).
Their drop and delay draws are keyed by (sender, receiver, sending step): two
messages between the same pair in the same step share their fate, which is a
link failing for a step; a broadcast copy is keyed by its edge.

Envs see the run's ``Faults`` as ``ShardView.faults`` (None without faults), for
metrics that need it (a protocol's correct agents leave out the crashed ones).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from swarm.config_base import StrictModel
from swarm.rng import KeyedRNG

__all__ = ["CrashFaults", "DelayFaults", "Faults", "FaultsConfig", "PartitionFaults"]


class CrashFaults(StrictModel):
    """Crash-stop of a keyed fraction of the agents."""

    fraction: float = Field(gt=0.0, le=1.0)
    """Share of agents that crash (a keyed draw per agent)."""
    at_step: int = Field(0, ge=0)
    """The first step at which they neither send nor receive."""


class PartitionFaults(StrictModel):
    """A network partition between two groups during a window of steps."""

    fraction: float = Field(0.5, gt=0.0, lt=1.0)
    """Share of agents on side A (a keyed draw per agent); the rest are side B."""
    start: int = Field(ge=0)
    """First sending step whose messages across the cut are lost."""
    end: int = Field(ge=1)
    """The cut heals here: messages sent at this step cross again."""

    @model_validator(mode="after")
    def _window(self) -> PartitionFaults:
        if self.end <= self.start:
            raise ValueError(f"end must be > start; got start={self.start}, end={self.end}")
        return self


class DelayFaults(StrictModel):
    """Late delivery of a keyed fraction of the messages."""

    steps: int = Field(ge=1)
    """How many steps late a delayed message arrives."""
    fraction: float = Field(1.0, gt=0.0, le=1.0)
    """Share of messages (and broadcast copies) that are delayed."""


class FaultsConfig(StrictModel):
    """Faults the engine injects into message delivery (none by default)."""

    drop: float = Field(0.0, ge=0.0, le=1.0)
    """Probability that a message (or a broadcast's copy to one receiver) is lost."""
    partition: PartitionFaults | None = None
    crash: CrashFaults | None = None
    delay: DelayFaults | None = None

    @property
    def active(self) -> bool:
        return (self.drop > 0 or self.partition is not None or self.crash is not None
                or self.delay is not None)


class Faults:
    """The keyed fault decisions of one run (the same on every shard).

    Examples
    --------
    >>> f = Faults(FaultsConfig(crash={"fraction": 1.0, "at_step": 2}), KeyedRNG(0))
    >>> f.crashed(np.arange(3), step=1).tolist(), f.crashed(np.arange(3), step=2).tolist()
    ([False, False, False], [True, True, True])
    """

    def __init__(self, config: FaultsConfig, rng: KeyedRNG):
        self.config, self.rng = config, rng

    def crashed(self, agents: np.ndarray, step: int) -> np.ndarray:
        """Which of ``agents`` (global ids) have crashed by ``step``."""
        c = self.config.crash
        if c is None or step < c.at_step:
            return np.zeros(agents.shape[0], dtype=bool)
        return self.rng.uniform("fault_crash", agents) < c.fraction

    def lost(self, src: np.ndarray, dst: np.ndarray, sent: int,
             key: np.ndarray | None = None) -> np.ndarray:
        """Which messages from ``src`` to ``dst`` sent at step ``sent`` never arrive.

        ``key`` identifies each message for the drop draw (a broadcast copy's
        edge key); default the (src, dst) pair.
        """
        cfg = self.config
        lost = np.zeros(src.shape[0], dtype=bool)
        if cfg.drop > 0:
            keys = (key,) if key is not None else (src, dst)
            lost |= self.rng.bernoulli("fault_drop", *keys, p=cfg.drop, step=sent)
        p = cfg.partition
        if p is not None and p.start <= sent < p.end:
            side = self.rng.uniform("fault_side", src) < p.fraction
            lost |= side != (self.rng.uniform("fault_side", dst) < p.fraction)
        if cfg.crash is not None:
            # A crashed sender sends nothing from its crash step on; a receiver
            # that has crashed by the delivery step (sent + 1) takes nothing in.
            lost |= self.crashed(src, sent) | self.crashed(dst, sent + 1)
        return lost

    def delayed(self, src: np.ndarray, dst: np.ndarray, sent: int,
                key: np.ndarray | None = None) -> np.ndarray:
        """Which messages sent at ``sent`` arrive ``delay.steps`` late."""
        d = self.config.delay
        if d is None:
            return np.zeros(src.shape[0], dtype=bool)
        keys = (key,) if key is not None else (src, dst)
        return self.rng.bernoulli("fault_delay", *keys, p=d.fraction, step=sent)
