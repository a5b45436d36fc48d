"""A hostile or broken peer on the wire (issue 11): each defect found by the
adversarial runs has a test here that failed before its fix.

1. a malformed return-path message must fail the migration, never let the
   source report ``completed`` (the return-path thread used to die of an
   IndexError and the source completed without the destination's SHUT);
2. a multifd destination whose main channel ends before every multifd
   channel connected must fail, not wait for ever in ``active``;
4. a device section shorter than its fixed part fails the load with a
   spec text, sends SHUT 1, and ``livemig incoming`` prints one line;
5. a section or machine-type length beyond the spec's bound is refused
   before anything is buffered.

The peers here are plain sockets speaking bytes the test writes, so what the
engine sees is exactly what an adversary would send.
"""
from __future__ import annotations

import select
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from livemig.engine.returnpath import ReturnPathDecoder, encode_rp
from livemig.engine.rows import statuses
from livemig.engine.source import MACHINE
from livemig.engine.stream import DEVICE_SECTION, GLOBALSTATE_SECTION, StreamDecoder, \
    StreamEncoder
from livemig.engine.vm import VM
from livemig.engine.wire import wire_tables
from livemig.errors import ReturnPathError, StreamError
from livemig.spec import load_profile

P = load_profile("qemu-7.2")
W = wire_tables(P)
ST = statuses(P)
TIMEOUT = 30.0


def _caps(vm: VM, *names: str) -> None:
    vm.execute("migrate-set-capabilities",
               {"capabilities": [{"capability": n, "state": True} for n in names]})


