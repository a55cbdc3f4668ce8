"""Guards for long runs: stop (or skip) on non-finite gradients, stop cleanly on signals.

A NaN that reaches `optimizer.step()` corrupts every weight it touches, and the next
checkpoint saves the corruption. The guard checks the gradients before each step and
holds the weights on a bad one, so the weights and the last checkpoint stay good.
SIGINT / SIGTERM (Ctrl-C, a scheduler's pre-emption) set a flag that the training loop
reads at the end of a step, so that it writes a final checkpoint instead of dying
mid-update.
"""

from __future__ import annotations

import signal
from types import FrameType

import torch

from training.diagnostics import tensor_grad_norms


class NonFiniteGradient(FloatingPointError):
    """A NaN or Inf gradient reached an optimizer step (`step`: 1-based, when known)."""

    def __init__(self, message: str, step: int | None = None) -> None:
        super().__init__(message)
        self.step = step


class NonFiniteGuard:
    """Checks the gradients before every optimizer step; holds the weights on a bad one.

    With a fused Adam/AdamW (what `build_optimizer` makes) the check stays on the
    device: a flag computed there makes the fused kernel skip the step
    (`optimizer.found_inf`, the mechanism AMP's GradScaler uses), so the guard costs no
    host sync. The host reads the flags in `check()`, which the training loops call
    when they log or save. Without `skip`, every step from the first bad one on is
    held, so the weights stay the last good ones until `check()` raises. Any other
    optimizer is checked on the host before each step (one sync per step).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, skip: bool = False) -> None:
        self.skip = skip
        self.names = [g.get("name", "group") for g in optimizer.param_groups]
        self.on_device = bool(optimizer.defaults.get("fused"))
        device = optimizer.param_groups[0]["params"][0].device
        self.steps = torch.zeros((), dtype=torch.long, device=device)
        self.skipped = torch.zeros((), dtype=torch.long, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_groups = torch.zeros(len(self.names), dtype=torch.bool, device=device)
        optimizer.register_step_pre_hook(self._before_step)

    def _before_step(self, opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        bad = ~torch.stack([tensor_grad_norms(g).isfinite().all() for g in opt.param_groups])
        self.steps += 1
        first = bad.any() & (self.first_bad < 0)
        self.first_bad = torch.where(first, self.steps, self.first_bad)
        self.bad_groups = torch.where(first, bad, self.bad_groups)
        hold = bad.any() if self.skip else self.first_bad >= 0
        self.skipped += hold
        if self.on_device:
            opt.found_inf = hold.float()
            return
        if bool(hold):  # host check: one sync per step
            if not self.skip:
                self.check()
            for group in opt.param_groups:  # params without a gradient are left alone
                for p in group["params"]:
                    p.grad = None

    def check(self) -> int:
        """Raise NonFiniteGradient if a step was non-finite (unless skipping); one host read.

        Returns the number of steps skipped so far. The error names the groups; its
        `step` is the first bad optimizer step, 1-based, counted from this guard's creation.
        """
        first, skipped, *groups = torch.cat(
            [self.first_bad.reshape(1), self.skipped.reshape(1), self.bad_groups.long()]
        ).tolist()
        if first >= 0 and not self.skip:
            bad = ", ".join(n for n, b in zip(self.names, groups, strict=True) if b)
            raise NonFiniteGradient(f"non-finite gradient in parameter group(s) {bad}", first)
        return int(skipped)


class StopRequested(BaseException):
    """A SIGINT / SIGTERM outside the training loop (demo generation, cache builds, ...).

    A BaseException, like KeyboardInterrupt, so that `except Exception` does not swallow
    it. A phase that keeps something (demos written so far) catches it, puts its files in
    order and raises it again with `kept` saying what it kept and how the next run uses it.
    """

    def __init__(self, signal_name: str, kept: str | None = None) -> None:
        super().__init__(signal_name if kept is None else f"{signal_name}: {kept}")
        self.signal_name = signal_name
        self.kept = kept

    @classmethod
    def keeping(cls, stop: BaseException, kept: str) -> StopRequested:
        """`stop` (a StopRequested, or a KeyboardInterrupt: SIGINT) saying what was kept."""
        return cls(signal_of(stop), kept)


def signal_of(stop: BaseException) -> str:
    """The signal's name of a StopRequested or a KeyboardInterrupt (SIGINT)."""
    return stop.signal_name if isinstance(stop, StopRequested) else "SIGINT"


def _install(handler) -> dict[int, object]:
    """`handler` for SIGINT and SIGTERM; returns the handlers it replaced."""
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    return previous


def _restore(previous: dict[int, object]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


class StopRaises:
    """Context manager: SIGINT / SIGTERM raise StopRequested where the program is.

    For the phases before and after the training loop, which do not poll a flag: Python
    runs the handler between bytecodes of the main thread, as it raises KeyboardInterrupt.
    """

    def __init__(self) -> None:
        self._previous: dict[int, object] = {}

    @staticmethod
    def _handle(signum: int, frame: FrameType | None) -> None:
        raise StopRequested(signal.Signals(signum).name)

    def __enter__(self) -> StopRaises:
        self._previous = _install(self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        _restore(self._previous)


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
        self._previous = _install(self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        _restore(self._previous)
