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
    result(disk.put(entry("h/a", b"A" * 10000)))  # larger than the first read
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


# -- concurrent writes, file modes, the disk budget, loading in the background -------


class Manual:
    """A thread-pool stand-in: queued jobs run when the test says, in its order."""

    def __init__(self) -> None:
        self.queue: list = []

    def __call__(self, f, *args):  # type: ignore[no-untyped-def]
        from twisted.internet.defer import Deferred

        d = Deferred()
        self.queue.append((f, args, d))
        return d

    def run_round(self, reverse: bool = False) -> int:
        """Run every queued job; fire their Deferreds in queue order (or reversed)."""
        from twisted.python.failure import Failure

        jobs, self.queue = self.queue, []
        done = []
        for f, args, d in jobs:
            try:
                done.append((d, f(*args)))
            except Exception:
                done.append((d, Failure()))
        for d, outcome in (reversed(done) if reverse else done):
            if isinstance(outcome, Failure):
                d.errback(outcome)
            else:
                d.callback(outcome)
        return len(jobs)

    def drain(self, reverse: bool = False) -> None:
        while self.run_round(reverse):
            pass


def variant_entry(key: str, body: bytes, tag: bytes) -> Entry:
    e = entry(key, body)
    e.headers = [(b"content-type", b"text/plain"), (b"x-tag", tag)]
    return e


