"""The feed's recommender: what an active agent is shown, from its timeline and the pool.

The recommendation stage of the feed's observe (see ``swarm.envs.feed``): candidates
from the agent's timeline and the population-wide trending pool are scored by a
linear ranking (followed bonus, interest similarity, log hot score, age), and the
``feed_size`` best not seen lately are shown. Each shard offers its local top items
on the engine's shared channel (``_trending``) and keeps the global top of the union
(``_pool``), the same on any shard count. Topics travel packed in one int64.
"""

from __future__ import annotations

import numpy as np

from swarm.config_base import StrictModel
from swarm.envs.feed_follows import member

__all__ = ["TOPIC_DIMS", "RecommenderConfig", "Recommending", "dot", "normalized",
           "pack_topics", "top_k", "unpack_topics"]

#: Dimensions of interest and topic vectors (packed as int8 into one int64).
TOPIC_DIMS = 8


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


def dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Dot products over the last axis, summed in a fixed order.

    BLAS (matmul, einsum) picks kernels by matrix size, and a shard's batch size
    depends on the shard count: its last bits would too.
    """
    out = x[..., 0] * y[..., 0]
    for d in range(1, x.shape[-1]):
        out = out + x[..., d] * y[..., d]
    return out


def top_k(score: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the columns of the ``k`` highest scores, best first, ties to the lower
    column; and which of them are real (finite). ``k`` passes of argmax (which returns
    the first maximum): for a small ``k``, several times faster than a full sort.

    >>> pick, ok = top_k(np.array([[1.0, 3.0, 3.0, -np.inf]]), 3)
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


def normalized(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.sqrt(dot(x, x))[..., None], 1e-12)


class Recommending:
    """The feed env's recommendation stage (a mixin of ``Feed``: it reads the agents'
    timelines, seen rings and interests, and the follow state)."""

    def _pool(self, shared: dict | None) -> dict[str, np.ndarray]:
        """The global trending items: the top of every shard's top (same on any sharding)."""
        cols = ("item", "root", "topic", "hot")
        if shared is None or not self.config.recommender.enabled or self.config.pool == 0:
            return {c: np.empty(0, np.float64 if c == "hot" else np.int64) for c in cols}
        order = np.lexsort((shared["item"], -shared["hot"]))[: self.config.pool]
        return {c: shared[c][order] for c in cols}

    def _recommend(self, step: int, active: np.ndarray, pool: dict) -> dict[str, np.ndarray]:
        cfg, rec, view = self.config, self.config.recommender, self.view
        a, k, m = active.shape[0], cfg.feed_size, cfg.timeline
        agents = view.agents[active]
        tl_item, tl_root, tl_topic = (self.tl_item[active], self.tl_root[active],
                                      self.tl_topic[active])
        tl_ok = tl_item >= 0
        interest = self.interest[active]
        tl_sim = dot(unpack_topics(tl_topic), interest[:, None, :])
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
            p_sim = dot(interest[:, None, :], unpack_topics(pool["topic"])[None, :, :])
            p_score = (rec.hot * np.log1p(pool["hot"]) + rec.interest * p_sim
                       - rec.recency * (step - self._item_step(pool["item"])))
            # Not one's own items, nor items seen lately or waiting in the timeline.
            p_score[self._author(pool["item"])[None, :] == agents[:, None]] = -np.inf
            self._exclude(p_score, pool["item"], seen)
            self._exclude(p_score, pool["item"], tl_item)
            score = np.concatenate([score, p_score], axis=1)
        pick, shown = top_k(score, k)
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
        shared = member(self.shared_roots, self._done_key(rows, s_root, roots=True))
        liked = member(self.liked, self._done_key(rows, s_item))
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
