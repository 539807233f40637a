"""
The access log: one line per request in the combined format, followed by the
fields a CDN operator needs (domain, cache status, origin group, origin
address, origin time, total time).  Emitted as a structured
C{twisted.logger} event (namespace C{cdnpull.access}, every field kept) and,
when C{Settings(access_log=PATH)} is set, appended to that file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import IO, Optional

from twisted.logger import Logger

__all__ = ["AccessRecord", "AccessLog", "format_record"]


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


def format_record(r: AccessRecord) -> str:
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(r.when))
    origin_ms = "-" if r.origin_ms is None else f"{r.origin_ms:.0f}"
    return (
        f'{r.client} - - [{stamp}] "{_q(r.method)} {_q(r.uri)} {r.version}" '
        f'{r.status} {r.sent} "{_q(r.referer)}" "{_q(r.user_agent)}" '
        f"domain={r.domain or '-'} cache={r.cache} group={r.group or '-'} "
        f"origin={r.origin or '-'} origin_ms={origin_ms} total_ms={r.total_ms:.0f}"
    )


class AccessLog:
    log = Logger(namespace="cdnpull.access")

    def __init__(self, path: Optional[str] = None) -> None:
        self.path = path
        self._file: Optional[IO[str]] = None
        if path:
            # Line-buffered append: one small write per request, as nginx does.
            self._file = open(path, "a", buffering=1, encoding="utf-8")

    def reopen(self) -> None:
        """After logrotate moved the file (SIGHUP): continue in a new one."""
        if self.path:
            old, self._file = self._file, open(self.path, "a", buffering=1, encoding="utf-8")
            if old is not None:
                old.close()

    def record(self, r: AccessRecord) -> None:
        line = format_record(r)
        self.log.info("{line}", line=line, **{f"access_{k}": v for k, v in vars(r).items()})
        if self._file is not None:
            self._file.write(line + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
