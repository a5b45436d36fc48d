"""The typed rows that a profile is made of.

A profile module (``livemig/spec/profiles/qemu_*.py``) holds only literal
instances of these classes.  ``livemig.spec.loader`` resolves ``extends``
(a profile may patch another) into a complete :class:`Profile`.

Conventions that every reader relies on:

* State and capability names are QAPI spellings (``postcopy-active``,
  ``pause-before-switchover``); PostcopyState names are QEMU's enum suffixes
  (``LISTENING``).
* ``Transition.old`` is one of: a status, a group name, or ``CURRENT``.
  A status means an exact CAS ``migrate_set_state(&s, OLD, NEW)``.  A group or
  ``CURRENT`` means QEMU passes a value it read earlier (``s->state`` or a local
  snapshot): the row can fire from any state of the group, but the CAS only
  succeeds if nobody changed the state between the read and the swap.  These
  are the places where QEMU defeats its own CAS.
* ``Transition.new is None`` marks an event-only row: an event is emitted and
  no state changes (7.2's incoming ``setup`` event).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from livemig.errors import SpecError
from livemig.spec.expr import TRUE, Expr

Side = Literal["source", "destination"]
SIDES: tuple[Side, ...] = ("source", "destination")

#: ``Transition.old`` value for wildcard calls whose OLD is "whatever it is now".
CURRENT = "current"


@dataclass(frozen=True)
class Status:
    """One MigrationStatus value; ``value`` is its C enum position."""

    name: str
    value: int
    doc: str = ""


@dataclass(frozen=True)
class Group:
    """A named set of statuses defined by one of QEMU's predicates."""

    name: str
    members: tuple[str, ...]
    predicate: str  # the QEMU function that defines it
    doc: str = ""


@dataclass(frozen=True)
class Actor:
    """A thread or context that changes state in QEMU."""

    name: str
    doc: str


@dataclass(frozen=True)
class FlagDecl:
    """A named boolean that guards read.

    ``kind``: "command" (latched by a QMP command, reset by migrate_init),
    "environment" (outside events: I/O errors, peers; free for the prover),
    "thread" (a thread is blocked somewhere: set when the row ``set_by``
    succeeds, cleared when a row of ``cleared_by`` succeeds or migrate_init
    resets the side).
    """

    name: str
    kind: Literal["command", "environment", "thread"]
    doc: str
    set_by: Optional[str] = None
    cleared_by: tuple[str, ...] = ()
    #: for "command" flags: the command sets the flag only when this holds
    #: (an expression over its arguments, e.g. ``Arg("resume")``)
    set_when: Expr = TRUE


@dataclass(frozen=True)
class Transition:
    """One ``migrate_set_state`` call site (or event-only emission)."""

    id: str
    side: Side
    actor: str
    trigger: str  # the QEMU function this models
    old: str  # a status, a group name, or CURRENT
    new: Optional[str]  # None: event-only row
    guard: Expr = TRUE
    retry: bool = False  # QEMU loops on the CAS until the state is `new`
    emits: Optional[str] = None  # for event-only rows: the status put in the event
    event_needs_cap: bool = True  # False: the event is sent without the events capability
    store: bool = False  # a plain store: no CAS, no event (migrate_init's reset)
    within: Optional[tuple[str, ...]] = None  # for CURRENT rows: the statuses QEMU can read there
    doc: str = ""

    @property
    def event_only(self) -> bool:
        return self.new is None

    @property
    def reads_state(self) -> bool:
        """True when OLD is a value read earlier rather than a constant."""
        return not self.store and (self.old == CURRENT or self.retry or not self.old_is_state)

    # Set by the loader: whether `old` names a single status.
    old_is_state: bool = field(default=True, compare=False)


@dataclass(frozen=True)
class BitmapSync:
    """migration_bitmap_sync: the source reads the guest's dirty log (KVM's
    in QEMU; the kernel's or the simulated vCPU's in livemig) into the
    migration bitmap.  Each sync adds one to ``counter`` (a query-migrate
    ``ram`` member) and, with capability ``event_cap`` on, emits ``event``
    with member ``event_member`` set to that count.  Once ``period_s`` has
    passed since the last evaluation, the dirty page rate is re-computed and
    auto-converge decides whether to throttle.  ``callers`` are QEMU's call
    sites: when a sync happens."""

    function: str
    counter: str
    event: str
    event_member: str
    event_cap: str
    period_s: float
    callers: tuple[tuple[str, str], ...]  # (QEMU function, when)


