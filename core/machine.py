"""State machines for each side, generated from the spec rows with the
``transitions`` library (its thread-safe ``LockedMachine``).

Each spec row becomes one trigger named by its transition id, with one
transition per status the row can fire from (``profile.sources_of``).  Plain
store rows are transitions too; event-only rows are internal transitions (no
state change).  Guards are not attached: the machine answers "may this row
move the state from here, and to where?" — the same question the strict CAS
cell answers, which a property test checks for every (status, row) pair.
"""
from __future__ import annotations

from typing import Any, Optional

from transitions import MachineError
from transitions.extensions import LockedMachine

from livemig.errors import IllegalTransition
from livemig.spec.schema import Profile


class SideModel:
    """The model object a generated machine drives; ``state`` is the status."""

    state: str

    def __init__(self, side: str) -> None:
        self.side = side


def build_machine(profile: Profile, side: str, initial: str = "none",
                  model: Optional[Any] = None) -> tuple[LockedMachine, Any]:
    """A LockedMachine for ``side`` of ``profile`` and its model."""
    model = model if model is not None else SideModel(side)
    machine = LockedMachine(model=model, states=list(profile.status_names), initial=initial,
                            auto_transitions=False, ignore_invalid_triggers=False,
                            model_attribute="state")
    for row in profile.rows(side):
        for source in sorted(profile.sources_of(row)):
            machine.add_transition(trigger=row.id, source=source,
                                   dest=None if row.event_only else row.new)
    return machine, model


def machine_step(model: Any, row_id: str) -> str:
    """Fire ``row_id`` on a generated machine's model; IllegalTransition if not allowed here."""
    try:
        model.trigger(row_id)
    except (MachineError, AttributeError) as exc:
        raise IllegalTransition(f"{row_id} cannot fire from {model.state!r}: {exc}") from None
    return model.state
