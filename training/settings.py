"""The settings every entry script shares, and what a resumed run may change of them.

`RunSettings` sits in each entry config as `run`, with its flags unprefixed (`--seed`,
`--output_dir`, `--resume`, `--save_interval`, ...), so both scripts spell them alike.

A resumed run must be the same run: the settings that define it must match the saved
`config.json`. A short allow-list may differ (the step budget, how often to log, evaluate
or save, evaluation size, device, threads, precision, wandb mode, video).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from training.ranges import at_least

# Flags (dataclass paths with the `run.` prefix left out, as users type them) that a
# resumed run may change. A budget may change either way (finish a pre-empted long run
# early, or extend one); the change is recorded in config.json under `resumes`.
RESUMABLE_CHANGES = {
    "offline_steps",
    "ppo.total_timesteps",
    "log_interval",
    "save_interval",
    "eval_interval",
    "eval_episodes",
    "eval_workers",
    "eval_goals",
    "eval_seeds",
    "device",
    "threads",
    "precision",
    "channels_last",
    "video",
    "output_dir",
    "resume",
    "overwrite",
    "skip_nonfinite",
    "wandb.mode",
    "wandb.project",
    "wandb.entity",
    "wandb.group",
    "wandb.init_timeout",
}
# Spellings of earlier versions, so that their config.json files compare.
LEGACY_FLAGS = {"checkpoint_every": "save_interval"}


@dataclass(frozen=True)
class RunSettings:
    """Run settings shared by train_bc.py and train_ppo.py (flags without a prefix)."""

    seed: int = 0
    """Seeds initialisation, data sampling, environments and evaluation."""
    output_dir: str | None = None
    """Run directory; None = a new timestamped directory under runs/."""
    resume: bool = False
    """Continue the run in --output_dir from checkpoints/last.pt (same settings)."""
    overwrite: bool = False
    """Replace the run in --output_dir (only a directory this project made as a run)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto = cuda when available (under torchrun: cuda:LOCAL_RANK)."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """auto = bf16 autocast where the device computes bf16 natively (a bf16 GPU, a CPU with
    AVX512_BF16 or AMX), else fp32; weights, gradients, optimizer state and the agents'
    losses, distributions and value heads stay fp32."""
    channels_last: bool = False
    """Conv bodies channels-last (NHWC) in fp32 too (bf16 runs always are)."""
    threads: int = 0
    """torch CPU threads (0: torch's default)."""
    log_interval: int = 100
    """Print a full metrics line every this many steps (train_ppo.py: iterations)."""
    save_interval: int = 5_000
    """Write checkpoints/last.pt every this many steps (train_ppo.py: iterations) and at the end."""
    skip_nonfinite: bool = False
    """On a NaN/Inf gradient skip the step instead of stopping the run."""

    def __post_init__(self) -> None:
        at_least("threads", self.threads, 0)
        at_least("log_interval", self.log_interval, 1)
        at_least("save_interval", self.save_interval, 1)


def flag_values(config: Any) -> dict[str, Any]:
    """A config (dataclass or its JSON dict) as {flag: value}, e.g. {"agent.lr": 1e-4}.

    The run settings' `run.` prefix is left out, as on the command line.
    """
    data = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    flat: dict[str, Any] = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}.{key}" if path else str(key))
        else:
            flat[path] = value

    for key, value in data.items():
        walk(value, "" if key == "run" else key)
    return {LEGACY_FLAGS.get(k, k): v for k, v in flat.items()}


def _normal(value: Any) -> Any:
    """Compare as JSON sees it (tuples are lists, paths are strings)."""
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def resume_changes(saved: dict[str, Any], new: Any) -> dict[str, tuple[Any, Any]]:
    """{flag: (saved, new)} of the allowed changes; raises ValueError listing the others.

    Only the settings present in both are compared: `saved` is a config.json, which also
    holds facts found at run time (weights sources, resumes).
    """
    before, after = flag_values(saved), flag_values(new)
    changed = {
        flag: (before[flag], _normal(value))
        for flag, value in after.items()
        if flag in before and _normal(before[flag]) != _normal(value)
    }
    refused = {flag: pair for flag, pair in changed.items() if flag not in RESUMABLE_CHANGES}
    if refused:
        listed = "; ".join(f"--{f} saved {a!r}, now {b!r}" for f, (a, b) in refused.items())
        raise ValueError(
            f"--resume continues the same run, but these settings differ from its "
            f"config.json: {listed}; drop them, or start a new run with another --output_dir"
        )
    return changed
