"""A study: one entry script run over seeds x a grid of flag values, resumable, with a manifest.

    python -m training.sweep --entry train_ppo.py --sweep_dir runs/study1 --seeds 0 1 2 \\
        --grid backbone.freeze_mode=all,until_layer3,last_block -- --ppo.total_timesteps=200000
    python -m training.report runs/study1

Everything after `--` is passed to every run ("fixed flags"), with `{seed}` replaced by
the run's seed (a two-stage study: `--agent.encoder_checkpoint=runs/stage1/seed={seed}/
checkpoints/last.pt` gives each stage-2 seed the stage-1 run of the same seed); each
`--grid FLAG=V1,V2,...` adds a dimension (values hold no commas). The sweep sets each run's
`--seed`, `--output_dir`, `--threads` and, unless the fixed flags do, `--wandb.group` (the
sweep directory's name), so the fixed flags may not set the first three.

Before anything runs or is written, every run's full command line is parsed by the
entry's own `parse_args` (training/study_flags.py): an unknown or invalid flag is one line.

What a sweep writes under --sweep_dir:

    sweep.json                       the manifest: entry, grid, seeds, fixed flags (as given
                                     and as parsed), and per run its directory, flags, status,
                                     exit code, attempts, log; every path in it relative (cwd:
                                     to the sweep directory; entry and flags: to cwd), so a
                                     copied study reads the same in any checkout
    agent.lr=0.001/seed=0/           the entry's run directory (run.json, config.json,
                                     metrics.jsonl, checkpoints/last.pt, outcome.json ...)
    agent.lr=0.001/seed=0.log        the run's stdout and stderr, every attempt appended
    submitit/                        --launcher=slurm: submitit's job files and logs

A run is finished when its own record says so (`outcome.json`, training/run_outcome.py),
never by what it printed.

Logs and markers sit beside the run directory, not in it: the harness starts a new run
only in an empty directory and replaces one (`--overwrite`) only if it holds nothing but
its own files. With several grid flags the directories nest (`a=1/b=x/seed=0`).

Running the same command again continues the study: finished runs are skipped, a run with
a checkpoint is resumed (`--resume=True`), a run directory without one is restarted
(`--overwrite=True`), the rest start. Seeds and grid values may be added; a different
entry, other grid flags or fixed flags that set other values for the same --sweep_dir are
refused (one line naming each field), so that one study never mixes two experiments.
SIGINT/SIGTERM stops the sweep: running runs get SIGTERM (they checkpoint and stop) and
resume on the next run of the sweep.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import IO, Annotated, Any, Literal
from urllib.parse import quote

import tyro

from training.cli import flag_value, parse_config, run_main
from training.machine import usable_cores
from training.run_outcome import EXIT_STOPPED, read_outcome, run_finished
from training.study_flags import (
    EntryParser,
    check_runs,
    entry_parser,
    fixed_values,
    values_difference,
)

MANIFEST = "sweep.json"
# Flags each run gets from the sweep (and which the fixed flags therefore may not set).
SWEEP_OWNED = ("seed", "output_dir", "resume", "overwrite", "threads")
GRID_FLAG = re.compile(r"[A-Za-z_][\w.]*")


@dataclass(frozen=True)
class SlurmSettings:
    """Slurm resources of each run (--launcher=slurm)."""

    partition: str | None = None
    """Slurm partition; None = the cluster's default."""
    time_min: int = 24 * 60
    """Time limit of each run, minutes."""
    gpus: int = 0
    """GPUs per run."""
    mem_gb: float | None = None
    """Memory per run, GB; None = the partition's default."""


@dataclass(frozen=True)
class SweepConfig:
    """Run one entry script over seeds x a grid; flags after `--` go to every run."""

    entry: str
    """The entry script: train_bc.py or train_ppo.py (a path)."""
    sweep_dir: str
    """The study's directory: one run directory per (grid values, seed), and sweep.json."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Seeds of every configuration (a claim needs at least 3)."""
    grid: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """FLAG=V1,V2,... (the flag as the entry spells it, without --); repeat for more flags."""
    jobs: int = 0
    """Runs at once (local); 0 = one per GPU when CUDA is visible, else cores // threads."""
    threads: int = 0
    """CPU threads per run (--threads of the entry); 0 = cores // jobs (at least 1)."""
    launcher: Literal["local", "slurm"] = "local"
    """local: subprocesses of this process; slurm: jobs submitted with submitit."""
    slurm: SlurmSettings = SlurmSettings()
    """Slurm resources (--launcher=slurm)."""
    dry_run: bool = False
    """Print what would run (and how: new, resume, restart, skip) and write nothing."""


