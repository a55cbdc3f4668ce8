"""The contracts between train_bc.py, a task's data and evaluator, and a BC agent.

A task (envs/<name>/) provides data and an evaluator; a method (agents/<name>.py) provides
an agent; train_bc.py wires any task to any agent that fits it through these, so N tasks
and M methods cost N + M code. They are structural (typing.Protocol): nothing inherits.

Each task's data carries a `spec`, a frozen dataclass the task defines (e.g. LiftSpec,
DarkroomSpec); an agent states the fields it reads as a Protocol of its own (e.g.
fbc's ImageChunkSpec), so agents know no environment and environments no agent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


class BCData(Protocol):
    """A dataset on the device, sampled by index."""

    spec: Any
    num_samples: int

    def describe(self) -> str:
        """One line (or paragraph) for the console."""
        ...

    def sample_indices(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Uniform sample indices drawn with `generator`, on the data's device."""
        ...

    def batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """The samples at `indices`, as flat tensors keyed by name."""
        ...


class BCAgent(Protocol):
    """What train_bc.py needs of an agent (an nn.Module built as Agent(cfg, spec, device))."""

    optimizer: torch.optim.Optimizer

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss of a batch, and metrics as 0-d device tensors."""
        ...

    def update(self, batch: dict[str, torch.Tensor], loss_fn: Any) -> dict[str, torch.Tensor]:
        """One optimizer step with `loss_fn` (self.loss, or its DDP / autocast wrapper)."""
        ...

    def components(self) -> dict[str, nn.Module]:
        """Named parts for the parameter report."""
        ...

    def prepare(self, data: BCData) -> BCData:
        """The data training reads (e.g. with frozen features cached); often `data` itself."""
        ...


@runtime_checkable
class HeldOutData(Protocol):
    """Data that carries a held-out split (e.g. Lift's mask/valid demos), or None."""

    valid: BCData | None


@runtime_checkable
class HeldOutScorer(Protocol):
    """An agent that scores held-out data (e.g. fbc's flow loss on the valid demos)."""

    def valid_metrics(self, data: BCData) -> dict[str, float]:
        """Metrics over every sample of `data`, same noise at every call."""
        ...

    def prepare(self, data: BCData, held_out: bool = False) -> BCData:
        """As BCAgent.prepare; held_out: prepared for scoring only (e.g. no augmentation)."""
        ...


@dataclass(frozen=True)
class EvalResult:
    """What an evaluation returns: flat metrics, and files to show on the dashboard."""

    metrics: dict[str, float]
    video: Path | None = None
    plots: tuple[Path, ...] = field(default_factory=tuple)


class Evaluator(Protocol):
    """Runs a policy in its environment; built by the task once per run."""

    def run(self, agent: Any, num_episodes: int) -> EvalResult:
        """Evaluate the agent over `num_episodes` episodes."""
        ...

    def close(self) -> None:
        """Release workers, environments, files."""
        ...
