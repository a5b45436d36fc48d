"""The physical limit of a migration on this machine: a plain Python sender
and receiver, two processes, moving N bytes over loopback TCP or a unix
socket with large ``sendall``/``recv_into`` buffers and nothing else.

Run:  .venv/bin/python benchmarks/limit.py [--size 1G] [--transport tcp|unix]
                                           [--streams 1] [--runs 3]

The sender reads from a shared RAM file when one is given (as the engines'
sources do, so the cost of reading guest RAM is in the limit too) or else
from one reused buffer; the receiver writes into a prefaulted anonymous
mapping of the full size (as the engines' destinations preallocate guest
RAM).  With ``--streams N`` each side runs N connections in N threads
(``sendall``/``recv_into`` release the GIL), the limit for N multifd
channels.  The time is the sender's: from the first byte until the
receiver's one-byte acknowledgement that it holds everything -- the same
span as query-migrate's total-time (migrate -> completed).
"""
from __future__ import annotations

import argparse
import mmap
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Optional

CHUNK = 8 << 20  # bytes per sendall / recv_into: large, so per-call cost vanishes


def _spans(size: int, streams: int) -> list[tuple[int, int]]:
    """``size`` split in ``streams`` page-aligned (offset, length) pieces."""
    per = (size // streams) & ~4095
    spans = [(i * per, per) for i in range(streams)]
    spans[-1] = (spans[-1][0], size - spans[-1][0])
    return spans


POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def _each_stream(work: Callable[[socket.socket, int, int], None],
                 socks: list[socket.socket], size: int) -> None:
    """``work(sock, offset, length)`` for each connection's span, in parallel."""
    threads = [threading.Thread(target=work, args=(s, o, n))
               for s, (o, n) in zip(socks, _spans(size, len(socks)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _receive(listener: socket.socket, ram: mmap.mmap, size: int, streams: int) -> None:
    """Accept ``streams`` connections and read ``size`` bytes into ``ram``."""
    view = memoryview(ram)
    conns = [listener.accept()[0] for _ in range(streams)]

    def one(conn: socket.socket, offset: int, length: int) -> None:
        end = offset + length
        while offset < end:
            n = conn.recv_into(view[offset:min(end, offset + CHUNK)])
            if n == 0:
                raise EOFError("sender closed early")
            offset += n

    _each_stream(one, conns, size)
    conns[0].sendall(b"!")  # everything is in RAM: the sender's clock stops here
    for c in conns:
        c.close()
    view.release()
    ram.close()


def _serve(address: str, size: int, streams: int) -> None:
    """The receiver process: listen at ``address``, print it, receive once."""
    # Faulted in before the address is printed, so the sender's clock never
    # pays for it (the engines preallocate their incoming RAM the same way).
    ram = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | POPULATE)
    if address.startswith("unix:"):
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(address[5:])
    else:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        address = f"tcp:127.0.0.1:{listener.getsockname()[1]}"
    listener.listen(streams)
    print(address, flush=True)
    _receive(listener, ram, size, streams)


def _connect(address: str) -> socket.socket:
    if address.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(address[5:])
    else:
        host, port = address[4:].rsplit(":", 1)
        s = socket.create_connection((host, int(port)))
    return s


def _send(address: str, size: int, streams: int, source: Optional[Path]) -> float:
    """Send ``size`` bytes over ``streams`` connections; seconds until acked."""
    if source is not None:
        with open(source, "rb") as f:
            data = mmap.mmap(f.fileno(), size, flags=mmap.MAP_SHARED | POPULATE,
                             prot=mmap.PROT_READ)
    else:
        data = None
        buf = memoryview(bytearray(os.urandom(1 << 16) * (CHUNK >> 16)))
    socks = [_connect(address) for _ in range(streams)]

    def one(s: socket.socket, offset: int, length: int) -> None:
        view = memoryview(data) if data is not None else None
        end = offset + length
        while offset < end:
            n = min(CHUNK, end - offset)
            s.sendall(view[offset:offset + n] if view is not None else buf[:n])
            offset += n
        if view is not None:
            view.release()

    t0 = time.perf_counter()
    _each_stream(one, socks, size)
    if socks[0].recv(1) != b"!":
        raise EOFError("receiver did not acknowledge")
    elapsed = time.perf_counter() - t0
    for s in socks:
        s.close()
    if data is not None:
        data.close()
    return elapsed


def measure(size: int, transport: str = "tcp", streams: int = 1,
            source: Optional[Path] = None) -> float:
    """One limit run: a receiver process and this process as the sender.
    Seconds to move ``size`` bytes (sender's first byte -> receiver's ack)."""
    with tempfile.TemporaryDirectory(prefix="livemig-limit-") as tmp:
        address = f"unix:{tmp}/limit.sock" if transport == "unix" else "tcp:"
        recv = subprocess.Popen([sys.executable, __file__, "--serve", address,
                                 "--size", str(size), "--streams", str(streams)],
                                stdout=subprocess.PIPE, text=True)
        try:
            assert recv.stdout is not None
            address = recv.stdout.readline().strip()
            if not address:
                raise RuntimeError("the limit receiver did not start")
            elapsed = _send(address, size, streams, source)
            if recv.wait(60) != 0:
                raise RuntimeError(f"the limit receiver exited {recv.returncode}")
            return elapsed
        finally:
            if recv.poll() is None:
                recv.kill()
                recv.wait(5)


def median_limit(size: int, transport: str, streams: int, runs: int,
                 source: Optional[Path] = None) -> tuple[float, list[float]]:
    """One warm-up, then the median of ``runs`` runs of :func:`measure`."""
    measure(size, transport, streams, source)
    samples = [measure(size, transport, streams, source) for _ in range(runs)]
    return statistics.median(samples), samples


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--transport", default="tcp", choices=("tcp", "unix"))
    ap.add_argument("--streams", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--source", type=Path, default=None, help="send from this RAM file")
    ap.add_argument("--serve", default=None, help=argparse.SUPPRESS)  # the receiver process
    args = ap.parse_args()
    if args.serve is not None:
        _serve(args.serve, int(args.size), args.streams)
        return 0
    from livemig.engine.guest import parse_size
    size = parse_size(args.size)
    med, samples = median_limit(size, args.transport, args.streams, args.runs, args.source)
    print(f"limit {args.transport} x{args.streams}: {size >> 20} MiB in {med:.3f} s "
          f"({size / med / (1 << 30):.2f} GiB/s); runs {', '.join(f'{x:.3f}' for x in samples)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
