"""The decide stage: heuristic policies on tensors, population mixes, LLM-style agents.

LLM-style runs use a tiny random-weight model saved to a temp dir and loaded
by path (the ``tiny_model`` fixture); scores are float64 on the CPU, so the
actions cannot depend on how prompts were batched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import cascade_config, llm_config, sorted_events

import swarm
from swarm.contract import resolve_device
from swarm.envs.base import ChoiceSpec
from swarm.errors import ConfigError, PolicyError, RunInterrupted
from swarm.policies.backends.base import Backend, BackendError
from swarm.policies.base import PolicyContext, PolicyStats
from swarm.policies.cascade import EdgeTransmission
from swarm.policies.llm import LLMPolicy, LLMPolicyConfig
from swarm.rng import KeyedRNG, _srl


def policy_metrics(run) -> dict:
    m = run.metrics()
    return {c: m[c].to_pylist() for c in ("policy_decisions", "policy_calls",
                                          "policy_calls_saved", "policy_fallbacks")}


# -- heuristic rules and devices ------------------------------------------------------------


def test_keyed_draws_on_tensors_equal_numpy_bit_for_bit():
    rng = KeyedRNG(9)
    keys = np.arange(-3, 50_000, 7, dtype=np.int64)
    # The device path (int64 arithmetic) computed on CPU tensors, against numpy's uint64.
    device_bits = rng._torch_bits("s", [torch.from_numpy(keys)], 4, 1)
    assert np.array_equal(device_bits.numpy().view(np.uint64), rng.bits("s", keys, step=4, draw=1))
    u = _srl(device_bits, 11).double() * (1.0 / (1 << 53))
    assert np.array_equal(u.numpy(), rng.uniform("s", keys, step=4, draw=1))
    # CPU tensors in, tensors out, same values as numpy.
    t = rng.bernoulli("s", torch.from_numpy(keys), p=0.3, step=2)
    assert isinstance(t, torch.Tensor)
    assert np.array_equal(t.numpy(), rng.bernoulli("s", keys, p=0.3, step=2))


def test_edge_transmission_on_tensors_matches_the_keyed_rule():
    rng = KeyedRNG(3)
    edges = np.arange(10_000, dtype=np.int64)
    out = EdgeTransmission(0.2, once=False).decide({"edge": edges}, PolicyContext(7, rng))
    assert isinstance(out["transmit"], torch.Tensor)
    assert np.array_equal(out["transmit"].numpy(),
                          rng.bernoulli("transmit", edges, p=0.2, step=7))


def test_device_names_are_resolved_or_refused():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="auto, cpu, cuda"):
        resolve_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda:0")


def test_population_fractions_split_agents_by_a_keyed_draw(tmp_path):
    # Two default groups: same rule, so the cascade equals the single-group run,
    # and the decide stage runs on the grouped path.
    one = swarm.run(cascade_config(n=3000, model="linear_threshold"), tmp_path / "a",
                    backend="local")
    cfg = cascade_config(n=3000, model="linear_threshold", shards=3)
    cfg = cfg.model_copy(update={"population": swarm.config.PopulationConfig.model_validate(
        {"groups": [{"policy": {"kind": "default"}, "fraction": 0.4},
                    {"policy": {"kind": "default"}, "fraction": 0.6}]})})
    two = swarm.run(cfg, tmp_path / "b", backend="local")
    assert sorted_events(one).equals(sorted_events(two))


# -- LLM-style agents: same actions whatever the sharding, dedup or batching ----------------


@pytest.fixture(scope="module")
def llm_reference(tiny_model, tmp_path_factory):
    return swarm.run(llm_config(tiny_model), tmp_path_factory.mktemp("llm") / "ref",
                     backend="local")


def test_llm_agents_act_and_calls_are_counted(llm_reference):
    m = policy_metrics(llm_reference)
    decisions, calls = sum(m["policy_decisions"]), sum(m["policy_calls"])
    assert decisions > 100
    assert 0 < calls < decisions  # identical prompts were inferred once
    assert sum(m["policy_calls_saved"]) == decisions - calls
    assert sum(m["policy_fallbacks"]) == 0
    # LLM agents share and their shares spread: more activations than the seeds.
    assert llm_reference.events().num_rows > 2 * 20


def test_llm_actions_do_not_depend_on_shards_or_dedup(tiny_model, tmp_path, llm_reference):
    sharded = swarm.run(llm_config(tiny_model, shards=3), tmp_path / "s", backend="local")
    no_dedup = swarm.run(llm_config(tiny_model, dedup=False, batch_size=7), tmp_path / "d",
                         backend="local")
    ref = sorted_events(llm_reference)
    assert sorted_events(sharded).equals(ref)
    assert sorted_events(no_dedup).equals(ref)
    m = policy_metrics(no_dedup)
    assert m["policy_calls"] == m["policy_decisions"]  # one prompt per agent without dedup
    assert policy_metrics(sharded)["policy_decisions"] == m["policy_decisions"]


def test_llm_run_on_ray_with_a_policy_server_equals_the_local_run(
        ray_session, tiny_model, tmp_path, llm_reference):
    served = swarm.run(llm_config(tiny_model, shards=2, server=True, batch_window_ms=2),
                       tmp_path / "srv")
    assert sorted_events(served).equals(sorted_events(llm_reference))
    stats = served.manifest["policy_servers"]["1"][0]
    # Both shards' requests of a step were merged, and prompts both sent ran once.
    assert 0 < stats["backend_calls"] < stats["requests"]
    assert stats["prompts_run"] < stats["prompts_in"]


def test_llm_memory_survives_ctrl_c_and_resume(tiny_model, tmp_path, llm_reference):
    # Two shards: the driver steps one at a time. One shard runs batches of steps
    # per call, and on a fast machine the whole run fits in the first batch, so
    # a Ctrl-C seen at step 2 would find nothing left to stop.
    cfg = llm_config(tiny_model, shards=2).model_copy(
        update={"checkpoint": swarm.config.CheckpointConfig(every=2)})

    def interrupt(row):
        if row["step"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(RunInterrupted):
        swarm.run(cfg, tmp_path / "r", backend="local", on_step=interrupt)
    resumed = swarm.resume(tmp_path / "r")
    assert sorted_events(resumed).equals(sorted_events(llm_reference))


@pytest.fixture(scope="module")
def policy_endpoint(tiny_model, tmp_path_factory):
    """`swarm serve-policy` on the tiny model, as a subprocess; yields its base URL."""
    log = tmp_path_factory.mktemp("serve") / "stderr.txt"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "swarm.cli", "serve-policy", tiny_model,
                                 "--port", "0", "--device", "cpu"],
                                stdout=subprocess.PIPE, stderr=err, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(90)
    if not lines or not lines[0].startswith("serving "):
        proc.kill()
        pytest.fail(f"swarm serve-policy did not start: {lines}; {log.read_text()[-2000:]}")
    yield lines[0].split(" on ")[1].strip()
    proc.terminate()
    proc.wait(15)


def test_openai_backend_against_serve_policy_chooses_the_same_actions(
        tiny_model, policy_endpoint, tmp_path, llm_reference):
    # The openai backend names the served model (its directory's name), not a path.
    remote = llm_config(tiny_model, backend="openai", base_url=policy_endpoint,
                        model=os.path.basename(tiny_model), max_concurrency=4, batch_size=16)
    served = swarm.run(remote, tmp_path / "remote", backend="local")
    assert sorted_events(served).equals(sorted_events(llm_reference))
    assert policy_metrics(served) == policy_metrics(llm_reference)


def test_unreachable_endpoint_fails_before_the_run_or_falls_back(tiny_model, tmp_path):
    cfg = llm_config(tiny_model, backend="openai", base_url="http://127.0.0.1:9/v1",
                     retries=0, timeout=2)
    with pytest.raises(ConfigError, match="127.0.0.1:9"):
        swarm.run(cfg, tmp_path / "r", backend="local")
    assert not (tmp_path / "r").exists()
    idle = llm_config(tiny_model, backend="openai", base_url="http://127.0.0.1:9/v1",
                      retries=0, timeout=2, on_error="idle")
    run = swarm.run(idle, tmp_path / "idle", backend="local")
    m = policy_metrics(run)
    assert sum(m["policy_fallbacks"]) == sum(m["policy_decisions"]) > 0


# -- the policy on its own ------------------------------------------------------------------

SPEC = ChoiceSpec(action="adopt", labels=("ignore", "share"), fields=("exposures",),
                  template="You are {persona}. {exposures} friends shared. Memory: {memory}. "
                           "You can {actions}. You")


class FixedScores(Backend):
    """A backend with known log-likelihoods: action 1 gets ``logit``, action 0 gets 0."""

    name = "fixed"

    def __init__(self, logit=0.0):
        self.logit, self.prompts_seen = logit, 0

    def score(self, prompts, continuations):
        self.prompts_seen += len(prompts)
        out = np.zeros((len(prompts), len(continuations)))
        out[:, 1] = self.logit
        return out


class Failing(Backend):
    name = "failing"

    def score(self, prompts, continuations):
        raise BackendError("cannot reach http://127.0.0.1:9/v1")


def _batch(n, distinct=5):
    return {"agent": np.arange(n, dtype=np.int64) * 3,
            "exposures": np.arange(n, dtype=np.int64) % distinct,
            "persona": np.zeros(n, np.int64), "memory": np.full((n, 2), -1, np.int8)}


def _decide(backend, batch, step=1, **cfg):
    policy = LLMPolicy(LLMPolicyConfig(model="unused", **cfg), SPEC, backend)
    ctx = PolicyContext(step, KeyedRNG(1), PolicyStats())
    return policy.decide(batch, ctx)["adopt"].numpy(), ctx.stats


def test_dedup_only_reduces_calls(tiny_model):
    from swarm.policies.backends.transformers_backend import TransformersBackend

    backend = TransformersBackend(tiny_model)
    batch = _batch(300)
    with_dedup, s1 = _decide(backend, batch)
    without, s2 = _decide(backend, batch, dedup=False)
    assert np.array_equal(with_dedup, without)
    assert (s1.calls, s2.calls, s1.decisions) == (5, 300, 300)
    assert 0 < with_dedup.sum() < 300  # a random model leaves both actions likely


def test_choices_follow_the_softmax_of_the_scores():
    p_share = 1 / (1 + np.exp(-1.0))  # logit 1 at temperature 1
    chosen, _ = _decide(FixedScores(1.0), _batch(20_000))
    assert abs(chosen.mean() - p_share) < 4 * np.sqrt(p_share * (1 - p_share) / 20_000)
    hot, _ = _decide(FixedScores(1.0), _batch(20_000), temperature=4.0)
    assert abs(hot.mean() - 1 / (1 + np.exp(-0.25))) < 0.015
    greedy, _ = _decide(FixedScores(1.0), _batch(1000), temperature=0)
    assert greedy.all()
    # The same agent at the same step always draws the same uniform.
    again, _ = _decide(FixedScores(1.0), _batch(20_000))
    assert np.array_equal(chosen, again)


def test_bucket_coarsens_fields_so_more_prompts_coincide():
    batch = _batch(1000, distinct=40)
    _, exact = _decide(FixedScores(), batch)
    _, coarse = _decide(FixedScores(), batch, bucket={"exposures": 10})
    assert (exact.calls, coarse.calls) == (40, 4)


def test_backend_failure_raises_or_falls_back_to_idle():
    with pytest.raises(PolicyError, match="127.0.0.1:9.*on_error: idle"):
        _decide(Failing(), _batch(10))
    chosen, stats = _decide(Failing(), _batch(10), on_error="idle")
    assert not chosen.any() and stats.fallbacks == 10


def test_unknown_action_in_a_generated_answer_is_never_taken(tiny_model):
    from swarm.policies.backends.transformers_backend import TransformersBackend

    # A random model answers gibberish: no reply names 'ignore' or 'share'.
    backend = TransformersBackend(tiny_model)
    with pytest.raises(PolicyError, match="named no allowed action"):
        _decide(backend, _batch(20), choice="generate")
    chosen, stats = _decide(backend, _batch(20), choice="generate", on_error="idle")
    assert stats.fallbacks == 20 and not chosen.any()


# -- personas, text and config errors --------------------------------------------------------


def test_personas_by_attribute_and_text_written_by_llm_agents(tiny_model, tmp_path):
    # Agents 0-199 have persona rows (even ids journalists); the rest get the default persona.
    ids = np.arange(200)
    table = pa.table({"agent": ids, "role": np.where(ids % 2 == 0, "journalist", "lurker"),
                      "description": [f"persona {i}" for i in ids]})
    pq.write_table(table, tmp_path / "personas.parquet")
    population = {"personas": str(tmp_path / "personas.parquet"), "groups": [
        {"policy": {"kind": "llm", "model": tiny_model, "temperature": 0.5, "memory": 1,
                    "template": "You are {persona.role} ({persona}); {exposures} shared. You",
                    "text": {"when": ["share"], "max_new_tokens": 4,
                             "template": "As {persona.role} who did {memory}, you {choice}:"}},
         "where": {"role": ["journalist"]}},
        {"policy": {"kind": "default"}, "fraction": 1.0}]}
    runs = [swarm.run(llm_config(tiny_model, shards=k, population=population),
                      tmp_path / f"r{k}", backend="local") for k in (1, 3)]
    assert sorted_events(runs[0]).equals(sorted_events(runs[1]))
    ev = runs[0].events()
    texts = ev.filter(pa.compute.is_valid(ev["text"]))
    assert texts.num_rows > 0  # journalists who shared wrote something
    writers = np.asarray(texts["agent"])
    assert (writers < 200).all() and (writers % 2 == 0).all()  # and only journalists
    assert texts.num_rows < ev.num_rows  # rule-based agents and seeds write nothing
    assert sum(policy_metrics(runs[0])["policy_decisions"]) > 0


def test_prompts_the_model_refuses_fall_back_alone_whatever_the_sharding(tiny_model,
                                                                          tmp_path):
    # One persona is longer than the model's 1024 positions: only its agents fall back.
    table = pa.table({"description": ["a reader"] * 9 + ["an endless " * 600]})
    pq.write_table(table, tmp_path / "personas.parquet")
    population = {"personas": str(tmp_path / "personas.parquet"), "groups": [
        {"policy": {"kind": "llm", "model": tiny_model, "on_error": "idle"}, "fraction": 1.0}]}
    runs = [swarm.run(llm_config(tiny_model, shards=k, population=population),
                      tmp_path / f"r{k}", backend="local") for k in (1, 3)]
    assert sorted_events(runs[0]).equals(sorted_events(runs[1]))
    m = policy_metrics(runs[0])
    assert 0 < sum(m["policy_fallbacks"]) < sum(m["policy_decisions"])
    other = policy_metrics(runs[1])  # calls differ: each shard dedups its own prompts
    assert (m["policy_decisions"], m["policy_fallbacks"]) == (other["policy_decisions"],
                                                              other["policy_fallbacks"])
    with pytest.raises(PolicyError, match="token positions"):
        population["groups"][0]["policy"]["on_error"] = "raise"
        swarm.run(llm_config(tiny_model, population=population), tmp_path / "raise",
                  backend="local")


@pytest.mark.parametrize("change, message", [
    ({"env": {"kind": "cascade", "model": "independent_cascade"}}, "decides per edge"),
    ({"policy": {"model": "/no/such/dir"}}, "model directory not found"),
    ({"policy": {"template": "You see {feed}"}}, "template names \\['feed'\\]"),
    ({"policy": {"bucket": {"age": 1}}}, "bucket names"),
    ({"policy": {"template": "You are {persona.rol}"}}, "cannot be rendered.*rol"),
    ({"policy": {"template": "{exposures:s} shared"}}, "cannot be rendered"),
    ({"policy": {"device": "cuda:7"}} if not torch.cuda.is_available() else
     {"policy": {"device": "cuda:99"}}, "not available"),
])
def test_bad_llm_configs_are_refused_before_anything_is_written(tiny_model, tmp_path, change,
                                                                 message):
    cfg = llm_config(tiny_model, **change.get("policy", {}))
    if "env" in change:
        cfg = cfg.model_copy(update={"env": swarm.envs.CascadeConfig(**change["env"])})
    with pytest.raises(ConfigError, match=message):
        swarm.run(cfg, tmp_path / "r", backend="local")
    assert not (tmp_path / "r").exists()


def test_model_directory_without_tokenizer_or_persona_mismatch_is_refused(tiny_model, tmp_path):
    import shutil

    broken = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_model, broken)
    for name in os.listdir(broken):
        if name.startswith("tokenizer") or name == "special_tokens_map.json":
            os.remove(broken / name)
    with pytest.raises(ConfigError, match="no tokenizer files"):
        swarm.run(llm_config(str(broken)), tmp_path / "r", backend="local")
    pq.write_table(pa.table({"age": [30, 40]}), tmp_path / "p.parquet")
    for where, message in (({"age": ["thirty"]}, "cannot be compared"),
                           ({"age": [50]}, "no persona row matches")):
        population = {"personas": str(tmp_path / "p.parquet"), "groups": [
            {"policy": {"kind": "llm", "model": tiny_model}, "where": where},
            {"policy": {"kind": "default"}, "fraction": 1.0}]}
        with pytest.raises(ConfigError, match=message):
            swarm.run(llm_config(tiny_model, population=population), tmp_path / "r",
                      backend="local")
    assert not (tmp_path / "r").exists()


def test_policy_server_merges_concurrent_requests_and_delivers_failures():
    from concurrent.futures import ThreadPoolExecutor

    from swarm.policies.backends.base import PromptError
    from swarm.policies.shared_model import PolicyServer

    class Recording(Backend):
        def __init__(self):
            self.calls = []

        def score(self, prompts, continuations):
            self.calls.append(list(prompts))
            if "bad" in prompts:
                raise PromptError("prompt 'bad' is too long")
            return np.array([[len(p), -len(p)] for p in prompts], dtype=float)

        def generate(self, prompts, seeds, max_new_tokens, temperature=1.0):
            self.calls.append(list(prompts))
            return [f"{p}/{s}" for p, s in zip(prompts, seeds, strict=True)]

    backend = Recording()
    server = PolicyServer(LLMPolicyConfig(model="x", batch_window_ms=50), backend=backend)
    with ThreadPoolExecutor(4) as pool:
        # Identical generate requests from two callers (equal numpy seeds) and two scorings.
        futs = [pool.submit(server.generate, ["a", "b"], np.array([1, 2]), 4) for _ in range(2)]
        futs += [pool.submit(server.score, ["a", "bb"], [" x", " y"]),
                 pool.submit(server.score, ["bb", "ccc"], [" x", " y"])]
        gen1, gen2, s1, s2 = [f.result(timeout=10) for f in futs]
    assert gen1 == gen2 == ["a/1", "b/2"]
    assert s1[:, 0].tolist() == [1, 2] and s2[:, 0].tolist() == [2, 3]
    assert len(backend.calls) == 2  # one merged call per kind
    assert sorted(backend.calls[-1] + backend.calls[0]) == sorted(["a", "b", "a", "bb", "ccc"])
    with ThreadPoolExecutor(2) as pool:
        futs = [pool.submit(server.score, ["bad"], [" x"]),
                pool.submit(server.score, ["fine"], [" x"])]
        errors = [f.exception(timeout=10) for f in futs]
    assert all(isinstance(e, PromptError) for e in errors)  # merged: both callers hear it
    assert server.score(["fine"], [" x", " y"])[0, 0] == 4  # and the server still answers


def test_memory_shows_each_group_its_own_k_and_three_labels_sample_right():
    spec = ChoiceSpec(action="adopt", labels=("a", "b", "c"), fields=("exposures",),
                      template="{memory} {exposures}")
    policy = LLMPolicy(LLMPolicyConfig(model="x", memory=1), spec, FixedScores())
    batch = _batch(3)
    batch["memory"] = np.array([[0, 1, 2], [2, 2, 2], [-1, -1, -1]], dtype=np.int8)
    cols = policy._columns(batch, step=0)
    assert [policy._memory_text(m) for m in cols["memory"].tolist()] == ["c", "c", "none yet"]

    class Three(Backend):
        def score(self, prompts, continuations):
            return np.log(np.tile([0.2, 0.5, 0.3], (len(prompts), 1)))

    chosen = LLMPolicy(LLMPolicyConfig(model="x"), spec, Three()).decide(
        _batch(30_000), PolicyContext(2, KeyedRNG(4), PolicyStats()))["adopt"].numpy()
    assert np.allclose(np.bincount(chosen, minlength=3) / 30_000, [0.2, 0.5, 0.3], atol=0.012)


def test_buckets_keep_edge_values_and_whole_numbers():
    from swarm.policies.llm import _bucketed

    assert _bucketed(np.array([0.3, 0.6, 0.29, -0.0]), 0.1).tolist() == [0.3, 0.6, 0.2, 0.0]
    ints = _bucketed(np.array([0, 4, 5, 11]), 5)
    assert ints.dtype.kind == "i" and ints.tolist() == [0, 0, 5, 10]
    # -0.0 renders as "-0.0": it must not share a prompt with 0.0 by value only.
    assert str(_bucketed(np.array([-0.0]), None)[0]) == "0.0"
