"""LLM-style agents: prompts rendered per agent, actions chosen by a language model.

The decide stage for agents whose policy is a language model. Each row of the
batch (one agent) is rendered through a template from its persona, its
observation fields (bucketed if asked), its memory (its last k own actions)
and the allowed actions. Templates are data: they name those fields and
nothing else (see :mod:`swarm.policies.templates`). Identical prompts are
inferred once: rows are grouped by the values the template actually uses
before anything is rendered, so a population of millions costs one Python
string per distinct prompt, not per agent (the archetype idea of AgentTorch,
made exact).

Action choice is by scoring: the backend returns each allowed action's
log-likelihood after each distinct prompt in one batched pass, and every
agent then samples its own action with temperature from one keyed uniform
(seed, agent, step), so deduplication changes how often the model runs,
never what an agent does. Free text (``text:``) is short generation keyed by
the prompt and step: agents with the same prompt write the same text.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from swarm.config_base import StrictModel
from swarm.contract import ChoiceSpec
from swarm.errors import ConfigError, PolicyError
from swarm.policies.backends.base import Backend, BackendError, PromptError
from swarm.policies.base import Policy, PolicyContext, as_numpy
from swarm.policies.endpoints import (
    check_api_key_env,
    check_endpoints_trusted,
    check_key_transport,
)
from swarm.policies.templates import (
    Persona,
    TemplateFormatter,
    check_template_syntax,
    render_template,
    template_fields,
)
from swarm.population import PolicyConfig

__all__ = ["LLMPolicy", "LLMPolicyConfig", "Persona", "TextConfig", "make_backend",
           "persona_objects", "template_fields"]

log = logging.getLogger(__name__)

#: Names a template may use besides the env's observation fields.
SPECIAL_FIELDS = ("persona", "memory", "actions", "step")


class TextConfig(StrictModel):
    """Free text written after the choice (e.g. a comment on a share)."""

    when: list[str] = Field(min_length=1)
    """The chosen labels that come with text, e.g. [share]."""
    max_new_tokens: int = Field(16, ge=1, le=512)
    """Length limit of each text, in tokens."""
    temperature: float = Field(1.0, ge=0.0)
    """Sampling temperature (0: greedy)."""
    template: str | None = None
    """The prompt; default the env's text template. ``{choice}`` is the chosen label."""

    @field_validator("template")
    @classmethod
    def _template_is_data(cls, template: str | None) -> str | None:
        return None if template is None else check_template_syntax(template)


