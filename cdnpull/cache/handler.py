"""
The edge cache (docs/cache.md and docs/security.md): what the edge does with a GET or
HEAD of a domain, between routing and the failover chain.

    lookup ─► fresh ─────────────────────────────► HIT (full, range, 304, HEAD)
       │      stale, stale-while-revalidate ok ──► STALE + refresh in background
       │      stale ─► conditional pull (one per key) ─► 304 ──► HIT (headers refreshed)
       │                         │        ─► new answer ─► MISS (stored)
       │                         └─ every origin failed ──► STALE (stale-if-error)
       ├─ none, a Range (not one open near the start), or of an object not
       │        stored ─► the Range passed on ─► MISS (206, multipart too);
       │        an object that will be stored is filled behind
       ├─ none, Cache-Control: only-if-cached ─► 504, the origin not asked
       └─ none ─► collapsed pull (one per key) ─► MISS, streamed to every
                waiter that may have it (L{collapse})

The key is the client's scheme, the host and the path + query (the query is
left out when the matching C{CacheRule} says C{ignore_query}), plus the Vary
variant: http and https answers are separate objects.  Never the origin
address, so the standby's answer is cached like the primary's.

A stored body that vanished between lookup and read (purged, evicted,
damaged on disk) is fetched again, never a 5xx.

The cache decides and never writes: L{Cache.handle} returns an
L{cdnpull.answer.Answer} (its head made by the rules of
L{cdnpull.answer}, its body a stored body, a fill, an origin answer or
none), which the edge writes (L{cdnpull.edge.deliver}).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional, Protocol, Union

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from ..answer import (NO_BODY_CODES, Answer, not_modified_fields, own_fields, ranged, relay_fields,
                      relay_skip, unsatisfiable)
from ..errors import OriginTimeout, OriginUnavailable
from ..headers import end_to_end
from ..failover import OriginRequest, PullResult
from ..stream import Discard
from ..routing import normalise_host
from .collapse import Flight, Unshared, authorized, header_map
from .fill import Fill, FillBudget, StaticSource
from .hit import stored_fields
from .policy import (
    byte_ranges,
    current_age,
    directives,
    match_rule,
    not_modified,
    parse_cache_control,
    parse_range,
    same_origin_target,
    storable,
    vary_key,
)
from .store import Entry, Store

__all__ = ["Cache"]

# Request headers the cache takes out of the origin request: it asks for
# the whole object (to store it) and answers ranges and conditionals itself.
CLIENT_ONLY = (b"range", b"if-range", b"if-none-match", b"if-modified-since", b"if-match",
               b"if-unmodified-since")
# A Range miss whose first byte is further in than this is passed on to the
# origin: fetching the whole object up to it would cost the origin more than
# the range plus this much (docs/security.md).
RANGE_READ_AHEAD = 1024 * 1024


def _validators(headers: dict) -> dict:
    """The conditional headers that revalidate a stored answer."""
    extra = {}
    if headers.get(b"etag"):
        extra[b"if-none-match"] = headers[b"etag"][0]
    if headers.get(b"last-modified"):
        extra[b"if-modified-since"] = headers[b"last-modified"][0]
    return extra



class Failover(Protocol):
    """What the cache asks of the failover chain (L{cdnpull.failover.FailoverChain})."""

    def pull(self, live: Any, req: OriginRequest) -> "Deferred[PullResult]": ...


class _Vanished(Exception):
    """The stored body is gone (purged, evicted, damaged) since the lookup."""


@dataclass
class _Ask:
    """One client request on its way through the cache."""

    live: Any
    oreq: OriginRequest  # (its method is the client's)
    key: str
    rule: Any
    reqh: dict
    started: Optional[float]  # when the client's request came (its time budget)


# What handle() returns for a request the edge relays from the origin itself
# (the X-Cache status of the answer): nothing is stored, looked up or shared.
BYPASS = "BYPASS"  # a CacheRule with ttl=0
PASS_MISS = "MISS"  # a HEAD of nothing stored (a HEAD never fills the cache)


def _client_range(reqh: dict) -> Optional[bytes]:
    """
    The client's C{Range} as one value: two C{Range} lines are read (and
    passed on) as one list, so the origin and the node answer the same ranges.
    """
    values = reqh.get(b"range")
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    specs = [v.strip().partition(b"=") for v in values]
    if all(unit.strip().lower() == b"bytes" and eq for unit, eq, _ in specs):
        return b"bytes=" + b", ".join(spec.strip() for _, _, spec in specs)
    return b", ".join(v.strip() for v in values)


def _range_spec(first: Optional[int], last: Optional[int]) -> bytes:
    if first is None:
        return b"-%d" % (last or 0)
    return b"%d-" % first if last is None else b"%d-%d" % (first, last)


def _range_for_origin(value: bytes, one_range: bool) -> bytes:
    """
    The C{Range} sent to the origin for a client's (passed-on) C{Range}:
    one range as one clean range (C{bytes=0-0,} is C{bytes=0-0}: SeaweedFS
    answers the first with 416), several as they came -- but not to a bucket:
    S3 and SeaweedFS answer several ranges with the whole object, so a
    bucket is asked for the one range that covers them when that costs at
    most L{RANGE_READ_AHEAD} more than the ranges (the client gets it, a
    coalesced answer RFC 9110 14.2 allows), else for the first range only
    (a 206 whose C{Content-Range} says what the client got).
    """
    ranges = byte_ranges(value)
    if ranges is None:
        return value  # the origin decides what it makes of it
    if len(ranges) == 1:
        return b"bytes=" + _range_spec(*ranges[0])
    if not one_range:
        return value
    closed = [(first, last) for first, last in ranges if first is not None and last is not None]
    if len(closed) == len(ranges):
        low = min(first for first, _ in closed)
        high = max(last for _, last in closed)
        wanted = sum(last - first + 1 for first, last in closed)
        if high - low + 1 <= wanted + RANGE_READ_AHEAD:
            return b"bytes=%d-%d" % (low, high)
    return b"bytes=" + _range_spec(*ranges[0])


def _only_if_cached(values: Optional[list]) -> bool:
    return bool(values) and parse_cache_control(values).has("only-if-cached")


def _range_total(headers: Headers) -> Optional[int]:
    """The complete length a 206's C{Content-Range} gives (None: unknown)."""
    value = (headers.getRawHeaders(b"content-range") or [b""])[0]
    _, slash, total = value.rpartition(b"/")
    total = total.strip()
    return int(total) if slash and total.isdigit() else None


