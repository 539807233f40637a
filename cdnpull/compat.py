"""
Twisted's private names that cdnpull uses, in one place, each behind a
public name of ours: the origin client's hooks, the listeners', and the
client engine's (cdnpull/http/).  The one exception is HTTP/2
(cdnpull/http2.py), which extends H2Connection's request hooks.

Twisted does not promise these names across releases, so pyproject.toml
bounds Twisted above, and tests/test_compat.py (with the in-memory tests of
tests/test_framing.py and tests/test_http_server.py) drives each hook without
a network: a Twisted release that moves one fails the unit suite, not a node
in production.
"""

from __future__ import annotations

import errno
import types
from typing import Any, Callable, Optional

from twisted.internet import tcp
from twisted.internet.defer import CancelledError, Deferred
from twisted.python import log as _log
from twisted.python.failure import Failure
from twisted.web import client as _client
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.http_headers import Headers, _nameEncoder

__all__ = [
    "HookedClientProtocol", "HookedConnectionPool", "request_gone", "raise_listen_errors",
    "stop_rereading_resolv_conf", "eager_write", "fill_headers", "before_cancel",
    "lean_dispatch", "canceller_of", "cancel_with",
]


class HookedClientProtocol(HTTP11ClientProtocol):
    """
    Twisted's HTTP/1.1 client protocol (C{twisted.web._newclient}) with the
    private parts the strict origin framing needs, under public names.
    """

    @property
    def awaiting_response(self) -> bool:
        """A request was sent and its response is not complete yet."""
        return self._parser is not None

    def give_up(self, reason: Failure) -> None:
        """Fail the outstanding request with C{reason} (the connection stays as it is)."""
        self._giveUp(reason)

    def response_finishing(self) -> None:
        """A response is complete; called before the connection may go back to the pool."""

    def response_finished(self, rest: bytes) -> None:
        """Called after L{response_finishing}, with the bytes that followed the response."""

    def _finishResponse_WAITING(self, rest: bytes) -> None:
        self.response_finishing()
        super()._finishResponse_WAITING(rest)
        self.response_finished(rest)


class HookedConnectionPool(_client.HTTPConnectionPool):
    """
    Twisted's connection pool, whose connections are made by C{protocol}
    (called with the pool's quiescent callback) through a factory that does
    not log every new connection, with public names for what the pool keeps
    private.
    """

    protocol: Callable[[Callable[[Any], None]], HTTP11ClientProtocol] = HTTP11ClientProtocol

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        make = cls.protocol

        class Factory(_client._HTTP11ClientFactory):
            noisy = False

            def buildProtocol(self, addr: Any) -> HTTP11ClientProtocol:
                return make(self._quiescentCallback)

        cls._factory = Factory

    def keep(self, connection: HTTP11ClientProtocol) -> bool:
        """Whether a connection whose response is done goes back to the pool."""
        return True

    def _putConnection(self, key: Any, connection: HTTP11ClientProtocol) -> None:
        if self.keep(connection):
            super()._putConnection(key, connection)

    def idle_connections(self) -> list[HTTP11ClientProtocol]:
        """The connections waiting in the pool for a request."""
        return [p for protos in self._connections.values() for p in protos]


def request_gone(request: object) -> bool:
    """Whether a twisted.web request's client connection is gone."""
    return bool(getattr(request, "_disconnected", False))


def before_cancel(d: Deferred, hook: Callable[[], None]) -> Deferred:
    """
    Call C{hook} when C{d} is cancelled, before C{d}'s own canceller (the
    same as chaining C{d} to a new Deferred whose canceller calls C{hook}
    and cancels C{d}, without that Deferred).  Returns C{d}.
    """
    canceller = d._canceller

    def cancel(cancelled: Deferred) -> None:
        hook()
        if canceller is not None:
            canceller(cancelled)

    d._canceller = cancel
    return d


def canceller_of(d: Deferred) -> Optional[Callable[[Deferred], None]]:
    """C{d}'s canceller as it is now (a hook may be put before it later: L{before_cancel})."""
    return d._canceller


def cancel_with(d: Deferred, canceller: Callable[[Deferred], None]) -> None:
    """
    Cancel C{d} as C{Deferred.cancel} does, through C{canceller} (what
    L{canceller_of} said before any hook was put before it): the hook is
    not told.
    """
    if d.called:
        if isinstance(d.result, Deferred):
            d.result.cancel()
        return
    canceller(d)
    if not d.called:
        d.errback(Failure(CancelledError()))


def raise_listen_errors(service: Any) -> None:
    """
    Make a C{StreamServerEndpointService} raise a listening failure from
    C{privilegedStartService} instead of logging it later.
    """
    service._raiseSynchronously = True


def stop_rereading_resolv_conf(resolver: object) -> None:
    """Cancel the timer on which C{twisted.names.client.Resolver} re-reads resolv.conf."""
    call: Optional[Any] = getattr(resolver, "_parseCall", None)
    if call is not None and call.active():
        call.cancel()


