"""Which shard owns which agent: contiguous id ranges, a hash of the id, or an explicit array.

The partition decides cross-shard traffic (its edge cut) but never the
results: keyed randomness makes every partition give the same events.
"""

from __future__ import annotations

import numpy as np

from swarm.errors import ConfigError
from swarm.graph import CSRGraph
from swarm.rng import mix64

__all__ = ["Partition"]


class Partition:
    """Agent-to-shard assignment for ``n`` agents over ``num_shards`` shards.

    Parameters
    ----------
    kind : {"contiguous", "hash"} or numpy array
        A strategy name, or an explicit int array of length ``n`` giving each
        agent's shard.
    """

    def __init__(self, kind, n: int, num_shards: int):
        if num_shards < 1:
            raise ConfigError(f"shards must be >= 1; got {num_shards}")
        self.n, self.num_shards = int(n), int(num_shards)
        self._assignment = None
        if isinstance(kind, np.ndarray):
            a = kind.astype(np.int64)
            if a.shape != (n,) or (n and (a.min() < 0 or a.max() >= num_shards)):
                raise ConfigError(
                    f"an explicit partition must be an int array of length n={n} with values in "
                    f"[0, {num_shards}); got shape {a.shape}"
                )
            self.kind, self._assignment = "explicit", a
        elif kind in ("contiguous", "hash"):
            self.kind = kind
        else:
            raise ConfigError(f"partition must be 'contiguous' or 'hash'; got {kind!r}")
        self.bounds = (np.arange(num_shards + 1, dtype=np.int64) * n) // num_shards

    def shard_of(self, ids: np.ndarray) -> np.ndarray:
        """The shard of each global agent id."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.kind == "contiguous":
            return np.searchsorted(self.bounds, ids, side="right") - 1
        if self.kind == "hash":
            h = ids.astype(np.uint64)
            return (mix64(h) % np.uint64(self.num_shards)).astype(np.int64)
        return self._assignment[ids]

    def agents_of(self, shard: int) -> np.ndarray:
        """Sorted global ids of the agents on ``shard``."""
        if self.kind == "contiguous":
            return np.arange(self.bounds[shard], self.bounds[shard + 1], dtype=np.int64)
        return np.flatnonzero(self.shard_of(np.arange(self.n)) == shard).astype(np.int64)

    def contiguous_start(self, shard: int) -> int | None:
        return int(self.bounds[shard]) if self.kind == "contiguous" else None

    def stats(self, graph: CSRGraph) -> dict:
        """Agents and out-edges per shard, and the fraction of edges that cross shards."""
        owner = self.shard_of(np.arange(graph.n))
        deg = graph.out_degree()
        cut = 0
        if self.num_shards > 1 and graph.num_edges:
            cut = int(np.count_nonzero(np.repeat(owner, deg) != owner[graph.indices]))
        return {
            "kind": self.kind,
            "shards": self.num_shards,
            "agents_per_shard": np.bincount(owner, minlength=self.num_shards).tolist(),
            "edges_per_shard": np.bincount(owner, weights=deg, minlength=self.num_shards)
            .astype(np.int64)
            .tolist(),
            "cut_edges": cut,
            "edge_cut_fraction": cut / graph.num_edges if graph.num_edges else 0.0,
        }
