"""Run directories: the manifest, the event chunks and the metrics table of one run.

::

    run_dir/
      manifest.json                      config, seed, versions, graph and partition stats, status
      events/shard=K/part-NNNNN.arrow    Arrow IPC chunks, one per flush
      metrics.arrow                      one row per step

``open_run`` is how everything downstream (the CLI, analysis, tests) reads a
run: the events as one pyarrow dataset, the metrics as a table.
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

__all__ = ["Run", "open_run", "create_run_dir", "write_manifest", "versions"]

MANIFEST = "manifest.json"
METRICS = "metrics.arrow"
EVENTS = "events"


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


def create_run_dir(path: str, overwrite: bool = False) -> str:
    """Make ``path`` ready for a new run; refuse to mix with an earlier run's files."""
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise LogError(f"--out {path} is a file; choose a directory path")
        if os.listdir(path):
            if not overwrite or not os.path.exists(os.path.join(path, MANIFEST)):
                raise LogError(
                    f"--out {path} already holds files; choose a new directory"
                    + (" (or pass --overwrite to replace an earlier run)" if not overwrite else
                       " (--overwrite only replaces a directory that holds a swarm run)")
                )
            import shutil

            shutil.rmtree(path)
    os.makedirs(os.path.join(path, EVENTS), exist_ok=True)
    return path


def write_manifest(path: str, manifest: dict) -> None:
    """Write manifest.json atomically (temporary file, then rename)."""
    tmp = os.path.join(path, f".{MANIFEST}.tmp")
    with open(tmp, "w") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True, default=str)
    os.replace(tmp, os.path.join(path, MANIFEST))


@dataclass
class Run:
    """A run directory opened for reading."""

    path: str

    @cached_property
    def manifest(self) -> dict:
        p = os.path.join(self.path, MANIFEST)
        try:
            with open(p) as fh:
                return json.load(fh)
        except FileNotFoundError:
            raise LogError(f"{self.path} is not a swarm run: {MANIFEST} is missing") from None
        except json.JSONDecodeError as exc:
            raise LogError(f"{p} is corrupt ({exc}); the run's events may still be readable "
                           f"with pyarrow.dataset on {os.path.join(self.path, EVENTS)}") from None

    @property
    def status(self) -> str:
        return self.manifest.get("status", "unknown")

    def events_dataset(self) -> ds.Dataset:
        """The event chunks of every shard as one pyarrow dataset (lazy)."""
        folder = os.path.join(self.path, EVENTS)
        if not os.path.isdir(folder):
            raise LogError(f"{self.path}: no {EVENTS}/ directory; is this a swarm run?")
        try:
            return ds.dataset(folder, format="ipc", exclude_invalid_files=False)
        except (pa.ArrowInvalid, OSError) as exc:
            raise LogError(f"{folder}: an event chunk is unreadable ({exc})") from None

    def events(self, columns: list[str] | None = None, filter=None) -> pa.Table:
        """All events as one table (optionally a column subset and a pyarrow filter)."""
        dataset = self.events_dataset()
        try:
            table = dataset.to_table(columns=columns, filter=filter)
        except (pa.ArrowInvalid, OSError) as exc:
            raise LogError(f"{self.path}: an event chunk is corrupt ({exc})") from None
        if table.num_rows == 0 and not dataset.files:
            from swarm.eventlog import event_schema

            schema = event_schema()
            return schema.empty_table().select(columns) if columns else schema.empty_table()
        return table

    def metrics(self) -> pa.Table:
        p = os.path.join(self.path, METRICS)
        if not os.path.exists(p):
            raise LogError(f"{self.path}: {METRICS} is missing (status {self.status!r})")
        try:
            with pa.memory_map(p) as src:
                return pa.ipc.open_file(src).read_all()
        except pa.ArrowInvalid as exc:
            raise LogError(f"{p} is corrupt ({exc})") from None

    def __repr__(self) -> str:
        return f"Run({self.path!r}, status={self.status!r})"


def open_run(path: str | os.PathLike) -> Run:
    """Open a run directory written by ``swarm run``.

    Examples
    --------
    >>> run = open_run("runs/demo")          # doctest: +SKIP
    >>> run.events().group_by("root").aggregate([("agent", "count")])  # doctest: +SKIP
    """
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise LogError(f"run directory not found: {path}")
    run = Run(path)
    run.manifest  # noqa: B018 - fail early on a directory that is not a run
    return run
