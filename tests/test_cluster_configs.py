"""The cluster configs in cluster/configs/ parse, have the keys their tools need, and
run swarm commands and configs that exist."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "cluster" / "configs"


def load(name: str) -> dict:
    return yaml.safe_load((CONFIGS / name).read_text())


def cli_commands() -> set[str]:
    from swarm.cli import app

    return {c.name or c.callback.__name__ for c in app.registered_commands}


def check_swarm_command(command: str) -> None:
    """``command`` runs an existing swarm subcommand on a config that is in the repo."""
    args = shlex.split(command)
    assert args[0] == "swarm", command
    assert args[1] in cli_commands(), f"no `swarm {args[1]}` command"
    if args[1] in ("run", "submit", "validate"):
        assert (ROOT / args[2]).is_file(), f"{args[2]} is not in the repository"
    if args[1] in ("run", "submit"):
        assert "--out" in args, command


def test_aws_launcher_config():
    cfg = load("aws.yaml")
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type"):
        assert key in cfg, key
    assert cfg["provider"]["type"] == "aws" and cfg["provider"]["region"]
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    for name, node in types.items():
        assert "node_config" in node and "InstanceType" in node["node_config"], name
        assert "resources" in node, name
    workers = {k: v for k, v in types.items() if k != cfg["head_node_type"]}
    assert any(v.get("min_workers", 0) >= 1 for v in workers.values())  # a CPU group
    gpu = [v for k, v in workers.items() if "gpu" in k]
    assert gpu and all(v["min_workers"] == 0 for v in gpu)  # optional: starts at zero
    # Every node installs swarm and torch: CPU nodes the CPU wheel, GPU nodes the CUDA one.
    cpu_setup = " ".join(cfg["worker_setup_commands"])
    assert "torch==2.13.0" in cpu_setup and "/whl/cpu" in cpu_setup and "~/swarm" in cpu_setup
    gpu_setup = " ".join(gpu[0]["worker_setup_commands"])
    assert "torch==2.13.0" in gpu_setup and "/whl/cpu" not in gpu_setup
    assert "~/swarm" in " ".join(cfg["head_setup_commands"])
    assert "ray[default]" in " ".join(cfg["setup_commands"])


def test_kuberay_rayjob_manifest():
    job = load("rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    check_swarm_command(spec["entrypoint"])
    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]
    assert "rayStartParams" in head and head["template"]["spec"]["containers"]
    assert cluster["workerGroupSpecs"], "no worker group"
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and group["template"]["spec"]["containers"]
    # Every pod mounts the run directory: shards write their events where they run.
    out = shlex.split(spec["entrypoint"])
    out_dir = out[out.index("--out") + 1]
    pods = [head] + cluster["workerGroupSpecs"]
    for pod in pods:
        mounts = [m["mountPath"] for c in pod["template"]["spec"]["containers"]
                  for m in c.get("volumeMounts", [])]
        assert any(out_dir.startswith(m.rstrip("/") + "/") for m in mounts), mounts


@pytest.mark.parametrize("command", ["swarm nosuch examples/cascade.yaml --out /x",
                                     "swarm run examples/missing.yaml --out /x"])
def test_the_entrypoint_check_catches_mistakes(command):
    with pytest.raises(AssertionError):
        check_swarm_command(command)
