"""bf16 autocast changes the numbers only within stated tolerances, and keeps the delicate
parts in fp32 (losses, the PPO policy distribution and log-probabilities, value heads; fbc's
flow loss, flow integration and EMA).

The tolerances are what bf16's 8-bit mantissa (relative step 2**-8 = 0.4%) gives through a
ResNet-18 of random weights on a fixed batch (measured over three batches: losses within
0.6%, body gradients at cosines 0.976-0.996, head gradients above 0.9997): losses within 2%
relative (the policy loss, about 0 on a fresh batch, within 1e-4 absolute), each body's
gradient within a cosine of 0.95 of fp32's, each head's within 0.999.

fbc (two cameras of 32 x 32 frames, 28 x 28 crops with a cache, batches of 8; measured over
ten seeds, the tests run seed 0): the flow loss, fp32 on bf16 velocities, is within 1.3e-4
relative of fp32's (tolerance 1e-3); the velocity MLP's gradient at cosines >= 0.9999
(floor 0.999). The projection's is at 0.94-0.99997 (floor 0.9): 0.996 and up on frozen
cached features, lower when the bodies train. Trained bodies are at 0.87-0.97 (floor 0.8):
0.874-0.910 fine-tuned, 0.899-0.957 with until_layer3, 0.949-0.972 with last_block. That
is training-mode BatchNorm's backward (it takes the batch mean out of the gradient, so what
is left is small beside bf16's rounding of it): the same fine-tuned bodies in eval mode
agree at 0.981-0.995. A frozen part's cache built in bf16 is within 0.64-0.83% of fp32's
(norm of the difference over fp32's; tolerance 2%), and is what the live path gives in
bf16, bit for bit here. Actions sampled on fixed noise differ by at most 6.5e-4 (tolerance
5e-3), 0.16-0.25% of how far the flow moves them (tolerance 2%).
"""

from __future__ import annotations

import pytest
import torch

from agents.fbc import FBCAgent, VelocityMLP
from agents.ppo import PPOConfig, ppo_loss
from tests import test_fbc
from tests.test_fbc_crop_cache import TinyFrames, crop_cfg
from tests.test_ppo import fake_batch, make_model
from training.distributed import LossForward
from training.precision import autocast, to_channels_last, with_autocast

CPU = torch.device("cpu")
LOSS_RTOL = 0.02
BODY_COSINE, HEAD_COSINE = 0.95, 0.999


def _loss_and_grads(model, batch, bf16: bool):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the entropy estimate draws a sample: the same one in both
    loss_fn = with_autocast(lambda b: ppo_loss(model, b, PPOConfig()), CPU, bf16)
    loss, info = loss_fn(batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
             if p.grad is not None}
    return loss.detach(), info, grads


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def test_ppo_loss_and_gradients_in_bf16_agree_with_fp32(one_torch_thread):
    model = make_model(freeze_mode="none").eval()
    batch = fake_batch(model, n=16)
    loss32, info32, grads32 = _loss_and_grads(model, batch, bf16=False)
    loss16, info16, grads16 = _loss_and_grads(model, batch, bf16=True)
    assert loss16.dtype == torch.float32  # the loss itself is fp32
    torch.testing.assert_close(loss16, loss32, rtol=LOSS_RTOL, atol=1e-4)
    for key in ("train/policy_loss", "train/value_loss", "train/entropy"):
        torch.testing.assert_close(info16[key], info32[key], rtol=LOSS_RTOL, atol=1e-4)
        assert info16[key].dtype == torch.float32, key
    assert grads16.keys() == grads32.keys()
    # Per component: the encoder's conv gradients, the heads'.
    for prefix in ("actor_encoder.", "critic_encoder.", "actor_trunk.", "critic_head.",
                   "kind_head.", "mean_head."):
        names = [n for n in grads32 if n.startswith(prefix)]
        a = torch.cat([grads16[n].flatten() for n in names])
        b = torch.cat([grads32[n].flatten() for n in names])
        floor = BODY_COSINE if prefix.endswith("encoder.") else HEAD_COSINE
        assert _cosine(a, b) > floor, prefix


