"""The heuristic agents of the feed env: interest and social proof decide what they do.

Each row of the batch is an impression (an agent and one item of its feed)
or the agent's own row (``own == 1``: write a post or not). On an
impression the agent likes, reposts, comments, follows the author (items
from agents it does not follow), unfollows them (items from agents it
follows) or ignores it. Each action has a logistic propensity

    sigmoid(base + interest * sim + proof * log1p(proof_count))

where ``sim`` is the cosine of the agent's interest and the item's topic and
``proof_count`` the number of agents it follows that shared the item's root
(social proof). Unfollowing falls with similarity instead. One keyed uniform
per row picks at most one action (inverse CDF over the propensities, scaled
down when they sum past 1), so the draws repeat exactly on any shard count.
"""

from __future__ import annotations

import torch

from swarm.config_base import StrictModel
from swarm.policies.base import Policy, PolicyContext

__all__ = ["ACTIONS", "FeedRules", "FeedRulesConfig"]

#: The feed's action codes, in order (the LLM-style labels too).
ACTIONS = ("ignore", "like", "repost", "comment", "follow", "unfollow", "post")
IGNORE, LIKE, REPOST, COMMENT, FOLLOW, UNFOLLOW, POST = range(len(ACTIONS))


class FeedRulesConfig(StrictModel):
    """Propensities of the heuristic feed agents (logit scale unless said otherwise)."""

    post: float = 0.05
    """Probability that an active agent writes an original post in a step."""
    like: float = -2.5
    """Logit of a like at similarity 0 without social proof."""
    repost: float = -4.0
    """Logit of a repost at similarity 0 without social proof."""
    comment: float = -5.0
    """Logit of a comment at similarity 0 without social proof."""
    follow: float = -4.0
    """Logit of following the author of an item from someone not followed."""
    unfollow: float = -5.0
    """Logit of unfollowing the author of an item from someone followed."""
    interest: float = 3.0
    """Weight of the interest similarity (the unfollow logit falls with it)."""
    proof: float = 1.0
    """Weight of log1p(social proof)."""


class FeedRules(Policy):
    """Interest and social-proof rules for the feed env (see the module docstring)."""

    name = "feed_rules"

    def __init__(self, config: FeedRulesConfig, device: str = "cpu"):
        super().__init__(device)
        self.config = config

    def _forward(self, batch: dict[str, torch.Tensor], ctx: PolicyContext) -> dict:
        c = self.config
        sim = batch["sim"].to(torch.float64)
        z = c.interest * sim + c.proof * torch.log1p(batch["proof"].to(torch.float64))
        followed = batch["followed"].bool()
        zero = torch.zeros_like(sim)
        p = torch.stack([
            torch.sigmoid(c.like + z),
            torch.sigmoid(c.repost + z),
            torch.sigmoid(c.comment + z),
            torch.where(followed, zero, torch.sigmoid(c.follow + c.interest * sim)),
            torch.where(followed, torch.sigmoid(c.unfollow - c.interest * sim), zero),
        ], dim=1)
        total = p.sum(dim=1, keepdim=True)
        p = p / torch.clamp(total, min=1.0)
        cdf = torch.cumsum(p, dim=1)
        u = ctx.rng.uniform("feed_act", batch["agent"], batch["slot"], step=ctx.step)
        u = torch.as_tensor(u, device=sim.device)
        act = LIKE + (cdf <= u[:, None]).sum(dim=1)  # past the last: 6 -> ignore below
        act = torch.where(act > UNFOLLOW, torch.full_like(act, IGNORE), act)
        own = batch["own"].bool()
        post = torch.where(u < c.post, torch.full_like(act, POST), torch.full_like(act, IGNORE))
        return {"act": torch.where(own, post, act)}
