"""
The strict reading of origin responses (cdnpull/origins/framing.py) in
memory: the real client protocol on a StringTransport, table-driven.  These
run the Twisted hooks of cdnpull/compat.py too (the private parts of the
client protocol), so a Twisted release that moves them fails here.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.testing import StringTransport
from twisted.web._newclient import Request, ResponseFailed
from twisted.web.client import readBody
from twisted.web.http_headers import Headers

from cdnpull.origins.framing import InterimHeaders, InvalidOriginResponse, StrictClientProtocol

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Connection:
    def __init__(self, on_interim: Any = None) -> None:
        self.returned: list = []
        self.protocol = StrictClientProtocol(self.returned.append)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        headers = InterimHeaders({b"host": [b"origin.test"]}, on_interim=on_interim)
        self.result: list = []
        d = self.protocol.request(Request(b"GET", b"/x", headers, None, persistent=True))
        d.addBoth(self.result.append)

    def feed(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    @property
    def refused(self) -> str:
        """The reason the response was refused ("" when it was not)."""
        [outcome] = self.result
        if not hasattr(outcome, "check"):
            return ""
        assert outcome.check(ResponseFailed), outcome
        [reason] = [r for r in outcome.value.reasons if r.check(InvalidOriginResponse)]
        return str(reason.value)


@pytest.mark.parametrize("head, why", [
    (b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", "bare CR or LF"),
    (b"HTTP/1.1 200 OK\r\nX-A: 1\rX-B: 2\r\n\r\n", "bare CR or LF"),
    (b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n", "invalid status line"),
    (b"HTTP/2 200 OK\r\nContent-Length: 0\r\n\r\n", "invalid status line"),
    (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n", "obsolete line folding"),
    (b"HTTP/1.1 200 OK\r\nBad Name: 1\r\nContent-Length: 0\r\n\r\n", "invalid header line"),
    (b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 0\r\n\r\n", "control character"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok", "invalid Content-Length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", "contradictory Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "unsupported Transfer-Encoding"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n",
     "both Transfer-Encoding and Content-Length"),
    (b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * (70 * 1024), "larger than"),
    (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\nContent-Length: 0\n\n",
     "bare CR or LF"),
])
def test_an_invalid_head_is_refused_and_the_connection_aborted(head: bytes, why: str) -> None:
    c = Connection()
    c.feed(head)
    assert why in c.refused
    assert c.transport.disconnecting  # aborted: never back in the pool
    assert c.returned == []


@pytest.mark.parametrize("chunks", [
    [OK],
    [OK[:5], OK[5:20], OK[20:]],  # a head split anywhere
    [b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nok"],  # a repeated same value
    [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"],
])
def test_a_valid_response_is_read_and_the_connection_kept(chunks: list) -> None:
    c = Connection()
    for chunk in chunks:
        c.feed(chunk)
    [response] = c.result
    assert response.code == 200
    body: list = []
    readBody(response).addCallback(body.append)
    assert body == [b"ok"]
    assert not c.transport.disconnecting
    assert c.returned == [c.protocol]  # back to the pool


def test_bytes_after_a_complete_response_end_the_connection() -> None:
    c = Connection()
    c.feed(OK + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    [response] = c.result
    assert response.code == 200
    readBody(response)
    assert c.transport.disconnecting


def test_bytes_between_responses_end_the_connection() -> None:
    c = Connection()
    c.feed(OK)
    readBody(c.result[0])
    assert not c.transport.disconnecting
    c.feed(b"junk")
    assert c.transport.disconnecting


def test_interim_answers_are_checked_and_passed_on_without_hop_by_hop_headers() -> None:
    seen: list = []
    c = Connection(on_interim=lambda *answer: seen.append(answer))
    c.feed(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\nConnection: x-hop\r\nX-Hop: 1\r\n\r\n")
    c.feed(b"HTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: 1\r\nX-Kept: 2\r\n"
           b"Content-Length: 0\r\n\r\n")
    assert seen == [(103, b"Early Hints", [(b"Link", b"</a>")])]
    [response] = c.result
    assert response.code == 200
    # The final head's Connection list is for this hop only.
    assert not response.headers.hasHeader(b"x-secret")
    assert response.headers.getRawHeaders(b"x-kept") == [b"2"]
    assert isinstance(response.headers, Headers)
