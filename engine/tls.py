"""TLS on migration channels, as QEMU does it (issue 16).

Theory of operation
-------------------
*Objects.*  ``object-add`` creates TLS credentials (``tls-creds-x509``,
``tls-creds-anon``) and authorization lists (``authz-simple``,
``authz-list``); their types, properties and texts are spec data
(``spec/profiles/objects.py``).  :class:`ObjectRegistry` checks the
arguments as QEMU 7.2 does (its texts), loads x509 credentials at once (so
a missing file is refused at ``object-add``, naming it, as QEMU does), and
keeps them by id.

*Endpoints.*  When ``tls-creds`` is set, the VM gives the migration's
runner a :class:`TLSEndpoint`: the destination's is the server, the
source's the client (``tls-creds`` must name credentials of that endpoint,
checked when the channel opens, as QEMU does).  Every channel the runner
opens or accepts -- the main channel with its return path, each multifd
channel, the postcopy recovery channel -- goes through
:meth:`TLSEndpoint.secure` before a byte of the stream crosses it:

* the client checks the server's certificate against its CA and the name
  ``tls-hostname`` (default: the host of the URI), "Certificate does not
  match the hostname ..." otherwise;
* a server with ``verify-peer`` asks for a client certificate and checks it,
  then ``tls-authz`` (when set) must allow the certificate's distinguished
  name ("TLS x509 authz check for ... is denied");
* the handshake is bounded (:data:`HANDSHAKE_TIMEOUT`): a peer that stalls
  in it cannot hold the migration.

A failed handshake fails the source's migration with the text (its guest
keeps running, as in any failed precopy).  On the destination it is
reported (as QEMU's error_report) and the listener keeps waiting: a peer
that is refused changes nothing there.

*Channels.*  :class:`TLSChannel` runs OpenSSL on memory BIOs (``ssl.SSLObject``)
over the plain socket, so that two threads can use one channel at once --
the load thread reading while the return path writes, the migration thread
writing while the return path reads -- which an ``ssl.SSLSocket`` does not
allow: the SSL state is touched only under a short lock, the socket I/O
happens outside it, and a writer holds its own lock from encryption to the
last byte sent so records leave in the order they were made.

TLS 1.3 is preferred (as QEMU with GnuTLS); anonymous credentials use
TLS 1.2's anonymous ECDH suites, which TLS 1.3 does not have.
"""
from __future__ import annotations

import errno
import fnmatch
import os
import queue
import re
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from livemig.engine.transport import Channel, Uri
from livemig.errors import CommandError
from livemig.spec.schema import ObjectType, Profile

#: seconds a TLS handshake may take before the channel is given up
HANDSHAKE_TIMEOUT = 10.0
#: plaintext bytes encrypted per record batch (a TLS record holds 16 KiB)
SEND_CHUNK = 256 << 10
#: QEMU's identifiers: a letter, then letters, digits, '-', '.', '_'
_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
#: the distinguished-name attribute names GnuTLS prints
_DN_NAMES = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
             "countryName": "C", "stateOrProvinceName": "ST", "localityName": "L",
             "emailAddress": "EMAIL", "domainComponent": "DC", "serialNumber": "serialNumber"}
#: what a channel I/O error reads as (QEMU's qio_channel_tls texts)
READ_ERROR = "Cannot read from TLS channel: Input/output error"
WRITE_ERROR = "Cannot write to TLS channel: Input/output error"


class TLSError(ConnectionError):
    """A TLS failure with QEMU's text as its strerror (an OSError, so the
    drivers treat it as the broken channel it is)."""

    def __init__(self, text: str) -> None:
        super().__init__(errno.ECONNABORTED, text)


# ============================================================ objects
@dataclass
class QomObject:
    """One object ``object-add`` created."""

    type: ObjectType
    id: str
    props: dict[str, Any]
    #: x509/anon credentials: the SSL context of their endpoint
    context: Optional[ssl.SSLContext] = None


