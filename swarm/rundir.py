"""Run directories: the manifest, the event chunks and the metrics table of one run.

::

    run_dir/
      manifest.json                      config, seed, versions, graph and partition stats,
                                         status, and every file written (rows, bytes, checksum)
      lease.json, .lease.lock            who is writing the run now (see swarm.lease)
      events/shard=K/part-NNNNN.arrow    Arrow IPC chunks, one per flush
      metrics.arrow                      one row per step
      state/step=S/shard=K.arrow         the last complete checkpoints (see swarm.checkpoint)

The directory may be a local path or any pyarrow filesystem URI (see
swarm.storage). ``open_run`` is how everything downstream (the CLI,
analysis, tests) reads a run: the events as one pyarrow dataset, the metrics
as a table.

Readers trust the manifest, not the directory listing: the events are the
chunks the manifest lists, each checked to exist with its size (cheap)
before anything is read, so a deleted or truncated chunk is an error that
names the file, never a silently smaller answer. ``verify`` also checks every
checksum and the ranges of ids and steps (``swarm verify RUN``).
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from functools import cached_property

import pyarrow as pa
import pyarrow.dataset as ds

from swarm.errors import IntegrityError, LogError
from swarm.lease import LEASE_FILES, Lease
from swarm.storage import CHECKSUM, RunStore, hash_file

__all__ = ["Run", "open_run", "create_run_dir", "write_manifest", "versions", "check_files",
           "file_problem", "verify_files", "FORMAT"]

MANIFEST = "manifest.json"
METRICS = "metrics.arrow"
#: Wall-clock seconds per step (stages, the env's timing metrics): apart from METRICS,
#: whose values are the same for the same config and seed.
TIMINGS = "timings.arrow"
EVENTS = "events"
STATE = "state"
#: swarm-run/2 lists every file it wrote; readers of /1 runs fall back to the listing.
FORMAT = "swarm-run/2"


def versions() -> dict:
    from importlib.metadata import version

    import numpy

    import swarm

    return {
        "swarm": swarm.__version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "pyarrow": pa.__version__,
        "ray": version("ray"),  # without importing Ray
    }


def _check_new_run_dir(store: RunStore, overwrite: bool) -> None:
    if not store.exists():
        return
    if not store.isdir():
        raise LogError(f"--out {store.uri} is a file; choose a directory path")
    # Lease files alone (a run killed before its manifest) hold no run data.
    if [name for name in store.listdir() if name not in LEASE_FILES]:
        if not overwrite or not store.exists(MANIFEST):
            raise LogError(
                f"--out {store.uri} already holds files; choose a new directory"
                + (" (or pass --overwrite to replace an earlier run)" if not overwrite else
                   " (--overwrite only replaces a directory that holds a swarm run)")
            )


def create_run_dir(location: str | os.PathLike, overwrite: bool = False,
                   manifest: dict | None = None) -> tuple[RunStore, Lease]:
    """Make ``location`` ready for a new run and take its lease.

    Refuses to mix with an earlier run's files, and to replace a run that a
    live driver is still writing (``LeaseError``). With ``manifest``, writes
    it before anything else, so a directory left by a kill at any later
    moment is one that ``--overwrite`` and ``swarm resume`` recognise.
    """
    store = RunStore(location)
    _check_new_run_dir(store, overwrite)  # before writing anything, lock files included
    store.makedirs()
    lease = Lease(store, attempt=1).acquire()
    try:
        _check_new_run_dir(store, overwrite)  # again: another driver may have got here first
        store.clear(keep=LEASE_FILES)
        if manifest is not None:
            write_manifest(store, manifest)
        store.makedirs(EVENTS)
    except BaseException:
        lease.release()
        raise
    return store, lease


def write_manifest(store: RunStore, manifest: dict) -> None:
    """Write manifest.json atomically (temporary file, then rename)."""
    store.write_json(MANIFEST, manifest)


def check_files(store: RunStore, records: dict[str, dict], what: str = "file") -> None:
    """Raise IntegrityError unless every listed file exists with its listed size (cheap:
    one directory listing, no reads)."""
    if not records:
        return
    tops = {rel.split("/", 1)[0] if "/" in rel else "" for rel in records}
    sizes: dict[str, int] = {}
    for top in tops:
        if top:
            sizes.update(store.sizes(top))
        else:
            sizes.update({k: store.info(k).size for k in records if "/" not in k
                          and store.exists(k)})
    for rel, rec in sorted(records.items()):
        if not isinstance(rec, dict) or not isinstance(rec.get("bytes"), int):
            raise IntegrityError(f"{store.child_uri(MANIFEST)}: its record of {rel} is "
                                 "malformed (no byte count); the manifest was edited")
        if rel not in sizes:
            raise IntegrityError(
                f"{store.child_uri(rel)} is missing: the manifest lists this {what} with "
                f"{_rows(rec)}{rec['bytes']:,} bytes. The run is incomplete; `swarm verify "
                f"{store.uri}` lists every problem")
        if sizes[rel] != rec["bytes"]:
            raise IntegrityError(
                f"{store.child_uri(rel)} has {sizes[rel]:,} bytes but the manifest says "
                f"{rec['bytes']:,}: the file was changed after the run wrote it. `swarm "
                f"verify {store.uri}` lists every problem")


def file_problem(store: RunStore, rel: str, rec: dict, rows: bool = True) -> str | None:
    """What is wrong with file ``rel`` against its manifest record (None: nothing): it is
    missing, or its size, checksum or (with ``rows``, for tables) row count differs."""
    if not isinstance(rec, dict) or not isinstance(rec.get("bytes"), int):
        return "the manifest's record of it is malformed"
    try:
        store.path(rel)
    except LogError as exc:  # a path that leaves the run directory
        return str(exc)
    if not store.exists(rel):
        return f"missing ({_rows(rec)}{rec['bytes']:,} bytes listed)"
    try:
        got = hash_file(store, rel)
    except OSError as exc:
        return f"unreadable ({exc})"
    if got["bytes"] != rec["bytes"]:
        return f"{got['bytes']:,} bytes, the manifest says {rec['bytes']:,}"
    if got[CHECKSUM] != rec.get(CHECKSUM):
        return "checksum differs from the manifest's (the file was changed after it was written)"
    if rows and "rows" in rec:
        try:
            count = store.read_table(rel).num_rows
        except (pa.ArrowInvalid, OSError) as exc:
            return f"not a readable Arrow file ({exc})"
        if count != rec["rows"]:
            return f"{count:,} rows, the manifest says {rec['rows']:,}"
    return None


def verify_files(store: RunStore, records: dict[str, dict]) -> None:
    """IntegrityError naming the first of ``records`` whose size or checksum is wrong."""
    for rel, rec in records.items():
        problem = file_problem(store, rel, rec, rows=False)
        if problem:
            raise IntegrityError(f"{store.child_uri(rel)}: {problem}")


def _rows(rec: dict) -> str:
    if "rows" not in rec:
        return ""
    return f"{rec['rows']:,} row{'' if rec['rows'] == 1 else 's'}, "


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
            manifest = self.store.read_json(MANIFEST)
        except FileNotFoundError:
            raise LogError(f"{self.path} is not a swarm run: {MANIFEST} is missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
            raise LogError(f"{p} is corrupt ({why}); the run's events may still be readable "
                           f"with pyarrow.dataset on {self.store.child_uri(EVENTS)}") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("config", {}), dict):
            raise LogError(f"{p} is not a swarm manifest (not a mapping with a config)")
        return manifest

    @property
    def status(self) -> str:
        return self.manifest.get("status", "unknown")

    @property
    def listed(self) -> bool:
        """Whether the manifest lists the run's files (runs written since swarm-run/2)."""
        return isinstance(self.manifest.get("files"), dict)

    @property
    def files(self) -> dict[str, dict]:
        """The files the manifest lists outside checkpoints: {relative path: record}."""
        return dict(self.manifest.get("files") or {})

    def event_files(self) -> dict[str, dict]:
        """The event chunks the manifest lists, checked to exist with their sizes."""
        chunks = {rel: rec for rel, rec in self.files.items() if rel.startswith(f"{EVENTS}/")}
        check_files(self.store, chunks, "event chunk")
        return chunks

    @cached_property
    def unlisted_chunks(self) -> list[str]:
        """Event chunks in the directory that the manifest does not list (left out of reads):
        written after the manifest's last update by a run that was killed, or put there."""
        if not self.listed:
            return []
        listed = self.files
        return sorted(rel for rel in self.store.sizes(EVENTS)
                      if rel not in listed and not rel.rsplit("/", 1)[-1].startswith("."))

    def events_dataset(self) -> ds.Dataset:
        """The event chunks of every shard as one pyarrow dataset (lazy)."""
        folder = self.store.child_uri(EVENTS)
        if not self.store.isdir(EVENTS):
            raise LogError(f"{self.path}: no {EVENTS}/ directory; is this a swarm run?")
        try:
            if not self.listed:  # a swarm-run/1 directory: whatever the folder holds
                return ds.dataset(self.store.path(EVENTS), filesystem=self.store.fs,
                                  format="ipc", exclude_invalid_files=False)
            paths = [self.store.path(rel) for rel in sorted(self.event_files())]
            from swarm.eventlog import event_schema

            schema = None if paths else event_schema()
            return ds.dataset(paths, schema=schema, filesystem=self.store.fs, format="ipc")
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
            table = dataset.to_table(columns=columns, filter=filter)
        except (pa.ArrowInvalid, OSError) as exc:
            raise LogError(f"{self.path}: an event chunk is corrupt ({exc})") from None
        self._check_table(table, whole=filter is None)
        return table

    @cached_property
    def listed_rows(self) -> int:
        """The rows the manifest lists for the run's event chunks."""
        return sum(rec.get("rows", 0) for rel, rec in self.files.items()
                   if rel.startswith(f"{EVENTS}/"))

    def check_rows(self, rows: int | None) -> None:
        """IntegrityError when ``rows`` (all events read) differs from the rows the
        manifest lists for its chunks; None skips the check (a filtered read)."""
        if rows is None or not self.listed or rows == self.listed_rows:
            return
        raise IntegrityError(f"{self.path}: the event chunks hold {rows:,} rows but the "
                             f"manifest lists {self.listed_rows:,}; `swarm verify {self.path}` "
                             "names the chunk")

    @cached_property
    def bounds(self) -> dict[str, int]:
        """Exclusive upper bounds of event columns: agent < n, step < steps, shard < shards."""
        m = self.manifest
        steps = m.get("steps_run") if m.get("status") == "completed" else None
        bounds = {"agent": m.get("graph", {}).get("n"),
                  "step": steps or m.get("config", {}).get("steps"),
                  "shard": m.get("partition", {}).get("shards")}
        return {k: v for k, v in bounds.items() if isinstance(v, int)}

    def check_spans(self, spans: dict[str, tuple]) -> None:
        """IntegrityError when a column's (min, max) leaves its range: a chunk damaged in
        place keeps its size, so this is where it shows (``verify`` names the file)."""
        for col, (lo, hi) in spans.items():
            top = self.bounds.get(col)
            if top is not None and lo is not None and (lo < 0 or hi >= top):
                raise IntegrityError(f"{self.path}: events.{col} holds "
                                     f"{hi if hi >= top else lo:,}, outside 0..{top - 1:,}: an "
                                     f"event chunk is damaged. `swarm verify {self.path}` "
                                     "names it")

    def _check_table(self, table: pa.Table, whole: bool) -> None:
        import pyarrow.compute as pc

        if table.num_rows:
            self.check_spans({col: tuple(v.as_py() for v in pc.min_max(table[col]).values())
                              for col in self.bounds if col in table.column_names})
        self.check_rows(table.num_rows if whole else None)

    def metrics(self) -> pa.Table:
        """One row per step: counts and the env's metrics (the same for the same config
        and seed, whatever the shard count)."""
        return self._summary_table(METRICS, "metrics table")

    def timings(self) -> pa.Table:
        """One row per step: wall-clock seconds of each stage (slowest shard) and the env's
        timing metrics."""
        return self._summary_table(TIMINGS, "timings table")

    def _summary_table(self, rel: str, what: str) -> pa.Table:
        if not self.store.exists(rel):
            raise LogError(f"{self.path}: {rel} is missing (status {self.status!r})")
        if self.listed:
            if rel not in self.files:  # an older run's table, from before a resume
                raise LogError(f"{self.path}: {rel} is not listed in the manifest (status "
                               f"{self.status!r}); it is written when the run completes")
            check_files(self.store, {rel: self.files[rel]}, what)
        try:
            return self.store.read_table(rel)
        except pa.ArrowInvalid as exc:
            raise LogError(f"{self.store.child_uri(rel)} is corrupt ({exc})") from None

    def verify(self) -> list[str]:
        """Check every listed file's checksum and rows, and the ranges of ids and steps.

        Returns the problems found, one line each (an empty list: the run is intact).
        Reads every file once; ``swarm verify RUN`` prints the result.
        """
        if not self.listed:
            return [f"{self.path}: the manifest ({self.manifest.get('format', 'swarm-run/1')}) "
                    "lists no files, so there is nothing to check them against"]
        problems: list[str] = []
        records = dict(self.files)
        for key in ("checkpoint", "previous_checkpoint"):
            records.update((self.manifest.get(key) or {}).get("files", {}))
        for rel, rec in sorted(records.items()):
            problem = file_problem(self.store, rel, rec)
            if problem:
                problems.append(f"{self.store.child_uri(rel)}: {problem}")
        problems += [f"{self.store.child_uri(rel)}: an event chunk the manifest does not list "
                     "(left out of every read)" for rel in self.unlisted_chunks]
        if not problems:
            try:  # reading checks rows and ranges
                self.events(columns=list(self.bounds))
            except IntegrityError as exc:
                problems.append(str(exc))
        m = self.manifest
        if m.get("status") == "completed" and m.get("events") not in (None, self.listed_rows):
            problems.append(f"{self.path}: the manifest counts {m['events']:,} events but its "
                            f"chunks hold {self.listed_rows:,} rows")
        return problems

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
