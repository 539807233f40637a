"""
Where cached answers live: a byte-bounded LRU in memory and an optional
disk store, bounded by the bytes its files take, that survives restarts.

Disk objects are written off the reactor thread (a temporary file with an
unpredictable name created exclusively, mode 0600, in a 0700 directory;
fsync; rename), so an object is visible only when complete.  Every read
checks the object whole (its key, length, end marker and SHA-256), so a
crash or C{kill -9} at any moment never leaves a damaged object that is
then served.  At start the node does not wait for the disk: objects are
checked and indexed in the background, and a key not indexed yet is looked
up on disk directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Optional

from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..files import write_private_atomically

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
    # The ready header block of its hits (cache/hit.py), made at the first;
    # not copied by dataclasses.replace, so a refreshed entry makes its own.
    wire: Any = field(default=None, init=False, repr=False, compare=False)

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


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _key_dir(key: str) -> tuple[str, str]:
    """The sub-directory holding every variant of C{key}, and their name prefix."""
    h = _hash(key)
    return os.path.join(h[:2], h[2:4]), h


def _file_name(ident: tuple) -> str:
    """Where an object lives, relative to the cache directory."""
    key, variant = ident
    sub, h = _key_dir(key)
    return os.path.join(sub, f"{h}-{_hash(repr(variant))[:32]}.obj")


def encode_object(entry: Entry) -> bytes:
    assert entry.body is not None
    meta = json.dumps(entry.meta(), separators=(",", ":")).encode("utf-8")
    return b"".join([MAGIC, HEADER.pack(len(meta)), meta, entry.body, END,
                     hashlib.sha256(entry.body).digest()])


# What a damaged or foreign file raises when read.
_DAMAGE = (ValueError, KeyError, TypeError, AttributeError, struct.error)
HEAD_READ = 4096


def _allocated(st: os.stat_result) -> int:
    """The bytes a file takes on disk: its allocated blocks (else its size in whole blocks)."""
    if st.st_blocks:
        return st.st_blocks * 512
    block = st.st_blksize or 4096
    return -(-st.st_size // block) * block


def _read_head(read: Callable[[int], bytes], size: int) -> tuple[Entry, int, bytes]:
    head = read(HEAD_READ)
    if head[:len(MAGIC)] != MAGIC:
        raise ValueError("bad magic")
    if len(head) < len(MAGIC) + HEADER.size:
        raise ValueError("truncated header")
    (n,) = HEADER.unpack_from(head, len(MAGIC))
    if n > 16 * 1024 * 1024:
        raise ValueError("meta too large")
    offset = len(MAGIC) + HEADER.size + n
    if len(head) < offset:
        head += read(offset - len(head))
        if len(head) < offset:
            raise ValueError("truncated header")
    entry = Entry.from_meta(json.loads(head[len(MAGIC) + HEADER.size:offset].decode("utf-8")))
    expected = offset + entry.length + len(END) + 32
    if size != expected:
        raise ValueError(f"length {size}, expected {expected}")
    return entry, offset, head


def read_head(path: str) -> tuple[Entry, int, int]:
    """
    The entry of a disk object (without its body), the body's offset and
    the bytes the file takes on disk.  A small object (read whole by the
    first read) is checked against its checksum too.

    @raise ValueError: the file is not a complete object.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        entry, offset, head = _read_head(lambda n: os.read(fd, n), st.st_size)
    finally:
        os.close(fd)
    if len(head) == st.st_size:  # a small object, read whole already: check it all
        body = head[offset:offset + entry.length]
        if head[offset + entry.length:] != END + hashlib.sha256(body).digest():
            raise ValueError("checksum mismatch")
    return entry, offset, _allocated(st)


