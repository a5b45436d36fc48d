"""Hostile input on a QMP connection (issue 11 item 3): livemig answers as QEMU 7.2.

Raw bytes on one unix-socket connection to a real ``livemig vm``: each case
gets QEMU's exact error text, the connection stays open, and the next valid
command is answered with its id.  The same byte sequences also run against the
installed ``qemu-system-x86_64`` 7.2 (``-M none``) and the answers are compared.
Unit tests of :class:`QMPInputParser` (chunking, depth, resynchronisation).
"""
from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from livemig.conformance.qemupeer import why_not_qemu_72
from livemig.engine.qmp import NO_ID, QMPError, QMPInputParser, check_request, qdict_order
from livemig.engine.vm import VM
from livemig.spec import load_profile

PROFILE = load_profile("qemu-7.2")
T = PROFILE.qapi_error
TIMEOUT = 20.0


class RawQMP:
    """A plain socket on a QMP unix socket: send bytes, read answer lines."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(path)
        self.buf = b""
        self.greeting = self.read()
        self.n = 0

    def read(self) -> dict:
        """The next answer that is not an event (bounded by the socket timeout)."""
        while True:
            while b"\n" not in self.buf:
                data = self.sock.recv(65536)
                if not data:
                    raise ConnectionError("connection closed")
                self.buf += data
            line, self.buf = self.buf.split(b"\n", 1)
            msg = json.loads(line)
            if "event" not in msg:
                return msg

    def until(self, ident: Any) -> list[dict]:
        """Answers up to (without) the one with ``id`` ``ident``."""
        out = []
        while True:
            msg = self.read()
            if msg.get("id") == ident:  # answered (an error before negotiation)
                return out
            out.append(msg)

    def case(self, data: bytes, resync: bool = False) -> list[dict]:
        """Send ``data`` then a query-status with a fresh id (after a 0xFF if
        ``resync``); the answers before that command's, which must come."""
        self.n += 1
        ident = f"sentinel-{self.n}"
        tail = json.dumps({"execute": "query-status", "id": ident}).encode() + b"\n"
        self.sock.sendall(data + (b"\xff" if resync else b"") + tail)
        return self.until(ident)

    def negotiate(self) -> None:
        self.sock.sendall(b'{"execute":"qmp_capabilities","arguments":{"enable":["oob"]},'
                          b'"id":"neg"}\n')
        assert self.read() == {"return": {}, "id": "neg"}

    def close(self) -> None:
        self.sock.close()


def _wait_socket(path: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        assert proc.poll() is None, "the process exited before opening its QMP socket"
        assert time.monotonic() < deadline, "no QMP socket"
        time.sleep(0.05)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="lm-hostile-") as d:
        yield Path(d)


@pytest.fixture(scope="module")
def livemig_qmp(workdir: Path) -> Iterator[str]:
    path = str(workdir / "vm.qmp")
    proc = subprocess.Popen([sys.executable, "-m", "livemig", "vm", "--qmp", f"unix:{path}",
                             "--ram", "16M"], stdout=subprocess.DEVNULL,
                            stderr=open(workdir / "vm.err", "w"))
    try:
        _wait_socket(path, proc)
        yield path
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def qemu_qmp(workdir: Path) -> Iterator[str]:
    reason = why_not_qemu_72()
    if reason:
        pytest.skip(reason)
    path = str(workdir / "qemu.qmp")
    proc = subprocess.Popen(["qemu-system-x86_64", "-M", "none", "-nodefaults", "-display",
                             "none", "-qmp", f"unix:{path},server=on,wait=off"],
                            stdout=subprocess.DEVNULL, stderr=open(workdir / "qemu.err", "w"))
    try:
        _wait_socket(path, proc)
        yield path
    finally:
        _stop(proc)


def err(desc: str, ident: Any = NO_ID, klass: str = "GenericError") -> dict:
    return QMPError(klass, desc, ident).response()


NOT_OBJECT = err(T("qmp_not_object"))
NESTING = err(T("json_nesting"))
FF = err(T("json_stray") % "\ufffd")


def parse_error(what: str) -> dict:
    return err(T("json_parse") % T(what))


