"""Bad command-line input ends in one line that names the value and what is
allowed (``livemig: error: ...``, exit 2), never in a traceback; --batch names
what is wrong with a line; Ctrl-C and --timeout say why a migration ended."""
import json
import signal
import socket
import subprocess
import sys

import pytest

from livemig.spec import load_profile

P72 = load_profile("qemu-7.2")
PAGE = P72.target_page_size
RAM_ALLOWED = (f"expected a positive multiple of the target page size {PAGE} "
               f"(bytes, or with a K, M, G or T suffix, e.g. 64M)")


def run_cli(*args, stdin=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "livemig", *args], input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def assert_refused(proc, line):
    assert (proc.returncode, proc.stderr.splitlines()) == (2, [f"livemig: error: {line}"])


def rule_text(name):
    return next(r.error for r in P72.param_rules if r.param == name and r.when is None)


@pytest.mark.parametrize("value,why", [
    ("12X", "not a size"), ("0", "0 bytes"), ("-1", "-1 bytes"), ("100", "100 bytes"),
])
@pytest.mark.parametrize("command", [("vm", "--qmp", "unix:/nonexistent-dir/x.qmp"),
                                     ("incoming", "unix:/nonexistent-dir/x.sock"),
                                     ("migrate", "unix:/nonexistent-dir/x.sock")])
def test_a_bad_ram_size_is_one_line(command, value, why):
    assert_refused(run_cli(*command, f"--ram={value}"), f"--ram {value}: {why}; {RAM_ALLOWED}")


@pytest.mark.parametrize("command", ["incoming", "migrate"])
def test_a_parameter_value_of_the_wrong_type_names_the_spec_range(command):
    uri = "unix:/nonexistent-dir/x.sock"
    assert_refused(run_cli(command, uri, "--param", "multifd-channels=abc"),
                   "--param multifd-channels=abc: not an integer; "
                   + rule_text("multifd-channels"))
    assert_refused(run_cli(command, uri, "--param", "max-bandwidth=abc"),
                   "--param max-bandwidth=abc: not a size (bytes, or with a K, M, G or T "
                   "suffix, e.g. 64M); " + rule_text("max-bandwidth"))
    assert_refused(run_cli(command, uri, "--param", "multifd-channels"),
                   "--param multifd-channels: expected NAME=VALUE")


def test_vm_on_a_qmp_socket_it_cannot_bind_is_one_line():
    assert_refused(run_cli("vm", "--qmp", "unix:/nonexistent-dir/x.qmp"),
                   "--qmp unix:/nonexistent-dir/x.qmp: Failed to bind socket to "
                   "/nonexistent-dir/x.qmp: No such file or directory")
    assert_refused(run_cli("vm", "--qmp", "tcp:localhost:4444"),
                   "--qmp tcp:localhost:4444: expected unix:PATH")


@pytest.mark.parametrize("command", ["incoming", "migrate"])
def test_a_bad_uri_reads_as_qemus_migrate_text_on_both_sides(command):
    assert_refused(run_cli(command, "tcp:localhost"), P72.qapi_error("bad_uri"))


def test_postcopy_after_without_postcopy_ram_is_refused_at_once(tmp_path):
    pre = next(p for p in P72.command("migrate-start-postcopy").preconditions
               if p.id == "migrate-start-postcopy.caps")
    assert_refused(run_cli("migrate", f"unix:{tmp_path}/x.sock", "--postcopy-after", "1"),
                   f"--postcopy-after: {pre.error} (--caps postcopy-ram, on both sides)")


def test_caps_check_refuses_an_unknown_state_naming_the_profiles_statuses():
    assert_refused(run_cli("caps", "check", "--state", "bogus", "xbzrle"),
                   "--state: unknown migration status 'bogus' for profile qemu-7.2; "
                   f"expected one of {', '.join(P72.status_names)}")
    assert run_cli("caps", "check", "--state", "active", "xbzrle").returncode == 1


def batch(command, lines):
    proc = run_cli(command, "check", "--batch", stdin="".join(l + "\n" for l in lines))
    return proc.returncode, [json.loads(x) for x in proc.stdout.splitlines()]


