"""Profile ``qemu-7.2``: what Debian bookworm ships (1:7.2+dfsg-7+deb12u18).

Extends ``qemu-3.0``.  Facts: shared/reference/qemu-migration-facts.md §1.1-1.4,
§2-§7 (7.2 columns), checked against the 7.2 binary where marked there.

What changed since 3.0, in short: wait-unplug; the `running` predicate;
cancel loops over `running`; migration_completion fails (instead of
completing) when it finds a cancel at entry; migration_detect_error leaves
cancelling alone; multifd and background-snapshot rows; PostcopyState RUN
reads then sets; postcopy-ram with compress is accepted; 21 capabilities;
the parameter texts say "a value between".
"""
import dataclasses

from livemig.spec.expr import (
    AnyOf, All, Arg, Cap, Flag, Host, InState, Not, Param, Runstate, WasCap,
)
from livemig.spec.schema import (
    CURRENT, Actor, AliasMapRule, MachineType, CapRule, Capability, Command, FlagDecl, Group, InfoField,
    Parameter,
    ParamRef, ParamRule, Patch, PostcopyHandler, Precondition, Status, Transition, Unimplemented,
    Unreachable,
)
from livemig.spec.profiles.qemu_3_0 import COMMANDS as _COMMANDS_3_0, typed
from livemig.spec.profiles.wire import WIRE as _WIRE_3_0

#: the migration thread is not asleep in postcopy_pause() (qemu_3_0.postcopy_pause_waiting)
_THREAD_AWAKE = Not(Flag("postcopy_pause_waiting"))

NAME = "qemu-7.2"
TITLE = "QEMU 7.2 (Debian bookworm)"
EXTENDS = "qemu-3.0"
SOURCES = (
    "Debian qemu 1:7.2+dfsg-7+deb12u18 migration/migration.c, savevm.c, colo.c, multifd.c",
    "qemu-system-x86_64 7.2.22 (observed behaviour, facts §1.7)",
)

STATUSES = (
    Status("none", 0), Status("setup", 1), Status("cancelling", 2), Status("cancelled", 3),
    Status("active", 4), Status("postcopy-active", 5), Status("postcopy-paused", 6),
    Status("postcopy-recover", 7), Status("completed", 8), Status("failed", 9),
    Status("colo", 10), Status("pre-switchover", 11), Status("device", 12),
    Status("wait-unplug", 13, "waiting for a failover device to be unplugged"),
)

_SETUP_OR_ACTIVE = ("active", "postcopy-active", "postcopy-paused", "postcopy-recover", "setup",
                    "pre-switchover", "device", "wait-unplug", "colo")
GROUPS = (
    Group("setup_or_active", _SETUP_OR_ACTIVE, "migration_is_setup_or_active"),
    Group("running",
          ("active", "postcopy-active", "postcopy-paused", "postcopy-recover", "setup",
           "pre-switchover", "device", "wait-unplug", "cancelling"),
          "migration_is_running",
          "setup_or_active minus colo, plus cancelling: guard of migrate and "
          "migrate-set-capabilities"),
    Group("idle", ("none", "cancelled", "completed", "failed"), "migration_is_idle"),
    Group("is_active", ("active", "postcopy-active"), "migration_is_active"),
    Group("has_failed", ("cancelled", "failed"), "migration_has_failed"),
    Group("in_postcopy", ("postcopy-active", "postcopy-paused", "postcopy-recover"),
          "migration_in_postcopy"),
    Group("in_postcopy_any", ("postcopy-active", "postcopy-paused", "postcopy-recover"),
          "(derived) any postcopy state", "used by the invariant catalogue"),
)

ACTORS = Patch(add=(
    Actor("multifd_thread", "multifd send/receive threads"),
    Actor("bg_migration_thread", "the background-snapshot thread"),
))

FLAGS = Patch(add=(
    FlagDecl("unplug_pending", "environment", "a failover primary device is still unplugging"),
    FlagDecl("preempt_setup_error", "environment", "postcopy_preempt_setup failed"),
    FlagDecl("preempt_channel_error", "environment", "postcopy_preempt_wait_channel failed"),
    FlagDecl("multifd_error", "environment", "a multifd channel failed"),
    FlagDecl("bg_error", "environment", "background snapshot failed early"),
))

