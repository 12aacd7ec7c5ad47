"""Heuristic diffusion rules: the decisions of agents in the cascade env.

Independent cascade and SIR decide per out-edge whether to transmit (one
keyed Bernoulli draw per edge), linear threshold decides per exposed agent
whether the influence received reaches its threshold. Both run on tensors
on the policy's device; the keyed draws equal the CPU's bit for bit.
"""

from __future__ import annotations

import torch

from swarm.policies.base import Policy, PolicyContext

__all__ = ["EdgeTransmission", "LinearThreshold"]


class EdgeTransmission(Policy):
    """Transmit along each candidate edge with probability ``p``.

    With ``once=True`` (independent cascade) the draw is keyed by the edge
    alone: each edge gets one chance in the whole run. Otherwise (SIR) it is
    keyed by edge and step, a fresh chance every step.
    """

    name = "edge_transmission"

    def __init__(self, p: float, once: bool, device: str = "cpu"):
        super().__init__(device)
        self.p = float(p)
        self.once = once

    def _forward(self, batch: dict[str, torch.Tensor], ctx: PolicyContext) -> dict:
        step = 0 if self.once else ctx.step
        return {"transmit": ctx.rng.bernoulli("transmit", batch["edge"], p=self.p, step=step)}


class LinearThreshold(Policy):
    """Adopt when the weighted fraction of active in-neighbours reaches the threshold."""

    name = "linear_threshold"

    def _forward(self, batch: dict[str, torch.Tensor], ctx: PolicyContext) -> dict:
        return {"adopt": batch["influence"] >= batch["threshold"]}
