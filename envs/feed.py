"""A social feed: posts, reposts, likes, comments, follows and unfollows, with a recommender.

The graph is the follow graph: an edge ``u -> v`` means v follows u, so
what u posts reaches v (out-edges are who receives what an agent emits).

A step, for each shard:

* **Delivery** (``observe``). Posts and reposts of followed agents land in
  each follower's *timeline*, a ring of ``timeline`` slots: new arrivals
  overwrite the oldest, and an item leaves it once shown.
  Likes, reposts and comments reach the item's author as notices, which
  count toward the item's hot score. Follow and unfollow notices reach the
  followed agent.
* **Who acts.** Each agent opens the feed with probability ``activity`` (a
  keyed draw per agent and step); only those agents are worked on.
* **Recommendation.** An active agent's feed is ``feed_size`` items picked
  from its timeline and from the *trending pool*: the ``pool`` items with the
  highest hot score population-wide, ``(1 + likes + 2 reposts + comments) *
  2^(-age / half_life)``. Every shard sends its local top items on the
  engine's shared channel and every shard keeps the global top of the union,
  which is the same whatever the shard count. Candidates are ranked by
  ``recommender.follow`` (from someone followed) + ``recommender.interest``
  * cosine(agent interest, item topic) + ``recommender.hot`` * log1p(hot)
  - ``recommender.recency`` * age; ties go to the timeline, then to the lower
  ring slot or pool rank. An item shown to an agent is not shown to it again while it is among
  the last ``seen`` items it was shown.
  With the recommender off the feed is the timeline, newest first.
* **Decide and apply.** The policy answers each impression with one action
  (``swarm.policies.feed``: interest and social-proof rules by default) and
  each active agent's own row with post or not. New items go to the author's
  followers by broadcast; reposts carry ``root`` and ``parent`` (the item the
  reposter saw), so every cascade is an exact tree of items.
* **Once each.** An agent shares a cascade at most once (its author, by posting it;
  anyone else, by one repost of any of its items) and likes an item at most once, so
  a cascade's size counts people. The env keeps what each agent shared and liked
  (``shared_roots``, ``liked``: sorted keys, saved in checkpoints) and marks such
  impressions in the batch (``reposted``, ``liked``); a repost or like of one is an
  invalid action, and of two items of one cascade in a feed only the better ranked
  is reposted.

Agents have a fixed interest vector of ``TOPIC_DIMS`` dimensions (keyed
draws); an original post's topic is its author's interest plus keyed noise
(``topic_noise``), and a repost keeps its root's topic. Topics travel packed
as 8 signed bytes in one int64. Item ids encode their author and step
(``item = (step * n + author) * (feed_size + 1) + slot``), so they are unique
and the same on any shard count.

Dynamic edges (DESIGN.md): follow and unfollow change the graph during the
run without touching the CSR. The follower's shard keeps ``follow_add``
(follows beyond the graph) and ``follow_mute`` (graph edges unfollowed: their
broadcasts are dropped on arrival); the author's shard keeps ``fan_add``
(followers beyond the graph, sent each new item point to point). All three
are sorted key arrays (``row * n + other``), merged (compacted) in the step
they change, and saved in checkpoints. The follow graph at any step is the
initial graph plus the ``follow``/``unfollow`` events up to it. A follow
delivers items posted from the next step on; an unfollow stops those posted
from its own step on. Under the engine's delay fault, follow state is applied
when items and notices arrive, so a delayed item or a notice overtaken by a
later one can break that rule (a known limit; without delays it holds exactly,
tested).

Events (``agent`` acts, ``target`` is the other agent): ``post`` (item,
root = item), ``repost`` (item, root, parent, target = the parent's author),
``like`` and ``comment`` (item, root, target = author), ``follow`` and
``unfollow`` (target), ``view`` (one per impression: item, root, target = the
author, who exposed the viewer; off with ``log_views: false``). ``value`` is
the cosine of the agent's interest and the item's topic (NaN for posts), and
``source`` where a view's item came from: 0 the timeline (someone followed), 1
the trending pool. Text written
by LLM-style agents goes in the ``text`` column of post, repost and comment
events; it stays in the log (items travel without it, so other agents'
prompts show an item's topic, similarity and popularity, not its words).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from swarm.config_base import StrictModel
from swarm.contract import as_numpy
from swarm.envs.base import (
    ChoiceSpec,
    Env,
    EnvConfig,
    Inbox,
    ShardView,
    StepResult,
    make_events,
    register_env,
)
from swarm.graph import ragged_arange

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


__all__ = ["Feed", "FeedConfig", "RecommenderConfig", "TOPIC_DIMS", "pack_topics",
           "unpack_topics"]

#: Dimensions of interest and topic vectors (packed as int8 into one int64).
TOPIC_DIMS = 8
# Kinds of point-to-point messages.
_FOLLOW, _UNFOLLOW, _ITEM, _LIKE, _REPOST, _COMMENT = range(6)


class RecommenderConfig(StrictModel):
    """How a feed is ranked (weights of a linear score; see the module docstring)."""

    enabled: bool = True
    """Off: the feed is the agent's timeline, newest first, and no trending pool."""
    follow: float = 1.0
    """Bonus of an item from someone the agent follows."""
    interest: float = 1.0
    """Weight of cosine(agent interest, item topic)."""
    hot: float = 0.5
    """Weight of log1p(hot score) of trending items."""
    recency: float = 0.1
    """Penalty per step of an item's age."""


