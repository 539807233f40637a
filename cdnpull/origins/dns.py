"""
Hostname origins (C{DomainOrigin}, and bucket endpoints given by name): the
name is resolved with C{twisted.names} (A and AAAA, never a blocking
C{getaddrinfo} on the reactor thread), re-resolved when the answer's TTL
expires, and every address joins the group's rotation, probes and block list.

Rules:

 - the TTL is clamped to [L{MIN_TTL}, L{MAX_TTL}] seconds;
 - a failed resolution keeps the last good answer (logged) for at most
   L{KEEP_STALE} seconds and retries every L{RETRY} seconds;
 - requests that arrive before the first answer wait for it (bounded by the
   resolver's own timeouts) instead of failing at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Sequence

from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.names import client, dns, hosts, resolve
from twisted.python.failure import Failure

from ..compat import stop_rereading_resolv_conf
from ..config import Address, parse_address
from .group import OriginGroup

if TYPE_CHECKING:
    from ..live import LiveTable

__all__ = ["make_resolver", "NameWatcher", "DNSManager", "MIN_TTL", "MAX_TTL", "RETRY", "KEEP_STALE"]

MIN_TTL = 5.0
MAX_TTL = 3600.0
RETRY = 5.0
KEEP_STALE = 3600.0
# Query timeouts (seconds) for each try, per server: short, because a
# request may be waiting for the first answer.
QUERY_TIMEOUT = (1, 3)


class SystemResolver:
    """/etc/hosts then the servers of /etc/resolv.conf, with no cache layer."""

    def __init__(self, reactor: Any) -> None:
        self._client = client.Resolver(resolv="/etc/resolv.conf", reactor=reactor)
        self._chain = resolve.ResolverChain([hosts.Resolver(), self._client])

    def lookupAddress(self, name: str, timeout: Any = None) -> Deferred:
        return self._chain.lookupAddress(name, timeout)

    def lookupIPV6Address(self, name: str, timeout: Any = None) -> Deferred:
        return self._chain.lookupIPV6Address(name, timeout)

    def close(self) -> None:
        # client.Resolver re-reads resolv.conf on a timer of its own.
        stop_rereading_resolv_conf(self._client)


class ServersResolver:
    """The servers of C{Settings.nameservers}, nothing else."""

    def __init__(self, reactor: Any, servers: Sequence[str]) -> None:
        addresses = [parse_address(s, 53) for s in servers]
        self._client = client.Resolver(servers=[(a.host, a.port) for a in addresses],
                                       reactor=reactor)

    def lookupAddress(self, name: str, timeout: Any = None) -> Deferred:
        return self._client.lookupAddress(name, timeout)

    def lookupIPV6Address(self, name: str, timeout: Any = None) -> Deferred:
        return self._client.lookupIPV6Address(name, timeout)

    def close(self) -> None:
        pass


class LazyResolver:
    """Builds the real resolver at its first query: a node with no hostname
    origin never reads /etc/resolv.conf nor keeps its re-read timer."""

    def __init__(self, reactor: Any, nameservers: Sequence[str] = ()) -> None:
        self._reactor = reactor
        self._nameservers = tuple(nameservers)
        self._real: Any = None

    def _get(self) -> Any:
        if self._real is None:
            self._real = (ServersResolver(self._reactor, self._nameservers) if self._nameservers
                          else SystemResolver(self._reactor))
        return self._real

    def lookupAddress(self, name: str, timeout: Any = None) -> Deferred:
        return self._get().lookupAddress(name, timeout)

    def lookupIPV6Address(self, name: str, timeout: Any = None) -> Deferred:
        return self._get().lookupIPV6Address(name, timeout)

    def close(self) -> None:
        if self._real is not None:
            self._real.close()


def make_resolver(reactor: Any, nameservers: Sequence[str] = ()) -> Any:
    return LazyResolver(reactor, nameservers)


def _records(result: Any, kind: int) -> tuple[list[str], Optional[float]]:
    answers, _authority, _additional = result
    ips, ttls = [], []
    for rr in answers:
        if rr.type == kind:
            ips.append(rr.payload.dottedQuad() if kind == dns.A else
                       _ipv6(rr.payload.address))
            ttls.append(rr.ttl)
    return ips, (min(ttls) if ttls else None)


def _ipv6(packed: bytes) -> str:
    import socket

    return socket.inet_ntop(socket.AF_INET6, packed)


class NameWatcher:
    """Keeps one group's addresses equal to what its name resolves to."""

    log = Logger()

    def __init__(self, group: OriginGroup, name: str, port: int, resolver: Any,
                 clock: IReactorTime) -> None:
        self.group = group
        self.name = name
        self.port = port
        self.resolver = resolver
        self.clock = clock
        self.resolved_at: Optional[float] = None
        self.last_error: Optional[str] = None
        self.next_at: Optional[float] = None
        self._call: Any = None
        self._inflight: Optional[Deferred] = None
        self._waiters: list[Deferred] = []
        self._answered = False
        self.stopped = False

    # -- the group asks: wait until the first answer (or failure) --------

    def wait(self) -> Deferred:
        if self._answered or self.stopped:
            return succeed(None)
        d: Deferred = Deferred(lambda d: self._waiters.remove(d) if d in self._waiters else None)
        self._waiters.append(d)
        return d

    def _release(self) -> None:
        self._answered = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    # -- resolving ---------------------------------------------------------

    def start(self) -> None:
        self.group.wait_for_addresses = self.wait
        self.resolve()

    def stop(self) -> None:
        self.stopped = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._inflight is not None:
            self._inflight.cancel()
        if self.group.wait_for_addresses == self.wait:
            self.group.wait_for_addresses = None
        self._release()

    def resolve(self) -> None:
        self._call = None
        if self.stopped or self._inflight is not None:
            return
        v4 = self.resolver.lookupAddress(self.name, QUERY_TIMEOUT)
        v6 = self.resolver.lookupIPV6Address(self.name, QUERY_TIMEOUT)
        d = DeferredList([v4, v6], consumeErrors=True)
        self._inflight = d
        d.addCallback(self._answered_with)
        d.addErrback(self._failed_internally)

    def _schedule(self, delay: float) -> None:
        if self.stopped:
            return
        self.next_at = self.clock.seconds() + delay
        self._call = self.clock.callLater(delay, self.resolve)

    def _answered_with(self, results: list) -> None:
        self._inflight = None
        if self.stopped:
            return
        ips: list[str] = []
        ttls: list[float] = []
        errors: list[str] = []
        for (ok, value), kind in zip(results, (dns.A, dns.AAAA)):
            if ok:
                found, ttl = _records(value, kind)
                ips += found
                if ttl is not None:
                    ttls.append(ttl)
            elif isinstance(value, Failure):
                if value.check(CancelledError):
                    return
                errors.append(_describe(value))
        now = self.clock.seconds()
        if ips:
            addresses = [Address(ip, self.port) for ip in dict.fromkeys(ips)]
            if [s.address for s in self.group.states] != addresses:
                self.log.info("{name} resolves to {addresses}", name=self.name,
                              addresses=", ".join(map(str, addresses)))
            self.group.set_addresses(addresses)
            self.resolved_at = now
            self.last_error = None
            ttl = min(max(min(ttls), MIN_TTL), MAX_TTL) if ttls else MIN_TTL
            self._release()
            self._schedule(ttl)
            return
        self._failure(errors[0] if errors else "no A or AAAA record")

    def _failure(self, why: str) -> None:
        now = self.clock.seconds()
        self.last_error = why
        if self.resolved_at is not None and now - self.resolved_at <= KEEP_STALE and self.group.states:
            self.log.warn("resolving {name} failed ({why}); keeping the last answer of "
                          "{age:.0f} s ago", name=self.name, why=why, age=now - self.resolved_at)
        else:
            if self.group.states:
                self.log.error("resolving {name} failed ({why}); the last answer is older than "
                               "{limit:.0f} s and is dropped", name=self.name, why=why,
                               limit=KEEP_STALE)
                self.group.set_addresses([])
            else:
                self.log.error("resolving {name} failed: {why}", name=self.name, why=why)
        self._release()
        self._schedule(RETRY)

    def _failed_internally(self, f: Failure) -> None:
        self._inflight = None
        if self.stopped:
            return
        self.log.failure("resolving {name} raised", f, name=self.name)
        self._failure(f"resolver error: {f.getErrorMessage()}")


