"""Durotaxis floor and ceiling policies: uniform random actions and a privileged heuristic.

Both are env -> (kind, params) functions over a `DurotaxisCore`, the form
`envs.durotaxis.evaluation.run_episodes` plays.

    python -m envs.durotaxis.baselines --episodes 1000   # their success rates
"""

from __future__ import annotations

import torch

from envs.durotaxis.core import (
    DELETE,
    PARAM_HIGH,
    PARAM_LOW,
    PARAM_NAMES,
    SPAWN,
    DurotaxisConfig,
    DurotaxisCore,
)
from envs.durotaxis.evaluation import run_episodes


def random_policy(
    env: DurotaxisCore, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform kind and uniform parameters within their bounds (the floor)."""
    b, dev = env.num_envs, env.device
    kind = torch.randint(0, 3, (b,), device=dev, generator=generator)
    u = torch.rand(b, len(PARAM_NAMES), device=dev, generator=generator)
    return kind, env.param_low + u * (env.param_high - env.param_low)


def heuristic_policy(env: DurotaxisCore) -> tuple[torch.Tensor, torch.Tensor]:
    """Privileged policy told the gradient: spawn straight up it, retract the rear when full.

    gamma is chosen so that the Hill distance lands on the goal line when one spawn can
    reach it (the largest step otherwise); alpha and noise at their minimum.
    """
    c = env.config
    front = env.front_s()
    goal = env.s_ref + c.success_fraction * (c.half_width - env.s_ref)
    stiffness = env.intensity(front, env.exponential)
    alpha = torch.full_like(front, PARAM_LOW[3])
    hill = 1.0 / (1.0 + (alpha / stiffness) ** 2)
    wanted = (goal - front + 1.0).clamp(min=0.0)
    gamma = (wanted / hill).clamp(PARAM_LOW[2], PARAM_HIGH[2])
    kind = torch.where(env.num_cells() >= c.max_cells, DELETE, SPAWN)
    noise = torch.full_like(front, PARAM_LOW[4])
    params = torch.stack([env.grad_dir[:, 0], env.grad_dir[:, 1], gamma, alpha, noise], dim=-1)
    return kind, params


def _main() -> None:
    """Print the random (floor) and heuristic (ceiling) success rates over one episode per env."""
    import argparse

    parser = argparse.ArgumentParser(description=_main.__doc__)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", default="random")
    args = parser.parse_args()
    config = DurotaxisConfig(profile=args.profile)
    gen = torch.Generator().manual_seed(args.seed)
    for name, policy in (
        ("random", lambda e: random_policy(e, gen)),
        ("heuristic", heuristic_policy),
    ):
        env = DurotaxisCore(config, args.episodes)
        stats = run_episodes(env, policy, seed=args.seed)
        print(
            f"{name:9s} episodes={args.episodes} success_rate={stats['success_rate']:.3f} "
            f"mean_return={stats['mean_return']:.3f} mean_length={stats['mean_length']:.1f}"
        )


if __name__ == "__main__":
    _main()
