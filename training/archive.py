"""Keep a study's record without its weights: the files `training.report` reads.

    python -m training.archive runs/durotaxis_freeze_study docs/studies/durotaxis_freeze_study_epyc

A study's directory holds checkpoints (90 MB a PPO run with a ResNet-18); its record is about
60 kB a run: sweep.json and, for each finished run, run.json, config.json (settings and the
machine), metrics.jsonl, final_metrics.json and the sweep's `.done` marker. The copy is
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
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tyro

from training.cli import parse_config, run_main
from training.report import load_runs
from training.sweep import extend_study, study_difference

RUN_RECORD = ("run.json", "config.json", "metrics.jsonl", "final_metrics.json")


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
    old = json.loads((out / "sweep.json").read_text())
    if (difference := study_difference(old, new, entry=lambda path: Path(path).name)
            ) is not None:
        raise ValueError(f"{out} holds a study that {difference}; archive to a new directory")
    merged = {**new, "grid": old["grid"], "seeds": old["seeds"], "runs": old["runs"]}
    extend_study(merged, new["grid"], new["seeds"])
    for name, info in new["runs"].items():
        if name not in merged["runs"] or name in finished:
            merged["runs"][name] = info
    return merged


def record_files(root: Path, manifest: dict[str, Any], finished: set[str]) -> list[Path]:
    """The files of each finished run's record, relative to `root`."""
    files = []
    for name, info in manifest["runs"].items():
        run = Path(info["dir"])
        done = Path(f"{info['dir']}.done")
        if name not in finished:
            continue
        files += [run / f for f in RUN_RECORD if (root / run / f).is_file()]
        if (root / done).is_file():
            files.append(done)
    return files


def archive(cfg: ArchiveConfig) -> list[Path]:
    """Copy the record; returns the files written. Checks every file before copying any."""
    root, out = Path(cfg.sweep_dir).expanduser(), Path(cfg.out).expanduser()
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise ValueError(f"the record's directory {out} is inside the study {root}; give one "
                         f"outside it")
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
    for f in written:
        (out / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / f, out / f)
    (out / "sweep.json").write_text(json.dumps(merged, indent=2) + "\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    runs = sum(f.name == "run.json" for f in files)
    print(f"archived {runs} finished run(s) of {root} to {out} ({len(written)} file(s) "
          f"written; the record holds {len(merged['runs'])} planned run(s), {size / 1e3:.0f} kB)")
    return written


def main(argv: list[str] | None = None) -> list[Path]:
    return archive(parse_config(ArchiveConfig, sys.argv[1:] if argv is None else argv,
                                description=__doc__))


if __name__ == "__main__":
    run_main(main)
