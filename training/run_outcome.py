"""How a run ended, recorded in its own directory, not read from its console.

The harness writes `outcome.json` into the run directory when the run directory is made
(`running`) and again when the run ends:

    {"status": "finished" | "stopped" | "failed" | "running", "step": 800,
     "reason": "SIGTERM" | "ValueError: ..." | null, "time": "2026-12-07 21:00:00"}

- `finished`: the run reached its budget and its final evaluation (if any) returned.
- `stopped`: a signal stopped it after it wrote a checkpoint at `step`; `--resume=True`
  continues it. The process exits with EXIT_STOPPED.
- `failed`: an error ended it (`reason` is its first line).
- `running`: it has not ended, or it was killed (SIGKILL, power loss) before it could say
  so; a checkpoint, if any, still resumes it.

The sweep, the report and the archive decide "finished" by `run_finished` alone, so that
rewording a console message cannot change what a study counts.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

OUTCOME = "outcome.json"
# What a process that a signal stopped exits with: sysexits' EX_TEMPFAIL ("a temporary
# failure; the user is invited to retry"), so that a shell or scheduler tells a resumable
# stop from success (0), a user error (2) and a crash (1).
EXIT_STOPPED = 75

Status = Literal["running", "finished", "stopped", "failed"]


@dataclass(frozen=True)
class RunOutcome:
    """What outcome.json holds."""

    status: Status
    step: int | None = None
    """The last step whose weights are in checkpoints/last.pt (stopped), or the final one."""
    reason: str | None = None
    """The signal's name (stopped) or the error's first line (failed)."""
    time: str = ""


def write_outcome(run_dir: Path, status: Status, step: int | None = None,
                  reason: str | None = None) -> None:
    """Atomically: a reader never sees half a record."""
    record = RunOutcome(status, step, reason, time.strftime("%Y-%m-%d %H:%M:%S"))
    tmp = run_dir / f".{OUTCOME}.tmp"
    tmp.write_text(json.dumps(asdict(record)) + "\n")
    os.replace(tmp, run_dir / OUTCOME)


def read_outcome(run_dir: Path) -> RunOutcome | None:
    """The run's record; None when it has none or it cannot be read."""
    try:
        data = json.loads((run_dir / OUTCOME).read_text())
        return RunOutcome(**data)
    except (OSError, ValueError, TypeError):
        return None


def run_finished(run_dir: Path) -> bool:
    """Whether the run in `run_dir` says it finished."""
    outcome = read_outcome(run_dir)
    return outcome is not None and outcome.status == "finished"