def _wait(cond, timeout: float = TIMEOUT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class FakeDestination:
    """Accepts one main channel on a unix socket, reads everything the source
    sends, and writes ``reply`` on the return path once it has seen the
    stream's end (the QEMU_VM_EOF byte followed by silence, or the peer's
    shutdown); ``then_close`` closes the channel after the reply."""

    def __init__(self, path: str, reply: bytes, *, then_close: bool = True) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(4)
        self.reply = reply
        self.then_close = then_close
        self.received = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        decoder = StreamDecoder(P, {}, machine=MACHINE, expect_header=True)
        try:
            with conn:
                # Parse only the framing we need: read until the source has sent
                # its EOF byte and waits for our answer (no bytes for a moment).
                while True:
                    ready, _, _ = select.select([conn], [], [], 0.5)
                    if not ready:
                        if self.received:
                            break  # the source waits on the return path now
                        continue
                    data = conn.recv(1 << 20)
                    if not data:
                        break
                    self.received += len(data)
                del decoder
                conn.sendall(self.reply)
                if not self.then_close:
                    self.done.wait(TIMEOUT)
        finally:
            self.done.set()

    def close(self) -> None:
        self.done.set()
        self.sock.close()
        self.thread.join(TIMEOUT)


@pytest.mark.parametrize("reply,error", [
    # MIG_RP_MSG_RECV_BITMAP with length 0: the decoder used to raise IndexError
    (bytes.fromhex("00050000"), "missing block name"),
    # REQ_PAGES_ID whose idlen does not match the message length
    (struct.pack(">HH", 3, 14) + struct.pack(">QIB", 0, 4096, 9) + b"x",
     "Req_Page_id with length 14 expecting 22"),
    # RECV_BITMAP whose name runs past the message
    (struct.pack(">HHB", 5, 2, 40) + b"r", "with incorrect length 2 expecting 41"),
    # the return path closes without the destination's SHUT
    (b"", "return path closed"),
])
def test_malformed_return_path_fails_the_migration_never_completes(tmp_path, reply, error):
    path = str(tmp_path / "rp.sock")
    fake = FakeDestination(path, reply)
    src = VM(ram_size=4 << 20, workload_rate=0)
    try:
        _caps(src, "return-path", "events")
        src.execute("migrate", {"uri": f"unix:{path}"})
        src.wait_for_status(ST.terminal, timeout=TIMEOUT)
        info = src.execute("query-migrate")
        assert info["status"] == ST.failed, info
        assert error in info.get("error-desc", ""), info
        assert src.execute("query-status")["status"] == "running"
    finally:
        src.close()
        fake.close()


def test_return_path_decoder_raises_only_its_own_error():
    """Every short or inconsistent payload of every variable-length message
    is a ReturnPathError with a spec text, never IndexError/struct.error."""
    for msg in P.wire.return_path:
        if msg.value == 0:
            continue
        short = msg.name[len("MIG_RP_MSG_"):]
        lengths = [msg.length] if msg.length is not None else range(0, 40)
        for n in lengths:
            for fill in (0x00, 0x01, 0xFF):
                dec = ReturnPathDecoder(P)
                try:
                    dec.feed(encode_rp(P, short, bytes([fill]) * n))
                except ReturnPathError as exc:
                    assert exc.message
                # anything else propagates and fails the test


def test_multifd_destination_fails_when_main_channel_ends_before_all_channels(tmp_path):
    """The source opened the main channel, then was cancelled before its
    multifd channels connected: the destination must fail (it stayed
    'active' for ever before)."""
    path = str(tmp_path / "mf.sock")
    dst = VM(ram_size=4 << 20, incoming="defer")
    try:
        _caps(dst, "multifd", "events")
        dst.execute("migrate-set-parameters", {"multifd-channels": 2})
        dst.execute("migrate-incoming", {"uri": f"unix:{path}"})
        enc = StreamEncoder(P)
        main = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        main.connect(path)
        main.sendall(enc.header())
        assert dst.wait_for_status({ST.active}, TIMEOUT, side="destination")
        main.close()  # as a cancelled source does
        assert dst.wait_for_status({ST.failed}, TIMEOUT, side="destination"), \
            dst.dst_cell.state
        assert "Input/output error" in dst.incoming.error_desc
    finally:
        dst.close()


def test_multifd_cancel_right_after_migrate_over_unix(tmp_path):
    """The reported sequence: multifd over unix, migrate_cancel at once."""
    for trial in range(3):
        path = str(tmp_path / f"c{trial}.sock")
        dst = VM(ram_size=4 << 20, incoming="defer")
        src = VM(ram_size=4 << 20, workload_rate=20000)
        try:
            for vm in (src, dst):
                _caps(vm, "multifd", "events")
                vm.execute("migrate-set-parameters", {"multifd-channels": 2})
            dst.execute("migrate-incoming", {"uri": f"unix:{path}"})
            src.execute("migrate", {"uri": f"unix:{path}"})
            src.execute("migrate_cancel")
            src.wait_for_status(ST.terminal, timeout=TIMEOUT)
            assert src.execute("query-migrate")["status"] in (ST.cancelled, ST.completed)
            # the destination ends too: failed, or completed if the cancel was late
            assert dst.wait_incoming_done(TIMEOUT), dst.dst_cell.state
            assert dst.dst_cell.state in {ST.failed, ST.completed}
        finally:
            src.close()
            dst.close()


def _stream_with_section(idstr: str, body_len_field: int, body: bytes,
                         return_path: bool = True) -> bytes:
    enc = StreamEncoder(P)
    out = enc.header() + enc.configuration(MACHINE)
    if return_path:
        out += enc.command("OPEN_RETURN_PATH")
    out += enc.section_start(7, idstr, 0, 1, full=True)
    out += struct.pack(">I", body_len_field) + body
    return out + enc.footer(7) + enc.eof()


def test_short_device_section_fails_the_load_with_shut(tmp_path):
    path = str(tmp_path / "dev.sock")
    dst = VM(ram_size=4 << 20, incoming="defer")
    try:
        _caps(dst, "events")
        dst.execute("migrate-incoming", {"uri": f"unix:{path}"})
        peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        peer.connect(path)
        peer.sendall(_stream_with_section(DEVICE_SECTION, 3, b"abc"))
        peer.settimeout(TIMEOUT)
        got = b""
        while len(got) < 8:
            more = peer.recv(8 - len(got))
            if not more:
                break
            got += more
        peer.close()
        assert got == encode_rp(P, "SHUT", struct.pack(">I", 1)), got.hex()
        assert dst.wait_for_status({ST.failed}, TIMEOUT, side="destination")
        text = W.error("device_state_short", DEVICE_SECTION, 3, W.min_device_state)
        assert dst.incoming.error_desc == f"load of migration failed: {text}"
    finally:
        dst.close()


def test_cli_incoming_short_device_section_one_line_no_traceback(tmp_path):
    stream = tmp_path / "short.mig"
    stream.write_bytes(_stream_with_section(DEVICE_SECTION, 3, b"abc", return_path=False))
    out = subprocess.run([sys.executable, "-m", "livemig", "incoming", f"file:{stream}",
                          "--ram", "4M"], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr + out.stdout
    assert "at least 8 expected" in out.stderr + out.stdout


@pytest.mark.parametrize("idstr", [DEVICE_SECTION, GLOBALSTATE_SECTION])
def test_huge_section_length_is_refused_before_buffering(idstr):
    dec = StreamDecoder(P, {}, machine=MACHINE)
    head = _stream_with_section(idstr, 0xFFFFFFFF, b"", return_path=False)
    head = head[:head.index(struct.pack(">I", 0xFFFFFFFF)) + 4]
    with pytest.raises(StreamError) as err:
        dec.feed(head)
        dec.feed(b"\0" * (1 << 20))  # before the fix: buffered, waiting for 4 GiB
    assert err.value.message == W.error("section_too_long", idstr, 0xFFFFFFFF,
                                        W.max_section_body)
    assert dec.pending_bytes < (1 << 20)


def test_huge_machine_name_length_is_refused_before_buffering():
    enc = StreamEncoder(P)
    dec = StreamDecoder(P, {}, machine=MACHINE)
    with pytest.raises(StreamError) as err:
        dec.feed(enc.header() + bytes([W.configuration]) + struct.pack(">I", 0xFFFFFFFF))
    assert err.value.message == W.error("machine_name_too_long", 0xFFFFFFFF,
                                        W.max_machine_name)


def test_multifd_packet_with_too_many_pages_is_refused():
    from livemig.engine.multifd import MultifdDecoder, hello
    dec = MultifdDecoder(P, {})
    with pytest.raises(StreamError) as err:
        dec.feed(hello(P, 1) + struct.pack(">IIQB", 0, 0xFFFFFFFF, 1, 0))
    assert err.value.message == W.error("multifd_too_many_pages", 0xFFFFFFFF,
                                        W.max_multifd_pages)
