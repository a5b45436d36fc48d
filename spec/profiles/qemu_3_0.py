"""Profile ``qemu-3.0``: QEMU of the postcopy-recovery era (the seed files).

Source: the seed ``migration.c`` (RECV_BITMAP, postcopy_pause) and QEMU
v3.0.0's migration.c where the seed is mid-series (RESUME_ACK, postcopy
resume).  Every table is a literal; the loader resolves nothing here.

Notable for the proofs: 3.0's migrate_caps_check refuses postcopy-ram with
compress, and its migration_completion has no branch for a state other than
active/postcopy-active at entry, so a cancel that lands just before
completion can be overwritten (cancelling -> completed/failed).
"""
import dataclasses

from livemig.spec.expr import (
    AnyOf, All, Arg, ArgState, Cap, Flag, Host, InState, Not, PostcopyIs, Runstate, TRUE, WasCap,
)
from livemig.spec.profiles.wire import WIRE
from livemig.spec.schema import (
    CURRENT, Actor, ArgType, BitmapSync, MachineType, CapRule, Capability, Command, FlagDecl, Group, HostFact, InfoField,
    Parameter,
    ParamRef, ParamRule, PostcopyHandler, Precondition, Status, Transition, Unimplemented,
    Unreachable,
)

NAME = "qemu-3.0"
TITLE = "QEMU 3.0 (seed era: postcopy pause/recovery, RECV_BITMAP)"
EXTENDS = None
SOURCES = (
    "shared/seeds/qemu-ar7-migration-migration.c-recv-bitmap.txt",
    "shared/seeds/qemu-migration-postcopy-ram.c.txt",
    "shared/seeds/qemu-e2k-migration-savevm.h.txt",
    "qemu v3.0.0 migration/migration.c, migration/savevm.c, qapi/migration.json",
)

# ---------------------------------------------------------------- statuses
STATUSES = (
    Status("none", 0, "no migration yet (or reset by migrate_init)"),
    Status("setup", 1, "outgoing channel being set up"),
    Status("cancelling", 2, "cancel requested, cleanup pending"),
    Status("cancelled", 3, "cancelled: terminal until the next migrate"),
    Status("active", 4, "precopy iterating"),
    Status("postcopy-active", 5, "guest runs on the destination, pages pulled"),
    Status("postcopy-paused", 6, "postcopy channel broken, waiting for recovery"),
    Status("postcopy-recover", 7, "recovery handshake in progress"),
    Status("completed", 8, "done: terminal until the next migrate"),
    Status("failed", 9, "failed: terminal until the next migrate"),
    Status("colo", 10, "COLO checkpointing (long-lived)"),
    Status("pre-switchover", 11, "paused before switchover, waiting for migrate-continue"),
    Status("device", 12, "final device-state transfer after pre-switchover"),
)

GROUPS = (
    Group("setup_or_active",
          ("active", "postcopy-active", "postcopy-paused", "postcopy-recover", "setup",
           "pre-switchover", "device"),
          "migration_is_setup_or_active",
          "guard of migrate-set-capabilities and migrate_fd_cancel in 3.0"),
    Group("running",
          ("active", "postcopy-active", "postcopy-paused", "postcopy-recover", "setup",
           "pre-switchover", "device", "cancelling", "colo"),
          "qmp_migrate: migration_is_setup_or_active || cancelling || colo",
          "3.0 has no migration_is_running; this is the guard of migrate"),
    Group("idle", ("none", "cancelled", "completed", "failed"), "migration_is_idle"),
    Group("is_active", ("active", "postcopy-active"), "migration_thread loop condition",
          "named is_active: a group may not shadow the status `active`"),
    Group("has_failed", ("cancelled", "failed"), "migration_has_failed"),
    Group("in_postcopy", ("postcopy-active",), "migration_in_postcopy",
          "3.0 counts only postcopy-active"),
    Group("in_postcopy_any", ("postcopy-active", "postcopy-paused", "postcopy-recover"),
          "(derived) any postcopy state", "used by the invariant catalogue"),
)

TERMINAL = ("completed", "failed", "cancelled")

ACTORS = (
    Actor("monitor", "a QMP/HMP command in the main loop"),
    Actor("main_loop", "main-loop callbacks: outgoing connect, incoming accept"),
    Actor("migration_thread", "the source's migration thread"),
    Actor("return_path_thread", "the source's return-path reader thread"),
    Actor("cleanup_bh", "the source's cleanup bottom half (migrate_fd_cleanup)"),
    Actor("incoming_coroutine", "the destination's process_incoming_migration_co"),
    Actor("incoming_bh", "the destination's process_incoming_migration_bh"),
    Actor("listen_thread", "the destination's postcopy listen (load) thread"),
    Actor("colo_thread", "COLO primary/secondary thread and failover"),
)

