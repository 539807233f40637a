"""
Request bodies streamed to the origin while they arrive (methods other than
GET and HEAD).

The client connection hands body bytes to a L{BodyPipe}, the origin request
reads them from it (an C{IBodyProducer}).  Back-pressure both ways: the
client's transport is paused while the origin connection is backed up, and
while the origin is not connected yet once L{BUFFER_LIMIT} bytes are waiting.
Failover never resends a body that has started: a pipe can be started once.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

__all__ = ["BodyPipe", "BUFFER_LIMIT", "BodyInterrupted"]

BUFFER_LIMIT = 256 * 1024


class BodyInterrupted(Exception):
    """The client stopped sending its request body."""


@implementer(IBodyProducer)
class BodyPipe:
    """
    @param transport: the client connection's transport (paused and resumed
        for flow control).
    @param length: the body's Content-Length, or None for a chunked body.
    """

    def __init__(self, transport: Any, length: Optional[int]) -> None:
        self.transport = transport
        self.length = UNKNOWN_LENGTH if length is None else length
        self.received = 0
        self.done = False
        self.started = False
        self.stopped = False
        self.failure: Optional[Failure] = None
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._consumer: Any = None
        self._finished: Optional[Deferred] = None
        self._paused_client = False

    # -- the client side ----------------------------------------------------

    def write(self, data: bytes) -> None:
        self.received += len(data)
        if self.stopped:
            return
        if self._consumer is not None:
            self._consumer.write(data)
            return
        self._buffer.append(data)
        self._buffered += len(data)
        if self._buffered > BUFFER_LIMIT:
            self._pause_client()

    def finish(self) -> None:
        self.done = True
        if self._finished is not None and not self._finished.called:
            self._finished.callback(None)

    def fail(self, reason: Any = None) -> None:
        """The client went away before its body was complete."""
        if self.done:
            return
        self.failure = reason if isinstance(reason, Failure) else Failure(
            BodyInterrupted("client stopped sending the request body"))
        if self._finished is not None and not self._finished.called:
            self._finished.errback(self.failure)

    # -- the origin side (IBodyProducer) ---------------------------------------

    def startProducing(self, consumer: Any) -> Deferred:
        if self.started:
            raise RuntimeError("a streamed request body can be sent once")
        self.started = True
        self._consumer = consumer
        buffered, self._buffer, self._buffered = self._buffer, [], 0
        for data in buffered:
            consumer.write(data)
        self._resume_client()
        if self.done:
            return succeed(None)
        if self.failure is not None:
            return fail(self.failure)
        self._finished = Deferred()
        return self._finished

    def pauseProducing(self) -> None:
        self._pause_client()

    def resumeProducing(self) -> None:
        self._resume_client()

    def stopProducing(self) -> None:
        # IBodyProducer: after this, the Deferred of startProducing must
        # never fire (the origin request is over: it answered, or failed).
        self.stopped = True
        self._finished = None
        self._resume_client()

    def _pause_client(self) -> None:
        if not self._paused_client and self.transport is not None:
            self._paused_client = True
            self.transport.pauseProducing()

    def _resume_client(self) -> None:
        if self._paused_client and self.transport is not None:
            self._paused_client = False
            self.transport.resumeProducing()
