"""Keep a study's record without its weights: the files `training.report` reads.

    python -m training.archive runs/durotaxis_freeze_study docs/studies/durotaxis_freeze_study_epyc

A study's directory holds checkpoints (90 MB a PPO run with a ResNet-18); its record is about
60 kB a run: sweep.json and, for each finished run, run.json, config.json (settings and the
machine), metrics.jsonl, final_metrics.json and outcome.json (how it ended). The copy is
what a paper's per-run scores are: `python -m training.report COPY` rebuilds the tables and
curves from it, and copied back under runs/, `training.sweep` counts its runs as finished,
so seeds or grid values can be added later (on the same machine kind: runs do not repeat
bit for bit across CPU types, docs/reliability.md).

Runs that have not finished are not copied (the manifest still lists them, and the report
says so). Archiving again, after more runs finish or from another session's directory of
the same study (same entry script, grid flags and fixed flags), adds to the copy: the
manifests are merged (a finished run's entry is kept over an unfinished one's), and a run
file already in the copy is never replaced by a different one (the command stops with one
line and copies nothing).

The record is built in a hidden directory beside the destination and renamed into place
when complete (an earlier record is copied into it first, then swapped out), so a full
disk or an unwritable destination ends with one line and no partial record: the
destination is as it was, and archiving again completes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tyro

from training.checkpoint import process_alive
from training.cli import parse_config, run_main
from training.report import load_runs
from training.run_outcome import OUTCOME
from training.sweep import extend_study, study_difference

RUN_RECORD = ("run.json", "config.json", "metrics.jsonl", "final_metrics.json", OUTCOME)


@dataclass(frozen=True)
class ArchiveConfig:
    """Copy a study's record (no checkpoints) to another directory."""

    sweep_dir: tyro.conf.Positional[str]
    """The study (a directory written by python -m training.sweep)."""
    out: tyro.conf.Positional[str]
    """Where the record goes (created; an existing record of the same study is added to)."""


def merged_manifest(new: dict[str, Any], finished: set[str], out: Path) -> dict[str, Any]:
    """`new` (the study's manifest) merged into the copy's, when the copy has one."""
    if not (out / "sweep.json").is_file():
        return new
    old = read_manifest(out / "sweep.json")
    if (difference := study_difference(old, new, entry=lambda path: Path(path).name)
            ) is not None:
        raise ValueError(f"{out} holds a study that {difference}; archive to a new directory")
    merged = {**new, "grid": old["grid"], "seeds": old["seeds"], "runs": old["runs"]}
    extend_study(merged, new["grid"], new["seeds"])
    for name, info in new["runs"].items():
        if name not in merged["runs"] or name in finished:
            merged["runs"][name] = info
    return merged


def read_manifest(path: Path) -> dict[str, Any]:
    """A record's sweep.json; one line naming the file when it is not a sweep's manifest."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {path} ({err}); it is not a sweep's manifest: archive "
                         f"to a new directory") from None
    keys = ("entry", "grid", "seeds", "fixed_flags", "runs")
    if not isinstance(manifest, dict) or not all(k in manifest for k in keys):
        raise ValueError(f"{path} is not a sweep's manifest (it lacks one of {', '.join(keys)}"
                         f"); archive to a new directory")
    return manifest


def record_files(root: Path, manifest: dict[str, Any], finished: set[str]) -> list[Path]:
    """The files of each finished run's record, relative to `root`."""
    files = []
    for name, info in manifest["runs"].items():
        run = Path(info["dir"])
        if name in finished:
            files += [run / f for f in RUN_RECORD if (root / run / f).is_file()]
    return files


def check_destination(out: Path) -> None:
    """One line for a destination that is a file, lies under one, or holds something else."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"the record's directory {out} is a file, not a directory")
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"cannot make the record's directory {out}: {ancestor} is a file, "
                         f"not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "sweep.json").exists():
        raise ValueError(f"{out} holds files but no sweep.json: it is not a study's record; "
                         f"archive to a new or empty directory")


def archive(cfg: ArchiveConfig) -> list[Path]:
    """Copy the record; returns the files written. Checks every file before copying any."""
    root, out = Path(cfg.sweep_dir).expanduser(), Path(cfg.out).expanduser()
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise ValueError(f"the record's directory {out} is inside the study {root}; give one "
                         f"outside it")
    out = out.resolve() if out.is_symlink() else out  # the renames replace the directory
    _remove_stale_builds(out)  # first: one may put back the earlier record
    check_destination(out)
    manifest, runs = load_runs(root)  # finished as the report and the sweep count it
    finished = {run.name for run in runs if run.status == "finished"}
    files = record_files(root, manifest, finished)
    merged = merged_manifest(manifest, finished, out)
    clashes = [f for f in files if (out / f).is_file()
               and (out / f).read_bytes() != (root / f).read_bytes()]
    if clashes:
        raise ValueError(f"{out / clashes[0]} differs from {root / clashes[0]} "
                         f"({len(clashes)} such file(s)); archive to a new directory")
    written = [f for f in files if not (out / f).is_file()]  # the others are equal (above)
    earlier = f", {out} is as it was" if out.exists() else ""
    try:
        write_record(root, out, written, merged)
    except OSError as err:
        raise ValueError(f"cannot write the record {out}: {err.strerror or err}; nothing was "
                         f"written{earlier}") from None
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    runs = sum(f.name == "run.json" for f in files)
    print(f"archived {runs} finished run(s) of {root} to {out} ({len(written)} file(s) "
          f"written; the record holds {len(merged['runs'])} planned run(s), {size / 1e3:.0f} kB)")
    return written


def write_record(root: Path, out: Path, files: list[Path], manifest: dict[str, Any]) -> None:
    """The record at `out`: the earlier one (if any) plus `files` and `manifest`, put in place
    by renames, so that a failure part way leaves `out` as it was and no partial copy."""
    out.parent.mkdir(parents=True, exist_ok=True)
    build = out.with_name(f".{out.name}.archive-{os.getpid()}")
    try:
        if out.is_dir():
            shutil.copytree(out, build, symlinks=True)
        else:
            build.mkdir()
        for f in files:
            (build / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / f, build / f)
        (build / "sweep.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _swap_in(build, out)
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _swap_in(build: Path, out: Path) -> None:
    """Rename `build` to `out`; an earlier `out` is renamed aside first, deleted last."""
    if not out.exists():
        os.replace(build, out)
        return
    aside = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, aside)
    try:
        os.replace(build, out)
    except OSError:
        os.replace(aside, out)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _remove_stale_builds(out: Path) -> None:
    """The build directories of archives that were killed (their process is gone).

    A killed archive leaves `.NAME.archive-PID` (a partial copy) or, between its two
    renames, `.NAME.old-PID` (the earlier record, put back here when `out` is missing).
    """
    if not out.parent.is_dir():
        return
    for kind in ("archive", "old"):
        prefix = f".{out.name}.{kind}-"
        for path in out.parent.iterdir():
            pid = path.name[len(prefix):] if path.name.startswith(prefix) else ""
            if not pid.isdigit() or process_alive(int(pid)):
                continue
            if kind == "old" and not out.exists():
                with contextlib.suppress(OSError):  # kept aside, not lost: tried again later
                    os.replace(path, out)
            else:
                shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> list[Path]:
    return archive(parse_config(ArchiveConfig, sys.argv[1:] if argv is None else argv,
                                description=__doc__))


if __name__ == "__main__":
    run_main(main)
