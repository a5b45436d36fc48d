"""Test certificates for TLS migrations, made with the ``openssl`` command.

:func:`make_pki` writes, under one directory, QEMU's credential layout
(``ca-cert.pem``, ``server-cert.pem`` / ``server-key.pem``,
``client-cert.pem`` / ``client-key.pem``) for each case a test needs:

* ``server/`` and ``client/`` -- one CA; the server certificate names
  127.0.0.1 and localhost; the client's subject is ``O=livemig,CN=client``;
* ``other-client/`` -- a client whose certificate (and CA) is another CA's;
* ``expired-client/`` -- a client certificate of the right CA that expired
  in 2020 (``openssl ca`` sets past dates, ``x509 -req`` cannot);
* ``wrong-host-server/`` -- a server certificate for ``elsewhere.example``.

RSA 2048 keys; everything is made in a few hundred milliseconds.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CLIENT_DN = "O=livemig,CN=client"

_SERVER_EXT = ("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
               "keyUsage=digitalSignature,keyEncipherment\nbasicConstraints=CA:FALSE\n")
_CLIENT_EXT = ("extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n"
               "basicConstraints=CA:FALSE\n")


def openssl_missing() -> str:
    """Why certificates cannot be made here, or ""."""
    return "" if shutil.which("openssl") else "the openssl command is not installed"


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> None:
    _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}-key.pem",
         "-out", f"{name}-cert.pem", "-days", "30", "-subj", f"/CN=livemig {name}", cwd=d)


def _leaf(d: Path, ca: str, name: str, subject: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext)
    _run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}-key.pem",
         "-out", f"{name}.csr", "-subj", subject, cwd=d)
    _run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}-cert.pem", "-CAkey",
         f"{ca}-key.pem", "-CAcreateserial", "-out", f"{name}-cert.pem", "-days", "30",
         "-extfile", f"{name}.ext", cwd=d)


def _expired_leaf(d: Path, ca: str, name: str, subject: str) -> None:
    """A certificate valid only in January 2020, signed by ``ca``."""
    (d / "index.txt").write_text("")
    (d / "serial").write_text("1000\n")
    (d / "ca.cnf").write_text(
        "[ca]\ndefault_ca=x\n[x]\ndatabase=index.txt\nnew_certs_dir=.\nserial=serial\n"
        "default_md=sha256\npolicy=p\nunique_subject=no\nx509_extensions=e\n"
        "[p]\norganizationName=optional\ncommonName=supplied\n"
        "[e]\nextendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n")
    _run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}-key.pem",
         "-out", f"{name}.csr", "-subj", subject, cwd=d)
    _run("ca", "-batch", "-config", "ca.cnf", "-cert", f"{ca}-cert.pem", "-keyfile",
         f"{ca}-key.pem", "-in", f"{name}.csr", "-out", f"{name}-cert.pem", "-notext",
         "-startdate", "20200101000000Z", "-enddate", "20200102000000Z", cwd=d)


def _dir(root: Path, name: str, files: dict[str, Path]) -> Path:
    out = root / name
    out.mkdir()
    for target, source in files.items():
        shutil.copy(source, out / target)
    return out


def make_pki(root: Path) -> dict[str, Path]:
    """Every credential directory of the module doc, by name."""
    work = root / "pki"
    work.mkdir(parents=True)
    _ca(work, "ca")
    _ca(work, "other-ca")
    _leaf(work, "ca", "server", "/CN=127.0.0.1", _SERVER_EXT)
    _leaf(work, "ca", "client", "/O=livemig/CN=client", _CLIENT_EXT)
    _leaf(work, "other-ca", "intruder", "/O=livemig/CN=intruder", _CLIENT_EXT)
    _leaf(work, "ca", "elsewhere", "/CN=elsewhere.example",
          _SERVER_EXT.replace("IP:127.0.0.1,DNS:localhost", "DNS:elsewhere.example"))
    _expired_leaf(work, "ca", "expired", "/O=livemig/CN=expired")
    ca = work / "ca-cert.pem"
    return {
        "server": _dir(root, "server", {"ca-cert.pem": ca, "server-cert.pem":
                                        work / "server-cert.pem",
                                        "server-key.pem": work / "server-key.pem"}),
        "client": _dir(root, "client", {"ca-cert.pem": ca, "client-cert.pem":
                                        work / "client-cert.pem",
                                        "client-key.pem": work / "client-key.pem"}),
        "other-client": _dir(root, "other-client", {
            "ca-cert.pem": work / "other-ca-cert.pem",
            "client-cert.pem": work / "intruder-cert.pem",
            "client-key.pem": work / "intruder-key.pem"}),
        "expired-client": _dir(root, "expired-client", {
            "ca-cert.pem": ca, "client-cert.pem": work / "expired-cert.pem",
            "client-key.pem": work / "expired-key.pem"}),
        "wrong-host-server": _dir(root, "wrong-host-server", {
            "ca-cert.pem": ca, "server-cert.pem": work / "elsewhere-cert.pem",
            "server-key.pem": work / "elsewhere-key.pem"}),
    }
