"""Who decides for whom: the policy mix of a population and the decide stage on a shard.

A population is split into policy groups, by fraction (a keyed draw per agent,
so the split does not depend on sharding) or by an attribute of the agent's
persona row. On a shard, ``Population.decide`` groups the batch's rows by
their agent's policy and calls each policy once per step, then merges the
actions back into batch order. It also keeps what LLM-style agents remember
(their last k own actions), which checkpoints save, and counts model calls,
calls saved by deduplication and fallbacks for the step's metrics.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field, SerializeAsAny, model_validator

from swarm.config_base import StrictModel
from swarm.contract import (
    ChoiceSpec,
    PolicyContext,
    PolicyStats,
    as_numpy,
    is_tensor,
    resolve_device,
)
from swarm.errors import ConfigError
from swarm.registry import POLICIES

if TYPE_CHECKING:
    from swarm.envs.base import Env, EnvConfig, ShardView

log = logging.getLogger(__name__)

__all__ = [
    "DefaultPolicyConfig",
    "PolicyConfig",
    "POLICY_METRICS",
    "Population",
    "PopulationConfig",
    "PolicyGroup",
    "load_personas",
]

#: Per-step metrics every run records about the decide stage.
POLICY_METRICS = ("policy_decisions", "policy_calls", "policy_calls_saved", "policy_fallbacks",
                  "policy_text_calls")


class PolicyConfig(StrictModel):
    """A group's policy: ``kind`` is ``default`` (the env's own rule) or the key of a
    registered policy with a ``Config`` of its own (``llm``: LLM-style agents).

    Validating this base class validates the config of the kind named, so a config
    reaches policies without the engine importing any of them.
    """

    kind: str
    device: str = "cpu"

    @model_validator(mode="wrap")
    @classmethod
    def _by_kind(cls, data: Any, handler):
        if cls is not PolicyConfig or not isinstance(data, dict):
            return handler(data)
        return cls.resolve(data).model_validate(data)

    @classmethod
    def resolve(cls, data: Any) -> type[PolicyConfig]:
        """The config class of the kind ``data`` names (``default`` when none)."""
        kind = data.get("kind", "default") if isinstance(data, dict) else "default"
        if kind == "default":
            return DefaultPolicyConfig
        if kind not in POLICIES or getattr(POLICIES[kind], "Config", None) is None:
            raise ValueError(f"unknown policy kind {kind!r}; allowed: "
                             f"{', '.join(configurable_kinds())}")
        return POLICIES[kind].Config


def configurable_kinds() -> list[str]:
    """``default`` and every registered policy with a ``Config`` of its own (this loads
    them all: only for messages)."""
    return ["default", *(k for k in POLICIES if getattr(POLICIES[k], "Config", None))]


class DefaultPolicyConfig(PolicyConfig):
    """The env's own heuristic rule (independent cascade, threshold, ...)."""

    kind: Literal["default"] = "default"
    device: str = Field("cpu", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    """Where its tensors live: cpu (the env's state is numpy), auto, cuda or cuda:i."""


class PolicyGroup(StrictModel):
    """Agents that follow one policy: a fraction of the population, or those whose
    persona row matches ``where``."""

    name: str | None = None
    """A label for the group (default: its policy kind and position)."""
    policy: SerializeAsAny[PolicyConfig] = DefaultPolicyConfig()
    fraction: float | None = Field(None, gt=0.0, le=1.0)
    """Share of the agents no `where` group claims (the fractions must sum to 1)."""
    where: dict[str, list[Any]] | None = None
    """Persona columns and accepted values, e.g. {role: [journalist]}; first match wins."""

    @model_validator(mode="after")
    def _one_rule(self) -> PolicyGroup:
        if (self.fraction is None) == (self.where is None):
            raise ValueError("give a group either fraction or where (not both)")
        return self


class PopulationConfig(StrictModel):
    """The policy mix and the persona table."""

    personas: str | None = None
    """A persona table (Parquet or CSV). With an `agent` column, rows belong to those
    agents; otherwise agent i gets a row drawn by a keyed hash (so 100 personas spread
    over any number of agents)."""
    groups: list[PolicyGroup] = Field(default_factory=lambda: [PolicyGroup(fraction=1.0)],
                                      min_length=1, max_length=127)

    @model_validator(mode="after")
    def _fractions(self) -> PopulationConfig:
        fractions = [g.fraction for g in self.groups if g.fraction is not None]
        if fractions and abs(sum(fractions) - 1.0) > 1e-9:
            raise ValueError(f"group fractions must sum to 1; got {sum(fractions):g} "
                             f"({fractions})")
        if not fractions and self.groups:
            raise ValueError("add a group with a fraction (e.g. fraction: 1.0) for the agents "
                             "no `where` group matches")
        if any(g.where for g in self.groups) and self.personas is None:
            raise ValueError("`where` groups match persona columns: give population.personas")
        return self


def load_personas(path: str) -> pa.Table:
    """Read a persona table (Parquet or CSV) with a clear error for a missing or bad file."""
    if not os.path.exists(path):
        raise ConfigError(f"population.personas: file not found: {path}")
    try:
        if path.endswith((".csv", ".tsv")):
            import pyarrow.csv as pcsv

            opts = pcsv.ParseOptions(delimiter="\t" if path.endswith(".tsv") else ",")
            table = pcsv.read_csv(path, parse_options=opts)
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(f"population.personas: cannot read {path} as "
                          f"{'CSV' if path.endswith(('.csv', '.tsv')) else 'Parquet'}: {exc}. "
                          "Give a .parquet file or a .csv with a header row") from None
    if table.num_rows == 0:
        raise ConfigError(f"population.personas: {path} has no rows")
    if "agent" in table.column_names:
        agent = table.column("agent")
        if not pa.types.is_integer(agent.type):
            raise ConfigError(f"population.personas: column 'agent' must hold integer agent "
                              f"ids; got {agent.type}")
    return table


def check_population(config: PopulationConfig, env_cls: type[Env], env_config: EnvConfig,
                     personas: pa.Table | None, n: int, backend: str = "ray") -> None:
    """Everything about the mix that can be checked on the driver before a run starts.

    A group's own policy kind checks its config (``check_config``: templates, model
    files, endpoints for LLM-style agents); the env's default rule is looked up.
    """
    spec = env_cls.choice_spec(env_config)
    for i, group in enumerate(config.groups):
        where = f"population.groups[{i}]"
        _check_device(group.policy.device, f"{where}.policy.device", backend)
        if group.policy.kind != "default":
            POLICIES[group.policy.kind].check_config(group.policy, spec, personas,
                                                     f"{where}.policy", env_cls.name)
        if group.where is not None:
            _check_where(group.where, personas, f"{where}.where")
    if personas is not None and "agent" in personas.column_names:
        ids = as_numpy(personas.column("agent").to_numpy())
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise ConfigError(f"population.personas: column 'agent' holds ids outside 0..{n - 1}")


def _check_device(device: str, key: str, backend: str) -> None:
    """A device the driver can vouch for (a cluster's GPUs are checked where they are)."""
    if backend == "local" or not device.startswith("cuda"):
        try:
            resolve_device(device)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None


def _check_where(where: dict[str, list[Any]], personas: pa.Table, key: str) -> None:
    """Accepted values must have the column's type, and match at least one persona row."""
    import pyarrow.compute as pc

    missing = set(where) - set(personas.column_names)
    if missing:
        raise ConfigError(f"{key} names {sorted(missing)}, not columns of the persona table "
                          f"({personas.column_names})")
    match = None
    for column, accepted in where.items():
        col = personas.column(column)
        try:
            values = pa.array(accepted).cast(col.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            raise ConfigError(f"{key}.{column}: {accepted!r} cannot be compared with the "
                              f"persona column, which holds {col.type}; write values of that "
                              "type") from None
        hit = pc.is_in(col, value_set=values)
        match = hit if match is None else pc.and_(match, hit)
    if not pc.any(match).as_py():
        raise ConfigError(f"{key}: no persona row matches {where}; the group would be empty")


class Population:
    """The decide stage on one shard: policies, who follows which, and agent memory.

    Parameters
    ----------
    config : PopulationConfig
    env : Env
        The shard's env (its default policy and choice spec).
    view : ShardView
        The shard's agents (global ids) and keyed RNG.
    personas : pyarrow.Table, optional
        The persona table.
    backends : mapping of group index to a backend, optional
        Backends made by the runner (policy-server proxies) for the groups whose
        policy kind is served; other groups build their own.

    A group's policy is the env's default rule, looked up by the key
    ``Env.default_policy`` names, or the registered policy of its ``kind``, built by
    ``from_config``. A policy that reads personas (``uses_persona``) gets each row's
    persona index; one that remembers (``memory_k`` > 0) gets its agents' last actions.
    """

    def __init__(self, config: PopulationConfig, env: Env, view: ShardView,
                 personas: pa.Table | None = None,
                 backends: Mapping[int, Any] | None = None):
        self.config = config
        self.view = view
        n = view.n_local
        self.spec: ChoiceSpec | None = type(env).choice_spec(env.config)
        self.env_name = type(env).name
        #: What policies may return here (the env's action schema; empty: not declared).
        self.allowed = frozenset(type(env).action_schema(env.config))
        self.persona = _assign_personas(personas, view)
        self.group = _assign_groups(config, personas, view, self.persona)
        self.policies: list = []
        memory_k = 0
        for i, group in enumerate(config.groups):
            pcfg = group.policy
            if pcfg.kind == "default":
                key, kwargs = env.default_policy()
                policy = POLICIES[key](**kwargs)
                policy.device = resolve_device(pcfg.device)
                _check_labels(policy, self.spec, key, type(env).name)
            else:
                policy = POLICIES[pcfg.kind].from_config(
                    pcfg, self.spec, personas=personas, backend=(backends or {}).get(i),
                    shards=view.num_shards)
            memory_k = max(memory_k, getattr(policy, "memory_k", 0))
            self.policies.append(policy)
        # What LLM-style agents did in their last k decisions (label index, -1 = none).
        self.memory = np.full((n, memory_k), -1, dtype=np.int8) if memory_k else None
        self.single = len(self.policies) == 1 and not _per_agent(self.policies[0])

    def decide(self, batch: dict[str, Any], step: int, rng) -> tuple[dict[str, Any], dict]:
        """Actions for the batch (in batch order) and the step's policy metrics."""
        t0 = time.perf_counter()
        ctx = PolicyContext(step=step, rng=rng, stats=PolicyStats())
        if self.single:
            actions = self.policies[0].decide(batch, ctx)
            self._check_actions(self.policies[0], actions)
        else:
            actions = self._decide_groups(batch, ctx)
        s = ctx.stats
        return actions, {"policy_decisions": s.decisions, "policy_calls": s.calls,
                         "policy_calls_saved": max(s.decisions - s.calls, 0),
                         "policy_fallbacks": s.fallbacks, "policy_text_calls": s.text_calls,
                         "decide_seconds": time.perf_counter() - t0}

    def decide_rows(self, batch: dict[str, Any], rows: np.ndarray, step: int, rng
                    ) -> tuple[dict[str, Any], dict]:
        """Actions for the batch rows ``rows`` only (the others: zeros, the env's first
        label, or None for text), in batch order, and the step's policy metrics (the
        engine's crash faults: a crashed agent's rows)."""
        n = len(next(iter(batch.values()))) if batch else 0
        actions, decided = self.decide({k: _take(v, rows) for k, v in batch.items()}, step,
                                       rng)
        full: dict[str, Any] = {}
        for key, value in actions.items():
            _scatter(full, key, value, rows, n, undecided=False)
        return full, decided

    def _decide_groups(self, batch: dict[str, Any], ctx: PolicyContext) -> dict[str, Any]:
        if "agent" not in batch:
            raise ValueError("mixing policies needs an 'agent' column in the env's batch "
                             "(the global id of each row's agent)")
        agents = as_numpy(batch["agent"]).astype(np.int64, copy=False)
        n = agents.shape[0]
        rows = self.view.local_index(agents)
        group = self.group[rows]
        order = np.argsort(group, kind="stable")
        bounds = np.searchsorted(group[order], np.arange(len(self.policies) + 1))
        merged: dict[str, Any] = {}
        for g, policy in enumerate(self.policies):
            sel = order[bounds[g]:bounds[g + 1]]
            if sel.shape[0] == 0 and n > 0:
                continue  # an empty batch still asks every policy: its columns exist
            sub = {k: _take(v, sel) for k, v in batch.items()}
            if getattr(policy, "uses_persona", False):
                sub["persona"] = self.persona[rows[sel]]
            remembers = getattr(policy, "memory_k", 0) > 0 and self.memory is not None
            if remembers:
                sub["memory"] = self.memory[rows[sel]]
            acts = policy.decide(sub, ctx)
            self._check_actions(policy, acts)
            for key, value in acts.items():
                _scatter(merged, key, value, sel, n)
            if remembers and sel.shape[0]:
                chosen = as_numpy(acts[self.spec.action]).astype(np.int8)
                mem = self.memory[rows[sel]]
                self.memory[rows[sel]] = np.concatenate([mem[:, 1:], chosen[:, None]], axis=1)
        import torch

        return {k: torch.from_numpy(v) if v.dtype != object else v for k, v in merged.items()}

    def _check_actions(self, policy, actions: Mapping[str, Any]) -> None:
        unknown = set(actions) - self.allowed if self.allowed else ()
        if unknown:
            raise ValueError(f"policy {policy.name!r} returned {sorted(unknown)}, which env "
                             f"{self.env_name!r} does not read; its actions are "
                             f"{sorted(self.allowed)}")

    # -- checkpoints -------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        return {} if self.memory is None else {"memory": self.memory}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        if "memory" in state and self.memory is not None:
            self.memory[...] = np.asarray(state["memory"]).reshape(self.memory.shape)

    def close(self) -> None:
        for policy in self.policies:
            policy.close()


def _per_agent(policy) -> bool:
    """Whether the policy needs the population's per-agent columns (persona, memory)."""
    return bool(getattr(policy, "uses_persona", False) or getattr(policy, "memory_k", 0))


def _check_labels(policy, spec: ChoiceSpec | None, key: str, env: str) -> None:
    """A rule that returns codes of the env's choice must know the same labels."""
    labels = getattr(policy, "labels", None)
    if labels is not None and spec is not None and tuple(labels) != tuple(spec.labels):
        raise ConfigError(f"policy {key!r} returns codes of {list(labels)}, but env {env!r} "
                          f"declares the labels {list(spec.labels)}; update one to the other")


def _take(value: Any, sel: np.ndarray) -> Any:
    if is_tensor(value):
        import torch

        return value[torch.from_numpy(sel)]
    if isinstance(value, np.ndarray):
        return value[sel]
    return [value[i] for i in sel.tolist()]


def _scatter(merged: dict, key: str, value: Any, sel: np.ndarray, n: int,
             undecided: bool = True) -> None:
    """Write one group's action column into the batch-order column ``merged[key]``.

    Rows no group wrote read as not decided: -1 in an int column, NaN in a float one,
    None for text (``undecided``; else 0). So an env tells the rows of a policy that
    returns its choice column (an LLM group) from the others' without any marker.
    """
    if isinstance(value, list) or (isinstance(value, np.ndarray) and value.dtype == object):
        col = merged.setdefault(key, np.full(n, None, dtype=object))
        col[sel] = value
        return
    arr = as_numpy(value)
    col = merged.get(key)
    if col is None:
        shape, kind = (n, *arr.shape[1:]), arr.dtype.kind
        fill = (-1 if kind == "i" else np.nan if kind == "f" else 0) if undecided else 0
        col = merged[key] = np.full(shape, fill, dtype=arr.dtype)
    elif np.result_type(col.dtype, arr.dtype) != col.dtype:
        col = merged[key] = col.astype(np.result_type(col.dtype, arr.dtype))
    col[sel] = arr


def _assign_personas(personas: pa.Table | None, view: ShardView) -> np.ndarray:
    """The persona row index of each local agent.

    With an ``agent`` column, agents without a row of their own get index
    ``num_rows``: one past the table, the default persona (policies that read
    personas add that row)."""
    n = view.n_local
    if personas is None:
        return np.zeros(n, np.int64)
    rows = range(personas.num_rows + ("agent" in personas.column_names))
    if "agent" in personas.column_names:
        ids = personas.column("agent").to_numpy().astype(np.int64)
        order = np.argsort(ids, kind="stable")
        pos = np.searchsorted(ids[order], view.agents)
        pos = np.minimum(pos, max(ids.shape[0] - 1, 0))
        found = ids[order][pos] == view.agents
        # Agents without a row of their own get the default persona (the last row).
        return np.where(found, order[pos], len(rows) - 1).astype(np.int64)
    bits = view.rng.bits("persona", view.agents)
    return (bits % np.uint64(len(rows))).astype(np.int64)


def _assign_groups(config: PopulationConfig, personas: pa.Table | None, view: ShardView,
                   persona: np.ndarray) -> np.ndarray:
    """The group index of each local agent: `where` groups first, then by keyed fraction."""
    n = view.n_local
    group = np.full(n, -1, dtype=np.int8)
    for g, spec in enumerate(config.groups):
        if spec.where is None:
            continue
        import pyarrow.compute as pc

        row_match = np.ones(personas.num_rows, dtype=bool)
        for column, accepted in spec.where.items():
            col = personas.column(column)
            hit = pc.is_in(col, value_set=pa.array(accepted).cast(col.type)).fill_null(False)
            row_match &= hit.to_numpy(zero_copy_only=False)
        # The default persona (agents without a row of an `agent` table) matches nothing.
        row_match = np.append(row_match, False)
        match = row_match[np.minimum(persona, row_match.shape[0] - 1)]
        group[(group < 0) & match] = g
    frac = [(g, s.fraction) for g, s in enumerate(config.groups) if s.fraction is not None]
    if frac:
        edges = np.cumsum([f for _, f in frac])
        edges[-1] = 1.0 + 1e-12  # rounding never leaves an agent without a group
        u = view.rng.uniform("policy_group", view.agents)
        which = np.searchsorted(edges, u, side="right")
        ids = np.array([g for g, _ in frac], dtype=np.int8)
        free = group < 0
        group[free] = ids[which[free]]
    return group
