"""`swarm serve-policy` under abuse: limits, timeouts, one bad prompt, long generations, a key.

Each test is a reported attack on the server (a lone surrogate failing a
whole batch, a 10 MB prompt tokenized for 20 s, a 1000-token generation
starving 1-token requests, connections never timed out, no way to require
a key) turned into an assertion. Servers run in-process on the tiny
random-weight model; results under attack must equal what the same
requests get alone, and what the local backend computes.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
from aiohttp import web
from typer.testing import CliRunner

from swarm.policies import http_server as serve_module
from swarm.policies.backends.base import BackendError, PromptError
from swarm.policies.backends.openai_backend import OpenAIBackend
from swarm.policies.backends.transformers_backend import TransformersBackend
from swarm.policies.http_server import (
    CompletionEngine,
    ServeLimits,
    _Job,
    main,
    make_app,
    make_runner,
)

JSON = {"content-type": "application/json"}
KEY_ENV = "SWARM_SERVE_TEST_API_KEY"


@pytest.fixture(scope="module")
def local(tiny_model):
    backend = TransformersBackend(tiny_model, device="cpu")
    yield backend
    backend.close()


@contextmanager
def serving(app):
    """Serve ``app`` on 127.0.0.1 from a thread, as `swarm serve-policy` does (make_runner).

    Yields ``(base_url, port)``.
    """
    loop = asyncio.new_event_loop()
    runner = make_runner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/v1", port
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def post(url: str, body, headers: dict | None = None) -> httpx.Response:
    # json.dumps escapes a lone surrogate as \ud800, as any JSON client may send it.
    return httpx.post(url + "/completions", content=json.dumps(body).encode(),
                      headers={**JSON, **(headers or {})}, timeout=120)


def health(url: str, **kw) -> dict:
    return httpx.get(url.removesuffix("/v1") + "/health", timeout=30, **kw).json()


# -- request limits ---------------------------------------------------------------------------


def test_a_body_over_the_limit_is_refused_unread_with_413(local):
    big = json.dumps({"prompt": "word " * 400_000, "max_tokens": 1}).encode()  # 2 MB
    with serving(make_app(local, batch_window_ms=0)) as (url, _):
        rounds = health(url)["rounds"]
        r = httpx.post(url + "/completions", content=big, headers=JSON, timeout=60)
        assert r.status_code == 413, r.text
        error = r.json()["error"]
        assert "1048576 bytes (--max-body-bytes)" in error["message"]
        assert error["code"] == "body_too_large"
        # Chunked, without a Content-Length: refused while reading.
        chunks = iter([big[k:k + 65536] for k in range(0, len(big), 65536)])
        r = httpx.post(url + "/completions", content=chunks, headers=JSON, timeout=60)
        assert r.status_code == 413 and "--max-body-bytes" in r.json()["error"]["message"]
        assert health(url)["rounds"] == rounds  # the model never saw either

    # With the body limit raised, a long prompt is refused on its length in
    # characters, before the tokenizer (which took 18 s and 2.5 GB for 10 MB).
    limits = ServeLimits(max_body_bytes=4 << 20)
    with serving(make_app(local, batch_window_ms=0, limits=limits)) as (url, _):
        r = httpx.post(url + "/completions", content=big, headers=JSON, timeout=60)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert "2000000 characters" in error["message"]
        assert "8192 characters" in error["message"] and "--max-prompt-tokens" in error["message"]
        assert error["code"] == "context_length_exceeded" and error["param"] == "prompt"
        assert health(url)["rounds"] == 0  # no model round: the tokenizer never saw it


def test_requests_over_a_limit_get_400_naming_the_option(local):
    limits = ServeLimits(max_prompts=4, max_new_tokens=8, max_prompt_tokens=16)
    cases = [
        ({"prompt": ["a"] * 5}, "5 prompts, over this server's limit of 4 per request "
                                "(--max-prompts)", "too_many_prompts"),
        ({"prompt": "a", "max_tokens": 9}, "max_tokens=9 is over this server's limit of 8 "
                                           "(--max-new-tokens)", "max_tokens_exceeded"),
        # 129 characters > 8 per token x 16: refused without tokenizing.
        ({"prompt": "x" * 129}, "refuses prompts over 128 characters", "context_length_exceeded"),
        # Under 128 characters but over 16 tokens: refused after tokenizing, alone.
        ({"prompt": ["You saw", "The agent read the post " * 4], "max_tokens": 1},
         "prompt 1: the prompt has", "context_length_exceeded"),
    ]
    with serving(make_app(local, batch_window_ms=0, limits=limits)) as (url, _):
        for body, message, code in cases:
            r = post(url, body)
            assert r.status_code == 400, (body, r.text)
            error = r.json()["error"]
            assert message in error["message"] and error["code"] == code, error
            assert error["type"] == "invalid_request_error"
        assert "(--max-prompt-tokens 16)" in post(url, cases[3][0]).json()["error"]["message"]
        # At the limits, requests are served.
        r = post(url, {"prompt": ["You saw"] * 4, "max_tokens": 8, "seed": 1})
        assert r.status_code == 200 and len(r.json()["choices"]) == 4
        assert health(url)["limits"] == {
            "max_body_bytes": 1 << 20, "max_prompts": 4, "max_prompt_tokens": 16,
            "max_new_tokens": 8, "read_timeout_s": 30.0, "idle_timeout_s": 15.0}


def test_default_limits(local):
    with serving(make_app(local, batch_window_ms=0)) as (url, _):
        limits = health(url)["limits"]
        # The prompt-token cap defaults to the model's context (1024 positions).
        assert limits["max_prompt_tokens"] == 1024 and limits["max_prompts"] == 256
        assert limits["max_new_tokens"] == 256 and limits["max_body_bytes"] == 1 << 20
        assert post(url, {"prompt": "a", "max_tokens": 257}).status_code == 400
        assert post(url, {"prompt": ["a"] * 257, "max_tokens": 0}).status_code == 400
        assert post(url, {"prompt": "x" * 8193, "max_tokens": 0}).status_code == 400
        r = post(url, {"prompt": "word " * 1100, "max_tokens": 0})  # 5500 chars, 2201 tokens
        assert r.status_code == 400 and "model has 1024 positions" in r.text
        r = post(url, {"prompt": "word " * 500, "max_tokens": 30})  # 1001 tokens + 30
        assert r.status_code == 400 and "max_tokens is 30" in r.text
        assert post(url, {"prompt": ["a"] * 256, "max_tokens": 1, "seed": 0}).status_code == 200


def test_limits_are_checked_when_the_server_is_made(local):
    with pytest.raises(BackendError, match=r"max_prompts \(--max-prompts\) must be an integer "
                                           r">= 1; got 0"):
        ServeLimits(max_prompts=0)
    with pytest.raises(BackendError, match=r"read_timeout_s \(--read-timeout\) must be a number "
                                           r"of seconds > 0"):
        ServeLimits(read_timeout_s=0)
    with pytest.raises(BackendError, match=r"5000 is more than the model's 1024 positions"):
        make_app(local, limits=ServeLimits(max_prompt_tokens=5000))


# -- one bad prompt ---------------------------------------------------------------------------


def test_a_lone_surrogate_fails_only_its_own_request(local):
    good = [f"Agent {i} saw a post about the weather" for i in range(19)]
    expected = local.generate(good, np.arange(19), 4)
    bodies = [{"prompt": p, "max_tokens": 4, "seed": i} for i, p in enumerate(good)]
    bodies.insert(7, {"prompt": "a bad \ud800 prompt", "max_tokens": 4, "seed": 0})

    async def all_at_once(url):
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(
                client.post(url + "/completions", content=json.dumps(b).encode(), headers=JSON)
                for b in bodies))

    # A long window: the 20 requests land in one model round.
    with serving(make_app(local, batch_window_ms=300)) as (url, _):
        replies = asyncio.run(all_at_once(url))
    assert [r.status_code for r in replies] == [200] * 7 + [400] + [200] * 12
    error = replies[7].json()["error"]
    assert "lone UTF-16 surrogate (U+D800 at character 6)" in error["message"]
    assert error["param"] == "prompt" and error["code"] == "invalid_prompt"
    texts = [r.json()["choices"][0]["text"] for k, r in enumerate(replies) if k != 7]
    assert texts == expected


def test_the_engine_isolates_a_prompt_its_tokenizer_refuses(local):
    # Behind the HTTP check: a prompt that fails tokenizing fails alone.
    jobs = [_Job("The agent", True, 1, 1, 1.0, 7), _Job("bad \ud800", False, None, 3, 1.0, 1),
            _Job("A post", False, None, 3, 1.0, 5), _Job("A post", True, 0, 0, 1.0, 0)]
    results = CompletionEngine(local).run(jobs)
    assert isinstance(results[1], PromptError) and "cannot encode" in str(results[1])
    assert results[2].text == local.generate(["A post"], np.array([5]), 3)[0]
    alone = CompletionEngine(local).run([jobs[0], jobs[3]])
    assert results[0] == alone[0] and results[3] == alone[1]


def test_a_generation_batch_that_fails_is_rerun_row_by_row(local, monkeypatch):
    # A batch that raises (a model error on one row) is retried one row at a
    # time, so only the row that fails again gets the error.
    real_step = serve_module._Generation.step

    def step(gen):
        if any(w.job.seed == 666 for w in gen.works):
            raise RuntimeError("simulated model failure")
        return real_step(gen)

    monkeypatch.setattr(serve_module._Generation, "step", step)
    jobs = [_Job(p, False, None, 5, 1.0, s) for p, s in
            [("You saw", 1), ("A post", 666), ("The agent", 2)]]
    results = CompletionEngine(local).run(jobs)
    assert isinstance(results[1], RuntimeError)
    assert [results[0].text, results[2].text] == [
        local.generate(["You saw"], np.array([1]), 5)[0],
        local.generate(["The agent"], np.array([2]), 5)[0]]


# -- long generations do not starve short requests -----------------------------------------


def test_a_short_request_is_not_held_back_by_a_long_generation(local):
    long_prompts = [f"Agent {i} read the post" for i in range(32)]
    long_body = {"prompt": long_prompts, "max_tokens": 256, "seed": 10}
    shorts = [{"prompt": "You saw", "echo": True, "logprobs": 1, "max_tokens": 1, "seed": 3},
              {"prompt": "You saw", "max_tokens": 1, "seed": 3}]

    async def race(url):
        finished: dict[str, float] = {}
        async with httpx.AsyncClient(timeout=600) as client:
            async def send(name, body):
                r = await client.post(url + "/completions", json=body)
                finished[name] = time.perf_counter()
                return r

            long = asyncio.ensure_future(send("long", long_body))
            await asyncio.sleep(0.3)
            assert not long.done(), "the long request ended within 0.3 s; make it longer"
            replies = await asyncio.gather(*(send(f"short{k}", b) for k, b in enumerate(shorts)))
            long_reply = await long
            alone = [await client.post(url + "/completions", json=b) for b in shorts]
        return finished, long_reply, replies, alone

    with serving(make_app(local, batch_window_ms=0)) as (url, _):
        finished, long_reply, replies, alone = asyncio.run(race(url))
    # Both short requests were answered while the long one was still generating.
    assert finished["short0"] < finished["long"] and finished["short1"] < finished["long"]
    # ... with what they get alone, and the long one with what the local backend writes.
    assert [r.json()["choices"] for r in replies] == [r.json()["choices"] for r in alone]
    texts = [c["text"] for c in long_reply.json()["choices"]]
    assert texts == local.generate(long_prompts, np.full(32, 10), 256)
    assert long_reply.json()["usage"]["completion_tokens"] > 1000


def test_the_engine_answers_new_jobs_between_the_steps_of_a_generation(local):
    # budget_s=0: each round advances running generations by one token, so
    # what a round returns is fixed, not a matter of timing.
    # 40 tokens outlast the 1- and 2-token jobs by many rounds (200 cost ~15 s on 2 cores).
    long = _Job("The agent read the post", False, 0, 40, 1.0, 10)  # generated, then scored
    engine = CompletionEngine(local)
    assert engine.step([long], budget_s=0) == []
    assert engine.busy and engine.generating() == 1
    score = _Job("You saw", True, 1, 1, 1.0, 3)
    one = _Job("You saw", False, None, 1, 1.0, 3)
    two = _Job("A post", False, None, 2, 0.0, 4)
    done = engine.step([score, one, two], budget_s=0)
    assert {id(job) for job, _ in done} == {id(score), id(one)}
    later = engine.step([], budget_s=0)
    assert [id(job) for job, _ in later] == [id(two)]
    results = {id(job): result for job, result in done + later}
    while engine.busy:
        results.update((id(job), result) for job, result in engine.step([], budget_s=0))
    # Sliced or not, every job gets what it gets alone.
    for job in (long, score, one, two):
        assert results[id(job)] == CompletionEngine(local).run([job])[0]
    assert results[id(long)].completion_tokens == 40
    assert results[id(long)].text == local.generate([long.prompt], np.array([10]), 40)[0]


def test_generations_past_the_memory_budget_wait_their_turn(local):
    engine = CompletionEngine(local)
    engine.kv_budget = 1  # room for one batch at a time
    first = _Job("You saw", False, None, 30, 1.0, 1)
    second = _Job("A post", False, None, 5, 1.0, 2)
    engine.step([first], budget_s=0)
    engine.step([second], budget_s=0)
    assert engine.generating() == 1 and engine.waiting() == 1
    results = {}
    while engine.busy:
        results.update((id(job), result) for job, result in engine.step([], budget_s=0))
    assert results[id(second)].text == local.generate(["A post"], np.array([2]), 5)[0]
    assert results[id(first)].text == local.generate(["You saw"], np.array([1]), 30)[0]


# -- slow and idle connections ---------------------------------------------------------------


def _closed_after(port: int, send, cap: float) -> tuple[float | None, bytes]:
    """Seconds until the server closed a connection that ``send(sock, k)`` feeds every 0.1 s."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(0.1)
    start, data, k = time.perf_counter(), b"", 0
    try:
        while time.perf_counter() - start < cap:
            try:
                send(sock, k)
                k += 1
                got = sock.recv(4096)
                if not got:
                    return time.perf_counter() - start, data
                data += got
            except TimeoutError:
                pass
            except OSError:  # reset or broken pipe: closed too
                return time.perf_counter() - start, data
        return None, data
    finally:
        sock.close()


