"""
C{python -m cdnpull check CONFIG}: validate a config module and print what it
declares, without starting anything.
"""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError
from .loader import load_config
from .origins.kinds import kind_of


def describe_origin(origin: object) -> str:
    return kind_of(origin).describe()


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
        for rule in d.cache:
            what = rule.prefix or ""
            if rule.suffixes:
                what += "*" + "|".join(rule.suffixes)
            print(f"    cache {what}: ttl {rule.ttl:g}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cdnpull")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="validate a config module and print what it declares")
    p.add_argument("config")
    args = parser.parse_args(argv)
    if args.command == "check":
        return check(args.config)
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
