#!/usr/bin/env python3
"""Build the migration-test boot sector ``dirty.img`` from ``dirty.S``.

    python conformance/guest/build.py            # rebuild dirty.img in place
    python conformance/guest/build.py -o OUT.img # write elsewhere
    python conformance/guest/build.py --check    # exit 1 if dirty.img is stale

Needs GNU binutils (``as``, ``ld``, ``objcopy``).  The built image is
committed, so machines without binutils can still run the tests; a test
checks that the committed image equals a fresh build where ``as`` exists.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "dirty.S"
IMAGE = HERE / "dirty.img"
SECTOR = 512
LOAD_ADDRESS = 0x7C00  # where the BIOS loads a boot sector
SIGNATURE = b"\x55\xaa"


class BuildError(RuntimeError):
    """The tools are missing or the image came out wrong."""


def tools_available() -> bool:
    """True when ``as``, ``ld`` and ``objcopy`` are on PATH."""
    return all(shutil.which(t) for t in ("as", "ld", "objcopy"))


def build_image(source: Path = SOURCE) -> bytes:
    """Assemble ``source`` and return the 512-byte boot sector."""
    if not tools_available():
        raise BuildError("GNU binutils (as, ld, objcopy) are needed to build the guest")
    with tempfile.TemporaryDirectory(prefix="livemig-guest-") as tmp:
        obj, elf, raw = (Path(tmp) / n for n in ("dirty.o", "dirty.elf", "dirty.bin"))
        for argv in (
            ["as", "--32", "-o", str(obj), str(source)],
            ["ld", "-m", "elf_i386", f"-Ttext=0x{LOAD_ADDRESS:x}", "-e", "_start",
             "--build-id=none", "-o", str(elf), str(obj)],
            ["objcopy", "-O", "binary", "-j", ".text", str(elf), str(raw)],
        ):
            done = subprocess.run(argv, capture_output=True, text=True)
            if done.returncode != 0:
                raise BuildError(f"{' '.join(argv)} failed:\n{done.stderr}")
        data = raw.read_bytes()
    if len(data) != SECTOR or data[-2:] != SIGNATURE:
        raise BuildError(f"image is {len(data)} bytes ending in {data[-2:].hex()}; "
                         f"want {SECTOR} bytes ending in {SIGNATURE.hex()}")
    return data


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=IMAGE)
    parser.add_argument("--check", action="store_true",
                        help="compare a fresh build with the output file instead of writing")
    args = parser.parse_args(argv)
    try:
        data = build_image()
    except BuildError as exc:
        print(f"build.py: {exc}", file=sys.stderr)
        return 2
    if args.check:
        same = args.output.exists() and args.output.read_bytes() == data
        print(f"{args.output}: {'up to date' if same else 'STALE'}")
        return 0 if same else 1
    args.output.write_bytes(data)
    print(f"wrote {args.output} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
