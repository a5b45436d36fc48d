"""Evaluate the spec's guard expressions at run time.

The Z3 encoder reads the same expressions symbolically; this module is the
concrete reading.  An atom whose input is missing from the environment
evaluates to False (a flag nobody set is off), except that an unknown name
is a :class:`SpecError`: a typo must not silently read as "off".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from livemig.errors import SpecError
from livemig.spec import expr as E
from livemig.spec.schema import Profile


@dataclass
class GuardEnv:
    """Everything a guard may read.

    ``states`` maps side -> current status; ``side`` is whose status a bare
    ``InState`` reads.  ``caps`` is the set being checked or in force,
    ``was_caps`` the set before the change being checked.
    """

    profile: Profile
    side: str = "source"
    states: Mapping[str, str] = field(default_factory=dict)
    caps: Mapping[str, bool] = field(default_factory=dict)
    was_caps: Mapping[str, bool] = field(default_factory=dict)
    flags: Mapping[str, bool] = field(default_factory=dict)
    host: Optional[Mapping[str, bool]] = None
    runstate: str = "running"
    args: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    postcopy_state: str = "NONE"

    def host_fact(self, name: str) -> bool:
        facts = self.host if self.host is not None else self.profile.host_defaults()
        if name not in facts and name not in self.profile.host_defaults():
            raise SpecError(f"unknown host fact {name!r}")
        return bool(facts.get(name, self.profile.host_defaults()[name]))


def evaluate(expr: E.Expr, env: GuardEnv) -> bool:
    """The truth value of ``expr`` in ``env``."""
    p = env.profile
    if isinstance(expr, E.Const):
        return expr.value
    if isinstance(expr, E.Not):
        return not evaluate(expr.arg, env)
    if isinstance(expr, E.All):
        return all(evaluate(a, env) for a in expr.args)
    if isinstance(expr, E.AnyOf):
        return any(evaluate(a, env) for a in expr.args)
    if isinstance(expr, (E.Cap, E.WasCap)):
        if expr.name not in p.capability_names():
            raise SpecError(f"unknown capability {expr.name!r} in a guard")
        source = env.caps if isinstance(expr, E.Cap) else env.was_caps
        return bool(source.get(expr.name, False))
    if isinstance(expr, E.Flag):
        return bool(env.flags.get(expr.name, False))
    if isinstance(expr, E.Host):
        return env.host_fact(expr.name)
    if isinstance(expr, E.Runstate):
        return env.runstate == expr.name
    if isinstance(expr, E.InState):
        side = expr.side or env.side
        return env.states.get(side, "none") in p.states_of(expr.name)
    if isinstance(expr, E.PostcopyIs):
        return env.postcopy_state == expr.name
    if isinstance(expr, E.ArgState):
        return env.states.get(env.side, "none") == env.args.get(expr.name)
    if isinstance(expr, E.Arg):
        return bool(env.args.get(expr.name, False))
    if isinstance(expr, E.Param):
        value = env.params.get(expr.name)
        if expr.op == "eq":
            return value == expr.value
        if expr.op == "ne":
            return value != expr.value
        if expr.op == "nonempty":
            return bool(value)
        raise SpecError(f"unknown parameter operator {expr.op!r}")
    raise SpecError(f"not a guard expression: {expr!r}")
