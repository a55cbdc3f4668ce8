"""A toy task and agent that follow train_bc.py's protocol, to test the wiring alone."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from training.contracts import EvalResult
from training.diagnostics import grad_norms
from training.optim import build_optimizer


@dataclass(frozen=True)
class ToySpec:
    """The toy data's spec: input size."""

    dim: int


@dataclass(frozen=True)
class ToyConfig:
    """Linear regression agent."""

    lr: float = 0.05
    """Learning rate."""
    freeze_encoder: bool = False
    """Freeze the first layer."""
    nan_at_update: int = 0
    """Make the loss NaN at this update (1-based; 0 = never), to test the guard."""


class ToyAgent(nn.Module):
    def __init__(self, cfg: ToyConfig, spec: ToySpec, device: torch.device) -> None:
        super().__init__()
        self.encoder = nn.Linear(spec.dim, 8)
        self.head = nn.Linear(8, 1)
        self.encoder.requires_grad_(not cfg.freeze_encoder)
        self.nan_at_update = cfg.nan_at_update
        self.updates = 0
        self.optimizer = build_optimizer(
            self, backbone_lr=cfg.lr, head_lr=cfg.lr, backbone_modules=[self.encoder]
        )

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        loss = (self.head(self.encoder(batch["x"])).squeeze(-1) - batch["y"]).pow(2).mean()
        return loss, {"train/loss": loss.detach()}

    def update(self, batch: dict[str, torch.Tensor], loss_fn=None) -> dict:
        loss, info = (loss_fn or self.loss)(batch)
        self.updates += 1
        if self.updates == self.nan_at_update:
            loss = loss * float("nan")
        self.optimizer.zero_grad()
        loss.backward()
        info.update(grad_norms(self.optimizer))
        self.optimizer.step()
        return info

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(obs)).squeeze(-1)

    def components(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "head": self.head}

    def prepare(self, data: ToyData) -> ToyData:
        return data


class ToyData:
    def __init__(self, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(256, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0])
        self.spec = ToySpec(dim=4)
        self.num_samples = 256

    def describe(self) -> str:
        return "toy regression, 256 samples"

    def sample_indices(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.num_samples, (batch_size,), generator=generator)

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": self.x[idx], "y": self.y[idx]}


class ToyEvaluator:
    def __init__(self, data: ToyData) -> None:
        self.data = data

    def run(self, agent: ToyAgent, num_episodes: int) -> dict:
        err = (agent.act(self.data.x) - self.data.y).pow(2).mean().item()
        return EvalResult({"eval/mse": err})

    def close(self) -> None:
        pass


def make_data(dataset, *, device, seed, cache_dir) -> ToyData:
    if dataset is not None:
        raise FileNotFoundError(f"toy dataset {dataset} does not exist")
    return ToyData(seed)


def make_evaluator(spec, *, device, seed, num_workers, video_dir) -> ToyEvaluator:
    return ToyEvaluator(ToyData(seed))
