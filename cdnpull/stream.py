"""
Moving an origin body to the client with flow control: the origin transport
is registered as the client request's push producer, so a slow client pauses
the origin instead of making cdnpull buffer the body.  A body cut short by the
origin aborts the client connection, so the client can tell it is short.
"""

from __future__ import annotations

from typing import Optional, cast

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import PotentialDataLoss, ResponseDone
from twisted.web.server import Request
from zope.interface import implementer

__all__ = ["BodyRelay", "Discard", "body_loss", "end_truncated"]


def body_loss(reason: Failure) -> str:
    """Why an origin body ended early, in a few words (for the log)."""
    reasons = getattr(reason.value, "reasons", None) or [reason]
    for r in reasons:
        if isinstance(r, Failure) and r.check(ConnectionDone):
            return "the origin closed the connection"
        if isinstance(r, Failure) and r.check(ConnectionLost):
            return "the connection to the origin was lost"
    return reason.getErrorMessage()


@implementer(IPushProducer)
class _OwnStop:
    """
    The origin transport as the client request's producer, noting when
    cdnpull stops it (the client went away): the origin did not cut that
    body short, so it is not logged as if it had.
    """

    def __init__(self, transport: object) -> None:
        self.transport = transport
        self.stopped = False

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()  # type: ignore[attr-defined]

    def stopProducing(self) -> None:
        self.stopped = True
        self.transport.stopProducing()  # type: ignore[attr-defined]


class Discard(Protocol):
    """
    Receives a body nobody wants.  By default reads it to its end (a 304, a
    HEAD answer, a stale-if-error 5xx: the connection can go back to the
    pool); with C{stop=True} stops the origin at once (the client is gone).
    """

    def __init__(self, stop: bool = False) -> None:
        self.stop = stop

    def makeConnection(self, transport: object) -> None:
        if self.stop and transport is not None:
            transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        pass


def end_truncated(request: Request) -> None:
    """
    End a client response whose body was cut short so that the client can
    tell: when the framing shows it (a Content-Length not reached, or a
    chunked body without its last chunk) what was sent is flushed and the
    connection closed; a body delimited only by the close is aborted (RST).
    """
    transport: Optional[object] = getattr(request, "transport", None)
    if transport is None:
        channel = getattr(request, "channel", None)
        if channel is not None:  # an HTTP/2 stream: RST_STREAM tells the client
            channel.abortConnection()
        return
    framed = bool(getattr(request, "chunked", False)) or request.responseHeaders.hasHeader(
        b"content-length")
    channel = getattr(request, "channel", None)
    if framed and channel is not None:
        channel.loseConnection()  # flushes; aborts after its own timeout
    else:
        transport.abortConnection()  # type: ignore[attr-defined]


class BodyRelay(Protocol):
    """
    Receives an origin body (C{IResponse.deliverBody}) and writes it to the
    client request.

    @ivar done: fires with C{True} when the whole body was relayed, C{False}
        when it was cut short (the client connection has then been aborted).
    """

    log = Logger()

    def __init__(self, request: Request) -> None:
        self.request = request
        self.done: Deferred = Deferred()
        self.received = 0
        self._registered = False
        self._client_gone = False
        self._producer: Optional[_OwnStop] = None

    def connectionMade(self) -> None:
        # self.transport is the origin's transport proxy (IPushProducer).
        if self.transport is not None and not self._client_gone:
            self._producer = _OwnStop(self.transport)
            self.request.registerProducer(self._producer, True)
            self._registered = True

    def dataReceived(self, data: bytes) -> None:
        if self._client_gone:
            return
        self.received += len(data)
        self.request.write(data)

    def client_gone(self) -> None:
        """The client disconnected: stop reading from the origin."""
        self._client_gone = True
        if self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._registered:
            self._registered = False
            if getattr(self.request, "channel", None) is not None:  # else the client is gone
                self.request.unregisterProducer()
        complete = bool(reason.check(ResponseDone, PotentialDataLoss))
        ours = self._client_gone or (self._producer is not None and self._producer.stopped)
        if not complete and not ours:
            self.log.warn(
                "origin body for {uri} cut short after {received} bytes: {reason}",
                uri=self.request.uri.decode("latin-1"),
                received=self.received,
                reason=body_loss(reason),
            )
            end_truncated(self.request)
        if not self.done.called:
            self.done.callback(complete and not self._client_gone)
