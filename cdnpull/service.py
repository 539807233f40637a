"""
The running node: a C{MultiService} holding the client listeners, the live
routing table, probes, DNS and the admin API, and applying a new configuration
or a runtime change atomically.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from dataclasses import fields, replace
from typing import Any, Iterable, Optional

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IProtocolFactory,
    IReactorCore,
    IReactorFromThreads,
    IReactorThreads,
    IReactorTime,
)
from twisted.logger import Logger

from .accesslog import AccessLog
from .admin.api import MAX_BODY as ADMIN_MAX_BODY, AdminResource, read_token
from .cache import Cache, DiskStore, MemoryStore, Store
from .certs import CertificateSet, days_left_collector
from .certstore import CertificateStore, EdgeCertificates
from .compat import raise_listen_errors
from .config import Config, ConfigError, Domain, is_tls_listen, parse_size
from .admin.control import Control
from .edge import Edge, EdgeSite
from .http import ClientLimits
from .origins.client import OriginClient
from .live import LiveTable, Routes, build_table
from .loader import LoadedConfig, load_config
from .metrics import Metrics
from .admin.state import StateFile
from .origins.dns import DNSManager, make_resolver
from .origins.tls import TLSPolicy
from .origins.probe import HTTPChecker, ProbeManager
from .failover import FailoverChain
from .admin.stats import Stats
from .http2 import h2_connection_factory
from .tlsserver import H2, HTTP11, ByALPN, SNIServer, server_endpoint

__all__ = ["Runtime", "CdnService", "build_service"]

# Settings a SIGHUP applies (the others wait for a restart).
RELOADED_SETTINGS = ("certificates", "default_certificate")


class Runtime:
    """
    The node's long-lived parts, each made once by L{build_service} and
    passed in here (and to the constructors that need them): the routing
    table holder, the origin client and failover chain, DNS, probes, the
    cache, metrics, stats, the access log and the edge certificates.
    L{apply} swaps in a new table.
    """

    log = Logger()

    def __init__(self, reactor: IReactorTime, config: Config, routes: Routes,
                 client: OriginClient, puller: FailoverChain, dns: DNSManager, probes: ProbeManager,
                 cache: Cache, metrics: Metrics, access_log: AccessLog, stats: Stats,
                 edge_certificates: EdgeCertificates, certificates: CertificateSet,
                 rng: Optional[random.Random] = None) -> None:
        self.reactor = reactor
        self.config = config
        self.routes = routes
        self.client = client
        self.puller = puller
        self.dns = dns
        self.probes = probes
        self.cache = cache
        self.metrics = metrics
        self.access_log = access_log
        self.rng = rng or random.Random()
        self.stats = stats
        self.edge_certificates = edge_certificates
        # The edge certificates served (cdnpull.certs), replaced whole on
        # SIGHUP: the config module's, with the ones replaced through the
        # admin API on top (cdnpull.certstore).
        self.certificates = certificates
        # Resolvers and probes follow the table (resolvers first: they fill
        # the addresses that probes watch).
        routes.subscribe(dns.table_changed)
        routes.subscribe(probes.table_changed)

    @property
    def table(self) -> LiveTable:
        return self.routes.current

    def start(self) -> None:
        self.dns.start(self.table)
        self.probes.start(self.table)
        if self.stats is not None:
            self.stats.start()

    def stop(self) -> Deferred:
        if self.stats is not None:
            self.stats.stop()
        self.probes.stop()
        self.dns.stop()
        return self.client.close()

    def apply(self, domains: Iterable[Domain], bases: Optional[dict] = None) -> LiveTable:
        """Swap in a new table built from C{domains} (already validated)."""
        new = build_table(domains, self.reactor, previous=self.table, bases=bases, rng=self.rng)
        self._label_certificates(new)
        self.routes.swap(new)
        return new

    def set_certificates(self, certificates: CertificateSet) -> None:
        self.certificates = certificates
        self._label_certificates(self.table)

    def _label_certificates(self, table: LiveTable) -> None:
        for live in table.domains.values():
            live.certificate = self.certificates.for_domain(live.config)


DRAIN_CHECK = 0.05  # seconds between looks at the answers left on the way down


class Listener(StreamServerEndpointService):
    """
    A listening port that, when it cannot bind, says so in one line and ends
    the process with status 1 (no traceback for a port already in use).
    """

    def __init__(self, description: str, reactor: IReactorCore, factory: IProtocolFactory,
                 tls: Optional[SNIServer] = None) -> None:
        super().__init__(server_endpoint(reactor, description, tls), factory)
        self.description = description
        raise_listen_errors(self)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            reason = getattr(e.socketError, "strerror", None) or str(e.socketError)
            sys.stderr.write(f"cdnpull: cannot listen on {self.description}: {reason}\n")
            raise SystemExit(1)


class CdnService(MultiService):
    """
    The node.  On start it re-applies the state file's runtime changes and
    starts resolvers and probes; on SIGHUP it re-imports the config module.
    """

    log = Logger()

    def __init__(self, runtime: Runtime, loaded: Optional[LoadedConfig] = None,
                 control: Optional[Control] = None, disk: Optional[DiskStore] = None) -> None:
        super().__init__()
        self.runtime = runtime
        self.loaded = loaded
        self.control = control
        # Checked and indexed once the node listens.
        self.disk = disk
        self._old_sighup: Any = None
        # The certificates of tls: listeners, when there are any.
        self.tls: Optional[SNIServer] = None
        # The client-facing sites, drained on the way down (within grace seconds).
        self.sites: list = []
        self.grace = 0.0

    def startService(self) -> None:
        self.runtime.start()
        super().startService()
        if self.disk is not None:
            # The node listens already; the disk cache is checked and indexed
            # in the background (a key not indexed yet is looked up directly).
            self.disk.load()
        if self.loaded is not None and hasattr(signal, "SIGHUP"):
            reactor = IReactorFromThreads(self.runtime.reactor)
            self._old_sighup = signal.signal(
                signal.SIGHUP, lambda *_: reactor.callFromThread(self.reload))

    def stopService(self) -> Deferred:
        if self._old_sighup is not None:
            signal.signal(signal.SIGHUP, self._old_sighup)
            self._old_sighup = None
        d = maybeDeferred(super().stopService)  # the listeners close
        d.addBoth(lambda _: self._drain())
        d.addBoth(lambda _: self.runtime.stop())

        def close_log(result: object) -> object:
            self.runtime.access_log.close()
            return result

        d.addBoth(close_log)
        return d

    def _drain(self) -> Deferred:
        """
        Let the answers in progress finish (within C{shutdown_grace}) before
        the origin connections close: a stop loses no request that had
        started, and sends none of them to the standby because its origin
        connection was closed under it.
        """
        done: Deferred = Deferred()
        sites = self.sites
        clock = self.runtime.reactor
        deadline = clock.seconds() + self.grace

        def check() -> None:
            busy = sum(site.drain() for site in sites)
            if not busy:
                done.callback(None)
            elif clock.seconds() >= deadline:
                self.log.warn("stopping with {n} answers still in progress after {t:g} s",
                              n=busy, t=self.grace)
                done.callback(None)
            else:
                clock.callLater(DRAIN_CHECK, check)

        check()
        return done

    def reload(self) -> Deferred:
        """
        Re-import the config module and apply it like an admin change.  An
        invalid module is logged and the running config stays.
        """
        assert self.loaded is not None and self.control is not None
        path = self.loaded.path
        self.log.info("SIGHUP: reloading {path}", path=path)
        access_log = self.runtime.access_log
        try:
            access_log.reopen()
        except OSError as e:
            self.log.error("could not reopen the access log {path}: {why}",
                           path=access_log.path, why=str(e))
        try:
            new = load_config(path, **(self.loaded.overrides or {}))
        except ConfigError as e:
            self.log.error("reload of {path} refused, the running config stays: {error}",
                           path=path, error=str(e))
            return succeed(None)
        old_settings = self.runtime.config.settings
        changed = [f.name for f in fields(old_settings)
                   if getattr(old_settings, f.name) != getattr(new.config.settings, f.name)
                   and f.name not in RELOADED_SETTINGS]
        if changed:
            self.log.warn("reload: settings {fields} changed; they take effect at the next "
                          "restart", fields=", ".join(changed))
        d = self.control.reload(new.config)

        def done(_: Any) -> None:
            # Certificates are read again even when their paths did not
            # change (renewed in place): new handshakes use them.
            self.runtime.edge_certificates.reload(new.config, new.certificates)
            self.log.info("reloaded {path}: {n} domains", path=path,
                          n=len(self.runtime.table.domains))

        def failed(f: Any) -> None:
            self.log.failure("reload of {path} failed, the running config stays", f, path=path)

        return d.addCallbacks(done, failed)


def build_service(loaded: LoadedConfig, reactor: IReactorTime,
                  rng: Optional[random.Random] = None) -> CdnService:
    """
    Everything C{twistd cdnpull} runs, built from a validated config and an
    explicit reactor (the only place it comes from is L{cdnpull.tap}).

    @raise ConfigError: the admin token file cannot be used.
    """
    config = loaded.config
    settings = config.settings
    rng = rng or random.Random()
    threads = IReactorThreads(reactor)
    run_in_thread = lambda f, *a: deferToThreadPool(threads, threads.getThreadPool(), f, *a)  # noqa: E731
    routes = Routes(build_table(config.domains, reactor, rng=rng))
    # Certificates and stats are told of things only once the node runs, when
    # the runtime and the service below exist.
    runtime: Optional[Runtime] = None
    service: Optional[CdnService] = None

    def serve_certificates(certificates: CertificateSet) -> None:
        assert runtime is not None
        runtime.set_certificates(certificates)
        if service is not None and service.tls is not None:
            service.tls.update(certificates)

    edge_certificates = EdgeCertificates(
        config, routes,
        CertificateStore(f"{settings.state_file}.certs" if settings.state_file else None),
        serve_certificates, run_in_thread, reactor)
    certificates = edge_certificates.start(config, loaded.certificates)
    disk = None
    if settings.cache_dir:
        try:
            os.makedirs(settings.cache_dir, mode=0o700, exist_ok=True)
            if not os.access(settings.cache_dir, os.W_OK | os.X_OK):
                raise PermissionError("not writable")
        except OSError as e:
            raise ConfigError(f"settings.cache_dir: cannot use {settings.cache_dir}: "
                              f"{e.strerror or e}") from None
        disk = DiskStore(settings.cache_dir, parse_size(settings.cache_disk), run_in_thread)
    store = Store(MemoryStore(parse_size(settings.cache_memory)), disk,
                  max_variants=settings.max_variants)
    stats = Stats(reactor, lambda: routes.current, lambda: cache)
    metrics = Metrics(lambda: routes.current, reactor, store=store, stats=stats)
    metrics.registry.register(days_left_collector(
        lambda: runtime.certificates if runtime is not None else certificates, reactor))
    client = OriginClient(reactor, TLSPolicy(settings.origin_ca_file),
                          max_per_origin=settings.max_connections_per_origin)
    puller = FailoverChain(client, reactor, observer=metrics)
    cache = Cache(store, puller, reactor, parse_size(settings.cache_max_object),
                  float(settings.stale_if_error),
                  tuple(n.lower().encode("ascii") for n in settings.targeted_cache_control))
    dns = DNSManager(reactor, make_resolver(reactor, settings.nameservers))
    probes = ProbeManager(reactor, HTTPChecker(reactor, client), rng=rng, on_result=metrics.probe)
    access_log = AccessLog(settings.access_log, reactor)
    runtime = Runtime(
        reactor, config, routes, client, puller, dns, probes, cache, metrics, access_log,
        stats, edge_certificates, certificates, rng)
    control = Control(runtime, StateFile(settings.state_file),
                      write=run_in_thread)
    control.restore()
    service = CdnService(runtime, loaded, control, disk)
    edge = Edge(routes, cache, puller, reactor, access_log, metrics)
    limits = ClientLimits(
        max_request_line=settings.client_max_request_line,
        max_header_line=settings.client_max_header_line,
        max_header_bytes=settings.client_max_header_bytes,
        max_headers=settings.client_max_headers,
        max_body=parse_size(settings.client_max_body),
        header_timeout=float(settings.client_header_timeout),
        idle_timeout=float(settings.client_idle_timeout),
        send_timeout=float(settings.client_send_timeout),
    )
    site = EdgeSite(edge, limits=limits, reactor=reactor)
    service.sites.append(site)
    service.grace = float(settings.shutdown_grace)
    tls_site = None
    if any(is_tls_listen(d) for d in settings.listen):
        service.tls = SNIServer(runtime.certificates, protocols=(H2, HTTP11))
        tls_site = ByALPN(site, reactor, limits.header_timeout,
                          h2=h2_connection_factory(site, limits, reactor))
    for description in settings.listen:
        factory: IProtocolFactory = site
        if is_tls_listen(description) and tls_site is not None:
            factory = tls_site
        Listener(description, IReactorCore(reactor), factory, service.tls).setServiceParent(service)
    if settings.admin:
        try:
            token = read_token(settings.admin_token_file)
        except (OSError, ValueError) as e:
            raise ConfigError(f"settings.admin_token_file: {e}") from None
        admin = AdminResource(runtime, control, metrics, reactor, token,
                              hosts=settings.admin_hosts)
        # The client side's connection, limits and timeouts; bodies of at
        # most 1 MiB (JSON calls).
        admin_site = EdgeSite(admin, limits=replace(limits, max_body=ADMIN_MAX_BODY),
                              reactor=reactor)
        admin_site.noisy = False
        Listener(settings.admin, IReactorCore(reactor), admin_site).setServiceParent(service)
    if loaded.services is not None:
        extra = loaded.services(reactor)
        for s in _as_list(extra):
            IService(s).setServiceParent(service)
    return service


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]
