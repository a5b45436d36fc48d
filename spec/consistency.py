"""Self-consistency of a profile: every name a table uses is declared.

``check_profile`` returns a list of problems (empty when consistent); the
test suite and ``livemig spec check`` fail on any.
"""
from __future__ import annotations

from livemig.spec import expr as E
from livemig.spec.schema import CURRENT, SIDES, Profile


def _expr_problems(profile: Profile, where: str, guard: E.Expr) -> list[str]:
    problems = []
    caps = set(profile.capability_names())
    flags = {f.name for f in profile.flags}
    hosts = {h.name for h in profile.host_facts}
    params = {p.name for p in profile.parameters}
    states = set(profile.status_names) | {g.name for g in profile.groups}
    for node in E.walk(guard):
        if isinstance(node, (E.Cap, E.WasCap)) and node.name not in caps:
            problems.append(f"{where}: unknown capability {node.name!r}")
        elif isinstance(node, E.Flag) and node.name not in flags:
            problems.append(f"{where}: undeclared flag {node.name!r}")
        elif isinstance(node, E.Host) and node.name not in hosts:
            problems.append(f"{where}: undeclared host fact {node.name!r}")
        elif isinstance(node, E.Param) and node.name not in params:
            problems.append(f"{where}: unknown parameter {node.name!r}")
        elif isinstance(node, E.Param) and node.op not in E.PARAM_OPS:
            problems.append(f"{where}: unknown parameter operator {node.op!r}")
        elif isinstance(node, E.InState) and node.name not in states:
            problems.append(f"{where}: unknown state or group {node.name!r}")
        elif isinstance(node, E.InState) and node.side not in (None, *SIDES):
            problems.append(f"{where}: unknown side {node.side!r}")
        elif isinstance(node, E.PostcopyIs) and node.name not in profile.postcopy_states:
            problems.append(f"{where}: unknown PostcopyState {node.name!r}")
    return problems


def _layout_problems(profile: Profile) -> list[str]:
    """Layouts: unique names, known bound constants, fixed-size array items."""
    problems: list[str] = []
    wire = profile.wire
    names = [lay.name for lay in wire.layouts]
    if len(set(names)) != len(names):
        problems.append("wire layouts: duplicate names")
    every = list(wire.layouts) + [m.payload for m in (*wire.commands, *wire.return_path)
                                  if m.payload is not None]
    for lay in every:
        for f in lay.fields:
            for bound in (f.min, f.max):
                if isinstance(bound, str):
                    try:
                        wire.const(bound)
                    except KeyError:
                        problems.append(f"layout {lay.name}.{f.name}: unknown constant {bound!r}")
            if (f.kind == "array") != (f.item is not None):
                problems.append(f"layout {lay.name}.{f.name}: 'item' goes with kind 'array'")
            elif f.item is not None and f.item.size is None:
                problems.append(f"layout {lay.name}.{f.name}: array items must be fixed-size")
        if any(f.kind in ("rest", "array") for f in lay.fields[:-1]):
            problems.append(f"layout {lay.name}: only the last field may run to the end")
    return problems


