"""The loop over steps: barrier, metrics rows, checkpoints, restarts, stop on Ctrl-C.

Each step the driver asks every shard to run its round, passing it the
object refs of the messages other shards addressed to it in the previous
step (the exchange, shard to shard), then waits for the tiny per-shard
summaries (the barrier) to update progress, decide on early stop and record
a metrics row. It submits step t+1 before waiting on step t, and a lone
shard, which has nobody to exchange with, runs a batch of steps per call.
Every ``checkpoint.every`` steps the shards write their state; when a shard
or its node dies the driver restarts all shards from the last complete
checkpoint (bounded by ``fault_tolerance.max_restarts``), and Ctrl-C stops
after the current step with a checkpoint that ``swarm resume`` continues.
"""

from __future__ import annotations

import functools
import inspect
import signal
import sys
import threading
import time

from swarm import checkpoint as ckpt
from swarm.config import RunConfig
from swarm.envs.base import ENV_REGISTRY
from swarm.errors import RunInterrupted, ShardFailure
from swarm.eventlog import chunk_number
from swarm.executors import is_recoverable, make_shards, put_specs
from swarm.lease import Lease
from swarm.metrics import metric_columns, record, row, timing_columns, write_metrics
from swarm.rundir import METRICS, STATE, TIMINGS, write_manifest
from swarm.shard import is_quiescent
from swarm.storage import RunStore

__all__ = ["Driver", "SigintToStop", "drop_chunks_after", "kept"]


