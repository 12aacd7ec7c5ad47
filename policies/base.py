"""The batched policy interface: one call decides for a whole batch of agents.

``Policy.decide`` is the public method the engine calls once per step and
policy group; it checks the batch and the actions and hands off to the one
hook subclasses override, ``_forward``. Heuristic rules and (later)
LLM-style policies share it. Policies see observation batches, never env
internals, and draw randomness only through the keyed RNG in the context.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from swarm.rng import KeyedRNG

__all__ = ["Policy", "PolicyContext"]


@dataclass(frozen=True)
class PolicyContext:
    """The step being decided and the run's keyed RNG."""

    step: int
    rng: KeyedRNG


def _batch_len(batch: dict) -> int:
    lengths = {k: len(v) for k, v in batch.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"a policy batch needs equal-length columns; got {lengths}")
    return next(iter(lengths.values()), 0)


class Policy:
    """Decide actions for a batch: ``decide(batch, ctx) -> actions``.

    Subclasses override ``_forward``; they leave ``decide`` alone.
    """

    name: str = "policy"

    def decide(self, batch: dict[str, np.ndarray], ctx: PolicyContext) -> dict[str, np.ndarray]:
        n = _batch_len(batch)
        actions = self._forward(batch, ctx)
        for key, value in actions.items():
            if len(value) != n:
                raise ValueError(
                    f"policy {self.name!r} returned {len(value)} values for action {key!r} "
                    f"on a batch of {n}"
                )
        return actions

    def _forward(self, batch: dict[str, np.ndarray], ctx: PolicyContext) -> dict[str, np.ndarray]:
        raise NotImplementedError(f"{type(self).__name__} must override _forward")
