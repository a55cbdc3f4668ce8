"""Environments under abuse: random and extreme actions, determinism, and a memory soak.

What the step docstrings promise, and what is tested here:

- The Gymnasium forms (`DurotaxisEnv`, `DurotaxisVectorEnv`, the Darkroom single and
  vector envs) check every action: finite Durotaxis params outside the bounds are
  clipped to them; anything else outside the action space raises a one-line ValueError
  and moves nothing.
- The batched cores (`DurotaxisCore`, `DarkroomBatch`) sit in the training loop and never
  read action values back to the host: a wrong type, shape or dtype raises ValueError, and
  bad values are made harmless on the device (Durotaxis: a kind outside 0..2 holds, NaN
  params count as 0, then params are clamped to the bounds; Darkroom: an action outside
  0..4 is a no-op).
"""

import gc
import math
import os
import re
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from envs.darkroom import (
    DARK_KEY_TO_DOOR,
    DARKROOM,
    NOOP,
    NUM_ACTIONS,
    DarkKeyToDoorEnv,
    DarkKeyToDoorVectorEnv,
    DarkroomBatch,
    DarkroomEnv,
    DarkroomHardEnv,
    DarkroomHardVectorEnv,
    DarkroomVectorEnv,
    task_split,
)
from envs.durotaxis import (
    HOLD,
    PARAM_HIGH,
    PARAM_LOW,
    DurotaxisConfig,
    DurotaxisCore,
    DurotaxisEnv,
    DurotaxisVectorEnv,
    random_policy,
)

# Small images and short episodes: many resets, cheap steps.
CONFIG = DurotaxisConfig(preset="easy", image_size=16, max_steps=6)
REWARD_BOUND = CONFIG.progress_reward + CONFIG.success_bonus + CONFIG.failure_penalty
LOW = np.array(PARAM_LOW, np.float32)
HIGH = np.array(PARAM_HIGH, np.float32)
VALID_PARAMS = (LOW + HIGH) / 2
B = 4
SINGLE_GRID_ENVS = (DarkroomEnv, DarkroomHardEnv, DarkKeyToDoorEnv)
VECTOR_GRID_ENVS = (DarkroomVectorEnv, DarkroomHardVectorEnv, DarkKeyToDoorVectorEnv)

# The autouse fixtures (threads here, torch home in conftest) hold for every example.
FEW = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

# Float32-exact, so that hypothesis can put them into float32 arrays.
EXTREMES = tuple(
    float(np.float32(x))
    for x in (math.nan, math.inf, -math.inf, 1e30, -1e30, 3.4e38, -3.4e38, -0.0, 1e-30, -7.0)
)
any_float32 = st.one_of(st.floats(width=32), st.sampled_from(EXTREMES))
any_int64 = st.one_of(st.integers(0, 2), st.integers(-(2**63), 2**63 - 1))
valid_params = st.tuples(
    *[st.floats(float(lo), float(hi), width=32) for lo, hi in zip(LOW, HIGH, strict=True)]
).map(lambda p: np.array(p, np.float32))
valid_durotaxis_action = st.fixed_dictionaries({"kind": st.integers(0, 2), "params": valid_params})


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensor ops: a second OpenMP thread only waits on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _assert_durotaxis_state_sane(core: DurotaxisCore) -> None:
    """Finite positions and centroid, cells on the substrate, at most max_cells of them."""
    c = core.config
    assert torch.isfinite(core.pos[core.alive]).all()
    assert torch.isfinite(core.centroid).all() and torch.isfinite(core.episode_return).all()
    assert (core.num_cells() <= c.max_cells).all()
    s, t = core._gradient_coords(core.pos)
    assert (s[core.alive].abs() <= c.half_width + 1e-4).all()
    assert (t[core.alive].abs() <= c.half_width + 1e-4).all()


