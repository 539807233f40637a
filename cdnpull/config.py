"""
The public configuration API of cdnpull: immutable value objects and their
validation (docs/configuration.md).

A config module imports everything it needs from here::

    from cdnpull.config import (Settings, Domain, IPOrigin, DomainOrigin,
                                BucketOrigin, S3Credentials, Probe, CacheRule)

Constructors only normalise (lists become tuples, names are lower-cased);
L{validate} checks a whole configuration and reports every problem, each
naming the domain and the field.  This module knows nothing of Twisted or the
network, so it can be used by C{python -m cdnpull check} and the admin API
alike.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Optional, Sequence, Union
from urllib.parse import urlsplit

__all__ = [
    "ConfigError",
    "Settings",
    "Domain",
    "IPOrigin",
    "DomainOrigin",
    "BucketOrigin",
    "S3Credentials",
    "Probe",
    "CacheRule",
    "Certificate",
    "Config",
    "Address",
    "parse_address",
    "admin_is_loopback",
    "validate",
    "DEFAULT_BLOCK_FOR",
]

DEFAULT_BLOCK_FOR = 60.0
SCHEMES = ("http", "https", "follow")
DEFAULT_PORTS = {"http": 80, "https": 443}
# Client-sent headers the node drops unless Domain.forward_headers names
# them (cdnpull/headers.py): they steer an origin without being in the key.
STEERING_HEADERS = (
    "forwarded", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port",
    "x-forwarded-server", "x-forwarded-scheme", "x-forwarded-ssl", "x-real-ip",
    "x-forwarded-prefix", "x-forwarded-path", "x-forwarded-uri", "x-forwarded-protocol",
    "x-host", "x-url-scheme", "front-end-https",
    "true-client-ip", "x-client-ip", "client-ip", "x-cluster-client-ip",
    "cf-connecting-ip", "fastly-client-ip",
    "x-original-url", "x-rewrite-url", "x-original-host", "x-original-uri",
    "x-http-method-override", "x-http-method", "x-method-override",
)


class ConfigError(Exception):
    """
    A configuration is invalid.  C{str(error)} is one line naming the domain
    and the field of every problem found.
    """

    def __init__(self, problems: Union[str, Sequence[str]]) -> None:
        if isinstance(problems, str):
            problems = [problems]
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


def _tuple(value: object) -> tuple:
    if value is None:
        return ()
    if isinstance(value, (str, bytes)):
        return (value,)
    try:
        return tuple(value)  # type: ignore[arg-type]  # anything iterable
    except TypeError:
        return (value,)


# --------------------------------------------------------------------------
# Addresses


@dataclass(frozen=True, order=True)
class Address:
    """
    One origin address: an IP literal and a port (0 = the scheme's default).
    """

    host: str
    port: int = 0

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    def with_port(self, default: int) -> "Address":
        return self if self.port else Address(self.host, default)

    def __str__(self) -> str:
        # (Asked for every origin try, for its metrics and log: made once.)
        text = self.__dict__.get("_text")
        if text is None:
            host = f"[{self.host}]" if self.is_ipv6 else self.host
            text = f"{host}:{self.port}" if self.port else host
            object.__setattr__(self, "_text", text)
        return text


def parse_address(text: str, default_port: int = 0) -> Address:
    """
    Parse C{"1.2.3.4"}, C{"1.2.3.4:8080"}, C{"2001:db8::1"} or
    C{"[2001:db8::1]:8080"}.

    @raise ValueError: with a short reason when C{text} is not one of those.
    """
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a string")
    text = text.strip()
    port = default_port
    host = text
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: missing ']'")
        host = text[1:end]
        rest = text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected ':port' after ']'")
            port = _parse_port(rest[1:], text)
    elif text.count(":") == 1:
        host, _, portText = text.partition(":")
        port = _parse_port(portText, text)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 or IPv6 address") from None
    return Address(ip.compressed, port)


def _parse_port(text: str, whole: str) -> int:
    if not text.isdigit():
        raise ValueError(f"{whole!r}: port {text!r} is not a number")
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"{whole!r}: port {port} is outside 0-65535")
    return port


# --------------------------------------------------------------------------
# Origins


@dataclass(frozen=True)
class IPOrigin:
    """
    Several origin IP addresses, rotated round-robin ("multi-active").
    Entries may carry their own port: C{"1.2.3.4:8080"}, C{"[::1]:8080"}.
    """

    addresses: tuple = ()
    port: int = 0
    scheme: str = "http"
    verify: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "addresses", _tuple(self.addresses))

    def parsed_addresses(self) -> tuple[Address, ...]:
        """The addresses with their ports; call only on a validated origin."""
        return tuple(parse_address(a, self.port) for a in self.addresses)


@dataclass(frozen=True)
class DomainOrigin:
    """
    One origin hostname, resolved through DNS; every address it resolves to
    takes part in rotation and blocking.
    """

    host: str = ""
    port: int = 0
    scheme: str = "http"
    verify: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.host, str):
            object.__setattr__(self, "host", self.host.strip().lower().rstrip("."))


@dataclass(frozen=True)
class S3Credentials:
    """
    Keys for signing requests to a private bucket (AWS Signature V4).
    """

    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    session_token: Optional[str] = field(default=None, repr=False)
    # Environment variables that from_env() found missing; reported by
    # validate() with the domain's name.
    missing: tuple = ()
    # The prefix from_env() read (for messages; keys are never logged).
    env_prefix: Optional[str] = None
    # The name these keys were declared under in Settings(credentials=...):
    # the only way the admin API and the state file refer to keys.  Set by
    # Settings itself; not part of equality (same keys, same credentials).
    name: Optional[str] = field(default=None, compare=False)

    @classmethod
    def from_env(cls, prefix: str) -> "S3Credentials":
        """
        Read C{PREFIX_ACCESS_KEY_ID}, C{PREFIX_SECRET_ACCESS_KEY} and the
        optional C{PREFIX_SESSION_TOKEN}.  A missing variable is a config
        error naming it (reported when the config is validated).
        """
        names = (f"{prefix}_ACCESS_KEY_ID", f"{prefix}_SECRET_ACCESS_KEY")
        missing = tuple(n for n in names if not os.environ.get(n))
        return cls(
            access_key=os.environ.get(names[0], ""),
            secret_key=os.environ.get(names[1], ""),
            session_token=os.environ.get(f"{prefix}_SESSION_TOKEN") or None,
            missing=missing,
            env_prefix=prefix,
        )


@dataclass(frozen=True)
class BucketOrigin:
    """
    A bucket of an S3-compatible object store.  Host is always the bucket's
    own host; C{credentials=None} is a public-read bucket.
    """

    endpoint: str = ""
    bucket: str = ""
    style: str = "virtual"
    region: str = "us-east-1"
    credentials: Optional[S3Credentials] = None
    verify: bool = True

    @property
    def scheme(self) -> str:
        return urlsplit(self.endpoint).scheme.lower()

    @property
    def endpoint_host(self) -> str:
        return (urlsplit(self.endpoint).hostname or "").lower()

    @property
    def port(self) -> int:
        return urlsplit(self.endpoint).port or 0

    @property
    def host_header(self) -> str:
        """The Host every request to this bucket carries."""
        base = self.endpoint_host
        port = urlsplit(self.endpoint).port
        if port and port != DEFAULT_PORTS.get(self.scheme):
            base = f"{base}:{port}"
        if self.style == "virtual":
            return f"{self.bucket}.{base}"
        return base


Origin = Union[IPOrigin, DomainOrigin, BucketOrigin]


# --------------------------------------------------------------------------
# Probes, cache rules, domains, settings


@dataclass(frozen=True)
class Probe:
    """
    Active health probing of every origin address.  C{kind="http"} sends
    C{HEAD path} (healthy: any status below 500); C{kind="tcp"} only
    connects.  A failure blocks the address for C{block_for} seconds.
    """

    path: str = "/"
    interval: float = 5.0
    timeout: float = 3.0
    block_for: float = DEFAULT_BLOCK_FOR
    kind: str = "http"
    # The Host (and TLS server name) probes send; None: the domain's
    # origin_host, else its name.  A wildcard domain has no name of its own
    # to probe with: give one here (or origin_host).
    host: Optional[str] = None

    def __post_init__(self) -> None:
        if isinstance(self.host, str):
            object.__setattr__(self, "host", self.host.strip().lower())


@dataclass(frozen=True)
class CacheRule:
    """
    Overrides the origin's freshness for matching paths: a path prefix, or
    one of several suffixes.  C{ttl=0} means never cache.
    """

    prefix: Optional[str] = None
    suffixes: tuple = ()
    ttl: float = 0
    # Leave the query string out of the cache key for matching paths
    # (static files whose URLs carry tracking or version parameters).
    ignore_query: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "suffixes", _tuple(self.suffixes))

    def matches(self, path: str) -> bool:
        if self.prefix is not None and not path.startswith(self.prefix):
            return False
        if self.suffixes and not any(path.endswith(s) for s in self.suffixes):
            return False
        return True


DEFAULT_FAILOVER_ON = frozenset(range(400, 600))


@dataclass(frozen=True)
class Certificate:
    """
    An edge certificate for client HTTPS: C{cert_file} holds PEM
    certificates, the domain's own first, then its chain; C{key_file} its
    unencrypted PEM private key.  The files are read and checked at load and
    on every reload (see L{cdnpull.certs}).
    """

    cert_file: str
    key_file: str


@dataclass(frozen=True)
class Domain:
    """
    One accelerated domain (or C{*.example.com} wildcard) and its origins.
    """

    name: str
    origin: Origin
    standby: Optional[Origin] = None
    origin_host: Optional[str] = None
    probe: Optional[Probe] = Probe()
    cache: tuple = ()
    failover_on: frozenset = DEFAULT_FAILOVER_ON
    connect_timeout: float = 5.0
    first_byte_timeout: float = 30.0
    total_timeout: float = 60.0
    # Client-sent forwarding and override headers (X-Forwarded-Host,
    # Forwarded, X-Original-URL, ...) are dropped; the ones named here reach
    # the origin, and their values become part of the cache key.
    forward_headers: tuple = ()
    # Edge HTTPS: the domain's own certificate (else one from
    # Settings.certificates covering its name), plain-http requests answered
    # with a redirect to https, and a Strict-Transport-Security value.
    certificate: Optional[Certificate] = None
    https_only: bool = False
    hsts: Optional[str] = None

    def __post_init__(self) -> None:
        if isinstance(self.name, str):
            object.__setattr__(self, "name", self.name.strip().lower().rstrip("."))
        object.__setattr__(self, "cache", _tuple(self.cache))
        object.__setattr__(self, "forward_headers", tuple(
            h.strip().lower() if isinstance(h, str) else h for h in _tuple(self.forward_headers)))
        object.__setattr__(self, "failover_on", frozenset(_tuple(self.failover_on)))
        if isinstance(self.origin_host, str):
            object.__setattr__(self, "origin_host", self.origin_host.strip().lower())

    @property
    def is_wildcard(self) -> bool:
        return self.name.startswith("*.")

    @property
    def block_for(self) -> float:
        """How long a failing address is blocked (passive and active)."""
        return self.probe.block_for if self.probe is not None else DEFAULT_BLOCK_FOR


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_size(value: Union[int, str]) -> int:
    """C{"256MiB"} -> 268435456; an int passes through."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value!r} is negative")
        return value
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a size")
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", value)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"{value!r} is not a size like '256MiB'")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


