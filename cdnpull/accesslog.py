"""
The access log: one line per request in the combined format, followed by the
fields a CDN operator needs (domain, cache status, origin group, origin
address, origin time, total time).

 - C{Settings(access_log=None)} (the default): C{twisted.logger} events
   (namespace C{cdnpull.access}), so C{twistd -n} shows the traffic.  The
   lines of up to a second (or 1,000 lines) go out as one event, one line
   each (formatting an event costs more than a whole cache hit: one per
   request would halve the node's speed); its C{line} field holds them,
   C{access_lines} counts them;
 - C{Settings(access_log=PATH)}: lines appended to that file through a
   buffer, written at least once a second and on shutdown (one write for
   many requests), reopened on SIGHUP (after logrotate moved it);
 - C{Settings(access_log="off")}: nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import IO, Any, Optional

from twisted.logger import Logger

__all__ = ["AccessRecord", "AccessLog", "format_record", "FLUSH_SECONDS"]

FLUSH_SECONDS = 1.0
FLUSH_BYTES = 64 * 1024
FLUSH_LINES = 1000  # lines in one twisted.logger event at most

# (At module level: a Logger that is a class attribute names its events
# after the class, whatever namespace it was given.)
_log = Logger(namespace="cdnpull.access")


@dataclass
class AccessRecord:
    client: str
    method: str
    uri: str
    version: str
    status: int
    sent: int
    referer: str
    user_agent: str
    domain: str
    cache: str
    group: str
    origin: str
    origin_ms: Optional[float]
    total_ms: float
    when: float


def _q(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"') if value else "-"


_stamp_cache: list = [None, ""]


def _stamp(when: float) -> str:
    second = int(when)
    if _stamp_cache[0] != second:
        _stamp_cache[0] = second
        _stamp_cache[1] = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(second))
    return _stamp_cache[1]


def access_line(client: str, method: str, uri: str, version: str, status: int, sent: int,
                referer: str, agent: str, when: float, domain: str, cache: str, group: str,
                origin: str, origin_ms: Optional[float], total_ms: float) -> str:
    """One access line: the combined format, then the CDN fields (made in one piece)."""
    ms = "-" if origin_ms is None else f"{origin_ms:.0f}"
    return (f'{client} - - [{_stamp(when)}] "{_q(method)} {_q(uri)} {version}" '
            f'{status} {sent} "{_q(referer)}" "{_q(agent)}" '
            f"domain={domain or '-'} cache={cache} group={group or '-'} origin={origin or '-'} "
            f"origin_ms={ms} total_ms={total_ms:.0f}")


def format_record(r: AccessRecord) -> str:
    return access_line(r.client, r.method, r.uri, r.version, r.status, r.sent, r.referer,
                       r.user_agent, r.when, r.domain, r.cache, r.group, r.origin, r.origin_ms,
                       r.total_ms)


class AccessLog:
    """
    @param path: None (a twisted.logger event per request), C{"off"}, or a
        file to append to.
    @param clock: schedules the flush of a file's buffer (needed with a path).
    """


    def __init__(self, path: Optional[str] = None, clock: Any = None) -> None:
        self.off = path == "off"
        self.path = None if self.off else path
        self.clock = clock
        self._file: Optional[IO[bytes]] = None
        self._buffer: list = []
        self._buffered = 0
        self._flush_call: Any = None
        if self.path:
            self._file = open(self.path, "ab")

    def reopen(self) -> None:
        """After logrotate moved the file (SIGHUP): continue in a new one."""
        if self.path:
            self.flush()
            old, self._file = self._file, open(self.path, "ab")
            if old is not None:
                old.close()

    def record(self, r: AccessRecord) -> None:
        if not self.off:
            self.write_line(format_record(r))

    def answered(self, client: str, method: bytes, uri: bytes, version: bytes, status: int,
                 sent: int, fields: dict, domain: str, when: float, cache: str = "HIT",
                 group: str = "cache", origin: str = "-", origin_ms: Optional[float] = None,
                 total_ms: float = 0.0) -> None:
        """
        A request answered by the connection itself (no Request object): a
        fresh hit, or an uncacheable miss relayed by L{cdnpull.direct}.

        @param fields: the request headers, lower-case name -> [values].
        """
        if self.off:
            return
        referer = fields.get(b"referer")
        agent = fields.get(b"user-agent")
        self.write_line(access_line(
            client, method.decode("latin-1"), uri.decode("latin-1"), version.decode("latin-1"),
            status, sent, referer[0].decode("latin-1") if referer else "",
            agent[0].decode("latin-1") if agent else "", when, domain, cache, group, origin,
            origin_ms, total_ms))

    def write_line(self, line: str) -> None:
        """One access line: to the file's buffer, or to the next event."""
        if self._file is not None:
            data = (line + "\n").encode("utf-8", "replace")
            self._buffer.append(data)
            self._buffered += len(data)
            full = self._buffered >= FLUSH_BYTES
        else:
            self._buffer.append(line)
            full = len(self._buffer) >= FLUSH_LINES
        if full or self.clock is None:
            self.flush()
        elif self._flush_call is None:
            self._flush_call = self.clock.callLater(FLUSH_SECONDS, self._timed_flush)

    def _timed_flush(self) -> None:
        self._flush_call = None
        self.flush()

    def flush(self) -> None:
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if not self._buffer:
            return
        if self._file is not None:
            data = b"".join(self._buffer)
            self._buffer.clear()
            self._buffered = 0
            self._file.write(data)
            self._file.flush()
        elif not self.off:
            lines, self._buffer = self._buffer, []
            _log.info("{line}", line="\n".join(lines), access_lines=len(lines))

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