# -- the client connection (cdnpull/http/) ------------------------------------
# Writing an answer straight to the socket when nothing is waiting to be
# sent, as asyncio's transports do, instead of buffering it and asking epoll
# when the socket is writable (two epoll_ctl calls and one more loop turn per
# answer); any other transport (TLS, tests' StringTransport), or anything
# pending, goes through transport.write as usual.  And filling a twisted.web
# Headers from parsed request headers without re-checking what llhttp has
# checked already.


def fill_headers(headers: Headers, fields: dict) -> None:
    """
    Put C{fields} (lower-case name -> [values], as llhttp parsed them: names
    are tokens, values hold no CR, LF or NUL) into an empty C{headers}.
    """
    raw = headers._rawHeaders
    encode = _nameEncoder.encode
    for name, values in fields.items():
        raw[encode(name)] = values


def copy_headers(headers: Headers) -> Headers:
    """
    A copy of C{headers} (C{Headers.copy} checks every value again, which
    the values of a C{Headers} have passed already).
    """
    out = Headers()
    out._rawHeaders = {name: list(values) for name, values in headers._rawHeaders.items()}
    return out


def eager_write(transport: Any, data: bytes, body: bytes = b"") -> None:
    """
    Write C{data} then C{body} (a large body is not copied into one buffer
    with its head: both go to the socket in one C{sendmsg}).
    """
    kind = type(transport)
    if ((kind is tcp.Server or kind is tcp.Client) and transport.connected
            and not transport.TLS and not transport.disconnecting
            and not transport._writeDisconnected and not transport._tempDataLen
            and transport.offset == len(transport.dataBuffer)):
        try:
            if body:
                sent = transport.socket.sendmsg([data, body])
            else:
                sent = transport.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = 0  # Twisted's own write finds the error and closes
        if sent == len(data) + len(body):
            return
        if sent >= len(data):
            transport.write(memoryview(body)[sent - len(data):].tobytes())
            return
        data = data[sent:]
    transport.write(data)
    if body:
        transport.write(body)


# -- the reactor's dispatch of socket events -----------------------------------
# twisted.internet.epollreactor hands every socket event to its selectable
# through twisted.python.log.callWithLogger, which pushes a log context (the
# selectable's logPrefix() as the legacy "system" of what it logs) and pops
# it again: two of these per origin pull, and a tenth of the node's own
# Python time on a miss.  Everything cdnpull logs goes through
# twisted.logger with its own namespace and fields and never reads that
# context; only legacy log.msg/log.err calls inside Twisted lose their
# "[Protocol,n,ip]" prefix (they show "[-]").


def lean_dispatch(reactor: Any) -> bool:
    """
    Let an epoll C{reactor} dispatch socket events without the per-event
    legacy log context (see above); what the selectable does with the event,
    and how a failing one is logged and disconnected, is Twisted's own
    C{_doReadOrWrite}.  Returns whether it did: only a reactor that is
    exactly Twisted's C{EPollReactor}, whose C{doPoll} is one this copies
    (L{KNOWN_POLLS}), is changed; another reactor, or a Twisted release
    whose poll differs, is left as it is (correct, only slower).
    """
    try:
        from twisted.internet.epollreactor import EPollReactor
    except ImportError:  # pragma: no cover - not Linux
        return False
    if type(reactor) is not EPollReactor or type(reactor).doIteration is not EPollReactor.doPoll:
        return False
    if poll_fingerprint() not in KNOWN_POLLS:
        return False
    setattr(reactor, "doIteration", types.MethodType(_lean_poll, reactor))
    return True


# The fingerprints (poll_fingerprint) of EPollReactor.doPoll in the Twisted
# releases _lean_poll was compared with: 24.7.0, 24.10.0, 24.11.0, 25.5.0
# and 26.10.0 share this one.
KNOWN_POLLS = frozenset({"6bf79e90073fbdf3ef5a685c4e3b94909ad79a37756b50005112bf8d4e531d46"})


def poll_fingerprint() -> Optional[str]:
    """
    The SHA-256 of the syntax tree of the installed
    C{EPollReactor.doPoll} (its code and docstring, not its layout), or
    None when its source cannot be read.
    """
    import ast
    import hashlib
    import inspect
    import sys

    try:
        from twisted.internet.epollreactor import EPollReactor

        source = inspect.getsource(sys.modules[EPollReactor.__module__])
    except (ImportError, OSError, TypeError):
        return None
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == "EPollReactor":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "doPoll":
                    return hashlib.sha256(ast.dump(item).encode()).hexdigest()
    return None


def _lean_poll(self: Any, timeout: Optional[float]) -> None:
    """C{EPollReactor.doPoll} without C{log.callWithLogger} around each event."""
    if timeout is None:
        timeout = -1  # wait indefinitely
    try:
        events = self._poller.poll(timeout, len(self._selectables))
    except OSError as err:
        if err.errno == errno.EINTR:
            return
        raise
    dispatch = self._doReadOrWrite
    selectables = self._selectables
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is not None:
            try:
                dispatch(selectable, fd, event)
            except KeyboardInterrupt:
                raise
            except BaseException:
                # As callWithLogger: what escapes _doReadOrWrite (a protocol's
                # connectionLost raising, called from _disconnectSelectable) is
                # logged, and the poll's other events are still handled.
                _log.err()
