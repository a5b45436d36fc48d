"""QMP command preconditions and arguments, read from the profile's COMMANDS table.

``check_arguments`` is QMP's input visitor for a command's arguments (the
members' QAPI types in the spec), raising :class:`ParameterError` with QEMU's
text; ``check_command`` then evaluates the command's preconditions in QEMU's
order and raises :class:`CommandError` with QEMU's text for the first that
fails.  Both change nothing: callers apply the command's effect only after
they return.
"""
from __future__ import annotations

from typing import Any, Mapping

from livemig.core.guards import GuardEnv, evaluate
from livemig.errors import CommandError, ParameterError
from livemig.spec.schema import Profile


def _fill(text: str, fill: str | None, env: GuardEnv, side: str,
          args: Mapping[str, Any]) -> str:
    if fill is None:
        return text
    if fill == "status":
        value = env.states.get(side, "none")
    elif fill.startswith("arg:"):
        value = args.get(fill[4:], "")
    else:
        value = ""
    return text.replace("%s", str(value), 1)


def check_command(profile: Profile, name: str, args: Mapping[str, Any], env: GuardEnv) -> None:
    """Raise CommandError (QEMU's text, ``.rule`` = precondition id) if ``name`` is refused."""
    try:
        command = profile.command(name)
    except KeyError:
        raise CommandError(f"The command {name} has not been found") from None
    for pre in command.preconditions:
        local = GuardEnv(
            profile=env.profile, side=pre.state_side, states=env.states, caps=env.caps,
            was_caps=env.was_caps, flags=env.flags, host=env.host, runstate=env.runstate,
            args=args, params=env.params, postcopy_state=env.postcopy_state)
        if evaluate(pre.when, local):
            error = CommandError(_fill(pre.error, pre.fill, local, pre.state_side, args))
            error.rule = pre.id  # type: ignore[attr-defined]
            raise error


def check_arguments(profile: Profile, name: str, args: Any) -> dict:
    """QMP's input visitor for a spec command's arguments, before its body
    runs: members in schema order (missing, wrong type, an enum value that
    does not exist), then members the command does not have.  Raises
    ParameterError with QEMU's text; returns the arguments as a dict."""
    from livemig.core import qapi

    command = profile.command(name)
    if command.arg_types is None:
        return dict(args or {})  # checked by its own checker (parameters)
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ParameterError(profile.qapi_error("arguments_not_object"))
    for member in command.arg_types:
        if member.name not in args:
            if member.required:
                qapi.require(profile, "", args, member.name)
            continue
        value = args[member.name]
        if member.type == "str":
            qapi.visit_str(profile, member.name, value)
        elif member.type == "bool":
            qapi.visit_bool(profile, member.name, value)
        elif member.type == "array":
            qapi.visit_list(profile, member.name, value)
        elif member.type == "MigrationStatus":
            qapi.visit_enum(profile, member.name, value, profile.status_names)
        else:  # a type the schema allows but this checker does not know: a spec bug
            raise ValueError(f"{name}: unknown QAPI type {member.type!r}")
    qapi.check_no_extra(profile, "", args, tuple(a.name for a in command.arg_types))
    return dict(args)