def _assert_same_step(a: tuple, b: tuple) -> None:
    """Two Gymnasium step results (or two reset results) are identical."""
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        if isinstance(x, dict):
            assert x.keys() == y.keys()
            for k in x:
                _assert_same_step((x[k],), (y[k],))
        elif isinstance(x, torch.Tensor):
            assert torch.equal(x, y)
        else:
            np.testing.assert_array_equal(x, y)


def _one_line_error(excinfo: pytest.ExceptionInfo, message: str) -> None:
    text = str(excinfo.value)
    assert text == message and "\n" not in text


# ----- Durotaxis: single Gymnasium env -----------------------------------------------------


@FEW
@given(seed=st.integers(0, 2**32), actions=st.lists(valid_durotaxis_action, max_size=12))
def test_durotaxis_random_valid_actions_stay_in_bounds(seed, actions):
    env = DurotaxisEnv(config=CONFIG)
    env.reset(seed=seed)
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        assert obs.dtype == np.uint8 and env.observation_space.contains(obs)
        assert math.isfinite(reward) and abs(reward) <= REWARD_BOUND
        assert all(math.isfinite(v) for v in info.values())
        _assert_durotaxis_state_sane(env.core)
        if terminated or truncated:
            env.reset()


@FEW
@given(
    seed=st.integers(0, 2**32),
    kind=st.integers(0, 2),
    params=arrays(
        np.float64,
        5,
        elements=st.one_of(
            st.floats(allow_nan=False, allow_infinity=False),
            st.sampled_from([1e30, -1e30, 1e300, -1e300, 0.0]),
        ),
    ),
)
def test_durotaxis_finite_params_are_clipped_to_the_action_space(seed, kind, params):
    env, twin = DurotaxisEnv(config=CONFIG), DurotaxisEnv(config=CONFIG)
    env.reset(seed=seed)
    twin.reset(seed=seed)
    clipped = np.clip(params, LOW, HIGH).astype(np.float32)
    assert env.action_space.contains({"kind": kind, "params": clipped})
    out = env.step({"kind": kind, "params": params})
    _assert_same_step(out, twin.step({"kind": kind, "params": clipped}))
    _assert_durotaxis_state_sane(env.core)


BAD_DUROTAXIS_ACTIONS = [
    ({"kind": 3, "params": VALID_PARAMS}, "Durotaxis action 'kind' 3 is out of range 0..2"),
    ({"kind": -1, "params": VALID_PARAMS}, "Durotaxis action 'kind' -1 is out of range 0..2"),
    (
        {"kind": 2**70, "params": VALID_PARAMS},
        f"Durotaxis action 'kind' {2**70} is out of range 0..2",
    ),
    (
        {"kind": np.uint64(2**64 - 1), "params": VALID_PARAMS},
        f"Durotaxis action 'kind' {2**64 - 1} is out of range 0..2",
    ),
    (
        {"kind": 1.0, "params": VALID_PARAMS},
        "Durotaxis action 'kind' has dtype float64, expected an integer",
    ),
    (
        {"kind": True, "params": VALID_PARAMS},
        "Durotaxis action 'kind' has dtype bool, expected an integer",
    ),
    (
        {"kind": "1", "params": VALID_PARAMS},
        "Durotaxis action 'kind' has dtype <U1, expected an integer",
    ),
    (
        {"kind": [1], "params": VALID_PARAMS},
        "Durotaxis action 'kind' has shape (1,), expected ()",
    ),
    (
        {"kind": 0, "params": VALID_PARAMS[:3]},
        "Durotaxis action 'params' has shape (3,), expected (5,)",
    ),
    (
        {"kind": 0, "params": VALID_PARAMS[None]},
        "Durotaxis action 'params' has shape (1, 5), expected (5,)",
    ),
    ({"kind": 0, "params": 1.0}, "Durotaxis action 'params' has shape (), expected (5,)"),
    (
        {"kind": 0, "params": ["1"] * 5},
        "Durotaxis action 'params' has dtype <U1, expected real numbers",
    ),
    (
        {"kind": 0, "params": [0.0, 0.0, math.nan, 1.0, 0.1]},
        "Durotaxis action 'params' must be finite, got gamma=nan",
    ),
    (
        {"kind": 2, "params": [-math.inf, 0.0, 1.0, 1.0, 0.1]},
        "Durotaxis action 'params' must be finite, got dir_x=-inf",
    ),
    ([0, VALID_PARAMS], "Durotaxis action must be a dict of 'kind' and 'params', got list"),
    ({"kind": 0}, "Durotaxis action must be a dict of 'kind' and 'params', got ['kind']"),
    (
        {"kind": 0, "params": VALID_PARAMS, "noise": 0.1},
        "Durotaxis action must be a dict of 'kind' and 'params', got ['kind', 'noise', 'params']",
    ),
]


