"""Check that a checkpoint's frozen tensors are still their source's.

    python -m training.verify_frozen run/checkpoints/last.pt --source imagenet
    python -m training.verify_frozen run/checkpoints/last.pt --source run/checkpoints/step_0.pt

The checkpoint records which tensors were frozen. With `--source imagenet` (or a
torchvision state-dict file) each frozen tensor of a ResNet body is compared with the
source body's tensor of the same name (use `--prefix` to pick one body when the model has
several); with another of our checkpoints, name for name.
Exit status 1 when any moved, or when there was nothing to check; 2 (one `error:` line)
when a file is missing or is not a tensors-only torch file (text, truncated, pickled code).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from encoders.torch_files import load_tensors
from training.checkpoint import load_checkpoint
from training.diagnostics import frozen_tensors_that_moved


def _source_state(source: str, arch: str) -> tuple[dict[str, torch.Tensor], bool]:
    """(state, is_body): a ResNet body state dict, or a whole model's state dict.

    A file that is no tensors-only torch file, or holds no state dict, is a ValueError (bad
    input, exit status 2), never taken for a body whose tensors all moved (exit status 1).
    """
    from encoders.weights import load_imagenet_state

    if source == "imagenet":
        return load_imagenet_state(arch), True
    state = load_tensors(Path(source))
    is_body = not (isinstance(state, dict) and isinstance(state.get("model"), dict))
    state = state if is_body else state["model"]
    tensors = state if isinstance(state, dict) else {}
    tensors = {k: v for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"--source {source} holds no state dict of tensors; give imagenet, a "
                         f"torchvision state-dict file or one of our checkpoints")
    return tensors, is_body


def _as_body_names(state: dict, frozen: list[str], body_state: dict) -> dict[str, torch.Tensor]:
    """Source tensors renamed to the checkpoint's names (prefix up to `backbone.`)."""
    mapped = {}
    for name in frozen:
        if ".backbone." not in f".{name}":
            continue
        body_key = name.split("backbone.", 1)[1] if "backbone." in name else name
        tensor = body_state.get(body_key)
        if tensor is None:
            continue
        if body_key == "conv1.weight" and tensor.shape[1] == 3 and state[name].shape[1] == 1:
            tensor = tensor.sum(dim=1, keepdim=True)  # the 1ch_conv adapter's init
        mapped[name] = tensor
    return mapped


class NothingChecked(Exception):
    """No frozen tensor was compared; the message says why (exit status 1, not a pass)."""


def verify(
    checkpoint: str, source: str, arch: str = "resnet18", prefix: str = ""
) -> tuple[list[str], int]:
    """(names of frozen tensors that differ from the source, how many were checked).

    Raises NothingChecked when there was nothing to compare, since "all 0 tensors are
    bit-identical" would pass a check that did not happen.
    """
    ckpt = load_checkpoint(checkpoint)
    state = ckpt["model"]
    recorded = list(ckpt.get("frozen", []))
    if not recorded:
        raise NothingChecked(
            f"{checkpoint} has no frozen tensors (a run with nothing frozen, e.g. "
            f"freeze_mode=none): nothing to verify"
        )
    frozen = [n for n in recorded if n.startswith(prefix)]
    if not frozen:
        roots = sorted({n.split(".")[0] + "." for n in recorded})
        raise NothingChecked(
            f"no frozen tensors of {checkpoint} start with --prefix {prefix!r}; its frozen "
            f"tensors start with {', '.join(roots)}"
        )
    src, is_body = _source_state(source, arch)
    if is_body:
        frozen = [n for n in frozen if "backbone." in n and not n.endswith("num_batches_tracked")]
        if not frozen:
            raise NothingChecked(
                f"none of the frozen tensors of {checkpoint} under {prefix!r} belong to a ResNet "
                f"body (backbone.), which --source {source} is; compare with a checkpoint instead"
            )
        src = _as_body_names(state, frozen, src)
    return frozen_tensors_that_moved(state, src, frozen), len(frozen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument(
        "--source", required=True, help="imagenet | a state-dict file | a checkpoint"
    )
    parser.add_argument(
        "--arch", default="resnet18", help="body architecture for --source imagenet"
    )
    parser.add_argument(
        "--prefix", default="", help="check only tensors under this prefix (e.g. actor.encoder.)"
    )
    args = parser.parse_args(argv)
    try:
        moved, checked = verify(args.checkpoint, args.source, args.arch, args.prefix)
    except NothingChecked as err:
        print(f"nothing verified: {err}")
        return 1
    if moved:
        print(f"{len(moved)} of {checked} frozen tensors moved, e.g.: " + ", ".join(moved[:5]))
        return 1
    print(f"all {checked} frozen tensors are bit-identical to {args.source}")
    return 0


if __name__ == "__main__":
    from training.cli import run_main

    run_main(lambda: sys.exit(main()))  # a refused or missing file: one line, exit 2
