"""The parameter report printed and logged at the start of every run."""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm


def _count(module: nn.Module) -> tuple[int, int]:
    params = list(module.parameters())
    total = sum(p.numel() for p in params)
    return total, sum(p.numel() for p in params if p.requires_grad)


def encoder_weight_sources(model: nn.Module) -> dict[str, str]:
    """Where each ResNetEncoder's weights came from, by module path (for the run config)."""
    from encoders import ResNetEncoder

    return {
        f"weights_source/{name or 'encoder'}": m.weights_source
        for name, m in model.named_modules()
        if isinstance(m, ResNetEncoder)
    }


def parameter_report(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    components: dict[str, nn.Module] | None = None,
) -> dict[str, float]:
    """Print total / trainable / frozen parameters per component and the optimizer's groups.

    Returns the same numbers as `params/...` metrics. Components may share modules (a
    shared encoder); each row counts its own parameters, the total counts each once.
    """
    total, trainable = _count(model)
    rows = [("model", total, trainable)]
    for name, module in (components or {}).items():
        rows.append((name, *_count(module)))
    lines = [f"{'component':<28}{'total':>14}{'trainable':>14}{'frozen':>14}"]
    metrics: dict[str, float] = {}
    for name, tot, tr in rows:
        lines.append(f"{name:<28}{tot:>14,}{tr:>14,}{tot - tr:>14,}")
        prefix = "params" if name == "model" else f"params/{name}"
        metrics[f"{prefix}/total"] = tot
        metrics[f"{prefix}/trainable"] = tr
        metrics[f"{prefix}/frozen"] = tot - tr
    if optimizer is not None:
        lines.append(f"optimizer {type(optimizer).__name__}:")
        in_optimizer = 0
        for group in optimizer.param_groups:
            name = group.get("name", "group")
            count = sum(p.numel() for p in group["params"])
            in_optimizer += count
            lines.append(f"  group {name:<20}{count:>14,} params  lr {group['lr']:.3g}")
            metrics[f"params/optimizer/{name}"] = count
            metrics[f"params/optimizer/{name}_lr"] = group["lr"]
        if in_optimizer != trainable:
            # A trainable parameter outside the optimizer never learns: say so loudly.
            lines.append(
                f"  WARNING: {trainable - in_optimizer:,} trainable parameters are in no group"
            )
    for key, source in encoder_weight_sources(model).items():
        lines.append(f"{key}: {source}")
    tqdm.write("\n".join(lines))
    return metrics
