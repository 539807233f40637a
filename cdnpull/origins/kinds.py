"""
One adapter per kind of origin (docs/configuration.md, docs/origins.md,
docs/admin-api.md): everything that differs between a set of IP addresses
(C{IPOrigin}), a hostname resolved through DNS (C{DomainOrigin}) and an
S3-compatible bucket (C{BucketOrigin}).

An adapter is chosen once, when an origin group is built (L{kind_of}); from
then on the failover chain, the probes, the DNS watcher, the admin API and
C{python -m cdnpull check} ask the adapter, never which kind the origin is.
This is the only module (with L{cdnpull.config}, which validates them) that
tells the kinds apart.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping, Optional, Union

from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from ..config import (
    Address,
    BucketOrigin,
    Domain,
    DomainOrigin,
    IPOrigin,
    S3Credentials,
    parse_address,
)
from ..compat import copy_headers
from ..errors import BadRequest
from .bucket import prepare_bucket, strip_store_headers
from .buffered import read_whole

__all__ = ["OriginKind", "host_field", "kind_of", "origin_from_json", "origin_to_json", "BadRequest"]

ConfigOrigin = Union[IPOrigin, DomainOrigin, BucketOrigin]

# S3 error codes that mean "your credentials or signature are wrong".
SIGNATURE_ERRORS = {"SignatureDoesNotMatch", "InvalidAccessKeyId", "AuthorizationHeaderMalformed",
                    "InvalidToken", "ExpiredToken", "RequestTimeTooSkewed"}


def s3_error_code(body: bytes) -> str:
    start = body.find(b"<Code>")
    end = body.find(b"</Code>", start)
    if start < 0 or end < 0:
        return ""
    return body[start + 6:end].decode("utf-8", "replace")[:64]


class OriginKind:
    """
    What the rest of the node needs to know about an origin, whatever its
    kind.  Subclasses override what differs.

    @ivar origin: the config object the adapter was made for.
    """

    # The "type" of the admin API's JSON.
    type: ClassVar[str] = ""
    # The request methods this kind of origin serves (None: any).
    methods: ClassVar[Optional[tuple[bytes, ...]]] = None
    # Whether it answers a Range of several ranges as asked (S3 stores send
    # the whole object: they get one covering range instead).
    several_ranges: ClassVar[bool] = True

    log = Logger()

    def __init__(self, origin: Any) -> None:
        self.origin = origin

    # -- connecting --------------------------------------------------------

    @property
    def verify(self) -> bool:
        return bool(self.origin.verify)

    @property
    def port(self) -> int:
        return int(self.origin.port or 0)

    def scheme(self, client_scheme: str) -> str:
        """The scheme of a request to this origin for a client on C{client_scheme}."""
        scheme: str = self.origin.scheme
        return client_scheme if scheme == "follow" else scheme

    def sends_client_name(self, domain: Domain) -> bool:
        """
        Whether the client's own host name is the origin's Host and TLS
        name (a wildcard domain without C{origin_host}): what that name
        breaks is the request's problem, not the address's.
        """
        return domain.is_wildcard and domain.origin_host is None

    def prepare(self, domain: Domain, method: bytes, target: bytes, headers: Headers,
                host: str, now: float) -> tuple[bytes, str, Headers]:
        """
        The (target, Host, headers) of one try, from the client's target and
        end-to-end headers and the C{host} it asked for.
        """
        origin_host = domain.origin_host or host
        out = copy_headers(headers)
        out.setRawHeaders(b"host", [host_field(origin_host)])
        return target, origin_host, out

    async def finish(self, response: IResponse, domain: str, address: Address) -> IResponse:
        """The origin's answer as the client is to see it."""
        return response

    # -- addresses and probes ----------------------------------------------

    def static_addresses(self) -> Optional[list[Address]]:
        """The addresses known without DNS, or None when they must be resolved."""
        return None

    def resolve_name(self) -> Optional[str]:
        """The hostname to resolve, if any."""
        return None

    def probe_host(self, domain: Domain) -> str:
        """The Host (and TLS name) of a health probe."""
        probe = domain.probe
        # A wildcard domain's bare name is not one of its names (and often not
        # in its origin's certificate): Probe(host=...) names one.
        named = probe.host if probe is not None else None
        return named or domain.origin_host or domain.name.removeprefix("*.")

    # -- describing --------------------------------------------------------

    def to_json(self) -> dict:
        """The admin API's and the state file's shape of the origin."""
        raise NotImplementedError

    def status_json(self) -> dict:
        """The shape of the origin in the live state (addresses are added)."""
        return self.to_json()

    def describe(self) -> str:
        raise NotImplementedError

    def host_description(self, domain: Domain) -> str:
        return domain.origin_host or "(the requested host)"

    def signs_in_clear(self) -> bool:
        """Whether requests carry a signature over plain http."""
        return False

    def warn_signing(self, domain: str, field: str, logger: Any) -> None:
        pass


_HOST_FIELDS: dict = {}


def host_field(host: str) -> bytes:
    """C{host} as a Host field (IDNA, which is slow: the names seen are kept)."""
    field = _HOST_FIELDS.get(host)
    if field is None:
        field = host.encode("idna")
        if len(_HOST_FIELDS) >= 4096:
            _HOST_FIELDS.clear()
        _HOST_FIELDS[host] = field
    return field


