"""The QAPI schema livemig serves to ``query-qmp-schema``, as data.

Management tools (libvirt first) ask QEMU what it supports before they use
it: ``query-commands`` for the command names, ``query-qmp-schema`` for every
command's argument and return types.  livemig answers both from this table,
so a tool that probes QEMU 7.2 sees the same shapes from livemig.

Two kinds of entries make the table (:func:`qapi_schema`):

* **generated** from the profile's own tables, so they cannot drift from what
  the checkers and the engine do: ``MigrationStatus`` is the profile's
  statuses, ``MigrationCapability`` its capabilities, ``MigrationParameters``
  and ``MigrateSetParameters`` its parameters, each migration command's
  argument object its ``Command.arg_types``, and ``object-add``'s union its
  object types;
* **declared** in ``MonitorSpec.types`` (``profiles/qapi_7_2.py``): the rest
  (``MigrationInfo``, ``StatusInfo``, ``SchemaInfo``, ...), written down from
  QEMU 7.2's introspection.

Type expressions are QAPI's: a builtin (``str``, ``int``, ``number``,
``bool``, ``null``, ``any``), a declared or generated name, or ``[T]`` for
an array of ``T``.  ``tests/test_monitor_vs_qemu.py`` compares every
command and event, resolved down to builtins, with QEMU 7.2's answer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Union

BUILTINS = ("str", "int", "number", "bool", "null", "any")
#: each builtin's JSON type (SchemaInfoBuiltin's json-type)
JSON_TYPES = {"str": "string", "int": "int", "number": "number", "bool": "boolean",
              "null": "null", "any": "value"}


@dataclass(frozen=True)
class QMember:
    """One member of an object type; ``optional`` shows as ``"default": null``."""

    name: str
    type: str
    optional: bool = False
    features: tuple[str, ...] = ()


M = QMember


@dataclass(frozen=True)
class QEnum:
    """An enum type; ``partial``: livemig serves only some of QEMU's values."""

    name: str
    values: tuple[str, ...]
    member_features: tuple[tuple[str, tuple[str, ...]], ...] = ()
    partial: bool = False


@dataclass(frozen=True)
class QObject:
    """A struct, or a flat union when ``tag`` is set (``variants``: case ->
    object type).  ``partial``: livemig has only some of QEMU's members or
    variants (object-add serves only the QOM types of the profile)."""

    name: str
    members: tuple[QMember, ...]
    tag: Optional[str] = None
    variants: tuple[tuple[str, str], ...] = ()
    partial: bool = False


@dataclass(frozen=True)
class QAlternate:
    name: str
    types: tuple[str, ...]


@dataclass(frozen=True)
class QCommand:
    """A command: ``arg_type`` / ``ret_type`` name object types (``q_empty``
    for none); ``arg_type=None`` takes it from the profile's Command."""

    name: str
    arg_type: Optional[str] = "q_empty"
    ret_type: str = "q_empty"
    allow_oob: bool = False
    features: tuple[str, ...] = ()


@dataclass(frozen=True)
class QEvent:
    name: str
    arg_type: str = "q_empty"


QType = Union[QEnum, QObject, QAlternate]


@dataclass(frozen=True)
class HmpParam:
    """How ``migrate_set_parameter NAME VALUE`` reads one parameter and how
    ``info migrate_parameters`` prints it.

    ``parse``: ``size`` (a byte size with k/M/G/T/P/E suffixes, bare numbers
    in bytes), ``size_mib`` (the same, bare numbers in MiB: max-bandwidth),
    ``uint8``/``uint32`` (a C integer, base 0), ``bool`` (on/off), ``str``,
    ``enum``, or ``qmp_only`` (refused by HMP).  ``show``: the line's format,
    ``{}`` the value; ``None``: not printed."""

    name: str
    parse: str
    show: Optional[str] = "{}"


@dataclass(frozen=True)
class HmpInfoLine:
    """One line ``info migrate`` may print: ``path`` into query-migrate's
    answer (``ram.transferred``), ``fmt`` with ``{}`` for the value,
    ``shift`` (``>> 10`` for kbytes), ``when``: ``present`` (the member is
    in the answer) or ``nonzero``."""

    path: str
    fmt: str
    shift: int = 0
    when: str = "present"
    float_digits: Optional[int] = None
    #: in this status the line adds `` (error-desc)`` (the status line)
    error_status: Optional[str] = None


@dataclass(frozen=True)
class MonitorSpec:
    """What the monitor answers besides the migration commands (one profile)."""

    version: tuple[int, int, int]
    #: the package string of query-version / info version
    package: str
    types: tuple[QType, ...]
    commands: tuple[QCommand, ...]
    events: tuple[QEvent, ...]
    #: (array member of a command's arguments) -> element type, per command
    arg_elements: tuple[tuple[str, str, str], ...]
    #: (object type, property) -> enum type, for object-add's variants
    object_enums: tuple[tuple[str, str], ...]
    #: object property kind -> QAPI type of its members
    object_kinds: tuple[tuple[str, str], ...]
    #: HMP: globals lines of info migrate, (name, value)
    globals: tuple[tuple[str, str], ...]
    info_migrate: tuple[HmpInfoLine, ...]
    hmp_params: tuple[HmpParam, ...]
    #: HMP texts by key (``%s`` where QEMU formats a value)
    hmp_texts: tuple[tuple[str, str], ...]

    def text(self, key: str) -> str:
        return dict(self.hmp_texts)[key]

    def hmp_param(self, name: str) -> Optional[HmpParam]:
        return next((p for p in self.hmp_params if p.name == name), None)