@dataclass
class RunSpec:
    """One run of the study: a grid point and a seed."""

    name: str
    """Its path under the sweep directory, e.g. "agent.lr=0.001/seed=0"."""
    config: dict[str, str]
    seed: int
    flags: list[str]
    """Everything the entry gets, bar the per-attempt --threads / --resume / --overwrite."""

    def dir(self, root: Path) -> Path:
        return root / self.name

    def log(self, root: Path) -> Path:
        return root / f"{self.name}.log"


# ----- the plan ------------------------------------------------------------------------------


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """The sweep's own flags and the fixed flags (everything after the first `--`)."""
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def flag_name(arg: str) -> str | None:
    """`--agent.lr=0.1` -> "agent.lr"; None for a value."""
    return arg[2:].partition("=")[0] if arg.startswith("--") and len(arg) > 2 else None


def parse_grid(items: Sequence[str]) -> dict[str, list[str]]:
    """["agent.lr=0.1,0.3", ...] -> {"agent.lr": ["0.1", "0.3"]}; ValueError when malformed."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.removeprefix("--")
        if not sep or not GRID_FLAG.fullmatch(key):
            raise ValueError(f"--grid {item!r}: expected FLAG=V1,V2,... (e.g. "
                             f"--grid agent.lr=0.001,0.0003)")
        listed = values.split(",")
        if any(not v.strip() for v in listed):
            raise ValueError(f"--grid {item!r}: an empty value; expected FLAG=V1,V2,...")
        if len(set(listed)) < len(listed):
            raise ValueError(f"--grid {item!r}: a value is listed twice")
        if key in grid:
            raise ValueError(f"--grid {key} is given twice; list all its values in one --grid")
        if key in SWEEP_OWNED:
            raise ValueError(f"--grid {key}: the sweep sets --{key} itself"
                             + (" (use --seeds)" if key == "seed" else ""))
        grid[key] = listed
    return grid


def check_fixed(fixed: Sequence[str], grid: dict[str, list[str]]) -> None:
    """The fixed flags may not set what the sweep sets per run, nor a grid flag."""
    for arg in fixed:
        name = flag_name(arg)
        if name in SWEEP_OWNED:
            hint = {"seed": "use --seeds", "threads": "use the sweep's --threads"}.get(
                name, "the sweep chooses each run's directory")
            raise ValueError(f"fixed flag {arg}: the sweep sets --{name} for every run ({hint})")
        if name in grid:
            raise ValueError(f"--{name} is both a fixed flag and a --grid flag; keep one")


def plan(grid: dict[str, list[str]], seeds: Sequence[int], fixed: Sequence[str],
         root: Path, cwd: Path | None = None) -> list[RunSpec]:
    """Every (grid point, seed) as a run, grid-major, in the order given; each run's
    --output_dir relative to `cwd`, where the runs start (default: as `root` is given)."""
    group = [] if any(flag_name(a) == "wandb.group" for a in fixed) else [
        f"--wandb.group={root.name}"]
    runs = []
    for values in product(*grid.values()):
        config = dict(zip(grid, values, strict=True))
        # Readable names; "/" in a value (a path) must not nest directories.
        parts = [f"{k}={quote(v, safe='=.,+-_:@')}" for k, v in config.items()]
        for seed in seeds:
            name = "/".join([*parts, f"seed={seed}"])
            own = [arg.replace("{seed}", str(seed)) for arg in fixed]
            output_dir = root / name if cwd is None else relative(root / name, cwd)
            flags = [*own, *(f"--{k}={v}" for k, v in config.items()), f"--seed={seed}",
                     f"--output_dir={output_dir}", *group]
            runs.append(RunSpec(name, config, seed, flags))
    return runs


# ----- the manifest ----------------------------------------------------------------------------


def relative(path: Path, start: Path) -> str:
    """`path` as seen from `start` (both absolute): what the manifest stores."""
    return os.path.relpath(path, start)


def study_cwd(root: Path, manifest: dict[str, Any]) -> Path:
    """Where the study's runs start (its relative flags and entry are read from there)."""
    return (root / manifest["cwd"]).resolve()


