"""
C{twistd cdnpull}: the command-line options and C{makeService}.  This is the
only module that touches the global reactor.
"""

from __future__ import annotations

import gc
import sys

from twisted.python import usage

from .config import ConfigError
from .loader import load_config

__all__ = ["Options", "makeService"]


class Options(usage.Options):
    synopsis = "--config PATH [--listen ENDPOINT ...] [--admin ENDPOINT|none] [--state PATH]"
    longdesc = "cdnpull: a CDN edge node that pulls from origins with failover."

    optParameters = [
        ["config", "c", None, "The Python config module (required)."],
        ["admin", None, None,
         "Admin API + console listener, a Twisted endpoint string; 'none' disables it "
         "[default: tcp:8081:interface=127.0.0.1]."],
        ["state", None, None,
         "File that keeps runtime changes made through the admin API "
         "[default: cdnpull-state.json]."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, endpoint: str) -> None:
        """Client listener, a Twisted endpoint string; repeatable [default: tcp:8080]."""
        self["listen"].append(endpoint)

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config PATH is required")


def overrides(options: Options) -> dict:
    """The Settings fields the command line replaces."""
    out: dict = {}
    if options["listen"]:
        out["listen"] = tuple(options["listen"])
    if options["admin"] is not None:
        out["admin"] = None if options["admin"].lower() == "none" else options["admin"]
    if options["state"] is not None:
        out["state_file"] = options["state"]
    return out


def makeService(options: Options):
    from twisted.internet import reactor

    from .compat import lean_dispatch
    from .service import build_service

    try:
        loaded = load_config(options["config"], **overrides(options))
        service = build_service(loaded, reactor)
    except ConfigError as e:
        # One line, no traceback, non-zero exit.
        sys.stderr.write(f"cdnpull: config error: {e}\n")
        sys.stderr.flush()
        raise SystemExit(1)
    # What start-up made (modules, config, Twisted) lives as long as the
    # process: out of the collector's sight, a full collection no longer
    # walks it (under load those walks were several per cent of a miss).
    gc.collect()
    gc.freeze()
    # Socket events reach their connections without a legacy log context
    # pushed and popped around each (compat.lean_dispatch).
    lean_dispatch(reactor)
    return service
