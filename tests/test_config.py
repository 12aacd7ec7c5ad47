import pytest
import yaml

import swarm
from swarm.config import apply_overrides, load_config
from swarm.errors import ConfigError

GOOD = {
    "seed": 1,
    "steps": 10,
    "shards": 2,
    "graph": {"kind": "barabasi_albert", "n": 100, "m": 2},
    "env": {"kind": "cascade", "model": "independent_cascade", "p": 0.1, "seed_fraction": 0.05},
    "log": {"flush_every": 2},
}


def with_(path: str, value):
    raw = yaml.safe_load(yaml.safe_dump(GOOD))
    node = raw
    *parents, last = path.split(".")
    for part in parents:
        node = node[part]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return raw


def test_good_config_is_frozen_and_dumps_env_fields():
    cfg = swarm.validate_config(GOOD)
    assert cfg.env.p == 0.1 and cfg.graph.m == 2
    with pytest.raises(Exception, match="frozen"):
        cfg.seed = 3
    assert cfg.dump()["env"]["seed_fraction"] == 0.05


@pytest.mark.parametrize(
    "path, value, needles",
    [
        ("graph.m", 100, ["graph", "m must be < n", "m=100"]),
        ("env.p", 1.5, ["env.p", "less than or equal to 1", "1.5"]),
        ("env.p", -0.1, ["env.p", "greater than or equal to 0"]),
        ("shards", 0, ["shards", "greater than or equal to 1", "got 0"]),
        ("steps", "many", ["steps", "valid integer", "'many'"]),
        ("bogus", 1, ["unknown key 'bogus'", "allowed keys here", "shards"]),
        ("graph.mm", 3, ["unknown key 'graph.mm'", "kind, m, n"]),
        ("env.pp", 3, ["unknown key 'env.pp'", "seed_fraction"]),
        ("log.flush_every", 0, ["log.flush_every", "greater than or equal to 1"]),
        ("graph.kind", "lattice", ["graph.kind", "unknown kind 'lattice'", "barabasi_albert"]),
        ("env.kind", "weather", ["env.kind", "unknown env 'weather'", "cascade"]),
        ("env.model", "bass", ["env.model", "independent_cascade"]),
        ("env.seed_count", 3, ["seed_fraction", "seed_count"]),
        ("env.beta", 0.3, ["['beta'] do not apply to model='independent_cascade'"]),
        ("graph", KeyError, ["graph: required key is missing"]),
        ("partition", "spectral", ["partition", "'contiguous'", "'metis'"]),
    ],
)
def test_bad_configs_name_the_key_the_value_and_what_is_allowed(path, value, needles):
    with pytest.raises(ConfigError) as info:
        swarm.validate_config(with_(path, value))
    for needle in needles:
        assert needle in str(info.value), (needle, str(info.value))


def test_every_problem_is_reported_at_once():
    raw = with_("shards", 0)
    raw["graph"]["m"] = 500
    with pytest.raises(ConfigError) as info:
        swarm.validate_config(raw)
    assert "shards" in str(info.value) and "m must be < n" in str(info.value)


def test_overrides_and_files(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(GOOD))
    cfg = load_config(p, ["graph.n=500", "env.p=0.3", "shards=3", "log.flush_every=7"])
    assert (cfg.graph.n, cfg.env.p, cfg.shards, cfg.log.flush_every) == (500, 0.3, 3, 7)
    assert apply_overrides({"a": {"b": 1}}, ["a.c=[1, 2]"]) == {"a": {"b": 1, "c": [1, 2]}}
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config(p, ["graph.n"])
    with pytest.raises(ConfigError, match="unknown key 'graph.q'"):
        load_config(p, ["graph.q=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: 1\ngraph: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML \(line"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config(empty)


def test_every_graph_kind_validates():
    for graph in (
        {"kind": "watts_strogatz", "n": 50, "k": 4, "p": 0.1},
        {"kind": "erdos_renyi", "n": 50, "mean_degree": 3},
        {"kind": "sbm", "sizes": [10, 20], "p": [[0.5, 0.1], [0.1, 0.5]]},
        {"kind": "configuration", "degrees": [1, 1, 2, 2]},
        {"kind": "edgelist", "path": "edges.txt"},
    ):
        assert swarm.validate_config(with_("graph", graph)).graph.kind == graph["kind"]
    for graph, needle in (
        ({"kind": "watts_strogatz", "n": 50, "k": 3, "p": 0.1}, "k must be even"),
        ({"kind": "sbm", "sizes": [10, 20], "p": [[0.5, 0.1]]}, "2x2"),
        ({"kind": "configuration", "degrees": [1, 2]}, "even number"),
        ({"kind": "erdos_renyi", "n": 5, "mean_degree": 9}, "mean_degree must be <= n - 1"),
    ):
        with pytest.raises(ConfigError, match=needle):
            swarm.validate_config(with_("graph", graph))
