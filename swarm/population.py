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
from typing import Annotated, Any, Literal, Union

import numpy as np
import pyarrow as pa
import torch
from pydantic import Field, model_validator

from swarm.config_base import StrictModel
from swarm.envs.base import ChoiceSpec, Env, EnvConfig, ShardView
from swarm.errors import ConfigError
from swarm.policies.backends.base import Backend
from swarm.policies.base import Policy, PolicyContext, PolicyStats, as_numpy
from swarm.policies.llm import LLMPolicy, LLMPolicyConfig, Persona, check_template

log = logging.getLogger(__name__)

__all__ = [
    "DefaultPolicyConfig",
    "POLICY_METRICS",
    "Population",
    "PopulationConfig",
    "PolicyGroup",
    "load_personas",
]

#: Per-step metrics every run records about the decide stage.
POLICY_METRICS = ("policy_decisions", "policy_calls", "policy_calls_saved", "policy_fallbacks")


class DefaultPolicyConfig(StrictModel):
    """The env's own heuristic rule (independent cascade, threshold, ...)."""

    kind: Literal["default"] = "default"
    device: str = "cpu"
    """Where its tensors live: cpu (the env's state is numpy), auto, cuda or cuda:i."""


PolicyConfig = Annotated[Union[DefaultPolicyConfig, LLMPolicyConfig],  # noqa: UP007
                         Field(discriminator="kind")]


class PolicyGroup(StrictModel):
    """Agents that follow one policy: a fraction of the population, or those whose
    persona row matches ``where``."""

    name: str | None = None
    """A label for the group (default: its policy kind and position)."""
    policy: PolicyConfig = DefaultPolicyConfig()
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
                                      min_length=1)

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

    @property
    def uses_llm(self) -> bool:
        return any(isinstance(g.policy, LLMPolicyConfig) for g in self.groups)


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
                     personas: pa.Table | None, n: int) -> None:
    """Everything about the mix that can be checked on the driver before a run starts."""
    spec = env_cls.choice_spec(env_config)
    for i, group in enumerate(config.groups):
        where = f"population.groups[{i}]"
        if isinstance(group.policy, LLMPolicyConfig):
            cfg = group.policy
            if spec is None:
                raise ConfigError(f"{where}: env {env_cls.name!r} with this config has no "
                                  "choice for LLM-style agents (e.g. cascade decides per edge "
                                  "except with model: linear_threshold)")
            try:
                check_template(cfg.template or spec.template, spec, f"{where}.policy.template")
                if cfg.text is not None:
                    if not spec.text:
                        raise ValueError(f"env {env_cls.name!r} has nowhere to put text")
                    unknown = set(cfg.text.when) - set(spec.labels)
                    if unknown:
                        raise ValueError(f"text.when names {sorted(unknown)}; the allowed "
                                         f"actions are {list(spec.labels)}")
                    check_template(cfg.text.template or spec.text_template, spec,
                                   "text.template", extra=("choice",))
                if cfg.actions is not None and set(cfg.actions) != set(spec.labels):
                    raise ValueError(f"actions must give a text for each of {list(spec.labels)};"
                                     f" got {sorted(cfg.actions)}")
                unknown = set(cfg.bucket) - set(spec.fields)
                if unknown:
                    raise ValueError(f"bucket names {sorted(unknown)}; numeric fields here: "
                                     f"{list(spec.fields)}")
            except ValueError as exc:
                raise ConfigError(f"{where}.policy: {exc}") from None
            if cfg.backend == "transformers":
                _check_model_dir(cfg.model, f"{where}.policy.model")
            else:
                _check_endpoint(cfg, where)
        if group.where is not None:
            missing = set(group.where) - set(personas.column_names)
            if missing:
                raise ConfigError(f"{where}.where names {sorted(missing)}, not columns of the "
                                  f"persona table ({personas.column_names})")
    if personas is not None and "agent" in personas.column_names:
        ids = as_numpy(personas.column("agent").to_numpy())
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise ConfigError(f"population.personas: column 'agent' holds ids outside 0..{n - 1}")


def _check_endpoint(cfg: LLMPolicyConfig, where: str) -> None:
    """An endpoint that is down or does not serve the model fails the run before step 0
    (``on_error: idle`` only warns: its agents then fall back, counted, every step)."""
    from swarm.policies.backends.base import BackendError
    from swarm.policies.llm import make_backend

    backend = make_backend(cfg)
    try:
        backend.check()
    except BackendError as exc:
        if cfg.on_error == "raise":
            raise ConfigError(f"{where}.policy: {exc}") from None
        log.warning("%s.policy: %s; on_error is idle, so its agents will fall back", where, exc)
    finally:
        backend.close()