@pytest.mark.parametrize(("action", "message"), BAD_DUROTAXIS_ACTIONS)
def test_durotaxis_bad_action_is_refused_with_one_line(action, message):
    env = DurotaxisEnv(config=CONFIG)
    env.reset(seed=0)
    with pytest.raises(ValueError) as excinfo:
        env.step(action)
    _one_line_error(excinfo, message)


bad_durotaxis_action = st.one_of(
    st.sampled_from([action for action, _ in BAD_DUROTAXIS_ACTIONS]),
    st.builds(
        lambda kind: {"kind": kind, "params": VALID_PARAMS},
        st.one_of(st.integers(max_value=-1), st.integers(min_value=3)),
    ),
    st.builds(
        lambda i, value: {"kind": 0, "params": np.where(np.arange(5) == i, value, VALID_PARAMS)},
        st.integers(0, 4),
        st.sampled_from([math.nan, math.inf, -math.inf]),
    ),
)


@FEW
@given(
    seed=st.integers(0, 2**32),
    actions=st.lists(
        st.tuples(st.booleans(), valid_durotaxis_action, bad_durotaxis_action), max_size=10
    ),
)
def test_durotaxis_refused_actions_leave_the_env_as_a_twin_that_never_saw_them(seed, actions):
    env, twin = DurotaxisEnv(config=CONFIG), DurotaxisEnv(config=CONFIG)
    _assert_same_step(env.reset(seed=seed), twin.reset(seed=seed))
    for use_bad, good, bad in actions:
        if use_bad:
            with pytest.raises(ValueError, match="^Durotaxis action"):
                env.step(bad)
            continue
        out = env.step(good)
        _assert_same_step(out, twin.step(good))
        if out[2] or out[3]:
            _assert_same_step(env.reset(), twin.reset())
    # One last valid step: the refused actions changed nothing, not even the step count.
    last = {"kind": 0, "params": VALID_PARAMS}
    _assert_same_step(env.step(last), twin.step(last))


# ----- Durotaxis: vector Gymnasium env and batched core ------------------------------------


def test_durotaxis_vector_env_refuses_bad_batches_and_stays_in_step_with_a_twin():
    env, twin = DurotaxisVectorEnv(B, config=CONFIG), DurotaxisVectorEnv(B, config=CONFIG)
    _assert_same_step(env.reset(seed=5), twin.reset(seed=5))
    good = {"kind": np.array([0, 1, 2, 0]), "params": np.tile(VALID_PARAMS, (B, 1))}
    nan_row = good["params"].copy()
    nan_row[2, 4] = math.nan
    bad = [
        (
            {"kind": good["kind"][:3], "params": good["params"]},
            "'kind' has shape (3,), expected (4,)",
        ),
        (
            {"kind": good["kind"], "params": good["params"][:, :4]},
            "has shape (4, 4), expected (4, 5)",
        ),
        (
            {"kind": np.array([0, 1, 3, 0]), "params": good["params"]},
            "'kind' 3 is out of range 0..2",
        ),
        ({"kind": good["kind"], "params": nan_row}, "'params' must be finite, got noise=nan"),
        ({"kind": good["kind"].astype(float), "params": good["params"]}, "dtype float64"),
    ]
    for action, message in bad:
        with pytest.raises(ValueError, match=re.escape(message)):
            env.step(action)
        _assert_same_step(env.step(good), twin.step(good))
    # Out-of-bounds finite params: clipped row by row, like the single env.
    wild = good["params"] * np.array([1e30, -1e30, 1e30, -3.0, 1e6], np.float32)
    clipped = {"kind": good["kind"], "params": np.clip(wild, LOW, HIGH)}
    _assert_same_step(env.step({"kind": good["kind"], "params": wild}), twin.step(clipped))


