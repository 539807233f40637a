"""
Where cached answers live: a byte-bounded LRU in memory and an optional
byte-bounded disk store that survives restarts.

Disk objects are written off the reactor thread (a temporary file, fsync,
rename, so an object is visible only when complete) and checked when the
store is loaded: a file whose length or end marker is wrong is dropped, and
left-over temporary files are removed, so a crash or C{kill -9} at any moment
never leaves a truncated object that is then served.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Optional

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

__all__ = ["Entry", "MemoryStore", "DiskStore", "Store"]

MAGIC = b"CDNPULL-OBJ1\n"
END = b"\nCDNPULL-END\n"
HEADER = struct.Struct("!Q")
# What Python spends around the bytes an entry holds (CPython 3.11, 64 bit):
# a bytes object's header; a (name, value) pair (tuple, two bytes headers,
# list slot); the Entry, its __dict__, ident and variant tuples, the LRU and
# variant-index slots.
BYTES_OVERHEAD = 33
PAIR_OVERHEAD = 56 + 2 * 33 + 8
ENTRY_OVERHEAD = 700


@dataclass
class Entry:
    """One stored answer (a variant of a key)."""

    key: str  # host + path (+ query)
    variant: tuple  # ((header, value), ...) of the request, for Vary
    vary: tuple  # the header names the answer varies on
    status: int
    phrase: bytes
    headers: list  # [(name, value)] end-to-end, as stored
    length: int
    request_time: float
    response_time: float
    lifetime: float
    auth_ok: bool = False
    body: Optional[bytes] = field(default=None, repr=False)

    @property
    def ident(self) -> tuple:
        return (self.key, self.variant)

    def header_map(self) -> dict:
        out: dict = {}
        for name, value in self.headers:
            out.setdefault(name.lower(), []).append(value)
        return out

    def cost(self) -> int:
        """
        The bytes this entry holds in memory: the body, every header and
        Vary value (each a tuple of two bytes objects in a list), the key,
        and the entry's own objects and index slots (measured with
        tracemalloc; tests/test_cache_handler.py checks the sum).
        """
        pairs = sum(len(n) + len(v) for n, v in self.headers) + sum(
            len(n) + len(v) for n, v in self.variant)
        count = len(self.headers) + len(self.variant)
        return (self.length + BYTES_OVERHEAD + pairs + count * PAIR_OVERHEAD
                + 2 * len(self.key) + ENTRY_OVERHEAD)

    def meta(self) -> dict:
        return {
            "key": self.key,
            "variant": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in self.variant],
            "vary": [n.decode("latin-1") for n in self.vary],
            "status": self.status,
            "phrase": self.phrase.decode("latin-1"),
            "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in self.headers],
            "length": self.length,
            "request_time": self.request_time,
            "response_time": self.response_time,
            "lifetime": self.lifetime,
            "auth_ok": self.auth_ok,
        }

    @classmethod
    def from_meta(cls, m: dict) -> "Entry":
        enc = lambda s: s.encode("latin-1")  # noqa: E731
        return cls(
            key=m["key"],
            variant=tuple((enc(n), enc(v)) for n, v in m["variant"]),
            vary=tuple(enc(n) for n in m["vary"]),
            status=int(m["status"]),
            phrase=enc(m["phrase"]),
            headers=[(enc(n), enc(v)) for n, v in m["headers"]],
            length=int(m["length"]),
            request_time=float(m["request_time"]),
            response_time=float(m["response_time"]),
            lifetime=float(m["lifetime"]),
            auth_ok=bool(m.get("auth_ok", False)),
        )


class MemoryStore:
    """A byte-bounded LRU of entries with their bodies."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self._lru: "OrderedDict[tuple, Entry]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._lru)

    def get(self, ident: tuple) -> Optional[Entry]:
        entry = self._lru.get(ident)
        if entry is not None:
            self._lru.move_to_end(ident)
        return entry

    def put(self, entry: Entry) -> bool:
        assert entry.body is not None
        cost = entry.cost()
        if cost > self.limit:
            return False
        self.remove(entry.ident)
        self._lru[entry.ident] = entry
        self.size += cost
        while self.size > self.limit:
            _, old = self._lru.popitem(last=False)
            self.size -= old.cost()
        return True

    def remove(self, ident: tuple) -> Optional[Entry]:
        old = self._lru.pop(ident, None)
        if old is not None:
            self.size -= old.cost()
        return old

    def idents(self) -> list[tuple]:
        return list(self._lru)


