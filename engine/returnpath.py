"""The return path (destination -> source): sans-I/O framing of MIG_RP_MSG_*.

Framing (facts §7.2): be16 type, be16 length, payload.  The source rejects
type 0 or >= MAX ("Received invalid message ..."), a wrong fixed length, and a
length above MAX_RP_MESSAGE_LENGTH.  :class:`ReturnPathDecoder` turns bytes
into :class:`RPMessage` values and raises :class:`ReturnPathError` with
QEMU's text; :func:`encode_rp` builds one message.  Page requests
(REQ_PAGES/REQ_PAGES_ID), RECV_BITMAP and RESUME_ACK are decoded here
already, for postcopy and recovery.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

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
    """One return-path message ``name`` (short name) with ``payload``."""
    w = wire_tables(profile)
    msg = w.rp[name]
    return struct.pack(">HH", msg.value, len(payload)) + payload


def encode_u32(profile: Profile, name: str, value: int) -> bytes:
    return encode_rp(profile, name, struct.pack(">I", value))


class ReturnPathDecoder:
    """Incremental decoder of the return path, as the source's rp thread reads it."""

    def __init__(self, profile: Profile) -> None:
        self.w: WireTables = wire_tables(profile)
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[RPMessage]:
        w = self.w
        self._buf += data
        out: list[RPMessage] = []
        while len(self._buf) >= 4:
            mtype, length = struct.unpack_from(">HH", self._buf, 0)
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
            if len(self._buf) < 4 + length:
                break
            payload = bytes(self._buf[4:4 + length])
            del self._buf[:4 + length]
            out.append(self._decode(short, payload))
        return out

    def _decode(self, short: str, payload: bytes) -> RPMessage:
        if short in ("SHUT", "PONG", "RESUME_ACK"):
            return RPMessage(short, value=struct.unpack(">I", payload)[0])
        if short == "REQ_PAGES":
            start, length = struct.unpack(">QI", payload)
            return RPMessage(short, start=start, length=length)
        if short == "REQ_PAGES_ID":
            start, length, idlen = struct.unpack_from(">QIB", payload)
            name = payload[13:13 + idlen].decode(errors="replace")
            return RPMessage(short, start=start, length=length, block=name)
        if short == "RECV_BITMAP":
            idlen = payload[0]
            return RPMessage(short, block=payload[1:1 + idlen].decode(errors="replace"))
        return RPMessage(short)
