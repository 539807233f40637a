"""
The errors a request can end in, each carrying the HTTP status the client
gets.  L{cdnpull.edge} renders them in one place; an origin's own 5xx is never
turned into one of these.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

__all__ = [
    "EdgeError",
    "OriginError",
    "ConnectFailed",
    "TLSFailed",
    "NoResponse",
    "FirstByteTimeout",
    "OriginUnavailable",
    "OriginTimeout",
    "error_body",
    "failure_status",
    "log_gateway_error",
    "phrase",
]


def phrase(status: int) -> str:
    """The reason phrase of C{status} (C{"Error"} for a code without one)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def failure_status(failure: Any, log: Any, uri: str) -> tuple[int, str]:
    """
    The status and message a request that failed with C{failure} is
    answered with: an L{EdgeError}'s own; anything else is a bug, logged
    with its traceback, and a 500.
    """
    error = failure.value
    if isinstance(error, EdgeError):
        return error.status, error.message
    log.failure("unexpected error serving {uri}", failure, uri=uri)
    return 500, "internal error"


def log_gateway_error(log: Any, status: int, host: str, uri: str, message: str) -> None:
    """A 5xx the node answers is one warning line saying why (the client is not told)."""
    if status >= 500:
        log.warn("{status} for {host}{uri}: {message}", status=status, host=host or "-",
                 uri=uri, message=message)


def error_body(status: int, message: str) -> bytes:
    """
    The plain-text body of an answer the node makes itself: a 5xx says only
    its status (which origin failed and why is for the log and the admin
    API, never for the client: hiding the origin is half of what a CDN is
    for); a 4xx says what was wrong with the request.
    """
    if status >= 500:
        return f"{status} {phrase(status)}\n".encode("ascii")
    return f"{status} {message}\n".encode("utf-8", "replace")


class EdgeError(Exception):
    """An error answered by cdnpull itself with C{status} and a short text."""

    status = 500

    def __init__(self, message: str = "", status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args and self.args[0] else type(self).__name__


class OriginError(EdgeError):
    """One try at one origin address failed."""

    status = 502

    def __init__(self, address: object, detail: str) -> None:
        super().__init__(f"{address}: {detail}")
        self.address = address
        self.detail = detail


class ConnectFailed(OriginError):
    """
    The address could not be reached (refused, unreachable, connect timeout,
    TLS handshake or certificate failure): nothing was sent, so the request
    may go to another address, and the address gets blocked.
    """


class TLSFailed(ConnectFailed):
    """
    The TCP connection was made but the TLS handshake or the certificate
    check failed.  When the server name was the client's choice (a wildcard
    domain) this is the request's failure, not the address's.
    """


class NoResponse(OriginError):
    """The connection was made but broke before a response arrived."""


class FirstByteTimeout(OriginError):
    """The origin accepted the request but did not answer in time."""

    status = 504


class OriginUnavailable(EdgeError):
    """No origin address could be reached: 502."""

    status = 502


class OriginTimeout(EdgeError):
    """The origin (or the request's whole time budget) timed out: 504."""

    status = 504


class ClientBodyInterrupted(EdgeError):
    """The client's request body stopped before it was complete."""

    def __init__(self, message: str = "the request body was not complete") -> None:
        super().__init__(message, 400)


class BadRequest(ValueError):
    """A change the admin API refuses: the message is one line naming the field."""