# (label, bytes, resync, expected answers) - the answers QEMU 7.2 gave to these
# bytes (recorded with qemu-system-x86_64 7.2.22 -M none; the comparison test
# below checks them again against the installed binary).
BEFORE_NEGOTIATION = [
    ("command before negotiation", b'{"execute":"query-status","id":1}\n', False,
     [err(T("qmp_negotiation_expected"), 1, "CommandNotFound")]),
    ("arguments a list, before negotiation",
     b'{"execute":"query-status","arguments":[1],"id":2}\n', False,
     [err(T("arguments_not_object"), 2)]),
    ("}{ then 0xFF, before negotiation", b"}{\n", True,
     [parse_error("json_expecting_value"), FF]),
]
CASES = [
    ("arguments a list", b'{"execute":"query-status","arguments":[1],"id":3}\n', False,
     [err(T("arguments_not_object"), 3)]),
    ("arguments a string", b'{"execute":"query-status","arguments":"x","id":"s"}\n', False,
     [err(T("arguments_not_object"), "s")]),
    ("arguments null", b'{"execute":"query-status","arguments":null,"id":null}\n', False,
     [err(T("arguments_not_object"), None)]),
    ("top-level list", b"[1]\n", False, [NOT_OBJECT]),
    ("top-level number", b"1\n", False, [NOT_OBJECT]),
    ("top-level string", b'"x"\n', False, [NOT_OBJECT]),
    ("missing execute", b'{"id":5}\n', False, [err(T("qmp_lacks_execute"), 5)]),
    ("empty object", b"{}\n", False, [err(T("qmp_lacks_execute"))]),
    ("unknown member", b'{"execute":"query-status","foo":1,"id":6}\n', False,
     [err(T("qmp_member_unexpected") % "foo", 6)]),
    ("execute not a string", b'{"execute":1,"id":7}\n', False,
     [err(T("qmp_member_not_string") % "execute", 7)]),
    ("execute and exec-oob", b'{"execute":"query-status","exec-oob":"migrate-pause","id":8}\n',
     False, [err(T("qmp_member_clash") % ("execute", "exec-oob"), 8)]),
    ("exec-oob of a command without OOB", b'{"exec-oob":"query-status","id":9}\n', False,
     [err(T("qmp_no_oob") % "query-status", 9)]),
    ("several bad members: QDict order", b'{"foo":3,"arguments":2,"execute":1,"id":10}\n',
     False, [err(T("qmp_member_not_string") % "execute", 10)]),
    ("two unknown members: QDict order", b'{"foo":3,"bar":1,"id":10}\n', False,
     [err(T("qmp_member_unexpected") % "bar", 10)]),
    ("three unknown members", b'{"zz":1,"a":1,"b":1,"execute":"x"}\n', False,
     [err(T("qmp_member_unexpected") % "a")]),
    ("several values on one line", b'[1] 2 {"id":11} }\n', False,
     [NOT_OBJECT, NOT_OBJECT, err(T("qmp_lacks_execute"), 11),
      parse_error("json_expecting_value")]),
    ("stray byte", b"%\n", False, [err(T("json_stray") % "%")]),
    ("invalid keyword", b'{"execute":"query-status","id":tru}\n', False,
     [err(T("json_parse") % (T("json_invalid_keyword") % "tru"))]),
    ("duplicate key", b'{"execute":"query-status","execute":"stop","id":12}\n', False,
     [parse_error("json_duplicate_key")]),
    ("unknown command keeps the id", b'{"execute":"nope","id":{"a":[1]}}\n', False,
     [err("The command nope has not been found", {"a": [1]}, "CommandNotFound")]),
    ("control byte in a string", b'{"execute":"query\x01status","id":14}\n', False,
     [err(T("json_stray") % '"query\x01'), parse_error("json_expecting_value"), NOT_OBJECT,
      parse_error("json_expecting_value"), NOT_OBJECT, parse_error("json_expecting_value")]),
    ("invalid UTF-8", b'{"execute":"query\xc3\x28","id":15}\n', False,
     [parse_error("json_invalid_utf8")]),
    ("invalid escape", b'{"execute":"q\\x","id":16}\n', False,
     [parse_error("json_invalid_escape")]),
    ("lone surrogate", b'{"execute":"q\\ud800","id":17}\n', False,
     [err(T("json_parse") % (T("json_invalid_unicode") % "\\ud800"))]),
    ("key not a string", b"{1:2}\n", False, [parse_error("json_key_not_string")]),
    ("missing colon", b'{"a" 2}\n', False, [parse_error("json_missing_colon")]),
    ("separator in dict", b'{"a":1 "b":2}\n', False, [parse_error("json_dict_separator")]),
    ("separator in list", b"[1 2]\n", False, [parse_error("json_list_separator")]),
    ("trailing comma", b"[1,]\n", False, [parse_error("json_expecting_value")]),
    ("mismatched brackets", b"[}\n", False, [parse_error("json_expecting_value")]),
    ("leading zero", b"01\n", False, [err(T("json_stray") % "01")]),
    ("0xFF alone", b"\xff", False, [FF]),
    ("single quotes", b"{'execute':'nope','id':'sq'}\n", False,
     [err("The command nope has not been found", "sq", "CommandNotFound")]),
    ("5,000 [", b"[" * 5000, True, [NESTING] * 4 + [FF]),
    ("deep nesting inside arguments",
     b'{"execute":"query-status","arguments":{"a":' + b"[" * 1100 + b"\n", True,
     [NESTING, FF]),
    ("100,000 [", b"[" * 100_000, True, [NESTING] * (100_000 // 1025) + [FF]),
    ("1,024 levels are allowed", b"[" * 1024 + b"]" * 1024 + b"\n", False, [NOT_OBJECT]),
    ("}{ then a command: swallowed until 0xFF",
     b'}{\n{"execute":"query-status","id":"lost"}\n', True,
     [parse_error("json_expecting_value"), FF]),
]


def _run(conn: RawQMP, cases: list) -> list[tuple[str, list[dict]]]:
    return [(label, conn.case(data, resync)) for label, data, resync, _ in cases]


def test_hostile_input_on_one_livemig_connection(livemig_qmp: str) -> None:
    conn = RawQMP(livemig_qmp)
    try:
        assert conn.greeting["QMP"]["capabilities"] == ["oob"]
        for label, data, resync, expected in BEFORE_NEGOTIATION:
            assert conn.case(data, resync) == expected, label
        conn.negotiate()
        for label, data, resync, expected in CASES:
            assert conn.case(data, resync) == expected, label
        # and the connection still answers commands, with their ids
        conn.sock.sendall(b'{"execute":"query-status","id":"last"}')
        last = conn.read()
        assert last["id"] == "last" and "return" in last
    finally:
        conn.close()


def test_set_workload_refuses_bad_rates(livemig_qmp: str) -> None:
    conn = RawQMP(livemig_qmp)
    try:
        conn.negotiate()
        for rate in (b"-5", b"1e999", b"-1e999"):
            conn.sock.sendall(b'{"execute":"x-livemig-set-workload","arguments":{"rate":'
                              + rate + b'},"id":"w"}\n')
            answer = conn.read()
            assert answer["id"] == "w" and answer["error"]["class"] == "GenericError"
            desc = answer["error"]["desc"]
            assert desc.startswith("Parameter 'rate' expects a finite number"), desc
            assert "range of 0 to" in desc and "got" in desc, desc
        # NaN is not JSON: QEMU's lexer refuses it before any command
        assert conn.case(b'{"execute":"x-livemig-set-workload","arguments":{"rate":NaN}}\n'
                         )[0] == err(T("json_stray") % "N")
        conn.sock.sendall(b'{"execute":"x-livemig-set-workload","arguments":{"rate":5},'
                          b'"id":"ok"}\n')
        assert conn.read() == {"return": {}, "id": "ok"}
    finally:
        conn.close()


def test_set_workload_changes_nothing_when_refused() -> None:
    vm = VM(ram_size=4 << 20)
    try:
        before = (vm.guest.workload_rate, vm.guest.batch)
        for args in ({"rate": -5}, {"rate": float("nan")}, {"rate": float("inf")},
                     {"rate": 10, "batch": 0}, {"rate": 10, "batch": -3}):
            with pytest.raises(Exception) as exc:
                vm.execute("x-livemig-set-workload", args)
            assert exc.value.qmp_class == "GenericError"
            assert "got" in exc.value.message and "Parameter '" in exc.value.message
            assert (vm.guest.workload_rate, vm.guest.batch) == before
        assert "got nan" in _refusal(vm, {"rate": float("nan")})
        assert "got -5" in _refusal(vm, {"rate": -5})
        vm.execute("x-livemig-set-workload", {"rate": 7, "batch": 2})
        assert (vm.guest.workload_rate, vm.guest.batch) == (7.0, 2)
    finally:
        vm.close()


def _refusal(vm: VM, args: dict) -> str:
    try:
        vm.execute("x-livemig-set-workload", args)
    except Exception as exc:  # MigrationError
        return exc.message  # type: ignore[attr-defined]
    raise AssertionError("accepted")


def test_same_answers_as_qemu_7_2(qemu_qmp: str, livemig_qmp: str) -> None:
    """The byte sequences above on QEMU 7.2 and on livemig: the same answers."""
    answers = {}
    for name, path in (("qemu", qemu_qmp), ("livemig", livemig_qmp)):
        conn = RawQMP(path)
        try:
            before = _run(conn, BEFORE_NEGOTIATION)
            conn.negotiate()
            answers[name] = before + _run(conn, CASES)
        finally:
            conn.close()
    for (label, got_qemu), (_, got_livemig) in zip(answers["qemu"], answers["livemig"]):
        assert got_livemig == got_qemu, label


# ---------------------------------------------------------------- the parser alone
def _responses(items: list) -> list:
    return [it.response() if isinstance(it, QMPError) else it for it in items]


STREAM = (b'{"execute":"query-status","id":1}[1]}{\n\xff{"execute":"stop",'
          b'"arguments":{"a":[1,2.5,"x\\u00e9y",true,null]}}  "s" 12 %x{"id":[]}'
          + b"[" * 1030 + b'\xfe{"a":\'b\'}\x01-\n')


def test_parser_chunk_boundaries_do_not_matter() -> None:
    whole = _responses(QMPInputParser().feed(STREAM))
    assert len(whole) >= 8
    rng = random.Random(11)
    for _ in range(200):
        parser = QMPInputParser()
        got, i = [], 0
        while i < len(STREAM):
            j = i + rng.randint(1, 40)
            got += _responses(parser.feed(STREAM[i:j]))
            i = j
        assert got == whole
    bytewise = QMPInputParser()
    assert [r for k in range(len(STREAM)) for r in _responses(bytewise.feed(STREAM[k:k + 1]))
            ] == whole


def test_parser_100000_brackets_without_recursion() -> None:
    parser = QMPInputParser()
    out = parser.feed(b"[" * 100_000)
    assert _responses(out) == [NESTING] * (100_000 // 1025)
    out = parser.feed(b"\xff" + b'{"execute":"query-status"}')
    assert _responses(out) == [FF, {"execute": "query-status"}]
    # deep but allowed: decoded without recursion too
    deep = QMPInputParser().feed(b'{"execute":"x","arguments":{"a":' + b"[" * 1020
                                 + b"]" * 1020 + b"}}")
    assert isinstance(deep[0], dict)


def test_parser_ff_resynchronises() -> None:
    parser = QMPInputParser()
    assert _responses(parser.feed(b'}{\n{"execute":"query-status","id":"lost"}\n')) == [
        parse_error("json_expecting_value")]
    assert _responses(parser.feed(b'\xff{"execute":"query-status","id":"next"}')) == [
        FF, {"execute": "query-status", "id": "next"}]


def test_parser_token_limits() -> None:
    parser = QMPInputParser()
    parser.max_token_size = 100
    # the over-long string token is refused; lexing restarts inside it (the
    # rest of its bytes are a keyword, refused too), and 0xFF resynchronises
    out = _responses(parser.feed(b'["' + b"x" * 150 + b'\xff{"execute":"stop"}'))
    assert out == [err(T("json_token_size")),
                   err(T("json_parse") % (T("json_invalid_keyword") % ("x" * 50))),
                   FF, {"execute": "stop"}]
    parser = QMPInputParser()
    parser.max_token_count = 10
    out = _responses(parser.feed(b"[" + b"1," * 20 + b"1]"))
    # the 11th token is refused; the streamer starts afresh at the 12th, so the
    # rest are top-level values and stray separators, as on QEMU
    assert out[:3] == [err(T("json_token_count")), NOT_OBJECT,
                       parse_error("json_expecting_value")]
    assert _responses(parser.feed(b'{"execute":"stop"}')) == [{"execute": "stop"}]


def test_parser_never_raises_on_random_bytes() -> None:
    rng = random.Random(7)
    alphabet = b'{}[]:,"\'\\0123456789-+.eEtrufalsn \t\r\n\x00\x01\xc3\xa9\xfe\xff%u'
    for _ in range(300):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 400)))
        parser = QMPInputParser()
        out = parser.feed(data) + parser.feed(bytes(rng.randrange(256) for _ in range(50)))
        assert isinstance(out, list)
        for item in out:
            assert isinstance(item, (dict, QMPError))
            json.dumps(_responses([item]))


def test_check_request_member_order() -> None:
    assert qdict_order(["foo", "bar", "id"])[0] == "bar"
    result = check_request({"execute": "stop", "arguments": {}, "id": None}, False, PROFILE)
    assert result == ("stop", {}, False, None)
    assert check_request({"exec-oob": "migrate-pause"}, False, PROFILE) == QMPError(
        "GenericError", T("qmp_member_unexpected") % "exec-oob")
    assert check_request({"exec-oob": "migrate-pause"}, True, PROFILE) == (
        "migrate-pause", {}, True, NO_ID)
