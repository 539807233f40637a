"""
Changing a running node: runtime origin changes from the admin API and
reloads of the config module (SIGHUP).  Every change goes through one path:

    validate (the config's own rules) -> write the state file -> swap the table

so that an accepted change is on disk before anyone is told it happened, and
requests in flight finish on the origins they started with (the table is
swapped in one assignment; probes and resolvers follow it).

Changes are serialised by a lock: two concurrent API calls cannot interleave
their writes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger

from ..config import Config, Domain
from ..live import LiveDomain
from .state import (BadRequest, Override, StateFile, apply_override, check_domain,
                        effective_domains, origin_from_json, warn_http_signing)

if TYPE_CHECKING:
    from ..service import Runtime

__all__ = ["Control", "UnknownDomain"]


class UnknownDomain(KeyError):
    pass


class Control:
    """
    @param runtime: the L{cdnpull.service.Runtime} whose table changes.
    @param write: runs C{state_file.write(payload)} off the reactor thread,
        returning a Deferred (tests may run it inline).
    """

    log = Logger()

    def __init__(self, runtime: Runtime, state_file: StateFile,
                 write: Callable[[Callable[[], None]], Deferred]) -> None:
        self.runtime = runtime
        self.state_file = state_file
        self._write = write
        self._lock = DeferredLock()
        self.bases: dict[str, Domain] = {d.name: d for d in runtime.config.domains}
        self.overrides: dict[str, Override] = {}

    # -- start-up --------------------------------------------------------

    def restore(self) -> None:
        """Re-apply the changes kept in the state file (synchronously, at start)."""
        self.overrides = self.state_file.load(self.bases, self.credentials)
        for name in self.overrides:
            warn_http_signing(apply_override(self.bases[name], self.overrides[name]), self.log)
        if self.overrides:
            self.log.info("re-applied runtime changes for {domains} from {path}",
                          domains=", ".join(sorted(self.overrides)), path=self.state_file.path)
        self._apply()

    def _apply(self) -> None:
        domains = effective_domains(self.bases.values(), self.overrides)
        self.runtime.apply(domains, bases=dict(self.bases))

    @property
    def credentials(self) -> dict:
        """The keys a runtime change may name (Settings.credentials; fixed until a restart)."""
        return self.runtime.config.settings.credentials

    # -- changes -----------------------------------------------------------

    def live(self, name: str) -> LiveDomain:
        live = self.runtime.table.domains.get(name)
        if live is None:
            raise UnknownDomain(name)
        return live

    def set_origin(self, name: str, data: Any) -> Deferred:
        return self._change(name, lambda cur: Override(
            origin_from_json(data, "origin", self.credentials), cur.standby))

    def set_standby(self, name: str, data: Any) -> Deferred:
        return self._change(name, lambda cur: Override(
            cur.origin, origin_from_json(data, "standby", self.credentials)))

    def delete_standby(self, name: str) -> Deferred:
        return self._change(name, lambda cur: Override(cur.origin, None))

    def switch(self, name: str) -> Deferred:
        def swap(cur: Override) -> Override:
            if cur.standby is None:
                raise BadRequest("standby: this domain has no standby to switch to")
            return Override(cur.standby, cur.origin)
        return self._change(name, swap)

    def restore_module(self, name: str) -> Deferred:
        return self._change(name, lambda cur: None)

    def _change(self, name: str, make: Callable[[Override], Optional[Override]]) -> Deferred:
        """
        Fires with the domain's new L{LiveDomain}; fails with L{BadRequest}
        or L{UnknownDomain} having changed nothing.
        """
        async def run() -> Any:
            await self._lock.acquire()
            try:
                base = self.bases.get(name)
                if base is None:
                    raise UnknownDomain(name)
                current = self.live(name).config
                override = make(Override(current.origin, current.standby))
                if override is not None:
                    changed = apply_override(base, override)
                    check_domain(changed)
                    warn_http_signing(changed, self.log)
                    if override == Override(base.origin, base.standby):
                        override = None  # back to what the module says
                new = dict(self.overrides)
                if override is None:
                    new.pop(name, None)
                else:
                    new[name] = override
                payload = self.state_file.dumps(new)
                await self._write(lambda: self.state_file.write(payload))
                self.overrides = new
                self._apply()
                self.log.info("runtime change to {domain} applied: origin={origin} standby={standby}",
                              domain=name, origin=repr(self.live(name).config.origin),
                              standby=repr(self.live(name).config.standby))
                return self.live(name)
            finally:
                self._lock.release()

        return Deferred.fromCoroutine(run())

    # -- reload --------------------------------------------------------------

    def reload(self, config: Config) -> Deferred:
        """A new config module: new bases, overrides kept where they still fit."""
        async def run() -> None:
            await self._lock.acquire()
            try:
                bases = {d.name: d for d in config.domains}
                kept = {}
                for name, override in self.overrides.items():
                    if name not in bases:
                        self.log.warn("reload: dropping the runtime change of {domain}: the "
                                      "config module no longer declares it", domain=name)
                        continue
                    try:
                        check_domain(apply_override(bases[name], override))
                    except BadRequest as e:
                        self.log.warn("reload: dropping the runtime change of {domain}: {why}",
                                      domain=name, why=str(e))
                        continue
                    kept[name] = override
                if kept != self.overrides:
                    payload = self.state_file.dumps(kept)
                    await self._write(lambda: self.state_file.write(payload))
                self.bases, self.overrides = bases, kept
                self.runtime.config = Config(settings=self.runtime.config.settings,
                                             domains=config.domains)
                self._apply()
            finally:
                self._lock.release()

        return Deferred.fromCoroutine(run())