FLAGS = (
    FlagDecl("start_postcopy", "command", "migrate-start-postcopy was issued",
             set_by="migrate-start-postcopy"),
    FlagDecl("continue_posted", "command", "migrate-continue posted pause_sem",
             set_by="migrate-continue"),
    FlagDecl("resume_requested", "command", "migrate resume=true was issued",
             set_by="migrate", set_when=Arg("resume")),
    FlagDecl("recover_listening", "command", "migrate-recover is listening",
             set_by="migrate-recover"),
    FlagDecl("incoming_started", "command", "migrate-incoming already ran (the 'once' flag)",
             set_by="migrate-incoming"),
    FlagDecl("incoming_deferred", "environment", "started with -incoming defer"),
    FlagDecl("uri_invalid", "environment", "migrate's URI has no known protocol"),
    FlagDecl("connect_error", "environment", "outgoing transport failed to connect"),
    FlagDecl("rp_open_error", "environment", "the return path could not be opened"),
    FlagDecl("multifd_setup_error", "environment", "multifd send setup failed"),
    FlagDecl("converged", "environment",
             "the migration thread decided to complete (pending <= threshold)"),
    FlagDecl("completion_error", "environment",
             "vm_stop, device save, return-path or file error during completion"),
    FlagDecl("postcopy_start_error", "environment", "postcopy_start took its fail path"),
    FlagDecl("stream_error", "environment", "the outgoing stream has a file error"),
    FlagDecl("stream_eio", "environment", "that file error is -EIO (a broken channel)"),
    FlagDecl("resume_failed", "environment", "postcopy_do_resume failed"),
    FlagDecl("resume_ack", "environment", "RESUME_ACK with value 1 arrived"),
    FlagDecl("load_error", "environment", "the destination's load failed"),
    FlagDecl("recover_channel", "environment", "a new main channel arrived after migrate-recover"),
    FlagDecl("colo_enabled", "environment", "the source asked for COLO (MIG_CMD_ENABLE_COLO)"),
    FlagDecl("colo_failover", "environment", "COLO failover was triggered"),
    FlagDecl("snapshot_error", "environment", "savevm failed"),
    FlagDecl("postcopy_pause_waiting", "thread",
             "the migration thread sleeps on postcopy_pause_sem in postcopy_pause(); only "
             "migrate_fd_connect's resume path posts it (migrate_fd_cancel does not), so "
             "while it sleeps the thread reaches neither migration_completion nor the "
             "cleanup BH (facts §1.7: cancel while postcopy-paused stays in cancelling)",
             set_by="src.postcopy_pause", cleared_by=("src.fd_connect.resume",)),
)

#: the migration thread is not asleep in postcopy_pause() (see postcopy_pause_waiting)
_THREAD_AWAKE = Not(Flag("postcopy_pause_waiting"))

# ------------------------------------------------------------- transitions
_POSTCOPY_CAPABLE = AnyOf(Cap("postcopy-ram"), Cap("dirty-bitmaps"))

