"""
The client-facing resource: route by Host, ask the cache for the answer (or
pull from the origins through the failover chain itself), write it
(L{deliver}: the one place an L{Answer} meets a twisted.web C{Request}), and
log one access line.  Every error becomes an HTTP status here and only here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Optional, Union

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from .accesslog import AccessLog, AccessRecord
from .answer import NO_BODY_CODES, RELAY_SKIP, SERVER, Answer, apply, own_fields, relay_fields
from .cache import Cache
from .cache.collapse import header_map
from .cache.fill import Fill, Reader, StaticSource
from .compat import request_gone
from .errors import EdgeError, error_body, failure_status, log_gateway_error
from .cache.hit import fresh_hit, lookup
from .direct import DirectAnswer, direct_answer
from .http import ClientConnection, ClientLimits, Sweeper
from .upload import BodyPipe
from .headers import origin_headers
from .live import Routes
from .metrics import Metrics
from .failover import OriginRequest, PullResult, FailoverChain
from .routing import is_dns_name, normalise_host, split_target
from .stream import BodyRelay, Discard

__all__ = ["Edge", "EdgeRequest", "EdgeSite"]

NO_BODY_METHODS = (b"GET", b"HEAD", b"DELETE", b"OPTIONS", b"TRACE")
# RFC 9110 section 9.2.1; any other method's success invalidates the cache.
SAFE_METHODS = (b"GET", b"HEAD", b"OPTIONS", b"TRACE")


@dataclass
class _Context:
    start: float
    domain: str = ""
    cache: str = "BYPASS"
    group: str = ""
    origin: str = ""
    origin_ms: Optional[float] = None
    pending: Optional[Deferred] = None
    relay: Optional[BodyRelay] = None
    gone: bool = False  # the client disconnected before the answer was complete


class Edge(Resource):
    """
    @param routes: the routing table holder (its C{current} table is read
        once per request).
    @param cache: the cache every GET and HEAD goes through (None: none).
    @param failover: the failover chain that pulls from the origins.
    @param metrics: counts every answer (None: not counted).
    """

    isLeaf = True
    log = Logger()

    def __init__(self, routes: Routes, cache: Optional[Cache], failover: FailoverChain,
                 clock: IReactorTime, access_log: Optional[AccessLog] = None,
                 metrics: Optional[Metrics] = None) -> None:
        super().__init__()
        self.routes = routes
        self.cache = cache
        self.failover = failover
        self.clock = clock
        self.access_log = access_log or AccessLog()
        self.metrics = metrics
        self._cooperator = Cooperator(scheduler=lambda f: clock.callLater(0, f))
        self._hosts: dict = {}  # raw Host -> normalised (bounded)

    # -- the fast path: fresh memory hits, answered by the connection ------

    def fast(self, head: Any, conn: Any) -> Union[tuple[bytes, bytes], DirectAnswer, None]:
        """
        The whole answer to a request head, (head bytes, body bytes), when a
        fresh memory entry answers it (no twisted.web Request is made); a
        L{DirectAnswer} (not started) for an uncacheable miss the
        connection relays itself (L{cdnpull.direct}); else None: then the
        request takes the ordinary way, which answers the same.
        """
        method = head.method
        if method != b"GET" and method != b"HEAD":
            return None
        cache = self.cache
        target = head.target
        hosts = head.fields.get(b"host")
        if cache is None or not hosts or target[:1] != b"/":
            return None
        raw = hosts[0]
        host = self._hosts.get(raw)
        if host is None:
            host = normalise_host(raw)
            if host is None:
                return None
            if len(self._hosts) > 4096:
                self._hosts.clear()
            self._hosts[raw] = host
        live = self.routes.current.route(host)
        if live is None:
            return None
        config = live.config
        if config.forward_headers or (config.is_wildcard and not is_dns_name(host)):
            return None  # keyed on more than the URL, or a 400: the ordinary way
        secure = conn.isSecure()
        if config.hsts if secure else config.https_only:
            return None  # an HSTS header, or a redirect to https: the ordinary way
        now = self.clock.seconds()
        scheme = "https" if secure else "http"
        found = lookup(cache, live, scheme, host, target)
        answer = fresh_hit(cache, found, method, head.fields, now, not head.keep_alive)
        if answer is None:
            # An uncacheable miss the connection can answer itself, or None.
            return direct_answer(self, live, head, conn, host, scheme, found, now)
        data, body, status, sent = answer
        if self.metrics is not None:
            self.metrics.request(live.name, status, "HIT")
        if not self.access_log.off:
            self.access_log.answered(conn.peer_host, method, target, head.version, status, sent,
                                     head.fields, live.name, now)
        return data, body

    def render(self, request: Request) -> object:
        request.setHeader(b"server", b"cdnpull")
        ctx = _Context(start=self.clock.seconds())
        request.notifyFinish().addBoth(self._finished, request, ctx)
        d = Deferred.fromCoroutine(self._serve(request, ctx))
        d.addErrback(self._failed, request, ctx)
        return NOT_DONE_YET

    # -- the pipeline ----------------------------------------------------

    async def _serve(self, request: Request, ctx: _Context) -> None:
        try:
            authority, target = split_target(request.uri)
        except ValueError:  # an absolute-form target urlsplit cannot read
            raise EdgeError("invalid request target", 400) from None
        if not target.startswith(b"/"):
            raise EdgeError("request target must be a path", 400)
        if b"#" in request.uri:
            # RFC 9112 3.2: no fragment in a request target.  Taken as part of
            # the path it would be one more cache key for the same object.
            raise EdgeError("a fragment (#) in the request target", 400)
        hosts = request.requestHeaders.getRawHeaders(b"host", [])
        if len(hosts) > 1 and len({h.lower() for h in hosts}) > 1:
            # RFC 9112 section 3.2: which one would an origin or another
            # cache in front of it read?  (HTTP/1.1 refuses a second Host in
            # the engine; HTTP/2 may carry :authority and an equal Host.)
            raise EdgeError("more than one Host header", 400)
        # An absolute-form target is routed by its authority; Host is ignored.
        host = normalise_host(authority if authority is not None else (hosts[0] if hosts else None))
        if host is None:
            raise EdgeError("missing or invalid Host header", 400)
        live = self.routes.current.route(host)
        if live is None:
            raise EdgeError(f"unknown host {host}", 404)
        ctx.domain = live.name
        if live.config.is_wildcard and not is_dns_name(host):
            # The client's name becomes the origin's Host (and TLS name).
            raise EdgeError("the Host is not a valid DNS name", 400)
        if request.isSecure():
            if live.config.hsts:
                request.setHeader(b"strict-transport-security", live.config.hsts.encode("ascii"))
        elif live.config.https_only:
            # Before the cache: the redirect is never stored as the object.
            # 308 keeps the method and body of anything but GET and HEAD.
            request.setHeader(b"location", b"https://%s%s" % (host.encode("ascii"), target))
            raise EdgeError("moved to https", 301 if request.method in (b"GET", b"HEAD") else 308)
        methods = live.primary.kind.methods
        if methods is not None and request.method not in methods:
            request.setHeader(b"allow", b", ".join(methods))
            raise EdgeError(f"only {' and '.join(m.decode() for m in methods)} reach "
                            f"a {live.primary.kind.type} origin", 405)

        # Framing is ours to set (the body is re-framed for the origin);
        # headers that would steer the origin unkeyed are dropped unless the
        # domain lets them through (and then they are keyed on).
        scheme = "https" if request.isSecure() else "http"
        headers, key_extra = origin_headers(request.requestHeaders, _client_ip(request), scheme,
                                            live.config.forward_headers)
        body = None
        pipe = getattr(request, "body_pipe", None)
        if request.method in (b"GET", b"HEAD"):
            # A GET or HEAD body has no meaning (RFC 9110 section 9.3.1) and
            # is not in the cache key: it never reaches the origin.
            pass
        elif pipe is not None:
            body = lambda: pipe  # noqa: E731 - streamed; sent at most once
        elif request.method not in NO_BODY_METHODS or _has_body(request):
            body = self._body_producer(request)
        oreq = OriginRequest(
            method=request.method,
            target=target,
            headers=headers,
            host=host,
            client_scheme=scheme,
            body=body,
            key_extra=key_extra,
            on_interim=partial(_send_interim, request),
        )

        cache = self.cache
        answer: Union[Answer, str] = "BYPASS"
        if cache is not None and request.method in (b"GET", b"HEAD"):
            # The cache decides the answer (a client that leaves cancels it),
            # or leaves it to the origin.
            ctx.pending = Deferred.fromCoroutine(
                cache.handle(live, oreq, header_map(request.requestHeaders), ctx.start))
            try:
                answer = await ctx.pending
            finally:
                ctx.pending = None
        if isinstance(answer, str):
            ctx.cache = answer
            ctx.pending = self.failover.pull(live, oreq)
            try:
                result: PullResult = await ctx.pending
            finally:
                ctx.pending = None
            if cache is not None and request.method not in SAFE_METHODS and 200 <= result.response.code < 400:
                cache.invalidate(live, oreq, result.response.headers)
            answer = self._relayed(request, result, answer)
        await deliver(request, ctx, answer)

    def _body_producer(self, request: Request):
        content = request.content
        assert content is not None  # twisted.web gives every request one

        def make():
            content.seek(0)
            return FileBodyProducer(content, cooperator=self._cooperator)

        return make

    def _relayed(self, request: Request, result: PullResult, cache: str) -> Answer:
        """The answer of an origin the edge asked itself, relayed as it comes."""
        response = result.response
        length = response.length
        field_map = getattr(response, "field_map", None)
        fields = field_map() if field_map is not None else header_map(response.headers)
        skip = self.cache.relay_skip if self.cache is not None else RELAY_SKIP
        return Answer.pulled(result, response.code, response.phrase,
                             relay_fields(fields, skip, cache,
                                          length if length is not UNKNOWN_LENGTH
                                          and request.method != b"HEAD"
                                          and response.code not in NO_BODY_CODES else None),
                             cache, response)

    # -- endings ---------------------------------------------------------

    def _failed(self, failure: Failure, request: Request, ctx: _Context) -> None:
        if failure.check(CancelledError) or ctx.gone:
            return
        if getattr(request.channel, "_refused", False):
            return  # the connection already answered (413 mid-upload) and is closing
        uri = request.uri.decode("ascii", "replace")
        status, message = failure_status(failure, self.log, uri)
        if request.startedWriting:
            # (An HTTP/2 stream has no transport: resetting the stream is its abort.)
            (request.transport or request.channel).abortConnection()  # type: ignore[union-attr]
            return
        body = error_body(status, message)
        apply(request, status, None, own_fields(len(body), ctx.cache))
        log_gateway_error(self.log, status, ctx.domain, uri, message)
        request.write(body)
        request.finish()

    def _finished(self, result: object, request: Request, ctx: _Context) -> None:
        if isinstance(result, Failure):
            # The client went away before the answer was complete.
            ctx.gone = True
            if ctx.pending is not None:
                ctx.pending.cancel()
            if ctx.relay is not None:
                ctx.relay.client_gone()
        # nginx's 499: the client closed the connection before any answer.
        status = 499 if isinstance(result, Failure) and not request.startedWriting else request.code
        if self.metrics is not None:
            self.metrics.request(ctx.domain, status, ctx.cache)
        self.access_log.record(
            AccessRecord(
                client=_client_ip(request) or "-",
                method=request.method.decode("ascii", "replace"),
                uri=request.uri.decode("ascii", "replace"),
                version=request.clientproto.decode("ascii", "replace"),
                status=status,
                sent=request.sentLength,
                referer=(request.getHeader(b"referer") or b"").decode("ascii", "replace"),
                user_agent=(request.getHeader(b"user-agent") or b"").decode("ascii", "replace"),
                domain=ctx.domain,
                cache=ctx.cache,
                group=ctx.group,
                origin=ctx.origin,
                origin_ms=ctx.origin_ms,
                total_ms=(self.clock.seconds() - ctx.start) * 1000,
                when=self.clock.seconds(),
            )
        )




async def deliver(request: Request, ctx: Any, answer: Answer) -> None:
    """
    Write an L{Answer} on a twisted.web C{Request}: its head (the one way
    a resource sets one, L{cdnpull.answer.apply}), then its body as it
    comes, with the client's pace; C{ctx} notes what the access log says
    of it and what to stop when the client leaves.
    """
    ctx.cache, ctx.group, ctx.origin, ctx.origin_ms = (answer.cache, answer.group, answer.origin,
                                                        answer.origin_ms)
    body = answer.body
    if body is None or isinstance(body, bytes):
        apply(request, answer.code, answer.phrase, answer.fields)
        if body and request.method != b"HEAD":
            request.write(body)
        request.finish()
    elif isinstance(body, (Fill, StaticSource)):
        # (Attached at once: a fill starts when its answer's readers are.)
        apply(request, answer.code, answer.phrase, answer.fields)
        reader = Reader(body, request, answer.first, answer.last)
        ctx.relay = reader
        reader.pump()
        await reader.done
    elif ctx.gone:
        body.deliverBody(Discard(stop=True))  # the client left while the origin answered
    else:
        apply(request, answer.code, answer.phrase, answer.fields)
        relay = BodyRelay(request)
        ctx.relay = relay
        body.deliverBody(relay)
        if await relay.done and not ctx.gone:
            request.finish()


def _client_ip(request: Request) -> Optional[str]:
    peer = request.getClientAddress()
    return getattr(peer, "host", None)


def _send_interim(request: Request, status: int, reason: bytes, fields: list) -> None:
    """
    Pass an origin's interim answer (103 Early Hints, 102, ...) on to an
    HTTP/1.1 client, while its final answer has not started (RFC 9110 15.2).
    """
    if (request.startedWriting or request.finished or request.clientproto != b"HTTP/1.1"
            or request_gone(request) or request.channel is None):
        return
    channel: Any = request.channel  # (over HTTP/1.1: a ClientConnection)
    if channel.transport is not None:
        channel.send_interim(status, reason, fields)


def _has_body(request: Request) -> bool:
    return bool(request.getHeader(b"content-length") not in (None, b"0")
                or request.getHeader(b"transfer-encoding"))



class EdgeRequest(Request):
    """
    A request whose body (methods other than GET and HEAD) may stream
    through C{body_pipe} while it arrives (see L{cdnpull.http.server}).

    Every answer carries C{Server: cdnpull}, whoever made it (Twisted
    answers C{OPTIONS *} and unexpected errors on its own).
    """

    body_pipe: Optional[BodyPipe] = None
    # An answer has the Content-Type its origin gave it, or none (Twisted
    # would add text/html); the node's own answers set theirs.
    defaultContentType = None

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            self.responseHeaders.setRawHeaders(b"server", [SERVER])
        super().write(data)

    def processingFailed(self, reason: Any) -> None:
        # A bug: logged with its traceback, answered like every other 500.
        self._log.failure("unexpected error processing {uri}", failure=reason,
                          uri=self.uri.decode("ascii", "replace"))
        if self.startedWriting:
            self.transport.abortConnection()  # type: ignore[union-attr]
            return reason
        body = error_body(500, "")
        self.setResponseCode(500)
        self.responseHeaders.setRawHeaders(b"content-type", [b"text/plain; charset=utf-8"])
        self.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(body)])
        self.write(body)
        self.finish()
        return reason

    def connectionLost(self, reason: Any) -> None:
        if self.body_pipe is not None:
            self.body_pipe.fail()
        super().connectionLost(reason)


class EdgeSite(Site):
    """
    A Site whose connections are cdnpull's own HTTP/1.1 engine
    (L{ClientConnection}: strict framing, limits, timeouts), which answers
    fresh memory hits itself through C{fast}; the access log is ours
    (L{AccessLog}), not twisted.web's.
    """

    noisy = False

    def __init__(self, resource: Resource, limits: Optional[ClientLimits] = None,
                 reactor: Any = None, **kwargs: Any) -> None:
        super().__init__(resource, reactor=reactor, **kwargs)
        self.limits = limits or ClientLimits()
        self.clock = reactor
        self.requestFactory = EdgeRequest
        self.fast = getattr(resource, "fast", None)
        self.sweeper = Sweeper(reactor, self.limits)

    def buildProtocol(self, addr: Any) -> ClientConnection:  # type: ignore[override]
        conn = ClientConnection(self.limits, self.clock, self.sweeper)
        conn.factory = self
        return conn

    def drain(self) -> int:
        """
        On the way down (the listeners are closed): idle client connections
        close now, busy ones after the answer in progress.  Returns how many
        are still busy.
        """
        for conn in list(self.sweeper.connections):
            conn.finish_and_close()
        return len(self.sweeper.connections)

    def log(self, request: Any) -> None:
        pass
