"""The layers of DESIGN.md at run time: what an import loads, and the registries.

`make lint` checks the import graph (import-linter contracts in pyproject.toml);
these check what a process actually loads, which also covers lazy imports.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from swarm.registry import ENVS, POLICIES, Registry


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\n"
                          "print(' '.join(m for m in ('torch', 'ray', 'transformers', "
                          "'swarm.runner', 'swarm.envs.feed', 'swarm.policies') "
                          "if m in sys.modules))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("code", [
    "import swarm",
    "import swarm.analysis, swarm.analysis.cascades, swarm.analysis.exposure, "
    "swarm.analysis.roles, swarm.analysis.socialization, swarm.analysis.coordination, "
    "swarm.analysis.powerlaw_fit, swarm.analysis.report",
    "import swarm.cli",
])
def test_light_imports_load_neither_torch_nor_ray_nor_the_runner(code):
    assert _loaded_after(code) == set()


def test_validating_a_config_loads_only_the_env_it_names():
    loaded = _loaded_after(
        "from swarm.config import validate_config\n"
        "validate_config({'graph': {'kind': 'erdos_renyi', 'n': 100, 'mean_degree': 4},"
        " 'env': {'kind': 'cascade'}})")
    assert loaded == set()


def test_builtin_envs_and_rules_come_from_entry_points():
    assert {"cascade", "commons", "consensus", "feed", "games", "opinion"} <= set(ENVS)
    assert {"edge_transmission", "feed_rules", "llm"} <= set(POLICIES)
    assert ENVS["cascade"].name == "cascade"


def test_a_registry_refuses_a_taken_key_and_names_the_known_ones():
    r = Registry("swarm.nothing_here", "widget")
    r.register("a", int)
    r.register("a", int)  # the same class again is fine
    with pytest.raises(ValueError, match="already registered"):
        r.register("a", float)
    with pytest.raises(KeyError, match="unknown widget 'b'; known: a"):
        r["b"]


def test_a_variant_swapped_into_the_registry_survives_importing_the_real_env():
    import importlib

    real = ENVS["opinion"]
    variant = type("OpinionVariant", (real,), {})
    ENVS["opinion"] = variant
    try:
        importlib.reload(importlib.import_module("swarm.envs.opinion"))
        assert ENVS["opinion"] is variant
    finally:
        ENVS.unregister("opinion")
    importlib.reload(importlib.import_module("swarm.envs.opinion"))
    assert ENVS["opinion"].__name__ == "Opinion"


def test_an_unknown_key_in_a_policy_lists_the_keys_of_its_kind():
    from swarm.config import validate_config
    from swarm.errors import ConfigError

    raw = {"graph": {"kind": "erdos_renyi", "n": 100, "mean_degree": 4}, "env": {"kind": "feed"},
           "population": {"groups": [{"fraction": 1.0,
                                      "policy": {"kind": "llm", "model": "m", "tempo": 1}}]}}
    with pytest.raises(ConfigError, match=r"policy.tempo'; allowed keys here: .*temperature"):
        validate_config(raw)
    raw["population"]["groups"][0]["policy"] = {"kind": "nope"}
    with pytest.raises(ConfigError, match="unknown policy kind 'nope'; allowed: default, llm"):
        validate_config(raw)


def test_a_policy_config_object_is_accepted_where_its_dict_is():
    from swarm.policies.llm import LLMPolicyConfig
    from swarm.population import PolicyGroup

    group = PolicyGroup(policy=LLMPolicyConfig(model="m"), fraction=1.0)
    assert group.policy.kind == "llm"
    assert PolicyGroup.model_validate(group.model_dump()).policy == group.policy