@dataclass(frozen=True)
class Settings:
    """
    Node-wide settings.  Each C{twistd cdnpull} option overrides its field.
    """

    listen: tuple = ("tcp:8080",)
    admin: Optional[str] = "tcp:8081:interface=127.0.0.1"
    state_file: str = "cdnpull-state.json"
    cache_memory: Union[int, str] = "256MiB"
    cache_dir: Optional[str] = None
    cache_disk: Union[int, str] = "10GiB"
    admin_token_file: Optional[str] = None
    nameservers: tuple = ()
    origin_ca_file: Optional[str] = None
    access_log: Optional[str] = None
    max_connections_per_origin: int = 64
    # Larger objects are streamed without being stored.
    cache_max_object: Union[int, str] = "64MiB"
    # How long past its freshness a cached object may still be served when
    # every origin fails (0: never); the origin's own stale-if-error counts too.
    stale_if_error: float = 86400.0
    # Vary variants kept per URL (the least recently used one goes).
    max_variants: int = 32
    # Client connections (see cdnpull/http/server.py for what each refusal is).
    client_max_request_line: int = 8192
    client_max_header_line: int = 8192
    client_max_header_bytes: int = 32768
    client_max_headers: int = 100
    client_max_body: Union[int, str] = "1GiB"
    client_header_timeout: float = 30.0
    client_idle_timeout: float = 75.0
    client_send_timeout: float = 60.0
    # On SIGTERM, how long answers in progress may take to finish before the
    # origin connections close (idle client connections close at once).
    shutdown_grace: float = 10.0
    # Host names (besides IP literals and localhost) the admin listener
    # answers to; any other Host gets 421 (DNS rebinding).
    admin_hosts: tuple = ()
    # Keys the admin API may give a bucket origin, by name:
    # {"STATIC": S3Credentials.from_env("STATIC")}, used as
    # {"type": "bucket", ..., "credentials": "STATIC"}.
    credentials: dict = field(default_factory=dict, hash=False)
    # Targeted cache-control fields (RFC 9213) this node obeys instead of
    # Cache-Control and Expires, in precedence order; they are never
    # forwarded to clients.  () obeys none.
    targeted_cache_control: tuple = ("CDN-Cache-Control",)
    # Edge HTTPS (tls: listeners): certificates chosen by the name a client
    # asks for, and the one for clients that name none or an unknown one.
    certificates: tuple = ()
    default_certificate: Optional[Certificate] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "listen", _tuple(self.listen))
        object.__setattr__(self, "certificates", _tuple(self.certificates))
        object.__setattr__(self, "nameservers", _tuple(self.nameservers))
        object.__setattr__(self, "admin_hosts", tuple(
            h.strip().lower().rstrip(".") if isinstance(h, str) else h
            for h in _tuple(self.admin_hosts)))
        if isinstance(self.credentials, dict):
            object.__setattr__(self, "credentials", {
                k: replace(v, name=k) if isinstance(v, S3Credentials) and isinstance(k, str) else v
                for k, v in self.credentials.items()})
        object.__setattr__(self, "targeted_cache_control", _tuple(self.targeted_cache_control))

    def override(self, **changes: Any) -> "Settings":
        """A copy with the given fields replaced (C{None} is a value: C{admin=None} disables)."""
        return replace(self, **changes)


