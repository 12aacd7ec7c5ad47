"""Templates are data, keys go only where they may, and another user's run is not trusted.

Three holes, each closed here and checked from the outside: a template that
walks Python attributes to os.environ, an ``api_key_env`` that sends any
variable to any URL (or a key in clear over the network), and ``swarm
resume`` of a run directory someone else wrote, whose manifest chooses the
endpoint.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from aiohttp import web
from typer.testing import CliRunner

import swarm
from swarm import validate_config
from swarm.cli import app
from swarm.envs.base import ChoiceSpec
from swarm.errors import ConfigError
from swarm.policies import endpoints
from swarm.policies.backends.base import BackendError
from swarm.policies.backends.openai_backend import OpenAIBackend
from swarm.policies.endpoints import check_endpoints_trusted, config_endpoints
from swarm.policies.llm import LLMPolicy, LLMPolicyConfig, check_template
from swarm.policies.templates import (
    Persona,
    TemplateError,
    TemplateFormatter,
    check_template_syntax,
    render_template,
)
from swarm.storage import RunStore

ROOT = Path(__file__).resolve().parents[1]
CANARY = "swarm-canary-7f3a"  # put in the environment; must never come out of a template
LEAK = "{persona.__init__.__globals__[os].environ[SWARM_CANARY]}"


def llm_raw(template=None, text=None, **policy) -> dict:
    """A raw config with one LLM group (index 1) after a default group (index 0)."""
    llm = {"kind": "llm", "model": "/no/model/needed/to/validate", **policy}
    if template is not None:
        llm["template"] = template
    if text is not None:
        llm["text"] = {"when": ["share"], "template": text}
    return {
        "seed": 3, "steps": 3, "graph": {"kind": "erdos_renyi", "n": 100, "mean_degree": 4},
        "env": {"kind": "cascade", "model": "linear_threshold", "seed_fraction": 0.05},
        "population": {"groups": [{"policy": {"kind": "default"}, "fraction": 0.5},
                                  {"policy": llm, "fraction": 0.5}]},
    }


def cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "SWARM_CANARY": CANARY}
    return subprocess.run([sys.executable, "-m", "swarm.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


# -- 1. templates ---------------------------------------------------------------------------


class OldPersona:
    """The persona class before this change: columns as attributes, str.format rendering."""

    def __init__(self, row):
        self._row = row
        self.__dict__.update(row)

    def __format__(self, spec):
        return format(str(self._row.get("description")), spec)


def test_the_environment_leak_worked_with_str_format_and_is_refused_now(monkeypatch):
    monkeypatch.setenv("SWARM_CANARY", CANARY)
    # The hole: str.format over a live object reaches the process's environment.
    assert CANARY in LEAK.format(persona=OldPersona({"description": "x"}))
    # Refused when the config is validated, naming the key, the field and what is allowed.
    with pytest.raises(ConfigError) as info:
        validate_config(llm_raw(template="You are " + LEAK))
    (line,) = [ln for ln in str(info.value).splitlines() if "template" in ln]
    assert line.strip().startswith("population.groups.1.policy.template: field " + LEAK)
    assert "is not allowed" in line and "{persona.COLUMN}" in line and "{x:.2f}" in line
    assert CANARY not in str(info.value)
    # And rendering refuses it too, however it got there.
    with pytest.raises(TemplateError):
        render_template(LEAK, persona=Persona({"description": "x"}))
    with pytest.raises(TemplateError):
        TemplateFormatter().format(LEAK, persona=Persona({"description": "x"}))


REFUSED = [
    ("{persona.__init__}", "{persona.__init__}"),
    ("{persona._row}", "{persona._row}"),
    ("{persona.role.upper}", "{persona.role.upper}"),
    ("{exposures.real}", "attribute access"),
    ("{exposures[0]}", "indexing"),
    ("{persona[role]}", "indexing"),
    ("{exposures!r}", "conversions"),
    ("{exposures!s}", "conversions"),
    ("{exposures!a}", "conversions"),
    ("{}", "positional"),
    ("{0}", "positional"),
    ("{exposures:{in_degree}}", "may not contain fields"),
    ("{exposures:q}", "not a plain format spec"),
    ("{exposures:%Y}", "not a plain format spec"),
    ("{exposures:>99999999}", "width"),
    ("{exposures:.5000}", "precision"),
    ("{ exposures }", "identifier"),
    ("{exposures", "not a valid template"),
]


@pytest.mark.parametrize("field, why", REFUSED)
@pytest.mark.parametrize("where", ["template", "text"])
def test_templates_may_not_use_attributes_indexing_conversions_or_nested_specs(field, why,
                                                                               where):
    raw = llm_raw(**{where: f"You are {{persona}}; {field} shared"})
    key = "template" if where == "template" else "text.template"
    with pytest.raises(ConfigError) as info:
        validate_config(raw)
    (line,) = [ln for ln in str(info.value).splitlines() if ln.strip()[:1] == "p"]
    assert line.strip().startswith(f"population.groups.1.policy.{key}: ")
    assert why in line and "A template may use" in line or "not a valid template" in line
    if why != "not a valid template":
        assert f"field {field}" in line
    with pytest.raises(TemplateError):  # the renderer agrees
        render_template(f"{field}", persona=Persona({"role": "x"}), exposures=3, in_degree=4)


ALLOWED = ["{persona}", "{persona.role}", "{persona:>30}", "{persona.age:03d}",
           "{exposures:>4}", "{influence:.2f}", "{influence:+08.3f}", "{in_degree:,}",
           "{influence:.1%}", "{exposures:x<6}", "{{literal}} {memory} {actions} {step:03d}",
           "{exposures:}", "no fields at all"]


@pytest.mark.parametrize("template", ALLOWED)
def test_allowed_templates_validate_and_render_exactly_as_str_format(template):
    check_template_syntax(template)
    validate_config(llm_raw(template=template))
    row = {"description": "a reporter", "role": "editor", "age": 7}
    values = dict(exposures=3, in_degree=1234567, influence=0.4567, memory="share, ignore",
                  actions="ignore or share", step=5)
    expected = template.format(persona=OldPersona(row), **values)
    assert render_template(template, persona=Persona(row), **values) == expected


def test_persona_columns_are_looked_up_by_name_never_as_attributes():
    p = Persona({"description": "d", "role": "editor"})
    assert render_template("{persona.role}", persona=p) == "editor"
    assert not hasattr(p, "role")  # a column is not an attribute
    with pytest.raises(TemplateError, match=r"no column 'age'.*\['description', 'role'\]"):
        render_template("{persona.age}", persona=p)
    f = TemplateFormatter()
    # Each hook refuses on its own, even when called directly.
    with pytest.raises(TemplateError):
        f.get_field("persona.__class__", (), {"persona": p})
    with pytest.raises(TemplateError):
        f.get_field("persona[0]", (), {"persona": p})
    with pytest.raises(TemplateError, match="has no columns"):
        f.get_field("persona.real", (), {"persona": 3})
    with pytest.raises(TemplateError):
        f.convert_field(p, "r")
    with pytest.raises(TemplateError):
        f.format_field(3, "{x}")
    with pytest.raises(TemplateError):
        f.vformat("{0}", (1,), {})


def test_a_missing_persona_column_is_refused_before_the_run(tmp_path):
    personas = tmp_path / "p.csv"
    personas.write_text("description,role\na reporter,editor\n")
    raw = llm_raw(template="You are {persona.rank}")
    raw["population"]["personas"] = str(personas)
    cfg = validate_config(raw)  # an identifier: the table is not read at validate time
    with pytest.raises(ConfigError, match=r"cannot be rendered.*no column 'rank'"):
        swarm.run(cfg, tmp_path / "r", backend="local")
    assert not (tmp_path / "r").exists()


def test_env_default_templates_and_unvalidated_configs_are_checked_too():
    spec = ChoiceSpec(action="adopt", labels=("ignore", "share"), fields=("exposures",),
                      template="You are {persona.__init__.__globals__}")
    with pytest.raises(ValueError, match=r"template: field \{persona.__init__.__globals__\}"):
        check_template(spec.template, spec, "template")
    # A config built without validation (model_construct) still cannot render it.
    cfg = LLMPolicyConfig.model_construct(**{**LLMPolicyConfig(model="m").__dict__,
                                             "template": LEAK})
    good = ChoiceSpec(action="adopt", labels=("ignore", "share"), fields=("exposures",),
                      template="{exposures}")
    for config, choice in ((LLMPolicyConfig(model="m"), spec), (cfg, good)):
        with pytest.raises(ValueError, match="is not allowed"):
            LLMPolicy(config, choice, backend=None)


@pytest.mark.integration  # the CLI as a subprocess
def test_swarm_validate_exits_2_with_one_line_for_a_bad_template(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(json.dumps(llm_raw(template="You are " + LEAK)))  # JSON is YAML
    proc = cli("validate", config)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "policy.template" in ln]
    assert len(lines) == 1 and f"field {LEAK} is not allowed" in lines[0]
    assert CANARY not in proc.stdout + proc.stderr


# -- 2. API keys ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["HOME", "AWS_SECRET_ACCESS_KEY", "openai_api_key",
                                  "OPENAI_API_KEY_2", "_API_KEY", "GITHUB_TOKEN", ""])
def test_api_key_env_must_name_an_api_key_variable(name):
    with pytest.raises(ConfigError) as info:
        validate_config(llm_raw(backend="openai", base_url="https://api.example.com/v1",
                                api_key_env=name))
    message = str(info.value)
    assert "population.groups.1.policy.api_key_env: " in message
    assert "^[A-Z][A-Z0-9_]*_API_KEY$" in message and repr(name) in message
    with pytest.raises(BackendError, match=r"_API_KEY\$"):
        OpenAIBackend("https://api.example.com/v1", "m", api_key_env=name)


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "MY_SERVER_API_KEY", "X1_API_KEY", None])
def test_api_key_variables_and_no_key_are_accepted(name):
    cfg = validate_config(llm_raw(backend="openai", base_url="https://api.example.com/v1",
                                  api_key_env=name))
    assert cfg.population.groups[1].policy.api_key_env == name


LOOPBACK = ["http://127.0.0.1:8000/v1", "http://127.9.8.7/v1", "http://[::1]:8000/v1",
            "http://localhost:8000/v1", "http://LOCALHOST/v1"]
REMOTE_HTTP = ["http://10.0.0.5:8000/v1", "http://gpu-box:8000/v1",
               "http://127.0.0.1@evil.example/v1", "http://127.0.0.1.nip.io/v1",
               "http://0.0.0.0:8000/v1"]


@pytest.mark.parametrize("url", REMOTE_HTTP)
def test_a_key_is_never_configured_to_go_in_clear_beyond_loopback(url, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    # Refused at validation even with the variable unset here: see README.
    with pytest.raises(ConfigError, match=r"population.groups.1.policy: api_key_env "
                                          r"OPENAI_API_KEY would be sent in clear.*https://.*"
                                          r"api_key_env: null"):
        validate_config(llm_raw(backend="openai", base_url=url))
    # A keyless server on the LAN is fine when the config says so.
    validate_config(llm_raw(backend="openai", base_url=url, api_key_env=None))


@pytest.mark.parametrize("url", [*LOOPBACK, "https://10.0.0.5/v1", "https://api.example.com/v1"])
def test_https_anywhere_and_http_on_loopback_may_carry_a_key(url, monkeypatch):
    monkeypatch.setenv("SWARM_T_API_KEY", "sk-test")
    validate_config(llm_raw(backend="openai", base_url=url, api_key_env="SWARM_T_API_KEY"))
    OpenAIBackend(url, "m", api_key_env="SWARM_T_API_KEY").close()


def _lan_address() -> str | None:
    """This machine's address on a non-loopback interface, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # UDP: no packet is sent
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_the_backend_refuses_before_any_request_and_sends_keys_only_where_allowed(
        monkeypatch, tmp_path):
    import asyncio
    import threading

    seen: list[str | None] = []

    async def handler(request):
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"choices": [{"index": 0, "text": "ok"}]})

    app = web.Application()
    app.router.add_route("*", "/v1/completions", handler)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    # On all interfaces, so the same server answers on loopback and on the LAN address.
    loop.run_until_complete(web.TCPSite(runner, "0.0.0.0", 0).start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("SWARM_T_API_KEY", "sk-secret")
        local = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "m", api_key_env="SWARM_T_API_KEY")
        assert local.generate(["a"], np.array([1]), 2) == ["ok"]
        local.close()
        assert seen == ["Bearer sk-secret"]

        lan = _lan_address()
        remote = f"http://{lan or '192.0.2.1'}:{port}/v1"
        # At construction, with the key set: refused.
        with pytest.raises(BackendError, match=r"SWARM_T_API_KEY would be sent in clear.*"
                                               r"nothing was sent"):
            OpenAIBackend(remote, "m", api_key_env="SWARM_T_API_KEY")
        # Without the key, nothing secret goes: allowed, and no Authorization header.
        monkeypatch.delenv("SWARM_T_API_KEY")
        backend = OpenAIBackend(remote, "m", api_key_env="SWARM_T_API_KEY", timeout=5)
        travelled = pickle.loads(pickle.dumps(backend))  # as it reaches a Ray worker
        # The key appears later (a worker's environment): refused at the first request.
        monkeypatch.setenv("SWARM_T_API_KEY", "sk-secret")
        sent = []
        monkeypatch.setattr(httpx.AsyncClient, "send",
                            lambda self, *a, **k: sent.append(a) or pytest.fail("sent"))
        for b in (backend, travelled):
            with pytest.raises(BackendError, match="would be sent in clear"):
                b.generate(["a"], np.array([1]), 2)
            b.close()
        # With a LAN address, the server would have seen a request had one been sent.
        assert sent == [] and seen == ["Bearer sk-secret"]
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# -- 3. resuming another user's run ---------------------------------------------------------


