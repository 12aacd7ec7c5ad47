"""Where a run directory lives: a local path or any pyarrow filesystem URI.

Run directories may sit on storage every node of a cluster sees (a shared
mount, ``s3://bucket/runs/x``, ``gs://...``), so every read and write of the
manifest, event chunks, metrics and checkpoints goes through a
``pyarrow.fs.FileSystem`` and a path on it. A ``RunStore`` pickles as its URI,
so shards on other nodes reopen the same place.

Writes are atomic where the filesystem allows: on a local disk a file is
written under a dot-prefixed temporary name and renamed (a reader never sees
half a chunk); object stores publish an object only when its upload
completes, so there the file is written in place. Every write returns the
file's record (bytes, an xxh3-128 checksum, rows for tables), hashed while the
bytes stream out, which the manifest keeps so that readers can tell a file
that was damaged, truncated or deleted from the one that was written.

A write that fails (a full disk, no permission, a run directory deleted
under the run) raises ``StorageError`` naming the file, and leaves no
temporary file behind.
"""

from __future__ import annotations

import io
import json
import os

import pyarrow as pa
import pyarrow.fs as pafs
import xxhash

from swarm.errors import LogError, StorageError

__all__ = ["RunStore", "FileRecord", "hash_file", "CHECKSUM"]

#: A file as the manifest lists it: {"bytes": int, "xxh3_128": hex, "rows": int (tables)}.
FileRecord = dict
#: The checksum: xxh3-128 guards against damage (a disk, a copy, a hand), not against
#: someone who could rewrite the manifest too; at ~15 GB/s it costs writes nothing
#: (BLAKE2b ran at 0.5-1 GB/s here and added a quarter to a chunk's write time).
CHECKSUM = "xxh3_128"
_READ_CHUNK = 1 << 22


class _HashingWriter(io.RawIOBase):
    """A write-only stream that hashes and counts what passes through to ``sink``."""

    def __init__(self, sink):
        self.sink = sink
        self.hash = xxhash.xxh3_128()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.hash.update(data)
        self.sink.write(data)
        n = memoryview(data).nbytes
        self.size += n
        return n

    def record(self) -> FileRecord:
        return {"bytes": self.size, CHECKSUM: self.hash.hexdigest()}


