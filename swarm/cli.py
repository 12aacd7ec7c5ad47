"""The ``swarm`` command line: run, validate, query and inspect population runs.

Errors that swarm raises on purpose (bad config, bad graph, existing run
directory, unreachable cluster) print one clear message and exit with code 2;
nothing half-written is left behind by a rejected config.
"""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path

import typer

from swarm.errors import RunInterrupted, SwarmError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="swarm: distributed simulation of large agent populations on Ray.")


class OutputFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command()
def run(
    config: str = typer.Argument(..., help="Run config (YAML)."),
    out: str = typer.Option(..., "--out", "-o", help="Run directory to create."),
    shards: int | None = typer.Option(None, "--shards", "-k", help="Override `shards`."),
    set_: list[str] = typer.Option(None, "--set", help="Override a key: dotted.key=value."),
    address: str | None = typer.Option(None, "--address", help="Ray cluster to join."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier run in --out."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Run a population from CONFIG and write its event log to --out."""
    from swarm.config import load_config
    from swarm.runner import run as run_population

    overrides = list(set_ or [])
    if shards is not None:
        overrides.append(f"shards={shards}")
    _run_and_report(out, lambda: run_population(
        load_config(config, overrides), out, address=address, overwrite=overwrite,
        progress=progress and sys.stderr.isatty()))


@app.command()
def resume(
    run_dir: str = typer.Argument(..., metavar="RUN", help="Run directory (path or URI)."),
    address: str | None = typer.Option(None, "--address", help="Ray cluster to join."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Continue a stopped, interrupted or failed run from its last complete checkpoint."""
    from swarm.runner import resume as resume_run

    _run_and_report(run_dir, lambda: resume_run(run_dir, address=address,
                                                progress=progress and sys.stderr.isatty()))


def _run_and_report(where: str, start) -> None:
    """Call ``start()`` (a run or a resume) and print its summary, or say how it stopped.

    Ctrl-C exits with 130 and the resume command; swarm's own errors exit with 2.
    """
    try:
        result = start()
    except RunInterrupted as exc:
        typer.secho(f"interrupted after step {exc.step}; checkpoint written.", err=True,
                    fg=typer.colors.YELLOW)
        typer.echo(f"resume with: swarm resume {exc.path}", err=True)
        raise typer.Exit(code=130) from None
    except KeyboardInterrupt:
        typer.secho("stopped at once (second Ctrl-C); steps after the last checkpoint will "
                    "be replayed.", err=True, fg=typer.colors.YELLOW)
        typer.echo(f"resume with: swarm resume {where}", err=True)
        raise typer.Exit(code=130) from None
    except SwarmError as exc:
        _fail(exc)
    _print_summary(result)


def _print_summary(result) -> None:
    m = result.manifest
    g, t = m["graph"], m["timings"]
    metrics = result.metrics()
    where = result.store.child_uri
    typer.echo(f"run directory: {result.path}")
    typer.echo(f"  events:   {where('events')}  ({m['events']:,} rows)")
    typer.echo(f"  metrics:  {where('metrics.arrow')}")
    typer.echo(f"  manifest: {where('manifest.json')}")
    typer.echo(f"graph: n={g['n']:,}, directed edges={g['directed_edges']:,} "
               f"(built in {g['build_seconds']:.2f} s); shards={m['partition']['shards']} "
               f"(edge cut {m['partition']['edge_cut_fraction']:.1%})")
    rate = g["n"] * m["steps_run"] / max(t["run_seconds"], 1e-9)
    typer.echo(f"steps: {m['steps_run']} ({m['stop_reason']}) in {t['run_seconds']:.2f} s "
               f"({rate:,.0f} agent-steps/s; setup {t['setup_seconds']:.2f} s)")
    if metrics.num_rows:
        last = metrics.slice(metrics.num_rows - 1).to_pylist()[0]
        from swarm.envs import ENV_REGISTRY

        env_cls = ENV_REGISTRY.get(m["env"]["kind"])
        # Envs with derived metrics report those; their additive parts are bookkeeping.
        names = m["env"]["metrics"]
        if env_cls is not None:
            names = env_cls.summary_metrics or env_cls.derived_metric_names or names
        env_metrics = ", ".join(f"{k}={last[k]:,.4g}" if isinstance(last.get(k), float)
                                else f"{k}={last[k]:,}" for k in names if k in last)
        typer.echo(f"last step ({m['env']['kind']}): {env_metrics}")
        cols = metrics.column_names
        if "policy_decisions" in cols and sum(metrics["policy_decisions"].to_pylist()):
            total = {c: sum(metrics[c].to_pylist()) for c in
                     ("policy_decisions", "policy_calls", "policy_calls_saved",
                      "policy_fallbacks", "decide_seconds", "seconds")}
            typer.echo(f"models: {total['policy_decisions']:,} decisions, "
                       f"{total['policy_calls']:,} model calls "
                       f"({total['policy_calls_saved']:,} saved by dedup), "
                       f"{total['policy_fallbacks']:,} fallbacks; decide "
                       f"{total['decide_seconds'] / max(total['seconds'], 1e-9):.0%} of step time")
    typer.echo(f"query it: swarm query {result.path} \"SELECT event, count(*) FROM events "
               "GROUP BY event\"")


@app.command()
def validate(
    config: str = typer.Argument(..., help="Run config (YAML)."),
    set_: list[str] = typer.Option(None, "--set", help="dotted.key=value override."),
) -> None:
    """Check CONFIG without running it; print the fully resolved config."""
    import yaml

    from swarm.config import load_config

    try:
        cfg = load_config(config, list(set_ or []))
    except SwarmError as exc:
        _fail(exc)
    typer.echo(f"{config}: valid")
    typer.echo(yaml.safe_dump(cfg.dump(), sort_keys=False).rstrip())


@app.command()
def query(
    run_dir: str = typer.Argument(..., metavar="RUN", help="Run directory."),
    sql: str = typer.Argument(..., help="SQL over the views `events` and `metrics`, and the "
                              "saved views `cascades` (one row per cascade tree) and `roles` "
                              "(one row per agent: features, role, in_core)."),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", "-f"),
) -> None:
    """Run SQL (DuckDB) over a run's Arrow files: views `events` and `metrics`, and saved
    analysis views (`cascades`: size, depth, breadth, structural virality per tree;
    `roles`: per agent, its features, `role` and `in_core`, as in `swarm analyze`)."""
    import duckdb

    from swarm.rundir import open_run

    try:
        result = open_run(run_dir)
        con = duckdb.connect()
        con.register("events", result.events_dataset())
        try:
            con.register("metrics", result.metrics())
        except SwarmError:
            pass  # a running or failed run has no metrics table yet
        for name, table in _saved_views(result, sql).items():
            con.register(name, table)
        rel = con.sql(sql)
        if rel is None:  # a statement with no result set
            raise SwarmError("the statement returned no rows; use a SELECT")
        # DuckDB 2 renamed Relation.arrow() to to_arrow_table().
        table = rel.to_arrow_table() if hasattr(rel, "to_arrow_table") else rel.arrow()
    except SwarmError as exc:
        _fail(exc)
    except duckdb.Error as exc:
        _fail(SwarmError(f"query failed: {exc}"))
    if fmt is OutputFormat.json:
        typer.echo(json.dumps(table.to_pylist(), default=str))
    elif fmt is OutputFormat.csv:
        import io

        import pyarrow.csv as pacsv

        buf = io.BytesIO()
        pacsv.write_csv(table, buf)
        typer.echo(buf.getvalue().decode().rstrip())
    else:
        _print_table(table)


@app.command()
def analyze(
    run_dir: str = typer.Argument(..., metavar="RUN", help="Run directory."),
    out: str = typer.Option(None, "--out", "-o",
                            help="Where metrics.json and report.html go [default: RUN/analysis]."),
    window: int = typer.Option(None, "--window", min=1,
                               help="Steps per window for socialization [default: steps/10]."),
) -> None:
    """Analyze a run: cascades, socialization, coordination; writes metrics.json and report.html."""
    from swarm.analysis.report import analyze as run_analysis
    from swarm.analysis.report import write_report

    try:
        result = run_analysis(run_dir, window=window)
    except SwarmError as exc:
        _fail(exc)
    metrics_path, report_path = write_report(result, out or str(Path(run_dir) / "analysis"))
    for s in result["sections"]:
        typer.echo(f"{s['title']}: " + ", ".join(
            f"{k}={v}" for k, v in s["numbers"].items()
            if isinstance(v, (int, float, str)) and not isinstance(v, bool))[:300])
    typer.echo(f"wrote {metrics_path} and {report_path} ({result['seconds']['total']:.1f} s)")


def _saved_views(run, sql: str) -> dict:
    """Analysis tables the SQL names (computed only then): ``cascades``, ``roles``."""
    import re

    views = {}
    if re.search(r"\bcascades\b", sql, re.IGNORECASE):
        from swarm.analysis.cascades import cascades

        try:
            views["cascades"] = cascades(run)
        except ValueError as exc:
            raise SwarmError(f"no `cascades` view for this run: {exc}") from None
    if re.search(r"\broles\b", sql, re.IGNORECASE):
        import pyarrow as pa

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


def _print_table(table) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(show_lines=False)
    for name in table.column_names:
        t.add_column(name)
    for row in table.to_pylist()[:1000]:
        t.add_row(*["" if v is None else str(v) for v in row.values()])
    Console(width=200).print(t)
    if table.num_rows > 1000:
        typer.echo(f"... {table.num_rows - 1000} more rows (use --format csv for all)")


@app.command()
def info(run_dir: str = typer.Argument(..., metavar="RUN", help="Run directory.")) -> None:
    """Print a run's status, config, graph, partition and timings."""
    from swarm.rundir import open_run

    try:
        result = open_run(run_dir)
    except SwarmError as exc:
        _fail(exc)
    m = result.manifest
    typer.echo(f"run: {result.path}")
    typer.echo(f"status: {m.get('status')}" + (f" ({m['error']})" if m.get("error") else ""))
    for key in ("seed", "steps_run", "stop_reason", "events", "backend", "restarts",
                "resumes"):
        if key in m:
            typer.echo(f"{key}: {m[key]}")
    typer.echo("graph: " + json.dumps(m.get("graph", {})))
    typer.echo("partition: " + json.dumps(m.get("partition", {})))
    if m.get("checkpoint"):
        typer.echo(f"checkpoint: step {m['checkpoint']['step']} "
                   f"({result.store.child_uri(m['checkpoint']['path'])})")
        if m.get("status") != "completed":
            typer.echo(f"continue with: swarm resume {result.path}")
    if "timings" in m:
        typer.echo("timings: " + json.dumps(m["timings"]))
    typer.echo("versions: " + json.dumps(m.get("versions", {})))
    typer.echo("config: " + json.dumps(m.get("config", {})))


_JOBS_ADDRESS_HELP = ("Ray Jobs API (dashboard) URL; default RAY_API_SERVER_ADDRESS, an "
                      "http(s):// RAY_ADDRESS, or http://127.0.0.1:8265.")


@app.command()
def submit(
    config: str = typer.Argument(..., help="Run config (YAML), inside the current folder."),
    out: str = typer.Option(..., "--out", "-o",
                            help="Run directory on storage every node sees (absolute or URI)."),
    address: str | None = typer.Option(None, "--address", help=_JOBS_ADDRESS_HELP),
    shards: int | None = typer.Option(None, "--shards", "-k", help="Override `shards`."),
    set_: list[str] = typer.Option(None, "--set", help="Override a key: dotted.key=value."),
) -> None:
    """Send a run to a Ray cluster as a job (Ray Jobs API); the current folder is uploaded."""
    from swarm.cluster.jobs import submit_run

    try:
        job = submit_run(config, out, address=address, overrides=list(set_ or []),
                         shards=shards)
    except SwarmError as exc:
        _fail(exc)
    typer.echo(f"submitted job {job.job_id} to {job.address}")
    typer.echo(f"  entrypoint:    {job.entrypoint}")
    typer.echo(f"  run directory: {job.out} (on the cluster)")
    typer.echo("follow it:")
    typer.echo(f"  swarm status {job.job_id} --address {job.address}")
    typer.echo(f"  swarm logs {job.job_id} --address {job.address} --follow")


@app.command()
def status(
    job_id: str = typer.Argument(..., metavar="JOB", help="Job id printed by `swarm submit`."),
    address: str | None = typer.Option(None, "--address", help=_JOBS_ADDRESS_HELP),
) -> None:
    """Print a submitted job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
    from swarm.cluster.jobs import job_status

    try:
        report = job_status(job_id, address=address)
    except SwarmError as exc:
        _fail(exc)
    typer.echo(f"job: {report.job_id}")
    typer.echo(f"status: {report.status}")
    if report.message:
        typer.echo(f"message: {report.message}")
    typer.echo(f"entrypoint: {report.entrypoint}")
    if "swarm_out" in report.metadata:
        typer.echo(f"run directory: {report.metadata['swarm_out']}")


@app.command()
def logs(
    job_id: str = typer.Argument(..., metavar="JOB", help="Job id printed by `swarm submit`."),
    address: str | None = typer.Option(None, "--address", help=_JOBS_ADDRESS_HELP),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing until it ends."),
) -> None:
    """Print a submitted job's output (the `swarm run` summary once it is done)."""
    from swarm.cluster.jobs import follow_job_logs, job_logs

    try:
        if follow:
            for chunk in follow_job_logs(job_id, address=address):
                typer.echo(chunk, nl=False)
        else:
            typer.echo(job_logs(job_id, address=address), nl=False)
    except SwarmError as exc:
        _fail(exc)


@app.command("serve-policy")
def serve_policy(
    model_dir: str = typer.Argument(..., metavar="MODEL_DIR",
                                    help="Checkpoint directory (config.json, weights, tokenizer)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface (0.0.0.0: other machines)."),
    port: int = typer.Option(8000, "--port", help="Port (0: any free port)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:i."),
    dtype: str = typer.Option("auto", "--dtype",
                              help="auto (float64 on CPU, float32 on GPU), float32, float64, "
                                   "float16, bfloat16."),
    batch_window_ms: float = typer.Option(3.0, "--batch-window-ms",
                                          help="Wait this long to merge concurrent requests."),
    batch_size: int = typer.Option(64, "--batch-size", help="Most rows per forward pass."),
    served_model_name: str | None = typer.Option(None, "--served-model-name",
                                                 help="The model name clients send."),
) -> None:
    """Serve a local model as an OpenAI-compatible endpoint (/v1/completions, /v1/models).

    LLM-style policies reach it with `backend: openai` and `base_url:
    http://HOST:PORT/v1`; so do other tools that speak the OpenAI API.
    """
    from swarm.policies.backends.base import BackendError
    from swarm.policies.serve import serve

    try:
        serve(model_dir, host=host, port=port, device=device, dtype=dtype,
              batch_window_ms=batch_window_ms, served_model_name=served_model_name,
              batch_size=batch_size)
    except BackendError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def sweep(
    config: str = typer.Argument(..., help="Base run config (YAML)."),
    grid: list[str] = typer.Option(..., "--grid", "-g",
                                   help="dotted.key=v1,v2,... (repeat for more keys)."),
    out: str = typer.Option(..., "--out", "-o", help="Sweep directory (path or URI)."),
    set_: list[str] = typer.Option(None, "--set", help="Override a base key: dotted.key=value."),
    address: str | None = typer.Option(None, "--address", help="Ray cluster to join."),
    local: bool = typer.Option(False, "--local", help="Run the points one by one here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing sweep."),
) -> None:
    """Run the cartesian product of --grid values, one run directory per point (Ray tasks).

    A point that is invalid or fails is reported in the index, not fatal; exit code 1
    when any point failed.
    """
    from swarm.sweep import parse_grid
    from swarm.sweep import sweep as run_sweep

    def report(row: dict) -> None:
        values = ", ".join(f"{k}={row[k]}" for k in grid_keys)
        status = row["status"] if row["status"] == "completed" else \
            f"{row['status']}: {row['error']}"
        typer.echo(f"point {row['point']:>3} [{values}]: {status}")

    try:
        parsed = parse_grid(list(grid))
        grid_keys = list(parsed)
        index = run_sweep(config, parsed, out, overrides=list(set_ or []),
                          backend="local" if local else "ray", address=address,
                          overwrite=overwrite, on_point=report)
    except SwarmError as exc:
        _fail(exc)
    failed = sum(s != "completed" for s in index["status"].to_pylist())
    typer.echo(f"{index.num_rows} points, {failed} failed; index: {out}/index.arrow "
               f"(swarm query works on each point's run directory)")
    if failed:
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    app()
