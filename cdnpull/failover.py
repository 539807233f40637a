"""
The failover chain (docs/origins.md): try the primary group's addresses,
then the standby, under one time budget per request, and hand back the answer
the client gets.

Decisions, in order:

 1. Primary addresses in rotation order.  A connect error or connect timeout
    blocks the address and moves on; a connection lost before any answer moves
    on (GET/HEAD only); a time-to-first-byte timeout stops trying primaries.
 2. The primary answered with a status in C{Domain.failover_on}, or no primary
    address answered, and there is a standby: the same request goes to the
    standby.  Its answer, whatever the status, is the client's.  When the
    standby cannot be reached, the primary's answer is returned (or 502/504
    when there was none).
 3. Every usable address of the primary is blocked: with a standby, go
    straight to it; without one, the blocked primaries are tried anyway.
 4. Other methods go to the primary only, and move to another address only
    when the connection failed before anything was sent.
 5. Cancelling the pull (the client left) stops it where it is: the try in
    progress is dropped, and so is a primary's error answer kept while the
    standby is asked; no other address is tried, and the try cut short
    counts against no address.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Union

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse

from .compat import before_cancel, fill_headers
from .config import DEFAULT_PORTS, Address
from .errors import (
    ConnectFailed,
    FirstByteTimeout,
    NoResponse,
    OriginError,
    OriginTimeout,
    OriginUnavailable,
    TLSFailed,
)
from .origins.client import OriginClient
from .live import LiveDomain
from .origins.buffered import read_whole
from .origins.group import AddressState, OriginGroup
from .headers import field_lines
from .http.client import header_lines
from .origins.kinds import OriginKind, host_field

__all__ = ["OriginRequest", "PullResult", "FailoverChain"]

SAFE_METHODS = (b"GET", b"HEAD")
# How much of a primary's error answer is kept while the standby is asked
# (it is what the client gets if the standby cannot be reached).
KEEP_PRIMARY_ANSWER = 1024 * 1024


class FailoverObserver(Protocol):
    """Told of every try at an origin address and of every failover."""

    def origin_try(self, domain: str, group: str, address: str, outcome: str,
                   seconds: Optional[float]) -> None: ...

    def failover(self, domain: str) -> None: ...


@dataclass
class OriginRequest:
    """
    What the edge asks the origins for.  Its end-to-end headers come as
    C{headers}, or (None there) as C{fields}: then a try that only adds Host
    (a plain-HTTP IP or hostname origin) sends them without a C{Headers}.
    """

    method: bytes
    target: bytes  # origin-form: path and query
    headers: Optional[Headers]  # end-to-end headers, without Host (None: C{fields})
    host: str  # the host name the client asked for
    client_scheme: str = "http"
    # A fresh body producer for each try (None: no body).
    body: Optional[Callable[[], Optional[IBodyProducer]]] = None
    # Appended to the cache key: the values of client headers the domain's
    # forward_headers lets through to the origin.
    key_extra: str = ""
    # Called with (status, reason, [(name, value)]) for each interim (1xx)
    # answer of the origin, before the final one (None: they are dropped).
    on_interim: Optional[Callable[[int, bytes, list], None]] = None
    # When the client's time budget started (None: now).  A request that
    # waited on another's origin pull keeps its own budget, not a new one.
    started: Optional[float] = None
    # The end-to-end headers as lower-case name -> [values], when C{headers} is None.
    fields: Optional[dict] = None

    def request_headers(self) -> Headers:
        """The end-to-end headers as a C{Headers} (made from C{fields} once)."""
        headers = self.headers
        if headers is None:
            headers = self.headers = Headers()
            fill_headers(headers, self.fields or {})
        return headers

    def header_lines(self) -> bytes:
        """The end-to-end headers as they go on the wire, one line each."""
        fields = self.fields
        if self.headers is not None or fields is None:
            return header_lines(self.request_headers())
        return b"".join(field_lines(fields))


@dataclass
class PullResult:
    """The answer for the client and where it came from."""

    response: IResponse
    group: str
    address: Address
    elapsed: float


class _Stop:
    """
    Whether a pull was cancelled.  Twisted cancels only the Deferred a
    coroutine awaits, and what that becomes is up to whoever made it (the
    Agent turns it into "connection lost before a response", reading a body
    into "cut short"): the chain looks here before it takes any of that for
    an origin's failure or starts another try.
    """

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def check(self) -> None:
        if self.cancelled:
            raise CancelledError()

    def trap(self, failure: Failure) -> Failure:
        """An errback: after a cancel, any failure is the cancel."""
        if self.cancelled and not failure.check(CancelledError):
            return Failure(CancelledError())
        return failure


def _drop(answer: Deferred) -> None:
    """Stop reading a kept primary answer (its connection is closed)."""
    answer.addErrback(lambda f: f.trap(CancelledError))
    answer.cancel()


class FailoverChain:
    """Runs the failover chain for one request at a time."""

    log = Logger()

    def __init__(self, client: OriginClient, clock: IReactorTime,
                 observer: Optional[FailoverObserver] = None) -> None:
        self.client = client
        self.clock = clock
        # Told of every try and failover (the metrics).
        self.observer = observer

    def _observe(self, live: LiveDomain, group: OriginGroup, address: Address,
                 outcome: str, seconds: Optional[float]) -> None:
        if self.observer is not None:
            self.observer.origin_try(live.name, group.role, str(address), outcome, seconds)

    def pull(self, live: LiveDomain, req: OriginRequest) -> "Deferred[PullResult]":
        """
        The answer for C{req}.  Cancelling the Deferred (the client left)
        stops the chain: it fails with C{CancelledError}, and no other
        address, primary or standby, is asked.

        The most common pull, the first primary address answering with the
        client's answer, is made with plain callbacks (no coroutine): the
        first try is sent here and, unless its answer is final
        (L{_final}), the coroutine L{_pull} takes over from that try's
        outcome and decides everything else.
        """
        stop = _Stop()
        start = self.clock.seconds() if req.started is None else req.started
        deadline = start + live.config.total_timeout
        primary = live.primary
        standby_group = live.standby
        if (not primary.has_addresses or (standby_group is not None and not standby_group.has_addresses)
                or _finishes(primary.kind)):  # (_address_wait, or a kind that finishes answers)
            return self._run(live, req, stop, deadline, None)
        try:
            plan = self._plan(live, req)
            _, standby, order, _ = plan
            sent = self._send(live, primary, order[0], req, deadline) if order else None
        except Exception:
            return fail()  # (as the coroutine's Deferred would)
        if sent is None:
            return self._run(live, req, stop, deadline, (*plan, None))
        first, started, address, _ = sent

        # The first try's Deferred is the pull's: a cancel sets the stop
        # flag, then reaches the try, or (once the try is answered and the
        # coroutine took over) the coroutine that first now waits on.
        def answered(response: IResponse) -> Union[PullResult, Deferred]:
            if not stop.cancelled and self._final(live, standby, response):
                return self._answered(live, primary, address, response, started)
            return self._run(live, req, stop, deadline, (*plan, (succeed(response), *sent[1:])))

        def failed(failure: Failure) -> Union[Failure, Deferred]:
            if stop.cancelled:
                return stop.trap(failure)  # (the try cut short counts against nothing)
            return self._run(live, req, stop, deadline, (*plan, (fail(failure), *sent[1:])))

        return before_cancel(first, stop.cancel).addCallbacks(answered, failed)

    def _run(self, live: LiveDomain, req: OriginRequest, stop: _Stop, deadline: float,
             resume: Optional[tuple]) -> "Deferred[PullResult]":
        # The stop flag is up before the coroutine's own canceller runs.
        return before_cancel(Deferred.fromCoroutine(self._pull(live, req, stop, deadline, resume)),
                             stop.cancel)

    def _plan(self, live: LiveDomain, req: OriginRequest) -> tuple:
        """(primary_down, standby, the primary's order, tries) of a pull, once its
        addresses are known (C{order} rotates the group: called once a pull)."""
        safe = req.method in SAFE_METHODS
        standby = live.standby if safe else None
        tries: list = []
        usable = live.primary.usable()
        primary_down = not usable  # (is_down)
        order = live.primary.order(include_blocked=standby is None, usable=usable)
        if not order and standby is not None:
            tries.append("primary: every address is blocked")
        return primary_down, standby, order, tries

    @staticmethod
    def _final(live: LiveDomain, standby: Optional[OriginGroup], response: IResponse) -> bool:
        """Whether the primary's answer is the client's, without asking the standby."""
        return standby is None or response.code not in live.config.failover_on

    async def _pull(self, live: LiveDomain, req: OriginRequest, stop: _Stop, deadline: float,
                    resume: Optional[tuple]) -> PullResult:
        """
        The chain.  C{resume}, when the pull began in L{pull}: its L{_plan},
        then the first try already sent there (or None).
        """
        safe = req.method in SAFE_METHODS
        timed_out = False
        first = None

        # -- primary ------------------------------------------------------
        if resume is None:
            for group in (live.primary, live.standby):  # (live.groups(), without its list)
                wait = _address_wait(group)
                if wait is not None:
                    await wait()
                    stop.check()
            primary_down, standby, order, tries = self._plan(live, req)
        else:
            primary_down, standby, order, tries, first = resume
        outcome = await self._try_group(live, live.primary, order, req, deadline, tries, safe, stop,
                                        first)
        if isinstance(outcome, PullResult):
            response = outcome.response
            if self._final(live, standby, response):
                return outcome
            primary_answer: Optional[Deferred] = read_whole(response, KEEP_PRIMARY_ANSWER)
            primary_result = outcome
            tries.append(f"primary {outcome.address}: HTTP {response.code}")
        else:
            primary_answer = None
            primary_result = None
            timed_out = outcome == "timeout"
            if standby is None:
                raise self._give_up(live, req, tries, timed_out)

        # -- standby ------------------------------------------------------
        self.log.info(
            "{domain}: failing over to standby for {method} {target}: {why}",
            domain=live.name,
            method=req.method.decode("ascii", "replace"),
            target=req.target.decode("ascii", "replace"),
            why=tries[-1] if tries else "primary failed",
        )
        if self.observer is not None:
            self.observer.failover(live.name)
        order = standby.order(include_blocked=primary_answer is None)
        try:
            outcome = await self._try_group(live, standby, order, req, deadline, tries, safe, stop)
        except BaseException:
            # Cancelled (the client left): the primary's answer is nobody's either.
            if primary_answer is not None:
                _drop(primary_answer)
            raise
        if isinstance(outcome, PullResult):
            if primary_answer is not None:
                _drop(primary_answer)
            return outcome
        timed_out = timed_out or outcome == "timeout"
        if primary_answer is not None and primary_result is not None:
            buffered = await primary_answer
            stop.check()  # (a cancelled read ends as "cut short", not as an error)
            if buffered is not None:
                primary_result.response = buffered
                return primary_result
        # Last resort: a primary that was skipped because it was down.
        if primary_down and primary_answer is None:
            order = live.primary.order(include_blocked=True)
            outcome = await self._try_group(live, live.primary, order, req, deadline, tries, safe,
                                            stop)
            if isinstance(outcome, PullResult):
                return outcome
        raise self._give_up(live, req, tries, timed_out)

    def _give_up(self, live: LiveDomain, req: OriginRequest, tries: list,
                 timed_out: bool) -> Exception:
        detail = "; ".join(tries) or "no origin address"
        self.log.warn(
            "{domain}: no origin answered {method} {target}: {detail}",
            domain=live.name,
            method=req.method.decode("ascii", "replace"),
            target=req.target.decode("ascii", "replace"),
            detail=detail,
        )
        if timed_out:
            return OriginTimeout(f"origin timed out: {detail}")
        return OriginUnavailable(f"no origin could be reached: {detail}")

    def _failed(self, live: LiveDomain, group: OriginGroup, state: AddressState,
                address: Address, outcome: str, detail: str, tries: list) -> None:
        """An attempt on C{address} failed: the metric, its count and last
        error, and the line for the client's 502/504 log."""
        self._observe(live, group, address, outcome, None)
        state.failures += 1
        state.last_error = (self.clock.seconds(), detail)
        tries.append(f"{group.role} {address}: {detail}")

    def _connect_failed(self, live: LiveDomain, group: OriginGroup, state: AddressState,
                        address: Address, detail: str, tries: list) -> None:
        self._failed(live, group, state, address, "connect_error", detail, tries)
        group.block(state, detail)

    def _send(self, live: LiveDomain, group: OriginGroup, state: AddressState,
              req: OriginRequest, deadline: float) -> Optional[tuple]:
        """
        Send one try to C{state}'s address: (its Deferred, when it started,
        the address, the server name), or None (and nothing done) when the
        time budget is used up.
        """
        now = self.clock.seconds()
        remaining = deadline - now
        if remaining <= 0:
            return None
        domain = live.config
        kind = group.kind
        scheme = kind.scheme(req.client_scheme)
        address = state.address.with_port(DEFAULT_PORTS[scheme])
        headers: Union[Headers, bytes]
        if scheme == "http" and _adds_host_only(kind):
            # No Headers made or copied: Host and the request's own lines.
            server_name = domain.origin_host or req.host
            target = req.target
            headers = b"Host: %s\r\n%s" % (host_field(server_name), req.header_lines())
        else:
            target, server_name, headers = kind.prepare(domain, req.method, req.target,
                                                        req.request_headers(), req.host, now)
        state.requests += 1
        d = self.client.request(
            address=address,
            scheme=scheme,
            server_name=server_name.split(":")[0],
            method=req.method,
            target=target,
            headers=headers,
            body=req.body() if req.body else None,
            connect_timeout=min(domain.connect_timeout, remaining),
            first_byte_timeout=min(domain.first_byte_timeout, remaining),
            verify=kind.verify,
            client_name=kind.sends_client_name(domain),
            on_interim=req.on_interim,
        )
        return d, now, address, server_name

    def _answered(self, live: LiveDomain, group: OriginGroup, address: Address,
                  response: IResponse, started: float) -> PullResult:
        """An address answered: the metric, and the result."""
        elapsed = self.clock.seconds() - started
        n = response.code // 100
        self._observe(live, group, address, _CLASSES.get(n) or f"{n}xx", elapsed)
        return PullResult(response, group.role, address, elapsed)

    async def _try_group(self, live: LiveDomain, group: OriginGroup,
                         order: list[AddressState], req: OriginRequest,
                         deadline: float, tries: list, safe: bool, stop: _Stop,
                         first: Optional[tuple] = None):
        """
        Try each address of C{order} at most once; none once C{stop} says
        the pull was cancelled (then C{CancelledError}, whatever the try in
        progress failed with).  C{first}: the try of C{order[0]}, sent
        already (L{_send}'s tuple, its Deferred fired).

        @return: a L{PullResult}, or C{"timeout"} / C{"unreachable"}.
        """
        kind = group.kind
        # A wildcard domain sends the client's own name as Host and TLS name:
        # what that name breaks is the request's problem, not the address's.
        client_name = kind.sends_client_name(live.config)
        for state in order:
            sent, first = first, None
            if sent is None:
                stop.check()
                sent = self._send(live, group, state, req, deadline)
                if sent is None:
                    tries.append("time budget used up")
                    return "timeout"
            d, started, address, server_name = sent
            try:
                response = await d.addErrback(stop.trap)
            except TLSFailed as e:
                if not client_name:
                    self._connect_failed(live, group, state, address, e.detail, tries)
                    continue
                self._observe(live, group, address, "tls_error", None)
                state.last_error = (self.clock.seconds(), f"{e.detail} (not blocked: "
                                    f"the name {server_name} was the client's)")
                tries.append(f"{group.role} {address}: {e.detail}")
                continue
            except ConnectFailed as e:
                self._connect_failed(live, group, state, address, e.detail, tries)
                continue
            except NoResponse as e:
                self._failed(live, group, state, address, "no_response", e.detail, tries)
                if not safe:
                    return "unreachable"
                continue
            except FirstByteTimeout as e:
                self._failed(live, group, state, address, "timeout", e.detail, tries)
                return "timeout"
            except CancelledError:
                raise
            except OriginError as e:  # pragma: no cover - every kind is above
                state.failures += 1
                tries.append(f"{group.role} {address}: {e.detail}")
                continue
            result = self._answered(live, group, address, response, started)
            if _finishes(kind):
                result.response = await kind.finish(response, live.name, address)
            stop.check()  # (only a bucket's 403 is read here: cancelling closed it)
            return result
        return "unreachable"


# The outcome of a try that got an answer, by the answer's status class.
_CLASSES = {n: f"{n}xx" for n in range(1, 6)}


def _address_wait(group: Optional[OriginGroup]) -> Optional[Callable[[], Deferred]]:
    """How to wait for a hostname origin's first DNS answer, when it is not in yet."""
    if group is not None and not group.has_addresses:
        return group.wait_for_addresses
    return None


def _adds_host_only(kind: OriginKind) -> bool:
    """Whether C{kind}'s try is the client's request with a Host (L{OriginKind.prepare} as is)."""
    return type(kind).prepare is OriginKind.prepare


def _finishes(kind: OriginKind) -> bool:
    """Whether C{kind} changes an answer (L{OriginKind.finish} is the identity)."""
    return type(kind).finish is not OriginKind.finish
