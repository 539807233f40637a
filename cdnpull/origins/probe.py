"""
Active health probes (docs/origins.md): one C{LoopingCall} per origin
address, on the injected clock.

Rules, all driven by the clock so that L{twisted.internet.task.Clock} tests
them:

 - every C{Probe.interval} s (each address starts at a random phase within
   the first tenth of the interval, so addresses are not probed in
   lockstep) an address that is not blocked gets C{HEAD Probe.path} with
   C{Probe.host}, else the origin Host (healthy: any status below 500) or,
   with C{kind="tcp"}, a bare connect;
 - a connect error, a timeout (C{Probe.timeout}) or a 5xx blocks the address
   for C{Probe.block_for} s, with the reason kept;
 - while an address is blocked the periodic probe leaves it alone; when the
   block expires a probe runs at once, and only a passing probe lets the
   address rejoin (a failing one blocks it again for C{block_for});
 - a probe that raises is logged and counts as a failed probe; the loop
   never stops;
 - L{ProbeManager.reconcile} follows the table: probes of removed addresses
   stop, new ones start, and L{ProbeManager.stop} leaves no timer behind.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Optional

from twisted.internet import error as ierror
from twisted.internet.defer import CancelledError, Deferred, TimeoutError as DeferredTimeout, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from ..config import DEFAULT_PORTS, Address, Probe
from ..errors import ConnectFailed, FirstByteTimeout, NoResponse
from .client import OriginClient, tcp_endpoint
from ..live import LiveDomain, LiveTable
from .group import AddressState, OriginGroup, ProbeResult
from ..stream import Discard

__all__ = ["ProbeTarget", "ProbeManager", "HTTPChecker", "JITTER"]

# The first probe of an address runs at a random point within this fraction
# of the interval; later ones keep that phase.
JITTER = 0.1


class ProbeFailed(Exception):
    """A probe's negative answer; the message is the reason kept."""


@dataclass(frozen=True)
class ProbeTarget:
    """Everything one probe needs to know about its address."""

    address: Address  # with its port resolved
    scheme: str  # "http" or "https"
    host: str  # the origin Host (and TLS server name)
    verify: bool
    probe: Probe


def probe_targets(live: LiveDomain, group: OriginGroup) -> list[tuple[AddressState, ProbeTarget]]:
    """The probe of every address of C{group}."""
    probe = live.config.probe
    if probe is None:
        return []
    kind = group.kind
    scheme = kind.scheme("http")
    host = kind.probe_host(live.config)
    verify = kind.verify
    return [
        (s, ProbeTarget(s.address.with_port(DEFAULT_PORTS[scheme]), scheme, host, verify, probe))
        for s in group.states
    ]


class HTTPChecker:
    """
    Runs one probe over the network: C{HEAD path} through the origin client,
    or a bare TCP connect.  Fires with a detail string when healthy, fails
    with L{ProbeFailed} (or anything else) when not.
    """

    def __init__(self, reactor: IReactorTime, client: OriginClient) -> None:
        self.reactor = reactor
        self.client = client

    def check(self, target: ProbeTarget) -> Deferred:
        probe = target.probe
        if probe.kind == "tcp":
            return self._connect(target)
        headers = Headers({b"host": [target.host.encode("idna")],
                           b"user-agent": [b"cdnpull-probe"]})
        d = self.client.request(
            address=target.address,
            scheme=target.scheme,
            server_name=target.host.split(":")[0],
            method=b"HEAD",
            target=probe.path.encode("utf-8"),
            headers=headers,
            connect_timeout=probe.timeout,
            first_byte_timeout=probe.timeout,
            verify=target.verify,
        )

        def answered(response):
            # HEAD has no body; make sure the connection goes back to the pool.
            response.deliverBody(Discard())
            if response.code >= 500:
                raise ProbeFailed(f"HTTP {response.code}")
            return f"HTTP {response.code}"

        def failed(f: Failure):
            if isinstance(f.value, (ConnectFailed, NoResponse)):
                raise ProbeFailed(f.value.detail)
            if f.check(FirstByteTimeout):
                raise ProbeFailed(f"timeout after {probe.timeout:g} s")
            return f

        return d.addCallbacks(answered, failed)

    def _connect(self, target: ProbeTarget) -> Deferred:
        endpoint = tcp_endpoint(self.reactor, target.address, target.probe.timeout)
        d = endpoint.connect(Factory.forProtocol(Protocol))

        def connected(proto):
            proto.transport.loseConnection()
            return "connected"

        def failed(f: Failure):
            if f.check(ierror.ConnectionRefusedError):
                raise ProbeFailed("connect refused")
            if f.check(ierror.TimeoutError):
                raise ProbeFailed(f"timeout after {target.probe.timeout:g} s")
            if f.check(ierror.ConnectError):
                raise ProbeFailed(f"connect failed: {f.getErrorMessage()}")
            return f

        return d.addCallbacks(connected, failed)


