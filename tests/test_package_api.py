"""The packages' public API: engine and conformance re-export it as spec and
core do, every exported name resolves, and importing a package is cheap (no
submodule, no numpy / qemu.qmp / Hypothesis, no thread)."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest

PACKAGES = ("livemig.engine", "livemig.conformance", "livemig.core", "livemig.spec",
            "livemig.diagrams")


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_resolves(package):
    mod = importlib.import_module(package)
    assert mod.__all__, f"{package} exports nothing"
    missing = [name for name in mod.__all__ if getattr(mod, name, None) is None]
    assert not missing, f"{package}.__all__ names what it does not have: {missing}"


def test_the_sessions_transport_and_clients_are_exported():
    import livemig.conformance as conformance
    import livemig.engine as engine
    from livemig.engine.postcopy import PostcopySource
    from livemig.engine.qmpclient import SyncQMPClient

    assert engine.PostcopySource is PostcopySource
    assert conformance.QMPSession is SyncQMPClient is engine.SyncQMPClient
    assert str(engine.parse_uri("unix:/tmp/x")) == "unix:/tmp/x"


@pytest.mark.parametrize("package", ["livemig.engine", "livemig.conformance"])
def test_importing_the_package_loads_nothing_heavy(package):
    code = (f"import sys, threading, {package}; "
            "print(json.dumps([sorted(m for m in sys.modules if m.startswith("
            f"('{package}.', 'numpy', 'qemu', 'hypothesis'))), threading.active_count()]))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    loaded, threads = json.loads(out)
    assert loaded == [] and threads == 1
