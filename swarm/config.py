"""Run configuration: one YAML file validated once, at the edge, into frozen models.

The config names the graph, the env, the run length, sharding and logging.
Every rejection is a ConfigError that names the dotted key, the value and
what is allowed, and it happens before anything is written to disk.
"""

from __future__ import annotations

import math
import os
from typing import Annotated, Any, Literal, Union

from pydantic import Field, ValidationError, model_validator

from swarm.config_base import StrictModel
from swarm.config_file import parse_yaml, read_yaml, shorten
from swarm.envs.base import ENV_REGISTRY, EnvConfig
from swarm.errors import ConfigError
from swarm.faults import FaultsConfig
from swarm.graph import MAX_AGENTS
from swarm.population import PopulationConfig

__all__ = [
    "RunConfig",
    "GraphConfig",
    "LogConfig",
    "CheckpointConfig",
    "FaultToleranceConfig",
    "load_config",
    "validate_config",
    "run_graph",
    "apply_overrides",
    "MAX_AGENTS",
    "MAX_STEPS",
    "MAX_SHARDS",
]

# Upper bounds a real run could use, so that a typo (n=1e12, steps=1e20) is a
# named error at `swarm validate`, not an allocation that fails minutes later.
#: Steps of one run.
MAX_STEPS = 10**8
#: Shard actors (a 100-node cluster of 192-core machines has about 2 x 10^4 cores).
MAX_SHARDS = 100_000
#: Seeds are 63-bit: they key a 64-bit counter-based generator.
MAX_SEED = 2**63 - 1
_INT64 = 2**63 - 1
#: Agents of a Delaunay graph: each generating process triangulates all of them.
MAX_DELAUNAY_AGENTS = 2 * 10**7


class BarabasiAlbertGraph(StrictModel):
    """Preferential attachment: ``n`` agents, each new one with ``m`` edges."""

    kind: Literal["barabasi_albert"]
    n: int = Field(ge=2, le=MAX_AGENTS)
    m: int = Field(ge=1)

    @model_validator(mode="after")
    def _m_below_n(self):
        if self.m >= self.n:
            raise ValueError(f"m must be < n; got m={self.m}, n={self.n}")
        return self


class WattsStrogatzGraph(StrictModel):
    """Small world: a ring where each agent links to ``k`` neighbours, rewired with ``p``."""

    kind: Literal["watts_strogatz"]
    n: int = Field(ge=3, le=MAX_AGENTS)
    k: int = Field(ge=2)
    p: float = Field(ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _k_even_below_n(self):
        if self.k % 2 or self.k >= self.n:
            raise ValueError(f"k must be even and < n; got k={self.k}, n={self.n}")
        return self


class ErdosRenyiGraph(StrictModel):
    """G(n, p) with p chosen to give ``mean_degree``."""

    kind: Literal["erdos_renyi"]
    n: int = Field(ge=2, le=MAX_AGENTS)
    mean_degree: float = Field(ge=0.0)

    @model_validator(mode="after")
    def _degree_fits(self):
        if self.mean_degree > self.n - 1:
            raise ValueError(f"mean_degree must be <= n - 1 = {self.n - 1}; got {self.mean_degree}")
        return self


class SBMGraph(StrictModel):
    """Stochastic block model: block ``sizes``, symmetric matrix ``p`` of edge probabilities."""

    kind: Literal["sbm"]
    sizes: list[Annotated[int, Field(ge=1)]] = Field(min_length=1)
    p: list[list[Annotated[float, Field(ge=0.0, le=1.0)]]]

    @model_validator(mode="after")
    def _square(self):
        k = len(self.sizes)
        if len(self.p) != k or any(len(row) != k for row in self.p):
            raise ValueError(f"p must be a {k}x{k} matrix, one row and column per block")
        if any(self.p[i][j] != self.p[j][i] for i in range(k) for j in range(k)):
            raise ValueError("p must be symmetric")
        if sum(self.sizes) > MAX_AGENTS:
            raise ValueError(f"the blocks hold {sum(self.sizes):,} agents; at most "
                             f"{MAX_AGENTS:,}")
        return self


class ConfigurationGraph(StrictModel):
    """Configuration model over an explicit degree sequence (sum must be even)."""

    kind: Literal["configuration"]
    degrees: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)

    @model_validator(mode="after")
    def _even(self):
        if sum(self.degrees) % 2:
            raise ValueError(f"degrees must sum to an even number; got {sum(self.degrees)}")
        return self


