"""A run's output directory: chosen without clobbering anything, locked while in use.

- A new run goes to a fresh directory. An existing non-empty one is continued only with
  `--resume=True` and replaced only with `--overwrite=True`, and only when it is one of
  our runs: it holds the `run.json` marker written when the run was made, and nothing the
  project does not write. A directory that is or holds an input of the run (dataset,
  histories, weights), the current directory, home or a filesystem root is never replaced.
- `--overwrite` sets the old run aside (a rename) and deletes it only once the new run has
  written its first file; a run that fails before that puts the old one back.
- One process per run directory: an exclusive `flock` on the directory itself, held for
  the run's life. The kernel drops it when the process dies (even by `kill -9`), so a
  crashed run leaves no stale lock; a second process is refused with the holder's PID.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

MARKER = "run.json"
# What the entry scripts write into a run directory (top level). Anything else there is
# the user's, and --overwrite refuses to delete it.
RUN_FILES = {
    MARKER,
    "config.json",
    "metrics.jsonl",
    "metrics.rewound.jsonl",
    "final_metrics.json",
    "outcome.json",
    ".outcome.json.tmp",
    "wandb_id.txt",
    "episode.gif",
    "learning_curve.png",
}
RUN_DIRS = {"checkpoints", "videos", "wandb"}


class RunDirError(Exception):
    """A run directory cannot be used as asked (one line: what is in the way, what to do)."""


def _is_within(path: Path, root: Path) -> bool:
    """Whether `path` is `root` or lies inside it (both resolved)."""
    return path == root or root in path.parents


def _foreign_entries(path: Path) -> list[str]:
    """Top-level entries of a run directory that the project did not write."""
    foreign = []
    for entry in sorted(path.iterdir()):
        ours = entry.name in RUN_DIRS if entry.is_dir() else entry.name in RUN_FILES
        if not ours and not entry.name.startswith(".last.pt.tmp-"):
            foreign.append(entry.name)
    return foreign


def check_replaceable(path: Path, inputs: Iterable[str | Path]) -> None:
    """Raise RunDirError unless --overwrite may replace `path` (see the module docstring)."""
    real = path.resolve()
    protected = {Path.cwd().resolve(): "the current directory", Path.home().resolve(): "home"}
    for place, what in protected.items():
        if _is_within(place, real):
            raise RunDirError(
                f"--overwrite refuses to replace {path}: it is or holds {what}; "
                f"choose another --output_dir"
            )
    if real.parent == real:
        raise RunDirError(f"--overwrite refuses to replace {path}: it is a filesystem root")
    for item in inputs:
        source = Path(str(item).partition("::")[0]).expanduser().resolve()
        if _is_within(source, real):
            raise RunDirError(
                f"--overwrite refuses to replace {path}: it holds {source}, an input of this "
                f"run; move the input or choose another --output_dir"
            )
    if not (path / MARKER).is_file():
        raise RunDirError(
            f"--overwrite refuses to replace {path}: it is not a run this project made (no "
            f"{MARKER}); delete it yourself if you mean to, or choose another --output_dir"
        )
    foreign = _foreign_entries(path)
    if foreign:
        shown = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise RunDirError(
            f"--overwrite refuses to replace {path}: it holds files this project did not "
            f"write ({shown}); move them or choose another --output_dir"
        )


def choose_run_dir(
    output_dir: str | None,
    default_name: str,
    *,
    resume: bool,
    overwrite: bool,
    inputs: Iterable[str | Path] = (),
    root: str = "runs",
) -> Path:
    """The directory a run will write to, checked but not yet touched.

    No --output_dir: a new timestamped directory under `root`.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite contradict each other; pick one")
    if output_dir is None:
        if resume:
            raise ValueError("--resume needs --output_dir naming the run to continue")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path, suffix = Path(root) / f"{default_name}_{stamp}", 1
        while path.exists():
            path, suffix = Path(root) / f"{default_name}_{stamp}_{suffix}", suffix + 1
        return path
    path = Path(output_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--output_dir={path} is a file, not a directory; name a directory")
    exists = path.is_dir() and any(path.iterdir())
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
    if exists and overwrite:
        check_replaceable(path, inputs)
    return path


def _lock_holder(path: Path) -> str:
    """The PID holding a flock on `path`, from /proc/locks (Linux); '?' if unknown."""
    try:
        inode = os.stat(path).st_ino
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if len(fields) > 5 and "FLOCK" in fields and fields[5].endswith(f":{inode}"):
                return fields[4]
    except OSError:
        pass
    return "?"


class RunDirLock:
    """An exclusive flock on a run directory, held until `release()` or process exit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            raise RunDirError(
                f"{path} is in use by another process (PID {_lock_holder(path)}); wait for it "
                f"to finish or stop it, or choose another --output_dir"
            ) from None

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ReplacedRun:
    """An old run set aside by --overwrite: deleted on `commit()`, put back on `restore()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.aside = path.with_name(f".{path.name}.replaced-{os.getpid()}")
        os.replace(path, self.aside)

    def commit(self) -> None:
        """The new run has written its first file: the old one can go."""
        if self.aside.exists():
            shutil.rmtree(self.aside)

    def restore(self) -> None:
        """The new run failed before writing anything: put the old run back."""
        if self.aside.exists():
            if self.path.exists():
                shutil.rmtree(self.path)
            os.replace(self.aside, self.path)


def write_marker(path: Path, entry: str) -> None:
    """Mark `path` as a run this project made (what --overwrite looks for)."""
    marker = {"made_by": "rlenc", "entry": entry, "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    (path / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
