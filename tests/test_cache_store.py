"""The disk store: atomic objects, damaged files dropped at load, LRU by bytes."""

from __future__ import annotations

import glob
import os

from twisted.internet.defer import maybeDeferred

from cdnpull.cache.store import DiskStore, Entry, MemoryStore, Store


def inline(f, *args):  # type: ignore[no-untyped-def]
    return maybeDeferred(f, *args)


def entry(key: str, body: bytes) -> Entry:
    return Entry(key=key, variant=((b"accept-encoding", b"gzip"),), vary=(b"accept-encoding",),
                 status=200, phrase=b"OK", headers=[(b"content-type", b"text/plain")],
                 length=len(body), request_time=1.0, response_time=2.0, lifetime=60.0, body=body)


def result(d):  # type: ignore[no-untyped-def]
    out = []
    d.addBoth(out.append)
    return out[0]


def test_objects_survive_a_reload(tmp_path):  # type: ignore[no-untyped-def]
    disk = DiskStore(str(tmp_path), 10 ** 6, inline)
    disk.load()
    result(disk.put(entry("h/a", b"alpha")))
    again = DiskStore(str(tmp_path), 10 ** 6, inline)
    again.load()
    store = Store(MemoryStore(10 ** 6), again)
    [found] = store.variants("h/a")
    assert found.body is None and found.variant == ((b"accept-encoding", b"gzip"),)
    full = result(store.body(found))
    assert full.body == b"alpha" and full.headers == [(b"content-type", b"text/plain")]


def test_truncated_corrupt_and_temporary_files_are_dropped_at_load(tmp_path):  # type: ignore[no-untyped-def]
    disk = DiskStore(str(tmp_path), 10 ** 6, inline)
    disk.load()
    for k in ("h/a", "h/b", "h/c"):
        result(disk.put(entry(k, k.encode() * 100)))
    files = sorted(glob.glob(str(tmp_path / "*" / "*" / "*.obj")))
    assert len(files) == 3
    with open(files[0], "r+b") as f:  # truncated (a crash before rename cannot do this,
        f.truncate(os.path.getsize(files[0]) - 10)  # a damaged disk can)
    with open(files[1], "r+b") as f:
        f.seek(0)
        f.write(b"garbage!")
    leftover = tmp_path / "ab" / "cd"
    leftover.mkdir(parents=True, exist_ok=True)
    (leftover / "x.obj.123.tmp").write_bytes(b"half an object")
    again = DiskStore(str(tmp_path), 10 ** 6, inline)
    again.load()
    assert len(again) == 1
    assert not (leftover / "x.obj.123.tmp").exists()
    assert len(glob.glob(str(tmp_path / "*" / "*" / "*.obj"))) == 1


def test_a_body_that_fails_its_checksum_is_not_served(tmp_path):  # type: ignore[no-untyped-def]
    disk = DiskStore(str(tmp_path), 10 ** 6, inline)
    disk.load()
    result(disk.put(entry("h/a", b"A" * 1000)))
    [path] = glob.glob(str(tmp_path / "*" / "*" / "*.obj"))
    data = bytearray(open(path, "rb").read())
    data[data.index(b"AAAA")] = ord("B")  # same length, one byte flipped
    open(path, "wb").write(bytes(data))
    again = DiskStore(str(tmp_path), 10 ** 6, inline)
    again.load()
    store = Store(MemoryStore(10 ** 6), again)
    [found] = store.variants("h/a")
    assert result(store.body(found)) is None
    assert store.variants("h/a") == []


def test_disk_lru_by_bytes(tmp_path):  # type: ignore[no-untyped-def]
    disk = DiskStore(str(tmp_path), 3000, inline)
    disk.load()
    for k in ("h/a", "h/b", "h/c", "h/d"):
        result(disk.put(entry(k, b"x" * 600)))
    assert disk.size <= 3000
    assert disk.get(("h/a", ((b"accept-encoding", b"gzip"),))) is None
    assert len(glob.glob(str(tmp_path / "*" / "*" / "*.obj"))) == len(disk)


def test_answers_being_stored_share_a_byte_budget():
    from cdnpull.cache.fill import Fill, FillBudget

    budget = FillBudget(1000)
    a, b = Fill("h/a", 800, budget), Fill("h/b", 800, budget)
    for f in (a, b):
        f.prepare(result=None, storing=True)
    a.feed(b"a" * 600)
    assert a.storing and budget.used == 600
    b.feed(b"b" * 300)
    assert b.storing and budget.used == 900
    b.feed(b"b" * 200)  # 1100 > 1000: b stops storing and gives its bytes back
    assert not b.storing and a.storing and budget.used == 600
    a.feed(b"a" * 300)  # over its own max_object: streamed, not stored
    assert not a.storing and budget.used == 0
