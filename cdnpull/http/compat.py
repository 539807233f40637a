"""
The one place that knows Twisted's private transport internals: writing an
answer straight to the socket when nothing is waiting to be sent, as
asyncio's transports do, instead of buffering it and asking epoll when the
socket is writable (two epoll_ctl calls and one more loop turn per answer);
on both sides: client connections (C{tcp.Server}) and plain origin
connections (C{tcp.Client}).

Any other transport (TLS, tests' StringTransport), or anything pending,
goes through C{transport.write} as usual.

Also: filling a twisted.web C{Headers} from parsed request headers without
re-checking what llhttp has checked already.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp
from twisted.web.http_headers import Headers, _nameEncoder

__all__ = ["eager_write", "fill_headers"]


def fill_headers(headers: Headers, fields: dict) -> None:
    """
    Put C{fields} (lower-case name -> [values], as llhttp parsed them: names
    are tokens, values hold no CR, LF or NUL) into an empty C{headers}.
    """
    raw = headers._rawHeaders
    encode = _nameEncoder.encode
    for name, values in fields.items():
        raw[encode(name)] = values


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