class Cache:
    """
    @param puller: the failover chain (L{cdnpull.failover.FailoverChain}).
    @param clock: the injected clock.
    """

    log = Logger()

    def __init__(self, store: Store, puller: Failover, clock: IReactorTime, max_object: int,
                 stale_if_error: float, targeted: tuple = (b"cdn-cache-control",)) -> None:
        self.store = store
        # Targeted cache-control fields this node obeys (RFC 9213), lower
        # case, in precedence order; never forwarded to clients.
        self.targeted = tuple(targeted)
        # What an answer relayed to a client never carries from the origin:
        # hop-by-hop fields, the ones the node sets, the targeted ones.
        self.relay_skip = relay_skip(self.targeted)
        self.puller = puller
        self.clock = clock
        self.max_object = max_object
        self.stale_if_error = stale_if_error
        self.inflight: dict[str, Flight] = {}
        self.unshared = Unshared(clock)
        # Answers being stored hold at most as much as the memory cache.
        self.budget = FillBudget(max(max_object, store.memory.limit))

    # -- the key ---------------------------------------------------------

    @staticmethod
    def key_of(scheme: str, host: str, target: bytes, ignore_query: bool) -> str:
        """C{scheme://host/path?query}: http and https answers are separate objects."""
        path, _, query = target.partition(b"?")
        text = f"{scheme}://{host}" + path.decode("latin-1")
        if query and not ignore_query:
            text += "?" + query.decode("latin-1")
        return text

    @staticmethod
    def _both_schemes(url: str) -> list[str]:
        """The keys a URL names: its http and its https copy, whichever it says."""
        rest = url.split("://", 1)[-1]
        authority, slash, path = rest.partition("/")
        host = normalise_host(authority.encode("utf-8")) or authority.lower()
        return [f"{scheme}://{host}{slash}{path}" for scheme in ("http", "https")]

    def purge(self, urls: list, prefixes: list) -> dict:
        """
        Drop stored answers by full URL or URL prefix (memory and disk), of
        both schemes whichever one the URL names.
        """
        keys = [k for u in urls for k in self._both_schemes(u)]
        # A URL also names its entries keyed on forwarded headers (URL + "\n...").
        n = self.store.purge(keys, [k for p in prefixes for k in self._both_schemes(p)]
                             + [k + "\n" for k in keys])
        self.log.info("cache: purged {n} objects", n=n)
        return {"purged": n}

    def invalidate(self, live: Any, oreq: OriginRequest, response_headers: Headers) -> int:
        """
        RFC 9111 section 4.4: an unsafe request got a non-error answer, so
        the stored answers for its target URI, and for the same-host
        C{Location} and C{Content-Location} of that answer, are dropped
        (every variant, both schemes, memory and disk).  Returns how many were.
        """
        targets = [oreq.target]
        for name in (b"location", b"content-location"):
            for value in response_headers.getRawHeaders(name, [])[:1]:
                same = same_origin_target(value.strip(), oreq.client_scheme, oreq.host, oreq.target)
                if same is not None and same not in targets:
                    targets.append(same)
        n = 0
        keyed = []  # keys with forwarded header values after a newline
        for target in targets:
            rule = match_rule(live.config.cache, target.split(b"?", 1)[0].decode("latin-1"))
            for scheme in ("http", "https"):
                key = self.key_of(scheme, oreq.host, target, bool(rule and rule.ignore_query))
                n += self.store.remove_key(key)  # (with what the disk has not indexed yet)
                keyed.append(key + "\n")
        if getattr(live.config, "forward_headers", ()):
            n += self.store.purge([], keyed)  # one walk of the store for all of them
        if n:
            self.log.debug("cache: {n} stored answers invalidated by {method} {key}", n=n,
                           method=oreq.method.decode("latin-1"),
                           key=oreq.host + oreq.target.decode("latin-1"))
        return n

    # -- one request -------------------------------------------------------

    async def handle(self, live: Any, oreq: OriginRequest, reqh: dict,
                     started: Optional[float] = None) -> Union[Answer, str]:
        """
        The answer to a client's GET or HEAD (C{oreq}, with the client's
        method), for the edge to write; or L{BYPASS} or L{PASS_MISS}: the
        X-Cache status of an answer the edge relays from the origin itself.
        The client leaving cancels the Deferred of this coroutine (and the
        pull or wait it is in).

        @param reqh: the client's headers, lower-case name -> [values].
        @param started: when the client's request came (its time budget).
        """
        path = oreq.target.split(b"?", 1)[0].decode("latin-1")
        rule = match_rule(live.config.cache, path)
        if rule is not None and rule.ttl == 0:
            if _only_if_cached(reqh.get(b"cache-control")):
                return self._not_cached()
            return BYPASS
        # key_extra: the values of headers the domain forwards (forward_headers).
        key = self.key_of(oreq.client_scheme, oreq.host, oreq.target,
                          bool(rule and rule.ignore_query)) + oreq.key_extra
        return await self._lookup(_Ask(live, oreq, key, rule, reqh, started), alone=False)

    def _find(self, ask: _Ask) -> Optional[Entry]:
        auth = authorized(ask.reqh)
        wanted: dict = {}  # the request's values, once per set of Vary names
        for candidate in self.store.variants(ask.key):
            variant = wanted.get(candidate.vary)
            if variant is None:
                variant = wanted[candidate.vary] = vary_key(candidate.vary, ask.reqh)
            if variant == candidate.variant and (candidate.auth_ok or not auth):
                return candidate
        return None

    async def _lookup(self, ask: _Ask, alone: bool) -> Union[Answer, str]:
        """
        Serve from the store, else through the origin.  C{alone}: without
        collapsing (the request was turned away from a shared pull).
        """
        if self.store.loading:  # the disk cache is being indexed: look on disk first
            await self.store.lookup(ask.key)
        entry = self._find(ask)
        if entry is not None:
            headers = entry.header_map()
            age = current_age(headers, entry.request_time, entry.response_time, self.clock.seconds())
            status = "HIT" if age < entry.lifetime else None
            if status is None:
                cc, _ = directives(headers, self.targeted)
                swr = cc.seconds("stale-while-revalidate")
                if swr is not None and age - entry.lifetime <= swr and not cc.has("must-revalidate"):
                    self._refresh_in_background(ask, entry)
                    status = "STALE"
            if status is None:
                if _only_if_cached(ask.reqh.get(b"cache-control")):
                    return self._not_cached()
                return await self._fetch(ask, alone, stale=(entry, age))
            try:
                return await self._serve_entry(ask, entry, status, age)
            except _Vanished:
                self.log.info("cache: {key} vanished before it was read; asking the origin",
                              key=ask.key)
        if _only_if_cached(ask.reqh.get(b"cache-control")):
            return self._not_cached()
        if ask.oreq.method == b"HEAD":
            return PASS_MISS  # not filled from a HEAD (there is no body to store)
        return await self._fetch(ask, alone)

    # -- serving a stored answer ------------------------------------------------

    async def _serve_entry(self, ask: _Ask, entry: Entry, status: str, age: float) -> Answer:
        """
        @raise _Vanished: the body is gone (nothing was sent: the caller
            asks the origin instead).
        """
        full = await self.store.body(entry)
        if full is None:
            raise _Vanished(entry.key)
        reqh = ask.reqh
        headers = stored_fields(entry)
        if not_modified(reqh, headers) and entry.status == 200:
            return self._answer_304(headers, status, age)
        size = full.length
        code, phrase = entry.status, entry.phrase  # type: tuple[int, Optional[bytes]]
        fields = relay_fields(headers, self.relay_skip, status,
                              None if code in NO_BODY_CODES else size, int(age), code == 200)
        first, last = 0, None
        if code == 200:
            cut = self._cut(reqh, headers, fields, size)
            if cut is None:
                return Answer.stored(416, None, fields, status)
            first, last = cut
            if last is not None:
                code, phrase, size = 206, None, last - first + 1
        if ask.oreq.method == b"HEAD" or size == 0:
            return Answer.stored(code, phrase, fields, status)
        return Answer.stored(code, phrase, fields, status, StaticSource(full.body or b""),
                             first, last)

    def _cut(self, reqh: dict, headers: dict, fields: dict,
             size: int) -> Optional[tuple[int, Optional[int]]]:
        """
        The client's Range on a 200 of C{size} bytes whose answer has these
        C{fields}: (first, last) to send (last None: the whole body; else
        C{fields} are made a 206's), or None: C{fields} are made a 416's.
        """
        try:
            wanted = self._range(reqh, headers, size)
        except ValueError:
            unsatisfiable(fields, size)
            return None
        if wanted is None:
            return 0, None
        first, last = wanted
        ranged(fields, first, last, size)
        return first, last

    @staticmethod
    def _range(reqh: dict, headers: dict, size: int) -> Optional[tuple[int, int]]:
        value = _client_range(reqh)
        if not value:
            return None
        if_range = reqh.get(b"if-range")
        if if_range:
            validator = if_range[0].strip()
            etag = (headers.get(b"etag") or [None])[0]
            modified = (headers.get(b"last-modified") or [None])[0]
            if validator.startswith(b"W/") or validator not in (etag, modified):
                return None
        return parse_range(value, size)

    @staticmethod
    def _not_cached() -> Answer:
        """
        RFC 9111 5.2.1.7: C{only-if-cached} and nothing fresh stored is a 504,
        without asking the origin (answered here: the origin did not fail, so
        no warning is logged).
        """
        body = b"504 Gateway Timeout\n"
        return Answer.stored(504, None, own_fields(len(body), "MISS"), "MISS", body)

    def _answer_304(self, headers: dict, status: str, age: float,
                    result: Optional[PullResult] = None) -> Answer:
        """
        A 304 for the 200 with these C{headers}: stored, or the origin's
        C{result} (age 0).
        """
        fields = not_modified_fields(headers, self.relay_skip, status, int(age))
        if result is not None:
            return Answer.pulled(result, 304, None, fields, status)
        return Answer.stored(304, None, fields, status)

    # -- misses and revalidation ------------------------------------------------------

    @staticmethod
    def _origin_request(oreq: OriginRequest, extra: Optional[dict] = None,
                        started: Optional[float] = None) -> OriginRequest:
        headers = oreq.request_headers().copy()
        for name in CLIENT_ONLY:
            headers.removeHeader(name)
        for name, value in (extra or {}).items():
            headers.setRawHeaders(name, [value])
        return replace(oreq, method=b"GET", headers=headers, started=started)

    def _launch(self, flight: Flight, ask: _Ask, entry: Optional[Entry] = None,
                started: Optional[float] = None) -> None:
        """
        Start C{flight}'s GET of C{ask} at the origin: with the validators
        of a stored C{entry}, whose 304 refreshes it (L{_refreshed}).  A
        background flight is nobody's, so no interim answer goes anywhere.
        """
        extra = _validators(entry.header_map()) if entry is not None else {}
        oreq = self._origin_request(ask.oreq, extra, started)
        if flight.background:
            oreq = replace(oreq, on_interim=None)
        rule, reqh = ask.rule, ask.reqh
        flight.launch(ask.live, oreq, rule, reqh, stale=entry if extra else None,
                      refresh=lambda e, result, t: self._refreshed(e, result, t, rule, reqh))

    async def _fetch(self, ask: _Ask, alone: bool,
                     stale: Optional[tuple] = None) -> Union[Answer, str]:
        """
        A miss, or with C{stale} (entry, age) a revalidation, through one
        origin pull per key that the other requests for the key wait on.
        """
        entry, age = stale if stale is not None else (None, 0.0)
        why = self.unshared.why(ask.key)
        if entry is None and self._passes_range(ask, why):
            # Not even behind a pull in flight: if its client leaves, this
            # request alone would keep the whole object coming.
            return await self._pass_range(ask)
        if (entry is None and why == "private" and ask.oreq.method == b"GET"
                and not ask.reqh.get(b"range")):
            # Hit-for-miss: the last answer was not stored, so nobody joins
            # this pull; unless the answer turns out storable, it is relayed
            # without a Flight, a Fill and a Reader (the miss path's cost).
            return await self._direct(ask)
        flight = None if alone else self.inflight.get(ask.key)
        leader = flight is None
        if flight is None:
            # Hit-for-miss: the last answer was not shared, so do not queue.
            flight = Flight(self, ask.key, register=not alone and why != "private")
            waiter = flight.join()
            self._launch(flight, ask, entry, ask.started)
        else:
            waiter = flight.join()
        failure: Optional[BaseException] = None
        try:
            await waiter.ready  # (a client that leaves cancels it: it stops waiting)
        except CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - decided below: stale, own try, or the error
            failure = e
        finally:
            flight.leave(waiter)

        if failure is not None:
            if (entry is not None and isinstance(failure, (OriginUnavailable, OriginTimeout))
                    and self._stale_ok(entry, age)):
                return await self._serve_stale(ask, stale, failure)  # type: ignore[arg-type]
            if leader:
                raise failure
            # Another request's pull failed: this one gets its own chance
            # (its own failover chain, within its own time budget).
            self.log.info("cache: the shared pull of {key} failed ({why}); a waiting request "
                          "tries on its own", key=ask.key, why=str(failure))
            return await self._lookup(ask, alone=True)
        if not leader and not flight.may_serve(ask.reqh):
            # Not ours to have (private, another variant, Authorization):
            # sent on its own, as Varnish's hit-for-miss does.
            return await self._lookup(ask, alone=True)
        if flight.refreshed is not None:
            fresh = flight.refreshed
            new_age = current_age(fresh.header_map(), fresh.request_time, fresh.response_time,
                                  self.clock.seconds())
            try:
                return await self._serve_entry(ask, fresh, "HIT", new_age)
            except _Vanished:
                return await self._fetch(ask, alone=True)
        fill = flight.fill
        assert fill is not None
        if fill.result.response.code >= 500 and entry is not None and self._stale_ok(entry, age):
            return await self._serve_stale(ask, stale, None)  # type: ignore[arg-type]
        if not leader and fill.base > 0:
            return await self._lookup(ask, alone=True)  # joined too late to share it
        return self._stream(ask, fill, "MISS", strip_cookies=flight.strip_cookies and not leader)

    async def _direct(self, ask: _Ask) -> Answer:
        """
        A GET miss of a key marked not shared ("private"): the origin's
        answer goes to this request alone.  When the answer is storable
        after all, it takes the ordinary way (a Flight stores it); else it
        is relayed as it arrives and the mark is renewed, as
        L{Flight.adopt} would.
        """
        request_time = self.clock.seconds()
        # Through a Flight of its own (nobody joins it), adopted only when the
        # answer is storable after all: the flight releases this request
        # (whose edge attaches the reader as soon as it has the answer)
        # before its fill starts, as in _fetch.  A client that leaves
        # cancels the pull (Flight.leave).
        flight = Flight(self, ask.key, register=False)
        waiter = flight.join()
        relayed: list = []

        def got(result: PullResult) -> None:
            flight.pending = None
            response = result.response
            headers = header_map(response.headers)
            verdict = storable(b"GET", ask.reqh, response.code, headers, ask.rule,
                               self.clock.seconds(), self.targeted)
            if verdict.ok:
                flight.adopt(result, ask.rule, ask.reqh, request_time)  # stored, as a miss
                return
            self.unshared.learn(ask.key, False, response.code,
                                response.length is not UNKNOWN_LENGTH
                                and response.length > self.max_object,
                                authorized(ask.reqh))
            relayed.append(self._relay(result, headers, ask.reqh))
            waiter.ready.callback(flight)

        def failed(failure: Any) -> None:
            flight.pending = None
            if not waiter.ready.called:
                waiter.ready.errback(failure)
            elif not failure.check(CancelledError):
                self.log.failure("cache: relaying {key}", failure, key=ask.key)

        pulled = flight.pending = self.puller.pull(
            ask.live, self._origin_request(ask.oreq, None, ask.started))
        pulled.addCallback(got).addErrback(failed)
        try:
            await waiter.ready
        finally:
            flight.leave(waiter)
        if relayed:
            return relayed[0]
        assert flight.fill is not None
        return self._stream(ask, flight.fill, "MISS")

    def _relay(self, result: Any, headers: dict, reqh: dict) -> Answer:
        """An origin answer that is not stored, relayed to its one client as it comes."""
        response = result.response
        if response.code == 200 and not_modified(reqh, headers):
            response.deliverBody(Discard(stop=True))
            return self._answer_304(headers, "MISS", 0, result)
        length = response.length
        known = length is not UNKNOWN_LENGTH
        return Answer.pulled(result, response.code, response.phrase,
                             relay_fields(headers, self.relay_skip, "MISS",
                                          length if known and response.code not in NO_BODY_CODES
                                          else None, None,
                                          response.code == 200 and known),
                             "MISS", response)

    def _passes_range(self, ask: _Ask, why: Optional[str]) -> bool:
        """
        Whether a Range miss is passed on to the origin as it is, rather
        than answered from a whole-object fill (docs/security.md: a range of an
        object that is not stored costs the origin at most the range plus
        L{RANGE_READ_AHEAD} bytes).  Only a request with a range open to the
        end near the start (C{bytes=0-}, what players send first, also in a
        list of several) joins a fill of an object not known to be unstored:
        it asks for nearly all of it anyway.  Everything else with a
        C{bytes} Range goes on: a range with an end (once the client has it,
        what the origin already sent is wasted: on loopback 2-3 MiB were in
        flight), a suffix range, one that starts further in, several ranges
        (the origin's C{multipart/byteranges} answer streams through), and a
        range set the node cannot read (the origin decides).  A Range of
        another unit is ignored (RFC 9110 14.2): the client gets the whole
        object, which is what it costs.
        """
        if ask.oreq.method != b"GET":
            return False
        value = _client_range(ask.reqh)
        if value is None:
            return False
        ranges = byte_ranges(value)
        if ranges is None:
            return value.strip().lower().startswith(b"bytes")
        if why is not None:
            return True
        return not any(first is not None and last is None and first < RANGE_READ_AHEAD
                       for first, last in ranges)

    async def _pass_range(self, ask: _Ask) -> Answer:
        """The client's Range goes to the origin; a storable object is filled behind."""
        flight = Flight(self, ask.key, register=False, remember=False)
        waiter = flight.join()
        oreq = ask.oreq
        value = _client_range(ask.reqh)
        one_range = any(not group.kind.several_ranges for group in ask.live.groups())
        sent = _range_for_origin(value, one_range) if value is not None else None
        if sent is not None and (sent != ask.reqh.get(b"range", [None])[0]
                                 or len(ask.reqh.get(b"range", ())) > 1):
            headers = oreq.request_headers().copy()
            headers.setRawHeaders(b"range", [sent])
            oreq = replace(oreq, headers=headers)
        flight.launch(ask.live, replace(oreq, method=b"GET", started=ask.started), ask.rule,
                      ask.reqh)
        try:
            await waiter.ready
        finally:
            flight.leave(waiter)
        fill = flight.fill
        assert fill is not None
        if fill.result.response.code == 206:
            self._fill_behind(ask, fill.result.response)
        return self._stream(ask, fill, "MISS")

    def _fill_behind(self, ask: _Ask, response: Any) -> None:
        """Fetch and store the whole object when the 206 shows it will be stored."""
        if ask.key in self.inflight or self.unshared.why(ask.key) or self._find(ask) is not None:
            return  # being filled, known not to be stored, or stored meanwhile
        total = _range_total(response.headers)
        if total is None:
            return
        if total > self.max_object:
            self.unshared.mark(ask.key, "large")
            return
        headers = header_map(response.headers)
        if not storable(b"GET", ask.reqh, 200, headers, ask.rule, self.clock.seconds(),
                        self.targeted).ok:
            return
        # (Its interim answers (103) are nobody's: the client has its range.)
        self._launch(Flight(self, ask.key, background=True), ask)

    def _stream(self, ask: _Ask, fill: Fill, status: str, strip_cookies: bool = False) -> Answer:
        """
        The answer a fill is read for (from its start, or the client's
        range of it); the edge attaches its reader at once (before the
        fill starts: see L{Fill.start}).
        """
        reqh = ask.reqh
        result = fill.result
        response = result.response
        headers = header_map(response.headers)
        if strip_cookies:
            headers.pop(b"set-cookie", None)
        if response.code == 200 and not_modified(reqh, headers):
            return self._answer_304(headers, status, 0, result)
        code, phrase, length = response.code, response.phrase, response.length
        known = length is not UNKNOWN_LENGTH
        # Fresh from the origin: its own Age, or 0.
        fields = relay_fields(headers, self.relay_skip, status,
                              length if known and code not in NO_BODY_CODES else None, None,
                              code == 200 and known)
        first, last = 0, None
        if code == 200 and known:
            cut = self._cut(reqh, headers, fields, length)
            if cut is None:
                return Answer.pulled(result, 416, None, fields, status)
            first, last = cut
            if last is not None:
                code, phrase = 206, None
        if ask.oreq.method == b"HEAD":
            return Answer.pulled(result, code, phrase, fields, status)
        return Answer.pulled(result, code, phrase, fields, status, fill, first, last)

    def _refreshed(self, entry: Entry, result: Any, request_time: float, rule: Any,
                   reqh: dict) -> Entry:
        """The stored entry with the 304's headers and new times (RFC 9111 4.3.4)."""
        update = header_map(end_to_end(result.response.headers, drop=(b"server",)))
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

    async def _serve_stale(self, ask: _Ask, stale: tuple, error: Optional[Exception]) -> Answer:
        entry, age = stale
        if not self._stale_ok(entry, age):
            if error is not None:
                raise error
            raise OriginUnavailable("origin failed and the stored copy is too old to serve")
        self.log.warn("cache: serving a stale copy of {key} ({stale:.0f} s past its freshness): {why}",
                      key=entry.key, stale=age - entry.lifetime,
                      why=str(error) if error else "origin answered 5xx")
        now = self.clock.seconds()
        try:
            return await self._serve_entry(ask, entry, "STALE",
                                    current_age(entry.header_map(), entry.request_time,
                                                entry.response_time, now))
        except _Vanished:
            if error is not None:
                raise error
            raise OriginUnavailable("origin failed and the stored copy is gone")

    def _refresh_in_background(self, ask: _Ask, entry: Entry) -> None:
        if ask.key in self.inflight:
            return
        self._launch(Flight(self, ask.key, background=True), ask, entry)
