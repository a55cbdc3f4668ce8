"""Run logging: console and a JSONL file always, wandb when it is wanted.

`--wandb.mode auto` means online when an API key is configured and offline otherwise, so
that a machine without a network (or a key) never blocks on wandb; offline runs can be
uploaded later with `wandb sync`.
"""

from __future__ import annotations

import json
import netrc
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm import tqdm

from training.checkpoint import config_to_dict


@dataclass(frozen=True)
class WandbConfig:
    """Weights & Biases settings."""

    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    """auto: online if an API key is configured, else offline (never blocks offline)."""
    project: str = "rlenc"
    """wandb project."""
    entity: str | None = None
    """wandb entity (team or user); None = your default."""
    group: str | None = None
    """wandb group, e.g. to gather seeds of one configuration."""
    init_timeout: float = 60.0
    """Seconds to wait for an online start before falling back to offline (mode auto)."""


class WandbUnavailable(Exception):
    """--wandb.mode=online was asked for and wandb could not start (one line)."""


def wandb_api_key_configured() -> bool:
    """True when wandb could authenticate: WANDB_API_KEY or a netrc entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    """The mode wandb.init gets for `--wandb.mode`."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE") in ("online", "offline", "disabled"):
        return os.environ["WANDB_MODE"]
    return "online" if wandb_api_key_configured() else "offline"


def as_floats(metrics: dict[str, float | torch.Tensor]) -> dict[str, float]:
    """Plain floats, in order; tensor values are read off their device in one transfer."""
    tensors = [v.detach().float().reshape(()) for v in metrics.values() if torch.is_tensor(v)]
    read = iter(torch.stack([t.to(tensors[0].device) for t in tensors]).tolist() if tensors else [])
    return {k: next(read) if torch.is_tensor(v) else float(v) for k, v in metrics.items()}


def rewind_metrics(path: Path, step: int) -> int:
    """Move the records logged after `step` to metrics.rewound.jsonl; returns how many.

    A run that died after its last checkpoint logged steps that the resumed run computes
    again; without this they would appear twice. A line cut short by the crash goes too.
    """
    if not path.exists():
        return 0
    keep, later = [], []
    for line in path.read_text().splitlines(keepends=True):
        try:
            (later if json.loads(line)["step"] > step else keep).append(line)
        except (ValueError, KeyError, TypeError):
            later.append(line)
    if later:
        with open(path.with_name("metrics.rewound.jsonl"), "a") as f:
            f.writelines(later)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(keep))
        os.replace(tmp, path)
    return len(later)


class RunLogger:
    """Logs flat metric dicts to the console, `metrics.jsonl` and (maybe) wandb.

    `active=False` (every rank but 0 of a distributed run) makes every method a no-op.
    `resume_step`: the checkpoint's step when resuming; records logged after it are set
    aside (`rewind_metrics`). wandb keeps them: it ignores steps below its last one.
    """

    def __init__(
        self,
        output_dir: str | Path,
        config: Any,
        wandb: WandbConfig = WandbConfig(),
        run_name: str | None = None,
        console_every: int = 1,
        active: bool = True,
        resume_step: int | None = None,
    ) -> None:
        self.active = active
        self._wandb = None
        if not active:
            return
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.config = config_to_dict(config)
        self.run_name = run_name or self.output_dir.name
        self.console_every = max(1, console_every)
        self._calls = 0
        config_file = self.output_dir / "config.json"
        if resume_step is not None and config_file.is_file():
            # A resumed run is the same run: its record keeps the settings it began with.
            self.config = json.loads(config_file.read_text())
        else:
            config_file.write_text(json.dumps(self.config, indent=2))
        # Append: a resumed run continues the same file.
        if resume_step is not None:
            rewound = rewind_metrics(self.output_dir / "metrics.jsonl", resume_step)
            if rewound:
                tqdm.write(
                    f"resuming at step {resume_step}: moved {rewound} later record(s) of "
                    f"metrics.jsonl to metrics.rewound.jsonl"
                )
        self._jsonl = open(self.output_dir / "metrics.jsonl", "a", buffering=1)
        self._start = time.time()
        self.wandb_mode = resolve_wandb_mode(wandb.mode)
        if self.wandb_mode != "disabled":
            self._wandb = self._init_wandb(wandb)

    def _init_wandb(self, cfg: WandbConfig):
        import wandb

        id_file = self.output_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
        id_file.write_text(run_id)
        asked = cfg.mode
        try:
            return wandb.init(
                project=cfg.project,
                entity=cfg.entity,
                group=cfg.group,
                name=self.run_name,
                id=run_id,
                resume="allow",
                config=self.config,
                dir=str(self.output_dir),
                mode=self.wandb_mode,
                settings=wandb.Settings(init_timeout=cfg.init_timeout, console="off"),
            )
        except Exception as err:  # a key but no network (or a refused key)
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
            if asked == "online":
                raise WandbUnavailable(
                    f"--wandb.mode=online: wandb could not start ({reason}); check the network "
                    f"and key, or use --wandb.mode=auto (falls back to offline) or offline"
                ) from None
            tqdm.write(f"warning: wandb {self.wandb_mode} start failed ({reason}); logging "
                       f"offline instead (upload later with `wandb sync {self.output_dir}/wandb`)")
            # The failed online run still holds its id in wandb's service: start afresh.
            wandb.teardown()
            self.wandb_mode = "offline"
            return wandb.init(
                project=cfg.project,
                entity=cfg.entity,
                group=cfg.group,
                name=self.run_name,
                id=run_id,
                resume="allow",
                config=self.config,
                dir=str(self.output_dir),
                mode="offline",
                settings=wandb.Settings(console="off"),
            )

    def add_config(self, values: dict[str, Any]) -> None:
        """Record facts found at run time (e.g. weights that fell back to random)."""
        if not self.active:
            return
        self.config.update(values)
        (self.output_dir / "config.json").write_text(json.dumps(self.config, indent=2))
        if self._wandb is not None:
            self._wandb.config.update(values, allow_val_change=True)

    def log(
        self, metrics: dict[str, float | torch.Tensor], step: int, console: bool = True
    ) -> dict[str, float]:
        """Log one flat dict of metrics (floats or 0-d tensors) at `step`; returns the floats.

        `console=False` keeps it off the console (the file and wandb still get it).
        """
        if not self.active:
            return {}
        clean = as_floats(metrics)
        record = {"step": int(step), "time": round(time.time() - self._start, 3), **clean}
        self._jsonl.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._wandb.log(clean, step=int(step))
        self._calls += 1
        if console and self._calls % self.console_every == 0:
            shown = " | ".join(f"{k} {v:.4g}" for k, v in clean.items())
            tqdm.write(f"[{step}] {shown}")
        return clean

    def log_video(self, key: str, path: str | Path, step: int) -> None:
        """Upload a GIF/MP4 to wandb (the file stays in the run directory)."""
        if not self.active:
            return
        if self._wandb is not None:
            import wandb

            self._wandb.log({key: wandb.Video(str(path))}, step=int(step))
        tqdm.write(f"[{step}] {key}: {path}")

    def log_image(self, key: str, path: str | Path, step: int) -> None:
        """Upload a PNG to wandb (the file stays in the run directory)."""
        if not self.active:
            return
        if self._wandb is not None:
            import wandb

            self._wandb.log({key: wandb.Image(str(path))}, step=int(step))
        tqdm.write(f"[{step}] {key}: {path}")

    def close(self) -> None:
        """Flush and finish."""
        if not self.active:
            return
        self._jsonl.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