def test_idle_and_trickling_connections_are_closed(local):
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n")

    def idle(sock, k):
        pass

    def header_trickle(sock, k):  # a byte each 0.1 s: never a complete request line
        if k < len(head) - 4:
            sock.send(head[k:k + 1])

    def body_trickle(sock, k):
        sock.send(head if k == 0 else b" ")

    limits = ServeLimits(idle_timeout_s=0.3, read_timeout_s=1.0)
    closed: dict[str, tuple[float | None, bytes]] = {}
    with serving(make_app(local, batch_window_ms=0, limits=limits)) as (url, port):
        attacks = {"idle": idle, "headers": header_trickle, "body": body_trickle}
        threads = [threading.Thread(target=lambda n=n, f=f: closed.update(
            {n: _closed_after(port, f, cap=15)})) for n, f in attacks.items()]
        for t in threads:
            t.start()
        # Meanwhile a well-behaved client keeps its connection between requests
        # shorter than the idle timeout, and a slow model round does not count
        # as idle time.
        with httpx.Client(timeout=120) as client:
            for _ in range(3):
                r = client.post(url + "/completions", json={"prompt": "You saw", "max_tokens": 2,
                                                            "seed": 1})
                assert r.status_code == 200
                time.sleep(0.1)
            start = time.perf_counter()
            r = client.post(url + "/completions", json={
                "prompt": [f"Agent {i}" for i in range(32)], "max_tokens": 256, "seed": 10})
            assert r.status_code == 200 and time.perf_counter() - start > 0.3
        for t in threads:
            t.join(30)
    for name in attacks:
        seconds, _ = closed[name]
        assert seconds is not None, f"{name}: the connection was still open after 15 s"
        assert seconds >= 0.25, name
    assert closed["body"][1].startswith(b"HTTP/1.1 408")
    assert b"--read-timeout" in closed["body"][1]


