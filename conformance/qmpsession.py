"""The QMP session of the differential tests and ``livemig monitor``.

They talk to processes they did not necessarily start (a QEMU, or
``livemig vm --qmp``), so a session is a client of a socket path only.  The
client is the engine's one synchronous QMP client,
:class:`livemig.engine.qmpclient.SyncQMPClient`; this module keeps the names
the conformance code has always imported.  Every event received is kept in
order in ``events``, and ``wait_event(predicate, timeout, start)`` searches
it from a cursor (see that module for the rules: bounded waits, QEMU's
answer as data).
"""
from __future__ import annotations

from livemig.engine.qmpclient import QMPClientError, QMPCommandError, Reply, SyncQMPClient

#: A session is the engine's synchronous client.
QMPSession = SyncQMPClient
#: Raised when the socket cannot be reached, a command is refused
#: (:class:`QMPCommandError`, a subclass), or a wait runs out of time.
QMPSessionError = QMPClientError

__all__ = ["QMPCommandError", "QMPSession", "QMPSessionError", "Reply"]
