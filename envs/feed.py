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
    Column,
    Env,
    EnvConfig,
    Inbox,
    ShardView,
    StepResult,
    make_events,
    register_env,
)
from swarm.envs.feed_follows import FollowState, insert_keys, member, merge
from swarm.envs.feed_recommender import (
    TOPIC_DIMS,
    RecommenderConfig,
    Recommending,
    normalized,
    pack_topics,
    unpack_topics,
)

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

# Kinds of point-to-point messages.
_FOLLOW, _UNFOLLOW, _ITEM, _LIKE, _REPOST, _COMMENT = range(6)


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


@register_env
class Feed(Recommending, FollowState, Env):
    """Posts, reposts, likes, comments, follows and unfollows with a recommender."""

    name = "feed"
    Config = FeedConfig
    event_types = ("post", "repost", "like", "comment", "follow", "unfollow", "view")
    event_columns = {"text": pa.string(), "source": pa.int8()}
    metric_names = ("active_agents", "posts", "reposts", "likes", "comments", "follows",
                    "unfollows", "views", "invalid_actions", "live_items")
    timing_metrics = ("recommend_seconds",)
    observation = ("agent", "slot", "own", "sim", "proof", "followed", "hot", "topic",
                   "reposted", "liked")
    actions = ("act", "text")
    summary_metrics = ("posts", "reposts", "likes", "follows", "unfollows")
    message_fields = {"src": np.int64, "kind": np.int8, "item": np.int64, "root": np.int64,
                      "topic": np.int64}
    broadcast_fields = {"item": np.int64, "root": np.int64, "topic": np.int64}
    # Per agent: its timeline (a ring of the last `timeline` arrivals) and the ring of
    # the items it has seen.
    state = {"tl_item": Column(np.int64, -1, ("timeline",)),
             "tl_root": Column(np.int64, -1, ("timeline",)),
             "tl_topic": Column(np.int64, 0, ("timeline",)),
             "tl_head": Column(np.int8),  # where the next arrival goes
             "seen": Column(np.int64, -1, ("seen",)),
             "seen_head": Column(np.int8)}
    # Tables of items and sorted key sets, not rows of agents.
    state_attrs = ("own_item", "own_root", "own_topic", "own_likes", "own_reposts",
                   "own_comments", "follow_add", "follow_mute", "fan_add", "shared_roots",
                   "liked")
    # The item tables and key sets, per agent on average (the interest vector besides).
    state_bytes_per_agent = 8 * 8 + TOPIC_DIMS * 4
    smoke_config = {
        "graph": {"kind": "barabasi_albert", "n": 400, "m": 3},
        "env": {"kind": "feed", "activity": 0.5, "pool": 16,
                "rules": {"post": 0.2, "repost": -2.0, "follow": -2.5, "unfollow": -2.5}},
        "steps": 12,
    }

    def __init__(self, config: FeedConfig, view: ShardView, setup: Mapping[str, np.ndarray]):
        super().__init__(config, view, setup)
        self.n = int(setup["n"])
        self.k1 = config.feed_size + 1  # item slots per agent and step
        self.interest = self.interests(view.agents)
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

    def default_policy(self):
        return "feed_rules", self.config.rules.model_dump()

    def interests(self, agents: np.ndarray) -> np.ndarray:
        """Unit interest vectors of ``agents`` (keyed: the same on every shard)."""
        rng = self.view.rng
        u = np.stack([rng.uniform("feed_interest", agents, draw=d) for d in range(TOPIC_DIMS)],
                     axis=1)
        return normalized(2.0 * u - 1.0).astype(np.float32)

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
                self.fan_add = merge(self.fan_add, rows[f] * n + src[f], rows[u] * n + src[u])
            it = np.flatnonzero(kind == _ITEM)
            # From follows beyond the graph: only while the receiver still follows.
            it = it[member(self.follow_add, rows[it] * n + src[it])]
            self._insert(rows[it], item[it], d["root"][it], d["topic"][it])
        b = inbox.broadcast
        if b is not None and len(b):
            got = b.take()
            rows, src = got["row"].astype(np.int64), got["src"]
            ok = ~member(self.follow_mute, rows * n + src)
            self._insert(rows[ok], got["item"][ok], got["root"][ok], got["topic"][ok])
        pool = self._pool(inbox.shared)
        active = np.flatnonzero(view.rng.bernoulli("feed_active", view.agents, p=cfg.activity,
                                                   step=step))
        active = active[view.acting(active)]  # crash-stopped agents no longer open their feed
        t0 = time.perf_counter()
        batch = self._recommend(step, active, pool)
        self._recommend_seconds = time.perf_counter() - t0
        return batch

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
        self.shared_roots = insert_keys(self.shared_roots, np.concatenate([
            self._done_key(poster, post_item, roots=True),
            self._done_key(rows[rp], root[rp], roots=True)]))
        self.liked = insert_keys(self.liked, self._done_key(rows[lk], item[lk]))
        notice = np.concatenate([lk, rp, cm])
        notice_kind = np.concatenate([np.full(lk.shape[0], _LIKE), np.full(rp.shape[0], _REPOST),
                                      np.full(cm.shape[0], _COMMENT)]).astype(np.int8)
        fol, unf = self._follow(rows, author, imp == FOLLOW, imp == UNFOLLOW)
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
        return pack_topics(normalized(x))

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