def read_object(path: str, ident: tuple) -> Entry:
    """
    The whole object at C{path}, checked: it is the object of C{ident} and
    its body matches its checksum.  Self-describing, so a read that meets a
    newer copy of the object (renamed over the old one) still reads a whole,
    consistent object.
    """
    with open(path, "rb") as f:
        entry, offset, _head = _read_head(f.read, os.fstat(f.fileno()).st_size)
        if entry.ident != ident:
            raise ValueError("the file holds another object")
        f.seek(offset)
        body = f.read(entry.length)
        if (len(body) != entry.length or f.read(len(END)) != END
                or f.read(32) != hashlib.sha256(body).digest()):
            raise ValueError("checksum mismatch")
    return replace(entry, body=body)


def _write_atomically(path: str, data: bytes, prefix: str = ".") -> int:
    """
    Write C{data} to C{path} whole or not at all (L{write_private_atomically}:
    exclusive 0600 temporary file, fsync, rename, directory fsync; missing
    directories 0700).

    @return: the bytes the file takes on disk.
    """
    return _allocated(write_private_atomically(path, data, prefix))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _unlink_damaged(path: str, ident: Optional[tuple] = None) -> bool:
    """
    Remove C{path} if it is (still) not a complete object (of C{ident},
    checksum included, when known): a good copy written meanwhile stays.
    """
    try:
        if ident is None:
            read_head(path)
        else:
            read_object(path, ident)
        return False
    except FileNotFoundError:
        return False
    except (OSError,) + _DAMAGE:
        _unlink(path)
        return True


def _list_objects(directory: str, mine: str) -> tuple[list[str], int]:
    """
    Every object file under C{directory}, newest first; temporary files of
    earlier lives of the node (not starting with C{mine}) are removed.
    """
    found = []
    removed = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            if name.endswith(".obj"):
                try:
                    found.append((os.stat(path).st_mtime, path))
                except FileNotFoundError:
                    pass
            elif name.endswith(".tmp") and not name.startswith(mine):
                _unlink(path)  # a write that never finished
                removed += 1
    found.sort(reverse=True)
    return [path for _, path in found], removed


def _check_files(directory: str, paths: list[str], verify_below: int = -1) -> tuple[list, list]:
    """
    Read the head of each object file: ([(path, entry, cost)], [(path, why,
    ident or None)]).
    Bodies up to C{verify_below} bytes are read and checked too (and come
    back in the entry).
    """
    found, damaged = [], []
    root = os.path.join(directory, "")
    for path in paths:
        entry = None
        try:
            entry, _offset, cost = read_head(path)
            if not path.startswith(root) or path[len(root):] != _file_name(entry.ident):
                raise ValueError("not where its key says")
            if entry.length <= verify_below:
                entry = read_object(path, entry.ident)
        except FileNotFoundError:
            continue
        except (OSError,) + _DAMAGE as e:
            damaged.append((path, str(e), entry.ident if entry is not None else None))
            continue
        found.append((path, entry, cost))
    return found, damaged


def _probe_key(directory: str, key: str, verify_below: int) -> tuple[list, list]:
    """The objects of every variant of C{key} on disk (see L{_check_files})."""
    sub, prefix = _key_dir(key)
    where = os.path.join(directory, sub)
    try:
        names = os.listdir(where)
    except FileNotFoundError:
        return [], []
    paths = [os.path.join(where, n) for n in names if n.startswith(prefix) and n.endswith(".obj")]
    found, damaged = _check_files(directory, paths, verify_below)
    return [(p, e, c) for p, e, c in found if e.key == key], damaged


@dataclass
class _DiskRecord:
    path: str
    cost: int  # bytes taken on disk (allocated blocks)
    entry: Entry  # without body


class _PathOps:
    """The disk operations queued on one path, run one after another."""

    __slots__ = ("lock", "epoch")

    def __init__(self) -> None:
        self.lock = DeferredLock()
        self.epoch = 0  # bumped when the object is removed