@dataclass(frozen=True)
class InfoField:
    """A member of the source's query-migrate answer (MigrationInfo) and when
    QEMU's fill_source_migration_info shows it: in ``states`` (statuses or
    groups), with capability ``cap`` on (if named), and ``only_if``
    ``"throttling"`` (auto-converge has throttled the vCPU) or ``"error"`` (the
    migration recorded an error)."""

    name: str
    states: tuple[str, ...]
    cap: Optional[str] = None
    only_if: Optional[Literal["throttling", "error"]] = None
    doc: str = ""


@dataclass(frozen=True)
class Unreachable:
    """A status declared unreachable on a side, with the reason."""

    side: Side
    status: str
    reason: str


@dataclass(frozen=True)
class PostcopyHandler:
    """A destination handler that moves PostcopyState.

    ``op``:
      * "xchg": atomic exchange to ``new`` first, then the returned old value is
        checked; on a bad old value the error is raised but the state already
        is ``new`` (QEMU's xchg-then-check).
      * "check_then_set": read; if the old value is not accepted, raise and
        change nothing; otherwise set ``new`` (``new`` may be None: no change).
      * "set": unconditional store of ``new`` (no check).
    ``set_new_from`` restricts the store to these old values (the DISCARD
    handler only moves ADVISE to DISCARD; from DISCARD it stays).
    """

    name: str
    trigger: str
    command: Optional[str]  # MIG_CMD_* name that runs it, if any
    op: Literal["xchg", "check_then_set", "set"]
    accepted: tuple[str, ...]
    new: Optional[str]
    error: Optional[str]  # "%d" is the numeric old state, as QEMU prints it
    set_new_from: Optional[tuple[str, ...]] = None
    doc: str = ""


@dataclass(frozen=True)
class Capability:
    name: str
    since: str
    doc: str = ""
    unstable: bool = False


@dataclass(frozen=True)
class ObjectProperty:
    """One property of a user-creatable QOM object (``object-add``).

    ``kind``: "str", "bool", "enum" (one of ``enum``) or "rules" (authz-list's
    list of ``{"match", "policy", "format"}``)."""

    name: str
    kind: str
    required: bool = False
    default: Any = None
    enum: tuple[str, ...] = ()


@dataclass(frozen=True)
class ObjectType:
    """A QOM type ``object-add`` accepts (issue 16: TLS credentials and
    authorization objects).  ``files``: for credentials read from ``dir``, the
    files each endpoint needs, in the order QEMU looks for them (the first
    one missing is named in the error); ``optional_files`` are read when
    present (a CRL)."""

    name: str
    doc: str
    properties: tuple[ObjectProperty, ...]
    files: tuple[tuple[str, tuple[str, ...]], ...] = ()
    optional_files: tuple[str, ...] = ()
    #: the object is TLS credentials (migrate's tls-creds may name it)
    tls_creds: bool = False
    #: the object is an authorization list (migrate's tls-authz may name it)
    authz: bool = False

    def prop(self, name: str) -> Optional[ObjectProperty]:
        return next((p for p in self.properties if p.name == name), None)


@dataclass(frozen=True)
class MachineType:
    """A machine type, as a stream's configuration section names it, and the
    sections its streams carry (issue 12: a QEMU machine type makes livemig
    send and accept exactly what QEMU 7.2 sends and accepts).

    ``qemu``: a QEMU machine type -- no livemig-private section, QEMU's
    globalstate body, the RAM block list the source declares is taken (the
    destination creates the blocks it lacks), and the FULL sections of
    devices livemig does not model are kept opaque, split at their section
    footer (their bodies carry no length; the vmdesc after EOF describes
    them).  Section ids are the ones this machine's source uses; a QEMU
    destination resolves PART/END by the id its START carried, and resolves
    id 0 to a device that was never loaded, so the RAM section's is not 0."""

    name: str
    doc: str
    qemu: bool
    ram_section_id: int
    globalstate_section_id: int
    globalstate_layout: str  # the layout of the globalstate section's body
    device_section_id: Optional[int] = None  # livemig's device section (None: not sent)