def test_the_policy_and_values_are_fp32_inside_a_bf16_run(one_torch_thread):
    model = make_model(freeze_mode="none").eval()
    obs = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.act(obs)
        features = model.encode(obs)[0]
    assert features.dtype == torch.bfloat16  # the body runs in bf16 ...
    for key in ("log_prob", "value", "params", "u"):  # ... what PPO compares stays fp32
        assert out[key].dtype == torch.float32, key


# ----- fbc ---------------------------------------------------------------------------------
FLOW_LOSS_RTOL = 1e-3
FBC_COSINE = {"bodies": 0.8, "projection": 0.9, "velocity": 0.999}
CACHE_RTOL = 0.02
ACTION_ATOL, DISPLACEMENT_RTOL = 5e-3, 0.02


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _fbc_case(mode: str):
    """An agent and one batch for each precision: a fine-tuned body on live 32 x 32 frames
    ("none"), or a frozen part read from a cache built in that precision (32 x 32 frames
    cropped to 28: the trained last stage sees 2 x 2 maps, clear of oneDNN's 1 x 1 NaN)."""
    torch.manual_seed(0)
    if mode == "none":
        spec = test_fbc.small_spec()
        agent = FBCAgent(test_fbc.small_cfg(freeze_encoder=False), spec, CPU)
        batch = test_fbc.fake_batch(spec, b=8, seed=0)
        return agent, batch, batch
    data = TinyFrames()
    agent = FBCAgent(crop_cfg(mode), data.spec, CPU)
    caches = []
    for bf16 in (False, True):
        with autocast(CPU, bf16):  # as train_bc builds it: in the run's precision
            caches.append(agent.prepare(data))
    rows = caches[0].sample_indices(8, torch.Generator().manual_seed(0))
    return agent, *(cache.batch(rows) for cache in caches)


def _fbc_loss_and_grads(agent: FBCAgent, batch, bf16: bool):
    agent.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the flow loss draws its noise and times: the same in both
    loss, info = with_autocast(agent.loss, CPU, bf16)(batch)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in agent.named_parameters()
             if p.grad is not None}
    return loss.detach(), info, grads


@pytest.mark.parametrize("mode", ["none", "all", "until_layer3", "last_block"])
def test_fbc_loss_and_gradients_in_bf16_agree_with_fp32(mode, one_torch_thread):
    agent, batch32, batch16 = _fbc_case(mode)
    agent.train()  # training mode, as an update runs: BatchNorm on batch statistics
    loss32, _, grads32 = _fbc_loss_and_grads(agent, batch32, bf16=False)
    loss16, info16, grads16 = _fbc_loss_and_grads(agent, batch16, bf16=True)
    assert loss16.dtype == info16["train/flow_loss"].dtype == torch.float32
    torch.testing.assert_close(loss16, loss32, rtol=FLOW_LOSS_RTOL, atol=0)
    assert grads16.keys() == grads32.keys()
    assert all(g.dtype == torch.float32 for g in grads16.values())
    for part, floor in FBC_COSINE.items():
        names = [n for n in grads32 if f".{part}." in n]
        assert bool(names) == (part != "bodies" or mode != "all"), part  # what trains
        if names:
            a = torch.cat([grads16[n].flatten() for n in names])
            b = torch.cat([grads32[n].flatten() for n in names])
            assert _cosine(a, b) > floor, part


@pytest.mark.parametrize("mode", ["all", "until_layer3", "last_block"])
def test_fbc_cache_is_stored_in_bf16_close_to_fp32(mode, one_torch_thread):
    data = TinyFrames()
    torch.manual_seed(0)
    agent = FBCAgent(crop_cfg(mode), data.spec, CPU)
    cache32 = agent.prepare(data).features
    with autocast(CPU, True):
        cache16 = agent.prepare(data).features
    for key, feats in cache16.items():
        assert feats.dtype == torch.bfloat16 and cache32[key].dtype == torch.float32
        assert feats.shape == cache32[key].shape
        assert _relative(feats, cache32[key]) < CACHE_RTOL, key


