"""
C{python -m cdnpull check CONFIG}: validate a config module and print what it
declares, without starting anything.  C{python -m cdnpull ctl ...}: the admin
API from a shell (L{cdnpull.admin.ctl}).
"""

from __future__ import annotations

import argparse
import os
import sys

from .admin import ctl
from .config import ConfigError, is_tls_listen
from .loader import load_config
from .origins.kinds import kind_of


def describe_origin(origin: object) -> str:
    return kind_of(origin).describe()


_SOURCES = {"domain": "the domain", "certificates": "settings.certificates",
            "default_certificate": "settings.default_certificate"}


def describe_https(domain: object, certificates: object) -> str:
    cert, source = certificates.for_domain(domain)  # type: ignore[attr-defined]
    parts = [f"certificate {cert.spec.cert_file} ({', '.join(cert.names)}, from "
             f"{_SOURCES[source]}, expires {cert.not_after:%Y-%m-%d})"
             if cert is not None else "no certificate covers it"]
    if domain.https_only:  # type: ignore[attr-defined]
        parts.append("https only (plain http gets 301)")
    if domain.hsts:  # type: ignore[attr-defined]
        parts.append(f"hsts {domain.hsts}")  # type: ignore[attr-defined]
    return "; ".join(parts)


def check(path: str) -> int:
    try:
        loaded = load_config(path)
    except ConfigError as e:
        print(f"cdnpull: config error: {e}", file=sys.stderr)
        return 1
    config = loaded.config
    s = config.settings
    print(f"{path}: OK, {len(config.domains)} domain(s)")
    print(f"  listen: {', '.join(s.listen)}; admin: {s.admin or 'disabled'}; "
          f"state: {s.state_file}")
    for d in config.domains:
        print(f"  {d.name}")
        print(f"    primary: {describe_origin(d.origin)}")
        print(f"    standby: {describe_origin(d.standby) if d.standby else 'none'}")
        print(f"    origin Host: {kind_of(d.origin).host_description(d)}")
        probe = (f"{d.probe.kind} {d.probe.path} every {d.probe.interval:g}s, "
                 f"timeout {d.probe.timeout:g}s" if d.probe else "off")
        print(f"    probe: {probe}; block failing addresses for {d.block_for:g}s")
        print(f"    timeouts: connect {d.connect_timeout:g}s, first byte "
              f"{d.first_byte_timeout:g}s, whole request {d.total_timeout:g}s")
        if loaded.certificates or any(is_tls_listen(e) for e in s.listen):
            print(f"    https: {describe_https(d, loaded.certificates)}")
        for rule in d.cache:
            what = rule.prefix or ""
            if rule.suffixes:
                what += "*" + "|".join(rule.suffixes)
            print(f"    cache {what}: ttl {rule.ttl:g}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    # The `cdnpull` console script or `python -m cdnpull`.
    prog = "cdnpull" if os.path.basename(sys.argv[0]) == "cdnpull" else "python -m cdnpull"
    parser = argparse.ArgumentParser(prog=prog)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="validate a config module and print what it declares")
    p.add_argument("config")
    p = sub.add_parser("ctl", help="talk to a running node's admin API")
    ctl.build_parser(p)
    args = parser.parse_args(argv)
    if args.command == "check":
        return check(args.config)
    if args.command == "ctl":
        return ctl.main(args)
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
