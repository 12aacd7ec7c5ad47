"""``swarm serve-policy``: one local model answering the decide stage of many shards over HTTP.

An OpenAI-compatible server (``GET /v1/models``, ``POST /v1/completions``) on
aiohttp in front of a local :class:`~swarm.policies.backends.base.Backend`,
normally :class:`TransformersBackend`. The ``openai`` backend (or any
OpenAI client) talks to it. Scoring requests (``echo`` with ``logprobs``)
return per-token log-probabilities computed in float64 exactly as the local
backend scores, and generation goes through the backend's own sampler with
the request's ``seed``, so shards that use the server choose the same actions
and write the same text as shards that load the model themselves.

Requests from many clients are merged: the prompts that arrive within a
short window (``batch_window_ms``) go through the model together, in one
worker thread, because the model and tokenizer are not thread-safe.

Run it as ``swarm serve-policy MODEL_DIR`` or
``python -m swarm.policies.serve MODEL_DIR [--host --port --device --dtype
--batch-window-ms --served-model-name]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import secrets
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from aiohttp import web

from swarm.policies.backends.base import Backend, BackendError, sample_tokens

__all__ = ["CompletionEngine", "main", "make_app", "serve"]

# Largest number of logits (rows x vocabulary) one scoring forward may hold:
# 2**26 is 256 MB in float32 plus 512 MB for the float64 log-softmax.
_LOGIT_BUDGET = 1 << 26
# Prompts one model round takes from the queue; the rest wait for the next
# round, so one huge request cannot hold a small one back for long.
_MAX_ROUND_PROMPTS = 1024
_MAX_BODY = 64 * 1024**2
# Sampling options this server cannot honour, with the value that means "off";
# anything else is refused rather than silently ignored.
_NEUTRAL = {"n": 1, "best_of": 1, "top_p": 1, "presence_penalty": 0, "frequency_penalty": 0,
            "stream": False, "suffix": None, "stop": None, "logit_bias": None}
_MODELS_KEY = web.AppKey("swarm_model_names", list)
_BATCHER_KEY = web.AppKey("swarm_batcher", object)


# -- the model side: runs in the worker thread only ------------------------------------------


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


class CompletionEngine:
    """The completions a batch of jobs asks for, computed with one backend's model.

    Not thread-safe: the server calls it from a single worker thread.

    Parameters
    ----------
    backend : Backend
        A local backend exposing ``model``, ``tokenizer``, ``device``,
        ``eos_ids``, ``generate_ids`` and ``batch_size`` (``TransformersBackend``).
    """

    def __init__(self, backend: Backend):
        for attr in ("model", "tokenizer", "device", "generate_ids"):
            if getattr(backend, attr, None) is None:
                raise BackendError(f"swarm serve-policy needs a local backend with a loaded model "
                                   f"(TransformersBackend); {type(backend).__name__} has no "
                                   f"{attr!r}")
        self.backend = backend
        self.max_length = getattr(backend, "max_length", None)
        self.eos_ids = set(getattr(backend, "eos_ids", []))
        self.batch_size = int(getattr(backend, "batch_size", 64))
        config = backend.model.config
        self.vocab = int(getattr(config, "vocab_size", 0) or len(backend.tokenizer))
        # The backend's own lock (TransformersBackend has one), so that code
        # using the same backend object from another thread waits for us. Not
        # held around generate_ids, which takes it itself.
        self._model_lock = getattr(backend, "_lock", None) or contextlib.nullcontext()

    def run(self, jobs: Sequence[_Job]) -> list[_Choice | Exception]:
        """One result per job: a choice, or the exception that job alone raised."""
        tok = self.backend.tokenizer
        # Tokenized exactly as TransformersBackend does (special tokens added,
        # e.g. a BOS), so echoed offsets match its scoring rule.
        with self._model_lock:
            enc = tok([j.prompt for j in jobs], add_special_tokens=True,
                      return_offsets_mapping=True, return_attention_mask=False)
        prompt_ids: list[list[int]] = enc["input_ids"]
        results: list[_Choice | Exception | None] = [None] * len(jobs)
        for i, job in enumerate(jobs):
            n = len(prompt_ids[i])
            if n == 0 and (job.max_tokens > 0 or job.logprobs is not None):
                results[i] = BackendError(
                    "the prompt is empty and the tokenizer adds no BOS token, so there is no "
                    "context to continue or score from; give a non-empty prompt")
            elif self.max_length is not None and n + job.max_tokens > self.max_length:
                results[i] = BackendError(
                    f"the prompt has {n} tokens and max_tokens is {job.max_tokens}, but the model "
                    f"has {self.max_length} positions; shorten the prompt or lower max_tokens")
        live = [i for i in range(len(jobs)) if results[i] is None]

        # Scoring requests (logprobs with at most one new token) take the new
        # token from the same forward pass; the rest generate through the
        # backend's sampler first.
        fast = [i for i in live if jobs[i].logprobs is not None and jobs[i].max_tokens == 1]
        fast_set = set(fast)
        generated: dict[int, list[int]] = {i: [] for i in live}
        groups: dict[tuple[int, float], list[int]] = {}
        for i in live:
            if jobs[i].max_tokens > 0 and i not in fast_set:
                groups.setdefault((jobs[i].max_tokens, jobs[i].temperature), []).append(i)
        for (max_tokens, temperature), members in groups.items():
            for i, ids in self._isolated(
                    members, results,
                    lambda m, mt=max_tokens, t=temperature: self.backend.generate_ids(
                        [jobs[k].prompt for k in m],
                        np.array([jobs[k].seed for k in m], dtype=np.int64), mt, t)):
                generated[i] = list(ids)

        scored = [i for i in live if jobs[i].logprobs is not None and results[i] is None]
        token_lp: dict[int, np.ndarray] = {}
        if scored:
            rows = [prompt_ids[i] + generated[i] for i in scored]
            with self._model_lock:
                lps, last_by_row = self._forward(rows, want_last=[i in fast_set for i in scored])
                token_lp = dict(zip(scored, lps, strict=True))
                last = {scored[r]: logits for r, logits in last_by_row.items()}
                self._sample_fast(jobs, [i for i in scored if i in fast_set], last, generated,
                                  token_lp)

        with self._model_lock:
            for i in live:
                if results[i] is None:
                    results[i] = self._choice(jobs[i], prompt_ids[i], enc["offset_mapping"][i],
                                              generated[i], token_lp.get(i))
        return results  # type: ignore[return-value]

    @staticmethod
    def _isolated(members: list[int], results: list, call) -> list[tuple[int, Any]]:
        """``call(members)`` as one batch; if it fails, each member alone, so one bad job fails."""
        try:
            return list(zip(members, call(members), strict=True))
        except Exception:  # noqa: BLE001 - re-run one by one to find the culprit
            if len(members) == 1:
                results[members[0]] = sys.exc_info()[1]
                return []
        out = []
        for m in members:
            try:
                out.append((m, call([m])[0]))
            except Exception as exc:  # noqa: BLE001 - reported to that request alone
                results[m] = exc
        return out

    def _forward(self, rows: list[list[int]], want_last: list[bool]
                 ) -> tuple[list[np.ndarray], dict[int, torch.Tensor]]:
        """Per-token log-probs of each row (entry 0 is NaN: no context) and last-position logits.

        Token ``t`` is scored with the float64 log-softmax of the logits at
        ``t - 1``, right padding with an attention mask, as in
        ``TransformersBackend.score``; rows do not influence each other.
        """
        model, dev = self.backend.model, self.backend.device
        out: list[np.ndarray] = [np.empty(0)] * len(rows)
        last: dict[int, torch.Tensor] = {}
        order = np.argsort([len(r) for r in rows], kind="stable")
        start = 0
        while start < len(order):
            # Sorted by length: grow the chunk while its padded logits fit the budget.
            stop = start + 1
            while (stop < len(order) and stop - start < self.batch_size
                   and (stop + 1 - start) * len(rows[order[stop]]) * self.vocab <= _LOGIT_BUDGET):
                stop += 1
            chunk = order[start:stop]
            start = stop
            width = max(len(rows[i]) for i in chunk)
            ids = np.full((len(chunk), width), getattr(self.backend, "pad_id", 0), dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.int64)
            for b, i in enumerate(chunk):
                ids[b, :len(rows[i])] = rows[i]
                mask[b, :len(rows[i])] = 1
            # The LM head runs only where a result is needed: every position but
            # a row's last predicts the next token, and the last one predicts
            # the new token of scoring jobs.
            keep = mask.astype(bool)
            for b, i in enumerate(chunk):
                keep[b, len(rows[i]) - 1] = want_last[i]
            kept = keep.sum(axis=1)
            first = np.concatenate([[0], np.cumsum(kept)[:-1]])  # row-major: rows are contiguous
            pred_at = np.concatenate([first[b] + np.arange(len(rows[i]) - 1)
                                      for b, i in enumerate(chunk)]).astype(np.int64)
            targets = np.array([t for i in chunk for t in rows[i][1:]], dtype=np.int64)
            input_ids = torch.from_numpy(ids).to(dev)
            attention = torch.from_numpy(mask).to(dev)
            keep_t = torch.from_numpy(keep).to(dev)
            with torch.inference_mode():
                if getattr(self.backend, "_keep_logits", False):
                    logits = model(input_ids=input_ids, attention_mask=attention,
                                   logits_to_keep=keep_t, use_cache=False).logits
                else:
                    logits = model(input_ids=input_ids, attention_mask=attention,
                                   use_cache=False).logits
                if logits.dim() == 3:
                    logits = logits[keep_t]
                # Gathered from the whole log-softmax (row by row, as the local
                # backend computes it), without copying the predicting rows out.
                logp = torch.log_softmax(logits.double(), dim=-1)
                picked = logp[torch.from_numpy(pred_at).to(dev),
                              torch.from_numpy(targets).to(dev)].cpu().numpy()
                for b, i in enumerate(chunk):
                    if want_last[i]:
                        # A copy: a view would keep the chunk's logits alive.
                        last[i] = logits[first[b] + kept[b] - 1].clone()
            pos = 0
            for i in chunk:
                n = len(rows[i]) - 1
                out[i] = np.concatenate([[np.nan], picked[pos:pos + n]])
                pos += n
        return out, last

    def _sample_fast(self, jobs: Sequence[_Job], fast: list[int], last: dict[int, torch.Tensor],
                     generated: dict[int, list[int]], token_lp: dict[int, np.ndarray]) -> None:
        """The one new token of scoring jobs: ``generate``'s first draw, from the echo's logits.

        ``sample_tokens`` at position 0 with the job's seed, as
        ``TransformersBackend.generate`` draws its first token.
        """
        by_temp: dict[float, list[int]] = {}
        for i in fast:
            by_temp.setdefault(jobs[i].temperature, []).append(i)
        for temperature, members in by_temp.items():
            logits = torch.stack([last[i] for i in members])
            seeds = np.array([jobs[i].seed for i in members], dtype=np.int64)
            with torch.inference_mode():
                nxt = sample_tokens(logits, seeds, position=0, temperature=temperature)
                logp = torch.log_softmax(logits.double(), dim=-1).gather(
                    1, nxt.unsqueeze(1)).squeeze(1).cpu().numpy()
            for i, tok, lp in zip(members, nxt.cpu().tolist(), logp, strict=True):
                # Listed even when it is an EOS (as vLLM does): clients find the
                # echo's end at the generated token. The text leaves an EOS out.
                generated[i] = [tok]
                token_lp[i] = np.append(token_lp[i], lp)

    def _choice(self, job: _Job, prompt_ids: list[int], offsets: list[tuple[int, int]],
                new_ids: list[int], logprobs: np.ndarray | None) -> _Choice:
        tok = self.backend.tokenizer
        completion = tok.decode(new_ids, skip_special_tokens=True) if new_ids else ""
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
            done = ""
            for k in range(len(new_ids)):
                tokens.append(tok.decode(new_ids[k:k + 1], skip_special_tokens=True))
                text_offset.append(base + len(done))
                done = tok.decode(new_ids[:k + 1], skip_special_tokens=True)
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
    """Merges the jobs of concurrent requests and runs them through the engine in one thread."""

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
        for job in self.pending:
            if job.future is not None and not job.future.done():
                job.future.set_exception(BackendError("the server is shutting down"))
        self.executor.shutdown(wait=True)

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
            await self.wake.wait()
            # Only an idle model waits for company: jobs that queued while it
            # was busy have waited long enough already.
            if self.window_s > 0:
                await asyncio.sleep(self.window_s)
            while self.pending:
                take, self.pending = (self.pending[:_MAX_ROUND_PROMPTS],
                                      self.pending[_MAX_ROUND_PROMPTS:])
                take = [j for j in take if j.future is not None and not j.future.done()]
                if not take:
                    continue
                try:
                    results = await loop.run_in_executor(self.executor, self.engine.run, take)
                except Exception as exc:  # noqa: BLE001 - every job of the round gets it
                    results = [exc] * len(take)
                self.rounds += 1
                self.jobs_done += len(take)
                for job, result in zip(take, results, strict=True):
                    if not job.future.done():
                        job.future.set_result(result)
            self.wake.clear()


def _error(status: int, message: str, param: str | None = None,
           kind: str = "invalid_request_error", code: str | None = None) -> web.Response:
    """An error reply in OpenAI's format."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status)


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def _parse(body: Any, names: list[str]) -> list[_Job]:
    """The jobs of a /v1/completions body, or _BadRequest naming the field and the fix."""
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
    max_tokens = body.get("max_tokens", 16)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 0:
        raise _BadRequest(f"max_tokens must be an integer >= 0; got {max_tokens!r}",
                          "max_tokens")
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
    return [_Job(prompt=p, echo=echo, logprobs=logprobs, max_tokens=max_tokens,
                 temperature=float(temperature), seed=seed) for p in prompts]


