"""The batched policy interface: one call decides for a whole batch of agents.

``Policy.decide`` is the public method the engine calls once per step and
policy group (the decide stage of the round); it moves the batch onto the
policy's device as tensors, hands off to the one hook subclasses override,
``_forward``, and checks what comes back. Heuristic rules and LLM-style
policies share it. Policies see observation batches, never env internals,
and draw randomness only through the keyed RNG in the context.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from swarm.policies.device import resolve_device
from swarm.rng import KeyedRNG

__all__ = ["Batch", "Policy", "PolicyContext", "PolicyStats", "as_numpy", "as_tensor"]

#: A batch: equal-length columns, tensors (numpy arrays are accepted and
#: converted) plus, for LLM-style policies, lists of strings.
Batch = Mapping[str, Any]


@dataclass
class PolicyStats:
    """What a policy reports about one decide call (summed into the step's metrics).

    ``decisions``: agents (rows) decided by a model; ``calls``: prompts the
    model chose actions for (after deduplication); ``fallbacks``: rows that
    got the idle action, or no text, because the backend failed
    (``on_error: idle``).
    """

    decisions: int = 0
    calls: int = 0
    fallbacks: int = 0
    #: Prompts the model generated free text for (not part of ``calls``).
    text_calls: int = 0


@dataclass
class PolicyContext:
    """The step being decided, the run's keyed RNG, and where stats go."""

    step: int
    rng: KeyedRNG
    stats: PolicyStats = field(default_factory=PolicyStats)


def as_tensor(value: Any, device: torch.device) -> Any:
    """A column as a tensor on ``device`` (numpy arrays zero-copy on the CPU); lists pass."""
    if isinstance(value, torch.Tensor):
        return value if value.device == device else value.to(device)
    if isinstance(value, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(value))
        return t if device.type == "cpu" else t.to(device)
    return value


def as_numpy(value: Any) -> np.ndarray:
    """A column as a numpy array (a CPU tensor without a copy)."""
    if isinstance(value, torch.Tensor):
        return value.numpy(force=True) if value.device.type != "cpu" else value.numpy()
    return np.asarray(value)


def _batch_len(batch: Batch) -> int:
    lengths = {k: len(v) for k, v in batch.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"a policy batch needs equal-length columns; got {lengths}")
    return next(iter(lengths.values()), 0)


class Policy:
    """Decide actions for a batch: ``decide(batch, ctx) -> actions``.

    Subclasses override ``_forward`` (a dict of tensors on ``self.device``
    in, a dict of tensors out); they leave ``decide`` alone.

    Parameters
    ----------
    device : str
        ``auto`` (a GPU when torch sees one), ``cpu``, ``cuda`` or ``cuda:i``.
    """

    name: str = "policy"

    def __init__(self, device: str = "cpu"):
        self.device = resolve_device(device)

    def decide(self, batch: Batch, ctx: PolicyContext) -> dict[str, Any]:
        n = _batch_len(batch)
        tensors = {k: as_tensor(v, self.device) for k, v in batch.items()}
        actions = self._forward(tensors, ctx)
        for key, value in actions.items():
            if len(value) != n:
                raise ValueError(
                    f"policy {self.name!r} returned {len(value)} values for action {key!r} "
                    f"on a batch of {n}"
                )
        return actions

    def _forward(self, batch: dict[str, Any], ctx: PolicyContext) -> dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must override _forward")

    def state_dict(self) -> dict[str, np.ndarray]:
        """Policy state carried between steps (none for stateless rules)."""
        return {}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        if state:
            raise ValueError(f"policy {self.name!r} has no state; got {sorted(state)}")

    def close(self) -> None:
        """Release models or connections."""
