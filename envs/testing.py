"""The env test kit: the checks every registered env passes, and a user's env can too.

Two checks, in the spirit of PettingZoo's ``api_test`` and ``seed_test``:

* ``check_env_api``: the env declares what the contract asks (name, config
  class, event types, metrics, message and broadcast fields, a smoke config
  that validates), and one shard built by hand runs a few steps whose batches,
  events, messages and metrics have the declared columns and equal lengths
  (batches carry the declared ``observation``, the default rule returns only
  declared ``actions``);
  ``state_dict`` round-trips into a fresh env, and a shard restored from a
  mid-run checkpoint replays the later steps with equal events and state
  (once without faults, once with messages dropped and delayed).
* ``check_determinism``: the smoke config run twice gives equal logs, and run
  with 1 and 3 shards gives equal logs (events without the ``shard`` column,
  in a canonical order, and the whole metrics table: wall-clock figures
  belong in ``timing_metrics``, which go to ``timings.arrow``).

Both raise ``AssertionError`` naming what is wrong. Run them on your env::

    from swarm.envs.testing import check_env_api, check_determinism
    check_env_api(MyEnv)
    check_determinism(MyEnv, tmp_path)
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from swarm.envs.base import COMMON_EVENT_COLUMNS, ENV_REGISTRY, Env, EnvConfig, StepResult

__all__ = ["check_determinism", "check_env_api", "smoke_run_config"]


def smoke_run_config(env_cls: type[Env], shards: int = 1, **overrides: Any):
    """The env's ``smoke_config`` as a validated RunConfig (``overrides`` replace top keys)."""
    from swarm.config import validate_config

    if not env_cls.smoke_config:
        raise AssertionError(f"env {env_cls.__name__} has no smoke_config: give it a small "
                             "raw run config (graph, env, steps) the test kit can run")
    raw = {"seed": 3, "steps": 20, "checkpoint": {"every": 0}, **env_cls.smoke_config,
           "shards": shards, **overrides}
    return validate_config(raw)


def check_env_api(env_cls: type[Env], steps: int = 5) -> None:
    """Check the declarations of ``env_cls`` and a few steps of one shard built by hand."""
    from swarm.faults import FaultsConfig
    from swarm.graphgen import build_graph
    from swarm.rng import KeyedRNG

    name = env_cls.__name__
    for attr in ("name", "Config", "event_types"):
        if not hasattr(env_cls, attr):
            raise AssertionError(f"env {name} must declare {attr}")
    if ENV_REGISTRY.get(env_cls.name) is not env_cls:
        raise AssertionError(f"env {name} is not registered as {env_cls.name!r}; decorate it "
                             "with @register_env")
    if not issubclass(env_cls.Config, EnvConfig):
        raise AssertionError(f"{name}.Config must derive from EnvConfig")
    if len(set(env_cls.event_types)) != len(env_cls.event_types) or not env_cls.event_types:
        raise AssertionError(f"{name}.event_types must be distinct names; got "
                             f"{env_cls.event_types}")
    clash = set(env_cls.event_columns) & set(COMMON_EVENT_COLUMNS)
    if clash:
        raise AssertionError(f"{name}.event_columns redeclares common columns {sorted(clash)}")
    config = smoke_run_config(env_cls)
    graph = build_graph(config)
    setup = env_cls.prepare(config.env, graph.n, KeyedRNG(config.seed))
    if env_cls.needs_graph(config.env):
        setup.update(env_cls.prepare_graph(config.env, graph))
    # Once clean, once with messages delayed (held by the shard, checkpointed with it).
    for faults in ({}, {"drop": 0.1, "delay": {"steps": 2, "fraction": 0.5}}):
        _check_shard(env_cls, config, graph, setup, steps, FaultsConfig.model_validate(faults))


