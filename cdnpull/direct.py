"""
Uncacheable GET and HEAD misses answered by the connection, without a
twisted.web C{Request}: the miss path's share of what the fast hit path
skips (L{cdnpull.cache.hit}).

A request takes this way when the cache would only relay the origin's
answer, never store or share it:

 - a C{CacheRule} with C{ttl=0} for its path (X-Cache C{BYPASS});
 - a GET of a key marked not shared (hit-for-miss: its last answer was not
   stored, so no request may join its pull; X-Cache C{MISS});
 - a HEAD of a key with nothing stored (a HEAD never fills the cache;
   X-Cache C{MISS}),

and nothing about it needs the cache or a C{Request}: no C{Range}, no
conditional header, no C{only-if-cached}, origins reached over plain HTTP,
a domain without C{forward_headers}, HSTS or C{https_only}.  Everything else
goes the ordinary way (L{cdnpull.edge.Edge.render}), which answers the same.

The origin request goes through the same failover chain; the answer head
(made by the rules of every answer, L{cdnpull.answer}) is written in one
piece with the first body bytes, the body relayed with back-pressure (the
origin connection is the client connection's producer).
A hit-for-miss answer renews the key's mark as the cache would; one that
turns out storable lifts it, so the next request goes the ordinary way and
stores the object.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import PotentialDataLoss, ResponseDone
from twisted.web.iweb import UNKNOWN_LENGTH

from .answer import NO_BODY_CODES, own_fields, relay_fields, render
from .cache.collapse import authorized, header_map
from .cache.handler import CLIENT_ONLY
from .cache.policy import parse_cache_control, storable
from .compat import eager_write
from .errors import error_body, failure_status, log_gateway_error
from .failover import OriginRequest, PullResult
from .http.client import RESPONSE_DONE
from .headers import origin_fields
from .stream import Discard, body_loss

__all__ = ["DirectAnswer", "direct_answer"]

# Request headers that send a request the ordinary way: the cache answers them.
_CACHE_ANSWERS = frozenset(CLIENT_ONLY)


def direct_answer(edge: Any, live: Any, head: Any, conn: Any, host: str, scheme: str,
                  found: tuple, now: float) -> Optional["DirectAnswer"]:
    """
    The L{DirectAnswer} for a GET or HEAD that takes this way (see the
    module), not started; None: the ordinary way.

    @param found: what the cache holds for its URL (L{cdnpull.cache.hit.lookup}).
    """
    rule, key, stored = found
    if stored:
        return None  # something is stored: the cache decides
    fields = head.fields
    cache = edge.cache
    if cache.store.loading or not _CACHE_ANSWERS.isdisjoint(fields):
        return None
    control = fields.get(b"cache-control")
    if control and parse_cache_control(control).has("only-if-cached"):
        return None
    method = head.method
    if key is None:
        status = "BYPASS"  # a rule with ttl=0
    else:
        if method == b"HEAD":
            status = "MISS"
            key = None  # (a HEAD tells nothing about the object's storing)
        elif cache.unshared.why(key) == "private":
            status = "MISS"
        else:
            return None  # a miss that may be stored and shared
    methods = live.primary.kind.methods
    if methods is not None and method not in methods:
        return None
    for group in live.groups():
        if group.kind.scheme(scheme) != "http":
            return None
    return DirectAnswer(edge, conn, head, live, scheme, host, status, key, rule, now)


class DirectAnswer:
    """
    One request answered by the connection through the failover chain.  The
    connection treats it as its active request: it calls C{connectionLost}
    when the client goes, and is told C{requestDone} when the answer ends.
    """

    log = Logger()

    __slots__ = ("edge", "conn", "head", "live", "scheme", "host", "status", "key", "rule",
                 "started", "pending", "writer", "gone", "finished", "startedWriting", "code",
                 "sent", "group", "origin", "origin_ms", "chunked", "framed")

    def __init__(self, edge: Any, conn: Any, head: Any, live: Any, scheme: str, host: str,
                 status: str, key: Optional[str], rule: Any, now: float) -> None:
        self.edge = edge
        self.conn = conn
        self.head = head
        self.live = live
        self.scheme = scheme
        self.host = host
        self.status = status  # X-Cache: BYPASS or MISS
        self.key = key  # a hit-for-miss key whose mark the answer renews (else None)
        self.rule = rule
        self.started = now
        self.pending: Any = None  # the failover chain's Deferred, until it fires
        self.writer: Optional[_BodyWriter] = None
        self.gone = False  # the client went away
        self.finished = False  # counted and logged
        self.startedWriting = False
        self.code = 0
        self.sent = 0
        self.group = ""
        self.origin = ""
        self.origin_ms: Optional[float] = None
        self.chunked = False
        self.framed = True

    def start(self) -> None:
        head = self.head
        oreq = OriginRequest(method=head.method, target=head.target, headers=None,
                             host=self.host, client_scheme=self.scheme,
                             on_interim=self._interim, started=self.started,
                             fields=origin_fields(head.fields, self.conn.peer_host, self.scheme))
        d = self.pending = self.edge.failover.pull(self.live, oreq)
        d.addCallbacks(self._answer, self._failed)

    # -- the answer -----------------------------------------------------------

    def _answer(self, result: PullResult) -> None:
        self.pending = None
        response = result.response
        self.group = result.group
        self.origin = str(result.address)
        self.origin_ms = result.elapsed * 1000
        if self.gone:
            response.deliverBody(Discard(stop=True))
            return
        code = response.code
        length = response.length
        field_map = getattr(response, "field_map", None)
        fields = field_map() if field_map is not None else header_map(response.headers)
        if self.key is not None:
            self._remember(code, length, fields)
        head = self.head
        method = head.method
        self.code = code
        conn = self.conn
        bodiless = method == b"HEAD" or code in NO_BODY_CODES
        known = length is not UNKNOWN_LENGTH
        if not (known or bodiless):
            if head.version == b"HTTP/1.1":
                self.chunked = True
            else:
                self.framed = False  # ends with the connection
                conn.persistent = False
        # The head by the rules of every relayed answer (cdnpull.answer).
        fields = relay_fields(fields, self.edge.cache.relay_skip, self.status,
                              length if known and not bodiless else None, None,
                              self.key is not None and code == 200 and known)
        self.startedWriting = True
        conn.send_head(render(head.version, code, response.phrase, fields, self.chunked,
                              not conn.persistent))
        writer = self.writer = _BodyWriter(self, bodiless)
        response.deliverBody(writer)

    def _remember(self, code: int, length: Any, headers: dict) -> None:
        """Renew the key's hit-for-miss mark as the cache would (or lift it)."""
        cache = self.edge.cache
        fields = self.head.fields
        verdict = storable(b"GET", fields, code, headers, self.rule, self.edge.clock.seconds(),
                           cache.targeted)
        # (Lifted, the next request goes through the cache and stores it.)
        cache.unshared.learn(self.key, verdict.ok, code,
                             length is not UNKNOWN_LENGTH and length > cache.max_object,
                             authorized(fields))

    def _interim(self, status: int, reason: bytes, fields: list) -> None:
        """An origin's 1xx, passed on to an HTTP/1.1 client before the answer."""
        if self.startedWriting or self.gone or self.head.version != b"HTTP/1.1":
            return
        self.conn.send_interim(status, reason, fields)

    def _body_ended(self, reason: Failure, stopped: bool) -> None:
        conn = self.conn
        if self.gone or stopped:
            return  # the client side went (counted when the connection tells it)
        if reason is RESPONSE_DONE or reason.check(ResponseDone, PotentialDataLoss):
            if self.chunked:
                conn.write(b"0\r\n\r\n")
            self._done(self.code)
            return
        self.log.warn("origin body for {uri} cut short after {received} bytes: {reason}",
                      uri=self.head.target.decode("latin-1"), received=self.sent,
                      reason=body_loss(reason))
        # The client must be able to tell the body is short: a framed one
        # by the close after it, one that ends with the connection by an
        # abort (the connection then tells this answer it is lost).
        conn.persistent = False
        if self.framed:
            self._done(self.code)  # (the connection closes: not persistent)
        else:
            self._account(self.code)
            conn._abort()

    # -- errors -----------------------------------------------------------------

    def _failed(self, failure: Failure) -> None:
        self.pending = None
        if self.gone or failure.check(CancelledError):
            return
        uri = self.head.target.decode("ascii", "replace")
        status, message = failure_status(failure, self.log, uri)
        log_gateway_error(self.log, status, self.live.name, uri, message)
        body = error_body(status, message)
        self.code = status
        self.startedWriting = True
        conn = self.conn
        out = render(self.head.version, status, None, own_fields(len(body), self.status),
                     close=not conn.persistent)
        if self.head.method != b"HEAD":
            out += body
            self.sent = len(body)
        eager_write(conn.transport, out)
        self._done(status)

    # -- endings -------------------------------------------------------------------

    def connectionLost(self, reason: Any = None) -> None:
        """The client went away (the connection tells its active request)."""
        if self.finished:
            return
        self.gone = True
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.cancel()
        elif self.writer is not None:
            self.writer.stopProducing()
        # nginx's 499: the client closed the connection before any answer.
        self._account(self.code if self.startedWriting else 499)

    def _done(self, status: int) -> None:
        self._account(status)
        self.conn.requestDone(self)

    def _account(self, status: int) -> None:
        if self.finished:
            return
        self.finished = True
        edge = self.edge
        name = self.live.name
        if edge.metrics is not None:
            edge.metrics.request(name, status, self.status)
        log = edge.access_log
        if not log.off:
            head = self.head
            now = edge.clock.seconds()
            log.answered(self.conn.peer_host, head.method, head.target, head.version, status,
                         self.sent, head.fields, name, now, cache=self.status, group=self.group,
                         origin=self.origin, origin_ms=self.origin_ms,
                         total_ms=(now - self.started) * 1000)


class _BodyWriter:
    """
    The origin body (C{IResponse.deliverBody}) to the client connection,
    whose producer it is: a client that stops reading pauses the origin, and
    a client connection that ends stops it.
    """

    __slots__ = ("answer", "conn", "transport", "drop", "stopped")

    def __init__(self, answer: DirectAnswer, drop: bool) -> None:
        self.answer = answer
        self.conn = answer.conn
        self.transport: Any = None
        self.drop = drop  # a HEAD, 204 or 304 answer has no body
        self.stopped = False  # stopped by the client side, not cut short by the origin

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self.conn.registerProducer(self, True)

    def dataReceived(self, data: bytes) -> None:
        if self.drop or self.stopped:
            return
        answer = self.answer
        answer.sent += len(data)
        if answer.chunked:
            self.conn.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.conn.write(data)

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.stopped = True
        if self.transport is not None:
            self.transport.stopProducing()

    def connectionLost(self, reason: Failure) -> None:
        self.conn.unregisterProducer()
        self.answer._body_ended(reason, self.stopped)
