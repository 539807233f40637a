"""
Bodies that several clients read at once.

A L{Fill} is one origin answer being received: every client that waits for
the same key reads it as it arrives (request collapsing), each at its own
pace through a L{Reader} (an C{IPushProducer} registered on its request).

 - While the answer is being stored, the fill keeps every byte (it is
   bounded by C{cache_max_object}) and never pauses the origin.
 - When it is not stored (too large, or not cacheable), bytes every reader
   has written are dropped and the origin is paused while the slowest
   reader is more than L{HIGH_WATER} bytes behind, so memory stays bounded
   whatever the clients do.
 - An answer cut short ends every reader's client connection with an abort,
   so clients can tell the body is short.

A L{StaticSource} serves a stored body through the same L{Reader}.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any, Callable, Optional, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import PotentialDataLoss, ResponseDone
from zope.interface import implementer

from ..compat import request_gone
from ..stream import body_loss, end_truncated

__all__ = ["Fill", "FillBudget", "Reader", "StaticSource", "HIGH_WATER", "LOW_WATER", "WRITE_SIZE"]

HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024
WRITE_SIZE = 64 * 1024


class FillBudget:
    """
    The bytes all answers being stored hold at once.  Each is bounded by
    C{cache_max_object}; this bounds their sum: past it, a fill stops
    storing and is streamed (and paced) like an answer that is not kept.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0


