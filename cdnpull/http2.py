"""
HTTP/2 to clients over TLS (ALPN C{h2} on C{tls:} listeners), through
Twisted's own C{H2Connection} (the C{h2} package) feeding the same
twisted.web C{Site} and L{cdnpull.edge.Edge} resource as HTTP/1.1: a stream
is a request, with the same routing, cache, failover, access log and rules.

What this module adds to Twisted's connection, for a node facing the whole
internet:

 - limits: at most C{MAX_CONCURRENT_STREAMS} streams at once and a header
   list of at most C{client_max_header_bytes} (both advertised in SETTINGS
   and enforced by h2: a client that goes over gets the protocol's error);
   a request body over C{client_max_body} gets 413 and the stream ends;
   two different C{Host} values get 400; an idle connection closes after
   C{client_idle_timeout}; a stream whose flow-control window stays closed
   for C{client_send_timeout} is reset;
 - frames for a stream that is already answered and cleaned up (DATA still
   arriving after an early answer, a late RST_STREAM) are ignored, never a
   traceback;
 - a stream the node resets itself (an origin body cut short) tells its
   request, so the access log and metrics see it like a client that left.

A client's RST_STREAM is a request whose client left: the origin request is
cancelled as for an HTTP/1.1 disconnect.  Rapid-reset floods are Twisted's
own check (GOAWAY with ENHANCE_YOUR_CALM).
"""

from __future__ import annotations

from typing import Any

from h2.settings import SettingCodes, Settings
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web._http2 import H2Connection

from .errors import error_body

__all__ = ["EdgeH2Connection", "h2_connection_factory", "MAX_CONCURRENT_STREAMS"]

MAX_CONCURRENT_STREAMS = 100


class EdgeH2Connection(H2Connection):
    """
    @ivar send_timeout: a stream whose flow-control window stays closed
        this long is reset (a client that reads nothing holds no origin
        request open), like C{client_send_timeout} on HTTP/1.1.
    """

    log = Logger()
    send_timeout = 60.0

    def __init__(self, reactor: Any = None) -> None:
        super().__init__(reactor)
        self._stalls: dict = {}

    def _requestReceived(self, event: Any) -> None:
        super()._requestReceived(event)
        sid = event.stream_id
        stream = self.streams.get(sid)
        if stream is None:
            return
        blocked, updated = stream.flowControlBlocked, stream.windowUpdated

        def flowControlBlocked() -> None:
            blocked()
            if sid not in self._stalls:
                self._stalls[sid] = self.callLater(  # type: ignore[call-arg]
                    self.send_timeout, self._stalled, sid)

        def windowUpdated() -> None:
            updated()
            if sid in self._stalls and self.remainingOutboundWindow(sid) > 0:
                self._unstall(sid)

        stream.flowControlBlocked, stream.windowUpdated = flowControlBlocked, windowUpdated

    def _stalled(self, sid: int) -> None:
        self._stalls.pop(sid, None)
        peer = getattr(self.transport.getPeer(), "host", "-") if self.transport else "-"
        self.log.info("reset an HTTP/2 stream of {peer}: its window stayed closed for {t:g} s",
                      peer=peer, t=self.send_timeout)
        self.abortRequest(sid)

    def _unstall(self, sid: int) -> None:
        timer = self._stalls.pop(sid, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _requestDone(self, streamID: int) -> None:
        self._unstall(streamID)
        super()._requestDone(streamID)

    def connectionLost(self, reason: Any, _cancelTimeouts: bool = True) -> None:  # type: ignore[override]
        for sid in list(self._stalls):
            self._unstall(sid)
        super().connectionLost(reason, _cancelTimeouts=_cancelTimeouts)

    def _requestDataReceived(self, event: Any) -> None:
        if event.stream_id not in self.streams:
            # Answered already: keep the connection's window open.
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            self._tryToWriteControlData()
            return
        super()._requestDataReceived(event)

    def _requestEnded(self, event: Any) -> None:
        if event.stream_id in self.streams:
            super()._requestEnded(event)

    def _requestAborted(self, event: Any) -> None:
        if event.stream_id in self.streams:
            super()._requestAborted(event)

    def abortRequest(self, streamID: int) -> None:
        stream = self.streams.get(streamID)
        if stream is None:
            return  # reset or finished already
        super().abortRequest(streamID)
        stream.connectionLost(Failure(ConnectionLost("stream reset by the node")))


def _limited(base: type, limits: Any) -> type:
    """The site's request class with HTTP/2's request checks."""

    class H2Request(base):
        _h2_body_seen = 0
        _h2_too_big = False

        def gotLength(self, length: Any) -> None:
            super().gotLength(length)
            if length is not None and length > limits.max_body:
                self._h2_too_big = True

        def handleContentChunk(self, data: bytes) -> None:
            if self.finished:
                return
            self._h2_body_seen += len(data)
            if self._h2_too_big or self._h2_body_seen > limits.max_body:
                self._h2_too_big = True
                self._h2_refuse(413, f"request body larger than {limits.max_body} bytes")
                return
            # Spooled (self.content), whatever the HTTP/1.1 engine does.
            http.Request.handleContentChunk(self, data)

        def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
            if self.finished:
                return
            if self._h2_too_big:
                self._h2_refuse(413, f"request body larger than {limits.max_body} bytes")
                return
            super().requestReceived(command, path, version)

        def _h2_refuse(self, status: int, why: str) -> None:
            if self.finished or self.startedWriting:
                return
            peer = getattr(self.getClientAddress(), "host", "-")
            EdgeH2Connection.log.info("refused an HTTP/2 request from {peer}: {status} {why}",
                                      peer=peer, status=status, why=why)
            body = error_body(status, why)
            self.setResponseCode(status)
            self.responseHeaders.setRawHeaders(b"server", [b"cdnpull"])
            self.responseHeaders.setRawHeaders(b"content-type", [b"text/plain; charset=utf-8"])
            self.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(body)])
            self.write(body)
            self.finish()

    return H2Request


def h2_connection_factory(site: Any, limits: Any, clock: Any):
    """
    A function of the client address making an L{EdgeH2Connection} that
    serves C{site} (an L{cdnpull.edge.EdgeSite}) with C{limits}
    (L{ClientLimits}).
    """
    request_factory = _limited(site.requestFactory, limits)

    def build(addr: Any) -> EdgeH2Connection:
        conn = EdgeH2Connection(clock)
        conn.site = site
        conn.factory = site
        conn.requestFactory = request_factory  # type: ignore[attr-defined]
        conn.timeOut = limits.idle_timeout
        conn.send_timeout = limits.send_timeout
        conn.callLater = clock.callLater  # type: ignore[method-assign]
        # In force from the first frame (and sent in the first SETTINGS).
        conn.conn.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_bytes,
        })
        conn.conn.decoder.max_header_list_size = limits.max_header_bytes
        return conn

    return build
