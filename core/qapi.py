"""QAPI input validation: the errors QMP gives before a command body runs.

QEMU's QObject input visitor walks a command's members in schema order and
fails on the first bad one; unknown members are reported after all known
ones were visited.  The texts come from the profile's QAPI_ERRORS table:

* ``type``: "Invalid parameter type for '%s', expected: %s"
* ``range``: "Parameter '%s' expects %s" (e.g. an out-of-range uint8)
* ``enum``: "Parameter '%s' does not accept value '%s'"
* ``unexpected`` / ``missing``.

Integers: JSON integers only (a JSON bool or float is not an integer).  The
unsigned visitors accept a negative number and wrap it modulo 2**64, as QEMU
does for backward compatibility; a value that then exceeds a narrower type
(uint8, uint32) is a range error naming the C type.
"""
from __future__ import annotations

from typing import Any

from livemig.core.qapi_order import unexpected_member
from livemig.errors import ParameterError
from livemig.spec.schema import Profile

U64 = 1 << 64
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1

#: integer QAPI types -> (C type name used in range errors, max value)
_UNSIGNED = {"uint8": ("uint8_t", 0xFF), "uint32": ("uint32_t", 0xFFFFFFFF),
             "uint64": ("uint64", U64 - 1), "size": ("uint64", U64 - 1)}


def _fail(profile: Profile, key: str, *values: Any) -> ParameterError:
    text = profile.qapi_error(key)
    for value in values:
        text = text.replace("%s", str(value), 1)
    return ParameterError(text)


def is_json_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def visit_unsigned(profile: Profile, name: str, value: Any, qapi_type: str) -> int:
    """A JSON value as QEMU's unsigned visitors read it (with wrap-around)."""
    c_name, maximum = _UNSIGNED[qapi_type]
    # The strict QObject visitor reads `size` with its uint64 reader, so a
    # non-integer is "Parameter 'x' expects uint64" for both.
    if not is_json_int(value) or not (I64_MIN <= value < U64):
        raise _fail(profile, "range", name, "uint64")
    value %= U64  # negative numbers wrap, as QEMU accepts them for compatibility
    if value > maximum:
        raise _fail(profile, "range", name, c_name)
    return value


def visit_int64(profile: Profile, name: str, value: Any) -> int:
    if not is_json_int(value):
        raise _fail(profile, "type", name, "integer")
    if not I64_MIN <= value <= I64_MAX:
        raise _fail(profile, "range", name, "int64")
    return value


def visit_bool(profile: Profile, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(profile, "type", name, "boolean")
    return value


def visit_str(profile: Profile, name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(profile, "type", name, "string")
    return value


def visit_enum(profile: Profile, name: str, value: Any, allowed: tuple[str, ...]) -> str:
    text = visit_str(profile, name, value)
    if text not in allowed:
        raise _fail(profile, "enum", name, text)
    return text


def visit_str_or_null(profile: Profile, name: str, value: Any) -> str:
    """StrOrNull: a string, or JSON null meaning "" (the setting is reset)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _fail(profile, "type", name, "StrOrNull")
    return value


def visit_object(profile: Profile, name: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise _fail(profile, "type", name, "object")
    return value


def visit_list(profile: Profile, name: str, value: Any) -> list:
    if not isinstance(value, list):
        raise _fail(profile, "type", name, "array")
    return value


def check_no_extra(profile: Profile, prefix: str, obj: dict, known: tuple[str, ...]) -> None:
    """Refuse members the struct does not have, naming the one QEMU names.

    QEMU reports the first member left in its hash tables after the known
    ones were read, not the first in request order (see ``qapi_order``).
    """
    extra = unexpected_member(list(obj), known)
    if extra is not None:
        raise _fail(profile, "unexpected", f"{prefix}{extra}")


def require(profile: Profile, prefix: str, obj: dict, key: str) -> Any:
    if key not in obj:
        raise _fail(profile, "missing", f"{prefix}{key}")
    return obj[key]
