"""Shared fixtures: one embedded Ray per test session, small configs."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# One OpenMP/BLAS thread (set before numpy, scikit-learn or torch load): the tests use
# small arrays, and when other processes hold the cores (Ray workers, a CLI subprocess,
# a second test run) OpenMP's spin-waiting made the roles tests 3-12x slower.
# Subprocesses and Ray workers inherit it; results do not depend on the thread count.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Test tiers (README, under "Two commands"): `make check` leaves out `integration` and `slow`, `make
# test` (CI) leaves out `slow`, `make test-slow` runs only `slow`. `integration` is given
# here, by module or fixture, so a new test in these modules or on these fixtures is
# placed without thinking about it; `slow` is written on the test itself.

#: Modules whose tests start processes: the CLI as a subprocess, a Ray cluster or head,
#: an HTTP policy server, or a model.
INTEGRATION_MODULES = frozenset({
    "test_address", "test_backend_openai", "test_backend_transformers", "test_cli",
    "test_cluster_surface", "test_jobs", "test_layers", "test_lease", "test_node_failure",
    "test_scale_out", "test_serve_limits",
})
#: Fixtures that start Ray or load a model: a test using one is integration too.
INTEGRATION_FIXTURES = frozenset({"ray_session", "tiny_model"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if item.path.stem in INTEGRATION_MODULES or fixtures & INTEGRATION_FIXTURES:
            item.add_marker(pytest.mark.integration)


#: A run small enough for a job or a cluster test: 2,000 agents, 2 shards.
TINY_CONFIG = """\
seed: 11
steps: 50
shards: 2
graph: {kind: barabasi_albert, n: 2000, m: 3}
env: {kind: cascade, model: independent_cascade, p: 0.1, seed_fraction: 0.01}
log: {flush_every: 5}
"""


@pytest.fixture
def tiny_work(tmp_path):
    """A folder holding only the tiny config (a job's whole upload)."""
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "tiny.yaml").write_text(TINY_CONFIG)
    return folder


@pytest.fixture(scope="session")
def ray_session():
    """An embedded Ray shared by every test that needs it (init costs 2-4 s).

    Started the way `swarm run` starts one: loopback only, with a token of its
    own, and gone within a second if pytest is killed.
    """
    import ray

    from swarm.cluster.connect import start_local_ray

    if not ray.is_initialized():
        start_local_ray(num_cpus=2, object_store_memory=256 * 1024**2)
    yield ray
    ray.shutdown()


def cascade_config(n=2000, shards=1, model="independent_cascade", graph=None, **env):
    """A validated cascade config on a small BA graph (override anything)."""
    from swarm import validate_config

    env_cfg = {"kind": "cascade", "model": model, **env}
    if model == "independent_cascade":
        env_cfg.setdefault("p", 0.1)
    raw = {
        "seed": 5,
        "steps": 500,
        "shards": shards,
        "graph": graph or {"kind": "barabasi_albert", "n": n, "m": 3},
        "env": env_cfg,
        "log": {"flush_every": 3},
    }
    return validate_config(raw)


def sir_config(n=3000, shards=2, every=4, **over):
    """SIR on 3,000 agents over 60 steps with a checkpoint every ``every`` steps."""
    import swarm

    cfg = cascade_config(n=n, shards=shards, model="sir", beta=0.15, gamma=0.1)
    update = {"checkpoint": swarm.config.CheckpointConfig(every=every), "steps": 60, **over}
    return cfg.model_copy(update=update)


def interrupted_then_resumed(config, tmp_path, at_step: int):
    """(an uninterrupted run of ``config``, the same run stopped by Ctrl-C after step
    ``at_step`` and resumed), both in process."""
    import signal

    import swarm

    def interrupt(row):
        if row["step"] == at_step:
            os.kill(os.getpid(), signal.SIGINT)

    reference = swarm.run(config, tmp_path / "ref", backend="local", progress=False)
    with pytest.raises(swarm.RunInterrupted):
        swarm.run(config, tmp_path / "r", backend="local", progress=False, on_step=interrupt)
    return reference, swarm.resume(tmp_path / "r", backend="local", progress=False)


