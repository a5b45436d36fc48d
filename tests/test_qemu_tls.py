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


@pytest.mark.parametrize("tls_creds", ["", "tls0"])
def test_the_tls_capability_rules_answer_as_qemu(tls_creds):
    """zero-copy-send with multifd: the spec's rule about TLS gives the
    installed QEMU 7.2's answer, with tls-creds set and not."""
    from livemig.conformance.qemu_vm import QemuVM
    from livemig.engine.vm import VM
    from livemig.errors import MigrationError
    caps = {"capabilities": [{"capability": "multifd", "state": True},
                             {"capability": "zero-copy-send", "state": True}]}
    vm = VM(ram_size=4 << 20)
    try:
        with QemuVM(role="source", name="tlsrule") as qemu:
            answers = []
            for execute in (qemu.execute, None):
                if execute is None:
                    vm.execute("migrate-set-parameters", {"tls-creds": tls_creds})
                    try:
                        vm.execute("migrate-set-capabilities", caps)
                        answers.append(("ok", {}))
                    except MigrationError as exc:
                        answers.append(("error", "GenericError", exc.message))
                else:
                    execute("migrate-set-parameters", {"tls-creds": tls_creds})
                    answers.append(execute("migrate-set-capabilities", caps))
            assert answers[0] == answers[1], answers
    finally:
        vm.close()
