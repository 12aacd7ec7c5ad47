"""``swarm serve-policy``: one local model answering the decide stage of many shards over HTTP.

An OpenAI-compatible server (``GET /v1/models``, ``POST /v1/completions``) on
aiohttp in front of a local :class:`TransformersBackend`. The ``openai``
backend (or any OpenAI client) talks to it. This module is the HTTP side
only: parsing, validation, limits, merging concurrent requests and the
replies. Everything that touches the model or the tokenizer is a public
backend method (``tokenize``, ``token_logprobs``, ``start_generation``,
``decode``), so scoring requests (``echo`` with ``logprobs``) get the
float64 per-token log-probabilities the backend scores with, and generation
draws the tokens ``TransformersBackend.generate`` draws for the request's
``seed``: shards that use the server choose the same actions and write the
same text as shards that load the model themselves.

Requests from many clients are merged: the prompts that arrive within a
short window (``batch_window_ms``) go through the model together, in one
worker thread, because the model and tokenizer are not thread-safe. Each
prompt is checked and tokenized on its own, so a bad one fails only its own
request. Generation advances in slices of about 50 ms (keeping its KV cache
in between), and newly arrived requests get their turn between slices: a
1-token request beside a 1000-token generation waits about one slice, not
the whole generation. Running generations share a memory budget (one full
batch over the whole context); beyond it, generations wait their turn first
come first served, while scoring requests go on.

What one request may ask for is limited (:class:`ServeLimits`: body size,
prompts per request, prompt tokens, ``max_tokens``), and over a limit it is
refused with an OpenAI-style error naming the option that raises it, before
the model or the tokenizer sees anything large. Connections that stay idle
or send their request too slowly are closed. With an API key (read from an
environment variable named ``*_API_KEY``) every request must carry
``Authorization: Bearer KEY``.

Run it as ``swarm serve-policy MODEL_DIR`` or
``python -m swarm.policies.http_server MODEL_DIR [--host --port --device --dtype
--batch-window-ms --batch-size --served-model-name --max-body-bytes
--max-prompts --max-prompt-tokens --max-new-tokens --read-timeout
--idle-timeout --api-key-env]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import json
import math
import os
import re
import secrets
import signal
import sys
import time
import uuid
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import web

from swarm.policies.backends.base import Backend, BackendError, PromptError
from swarm.policies.endpoints import API_KEY_ENV_PATTERN

if TYPE_CHECKING:
    from swarm.policies.backends.transformers_backend import TokenLogprobs

__all__ = ["CompletionEngine", "ServeLimits", "main", "make_app", "make_runner", "serve"]

# Prompts one model round takes from the queue; the rest wait for the next
# round, so one huge request cannot hold a small one back for long.
_MAX_ROUND_PROMPTS = 1024
# How long one model round may spend advancing running generations before it
# hands back, so that requests which arrived meanwhile join the next round.
# Results do not depend on it (a generation keeps its KV cache between
# rounds); it trades a little per-round overhead against how long a short
# request can wait behind a long generation.
_ROUND_GENERATION_S = 0.05
# A prompt longer than this many characters per allowed token is refused
# before tokenizing: tokenizing 10 MB of text costs seconds and gigabytes.
# Tokens average about 4 characters of English; few texts exceed 8 per token.
_CHARS_PER_TOKEN = 8
# What the engine calls on its backend: TransformersBackend's token-level methods.
_BACKEND_METHODS = ("tokenize", "token_logprobs", "start_generation", "decode")
# Prompt-token cap for a model whose config states no context length.
_FALLBACK_PROMPT_TOKENS = 4096
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
# The name --api-key-env takes: the variable's name, never the key itself
# (a key on the command line shows in `ps` and in shell history). The same
# rule as the openai backend's api_key_env, so one variable serves both ends.
_KEY_ENV_NAME = API_KEY_ENV_PATTERN
# Sampling options this server cannot honour, with the value that means "off";
# anything else is refused rather than silently ignored.
_NEUTRAL = {"n": 1, "best_of": 1, "top_p": 1, "presence_penalty": 0, "frequency_penalty": 0,
            "stream": False, "suffix": None, "stop": None, "logit_bias": None}
_MODELS_KEY = web.AppKey("swarm_model_names", list)
_BATCHER_KEY = web.AppKey("swarm_batcher", object)
_LIMITS_KEY = web.AppKey("swarm_limits", object)


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask of ``swarm serve-policy``, and how long a client may dawdle.

    A request over a limit is refused (HTTP 400, 413 for the body) with an
    OpenAI-style error that names the limit and the option raising it, before
    anything large is tokenized or reaches the model.
    """

    max_body_bytes: int = 1 << 20
    """Largest request body in bytes (``--max-body-bytes``); larger ones get HTTP 413 unread."""
    max_prompts: int = 256
    """Most prompts in one request (``--max-prompts``)."""
    max_prompt_tokens: int | None = None
    """Most tokens in one prompt (``--max-prompt-tokens``); default: the model's context
    length from its config (4096 if it states none). A prompt longer than 8 characters per
    allowed token is refused without tokenizing it."""
    max_new_tokens: int = 256
    """Largest ``max_tokens`` a request may ask for (``--max-new-tokens``); prompt tokens
    plus ``max_tokens`` must also fit in the model's context."""
    read_timeout_s: float = 30.0
    """Seconds a client has to send a request body once its headers are in
    (``--read-timeout``); a slower one gets HTTP 408 and is disconnected."""
    idle_timeout_s: float = 15.0
    """Seconds a connection may sit without a complete request (``--idle-timeout``): a fresh
    connection that sends nothing or trickles its headers, or a kept-alive one between
    requests, is closed after this. Above the 5 s for which OpenAI clients (httpx) keep idle
    connections, so they never reuse one the server is closing."""

    def __post_init__(self) -> None:
        # Messages name the field and its command-line option: either may have set it.
        for name in ("max_body_bytes", "max_prompts", "max_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BackendError(f"{name} ({_option(name)}) must be an integer >= 1; "
                                   f"got {value!r}")
        cap = self.max_prompt_tokens
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise BackendError(f"max_prompt_tokens (--max-prompt-tokens) must be an integer >= 1, "
                               f"or left out for the model's context length; got {cap!r}")
        for name in ("read_timeout_s", "idle_timeout_s"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not 0 < value < math.inf):
                raise BackendError(f"{name} ({_option(name)}) must be a number of seconds > 0; "
                                   f"got {value!r}")


