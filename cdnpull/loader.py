"""
Load a config module file: run it, collect C{domains} and C{settings}, and
validate them.  Every failure becomes one L{ConfigError} line; no traceback
reaches the user.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass, field as dataclass_field
from types import ModuleType
from typing import Any, Callable, Optional

from twisted.logger import Logger

from .certs import CertificateSet, load_certificates
from .config import Config, ConfigError, Settings, validate
from .admin.state import warn_http_signing

log = Logger()

__all__ = ["LoadedConfig", "load_config"]


@dataclass(frozen=True)
class LoadedConfig:
    """
    A validated config and the optional C{services(reactor)} hook the module
    declared (the demo uses it to start its sample origins).
    """

    config: Config
    path: str
    services: Optional[Callable[[Any], Any]] = None
    # The Settings fields the command line replaced: a reload applies them again.
    overrides: Any = None
    # The edge certificates, read and checked (cdnpull.certs).
    certificates: CertificateSet = dataclass_field(default_factory=CertificateSet)


_counter = [0]


def _where(exc: BaseException, path: str) -> str:
    """C{site.py:12} for the innermost frame of the config file."""
    if isinstance(exc, SyntaxError) and exc.lineno:
        return f"{os.path.basename(path)}:{exc.lineno}"
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if os.path.abspath(frame.filename) == os.path.abspath(path):
            line = frame.lineno
    return f"{os.path.basename(path)}:{line}" if line else os.path.basename(path)


def _run_module(path: str) -> ModuleType:
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such config file")
    _counter[0] += 1
    name = f"cdnpull_site_{_counter[0]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    # The directory of the config is importable, so a site can split its
    # config over several files.
    directory = os.path.dirname(os.path.abspath(path))
    added = directory not in sys.path
    if added:
        sys.path.insert(0, directory)
    try:
        spec.loader.exec_module(module)
    except ConfigError:
        raise
    except SyntaxError as e:
        raise ConfigError(f"{_where(e, path)}: syntax error: {e.msg}") from None
    except (Exception, SystemExit) as e:
        # SystemExit too: a config module that calls sys.exit() must not end
        # a running node on SIGHUP.
        raise ConfigError(f"{_where(e, path)}: {type(e).__name__}: {e}") from None
    finally:
        if added:
            sys.path.remove(directory)
    return module


def _warn_unverified(config: Config) -> None:
    for d in config.domains:
        for field, origin in (("origin", d.origin), ("standby", d.standby)):
            if origin is not None and getattr(origin, "verify", True) is False:
                log.warn("{domain}: {field}: verify=False: origin certificates are NOT "
                         "checked (anyone on the path can impersonate this origin)",
                         domain=d.name, field=field)


def load_config(path: str, **overrides: Any) -> LoadedConfig:
    """
    Run the config module at C{path} and validate it.

    @param overrides: L{Settings} fields to replace (from the command line).
    @raise ConfigError: one line naming the domain and field of each problem.
    """
    module = _run_module(path)
    if not hasattr(module, "domains"):
        raise ConfigError(f"{os.path.basename(path)}: must define 'domains', a list of Domain")
    settings = getattr(module, "settings", Settings())
    if isinstance(settings, Settings):
        settings = settings.override(**overrides)
    services = getattr(module, "services", None)
    if services is not None and not callable(services):
        raise ConfigError(f"{os.path.basename(path)}: 'services' must be a function of the reactor")
    config = validate(module.domains, settings)
    _warn_unverified(config)
    for d in config.domains:
        warn_http_signing(d, log)
    certificates, warnings = load_certificates(config)
    for warning in warnings:
        log.warn("{warning}", warning=warning)
    return LoadedConfig(config=config, path=os.path.abspath(path), services=services,
                        overrides=dict(overrides), certificates=certificates)
