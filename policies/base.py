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
from typing import Any

import numpy as np

from swarm.contract import PolicyContext, PolicyStats, as_numpy, as_tensor, resolve_device
from swarm.registry import POLICIES

__all__ = ["Batch", "Policy", "PolicyContext", "PolicyStats", "as_numpy", "as_tensor",
           "register_policy"]

#: A batch: equal-length columns, tensors (numpy arrays are accepted and
#: converted) plus, for LLM-style policies, lists of strings.
Batch = Mapping[str, Any]


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
    #: The labels of the codes the rule returns, where it returns codes of the env's
    #: choice (the population checks them against the env's ``choice_spec``).
    labels: tuple[str, ...] | None = None

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


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Class decorator: make a rule known by its ``name``, the key an env's
    ``default_policy`` returns. A package's rules are found without importing it first
    when it declares them as entry points (group ``swarm.policies``)."""
    POLICIES.register(cls.name, cls)
    return cls