@FEW
@given(
    seed=st.integers(0, 2**32),
    steps=st.lists(
        st.tuples(
            arrays(np.int64, B, elements=any_int64),
            arrays(np.float32, (B, 5), elements=any_float32),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_durotaxis_core_makes_any_values_harmless_exactly_as_documented(seed, steps):
    core, twin = DurotaxisCore(CONFIG, B), DurotaxisCore(CONFIG, B)
    assert torch.equal(core.reset(seed=seed), twin.reset(seed=seed))
    for kind, params in steps:
        # The documented rule, written out independently of the core's code.
        held = np.where((kind >= 0) & (kind <= 2), kind, HOLD)
        safe = np.clip(np.where(np.isnan(params), 0.0, params), LOW, HIGH).astype(np.float32)
        out = core.autoreset_step(torch.from_numpy(kind), torch.from_numpy(params))
        expected = twin.autoreset_step(torch.from_numpy(held), torch.from_numpy(safe))
        _assert_same_step(out, expected)
        assert torch.isfinite(out[1]).all() and (out[1].abs() <= REWARD_BOUND).all()
        _assert_durotaxis_state_sane(core)


@pytest.mark.parametrize(
    ("kind", "params", "message"),
    [
        (
            np.zeros(B, np.int64),
            torch.zeros(B, 5),
            "Durotaxis kind must be a torch tensor, got ndarray",
        ),
        (
            torch.zeros(B, dtype=torch.long),
            [[0.0] * 5] * B,
            "Durotaxis params must be a torch tensor, got list",
        ),
        (
            torch.zeros(B, 1, dtype=torch.long),
            torch.zeros(B, 5),
            "Durotaxis kind has shape (4, 1), expected (4,)",
        ),
        (
            torch.zeros((), dtype=torch.long),
            torch.zeros(B, 5),
            "Durotaxis kind has shape (), expected (4,)",
        ),
        (
            torch.zeros(B),
            torch.zeros(B, 5),
            "Durotaxis kind has dtype torch.float32, expected an integer dtype",
        ),
        (
            torch.zeros(B, dtype=torch.bool),
            torch.zeros(B, 5),
            "Durotaxis kind has dtype torch.bool, expected an integer dtype",
        ),
        (
            torch.zeros(B, dtype=torch.long),
            torch.zeros(B, 4),
            "Durotaxis params has shape (4, 4), expected (4, 5)",
        ),
        (
            torch.zeros(B, dtype=torch.long),
            torch.zeros(5),
            "Durotaxis params has shape (5,), expected (4, 5)",
        ),
        (
            torch.zeros(B, dtype=torch.long),
            torch.zeros(B, 5, dtype=torch.long),
            "Durotaxis params has dtype torch.int64, expected a floating dtype",
        ),
    ],
)
def test_durotaxis_core_refuses_wrong_types_shapes_and_dtypes(kind, params, message):
    core, twin = DurotaxisCore(CONFIG, B), DurotaxisCore(CONFIG, B)
    core.reset(seed=1)
    twin.reset(seed=1)
    with pytest.raises(ValueError) as excinfo:
        core.step(kind, params)
    _one_line_error(excinfo, message)
    good = torch.tensor([0, 1, 2, 0]), torch.from_numpy(np.tile(VALID_PARAMS, (B, 1)))
    _assert_same_step(core.autoreset_step(*good), twin.autoreset_step(*good))


def test_durotaxis_core_takes_any_integer_and_floating_dtype():
    core, twin = DurotaxisCore(CONFIG, B), DurotaxisCore(CONFIG, B)
    core.reset(seed=2)
    twin.reset(seed=2)
    kind = torch.tensor([0, 1, 2, 0])
    params = torch.from_numpy(np.tile(VALID_PARAMS, (B, 1)))
    for k_dtype, p_dtype in ((torch.uint8, torch.float64), (torch.int32, torch.float16)):
        out = core.autoreset_step(kind.to(k_dtype), params.to(p_dtype))
        expected = twin.autoreset_step(kind, params.to(p_dtype).float())
        _assert_same_step(out, expected)


def test_batched_cores_read_no_value_back_to_the_host_even_for_bad_values(monkeypatch):
    """On a GPU each of these would be a sync; on the CPU they are caught as Python calls."""

    def host_read(self, *args, **kwargs):
        raise AssertionError("a batched core read a tensor value back to the host")

    core = DurotaxisCore(CONFIG, B)
    core.reset(seed=0)
    sim = DarkroomBatch(DARK_KEY_TO_DOOR, task_split(DARK_KEY_TO_DOOR, "test")[:B])
    sim.reset()
    kind = torch.tensor([0, 1, 2, 7])
    params = torch.tensor([[math.nan, math.inf, -math.inf, 1e30, -1e30]] * B)
    actions = torch.tensor([0, 1, -3, 9])
    for name in ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, host_read)
    with pytest.raises(AssertionError, match="host"):
        bool(torch.tensor(True))  # the trap works
    for _ in range(CONFIG.max_steps + 2):  # through an autoreset
        core.autoreset_step(kind, params)
    for _ in range(DARK_KEY_TO_DOOR.horizon):
        sim.step(actions)
    monkeypatch.undo()
    _assert_durotaxis_state_sane(core)


# ----- Darkroom ------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", SINGLE_GRID_ENVS)
@FEW
@given(seed=st.integers(0, 2**32), actions=st.lists(st.one_of(st.integers(0, 4), st.integers())))
def test_darkroom_single_env_checks_every_action_and_survives_refusals(cls, seed, actions):
    env, twin = cls(), cls()
    _assert_same_step(env.reset(seed=seed), twin.reset(seed=seed))
    for action in actions:
        if not 0 <= action < NUM_ACTIONS:
            with pytest.raises(ValueError) as excinfo:
                env.step(action)
            message = f"{cls.grid.name} action must be an integer in 0..4, got {action}"
            _one_line_error(excinfo, message)
            continue
        out = env.step(action)
        _assert_same_step(out, twin.step(action))
        obs, reward, *_ = out
        assert env.observation_space.contains(obs) and reward in (0.0, 1.0)
        if out[3]:
            _assert_same_step(env.reset(), twin.reset())


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (1.0, "darkroom action must be an integer, got 1.0 (dtype float64)"),
        (np.float32(2), "darkroom action must be an integer, got np.float32(2.0) (dtype float32)"),
        (True, "darkroom action must be an integer, got True (dtype bool)"),
        ("1", "darkroom action must be an integer, got '1' (dtype <U1)"),
        (None, "darkroom action must be an integer, got None (dtype object)"),
        ([1], "darkroom action must be a single integer, got shape (1,)"),
        (np.array([[2]]), "darkroom action must be a single integer, got shape (1, 1)"),
        (np.uint64(2**64 - 1), f"darkroom action must be an integer in 0..4, got {2**64 - 1}"),
        (-(2**80), f"darkroom action must be an integer in 0..4, got {-(2**80)}"),
    ],
)
def test_darkroom_single_env_bad_types_are_refused_with_one_line(action, message):
    env = DarkroomEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError) as excinfo:
        env.step(action)
    _one_line_error(excinfo, message)


