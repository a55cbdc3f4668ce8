"""Why `torch.load(weights_only=True)` refused a file, in words a user can act on.

torch reports a file of random bytes and a file that carries pickled code alike, as an
UnpicklingError "Weights only load failed" (the random bytes are read as pickle opcodes
it does not support). `load_failure` tells them apart without running anything: it
disassembles the file's pickle stream with `pickletools` (which only reads opcodes) and
looks for the opcodes that import or call Python objects.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import zipfile
from pathlib import Path
from typing import Literal

# Opcodes that import a global or call/build an object: what makes a pickle run code.
_OBJECT_OPCODES = frozenset(
    {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "REDUCE", "BUILD",
     "EXT1", "EXT2", "EXT4"}
)
_SCAN_LIMIT = 64 << 20  # bytes of a file read to classify it (the pickles lead a file)

Failure = Literal["pickled_objects", "not_torch_file", "damaged"]


def load_failure(path: Path, err: Exception) -> tuple[Failure, str]:
    """(kind, one-line reason) for torch.load(path, weights_only=True) having raised err.

    pickled_objects: the file holds pickled Python objects (which could run code);
    not_torch_file: it is no pickle or torch zip at all (random bytes, text, empty);
    damaged: it starts like a torch file but cannot be read (truncated, corrupted).
    """
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
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
    return lines[0][:200] if lines else ""


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
            return objects, parsed_one, problem[:200]
        if end is None:
            return objects, parsed_one, f"at byte {pos}: the pickle never ends"
        objects = objects or bool(seen & _OBJECT_OPCODES)
        parsed_one = True
        pos += end + 1
    return objects, parsed_one, None