@dataclass(frozen=True)
class Config:
    """A whole validated configuration: settings and domains."""

    settings: Settings
    domains: tuple

    def domain(self, name: str) -> Optional[Domain]:
        for d in self.domains:
            if d.name == name.lower():
                return d
        return None


# --------------------------------------------------------------------------
# Validation

_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
_REGION = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")


def _hostname_problem(name: object) -> Optional[str]:
    if not isinstance(name, str) or not name:
        return f"{name!r} is not a hostname"
    if len(name) > 253:
        return f"{name!r} is longer than 253 characters"
    try:
        ascii_name = name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError:
        return f"{name!r} is not a valid hostname"
    labels = ascii_name.split(".")
    if not all(_LABEL.match(label) for label in labels):
        return f"{name!r} is not a valid hostname"
    return None


def _host_port_problem(value: object) -> Optional[str]:
    """A host name with an optional C{:port} (a Host header value)."""
    if not isinstance(value, str):
        return f"{value!r} is not a hostname"
    host, sep, port = value.partition(":")
    if sep and (e := _port_problem(int(port) if port.isdigit() else port)):
        return f"{value!r}: port {e}"
    return _hostname_problem(host)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _domain_name_problem(name: object) -> Optional[str]:
    if not isinstance(name, str) or not name:
        return f"{name!r} is not a domain name"
    check = name[2:] if name.startswith("*.") else name
    if "*" in check:
        return f"{name!r}: a wildcard is only allowed as '*.' at the start"
    problem = _hostname_problem(check)
    if problem:
        return problem
    if "." not in check and name.startswith("*."):
        return f"{name!r}: a wildcard needs at least two labels after '*.'"
    return None


