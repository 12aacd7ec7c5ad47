"""Batched policies (``swarm.policies``): the one decide interface and heuristic rules."""

from swarm.policies.base import Policy, PolicyContext
from swarm.policies.cascade import EdgeTransmission, LinearThreshold

__all__ = ["EdgeTransmission", "LinearThreshold", "Policy", "PolicyContext"]
