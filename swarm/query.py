"""``swarm query``: user SQL over one run's logs, on a DuckDB connection that can reach
nothing else.

The SQL is the user's (or someone else's, pasted from a notebook), so it is
data: it must not read the machine's files, list its folders, write anywhere
(``COPY ... TO 'RUN/metrics.arrow'`` once destroyed a run), attach
databases, or install extensions from the network. The run's tables are
registered as views first; then the connection is locked:
``enable_external_access=false`` (no file system or network),
extension auto-install and auto-load off, Python replacement scans off (a
name in the SQL cannot reach a Python variable), and
``lock_configuration`` so that SQL cannot undo any of it. Only read-only
statements (SELECT, and EXPLAIN of one) run.

Saved analysis views (``cascades``, ``roles``) are computed only when the
statement's table references name them, as DuckDB's parser lists them: a
word in a comment or a string is not a reference.
"""

from __future__ import annotations

import pyarrow as pa

from swarm.errors import SwarmError

__all__ = ["run_query", "sandboxed_connection", "SAVED_VIEWS"]

#: Views computed on demand from the events, with what each holds.
SAVED_VIEWS = {
    "cascades": "one row per cascade tree: size, depth, breadth, structural virality",
    "roles": "one row per agent: its features, role and in_core",
}
_READ_ONLY = ("SELECT", "EXPLAIN")


def sandboxed_connection(tables: dict[str, object]):
    """A DuckDB connection that sees ``tables`` (Arrow tables or datasets) and nothing else.

    Examples
    --------
    >>> import pyarrow as pa
    >>> con = sandboxed_connection({"t": pa.table({"x": [1, 2]})})
    >>> con.sql("SELECT sum(x) FROM t").fetchall()
    [(3,)]
    >>> con.sql("SELECT * FROM read_csv('/etc/passwd')")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    PermissionException: Permission Error: file system operations are disabled
    """
    import duckdb

    con = duckdb.connect(":memory:", config={
        "enable_external_access": False,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "python_enable_replacements": False,
        # No spilling: DuckDB would write its temporary files into the current
        # directory. A query that needs more than memory_limit fails instead.
        "temp_directory": "",
        "memory_limit": f"{max(_memory_bytes() // 2, 256 * 1024**2) // 1024**2}MB",
    })
    for name, table in tables.items():
        con.register(name, table)
    con.execute("SET lock_configuration = true")
    return con


def _memory_bytes() -> int:
    """This machine's memory (DuckDB's own default limit is 80% of it)."""
    import os

    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return 4 * 1024**3


def run_query(run, sql: str) -> pa.Table:
    """Run read-only ``sql`` over ``run``'s views; SwarmError on anything else.

    Views: ``events`` (the chunks the manifest lists, checked), ``metrics``
    (once the run has finished), and the saved views the SQL names.
    """
    import duckdb

    # Parsing happens on a locked, empty connection too: DuckDB's module-level
    # helpers use a default connection, on which even listing the tables of
    # `EXPORT DATABASE 'dir'` creates the directory.
    parser = sandboxed_connection({})
    try:
        statements = parser.extract_statements(sql)
        if not statements:
            raise SwarmError("the query is empty; write a SELECT over events or metrics")
        for statement in statements:
            kind = statement.type.name
            if kind == "EXPLAIN" and not _explains_a_select(parser, statement.query):
                kind = "EXPLAIN ANALYZE, or EXPLAIN of a non-SELECT"
            if kind not in _READ_ONLY:
                raise SwarmError(f"swarm query runs read-only SELECT statements; got {kind} "
                                 f"({_first_line(statement.query.strip())[:60]}). To keep a "
                                 "result, use --format csv and redirect it to a file")
        names = parser.get_table_names(sql)
    except duckdb.Error as exc:
        raise SwarmError(f"query failed: {_first_line(exc)}") from None
    finally:
        parser.close()
    tables = {"events": run.events_dataset()}
    try:
        tables["metrics"] = run.metrics()
    except SwarmError:
        pass  # a running or failed run has no metrics table yet
    tables.update(_saved_views(run, names))
    con = sandboxed_connection(tables)
    try:
        _check_ranges(run, con)
        rel = con.sql(sql)
        if rel is None:  # a statement with no result set
            raise SwarmError("the statement returned no rows; use a SELECT")
        # DuckDB 2 renamed Relation.arrow() to to_arrow_table().
        return rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()
    except duckdb.PermissionException:
        raise SwarmError("swarm query reads only the run's own views (events, metrics, "
                         f"{', '.join(SAVED_VIEWS)}); files, folders, databases and "
                         "extensions are out of its reach") from None
    except duckdb.Error as exc:
        raise SwarmError(f"query failed: {_first_line(exc)}") from None
    finally:
        con.close()


def _explains_a_select(parser, text: str) -> bool:
    """A plain EXPLAIN of one SELECT (EXPLAIN ANALYZE runs the statement it explains)."""
    import re

    m = re.match(r"(?is)\s*explain\s+(.*)", text)
    if m is None or re.match(r"(?i)analy[sz]e\b", m.group(1)):
        return False
    inner = parser.extract_statements(m.group(1))
    return len(inner) == 1 and inner[0].type.name == "SELECT"


def _check_ranges(run, con) -> None:
    """The checks ``Run.events`` makes, in one DuckDB pass: rows as listed, ids and steps
    within the run's ranges (a chunk damaged in place must not answer silently)."""
    cols = list(run.bounds)
    if not cols:
        return
    values = con.sql("SELECT " + ", ".join(f"min({c}), max({c})" for c in cols)
                     + ", count(*) FROM events").fetchall()[0]
    run.check_spans({c: values[2 * i: 2 * i + 2] for i, c in enumerate(cols)})
    run.check_rows(values[-1])


def _saved_views(run, names: set[str]) -> dict[str, pa.Table]:
    """The analysis tables among the statement's table references, computed now."""
    views: dict[str, pa.Table] = {}
    names = {n.lower() for n in names}
    if "cascades" in names:
        from swarm.analysis.cascades import cascades

        try:
            views["cascades"] = cascades(run)
        except ValueError as exc:
            raise SwarmError(f"no `cascades` view for this run: {exc}") from None
    if "roles" in names:
        from swarm.analysis.report import core_analysis, interaction_graph, role_analysis

        events = run.events(columns=["step", "agent", "event", "target", "item", "root",
                                     "parent"])
        try:
            edges = interaction_graph(events)
            result = role_analysis(events, run.manifest["graph"]["n"], edges)
            core = core_analysis(events, run.manifest["graph"]["n"], edges)
        except ValueError as exc:
            raise SwarmError(f"no `roles` view for this run: {exc}") from None
        views["roles"] = result.features.append_column("role", pa.array(result.labels)) \
            .append_column("in_core", pa.array(core.core))
    return views


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