# ------------------------------------------------------------ generation
def _param_type(p: Any, for_set: bool) -> str:
    if p.type == "bool":
        return "bool"
    if p.type in ("str",):
        return "str"
    if p.type == "StrOrNull":
        return "StrOrNull" if for_set else "str"
    if p.type == "enum":
        return p.enum_type
    if p.type == "BitmapMigrationNodeAliasList":
        return "[BitmapMigrationNodeAlias]"
    return "int"  # size, uint8, uint32, uint64, int64: JSON numbers


def _features(name: str) -> tuple[str, ...]:
    # QAPI's rule: a name with the x- prefix is declared with feature 'unstable'
    return ("unstable",) if name.startswith("x-") else ()


def _arg_object(profile: Any, monitor: MonitorSpec, command: Any) -> QObject:
    elements = {(c, m): t for c, m, t in monitor.arg_elements}
    members = []
    for arg in command.arg_types:
        typ = {"str": "str", "bool": "bool", "MigrationStatus": "MigrationStatus"}.get(arg.type)
        if arg.type == "array":
            typ = f"[{elements[(command.name, arg.name)]}]"
        members.append(QMember(arg.name, typ, optional=not arg.required))
    return QObject(f"q_obj_{command.name}-arg", tuple(members))


def _object_options(profile: Any, monitor: MonitorSpec) -> list[QType]:
    """object-add's flat union over the profile's QOM types (QEMU has ~70
    more: hence partial)."""
    enums = dict(monitor.object_enums)
    kinds = dict(monitor.object_kinds)
    out: list[QType] = []
    variants = []
    for obj in profile.object_types:
        props = []
        for prop in obj.properties:
            if prop.name == "id":  # the union's base member
                continue
            if prop.kind == "enum":
                typ = enums[f"{obj.name}.{prop.name}"]
            else:
                typ = kinds.get(prop.kind, prop.kind)
            props.append(QMember(prop.name, typ, optional=not prop.required))
        props_type = f"{obj.name}-properties"
        out.append(QObject(props_type, tuple(props), partial=True))
        variants.append((obj.name, props_type))
    out.append(QEnum("ObjectType", tuple(o.name for o in profile.object_types), partial=True))
    out.append(QObject("ObjectOptions", (QMember("qom-type", "ObjectType"), QMember("id", "str")),
                       tag="qom-type", variants=tuple(variants), partial=True))
    return out


def qapi_schema(profile: Any) -> tuple[dict[str, QType], tuple[QCommand, ...],
                                      tuple[QEvent, ...]]:
    """(types by name, commands, events) the monitor of ``profile`` serves."""
    monitor: MonitorSpec = profile.monitor
    types: dict[str, QType] = {t.name: t for t in monitor.types}
    generated: list[QType] = [
        QEnum("MigrationStatus", profile.status_names),
        QEnum("MigrationCapability", tuple(c.name for c in profile.capabilities),
              member_features=tuple((c.name, _features(c.name)) for c in profile.capabilities
                                    if _features(c.name))),
        QObject("MigrationCapabilityStatus", (QMember("capability", "MigrationCapability"),
                                              QMember("state", "bool"))),
        QObject("MigrationParameters", tuple(
            QMember(p.name, _param_type(p, False), optional=True, features=_features(p.name))
            for p in profile.parameters)),
        QObject("MigrateSetParameters", tuple(
            QMember(p.name, _param_type(p, True), optional=True, features=_features(p.name))
            for p in profile.parameters if p.in_set_command)),
    ]
    for p in profile.parameters:
        if p.type == "enum":
            generated.append(QEnum(p.enum_type, tuple(p.enum)))
    commands: list[QCommand] = []
    for c in monitor.commands:
        if c.arg_type is None:  # a migration command of the profile
            spec_cmd = next(x for x in profile.commands if x.name == c.name)
            if spec_cmd.arg_types is None:
                arg = "MigrateSetParameters"
            elif not spec_cmd.arg_types:
                arg = "q_empty"
            else:
                obj = _arg_object(profile, monitor, spec_cmd)
                generated.append(obj)
                arg = obj.name
            c = QCommand(c.name, arg, c.ret_type, spec_cmd.allow_oob, c.features)
        commands.append(c)
    if profile.object_types:
        generated.extend(_object_options(profile, monitor))
    for t in generated:
        types[t.name] = t
    return types, tuple(commands), monitor.events


def element_of(type_expr: str) -> Optional[str]:
    """``T`` for ``[T]``, else None."""
    return type_expr[1:-1] if type_expr.startswith("[") else None
