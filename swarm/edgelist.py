"""Edge lists too big for one process: sized in a streaming pass, read in parts by the shards.

A Parquet edge list is read by row groups and a text one by byte ranges:
part ``k`` of ``K`` takes its share and hands the edges to their owners,
so no process holds the whole list. Ids are checked as each piece is read,
and a bad one is named by its row group or line.
``partition_edgelist`` rewrites a big list into one Parquet file per shard in
one streaming pass (``swarm graph partition``).
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np

from swarm.errors import GraphError
from swarm.graph import MAX_AGENTS

__all__ = ["edgelist_size", "read_part", "read_all", "partition_edgelist", "check_ids"]

#: Bytes of a text edge list parsed at a time.
TEXT_CHUNK = 64 << 20


def _is_parquet(path: str) -> bool:
    return path.endswith((".parquet", ".pq")) or os.path.isdir(path)


def _groups(path: str) -> list[tuple]:
    """(ParquetFile, row group, columns, name) of every row group of a file or a folder of
    ``*.parquet`` files (sorted by name)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = ([os.path.join(path, f) for f in sorted(os.listdir(path))
              if f.endswith((".parquet", ".pq"))] if os.path.isdir(path) else [path])
    out = []
    for f in files:
        try:
            pf = pq.ParquetFile(f)
        except (pa.ArrowInvalid, OSError) as exc:
            raise GraphError(f"{f}: not a readable Parquet file ({exc})") from exc
        cols = _columns(f, pf.schema_arrow.names)
        out.extend((pf, g, cols, f) for g in range(pf.num_row_groups))
    return out


def _columns(path: str, names: list[str]) -> list[str]:
    if {"src", "dst"} <= set(names):
        return ["src", "dst"]
    if len(names) >= 2:
        return names[:2]
    raise GraphError(f"{path}: a Parquet edge list needs columns 'src' and 'dst'; got {names}")


def edgelist_size(path: str) -> tuple[int, int]:
    """(max id + 1, edges) of an edge list, in one pass of bounded memory.

    Parquet answers from its row-group statistics where they exist.
    """
    if not os.path.exists(path):
        raise GraphError(f"edge list not found: {path}")
    top, rows = 0, 0
    if _is_parquet(path):
        for pf, g, cols, f in _groups(path):
            idx = [pf.schema_arrow.names.index(c) for c in cols]
            meta = pf.metadata.row_group(g)
            rows += meta.num_rows
            stats = [meta.column(i).statistics for i in idx]
            if all(s is not None and s.has_min_max for s in stats):
                lo = min(s.min for s in stats)
                hi = max(s.max for s in stats)
            else:
                src, dst = _row_group(pf, f, g, cols)
                lo = min(src.min(), dst.min()) if src.size else 0
                hi = max(src.max(), dst.max()) if src.size else -1
            if lo < 0:
                raise GraphError(f"{f}, row group {g}: node ids must be non-negative")
            top = max(top, int(hi) + 1)
    else:
        for src, dst, _line in _text_chunks(path, 0, os.path.getsize(path)):
            rows += src.shape[0]
            if src.size:
                if min(src.min(), dst.min()) < 0:
                    raise GraphError(f"{path}: node ids must be non-negative integers")
                top = max(top, int(max(src.max(), dst.max())) + 1)
    if top > MAX_AGENTS:
        raise GraphError(f"{path}: the edge list names node {top - 1:,}, so the graph would "
                         f"have {top:,} agents; ids must be below {MAX_AGENTS:,}. Renumber "
                         "the nodes 0..n-1")
    return top, rows


def _row_group(pf, path: str, g: int, cols: list[str]) -> tuple[np.ndarray, np.ndarray]:
    import pyarrow as pa

    table = pf.read_row_group(g, columns=cols)
    out = []
    for c in cols:
        col = table.column(c)
        if not pa.types.is_integer(col.type):
            raise GraphError(f"{path}: column {c!r} must hold integer node ids; got {col.type}")
        if col.null_count:
            raise GraphError(f"{path}, row group {g}: column {c!r} has {col.null_count} "
                             "null node ids")
        out.append(col.to_numpy().astype(np.int64))
    return out[0], out[1]