@dataclass(frozen=True)
class Unimplemented:
    """A capability livemig's engine refuses at ``migrate`` (not a QEMU rule):
    QEMU would take a state path the engine does not have (``reason``)."""

    name: str  # the capability
    reason: str


@dataclass(frozen=True)
class HostFact:
    """A host or build property; ``default`` is Debian's 7.2 build on Linux."""

    name: str
    default: bool
    doc: str


@dataclass(frozen=True)
class CapRule:
    """One check of migrate_caps_check; the first failing rule wins.

    ``when`` is the *failure* condition, over the merged capability set
    (``Cap``), the previous set (``WasCap``), host facts, the run state and
    the current parameter values.
    """

    id: str
    when: Expr
    error: str
    hint: Optional[str] = None
    doc: str = ""


ParamType = Literal[
    "bool", "uint8", "uint32", "uint64", "size", "int64", "str", "StrOrNull", "enum",
    "BitmapMigrationNodeAliasList",
]


@dataclass(frozen=True)
class Parameter:
    """One migration parameter as QAPI declares it."""

    name: str
    type: ParamType
    default: Any
    doc: str = ""
    enum: Optional[tuple[str, ...]] = None  # allowed values for type "enum"
    enum_type: Optional[str] = None  # QAPI enum type name, e.g. "MultiFDCompression"
    applied_by_set: bool = True  # False: migrate-set-parameters accepts and ignores it
    in_set_command: bool = True  # False: not an argument of migrate-set-parameters
    since: str = ""


@dataclass(frozen=True)
class ParamRef:
    """A bound that is another parameter's (merged, new) value."""

    name: str


Bound = Union[int, ParamRef, None]


@dataclass(frozen=True)
class ParamRule:
    """One check of migrate_params_check, run on the merged parameter set.

    A range rule fails when ``param`` < ``min`` or > ``max``; ``power_of_two``
    adds that the value must be a power of two.  A rule with ``param=None``
    fails when ``when`` holds (cross-parameter/capability rules).
    """

    id: str
    param: Optional[str]
    error: str
    min: Bound = None
    max: Bound = None
    power_of_two: bool = False
    when: Optional[Expr] = None
    alias_map: bool = False  # run the profile's ALIAS_MAP_RULES; `error` is their prefix
    doc: str = ""


AliasCheck = Literal[
    "node_alias_form",      # the node alias matches ``pattern``
    "node_alias_length",    # the node alias is at most ``limit`` bytes
    "node_name_unique",     # no earlier node has this node-name
    "node_alias_unique",    # no earlier node has this alias
    "bitmap_alias_length",  # the bitmap alias is at most ``limit`` bytes
    "bitmap_name_unique",   # no earlier bitmap of this node has this name
    "bitmap_alias_unique",  # no earlier bitmap of this node has this alias
]


@dataclass(frozen=True)
class AliasMapRule:
    """One check of block-bitmap-mapping's alias map (check_dirty_bitmap_mig_alias_map).

    QEMU builds the map twice: keyed by names (``direction`` "by_name"), then
    keyed by aliases ("by_alias").  Each pass walks the nodes in list order;
    for each node its ``node_*`` rules of that pass run in table order, then
    each of its bitmaps through the pass's ``bitmap_*`` rules.  The first
    failure wins, so a duplicate alias loses to any by-name failure anywhere.  ``%s`` in ``error`` is filled with: the node alias /
    node name for node rules; for bitmap rules the bitmap alias
    (``bitmap_alias_length``), node-name and bitmap name
    (``bitmap_name_unique``), node alias and bitmap alias
    (``bitmap_alias_unique``).
    """

    id: str
    check: AliasCheck
    error: str
    limit: Optional[int] = None
    pattern: Optional[str] = None  # a regular expression the whole value must match
    direction: Literal["by_name", "by_alias"] = "by_name"


@dataclass(frozen=True)
class Precondition:
    """A QMP command check: the command fails with ``error`` when ``when`` holds.

    ``state_side`` says whose status ``InState`` reads.  ``%s`` in ``error`` is
    filled with ``fill`` ("status": the current status; "arg:NAME": an argument).
    """

    id: str
    when: Expr
    error: str
    state_side: Side = "source"
    fill: Optional[str] = None
    doc: str = ""