# -- API key ----------------------------------------------------------------------------------


def test_an_api_key_is_required_when_set(local, tiny_model, monkeypatch):
    app = make_app(local, batch_window_ms=0, api_key="sk-serve-test")
    wrong = [{}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": "Bearer sk-serve-tes"},
             {"Authorization": "Basic sk-serve-test"}, {"Authorization": "sk-serve-test"}]
    with serving(app) as (url, _):
        root = url.removesuffix("/v1")
        for headers in wrong:
            for method, path in [("POST", url + "/completions"), ("GET", url + "/models"),
                                 ("GET", root + "/health")]:
                r = httpx.request(method, path, headers=headers, json={"prompt": "a"})
                assert r.status_code == 401, (headers, path)
                assert r.json()["error"]["code"] == "invalid_api_key"
                assert "Authorization: Bearer KEY" in r.json()["error"]["message"]
        good = {"Authorization": "Bearer sk-serve-test"}
        assert post(url, {"prompt": "a", "max_tokens": 1}, headers=good).status_code == 200
        assert httpx.get(root + "/health", headers=good).status_code == 200
        # The openai backend sends the key from its api_key_env.
        monkeypatch.setenv(KEY_ENV, "sk-serve-test")
        name = os.path.basename(tiny_model)
        client = OpenAIBackend(url, name, api_key_env=KEY_ENV)
        np.testing.assert_allclose(client.score(["You saw"], [" share"]),
                                   local.score(["You saw"], [" share"]), atol=1e-9, rtol=0)
        client.close()
        keyless = OpenAIBackend(url, name, api_key_env=None)
        with pytest.raises(BackendError, match="HTTP 401"):
            keyless.score(["You saw"], [" share"])
        keyless.close()


