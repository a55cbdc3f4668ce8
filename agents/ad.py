"""Algorithm Distillation (Laskin et al. 2022): a causal transformer over learning histories.

The transformer reads a source learner's history across episodes and is trained to
predict the learner's next action; rolled out with its own growing context it improves
in context, without weight updates. One token per environment step holds the
observation and the previous step's action and reward,
token_t = embed(obs_t, a_{t-1}, r_{t-1}), and the output at token t predicts a_t (three
tokens per step, as in the paper, would triple the sequence for the same information).

Contexts are aligned to episodes: the transformer sees the current episode and up to
`context_episodes` complete episodes before it, with learned absolute positions that
start at 0 on the first step of the oldest episode in view. Training samples such
episode-aligned windows from the histories; in-context evaluation steps the transformer
with a KV cache inside an episode and, once the window is full, drops the oldest episode
and refills the cache from the kept tokens once per episode. The logits are therefore
exactly those of recomputing the whole window at every step (tested), at a fraction of
the cost (benchmarks/bench_darkroom.py).

Paper sizes: 4 layers, 64-dim, 4 heads, dropout 0.1; Adam, lr 3e-4, cosine decay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from training.contracts import BCData
from training.diagnostics import grad_norms
from training.optim import build_optimizer, scale_learning_rates
from training.ranges import ConfigError, at_least, below, positive


@dataclass(frozen=True)
class ADConfig:
    """Algorithm Distillation transformer."""

    context_episodes: int = 8
    """Complete episodes before the current one that the transformer sees (0: only the
    current episode). 8 was chosen on the validation goals of the context ablation
    (docs/darkroom.md#context-ablation)."""
    d_model: int = 64
    """Embedding width."""
    n_layer: int = 4
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads."""
    dropout: float = 0.1
    """Dropout on embeddings, attention outputs and MLP outputs."""
    attention_dropout: float = 0.0
    """Dropout on the attention weights themselves (off by default: it materialises a
    T x T mask per head and costs more than the rest of a CPU step)."""
    lr: float = 3e-4
    """Adam learning rate."""
    lr_decay_steps: int = 0
    """Cosine-decay the learning rate to 0 over this many updates (0: constant); set it
    to --offline_steps for the paper's schedule."""
    weight_decay: float = 0.0
    """Adam weight decay."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this (0: no clipping)."""
    temperature: float = 1.0
    """Sampling temperature of actions in context (0: greedy)."""

    def __post_init__(self) -> None:
        check_transformer_ranges(self)
        check_decoder_ranges(self.n_layer, self.temperature)

    @property
    def prefix_episodes(self) -> int:
        """Older episodes compressed before the context: none for AD (its data windows)."""
        return 0


class GridHistorySpec(Protocol):
    """What AD reads of a task's data spec (envs/darkroom/dataset.py's DarkroomSpec is one)."""

    grid_size: int
    horizon: int
    num_actions: int


class TransformerSettings(Protocol):
    """The settings every config of AD and compressed AD has (stage-1 pretraining included)."""

    context_episodes: int
    d_model: int
    n_head: int
    dropout: float
    attention_dropout: float
    lr: float
    lr_decay_steps: int
    weight_decay: float
    grad_clip: float


def check_transformer_ranges(cfg: TransformerSettings) -> None:
    """The ranges of the settings AD and compressed AD share (one-line ConfigError)."""
    at_least("agent.context_episodes", cfg.context_episodes, 0)
    at_least("agent.d_model", cfg.d_model, 1)
    at_least("agent.n_head", cfg.n_head, 1)
    if cfg.d_model % cfg.n_head:
        raise ConfigError(f"--agent.d_model={cfg.d_model} must be a multiple of "
                          f"--agent.n_head={cfg.n_head}")
    for name, value in (("dropout", cfg.dropout), ("attention_dropout", cfg.attention_dropout)):
        at_least(f"agent.{name}", value, 0.0)
        below(f"agent.{name}", value, 1.0)
    positive("agent.lr", cfg.lr)
    at_least("agent.lr_decay_steps", cfg.lr_decay_steps, 0)
    at_least("agent.weight_decay", cfg.weight_decay, 0)
    at_least("agent.grad_clip", cfg.grad_clip, 0)


def check_decoder_ranges(n_layer: int, temperature: float) -> None:
    """The settings of a config that acts (AD, compressed AD's stage 2), which stage-1
    pretraining lacks: it has no decoder blocks and samples no actions."""
    at_least("agent.n_layer", n_layer, 1)
    at_least("agent.temperature", temperature, 0)


# ---------------------------------------------------------------- building blocks


class TokenEmbedding(nn.Module):
    """(cell, action, reward) -> d_model: sums of learned tables and a reward projection.

    The action table has one extra row, `none`, for a token with no previous step.
    """

    def __init__(self, grid_size: int, num_actions: int, d_model: int) -> None:
        super().__init__()
        self.x = nn.Embedding(grid_size, d_model)
        self.y = nn.Embedding(grid_size, d_model)
        self.action = nn.Embedding(num_actions + 1, d_model)
        self.reward = nn.Linear(1, d_model)
        self.none_action = num_actions

    def forward(self, obs: torch.Tensor, action: torch.Tensor,
                reward: torch.Tensor) -> torch.Tensor:
        """obs ... x 2 (long), action ... (long, `none_action` allowed), reward ... (float)."""
        return (self.x(obs[..., 0]) + self.y(obs[..., 1]) + self.action(action)
                + self.reward(reward.unsqueeze(-1)))


class KVCache:
    """Keys and values of every layer for a batch, preallocated up to `max_len` tokens."""

    def __init__(self, n_layer: int, batch: int, n_head: int, max_len: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype = torch.float32) -> None:
        shape = (n_layer, batch, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # a Python int: slicing by it costs no device sync


class Block(nn.Module):
    """Pre-LayerNorm transformer block; attention causal, or over a KV cache."""

    def __init__(self, d_model: int, n_head: int, dropout: float, causal: bool = True,
                 attention_dropout: float = 0.0) -> None:
        super().__init__()
        self.n_head = n_head
        self.causal = causal
        self.attention_dropout = attention_dropout
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model),
            nn.Dropout(dropout),
        )
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None,
                layer: int = 0) -> torch.Tensor:
        """x: B x T x d. With a cache, x continues the cached sequence at cache.length."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.n_head, d // self.n_head).permute(
            2, 0, 3, 1, 4
        )
        p = self.attention_dropout if self.training else 0.0
        if cache is None:
            att = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, dropout_p=p)
        else:
            start = cache.length
            cache.k[layer, :, :, start:start + t] = k
            cache.v[layer, :, :, start:start + t] = v
            keys = cache.k[layer, :, :, : start + t]
            values = cache.v[layer, :, :, : start + t]
            if t == 1:  # one new token sees everything cached: no mask needed
                att = F.scaled_dot_product_attention(q, keys, values, dropout_p=p)
            elif start == 0:  # a fresh prefill is plain causal attention
                att = F.scaled_dot_product_attention(q, keys, values, is_causal=self.causal,
                                                     dropout_p=p)
            else:
                mask = torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(start)
                att = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=p)
        x = x + self.resid_drop(self.proj(att.transpose(1, 2).reshape(b, t, d)))
        return x + self.mlp(self.ln2(x))


class CausalTransformer(nn.Module):
    """Learned absolute positions + blocks + final LayerNorm; full or KV-cached forward."""

    def __init__(self, d_model: int, n_layer: int, n_head: int, dropout: float,
                 max_len: int, attention_dropout: float = 0.0) -> None:
        super().__init__()
        self.max_len = max_len
        self.n_head = n_head
        self.pos = nn.Parameter(torch.zeros(max_len, d_model))
        nn.init.normal_(self.pos, std=0.02)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d_model, n_head, dropout, attention_dropout=attention_dropout)
            for _ in range(n_layer)
        )
        self.ln_f = nn.LayerNorm(d_model)

    def new_cache(self, batch: int, device: torch.device) -> KVCache:
        """An empty cache for `batch` sequences of up to max_len tokens."""
        d = self.pos.shape[1]
        return KVCache(len(self.blocks), batch, self.n_head, self.max_len, d // self.n_head,
                       device, self.pos.dtype)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """x: B x T x d embedded tokens -> B x T x d features (continuing `cache` if given)."""
        start = 0 if cache is None else cache.length
        if start + x.shape[1] > self.max_len:
            raise ValueError(f"sequence of {start + x.shape[1]} tokens exceeds {self.max_len}")
        x = self.drop(x + self.pos[start:start + x.shape[1]])
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        if cache is not None:
            cache.length = start + x.shape[1]
        return self.ln_f(x)


def previous_steps(actions: torch.Tensor, rewards: torch.Tensor,
                   none_action: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift a window's actions and rewards right by one; the first token gets `none`."""
    prev_a = torch.cat([torch.full_like(actions[:, :1], none_action), actions[:, :-1]], 1)
    prev_r = torch.cat([torch.zeros_like(rewards[:, :1]), rewards[:, :-1]], 1)
    return prev_a, prev_r