class LLMPolicyConfig(PolicyConfig):
    """An LLM-style policy: a prompt template, a model backend and how to choose."""

    kind: Literal["llm"] = "llm"
    backend: Literal["transformers", "openai"] = "transformers"
    """transformers: a local checkpoint directory; openai: an OpenAI-compatible endpoint."""
    model: str
    """transformers: the checkpoint directory (config, weights, tokenizer); openai: the
    model name the endpoint serves."""
    base_url: str | None = None
    """openai: the endpoint, e.g. http://127.0.0.1:8000/v1 (a vLLM, SGLang, llama.cpp or
    `swarm serve-policy` server)."""
    api_key_env: str | None = "OPENAI_API_KEY"
    """openai: the environment variable holding the API key (unset: no key sent); a name
    matching ``[A-Z][A-Z0-9_]*_API_KEY``. A key never goes over plain http beyond loopback:
    for such a base_url, use https or set api_key_env: null (a server without a key)."""
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    """transformers: auto (a GPU when torch sees one), cpu, cuda or cuda:i."""
    dtype: Literal["auto", "float32", "float64", "float16", "bfloat16"] = "auto"
    """transformers: auto is float64 on a CPU (scores then do not depend on batching, so
    actions are identical across shard counts) and float32 on a GPU."""
    batch_size: int = Field(64, ge=1)
    """Rows per forward pass (transformers) or strings per request (openai)."""
    max_concurrency: int = Field(16, ge=1)
    """openai: requests in flight at once for the whole run (split evenly over the shards)."""
    timeout: float = Field(30.0, gt=0)
    """openai: seconds per request before a retry."""
    retries: int = Field(3, ge=0)
    """openai: retries with exponential backoff after connection errors, 429 and 5xx."""
    template: str | None = None
    """The prompt template; default the env's. Fields: the env's observation fields,
    {persona} (or {persona.COLUMN}), {memory}, {actions}, {step}, each with an optional
    format spec ({influence:.2f}); no attributes, indexing or conversions."""
    actions: dict[str, str] | None = None
    """The text scored for each allowed label; default ' ' + label."""
    temperature: float = Field(1.0, ge=0.0)
    """Sampling temperature over the actions' log-likelihoods (0: the most likely)."""
    memory: int = Field(3, ge=0, le=32)
    """How many of the agent's own last actions {memory} shows."""
    dedup: bool = True
    """Infer identical prompts once per step (never changes the actions)."""
    bucket: dict[str, float] = {}
    """Coarsen numeric fields before rendering: value -> floor(value / width) * width, so
    more prompts coincide, e.g. {influence: 0.1}."""
    choice: Literal["score", "generate"] = "score"
    """score: log-likelihood of each allowed action; generate: a short answer parsed as a
    label (for endpoints that cannot echo log-probabilities)."""
    answer_tokens: int = Field(4, ge=1, le=64)
    """choice: generate: tokens generated for the answer."""
    text: TextConfig | None = None
    """Free text after the choice, for the labels in text.when."""
    on_error: Literal["raise", "idle"] = "raise"
    """When the backend fails or answers an unknown action: stop the run (raise) or give
    the affected agents the env's idle action, logged and counted (idle)."""
    server: bool = False
    """Run the model in shared policy-server actors (one model for all shards, on a GPU
    when the cluster has one) instead of in every shard."""
    replicas: int = Field(1, ge=1)
    """server: the number of policy-server actors."""
    batch_window_ms: float = Field(5.0, ge=0.0)
    """server: how long a server waits to merge requests from several shards."""

    @field_validator("template")
    @classmethod
    def _template_is_data(cls, template: str | None) -> str | None:
        return None if template is None else check_template_syntax(template)

    @field_validator("api_key_env")
    @classmethod
    def _only_api_keys(cls, name: str | None) -> str | None:
        return check_api_key_env(name)

    @model_validator(mode="after")
    def _check(self) -> LLMPolicyConfig:
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend openai needs base_url, e.g. http://127.0.0.1:8000/v1")
        if self.backend == "openai":
            # Refused whether or not the variable is set here: a config's validity
            # must not depend on the shell it is checked in, and the Ray workers that
            # make the requests may have the key when the driver does not.
            check_key_transport(self.base_url, self.api_key_env)
        if self.backend == "transformers" and self.base_url:
            raise ValueError("base_url is for backend: openai; the transformers backend loads "
                             "the checkpoint directory named by model")
        bad = {k: w for k, w in self.bucket.items() if not w > 0}
        if bad:
            raise ValueError(f"bucket widths must be > 0; got {bad}")
        return self


#: Who an agent is when the population has no persona row for it.
DEFAULT_PERSONA_DESCRIPTION = "an ordinary member of the network"
_NO_PERSONA = Persona({"description": DEFAULT_PERSONA_DESCRIPTION})