def test_the_key_variable_is_checked_before_the_model_loads(tmp_path, monkeypatch):
    missing = str(tmp_path / "no-model")  # errors about the key come first
    with pytest.raises(SystemExit, match=r"NAME of an environment variable matching") as info:
        main([missing, "--api-key-env", "sk-live-abc123"])
    assert "sk-live-abc123" not in str(info.value)  # a key passed by mistake is not echoed
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(SystemExit, match=f"the variable {KEY_ENV} is unset or empty"):
        main([missing, "--api-key-env", KEY_ENV])
    monkeypatch.setenv(KEY_ENV, "  ")
    with pytest.raises(SystemExit, match="unset or empty"):
        main([missing, "--api-key-env", KEY_ENV])
    monkeypatch.setenv(KEY_ENV, "sk-serve-test")
    with pytest.raises(SystemExit, match="does not exist"):  # the key is fine: on to the model
        main([missing, "--api-key-env", KEY_ENV])


@pytest.mark.parametrize("host, with_key, warning", [
    ("0.0.0.0", False, "without an API key: anyone who can reach port 8000 can use the model"),
    ("10.1.2.3", False, "anyone who can reach"),
    ("gpu-box.example", False, "anyone who can reach"),
    ("0.0.0.0", True, "over plain HTTP: the API key would cross the network in clear"),
    ("127.0.0.1", False, None),
    ("localhost", False, None),
    ("::1", False, None),
])
def test_listening_beyond_loopback_warns(tmp_path, monkeypatch, capsys, host, with_key, warning):
    monkeypatch.setenv(KEY_ENV, "sk-serve-test")
    key = ["--api-key-env", KEY_ENV] if with_key else []
    with pytest.raises(SystemExit, match="does not exist"):
        main([str(tmp_path / "no-model"), "--host", host, *key])
    err = capsys.readouterr().err
    if warning is None:
        assert err == ""
    else:
        assert warning in err


def test_the_cli_command_takes_the_same_options(tmp_path, monkeypatch):
    from swarm.cli import app

    runner = CliRunner()
    missing = str(tmp_path / "no-model")
    result = runner.invoke(app, ["serve-policy", missing, "--api-key-env", "my_key"])
    assert result.exit_code == 2 and "_API_KEY" in result.output
    result = runner.invoke(app, ["serve-policy", missing, "--max-prompts", "0"])
    assert result.exit_code == 2 and "(--max-prompts) must be an integer >= 1" in result.output
    result = runner.invoke(app, ["serve-policy", missing, "--host", "0.0.0.0",
                                 "--max-new-tokens", "64", "--read-timeout", "5"])
    assert result.exit_code == 2 and "anyone who can reach" in result.output
    assert "does not exist" in result.output
