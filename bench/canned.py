"""
The ceiling: a bare Twisted Protocol that parses requests with httptools and
answers every one with the same precomputed 1 KiB response.

    python bench/canned.py PORT
"""

from __future__ import annotations

import sys

import httptools
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

BODY = b"x" * 1024
ANSWER = (b"HTTP/1.1 200 OK\r\nServer: canned\r\nContent-Type: application/octet-stream\r\n"
          b"Content-Length: %d\r\n\r\n%s" % (len(BODY), BODY))


class Canned(Protocol):
    def connectionMade(self) -> None:
        self.parser = httptools.HttpRequestParser(self)

    def dataReceived(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.transport.write(ANSWER)


def main() -> None:
    reactor.listenTCP(int(sys.argv[1]), Factory.forProtocol(Canned), interface="127.0.0.1",  # type: ignore[attr-defined]
                      backlog=1024)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
