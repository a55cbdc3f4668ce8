"""Frame stacking (--env.frame_stack): the engine wrapper, the Gymnasium forms, the
actor-critic's late fusion, the baselines and a tiny PPO run."""

import json
import warnings
from dataclasses import replace

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from gymnasium.wrappers import FrameStackObservation

import envs  # noqa: F401  (registers Durotaxis-v0)
import train_ppo
from agents.hybrid_actor_critic import HybridActorCritic, HybridActorCriticConfig
from encoders import EncoderConfig
from envs.durotaxis import (
    HOLD,
    DurotaxisConfig,
    DurotaxisEnv,
    DurotaxisVectorEnv,
    FrameStack,
    MigrationCore,
    episode_frame,
    make_engine,
    random_policy,
    readout_policy,
    run_episodes,
)
from tests.test_ppo_reliability import assert_same_run, checkpoint_of, stop_after_iterations
from training.ranges import ConfigError
from training.run import RunStopped

pytestmark = pytest.mark.usefixtures("one_torch_thread")

K = 3
# Standard preset: a new noise draw every step, so consecutive frames always differ.
SMALL = DurotaxisConfig(image_size=16, max_steps=5)
STACKED = replace(SMALL, frame_stack=K)


def _frame(obs: torch.Tensor, j: int, channels: int = 1) -> torch.Tensor:
    """Slot j (0 = oldest) of stacked observations."""
    return obs[:, j * channels : (j + 1) * channels]


