"""Durotaxis's floor and ceiling: random, blind, image read-out and privileged policies.

Each is an env -> (kind, params) function over a Durotaxis engine (envs/durotaxis/
engine.py), the form `envs.durotaxis.evaluation.run_episodes` plays. They bound what
an image encoder can add:

- random: uniform kind and parameters (the floor).
- blind: sees nothing; spawns along a constant direction, retracts the rear when the
  cluster is full, constant gamma (chosen on tuning seeds, apart from evaluation's).
- readout: the same, but steering along a least-squares plane fitted to the observed
  image (cells masked out): what a linear read-out of one frame buys.
- privileged: knows the goal, the physics and the obstacles: steers to the goal around
  obstacles, sets gamma so that each protrusion lands as far as the link allows (or on
  the goal), alpha and noise at their minimum; the ceiling nothing above may beat.

    python -m envs.durotaxis.baselines --preset standard --episodes 1000
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from envs.durotaxis.cluster import hill_length
from envs.durotaxis.config import DELETE, PARAM_NAMES, SPAWN, DurotaxisConfig
from envs.durotaxis.engine import DurotaxisEngine, make_engine
from envs.durotaxis.evaluation import run_episodes

Policy = Callable[[DurotaxisEngine], tuple[torch.Tensor, torch.Tensor]]
# Constant gammas the blind and read-out policies choose from (on tuning seeds).
GAMMA_GRID = (2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0, 25.0, 30.0)
TUNING_SEED = 777_777


def random_policy(
    env: DurotaxisEngine, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform kind and uniform parameters within their bounds (the floor)."""
    b, dev = env.num_envs, env.device
    kind = torch.randint(0, 3, (b,), device=dev, generator=generator)
    u = torch.rand(b, len(PARAM_NAMES), device=dev, generator=generator)
    return kind, env.param_low + u * (env.param_high - env.param_low)


