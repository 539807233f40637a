"""
The disk cache across restarts, with a real C{twistd cdnpull}: the node
listens before the disk is checked, serves disk HITs at once, and an object
damaged on disk is dropped and fetched again, never served.
"""

from __future__ import annotations

import glob
import os
import stat

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from .support import Client, Origin, cdn_started, write_config

pytestmark = pytest.mark.timeout(120)


def sleep(seconds: float):  # type: ignore[no-untyped-def]
    return deferLater(reactor, seconds, lambda: None)


def xcache(response) -> str:  # type: ignore[no-untyped-def]
    return response.headers.getRawHeaders(b"x-cache", [b"-"])[0].decode()


def object_of(cache_dir: str, marker: bytes) -> str:
    for path in glob.glob(os.path.join(cache_dir, "*", "*", "*.obj")):
        with open(path, "rb") as f:
            if marker in f.read():
                return path
    raise AssertionError(f"no object holds {marker!r}")


@pytest_twisted.ensureDeferred
async def test_damaged_objects_are_dropped_and_fetched_again_after_a_restart(tmp_path):  # type: ignore[no-untyped-def]
    o = Origin("127.0.0.8", "disk").start()
    bodies = {f"/{name}.txt": (name.encode() + b"-") * 200 for name in ("good", "flipped", "cut")}
    # Larger than what a start-up check reads: found damaged when it is read.
    bodies["/large.txt"] = b"large-" * 60000
    for path, body in bodies.items():
        o.text(path, body, headers={b"cache-control": b"max-age=600"})
    cache_dir = str(tmp_path / "cache")
    config = write_config(str(tmp_path), f"""
        from cdnpull.config import Domain, IPOrigin, Settings
        settings = Settings(cache_dir={cache_dir!r}, cache_disk="1GiB")
        domains = [Domain("disk.test.com", origin=IPOrigin(["{o.addr}"]), probe=None)]
        """)
    cdn = await cdn_started(config, str(tmp_path))
    try:
        client = Client(cdn.url)
        for path, body in bodies.items():
            r, b = await client.get(path, host="disk.test.com")
            assert (xcache(r), b) == ("MISS", body)
        for _ in range(100):  # written in a thread
            if len(glob.glob(os.path.join(cache_dir, "*", "*", "*.obj"))) == 4:
                break
            await sleep(0.05)
        cdn.stop()
        objects = glob.glob(os.path.join(cache_dir, "*", "*", "*.obj"))
        assert len(objects) == 4
        for path in objects:  # 0600 files in 0700 directories (docs/security.md)
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
            assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        flipped = object_of(cache_dir, b"flipped-")
        data = bytearray(open(flipped, "rb").read())
        data[data.index(b"flipped-flipped") + 3] ^= 0x20  # same length, one bit
        open(flipped, "wb").write(bytes(data))
        cut = object_of(cache_dir, b"cut-")
        os.truncate(cut, os.path.getsize(cut) - 100)
        large = object_of(cache_dir, b"large-")
        data = bytearray(open(large, "rb").read())
        data[-5000] ^= 0x20
        open(large, "wb").write(bytes(data))

        cdn = await cdn_started(config, str(tmp_path))
        client = Client(cdn.url)
        r, b = await client.get("/good.txt", host="disk.test.com")
        assert (xcache(r), b) == ("HIT", bodies["/good.txt"])
        for _ in range(100):  # the large one indexed by the loader, not looked up directly
            if "checked the disk cache" in cdn.log():
                break
            await sleep(0.05)
        for path in ("/flipped.txt", "/cut.txt", "/large.txt"):
            r, b = await client.get(path, host="disk.test.com")
            assert (r.code, xcache(r), b) == (200, "MISS", bodies[path])
            r, b = await client.get(path, host="disk.test.com")
            assert (xcache(r), b) == ("HIT", bodies[path])
        assert o.count("/good.txt") == 1
        assert o.count("/flipped.txt") == 2 and o.count("/cut.txt") == 2
        assert o.count("/large.txt") == 2
        log = cdn.log()
        assert log.count("dropping damaged object") >= 2, log
        assert "dropping unreadable object" in log and "checksum mismatch" in log
        assert "Traceback" not in log
    finally:
        cdn.stop()
        await o.stop()
