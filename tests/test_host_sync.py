"""The inner loops never read a tensor on the host: no .item() / .tolist() / .cpu() per step.

On a GPU each such read waits for the device to finish, so a loop with one per step
runs at the speed of the round trip. These tests make every Python-level host read of
a tensor raise inside one update (AD, compressed AD, fbc cached and fine-tuned, with
the non-finite guard attached) and inside PPO rollout steps. Reads inside torch's C++
code are not seen here; on a GPU `torch.cuda.set_sync_debug_mode("error")` sees those
too, and benchmarks/bench_gpu_paths.py runs the same loops under it.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from agents.ad import ADAgent, ADConfig
from agents.compressed_ad import CompressedADPretrainAgent, CompressedADPretrainConfig
from agents.fbc import FBCAgent
from agents.hybrid_actor_critic import HybridActorCritic, HybridActorCriticConfig
from encoders import EncoderConfig
from envs.darkroom.dataset import make_data as make_darkroom_data
from envs.durotaxis import DurotaxisConfig, DurotaxisCore
from envs.lift.dataset import make_data as make_lift_data
from tests.test_fbc import small_cfg
from tests.test_lift_data import write_synthetic
from train_ppo import DUROTAXIS_ACTION
from training.guards import NonFiniteGuard

CPU = torch.device("cpu")
HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def no_host_reads():
    """Any Python-level read of a tensor's value on the host raises AssertionError."""
    saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def refuse(name):
        def read(self, *args, **kwargs):
            raise AssertionError(f"host read Tensor.{name}() inside the inner loop")

        return read

    for name in HOST_READS:
        setattr(torch.Tensor, name, refuse(name))
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


def step_twice(agent, data) -> None:
    """Two updates (the first creates optimizer state) then one under the refusal."""
    guard = NonFiniteGuard(agent.optimizer)
    gen = torch.Generator().manual_seed(0)
    agent.update(data.batch(data.sample_indices(8, gen)))
    with no_host_reads():
        info = agent.update(data.batch(data.sample_indices(8, gen)))
    assert guard.check() == 0 and all(torch.isfinite(torch.as_tensor(v)) for v in info.values())


def test_ad_update_has_no_host_read(histories):
    cfg = ADConfig(context_episodes=1, d_model=32, n_layer=1, n_head=2, lr_decay_steps=100)
    data = make_darkroom_data(str(histories), device=CPU, seed=0, cache_dir=histories.parent,
                              context_episodes=cfg.context_episodes,
                              prefix_episodes=cfg.prefix_episodes)
    step_twice(ADAgent(cfg, data.spec, CPU), data)


def test_compressed_ad_update_has_no_host_read(histories):
    cfg = CompressedADPretrainConfig(compressed_episodes=2, n_latent=4, d_model=32, n_head=2,
                                     encoder_layers=1, recon_layers=1)
    data = make_darkroom_data(str(histories), device=CPU, seed=0, cache_dir=histories.parent,
                              context_episodes=cfg.context_episodes,
                              prefix_episodes=cfg.prefix_episodes)
    step_twice(CompressedADPretrainAgent(cfg, data.spec, CPU), data)


@pytest.mark.parametrize("freeze", [True, False])
def test_fbc_update_has_no_host_read(tmp_path, freeze):
    path = write_synthetic(tmp_path / "d.hdf5", lengths=(6, 5))
    cfg = small_cfg(freeze_encoder=freeze)
    data = make_lift_data(str(path), device=CPU, seed=0, cache_dir=tmp_path,
                          chunk_length=cfg.chunk_length)
    agent = FBCAgent(cfg, data.spec, CPU)
    step_twice(agent, agent.prepare(data))  # frozen: from the feature cache


def test_ppo_rollout_steps_have_no_host_read():
    env_cfg = DurotaxisConfig(preset="easy", image_size=32)
    envs = DurotaxisCore(env_cfg, 4, CPU)
    enc = EncoderConfig(weights="random", input_adapter="repeat3", freeze_mode="all")
    model = HybridActorCritic(enc, (1, 32, 32), HybridActorCriticConfig(hidden_dim=32),
                              action=DUROTAXIS_ACTION).eval()
    obs = envs.reset(seed=0)
    with no_host_reads():
        for _ in range(5):
            out = model.act(obs)
            obs, reward, terminated, truncated, info = envs.autoreset_step(
                out["kind"], out["params"]
            )
    assert torch.isfinite(reward).all()
