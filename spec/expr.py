"""Guard expressions: a small, closed language of data that both the runtime
(``livemig.core.guards``) and the Z3 encoder (``livemig.core.prove``) read.

Why data and not lambdas: the prover must see inside a guard to reason about
it, and a reviewer must be able to read it in a diff.  Every node is a frozen
dataclass, printable as the Python that builds it, and convertible to JSON.

Atoms
  Cap(name)            the capability is on (in the set being checked/used)
  WasCap(name)         the capability was on before the change being checked
  Flag(name)           a named boolean of the migration (spec FLAGS table)
  Host(name)           a host/build fact (spec HOST_FACTS table)
  Runstate(name)       the VM run state is ``name`` (e.g. "inmigrate")
  InState(name, side)  the migration status (of ``side``, or the side the
                       reader is about) is the state or in the group
  PostcopyIs(name)     the destination's PostcopyState is ``name``
  ArgState(name)       the status equals the value of command argument ``name``
  Arg(name)            a QMP command argument is present and true
  Param(name, op, v)   a migration parameter compared with a constant:
                       op is one of "eq", "ne", "nonempty"
Connectives: All(...), AnyOf(...), Not(x), and the constants TRUE / FALSE.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Union


@dataclass(frozen=True)
class Const:
    value: bool

    def __repr__(self) -> str:
        return "TRUE" if self.value else "FALSE"


TRUE = Const(True)
FALSE = Const(False)


@dataclass(frozen=True)
class Cap:
    name: str


@dataclass(frozen=True)
class WasCap:
    name: str


@dataclass(frozen=True)
class Flag:
    name: str


@dataclass(frozen=True)
class Host:
    name: str


@dataclass(frozen=True)
class Runstate:
    name: str


@dataclass(frozen=True)
class InState:
    name: str
    side: Any = None  # "source" / "destination"; None: the reader's side


@dataclass(frozen=True)
class PostcopyIs:
    name: str


@dataclass(frozen=True)
class ArgState:
    name: str


@dataclass(frozen=True)
class Arg:
    name: str


PARAM_OPS = ("eq", "ne", "nonempty")


@dataclass(frozen=True)
class Param:
    name: str
    op: str
    value: Any = None


@dataclass(frozen=True)
class Not:
    arg: "Expr"


@dataclass(frozen=True)
class All:
    args: tuple["Expr", ...]

    def __init__(self, *args: "Expr") -> None:
        object.__setattr__(self, "args", tuple(args))


@dataclass(frozen=True)
class AnyOf:
    args: tuple["Expr", ...]

    def __init__(self, *args: "Expr") -> None:
        object.__setattr__(self, "args", tuple(args))


Expr = Union[
    Const, Cap, WasCap, Flag, Host, Runstate, InState, PostcopyIs, ArgState, Arg, Param, Not, All, AnyOf
]
ATOMS = (Cap, WasCap, Flag, Host, Runstate, InState, PostcopyIs, ArgState, Arg, Param)


def walk(expr: Expr) -> Iterator[Expr]:
    """Every node of ``expr``, parents before children."""
    yield expr
    if isinstance(expr, Not):
        yield from walk(expr.arg)
    elif isinstance(expr, (All, AnyOf)):
        for arg in expr.args:
            yield from walk(arg)


def names(expr: Expr, kind: type) -> set[str]:
    """The names of every atom of one kind (e.g. ``Cap``) that ``expr`` reads."""
    return {node.name for node in walk(expr) if isinstance(node, kind)}


def to_json(expr: Expr) -> Any:
    """A JSON form: ``true``/``false``, ``["cap", name]``, ``["and", ...]``..."""
    if isinstance(expr, Const):
        return expr.value
    if isinstance(expr, Not):
        return ["not", to_json(expr.arg)]
    if isinstance(expr, All):
        return ["and", *[to_json(a) for a in expr.args]]
    if isinstance(expr, AnyOf):
        return ["or", *[to_json(a) for a in expr.args]]
    if isinstance(expr, Param):
        return ["param", expr.name, expr.op, expr.value]
    if isinstance(expr, InState) and expr.side:
        return ["instate", expr.name, expr.side]
    return [type(expr).__name__.lower(), expr.name]


def to_text(expr: Expr) -> str:
    """A compact human form, e.g. ``postcopy-ram & !compress``."""
    if isinstance(expr, Const):
        return "true" if expr.value else "false"
    if isinstance(expr, Not):
        inner = to_text(expr.arg)
        return f"!{inner}" if isinstance(expr.arg, ATOMS) else f"!({inner})"
    if isinstance(expr, (All, AnyOf)):
        if not expr.args:
            return "true" if isinstance(expr, All) else "false"
        sep = " & " if isinstance(expr, All) else " | "
        parts = []
        for arg in expr.args:
            text = to_text(arg)
            parts.append(f"({text})" if isinstance(arg, (All, AnyOf)) else text)
        return sep.join(parts)
    if isinstance(expr, Cap):
        return expr.name
    if isinstance(expr, WasCap):
        return f"was:{expr.name}"
    if isinstance(expr, Flag):
        return f"flag:{expr.name}"
    if isinstance(expr, Host):
        return f"host:{expr.name}"
    if isinstance(expr, Runstate):
        return f"runstate={expr.name}"
    if isinstance(expr, InState):
        who = f"{expr.side} " if expr.side else ""
        return f"{who}state in {expr.name}"
    if isinstance(expr, PostcopyIs):
        return f"postcopy-state={expr.name}"
    if isinstance(expr, ArgState):
        return f"state == arg:{expr.name}"
    if isinstance(expr, Arg):
        return f"arg:{expr.name}"
    if isinstance(expr, Param):
        if expr.op == "nonempty":
            return f"{expr.name} != ''"
        return f"{expr.name} {'==' if expr.op == 'eq' else '!='} {expr.value}"
    raise TypeError(f"not a guard expression: {expr!r}")
