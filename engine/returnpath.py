"""The return path (destination -> source): sans-I/O framing of MIG_RP_MSG_*.

Framing (facts §7.2): be16 type, be16 length, payload; every layout (the
header's and each payload's) is the spec's, compiled by
:mod:`livemig.engine.layouts`.  The source rejects
type 0 or >= MAX ("Received invalid message ..."), a wrong fixed length, and a
length above MAX_RP_MESSAGE_LENGTH.  :class:`ReturnPathDecoder` turns bytes
into :class:`RPMessage` values and raises :class:`ReturnPathError` with
QEMU's text; :func:`encode_rp` builds one message.  Page requests
(REQ_PAGES/REQ_PAGES_ID), RECV_BITMAP and RESUME_ACK are decoded here
already, for postcopy and recovery.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from livemig.engine.layouts import LayoutError, layouts
from livemig.engine.wire import WireTables, wire_tables
from livemig.errors import ReturnPathError
from livemig.spec.schema import Profile


@dataclass(frozen=True)
class RPMessage:
    """One decoded return-path message; ``name`` is the short name ("PONG")."""

    name: str
    value: Optional[int] = None  # SHUT / PONG / RESUME_ACK payload
    start: Optional[int] = None  # REQ_PAGES*: byte offset
    length: Optional[int] = None  # REQ_PAGES*: byte length
    block: Optional[str] = None  # REQ_PAGES_ID / RECV_BITMAP


def encode_rp(profile: Profile, name: str, payload: bytes = b"") -> bytes:
    """One return-path message ``name`` (short name) with raw ``payload``
    (any bytes: hostile-peer tests send malformed ones).  Well-formed
    messages: ``layouts(profile).rp[name].pack(*fields)``."""
    lay = layouts(profile)
    return lay["RP_HEADER"].pack(lay.rp[name].value, len(payload)) + payload


def encode_u32(profile: Profile, name: str, value: int) -> bytes:
    """SHUT / PONG / RESUME_ACK with ``value``."""
    return layouts(profile).rp[name].pack(value)


class ReturnPathDecoder:
    """Incremental decoder of the return path, as the source's rp thread reads it."""

    def __init__(self, profile: Profile) -> None:
        self.w: WireTables = wire_tables(profile)
        self.layouts = lay = layouts(profile)
        self._header = lay["RP_HEADER"].prefix
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[RPMessage]:
        self._buf += data
        out: list[RPMessage] = []
        hsize = self._header.size
        while len(self._buf) >= hsize:
            mtype, length = self._header.unpack_from(self._buf, 0)
            short = self.check_header(mtype, length)
            if len(self._buf) < hsize + length:
                break
            payload = bytes(self._buf[hsize:hsize + length])
            del self._buf[:hsize + length]
            out.append(self._decode(short, payload))
        return out

    def check_header(self, mtype: int, length: int) -> str:
        """The message's short name if its header is acceptable; QEMU's checks
        (type, MAX_RP_MESSAGE_LENGTH, fixed and minimum lengths) otherwise
        raise, before any of its payload is waited for."""
        w = self.w
        msg = w.rp_by_value.get(mtype)
        if msg is None or mtype == w.rp["INVALID"].value:
            raise ReturnPathError(w.error("rp_invalid", mtype, length))
        short = msg.name[len("MIG_RP_MSG_"):]
        if length > w.max_rp_length:
            raise ReturnPathError(w.error("rp_invalid", mtype, length))
        if msg.length is not None and length != msg.length:
            raise ReturnPathError(w.error("rp_bad_length", short, mtype, length, msg.length))
        if msg.min_length is not None and length < msg.min_length:
            raise ReturnPathError(w.error("rp_bad_length", short, mtype, length,
                                          msg.min_length))
        return short

    def _decode(self, short: str, payload: bytes) -> RPMessage:
        """One message's payload; every length is checked before it is read
        (QEMU's source_return_path_thread marks the return path bad on each of
        these), and nothing but :class:`ReturnPathError` leaves here."""
        w = self.w
        try:
            return self._decode_checked(short, payload)
        except ReturnPathError:
            raise
        except (LayoutError, IndexError, ValueError) as exc:
            raise ReturnPathError(w.error("rp_malformed", short, w.rp[short].value, exc)) from None

    def _decode_checked(self, short: str, payload: bytes) -> RPMessage:
        w = self.w
        frame = self.layouts.rp[short]
        if short in ("SHUT", "PONG", "RESUME_ACK"):
            return RPMessage(short, value=frame.unpack(payload)[0])
        if short == "REQ_PAGES":
            start, length = frame.unpack(payload)
            return RPMessage(short, start=start, length=length)
        if short == "REQ_PAGES_ID":
            # QEMU's check: the length the idlen byte (the prefix's last)
            # implies, before the payload is read
            prefix = frame.payload.prefix
            expected = prefix.size + (payload[prefix.size - 1]
                                      if len(payload) >= prefix.size else 0)
            if len(payload) != expected:
                raise ReturnPathError(w.error("rp_req_pages_id_length", len(payload), expected))
            start, length, name = frame.unpack(payload)
            return RPMessage(short, start=start, length=length,
                             block=name.decode(errors="replace"))
        if short == "RECV_BITMAP":
            if len(payload) < 1:
                raise ReturnPathError(w.error("rp_recv_bitmap_no_name"))
            expected = frame.payload.prefix.size + payload[0]
            if len(payload) != expected:
                raise ReturnPathError(w.error("rp_bad_length", short, w.rp[short].value,
                                              len(payload), expected))
            return RPMessage(short, block=frame.unpack(payload)[0].decode(errors="replace"))
        return RPMessage(short)
