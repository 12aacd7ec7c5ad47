"""Classical distributed algorithms for the coordination env's five tasks (the baselines).

The env (``swarm.envs.coordination``) runs the rounds: it delivers what
neighbours sent, keeps the per-edge bookkeeping and offers every agent keyed
uniform draws (a random free group, a random live neighbour, a random
proposer); these rules are the decide stage, on tensors.

Batch columns (see ``Coordination.observation_schema``):

``mine``
    the agent's current answer (colouring: its group, -1 none).
``clash``, ``free_pick``
    colouring: neighbours that announced the agent's group last round or fixed
    it, and a uniform draw among the groups no neighbour has fixed (-1: none).
``phase``, ``pick``, ``offer``, ``h_pick``, ``may_leave``
    matching and vertex cover: the Israeli–Itai phase (0 propose, 1 accept,
    2 choose), a random live neighbour, a random proposer, a random edge of
    the accepted proposals, and (vertex cover) whether the agent is a redundant
    coordinator with no redundant neighbour of a smaller id.
``best``, ``heard_min``
    flooding: the smallest id (value) the agent holds, and the smallest it
    heard this round (the int64 maximum: nothing).
"""

from __future__ import annotations

import torch

from swarm.policies.base import Policy, PolicyContext

__all__ = ["DeltaColouring", "FloodMax", "Flooding", "IsraeliItai", "MatchingCover"]


class DeltaColouring(Policy):
    """Randomized (Δ + 1) colouring: fix an announced group nobody else announced or fixed;
    otherwise announce a random group no neighbour has fixed."""

    name = "delta_colouring"

    def _forward(self, batch: dict[str, torch.Tensor], ctx: PolicyContext) -> dict:
        mine = batch["mine"]
        keep = (mine >= 0) & (batch["clash"] == 0)
        return {"colour": torch.where(keep, mine, batch["free_pick"]),
                "fix": keep.to(torch.int64)}


class IsraeliItai(Policy):
    """Israeli–Itai maximal matching: propose to a random live neighbour, accept a random
    proposal, choose a random edge of the accepted ones (an edge both ends chose is
    matched)."""

    name = "israeli_itai"

    def _forward(self, batch: dict[str, torch.Tensor], ctx: PolicyContext) -> dict:
        phase = batch["phase"]
        target = torch.where(phase == 0, batch["pick"],
                             torch.where(phase == 1, batch["offer"], batch["h_pick"]))
        return {"target": target}


class MatchingCover(IsraeliItai):
    """2-approximate vertex cover: the endpoints of an Israeli–Itai maximal matching, pruned
    to a minimal cover (a redundant coordinator leaves when no redundant neighbour has a
    smaller id)."""

    name = "matching_cover"

    def _forward(self, batch: dict[str, torch.Tensor], ctx: PolicyContext) -> dict:
        out = super()._forward(batch, ctx)
        out["leave"] = batch["may_leave"]
        return out


class FloodMax(Policy):
    """Leader election by min-id flooding: hold and forward the smallest id heard; the agent
    whose own id that is leads."""

    name = "floodmax"

    def _forward(self, batch: dict[str, torch.Tensor], ctx: PolicyContext) -> dict:
        return {"best": torch.minimum(batch["best"], batch["heard_min"])}


class Flooding(FloodMax):
    """Consensus by flooding: hold and forward the smallest proposal heard (0 or 1)."""

    name = "flooding"
