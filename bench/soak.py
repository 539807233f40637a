"""
A soak under chaos: an operator's bad day, on loopback, bounded in time.

Two domains on one node (C{a.soak.test}: two primary addresses and a
standby; C{b.soak.test}: one origin, no standby), a steady mixed load (hits,
misses, uncacheable answers, ranges, HEAD, If-None-Match right and wrong,
If-Modified-Since, slow readers of 5 MiB objects, clients that reset
mid-body), objects with short max-age so they revalidate all the time, a
memory cache small enough that 5 MiB objects live on disk, and meanwhile:

 - a primary origin C{kill -9}ed and restarted (a, then b, in turn),
 - every origin but the standby answering 503 for 5 s,
 - a primary hung with SIGSTOP for 5 s,
 - SIGHUP of the node (every other one with changed cache rules),
 - primary and standby switched and back through the admin API,
 - prefix purges through the admin API,
 - one C{kill -9} of the node at half time, restarted at once on the same
   disk cache.

Every body is checked byte for byte (an object's bytes follow from its
path and ETag, so a changed version is checked too).  The report counts
corrupt bodies, silently truncated bodies, tracebacks in the log, client
errors that no chaos explains, and disk-write failures.

    python bench/soak.py [--seconds 120] [--rate 200] [--keep]

Client errors are "explained" only where the contract allows them: on the
domain without a standby while its origin is down, hung or answering 503;
a body cut mid-way because the origin sending it was killed or hung; and
any request the node's own kill -9 broke.  Everything else is unexplained.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import hashlib
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cdn_argv, free_port, rss_kib, shared_port  # noqa: E402
BIG = 5 * 1024 * 1024
SIZES = (512, 4096, 20000, 100000)
VERSION_PERIOD = 20  # /v/ objects change every 20 s
LAST_MODIFIED = "Sat, 01 Jan 2022 00:00:00 GMT"
DOMAINS = ("a.soak.test", "b.soak.test")
ORIGIN_IPS = {"a1": "127.0.0.2", "a2": "127.0.0.3", "sb": "127.0.0.4", "b1": "127.0.0.5"}


# -- content: an object's bytes follow from its path and version ---------------


@functools.lru_cache(maxsize=64)
def content(path: str, version: int) -> bytes:
    size = size_of(path)
    seed = int.from_bytes(hashlib.sha256(f"{path}|{version}".encode()).digest()[:8], "big")
    return random.Random(seed).randbytes(size)


def size_of(path: str) -> int:
    if path.startswith("/big/"):
        return BIG
    m = re.search(r"-(\d+)\.bin$", path)
    return int(m.group(1)) if m else 100


def etag_of(path: str, version: int) -> str:
    return f'"{path.split("/")[1]}{version}"'


def version_of_etag(etag: str) -> int:
    m = re.fullmatch(r'"[a-z]+(\d+)"', etag or "")
    if not m:
        raise ValueError(f"unexpected ETag {etag!r}")
    return int(m.group(1))


def http_date(t: float) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(t))


# -- an origin (its own process, so that it can be killed or stopped) -----------


def run_origin(ip: str, port: int, name: str) -> None:
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    state = {"fail": False}
    signal.signal(signal.SIGUSR1, lambda *_: state.update(fail=True))
    signal.signal(signal.SIGUSR2, lambda *_: state.update(fail=False))

    class Objects(Resource):
        isLeaf = True

        def render(self, request):  # type: ignore[no-untyped-def]
            path = request.path.decode()
            request.setHeader(b"x-origin", name.encode())
            if path == "/health":
                return b"ok"
            if state["fail"]:
                request.setResponseCode(503)
                return b"503 storm"
            kind = path.split("/")[1]
            if kind not in ("c", "v", "u", "big"):
                request.setResponseCode(404)
                return b"no such object"
            version = int(time.time() // VERSION_PERIOD) if kind == "v" else 0
            body = content(path, version)
            etag = etag_of(path, version)
            modified = http_date(version * VERSION_PERIOD) if kind == "v" else LAST_MODIFIED
            cc = {"c": "max-age=10", "v": "max-age=5", "u": "no-store", "big": "max-age=30"}[kind]
            request.setHeader(b"cache-control", cc.encode())
            request.setHeader(b"etag", etag.encode())
            request.setHeader(b"last-modified", modified.encode())
            request.setHeader(b"content-type", b"application/octet-stream")
            inm = request.getHeader(b"if-none-match")
            ims = request.getHeader(b"if-modified-since")
            if (inm is not None and etag.encode() in [t.strip() for t in inm.split(b",")]) or (
                    inm is None and ims is not None and ims.decode() == modified):
                request.setResponseCode(304)
                return b""
            rng = request.getHeader(b"range")
            m = re.fullmatch(rb"bytes=(\d*)-(\d*)", rng or b"")
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    first = int(m.group(1))
                    last = min(int(m.group(2)), len(body) - 1) if m.group(2) else len(body) - 1
                else:
                    first, last = max(0, len(body) - int(m.group(2))), len(body) - 1
                if first <= last:
                    request.setResponseCode(206)
                    request.setHeader(b"content-range", b"bytes %d-%d/%d" % (first, last, len(body)))
                    return body[first:last + 1]
            return body

    site = Site(Objects())
    site.log = lambda request: None  # type: ignore[method-assign]
    site.timeOut = None
    site.noisy = False
    reactor.listenTCP(port, site, interface=ip, backlog=512)
    reactor.run()


# -- the HTTP client ------------------------------------------------------------------


class Truncated(Exception):
    """The framing says the body is incomplete (the client can tell)."""


class Conn:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.used = 0  # answers read on the current connection
        self.started = 0.0  # when the current request was sent
        self.opened = 0.0  # when the current connection was opened (monotonic)

    def describe(self) -> str:
        return f"[after {time.monotonic() - self.started:.2f} s, answer #{self.used + 1} on its connection]"

    async def open(self) -> None:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port,
                                                                     limit=1024 * 1024)
            self.used = 0
            self.opened = time.monotonic()

    def close(self, reset: bool = False) -> None:
        if self.writer is not None:
            if reset:
                sock = self.writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.writer.transport.abort()
            else:
                self.writer.close()
        self.reader = self.writer = None


async def exchange(conn: Conn, method: str, path: str, host: str, headers: dict,
                   read_rate: float = 0.0, reset_after: int = -1) -> tuple:
    """
    One request on a keep-alive connection: (status, headers, body, framed).
    C{read_rate} bytes/s paces the body (a slow reader); C{reset_after}
    bytes read, the client resets the connection.
    """
    conn.started = time.monotonic()
    await conn.open()
    assert conn.reader is not None and conn.writer is not None
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"] + [f"{k}: {v}" for k, v in headers.items()]
    conn.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await conn.writer.drain()
    while True:
        head = await conn.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split()[1])
        if not 100 <= status < 200:
            break
    h: dict = {}
    for line in header_lines:
        if ":" in line:
            k, v = line.split(":", 1)
            h.setdefault(k.strip().lower(), []).append(v.strip())
    body = bytearray()
    framed = True
    keep = "close" not in ",".join(h.get("connection", [])).lower()
    if method == "HEAD" or status in (204, 304):
        pass
    elif "content-length" in h:
        n = int(h["content-length"][0])
        while len(body) < n:
            want = min(65536, n - len(body))
            chunk = await conn.reader.read(want)
            if not chunk:
                conn.close()
                raise Truncated(f"{len(body)} of {n} bytes")
            body += chunk
            if 0 <= reset_after <= len(body):
                conn.close(reset=True)
                return status, h, bytes(body), False
            if read_rate:
                await asyncio.sleep(len(chunk) / read_rate)
    elif "chunked" in ",".join(h.get("transfer-encoding", [])).lower():
        while True:
            size_line = await conn.reader.readline()
            if not size_line:
                conn.close()
                raise Truncated(f"chunked body ended after {len(body)} bytes")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await conn.reader.readuntil(b"\r\n")
                break
            try:
                body += await conn.reader.readexactly(size)
                await conn.reader.readexactly(2)
            except asyncio.IncompleteReadError:
                conn.close()
                raise Truncated(f"chunked body ended after {len(body)} bytes") from None
    else:
        body += await conn.reader.read()  # delimited by the close: the client cannot tell
        framed = False
        keep = False
    conn.used += 1
    if not keep:
        conn.close()
    return status, h, bytes(body), framed


# -- the load and the checks -----------------------------------------------------------


class Tally:
    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.counts: collections.Counter = collections.Counter()
        self.xcache: collections.Counter = collections.Counter()
        self.errors: list = []  # (t, domain, kind, detail, path)
        self.corrupt: list = []
        self.silent: list = []
        self.etags: dict = {}  # (domain, path) -> (etag, last-modified)

    def now(self) -> float:
        return time.monotonic() - self.t0


def expected(path: str, h: dict) -> bytes:
    etag = (h.get("etag") or [""])[0]
    return content(path, version_of_etag(etag))


def check(t: Tally, domain: str, method: str, path: str, req: dict, status: int, h: dict,
          body: bytes, framed: bool, partial: bool = False) -> None:
    x = (h.get("x-cache") or ["-"])[0]
    t.xcache[x] += 1
    t.counts[status] += 1
    if status in (200, 206, 304) and "etag" in h:
        t.etags[(domain, path)] = (h["etag"][0], (h.get("last-modified") or [""])[0])
    if status >= 400:
        t.errors.append((t.now(), domain, f"status {status}", body[:80].decode("latin-1").strip()
                         + f" x-cache={x}", path))
        return
    if status == 304:
        if not any(k in req for k in ("If-None-Match", "If-Modified-Since")):
            t.corrupt.append((t.now(), domain, path, "304 to an unconditional request"))
        return
    try:
        full = expected(path, h)
    except ValueError as e:
        t.corrupt.append((t.now(), domain, path, str(e)))
        return
    if method == "HEAD":
        if int((h.get("content-length") or ["-1"])[0]) != len(full):
            t.corrupt.append((t.now(), domain, path, "HEAD with a wrong Content-Length"))
        return
    if status == 206:
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", (h.get("content-range") or [""])[0])
        if not m:
            t.corrupt.append((t.now(), domain, path, "206 without Content-Range"))
            return
        first, last = int(m.group(1)), int(m.group(2))
        want = full[first:last + 1]
    else:
        want = full
    if partial:
        want = want[:len(body)]
    if body == want:
        return
    if want.startswith(body):
        t.silent.append((t.now(), domain, path, f"{len(body)} of {len(want)} bytes, framed={framed}"))
    else:
        t.corrupt.append((t.now(), domain, path, f"{len(body)} bytes differ from the object "
                          f"(x-cache={x}, etag={(h.get('etag') or ['-'])[0]})"))


def pick(rng: random.Random, t: Tally) -> tuple:
    """A request: (domain, method, path, headers)."""
    domain = rng.choice(DOMAINS)
    r = rng.random()
    if r < 0.40:
        path = f"/c/{rng.randrange(300)}-{rng.choice(SIZES)}.bin"
    elif r < 0.55:
        path = f"/v/{rng.randrange(50)}-{rng.choice(SIZES)}.bin"
    elif r < 0.70:
        path = f"/u/{rng.randrange(100)}-{rng.choice(SIZES)}.bin"
    elif r < 0.73:
        path = f"/big/{rng.randrange(4)}.bin"
    else:
        path = f"/c/{rng.randrange(60)}-{rng.choice(SIZES)}.bin"  # the hot set
    method, headers = "GET", {}
    kind = rng.random()
    known = t.etags.get((domain, path))
    if kind < 0.08:
        method = "HEAD"
    elif kind < 0.18:
        size = size_of(path)
        first = rng.randrange(size)
        headers["Range"] = f"bytes={first}-{min(size - 1, first + rng.randrange(1, 70000))}"
    elif kind < 0.28 and known:
        headers["If-None-Match"] = known[0]
    elif kind < 0.33:
        headers["If-None-Match"] = '"wrong"'
    elif kind < 0.38 and known and known[1]:
        headers["If-Modified-Since"] = known[1]
    return domain, method, path, headers


async def worker(port: int, t: Tally, rate: float, seed: int, stop: float) -> None:
    rng = random.Random(seed)
    conn = Conn(port)
    next_at = time.monotonic()
    while time.monotonic() < stop:
        domain, method, path, headers = pick(rng, t)
        try:
            status, h, body, framed = await asyncio.wait_for(
                exchange(conn, method, path, domain, headers), 90)
            check(t, domain, method, path, headers, status, h, body, framed)
        except Truncated as e:
            t.errors.append((t.now(), domain, "truncated (client can tell)", str(e), path))
            conn.close()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                asyncio.TimeoutError, ValueError, IndexError) as e:
            t.errors.append((t.now(), domain, "connection", f"{type(e).__name__}: {e} {conn.describe()}", path,
                             conn.opened - t.t0))
            conn.close()
        next_at += 1.0 / rate
        delay = next_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            next_at = time.monotonic()
    conn.close()


async def slow_reader(port: int, t: Tally, seed: int, stop: float) -> None:
    rng = random.Random(seed)
    conn = Conn(port)
    while time.monotonic() < stop:
        domain, path = rng.choice(DOMAINS), f"/big/{rng.randrange(4)}.bin"
        try:
            status, h, body, framed = await exchange(conn, "GET", path, domain, {},
                                                     read_rate=2 * 1024 * 1024)
            check(t, domain, "GET", path, {}, status, h, body, framed)
            t.counts["slow reads"] += 1
        except Truncated as e:
            t.errors.append((t.now(), domain, "truncated (client can tell)", str(e), path))
            conn.close()
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
            t.errors.append((t.now(), domain, "connection", f"{type(e).__name__}: {e} {conn.describe()}", path,
                             conn.opened - t.t0))
            conn.close()
            await asyncio.sleep(0.2)


async def resetter(port: int, t: Tally, seed: int, stop: float) -> None:
    rng = random.Random(seed)
    while time.monotonic() < stop:
        conn = Conn(port)
        domain = rng.choice(DOMAINS)
        path = rng.choice([f"/big/{rng.randrange(4)}.bin", f"/u/{rng.randrange(100)}-100000.bin",
                           f"/c/{rng.randrange(300)}-100000.bin"])
        try:
            status, h, body, framed = await exchange(conn, "GET", path, domain, {},
                                                     reset_after=rng.randrange(1000, 60000))
            check(t, domain, "GET", path, {}, status, h, body, framed, partial=True)
            t.counts["resets"] += 1
        except Truncated as e:
            t.errors.append((t.now(), domain, "truncated (client can tell)", str(e), path))
        except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as e:
            t.errors.append((t.now(), domain, "connection", f"{type(e).__name__}: {e} {conn.describe()}", path,
                             conn.opened - t.t0))
        conn.close(reset=True)
        await asyncio.sleep(0.1)


# -- processes and chaos --------------------------------------------------------------------


def accepts(ip: str, port: int) -> bool:
    try:
        socket.create_connection((ip, port), timeout=0.2).close()
        return True
    except OSError:
        return False


class World:
    def __init__(self, work: str, seconds: float) -> None:
        self.work = work
        self.seconds = seconds
        self.oport = shared_port(*ORIGIN_IPS.values())
        self.origins: dict = {}
        self.port = free_port()
        self.admin = free_port()
        self.cache_dir = os.path.join(work, "cache")
        self.config = os.path.join(work, "site.py")
        self.logfile = os.path.join(work, "twistd.log")
        self.node: subprocess.Popen | None = None
        self.events: list = []  # (start, end, domains, kind)
        self.rss: list = []
        self.restart_s: list = []
        self.at_kill: tuple = (0, 0)
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def start_origin(self, name: str) -> None:
        ip = ORIGIN_IPS[name]
        self.origins[name] = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--origin", ip, str(self.oport), name],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.work, f"origin-{name}.log"), "a"))
        deadline = time.monotonic() + 15
        while not accepts(ip, self.oport):
            if time.monotonic() > deadline:
                raise RuntimeError(f"origin {name} did not start")
            time.sleep(0.02)

    def write_config(self, rules: bool = False) -> None:
        o = lambda name: f"{ORIGIN_IPS[name]}:{self.oport}"  # noqa: E731
        extra = 'cache=[CacheRule(prefix="/c/", ttl=3)],' if rules else ""
        with open(self.config, "w") as f:
            f.write(textwrap.dedent(f"""
                from cdnpull.config import CacheRule, Domain, IPOrigin, Probe, Settings
                settings = Settings(cache_dir={self.cache_dir!r}, cache_memory="4MiB",
                                    cache_disk="2GiB", cache_max_object="16MiB")
                probe = Probe(path="/health", interval=1.0, timeout=1.0, block_for=3.0)
                timeouts = dict(connect_timeout=1.0, first_byte_timeout=3.0, total_timeout=60.0)
                domains = [
                    Domain("a.soak.test", origin=IPOrigin([{o("a1")!r}, {o("a2")!r}]),
                           standby=IPOrigin([{o("sb")!r}]), probe=probe, {extra} **timeouts),
                    Domain("b.soak.test", origin=IPOrigin([{o("b1")!r}]), probe=probe, {extra}
                           **timeouts),
                ]
                """))

    def start_node(self) -> None:
        cmd = cdn_argv(self.work, self.config, f"tcp:{self.port}:interface=127.0.0.1",
                       admin=f"tcp:{self.admin}:interface=127.0.0.1")
        out = open(self.logfile, "a")
        started = time.monotonic()
        self.node = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=self.work)
        while not (accepts("127.0.0.1", self.port) and accepts("127.0.0.1", self.admin)):
            if self.node.poll() is not None:
                raise RuntimeError("the node exited:\n" + open(self.logfile).read()[-3000:])
            time.sleep(0.005)
        self.restart_s.append(time.monotonic() - started)

    def node_rss(self) -> int:
        return rss_kib(self.node.pid)  # type: ignore[union-attr]

    def api(self, method: str, path: str, body: dict | None = None) -> tuple[int, str]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin}{path}", method=method,
                                     data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stop_all(self) -> None:
        for p in list(self.origins.values()) + ([self.node] if self.node else []):
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGCONT)
                except ProcessLookupError:
                    pass
                p.kill()
                p.wait(10)


async def chaos(w: World, t: Tally, stop: float, log: list) -> None:
    """Every kind of chaos on its own schedule (seconds from the start)."""
    loop = asyncio.get_running_loop()
    d = w.seconds

    def at(kind: str, start: float, period: float):  # type: ignore[no-untyped-def]
        times = []
        s = start
        while s < d - 8:
            times.append((s, kind))
            s += period
        return times

    plan = sorted(
        at("kill-origin", 12, 30) + at("503", 22, 45) + at("sigstop", 37, 50) + at("sighup", 8, 20)
        + at("switch", 17, 30) + at("purge", 5, 20) + [(d / 2, "kill-node")])
    kills = 0
    hups = 0
    purges = 0
    for when, kind in plan:
        delay = when - w.now()
        if delay > 0:
            await asyncio.sleep(delay)
        s = w.now()
        if kind == "kill-origin":
            name = ("a1", "b1")[kills % 2]
            kills += 1
            w.origins[name].kill()
            w.origins[name].wait()
            await asyncio.sleep(1.5)
            await loop.run_in_executor(None, w.start_origin, name)
            w.events.append((s, w.now() + 5, {"a1": "a", "b1": "b"}[name], f"kill -9 origin {name}"))
        elif kind == "503":
            for name in ("a1", "a2", "b1"):
                w.origins[name].send_signal(signal.SIGUSR1)
            await asyncio.sleep(5)
            for name in ("a1", "a2", "b1"):
                w.origins[name].send_signal(signal.SIGUSR2)
            w.events.append((s, w.now() + 2, "ab", "503 from every primary"))
        elif kind == "sigstop":
            w.origins["a2"].send_signal(signal.SIGSTOP)
            await asyncio.sleep(5)
            w.origins["a2"].send_signal(signal.SIGCONT)
            w.events.append((s, w.now() + 4, "a", "SIGSTOP origin a2"))
        elif kind == "sighup":
            hups += 1
            w.write_config(rules=hups % 2 == 0)
            w.node.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
            w.events.append((s, s, "", "SIGHUP" + (" with changed cache rules" if hups % 2 == 0 else "")))
        elif kind == "switch":
            code1, _ = await loop.run_in_executor(None, w.api, "POST", "/api/domains/a.soak.test/switch")
            await asyncio.sleep(8)
            code2, _ = await loop.run_in_executor(None, w.api, "POST", "/api/domains/a.soak.test/switch")
            w.events.append((s, w.now(), "", f"switch a.soak.test and back ({code1}, {code2})"))
        elif kind == "purge":
            prefix = ["http://a.soak.test/c/1", "http://b.soak.test/c/", "http://a.soak.test/big/",
                      "http://b.soak.test/v/", "http://a.soak.test/"][purges % 5]
            purges += 1
            code, out = await loop.run_in_executor(None, w.api, "POST", "/api/purge", {"prefixes": [prefix]})
            w.events.append((s, s, "", f"purge {prefix}: {code} {' '.join(out.split())}"))
        elif kind == "kill-node":
            w.rss.append(("before the node's kill -9", w.node_rss()))
            w.node.kill()  # type: ignore[union-attr]
            w.node.wait()  # type: ignore[union-attr]
            w.at_kill = count_files(w.cache_dir)
            await loop.run_in_executor(None, w.start_node)
            w.events.append((s, w.now() + 1, "ab", "kill -9 of the node, restarted on the same disk cache"
                             f" (listening {w.restart_s[-1]:.2f} s after the start)"))
        log.append(f"{s:7.1f} s  {w.events[-1][3]}")


def count_files(directory: str) -> tuple[int, int]:
    """(complete objects, temporary files) under C{directory}."""
    objects = temps = 0
    for _root, _dirs, files in os.walk(directory):
        objects += sum(1 for n in files if n.endswith(".obj"))
        temps += sum(1 for n in files if n.endswith(".tmp"))
    return objects, temps


def explained(w: World, err: tuple) -> str | None:
    """Which chaos allows this client error, if any."""
    t, domain, kind, detail, path = err[:5]
    opened = err[5] if len(err) > 5 else None
    d = domain[0]
    for start, end, domains, what in w.events:
        if (what.startswith("kill -9 of the node") and opened is not None and opened < start
                and kind == "connection" and t >= start):
            return "a keep-alive connection to the node before its kill -9"
        if not start - 0.5 <= t <= end:
            continue
        if what.startswith("kill -9 of the node"):
            return what
        if d not in domains:
            continue
        if d == "b":
            return what  # no standby: the origin's trouble is the client's
        # With a standby: only a body cut mid-way by the origin that sent it.
        if kind.startswith("truncated") and ("kill" in what or "SIGSTOP" in what):
            return what
    return None


async def run(args: argparse.Namespace) -> int:
    work = tempfile.mkdtemp(prefix="cdnpull-soak-")
    w = World(work, args.seconds)
    t = Tally(time.monotonic())
    w.t0 = t.t0
    log: list = []
    try:
        for name in ORIGIN_IPS:
            w.start_origin(name)
        w.write_config()
        w.start_node()
        print(f"soak: {args.seconds:.0f} s, ~{args.rate:.0f} req/s, node on 127.0.0.1:{w.port}, "
              f"work dir {work}", flush=True)
        stop = time.monotonic() + args.seconds
        n = 24
        tasks = [asyncio.create_task(worker(w.port, t, args.rate / n, i, stop)) for i in range(n)]
        tasks += [asyncio.create_task(slow_reader(w.port, t, 100 + i, stop)) for i in range(2)]
        tasks += [asyncio.create_task(resetter(w.port, t, 200 + i, stop)) for i in range(2)]
        chaos_task = asyncio.create_task(chaos(w, t, stop, log))
        await asyncio.sleep(5)
        w.rss.append(("after 5 s", w.node_rss()))
        await asyncio.gather(*tasks)
        await chaos_task
        w.rss.append(("at the end", w.node_rss()))
        await asyncio.sleep(1)
    finally:
        w.stop_all()
    text = open(w.logfile, encoding="utf-8", errors="replace").read()
    loaded = re.findall(r"cache: checked the disk cache \S+ in \S+ s: (\d+) objects found, (\d+) dropped", text)
    unexplained = [e for e in t.errors if explained(w, e) is None]
    total = sum(v for k, v in t.counts.items() if isinstance(k, int))
    print("\nchaos:")
    for line in log:
        print("  " + line)
    print(f"\nrequests: {total} answered ({total / args.seconds:.0f}/s), statuses "
          f"{dict(sorted((k, v) for k, v in t.counts.items() if isinstance(k, int)))}, "
          f"slow 5 MiB reads {t.counts['slow reads']}, resets mid-body {t.counts['resets']}")
    print(f"X-Cache: {dict(t.xcache.most_common())}")
    print(f"node RSS (KiB): {w.rss}; node listening after (re)start: "
          f"{', '.join(f'{s:.2f} s' for s in w.restart_s)}")
    if len(loaded) > 1:
        print(f"disk cache at the node's kill -9: {w.at_kill[0]} objects and {w.at_kill[1]} "
              f"temporary files; after the restart the loader found {loaded[1][0]} objects "
              f"and dropped {loaded[1][1]}")
    by_domain = collections.Counter(e[1] for e in t.errors)
    print(f"client errors: {len(t.errors)} ({dict(by_domain)}), explained by chaos: "
          f"{len(t.errors) - len(unexplained)}")
    report = {
        "corrupt bodies": len(t.corrupt),
        "silently truncated bodies": len(t.silent),
        "tracebacks in the log": text.count("Traceback"),
        "unexplained client errors": len(unexplained),
        "disk-write failures": text.count("could not write"),
    }
    for k, v in report.items():
        print(f"  {k}: {v}")
    print(f"log lines: 'cut short' {text.count('cut short')}, 'dropping' {text.count('dropping')}, "
          f"'checksum' {text.count('checksum')}, 'unexpected error' {text.count('unexpected error')}, "
          f"' 503 for ' {text.count(' 503 for ')}")
    for name, items in (("corrupt", t.corrupt), ("silently truncated", t.silent)):
        for item in items[:10]:
            print(f"  {name}: {item}")
    for e in unexplained[:25]:
        print(f"  unexplained: {e[0]:7.1f} s {e[1]} {e[4]}: {e[2]}: {e[3]}")
    explained_kinds = collections.Counter(explained(w, e) for e in t.errors if explained(w, e))
    for what, n in explained_kinds.most_common():
        print(f"  explained x{n}: {what}")
    if "Traceback" in text:
        i = text.index("Traceback")
        print("first traceback:\n" + text[max(0, i - 300):i + 2500])
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(report.values()) else 0


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--origin":
        run_origin(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s of the steady load")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, cache)")
    args = parser.parse_args()
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
