"""Heuristic opinion-update rules: the decisions of agents in the opinion env.

The env aggregates each agent's inbox (the opinions its in-neighbours held at
the previous step) into per-agent columns; these rules turn them into the
agent's new opinion, on tensors on the policy's device. Opinions are rows of
``dims`` floats (a ``(n, dims)`` tensor), scalars being the ``dims = 1`` case.

Batch columns (see ``swarm.envs.opinion.Opinion.observe``):

``own``
    The agent's opinion now, ``(n, dims)``.
``anchor``
    Its initial opinion (Friedkin-Johnsen's prejudice), ``(n, dims)``.
``nbr_sum``, ``nbr_count``
    Sum and number of the in-neighbours' opinions that count: all of them
    (DeGroot, Friedkin-Johnsen) or those within the confidence bound
    (Hegselmann-Krause).
``partner``, ``has_partner``
    Deffuant: the one in-neighbour met this step, and whether it is within
    the confidence bound (the agent moves only then).

Each rule returns ``{"opinion": (n, dims) tensor}``.
"""

from __future__ import annotations

import torch

from swarm.policies.base import Policy, PolicyContext

__all__ = ["BoundedConfidenceAverage", "DeGrootUpdate", "DeffuantUpdate"]


class DeGrootUpdate(Policy):
    """Lazy DeGroot averaging, with Friedkin-Johnsen stubbornness.

    ``x <- s * x0 + (1 - s) * (w * x + (1 - w) * mean of in-neighbours)``
    with ``w = self_weight`` and ``s = stubbornness`` (0: plain DeGroot). An
    agent that heard from nobody keeps its opinion (before the pull of ``x0``).
    """

    name = "degroot"

    def __init__(self, self_weight: float, stubbornness: float = 0.0, device: str = "cpu"):
        super().__init__(device)
        self.self_weight = float(self_weight)
        self.stubbornness = float(stubbornness)

    def _forward(self, batch: dict[str, torch.Tensor], ctx: PolicyContext) -> dict:
        own, count = batch["own"], batch["nbr_count"].unsqueeze(-1)
        mean = batch["nbr_sum"] / count.clamp(min=1)
        social = torch.where(count > 0, self.self_weight * own + (1 - self.self_weight) * mean,
                             own)
        if self.stubbornness > 0:
            social = self.stubbornness * batch["anchor"] + (1 - self.stubbornness) * social
        return {"opinion": social}


class BoundedConfidenceAverage(Policy):
    """Hegselmann-Krause: the mean of the agent's own opinion and the close neighbours'."""

    name = "hegselmann_krause"

    def _forward(self, batch: dict[str, torch.Tensor], ctx: PolicyContext) -> dict:
        count = batch["nbr_count"].unsqueeze(-1)
        return {"opinion": (batch["own"] + batch["nbr_sum"]) / (count + 1)}


class DeffuantUpdate(Policy):
    """Deffuant: move a fraction ``mu`` of the way toward the partner met, if close enough."""

    name = "deffuant"

    def __init__(self, mu: float, device: str = "cpu"):
        super().__init__(device)
        self.mu = float(mu)

    def _forward(self, batch: dict[str, torch.Tensor], ctx: PolicyContext) -> dict:
        own = batch["own"]
        step = self.mu * (batch["partner"] - own)
        return {"opinion": torch.where(batch["has_partner"].unsqueeze(-1), own + step, own)}
