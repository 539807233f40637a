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
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping, Optional

from twisted.logger import Logger

from .config import (
    BucketOrigin,
    Domain,
    DomainOrigin,
    IPOrigin,
    domain_problems,
)

__all__ = [
    "BadRequest", "Override", "origin_from_json", "origin_to_json", "effective_domains",
    "StateFile", "check_domain", "http_signing", "warn_http_signing",
]

log = Logger()


class BadRequest(ValueError):
    """A change the API refuses: the message is one line naming the field."""


@dataclass(frozen=True)
class Override:
    """A domain's runtime origins."""

    origin: Any
    standby: Any  # None: no standby


# -- JSON <-> config objects -------------------------------------------------


def origin_to_json(origin: Any) -> Optional[dict]:
    if origin is None:
        return None
    if isinstance(origin, IPOrigin):
        return {"type": "ips", "addresses": list(origin.addresses), "port": origin.port,
                "scheme": origin.scheme, "verify": origin.verify}
    if isinstance(origin, DomainOrigin):
        return {"type": "domain", "host": origin.host, "port": origin.port,
                "scheme": origin.scheme, "verify": origin.verify}
    if isinstance(origin, BucketOrigin):
        out = {"type": "bucket", "endpoint": origin.endpoint, "bucket": origin.bucket,
               "style": origin.style, "region": origin.region, "verify": origin.verify,
               "scheme": origin.scheme, "port": origin.port, "signed": origin.credentials is not None}
        # Keys are only ever named, never written out: by the name the config
        # module declared them under (Settings.credentials).
        name = getattr(origin.credentials, "name", None)
        if name:
            out["credentials"] = name
        return out
    raise TypeError(f"not an origin: {origin!r}")


_FIELDS = {
    "ips": {"type", "addresses", "port", "scheme", "verify"},
    "domain": {"type", "host", "port", "scheme", "verify"},
    "bucket": {"type", "endpoint", "bucket", "style", "region", "verify", "credentials"},
}
# What a GET answer shows beside the fields: accepted back and ignored, so
# that an answer can be edited and PUT.
_DISPLAY_ONLY = {"role", "down", "dns", "configured_addresses", "signed"}
_DISPLAY_ONLY_UNLESS_IPS = {"addresses", "scheme", "port"}

_TYPES = {"scheme": str, "verify": bool, "host": str, "endpoint": str, "bucket": str,
          "style": str, "region": str}


def origin_from_json(data: Any, where: str, credentials: Optional[Mapping[str, Any]] = None) -> Any:
    """
    An origin object from the API's JSON, or L{BadRequest} naming the field.
    Values are checked for their JSON type here; everything else is checked
    by the config's own validation.

    @param credentials: the config module's C{Settings.credentials}: the only
        keys a bucket set here may sign with, referred to by name.
    """
    if not isinstance(data, dict):
        raise BadRequest(f"{where}: must be a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise BadRequest(f"{where}.type: must be 'ips', 'domain' or 'bucket'")
    signed = data.get("signed") if kind == "bucket" else None
    data = {k: v for k, v in data.items() if k not in _DISPLAY_ONLY}
    if kind == "bucket":
        data = {k: v for k, v in data.items() if k not in _DISPLAY_ONLY_UNLESS_IPS}
    elif kind == "domain":
        data.pop("addresses", None)
    elif isinstance(data.get("addresses"), list):
        # GET answers list addresses as objects with live state.
        data["addresses"] = [_address_text(a, f"{where}.addresses[{i}]")
                             for i, a in enumerate(data["addresses"])]
    if "credentials_env" in data and kind == "bucket":
        raise BadRequest(f"{where}.credentials_env: not accepted; name keys declared in the "
                         "config module's Settings(credentials=...) with 'credentials'")
    extra = set(data) - _FIELDS[kind]
    if extra:
        raise BadRequest(f"{where}.{sorted(extra)[0]}: unknown field for type {kind!r}")
    for name, t in _TYPES.items():
        if name in data and not isinstance(data[name], t):
            raise BadRequest(f"{where}.{name}: must be a {'boolean' if t is bool else 'string'}")
    if "port" in data and (isinstance(data["port"], bool) or not isinstance(data["port"], int)):
        raise BadRequest(f"{where}.port: must be a whole number")
    common = {k: data[k] for k in ("port", "scheme", "verify") if k in data}
    if kind == "ips":
        addresses = data.get("addresses")
        if not isinstance(addresses, list) or not all(isinstance(a, str) for a in addresses):
            raise BadRequest(f"{where}.addresses: must be a list of strings")
        return IPOrigin(addresses, **common)
    if kind == "domain":
        if "host" not in data:
            raise BadRequest(f"{where}.host: is required")
        return DomainOrigin(data["host"], **common)
    fields = {k: data[k] for k in ("endpoint", "bucket", "style", "region", "verify") if k in data}
    return BucketOrigin(credentials=_named_credentials(data, signed, where, credentials or {}),
                        **fields)


def _named_credentials(data: dict, signed: Any, where: str, declared: Mapping[str, Any]) -> Any:
    name = data.get("credentials")
    if name is None:
        if signed is True:
            # A GET answer of a bucket signed with keys the module did not
            # name: PUT back as it is, it must not silently lose its keys.
            raise BadRequest(f"{where}.credentials: this bucket is signed; name keys declared in "
                             "Settings(credentials=...), or set 'signed' to false")
        return None
    if not isinstance(name, str):
        raise BadRequest(f"{where}.credentials: must be a string naming keys declared in "
                         "Settings(credentials=...), or null")
    creds = declared.get(name)
    if creds is None:
        # Says nothing of the environment: only what the module declared counts.
        raise BadRequest(f"{where}.credentials: {name[:64]!r} is not a name declared in the "
                         "config module's Settings(credentials=...)")
    return creds


def http_signing(domain: Domain) -> list[str]:
    """The fields of C{domain} whose bucket keys sign requests sent over plain http."""
    return [f for f, o in (("origin", domain.origin), ("standby", domain.standby))
            if isinstance(o, BucketOrigin) and o.credentials is not None and o.scheme == "http"]


def warn_http_signing(domain: Domain, logger: Any = None) -> None:
    for f in http_signing(domain):
        (logger or log).warn(
            "{domain}: {field}: bucket {bucket} is signed over plain http ({endpoint}): the "
            "signed requests and any session token cross the network in clear text; use "
            "https", domain=domain.name, field=f, bucket=getattr(domain, f).bucket,
            endpoint=getattr(domain, f).endpoint)


def _address_text(a: Any, where: str) -> Any:
    if isinstance(a, dict) and "address" in a:
        host, port = a.get("address"), a.get("port", 0)
        if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int):
            raise BadRequest(f"{where}: must be a string such as '10.0.0.1:8080'")
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{port}" if port else host
    return a


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

    def load(self, bases: dict, credentials: Optional[Mapping[str, Any]] = None) -> dict:
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
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(self.path)}.", suffix=".tmp",
                                   dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
