"""
cdnpull's HTTP/1.1 engine on llhttp (C{httptools}): the client side
(L{server.ClientConnection}: strict framing, limits, timeouts, keep-alive,
pipelining, the fast path for stored answers, and a channel that a
C{twisted.web} request runs on for everything else).
"""

from .server import ClientConnection, ClientLimits, Head, Sweeper

__all__ = ["ClientConnection", "ClientLimits", "Head", "Sweeper"]
