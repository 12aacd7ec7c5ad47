"""The openai backend against `swarm serve-policy` (a real subprocess) and against fake servers.

Equality with the local transformers backend is the point: the same model
served over HTTP must give the same scores (float64, to 1e-9) and the same
sampled text for the same seeds, so a run chooses the same actions either way.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager

import httpx
import numpy as np
import pytest
from aiohttp import web

from swarm.policies.backends.base import BackendError
from swarm.policies.backends.openai_backend import OpenAIBackend
from swarm.policies.backends.transformers_backend import TransformersBackend
from swarm.policies.http_server import CompletionEngine, _Job, make_app
from swarm.policies.testing import make_tiny_model

PROMPTS = [
    "The agent read the post",
    "You saw a post about the weather. Action:",
    "Three of your friends shared a post about the election",
    "A stranger posted an advertisement",
    "Überraschung: ein Beitrag über das Wetter",  # non-ASCII: offsets are characters
    "The agent read the post",  # a duplicate is scored once and answered twice
    "x",
]
ACTIONS = [" share", " ignore", " like it", " reply"]


@contextmanager
def thread_server(app: web.Application):
    """Serve an aiohttp app on 127.0.0.1 from a thread; yields its /v1 base URL."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def fake_server(handler, calls: list | None = None) -> web.Application:
    """An app whose /v1 routes answer with ``handler(request, n)`` (n: 1 for the first call).

    ``calls`` (if given) gets one entry per request, so a test can count them.
    """
    app = web.Application()
    calls = [] if calls is None else calls

    async def route(request: web.Request) -> web.StreamResponse:
        calls.append(request.path)
        return await handler(request, len(calls))

    app.router.add_route("*", "/v1/completions", route)
    app.router.add_route("*", "/v1/models", route)
    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="module")
def local(gpt2_dir):
    backend = TransformersBackend(gpt2_dir, device="cpu")
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def server(gpt2_dir, tmp_path_factory):
    """`python -m swarm.policies.http_server DIR --port 0` as a subprocess; yields its base URL."""
    err_path = tmp_path_factory.mktemp("serve") / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "swarm.policies.http_server", gpt2_dir, "--port", "0",
             "--device", "cpu", "--batch-window-ms", "5"],
            stdout=subprocess.PIPE, stderr=err, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(60)
    line = lines[0] if lines else ""
    if not line.startswith("serving "):
        proc.kill()
        proc.wait(10)
        pytest.fail(f"swarm serve-policy did not start (exit {proc.returncode}); stdout "
                    f"{line!r}; stderr:\n{err_path.read_text()[-3000:]}")
    url = line.split(" on ")[1].strip()
    yield url
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def client(server, gpt2_dir):
    backend = OpenAIBackend(server, os.path.basename(gpt2_dir), api_key_env=None,
                            batch_size=8, max_concurrency=8)
    yield backend
    backend.close()


# -- against swarm serve-policy ------------------------------------------------------------------


def test_ready_line_models_and_check(server, client, gpt2_dir):
    assert server.startswith("http://127.0.0.1:") and server.endswith("/v1")
    health = client.health()
    assert health["ok"] and health["models"] == [os.path.basename(gpt2_dir)]
    client.check()
    wrong = OpenAIBackend(server, "gpt-4", api_key_env=None)
    with pytest.raises(BackendError, match=r"'gpt-4' is not served .* serves \['tiny-gpt2"):
        wrong.check()
    assert not wrong.health()["ok"]
    wrong.close()