def read_part(gc, part: int, parts: int, check=None) -> tuple[np.ndarray, np.ndarray]:
    """Part ``part`` of ``parts`` of edge list ``gc.path`` as directed (src, dst) pairs
    (both directions for an undirected list). ``check(src, dst, where)`` validates ids."""
    path = gc.path
    srcs, dsts = [], []
    if _is_parquet(path):
        groups = _groups(path)
        for pf, g, cols, f in groups[len(groups) * part // parts:
                                     len(groups) * (part + 1) // parts]:
            src, dst = _row_group(pf, f, g, cols)
            if check is not None:
                check(src, dst, f"{f}, row group {g}")
            srcs.append(src)
            dsts.append(dst)
    else:
        size = os.path.getsize(path)
        for src, dst, line in _text_chunks(path, size * part // parts,
                                           size * (part + 1) // parts):
            if check is not None:
                check(src, dst, f"{path}, line {line}+")
            srcs.append(src)
            dsts.append(dst)
    src = np.concatenate(srcs) if srcs else np.empty(0, np.int64)
    dst = np.concatenate(dsts) if dsts else np.empty(0, np.int64)
    if not gc.directed:
        src, dst = np.concatenate([src, dst]), np.concatenate([dst, src])
    return src, dst


def _text_chunks(path: str, start: int, end: int):
    """(src, dst, first line number or 0) of the lines that start in bytes [start, end)."""
    with open(path, "rb") as fh:
        if start > 0:
            fh.seek(start - 1)
            if fh.read(1) != b"\n":
                fh.readline()  # the line under way belongs to the part before
        pos = fh.tell()
        while pos < end:
            data = fh.read(min(TEXT_CHUNK, max(end - pos, 1)))
            if not data:
                break
            if not data.endswith(b"\n"):
                data += fh.readline()  # finish the last line, even past `end`
            at = pos
            pos += len(data)
            yield (*_parse(path, data, at), 0)


def _parse(path: str, data: bytes, at: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "empty input file" is a warning in numpy
            arr = np.loadtxt(io.BytesIO(data), dtype=np.float64, comments="#", ndmin=2)
        ids = arr[:, :2]
        if arr.shape[1] in (2, 3) and np.all(ids == np.round(ids)) and np.all(np.abs(ids) < 2**53):
            return arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64)
    except (ValueError, IndexError, UserWarning):
        pass
    src, dst = [], []
    line0 = _line_number(path, at)
    for offset, raw in enumerate(data.decode("utf-8", "replace").splitlines()):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace(",", " ").split()
        try:
            if len(parts) < 2 or len(parts) > 3:
                raise ValueError
            u, v = int(parts[0]), int(parts[1])
            if len(parts) > 2:
                float(parts[2])  # an optional weight column
        except ValueError:
            raise GraphError(f"{path}, line {line0 + offset}: expected 'src dst' (two integer "
                             f"node ids, optionally a numeric weight); got {raw!r}") from None
        src.append(u)
        dst.append(v)
    return np.array(src, dtype=np.int64), np.array(dst, dtype=np.int64)


def _line_number(path: str, at: int) -> int:
    """The line number of byte ``at`` (counted only on the way to an error)."""
    count = 1
    with open(path, "rb") as fh:
        while at > 0:
            block = fh.read(min(at, 1 << 24))
            if not block:
                break
            count += block.count(b"\n")
            at -= len(block)
    return count


def check_ids(n: int):
    """An id check for ``read_part``: ids in [0, n), named by where they were read."""
    def check(src: np.ndarray, dst: np.ndarray, where: str) -> None:
        if not src.size:
            return
        lo, hi = min(src.min(), dst.min()), max(src.max(), dst.max())
        if lo < 0 or hi >= n:
            bad = int(lo if lo < 0 else hi)
            raise GraphError(f"{where}: node id {bad:,} is outside [0, {n:,}) (graph.n={n:,}); "
                             "set graph.n above the largest id or renumber the nodes")
    return check


def partition_edgelist(path: str, shards: int, out: str, *, directed: bool = False,
                       n: int | None = None) -> dict:
    """Rewrite edge list ``path`` as ``out/shard=K.parquet``: every edge in the file of the
    shard owning its source under the contiguous partition. One streaming pass (after the
    one that sizes it); memory is bounded by one row group or 64 MiB of text at a time.
    Returns sizes for the caller to print."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    top, rows = edgelist_size(path)
    n = top if n is None else n
    if n < top:
        raise GraphError(f"{path}: n={n} but the edge list names node {top - 1}")
    bounds = (np.arange(shards + 1, dtype=np.int64) * n) // shards
    os.makedirs(out, exist_ok=True)
    schema = pa.schema([("src", pa.int64()), ("dst", pa.int64())])
    writers = [pq.ParquetWriter(os.path.join(out, f"shard={k}.parquet"), schema)
               for k in range(shards)]
    counts = np.zeros(shards, dtype=np.int64)

    try:
        for src, dst in _stream(path):
            if not directed:
                src, dst = np.concatenate([src, dst]), np.concatenate([dst, src])
            owner = np.searchsorted(bounds, src, side="right") - 1
            order = np.argsort(owner, kind="stable")
            cut = np.searchsorted(owner[order], np.arange(shards + 1))
            for k in range(shards):
                sel = order[cut[k]:cut[k + 1]]
                if sel.size:
                    writers[k].write_table(pa.table({"src": src[sel], "dst": dst[sel]},
                                                    schema=schema))
                    counts[k] += sel.size
    finally:
        for w in writers:
            w.close()
    return {"n": int(n), "rows": int(rows), "directed_edges_per_shard": counts.tolist()}


def read_all(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Every (src, dst) of an edge list, as written (one process; ``read_part`` splits)."""
    parts = list(_stream(path))
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate([s for s, _ in parts]), np.concatenate([d for _, d in parts])


def _stream(path: str):
    if _is_parquet(path):
        for pf, g, cols, f in _groups(path):
            yield _row_group(pf, f, g, cols)
    else:
        for src, dst, _ in _text_chunks(path, 0, os.path.getsize(path)):
            yield src, dst