@dataclass
class ObjectRegistry:
    """The objects of one VM, by id (QEMU's /objects container)."""

    profile: Profile
    objects: dict[str, QomObject] = field(default_factory=dict)

    def _error(self, key: str, *args: Any) -> CommandError:
        return CommandError(self.profile.object_error(key, *args))

    def add(self, args: dict) -> None:
        """object-add: check, load, register; nothing changes on an error."""
        qom_type = args.get("qom-type")
        otype = self.profile.object_type(qom_type) if isinstance(qom_type, str) else None
        if otype is None:
            raise self._error("unknown_type", qom_type)
        props = {k: v for k, v in args.items() if k != "qom-type"}
        for key in props:
            if otype.prop(key) is None:
                raise self._error("unexpected_property", key)
        for prop in otype.properties:
            value = props.get(prop.name)
            if value is None:
                if prop.required:
                    raise self._error("missing_property", prop.name)
                if prop.default is not None:
                    props[prop.name] = prop.default
                continue
            props[prop.name] = self._checked(prop.name, prop.kind, prop.enum, value)
        if not _IDENTIFIER.match(props["id"]):
            raise self._error("bad_id")
        if props["id"] in self.objects:
            raise self._error("duplicate_id", props["id"])
        obj = QomObject(otype, props["id"], props)
        if otype.tls_creds:
            obj.context = self._load_credentials(otype, props)
        self.objects[obj.id] = obj

    def _checked(self, name: str, kind: str, enum: Sequence[str], value: Any) -> Any:
        if kind == "bool":
            if not isinstance(value, bool):
                raise self._error("bad_type", name, "boolean")
        elif kind == "str":
            if not isinstance(value, str):
                raise self._error("bad_type", name, "string")
        elif kind == "enum":
            if not isinstance(value, str):
                raise self._error("bad_type", name, "string")
            if value not in enum:
                raise self._error("bad_enum", name, value)
        elif kind == "rules":
            if not isinstance(value, list):
                raise self._error("bad_type", name, "array")
            return tuple(self._rule(r) for r in value)
        return value

    def _rule(self, rule: Any) -> dict:
        """One authz-list rule: {"match", "policy", "format"}."""
        if not isinstance(rule, dict):
            raise self._error("bad_type", "rules", "object")
        if "match" not in rule:
            raise self._error("missing_property", "match")
        if "policy" not in rule:
            raise self._error("missing_property", "policy")
        for key in rule:
            if key not in ("match", "policy", "format"):
                raise self._error("unexpected_property", key)
        match = self._checked("match", "str", (), rule["match"])
        policy = self._checked("policy", "enum", ("deny", "allow"), rule["policy"])
        fmt = self._checked("format", "enum", ("exact", "glob"), rule.get("format", "exact"))
        return {"match": match, "policy": policy, "format": fmt}

    def _load_credentials(self, otype: ObjectType, props: dict) -> ssl.SSLContext:
        endpoint = props["endpoint"]
        server = endpoint == "server"
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if server:
            # No TLS 1.3 session tickets: a source without a return path never
            # reads, and bytes left unread make its close a reset -- which
            # can cost the destination the stream's last bytes.
            ctx.num_tickets = 0
        if not otype.files:  # anonymous: no certificates, TLS 1.2's anonymous ECDH
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_ciphers("aNULL:@SECLEVEL=0")
            return ctx
        directory = props.get("dir")
        if directory is None:
            raise self._error("missing_dir")
        names = dict(otype.files)[endpoint]
        paths = [os.path.join(directory, n) for n in names]
        for path in paths:
            if not os.access(path, os.R_OK):
                raise self._error("creds_file_missing", path)
        ca, cert, key = paths
        try:
            ctx.load_verify_locations(ca)
            ctx.load_cert_chain(cert, key)
            for optional in otype.optional_files:  # a CRL: checked on the peer's certificate
                crl = os.path.join(directory, optional)
                if os.access(crl, os.R_OK):
                    ctx.load_verify_locations(crl)
                    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        except (ssl.SSLError, OSError) as exc:
            raise self._error("creds_unusable", directory, getattr(exc, "reason", None) or exc)
        verify = props["verify-peer"]
        if server:
            ctx.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
        else:
            ctx.check_hostname = bool(verify)
            ctx.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
        return ctx

    def delete(self, obj_id: str, in_use: Callable[[str], bool] = lambda _id: False) -> None:
        """object-del: an unknown id, or one a running migration uses, is refused."""
        if obj_id not in self.objects:
            raise self._error("no_such_object", obj_id)
        if in_use(obj_id):
            raise self._error("in_use", obj_id)
        del self.objects[obj_id]


# ============================================================ endpoints
def peer_dn(cert: dict) -> str:
    """A peer certificate's subject as GnuTLS prints it: ``O=livemig,CN=x``."""
    parts = []
    for rdn in cert.get("subject", ()):
        for name, value in rdn:
            parts.append(f"{_DN_NAMES.get(name, name)}={value}")
    return ",".join(parts)


