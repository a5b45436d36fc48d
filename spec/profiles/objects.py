"""QOM objects for migration over TLS, as data (issue 16).

What ``object-add`` accepts for TLS credentials and client authorization,
and the texts QEMU answers with.  The texts were recorded from QEMU 7.2
(``object-add`` / ``object-del`` over QMP, and TLS migrations between two
QEMU 7.2 processes with GnuTLS): see ``tests/test_tls.py`` for the cases.

* ``tls-creds-x509`` reads PEM files from ``dir``; QEMU looks for
  ``ca-cert.pem`` first, then the endpoint's certificate and key, and names
  the first one missing.  ``verify-peer`` (default true) makes a server ask
  for and check a client certificate, and a client check the server's.
* ``tls-creds-anon``: anonymous Diffie-Hellman, no certificates.
* ``authz-simple`` allows one identity (the client certificate's
  distinguished name, as GnuTLS prints it: ``O=livemig,CN=client``);
  ``authz-list`` matches rules in order (``exact`` or ``glob``), else its
  ``policy``.  7.2 has both; 3.0 had neither (added in 4.0).
"""
from __future__ import annotations

from livemig.spec.schema import ObjectProperty as P
from livemig.spec.schema import ObjectType

ENDPOINTS = ("server", "client")
POLICIES = ("deny", "allow")

TLS_CREDS_X509 = ObjectType(
    "tls-creds-x509", "X.509 certificates and keys read from a directory",
    (P("id", "str", required=True), P("endpoint", "enum", default="client", enum=ENDPOINTS),
     P("dir", "str"), P("verify-peer", "bool", default=True),
     P("priority", "str"), P("sanity-check", "bool", default=True),
     P("passwordid", "str")),
    files=(("server", ("ca-cert.pem", "server-cert.pem", "server-key.pem")),
           ("client", ("ca-cert.pem", "client-cert.pem", "client-key.pem"))),
    optional_files=("ca-crl.pem",), tls_creds=True)

TLS_CREDS_ANON = ObjectType(
    "tls-creds-anon", "anonymous credentials (Diffie-Hellman, no certificate)",
    (P("id", "str", required=True), P("endpoint", "enum", default="client", enum=ENDPOINTS),
     P("dir", "str"), P("verify-peer", "bool", default=True), P("priority", "str")),
    tls_creds=True)

AUTHZ_SIMPLE = ObjectType(
    "authz-simple", "allows exactly one identity",
    (P("id", "str", required=True), P("identity", "str", required=True)), authz=True)

AUTHZ_LIST = ObjectType(
    "authz-list", "rules matched in order, else the default policy",
    (P("id", "str", required=True), P("rules", "rules", default=()),
     P("policy", "enum", default="deny", enum=POLICIES)), authz=True)

#: object / TLS texts shared by the profiles (QEMU 7.2's unless marked)
OBJECT_ERRORS = (
    ("unknown_type", "Parameter 'qom-type' does not accept value '%s'"),
    ("bad_id", "Parameter 'id' expects an identifier"),
    ("duplicate_id", "attempt to add duplicate property '%s' to object (type 'container')"),
    ("bad_enum", "Parameter '%s' does not accept value '%s'"),
    ("missing_property", "Parameter '%s' is missing"),
    ("missing_dir", "Missing 'dir' property value"),
    ("bad_type", "Invalid parameter type for '%s', expected: %s"),
    ("unexpected_property", "Parameter '%s' is unexpected"),
    ("no_such_object", "object '%s' not found"),
    ("in_use", "object '%s' is in use, can not be deleted"),
    ("creds_file_missing", "Unable to access credentials %s: No such file or directory"),
    # livemig's own (Python's ssl names the reason, not GnuTLS)
    ("creds_unusable", "Unable to load credentials %s: %s"),
    # at migrate / migrate-incoming
    ("no_creds", "No TLS credentials with id '%s'"),
    ("not_creds", "Object with id '%s' is not TLS credentials"),
    ("wrong_endpoint", "Expected TLS credentials for a %s endpoint"),
    ("no_authz", "Cannot find QAuthZ object ID %s"),
    ("tls_not_on_protocol", "livemig: TLS needs a socket channel, not '%s'"),
    # the channel
    ("handshake_failed", "TLS handshake failed: %s"),
    ("no_hostname", "No hostname for certificate validation"),
    ("hostname_mismatch", "Certificate does not match the hostname %s"),
    ("authz_denied", "TLS x509 authz check for %s is denied"),
    ("no_peer_cert", "No certificate was found"),
    ("handshake_timeout", "livemig: TLS handshake not done after %g s"),
)