TRANSITIONS = Patch(
    remove=("src.colo.start",),
    replace=(
        Transition("src.thread.active", "source", "migration_thread", "qemu_savevm_wait_unplug",
                   "setup", "active", guard=Not(Flag("unplug_pending")),
                   doc="also the background-snapshot thread"),
        Transition("src.fd_connect.multifd_failed", "source", "main_loop", "migrate_fd_connect",
                   "setup", "failed",
                   guard=AnyOf(Flag("multifd_setup_error"), Flag("preempt_setup_error"))),
        Transition("src.cancel", "source", "monitor", "migrate_fd_cancel",
                   "running", "cancelling", retry=True,
                   doc="loops read-then-CAS until cancelling; stops if no longer running; "
                       "posts pause_sem first when the state was pre-switchover"),
        Transition("src.completion.completed", "source", "migration_thread",
                   "migration_completion", CURRENT, "completed",
                   guard=All(Flag("converged"), Not(Cap("x-colo")), _THREAD_AWAKE),
                   within=("active", "postcopy-active", "device"),
                   doc="CAS from the state read at entry (device after a pause)"),
        Transition("src.completion.failed", "source", "migration_thread",
                   "migration_completion", CURRENT, "failed",
                   guard=All(AnyOf(Flag("completion_error"), InState("cancelling")),
                             _THREAD_AWAKE),
                   within=("active", "postcopy-active", "device", "cancelling"),
                   doc="a state other than active/postcopy-active at entry jumps to fail "
                       "with that state as OLD: cancelling -> failed"),
        Transition("src.detect_error.failed", "source", "migration_thread",
                   "migration_detect_error", CURRENT, "failed",
                   guard=All(Flag("stream_error"), Not(InState("postcopy-active"))),
                   within=("active",),
                   doc="cancelling and cancelled are left untouched; postcopy-active pauses"),
        Transition("src.postcopy_pause", "source", "migration_thread", "postcopy_pause",
                   CURRENT, "postcopy-paused",
                   guard=AnyOf(Flag("stream_error"), Flag("resume_failed")),
                   within=("postcopy-active", "postcopy-recover"),
                   doc="any file error in postcopy-active pauses; loops, so a failed resume "
                       "gives recover -> paused"),
        Transition("dst.recover.accept", "destination", "main_loop", "postcopy_try_recover",
                   "postcopy-paused", "postcopy-recover",
                   guard=All(Flag("recover_listening"), Flag("recover_channel"))),
    ),
    add=(
        Transition("src.thread.wait_unplug", "source", "migration_thread",
                   "qemu_savevm_wait_unplug", "setup", "wait-unplug",
                   guard=Flag("unplug_pending")),
        Transition("src.thread.unplugged", "source", "migration_thread",
                   "qemu_savevm_wait_unplug", "wait-unplug", "active",
                   guard=Not(Flag("unplug_pending"))),
        Transition("src.completion.colo", "source", "migration_thread", "migration_completion",
                   "active", "colo", guard=All(Flag("converged"), Cap("x-colo"))),
        Transition("src.postcopy_start.preempt_failed", "source", "migration_thread",
                   "postcopy_start", CURRENT, "failed",
                   guard=All(Cap("postcopy-preempt"), Flag("start_postcopy"),
                             Flag("preempt_channel_error"), _THREAD_AWAKE),
                   within=("active", "cancelling")),
        Transition("src.bg.failed", "source", "bg_migration_thread", "bg_migration_thread",
                   "active", "failed", guard=All(Cap("background-snapshot"), Flag("bg_error"))),
        Transition("src.bg.completed", "source", "bg_migration_thread", "bg_migration_completion",
                   CURRENT, "completed",
                   guard=All(Cap("background-snapshot"), Flag("converged"),
                             Not(Flag("completion_error"))),
                   within=("active",)),
        Transition("src.bg.completion_failed", "source", "bg_migration_thread",
                   "bg_migration_completion", CURRENT, "failed",
                   guard=All(Cap("background-snapshot"),
                             AnyOf(Flag("completion_error"), InState("cancelling"))),
                   within=("active", "cancelling"),
                   doc="already cancelling at entry: cancelling -> failed"),
        Transition("src.multifd.send_failed", "source", "multifd_thread",
                   "multifd_send_terminate_threads", CURRENT, "failed",
                   guard=All(Cap("multifd"), Flag("multifd_error")),
                   within=("setup", "pre-switchover", "device", "active")),
        Transition("src.multifd.recv_failed", "source", "multifd_thread",
                   "multifd_recv_terminate_threads", CURRENT, "failed",
                   guard=All(Cap("multifd"), Flag("multifd_error")),
                   within=("setup", "active"),
                   doc="acts on the *source* object; a no-op in a pure destination process"),
    ),
)

