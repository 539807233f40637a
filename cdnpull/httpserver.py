"""
The client-facing HTTP/1.1 connection: Twisted's C{HTTPChannel} with strict
framing, limits and timeouts for a node that faces the whole internet.

Refused with a status and the connection closed, never forwarded:

 - 400: a request or header line with a bare CR or LF, NUL or another
   control character; obsolete line folding; a header name that is not a
   token; C{Transfer-Encoding} other than exactly C{chunked} (spaces or tabs
   around it allowed); C{Content-Length} together with C{Transfer-Encoding},
   repeated, or not digits; a bad chunk (these last ones are Twisted's own
   checks, answered the same way), and a chunk line ended by a bare LF (at
   once: Twisted would wait for a CRLF);
 - 414: a request line over C{client_max_request_line};
 - 431: a header line over C{client_max_header_line}, all headers over
   C{client_max_header_bytes}, or more than C{client_max_headers} of them;
 - 413: a body over C{client_max_body} (by its C{Content-Length} at once, or
   by each chunk's size as soon as it is read);
 - 408: request headers not complete within C{client_header_timeout} of the
   request's first byte (slowloris).

An idle keep-alive connection is closed after C{client_idle_timeout}; a
client that stops reading is cut off when nothing could be written to it
for C{client_send_timeout} (the node never buffers for it: bodies are
produced only as fast as the client reads).  Whatever reaches an origin is
re-framed by the node (one clean request per client request).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from twisted.logger import Logger
from twisted.web.http import (
    HTTPChannel,
    RESPONSES,
    _ChunkedTransferDecoder,
    _MalformedChunkedDataError,
)
from twisted.web.server import Request

from .headers import CONTROL_CHAR, FIELD_NAME, connection_tokens
from .upload import BodyPipe

__all__ = ["ClientLimits", "EdgeChannel", "EdgeRequest"]



@dataclass(frozen=True)
class ClientLimits:
    max_request_line: int = 8192
    max_header_line: int = 8192
    max_header_bytes: int = 32768
    max_headers: int = 100
    max_body: int = 1024 * 1024 * 1024
    header_timeout: float = 30.0
    idle_timeout: float = 75.0
    send_timeout: float = 60.0


SERVER = b"cdnpull"


class EdgeRequest(Request):
    """
    Counts a body as it arrives (its C{Content-Length} is checked before),
    and, when the request was dispatched early, streams it through
    C{body_pipe} instead of spooling it.

    Every answer carries C{Server: cdnpull}, whoever made it (Twisted
    answers C{OPTIONS *} and unexpected errors on its own).
    """

    _body_seen = 0
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
        body = b"500 Internal Server Error\n"
        self.setResponseCode(500)
        self.responseHeaders.setRawHeaders(b"content-type", [b"text/plain; charset=utf-8"])
        self.responseHeaders.setRawHeaders(b"content-length", [b"%d" % len(body)])
        self.write(body)
        self.finish()
        return reason

    def handleContentChunk(self, data: bytes) -> None:
        channel = self.channel
        self._body_seen += len(data)
        if channel is not None and self._body_seen > channel.limits.max_body:
            channel.refuse(413, f"request body larger than {channel.limits.max_body} bytes")
            if self.body_pipe is not None:
                self.body_pipe.fail()  # after the 413: the edge then writes nothing
            return
        if self.body_pipe is not None:
            self.body_pipe.write(data)
            return
        super().handleContentChunk(data)

    def finish(self) -> None:
        pipe = self.body_pipe
        if pipe is not None and not pipe.done and self.channel is not None:
            # Answered before the body was complete: the rest of it cannot be
            # told from a next request, so this connection ends here.
            self.channel.persistent = False
        super().finish()

    def connectionLost(self, reason: Any) -> None:
        if self.body_pipe is not None:
            self.body_pipe.fail()
        super().connectionLost(reason)


class _StrictChunkedDecoder(_ChunkedTransferDecoder):
    """
    Twisted's chunked decoder, but a bare LF where a CRLF ends a line is a
    400 at once (Twisted waits for a CRLF that never comes), and a chunk
    larger than the body may still be is refused as soon as its size is read
    (C{fits(size)} says whether it may come; it answers the 413 itself).
    """

    def __init__(self, dataCallback: Any, finishCallback: Any, fits: Any) -> None:
        super().__init__(dataCallback, finishCallback)
        self._fits = fits

    def _bare_lf(self) -> None:
        lf = self._buffer.find(b"\n")
        if lf == 0 or (lf > 0 and self._buffer[lf - 1] != 0x0D):
            raise _MalformedChunkedDataError("bare LF in chunked framing")

    def _dataReceived_CHUNK_LENGTH(self) -> bool:
        self._bare_lf()
        done = super()._dataReceived_CHUNK_LENGTH()
        if done and self.state == "BODY" and not self._fits(self.length):
            raise _MalformedChunkedDataError("chunk larger than the body limit")
        return done

    def _dataReceived_CRLF(self) -> bool:
        if self._buffer[:1] == b"\n":
            raise _MalformedChunkedDataError("bare LF after a chunk")
        return super()._dataReceived_CRLF()

    def _dataReceived_TRAILER(self) -> bool:
        self._bare_lf()
        return super()._dataReceived_TRAILER()


class EdgeChannel(HTTPChannel):
    log = Logger()
    limits = ClientLimits()
    requestFactory = EdgeRequest

    _header_timer: Any = None
    _send_timer: Any = None
    _refused = False
    _head_lines = 0
    _head_bytes = 0
    _in_head = False

    def __init__(self, limits: Optional[ClientLimits] = None) -> None:
        super().__init__()
        if limits is not None:
            self.limits = limits
        self.MAX_LENGTH = max(self.limits.max_request_line, self.limits.max_header_line)
        self.totalHeadersSize = self.limits.max_request_line + self.limits.max_header_bytes + 1024
        self.maxHeaders = self.limits.max_headers + 1

    # -- refusing --------------------------------------------------------

    def _peer(self) -> str:
        peer = getattr(self.transport, "getPeer", lambda: None)()
        return getattr(peer, "host", "-")

    def refuse(self, status: int, why: str) -> None:
        """Answer C{status} with a short text, log it, and close the connection."""
        if self._refused:
            return
        self._refused = True
        self._cancel_header_timer()
        self.log.info("refused a request from {peer}: {status} {why}", peer=self._peer(),
                      status=status, why=why)
        body = f"{status} {why}\n".encode("utf-8", "replace")
        phrase = RESPONSES.get(status, b"Error")
        self.transport.write(
            b"HTTP/1.1 %d %s\r\nServer: cdnpull\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (status, phrase, len(body), body))
        self.setRawMode()
        self.loseConnection()

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's own framing checks (CL + TE, repeated or non-digit CL,
        # bad chunks, bad request line) end here.
        self.refuse(400, "malformed request")

    def lineLengthExceeded(self, line: bytes) -> None:
        if not self._in_head or self._head_lines == 0:
            self.refuse(414, f"request line longer than {self.limits.max_request_line} bytes")
        else:
            self.refuse(431, f"header line longer than {self.limits.max_header_line} bytes")

    # -- reading -----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if (self.line_mode and not self._handlingRequest and self._header_timer is None
                and data):
            self._in_head = True
            self._head_lines = 0
            self._head_bytes = 0
            self._header_timer = self.callLater(self.limits.header_timeout, self._header_timeout)
        super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        super().rawDataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        limits = self.limits
        first = self._head_lines == 0
        if first and not line:
            # An empty line before a request (tolerated once by Twisted).
            return super().lineReceived(line)
        if b"\r" in line or b"\n" in line:
            return self.refuse(400, "bare CR or LF in the request head")
        if first:
            if len(line) > limits.max_request_line:
                return self.refuse(414, f"request line longer than {limits.max_request_line} bytes")
            if CONTROL_CHAR.search(line) or b"\t" in line:
                return self.refuse(400, "control character in the request line")
        elif line:
            if line[:1] in (b" ", b"\t"):
                return self.refuse(400, "obsolete line folding")
            if len(line) > limits.max_header_line:
                return self.refuse(431, f"header line longer than {limits.max_header_line} bytes")
            name, sep, value = line.partition(b":")
            if not sep or not FIELD_NAME.fullmatch(name):
                return self.refuse(400, "invalid header line")
            if CONTROL_CHAR.search(value):
                return self.refuse(400, f"control character in the {name.decode('latin-1')} header")
            if name.lower() == b"transfer-encoding" and value.strip(b" \t") != b"chunked":
                return self.refuse(400, "Transfer-Encoding other than exactly 'chunked'")
            self._head_bytes += len(line)
            if self._head_bytes > limits.max_header_bytes:
                return self.refuse(431, f"headers larger than {limits.max_header_bytes} bytes")
            if self._head_lines > limits.max_headers:
                return self.refuse(431, f"more than {limits.max_headers} header fields")
        self._head_lines += 1
        super().lineReceived(line)

    def _maybeChooseTransferDecoder(self, header: bytes, data: bytes) -> bool:
        ok = super()._maybeChooseTransferDecoder(header, data)
        decoder = self._transferDecoder
        if ok and type(decoder) is _ChunkedTransferDecoder:
            self._transferDecoder = _StrictChunkedDecoder(
                decoder.dataCallback, decoder.finishCallback, self._chunk_fits)
        return ok

    def _chunk_fits(self, size: int) -> bool:
        """Whether a chunk of C{size} bytes keeps the body within the limit (else a 413)."""
        request = self.requests[-1] if self.requests else None
        seen = request._body_seen if request is not None else 0
        if seen + size <= self.limits.max_body:
            return True
        self.refuse(413, f"request body larger than {self.limits.max_body} bytes")
        if request is not None and request.body_pipe is not None:
            request.body_pipe.fail()  # after the 413: the edge then writes nothing
        return False

    def allHeadersReceived(self) -> None:
        self._cancel_header_timer()
        self._in_head = False
        self._head_lines = 0
        self._head_bytes = 0
        if self.length is not None and self.length > self.limits.max_body:
            self.refuse(413, f"request body larger than {self.limits.max_body} bytes")
            return
        super().allHeadersReceived()
        if self._refused or not self.requests:
            return
        if self.length != 0 and self._command.upper() not in (b"GET", b"HEAD"):
            # A body to stream: dispatch now, the body follows through a pipe.
            request = self.requests[-1]
            request.body_pipe = BodyPipe(self.transport, self.length)
            self._early = request
            request.requestReceived(self._command, self._path, self._version)

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        # Twisted reads only the first Connection header and splits it on
        # spaces, so "Connection: close, x" or a second Connection header
        # saying close kept the connection open.
        if version == b"HTTP/1.1" and b"close" in connection_tokens(request.requestHeaders):
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            return False
        return super().checkPersistence(request, version)

    def _header_timeout(self) -> None:
        self._header_timer = None
        self.refuse(408, f"request headers not received within {self.limits.header_timeout:g} s")
        # A client this slow may not read either: do not wait for it.
        self.callLater(1.0, self._abort)

    def _abort(self) -> None:
        if self.transport is not None and self.transport.connected:
            self.transport.abortConnection()

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            if self._header_timer.active():
                self._header_timer.cancel()
            self._header_timer = None

    _early: Any = None

    def allContentReceived(self) -> None:
        if self._refused:
            return  # never dispatch a request that was refused mid-body
        early, self._early = self._early, None
        if early is None:
            super().allContentReceived()
            return
        # The request was dispatched when its headers were complete: reset
        # the parser as HTTPChannel.allContentReceived does, then tell the
        # pipe the body is complete instead of dispatching again.
        self.length = 0
        self._receivedHeaderCount = 0
        self._receivedHeaderSize = 0
        self._HTTPChannel__first_line = 1
        self._transferDecoder = None
        del self._command, self._path, self._version
        if early.finished or not self.requests:
            # Answered already (and the connection is ending): nothing to do.
            early.body_pipe.finish()
            return
        if self.timeOut:
            self._savedTimeOut = self.setTimeout(None)
        self._handlingRequest = True
        self.setRawMode()
        early.body_pipe.finish()

    # -- writing: a client that stops reading -----------------------------------

    def pauseProducing(self) -> None:
        super().pauseProducing()
        if self._send_timer is None:
            self._send_timer = self.callLater(self.limits.send_timeout, self._send_timeout)

    def resumeProducing(self) -> None:
        if self._send_timer is not None:
            if self._send_timer.active():
                self._send_timer.cancel()
            self._send_timer = None
        super().resumeProducing()

    def _send_timeout(self) -> None:
        self._send_timer = None
        self.log.info("cut off {peer}: it read nothing for {t:g} s", peer=self._peer(),
                      t=self.limits.send_timeout)
        self._abort()

    def connectionLost(self, reason: Any) -> None:
        self._cancel_header_timer()
        if self._send_timer is not None:
            if self._send_timer.active():
                self._send_timer.cancel()
            self._send_timer = None
        super().connectionLost(reason)
