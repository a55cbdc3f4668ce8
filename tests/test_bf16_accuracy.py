"""bf16 autocast changes the numbers only within stated tolerances, and keeps the delicate
parts in fp32 (losses, the PPO policy distribution and log-probabilities, value heads).

The tolerances are what bf16's 8-bit mantissa (relative step 2**-8 = 0.4%) gives through a
ResNet-18 of random weights on a fixed batch (measured over three batches: losses within
0.6%, body gradients at cosines 0.976-0.996, head gradients above 0.9997): losses within 2%
relative (the policy loss, about 0 on a fresh batch, within 1e-4 absolute), each body's
gradient within a cosine of 0.95 of fp32's, each head's within 0.999.
"""

from __future__ import annotations

import torch

from agents.ppo import PPOConfig, ppo_loss
from tests.test_ppo import fake_batch, make_model
from training.precision import with_autocast

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