def sample_actions(logits: torch.Tensor, temperature: float,
                   generator: torch.Generator | None) -> torch.Tensor:
    """Gumbel-max sampling on the device (no host sync); temperature 0 is greedy."""
    logits = logits.float()  # a bf16 run's logits: Gumbel noise on fp32 values
    if temperature <= 0:
        return logits.argmax(-1)
    u = torch.rand(logits.shape, device=logits.device, generator=generator)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-20)))
    return (logits / temperature + gumbel).argmax(-1)


@runtime_checkable
class CosineSchedule(Protocol):
    """An agent config whose learning rate follows cosine_factor (train_bc checks that the
    schedule does not end before the training does)."""

    lr_decay_steps: int


def cosine_factor(step: int, decay_steps: int) -> float:
    """Learning-rate factor: cosine from 1 to 0 over decay_steps (1 when disabled)."""
    if decay_steps <= 0:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(step, decay_steps) / decay_steps))


class UpdateCounter(nn.Module):
    """Updates done so far, a host int saved in the state dict (as extra state).

    Kept on the host so that the learning-rate schedule needs no device read per step.
    """

    def __init__(self) -> None:
        super().__init__()
        self.value = 0

    def get_extra_state(self) -> int:
        return self.value

    def set_extra_state(self, state: int) -> None:
        self.value = int(state)