def merge_manifest(root: Path, entry: Path, grid: dict[str, list[str]], seeds: Sequence[int],
                   fixed: Sequence[str], parse: EntryParser) -> dict[str, Any]:
    """The manifest for this invocation: the saved one extended, or a new one (unwritten).

    Raises ValueError (one line) when it would mix experiments: another entry, other grid
    flags, fixed flags that set other values (compared as the entry parses them).
    """
    path = root / MANIFEST
    leave_out = {*SWEEP_OWNED, *grid}
    if not path.is_file():
        cwd = Path.cwd().resolve()
        return {"entry": relative(entry, cwd), "cwd": relative(cwd, root), "grid": grid,
                "seeds": list(seeds), "fixed_flags": list(fixed),
                "fixed_values": fixed_values(parse, fixed, leave_out), "created": _now(),
                "runs": {}}
    try:
        saved = json.loads(path.read_text())
        saved_entry = study_cwd(root, saved) / saved["entry"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a sweep manifest ({err}); move it away to start "
                         f"afresh") from None
    saved.setdefault("fixed_values", fixed_values(parse, saved["fixed_flags"], leave_out))
    new = {"entry": str(entry), "grid": grid, "fixed_flags": list(fixed),
           "fixed_values": fixed_values(parse, fixed, leave_out)}
    difference = study_difference({**saved, "entry": str(saved_entry)}, new,
                                  entry=lambda p: str(Path(p).resolve()))
    if difference is not None:
        raise ValueError(f"{root} {difference}; use another --sweep_dir for another experiment")
    extend_study(saved, grid, seeds)
    return saved


def extend_study(manifest: dict[str, Any], grid: dict[str, list[str]], seeds: Sequence[int]
                 ) -> None:
    """Add grid values and seeds the manifest lacks, after its own (a study grows by them)."""
    for key, values in grid.items():
        manifest["grid"][key] += [v for v in values if v not in manifest["grid"][key]]
    manifest["seeds"] += [s for s in seeds if s not in manifest["seeds"]]


def study_difference(saved: dict[str, Any], new: dict[str, Any],
                     entry: Callable[[str], str] = str) -> str | None:
    """How `new` would mix another experiment into the study `saved` describes, or None.

    Two manifests are one study when they run the same entry (compared through `entry`: the
    sweep resumes runs, so it wants the same file; a record copied elsewhere, its name) with
    the same grid flags and fixed flags that set the same values (the strings as given, for
    a manifest written before the values were kept); grid values and seeds may differ (a
    study grows by them).
    """
    if entry(saved["entry"]) != entry(new["entry"]):
        return f"is a sweep of {saved['entry']}, not {new['entry']}"
    if list(saved["grid"]) != list(new["grid"]):
        return (f"sweeps {', '.join(saved['grid']) or 'no grid flag'}, not "
                f"{', '.join(new['grid']) or 'no grid flag'}")
    if "fixed_values" in saved and "fixed_values" in new:  # as the entry parsed them
        if (difference := values_difference(saved["fixed_values"], new["fixed_values"])):
            return f"was run with other fixed flags: {difference}"
    elif saved["fixed_flags"] != new["fixed_flags"]:
        return (f"was run with the fixed flags {shlex.join(saved['fixed_flags'])!r}, not "
                f"{shlex.join(new['fixed_flags'])!r}")
    return None


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    """Atomically: a reader (the report, a second terminal) never sees half a file."""
    manifest["updated"] = _now()
    tmp = root / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, root / MANIFEST)


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def lock_sweep(root: Path) -> int:
    """One sweep process per sweep directory (a flock the kernel drops when we die)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ValueError(f"{root} is being swept by another process; wait for it or stop it"
                         ) from None
    return fd


# ----- the state of a run ----------------------------------------------------------------------


def run_state(run: RunSpec, root: Path) -> Literal["finished", "resume", "restart", "new"]:
    """What the next attempt does: skip, continue from its checkpoint, start over, or start."""
    path = run.dir(root)
    if run_finished(path):
        return "finished"
    if (path / "checkpoints" / "last.pt").is_file():
        return "resume"
    if path.is_dir() and any(path.iterdir()):
        return "restart"
    return "new"


ATTEMPT_FLAGS = {"resume": ["--resume=True"], "restart": ["--overwrite=True"], "new": []}


def outcome(run_dir: Path, exit_code: int) -> Literal["finished", "interrupted", "failed"]:
    """How an attempt ended, from the run's own record (outcome.json) and exit status."""
    record = read_outcome(run_dir)
    if record is not None and record.status == "finished":
        return "finished"
    if exit_code == EXIT_STOPPED or (record is not None and record.status == "stopped"):
        return "interrupted"
    return "failed"