def _file_name(ident: tuple) -> str:
    key, variant = ident
    h = hashlib.sha256(repr((key, variant)).encode("utf-8", "surrogateescape")).hexdigest()
    return os.path.join(h[:2], h[2:4], h + ".obj")


def encode_object(entry: Entry) -> bytes:
    assert entry.body is not None
    meta = json.dumps(entry.meta(), separators=(",", ":")).encode("utf-8")
    return b"".join([MAGIC, HEADER.pack(len(meta)), meta, entry.body, END,
                     hashlib.sha256(entry.body).digest()])


def read_meta(path: str) -> tuple[Entry, int]:
    """
    The entry of a disk object (without its body) and the body's offset.

    @raise ValueError: the file is not a complete object.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            raise ValueError("bad magic")
        (n,) = HEADER.unpack(f.read(HEADER.size))
        if n > 16 * 1024 * 1024:
            raise ValueError("meta too large")
        meta = json.loads(f.read(n).decode("utf-8"))
        entry = Entry.from_meta(meta)
        offset = len(MAGIC) + HEADER.size + n
        expected = offset + entry.length + len(END) + 32
        if size != expected:
            raise ValueError(f"length {size}, expected {expected}")
        f.seek(offset + entry.length)
        if f.read(len(END)) != END:
            raise ValueError("no end marker")
    return entry, offset


def read_body(path: str, offset: int, length: int) -> bytes:
    """The body of a disk object, checked against its checksum."""
    with open(path, "rb") as f:
        f.seek(offset)
        body = f.read(length)
        if f.read(len(END)) != END or f.read(32) != hashlib.sha256(body).digest():
            raise ValueError("checksum mismatch")
    return body


@dataclass
class _DiskRecord:
    path: str
    offset: int
    cost: int
    entry: Entry  # without body


class DiskStore:
    """
    Objects on disk under C{directory}, indexed in memory, LRU by bytes.

    @param run: runs a blocking function off the reactor thread and returns a
        Deferred (the node passes the reactor's thread pool; tests may run
        inline).
    """

    log = Logger()

    def __init__(self, directory: str, limit: int,
                 run: Callable[..., Deferred]) -> None:
        self.directory = directory
        self.limit = limit
        self.size = 0
        self._run = run
        self._index: "OrderedDict[tuple, _DiskRecord]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._index)

    def load(self) -> None:
        """Index what is on disk (at start-up, before serving)."""
        os.makedirs(self.directory, exist_ok=True)
        dropped = 0
        found = []
        for root, _dirs, files in os.walk(self.directory):
            for name in files:
                path = os.path.join(root, name)
                if not name.endswith(".obj"):
                    # A temporary file of a write that never finished.
                    _unlink(path)
                    dropped += 1
                    continue
                try:
                    entry, offset = read_meta(path)
                except (OSError, ValueError, KeyError, TypeError) as e:
                    self.log.warn("cache: dropping damaged object {path}: {why}", path=path, why=str(e))
                    _unlink(path)
                    dropped += 1
                    continue
                found.append((os.path.getmtime(path), entry, path, offset))
        found.sort(key=lambda t: t[0])
        for _, entry, path, offset in found:
            cost = os.path.getsize(path)
            self._index[entry.ident] = _DiskRecord(path, offset, cost, entry)
            self.size += cost
        self._evict()
        self.log.info("cache: {n} objects ({size} bytes) on disk in {dir}; {dropped} dropped",
                      n=len(self._index), size=self.size, dir=self.directory, dropped=dropped)

    def get(self, ident: tuple) -> Optional[Entry]:
        record = self._index.get(ident)
        if record is None:
            return None
        self._index.move_to_end(ident)
        return record.entry

    def read(self, ident: tuple) -> Deferred:
        """Fires with the entry with its body, or None if it is gone or damaged."""
        record = self._index.get(ident)
        if record is None:
            return succeed(None)

        def done(body: bytes) -> Optional[Entry]:
            return replace(record.entry, body=body)

        def failed(f: Any) -> None:
            self.log.warn("cache: dropping unreadable object {path}: {why}", path=record.path,
                          why=f.getErrorMessage())
            self.remove(ident)
            return None

        d = self._run(read_body, record.path, record.offset, record.entry.length)
        return d.addCallbacks(done, failed)

    def put(self, entry: Entry) -> Deferred:
        data = encode_object(entry)
        path = os.path.join(self.directory, _file_name(entry.ident))
        bare = replace(entry, body=None)
        (meta_len,) = HEADER.unpack(data[len(MAGIC):len(MAGIC) + HEADER.size])
        offset = len(MAGIC) + HEADER.size + meta_len

        def stored(_: Any) -> None:
            old = self._index.pop(entry.ident, None)
            if old is not None:
                self.size -= old.cost
            self._index[entry.ident] = _DiskRecord(path, offset, len(data), bare)
            self.size += len(data)
            self._evict()

        def failed(f: Any) -> None:
            self.log.error("cache: could not write {path}: {why}", path=path, why=f.getErrorMessage())

        return self._run(_write_atomically, path, data).addCallbacks(stored, failed)

    def remove(self, ident: tuple) -> None:
        record = self._index.pop(ident, None)
        if record is not None:
            self.size -= record.cost
            self._run(_unlink, record.path)

    def idents(self) -> list[tuple]:
        return list(self._index)

    def _evict(self) -> None:
        while self.size > self.limit and self._index:
            ident, record = self._index.popitem(last=False)
            self.size -= record.cost
            self._run(_unlink, record.path)


def _write_atomically(path: str, data: bytes) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Store:
    """
    Memory in front of disk; every key's variants, at most C{max_variants}
    per key (the least recently used one goes).
    """

    def __init__(self, memory: MemoryStore, disk: Optional[DiskStore] = None,
                 max_variants: int = 32) -> None:
        self.memory = memory
        self.disk = disk
        self.max_variants = max_variants
        # key -> its variants' idents, least recently used first (a dict
        # keeps insertion order and costs less than an OrderedDict).
        self._variants: "dict[str, dict[tuple, None]]" = {}
        if disk is not None:
            for ident in disk.idents():
                self._variants.setdefault(ident[0], {})[ident] = None
            for idents in list(self._variants.values()):
                while len(idents) > max_variants:
                    self.remove(next(iter(idents)))

    def variants(self, key: str) -> list[Entry]:
        out = []
        idents = self._variants.get(key)
        for ident in list(idents or ()):
            entry = self.memory.get(ident) or (self.disk.get(ident) if self.disk else None)
            if entry is None:
                idents.pop(ident, None)  # type: ignore[union-attr]
            else:
                out.append(entry)
        if idents is not None and not idents:
            del self._variants[key]
        return out

    def body(self, entry: Entry) -> Deferred:
        """Fires with the entry with its body (memory, else read from disk)."""
        idents = self._variants.get(entry.key)
        if idents is not None and entry.ident in idents:
            del idents[entry.ident]  # this variant was used: now the newest
            idents[entry.ident] = None
        cached = self.memory.get(entry.ident)
        if cached is not None and cached.body is not None:
            return succeed(cached)
        if self.disk is None:
            return succeed(None)

        def promote(full: Optional[Entry]) -> Optional[Entry]:
            if full is not None:
                self.memory.put(full)
            return full

        return self.disk.read(entry.ident).addCallback(promote)

    def put(self, entry: Entry) -> Optional[Deferred]:
        # Replace other variants of the same key that vary on other headers.
        for other in self.variants(entry.key):
            if other.vary != entry.vary:
                self.remove(other.ident)
        idents = self._variants.setdefault(entry.key, {})
        idents.pop(entry.ident, None)
        idents[entry.ident] = None
        while len(idents) > self.max_variants:
            self.remove(next(iter(idents)))
        self.memory.put(entry)
        if self.disk is not None:
            return self.disk.put(entry)
        return None

    def update(self, entry: Entry) -> None:
        """New headers and times for a stored entry (after a 304)."""
        if self.memory.get(entry.ident) is not None:
            self.memory.put(entry)
        if self.disk is not None and entry.body is not None:
            self.disk.put(entry)

    def remove(self, ident: tuple) -> None:
        self.memory.remove(ident)
        if self.disk is not None:
            self.disk.remove(ident)
        variants = self._variants.get(ident[0])
        if variants is not None:
            variants.pop(ident, None)
            if not variants:
                del self._variants[ident[0]]

    def keys(self) -> list[str]:
        return list(self._variants)

    def purge(self, urls: Iterable[str], prefixes: Iterable[str]) -> int:
        urls, prefixes = set(urls), tuple(prefixes)
        n = 0
        for key in self.keys():
            if key in urls or (prefixes and key.startswith(prefixes)):
                for ident in list(self._variants.get(key, ())):
                    self.remove(ident)
                    n += 1
        return n
