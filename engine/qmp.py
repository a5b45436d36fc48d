"""A QMP server for a livemig :class:`~livemig.engine.vm.VM` on a unix socket.

Speaks the QEMU Machine Protocol as QEMU 7.2 does, so ``qemu.qmp`` (the
QEMU project's Python client) drives a livemig VM exactly as it drives
``qemu-system-x86_64 -qmp unix:PATH,server=on,wait=off``:

* on connect, the greeting ``{"QMP": {"version": ..., "capabilities": ["oob"]}}``;
* capabilities negotiation: until ``qmp_capabilities`` every other command
  fails with CommandNotFound "Expecting capabilities negotiation with
  'qmp_capabilities'"; a second one fails likewise ("Capabilities negotiation
  is already complete, command ignored");
* ``{"execute", "arguments", "id"}`` -> ``{"return": ..., "id"}`` or
  ``{"error": {"class", "desc"}, "id"}`` with QEMU's error classes
  (GenericError, CommandNotFound);
* events pushed to every negotiated client;
* hostile input answered as QEMU 7.2 answers it, on the same connection:
  :class:`QMPInputParser` is QMP's JSON layer without I/O (QEMU's lexer,
  streamer limits and parser texts, iterative, bounded, resynchronised by a
  0xFF byte), :func:`check_request` the dispatcher's checks of a request's
  members (in QEMU's QDict order), both with the spec's texts.

Commands run on worker threads so a slow one never blocks event delivery.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

from livemig.engine.vm import VM
from livemig.errors import MigrationError
from livemig.spec import load_profile


class _NoId:
    """The ``id`` of a request that has none (``"id": null`` is an id: QEMU echoes it)."""

    _instance: Optional["_NoId"] = None

    def __new__(cls) -> "_NoId":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NO_ID"

    def __bool__(self) -> bool:
        return False


NO_ID: Any = _NoId()


@dataclass(frozen=True)
class QMPError:
    """An error answer: QEMU's error class, its text, and the request's id (or NO_ID)."""

    klass: str
    desc: str
    id: Any = NO_ID

    def response(self) -> dict:
        msg: dict = {"error": {"class": self.klass, "desc": self.desc}}
        if self.id is not NO_ID:
            msg["id"] = self.id
        return msg


#: what :meth:`QMPInputParser.feed` returns, one per top-level JSON value (or error):
#: a request object (a ``dict``, not yet checked as a QMP request: see
#: :func:`check_request`) or a :class:`QMPError` (the JSON layer's, never with an id).
QMPInput = Union[dict, QMPError]

_GENERIC = "GenericError"

# ---------------------------------------------------------------- the JSON lexer
# QEMU's JSON lexer as an automaton over bytes (qobject/json-lexer.c, 7.2): JSON
# plus single-quoted strings, every other byte (0x80-0xFF outside strings, 0xFE/0xFF
# and control bytes anywhere, upper-case letters, '%') is a lexical error that
# resets the streamer and puts the lexer in recovery until a structural byte, a
# control byte other than TAB, or 0xFE/0xFF (the client's resynchronisation byte).
(_START, _RECOVERY, _DQ, _DQ_ESC, _SQ, _SQ_ESC, _ZERO, _DIGITS, _SIGN, _MANTISSA,
 _MANTISSA_DIGITS, _EXP_E, _EXP_SIGN, _EXP_DIGITS, _KEYWORD) = range(15)

# token kinds
_T_LCURLY, _T_RCURLY, _T_LSQUARE, _T_RSQUARE, _T_COLON, _T_COMMA = "{}[]:,"
_T_STRING, _T_INTEGER, _T_FLOAT, _T_KEYWORD, _T_OVERSIZE = "sifkx"

_STRUCTURAL = {ord(c): c for c in "{}[]:,"}
_WS = frozenset(b" \t\r\n")
_DIGIT = frozenset(b"0123456789")
_LOWER = frozenset(b"abcdefghijklmnopqrstuvwxyz")
# runs of bytes that keep the lexer in the same state (scanned in one step)
_RUN = {
    _DQ: re.compile(rb"[\x20\x21\x23-\x5b\x5d-\xfd]+"),
    _SQ: re.compile(rb"[\x20-\x26\x28-\x5b\x5d-\xfd]+"),
    _DIGITS: re.compile(rb"[0-9]+"),
    _MANTISSA_DIGITS: re.compile(rb"[0-9]+"),
    _EXP_DIGITS: re.compile(rb"[0-9]+"),
    _KEYWORD: re.compile(rb"[a-z]+"),
    _RECOVERY: re.compile(rb"[\t\x20-\x2b\x2d-\x39\x3b-\x5a\x5c\x5e-\x7a\x7c\x7e-\xfd]+"),
}
_WS_RUN = re.compile(rb"[ \t\r\n]+")
# a terminal state ends its token at any byte it cannot take (the byte is looked
# at again in the start state): numbers and keywords
_TERMINAL = {_ZERO: _T_INTEGER, _DIGITS: _T_INTEGER, _MANTISSA_DIGITS: _T_FLOAT,
             _EXP_DIGITS: _T_FLOAT, _KEYWORD: _T_KEYWORD}


def _next_state(state: int, byte: int) -> Optional[int]:
    """The lexer state after ``byte`` in a non-start, non-recovery ``state``, or
    None when ``byte`` cannot continue the token (a terminal state then ends
    its token, any other state is a lexical error)."""
    if state == _DQ or state == _SQ:
        if byte == 0x5C:
            return _DQ_ESC if state == _DQ else _SQ_ESC
        if 0x20 <= byte <= 0xFD:
            return state
        return None
    if state == _DQ_ESC or state == _SQ_ESC:
        return (_DQ if state == _DQ_ESC else _SQ) if 0x20 <= byte <= 0xFD else None
    if state == _SIGN:
        return _ZERO if byte == 0x30 else _DIGITS if byte in _DIGIT else None
    if state == _ZERO:
        if byte in _DIGIT:
            return -1  # a lexical error, even though ZERO is terminal
        return _MANTISSA if byte == 0x2E else None
    if state == _DIGITS:
        if byte in _DIGIT:
            return _DIGITS
        if byte in (0x65, 0x45):
            return _EXP_E
        return _MANTISSA if byte == 0x2E else None
    if state == _MANTISSA:
        return _MANTISSA_DIGITS if byte in _DIGIT else None
    if state == _MANTISSA_DIGITS:
        if byte in _DIGIT:
            return _MANTISSA_DIGITS
        return _EXP_E if byte in (0x65, 0x45) else None
    if state == _EXP_E:
        if byte in (0x2B, 0x2D):
            return _EXP_SIGN
        return _EXP_DIGITS if byte in _DIGIT else None
    if state == _EXP_SIGN or state == _EXP_DIGITS:
        return _EXP_DIGITS if byte in _DIGIT else None
    if state == _KEYWORD:
        return _KEYWORD if byte in _LOWER else None
    return None  # pragma: no cover - every state is listed


# ---------------------------------------------------------------- modified UTF-8
_MIN_CP = (0x80, 0x800, 0x10000, 0x200000, 0x4000000)


def _valid_codepoint(cp: int) -> bool:
    """Unicode scalar values minus noncharacters (QEMU's rule for JSON strings)."""
    if cp < 0 or cp > 0x10FFFF:
        return False
    if 0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE:
        return False
    return not 0xD800 <= cp <= 0xDFFF


def _mod_utf8_codepoint(data: bytes, i: int) -> tuple[int, int]:
    """Decode one character of modified UTF-8 at ``data[i]``: (code point or -1,
    index after what was consumed).  Overlong forms are invalid except C0 80
    (NUL); missing continuation bytes consume only what was valid."""
    n = len(data)
    byte = data[i]
    i += 1
    if byte < 0x80:
        return byte, i
    if byte >= 0xFE or not byte & 0x40:
        return -1, i
    length, mask = 0, 0x80
    while byte & mask:
        length += 1
        mask >>= 1
    cp = byte & (mask - 1)
    for _ in range(1, length):
        nxt = data[i] if i < n else 0
        if nxt & 0xC0 != 0x80:
            return -1, i
        i += 1
        cp = (cp << 6) | (nxt & 0x3F)
    if not _valid_codepoint(cp):
        return -1, i
    if cp < _MIN_CP[length - 2] and not (cp == 0 and length == 2):
        return -1, i
    return cp, i


def _text(data: bytes) -> str:
    """``data`` as QEMU's JSON writer shows it in an error text: up to the first
    NUL byte (a C string), each invalid sequence as U+FFFD."""
    data = data.split(b"\0", 1)[0]
    try:
        return data.decode()
    except UnicodeDecodeError:
        pass
    out, i = [], 0
    while i < len(data):
        cp, i = _mod_utf8_codepoint(data, i)
        out.append(chr(cp) if cp >= 0 else "\ufffd")
    return "".join(out)


def _hex4(data: bytes, i: int) -> int:
    """Four hex digits at ``data[i:]`` as a number, -1 if any is not a hex digit."""
    chunk = data[i:i + 4]
    if len(chunk) < 4 or any(c not in b"0123456789abcdefABCDEF" for c in chunk):
        return -1
    return int(chunk, 16)


_ESCAPES = {ord('"'): '"', ord("'"): "'", ord("\\"): "\\", ord("/"): "/", ord("b"): "\b",
            ord("f"): "\f", ord("n"): "\n", ord("r"): "\r", ord("t"): "\t"}


class _ParseError(Exception):
    """Internal: a JSON syntax error (the text after "JSON parse error, ")."""


# ---------------------------------------------------------------- the parser
class QMPInputParser:
    """QMP's input side without I/O: bytes in, requests and errors out.

    ``feed(data)`` takes any bytes, in chunks split anywhere, and returns one
    item per top-level JSON value or JSON-layer error, in order: the request
    object (a ``dict``) or a :class:`QMPError`.  It behaves as QEMU 7.2's JSON
    lexer, streamer and parser do:

    * a top-level value ends where its braces and brackets balance (or one more
      closes than opened); no newline is needed, and scalars are values too
      (answered "QMP input must be a JSON object");
    * the streamer's limits per value (open braces + brackets, bytes of all
      tokens, number of tokens: the spec's QMP_JSON_* wire constants) answer
      "JSON nesting depth limit exceeded" etc. and start afresh at the next token;
    * a lexical error (a byte that cannot start or continue a token, e.g. 0xFF)
      answers "JSON parse error, stray '...'", drops the value being read and
      skips bytes until a structural byte, a control byte or 0xFE/0xFF: a client
      resynchronises with 0xFF;
    * syntax errors are the parser's texts ("JSON parse error, expecting value").

    It is iterative (no recursion, whatever the nesting), keeps at most one
    value's tokens (bounded by the limits above), and never raises: every error
    is a :class:`QMPError` in the returned list.  The texts are the profile's
    (default QEMU 7.2).
    """

    def __init__(self, profile: Any = None) -> None:
        self.profile = profile if profile is not None else load_profile("qemu-7.2")
        wire = self.profile.wire
        self.max_token_size = wire.const("QMP_JSON_MAX_TOKEN_SIZE")
        self.max_token_count = wire.const("QMP_JSON_MAX_TOKEN_COUNT")
        self.max_nesting = wire.const("QMP_JSON_MAX_NESTING")
        self._state = _START
        self._token = bytearray()
        self._out: list[QMPInput] = []
        self._reset_value()

    # ------------------------------------------------------------ lexer
    def feed(self, data: bytes) -> list[QMPInput]:
        """Consume ``data``; return the requests and errors it completed."""
        self._out = []
        try:
            self._lex(bytes(data))
        except Exception as exc:  # pragma: no cover - a bug, never the client's bytes
            self._state = _START
            self._token = bytearray()
            self._reset_value()
            self._out.append(QMPError(_GENERIC, f"livemig: internal QMP parser error: {exc!r}"))
        out, self._out = self._out, []
        return out

    def _lex(self, data: bytes) -> None:
        i, n = 0, len(data)
        token = self._token
        limit = self.max_token_size
        while i < n:
            state = self._state
            if state == _START:
                byte = data[i]
                if byte in _WS:
                    m = _WS_RUN.match(data, i)
                    i = m.end() if m else i + 1
                    continue
                i += 1
                if byte in _STRUCTURAL:
                    self._token_done(_STRUCTURAL[byte], b"")
                    continue
                if byte == 0x22:
                    self._state = _DQ
                elif byte == 0x27:
                    self._state = _SQ
                elif byte == 0x30:
                    self._state = _ZERO
                elif byte in _DIGIT:
                    self._state = _DIGITS
                elif byte == 0x2D:
                    self._state = _SIGN
                elif byte in _LOWER:
                    self._state = _KEYWORD
                else:
                    self._lexical_error(bytes([byte]))
                    continue
                token.append(byte)
            elif state == _RECOVERY:
                m = _RUN[_RECOVERY].match(data, i)
                if m:
                    i = m.end()
                else:
                    self._state = _START  # the byte is looked at again
                continue
            else:
                run = _RUN.get(state)
                if run is not None:
                    # no further than one byte past the size limit (QEMU's check is per byte)
                    m = run.match(data, i, min(n, i + limit + 1 - len(token)))
                    if m:
                        token += m.group()
                        i = m.end()
                        if len(token) > limit:
                            self._oversize()
                        continue
                byte = data[i]
                nxt = _next_state(state, byte)
                if nxt is None and state in _TERMINAL:
                    self._token_done(_TERMINAL[state], bytes(token))
                    token.clear()
                    self._state = _START
                    continue  # the byte is looked at again
                i += 1
                token.append(byte)
                if nxt is None or nxt < 0:
                    self._lexical_error(bytes(token))
                    continue
                if (state == _DQ and byte == 0x22) or (state == _SQ and byte == 0x27):
                    self._token_done(_T_STRING, bytes(token))
                    token.clear()
                    self._state = _START
                    continue
                self._state = nxt
            if len(token) > limit:
                self._oversize()

    def _lexical_error(self, text: bytes) -> None:
        self._token.clear()
        self._state = _RECOVERY
        self._emit(QMPError(_GENERIC, self.profile.qapi_error("json_stray") % _text(text)))

    def _oversize(self) -> None:
        # QEMU's lexer hands an over-long token on as it is; the streamer's size
        # limit then refuses it, and lexing starts afresh after it.
        text = bytes(self._token)
        self._token.clear()
        self._state = _START
        self._token_done(_T_OVERSIZE, text)

    # ------------------------------------------------------------ streamer
    def _reset_value(self) -> None:
        self._brace = 0
        self._bracket = 0
        self._size = 0
        self._count = 0
        self._stack: list[list] = []
        self._result: Any = None
        self._done = False
        self._error: Optional[str] = None

    def _emit(self, item: QMPInput) -> None:
        self._reset_value()
        self._out.append(item)

    def _token_done(self, kind: str, text: bytes) -> None:
        if kind == _T_LCURLY:
            self._brace += 1
        elif kind == _T_RCURLY:
            self._brace -= 1
        elif kind == _T_LSQUARE:
            self._bracket += 1
        elif kind == _T_RSQUARE:
            self._bracket -= 1
        qapi = self.profile.qapi_error
        if self._size + len(text) + 1 > self.max_token_size:
            self._emit(QMPError(_GENERIC, qapi("json_token_size")))
            return
        if self._count + 1 > self.max_token_count:
            self._emit(QMPError(_GENERIC, qapi("json_token_count")))
            return
        if self._brace + self._bracket > self.max_nesting:
            self._emit(QMPError(_GENERIC, qapi("json_nesting")))
            return
        self._size += len(text)
        self._count += 1
        if self._error is None:
            try:
                self._parse_token(kind, text)
            except _ParseError as exc:
                self._error = str(exc)
                self._stack = []
                self._result = None
        if (self._brace > 0 or self._bracket > 0) and self._brace >= 0 and self._bracket >= 0:
            return
        if self._error is None and not self._done:
            self._error = qapi("json_premature_eoi")
        if self._error is not None:
            self._emit(QMPError(_GENERIC, qapi("json_parse") % self._error))
        elif isinstance(self._result, dict):
            self._emit(self._result)
        else:
            self._emit(QMPError(_GENERIC, qapi("qmp_not_object")))

    # ------------------------------------------------------------ parser
    # The stack holds open containers as [container, expecting, key]:
    # a list expects "first" (a value or ']'), "value" or "sep" (',' or ']');
    # an object "first" (a key or '}'), "key", "colon", "value" or "sep".
    def _parse_token(self, kind: str, text: bytes) -> None:
        qapi = self.profile.qapi_error
        if self._done:  # cannot happen: a value ends where its brackets balance
            raise _ParseError(qapi("json_expecting_value"))
        top = self._stack[-1] if self._stack else None
        if top is not None:
            container, expecting = top[0], top[1]
            is_list = isinstance(container, list)
            if expecting == "first" and kind == (_T_RSQUARE if is_list else _T_RCURLY):
                self._stack.pop()
                self._value_done(container)
                return
            if expecting == "sep":
                if kind == _T_COMMA:
                    top[1] = "value" if is_list else "key"
                    return
                if kind == (_T_RSQUARE if is_list else _T_RCURLY):
                    self._stack.pop()
                    self._value_done(container)
                    return
                raise _ParseError(qapi("json_list_separator" if is_list
                                       else "json_dict_separator"))
            if expecting == "colon":
                if kind != _T_COLON:
                    raise _ParseError(qapi("json_missing_colon"))
                top[1] = "value"
                return
        # a value is expected (top-level, list element, object key or member)
        if kind == _T_LCURLY:
            self._stack.append([{}, "first", None])
        elif kind == _T_LSQUARE:
            self._stack.append([[], "first", None])
        elif kind == _T_STRING:
            self._value_done(self._string(text))
        elif kind == _T_INTEGER:
            # int64, else uint64, else a double (as QEMU's QNum); long digit
            # strings go straight to float (int() refuses over 4300 digits)
            value: Any = int(text) if len(text) <= 21 else float(text)
            if isinstance(value, int) and not -(1 << 63) <= value < (1 << 64):
                value = float(value)
            self._value_done(value)
        elif kind == _T_FLOAT:
            self._value_done(float(text))
        elif kind == _T_KEYWORD:
            word = text.decode("ascii")
            if word not in ("true", "false", "null"):
                raise _ParseError(qapi("json_invalid_keyword") % word)
            self._value_done({"true": True, "false": False, "null": None}[word])
        else:
            raise _ParseError(qapi("json_expecting_value"))

    def _value_done(self, value: Any) -> None:
        if not self._stack:
            self._result = value
            self._done = True
            return
        top = self._stack[-1]
        container, expecting = top[0], top[1]
        if isinstance(container, list):
            container.append(value)
            top[1] = "sep"
        elif expecting in ("first", "key"):
            if not isinstance(value, str):
                raise _ParseError(self.profile.qapi_error("json_key_not_string"))
            top[2] = value
            top[1] = "colon"
        else:
            if top[2] in container:
                raise _ParseError(self.profile.qapi_error("json_duplicate_key"))
            container[top[2]] = value
            top[1] = "sep"

    def _string(self, tok: bytes) -> str:
        """A string token (quotes included) as QEMU's parser reads it."""
        qapi = self.profile.qapi_error
        quote = tok[0]
        body = tok[1:-1]
        if b"\\" not in body:
            try:
                text = body.decode()
            except UnicodeDecodeError:
                text = None
            if text is not None and all(_valid_codepoint(ord(c)) for c in text
                                        if ord(c) >= 0xFDD0):
                return text
        out: list[str] = []
        i, end = 1, len(tok)
        while i < end and tok[i] != quote:
            byte = tok[i]
            if byte == 0x5C:
                beg = i
                esc = tok[i + 1]
                i += 2
                if esc in _ESCAPES:
                    out.append(_ESCAPES[esc])
                    continue
                if esc != ord("u"):
                    raise _ParseError(qapi("json_invalid_escape"))
                cp = _hex4(tok, i)
                i += 4
                if 0xD800 <= cp <= 0xDBFF and tok[i:i + 2] == b"\\u":
                    cp = 0x10000 + ((cp & 0x3FF) << 10)
                    trailing = _hex4(tok, i + 2)
                    if 0xDC00 <= trailing <= 0xDFFF:
                        cp |= trailing & 0x3FF
                        i += 6
                    else:
                        cp = -1
                if not _valid_codepoint(cp):
                    raise _ParseError(qapi("json_invalid_unicode") % _text(tok[beg:i]))
                out.append(chr(cp))
                continue
            cp, i = _mod_utf8_codepoint(tok, i)
            if cp < 0:
                raise _ParseError(qapi("json_invalid_utf8"))
            out.append(chr(cp))
        return "".join(out)


# ---------------------------------------------------------------- dispatch checks
def _qdict_hash(key: str) -> int:
    """QEMU's QDict bucket hash (tdb_hash over the key's modified UTF-8)."""
    data = key.encode("utf-8", "surrogatepass").replace(b"\0", b"\xc0\x80")
    value = (0x238F13AF * len(data)) & 0xFFFFFFFF
    for i, byte in enumerate(data):
        value = (value + (byte << (i * 5 % 24))) & 0xFFFFFFFF
    return (1103515243 * value + 12345) & 0xFFFFFFFF


def qdict_order(keys: Any) -> list[str]:
    """The order QEMU visits an object's members in (a QDict's 512 buckets in
    order, the latest insertion first in a bucket): the order QMP's checks of a
    request meet its members."""
    keyed = [(_qdict_hash(k) % 512, -n, k) for n, k in enumerate(keys)]
    return [k for _, _, k in sorted(keyed)]


def check_request(msg: dict, allow_oob: bool, profile: Any) -> Union[QMPError,
                                                                  tuple[str, dict, bool, Any]]:
    """QMP's checks of a request object before its command is looked up:
    ``(command, arguments, oob, id)`` or the :class:`QMPError` QEMU answers
    (with the request's id).  ``exec-oob`` is a member only once the client
    enabled the "oob" capability (``allow_oob``)."""
    ident = msg.get("id", NO_ID)
    qapi = profile.qapi_error
    exec_key = None
    for key in qdict_order(msg):
        value = msg[key]
        if key == "execute" or (key == "exec-oob" and allow_oob):
            if not isinstance(value, str):
                return QMPError(_GENERIC, qapi("qmp_member_not_string") % key, ident)
            if exec_key is not None:
                return QMPError(_GENERIC, qapi("qmp_member_clash") % (key, exec_key), ident)
            exec_key = key
        elif key == "arguments":
            if not isinstance(value, dict):
                return QMPError(_GENERIC, qapi("arguments_not_object"), ident)
        elif key != "id":
            return QMPError(_GENERIC, qapi("qmp_member_unexpected") % key, ident)
    if exec_key is None:
        return QMPError(_GENERIC, qapi("qmp_lacks_execute"), ident)
    return msg[exec_key], msg.get("arguments", {}), exec_key == "exec-oob", ident


class QMPServer:
    """Serves one VM on one or more unix sockets (``path``: a path or a sequence).

    Several sockets are QEMU's several ``-qmp`` options: each accepts its own
    clients, and every negotiated client, on whichever socket, gets every event,
    so e.g. ``livemig monitor`` can watch while a management tool drives."""

    def __init__(self, vm: VM, path: Union[str, Sequence[str]]) -> None:
        self.vm = vm
        self.paths: list[str] = [path] if isinstance(path, str) else list(path)
        if not self.paths:
            raise ValueError("QMPServer needs at least one socket path")
        if len(set(self.paths)) != len(self.paths):
            # binding the same path twice would unlink the first socket under its server
            raise ValueError(f"QMP socket paths given twice: {self.paths}")
        self.path = self.paths[0]
        self._clients: set[asyncio.StreamWriter] = set()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._servers: list[asyncio.base_events.Server] = []
        self.quit = asyncio.Event()
        vm.subscribe(self._on_event)
        vm.on_quit = self._on_quit

    def _on_event(self, event: dict) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._broadcast, event)

    def _on_quit(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.quit.set)

    def _broadcast(self, event: dict) -> None:
        line = (json.dumps(event) + "\r\n").encode()
        for writer in list(self._clients):
            try:
                writer.write(line)
            except Exception:
                self._clients.discard(writer)

    async def serve(self) -> None:
        """Serve until ``quit``.

        Every socket is bound before any client is served; when one cannot be,
        the ones already bound are closed and removed, and the ``OSError`` is
        raised with ``filename`` set to the path that failed."""
        self._loop = asyncio.get_running_loop()
        bound: list[str] = []
        try:
            for path in self.paths:
                try:
                    if os.path.exists(path):
                        os.unlink(path)
                    server = await asyncio.start_unix_server(self._client, path=path)
                except OSError as exc:
                    raise OSError(exc.errno, exc.strerror, path) from exc
                self._servers.append(server)
                bound.append(path)
            await self.quit.wait()
            # Let the quit reply and last events reach the clients.
            await asyncio.sleep(0.05)
        finally:
            for server in self._servers:
                server.close()
            for server in self._servers:
                await server.wait_closed()
            for path in bound:
                try:
                    os.unlink(path)
                except OSError:
                    pass

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        greeting = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7},
                                        "package": "livemig"},
                            "capabilities": ["oob"]}}
        writer.write((json.dumps(greeting) + "\r\n").encode())
        session = _Session()
        parser = QMPInputParser(self.vm.profile)
        try:
            while True:
                # QMP is a stream of JSON values; clients need not end them with a newline.
                chunk = await reader.read(65536)
                if not chunk:
                    return
                for item in parser.feed(chunk):
                    writer.write(await self._answer(session, writer, item))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients.discard(writer)
            try:
                writer.close()
            except Exception:
                pass

    async def _answer(self, session: "_Session", writer: asyncio.StreamWriter,
                      item: QMPInput) -> bytes:
        """The answer to one parsed input, in QEMU's order of checks: the JSON
        layer, the request's members, the command's existence (negotiation mode
        knows only qmp_capabilities), out-of-band, then the command itself."""
        if isinstance(item, QMPError):
            return self._line(item.response())
        checked = check_request(item, session.oob, self.vm.profile)
        if isinstance(checked, QMPError):
            return self._line(checked.response())
        name, args, oob, ident = checked
        qapi = self.vm.profile.qapi_error
        if not session.negotiated:
            if name != "qmp_capabilities":
                return self._error(ident, "CommandNotFound", qapi("qmp_negotiation_expected"))
            session.negotiated = True
            enable = args.get("enable")
            session.oob = isinstance(enable, list) and "oob" in enable
            self._clients.add(writer)
            return self._reply(ident, {})
        if name == "qmp_capabilities":
            return self._error(ident, "CommandNotFound", qapi("qmp_negotiation_done"))
        if oob and name in VM.COMMANDS and not _allows_oob(self.vm.profile, name):
            return self._error(ident, _GENERIC, qapi("qmp_no_oob") % name)
        try:
            result = await asyncio.to_thread(self.vm.execute, name, args)
        except MigrationError as exc:
            return self._error(ident, exc.qmp_class, exc.message)
        return self._reply(ident, result)

    @staticmethod
    def _line(msg: dict) -> bytes:
        return (json.dumps(msg) + "\r\n").encode()

    @classmethod
    def _reply(cls, ident: Any, result: Any) -> bytes:
        msg: dict = {"return": result}
        if ident is not NO_ID:
            msg["id"] = ident
        return cls._line(msg)

    @classmethod
    def _error(cls, ident: Any, klass: str, desc: str) -> bytes:
        return cls._line(QMPError(klass, desc, ident).response())


class _Session:
    """One client's QMP state: negotiated yet, "oob" capability enabled."""

    def __init__(self) -> None:
        self.negotiated = False
        self.oob = False


def _allows_oob(profile: Any, name: str) -> bool:
    """Whether command ``name`` may run out-of-band (the spec's allow_oob)."""
    try:
        return profile.command(name).allow_oob
    except KeyError:
        return False


def serve_vm(vm: VM, path: Union[str, Sequence[str]]) -> None:
    """Run the QMP server for ``vm`` on ``path`` (one socket path or several)
    until a ``quit`` command."""
    server = QMPServer(vm, path)
    asyncio.run(server.serve())