def _why(exc: OSError) -> str:
    """A short reason for a failed file operation (pyarrow's messages carry the path twice;
    its OSErrors carry the errno, as Python's do)."""
    if exc.errno:
        return os.strerror(exc.errno).lower()
    text = str(exc)
    return text.splitlines()[0][:200] if text else type(exc).__name__


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
    >>> store.write_bytes("a/b.txt", b"hi")["bytes"]
    2
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
        """The filesystem path of ``parts`` under the root; never outside it.

        A run directory may come from someone else, and so may the relative
        paths its manifest lists: a ``..`` in one, or a symbolic link inside
        the directory (``events/shard=0 -> ~``), would let a reader hash files
        outside the run and a resume delete them. Both are refused here, where
        every access passes; the root itself may be a link (the user named it).
        """
        rel = [p.strip("/") for p in parts if p]
        if any(seg == ".." for p in rel for seg in p.split("/")):
            raise LogError(f"{'/'.join(rel)!r} points outside the run directory {self.uri}; "
                           "its manifest was edited")
        full = "/".join([self.root, *rel])
        if self.local and rel:
            real = os.path.realpath(full)
            if real != self._real_root and not real.startswith(self._real_root + os.sep):
                raise LogError(f"{full} is a link out of the run directory (to {real}); swarm "
                               "reads and writes only inside it. Remove the link")
        return full

    @property
    def _real_root(self) -> str:
        return os.path.realpath(self.root)

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
        try:
            self.fs.create_dir(self.path(rel), recursive=True)
        except OSError as exc:
            raise StorageError(f"cannot create {self.child_uri(rel)}: {_why(exc)}") from None

    def delete(self, rel: str) -> None:
        """Delete a file or a directory tree; nothing happens if it is missing."""
        info = self.info(rel)
        try:
            if info.type == pafs.FileType.Directory:
                self.fs.delete_dir(self.path(rel))
            elif info.type != pafs.FileType.NotFound:
                self.fs.delete_file(self.path(rel))
        except OSError as exc:
            raise StorageError(f"cannot delete {self.child_uri(rel)}: {_why(exc)}") from None

    def clear(self, keep: tuple[str, ...] = ()) -> None:
        """Delete everything under the root but the names in ``keep``, keeping the root."""
        for name in self.listdir():
            if name not in keep:
                self.delete(name)

    def _atomic(self, rel: str, write) -> FileRecord:
        """Write through ``write(sink)`` under a temporary name, then rename; the record."""
        target = self.path(rel)
        parent = target.rsplit("/", 1)[0]
        tmp = f"{parent}/.{target.rsplit('/', 1)[1]}.tmp" if self.local else target
        # The directory itself is never re-created here: one deleted under a
        # running run is an error, not a fresh start with half the files.
        if self.local and self.fs.get_file_info(self.root).type != pafs.FileType.Directory:
            raise StorageError(f"cannot write {self.child_uri(rel)}: the directory {self.uri} "
                               "vanished (deleted or unmounted)")
        # A temporary name that is a link (planted in a run directory from elsewhere)
        # would send this write to whatever it points at.
        if self.local and os.path.islink(tmp):
            raise LogError(f"{tmp} is a symbolic link; swarm writes only its own files. "
                           "Remove it")
        try:
            if self.local:
                self.fs.create_dir(parent, recursive=True)
            with self.fs.open_output_stream(tmp) as sink:
                hashing = _HashingWriter(sink)
                write(hashing)
            if self.local:
                self.fs.move(tmp, target)
        except OSError as exc:
            if self.local:
                try:
                    self.fs.delete_file(tmp)
                except OSError:
                    pass  # the temporary file never appeared, or the disk is gone
            raise StorageError(f"cannot write {self.child_uri(rel)}: {_why(exc)}") from None
        return hashing.record()

    def write_bytes(self, rel: str, data: bytes) -> FileRecord:
        """Write ``data`` to ``rel`` atomically (temporary name and rename on local disks)."""
        return self._atomic(rel, lambda sink: sink.write(data))

    def write_json(self, rel: str, obj) -> FileRecord:
        text = json.dumps(obj, indent=2, sort_keys=True, default=str)
        return self.write_bytes(rel, text.encode())

    def write_table(self, rel: str, table: pa.Table, compression: str | None = None
                    ) -> FileRecord:
        """Write ``table`` as one Arrow IPC file, atomically; its record includes ``rows``."""
        options = pa.ipc.IpcWriteOptions(compression=compression)

        def write(hashing):
            sink = pa.PythonFile(hashing, mode="w")
            with pa.ipc.new_file(sink, table.schema, options=options) as writer:
                writer.write_table(table)

        return {**self._atomic(rel, write), "rows": table.num_rows}

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

    def sizes(self, rel: str = "") -> dict[str, int]:
        """Every file under ``rel`` (recursively) with its size: {path from the root: bytes}."""
        if not self.isdir(rel):
            return {}
        sel = pafs.FileSelector(self.path(rel), allow_not_found=True, recursive=True)
        cut = len(self.root) + 1
        return {i.path[cut:]: i.size for i in self.fs.get_file_info(sel)
                if i.type == pafs.FileType.File}


def hash_file(store: RunStore, rel: str) -> FileRecord:
    """Read ``rel`` in chunks and return its size and checksum (as writes record them)."""
    h = xxhash.xxh3_128()
    size = 0
    with store.fs.open_input_stream(store.path(rel)) as src:
        while chunk := src.read(_READ_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return {"bytes": size, CHECKSUM: h.hexdigest()}