def adam_step(agent: nn.Module, batch: dict[str, torch.Tensor], loss_fn, cfg) -> dict:
    """One update of an AD-family agent: cosine lr, loss, backward, clip, step.

    `loss_fn(batch) -> (loss, info)` is the agent's `loss`, or the training loop's DDP /
    autocast wrapper of it. Returns info, gradient norms and learning rates; tensors
    stay on the device (the logger reads them when it logs), so a step has no host sync.
    """
    agent.train()
    optimizer = agent.optimizer
    scale_learning_rates(optimizer, cosine_factor(agent.updates.value, cfg.lr_decay_steps))
    loss, info = loss_fn(batch)
    agent.updates.value += 1
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grads = grad_norms(optimizer)
    if cfg.grad_clip > 0:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)
    optimizer.step()
    lrs = {f"train/lr_{g.get('name', 'group')}": g["lr"] for g in optimizer.param_groups}
    return {**info, **grads, **lrs}


class EpisodeContext:
    """The raw tokens an in-context rollout keeps, episode-aligned, for a batch of envs.

    Holds up to `capacity` episodes of (obs, previous action, previous reward); pushing
    the first step of an episode when full drops the oldest episode.
    """

    def __init__(self, num_envs: int, horizon: int, capacity: int, none_action: int,
                 device: torch.device) -> None:
        self.horizon = horizon
        self.size = capacity * horizon
        self.obs = torch.zeros(num_envs, self.size, 2, dtype=torch.long, device=device)
        self.prev_action = torch.full((num_envs, self.size), none_action, dtype=torch.long,
                                      device=device)
        self.prev_reward = torch.zeros(num_envs, self.size, device=device)
        self.length = 0
        self.episodes_seen = 0

    def push(self, obs: torch.Tensor, prev_action: torch.Tensor,
             prev_reward: torch.Tensor) -> bool:
        """Append one step; returns True when the oldest episode was dropped to make room."""
        dropped = False
        if self.length % self.horizon == 0:
            self.episodes_seen += 1
            if self.length == self.size:
                h = self.horizon
                for buf in (self.obs, self.prev_action, self.prev_reward):
                    buf[:, :-h] = buf[:, h:].clone()
                self.length -= h
                dropped = True
        self.obs[:, self.length] = obs
        self.prev_action[:, self.length] = prev_action
        self.prev_reward[:, self.length] = prev_reward
        self.length += 1
        return dropped

    def tokens(self, start: int, end: int, none_action: int) -> tuple[torch.Tensor, ...]:
        """(obs, prev action, prev reward) of tokens [start, end); the first one gets `none`."""
        prev_a = self.prev_action[:, start:end].clone()
        prev_r = self.prev_reward[:, start:end].clone()
        prev_a[:, 0] = none_action
        prev_r[:, 0] = 0.0
        return self.obs[:, start:end], prev_a, prev_r


# ---------------------------------------------------------------- the agent