class FeedConfig(EnvConfig):
    """A social feed with a recommender (see the module docstring)."""

    kind: Literal["feed"] = "feed"
    activity: float = Field(0.2, ge=0.0, le=1.0)
    """Probability that an agent opens its feed in a step."""
    feed_size: int = Field(5, ge=1, le=64)
    """Items shown to an active agent per step."""
    timeline: int = Field(8, ge=1, le=127)
    """Slots of an agent's timeline (a ring: the newest arrivals from those it follows)."""
    pool: int = Field(32, ge=0, le=4096)
    """Trending items every agent can be recommended (0: none)."""
    seen: int = Field(32, ge=1, le=127)
    """Items an agent remembers having been shown: they are not shown to it again
    while remembered (a ring: the oldest are forgotten first)."""
    window: int = Field(24, ge=1)
    """Steps an item stays in the trending ranking."""
    half_life: float = Field(4.0, gt=0.0)
    """Steps in which an item's hot score halves."""
    topic_noise: float = Field(0.5, ge=0.0)
    """How far an original post's topic strays from its author's interest."""
    log_views: bool = True
    """Log a ``view`` event per impression (exposure analysis needs them)."""
    recommender: RecommenderConfig = Field(default_factory=RecommenderConfig)
    rules: FeedRulesConfig = Field(default_factory=FeedRulesConfig)
    """The heuristic agents' propensities (``swarm.policies.feed``)."""


def pack_topics(x: np.ndarray) -> np.ndarray:
    """Rows of ``TOPIC_DIMS`` floats in [-1, 1] as one int64 each (8 signed bytes).

    >>> v = np.array([[1.0, -1.0, 0.5, 0, 0, 0, 0, 0.25]])
    >>> unpack_topics(pack_topics(v)).round(2).tolist()
    [[1.0, -1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.25]]
    """
    q = np.clip(np.rint(np.asarray(x, dtype=np.float64) * 127.0), -127, 127).astype(np.int8)
    return np.ascontiguousarray(q).view(np.int64).reshape(-1)


def unpack_topics(codes: np.ndarray) -> np.ndarray:
    """The float32 vectors of packed topics (any shape; a trailing axis is added)."""
    c = np.ascontiguousarray(codes, dtype=np.int64)
    return c.view(np.int8).reshape(*c.shape, TOPIC_DIMS).astype(np.float32) / np.float32(127.0)


