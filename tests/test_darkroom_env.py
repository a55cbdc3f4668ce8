"""Dark Room environments: rules by hand, exact optimal/random returns, batched == single,
Gymnasium conformance, the fixed split, and the source learners' histories."""

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the Gymnasium ids)
from envs.darkroom import (
    DARK_KEY_TO_DOOR,
    DARKROOM,
    DARKROOM_HARD,
    GRIDS,
    NUM_ACTIONS,
    TEST_TASKS,
    DarkKeyToDoorEnv,
    DarkroomBatch,
    DarkroomEnv,
    DarkroomHardEnv,
    all_tasks,
    grid_cells,
    optimal_returns,
    random_returns,
    task_split,
)
from envs.darkroom.histories import (
    HistoriesConfig,
    QLearningConfig,
    generate_histories,
    load_histories,
    main,
    save_histories,
)

LEFT, RIGHT, UP, DOWN, NOOP = range(5)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def play(env, actions, task):
    env.reset(seed=0, options={"task": task})
    out = []
    for a in actions:
        obs, reward, terminated, truncated, _ = env.step(a)
        out.append((tuple(obs.tolist()), reward))
    return out


def test_darkroom_moves_walls_and_rewards_by_hand():
    env = DarkroomEnv()
    obs, info = env.reset(seed=0, options={"task": (4, 2)})
    assert obs.tolist() == [4, 4] and info["task"] == (4, 2)
    steps = play(env, [UP, UP, NOOP, RIGHT, LEFT, DOWN], (4, 2))
    assert steps == [((4, 3), 0.0), ((4, 2), 1.0), ((4, 2), 1.0), ((5, 2), 0.0),
                     ((4, 2), 1.0), ((4, 3), 0.0)]
    # Walls: pushing into the left and top walls leaves the agent in place.
    steps = play(env, [LEFT] * 6 + [UP] * 6, (0, 0))
    assert steps[3] == ((0, 4), 0.0) and steps[4] == ((0, 4), 0.0)
    assert steps[-1] == ((0, 0), 1.0) and [r for _, r in steps].count(1.0) == 3


def test_episode_is_truncated_at_the_horizon_never_terminated():
    for cls in (DarkroomEnv, DarkroomHardEnv, DarkKeyToDoorEnv):
        env = cls()
        env.reset(seed=1)
        flags = [env.step(NOOP)[2:4] for _ in range(cls.grid.horizon)]
        assert all(not term for term, _ in flags)
        assert [trunc for _, trunc in flags] == [False] * (cls.grid.horizon - 1) + [True]


def test_hard_pays_the_goal_once():
    env = DarkroomHardEnv()
    steps = play(env, [UP, NOOP, DOWN, UP], (8, 7))
    assert [r for _, r in steps] == [1.0, 0.0, 0.0, 0.0]