def _port_problem(port: object) -> Optional[str]:
    if isinstance(port, bool) or not isinstance(port, int):
        return f"{port!r} is not a port number"
    if not 0 <= port <= 65535:
        return f"{port} is outside 0-65535"
    return None


def _positive(value: object) -> Optional[str]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{value!r} is not a number"
    if value <= 0:
        return f"{value!r} must be greater than 0"
    return None


# Edge HTTPS: only the structure here; cdnpull.certs reads and checks the files.

TLS_LISTEN_FORM = "tls:PORT[:interface=ADDR][:backlog=N]"
_HSTS_DIRECTIVE = re.compile(r"(?i)(max-age=\d{1,10}|includesubdomains|preload)\Z")


def is_tls_listen(description: object) -> bool:
    """A C{tls:} client listener (per-domain certificates chosen by SNI)."""
    return isinstance(description, str) and description.startswith("tls:")


def parse_tls_listen(description: str) -> tuple[int, dict]:
    """
    C{"tls:443:interface=127.0.0.1"} -> C{(443, {"interface": "127.0.0.1"})};
    a colon inside a value is escaped as C{\\:} (as in Twisted's C{tcp:}).

    @raise ValueError: naming the expected form.
    """
    parts = re.split(r"(?<!\\):", description)
    if parts[0] != "tls" or len(parts) < 2 or not parts[1].isdigit():
        raise ValueError(f"{description!r} is not {TLS_LISTEN_FORM}")
    port = int(parts[1])
    if port > 65535:
        raise ValueError(f"{description!r}: port {port} is outside 0-65535")
    options: dict = {}
    for part in parts[2:]:
        key, sep, value = part.partition("=")
        if not sep or key not in ("interface", "backlog") or not value:
            raise ValueError(f"{description!r}: unknown option {part!r} ({TLS_LISTEN_FORM})")
        if key == "backlog" and not value.isdigit():
            raise ValueError(f"{description!r}: backlog {value!r} is not a number")
        options[key] = value.replace("\\:", ":")
    return port, options