class IPKind(OriginKind):
    type = "ips"
    origin: IPOrigin

    def static_addresses(self) -> Optional[list[Address]]:
        return list(self.origin.parsed_addresses())

    def to_json(self) -> dict:
        o = self.origin
        return {"type": "ips", "addresses": list(o.addresses), "port": o.port,
                "scheme": o.scheme, "verify": o.verify}

    def status_json(self) -> dict:
        out = self.to_json()
        out["configured_addresses"] = out.pop("addresses")
        return out

    def describe(self) -> str:
        addrs = ", ".join(str(a) for a in self.origin.parsed_addresses())
        return f"{self.origin.scheme} to IPs {addrs}"


class DomainKind(OriginKind):
    type = "domain"
    origin: DomainOrigin

    def resolve_name(self) -> Optional[str]:
        return self.origin.host

    def to_json(self) -> dict:
        o = self.origin
        return {"type": "domain", "host": o.host, "port": o.port,
                "scheme": o.scheme, "verify": o.verify}

    def describe(self) -> str:
        port = f":{self.origin.port}" if self.origin.port else ""
        return f"{self.origin.scheme} to hostname {self.origin.host}{port} (resolved by DNS)"


class BucketKind(OriginKind):
    type = "bucket"
    methods = (b"GET", b"HEAD")
    several_ranges = False
    origin: BucketOrigin

    def scheme(self, client_scheme: str) -> str:
        return self.origin.scheme

    def sends_client_name(self, domain: Domain) -> bool:
        return False

    def prepare(self, domain: Domain, method: bytes, target: bytes, headers: Headers,
                host: str, now: float) -> tuple[bytes, str, Headers]:
        return prepare_bucket(self.origin, method, target, headers, now)

    async def finish(self, response: IResponse, domain: str, address: Address) -> IResponse:
        """
        Strip the store's own headers; when a signed request is refused, say
        why in the log (the S3 error code is in the small XML body).
        """
        strip_store_headers(response.headers)
        if response.code != 403:
            return response
        buffered = await read_whole(response, 64 * 1024)
        if buffered is None:
            return response
        code = s3_error_code(buffered.body)
        origin = self.origin
        if origin.credentials is not None and code in SIGNATURE_ERRORS:
            self.log.error(
                "{domain}: bucket {bucket} at {address} refused our signature ({code}): check "
                "the domain's S3Credentials", domain=domain, bucket=origin.bucket,
                address=str(address), code=code)
        else:
            self.log.warn("{domain}: bucket {bucket} answered 403 ({code})", domain=domain,
                          bucket=origin.bucket, code=code or "no error code")
        return buffered

    def static_addresses(self) -> Optional[list[Address]]:
        try:
            return [parse_address(self.origin.endpoint_host, self.origin.port)]
        except ValueError:
            return None

    def resolve_name(self) -> Optional[str]:
        return self.origin.endpoint_host if self.static_addresses() is None else None

    def probe_host(self, domain: Domain) -> str:
        return self.origin.host_header

    def to_json(self) -> dict:
        o = self.origin
        out = {"type": "bucket", "endpoint": o.endpoint, "bucket": o.bucket,
               "style": o.style, "region": o.region, "verify": o.verify,
               "scheme": o.scheme, "port": o.port, "signed": o.credentials is not None}
        # Keys are only ever named, never written out: by the name the config
        # module declared them under (Settings.credentials).
        name = getattr(o.credentials, "name", None)
        if name:
            out["credentials"] = name
        return out

    def describe(self) -> str:
        o = self.origin
        kind = "private (signed)" if o.credentials else "public"
        return f"{kind} bucket {o.bucket} at {o.endpoint} ({o.style} style)"

    def host_description(self, domain: Domain) -> str:
        return f"{self.origin.host_header} (the bucket's own)"

    def signs_in_clear(self) -> bool:
        return self.origin.credentials is not None and self.origin.scheme == "http"

    def warn_signing(self, domain: str, field: str, logger: Any) -> None:
        if self.signs_in_clear():
            logger.warn(
                "{domain}: {field}: bucket {bucket} is signed over plain http ({endpoint}): the "
                "signed requests and any session token cross the network in clear text; use "
                "https", domain=domain, field=field, bucket=self.origin.bucket,
                endpoint=self.origin.endpoint)


_KINDS: dict[type, type[OriginKind]] = {
    IPOrigin: IPKind, DomainOrigin: DomainKind, BucketOrigin: BucketKind,
}


def kind_of(origin: object) -> OriginKind:
    """The adapter of a (validated) origin config object."""
    adapter = _KINDS.get(type(origin))
    if adapter is None:
        raise TypeError(f"not an origin: {origin!r}")
    return adapter(origin)


# -- JSON <-> config objects -------------------------------------------------


def origin_to_json(origin: Optional[object]) -> Optional[dict]:
    return None if origin is None else kind_of(origin).to_json()


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


def origin_from_json(data: Any, where: str,
                     credentials: Optional[Mapping[str, S3Credentials]] = None) -> ConfigOrigin:
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
        return IPOrigin(tuple(addresses), **common)
    if kind == "domain":
        if "host" not in data:
            raise BadRequest(f"{where}.host: is required")
        return DomainOrigin(data["host"], **common)
    fields = {k: data[k] for k in ("endpoint", "bucket", "style", "region", "verify") if k in data}
    return BucketOrigin(credentials=_named_credentials(data, signed, where, credentials or {}),
                        **fields)


def _named_credentials(data: dict, signed: Any, where: str,
                       declared: Mapping[str, S3Credentials]) -> Optional[S3Credentials]:
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


def _address_text(a: Any, where: str) -> Any:
    if isinstance(a, dict) and "address" in a:
        host, port = a.get("address"), a.get("port", 0)
        if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int):
            raise BadRequest(f"{where}: must be a string such as '10.0.0.1:8080'")
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{port}" if port else host
    return a
