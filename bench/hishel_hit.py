"""
Why cdnpull does not use hishel's RFC 9111 state machine on its hit path:
correctness checks and the cost of one fresh-hit decision, hishel 2 against
cdnpull.cache.policy, in one run.

    pip install 'hishel==2.0.0' && python bench/hishel_hit.py
"""

from __future__ import annotations

import time
import timeit
import uuid
from email.utils import formatdate

import hishel

from cdnpull.cache.policy import current_age, vary_key

NOW = time.time()
URL = "http://www.test.com/img/1.jpg"
HEADERS = {
    "date": formatdate(NOW - 10, usegmt=True),
    "cache-control": "max-age=600",
    "content-type": "image/jpeg",
    "etag": '"v1"',
    "last-modified": formatdate(NOW - 86400, usegmt=True),
    "content-length": "830",
}


def hishel_state(headers: dict, request_headers: dict | None = None):  # type: ignore[no-untyped-def]
    entry = hishel.Entry(
        id=uuid.uuid4(),
        request=hishel.Request(method="GET", url=URL, headers=hishel.Headers({})),
        response=hishel.Response(status_code=200, headers=hishel.Headers(headers)),
    )
    request = hishel.Request(method="GET", url=URL, headers=hishel.Headers(request_headers or {}))
    return hishel.IdleClient(options=hishel.CacheOptions(shared=True)).next(request, [entry])


def ours(headers: dict) -> bool:
    h = {k.encode(): [v.encode()] for k, v in headers.items()}
    age = current_age(h, NOW - 11, NOW - 10, NOW)
    return age < 600 and vary_key((), {}) == ()


def main() -> None:
    print("correctness")
    upstream = dict(HEADERS, age="590")  # a parent cache says it is 590 s old already
    upstream["date"] = formatdate(NOW, usegmt=True)
    from unittest import mock

    with mock.patch("hishel._core._spec.time.time", return_value=NOW + 20):
        state = hishel_state(upstream)  # hishel reads the wall clock: move it 20 s on
    print(f"  Age: 590 from a parent cache, max-age=600, 20 s later -> hishel: "
          f"{type(state).__name__} (age it computes from Date only; RFC 9111 4.2.3 adds Age)")
    h = {k.encode(): [v.encode()] for k, v in upstream.items()}
    print(f"  cdnpull age 20 s later: {current_age(h, NOW, NOW, NOW + 20):.0f} s -> stale")
    state = hishel_state(HEADERS, {"range": "bytes=0-9"})
    print(f"  Range request on a fresh stored object -> hishel: {type(state).__name__} "
          "(every range goes to the origin)")
    print("  clock: hishel reads time.time() inside the state machine; cdnpull takes `now`")
    print("hit decision cost (one fresh hit, best of 5 x 20000)")
    n = 20000
    t_h = min(timeit.repeat(lambda: hishel_state(HEADERS), number=n, repeat=5)) / n
    t_o = min(timeit.repeat(lambda: ours(HEADERS), number=n, repeat=5)) / n
    print(f"  hishel IdleClient.next: {t_h * 1e6:7.1f} us")
    print(f"  cdnpull policy:         {t_o * 1e6:7.1f} us")


if __name__ == "__main__":
    main()