class DelaunayGraph(StrictModel):
    """Planar proximity graph: the Delaunay triangulation of ``n`` uniform points in the
    unit square (AgentsNet's "dt" family); mean degree just under 6.

    ``n`` is capped far below MAX_AGENTS because every process that generates a slice
    triangulates all ``n`` points: measured at n=1e6, about 11 s and 650 B per point
    of qhull memory, so n=2e7 is already minutes and ~13 GiB in every shard's build.
    """

    kind: Literal["delaunay"]
    n: int = Field(ge=3, le=MAX_DELAUNAY_AGENTS)


class EdgeListGraph(StrictModel):
    """An edge-list file: text (``src dst`` per line) or Parquet (``src``, ``dst`` columns)."""

    kind: Literal["edgelist"]
    path: str
    directed: bool = False
    n: int | None = Field(None, ge=1, le=MAX_AGENTS)
    """Number of agents; default max id + 1 (ids without edges are isolated agents)."""


GraphConfig = Annotated[
    Union[  # noqa: UP007 - a discriminated union reads clearer spelled out
        BarabasiAlbertGraph,
        WattsStrogatzGraph,
        ErdosRenyiGraph,
        SBMGraph,
        ConfigurationGraph,
        DelaunayGraph,
        EdgeListGraph,
    ],
    Field(discriminator="kind"),
]
GRAPH_KINDS = ("barabasi_albert", "watts_strogatz", "erdos_renyi", "sbm", "configuration",
               "delaunay", "edgelist")


class LogConfig(StrictModel):
    """Event logging."""

    flush_every: int = Field(10, ge=1, le=MAX_STEPS)
    """Steps between flushes of a shard's event buffer to a new Arrow chunk."""


class CheckpointConfig(StrictModel):
    """Checkpoints: each shard's full state, written as Arrow under run_dir/state/."""

    every: int = Field(10, ge=0, le=MAX_STEPS)
    """Steps between checkpoints (0 turns them off; a failure then restarts from step 0)."""


class FaultToleranceConfig(StrictModel):
    """What the driver does when a shard actor or its node dies."""

    max_restarts: int = Field(3, ge=0, le=1000)
    """Restarts from the last checkpoint before the run stops as `failed` (resumable later)."""


class RunConfig(StrictModel):
    """A whole run. ``env`` is validated by the config class of the registered env it names."""

    seed: int = Field(0, ge=0, le=MAX_SEED)
    """The run seed: every random draw (graph, seeds, transmissions) derives from it."""
    steps: int = Field(100, ge=1, le=MAX_STEPS)
    """Maximum number of steps; a run also stops when nothing is active."""
    shards: int = Field(1, ge=1, le=MAX_SHARDS)
    """Number of shard actors the population is split over."""
    partition: Literal["contiguous", "hash", "metis", "label_propagation"] = "contiguous"
    """How agents are assigned to shards: id ranges, a hash of the id, or a graph partition
    that cuts fewer edges: METIS (needs pymetis; falls back to label_propagation with a
    warning), or label_propagation (numpy only; a larger cut than METIS)."""
    graph: GraphConfig
    env: EnvConfig
    log: LogConfig = LogConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    fault_tolerance: FaultToleranceConfig = FaultToleranceConfig()
    memory_check: bool = True
    """Refuse to start when the estimated peak memory exceeds the cluster's memory."""
    faults: FaultsConfig = FaultsConfig()
    """Lost messages, partitions and crashed agents injected into message delivery."""
    population: PopulationConfig = PopulationConfig()
    """The policy mix (default: every agent follows the env's own rule) and personas."""

    def dump(self) -> dict:
        """Plain data, with the env's own fields (not just the base class's)."""
        data = self.model_dump(mode="json", exclude={"env"})
        data["env"] = self.env.model_dump(mode="json")
        return data