class StaticSource:
    """A complete body in memory."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.size = len(body)
        self.done = True
        self.failed: Optional[Failure] = None
        self.readers: set = set()

    def read(self, offset: int, limit: int) -> bytes:
        return self.body[offset:offset + limit]

    def progressed(self) -> None:
        pass

    def reader_gone(self, reader: "Reader") -> None:
        self.readers.discard(reader)


@implementer(IPushProducer)
class Reader:
    """
    Writes bytes C{first}..C{last} (inclusive; None: to the end) of a source
    to one client request, as fast as the client reads.

    @ivar done: fires with True when everything was written, False when the
        source failed (the client connection has then been aborted) or the
        client left.
    """

    def __init__(self, source: Any, request: Any, first: int = 0,
                 last: Optional[int] = None, finish: bool = True) -> None:
        self.source = source
        self.request = request
        self.offset = first
        self.last = last
        self.finish = finish
        self.paused = False
        self.stopped = False
        self.done: Deferred = Deferred()
        source.readers.add(self)
        request.registerProducer(self, True)

    # IPushProducer
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.pump()

    def stopProducing(self) -> None:
        self._end(False, abort=False)

    def client_gone(self) -> None:
        """The client disconnected (the edge tells us)."""
        self._end(False, abort=False)

    def pump(self) -> None:
        source = self.source
        while not self.paused and not self.stopped:
            end = source.size if self.last is None else min(source.size, self.last + 1)
            if self.offset < end:
                data = source.read(self.offset, min(WRITE_SIZE, end - self.offset))
                if not data:
                    # Let go before this reader came (it joined an answer
                    # already relayed): what it lacks cannot be sent.
                    self._end(False, abort=True)
                    return
                self.offset += len(data)
                self.request.write(data)
                source.progressed()
                continue
            wanted_end = self.last + 1 if self.last is not None else None
            if wanted_end is not None and self.offset >= wanted_end:
                self._end(True)
            elif source.done:
                if source.failed is not None:
                    self._end(False, abort=True)
                else:
                    self._end(True)
            return

    def _end(self, ok: bool, abort: bool = False) -> None:
        if self.stopped:
            return
        self.stopped = True
        self.source.reader_gone(self)
        try:
            self.request.unregisterProducer()
        except Exception:  # the request may be gone already
            pass
        if abort:
            end_truncated(self.request)
        elif ok and self.finish and not request_gone(self.request):
            self.request.finish()
        if not self.done.called:
            self.done.callback(ok)


class _FillProtocol(Protocol):
    def __init__(self, fill: "Fill") -> None:
        self.fill = fill

    def connectionMade(self) -> None:
        self.fill.origin_transport = self.transport
        if getattr(self.fill, "cancelled", False) and self.transport is not None:
            cast(IPushProducer, self.transport).stopProducing()

    def dataReceived(self, data: bytes) -> None:
        self.fill.feed(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.fill.finish(reason)


class Fill:
    """
    One origin answer, shared by the clients waiting for it.

    @ivar storing: every byte is kept so that the answer can be stored.
    @ivar on_complete: called with the fill when the body ended (stored or not).
    """

    log = Logger()

    def __init__(self, key: str, max_object: int, budget: Optional[FillBudget] = None) -> None:
        self.key = key
        self.max_object = max_object
        self.budget = budget
        self._held = 0  # bytes counted in the budget
        self.result: Any = None  # the PullResult, once headers are in
        # The body as received, chunk by chunk (no copies: a reader writes
        # the very bytes objects the origin connection delivered).
        self._chunks: list[bytes] = []
        self._starts: list[int] = []  # absolute offset of each chunk
        self._head = 0  # index of the first chunk still kept
        self.base = 0  # absolute offset of the first byte still kept
        self.size = 0
        self.done = False
        self.failed: Optional[Failure] = None
        self.complete = False  # ended cleanly with every byte
        self.storing = False
        self.readers: set = set()
        self.origin_transport: Any = None
        self.paused = False
        self.on_complete: Optional[Callable[["Fill"], None]] = None
        self.on_idle: Optional[Callable[["Fill"], None]] = None
        self.on_unstored: Optional[Callable[["Fill"], None]] = None

    def prepare(self, result: Any, storing: bool) -> None:
        """The answer's headers are in; readers may attach before the body flows."""
        self.result = result
        self.storing = storing

    def start(self) -> None:
        self.result.response.deliverBody(_FillProtocol(self))
        if not self.readers and not self.storing:
            self.cancel()

    # -- the origin side ---------------------------------------------------

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self._chunks.append(data)
        self._starts.append(self.size)
        self.size += len(data)
        if self.storing and self.size > self.max_object:
            self.log.info("cache: {key} is larger than {limit} bytes; streamed, not stored",
                          key=self.key, limit=self.max_object)
            self.stop_storing()
        elif self.storing and self.budget is not None:
            self._held += len(data)
            self.budget.used += len(data)
            if self.budget.used > self.budget.limit:
                self.log.warn("cache: answers being stored hold more than {limit} bytes; {key} "
                              "is streamed, not stored", limit=self.budget.limit, key=self.key)
                self.stop_storing()
        for reader in list(self.readers):
            reader.pump()
        self.progressed()

    def finish(self, reason: Failure) -> None:
        self.done = True
        if reason.check(ResponseDone):
            self.complete = True
        elif reason.check(PotentialDataLoss):
            # No length and the connection closed: maybe complete, never stored.
            self.complete = False
        else:
            self.failed = reason
            if not getattr(self, "cancelled", False):  # cancel() stopped it: not the origin
                self.log.warn("origin body for {key} cut short after {size} bytes: {why}",
                              key=self.key, size=self.size, why=body_loss(reason))
        if self.paused and self.origin_transport is not None:
            self.paused = False
        for reader in list(self.readers):
            reader.pump()
        if self.on_complete is not None:
            self.on_complete(self)
        self.release()  # stored (the store has its own bound) or dropped

    def stop_storing(self) -> None:
        self.storing = False
        self.release()
        if self.on_unstored is not None:
            self.on_unstored(self)  # later requests must not join a trimmed answer
        self.progressed()

    def release(self) -> None:
        """Give back what this fill held of the budget (idempotent)."""
        if self.budget is not None and self._held:
            self.budget.used -= self._held
            self._held = 0

    def body(self) -> bytes:
        assert self.base == 0
        return b"".join(self._chunks)

    # -- the reader side ---------------------------------------------------

    def read(self, offset: int, limit: int) -> bytes:
        i = bisect_right(self._starts, offset, lo=self._head) - 1
        chunk = self._chunks[i]
        start = offset - self._starts[i]
        if start == 0 and len(chunk) <= limit:
            return chunk
        return chunk[start:start + limit]

    def progressed(self) -> None:
        """Drop what every reader has written (when not storing) and pace the origin."""
        if self.storing:
            return
        low = min((r.offset for r in self.readers), default=self.size)
        chunks, starts = self._chunks, self._starts
        while self._head < len(chunks) and starts[self._head] + len(chunks[self._head]) <= low:
            chunks[self._head] = b""  # let it go
            self._head += 1
        if self._head > 256 and self._head * 2 > len(chunks):
            del chunks[:self._head], starts[:self._head]
            self._head = 0
        self.base = starts[self._head] if self._head < len(starts) else self.size
        backlog = self.size - low
        transport = self.origin_transport
        if transport is None or self.done:
            return
        if not self.paused and backlog > HIGH_WATER:
            self.paused = True
            transport.pauseProducing()
        elif self.paused and backlog < LOW_WATER:
            self.paused = False
            transport.resumeProducing()

    def reader_gone(self, reader: Reader) -> None:
        self.readers.discard(reader)
        if not self.readers and self.on_idle is not None:
            self.on_idle(self)
        else:
            self.progressed()

    def cancel(self) -> None:
        """Stop receiving (nobody reads and nothing is stored)."""
        if self.done:
            return
        self.cancelled = True
        if self.origin_transport is not None:
            self.origin_transport.stopProducing()
