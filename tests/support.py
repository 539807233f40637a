"""
Test helpers: real origin servers on loopback addresses, a real
C{twistd cdnpull} process, and an HTTP client that leaves no timers behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import greenlet
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.protocol import Factory, Protocol
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = shutil.which("twistd", path=os.path.dirname(sys.executable)) or "twistd"


def free_port(host: str = "127.0.0.1") -> int:
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def closed_port(host: str) -> int:
    """A port on C{host} where nothing listens (connections are refused)."""
    return free_port(host)


# -- origins ---------------------------------------------------------------


@dataclass
class Seen:
    method: bytes
    path: bytes
    headers: dict


class _Script(Resource):
    isLeaf = True

    def __init__(self, origin: "Origin") -> None:
        super().__init__()
        self.origin = origin

    def render(self, request):  # type: ignore[no-untyped-def]
        o = self.origin
        o.seen.append(Seen(request.method, request.uri,
                           {k.lower(): v for k, v in request.requestHeaders.getAllRawHeaders()}))
        request.setHeader(b"x-served-by", o.name.encode())
        path = request.path.decode()
        handler = o.routes.get(path) or o.routes.get("*")
        if handler is None:
            request.setResponseCode(404)
            return b"not found on " + o.name.encode()
        return handler(request)


class Origin:
    """
    A real HTTP origin on C{ip}: C{routes} maps a path to a function of the
    request (returning bytes or NOT_DONE_YET); every request is recorded.
    """

    def __init__(self, ip: str, name: Optional[str] = None) -> None:
        self.ip = ip
        self.name = name or ip
        self.routes: dict[str, Callable] = {}
        self.seen: list[Seen] = []
        self.site = Site(_Script(self))
        self.site.log = lambda request: None  # type: ignore[method-assign]
        self.site.timeOut = None  # no idle timers on origin connections
        self.site.noisy = False
        self.port = None
        self.transports: set = set()
        buildProtocol = self.site.buildProtocol

        def build(addr):  # type: ignore[no-untyped-def]
            proto = buildProtocol(addr)
            connectionLost, makeConnection = proto.connectionLost, proto.makeConnection

            def made(transport):  # type: ignore[no-untyped-def]
                self.transports.add(transport)
                return makeConnection(transport)

            def lost(reason):  # type: ignore[no-untyped-def]
                self.transports.discard(proto.transport if hasattr(proto, "transport") else None)
                return connectionLost(reason)

            proto.makeConnection, proto.connectionLost = made, lost
            return proto

        self.site.buildProtocol = build  # type: ignore[method-assign]
        self.pending: list = []

    def start(self, port: int = 0, tls=None) -> "Origin":  # type: ignore[no-untyped-def]
        """Listen (again) on C{port}; with C{tls} (a context factory) over TLS."""
        if tls is not None:
            self.tls = tls
        if getattr(self, "tls", None) is not None:
            self.listener = reactor.listenSSL(port, self.site, self.tls, interface=self.ip)
        else:
            self.listener = reactor.listenTCP(port, self.site, interface=self.ip)
        self.port = self.listener.getHost().port
        return self

    def stop(self) -> Deferred:
        """Stop listening and drop every open connection, like a dead host."""
        for transport in list(self.transports):
            try:
                transport.abortConnection()
            except AttributeError:  # a TLS transport whose handshake already died
                pass
        self.transports.clear()
        for request in self.pending:
            if not request.finished and not request._disconnected:
                request.transport.abortConnection()
        self.pending.clear()
        return self.listener.stopListening()

    @property
    def addr(self) -> str:
        return f"{self.ip}:{self.port}"

    # canned behaviours

    def text(self, path: str, body: bytes, status: int = 200, headers: Optional[dict] = None) -> None:
        def handler(request):  # type: ignore[no-untyped-def]
            request.setResponseCode(status)
            for k, v in (headers or {}).items():
                request.setHeader(k, v)
            return body
        self.routes[path] = handler

    def hang(self, path: str) -> None:
        def handler(request):  # type: ignore[no-untyped-def]
            self.pending.append(request)
            return NOT_DONE_YET
        self.routes[path] = handler

    def count(self, path: str) -> int:
        return sum(1 for s in self.seen if s.path.split(b"?")[0] == path.encode())


class Silent:
    """A TCP server that accepts and never says anything."""

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.connections: list = []
        outer = self

        class P(Protocol):
            def connectionMade(self):  # type: ignore[no-untyped-def]
                outer.connections.append(self.transport)

        f = Factory.forProtocol(P)
        f.noisy = False
        self.listener = reactor.listenTCP(0, f, interface=ip)
        self.port = self.listener.getHost().port

    def stop(self) -> Deferred:
        for t in self.connections:
            t.abortConnection()
        return self.listener.stopListening()


# -- cdnpull under twistd ----------------------------------------------------


@dataclass
class Cdn:
    """A running C{twistd cdnpull} process."""

    proc: subprocess.Popen
    port: int
    logfile: str
    config: str
    admin_port: Optional[int] = None
    extra: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def log(self) -> str:
        with open(self.logfile, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def write_config(directory: str, body: str, name: str = "site.py") -> str:
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write(textwrap.dedent(body))
    return path


def launch_cdn(config: str, directory: str, *extra: str, admin: bool = False) -> Cdn:
    """Start C{twistd -n cdnpull} (the twistd next to this Python); do not wait."""
    port = free_port()
    args = list(extra)
    admin_port = None
    if admin:
        admin_port = free_port()
        args += ["--admin", f"tcp:{admin_port}:interface=127.0.0.1"]
    elif "--admin" not in args:
        args += ["--admin", "none"]
    if "--state" not in args:
        args += ["--state", os.path.join(directory, "state.json")]
    logfile = os.path.join(directory, f"twistd-{port}.log")
    cmd = [TWISTD, "-n", "--pidfile=", "cdnpull", "--config", config,
           "--listen", f"tcp:{port}:interface=127.0.0.1", *args]
    with open(logfile, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=directory)
    return Cdn(proc, port, logfile, config, admin_port)


async def cdn_started(config: str, directory: str, *extra: str, admin: bool = False,
                      ready_timeout: float = 15.0) -> Cdn:
    """
    Start C{twistd -n cdnpull} and wait, with the test's reactor running,
    until its ports accept connections (the origins in this process answer
    its first probes and DNS questions meanwhile).
    """
    cdn = launch_cdn(config, directory, *extra, admin=admin)
    await _ready(cdn, ready_timeout)
    return cdn


def start_cdn(config: str, directory: str, *extra: str, admin: bool = False,
              ready_timeout: float = 15.0) -> Cdn:
    """
    Like L{cdn_started}, for code that cannot await.  From a test (or a
    fixture before its first C{await}) the reactor keeps running while it
    waits; from the reactor's own greenlet it cannot, and polls: await
    L{cdn_started} there instead.
    """
    cdn = launch_cdn(config, directory, *extra, admin=admin)
    if _reactor_can_run():
        pytest_twisted.blockon(Deferred.fromCoroutine(_ready(cdn, ready_timeout)))
    else:
        deadline = time.monotonic() + ready_timeout
        while not _is_ready(cdn, deadline, ready_timeout):
            time.sleep(0.05)
    return cdn


def _reactor_can_run() -> bool:
    """
    Whether this code runs outside the reactor's greenlet, so that waiting
    with C{blockon} lets the reactor run (pytest-twisted runs tests, and
    fixtures up to their first C{await}, in a greenlet of their own).
    """
    twisted_greenlet = getattr(pytest_twisted._instances, "gr_twisted", None)
    return twisted_greenlet is not None and greenlet.getcurrent() is not twisted_greenlet


def _is_ready(cdn: "Cdn", deadline: float, ready_timeout: float) -> bool:
    ports = [cdn.port] + ([cdn.admin_port] if cdn.admin_port else [])
    if cdn.proc.poll() is not None:
        raise AssertionError(f"twistd exited with {cdn.proc.returncode}:\n{cdn.log()}")
    if all(_accepts(p) for p in ports):
        return True
    if time.monotonic() > deadline:
        cdn.stop()
        raise AssertionError(f"twistd did not listen within {ready_timeout}s:\n{cdn.log()}")
    return False


async def _ready(cdn: "Cdn", ready_timeout: float) -> None:
    deadline = time.monotonic() + ready_timeout
    while not _is_ready(cdn, deadline, ready_timeout):
        await deferLater(reactor, 0.05, lambda: None)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


# -- an HTTP client that leaves nothing behind ----------------------------------


class Client:
    """treq over a non-persistent pool: no cached connections, no timers."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=self.pool))

    async def get(self, path: str, host: Optional[str] = None, method: str = "GET",
                  headers: Optional[dict] = None, data: Optional[bytes] = None):  # type: ignore[no-untyped-def]
        h = dict(headers or {})
        if host:
            h["Host"] = host
        response = await self.http.request(method, self.base + path, headers=h, data=data)
        body = await response.content()
        return response, body

    async def api(self, method: str, path: str, body=None, token: Optional[str] = None,  # type: ignore[no-untyped-def]
                  raw: Optional[bytes] = None):
        """A JSON call: (status, decoded body)."""
        import json

        headers = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if method not in ("GET", "HEAD"):
            headers["Content-Type"] = "application/json"  # the admin refuses other types (415)
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        response, content = await self.get(path, method=method, headers=headers, data=data)
        try:
            decoded = json.loads(content)
        except ValueError:
            decoded = content
        return response.code, decoded