def make_backend(cfg: LLMPolicyConfig, shards: int = 1) -> Backend:
    """The backend named by ``cfg`` (a local model is loaded here).

    ``max_concurrency`` caps a run: each of ``shards`` shards gets its share.
    """
    if cfg.backend == "transformers":
        from swarm.policies.backends.transformers_backend import TransformersBackend

        return TransformersBackend(cfg.model, device=cfg.device, dtype=cfg.dtype,
                                   batch_size=cfg.batch_size)
    from swarm.policies.backends.openai_backend import OpenAIBackend

    return OpenAIBackend(cfg.base_url, cfg.model, api_key_env=cfg.api_key_env,
                         max_concurrency=max(1, -(-cfg.max_concurrency // shards)),
                         timeout=cfg.timeout,
                         retries=cfg.retries + 1, batch_size=cfg.batch_size)  # it counts tries


def _prompt_seed(prompts: Sequence[str]) -> np.ndarray:
    """A stable 63-bit id per prompt (not Python's salted ``hash``)."""
    return np.array([int.from_bytes(hashlib.blake2b(p.encode(), digest_size=8).digest(),
                                    "little") >> 1 for p in prompts], dtype=np.int64)


def _unique_rows(cols: list[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(first row of each distinct key, inverse) for the keys made of ``cols``; by sorting."""
    if not cols:
        return np.zeros(min(n, 1), np.int64), np.zeros(n, np.int64)
    order = np.lexsort(cols[::-1])
    new = np.zeros(n, dtype=bool)
    new[:1] = True
    for c in cols:
        s = c[order]
        new[1:] |= s[1:] != s[:-1]
    group = np.cumsum(new) - 1
    inverse = np.empty(n, np.int64)
    inverse[order] = group
    return order[new], inverse


class LLMPolicy(Policy):
    """Choose each agent's action with a language model (see the module docstring).

    Parameters
    ----------
    config : LLMPolicyConfig
        Template, backend and choice settings.
    spec : ChoiceSpec
        What the env lets agents choose, and its observation fields.
    backend : Backend
        Scores and generates (a local model, an endpoint or a policy server).
    personas : list of Persona, optional
        The persona table's rows; the batch's ``persona`` column indexes it.
    """

    name = "llm"
    #: A population group's ``policy: {kind: llm, ...}``.
    Config = LLMPolicyConfig
    #: The batch gets each row's persona index (``persona``).
    uses_persona = True

    def __init__(self, config: LLMPolicyConfig, spec: ChoiceSpec, backend: Backend,
                 personas: list[Persona] | None = None, owns_backend: bool = False):
        super().__init__("cpu")  # the batch is bookkeeping; the model lives in the backend
        self.config, self.spec, self.backend = config, spec, backend
        self._owns_backend = owns_backend
        self.personas = personas or [_NO_PERSONA]
        self.template = config.template or spec.template
        self.labels = spec.labels
        self.continuations = [(config.actions or {}).get(lb, " " + lb) for lb in self.labels]
        self.fields = check_template(self.template, spec, "template")
        self.text_template, self.text_fields = None, []
        if config.text is not None:
            self.text_template = config.text.template or spec.text_template
            self.text_fields = check_template(self.text_template, spec, "text.template",
                                              extra=("choice",))
            self.text_when = np.array([lb in config.text.when for lb in self.labels])
        self.uses_memory = "memory" in {*self.fields, *self.text_fields}

    @property
    def memory_k(self) -> int:
        """How many of its agents' last actions the population keeps for this policy."""
        return self.config.memory if self.uses_memory else 0

    def close(self) -> None:
        if self._owns_backend:
            self.backend.close()

    @classmethod
    def from_config(cls, config: LLMPolicyConfig, spec: ChoiceSpec | None, *,
                    personas=None, backend: Backend | None = None, shards: int = 1) -> LLMPolicy:
        """The policy of one shard: ``backend`` when the runner serves the model (policy
        servers), else its own, loaded here and closed with the policy."""
        rows = persona_objects(personas) if personas is not None else None
        owns = backend is None
        if owns:
            backend = make_backend(config, shards=shards)
        return cls(config, spec, backend, rows, owns_backend=owns)

    # -- shared models (``server: true``; started by swarm.policy_actors) ----------------

    @staticmethod
    def server_class() -> type:
        """The plain class a policy-server actor holds: one model for every shard."""
        from swarm.policies.shared_model import PolicyServer

        return PolicyServer

    @staticmethod
    def wants_gpu(cfg: LLMPolicyConfig) -> bool:
        """Whether a server of ``cfg`` should get a GPU where the cluster has one."""
        return cfg.device != "cpu" and cfg.backend == "transformers"

    @staticmethod
    def server_backend(handle) -> Backend:
        """The backend a shard's policy uses to reach its server through ``handle``."""
        from swarm.policies.shared_model import ServerBackend

        return ServerBackend(handle)

    @staticmethod
    def check_resumed_run(config, store, trust: bool) -> None:
        """Another user's run that calls endpoints resumes only with ``trust``
        (``swarm resume --trust-endpoint``; see ``check_endpoints_trusted``)."""
        check_endpoints_trusted(config, store, trust)

    @classmethod
    def check_config(cls, cfg: LLMPolicyConfig, spec: ChoiceSpec | None, personas,
                     where: str, env: str) -> None:
        """What the driver can check before a run: the env has a choice, templates render
        for every persona row, the model directory or the endpoint is there."""
        if spec is None:
            raise ConfigError(f"{where.removesuffix('.policy')}: env {env!r} with this config "
                              "has no choice for LLM-style agents (e.g. cascade decides per edge "
                              "except with model: linear_threshold)")
        try:
            check_template(cfg.template or spec.template, spec, f"{where}.template")
            if cfg.text is not None:
                if not spec.text:
                    raise ValueError(f"env {env!r} has nowhere to put text")
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
            raise ConfigError(f"{where}: {exc}") from None
        _check_renders(cfg, spec, personas, where)
        if cfg.backend == "transformers":
            _check_model_dir(cfg.model, f"{where}.model")
        else:
            _check_endpoint(cfg, where)
        if cfg.dtype in ("float32", "float16", "bfloat16") or (
                cfg.dtype == "auto" and cfg.backend == "transformers"
                and cfg.device.startswith("cuda")):
            log.warning("%s: dtype %s scores in reduced precision, so an agent whose "
                        "actions nearly tie may choose differently with another shard count "
                        "or batching; dtype: float64 makes actions exactly reproducible",
                        where, cfg.dtype)

    # -- the hook ----------------------------------------------------------------

    def _forward(self, batch: dict[str, Any], ctx: PolicyContext) -> dict[str, Any]:
        cfg = self.config
        agents = as_numpy(batch["agent"]).astype(np.int64, copy=False)
        n = agents.shape[0]
        ctx.stats.decisions += n
        if n == 0:
            out = {self.spec.action: torch.zeros(0, dtype=torch.int64)}
            if self.text_template is not None:
                out[self.spec.text] = np.empty(0, dtype=object)
            return out
        cols = self._columns(batch, ctx.step)
        first, inverse = self._group(cols, self.fields, n)
        prompts = self._render(self.template, self.fields, cols, first)
        if cfg.dedup:
            prompts, inverse = _dedup_strings(prompts, inverse)
        keys = (agents,)
        if self.spec.row_key:
            keys = (agents, as_numpy(batch[self.spec.row_key]).astype(np.int64))
        choice, failed = self._choose(prompts, inverse, keys, ctx)
        out: dict[str, Any] = {self.spec.action: torch.from_numpy(choice)}
        if self.text_template is not None:
            out[self.spec.text] = self._write(cols, choice, failed, ctx)
        return out

    # -- prompts -------------------------------------------------------------------

    def _columns(self, batch: dict[str, Any], step: int) -> dict[str, np.ndarray]:
        """The key columns of every name the templates use (bucketed numbers)."""
        n = len(batch["agent"])
        cols: dict[str, np.ndarray] = {}
        for name in {*self.fields, *getattr(self, "text_fields", ())}:
            if name == "persona":
                cols[name] = (as_numpy(batch["persona"]) if "persona" in batch
                              else np.zeros(n, np.int64))
            elif name == "memory":
                # The population keeps the longest memory any group asked for.
                k = self.config.memory
                cols[name] = as_numpy(batch["memory"])[:, -k:] if k else \
                    np.full((n, 0), -1, np.int8)
            elif name == "step":
                cols[name] = np.full(n, step, np.int64)
            elif name in ("actions", "choice"):
                continue
            else:
                cols[name] = _bucketed(as_numpy(batch[name]), self.config.bucket.get(name))
        return cols

    def _group(self, cols, fields, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows with equal template values share a prompt: (representatives, inverse)."""
        if not self.config.dedup:
            return np.arange(n), np.arange(n)
        keys = []
        for name in fields:
            if name in cols:
                c = cols[name]
                keys.extend(c.T if c.ndim == 2 else [c])
        return _unique_rows(keys, n)

    def _render(self, template: str, fields, cols, rows: np.ndarray,
                extra: dict[str, list] | None = None) -> list[str]:
        """One prompt per row in ``rows`` (a Python loop over distinct prompts only)."""
        values: dict[str, list] = {}
        for name in fields:
            if name == "persona":
                values[name] = [self.personas[i] for i in cols[name][rows].tolist()]
            elif name == "memory":
                values[name] = [self._memory_text(m) for m in cols[name][rows].tolist()]
            elif name == "actions":
                values[name] = [_join(self.labels)] * rows.shape[0]
            elif name in cols:
                values[name] = cols[name][rows].tolist()
        values.update(extra or {})
        names = list(values)
        if not names:
            return [_FORMATTER.vformat(template, (), {})] * rows.shape[0]
        return [_FORMATTER.vformat(template, (), dict(zip(names, vals, strict=True)))
                for vals in zip(*values.values(), strict=True)]

    def _memory_text(self, codes: list[int]) -> str:
        done = [self.labels[c] for c in codes if c >= 0]
        return ", ".join(done) if done else "none yet"

    # -- choosing ------------------------------------------------------------------

    def _choose(self, prompts: list[str], inverse: np.ndarray, keys: tuple[np.ndarray, ...],
                ctx: PolicyContext) -> tuple[np.ndarray, np.ndarray]:
        """Each row's label index, and which rows fell back to idle."""
        cfg, n = self.config, keys[0].shape[0]
        ctx.stats.calls += len(prompts)
        failed = np.zeros(n, dtype=bool)
        try:
            if cfg.choice == "score":
                scores, bad_prompt, why = self._isolating(
                    lambda ps: np.asarray(self.backend.score(ps, self.continuations),
                                          dtype=np.float64),
                    prompts, lambda k: np.zeros((k, len(self.continuations))))
                finite = np.isfinite(scores).all(axis=1)
                if not finite.all() and why is None:
                    why = "the model returned non-finite log-likelihoods"
                bad_prompt |= ~finite
                if bad_prompt.any():
                    scores = np.where(bad_prompt[:, None], 0.0, scores)  # may be read-only
                choice = _sample(scores[inverse], keys, ctx, cfg.temperature)
                bad = bad_prompt[inverse]
            else:
                choice, unknown = self._answer(prompts, ctx)
                choice, bad = choice[inverse], unknown[inverse]
                why = (f"the reply named no allowed action ({_join(self.labels)})"
                       if bad.any() else None)
        except BackendError as exc:
            choice, bad, why = np.zeros(n, np.int64), np.ones(n, dtype=bool), str(exc)
        if bad.any():
            self._fail(why, bad, failed, choice, ctx)
        return choice, failed

    def _isolating(self, call, prompts: list[str], empty) -> tuple[np.ndarray, np.ndarray,
                                                                    str | None]:
        """``call(prompts)`` as (results, failed prompts, why).

        With ``on_error: idle``, prompts the backend refuses as inputs (a
        PromptError: too long, nothing to score, HTTP 400) are found by halving
        the batch; only they fail (``empty(k)`` fills their rows), so the
        outcome does not depend on which prompts shared a batch or a shard.
        Other errors propagate: the whole call failed.
        """
        try:
            return call(prompts), np.zeros(len(prompts), dtype=bool), None
        except PromptError as exc:
            if self.config.on_error == "raise":
                raise
            if len(prompts) == 1:
                return empty(1), np.ones(1, dtype=bool), str(exc)
            half = len(prompts) // 2
            left, bad_l, why_l = self._isolating(call, prompts[:half], empty)
            right, bad_r, why_r = self._isolating(call, prompts[half:], empty)
            return (np.concatenate([left, right]), np.concatenate([bad_l, bad_r]),
                    why_l or why_r)

    def _answer(self, prompts: list[str], ctx: PolicyContext) -> tuple[np.ndarray, np.ndarray]:
        """choice: generate: a short answer per prompt, matched to a label."""
        seeds = _keyed_seeds(ctx, "llm_answer", prompts)
        index = {p: i for i, p in enumerate(prompts)}

        def generate(ps: list[str]) -> np.ndarray:
            out = np.empty(len(ps), dtype=object)
            out[:] = self.backend.generate(ps, seeds[[index[p] for p in ps]],
                                           self.config.answer_tokens, self.config.temperature)
            return out

        replies, _, _ = self._isolating(generate, prompts, lambda k: np.full(k, "", object))
        lookup = {lb.lower(): i for i, lb in enumerate(self.labels)}
        choice = np.zeros(len(prompts), np.int64)
        unknown = np.zeros(len(prompts), dtype=bool)
        for i, reply in enumerate(replies.tolist()):
            words = reply.strip().lower().split()
            word = words[0].strip(".,;:!?\"'") if words else ""
            if word in lookup:
                choice[i] = lookup[word]
            else:
                unknown[i] = True
        return choice, unknown

    def _fail(self, why: str, rows: np.ndarray, failed: np.ndarray, choice: np.ndarray | None,
              ctx: PolicyContext, what: str = "the idle action") -> None:
        """Raise (on_error: raise) or give ``rows`` the idle action (or no text), counted."""
        count = int(rows.sum())
        if self.config.on_error == "raise":
            raise PolicyError(f"policy llm ({self.config.backend}: {self.config.model}) at step "
                              f"{ctx.step}, {count} agents: {why}. Fix the backend or prompt, "
                              f"or set on_error: idle to give such agents the idle action "
                              f"{self.labels[self.spec.idle]!r}")
        if what == "the idle action":
            what = f"the idle action {self.labels[self.spec.idle]!r}"
            choice[rows] = self.spec.idle
        log.warning("step %d: %d agents fell back to %s: %s", ctx.step, count, what, why)
        failed |= rows
        ctx.stats.fallbacks += count

    # -- free text -----------------------------------------------------------------

    def _write(self, cols, choice: np.ndarray, failed: np.ndarray,
               ctx: PolicyContext) -> np.ndarray:
        """Text (an object array) for the rows whose choice comes with text; None elsewhere."""
        n = choice.shape[0]
        texts = np.full(n, None, dtype=object)
        rows = np.flatnonzero(self.text_when[choice] & ~failed)
        if rows.shape[0] == 0:
            return texts
        keys = [choice[rows]]
        for name in self.text_fields:
            if name in cols:
                c = cols[name][rows]
                keys.extend(c.T if c.ndim == 2 else [c])
        if self.config.dedup:
            first, inverse = _unique_rows(keys, rows.shape[0])
        else:
            first, inverse = np.arange(rows.shape[0]), np.arange(rows.shape[0])
        reps = rows[first]
        extra = {"choice": [self.labels[c] for c in choice[reps].tolist()]}
        fields = [f for f in self.text_fields if f != "choice"]
        prompts = self._render(self.text_template, fields, cols, reps, extra)
        if self.config.dedup:
            prompts, inverse = _dedup_strings(prompts, inverse)
        ctx.stats.text_calls += len(prompts)
        tc = self.config.text
        seeds = _keyed_seeds(ctx, "llm_text", prompts)
        index = {p: i for i, p in enumerate(prompts)}

        def generate(ps: list[str]) -> np.ndarray:
            out = np.empty(len(ps), dtype=object)
            out[:] = self.backend.generate(ps, seeds[[index[p] for p in ps]],
                                           tc.max_new_tokens, tc.temperature)
            return out

        try:
            out, lost, why = self._isolating(generate, prompts,
                                             lambda k: np.full(k, None, dtype=object))
        except BackendError as exc:
            out = np.full(len(prompts), None, dtype=object)
            lost, why = np.ones(len(prompts), dtype=bool), str(exc)
        if lost.any():  # the choice stands; these agents act without text
            mask = np.zeros(n, dtype=bool)
            mask[rows[lost[inverse]]] = True
            self._fail(f"text generation failed: {why}", mask, np.zeros(n, dtype=bool), None,
                       ctx, what="no text")
        texts[rows] = out[inverse]
        return texts


def check_template(template: str, spec: ChoiceSpec, key: str,
                   extra: tuple[str, ...] = ()) -> list[str]:
    """The template's field names, or a ValueError naming the unknown ones (or a form that
    is not allowed: see :func:`~swarm.policies.templates.check_template_syntax`)."""
    try:
        fields = template_fields(template)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None
    allowed = (*spec.fields, *SPECIAL_FIELDS, *extra)
    unknown = [f for f in fields if f not in allowed]
    if unknown:
        raise ValueError(f"{key} names {unknown}, which this env does not provide; "
                         f"allowed: {', '.join('{' + a + '}' for a in allowed)}")
    return fields


#: Renders every prompt: names resolve only to the values passed in (no attributes).
_FORMATTER = TemplateFormatter()


def _bucketed(value: np.ndarray, width: float | None) -> np.ndarray:
    """``floor(value / width) * width``, exact on bucket edges; ints stay ints for whole widths.

    Floats are normalized so that -0.0 (which renders differently) groups with 0.0.
    """
    if width is None:
        return value + 0.0 if value.dtype.kind == "f" else value
    if value.dtype.kind in "iu" and float(width).is_integer():
        return (value // int(width)) * int(width)
    # 0.3 / 0.1 is 2.9999999999999996: a relative nudge keeps edge values in their bucket.
    q = np.floor(value / width * (1 + 1e-12) + 1e-12)
    return np.round(q * width, 12) + 0.0


def _join(labels: Sequence[str]) -> str:
    return ", ".join(labels[:-1]) + " or " + labels[-1] if len(labels) > 1 else labels[0]


def _dedup_strings(prompts: list[str], inverse: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Merge rendered prompts that came out equal from different key values."""
    index: dict[str, int] = {}
    remap = np.array([index.setdefault(p, len(index)) for p in prompts], dtype=np.int64)
    if len(index) == len(prompts):
        return prompts, inverse
    return list(index), remap[inverse]


def _keyed_seeds(ctx: PolicyContext, stream: str, prompts: list[str]) -> np.ndarray:
    """One generation seed per prompt: the same prompt at the same step, the same text."""
    bits = ctx.rng.bits(stream, _prompt_seed(prompts), step=ctx.step)
    return (bits >> np.uint64(1)).astype(np.int64)


def _sample(scores: np.ndarray, keys: tuple[np.ndarray, ...], ctx: PolicyContext,
            temperature: float) -> np.ndarray:
    """One label per row: inverse CDF of softmax(scores / T) at the row's keyed uniform
    (keyed by the agent, and by the env's ``ChoiceSpec.row_key`` where an agent has
    several rows)."""
    if temperature <= 0:
        return scores.argmax(axis=1).astype(np.int64)
    z = scores / temperature
    z -= z.max(axis=1, keepdims=True)
    cdf = np.cumsum(np.exp(z), axis=1)
    u = ctx.rng.uniform("llm_choice", *keys, step=ctx.step) * cdf[:, -1]
    choice = (cdf <= u[:, None]).sum(axis=1)
    return np.minimum(choice, scores.shape[1] - 1).astype(np.int64)


# -- checks on the driver (LLMPolicy.check_config) ---------------------------------


def _check_renders(cfg: LLMPolicyConfig, spec: ChoiceSpec, personas,
                   key: str) -> None:
    """Render the templates once per persona row (up to 1,000) with sample values, so a
    missing persona column or a bad format spec fails now, not at step 1."""
    rows = persona_objects(personas) if personas is not None else [_NO_PERSONA]
    templates = [("template", cfg.template or spec.template)]
    if cfg.text is not None:
        templates.append(("text.template", cfg.text.template or spec.text_template))
    sample = {f: 1 for f in spec.fields}
    sample.update(memory="none yet", actions=" or ".join(spec.labels), step=0,
                  choice=spec.labels[0])
    for name, template in templates:
        for persona in rows[:1000] + rows[-1:]:
            try:
                render_template(template, persona=persona, **sample)
            except (AttributeError, KeyError, ValueError, IndexError, TypeError) as exc:
                columns = [] if personas is None else personas.column_names
                raise ConfigError(f"{key}.{name} cannot be rendered ({type(exc).__name__}: "
                                  f"{exc}); persona columns: {columns}; fields take numbers, so "
                                  "use format specs like {influence:.2f}") from None


def persona_objects(personas) -> list[Persona]:
    """The table's rows as Persona objects; with an ``agent`` column, plus a last default
    row (every column None, the default description) for agents without a row."""
    rows = [Persona(r) for r in personas.to_pylist()]
    if "agent" in personas.column_names:
        default = dict.fromkeys(personas.column_names)
        default["description"] = DEFAULT_PERSONA_DESCRIPTION
        rows.append(Persona(default))
    return rows


def _check_endpoint(cfg: LLMPolicyConfig, where: str) -> None:
    """An endpoint that is down or does not serve the model fails the run before step 0
    (``on_error: idle`` only warns: its agents then fall back, counted, every step)."""
    backend = make_backend(cfg)
    try:
        backend.check()
    except BackendError as exc:
        if cfg.on_error == "raise":
            raise ConfigError(f"{where}: {exc}") from None
        log.warning("%s: %s; on_error is idle, so its agents will fall back", where, exc)
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
    names = os.listdir(path)
    if not any(n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
               for n in names):
        raise ConfigError(f"{key}: {path} has no tokenizer files (tokenizer.json or "
                          "tokenizer_config.json); save the tokenizer with save_pretrained "
                          "into the same directory")
    if not any(n.endswith((".safetensors", ".bin")) or n.endswith(".index.json")
               for n in names):
        raise ConfigError(f"{key}: {path} has no weights (*.safetensors or pytorch_model*.bin)")
