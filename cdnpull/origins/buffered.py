"""
Reading a small origin answer whole, so that it can be looked at (a bucket's
S3 error code) or kept while another origin is asked (the failover chain
keeps a primary's error answer while it asks the standby).
"""

from __future__ import annotations

from typing import Optional

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.iweb import IResponse, UNKNOWN_LENGTH
from zope.interface import implementer

__all__ = ["BufferedResponse", "read_whole"]


@implementer(IResponse)
class BufferedResponse:
    """A small origin answer read whole, replayable through C{deliverBody}."""

    def __init__(self, response: IResponse, body: bytes) -> None:
        self.version = response.version
        self.code = response.code
        self.phrase = response.phrase
        self.headers = response.headers
        self.length = len(body) if response.length is not UNKNOWN_LENGTH else UNKNOWN_LENGTH
        self.request = response.request
        self.previousResponse: Optional[IResponse] = None
        self.body = body

    def deliverBody(self, protocol: Protocol) -> None:
        protocol.makeConnection(None)
        if self.body:
            protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response


class _Collector(Protocol):
    """Reads a body up to a cap; beyond it, drops the connection."""

    def __init__(self, cap: int, done: "Deferred[Optional[bytes]]") -> None:
        self.cap = cap
        self.done = done
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.cap:
            self.parts = []
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.done.called:
            return
        if reason is not None and reason.check(ResponseDone) and self.size <= self.cap:
            self.done.callback(b"".join(self.parts))
        else:
            self.done.callback(None)


def read_whole(response: IResponse, cap: int) -> "Deferred[Optional[BufferedResponse]]":
    """
    The answer with its body read whole, or None when the body is larger than
    C{cap} bytes or breaks off.  Cancelling stops the origin.
    """
    def cancel(d: Deferred) -> None:
        if collector.transport is not None:
            collector.transport.stopProducing()  # type: ignore[attr-defined]

    done: "Deferred[Optional[bytes]]" = Deferred(cancel)
    collector = _Collector(cap, done)
    response.deliverBody(collector)

    def wrap(body: Optional[bytes]) -> Optional[BufferedResponse]:
        return None if body is None else BufferedResponse(response, body)

    return done.addCallback(wrap)