@dataclass(frozen=True)
class ArgType:
    """One member of a command's QAPI arguments (migration.json), as QMP's
    input visitor reads it before the command body runs."""

    name: str
    type: Literal["str", "bool", "array", "MigrationStatus"]
    required: bool = False


@dataclass(frozen=True)
class Command:
    """A QMP migration command and its preconditions in QEMU's order.

    ``arg_types`` lists the members in schema order (the order QEMU visits
    them); ``None`` means the arguments are checked elsewhere (the parameter
    checker for migrate-set-parameters)."""

    name: str
    args: tuple[str, ...]
    preconditions: tuple[Precondition, ...]
    doc: str = ""
    allow_oob: bool = False
    sets_flags: tuple[str, ...] = ()
    arg_types: Optional[tuple[ArgType, ...]] = ()
    #: the MIGRATION status the command emits at once on its state side
    #: (through an event-only row), so that an event log shows the command
    #: -- and the flags it sets -- even though the state does not change
    event: Optional[str] = None


@dataclass(frozen=True)
class WireConst:
    """A named number on the wire."""

    name: str
    value: int
    doc: str = ""


#: a layout field's kind: integers (big-endian but ``u8``); ``nul`` a byte that
#: must be 0; ``uuid`` 16 raw bytes; ``str8``/``str16``/``str32``/``str64`` bytes after a u8 / be16 /
#: be32 / be64 length; ``rest`` the bytes up to the end of the payload;
#: ``array`` fixed-size ``item`` records up to the end of the payload.
FieldKind = Literal["u8", "be16", "be32", "be64", "nul", "uuid", "bytes100", "str8", "str16",
                    "str32", "str64", "rest", "array"]
#: bytes of each fixed-size kind, and of each length prefix
FIELD_SIZES: dict[str, int] = {"u8": 1, "be16": 2, "be32": 4, "be64": 8, "nul": 1, "uuid": 16,
                               "bytes100": 100}
PREFIX_SIZES: dict[str, int] = {"str8": 1, "str16": 2, "str32": 4, "str64": 8}

#: a bound: a number, or the name of a wire constant (``Wire.const``)
LayoutBound = Union[int, str, None]


@dataclass(frozen=True)
class Field:
    """One field of a :class:`Layout`, in wire order.

    ``min``/``max`` bound a variable field's byte length (``str*``, ``rest``)
    or an ``array``'s item count; a reader refuses a declared length outside
    them before it waits for (or buffers) the bytes.
    """

    name: str
    kind: FieldKind
    doc: str = ""
    min: LayoutBound = None
    max: LayoutBound = None
    item: Optional["Layout"] = None  # array: the fixed-size record repeated

    @property
    def size(self) -> Optional[int]:
        """Bytes of a fixed-size field; None for a variable one."""
        if self.kind == "array" or self.kind in PREFIX_SIZES or self.kind == "rest":
            return None
        return FIELD_SIZES[self.kind]


@dataclass(frozen=True)
class Layout:
    """The byte layout of one wire item (a payload, a header, a trailer).

    Lengths that QEMU checks (REQ_PAGES' 12, REQ_PAGES_ID's 13 + idlen) are
    not written anywhere: they are :attr:`size` / :meth:`min_size` of the
    layout.  The engine compiles layouts into packers
    (:mod:`livemig.engine.layouts`).
    """

    name: str
    fields: tuple[Field, ...]
    doc: str = ""

    @property
    def size(self) -> Optional[int]:
        """The byte size when every field is fixed, else None."""
        sizes = [f.size for f in self.fields]
        return None if None in sizes else sum(sizes)  # type: ignore[arg-type]

    def min_size(self, const: Optional[Any] = None) -> int:
        """The fewest bytes a valid item has; ``const`` resolves named bounds
        (without it a named ``min`` counts as 0)."""
        total = 0
        for f in self.fields:
            if f.size is not None:
                total += f.size
                continue
            total += PREFIX_SIZES.get(f.kind, 0)
            low = f.min
            if isinstance(low, str):
                low = const(low) if const is not None else 0
            low = low or 0
            total += low * (f.item.size or 0) if f.kind == "array" and f.item else low
        return total


