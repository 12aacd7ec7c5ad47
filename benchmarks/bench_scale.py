"""Scale-out harness: shard-local graphs, whole-process time and memory, against baselines.

What it measures
----------------
Every measurement is a fresh child process: ``swarm run CONFIG`` as a user types it
(Python start, Ray start, the shards building their slices, the steps, the event log,
shut-down), or a baseline script. While it runs, a sampler sums the proportional set
size (PSS, from ``/proc/PID/smaps_rollup``) of the child and all its descendants (the
driver, Ray's processes, the shard workers, and the object store's shared memory,
shared pages counted once) every 0.2 s or more; ``peak GiB`` is the largest sum.
Reading smaps_rollup walks a process's page tables under its memory-map lock and
slowed the 1e8 run from 65 s to 82 s, so every command runs twice: once timed with
nothing watching it (``whole s``), once sampled (``peak GiB``).

Baselines, measured in the same run:

* ``naive``: one process, numpy/scipy: G(n, p) edges drawn with ``rng.integers``, a
  scipy COO -> CSR conversion, symmetrized, then the frontier IC loop of
  ``benchmarks.baselines.bare_numpy_ic``. What a user writes by hand.
* ``bare``: the same IC loop on a graph built by the fastest vectorized numpy we
  have (``baselines.random_symmetric_csr``: one int64 sort of the edge keys, no
  scipy): the floor.

Scenarios (``--only`` picks some; ``--quick`` divides every n by 10):

* ``big``: IC on ER n=1e8, mean degree 4, 2 shards, vs ``naive``: whole-process time,
  peak PSS (target: <= 10 GiB, time <= naive).
* ``speedup``: IC on ER n=1e7, c=10, p=0.2: 1 shard vs 2 shards, whole-process
  (target: 2 shards >= 1.3x faster).
* ``small``: ER n=2e6, c=10, p=0.2: swarm (1 shard, Ray) vs ``bare`` (target <= 3x).
* ``cluster``: the ``speedup`` config on a ``ray.cluster_utils.Cluster`` of 4 nodes
  (1 CPU each; shards ask for fractional CPUs), 4 shards, events compared with the
  1-shard run's (digest of the sorted (step, agent, parent) columns). Its time is the
  run alone (the four nodes share this machine's two cores), not a whole process.
* ``plan``: ``swarm plan`` for 1e9 agents on 100 nodes of 128 GiB.

Every swarm row also prints the memory guard's estimate (``swarm plan``'s total) and
its ratio to the measured peak PSS (target: within 25%).

How to run
----------
From the repository root (``make bench-scale`` runs the first line)::

    .venv/bin/python -m benchmarks.bench_scale
    .venv/bin/python -m benchmarks.bench_scale --quick --markdown
    .venv/bin/python -m benchmarks.bench_scale --only small,speedup

Run it on an otherwise idle machine: it measures wall-clock time. ``big`` needs about
15 GiB free for the naive baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

GIB = 1024**3
ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
SWARM = str(Path(PY).with_name("swarm"))


def _log(msg: str) -> None:
    print(f"[bench_scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- measuring a process tree ------------------------------------------------------


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out.extend(int(c) for c in fh.read().split())
    except OSError:
        pass
    return out


def _tree_pss(root: int) -> int:
    total, todo, seen = 0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
        todo.extend(_children(pid))
    return total


def measure(cmd: list[str], env: dict | None = None, timeout: float = 3600,
            sample: bool = True) -> dict:
    """Run ``cmd``; its wall time, peak PSS of its process tree (0 without ``sample``),
    exit code and output."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT, env={**os.environ, **(env or {})})
    peak = [0]
    done = threading.Event()

    def sampler_loop():
        # Reading smaps_rollup walks page tables in the kernel: on a big process tree a
        # sample costs tens of ms, so the sampler waits 10x its own cost (>= 0.2 s) and
        # takes at most ~10% of one core from the run it measures.
        while not done.is_set():
            t = time.perf_counter()
            peak[0] = max(peak[0], _tree_pss(proc.pid))
            done.wait(max(0.2, 10 * (time.perf_counter() - t)))

    sampler = threading.Thread(target=sampler_loop if sample else done.wait, daemon=True)
    sampler.start()
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        done.set()
        sampler.join()
    return {"seconds": time.perf_counter() - t0, "peak": peak[0], "rc": proc.returncode,
            "output": out}


# --- baselines (run as child processes: python -m benchmarks.bench_scale --baseline) ---


