"""Atomic checkpoints holding tensors only: model, optimizer, step, RNG and config.

Saved to a temporary file in the same directory and renamed over the target, so a crash
mid-write leaves the previous checkpoint intact (the next save removes the temp file of a
writer that was killed). Loaded with `weights_only=True`, so a file that carries pickled
objects (code) is refused instead of executed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from encoders.torch_files import load_tensors, save_tensors
from training.diagnostics import frozen_parameter_names


def config_to_dict(config: Any) -> dict:
    """A (nested) dataclass config as plain JSON-compatible data."""
    data = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return json.loads(json.dumps(data, default=str))


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states, as tensors and plain numbers."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": torch.tensor(py_state, dtype=torch.int64),
        "python_version": py_version,
        "python_gauss": py_gauss,
        "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_gauss": float(np_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Undo `rng_state()`."""
    random.setstate(
        (state["python_version"], tuple(state["python"].tolist()), state["python_gauss"])
    )
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_gauss"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    step: int,
    config: Any,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint atomically (temp file + fsync + rename); returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else {},
        "step": int(step),
        "config": json.dumps(config_to_dict(config)),
        "rng": rng_state(),
        "frozen": frozen_parameter_names(model),
        "extra": extra or {},
    }
    _remove_stale_temp_files(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            save_tensors(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _remove_stale_temp_files(path: Path) -> None:
    """Delete the temp files of writers of `path` that were killed mid-write (SIGKILL, OOM).

    Only those whose process is gone: a live writer (another process on this machine)
    keeps its file.
    """
    prefix = f".{path.name}.tmp-"
    for tmp in path.parent.iterdir():
        pid = tmp.name[len(prefix) :] if tmp.name.startswith(prefix) else ""
        if pid.isdigit() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (this one counts as running): a writer's
    temporary file or directory is left alone while it does."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint without executing code; config comes back as a dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    ckpt = load_tensors(path, map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "step" not in ckpt:
        raise ValueError(f"{path} is not one of our checkpoints (no model/step entries)")
    ckpt["config"] = json.loads(ckpt["config"]) if isinstance(ckpt.get("config"), str) else {}
    return ckpt


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict that fails with one line naming what does not fit.

    The keys are compared by the model's own load_state_dict (non-strict), so a model that
    upgrades an older layout of its state (e.g. fbc's EMA) loads it; shapes are compared
    first, on the keys both have, as load_state_dict raises a wall of text for them.
    """
    own = model.state_dict()
    wrong = [k for k in own if k in state and _shape(own[k]) != _shape(state[k])]
    missing, unexpected = [], []
    if not wrong:
        result = model.load_state_dict(state, strict=False)
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            shapes = f"{_shape(state[k])} vs {_shape(own[k])}"
            parts.append(f"{len(wrong)} of another shape (e.g. {k}: {shapes})")
        raise ValueError(
            f"checkpoint {source} does not fit this model: {'; '.join(parts)}; it was made "
            f"with another architecture or config"
        )


def _shape(value: Any) -> tuple | str:
    """A tensor's shape; the type name of a module's extra state (e.g. an int counter)."""
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, state: dict[str, Any], source: str
) -> None:
    """optimizer.load_state_dict that fails with one line naming the likely cause."""
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError) as err:
        raise ValueError(
            f"checkpoint {source}: its optimizer state does not fit ({err}); it was made with "
            f"other trainable parameters (freeze_mode, pooling, share_encoder)"
        ) from None
