"""Package attributes imported on first use (PEP 562), for package __init__ files.

``livemig.engine`` and ``livemig.conformance`` re-export their public API as
``spec`` and ``core`` do, but importing them must stay cheap and free of side
effects: their submodules pull in numpy, qemu.qmp, Hypothesis (a test extra)
and thread machinery, and import one another through the package.  So the
package's ``__init__`` names each public attribute and the submodule that
defines it, and the submodule is imported when the attribute is first read.

    __getattr__, __dir__ = lazy_exports(__name__, {"VM": "vm", "FILES": "files:TABLE"})

A value ``"submodule:attr"`` exports the submodule's ``attr`` under another
name (where the short name would be ambiguous at package level).
"""
from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Mapping


def lazy_exports(package: str, exports: Mapping[str, str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package`` for ``{name: "submodule[:attr]"}``."""

    def __getattr__(name: str) -> Any:
        where = exports.get(name)
        if where is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attr = where.partition(":")
        value = getattr(importlib.import_module(f"{package}.{module}"), attr or name)
        setattr(sys.modules[package], name, value)  # later reads do not come here again
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