def crash_shards_at(monkeypatch, step, shard=None, message="crash"):
    """Make ``Shard.step`` raise at ``step`` (on ``shard``, or on every shard); returns the undo."""
    from swarm.shard import Shard

    real_step = Shard.step

    def step_or_crash(self, t, *parts, **kw):
        if t == step and shard in (None, self.id):
            raise RuntimeError(message)
        return real_step(self, t, *parts, **kw)

    monkeypatch.setattr(Shard, "step", step_or_crash)
    return lambda: monkeypatch.setattr(Shard, "step", real_step)


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """A clean ``sir_config()`` run (local backend) that stopped and resumed runs must equal."""
    import swarm

    return swarm.run(sir_config(), tmp_path_factory.mktemp("ref") / "r", backend="local")


def failed_run(path, step):
    """A local-backend ``sir_config()`` run that failed at ``step``; returns ``path``."""
    import swarm

    with pytest.MonkeyPatch.context() as mp:
        crash_shards_at(mp, step, message="power cut")
        with pytest.raises(RuntimeError, match="power cut"):
            swarm.run(sir_config(), path, backend="local")
    return path


@pytest.fixture
def full_disk():
    """``full_disk(folder, name)`` makes swarm's next write of ``folder/name`` fail with a
    real ENOSPC: /dev/full is bind-mounted on the temporary file that write goes
    through. ``full_disk.free()`` frees the space (unmounts). Needs the right to mount
    (root); elsewhere the test is skipped. (A symbolic link would not do: swarm refuses
    to write through links it did not make.)"""
    import subprocess
    from pathlib import Path

    mounted: list = []
    # Root mounts directly; a CI user with password-less sudo through sudo -n.
    sudo = [] if os.getuid() == 0 else ["sudo", "-n"]

    def fill(folder, name: str) -> None:
        tmp = Path(folder) / f".{name}.tmp"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.touch()
        done = subprocess.run([*sudo, "mount", "--bind", "/dev/full", str(tmp)],
                              capture_output=True)
        if done.returncode:
            tmp.unlink()
            pytest.skip("cannot bind-mount /dev/full here (needs root or sudo -n)")
        mounted.append(tmp)

    def free() -> None:
        while mounted:
            tmp = mounted.pop()
            subprocess.run([*sudo, "umount", str(tmp)], capture_output=True)
            tmp.unlink(missing_ok=True)

    fill.free = free
    yield fill
    free()


def cli(*args):
    """Run the ``swarm`` CLI in this process (typer's runner): ``.exit_code``, ``.stdout``,
    ``.stderr``. Tests of the installed entry point itself run it as a subprocess."""
    from typer.testing import CliRunner

    from swarm.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def sorted_events(run):
    """Events without the shard column (which names the writer), in a canonical order.

    Runs that must agree (any shard count, partition, resume) compare equal this way.
    """
    import pyarrow as pa

    t = run.events().drop_columns(["shard"])
    t = t.set_column(t.schema.get_field_index("event"), "event", t["event"].cast(pa.string()))
    return t.sort_by([("step", "ascending"), ("agent", "ascending"), ("event", "ascending")])


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny random-weight causal LM saved as a checkpoint directory (nothing downloaded)."""
    from swarm.policies.testing import make_tiny_model

    return make_tiny_model(str(tmp_path_factory.mktemp("tiny-model")))


def llm_config(model_dir, n=400, shards=1, llm_fraction=0.7, steps=6, population=None,
               **policy):
    """Linear threshold on an ER graph where a fraction of agents decide with a tiny LLM."""
    from swarm import validate_config

    groups = [{"policy": {"kind": "llm", "model": model_dir, **policy},
               "fraction": llm_fraction}]
    if llm_fraction < 1:
        groups.insert(0, {"policy": {"kind": "default"}, "fraction": 1 - llm_fraction})
    return validate_config({
        "seed": 11, "steps": steps, "shards": shards, "partition": "hash",
        "graph": {"kind": "erdos_renyi", "n": n, "mean_degree": 8},
        "env": {"kind": "cascade", "model": "linear_threshold", "seed_fraction": 0.05},
        "checkpoint": {"every": 0},
        "population": population or {"groups": groups},
    })
