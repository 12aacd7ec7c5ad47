"""Checkpoints: each shard's full state as Arrow, so a run can stop and go on exactly.

At the end of a checkpoint step S every shard flushes its events and writes

::

    state/step=S/shard=K.arrow        env state columns, messages to itself, log position
    state/step=S/msgs-K-to-J.arrow    messages shard K sent to shard J in step S

each atomically. The driver declares the checkpoint complete (manifest
``checkpoint``) only when every shard has written, and then deletes older
ones. A restart from S loads these files, deletes event chunks written after
S and replays from S+1: keyed randomness makes the replay equal the lost
steps, so the event log has no missing and no duplicated rows.

A file holds one row; each column is one array as a ``large_list`` (any
length, exact dtype), so variable-length state (an infected list, an inbox)
and per-agent columns sit side by side. Schema metadata says which columns
were scalars and carries the shard's bookkeeping.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from swarm.errors import LogError
from swarm.rundir import STATE
from swarm.storage import RunStore

__all__ = ["pack", "unpack", "step_dir", "shard_file", "messages_file", "write_arrays",
           "read_arrays"]

def step_dir(step: int) -> str:
    return f"{STATE}/step={step:08d}"


def shard_file(step: int, shard: int) -> str:
    return f"{step_dir(step)}/shard={shard}.arrow"


def messages_file(step: int, sender: int, receiver: int) -> str:
    return f"{step_dir(step)}/msgs-{sender}-to-{receiver}.arrow"


def pack(arrays: dict[str, np.ndarray], meta: dict | None = None) -> pa.Table:
    """One-row table: a ``large_list`` column per array (0-d arrays marked as scalars)."""
    columns, scalars = {}, []
    for name, value in arrays.items():
        value = np.asarray(value)
        if value.ndim == 0:
            scalars.append(name)
        flat = np.ascontiguousarray(value.reshape(-1))
        offsets = pa.array(np.array([0, flat.shape[0]], dtype=np.int64))
        columns[name] = pa.LargeListArray.from_arrays(offsets, pa.array(flat))
    table = pa.table(columns) if columns else pa.table({"_empty": pa.array([0])})
    info = {"scalars": scalars, **(meta or {})}
    return table.replace_schema_metadata({"swarm": json.dumps(info)})


def unpack(table: pa.Table) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and metadata ``pack`` stored."""
    info = json.loads((table.schema.metadata or {}).get(b"swarm", b"{}"))
    scalars = set(info.pop("scalars", []))
    out = {}
    for name in table.column_names:
        if name == "_empty":
            continue
        values = table.column(name).combine_chunks().values
        # A copy: restored state is mutated in place and must not alias the file.
        arr = np.array(values.to_numpy(zero_copy_only=False))
        out[name] = arr.reshape(()) if name in scalars else arr
    return out, info


def write_arrays(store: RunStore, rel: str, arrays: dict[str, np.ndarray],
                 meta: dict | None = None) -> dict:
    """Write a checkpoint file atomically; returns its record ({"path", "rows", "bytes",
    "xxh3_128"}), which the manifest keeps and a resume checks."""
    return {"path": rel, **store.write_table(rel, pack(arrays, meta))}


def read_arrays(store: RunStore, rel: str) -> tuple[dict[str, np.ndarray], dict]:
    try:
        table = store.read_table(rel)
    except FileNotFoundError:
        raise LogError(f"checkpoint file {store.child_uri(rel)} is missing; the checkpoint is "
                       "incomplete (resume uses the last complete one named in the manifest)"
                       ) from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise LogError(f"checkpoint file {store.child_uri(rel)} is corrupt ({exc})") from None
    return unpack(table)
