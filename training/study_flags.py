"""A study's flags read by the entry's own parser, before anything runs.

An entry script (train_bc.py, train_ppo.py) defines `parse_args(argv) -> config`: the
sweep imports it by path and parses every run's full command line in-process, so an unknown
or invalid flag is one line naming it before a run starts or the sweep directory is written.

The same parser gives a study its identity: the values its fixed flags set, every field
included, so that the order of the flags or a default written out (`--ppo.gamma=0.99`)
does not make another study, and a real difference names the field.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from training.ranges import ConfigError
from training.settings import flag_values


class EntryParser(Protocol):
    """What an entry script offers the sweep: its command line, parsed, nothing run."""

    def __call__(self, argv: list[str]) -> Any: ...


def entry_parser(entry: Path) -> EntryParser:
    """The entry script's `parse_args`, imported from its file."""
    name = f"_study_entry_{entry.stem}"
    if name in sys.modules:
        module = sys.modules[name]
    else:
        spec = importlib.util.spec_from_file_location(name, entry)
        if spec is None or spec.loader is None:
            raise ValueError(f"--entry={entry}: cannot be imported as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while it runs
        sys.path.insert(0, str(entry.parent))  # the entry's own imports, as when it runs
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        finally:
            sys.path.remove(str(entry.parent))
    parse = getattr(module, "parse_args", None)
    if not callable(parse):
        raise ValueError(f"--entry={entry} defines no parse_args(argv); the sweep reads every "
                         f"run's flags with it before starting any (train_bc.py and "
                         f"train_ppo.py do)")
    return parse


def parsed(parse: EntryParser, flags: Sequence[str], what: str) -> Any:
    """`parse(flags)`, or one line naming `what` was being parsed and the entry's complaint."""
    try:
        return parse(list(flags))
    # SystemExit: an entry's own exit on a bad choice (e.g. a flag missing its value).
    except (ConfigError, ValueError, SystemExit) as err:
        raise ValueError(f"{what}: {err}; nothing was started or written") from None


def check_runs(parse: EntryParser, runs: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Parse every run's full command line (name, flags); raises one line for the first bad."""
    for name, flags in runs:
        parsed(parse, flags, f"run {name}")


def fixed_values(parse: EntryParser, fixed: Sequence[str], leave_out: set[str]
                 ) -> dict[str, Any]:
    """Every field's value under the fixed flags alone (JSON's types), bar `leave_out`."""
    values = flag_values(parsed(parse, fixed, "the fixed flags"))
    plain = json.loads(json.dumps(values, default=str))
    return {flag: value for flag, value in plain.items() if flag not in leave_out}


def values_difference(saved: dict[str, Any], new: dict[str, Any]) -> str | None:
    """`--flag: A in this study, B now` for each field that differs; None when none does.

    A field only one side has (the entry gained or lost it) reads as null on the other.
    """
    listed = [f"--{flag}: {json.dumps(saved.get(flag))} in this study, "
              f"{json.dumps(new.get(flag))} now"
              for flag in sorted(set(saved) | set(new)) if saved.get(flag) != new.get(flag)]
    return "; ".join(listed) or None
