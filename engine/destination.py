"""The destination side of precopy, sans-I/O.

Theory of operation
-------------------
:class:`DestinationMigration` is QEMU's ``process_incoming_migration_co``
and its bottom half without the I/O.  A driver hands it the main channel's
bytes (through the decoder's buffer API: :meth:`get_buffer` /
:meth:`buffer_updated`, or :meth:`feed`) and sends whatever
:meth:`data_to_send` returns on the return path.

* :meth:`listening` -- ``qemu_start_incoming_migration``: the MIGRATION
  ``setup`` event with no state change (row ``dst.incoming.setup_event``).
* :meth:`accepted` -- the first channel arrived: none -> active
  (``dst.co.active``).
* stream events: OPEN_RETURN_PATH enables the return path; PING is answered
  with PONG; the global state section says whether the source was running;
  EOF ends the load.
* :meth:`load_finished` -- the BH: active -> completed (``dst.bh.completed``)
  and, on a return path, SHUT 0.  The caller starts the vCPU when
  :attr:`autostart` says so.
* :meth:`load_failed` -- "load of migration failed: ..." and active -> failed
  (``dst.co.failed``); SHUT 1 on a return path.  QEMU then exits; the VM
  process does too.

With multifd, the driver's load thread waits on EOF until every channel
has reached end-of-file with its packets applied (ordering between passes is
the channels' SYNC barrier, see :mod:`livemig.engine.multifd`).
"""
from __future__ import annotations

from typing import Callable, Optional

from livemig.core.cell import StatusCell
from livemig.engine.guest import Guest, RUN_RUNNING
from livemig.engine.layouts import layouts
from livemig.engine.multifd import MultifdDecoder
from livemig.engine.returnpath import encode_u32
from livemig.engine.rows import DESTINATION_ROWS as ROW
from livemig.engine.source import MACHINE
from livemig.engine.stream import (
    CommandReceived, DeviceState, EndOfStream, Event, GlobalState, RAM_SECTION, StreamDecoder,
)
from livemig.errors import StreamError
from livemig.spec.schema import Profile


class DestinationMigration:
    """One incoming migration into ``guest`` (see the module docstring)."""

    def __init__(self, profile: Profile, guest: Guest, cell: StatusCell, *,
                 caps: dict[str, bool], machine: Optional[str] = None,
                 uuid: Optional[bytes] = None,
                 pristine: bool = True) -> None:
        self.profile = profile
        self.guest = guest
        self.cell = cell
        self.caps = dict(caps)
        self._layouts = layouts(profile)
        if machine is None:
            machine = MACHINE
        self.decoder = StreamDecoder(profile, guest.blocks, machine=machine, uuid=uuid,
                                     caps=caps)
        if not pristine:
            for t in self.decoder._touched.values():
                t[:] = True
        self.return_path = False
        self._rp_out = bytearray()
        self.source_runstate: Optional[str] = None
        self.device_state: Optional[bytes] = None
        self.finished = False
        self.error_desc: Optional[str] = None
        self.multifd: list[MultifdDecoder] = []
        self.on_section_eos: Optional[Callable[[], None]] = None
        #: set by a driver with multifd channels: raises StreamError when a
        #: channel failed (the driver has waited for every channel's EOF)
        self.before_finish: Optional[Callable[[], None]] = None

    # ------------------------------------------------------------ lifecycle
    def listening(self) -> None:
        self.cell.emit(ROW["setup_event"])

    def accepted(self) -> bool:
        return self.cell.fire(ROW["active"])

    @property
    def autostart(self) -> bool:
        """Start the vCPU after the load (the source was running)."""
        return self.source_runstate == RUN_RUNNING

    # ------------------------------------------------------------ input
    def get_buffer(self, sizehint: int = -1) -> memoryview:
        return self.decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> list[Event]:
        return self._handle(self.decoder.buffer_updated(nbytes))

    def feed(self, data: bytes) -> list[Event]:
        return self._handle(self.decoder.feed(data))

    def input_ended(self) -> list[Event]:
        """The main channel reached end-of-file: the stream's own end where
        only a QEMU machine's optional vmdesc was left, else a StreamError."""
        return self._handle(self.decoder.input_ended())

    def _handle(self, events: list[Event]) -> list[Event]:
        for ev in events:
            if isinstance(ev, CommandReceived):
                if ev.name == "OPEN_RETURN_PATH":
                    self.return_path = True
                    self.decoder.return_path = True
                elif ev.name == "PING":
                    (value,) = self._layouts.cmd["PING"].unpack(ev.payload)
                    self._rp_out += self._layouts.rp["PONG"].pack(value)
            elif isinstance(ev, GlobalState):
                self.source_runstate = ev.runstate
            elif isinstance(ev, DeviceState):
                self.device_state = ev.blob
            elif isinstance(ev, EndOfStream):
                self.finished = True
        return events

    def data_to_send(self) -> bytes:
        """Return-path bytes to send now."""
        out = bytes(self._rp_out)
        self._rp_out.clear()
        return out

    # ------------------------------------------------------------ ending
    def load_finished(self) -> bool:
        """All loaded: apply the device state, active -> completed, SHUT 0."""
        if self.before_finish is not None:
            self.before_finish()
        if self.device_state is not None:
            self.guest.load_device_state(self.device_state)
        ok = self.cell.fire(ROW["completed"])
        if self.return_path:
            self._rp_out += encode_u32(self.profile, "SHUT", 0)
        return ok

    def load_failed(self, message: str) -> bool:
        """The load failed: error-desc, active -> failed, SHUT 1."""
        self.error_desc = f"load of migration failed: {message}"
        ok = self.cell.fire(ROW["failed"])
        # OPEN_RETURN_PATH may have been parsed in the very buffer whose next
        # item failed: the decoder saw it even if its event was never handled
        self.return_path = self.return_path or self.decoder.return_path
        if self.return_path:
            self._rp_out += encode_u32(self.profile, "SHUT", 1)
        return ok
