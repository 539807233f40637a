"""
The admin listener (docs/admin-api.md): the JSON API, C{/metrics} and the
console page.  Never mounted on a client listener.

With C{Settings.admin_token_file} set, every API call and C{/metrics} needs
C{Authorization: Bearer <token>} (compared in constant time; 401 otherwise).
The console page itself is static (no data in it) and is served without the
token; it asks for the token and sends it with every call.

Other web sites cannot use it through the operator's browser, whatever the
token setting (checked in this order, before anything else):

 - 421 unless C{Host} is an IP literal, C{localhost} or a name in
   C{Settings.admin_hosts} (any port): a DNS-rebinding page has its own name;
 - 403 when an C{Origin} header is present and is not this listener's own
   origin (C{scheme://Host}); a client without C{Origin} (curl, scripts) is
   not asked for one;
 - 415 for PUT, POST and DELETE without C{Content-Type: application/json}:
   a cross-site form or a "simple" fetch cannot send that type without a
   CORS preflight, which gets no CORS answer;
 - the console page is sent with a Content-Security-Policy (its inline
   script by hash, C{frame-ancestors 'none'}) and C{X-Frame-Options: DENY}.

Bodies are read through the client side's connection
(L{cdnpull.http.server.ClientConnection}: header and idle timeouts, a 1 MiB body
limit, 413); a body that is not JSON, or JSON nested deeper than
L{MAX_DEPTH}, is a 400.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
import os
import re
from typing import TYPE_CHECKING, Any, Iterable, Optional
from urllib.parse import unquote, urlsplit

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ..compat import request_gone
from ..config import DEFAULT_PORTS
from ..metrics import Metrics
from .control import Control, UnknownDomain
from .state import BadRequest
from .status import domain_json, table_json
from ..upload import BodyInterrupted

if TYPE_CHECKING:
    from ..service import Runtime

__all__ = ["AdminResource", "read_token", "MAX_BODY", "MAX_DEPTH", "parse_json_body",
           "console_policy"]

MAX_BODY = 1024 * 1024
MAX_DEPTH = 32
CONSOLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "console.html")
# The console's own assets (its charts and the vendored uPlot), served from
# memory under /console/: the page loads nothing from anywhere else.
ASSETS = {
    "charts.js": b"application/javascript; charset=utf-8",
    "charts.css": b"text/css; charset=utf-8",
    "uPlot.iife.min.js": b"application/javascript; charset=utf-8",
    "uPlot.min.css": b"text/css; charset=utf-8",
}
ASSET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "console")
CHANGING = (b"PUT", b"POST", b"DELETE")


def read_token(path: Optional[str]) -> Optional[bytes]:
    if path is None:
        return None
    with open(path, "rb") as f:
        token = f.read().strip()
    if not token:
        raise ValueError(f"{path}: the admin token file is empty")
    return token


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- bodies ----------------------------------------------------------------------

_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def _too_deep(text: str, limit: int) -> bool:
    """Whether JSON text nests arrays/objects deeper than C{limit} (strings skipped)."""
    depth = 0
    for ch in _NOT_BRACKET.sub("", _STRING.sub("", text)):
        if ch in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json_body(raw: bytes, limit: int = MAX_DEPTH) -> Any:
    """
    A request body as JSON, or L{_HTTPError} 400.  The depth is checked
    before parsing: the parser recurses, and a deep body must be a 400, not
    a RecursionError.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _HTTPError(400, "body: not valid JSON (not UTF-8)") from None
    if _too_deep(text, limit):
        raise _HTTPError(400, f"body: JSON nested deeper than {limit} levels")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise _HTTPError(400, "body: not valid JSON") from None


