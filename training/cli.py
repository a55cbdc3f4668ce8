"""The command-line convention shared by the entry scripts.

Configs are nested frozen dataclasses; tyro turns them into flags named by their path
(`--backbone.freeze_mode`, `--agent.freeze_encoder`) with `--help` from the field
docstrings. Flag conversion is off, so booleans are written the way users type them:
`--agent.freeze_encoder=True` / `=False` (tyro's default accepts only bare flags).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

import tyro

T = TypeVar("T")


def parse_config(
    config_class: type[T],
    args: Sequence[str] | None = None,
    description: str | None = None,
    default: T | None = None,
) -> T:
    """Parse `args` (default: sys.argv[1:]) into `config_class`."""
    kwargs = {} if default is None else {"default": default}
    return tyro.cli(
        config_class,
        args=args,
        description=description,
        use_underscores=True,
        config=(tyro.conf.FlagConversionOff,),
        **kwargs,
    )


def pop_flag(args: list[str], flag: str) -> tuple[str | None, list[str]]:
    """Take `--flag VALUE` or `--flag=VALUE` out of args (not `--flag.sub`); last one wins.

    Used for the choices that decide which config class the rest is parsed into
    (`train_bc.py --agent=ad --agent.n_layer=4`).
    """
    value, rest, i = None, [], 0
    while i < len(args):
        arg = args[i]
        if arg == flag:
            if i + 1 >= len(args):
                raise SystemExit(f"error: {flag} needs a value")
            value, i = args[i + 1], i + 2
            continue
        if arg.startswith(flag + "="):
            value = arg[len(flag) + 1 :]
        else:
            rest.append(arg)
        i += 1
    return value, rest


def run_main(main: Callable[[], object]) -> None:
    """Run an entry point; a user error ends it with one line and exit status 2.

    Set RLENC_TRACEBACK=1 to see the full traceback of such an error.
    """
    from encoders import ImageNetWeightsUnavailable
    from training.guards import NonFiniteGradient

    user_errors = (
        ValueError,
        FileNotFoundError,
        FileExistsError,
        ImageNetWeightsUnavailable,
        NonFiniteGradient,
    )
    try:
        main()
    except user_errors as err:
        if os.environ.get("RLENC_TRACEBACK"):
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
