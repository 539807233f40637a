"""
The edge cache (docs/cache.md): RFC 9111 rules (L{policy}), memory and
disk stores (L{store}), shared streaming of origin answers (L{fill}) and the
request flow (L{handler}).
"""

from .handler import Cache
from .store import DiskStore, MemoryStore, Store

__all__ = ["Cache", "Store", "MemoryStore", "DiskStore"]
