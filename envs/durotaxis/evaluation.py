"""Durotaxis evaluation: play one episode in every environment of a batch and summarise.

A policy here is an env -> (kind, params) function over a Durotaxis engine: the
baselines (envs/durotaxis/baselines.py) are such functions, and `greedy_policy` makes
one of a model.
"""

from __future__ import annotations

from typing import Any

import torch

from envs.durotaxis.config import DurotaxisConfig
from envs.durotaxis.engine import DurotaxisEngine, make_engine


def greedy_policy(model: Any):
    """The deterministic policy as an env -> (kind, params) function.

    `model` is anything with `act(obs, deterministic=True)` returning a dict with "kind"
    (B integers) and "params" (B x 5); obs is the B x C x H x W uint8 observation
    (C = frame_stack x channels: the engine's stacked frames).
    """

    def policy(env: DurotaxisEngine) -> tuple[torch.Tensor, torch.Tensor]:
        out = model.act(env.observe(), deterministic=True)
        return out["kind"], out["params"]

    return policy


def run_episodes(env: DurotaxisEngine, policy: Any, seed: int = 0) -> dict[str, float]:
    """Play one episode in every env (all in parallel) and return success rate and mean return."""
    env.reset(seed=seed)
    done = torch.zeros(env.num_envs, dtype=torch.bool, device=env.device)
    success = torch.zeros_like(done)
    returns = torch.zeros(env.num_envs, device=env.device)
    lengths = torch.zeros(env.num_envs, device=env.device)
    for _ in range(env.config.max_steps):
        kind, params = policy(env)
        reward, terminated, truncated, info = env.step(kind, params)
        live = ~done
        returns += reward * live
        lengths += live.float()
        success |= info["is_success"] & live
        done |= terminated | truncated
        if bool(done.all()):  # one host sync per step: fine outside the training loop
            break
    return {
        "success_rate": success.float().mean().item(),
        "mean_return": returns.mean().item(),
        "mean_length": lengths.mean().item(),
        "episodes": float(env.num_envs),
    }


def baselines_on_evaluation_seeds(
    env_cfg: DurotaxisConfig, episodes: int, seed: int, device: torch.device
) -> dict[str, float]:
    """The four bounds (random, blind, readout, privileged) on the evaluation seeds.

    The blind and read-out policies' constant gamma is tuned on separate seeds
    (envs/durotaxis/baselines.py), never on these.
    """
    from envs.durotaxis.baselines import baseline_policies

    out = {}
    policies = baseline_policies(env_cfg, min(episodes, 256), seed, device)
    for name, policy in policies.items():
        stats = run_episodes(make_engine(env_cfg, episodes, device), policy,
                             seed=evaluation_seed(seed))
        out[f"eval/{name}_success_rate"] = stats["success_rate"]
        out[f"eval/{name}_episodic_return"] = stats["mean_return"]
    return out


# Kept for scripts written against the first version (it now returns all four bounds).
floor_and_ceiling = baselines_on_evaluation_seeds


EVALUATION_KEYS = 1 << 40  # training keys stay below (train_ppo.training_env_seed)


def evaluation_seed(seed: int) -> int:
    """Key of the first evaluation environment of a run seeded `seed` (env i adds i).

    2**40 + seed * 2**20: apart from every training key and from other seeds' evaluation
    keys (up to 2**20 evaluation episodes).
    """
    return EVALUATION_KEYS + (seed << 20)