# --- loading and error messages ---------------------------------------------


def _format_errors(exc: ValidationError, prefix: tuple = (), raw: Any = None) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = list(prefix) + [str(p) for p in err["loc"]]
        if len(loc) >= 2 and loc[0] == "graph" and loc[1] in GRAPH_KINDS:
            del loc[1]  # the union's tag, not a key the user wrote
        key = ".".join(loc) or "(top level)"
        kind = err["type"]
        if kind == "extra_forbidden":
            allowed = _allowed_keys([str(p) for p in err["loc"][:-1]], raw)
            lines.append(f"unknown key '{key}'; allowed keys here: {', '.join(allowed)}")
        elif kind == "union_tag_invalid":
            lines.append(f"{key}.kind: unknown kind {err['ctx']['tag']!r}; allowed: "
                         f"{err['ctx']['expected_tags'].replace(chr(39), '')}")
        elif kind == "union_tag_not_found":
            lines.append(f"{key}.kind: required key is missing; one of "
                         f"{', '.join(_union_tags(loc))}")
        elif kind == "missing":
            lines.append(f"{key}: required key is missing")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            shown = "" if isinstance(got, dict) else f"; got {shorten(got)}"
            lines.append(f"{key}: {msg}{shown}")
    return lines


def _union_tags(loc: list[str]) -> tuple[str, ...]:
    return GRAPH_KINDS


def _allowed_keys(parent: list, raw: Any = None) -> list[str]:
    """The keys of the model at ``parent`` (pydantic's loc: list items and union tags
    included), for "unknown key" messages. ``raw`` is the input: a model that picks its
    class from it (``resolve``: a policy's kind) is followed there."""
    import typing

    model: Any = RunConfig
    parts = list(parent)
    node = raw
    while parts:
        part = parts.pop(0)
        node = node.get(part) if isinstance(node, dict) else None
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        ann = field.annotation
        while True:
            origin, args = typing.get_origin(ann), typing.get_args(ann)
            if origin is typing.Annotated:
                ann = args[0]
            elif origin is list and parts and str(parts[0]).isdigit():
                index = int(parts.pop(0))
                node = node[index] if isinstance(node, list) and index < len(node) else None
                ann = args[0]
            elif origin is Union or (args and origin is not None and type(None) in args):
                members = [a for a in args if a is not type(None)]
                if len(members) == 1:
                    ann = members[0]
                    continue
                tag = parts.pop(0) if parts else None
                chosen = [m for m in members if hasattr(m, "model_fields") and "kind" in
                          m.model_fields and typing.get_args(m.model_fields["kind"].annotation)
                          == (tag,)]
                if not chosen:
                    return []
                ann = chosen[0]
            else:
                break
        if not isinstance(ann, type) or not hasattr(ann, "model_fields"):
            return []
        try:
            model = ann.resolve(node) if hasattr(ann, "resolve") else ann
        except ValueError:  # an unknown kind: that error is reported on its own
            return []
    return sorted(model.model_fields)


def _graph_allowed(raw_graph: dict) -> list[str]:
    import typing

    members = typing.get_args(typing.get_args(GraphConfig)[0])
    for cls in members:
        if cls.model_fields["kind"].annotation == Literal[raw_graph.get("kind")]:
            return sorted(cls.model_fields)
    return []


def run_graph(raw: dict):
    """The whole graph (``CSRGraph``) of a run's config as its manifest holds it.

    Only ``graph`` and ``seed`` are read, so a run of an env that is not installed
    here still gives its graph (what analysis needs)."""
    from types import SimpleNamespace

    from pydantic import TypeAdapter

    from swarm.graphgen import build_graph

    try:
        graph = TypeAdapter(GraphConfig).validate_python(raw["graph"])
    except (KeyError, TypeError, ValidationError) as exc:
        raise ConfigError(f"the run's config has no valid graph: {exc}") from None
    return build_graph(SimpleNamespace(graph=graph, seed=raw.get("seed", 0)))


