"""Durotaxis presets: the migration engine's invariants, its Gymnasium forms, the baselines.

What the standard preset must be (issue: an environment where perception and the hybrid
action matter): retraction necessary, stiffness setting the physics (>= 2x step length),
no free steering, the four baselines in order and inside their bounds.
"""

from __future__ import annotations

import math
import warnings

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers Durotaxis-v0)
from envs.durotaxis.baselines import (
    blind_policy,
    plane_fit_direction,
    privileged_policy,
    random_policy,
    readout_policy,
)
from envs.durotaxis.config import DELETE, HOLD, SPAWN, DurotaxisConfig
from envs.durotaxis.core import DurotaxisCore
from envs.durotaxis.engine import make_engine
from envs.durotaxis.evaluation import run_episodes
from envs.durotaxis.gymnasium_env import DurotaxisEnv, DurotaxisVectorEnv
from envs.durotaxis.migration import MigrationCore

SMALL = DurotaxisConfig(image_size=32)
HARD_SMALL = DurotaxisConfig(preset="hard", image_size=32)


def _params(env, gamma: float, direction=(1.0, 0.0)) -> torch.Tensor:
    b = env.num_envs
    row = torch.tensor([*direction, gamma, float(env.param_low[3]), float(env.param_low[4])])
    return row.expand(b, 5).clone()


# ----- presets and settings ---------------------------------------------------------------


def test_presets_fill_unset_settings_and_explicit_settings_win():
    easy, standard, hard = (DurotaxisConfig(preset=p) for p in ("easy", "standard", "hard"))
    assert (easy.max_cells, easy.initial_cells, easy.max_steps) == (10, 2, 32)
    assert (standard.max_cells, standard.initial_cells, standard.obstacles) == (6, 4, 0)
    assert hard.obstacles > 0 and hard.max_steps > standard.max_steps
    assert DurotaxisConfig(max_cells=8).max_cells == 8
    assert DurotaxisConfig(preset="easy", max_steps=5).max_steps == 5
    assert standard.param_high[2] == standard.gamma_range[1] == 30.0
    assert isinstance(make_engine(easy, 2), DurotaxisCore)
    assert isinstance(make_engine(standard, 2), MigrationCore)
    with pytest.raises(ValueError, match="easy preset"):
        DurotaxisCore(standard, 2)


def test_gymnasium_make_gives_the_standard_preset_and_passes_check_env():
    for kwargs in ({}, {"preset": "hard"}, {"preset": "easy"}):
        env = gymnasium.make("Durotaxis-v0", image_size=32, render_mode="rgb_array", **kwargs)
        assert env.unwrapped.config.preset == kwargs.get("preset", "standard")
        high = env.unwrapped.action_space["params"].high
        assert high[2] == env.unwrapped.config.gamma_range[1]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*symmetric and normalized space.*")
            check_env(env.unwrapped)
        assert env.unwrapped.render().shape[2] == 3


@pytest.mark.parametrize("config", [SMALL, HARD_SMALL], ids=["standard", "hard"])
def test_the_batched_env_replays_single_envs_exactly(config):
    num, steps = 4, 60
    vec = DurotaxisVectorEnv(num_envs=num, config=config)
    singles = [DurotaxisEnv(config=config) for _ in range(num)]
    obs, _ = vec.reset(seed=11)
    single_obs = [env.reset(seed=11 + i)[0] for i, env in enumerate(singles)]
    for i in range(num):
        np.testing.assert_array_equal(obs[i], single_obs[i])
    rng = np.random.default_rng(0)
    low, high = np.array(config.param_low), np.array(config.param_high)
    ended = 0
    for _ in range(steps):
        kind = rng.integers(0, 3, num)
        kind[rng.random(num) < 0.5] = SPAWN  # mostly spawn, so episodes run long
        params = (low + rng.random((num, 5)) * (high - low)).astype(np.float32)
        obs, reward, term, trunc, info = vec.step({"kind": kind, "params": params})
        for i, env in enumerate(singles):
            o, r, te, tr, _ = env.step({"kind": int(kind[i]), "params": params[i]})
            assert r == pytest.approx(reward[i], abs=1e-6) and (te, tr) == (term[i], trunc[i])
            if te or tr:
                ended += 1
                np.testing.assert_array_equal(info["final_obs"][i], o)
                o, _ = env.reset()
            np.testing.assert_array_equal(obs[i], o)
    assert ended > 0