def _member(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Which ``keys`` are in the sorted array ``sorted_keys``."""
    if sorted_keys.shape[0] == 0:
        return np.zeros(keys.shape, dtype=bool)
    idx = np.searchsorted(sorted_keys, keys)
    return sorted_keys[np.minimum(idx, sorted_keys.shape[0] - 1)] == keys


def _merge(keys: np.ndarray, add: np.ndarray, remove: np.ndarray) -> np.ndarray:
    """The sorted key set ``keys`` with ``add`` added and ``remove`` removed."""
    if add.shape[0]:
        keys = np.sort(np.concatenate([keys, add]))
        keep = np.ones(keys.shape[0], dtype=bool)
        keep[1:] = keys[1:] != keys[:-1]
        keys = keys[keep]
    if remove.shape[0]:
        keys = keys[~_member(np.sort(remove), keys)]
    return keys


def _insert_keys(keys: np.ndarray, add: np.ndarray) -> np.ndarray:
    """The sorted key set ``keys`` with ``add`` added: an insert at sorted positions,
    linear in the set, for sets that only grow (a sort of the whole set per step is not)."""
    add = np.unique(add)
    add = add[~_member(keys, add)]
    return np.insert(keys, np.searchsorted(keys, add), add) if add.shape[0] else keys


def _dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Dot products over the last axis, summed in a fixed order.

    BLAS (matmul, einsum) picks kernels by matrix size, and a shard's batch size
    depends on the shard count: its last bits would too.
    """
    out = x[..., 0] * y[..., 0]
    for d in range(1, x.shape[-1]):
        out = out + x[..., d] * y[..., d]
    return out


def _top_k(score: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the columns of the ``k`` highest scores, best first, ties to the lower
    column; and which of them are real (finite). ``k`` passes of argmax (which returns
    the first maximum): for a small ``k``, several times faster than a full sort.

    >>> pick, ok = _top_k(np.array([[1.0, 3.0, 3.0, -np.inf]]), 3)
    >>> pick.tolist(), ok.tolist()
    ([[1, 2, 0]], [[True, True, True]])
    """
    work = score.copy()
    rows = np.arange(score.shape[0])
    k = min(k, score.shape[1])
    pick = np.empty((score.shape[0], k), dtype=np.int64)
    ok = np.empty((score.shape[0], k), dtype=bool)
    for j in range(k):
        col = work.argmax(axis=1)
        pick[:, j] = col
        ok[:, j] = np.isfinite(work[rows, col])
        work[rows, col] = -np.inf
    return pick, ok


def _normalized(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.sqrt(_dot(x, x))[..., None], 1e-12)


@register_env
class Feed(Env):
    """Posts, reposts, likes, comments, follows and unfollows with a recommender."""

    name = "feed"
    Config = FeedConfig
    event_types = ("post", "repost", "like", "comment", "follow", "unfollow", "view")
    event_columns = {"text": pa.string(), "source": pa.int8()}
    metric_names = ("active_agents", "posts", "reposts", "likes", "comments", "follows",
                    "unfollows", "views", "invalid_actions", "live_items")
    timing_metrics = ("recommend_seconds",)
    summary_metrics = ("posts", "reposts", "likes", "follows", "unfollows")
    message_fields = {"src": np.int64, "kind": np.int8, "item": np.int64, "root": np.int64,
                      "topic": np.int64}
    broadcast_fields = {"item": np.int64, "root": np.int64, "topic": np.int64}
    state_attrs = ("tl_item", "tl_root", "tl_topic", "tl_head", "seen", "seen_head", "own_item",
                   "own_root", "own_topic", "own_likes", "own_reposts", "own_comments",
                   "follow_add", "follow_mute", "fan_add", "shared_roots", "liked")
    # The rest are tables of items and sorted key sets, whose length may equal the
    # shard's agent count by chance: they are not rows of agents.
    agent_state = ("tl_item", "tl_root", "tl_topic", "tl_head", "seen", "seen_head")
    state_bytes_per_agent = 24 * 8 + 8 * 8 + TOPIC_DIMS * 4
    smoke_config = {
        "graph": {"kind": "barabasi_albert", "n": 400, "m": 3},
        "env": {"kind": "feed", "activity": 0.5, "pool": 16,
                "rules": {"post": 0.2, "repost": -2.0, "follow": -2.5, "unfollow": -2.5}},
        "steps": 12,
    }

    def __init__(self, config: FeedConfig, view: ShardView, setup: Mapping[str, np.ndarray]):
        super().__init__(config, view, setup)
        n_local, m = view.n_local, config.timeline
        self.n = int(setup["n"])
        self.k1 = config.feed_size + 1  # item slots per agent and step
        self.interest = self.interests(view.agents)
        self.tl_item = np.full((n_local, m), -1, dtype=np.int64)
        self.tl_root = np.full((n_local, m), -1, dtype=np.int64)
        self.tl_topic = np.zeros((n_local, m), dtype=np.int64)
        self.tl_head = np.zeros(n_local, dtype=np.int8)  # where the next arrival goes
        self.seen = np.full((n_local, config.seen), -1, dtype=np.int64)
        self.seen_head = np.zeros(n_local, dtype=np.int8)
        empty = np.empty(0, dtype=np.int64)
        self.own_item, self.own_root, self.own_topic = empty, empty.copy(), empty.copy()
        self.own_likes = np.empty(0, np.int32)
        self.own_reposts = np.empty(0, np.int32)
        self.own_comments = np.empty(0, np.int32)
        self.follow_add, self.follow_mute, self.fan_add = empty.copy(), empty.copy(), empty.copy()
        # What each agent did once and never again (sorted keys ``id * n_local + row``, see
        # ``_done_key``): the cascades it shared (posted or reposted; by root) and the
        # items it liked. A cascade's size then counts people, not shares.
        self.shared_roots, self.liked = empty.copy(), empty.copy()
        src, row = view.in_edges()
        self.in_keys = np.sort(row * self.n + src)  # the graph's follows, by follower row
        self._turn: dict | None = None
        self._recommend_seconds = 0.0

    @classmethod
    def prepare(cls, config: FeedConfig, n: int, rng) -> dict[str, np.ndarray]:
        return {"n": np.int64(n)}

    @classmethod
    def choice_spec(cls, config: FeedConfig) -> ChoiceSpec:
        return ChoiceSpec(
            action="act", labels=ACTIONS, idle=IGNORE, text="text", row_key="slot",
            fields=("sim", "proof", "hot", "followed", "own", "topic", "reposted", "liked"),
            template=("You are {persona}.\nYour feed shows a post on topic {topic} "
                      "(how close to your interests, -1 to 1: {sim:.1f}; shared by {proof} "
                      "people you follow; popularity {hot:.0f}; from someone you follow: "
                      "{followed}; own row, where only post or ignore count: {own}).\n"
                      "Your last actions: {memory}.\nYou can {actions}.\nYou choose to"),
            text_template=("You are {persona}. You {choice} about topic {topic}, and "
                           "you write:"),
        )

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        super().load_state_dict(state)
        width = {"tl_item": self.config.timeline, "tl_root": self.config.timeline,
                 "tl_topic": self.config.timeline, "seen": self.config.seen}
        for name, w in width.items():  # checkpoints store arrays flat
            setattr(self, name, np.asarray(getattr(self, name)).reshape(self.view.n_local, w))

    def default_policy(self):
        return "feed_rules", self.config.rules.model_dump()

    def interests(self, agents: np.ndarray) -> np.ndarray:
        """Unit interest vectors of ``agents`` (keyed: the same on every shard)."""
        rng = self.view.rng
        u = np.stack([rng.uniform("feed_interest", agents, draw=d) for d in range(TOPIC_DIMS)],
                     axis=1)
        return _normalized(2.0 * u - 1.0).astype(np.float32)

    def _author(self, item: np.ndarray) -> np.ndarray:
        return (item // self.k1) % self.n

    def _item_step(self, item: np.ndarray) -> np.ndarray:
        return item // (self.k1 * self.n)

    def _done_key(self, rows: np.ndarray, ids: np.ndarray, roots: bool = False) -> np.ndarray:
        """Keys of (local row, item or root) pairs for ``shared_roots`` and ``liked``.

        Id-major (``id * n_local + row``): ids grow with the step, rows are bounded. A
        root is an original post, whose id is ``(step * n + author) * k1 + feed_size``, so
        roots are keyed by ``root // k1`` (k1 times further from overflowing).
        """
        ids = ids // self.k1 if roots else ids
        n_local = max(self.view.n_local, 1)
        if ids.shape[0] and int(ids.max()) >= (2**63 - 1) // n_local - 1:
            raise OverflowError("feed: item ids times agents per shard no longer fit in int64 "
                                "(run with more shards or fewer steps)")
        return ids * n_local + rows

    # -- delivery --------------------------------------------------------------

    def _count(self, counter: np.ndarray, items: np.ndarray) -> None:
        """Add one per notice about ``items`` (own items still in the window)."""
        if items.shape[0] == 0 or self.own_item.shape[0] == 0:
            return
        idx = np.minimum(np.searchsorted(self.own_item, items), self.own_item.shape[0] - 1)
        ok = self.own_item[idx] == items
        counter += np.bincount(idx[ok], minlength=counter.shape[0]).astype(np.int32)

    def _insert(self, rows: np.ndarray, item: np.ndarray, root: np.ndarray,
                topic: np.ndarray) -> None:
        """Put delivered items into their receivers' timelines (rings of the newest ones)."""
        if rows.shape[0] == 0:
            return
        m = self.config.timeline
        o = np.lexsort((item, rows))  # per row, oldest (smallest id) first
        rows, item = rows[o], item[o]
        keep = np.ones(rows.shape[0], dtype=bool)
        keep[1:] = (rows[1:] != rows[:-1]) | (item[1:] != item[:-1])
        o, rows, item = o[keep], rows[keep], item[keep]
        start = np.ones(rows.shape[0], dtype=bool)
        start[1:] = rows[1:] != rows[:-1]
        first = np.flatnonzero(start)
        count = np.diff(np.append(first, rows.shape[0]))
        group = np.cumsum(start) - 1
        # Only the newest m of a row's arrivals are kept; they fill the ring from its head.
        offset = np.arange(rows.shape[0]) - first[group] - np.maximum(count - m, 0)[group]
        fit = offset >= 0
        ur = rows[first]
        head = self.tl_head[ur].astype(np.int64)
        slot = (head[group[fit]] + offset[fit]) % m
        r = rows[fit]
        self.tl_item[r, slot] = item[fit]
        self.tl_root[r, slot] = root[o[fit]]
        self.tl_topic[r, slot] = topic[o[fit]]
        self.tl_head[ur] = ((head + np.minimum(count, m)) % m).astype(np.int8)

    def follows(self, rows: np.ndarray, authors: np.ndarray) -> np.ndarray:
        """Whether the agents in local ``rows`` follow ``authors`` (global ids) now."""
        key = rows * self.n + authors
        static = _member(self.in_keys, key) & ~_member(self.follow_mute, key)
        return static | _member(self.follow_add, key)

    def observe(self, step: int, inbox: Inbox) -> dict[str, np.ndarray]:
        view, cfg, n = self.view, self.config, self.n
        d = inbox.direct
        if d is not None and d["dst"].shape[0]:
            rows = view.local_index(d["dst"])
            kind, src, item = d["kind"], d["src"], d["item"]
            self._count(self.own_likes, item[kind == _LIKE])
            self._count(self.own_reposts, item[kind == _REPOST])
            self._count(self.own_comments, item[kind == _COMMENT])
            f, u = kind == _FOLLOW, kind == _UNFOLLOW
            if f.any() or u.any():
                self.fan_add = _merge(self.fan_add, rows[f] * n + src[f], rows[u] * n + src[u])
            it = np.flatnonzero(kind == _ITEM)
            # From follows beyond the graph: only while the receiver still follows.
            it = it[_member(self.follow_add, rows[it] * n + src[it])]
            self._insert(rows[it], item[it], d["root"][it], d["topic"][it])
        b = inbox.broadcast
        if b is not None and len(b):
            got = b.take()
            rows, src = got["row"].astype(np.int64), got["src"]
            ok = ~_member(self.follow_mute, rows * n + src)
            self._insert(rows[ok], got["item"][ok], got["root"][ok], got["topic"][ok])
        pool = self._pool(inbox.shared)
        active = np.flatnonzero(view.rng.bernoulli("feed_active", view.agents, p=cfg.activity,
                                                   step=step))
        t0 = time.perf_counter()
        batch = self._recommend(step, active, pool)
        self._recommend_seconds = time.perf_counter() - t0
        return batch

    def _pool(self, shared: dict | None) -> dict[str, np.ndarray]:
        """The global trending items: the top of every shard's top (same on any sharding)."""
        cols = ("item", "root", "topic", "hot")
        if shared is None or not self.config.recommender.enabled or self.config.pool == 0:
            return {c: np.empty(0, np.float64 if c == "hot" else np.int64) for c in cols}
        order = np.lexsort((shared["item"], -shared["hot"]))[: self.config.pool]
        return {c: shared[c][order] for c in cols}

    # -- recommendation --------------------------------------------------------

    def _recommend(self, step: int, active: np.ndarray, pool: dict) -> dict[str, np.ndarray]:
        cfg, rec, view = self.config, self.config.recommender, self.view
        a, k, m = active.shape[0], cfg.feed_size, cfg.timeline
        agents = view.agents[active]
        tl_item, tl_root, tl_topic = (self.tl_item[active], self.tl_root[active],
                                      self.tl_topic[active])
        tl_ok = tl_item >= 0
        interest = self.interest[active]
        tl_sim = _dot(unpack_topics(tl_topic), interest[:, None, :])
        tl_age = step - self._item_step(tl_item)
        h = pool["item"].shape[0] if a else 0
        if rec.enabled:
            score = rec.follow + rec.interest * tl_sim - rec.recency * tl_age
        else:
            score = -tl_age.astype(np.float64)
        seen = self.seen[active]
        # Not what the agent was shown lately (the same item can reach it twice: from
        # the timeline and from the trending pool).
        tl_ok &= ~(tl_item[:, :, None] == seen[:, None, :]).any(axis=2)
        score = np.where(tl_ok, score, -np.inf)
        p_sim = None
        if h:
            p_sim = _dot(interest[:, None, :], unpack_topics(pool["topic"])[None, :, :])
            p_score = (rec.hot * np.log1p(pool["hot"]) + rec.interest * p_sim
                       - rec.recency * (step - self._item_step(pool["item"])))
            # Not one's own items, nor items seen lately or waiting in the timeline.
            p_score[self._author(pool["item"])[None, :] == agents[:, None]] = -np.inf
            self._exclude(p_score, pool["item"], seen)
            self._exclude(p_score, pool["item"], tl_item)
            score = np.concatenate([score, p_score], axis=1)
        pick, shown = _top_k(score, k)
        rr, cc = np.nonzero(shown)  # row-major: by agent, then rank
        col = pick[rr, cc]
        s_tl = col < m
        tc, pc = np.minimum(col, m - 1), np.maximum(col - m, 0)
        s_item = np.where(s_tl, tl_item[rr, tc], pool["item"][pc] if h else -1)
        s_root = np.where(s_tl, tl_root[rr, tc], pool["root"][pc] if h else -1)
        s_topic = np.where(s_tl, tl_topic[rr, tc], pool["topic"][pc] if h else 0)
        s_sim = np.where(s_tl, tl_sim[rr, tc], p_sim[rr, pc] if h else 0.0)
        s_hot = np.where(s_tl, 0.0, pool["hot"][pc] if h else 0.0)
        # Social proof: how many timeline items (from followed agents) share the root.
        proof = ((tl_root[rr] == s_root[:, None]) & tl_ok[rr]).sum(axis=1).astype(np.int32)
        rows = active[rr]
        # Shown timeline items leave the timeline; every shown item is remembered.
        self.tl_item[rows[s_tl], col[s_tl]] = -1
        self.tl_root[rows[s_tl], col[s_tl]] = -1
        self._remember(rows, s_item)
        authors = self._author(s_item)
        # Timeline items may outlive an unfollow: ask the follow state, not the source.
        followed = self.follows(rows, authors)
        # Shown, but not to be shared or liked again (the rules skip them; see apply).
        shared = _member(self.shared_roots, self._done_key(rows, s_root, roots=True))
        liked = _member(self.liked, self._done_key(rows, s_item))
        own_topic = interest.argmax(axis=1).astype(np.int64)
        n_imp = rows.shape[0]
        self._turn = {"rows": rows, "slot": cc.astype(np.int64), "item": s_item, "root": s_root,
                      "topic": s_topic, "author": authors, "followed": followed,
                      "shared": shared, "liked": liked,
                      "sim": s_sim.astype(np.float32), "from_timeline": s_tl, "active": active}
        return {
            "agent": np.concatenate([view.agents[rows], agents]),
            "slot": np.concatenate([cc.astype(np.int64), np.full(a, k, np.int64)]),
            "own": np.concatenate([np.zeros(n_imp, np.int8), np.ones(a, np.int8)]),
            "sim": np.concatenate([s_sim, np.ones(a)]).astype(np.float32),
            "proof": np.concatenate([proof, np.zeros(a, np.int32)]),
            "hot": np.concatenate([s_hot, np.zeros(a)]).astype(np.float32),
            "followed": np.concatenate([followed.astype(np.int8), np.zeros(a, np.int8)]),
            "reposted": np.concatenate([shared.astype(np.int8), np.zeros(a, np.int8)]),
            "liked": np.concatenate([liked.astype(np.int8), np.zeros(a, np.int8)]),
            "topic": np.concatenate([unpack_topics(s_topic).argmax(axis=1), own_topic]),
        }

    @staticmethod
    def _exclude(score: np.ndarray, pool_item: np.ndarray, items: np.ndarray) -> None:
        """Set ``score[r, j]`` to -inf where pool item j is among ``items[r]`` (a search
        per listed item, not a comparison of every pair)."""
        order = np.argsort(pool_item)
        sp = pool_item[order]
        idx = np.minimum(np.searchsorted(sp, items), sp.shape[0] - 1)
        hit = (sp[idx] == items) & (items >= 0)
        r, c = np.nonzero(hit)
        score[r, order[idx[r, c]]] = -np.inf

    def _remember(self, rows: np.ndarray, items: np.ndarray) -> None:
        """Record shown items in each agent's ring of recently seen ones."""
        if rows.shape[0] == 0:
            return
        # Rows come grouped (row-major pick): the j-th item of a row goes j slots on.
        start = np.ones(rows.shape[0], dtype=bool)
        start[1:] = rows[1:] != rows[:-1]
        group = np.cumsum(start) - 1
        j = np.arange(rows.shape[0]) - np.flatnonzero(start)[group]
        size = self.seen.shape[1]
        slot = (self.seen_head[rows].astype(np.int64) + j) % size
        self.seen[rows, slot] = items
        ends = np.flatnonzero(np.append(start[1:], True))
        self.seen_head[rows[ends]] = ((self.seen_head[rows[ends]].astype(np.int64) + j[ends] + 1)
                                      % size).astype(np.int8)

    # -- apply -----------------------------------------------------------------

    def apply(self, step: int, batch: dict[str, np.ndarray], actions: dict) -> StepResult:
        cfg, view, n, k1 = self.config, self.view, self.n, self.k1
        t = self._turn
        self._turn = None
        act = as_numpy(actions["act"]).astype(np.int64)
        text = actions.get("text")
        text = None if text is None else np.asarray(text, dtype=object)
        m, active = t["rows"].shape[0], t["active"]
        imp, own = act[:m], act[m:]
        rows, item, root, author = t["rows"], t["item"], t["root"], t["author"]
        followed = t["followed"]
        me = view.agents[rows]
        # What an LLM-style agent may answer but cannot do is ignored and counted.
        # So is sharing a cascade twice, or liking an item twice (the rules never do).
        invalid = ((imp == POST) | ((imp == FOLLOW) & followed) | ((imp == UNFOLLOW) & ~followed)
                   | ((imp == REPOST) & t["shared"]) | ((imp == LIKE) & t["liked"]))
        n_invalid = int(invalid.sum()) + int(((own != IGNORE) & (own != POST)).sum())
        imp = np.where(invalid, IGNORE, imp)
        # Two items of one author in a feed: one follow (or unfollow) of them, not two;
        # two items of one cascade: one repost (of the better ranked); likes likewise.
        for acts, key in (((FOLLOW, UNFOLLOW), rows * n + author),
                          ((REPOST,), self._done_key(rows, root, roots=True)),
                          ((LIKE,), self._done_key(rows, item))):
            ff = np.flatnonzero(np.isin(imp, acts))
            if ff.shape[0] > 1:
                o = np.argsort(key[ff], kind="stable")
                sk = key[ff][o]
                imp[ff[o[1:][sk[1:] == sk[:-1]]]] = IGNORE

        # New items: original posts (own rows) and reposts (impressions).
        poster = active[own == POST]
        post_item = (step * n + view.agents[poster]) * k1 + cfg.feed_size
        post_topic = self._post_topics(poster, post_item)
        rp = np.flatnonzero(imp == REPOST)
        rp_item = (step * n + me[rp]) * k1 + t["slot"][rp]
        new_src = np.concatenate([view.agents[poster], me[rp]])
        new_item = np.concatenate([post_item, rp_item])
        new_root = np.concatenate([post_item, root[rp]])
        new_topic = np.concatenate([post_topic, t["topic"][rp]])
        self._add_own(new_item, new_root, new_topic)
        broadcasts = {"src": new_src, "item": new_item, "root": new_root, "topic": new_topic}

        # Point to point: notices to authors, follows, and items to followers beyond the graph.
        lk, cm = np.flatnonzero(imp == LIKE), np.flatnonzero(imp == COMMENT)
        # An author has shared its own cascade: it may not repost it either.
        self.shared_roots = _insert_keys(self.shared_roots, np.concatenate([
            self._done_key(poster, post_item, roots=True),
            self._done_key(rows[rp], root[rp], roots=True)]))
        self.liked = _insert_keys(self.liked, self._done_key(rows[lk], item[lk]))
        notice = np.concatenate([lk, rp, cm])
        notice_kind = np.concatenate([np.full(lk.shape[0], _LIKE), np.full(rp.shape[0], _REPOST),
                                      np.full(cm.shape[0], _COMMENT)]).astype(np.int8)
        fol, unf = self._follow(rows, author, imp)
        fan_dst, fan_which = self._fan_targets(view.local_index(new_src))
        messages = {
            "dst": np.concatenate([author[notice], fol[1], unf[1], fan_dst]),
            "src": np.concatenate([me[notice], fol[0], unf[0], new_src[fan_which]]),
            "kind": np.concatenate([notice_kind, np.full(fol[1].shape[0], _FOLLOW, np.int8),
                                    np.full(unf[1].shape[0], _UNFOLLOW, np.int8),
                                    np.full(fan_dst.shape[0], _ITEM, np.int8)]),
            "item": np.concatenate([item[notice], np.full(fol[1].shape[0] + unf[1].shape[0], -1),
                                    new_item[fan_which]]).astype(np.int64),
            "root": np.concatenate([root[notice], np.full(fol[1].shape[0] + unf[1].shape[0], -1),
                                    new_root[fan_which]]).astype(np.int64),
            "topic": np.concatenate([t["topic"][notice],
                                     np.zeros(fol[1].shape[0] + unf[1].shape[0], np.int64),
                                     new_topic[fan_which]]),
        }
        events = self._events(step, t, imp, own, poster, post_item, rp, rp_item, lk, cm,
                              text, m)
        shared = self._trending(step)
        metrics = {
            "active_agents": int(active.shape[0]), "posts": int(poster.shape[0]),
            "reposts": int(rp.shape[0]), "likes": int(lk.shape[0]), "comments": int(cm.shape[0]),
            "follows": int((imp == FOLLOW).sum()), "unfollows": int((imp == UNFOLLOW).sum()),
            "views": int(m), "invalid_actions": n_invalid,
            "live_items": int(self.own_item.shape[0]),
            # Timing (summed over shards), for the benchmark's stage shares.
            "recommend_seconds": float(self._recommend_seconds),
        }
        return StepResult(events=events, messages=messages, broadcasts=broadcasts,
                          active=int(active.shape[0]), metrics=metrics, shared=shared)

    def _post_topics(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Packed topics of original posts: the author's interest plus keyed noise."""
        if rows.shape[0] == 0:
            return np.empty(0, np.int64)
        rng = self.view.rng
        noise = np.stack([rng.uniform("feed_topic", items, draw=d) for d in range(TOPIC_DIMS)],
                         axis=1)
        x = self.interest[rows] + self.config.topic_noise * (2.0 * noise - 1.0)
        return pack_topics(_normalized(x))

    def _add_own(self, item: np.ndarray, root: np.ndarray, topic: np.ndarray) -> None:
        """Append new items to this shard's own table (``_trending`` drops old ones)."""
        order = np.argsort(item)  # all newer than the table's: it stays sorted
        self.own_item = np.concatenate([self.own_item, item[order]])
        self.own_root = np.concatenate([self.own_root, root[order]])
        self.own_topic = np.concatenate([self.own_topic, topic[order]])
        zeros = np.zeros(item.shape[0], np.int32)
        self.own_likes = np.concatenate([self.own_likes, zeros])
        self.own_reposts = np.concatenate([self.own_reposts, zeros])
        self.own_comments = np.concatenate([self.own_comments, zeros])

    def _trending(self, step: int) -> dict[str, np.ndarray] | None:
        """Drop items past the window; this shard's top items by hot score, for every shard."""
        cfg = self.config
        if self.own_item.shape[0]:
            keep = self._item_step(self.own_item) > step - cfg.window
            if not keep.all():
                for name in ("own_item", "own_root", "own_topic", "own_likes", "own_reposts",
                             "own_comments"):
                    setattr(self, name, getattr(self, name)[keep])
        if not cfg.recommender.enabled or cfg.pool == 0 or self.own_item.shape[0] == 0:
            return None
        age = (step - self._item_step(self.own_item)).astype(np.float64)
        hot = ((1.0 + self.own_likes + 2.0 * self.own_reposts + self.own_comments)
               * np.exp2(-age / cfg.half_life))
        top = np.lexsort((self.own_item, -hot))[: cfg.pool]
        return {"item": self.own_item[top], "root": self.own_root[top],
                "topic": self.own_topic[top], "hot": hot[top]}

    def _follow(self, rows, author, imp):
        """Apply follows and unfollows; returns the (src, dst) notices each sends."""
        n, me = self.n, self.view.agents
        empty = (np.empty(0, np.int64), np.empty(0, np.int64))
        fol, unf = empty, empty
        f = np.flatnonzero(imp == FOLLOW)
        u = np.flatnonzero(imp == UNFOLLOW)
        if f.shape[0]:
            key = _merge(np.empty(0, np.int64), rows[f] * n + author[f], np.empty(0, np.int64))
            muted = _member(self.follow_mute, key)
            # Re-following an unfollowed graph edge unmutes it; anything else is a new edge.
            self.follow_mute = _merge(self.follow_mute, np.empty(0, np.int64), key[muted])
            new = key[~muted]
            self.follow_add = _merge(self.follow_add, new, np.empty(0, np.int64))
            fol = (me[new // n], new % n)
        if u.shape[0]:
            key = _merge(np.empty(0, np.int64), rows[u] * n + author[u], np.empty(0, np.int64))
            added = _member(self.follow_add, key)
            self.follow_add = _merge(self.follow_add, np.empty(0, np.int64), key[added])
            self.follow_mute = _merge(self.follow_mute, key[~added], np.empty(0, np.int64))
            gone = key[added]
            unf = (me[gone // n], gone % n)
        return fol, unf

    def _fan_targets(self, src_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Followers beyond the graph of each new item's author: (receiver ids, item index)."""
        if self.fan_add.shape[0] == 0 or src_rows.shape[0] == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        lo = np.searchsorted(self.fan_add, src_rows * self.n)
        hi = np.searchsorted(self.fan_add, (src_rows + 1) * self.n)
        counts = hi - lo
        pos = ragged_arange(lo, counts)
        return self.fan_add[pos] % self.n, np.repeat(np.arange(src_rows.shape[0]), counts)

    def _events(self, step, t, imp, own, poster, post_item, rp, rp_item, lk, cm, text, m):
        view = self.view
        rows, item, root, author = t["rows"], t["item"], t["root"], t["author"]
        me = view.agents[rows]
        fo, uf = np.flatnonzero(imp == FOLLOW), np.flatnonzero(imp == UNFOLLOW)
        vw = np.arange(m) if self.config.log_views else np.empty(0, np.int64)
        sim = t["sim"]
        nan = np.empty(0, np.float32)
        parts = [  # (event, agent, item, root, parent, target, value, batch rows for text)
            ("post", view.agents[poster], post_item, post_item, None, None, nan,
             m + np.flatnonzero(own == POST)),
            ("repost", me[rp], rp_item, root[rp], item[rp], author[rp], sim[rp], rp),
            ("like", me[lk], item[lk], root[lk], None, author[lk], sim[lk], None),
            ("comment", me[cm], item[cm], root[cm], None, author[cm], sim[cm], cm),
            ("follow", me[fo], None, None, None, author[fo], sim[fo], None),
            ("unfollow", me[uf], None, None, None, author[uf], sim[uf], None),
            ("view", me[vw], item[vw], root[vw], None, author[vw], sim[vw], None),
        ]
        cols = {c: [] for c in ("event", "agent", "item", "root", "parent", "target", "value")}
        texts = []
        for name, agent, it, rt, par, tgt, val, text_rows in parts:
            c = agent.shape[0]
            none = np.full(c, -1, np.int64)
            cols["event"].append(np.full(c, self.event_code(name), np.int8))
            cols["agent"].append(agent)
            for col, v in (("item", it), ("root", rt), ("parent", par), ("target", tgt)):
                cols[col].append(none if v is None else v)
            cols["value"].append(val if val.shape[0] == c else np.full(c, np.nan, np.float32))
            if text is not None:
                texts.append(text[text_rows] if text_rows is not None
                             else np.full(c, None, object))
        out = {name: np.concatenate(v) for name, v in cols.items()}
        events = make_events(out.pop("event"), out.pop("agent"), **out)
        source = np.full(events["agent"].shape[0], -1, np.int8)  # null but for views
        source[source.shape[0] - vw.shape[0]:] = np.where(t["from_timeline"][vw], 0, 1)
        events["source"] = source
        if text is not None:
            events["text"] = np.concatenate(texts)
        return events
