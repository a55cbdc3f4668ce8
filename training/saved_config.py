"""A resumed run's settings come from its own config.json, not from today's defaults.

`--output_dir=X --resume=True` alone continues the run in X as it was started: the saved
config.json is turned back into the entry's config dataclass and handed to the parser as
its default, so only the flags given with `--resume` change anything (and the run harness
refuses every change outside the allow-list, training/settings.py, before a checkpoint is
read or a weight is loaded).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

from training.cli import flag_value
from training.settings import LEGACY_FLAGS

T = TypeVar("T")


def resumed_run_dir(args: list[str]) -> Path | None:
    """The run directory that `args` resume (`--resume=True --output_dir=X`), else None."""
    if flag_value(args, "--resume") != "True":
        return None
    output_dir = flag_value(args, "--output_dir")
    if output_dir is None:
        raise ValueError("--resume=True needs --output_dir=RUN_DIR, the run to continue")
    return Path(output_dir).expanduser()


def read_saved_config(run_dir: Path) -> dict[str, Any]:
    """The run's config.json; one line when it is missing or unreadable."""
    path = run_dir / "config.json"
    if not path.is_file():
        what = "does not exist" if not run_dir.exists() else "holds no config.json"
        raise ValueError(f"--resume=True: {run_dir} {what}, so there is no run to continue; "
                         f"give the --output_dir of a run, or drop --resume to start one")
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"--resume=True: cannot read {path} ({err}); the run's settings are "
                         f"unknown, so it cannot be continued") from None
    if not isinstance(saved, dict):
        raise ValueError(f"--resume=True: {path} holds no settings; it cannot be continued")
    return saved


def _tuples(value: Any) -> Any:
    """JSON's arrays as the configs' tuples."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _with_run_precision(saved: dict[str, Any]) -> dict[str, Any]:
    """A config.json from before --precision ran in fp32 (or bf16 with --amp=True): a resume
    keeps that, rather than taking today's default (auto)."""
    run = saved.get("run")
    if not isinstance(run, dict) or "precision" in run:
        return saved
    return {**saved, "run": {**run, "precision": "bf16" if run.get("amp") else "fp32"}}


def config_from_saved(config_class: type[T], saved: dict[str, Any],
                      field_types: dict[str, type] | None = None) -> T:
    """`config_class` with the values of a saved config.json.

    Keys the class does not have (facts recorded at run time: the machine, weights
    sources, resumes) are left out; fields the file lacks (added since) keep their
    defaults. `field_types` names the concrete class of a generic field (train_bc.py's
    `agent`).
    """
    saved = _with_run_precision(saved)
    hints = typing.get_type_hints(config_class)
    hints.update(field_types or {})
    values = {LEGACY_FLAGS.get(k, k): v for k, v in saved.items()}
    kwargs = {}
    for field in dataclasses.fields(config_class):  # type: ignore[arg-type]
        if field.name not in values:
            continue
        kind, value = hints[field.name], values[field.name]
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            value = config_from_saved(kind, value)
        else:
            value = _tuples(value)
        kwargs[field.name] = value
    return config_class(**kwargs)