class ADAgent(nn.Module):
    """AD: embed -> LayerNorm -> causal transformer -> action logits."""

    def __init__(self, cfg: ADConfig, spec: GridHistorySpec, device: torch.device) -> None:
        super().__init__()
        if cfg.d_model % cfg.n_head:
            raise ValueError(f"d_model {cfg.d_model} is not divisible by n_head {cfg.n_head}")
        self.cfg = cfg
        self.spec = spec
        self.device = torch.device(device)
        self.horizon = spec.horizon
        self.num_actions = spec.num_actions
        self.window = (cfg.context_episodes + 1) * self.horizon
        self.embed = TokenEmbedding(spec.grid_size, self.num_actions, cfg.d_model)
        self.embed_ln = nn.LayerNorm(cfg.d_model)
        self.transformer = CausalTransformer(cfg.d_model, cfg.n_layer, cfg.n_head, cfg.dropout,
                                             self.window, cfg.attention_dropout)
        self.head = nn.Linear(cfg.d_model, self.num_actions)
        self.updates = UpdateCounter()
        self.to(self.device)
        self.optimizer = build_optimizer(self, backbone_lr=cfg.lr, head_lr=cfg.lr,
                                         weight_decay=cfg.weight_decay, backbone_modules=[])
        self._rollout: dict | None = None

    def components(self) -> dict[str, nn.Module]:
        """Parts for the parameter report."""
        return {"embedding": nn.ModuleList([self.embed, self.embed_ln]),
                "transformer": self.transformer, "head": self.head}

    def logits(self, obs: torch.Tensor, prev_action: torch.Tensor, prev_reward: torch.Tensor,
               cache: KVCache | None = None) -> torch.Tensor:
        """Action logits for every token (continuing `cache` if given): B x T x A."""
        x = self.embed_ln(self.embed(obs, prev_action, prev_reward))
        return self.head(self.transformer(x, cache))

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Cross-entropy of the learner's actions at every position of the window."""
        obs = batch["obs"][:, -self.window:]
        actions = batch["actions"][:, -self.window:]
        rewards = batch["rewards"][:, -self.window:]
        prev_a, prev_r = previous_steps(actions, rewards, self.embed.none_action)
        logits = self.logits(obs, prev_a, prev_r).float()  # the loss in fp32 in a bf16 run
        loss = F.cross_entropy(logits.reshape(-1, self.num_actions), actions.reshape(-1))
        accuracy = (logits.argmax(-1) == actions).float().mean()
        return loss, {"train/loss": loss.detach(), "train/accuracy": accuracy}

    def update(self, batch: dict[str, torch.Tensor], loss_fn=None) -> dict:
        """One Adam step on a batch of history windows (`loss_fn`: see `adam_step`)."""
        return adam_step(self, batch, loss_fn or self.loss, self.cfg)

    def prepare(self, data: BCData) -> BCData:
        """The windows as they are: nothing to precompute."""
        return data

    # ---- in-context rollouts

    @torch.no_grad()
    def reset_context(self, num_envs: int, *, generator: torch.Generator | None = None,
                      kv_cache: bool = True) -> None:
        """Start in-context rollouts for `num_envs` environments with an empty context."""
        self.eval()
        self._rollout = {
            "context": EpisodeContext(num_envs, self.horizon, self.cfg.context_episodes + 1,
                                      self.embed.none_action, self.device),
            "cache": self.transformer.new_cache(num_envs, self.device) if kv_cache else None,
            "generator": generator,
        }

    @torch.no_grad()
    def next_logits(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Push one step into the context and return the logits for its action: N x A."""
        if self._rollout is None:
            raise RuntimeError("call reset_context(num_envs) before acting in context")
        ctx: EpisodeContext = self._rollout["context"]
        cache: KVCache | None = self._rollout["cache"]
        dropped = ctx.push(obs["obs"], obs["prev_action"], obs["prev_reward"])
        if cache is None:  # recompute the whole window (the reference the cache must match)
            return self.logits(*ctx.tokens(0, ctx.length, self.embed.none_action))[:, -1]
        if dropped or ctx.length == 1:  # new window start: refill the cache once
            cache.length = 0
            return self.logits(*ctx.tokens(0, ctx.length, self.embed.none_action), cache)[:, -1]
        i = ctx.length - 1
        token = (ctx.obs[:, i:i + 1], ctx.prev_action[:, i:i + 1], ctx.prev_reward[:, i:i + 1])
        return self.logits(*token, cache)[:, -1]

    @torch.no_grad()
    def act(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sample actions for the current step; obs holds "obs" (N x 2), "prev_action" and
        "prev_reward" (N: the previous step's, ignored on the very first step)."""
        logits = self.next_logits(obs)
        return sample_actions(logits, self.cfg.temperature, self._rollout["generator"])
