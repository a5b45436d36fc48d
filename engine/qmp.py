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
* events pushed to every negotiated client.

Commands run on worker threads so a slow one never blocks event delivery.
"""
from __future__ import annotations

import asyncio
import json
import os
from typing import Any, Optional

from livemig.engine.vm import VM
from livemig.errors import MigrationError


class QMPServer:
    """Serves one VM on ``path`` (a unix socket)."""

    def __init__(self, vm: VM, path: str) -> None:
        self.vm = vm
        self.path = path
        self._clients: set[asyncio.StreamWriter] = set()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._server: Optional[asyncio.base_events.Server] = None
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
        """Serve until ``quit``."""
        self._loop = asyncio.get_running_loop()
        if os.path.exists(self.path):
            os.unlink(self.path)
        self._server = await asyncio.start_unix_server(self._client, path=self.path)
        async with self._server:
            await self.quit.wait()
            # Let the quit reply and last events reach the clients.
            await asyncio.sleep(0.05)
        try:
            os.unlink(self.path)
        except OSError:
            pass

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        greeting = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7},
                                        "package": "livemig"},
                            "capabilities": ["oob"]}}
        writer.write((json.dumps(greeting) + "\r\n").encode())
        negotiated = False
        decoder = json.JSONDecoder()
        pending = ""
        messages: list = []
        try:
            while True:
                # QMP is a stream of JSON objects; clients need not end them with a newline.
                while not messages:
                    chunk = await reader.read(65536)
                    if not chunk:
                        return
                    pending += chunk.decode(errors="replace")
                    while True:
                        stripped = pending.lstrip()
                        if not stripped:
                            pending = ""
                            break
                        try:
                            obj, end = decoder.raw_decode(stripped)
                        except ValueError:
                            if len(stripped) > (1 << 20):
                                writer.write(self._error(None, "GenericError",
                                                         "JSON parse error"))
                                pending = ""
                            else:
                                pending = stripped
                            break
                        messages.append(obj)
                        pending = stripped[end:]
                msg = messages.pop(0)
                if not isinstance(msg, dict):
                    writer.write(self._error(None, "GenericError",
                                             "QMP input must be a JSON object"))
                    continue
                ident = msg.get("id")
                name = msg.get("execute") or msg.get("exec-oob")
                args = msg.get("arguments") or {}
                if not isinstance(name, str):
                    writer.write(self._error(ident, "GenericError",
                                             "QMP input lacks member 'execute'"))
                    continue
                if name == "qmp_capabilities":
                    if negotiated:
                        writer.write(self._error(
                            ident, "CommandNotFound",
                            "Capabilities negotiation is already complete, command ignored"))
                    else:
                        negotiated = True
                        self._clients.add(writer)
                        writer.write(self._reply(ident, {}))
                    continue
                if not negotiated:
                    writer.write(self._error(
                        ident, "CommandNotFound",
                        "Expecting capabilities negotiation with 'qmp_capabilities'"))
                    continue
                try:
                    result = await asyncio.to_thread(self.vm.execute, name, args)
                except MigrationError as exc:
                    writer.write(self._error(ident, exc.qmp_class, exc.message))
                else:
                    writer.write(self._reply(ident, result))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients.discard(writer)
            try:
                writer.close()
            except Exception:
                pass

    @staticmethod
    def _reply(ident: Any, result: Any) -> bytes:
        msg: dict = {"return": result}
        if ident is not None:
            msg["id"] = ident
        return (json.dumps(msg) + "\r\n").encode()

    @staticmethod
    def _error(ident: Any, klass: str, desc: str) -> bytes:
        msg: dict = {"error": {"class": klass, "desc": desc}}
        if ident is not None:
            msg["id"] = ident
        return (json.dumps(msg) + "\r\n").encode()


def serve_vm(vm: VM, path: str) -> None:
    """Run the QMP server for ``vm`` until a ``quit`` command."""
    server = QMPServer(vm, path)
    asyncio.run(server.serve())
