"""What ``livemig incoming`` and ``livemig migrate`` print while and after they
run: the incoming side's progress line, what a cancelled migration sent and a
failed load received, and the memory check's verdict in words."""
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time

import pytest

from livemig.engine.cli import memory_check_text

WAIT = 120.0  # seconds: bounded waits, generous for a loaded 2-core machine
#: wide enough that rich wraps no line the tests read
ENV = dict(os.environ, COLUMNS="250", PYTHONUNBUFFERED="1")


def livemig(*args):
    return [sys.executable, "-m", "livemig", *args]


def start_incoming(uri, *args):
    """``livemig incoming URI`` once it says it listens (the socket is ready)."""
    proc = subprocess.Popen(livemig("incoming", uri, *args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ENV)
    seen = b""
    deadline = time.monotonic() + WAIT
    while b"listening on" not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            proc.kill()
            out, err = proc.communicate(timeout=10)
            pytest.fail(f"incoming never listened: {seen + out!r} {err!r}")
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if ready:
            seen += os.read(proc.stdout.fileno(), 4096)
    return proc, seen


def finish(proc, seen):
    try:
        out, err = proc.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"incoming did not end: {seen + out!r} {err!r}")
    return (seen + out).decode(), err.decode()


def mib(text):
    return float(text.replace(",", ""))


def test_incoming_shows_progress_and_explains_the_memory_check(tmp_path):
    uri = f"unix:{tmp_path}/mig.sock"
    proc, seen = start_incoming(uri, "--ram", "16M")
    src = subprocess.run(livemig("migrate", uri, "--ram", "16M"), capture_output=True,
                         text=True, timeout=WAIT, env=ENV)
    out, err = finish(proc, seen)
    assert src.returncode == 0, src.stdout + src.stderr
    assert proc.returncode == 0, out + err
    # the progress line's last state: status, data received of the guest's RAM, zero pages
    line = re.search(r"^completed\s.*?([\d,]+)/16 MiB zero ([\d,]+) pg ([\d,]+) MB/s "
                     r"\d+:\d\d:\d\d$", out, re.M)
    assert line, out
    assert mib(line.group(1)) >= 15  # at least the whole guest once (re-sent pages add)
    summary = re.search(r"^completed: ([\d,]+) pages, ([\d,]+) zero pages; (.*)$", out, re.M)
    assert summary, out
    assert int(summary.group(1).replace(",", "")) >= 16 * 256 - int(
        summary.group(2).replace(",", ""))  # every page came, as data or as a zero page
    assert summary.group(3).startswith("memory check passed: every page as the source left "
                                       "it ("), summary.group(3)


def test_a_cancelled_migration_says_what_it_sent_and_the_incoming_what_it_received(
        tmp_path):
    uri = f"unix:{tmp_path}/mig.sock"
    proc, seen = start_incoming(uri, "--ram", "16M")
    # 1 MiB/s cannot move 16 MiB within the 2 s --timeout: the migration is cancelled
    src = subprocess.run(livemig("migrate", uri, "--ram", "16M", "--param", "max-bandwidth=1M",
                                 "--timeout", "2"),
                         capture_output=True, text=True, timeout=WAIT, env=ENV)
    out, err = finish(proc, seen)
    assert src.returncode == 1, src.stdout + src.stderr
    assert ("timed out: not completed within --timeout 2 s; cancelling the migration "
            "(migrate_cancel)") in src.stdout
    sent = re.search(r"^cancelled: sent ([\d,.]+) MiB \(of 16 MiB of RAM\) before it ended: "
                     r"([\d,]+) pages \+ ([\d,]+) zero pages, \d+ pass", src.stdout, re.M)
    assert sent, src.stdout
    assert mib(sent.group(1)) > 0 and int(sent.group(2).replace(",", "")) > 0
    # the progress line kept the last counters rather than falling back to 0
    assert not re.search(r"\b0/16 MiB", src.stdout), src.stdout
    assert proc.returncode == 1, out + err
    got = re.search(r"^incoming migration failed after receiving ([\d,.]+) MiB \(([\d,]+) "
                    r"pages \+ [\d,]+ zero pages\)", out, re.M)
    assert got, out
    assert mib(got.group(1)) > 0 and int(got.group(2).replace(",", "")) > 0


def test_a_cancelled_migration_reports_no_more_than_the_peer_read(tmp_path):
    """Against a plain sink that counts the bytes: what the summary says was sent
    did reach the socket."""
    path = str(tmp_path / "sink.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(WAIT)
    total = []

    def sink():
        conn, _ = listener.accept()
        conn.settimeout(WAIT)
        n = 0
        with conn:
            while chunk := conn.recv(1 << 16):
                n += len(chunk)
        total.append(n)

    reader = threading.Thread(target=sink, daemon=True)
    reader.start()
    try:
        src = subprocess.run(livemig("migrate", f"unix:{path}", "--ram", "16M", "--param",
                                     "max-bandwidth=1M", "--timeout", "2"),
                             capture_output=True, text=True, timeout=WAIT, env=ENV)
        reader.join(WAIT)
    finally:
        listener.close()
    assert total, "the sink saw no end of stream"
    sent = re.search(r"^cancelled: sent ([\d,.]+) MiB", src.stdout, re.M)
    assert sent, src.stdout
    # the summary rounds to 0.1 MiB; the sink read at least what was reported
    assert 0 < mib(sent.group(1)) <= total[0] / 2**20 + 0.05


@pytest.mark.parametrize("check,text", [
    ({"ok": True, "edges": 1, "bad": 0},
     "memory check [green]passed[/]: every page as the source left it (1 edge: the page "
     "where the stopped guest's last sweep ended, one behind its neighbour, as QEMU's "
     "check_guests_ram allows)"),
    ({"ok": True, "edges": 0, "bad": 0},
     "memory check [green]passed[/]: every page as the source left it (no edge: the guest "
     "stopped between two sweeps, or never ran)"),
    ({"ok": False, "edges": 2, "bad": 3},
     "memory check [red]FAILED[/]: 3 pages out of the guest's sweep pattern (first bytes "
     "equal but for one edge, where a page is one behind its neighbour), i.e. lost or "
     "stale; 2 edges seen"),
])
def test_the_memory_check_says_what_an_edge_is(check, text):
    assert memory_check_text(check) == text
