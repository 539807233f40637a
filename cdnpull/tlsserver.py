"""
The client-side TLS of C{tls:PORT[:interface=ADDR]} listeners: one port for
every domain, the certificate chosen by the name the client sends (SNI)
while the handshake runs.

Each certificate of the current L{cdnpull.certs.CertificateSet} gets its own
OpenSSL context, all with the same settings (Mozilla's "intermediate"
profile): TLS 1.2 and 1.3 only, its cipher list, no compression, no
renegotiation, ALPN.  A connection starts on the default certificate's
context (or on one with no certificate, when none is set: then a client
that names no known domain fails its handshake); the servername callback
moves it to the context of the certificate that covers the name.

L{SNIServer.update} swaps the whole set at once (SIGHUP): new handshakes
use the new certificates, open connections keep the ones they were made
with.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, cast

from OpenSSL import SSL
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (IHandshakeListener, IOpenSSLServerConnectionCreator,
                                         IStreamServerEndpoint)
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from .certs import CertificateSet, LoadedCertificate
from .config import is_tls_listen
from .http import ClientLimits, Sweeper

__all__ = ["SNIServer", "ByALPN", "server_endpoint", "INTERMEDIATE_CIPHERS"]

# https://ssl-config.mozilla.org/ "intermediate" (guidelines 5.7), for TLS
# 1.2; TLS 1.3 uses OpenSSL's default suites, which are the same three.
# The DHE suites apply only where the library picks its own group.
INTERMEDIATE_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    b"DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)
HTTP11 = b"http/1.1"
H2 = b"h2"


def _alpn_choice(protocols: Sequence[bytes]):
    def select(connection: SSL.Connection, offered: list[bytes]) -> Any:
        for proto in protocols:  # our preference
            if proto in offered:
                return proto
        return SSL.NO_OVERLAPPING_PROTOCOLS  # go on without ALPN

    return select


def make_context(cert: Optional[LoadedCertificate], protocols: Sequence[bytes],
                 servername: Any) -> SSL.Context:
    """One server context with the node's TLS settings and C{cert} (or none)."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION
                    | SSL.OP_SINGLE_ECDH_USE | SSL.OP_SINGLE_DH_USE)
    ctx.set_cipher_list(INTERMEDIATE_CIPHERS)
    # Idle keep-alive connections give their buffers back.
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    ctx.set_session_id(b"cdnpull")
    if cert is not None:
        ctx.use_certificate(cert.leaf)
        for extra in cert.chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(cert.key)
        ctx.check_privatekey()
    ctx.set_alpn_select_callback(_alpn_choice(protocols))
    ctx.set_tlsext_servername_callback(servername)
    return ctx


@implementer(IOpenSSLServerConnectionCreator)
class SNIServer:
    """
    Makes the OpenSSL connection of every accepted client connection.

    @param protocols: what ALPN offers, most preferred first.
    """

    def __init__(self, certificates: CertificateSet,
                 protocols: Sequence[bytes] = (HTTP11,)) -> None:
        self.protocols = tuple(protocols)
        self.update(certificates)

    def update(self, certificates: CertificateSet) -> None:
        """Use C{certificates} for every handshake from now on."""
        contexts = {id(c): make_context(c, self.protocols, self._servername)
                    for c in certificates.all()}
        if certificates.default is not None:
            first = contexts[id(certificates.default)]
        else:
            first = make_context(None, self.protocols, self._servername)
        # One assignment: a handshake sees the old state or the new, never a mix.
        self._state = (certificates, contexts, first)

    def _servername(self, connection: SSL.Connection) -> None:
        certificates, contexts, _ = self._state
        raw = connection.get_servername()
        try:
            name = raw.decode("ascii") if raw else None
        except UnicodeDecodeError:
            name = None
        cert = certificates.select(name)
        if cert is not None:
            ctx = contexts.get(id(cert))
            if ctx is not None and ctx is not connection.get_context():
                connection.set_context(ctx)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self._state[2], None)


class ByALPN(Factory):
    """
    The protocol factory of a C{tls:} listener: once the handshake is done,
    each connection is handed to the HTTP/2 connection when the client
    chose C{h2}, else to the site's own HTTP/1.1 protocol.  A client that
    does not finish its handshake within C{handshake_timeout} is dropped
    (the deadlines are checked by one L{Sweeper}, as the HTTP/1.1 engine's
    are, instead of a timer per connection: up to one sweep late).

    @param h2: a function of the address making an HTTP/2 connection, or
        None (no HTTP/2).
    """

    noisy = False

    def __init__(self, site: Any, clock: Any, handshake_timeout: float,
                 h2: Optional[Any] = None) -> None:
        self.site = site
        self.clock = clock
        self.handshake_timeout = handshake_timeout
        self.h2 = h2
        self.sweeper = Sweeper(clock, ClientLimits(header_timeout=handshake_timeout,
                                                   idle_timeout=handshake_timeout))

    def doStart(self) -> None:
        self.site.doStart()

    def doStop(self) -> None:
        self.site.doStop()

    def buildProtocol(self, addr: Any) -> "_Negotiating":
        return _Negotiating(self, addr)


@implementer(IHandshakeListener)
class _Negotiating(Protocol):
    inner: Any = None

    def __init__(self, factory: ByALPN, addr: Any) -> None:
        self.factory = factory
        self.addr = addr
        self._since = 0.0

    def connectionMade(self) -> None:
        self._since = self.factory.clock.seconds()
        self.factory.sweeper.add(self)

    def _tick(self, now: float) -> None:
        """The sweeper's check: too slow a handshake is cut off."""
        if now - self._since >= self.factory.handshake_timeout:
            self.factory.sweeper.discard(self)
            cast(ITCPTransport, self.transport).abortConnection()

    def handshakeCompleted(self) -> None:
        self.factory.sweeper.discard(self)
        chosen = getattr(self.transport, "negotiatedProtocol", None)
        if chosen == H2 and self.factory.h2 is not None:
            self.inner = self.factory.h2(self.addr)
        else:
            self.inner = self.factory.site.buildProtocol(self.addr)
        self.inner.makeConnection(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self.inner.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.sweeper.discard(self)
        if self.inner is not None:
            self.inner.connectionLost(reason)


@implementer(IStreamServerEndpoint)
class _TLSEndpoint:
    def __init__(self, tcp: Any, creator: SNIServer, clock: Any) -> None:
        self._tcp = tcp
        self._creator = creator
        self._clock = clock

    def listen(self, factory: Any) -> Any:
        return self._tcp.listen(TLSMemoryBIOFactory(self._creator, False, factory, self._clock))


def server_endpoint(reactor: Any, description: str, creator: Optional[SNIServer]) -> Any:
    """
    The endpoint of a client listener: C{tls:...} is TCP with L{SNIServer}
    on top (the same options as C{tcp:}); anything else is Twisted's own
    endpoint string.
    """
    if is_tls_listen(description):
        if creator is None:
            raise ValueError(f"{description}: no certificates")
        return _TLSEndpoint(serverFromString(reactor, "tcp:" + description[len("tls:"):]),
                            creator, reactor)
    return serverFromString(reactor, description)