def _option(field_name: str) -> str:
    """The command-line option that sets a ServeLimits field."""
    return "--" + field_name.removesuffix("_s").replace("_", "-")


# -- the model side: runs in the worker thread only ------------------------------------------


class _OverLimit(PromptError):
    """A prompt with more tokens than the server allows (or than fit the model's context)."""

    code = "context_length_exceeded"


@dataclass
class _Job:
    """One prompt of one request (a list prompt makes several)."""

    prompt: str
    echo: bool
    logprobs: int | None
    max_tokens: int
    temperature: float
    seed: int
    future: asyncio.Future | None = field(default=None, repr=False)


@dataclass
class _Choice:
    text: str
    logprobs: dict | None
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class _Work:
    """A job the engine holds: its tokens, and the tokens generated for it so far."""

    job: _Job
    ids: list[int]
    offsets: list[tuple[int, int]]
    generated: list[int] = field(default_factory=list)
    # Generate in a batch of its own: the merged batch it was in failed, and
    # rerunning each member alone finds which one it was.
    solo: bool = False

    @property
    def fast(self) -> bool:
        """A scoring job whose one new token comes from the echo's own forward pass."""
        return self.job.logprobs is not None and self.job.max_tokens == 1


class _Generation:
    """One batch of generation jobs, a backend ``GenerationBatch`` the engine steps between
    model rounds. A row is answered as soon as it is complete (an EOS or
    ``max_tokens``), not when the whole batch is."""

    def __init__(self, backend: Any, works: list[_Work]):
        self.works = works
        max_tokens = works[0].job.max_tokens
        self.batch = backend.start_generation([w.ids for w in works],
                                              np.array([w.job.seed for w in works],
                                                       dtype=np.int64),
                                              max_tokens, works[0].job.temperature)
        # KV positions this batch may come to hold, counted against the engine's budget.
        self.reserved = len(works) * (max(len(w.ids) for w in works) + max_tokens)
        self.open = list(range(len(works)))

    @property
    def finished(self) -> bool:
        return self.batch.finished

    def step(self) -> list[_Work]:
        """Sample the next token of every row; return the works completed by it."""
        completed = []
        for row in self.batch.step():
            self.open.remove(row)
            self.works[row].generated = self.batch.generated[row]
            completed.append(self.works[row])
        return completed

    def unfinished(self) -> list[_Work]:
        return [self.works[row] for row in self.open]


