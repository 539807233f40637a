"""
Edge certificates replaced at runtime through the admin API
(C{PUT /api/domains/{name}/certificate} with the PEM in JSON).

A replaced certificate is checked like one in the config module (it parses,
the key matches, it has not expired, it covers the domain's name), written
next to the state file (C{<state file>.certs/<domain>.pem} and C{.key}:
files C{0600} in a C{0700} directory, through unpredictable temporary
names created exclusively, then renamed), and applied to new handshakes at
once.  It takes the place of the domain's C{certificate} from the module
until it is deleted (C{DELETE}); it is kept across restarts and reloads,
and one that no longer passes the checks at start or reload (expired, the
domain gone) is ignored with an error in the log.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger

from .certs import CertificateSet, names_text, parse_certificate, read_certificate
from .config import Certificate, Config, ConfigError
from .files import write_private_atomically
from .admin.control import UnknownDomain
from .live import Routes
from .admin.state import BadRequest

__all__ = ["CertificateStore", "EdgeCertificates"]

MAX_PEM = 64 * 1024


class CertificateStore:
    """The files of replaced certificates (no Twisted here: it runs in threads)."""

    def __init__(self, directory: Optional[str]) -> None:
        self.directory = directory

    def paths(self, name: str) -> tuple[str, str]:
        assert self.directory is not None
        # Domain names are LDH labels (and "*." first): "_." cannot clash.
        base = os.path.join(self.directory, name.replace("*", "_"))
        return base + ".pem", base + ".key"

    def stored(self, names: Any) -> dict:
        """Domain name -> Certificate, for the C{names} that have files."""
        out: dict = {}
        if self.directory is None or not os.path.isdir(self.directory):
            return out
        for name in names:
            cert_file, key_file = self.paths(name)
            if os.path.isfile(cert_file) and os.path.isfile(key_file):
                out[name] = Certificate(cert_file, key_file)
        return out

    def write(self, name: str, cert_pem: bytes, key_pem: bytes) -> None:
        assert self.directory is not None
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        os.chmod(self.directory, 0o700)
        for path, data in zip(self.paths(name), (cert_pem, key_pem)):
            write_private_atomically(path, data, prefix=".tmp-")

    def remove(self, name: str) -> None:
        for path in self.paths(name):
            if os.path.exists(path):
                os.unlink(path)
        self._sync_directory()

    def _sync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)  # type: ignore[arg-type]
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class EdgeCertificates:
    """
    The node's edge certificates: the config module's, with the ones
    replaced through the admin API on top.

    @param apply: called with each new L{CertificateSet} (it updates the
        runtime and the tls: listeners).
    @param write: runs a function in a thread, returning a Deferred.
    """

    log = Logger()

    def __init__(self, config: Config, routes: Routes, store: CertificateStore,
                 apply: Callable[[CertificateSet], None],
                 write: Callable[[Callable[[], None]], Deferred], clock: Any) -> None:
        self.routes = routes
        self.store = store
        self._apply = apply
        self._write = write
        self.clock = clock
        self._lock = DeferredLock()
        self._config: Config = config
        self._module = CertificateSet()

    def effective(self, config: Config, module: CertificateSet) -> CertificateSet:
        """
        The certificates to serve for C{config} (whose own files make
        C{module}): stored replacements that still pass the checks replace
        the module's certificate of their domain.
        """
        stored = self.store.stored(d.name for d in config.domains)
        if not stored:
            return module
        now = self.clock.seconds()
        usable = {}
        for name, spec in stored.items():
            try:
                cert = read_certificate(spec, f"{name}: certificate (set through the API)", now)
            except ConfigError as e:
                self.log.error("{problem}; the config module's certificate is used",
                               problem=str(e))
                continue
            if not cert.covers_domain(name):
                self.log.error("{domain}: certificate (set through the API) does not cover it "
                               "({names}); the config module's certificate is used",
                               domain=name, names=names_text(cert))
                continue
            usable[name] = cert
        if not usable:
            return module
        # The module's certificates as loaded, with the ones just read on top.
        certificates = CertificateSet({**module.own, **usable}, module.shared, module.default)
        certificates.replaced = frozenset(usable)
        return certificates

    def start(self, config: Config, module: CertificateSet) -> CertificateSet:
        """The certificates to serve at start (the config module as loaded)."""
        self._config, self._module = config, module
        return self.effective(config, module)

    def reload(self, config: Config, module: CertificateSet) -> None:
        """A reloaded config module (its settings too): serve its certificates."""
        self._config, self._module = config, module
        self.refresh()

    def refresh(self) -> None:
        """Apply the module's certificates (as last loaded) plus the stored ones."""
        self._apply(self.effective(self._config, self._module))

    # -- the admin API -------------------------------------------------------

    def set(self, name: str, body: Any) -> Deferred:
        async def run() -> Any:
            await self._lock.acquire()
            try:
                live = self._live(name)
                if self.store.directory is None:
                    raise BadRequest("certificate: changes need a state file (--state)")
                cert_pem, key_pem = _pem_fields(body)
                spec = Certificate(*self.store.paths(name))
                try:
                    cert = parse_certificate(cert_pem, key_pem, spec, "certificate",
                                             self.clock.seconds(), fields=("cert_pem", "key_pem"),
                                             names=("cert_pem", "key_pem"))
                except ConfigError as e:
                    raise BadRequest(str(e)) from None
                if not cert.covers_domain(live.name):
                    raise BadRequest(f"certificate.cert_pem: does not cover {live.name} "
                                     f"({names_text(cert)})")
                await self._write(lambda: self.store.write(live.name, cert_pem, key_pem))
                self.refresh()
                self.log.info("{domain}: certificate replaced through the API ({names}, "
                              "expires {expiry})", domain=live.name, names=", ".join(cert.names),
                              expiry=f"{cert.not_after:%Y-%m-%d}")
                return self._live(name)
            finally:
                self._lock.release()

        return Deferred.fromCoroutine(run())

    def remove(self, name: str) -> Deferred:
        async def run() -> Any:
            await self._lock.acquire()
            try:
                live = self._live(name)
                if self.store.directory is not None:
                    await self._write(lambda: self.store.remove(live.name))
                self.refresh()
                self.log.info("{domain}: certificate set through the API removed",
                              domain=live.name)
                return self._live(name)
            finally:
                self._lock.release()

        return Deferred.fromCoroutine(run())

    def _live(self, name: str) -> Any:
        live = self.routes.current.domains.get(name)
        if live is None:
            raise UnknownDomain(name)
        return live


def _pem_fields(body: Any) -> tuple[bytes, bytes]:
    if not isinstance(body, dict) or set(body) != {"cert_pem", "key_pem"}:
        raise BadRequest('body: must be {"cert_pem": "<PEM chain>", "key_pem": "<PEM key>"}')
    out = []
    for field in ("cert_pem", "key_pem"):
        value = body[field]
        if not isinstance(value, str) or not value.strip():
            raise BadRequest(f"certificate.{field}: must be a PEM text")
        if len(value) > MAX_PEM:
            raise BadRequest(f"certificate.{field}: longer than {MAX_PEM} characters")
        try:
            out.append(value.encode("ascii"))
        except UnicodeEncodeError:
            raise BadRequest(f"certificate.{field}: PEM is ASCII text") from None
    return out[0], out[1]