async def _models(request: web.Request) -> web.Response:
    names = request.app[_MODELS_KEY]
    created = int(time.time())
    return web.json_response({"object": "list", "data": [
        {"id": n, "object": "model", "created": created, "owned_by": "swarm"} for n in names]})


async def _completions(request: web.Request) -> web.Response:
    names = request.app[_MODELS_KEY]
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "the request body is not valid JSON; send a JSON object with a "
                           "prompt (Content-Type: application/json)")
    try:
        jobs = _parse(body, names)
    except _BadRequest as exc:
        return _error(400, str(exc), exc.param)
    results = await request.app[_BATCHER_KEY].submit(jobs)
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for index, result in enumerate(results):
        if isinstance(result, (BackendError, ValueError)):
            return _error(400, f"prompt {index}: {result}", "prompt")
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
    return web.json_response({**batcher.engine.backend.health(), "models": request.app[_MODELS_KEY],
                              "rounds": batcher.rounds, "prompts": batcher.jobs_done,
                              "queued": len(batcher.pending)})


def make_app(backend: Backend, *, model_name: str | None = None,
             batch_window_ms: float = 3.0) -> web.Application:
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

    Returns
    -------
    aiohttp.web.Application
        Routes ``GET /v1/models``, ``POST /v1/completions`` and ``GET /health``.
    """
    if not batch_window_ms >= 0:
        raise ValueError(f"batch_window_ms must be >= 0; got {batch_window_ms!r}")
    engine = CompletionEngine(backend)
    name = model_name or _default_name(getattr(backend, "path", "model"))
    app = web.Application(client_max_size=_MAX_BODY)
    app[_MODELS_KEY] = [name]
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


def _default_name(path: str) -> str:
    return os.path.basename(os.path.normpath(str(path))) or str(path)


def serve(path: str, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
          dtype: str = "auto", batch_window_ms: float = 3.0,
          served_model_name: str | None = None, batch_size: int = 64) -> None:
    """Load the checkpoint at ``path`` and serve it until Ctrl-C or SIGTERM.

    Prints ``serving NAME on http://HOST:PORT/v1`` (the port actually bound,
    also for ``port=0``) once it accepts requests.

    Parameters
    ----------
    path : str
        Local checkpoint directory (config.json, weights, tokenizer files).
    host, port : str, int
        Where to listen; 127.0.0.1 by default (use 0.0.0.0 for other machines);
        port 0 picks a free one.
    device, dtype : str
        As for ``TransformersBackend`` (``auto``: a GPU if there is one;
        float64 on the CPU, float32 on a GPU).
    batch_window_ms : float
        How long an idle model waits to merge concurrent requests.
    served_model_name : str, optional
        The model name clients use; default: the directory's base name.
    batch_size : int
        Most rows in one forward pass.
    """
    from swarm.policies.backends.transformers_backend import TransformersBackend

    backend = TransformersBackend(path, device=device, dtype=dtype, batch_size=batch_size)
    try:
        asyncio.run(_serve_forever(make_app(backend, model_name=served_model_name,
                                            batch_window_ms=batch_window_ms), host, port))
    except KeyboardInterrupt:
        pass
    finally:
        backend.close()


async def _serve_forever(app: web.Application, host: str, port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
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
    """The command line: ``python -m swarm.policies.serve MODEL_DIR [options]``."""
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
    args = parser.parse_args(argv)
    try:
        serve(args.model_dir, host=args.host, port=args.port, device=args.device,
              dtype=args.dtype, batch_window_ms=args.batch_window_ms,
              served_model_name=args.served_model_name, batch_size=args.batch_size)
    except BackendError as exc:
        raise SystemExit(f"swarm serve-policy: {exc}") from None


if __name__ == "__main__":
    main()