def validate_config(raw: dict) -> RunConfig:
    """Validate a plain dict (parsed YAML) into a frozen RunConfig, or raise ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of keys to values; got {type(raw).__name__}")
    raw = dict(raw)
    problems: list[str] = _out_of_range(raw)
    env_raw = raw.pop("env", None)
    env_cfg = None
    if env_raw is None:
        problems.append(f"env: required key is missing (env.kind is one of {sorted(ENV_REGISTRY)})")
    elif not isinstance(env_raw, dict):
        problems.append(f"env: must be a mapping with a 'kind' key; got {env_raw!r}")
    else:
        kind = env_raw.get("kind")
        if kind not in ENV_REGISTRY:
            problems.append(f"env.kind: unknown env {kind!r}; allowed: {sorted(ENV_REGISTRY)}")
        else:
            cls = ENV_REGISTRY[kind].Config
            try:
                env_cfg = cls.model_validate(env_raw)
            except ValidationError as exc:
                for line in _format_errors(exc, ("env",)):
                    if line.startswith("unknown key"):
                        allowed = ", ".join(sorted(cls.model_fields))
                        line = line.split("; allowed")[0] + f"; allowed keys here: {allowed}"
                    problems.append(line)
    placeholder = EnvConfig(kind="placeholder")
    try:
        cfg = RunConfig.model_validate({**raw, "env": env_cfg or placeholder})
    except ValidationError as exc:
        lines = _format_errors(exc, raw=raw)
        graph_raw = raw.get("graph") if isinstance(raw.get("graph"), dict) else {}
        allowed = ", ".join(_graph_allowed(graph_raw))
        lines = [
            (ln.split("; allowed")[0] + f"; allowed keys here: {allowed}")
            if ln.startswith("unknown key 'graph.") else ln
            for ln in lines
        ]
        problems = lines + problems
        cfg = None
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    return cfg


def _out_of_range(raw: Any, where: str = "") -> list[str]:
    """Numbers no config key can take, wherever they are: integers beyond 64 bits (numpy
    and Arrow hold 64), and NaN or infinite floats."""
    problems = []
    if isinstance(raw, dict):
        for k, v in raw.items():
            problems += _out_of_range(v, f"{where}.{k}" if where else str(k))
    elif isinstance(raw, list):
        for i, v in enumerate(raw):
            problems += _out_of_range(v, f"{where}.{i}")
    elif isinstance(raw, int) and not isinstance(raw, bool) and abs(raw) > _INT64:
        problems.append(f"{where}: {shorten(raw)} does not fit in 64 bits")
    elif isinstance(raw, float) and not math.isfinite(raw):
        problems.append(f"{where}: must be a finite number; got {raw}")
    return problems[:20]


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set expects dotted.key=value; got {shorten(item)}")
    key, _, text = item.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set key {shorten(key)} has an empty part; write e.g. graph.n=1000")
    try:
        value = parse_yaml(text, f"--set {key}") if text.strip() else None
    except ConfigError as exc:
        raise ConfigError(f"cannot parse the value of {exc}") from None
    return parts, value


def apply_overrides(raw: dict, overrides: list[str] | None) -> dict:
    """Apply ``dotted.key=value`` strings (values parsed as YAML) to a raw config dict."""
    out = _deep_copy(raw)
    for item in overrides or []:
        parts, value = _parse_override(item)
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return out


def _deep_copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d


def read_config_file(path: str | os.PathLike) -> dict:
    """Parse a YAML config file into a dict, with the file and line in any error (and
    limits on size, nesting and aliases: see swarm.config_file)."""
    return read_yaml(path)


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config, apply ``--set`` overrides, validate. Raises ConfigError."""
    raw = apply_overrides(read_config_file(path), overrides)
    try:
        return validate_config(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