class SigintToStop:
    """Ctrl-C asks the driver to stop after the current step and write a checkpoint;
    a second Ctrl-C stops at once. Only the main thread can take signals."""

    def __init__(self, driver: Driver):
        self.driver = driver

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.driver.stop_requested:
            raise KeyboardInterrupt
        self.driver.stop_requested = True
        print("\nstopping after this step and writing a checkpoint "
              "(Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        return False


class Driver:
    """The loop over steps: barrier, metrics rows, checkpoints, restarts, stop on Ctrl-C."""

    #: Seconds between manifest writes that only add newly written chunks.
    manifest_interval = 5.0

    def __init__(self, config: RunConfig, store: RunStore, manifest: dict, specs, backend: str,
                 n: int, progress: bool | None, on_step, lease: Lease):
        self.config, self.store, self.manifest = config, store, manifest
        self.lease = lease
        # Checkpoint files and log positions the shards reported, per step, until
        # every shard has written and the checkpoint is declared complete.
        self._pending: dict[int, dict] = {}
        self._manifest_written = time.monotonic()
        self._unsaved = False
        self.backend, self.n, self.on_step = backend, n, on_step
        self.show = sys.stderr.isatty() if progress is None else progress
        self.every = config.checkpoint.every
        env_cls = ENV_REGISTRY[config.env.kind]
        derive = env_cls.derive_metrics
        # An env written before derive_metrics took the config still works.
        takes_config = "config" in inspect.signature(derive).parameters
        self.derive = functools.partial(derive, config=config.env) if takes_config else derive
        self.reductions = env_cls.metrics
        self.restarts = 0
        self.prior_restarts = manifest.get("restarts", 0)  # from before a resume
        self.checkpoint_driver_seconds = 0.0
        self.stop_requested = False
        self.stop_reason = "max_steps"
        self.run_seconds = 0.0
        self.shards = None
        self.last_checkpoint: int | None = manifest.get("checkpoint", {}).get("step")
        # Kept where restarts can re-create shards from them (Ray's object store).
        self.specs = put_specs(backend, specs)

    def _make_shards(self, restore_step: int | None, restore_files: tuple[str, ...] = ()):
        return make_shards(self.backend, self.specs, restore_step,
                           f"swarm-{self.manifest['run_id']}-a{self.restarts}", restore_files)

    def start(self, restore_step: int | None, rows: list[dict],
              restore_files: tuple[str, ...] = ()) -> None:
        self.rows = rows
        self.start_step = 0 if restore_step is None else restore_step + 1
        self.shards = self._make_shards(restore_step, restore_files)

    # -- the manifest's list of files ----------------------------------------------

    def absorb(self, summaries: list[dict], step: int | None = None) -> None:
        """Take the file records from shard summaries (event chunks, checkpoint files)."""
        for s in summaries:
            self.absorb_files(s.get("files", ()))
            if "checkpoint_files" in s:
                at = s.get("checkpoint", step)
                pending = self._pending.setdefault(at, {"files": {}, "log": {}})
                pending["files"].update((f["path"], record(f)) for f in s["checkpoint_files"])
                pending["log"][str(s["shard"])] = s["log"]["parts"]

    def absorb_files(self, files, save: bool = True) -> None:
        """List finished chunks; write the manifest when the last write is a while ago
        (``save=False`` on the way out of a failure, which writes it once, marked)."""
        for f in files:
            self.manifest["files"][f["path"]] = record(f)
            self._unsaved = True
        if save and self._unsaved and (time.monotonic() - self._manifest_written
                                       > self.manifest_interval):
            self._save()

    def _save(self) -> None:
        self.lease.check()
        write_manifest(self.store, self.manifest)
        self._manifest_written, self._unsaved = time.monotonic(), False

    def loop(self) -> None:
        bar = Progress(self.config.steps, self.n) if self.show else None
        t0 = time.perf_counter()
        try:
            # A resume may find nothing left: all steps run, or the checkpoint's step
            # was the quiescent one the run stopped at.
            while self.start_step < self.config.steps and not (
                    self.rows and is_quiescent(self.rows[-1])):
                try:
                    if self.config.shards == 1:
                        self._loop_single(bar)
                    else:
                        self._loop_exchange(bar)
                    break
                except Exception as exc:
                    if not self._recoverable(exc):
                        raise
                    self._restart(exc)
        finally:
            if bar:
                bar.close()
            self.run_seconds = time.perf_counter() - t0
        if self.rows:
            last = self.rows[-1]
            if is_quiescent(last):
                self.stop_reason = "quiescent"

    # -- steps -------------------------------------------------------------------

    def _emit(self, row: dict, bar) -> bool:
        self.rows.append(row)
        if bar:
            bar.update(row["step"], row)
        if self.on_step:
            self.on_step(row)
        return is_quiescent(row)

    def _due(self, step: int) -> bool:
        return self.every > 0 and (step + 1) % self.every == 0

    def _loop_single(self, bar) -> None:
        # One shard exchanges with nobody: it runs a batch of steps per call (up
        # to a quarter second) and the driver's round trip is paid per batch.
        step, steps = self.start_step, self.config.steps
        while step < steps:
            batch = self.shards.run_steps(step, steps - step, self.every)
            for s in batch:
                self.absorb([s])
                done = self._emit(row(s["step"], [s], s["seconds"], self.derive,
                                      self.reductions), bar)
                if "checkpoint" in s:
                    self._checkpoint_complete(s["step"])
                if done:
                    return
            step += len(batch)
            if self.stop_requested and step < steps:
                self._stop(step - 1)

    def _loop_exchange(self, bar) -> None:
        # Step t+1 is submitted on step t's outbox refs before the driver waits
        # for step t's summaries, so the barrier's round trip overlaps the work.
        # If step t turns out quiescent, step t+1 finds nothing to do (by the env
        # contract) and its results are dropped.
        steps = self.config.steps
        t_prev = time.perf_counter()
        step = self.start_step
        handle = self.shards.submit(step, None, self._due(step))
        while step < steps:
            ahead = None
            if self.shards.pipelined and step + 1 < steps and not self.stop_requested:
                ahead = self.shards.submit(step + 1, [list(r[1:]) for r in handle],
                                           self._due(step + 1))
            summaries, outs = self.shards.collect(handle)
            self.absorb(summaries)
            now = time.perf_counter()
            done = self._emit(row(step, summaries, now - t_prev, self.derive, self.reductions), bar)
            if "checkpoint" in summaries[0]:
                self._checkpoint_complete(step)
            if done:
                if ahead is not None:
                    # Nothing happened in the step run ahead, but it may have
                    # flushed buffered events: its chunks belong in the manifest.
                    self.absorb(self.shards.collect(ahead)[0])
                return
            t_prev = now
            if self.stop_requested:
                if ahead is not None:  # finish the step already under way
                    step += 1
                    summaries, _ = self.shards.collect(ahead)
                    self.absorb(summaries)
                    done = self._emit(row(step, summaries, time.perf_counter() - t_prev,
                                           self.derive, self.reductions), bar)
                    if "checkpoint" in summaries[0]:
                        self._checkpoint_complete(step)
                    if done:
                        return
                if step >= steps - 1:  # nothing was left to stop: the run is complete
                    return
                self._stop(step)
            step += 1
            if step < steps:
                handle = ahead if ahead is not None else self.shards.submit(
                    step, outs, self._due(step))

    # -- checkpoints, stops and restarts -------------------------------------------

    def _checkpoint_complete(self, step: int) -> None:
        """Every shard wrote step ``step``: record it with its files, keep the previous one
        (a resume falls back to it if this one is damaged), drop older ones."""
        t0 = time.perf_counter()
        snapshot = write_metrics(self.store, f"{ckpt.step_dir(step)}/metrics.arrow",
                                  self.rows[: step + 1],
                                  metric_columns(ENV_REGISTRY[self.config.env.kind]),
                                  timing_columns(ENV_REGISTRY[self.config.env.kind]))
        pending = self._pending.pop(step, {"files": {}, "log": {}})
        self._pending = {k: v for k, v in self._pending.items() if k > step}
        pending["files"][snapshot["path"]] = record(snapshot)
        self.last_checkpoint = step
        previous = self.manifest.get("checkpoint")
        self.manifest["previous_checkpoint"] = previous if previous and previous["step"] < step \
            else None
        self.manifest["checkpoint"] = {"step": step, "path": ckpt.step_dir(step),
                                       "unix": time.time(), **pending}
        self._save()
        # Only older ones: with every=1 the next step's checkpoint may be being
        # written right now (the driver runs one step ahead).
        keep = self.manifest["previous_checkpoint"]["step"] if self.manifest[
            "previous_checkpoint"] else step
        for name in self.store.listdir(STATE):
            if name.startswith("step=") and int(name[5:]) < keep:
                self.store.delete(f"{STATE}/{name}")
        self.checkpoint_driver_seconds += time.perf_counter() - t0

    def drop_unfinished_checkpoints(self) -> None:
        """A step run ahead of a quiescent one may have started a checkpoint; drop it."""
        last = -1 if self.last_checkpoint is None else self.last_checkpoint
        for name in self.store.listdir(STATE):
            if name.startswith("step=") and int(name[5:]) > last:
                self.store.delete(f"{STATE}/{name}")

    def _stop(self, step: int) -> None:
        """Ctrl-C: write a checkpoint of the last finished step and stop."""
        if self.last_checkpoint != step:
            self.absorb(self.shards.checkpoint(step), step)
            self._checkpoint_complete(step)
        raise RunInterrupted(
            f"interrupted after step {step}; checkpoint written. Continue with: "
            f"swarm resume {self.store.uri}", self.store.uri, step)

    def _recoverable(self, exc: Exception) -> bool:
        return is_recoverable(self.backend, exc)

    def _restart(self, exc: Exception) -> None:
        self.shards.kill()
        self.shards = None
        limit = self.config.fault_tolerance.max_restarts
        where = (f"the checkpoint of step {self.last_checkpoint}"
                 if self.last_checkpoint is not None else "step 0 (no checkpoint yet)")
        keep = 0 if self.last_checkpoint is None else self.last_checkpoint + 1
        del self.rows[keep:]
        self.start_step = keep
        # The new shards delete the chunks written after the checkpoint; so does the list.
        checkpoint = self.manifest.get("checkpoint") if self.last_checkpoint is not None else None
        drop_chunks_after(self.manifest["files"], (checkpoint or {}).get("log", {}))
        self._pending.clear()
        files = tuple((checkpoint or {}).get("files", {}))
        while self.shards is None:  # a start that fails (no room yet) uses a restart too
            self.restarts += 1
            self.manifest["restarts"] = self.prior_restarts + self.restarts
            self._save()
            if self.restarts > limit:
                raise ShardFailure(
                    f"a shard died ({type(exc).__name__}: {exc}) and "
                    f"fault_tolerance.max_restarts={limit} restarts are used up. Fix the "
                    f"cause, then continue from {where} with: swarm resume {self.store.uri}"
                ) from exc
            print(f"shard failure ({type(exc).__name__}); restart {self.restarts}/{limit} "
                  f"from {where}", file=sys.stderr, flush=True)
            try:
                self.shards = self._make_shards(self.last_checkpoint, files)
            except Exception as again:
                if not self._recoverable(again):
                    raise
                exc = again


def kept(rel: str, log: dict) -> bool:
    """Whether event chunk ``rel`` precedes the log position ``log`` ({shard: parts})."""
    if not rel.startswith("events/shard="):
        return True
    shard = rel.split("/", 2)[1].removeprefix("shard=")
    return chunk_number(rel) < int(log.get(shard, 0))


def drop_chunks_after(files: dict[str, dict], log: dict) -> None:
    for rel in [rel for rel in files if not kept(rel, log)]:
        del files[rel]
    files.pop(METRICS, None)  # rewritten when the run completes
    files.pop(TIMINGS, None)


class Progress:
    """A rich progress bar: steps done, active agents, agent-steps per second."""

    def __init__(self, steps: int, n: int):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.n = n
        self.t0 = time.perf_counter()
        self.progress = Progress(
            TextColumn("[bold]step {task.completed}/{task.total}"),
            BarColumn(),
            TextColumn("active {task.fields[active]:,}"),
            TextColumn("{task.fields[rate]} agents/s"),
            TimeElapsedColumn(),
            transient=False,
        )
        self.task = self.progress.add_task("run", total=steps, active=0, rate="-")
        self.progress.start()

    def update(self, step: int, row: dict) -> None:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        rate = self.n * (step + 1) / elapsed
        self.progress.update(self.task, completed=step + 1, active=row["active"],
                             rate=f"{rate:,.0f}")

    def close(self) -> None:
        self.progress.stop()