def _describe(f: Failure) -> str:
    from twisted.internet.defer import TimeoutError as DeferredTimeout
    from twisted.names import error as nerror

    if f.check(nerror.DNSNameError):
        return "no such name (NXDOMAIN)"
    if f.check(nerror.DNSServerError):
        return "server failure (SERVFAIL)"
    if f.check(nerror.DNSQueryTimeoutError, DeferredTimeout):
        return "DNS timeout"
    return f.getErrorMessage()


class DNSManager:
    """A L{NameWatcher} for every group that needs one, following the table."""

    def __init__(self, clock: IReactorTime, resolver: Any) -> None:
        self.clock = clock
        self.resolver = resolver
        self.watchers: dict = {}  # id(group) -> NameWatcher
        self.running = False

    def start(self, table: LiveTable) -> None:
        self.running = True
        self.reconcile(table)

    def table_changed(self, old: LiveTable, new: LiveTable) -> None:
        if self.running:
            self.reconcile(new)

    def reconcile(self, table: LiveTable) -> None:
        wanted = {}
        for group in table.groups():
            name = group.kind.resolve_name()
            if name is not None:
                wanted[id(group)] = (group, name, group.kind.port)
        for gid in list(self.watchers):
            if gid not in wanted:
                self.watchers.pop(gid).stop()
        for gid, (group, name, port) in wanted.items():
            if gid not in self.watchers:
                watcher = NameWatcher(group, name, port, self.resolver, self.clock)
                self.watchers[gid] = watcher
                watcher.start()

    def watcher_of(self, group: OriginGroup) -> Optional[NameWatcher]:
        return self.watchers.get(id(group))

    def stop(self) -> None:
        self.running = False
        for w in self.watchers.values():
            w.stop()
        self.watchers.clear()
        self.resolver.close()