# -- a DNS server on loopback ---------------------------------------------------


class DNSServer:
    """
    A real DNS server (twisted.names) on 127.0.0.1 over UDP, answering A and
    AAAA queries from C{records}: name -> list of IPs.
    """

    def __init__(self, records: dict, ttl: int = 60) -> None:
        from twisted.names import common, dns, error, server
        from twisted.internet import defer

        outer = self
        self.records = records
        self.queries: list = []

        class Answers(common.ResolverBase):
            def _lookup(self, name, cls, type, timeout):  # type: ignore[no-untyped-def]
                text = name.decode() if isinstance(name, bytes) else str(name)
                outer.queries.append((text, type))
                ips = outer.records.get(text)
                if ips is None:
                    return defer.fail(error.DomainError(text))
                answers = []
                for ip in ips:
                    if type == dns.A and ":" not in ip:
                        answers.append(dns.RRHeader(name, dns.A, dns.IN, ttl, dns.Record_A(ip, ttl)))
                    elif type == dns.AAAA and ":" in ip:
                        answers.append(dns.RRHeader(name, dns.AAAA, dns.IN, ttl, dns.Record_AAAA(ip, ttl)))
                return defer.succeed((answers, [], []))

        factory = server.DNSServerFactory(clients=[Answers()])
        factory.noisy = False
        self.protocol = dns.DNSDatagramProtocol(factory)
        self.protocol.noisy = False
        self.listener = reactor.listenUDP(0, self.protocol, interface="127.0.0.1")
        self.port = self.listener.getHost().port

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> Deferred:
        return self.listener.stopListening()


