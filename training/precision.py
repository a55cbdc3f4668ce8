"""Mixed precision (bf16 autocast) and channels-last convolutions, as run options.

bf16 keeps fp32's exponent range, so it needs no loss scaling (unlike fp16): the forward
pass runs under autocast, the weights, gradients and optimizer state stay fp32.
Channels-last (NHWC) lets cuDNN pick its tensor-core convolution kernels; a network in
that format makes its convolution outputs channels-last whatever the input's layout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on `device` when enabled, else a null context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def with_autocast(fn: Callable[..., Any], device: torch.device, enabled: bool) -> Callable:
    """`fn` run under bf16 autocast (the loss's forward; backward then follows its dtypes)."""
    if not enabled:
        return fn

    def run(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return fn(*args, **kwargs)

    return run


def to_channels_last(model: nn.Module, enabled: bool) -> nn.Module:
    """4-D weights in channels-last layout, in place (parameters keep their identity)."""
    if enabled:
        model.to(memory_format=torch.channels_last)
    return model
