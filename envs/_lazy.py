"""Lazy re-exports for the environment packages' `__init__` modules.

A package names, per submodule, the public names it re-exports; a submodule is imported
the first time one of its names is read (`from envs.lift import LiftData` works, and
`import envs.lift` alone imports nothing more). This keeps the packages light (no
robosuite, robomimic or h5py for `import envs.lift`), and keeps a package from importing
its command-line modules before `python -m envs.<env>.<module>` runs them, which would
load such a module twice.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(
    package: str, exports: dict[str, tuple[str, ...]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """`__getattr__`, `__dir__` and `__all__` for `package`, exporting {submodule: names}."""
    where = {name: f"{package}.{module}" for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(where[name]), name)

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *where})

    return __getattr__, __dir__, sorted(where)
