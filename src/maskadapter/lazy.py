"""Package attributes loaded on first use (PEP 562), so that importing a package imports none of its heavy
modules until one of its names is used."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, Sequence


def lazy_attributes(package: str, exports: Mapping[str, str], submodules: Sequence[str] = (),
                    namespace: dict | None = None) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``: ``exports`` maps a public name to the module (relative
    to the package) that defines it; ``submodules`` are imported when asked for by name; a loaded name is stored
    in ``namespace`` (the package's ``globals()``) so later look-ups skip ``__getattr__``."""
    names = namespace if namespace is not None else {}

    def __getattr__(name: str) -> Any:
        if name in submodules:
            return importlib.import_module(f"{package}.{name}")
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        names[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(names) | set(exports) | set(submodules))

    return __getattr__, __dir__