TRANSITIONS = (
    # --- source: starting -------------------------------------------------
    Transition("src.migrate_init.reset", "source", "monitor", "migrate_init",
               "idle", "none", store=True,
               doc="plain store s->state = NONE before every new migrate or savevm: no CAS, no event"),
    Transition("src.migrate_init.setup", "source", "monitor", "migrate_init",
               "none", "setup"),
    Transition("src.qmp_migrate.bad_uri", "source", "monitor", "qmp_migrate",
               "setup", "failed", guard=Flag("uri_invalid"),
               doc="\"Parameter 'uri' expects a valid migration protocol\""),
    Transition("src.fd_error", "source", "main_loop", "migrate_fd_error",
               "setup", "failed", guard=Flag("connect_error"),
               doc="a no-op for a resume: the state is postcopy-paused"),
    Transition("src.fd_connect.rp_failed", "source", "main_loop", "migrate_fd_connect",
               CURRENT, "failed",
               guard=All(AnyOf(Cap("postcopy-ram"), Cap("return-path")), Flag("rp_open_error")),
               within=("setup", "cancelling", "postcopy-paused"),
               doc="\"Unable to open return-path for postcopy\"; reads s->state, so a "
                   "cancel that raced in is overwritten"),
    Transition("src.fd_connect.resume", "source", "main_loop", "migrate_fd_connect",
               "postcopy-paused", "postcopy-recover", guard=Flag("resume_requested"),
               doc="the resume channel connected; wakes the paused migration thread"),
    Transition("src.fd_connect.multifd_failed", "source", "main_loop", "migrate_fd_connect",
               "setup", "failed", guard=Flag("multifd_setup_error")),
    Transition("src.thread.active", "source", "migration_thread", "migration_thread",
               "setup", "active"),
    # --- source: cancel ---------------------------------------------------
    Transition("src.cancel", "source", "monitor", "migrate_fd_cancel",
               "setup_or_active", "cancelling", retry=True,
               doc="loops read-then-CAS until cancelling; stops if no longer setup_or_active"),
    Transition("src.cleanup.cancelled", "source", "cleanup_bh", "migrate_fd_cleanup",
               "cancelling", "cancelled", guard=_THREAD_AWAKE,
               doc="the cleanup BH is scheduled when the migration thread exits; a thread "
                   "asleep in postcopy_pause never exits (facts §1.7)"),
    # --- source: postcopy switch ------------------------------------------
    Transition("src.postcopy_start.switch", "source", "migration_thread", "postcopy_start",
               "active", "postcopy-active",
               guard=All(_POSTCOPY_CAPABLE, Flag("start_postcopy"),
                         Not(Cap("pause-before-switchover"))),
               doc="before the VM is stopped"),
    Transition("src.postcopy_start.pre_switchover", "source", "migration_thread",
               "migration_maybe_pause", "active", "pre-switchover",
               guard=All(_POSTCOPY_CAPABLE, Flag("start_postcopy"), Cap("pause-before-switchover"))),
    Transition("src.postcopy_start.continue", "source", "migration_thread",
               "migration_maybe_pause", "pre-switchover", "postcopy-active",
               guard=All(_POSTCOPY_CAPABLE, Flag("start_postcopy"), Flag("continue_posted"))),
    Transition("src.postcopy_start.stream_error", "source", "migration_thread", "postcopy_start",
               "postcopy-active", "failed", guard=Flag("stream_error"),
               doc="\"postcopy_start: Migration stream errored\" after the package"),
    Transition("src.postcopy_start.fail", "source", "migration_thread", "postcopy_start",
               "postcopy-active", "failed", guard=Flag("postcopy_start_error"),
               doc="the fail path; a silent no-op when the state is not postcopy-active"),
    # --- source: completion -----------------------------------------------
    Transition("src.completion.pre_switchover", "source", "migration_thread",
               "migration_maybe_pause", "active", "pre-switchover",
               guard=All(Flag("converged"), Cap("pause-before-switchover"))),
    Transition("src.completion.device", "source", "migration_thread", "migration_maybe_pause",
               "pre-switchover", "device", guard=Flag("continue_posted")),
    Transition("src.completion.completed", "source", "migration_thread", "migration_completion",
               CURRENT, "completed",
               guard=All(Flag("converged"), Not(Cap("x-colo")), _THREAD_AWAKE),
               within=("active", "postcopy-active", "device", "cancelling"),
               doc="CAS from the state read at entry; 3.0 has no branch for a cancel that "
                   "landed before entry, so cancelling -> completed can happen"),
    Transition("src.completion.failed", "source", "migration_thread", "migration_completion",
               CURRENT, "failed", guard=All(Flag("completion_error"), _THREAD_AWAKE),
               within=("active", "postcopy-active", "device", "cancelling"),
               doc="CAS from the state read at entry; cancelling -> failed when the cancel "
                   "shut the file before completion looked"),
    Transition("src.colo.start", "source", "migration_thread", "migrate_start_colo_process",
               "active", "colo", guard=All(Flag("converged"), Cap("x-colo"))),
    Transition("src.colo.failover", "source", "colo_thread", "primary_vm_do_failover",
               "colo", "completed", guard=Flag("colo_failover")),
    # --- source: errors and postcopy pause --------------------------------
    Transition("src.postcopy_pause", "source", "migration_thread", "postcopy_pause",
               CURRENT, "postcopy-paused",
               guard=AnyOf(All(Flag("stream_error"), Flag("stream_eio")), Flag("resume_failed")),
               within=("postcopy-active", "postcopy-recover"),
               doc="migrate_set_state(&s->state, s->state, PAUSED); loops, so a failed "
                   "resume gives recover -> paused"),
    Transition("src.detect_error.failed", "source", "migration_thread", "migration_detect_error",
               CURRENT, "failed",
               guard=All(Flag("stream_error"),
                         Not(All(InState("postcopy-active"), Flag("stream_eio"))), _THREAD_AWAKE),
               within=("active", "postcopy-active", "cancelling"),
               doc="3.0 has no cancelling check here: a cancel's shutdown error turns "
                   "cancelling into failed"),
    Transition("src.rp.resume_ack", "source", "return_path_thread",
               "migrate_handle_rp_resume_ack", "postcopy-recover", "postcopy-active",
               guard=Flag("resume_ack")),
    Transition("src.savevm.completed", "source", "monitor", "qemu_savevm_state",
               "setup", "completed", guard=Not(Flag("snapshot_error")),
               doc="HMP savevm reuses the migration state"),
    Transition("src.savevm.failed", "source", "monitor", "qemu_savevm_state",
               "setup", "failed", guard=Flag("snapshot_error")),
    # --- destination ------------------------------------------------------
    Transition("dst.incoming.setup_event", "destination", "monitor",
               "qemu_start_incoming_migration", CURRENT, None, emits="setup",
               event_needs_cap=False,
               within=("none", "postcopy-paused"),
               doc="-incoming, migrate-incoming and migrate-recover send MIGRATION{setup} "
                   "unconditionally; no state changes"),
    Transition("dst.co.active", "destination", "incoming_coroutine",
               "process_incoming_migration_co", "none", "active"),
    Transition("dst.co.failed", "destination", "incoming_coroutine",
               "process_incoming_migration_co", "active", "failed", guard=Flag("load_error"),
               doc="\"load of migration failed: %s\", then exit(EXIT_FAILURE)"),
    Transition("dst.bh.completed", "destination", "incoming_bh", "process_incoming_migration_bh",
               "active", "completed"),
    Transition("dst.recover.accept", "destination", "main_loop", "migration_fd_process_incoming",
               "postcopy-paused", "postcopy-recover",
               guard=All(Flag("recover_listening"), Flag("recover_channel"))),
    Transition("dst.listen.start", "destination", "listen_thread", "postcopy_ram_listen_thread",
               "active", "postcopy-active", guard=PostcopyIs("LISTENING")),
    Transition("dst.listen.failed", "destination", "listen_thread", "postcopy_ram_listen_thread",
               "postcopy-active", "failed", guard=Flag("load_error")),
    Transition("dst.listen.completed", "destination", "listen_thread",
               "postcopy_ram_listen_thread", "postcopy-active", "completed"),
    Transition("dst.resume", "destination", "listen_thread", "loadvm_postcopy_handle_resume",
               "postcopy-recover", "postcopy-active",
               doc="MIG_CMD_POSTCOPY_RESUME; then RESUME_ACK on the return path"),
    Transition("dst.pause", "destination", "listen_thread", "postcopy_pause_incoming",
               "postcopy-active", "postcopy-paused",
               guard=All(Flag("load_error"), Cap("postcopy-ram"), PostcopyIs("RUNNING")),
               doc="a load error pauses only when PostcopyState is RUNNING"),
    Transition("dst.colo.start", "destination", "colo_thread", "colo_process_incoming_thread",
               "active", "colo", guard=Flag("colo_enabled")),
    Transition("dst.colo.failover", "destination", "colo_thread", "secondary_vm_do_failover",
               "colo", "completed", guard=Flag("colo_failover")),
)

