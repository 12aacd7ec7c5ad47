"""Run directories: the manifest, the event chunks and the metrics table of one run.

::

    run_dir/
      manifest.json                      config, seed, versions, graph and partition stats, status
      events/shard=K/part-NNNNN.arrow    Arrow IPC chunks, one per flush
      metrics.arrow                      one row per step
      state/step=S/shard=K.arrow         the last complete checkpoint (see swarm.checkpoint)

The directory may be a local path or any pyarrow filesystem URI (see
swarm.storage). ``open_run`` is how everything downstream (the CLI,
analysis, tests) reads a run: the events as one pyarrow dataset, the metrics
as a table.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from functools import cached_property

import pyarrow as pa
import pyarrow.dataset as ds

from swarm.errors import LogError
from swarm.storage import RunStore

__all__ = ["Run", "open_run", "create_run_dir", "write_manifest", "versions"]

MANIFEST = "manifest.json"
METRICS = "metrics.arrow"
EVENTS = "events"
STATE = "state"


def versions() -> dict:
    import numpy
    import ray

    import swarm

    return {
        "swarm": swarm.__version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "pyarrow": pa.__version__,
        "ray": ray.__version__,
    }


def create_run_dir(location: str | os.PathLike, overwrite: bool = False) -> RunStore:
    """Make ``location`` ready for a new run; refuse to mix with an earlier run's files."""
    store = RunStore(location)
    if store.exists():
        if not store.isdir():
            raise LogError(f"--out {store.uri} is a file; choose a directory path")
        if store.listdir():
            if not overwrite or not store.exists(MANIFEST):
                raise LogError(
                    f"--out {store.uri} already holds files; choose a new directory"
                    + (" (or pass --overwrite to replace an earlier run)" if not overwrite else
                       " (--overwrite only replaces a directory that holds a swarm run)")
                )
            store.clear()
    store.makedirs(EVENTS)
    return store


def write_manifest(store: RunStore, manifest: dict) -> None:
    """Write manifest.json atomically (temporary file, then rename)."""
    store.write_json(MANIFEST, manifest)


@dataclass
class Run:
    """A run directory opened for reading; ``path`` is a local path or a URI."""

    store: RunStore

    @property
    def path(self) -> str:
        return self.store.uri

    @cached_property
    def manifest(self) -> dict:
        p = self.store.child_uri(MANIFEST)
        try:
            return self.store.read_json(MANIFEST)
        except FileNotFoundError:
            raise LogError(f"{self.path} is not a swarm run: {MANIFEST} is missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LogError(f"{p} is corrupt ({exc}); the run's events may still be readable "
                           f"with pyarrow.dataset on {self.store.child_uri(EVENTS)}") from None

    @property
    def status(self) -> str:
        return self.manifest.get("status", "unknown")

    def events_dataset(self) -> ds.Dataset:
        """The event chunks of every shard as one pyarrow dataset (lazy)."""
        folder = self.store.child_uri(EVENTS)
        if not self.store.isdir(EVENTS):
            raise LogError(f"{self.path}: no {EVENTS}/ directory; is this a swarm run?")
        try:
            return ds.dataset(self.store.path(EVENTS), filesystem=self.store.fs, format="ipc",
                              exclude_invalid_files=False)
        except (pa.ArrowInvalid, OSError) as exc:
            raise LogError(f"{folder}: an event chunk is unreadable ({exc})") from None

    def events(self, columns: list[str] | None = None, filter=None) -> pa.Table:
        """All events as one table (optionally a column subset and a pyarrow filter)."""
        dataset = self.events_dataset()
        if not dataset.files:  # no chunk written (no events): the schema, empty
            from swarm.eventlog import event_schema

            schema = event_schema()
            return schema.empty_table().select(columns) if columns else schema.empty_table()
        try:
            return dataset.to_table(columns=columns, filter=filter)
        except (pa.ArrowInvalid, OSError) as exc:
            raise LogError(f"{self.path}: an event chunk is corrupt ({exc})") from None

    def metrics(self) -> pa.Table:
        if not self.store.exists(METRICS):
            raise LogError(f"{self.path}: {METRICS} is missing (status {self.status!r})")
        try:
            return self.store.read_table(METRICS)
        except pa.ArrowInvalid as exc:
            raise LogError(f"{self.store.child_uri(METRICS)} is corrupt ({exc})") from None

    def __repr__(self) -> str:
        return f"Run({self.path!r}, status={self.status!r})"


def open_run(path: str | os.PathLike) -> Run:
    """Open a run directory written by ``swarm run`` (a local path or a pyarrow URI).

    Examples
    --------
    >>> run = open_run("runs/demo")          # doctest: +SKIP
    >>> run.events().group_by("root").aggregate([("agent", "count")])  # doctest: +SKIP
    """
    store = RunStore(path)
    if not store.isdir():
        raise LogError(f"run directory not found: {store.uri}")
    run = Run(store)
    run.manifest  # noqa: B018 - fail early on a directory that is not a run
    return run
