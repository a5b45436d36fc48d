"""The invariant catalogue: what ``livemig prove`` must prove or refute.

Data only.  Each :class:`~livemig.spec.schema.Invariant` names a property
of the spec's transition system in a declarative form the prover
(``livemig.core.prove``) understands, and says per profile what the prover
must find.  Where QEMU itself breaks a property, the expectation is
"refuted" and the reason cites the QEMU function and the fact section
(shared/reference/qemu-migration-facts.md): the catalogue documents QEMU
honestly rather than the QEMU we would like.
"""
from livemig.spec.expr import All, AnyOf, Cap, Flag, InState, Not, PostcopyIs
from livemig.spec.schema import CrossSideInvariant, Expectation, Invariant, ProverModel

P30, P72 = "qemu-3.0", "qemu-7.2"


def _both(reason: str = "") -> tuple[Expectation, ...]:
    return (Expectation(P30, "proved", reason), Expectation(P72, "proved", reason))


def _refuted_both(reason: str) -> tuple[Expectation, ...]:
    return (Expectation(P30, "refuted", reason), Expectation(P72, "refuted", reason))


#: the source states of precopy (absent ones are skipped per profile)
_PRECOPY = ("setup", "active", "pre-switchover", "device", "wait-unplug")

MODEL = ProverModel(
    caps_command="migrate-set-capabilities",
    params_command="migrate-set-parameters",
    events_capability="events",
    runstates=(("source", ("running", "postmigrate")), ("destination", ("inmigrate",))),
)