def _check_model_dir(path: str, key: str) -> None:
    if not os.path.isdir(path):
        raise ConfigError(f"{key}: model directory not found: {path}. Give a local checkpoint "
                          "directory (config.json, weights, tokenizer), e.g. one saved with "
                          "save_pretrained; nothing is downloaded")
    if not os.path.exists(os.path.join(path, "config.json")):
        raise ConfigError(f"{key}: {path} has no config.json, so it is not a transformers "
                          "checkpoint directory")


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
    backends : mapping of group index to Backend, optional
        Backends made by the runner (policy-server proxies); other LLM groups
        load their own with ``make_backend``.
    """

    def __init__(self, config: PopulationConfig, env: Env, view: ShardView,
                 personas: pa.Table | None = None,
                 backends: Mapping[int, Backend] | None = None):
        from swarm.policies.llm import make_backend

        self.config = config
        self.view = view
        n = view.n_local
        self.spec: ChoiceSpec | None = type(env).choice_spec(env.config)
        persona_rows, self.persona = _assign_personas(personas, view)
        self.group = _assign_groups(config, personas, view, self.persona)
        self.policies: list[Policy] = []
        self._owned: list[Backend] = []
        memory_k = 0
        for i, group in enumerate(config.groups):
            pcfg = group.policy
            if isinstance(pcfg, LLMPolicyConfig):
                backend = (backends or {}).get(i)
                if backend is None:
                    backend = make_backend(pcfg)
                    self._owned.append(backend)
                policy = LLMPolicy(pcfg, self.spec, backend, persona_rows)
                if policy.uses_memory:
                    memory_k = max(memory_k, pcfg.memory)
            else:
                policy = env.default_policy()
                policy.device = torch.device(pcfg.device) if pcfg.device != "cpu" else \
                    policy.device
            self.policies.append(policy)
        # What LLM-style agents did in their last k decisions (label index, -1 = none).
        self.memory = np.full((n, memory_k), -1, dtype=np.int8) if memory_k else None
        self.single = len(self.policies) == 1 and not isinstance(self.policies[0], LLMPolicy)

    def decide(self, batch: dict[str, Any], step: int, rng) -> tuple[dict[str, Any], dict]:
        """Actions for the batch (in batch order) and the step's policy metrics."""
        t0 = time.perf_counter()
        ctx = PolicyContext(step=step, rng=rng, stats=PolicyStats())
        if self.single:
            actions = self.policies[0].decide(batch, ctx)
        else:
            actions = self._decide_groups(batch, ctx)
        s = ctx.stats
        return actions, {"policy_decisions": s.decisions, "policy_calls": s.calls,
                         "policy_calls_saved": max(s.decisions - s.calls, 0),
                         "policy_fallbacks": s.fallbacks,
                         "decide_seconds": time.perf_counter() - t0}

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
            if sel.shape[0] == 0 and len(self.policies) > 1:
                continue
            sub = {k: _take(v, sel) for k, v in batch.items()}
            if isinstance(policy, LLMPolicy):
                sub["persona"] = self.persona[rows[sel]]
                if self.memory is not None:
                    sub["memory"] = self.memory[rows[sel]]
            acts = policy.decide(sub, ctx)
            for key, value in acts.items():
                _scatter(merged, key, value, sel, n)
            if isinstance(policy, LLMPolicy) and self.memory is not None and sel.shape[0]:
                chosen = as_numpy(acts[self.spec.action]).astype(np.int8)
                mem = self.memory[rows[sel]]
                self.memory[rows[sel]] = np.concatenate([mem[:, 1:], chosen[:, None]], axis=1)
        return {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) and v.dtype != object
                    else (v.tolist() if isinstance(v, np.ndarray) else v))
                for k, v in merged.items()}

    # -- checkpoints -------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        return {} if self.memory is None else {"memory": self.memory}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        if "memory" in state and self.memory is not None:
            self.memory[...] = np.asarray(state["memory"]).reshape(self.memory.shape)

    def close(self) -> None:
        for backend in self._owned:
            backend.close()


def _take(value: Any, sel: np.ndarray) -> Any:
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value[torch.from_numpy(sel)] if isinstance(value, torch.Tensor) else value[sel]
    return [value[i] for i in sel.tolist()]


def _scatter(merged: dict, key: str, value: Any, sel: np.ndarray, n: int) -> None:
    """Write one group's action column into the batch-order column ``merged[key]``."""
    if isinstance(value, list):
        col = merged.setdefault(key, np.full(n, None, dtype=object))
        col[sel] = np.array(value + [None], dtype=object)[:-1] if value else []
        return
    arr = as_numpy(value)
    col = merged.get(key)
    if col is None:
        col = merged[key] = np.zeros(n, dtype=arr.dtype)
    elif np.result_type(col.dtype, arr.dtype) != col.dtype:
        col = merged[key] = col.astype(np.result_type(col.dtype, arr.dtype))
    col[sel] = arr


def _assign_personas(personas: pa.Table | None, view: ShardView):
    """(persona rows as objects, the persona row index of each local agent)."""
    n = view.n_local
    if personas is None:
        return None, np.zeros(n, np.int64)
    rows = [Persona(r) for r in personas.to_pylist()]
    if "agent" in personas.column_names:
        ids = personas.column("agent").to_numpy().astype(np.int64)
        order = np.argsort(ids, kind="stable")
        pos = np.searchsorted(ids[order], view.agents)
        pos = np.minimum(pos, max(ids.shape[0] - 1, 0))
        found = ids[order][pos] == view.agents
        # Agents without a row of their own get the default persona (an extra last row).
        rows.append(Persona({"description": "an ordinary member of the network"}))
        return rows, np.where(found, order[pos], len(rows) - 1).astype(np.int64)
    bits = view.rng.bits("persona", view.agents)
    return rows, (bits % np.uint64(len(rows))).astype(np.int64)


def _assign_groups(config: PopulationConfig, personas: pa.Table | None, view: ShardView,
                   persona: np.ndarray) -> np.ndarray:
    """The group index of each local agent: `where` groups first, then by keyed fraction."""
    n = view.n_local
    group = np.full(n, -1, dtype=np.int8)
    for g, spec in enumerate(config.groups):
        if spec.where is None:
            continue
        match = np.ones(len(persona), dtype=bool)
        for column, accepted in spec.where.items():
            values = np.asarray(personas.column(column).to_pylist() + [None], dtype=object)
            match &= np.isin(values[np.minimum(persona, len(values) - 1)],
                             np.asarray(accepted, dtype=object))
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
