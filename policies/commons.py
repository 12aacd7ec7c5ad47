"""The harvest heuristic: how much each agent of the commons env asks to take this round.

The env builds the batch in ``observe`` (the stock every agent sees, its own
harvest norm, what its in-neighbours harvested last round) and turns the
requests into harvests in ``apply`` (scaled down when the population asks for
more than there is). This rule is the decide stage in between, on tensors on
the policy's device.

Batch columns (see ``swarm.envs.commons.Commons.observe``):

``norm``
    The agent's intended harvest per round before any scarcity cut; it starts
    at ``base demand * greed`` and, with ``talk``, drifts toward what the
    neighbours harvest.
``stock_fraction``
    The stock at the start of the round as a fraction of the capacity K (the
    same value in every row).
``nbr_sum``, ``nbr_count``
    Sum and number of the harvests the agent's in-neighbours broadcast last
    round (zeros without ``talk``).

The rule returns ``{"request": (n,), "norm": (n,)}``: the amount asked for
and the updated norm (state the env keeps for the next round).
"""

from __future__ import annotations

import torch

from swarm.policies.base import Policy, PolicyContext

__all__ = ["HarvestNorm"]


class HarvestNorm(Policy):
    """Ask for one's norm, cut under scarcity; with talk, conform to the neighbours.

    ``norm <- (1 - c) * norm + c * mean harvest of in-neighbours`` (``c =
    conformity``; an agent that heard from nobody keeps its norm), then
    ``request = norm * min(1, stock_fraction / scarcity_level)`` (no cut when
    ``scarcity_level`` is 0).

    Parameters
    ----------
    conformity : float
        Weight of the neighbours' mean harvest in the norm update (0: no talk effect).
    scarcity_level : float
        Stock fraction of K below which requests shrink in proportion to the stock.
    """

    name = "harvest_norm"

    def __init__(self, conformity: float, scarcity_level: float, device: str = "cpu"):
        super().__init__(device)
        self.conformity = float(conformity)
        self.scarcity_level = float(scarcity_level)

    def _forward(self, batch: dict[str, torch.Tensor], ctx: PolicyContext) -> dict:
        norm, count = batch["norm"], batch["nbr_count"]
        if self.conformity > 0:
            mean = batch["nbr_sum"] / count.clamp(min=1)
            norm = torch.where(count > 0, (1 - self.conformity) * norm + self.conformity * mean,
                               norm)
        request = norm
        if self.scarcity_level > 0:
            cut = (batch["stock_fraction"] / self.scarcity_level).clamp(max=1.0)
            request = norm * cut
        return {"request": request, "norm": norm}