def test_scores_equal_local_backend(client, local):
    remote = client.score(PROMPTS, ACTIONS)
    assert remote.dtype == np.float64 and remote.shape == (len(PROMPTS), len(ACTIONS))
    np.testing.assert_allclose(remote, local.score(PROMPTS, ACTIONS), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(remote[0], remote[5])
    assert np.array_equal(remote.argmax(1), local.score(PROMPTS, ACTIONS).argmax(1))


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_generate_equals_local_backend(client, local, temperature):
    seeds = np.array([0, 1, 2, 3, 4, 5, 2**40, 7], dtype=np.int64)
    prompts = PROMPTS + ["The network is a graph"]
    prompts = prompts[:len(seeds)]
    remote = client.generate(prompts, seeds, 12, temperature)
    assert remote == local.generate(prompts, seeds, 12, temperature)
    assert any(remote)


def test_many_prompts_in_flight_come_back_in_order(server, client, local, gpt2_dir):
    prompts = [f"Agent {i} saw a post about {['rain', 'phones', 'votes'][i % 3]}"
               for i in range(120)]
    before = httpx.get(server.removesuffix("/v1") + "/health").json()
    remote = client.score(prompts, [" share", " ignore"])  # 30 requests, 8 in flight
    np.testing.assert_allclose(remote, local.score(prompts, [" share", " ignore"]), atol=1e-9,
                               rtol=0)
    after = httpx.get(server.removesuffix("/v1") + "/health").json()
    assert after["prompts"] - before["prompts"] == 240
    # Concurrent requests were merged into fewer model rounds than requests.
    assert after["rounds"] - before["rounds"] < 30
    seeds = np.arange(40)
    assert client.generate(prompts[:40], seeds, 4) == local.generate(prompts[:40], seeds, 4)


def test_works_from_threads_and_inside_a_running_loop(client, local):
    expected = local.score(PROMPTS[:2], ACTIONS)
    out = {}

    def work(k):
        out[k] = client.score(PROMPTS[:2], ACTIONS)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for k in range(3):
        np.testing.assert_allclose(out[k], expected, atol=1e-9, rtol=0)

    async def inside():
        return client.score(PROMPTS[:2], ACTIONS)

    np.testing.assert_allclose(asyncio.run(inside()), expected, atol=1e-9, rtol=0)
    # Pickled (as Ray ships it to a shard): configuration only, reconnects on use.
    clone = pickle.loads(pickle.dumps(client))
    np.testing.assert_allclose(clone.score(PROMPTS[:2], ACTIONS), expected, atol=1e-9, rtol=0)
    clone.close()
    clone.close()


def test_server_answers_bad_requests_with_400(server, client):
    bad = [({"max_tokens": 1}, "prompt is required"),
           ({"prompt": [1, 2]}, "prompt is required"),
           ({"prompt": "a", "max_tokens": -1}, "max_tokens must be"),
           ({"prompt": "a", "temperature": "hot"}, "temperature must be"),
           ({"prompt": "a", "n": 2}, "n=2 is not supported"),
           ({"prompt": "a", "stream": True}, "stream=True is not supported"),
           ({"prompt": "a", "model": "other"}, "'other' is not served")]
    for body, message in bad:
        r = httpx.post(server + "/completions", json=body)
        assert r.status_code == 400, body
        assert message in r.json()["error"]["message"], r.json()
    r = httpx.post(server + "/completions", content=b"not json",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    wrong = OpenAIBackend(server, "other", api_key_env=None, retries=3)
    with pytest.raises(BackendError, match=r"HTTP 400: model 'other' is not served"):
        wrong.generate(["a"], np.array([0]), 2)
    wrong.close()
    # A server-side limit (the tiny model has 1024 positions) is a 400 for that prompt only.
    with pytest.raises(BackendError, match="has 1024 positions"):
        client.generate(["word " * 1100], np.array([0]), 2)


def test_echo_with_one_new_token_draws_what_generate_draws(server, local):
    # The score path takes its new token from the echo's own forward pass; it
    # must be generate()'s first token for the same seed and temperature.
    prompts = ["The agent read the post", "A stranger posted", "You saw"]
    for seed, temperature in [(3, 1.0), (11, 0.7), (0, 0.0)]:
        r = httpx.post(server + "/completions", json={
            "prompt": prompts, "echo": True, "logprobs": 1, "max_tokens": 1,
            "temperature": temperature, "seed": seed}).json()
        expected = local.generate(prompts, np.full(3, seed), 1, temperature)
        assert [c["text"] for c in r["choices"]] == [
            p + e for p, e in zip(prompts, expected, strict=True)]


def test_engine_round_mixing_every_kind_of_job(local):
    # One model round holding scoring, plain generation, echo without logprobs
    # and a failing job: each gets its own answer and the failure stays its own.
    jobs = [_Job("The agent", True, 1, 1, 1.0, 7), _Job("", False, 0, 1, 1.0, 3),
            _Job("The agent", False, 2, 3, 1.0, 5), _Job("A post", True, None, 3, 0.0, 5),
            _Job("x", True, 0, 0, 1.0, 0), _Job("A post", True, 0, 1, 0.7, 9)]
    results = CompletionEngine(local).run(jobs)
    assert isinstance(results[1], BackendError) and "empty" in str(results[1])
    for k in (0, 5):
        first = local.generate_ids([jobs[k].prompt], np.array([jobs[k].seed]), 1,
                                   jobs[k].temperature)[0]
        assert results[k].completion_tokens == 1 and len(first) <= 1
        if first:
            assert results[k].text == jobs[k].prompt + local.tokenizer.decode(first)
    assert results[2].text == local.generate(["The agent"], np.array([5]), 3)[0]
    assert len(results[2].logprobs["token_logprobs"]) == results[2].completion_tokens
    assert results[3].logprobs is None and results[3].text.startswith("A post")
    assert results[4].logprobs["token_logprobs"] == [None] and results[4].text == "x"


# -- against fake servers --------------------------------------------------------------------------


def test_unreachable_endpoint_names_url_and_fix():
    url = f"http://127.0.0.1:{free_port()}/v1"
    backend = OpenAIBackend(url, "m", api_key_env=None, retries=2, backoff=0.01)
    with pytest.raises(BackendError) as info:
        backend.score(["a"], [" b"])
    message = str(info.value)
    assert f"cannot reach {url} after 2 tries: connection refused" in message
    assert "swarm serve-policy MODEL_DIR" in message
    with pytest.raises(BackendError, match="cannot reach"):
        backend.check()
    assert backend.health()["ok"] is False
    backend.close()


def test_non_json_reply_shows_the_start_of_the_body():
    async def html(request, count):
        return web.Response(text="<html><body>Welcome to nginx!</body></html>",
                            content_type="text/html")

    with thread_server(fake_server(html)) as url:
        backend = OpenAIBackend(url, "m", api_key_env=None)
        with pytest.raises(BackendError, match=r"did not answer JSON.*Welcome to nginx.*/v1"):
            backend.generate(["a"], np.array([1]), 3)
        backend.close()


def test_5xx_and_429_are_retried_then_succeed(monkeypatch):
    seen_auth = []

    async def flaky(request, count):
        seen_auth.append(request.headers.get("Authorization"))
        if count == 1:
            return web.json_response({"error": {"message": "slow down"}}, status=429,
                                     headers={"Retry-After": "0"})
        if count == 2:
            return web.Response(status=500, text="boom")
        return web.json_response({"choices": [{"index": 0, "text": "ok"}]})

    monkeypatch.setenv("SWARM_TEST_API_KEY", "sk-test")
    with thread_server(fake_server(flaky)) as url:
        backend = OpenAIBackend(url, "m", api_key_env="SWARM_TEST_API_KEY", retries=3,
                                backoff=0.01)
        assert backend.generate(["a"], np.array([1]), 3) == ["ok"]
        backend.close()
    assert seen_auth == ["Bearer sk-test"] * 3

    async def down(request, count):
        return web.Response(status=503, text="overloaded")

    with thread_server(fake_server(down)) as url:
        backend = OpenAIBackend(url, "m", api_key_env=None, retries=2, backoff=0.01)
        with pytest.raises(BackendError, match=r"failed after 2 tries: HTTP 503: 'overloaded'"):
            backend.generate(["a"], np.array([1]), 3)
        backend.close()


def test_4xx_is_not_retried_and_shows_the_server_message():
    async def refuse(request, count):
        return web.json_response({"error": {"message": "Incorrect API key provided"}},
                                 status=401)

    calls: list[str] = []
    with thread_server(fake_server(refuse, calls)) as url:
        backend = OpenAIBackend(url, "m", api_key_env=None, retries=3, backoff=0.01)
        with pytest.raises(BackendError, match=r"HTTP 401: Incorrect API key provided"):
            backend.score(["a"], [" b"])
        backend.close()
    assert calls == ["/v1/completions"]


def test_replies_without_echo_logprobs_or_with_wrong_choices_are_errors():
    async def no_logprobs(request, count):
        body = await request.json()
        return web.json_response({"choices": [{"index": i, "text": p}
                                              for i, p in enumerate(body["prompt"])]})

    async def one_choice(request, count):
        return web.json_response({"choices": [{"index": 0, "text": "x", "logprobs": None}]})

    async def no_echo(request, count):
        body = await request.json()
        return web.json_response({"choices": [
            {"index": i, "text": "x", "logprobs": {"tokens": ["x"], "token_logprobs": [-1.0],
                                                   "text_offset": [len(p)]}}
            for i, p in enumerate(body["prompt"])]})

    cases = [(no_logprobs, r"without per-token logprobs.*echo\+logprobs.*transformers backend"),
             (one_choice, r"answered 1 choices for 2 prompts"),
             (no_echo, r"did not echo the prompt")]
    for handler, message in cases:
        with thread_server(fake_server(handler)) as url:
            backend = OpenAIBackend(url, "m", api_key_env=None)
            with pytest.raises(BackendError, match=message):
                backend.score(["a", "b"], [" c"])
            backend.close()


def test_offsets_over_decoded_strings_with_a_bos_are_handled():
    # vLLM counts text_offset over decoded token strings, so a "<s>" BOS shifts
    # every offset by 3; the score is anchored at the echo's end and is unaffected.
    async def vllm_like(request, count):
        body = await request.json()
        choices = []
        for i, text in enumerate(body["prompt"]):
            pieces = ["<s>", "You", " saw", " it", " share"] if text.endswith("share") else \
                ["<s>", "You", " saw", " it", " ignore"]
            offsets = np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).tolist()
            logprobs = [None, -1.0, -2.0, -3.0, -0.5 if pieces[-1] == " share" else -4.0, -9.0]
            choices.append({"index": i, "text": text + "!", "logprobs": {
                "tokens": pieces + ["!"], "token_logprobs": logprobs, "text_offset": offsets}})
        return web.json_response({"choices": choices})

    with thread_server(fake_server(vllm_like)) as url:
        backend = OpenAIBackend(url, "m", api_key_env=None)
        np.testing.assert_array_equal(backend.score(["You saw it"], [" share", " ignore"]),
                                      [[-0.5, -4.0]])
        backend.close()


def test_llama_style_bos_through_an_in_process_server(tmp_path):
    path = make_tiny_model(tmp_path / "tiny-llama", arch="llama")
    local_llama = TransformersBackend(path, device="cpu")
    with thread_server(make_app(local_llama, batch_window_ms=0)) as url:
        backend = OpenAIBackend(url, "tiny-llama", api_key_env=None, batch_size=5)
        prompts = PROMPTS + [""]  # with a BOS, an empty prompt still scores
        np.testing.assert_allclose(backend.score(prompts, ACTIONS),
                                   local_llama.score(prompts, ACTIONS), atol=1e-9, rtol=0)
        seeds = np.arange(len(PROMPTS))
        assert backend.generate(PROMPTS, seeds, 6) == local_llama.generate(PROMPTS, seeds, 6)
        backend.close()
    local_llama.close()


def test_empty_prompt_without_bos_is_an_error_like_the_local_backend(client, local):
    with pytest.raises(BackendError, match="empty"):
        local.score([""], [" share"])
    with pytest.raises(BackendError, match="empty"):
        client.score([""], [" share"])


def test_constructor_rejects_bad_settings():
    with pytest.raises(BackendError, match="base_url must be an http"):
        OpenAIBackend("127.0.0.1:8000/v1", "m")
    with pytest.raises(BackendError, match="max_concurrency must be an integer >= 1"):
        OpenAIBackend("http://h/v1", "m", max_concurrency=0)


def test_timeout_is_retried_then_reported():
    # The server holds every reply until the test releases it (or 60 s pass), so the
    # client can only raise by giving up on its own timeout: a client that waited for
    # the reply would get "late" and not raise. No wall-clock bound, so a loaded
    # machine cannot make this flake.
    release = threading.Event()

    async def held(request, count):
        for _ in range(6000):
            if release.is_set():
                break
            await asyncio.sleep(0.01)
        return web.json_response({"choices": [{"index": 0, "text": "late"}]})

    calls: list = []
    with thread_server(fake_server(held, calls)) as url:
        backend = OpenAIBackend(url, "m", api_key_env=None, timeout=0.1, retries=2, backoff=0)
        try:
            with pytest.raises(BackendError, match=r"after 2 tries: no reply within 0.1 s"):
                backend.generate(["a"], np.array([0]), 1)
            assert calls.count("/v1/completions") == 2  # one request per try, no more
        finally:
            release.set()
            backend.close()
