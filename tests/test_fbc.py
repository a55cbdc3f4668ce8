"""fbc: flow matching on action chunks, the multi-camera encoder, freezing and the cache."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from agents.fbc import CachedFeatureData, FBCAgent, FBCConfig, crop_images
from encoders import EncoderConfig
from envs.lift.dataset import LiftSpec, make_data
from tests.test_lift_data import write_synthetic
from training.ranges import ConfigError

CPU = torch.device("cpu")
CAMS = ["agentview_image", "robot0_eye_in_hand_image"]
LOWDIM = {"robot0_eef_pos": 3, "robot0_gripper_qpos": 2}


def small_spec(image_size: int = 32, chunk: int = 4, cams=CAMS, lowdim=LOWDIM) -> LiftSpec:
    return LiftSpec(
        image_keys=tuple(cams),
        image_shape=(3, image_size, image_size),
        lowdim_keys=tuple(lowdim),
        lowdim_dims=dict(lowdim),
        lowdim_mean={k: [0.0] * d for k, d in lowdim.items()},
        lowdim_std={k: [1.0] * d for k, d in lowdim.items()},
        action_dim=7,
        chunk_length=chunk,
        env_args={},
        horizon=40,
        dataset="",
    )


def small_cfg(**kw) -> FBCConfig:
    base = dict(
        pretrained_encoder=False,
        chunk_length=4,
        action_horizon=2,
        hidden_dim=64,
        num_layers=2,
        emb_dim=32,
        lr=1e-3,
        backbone_lr=1e-3,
    )
    return FBCConfig(**{**base, **kw})


def fake_batch(spec: LiftSpec, b: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    size = spec.image_shape[-1]
    batch = {f"obs/{k}": torch.rand(b, 3, size, size, generator=g) for k in spec.image_keys}
    for k, d in spec.lowdim_dims.items():
        batch[f"obs/{k}"] = torch.randn(b, d, generator=g)
    batch["actions"] = torch.rand(b, spec.chunk_length, 7, generator=g) * 2 - 1
    return batch


def body_state(agent: FBCAgent) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in agent.policy.encoder.bodies.state_dict().items()}


def test_loss_and_sampling_shapes():
    spec = small_spec()
    agent = FBCAgent(small_cfg(), spec, CPU)
    batch = fake_batch(spec)
    emb = agent.policy.encoder(batch)
    assert emb.shape == (6, 32)
    loss = agent.policy.flow_loss(emb, batch["actions"])
    assert loss.shape == () and torch.isfinite(loss)
    chunks = agent.sample_chunks(batch)
    assert chunks.shape == (6, 4, 7) and chunks.abs().max() <= 1.0
    assert agent.act(batch).shape == (6, 2, 7)
    info = agent.update(batch)
    assert {"train/flow_loss", "grad/heads_norm", "grad/total_norm"} <= set(info)


def test_sampler_reproduces_a_bimodal_target():
    """1-D actions that are -0.7 or +0.7 with equal odds: samples land on both modes."""
    torch.manual_seed(0)
    spec = dataclasses.replace(small_spec(cams=[], lowdim={"x": 1}, chunk=1), action_dim=1)
    cfg = small_cfg(
        chunk_length=1, action_horizon=1, hidden_dim=128, num_layers=3, lr=3e-3, ema=False
    )
    agent = FBCAgent(cfg, spec, CPU)
    obs = torch.zeros(256, 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: extra threads only add contention
    try:
        for _ in range(400):
            modes = torch.where(torch.rand(256, 1, 1) < 0.5, -0.7, 0.7)
            agent.update({"obs/x": obs, "actions": modes + 0.02 * torch.randn(256, 1, 1)})
        samples = agent.sample_chunks({"obs/x": torch.zeros(4000, 1)}).flatten()
    finally:
        torch.set_num_threads(threads)
    near = ((samples.abs() - 0.7).abs() < 0.15).float().mean()
    positive = (samples > 0).float().mean()
    assert near > 0.85, f"only {near:.2f} of samples near a mode"
    assert 0.35 < positive < 0.65, f"mode balance {positive:.2f}"
    # A unimodal regressor would put its samples near the mean, 0.
    assert (samples.abs() < 0.3).float().mean() < 0.05


def test_frozen_encoder_is_bit_identical_after_training():
    spec = small_spec()
    agent = FBCAgent(small_cfg(freeze_encoder=True), spec, CPU)
    before = body_state(agent)
    proj_before = agent.policy.encoder.projection[0].weight.clone()
    for step in range(3):
        agent.update(fake_batch(spec, seed=step))  # live images: BN sees train-mode batches
    after = body_state(agent)
    assert any("running_mean" in k for k in after)
    for name, tensor in before.items():
        assert torch.equal(tensor, after[name]), f"{name} moved"
    assert not torch.equal(proj_before, agent.policy.encoder.projection[0].weight)
    groups = {g["name"]: g for g in agent.optimizer.param_groups}
    assert set(groups) == {"heads"}
    ids = {id(p) for p in groups["heads"]["params"]}
    assert all(id(p) in ids for p in agent.policy.encoder.projection.parameters())


def test_finetuned_encoder_trains_at_backbone_lr():
    spec = small_spec()
    agent = FBCAgent(small_cfg(freeze_encoder=False, backbone_lr=3e-5, lr=1e-3), spec, CPU)
    groups = {g["name"]: g for g in agent.optimizer.param_groups}
    assert groups["backbone"]["lr"] == 3e-5 and groups["heads"]["lr"] == 1e-3
    bodies = list(agent.policy.encoder.bodies.parameters())
    assert sum(p.numel() for p in groups["backbone"]["params"]) == sum(p.numel() for p in bodies)
    head_ids = {id(p) for p in groups["heads"]["params"]}
    assert all(id(p) in head_ids for p in agent.policy.encoder.projection.parameters())
    before = body_state(agent)
    agent.update(fake_batch(spec))
    after = body_state(agent)
    assert not torch.equal(
        before["agentview_image.backbone.conv1.weight"],
        after["agentview_image.backbone.conv1.weight"],
    )


def test_shared_body_encodes_every_camera():
    spec = small_spec()
    agent = FBCAgent(small_cfg(share_encoder=True), spec, CPU)
    assert list(agent.policy.encoder.bodies) == ["shared"]
    assert agent.policy.encoder(fake_batch(spec)).shape == (6, 32)


def test_rollout_runs_in_eval_mode_with_batchnorm():
    spec = small_spec()
    agent = FBCAgent(small_cfg(freeze_encoder=False), spec, CPU)
    bns = [m for m in agent.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns, "the pretrained BatchNorm must stay BatchNorm (no GroupNorm swap)"
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in agent.modules())
    seen = []
    for bn in bns:  # the live policy's and the EMA model's (which is the one that acts)
        bn.register_forward_hook(lambda m, i, o: seen.append(m.training))
    agent.train()
    running = [bn.running_mean.clone() for bn in bns]
    agent.act(fake_batch(spec))
    assert seen and not any(seen)
    assert agent.training  # restored afterwards
    assert all(torch.equal(r, bn.running_mean) for r, bn in zip(running, bns, strict=True))


def test_ema_is_in_the_state_dict_and_used_for_acting():
    spec = small_spec()
    agent = FBCAgent(small_cfg(), spec, CPU)
    keys = [k for k in agent.state_dict() if k.startswith("ema.")]
    assert any("projection" in k for k in keys) and "ema.n_averaged" in keys
    agent.update(fake_batch(spec))
    torch.manual_seed(1)
    with_ema = agent.sample_chunks(fake_batch(spec), use_ema=True)
    torch.manual_seed(1)
    live = agent.sample_chunks(fake_batch(spec), use_ema=False)
    assert not torch.equal(with_ema, live)


def test_random_crop_shapes_and_centre():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    assert crop_images(x, 6, random=True).shape == (2, 3, 6, 6)
    assert torch.equal(crop_images(x, 6, random=False), x[:, :, 1:7, 1:7])
    crops = crop_images(x, 6, random=True)
    # Each crop is a contiguous window of its own image.
    for b in range(2):
        top_left = crops[b, 0, 0, 0] - x[b, 0, 0, 0]
        r, c = int(top_left // 8), int(top_left % 8)
        assert torch.equal(crops[b], x[b, :, r : r + 6, c : c + 6])


@pytest.mark.parametrize("mode", ["all", "until_layer3", "last_block"])
def test_cached_features_equal_live_features(tmp_path, mode):
    """all: the features are cached; until_layer3 / last_block: the frozen prefix's maps.
    (Without crops; tests/test_fbc_crop_cache.py checks the cache of crops.)"""
    path = write_synthetic(tmp_path / "d.hdf5", lengths=(6, 5))
    cfg = small_cfg(encoder=EncoderConfig(weights="random", freeze_mode=mode), cache_batch_size=4,
                    random_crop=False)
    data = make_data(str(path), device=CPU, seed=0, cache_dir=tmp_path,
                         chunk_length=cfg.chunk_length)
    torch.manual_seed(0)
    cached_agent = FBCAgent(cfg, data.spec, CPU)
    torch.manual_seed(0)
    live_agent = FBCAgent(cfg, data.spec, CPU)
    cached = cached_agent.prepare(data)
    assert isinstance(cached, CachedFeatureData)
    idx = torch.arange(data.num_samples)
    live_agent.train()
    batch = data.batch(idx)
    enc = live_agent.policy.encoder
    for key in enc.image_keys:
        torch.testing.assert_close(
            cached.features[key], enc.frozen_part(key, batch[f"obs/{key}"]), rtol=1e-5, atol=1e-5
        )
    # Training from the cache follows training from live images step for step.
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(2):
        torch.manual_seed(7)
        a = cached_agent.update(cached.sample(8, g1))
        torch.manual_seed(7)
        b = live_agent.update(data.sample(8, g2))
        assert a["train/flow_loss"].item() == pytest.approx(b["train/flow_loss"].item(), rel=1e-4)
    for (name, p), q in zip(
        cached_agent.policy.named_parameters(), live_agent.policy.parameters(), strict=True
    ):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


def test_cache_is_off_when_it_would_be_wrong(tmp_path):
    """Nothing frozen, nothing cached (a frozen body with crops caches crops: see
    tests/test_fbc_crop_cache.py)."""
    path = write_synthetic(tmp_path / "d.hdf5", lengths=(3,))
    cfg = small_cfg(freeze_encoder=False)
    data = make_data(str(path), device=CPU, seed=0, cache_dir=tmp_path,
                     chunk_length=cfg.chunk_length)
    assert FBCAgent(cfg, data.spec, CPU).prepare(data) is data


def test_default_config_and_option_names():
    cfg = FBCConfig()
    assert cfg.pretrained_encoder is None and cfg.weights == "auto"  # pretrained by default
    assert cfg.encoder_config.freeze_mode == "all" and cfg.uses_feature_cache
    assert cfg.chunk_length == 16 and cfg.flow_steps == 10 and cfg.lr == 1e-4
    assert cfg.hidden_dim == 512 and cfg.num_layers == 4 and cfg.emb_dim == 256
    assert {"freeze_encoder", "rgb_model_name", "random_crop", "ema"} <= {
        f.name for f in dataclasses.fields(FBCConfig)
    }
    with pytest.raises(ConfigError, match="action_horizon"):
        FBCConfig(action_horizon=17)


def test_train_bc_parses_the_documented_flags():
    import agents
    import train_bc
    from agents.fbc import FBCAgent as Agent

    agents.AGENTS.setdefault("fbc", (FBCConfig, Agent))
    cfg = train_bc.parse_args(["--agent.freeze_encoder=True"])
    assert cfg.env_name == "lift-scripted-image" and cfg.agent_name == "fbc"
    assert isinstance(cfg.agent, FBCConfig) and cfg.agent.freeze_encoder is True
    cfg = train_bc.parse_args(
        [
            "--env_name=lift-mh-image",
            "--agent=agents/fbc.py",
            "--agent.freeze_encoder=False",
            "--agent.pretrained_encoder=False",
            "--agent.rgb_model_name=resnet50",
        ]
    )
    assert cfg.env_name == "lift-mh-image" and cfg.agent.freeze_encoder is False
    assert cfg.agent.rgb_model_name == "resnet50" and not cfg.agent.pretrained_encoder
