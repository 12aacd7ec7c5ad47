"""The log step of the round: events buffered as columns, flushed as Arrow IPC chunks.

Each shard appends its step's events (numpy columns, never Python rows) and
every ``flush_every`` steps (and at every checkpoint) writes one chunk
``events/shard=K/part-NNNNN.arrow``. A chunk is written under a dot-prefixed
temporary name and renamed into place, so a reader never sees a half-written
file and a crash loses at most the unflushed steps. A checkpoint records how
many chunks existed; a restart from it deletes the later ones, whose steps
are replayed, so a resumed run has no duplicated rows. Each chunk's record
(rows, bytes, checksum) goes to the driver with the step's summary, and from
there into the manifest, which is what readers trust (see swarm.rundir).
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa

from swarm.storage import RunStore

__all__ = ["COMMON_EVENT_COLUMNS", "EventLog", "event_schema", "chunk_number", "make_events"]

# The columns every event carries (DESIGN.md, "Event log"). ``step`` and
# ``shard`` are added by the engine; -1 (ints) and NaN (value) mean null.
COMMON_EVENT_COLUMNS: dict[str, pa.DataType] = {
    "step": pa.int32(),
    "shard": pa.int32(),
    "agent": pa.int64(),
    "event": pa.dictionary(pa.int8(), pa.string()),
    "target": pa.int64(),
    "item": pa.int64(),
    "root": pa.int64(),
    "parent": pa.int64(),
    "value": pa.float32(),
}

_NULLABLE_INT = ("target", "item", "root", "parent")


def make_events(event: np.ndarray, agent: np.ndarray, **columns: np.ndarray) -> dict:
    """Event columns with the common nullable ones filled with nulls where not given."""
    n = agent.shape[0]
    out = {"event": np.asarray(event, dtype=np.int8), "agent": np.asarray(agent, dtype=np.int64)}
    for name in _NULLABLE_INT:
        col = columns.pop(name, None)
        out[name] = np.full(n, -1, dtype=np.int64) if col is None else col.astype(np.int64)
    value = columns.pop("value", None)
    out["value"] = np.full(n, np.nan, np.float32) if value is None else value.astype(np.float32)
    out.update(columns)
    return out

_PART = re.compile(r"part-(\d+)\.arrow$")


def event_schema(extra: dict[str, pa.DataType] | None = None) -> pa.Schema:
    """The common event columns plus an env's extra ones (all extras nullable)."""
    fields = [pa.field(k, t, nullable=k not in ("step", "shard", "agent", "event"))
              for k, t in COMMON_EVENT_COLUMNS.items()]
    fields += [pa.field(k, t) for k, t in (extra or {}).items()]
    return pa.schema(fields)


class EventLog:
    """Column buffers of one shard's events and the chunk files they flush to."""

    def __init__(self, store: RunStore, directory: str, shard: int,
                 event_types: tuple[str, ...], extra: dict[str, pa.DataType] | None = None,
                 flush_every: int = 10):
        self.store = store
        self.directory = directory
        self.shard = shard
        self.schema = event_schema(extra)
        self.dictionary = pa.array(list(event_types), type=pa.string())
        self.flush_every = flush_every
        self.extra = dict(extra or {})
        self._buffer: list[tuple[int, dict]] = []
        self._parts = 0
        self.rows_written = 0
        # Chunks written but not yet reported to the driver: {"path", "rows", "bytes", ...}.
        self.files: list[dict] = []
        store.makedirs(directory)

    def append(self, step: int, events: dict[str, np.ndarray]) -> None:
        if events["agent"].shape[0]:
            self._buffer.append((step, events))

    def end_step(self, step: int) -> None:
        if (step + 1) % self.flush_every == 0:
            self.flush()

    def _table(self) -> pa.Table:
        steps = [np.full(ev["agent"].shape[0], s, np.int32) for s, ev in self._buffer]
        col = {k: np.concatenate([ev[k] for _, ev in self._buffer]) for k in self._buffer[0][1]
               if k not in self.extra}
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
            # An env may leave an extra column out of a step (text that no
            # policy wrote, say): those rows are null, built by Arrow, not Python.
            # NaN (floats) and negative values (ints) are null, as in the common columns.
            pieces = [pa.nulls(ev["agent"].shape[0], t) if k not in ev else
                      pa.array(ev[k], type=t, mask=_null_mask(ev[k]))
                      for _, ev in self._buffer]
            arrays[k] = pa.concat_arrays(pieces) if pieces else pa.nulls(0, t)
        return pa.Table.from_arrays(list(arrays.values()), schema=self.schema)

    def flush(self) -> int:
        """Write buffered events as one chunk; returns the rows written."""
        if not self._buffer:
            return 0
        table = self._table()
        rel = f"{self.directory}/part-{self._parts:05d}.arrow"
        self.files.append({"path": rel, **self.store.write_table(rel, table)})
        self._parts += 1
        self._buffer.clear()
        self.rows_written += table.num_rows
        return table.num_rows

    def take_files(self) -> list[dict]:
        """The records of chunks written since the last call (for the step's summary)."""
        files, self.files = self.files, []
        return files

    def position(self) -> dict[str, int]:
        """Chunks and rows written so far (what a checkpoint records)."""
        return {"parts": self._parts, "rows": self.rows_written}

    def rewind(self, parts: int, rows: int) -> int:
        """Forget everything after a checkpoint: drop the buffer and delete chunks
        numbered ``parts`` and up (and stray temporary files). Returns chunks deleted."""
        self._buffer.clear()
        self.files.clear()
        deleted = 0
        for name in self.store.listdir(self.directory):
            m = _PART.match(name)
            # Chunks after the position, and this log's own temporary files.
            if (m and int(m.group(1)) >= parts) or (name.startswith(".part-")
                                                   and name.endswith(".tmp")):
                self.store.delete(f"{self.directory}/{name}")
                deleted += bool(m)
        self._parts, self.rows_written = parts, rows
        return deleted


def chunk_number(path: str) -> int:
    """The NNNNN of ``.../part-NNNNN.arrow`` (-1 for any other name)."""
    m = _PART.search(path)
    return int(m.group(1)) if m else -1


def _null_mask(col: np.ndarray) -> np.ndarray | None:
    if col.dtype.kind == "f":
        return np.isnan(col)
    if col.dtype.kind == "i":
        return col < 0
    return None
