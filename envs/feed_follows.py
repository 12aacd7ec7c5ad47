"""The feed's follow state: who follows whom now, as sorted key sets beside the graph.

Follow and unfollow change the follow graph during a run without touching the CSR
(see ``swarm.envs.feed``): the follower's shard keeps ``follow_add`` (follows beyond
the graph) and ``follow_mute`` (graph edges unfollowed), the author's shard
``fan_add`` (followers beyond the graph). Each is a sorted int64 key array
(``row * n + other``), merged in the step it changes and saved in checkpoints.
"""

from __future__ import annotations

import numpy as np

from swarm.graph import ragged_arange

__all__ = ["FollowState", "insert_keys", "member", "merge"]

def member(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Which ``keys`` are in the sorted array ``sorted_keys``."""
    if sorted_keys.shape[0] == 0:
        return np.zeros(keys.shape, dtype=bool)
    idx = np.searchsorted(sorted_keys, keys)
    return sorted_keys[np.minimum(idx, sorted_keys.shape[0] - 1)] == keys


def merge(keys: np.ndarray, add: np.ndarray, remove: np.ndarray) -> np.ndarray:
    """The sorted key set ``keys`` with ``add`` added and ``remove`` removed."""
    if add.shape[0]:
        keys = np.sort(np.concatenate([keys, add]))
        keep = np.ones(keys.shape[0], dtype=bool)
        keep[1:] = keys[1:] != keys[:-1]
        keys = keys[keep]
    if remove.shape[0]:
        keys = keys[~member(np.sort(remove), keys)]
    return keys


def insert_keys(keys: np.ndarray, add: np.ndarray) -> np.ndarray:
    """The sorted key set ``keys`` with ``add`` added: an insert at sorted positions,
    linear in the set, for sets that only grow (a sort of the whole set per step is not)."""
    add = np.unique(add)
    add = add[~member(keys, add)]
    return np.insert(keys, np.searchsorted(keys, add), add) if add.shape[0] else keys


class FollowState:
    """The feed env's follow and unfollow bookkeeping (a mixin of ``Feed``)."""

    def follows(self, rows: np.ndarray, authors: np.ndarray) -> np.ndarray:
        """Whether the agents in local ``rows`` follow ``authors`` (global ids) now."""
        key = rows * self.n + authors
        static = member(self.in_keys, key) & ~member(self.follow_mute, key)
        return static | member(self.follow_add, key)

    def _follow(self, rows, author, follows: np.ndarray, unfollows: np.ndarray):
        """Apply the follows and unfollows of the impressions ``follows`` / ``unfollows``
        (masks); returns the (src, dst) notices each sends."""
        n, me = self.n, self.view.agents
        empty = (np.empty(0, np.int64), np.empty(0, np.int64))
        fol, unf = empty, empty
        f, u = np.flatnonzero(follows), np.flatnonzero(unfollows)
        if f.shape[0]:
            key = merge(np.empty(0, np.int64), rows[f] * n + author[f], np.empty(0, np.int64))
            muted = member(self.follow_mute, key)
            # Re-following an unfollowed graph edge unmutes it; anything else is a new edge.
            self.follow_mute = merge(self.follow_mute, np.empty(0, np.int64), key[muted])
            new = key[~muted]
            self.follow_add = merge(self.follow_add, new, np.empty(0, np.int64))
            fol = (me[new // n], new % n)
        if u.shape[0]:
            key = merge(np.empty(0, np.int64), rows[u] * n + author[u], np.empty(0, np.int64))
            added = member(self.follow_add, key)
            self.follow_add = merge(self.follow_add, np.empty(0, np.int64), key[added])
            self.follow_mute = merge(self.follow_mute, key[~added], np.empty(0, np.int64))
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
