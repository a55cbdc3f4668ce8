"""fbc's frozen-feature cache on disk: built once per dataset and frozen part, then reused.

Embedding every frame (9 crops each on Lift) takes minutes on a CPU, and the result depends
only on the inputs below, so FBCAgent.prepare keeps it in a file and later runs load it.

Where: beside the dataset file, as `<dataset file name>.frozen-<key>.pt`. The default Lift
dataset is generated in train_bc's --cache_dir (~/.cache/rlenc), so its caches live there
too; a dataset elsewhere gets them in its own directory (where they can be found and
deleted with it). A directory that cannot be written keeps the cache in memory only.

<key> hashes everything the cached values depend on: the dataset file's bytes (sha256),
which frames (filter key, demos, cameras, image shape), the frozen part of each camera's
body (its config, its input normalisation and a hash of its frozen tensors), the crop grid,
the stored dtype (bf16 in a bf16 run), the device type and torch's version. Any change
gives another file; files of other keys are left alone, never read.

To clear: delete the files, `rm <dataset dir>/<dataset file name>.frozen-*.pt`; the next
run that needs one builds it again. A damaged file is rebuilt with a one-line note. The
write is atomic (a temp file, then os.replace), so a stop leaves no partial file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from encoders.torch_files import save_tensors

FORMAT = 1
"""Bumped when what a file holds changes, so that older files are no longer read."""


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime are in the arguments only so that a file changed within one process is
    # hashed again; the training and held-out data of one file are hashed once.
    h = hashlib.sha256()
    with open(path, "rb") as f:  # in blocks (hashlib.file_digest needs Python 3.11)
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes: its identity across copies, which size + mtime are not."""
    stat = path.stat()
    return _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def tensors_sha256(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 of named tensors' names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # bf16 has no numpy dtype
    return h.hexdigest()


def key_text(key: dict[str, Any]) -> str:
    """The key as canonical JSON (what is hashed into the name and stored in the file)."""
    return json.dumps({"format": FORMAT, **key}, sort_keys=True)


def cache_path(dataset: Path, key: dict[str, Any]) -> Path:
    """Where the cache of `key` for this dataset file lives."""
    digest = hashlib.sha256(key_text(key).encode()).hexdigest()[:16]
    return dataset.with_name(f"{dataset.name}.frozen-{digest}.pt")


def load(
    path: Path,
    key: dict[str, Any],
    device: torch.device,
    cameras: Sequence[str],
    num_samples: int,
) -> dict[str, torch.Tensor] | None:
    """The cached features per camera, or None when there is no usable file (to build)."""
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
        if payload["key"] != key_text(key):
            raise ValueError("its key differs")  # a hash collision, or a hand-copied file
        features = payload["features"]
        if sorted(features) != sorted(cameras) or any(
            not isinstance(f, torch.Tensor) or len(f) != num_samples for f in features.values()
        ):
            raise ValueError("its tensors do not fit the data")
    # A damaged file fails in many ways (zip, pickle, EOF, missing keys); each one means
    # "build it again", never a crashed run. A stop (KeyboardInterrupt) still stops.
    except Exception as err:  # noqa: BLE001
        print(f"frozen-feature cache {path} is unreadable ({type(err).__name__}: {err}); "
              "rebuilding it", flush=True)
        return None
    print(f"frozen-feature cache loaded from {path}", flush=True)
    return features


def save(path: Path, key: dict[str, Any], features: dict[str, torch.Tensor]) -> None:
    """Write the cache atomically; a directory that cannot be written only costs a note."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        # torch.save keeps each tensor's strides, so channels-last maps load channels-last.
        with open(tmp, "wb") as f:
            save_tensors({"key": key_text(key), "features": features}, f)
        os.replace(tmp, path)
    except OSError as err:
        print(f"could not write the frozen-feature cache {path} ({err}); it is held in "
              "memory only", flush=True)
        return
    finally:
        tmp.unlink(missing_ok=True)
    mb = path.stat().st_size / 2**20
    print(f"frozen-feature cache written to {path} ({mb:.0f} MB); delete it to rebuild",
          flush=True)
