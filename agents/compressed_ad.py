"""Compressed-context Algorithm Distillation, in two stages.

The AD decoder sees the current episode and `context_episodes` complete episodes before
it, as in agents/ad.py, plus `n_latent` latent tokens in front that summarise up to
`compressed_episodes x compression_depth` older episodes. An encoder folds those older
episodes in one at a time, oldest first: z_0 is learned, z_k = encoder(z_{k-1},
episode_k), where an episode enters as its H transition tokens embed(obs_t, a_t, r_t)
(the encoder's own input embedding `embed` and LayerNorm `embed_ln`) and the encoder
attends over [z_{k-1}; episode tokens] bidirectionally and keeps the outputs at the
latent slots. The decoder has its own input embedding (`decoder_embed`,
`decoder_embed_ln`) of its tokens embed(obs_t, a_{t-1}, r_{t-1}), as AD's.

Long memory (`compression_depth` D > 1): the compressed episodes form D chunks of
`compressed_episodes`, counted back from the decoder's raw window, and each chunk is
compressed starting from the latents of the chunk before it. Those latents enter as a
constant: the gradient stops at chunk boundaries (as Transformer-XL's memory does), so a
step back-propagates through one chunk's folds whatever the depth, while the forward
pass reaches back D x compressed_episodes episodes. D = 1 is one chunk, folded with the
full gradient.

Stage 1 (`compressed_ad_pretrain`) trains the encoder and its embedding alone with a
reconstruction objective that cannot collapse: after compressing d episodes, a small
decoder is told which episode (its age, 0 = the newest) and which steps to rebuild, and
must classify the raw cells, actions and rewards of that episode: fixed targets from the
data, not features of layers trained by the same loss. Its accuracies are reported per
field.

Stage 2 (`compressed_ad`) loads the stage-1 encoder, embedding and LayerNorm from
`--agent.encoder_checkpoint` and trains action prediction, either fine-tuning them
(`--agent.freeze_encoder=False`, the three in the optimizer's "backbone" group at
`encoder_lr`) or freezing all three (`=True`: no gradient, dropout off, bit-identical to
the checkpoint). The decoder, its embedding and the head train in both modes, so the two
differ in the encoder only.

In context the raw window slides by whole episodes as in AD; when it does, the episodes
that left it (up to `compressed_episodes x compression_depth`) are compressed afresh from
z_0 and the decoder's KV cache is refilled once, so the latents always match what
training showed.

`same_information_ad` gives the plain-AD control of a compressed-AD config: AD whose raw
context spans the decoder's episodes plus the compressed ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from agents.ad import (
    ADConfig,
    Block,
    CausalTransformer,
    EpisodeContext,
    GridHistorySpec,
    KVCache,
    TokenEmbedding,
    UpdateCounter,
    adam_step,
    check_decoder_ranges,
    check_transformer_ranges,
    previous_steps,
    sample_actions,
)
from encoders.freezing import FrozenParts
from training.checkpoint import load_checkpoint, load_model_state
from training.contracts import BCData
from training.optim import build_optimizer
from training.ranges import at_least, positive

SHARED_PREFIXES = ("embed.", "embed_ln.", "encoder.")


@dataclass(frozen=True)
class CompressedADPretrainConfig:
    """Stage 1: pretrain the context encoder by reconstruction."""

    compressed_episodes: int = 4
    """Episodes per compressed chunk; d is drawn from 1..this x compression_depth per
    sample."""
    compression_depth: int = 1
    """Chunks folded in sequence, each from the latents of the one before (the gradient
    stops at chunk boundaries); set it as in stage 2."""
    n_latent: int = 16
    """Latent tokens the encoder keeps."""
    d_model: int = 64
    """Embedding width (must match stage 2)."""
    n_head: int = 4
    """Attention heads (must match stage 2)."""
    encoder_layers: int = 2
    """Encoder blocks (must match stage 2)."""
    recon_layers: int = 2
    """Blocks of the reconstruction decoder (dropped after stage 1)."""
    dropout: float = 0.1
    """Dropout on embeddings, attention outputs and MLP outputs."""
    attention_dropout: float = 0.0
    """Dropout on attention weights."""
    lr: float = 3e-4
    """Adam learning rate."""
    lr_decay_steps: int = 0
    """Cosine-decay the learning rate to 0 over this many updates (0: constant)."""
    weight_decay: float = 0.0
    """Adam weight decay."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this (0: no clipping)."""

    def __post_init__(self) -> None:
        check_transformer_ranges(self)
        for name in ("compressed_episodes", "compression_depth", "n_latent", "encoder_layers",
                     "recon_layers"):
            at_least(f"agent.{name}", getattr(self, name), 1)

    @property
    def context_episodes(self) -> int:
        """Stage 1 needs no decoder context: windows are the compressible episodes + one."""
        return 0

    @property
    def prefix_episodes(self) -> int:
        """Most episodes folded into the latents: compressed_episodes x compression_depth."""
        return self.compressed_episodes * self.compression_depth