ENDPOINT = "http://127.0.0.1:9/v1"  # nothing listens on the discard port: fails fast


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A small finished run, turned into a failed one that names an endpoint."""
    path = tmp_path_factory.mktemp("base") / "run"
    raw = llm_raw()
    raw["population"] = {"groups": [{"fraction": 1.0}]}
    raw["checkpoint"] = {"every": 0}
    swarm.run(validate_config(raw), path, backend="local")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["status"] = "failed"
    manifest["config"]["population"] = {"groups": [{"fraction": 1.0, "policy": {
        "kind": "llm", "backend": "openai", "base_url": ENDPOINT, "model": "m",
        "api_key_env": None, "retries": 0, "timeout": 2}}]}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


@pytest.fixture
def run_copy(stopped_run, tmp_path):
    path = tmp_path / "run"
    shutil.copytree(stopped_run, path)
    return path


def pretend_written_by(monkeypatch, uid: int | None) -> None:
    monkeypatch.setattr(endpoints, "manifest_owner_uid", lambda store: uid)


def test_the_trust_check_lists_endpoints_and_asks_for_trust(run_copy, monkeypatch):
    store = RunStore(run_copy)
    config = validate_config(json.loads((run_copy / "manifest.json").read_text())["config"])
    assert config_endpoints(config) == config_endpoints(config.dump()) == [
        ("population.groups.0.policy.base_url", ENDPOINT)]
    assert endpoints.manifest_owner_uid(store) == os.getuid()  # tests write their own runs
    check_endpoints_trusted(config, store, trust=False)  # own run: no question asked
    for uid in (os.getuid() + 1, None):  # another user's; an owner that cannot be known
        pretend_written_by(monkeypatch, uid)
        with pytest.raises(ConfigError, match=rf"another user.*{ENDPOINT}.*--trust-endpoint"):
            check_endpoints_trusted(config, store, trust=False)
        check_endpoints_trusted(config, store, trust=True)
    # Runs without endpoints are anyone's to resume.
    plain = validate_config({**config.dump(), "population": {"groups": [{"fraction": 1.0}]}})
    check_endpoints_trusted(plain, store, trust=False)


def test_stores_without_owners_count_as_another_users(tmp_path):
    class RemoteStore:  # what an s3:// or gs:// RunStore looks like here
        local = False

        def child_uri(self):
            return "s3://bucket/run"

    assert endpoints.manifest_owner_uid(RemoteStore()) is None
    raw = llm_raw(backend="openai", base_url="https://api.example.com/v1")
    with pytest.raises(ConfigError, match=r"s3://bucket/run was written by another user "
                                          r"\(its owner cannot be known"):
        check_endpoints_trusted(raw, RemoteStore(), trust=False)
    # A manifest.json that is a symbolic link has no owner we can rely on either.
    (tmp_path / "real.json").write_text("{}")
    (tmp_path / "manifest.json").symlink_to(tmp_path / "real.json")
    assert endpoints.manifest_owner_uid(RunStore(tmp_path)) is None


def test_resume_refuses_another_users_endpoints_unless_trusted(run_copy, monkeypatch):
    before = (run_copy / "manifest.json").read_bytes()
    pretend_written_by(monkeypatch, os.getuid() + 1)
    with pytest.raises(ConfigError, match=rf"another user.*{ENDPOINT}"):
        swarm.resume(run_copy, backend="local")
    assert (run_copy / "manifest.json").read_bytes() == before  # nothing written

    runner = CliRunner()
    result = runner.invoke(app, ["resume", str(run_copy), "--no-progress"])
    assert result.exit_code == 2
    assert ENDPOINT in result.stderr and "--trust-endpoint" in result.stderr
    # Trusted: past the check, to the endpoint check of every run (nothing listens there).
    result = runner.invoke(app, ["resume", str(run_copy), "--no-progress", "--trust-endpoint"])
    assert result.exit_code == 2 and "another user" not in result.stderr
    assert "cannot reach" in result.stderr


@pytest.mark.integration  # `swarm resume` as a subprocess
def test_resume_of_a_manifest_with_a_malicious_template_renders_nothing(run_copy):
    manifest = json.loads((run_copy / "manifest.json").read_text())
    manifest["config"]["population"]["groups"][0]["policy"]["template"] = (
        "{persona.__init__.__globals__}" + LEAK)
    (run_copy / "manifest.json").write_text(json.dumps(manifest))
    before = (run_copy / "manifest.json").read_bytes()
    proc = cli("resume", run_copy, "--no-progress", "--trust-endpoint")
    assert proc.returncode == 2, proc.stderr
    assert ("population.groups.0.policy.template: field {persona.__init__.__globals__} is "
            "not allowed") in proc.stderr
    assert CANARY not in proc.stdout + proc.stderr
    assert (run_copy / "manifest.json").read_bytes() == before
