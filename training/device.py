"""`--device auto|cpu|cuda`."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """auto = cuda when available, else cpu; asking for cuda without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                "--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto"
            )
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda")