def _rule_action(env: DurotaxisEngine, direction: torch.Tensor,
                 gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Spawn along `direction` until the cluster is full, then retract its rear; alpha and
    noise at their minimum."""
    low = env.param_low
    full = env.num_cells() >= env.config.max_cells
    kind = torch.where(full, DELETE, SPAWN)
    gamma = torch.maximum(torch.minimum(gamma, env.param_high[2]), low[2])
    rest = low[3:].expand(env.num_envs, -1)
    return kind, torch.cat([direction, gamma[:, None], rest], dim=1)


def blind_policy(gamma: float) -> Policy:
    """Constant direction (+x: the task is rotation invariant, so any is as good)."""

    def policy(env: DurotaxisEngine) -> tuple[torch.Tensor, torch.Tensor]:
        direction = torch.tensor([[1.0, 0.0]], device=env.device).expand(env.num_envs, 2)
        return _rule_action(env, direction, torch.full((env.num_envs,), gamma,
                                                       device=env.device))

    return policy


def plane_fit_direction(obs: torch.Tensor) -> torch.Tensor:
    """Unit direction of steepest brightness increase of B x C x H x W images, by least
    squares of a plane over the pixels that are not cell marks (255), in world axes."""
    image = obs[:, 0].float()
    b, h, w = image.shape
    weight = (image < 255).float()
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=obs.device),
                            torch.arange(w, dtype=torch.float32, device=obs.device),
                            indexing="ij")
    design = torch.stack([torch.ones_like(xs), xs, -ys], dim=-1).reshape(1, -1, 3)
    wd = design * weight.reshape(b, -1, 1)
    normal = wd.transpose(1, 2) @ design  # B x 3 x 3
    rhs = wd.transpose(1, 2) @ image.reshape(b, -1, 1)
    coef = torch.linalg.solve(normal + 1e-6 * torch.eye(3, device=obs.device), rhs)[..., 0]
    slope = coef[:, 1:]
    return slope / slope.norm(dim=-1, keepdim=True).clamp(min=1e-9)


def readout_policy(gamma: float) -> Policy:
    """Steer along the plane fitted to the observation; otherwise as the blind policy."""

    def policy(env: DurotaxisEngine) -> tuple[torch.Tensor, torch.Tensor]:
        # The newest frame only (with frame_stack > 1 the last channels): this bound is what
        # one frame buys, the same with and without stacking. (A mean over the frames would
        # blur the cell marks the fit masks out, as the window follows the cluster.)
        direction = plane_fit_direction(env.observe()[:, -env.config.channels :])
        return _rule_action(env, direction, torch.full((env.num_envs,), gamma,
                                                       device=env.device))

    return policy


def privileged_policy(env: DurotaxisEngine) -> tuple[torch.Tensor, torch.Tensor]:
    """Told the goal, the physics and the obstacles (the ceiling)."""
    if env.config.preset == "easy":
        return _easy_heuristic(env)
    c = env.config
    low = env.param_low
    direction = env.goal_direction(env.centroid)
    if c.obstacles:
        direction = _around_obstacles(env, direction)
    parent_pos = env.leading_cell(direction)
    to_goal = parent_pos.norm(dim=-1)
    wanted = torch.minimum(torch.full_like(to_goal, 0.95 * c.max_link), to_goal)
    stiffness = env.log_stiffness(parent_pos).exp()
    hill = hill_length(1.0, low[3], stiffness)
    return _rule_action(env, direction, wanted / hill)


def _around_obstacles(env: DurotaxisEngine, direction: torch.Tensor) -> torch.Tensor:
    """The direction nearest `direction` whose next protrusion from the front stays clear
    of every obstacle (a margin for the steering noise)."""
    c = env.config
    margin = c.obstacle_radius + 0.4 * c.max_link
    best = direction
    found = torch.zeros(env.num_envs, dtype=torch.bool, device=env.device)
    for angle in (0.0, 0.3, -0.3, 0.6, -0.6, 0.9, -0.9, 1.2, -1.2, 1.5, -1.5):
        cos, sin = math.cos(angle), math.sin(angle)
        d = torch.stack([cos * direction[:, 0] - sin * direction[:, 1],
                         sin * direction[:, 0] + cos * direction[:, 1]], dim=-1)
        start = env.leading_cell(d)
        # Clear if the whole protrusion segment keeps `margin` from every obstacle centre.
        rel = env.obstacle_pos - start[:, None, :]
        along = (rel * d[:, None, :]).sum(-1).clamp(0.0, c.max_link)
        closest = start[:, None, :] + along[..., None] * d[:, None, :]
        clear = ((closest - env.obstacle_pos).norm(dim=-1) > margin).all(dim=1)
        take = clear & ~found
        best = torch.where(take[:, None], d, best)
        found |= clear
    return best


def _easy_heuristic(env: DurotaxisEngine) -> tuple[torch.Tensor, torch.Tensor]:
    """The easy preset's ceiling: spawn straight up the gradient, gamma so that the Hill
    distance lands on the goal line when one spawn can reach it, retract when full."""
    c = env.config
    low, high = env.param_low, env.param_high
    front = env.front_s()
    goal = env.s_ref + c.success_fraction * (c.half_width - env.s_ref)
    stiffness = env.intensity(front, env.exponential)
    alpha = torch.full_like(front, float(low[3]))
    hill = hill_length(1.0, alpha, stiffness)
    wanted = (goal - front + 1.0).clamp(min=0.0)
    gamma = torch.maximum(torch.minimum(wanted / hill, high[2]), low[2])
    kind = torch.where(env.num_cells() >= c.max_cells, DELETE, SPAWN)
    noise = torch.full_like(front, float(low[4]))
    params = torch.stack([env.grad_dir[:, 0], env.grad_dir[:, 1], gamma, alpha, noise], dim=-1)
    return kind, params


# Kept for scripts written against the first version.
heuristic_policy = privileged_policy


def best_constant_gamma(config: DurotaxisConfig, make: Callable[[float], Policy],
                        episodes: int, device: torch.device | str = "cpu") -> float:
    """The gamma of GAMMA_GRID with the highest mean return on the tuning seeds."""
    scores = {}
    for gamma in GAMMA_GRID:
        if not config.gamma_range[0] <= gamma <= config.gamma_range[1]:
            continue
        env = make_engine(config, episodes, device)
        scores[gamma] = run_episodes(env, make(gamma), seed=TUNING_SEED)["mean_return"]
    return max(scores, key=scores.get)


def baseline_policies(config: DurotaxisConfig, tuning_episodes: int, seed: int,
                      device: torch.device | str = "cpu") -> dict[str, Policy]:
    """The four bounds by name, the constant gammas tuned apart from evaluation seeds."""
    gen = torch.Generator(device=device).manual_seed(seed)
    blind_gamma = best_constant_gamma(config, blind_policy, tuning_episodes, device)
    readout_gamma = best_constant_gamma(config, readout_policy, tuning_episodes, device)
    return {
        "random": lambda e: random_policy(e, gen),
        "blind": blind_policy(blind_gamma),
        "readout": readout_policy(readout_gamma),
        "privileged": privileged_policy,
    }


def _main() -> None:
    """Print the four baselines' success rates and returns on the evaluation seeds."""
    import argparse

    from envs.durotaxis.evaluation import evaluation_seed

    parser = argparse.ArgumentParser(description=_main.__doc__)
    parser.add_argument("--preset", default="standard", choices=("easy", "standard", "hard"))
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--tuning_episodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = DurotaxisConfig(preset=args.preset)
    for name, policy in baseline_policies(config, args.tuning_episodes, args.seed).items():
        env = make_engine(config, args.episodes)
        stats = run_episodes(env, policy, seed=evaluation_seed(args.seed))
        print(
            f"{args.preset:8s} {name:10s} episodes={args.episodes} "
            f"success_rate={stats['success_rate']:.3f} mean_return={stats['mean_return']:.3f} "
            f"mean_length={stats['mean_length']:.1f}"
        )


if __name__ == "__main__":
    _main()