class _Collect:
    """The consumer a streamed request body is read into."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)


# -- who may call -------------------------------------------------------------------



def _split_host(value: str) -> Optional[tuple[str, Optional[int]]]:
    """C{Host} as (lower-case name or IP, port or None); None when malformed."""
    value = value.strip().lower()
    port: Optional[str] = None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[1:end], value[end + 1:]
        if rest:
            if not rest.startswith(":"):
                return None
            port = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    else:
        host, sep, port_text = value.partition(":")
        if sep:
            port = port_text
    if port is not None and (not port.isdigit() or len(port) > 5):
        return None
    if host.endswith("."):
        host = host[:-1]
    if not host:
        return None
    return host, (int(port) if port else None)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def console_policy(page: bytes) -> bytes:
    """
    The console's Content-Security-Policy: its inline scripts by hash (so an
    injected script would not run), nothing from outside the node, no
    framing, no form posts anywhere.
    """
    hashes = [
        "'sha256-%s'" % base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode("ascii")
        for m in re.finditer(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>",
                               re.sub(rb"<!--.*?-->", b"", page, flags=re.S), re.S | re.I)
    ]
    return ("default-src 'none'; script-src 'self' " + " ".join(hashes) + "; "
            "style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'").encode("ascii")


class AdminResource(Resource):
    isLeaf = True
    log = Logger()

    def __init__(self, runtime: Runtime, control: Control, metrics: Metrics, clock: IReactorTime,
                 token: Optional[bytes] = None, hosts: Iterable[str] = ()) -> None:
        super().__init__()
        self.runtime = runtime
        self.control = control
        self.metrics = metrics
        self.clock = clock
        self.token = token
        self.hosts = frozenset(h.lower().rstrip(".") for h in hosts) | {"localhost"}
        with open(CONSOLE, "rb") as f:
            self.console = f.read()
        self.assets: dict[str, tuple[bytes, bytes]] = {}
        for name, content_type in ASSETS.items():
            with open(os.path.join(ASSET_DIR, name), "rb") as f:
                self.assets["/console/" + name] = (content_type, f.read())
        self.console_csp = console_policy(self.console)

    # -- plumbing ----------------------------------------------------------

    def render(self, request: Request) -> Any:
        request.setHeader(b"server", b"cdnpull-admin")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        refusal = self._refusal(request)
        if refusal is not None:
            status, message = refusal
            self.log.info("admin: refused {method} {path} from {peer}: {status} {why}",
                          method=request.method.decode("latin-1"),
                          path=request.path.decode("latin-1")[:200], status=status,
                          why=message, peer=getattr(request.getClientAddress(), "host", "-"))
            return self._json(request, status, {"error": message})
        path = request.path.decode("utf-8", "replace")
        if path in ("/", "/index.html"):
            if request.method not in (b"GET", b"HEAD"):
                return self._json(request, 405, {"error": "method not allowed"})
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            request.setHeader(b"content-security-policy", self.console_csp)
            request.setHeader(b"x-frame-options", b"DENY")
            request.setHeader(b"referrer-policy", b"no-referrer")
            return self.console
        asset = self.assets.get(path)
        if asset is not None:
            if request.method not in (b"GET", b"HEAD"):
                return self._json(request, 405, {"error": "method not allowed"})
            request.setHeader(b"content-type", asset[0])
            return asset[1]
        if not self._authorised(request):
            request.setHeader(b"www-authenticate", b'Bearer realm="cdnpull"')
            return self._json(request, 401, {"error": "Authorization: Bearer <token> required"})
        if path == "/metrics":
            if request.method not in (b"GET", b"HEAD"):
                return self._json(request, 405, {"error": "method not allowed"})
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
            return generate_latest(self.metrics.registry)
        if not path.startswith("/api/"):
            return self._json(request, 404, {"error": f"no such path {path}"})
        d = Deferred.fromCoroutine(self._api(request, path))
        d.addCallbacks(lambda r: self._send(request, *r), lambda f: self._error(request, f))
        return NOT_DONE_YET

    def _refusal(self, request: Request) -> Optional[tuple[int, str]]:
        """Why a request may not be answered at all (status, message), or None."""
        hosts = request.requestHeaders.getRawHeaders(b"host") or []
        if len(hosts) != 1:
            return 400, "exactly one Host header is required"
        try:
            host_text = hosts[0].decode("ascii")
        except UnicodeDecodeError:
            host_text = ""
        host = _split_host(host_text)
        if host is None or not (_is_ip(host[0]) or host[0] in self.hosts):
            return 421, ("this admin listener does not answer to that Host (an IP address, "
                         "localhost or a name in Settings.admin_hosts)")
        origins = request.requestHeaders.getRawHeaders(b"origin")
        if origins is not None:
            scheme = "https" if request.isSecure() else "http"
            own = (scheme, host[0], host[1] or DEFAULT_PORTS[scheme])
            if len(origins) != 1 or self._origin(origins[0]) != own:
                return 403, "cross-origin request refused: Origin is not this admin's own"
        if request.method in CHANGING:
            ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
            if ctype != b"application/json":
                return 415, "Content-Type: application/json is required"
        return None

    @staticmethod
    def _origin(value: bytes) -> Optional[tuple]:
        try:
            parts = urlsplit(value.decode("ascii").strip().lower())
            port = parts.port
        except (UnicodeDecodeError, ValueError):
            return None
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            return None
        return parts.scheme, parts.hostname.rstrip("."), port or DEFAULT_PORTS[parts.scheme]

    def _authorised(self, request: Request) -> bool:
        if self.token is None:
            return True
        given = request.getHeader(b"authorization") or b""
        scheme, _, value = given.partition(b" ")
        # Compare in constant time, whatever was sent.
        ok = hmac.compare_digest(value.strip(), self.token)
        return scheme.lower() == b"bearer" and ok

    def _json(self, request: Request, status: int, body: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        return (json.dumps(body, indent=1) + "\n").encode("utf-8")

    def _send(self, request: Request, status: int, body: Any) -> None:
        if request_gone(request) or request.finished:
            return
        if getattr(request.channel, "_refused", False):
            return  # the connection already answered for itself (413, 408)
        data = self._json(request, status, body)
        request.setHeader(b"content-length", b"%d" % len(data))
        request.write(data)
        request.finish()

    def _error(self, request: Request, failure: Failure) -> None:
        if failure.check(BodyInterrupted):
            return  # the body never arrived whole: the connection is gone or refused
        error: Any = failure.value
        if failure.check(_HTTPError):
            status, message = error.status, error.message
        elif failure.check(BadRequest):
            status, message = 400, str(error)
        elif failure.check(UnknownDomain):
            status, message = 404, f"unknown domain {error.args[0]}"
        elif failure.check(OSError):
            status, message = 500, f"state file could not be written: {failure.getErrorMessage()}"
            self.log.error("admin change failed: {why}", why=message)
        else:
            self.log.failure("admin API error on {path}", failure, path=request.path)
            status, message = 500, "internal error"
        self._send(request, status, {"error": message})

    async def _body(self, request: Request) -> Any:
        """
        The request's JSON body.  A body the connection streams (sent with a
        method other than GET/HEAD) is read from its pipe; its size is
        bounded by the connection (413 past L{MAX_BODY}).
        """
        pipe = getattr(request, "body_pipe", None)
        if pipe is not None:
            collect = _Collect()
            await pipe.startProducing(collect)
            raw = b"".join(collect.chunks)
        else:
            content = request.content
            assert content is not None  # twisted.web gives every request one
            content.seek(0)
            raw = content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            raise _HTTPError(413, f"body: larger than {MAX_BODY} bytes")
        return parse_json_body(raw)

    # -- the API -----------------------------------------------------------

    async def _api(self, request: Request, path: str) -> tuple[int, Any]:
        method = request.method
        parts = [unquote(p) for p in path[len("/api/"):].split("/")]
        now = self.clock.seconds()
        dns = self.runtime.dns
        if parts == ["domains"]:
            self._allow(method, b"GET")
            return 200, table_json(self.runtime.table, now, dns)
        if parts == ["stats"]:
            self._allow(method, b"GET")
            return 200, self._stats(request)
        if parts == ["purge"]:
            self._allow(method, b"POST")
            return self._purge(await self._body(request))
        if len(parts) >= 2 and parts[0] == "domains":
            name = parts[1].strip().lower().rstrip(".")
            action = parts[2:]
            if action == []:
                self._allow(method, b"GET")
                return 200, domain_json(self.control.live(name), now, dns)
            if action == ["origin"]:
                self._allow(method, b"PUT")
                live = await self.control.set_origin(name, await self._body(request))
            elif action == ["standby"]:
                self._allow(method, b"PUT", b"DELETE")
                if method == b"PUT":
                    live = await self.control.set_standby(name, await self._body(request))
                else:
                    live = await self.control.delete_standby(name)
            elif action == ["switch"]:
                self._allow(method, b"POST")
                live = await self.control.switch(name)
            elif action == ["override"]:
                self._allow(method, b"DELETE")
                live = await self.control.restore_module(name)
            elif action == ["certificate"]:  # the edge certificate (cdnpull.certstore)
                self._allow(method, b"PUT", b"DELETE")
                if method == b"PUT":
                    live = await self.runtime.edge_certificates.set(name, await self._body(request))
                else:
                    live = await self.runtime.edge_certificates.remove(name)
            else:
                raise _HTTPError(404, f"no such path {path}")
            return 200, domain_json(live, self.clock.seconds(), dns)
        raise _HTTPError(404, f"no such path {path}")

    @staticmethod
    def _allow(method: bytes, *allowed: bytes) -> None:
        if method not in allowed:
            raise _HTTPError(405, f"method not allowed; use {' or '.join(a.decode() for a in allowed)}")

    def _stats(self, request: Request) -> Any:
        """C{GET /api/stats[?domain=NAME]}: the recent history (cdnpull.admin.stats)."""
        args = request.args.get(b"domain")
        name = None
        if args:
            name = args[0].decode("utf-8", "replace").strip().lower().rstrip(".")
            self.control.live(name)  # UnknownDomain -> 404
        return self.runtime.stats.json(name)

    def _purge(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or not (set(body) <= {"urls", "prefixes"}) or not body:
            raise BadRequest('body: must be {"urls": [...]} or {"prefixes": [...]}')
        for key, values in body.items():
            if not isinstance(values, list) or not all(
                    isinstance(v, str) and v.startswith(("http://", "https://")) for v in values):
                raise BadRequest(f"{key}: must be a list of full URLs (http://host/path)")
        return 200, self.runtime.cache.purge(body.get("urls", []), body.get("prefixes", []))