def test_key_to_door_needs_the_key_first_and_pays_each_once():
    env = DarkKeyToDoorEnv()
    env.reset(seed=0, options={"task": (0, 0, 2, 0)})
    env._pos = [1, 0]  # place the agent between key (0, 0) and door (2, 0)
    rewards = [env.step(a)[1] for a in (RIGHT, LEFT, LEFT, NOOP, RIGHT, RIGHT, NOOP, LEFT)]
    #            door, no key | -> (1,0) | key | stay | (1,0) | door | stay | leave
    assert rewards == [0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    # Key and door on one cell: the key pays on arrival, the door one step later.
    env.reset(seed=0, options={"task": (3, 3, 3, 3)})
    env._pos = [3, 3]
    assert [env.step(NOOP)[1] for _ in range(3)] == [1.0, 1.0, 0.0]


def test_optimal_return_is_min_20_21_minus_distance_and_nothing_beats_it():
    goals = task_split(DARKROOM, "all")
    formula = (21 - (goals - 4).abs().sum(1)).clamp(max=20).float()
    assert torch.equal(optimal_returns(DARKROOM, goals), formula)
    # Upper bound by finite-horizon dynamic programming over the env's own transitions:
    # every (cell, action) pair stepped once in the batched env, for every goal.
    cells = grid_cells(9)
    n_cells = len(cells)
    env = DarkroomBatch(DARKROOM, goals.repeat_interleave(n_cells * NUM_ACTIONS, 0))
    env.reset()
    env.pos = cells.repeat_interleave(NUM_ACTIONS, 0).repeat(len(goals), 1)
    actions = torch.arange(NUM_ACTIONS).repeat(n_cells * len(goals))
    nxt, reward, _ = env.step(actions)
    nxt_idx = (nxt[:, 0] * 9 + nxt[:, 1]).view(len(goals), n_cells, NUM_ACTIONS)
    reward = reward.view(len(goals), n_cells, NUM_ACTIONS)
    value = torch.zeros(len(goals), n_cells)
    for _ in range(DARKROOM.horizon):
        value = (reward + value.gather(1, nxt_idx.flatten(1)).view_as(reward)).max(2).values
    assert torch.equal(value[:, 4 * 9 + 4], formula)
    # The single env, driven greedily to every goal, earns the same.
    single = DarkroomEnv()
    for goal, expected in zip(goals.tolist(), formula.tolist(), strict=True):
        obs, _ = single.reset(options={"task": goal})
        total = 0.0
        for _ in range(20):
            dx, dy = goal[0] - obs[0], goal[1] - obs[1]
            a = LEFT if dx < 0 else RIGHT if dx > 0 else UP if dy < 0 else DOWN if dy > 0 else NOOP
            obs, r, *_ = single.step(a)
            total += r
        assert total == expected
    assert optimal_returns(DARKROOM, task_split(DARKROOM, "test")).mean().item() == 17.0
    assert torch.equal(optimal_returns(DARKROOM_HARD, task_split(DARKROOM_HARD, "test")),
                       torch.ones(32))
    assert torch.equal(optimal_returns(DARK_KEY_TO_DOOR, task_split(DARK_KEY_TO_DOOR, "test")),
                       torch.full((64,), 2.0))


@pytest.mark.parametrize("grid", list(GRIDS.values()), ids=list(GRIDS))
def test_exact_random_return_matches_monte_carlo(grid):
    tasks = task_split(grid, "test")[:4]
    exact = random_returns(grid, tasks)
    copies = 6000
    gen = torch.Generator().manual_seed(0)
    env = DarkroomBatch(grid, tasks.repeat_interleave(copies, 0), generator=gen)
    env.reset()
    total = torch.zeros(len(tasks) * copies)
    done = False
    while not done:
        _, r, done = env.step(torch.randint(NUM_ACTIONS, (len(total),), generator=gen))
        total += r
    mc = total.view(len(tasks), copies)
    stderr = mc.std(1) / copies**0.5
    assert ((mc.mean(1) - exact.float()).abs() <= 4 * stderr + 1e-3).all()


def test_darkroom_random_return_on_the_test_split_is_about_0_3():
    value = random_returns(DARKROOM, task_split(DARKROOM, "test")).mean().item()
    assert 0.25 < value < 0.35


@pytest.mark.parametrize("cls", [DarkroomEnv, DarkroomHardEnv, DarkKeyToDoorEnv])
def test_batched_equals_single(cls):
    grid = cls.grid
    rng = np.random.default_rng(0)
    tasks = task_split(grid, "all")[rng.choice(grid.num_tasks, 6, replace=False)]
    singles = [cls(task=tuple(t)) for t in tasks.tolist()]
    batch = DarkroomBatch(grid, tasks)
    for episode in range(2):
        starts = [env.reset(seed=episode * 10 + i)[0] for i, env in enumerate(singles)]
        batch.reset()
        batch.pos = torch.tensor(np.stack(starts))  # random starts come from separate RNGs
        done = False
        while not done:
            actions = rng.integers(NUM_ACTIONS, size=len(tasks))
            obs, reward, done = batch.step(torch.as_tensor(actions))
            for i, env in enumerate(singles):
                s_obs, s_r, _, s_trunc, _ = env.step(int(actions[i]))
                assert s_obs.tolist() == obs[i].tolist() and s_r == reward[i].item()
                assert s_trunc == done


@pytest.mark.parametrize("env_id", ["Darkroom-v0", "DarkroomHard-v0", "DarkKeyToDoor-v0"])
def test_gymnasium_registration_check_env_and_vector_env(env_id):
    env = gymnasium.make(env_id)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()
    vec = gymnasium.make_vec(env_id, num_envs=3, seed=0)
    obs, info = vec.reset(seed=0)
    assert obs.shape == (3, 2) and info["tasks"].shape[0] == 3
    horizon = vec.unwrapped.grid.horizon
    for t in range(horizon):
        obs, reward, terminated, truncated, info = vec.step(torch.full((3,), NOOP))
        assert not terminated.any()
        assert bool(truncated.all()) == (t == horizon - 1)
    assert "final_obs" in info and obs.shape == (3, 2)


def test_split_is_fixed_disjoint_and_regenerates_from_its_seed():
    for grid in GRIDS.values():
        train, test = task_split(grid, "train"), task_split(grid, "test")
        assert len(train) + len(test) == grid.num_tasks
        together = torch.cat([train, test])
        assert len(torch.unique(together, dim=0)) == grid.num_tasks
        order = np.random.default_rng(0).permutation(grid.num_tasks)
        regenerated = all_tasks(grid)[order[-len(TEST_TASKS[grid.name]):]]
        assert sorted(map(tuple, regenerated.tolist())) == sorted(TEST_TASKS[grid.name])
    assert (len(task_split(DARKROOM, "train")), len(task_split(DARKROOM, "test"))) == (73, 8)


def test_bad_input_fails_with_one_line():
    with pytest.raises(ValueError, match="must lie in"):
        DarkroomBatch(DARKROOM, torch.tensor([[9, 0]]))
    with pytest.raises(ValueError, match="N x 4"):
        DarkroomBatch(DARK_KEY_TO_DOOR, torch.tensor([[1, 1]]))
    with pytest.raises(ValueError, match="unknown split"):
        task_split(DARKROOM, "val")
    with pytest.raises(ValueError, match="action must be"):
        DarkroomEnv().step(7)


def tiny_histories_config(tmp_path, **kw) -> HistoriesConfig:
    return HistoriesConfig(out=str(tmp_path / "h.npz"), histories_per_task=2, max_tasks=12,
                           episodes=60, progress=False, **kw)


def test_source_learners_climb_from_random_to_near_optimal(tmp_path):
    hist = generate_histories(tiny_histories_config(tmp_path), torch.device("cpu"))
    returns = hist.episode_returns
    summary = hist.meta["summary"]
    assert returns.shape == (24, 60)
    assert returns[:, 0].mean() < 2.0  # near random at the start
    assert returns[:, -5:].mean() > 0.95 * summary["optimal_return"]  # near optimal at the end
    assert hist.obs.shape == (24, 1200, 2) and hist.actions.max() < NUM_ACTIONS
    # Rewards recorded step by step add up to the episode returns.
    np.testing.assert_array_equal(hist.rewards.reshape(24, 60, 20).sum(-1), returns)
    test = {tuple(t) for t in TEST_TASKS["darkroom"]}
    assert not any(tuple(t) in test for t in hist.tasks.tolist())


def test_histories_are_deterministic_and_round_trip_without_pickle(tmp_path):
    cfg = tiny_histories_config(tmp_path, learner=QLearningConfig(epsilon_start=0.5))
    a = generate_histories(cfg, torch.device("cpu"))
    b = generate_histories(cfg, torch.device("cpu"))
    np.testing.assert_array_equal(a.actions, b.actions)
    path = save_histories(tmp_path / "h.npz", a)
    with np.load(path, allow_pickle=False) as raw:
        assert raw["obs"].dtype == np.uint8
    c = load_histories(path)
    np.testing.assert_array_equal(c.obs, a.obs)
    assert c.meta == a.meta and c.meta["config"]["learner"]["epsilon_start"] == 0.5
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_histories(tmp_path / "missing.npz")


def test_histories_cli_writes_dataset_and_plot(tmp_path):
    out = tmp_path / "cli.npz"
    main(["--env=darkroom-hard", f"--out={out}", "--histories_per_task=1", "--max_tasks=4",
          "--episodes=3", "--progress=False", "--device=cpu"])
    hist = load_histories(out)
    assert hist.meta["env"] == "darkroom-hard" and hist.obs.shape == (4, 60, 2)
    assert hist.meta["config"]["learner"]["gamma"] == 0.98  # the variant's defaults apply
    assert out.with_suffix(".png").stat().st_size > 1000
