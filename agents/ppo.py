"""PPO for the hybrid actor-critic: its config, GAE, the clipped loss and the update.

CleanRL's details: GAE, per-minibatch advantage normalisation, value loss (clipped only
when asked for: off by default, see PPOConfig.clip_vloss), global gradient-norm clipping,
approx_kl / clipfrac, optional early stop at target_kl. When the encoders have a frozen
part the batch carries the rollout's frozen-prefix output instead of the observations
(with everything frozen: the features themselves), and the update runs only what trains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from agents.hybrid_actor_critic import HybridActorCritic
from training.diagnostics import grad_norms
from training.distributed import World, mean_over_ranks
from training.ranges import ConfigError, at_least, positive, unit_interval


@dataclass(frozen=True)
class PPOConfig:
    """PPO settings (CleanRL names)."""

    num_envs: int = 16
    """Environments stepped in parallel (one batch on the device)."""
    num_steps: int = 32
    """Steps per environment per rollout."""
    total_timesteps: int = 60_000
    """Environment steps to train for."""
    anneal_lr: bool = True
    """Anneal both learning rates linearly to 0 over training."""
    gamma: float = 0.99
    """Discount."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    num_minibatches: int = 8
    """Minibatches per epoch."""
    update_epochs: int = 10
    """Passes over each rollout (cheap with reused frozen features: only the heads run)."""
    norm_adv: bool = True
    """Normalise advantages per minibatch."""
    clip_coef: float = 0.2
    """Policy ratio clip."""
    clip_vloss: bool = False
    """Clip the value loss around the rollout's values. Off: the returns are not
    normalised (Durotaxis: -1..11), so a clip of clip_coef = 0.2 slows the value fit
    (a review measured one update on a trained easy-preset checkpoint: value MSE 2.24 ->
    2.00 with it, -> 1.80 without), and
    CleanRL's and Andrychowicz et al.'s ablations find it does not help."""
    ent_coef: float = 0.01
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""
    target_kl: float | None = None
    """Stop the epochs of an update early when approx_kl exceeds this (None: never)."""

    def __post_init__(self) -> None:
        for name in ("num_envs", "num_steps", "total_timesteps", "num_minibatches",
                     "update_epochs"):
            at_least(f"ppo.{name}", getattr(self, name), 1)
        unit_interval("ppo.gamma", self.gamma)
        unit_interval("ppo.gae_lambda", self.gae_lambda)
        for name in ("clip_coef", "ent_coef", "vf_coef", "max_grad_norm"):
            at_least(f"ppo.{name}", getattr(self, name), 0.0)
        if self.target_kl is not None:
            positive("ppo.target_kl", self.target_kl)
        if self.num_minibatches > self.batch_size:
            raise ConfigError(
                f"--ppo.num_minibatches={self.num_minibatches} is more than the "
                f"{self.batch_size} transitions of a rollout (ppo.num_envs x ppo.num_steps)"
            )
        if self.norm_adv and self.smallest_minibatch == 1:
            # torch's std of one sample is NaN (unbiased), and so would every loss be. Each
            # torchrun process steps its own num_envs: this is the per-process minibatch too.
            raise ConfigError(
                f"ppo.num_envs * ppo.num_steps / ppo.num_minibatches = {self.num_envs} * "
                f"{self.num_steps} / {self.num_minibatches} leaves a minibatch of 1 sample; "
                f"advantages cannot be normalised over one sample: use fewer "
                f"--ppo.num_minibatches, more --ppo.num_envs or --ppo.num_steps, or "
                f"--ppo.norm_adv=False"
            )

    @property
    def batch_size(self) -> int:
        """Transitions per rollout."""
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        """Transitions per minibatch."""
        return self.batch_size // self.num_minibatches

    @property
    def smallest_minibatch(self) -> int:
        """Transitions in the smallest minibatch of an epoch (ppo_update's last one is the
        remainder when num_minibatches does not divide the rollout)."""
        return self.batch_size % self.minibatch_size or self.minibatch_size

    @property
    def num_iterations(self) -> int:
        """Rollout + update rounds (at least 1)."""
        return max(1, self.total_timesteps // self.batch_size)


def compute_gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    dones: torch.Tensor,
    next_value: torch.Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns for T x B rollouts.

    dones[t] is True when the episode ended at step t (terminated or truncated; the
    observation after it starts a new episode), so nothing is bootstrapped across it.
    next_value is V of the observation after the last step.
    """
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(next_value)
    for t in reversed(range(rewards.shape[0])):
        following = next_value if t == rewards.shape[0] - 1 else values[t + 1]
        keep = 1.0 - dones[t].float()
        delta = rewards[t] + gamma * following * keep - values[t]
        last = delta + gamma * gae_lambda * keep * last
        advantages[t] = last
    return advantages, advantages + values


def ppo_loss(
    model: HybridActorCritic, batch: dict[str, torch.Tensor], cfg: PPOConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped PPO loss on one minibatch; returns (loss, info tensors)."""
    if "prefix" in batch:  # the rollout's frozen-prefix output: only trainable parts run
        actor_f, critic_f = model.encode_from_prefix(batch["prefix"])
    elif "actor_features" in batch:
        actor_f, critic_f = batch["actor_features"], batch["critic_features"]
    else:
        actor_f, critic_f = model.encode(batch["obs"])
    dist = model.distribution(actor_f)
    new_log_prob = dist.log_prob(batch["kind"], batch["u"])
    kind_entropy, param_entropy = dist.entropy()
    new_value = model.value(critic_f)

    log_ratio = new_log_prob - batch["log_prob"]
    ratio = log_ratio.exp()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clipfrac = ((ratio - 1.0).abs() > cfg.clip_coef).float().mean()

    adv = batch["advantages"]
    if cfg.norm_adv:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    pg_loss = torch.max(
        -adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)
    ).mean()

    returns, old_value = batch["returns"], batch["values"]
    if cfg.clip_vloss:
        clipped = old_value + (new_value - old_value).clamp(-cfg.clip_coef, cfg.clip_coef)
        v_loss = 0.5 * torch.max((new_value - returns) ** 2, (clipped - returns) ** 2).mean()
    else:
        v_loss = 0.5 * ((new_value - returns) ** 2).mean()

    entropy = (kind_entropy + param_entropy).mean()
    loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
    info = {
        "train/policy_loss": pg_loss.detach(),
        "train/value_loss": v_loss.detach(),
        "train/entropy": entropy.detach(),
        "train/entropy_kind": kind_entropy.mean().detach(),
        "train/entropy_params": param_entropy.mean().detach(),
        "train/approx_kl": approx_kl,
        "train/clipfrac": clipfrac,
    }
    return loss, info


