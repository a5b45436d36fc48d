"""h2-style totality: every (state, transition) either moves to the declared new
state or fails and leaves the state unchanged; the generated ``transitions``
machines agree with the strict CAS cells."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livemig.core import StatusCell, build_machine, machine_step
from livemig.errors import IllegalTransition
from livemig.spec import SIDES, load_profile, profile_names

CASES = [(load_profile(n), side) for n in profile_names() for side in SIDES]


@st.composite
def attempts(draw):
    profile, side = draw(st.sampled_from(CASES))
    state = draw(st.sampled_from(profile.status_names))
    row = draw(st.sampled_from(profile.rows(side)))
    old = draw(st.sampled_from(profile.status_names))
    return profile, side, state, row, old


@settings(max_examples=3000, deadline=None)
@given(attempts())
def test_every_cas_moves_as_declared_or_changes_nothing(case):
    profile, side, state, row, old = case
    cell = StatusCell(profile, side, initial=state)
    try:
        ok = cell.set_state(row.id, old, row.new if row.new else state)
    except IllegalTransition:
        assert cell.state == state
        assert row.event_only or row.store or old not in profile.sources_of(row)
        return
    if ok:
        assert old == state and cell.state == row.new
    else:
        assert old != state and cell.state == state


@settings(max_examples=2000, deadline=None)
@given(attempts())
def test_fire_moves_to_row_new_or_leaves_state(case):
    profile, side, state, row, _ = case
    cell = StatusCell(profile, side, initial=state)
    try:
        if row.event_only:
            cell.emit(row.id)
            assert cell.state == state
            return
        moved = cell.fire(row.id)
    except IllegalTransition:
        assert row.store and state not in profile.sources_of(row)
        assert cell.state == state
        return
    assert cell.state == (row.new if moved else state)
    assert moved == (state in profile.sources_of(row))


@pytest.mark.parametrize("profile,side", CASES, ids=[f"{p.name}-{s}" for p, s in CASES])
def test_machine_agrees_with_cell_on_every_pair(profile, side):
    for state in profile.status_names:
        for row in profile.rows(side):
            _, model = build_machine(profile, side, initial=state)
            cell = StatusCell(profile, side, initial=state)
            allowed = state in profile.sources_of(row)
            try:
                machine_after = machine_step(model, row.id)
            except IllegalTransition:
                machine_after = None
            if row.event_only:
                assert machine_after == (state if allowed else None)
                continue
            try:
                cell_moved = cell.fire(row.id)
            except IllegalTransition:
                cell_moved = False
            assert (machine_after is not None) == allowed == cell_moved, (state, row.id)
            if allowed:
                assert machine_after == cell.state == row.new


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from([load_profile(n) for n in profile_names()]), st.data())
def test_every_postcopy_handler_moves_as_declared_or_raises(profile, data):
    """Every (PostcopyState, handler): accepted -> the declared state; refused ->
    StreamError with QEMU's text, and the state is what QEMU leaves it in
    (the new value for exchange-then-check handlers, unchanged otherwise)."""
    from livemig.core import PostcopyCell
    from livemig.errors import StreamError

    state = data.draw(st.sampled_from(profile.postcopy_states))
    handler = data.draw(st.sampled_from(profile.postcopy_handlers))
    cell = PostcopyCell(profile, state)
    try:
        old = cell.handle(handler.name)
    except StreamError as exc:
        assert state not in handler.accepted
        assert f"({profile.postcopy_states.index(state)})" in exc.message
        assert cell.state == (handler.new if handler.op == "xchg" else state)
        return
    assert old == state and state in handler.accepted
    moves = handler.new is not None and (handler.set_new_from is None
                                         or state in handler.set_new_from)
    assert cell.state == (handler.new if moves else state)
