"""QMP command preconditions, read from the profile's COMMANDS table.

``check_command`` evaluates a command's preconditions in QEMU's order and
raises :class:`CommandError` with QEMU's text for the first that fails.  It
changes nothing: callers apply the command's effect only after it returns.
"""
from __future__ import annotations

from typing import Any, Mapping

from livemig.core.guards import GuardEnv, evaluate
from livemig.errors import CommandError
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
