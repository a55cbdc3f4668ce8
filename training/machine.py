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


def _first_cpu_fields(cpuinfo: Path) -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        text = cpuinfo.read_text()
    except OSError:
        return fields
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what `platform` knows."""
    return (_first_cpu_fields(cpuinfo).get("model name")
            or platform.processor() or platform.machine() or "unknown")


def cpu_id(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """Family, model and stepping numbers: on VMs the model name can be as generic as "AMD
    EPYC", which several processor generations share; these tell them apart."""
    fields = _first_cpu_fields(cpuinfo)
    parts = [f"{key} {fields[key]}" for key in ("cpu family", "model", "stepping")
             if fields.get(key)]
    return ", ".join(parts) or None


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def describe_machine(device: torch.device) -> dict[str, Any]:
    """The run's machine: CPU model, its family/model numbers and the instruction set torch
    uses on it, the cores it may use, GPU (when the run uses one), torch, Python, OS."""
    import torch  # here: the sweep imports this module and needs no torch

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "cpu": cpu_model(),
        "cpu_id": cpu_id(),
        # The instruction set torch's CPU kernels dispatch to (AVX512, AVX2, ...), the
        # mechanism by which two CPU types round differently.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
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
