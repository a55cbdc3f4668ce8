"""Hybrid actor-critic: ResNet encoders, a categorical kind and squashed-Gaussian parameters.

An action is a discrete kind k (spawn / delete / hold) and a vector of continuous
parameters a in a box [low, high]. Each parameter is a tanh-squashed Gaussian:
u ~ N(mean, std), a = low + (high - low) (tanh(u) + 1) / 2, so by the change of variables

    log p(a_j) = log N(u_j; mean_j, std_j) - log(1 - tanh(u_j)^2) - log((high_j - low_j) / 2).

The log-probability of a hybrid action counts the kind and *only the parameters that
kind uses* (`PARAMS_USED`, e.g. hold uses none, delete only the direction):

    log pi(k, a) = log softmax(logits)_k + sum_j used[k, j] log p(a_j).

Parameters a kind ignores do not affect the environment, so counting them would add
noise to the PPO ratio with no effect on the return. The entropy bonus is

    H(kind) + sum_k sg(p_k) sum_j used[k, j] H_j,   H_j estimated as -log p(a_j)

of a fresh reparameterised sample a_j = squash(mean_j + std_j eps) (as SAC does): the
squashed parameter's own entropy, which has no closed form. The pre-squash Gaussian's
entropy, used before, grows with std without bound while the squashed one peaks near
log std = 0 and falls beyond (-7.1 at log std 2), so it rewarded mass piled at the
bounds. sg() stops the gradient: the parameters' entropy must not push the kind logits
towards the kind with the most parameters.

The rollout stores u (pre-squash) next to the action, so log-probs are recomputed
exactly (no atanh of a saturated value). Actor and critic each get a ResNetEncoder
(or share one). Both start from the same weights (the critic's is a copy of the
actor's, whatever the source, as two ImageNet loads would be); when both are frozen
they stay equal forever, so only one is run.

Stacked frames (`frames` > 1, the observation B x (frames*C) x H x W, oldest first) are
fused late: each frame goes through the same encoder on its own, as (B*frames) x C x H x W,
and the heads see the frames' features side by side, B x (frames*D). A pretrained body
thus sees the images it was made for, and the frozen prefix is one map per frame
(B x frames x ...). The entry script passes `frames` (it knows the environment); it is not
guessed from the channel count, which could not tell 3 stacked grey frames from one RGB
image. frames = 1 is the single-frame network, computation and parameter shapes alike.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from encoders import EncoderConfig, ResNetEncoder
from training.precision import fp32_region
from training.ranges import at_least, finite

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class HybridActorCriticConfig:
    """The heads of the hybrid actor-critic."""

    hidden_dim: int = 256
    """Width of the actor and critic MLPs on top of the encoder features."""
    share_encoder: bool = False
    """One encoder for actor and critic (trained by both losses) instead of one each."""
    spawn_bias_init: float = 1.0
    """Initial logit bias of the spawn kind (the others start at 0)."""
    log_std_init: float = -0.5
    """Initial log std of the pre-squash Gaussians (state-independent, learned)."""

    def __post_init__(self) -> None:
        at_least("agent.hidden_dim", self.hidden_dim, 1)
        finite("agent.spawn_bias_init", self.spawn_bias_init)
        finite("agent.log_std_init", self.log_std_init)


@dataclass(frozen=True)
class HybridActionSpec:
    """The action space: discrete kinds, each using some parameters of one box.

    The entry script builds it from the environment (agents know no environment).
    """

    param_low: tuple[float, ...]
    """Lower bound of each continuous parameter."""
    param_high: tuple[float, ...]
    """Upper bound of each continuous parameter."""
    params_used: tuple[tuple[bool, ...], ...]
    """kinds x parameters: which parameters each kind uses (the rest do not count)."""
    favoured_kind: int = 0
    """The kind whose logit starts at spawn_bias_init (Durotaxis: spawn)."""


def layer_init(layer: nn.Linear, std: float = math.sqrt(2), bias: float = 0.0) -> nn.Linear:
    """Orthogonal weights with gain std and constant bias (CleanRL's init)."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


def squash(u: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Pre-squash Gaussian sample -> parameter in [low, high]."""
    return low + (high - low) * (torch.tanh(u) + 1.0) * 0.5


def squashed_log_prob(
    u: torch.Tensor,
    mean: torch.Tensor,
    log_std: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
) -> torch.Tensor:
    """Per-dimension log density of squash(u) (change of variables, numerically stable)."""
    gauss = -0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - _HALF_LOG_2PI
    # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)): finite even where tanh(u) == 1.
    log_dtanh = 2.0 * (math.log(2.0) - u - nn.functional.softplus(-2.0 * u))
    return gauss - log_dtanh - torch.log((high - low) * 0.5)


class HybridDistribution:
    """The policy at a batch of states: kind logits and per-parameter Gaussians (pre-squash)."""

    def __init__(
        self,
        logits: torch.Tensor,
        mean: torch.Tensor,
        log_std: torch.Tensor,
        low: torch.Tensor,
        high: torch.Tensor,
        used: torch.Tensor,
    ) -> None:
        self.logits = logits - logits.logsumexp(dim=-1, keepdim=True)
        self.mean, self.log_std = mean, log_std.expand_as(mean)
        self.low, self.high, self.used = low, high, used

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(kind, u): a kind and pre-squash parameters."""
        kind = torch.multinomial(self.logits.exp(), 1).squeeze(-1)
        u = self.mean + self.log_std.exp() * torch.randn_like(self.mean)
        return kind, u

    def mode(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The deterministic action: most likely kind, Gaussian means."""
        return self.logits.argmax(dim=-1), self.mean

    def params(self, u: torch.Tensor) -> torch.Tensor:
        """Environment parameters for pre-squash u."""
        return squash(u, self.low, self.high)

    def log_prob(self, kind: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """log pi(kind, squash(u)): kind log-prob + log-probs of the parameters it uses."""
        kind_lp = self.logits.gather(-1, kind.long().unsqueeze(-1)).squeeze(-1)
        param_lp = squashed_log_prob(u, self.mean, self.log_std, self.low, self.high)
        return kind_lp + (param_lp * self.used[kind.long()]).sum(-1)

    def param_entropy(self) -> torch.Tensor:
        """B x P one-sample estimates of each squashed parameter's entropy, -log p(a).

        Reparameterised, so the estimate's gradient reaches mean and log std; unbiased
        for the entropy (its mean over samples is the entropy).
        """
        u = self.mean + self.log_std.exp() * torch.randn_like(self.mean)
        return -squashed_log_prob(u, self.mean, self.log_std, self.low, self.high)

    def entropy(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(kind entropy, expected entropy of the squashed parameters the kind uses)."""
        probs = self.logits.exp()
        kind_h = -(probs * self.logits).sum(-1)
        per_kind = self.param_entropy() @ self.used.T  # B x K: of the parameters kind k uses
        return kind_h, (probs.detach() * per_kind).sum(-1)


class HybridActorCritic(nn.Module):
    """Actor and critic on ResNet features; see the module docstring for the log-prob."""

    def __init__(
        self,
        encoder_cfg: EncoderConfig,
        obs_shape: tuple[int, int, int],
        cfg: HybridActorCriticConfig = HybridActorCriticConfig(),
        *,
        action: HybridActionSpec,
        frames: int = 1,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        if frames < 1 or obs_shape[0] % frames:
            raise ValueError(
                f"observation has {obs_shape[0]} channels, not frames={frames} frames of equal "
                f"channels"
            )
        self.frames = frames
        in_channels = obs_shape[0] // frames
        self.actor_encoder = ResNetEncoder(encoder_cfg, in_channels)
        self.critic_encoder: ResNetEncoder | None = None
        if not cfg.share_encoder:
            # A copy, not a second load: same weights, buffers and source, loaded once.
            self.critic_encoder = copy.deepcopy(self.actor_encoder)
        dim, hidden = self.actor_encoder.out_dim * frames, cfg.hidden_dim
        num_kinds, num_params = len(action.params_used), len(action.param_low)

        self.actor_trunk = nn.Sequential(
            layer_init(nn.Linear(dim, hidden)), nn.Tanh(),
            layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
        )
        kind_bias = torch.zeros(num_kinds)
        kind_bias[action.favoured_kind] = cfg.spawn_bias_init
        self.kind_head = layer_init(nn.Linear(hidden, num_kinds), std=0.01)
        with torch.no_grad():
            self.kind_head.bias.copy_(kind_bias)
        self.mean_head = layer_init(nn.Linear(hidden, num_params), std=0.01)
        self.log_std = nn.Parameter(torch.full((num_params,), cfg.log_std_init))
        self.critic_head = nn.Sequential(
            layer_init(nn.Linear(dim, hidden)), nn.Tanh(),
            layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
            layer_init(nn.Linear(hidden, 1), std=1.0),
        )
        self.register_buffer("param_low", torch.tensor(action.param_low), persistent=False)
        self.register_buffer("param_high", torch.tensor(action.param_high), persistent=False)
        used = torch.tensor(action.params_used, dtype=torch.float32)
        self.register_buffer("params_used", used, persistent=False)
        # Decided once: what trains is fixed at construction, and act() asks every step.
        encoders = [self.actor_encoder] + ([self.critic_encoder] if self.critic_encoder else [])
        self._features_are_fixed = all(e.features_are_fixed for e in encoders)

    # ----- what is frozen, and what the rollout can cache ---------------------------------
    @property
    def features_are_fixed(self) -> bool:
        """True when no encoder parameter trains: rollout features equal the update's.

        (freeze_mode=all with a spatial-softmax pool still trains the pool: not fixed.)
        """
        return self._features_are_fixed

    @property
    def runs_one_encoder(self) -> bool:
        """Shared encoder, or two frozen copies of the same weights: run only the actor's."""
        return self.critic_encoder is None or self.features_are_fixed

    @property
    def caches_prefix(self) -> bool:
        """Whether a rollout's frozen-prefix output is worth keeping for the update.

        The critic's body starts as a copy of the actor's and its frozen part never moves,
        so one prefix serves both; the update then runs only the trainable suffixes.
        """
        return self.actor_encoder.caches_prefix

    def trainable_batch_norms(self) -> list[nn.modules.batchnorm._BatchNorm]:
        """The encoders' BatchNorm layers whose affine parameters train (frozen ones keep
        their statistics: FrozenParts)."""
        encoders = [self.actor_encoder] + ([self.critic_encoder] if self.critic_encoder else [])
        return [m for e in encoders for m in e.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)
                and m.weight is not None and m.weight.requires_grad]

    @torch.no_grad()
    def refresh_batch_norm(self, batch: dict[str, torch.Tensor], chunk: int = 256
                           ) -> list[nn.modules.batchnorm._BatchNorm]:
        """Re-estimate the trainable BatchNorm layers' running statistics from a rollout.

        The network runs in eval mode in both the rollout and the update, so that old and
        new log-probs come from one function; BatchNorm statistics therefore never move by
        themselves, and with a randomly initialised body they would stay 0 / 1. After each
        update, PPO calls this on the rollout it just used (its observations, or the
        frozen-prefix outputs the buffer kept), `chunk` samples per forward in train mode;
        each layer's statistics become those of everything it was given, as one pass over
        the whole rollout sets them (InputMoments), and hold until the next update. A
        cumulative average of the chunks' statistics (BatchNorm's momentum=None, as
        torch.optim.swa_utils.update_bn does) would miss the spread between the chunks'
        means, which the pool over ranks (train_ppo.pool_batch_norm_over_ranks) counts.
        Past the first trainable layer, a layer's input is normalised by the earlier
        layers with each chunk's own statistics (train mode), not the rollout's: close to
        one pass, not equal. Returns the layers refreshed.
        """
        layers = self.trainable_batch_norms()
        if not layers:
            return layers
        moments = [InputMoments() for _ in layers]
        hooks = [m.register_forward_pre_hook(s) for m, s in zip(layers, moments, strict=True)]
        for m in layers:
            m.reset_running_stats()  # num_batches_tracked then counts this refresh's chunks
            m.train()
        try:
            if "prefix" in batch:
                for part in batch["prefix"].split(chunk):
                    self.encode_from_prefix(part)
            else:
                for part in batch["obs"].split(chunk):
                    self.encode(part)
        finally:
            for hook in hooks:
                hook.remove()
            for m in layers:
                m.eval()
        for m, s in zip(layers, moments, strict=True):
            s.write_to(m)
        return layers

    def components(self) -> dict[str, nn.Module]:
        """Named parts for the parameter report."""
        parts: dict[str, nn.Module] = {"actor_encoder": self.actor_encoder}
        parts["actor_heads"] = nn.ModuleList([self.actor_trunk, self.kind_head, self.mean_head])
        if self.critic_encoder is not None:
            parts["critic_encoder"] = self.critic_encoder
        parts["critic_head"] = self.critic_head
        return parts

    # ----- forward pieces -----------------------------------------------------------------
    @staticmethod
    def _to_float(obs: torch.Tensor) -> torch.Tensor:
        return obs.float() / 255.0 if obs.dtype == torch.uint8 else obs.float()

    def encode(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(actor features, critic features) of uint8 or [0, 1] images."""
        return self.encode_from_prefix(self.encode_prefix(obs))

    def encode_prefix(self, obs: torch.Tensor) -> torch.Tensor:
        """What the encoders' frozen part computes (the same for actor and critic); with
        frames > 1 one prefix per frame, B x frames x (one frame's prefix)."""
        if self.frames == 1:
            return self.actor_encoder.frozen_prefix(self._to_float(obs))
        b, k = obs.shape[0], self.frames
        each = obs.reshape(b * k, obs.shape[1] // k, *obs.shape[2:])
        prefix = self.actor_encoder.frozen_prefix(self._to_float(each))
        return prefix.reshape(b, k, *prefix.shape[1:])

    def encode_from_prefix(self, prefix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(actor features, critic features) from encode_prefix's output."""
        actor = self._from_prefix(self.actor_encoder, prefix)
        if self.runs_one_encoder:
            return actor, actor
        return actor, self._from_prefix(self.critic_encoder, prefix)

    def _from_prefix(self, encoder: ResNetEncoder, prefix: torch.Tensor) -> torch.Tensor:
        """B x (frames*D) features: each frame's through `encoder`, oldest first."""
        if self.frames == 1:
            return encoder.from_prefix(prefix)
        return encoder.from_prefix(prefix.flatten(0, 1)).reshape(prefix.shape[0], -1)

    def distribution(self, actor_features: torch.Tensor) -> HybridDistribution:
        """The policy at these features, in fp32 also in a bf16 run: PPO's ratio is the exp
        of a difference of nearly equal log-probabilities, which bf16's 8 bits would swamp."""
        with fp32_region(actor_features.device):
            h = self.actor_trunk(actor_features.float())
            return HybridDistribution(
                self.kind_head(h), self.mean_head(h), self.log_std,
                self.param_low, self.param_high, self.params_used,
            )

    def value(self, critic_features: torch.Tensor) -> torch.Tensor:
        """State values, shape B, in fp32 also in a bf16 run (regressed onto returns)."""
        with fp32_region(critic_features.device):
            return self.critic_head(critic_features.float()).squeeze(-1)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> dict[str, torch.Tensor]:
        """Sample (or take the mode of) an action; returns what a rollout stores."""
        prefix = self.encode_prefix(obs)
        actor_f, critic_f = self.encode_from_prefix(prefix)
        dist = self.distribution(actor_f)
        kind, u = dist.mode() if deterministic else dist.sample()
        return {
            "kind": kind,
            "u": u,
            "params": dist.params(u),
            "log_prob": dist.log_prob(kind, u),
            "value": self.value(critic_f),
            "prefix": prefix,
            "actor_features": actor_f,
            "critic_features": critic_f,
        }


class InputMoments:
    """What a BatchNorm layer was given over several forwards (the chunks of a rollout),
    reduced to the statistics of all of it at once: a forward pre-hook.

    Per channel (over samples and positions) each forward leaves its element count n_c,
    mean m_c and variance v_c; together, with N = sum n_c,

        mean = sum n_c m_c / N,    var = sum n_c (v_c + (m_c - mean)^2) / (N - 1),

    the mean of the chunks' variances plus the variance of their means (weighted by size),
    in BatchNorm's convention for running_var: unbiased, N / (N - 1) times the variance.
    These are exactly the running statistics that one train-mode forward over all of it
    with momentum=None would leave.
    """

    def __init__(self) -> None:
        self.parts: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def __call__(self, layer: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].detach().float()
        var, mean = torch.var_mean(x, dim=[0, *range(2, x.dim())], correction=0)
        self.parts.append((x.numel() // x.shape[1], mean, var))

    def pooled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, unbiased variance) per channel over every element seen."""
        means = torch.stack([m for _, m, _ in self.parts])
        variances = torch.stack([v for _, _, v in self.parts])
        counts = torch.tensor([n for n, _, _ in self.parts], dtype=means.dtype,
                              device=means.device)
        total = counts.sum()
        weights = (counts / total).unsqueeze(1)
        mean = (weights * means).sum(0)
        spread = (weights * (variances + (means - mean) ** 2)).sum(0)
        return mean, spread * total / (total - 1).clamp(min=1)

    def write_to(self, layer: nn.modules.batchnorm._BatchNorm) -> None:
        """Set `layer`'s running statistics to the pooled ones (left as they are when the
        layer saw nothing)."""
        if not self.parts:
            return
        mean, var = self.pooled()
        layer.running_mean.copy_(mean)
        layer.running_var.copy_(var)