def _hold(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((n,), HOLD), torch.zeros(n, 5)


# ----- the engine wrapper --------------------------------------------------------------------


def test_frame_stack_1_is_the_bare_engine_and_the_newest_frame_is_its_observation():
    assert isinstance(make_engine(SMALL, 2), MigrationCore)  # K = 1: nothing wraps it
    with pytest.raises(ConfigError, match=r"^--env.frame_stack=0 is out of range"):
        DurotaxisConfig(frame_stack=0)
    # Stacking only remembers frames: rewards, ends and the newest slot are the bare engine's.
    stacked, bare = make_engine(STACKED, 4), make_engine(SMALL, 4)
    assert isinstance(stacked, FrameStack)
    gen, twin_gen = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(_frame(stacked.reset(seed=5), K - 1), bare.reset(seed=5))
    for _ in range(12):
        a, b = stacked.autoreset_step(*random_policy(stacked, gen)), bare.autoreset_step(
            *random_policy(bare, twin_gen))
        assert torch.equal(_frame(a[0], K - 1), b[0])
        for x, y in zip(a[1:4], b[1:4], strict=True):
            assert torch.equal(x, y)


@pytest.mark.parametrize("channels", [1, 3])
def test_stacking_order_oldest_first_and_reset_pads_with_the_first_frame(channels):
    cfg = replace(STACKED, channels=channels, max_steps=20)
    env, bare = make_engine(cfg, 2), make_engine(replace(cfg, frame_stack=1), 2)
    obs = env.reset(seed=3)
    first = bare.reset(seed=3)
    assert obs.shape == (2, K * channels, 16, 16) and obs.dtype == torch.uint8
    for j in range(K):
        assert torch.equal(_frame(obs, j, channels), first)
    frames = [first]
    for _ in range(K + 1):
        env.step(*_hold(2))
        bare.step(*_hold(2))
        frames.append(bare.observe())
        assert not torch.equal(frames[-1], frames[-2])  # noise: every frame is new
        obs = env.observe()
        # Slots hold the last K frames, oldest first; the reset frame pads the missing ones.
        expected = ([first] * K + frames)[-K:]
        for j in range(K):
            assert torch.equal(_frame(obs, j, channels), expected[j])
    rows = torch.tensor([1])
    assert torch.equal(env.observe(rows), obs[rows])


def test_autoreset_repads_finished_rows_others_keep_their_history_and_final_obs_is_stacked():
    env, bare = make_engine(replace(STACKED, max_steps=3), 4), make_engine(
        replace(SMALL, max_steps=3), 4)
    env.reset(seed=0)
    bare.reset(seed=0)
    env.step(*_hold(4))
    bare.step(*_hold(4))
    # Row 0 restarts a step later than the others, so their episodes end a step apart.
    mask = torch.tensor([True, False, False, False])
    env.reset_where(mask)
    bare.reset_where(mask)
    obs = env.observe()
    for j in range(K):
        assert torch.equal(_frame(obs, j)[0], bare.observe()[0])
    mixed = 0
    for _ in range(6):
        prev = env.observe()
        new, _, term, trunc, info = env.autoreset_step(*_hold(4), final_obs=True)
        frame, _, bterm, btrunc, binfo = bare.autoreset_step(*_hold(4), final_obs=True)
        assert torch.equal(term, bterm) and torch.equal(trunc, btrunc)
        done = term | trunc
        for i in range(4):
            if done[i]:  # the new episode's first frame in every slot
                for j in range(K):
                    assert torch.equal(_frame(new, j)[i], frame[i])
            else:  # shifted by one, the new frame last
                assert torch.equal(new[i, :-1], prev[i, 1:])
                assert torch.equal(new[i, -1:], frame[i])
        rows = info["truncated_rows"]
        assert torch.equal(rows, binfo["truncated_rows"])
        # The cut episode's last observation: its history plus its last frame, not the reset.
        assert torch.equal(info["final_obs"][:, :-1], prev[rows, 1:])
        assert torch.equal(info["final_obs"][:, -1:], binfo["final_obs"])
        mixed += int(0 < int(done.sum()) < 4)
    assert mixed >= 2, "row 0's episodes should end on other steps than the rest"


def test_state_dict_round_trip_continues_identically():
    env = make_engine(STACKED, 4)
    gen = torch.Generator().manual_seed(1)
    env.reset(seed=7)
    for _ in range(3):
        env.autoreset_step(*random_policy(env, gen))
    state, gen_state = env.state_dict(), gen.get_state()
    assert state["frame_stack"].shape == (4, K, 16, 16)

    def continuation(engine):
        g = torch.Generator().manual_seed(0)
        g.set_state(gen_state)
        out = [engine.observe()]
        for _ in range(8):
            obs, reward, term, trunc, info = engine.autoreset_step(
                *random_policy(engine, g), final_obs=True)
            out += [obs, reward, term, trunc, info["final_obs"]]
        return out

    expected = continuation(env)
    other = make_engine(STACKED, 4)
    other.reset(seed=99)  # another state entirely, then overwritten
    other.load_state_dict(state)
    for x, y in zip(expected, continuation(other), strict=True):
        assert torch.equal(x, y)
    bare_state = make_engine(SMALL, 4).state_dict()
    with pytest.raises(ValueError, match="no 'frame_stack' entry"):
        other.load_state_dict(bare_state)
    with pytest.raises(ValueError, match="frame stack is"):
        make_engine(replace(STACKED, frame_stack=2), 4).load_state_dict(state)


# ----- the Gymnasium forms ------------------------------------------------------------------


def test_check_env_passes_with_three_frames():
    env = gymnasium.make("Durotaxis-v0", image_size=32, frame_stack=K, channels=3)
    assert env.observation_space.shape == (3 * K, 32, 32)
    with warnings.catch_warnings():
        # Gymnasium only *recommends* [-1, 1] boxes; ours keeps the Hill parameters' units.
        warnings.filterwarnings("ignore", message=".*symmetric and normalized space.*")
        check_env(env.unwrapped)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)


def test_the_single_env_stacks_as_gymnasiums_frame_stack_observation():
    ours = DurotaxisEnv(config=replace(STACKED, max_steps=4))
    reference = FrameStackObservation(DurotaxisEnv(config=replace(SMALL, max_steps=4)), K,
                                      padding_type="reset")
    obs, _ = ours.reset(seed=2)
    ref, _ = reference.reset(seed=2)
    np.testing.assert_array_equal(obs, ref.reshape(obs.shape))
    ended = 0
    for _ in range(9):
        action = {"kind": HOLD, "params": np.zeros(5, np.float32)}
        obs, _, term, trunc, _ = ours.step(action)
        ref, _, rterm, rtrunc, _ = reference.step(action)
        np.testing.assert_array_equal(obs, ref.reshape(obs.shape))
        assert (term, trunc) == (rterm, rtrunc)
        if term or trunc:
            ended += 1
            obs, _ = ours.reset()
            ref, _ = reference.reset()
            np.testing.assert_array_equal(obs, ref.reshape(obs.shape))
    assert ended == 2  # truncated at steps 4 and 8: reset padding checked twice