class CompletionEngine:
    """The completions jobs ask for, computed with one backend's model, round by round.

    Each :meth:`step` takes newly arrived jobs, answers what it can (scoring,
    echo, the new token of 1-token scoring jobs), starts their generations and
    advances every running generation for about 50 ms; it returns the jobs
    completed in that round. Generations keep their KV cache between rounds,
    so how they are sliced never changes a result.

    Not thread-safe: the server calls it from a single worker thread.

    Parameters
    ----------
    backend : Backend
        A loaded local backend with ``TransformersBackend``'s token-level
        methods (``tokenize``, ``token_logprobs``, ``start_generation``,
        ``decode``) and its ``max_length``, ``eos_ids`` and ``batch_size``.
    max_prompt_tokens : int, optional
        Most tokens a prompt may have; default: the model's context length.
    """

    def __init__(self, backend: Backend, max_prompt_tokens: int | None = None):
        for method in _BACKEND_METHODS:
            if not callable(getattr(backend, method, None)):
                raise BackendError(f"swarm serve-policy needs a local backend with a loaded model "
                                   f"(TransformersBackend); {type(backend).__name__} has no "
                                   f"{method!r}")
        if backend.health().get("closed"):
            raise BackendError(f"swarm serve-policy needs a loaded model; the {backend.name} "
                               "backend given is closed, so create a new one")
        self.backend = backend
        self.max_length = getattr(backend, "max_length", None)
        if max_prompt_tokens is None:
            max_prompt_tokens = self.max_length or _FALLBACK_PROMPT_TOKENS
        elif self.max_length is not None and max_prompt_tokens > self.max_length:
            raise BackendError(f"max_prompt_tokens={max_prompt_tokens} is more than the model's "
                               f"{self.max_length} positions; lower --max-prompt-tokens or leave "
                               "it out (default: the model's context length)")
        self.max_prompt_tokens = int(max_prompt_tokens)
        self.eos_ids = set(getattr(backend, "eos_ids", []))
        self.batch_size = int(getattr(backend, "batch_size", 64))
        # Running generations hold their KV caches between rounds. Together
        # they may reserve as many positions as one full batch over the whole
        # context (what a single generate_ids call could hold before
        # generations were interleaved); later ones wait, first come first
        # served, while scoring goes on.
        self.kv_budget = self.batch_size * (self.max_length or 2 * self.max_prompt_tokens)
        self._waiting: deque[_Work] = deque()
        self._running: list[_Generation] = []

    @property
    def busy(self) -> bool:
        """Whether generations are running or waiting for room (more rounds are needed)."""
        return bool(self._waiting or self._running)

    def generating(self) -> int:
        """Prompts being generated now (their batches hold a KV cache)."""
        return sum(len(g.open) for g in self._running)

    def waiting(self) -> int:
        """Prompts waiting for room to start generating."""
        return len(self._waiting)

    def held_jobs(self) -> list[_Job]:
        """The jobs the engine holds unanswered (to fail them at shutdown)."""
        return ([w.job for w in self._waiting]
                + [w.job for g in self._running for w in g.unfinished()])

    def run(self, jobs: Sequence[_Job]) -> list[_Choice | Exception]:
        """One result per job, in order: a choice, or the exception that job alone raised.

        Runs rounds until these jobs (and any the engine already held) are done.
        """
        results: dict[int, _Choice | Exception] = {}
        new = list(jobs)
        while new or self.busy:
            for job, result in self.step(new):
                results[id(job)] = result
            new = []
        return [results[id(job)] for job in jobs]

    def step(self, jobs: Sequence[_Job], budget_s: float = _ROUND_GENERATION_S
             ) -> list[tuple[_Job, _Choice | Exception]]:
        """One model round: take ``jobs``, return every job completed in this round."""
        out: list[tuple[_Job, _Choice | Exception]] = []
        ready: list[_Work] = []
        for work in self._admit(jobs, out):
            # Scoring and echo need no sampler; a 1-token scoring job takes its
            # token from the echo's own forward pass.
            if work.job.max_tokens == 0 or work.fast:
                ready.append(work)
            else:
                self._waiting.append(work)
        self._start_generations(out)
        ready.extend(self._advance(budget_s, out))
        self._finish(ready, out)
        return out

    # -- a round's parts -----------------------------------------------------------------------

    def _admit(self, jobs: Sequence[_Job], out: list) -> list[_Work]:
        """Tokenize and check each job on its own; failures go to ``out`` for that job alone."""
        works = []
        # Tokenized as the backend scores (special tokens added, e.g. a BOS), so
        # echoed offsets match its scoring rule; a prompt the tokenizer refuses
        # fails alone.
        encoded = self.backend.tokenize([j.prompt for j in jobs], return_exceptions=True)
        for job, enc in zip(jobs, encoded, strict=True):
            if isinstance(enc, Exception):
                out.append((job, enc))
                continue
            ids, offsets = enc
            n = len(ids)
            if n == 0 and (job.max_tokens > 0 or job.logprobs is not None):
                out.append((job, PromptError(
                    "the prompt is empty and the tokenizer adds no BOS token, so there is no "
                    "context to continue or score from; give a non-empty prompt")))
            elif n > self.max_prompt_tokens:
                fix = ("shorten the prompt" if self.max_prompt_tokens == self.max_length else
                       "shorten the prompt, or raise --max-prompt-tokens"
                       + (f" (at most the model's {self.max_length} positions)"
                          if self.max_length else ""))
                limit = (f"the model has {self.max_length} positions"
                         if self.max_prompt_tokens == self.max_length else
                         f"--max-prompt-tokens {self.max_prompt_tokens}")
                out.append((job, _OverLimit(
                    f"the prompt has {n} tokens, over this server's limit of "
                    f"{self.max_prompt_tokens} per prompt ({limit}); {fix}")))
            elif self.max_length is not None and n + job.max_tokens > self.max_length:
                out.append((job, _OverLimit(
                    f"the prompt has {n} tokens and max_tokens is {job.max_tokens}, but the model "
                    f"has {self.max_length} positions; shorten the prompt or lower max_tokens")))
            else:
                works.append(_Work(job, ids, offsets))
        return works

    def _start_generations(self, out: list) -> None:
        """Start batches of waiting jobs while the KV budget has room, first come first served.

        Batches are made as ``TransformersBackend.generate_ids`` makes them:
        one per (max_tokens, temperature), prompts sorted by length, at most
        ``batch_size`` rows.
        """
        if not self._waiting:
            return
        used = sum(g.reserved for g in self._running)
        groups: dict[Any, list[_Work]] = {}
        for work in self._waiting:
            key = ("solo", id(work)) if work.solo else (work.job.max_tokens, work.job.temperature)
            groups.setdefault(key, []).append(work)
        self._waiting.clear()
        chunks = []
        for members in groups.values():  # in order of arrival of each group's first job
            members.sort(key=lambda w: len(w.ids))
            chunks += [members[s:s + self.batch_size]
                       for s in range(0, len(members), self.batch_size)]
        for k, chunk in enumerate(chunks):
            cost = len(chunk) * (max(len(w.ids) for w in chunk) + chunk[0].job.max_tokens)
            if self._running and used + cost > self.kv_budget:
                # No overtaking: a large batch that does not fit yet would
                # otherwise wait forever behind a stream of small ones.
                self._waiting.extend(w for c in chunks[k:] for w in c)
                return
            try:
                self._running.append(_Generation(self.backend, chunk))
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory: isolate as in a step
                self._retry_alone(chunk, exc, out)
                continue
            used += cost

    def _advance(self, budget_s: float, out: list) -> list[_Work]:
        """Step running generations round robin for about ``budget_s``; the works completed."""
        completed: list[_Work] = []
        deadline = time.perf_counter() + budget_s
        while self._running:
            for gen in list(self._running):
                try:
                    completed.extend(gen.step())
                except Exception as exc:  # noqa: BLE001 - isolated below
                    self._running.remove(gen)
                    self._retry_alone(gen.unfinished(), exc, out, len(gen.works))
                    continue
                if gen.finished:
                    self._running.remove(gen)
            self._start_generations(out)  # room freed by finished batches
            if time.perf_counter() >= deadline:
                break
        return completed

    def _retry_alone(self, rows: list[_Work], exc: Exception, out: list,
                     batch_rows: int | None = None) -> None:
        """A failed batch: its unanswered rows start again one by one, so only the culprit fails."""
        if (batch_rows or len(rows)) == 1:
            out.extend((w.job, exc) for w in rows)
            return
        for work in reversed(rows):
            work.solo = True
            self._waiting.appendleft(work)

    def _finish(self, ready: list[_Work], out: list) -> None:
        """Score what asks for logprobs (drawing the new token of fast jobs), answer them all."""
        token_lp: dict[int, np.ndarray] = {}
        failed: set[int] = set()
        scored = [w for w in ready if w.job.logprobs is not None]
        for work, result in zip(scored, self._score(scored), strict=True):
            if isinstance(result, Exception):
                out.append((work.job, result))
                failed.add(id(work))
                continue
            token_lp[id(work)] = result.logprobs
            if work.fast:
                # Listed even when it is an EOS (as vLLM does): clients find the
                # echo's end at the generated token. The text leaves an EOS out.
                work.generated = [result.next_token]
        for work in ready:
            if id(work) in failed:
                continue
            try:
                out.append((work.job, self._choice(work.job, work.ids, work.offsets,
                                                   work.generated, token_lp.get(id(work)))))
            except Exception as exc:  # noqa: BLE001 - reported to that request alone
                out.append((work.job, exc))

    def _score(self, works: list[_Work]) -> list[TokenLogprobs | Exception]:
        """The backend's ``TokenLogprobs`` of each work, or the exception that work alone raised.

        A fast job's new token is drawn from the same forward pass, as
        ``TransformersBackend.generate`` draws its first token.
        """
        if not works:
            return []
        rows = [w.ids + w.generated for w in works]
        seeds = [w.job.seed if w.fast else None for w in works]
        temps = [w.job.temperature for w in works]
        try:
            return self.backend.token_logprobs(rows, seeds, temps)
        except Exception as exc:  # noqa: BLE001 - re-run one by one to find the culprit
            if len(works) == 1:
                return [exc]
        out: list[TokenLogprobs | Exception] = []
        for row, seed, temp in zip(rows, seeds, temps, strict=True):
            try:
                out.extend(self.backend.token_logprobs([row], [seed], [temp]))
            except Exception as exc:  # noqa: BLE001 - reported to that request alone
                out.append(exc)
        return out

    def _choice(self, job: _Job, prompt_ids: list[int], offsets: list[tuple[int, int]],
                new_ids: list[int], logprobs: np.ndarray | None) -> _Choice:
        n = len(new_ids)
        # One decode call: the completion, then (for logprobs) each new token
        # alone and the completion up to each new token, for the text offsets.
        rows = [new_ids] if new_ids else []
        if job.logprobs is not None:
            rows += [new_ids[k:k + 1] for k in range(n)] + [new_ids[:k] for k in range(1, n)]
        texts = self.backend.decode(rows) if rows else []
        completion = texts[0] if new_ids else ""
        stopped = bool(new_ids) and new_ids[-1] in self.eos_ids
        finish = "stop" if stopped or len(new_ids) < job.max_tokens else "length"
        lp_json = None
        if job.logprobs is not None:
            tokens: list[str] = []
            text_offset: list[int] = []
            base = 0
            if job.echo:
                # Each echoed token is the text from its start to the next token's
                # start, so the pieces add up to the prompt even where byte-level
                # tokens split a character.
                starts = [s for s, _ in offsets]
                for k, s in enumerate(starts):
                    end = starts[k + 1] if k + 1 < len(starts) else len(job.prompt)
                    tokens.append(job.prompt[s:max(s, end)])
                    text_offset.append(s)
                base = len(job.prompt)
            else:
                logprobs = logprobs[len(prompt_ids):]
            # New tokens start at the end of the prompt (as vLLM reports), which
            # is how the openai backend tells them from the echo.
            if n:
                tokens += texts[1:1 + n]
                text_offset += [base + len(t) for t in [""] + texts[1 + n:]]
            lp_json = {
                "tokens": tokens,
                "token_logprobs": [None if math.isnan(v) else float(v) for v in logprobs],
                "top_logprobs": None,
                "text_offset": text_offset,
            }
        return _Choice(text=(job.prompt if job.echo else "") + completion, logprobs=lp_json,
                       finish_reason=finish, prompt_tokens=len(prompt_ids),
                       completion_tokens=len(new_ids))


