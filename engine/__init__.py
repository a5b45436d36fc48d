"""livemig.engine: a real migration engine driven by core.

* the sessions, sans-I/O: :class:`SourceMigration` / :class:`DestinationMigration`
  (precopy), :class:`PostcopySource` / :class:`PostcopyDestination` (postcopy,
  pause and recovery) -- they take bytes and events in and give bytes and
  events out, and fire every status change as a spec row on a core cell;
* the wire: :class:`StreamEncoder` / :class:`StreamDecoder` (QEMU's stream
  framing), :class:`ReturnPathDecoder` and :func:`encode_rp` (the return
  path), :class:`MultifdDecoder`;
* the transports: :class:`Uri` / :func:`parse_uri` (QEMU's URI forms),
  :func:`connect`, :class:`Listener`, :class:`Channel`;
* the VM and its guest: :class:`VM` (what ``livemig vm`` runs, driven by QMP
  commands), :class:`Guest`, :class:`RAMBlock`, :func:`check_guest_ram`;
* the drivers: :class:`SourceDriver` / :class:`DestinationDriver` (the
  engine's thread programs, written once) and :class:`ThreadRunner` /
  :class:`SocketTransport` (real threads and sockets);
* QMP: :class:`QMPServer` (the endpoint QEMU's client drives),
  :class:`SyncQMPClient` (the one synchronous client) and :class:`QMPProcess`.

    >>> from livemig.engine import parse_uri
    >>> parse_uri("tcp:127.0.0.1:4444").port
    4444

Names are imported on first use (PEP 562), so ``import livemig.engine`` loads
no submodule: no numpy, no qemu.qmp, no thread machinery, and no import
cycle with the submodules, which import one another as ``livemig.engine.x``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from livemig.lazy import lazy_exports

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    # sessions (sans-I/O)
    "SourceMigration": "source",
    "DestinationMigration": "destination",
    "PostcopySource": "postcopy",
    "PostcopyDestination": "postcopy",
    "PostcopyStreamDecoder": "postcopy",
    # the wire
    "StreamEncoder": "stream",
    "StreamDecoder": "stream",
    "ReturnPathDecoder": "returnpath",
    "encode_rp": "returnpath",
    "MultifdDecoder": "multifd",
    # transports
    "Uri": "transport",
    "UriError": "transport",
    "parse_uri": "transport",
    "connect": "transport",
    "Listener": "transport",
    "Channel": "transport",
    # the VM and its guest
    "VM": "vm",
    "Guest": "guest",
    "RAMBlock": "guest",
    "check_guest_ram": "guest",
    # QMP
    "QMPServer": "qmp",
    "SyncQMPClient": "qmpclient",
    "QMPClientError": "qmpclient",
    "QMPCommandError": "qmpclient",
    "QMPTimeout": "qmpclient",
    "QMPProcess": "qmpprocess",
    # the drivers: thread programs written once, and the runner that puts
    # them on real threads and sockets
    "SourceDriver": "source_driver",
    "DestinationDriver": "destination_driver",
    "ThreadRunner": "runner",
    "SocketTransport": "runner",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # what type checkers and editors see; never run
    from livemig.engine.destination import DestinationMigration
    from livemig.engine.destination_driver import DestinationDriver
    from livemig.engine.guest import Guest, RAMBlock, check_guest_ram
    from livemig.engine.multifd import MultifdDecoder
    from livemig.engine.postcopy import PostcopyDestination, PostcopySource, PostcopyStreamDecoder
    from livemig.engine.qmp import QMPServer
    from livemig.engine.qmpclient import QMPClientError, QMPCommandError, QMPTimeout, SyncQMPClient
    from livemig.engine.qmpprocess import QMPProcess
    from livemig.engine.returnpath import ReturnPathDecoder, encode_rp
    from livemig.engine.runner import SocketTransport, ThreadRunner
    from livemig.engine.source import SourceMigration
    from livemig.engine.source_driver import SourceDriver
    from livemig.engine.stream import StreamDecoder, StreamEncoder
    from livemig.engine.transport import Channel, Listener, Uri, UriError, connect, parse_uri
    from livemig.engine.vm import VM
