"""PPO's BatchNorm refresh: the whole rollout's statistics, however it is chunked (issue 28,
item 8.1).

Convention: running_var is BatchNorm's own, the unbiased variance (N / (N - 1) times the
variance) over every sample and position of a channel; running_mean their mean. The
reference is one train-mode BatchNorm forward with momentum=None over the whole rollout.
"""

from __future__ import annotations

import copy

import pytest
import torch

import train_ppo
from envs.durotaxis import DurotaxisConfig
from tests.test_ppo_fixes import _tiny_model
from training.distributed import World

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMAGE = 32
CHUNKS, CHUNK = 4, 6


def shifted_rollout(chunks: int = CHUNKS, size: int = CHUNK) -> torch.Tensor:
    """chunks x size observations, each chunk a brightness band of its own: the chunks'
    means differ, so averaging the chunks' variances misses most of the spread."""
    g = torch.Generator().manual_seed(0)
    bands = [40 * c + torch.randint(0, 60, (size, 1, IMAGE, IMAGE), generator=g)
             for c in range(chunks)]
    return torch.cat(bands).to(torch.uint8)


def one_pass(model, obs: torch.Tensor):
    """A copy of `model` whose trainable BatchNorm layers saw `obs` in one train-mode forward
    with momentum=None: their running statistics are exactly those of that forward."""
    reference = copy.deepcopy(model)
    for m in reference.trainable_batch_norms():
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        reference.encode(obs)
    return reference


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return _tiny_model("none", DurotaxisConfig(image_size=IMAGE))


@pytest.mark.parametrize("chunk", [CHUNK, 10])  # equal chunks; 10, 10 and 4
def test_chunked_refresh_gives_the_first_layer_the_whole_rollouts_statistics(model, chunk):
    obs = shifted_rollout()
    reference = one_pass(model, obs).trainable_batch_norms()[0]
    first = model.trainable_batch_norms()[0]  # its input does not depend on any statistics
    model.refresh_batch_norm({"obs": obs}, chunk=chunk)
    torch.testing.assert_close(first.running_mean, reference.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first.running_var, reference.running_var, rtol=1e-5, atol=1e-6)
    # The case bites: the chunks' own variances average to far less than the rollout's.
    chunk_vars = [one_pass(model, part).trainable_batch_norms()[0].running_var
                  for part in obs.split(chunk)]
    assert (torch.stack(chunk_vars).mean(0) < 0.8 * reference.running_var).any()


def test_every_layer_gets_the_statistics_of_all_it_was_given(model):
    """Direct computation: each trainable layer's inputs over the chunks, concatenated."""
    layers = model.trainable_batch_norms()
    seen: dict[int, list[torch.Tensor]] = {id(m): [] for m in layers}
    hooks = [m.register_forward_pre_hook(lambda m, args: seen[id(m)].append(args[0].clone()))
             for m in layers]
    try:
        model.refresh_batch_norm({"obs": shifted_rollout()}, chunk=CHUNK)
    finally:
        for hook in hooks:
            hook.remove()
    for i, m in enumerate(layers):
        x = torch.cat(seen[id(m)])
        torch.testing.assert_close(m.running_mean, x.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5,
                                   msg=f"layer {i}")
        torch.testing.assert_close(m.running_var, x.var(dim=(0, 2, 3), correction=1),
                                   rtol=1e-4, atol=1e-5, msg=f"layer {i}")
    assert not any(m.training for m in layers)


def test_one_chunk_is_batch_norms_own_one_pass_for_every_layer(model):
    """The convention: with the rollout in one chunk every layer's statistics are exactly
    what BatchNorm itself leaves (unbiased running_var)."""
    obs = shifted_rollout()
    reference = one_pass(model, obs).trainable_batch_norms()
    model.refresh_batch_norm({"obs": obs}, chunk=len(obs))
    for i, (m, r) in enumerate(zip(model.trainable_batch_norms(), reference, strict=True)):
        torch.testing.assert_close(m.running_mean, r.running_mean, rtol=1e-5, atol=1e-6,
                                   msg=f"layer {i}")
        torch.testing.assert_close(m.running_var, r.running_var, rtol=1e-5, atol=1e-6,
                                   msg=f"layer {i}")


def test_chunks_and_ranks_pool_alike(model, monkeypatch):
    """Half the rollout on each of two ranks, pooled by train_ppo.pool_batch_norm_over_ranks,
    against the whole rollout on one rank in chunks: the same statistics for the first layer
    (up to the pool's (n - 1) / n on each rank's variance, n a channel's elements on a
    rank: 12 x 16 x 16 here)."""
    obs = shifted_rollout()
    whole = copy.deepcopy(model)
    whole.refresh_batch_norm({"obs": obs}, chunk=CHUNK)
    ranks = [copy.deepcopy(model) for _ in range(2)]
    for rank, half in zip(ranks, obs.chunk(2), strict=True):
        rank.refresh_batch_norm({"obs": half}, chunk=CHUNK)
    first = [r.trainable_batch_norms()[0] for r in ranks]
    other = torch.cat([first[1].running_mean, first[1].running_var, first[1].running_mean ** 2])
    monkeypatch.setattr(train_ppo, "mean_over_ranks", lambda v, world: (v + other) / 2)
    train_ppo.pool_batch_norm_over_ranks([first[0]], World(rank=0, world_size=2))
    expected = whole.trainable_batch_norms()[0]
    torch.testing.assert_close(first[0].running_mean, expected.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(first[0].running_var, expected.running_var, rtol=1e-3, atol=0)

