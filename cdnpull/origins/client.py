"""
One origin request: a chosen address, a pooled persistent connection, TLS with
SNI, a connect timeout and a time-to-first-byte timeout.  Failures come back
as the L{cdnpull.errors} types that the failover chain decides on.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Optional, Union

from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseFailed,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from ..compat import HookedConnectionPool, cancel_with, canceller_of
from ..config import Address
from ..errors import ClientBodyInterrupted, ConnectFailed, FirstByteTimeout, NoResponse, TLSFailed
from ..http.client import OriginPool
from ..upload import BodyInterrupted
from .framing import InterimHeaders, InvalidOriginResponse, StrictClientProtocol
from .tls import TLSPolicy

__all__ = ["OriginClient", "describe_connect_failure", "tcp_endpoint"]


def describe_connect_failure(failure: Failure, connect_timeout: float) -> str:
    """A short reason for the block list: C{connect refused}, ..."""
    if failure.check(ierror.ConnectionRefusedError):
        return "connect refused"
    if failure.check(ierror.TimeoutError, ierror.TCPTimedOutError):
        return f"connect timeout after {connect_timeout:g} s"
    if failure.check(ierror.NoRouteError):
        return "no route to host"
    return f"connect failed: {failure.getErrorMessage()}"


def _tls_failure(failure: Failure, server_name: str) -> Optional[str]:
    """The TLS error inside a failed response, if that is what it was."""
    from OpenSSL import SSL
    from service_identity import VerificationError

    reasons = getattr(failure.value, "reasons", None) or []
    for r in reasons:
        if isinstance(r, Failure) and r.check(VerificationError):
            return f"TLS certificate refused: not valid for {server_name}"
        if isinstance(r, Failure) and r.check(SSL.Error):
            detail = r.getErrorMessage()
            if "certificate" in detail.lower() or "verify" in detail.lower():
                return f"TLS certificate refused: {detail}"
            return f"TLS handshake failed: {detail}"
        if isinstance(r, Failure) and r.check(ierror.VerifyError, ierror.CertificateError):
            return f"TLS certificate refused: {r.getErrorMessage()}"
    return None


def tcp_endpoint(reactor: object, address: Address, timeout: float) -> IStreamClientEndpoint:
    """A TCP endpoint to one origin address (IPv4 or IPv6 literal)."""
    kind = TCP6ClientEndpoint if address.is_ipv6 else TCP4ClientEndpoint
    return kind(reactor, address.host, address.port, timeout=timeout)


class _Attempt:
    """
    One try at an origin address: what happened to its connection (for
    telling a first-byte timeout's kind), its timer, and the failure it
    ended with in the terms of L{cdnpull.errors}.  It is also the endpoint
    of a plain-HTTP try, made into a TCP endpoint only when no pooled
    connection is idle (most tries reuse one).
    """

    __slots__ = ("reactor", "address", "server_name", "connect_timeout", "first_byte_timeout",
                 "connecting", "connected", "timed_out", "timer", "d", "canceller")

    def __init__(self, reactor: Any, address: Address, server_name: str, connect_timeout: float,
                 first_byte_timeout: float) -> None:
        self.reactor = reactor
        self.address = address
        self.server_name = server_name
        self.connect_timeout = connect_timeout
        self.first_byte_timeout = first_byte_timeout
        self.connecting = False
        self.connected = False
        self.timed_out = False
        self.timer: Any = None
        self.d: Any = None
        self.canceller: Any = None

    def connect(self, factory: Any) -> Deferred:
        return tcp_endpoint(self.reactor, self.address, self.connect_timeout).connect(factory)

    def watch(self, d: Deferred, fresh: bool = False) -> Deferred:
        """
        C{d} (the try's answer) under the first-byte timeout, its failures
        classified.  C{fresh}: C{d} may be called before the answer (waiting
        on another Deferred, as Agent's is once connected): the answer comes
        on a new Deferred that is not, so that a cancel always reaches its
        canceller (L{cdnpull.compat.before_cancel}).
        """
        self.d = d
        self.timer = self.reactor.callLater(self.first_byte_timeout, self._time_out)
        d.addBoth(self._classify)
        if not fresh:
            # The caller may put a hook before d's canceller (the failover
            # chain's "the client left"): the timeout is not that, and
            # cancels with the canceller d has now.
            self.canceller = canceller_of(d)
            return d
        out: Deferred = Deferred(lambda _: d.cancel())
        d.chainDeferred(out)
        return out

    def _time_out(self) -> None:
        self.timed_out = True
        if self.canceller is not None:
            cancel_with(self.d, self.canceller)
        else:
            self.d.cancel()

    def _classify(self, result: Any) -> Any:
        timer = self.timer
        if timer.active():
            timer.cancel()
        if not isinstance(result, Failure):
            return result
        address = self.address
        if self.timed_out:
            if self.connecting and not self.connected:
                raise FirstByteTimeout(address, f"no connection within {self.first_byte_timeout:g} s")
            raise FirstByteTimeout(address, f"no response within {self.first_byte_timeout:g} s")
        if result.check(ierror.ConnectError):
            raise ConnectFailed(address, describe_connect_failure(result, self.connect_timeout))
        reasons = getattr(result.value, "reasons", None) or []
        if result.check(RequestGenerationFailed) and any(
                isinstance(r, Failure) and r.check(BodyInterrupted) for r in reasons):
            raise ClientBodyInterrupted()
        if result.check(ResponseFailed, RequestTransmissionFailed):
            for r in reasons:
                if isinstance(r, Failure) and r.check(InvalidOriginResponse):
                    raise NoResponse(address, f"invalid response: {r.getErrorMessage()}")
            tls = _tls_failure(result, self.server_name)
            if tls:
                raise TLSFailed(address, tls)
            inner = [r.getErrorMessage() for r in reasons if isinstance(r, Failure)]
            raise NoResponse(address, "connection lost before a response" +
                             (f" ({'; '.join(inner)})" if inner else ""))
        return result


@implementer(IStreamClientEndpoint)
class _TrackingEndpoint:
    def __init__(self, inner: IStreamClientEndpoint, attempt: _Attempt) -> None:
        self._inner = inner
        self._attempt = attempt

    def connect(self, factory):
        self._attempt.connecting = True

        def connected(proto):
            self._attempt.connected = True
            return proto

        return self._inner.connect(factory).addCallback(connected)


@implementer(IAgentEndpointFactory)
class _AddressEndpoints:
    """Endpoints to the one chosen address, whatever the URI says."""

    def __init__(self, reactor: object, attempt: _Attempt, address: Address,
                 creator: Any, connect_timeout: float) -> None:
        self._reactor = reactor
        self._attempt = attempt
        self._address = address
        self._creator = creator
        self._connect_timeout = connect_timeout

    def endpointForURI(self, uri):
        endpoint = tcp_endpoint(self._reactor, self._address, self._connect_timeout)
        return _TrackingEndpoint(wrapClientTLS(self._creator, endpoint), self._attempt)


class _QuietPool(HookedConnectionPool):
    """
    A pool whose connections read responses strictly (framing.py) and whose
    connection factory does not log "Starting factory" for every new origin
    connection.
    """

    protocol = StrictClientProtocol

    # Set when the pool is dropped from the client (a client-chosen name
    # that aged out): connections still in use are closed when they finish
    # instead of being kept.
    retired = False

    def keep(self, connection: Any) -> bool:
        if self.retired:
            connection.transport.loseConnection()
            return False
        return True

    def idle(self) -> bool:
        return not self.idle_connections()


class OriginClient:
    """
    Sends requests to origin addresses over pooled persistent connections.

    Plain HTTP connections share one pool (keyed by address and port); TLS
    connections get one pool and one connection creator (L{TLSPolicy}) per
    (server name, verify), so a connection set up for one name is never
    reused for another.

    A server name chosen by a client (a wildcard domain sends the client's
    name) must not let clients grow the node's state: that TLS state (pool
    and creator) lives in a small LRU of C{max_client_names} names, keeps
    idle connections for C{client_name_idle} seconds, and a name unused for
    that long is dropped with its pool.
    """

    def __init__(self, reactor, tls: Optional[TLSPolicy] = None,
                 max_per_origin: int = 64, idle_timeout: float = 60.0,
                 max_client_names: int = 64, client_name_idle: float = 15.0) -> None:
        self.reactor = reactor
        self.tls = tls if tls is not None else TLSPolicy()
        self._max = max_per_origin
        self._idle = idle_timeout
        # (server name, verify) -> (pool, creator): the configured names.
        self._pools: dict = {}
        # (server name, verify) -> (pool, creator, last used), for names
        # chosen by clients, least recently used first.
        self._client_pools: OrderedDict = OrderedDict()
        self.max_client_names = max_client_names
        self.client_name_idle = client_name_idle
        self._http = OriginPool(reactor, max_per_origin, idle_timeout)

    def _new_pool(self, idle: float) -> "_QuietPool":
        pool = _QuietPool(self.reactor, persistent=True)
        pool.maxPersistentPerHost = self._max
        pool.cachedConnectionTimeout = idle  # type: ignore[assignment]  # seconds, any float
        return pool

    def _tls_state(self, server_name: str, verify: bool,
                   client_name: bool = False) -> tuple:
        """(pool, connection creator) of a TLS server name (plain http goes through cdnpull.http.client)."""
        key = (server_name, verify)
        if client_name:
            return self._client_state(key)
        state = self._pools.get(key)
        if state is None:
            state = self._pools[key] = (self._new_pool(self._idle), self.tls.creator(*key))
        return state

    def _client_state(self, key: tuple) -> tuple:
        now = self.reactor.seconds()
        states = self._client_pools
        found = states.pop(key, None)
        if found is not None:
            pool, creator, _ = found
        else:
            pool, creator = self._new_pool(self.client_name_idle), self.tls.creator(*key)
        # Names unused for a while go (their pools are idle by then), and the
        # least recently used beyond the bound.
        while states:
            oldest_key, (oldest, _, used) = next(iter(states.items()))
            if len(states) < self.max_client_names and not (
                    now - used > self.client_name_idle and oldest.idle()):
                break
            del states[oldest_key]
            self._retire(oldest)
        states[key] = (pool, creator, now)
        return pool, creator

    def _retire(self, pool: "_QuietPool") -> None:
        pool.retired = True
        pool.closeCachedConnections().addErrback(lambda f: None)

    @property
    def client_names(self) -> list:
        """The client-chosen server names with live state, oldest first."""
        return [name for name, _ in self._client_pools]

    def request(
        self,
        *,
        address: Address,
        scheme: str,
        server_name: str,
        method: bytes,
        target: bytes,
        headers: Union[Headers, bytes],
        body: Optional[IBodyProducer] = None,
        connect_timeout: float,
        first_byte_timeout: float,
        verify: bool = True,
        client_name: bool = False,
        on_interim: Optional[Callable[[int, bytes, list], None]] = None,
    ) -> "Deferred[IResponse]":
        """
        Send one request to C{address} and fire with the response once its
        headers have arrived.

        @param target: the origin-form request target (path and query).
        @param headers: the complete request headers, including Host (for
            plain HTTP they may come as header lines, C{b"Name: value\\r\\n"}
            each).
        @raise ConnectFailed: nothing was sent; the address is unreachable.
        @raise NoResponse: the connection broke before any response.
        @raise FirstByteTimeout: no response within C{first_byte_timeout}.
        @param client_name: C{server_name} was chosen by the client (a
            wildcard domain): its state is bounded (see the class).
        @param on_interim: called with (status, reason, [(name, value)]) for
            each interim (1xx) answer before the final one.
        @return: a Deferred not called before the answer or the failure (a
            hook on its canceller always runs).
        """
        attempt = _Attempt(self.reactor, address, server_name, connect_timeout, first_byte_timeout)
        if scheme == "http":
            # Plain HTTP: cdnpull's own client on llhttp (cdnpull/http/client.py).
            # (The attempt is the endpoint: used only when no pooled connection is idle.)
            d = self._http.request(attempt, address, method, target, headers, body, attempt,
                                   on_interim)
        else:
            assert isinstance(headers, Headers), "header lines go over plain HTTP only"
            pool, creator = self._tls_state(server_name, verify, client_name)
            factory = _AddressEndpoints(self.reactor, attempt, address, creator, connect_timeout)
            agent = Agent.usingEndpointFactory(self.reactor, factory, pool=pool)
            host = f"[{address.host}]" if address.is_ipv6 else address.host
            url = f"{scheme}://{host}:{address.port}".encode("ascii") + target
            if on_interim is not None:
                # The headers object travels to the connection's protocol
                # unchanged (it has Host), so it carries the callback there.
                headers = InterimHeaders(dict(headers.getAllRawHeaders()), on_interim)
            return attempt.watch(agent.request(method, url, headers, body), fresh=True)
        return attempt.watch(d)

    def close(self, grace: float = 1.0) -> Deferred:
        """
        Close every pooled connection (on shutdown).  A TLS peer that does not
        answer our close_notify within C{grace} seconds is cut off, so that a
        stuck origin never holds up shutdown.
        """
        self._http.close()
        pools = [state[0] for state in (*self._pools.values(), *self._client_pools.values())]
        self._pools.clear()
        self._client_pools.clear()
        if not pools:
            return succeed(None)
        protocols = [proto for p in pools for proto in p.idle_connections()]
        d = DeferredList([p.closeCachedConnections() for p in pools])
        timer = self.reactor.callLater(grace, _abort_all, protocols)
        d.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])
        return d


def _abort_all(protocols: list) -> None:
    for proto in protocols:
        transport = getattr(proto, "transport", None)
        if transport is not None:
            try:
                transport.abortConnection()
            except Exception:  # already gone
                pass