UNREACHABLE = (
    Unreachable("destination", "setup", "3.0 emits a setup event on the incoming side but never "
                "stores the state (dst.incoming.setup_event)"),
    Unreachable("destination", "cancelling", "migrate_cancel acts only on the source object"),
    Unreachable("destination", "cancelled", "migrate_cancel acts only on the source object"),
    Unreachable("destination", "pre-switchover", "switchover pause is a source-side state"),
    Unreachable("destination", "device", "switchover pause is a source-side state"),
)

# ------------------------------------------------------------ PostcopyState
POSTCOPY_STATES = ("NONE", "ADVISE", "DISCARD", "LISTENING", "RUNNING", "END")

POSTCOPY_HANDLERS = (
    PostcopyHandler("incoming_start", "process_incoming_migration_co", None, "set",
                    accepted=POSTCOPY_STATES, new="NONE", error=None,
                    doc="reset at the start of every incoming load"),
    PostcopyHandler("advise", "loadvm_postcopy_handle_advise", "MIG_CMD_POSTCOPY_ADVISE", "xchg",
                    accepted=("NONE",), new="ADVISE",
                    error="CMD_POSTCOPY_ADVISE in wrong postcopy state (%d)"),
    PostcopyHandler("discard", "loadvm_postcopy_ram_handle_discard",
                    "MIG_CMD_POSTCOPY_RAM_DISCARD", "check_then_set",
                    accepted=("ADVISE", "DISCARD"), new="DISCARD", set_new_from=("ADVISE",),
                    error="CMD_POSTCOPY_RAM_DISCARD in wrong postcopy state (%d)",
                    doc="postcopy_ram_prepare_discard moves ADVISE to DISCARD"),
    PostcopyHandler("listen", "loadvm_postcopy_handle_listen", "MIG_CMD_POSTCOPY_LISTEN", "xchg",
                    accepted=("ADVISE", "DISCARD"), new="LISTENING",
                    error="CMD_POSTCOPY_LISTEN in wrong postcopy state (%d)"),
    PostcopyHandler("run", "loadvm_postcopy_handle_run", "MIG_CMD_POSTCOPY_RUN", "xchg",
                    accepted=("LISTENING",), new="RUNNING",
                    error="CMD_POSTCOPY_RUN in wrong postcopy state (%d)",
                    doc="3.0 exchanges first (7.2 reads, then sets)"),
    PostcopyHandler("end", "postcopy_ram_incoming_cleanup", None, "set",
                    accepted=POSTCOPY_STATES, new="END", error=None,
                    doc="the listen thread's cleanup at the end of postcopy"),
)

