"""Real robosuite Lift: the scripted controller, rendering from states, and an end-to-end
generate -> train -> roll out run. Slow (real physics and rendering); each is bounded."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow


def test_scripted_controller_lifts_the_cube():
    from envs.lift import LiftEnv, default_env_args
    from envs.lift.demos import run_demo
    from envs.lift.scripted import ScriptedLiftPolicy, make_operators

    env = LiftEnv(default_env_args(cameras=()), use_images=False)
    rng = np.random.default_rng(0)
    lengths = []
    try:
        for i, op in enumerate(make_operators(3) * 2):
            demo = run_demo(env, ScriptedLiftPolicy(op, rng), seed=100 + i, max_steps=300)
            assert demo is not None, f"operator {i % 3} failed on seed {100 + i}"
            lengths.append(len(demo["actions"]))
            assert demo["dones"][-1] == 1 and demo["rewards"][-1] == 1.0
            assert np.abs(demo["actions"]).max() <= 1.0
    finally:
        env.close()
    # The proficient operator is fast; the others are slower (mh-like variety).
    assert max(lengths[0], lengths[3]) < 70 < max(lengths)


def test_render_adds_images_from_states(tmp_path):
    from envs.lift.demos import generate, render

    low = tmp_path / "low.hdf5"
    generate(low, num_demos=1, seed=3, cameras=(), progress=False)
    out = tmp_path / "image.hdf5"
    render(low, out, progress=False)
    with h5py.File(low, "r") as f, h5py.File(out, "r") as g:
        n = f["data/demo_0"].attrs["num_samples"]
        assert "agentview_image" not in f["data/demo_0/obs"]
        for key in ("agentview_image", "robot0_eye_in_hand_image"):
            obs, nxt = g[f"data/demo_0/obs/{key}"][()], g[f"data/demo_0/next_obs/{key}"][()]
            assert obs.shape == (n, 84, 84, 3) and obs.dtype == np.uint8
            np.testing.assert_array_equal(nxt[:-1], obs[1:])
            assert obs.std() > 10  # a real scene, not a blank frame
        np.testing.assert_array_equal(f["data/demo_0/actions"][()], g["data/demo_0/actions"][()])
        args = json.loads(g["data"].attrs["env_args"])["env_kwargs"]
        assert args["camera_names"] == ["agentview", "robot0_eye_in_hand"]
    with pytest.raises(FileExistsError):
        render(low, out, progress=False)


def test_generate_train_and_roll_out(tmp_path):
    """2 scripted demos -> a few fbc steps through train_bc.py -> 1 rendered rollout."""
    import agents
    import train_bc
    from agents.fbc import FBCAgent, FBCConfig
    from envs.bc_tasks import BC_TASKS, BCTask, register_bc_task
    from envs.lift.demos import generate

    agents.AGENTS.setdefault("fbc", (FBCConfig, FBCAgent))
    if "lift-test-short" not in BC_TASKS:  # a short horizon keeps the rollout bounded
        register_bc_task(
            BCTask(
                "lift-test-short",
                "envs.lift.dataset:make_data",
                "envs.lift.evaluation:make_evaluator",
                "fbc",
                {},
                {"variant": "scripted", "horizon": 40},
                agent_fields=("chunk_length",),
            )
        )
    data = tmp_path / "two.hdf5"
    stats = generate(data, num_demos=2, seed=0, operators=2, progress=False)
    assert stats["success_rate"] > 0
    out = tmp_path / "run"
    cfg = train_bc.parse_args(
        [
            "--env_name=lift-test-short",
            f"--dataset={data}",
            "--agent.freeze_encoder=True",
            "--agent.pretrained_encoder=False",
            "--offline_steps=3",
            "--batch_size=8",
            "--eval_interval=0",
            "--eval_episodes=1",
            "--eval_workers=1",
            "--log_interval=1",
            f"--output_dir={out}",
            "--device=cpu",
            "--wandb.mode=disabled",
            f"--cache_dir={tmp_path / 'cache'}",
        ]
    )
    metrics = train_bc.train(cfg)
    assert metrics["eval/num_episodes"] == 1.0
    assert 0.0 <= metrics["eval/success_rate"] <= 1.0
    assert 1 <= metrics["eval/episode_length"] <= 40
    assert list((out / "videos").glob("*.mp4"))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert any("train/flow_loss" in line for line in lines)
    ckpt = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert any(k.startswith("ema.") for k in ckpt["model"])