UNREACHABLE = Patch(add=(
    Unreachable("destination", "wait-unplug", "failover unplug is a source-side state"),
))

POSTCOPY_HANDLERS = Patch(replace=(
    PostcopyHandler("run", "loadvm_postcopy_handle_run", "MIG_CMD_POSTCOPY_RUN",
                    "check_then_set", accepted=("LISTENING",), new="RUNNING",
                    error="CMD_POSTCOPY_RUN in wrong postcopy state (%d)",
                    doc="7.2 reads, checks, then sets RUNNING"),
    PostcopyHandler("end", "postcopy_ram_listen_thread", None, "set",
                    accepted=("NONE", "ADVISE", "DISCARD", "LISTENING", "RUNNING", "END"),
                    new="END", error=None, doc="only on success; on failure the process exits"),
))

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
    Capability("multifd", "4.0"),
    Capability("dirty-bitmaps", "2.12"),
    Capability("postcopy-blocktime", "3.0"),
    Capability("late-block-activate", "3.0"),
    Capability("x-ignore-shared", "4.0", unstable=True),
    Capability("validate-uuid", "4.2"),
    Capability("background-snapshot", "6.0"),
    Capability("zero-copy-send", "7.1"),
    Capability("postcopy-preempt", "7.1"),
)

ENGINE_UNIMPLEMENTED = Patch(add=(
    Unimplemented("background-snapshot",
                  "QEMU would run bg_migration_thread (a snapshot with UFFD write protection)"),
))

_BG_INCOMPATIBLE = (
    "postcopy-ram", "dirty-bitmaps", "postcopy-blocktime", "late-block-activate", "return-path",
    "multifd", "pause-before-switchover", "auto-converge", "release-ram", "rdma-pin-all",
    "compress", "xbzrle", "x-colo", "validate-uuid", "zero-copy-send",
)