# ------------------------------------------------------------ capabilities
CAPABILITIES = (
    Capability("xbzrle", "1.2"),
    Capability("rdma-pin-all", "2.0"),
    Capability("auto-converge", "1.6"),
    Capability("zero-blocks", "1.6"),
    Capability("compress", "2.4"),
    Capability("events", "2.4"),
    Capability("postcopy-ram", "2.6"),
    Capability("x-colo", "2.8", unstable=True),
    Capability("release-ram", "2.9"),
    Capability("block", "2.10"),
    Capability("return-path", "2.8"),
    Capability("pause-before-switchover", "2.11"),
    Capability("x-multifd", "2.11", unstable=True),
    Capability("dirty-bitmaps", "2.12"),
    Capability("postcopy-blocktime", "3.0"),
    Capability("late-block-activate", "3.0"),
)

#: not QEMU's: the capabilities livemig's engine refuses at `migrate` (the
#: checkers accept them, as QEMU does)
ENGINE_UNIMPLEMENTED = (
    Unimplemented("x-colo", "QEMU would go active -> colo and run the COLO checkpoint loop"),
)

HOST_FACTS = (
    HostFact("live_block_migration", True, "CONFIG_LIVE_BLOCK_MIGRATION"),
    HostFact("replication", True, "CONFIG_REPLICATION (COLO)"),
    HostFact("userfaultfd", True, "postcopy_ram_supported_by_host succeeds"),
    HostFact("uffd_wp", True, "kernel supports UFFD write protection (background-snapshot)"),
    HostFact("uffd_wp_memory", True, "guest memory is UFFD-WP compatible"),
    HostFact("linux", True, "CONFIG_LINUX"),
    HostFact("zstd", True, "CONFIG_ZSTD"),
    HostFact("multi_channels_allowed", True,
             "the last incoming URI allows several channels (tcp/unix/vsock)"),
)

CAP_RULES = (
    CapRule("block.no_live_block_migration",
            All(Cap("block"), Not(Host("live_block_migration"))),
            "QEMU compiled without old-style (blk/-b, inc/-i) block migration",
            hint="Use drive_mirror+NBD instead."),
    # No x-colo/CONFIG_REPLICATION rule: the seed's migrate_caps_check has none
    # (7.2 has one); when it was added was not verified.
    CapRule("postcopy-ram.compress", All(Cap("postcopy-ram"), Cap("compress")),
            "Postcopy is not currently compatible with compression",
            doc="the decompression threads write RAM without the atomic placement "
                "postcopy needs"),
    CapRule("postcopy-ram.host",
            All(Cap("postcopy-ram"), Not(WasCap("postcopy-ram")), Runstate("inmigrate"),
                Not(Host("userfaultfd"))),
            "Postcopy is not supported",
            doc="checked only when newly enabled on the destination"),
)

# -------------------------------------------------------------- parameters
PARAMETERS = (
    Parameter("compress-level", "uint8", 1),
    Parameter("compress-threads", "uint8", 8),
    Parameter("decompress-threads", "uint8", 2),
    Parameter("cpu-throttle-initial", "uint8", 20),
    Parameter("cpu-throttle-increment", "uint8", 10),
    Parameter("tls-creds", "StrOrNull", ""),
    Parameter("tls-hostname", "StrOrNull", ""),
    Parameter("max-bandwidth", "size", 33554432, "bytes/second (32 MiB/s in 3.0)"),
    Parameter("downtime-limit", "uint64", 300, "milliseconds"),
    Parameter("x-checkpoint-delay", "uint32", 20000, "milliseconds"),
    Parameter("block-incremental", "bool", False),
    Parameter("x-multifd-channels", "uint8", 2),
    Parameter("x-multifd-page-count", "uint32", 16),
    Parameter("xbzrle-cache-size", "size", 67108864),
    Parameter("max-postcopy-bandwidth", "size", 0, "0 = unlimited"),
)