def test_vector_env_equals_single_envs_with_three_frames():
    num, seed, cfg = 4, 10, replace(STACKED, max_steps=4)
    vec = DurotaxisVectorEnv(num_envs=num, config=cfg)
    singles = [DurotaxisEnv(config=cfg) for _ in range(num)]
    assert vec.single_observation_space.shape == (K, 16, 16)
    obs, _ = vec.reset(seed=seed)
    for i, env in enumerate(singles):
        np.testing.assert_array_equal(obs[i], env.reset(seed=seed + i)[0])
    vec.action_space.seed(0)
    ended = 0
    for _ in range(20):
        action = vec.action_space.sample()
        obs, reward, term, trunc, info = vec.step(action)
        for i, env in enumerate(singles):
            o, r, te, tr, single_info = env.step(
                {"kind": action["kind"][i], "params": action["params"][i]})
            assert (te, tr) == (bool(term[i]), bool(trunc[i]))
            assert r == pytest.approx(reward[i], abs=1e-6)
            if te or tr:
                ended += 1
                assert info["_final_obs"][i]
                np.testing.assert_array_equal(info["final_obs"][i], o)
                o, _ = env.reset()  # same-step autoreset: the vector env already did this
            np.testing.assert_array_equal(obs[i], o)
    assert ended > 0


# ----- baselines, evaluation, rendering ------------------------------------------------------


def test_readout_baseline_and_episode_frame_read_the_newest_frame():
    stats = [run_episodes(make_engine(cfg, 8), readout_policy(8.0), seed=4)
             for cfg in (SMALL, STACKED)]
    assert stats[0] == stats[1]  # the same bound with and without stacking
    stacked, bare = make_engine(STACKED, 1), make_engine(SMALL, 1)
    for env in (stacked, bare):
        env.reset(seed=1)
        env.step(*_hold(1))
    assert np.array_equal(episode_frame(stacked, size=32), episode_frame(bare, size=32))


# ----- the actor-critic: late fusion --------------------------------------------------------


def _model(freeze_mode: str, frames: int = K, share: bool = False) -> HybridActorCritic:
    enc = EncoderConfig(weights="random", input_adapter="repeat3", freeze_mode=freeze_mode)
    torch.manual_seed(0)
    return HybridActorCritic(enc, (frames, 32, 32),
                             HybridActorCriticConfig(hidden_dim=16, share_encoder=share),
                             action=train_ppo.durotaxis_action(SMALL), frames=frames).eval()


def _obs(n: int = 4) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, K, 32, 32), dtype=torch.uint8, generator=gen)


def test_each_frame_goes_through_the_same_encoder_and_features_are_concatenated():
    model, obs = _model("none"), _obs()
    actor, critic = model.encode(obs)
    with torch.no_grad():
        for enc, got in ((model.actor_encoder, actor), (model.critic_encoder, critic)):
            each = [enc(obs[:, j : j + 1].float() / 255.0) for j in range(K)]
            torch.testing.assert_close(got, torch.cat(each, dim=1), rtol=1e-5, atol=1e-5)
    assert actor.shape == (4, K * model.actor_encoder.out_dim)
    assert model.actor_trunk[0].in_features == K * model.actor_encoder.out_dim
    # One encoder's weights whatever K: a single-frame body (pretrained, or a K = 1
    # checkpoint's) loads into the stacked model as it is.
    single = _model("none", frames=1)
    model.actor_encoder.load_state_dict(single.actor_encoder.state_dict())
    assert single.actor_trunk[0].in_features == single.actor_encoder.out_dim
    with pytest.raises(ValueError, match="not frames=2 frames"):
        HybridActorCritic(EncoderConfig(weights="random"), (3, 32, 32),
                          action=train_ppo.durotaxis_action(SMALL), frames=2)


