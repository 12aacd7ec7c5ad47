"""The ``openai`` backend: the decide stage's model calls sent to an OpenAI-compatible server.

Scoring and generation go over HTTP to any server that speaks the legacy
``/v1/completions`` API with ``echo`` and ``logprobs`` (``swarm serve-policy``,
vLLM, SGLang, llama.cpp server), so one GPU box can answer for many shards.
Scores follow the rule in :class:`~swarm.policies.backends.base.Backend`
exactly, and generation sends the per-prompt seed, so a server that runs the
same model through swarm's sampler chooses the same actions and writes the
same text as the local ``transformers`` backend.

Requests are asynchronous (httpx) with a bounded number in flight, but the
public methods are synchronous: each backend owns one event loop in a
daemon thread, started on first use, and blocks the caller on it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import weakref
from collections.abc import Awaitable, Sequence
from typing import Any

import httpx
import numpy as np

from swarm.policies.backends.base import Backend, BackendError, PromptError
from swarm.policies.endpoints import check_api_key_env, check_key_transport

__all__ = ["OpenAIBackend"]

_START_SERVER = "is the server running? start one with `swarm serve-policy MODEL_DIR`"
_NEEDS_ECHO = (
    "the server must support echo+logprobs on /v1/completions, as `swarm serve-policy`, "
    "vLLM, SGLang and llama.cpp server do, or use the transformers backend"
)
# How long a Retry-After header may hold a request back (seconds); a server
# asking for more is treated as a plain backoff so a run never stalls silently.
_MAX_RETRY_AFTER = 30.0


class _Transient(Exception):
    """One try failed in a way worth retrying; ``reason`` says how, ``unreachable`` if no reply."""

    def __init__(self, reason: str, unreachable: bool, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.unreachable, self.retry_after = reason, unreachable, retry_after


class _LoopThread:
    """An event loop running in a daemon thread, with the backend's one HTTP client.

    Kept apart from the backend so a ``weakref.finalize`` on the backend can
    stop it without keeping the backend alive.
    """

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.client: httpx.AsyncClient | None = None
        self.semaphore: asyncio.Semaphore | None = None
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Awaitable[Any]) -> Any:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            raise RuntimeError("OpenAIBackend methods are blocking; do not call them from "
                               "inside its own event loop")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            # Ctrl-C or an error in the caller's thread: stop the requests too.
            future.cancel()
            raise

    def stop(self) -> None:
        if not self.loop.is_closed() and self.thread.is_alive():
            if self.client is not None:
                try:
                    asyncio.run_coroutine_threadsafe(self.client.aclose(), self.loop).result(5)
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
        if not self.thread.is_alive() and not self.loop.is_closed():
            self.loop.close()


class OpenAIBackend(Backend):
    """Score and generate through an OpenAI-compatible ``/v1/completions`` endpoint.

    Parameters
    ----------
    base_url : str
        The API root, ending in ``/v1`` as OpenAI and vLLM clients expect, e.g.
        ``http://127.0.0.1:8000/v1``.
    model : str
        The model name the server serves (``GET {base_url}/models`` lists them).
    api_key_env : str or None
        The environment variable holding the API key, sent as a bearer token; its
        name must match ``[A-Z][A-Z0-9_]*_API_KEY``. Unset (or None) sends no
        Authorization header, which local servers accept. A key is never sent over
        plain ``http://`` to a host other than loopback: such a backend refuses to
        start (or to send its first request) while the variable is set.
    max_concurrency : int
        Requests this backend keeps in flight at once (per backend instance, so
        per run shard); tune it against the server's batch capacity.
    timeout : float
        Seconds one request may take (connect, send and read) before it is retried.
    retries : int
        Tries per request in all (1: no retry). Connect errors, timeouts, HTTP 429
        and 5xx are retried with exponential backoff; other 4xx are not.
    backoff : float
        Seconds before the second try, doubling for each later one (a 429's
        Retry-After header, up to 30 s, takes precedence).
    batch_size : int
        Texts per scoring request (a list ``prompt``); larger batches fill a
        server's forward pass better, smaller ones spread over more requests.

    Examples
    --------
    >>> backend = OpenAIBackend("http://127.0.0.1:8000/v1", "tiny", api_key_env=None)
    >>> backend.name, backend.base_url
    ('openai', 'http://127.0.0.1:8000/v1')
    >>> backend.close()
    """

    name = "openai"

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 max_concurrency: int = 16, timeout: float = 30.0, retries: int = 3,
                 backoff: float = 0.5, batch_size: int = 32):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise BackendError(f"base_url must be an http:// or https:// URL ending in /v1, e.g. "
                             f"http://127.0.0.1:8000/v1; got {base_url!r}")
        try:
            httpx.URL(base_url)
        except httpx.InvalidURL as exc:
            raise BackendError(f"base_url {base_url!r} is not a valid URL ({exc}); write e.g. "
                               "http://127.0.0.1:8000/v1") from None
        if not isinstance(model, str) or not model:
            raise BackendError(f"model must be the name the server serves (see GET "
                             f"{base_url.rstrip('/')}/models); got {model!r}")
        for key, value, low in (("max_concurrency", max_concurrency, 1), ("retries", retries, 1),
                                ("batch_size", batch_size, 1)):
            if not isinstance(value, int) or value < low:
                raise BackendError(f"{key} must be an integer >= {low}; got {value!r}")
        if not timeout > 0:
            raise BackendError(f"timeout must be > 0 seconds; got {timeout!r}")
        if not backoff >= 0:
            raise BackendError(f"backoff must be >= 0 seconds; got {backoff!r}")
        try:
            check_api_key_env(api_key_env)
        except ValueError as exc:
            raise BackendError(f"{exc}; got {api_key_env!r}") from None
        _check_transport(base_url, api_key_env)
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = float(backoff)
        self.batch_size = batch_size
        self._runtime: _LoopThread | None = None
        self._finalizer: weakref.finalize | None = None
        self._lock = threading.Lock()

    # -- pickling: a backend travels to a Ray shard as configuration only ----------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_runtime"], state["_finalizer"], state["_lock"] = None, None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- public API ------------------------------------------------------------------------

    def score(self, prompts: Sequence[str], continuations: Sequence[str]) -> np.ndarray:
        """Log-likelihoods, float64 of shape ``(len(prompts), len(continuations))``.

        Each distinct ``prompt + continuation`` is sent once, ``batch_size`` texts
        per request, with ``echo: true, logprobs: 1, max_tokens: 1``. A choice
        lists the echoed tokens, then the one generated token, whose
        ``text_offset`` is where the echo ends. The continuation's score sums
        the ``token_logprobs`` of the echoed tokens that start within its last
        ``len(continuation)`` characters, i.e. ``end - len(continuation) <=
        text_offset < end``. For a server whose offsets index the text itself
        (``swarm serve-policy``) that is exactly ``text_offset >= len(prompt)``,
        the rule of the local backend; anchoring at the end also holds where a
        server counts offsets over decoded token strings, in which a BOS
        (``"<s>"``) shifts them all. A zero-width token with a ``null`` log-prob
        (a BOS) scores nothing; any other ``null`` in the continuation (its first
        token when the prompt is empty and there is no BOS) is an error, as it is
        for the local backend.

        Raises
        ------
        BackendError
            The server cannot be reached, fails, or answers without echoed
            log-probs; or a continuation covers no token or one without context.
        """
        prompts, continuations = list(prompts), list(continuations)
        out = np.zeros((len(prompts), len(continuations)), dtype=np.float64)
        if not prompts or not continuations:
            return out
        index: dict[str, int] = {}
        cells = np.empty(out.shape, dtype=np.int64)
        for i, prompt in enumerate(prompts):
            for j, cont in enumerate(continuations):
                cells[i, j] = index.setdefault(prompt + cont, len(index))
        texts = list(index)
        chunks = [texts[k:k + self.batch_size] for k in range(0, len(texts), self.batch_size)]
        _check_transport(self.base_url, self.api_key_env)  # before any coroutine exists
        replies = self._run(self._gather([self._echo_logprobs(c) for c in chunks]))
        per_text = [item for reply in replies for item in reply]
        for j, cont in enumerate(continuations):
            for i, prompt in enumerate(prompts):
                offsets, logprobs, end = per_text[cells[i, j]]
                picked = logprobs[(offsets >= end - len(cont)) & (offsets < end)]
                if picked.size == 0:
                    raise BackendError(
                        f"continuation {cont!r} covers no token after prompt "
                        f"...{prompt[-40:]!r}; give continuations a non-empty text with a leading "
                        "space (' share') and prompts without a trailing space")
                if np.isnan(picked).any():
                    raise BackendError(
                        f"the server gave no log-prob (null) for a token of {cont!r}: the prompt "
                        "is empty and the tokenizer adds no BOS token, so its first token has no "
                        "context to be scored in; give a non-empty prompt")
                out[i, j] = picked.sum()
        return out

    def generate(self, prompts: Sequence[str], seeds: np.ndarray, max_new_tokens: int,
                 temperature: float = 1.0) -> list[str]:
        """One completion per prompt, one request each (``seed`` is per request)."""
        prompts = list(prompts)
        seeds = np.asarray(seeds, dtype=np.int64).reshape(-1)
        if len(seeds) != len(prompts):
            raise BackendError(f"generate needs one seed per prompt; got {len(seeds)} seeds for "
                             f"{len(prompts)} prompts")
        if not prompts or max_new_tokens <= 0:
            return [""] * len(prompts)
        _check_transport(self.base_url, self.api_key_env)
        coros = [self._complete(p, int(s), int(max_new_tokens), float(temperature))
                 for p, s in zip(prompts, seeds, strict=True)]
        return list(self._run(self._gather(coros)))

    def health(self) -> dict:
        """``GET {base_url}/models``: whether it answers and which models it serves.

        Never raises; ``ok`` is False and ``error`` says why when the server
        cannot be reached or does not serve ``model``.
        """
        report: dict[str, Any] = {"backend": self.name, "base_url": self.base_url,
                                  "model": self.model}
        try:
            _check_transport(self.base_url, self.api_key_env)
            models = self._run(self._models())
        except BackendError as exc:
            return {**report, "ok": False, "models": [], "error": str(exc)}
        served = self.model in models
        report.update(ok=served, models=models)
        if not served:
            report["error"] = self._not_served(models)
        return report

    def check(self) -> None:
        """Raise :class:`BackendError` unless the server answers and serves ``model``.

        Policies call it at start-up so a wrong URL or model name fails before
        step 0 rather than at the first decide.
        """
        _check_transport(self.base_url, self.api_key_env)
        models = self._run(self._models())
        if self.model not in models:
            raise BackendError(self._not_served(models))

    def close(self) -> None:
        """Close the HTTP client and stop the event loop thread (idempotent)."""
        with self._lock:
            runtime, self._runtime = self._runtime, None
            finalizer, self._finalizer = self._finalizer, None
        if runtime is not None and finalizer is not None:
            finalizer()  # runtime.stop(), once

    # -- event loop ------------------------------------------------------------------------

    def _run(self, coro: Awaitable[Any]) -> Any:
        with self._lock:
            if self._runtime is None or not self._runtime.thread.is_alive():
                self._runtime = _LoopThread(f"swarm-openai-{id(self):x}")
                # Stop the thread when the backend is dropped without close().
                self._finalizer = weakref.finalize(self, self._runtime.stop)
            runtime = self._runtime
        return runtime.run(self._with_client(runtime, coro))

    async def _with_client(self, runtime: _LoopThread, coro: Awaitable[Any]) -> Any:
        # The client and semaphore are made on the loop that uses them.
        if runtime.client is None:
            headers = {}
            key = os.environ.get(self.api_key_env) if self.api_key_env else None
            if key:
                # Checked where the key is read (the public methods check first, so
                # that a refusal leaves no coroutine unawaited): a backend unpickled on
                # a Ray worker never ran __init__, and the worker's environment differs.
                try:
                    _check_transport(self.base_url, self.api_key_env)
                except BackendError:
                    coro.close()
                    raise
                headers["Authorization"] = f"Bearer {key}"
            runtime.client = httpx.AsyncClient(
                headers=headers, timeout=httpx.Timeout(self.timeout),
                limits=httpx.Limits(max_connections=self.max_concurrency,
                                    max_keepalive_connections=self.max_concurrency),
                # Environment proxies would route 127.0.0.1 servers through a proxy.
                trust_env=False,
            )
            runtime.semaphore = asyncio.Semaphore(self.max_concurrency)
        return await coro

    @staticmethod
    async def _gather(coros: list[Awaitable[Any]]) -> list[Any]:
        """All results in order; the first failure cancels the rest and is raised."""
        tasks = [asyncio.ensure_future(c) for c in coros]
        try:
            return await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    # -- requests --------------------------------------------------------------------------

    async def _request(self, method: str, path: str, payload: dict | None = None) -> Any:
        """One JSON request with retries; the decoded reply or a BackendError."""
        runtime = self._runtime
        if runtime is None or runtime.client is None or runtime.semaphore is None:
            raise BackendError("the openai backend was closed while a request was pending")
        url = f"{self.base_url}{path}"
        failure: _Transient | None = None
        # Hold the slot through the backoff too, so a failing server sees fewer requests.
        async with runtime.semaphore:
            for attempt in range(self.retries):
                if failure is not None:
                    delay = self.backoff * 2 ** (attempt - 1)
                    if failure.retry_after is not None:
                        delay = failure.retry_after
                    await asyncio.sleep(delay)
                try:
                    return await self._try_once(runtime.client, method, url, payload)
                except _Transient as exc:
                    failure = exc
        tries = f"{self.retries} {'try' if self.retries == 1 else 'tries'}"
        if failure.unreachable:
            raise BackendError(f"cannot reach {self.base_url} after {tries}: {failure.reason}; "
                               f"{_START_SERVER}")
        raise BackendError(f"{method} {url} failed after {tries}: {failure.reason}")

    async def _try_once(self, client: httpx.AsyncClient, method: str, url: str,
                        payload: dict | None) -> Any:
        try:
            resp = await client.request(method, url, json=payload)
        except httpx.ConnectError as exc:
            raise _Transient(_connect_reason(exc), unreachable=True) from exc
        except httpx.TimeoutException as exc:
            raise _Transient(f"no reply within {self.timeout:g} s ({type(exc).__name__}); "
                             "raise timeout or lower max_concurrency if the server is busy",
                             unreachable=isinstance(exc, httpx.ConnectTimeout)) from exc
        except (httpx.NetworkError, httpx.RemoteProtocolError) as exc:
            raise _Transient(f"connection dropped ({type(exc).__name__}: {exc})",
                             unreachable=False) from exc
        except httpx.HTTPError as exc:
            raise BackendError(f"{method} {url} failed: {type(exc).__name__}: {exc}") from exc
        status = resp.status_code
        if status == 429 or status >= 500:
            raise _Transient(f"HTTP {status}: {_server_message(resp)}", unreachable=False,
                             retry_after=_retry_after(resp))
        if status in (400, 413, 422):  # the request's content, not the endpoint, is at fault
            raise PromptError(f"{method} {url} was refused with HTTP {status}: "
                              f"{_server_message(resp)}")
        if status >= 400:
            raise BackendError(f"{method} {url} was refused with HTTP {status}: "
                               f"{_server_message(resp)}; check base_url, model and the "
                               "server's API key")
        try:
            return resp.json()
        except ValueError:
            snippet = resp.text[:200]
            raise BackendError(
                f"{method} {url} did not answer JSON (HTTP {status}, content-type "
                f"{resp.headers.get('content-type', 'none')!r}); it begins {snippet!r}; "
                "base_url must be the API root of an OpenAI-compatible server, ending in /v1"
            ) from None

    async def _models(self) -> list[str]:
        data = await self._request("GET", "/models")
        try:
            return [str(m["id"]) for m in data["data"]]
        except (KeyError, TypeError) as exc:
            raise BackendError(f"GET {self.base_url}/models did not list models as "
                               f"{{'data': [{{'id': ...}}]}}; got {_short(data)}") from exc

    async def _echo_logprobs(self, texts: list[str]
                             ) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """Per text: echoed tokens' (text_offset, token_logprobs) and the echo's end offset.

        One request for the chunk. The last entry of each choice is the
        generated token (``max_tokens: 1``; servers list it even when it is an
        EOS, which the text leaves out); it starts where the echo ends.
        """
        payload = {"model": self.model, "prompt": texts, "echo": True, "logprobs": 1,
                   "max_tokens": 1, "temperature": 0}
        data = await self._request("POST", "/completions", payload)
        choices = self._choices(data, len(texts))
        out = []
        for choice in choices:
            lp = choice.get("logprobs")
            try:
                offsets = np.asarray(lp["text_offset"], dtype=np.int64)
                logprobs = np.array([np.nan if v is None else v for v in lp["token_logprobs"]],
                                    dtype=np.float64)
            except (KeyError, TypeError, ValueError) as exc:
                raise BackendError(f"{self.base_url}/completions answered without per-token "
                                   f"logprobs (text_offset, token_logprobs); {_NEEDS_ECHO}; "
                                   f"got {_short(choice)}") from exc
            if offsets.ndim != 1 or offsets.shape != logprobs.shape:
                raise BackendError(f"{self.base_url}/completions answered {offsets.size} "
                                   f"text_offset and {logprobs.size} token_logprobs for one "
                                   f"choice; {_NEEDS_ECHO}")
            if len(offsets) < 2 or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
                raise BackendError(f"{self.base_url}/completions did not echo the prompt's "
                                   "tokens (offsets from 0, then the generated token); "
                                   f"{_NEEDS_ECHO}")
            offsets, logprobs, end = offsets[:-1], logprobs[:-1], int(offsets[-1])
            # A zero-width token (a BOS, followed by a token at the same offset)
            # has no log-prob and carries no text: it scores nothing.
            zero_width = np.append(offsets[1:] == offsets[:-1], offsets[-1] == end)
            logprobs[zero_width & np.isnan(logprobs)] = 0.0
            out.append((offsets, logprobs, end))
        return out

    async def _complete(self, prompt: str, seed: int, max_tokens: int,
                        temperature: float) -> str:
        payload = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens,
                   "temperature": temperature, "seed": seed}
        data = await self._request("POST", "/completions", payload)
        text = self._choices(data, 1)[0].get("text")
        if not isinstance(text, str):
            raise BackendError(f"{self.base_url}/completions answered a choice without text: "
                               f"{_short(data)}")
        return text

    def _choices(self, data: Any, expected: int) -> list[dict]:
        """The reply's choices in prompt order (matched by ``index``)."""
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list):
            raise BackendError(f"{self.base_url}/completions answered without a choices list: "
                               f"{_short(data)}; {_NEEDS_ECHO}")
        if len(choices) != expected:
            raise BackendError(f"{self.base_url}/completions answered {len(choices)} choices for "
                               f"{expected} prompts; the server must answer one choice per "
                               "prompt of a list prompt (n=1)")
        try:
            ordered = sorted(choices, key=lambda c: int(c["index"]))
            indices = [int(c["index"]) for c in ordered]
        except (KeyError, TypeError, ValueError) as exc:
            raise BackendError(f"{self.base_url}/completions answered choices without an integer "
                               f"index: {_short(choices)}") from exc
        if indices != list(range(expected)):
            raise BackendError(f"{self.base_url}/completions answered choice indices {indices}; "
                               f"expected 0..{expected - 1}, one per prompt")
        return ordered

    def _not_served(self, models: list[str]) -> str:
        return (f"model {self.model!r} is not served by {self.base_url}; it serves {models}; "
                "set the policy's model to one of them")


