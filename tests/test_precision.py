"""--precision (bf16 autocast where native) and --channels_last run end to end; weights and
optimizer stay fp32; `auto` is resolved from the device's capability (mocked for a GPU)."""

import json

import pytest
import torch

import train_bc
import train_ppo
from agents.fbc import FBCAgent
from envs.bc_tasks import get_bc_task
from envs.lift.dataset import make_data
from tests.test_fbc import small_cfg
from tests.test_lift_data import write_synthetic
from tests.test_ppo_reliability import TINY
from training.distributed import LossForward
from training.precision import (
    describe_precision,
    resolve_precision,
    to_channels_last,
    unit_map_hazard,
    with_autocast,
)
from training.ranges import ConfigError

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


def test_train_bc_ad_in_bf16_trains_and_evaluates(histories, tmp_path, one_torch_thread):
    metrics = train_bc.train(train_bc.parse_args([
        "--env_name=darkroom", f"--dataset={histories}", "--agent=ad",
        "--agent.context_episodes=1", "--agent.d_model=32", "--agent.n_layer=1",
        "--agent.n_head=2", "--offline_steps=3", "--batch_size=4", "--eval_episodes=2",
        "--device=cpu", "--precision=bf16", f"--output_dir={tmp_path / 'ad'}",
    ]))
    assert metrics["eval/in_context_episodes"] == 2.0


def test_train_ppo_in_bf16_with_channels_last(tmp_path):
    final = train_ppo.main([
        "--backbone.weights=random", "--backbone.freeze_mode=last_block", "--ppo.num_envs=2",
        "--ppo.num_steps=4", "--ppo.total_timesteps=16", "--ppo.num_minibatches=2",
        "--ppo.update_epochs=1", "--env.image_size=32", "--env.max_steps=6",
        "--eval_episodes=2", "--video=False", "--threads=1", "--device=cpu", "--precision=bf16",
        "--channels_last=True", f"--output_dir={tmp_path / 'ppo'}",
    ])
    assert 0.0 <= final["eval/success_rate"] <= 1.0 and final["train/skipped_nonfinite_steps"] == 0


@pytest.mark.parametrize("device, cuda_bf16, cpu_bf16, amx, resolved", [
    ("cuda", True, False, False, "bf16"),   # an H100: auto picks bf16
    ("cuda", False, True, True, "fp32"),    # a GPU without bf16 (e.g. a T4)
    ("cpu", False, True, False, "bf16"),    # AVX512_BF16 (this project's AMD EPYC)
    ("cpu", False, False, True, "bf16"),    # AMX (Sapphire Rapids)
    ("cpu", True, False, False, "fp32"),    # neither: bf16 would be emulated
])
def test_auto_precision_follows_the_devices_native_bf16(monkeypatch, device, cuda_bf16,
                                                        cpu_bf16, amx, resolved):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation: cuda_bf16)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: cpu_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    dev = torch.device(device)
    assert resolve_precision("auto", dev) == resolved
    assert resolve_precision("fp32", dev) == "fp32" and resolve_precision("bf16", dev) == "bf16"
    line = describe_precision("auto", resolved, dev)
    assert line.startswith(f"precision: {resolved}") and "auto" in line


# test_ppo_reliability's tiny run, without its budget and evaluation.
PPO_TINY = [*(f for f in TINY if not f.startswith(("--ppo.total_timesteps", "--eval_episodes"))),
            "--eval_episodes=0", "--device=cpu"]


def test_the_resolved_precision_is_recorded_and_a_resume_may_change_it(tmp_path, capsys):
    out = tmp_path / "ppo"
    train_ppo.main([*PPO_TINY, "--ppo.total_timesteps=8", "--precision=fp32",
                    f"--output_dir={out}"])
    assert "precision: fp32 (--precision=fp32)" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["resolved_precision"] == "fp32"
    train_ppo.main([f"--output_dir={out}", "--resume=True", "--ppo.total_timesteps=16",
                    "--precision=bf16"])
    assert "began in fp32 and goes on in bf16" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["resolved_precision"] == "fp32"  # what it began in
    assert config["resumes"][0]["changed"]["precision"] == ["fp32", "bf16"]
    assert config["resumes"][0]["resolved_precision"] == ["fp32", "bf16"]