def test_two_writers_of_one_path_never_share_a_temporary_file(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """Both threads are between creating their temporary file and renaming it at once."""
    import threading

    from cdnpull.cache import store as store_module

    target = tmp_path / "ab" / "cd" / "x.obj"
    target.parent.mkdir(parents=True)
    barrier = threading.Barrier(2, timeout=5)
    temps = []
    real_fsync = os.fsync

    def fsync(fd):  # type: ignore[no-untyped-def]
        name = os.readlink(f"/proc/self/fd/{fd}")
        if name.endswith(".tmp"):
            temps.append(name)
            barrier.wait()
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    errors = []

    def write(data):  # type: ignore[no-untyped-def]
        try:
            store_module._write_atomically(str(target), data)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=write, args=(d,)) for d in (b"a" * 5000, b"b" * 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    assert len(temps) == 2 and temps[0] != temps[1]
    assert target.read_bytes() in (b"a" * 5000, b"b" * 7)
    assert os.listdir(target.parent) == ["x.obj"]


def test_objects_are_0600_in_0700_directories(tmp_path):  # type: ignore[no-untyped-def]
    import stat

    root = tmp_path / "cache"
    disk = DiskStore(str(root), 10 ** 6, inline)
    disk.load()
    result(disk.put(entry("h/a", b"alpha")))
    [path] = glob.glob(str(root / "*" / "*" / "*.obj"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    for d in (root, os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d


def test_concurrent_stores_of_one_key_leave_an_intact_object(tmp_path):  # type: ignore[no-untyped-def]
    """
    Two answers for one key (two 304s at once): whatever order their writes
    finish in, the index describes the file that is on disk.
    """
    run = Manual()
    disk = DiskStore(str(tmp_path), 10 ** 6, run)
    run.drain(disk.load() and False)
    store = Store(MemoryStore(10 ** 6), disk)
    first, second = variant_entry("h/a", b"1" * 100, b"first"), variant_entry("h/a", b"2" * 7, b"second-longer")
    store.put(first)
    store.put(second)
    run.drain(reverse=True)  # the second write's callback runs first
    store.memory.remove(first.ident)
    [found] = store.variants("h/a")
    d = store.body(found)
    run.drain()
    full = result(d)
    assert full is not None and full.body == b"2" * 7 and (b"x-tag", b"second-longer") in full.headers
    assert len(glob.glob(str(tmp_path / "*" / "*" / "*"))) == 1


def test_concurrent_stores_of_one_key_in_threads(tmp_path):  # type: ignore[no-untyped-def]
    """The same with a real thread pool: many writes of one key, then the stored object is whole."""
    from concurrent.futures import ThreadPoolExecutor

    from twisted.internet.defer import Deferred

    pool = ThreadPoolExecutor(4)
    futures = []

    def threaded(f, *args):  # type: ignore[no-untyped-def]
        d = Deferred()
        futures.append((pool.submit(f, *args), d))
        return d

    def settle():  # type: ignore[no-untyped-def]
        while futures:
            fut, d = futures.pop(0)
            try:
                value = fut.result(10)
            except Exception as e:  # noqa: BLE001
                d.errback(e)
            else:
                d.callback(value)

    disk = DiskStore(str(tmp_path), 10 ** 7, threaded)
    disk.load()
    settle()
    for i in range(20):
        disk.put(variant_entry("h/a", bytes([65 + i]) * (1000 + 997 * i), b"n%d" % i))
    settle()
    [ident] = disk.idents()
    d = disk.read(ident)
    settle()
    pool.shutdown()
    full = result(d)
    assert full.body == bytes([65 + 19]) * (1000 + 997 * 19)
    assert read_object_direct(tmp_path, ident).body == full.body
    assert len(glob.glob(str(tmp_path / "*" / "*" / "*"))) == 1  # no temporary file left


def read_object_direct(root, ident):  # type: ignore[no-untyped-def]
    from cdnpull.cache.store import read_object

    [path] = glob.glob(str(root / "*" / "*" / "*.obj"))
    return read_object(path, ident)


def test_a_removal_while_writing_is_not_undone_by_the_write(tmp_path):  # type: ignore[no-untyped-def]
    run = Manual()
    disk = DiskStore(str(tmp_path), 10 ** 6, run)
    disk.load()
    run.drain()
    store = Store(MemoryStore(10 ** 6), disk)
    e = entry("h/a", b"alpha")
    store.put(e)  # written in a thread...
    store.purge([], ["h/"])  # ...and purged before the write finished
    run.drain()
    assert store.variants("h/a") == [] and len(disk) == 0
    assert glob.glob(str(tmp_path / "*" / "*" / "*")) == []


def test_the_disk_budget_counts_allocated_blocks(tmp_path):  # type: ignore[no-untyped-def]
    block = os.statvfs(str(tmp_path)).f_bsize
    disk = DiskStore(str(tmp_path), 10 * block, inline)
    disk.load()
    for i in range(30):
        result(disk.put(entry(f"h/{i}", b"x" * 10)))  # a few hundred bytes each, one block on disk
    files = glob.glob(str(tmp_path / "*" / "*" / "*.obj"))
    assert len(files) == len(disk) <= 10
    assert disk.size == sum(os.stat(f).st_blocks * 512 for f in files)
    again = DiskStore(str(tmp_path), 10 * block, inline)
    again.load()
    assert again.size == disk.size


def test_lookups_work_before_the_disk_is_indexed(tmp_path):  # type: ignore[no-untyped-def]
    """
    The loader runs in the background: a key it has not reached yet is
    found on disk directly; damaged objects are dropped on the way, and a
    purge while loading covers objects not indexed yet.
    """
    disk = DiskStore(str(tmp_path), 10 ** 6, inline)
    disk.load()
    for k in ("h/a", "h/b", "h/c", "h/d", "p/x"):
        result(disk.put(entry(k, k.encode() * 100)))
    by_key = {k: os.path.join(str(tmp_path), store_name(k)) for k in ("h/a", "h/b", "h/c", "h/d", "p/x")}
    with open(by_key["h/b"], "r+b") as f:  # a body that fails its checksum
        f.seek(-60, os.SEEK_END)
        f.write(b"Z")
    with open(by_key["h/c"], "r+b") as f:  # truncated
        f.truncate(os.path.getsize(by_key["h/c"]) - 5)

    run = Manual()
    again = DiskStore(str(tmp_path), 10 ** 6, run)
    loaded = again.load()
    store = Store(MemoryStore(10 ** 6), again)
    assert store.loading and len(again) == 0  # nothing read yet: the node already serves
    d = store.lookup("h/a")
    run.run_round()  # the probe runs before the loader's listing
    [found] = result(d)
    assert result(store.body(found)).body == b"h/a" * 100
    d = store.lookup("h/b")
    run.run_round()
    assert result(d) == []  # dropped, not served: the request becomes a miss
    store.purge([], ["p/"])
    run.drain()
    assert loaded.called and not store.loading
    assert sorted(k for k, _ in again.idents()) == ["h/a", "h/d"]
    assert not os.path.exists(by_key["h/b"]) and not os.path.exists(by_key["h/c"])
    assert not os.path.exists(by_key["p/x"])
    assert result(store.lookup("h/d"))[0].key == "h/d"


def store_name(key: str) -> str:
    from cdnpull.cache.store import _file_name

    return _file_name((key, ((b"accept-encoding", b"gzip"),)))


def test_a_write_while_loading_leaves_the_other_variants_to_the_loader(tmp_path):  # type: ignore[no-untyped-def]
    disk = DiskStore(str(tmp_path), 10 ** 6, inline)
    disk.load()
    gzip, br = entry("h/a", b"gzip body"), entry("h/a", b"br body")
    br.variant = ((b"accept-encoding", b"br"),)
    result(disk.put(gzip))
    result(disk.put(br))
    run = Manual()
    again = DiskStore(str(tmp_path), 10 ** 6, run)
    again.load()
    store = Store(MemoryStore(10 ** 6), again)
    fresh = entry("h/a", b"new gzip body")
    store.put(fresh)  # (a handler looks up first; a write alone must not hide the rest)
    run.drain()
    assert sorted(v for _, v in again.idents()) == [((b"accept-encoding", b"br"),),
                                                    ((b"accept-encoding", b"gzip"),)]
    store.memory.remove(fresh.ident)
    bodies = sorted(result_after(run, store.body(e)).body for e in store.variants("h/a"))
    assert bodies == [b"br body", b"new gzip body"]


def result_after(run, d):  # type: ignore[no-untyped-def]
    run.drain()
    return result(d)


def test_a_key_dropped_while_loading_is_not_brought_back_by_the_loader(tmp_path):  # type: ignore[no-untyped-def]
    """An invalidation (RFC 9111 4.4) or URL purge before the loader reached the key."""
    disk = DiskStore(str(tmp_path), 10 ** 6, inline)
    disk.load()
    for k in ("h/a", "h/b", "h/c"):
        result(disk.put(entry(k, k.encode() * 10)))
    run = Manual()
    again = DiskStore(str(tmp_path), 10 ** 6, run)
    again.load()
    store = Store(MemoryStore(10 ** 6), again)
    assert store.remove_key("h/a") == 0  # nothing indexed yet...
    store.purge(["h/b"], [])
    run.drain()
    assert [k for k, _ in again.idents()] == ["h/c"]  # ...and yet gone
    assert len(glob.glob(str(tmp_path / "*" / "*" / "*.obj"))) == 1