def naive_build(n: int, c: float, seed: int):
    """G(n, p) the way a user writes it with numpy and scipy (COO -> CSR, symmetrized)."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    m = int(rng.binomial(n * (n - 1) // 2, c / (n - 1)))
    u = rng.integers(0, n, m, dtype=np.int32)
    v = rng.integers(0, n, m, dtype=np.int32)
    a = sp.coo_matrix((np.ones(m, dtype=np.int8), (u, v)), shape=(n, n)).tocsr()
    del u, v
    a = (a + a.T).tocsr()
    a.setdiag(0)
    a.eliminate_zeros()
    return a.indptr, a.indices


def measure_twice(cmd: list[str], what: str, env: dict | None = None) -> dict:
    """``cmd`` timed with nothing watching it, and its peak PSS from a second, sampled run."""
    mem = measure(cmd, env=env)
    res = measure(cmd, env=env, sample=False)
    if res["rc"] != 0 or mem["rc"] != 0:
        bad = res if res["rc"] else mem
        raise RuntimeError(f"{what} failed:\n{bad['output'][-3000:]}")
    res["peak"] = mem["peak"]
    return res


def _baseline(kind: str, n: int, c: float, p: float, seed_fraction: float) -> None:
    from benchmarks.baselines import bare_numpy_ic, random_symmetric_csr

    t0 = time.perf_counter()
    if kind == "naive":
        indptr, indices = naive_build(n, c, 1)
    else:
        indptr, indices = random_symmetric_csr(n, c, np.random.default_rng(1))
    t1 = time.perf_counter()
    seeds = np.random.default_rng(2).choice(n, max(1, int(n * seed_fraction)), replace=False)
    res = bare_numpy_ic(indptr, indices, seeds, p, 3)
    print(json.dumps({"build_seconds": t1 - t0, "ic_seconds": time.perf_counter() - t1,
                      "final_active": int(res["final_active"]), "steps": int(res["steps"])}))


# --- swarm runs ----------------------------------------------------------------------


def _config_file(work: Path, name: str, n: int, c: float, p: float, seed_fraction: float,
                 shards: int, memory_check: bool = True) -> Path:
    import yaml

    raw = {"seed": 1, "steps": 10_000, "shards": shards, "memory_check": memory_check,
           "graph": {"kind": "erdos_renyi", "n": n, "mean_degree": c},
           "env": {"kind": "cascade", "model": "independent_cascade", "p": p,
                   "seed_fraction": seed_fraction},
           "checkpoint": {"every": 0}, "log": {"flush_every": 50}}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _estimate(config_path: Path, backend: str = "ray") -> int:
    from swarm.config import load_config
    from swarm.envs import ENV_REGISTRY
    from swarm.memory import estimate_from_config

    cfg = load_config(config_path)
    return estimate_from_config(cfg, ENV_REGISTRY[cfg.env.kind], backend).total


def swarm_run(work: Path, name: str, n: int, c: float, p: float, seed_fraction: float,
              shards: int, extra: list[str] | None = None) -> dict:
    # The guard's estimate is printed beside the measured peak, not enforced here.
    cfg = _config_file(work, name, n, c, p, seed_fraction, shards, memory_check=False)
    out = work / name
    _log(f"swarm run {name}: n={n:,} c={c} p={p} shards={shards}")
    cmd = [SWARM, "run", str(cfg), "--out", str(out), "--overwrite", "--no-progress",
           *(extra or [])]
    res = measure_twice(cmd, f"swarm run {name}")
    manifest = json.loads((out / "manifest.json").read_text())
    metrics = __import__("pyarrow").ipc.open_file(out / "metrics.arrow").read_all()
    barrier = [s - w for s, w in zip(metrics["seconds"].to_pylist(),
                                     metrics["shard_seconds_max"].to_pylist(), strict=True)]
    res.update(manifest=manifest, estimate=_estimate(cfg), out=out,
               barrier_ms=1000 * float(np.median(barrier[1:])) if len(barrier) > 1 else 0.0,
               active=int(metrics["active"].to_pylist()[-1]) if metrics.num_rows else 0)
    _log(f"  {res['seconds']:.1f} s, peak {res['peak'] / GIB:.2f} GiB, graph "
         f"{manifest['graph']['build_seconds']:.1f} s, steps {manifest['steps_run']}")
    return res


def baseline(kind: str, n: int, c: float, p: float, seed_fraction: float) -> dict:
    _log(f"baseline {kind}: n={n:,} c={c} p={p}")
    cmd = [PY, "-m", "benchmarks.bench_scale", "--baseline", kind, str(n), str(c), str(p),
           str(seed_fraction)]
    res = measure_twice(cmd, f"baseline {kind}")
    res.update(json.loads(res["output"].strip().splitlines()[-1]))
    _log(f"  {res['seconds']:.1f} s, peak {res['peak'] / GIB:.2f} GiB")
    return res


def local_run(work: Path, n: int, c: float, p: float, seed_fraction: float) -> dict:
    """The same run through the Python API in one process (``backend="local"``, no Ray)."""
    cfg = _config_file(work, "local", n, c, p, seed_fraction, 1, memory_check=False)
    script = ("import swarm; from swarm.config import load_config; "
              f"swarm.run(load_config({str(cfg)!r}), {str(work / 'local')!r}, "
              "backend='local', overwrite=True, progress=False)")
    _log(f"in-process run: n={n:,}")
    res = measure_twice([PY, "-c", script], "in-process run")
    res["estimate"] = _estimate(cfg, "local")
    shutil_rm(work / "local")
    return res


def digest(run_dir: Path) -> tuple[int, str]:
    import hashlib

    import swarm

    ev = swarm.open_run(run_dir).events().select(["step", "agent", "parent"])
    cols = [np.asarray(ev[c].fill_null(-1).to_numpy(), dtype=np.int64) for c in ev.column_names]
    order = np.lexsort(cols[::-1])
    h = hashlib.sha256()
    for c in cols:
        h.update(c[order].tobytes())
    return ev.num_rows, h.hexdigest()[:16]


def cluster_run(work: Path, n: int, c: float, p: float, seed_fraction: float) -> dict:
    """The config on a 4-node ray.cluster_utils.Cluster (1 CPU each; every shard asks for a
    fraction of a CPU), 4 shards."""
    cfg = _config_file(work, "cluster", n, c, p, seed_fraction, 4)
    script = f"""