def _certificate_problems(cert: object, where: str) -> list[str]:
    if not isinstance(cert, Certificate):
        return [f"{where}: {cert!r} is not a Certificate(cert_file, key_file)"]
    return [f"{where}.{f}: must be a file path" for f in ("cert_file", "key_file")
            if not isinstance(getattr(cert, f), str) or not getattr(cert, f)]


def _hsts_problem(value: object) -> Optional[str]:
    example = "like 'max-age=31536000; includeSubDomains'"
    if not isinstance(value, str):
        return f"{value!r} is not a string {example}"
    directives = [d.strip() for d in value.split(";")]
    if (not all(_HSTS_DIRECTIVE.match(d) for d in directives)
            or sum(d.lower().startswith("max-age=") for d in directives) != 1):
        return f"{value!r} is not {example}"
    return None


def _origin_problems(origin: object, where: str, domain: Domain) -> list[str]:
    p: list[str] = []
    if isinstance(origin, IPOrigin):
        if isinstance(origin.scheme, str) and origin.scheme not in SCHEMES:
            p.append(f"{where}.scheme: {origin.scheme!r} is not one of {', '.join(SCHEMES)}")
        if (e := _port_problem(origin.port)) :
            p.append(f"{where}.port: {e}")
        if not origin.addresses:
            p.append(f"{where}.addresses: at least one address is required")
        seen = set()
        for i, a in enumerate(origin.addresses):
            try:
                parsed = parse_address(a, origin.port if isinstance(origin.port, int) else 0)
            except ValueError as bad:
                p.append(f"{where}.addresses[{i}]: {bad}")
                continue
            if parsed in seen:
                p.append(f"{where}.addresses[{i}]: {a!r} is listed twice")
            seen.add(parsed)
    elif isinstance(origin, DomainOrigin):
        if origin.scheme not in SCHEMES:
            p.append(f"{where}.scheme: {origin.scheme!r} is not one of {', '.join(SCHEMES)}")
        if (e := _port_problem(origin.port)):
            p.append(f"{where}.port: {e}")
        if (e := _hostname_problem(origin.host)):
            p.append(f"{where}.host: {e}")
        elif origin.host == domain.name:
            p.append(f"{where}.host: {origin.host!r} must differ from the accelerated domain")
        else:
            try:
                ipaddress.ip_address(origin.host)
                p.append(f"{where}.host: {origin.host!r} is an IP address; use IPOrigin")
            except ValueError:
                pass
    elif isinstance(origin, BucketOrigin):
        try:
            parts = urlsplit(origin.endpoint) if isinstance(origin.endpoint, str) else None
        except ValueError:  # e.g. an unclosed '[' (an admin body may say anything)
            parts = None
        if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            p.append(f"{where}.endpoint: {origin.endpoint!r} is not an http:// or https:// URL")
            parts = None
        else:
            try:
                parts.port
            except ValueError as bad_port:
                p.append(f"{where}.endpoint: {bad_port}")
            if not _is_ip_literal(parts.hostname) and (e := _hostname_problem(parts.hostname)):
                p.append(f"{where}.endpoint: {e}")
            elif not parts.hostname.isascii():
                p.append(f"{where}.endpoint: {parts.hostname!r}: write the host in its ASCII "
                         "(xn--) form; it is signed into every request")
            if parts.path not in ("", "/") or parts.query:
                p.append(f"{where}.endpoint: {origin.endpoint!r} must not have a path")
        if not isinstance(origin.bucket, str) or not _BUCKET.match(origin.bucket):
            p.append(f"{where}.bucket: {origin.bucket!r} is not a valid bucket name")
        if origin.style not in ("virtual", "path"):
            p.append(f"{where}.style: {origin.style!r} is not 'virtual' or 'path'")
        elif origin.style == "virtual" and parts is not None and parts.hostname:
            try:
                ipaddress.ip_address(parts.hostname)
                p.append(f"{where}.style: virtual-hosted style needs a host name endpoint, not "
                         f"{parts.hostname}; use style='path'")
            except ValueError:
                pass
        if not isinstance(origin.region, str) or not origin.region:
            p.append(f"{where}.region: a region name is required")
        elif not _REGION.match(origin.region):
            # It goes into every signature's credential scope.
            p.append(f"{where}.region: {origin.region!r} is not a region name "
                     "(ASCII letters, digits, '-', '_' and '.')")
        creds = origin.credentials
        if creds is not None:
            if not isinstance(creds, S3Credentials):
                p.append(f"{where}.credentials: must be S3Credentials or None")
            elif creds.missing:
                p.append(
                    f"{where}.credentials: environment variable "
                    f"{', '.join(creds.missing)} is not set"
                )
            elif not creds.access_key or not creds.secret_key:
                p.append(f"{where}.credentials: access_key and secret_key are required")
    else:
        p.append(
            f"{where}: {type(origin).__name__} is not an origin "
            "(IPOrigin, DomainOrigin or BucketOrigin)"
        )
    if hasattr(origin, "verify") and not isinstance(getattr(origin, "verify"), bool):
        p.append(f"{where}.verify: must be True or False")
    return p


