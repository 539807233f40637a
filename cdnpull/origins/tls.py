"""
TLS to origins: connect to a chosen IP, send SNI = the origin Host, and verify
the certificate against that name (service_identity, through Twisted's
C{optionsForClientTLS}) with the system trust store or C{origin_ca_file}.
"""

from __future__ import annotations

import re
from typing import Optional

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from zope.interface import implementer

__all__ = ["TLSPolicy", "load_trust_root"]

_PEM = re.compile(
    rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL
)


def load_trust_root(ca_file: Optional[str]):
    """
    The trust root for origin certificates: every certificate of a PEM
    bundle, or the platform's trust store when C{ca_file} is None.  Read once
    at start-up, never on the request path.
    """
    if ca_file is None:
        return ssl.platformTrust()
    with open(ca_file, "rb") as f:
        data = f.read()
    certs = [ssl.Certificate.loadPEM(m.group(0)) for m in _PEM.finditer(data)]
    if not certs:
        raise ValueError(f"{ca_file}: no PEM certificate found")
    return ssl.trustRootFromCertificates(certs)


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedSNI:
    """TLS with SNI but no certificate check (C{verify=False} origins)."""

    def __init__(self, server_name: str) -> None:
        self._name = server_name.encode("idna")
        self._ctx = ssl.CertificateOptions(verify=False).getContext()

    def clientConnectionForTLS(self, tlsProtocol):
        conn = SSL.Connection(self._ctx, None)
        conn.set_app_data(tlsProtocol)
        conn.set_tlsext_host_name(self._name)
        conn.set_connect_state()
        return conn


class TLSPolicy:
    """
    Makes the connection creator for a (server name, verify): SNI with that
    name, and the certificate checked against it with the trust root read at
    start-up.  It keeps no per-name state: L{cdnpull.origins.client.OriginClient}
    keeps each creator with its name's connection pool, where the names
    chosen by clients are bounded.
    """

    def __init__(self, ca_file: Optional[str] = None) -> None:
        self._trust = load_trust_root(ca_file)

    def creator(self, server_name: str, verify: bool = True):
        if verify:
            return ssl.optionsForClientTLS(server_name, trustRoot=self._trust)
        return _UnverifiedSNI(server_name)
