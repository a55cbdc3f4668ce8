"""encoders.pretrain: in-domain bodies that weights=PATH loads, held-out splits, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from encoders import EncoderConfig, ResNetEncoder
from encoders.pretrain import (
    DurotaxisPretrainConfig,
    main,
    pretrain,
    run,
    torchvision_body_state,
)
from tests.test_lift_data import write_synthetic

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[1]
# The smallest runs that still train: 32 x 32 images, a few steps.
TINY = ["--steps=2", "--batch_size=4", "--device=cpu", "--progress=False", "--eval_batch_size=64"]
LIFT_LENGTHS = (12, 7, 20, 9)


def _tiny_durotaxis(tmp_path: Path, **overrides) -> DurotaxisPretrainConfig:
    settings = dict(
        out=str(tmp_path / "body.pt"),
        image_size=32,
        frames=48,
        num_envs=16,
        steps=2,
        batch_size=4,
        device="cpu",
        progress=False,
    )
    return DurotaxisPretrainConfig(**{**settings, **overrides})


def _assert_loads_as_saved(path: Path, in_channels: int, adapter: str) -> ResNetEncoder:
    saved = torch.load(path, weights_only=True)
    assert "conv1.weight" in saved and "layer4.1.bn2.running_var" in saved
    assert not any(k.startswith("fc.") for k in saved)
    assert saved["conv1.weight"].shape == (64, 3, 7, 7)  # torchvision's RGB stem
    encoder = ResNetEncoder(EncoderConfig(weights=str(path), input_adapter=adapter), in_channels)
    assert encoder.weights_source == f"file:{path}" and encoder.pretrained
    loaded = encoder.backbone.state_dict()
    assert loaded.keys() == saved.keys()
    for key, tensor in saved.items():
        if adapter == "1ch_conv" and key == "conv1.weight":
            continue  # rebuilt for one channel from the RGB filters
        assert torch.equal(loaded[key], tensor), key
    return encoder


def test_durotaxis_cli_writes_a_body_that_weights_path_loads(tmp_path, capsys, one_torch_thread):
    out = tmp_path / "bodies" / "duro.pt"
    record = main(
        ["durotaxis", f"--out={out}", "--image_size=32", "--frames=48", "--num_envs=16", *TINY]
    )
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] == f"wrote {out} (torchvision-format resnet18 body; load with weights={out})"
    assert any(line.startswith("held-out MSE") and "before" in line for line in printed)
    _assert_loads_as_saved(out, in_channels=1, adapter="repeat3")

    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert sidecar == json.loads(json.dumps(record))
    assert sidecar["task"] == "durotaxis" and sidecar["arch"] == "resnet18"
    assert sidecar["config"]["steps"] == 2 and sidecar["config"]["seed"] == 0
    assert sidecar["train_frames"] + sidecar["held_out_frames"] == 48
    assert sidecar["data"]["held_out_env_seed"] != sidecar["data"]["train_env_seed"]
    losses = sidecar["held_out_mse"]
    assert set(losses["before"]) == {"goal_direction", "goal_distance", "mean"}
    assert all(v >= 0 for v in losses["after"].values())


def test_lift_cli_splits_by_demo_and_the_body_loads(tmp_path, capsys, one_torch_thread):
    dataset = write_synthetic(tmp_path / "lift.hdf5", lengths=LIFT_LENGTHS, image_size=32)
    out = tmp_path / "lift.pt"
    record = main(
        ["lift", f"--dataset={dataset}", f"--out={out}", "--val_fraction=0.5", "--seed=3", *TINY]
    )
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"wrote {out} ")
    _assert_loads_as_saved(out, in_channels=3, adapter="none")

    # Whole demos on each side: the held-out frames are exactly the held-out demos' frames.
    held = record["data"]["held_out_demos"]
    assert len(held) == 2 and record["data"]["num_demos"] == 4
    assert record["held_out_frames"] == sum(LIFT_LENGTHS[d] for d in held)
    assert record["train_frames"] == sum(LIFT_LENGTHS) - record["held_out_frames"]
    assert set(record["held_out_mse"]["after"]) == {"cube_pos", "eef_pos", "mean"}


def test_lift_targets_are_the_held_out_demos_cube_and_eef(tmp_path):
    from encoders.pretrain_data import lift_data
    from envs.lift.dataset import make_data

    dataset = write_synthetic(tmp_path / "lift.hdf5", lengths=LIFT_LENGTHS, image_size=32)
    data = lift_data(str(dataset), ("agentview", "robot0_eye_in_hand"), 0.25, seed=0)
    (held,) = data.source["held_out_demos"]
    ref = make_data(
        str(dataset),
        device=CPU,
        seed=0,
        cache_dir=tmp_path,
        chunk_length=1,
        image_size=32,
        lowdim_keys=("robot0_eef_pos", "object"),
    )
    rows = ref.demo_index == held
    expected = torch.cat([ref.frames["object"][rows, :3], ref.frames["robot0_eef_pos"][rows]], 1)
    # Two cameras: each frame appears once per camera, with the same targets.
    torch.testing.assert_close(data.held_out.targets, expected.repeat(2, 1))
    first_camera = ref.frames["agentview_image"][rows].permute(0, 3, 1, 2)
    assert torch.equal(data.held_out.images[: int(rows.sum())], first_camera)
    assert len(data.train) == 2 * (sum(LIFT_LENGTHS) - LIFT_LENGTHS[held])


@pytest.mark.parametrize("adapter", ["repeat3", "1ch_conv"])
def test_loaded_body_computes_what_was_trained(tmp_path, adapter, one_torch_thread):
    """Same weights and same input normalisation: eval-mode features match the trained body."""
    cfg = _tiny_durotaxis(tmp_path, input_adapter=adapter)
    data = cfg.load_data(CPU)
    trained, _ = pretrain(cfg, data, CPU)
    path = tmp_path / "body.pt"
    torch.save(torchvision_body_state(trained), path)
    loaded = _assert_loads_as_saved(path, in_channels=1, adapter=adapter)
    images = data.held_out.images.float() / 255.0
    with torch.no_grad():
        got, want = loaded.eval()(images), trained.eval()(images)
    if adapter == "repeat3":
        assert torch.equal(got, want)
    else:  # conv1 went through (W / 3) repeated and summed again: float rounding
        torch.testing.assert_close(got, want)


def test_equal_seeds_give_equal_bodies(tmp_path, one_torch_thread):
    cfg = _tiny_durotaxis(tmp_path, steps=1)
    bodies = [torchvision_body_state(pretrain(cfg, cfg.load_data(CPU), CPU)[0]) for _ in range(2)]
    assert all(torch.equal(bodies[0][k], bodies[1][k]) for k in bodies[0])
    other = torchvision_body_state(
        pretrain(_tiny_durotaxis(tmp_path, steps=1, seed=1), cfg.load_data(CPU), CPU)[0]
    )
    assert not torch.equal(other["conv1.weight"], bodies[0]["conv1.weight"])


def test_durotaxis_held_out_frames_come_from_other_seeds(tmp_path):
    cfg = _tiny_durotaxis(tmp_path, frames=40, val_fraction=0.25)
    data = cfg.load_data(CPU)
    assert (len(data.train), len(data.held_out)) == (30, 10)
    direction = data.train.targets[:, :2]
    torch.testing.assert_close(direction.norm(dim=1), torch.ones(30))  # (cos, sin)
    # Different environments: no held-out gradient direction occurs among the training ones.
    gap = torch.cdist(data.held_out.targets[:, :2], direction).min()
    assert gap > 1e-4
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape[1:] == (1, 32, 32)


def test_a_ppo_run_loads_the_body_through_its_flag(tmp_path, one_torch_thread):
    from train_ppo import TrainPPOConfig
    from training.cli import parse_config

    cfg = _tiny_durotaxis(tmp_path)
    path = tmp_path / "body.pt"
    torch.save(torchvision_body_state(pretrain(cfg, cfg.load_data(CPU), CPU)[0]), path)
    ppo = parse_config(TrainPPOConfig, [f"--backbone.weights={path}"])
    encoder = ResNetEncoder(ppo.backbone.encoder_config(), ppo.env.channels)
    assert encoder.weights_source == f"file:{path}"
    saved = torch.load(path, weights_only=True)
    assert torch.equal(encoder.backbone.layer3[0].conv1.weight, saved["layer3.0.conv1.weight"])


def _exit_line(capsys, argv: list[str]) -> str:
    from training.cli import run_main

    with pytest.raises(SystemExit) as exit_:
        run_main(lambda: main(argv))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err
    return err


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    out = f"--out={tmp_path / 'x.pt'}"
    missing = tmp_path / "nope.hdf5"
    assert "does not exist" in _exit_line(capsys, ["lift", f"--dataset={missing}", out])
    no_object = write_synthetic(tmp_path / "lowdim.hdf5", image_size=32, skip_key="object")
    assert "has no 'object'" in _exit_line(capsys, ["lift", f"--dataset={no_object}", out])
    one_demo = write_synthetic(tmp_path / "one.hdf5", lengths=(5,), image_size=32)
    assert "at least 2" in _exit_line(capsys, ["lift", f"--dataset={one_demo}", out])
    assert "the first argument is the task" in _exit_line(capsys, ["lfit", out])
    assert "--val_fraction=1.5" in _exit_line(capsys, ["durotaxis", out, "--val_fraction=1.5"])
    assert "does not fit 3-channel" in _exit_line(capsys, ["durotaxis", out, "--channels=3"])
    assert "--precision" in _exit_line(capsys, ["durotaxis", out, "--precision=fp16"])
    (tmp_path / "x.pt").write_bytes(b"")
    assert "--overwrite=True" in _exit_line(capsys, ["durotaxis", out])


def test_encoders_import_no_envs_training_or_agents():
    code = (
        "import sys, encoders.pretrain; "
        "layers = ('envs', 'training', 'agents'); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in layers); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


@pytest.mark.slow
def test_durotaxis_pretraining_learns_the_goal_direction(tmp_path, one_torch_thread):
    """64 x 64, 150 steps on one thread (about a minute): held-out error well under half."""
    cfg = _tiny_durotaxis(
        tmp_path, image_size=64, frames=2000, num_envs=64, steps=150, batch_size=16, seed=0
    )
    record = run(cfg)
    before, after = record["held_out_mse"]["before"], record["held_out_mse"]["after"]
    assert after["goal_direction"] < 0.5 * before["goal_direction"]
    assert after["mean"] < 0.5 * before["mean"]


def test_bf16_pretraining_tracks_fp32_and_saves_fp32_weights(tmp_path, one_torch_thread):
    """Same seed, same batches: bf16 autocast's held-out loss after a few steps is within a
    few percent of fp32's, the saved body is fp32, and the record says which ran."""
    records = {}
    for precision in ("bf16", "fp32"):
        cfg = _tiny_durotaxis(tmp_path, out=str(tmp_path / f"{precision}.pt"), steps=5,
                              batch_size=8, precision=precision)
        records[precision] = run(cfg)
        saved = torch.load(cfg.out, weights_only=True)
        assert all(t.dtype in (torch.float32, torch.int64) for t in saved.values())
        assert records[precision]["precision"] == precision
    bf16, fp32 = (records[p]["held_out_mse"]["after"]["mean"] for p in ("bf16", "fp32"))
    assert bf16 == pytest.approx(fp32, rel=0.05)


def test_pretraining_on_unit_maps_stays_fp32(tmp_path, capsys, monkeypatch):
    """16 x 16 frames give the last stage a 1 x 1 map, whose bf16 weight gradient oneDNN
    sometimes makes NaN: auto picks fp32 and says why; an explicit bf16 is refused."""
    monkeypatch.setattr("training.precision.native_bf16", lambda device: True)
    record = run(_tiny_durotaxis(tmp_path, image_size=16, steps=1))
    assert record["precision"] == "fp32"
    assert "precision: fp32 (auto: " in capsys.readouterr().out
    line = _exit_line(capsys, ["durotaxis", f"--out={tmp_path / 'x.pt'}", "--image_size=16",
                               "--frames=48", "--num_envs=16", "--precision=bf16", *TINY])
    assert line.startswith("error: --precision=bf16: ") and "use --precision=fp32" in line