def test_a_run_from_before_precision_resumes_in_fp32(tmp_path, capsys):
    """Its config.json has no precision (or --amp): it ran in fp32 and goes on in fp32,
    whatever `auto` would choose here."""
    out = tmp_path / "ppo"
    train_ppo.main([*PPO_TINY, "--ppo.total_timesteps=8", "--precision=fp32",
                    f"--output_dir={out}"])
    config = json.loads((out / "config.json").read_text())
    del config["resolved_precision"]
    config["run"].pop("precision")
    config["run"]["amp"] = False
    (out / "config.json").write_text(json.dumps(config))
    assert train_ppo.parse_args([f"--output_dir={out}", "--resume=True"]).run.precision == \
        "fp32"
    config["run"]["amp"] = True
    (out / "config.json").write_text(json.dumps(config))
    assert train_ppo.parse_args([f"--output_dir={out}", "--resume=True"]).run.precision == \
        "bf16"


def test_a_trained_last_stage_on_a_unit_map_runs_in_fp32(tmp_path, capsys):
    """16 x 16 images give layer4 a 1 x 1 map, whose bf16 weight gradients are sometimes NaN
    on the CPU: auto picks fp32 and says why; an explicit bf16 is refused in one line."""
    out = tmp_path / "ppo"
    args = [*PPO_TINY, "--ppo.total_timesteps=8", "--backbone.freeze_mode=last_block"]
    train_ppo.main([*args, f"--output_dir={out}"])
    assert "precision: fp32 (auto: images of 16 x 16 give the trained last ResNet stage a 1 x 1 " \
        "map" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["resolved_precision"] == "fp32"
    with pytest.raises(ConfigError, match="--precision=bf16: images of 16 x 16 give"):
        train_ppo.main([*args, "--precision=bf16", f"--output_dir={tmp_path / 'refused'}"])
    assert not (tmp_path / "refused").exists()
    # All frozen, or larger images: nothing in bf16's way.
    assert unit_map_hazard(16, trains_last_stage=False) is None
    assert unit_map_hazard(32, trains_last_stage=True) is None


def test_auto_keeps_fp32_on_a_cpu_where_the_model_is_slower_in_bf16(monkeypatch):
    """Dark Room's AD: a native-bf16 CPU still runs fp32 under auto and says why; a bf16 GPU
    runs bf16; an explicit bf16 runs as asked."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation: True)
    slower = get_bc_task("darkroom").cpu_bf16_slower
    assert slower is not None and get_bc_task("lift-scripted-image").cpu_bf16_slower is None
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu, cpu_bf16_slower=slower) == "fp32"
    assert describe_precision("auto", "fp32", cpu, cpu_bf16_slower=slower) == (
        f"precision: fp32 (auto: {slower})")
    assert resolve_precision("auto", cuda, cpu_bf16_slower=slower) == "bf16"
    assert resolve_precision("bf16", cpu, cpu_bf16_slower=slower) == "bf16"


def test_a_dark_room_run_says_auto_chose_fp32(histories, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    out = tmp_path / "ad"
    train_bc.main(["--env_name=darkroom", f"--dataset={histories}", "--agent.d_model=32",
                   "--agent.n_layer=1", "--agent.n_head=2", "--offline_steps=2",
                   "--batch_size=4", "--eval_episodes=0", "--device=cpu",
                   "--wandb.mode=disabled", f"--output_dir={out}"])
    assert "precision: fp32 (auto: AD's 64-dim transformer" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["resolved_precision"] == "fp32"