def test_darkroom_single_env_takes_numpy_and_torch_integers():
    env, twin = DarkroomEnv(), DarkroomEnv()
    env.reset(seed=0)
    twin.reset(seed=0)
    for action in (np.int8(1), np.uint64(2), np.array(3), torch.tensor(0), 4):
        _assert_same_step(env.step(action), twin.step(int(action)))


@pytest.mark.parametrize("grid", [DARKROOM, DARK_KEY_TO_DOOR], ids=["darkroom", "key-to-door"])
@FEW
@given(seed=st.integers(0, 2**32), steps=st.lists(arrays(np.int64, B, elements=any_int64)))
def test_darkroom_batch_turns_out_of_range_actions_into_noops(grid, seed, steps):
    tasks = task_split(grid, "test")[:B]
    gens = [torch.Generator().manual_seed(seed) for _ in range(2)]
    sim, twin = (DarkroomBatch(grid, tasks, generator=g) for g in gens)
    assert torch.equal(sim.reset(), twin.reset())
    for action in steps:
        noop_instead = np.where((action >= 0) & (action < NUM_ACTIONS), action, NOOP)
        out = sim.step(torch.from_numpy(action))
        _assert_same_step(out, twin.step(torch.from_numpy(noop_instead)))
        obs, reward, _ = out
        assert ((obs >= 0) & (obs < grid.size)).all() and torch.isfinite(reward).all()
        assert torch.equal(sim.markov_state(), twin.markov_state())