class DiskStore:
    """
    Objects on disk under C{directory}, indexed in memory, LRU by the bytes
    they take on disk.

    At start the node does not wait for the disk: L{load} checks every
    object in the background, in batches (like nginx's cache loader), while
    L{probe} answers for a key not yet indexed by looking at its files
    directly.  Writes and removals of one object are queued one after
    another, so two answers for one key never race on its file.

    @param run: runs a blocking function off the reactor thread and returns a
        Deferred (the node passes the reactor's thread pool; tests may run
        inline).
    @param verify_below: bodies up to this size found by L{probe} are
        checked against their checksum at once (and kept).
    """

    log = Logger()

    def __init__(self, directory: str, limit: int, run: Callable[..., Deferred],
                 batch: int = 500, verify_below: int = 256 * 1024) -> None:
        self.directory = directory
        self.limit = limit
        self.size = 0
        self.batch = batch
        self.verify_below = verify_below
        self._run = run
        self._index: "OrderedDict[tuple, _DiskRecord]" = OrderedDict()
        self._ops: dict[str, _PathOps] = {}
        # This life's temporary files start with this (mkstemp adds the
        # unpredictable part); the loader removes everybody else's.
        self._prefix = f".{secrets.token_hex(6)}."
        self.loading = False
        self._settled: set[str] = set()  # keys whose objects are indexed already
        # Purged or removed while loading: what the loader finds of them is dropped.
        self._purged_keys: set[str] = set()
        self._purged_prefixes: list[tuple] = []
        self.on_indexed: Optional[Callable[[tuple], None]] = None
        self.found = 0  # objects the loader and probes found on disk
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._index)

    # -- start-up --------------------------------------------------------

    def load(self) -> Deferred:
        """
        Start indexing what is on disk, in the background; fires when done.
        Left-over temporary files and damaged objects are removed.
        """
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self.loading = True
        self.log.info("cache: checking the objects in {dir} in the background", dir=self.directory)
        return Deferred.fromCoroutine(self._load())

    async def _load(self) -> None:
        started = time.monotonic()
        try:
            paths, removed = await self._run(_list_objects, self.directory, self._prefix)
            self.dropped += removed
            for i in range(0, len(paths), self.batch):
                found, damaged = await self._run(_check_files, self.directory,
                                                 paths[i:i + self.batch])
                self._merge(found, damaged)
        except OSError as e:
            self.log.error("cache: could not read the disk cache {dir}: {why}",
                           dir=self.directory, why=str(e))
        finally:
            self.loading = False
            self._settled.clear()
            self._purged_keys.clear()
            self._purged_prefixes.clear()
        self._evict()
        self.log.info("cache: checked the disk cache {dir} in {t:.2f} s: {found} objects found, "
                      "{dropped} dropped; {n} objects ({size} bytes) on disk now",
                      dir=self.directory, t=time.monotonic() - started, found=self.found,
                      dropped=self.dropped, n=len(self._index), size=self.size)

    def _add(self, path: str, entry: Entry, cost: int, oldest: bool) -> None:
        self._index[entry.ident] = _DiskRecord(path, cost, replace(entry, body=None))
        if oldest:
            self._index.move_to_end(entry.ident, last=False)
        self.size += cost
        if self.on_indexed is not None:
            self.on_indexed(entry.ident)

    def _merge(self, found: list, damaged: list) -> None:
        """A batch of the loader: index what nobody has looked at since start."""
        for path, entry, cost in found:
            if entry.key in self._settled or entry.ident in self._index:
                continue
            if self._was_purged(entry.key):
                self._drop_path(path)
                continue
            # Newest first: each goes before the ones indexed so far.
            self._add(path, entry, cost, oldest=True)
            self.found += 1
        self._drop_damaged(damaged)
        self._evict()

    def _drop_damaged(self, damaged: list) -> None:
        for path, why, ident in damaged:
            self.log.warn("cache: dropping damaged object {path}: {why}", path=path, why=why)
            self.dropped += 1
            record = self._index.get(ident) if ident is not None else None
            if record is not None and record.path == path:
                self.remove(ident)  # indexed by the loader, found damaged by a probe
            else:
                self._unlink_later(path, lambda p: _unlink_damaged(p, ident))

    def needs_probe(self, key: str) -> bool:
        return self.loading and key not in self._settled

    def probe(self, key: str) -> Deferred:
        """
        While loading: index the objects of C{key} now (looking at its files
        directly).  Fires with the entries whose bodies were read and checked
        on the way (with their bodies).
        """
        if not self.needs_probe(key):
            return succeed([])

        def found(result: tuple) -> list:
            objects, damaged = result
            fresh = []
            if key not in self._settled:
                self._settled.add(key)
                for path, entry, cost in objects:
                    if entry.ident in self._index:
                        continue
                    if self._was_purged(key):
                        self._drop_path(path)
                        continue
                    self._add(path, entry, cost, oldest=False)
                    self.found += 1
                    if entry.body is not None:
                        fresh.append(entry)
            self._drop_damaged(damaged)
            self._evict()
            return fresh

        def failed(f: Any) -> list:
            self.log.error("cache: could not look up {key} on disk: {why}", key=key,
                           why=f.getErrorMessage())
            return []

        return self._run(_probe_key, self.directory, key, self.verify_below).addCallbacks(
            found, failed)

    def purged(self, keys: Iterable[str], prefixes: tuple = ()) -> None:
        """
        A purge (or removal) while loading also covers the objects of
        C{keys} and C{prefixes} not indexed yet.  (An object written since is
        indexed by its write first and stays.)
        """
        if self.loading:
            self._purged_keys.update(keys)
            if prefixes:
                self._purged_prefixes.append(tuple(prefixes))

    def _was_purged(self, key: str) -> bool:
        return key in self._purged_keys or any(key.startswith(p) for p in self._purged_prefixes)

    # -- objects ---------------------------------------------------------

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

        def failed(f: Any) -> None:
            if self._index.get(ident) is not record:
                return None  # removed or replaced meanwhile
            if f.check(FileNotFoundError):
                self.log.warn("cache: object {path} is gone", path=record.path)
            else:
                self.log.warn("cache: dropping unreadable object {path}: {why}", path=record.path,
                              why=f.getErrorMessage())
                self.dropped += 1
            self.remove(ident)
            return None

        return self._run(read_object, record.path, ident).addErrback(failed)

    def put(self, entry: Entry) -> Deferred:
        """Write C{entry}; fires when it is on disk (or the write failed, logged)."""
        data = encode_object(entry)
        ident = entry.ident
        path = os.path.join(self.directory, _file_name(ident))
        bare = replace(entry, body=None)
        ops = self._ops.get(path)
        epoch = ops.epoch if ops is not None else 0

        def stored(cost: int) -> None:
            now = self._ops.get(path)
            if (now.epoch if now is not None else 0) != epoch:
                return  # removed while being written; its unlink is queued after this write
            old = self._index.pop(ident, None)
            if old is not None:
                self.size -= old.cost
            self._add(path, bare, cost, oldest=False)
            self._evict()

        def failed(f: Any) -> None:
            self.log.error("cache: could not write {path}: {why}", path=path, why=f.getErrorMessage())

        d = self._serial(path, _write_atomically, path, data, self._prefix, before_release=True)
        return d.addCallbacks(stored, failed)

    def remove(self, ident: tuple) -> None:
        record = self._index.pop(ident, None)
        path = record.path if record is not None else os.path.join(self.directory, _file_name(ident))
        if record is not None:
            self.size -= record.cost
        ops = self._ops.get(path)
        if ops is not None:
            ops.epoch += 1
        if record is not None or ops is not None:
            self._unlink_later(path)

    def _drop_path(self, path: str) -> None:
        if path not in self._ops:  # else a write in flight replaces it
            self._unlink_later(path)

    def _unlink_later(self, path: str, how: Callable[[str], Any] = _unlink) -> None:
        """Remove C{path} once the operations queued on it are done."""
        def failed(f: Any) -> None:
            self.log.error("cache: could not remove {path}: {why}", path=path, why=f.getErrorMessage())

        self._serial(path, how, path).addErrback(failed)

    def idents(self) -> list[tuple]:
        return list(self._index)

    def _evict(self) -> None:
        while self.size > self.limit and self._index:
            ident = next(iter(self._index))
            self.remove(ident)

    def _serial(self, path: str, f: Callable, *args: Any, before_release: bool = False) -> Deferred:
        """
        Run C{f(*args)} off the reactor thread after every operation queued
        on C{path} before it.  With C{before_release}, the returned Deferred
        fires before the next operation on C{path} starts (so the index
        follows the order of the writes).
        """
        ops = self._ops.get(path)
        if ops is None:
            ops = self._ops[path] = _PathOps()
        result: Deferred = Deferred()

        def fire(outcome: Any) -> None:
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)

        def finished(outcome: Any) -> None:
            if before_release:
                fire(outcome)
            ops.lock.release()
            if not ops.lock.locked and not ops.lock.waiting and self._ops.get(path) is ops:
                del self._ops[path]
            if not before_release:
                fire(outcome)

        def run(_: Any) -> Deferred:
            return self._run(f, *args).addBoth(finished)

        ops.lock.acquire().addCallback(run)
        return result


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
                self._index(ident)
            disk.on_indexed = self._index

    def _index(self, ident: tuple, newest: bool = False) -> None:
        """
        C{ident} is a variant of its key: the newest one when C{newest}
        (stored now), else new ones last and known ones where they are (found
        on disk); the least recently used beyond C{max_variants} go (also
        from a cache written with a larger C{max_variants}).
        """
        idents = self._variants.setdefault(ident[0], {})
        if newest:
            idents.pop(ident, None)
        idents[ident] = None
        while len(idents) > self.max_variants:
            self.remove(next(iter(idents)))

    @property
    def loading(self) -> bool:
        """The disk store is still being indexed: use L{lookup}."""
        return self.disk is not None and self.disk.loading

    def lookup(self, key: str) -> Deferred:
        """
        Fires with the stored variants of C{key} (L{variants}), looking on
        disk first when the disk store has not indexed that key yet.
        """
        disk = self.disk
        if disk is None or not disk.needs_probe(key):
            return succeed(self.variants(key))

        def probed(checked: list) -> list:
            for full in checked:  # read and verified on the way: keep them
                if self.memory.get(full.ident) is None:
                    self.memory.put(full)
            return self.variants(key)

        return disk.probe(key).addCallback(probed)

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

    def touch(self, entry: Entry) -> None:
        """This variant of its URL was used: now the newest (max_variants LRU)."""
        idents = self._variants.get(entry.key)
        if idents is not None and entry.ident in idents:
            del idents[entry.ident]
            idents[entry.ident] = None

    def body(self, entry: Entry) -> Deferred:
        """Fires with the entry with its body (memory, else read from disk)."""
        self.touch(entry)
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
        self._index(entry.ident, newest=True)
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

    def remove_key(self, key: str) -> int:
        """Drop every variant of C{key} (also those on disk not indexed yet); how many were known."""
        idents = list(self._variants.get(key, ()))
        for ident in idents:
            self.remove(ident)
        if self.disk is not None:
            self.disk.purged((key,))
        return len(idents)

    def purge(self, urls: Iterable[str], prefixes: Iterable[str]) -> int:
        urls, prefixes = frozenset(urls), tuple(prefixes)
        n = sum(self.remove_key(key) for key in urls)
        if prefixes:
            if self.disk is not None:
                self.disk.purged((), prefixes)
            for key in self.keys():
                if key.startswith(prefixes):
                    n += self.remove_key(key)
        return n