@pytest.mark.parametrize("mode", ["all", "until_layer3", "last_block"])
def test_fbc_live_and_cached_paths_hand_the_trainable_part_the_same(mode, one_torch_thread):
    """In bf16 the cache holds what the live frozen part computes (bf16, same layout); a
    cache read in another precision is cast to what the live path would give there."""
    data = TinyFrames()
    torch.manual_seed(0)
    agent = to_channels_last(FBCAgent(crop_cfg(mode), data.spec, CPU), True).eval()
    enc = agent.policy.encoder
    idx = torch.arange(data.num_samples)
    with torch.no_grad(), autocast(CPU, True):
        cached_batch = agent.prepare(data, held_out=True).batch(idx)  # the centre crops
        cached = agent._cached(cached_batch)
        frames = data.batch(idx)
        for key in enc.image_keys:
            live = enc.frozen_part(key, frames[f"obs/{key}"])
            assert cached[key].dtype == live.dtype == torch.bfloat16
            assert cached[key].stride() == live.stride()
            # Bit-identical here; one bf16 step allowed for kernels chosen by batch size.
            torch.testing.assert_close(cached[key], live, rtol=2**-7, atol=1e-5)
    with torch.no_grad():  # the bf16 cache in an fp32 forward: cast, not refused
        assert all(v.dtype == torch.float32 for v in agent._cached(cached_batch).values())
        assert enc(cached_batch, cached=agent._cached(cached_batch)).dtype == torch.float32


def _velocity_dtypes(agent: FBCAgent) -> list[tuple[torch.dtype, torch.dtype]]:
    """(state x in, velocity out) of every velocity-net call, the EMA model's included."""
    calls: list[tuple[torch.dtype, torch.dtype]] = []
    for module in agent.modules():
        if isinstance(module, VelocityMLP):
            module.register_forward_hook(lambda m, args, out: calls.append((args[0].dtype,
                                                                             out.dtype)))
    return calls


def test_fbc_flow_integration_is_fp32_and_bf16_actions_agree(one_torch_thread):
    torch.manual_seed(0)
    spec = test_fbc.small_spec()
    agent = FBCAgent(test_fbc.small_cfg(freeze_encoder=False), spec, CPU).eval()
    batch = test_fbc.fake_batch(spec, b=8, seed=0)
    calls = _velocity_dtypes(agent)
    with autocast(CPU, True):
        torch.manual_seed(1)
        chunks = agent.sample_chunks(batch)  # the EMA model acts
    assert chunks.dtype == torch.float32
    # The net runs in bf16; the state it steps is fp32 at every one of the flow_steps.
    assert calls == [(torch.float32, torch.bfloat16)] * agent.cfg.flow_steps
    noise = torch.randn(8, agent.cfg.chunk_length * spec.action_dim,
                        generator=torch.Generator().manual_seed(0))
    actions = {}
    with torch.no_grad():
        for bf16 in (False, True):
            with autocast(CPU, bf16):
                actions[bf16] = agent.policy.sample(agent.policy.encoder(batch), noise)
    a16, a32 = actions[True].flatten(1), actions[False].flatten(1)
    torch.testing.assert_close(a16, a32, rtol=0, atol=ACTION_ATOL)
    inside = (a32.abs() < 1) & (a16.abs() < 1)  # where the clamp does not hide the path
    moved = (a32 - noise)[inside]
    assert float((a16 - a32)[inside].norm() / moved.norm()) < DISPLACEMENT_RTOL


def test_fbc_ema_stays_fp32_through_bf16_updates(one_torch_thread):
    torch.manual_seed(0)
    spec = test_fbc.small_spec()  # 32 x 32: the trained last stage sees 2 x 2 maps
    agent = to_channels_last(FBCAgent(test_fbc.small_cfg(freeze_encoder=False), spec, CPU),
                             True)
    start = {k: v.clone() for k, v in agent.ema.state_dict().items()}
    loss_fn = with_autocast(LossForward(agent, agent.loss), CPU, True)
    for seed in range(2):  # as train_bc runs it: the loss's forward under autocast
        agent.update(test_fbc.fake_batch(spec, b=4, seed=seed), loss_fn)
    with autocast(CPU, True):  # and a loop that wraps the whole step
        agent.update(test_fbc.fake_batch(spec, b=4, seed=2))
    state = agent.ema.state_dict()
    assert {k: v.dtype for k, v in state.items()} == {k: v.dtype for k, v in start.items()}
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    assert int(state["n_averaged"]) == 4
    weight = "module.velocity.net.0.weight"
    assert not torch.equal(state[weight], start[weight])  # it did average