def check_profile(profile: Profile) -> list[str]:
    """Every problem found in ``profile``; an empty list means consistent."""
    problems: list[str] = []
    names = profile.status_names
    if len(set(names)) != len(names):
        problems.append("duplicate status names")
    values = [s.value for s in profile.statuses]
    if values != list(range(len(values))):
        problems.append(f"status values must be 0..{len(values) - 1} in order, got {values}")
    for group in profile.groups:
        for member in group.members:
            if member not in names:
                problems.append(f"group {group.name}: unknown status {member!r}")
        if group.name in names:
            problems.append(f"group {group.name} shadows a status of the same name")
    for t in profile.terminal:
        if t not in names:
            problems.append(f"terminal: unknown status {t!r}")
    actors = {a.name for a in profile.actors}
    seen_ids: set[str] = set()
    for row in profile.transitions:
        where = f"transition {row.id}"
        if row.id in seen_ids:
            problems.append(f"{where}: duplicate id")
        seen_ids.add(row.id)
        if row.side not in SIDES:
            problems.append(f"{where}: unknown side {row.side!r}")
        if row.actor not in actors:
            problems.append(f"{where}: undeclared actor {row.actor!r}")
        if row.old != CURRENT and row.old not in names and row.old not in {
                g.name for g in profile.groups}:
            problems.append(f"{where}: old {row.old!r} is neither a status, a group nor 'current'")
        if row.new is None and row.emits not in names:
            problems.append(f"{where}: event-only row must emit a status, got {row.emits!r}")
        if row.new is not None and row.new not in names:
            problems.append(f"{where}: unknown new status {row.new!r}")
        if row.within is not None:
            if row.old != CURRENT:
                problems.append(f"{where}: 'within' is only for old='current' rows")
            for s in row.within:
                if s not in names:
                    problems.append(f"{where}: within names unknown status {s!r}")
        if row.retry and row.old_is_state:
            problems.append(f"{where}: a retried CAS must read its old state (group or current)")
        problems += _expr_problems(profile, where, row.guard)
    # Every status appears in a row of each side, or is declared unreachable there.
    declared = {(u.side, u.status) for u in profile.unreachable}
    for u in profile.unreachable:
        if u.status not in names:
            problems.append(f"unreachable: unknown status {u.status!r}")
    for side in SIDES:
        touched: set[str] = set()
        for row in profile.rows(side):
            touched |= profile.sources_of(row) if row.old != CURRENT or row.within else set()
            if row.new:
                touched.add(row.new)
        for status in names:
            if status not in touched and (side, status) not in declared:
                problems.append(f"{side}: status {status!r} is in no row and not declared "
                                f"unreachable")
            if status in touched and (side, status) in declared and any(
                    r.new == status for r in profile.rows(side)):
                problems.append(f"{side}: status {status!r} is declared unreachable but a row "
                                f"enters it")
    # PostcopyState handlers
    for h in profile.postcopy_handlers:
        for s in (*h.accepted, *(h.set_new_from or ()), *((h.new,) if h.new else ())):
            if s not in profile.postcopy_states:
                problems.append(f"postcopy handler {h.name}: unknown PostcopyState {s!r}")
        if h.op not in ("xchg", "check_then_set", "set"):
            problems.append(f"postcopy handler {h.name}: unknown op {h.op!r}")
    # capabilities, rules, parameters, commands
    caps = profile.capability_names()
    if len(set(caps)) != len(caps):
        problems.append("duplicate capability names")
    for rule in profile.cap_rules:
        problems += _expr_problems(profile, f"cap rule {rule.id}", rule.when)
    params = {p.name for p in profile.parameters}
    for p in profile.parameters:
        if p.type == "enum" and (not p.enum or p.default not in p.enum):
            problems.append(f"parameter {p.name}: enum default must be one of its values")
    for rule in profile.param_rules:
        if rule.param is not None and rule.param not in params:
            problems.append(f"param rule {rule.id}: unknown parameter {rule.param!r}")
        if rule.param is None and rule.when is None:
            problems.append(f"param rule {rule.id}: needs a parameter or a condition")
        if rule.when is not None:
            problems += _expr_problems(profile, f"param rule {rule.id}", rule.when)
    checks = ("node_alias_form", "node_alias_length", "node_name_unique", "node_alias_unique",
              "bitmap_alias_length", "bitmap_name_unique", "bitmap_alias_unique")
    for rule in profile.alias_map_rules:
        if rule.check not in checks:
            problems.append(f"alias map rule {rule.id}: unknown check {rule.check!r}")
        if rule.check.endswith("_length") and not rule.limit:
            problems.append(f"alias map rule {rule.id}: a length check needs a limit")
        if rule.check == "node_alias_form" and not rule.pattern:
            problems.append(f"alias map rule {rule.id}: a form check needs a pattern")
    if any(r.alias_map for r in profile.param_rules) and not profile.alias_map_rules:
        problems.append("a parameter rule runs the alias map but ALIAS_MAP_RULES is empty")
    for command in profile.commands:
        for pre in command.preconditions:
            problems += _expr_problems(profile, f"command {command.name} {pre.id}", pre.when)
            if pre.state_side not in SIDES:
                problems.append(f"command {command.name} {pre.id}: unknown side")
        if command.arg_types is not None and \
                tuple(a.name for a in command.arg_types) != command.args:
            problems.append(f"command {command.name}: arg_types "
                            f"{[a.name for a in command.arg_types]} do not match args "
                            f"{list(command.args)}")
        for flag in command.sets_flags:
            if flag not in {f.name for f in profile.flags}:
                problems.append(f"command {command.name}: sets undeclared flag {flag!r}")
    known_states = set(profile.status_names) | {g.name for g in profile.groups}
    for member in profile.migration_info:
        for state in member.states:
            if state not in known_states:
                problems.append(f"MIGRATION_INFO {member.name}: unknown state or group "
                                f"{state!r}")
        if member.cap is not None and member.cap not in profile.capability_names():
            problems.append(f"MIGRATION_INFO {member.name}: unknown capability {member.cap!r}")
    for item in profile.engine_unimplemented:
        if item.name not in profile.capability_names():
            problems.append(f"ENGINE_UNIMPLEMENTED {item.name}: unknown capability")
    problems += _layout_problems(profile)
    problems += _machine_problems(profile)
    problems += _command_event_problems(profile)
    for table_name, table in (("MIG_CMD", profile.wire.commands),
                              ("MIG_RP_MSG", profile.wire.return_path)):
        values = [m.value for m in table]
        if values != list(range(len(values))):
            problems.append(f"{table_name} values must be 0..n in order")
    return problems