@dataclass(frozen=True)
class CompressedADConfig:
    """Stage 2: AD decoder over [latents; recent episodes], encoder from stage 1."""

    encoder_checkpoint: str = ""
    """Stage-1 checkpoint (checkpoints/last.pt of a compressed_ad_pretrain run); "" trains
    the encoder from scratch with the decoder."""
    freeze_encoder: bool = False
    """Freeze the encoder and its input embedding + LayerNorm loaded from the checkpoint
    (the decoder's own embedding trains either way)."""
    context_episodes: int = 4
    """Complete episodes before the current one that the decoder sees raw."""
    compressed_episodes: int = 4
    """Older episodes folded into the latents (per chunk when compression_depth > 1)."""
    compression_depth: int = 1
    """Chunks of compressed_episodes folded in sequence, each from the latents of the one
    before (the gradient stops at chunk boundaries): the latents reach back
    compressed_episodes x compression_depth episodes. 1: one chunk, full gradient."""
    n_latent: int = 16
    """Latent tokens the encoder keeps."""
    d_model: int = 64
    """Embedding width."""
    n_layer: int = 4
    """Decoder blocks."""
    n_head: int = 4
    """Attention heads."""
    encoder_layers: int = 2
    """Encoder blocks."""
    dropout: float = 0.1
    """Dropout on embeddings, attention outputs and MLP outputs."""
    attention_dropout: float = 0.0
    """Dropout on attention weights."""
    lr: float = 3e-4
    """Adam learning rate of the decoder and head."""
    encoder_lr: float = 3e-4
    """Learning rate of the encoder and its input embedding when fine-tuned."""
    lr_decay_steps: int = 0
    """Cosine-decay the learning rates to 0 over this many updates (0: constant)."""
    weight_decay: float = 0.0
    """Adam weight decay."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this (0: no clipping)."""
    temperature: float = 1.0
    """Sampling temperature of actions in context (0: greedy)."""

    def __post_init__(self) -> None:
        check_transformer_ranges(self)
        check_decoder_ranges(self.n_layer, self.temperature)
        at_least("agent.compressed_episodes", self.compressed_episodes, 0)
        for name in ("compression_depth", "n_latent", "encoder_layers"):
            at_least(f"agent.{name}", getattr(self, name), 1)
        positive("agent.encoder_lr", self.encoder_lr)

    @property
    def prefix_episodes(self) -> int:
        """Most episodes folded into the latents: compressed_episodes x compression_depth."""
        return self.compressed_episodes * self.compression_depth


def same_information_ad(cfg: CompressedADConfig) -> ADConfig:
    """The plain-AD control of a compressed-AD config: the same decoder and optimiser,
    with a raw context of the decoder's episodes plus the compressed ones (nothing
    compressed), so AD gets the same raw information as compressed AD."""
    return ADConfig(
        context_episodes=cfg.context_episodes + cfg.prefix_episodes,
        d_model=cfg.d_model, n_layer=cfg.n_layer, n_head=cfg.n_head, dropout=cfg.dropout,
        attention_dropout=cfg.attention_dropout, lr=cfg.lr, lr_decay_steps=cfg.lr_decay_steps,
        weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip, temperature=cfg.temperature,
    )


def same_information_ad_flags(cfg: CompressedADConfig) -> list[str]:
    """`same_information_ad` as train_bc.py flags: --agent=ad and every AD setting."""
    control = same_information_ad(cfg)
    return ["--agent=ad", *(f"--agent.{f.name}={getattr(control, f.name)}"
                            for f in dataclasses.fields(control))]