def test_frames_1_is_the_single_frame_network():
    enc = EncoderConfig(weights="random", input_adapter="repeat3", freeze_mode="last_block")
    torch.manual_seed(0)
    default = HybridActorCritic(enc, (1, 32, 32), HybridActorCriticConfig(hidden_dim=16),
                                action=train_ppo.durotaxis_action(SMALL)).eval()
    one = _model("last_block", frames=1)
    one.load_state_dict(default.state_dict())  # strict: the same names and shapes
    obs = _obs()[:, :1]
    assert one.encode_prefix(obs).shape == default.encode_prefix(obs).shape
    for a, b in zip(one.encode(obs), default.encode(obs), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("freeze_mode", ["all", "until_layer3", "last_block"])
def test_the_cached_prefix_path_equals_the_direct_path(freeze_mode):
    model, obs = _model(freeze_mode), _obs()
    with torch.no_grad():
        prefix = model.encode_prefix(obs)
        assert prefix.shape[:2] == (4, K)
        assert tuple(prefix.shape[1:]) == train_ppo.prefix_shape(model, (K, 32, 32),
                                                                 torch.device("cpu"))
        cached = model.encode_from_prefix(prefix)
        for enc, got in ((model.actor_encoder, cached[0]), (model.critic_encoder, cached[1])):
            direct = torch.cat([enc(obs[:, j : j + 1].float() / 255.0) for j in range(K)], dim=1)
            torch.testing.assert_close(got, direct, rtol=1e-5, atol=1e-5)
    # refresh_batch_norm gives the same statistics from the prefixes as from the images.
    if freeze_mode != "all":
        stats = []
        for batch in ({"obs": obs}, {"prefix": prefix}):
            layers = model.refresh_batch_norm(batch)
            assert layers
            stats.append([m.running_mean.clone() for m in layers])
        for a, b in zip(*stats, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ----- train_ppo ----------------------------------------------------------------------------

TINY = [
    "--backbone.weights=random",
    "--ppo.num_envs=2",
    "--ppo.num_steps=4",
    "--ppo.total_timesteps=16",
    "--ppo.num_minibatches=2",
    "--ppo.update_epochs=2",
    "--env.image_size=16",
    "--env.max_steps=6",
    f"--env.frame_stack={K}",
    "--wandb.mode=disabled",
    "--threads=1",
]


def test_a_tiny_ppo_run_with_three_frames_completes(tmp_path, monkeypatch):
    monkeypatch.setattr(train_ppo, "plot_learning_curve", lambda *args: None)
    out = tmp_path / "run"
    final = train_ppo.main([*TINY, "--backbone.freeze_mode=last_block", "--eval_episodes=2",
                            f"--output_dir={out}"])
    assert 0.0 <= final["eval/success_rate"] <= 1.0
    assert 0.0 <= final["eval/readout_success_rate"] <= 1.0
    assert final["video/frames"] >= 2 and (out / "episode.gif").exists()
    assert json.loads((out / "config.json").read_text())["prefix_reused"] is True
    ckpt = checkpoint_of(out)
    assert ckpt["model"]["actor_trunk.0.weight"].shape == (256, K * 512)
    assert ckpt["extra"]["ranks"][0]["env"]["frame_stack"].shape == (2, K, 16, 16)


def test_resume_with_three_frames_is_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(train_ppo, "plot_learning_curve", lambda *args: None)
    args = [*TINY, "--ppo.total_timesteps=24", "--eval_episodes=0", "--video=False"]
    once, twice = tmp_path / "once", tmp_path / "twice"
    train_ppo.main([*args, f"--output_dir={once}"])
    with monkeypatch.context() as patch, pytest.raises(RunStopped):
        stop_after_iterations(patch, 2)
        train_ppo.main([*args, f"--output_dir={twice}"])
    assert checkpoint_of(twice)["extra"]["iteration"] == 2
    train_ppo.main([*args, f"--output_dir={twice}", "--resume=True"])
    assert_same_run(once, twice)