def test_darkroom_batch_takes_small_integer_dtypes_as_indices_not_masks():
    tasks = task_split(DARKROOM, "test")[:B]
    sim, twin = DarkroomBatch(DARKROOM, tasks), DarkroomBatch(DARKROOM, tasks)
    sim.reset()
    twin.reset()
    action = torch.tensor([0, 1, 2, 3])
    for dtype in (torch.uint8, torch.int8, torch.int32):
        _assert_same_step(sim.step(action.to(dtype)), twin.step(action))
    # uint8 255 is out of range (a no-op), not True in a mask.
    _assert_same_step(
        sim.step(torch.tensor([255, 1, 0, 0], dtype=torch.uint8)),
        twin.step(torch.tensor([NOOP, 1, 0, 0])),
    )


@pytest.mark.parametrize(
    ("action", "message"),
    [
        (np.zeros(B, np.int64), "darkroom actions must be a torch tensor, got ndarray"),
        (torch.zeros(B, 1, dtype=torch.long), "darkroom actions have shape (4, 1), expected (4,)"),
        (torch.tensor(1), "darkroom actions have shape (), expected (4,)"),
        (torch.zeros(B + 1, dtype=torch.long), "darkroom actions have shape (5,), expected (4,)"),
        (torch.zeros(B), "darkroom actions have dtype torch.float32, expected an integer dtype"),
        (
            torch.ones(B, dtype=torch.bool),
            "darkroom actions have dtype torch.bool, expected an integer dtype",
        ),
    ],
)
def test_darkroom_batch_refuses_wrong_types_shapes_and_dtypes(action, message):
    tasks = task_split(DARKROOM, "test")[:B]
    sim, twin = DarkroomBatch(DARKROOM, tasks), DarkroomBatch(DARKROOM, tasks)
    sim.reset()
    twin.reset()
    with pytest.raises(ValueError) as excinfo:
        sim.step(action)
    _one_line_error(excinfo, message)
    assert sim.t == 0
    good = torch.tensor([1, 2, 3, 4])
    _assert_same_step(sim.step(good), twin.step(good))