PARAM_ERROR_FORMAT = "Parameter '%s' expects %s"

PARAM_RULES = (
    ParamRule("compress-level.range", "compress-level",
              "Parameter 'compress_level' expects is invalid, it should be in the range of 0 to 9",
              max=9),
    ParamRule("compress-threads.range", "compress-threads",
              "Parameter 'compress_threads' expects is invalid, it should be in the range of 1 to 255",
              min=1),
    ParamRule("decompress-threads.range", "decompress-threads",
              "Parameter 'decompress_threads' expects is invalid, it should be in the range of 1 to 255",
              min=1),
    ParamRule("cpu-throttle-initial.range", "cpu-throttle-initial",
              "Parameter 'cpu_throttle_initial' expects an integer in the range of 1 to 99",
              min=1, max=99),
    ParamRule("cpu-throttle-increment.range", "cpu-throttle-increment",
              "Parameter 'cpu_throttle_increment' expects an integer in the range of 1 to 99",
              min=1, max=99),
    ParamRule("max-bandwidth.range", "max-bandwidth",
              "Parameter 'max_bandwidth' expects an integer in the range of 0 to "
              "18446744073709551615 bytes/second",
              max=18446744073709551615, doc="SIZE_MAX: unreachable on 64-bit hosts"),
    ParamRule("downtime-limit.range", "downtime-limit",
              "Parameter 'downtime_limit' expects an integer in the range of 0 to 2000000 milliseconds",
              max=2000000),
    ParamRule("x-multifd-channels.range", "x-multifd-channels",
              "Parameter 'multifd_channels' expects is invalid, it should be in the range of 1 to 255",
              min=1),
    ParamRule("x-multifd-page-count.range", "x-multifd-page-count",
              "Parameter 'multifd_page_count' expects is invalid, it should be in the range of 1 to 10000",
              min=1, max=10000),
    ParamRule("xbzrle-cache-size.power-of-two", "xbzrle-cache-size",
              "Parameter 'xbzrle_cache_size' expects is invalid, it should be bigger than target "
              "page size and a power of two",
              min=4096, power_of_two=True),
)

# QAPI input errors (qobject input visitor / QMP dispatch), QEMU's texts.
QAPI_ERRORS = (
    ("type", "Invalid parameter type for '%s', expected: %s"),
    ("range", "Parameter '%s' expects %s"),
    ("enum", "Parameter '%s' does not accept value '%s'"),
    ("unexpected", "Parameter '%s' is unexpected"),
    ("missing", "Parameter '%s' is missing"),
    ("migration_active", "There's a migration process in progress"),
    # qmp_migrate's own check of the URI's protocol (QERR_INVALID_PARAMETER_VALUE),
    # after migrate_init: the row src.qmp_migrate.bad_uri
    ("bad_uri", "Parameter 'uri' expects a valid migration protocol"),
    # a refused outgoing channel (socket_connect): error-desc, then the OS's
    # reason (7.2's texts, recorded; 3.0's were not)
    ("connect_failed_unix", "Failed to connect to '%s': %s"),
    ("connect_failed_inet", "Failed to connect to '%s:%s': %s"),
    # QMP's dispatcher, before any member is visited (qmp-dispatch; observed on
    # 7.2 with "arguments": [] / "x" / 1).
    ("arguments_not_object", "QMP input member 'arguments' must be an object"),
    # QMP's other dispatcher checks of a request (qmp_dispatch_check_obj, qmp_dispatch,
    # the monitor's negotiation mode), observed on 7.2 with raw bytes on a QMP socket
    # (tests/test_qmp_hostile.py compares livemig with the installed QEMU 7.2).
    ("qmp_not_object", "QMP input must be a JSON object"),
    ("qmp_member_not_string", "QMP input member '%s' must be a string"),
    ("qmp_member_clash", "QMP input member '%s' clashes with '%s'"),
    ("qmp_member_unexpected", "QMP input member '%s' is unexpected"),
    ("qmp_lacks_execute", "QMP input lacks member 'execute'"),
    ("qmp_no_oob", "The command %s does not support OOB"),
    ("qmp_negotiation_expected", "Expecting capabilities negotiation with 'qmp_capabilities'"),
    ("qmp_negotiation_done", "Capabilities negotiation is already complete, command ignored"),
    # QMP's JSON layer, observed on 7.2 likewise: the streamer's limits and lexical
    # error (json-streamer), then the parser's syntax errors, each "JSON parse error, %s".
    ("json_stray", "JSON parse error, stray '%s'"),
    ("json_token_size", "JSON token size limit exceeded"),
    ("json_token_count", "JSON token count limit exceeded"),
    ("json_nesting", "JSON nesting depth limit exceeded"),
    ("json_parse", "JSON parse error, %s"),
    ("json_expecting_value", "expecting value"),
    ("json_premature_eoi", "premature EOI"),
    ("json_key_not_string", "key is not a string in object"),
    ("json_missing_colon", "missing : in object pair"),
    ("json_duplicate_key", "duplicate key"),
    ("json_dict_separator", "expected separator in dict"),
    ("json_list_separator", "expected separator in list"),
    ("json_invalid_keyword", "invalid keyword '%s'"),
    ("json_invalid_escape", "invalid escape sequence in string"),
    ("json_invalid_unicode", "%s is not a valid Unicode character"),
    ("json_invalid_utf8", "invalid UTF-8 sequence in string"),
)