INVARIANTS = (
    # ---- capabilities -------------------------------------------------
    Invariant(
        "no_postcopy_with_compress", "implies",
        "RAM postcopy never runs with compress: postcopy-active/paused/recover with "
        "postcopy-ram imply compress off",
        side="source",
        when=All(InState("in_postcopy_any"), Cap("postcopy-ram")), then=Not(Cap("compress")),
        expected=(
            Expectation(P30, "proved", "migrate_caps_check: \"Postcopy is not currently "
                        "compatible with compression\" and caps are frozen while running"),
            Expectation(P72, "refuted", "7.2's migrate_caps_check has no postcopy-ram/compress "
                        "rule: the pair is accepted before migrate and postcopy then runs "
                        "with compress (facts, introduction and §4.2)"),
        )),
    Invariant(
        "no_any_postcopy_with_compress", "implies",
        "no postcopy state at all (RAM or dirty-bitmaps postcopy) with compress on",
        side="source", when=InState("in_postcopy_any"), then=Not(Cap("compress")),
        expected=_refuted_both(
            "migrate_postcopy() is postcopy-ram || dirty-bitmaps: with dirty-bitmaps alone, "
            "migrate-start-postcopy is accepted (facts §6) and no rule forbids compress, so "
            "postcopy_start enters postcopy-active with compress on")),
    Invariant(
        "postcopy_needs_postcopy_capability", "implies",
        "the source is in a postcopy state only with postcopy-ram or dirty-bitmaps on",
        side="source", when=InState("in_postcopy_any"),
        then=AnyOf(Cap("postcopy-ram"), Cap("dirty-bitmaps")),
        expected=_both("migrate-start-postcopy refuses without them (facts §6) and the "
                       "capabilities cannot change while the migration runs")),
    Invariant(
        "pre_switchover_needs_pause_capability", "implies",
        "the source pauses in pre-switchover only with pause-before-switchover on",
        side="source", when=InState("pre-switchover"), then=Cap("pause-before-switchover"),
        expected=_both()),
    Invariant(
        "source_colo_needs_x_colo", "implies",
        "the source is in colo only with x-colo on", side="source", when=InState("colo"),
        then=Cap("x-colo"),
        expected=_refuted_both(
            "migrate-set-capabilities is refused only while setup_or_active (3.0 seed "
            "qmp_migrate_set_capabilities) / running (7.2), neither of which contains colo "
            "(facts §1.2, §4): x-colo can be switched off during COLO")),
    Invariant(
        "source_caps_satisfy_rules", "caps_satisfy_rules",
        "every capability set the source ever holds passed the profile's rules",
        side="source", expected=_both()),
    Invariant(
        "destination_caps_satisfy_rules", "caps_satisfy_rules",
        "every capability set the destination ever holds passed the profile's rules",
        side="destination", expected=_both()),
    # ---- postcopy pause / recovery -------------------------------------
    Invariant(
        "source_paused_entered_only_from_active_or_recover", "entered_only_from",
        "the source enters postcopy-paused only from postcopy-active or postcopy-recover",
        side="source", state="postcopy-paused",
        states=("postcopy-active", "postcopy-recover"), expected=_both()),
    Invariant(
        "destination_paused_entered_only_from_active_or_recover", "entered_only_from",
        "the destination enters postcopy-paused only from postcopy-active or postcopy-recover",
        side="destination", state="postcopy-paused",
        states=("postcopy-active", "postcopy-recover"), expected=_both()),
    Invariant(
        "source_recover_entered_only_from_paused", "entered_only_from",
        "the source enters postcopy-recover only from postcopy-paused",
        side="source", state="postcopy-recover", states=("postcopy-paused",), expected=_both()),
    Invariant(
        "destination_recover_entered_only_from_paused", "entered_only_from",
        "the destination enters postcopy-recover only from postcopy-paused",
        side="destination", state="postcopy-recover", states=("postcopy-paused",),
        expected=_both()),
    Invariant(
        "source_recover_leads_only_to_active_or_paused", "leads_only_to",
        "the source leaves postcopy-recover only to postcopy-active or postcopy-paused",
        side="source", state="postcopy-recover",
        states=("postcopy-active", "postcopy-paused"),
        expected=_refuted_both(
            "migrate_fd_cancel accepts a cancel in any setup_or_active/running state, "
            "postcopy-recover included: recover -> cancelling (facts §1.3, §1.7; master "
            "refuses since 10.0)")),
    Invariant(
        "destination_recover_leads_only_to_active_or_paused", "leads_only_to",
        "the destination leaves postcopy-recover only to postcopy-active or postcopy-paused",
        side="destination", state="postcopy-recover",
        states=("postcopy-active", "postcopy-paused"), expected=_both()),
    Invariant(
        "source_no_precopy_after_postcopy", "never_after",
        "once the source was postcopy-active it never returns to a precopy state until a "
        "new migrate", side="source", state="postcopy-active", states=_PRECOPY,
        expected=_both()),
    Invariant(
        "destination_no_precopy_after_postcopy", "never_after",
        "once the destination was postcopy-active it never returns to active",
        side="destination", state="postcopy-active", states=("setup", "active"),
        expected=_both()),
    Invariant(
        "postcopy_state_monotone", "postcopy_monotone",
        "PostcopyState only moves forward NONE -> ADVISE -> (DISCARD) -> LISTENING -> "
        "RUNNING -> END", expected=_both(
            "xchg-then-check handlers still store forward values; the stream order "
            "is the handler table's order (abstraction, see livemig.core.prove.encode)")),
    Invariant(
        "destination_paused_leads_only_to_recover", "leads_only_to",
        "a paused destination waits for recovery: it leaves postcopy-paused only to "
        "postcopy-recover", side="destination", state="postcopy-paused",
        states=("postcopy-recover",),
        expected=_both("no destination row fails or completes from postcopy-paused; a "
                       "cancelled source leaves it hanging there (facts §1.7)")),
    Invariant(
        "destination_pauses_only_when_running", "implies",
        "the destination is postcopy-paused only once PostcopyState reached RUNNING",
        side="destination", when=InState("postcopy-paused"),
        then=AnyOf(PostcopyIs("RUNNING"), PostcopyIs("END")),
        expected=_both("postcopy_pause_incoming needs PostcopyState RUNNING (facts §1.4, §3)")),
    Invariant(
        "source_recovers_only_after_resume", "implies",
        "the source is in postcopy-recover only after `migrate resume=true`",
        side="source", when=InState("postcopy-recover"), then=Flag("resume_requested"),
        expected=_both()),
    Invariant(
        "destination_recovers_only_after_migrate_recover", "implies",
        "the destination is in postcopy-recover only after migrate-recover",
        side="destination", when=InState("postcopy-recover"), then=Flag("recover_listening"),
        expected=_both()),
    Invariant(
        "device_only_after_continue", "implies",
        "the source reaches device (after pre-switchover) only after migrate-continue",
        side="source", when=InState("device"), then=Flag("continue_posted"),
        expected=_both()),
    # ---- cancel ----------------------------------------------------------
    Invariant(
        "cancelling_leads_only_to_cancelled", "leads_only_to",
        "a cancelling source ends only in cancelled", side="source", state="cancelling",
        states=("cancelled",),
        expected=(
            Expectation(P30, "refuted", "3.0 migration_completion CASes from the state read "
                        "at entry (cancelling -> completed/failed), and migration_detect_error "
                        "turns a cancel's shutdown error into failed"),
            Expectation(P72, "refuted", "7.2 migration_completion jumps to fail with "
                        "cancelling as OLD (cancelling -> failed, facts §1.3); postcopy_start's "
                        "preempt failure and migrate_fd_connect's return-path failure are "
                        "wildcards too"),
        )),
    Invariant(
        "failed_never_overwrites_cancelling", "never_overwrites",
        "a cancel is never turned into failed", side="source", state="cancelling",
        states=("failed",),
        expected=_refuted_both(
            "wildcard/read-then-CAS call sites pass the state they read: migration_completion "
            "(7.2 §1.3), migration_detect_error (3.0), migrate_fd_connect's return-path "
            "failure (§1.3 `*` -> failed)")),
    Invariant(
        "completed_never_overwrites_cancelling", "never_overwrites",
        "a cancel is never turned into completed", side="source", state="cancelling",
        states=("completed",),
        expected=(
            Expectation(P30, "refuted", "3.0 migration_completion has no branch for a cancel "
                        "that landed before entry: cancelling -> completed"),
            Expectation(P72, "proved", "7.2 migration_completion fails instead of completing "
                        "when it finds cancelling at entry"),
        )),
    Invariant(
        "cancelled_entered_only_from_cancelling", "entered_only_from",
        "the source is cancelled only after cancelling", side="source", state="cancelled",
        states=("cancelling",), expected=_both()),
    # ---- starting ----------------------------------------------------------
    Invariant(
        "setup_entered_only_from_none", "entered_only_from",
        "an outgoing migration starts only from none (after migrate_init's reset)",
        side="source", state="setup", states=("none",), expected=_both()),
    Invariant(
        "source_active_entered_only_after_setup", "entered_only_from",
        "the source is active only after setup (or the failover-unplug wait)",
        side="source", state="active", states=("setup", "wait-unplug"), expected=_both()),
    Invariant(
        "destination_active_entered_only_from_none", "entered_only_from",
        "the destination starts loading only from none", side="destination", state="active",
        states=("none",), expected=_both()),
    Invariant(
        "destination_postcopy_active_needs_listening", "implies",
        "the destination is postcopy-active only once PostcopyState reached LISTENING",
        side="destination", when=InState("postcopy-active"),
        then=AnyOf(PostcopyIs("LISTENING"), PostcopyIs("RUNNING"), PostcopyIs("END")),
        expected=_both()),
    Invariant(
        "source_colo_entered_only_from_active", "entered_only_from",
        "COLO starts only at the end of precopy", side="source", state="colo",
        states=("active",), expected=_both()),
    Invariant(
        "wait_unplug_entered_only_from_setup", "entered_only_from",
        "the failover-unplug wait happens only at the start (qemu_savevm_wait_unplug after "
        "setup); absent from qemu-3.0", side="source", state="wait-unplug",
        states=("setup",), expected=_both()),
    Invariant(
        "source_none_entered_only_from_idle", "entered_only_from",
        "the source returns to none only from an idle state (migrate_init's reset)",
        side="source", state="none", states=("cancelled", "completed", "failed"),
        expected=_both()),
    Invariant(
        "destination_never_returns_to_none", "entered_only_from",
        "an incoming migration is single-use: the destination never returns to none",
        side="destination", state="none", states=(), expected=_both()),
    # ---- terminal states, events ----------------------------------------
    Invariant(
        "terminal_states_stay", "terminal_stays",
        "completed, failed and cancelled stay put until a new migrate (migrate_init's store)",
        expected=_both()),
    Invariant(
        "source_events_are_cas", "events_are_cas",
        "every source MIGRATION event is a successful CAS of a row to the event's status",
        side="source", expected=_both()),
    Invariant(
        "source_events_change_state", "events_change_state",
        "every source MIGRATION event reports a new status (no repeated event)",
        side="source",
        expected=(
            Expectation(P30, "proved", "3.0's cancel loop stops outside setup_or_active, "
                        "which has no cancelling"),
            Expectation(P72, "refuted", "code reading: 7.2 migrate_fd_cancel reads "
                        "cancelling (migration_is_running includes it) and CASes cancelling "
                        "-> cancelling, which succeeds, and migrate_set_state emits on every "
                        "successful CAS (facts §1.2, §2): a second migrate_cancel repeats "
                        "MIGRATION{cancelling}"),
        )),
    Invariant(
        "destination_events_are_cas", "events_are_cas",
        "every destination MIGRATION event is a successful CAS of a row to the event's status",
        side="destination",
        expected=_refuted_both(
            "qemu_start_incoming_migration sends MIGRATION{setup} unconditionally with no "
            "state change (row dst.incoming.setup_event; observed on 7.2 during "
            "migrate-recover while the state stays postcopy-paused, facts §1.4)")),
    # ---- whole-graph checks -----------------------------------------------
    Invariant(
        "every_status_reachable", "reachable",
        "every status is reachable on its side, and every status the profile declares "
        "unreachable there is not", expected=_both()),
    Invariant(
        "no_dead_rows", "no_dead_rows",
        "every transition row succeeds in some reachable state", expected=_both()),
    Invariant(
        "source_no_trap", "no_trap",
        "the source never reaches a non-terminal status that no row can ever leave",
        side="source",
        expected=_refuted_both(
            "migrate_cancel while postcopy-paused: the migration thread sleeps on "
            "postcopy_pause_sem, which migrate_fd_cancel never posts, so the source stays in "
            "cancelling forever (observed on 7.2, facts §1.7; same code in the 3.0 seed)")),
    Invariant(
        "destination_no_trap", "no_trap",
        "the destination never reaches a non-terminal status that no row can ever leave",
        side="destination", expected=_both()),
)

#: properties across the two sides (see CrossSideInvariant); the prover's
#: models are per side, so these are checked on the logs of real runs
CROSS_SIDE = (
    CrossSideInvariant(
        "source_completes_only_after_destination_loaded",
        "with a return path, the source reaches completed only after the destination "
        "reached completed in the same migration (the destination's SHUT 0 follows its "
        "completed; no false success)",
        side="source", state="completed", peer="destination", peer_state="completed",
        start="setup", caps=("return-path", "postcopy-ram"),
        reason="migration_completion -> await_return_path_close_on_source fails the "
               "migration when source_return_path_thread marked the return path bad or it "
               "closed without SHUT 0; the destination sends SHUT 0 from its completion BH "
               "(facts §7.2)"),
)