def _domain_problems(d: object) -> list[str]:
    if not isinstance(d, Domain):
        return [f"domains: {d!r} is not a Domain"]
    name = d.name if isinstance(d.name, str) else repr(d.name)
    p: list[str] = []
    if (e := _domain_name_problem(d.name)):
        p.append(f"{name}: name: {e}")
    p += [f"{name}: {m}" for m in _origin_problems(d.origin, "origin", d)]
    if d.standby is not None:
        if isinstance(d.standby, BucketOrigin):
            p.append(f"{name}: standby: a standby must be an IPOrigin or DomainOrigin, not a bucket")
        elif isinstance(d.origin, BucketOrigin):
            p.append(
                f"{name}: standby: a standby is only allowed when the primary origin "
                "is an IPOrigin or DomainOrigin"
            )
        else:
            p += [f"{name}: {m}" for m in _origin_problems(d.standby, "standby", d)]
    if d.origin_host is not None:
        if isinstance(d.origin, BucketOrigin):
            p.append(f"{name}: origin_host: a bucket origin always uses the bucket's own host")
        elif (e := _host_port_problem(d.origin_host)):
            p.append(f"{name}: origin_host: {e}")
    if d.forward_headers and isinstance(d.origin, BucketOrigin):
        p.append(f"{name}: forward_headers: a bucket origin only receives Range, conditional, "
                 "Accept-Encoding and User-Agent headers")
    for i, h in enumerate(d.forward_headers):
        if h not in STEERING_HEADERS:
            p.append(f"{name}: forward_headers[{i}]: {h!r} is not one of the headers the node "
                     f"drops ({', '.join(STEERING_HEADERS)})")
    if d.probe is not None:
        if not isinstance(d.probe, Probe):
            p.append(f"{name}: probe: must be a Probe or None")
        else:
            for f in ("interval", "timeout", "block_for"):
                if (e := _positive(getattr(d.probe, f))):
                    p.append(f"{name}: probe.{f}: {e}")
            if d.probe.kind not in ("http", "tcp"):
                p.append(f"{name}: probe.kind: {d.probe.kind!r} is not 'http' or 'tcp'")
            if not isinstance(d.probe.path, str) or not d.probe.path.startswith("/"):
                p.append(f"{name}: probe.path: {d.probe.path!r} must start with '/'")
            if d.probe.host is not None:
                if isinstance(d.origin, BucketOrigin):
                    p.append(f"{name}: probe.host: a bucket origin is always probed with the "
                             "bucket's own host")
                elif (e := _host_port_problem(d.probe.host)):
                    p.append(f"{name}: probe.host: {e}")
            elif (d.is_wildcard and d.origin_host is None and d.probe.kind == "http"
                  and any(getattr(o, "scheme", None) == "https" and getattr(o, "verify", True)
                          for o in (d.origin, d.standby) if not isinstance(o, BucketOrigin))):
                # A probe with the bare name would fail the origin's
                # certificate (*.example.com does not cover example.com) and
                # block every address at start.
                p.append(f"{name}: probe.host: a wildcard domain with a verified https origin "
                         "needs a name to probe with (Probe(host=...) or origin_host)")
    for i, rule in enumerate(d.cache):
        if not isinstance(rule, CacheRule):
            p.append(f"{name}: cache[{i}]: {rule!r} is not a CacheRule")
            continue
        if rule.prefix is None and not rule.suffixes:
            p.append(f"{name}: cache[{i}]: give a prefix, suffixes or both")
        if rule.prefix is not None and (not isinstance(rule.prefix, str) or not rule.prefix.startswith("/")):
            p.append(f"{name}: cache[{i}].prefix: {rule.prefix!r} must start with '/'")
        if not all(isinstance(s, str) and s for s in rule.suffixes):
            p.append(f"{name}: cache[{i}].suffixes: must be non-empty strings")
        if not isinstance(rule.ignore_query, bool):
            p.append(f"{name}: cache[{i}].ignore_query: must be True or False")
        if isinstance(rule.ttl, bool) or not isinstance(rule.ttl, (int, float)) or rule.ttl < 0:
            p.append(f"{name}: cache[{i}].ttl: {rule.ttl!r} must be a number >= 0")
    for status in d.failover_on:
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            p.append(f"{name}: failover_on: {status!r} is not an HTTP status")
            break
    for f in ("connect_timeout", "first_byte_timeout", "total_timeout"):
        if (e := _positive(getattr(d, f))):
            p.append(f"{name}: {f}: {e}")
    if d.certificate is not None:
        p += [f"{name}: {m}" for m in _certificate_problems(d.certificate, "certificate")]
    if not isinstance(d.https_only, bool):
        p.append(f"{name}: https_only: must be True or False")
    if d.hsts is not None and (e := _hsts_problem(d.hsts)):
        p.append(f"{name}: hsts: {e}")
    return p