@dataclass(frozen=True)
class WireMessage:
    """A MIG_CMD_* or MIG_RP_MSG_*: its number and its payload's layout.

    ``payload`` None means an empty payload (length 0).  The framing checks a
    fixed layout's size exactly and a variable one's :meth:`Layout.min_size`
    as a minimum, except where ``handler_checks`` says QEMU leaves the length
    to the message's handler (POSTCOPY_ADVISE: 16 or 0; RP RECV_BITMAP:
    "missing block name").
    """

    name: str
    value: int
    payload: Optional[Layout] = None
    doc: str = ""
    handler_checks: bool = False

    @property
    def length(self) -> Optional[int]:
        """The exact payload length the framing requires; None when it varies."""
        if self.handler_checks:
            return None
        if self.payload is None:
            return 0
        return self.payload.size

    @property
    def min_length(self) -> Optional[int]:
        """The least payload length the framing accepts (variable layouts)."""
        if self.handler_checks or self.payload is None or self.payload.size is not None:
            return None
        return self.payload.min_size()


@dataclass(frozen=True)
class Wire:
    """Every wire constant of a profile."""

    file: tuple[WireConst, ...]  # magic, versions
    sections: tuple[WireConst, ...]  # QEMU_VM_* section/type bytes
    commands: tuple[WireMessage, ...]  # MIG_CMD_*
    return_path: tuple[WireMessage, ...]  # MIG_RP_MSG_*
    ram_flags: tuple[WireConst, ...]  # RAM_SAVE_FLAG_*
    misc: tuple[WireConst, ...]  # end marks, ack values, limits
    errors: tuple[tuple[str, str], ...]  # (key, QEMU's load/stream error text)
    #: URI protocols that may carry several channels (multifd)
    multi_channel_protocols: tuple[str, ...] = ()
    #: byte layouts of the items that are not MIG_CMD / MIG_RP_MSG payloads
    #: (framing headers, section headers and bodies, RAM records, multifd)
    layouts: tuple[Layout, ...] = ()
    #: (layout field kind, the VMStateInfo type name QEMU's vmdesc JSON gives
    #: a field of it); any other kind is described as a "buffer"
    vmdesc_types: tuple[tuple[str, str], ...] = ()

    def vmdesc_type(self, kind: str) -> str:
        """The vmdesc ``type`` of a layout field of ``kind``."""
        return dict(self.vmdesc_types).get(kind, "buffer")

    def layout(self, name: str) -> Layout:
        """A layout by name: one of :attr:`layouts`, or ``CMD_<short>`` /
        ``RP_<short>`` for a message's payload (``RP_REQ_PAGES``)."""
        for item in self.layouts:
            if item.name == name:
                return item
        for prefix, table, strip in (("CMD_", self.commands, "MIG_CMD_"),
                                     ("RP_", self.return_path, "MIG_RP_MSG_")):
            if name.startswith(prefix):
                for m in table:
                    if m.name == strip + name[len(prefix):] and m.payload is not None:
                        return m.payload
        raise KeyError(name)

    def const(self, name: str) -> int:
        for table in (self.file, self.sections, self.ram_flags, self.misc):
            for c in table:
                if c.name == name:
                    return c.value
        raise KeyError(name)

    def error(self, key: str) -> str:
        for k, text in self.errors:
            if k == key:
                return text
        raise KeyError(key)


@dataclass(frozen=True)
class Patch:
    """Changes to a keyed table of the profile this one extends.

    ``remove`` names keys; ``replace`` rows must exist; ``add`` rows must not.
    ``after`` (for ordered tables) inserts added rows after that key.
    """

    add: tuple = ()
    remove: tuple[str, ...] = ()
    replace: tuple = ()
    after: Optional[str] = None


