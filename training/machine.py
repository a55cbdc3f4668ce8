"""What a run ran on: recorded in its config (config.json, wandb) so a study can tell.

Runs repeat bit for bit only on one CPU type: torch's CPU kernels take other instruction
paths on other processors, the last bits of the rounding differ, and an RL run amplifies
that into other trajectories (measured in docs/reliability.md, "Determinism across
machines"). `machine_kind` is the part that decides this (CPU model, GPU, torch), so the
report can say when a study's runs come from more than one kind.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what `platform` knows."""
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def describe_machine(device: torch.device) -> dict[str, Any]:
    """The run's machine: CPU model and cores it may use, GPU (when the run uses one),
    torch, Python, OS."""
    import torch  # here: the sweep imports this module and needs no torch

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "cpu": cpu_model(),
        "cpu_cores": usable_cores(),
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "os": platform.platform(),
    }


def machine_kind(machine: dict[str, Any]) -> str:
    """What decides bitwise repeatability, as one label: 'CPU model, torch X', or
    'GPU on CPU model, torch X'."""
    where = str(machine.get("cpu", "unknown"))
    if machine.get("gpu"):
        where = f"{machine['gpu']} on {where}"
    return f"{where}, torch {machine.get('torch', '?')}"