def _command_event_problems(profile: Profile) -> list[str]:
    """A command's ``event`` must be a status an event-only row of the side
    its preconditions read emits (the trace checker reads the command from it)."""
    problems = []
    for command in profile.commands:
        if command.event is None:
            continue
        side = next((p.state_side for p in command.preconditions if p.state_side), "source")
        if not any(r.event_only and r.emits == command.event for r in profile.rows(side)):
            problems.append(f"command {command.name}: event {command.event!r} is emitted by "
                            f"no event-only {side} row")
        unknown = set(command.sets_flags) - {f.name for f in profile.flags}
        if unknown:
            problems.append(f"command {command.name}: sets unknown flags {sorted(unknown)}")
    return problems


def _machine_problems(profile: Profile) -> list[str]:
    """MACHINES: livemig's own first; section ids distinct; a QEMU machine's
    RAM section id not 0 (QEMU resolves id 0 to a device never loaded) and no
    livemig device section; every globalstate layout declared."""
    problems: list[str] = []
    if not profile.machines or profile.machines[0].qemu:
        problems.append("MACHINES must start with livemig's own (non-QEMU) machine type")
    layouts = {layout.name for layout in profile.wire.layouts}
    for m in profile.machines:
        ids = [m.ram_section_id, m.globalstate_section_id] + (
            [m.device_section_id] if m.device_section_id is not None else [])
        if len(set(ids)) != len(ids):
            problems.append(f"MACHINES {m.name}: section ids {ids} are not distinct")
        if m.qemu and (m.ram_section_id == 0 or m.device_section_id is not None):
            problems.append(f"MACHINES {m.name}: a QEMU machine needs a RAM section id other "
                            f"than 0 and no livemig device section")
        if m.globalstate_layout not in layouts:
            problems.append(f"MACHINES {m.name}: unknown layout {m.globalstate_layout!r}")
    return problems