class ContextEncoder(nn.Module):
    """Folds one episode of transition tokens into the latents: z_k = f(z_{k-1}, episode)."""

    def __init__(self, d_model: int, n_head: int, n_layer: int, n_latent: int, horizon: int,
                 dropout: float, attention_dropout: float) -> None:
        super().__init__()
        self.n_latent = n_latent
        self.latent_init = nn.Parameter(torch.randn(n_latent, d_model) * 0.02)
        self.latent_pos = nn.Parameter(torch.randn(n_latent, d_model) * 0.02)
        self.step_pos = nn.Parameter(torch.randn(horizon, d_model) * 0.02)
        self.blocks = nn.ModuleList(
            Block(d_model, n_head, dropout, causal=False, attention_dropout=attention_dropout)
            for _ in range(n_layer)
        )
        self.ln_f = nn.LayerNorm(d_model)

    def initial(self, batch: int) -> torch.Tensor:
        """z_0 for a batch: B x n_latent x d."""
        return self.latent_init.expand(batch, -1, -1)

    def forward(self, z: torch.Tensor, episode: torch.Tensor) -> torch.Tensor:
        """z: B x n x d, episode: B x H x d embedded transitions -> new z."""
        x = torch.cat([z + self.latent_pos, episode + self.step_pos], 1)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x[:, : self.n_latent])


class _SharedContext(nn.Module):
    """The encoder and its input embedding + LayerNorm: the part stage 1 trains and stage 2
    loads (shared between the stages, not with the stage-2 decoder)."""

    def _build_shared(self, cfg, spec: GridHistorySpec) -> None:
        if cfg.d_model % cfg.n_head:
            raise ValueError(f"d_model {cfg.d_model} is not divisible by n_head {cfg.n_head}")
        self.horizon = spec.horizon
        self.num_actions = spec.num_actions
        self.grid_size = spec.grid_size
        self.chunk_episodes = cfg.compressed_episodes
        self.compression_depth = cfg.compression_depth
        self.embed = TokenEmbedding(self.grid_size, self.num_actions, cfg.d_model)
        self.embed_ln = nn.LayerNorm(cfg.d_model)
        self.encoder = ContextEncoder(cfg.d_model, cfg.n_head, cfg.encoder_layers, cfg.n_latent,
                                      self.horizon, cfg.dropout, cfg.attention_dropout)

    def shared_modules(self) -> list[nn.Module]:
        """The encoder and its input embedding + LayerNorm (the "backbone")."""
        return [self.encoder, self.embed, self.embed_ln]

    def prepare(self, data: BCData) -> BCData:
        """The windows as they are: nothing to precompute."""
        return data

    def embed_transitions(self, obs: torch.Tensor, actions: torch.Tensor,
                          rewards: torch.Tensor) -> torch.Tensor:
        """Transition tokens embed(obs_t, a_t, r_t) -> ... x d."""
        return self.embed_ln(self.embed(obs, actions, rewards))

    def compress(self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                 depth: torch.Tensor | int) -> torch.Tensor:
        """Fold the last `depth` of P episodes (B x P*H ...) into latents, oldest first.

        depth is per sample (B, on the device) in training, one int in context. With
        compression_depth > 1 the episodes before the newest chunk (the last
        `compressed_episodes`) are folded without gradient: their latents start the newest
        chunk's compression as a constant.
        """
        episodes = obs.shape[1] // self.horizon
        z = self.encoder.initial(obs.shape[0])
        first = episodes - depth if isinstance(depth, int) else 0
        cut = first
        if self.compression_depth > 1:
            cut = max(first, episodes - self.chunk_episodes)
        if cut > first:
            with torch.no_grad():
                z = self._fold(z, obs, actions, rewards, depth, first, cut)
        return self._fold(z, obs, actions, rewards, depth, cut, episodes)

    def _fold(self, z: torch.Tensor, obs: torch.Tensor, actions: torch.Tensor,
              rewards: torch.Tensor, depth: torch.Tensor | int, start: int,
              stop: int) -> torch.Tensor:
        """Fold episodes start..stop-1 of the P in obs into z (those within `depth`)."""
        if stop <= start:
            return z
        b, h = obs.shape[0], self.horizon
        steps = slice(start * h, stop * h)
        tokens = self.embed_transitions(obs[:, steps], actions[:, steps], rewards[:, steps])
        tokens = tokens.view(b, stop - start, h, -1)
        episodes = obs.shape[1] // h
        for k in range(start, stop):
            if isinstance(depth, int):  # start >= P - depth: every episode is real
                z = self.encoder(z, tokens[:, k - start])
            else:
                active = (k >= episodes - depth)[:, None, None]
                z = torch.where(active, self.encoder(z, tokens[:, k - start]), z)
        return z


