"""The run harness: the plumbing around a training loop, written once for both entry scripts.

    with Run(cfg.run, cfg, wandb=cfg.wandb, name="...", entry="train_bc", inputs=[...]) as run:
        ...build data, model, optimizer: any of it may still refuse; nothing is written yet
        restored = run.track(model, optimizer)     # the checkpoint, when resuming
        logger = run.open(facts, components)       # only now is the run directory written
        with run.stop_signal() as stop:
            for step in ...:
                ...
                skipped = run.check_finite(where)  # at sync points
                run.save(step, rank_state, shared)
                if run.should_stop(stop, sync_point): run.stopped(stop, step)  # raises
        run.evaluate(step, evaluate_fn)            # a failure costs no trained weights

What it owns: world and device (torchrun or a world of one), threads and seeds, the run
directory (choose, refuse, overwrite only a run of ours and only after every input is
checked, one process at a time), the resume check (same settings as the saved
config.json, bar an allow-list, each accepted change recorded under `resumes`; made before
anything is read or built, and no pretrained weights are loaded for a model whose
checkpoint replaces them), how the run ended (`outcome.json`, training/run_outcome.py), the
machine record (config.json `machine`; each resume's own, with a note when it changed:
runs repeat bit for bit only on one CPU type), the logger, the parameter report,
checkpoints in one layout, the non-finite gradient message, signals in every phase (the
training loop polls a flag; elsewhere a signal raises StopRequested) with one line saying
what was kept and how to go on, and closing all of it, also when the run fails.

Checkpoint layout (read with `weights_only=True`): `model`, `optimizer`, `step`, `config`,
`rng`, `frozen`, and `extra = {"ranks": [per-process state, rank order; each has "rng"],
"skipped_nonfinite_steps": int, **the entry script's own state}`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from tqdm import tqdm

from encoders.weights import weights_from_checkpoint
from training.checkpoint import (
    load_checkpoint,
    load_model_state,
    load_optimizer_state,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from training.device import resolve_device
from training.distributed import (
    broadcast_object,
    close_world,
    gather_objects,
    init_world,
    stop_agreed,
)
from training.guards import (
    NonFiniteGradient,
    NonFiniteGuard,
    StopOnSignal,
    StopRaises,
    StopRequested,
    signal_of,
)
from training.logger import RunLogger, WandbConfig
from training.machine import describe_machine, machine_kind
from training.parameter_report import encoder_weight_sources, parameter_report
from training.precision import describe_precision, resolve_precision
from training.run_dir import (
    ReplacedRun,
    RunDirError,
    RunDirLock,
    choose_run_dir,
    write_marker,
)
from training.run_outcome import write_outcome
from training.seeding import seed_everything
from training.settings import RunSettings, flag_values, resume_changes

T = TypeVar("T")


class EvaluationFailed(Exception):
    """An evaluation crashed; the trained weights were saved first (one line says where)."""


class RunStopped(Exception):
    """A signal stopped the run; the message (rank 0's; empty on the others) says what was
    kept and how to continue. The entry exits with run_outcome.EXIT_STOPPED."""


@dataclass
class Restored:
    """What a resumed run gets back from its checkpoint (RNG states are already restored)."""

    step: int
    extra: dict[str, Any]
    """The entry script's own state, as it passed it to `save(shared=...)`."""
    rank: dict[str, Any] | None
    """This process's state as saved; None when the checkpoint was written by another
    number of processes (the entry decides whether it can go on)."""
    saved_ranks: int


def upgrade_legacy_extra(ckpt: dict[str, Any]) -> dict[str, Any]:
    """`extra` in today's layout, from a checkpoint written before the harness.

    Old train_bc.py checkpoints kept per-rank RNGs in `rank_rng` (or only the top-level
    `rng`) and the skipped-step count as `skipped_nonfinite`.
    """
    extra = ckpt.get("extra")
    if not isinstance(extra, dict):
        raise ValueError("its 'extra' entry is not a dict")
    extra = dict(extra)
    if "ranks" not in extra:
        rngs = extra.pop("rank_rng", [ckpt.get("rng")])
        extra["ranks"] = [{"rng": rng} for rng in rngs]
    if "skipped_nonfinite" in extra:
        extra["skipped_nonfinite_steps"] = extra.pop("skipped_nonfinite")
    ranks = extra["ranks"]
    if not isinstance(ranks, list) or not all(isinstance(r, dict) and "rng" in r for r in ranks):
        raise ValueError("its per-process states (extra['ranks']) are missing or malformed")
    extra.setdefault("skipped_nonfinite_steps", 0)
    return extra


def input_paths(config: Any) -> list[Path]:
    """Files and directories the config names (dataset, weights, stage-1 checkpoint, ...).

    Every string setting that names an existing path counts, so that --overwrite never
    deletes an input a new setting adds; `PATH::PREFIX` weights count by their PATH.
    """
    paths = []
    for flag, value in flag_values(config).items():
        if flag == "output_dir" or not isinstance(value, str) or not value:
            continue
        path = Path(value.partition("::")[0]).expanduser()
        if path.exists():
            paths.append(path)
    return paths


class Run:
    """One training run's plumbing; a context manager that always cleans up."""

    def __init__(
        self,
        settings: RunSettings,
        config: Any,
        *,
        wandb: WandbConfig,
        name: str,
        entry: str,
        inputs: Iterable[str | Path | None] = (),
        bf16_hazard: str | None = None,
        cpu_bf16_slower: str | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.wandb = wandb
        self.entry = entry
        self.world, self.device = init_world(resolve_device(settings.device))
        self.precision = resolve_precision(settings.precision, self.device, bf16_hazard,
                                           cpu_bf16_slower)
        if self.world.is_main:
            tqdm.write(describe_precision(settings.precision, self.precision, self.device,
                                          bf16_hazard, cpu_bf16_slower))
        if settings.threads > 0:
            torch.set_num_threads(settings.threads)
        seed_everything(settings.seed)  # the same initial weights on every rank
        self.logger: RunLogger | None = None
        self.guard: NonFiniteGuard | None = None
        self._lock: RunDirLock | None = None
        self._replaced: ReplacedRun | None = None
        self._tracked: tuple[nn.Module, torch.optim.Optimizer] | None = None
        self._saved_step: int | None = None
        self._changes: dict[str, tuple[Any, Any]] = {}
        self._made_dir = False  # this process created the run directory (a new run)
        # Until the training loop polls for signals, a signal raises StopRequested.
        self._stop_raises = StopRaises().__enter__()
        self._restoring: contextlib.AbstractContextManager | None = None
        try:
            self._choose_dir(name, [*[i for i in inputs if i], *input_paths(config)])
            if settings.resume:  # before any checkpoint is read or any weight loaded
                self._changes = self._on_main(self._check_resume)
                # The model gets every weight from the checkpoint: load (or download) none.
                self._restoring = weights_from_checkpoint()
                self._restoring.__enter__()
        except BaseException:
            self.close()
            raise

    def _choose_dir(self, name: str, inputs: list[str | Path]) -> None:
        settings = self.settings
        self.dir = self._on_main(
            lambda: choose_run_dir(
                settings.output_dir,
                name,
                resume=settings.resume,
                overwrite=settings.overwrite,
                inputs=inputs,
            )
        )
        self.ckpt_path = self.dir / "checkpoints" / "last.pt"
        if self.dir.is_dir() and any(self.dir.iterdir()):
            # Resume or overwrite: nobody else may be in it. Rank 0 holds the lock; the
            # others learn only whether it was refused.
            self._lock = self._on_main(lambda: RunDirLock(self.dir), share_result=False)

    # ----- setup ---------------------------------------------------------------------------

    @property
    def bf16(self) -> bool:
        """Whether the forward passes run under bf16 autocast (the resolved --precision)."""
        return self.precision == "bf16"

    @property
    def channels_last(self) -> bool:
        """Whether the conv bodies are channels-last: with bf16, or asked for."""
        return self.bf16 or self.settings.channels_last

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, evaluates and writes checkpoints."""
        return self.world.is_main

    def _on_main(self, fn: Callable[[], Any], share_result: bool = True) -> Any:
        """fn() on rank 0; its error (and its result, unless share_result is False: the
        others get None) on every rank, so that no rank waits alone for a collective."""
        if not self.world.enabled:
            return fn()
        result, error = None, None
        if self.world.is_main:
            try:
                result = fn()
            except (ValueError, FileNotFoundError, FileExistsError, RunDirError) as err:
                error = err
        shared, error = broadcast_object((result if share_result else None, error), self.world)
        if error is not None:
            raise error
        return result if self.world.is_main else shared

    def _check_resume(self) -> dict[str, tuple[Any, Any]]:
        path = self.dir / "config.json"
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"--resume: cannot read {path} ({err}); the run cannot be checked "
                             f"for changed settings") from None
        return resume_changes(saved, self.config)

    def track(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> Restored | None:
        """The model and optimizer that checkpoints hold; loads them when resuming."""
        self._tracked = (model, optimizer)
        self.guard = NonFiniteGuard(optimizer, skip=self.settings.skip_nonfinite)
        self._end_restoring()
        if not self.settings.resume:
            return None
        # On the CPU: RNG states must be CPU tensors; load_state_dict moves the rest.
        ckpt = load_checkpoint(self.ckpt_path)
        try:
            extra = upgrade_legacy_extra(ckpt)
        except ValueError as err:
            raise ValueError(f"checkpoint {self.ckpt_path} is not in a known layout: {err}; "
                             f"start a new run") from None
        load_model_state(model, ckpt["model"], str(self.ckpt_path))
        load_optimizer_state(optimizer, ckpt["optimizer"], str(self.ckpt_path))
        ranks = extra.pop("ranks")
        own = ranks[self.world.rank] if len(ranks) == self.world.world_size else None
        if own is not None:
            restore_rng(own["rng"])
        self.guard.skipped += int(extra.pop("skipped_nonfinite_steps"))
        self._saved_step = int(ckpt["step"])
        return Restored(step=int(ckpt["step"]), extra=extra, rank=own, saved_ranks=len(ranks))

    def open(
        self, facts: dict[str, Any] | None = None, components: dict[str, nn.Module] | None = None
    ) -> RunLogger:
        """Write the run directory (every input has been accepted by now) and start logging."""
        resume_step = self._saved_step if self.settings.resume else None
        if self.is_main:
            self._make_dir()
            write_outcome(self.dir, "running", resume_step)
        self.logger = RunLogger(
            self.dir,
            self.config,
            self.wandb,
            run_name=self.dir.name,
            active=self.is_main,
            resume_step=resume_step,
        )
        if self._replaced is not None:
            self._replaced.commit()  # the new run has written its first files
            self._replaced = None
        model, optimizer = self._tracked or (None, None)
        facts = dict(facts or {})
        if model is not None:
            facts.update(encoder_weight_sources(model))
        machine = describe_machine(self.device)
        facts["resolved_precision"] = self.precision  # --precision as this device ran it
        if resume_step is None:
            facts["machine"] = machine
        elif self.is_main:  # the first machine stays; each resume says where it went on
            # The facts found when the run began stay (its weights came from the checkpoint).
            facts = {k: v for k, v in facts.items() if k not in self.logger.config}
            previous = self.logger.config.get("resumes", [])
            record = {"step": resume_step, "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "machine": machine,
                      "changed": {k: list(v) for k, v in self._changes.items()
                                  if k not in ("output_dir", "resume", "overwrite")}}
            facts["resumes"] = [*previous, record]
            tqdm.write(f"resumed from {self.ckpt_path} at step {resume_step}")
            before = self.logger.config.get("resolved_precision", "fp32")  # older runs: fp32
            if before != self.precision:
                tqdm.write(f"note: this run began in {before} and goes on in {self.precision} "
                           f"(--precision); it will not repeat bit for bit")
                record["resolved_precision"] = [before, self.precision]
            began = self.logger.config.get("machine")
            if began and machine_kind(began) != machine_kind(machine):
                tqdm.write(f"note: this run began on {machine_kind(began)} and goes on on "
                           f"{machine_kind(machine)}; it will not repeat bit for bit "
                           f"(docs/reliability.md, determinism across machines)")
        self.logger.add_config(facts)
        if resume_step is None and model is not None and self.is_main:
            self.logger.log(parameter_report(model, optimizer, components), step=0)
        return self.logger

    def _make_dir(self) -> None:
        try:
            if self.settings.overwrite and self.dir.is_dir() and any(self.dir.iterdir()):
                self._replaced = ReplacedRun(self.dir)  # put back if we fail before writing
            fresh = not self.dir.is_dir() or not any(self.dir.iterdir())
            self.dir.mkdir(parents=True, exist_ok=True)
            if fresh:
                write_marker(self.dir, self.entry)
                self._made_dir = True
            if self._lock is None or self._replaced is not None:
                old, self._lock = self._lock, RunDirLock(self.dir)
                if old is not None:
                    old.release()
        except OSError as err:
            raise RunDirError(self._os_message(err, f"cannot write the run directory {self.dir}",
                                               "choose a writable --output_dir")) from None

    # ----- during training -------------------------------------------------------------------

    def check_finite(self, where: Callable[[int | None], str]) -> int:
        """Steps skipped so far; raises one line if a gradient was non-finite (unless skipping).

        `where(first_bad_step)` says where it happened (e.g. "step 8", "iteration 3 (step 24)").
        """
        assert self.guard is not None, "call track() first"
        try:
            return self.guard.check()
        except NonFiniteGradient as err:
            kept = self._saved_step
            kept = "none yet" if kept is None else f"{self.ckpt_path} (step {kept})"
            raise NonFiniteGradient(
                f"{where(err.step)}: {err}; weights held at the step before, last good "
                f"checkpoint: {kept}; rerun with --skip_nonfinite=True to skip such steps"
            ) from None

    def save(
        self,
        step: int,
        rank_state: dict[str, Any] | None = None,
        shared: dict[str, Any] | None = None,
    ) -> None:
        """Write checkpoints/last.pt atomically; every rank's state goes in (a collective)."""
        assert self._tracked is not None and self.guard is not None, "call track() first"
        model, optimizer = self._tracked
        ranks = gather_objects({"rng": rng_state(), **(rank_state or {})}, self.world)
        if self.is_main:
            skipped = int(self.guard.skipped)  # a host read, at a save only
            extra = {"ranks": ranks, "skipped_nonfinite_steps": skipped, **(shared or {})}
            try:
                save_checkpoint(self.ckpt_path, model=model, optimizer=optimizer, step=step,
                                config=self.config, extra=extra)
            except OSError as err:
                kept = ("no earlier checkpoint" if self._saved_step is None
                        else f"the previous one (step {self._saved_step}) is intact")
                raise RunDirError(self._os_message(
                    err, f"could not write checkpoint {self.ckpt_path} at step {step}",
                    f"{kept}; free space or fix permissions, then --resume=True")) from None
        self._saved_step = step

    @staticmethod
    def _os_message(err: OSError, what: str, remedy: str) -> str:
        reason = "no space left on device" if err.errno == errno.ENOSPC else (
            err.strerror or type(err).__name__)
        return f"{what}: {reason}; {remedy}"

    def stop_signal(self) -> StopOnSignal:
        """SIGINT / SIGTERM set a flag that the loop reads at the end of a step."""
        return StopOnSignal()

    def should_stop(self, stop: StopOnSignal, sync_point: bool) -> bool:
        """Whether to stop after this step (with several processes: all at a sync point)."""
        return stop_agreed(stop.requested is not None, self.world, self.device, sync_point)

    def stopped(self, stop: StopOnSignal, step: int) -> None:
        """End the run after the checkpoint of `step`: raises RunStopped, whose one line
        says where the weights are and how to go on."""
        signal_name = stop.requested or "stop signal"
        if not self.is_main:
            raise RunStopped("")
        write_outcome(self.dir, "stopped", step, signal_name)
        raise RunStopped(f"{signal_name} at step {step}: wrote {self.ckpt_path}; "
                         f"continue with {self.resume_hint()}")

    def resume_hint(self) -> str:
        """The flags that continue this run, as a user types them."""
        return f"--output_dir={self.dir} --resume=True"

    def evaluate(self, step: int, evaluate: Callable[[], T]) -> T:
        """Run an evaluation; if it fails, say so in one line naming the saved weights.

        Entry scripts save before they evaluate, so a crashing evaluator costs no training.

        The RNG states are put back afterwards, so that evaluating (or not) never changes
        the training that follows, and a resumed run continues exactly.
        """
        before = rng_state()
        try:
            return evaluate()
        except Exception as err:  # a crashing evaluator (robosuite, EGL, a worker) of any kind
            reason = (str(err).strip().splitlines() or [""])[0][:200]
            saved = (f"the trained weights are saved in {self.ckpt_path} (step {self._saved_step})"
                     if self._saved_step is not None else "no checkpoint was written yet")
            raise EvaluationFailed(
                f"evaluation at step {step} failed ({type(err).__name__}: {reason}); {saved}; "
                f"set RLENC_TRACEBACK=1 for the traceback"
            ) from err
        finally:
            restore_rng(before)

    # ----- the end -----------------------------------------------------------------------------

    def _end_restoring(self) -> None:
        if self._restoring is not None:
            self._restoring.__exit__(None, None, None)
            self._restoring = None

    def _ended(self, error: BaseException | None) -> BaseException | None:
        """Record how the run ended (rank 0, once its directory exists); returns what to
        raise instead of `error`: a stop outside the loop becomes RunStopped, one line."""
        written = self.is_main and self.logger is not None
        if error is None or isinstance(error, RunStopped):
            if written and error is None:
                write_outcome(self.dir, "finished", self._saved_step)
            return error
        if not isinstance(error, (StopRequested, KeyboardInterrupt)):
            if written:
                reason = (str(error).strip().splitlines() or [""])[0][:300]
                write_outcome(self.dir, "failed", self._saved_step,
                              f"{type(error).__name__}: {reason}")
            return error
        signal_name = signal_of(error)
        kept = error.kept if isinstance(error, StopRequested) else None
        kept = f": {kept}" if kept else ""
        if not self.is_main:
            return RunStopped("")
        if self._saved_step is not None:
            write_outcome(self.dir, "stopped", self._saved_step, signal_name)
            return RunStopped(f"{signal_name} outside the training loop{kept}; the weights of "
                              f"step {self._saved_step} are in {self.ckpt_path}; continue "
                              f"with {self.resume_hint()}")
        if self.settings.resume:  # stopped before its checkpoint was read: nothing changed
            return RunStopped(f"{signal_name} before the run went on{kept}; {self.ckpt_path} "
                              f"is as it was; continue with {self.resume_hint()}")
        removed = ""
        if self._made_dir:  # it holds nothing but its settings: the same command starts over
            self.close_logger()
            shutil.rmtree(self.dir, ignore_errors=True)
            self._made_dir = False
            removed = f" ({self.dir}, which held only the run's settings, was removed)"
        return RunStopped(f"{signal_name} before the first checkpoint{kept}; rerun the same "
                          f"command to go on{removed}")

    def close_logger(self) -> None:
        if self.logger is not None:
            self.logger.close()
            self.logger = None

    def close(self) -> None:
        """Finish logging, leave the process group, release the directory."""
        self._end_restoring()
        if self._replaced is not None:  # failed before the new run wrote anything
            self._replaced.restore()
            self._replaced = None
        self.close_logger()
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        close_world(self.world)
        self._stop_raises.__exit__(None, None, None)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind: object, error: BaseException | None, tb: object) -> None:
        try:
            instead = self._ended(error)
        finally:
            self.close()
        if instead is not error:
            raise instead from None