@dataclass(frozen=True)
class Profile:
    """A complete, resolved profile."""

    name: str
    title: str
    extends: Optional[str]
    sources: tuple[str, ...]
    statuses: tuple[Status, ...]
    groups: tuple[Group, ...]
    terminal: tuple[str, ...]
    actors: tuple[Actor, ...]
    flags: tuple[FlagDecl, ...]
    transitions: tuple[Transition, ...]
    unreachable: tuple[Unreachable, ...]
    postcopy_states: tuple[str, ...]
    postcopy_handlers: tuple[PostcopyHandler, ...]
    capabilities: tuple[Capability, ...]
    host_facts: tuple[HostFact, ...]
    cap_rules: tuple[CapRule, ...]
    parameters: tuple[Parameter, ...]
    param_rules: tuple[ParamRule, ...]
    param_error_format: str  # "Parameter '%s' expects %s"
    qapi_errors: tuple[tuple[str, str], ...]
    commands: tuple[Command, ...]
    wire: Wire
    target_page_size: int = 4096
    alias_map_rules: tuple[AliasMapRule, ...] = ()
    migration_info: tuple[InfoField, ...] = ()
    #: capabilities the checkers accept (as QEMU does) that livemig's engine
    #: does not implement: its ``migrate`` refuses them
    engine_unimplemented: tuple[Unimplemented, ...] = ()
    #: machine types the engine speaks; the first is livemig's own (default)
    machines: tuple[MachineType, ...] = ()
    #: QOM types object-add accepts (TLS credentials, authorization)
    object_types: tuple[ObjectType, ...] = ()
    #: (key, QEMU's text) of object-add / object-del and the TLS channel
    object_errors: tuple[tuple[str, str], ...] = ()
    #: the monitor beyond the migration commands: QAPI introspection and
    #: HMP (a ``livemig.spec.qapi.MonitorSpec``)
    monitor: Any = None
    #: migration_bitmap_sync: what one sync of the dirty log counts and emits
    bitmap_sync: Optional[BitmapSync] = None

    def __hash__(self) -> int:
        # Profiles key lru_caches on hot paths (a page request's return-path
        # message); hashing every table each time cost ~0.1 ms, so a profile
        # (immutable) hashes its fields once.
        cached = self.__dict__.get("_hash")
        if cached is None:
            cached = hash(tuple(getattr(self, f) for f in self.__dataclass_fields__))
            object.__setattr__(self, "_hash", cached)
        return cached

    def __getstate__(self) -> dict:
        # the caches stay behind: string hashes differ between processes
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    # ---- lookups -------------------------------------------------------
    @property
    def status_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.statuses)

    def group(self, name: str) -> Group:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def sources_of(self, row: Transition) -> frozenset[str]:
        """The statuses a row can fire from (``within`` narrows CURRENT)."""
        if row.old == CURRENT and row.within is not None:
            return frozenset(row.within)
        return self.states_of(row.old)

    def states_of(self, name: str) -> frozenset[str]:
        """A status, a group, or CURRENT, as the set of statuses it stands for."""
        if name == CURRENT:
            return frozenset(self.status_names)
        if name in self.status_names:
            return frozenset([name])
        return frozenset(self.group(name).members)

    def transition(self, row_id: str) -> Transition:
        by_id = self.__dict__.get("_rows_by_id")
        if by_id is None:  # built once: every fired row is looked up here
            by_id = {t.id: t for t in self.transitions}
            object.__setattr__(self, "_rows_by_id", by_id)
        return by_id[row_id]

    def rows(self, side: Side) -> tuple[Transition, ...]:
        return tuple(t for t in self.transitions if t.side == side)

    def capability_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.capabilities)

    def object_type(self, name: str) -> Optional[ObjectType]:
        """The QOM type ``name`` object-add accepts, or None."""
        return next((t for t in self.object_types if t.name == name), None)

    def object_error(self, key: str, *args: Any) -> str:
        """An object / TLS text of :attr:`object_errors`, formatted."""
        text = dict(self.object_errors)[key]
        return text % args if args else text

    def machine(self, name: Optional[str] = None) -> MachineType:
        """The machine type ``name`` (None: livemig's own, the first); a
        SpecError naming the allowed ones for another."""
        if not self.machines:
            raise SpecError(f"profile {self.name}: no machine types declared")
        if name is None:
            return self.machines[0]
        for m in self.machines:
            if m.name == name:
                return m
        raise SpecError(f"unknown machine type '{name}' for profile {self.name}; expected one "
                        f"of {', '.join(m.name for m in self.machines)}")

    def parameter(self, name: str) -> Parameter:
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(name)

    def command(self, name: str) -> Command:
        for c in self.commands:
            if c.name == name:
                return c
        raise KeyError(name)

    def host_defaults(self) -> dict[str, bool]:
        return {h.name: h.default for h in self.host_facts}

    def qapi_error(self, key: str) -> str:
        for k, text in self.qapi_errors:
            if k == key:
                return text
        raise KeyError(key)

    def postcopy_handler(self, name: str) -> PostcopyHandler:
        for h in self.postcopy_handlers:
            if h.name == name:
                return h
        raise KeyError(name)