# ---------------------------------------------------------------- commands
COMMANDS = (
    Command("migrate", ("uri", "blk", "inc", "detach", "resume"), (
        Precondition("migrate.resume_not_paused",
                     All(Arg("resume"), Not(InState("postcopy-paused"))),
                     "Cannot resume if there is no paused migration"),
        Precondition("migrate.running", All(Not(Arg("resume")), InState("running")),
                     "There's a migration process in progress"),
        Precondition("migrate.inmigrate", All(Not(Arg("resume")), Runstate("inmigrate")),
                     "Guest is waiting for an incoming migration"),
        Precondition("migrate.blk_colo",
                     All(Not(Arg("resume")), AnyOf(Arg("blk"), Arg("inc")), Cap("x-colo")),
                     "No disk migration is required in COLO mode"),
        Precondition("migrate.blk_caps",
                     All(Not(Arg("resume")), AnyOf(Arg("blk"), Arg("inc")), Cap("block")),
                     "Command options are incompatible with current migration capabilities"),
    ), sets_flags=("resume_requested",)),
    Command("migrate-incoming", ("uri",), (
        Precondition("migrate-incoming.not_deferred", Not(Flag("incoming_deferred")),
                     "For use with '-incoming defer'", state_side="destination"),
        Precondition("migrate-incoming.once", Flag("incoming_started"),
                     "The incoming migration has already been started",
                     state_side="destination"),
        Precondition("migrate-incoming.protocol", Flag("uri_invalid"),
                     "unknown migration protocol: %s", state_side="destination",
                     fill="arg:uri"),
    ), sets_flags=("incoming_started",)),
    Command("migrate_cancel", (), (), doc="always succeeds; a no-op when nothing runs"),
    Command("migrate-continue", ("state",), (
        Precondition("migrate-continue.state", Not(ArgState("state")),
                     "Migration not in expected state: %s", fill="status"),
    ), sets_flags=("continue_posted",)),
    Command("migrate-start-postcopy", (), (
        Precondition("migrate-start-postcopy.caps",
                     All(Not(Cap("postcopy-ram")), Not(Cap("dirty-bitmaps"))),
                     "Enable postcopy with migrate_set_capability before the start of migration"),
        Precondition("migrate-start-postcopy.not_started", InState("none"),
                     "Postcopy must be started after migration has been started"),
    ), sets_flags=("start_postcopy",)),
    Command("migrate-pause", (), (
        Precondition("migrate-pause.state",
                     Not(AnyOf(InState("postcopy-active", "source"),
                               InState("postcopy-active", "destination"))),
                     "migrate-pause is currently only supported during postcopy-active state"),
    ), allow_oob=True),
    Command("migrate-recover", ("uri",), (
        Precondition("migrate-recover.state", Not(InState("postcopy-paused", "destination")),
                     "Migrate recover can only be run when postcopy is paused.",
                     state_side="destination"),
        Precondition("migrate-recover.triggered", Flag("recover_listening"),
                     "Migrate recovery is triggered already", state_side="destination"),
    ), allow_oob=True, sets_flags=("recover_listening",), event="setup"),
    Command("migrate-set-capabilities", ("capabilities",), (
        Precondition("migrate-set-capabilities.running", InState("setup_or_active"),
                     "There's a migration process in progress"),
    )),
    Command("migrate-set-parameters", ("...parameters",), (),
            doc="no migration-state restriction", arg_types=None),
)

