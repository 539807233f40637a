"""
The edge cache (SPEC.md section 5): what the edge does with a GET or HEAD of
a domain, between routing and the failover chain.

    lookup ─► fresh ─────────────────────────────► HIT (full, range, 304, HEAD)
       │      stale, stale-while-revalidate ok ──► STALE + refresh in background
       │      stale ─► conditional pull ─► 304 ──► HIT (headers refreshed)
       │                         │        ─► new answer ─► MISS (stored)
       │                         └─ every origin failed ──► STALE (stale-if-error)
       └─ none ─► collapsed pull (one per key) ─► MISS, streamed to every waiter

The key is host + path + query (the query is left out when the matching
C{CacheRule} says C{ignore_query}); never the origin address, so the
standby's answer is cached like the primary's.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Optional

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from ..errors import EdgeError, OriginTimeout, OriginUnavailable
from ..headers import VIA, end_to_end
from ..pull import OriginRequest
from ..stream import Discard
from .fill import Fill, FillBudget, Reader, StaticSource
from .policy import (
    current_age,
    directives,
    match_rule,
    not_modified,
    parse_range,
    same_origin_target,
    storable,
    vary_key,
    vary_names,
)
from .store import Entry, Store

__all__ = ["Cache"]

# Headers a 304 carries from the stored answer (RFC 9110 section 15.4.5).
NOT_MODIFIED_HEADERS = (b"cache-control", b"content-location", b"date", b"etag", b"expires",
                        b"vary", b"last-modified")
# Request headers the cache takes out of the origin request: it asks for
# the whole object (to store it) and answers ranges and conditionals itself.
CLIENT_ONLY = (b"range", b"if-range", b"if-none-match", b"if-modified-since", b"if-match",
               b"if-unmodified-since")


def _validators(headers: dict) -> dict:
    """The conditional headers that revalidate a stored answer."""
    extra = {}
    if headers.get(b"etag"):
        extra[b"if-none-match"] = headers[b"etag"][0]
    if headers.get(b"last-modified"):
        extra[b"if-modified-since"] = headers[b"last-modified"][0]
    return extra


def _map(headers: Headers) -> dict:
    return {k.lower(): list(v) for k, v in headers.getAllRawHeaders()}


class _Waiter:
    def __init__(self) -> None:
        self.ready: Deferred = Deferred()


class Cache:
    """
    @param puller: the failover chain (L{cdnpull.pull.Puller}).
    @param clock: the injected clock.
    """

    log = Logger()

    def __init__(self, store: Store, puller: Any, clock: Any, max_object: int,
                 stale_if_error: float, targeted: tuple = (b"cdn-cache-control",)) -> None:
        self.store = store
        # Targeted cache-control fields this node obeys (RFC 9213), lower
        # case, in precedence order; never forwarded to clients.
        self.targeted = tuple(targeted)
        self.puller = puller
        self.clock = clock
        self.max_object = max_object
        self.stale_if_error = stale_if_error
        self.inflight: dict[str, _Flight] = {}
        # Answers being stored hold at most as much as the memory cache.
        self.budget = FillBudget(max(max_object, store.memory.limit))

    # -- the key ---------------------------------------------------------

    @staticmethod
    def key_of(host: str, target: bytes, ignore_query: bool) -> str:
        path, _, query = target.partition(b"?")
        text = host + path.decode("latin-1")
        if query and not ignore_query:
            text += "?" + query.decode("latin-1")
        return text

    def purge(self, urls: list, prefixes: list) -> dict:
        """Drop stored answers by full URL or URL prefix (memory and disk)."""
        def strip(url: str) -> str:
            rest = url.split("://", 1)[1]
            host, slash, path = rest.partition("/")
            return host.lower().split(":")[0] + slash + path

        urls = [strip(u) for u in urls]
        # A URL also names its entries keyed on forwarded headers (URL + "\n...").
        n = self.store.purge(urls, [strip(p) for p in prefixes] + [u + "\n" for u in urls])
        self.log.info("cache: purged {n} objects", n=n)
        return {"purged": n}

    def invalidate(self, live: Any, oreq: OriginRequest, response_headers: Headers) -> int:
        """
        RFC 9111 section 4.4: an unsafe request got a non-error answer, so
        the stored answers for its target URI, and for the same-host
        C{Location} and C{Content-Location} of that answer, are dropped
        (every variant, memory and disk).  Returns how many were.
        """
        targets = [oreq.target]
        for name in (b"location", b"content-location"):
            for value in response_headers.getRawHeaders(name, [])[:1]:
                same = same_origin_target(value.strip(), oreq.client_scheme, oreq.host, oreq.target)
                if same is not None and same not in targets:
                    targets.append(same)
        n = 0
        for target in targets:
            rule = match_rule(live.config.cache, target.split(b"?", 1)[0].decode("latin-1"))
            key = self.key_of(oreq.host, target, bool(rule and rule.ignore_query))
            for entry in self.store.variants(key):
                self.store.remove(entry.ident)
                n += 1
            if getattr(live.config, "forward_headers", ()):
                # Keys with forwarded header values after a newline.
                n += self.store.purge([], [key + "\n"])
        if n:
            self.log.debug("cache: {n} stored answers invalidated by {method} {key}", n=n,
                           method=oreq.method.decode("latin-1"),
                           key=oreq.host + oreq.target.decode("latin-1"))
        return n

    # -- one request -------------------------------------------------------

    async def handle(self, request: Any, live: Any, oreq: OriginRequest, ctx: Any,
                     passthrough: Callable) -> None:
        path = oreq.target.split(b"?", 1)[0].decode("latin-1")
        rule = match_rule(live.config.cache, path)
        if rule is not None and rule.ttl == 0:
            ctx.cache = "BYPASS"
            return await passthrough()
        # key_extra: the values of headers the domain forwards (forward_headers).
        key = self.key_of(oreq.host, oreq.target, bool(rule and rule.ignore_query)) + oreq.key_extra
        reqh = _map(request.requestHeaders)
        authorized = bool(reqh.get(b"authorization"))
        now = self.clock.seconds()

        entry = None
        for candidate in self.store.variants(key):
            if vary_key(candidate.vary, reqh) == candidate.variant and (candidate.auth_ok or not authorized):
                entry = candidate
                break

        if entry is not None:
            headers = entry.header_map()
            age = current_age(headers, entry.request_time, entry.response_time, now)
            if age < entry.lifetime:
                return await self._serve_entry(request, ctx, entry, "HIT", age)
            stale_for = age - entry.lifetime
            cc, _ = directives(headers, self.targeted)
            swr = cc.seconds("stale-while-revalidate")
            if swr is not None and stale_for <= swr and not cc.has("must-revalidate"):
                self._refresh_in_background(live, oreq, key, entry, rule, reqh)
                return await self._serve_entry(request, ctx, entry, "STALE", age)
            return await self._revalidate(request, live, oreq, ctx, key, entry, rule, reqh, age)

        if request.method == b"HEAD":
            # Not filled from a HEAD (there is no body to store).
            ctx.cache = "MISS"
            return await passthrough()
        return await self._miss(request, live, oreq, ctx, key, rule, reqh)

    # -- serving a stored answer ------------------------------------------------

    async def _serve_entry(self, request: Any, ctx: Any, entry: Entry, status: str,
                           age: float) -> None:
        full = await self.store.body(entry)
        if full is None:
            raise EdgeError("cached object vanished", 503)
        ctx.cache = status
        ctx.group, ctx.origin = "cache", "-"
        reqh = _map(request.requestHeaders)
        out = request.responseHeaders
        headers = entry.header_map()
        if not_modified(reqh, headers) and entry.status == 200:
            self._answer_304(request, headers, status, age)
            return
        request.setResponseCode(entry.status, entry.phrase)
        for name, values in headers.items():
            if name not in (b"age", b"content-length"):
                out.setRawHeaders(name, values)
        self._common(out, status, age)
        first, last, size = 0, None, full.length
        if entry.status == 200:
            chosen = self._apply_range(request, reqh, headers, size)
            if chosen is None:
                return
            first, last, size = chosen
        out.setRawHeaders(b"content-length", [b"%d" % size])
        if request.method == b"HEAD" or size == 0:
            request.finish()
            return
        reader = Reader(StaticSource(full.body or b""), request, first, last)
        ctx.relay = reader
        reader.pump()
        await reader.done

    def _apply_range(self, request: Any, reqh: dict, headers: dict,
                     size: int) -> Optional[tuple[int, Optional[int], int]]:
        """
        Answer the client's Range on a 200 of C{size} bytes: returns (first,
        last, length to send), or None when a 416 was answered.
        """
        out = request.responseHeaders
        out.setRawHeaders(b"accept-ranges", [b"bytes"])
        try:
            wanted = self._range(reqh, headers, size)
        except ValueError:
            request.setResponseCode(416)
            for name in (b"content-type", b"etag", b"last-modified", b"cache-control", b"expires"):
                out.removeHeader(name)
            out.setRawHeaders(b"content-range", [b"bytes */%d" % size])
            out.setRawHeaders(b"content-length", [b"0"])
            request.finish()
            return None
        if wanted is None:
            return 0, None, size
        first, last = wanted
        request.setResponseCode(206)
        out.setRawHeaders(b"content-range", [b"bytes %d-%d/%d" % (first, last, size)])
        return first, last, last - first + 1

    @staticmethod
    def _range(reqh: dict, headers: dict, size: int) -> Optional[tuple[int, int]]:
        ranges = reqh.get(b"range")
        if not ranges:
            return None
        if_range = reqh.get(b"if-range")
        if if_range:
            validator = if_range[0].strip()
            etag = (headers.get(b"etag") or [None])[0]
            modified = (headers.get(b"last-modified") or [None])[0]
            if validator.startswith(b"W/") or validator not in (etag, modified):
                return None
        return parse_range(ranges[0], size)

    def _answer_304(self, request: Any, headers: dict, status: str, age: float) -> None:
        out = request.responseHeaders
        request.setResponseCode(304)
        for name in NOT_MODIFIED_HEADERS:
            if name in headers:
                out.setRawHeaders(name, headers[name])
        self._common(out, status, age)
        request.finish()

    def _common(self, out: Headers, status: str, age: Optional[float]) -> None:
        """
        Age (None: keep the origin's, else 0; SPEC §5 wants it on every
        answer), Via, X-Cache; targeted cache-control fields are ours only.
        """
        for name in self.targeted:
            out.removeHeader(name)
        if age is not None:
            out.setRawHeaders(b"age", [b"%d" % int(age)])
        elif not out.hasHeader(b"age"):
            out.setRawHeaders(b"age", [b"0"])
        out.setRawHeaders(b"via", [b", ".join(out.getRawHeaders(b"via", []) + [VIA])])
        out.setRawHeaders(b"x-cache", [status.encode("ascii")])

    # -- misses and revalidation ------------------------------------------------------

    def _origin_request(self, oreq: OriginRequest, extra: Optional[dict] = None) -> OriginRequest:
        headers = oreq.headers.copy()
        for name in CLIENT_ONLY:
            headers.removeHeader(name)
        for name, value in (extra or {}).items():
            headers.setRawHeaders(name, [value])
        return replace(oreq, method=b"GET", headers=headers)

    async def _miss(self, request: Any, live: Any, oreq: OriginRequest, ctx: Any, key: str,
                    rule: Any, reqh: dict, stale: Optional[tuple] = None) -> None:
        flight = self.inflight.get(key)
        leader = flight is None
        if leader:
            flight = _Flight(self, key)
            self.inflight[key] = flight
            flight.launch(live, self._origin_request(oreq), rule, reqh)
        waiter = flight.join()
        ctx.pending = waiter.ready  # a client that leaves stops waiting
        try:
            fill = await waiter.ready
        except CancelledError:
            raise
        except (OriginUnavailable, OriginTimeout) as e:
            if stale is not None:
                return await self._serve_stale(request, ctx, stale, e)
            raise
        finally:
            ctx.pending = None
            flight.leave(waiter)
        if not flight.shared and not leader:
            # A private answer is not shared: ask the origin ourselves.
            ctx.cache = "MISS"
            return await self._own_pull(request, live, oreq, ctx, key, rule, reqh)
        if fill.result.response.code >= 500 and stale is not None and self._stale_ok(stale[0], stale[1]):
            return await self._serve_stale(request, ctx, stale, None)
        if not leader and flight.vary and flight.variant != vary_key(flight.vary, reqh):
            # The answer varies on a header this request has another value of.
            return await self._own_pull(request, live, oreq, ctx, key, rule, reqh)
        await self._stream(request, ctx, fill, reqh, "MISS")

    async def _own_pull(self, request: Any, live: Any, oreq: OriginRequest, ctx: Any, key: str,
                        rule: Any, reqh: dict) -> None:
        flight = _Flight(self, key, register=False)
        waiter = flight.join()
        flight.launch(live, self._origin_request(oreq), rule, reqh)
        ctx.pending = waiter.ready
        try:
            fill = await waiter.ready
        finally:
            ctx.pending = None
            flight.leave(waiter)
        await self._stream(request, ctx, fill, reqh, "MISS")

    async def _stream(self, request: Any, ctx: Any, fill: Fill, reqh: dict, status: str) -> None:
        result = fill.result
        response = result.response
        ctx.cache = status
        ctx.group = result.group
        ctx.origin = str(result.address)
        ctx.origin_ms = result.elapsed * 1000
        out = request.responseHeaders
        headers = _map(end_to_end(response.headers, drop=(b"server",)))
        if response.code == 200 and not_modified(reqh, headers):
            self._answer_304(request, headers, status, 0)
            return
        request.setResponseCode(response.code, response.phrase)
        for name, values in headers.items():
            out.setRawHeaders(name, values)
        self._common(out, status, None)  # fresh from the origin: its own Age, or 0
        first, last, length = 0, None, response.length
        if response.code == 200 and length is not UNKNOWN_LENGTH:
            chosen = self._apply_range(request, reqh, headers, length)
            if chosen is None:
                return
            first, last, length = chosen
        if length is not UNKNOWN_LENGTH:
            out.setRawHeaders(b"content-length", [b"%d" % length])
        if request.method == b"HEAD":
            request.finish()
            return
        if first < fill.base:
            raise EdgeError("joined too late to share this answer", 503)
        reader = Reader(fill, request, first, last)
        ctx.relay = reader
        reader.pump()
        await reader.done

    async def _revalidate(self, request: Any, live: Any, oreq: OriginRequest, ctx: Any, key: str,
                          entry: Entry, rule: Any, reqh: dict, age: float) -> None:
        headers = entry.header_map()
        extra = _validators(headers)
        if not extra:
            return await self._miss(request, live, oreq, ctx, key, rule, reqh, stale=(entry, age))
        request_time = self.clock.seconds()
        ctx.pending = self.puller.pull(live, self._origin_request(oreq, extra))
        try:
            result = await ctx.pending
        except (OriginUnavailable, OriginTimeout) as e:
            return await self._serve_stale(request, ctx, (entry, age), e)
        finally:
            ctx.pending = None
        if result.response.code == 304:
            result.response.deliverBody(Discard())
            fresh = self._refreshed(entry, result, request_time, rule, reqh)
            now = self.clock.seconds()
            new_age = current_age(fresh.header_map(), fresh.request_time, fresh.response_time, now)
            return await self._serve_entry(request, ctx, fresh, "HIT", new_age)
        if result.response.code >= 500 and self._stale_ok(entry, age):
            result.response.deliverBody(Discard())
            return await self._serve_stale(request, ctx, (entry, age), None)
        # A new answer: share it and store it like a miss.
        flight = _Flight(self, key, register=False)
        waiter = flight.join()
        flight.adopt(result, rule, reqh, request_time)
        try:
            fill = await waiter.ready
        finally:
            flight.leave(waiter)
        await self._stream(request, ctx, fill, reqh, "MISS")

    def _refreshed(self, entry: Entry, result: Any, request_time: float, rule: Any,
                   reqh: dict) -> Entry:
        """The stored entry with the 304's headers and new times (RFC 9111 4.3.4)."""
        update = _map(end_to_end(result.response.headers, drop=(b"server",)))
        for name in (b"content-length", b"content-encoding", b"transfer-encoding", b"content-range"):
            update.pop(name, None)
        merged = entry.header_map()
        merged.update(update)
        response_time = self.clock.seconds()
        verdict = storable(b"GET", reqh, entry.status, merged, rule, response_time, self.targeted)
        fresh = replace(entry, headers=[(n, v) for n, vs in merged.items() for v in vs],
                        request_time=request_time, response_time=response_time,
                        lifetime=verdict.lifetime if verdict.ok else 0.0)
        body = self.store.memory.get(entry.ident)
        if body is not None and body.body is not None:
            fresh = replace(fresh, body=body.body)
        self.store.update(fresh)
        return fresh

    def _stale_ok(self, entry: Entry, age: float) -> bool:
        headers = entry.header_map()
        cc, _ = directives(headers, self.targeted)
        limit = self.stale_if_error
        own = cc.seconds("stale-if-error")
        if own is not None:
            limit = max(limit, own)
        elif cc.has("must-revalidate") or cc.has("proxy-revalidate") or cc.has("s-maxage"):
            return False
        return limit > 0 and age - entry.lifetime <= limit

    async def _serve_stale(self, request: Any, ctx: Any, stale: tuple, error: Optional[Exception]) -> None:
        entry, age = stale
        if not self._stale_ok(entry, age):
            if error is not None:
                raise error
            raise OriginUnavailable("origin failed and the stored copy is too old to serve")
        self.log.warn("cache: serving a stale copy of {key} ({stale:.0f} s past its freshness): {why}",
                      key=entry.key, stale=age - entry.lifetime,
                      why=str(error) if error else "origin answered 5xx")
        now = self.clock.seconds()
        await self._serve_entry(request, ctx, entry, "STALE",
                                current_age(entry.header_map(), entry.request_time, entry.response_time, now))

    def _refresh_in_background(self, live: Any, oreq: OriginRequest, key: str, entry: Entry,
                               rule: Any, reqh: dict) -> None:
        if key in self.inflight:
            return
        headers = entry.header_map()
        extra = _validators(headers)
        flight = _Flight(self, key)
        self.inflight[key] = flight
        request_time = self.clock.seconds()

        async def run() -> None:
            try:
                result = await self.puller.pull(live, self._origin_request(oreq, extra))
            except Exception as e:  # noqa: BLE001 - logged, the stale copy stays
                self.log.warn("cache: background refresh of {key} failed: {why}", key=key, why=str(e))
                flight.close()
                return
            if result.response.code == 304:
                result.response.deliverBody(Discard())
                self._refreshed(entry, result, request_time, rule, reqh)
                flight.close()
                return
            flight.adopt(result, rule, reqh, request_time)

        Deferred.fromCoroutine(run())


