"""The checkers against a hand-picked table of QEMU outcomes (facts §4-§6; the
'observed' ones were seen on the 7.2 binary).  The recorded ground truth from a
live QEMU 7.2 is replayed separately in test_checkers_vs_qemu.py."""
import copy

import pytest

from livemig.core import GuardEnv, check_capabilities, check_command, check_parameters
from livemig.core.cli import cap_request
from livemig.errors import CommandError
from livemig.spec import load_profile

P72 = load_profile("qemu-7.2")
P30 = load_profile("qemu-3.0")

CAPS = [
    # (profile, side, caps, expected error or None)
    (P30, "source", ["postcopy-ram", "compress"],
     "Postcopy is not currently compatible with compression"),
    (P72, "source", ["postcopy-ram", "compress"], None),
    (P72, "source", ["multifd", "postcopy-ram"], None),          # observed
    (P72, "source", ["multifd", "xbzrle"], None),                # observed
    (P72, "source", ["multifd", "compress"], "Multifd is not compatible with compress"),
    (P72, "source", ["postcopy-preempt"], "Postcopy preempt requires postcopy-ram"),
    (P72, "source", ["postcopy-preempt", "postcopy-ram", "compress"],
     "Postcopy preempt not compatible with compress"),
    (P72, "source", ["postcopy-ram", "x-ignore-shared"],
     "Postcopy is not compatible with ignore-shared"),
    (P72, "source", ["zero-copy-send"],
     "Zero copy only available for non-compressed non-TLS multifd migration"),
    (P72, "source", ["zero-copy-send", "multifd"], None),
    (P72, "source", ["background-snapshot", "postcopy-ram", "xbzrle"],
     "Background-snapshot is not compatible with postcopy-ram"),
    (P72, "destination", ["background-snapshot", "validate-uuid"],
     "Background-snapshot is not compatible with validate-uuid"),
    (P72, "destination", ["postcopy-ram"], None),
    (P72, "source", ["x-colo"], None),  # Debian's build has replication
]


@pytest.mark.parametrize("profile,side,caps,error", CAPS)
def test_capability_table(profile, side, caps, error):
    result = check_capabilities(profile, cap_request(caps), side=side)
    assert result.ok == (error is None)
    assert result.error == error


def test_userfaultfd_missing_only_matters_when_newly_enabled_on_destination():
    no_uffd = {**P72.host_defaults(), "userfaultfd": False}
    req = cap_request(["postcopy-ram"])
    assert check_capabilities(P72, req, side="destination", host=no_uffd).error == \
        "Postcopy is not supported"
    assert check_capabilities(P72, req, side="source", host=no_uffd).ok
    assert check_capabilities(P72, req, side="destination", host=no_uffd,
                              current={"postcopy-ram": True}).ok


def test_no_live_block_migration_build():
    host = {**P72.host_defaults(), "live_block_migration": False}
    result = check_capabilities(P72, cap_request(["block"]), side="source", host=host)
    assert result.error == "QEMU compiled without old-style (blk/-b, inc/-i) block migration"


def test_zero_copy_reads_current_parameters():
    req = cap_request(["zero-copy-send", "multifd"])
    params = {"multifd-compression": "zlib", "tls-creds": ""}
    assert check_capabilities(P72, req, side="source", params=params).error == \
        "Zero copy only available for non-compressed non-TLS multifd migration"
    assert check_capabilities(P72, req, side="source",
                              params={"multifd-compression": "none", "tls-creds": "tls0"}).error


@pytest.mark.parametrize("state,ok", [("none", True), ("completed", True), ("failed", True),
                                      ("active", False), ("cancelling", False),
                                      ("postcopy-paused", False), ("colo", True)])
def test_capabilities_settable_only_when_not_running_7_2(state, ok):
    result = check_capabilities(P72, cap_request(["xbzrle"]), side="source", state=state)
    assert result.ok == ok
    if not ok:
        assert result.error == "There's a migration process in progress"


def test_caps_while_cancelling_3_0_allows_7_2_refuses():
    # 3.0 guards with migration_is_setup_or_active (no cancelling, no colo);
    # 7.2 with migration_is_running (cancelling yes, colo no).
    req = cap_request(["xbzrle"])
    assert check_capabilities(P30, req, side="source", state="cancelling").ok
    assert not check_capabilities(P72, req, side="source", state="cancelling").ok
    assert check_capabilities(P30, req, side="source", state="colo").ok
    assert check_capabilities(P72, req, side="source", state="colo").ok


@pytest.mark.parametrize("request_,error", [
    ([{"capability": "nope", "state": True}],
     "Parameter 'capability' does not accept value 'nope'"),  # observed on 7.2
    ([{"capability": "xbzrle", "state": "yes"}],
     "Invalid parameter type for 'capabilities[0].state', expected: boolean"),
    ([{"capability": "xbzrle"}], "Parameter 'capabilities[0].state' is missing"),
    ([{"capability": "xbzrle", "state": True, "x": 1}],
     "Parameter 'capabilities[0].x' is unexpected"),
    ({"capability": "xbzrle"}, "Invalid parameter type for 'capabilities', expected: array"),
])
def test_capability_qapi_input_errors(request_, error):
    assert check_capabilities(P72, request_, side="source").error == error


def test_rejection_does_not_mutate_inputs():
    current = {"xbzrle": True}
    params = {"multifd-compression": "none"}
    before = (copy.deepcopy(current), copy.deepcopy(params))
    check_capabilities(P72, cap_request(["multifd", "compress"]), side="source",
                       current=current, params=params)
    check_parameters(P72, {"multifd-channels": 0}, current=params)
    assert (current, params) == before


