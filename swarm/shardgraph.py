"""A shard's slice of the graph: drawn or read by the shard itself, or handed in.

A shard builds its slice in three calls, each answered with what it sends
the other shards (object refs, shard to shard; the driver holds only refs):

1. ``draw``: generate its id range (``swarm.graphgen``) or read its part of
   an edge list, and split the drawn edges by the shard owning their source;
2. ``assemble``: merge its own and the received edges into CSR rows (sorted,
   duplicates and self-loops merged away) and, for a directed graph, send
   every edge to the shard owning its target;
3. ``finish``: in-degrees and the broadcast routing tables (``Fanout``),
   from its own rows when the graph is undirected (an in-edge is an
   out-edge reversed), else from the edges received in step 2.

A graph the driver holds (networkx from Python, METIS partitions) is handed
in as each shard's rows and goes through the same ``finish``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from swarm.graphgen import edge_key, generate, generation_ranges
from swarm.partition import Partition

__all__ = ["Fanout", "GraphSource", "SliceBuilder", "index_dtype", "split_by_shard"]

Edges = tuple[np.ndarray, np.ndarray]


def index_dtype(n: int):
    """int32 CSR indices where every agent id fits, else int64."""
    return np.int32 if n < 2**31 else np.int64


def split_by_shard(cols: dict[str, np.ndarray], dest: np.ndarray, k: int
                   ) -> list[dict[str, np.ndarray] | None]:
    """Equal-length ``cols`` cut into one part per destination shard (``dest`` per row),
    rows kept in order within a part; None where nothing goes."""
    order = np.argsort(dest, kind="stable")
    bounds = np.searchsorted(dest[order], np.arange(k + 1))
    parts: list[dict[str, np.ndarray] | None] = [None] * k
    for j in range(k):
        if bounds[j + 1] > bounds[j]:
            sel = order[bounds[j]:bounds[j + 1]]
            parts[j] = {name: col[sel] for name, col in cols.items()}
    return parts


@dataclass
class Fanout:
    """Broadcast routing of one shard, built by the shard from its own rows.

    Sending: ``dest_shard[dest_indptr[r]:dest_indptr[r + 1]]`` are the shards
    holding at least one out-neighbour of local row ``r``, and ``dest_slot``
    the sender's rank among the senders of this shard into each of them
    (ordered by agent id, so both sides compute it alone). Receiving: the
    edges into this shard grouped by sender shard, then by sender:
    ``recv_src`` (global ids), ``recv_base[k]`` where shard k's senders
    start, ``recv_indptr``, and per edge the receiver's local row and the edge
    key. A broadcast travels as (slot, payload): the receiver finds the
    sender's edges at ``recv_base[k] + slot``, never by searching.
    """

    dest_indptr: np.ndarray
    dest_shard: np.ndarray
    dest_slot: np.ndarray
    recv_src: np.ndarray
    recv_base: np.ndarray
    recv_indptr: np.ndarray
    recv_row: np.ndarray
    recv_edge: np.ndarray

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in vars(self).values())


@dataclass
class GraphSource:
    """Where a shard's slice comes from: a graph config it generates (``config``, with
    the graph ``seed``), or rows handed in (``indptr``/``indices`` of its agents)."""

    n: int
    directed: bool = False
    config: Any = None
    seed: int = 0
    indptr: np.ndarray | None = None
    indices: np.ndarray | None = None


class SliceBuilder:
    """Builds one shard's CSR rows, in-degrees and fan-out tables (see the module doc)."""

    def __init__(self, source: GraphSource, shard: int, partition: Partition,
                 agents: np.ndarray):
        self.source, self.shard, self.partition = source, shard, partition
        self.k = partition.num_shards
        self.agents = agents
        self.n = source.n
        self.lo = partition.contiguous_start(shard)
        self._pieces = None
        self._own: list[Edges] = []
        self._own_in: Edges | None = None
        self.indptr = self.indices = None
        self.stats: dict[str, Any] = {"draw_seconds": 0.0, "assemble_seconds": 0.0,
                                      "finish_seconds": 0.0}

    # -- 1: draw --------------------------------------------------------------------

    def draw(self) -> list[Edges | None]:
        """Generate or read this shard's draws; the edges for each other shard."""
        t0 = time.perf_counter()
        out: list[Edges | None] = [None] * self.k
        src = self.source
        if src.config is None:  # rows handed in by the driver
            self.stats["draw_seconds"] = time.perf_counter() - t0
            return out
        bounds = generation_ranges(self.n, self.k)
        lo, hi = int(bounds[self.shard]), int(bounds[self.shard + 1])
        check = None
        if src.config.kind == "edgelist":
            from swarm.edgelist import check_ids

            check = check_ids(self.n)
        drawn = generate(src.config, src.seed, lo, hi, self.shard, self.k, check)
        loose = list(drawn.loose)
        mine_exactly = self.lo is not None and self.agents.shape[0] == hi - lo and (
            self.agents.shape[0] == 0 or int(self.agents[0]) == lo)
        if mine_exactly:
            self._pieces = drawn.pieces  # complete rows of this shard: kept as they come
        else:
            loose.extend(drawn.pieces)  # rows of another partition: routed like the rest
        loops = 0
        for s, d in loose:
            keep = s != d
            loops += int(keep.shape[0] - np.count_nonzero(keep))
            s, d = s[keep], d[keep]
            for j, cols in enumerate(split_by_shard({"src": s, "dst": d},
                                                    self.partition.shard_of(s), self.k)):
                if cols is None:
                    continue
                part = (cols["src"], cols["dst"])
                if j == self.shard:
                    self._own.append(part)
                else:
                    prev = out[j]
                    out[j] = part if prev is None else (np.concatenate([prev[0], part[0]]),
                                                        np.concatenate([prev[1], part[1]]))
        self.stats["self_loops"] = loops
        self.stats["draw_seconds"] = time.perf_counter() - t0
        return out

    # -- 2: assemble ----------------------------------------------------------------

    def assemble(self, *received: Edges | None) -> list[Edges | None]:
        """Merge own and received edges into CSR rows; for a directed graph, the
        (src, dst) edges for each shard owning their targets."""
        t0 = time.perf_counter()
        n_local = self.agents.shape[0]
        idx_dtype = index_dtype(self.n)
        src = self.source
        if src.config is None:
            self.indptr = np.asarray(src.indptr, dtype=np.int64)
            self.indices = np.asarray(src.indices).astype(idx_dtype, copy=False)
        else:
            counts = np.zeros(n_local, dtype=np.int64)
            parts = []
            if self._pieces is not None:
                # Complete rows, sorted, block after block: their destinations go straight
                # into one growing buffer (no list of pieces joined at the end) and each
                # block counts only its own rows.
                buf = np.empty(self._expected_edges(), dtype=idx_dtype)
                fill = 0
                for s, d in self._pieces:
                    if not s.size:
                        continue
                    if fill + d.shape[0] > buf.shape[0]:
                        bigger = np.empty(max(int(buf.shape[0] * 1.25), fill + d.shape[0]),
                                          dtype=idx_dtype)
                        bigger[:fill] = buf[:fill]
                        buf = bigger
                    buf[fill:fill + d.shape[0]] = d
                    fill += d.shape[0]
                    a, b = int(s[0]) - self.lo, int(s[-1]) - self.lo + 1
                    counts[a:b] += np.bincount(s - s[0], minlength=b - a)
                self._pieces = None
                buf.resize(fill, refcheck=False)  # shrinks in place (realloc), no copy
                parts.append(buf)
                del buf
            loose = [e for e in (*self._own, *received) if e is not None]
            self._own = []
            if loose:
                # Rows from several sources: one sort by (local row, dst) merges them.
                rows = [self._local_rows(s) for s, _ in loose]
                dsts = [d for _, d in loose]
                if parts:  # the pieces' rows, rebuilt from their counts
                    rows.append(np.repeat(np.arange(n_local, dtype=np.int64), counts))
                    dsts.append(np.concatenate(parts).astype(np.int64))
                    parts = []
                row = np.concatenate(rows)
                dst = np.concatenate(dsts)
                del rows, dsts, loose
                if n_local * self.n < 2**62:
                    key = row * np.int64(self.n) + dst
                    key.sort()
                    first = np.ones(key.shape[0], dtype=bool)
                    first[1:] = key[1:] != key[:-1]
                    key = key[first]
                    row, dst = np.divmod(key, np.int64(self.n))
                else:
                    order = np.lexsort((dst, row))
                    row, dst = row[order], dst[order]
                    first = np.ones(row.shape[0], dtype=bool)
                    first[1:] = (row[1:] != row[:-1]) | (dst[1:] != dst[:-1])
                    row, dst = row[first], dst[first]
                self.stats["merged_edges"] = int(first.shape[0] - row.shape[0])
                counts = np.bincount(row, minlength=n_local)
                parts = [dst.astype(idx_dtype)]
                del row, dst
            self.indptr = np.zeros(n_local + 1, dtype=np.int64)
            np.cumsum(counts, out=self.indptr[1:])
            self.indices = (np.concatenate(parts) if len(parts) != 1 else parts[0]) if parts \
                else np.empty(0, dtype=idx_dtype)
        out: list[Edges | None] = [None] * self.k
        if self.source.directed:
            # Every edge goes to the shard of its target, this one's own edges included
            # (kept here): in-degrees and in-edge tables are built from them in finish.
            parts = split_by_shard({"src": np.repeat(self.agents, np.diff(self.indptr)),
                                    "dst": self.indices.astype(np.int64)},
                                   self.partition.shard_of(self.indices), self.k)
            for j, cols in enumerate(parts):
                if cols is not None:
                    out[j] = (cols["src"], cols["dst"])
            self._own_in = out[self.shard]
            out[self.shard] = None
        self.stats["assemble_seconds"] = time.perf_counter() - t0
        return out

    def _expected_edges(self) -> int:
        """Out-edges this shard's rows should hold (the buffer's first size), with room."""
        from swarm.memory import expected_edges

        sizes = expected_edges(self.source.config)
        share = sizes[1] * self.agents.shape[0] / max(self.n, 1) if sizes else 0
        return int(share * 1.01) + 4096

    def _local_rows(self, ids: np.ndarray) -> np.ndarray:
        if self.lo is not None:
            return ids - self.lo
        return np.searchsorted(self.agents, ids)

    # -- 3: finish ------------------------------------------------------------------

    def finish(self, *received: Edges | None, fanout: bool = False
               ) -> tuple[np.ndarray, Fanout | None]:
        """In-degrees of this shard's agents and, with ``fanout``, its routing tables."""
        t0 = time.perf_counter()
        n_local = self.agents.shape[0]
        if self.source.directed:
            # In-edges: those of this shard's own rows (kept in assemble) and those received.
            ins = [e for e in (self._own_in, *received) if e is not None]
            self._own_in = None
            in_src = np.concatenate([e[0] for e in ins]) if ins else np.empty(0, np.int64)
            in_row = self._local_rows(np.concatenate([e[1] for e in ins]) if ins
                                      else np.empty(0, np.int64))
        else:
            in_src = in_row = None  # an in-edge is an out-edge reversed
        if in_row is None:
            in_degree = np.diff(self.indptr).astype(np.int32)
        else:
            in_degree = np.bincount(in_row, minlength=n_local).astype(np.int32)
        fan = None
        if fanout and self.k > 1:
            if in_src is None:
                in_src = self.indices.astype(np.int64)
                in_row = np.repeat(np.arange(n_local, dtype=np.int64), np.diff(self.indptr))
            fan = self._fanout(in_src, in_row)
        self.stats["finish_seconds"] = time.perf_counter() - t0
        return in_degree, fan

    def _fanout(self, in_src: np.ndarray, in_row: np.ndarray) -> Fanout:
        k = self.k
        n_local = self.agents.shape[0]
        shard_dtype = np.int16 if k < 2**15 else np.int32
        # Sending: distinct (row, destination shard) pairs, in row order.
        owner = self.partition.shard_of(self.indices)
        key = np.repeat(np.arange(n_local, dtype=np.int64), np.diff(self.indptr)) * k + owner
        del owner
        key.sort()
        keep = np.ones(key.shape[0], dtype=bool)
        keep[1:] = key[1:] != key[:-1]
        key = key[keep]
        row, dest = np.divmod(key, k)
        dest_indptr = np.zeros(n_local + 1, dtype=np.int64)
        np.cumsum(np.bincount(row, minlength=n_local), out=dest_indptr[1:])
        # A sender's slot at each destination: its rank among this shard's senders there.
        order = np.argsort(dest, kind="stable")
        group_start = np.searchsorted(dest[order], np.arange(k))
        slot = np.empty(key.shape[0], dtype=np.int64)
        slot[order] = np.arange(key.shape[0]) - group_start[dest[order]]
        # Receiving: in-edges grouped by (sender's shard, sender), receivers in row order.
        src_owner = self.partition.shard_of(in_src).astype(np.int64)
        order = np.lexsort((in_row, in_src, src_owner))
        in_src, in_row, src_owner = in_src[order], in_row[order], src_owner[order]
        first = np.ones(in_src.shape[0], dtype=bool)
        first[1:] = in_src[1:] != in_src[:-1]
        senders = np.flatnonzero(first)
        recv_src = in_src[senders]
        recv_base = np.searchsorted(src_owner[senders], np.arange(k + 1))
        row_dtype = np.int32 if n_local < 2**31 else np.int64
        return Fanout(
            dest_indptr=dest_indptr,
            dest_shard=dest.astype(shard_dtype),
            dest_slot=slot,
            recv_src=recv_src,
            recv_base=recv_base.astype(np.int64),
            recv_indptr=np.append(senders, in_src.shape[0]).astype(np.int64),
            recv_row=in_row.astype(row_dtype),
            recv_edge=edge_key(in_src, self.agents[in_row]),
        )

