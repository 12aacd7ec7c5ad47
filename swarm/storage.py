"""Where a run directory lives: a local path or any pyarrow filesystem URI.

Run directories may sit on storage every node of a cluster sees (a shared
mount, ``s3://bucket/runs/x``, ``gs://...``), so every read and write of the
manifest, event chunks, metrics and checkpoints goes through a
``pyarrow.fs.FileSystem`` and a path on it. A ``RunStore`` pickles as its URI,
so shards on other nodes reopen the same place.

Writes are atomic where the filesystem allows: on a local disk a file is
written under a dot-prefixed temporary name and renamed (a reader never sees
half a chunk); object stores publish an object only when its upload
completes, so there the file is written in place.
"""

from __future__ import annotations

import io
import json
import os

import pyarrow as pa
import pyarrow.fs as pafs

from swarm.errors import LogError

__all__ = ["RunStore"]


class RunStore:
    """A directory on a pyarrow filesystem; paths given to its methods are relative to it.

    Parameters
    ----------
    uri : str or path
        A local path (relative or absolute), a ``file://`` URI, or any URI
        pyarrow understands (``s3://bucket/prefix``, ``gs://...``, ``hdfs://...``).

    Examples
    --------
    >>> import tempfile
    >>> store = RunStore(tempfile.mkdtemp())
    >>> store.write_bytes("a/b.txt", b"hi")
    >>> store.read_bytes("a/b.txt"), store.listdir("a")
    (b'hi', ['b.txt'])
    """

    def __init__(self, uri: str | os.PathLike):
        uri = os.fspath(uri)
        if "://" in uri:
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(uri)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
                raise LogError(f"cannot open run location {uri!r}: {exc}. Use a local path, a "
                               "file:// URI or a URI pyarrow.fs supports (s3://, gs://)") from None
            self.uri = uri.rstrip("/")
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(uri)
            self.uri = self.root
        self.root = self.root.rstrip("/") or "/"
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def __reduce__(self):
        return (RunStore, (self.uri,))

    def __repr__(self) -> str:
        return f"RunStore({self.uri!r})"

    def path(self, *parts: str) -> str:
        """The filesystem path of ``parts`` under the root."""
        return "/".join([self.root, *[p.strip("/") for p in parts if p]])

    def child_uri(self, *parts: str) -> str:
        """A URI (or local path) of ``parts`` under the root, for messages to users."""
        return "/".join([self.uri, *parts]) if parts else self.uri

    # -- queries ---------------------------------------------------------------

    def info(self, rel: str = "") -> pafs.FileInfo:
        return self.fs.get_file_info(self.path(rel))

    def exists(self, rel: str = "") -> bool:
        return self.info(rel).type != pafs.FileType.NotFound

    def isdir(self, rel: str = "") -> bool:
        return self.info(rel).type == pafs.FileType.Directory

    def listdir(self, rel: str = "") -> list[str]:
        """Names directly under ``rel`` (files and directories), sorted; [] if it is missing."""
        if not self.isdir(rel):
            return []
        sel = pafs.FileSelector(self.path(rel), allow_not_found=True, recursive=False)
        return sorted(i.base_name for i in self.fs.get_file_info(sel))

    # -- writes ----------------------------------------------------------------

    def makedirs(self, rel: str = "") -> None:
        self.fs.create_dir(self.path(rel), recursive=True)

    def delete(self, rel: str) -> None:
        """Delete a file or a directory tree; nothing happens if it is missing."""
        info = self.info(rel)
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(rel))
        elif info.type != pafs.FileType.NotFound:
            self.fs.delete_file(self.path(rel))

    def clear(self) -> None:
        """Delete everything under the root, keeping the root."""
        self.fs.delete_dir_contents(self.path(), missing_dir_ok=True)

    def _atomic(self, rel: str, write) -> None:
        target = self.path(rel)
        parent = target.rsplit("/", 1)[0]
        if self.local:
            self.fs.create_dir(parent, recursive=True)
            tmp = f"{parent}/.{target.rsplit('/', 1)[1]}.tmp"
            with self.fs.open_output_stream(tmp) as sink:
                write(sink)
            self.fs.move(tmp, target)
        else:
            with self.fs.open_output_stream(target) as sink:
                write(sink)

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``data`` to ``rel`` atomically (temporary name and rename on local disks)."""
        self._atomic(rel, lambda sink: sink.write(data))

    def write_json(self, rel: str, obj) -> None:
        text = json.dumps(obj, indent=2, sort_keys=True, default=str)
        self.write_bytes(rel, text.encode())

    def write_table(self, rel: str, table: pa.Table, compression: str | None = None) -> None:
        """Write ``table`` as one Arrow IPC file, atomically."""
        options = pa.ipc.IpcWriteOptions(compression=compression)

        def write(sink):
            with pa.ipc.new_file(sink, table.schema, options=options) as writer:
                writer.write_table(table)

        self._atomic(rel, write)

    # -- reads -----------------------------------------------------------------

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as src:
            return src.read()

    def read_json(self, rel: str):
        return json.load(io.BytesIO(self.read_bytes(rel)))

    def read_table(self, rel: str) -> pa.Table:
        """Read one Arrow IPC file; memory-mapped when local."""
        if self.local:
            with pa.memory_map(self.path(rel)) as src:
                return pa.ipc.open_file(src).read_all()
        with self.fs.open_input_file(self.path(rel)) as src:
            return pa.ipc.open_file(src).read_all()
