"""TLS between livemig and a real QEMU 7.2 (GnuTLS) both ways (issue 16):
x509 credentials with peer verification and an authz list on the
destination, precopy with the return path and postcopy, the RAM equal
after completion.  Skipped, with the reason, without QEMU 7.2 or openssl."""
from __future__ import annotations

import pytest

from livemig.conformance.qemupeer import QemuPeerPair, why_not_qemu_72
from livemig.conformance.tlscerts import CLIENT_DN, make_pki, openssl_missing

WAIT = 60.0
WHY_NOT = why_not_qemu_72() or openssl_missing()
pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT or "qemu 7.2 and openssl")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("tls"))


def _tls(pair: QemuPeerPair, pki) -> None:
    pair.destination.execute("object-add", {"qom-type": "tls-creds-x509", "id": "tls0",
                                            "dir": str(pki["server"]), "endpoint": "server"})
    pair.source.execute("object-add", {"qom-type": "tls-creds-x509", "id": "tls0",
                                       "dir": str(pki["client"]), "endpoint": "client"})
    pair.destination.execute("object-add", {"qom-type": "authz-simple", "id": "authz0",
                                            "identity": CLIENT_DN})
    pair.destination.execute("migrate-set-parameters", {"tls-authz": "authz0"})
    for side in (pair.source, pair.destination):
        side.execute("migrate-set-parameters", {"tls-creds": "tls0"})


@pytest.mark.parametrize("mode", ["precopy", "postcopy"])
@pytest.mark.parametrize("qemu_role", ["destination", "source"])
def test_tls_with_qemu(tmp_path, pki, qemu_role, mode):
    caps = ("events", "return-path") + (("postcopy-ram",) if mode == "postcopy" else ())
    with QemuPeerPair(tmp_path, qemu_role=qemu_role, transport="tcp", caps=caps) as pair:
        _tls(pair, pki)
        pair.start(bandwidth=1 << 30, postcopy_bandwidth=8 << 20)
        if mode == "postcopy":
            pair.source.wait_status({"active"}, WAIT)
            pair.source.execute("migrate-start-postcopy")
            pair.destination.wait_status({"postcopy-active", "completed"}, WAIT)
            offset = 50 << 20
            assert pair.destination.read(offset, 4096) == pair.source.read(offset, 4096)
        pair.finish(WAIT)