def _check_shard(env_cls, config, graph, setup, steps: int, faults) -> None:
    """A few steps of one shard built by hand; its state round-trips and replays."""
    from swarm.partition import Partition
    from swarm.shard import ShardSpec, build_shards
    from swarm.shardgraph import GraphSource

    name = env_cls.__name__
    part = Partition("contiguous", graph.n, 1)
    note = " (with delayed messages)" if faults.active else ""
    with tempfile.TemporaryDirectory() as tmp:
        from swarm.storage import RunStore

        store = RunStore(tmp)
        spec = ShardSpec(shard=0, num_shards=1, seed=config.seed, partition=part,
                         graph=GraphSource(graph.n, indptr=graph.indptr,
                                           indices=graph.indices), env_config=config.env,
                         env_setup=setup, store=store, population=config.population,
                         faults=faults)
        seen: list[StepResult] = []
        shard = _watched(build_shards([spec])[0][0], env_cls, seen)
        half = max(1, steps // 2)
        for step in range(steps):
            shard.step(step, checkpoint=step == half - 1)
        if not seen:
            raise AssertionError(f"{name}: apply was never called")
        state = shard.env.state_dict()
        fresh = env_cls(config.env, shard.view, setup)
        fresh.load_state_dict({k: np.asarray(v) for k, v in state.items()})
        if not _same_state(fresh.state_dict(), state):
            raise AssertionError(f"{name}: state_dict -> load_state_dict -> state_dict changed "
                                 "the state; declare per-agent arrays in state (Column) and "
                                 "other state in state_attrs, or override both methods")
        shard.close()
        # A shard restored from the checkpoint replays the later steps exactly: the
        # state_dict holds everything the env carries between steps.
        replay: list[StepResult] = []
        restored = _watched(build_shards([spec], restore_step=half - 1)[0][0], env_cls, replay)
        for step in range(half, steps):
            restored.step(step)
        later = seen[half:]
        if len(later) != len(replay) or not all(
                _same_state(a.events, b.events) for a, b in zip(later, replay, strict=True)):
            raise AssertionError(f"{name}: a shard restored from a checkpoint{note} logged "
                                 "different events than the original in the steps after it; "
                                 "something the env keeps between steps is missing from "
                                 "state_dict")
        if not _same_state(restored.env.state_dict(), state):
            raise AssertionError(f"{name}: a restored shard ends in a different state than the "
                                 "original; state_dict misses something")
        restored.close()


def _watched(shard, env_cls: type[Env], seen: list[StepResult]):
    """The shard with its env's apply checked and its results recorded."""
    real_apply = shard.env.apply

    def apply(step, batch, actions):
        _check_batch(env_cls.__name__, batch)
        _check_schemas(env_cls, shard.env.config, batch, actions)
        result = real_apply(step, batch, actions)
        _check_result(env_cls, result)
        seen.append(result)
        return result

    shard.env.apply = apply
    return shard


def _check_schemas(env_cls: type[Env], config, batch: dict, actions: dict) -> None:
    """The batch carries the declared observation; the actions are declared ones."""
    name = env_cls.__name__
    declared = env_cls.action_schema(config)
    if not declared:
        raise AssertionError(f"{name} must declare actions: the action columns apply reads")
    missing = set(env_cls.observation_schema(config)) - set(batch)
    if missing:
        raise AssertionError(f"{name}: the batch lacks declared observation columns "
                             f"{sorted(missing)}")
    unknown = set(actions) - set(declared)
    if unknown:
        raise AssertionError(f"{name}: its default policy returned {sorted(unknown)}, not "
                             f"declared in actions {list(declared)}")


def _same_state(a: dict, b: dict) -> bool:
    if set(a) != set(b):
        return False
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        if x.shape != y.shape:
            return False
        if x.dtype.kind == "f" and y.dtype.kind == "f":
            if not np.array_equal(x, y, equal_nan=True):
                return False
        elif not np.array_equal(x, y):
            return False
    return True


def _check_batch(name: str, batch: dict) -> None:
    lengths = {k: len(v) for k, v in batch.items()}
    if len(set(lengths.values())) > 1:
        raise AssertionError(f"{name}.observe returned columns of different lengths: {lengths}")


def _check_result(env_cls: type[Env], result: StepResult) -> None:
    name = env_cls.__name__
    if not isinstance(result, StepResult):
        raise AssertionError(f"{name}.apply must return a StepResult; got {type(result)}")
    ev = result.events
    required = {"event", "agent", "target", "item", "root", "parent", "value"}
    missing = required - set(ev)
    if missing:
        raise AssertionError(f"{name}: events lack {sorted(missing)} (build them with "
                             "make_events)")
    n = len(ev["agent"])
    bad = {k: len(v) for k, v in ev.items() if len(v) != n}
    if bad:
        raise AssertionError(f"{name}: event columns of different lengths {bad} (agent: {n})")
    unknown = set(ev) - required - set(env_cls.event_columns)
    if unknown:
        raise AssertionError(f"{name}: events carry undeclared columns {sorted(unknown)}; "
                             "declare them in event_columns")
    codes = np.asarray(ev["event"])
    if codes.size and (codes.min() < 0 or codes.max() >= len(env_cls.event_types)):
        raise AssertionError(f"{name}: event codes outside 0..{len(env_cls.event_types) - 1}")
    for kind, cols, key, fields in (("messages", result.messages, "dst", env_cls.message_fields),
                                    ("broadcasts", result.broadcasts, "src",
                                     env_cls.broadcast_fields)):
        if cols is None:
            continue
        expected = {key, *fields}
        if set(cols) != expected:
            raise AssertionError(f"{name}: {kind} have columns {sorted(cols)}; declared "
                                 f"{sorted(expected)}")
        m = {len(v) for v in cols.values()}
        if len(m) > 1:
            raise AssertionError(f"{name}: {kind} columns have different lengths")
    if result.shared is not None and len({len(v) for v in result.shared.values()}) > 1:
        raise AssertionError(f"{name}: shared columns have different lengths")
    missing = set(env_cls.metric_names) - set(result.metrics)
    if missing:
        raise AssertionError(f"{name}: step metrics lack declared {sorted(missing)}")
    if int(result.active) < 0:
        raise AssertionError(f"{name}: active must be >= 0")


def _nan_to_null(table: pa.Table) -> pa.Table:
    """NaN != NaN, so equal runs with a NaN metric would compare unequal: use nulls."""
    import pyarrow.compute as pc

    for i, field in enumerate(table.schema):
        if pa.types.is_floating(field.type):
            col = table.column(i)
            table = table.set_column(i, field.name, pc.if_else(pc.is_nan(col), None, col))
    return table


def _canonical(run) -> tuple[pa.Table, pa.Table]:
    t = run.events().drop_columns(["shard"])
    t = t.set_column(t.schema.get_field_index("event"), "event", t["event"].cast(pa.string()))
    keys = [c for c in t.column_names if pa.types.is_integer(t.schema.field(c).type)
            or c == "event"]
    t = t.sort_by([(c, "ascending") for c in ["step", "agent", "event", *[
        k for k in keys if k not in ("step", "agent", "event")]]])
    m = run.metrics()
    # Everything in the metrics table is deterministic (wall-clock values live in
    # timings.arrow), except what depends on the shard count by definition.
    keep = [c for c in m.column_names if "cross" not in c
            and c not in ("policy_calls", "policy_calls_saved", "policy_text_calls")]
    return _nan_to_null(t), _nan_to_null(m.select(keep))


def check_determinism(env_cls: type[Env], tmp_dir: str | Path, shards: int = 3,
                      backend: str = "local", **overrides: Any) -> list:
    """Equal logs for two runs of the smoke config, and for 1 vs ``shards`` shards.

    ``overrides`` replace top-level keys of the smoke config (e.g. ``faults``).
    Returns the three runs (1 shard, 1 shard, ``shards`` shards).
    """
    import swarm

    tmp = Path(tmp_dir)
    name = env_cls.__name__
    runs = [swarm.run(smoke_run_config(env_cls, shards=k, **overrides),
                      tmp / f"{env_cls.name}-{i}-{k}",
                      backend=backend, progress=False)
            for i, k in enumerate((1, 1, shards))]
    (ev0, m0), (ev1, m1), (ev3, m3) = (_canonical(r) for r in runs)
    if ev0.num_rows == 0:
        raise AssertionError(f"{name}: the smoke config logs no events; make it exercise the "
                             "env")
    if not ev0.equals(ev1):
        raise AssertionError(f"{name}: two runs with the same seed logged different events; "
                             "draw randomness only through view.rng (keyed)")
    if not m0.equals(m1):
        differ = [c for c in m0.column_names if not m0[c].equals(m1[c])]
        raise AssertionError(f"{name}: two runs with the same seed gave different metrics "
                             f"{differ}; a wall-clock figure belongs in timing_metrics, "
                             "randomness in view.rng")
    if not ev0.equals(ev3):
        raise AssertionError(f"{name}: 1 and {shards} shards logged different events; results "
                             "must not depend on sharding (key draws by agent/edge ids, sort "
                             "inboxes before summing floats)")
    if not m0.equals(m3):
        raise AssertionError(f"{name}: 1 and {shards} shards gave different metrics")
    return runs
