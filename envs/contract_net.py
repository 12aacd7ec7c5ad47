"""Task allocation by bids (contract-net) among agents, under faults and adversaries.

``tasks`` tasks, each with a keyed manager agent; every (agent, task) pair has a
keyed cost in [0, 1). Rounds of four steps: at ``step % 4 == 0`` managers announce their tasks
that no agent has confirmed yet on the totals channel (a population-wide
notice board, so every agent may bid: the auction is not limited to the
manager's neighbours); at ``% 4 == 1`` every agent that holds no task bids
its cost for the cheapest announced task, a direct message to the manager;
a manager awards each task to its lowest bid (ties to the smallest agent
id) as the bids arrive; an awarded agent that still holds no task takes it
(``allocate``) and confirms to the manager, which closes the task. An agent
holds one task at a time. A holder that sees its task announced again (its
confirm was lost or late) confirms again instead of bidding. Bids, awards
and confirms are direct messages, so faults hit them; a confirm lost (or
late) until the task is awarded again leaves it held by two agents (a
safety violation: nothing cancels the second award). Managers run their
auctions honestly whatever the agent is; the adversary bids.

Adversaries (``byzantine``, ``sybil``: keyed shares, as in ``swarm.envs.consensus``)
bid 0: Byzantine agents each on a keyed announced task, all identities of a Sybil
controller on the same keyed task each round; they take what they win and never do
it, so their tasks count as not allocated. Crash-stop: a crashed manager's tasks
drop out; a task its holder took before crashing stays allocated (the engine
already cuts a crashed agent's messages).

Metrics (each task's manager reports it, from the previous step's holder counts on
the totals channel, so they lag one step): ``decided``, the share of live tasks
allocated; ``agreement``, 1 when every task of a live manager is held by exactly
one honest agent and none by two; ``validity``, agreement and every holder bid for
its task; ``safety_violations``, extra holders of tasks held by several;
``cost_ratio``, the summed cost of the allocated tasks over that of a greedy
allocation (repeatedly the cheapest free honest agent and open task, without
faults) of the same tasks: greedy is not optimal, so the ratio can fall below 1.
Costs are integers (``cost * 2**32``), part of the task model, so their sums are
exact. Steps to agreement: ``agreement_step(run.metrics())``.

LLM-style agents choose each bidding round to ``pass`` or ``bid`` (their cost for
the cheapest task they may bid on, as the rule does), prompted with how many open
tasks they may bid on and that cost (``open_tasks``, ``best_cost``). In a mixed
population the rule's rows read ``bid_choice = -1``. The tiny random-weight model of the tests
answers at random.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
from pydantic import Field

from swarm.contract import as_numpy
from swarm.envs.base import (
    ChoiceSpec,
    Column,
    Env,
    EnvConfig,
    Inbox,
    ShardView,
    StepResult,
    make_events,
    register_env,
)
from swarm.envs.consensus import AdversaryConfig, _adversaries, _concat

__all__ = ["BID_CHOICES", "MAX_TASKS", "UNAVAILABLE", "ContractNet", "ContractNetConfig"]

#: The most tasks (an agent's bids are a 64-bit mask).
MAX_TASKS = 64
#: "No bid" in cost tables: above every real cost (the rule's value too).
UNAVAILABLE = 2**63 - 1
_COST_SCALE = float(2**32)  # a cost in [0, 1) is an integer of these units
_BID, _AWARD, _CONFIRM = 0, 1, 2  # message kinds
#: What LLM-style agents choose each bidding round.
BID_CHOICES = ("pass", "bid")


class ContractNetConfig(AdversaryConfig):
    """How many tasks, and the adversaries among the bidders."""

    kind: Literal["contract_net"] = "contract_net"
    tasks: int = Field(8, ge=1, le=MAX_TASKS)
    """Number of tasks to allocate (each with a keyed manager)."""


def _task_cost(rng, agents: np.ndarray, tasks: np.ndarray | int) -> np.ndarray:
    """contract_net: the fixed-point cost (``cost * 2**32``, cost in [0, 1)) of each pair."""
    bits = rng.bits("consensus_task_cost", agents, np.asarray(tasks, dtype=np.int64))
    return (bits >> np.uint64(32)).astype(np.int64)


def _task_managers(rng, tasks: int, n: int) -> np.ndarray:
    ids = np.arange(tasks, dtype=np.int64)
    return (rng.bits("consensus_manager", ids) % np.uint64(n)).astype(np.int64)


def _greedy_costs(rng, agents: np.ndarray, tasks: int) -> np.ndarray:
    """Per task, the cost of the agent a greedy allocation gives it (-1: none).

    Greedy takes the cheapest (free agent, open task) pair until the tasks or
    the agents run out. Only each task's ``tasks`` cheapest agents can ever
    be its greedy pick (fewer than ``tasks`` agents are taken before it), so
    the loops run over tasks, never over agents.
    """
    out = np.full(tasks, -1, dtype=np.int64)
    if agents.size == 0:
        return out
    k = min(tasks, agents.size)
    cand = np.empty((tasks, k), dtype=np.int64)
    for t in range(tasks):
        c = _task_cost(rng, agents, t)
        cand[t] = agents[np.argpartition(c, k - 1)[:k]] if k < agents.size else agents
    pool = np.unique(cand)
    m = pool.size
    cost = _task_cost(rng, np.tile(pool, tasks),
                      np.repeat(np.arange(tasks, dtype=np.int64), m)).reshape(tasks, m)
    free_task, free_agent = np.ones(tasks, dtype=bool), np.ones(m, dtype=bool)
    for _ in range(k):
        masked = np.where(free_task[:, None] & free_agent[None, :], cost, UNAVAILABLE)
        t, a = divmod(int(masked.argmin()), m)  # ties: the smallest task, then agent
        out[t] = cost[t, a]
        free_task[t], free_agent[a] = False, False
    return out


def _messages(dst, src, kind: int, task, bid) -> dict[str, np.ndarray]:
    return {"dst": np.asarray(dst, dtype=np.int64), "src": np.asarray(src, dtype=np.int64),
            "kind": np.full(np.shape(dst)[0], kind, dtype=np.int8),
            "task": np.asarray(task, dtype=np.int64), "bid": np.asarray(bid, dtype=np.int64)}


def _first_per(key: np.ndarray, *order_by: np.ndarray) -> np.ndarray:
    """Indices of the first entry per distinct ``key``, ordered by ``order_by`` (lexsort)."""
    order = np.lexsort((*order_by[::-1], key))
    first = np.ones(order.shape[0], dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    return order[first]


@register_env
class ContractNet(Env):
    """Managers auction tasks; agents bid, win, take and confirm (module docstring)."""

    name = "contract_net"
    Config = ContractNetConfig
    event_types = ("award", "allocate")
    observation = ("agent", "cost", "open_tasks", "best_cost")
    # bid_choice: LLM-style agents' choice (other rows: -1).
    actions = ("task", "bid", "bid_choice")
    metric_names = ("honest", "honest_decided", "tasks_total", "tasks_live", "tasks_allocated",
                    "tasks_double", "cost_units", "greedy_units", "unbid_holds")
    derived_metric_names = ("agreement", "decided", "validity", "safety_violations",
                            "cost_ratio")
    summary_metrics = ("agreement", "decided", "validity", "safety_violations", "cost_ratio")
    message_fields = {"src": np.int64, "kind": np.int8, "task": np.int64, "bid": np.int64}
    #: The task each agent holds (-1: none) and the tasks it ever bid on (bit t).
    state = {"holds": Column(np.int64, -1), "bid_mask": Column(np.uint64)}
    #: Per task, the agent its manager (if on this shard) closed it for (-1: open).
    state_attrs = ("task_holder",)
    smoke_config = {"steps": 20,
                    "graph": {"kind": "watts_strogatz", "n": 200, "k": 6, "p": 0.1},
                    "env": {"kind": "contract_net", "tasks": 6}}

    def __init__(self, config: ContractNetConfig, view: ShardView,
                 setup: Mapping[str, np.ndarray]):
        super().__init__(config, view, setup)
        ids, n = view.agents, view.n_local
        self.byz, self.sybil, self.controller = _adversaries(config, ids, view.rng)
        self.honest = ~(self.byz | self.sybil)
        self.task_holder = np.full(config.tasks, -1, dtype=np.int64)
        managers = setup["managers"]
        pos = np.minimum(np.searchsorted(ids, managers), max(n - 1, 0))
        here = (ids[pos] == managers) if n else np.zeros(config.tasks, dtype=bool)
        #: Per task, the local row of its manager (-1: managed on another shard).
        self.task_row = np.where(here, pos, -1)
        # Passed from observe to apply within a step (never checkpointed).
        self._down = np.zeros(n, dtype=bool)
        self._totals: dict | None = None
        self._pending: list[dict[str, np.ndarray]] = []
        self._events: list[dict[str, np.ndarray]] = []
        self._taken = 0
        self._open = np.empty(0, dtype=np.int64)

    @classmethod
    def prepare(cls, config: ContractNetConfig, n: int, rng) -> dict[str, np.ndarray]:
        ids = np.arange(n, dtype=np.int64)
        byz, sybil, _ = _adversaries(config, ids, rng)
        return {"managers": _task_managers(rng, config.tasks, n),
                "greedy_cost": _greedy_costs(rng, ids[~(byz | sybil)], config.tasks)}

    @classmethod
    def uses_broadcasts(cls, config: ContractNetConfig) -> bool:
        return False

    def default_policy(self):
        return "contract_net", {}

    def observe(self, step: int, inbox: Inbox) -> dict[str, np.ndarray]:
        faults = self.view.faults
        self._down = (faults.crashed(self.view.agents, step) if faults is not None
                      else np.zeros(self.view.n_local, dtype=bool))
        self._totals = inbox.totals
        return self._observe_tasks(step, inbox)

    def apply(self, step: int, batch: dict[str, np.ndarray], actions: dict) -> StepResult:
        return self._apply_tasks(step, batch, actions)

    def _observe_tasks(self, step: int, inbox: Inbox) -> dict[str, np.ndarray]:
        """Managers close confirmed tasks and award bids; agents take awards. Builds the
        bidding batch: costs of the announced tasks for agents that may bid."""
        cfg, view = self.config, self.view
        n, T = view.n_local, cfg.tasks
        self._pending, self._events, self._taken = [], [], 0
        d = inbox.direct
        if d is not None and d["dst"].shape[0]:
            rows = view.local_index(d["dst"])
            live = ~self._down[rows]
            kind, task, src = d["kind"], d["task"].astype(np.int64), d["src"]
            to_manager = live & (self.task_row[task] == rows)
            self._close(to_manager & (kind == _CONFIRM), task, src)
            self._award(to_manager & (kind == _BID) & (self.task_holder[task] < 0), d, task)
            self._take(live & (kind == _AWARD), rows, task, src)
        cost = np.full((n, T), UNAVAILABLE, dtype=np.int64)
        self._open = np.empty(0, dtype=np.int64)
        if step % 4 == 1 and inbox.totals is not None:
            self._open = np.flatnonzero([int(inbox.totals[f"open{t}"]) > 0 for t in range(T)])
            may_bid = np.flatnonzero(self.honest & ~self._down & (self.holds < 0))
            k = self._open.shape[0]
            if k and may_bid.shape[0]:
                c = _task_cost(view.rng, np.repeat(view.agents[may_bid], k),
                               np.tile(self._open, may_bid.shape[0]))
                cost[may_bid[:, None], self._open[None, :]] = c.reshape(-1, k)
        best = cost.min(axis=1) if T else np.full(n, UNAVAILABLE, np.int64)
        can = best < UNAVAILABLE
        # For LLM-style agents' prompts: how many tasks they may bid on, the cheapest cost.
        return {"agent": view.agents.copy(), "cost": cost,
                "open_tasks": (cost < UNAVAILABLE).sum(axis=1).astype(np.int64),
                "best_cost": np.where(can, best / _COST_SCALE, 1.0)}

    def _close(self, mask: np.ndarray, task: np.ndarray, src: np.ndarray) -> None:
        """Managers close each task for its first confirmer (the smallest agent id)."""
        which = np.flatnonzero(mask)
        if which.shape[0]:
            first = which[_first_per(task[which], src[which])]
            self.task_holder[task[first]] = src[first]

    def _award(self, mask: np.ndarray, d: dict, task: np.ndarray) -> None:
        """Managers award each open task to its lowest bid (ties: the smallest agent id)."""
        which = np.flatnonzero(mask)
        if not which.shape[0]:
            return
        win = which[_first_per(task[which], d["bid"][which], d["src"][which])]
        self._pending.append(_messages(d["src"][win], d["dst"][win], _AWARD, task[win],
                                       d["bid"][win]))
        self._events.append(make_events(np.full(win.shape[0], self.event_code("award"), np.int8),
                                        d["dst"][win],
                                        target=d["src"][win], item=task[win],
                                        value=d["bid"][win] / _COST_SCALE))

    def _take(self, mask: np.ndarray, rows: np.ndarray, task: np.ndarray,
              src: np.ndarray) -> None:
        """Agents that hold no task take one award (the smallest task id) and confirm it."""
        which = np.flatnonzero(mask & (self.holds[rows] < 0))
        if not which.shape[0]:
            return
        take = which[_first_per(rows[which], task[which])]
        r, t = rows[take], task[take]
        self.holds[r] = t
        self._taken = int(r.shape[0])
        agents = self.view.agents[r]
        cost = _task_cost(self.view.rng, agents, t)
        self._pending.append(_messages(src[take], agents, _CONFIRM, t, cost))
        self._events.append(make_events(np.full(r.shape[0], self.event_code("allocate"), np.int8),
                                        agents, item=t,
                                        value=cost / _COST_SCALE))

    def _rule_or_choice(self, batch: dict, actions: dict) -> tuple[np.ndarray, np.ndarray]:
        """(task, bid) per agent: the rule's on its rows (``bid_choice`` -1); an LLM-style
        agent that chose ``bid`` bids its cost for the cheapest task it may bid on, as the
        rule does, and one that chose ``pass`` bids nothing."""
        n = self.view.n_local
        none = np.full(n, -1, np.int64)
        task = np.asarray(as_numpy(actions["task"]), np.int64) if "task" in actions else none
        bid = (np.asarray(as_numpy(actions["bid"]), np.int64).copy() if "bid" in actions
               else none.copy())
        choice = actions.get("bid_choice")
        if choice is None:
            return task, bid
        choice = as_numpy(choice).astype(np.int64)
        cost = np.asarray(batch["cost"])
        cheapest = cost.argmin(axis=1) if cost.shape[1] else none
        ok = cost[np.arange(n), cheapest] < UNAVAILABLE if cost.shape[1] else none >= 0
        bids = (choice == BID_CHOICES.index("bid")) & ok
        passes = (choice == BID_CHOICES.index("pass")) | ((choice >= 0) & ~ok)
        task = np.where(bids, cheapest, np.where(passes, -1, task))
        bid = np.where(bids, cost[np.arange(n), np.maximum(cheapest, 0)] if cost.shape[1]
                       else -1, np.where(passes, -1, bid))
        return task, bid

    @classmethod
    def choice_spec(cls, config: ContractNetConfig) -> ChoiceSpec:
        return ChoiceSpec(
            action="bid_choice", labels=BID_CHOICES, idle=0,
            fields=("open_tasks", "best_cost"),
            template=("You are {persona}.\nTasks are auctioned: the lowest bid wins, and you "
                      "can hold one task. {open_tasks} open tasks are yours to bid on; the "
                      "cheapest would cost you {best_cost:.2f} (0 to 1).\nYour last "
                      "choices: {memory}.\nYou can {actions}.\nYou choose to"))

    def _bids(self, step: int, batch: dict, actions: dict) -> list[dict[str, np.ndarray]]:
        """This round's bids (honest from the policy, adversaries' of 0) and re-confirms."""
        view, open_ = self.view, self._open
        k = open_.shape[0]
        if not k:
            return []
        free = ~self._down & (self.holds < 0)
        task, bid = self._rule_or_choice(batch, actions)
        task = np.where(self.honest & free, task, -1)
        byz, syb = self.byz & free, self.sybil & free
        if byz.any():  # each on its own keyed task
            bits = view.rng.bits("consensus_byz_task", view.agents[byz], step=step)
            task[byz], bid[byz] = open_[(bits % np.uint64(k)).astype(np.int64)], 0
        if syb.any():  # all identities of a controller on the same task
            bits = view.rng.bits("consensus_sybil_task", self.controller[syb], step=step)
            task[syb], bid[syb] = open_[(bits % np.uint64(k)).astype(np.int64)], 0
        rows = np.flatnonzero(task >= 0)
        self.bid_mask[rows] |= np.uint64(1) << task[rows].astype(np.uint64)
        managers = self.setup["managers"]
        out = [_messages(managers[task[rows]], view.agents[rows], _BID, task[rows], bid[rows])]
        again = np.flatnonzero(~self._down & (self.holds >= 0) & np.isin(self.holds, open_))
        if again.shape[0]:
            t = self.holds[again]
            out.append(_messages(managers[t], view.agents[again], _CONFIRM, t,
                                 _task_cost(view.rng, view.agents[again], t)))
        return out

    def _apply_tasks(self, step: int, batch: dict, actions: dict) -> StepResult:
        cfg, view = self.config, self.view
        T = cfg.tasks
        rows = self.task_row
        live = (rows >= 0) & ~self._down[np.maximum(rows, 0)] if view.n_local else rows >= 0
        unclosed = live & (self.task_holder < 0)
        opened = unclosed if step % 4 == 0 else np.zeros(T, dtype=bool)
        messages = _concat([*self._pending, *(self._bids(step, batch, actions) if step % 4 == 1
                                              else [])])
        held = self.holds >= 0
        count = np.bincount(self.holds[held], minlength=T)
        holder = np.zeros(T, dtype=np.int64)
        np.add.at(holder, self.holds[held], view.agents[held])
        totals = {f"open{t}": int(opened[t]) for t in range(T)}
        totals.update({f"held{t}": int(count[t]) for t in range(T)})
        totals.update({f"holder{t}": int(holder[t]) for t in range(T)})
        events = _concat(self._events) or make_events(np.empty(0, np.int8), np.empty(0, np.int64))
        metrics = self._task_metrics(live)
        # Open tasks keep the run going; so does a taken task, until its count is in the metrics.
        return StepResult(events=events, messages=messages, totals=totals,
                          active=int(unclosed.sum()) + self._taken, metrics=metrics)

    def _task_metrics(self, live: np.ndarray) -> dict[str, int]:
        """Each task's manager reports it, from the holder counts of the previous step."""
        cfg, rng = self.config, self.view.rng
        here = self.task_row >= 0
        tot = self._totals
        count = np.array([int(tot[f"held{t}"]) if tot else 0 for t in range(cfg.tasks)])
        holder = np.array([int(tot[f"holder{t}"]) if tot else 0 for t in range(cfg.tasks)],
                          dtype=np.int64)
        one = np.flatnonzero(live & (count == 1))
        byz, sybil, _ = _adversaries(cfg, holder[one], rng)
        done = one[~(byz | sybil)]
        greedy = self.setup["greedy_cost"][done]
        h = self.holds
        unbid = self.honest & (h >= 0) & (
            (self.bid_mask >> np.maximum(h, 0).astype(np.uint64)) & np.uint64(1) == 0)
        return {"tasks_total": int(here.sum()), "tasks_live": int(live.sum()),
                "tasks_allocated": int(done.shape[0]),
                "tasks_double": int(np.maximum(count[here] - 1, 0).sum()),
                "cost_units": int(_task_cost(rng, holder[done], done).sum()),
                "greedy_units": int(greedy[greedy >= 0].sum()),
                "honest": int((self.honest & ~self._down).sum()),
                "honest_decided": int((h[self.honest & ~self._down] >= 0).sum()),
                "unbid_holds": int(unbid.sum())}

    @classmethod
    def derive_metrics(cls, totals: Mapping[str, float],
                       config: EnvConfig | None = None) -> dict[str, float]:
        nan = float("nan")
        live, done = int(totals["tasks_live"]), int(totals["tasks_allocated"])
        double = int(totals["tasks_double"])
        agreement = int(live > 0 and done == live and double == 0)
        greedy = int(totals["greedy_units"])
        return {"agreement": agreement, "decided": done / live if live else nan,
                "validity": int(agreement and int(totals["unbid_holds"]) == 0),
                "safety_violations": double,
                "cost_ratio": int(totals["cost_units"]) / greedy if greedy else nan}