def _draw_depth(high: torch.Tensor, low: int) -> torch.Tensor:
    """Uniform integers in [low, high] per sample, drawn on the device."""
    span = (high - low + 1).clamp_min(1)
    return low + (torch.rand(high.shape, device=high.device) * span).long().clamp(max=span - 1)


class CompressedADPretrainAgent(_SharedContext):
    """Stage 1: encoder + shared embedding trained to rebuild compressed episodes."""

    def __init__(self, cfg: CompressedADPretrainConfig, spec: GridHistorySpec,
                 device: torch.device) -> None:
        super().__init__()
        if cfg.compressed_episodes < 1:
            raise ValueError("compressed_episodes must be at least 1 to pretrain an encoder")
        self.cfg = cfg
        self.device = torch.device(device)
        self._build_shared(cfg, spec)
        d = cfg.d_model
        self.age = nn.Embedding(cfg.prefix_episodes, d)
        self.query_step = nn.Parameter(torch.randn(self.horizon, d) * 0.02)
        self.recon = nn.ModuleList(
            Block(d, cfg.n_head, cfg.dropout, causal=False,
                  attention_dropout=cfg.attention_dropout)
            for _ in range(cfg.recon_layers)
        )
        self.recon_ln = nn.LayerNorm(d)
        self.heads = nn.ModuleDict({
            "x": nn.Linear(d, self.grid_size),
            "y": nn.Linear(d, self.grid_size),
            "action": nn.Linear(d, self.num_actions),
            "reward": nn.Linear(d, 2),
        })
        self.updates = UpdateCounter()
        self.to(self.device)
        self.optimizer = build_optimizer(self, backbone_lr=cfg.lr, head_lr=cfg.lr,
                                         weight_decay=cfg.weight_decay,
                                         backbone_modules=self.shared_modules())

    def components(self) -> dict[str, nn.Module]:
        """Parts for the parameter report."""
        return {"encoder": self.encoder,
                "encoder_embedding": nn.ModuleList([self.embed, self.embed_ln]),
                "reconstruction_decoder": nn.ModuleList([self.age, self.recon, self.recon_ln,
                                                         self.heads])}

    def reconstruct(self, z: torch.Tensor, age: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every field of the episode of the given age (B): B x H x classes."""
        queries = self.age(age)[:, None, :] + self.query_step
        x = torch.cat([z, queries], 1)
        for block in self.recon:
            x = block(x)
        x = self.recon_ln(x[:, z.shape[1]:])
        return {name: head(x) for name, head in self.heads.items()}

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Cross-entropy of the rebuilt cells, actions and rewards of one compressed episode."""
        h, d_max = self.horizon, self.cfg.prefix_episodes
        n = d_max * h
        obs, actions = batch["obs"][:, :n], batch["actions"][:, :n]
        rewards = batch["rewards"][:, :n]
        available = batch["prefix_episodes"]
        valid = (available >= 1).float()
        depth = _draw_depth(available.clamp_min(1), 1)
        age = _draw_depth(depth - 1, 0)
        z = self.compress(obs, actions, rewards, depth)
        # The losses in fp32 in a bf16 run.
        logits = {name: value.float() for name, value in self.reconstruct(z, age).items()}
        # Episode of that age among the D: the newest is the last one.
        index = (d_max - 1 - age)[:, None] * h + torch.arange(h, device=obs.device)
        target = {
            "x": obs[..., 0].gather(1, index),
            "y": obs[..., 1].gather(1, index),
            "action": actions.gather(1, index),
            "reward": (rewards.gather(1, index) > 0.5).long(),
        }
        weight = valid[:, None].expand(-1, h)
        total = weight.sum().clamp_min(1.0)
        loss = torch.zeros((), device=obs.device)
        correct = {}
        for name, lg in logits.items():
            ce = F.cross_entropy(lg.flatten(0, 1), target[name].flatten(), reduction="none")
            loss = loss + (ce * weight.flatten()).sum() / total
            correct[name] = (lg.argmax(-1) == target[name]).float()
        info = {
            "train/recon_loss": loss.detach(),
            "train/recon_cell_accuracy": ((correct["x"] * correct["y"]) * weight).sum() / total,
            "train/recon_action_accuracy": (correct["action"] * weight).sum() / total,
            "train/recon_reward_accuracy": (correct["reward"] * weight).sum() / total,
            "train/recon_depth": (depth.float() * valid).sum() / valid.sum().clamp_min(1.0),
        }
        return loss, info

    def update(self, batch: dict[str, torch.Tensor], loss_fn=None) -> dict:
        """One Adam step of the reconstruction objective (`loss_fn`: see ad.adam_step)."""
        return adam_step(self, batch, loss_fn or self.loss, self.cfg)


class CompressedADAgent(_SharedContext):
    """Stage 2: latents of older episodes + recent raw episodes -> the learner's actions."""

    def __init__(self, cfg: CompressedADConfig, spec: GridHistorySpec,
                 device: torch.device) -> None:
        super().__init__()
        self.cfg = cfg
        self.device = torch.device(device)
        self._build_shared(cfg, spec)
        self.window = (cfg.context_episodes + 1) * self.horizon
        # The decoder's own input embedding: its tokens hold the previous step, not the
        # transition the encoder's embedding was pretrained on, and it trains when the
        # encoder is frozen.
        self.decoder_embed = TokenEmbedding(self.grid_size, self.num_actions, cfg.d_model)
        self.decoder_embed_ln = nn.LayerNorm(cfg.d_model)
        self.decoder = CausalTransformer(cfg.d_model, cfg.n_layer, cfg.n_head, cfg.dropout,
                                         cfg.n_latent + self.window, cfg.attention_dropout)
        self.head = nn.Linear(cfg.d_model, self.num_actions)
        self.updates = UpdateCounter()
        self.to(self.device)
        if cfg.encoder_checkpoint:
            self.load_encoder(cfg.encoder_checkpoint)
        elif cfg.freeze_encoder:
            raise ValueError(
                "--agent.freeze_encoder=True needs --agent.encoder_checkpoint=PATH of a "
                "compressed_ad_pretrain run (freezing a random encoder trains nothing useful)"
            )
        self.frozen_parts = FrozenParts.freeze(
            self, self.shared_modules() if cfg.freeze_encoder else []
        )
        self.optimizer = build_optimizer(self, backbone_lr=cfg.encoder_lr, head_lr=cfg.lr,
                                         weight_decay=cfg.weight_decay,
                                         backbone_modules=self.shared_modules())
        self._rollout: dict | None = None

    def load_encoder(self, path: str | Path) -> None:
        """Copy the encoder, embed and embed_ln from a stage-1 (or stage-2) checkpoint."""
        state = load_checkpoint(path)["model"]
        shared = {k: v for k, v in state.items() if k.startswith(SHARED_PREFIXES)}
        if not any(k.startswith("encoder.") for k in shared):
            raise ValueError(
                f"{path} holds no compressed-AD encoder (make one with "
                f"train_bc.py --agent=compressed_ad_pretrain)"
            )
        load_model_state(nn.ModuleDict({"embed": self.embed, "embed_ln": self.embed_ln,
                                        "encoder": self.encoder}), shared, str(path))

    def train(self, mode: bool = True) -> CompressedADAgent:
        """Frozen encoder and embedding stay in eval mode (no dropout) whatever `mode` is."""
        super().train(mode)
        self.frozen_parts.keep_eval(self)
        return self

    def frozen_state_names(self) -> list[str]:
        """State-dict names of the frozen encoder and its embedding and LayerNorm tensors."""
        return self.frozen_parts.state_names(self)

    def components(self) -> dict[str, nn.Module]:
        """Parts for the parameter report."""
        return {"encoder": self.encoder,
                "encoder_embedding": nn.ModuleList([self.embed, self.embed_ln]),
                "decoder_embedding": nn.ModuleList([self.decoder_embed,
                                                   self.decoder_embed_ln]),
                "decoder": self.decoder, "head": self.head}

    def logits(self, z: torch.Tensor | None, obs: torch.Tensor, prev_action: torch.Tensor,
               prev_reward: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Action logits of the raw tokens; z (B x n x d) leads when starting a sequence."""
        x = self.decoder_embed_ln(self.decoder_embed(obs, prev_action, prev_reward))
        starts = cache is None or cache.length == 0
        if starts:
            x = torch.cat([z, x], 1)
        out = self.head(self.decoder(x, cache))
        return out[:, z.shape[1]:] if starts else out

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Cross-entropy of the learner's actions in the raw window, older episodes compressed."""
        n_prefix = self.cfg.prefix_episodes * self.horizon
        obs, actions, rewards = batch["obs"], batch["actions"], batch["rewards"]
        depth = _draw_depth(batch["prefix_episodes"], 0)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.freeze_encoder):
            z = self.compress(obs[:, :n_prefix], actions[:, :n_prefix], rewards[:, :n_prefix],
                              depth)
        raw_a, raw_r = actions[:, n_prefix:], rewards[:, n_prefix:]
        prev_a, prev_r = previous_steps(raw_a, raw_r, self.decoder_embed.none_action)
        logits = self.logits(z, obs[:, n_prefix:], prev_a, prev_r).float()  # fp32 loss
        loss = F.cross_entropy(logits.reshape(-1, self.num_actions), raw_a.reshape(-1))
        accuracy = (logits.argmax(-1) == raw_a).float().mean()
        return loss, {"train/loss": loss.detach(), "train/accuracy": accuracy,
                      "train/compressed_depth": depth.float().mean()}

    def update(self, batch: dict[str, torch.Tensor], loss_fn=None) -> dict:
        """One Adam step on a batch of history windows (`loss_fn`: see ad.adam_step)."""
        return adam_step(self, batch, loss_fn or self.loss, self.cfg)

    # ---- in-context rollouts

    @torch.no_grad()
    def reset_context(self, num_envs: int, *, generator: torch.Generator | None = None,
                      kv_cache: bool = True) -> None:
        """Start in-context rollouts for `num_envs` environments with an empty context."""
        self.eval()
        capacity = self.cfg.prefix_episodes + self.cfg.context_episodes + 1
        self._rollout = {
            "context": EpisodeContext(num_envs, self.horizon, capacity,
                                      self.decoder_embed.none_action, self.device),
            "cache": self.decoder.new_cache(num_envs, self.device) if kv_cache else None,
            "generator": generator,
        }

    def _latents_and_raw(self, ctx: EpisodeContext) -> tuple[torch.Tensor, int]:
        """Latents of the episodes left of the raw window, and where that window starts."""
        h = self.horizon
        episodes = -(-ctx.length // h)
        prefix = max(0, episodes - self.cfg.context_episodes - 1)
        n = prefix * h
        # A stored token holds the previous step: episode e's own actions sit one to the right.
        z = self.compress(ctx.obs[:, :n], ctx.prev_action[:, 1:n + 1],
                          ctx.prev_reward[:, 1:n + 1], prefix)
        return z, n

    @torch.no_grad()
    def next_logits(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Push one step into the context and return the logits for its action: N x A."""
        if self._rollout is None:
            raise RuntimeError("call reset_context(num_envs) before acting in context")
        ctx: EpisodeContext = self._rollout["context"]
        cache: KVCache | None = self._rollout["cache"]
        new_episode = ctx.length % self.horizon == 0
        dropped = ctx.push(obs["obs"], obs["prev_action"], obs["prev_reward"])
        # The raw window moved on by an episode: the latents and every cached key change.
        slid = new_episode and (dropped or ctx.length > self.window)
        none = self.decoder_embed.none_action
        if cache is None or slid or ctx.length == 1:
            z, start = self._latents_and_raw(ctx)
            if cache is not None:
                cache.length = 0
            return self.logits(z, *ctx.tokens(start, ctx.length, none), cache)[:, -1]
        i = ctx.length - 1
        token = (ctx.obs[:, i:i + 1], ctx.prev_action[:, i:i + 1], ctx.prev_reward[:, i:i + 1])
        return self.logits(None, *token, cache)[:, -1]

    @torch.no_grad()
    def act(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sample actions for the current step (same obs dict as ADAgent.act)."""
        return sample_actions(self.next_logits(obs), self.cfg.temperature,
                              self._rollout["generator"])
