"""Why `torch.load(weights_only=True)` refused a file, in words a user can act on; what
made `torch.save` fail.

torch reports a file of random bytes and a file that carries pickled code alike, as an
UnpicklingError "Weights only load failed" (the random bytes are read as pickle opcodes
it does not support). `load_failure` tells them apart without running anything: it
disassembles the file's pickle stream with `pickletools` (which only reads opcodes) and
looks for the opcodes that import or call Python objects.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import pickletools
import re
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Literal

import torch

# Opcodes that import a global or call/build an object: what makes a pickle run code.
_OBJECT_OPCODES = frozenset(
    {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "REDUCE", "BUILD",
     "EXT1", "EXT2", "EXT4"}
)
_SCAN_LIMIT = 64 << 20  # bytes of a file read to classify it (the pickles lead a file)

Failure = Literal["pickled_objects", "not_torch_file", "damaged"]


def load_tensors(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """torch.load(path, weights_only=True); a file it cannot read is one ValueError line.

    torch's own text goes on to suggest weights_only=False, i.e. running the file, and says
    the same of a file of random bytes as of one that carries code.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist" if not path.exists()
                                else f"{path} is not a file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(refusal(path, err)) from None


def refusal(path: Path, err: Exception) -> str:
    """The one line that refuses `path`, torch.load having raised err."""
    kind, reason = load_failure(path, err)
    if kind == "pickled_objects":
        reason = "it holds pickled Python objects, which could run code when loaded"
        return f"refusing to load {path}: not a tensors-only checkpoint ({reason})"
    if kind == "not_torch_file":
        return f"refusing to load {path}: it is not a torch checkpoint (unreadable: {reason})"
    return f"refusing to load {path}: it is damaged or truncated ({reason})"


def save_tensors(payload: Any, f: BinaryIO) -> None:
    """torch.save to an open file, whose write failures come out as the OSError they are: a
    full disk otherwise surfaces as torch's RuntimeError, which callers handling OSError
    (one line, nothing partial left) would miss. A file object, not a path: writing to a
    path, torch's writer does not leave the OSError in the chain."""
    try:
        torch.save(payload, f)
    except RuntimeError as err:
        cause = write_failure(err)
        if cause is None:
            raise
        raise OSError(cause.errno, cause.strerror, getattr(f, "name", None)) from err


def write_failure(err: RuntimeError) -> OSError | None:
    """The OSError behind a RuntimeError of torch.save, or None when there is none.

    Writing to a file object on a full disk, torch's zip writer raises OSError(ENOSPC),
    then, closing the archive on the way out, replaces it with a RuntimeError ("unexpected
    pos ..."); the OSError is left in its chain.
    """
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError):
            return OSError(seen.errno, seen.strerror or str(seen), seen.filename)
        seen = seen.__cause__ or seen.__context__
    if "No space left" in str(err):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return None


def load_failure(path: Path, err: Exception) -> tuple[Failure, str]:
    """(kind, one-line reason) for torch.load(path, weights_only=True) having raised err.

    pickled_objects: the file holds pickled Python objects (which could run code);
    not_torch_file: it is no pickle or torch zip at all (random bytes, text, empty);
    damaged: it starts like a torch file but cannot be read (truncated, corrupted).
    """
    reason = clip((str(err).strip().splitlines() or [type(err).__name__])[0])
    weights_only = isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in str(
        err
    )
    inner = _weights_only_reason(str(err)) if weights_only else ""
    if inner.startswith(("Unsupported global", "Unsupported class")):
        return "pickled_objects", inner
    try:
        with open(path, "rb") as f:
            head = f.read(_SCAN_LIMIT)
    except OSError as read_err:
        return "damaged", str(read_err)
    if not head:
        return "not_torch_file", "the file is empty"
    is_zip = head.startswith(b"PK\x03\x04")  # torch's zip format
    stream = _zip_pickle(head) if is_zip else head
    if stream is None:
        return "damaged", f"its zip archive cannot be read; {reason}"
    objects, parsed_one, problem = _scan_pickles(stream)
    if weights_only and objects:
        return "pickled_objects", inner or reason
    if not is_zip and not parsed_one:
        return "not_torch_file", problem or reason
    return "damaged", inner or reason


def _weights_only_reason(message: str) -> str:
    """The unpickler's own reason inside torch's 'Weights only load failed' text."""
    _, _, rest = message.partition("WeightsUnpickler error:")
    lines = [line.strip() for line in rest.splitlines() if line.strip()]
    return clip(lines[0]) if lines else ""


def clip(text: str, limit: int = 200) -> str:
    """`text` cut to whole sentences within `limit` characters, never mid-sentence.

    torch's messages run on ("... there is a high likelihood that your checkpoint file is
    corrupted. This can happen if ..."): a plain cut at `limit` left "... your checkpoint
    file is" in our one-line errors.
    """
    if len(text) <= limit:
        return text
    kept = ""
    for sentence in re.split(r"(?<=[.!?])\s+", text):
        if len(kept) + len(sentence) + 1 > limit:
            break
        kept = f"{kept} {sentence}".strip()
    if kept:
        return kept
    head = text[: limit - 4].rsplit(" ", 1)[0]  # one long sentence: cut at a word, say so
    return f"{head} ..."


def _zip_pickle(data: bytes) -> bytes | None:
    """The data.pkl member of a torch zip checkpoint (None when the zip cannot be read)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            return archive.read(names[0]) if names else None
    except (zipfile.BadZipFile, OSError, KeyError, EOFError, ValueError):
        return None


def _scan_pickles(data: bytes) -> tuple[bool, bool, str | None]:
    """(a complete pickle builds objects, one pickle parsed, why the stream stopped or None).

    A legacy torch file is several pickles in a row followed by raw tensor bytes, so the
    scan goes pickle by pickle and stops at the first thing that is not one.
    """
    objects, parsed_one, pos = False, False, 0
    while pos < len(data):
        seen, end = set(), None
        try:
            for opcode, _, at in pickletools.genops(io.BytesIO(data[pos:])):
                seen.add(opcode.name)
                if opcode.name == "STOP":
                    end = at
        except Exception as err:  # ValueError: unknown opcode, truncated argument, ...
            problem = f"at byte {pos}: {err}" if pos else str(err)
            return objects, parsed_one, clip(problem)
        if end is None:
            return objects, parsed_one, f"at byte {pos}: the pickle never ends"
        objects = objects or bool(seen & _OBJECT_OPCODES)
        parsed_one = True
        pos += end + 1
    return objects, parsed_one, None