def authz_allows(obj: QomObject, identity: str) -> bool:
    """authz-simple: the one identity; authz-list: the first rule that
    matches (exact or glob) decides, else the list's policy."""
    if obj.type.name == "authz-simple":
        return identity == obj.props["identity"]
    for rule in obj.props.get("rules", ()):
        hit = (fnmatch.fnmatchcase(identity, rule["match"]) if rule["format"] == "glob"
               else identity == rule["match"])
        if hit:
            return rule["policy"] == "allow"
    return obj.props.get("policy", "deny") == "allow"


class TLSEndpoint:
    """The TLS side of one migration's channels (see the module doc).

    ``registry`` and the parameters are read when a channel opens, so the
    errors QEMU gives at connect time come at connect time here too."""

    def __init__(self, profile: Profile, registry: ObjectRegistry, *, server: bool,
                 creds: str, hostname: str = "", authz: str = "",
                 report: Callable[[str], None] = lambda _text: None) -> None:
        self.profile = profile
        self.registry = registry
        self.server = server
        self.creds = creds
        self.hostname = hostname
        self.authz = authz
        #: QEMU's error_report on the destination: a refused peer is logged
        self.report = report

    def _creds(self) -> QomObject:
        obj = self.registry.objects.get(self.creds)
        if obj is None:
            raise TLSError(self.profile.object_error("no_creds", self.creds))
        if not obj.type.tls_creds or obj.context is None:
            raise TLSError(self.profile.object_error("not_creds", self.creds))
        endpoint = "server" if self.server else "client"
        if obj.props["endpoint"] != endpoint:
            raise TLSError(self.profile.object_error("wrong_endpoint", endpoint))
        return obj

    def secure(self, chan: Channel, uri: Optional[Uri] = None) -> Channel:
        """The channel with TLS on it, after the handshake and the checks;
        TLSError (QEMU's text) if any fails -- the channel is closed then."""
        try:
            obj = self._creds()
            if chan.sock is None:
                raise TLSError(self.profile.object_error(
                    "tls_not_on_protocol", uri.protocol if uri else "fd"))
            hostname = None
            if not self.server and obj.context.check_hostname:  # type: ignore[union-attr]
                # tls-hostname, else the URI's host (a unix socket has none)
                hostname = self.hostname or (uri.host if uri and uri.protocol == "tcp"
                                             else "") or None
                if hostname is None:
                    raise TLSError(self.profile.object_error("no_hostname"))
            tls = handshake(self.profile, chan.sock, obj.context,  # type: ignore[arg-type]
                            server=self.server, hostname=hostname)
            if self.server and self.authz and obj.props.get("verify-peer", True):
                self._check_authz(tls)
            return tls
        except TLSError:
            chan.close()
            raise

    def _check_authz(self, tls: "TLSChannel") -> None:
        authz = self.registry.objects.get(self.authz)
        if authz is None or not authz.type.authz:
            raise TLSError(self.profile.object_error("no_authz", self.authz))
        cert = tls.peer_certificate()
        if not cert:
            raise TLSError(self.profile.object_error("no_peer_cert"))
        identity = peer_dn(cert)
        if not authz_allows(authz, identity):
            raise TLSError(self.profile.object_error("authz_denied", identity))


