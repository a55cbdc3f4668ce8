"""Guards for long runs: stop (or skip) on non-finite gradients, stop cleanly on signals.

A NaN that reaches `optimizer.step()` corrupts every weight it touches, and the next
checkpoint saves the corruption. The guard checks the gradients before each step, so the
weights and the last checkpoint stay good. SIGINT / SIGTERM (Ctrl-C, a scheduler's
pre-emption) set a flag that the training loop reads at the end of a step, so that it
writes a final checkpoint instead of dying mid-update.
"""

from __future__ import annotations

import signal
from types import FrameType

import torch


class NonFiniteGradient(FloatingPointError):
    """A NaN or Inf gradient reached an optimizer step."""


def guard_nonfinite(optimizer: torch.optim.Optimizer, skip: bool = False) -> dict[str, int]:
    """Check gradients before every step: raise NonFiniteGradient, or skip the step.

    Returns a live counter {"skipped": n} for logging.
    """
    counter = {"skipped": 0}

    def check(opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        flags = []
        for group in opt.param_groups:
            grads = [p.grad for p in group["params"] if p.grad is not None]
            ok = torch.stack([torch.isfinite(g).all() for g in grads]).all() if grads else None
            flags.append(ok)
        present = [(g, f) for g, f in zip(opt.param_groups, flags, strict=True) if f is not None]
        if not present:
            return
        finite = torch.stack([f for _, f in present]).tolist()  # one host sync per step
        bad = [g.get("name", "group") for (g, _), ok in zip(present, finite, strict=True) if not ok]
        if not bad:
            return
        if not skip:
            raise NonFiniteGradient(f"non-finite gradient in parameter group(s) {', '.join(bad)}")
        counter["skipped"] += 1
        for group in opt.param_groups:  # params without a gradient are left alone by Adam
            for p in group["params"]:
                p.grad = None

    optimizer.register_step_pre_hook(check)
    return counter


class StopOnSignal:
    """Context manager: the first SIGINT/SIGTERM sets `.requested`; a second SIGINT aborts."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> StopOnSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