import json, time, ray
from ray.cluster_utils import Cluster
import swarm
from swarm.config import load_config
cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1,
                  "include_dashboard": False}})
for _ in range(3):
    cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
ray.init(address=cluster.address)
t0 = time.perf_counter()
run = swarm.run(load_config({str(cfg)!r}), {str(work / 'cluster')!r}, overwrite=True,
                address=cluster.address, progress=False)
print(json.dumps({{"seconds": time.perf_counter() - t0,
                  "nodes": len([x for x in ray.nodes() if x["Alive"]])}}))
ray.shutdown()
cluster.shutdown()
"""
    _log(f"cluster run: 4 nodes, n={n:,}")
    res = measure([PY, "-c", script], env={"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"})
    if res["rc"] != 0:
        raise RuntimeError(f"cluster run failed:\n{res['output'][-3000:]}")
    res.update(json.loads(res["output"].strip().splitlines()[-1]))
    return res


# --- the table -------------------------------------------------------------------------


def _render(header: list[str], body: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths)),
                      *(fmt.format(*r) for r in body)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="big,speedup,small,cluster,plan")
    ap.add_argument("--quick", action="store_true", help="every n / 10")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--baseline", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.baseline:
        kind, n, c, p, f = args.baseline
        _baseline(kind, int(float(n)), float(c), float(p), float(f))
        return 0
    only = set(args.only.split(","))
    scale = 10 if args.quick else 1
    rows, targets = [], []
    work = Path(tempfile.mkdtemp(prefix="bench_scale_"))

    def row(name, what, res, base=None, note=""):
        est = res.get("estimate")
        rows.append([name, what, f"{res['seconds']:.1f}",
                     f"{base['seconds'] / res['seconds']:.2f}x" if base else "",
                     f"{res['peak'] / GIB:.2f}",
                     f"{est / GIB:.2f} ({est / res['peak']:.2f}x)" if est else "",
                     note])

    if "big" in only:
        n = 10**8 // scale
        sw = swarm_run(work, "big", n, 4.0, 0.3, 1e-4, 2)
        nv = baseline("naive", n, 4.0, 0.3, 1e-4)
        row("big", f"swarm ER n={n:.0e} c=4, 2 shards", sw, nv,
            f"graph {sw['manifest']['graph']['build_seconds']:.0f} s, "
            f"{sw['manifest']['steps_run']} steps")
        row("big", "naive numpy/scipy build + IC", nv, None,
            f"build {nv['build_seconds']:.0f} s, IC {nv['ic_seconds']:.0f} s")
        targets.append(("big: peak PSS <= 10 GiB", f"{sw['peak'] / GIB:.2f} GiB",
                        sw["peak"] <= 10 * GIB))
        targets.append(("big: time <= naive", f"{sw['seconds']:.0f} s vs {nv['seconds']:.0f} s",
                        sw["seconds"] <= nv["seconds"]))
        shutil_rm(sw["out"])
    one = None
    if "speedup" in only or "cluster" in only:
        n = 10**7 // scale
        one = swarm_run(work, "one", n, 10.0, 0.2, 0.01, 1)
        row("speedup", f"swarm ER n={n:.0e} c=10 p=0.2, 1 shard", one, None,
            f"graph {one['manifest']['graph']['build_seconds']:.1f} s")
        if "speedup" in only:
            two = swarm_run(work, "two", n, 10.0, 0.2, 0.01, 2)
            row("speedup", "same, 2 shards", two, one,
                f"graph {two['manifest']['graph']['build_seconds']:.1f} s, barrier+exchange "
                f"{two['barrier_ms']:.2f} ms/step")
            ratio = one["seconds"] / two["seconds"]
            targets.append(("speedup: 2 shards >= 1.3x 1 shard", f"{ratio:.2f}x", ratio >= 1.3))
            targets.append(("barrier + exchange < 0.5 ms/step (2 shards)",
                            f"{two['barrier_ms']:.2f} ms", two["barrier_ms"] < 0.5))
            same = digest(one["out"]) == digest(two["out"])
            targets.append(("speedup: 1 and 2 shards give identical events", str(same), same))
            shutil_rm(two["out"])
    if "small" in only:
        n = 2 * 10**6 // scale
        sw = swarm_run(work, "small", n, 10.0, 0.2, 0.01, 1)
        local = local_run(work, n, 10.0, 0.2, 0.01)
        bare = baseline("bare", n, 10.0, 0.2, 0.01)
        row("small", f"swarm ER n={n:.0e} c=10 p=0.2, 1 shard", sw, bare,
            f"graph {sw['manifest']['graph']['build_seconds']:.1f} s")
        row("small", "bare vectorized build + IC", bare, None,
            f"build {bare['build_seconds']:.1f} s, IC {bare['ic_seconds']:.1f} s")
        row("small", "swarm.run(backend='local'), in-process", local, bare,
            "what issue 15's backend: auto gives one shard")
        ratio = sw["seconds"] / bare["seconds"]
        targets.append(("small: swarm run <= 3x bare", f"{ratio:.2f}x", ratio <= 3))
        ratio = local["seconds"] / bare["seconds"]
        targets.append(("small: in-process run <= 3x bare (for reference)", f"{ratio:.2f}x",
                        ratio <= 3))
        shutil_rm(sw["out"])
    if "cluster" in only and one is not None:
        n = 10**7 // scale
        cl = cluster_run(work, n, 10.0, 0.2, 0.01)
        same = digest(one["out"]) == digest(work / "cluster")
        rows.append(["cluster", f"4 nodes x 1 CPU, 4 shards, n={n:.0e}", f"{cl['seconds']:.1f}",
                     "", f"{cl['peak'] / GIB:.2f}", "", f"{cl['nodes']} nodes alive"])
        targets.append(("cluster: identical events to 1 shard", str(same), same))
        shutil_rm(work / "cluster")
    if one is not None:
        shutil_rm(one["out"])
    print(_render(["scenario", "what", "whole s", "vs baseline", "peak GiB",
                   "estimate GiB (x peak)", "notes"], rows, args.markdown))
    for r in rows:
        if r[5]:
            ratio = float(r[5].split("(")[1].rstrip("x)"))
            targets.append((f"estimate within 25% of peak: {r[0]} / {r[1][:30]}",
                            f"{ratio:.2f}x", 0.75 <= ratio <= 1.25))
    if "plan" in only:
        plan = _config_file(work, "plan", 10**9, 4.0, 0.3, 1e-4, 200)
        res = subprocess.run([SWARM, "plan", str(plan), "--nodes", "100", "--node-memory",
                              "128"], capture_output=True, text=True, cwd=ROOT)
        print("\nswarm plan: IC on ER n=1e9, c=4, 200 shards, 100 nodes of 128 GiB")
        print(res.stdout.rstrip())
    print()
    print(_render(["target", "measured", "met"],
                  [[t, m, "yes" if ok else "NO"] for t, m, ok in targets], args.markdown))
    return 0


def shutil_rm(path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
