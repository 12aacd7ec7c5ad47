"""The local transformers backend: the scoring rule, batch invariance, seeded sampling, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from swarm.policies.backends.base import BackendError
from swarm.policies.backends.transformers_backend import TransformersBackend
from swarm.policies.testing import make_tiny_model

ACTIONS = [" share", " ignore", " like", " reply to the post"]
PROMPTS = [
    "You saw a post about the weather. Action:",
    "Hi",
    "The agent reads the post from a neighbor and decides whether to share it or ignore it."
    " Three friends shared it already. Action:",
    "Observation: a stranger posted an advertisement",
    "People share news, jokes, pictures and opinions",
    "A",
]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # Tiny models gain nothing from a second thread, and when another process
    # holds the cores, OpenMP spin-waiting makes this file 5-10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return {arch: make_tiny_model(tmp_path_factory.mktemp(arch), arch=arch, seed=3)
            for arch in ("gpt2", "llama")}


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def backend(request, model_dirs):
    b = TransformersBackend(model_dirs[request.param], device="cpu")
    yield b
    b.close()


def hand_score(b: TransformersBackend, prompt: str, continuation: str) -> float:
    """The scoring rule computed the slow way: one unpadded forward, full logits."""
    enc = b.tokenizer(prompt + continuation, return_offsets_mapping=True,
                      return_special_tokens_mask=True)
    ids = enc["input_ids"]
    with torch.no_grad():
        logits = b.model(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    total = 0.0
    for t, ((start, _), special) in enumerate(zip(enc["offset_mapping"],
                                                   enc["special_tokens_mask"], strict=True)):
        if start >= len(prompt) and not special:
            total += float(logp[t - 1, ids[t]])
    return total


def test_score_shape_dtype_and_hand_computation(backend):
    scores = backend.score(PROMPTS, ACTIONS)
    assert scores.shape == (len(PROMPTS), len(ACTIONS))
    assert scores.dtype == np.float64
    assert np.all(np.isfinite(scores)) and np.all(scores < 0)
    for i in (0, 2):
        for j, action in enumerate(ACTIONS):
            assert scores[i, j] == pytest.approx(hand_score(backend, PROMPTS[i], action),
                                                 abs=1e-9)
    # A four-token continuation costs more than a one-token one under a near-uniform model.
    assert np.all(scores[:, 3] < scores[:, 0])


def test_llama_tokenizer_adds_bos_and_it_is_not_scored(model_dirs):
    b = TransformersBackend(model_dirs["llama"], device="cpu")
    ids = b.tokenizer("Hi")["input_ids"]
    assert ids[0] == b.tokenizer.bos_token_id
    # With a BOS, an empty prompt still gives the first token a context.
    assert np.isfinite(b.score([""], [" share"])[0, 0])


def test_score_is_batch_invariant(model_dirs):
    b64 = TransformersBackend(model_dirs["gpt2"], device="cpu", batch_size=64)
    b1 = TransformersBackend(model_dirs["gpt2"], device="cpu", batch_size=1)
    alone = b64.score(PROMPTS[:1], ACTIONS)
    # Many companions of different lengths: the target row is padded differently.
    others = [f"{p} and then {k} more words" * (1 + k % 4) for k, p in enumerate(PROMPTS * 5)]
    crowd = b64.score(others[:13] + PROMPTS[:1] + others[13:], ACTIONS)
    np.testing.assert_allclose(crowd[13], alone[0], rtol=0, atol=1e-12)
    one_by_one = b1.score(others, ACTIONS)
    np.testing.assert_allclose(one_by_one, np.delete(crowd, 13, axis=0), rtol=0, atol=1e-12)


def test_float32_is_close_to_float64(model_dirs):
    b32 = TransformersBackend(model_dirs["gpt2"], device="cpu", dtype="float32")
    b64 = TransformersBackend(model_dirs["gpt2"], device="cpu", dtype="float64")
    assert b32.dtype == torch.float32 and b64.dtype == torch.float64
    s32 = b32.score(PROMPTS, ACTIONS)
    assert s32.dtype == np.float64
    np.testing.assert_allclose(s32, b64.score(PROMPTS, ACTIONS), rtol=0, atol=1e-4)
    assert b32.health()["dtype"] == "float32"


def test_generate_is_seeded_and_batch_independent(backend):
    seeds = np.arange(len(PROMPTS), dtype=np.int64) + 100
    first = backend.generate(PROMPTS, seeds, max_new_tokens=6)
    assert first == backend.generate(PROMPTS, seeds, max_new_tokens=6)
    other = backend.generate(PROMPTS, seeds + 1000, max_new_tokens=6)
    assert sum(a != b for a, b in zip(first, other, strict=True)) >= len(PROMPTS) - 1
    for i in (0, 2, 5):
        assert backend.generate([PROMPTS[i]], seeds[i:i + 1], max_new_tokens=6) == [first[i]]
    # Reversed order and a different batch size: each row still gets its own text.
    small = TransformersBackend(backend.path, device="cpu", batch_size=2)
    assert small.generate(PROMPTS[::-1], seeds[::-1], max_new_tokens=6) == first[::-1]


def test_greedy_equals_hand_argmax_and_respects_max_new_tokens(backend):
    tok = backend.tokenizer
    for prompt in PROMPTS[:3]:
        ids = tok(prompt)["input_ids"]
        with torch.no_grad():
            for _ in range(5):
                nxt = int(backend.model(torch.tensor([ids])).logits[0, -1].argmax())
                if nxt in backend.eos_ids:
                    break
                ids.append(nxt)
        expected = tok.decode(ids[len(tok(prompt)["input_ids"]):], skip_special_tokens=True)
        got = backend.generate([prompt, "Hi"], np.array([0, 1]), max_new_tokens=5,
                               temperature=0.0)[0]
        assert got == expected
    seeds = np.arange(len(PROMPTS))
    ids = backend.generate_ids(PROMPTS, seeds, max_new_tokens=3)
    assert [len(row) for row in ids] == [3] * len(PROMPTS)  # EOS is 1 of ~500 ids
    assert backend.generate(PROMPTS, seeds, max_new_tokens=3) == [
        tok.decode(row, skip_special_tokens=True) for row in ids]
    longer = backend.generate_ids(PROMPTS, seeds, max_new_tokens=7)
    assert [row[:3] for row in longer] == ids
    assert backend.generate(PROMPTS[:2], np.array([1, 2]), max_new_tokens=0) == ["", ""]


def test_health_and_close(model_dirs):
    b = TransformersBackend(model_dirs["gpt2"], device="cpu")
    health = b.health()
    assert health["backend"] == "transformers" and health["device"] == "cpu"
    assert health["dtype"] == "float64" and health["parameters"] > 10_000
    b.close()
    b.close()
    assert b.health()["ok"] is False
    with pytest.raises(BackendError, match="closed"):
        b.score(["Hi"], [" share"])


def test_errors_say_what_to_do(tmp_path, model_dirs):
    with pytest.raises(BackendError, match="does not exist.*local checkpoint directory"):
        TransformersBackend(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackendError, match="no config.json.*checkpoint directory itself"):
        TransformersBackend(str(tmp_path / "empty"))
    with pytest.raises(BackendError, match="dtype must be auto.*'float8'"):
        TransformersBackend(model_dirs["gpt2"], dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="not available.*use device: auto or cpu"):
            TransformersBackend(model_dirs["gpt2"], device="cuda")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(BackendError, match="no tokenizer files.*save_pretrained"):
        TransformersBackend(str(broken), device="cpu")
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(BackendError, match="could not load the tokenizer from .*broken"):
        TransformersBackend(str(broken), device="cpu")

    b = TransformersBackend(model_dirs["gpt2"], device="cpu")
    with pytest.raises(BackendError, match="'' yields no token"):
        b.score(["Hi"], [" share", ""])
    with pytest.raises(BackendError, match="prompt is empty.*no BOS"):
        b.score([""], [" share"])
    with pytest.raises(BackendError, match="one seed per prompt"):
        b.generate(["Hi", "Yo"], np.array([1]), max_new_tokens=2)
    with pytest.raises(BackendError, match="1024"):
        b.score(["word " * 1100], [" share"])


def test_make_tiny_model_is_deterministic(tmp_path):
    a = TransformersBackend(make_tiny_model(tmp_path / "a", seed=7), device="cpu")
    b = TransformersBackend(make_tiny_model(tmp_path / "b", seed=7), device="cpu")
    c = TransformersBackend(make_tiny_model(tmp_path / "c", seed=8), device="cpu")
    sa, sb, sc = (x.score(PROMPTS[:2], ACTIONS) for x in (a, b, c))
    np.testing.assert_array_equal(sa, sb)
    assert not np.allclose(sa, sc)
    big = TransformersBackend(make_tiny_model(tmp_path / "d", n_layer=1, hidden=32, n_head=2,
                                              vocab_words=1000), device="cpu")
    assert big.model.config.vocab_size == 1000
    assert big.score(["Hi"], [" share"]).shape == (1, 1)
    with pytest.raises(ValueError, match="arch must be"):
        make_tiny_model(tmp_path / "e", arch="bert")



# -- prefix sharing: each prompt runs once, its continuations reuse its KV cache ------------

# Continuations of 1, 2 and 3 tokens under the tiny tokenizer (checked below).
SHARE_ACTIONS = [" share", " ignore", " like", " reply to", " ignore it", " reply to it",
                 " the post"]


def many_prompts(n: int) -> list[str]:
    words = "the agent reads a post from a friend and decides what to do next".split()
    rng = np.random.default_rng(5)
    return [" ".join(rng.choice(words, size=int(rng.integers(1, 40)))).capitalize() + ". Action:"
            for _ in range(n)]


def record_forwards(b: TransformersBackend, monkeypatch) -> list[tuple[int, ...]]:
    """The input_ids shape of every model forward ``b`` makes from now on."""
    shapes: list[tuple[int, ...]] = []
    forward = b.model.forward

    def spy(*args, **kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape if "input_ids" in kwargs else args[0].shape))
        return forward(*args, **kwargs)

    monkeypatch.setattr(b.model, "forward", spy)
    return shapes


def full_rows(b: TransformersBackend, prompts: list[str], actions: list[str]) -> np.ndarray:
    """``b.score`` with every row run whole (the path without prefix sharing)."""
    b._share_prefixes = False
    try:
        return b.score(prompts, actions)
    finally:
        del b._share_prefixes


def test_shared_prefix_equals_full_rows(backend):
    assert backend._can_share
    base = len(backend.tokenizer("Action:")["input_ids"])
    sizes = {len(backend.tokenizer("Action:" + a)["input_ids"]) - base for a in SHARE_ACTIONS}
    assert sizes == {1, 2, 3}
    prompts = many_prompts(40) + PROMPTS
    rng = np.random.default_rng(11)
    # One backend per batch size, loaded once (a backend keeps no results between calls).
    smalls = [TransformersBackend(backend.path, device="cpu", batch_size=batch_size)
              for batch_size in (64, 7, 1)]
    for k in range(6):
        actions = [str(a) for a in rng.choice(SHARE_ACTIONS, size=2 + k % 3, replace=False)]
        expected = full_rows(backend, prompts, actions)
        for small in smalls:
            np.testing.assert_allclose(small.score(prompts, actions), expected, rtol=0,
                                       atol=1e-12)
    for small in smalls:
        small.close()
    for j, action in enumerate(actions):
        assert expected[-1, j] == pytest.approx(hand_score(backend, prompts[-1], action),
                                                abs=1e-9)


def test_each_prompt_runs_once(backend, monkeypatch):
    shapes = record_forwards(backend, monkeypatch)
    prompts = PROMPTS[:3]
    width = max(len(backend.tokenizer(p)["input_ids"]) for p in prompts)
    backend.score(prompts, [" share", " ignore", " like"])
    # One-token continuations: one pass over the prompts and nothing else.
    assert shapes == [(3, width)]
    shapes.clear()
    backend.score(prompts, [" share", " reply to", " reply to it"])
    # Then one pass over the tails (" reply", " reply to") of the two longer continuations.
    assert shapes == [(3, width), (6, 2)]


def test_continuation_merging_with_the_prompt_falls_back_to_full_rows(backend, monkeypatch):
    prompt, actions = "Observation: you sha", ["re it", " ignore"]
    tok = backend.tokenizer
    # "sha" + "re" becomes " share", so the rows differ before their scored token.
    assert tok.tokenize(prompt + actions[0])[-2:] == ["Ġshare", "Ġit"]
    assert tok.tokenize(prompt + actions[1])[-3:] == ["Ġs", "ha", "Ġignore"]
    shapes = record_forwards(backend, monkeypatch)
    alone = backend.score([prompt], actions)
    assert [n for n, _ in shapes] == [2]  # both rows whole, in one pass
    for j, action in enumerate(actions):
        assert alone[0, j] == pytest.approx(hand_score(backend, prompt, action), abs=1e-9)
    # Among prompts that share their prefix, it keeps its scores and its place.
    mixed = PROMPTS[:2] + [prompt] + PROMPTS[2:]
    scores = backend.score(mixed, actions)
    np.testing.assert_allclose(scores[2], alone[0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(scores, full_rows(backend, mixed, actions), rtol=0, atol=1e-12)


@pytest.mark.parametrize("window", [6, 4096])
def test_sliding_window_shares_only_prompts_that_fit(tmp_path, model_dirs, monkeypatch, window):
    # A sliding window counts cache slots, padding included: prefix sharing is
    # exact only while the window reaches back over the whole padded prefix.
    from transformers import MistralConfig, MistralForCausalLM

    src = Path(model_dirs["llama"])
    vocab = json.loads((src / "config.json").read_text())["vocab_size"]
    config = MistralConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                           num_key_value_heads=4, intermediate_size=128, sliding_window=window,
                           vocab_size=vocab)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        MistralForCausalLM(config).save_pretrained(tmp_path)
    for name in src.iterdir():
        if name.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(name, tmp_path / name.name)
    b = TransformersBackend(str(tmp_path), device="cpu")
    assert b._can_share and b._share_window == window
    shapes = record_forwards(b, monkeypatch)
    scores = b.score(PROMPTS[:3], ACTIONS)
    # Window 6 is shorter than the prompts: 12 whole rows. 4096: 3 prefixes, then 3 tails.
    assert [n for n, _ in shapes] == ([12] if window == 6 else [3, 3])
    np.testing.assert_allclose(scores, full_rows(b, PROMPTS[:3], ACTIONS), rtol=0, atol=1e-12)
    for i in range(3):
        for j, action in enumerate(ACTIONS):
            assert scores[i, j] == pytest.approx(hand_score(b, PROMPTS[i], action), abs=1e-9)


# -- token-level methods (what swarm serve-policy builds on) ---------------------------------


def test_token_logprobs_sum_to_score(backend):
    texts = [p + a for p in PROMPTS for a in ACTIONS]
    encoded = backend.tokenize(texts)
    assert [ids for ids, _ in encoded] == backend.tokenizer(texts)["input_ids"]
    rows = backend.token_logprobs([ids for ids, _ in encoded])
    expected = backend.score(PROMPTS, ACTIONS)
    for k, ((ids, spans), row) in enumerate(zip(encoded, rows, strict=True)):
        assert row.next_token is None and row.logprobs.shape == (len(ids),)
        assert np.isnan(row.logprobs[0]) and np.all(row.logprobs[1:] < 0)
        cut = len(PROMPTS[k // len(ACTIONS)])
        scored = [t for t, (start, _) in enumerate(spans) if start >= cut and t > 0]
        assert row.logprobs[scored].sum() == pytest.approx(
            expected[k // len(ACTIONS), k % len(ACTIONS)], abs=1e-12)
    # Rows are independent of their companions and of the batch size.
    alone = [backend.token_logprobs([ids])[0].logprobs for ids, _ in encoded[:3]]
    small = TransformersBackend(backend.path, device="cpu", batch_size=2)
    for got in (rows[:3], small.token_logprobs([ids for ids, _ in encoded])[:3]):
        for a, b in zip(alone, got, strict=True):
            np.testing.assert_allclose(b.logprobs, a, rtol=0, atol=1e-12)


def test_token_logprobs_draw_generates_first_token(backend):
    prompts = PROMPTS[:4]
    rows = [ids for ids, _ in backend.tokenize(prompts)]
    for seed, temperature in [(3, 1.0), (11, 0.7), (0, 0.0)]:
        seeds = [seed + k for k in range(len(prompts))]
        # Row 1 draws nothing: its logprobs stay one per token.
        drawn = backend.token_logprobs(rows, [s if k != 1 else None for k, s in enumerate(seeds)],
                                       temperature)
        assert drawn[1].next_token is None and len(drawn[1].logprobs) == len(rows[1])
        first = backend.generate_ids(prompts, np.array(seeds), 1, temperature)
        for k in (0, 2, 3):
            token = drawn[k].next_token
            assert first[k] == ([] if token in backend.eos_ids else [token])
            # Its log-probability is the one scoring the row with that token gives.
            scored = backend.token_logprobs([rows[k] + [token]])[0].logprobs
            np.testing.assert_allclose(drawn[k].logprobs, scored, rtol=0, atol=1e-12)


def test_a_generation_batch_steps_to_what_generate_ids_writes(backend):
    prompts, seeds = PROMPTS[:3], np.array([5, 6, 7])
    expected = backend.generate_ids(prompts, seeds, 6)
    rows = [ids for ids, _ in backend.tokenize(prompts)]
    long = backend.start_generation(rows, seeds, 6)
    short = backend.start_generation(rows[:1], seeds[:1], 2)
    ended: list[int] = []
    while not long.finished:
        ended += long.step()
        if not short.finished:  # interleaved with another batch
            assert short.step() in ([], [0])
    assert sorted(ended) == [0, 1, 2] and long.generated == expected
    assert short.generated == [expected[0][:2]]
    assert backend.decode(long.generated) == backend.generate(prompts, seeds, 6)
    with pytest.raises(BackendError, match="finished"):
        long.step()
    with pytest.raises(BackendError, match="max_new_tokens must be an int >= 1"):
        backend.start_generation(rows, seeds, 0)
    with pytest.raises(BackendError, match="one seed per row"):
        backend.start_generation(rows, seeds[:1], 2)


def test_tokenize_isolates_a_text_it_cannot_encode(backend):
    texts = ["Hi", "bad \ud800", "A post"]
    with pytest.raises(BackendError, match="cannot encode"):
        backend.tokenize(texts)
    got = backend.tokenize(texts, return_exceptions=True)
    assert isinstance(got[1], BackendError) and "cannot encode" in str(got[1])
    assert [got[0], got[2]] == backend.tokenize([texts[0], texts[2]])
    with pytest.raises(BackendError, match="row 0 of token_logprobs is empty"):
        backend.token_logprobs([[]])