def ppo_update(
    model: HybridActorCritic,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    cfg: PPOConfig,
    generator: torch.Generator | None = None,
    loss_fn: Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, dict]] | None = None,
    world: World | None = None,
) -> dict[str, float]:
    """update_epochs passes of minibatch PPO over one flattened rollout; returns metrics.

    `loss_fn(minibatch)` defaults to `ppo_loss` on `model`; the training loop passes its
    DDP / autocast wrapper. With several processes each rank runs the same number of
    minibatches over its own rollout, and DDP averages their gradients; approx_kl is
    averaged too, so that every rank takes the same target_kl decision.
    Host syncs: one per epoch when target_kl is set, and one for the metrics at the end.
    """
    loss_fn = loss_fn or partial(ppo_loss, model, cfg=cfg)
    n = batch["kind"].shape[0]
    device = batch["kind"].device
    sums: dict[str, torch.Tensor] = {}
    count = 0
    grads: dict[str, torch.Tensor] = {}
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    epochs_done = 0
    for _ in range(cfg.update_epochs):
        order = torch.randperm(n, device="cpu", generator=generator).to(device)
        for start in range(0, n, cfg.minibatch_size):
            idx = order[start : start + cfg.minibatch_size]
            loss, info = loss_fn({k: v[idx] for k, v in batch.items()})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if not grads:  # measured on the first minibatch
                grads = grad_norms(optimizer)
            nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm, foreach=True)
            optimizer.step()
            for k, v in info.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
        epochs_done += 1
        if cfg.target_kl is not None:
            kl = info["train/approx_kl"]
            if world is not None:
                kl = mean_over_ranks(kl, world)
            if kl.item() > cfg.target_kl:
                break
    with torch.no_grad():
        y, v = batch["returns"], batch["values"]
        sums["train/explained_variance"] = (1 - (y - v).var() / y.var()) * count
    names = list(sums)
    values = torch.stack([sums[k] for k in names]) / count
    values = torch.cat([values, torch.stack(list(grads.values()))]).tolist()
    metrics = dict(zip([*names, *grads], values, strict=True))
    metrics["train/epochs"] = float(epochs_done)
    return metrics