def _check_transport(base_url: str, api_key_env: str | None) -> None:
    """A BackendError, before any request, if the key set in ``api_key_env`` would go in clear."""
    present = bool(api_key_env and os.environ.get(api_key_env))
    try:
        check_key_transport(base_url, api_key_env, key_present=present)
    except ValueError as exc:
        raise BackendError(f"{exc}; nothing was sent") from None


def _connect_reason(exc: httpx.ConnectError) -> str:
    """A short reason for a failed connection ('connection refused' rather than a chain)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError) or (
                isinstance(cause, OSError) and cause.errno == errno.ECONNREFUSED):
            return "connection refused"
        cause = cause.__cause__ or cause.__context__
    text = str(exc) or type(exc).__name__
    return "connection refused" if "refused" in text.lower() else text


def _server_message(resp: httpx.Response) -> str:
    """The server's error message: OpenAI's ``{"error": {"message": ...}}`` or the body."""
    try:
        body = resp.json()
    except ValueError:
        return repr(resp.text[:200]) if resp.text else resp.reason_phrase
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body.get("message")))
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])
        if err is not None:
            return str(err)
    return _short(body)


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        value = float(resp.headers.get("retry-after", ""))
    except ValueError:
        return None
    return value if 0 <= value <= _MAX_RETRY_AFTER else None


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