CAP_RULES = (
    CapRule("block.no_live_block_migration",
            All(Cap("block"), Not(Host("live_block_migration"))),
            "QEMU compiled without old-style (blk/-b, inc/-i) block migration",
            hint="Use drive_mirror+NBD instead."),
    CapRule("x-colo.no_replication", All(Cap("x-colo"), Not(Host("replication"))),
            "QEMU compiled without replication module can't enable COLO",
            hint="Please enable replication before COLO."),
    CapRule("postcopy-ram.host",
            All(Cap("postcopy-ram"), Not(WasCap("postcopy-ram")), Runstate("inmigrate"),
                Not(Host("userfaultfd"))),
            "Postcopy is not supported",
            doc="checked only when newly enabled on the destination"),
    CapRule("postcopy-ram.ignore-shared", All(Cap("postcopy-ram"), Cap("x-ignore-shared")),
            "Postcopy is not compatible with ignore-shared"),
    CapRule("background-snapshot.host", All(Cap("background-snapshot"), Not(Host("uffd_wp"))),
            "Background-snapshot is not supported by host kernel"),
    CapRule("background-snapshot.memory",
            All(Cap("background-snapshot"), Not(Host("uffd_wp_memory"))),
            "Background-snapshot is not compatible with guest memory configuration"),
    # check_caps_background_snapshot, in QEMU's list order: the first one set is named.
    CapRule("background-snapshot.postcopy-ram", All(Cap("background-snapshot"), Cap("postcopy-ram")),
            "Background-snapshot is not compatible with postcopy-ram"),
    CapRule("background-snapshot.dirty-bitmaps",
            All(Cap("background-snapshot"), Cap("dirty-bitmaps")),
            "Background-snapshot is not compatible with dirty-bitmaps"),
    CapRule("background-snapshot.postcopy-blocktime",
            All(Cap("background-snapshot"), Cap("postcopy-blocktime")),
            "Background-snapshot is not compatible with postcopy-blocktime"),
    CapRule("background-snapshot.late-block-activate",
            All(Cap("background-snapshot"), Cap("late-block-activate")),
            "Background-snapshot is not compatible with late-block-activate"),
    CapRule("background-snapshot.return-path",
            All(Cap("background-snapshot"), Cap("return-path")),
            "Background-snapshot is not compatible with return-path"),
    CapRule("background-snapshot.multifd", All(Cap("background-snapshot"), Cap("multifd")),
            "Background-snapshot is not compatible with multifd"),
    CapRule("background-snapshot.pause-before-switchover",
            All(Cap("background-snapshot"), Cap("pause-before-switchover")),
            "Background-snapshot is not compatible with pause-before-switchover"),
    CapRule("background-snapshot.auto-converge",
            All(Cap("background-snapshot"), Cap("auto-converge")),
            "Background-snapshot is not compatible with auto-converge"),
    CapRule("background-snapshot.release-ram",
            All(Cap("background-snapshot"), Cap("release-ram")),
            "Background-snapshot is not compatible with release-ram"),
    CapRule("background-snapshot.rdma-pin-all",
            All(Cap("background-snapshot"), Cap("rdma-pin-all")),
            "Background-snapshot is not compatible with rdma-pin-all"),
    CapRule("background-snapshot.compress", All(Cap("background-snapshot"), Cap("compress")),
            "Background-snapshot is not compatible with compress"),
    CapRule("background-snapshot.xbzrle", All(Cap("background-snapshot"), Cap("xbzrle")),
            "Background-snapshot is not compatible with xbzrle"),
    CapRule("background-snapshot.x-colo", All(Cap("background-snapshot"), Cap("x-colo")),
            "Background-snapshot is not compatible with x-colo"),
    CapRule("background-snapshot.validate-uuid",
            All(Cap("background-snapshot"), Cap("validate-uuid")),
            "Background-snapshot is not compatible with validate-uuid"),
    CapRule("background-snapshot.zero-copy-send",
            All(Cap("background-snapshot"), Cap("zero-copy-send")),
            "Background-snapshot is not compatible with zero-copy-send"),
    CapRule("zero-copy-send.needs-plain-multifd",
            All(Host("linux"), Cap("zero-copy-send"),
                AnyOf(Not(Cap("multifd")), Cap("compress"), Cap("xbzrle"),
                      Param("multifd-compression", "ne", "none"), Param("tls-creds", "nonempty"))),
            "Zero copy only available for non-compressed non-TLS multifd migration",
            doc="multifd-compression and tls-creds are the *current* parameter values"),
    CapRule("zero-copy-send.not-linux", All(Not(Host("linux")), Cap("zero-copy-send")),
            "Zero copy currently only available on Linux"),
    CapRule("multifd.protocol",
            All(Runstate("inmigrate"), Not(Host("multi_channels_allowed")), Cap("multifd")),
            "multifd is not supported by current protocol",
            doc="destination only: the last incoming URI was not tcp/unix/vsock"),
    CapRule("postcopy-preempt.needs-postcopy-ram",
            All(Cap("postcopy-preempt"), Not(Cap("postcopy-ram"))),
            "Postcopy preempt requires postcopy-ram"),
    CapRule("postcopy-preempt.compress", All(Cap("postcopy-preempt"), Cap("compress")),
            "Postcopy preempt not compatible with compress"),
    CapRule("multifd.compress", All(Cap("multifd"), Cap("compress")),
            "Multifd is not compatible with compress"),
)

_COMPRESSION = ("none", "zlib", "zstd")