# ---------------------------------------------------------------- invariants
InvariantKind = Literal[
    "implies",            # state predicate: `when` implies `then` on `side`
    "entered_only_from",  # `side` enters `state` only from one of `states`
    "leads_only_to",      # `side` leaves `state` only to one of `states`
    "never_overwrites",   # `side` never goes from `state` to any of `states`
    "never_after",        # once `state` was entered, none of `states` until a new migrate
    "postcopy_monotone",  # PostcopyState never moves backwards in POSTCOPY_STATES order
    "terminal_stays",     # a terminal status changes only by migrate_init's store
    "caps_satisfy_rules",  # every capability set in force passes the profile's CAP_RULES
    "events_are_cas",     # every MIGRATION event on `side` is a successful CAS of a row
    "events_change_state",  # every MIGRATION event on `side` comes with a status change
    "reachable",          # every status is reachable on its side unless declared unreachable
    "no_dead_rows",       # every row fires (succeeds) in some reachable state
    "no_trap",            # no reachable non-terminal status that nothing can ever leave
]

ProofResult = Literal["proved", "refuted", "unknown"]


@dataclass(frozen=True)
class Expectation:
    """What the prover must find for one profile; ``reason`` says why when refuted."""

    profile: str
    result: Literal["proved", "refuted"]
    reason: str = ""


@dataclass(frozen=True)
class Invariant:
    """One named entry of the invariant catalogue (``livemig.spec.invariants``).

    Only the fields its ``kind`` names are read.  ``side`` None means each
    side for the kinds that are per side (terminal_stays, reachable, ...).
    Status names in ``state``/``states`` that a profile does not have are
    ignored for that profile (e.g. ``wait-unplug`` in qemu-3.0).
    """

    name: str
    kind: InvariantKind
    description: str
    expected: tuple[Expectation, ...]
    side: Optional[Side] = None
    when: Expr = TRUE
    then: Expr = TRUE
    state: Optional[str] = None
    states: tuple[str, ...] = ()

    def expectation(self, profile: str) -> Optional[Expectation]:
        for e in self.expected:
            if e.profile == profile:
                return e
        return None


@dataclass(frozen=True)
class CrossSideInvariant:
    """A property that relates the two sides of one migration, which the
    per-side prover models cannot state (``livemig.spec.invariants``,
    ``CROSS_SIDE``): whenever ``side`` enters ``state`` by a row (not a
    store) while any of ``caps`` is on, ``peer`` has already entered
    ``peer_state`` in the same migration (since ``side``'s last entry into
    ``start``).  Checked on every run's logs (stateful runs after each step,
    the fault matrix, the soak); ``reason`` names QEMU's code that keeps it."""

    name: str
    description: str
    side: Side
    state: str
    peer: Side
    peer_state: str
    start: str
    caps: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class ProverModel:
    """The few facts the prover needs that are not tables of a profile.

    ``caps_command`` / ``params_command``: the QMP commands that change the
    capability set / parameters (both sides run them).  ``events_capability``:
    the capability that gates MIGRATION events.  ``runstates``: per side, the
    VM run states the side may be in (free input each step).
    ``command_actor``: the actor whose pending CAS blocks QMP commands.
    """

    caps_command: str
    params_command: str
    events_capability: str
    runstates: tuple[tuple[Side, tuple[str, ...]], ...]
    command_actor: str = "monitor"  # the actor (ACTORS) that runs QMP commands

    def runstates_of(self, side: str) -> tuple[str, ...]:
        for s, names in self.runstates:
            if s == side:
                return names
        raise KeyError(side)
