"""The ``swarm`` command line: run, validate, query and inspect population runs.

Errors that swarm raises on purpose print one clear message and exit with
the code of their kind: 2 for bad input (a config, a graph, a run directory,
an address), 3 for a run-time failure (a full disk, a vanished directory,
shards that kept dying), 130 for Ctrl-C. Nothing half-written is left behind
by a rejected config.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path

import typer

from swarm.errors import ConfigError, RunInterrupted, SwarmError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="swarm: distributed simulation of large agent populations on Ray.")


class OutputFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=getattr(exc, "exit_code", 2))


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
    trust_endpoint: bool = typer.Option(
        False, "--trust-endpoint",
        help="Resume another user's run even though its config calls model endpoints "
             "(prompts and any API key go there)."),
) -> None:
    """Continue a stopped, interrupted or failed run from its last complete checkpoint."""
    from swarm.runner import resume as resume_run

    _run_and_report(run_dir, lambda: resume_run(run_dir, address=address,
                                                progress=progress and sys.stderr.isatty(),
                                                trust_endpoint=trust_endpoint))


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
    typer.echo(f"  metrics:  {where('metrics.arrow')}  (timings: {where('timings.arrow')})")
    typer.echo(f"  manifest: {where('manifest.json')}")
    typer.echo(f"graph: n={g['n']:,}, directed edges={g['directed_edges']:,} "
               f"(built in {g['build_seconds']:.2f} s); shards={m['partition']['shards']} "
               f"(edge cut {m['partition']['edge_cut_fraction']:.1%})")
    rate = g["n"] * m["steps_run"] / max(t["run_seconds"], 1e-9)
    typer.echo(f"steps: {m['steps_run']} ({m['stop_reason']}) in {t['run_seconds']:.2f} s "
               f"({rate:,.0f} agent-steps/s; setup {t['setup_seconds']:.2f} s)")
    if metrics.num_rows:
        last = metrics.slice(metrics.num_rows - 1).to_pylist()[0]
        # What the env declared worth a reader's time (its additive parts are bookkeeping).
        names = m["env"].get("summary_metrics") or m["env"]["metrics"]
        env_metrics = ", ".join(f"{k}={last[k]:,.4g}" if isinstance(last.get(k), float)
                                else f"{k}={last[k]:,}" for k in names if k in last)
        typer.echo(f"last step ({m['env']['kind']}): {env_metrics}")
        cols = metrics.column_names
        if "policy_decisions" in cols and sum(metrics["policy_decisions"].to_pylist()):
            timings = result.timings()
            total = {c: sum(metrics[c].to_pylist()) for c in
                     ("policy_decisions", "policy_calls", "policy_calls_saved",
                      "policy_fallbacks")}
            total.update({c: sum(timings[c].to_pylist()) for c in ("decide_seconds", "seconds")})
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
def plan(
    config: str = typer.Argument(..., help="Run config (YAML)."),
    set_: list[str] = typer.Option(None, "--set", help="dotted.key=value override."),
    shards: int | None = typer.Option(None, "--shards", "-k", help="Override `shards`."),
    nodes: int | None = typer.Option(None, "--nodes", help="Nodes of the cluster to plan for."),
    node_memory: float | None = typer.Option(
        None, "--node-memory", help="GiB of memory per node (default: this machine's)."),
) -> None:
    """Estimate a run from CONFIG alone, before anything is built: bytes per shard, nodes
    needed, bytes exchanged per step. Exits 1 when it does not fit --nodes."""
    from swarm.config import load_config
    from swarm.memory import GIB, _meminfo_available, plan_for

    overrides = list(set_ or [])
    if shards is not None:
        overrides.append(f"shards={shards}")
    try:
        cfg = load_config(config, overrides)
        node_bytes = int(node_memory * GIB) if node_memory else _meminfo_available()
        text, fits = plan_for(cfg, nodes=nodes, node_bytes=node_bytes)
    except SwarmError as exc:
        _fail(exc)
    typer.echo(text)
    if not fits:
        raise typer.Exit(code=1)


graph_app = typer.Typer(no_args_is_help=True, help="Edge lists too big for one process.")
app.add_typer(graph_app, name="graph")


@graph_app.command("partition")
def graph_partition(
    edges: str = typer.Argument(..., help="Edge list: text (src dst per line) or Parquet."),
    shards: int = typer.Option(..., "--shards", "-k", min=1, help="Shards to split for."),
    out: str = typer.Option(..., "--out", "-o", help="Folder for shard=K.parquet files."),
    directed: bool = typer.Option(False, "--directed", help="Edges are one-way."),
    n: int | None = typer.Option(None, "--n", help="Agents (default: largest id + 1)."),
) -> None:
    """Rewrite EDGES as one Parquet file per shard (the contiguous partition's owners),
    in one streaming pass of bounded memory. The folder is itself an edge list:
    `graph: {kind: edgelist, path: OUT, directed: true}` (both directions are written)."""
    from swarm.edgelist import partition_edgelist

    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        _fail(ConfigError(f"{out} exists and is not an empty folder; choose a new folder "
                          "for the shard files"))
    try:
        report = partition_edgelist(edges, shards, out, directed=directed, n=n)
    except SwarmError as exc:
        _fail(exc)
    typer.echo(f"{report['rows']:,} edges of {report['n']:,} agents -> {shards} files in {out} "
               f"(directed edges per shard: {report['directed_edges_per_shard']})")
    typer.echo(f"run it with: graph: {{kind: edgelist, path: {out}, directed: true, "
               f"n: {report['n']}}}")


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
    `roles`: per agent, its features, `role` and `in_core`, as in `swarm analyze`).

    The SQL sees only the run's own files: read-only statements, no file or
    network access, no extensions (see swarm.query)."""
    from swarm.query import run_query
    from swarm.rundir import open_run

    try:
        result = open_run(run_dir)
        table = run_query(result, sql)
    except SwarmError as exc:
        _fail(exc)
    _note_unlisted(result)
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
    from swarm.storage import RunStore

    try:
        # RUN/analysis through the run's store: a link there (in a run directory from
        # elsewhere) must not send the report into some other folder.
        if out is None:
            store = RunStore(run_dir)
            out = store.path("analysis") if store.local else str(Path(run_dir) / "analysis")
        result = run_analysis(run_dir, window=window)
        metrics_path, report_path = write_report(result, out)
    except SwarmError as exc:
        _fail(exc)
    for s in result["sections"]:
        typer.echo(f"{s['title']}: " + ", ".join(
            f"{k}={v}" for k, v in s["numbers"].items()
            if isinstance(v, (int, float, str)))[:300])
    typer.echo(f"wrote {metrics_path} and {report_path} ({result['seconds']['total']:.1f} s)")


def _note_unlisted(run) -> None:
    """Say when chunks in the run directory were left out (the manifest does not list them)."""
    if run.unlisted_chunks:
        typer.secho(f"note: {len(run.unlisted_chunks)} event chunk(s) in {run.path} are not in "
                    "its manifest (written after its last update by a run that stopped, or put "
                    f"there) and were left out; first: {run.unlisted_chunks[0]}", err=True,
                    fg=typer.colors.YELLOW)


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
def verify(run_dir: str = typer.Argument(..., metavar="RUN", help="Run directory.")) -> None:
    """Check every file of a run against its manifest: sizes, rows, checksums, and the
    ranges of agent ids and steps. Exit code 1 names each problem; 0 when all is intact."""
    from swarm.rundir import open_run

    try:
        result = open_run(run_dir)
        problems = result.verify()
    except SwarmError as exc:
        _fail(exc)
    if problems:
        for line in problems:
            typer.secho(f"problem: {line}", fg=typer.colors.RED, err=True)
        typer.echo(f"{result.path}: {len(problems)} problem(s); the run's answers cannot be "
                   "trusted until they are fixed (rerun, or resume from an intact checkpoint)")
        raise typer.Exit(code=1)
    files = len(result.files) + sum(len((result.manifest.get(k) or {}).get("files", {}))
                                    for k in ("checkpoint", "previous_checkpoint"))
    typer.echo(f"{result.path}: intact ({files} files match their sizes, rows and checksums; "
               "ids and steps within range)")


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
    max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes",
                                       help="Largest request body in bytes (over: HTTP 413)."),
    max_prompts: int = typer.Option(256, "--max-prompts", help="Most prompts per request."),
    max_prompt_tokens: int | None = typer.Option(
        None, "--max-prompt-tokens",
        help="Most tokens per prompt (default: the model's context length)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens",
                                       help="Largest max_tokens a request may ask for."),
    read_timeout: float = typer.Option(30.0, "--read-timeout",
                                       help="Seconds a client has to send its request body."),
    idle_timeout: float = typer.Option(
        15.0, "--idle-timeout", help="Seconds before a connection without a request is closed."),
    api_key_env: str | None = typer.Option(
        None, "--api-key-env", metavar="NAME",
        help="Require 'Authorization: Bearer KEY'; KEY is read at start from the environment "
             "variable NAME (must end in _API_KEY, e.g. SWARM_SERVE_API_KEY)."),
) -> None:
    """Serve a local model as an OpenAI-compatible endpoint (/v1/completions, /v1/models).

    LLM-style policies reach it with `backend: openai` and `base_url:
    http://HOST:PORT/v1`; so do other tools that speak the OpenAI API.
    Requests over a limit get HTTP 400 (413 for the body) naming the option
    that raises it.
    """
    from swarm.policies.backends.base import BackendError
    from swarm.policies.http_server import ServeLimits, serve

    try:
        limits = ServeLimits(max_body_bytes=max_body_bytes, max_prompts=max_prompts,
                             max_prompt_tokens=max_prompt_tokens, max_new_tokens=max_new_tokens,
                             read_timeout_s=read_timeout, idle_timeout_s=idle_timeout)
        serve(model_dir, host=host, port=port, device=device, dtype=dtype,
              batch_window_ms=batch_window_ms, served_model_name=served_model_name,
              batch_size=batch_size, limits=limits, api_key_env=api_key_env)
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
