"""The log step of the round: events buffered as columns, flushed as Arrow IPC chunks.

Each shard appends its step's events (numpy columns, never Python rows) and
every ``flush_every`` steps writes one chunk ``events/shard=K/part-NNNNN.arrow``.
A chunk is written under a dot-prefixed temporary name and renamed into
place, so a reader never sees a half-written file and a crash loses at most
the unflushed steps.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa

from swarm.envs.base import COMMON_EVENT_COLUMNS

__all__ = ["EventLog", "event_schema", "write_ipc_atomic"]


def event_schema(extra: dict[str, pa.DataType] | None = None) -> pa.Schema:
    """The common event columns plus an env's extra ones (all extras nullable)."""
    fields = [pa.field(k, t, nullable=k not in ("step", "shard", "agent", "event"))
              for k, t in COMMON_EVENT_COLUMNS.items()]
    fields += [pa.field(k, t) for k, t in (extra or {}).items()]
    return pa.schema(fields)


def write_ipc_atomic(table: pa.Table, path: str) -> None:
    """Write ``table`` as an Arrow IPC file at ``path`` via a temporary file and rename."""
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.tmp")
    with pa.OSFile(tmp, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(tmp, path)


class EventLog:
    """Column buffers of one shard's events and the chunk files they flush to."""

    def __init__(self, directory: str, shard: int, event_types: tuple[str, ...],
                 extra: dict[str, pa.DataType] | None = None, flush_every: int = 10):
        self.directory = directory
        self.shard = shard
        self.schema = event_schema(extra)
        self.dictionary = pa.array(list(event_types), type=pa.string())
        self.flush_every = flush_every
        self.extra = dict(extra or {})
        self._buffer: list[tuple[int, dict]] = []
        self._parts = 0
        self.rows_written = 0
        os.makedirs(directory, exist_ok=True)

    def append(self, step: int, events: dict[str, np.ndarray]) -> None:
        if events["agent"].shape[0]:
            self._buffer.append((step, events))

    def end_step(self, step: int) -> None:
        if (step + 1) % self.flush_every == 0:
            self.flush()

    def _table(self) -> pa.Table:
        steps = [np.full(ev["agent"].shape[0], s, np.int32) for s, ev in self._buffer]
        col = {k: np.concatenate([ev[k] for _, ev in self._buffer]) for k in self._buffer[0][1]}
        n = col["agent"].shape[0]
        arrays = {
            "step": pa.array(np.concatenate(steps)),
            "shard": pa.array(np.full(n, self.shard, np.int32)),
            "agent": pa.array(col["agent"]),
            "event": pa.DictionaryArray.from_arrays(pa.array(col["event"]), self.dictionary),
        }
        for k in ("target", "item", "root", "parent"):
            arrays[k] = pa.array(col[k], mask=col[k] < 0)
        arrays["value"] = pa.array(col["value"], mask=np.isnan(col["value"]))
        for k, t in self.extra.items():
            v = col[k]
            mask = np.isnan(v) if v.dtype.kind == "f" else None
            arrays[k] = pa.array(v, type=t, mask=mask)
        return pa.Table.from_arrays(list(arrays.values()), schema=self.schema)

    def flush(self) -> int:
        """Write buffered events as one chunk; returns the rows written."""
        if not self._buffer:
            return 0
        table = self._table()
        path = os.path.join(self.directory, f"part-{self._parts:05d}.arrow")
        write_ipc_atomic(table, path)
        self._parts += 1
        self._buffer.clear()
        self.rows_written += table.num_rows
        return table.num_rows
