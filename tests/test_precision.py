"""--amp (bf16 autocast) and --channels_last run end to end; weights and optimizer stay fp32."""

import torch

import train_bc
import train_ppo
from agents.fbc import FBCAgent
from envs.lift.dataset import make_data
from tests.test_fbc import small_cfg
from tests.test_lift_data import write_synthetic
from training.distributed import LossForward
from training.precision import to_channels_last, with_autocast

CPU = torch.device("cpu")


def test_fbc_update_in_bf16_channels_last_keeps_fp32_state(tmp_path, one_torch_thread):
    path = write_synthetic(tmp_path / "d.hdf5", lengths=(6, 5))
    cfg = small_cfg(freeze_encoder=False)
    data = make_data(str(path), device=CPU, seed=0, cache_dir=tmp_path,
                     chunk_length=cfg.chunk_length)
    agent = to_channels_last(FBCAgent(cfg, data.spec, CPU), True)
    conv = next(iter(agent.policy.encoder.bodies.values())).backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    loss_fn = with_autocast(LossForward(agent, agent.loss), CPU, True)
    gen = torch.Generator().manual_seed(0)
    before = conv.detach().clone()
    for _ in range(2):
        info = agent.update(data.batch(data.sample_indices(4, gen)), loss_fn)
    assert torch.isfinite(info["train/flow_loss"]) and not torch.equal(before, conv)
    assert all(p.dtype == torch.float32 for p in agent.parameters())
    state = agent.optimizer.state[conv]
    assert state["exp_avg"].dtype == torch.float32


def test_train_bc_ad_with_amp_trains_and_evaluates(histories, tmp_path, one_torch_thread):
    metrics = train_bc.train(train_bc.parse_args([
        "--env_name=darkroom", f"--dataset={histories}", "--agent=ad",
        "--agent.context_episodes=1", "--agent.d_model=32", "--agent.n_layer=1",
        "--agent.n_head=2", "--offline_steps=3", "--batch_size=4", "--eval_episodes=2",
        "--device=cpu", "--amp=True", f"--output_dir={tmp_path / 'ad'}",
    ]))
    assert metrics["eval/in_context_episodes"] == 2.0


def test_train_ppo_with_amp_and_channels_last(tmp_path):
    final = train_ppo.main([
        "--backbone.weights=random", "--backbone.freeze_mode=last_block", "--ppo.num_envs=2",
        "--ppo.num_steps=4", "--ppo.total_timesteps=16", "--ppo.num_minibatches=2",
        "--ppo.update_epochs=1", "--env.image_size=32", "--env.max_steps=6",
        "--eval_episodes=2", "--video=False", "--threads=1", "--device=cpu", "--amp=True",
        "--channels_last=True", f"--output_dir={tmp_path / 'ppo'}",
    ])
    assert 0.0 <= final["eval/success_rate"] <= 1.0 and final["train/skipped_nonfinite_steps"] == 0
