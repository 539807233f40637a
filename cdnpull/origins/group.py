"""
An origin group (a domain's primary or its standby): its addresses, their live
state, round-robin rotation and the block list (docs/origins.md).

Time is read from the injected clock only, so that every rule here can be
driven by L{twisted.internet.task.Clock} in tests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..config import Address, IPOrigin
from .kinds import OriginKind, kind_of

__all__ = ["ProbeResult", "AddressState", "OriginGroup"]


@dataclass(frozen=True)
class ProbeResult:
    at: float
    ok: bool
    detail: str


class AddressState:
    """
    The live state of one origin address.  The admin API and metrics read
    these objects directly; nobody keeps a copy.
    """

    def __init__(self, address: Address) -> None:
        self.address = address
        self.blocked_until: Optional[float] = None
        self.block_reason: Optional[str] = None
        # With active probing a block ends only when a probe passes; without
        # it the block simply expires.
        self.needs_probe = False
        self.last_probe: Optional[ProbeResult] = None
        # (time, detail) of the last failed try of a client request.
        self.last_error: Optional[tuple] = None
        self.requests = 0
        self.failures = 0
        self.blocks = 0

    def usable(self, now: float) -> bool:
        if self.blocked_until is None:
            return True
        return self.blocked_until <= now and not self.needs_probe

    def state(self, now: float) -> str:
        return "up" if self.usable(now) else "blocked"

    def __repr__(self) -> str:
        return f"<AddressState {self.address} until={self.blocked_until}>"


class OriginGroup:
    """
    The addresses of one origin group, rotated round-robin over the usable
    ones from a random start.

    @ivar role: C{"primary"} or C{"standby"}.
    @ivar probing: whether active probes decide when a block ends.
    """

    log = Logger()

    def __init__(
        self,
        role: str,
        addresses: Iterable[Address],
        clock: IReactorTime,
        block_for: float,
        rng: Optional[random.Random] = None,
        probing: bool = False,
        domain: str = "",
        origin: object = None,
    ) -> None:
        self.role = role
        self.domain = domain
        # The config object this group was built from, and its adapter (the
        # only thing anyone asks about the origin's kind).
        self.origin = origin
        self.kind: OriginKind = kind_of(origin if origin is not None else IPOrigin())
        self.clock = clock
        self.block_for = block_for
        self.probing = probing
        self._rng = rng or random.Random()
        self._states: list[AddressState] = [AddressState(a) for a in addresses]
        self._next = self._rng.randrange(1 << 30)
        # Called with (group, state) whenever an address becomes blocked or
        # when the address list changes; the prober listens.
        self.listeners: list[Callable[[str, "OriginGroup", AddressState], None]] = []
        # Set by the DNS watcher of a hostname origin: returns a Deferred that
        # fires once the first answer (or failure) is in.
        self.wait_for_addresses: Optional[Callable[[], "Deferred[None]"]] = None

    # -- addresses -------------------------------------------------------

    @property
    def states(self) -> Sequence[AddressState]:
        return tuple(self._states)

    @property
    def has_addresses(self) -> bool:
        """Whether any address is known (a hostname's first DNS answer may not be in yet)."""
        return bool(self._states)

    def state_of(self, address: Address) -> Optional[AddressState]:
        for s in self._states:
            if s.address == address:
                return s
        return None

    def set_addresses(self, addresses: Iterable[Address]) -> None:
        """
        Replace the address list (a DNS answer changed), keeping the state of
        addresses that remain.
        """
        old = {s.address: s for s in self._states}
        new = []
        for a in addresses:
            kept = old.pop(a, None)
            new.append(kept if kept is not None else AddressState(a))
        self._states = new
        for gone in old.values():
            self._notify("removed", gone)
        for s in new:
            self._notify("present", s)

    # -- rotation --------------------------------------------------------

    def usable(self) -> list[AddressState]:
        now = self.clock.seconds()
        return [s for s in self._states if s.usable(now)]

    def is_down(self) -> bool:
        """Every address is blocked (or there is none)."""
        return not self.usable()

    def order(self, include_blocked: bool = False,
              usable: Optional[list[AddressState]] = None) -> list[AddressState]:
        """
        The addresses to try for one request, in order: the usable ones
        rotated by one position per call.  With C{include_blocked} and no
        usable address, every address is returned (rotated) instead, for a
        group that must be tried even though it is down.  C{usable}: what
        L{usable} just said, when the caller asked it already.
        """
        candidates = self.usable() if usable is None else usable
        if not candidates and include_blocked:
            candidates = list(self._states)
        if not candidates:
            return []
        start = self._next % len(candidates)
        self._next += 1
        return candidates[start:] + candidates[:start]

    # -- blocking --------------------------------------------------------

    def block(self, state: AddressState, reason: str, duration: Optional[float] = None) -> None:
        """
        Block C{state} for C{duration} (default: the group's C{block_for})
        seconds from now, keeping the reason.
        """
        now = self.clock.seconds()
        was_usable = state.usable(now)
        state.blocked_until = now + (self.block_for if duration is None else duration)
        state.block_reason = reason
        state.needs_probe = self.probing
        state.blocks += 1 if was_usable else 0
        if was_usable:
            self.log.warn(
                "blocked {role} origin {address} of {domain} for {duration}s: {reason}",
                role=self.role,
                address=str(state.address),
                domain=self.domain,
                duration=state.blocked_until - now,
                reason=reason,
            )
        self._notify("blocked", state)

    def unblock(self, state: AddressState) -> None:
        if state.blocked_until is not None:
            self.log.info(
                "{role} origin {address} of {domain} is up again",
                role=self.role,
                address=str(state.address),
                domain=self.domain,
            )
        state.blocked_until = None
        state.block_reason = None
        state.needs_probe = False

    def _notify(self, event: str, state: AddressState) -> None:
        for listener in list(self.listeners):
            listener(event, self, state)
