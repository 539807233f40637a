"""
Runtime changes to origins (docs/admin-api.md): the JSON shapes of the admin
API, the effective domains (config module plus changes), and the state file
that keeps the changes across restarts.

An override replaces a domain's C{origin} and C{standby} as a pair; the rest
of the domain (probes, cache rules, timeouts) always comes from the module.
Validation is the config's own (L{cdnpull.config.domain_problems}).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping, Optional

from twisted.logger import Logger

from ..config import Domain, Origin, S3Credentials, domain_problems
from ..errors import BadRequest
from ..files import write_private_atomically
from ..origins.kinds import kind_of, origin_from_json, origin_to_json

__all__ = [
    "BadRequest", "Override", "origin_from_json", "origin_to_json", "effective_domains",
    "StateFile", "check_domain", "http_signing", "warn_http_signing",
]

log = Logger()


@dataclass(frozen=True)
class Override:
    """A domain's runtime origins."""

    origin: Origin
    standby: Optional[Origin]  # None: no standby


def http_signing(domain: Domain) -> list[str]:
    """The fields of C{domain} whose bucket keys sign requests sent over plain http."""
    return [f for f, o in (("origin", domain.origin), ("standby", domain.standby))
            if o is not None and kind_of(o).signs_in_clear()]


def warn_http_signing(domain: Domain, logger: Any = None) -> None:
    for f in http_signing(domain):
        kind_of(getattr(domain, f)).warn_signing(domain.name, f, logger or log)


# -- effective domains ---------------------------------------------------------


def apply_override(base: Domain, override: Optional[Override]) -> Domain:
    if override is None:
        return base
    return replace(base, origin=override.origin, standby=override.standby)


def check_domain(domain: Domain) -> None:
    """The config's own validation of one (changed) domain."""
    problems = domain_problems(domain)
    if problems:
        raise BadRequest("; ".join(problems))


def effective_domains(bases: Iterable[Domain], overrides: dict) -> list[Domain]:
    return [apply_override(d, overrides.get(d.name)) for d in bases]


# -- the state file ---------------------------------------------------------------


class StateFile:
    """
    The runtime changes on disk: JSON, written by atomic replace (temporary
    file, fsync, rename, fsync of the directory) so that a crash leaves the
    old file or the new one, never a mix.  The file is created 0600 through
    an unpredictable temporary name opened exclusively (C{mkstemp}); a
    missing directory is created 0700.
    """

    VERSION = 1

    def __init__(self, path: Optional[str]) -> None:
        self.path = path

    def load(self, bases: dict, credentials: Optional[Mapping[str, S3Credentials]] = None) -> dict:
        """
        The overrides kept in the file, for the domains that still exist in
        C{bases} (name -> Domain).  A change that no longer validates (say,
        it names credentials the module stopped declaring) is dropped with a
        log line; a file that cannot be read is moved aside (loudly) and the
        node starts without overrides.
        """
        if self.path is None or not os.path.exists(self.path):
            return {}
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict) or not isinstance(data.get("domains"), dict):
                raise ValueError("not a cdnpull state file (no 'domains' object)")
            entries = data["domains"]
            out = {}
            for name, entry in entries.items():
                if name not in bases:
                    log.warn("state file {path}: dropping the runtime change of {domain}: the "
                             "config module no longer declares it", path=self.path, domain=name)
                    continue
                if not isinstance(entry, dict) or "origin" not in entry:
                    raise ValueError(f"{name}: entry must have 'origin'")
                try:
                    override = Override(
                        origin_from_json(entry["origin"], f"{name}.origin", credentials),
                        None if entry.get("standby") is None
                        else origin_from_json(entry["standby"], f"{name}.standby", credentials),
                    )
                    check_domain(apply_override(bases[name], override))
                except BadRequest as e:
                    log.error("state file {path}: dropping the runtime change of {domain}: {why}",
                              path=self.path, domain=name, why=str(e))
                    continue
                out[name] = override
            return out
        except (OSError, ValueError, UnicodeDecodeError) as e:
            aside = f"{self.path}.corrupt-{int(time.time())}"
            try:
                os.replace(self.path, aside)
                where = f"moved aside to {aside}"
            except OSError as move_error:
                where = f"could not be moved aside: {move_error}"
            log.critical("STATE FILE {path} IS UNREADABLE ({why}); it was {where}; starting "
                         "with the config module's origins only", path=self.path, why=str(e),
                         where=where)
            return {}

    def dumps(self, overrides: dict) -> bytes:
        data = {
            "version": self.VERSION,
            "domains": {
                name: {"origin": origin_to_json(o.origin), "standby": origin_to_json(o.standby)}
                for name, o in sorted(overrides.items())
            },
        }
        return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")

    def write(self, payload: bytes) -> None:
        """Atomic replace; runs in a thread (it fsyncs)."""
        if self.path is None:
            return
        write_private_atomically(self.path, payload, prefix=f".{os.path.basename(self.path)}.")