# A tqdm progress bar ("train:  40%|####  | 4/10 [...]"), which is no reason for anything.
PROGRESS_BAR = re.compile(r"\d+%\|.*\|")


def last_error(output: str, run_dir: Path | None = None) -> str:
    """Why a run failed: the reason in its outcome.json, else its `error: ...` line, else
    the last line of a traceback or of its output that is not a progress bar."""
    record = read_outcome(run_dir) if run_dir is not None else None
    if record is not None and record.status == "failed" and record.reason:
        return f"error: {record.reason}"[:300]
    lines = [ln.strip() for ln in re.split(r"[\r\n]", output) if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    said = [ln for ln in lines if not PROGRESS_BAR.search(ln)]
    return (errors or said or lines or ["(no output)"])[-1][:300]


def run_env(threads: int, gpu: str | None) -> dict[str, str]:
    """The environment overrides of one run: its thread count, its GPU."""
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


# ----- the local launcher ---------------------------------------------------------------------


def visible_gpus(fixed: Sequence[str]) -> list[str]:
    """The GPU ids runs may be pinned to; none when the runs are told --device=cpu."""
    if flag_value(fixed, "--device") == "cpu" or os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return []
    import torch  # only here: the sweep itself needs no torch

    count = torch.cuda.device_count()
    listed = [g for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return (listed or [str(i) for i in range(count)])[:count]


def jobs_and_threads(jobs: int, threads: int, gpus: int) -> tuple[int, int]:
    """How many runs at once and threads each: the cores split, one run per GPU by default."""
    cores = usable_cores()
    if jobs <= 0:
        jobs = gpus if gpus else max(1, cores // max(1, threads))
    if threads <= 0:
        threads = max(1, cores // jobs)
    return jobs, threads


def _die_with_parent() -> None:
    """In the child (Linux): SIGTERM when the sweep dies, so a run never outlives its sweep
    (it checkpoints and stops, and the next sweep resumes it)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Running:
    """A run in progress under the local launcher."""

    run: RunSpec
    process: subprocess.Popen
    log: IO[str]
    log_start: int
    gpu: str | None
    started: float = field(default_factory=time.time)


def _stop_message(signals: int, running: int) -> str:
    """What the sweep does on its first and second stop signal, said when it does it
    (a second one loses each run's work since its last checkpoint)."""
    if signals == 1:
        return (f"stopping: {running} run(s) asked to save a checkpoint and stop (SIGTERM); "
                f"rerun this command to resume them. A second Ctrl-C / SIGTERM kills them "
                f"at once, losing what they did since their last checkpoint")
    return f"killing {running} run(s) now (SIGKILL): they resume from their last checkpoint"


class LocalLauncher:
    """Up to `jobs` runs at once, subprocesses of this one, each pinned to its threads and GPU."""

    def __init__(self, jobs: int, threads: int, gpus: list[str], poll_s: float = 0.2) -> None:
        self.jobs, self.threads, self.gpus, self.poll_s = jobs, threads, gpus, poll_s
        self.stop_requested = 0

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop_requested += 1

    def launch(self, sweep: Sweep, todo: list[tuple[RunSpec, str]]) -> None:
        """Start runs as slots free up; stop starting on a signal, pass it on, wait."""
        queue, running = deque(todo), []
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        forwarded = 0
        try:
            while running or (queue and not self.stop_requested):
                while queue and len(running) < self.jobs and not self.stop_requested:
                    running.append(self._start(sweep, *queue.popleft(), running))
                if self.stop_requested > forwarded:
                    forwarded = self.stop_requested  # 1st: SIGTERM (checkpoint), 2nd: SIGKILL
                    kind = signal.SIGTERM if forwarded == 1 else signal.SIGKILL
                    for r in running:
                        r.process.send_signal(kind)
                    print(_stop_message(forwarded, len(running)), flush=True)
                time.sleep(self.poll_s)
                for r in [r for r in running if r.process.poll() is not None]:
                    running.remove(r)
                    self._end(sweep, r)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.stop_requested:
            raise KeyboardInterrupt

    def _start(self, sweep: Sweep, run: RunSpec, how: str, running: list[Running]) -> Running:
        busy = [r.gpu for r in running]
        gpu = min(self.gpus, key=busy.count) if self.gpus else None
        command = sweep.command(run, how, self.threads)
        log_path = run.log(sweep.root)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "a")
        log.write(f"=== {_now()} attempt ({how}): {shlex.join(command)}\n")
        log.flush()
        env = {**os.environ, **run_env(self.threads, gpu)}
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=sweep.cwd,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        sweep.started(run, how, command, log=relative(log_path, sweep.root), gpu=gpu)
        return Running(run, process, log, log.tell(), gpu)

    def _end(self, sweep: Sweep, r: Running) -> None:
        r.log.close()
        with open(r.run.log(sweep.root), errors="replace") as f:
            f.seek(r.log_start)
            output = f.read()
        code = r.process.returncode
        status = outcome(r.run.dir(sweep.root), code)
        if status != "finished" and self.stop_requested:
            status = "interrupted"  # our signal, whatever the exit code
        sweep.ended(r.run, status, code, time.time() - r.started,
                    last_error(output, r.run.dir(sweep.root)))


# ----- the Slurm launcher (submitit) ------------------------------------------------------------


@dataclass
class SweepJob:
    """What a submitit job runs: the run's command line; returns how the run ended."""

    command: list[str]
    cwd: str
    env: dict[str, str]
    """Overrides of the node's environment."""
    run_dir: str

    def __call__(self) -> str:
        from submitit.core.utils import FailedJobError
        from submitit.helpers import CommandFunction

        try:
            CommandFunction(self.command, cwd=self.cwd, env={**os.environ, **self.env})()
            code = 0
        except FailedJobError:  # the run's own record says whether it was a stop
            if outcome(Path(self.run_dir), 1) != "interrupted":
                raise
            code = EXIT_STOPPED
        return outcome(Path(self.run_dir), code)


def slurm_executor(settings: SlurmSettings, jobs: int, threads: int, name: str
                   ) -> Callable[[Path], Any]:
    """The default executor factory: submitit's AutoExecutor (Slurm when there is one)."""

    def make(folder: Path) -> Any:
        import submitit

        executor = submitit.AutoExecutor(folder=folder)
        params: dict[str, Any] = {"timeout_min": settings.time_min, "cpus_per_task": threads,
                                  "gpus_per_node": settings.gpus, "name": name}
        if jobs > 0:  # 0: as many at once as Slurm allows
            params["slurm_array_parallelism"] = jobs
        if settings.partition:
            params["slurm_partition"] = settings.partition
        if settings.mem_gb:
            params["mem_gb"] = settings.mem_gb
        executor.update_parameters(**params)
        return executor

    return make


class SlurmLauncher:
    """Submits the runs' command lines as one batch (a job array) and waits for them."""

    def __init__(self, make_executor: Callable[[Path], Any], threads: int,
                 poll_s: float = 1.0) -> None:
        self.make_executor, self.threads, self.poll_s = make_executor, threads, poll_s

    def launch(self, sweep: Sweep, todo: list[tuple[RunSpec, str]]) -> None:
        executor = self.make_executor(sweep.root / "submitit")
        commands = [sweep.command(run, how, self.threads) for run, how in todo]
        with executor.batch():
            jobs = [executor.submit(SweepJob(cmd, str(sweep.cwd), run_env(self.threads, None),
                                             str(run.dir(sweep.root))))
                    for (run, _), cmd in zip(todo, commands, strict=True)]
        waiting = {}
        for (run, how), cmd, job in zip(todo, commands, jobs, strict=True):
            sweep.started(run, how, cmd, log=relative(Path(job.paths.stdout).resolve(),
                                                      sweep.root),
                          job_id=str(job.job_id))
            waiting[job.job_id] = (run, job, time.time())
        print(f"submitted {len(jobs)} job(s); waiting (stopping this process leaves them "
              f"running; their logs are under {sweep.root / 'submitit'})", flush=True)
        while waiting:
            time.sleep(self.poll_s)
            for job_id, (run, job, started) in list(waiting.items()):
                if job.done():
                    del waiting[job_id]
                    self._end(sweep, run, job, started)

    def _end(self, sweep: Sweep, run: RunSpec, job: Any, started: float) -> None:
        try:
            status, code, error = job.result(), 0, ""
        except Exception as err:  # FailedJobError, UncompletedJobError: the job's own words
            status, code, error = "failed", 1, last_error(str(err), run.dir(sweep.root))
        sweep.ended(run, status, code, time.time() - started, error)


# ----- the sweep -------------------------------------------------------------------------------


class Sweep:
    """The study in its directory: its runs, their state, the manifest kept up to date."""

    def __init__(self, root: Path, manifest: dict[str, Any], runs: list[RunSpec]) -> None:
        self.root, self.manifest, self.runs = root, manifest, runs
        self.cwd = study_cwd(root, manifest)

    def command(self, run: RunSpec, how: str, threads: int) -> list[str]:
        """The attempt's command line, run in self.cwd (the entry's path is relative to it)."""
        return [sys.executable, self.manifest["entry"], *run.flags, f"--threads={threads}",
                *ATTEMPT_FLAGS[how]]

    def record(self, run: RunSpec, **values: Any) -> None:
        entry = self.manifest["runs"].setdefault(run.name, {})
        entry.update(values)
        write_manifest(self.root, self.manifest)

    def started(self, run: RunSpec, how: str, command: list[str], **where: Any) -> None:
        attempts = self.manifest["runs"].get(run.name, {}).get("attempts", 0) + 1
        # The interpreter as "python": the record names no path of this machine.
        self.record(run, status="running", how=how, attempts=attempts, started=_now(),
                    command=["python", *command[1:]], **where)
        print(f"start {run.name} ({how}, attempt {attempts})", flush=True)

    def ended(self, run: RunSpec, status: str, code: int, seconds: float, error: str) -> None:
        self.record(run, status=status, exit_code=code, ended=_now(),
                    error=None if status == "finished" else error)
        said = f": {error}" if status == "failed" else ""
        print(f"{status} {run.name} (exit {code}, {seconds:.0f}s){said}", flush=True)

    def summary(self) -> int:
        """One line of counts, the failed runs; the exit status (1 if any run did not finish)."""
        statuses = [self.manifest["runs"][r.name].get("status", "pending") for r in self.runs]
        counts = {s: statuses.count(s) for s in dict.fromkeys(statuses)}
        print("sweep " + ", ".join(f"{n} {s}" for s, n in counts.items())
              + f": {self.root / MANIFEST}", flush=True)
        if counts.get("finished", 0) == len(self.runs):
            print(f"report: python -m training.report {self.root}", flush=True)
            return 0
        for run in self.runs:
            info = self.manifest["runs"][run.name]
            if info.get("status") == "failed":
                print(f"  {run.name}: {info.get('error')} (log: {self.root / info['log']})")
        return 1


def prepare(cfg: SweepConfig, fixed: list[str]) -> tuple[Path, Path, dict[str, list[str]]]:
    """Checked inputs: the sweep directory, the entry script, the grid."""
    entry = Path(cfg.entry).expanduser()
    if entry.suffix != ".py" or not entry.is_file():
        raise ValueError(f"--entry={cfg.entry}: no such entry script; name one, e.g. "
                         f"train_bc.py or train_ppo.py")
    if not cfg.seeds:
        raise ValueError("--seeds needs at least one seed, e.g. --seeds 0 1 2")
    if len(set(cfg.seeds)) < len(cfg.seeds):
        raise ValueError(f"--seeds {' '.join(map(str, cfg.seeds))}: give distinct seeds")
    if cfg.jobs < 0 or cfg.threads < 0:
        raise ValueError("--jobs and --threads must be >= 0 (0 = chosen for this machine)")
    grid = parse_grid(cfg.grid)
    check_fixed(fixed, grid)
    root = Path(cfg.sweep_dir).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise ValueError(f"--sweep_dir={cfg.sweep_dir} is a file; name a directory")
    return root, entry.resolve(), grid


def sweep(cfg: SweepConfig, fixed: list[str],
          make_executor: Callable[[Path], Any] | None = None) -> int:
    """Plan, skip what is finished, launch the rest; returns the exit status.

    `make_executor(folder)` replaces submitit's AutoExecutor (tests pass a LocalExecutor).
    """
    root, entry, grid = prepare(cfg, fixed)
    if cfg.launcher == "local":
        gpus = visible_gpus(fixed)
        jobs, threads = jobs_and_threads(cfg.jobs, cfg.threads, len(gpus))
    else:  # the cluster's cores, not this machine's
        gpus, jobs, threads = [], cfg.jobs, cfg.threads or 1
    # Before anything is written: the study's identity and every run's flags, as the entry
    # parses them (a typo is one line, not a directory of failed runs).
    parse = entry_parser(entry)
    manifest = merge_manifest(root, entry, grid, cfg.seeds, fixed, parse)
    cwd = study_cwd(root, manifest)
    runs = plan(manifest["grid"], manifest["seeds"], fixed, root, cwd)
    check_runs(parse, [(run.name, [*run.flags, f"--threads={threads}"]) for run in runs])
    if cfg.dry_run:
        for run in runs:
            print(f"{run_state(run, root):8} (in {cwd}) "
                  f"{shlex.join(['python', manifest['entry'], *run.flags])}")
        return 0
    root.mkdir(parents=True, exist_ok=True)
    lock = lock_sweep(root)
    try:
        # Read again under the lock: another sweep may have written it since.
        manifest = merge_manifest(root, entry, grid, cfg.seeds, fixed, parse)
        runs = plan(manifest["grid"], manifest["seeds"], fixed, root, cwd)
        study = Sweep(root, manifest, runs)
        todo = []
        for run in runs:
            how = run_state(run, root)
            saved = manifest["runs"].get(run.name, {})
            manifest["runs"][run.name] = {**saved, "dir": run.name, "config": run.config,
                                          "seed": run.seed, "flags": run.flags,
                                          "log": saved.get("log", f"{run.name}.log")}
            if how == "finished":
                manifest["runs"][run.name]["status"] = "finished"
            else:
                manifest["runs"][run.name].setdefault("status", "pending")
                todo.append((run, how))
        write_manifest(root, manifest)
        skipped = len(runs) - len(todo)
        where = (f"{jobs} at a time, {threads} thread(s) each"
                 + (f", GPUs {','.join(gpus)}" if gpus else "") if cfg.launcher == "local"
                 else f"Slurm via submitit, {threads} CPU(s) each")
        print(f"sweep {root}: {len(runs)} runs, {skipped} finished, {len(todo)} to run ({where})",
              flush=True)
        if todo:
            launcher = (LocalLauncher(jobs, threads, gpus) if cfg.launcher == "local" else
                        SlurmLauncher(make_executor or slurm_executor(cfg.slurm, jobs, threads,
                                                                      root.name), threads))
            try:
                launcher.launch(study, todo)
            except KeyboardInterrupt:
                print("stopped: rerun the same command to resume", flush=True)
                study.summary()
                return 130
        return study.summary()
    finally:
        os.close(lock)


def main(argv: Sequence[str] | None = None,
         make_executor: Callable[[Path], Any] | None = None) -> int:
    """Parse `[sweep flags] -- [fixed flags]` and sweep."""
    own, fixed = split_argv(sys.argv[1:] if argv is None else argv)
    cfg = parse_config(SweepConfig, own, description=__doc__)
    return sweep(cfg, fixed, make_executor)


if __name__ == "__main__":
    run_main(lambda: sys.exit(main()))
