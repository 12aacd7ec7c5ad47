"""Untrusted input: configs and SQL are data. Each case here was an escape, a hang or a
traceback before; now it is one line naming the problem, with exit code 2, and nothing
is read or written beyond the run.
"""

import os
import subprocess
import sys
import time

import pytest
from conftest import cascade_config, cli

import swarm
from swarm.config_file import MAX_VALUES
from swarm.errors import ConfigError

GOOD = """\
seed: 1
steps: 10
graph: {kind: barabasi_albert, n: 100, m: 2}
env: {kind: cascade, p: 0.1}
"""



def laughs(levels: int = 9) -> str:
    """The "billion laughs": each level is nine aliases of the one before (467 bytes)."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n" + GOOD


@pytest.mark.parametrize("text, needle", [
    (laughs(), f"expands to more than {MAX_VALUES:,} values"),
    ("x: " + "[" * 200 + "]" * 200 + "\n" + GOOD, "nested deeper than 32 levels"),
    ("x: &r [1, *r]\n" + GOOD, "alias *r refers to a value that contains it"),
    ("x: &r {a: *r}\n" + GOOD, "alias *r refers to a value that contains it"),
    ("\0\1\2binary\xff", "a binary file, not a YAML config"),
])
def test_hostile_yaml_is_refused_fast_with_one_line(tmp_path, text, needle):
    path = tmp_path / "c.yaml"
    path.write_bytes(text.encode("latin-1") if "\0" in text else text.encode())
    t0 = time.perf_counter()
    out = cli("validate", str(path))
    assert out.exit_code == 2, out.stderr
    assert needle in out.stderr and out.stderr.count("\n") == 1
    assert time.perf_counter() - t0 < 30  # the laughs hung at 2.3 GB before


@pytest.mark.integration  # the CLI as a subprocess
def test_the_laughs_end_the_real_command_in_seconds(tmp_path):
    # The installed entry point, in its own process: before, it hung at 2.3 GB.
    path = tmp_path / "c.yaml"
    path.write_text(laughs())
    out = subprocess.run([sys.executable, "-m", "swarm.cli", "validate", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert f"expands to more than {MAX_VALUES:,} values" in out.stderr


def test_non_utf8_large_and_directory_configs(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(GOOD.encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        swarm.load_config(path)
    path.write_bytes(GOOD.encode() + b"#" * (5 * 1024**2))
    with pytest.raises(ConfigError, match="larger than 4 MiB"):
        swarm.load_config(path)
    with pytest.raises(ConfigError, match="is a directory"):
        swarm.load_config(tmp_path)


def test_a_huge_value_is_not_echoed_in_full(tmp_path):
    # 10 MB was echoed in full before; now a file that size is refused outright, and a
    # value that fits is shown as its first 200 characters.
    path = tmp_path / "c.yaml"
    path.write_text(GOOD.replace("seed: 1", "seed: '" + "x" * 3_000_000 + "'"))
    out = cli("validate", str(path))
    assert out.exit_code == 2 and "seed:" in out.stderr
    assert len(out.stderr) < 1000 and "(3,000,002 characters)" in out.stderr


@pytest.mark.parametrize("override, needle", [
    ("graph.n=1000000000000", "graph.n: Input should be less than or equal to 100000000000"),
    ("steps=1000000000", "steps: Input should be less than or equal to 100000000"),
    ("steps=100000000000000000000", "steps: 100000000000000000000 does not fit in 64 bits"),
    ("shards=1000000", "shards: Input should be less than or equal to 100000"),
    ("seed=100000000000000000000", "seed: 100000000000000000000 does not fit in 64 bits"),
    ("env.p=.nan", "env.p: must be a finite number; got nan"),
    ("graph.m=.inf", "graph.m: must be a finite number"),
])
def test_values_beyond_what_a_run_could_use_are_refused(tmp_path, override, needle):
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        swarm.load_config(path, [override])


def test_sets_and_grids_parse_with_the_same_limits():
    from swarm.sweep import parse_grid

    with pytest.raises(ConfigError, match="alias"):
        swarm.config.apply_overrides({}, ["x=&a [*a]"])
    with pytest.raises(ConfigError, match="nested deeper"):
        parse_grid(["x=" + "[" * 40 + "]" * 40])


# -- the query sandbox --------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return swarm.run(cascade_config(n=2000), tmp_path_factory.mktemp("q") / "r",
                     backend="local").path


@pytest.mark.parametrize("sql", [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM '/etc/passwd'",
    "SELECT * FROM read_parquet('https://example.com/x.parquet')",
    "COPY (SELECT 1) TO 'RUN/metrics.arrow'",
    "COPY (SELECT 1) TO 'x.csv'",
    "ATTACH 'RUN/x.duckdb' AS x",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SET enable_external_access = true",
    "CREATE TABLE t AS SELECT 1",
    "EXPORT DATABASE 'RUN/exported'",
    "SELECT 1; COPY (SELECT 1) TO 'RUN/y.csv'",
    "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
    "EXPLAIN CREATE TABLE t AS SELECT 1",
])
def test_sql_escapes_exit_2_and_write_nothing(run_dir, sql):
    before = sorted(os.listdir(run_dir))
    metrics = open(os.path.join(run_dir, "metrics.arrow"), "rb").read()
    out = cli("query", run_dir, sql.replace("RUN", run_dir))
    assert out.exit_code == 2, (sql, out.stdout, out.stderr)
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: ")
    assert "root:" not in out.stdout + out.stderr
    assert sorted(os.listdir(run_dir)) == before and not os.path.exists("x.csv")
    assert open(os.path.join(run_dir, "metrics.arrow"), "rb").read() == metrics


def test_saved_views_follow_table_references_not_words(run_dir):
    # A comment or a string that says "roles" or "cascades" used to trigger (and break) them.
    out = cli("query", "--format", "csv", run_dir, "--", "-- roles and cascades\nSELECT "
              "count(*) AS n FROM events WHERE event <> 'roles'")
    assert out.exit_code == 0, out.stderr
    assert int(out.stdout.splitlines()[1]) == swarm.open_run(run_dir).manifest["events"]
    out = cli("query", run_dir, "WITH roles AS (SELECT 1 AS x) SELECT x FROM roles",
              "--format", "csv")
    assert out.exit_code == 0 and out.stdout.splitlines() == ['"x"', "1"]
    out = cli("query", run_dir, "SELECT count(*) AS trees FROM cascades", "--format", "csv")
    assert out.exit_code == 0 and int(out.stdout.splitlines()[1]) > 0