# -- the HTTP side ----------------------------------------------------------------------------


class _Batcher:
    """Merges the jobs of concurrent requests and runs the engine's rounds in one thread."""

    def __init__(self, engine: CompletionEngine, window_s: float):
        self.engine = engine
        self.window_s = window_s
        self.pending: list[_Job] = []
        self.wake = asyncio.Event()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="swarm-serve-model")
        self.task: asyncio.Task | None = None
        self.rounds = 0
        self.jobs_done = 0

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        self.executor.shutdown(wait=True)
        for job in self.pending + self.engine.held_jobs():
            if job.future is not None and not job.future.done():
                job.future.set_exception(BackendError("the server is shutting down"))

    async def submit(self, jobs: list[_Job]) -> list[_Choice | Exception]:
        loop = asyncio.get_running_loop()
        for job in jobs:
            job.future = loop.create_future()
        self.pending.extend(jobs)
        self.wake.set()
        return list(await asyncio.gather(*(j.future for j in jobs)))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self.pending and not self.engine.busy:
                self.wake.clear()
                await self.wake.wait()
                # Only an idle model waits for company: jobs that queued while it
                # was busy have waited long enough already.
                if self.window_s > 0:
                    await asyncio.sleep(self.window_s)
            take, self.pending = (self.pending[:_MAX_ROUND_PROMPTS],
                                  self.pending[_MAX_ROUND_PROMPTS:])
            try:
                finished = await loop.run_in_executor(self.executor, self.engine.step, take)
            except Exception as exc:  # noqa: BLE001 - step isolates jobs; this is a bug: fail all
                finished = [(job, exc) for job in take + self.engine.held_jobs()]
                self.engine = CompletionEngine(self.engine.backend,
                                               self.engine.max_prompt_tokens)
            self.rounds += 1
            self.jobs_done += len(finished)
            for job, result in finished:
                if job.future is not None and not job.future.done():
                    job.future.set_result(result)