PARAMETERS = (
    Parameter("announce-initial", "size", 50, "milliseconds"),
    Parameter("announce-max", "size", 550, "milliseconds"),
    Parameter("announce-rounds", "size", 5),
    Parameter("announce-step", "size", 100, "milliseconds"),
    Parameter("compress-level", "uint8", 1),
    Parameter("compress-threads", "uint8", 8),
    Parameter("compress-wait-thread", "bool", True),
    Parameter("decompress-threads", "uint8", 2),
    Parameter("throttle-trigger-threshold", "uint8", 50, "percent"),
    Parameter("cpu-throttle-initial", "uint8", 20),
    Parameter("cpu-throttle-increment", "uint8", 10),
    Parameter("cpu-throttle-tailslow", "bool", False),
    Parameter("tls-creds", "StrOrNull", ""),
    Parameter("tls-hostname", "StrOrNull", ""),
    Parameter("tls-authz", "StrOrNull", ""),
    Parameter("max-bandwidth", "size", 134217728, "bytes/second"),
    Parameter("downtime-limit", "uint64", 300, "milliseconds"),
    Parameter("x-checkpoint-delay", "uint32", 20000, "milliseconds"),
    Parameter("block-incremental", "bool", False),
    Parameter("multifd-channels", "uint8", 2),
    Parameter("xbzrle-cache-size", "size", 67108864),
    Parameter("max-postcopy-bandwidth", "size", 0, "0 = unlimited"),
    Parameter("max-cpu-throttle", "uint8", 99),
    Parameter("multifd-compression", "enum", "none", enum=_COMPRESSION,
              enum_type="MultiFDCompression"),
    Parameter("multifd-zlib-level", "uint8", 1, applied_by_set=False,
              doc="7.2 bug: migrate-set-parameters accepts and ignores it"),
    Parameter("multifd-zstd-level", "uint8", 1, applied_by_set=False,
              doc="7.2 bug: migrate-set-parameters accepts and ignores it"),
    Parameter("block-bitmap-mapping", "BitmapMigrationNodeAliasList", None,
              doc="absent from query-migrate-parameters until set (then echoed as given, "
                  "an empty transform {} included; [] stays present); checked by the rule "
                  "block-bitmap-mapping.alias-map with ALIAS_MAP_RULES"),
)

PARAM_RULES = (
    ParamRule("compress-level.range", "compress-level",
              "Parameter 'compress_level' expects a value between 0 and 9", max=9),
    ParamRule("compress-threads.range", "compress-threads",
              "Parameter 'compress_threads' expects a value between 1 and 255", min=1),
    ParamRule("decompress-threads.range", "decompress-threads",
              "Parameter 'decompress_threads' expects a value between 1 and 255", min=1),
    ParamRule("throttle-trigger-threshold.range", "throttle-trigger-threshold",
              "Parameter 'throttle_trigger_threshold' expects an integer in the range of 1 to 100",
              min=1, max=100),
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
              "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms",
              max=2000000),
    ParamRule("multifd-channels.range", "multifd-channels",
              "Parameter 'multifd_channels' expects a value between 1 and 255", min=1),
    ParamRule("multifd-zlib-level.range", "multifd-zlib-level",
              "Parameter 'multifd_zlib_level' expects a value between 0 and 9", max=9),
    ParamRule("multifd-zstd-level.range", "multifd-zstd-level",
              "Parameter 'multifd_zstd_level' expects a value between 0 and 20", max=20),
    ParamRule("xbzrle-cache-size.power-of-two", "xbzrle-cache-size",
              "Parameter 'xbzrle_cache_size' expects a power of two no less than the target "
              "page size",
              min=4096, power_of_two=True),
    ParamRule("max-cpu-throttle.range", "max-cpu-throttle",
              "Parameter 'max_cpu_throttle' expects an integer in the range of "
              "cpu_throttle_initial to 99",
              min=ParamRef("cpu-throttle-initial"), max=99,
              doc="uses the merged new value of cpu-throttle-initial"),
    ParamRule("announce-initial.range", "announce-initial",
              "Parameter 'announce_initial' expects a value between 0 and 100000", max=100000),
    ParamRule("announce-max.range", "announce-max",
              "Parameter 'announce_max' expects a value between 0 and 100000", max=100000),
    ParamRule("announce-rounds.range", "announce-rounds",
              "Parameter 'announce_rounds' expects a value between 0 and 1000", max=1000),
    ParamRule("announce-step.range", "announce-step",
              "Parameter 'announce_step' expects a value between 0 and 10000",
              min=1, max=10000, doc="sic: 0 is rejected although the text allows it"),
    ParamRule("block-bitmap-mapping.alias-map", "block-bitmap-mapping",
              "Invalid mapping given for block-bitmap-mapping: ", alias_map=True,
              doc="check_dirty_bitmap_mig_alias_map: the ALIAS_MAP_RULES below, prefixed"),
    ParamRule("zero-copy-send.params", None,
              "Zero copy only available for non-compressed non-TLS multifd migration",
              when=All(Host("linux"), Cap("zero-copy-send"),
                       AnyOf(Param("multifd-compression", "ne", "none"),
                             Param("tls-creds", "nonempty")))),
)

