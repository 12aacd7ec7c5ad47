"""Honest protocol rules of the consensus env: what an honest agent does each round.

The env builds the batch in ``observe`` (the agent's state, what its
in-neighbours sent, the population-wide tally of the previous round) and
applies the result in ``apply``; these rules are the decide stage in
between, on tensors on the policy's device. Byzantine and Sybil behaviour is
not a policy: it is the adversary of the fault model and lives in the env,
which also ignores what these rules return for crashed agents.

Batch columns (see ``swarm.envs.consensus.Consensus.observe``):

``own``, ``nbr_sum``, ``nbr_count``
    gossip: the agent's value and the sum and number of the values its
    in-neighbours broadcast last step.
``pref``, ``locked``
    majority, leader_commit: the agent's current preference and the value it
    decided (-1: undecided).
``proposal``
    leader_commit: the proposal the agent received this epoch (-1: none).
``top``, ``top_votes``, ``expected``, ``heard``
    The value with the most votes in the last global tally (-1: no tally),
    its vote count, the number of votes that would arrive without faults,
    and whether the agent has ever heard from a neighbour (one that never
    has, cut off by a partition say, does not decide).
``cost``
    contract_net: an (agents x tasks) int64 matrix, the agent's fixed-point
    cost (``cost * 2**32``) of each task it may bid on this step and
    ``UNAVAILABLE`` elsewhere (tasks not announced, agents that hold a task,
    steps that are not a bidding step).

Each vote rule returns int64 tensors ``vote`` and ``decide`` (-1: no
decision this step), and ``ballot`` -1 (the env's column for LLM-style
agents' ballots: -1 tells it the rule decided the row); gossip returns a
float ``value``; contract-net returns int64 ``task`` and ``bid`` (-1: no bid).
"""

from __future__ import annotations

import torch

from swarm.policies.base import Policy, PolicyContext

__all__ = ["UNAVAILABLE", "ContractNetBid", "GossipAverage", "LeaderCommitVote", "MajorityVote"]

#: contract_net: the ``cost`` of a task an agent may not bid on (the int64 maximum).
UNAVAILABLE = 2**63 - 1


class GossipAverage(Policy):
    """Gossip averaging: the mean of the agent's own value and its in-neighbours'."""

    name = "gossip"

    def _forward(self, batch: dict[str, torch.Tensor], ctx: PolicyContext) -> dict:
        return {"value": (batch["own"] + batch["nbr_sum"]) / (batch["nbr_count"] + 1)}


def _quorum(batch: dict[str, torch.Tensor], num: int, den: int) -> torch.Tensor:
    """Rows whose agent sees the tally's top value pass a ``num/den`` quorum (exact ints)."""
    top = batch["top"]
    passed = (top >= 0) & (batch["top_votes"] * den > batch["expected"] * num)
    return passed & batch["heard"].bool()


class MajorityVote(Policy):
    """Majority vote with rounds: decide a value with a strict majority, else adopt the plurality.

    Every round each agent votes its preference; when the global tally of the
    last round gives one value more than half of the expected votes, every
    agent that can hear decides it; otherwise agents adopt the plurality
    value (ties to the smallest) and vote again. A decided agent votes its
    decision.
    """

    name = "majority"

    def _forward(self, batch: dict[str, torch.Tensor], ctx: PolicyContext) -> dict:
        locked, top = batch["locked"], batch["top"]
        passed = _quorum(batch, 1, 2) & (locked < 0)
        decide = torch.where(passed, top, torch.full_like(top, -1))
        pref = torch.where(top >= 0, top, batch["pref"])
        vote = torch.where(locked >= 0, locked, pref)
        vote = torch.where(decide >= 0, decide, vote)
        return {"vote": vote, "decide": decide}


class LeaderCommitVote(Policy):
    """Leader-based commit: vote the leader's proposal, commit a value with a 2/3 quorum.

    A locked (decided) agent votes its decision whatever is proposed. The
    ``decide`` column is read by the env only in the commit phase.
    """

    name = "leader_commit"

    def _forward(self, batch: dict[str, torch.Tensor], ctx: PolicyContext) -> dict:
        locked, top = batch["locked"], batch["top"]
        passed = _quorum(batch, 2, 3) & (locked < 0)
        decide = torch.where(passed, top, torch.full_like(top, -1))
        vote = torch.where(locked >= 0, locked, batch["proposal"])
        return {"vote": vote, "decide": decide}


class ContractNetBid(Policy):
    """Contract-net bidding: bid your cost for the cheapest task you may bid on.

    One bid per agent and round, on the announced task with the lowest cost
    (ties: the smallest task id); the bid is that cost. Agents that may bid
    on nothing (every entry ``UNAVAILABLE``) bid -1. Awarding, the
    manager's side, acts on the bids a manager received, not on agent rows,
    and lives in the env: the lowest bid wins, ties to the smallest agent id.
    """

    name = "contract_net"

    def _forward(self, batch: dict[str, torch.Tensor], ctx: PolicyContext) -> dict:
        best, task = batch["cost"].min(dim=1)  # ties: the first (smallest) task
        ok = best < UNAVAILABLE
        none = torch.full_like(best, -1)
        return {"task": torch.where(ok, task, none), "bid": torch.where(ok, best, none)}