def handshake(profile: Profile, sock: socket.socket, ctx: ssl.SSLContext, *, server: bool,
              hostname: Optional[str], timeout: Optional[float] = None) -> "TLSChannel":
    """The TLS handshake over ``sock``, bounded by ``timeout`` (default
    :data:`HANDSHAKE_TIMEOUT`); the secured channel, or TLSError."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_side=server, server_hostname=hostname)
    limit = HANDSHAKE_TIMEOUT if timeout is None else timeout
    deadline = time.monotonic() + limit
    try:
        while True:
            try:
                obj.do_handshake()
                _send_all(sock, outgoing.read(), deadline)
                break
            except ssl.SSLWantReadError:
                _send_all(sock, outgoing.read(), deadline)
                data = _recv_some(sock, deadline)
                if not data:
                    raise TLSError(profile.object_error(
                        "handshake_failed", "The TLS connection was non-properly terminated."))
                incoming.write(data)
    except socket.timeout:
        raise TLSError(profile.object_error("handshake_timeout", limit)) from None
    except ssl.SSLCertVerificationError as exc:
        _send_all_quietly(sock, outgoing.read())  # the alert tells the peer why
        if exc.verify_code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH / _IP_ADDRESS_MISMATCH
            raise TLSError(profile.object_error("hostname_mismatch", hostname)) from None
        raise TLSError(profile.object_error("handshake_failed", exc.verify_message)) from None
    except ssl.SSLError as exc:
        _send_all_quietly(sock, outgoing.read())
        raise TLSError(profile.object_error("handshake_failed", exc.reason or exc)) from None
    except OSError as exc:
        if isinstance(exc, TLSError):
            raise
        raise TLSError(profile.object_error("handshake_failed", exc.strerror or exc)) from None
    sock.settimeout(None)
    return TLSChannel(sock, obj, incoming, outgoing)


def _recv_some(sock: socket.socket, deadline: float) -> bytes:
    left = deadline - time.monotonic()
    if left <= 0:
        raise socket.timeout()
    sock.settimeout(left)
    return sock.recv(1 << 16)


def _send_all(sock: socket.socket, data: bytes, deadline: float) -> None:
    if data:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout()
        sock.settimeout(left)
        sock.sendall(data)


def _send_all_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.settimeout(1.0)
        if data:
            sock.sendall(data)
    except OSError:
        pass


# ============================================================ the channel
class TLSChannel(Channel):
    """A migration channel with TLS on it (see the module doc: memory BIOs,
    so one reader and one writer may run at once)."""

    def __init__(self, sock: socket.socket, obj: ssl.SSLObject, incoming: ssl.MemoryBIO,
                 outgoing: ssl.MemoryBIO) -> None:
        super().__init__(sock)
        self._obj, self._in, self._out = obj, incoming, outgoing
        self._ssl_lock = threading.Lock()   # the SSLObject and its BIOs
        self._send_lock = threading.Lock()  # encryption to the last byte sent
        self._recv_lock = threading.RLock()  # one reader at a time
        self._pushback = bytearray()        # peeked plaintext, read again first
        self._eof = False

    def peer_certificate(self) -> Optional[dict]:
        with self._ssl_lock:
            return self._obj.getpeercert()

    @property
    def version(self) -> Optional[str]:
        return self._obj.version()

    # -- writing
    def send_buffers(self, buffers: Sequence) -> int:
        views = [memoryview(b).cast("B") for b in buffers]
        total = sum(v.nbytes for v in views)
        sock = self.sock
        assert sock is not None
        with self._send_lock:
            for chunk in _batches(views, SEND_CHUNK):
                with self._ssl_lock:
                    try:
                        self._obj.write(chunk)
                    except ssl.SSLError:
                        raise OSError(errno.EIO, WRITE_ERROR) from None
                    data = self._out.read()
                sock.sendall(data)
        return total

    def _flush_handshake_output(self) -> None:
        """Bytes OpenSSL made while reading (TLS 1.3 key updates, alerts)."""
        with self._ssl_lock:
            data = self._out.read() if self._out.pending else b""
        if data:
            with self._send_lock:
                try:
                    self.sock.sendall(data)  # type: ignore[union-attr]
                except OSError:
                    pass  # the reader sees the broken channel itself

    def close(self) -> None:
        """close_notify, then the socket -- after taking in what the peer
        sent and nobody read (TLS records the stream never needed): closing
        on unread bytes sends a reset, and a reset can make the peer drop
        the last bytes it has not read yet."""
        if self.closed:
            return
        sock = self.sock
        if sock is not None:
            try:
                with self._ssl_lock:
                    try:
                        self._obj.unwrap()
                    except ssl.SSLError:
                        pass
                    notify = self._out.read()
                if notify:
                    sock.sendall(notify)
                while sock.recv(1 << 16, socket.MSG_DONTWAIT):
                    pass
            except OSError:
                pass  # BlockingIOError: nothing left; or the channel is broken already
        super().close()

    # -- reading
    def _decrypt_into(self, buf: memoryview) -> Optional[int]:
        """Plaintext already decrypted or decryptable from what came: its
        byte count (0 at the peer's close), or None when more must come."""
        with self._ssl_lock:
            try:
                n = self._obj.read(len(buf), buf)
            except ssl.SSLWantReadError:
                return None
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return 0
            except ssl.SSLError:
                raise OSError(errno.EIO, READ_ERROR) from None
        return n

    def _take_pushback(self, buf: memoryview) -> int:
        n = min(len(buf), len(self._pushback))
        buf[:n] = self._pushback[:n]
        del self._pushback[:n]
        return n

    def _feed(self, data: bytes) -> None:
        with self._ssl_lock:
            if data:
                self._in.write(data)
            else:
                self._in.write_eof()

    def recv_into(self, buf: memoryview) -> int:
        buf = memoryview(buf).cast("B")
        if not len(buf):
            return 0
        with self._recv_lock:
            if self._pushback:
                return self._take_pushback(buf)
            while True:
                n = self._decrypt_into(buf)
                self._flush_handshake_output()
                if n is not None:
                    return n
                if self._eof:
                    return 0
                data = self.sock.recv(1 << 16)  # type: ignore[union-attr]
                if not data:
                    self._eof = True
                self._feed(data)

    def recv_more_into(self, buf: memoryview) -> int:
        """Non-blocking top-up: what is decrypted or waiting, else 0."""
        buf = memoryview(buf).cast("B")
        with self._recv_lock:
            if self._pushback:
                return self._take_pushback(buf)
            for _ in range(2):
                n = self._decrypt_into(buf)
                if n is not None:
                    return n
                if self._eof:
                    return 0
                try:
                    data = self.sock.recv(1 << 16, socket.MSG_DONTWAIT)  # type: ignore[union-attr]
                except (BlockingIOError, InterruptedError):
                    return 0
                if not data:
                    self._eof = True
                self._feed(data)
            return 0

    def recv(self, limit: int) -> bytes:
        out = bytearray(limit)
        n = self.recv_into(memoryview(out))
        return bytes(out[:n])

    def buffered(self) -> bool:
        """Plaintext is waiting that a select() on the socket would not show."""
        return bool(self._pushback) or self._obj.pending() > 0

    def peek(self, want: int, timeout: float) -> bytes:
        """Up to ``want`` first plaintext bytes, kept to be read again;
        bounded in time, as Channel.peek."""
        deadline = time.monotonic() + timeout
        with self._recv_lock:
            while len(self._pushback) < want:
                piece = bytearray(want - len(self._pushback))
                n = self._decrypt_into(memoryview(piece))
                if n:
                    self._pushback += piece[:n]
                    continue
                if n == 0 or self._eof:
                    break
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                    break
                data = self.sock.recv(1 << 16)  # type: ignore[union-attr]
                if not data:
                    self._eof = True
                self._feed(data)
            return bytes(self._pushback[:want])


def _batches(views: list[memoryview], size: int) -> list[bytes]:
    """The buffers joined into pieces of about ``size`` bytes (one record
    batch each instead of one per small header)."""
    out, piece, have = [], [], 0
    for v in views:
        while v.nbytes:
            take = v[:size - have]
            piece.append(take)
            have += take.nbytes
            v = v[take.nbytes:]
            if have >= size:
                out.append(b"".join(piece))
                piece, have = [], 0
    if piece:
        out.append(b"".join(piece))
    return out


# ============================================================ the destination
class TLSAcceptor:
    """A listener's connections, accepted and handshaken in the background
    (QEMU's incoming TLS handshake is asynchronous too).

    Why: a source opens its multifd channels before it writes the first byte
    of the main one, and each handshake needs the destination's part.  A
    destination that handshook inside ``accept`` while waiting for the main
    channel's first bytes would wait for the source while the source waits
    for it.  Here each connection gets its own short-lived handshake thread,
    so a peer that stalls (bounded by :data:`HANDSHAKE_TIMEOUT`) delays no
    other; a refused one is reported and forgotten; the secured channels
    queue in arrival order of their handshakes' ends."""

    def __init__(self, listener: Any, endpoint: TLSEndpoint) -> None:
        from livemig.engine.threads import report_only, spawn
        self.listener = listener
        self.endpoint = endpoint
        self._ready: "queue.Queue[Optional[Channel]]" = queue.Queue()
        self._spawn = lambda name, body: spawn(name, body, report_only(name))
        self._spawn("livemig-tls-accept", self._accept_loop)

    def _accept_loop(self) -> None:
        while True:
            try:
                chan = self.listener.accept()
            except OSError:  # the listener was closed: accept() ends too
                self._ready.put(None)
                return
            except BaseException:  # a bug: reported by the thread's net; accept() ends
                self._ready.put(None)
                raise
            self._spawn("livemig-tls-handshake", lambda chan=chan: self._secure(chan))

    def _secure(self, chan: Channel) -> None:
        try:
            self._ready.put(self.endpoint.secure(chan))
        except OSError as exc:  # TLSError, or the peer gone mid-handshake
            self.endpoint.report(exc.strerror or str(exc))

    def waiting(self) -> bool:
        """A secured connection (or the listener's end) is ready for accept()."""
        return not self._ready.empty()

    def accept(self) -> Channel:
        chan = self._ready.get()
        if chan is None:
            self._ready.put(None)  # every later accept() ends the same way
            raise OSError(errno.EBADF, "Bad file descriptor")
        return chan