# block-bitmap-mapping's alias map, in QEMU's order (observed on 7.2: the
# whole by-name pass runs before the by-alias pass; see AliasMapRule).  Node names and bitmap
# names are not checked for form, nor bitmap aliases; the same bitmap name or
# alias under two nodes passes.
ALIAS_MAP_RULES = (
    AliasMapRule("node-alias.form", "node_alias_form",
                 "The node alias '%s' is not well-formed",
                 pattern=r"[A-Za-z][A-Za-z0-9._-]*"),
    AliasMapRule("node-alias.length", "node_alias_length",
                 "The node alias '%s' is longer than 255 bytes", limit=255),
    AliasMapRule("node-name.unique", "node_name_unique", "The node name '%s' is mapped twice"),
    AliasMapRule("bitmap-alias.length", "bitmap_alias_length",
                 "The bitmap alias '%s' is longer than 255 bytes", limit=255),
    AliasMapRule("bitmap-name.unique", "bitmap_name_unique",
                 "The bitmap '%s'/'%s' is mapped twice"),
    AliasMapRule("node-alias.unique", "node_alias_unique", "The node alias '%s' is used twice",
                 direction="by_alias"),
    AliasMapRule("bitmap-alias.unique", "bitmap_alias_unique",
                 "The bitmap alias '%s'/'%s' is used twice", direction="by_alias"),
)

COMMANDS = (
    Command("migrate", ("uri", "blk", "inc", "detach", "resume"), (
        Precondition("migrate.resume_not_paused",
                     All(Arg("resume"), Not(InState("postcopy-paused"))),
                     "Cannot resume if there is no paused migration"),
        Precondition("migrate.resume_release_ram", All(Arg("resume"), Cap("release-ram")),
                     "Postcopy recovery cannot work when release-ram capability is set"),
        Precondition("migrate.running", All(Not(Arg("resume")), InState("running")),
                     "There's a migration process in progress"),
        Precondition("migrate.inmigrate", All(Not(Arg("resume")), Runstate("inmigrate")),
                     "Guest is waiting for an incoming migration"),
        Precondition("migrate.postmigrate", All(Not(Arg("resume")), Runstate("postmigrate")),
                     "Can't migrate the vm that was paused due to previous migration"),
        Precondition("migrate.blk_colo",
                     All(Not(Arg("resume")), AnyOf(Arg("blk"), Arg("inc")), Cap("x-colo")),
                     "No disk migration is required in COLO mode"),
        Precondition("migrate.blk_caps",
                     All(Not(Arg("resume")), AnyOf(Arg("blk"), Arg("inc")),
                         AnyOf(Cap("block"), Param("block-incremental", "eq", True))),
                     "Command options are incompatible with current migration capabilities"),
        Precondition("migrate.yank_busy",
                     All(Not(Arg("resume")), InState("in_postcopy", "destination")),
                     "duplicate yank instance",
                     doc="observed on 7.2: `migrate` in a process whose incoming postcopy "
                         "still runs (postcopy-paused there; the run state has left "
                         "inmigrate, so the inmigrate check passes).  The migration yank instance is still registered by "
                         "the incoming side.  QEMU has already run migrate_init, so that "
                         "process's outgoing status is left in setup with no thread behind "
                         "it (query-migrate then shows setup)"),
    ), sets_flags=("resume_requested",),
        doc="a URI with no known protocol then fails with \"Parameter 'uri' expects a valid "
            "migration protocol\" and the row src.qmp_migrate.bad_uri (setup -> failed)"),
    Command("migrate-incoming", ("uri",), (
        Precondition("migrate-incoming.once", Flag("incoming_started"),
                     "The incoming migration has already been started",
                     state_side="destination"),
        Precondition("migrate-incoming.not_inmigrate", Not(Runstate("inmigrate")),
                     "'-incoming' was not specified on the command line",
                     state_side="destination"),
        Precondition("migrate-incoming.protocol", Flag("uri_invalid"),
                     "unknown migration protocol: %s", state_side="destination",
                     fill="arg:uri", doc="the once flag stays clear: the call can be retried"),
    ), sets_flags=("incoming_started",)),
    _COMMANDS_3_0[2],  # migrate_cancel: unchanged
    _COMMANDS_3_0[3],  # migrate-continue: unchanged
    _COMMANDS_3_0[4],  # migrate-start-postcopy: unchanged
    _COMMANDS_3_0[5],  # migrate-pause: unchanged text in 7.2
    Command("migrate-recover", ("uri",), (
        Precondition("migrate-recover.state", Not(InState("postcopy-paused", "destination")),
                     "Migrate recover can only be run when postcopy is paused.",
                     state_side="destination"),
        Precondition("migrate-recover.protocol", Flag("uri_invalid"),
                     "unknown migration protocol: %s", state_side="destination",
                     fill="arg:uri",
                     doc="observed on 7.2: a paused destination given 'nope:x'; it stays "
                         "postcopy-paused and a later migrate-recover works"),
    ), allow_oob=True, sets_flags=("recover_listening",), event="setup",
        doc="observed on 7.2: a second migrate-recover while paused is accepted (no "
            "'triggered already' check); each call emits the incoming setup event"),
    Command("migrate-set-capabilities", ("capabilities",), (
        Precondition("migrate-set-capabilities.running", InState("running"),
                     "There's a migration process in progress"),
    )),
    _COMMANDS_3_0[8],  # migrate-set-parameters: no state restriction
)
COMMANDS = typed(COMMANDS)  # the same argument members in 7.2