def _settings_problems(s: object) -> list[str]:
    if not isinstance(s, Settings):
        return ["settings: must be a Settings(...)"]
    p: list[str] = []
    if not s.listen:
        p.append("settings.listen: at least one endpoint is required")
    for i, e in enumerate(s.listen):
        if not isinstance(e, str) or not e:
            p.append(f"settings.listen[{i}]: {e!r} is not an endpoint string")
        elif is_tls_listen(e):
            try:
                parse_tls_listen(e)
            except ValueError as why:
                p.append(f"settings.listen[{i}]: {why}")
    for i, c in enumerate(s.certificates):
        p += _certificate_problems(c, f"settings.certificates[{i}]")
    if s.default_certificate is not None:
        p += _certificate_problems(s.default_certificate, "settings.default_certificate")
    if s.admin is not None and not isinstance(s.admin, str):
        p.append(f"settings.admin: {s.admin!r} is not an endpoint string")
    elif is_tls_listen(s.admin):
        p.append("settings.admin: tls: is for client listeners (use ssl:PORT:privateKey=...)")
    if isinstance(s.stale_if_error, bool) or not isinstance(s.stale_if_error, (int, float)) or s.stale_if_error < 0:
        p.append("settings.stale_if_error: must be a number of seconds >= 0")
    for f in ("client_max_request_line", "client_max_header_line", "client_max_header_bytes",
              "client_max_headers"):
        v = getattr(s, f)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            p.append(f"settings.{f}: must be a whole number >= 1")
    for f in ("client_header_timeout", "client_idle_timeout", "client_send_timeout"):
        if (e := _positive(getattr(s, f))):
            p.append(f"settings.{f}: {e}")
    grace = s.shutdown_grace
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not 0 <= grace < float("inf"):
        p.append("settings.shutdown_grace: must be a number of seconds >= 0")
    for f in ("cache_memory", "cache_disk", "cache_max_object", "client_max_body"):
        try:
            parse_size(getattr(s, f))
        except ValueError as e:
            p.append(f"settings.{f}: {e}")
    for i, ns in enumerate(s.nameservers):
        try:
            parse_address(ns)
        except ValueError as e:
            p.append(f"settings.nameservers[{i}]: {e}")
    if s.origin_ca_file is not None and not os.path.isfile(s.origin_ca_file):
        p.append(f"settings.origin_ca_file: {s.origin_ca_file!r} does not exist")
    if s.admin_token_file is not None and not os.path.isfile(s.admin_token_file):
        p.append(f"settings.admin_token_file: {s.admin_token_file!r} does not exist")
    if isinstance(s.max_variants, bool) or not isinstance(s.max_variants, int) or not 1 <= s.max_variants <= 4096:
        p.append("settings.max_variants: must be a whole number from 1 to 4096")
    p += _admin_problems(s)
    if isinstance(s.max_connections_per_origin, bool) or not isinstance(s.max_connections_per_origin, int) or s.max_connections_per_origin < 1:
        p.append("settings.max_connections_per_origin: must be a whole number >= 1")
    seen_fields: set = set()
    for i, name in enumerate(s.targeted_cache_control):
        where = f"settings.targeted_cache_control[{i}]"
        if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name):
            p.append(f"{where}: {name!r} is not a header field name")
        elif name.lower() in ("cache-control", "expires", "pragma"):
            p.append(f"{where}: {name} is not a targeted field (it is what targeted fields override)")
        elif name.lower() in seen_fields:
            p.append(f"{where}: {name} is listed twice")
        else:
            seen_fields.add(name.lower())
    return p


