"""The command-line convention shared by the entry scripts.

Configs are nested frozen dataclasses; tyro turns them into flags named by their path
(`--backbone.freeze_mode`, `--agent.freeze_encoder`) with `--help` from the field
docstrings. Flag conversion is off, so booleans are written the way users type them:
`--agent.freeze_encoder=True` / `=False` (tyro's default accepts only bare flags).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import io
import os
import re
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import tyro

T = TypeVar("T")


def parse_config(
    config_class: type[T],
    args: Sequence[str] | None = None,
    description: str | None = None,
    default: T | None = None,
) -> T:
    """Parse `args` (default: sys.argv[1:]) into `config_class`."""
    from training.ranges import ConfigError

    kwargs = {} if default is None else {"default": default}
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return tyro.cli(
                config_class,
                args=args,
                description=description,
                use_underscores=True,
                config=(tyro.conf.FlagConversionOff,),
                **kwargs,
            )
    except SystemExit as exit_:
        if exit_.code in (0, None):  # --help
            sys.stderr.write(captured.getvalue())
            raise
        message = one_line(captured.getvalue())
        if message.startswith("Unrecognized options:"):
            message = with_suggestions(message, known_flags(config_class, default))
        raise ConfigError(message) from None


def known_flags(config_class: type, default: Any = None) -> list[str]:
    """Every flag a config takes, as users type them without `--` (`ppo.gamma`, `seed`)."""
    from training.settings import flag_values

    if default is not None:
        return list(flag_values(default))
    flags: list[str] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            kind = hints[field.name]
            # The run settings are flags without a prefix (tyro.conf.OmitArgPrefixes).
            path = "" if field.name == "run" else f"{prefix}{field.name}."
            if dataclasses.is_dataclass(kind):
                walk(kind, path)
            else:
                flags.append(f"{prefix}{field.name}")

    walk(config_class, "")
    return flags


# Words users write for what the configs abbreviate.
_SYNONYMS = {"learning_rate": "lr", "rate": "lr", "num_epochs": "update_epochs",
             "epochs": "update_epochs", "steps": "total_timesteps"}


def close_flags(unknown: str, known: Sequence[str], n: int = 3) -> list[str]:
    """The known flags nearest an unknown one: by its whole path, and by its last word
    (`ppo.learning_rate` -> the `*_lr` flags)."""
    name = unknown.removeprefix("--").partition("=")[0]
    last = name.rpartition(".")[2]
    last = _SYNONYMS.get(last, last)
    by_path = difflib.get_close_matches(name, known, n=n, cutoff=0.75)
    by_word = [k for k in known if last in k.rpartition(".")[2].split("_")
               or difflib.SequenceMatcher(None, last, k.rpartition(".")[2]).ratio() >= 0.8]
    return list(dict.fromkeys([*by_path, *by_word]))[:n]


def with_suggestions(message: str, known: Sequence[str]) -> str:
    """tyro's "Unrecognized options: ..." with the nearest real flag of each option."""
    listed = re.split(r"[,\s]+", message.removeprefix("Unrecognized options:")
                      .removesuffix("(see --help)"))
    hints = []
    for option in listed:
        if option.startswith("--") and (near := close_flags(option, known)):
            hints.append(f"{option.partition('=')[0]}: did you mean "
                         f"{' or '.join('--' + k for k in near)}?")
    return message if not hints else f"{message.removesuffix(' (see --help)')}; " \
        f"{'; '.join(hints)} (see --help)"


def one_line(tyro_message: str) -> str:
    """tyro's framed error box as one line: its first paragraph, help pointers left out."""
    # Box-drawing characters (U+2500-U+257F) frame it on a terminal, dashes elsewhere.
    frame = {chr(c) for c in range(0x2500, 0x2580)} | {"|"}
    rows = []  # (text, is_rule)
    for raw in tyro_message.splitlines():
        text = "".join(ch for ch in raw if ch not in frame).strip()
        rule = set(text) <= {"-"} and raw.count("-") + raw.count("\u2500") >= 3
        if text or rule:
            rows.append((text, rule))
    rows = rows[1:]  # the title ("Value error", "Invalid choice", ...)
    if rows and rows[0][1]:
        rows = rows[1:]
    kept = []
    for text, rule in rows:
        if rule or text.startswith(("For full helptext", "Argument helptext")):
            break
        kept.append(text)
    text = " ".join(kept) or tyro_message.strip()
    choice = re.fullmatch(r"invalid choice (.+?) for argument '--(\S+?)'\. Expected one of "
                          r"\((.*)\)\.", text)
    if choice:  # the wording the configs' own checks use: "unknown arch 'resnet99'; ..."
        value, flag, options = choice.groups()
        options = ", ".join(o.strip(" '\"") for o in options.split(","))
        return f"unknown {flag.split('.')[-1]} {value} (--{flag}); choose one of {options}"
    return f"{text} (see --help)"


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value `args` give `flag` (`--flag=V` or `--flag V`; the last one), or None; the
    args are left as they are (pop_flag takes the flag out)."""
    value = None
    for i, arg in enumerate(args):
        if arg.startswith(f"{flag}="):
            value = arg.partition("=")[2]
        elif arg == flag and i + 1 < len(args) and not args[i + 1].startswith("--"):
            value = args[i + 1]
    return value


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


def rename_flags(args: list[str], renamed: dict[str, str]) -> list[str]:
    """Earlier spellings of flags, rewritten to today's with a one-line note."""
    out = []
    for arg in args:
        flag, sep, value = arg.partition("=")
        if flag in renamed:
            print(f"note: {flag} is now spelled {renamed[flag]}", file=sys.stderr)
            arg = renamed[flag] + sep + value
        out.append(arg)
    return out


def run_main(main: Callable[[], object]) -> None:
    """Run an entry point; a user error ends it with one line and exit status 2.

    Set RLENC_TRACEBACK=1 to see the full traceback of such an error.
    """
    from encoders import ImageNetWeightsUnavailable
    from training.guards import NonFiniteGradient, StopRequested, signal_of
    from training.logger import WandbUnavailable
    from training.ranges import ConfigError
    from training.run import EvaluationFailed, RunStopped
    from training.run_dir import RunDirError
    from training.run_outcome import EXIT_STOPPED

    user_errors = (
        ValueError,
        FileNotFoundError,
        FileExistsError,
        ImageNetWeightsUnavailable,
        NonFiniteGradient,
        ConfigError,
        RunDirError,
        EvaluationFailed,
        WandbUnavailable,
    )
    try:
        main()
    except (RunStopped, StopRequested, KeyboardInterrupt) as err:
        # A stop, not an error: the run said what it kept (RunStopped); a stop before any
        # run began (StopRequested, KeyboardInterrupt) has nothing to keep.
        if os.environ.get("RLENC_TRACEBACK"):
            raise
        said = str(err) if isinstance(err, RunStopped) else (
            f"{signal_of(err)}: stopped before a run began; nothing was written")
        if said:
            print(f"\n{said}", file=sys.stderr)
        raise SystemExit(EXIT_STOPPED) from None
    except user_errors as err:
        if os.environ.get("RLENC_TRACEBACK"):
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
