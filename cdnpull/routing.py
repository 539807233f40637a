"""
Host -> live domain: exact names first, then the most specific C{*.} wildcard
(a wildcard matches any depth of subdomain, never the bare name, as nginx's
C{server_name *.example.com} does).  Ports are ignored, case does not matter.
"""

from __future__ import annotations

import re
from typing import Generic, Iterable, Optional, TypeVar
from urllib.parse import urlsplit

__all__ = ["RoutingTable", "is_dns_name", "normalise_host", "split_target"]

_LDH_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")


def is_dns_name(host: str) -> bool:
    """
    A (normalised, lower-case) host is a DNS name: letter-digit-hyphen
    labels of 1-63 octets, at most 253 in all.
    """
    return len(host) <= 253 and all(_LDH_LABEL.match(label) for label in host.split("."))

T = TypeVar("T")


def normalise_host(value: Optional[bytes]) -> Optional[str]:
    """
    C{b"WWW.Test.com:8080"} -> C{"www.test.com"}; None for a missing or
    unreadable Host.
    """
    if not value:
        return None
    try:
        text = value.decode("ascii").strip().lower()
    except UnicodeDecodeError:
        return None
    if text.startswith("["):
        end = text.find("]")
        return text[1:end] if end > 0 else None
    host = text.rsplit(":", 1)[0] if text.count(":") == 1 else text
    host = host.rstrip(".")
    if not host or any(c.isspace() or c in "/@?#" for c in host):
        return None
    return host


def split_target(uri: bytes) -> tuple[Optional[bytes], bytes]:
    """
    Split a request target into (authority or None, origin-form target).
    An absolute-form target (C{http://other.example/x}) yields its authority,
    which is routed like any Host: cdnpull is never an open proxy.

    @raise ValueError: an absolute-form target that is not a URL.
    """
    lower = uri[:8].lower()
    if lower.startswith(b"http://") or lower.startswith(b"https://"):
        parts = urlsplit(uri)
        target = parts.path or b"/"
        if parts.query:
            target += b"?" + parts.query
        return parts.netloc.rsplit(b"@", 1)[-1], target
    return None, uri


class RoutingTable(Generic[T]):
    """An immutable lookup from host name to the value declared for it."""

    def __init__(self, entries: Iterable[tuple[str, T]]) -> None:
        self._exact: dict[str, T] = {}
        wildcards: list[tuple[str, T]] = []
        for name, value in entries:
            if name.startswith("*."):
                wildcards.append((name[1:], value))  # ".example.com"
            else:
                self._exact[name] = value
        # Most specific (longest suffix) first.
        self._wildcards = sorted(wildcards, key=lambda e: -len(e[0]))

    def lookup(self, host: Optional[str]) -> Optional[T]:
        if host is None:
            return None
        found = self._exact.get(host)
        if found is not None:
            return found
        for suffix, value in self._wildcards:
            if host.endswith(suffix) and len(host) > len(suffix):
                return value
        return None

    def values(self) -> list[T]:
        return list(self._exact.values()) + [v for _, v in self._wildcards]