PARAMS = [
    ({"compress-level": 10}, "Parameter 'compress_level' expects a value between 0 and 9"),
    ({"multifd-channels": 256}, "Parameter 'multifd-channels' expects uint8_t"),
    ({"multifd-channels": 0}, "Parameter 'multifd_channels' expects a value between 1 and 255"),
    ({"downtime-limit": 2000001},
     "Parameter 'downtime_limit' expects an integer in the range of 0 to (2000 * 1000) ms"),
    ({"announce-step": 0}, "Parameter 'announce_step' expects a value between 0 and 10000"),
    ({"throttle-trigger-threshold": 101},
     "Parameter 'throttle_trigger_threshold' expects an integer in the range of 1 to 100"),
    ({"xbzrle-cache-size": 4095},
     "Parameter 'xbzrle_cache_size' expects a power of two no less than the target page size"),
    ({"cpu-throttle-initial": 60},
     None),  # max-cpu-throttle stays 99
    ({"cpu-throttle-initial": 60, "max-cpu-throttle": 59},
     "Parameter 'max_cpu_throttle' expects an integer in the range of cpu_throttle_initial to 99"),
    ({"multifd-compression": "lz4"},
     "Parameter 'multifd-compression' does not accept value 'lz4'"),
    ({"bogus": 1}, "Parameter 'bogus' is unexpected"),
    ({"compress-wait-thread": 1},
     "Invalid parameter type for 'compress-wait-thread', expected: boolean"),
]


@pytest.mark.parametrize("request_,error", PARAMS)
def test_parameter_table(request_, error):
    result = check_parameters(P72, request_)
    assert result.error == error and result.ok == (error is None)


def test_cross_rule_uses_the_merged_current_value():
    current = {"cpu-throttle-initial": 80}
    assert check_parameters(P72, {"max-cpu-throttle": 70}, current=current).error
    assert check_parameters(P72, {"max-cpu-throttle": 90}, current=current).ok


def test_7_2_quirks_negative_wraps_and_ignored_levels():
    result = check_parameters(P72, {"max-bandwidth": -1})
    assert result.value["max-bandwidth"] == 2 ** 64 - 1  # observed on 7.2
    result = check_parameters(P72, {"multifd-zlib-level": 21, "multifd-zstd-level": 99})
    assert result.ok and result.value["multifd-zlib-level"] == 1  # observed: ignored


def test_3_0_parameter_texts_are_the_old_wording():
    assert check_parameters(P30, {"compress-level": 10}).error == \
        "Parameter 'compress_level' expects is invalid, it should be in the range of 0 to 9"
    assert not check_parameters(P30, {"max-cpu-throttle": 50}).ok  # not in 3.0


def env(profile, **kw):
    return GuardEnv(profile=profile, **kw)


@pytest.mark.parametrize("name,args,kw,error", [
    ("migrate", {"uri": "tcp:x", "resume": True}, {"states": {"source": "active"}},
     "Cannot resume if there is no paused migration"),
    ("migrate", {"uri": "tcp:x", "resume": True},
     {"states": {"source": "postcopy-paused"}, "caps": {"release-ram": True}},
     "Postcopy recovery cannot work when release-ram capability is set"),
    ("migrate", {"uri": "tcp:x"}, {"states": {"source": "active"}},
     "There's a migration process in progress"),
    ("migrate", {"uri": "tcp:x"}, {"runstate": "inmigrate"},
     "Guest is waiting for an incoming migration"),
    ("migrate", {"uri": "tcp:x"}, {"runstate": "postmigrate"},
     "Can't migrate the vm that was paused due to previous migration"),
    ("migrate-continue", {"state": "pre-switchover"}, {"states": {"source": "active"}},
     "Migration not in expected state: active"),
    ("migrate-start-postcopy", {}, {},
     "Enable postcopy with migrate_set_capability before the start of migration"),
    ("migrate-start-postcopy", {}, {"caps": {"postcopy-ram": True}},
     "Postcopy must be started after migration has been started"),
    ("migrate-pause", {}, {"states": {"source": "active"}},
     "migrate-pause is currently only supported during postcopy-active state"),
    ("migrate-recover", {"uri": "unix:/x"}, {"states": {"destination": "postcopy-active"}},
     "Migrate recover can only be run when postcopy is paused."),
    ("migrate-incoming", {"uri": "tcp:x"}, {"runstate": "running"},
     "'-incoming' was not specified on the command line"),
    ("migrate-incoming", {"uri": "tcp:x"},
     {"runstate": "inmigrate", "flags": {"incoming_started": True}},
     "The incoming migration has already been started"),
])
def test_command_preconditions_7_2(name, args, kw, error):
    with pytest.raises(CommandError) as info:
        check_command(P72, name, args, env(P72, **kw))
    assert info.value.message == error


@pytest.mark.parametrize("name,args,kw", [
    ("migrate", {"uri": "tcp:x"}, {"states": {"source": "completed"}}),
    ("migrate", {"uri": "tcp:x", "resume": True}, {"states": {"source": "postcopy-paused"}}),
    ("migrate-continue", {"state": "pre-switchover"}, {"states": {"source": "pre-switchover"}}),
    ("migrate-pause", {}, {"states": {"destination": "postcopy-active"}}),
    ("migrate_cancel", {}, {}),
    ("migrate-set-parameters", {}, {"states": {"source": "active"}}),
])
def test_command_preconditions_that_pass(name, args, kw):
    check_command(P72, name, args, env(P72, **kw))
