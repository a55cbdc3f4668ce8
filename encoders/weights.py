"""Where a ResNet body's initial weights come from: ImageNet, random, or a file.

ImageNet weights go through torchvision's weights API, which reads the torch hub cache
(`$TORCH_HOME/hub/checkpoints/`) and downloads only when the file is not there. These
machines have no network, so a missing file must produce an error that says which file
was expected and what else the user can do.
"""

from __future__ import annotations

import contextlib
import io
import socket
import warnings
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.hub
from torchvision import models

from encoders.torch_files import load_failure

_IMAGENET_WEIGHTS = {
    "resnet18": models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": models.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": models.ResNet50_Weights.IMAGENET1K_V2,
}


# The ImageNet files whose absence has been reported in this process.
_WARNED: set[Path] = set()

# urllib waits forever by default; behind a firewall that drops packets instead of refusing
# them, an offline run would hang at start instead of falling back or saying what is missing.
DOWNLOAD_TIMEOUT_S = 30.0


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    """Bound every socket operation (connect, each read) of the download to `seconds`."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


class ImageNetWeightsUnavailable(RuntimeError):
    """The ImageNet file is neither cached nor downloadable."""


def imagenet_cache_file(arch: str) -> Path:
    """The file torchvision looks for in the torch hub cache for this architecture."""
    url = _IMAGENET_WEIGHTS[arch].url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def load_imagenet_state(arch: str) -> dict[str, torch.Tensor]:
    """ImageNet weights through torchvision's API, or one clear error when unobtainable."""
    expected = imagenet_cache_file(arch)
    try:
        # weights_only: torch.hub's default unpickles the cached file, which runs any code in it.
        # torch.hub writes "Downloading: ..." to stderr before it tries; offline that line only
        # precedes our own message, so it is kept off the console.
        with contextlib.redirect_stderr(io.StringIO()), _socket_timeout(DOWNLOAD_TIMEOUT_S):
            return _IMAGENET_WEIGHTS[arch].get_state_dict(progress=False, weights_only=True)
    except Exception as err:  # URLError, socket errors, HTTP errors, truncated files, pickles
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        where = (
            f"The cached file {expected} cannot be read as tensors only ({type(err).__name__})"
            if expected.is_file()
            else f"They are not in the torch hub cache and could not be downloaded "
            f"({type(err).__name__}: {reason}). Expected file: {expected}"
        )
        raise ImageNetWeightsUnavailable(
            f"ImageNet weights for {arch} are unavailable. {where}. Remedies: "
            f"copy that file there (or set TORCH_HOME to a cache that has it), or use "
            f"weights=auto (random init with a warning), weights=random, or weights=PATH."
        ) from None


# Set while a resumed run builds its model (see weights_from_checkpoint).
_FROM_CHECKPOINT = [False]


@contextlib.contextmanager
def weights_from_checkpoint():
    """While a resumed run builds its model: the checkpoint it loads next holds every body's
    weights, so none are read (or downloaded) now; a missing ImageNet file or a moved
    weights file does not stop a run that no longer needs them."""
    _FROM_CHECKPOINT[0] = True
    try:
        yield
    finally:
        _FROM_CHECKPOINT[0] = False


def resolve_body_state(arch: str, weights: str) -> tuple[dict[str, torch.Tensor] | None, str]:
    """The state dict to load into the body (None = keep random init) and where it came from."""
    if _FROM_CHECKPOINT[0]:
        return None, "checkpoint"
    if weights == "random":
        return None, "random"
    if weights == "imagenet":
        return load_imagenet_state(arch), "imagenet"
    if weights == "auto":
        try:
            return load_imagenet_state(arch), "imagenet"
        except ImageNetWeightsUnavailable as err:
            expected = imagenet_cache_file(arch)
            if expected not in _WARNED:  # once per run, not once per camera or critic
                _WARNED.add(expected)
                message = f"weights=auto fell back to RANDOM init for {arch}: {err}"
                warnings.warn(message, stacklevel=3)
                print(f"\n!!! WARNING: {message}\n", flush=True)
            return None, f"random (imagenet unavailable; expected {expected})"
    return load_state_from_path(weights), f"file:{weights}"


def load_state_from_path(spec: str) -> dict[str, torch.Tensor]:
    """A body state dict from a file: a torchvision state dict or one of our checkpoints.

    `PATH::PREFIX` picks the body whose keys start with PREFIX (for a checkpoint that holds
    several encoders, e.g. `run/ckpt.pt::actor.encoder.backbone.`).
    """
    path_str, _, prefix = spec.partition("::")
    path = Path(path_str)
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file {path} does not exist; give weights=auto|imagenet|random or a path "
            f"to a state dict or checkpoint"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        kind, reason = load_failure(path, err)
        if kind == "not_torch_file":
            raise ValueError(
                f"cannot load weights from {path}: it is not a torch checkpoint (unreadable: "
                f"{reason}); weights=PATH takes a state dict or one of our checkpoints"
            ) from None
        if kind == "damaged":
            raise ValueError(
                f"cannot load weights from {path}: it is damaged or truncated ({reason})"
            ) from None
        raise ValueError(
            f"cannot load weights from {path} with weights_only=True: it holds pickled Python "
            f"objects, which could run code when loaded; it must hold tensors only (a state "
            f"dict or one of our checkpoints)"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # one of our checkpoints
    if not isinstance(state, dict):
        raise ValueError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    return _select_body(state, prefix, path)


def _select_body(state: dict, prefix: str, path: Path) -> dict[str, torch.Tensor]:
    """Strip the prefix that leads to a ResNet body's `conv1.weight`."""
    if not prefix:
        prefixes = sorted({k[: -len("conv1.weight")] for k in state if k.endswith("conv1.weight")})
        # A body's own blocks also have conv1 weights (layer1.0.conv1.weight): keep the stem's.
        prefixes = [p for p in prefixes if not p.rstrip(".").split(".")[-1].isdigit()]
        if len(prefixes) != 1:
            found = ", ".join(repr(p) for p in prefixes) or "none"
            raise ValueError(
                f"{path} holds {len(prefixes)} ResNet bodies (prefixes: {found}); pick one "
                f"with weights=PATH::PREFIX"
            )
        prefix = prefixes[0]
    body = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if "conv1.weight" not in body:
        raise ValueError(f"{path} has no ResNet body under prefix {prefix!r}")
    return {k: v for k, v in body.items() if not k.startswith("fc.")}