class _Flight:
    """
    One collapsed origin pull for a key: the waiters, the pull, and the fill
    once the answer's headers are in.
    """

    log = Logger()

    def __init__(self, cache: Cache, key: str, register: bool = True) -> None:
        self.cache = cache
        self.key = key
        self.registered = register
        self.waiters: list[_Waiter] = []
        self.pending: Optional[Deferred] = None
        self.fill: Optional[Fill] = None
        self.failure: Optional[Failure] = None
        self.shared = True
        self.vary: Optional[tuple] = None
        self.variant: Optional[tuple] = None
        self.closed = False

    def join(self) -> _Waiter:
        w = _Waiter()
        if self.fill is not None:
            w.ready.callback(self.fill)
        elif self.failure is not None:
            w.ready.errback(self.failure)
        else:
            self.waiters.append(w)
        return w

    def leave(self, waiter: _Waiter) -> None:
        if waiter in self.waiters:
            self.waiters.remove(waiter)
        if not self.waiters and self.pending is not None and self.fill is None:
            # Everyone left before the answer came: stop asking.
            pending, self.pending = self.pending, None
            pending.cancel()

    def launch(self, live: Any, oreq: OriginRequest, rule: Any, reqh: dict) -> None:
        request_time = self.cache.clock.seconds()
        d = self.pending = self.cache.puller.pull(live, oreq)

        def got(result: Any) -> None:
            self.pending = None
            self.adopt(result, rule, reqh, request_time)

        def failed(f: Failure) -> None:
            self.pending = None
            self.failure = f
            self.close()
            waiters, self.waiters = self.waiters, []
            for w in waiters:
                w.ready.errback(f)

        d.addCallbacks(got, failed)
        d.addErrback(lambda f: self.log.failure("cache flight for {key}", f, key=self.key))

    def adopt(self, result: Any, rule: Any, reqh: dict, request_time: float) -> None:
        """The origin's answer is in: decide storing and sharing, start the fill."""
        cache = self.cache
        response = result.response
        headers = _map(response.headers)
        response_time = cache.clock.seconds()
        verdict = storable(b"GET", reqh, response.code, headers, rule, response_time, cache.targeted)
        too_big = response.length is not UNKNOWN_LENGTH and response.length > cache.max_object
        storing = verdict.ok and not too_big
        cc, _ = directives(headers, cache.targeted)
        self.vary = vary_names(headers)
        self.variant = vary_key(self.vary, reqh) if self.vary is not None else None
        # Answers that belong to one client are never handed to another.
        self.shared = not (cc.has("private") or cc.has("no-store") or headers.get(b"set-cookie")
                           or self.vary is None) or storing
        fill = Fill(self.key, cache.max_object, cache.budget)
        self.fill = fill
        if not storing and self.registered:
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

        fill.on_complete = complete
        fill.on_idle = idle
        fill.on_unstored = lambda f: self.close()
        fill.prepare(result, storing)
        # Waiters attach their readers first, then the body flows (a
        # buffered answer is delivered all at once).
        waiters, self.waiters = self.waiters, []
        for w in waiters:
            w.ready.callback(fill)
        fill.start()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.registered and self.cache.inflight.get(self.key) is self:
            del self.cache.inflight[self.key]