def _error(status: int, message: str, param: str | None = None,
           kind: str = "invalid_request_error", code: str | None = None,
           headers: dict[str, str] | None = None) -> web.Response:
    """An error reply in OpenAI's format."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


def _parse(body: Any, names: list[str], limits: ServeLimits, max_prompt_tokens: int
           ) -> list[_Job]:
    """The jobs of a /v1/completions body, or _BadRequest naming the field and the fix.

    Every check here is cheap (no tokenizing), so a request over a limit
    costs the server next to nothing.
    """
    if not isinstance(body, dict):
        raise _BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if model is not None and model not in names:
        raise _BadRequest(f"model {model!r} is not served here; this server serves {names}",
                          "model")
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompts = [prompt]
    elif (isinstance(prompt, list) and prompt
          and all(isinstance(p, str) for p in prompt)):
        prompts = prompt
    else:
        raise _BadRequest("prompt is required: a string or a non-empty list of strings "
                          "(token-id prompts are not supported)", "prompt")
    if len(prompts) > limits.max_prompts:
        raise _BadRequest(f"the request has {len(prompts)} prompts, over this server's limit of "
                          f"{limits.max_prompts} per request (--max-prompts); split it into "
                          "several requests", "prompt", "too_many_prompts")
    for key, neutral in _NEUTRAL.items():
        value = body.get(key, neutral)
        if value != neutral and value not in ([], {}, ""):
            raise _BadRequest(f"{key}={value!r} is not supported by swarm serve-policy; "
                              f"leave it out or set it to {neutral!r}", key)
    echo = body.get("echo", False)
    if not isinstance(echo, bool):
        raise _BadRequest(f"echo must be true or false; got {echo!r}", "echo")
    logprobs = body.get("logprobs")
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)
                                 or not 0 <= logprobs <= 20):
        raise _BadRequest(f"logprobs must be an integer from 0 to 20 or null; got {logprobs!r}",
                          "logprobs")
    # OpenAI's default is 16; a server that allows fewer serves what it allows.
    max_tokens = body.get("max_tokens", min(16, limits.max_new_tokens))
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
        raise _BadRequest(f"max_tokens must be an integer >= 0; got {max_tokens!r}",
                          "max_tokens")
    if max_tokens > limits.max_new_tokens:
        raise _BadRequest(f"max_tokens={max_tokens} is over this server's limit of "
                          f"{limits.max_new_tokens} (--max-new-tokens); ask for fewer tokens, or "
                          "restart the server with a higher --max-new-tokens", "max_tokens",
                          "max_tokens_exceeded")
    temperature = body.get("temperature", 1.0)
    if (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
            or not 0 <= temperature < math.inf):
        raise _BadRequest(f"temperature must be a number >= 0; got {temperature!r}",
                          "temperature")
    seed = body.get("seed")
    if seed is None:
        seed = secrets.randbits(62)
    elif isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise _BadRequest(f"seed must be an integer from 0 to 2**63 - 1; got {seed!r}", "seed")
    max_chars = _CHARS_PER_TOKEN * max_prompt_tokens
    for index, text in enumerate(prompts):
        if len(text) > max_chars:
            raise _BadRequest(
                f"prompt {index} has {len(text)} characters; this server refuses prompts over "
                f"{max_chars} characters ({_CHARS_PER_TOKEN} per token of its "
                f"{max_prompt_tokens}-token limit, --max-prompt-tokens) without tokenizing "
                "them; shorten the prompt", "prompt", "context_length_exceeded")
        # A lone surrogate (JSON allows "\ud800") is no Unicode text: the
        # tokenizer refuses it, and used to fail every prompt of its batch.
        bad = _LONE_SURROGATE.search(text)
        if bad is not None:
            raise _BadRequest(
                f"prompt {index} holds a lone UTF-16 surrogate (U+{ord(bad.group()):04X} at "
                f"character {bad.start()}), which is not valid Unicode text; send valid text "
                "(in JSON, a character outside the BMP is a surrogate pair such as "
                "\\ud83d\\ude00)", "prompt", "invalid_prompt")
    return [_Job(prompt=p, echo=echo, logprobs=logprobs, max_tokens=max_tokens,
                 temperature=float(temperature), seed=seed) for p in prompts]


def _too_large(request: web.Request, limits: ServeLimits) -> web.Response:
    size = request.content_length
    told = f" ({size} bytes)" if size is not None else ""
    return _error(413, f"the request body{told} is over this server's limit of "
                       f"{limits.max_body_bytes} bytes (--max-body-bytes); send fewer or shorter "
                       "prompts per request, or raise --max-body-bytes", code="body_too_large")


async def _read_body(request: web.Request, limits: ServeLimits) -> bytes | web.Response:
    """The request body, or the error reply when it is too large or too slow to arrive."""
    if request.content_length is not None and request.content_length > limits.max_body_bytes:
        return _too_large(request, limits)  # refused before reading a byte of it
    try:
        async with asyncio.timeout(limits.read_timeout_s):
            return await request.read()  # enforces client_max_size on chunked bodies too
    except web.HTTPRequestEntityTooLarge:
        return _too_large(request, limits)
    except TimeoutError:
        pass
    resp = _error(408, f"the request body did not arrive within {limits.read_timeout_s:g} s "
                       "(--read-timeout); send it faster, or raise --read-timeout",
                  code="request_timeout")
    resp.force_close()
    await resp.prepare(request)
    await resp.write_eof()
    # Drop the connection now: aiohttp would otherwise keep reading (and
    # discarding) the trickle for up to 10 s more, which is what the client wants.
    request.protocol.force_close()
    return resp


async def _models(request: web.Request) -> web.Response:
    names = request.app[_MODELS_KEY]
    created = int(time.time())
    return web.json_response({"object": "list", "data": [
        {"id": n, "object": "model", "created": created, "owned_by": "swarm"} for n in names]})


async def _completions(request: web.Request) -> web.StreamResponse:
    names = request.app[_MODELS_KEY]
    batcher = request.app[_BATCHER_KEY]
    raw = await _read_body(request, request.app[_LIMITS_KEY])
    if isinstance(raw, web.StreamResponse):
        return raw
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return _error(400, "the request body is not valid JSON; send a JSON object with a "
                           "prompt (Content-Type: application/json)")
    try:
        jobs = _parse(body, names, request.app[_LIMITS_KEY], batcher.engine.max_prompt_tokens)
    except _BadRequest as exc:
        return _error(400, str(exc), exc.param, code=exc.code)
    results = await batcher.submit(jobs)
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for index, result in enumerate(results):
        if isinstance(result, (BackendError, ValueError)):
            return _error(400, f"prompt {index}: {result}", "prompt",
                          code=getattr(result, "code", None))
        if isinstance(result, Exception):
            return _error(500, f"the model failed on prompt {index}: "
                               f"{type(result).__name__}: {result}", kind="server_error")
        choices.append({"index": index, "text": result.text, "logprobs": result.logprobs,
                        "finish_reason": result.finish_reason})
        prompt_tokens += result.prompt_tokens
        completion_tokens += result.completion_tokens
    return web.json_response({
        "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
        "created": int(time.time()), "model": body.get("model") or names[0], "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    })


async def _health(request: web.Request) -> web.Response:
    batcher = request.app[_BATCHER_KEY]
    limits = replace(request.app[_LIMITS_KEY],
                     max_prompt_tokens=batcher.engine.max_prompt_tokens)
    return web.json_response({**batcher.engine.backend.health(), "models": request.app[_MODELS_KEY],
                              "rounds": batcher.rounds, "prompts": batcher.jobs_done,
                              "queued": len(batcher.pending),
                              "generating": batcher.engine.generating(),
                              "waiting": batcher.engine.waiting(), "limits": asdict(limits)})


def _require_key(key: str):
    """Middleware answering 401 to any request without ``Authorization: Bearer <key>``."""
    expected = key.encode("utf-8", "surrogatepass")

    @web.middleware
    async def require_key(request: web.Request, handler) -> web.StreamResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        # compare_digest: the time taken does not tell how much of a guess was right.
        if not (scheme.lower() == "bearer" and hmac.compare_digest(
                token.strip().encode("utf-8", "surrogatepass"), expected)):
            return _error(401, "missing or wrong API key: send 'Authorization: Bearer KEY' with "
                               "the key this server was started with (the openai backend sends "
                               "it from the variable named by its api_key_env)",
                          code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return require_key


def make_app(backend: Backend, *, model_name: str | None = None, batch_window_ms: float = 3.0,
             limits: ServeLimits | None = None, api_key: str | None = None) -> web.Application:
    """The aiohttp application serving ``backend`` as an OpenAI-compatible API.

    Parameters
    ----------
    backend : Backend
        A loaded local backend (``TransformersBackend``); the app does not close it.
    model_name : str, optional
        The name ``/v1/models`` lists and requests must use (or leave out);
        default: the base name of the backend's checkpoint directory.
    batch_window_ms : float
        How long an idle model waits for more requests to merge into its next
        forward pass; 0 runs each request as soon as it arrives.
    limits : ServeLimits, optional
        What one request may ask for; default ``ServeLimits()``. Serve the
        app with :func:`make_runner` so its idle timeout applies too.
    api_key : str, optional
        When given, every request must carry ``Authorization: Bearer <api_key>``
        (else HTTP 401).

    Returns
    -------
    aiohttp.web.Application
        Routes ``GET /v1/models``, ``POST /v1/completions`` and ``GET /health``.
    """
    if not batch_window_ms >= 0:
        raise ValueError(f"batch_window_ms must be >= 0; got {batch_window_ms!r}")
    if api_key is not None and not api_key:
        raise BackendError("api_key must be a non-empty string, or None for no key")
    limits = limits or ServeLimits()
    engine = CompletionEngine(backend, max_prompt_tokens=limits.max_prompt_tokens)
    name = model_name or _default_name(getattr(backend, "path", "model"))
    middlewares = [_require_key(api_key)] if api_key is not None else []
    app = web.Application(client_max_size=limits.max_body_bytes, middlewares=middlewares)
    app[_MODELS_KEY] = [name]
    app[_LIMITS_KEY] = limits
    batcher = _Batcher(engine, batch_window_ms / 1000.0)
    app[_BATCHER_KEY] = batcher

    async def lifecycle(app: web.Application):
        batcher.start()
        yield
        await batcher.stop()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/v1/models", _models)
    app.router.add_post("/v1/completions", _completions)
    app.router.add_get("/health", _health)
    return app


def make_runner(app: web.Application) -> web.AppRunner:
    """An ``AppRunner`` for ``app`` that closes idle connections after its ``idle_timeout_s``.

    aiohttp's keep-alive timer starts when a connection opens and runs while
    no complete request has arrived, so it also ends connections that send
    nothing or trickle their headers (its default waits an hour).
    """
    limits = app.get(_LIMITS_KEY) or ServeLimits()
    return web.AppRunner(app, access_log=None, keepalive_timeout=limits.idle_timeout_s)


def _default_name(path: str) -> str:
    return os.path.basename(os.path.normpath(str(path))) or str(path)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost: assume it is reachable
        return False


def _read_api_key(env_name: str) -> str:
    """The key in the environment variable ``env_name``, or BackendError saying what to set."""
    if not _KEY_ENV_NAME.fullmatch(env_name):
        # The value is not echoed: it may be the key itself, given by mistake.
        raise BackendError("--api-key-env takes the NAME of an environment variable matching "
                           f"{_KEY_ENV_NAME.pattern.strip('^$')} (e.g. SWARM_SERVE_API_KEY), not "
                           "the key "
                           "itself; put the key in such a variable and pass its name")
    key = os.environ.get(env_name, "").strip()
    if not key:
        raise BackendError(f"--api-key-env {env_name}: the variable {env_name} is unset or "
                           f"empty; set it to the key clients must send (e.g. export "
                           f"{env_name}=$(openssl rand -hex 32)) and start the server again")
    return key


def serve(path: str, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          dtype: str = "auto", batch_window_ms: float = 3.0,
          served_model_name: str | None = None, batch_size: int = 64,
          limits: ServeLimits | None = None, api_key_env: str | None = None) -> None:
    """Load the checkpoint at ``path`` and serve it until Ctrl-C or SIGTERM.

    Prints ``serving NAME on http://HOST:PORT/v1`` (the port actually bound,
    also for ``port=0``) once it accepts requests.

    Parameters
    ----------
    path : str
        Local checkpoint directory (config.json, weights, tokenizer files).
    host, port : str, int
        Where to listen; 127.0.0.1 by default (use 0.0.0.0 for other machines);
        port 0 picks a free one. A host other than loopback without an API key
        prints a warning: anyone who can reach the port can use the model.
    device, dtype : str
        As for ``TransformersBackend`` (``auto``: a GPU if there is one;
        float64 on the CPU, float32 on a GPU).
    batch_window_ms : float
        How long an idle model waits to merge concurrent requests.
    served_model_name : str, optional
        The model name clients use; default: the directory's base name.
    batch_size : int
        Most rows in one forward pass.
    limits : ServeLimits, optional
        Per-request limits and connection timeouts; default ``ServeLimits()``.
    api_key_env : str, optional
        Name of an environment variable (``*_API_KEY``) holding the key every
        request must send as ``Authorization: Bearer KEY``; read once at start,
        and the server refuses to start when it is unset or empty.
    """
    from swarm.policies.backends.transformers_backend import TransformersBackend

    # Checked before the model loads, so a mistake costs no loading time.
    api_key = _read_api_key(api_key_env) if api_key_env is not None else None
    limits = limits or ServeLimits()
    if api_key is None and not _is_loopback(host):
        print(f"swarm serve-policy: warning: listening on {host} without an API key: anyone who "
              f"can reach port {port} can use the model. Set a key in an environment variable "
              "and pass --api-key-env NAME (e.g. SWARM_SERVE_API_KEY), or bind 127.0.0.1.",
              file=sys.stderr, flush=True)
    elif not _is_loopback(host):
        # This server speaks plain HTTP: beyond loopback the key (and the
        # prompts) would cross the network readable, which swarm's openai
        # backend refuses to do.
        print(f"swarm serve-policy: warning: listening on {host} over plain HTTP: the API key "
              "would cross the network in clear, and swarm's openai backend sends a key only "
              "over https beyond loopback. Bind 127.0.0.1 behind a TLS-terminating proxy "
              "(nginx, caddy) and point clients at its https:// address.",
              file=sys.stderr, flush=True)
    backend = TransformersBackend(path, device=device, dtype=dtype, batch_size=batch_size)
    try:
        app = make_app(backend, model_name=served_model_name, batch_window_ms=batch_window_ms,
                       limits=limits, api_key=api_key)
        asyncio.run(_serve_forever(app, host, port))
    except KeyboardInterrupt:
        pass
    finally:
        backend.close()


async def _serve_forever(app: web.Application, host: str, port: int) -> None:
    runner = make_runner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise SystemExit(f"swarm serve-policy: cannot listen on {host}:{port}: "
                             f"{exc.strerror or exc}; pick another --port (0: any free one)"
                             ) from None
        bound = runner.addresses[0][1] if runner.addresses else port
        shown = f"[{host}]" if ":" in host else host
        print(f"serving {app[_MODELS_KEY][0]} on http://{shown}:{bound}/v1", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
                pass
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    """The command line: ``python -m swarm.policies.http_server MODEL_DIR [options]``."""
    parser = argparse.ArgumentParser(
        prog="swarm serve-policy",
        description="Serve a local causal LM as an OpenAI-compatible API (/v1/completions "
                    "with echo+logprobs) for the openai backend of LLM policies.")
    parser.add_argument("model_dir", help="checkpoint directory (config.json, weights, tokenizer)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; 0.0.0.0 for other machines)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:i")
    parser.add_argument("--dtype", default="auto",
                        help="auto (float64 on CPU, float32 on GPU), float32, float64, float16, "
                             "bfloat16")
    parser.add_argument("--batch-window-ms", type=float, default=3.0,
                        help="how long an idle model waits to merge concurrent requests")
    parser.add_argument("--batch-size", type=int, default=64, help="most rows per forward pass")
    parser.add_argument("--served-model-name", default=None,
                        help="the model name clients use (default: the directory's name)")
    d = ServeLimits()
    parser.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes,
                        help=f"largest request body (default {d.max_body_bytes}; over: HTTP 413)")
    parser.add_argument("--max-prompts", type=int, default=d.max_prompts,
                        help=f"most prompts per request (default {d.max_prompts})")
    parser.add_argument("--max-prompt-tokens", type=int, default=None,
                        help="most tokens per prompt (default: the model's context length)")
    parser.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens,
                        help=f"largest max_tokens a request may ask for "
                             f"(default {d.max_new_tokens})")
    parser.add_argument("--read-timeout", type=float, default=d.read_timeout_s,
                        help=f"seconds a client has to send its request body "
                             f"(default {d.read_timeout_s:g})")
    parser.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s,
                        help=f"seconds before a connection without a complete request is closed "
                             f"(default {d.idle_timeout_s:g})")
    parser.add_argument("--api-key-env", default=None, metavar="NAME",
                        help="require 'Authorization: Bearer KEY', KEY read at start from the "
                             "environment variable NAME (must end in _API_KEY)")
    args = parser.parse_args(argv)
    try:
        limits = ServeLimits(max_body_bytes=args.max_body_bytes, max_prompts=args.max_prompts,
                             max_prompt_tokens=args.max_prompt_tokens,
                             max_new_tokens=args.max_new_tokens,
                             read_timeout_s=args.read_timeout, idle_timeout_s=args.idle_timeout)
        serve(args.model_dir, host=args.host, port=args.port, device=args.device,
              dtype=args.dtype, batch_window_ms=args.batch_window_ms,
              served_model_name=args.served_model_name, batch_size=args.batch_size,
              limits=limits, api_key_env=args.api_key_env)
    except BackendError as exc:
        raise SystemExit(f"swarm serve-policy: {exc}") from None


if __name__ == "__main__":
    main()