_IN_PROGRESS = ("active", "cancelling", "postcopy-active", "pre-switchover", "device",
                "postcopy-paused", "postcopy-recover")
MIGRATION_INFO = Patch(
    replace=(
        InfoField("status", ("setup", "wait-unplug") + _IN_PROGRESS + (
            "colo", "completed", "failed", "cancelled")),
    ),
    add=(
        InfoField("compression", _IN_PROGRESS + ("completed",), cap="compress"),
    ),
)


#: The wire as 3.0's, but for texts 7.2 words differently: a RAM block whose
#: size in the stream differs from the local one (qemu_ram_resize on a block
#: that cannot resize; facts §11: "Size mismatch: pc.ram: 0x4000000 !=
#: 0x8000000: Invalid argument", where 3.0 said "Length mismatch: ... in != ...").
_WIRE_7_2_TEXTS = {
    "ram_length_mismatch": "Size mismatch: %s: 0x%x != 0x%x: Invalid argument",
}
WIRE = dataclasses.replace(_WIRE_3_0, errors=tuple(
    (key, _WIRE_7_2_TEXTS.get(key, text)) for key, text in _WIRE_3_0.errors))


#: QEMU 7.2's PC machine types (facts §11): a livemig source sends only RAM
#: (id 2, as QEMU's own) and QEMU's globalstate; a livemig destination takes
#: the source's block list and keeps QEMU's device sections opaque.
MACHINES = Patch(add=tuple(
    MachineType(name, f"QEMU 7.2's {title} machine type", qemu=True, ram_section_id=2,
                globalstate_section_id=3, globalstate_layout="QEMU_GLOBALSTATE_BODY")
    for name, title in (("pc-i440fx-7.2", "i440FX PC"), ("pc-q35-7.2", "Q35"))))

#: authz-simple and authz-list (QEMU 4.0+), for tls-authz
from livemig.spec.profiles.objects import AUTHZ_LIST, AUTHZ_SIMPLE  # noqa: E402

OBJECT_TYPES = Patch(add=(AUTHZ_SIMPLE, AUTHZ_LIST))

from livemig.spec.profiles.monitor_7_2 import MONITOR  # noqa: E402,F401
