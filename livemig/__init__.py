"""livemig: QEMU's live-migration control plane, explicit and checkable.

Subpackages: ``livemig.spec`` (the tables), ``livemig.core`` (the runtime built
from them), ``livemig.engine``, ``livemig.conformance``, ``livemig.diagrams``.
"""
from livemig.errors import (
    CapabilityError,
    CommandError,
    IllegalTransition,
    MigrationError,
    ParameterError,
    ReturnPathError,
    SpecError,
    StreamError,
)

__version__ = "0.1.0"

__all__ = [
    "CapabilityError",
    "CommandError",
    "IllegalTransition",
    "MigrationError",
    "ParameterError",
    "ReturnPathError",
    "SpecError",
    "StreamError",
    "__version__",
]
