"""
Request collapsing: one origin pull per key, and who may be given its answer
(docs/cache.md and docs/security.md).

A L{Flight} is one origin pull (a miss, or the conditional request of a
revalidation) that requests for the same key wait on instead of asking the
origin themselves.  When the answer's headers are in, the flight decides:

 - a stored answer (and an answer that would be stored but is too large) is
   shared: every waiter reads the same L{Fill};
 - an answer that is not stored -- C{private}, C{no-store}, C{Set-Cookie},
   no freshness, C{Vary: *}, an error made uncacheable -- or that answers a request carrying
   C{Authorization} without being explicitly shareable (C{public},
   C{s-maxage}, C{must-revalidate}; RFC 9111 section 3.5) goes only to the
   request that asked for it.  The others are sent on their own, and the key
   is remembered as "not shared" for a while (L{Unshared}, Varnish's
   hit-for-miss) so that the next requests do not queue behind an answer
   they cannot have (not when only the request's Authorization kept it);
 - a 304 to a revalidation refreshes the stored answer once, and every
   waiter whose request matches it is served from it;
 - a failed pull goes to the request that started it; the waiters get their
   own chance (their own failover chain within their own time budget).

A pull started by nobody (a background refresh, a fill behind a passed-on
range) runs to its end even when every waiter leaves.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Optional

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH

from ..headers import end_to_end
from ..stream import Discard
from .fill import Fill
from .policy import storable, vary_key, vary_names
from .store import Entry

__all__ = ["Flight", "Unshared", "authorized", "header_map", "HIT_FOR_MISS"]

# How long a key whose answer was not shared is not collapsed (Varnish's
# built-in VCL keeps its hit-for-miss objects for 120 s), and how many such
# keys are remembered.
HIT_FOR_MISS = 120.0
UNSHARED_KEYS = 10_000


def header_map(headers: Any) -> dict:
    return {k.lower(): list(v) for k, v in headers.getAllRawHeaders()}


def authorized(reqh: dict) -> bool:
    return bool(reqh.get(b"authorization"))


class Unshared:
    """
    Keys whose last answer was not stored, with why: C{"private"} (do not
    collapse: the answer goes to one client) or C{"large"} (shared, but too
    large to store: a Range is passed on to the origin).  Bounded, and each
    mark expires after L{HIT_FOR_MISS} seconds.
    """

    def __init__(self, clock: IReactorTime, limit: int = UNSHARED_KEYS, ttl: float = HIT_FOR_MISS) -> None:
        self.clock = clock
        self.limit = limit
        self.ttl = ttl
        self._marks: "OrderedDict[str, tuple[float, str]]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._marks)

    def why(self, key: str) -> Optional[str]:
        mark = self._marks.get(key)
        if mark is None:
            return None
        until, why = mark
        if until <= self.clock.seconds():
            del self._marks[key]
            return None
        return why

    def mark(self, key: str, why: str) -> None:
        self._marks.pop(key, None)
        self._marks[key] = (self.clock.seconds() + self.ttl, why)
        while len(self._marks) > self.limit:
            self._marks.popitem(last=False)

    def clear(self, key: str) -> None:
        self._marks.pop(key, None)

    def learn(self, key: str, stored: bool, status: int, too_big: bool, authorized: bool) -> None:
        """
        What an origin's answer for C{key} says of the next requests for it:
        not storable (and not an error, nor kept from one request for its
        Authorization, which says nothing about anyone else's answer):
        C{"private"}; too large to store: C{"large"}; storable: no mark.
        """
        if not stored and status < 500 and not authorized:
            self.mark(key, "private")
        elif too_big:
            self.mark(key, "large")
        elif stored:
            self.clear(key)


class _Waiter:
    def __init__(self) -> None:
        self.ready: Deferred = Deferred()


class Flight:
    """
    One origin pull for a key, the requests waiting on it, and its outcome:
    C{fill} (an answer being received), C{refreshed} (a 304 refreshed the
    stored entry) or C{failure}.

    @param cache: the L{cdnpull.cache.handler.Cache} (clock, puller, store,
        budget, max_object, unshared, inflight).
    @param register: other requests for the key may join (it is in
        C{cache.inflight} until its answer turns out not to be stored).
    @param background: started by nobody: runs to its end when every
        waiter leaves, and a failure is logged.
    @param remember: the answer updates C{cache.unshared} (not for a passed-on
        range, whose 206 says nothing about the whole object).
    """

    log = Logger()

    def __init__(self, cache: Any, key: str, register: bool = True, background: bool = False,
                 remember: bool = True) -> None:
        self.cache = cache
        self.key = key
        self.registered = register
        self.background = background
        self.remember = remember
        self.waiters: list[_Waiter] = []
        self.pending: Optional[Deferred] = None
        self.fill: Optional[Fill] = None
        self.refreshed: Optional[Entry] = None
        self.failure: Optional[Failure] = None
        self.shared = False  # the answer may go to requests other than the first
        self.auth_ok = False  # ... and to requests with Authorization
        self.strip_cookies = False  # the stored copy has no Set-Cookie: nor do joiners
        self.vary: Optional[tuple] = None
        self.variant: Optional[tuple] = None
        self.closed = False
        if register:
            cache.inflight[key] = self

    # -- waiting -----------------------------------------------------------

    def join(self) -> _Waiter:
        w = _Waiter()
        if self.fill is not None or self.refreshed is not None:
            w.ready.callback(self)
        elif self.failure is not None:
            w.ready.errback(self.failure)
        else:
            self.waiters.append(w)
        return w

    def leave(self, waiter: _Waiter) -> None:
        if waiter in self.waiters:
            self.waiters.remove(waiter)
        if (not self.waiters and not self.background and self.pending is not None
                and self.fill is None):
            # Everyone left before the answer came: stop asking.
            pending, self.pending = self.pending, None
            pending.cancel()

    def may_serve(self, reqh: dict) -> bool:
        """Whether a request that joined (not the first) may be given the outcome."""
        if self.refreshed is not None:
            entry = self.refreshed
            return ((entry.auth_ok or not authorized(reqh))
                    and vary_key(entry.vary, reqh) == entry.variant)
        if not self.shared or (authorized(reqh) and not self.auth_ok):
            return False
        return not self.vary or self.variant == vary_key(self.vary, reqh)

    def _release(self) -> None:
        waiters, self.waiters = self.waiters, []
        for w in waiters:
            w.ready.callback(self)

    # -- the pull --------------------------------------------------------------

    def launch(self, live: Any, oreq: Any, rule: Any, reqh: dict,
               stale: Optional[Entry] = None,
               refresh: Optional[Callable[[Entry, Any, float], Entry]] = None) -> None:
        """
        Ask the origin.  With C{stale} (the stored entry being revalidated) a
        304 calls C{refresh(stale, result, request_time)} for the new entry.
        """
        request_time = self.cache.clock.seconds()
        d = self.pending = self.cache.puller.pull(live, oreq)

        def got(result: Any) -> None:
            self.pending = None
            if result.response.code == 304 and stale is not None and refresh is not None:
                result.response.deliverBody(Discard())
                self.refreshed = refresh(stale, result, request_time)
                self.close()
                self._release()
                return
            self.adopt(result, rule, reqh, request_time)

        def failed(f: Failure) -> None:
            self.pending = None
            self.failure = f
            self.close()
            if self.background and not f.check(CancelledError):
                self.log.warn("cache: background fetch of {key} failed: {why}", key=self.key,
                              why=f.getErrorMessage())
            waiters, self.waiters = self.waiters, []
            for w in waiters:
                w.ready.errback(f)

        d.addCallbacks(got, failed)
        d.addErrback(lambda f: self.log.failure("cache flight for {key}", f, key=self.key))

    def adopt(self, result: Any, rule: Any, reqh: dict, request_time: float) -> None:
        """The origin's answer is in: decide storing and sharing, start the fill."""
        cache = self.cache
        response = result.response
        headers = header_map(response.headers)
        response_time = cache.clock.seconds()
        verdict = storable(b"GET", reqh, response.code, headers, rule, response_time, cache.targeted)
        too_big = response.length is not UNKNOWN_LENGTH and response.length > cache.max_object
        storing = verdict.ok and not too_big
        self.vary = vary_names(headers)
        self.variant = vary_key(self.vary, reqh) if self.vary is not None else None
        # An answer that is not stored belongs to the request that asked.
        self.shared = verdict.ok
        self.auth_ok = verdict.auth_ok
        self.strip_cookies = verdict.strip_cookies
        if self.remember:
            cache.unshared.learn(self.key, verdict.ok, response.code, too_big, authorized(reqh))
        fill = Fill(self.key, cache.max_object, cache.budget)
        self.fill = fill
        if not storing:
            # Nothing to store: later requests start their own pull.
            self.close()
        stored_headers = [(n, v) for n, vs in
                          end_to_end(response.headers, drop=(b"server",)).getAllRawHeaders()
                          for v in vs
                          if not (verdict.strip_cookies and n.lower() == b"set-cookie")]

        def complete(f: Fill) -> None:
            self.close()
            if not (f.storing and f.complete and f.failed is None):
                return
            if response.length is not UNKNOWN_LENGTH and f.size != response.length:
                return
            entry = Entry(
                key=self.key, variant=self.variant or (), vary=self.vary or (),
                status=response.code, phrase=response.phrase,
                headers=[(n.lower(), v) for n, v in stored_headers
                         if n.lower() not in (b"content-length",)],
                length=f.size, request_time=request_time, response_time=response_time,
                lifetime=verdict.lifetime, auth_ok=verdict.auth_ok, body=f.body(),
            )
            cache.store.put(entry)
            self.log.debug("cache: stored {key} ({n} bytes, fresh for {t} s)", key=self.key,
                           n=f.size, t=verdict.lifetime)

        def idle(f: Fill) -> None:
            if not f.storing and not self.waiters:
                f.cancel()

        def unstored(f: Fill) -> None:
            self.close()  # later requests must not join a trimmed answer
            if self.remember and f.size > cache.max_object:
                cache.unshared.mark(self.key, "large")
            if not f.readers:
                f.cancel()  # nobody reads what is no longer kept

        fill.on_complete = complete
        fill.on_idle = idle
        fill.on_unstored = unstored
        fill.prepare(result, storing)
        # Waiters attach their readers first, then the body flows (a
        # buffered answer is delivered all at once).
        self._release()
        fill.start()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.registered and self.cache.inflight.get(self.key) is self:
            del self.cache.inflight[self.key]