@pytest.mark.parametrize("cls", VECTOR_GRID_ENVS)
def test_darkroom_vector_env_checks_every_action_and_survives_refusals(cls):
    env, twin = cls(B, seed=3), cls(B, seed=3)
    _assert_same_step(env.reset(seed=3), twin.reset(seed=3))
    name = cls.grid.name
    bad = [
        (torch.tensor([0, 1, 5, 0]), f"{name} action must be an integer in 0..4, got 5"),
        (np.array([0, -2, 1, 0]), f"{name} action must be an integer in 0..4, got -2"),
        ([0, 1, 2], f"{name} actions have shape (3,), expected (4,)"),
        (torch.zeros(B, 2, dtype=torch.long), f"{name} actions have shape (4, 2), expected (4,)"),
        (np.zeros(B), f"{name} actions have dtype float64, expected an integer dtype"),
        (
            torch.zeros(B, dtype=torch.bool),
            f"{name} actions have dtype torch.bool, expected an integer dtype",
        ),
        ([2**70] * B, f"{name} actions have dtype object, expected an integer dtype"),
    ]
    for i, (action, message) in enumerate(bad):
        with pytest.raises(ValueError) as excinfo:
            env.step(action)
        _one_line_error(excinfo, message)
        good = [i % NUM_ACTIONS, 1, 2, 3]  # a list, a numpy array, a tensor: all the same
        _assert_same_step(env.step(good), twin.step(torch.tensor(good)))
        _assert_same_step(env.step(np.array(good, np.int32)), twin.step(torch.tensor(good)))


# ----- determinism: same seed, same run; another seed, another run --------------------------


def _durotaxis_single_run(seed: int, steps: int = 30) -> list:
    env = DurotaxisEnv(config=CONFIG)
    env.action_space.seed(0)  # the same actions for every env seed
    out = [env.reset(seed=seed)]
    for _ in range(steps):
        step = env.step(env.action_space.sample())
        out.append(step)
        if step[2] or step[3]:
            out.append(env.reset())
    return out


def _durotaxis_vector_run(seed: int, steps: int = 30) -> list:
    env = DurotaxisVectorEnv(B, config=CONFIG)
    env.action_space.seed(0)
    return [env.reset(seed=seed)] + [env.step(env.action_space.sample()) for _ in range(steps)]


def _darkroom_single_run(cls: type, seed: int, steps: int = 60) -> list:
    env = cls()
    rng = np.random.default_rng(0)
    out = [env.reset(seed=seed)]
    for _ in range(steps):
        step = env.step(int(rng.integers(NUM_ACTIONS)))
        out.append(step)
        if step[3]:
            out.append(env.reset())
    return out


def _darkroom_vector_run(cls: type, seed: int, steps: int = 60) -> list:
    env = cls(B, seed=seed)
    gen = torch.Generator().manual_seed(0)
    out = [env.reset(seed=seed)]
    return out + [env.step(torch.randint(NUM_ACTIONS, (B,), generator=gen)) for _ in range(steps)]


def _same_run(a: list, b: list) -> bool:
    try:
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same_step(x, y)
    except AssertionError:
        return False
    return True


RUNS = {
    "durotaxis": _durotaxis_single_run,
    "durotaxis-vector": _durotaxis_vector_run,
    **{
        cls.grid.name: lambda seed, cls=cls: _darkroom_single_run(cls, seed)
        for cls in SINGLE_GRID_ENVS
    },
    **{
        f"{cls.grid.name}-vector": lambda seed, cls=cls: _darkroom_vector_run(cls, seed)
        for cls in VECTOR_GRID_ENVS
    },
}


@pytest.mark.parametrize("run", RUNS.values(), ids=RUNS.keys())
def test_same_seed_same_run_other_seed_another(run):
    first = run(7)
    assert _same_run(first, run(7))
    # Dark Room starts at the centre, so another seed shows in the task drawn (and the
    # rewards), which a single seed pair may share by chance: try a few.
    assert not all(_same_run(first, run(seed)) for seed in (8, 9, 10))


def test_durotaxis_single_env_replays_the_core_on_the_same_seed():
    """The Gymnasium wrapper adds no randomness of its own: env seeded s == core seeded s."""
    env, core = DurotaxisEnv(config=CONFIG), DurotaxisCore(CONFIG, 1)
    obs, _ = env.reset(seed=11)
    np.testing.assert_array_equal(obs, core.reset(seed=11)[0].numpy())
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        kind, params = random_policy(core, gen)
        obs, reward, terminated, truncated, _ = env.step(
            {"kind": kind[0].numpy(), "params": params[0].numpy()}
        )
        core_obs, core_reward, core_term, core_trunc, _ = core.autoreset_step(kind, params)
        assert reward == float(core_reward[0]) and terminated == bool(core_term[0])
        if terminated or truncated:
            obs, _ = env.reset()
        np.testing.assert_array_equal(obs, core_obs[0].numpy())