class _AddressProber:
    """The probe loop and block-expiry timer of one address."""

    log = Logger()

    def __init__(self, manager: "ProbeManager", group: OriginGroup,
                 state: AddressState, target: ProbeTarget) -> None:
        self.manager = manager
        self.group = group
        self.state = state
        self.target = target
        self.loop = LoopingCall(self.tick)
        self.loop.clock = manager.clock
        self._start_call: Any = None
        self._expiry_call: Any = None
        self._inflight: Optional[Deferred] = None
        self.stopped = False

    def start(self) -> None:
        interval = self.target.probe.interval
        phase = self.manager.rng.uniform(0, JITTER * interval)
        self._start_call = self.manager.clock.callLater(phase, self._begin)
        self.watch_block()

    def _begin(self) -> None:
        self._start_call = None
        self.loop.start(self.target.probe.interval, now=True)

    def stop(self) -> None:
        self.stopped = True
        for call in (self._start_call, self._expiry_call):
            if call is not None and call.active():
                call.cancel()
        self._start_call = self._expiry_call = None
        if self.loop.running:
            self.loop.stop()
        if self._inflight is not None:
            self._inflight.cancel()

    # -- probing ---------------------------------------------------------

    def tick(self) -> None:
        """The periodic probe: never raises, never overlaps itself."""
        now = self.manager.clock.seconds()
        if self.state.blocked_until is not None:
            # A blocked address is probed when its block expires.
            return
        self.run(now)

    def run(self, now: float) -> None:
        if self._inflight is not None or self.stopped:
            return
        probe = self.target.probe
        try:
            d = maybeDeferred(self.manager.checker.check, self.target)
            d.addTimeout(probe.timeout, self.manager.clock)
        except Exception:  # the checker itself blew up: a failed probe
            self._finished(Failure(), now)
            return
        self._inflight = d
        d.addBoth(self._finished, now)

    def _finished(self, result: Any, started: float) -> None:
        self._inflight = None
        if self.stopped:
            return
        clock = self.manager.clock
        now = clock.seconds()
        group, state = self.group, self.state
        if isinstance(result, Failure):
            if result.check(ProbeFailed):
                detail = str(result.value)
            elif result.check(CancelledError, DeferredTimeout, ierror.TimeoutError):
                detail = f"timeout after {self.target.probe.timeout:g} s"
            else:
                detail = f"probe error: {result.getErrorMessage()}"
                self.log.failure(
                    "probe of {address} for {domain} raised", result,
                    address=str(self.target.address), domain=group.domain,
                )
            state.last_probe = ProbeResult(now, False, detail)
            self.manager.record(group, state, False)
            group.block(state, detail, self.target.probe.block_for)
            return
        state.last_probe = ProbeResult(now, True, str(result))
        self.manager.record(group, state, True)
        if state.blocked_until is not None and state.blocked_until <= now:
            group.unblock(state)

    # -- block expiry ----------------------------------------------------

    def watch_block(self) -> None:
        """(Re)arm the timer that probes this address when its block ends."""
        if self._expiry_call is not None and self._expiry_call.active():
            self._expiry_call.cancel()
        self._expiry_call = None
        until = self.state.blocked_until
        if until is None or self.stopped:
            return
        clock = self.manager.clock
        delay = max(0.0, until - clock.seconds())
        self._expiry_call = clock.callLater(delay, self._expired)

    def _expired(self) -> None:
        self._expiry_call = None
        self.run(self.manager.clock.seconds())


class ProbeManager:
    """
    Every probe of the node, following the live table.

    @param checker: runs one probe (an L{HTTPChecker} in the node; tests
        give a scripted one on a fake clock).
    @param on_result: called with (group, state, ok) after every probe; the
        metrics hang here.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, checker: Any,
                 rng: Optional[random.Random] = None,
                 on_result: Optional[Callable[[OriginGroup, AddressState, bool], None]] = None) -> None:
        self.clock = clock
        self.checker = checker
        self.rng = rng or random.Random()
        self.on_result = on_result
        self._probers: dict = {}  # (id(group), address) -> _AddressProber
        self._groups: dict = {}  # id(group) -> group we listen to
        self._table: Optional[LiveTable] = None
        self.running = False

    def record(self, group: OriginGroup, state: AddressState, ok: bool) -> None:
        if self.on_result is not None:
            self.on_result(group, state, ok)

    @property
    def probers(self) -> dict:
        return dict(self._probers)

    def start(self, table: LiveTable) -> None:
        self.running = True
        self.reconcile(table)

    def stop(self) -> None:
        self.running = False
        for prober in self._probers.values():
            prober.stop()
        self._probers.clear()
        for group in self._groups.values():
            if self._on_group_event in group.listeners:
                group.listeners.remove(self._on_group_event)
        self._groups.clear()
        self._table = None

    def table_changed(self, old: Optional[LiveTable], new: LiveTable) -> None:
        """A L{cdnpull.service.Runtime} watcher."""
        if self.running:
            self.reconcile(new)

    def reconcile(self, table: LiveTable) -> None:
        """Start and stop probes so that they match C{table} exactly."""
        self._table = table
        wanted: dict = {}
        groups: dict = {}
        for live in table.domains.values():
            for group in live.groups():
                groups[id(group)] = group
                for state, target in probe_targets(live, group):
                    wanted[(id(group), state.address)] = (group, state, target)
        for key in list(self._probers):
            prober = self._probers[key]
            want = wanted.get(key)
            if want is None or want[1] is not prober.state or want[2] != prober.target:
                prober.stop()
                del self._probers[key]
        for key, (group, state, target) in wanted.items():
            if key not in self._probers:
                prober = _AddressProber(self, group, state, target)
                self._probers[key] = prober
                prober.start()
        for gid, group in list(self._groups.items()):
            if gid not in groups:
                if self._on_group_event in group.listeners:
                    group.listeners.remove(self._on_group_event)
                del self._groups[gid]
        for gid, group in groups.items():
            if gid not in self._groups:
                group.listeners.append(self._on_group_event)
                self._groups[gid] = group

    def _on_group_event(self, event: str, group: OriginGroup, state: AddressState) -> None:
        if not self.running:
            return
        if event == "blocked":
            prober = self._probers.get((id(group), state.address))
            if prober is not None and prober.state is state:
                prober.watch_block()
        elif event in ("removed", "present") and self._table is not None:
            self.reconcile(self._table)
