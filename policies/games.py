"""Strategy rules of the repeated 2x2 games: the decisions of agents in the games env.

One call decides, for every agent of a shard, first whether it imitates its
best-scoring neighbour (a keyed draw per agent and step), then the one move
(0 = C, 1 = D) it plays against all its neighbours in the next round under the
strategy it now holds. The rules read only the batch the env built from the
round just settled, so they run unchanged on the policy's device. The env plays
round 0 itself, with the openings these rules would choose (tit_for_tat and
win_stay_lose_shift open with C, having seen no moves).
"""

from __future__ import annotations

import torch

from swarm.policies.base import Policy, PolicyContext

__all__ = ["GameStrategies"]

#: Strategy codes: their index in the games env's ``STRATEGIES``.
ALLC, ALLD, TFT, WSLS = range(4)
COOPERATE, DEFECT = 0, 1


class GameStrategies(Policy):
    """Imitate the best neighbour with probability ``imitation``, then move by strategy.

    Parameters
    ----------
    aspiration : float
        win_stay_lose_shift repeats its last move when last round's payoff per
        game reached this, and switches otherwise.
    tft_threshold : float
        tit_for_tat cooperates when at least this share of the neighbours
        cooperated last round (0.5: majority, ties cooperate; 1.0: strict).
    reputation : bool
        tit_for_tat counts the neighbours in good standing (``good``: those that
        cooperated in at least half of their moves so far) instead of last
        round's cooperators (``coop``): indirect instead of direct reciprocity.
    imitation : float
        Per-step probability that an agent considers imitation; it then adopts
        the best neighbour's strategy when that neighbour scored strictly more.
    device : str
        Where the rules run (see ``Policy``).

    The batch columns: ``agent`` (global ids, the key of the imitation draw),
    ``strategy``, ``action`` (last move, -1 before the first), ``neighbours``
    and ``coop`` (moves received last round and how many were C), ``good``
    (how many of those neighbours are in good standing), ``payoff``
    (last round's total), ``own_score`` / ``best_score`` / ``best_strategy``
    (the scores imitation compares: the agent's and its best neighbour's of
    the same round; ``best_strategy`` -1 without neighbours).

    Returns ``strategy`` and ``action`` (the next move).
    """

    name = "game_strategies"

    def __init__(self, aspiration: float, tft_threshold: float = 0.5, imitation: float = 0.0,
                 reputation: bool = False, device: str = "cpu"):
        super().__init__(device)
        self.reputation = bool(reputation)
        self.aspiration = float(aspiration)
        self.tft_threshold = float(tft_threshold)
        self.imitation = float(imitation)

    def _forward(self, batch: dict[str, torch.Tensor], ctx: PolicyContext) -> dict:
        strategy = batch["strategy"].to(torch.int8)
        if self.imitation > 0:
            draw = ctx.rng.bernoulli("imitate", batch["agent"], p=self.imitation, step=ctx.step)
            better = batch["best_score"] > batch["own_score"]
            adopt = draw & (batch["best_strategy"] >= 0) & better
            strategy = torch.where(adopt, batch["best_strategy"].to(torch.int8), strategy)
        last = batch["action"].to(torch.int8)
        n = batch["neighbours"].to(torch.float64)
        coop = batch["good" if self.reputation else "coop"].to(torch.float64)
        played = n > 0
        # tit_for_tat: no moves seen (first round, isolated agent) means cooperate.
        tft = torch.where(played & (coop < self.tft_threshold * n), DEFECT, COOPERATE)
        # win_stay_lose_shift: open with C; without games there is nothing to judge, so stay.
        per_game = batch["payoff"].to(torch.float64) / torch.clamp(n, min=1.0)
        win = ~played | (per_game >= self.aspiration)
        wsls = torch.where(last < 0, COOPERATE, torch.where(win, last, 1 - last))
        action = torch.full_like(strategy, COOPERATE)
        action = torch.where(strategy == ALLD, DEFECT, action)
        action = torch.where(strategy == TFT, tft.to(torch.int8), action)
        action = torch.where(strategy == WSLS, wsls.to(torch.int8), action)
        return {"strategy": strategy, "action": action.to(torch.int8)}
