"""One exception hierarchy for everything livemig raises.

Messages name the value, the rule and what is allowed, in QEMU's own wording
wherever QEMU has one, so an error seen here can be searched for in QEMU.
"""
from __future__ import annotations


class MigrationError(Exception):
    """Base of every livemig error.  ``qmp_class`` is the QMP error class."""

    qmp_class = "GenericError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SpecError(MigrationError):
    """A profile is malformed or inconsistent, or names something unknown."""


class IllegalTransition(MigrationError):
    """A state change that no spec row allows (strict mode), or an unknown row id."""


class CapabilityError(MigrationError):
    """migrate-set-capabilities refused: QEMU's migrate_caps_check text."""


class ParameterError(MigrationError):
    """migrate-set-parameters refused: QAPI input error or migrate_params_check text."""


class CommandError(MigrationError):
    """A QMP command's precondition failed (wrong state, wrong arguments)."""


class StreamError(MigrationError):
    """Malformed or unexpected bytes on the migration stream."""


class ReturnPathError(MigrationError):
    """Malformed or unexpected message on the return path."""
