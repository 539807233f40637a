"""
The admin listener (SPEC.md section 6): the JSON API, C{/metrics} and the
console page.  Never mounted on a client listener.

With C{Settings.admin_token_file} set, every API call and C{/metrics} needs
C{Authorization: Bearer <token>} (compared in constant time; 401 otherwise).
The console page itself is static (no data in it) and is served without the
token; it asks for the token and sends it with every call.
"""

from __future__ import annotations

import hmac
import json
import os
from typing import Any, Optional
from urllib.parse import unquote

from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from .control import Control, UnknownDomain
from .overrides import BadRequest
from .status import domain_json, table_json

__all__ = ["AdminResource", "read_token", "MAX_BODY"]

MAX_BODY = 64 * 1024
CONSOLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "console.html")


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


class AdminResource(Resource):
    isLeaf = True
    log = Logger()

    def __init__(self, runtime: Any, control: Control, metrics: Any, clock: Any,
                 token: Optional[bytes] = None) -> None:
        super().__init__()
        self.runtime = runtime
        self.control = control
        self.metrics = metrics
        self.clock = clock
        self.token = token
        with open(CONSOLE, "rb") as f:
            self.console = f.read()

    # -- plumbing ----------------------------------------------------------

    def render(self, request: Request) -> Any:
        request.setHeader(b"server", b"cdnpull-admin")
        request.setHeader(b"cache-control", b"no-store")
        path = request.path.decode("utf-8", "replace")
        if path in ("/", "/index.html"):
            if request.method not in (b"GET", b"HEAD"):
                return self._json(request, 405, {"error": "method not allowed"})
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            request.setHeader(b"content-security-policy",
                              b"default-src 'self'; script-src 'unsafe-inline' 'self'; "
                              b"style-src 'unsafe-inline' 'self'; connect-src 'self'")
            return self.console
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
        if request._disconnected:  # type: ignore[attr-defined]
            return
        data = self._json(request, status, body)
        request.setHeader(b"content-length", b"%d" % len(data))
        request.write(data)
        request.finish()

    def _error(self, request: Request, failure: Failure) -> None:
        if failure.check(_HTTPError):
            status, message = failure.value.status, failure.value.message
        elif failure.check(BadRequest):
            status, message = 400, str(failure.value)
        elif failure.check(UnknownDomain):
            status, message = 404, f"unknown domain {failure.value.args[0]}"
        elif failure.check(OSError):
            status, message = 500, f"state file could not be written: {failure.getErrorMessage()}"
            self.log.error("admin change failed: {why}", why=message)
        else:
            self.log.failure("admin API error on {path}", failure, path=request.path)
            status, message = 500, "internal error"
        self._send(request, status, {"error": message})

    def _body(self, request: Request) -> Any:
        content = request.content
        content.seek(0, 2)
        size = content.tell()
        if size > MAX_BODY:
            raise _HTTPError(413, f"body: larger than {MAX_BODY} bytes")
        content.seek(0)
        raw = content.read()
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise _HTTPError(400, "body: not valid JSON") from None

    # -- the API -----------------------------------------------------------

    async def _api(self, request: Request, path: str) -> tuple[int, Any]:
        method = request.method
        parts = [unquote(p) for p in path[len("/api/"):].split("/")]
        now = self.clock.seconds()
        dns = self.runtime.dns
        if parts == ["domains"]:
            self._allow(method, b"GET")
            return 200, table_json(self.runtime.table, now, dns)
        if parts == ["purge"]:
            self._allow(method, b"POST")
            return self._purge(self._body(request))
        if len(parts) >= 2 and parts[0] == "domains":
            name = parts[1].strip().lower().rstrip(".")
            action = parts[2:]
            if action == []:
                self._allow(method, b"GET")
                return 200, domain_json(self.control.live(name), now, dns)
            if action == ["origin"]:
                self._allow(method, b"PUT")
                live = await self.control.set_origin(name, self._body(request))
            elif action == ["standby"]:
                self._allow(method, b"PUT", b"DELETE")
                if method == b"PUT":
                    live = await self.control.set_standby(name, self._body(request))
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
                    live = await self.runtime.edge_certificates.set(name, self._body(request))
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

    def _purge(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or not (set(body) <= {"urls", "prefixes"}) or not body:
            raise BadRequest('body: must be {"urls": [...]} or {"prefixes": [...]}')
        for key, values in body.items():
            if not isinstance(values, list) or not all(
                    isinstance(v, str) and v.startswith(("http://", "https://")) for v in values):
                raise BadRequest(f"{key}: must be a list of full URLs (http://host/path)")
        return 200, self.runtime.cache.purge(body.get("urls", []), body.get("prefixes", []))