def shared_port(*ips: str) -> int:
    """A port that is free on every one of C{ips}."""
    for _ in range(50):
        port = free_port(ips[0])
        socks = []
        try:
            for ip in ips:
                s = socket.socket()
                s.bind((ip, port))
                socks.append(s)
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no shared free port")


def tls_server_options(ca, name: str):  # type: ignore[no-untyped-def]
    """Twisted server TLS options with a certificate for C{name} from a trustme CA."""
    from twisted.internet import ssl

    cert = ca.issue_cert(name)
    return ssl.PrivateCertificate.loadPEM(cert.private_key_and_cert_chain_pem.bytes()).options()


# -- raw sockets ------------------------------------------------------------------


def raw_exchange(port: int, data: bytes, timeout: float = 5.0, pause: float = 0.0,
                 read: bool = True) -> tuple[bytes, float, bool]:
    """
    Send C{data} over a fresh connection and read until the server closes it
    or C{timeout} passes.  Blocking: run it in a thread (deferToThread) when an
    in-process origin must answer.

    @return: (bytes read, seconds until the close, whether the server closed).
    """
    start = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        if pause:
            time.sleep(pause)
        out = b""
        closed = False
        s.settimeout(timeout)
        while read:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            out += chunk
        return out, time.monotonic() - start, closed
    finally:
        s.close()


class RawOrigin:
    """
    An origin that answers each request with canned bytes chosen by its path:
    C{script[path]} is a list of (bytes, then) where then is None (keep going),
    "close", "abort" or a float (sleep before the next piece, in the reactor).
    Counts connections and requests, so tests can tell a reused connection,
    and keeps the numbers of the connections that ended (C{closed}).
    """

    def __init__(self, ip: str) -> None:
        outer = self
        self.script: dict = {}
        self.requests: list = []
        self.connections = 0
        self.closed: set = set()
        self.bytes_received = 0

        class P(Protocol):
            def connectionMade(self):  # type: ignore[no-untyped-def]
                outer.connections += 1
                self.buf = b""
                self.conn = outer.connections

            def connectionLost(self, reason):  # type: ignore[no-untyped-def]
                outer.closed.add(self.conn)

            def dataReceived(self, data):  # type: ignore[no-untyped-def]
                outer.bytes_received += len(data)
                self.buf += data
                while b"\r\n\r\n" in self.buf:
                    head, self.buf = self.buf.split(b"\r\n\r\n", 1)
                    path = head.split(b" ")[1].decode()
                    outer.requests.append((self.conn, path))
                    self.play(list(outer.script.get(path, [(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", None)])))

            def play(self, steps):  # type: ignore[no-untyped-def]
                while steps:
                    data, then = steps.pop(0)
                    if data:
                        self.transport.write(data)
                    if then == "close":
                        self.transport.loseConnection()
                        return
                    if then == "abort":
                        self.transport.abortConnection()
                        return
                    if isinstance(then, float):
                        reactor.callLater(then, self.play, steps)
                        return

        f = Factory.forProtocol(P)
        f.noisy = False
        self.listener = reactor.listenTCP(0, f, interface=ip)
        self.port = self.listener.getHost().port
        self.addr = f"{ip}:{self.port}"

    def count(self, path: str) -> int:
        return sum(1 for _, p in self.requests if p == path)

    def stop(self) -> Deferred:
        return self.listener.stopListening()
