"""
One URL with thousands of Vary variants (a `Vary: User-Agent` page): the
cost of a HIT on it and what the memory cache counts for it, with the
cache's request flow in memory (the fakes of tests/test_cache_handler.py).

    PYTHONPATH=$PWD python bench/vary_hits.py [--variants 4000]
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

from twisted.internet.defer import Deferred

from cdnpull.failover import OriginRequest
from tests.test_cache_handler import FakeRequest, World


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--variants", type=int, default=4000)
    parser.add_argument("--hits", type=int, default=2000)
    args = parser.parse_args()
    w = World()

    def get(path: str, headers: dict) -> FakeRequest:
        request = FakeRequest(path, headers)
        ctx = SimpleNamespace(start=w.clock.seconds(), cache="BYPASS", group="", origin="",
                              origin_ms=None, pending=None, relay=None)
        oreq = OriginRequest(method=b"GET", target=path.encode(),
                             headers=request.requestHeaders.copy(), host="www.test.com")

        async def passthrough() -> None:
            raise AssertionError("no pass-through here")

        Deferred.fromCoroutine(w.cache.handle(request, w.live, oreq, ctx, passthrough))
        return request

    for path, n in (("/one", 1), ("/ua", args.variants)):
        for i in range(n):
            get(path, {b"User-Agent": b"agent %d" % i})
            w.origin.answer(len(w.origin.pulls) - 1, 200, b"x" * 1024,
                            {b"cache-control": b"max-age=600", b"vary": b"User-Agent"})
        last = {b"User-Agent": b"agent %d" % (n - 1)}
        start = time.perf_counter()
        for _ in range(args.hits):
            r = get(path, last)
        took = (time.perf_counter() - start) / args.hits
        assert r.responseHeaders.getRawHeaders(b"x-cache") == [b"HIT"]
        kept = len(w.store.variants(f"http://www.test.com{path}"))
        print(f"{path}: {n} variants asked for, {kept} kept, {took * 1e6:.1f} us per HIT")
    print(f"memory cache counts {w.store.memory.size} bytes for {len(w.store.memory)} entries")


if __name__ == "__main__":
    main()