_CREDENTIALS_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")


def _admin_problems(s: Settings) -> list[str]:
    p: list[str] = []
    for i, h in enumerate(s.admin_hosts):
        if (e := _hostname_problem(h)):
            p.append(f"settings.admin_hosts[{i}]: {e}")
    if (isinstance(s.admin, str) and s.admin and s.admin_token_file is None
            and not admin_is_loopback(s.admin)):
        p.append(f"settings.admin_token_file: required when the admin listener "
                 f"({s.admin!r}) is not on a loopback interface")
    if not isinstance(s.credentials, dict):
        p.append("settings.credentials: must be a dict of name -> S3Credentials")
        return p
    for name, creds in s.credentials.items():
        if not isinstance(name, str) or not _CREDENTIALS_NAME.match(name):
            p.append(f"settings.credentials: {name!r} is not a name (letters, digits, '_.-')")
        elif not isinstance(creds, S3Credentials):
            p.append(f"settings.credentials[{name!r}]: must be S3Credentials")
        elif creds.missing:
            p.append(f"settings.credentials[{name!r}]: environment variable "
                     f"{', '.join(creds.missing)} is not set")
        elif not creds.access_key or not creds.secret_key:
            p.append(f"settings.credentials[{name!r}]: access_key and secret_key are required")
    return p


def _endpoint_parts(description: str) -> list[str]:
    """A Twisted endpoint string split on its unescaped colons."""
    parts, current, escaped = [], "", False
    for ch in description:
        if escaped:
            current, escaped = current + ch, False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


def admin_is_loopback(description: str) -> bool:
    """
    Whether an admin endpoint string listens only on this machine: a UNIX
    socket, or tcp/tcp6/ssl with a loopback C{interface}.  Anything else
    (no interface, a wildcard, a name, an unknown endpoint type) is not.
    """
    parts = _endpoint_parts(description.strip())
    kind = parts[0].lower()
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6", "ssl"):
        return False
    keywords = dict(a.split("=", 1) for a in parts[1:] if "=" in a)
    positional = [a for a in parts[1:] if "=" not in a]
    interface = keywords.get("interface")
    if interface is None and kind == "tcp" and len(positional) >= 2:
        interface = positional[1]
    try:
        return ipaddress.ip_address((interface or "").strip("[]")).is_loopback
    except ValueError:
        return False


def domain_problems(domain: object) -> list[str]:
    """Every problem of one domain, each naming it and the field."""
    return _domain_problems(domain)


def validate(domains: Iterable[object], settings: object = None) -> Config:
    """
    Check a whole configuration.

    @return: a L{Config} of the (normalised) settings and domains.
    @raise ConfigError: naming every problem found.
    """
    if settings is None:
        settings = Settings()
    problems = _settings_problems(settings)
    if isinstance(domains, (str, bytes)) or not isinstance(domains, Iterable):
        raise ConfigError(problems + ["domains: must be a list of Domain"])
    domains = tuple(domains)
    if not domains:
        problems.append("domains: at least one Domain is required")
    seen: set[str] = set()
    for d in domains:
        problems += _domain_problems(d)
        if isinstance(d, Domain) and isinstance(d.name, str):
            if d.name in seen:
                problems.append(f"{d.name}: name: declared more than once")
            seen.add(d.name)
    if isinstance(settings, Settings) and not (
            settings.certificates or settings.default_certificate
            or any(isinstance(d, Domain) and d.certificate is not None for d in domains)):
        problems += [f"settings.listen[{i}]: a tls: listener needs certificates: set "
                     "default_certificate, certificates or a domain's certificate"
                     for i, e in enumerate(settings.listen) if is_tls_listen(e)]
    if problems:
        raise ConfigError(problems)
    assert isinstance(settings, Settings)
    checked = tuple(d for d in domains if isinstance(d, Domain))
    if settings.credentials:
        checked = tuple(_name_credentials(d, settings.credentials) for d in checked)
    return Config(settings=settings, domains=checked)


def _name_credentials(domain: Domain, declared: dict) -> Domain:
    """
    A bucket signed with keys equal to ones declared in
    C{Settings.credentials} carries their name, so that the admin API shows
    it and a GET answer can be PUT back as it is.
    """
    changes: dict[str, Any] = {}
    for f in ("origin", "standby"):
        o = getattr(domain, f)
        if isinstance(o, BucketOrigin) and o.credentials is not None and o.credentials.name is None:
            for creds in declared.values():
                if creds == o.credentials:
                    changes[f] = replace(o, credentials=creds)
                    break
    return replace(domain, **changes) if changes else domain
