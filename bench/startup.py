"""
How fast a node with a big disk cache is back after a crash.

Fills a disk-cache directory with N small objects (written directly in the
store's own format, by the cdnpull on PYTHONPATH), then starts
C{twistd cdnpull} on it and measures, from the process start:

 - until the client port accepts connections,
 - until the first disk HIT (the object written first, which the background
   loader, newest first, reaches last),
 - until the log says the disk cache is fully checked (when it says so).

It also times the same start with an empty cache and without a cache
(where the rest of the time goes: imports, config, listening).  Everything
runs on loopback; the origin address is never contacted.

    python bench/startup.py [--objects 100000] [--size 1024] [--runs 3]

Run it against another tree by pointing PYTHONPATH there, e.g.
C{PYTHONPATH=/path/to/old python bench/startup.py}.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import cdn_argv, free_port  # noqa: E402
HOST = "bench.test.com"
OBJECTS = 100_000


def fill(directory: str, n: int, size: int) -> None:
    """N objects of C{size} bytes, in the format of the cdnpull being measured."""
    import inspect

    from cdnpull.cache import store
    from cdnpull.cache.handler import Cache

    # The key the node computes for http://HOST/o/i (with the scheme, where
    # the code under test puts it there).
    if "scheme" in inspect.signature(Cache.key_of).parameters:
        key_of = lambda i: Cache.key_of("http", HOST, b"/o/%d" % i, False)  # noqa: E731
    else:
        key_of = lambda i: Cache.key_of(HOST, b"/o/%d" % i, False)  # noqa: E731
    now = time.time()
    made = set()
    for i in range(n):
        body = (b"%08d" % i) * (size // 8)
        entry = store.Entry(
            key=key_of(i), variant=(), vary=(), status=200, phrase=b"OK",
            headers=[(b"cache-control", b"max-age=864000"), (b"content-type", b"application/octet-stream")],
            length=len(body), request_time=now, response_time=now, lifetime=864000.0, body=body)
        path = os.path.join(directory, store._file_name(entry.ident))
        parent = os.path.dirname(path)
        if parent not in made:
            os.makedirs(parent, mode=0o700, exist_ok=True)
            made.add(parent)
        with open(path, "wb") as f:
            f.write(store.encode_object(entry))
        os.utime(path, (now - n + i, now - n + i))  # object 0 is the oldest


def get(port: int, path: str) -> tuple[int, str]:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    status = int(head.split()[1])
    xcache = next((line.split(":", 1)[1].strip() for line in head.split("\r\n")
                   if line.lower().startswith("x-cache:")), "-")
    return status, xcache


def latencies(port: int, n: int, seed: int) -> list[float]:
    """Seconds each of C{n} sequential disk HITs of other objects took."""
    out = []
    for i in range(n):
        t = time.monotonic()
        status, xcache = get(port, f"/o/{(seed * 7919 + i * 104729) % OBJECTS}")
        out.append(time.monotonic() - t)
        assert (status, xcache) == (200, "HIT"), (status, xcache)
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def start(work: str, cache_dir: str | None, want_hit: bool) -> dict:
    port = free_port()
    origin = f"127.0.0.9:{free_port('127.0.0.9')}"  # nothing listens: never used
    settings = f"Settings(cache_dir={cache_dir!r}, cache_disk='100GiB')" if cache_dir else "Settings()"
    config = os.path.join(work, "site.py")
    with open(config, "w") as f:
        f.write(textwrap.dedent(f"""
            from cdnpull.config import Domain, IPOrigin, Settings
            settings = {settings}
            domains = [Domain({HOST!r}, origin=IPOrigin([{origin!r}]), probe=None)]
            """))
    log = os.path.join(work, f"twistd-{port}.log")
    cmd = cdn_argv(work, config, f"tcp:{port}:interface=127.0.0.1")
    out = open(log, "w")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=work)
    result: dict = {}
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError(open(log).read())
                time.sleep(0.001)
        result["listen"] = time.monotonic() - t0
        if want_hit:
            status, xcache = get(port, "/o/0")
            result["first_hit"] = time.monotonic() - t0
            result["hit"] = (status, xcache)
            result["during"] = latencies(port, 200, 100)
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                text = open(log).read()
                if "checked the disk cache" in text or "dropped" in text and "objects" in text:
                    result["loaded"] = time.monotonic() - t0
                    break
                time.sleep(0.01)
            result["after"] = latencies(port, 200, 300)
    finally:
        proc.terminate()
        proc.wait(30)
        out.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    global OBJECTS
    OBJECTS = args.objects
    import cdnpull

    print(f"cdnpull from {os.path.dirname(cdnpull.__file__)}")
    work = tempfile.mkdtemp(prefix="cdnpull-startup-")
    try:
        cache_dir = os.path.join(work, "cache")
        t = time.monotonic()
        fill(cache_dir, args.objects, args.size)
        print(f"filled {cache_dir} with {args.objects} objects of {args.size} bytes "
              f"in {time.monotonic() - t:.1f} s")
        rows = {"no disk cache": [], "empty disk cache": [], f"{args.objects} objects": []}
        empty = os.path.join(work, "empty")
        for _ in range(args.runs):
            rows["no disk cache"].append(start(work, None, False))
            rows["empty disk cache"].append(start(work, empty, False))
            rows[f"{args.objects} objects"].append(start(work, cache_dir, True))
        for name, results in rows.items():
            line = f"{name:>20}: listening after {statistics.median(r['listen'] for r in results):.3f} s"
            if "first_hit" in results[0]:
                line += (f", first disk HIT after {statistics.median(r['first_hit'] for r in results):.3f} s"
                         f" ({results[0]['hit'][0]} {results[0]['hit'][1]})")
            if all("loaded" in r for r in results):
                line += f", whole cache checked after {statistics.median(r['loaded'] for r in results):.3f} s"
            print(line + f"  (median of {len(results)})")
            if "during" in results[0]:
                for when in ("during", "after"):
                    lat = [x for r in results for x in r[when]]
                    print(f"{'':>22}{len(lat)} sequential HITs {when} the check: "
                          f"median {statistics.median(lat) * 1000:.1f} ms, p99 {pct(lat, 0.99) * 1000:.1f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
