"""Range checks for config dataclasses, called from their `__post_init__`.

They raise `ConfigError`, not ValueError: tyro renders a ValueError raised while it builds
a config as a framed multi-line box, while a ConfigError reaches the entry script's
`run_main`, which prints it as one `error: ...` line. Each message names the flag, its
value and the allowed range, so the user knows what to type instead.
"""

from __future__ import annotations

import math


class ConfigError(Exception):
    """A setting outside its allowed range (one line: flag, value, allowed range)."""


def _refuse(flag: str, value: object, allowed: str) -> None:
    raise ConfigError(f"--{flag}={value} is out of range; allowed: {allowed}")


def at_least(flag: str, value: float, low: float) -> None:
    """value >= low (counts, sizes, coefficients)."""
    if not value >= low:  # also refuses NaN
        _refuse(flag, value, f">= {low}")


def positive(flag: str, value: float) -> None:
    """value > 0 and finite (learning rates, scales)."""
    if not (value > 0 and math.isfinite(value)):
        _refuse(flag, value, "> 0")


def unit_interval(flag: str, value: float, *, open_low: bool = True) -> None:
    """value in (0, 1] (discounts, GAE lambda, EMA decay), or [0, 1] with open_low=False."""
    ok = (value > 0 if open_low else value >= 0) and value <= 1
    if not ok:
        _refuse(flag, value, "(0, 1]" if open_low else "[0, 1]")


def below(flag: str, value: float, high: float) -> None:
    """value < high (probabilities such as dropout)."""
    if not value < high:
        _refuse(flag, value, f"< {high}")


def finite(flag: str, value: float) -> None:
    """value is a finite number (initial values, biases: any sign, but not NaN or inf)."""
    if not math.isfinite(value):
        _refuse(flag, value, "a finite number")


def at_least_finite(flag: str, value: float, low: float) -> None:
    """low <= value < inf (coefficients such as reward scales)."""
    if not (value >= low and math.isfinite(value)):
        _refuse(flag, value, f">= {low} and finite")
