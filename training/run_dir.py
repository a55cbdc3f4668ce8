"""Choosing a run's output directory without clobbering anything the user has."""

from __future__ import annotations

import shutil
import time
from pathlib import Path


def choose_run_dir(
    output_dir: str | None, default_name: str, *, resume: bool, overwrite: bool, root: str = "runs"
) -> Path:
    """The directory a run will write to, checked but not yet touched.

    No --output_dir: a new timestamped directory under `root`. An existing non-empty one
    is only continued with --resume or replaced with --overwrite (by `open_run_dir`).
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other; pick one")
    if output_dir is None:
        if resume:
            raise ValueError("--resume needs --output_dir naming the run to continue")
        path = Path(root) / f"{default_name}_{time.strftime('%Y%m%d-%H%M%S')}"
        suffix = 1
        while path.exists():
            path = Path(root) / f"{default_name}_{time.strftime('%Y%m%d-%H%M%S')}_{suffix}"
            suffix += 1
    else:
        path = Path(output_dir)
    exists = path.exists() and any(path.iterdir())
    if resume and not (path / "checkpoints" / "last.pt").is_file():
        raise FileNotFoundError(
            f"--resume: no checkpoint at {path / 'checkpoints' / 'last.pt'}; check --output_dir, "
            f"or start the run without --resume=True"
        )
    if exists and not resume and not overwrite:
        raise FileExistsError(
            f"output dir {path} already holds a run; pass --resume=True to continue it, "
            f"--overwrite=True to replace it, or choose another --output_dir"
        )
    return path


def open_run_dir(path: Path, *, overwrite: bool) -> Path:
    """Create the run directory; with --overwrite, delete the old run in it first.

    Called once the run's inputs (data, config, checkpoint) have been checked, so that a
    bad input stops the run before --overwrite has cost the user the old one.
    """
    if overwrite and path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path