#: QAPI member types of the commands' arguments (migration.json), in schema
#: order; a command not named here takes no arguments (any member is
#: "unexpected"), migrate-set-parameters is the parameter checker's
ARG_TYPES = {
    "migrate": (ArgType("uri", "str", required=True), ArgType("blk", "bool"),
                ArgType("inc", "bool"), ArgType("detach", "bool"), ArgType("resume", "bool")),
    "migrate-incoming": (ArgType("uri", "str", required=True),),
    "migrate-continue": (ArgType("state", "MigrationStatus", required=True),),
    "migrate-recover": (ArgType("uri", "str", required=True),),
    "migrate-set-capabilities": (ArgType("capabilities", "array", required=True),),
}


def typed(commands: tuple[Command, ...]) -> tuple[Command, ...]:
    """``commands`` with their ARG_TYPES (migrate-set-parameters keeps None)."""
    return tuple(c if c.arg_types is None else
                 dataclasses.replace(c, arg_types=ARG_TYPES.get(c.name, ()))
                 for c in commands)


COMMANDS = typed(COMMANDS)

# ---------------------------------------------------------------- query-migrate
#: statuses in which fill_source_migration_info shows times and RAM counters
_IN_PROGRESS = ("active", "cancelling", "postcopy-active", "pre-switchover", "device",
                "postcopy-paused", "postcopy-recover")

#: migration_bitmap_sync (migration/ram.c): one read of the dirty log into
#: the migration bitmap.  The same in 3.0 and 7.2 (7.2 names the callers
#: ..._precopy, and ram_save_pending became ram_state_pending_exact later).
BITMAP_SYNC = BitmapSync(
    function="migration_bitmap_sync",
    counter="dirty-sync-count",
    event="MIGRATION_PASS",
    event_member="pass",
    event_cap="events",
    period_s=1.0,  # "end_time > rs->time_last_bitmap_sync + 1000" (ms)
    callers=(
        ("ram_init_bitmaps", "setup: every page starts dirty, the log starts"),
        ("ram_save_pending", "precopy: what remains is below the threshold "
                             "(bandwidth x downtime-limit): the exact count decides"),
        ("ram_save_complete", "completion of precopy: the last pass"),
        ("ram_postcopy_send_discard_bitmap", "postcopy start: the pages to discard"),
    ),
)

#: the source's MigrationInfo members and when they are shown
#: (fill_source_migration_info, populate_ram_info; "none" shows nothing of
#: the source, so the destination's status stands)
MIGRATION_INFO = (
    InfoField("status", ("setup",) + _IN_PROGRESS + ("colo", "completed", "failed",
                                                     "cancelled")),
    InfoField("setup-time", _IN_PROGRESS + ("completed",)),
    InfoField("total-time", _IN_PROGRESS + ("completed",),
              doc="migrate -> now while in progress; the whole migration once completed"),
    InfoField("expected-downtime", _IN_PROGRESS),
    InfoField("downtime", ("completed",)),
    InfoField("ram", _IN_PROGRESS + ("completed",),
              doc="remaining and dirty-pages-rate read 0 once completed"),
    InfoField("xbzrle-cache", _IN_PROGRESS + ("completed",), cap="xbzrle"),
    InfoField("cpu-throttle-percentage", _IN_PROGRESS + ("completed",), only_if="throttling"),
    InfoField("error-desc", ("failed",), only_if="error"),
)


#: Machine types: livemig's own first (its streams carry livemig's globalstate
#: and device sections, RAM section id 0).
MACHINES = (
    MachineType("livemig-pc", "livemig's own machine: its fixed RAM blocks, livemig's "
                "globalstate body and its device section (the vCPU's workload cursor)",
                qemu=False, ram_section_id=0, globalstate_section_id=1,
                globalstate_layout="GLOBALSTATE_BODY", device_section_id=2),
)

#: object-add's TLS credentials (QEMU 2.5+); authorization objects came in 4.0
from livemig.spec.profiles.objects import OBJECT_ERRORS as _OBJECT_ERRORS  # noqa: E402
from livemig.spec.profiles.objects import TLS_CREDS_ANON, TLS_CREDS_X509  # noqa: E402

OBJECT_TYPES = (TLS_CREDS_X509, TLS_CREDS_ANON)
OBJECT_ERRORS = _OBJECT_ERRORS

# The monitor's introspection and HMP: recorded from 7.2 only; the 3.0
# profile serves the same shapes, its own statuses, capabilities and
# parameters generated into them (spec/qapi.py), and says version 3.0.0.
from livemig.spec.profiles.monitor_7_2 import MONITOR as _MONITOR_7_2  # noqa: E402

MONITOR = dataclasses.replace(_MONITOR_7_2, version=(3, 0, 0))