# ----- soak: no memory growth over many batched steps with resets -------------------------


def _rss_mib() -> float:
    """Resident set size of this process in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _live_tensors() -> int:
    gc.collect()
    # type(), not isinstance(): isinstance reads __class__, which warns on some torch objects.
    return sum(1 for o in gc.get_objects() if issubclass(type(o), torch.Tensor))


def _soak_durotaxis(steps: int) -> None:
    """Batched core steps with autoreset, every 7th action poisoned; then the vector env."""
    core = DurotaxisCore(CONFIG, 32)
    core.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    for t in range(steps):
        kind, params = random_policy(core, gen)
        if t % 7 == 0:
            kind[::3] = 9
            params[1::4, t % 5] = (math.nan, math.inf, -math.inf, 1e30)[t % 4]
        obs, reward, *_ = core.autoreset_step(kind, params)
    assert torch.isfinite(reward).all()
    _assert_durotaxis_state_sane(core)
    vec = DurotaxisVectorEnv(8, config=CONFIG)
    vec.reset(seed=0)
    vec.action_space.seed(0)
    for _ in range(steps // 10):
        vec.step(vec.action_space.sample())


def _soak_darkroom(steps: int) -> None:
    """Batched steps with resets, out-of-range actions mixed in; then vector and single envs."""
    tasks = task_split(DARK_KEY_TO_DOOR, "train")[:256]
    sim = DarkroomBatch(DARK_KEY_TO_DOOR, tasks, generator=torch.Generator().manual_seed(0))
    sim.reset()
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        _, _, over = sim.step(torch.randint(-2, NUM_ACTIONS + 2, (256,), generator=gen))
        if over:
            sim.reset()
    vec = DarkroomVectorEnv(16, seed=0)
    vec.reset(seed=0)
    for _ in range(steps // 4):
        vec.step(torch.randint(NUM_ACTIONS, (16,), generator=gen))
    single = DarkroomEnv()
    single.reset(seed=0)
    for t in range(steps // 4):
        if single.step(t % NUM_ACTIONS)[3]:
            single.reset()


def _soak(durotaxis_steps: int, darkroom_steps: int) -> dict[str, float]:
    """Warm up (allocator pools, lazy imports), then measure RSS and live tensors across a run."""
    _soak_durotaxis(200)
    _soak_darkroom(400)
    tensors_before, rss_before = _live_tensors(), _rss_mib()
    start = time.perf_counter()
    _soak_durotaxis(durotaxis_steps)
    _soak_darkroom(darkroom_steps)
    seconds = time.perf_counter() - start
    tensors_after, rss_after = _live_tensors(), _rss_mib()
    print(
        f"soak: {durotaxis_steps} Durotaxis x 32 + {darkroom_steps} Darkroom x 256 batched steps "
        f"in {seconds:.1f} s; RSS {rss_before:.1f} -> {rss_after:.1f} MiB; "
        f"live tensors {tensors_before} -> {tensors_after}"
    )
    return {
        "rss_growth": rss_after - rss_before,
        "tensor_growth": tensors_after - tensors_before,
    }


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads /proc")
def test_short_soak_leaks_no_tensors():
    growth = _soak(durotaxis_steps=300, darkroom_steps=2000)
    assert growth["tensor_growth"] <= 0
    assert growth["rss_growth"] < 20


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads /proc")
def test_soak_many_thousand_steps_keeps_memory_flat():
    growth = _soak(durotaxis_steps=8000, darkroom_steps=50_000)
    assert growth["tensor_growth"] <= 0
    assert growth["rss_growth"] < 20