def test_engine_state_round_trips_exactly():
    env, twin = make_engine(HARD_SMALL, 8), make_engine(HARD_SMALL, 8)
    env.reset(seed=3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        env.autoreset_step(*random_policy(env, gen))
    twin.load_state_dict(env.state_dict())
    actions = [random_policy(env, gen) for _ in range(10)]
    for kind, params in actions:
        a = env.autoreset_step(kind, params)
        b = twin.autoreset_step(kind, params)
        torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
        torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)


# ----- the physics the task is about ----------------------------------------------------


def test_stiffness_sets_the_step_length_at_least_2x_between_start_and_goal():
    env = make_engine(DurotaxisConfig(), 256)
    env.reset(seed=0)
    alpha = float(env.param_low[3])  # the smallest alpha: the weakest stiffness effect
    near_start = env.log_stiffness(env.centroid).exp()
    at_goal = env.log_peak.exp()
    hill = lambda i: 1.0 / (1.0 + (alpha / i) ** 2)  # noqa: E731
    assert (hill(at_goal) / hill(near_start)).min() >= 2.0


def test_a_protrusion_longer_than_max_link_is_lost():
    config = DurotaxisConfig(image_size=32, direction_noise=0.0)
    env = make_engine(config, 16)
    env.reset(seed=0)
    before = env.num_cells().clone()
    reward, terminated, _, info = env.step(torch.full((16,), SPAWN), _params(env, 30.0))
    stiff = env.log_stiffness(env.centroid).exp()
    long = 30.0 / (1 + (float(env.param_low[3]) / stiff) ** 2) > config.max_link + 1.0
    assert long.any()
    assert info["lost_cell"][long].all() and (env.num_cells()[long] == before[long]).all()
    assert (reward[long] < 0).all() and not terminated.any()
    short = make_engine(config, 16)
    short.reset(seed=0)
    *_, info = short.step(torch.full((16,), SPAWN), _params(short, 2.0))
    assert not info["lost_cell"].any() and (short.num_cells() == before + 1).all()


def test_the_cluster_must_retract_to_keep_spawning():
    config = DurotaxisConfig(image_size=32)
    env = make_engine(config, 8)
    env.reset(seed=0)
    for _ in range(config.max_cells - config.initial_cells):
        env.step(torch.full((8,), SPAWN), _params(env, 2.0))
    _, terminated, _, info = env.step(torch.full((8,), SPAWN), _params(env, 2.0))
    assert terminated.all() and (info["failure"] == 2).all()  # FAIL_TOO_MANY
    env.reset(seed=0)
    for _ in range(config.initial_cells - 1):
        env.step(torch.full((8,), DELETE), _params(env, 2.0))
    _, terminated, _, info = env.step(torch.full((8,), DELETE), _params(env, 2.0))
    assert terminated.all() and (info["failure"] == 1).all()  # FAIL_NO_CELLS


def test_success_is_the_centroid_at_the_goal_not_the_front():
    config = DurotaxisConfig(image_size=32)
    env = make_engine(config, 1)
    env.reset(seed=0)
    env.pos[0, 0] = torch.tensor([0.0, 0.0])  # one cell on the peak, the rest far away
    env._update_centroid()
    _, terminated, _, info = env.step(torch.tensor([HOLD]), _params(env, 2.0))
    assert not info["is_success"][0] and not terminated[0]
    env.pos[0, : config.initial_cells] = torch.tensor([1.0, 0.0])
    _, terminated, _, info = env.step(torch.tensor([HOLD]), _params(env, 2.0))
    assert info["is_success"][0] and terminated[0]


def test_steering_is_noisy():
    config = DurotaxisConfig(image_size=32)
    env = make_engine(config, 256)
    env.reset(seed=0)
    before = env.pos.clone()
    *_, info = env.step(torch.full((256,), SPAWN), _params(env, 4.0, direction=(1.0, 0.0)))
    placed = ~info["lost_cell"]
    new = env.pos[:, config.initial_cells]  # the first free slot
    lead = before[..., 0].masked_fill(~env.alive, -math.inf)[:, : config.initial_cells]
    parent = before.gather(1, lead.argmax(1)[:, None, None].expand(-1, 1, 2))[:, 0]
    step = (new - parent)[placed]
    angles = torch.atan2(step[:, 1], step[:, 0])
    assert abs(angles.std().item() - config.direction_noise) < 0.05
    assert angles.mean().abs() < 0.05