def test_batch_names_what_is_wrong_with_a_line_echoes_its_id_and_exits_1():
    rc, answers = batch("caps", ['{"caps": ["xbzrle"], "id": 1}', 'not json',
                                 '{"caps": 5, "id": "x"}', '{"state": "bogus"}',
                                 '{"cap": []}'])
    assert rc == 1
    assert answers[0] == {"ok": True, "error": None, "id": 1}
    assert answers[1] == {"ok": False, "input_error": True,
                          "error": "line 2: Expecting value: line 1 column 1 (char 0)"}
    assert answers[2] == {"ok": False, "input_error": True, "id": "x",
                          "error": "line 3: 'caps' must be an array"}
    assert answers[3]["error"].startswith("line 4: unknown migration status 'bogus'")
    assert answers[4]["error"] == ("line 5: unknown member 'cap'; expected profile, caps, "
                                   "side, current, host, params, state or id")


def test_batch_of_well_formed_lines_exits_0_even_when_rejected():
    rc, answers = batch("params", ['{"params": {"multifd-channels": 0}, "id": [7]}'])
    assert (rc, answers) == (0, [{"ok": False, "id": [7],
                                  "error": rule_text("multifd-channels")}])
    rc, answers = batch("params", ['{"params": {}, "current": 5}'])
    assert (rc, answers) == (1, [{"ok": False, "input_error": True,
                                  "error": "line 1: 'current' must be an object"}])


def test_monitor_names_the_socket_and_the_reason(tmp_path):
    missing = tmp_path / "missing.qmp"
    proc = run_cli("monitor", "--qmp", f"unix:{missing}", "--timeout", "5")
    assert (proc.returncode, proc.stderr.splitlines()) == (
        2, [f"livemig monitor: QMP socket {missing} not reachable: No such file or directory"])
    stale = tmp_path / "stale.qmp"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))  # bound, never listening: connections are refused
        proc = run_cli("monitor", "--qmp", str(stale), "--timeout", "0.5")
    assert (proc.returncode, proc.stderr.splitlines()) == (
        2, [f"livemig monitor: QMP socket {stale} not reachable within 0.5 s: "
            f"Connection refused"])


def _slow_migration(tmp_path, *extra):
    """An incoming side and a migrate at 1 MiB/s whose transition log is its stderr."""
    uri = f"unix:{tmp_path}/mig.sock"
    inc = subprocess.Popen([sys.executable, "-m", "livemig", "incoming", uri, "--ram", "64M",
                            "--timeout", "60"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    assert inc.stdout.readline().startswith("listening on")
    mig = subprocess.Popen([sys.executable, "-m", "livemig", "migrate", uri, "--ram", "64M",
                            "--param", "max-bandwidth=1M", "--log", "/dev/stderr", *extra],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return inc, mig


def _statuses(log_lines):
    return [json.loads(line)["new"] for line in log_lines if line.startswith("{")]


def test_ctrl_c_cancels_the_migration_waits_for_cancelled_and_says_so(tmp_path):
    inc, mig = _slow_migration(tmp_path)
    try:
        seen = []
        for line in mig.stderr:  # the NDJSON log, line-buffered
            seen.append(line)
            if json.loads(line)["new"] == "active":
                break
        mig.send_signal(signal.SIGINT)
        out, err = mig.communicate(timeout=60)
    finally:
        mig.kill()
        inc.kill()
        inc.communicate()
    assert mig.returncode == 130, (out, err)
    assert "interrupted (Ctrl-C); cancelling the migration (migrate_cancel)" in out.splitlines()
    # the summary: the status, then what was sent before the cancel
    assert out.splitlines()[-1].startswith("cancelled: sent "), out
    assert _statuses(seen + err.splitlines())[-2:] == ["cancelling", "cancelled"]


def test_timeout_says_it_cancelled_and_why(tmp_path):
    inc, mig = _slow_migration(tmp_path, "--timeout", "1")
    try:
        out, err = mig.communicate(timeout=60)
    finally:
        mig.kill()
        inc.kill()
        inc.communicate()
    assert mig.returncode == 1
    assert ("timed out: not completed within --timeout 1 s; cancelling the migration "
            "(migrate_cancel)") in out.splitlines()
    # the summary: the status, then what was sent before the cancel
    assert out.splitlines()[-1].startswith("cancelled: sent "), out
    assert _statuses(err.splitlines())[-1] == "cancelled"
