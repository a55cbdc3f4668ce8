"""Precision chosen for the hardware (bf16 autocast or fp32), and channels-last bodies.

`--precision auto` (the default) runs bf16 autocast where the device computes bf16
natively: a CUDA device that supports it, or a CPU with AVX512_BF16 or AMX (asked of torch,
not read from /proc); fp32 elsewhere, where bf16 would be emulated and slower. bf16 keeps
fp32's exponent range, so it needs no loss scaling (unlike fp16): the forward passes run
under autocast, while the weights, gradients and optimizer state stay fp32, and the agents
keep their numerically delicate parts in fp32 (losses, the PPO policy distribution and
log-probabilities, value heads, the flow integration, the EMA). With bf16 the conv bodies
are also channels-last (NHWC), the layout oneDNN's and cuDNN's bf16 kernels are fastest in;
`--channels_last=True` asks for it in fp32 too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from training.ranges import ConfigError

PrecisionChoice = Literal["auto", "bf16", "fp32"]
Precision = Literal["bf16", "fp32"]


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 in hardware (so that autocast is a speed-up)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def resolve_precision(asked: PrecisionChoice, device: torch.device,
                      bf16_hazard: str | None = None,
                      cpu_bf16_slower: str | None = None) -> Precision:
    """`auto` as this device runs it; `bf16` and `fp32` as asked.

    `bf16_hazard` says why this run must not train in bf16 (auto then picks fp32, and an
    explicit bf16 is refused in one line). `cpu_bf16_slower` says why this model runs
    slower in bf16 on a CPU, native bf16 or not (auto then picks fp32 on a CPU; an explicit
    bf16 runs as asked).
    """
    if bf16_hazard is not None:
        if asked == "bf16":
            raise ConfigError(f"--precision=bf16: {bf16_hazard}; use --precision=fp32 (or "
                              f"auto, which picks fp32 for this run)")
        return "fp32"
    if asked == "auto":
        if device.type == "cpu" and cpu_bf16_slower is not None:
            return "fp32"
        return "bf16" if native_bf16(device) else "fp32"
    return asked


def unit_map_hazard(image_size: int, trains_last_stage: bool) -> str | None:
    """Why a ResNet whose last stage trains must not train in bf16 on images this small.

    Its last stage then sees a 1 x 1 map (the body downsamples 16x before it), and the bf16
    weight gradient of a 3 x 3, stride-2 convolution on a 1 x 1 input is sometimes NaN on
    the CPU (oneDNN, torch 2.14.1: 11 of 40 tries of the bare convolution on the AMD EPYC,
    none on 2 x 2 or larger maps).
    """
    if trains_last_stage and image_size <= 16:
        return (f"images of {image_size} x {image_size} give the trained last ResNet stage a "
                f"1 x 1 map, whose bf16 weight gradients are sometimes NaN on the CPU")
    return None


def describe_precision(asked: PrecisionChoice, resolved: Precision, device: torch.device,
                       bf16_hazard: str | None = None,
                       cpu_bf16_slower: str | None = None) -> str:
    """The line a run prints at start: what it runs at and why."""
    if bf16_hazard is not None and asked == "auto":
        return f"precision: fp32 (auto: {bf16_hazard})"
    if cpu_bf16_slower is not None and asked == "auto" and device.type == "cpu":
        return f"precision: fp32 (auto: {cpu_bf16_slower})"
    if asked != "auto":
        note = "" if resolved == "fp32" or native_bf16(device) else (
            " (this device has no native bf16: emulated, likely slower than fp32)")
        return f"precision: {resolved} (--precision={asked}){note}"
    why = ("computes bf16 natively" if resolved == "bf16"
           else "has no native bf16")
    layout = ", channels-last bodies" if resolved == "bf16" else ""
    return f"precision: {resolved}{layout} (auto: this {device.type} {why})"


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


def fp32_region(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off inside a bf16 run: the numerically delicate parts (log-probabilities and
    their ratios, value regression, flow integration) compute in fp32; cast inputs with
    .float() on the way in."""
    return torch.autocast(device.type, enabled=False)


def to_channels_last(model: nn.Module, enabled: bool) -> nn.Module:
    """4-D weights in channels-last layout, in place (parameters keep their identity)."""
    if enabled:
        model.to(memory_format=torch.channels_last)
    return model
