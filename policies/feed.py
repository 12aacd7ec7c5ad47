"""The heuristic agents of the feed env: interest and social proof decide what they do.

Each row of the batch is an impression (an agent and one item of its feed)
or the agent's own row (``own == 1``: write a post or not). On an
impression the agent likes, reposts, comments, follows the author (items
from agents it does not follow), unfollows them (items from agents it
follows) or ignores it. Each action has a logistic propensity

    sigmoid(base + interest * sim + proof * log1p(proof_count))

where ``sim`` is the cosine of the agent's interest and the item's topic and
``proof_count`` the number of agents it follows that shared the item's root
(social proof). Unfollowing falls with similarity instead. An item the agent
already liked (``liked``) is not liked again, nor is a cascade it already shared
(``reposted``: it posted the root or reposted one of its items) reposted again.
One keyed uniform
per row picks at most one action (inverse CDF over the propensities, scaled
down when they sum past 1), so the draws repeat exactly on any shard count.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from swarm.policies.base import Policy, PolicyContext

__all__ = ["ACTIONS", "FeedRules"]

#: The feed's action codes this rule returns, in order: the env's labels (checked when the
#: population is built).
ACTIONS = ("ignore", "like", "repost", "comment", "follow", "unfollow", "post")
IGNORE, LIKE, REPOST, COMMENT, FOLLOW, UNFOLLOW, POST = range(len(ACTIONS))


class FeedRules(Policy):
    """Interest and social-proof rules for the feed env (see the module docstring)."""

    name = "feed_rules"

    labels = ACTIONS

    def __init__(self, *, post: float, like: float, repost: float, comment: float,
                 follow: float, unfollow: float, interest: float, proof: float,
                 device: str = "cpu"):
        """The propensities of the env's ``rules`` (``FeedRulesConfig``)."""
        super().__init__(device)
        self.config = SimpleNamespace(post=post, like=like, repost=repost, comment=comment,
                                      follow=follow, unfollow=unfollow, interest=interest,
                                      proof=proof)

    def _forward(self, batch: dict[str, torch.Tensor], ctx: PolicyContext) -> dict:
        c = self.config
        sim = batch["sim"].to(torch.float64)
        z = c.interest * sim + c.proof * torch.log1p(batch["proof"].to(torch.float64))
        followed = batch["followed"].bool()
        zero = torch.zeros_like(sim)
        # Once each: no second like of an item, no second share of a cascade (a batch
        # without these columns marks nothing).
        liked = batch["liked"].bool() if "liked" in batch else torch.zeros_like(followed)
        shared = batch["reposted"].bool() if "reposted" in batch else torch.zeros_like(followed)
        p = torch.stack([
            torch.where(liked, zero, torch.sigmoid(c.like + z)),
            torch.where(shared, zero, torch.sigmoid(c.repost + z)),
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