def test_obstacles_kill_cells_spawned_into_them():
    config = DurotaxisConfig(preset="hard", image_size=32, direction_noise=0.0)
    env = make_engine(config, 1)
    env.reset(seed=0)
    cell = env.pos[0, 0].clone()
    env.obstacle_pos[0, 0] = cell + torch.tensor([3.0, 0.0])
    env.pos[0, 1:] = cell - 10.0  # the first cell leads towards +x
    env._update_centroid()
    *_, info = env.step(torch.tensor([SPAWN]), _params(env, 3.5))
    assert info["lost_cell"][0]


# ----- the observation ------------------------------------------------------------------


def test_the_observation_shows_absolute_stiffness_noise_and_cells():
    config = DurotaxisConfig(obs_noise=0)
    env = make_engine(config, 512)
    obs = env.reset(seed=0)
    centre = obs[:, 0, 30:34, 30:34].float().mean(dim=(1, 2))  # under the cells: skip marks
    background = obs[:, 0].float().masked_fill(obs[:, 0] == 255, math.nan)
    level = background.nanmean(dim=(1, 2))
    log_i = env.log_stiffness(env.centroid)
    # One grey scale for all episodes: brighter means stiffer, across episodes.
    corr = torch.corrcoef(torch.stack([level, log_i]))[0, 1]
    assert corr > 0.95, corr
    assert (obs == 255).any(dim=(1, 2, 3)).all() and centre.max() <= 255
    assert obs[obs < 255].max() <= 200

    noisy = make_engine(DurotaxisConfig(obs_noise=12), 4)
    a = noisy.reset(seed=0)
    noisy.step(torch.full((4,), HOLD), _params(noisy, 2.0))
    b = noisy.observe()
    assert not torch.equal(a, b)  # same state, a new noise draw
    assert (a.int() - b.int()).abs().max() <= 24


def test_the_plane_fit_finds_the_goal_direction():
    env = make_engine(DurotaxisConfig(), 256)
    obs = env.reset(seed=0)
    fitted = plane_fit_direction(obs)
    true = env.goal_direction(env.centroid)
    assert (fitted * true).sum(-1).mean() > 0.98


# ----- the baselines bound the task ------------------------------------------------------


def test_the_four_baselines_are_ordered_and_inside_their_bounds_on_standard():
    config = DurotaxisConfig()
    gen = torch.Generator().manual_seed(0)
    stats = {}
    policies = {"random": lambda e: random_policy(e, gen), "blind": blind_policy(8.0),
                "readout": readout_policy(8.0), "privileged": privileged_policy}
    for name, policy in policies.items():
        stats[name] = run_episodes(make_engine(config, 256), policy, seed=12345)
    success = {k: v["success_rate"] for k, v in stats.items()}
    assert success["random"] <= 0.01 and success["blind"] <= 0.05
    assert success["readout"] <= 0.5 and success["privileged"] >= 0.9
    returns = [stats[k]["mean_return"] for k in ("random", "blind", "readout", "privileged")]
    assert returns == sorted(returns)


def test_the_migration_engine_makes_bad_values_harmless_and_refuses_bad_shapes():
    env = make_engine(DurotaxisConfig(image_size=32), 4)
    env.reset(seed=0)
    kind = torch.tensor([7, -1, SPAWN, DELETE])
    params = torch.tensor([[math.nan] * 5, [math.inf] * 5, [-math.inf] * 5, [1e30] * 5])
    reward, terminated, truncated, info = env.step(kind, params)
    assert torch.isfinite(reward).all() and torch.isfinite(env.pos[env.alive]).all()
    assert (env.num_cells()[:2] == DurotaxisConfig().initial_cells).all()  # held
    with pytest.raises(ValueError, match="params has shape"):
        env.step(kind, params[:, :4])
    with pytest.raises(ValueError, match="kind has dtype"):
        env.step(kind.float(), params)
