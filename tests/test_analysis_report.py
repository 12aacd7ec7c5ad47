"""Socialization and coordination measures on made-up data, and `swarm analyze` on every example."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from test_cli import swarm_cli

import swarm
from swarm.analysis import socialization as so
from swarm.analysis.coordination import compare_conditions, sweep_comparison
from swarm.analysis.report import analyze, write_report
from swarm.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_collective_stabilization_finds_when_the_mix_settles():
    rng = np.random.default_rng(0)
    steps, n = 40, 500
    step = np.repeat(np.arange(steps), n)
    agent = np.tile(np.arange(n), steps)
    # The share of action 1 drifts from 0.1 to 0.6 over steps 0-19, then stays.
    share = np.minimum(0.1 + 0.025 * step, 0.6)
    code = (rng.random(step.shape[0]) < share).astype(np.int64)
    table, settled = so.collective_stabilization(step, agent, code, window=5, threshold=0.05)
    d = np.asarray(table.column("distance"))
    assert d[1] > 0.1 and settled is not None and 4 <= settled <= 5


def test_turnover_inertia_and_influence_persistence():
    n, steps = 200, 8
    step = np.repeat(np.arange(steps), n)
    agent = np.tile(np.arange(n), steps)
    # A ring: agent i hears i-1. Copiers take their neighbour's last action, the
    # stubborn repeat their own.
    src, dst = (np.arange(n) - 1) % n, np.arange(n)
    rng = np.random.default_rng(3)

    def history(copier):
        code = np.empty(steps * n, np.int64)
        code[:n] = rng.integers(0, 3, n)
        for s in range(1, steps):  # a made-up history; the measures are vectorized
            prev = code[(s - 1) * n:s * n]
            code[s * n:(s + 1) * n] = np.where(copier, np.roll(prev, 1), prev)
        return code

    def sims(code):
        t = so.individual_inertia(step, agent, code, src, dst, n, window=1)
        return (np.asarray(t.column("self_similarity")),
                np.asarray(t.column("neighbour_similarity")))

    stubborn_self, stubborn_nbr = sims(history(np.zeros(n, bool)))
    copier_self, copier_nbr = sims(history(np.ones(n, bool)))
    assert np.allclose(stubborn_self, 1.0) and (stubborn_nbr < 0.6).all()
    assert np.allclose(copier_nbr, 1.0) and (copier_self < 0.6).all()
    code = np.repeat(np.arange(steps) % 2, n)  # everyone switches action every step
    turn = so.individual_turnover(step, agent, code, window=1)
    assert np.allclose(np.asarray(turn.column("turnover")), 1.0)  # every agent switches
    steady = so.individual_turnover(step, agent, history(np.zeros(n, bool)), window=1)
    assert np.allclose(np.asarray(steady.column("turnover")), 0.0)

    ev = pa.table({"step": pa.array(np.repeat(np.arange(4), 3), pa.int32()),
                   "agent": pa.array(np.arange(12), pa.int64()),
                   "event": pa.array(["like"] * 12).dictionary_encode(),
                   "target": pa.array([1, 1, 2, 1, 1, 2, 5, 5, 6, 5, 5, 6], pa.int64())})
    infl = so.influence_persistence(ev, window=1, top=2)
    assert infl.column("overlap").to_pylist()[1:] == [1.0, 0.0, 1.0]


def test_compare_conditions_finds_real_differences_only():
    rng = np.random.default_rng(2)
    same = compare_conditions(rng.normal(0, 1, 30), rng.normal(0, 1, 30), seed=1)
    shifted = compare_conditions(rng.normal(1, 1, 30), rng.normal(0, 1, 30), seed=1)
    assert same["p_value"] > 0.05 and abs(same["cohens_d"]) < 0.6
    assert shifted["p_value"] < 0.01 and 0.5 < shifted["cohens_d"] < 1.6
    with pytest.raises(ValueError, match="at least 2"):
        compare_conditions([1.0], [2.0, 3.0])


def test_a_sweep_compares_message_loss_against_the_clean_baseline(tmp_path):
    from swarm.sweep import sweep

    base = load_config(ROOT / "examples/consensus.yaml",
                       ["graph.n=300", "steps=10", "shards=1", "faults.crash=null",
                        "env.protocol=majority", "env.byzantine=0", "faults.drop=0"])
    sweep(base.dump(), {"faults.drop": [0.0, 0.6], "seed": [1, 2, 3]}, tmp_path / "sw",
          backend="local")
    table = sweep_comparison(tmp_path / "sw", "dropped_messages", "faults.drop", 0.0)
    row = table.to_pylist()[0]
    assert row["faults.drop"] == "0.6" and row["n_a"] == 3 and row["n_b"] == 3
    assert row["mean_b"] == 0 and row["difference"] > 0 and row["cohens_d"] > 1
    with pytest.raises(ValueError, match="not a grid key"):
        sweep_comparison(tmp_path / "sw", "messages", "env.protocol", "majority")


# LLM examples need a model made first (tests/test_cli.py, tests/test_llm_envs.py).
EXAMPLES = sorted(p.stem for p in (ROOT / "examples").glob("*.yaml")
                  if not p.stem.startswith("llm_"))


@pytest.mark.integration  # a run and a full analysis per example; Chromium, where installed
@pytest.mark.parametrize("example", EXAMPLES)
def test_analyze_writes_a_report_for_every_example(example, tmp_path):
    cfg = load_config(ROOT / f"examples/{example}.yaml",
                      ["steps=12", "graph.n=600", "shards=1"])
    run = swarm.run(cfg, tmp_path / "run", backend="local", progress=False)
    result = analyze(run)
    metrics_path, report_path = write_report(result, tmp_path / "analysis")
    numbers = json.loads(metrics_path.read_text())
    assert numbers["env"] == cfg.env.kind and numbers["overview"]["events"] == run.events().num_rows
    page = report_path.read_text()
    # Self-contained: nothing to fetch (inline images' base64 may spell "http" by chance).
    text = re.sub(r"data:[^\"')]+", "", page.replace(str(tmp_path), ""))
    assert page.startswith("<!doctype html>") and "http" not in text
    keys = {s["key"] for s in result["sections"]}
    if cfg.env.kind in ("cascade", "feed"):
        assert "cascades" in keys and numbers["cascades"]["cascades"] > 0
    if cfg.env.kind in ("consensus", "contract_net", "commons", "games"):
        assert "coordination" in keys
    if cfg.env.kind == "feed":
        assert numbers["socialization"]["mean_turnover"] is not None
        assert numbers["roles"]["k"] >= 2 and "beats_null" in numbers["roles"]
        assert numbers["exposure"]["pairs"] > 0
    _screenshot_is_not_blank(report_path, tmp_path)


def _screenshot_is_not_blank(report: Path, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or \
        shutil.which("google-chrome")
    if browser is None:
        return  # CI installs Chromium (.ci/run); without it only the HTML is checked
    shot = tmp_path / "shot.png"
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                           f"--screenshot={shot}", "--window-size=900,1400",
                           report.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.exists(), proc.stderr[-2000:]
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[0] > 100 and img[..., :3].std() > 0.05  # text and plots, not one colour


@pytest.mark.integration  # `swarm analyze` and `swarm query` as subprocesses
def test_swarm_analyze_on_the_cli(tmp_path):
    cfg = load_config(ROOT / "examples/cascade.yaml", ["graph.n=2000", "steps=20"])
    run = swarm.run(cfg, tmp_path / "r", backend="local", progress=False)
    proc = swarm_cli("analyze", str(run.path))
    assert "Cascades:" in proc.stdout and (tmp_path / "r/analysis/report.html").exists()
    from swarm.analysis.cascades import cascades

    q = swarm_cli("query", str(run.path), "SELECT count(*) AS n, max(size) AS s FROM cascades",
                  "--format", "json")
    t = cascades(run)
    assert json.loads(q.stdout) == [{"n": t.num_rows, "s": max(t.column("size").to_pylist())}]
    bad = swarm_cli("analyze", str(tmp_path / "nothing"), check=False)
    assert bad.returncode == 2 and "error:" in bad.stderr


@pytest.mark.integration  # two runs and two full analyses: seconds
def test_the_report_says_what_the_exposure_conclusion_rests_on(tmp_path):
    from conftest import cascade_config

    plain = cascade_config(n=2000, model="linear_threshold", seed_count=60)
    injected = plain.model_copy(update={"env": plain.env.model_copy(update={
        "inject": swarm.envs.cascade.InjectConfig(fraction=0.3, exposures=1, step=1)})})
    for cfg, basis in ((plain, "observational"), (injected, "randomized injection")):
        run = swarm.run(cfg, tmp_path / basis.split()[0], backend="local", progress=False)
        sections = {s["key"]: s for s in analyze(run)["sections"]}
        ex = sections["exposure"]["numbers"]
        assert ex["conclusion_rests_on"] == basis and ex["pairs"] > 100
        assert ex["p_k"] and "cox" in ex or any("cox" in n for n in sections["exposure"]["notes"])
        if basis != "observational":
            assert ex["injection"]["difference"] > 0


@pytest.mark.integration  # the roles view fits roles: seconds
def test_the_roles_view_gives_every_agent_a_role(tmp_path):
    from conftest import cli  # in process: the subprocess query is tested above

    cfg = load_config(ROOT / "examples/feed.yaml", ["steps=8", "graph.n=500", "shards=1"])
    run = swarm.run(cfg, tmp_path / "feed", backend="local", progress=False)
    q = cli("query", str(run.path), "SELECT count(*) AS n, count(DISTINCT role) AS k, "
            "CAST(sum(CAST(in_core AS INT)) AS INT) AS core FROM roles", "--format", "json")
    assert q.exit_code == 0, q.stderr
    row = json.loads(q.stdout)[0]
    assert row["n"] == 500 and row["k"] >= 2 and 0 < row["core"] < 500


def test_analyze_copes_with_no_events_and_with_a_failed_run(tmp_path):
    from swarm.analysis.coordination import coordination_summary

    quiet = swarm.validate_config({
        "seed": 1, "steps": 3, "graph": {"kind": "barabasi_albert", "n": 50, "m": 2},
        "env": {"kind": "feed", "activity": 0.0}, "checkpoint": {"every": 0}})
    run = swarm.run(quiet, tmp_path / "quiet", backend="local", progress=False)
    assert run.events().num_rows == 0
    result = analyze(run)
    assert result["sections"][0]["numbers"]["events"] == 0
    assert "agentsnet" not in {s["key"] for s in result["sections"]}  # coordination runs only
    write_report(result, tmp_path / "qa")
    # A failed run has no metrics table: the event analyses still run.
    cfg = load_config(ROOT / "examples/cascade.yaml", ["graph.n=2000", "steps=10"])
    done = swarm.run(cfg, tmp_path / "r", backend="local", progress=False)
    (tmp_path / "r/metrics.arrow").unlink()
    broken = analyze(str(tmp_path / "r"))
    keys = {s["key"] for s in broken["sections"]}
    assert "cascades" in keys and broken["sections"][0]["notes"]
    assert done.events().num_rows > 0
    empty = pa.table({"step": pa.array([], pa.int32())})
    for env in ("games", "commons", "consensus"):
        assert coordination_summary(empty, env)["steps"] == 0


def _coordination_run(tmp_path, task, name, faults=None):
    raw = {"seed": 1, "steps": 200,
           "graph": {"kind": "watts_strogatz", "n": 100, "k": 4, "p": 0.4},
           "env": {"kind": "coordination", "task": task, "rounds": "agentsnet"}}
    if faults is not None:
        raw["faults"] = faults
    return swarm.run(swarm.validate_config(raw), out=str(tmp_path / name), overwrite=True,
                     backend="local", progress=False)


def _agentsnet_section(result):
    found = [s for s in result["sections"] if s["key"] == "agentsnet"]
    assert len(found) == 1, [s["key"] for s in result["sections"]]
    return found[0]


@pytest.mark.integration  # a run and a full analysis: seconds
@pytest.mark.parametrize("task", ["colouring", "matching"])
def test_the_agentsnet_section_reports_success_of_a_fault_free_run(task, tmp_path):
    run = _coordination_run(tmp_path, task, task)
    section = _agentsnet_section(analyze(run))
    num = section["numbers"]
    assert num["task"] == task and num["success"] is True and num["score"] == 1.0
    assert num["violations"] == 0 and num["bad_agent_count"] == 0 and section["table"] == []
    assert num["agents"] == 100 and num["crashed"] == 0
    metrics = run.metrics()
    assert num["rounds_budget"] == metrics.column("rounds_budget")[0].as_py() > 0
    assert num["diameter_lower"] == metrics.column("diameter_lower")[0].as_py() > 0
    assert num["last_change_step"] <= num["rounds_budget"] and num["settled_within_budget"]
    if task == "colouring":
        assert num["colours"] == metrics.column("colours")[0].as_py() and num["conflict_edges"] == 0
    else:
        assert num["matched_pairs"] > 0
    assert len(section["plots"]) == 2  # the graph drawing and the rounds to agreement


@pytest.mark.integration  # a run, a full analysis and the report: seconds
def test_the_agentsnet_section_locates_the_failures_of_a_lossy_run(tmp_path, monkeypatch):
    from swarm.analysis import report
    from swarm.analysis.agentsnet import validate
    from swarm.config import run_graph

    run = _coordination_run(tmp_path, "matching", "lossy", faults={"drop": 0.6})
    result = analyze(run)
    section = _agentsnet_section(result)
    num = section["numbers"]
    truth = validate("matching", run.events(), run_graph(run.manifest["config"]))
    bad = truth["bad_agents"]
    assert truth["success"] is False and num["success"] is False and bad.shape[0] > 20
    assert num["score"] == truth["score"] and num["violations"] == truth["violations"]
    assert num["bad_agent_count"] == bad.shape[0] and num["first_bad_agents"] == bad[:20].tolist()
    degree = np.diff(run_graph(run.manifest["config"]).indptr)
    assert [(r["agent"], r["degree"]) for r in section["table"]] == \
        [(int(a), int(degree[a])) for a in bad[:20]]
    _, html_path = write_report(result, tmp_path / "analysis")
    page = html_path.read_text()
    part = page[page.index("<section id=agentsnet>"):]
    part = part[:part.index("</section>")]
    assert "Coordination task" in part and part.count('src="data:image/png;base64,') == 2
    numbers = json.loads((tmp_path / "analysis/metrics.json").read_text())
    assert numbers["agentsnet"]["success"] is False
    # Past the drawing limit: the table and the rounds plot only.
    monkeypatch.setattr(report, "AGENTSNET_DRAW_MAX_AGENTS", 50)
    big = _agentsnet_section(analyze(run))
    assert len(big["plots"]) == 1 and len(big["table"]) == 20
    assert any("no drawing" in note for note in big["notes"])


@pytest.mark.integration  # two runs and two analyses: seconds
def test_the_agentsnet_section_leaves_out_the_agents_the_engine_crashed(tmp_path):
    from swarm.analysis import report
    from swarm.analysis.agentsnet import validate
    from swarm.config import run_graph

    run = _coordination_run(tmp_path, "leader_election", "crash",
                            faults={"crash": {"fraction": 0.1, "at_step": 0}})
    num = _agentsnet_section(analyze(run))["numbers"]
    # Crashed from step 0, an agent logs nothing: those are the agents the report left out.
    silent = np.setdiff1d(np.arange(100), np.asarray(run.events().column("agent")))
    crashed = report._crashed_agents(run.manifest["config"], 100, last_step=0)
    assert crashed.tolist() == silent.tolist() and silent.shape[0] > 0
    assert num["crashed"] == num["excluded"] == silent.shape[0]
    assert num["success"] is True and num["agents"] == 100 - silent.shape[0]
    graph = run_graph(run.manifest["config"])
    assert validate("leader_election", run.events(), graph)["success"] is False
