"""``swarm analyze``: every analysis that applies to a run, as metrics.json and report.html.

``analyze(run)`` looks at what the run's env logged and returns sections:
an overview (events by type, agents, steps), the env's metrics over time,
cascades (trees, size distribution and its power-law fit) where there are
root/parent columns, socialization (stabilization, turnover, inertia,
influence persistence) where agents take several kinds of action, and
coordination outcomes for consensus, commons and games runs; AgentsNet task
success, the agents at fault (on a drawing of a small graph) and the rounds to
agreement for coordination runs; opinion runs get their consensus and
polarization figures. ``write_report`` writes
``metrics.json`` (the numbers) and ``report.html``: one self-contained page,
plots inline as PNG, readable offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = ["analyze", "write_report"]

#: Runs with fewer cascades than this get no size-distribution fit.
MIN_CASCADES_FOR_FIT = 30


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _figure(width: float = 6.0, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def _clean(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _overview(run, events: pa.Table, metrics: pa.Table) -> dict:
    import pyarrow.compute as pc

    counts = pc.value_counts(events.column("event").cast(pa.string())).to_pylist()
    by_type = {c["values"]: c["counts"] for c in sorted(counts, key=lambda c: -c["counts"])}
    m = run.manifest
    numbers = {"env": m["env"]["kind"], "agents": m.get("graph", {}).get("n"),
               "steps": metrics.num_rows, "events": events.num_rows,
               "events_by_type": by_type, "status": m.get("status")}
    return {"title": "Overview", "numbers": numbers, "plots": []}


def _metrics_over_time(run, metrics: pa.Table) -> dict | None:
    env = run.manifest.get("env", {})
    # The run recorded what to show first; a run from before that shows its env's metrics.
    names = [c for c in (env.get("summary_metrics") or env.get("metrics") or ())
             if c in metrics.column_names]
    names = [c for c in names if "seconds" not in c][:6]
    if not names or metrics.num_rows == 0:
        return None
    step = np.asarray(metrics.column("step"))
    fig, ax = _figure()
    for c in names:
        y = np.asarray(metrics.column(c).to_numpy(zero_copy_only=False), dtype=np.float64)
        ax.plot(step, y, label=c)
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
    ax.set_title("metrics per step")
    last = {c: metrics.column(c)[-1].as_py() for c in names}
    return {"title": "Metrics over time", "numbers": {"last_step": last}, "plots": [_png(fig)]}


def _cascades(events: pa.Table) -> dict | None:
    from swarm.analysis.cascades import cascade_nodes, cascade_table
    from swarm.analysis.powerlaw_fit import fit_power_law

    try:
        t = cascade_table(**cascade_nodes(events))
    except ValueError as exc:
        if "no cascade events" in str(exc):
            return None
        return {"title": "Cascades", "numbers": {}, "plots": [], "notes": [f"Not computed: {exc}"]}
    if t.num_rows == 0:
        return None
    size = np.asarray(t.column("size"))
    vir = np.asarray(t.column("structural_virality"))
    numbers: dict[str, Any] = {
        "cascades": t.num_rows, "nodes": int(np.asarray(t.column("nodes")).sum()),
        "mean_size": float(size.mean()),
        "max_size": int(size.max()), "median_size": float(np.median(size)),
        "max_depth": int(np.asarray(t.column("depth")).max()),
        "mean_structural_virality": float(np.nanmean(vir)) if np.isfinite(vir).any() else None,
        "share_of_single_node_cascades": float((size == 1).mean()),
    }
    notes = []
    fit = None
    if t.num_rows >= MIN_CASCADES_FOR_FIT and size.min() != size.max():
        fit = fit_power_law(size)
        numbers["power_law"] = fit.to_dict()
        notes.append(f"Discrete power-law fit: alpha = {fit.alpha:.3f} +/- {fit.sigma:.3f} "
                     f"above xmin = {fit.xmin} ({fit.n_tail} of {fit.n} cascades); versus "
                     f"lognormal: {fit.preferred('lognormal')}, versus exponential: "
                     f"{fit.preferred('exponential')} (likelihood ratio, 10% level).")
    else:
        notes.append(f"No size-distribution fit: {t.num_rows} cascades (needs "
                     f"{MIN_CASCADES_FOR_FIT} and more than one size).")
    fig, ax = _figure()
    xs = np.sort(size)
    ccdf = 1.0 - np.arange(xs.shape[0]) / xs.shape[0]
    ax.loglog(xs, ccdf, ".", ms=3, label="cascades")
    if fit is not None:
        grid = np.unique(xs[xs >= fit.xmin]).astype(np.float64)
        tail = (xs >= fit.xmin).mean()
        ax.loglog(grid, tail * (grid / fit.xmin) ** (1.0 - fit.alpha), "-",
                  label=f"power law, alpha={fit.alpha:.2f}")
    ax.set_ylim(ccdf.min() / 2, 1.5)
    ax.set_xlabel("cascade size")
    ax.set_ylabel("P(size >= x)")
    ax.legend(fontsize=7)
    ax.set_title("cascade size CCDF")
    top = t.sort_by([("size", "descending")]).slice(0, 10)
    return {"title": "Cascades", "numbers": numbers, "plots": [_png(fig)], "notes": notes,
            "table": top.to_pylist()}


def _socialization(run, events: pa.Table, window: int) -> dict | None:
    from swarm.analysis import socialization as so

    if run.manifest["env"]["kind"] == "cascade":
        return None  # activate/recover are states of a contagion, not chosen actions
    step, agent, code, names = so.action_columns(events)
    if len(names) < 2 or agent.min() == agent.max():
        return None
    stab, settled = so.collective_stabilization(step, agent, code, window)
    turn = so.individual_turnover(step, agent, code, window)
    numbers: dict[str, Any] = {"window": window, "action_types": names,
                               "stabilized_at_window": settled,
                               "mean_turnover": _mean(turn, "turnover")}
    notes = [f"Windows of {window} steps. The action mix settles (total variation below "
             f"0.05 from then on) at window {settled}." if settled is not None else
             f"Windows of {window} steps. The action mix does not settle (total variation "
             "stays above 0.05)."]
    try:
        from swarm.config import run_graph

        graph = run_graph(run.manifest["config"])
        src = np.repeat(np.arange(graph.n), np.diff(graph.indptr))
        inert = so.individual_inertia(step, agent, code, src, graph.indices, graph.n, window)
        numbers["mean_self_similarity"] = _mean(inert, "self_similarity")
        numbers["mean_neighbour_similarity"] = _mean(inert, "neighbour_similarity")
    except Exception as exc:  # the graph may be gone (an edge-list file moved)
        inert = None
        notes.append(f"Inertia skipped: the run's graph could not be rebuilt ({exc}).")
    infl = so.influence_persistence(events, window)
    if infl.num_rows:
        numbers["mean_top_overlap"] = _mean(infl, "overlap")
    fig, ax = _figure()
    w = np.asarray(stab.column("first_step"))
    ax.plot(w, np.asarray(stab.column("distance")), label="population mix change")
    if turn.num_rows:
        ax.plot(np.asarray(turn.column("window")) * window, np.asarray(turn.column("turnover")),
                label="individual turnover")
    if inert is not None and inert.num_rows:
        x = np.asarray(inert.column("window")) * window
        ax.plot(x, np.asarray(inert.column("self_similarity")), label="similarity to own past")
        ax.plot(x, np.asarray(inert.column("neighbour_similarity")),
                label="similarity to neighbours' past")
    if infl.num_rows:
        ax.plot(np.asarray(infl.column("window")) * window, np.asarray(infl.column("overlap")),
                label="top-100 influencer overlap")
    ax.set_xlabel("step")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    ax.set_title("socialization")
    return {"title": "Socialization and influence", "numbers": numbers,
            "plots": [_png(fig)], "notes": notes}


#: Cox and cloglog fits use at most this many (agent, item) pairs (a uniform sample).
MAX_PAIRS_FOR_MODELS = 20_000


def _exposure(run, events: pa.Table, metrics: pa.Table) -> dict | None:
    from swarm.analysis import exposure as ex

    env = run.manifest["env"]["kind"]
    cfg = run.manifest["config"]
    graph = None
    if env == "cascade":
        if cfg["env"].get("model") != "linear_threshold":
            return None
        from swarm.config import run_graph

        graph = run_graph(cfg)
    elif env != "feed":
        return None
    end = int(np.asarray(metrics.column("step")).max()) if metrics.num_rows else None
    try:
        table = ex.exposure_table(events, graph, end_step=end)
    except ValueError as exc:
        return {"title": "Exposure response", "numbers": {}, "plots": [],
                "notes": [f"Not computed: {exc}"]}
    if table.num_rows == 0:
        return None
    curve = ex.exposure_curve(table, max_k=10)
    numbers: dict[str, Any] = {"pairs": table.num_rows,
                               "adopted": int(np.asarray(table.column("adopted")).sum()),
                               "p_k": {int(k): round(float(p), 4) for k, p in zip(
                                   curve.column("k").to_pylist(), curve.column("p").to_pylist(),
                                   strict=True) if p is not None}}
    notes = []
    sample = table
    if table.num_rows > MAX_PAIRS_FOR_MODELS:
        rows = np.sort(np.random.default_rng(0).choice(table.num_rows, MAX_PAIRS_FOR_MODELS,
                                                       replace=False))
        sample = table.take(pa.array(rows))
        notes.append(f"Cox and cloglog models on a uniform sample of {MAX_PAIRS_FOR_MODELS:,} "
                     f"of {table.num_rows:,} (agent, item) pairs.")
    for key, fit in (("cox", ex.exposure_cox), ("cloglog", ex.exposure_cloglog)):
        try:
            numbers[key] = fit(sample)
        except (ValueError, ArithmeticError) as exc:
            notes.append(f"{key} not fitted: {exc}")
        except Exception as exc:  # lifelines/statsmodels convergence failures
            notes.append(f"{key} did not converge: {type(exc).__name__}: {exc}")
    basis = "observational"
    kinds = set(events.column("event").cast(pa.string()).unique().to_pylist())
    if "inject" in kinds:
        try:
            numbers["injection"] = ex.injection_effect(events, run.manifest["graph"]["n"])
            basis = "randomized injection"
        except ValueError as exc:
            notes.append(f"Injection test not computed: {exc}")
    numbers["conclusion_rests_on"] = basis
    if basis == "observational":
        notes.append("Observational only: a falling p(k) or a hazard ratio below 1 does not by "
                     "itself show diminishing returns (agents with different constant adoption "
                     "chances give a falling pooled curve). Run with the cascade env's "
                     "`inject` option for the randomized test.")
    else:
        inj = numbers["injection"]
        notes.append(f"The conclusion rests on the randomized injection: injected agents "
                     f"adopted {inj.get('difference', float('nan')):+.3f} more than controls "
                     f"(p = {inj.get('p_value', float('nan')):.3g}).")
    fig, ax = _figure()
    k = np.asarray(curve.column("k"))
    p = np.asarray(curve.column("p").to_numpy(zero_copy_only=False), dtype=np.float64)
    lo = np.asarray(curve.column("ci_low").to_numpy(zero_copy_only=False), dtype=np.float64)
    hi = np.asarray(curve.column("ci_high").to_numpy(zero_copy_only=False), dtype=np.float64)
    err = [np.clip(p - lo, 0, None), np.clip(hi - p, 0, None)]  # rounding can cross 0
    ax.errorbar(k, p, yerr=err, fmt="o-", ms=4, capsize=2)
    ax.set_xlabel("k (distinct exposers so far)")
    ax.set_ylabel("p(adopt before the next exposure)")
    ax.set_title("exposure response p(k), 95% Wilson intervals")
    return {"title": "Exposure response", "numbers": numbers, "plots": [_png(fig)],
            "notes": notes}


#: What the report's roles analysis costs (``swarm.analysis.roles`` takes any setting).
REPORT_ROLES = {"n_null": 2, "n_seeds": 2, "swaps": 1.0, "k_range": range(2, 7),
                "betweenness_sample": None}
REPORT_CORE_NULLS = 4


def interaction_graph(events: pa.Table):
    """(src, dst, weight) of who reposted, liked or commented whom; ValueError when the
    log has (almost) no interactions. Computed once and shared by roles and core."""
    from swarm.analysis import roles as R

    edges = R.interaction_edges(events)
    if edges.num_rows < 10:
        raise ValueError(f"only {edges.num_rows} interaction edges")
    return (np.asarray(edges.column("src")), np.asarray(edges.column("dst")),
            np.asarray(edges.column("weight")))


def role_analysis(events: pa.Table, n: int, edges=None):
    """Roles of the interaction graph with the report's settings (``REPORT_ROLES``): a
    ``RoleResult``. ``edges``: ``interaction_graph(events)`` when already made."""
    from swarm.analysis import roles as R

    src, dst, w = edges if edges is not None else interaction_graph(events)
    return R.roles(src, dst, n, events=events, weight=w, **REPORT_ROLES)


def core_analysis(events: pa.Table, n: int, edges=None):
    """Borgatti-Everett core-periphery of the interaction graph, ``REPORT_CORE_NULLS``
    rewirings: a ``CorePeriphery``."""
    from swarm.analysis import roles as R

    src, dst, _ = edges if edges is not None else interaction_graph(events)
    return R.core_periphery(src, dst, n, n_null=REPORT_CORE_NULLS, swaps=1.0)


def _interactions(events: pa.Table):
    """The interaction graph, None without interaction events, or the ValueError."""
    kinds = set(events.column("event").cast(pa.string()).unique().to_pylist())
    if not {"repost", "like", "comment"} & kinds:
        return None
    try:
        return interaction_graph(events)
    except ValueError as exc:
        return exc


def _roles(run, events: pa.Table, edges) -> dict | None:
    if edges is None:
        return None
    try:
        if isinstance(edges, ValueError):
            raise edges
        result = role_analysis(events, run.manifest["graph"]["n"], edges)
    except ValueError as exc:
        return {"title": "Roles", "numbers": {}, "plots": [], "notes": [f"Not computed: {exc}"]}
    verdict = "beat" if result.beats_null else "do not beat"
    notes = [f"Roles by k-means over log-scaled, standardized features of the interaction "
             f"graph (who reposted, liked or commented whom) and behaviour; k = {result.k} "
             f"by silhouette ({result.silhouette:.3f}). On {REPORT_ROLES['n_null']} "
             f"degree-preserving rewirings the same pipeline scores {result.null_mean:.3f} "
             f"+/- {result.null_sd:.3f}: the roles {verdict} the null "
             f"({result.rule}). Betweenness is left out here (sampled betweenness: "
             "swarm.analysis.roles.agent_features)."]
    return {"title": "Roles", "numbers": {**result.summary(), "rule": result.rule},
            "plots": [], "notes": notes, "table": result.profiles.to_pylist()}


def _core(run, events: pa.Table, edges) -> dict | None:
    if edges is None:
        return None
    try:
        if isinstance(edges, ValueError):
            raise edges
        core = core_analysis(events, run.manifest["graph"]["n"], edges)
    except ValueError as exc:
        return {"title": "Core-periphery", "numbers": {}, "plots": [],
                "notes": [f"Not computed: {exc}"]}
    numbers = {"core_size": int(core.core.sum()), "rho": core.rho, "null_mean": core.null_mean,
               "null_sd": core.null_sd, "z": core.z, "p_value": core.p_value}
    notes = [f"Borgatti-Everett core-periphery of the interaction graph: a core of "
             f"{int(core.core.sum())} agents, fit {core.rho:.3f} vs {core.null_mean:.3f} +/- "
             f"{core.null_sd:.3f} on {REPORT_CORE_NULLS} degree-preserving rewirings (z = "
             f"{core.z:.1f}, p = {core.p_value:.2f}; with {REPORT_CORE_NULLS} rewirings p "
             f"cannot go below {1 / (REPORT_CORE_NULLS + 1):.2f})."]
    return {"title": "Core-periphery", "numbers": numbers, "plots": [], "notes": notes}


def _mean(table: pa.Table, col: str) -> float | None:
    if table.num_rows == 0 or col not in table.column_names:
        return None
    x = np.asarray(table.column(col).to_numpy(zero_copy_only=False), dtype=np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else None


def _coordination(env: str, metrics: pa.Table) -> dict | None:
    from swarm.analysis.coordination import coordination_summary

    if env not in ("consensus", "contract_net", "commons", "games"):
        return None
    return {"title": "Coordination", "numbers": coordination_summary(metrics, env), "plots": []}


def _opinion(env: str, metrics: pa.Table) -> dict | None:
    if env != "opinion":
        return None
    names = [c for c in ("variance", "bimodality", "group_distance", "consensus")
             if c in metrics.column_names]
    numbers = {c: metrics.column(c)[-1].as_py() for c in names}
    if "consensus" in names:
        cons = np.asarray(metrics.column("consensus").to_numpy(zero_copy_only=False))
        hit = np.flatnonzero(cons > 0.5)
        numbers["consensus_step"] = int(np.asarray(metrics.column("step"))[hit[0]]) \
            if hit.shape[0] else None
    return {"title": "Consensus and polarization", "numbers": numbers, "plots": []}


#: Coordination runs with at most this many agents get a drawing of the graph.
AGENTSNET_DRAW_MAX_AGENTS = 300
#: The bad agents the AgentsNet section lists (lowest ids first).
AGENTSNET_LIST_BAD = 20


def _constant(metrics: pa.Table, name: str) -> int | None:
    """A constant the coordination env logs on shard 0 only (so the shards' sum is it)."""
    if name not in metrics.column_names or metrics.num_rows == 0:
        return None
    x = np.asarray(metrics.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)
    return int(np.nanmax(x)) if np.isfinite(x).any() else None


def _crashed_agents(cfg: dict, n: int, last_step: int) -> np.ndarray:
    """Ids of the agents crashed by ``last_step``, drawn as the shards draw them.

    ``Faults`` with a ``KeyedRNG`` of the run's seed is what every ``Shard`` holds,
    so these are the agents the engine froze, whatever the sharding.
    """
    from swarm.faults import Faults, FaultsConfig
    from swarm.rng import KeyedRNG

    faults = FaultsConfig.model_validate(cfg.get("faults") or {})
    if faults.crash is None:
        return np.zeros(0, np.int64)
    down = Faults(faults, KeyedRNG(cfg.get("seed", 0))).crashed(np.arange(n), last_step)
    return np.flatnonzero(down).astype(np.int64)


def _agentsnet(run, events: pa.Table, metrics: pa.Table) -> dict | None:
    if run.manifest["env"]["kind"] != "coordination":
        return None
    from swarm.analysis import agentsnet as an
    from swarm.config import run_graph
    from swarm.errors import LogError

    title = "Coordination task (AgentsNet)"
    cfg = run.manifest["config"]
    task = cfg["env"]["task"]
    try:
        graph = run_graph(cfg)
    except Exception as exc:  # the graph may be gone (an edge-list file moved)
        return {"title": title, "numbers": {"task": task}, "plots": [],
                "notes": [f"Not validated: the run's graph could not be rebuilt ({exc})."]}
    n = graph.n
    notes = []
    if metrics.num_rows:
        last_step = int(np.asarray(metrics.column("step")).max())
    else:
        last_step = int(run.manifest.get("steps_run") or 1) - 1
    try:
        crashed = _crashed_agents(cfg, n, last_step)
    except ValueError as exc:  # a faults config this version no longer reads
        crashed = np.zeros(0, np.int64)
        notes.append(f"Crashed agents not known ({exc}): they count as failures.")
    colours = _constant(metrics, "colours") if task == "colouring" else None
    try:
        result = an.validate(task, events, graph, colours=colours or None, exclude=crashed)
    except (ValueError, LogError) as exc:  # GraphError is a ValueError
        return {"title": title, "numbers": {"task": task}, "plots": [],
                "notes": [*notes, f"Not validated: {exc}"]}
    bad = result.pop("bad_agents")
    answer, answered = an.final_answers(events, n)
    adversary = an.adversaries(events, n)
    degree = np.diff(graph.indptr)
    numbers: dict[str, Any] = {**result, "crashed": int(crashed.shape[0]),
                               "bad_agent_count": int(bad.shape[0]),
                               "first_bad_agents": bad[:AGENTSNET_LIST_BAD].tolist()}
    if bad.shape[0]:
        numbers["bad_agents_mean_degree"] = float(degree[bad].mean())
        numbers["mean_degree"] = float(degree.mean()) if n else None
    # Rounds: changes per step of the judged agents (adversaries may flip forever).
    changes = an.answers_over_time(events, exclude=crashed)
    last = an.last_change_step(events, exclude=crashed)
    budget = _constant(metrics, "rounds_budget") or None  # 0: no budget (until_done)
    numbers |= {"last_change_step": last, "rounds_budget": budget,
                "settled_within_budget": None if budget is None or last is None
                else last <= budget,
                "diameter_lower": _constant(metrics, "diameter_lower"),
                "diameter_upper": _constant(metrics, "diameter_upper")}
    verdict = "succeeds" if result["success"] else "fails"
    notes.insert(0, f"{task}: the run {verdict} on {result['agents']:,} judged agents "
                 f"(AgentsNet score {result['score']:.3f}, {result['violations']:,} "
                 f"violations, {bad.shape[0]:,} agents at fault), validated from the event "
                 f"log and graph by swarm.analysis.agentsnet. Adversaries "
                 f"({result['adversaries']:,}) and crashed agents ({crashed.shape[0]:,}) "
                 "are left out.")
    if budget is not None and last is not None:
        notes.append(f"Answers last changed at step {last}; AgentsNet's budget is {budget} "
                     f"rounds (2 D + 1 with D the double-sweep diameter bound, "
                     f"{numbers['diameter_lower']} <= D <= {numbers['diameter_upper']}, "
                     "or the small-graph rule).")
    plots = []
    if n <= AGENTSNET_DRAW_MAX_AGENTS:
        plots.append(_agentsnet_drawing(task, graph, answer, answered, bad, adversary,
                                        crashed, result))
    else:
        notes.append(f"{n:,} agents: no drawing (at most {AGENTSNET_DRAW_MAX_AGENTS}); the "
                     f"table lists the first {AGENTSNET_LIST_BAD} agents at fault.")
    plots.append(_agentsnet_rounds(changes, last, budget))
    rows = bad[:AGENTSNET_LIST_BAD]
    table = [{"agent": int(a), "degree": int(degree[a]),
              "answer": int(answer[a]) if answered[a] else None} for a in rows]
    return {"title": title, "numbers": numbers, "plots": plots, "notes": notes,
            "table": table}


def _agentsnet_drawing(task: str, graph, answer, answered, bad, adversary, crashed,
                       result: dict) -> str:
    """The graph (spring layout, fixed seed) with the agents at fault in red."""
    import networkx as nx
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    n = graph.n
    src = np.repeat(np.arange(n), np.diff(graph.indptr))
    dst = np.asarray(graph.indices)
    keep = src < dst if not graph.directed else src != dst
    s, d = src[keep], dst[keep]
    g = nx.Graph()
    g.add_nodes_from(range(n))
    g.add_edges_from(zip(s.tolist(), d.tolist(), strict=True))
    pos = nx.spring_layout(g, seed=0)
    xy = np.array([pos[i] for i in range(n)]) if n else np.zeros((0, 2))
    fig, ax = _figure(6.5, 6.0)
    judged = ~adversary
    judged[crashed] = False
    # Edges: grey, and the ones that break the task (or form the matching) drawn over.
    strong = np.zeros(s.shape[0], dtype=bool)
    both = answered[s] & answered[d] & judged[s] & judged[d]
    if task == "colouring":
        strong = both & (answer[s] == answer[d])
    elif task == "vertex_cover":
        strong = judged[s] & judged[d] & ~(answered[s] & (answer[s] == 1)) \
            & ~(answered[d] & (answer[d] == 1))
    elif task == "matching":
        strong = both & (answer[s] == d) & (answer[d] == s)
    segs = np.stack([xy[s], xy[d]], axis=1) if s.shape[0] else np.zeros((0, 2, 2))
    ax.add_collection(LineCollection(segs[~strong], colors="#bbbbbb", linewidths=0.6,
                                     zorder=1))
    strong_colour = "#2a9d3f" if task == "matching" else "#d62728"
    ax.add_collection(LineCollection(segs[strong], colors=strong_colour, linewidths=2.0,
                                     zorder=2))
    # Nodes by answer.
    face = np.full(n, "#ffffff", dtype=object)
    handles = []
    if task == "colouring":
        import matplotlib

        tab20 = matplotlib.colormaps["tab20"]
        # tab20 without its two reds: red is for the agents at fault.
        palette = [matplotlib.colors.to_hex(tab20(i)) for i in range(20) if i not in (6, 7)]
        for c in np.unique(answer[answered]):
            face[answered & (answer == c)] = palette[int(c) % len(palette)]
        handles.append(Line2D([], [], ls="", marker="o", mfc=palette[0], mec="#555",
                              label=f"by colour group ({result['colours_used']} used)"))
    else:
        if task == "vertex_cover":
            groups = {"in the cover": answer == 1, "not in the cover": answer == 0}
        elif task == "matching":
            groups = {"matched": answer >= 0, "none": answer == -1}
        elif task == "leader_election":
            leader = result["leader"] if result["leader"] is not None \
                else result["majority_leader"]
            groups = {"names the leader": answer == (-2 if leader is None else leader),
                      "names another": np.ones(n, dtype=bool)}
        else:
            groups = {"0": answer == 0, "1": answer == 1, "other": np.ones(n, dtype=bool)}
        palette = ("#1f77b4", "#aec7e8", "#ff7f0e")
        taken = ~answered
        for (label, mask), colour in zip(groups.items(), palette, strict=False):
            mask = mask & ~taken
            if mask.any():
                face[mask] = colour
                handles.append(Line2D([], [], ls="", marker="o", mfc=colour, mec="#555",
                                      label=label))
            taken |= mask
    face[bad] = "#d62728"
    plain = judged.copy()
    ax.scatter(xy[plain, 0], xy[plain, 1], s=28, c=list(face[plain]), edgecolors="#555555",
               linewidths=0.5, zorder=3)
    if adversary.any():
        ax.scatter(xy[adversary, 0], xy[adversary, 1], s=40, marker="D", c="black", zorder=4)
    if crashed.shape[0]:
        ax.scatter(xy[crashed, 0], xy[crashed, 1], s=40, marker="x", c="#777777", zorder=4)
    if task == "leader_election" and result.get("leader") is not None:
        lead = result["leader"]
        ax.scatter([xy[lead, 0]], [xy[lead, 1]], s=160, marker="*", c="gold",
                   edgecolors="black", zorder=5)
        handles.append(Line2D([], [], ls="", marker="*", ms=12, mfc="gold", mec="black",
                              label="leader"))
    handles.append(Line2D([], [], ls="", marker="o", mfc="#d62728", mec="#555",
                          label=f"at fault ({bad.shape[0]})"))
    if (~answered & judged & ~np.isin(np.arange(n), bad)).any():
        handles.append(Line2D([], [], ls="", marker="o", mfc="#ffffff", mec="#555",
                              label="no answer"))
    if adversary.any():
        handles.append(Line2D([], [], ls="", marker="D", color="black",
                              label=f"adversary ({int(adversary.sum())})"))
    if crashed.shape[0]:
        handles.append(Line2D([], [], ls="", marker="x", color="#777777",
                              label=f"crashed ({crashed.shape[0]})"))
    edge_label = {"colouring": "conflict edge", "vertex_cover": "uncovered edge",
                  "matching": "matched edge"}.get(task)
    if edge_label is not None:
        handles.append(Line2D([], [], color=strong_colour, lw=2, label=edge_label))
    ax.legend(handles=handles, fontsize=7, loc="upper right", framealpha=0.85)
    ax.set_axis_off()
    ax.autoscale_view()
    ok = "success" if result["success"] else "failure"
    ax.set_title(f"{task}: {ok}, score {result['score']:.3f}")
    return _png(fig)


def _agentsnet_rounds(changes: pa.Table, last: int | None, budget: int | None) -> str:
    """Answers changed per step, with the last change and AgentsNet's round budget."""
    fig, ax = _figure()
    step = np.asarray(changes.column("step"))
    ax.bar(step, np.asarray(changes.column("changes")), width=0.8, color="#1f77b4",
           label="answers changed")
    if last is not None:
        ax.axvline(last, color="black", ls=":", label=f"last change (step {last})")
    if budget is not None:
        ax.axvline(budget, color="#d62728", ls="--", label=f"AgentsNet budget ({budget})")
    ax.set_yscale("symlog", linthresh=1)  # step 0 changes every answer, later steps few
    ax.set_xlim(left=-0.6)
    ax.set_xlabel("step")
    ax.set_ylabel("agents")
    ax.legend(fontsize=7)
    ax.set_title("rounds to agreement")
    return _png(fig)


def analyze(run, window: int | None = None) -> dict:
    """Every analysis that applies to ``run`` (a Run or a run directory): a dict of sections."""
    from swarm import open_run

    if not hasattr(run, "events"):
        run = open_run(run)
    t0 = time.perf_counter()
    from swarm.errors import LogError

    env = run.manifest["env"]["kind"]
    notes = []
    try:
        metrics = run.metrics()
    except LogError as exc:  # a failed or running run: the event-based analyses still apply
        metrics = pa.table({"step": pa.array([], pa.int32())})
        notes.append(f"No metrics table ({exc}); analyses that need it are skipped.")
    columns = ["step", "agent", "event", "target", "item", "root", "parent", "value"]
    events = run.events(columns=columns)
    if window is None:
        window = max(1, metrics.num_rows // 10)
    made: list = []

    def edges():  # the interaction graph, made once for roles and core-periphery
        if not made:
            made.append(_interactions(events))
        return made[0]

    sections = [_overview(run, events, metrics)]
    sections[0]["notes"] = notes
    timings = {}
    for name, make in (("metrics", lambda: _metrics_over_time(run, metrics)),
                       ("cascades", lambda: _cascades(events)),
                       ("exposure", lambda: _exposure(run, events, metrics)),
                       ("roles", lambda: _roles(run, events, edges())),
                       ("core_periphery", lambda: _core(run, events, edges())),
                       ("socialization", lambda: _socialization(run, events, window)),
                       ("coordination", lambda: _coordination(env, metrics)),
                       ("agentsnet", lambda: _agentsnet(run, events, metrics)),
                       ("opinion", lambda: _opinion(env, metrics))):
        t = time.perf_counter()
        section = make()
        timings[name] = round(time.perf_counter() - t, 3)
        if section is not None:
            section["key"] = name
            sections.append(section)
    sections[0]["key"] = "overview"
    return {"run": str(run.path), "env": env, "sections": sections,
            "seconds": {**timings, "total": round(time.perf_counter() - t0, 3)}}


def write_report(result: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``report.html`` for ``analyze``'s result; returns both paths.

    Both are rendered in full first, then each is written under a temporary
    name and renamed: a kill or a full disk leaves the previous files whole,
    never a 0-byte ``metrics.json`` (a StorageError names the file).
    """
    from swarm.storage import RunStore

    out = Path(out_dir)
    store = RunStore(out)
    store.makedirs()
    numbers = {s["key"]: s["numbers"] for s in result["sections"]}
    metrics = json.dumps(_clean({"run": result["run"], "env": result["env"],
                                 **numbers, "seconds": result["seconds"]}), indent=2)
    parts = [f"<h1>swarm analysis: {html.escape(result['env'])} run</h1>",
             f"<p class=run>{html.escape(result['run'])}</p>"]
    for s in result["sections"]:
        parts.append(f"<section id={s['key']}><h2>{html.escape(s['title'])}</h2>")
        for note in s.get("notes", []):
            parts.append(f"<p>{html.escape(note)}</p>")
        parts.append(_html_numbers(s["numbers"]))
        for img in s.get("plots", []):
            parts.append(f'<img alt="{html.escape(s["title"])}" '
                         f'src="data:image/png;base64,{img}">')
        if s.get("table"):
            parts.append(_html_table(s["table"]))
        parts.append("</section>")
    page = ("<!doctype html><html><head><meta charset=utf-8><title>swarm analysis</title>"
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;color:#222}"
            "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;"
            "padding:2px 6px;text-align:right}th{background:#f3f3f3}.run{color:#666}"
            "img{display:block;margin:1em 0;max-width:100%}</style></head><body>"
            + "\n".join(parts) + "</body></html>")
    store.write_bytes("report.html", page.encode())
    store.write_bytes("metrics.json", metrics.encode())
    return out / "metrics.json", out / "report.html"


def _fmt(v: Any) -> str:
    v = _clean(v)
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return "-" if v is None else str(v)


def _html_numbers(numbers: dict) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in numbers.items())
    return f"<table>{rows}</table>"


def _html_table(rows: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r.values())
                   + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"
