"""
C{python -m cdnpull ctl ...}: the admin API from a shell, with treq.

The admin endpoint comes from C{--admin} or C{CDNPULL_ADMIN} (default
C{http://127.0.0.1:8081}; C{host:port} is enough), the token file from
C{--token-file} or C{CDNPULL_TOKEN_FILE}.  An error (from the API, the
network or the token file) is one line on stderr and exit status 1; a usage
error is argparse's, status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Optional, TextIO
from urllib.parse import quote

__all__ = ["main", "sparkline"]

DEFAULT_ADMIN = "http://127.0.0.1:8081"
TIMEOUT = 15.0
BARS = "▁▂▃▄▅▆▇█"


class CtlError(Exception):
    """One line for the operator."""


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--admin", default=None, metavar="URL",
                        help=f"admin API (env CDNPULL_ADMIN; default {DEFAULT_ADMIN})")
    parser.add_argument("--token-file", default=None, metavar="PATH",
                        help="file holding the admin token (env CDNPULL_TOKEN_FILE)")
    parser.add_argument("--timeout", type=float, default=TIMEOUT, metavar="SECONDS",
                        help=f"give up on an admin API that does not answer (default {TIMEOUT:g})")
    sub = parser.add_subparsers(dest="action", required=True, metavar="COMMAND")
    sub.add_parser("status", help="domains, origin groups, addresses, states and block reasons")
    for name, what in (("switch", "swap primary and standby"),
                       ("drop-standby", "remove the standby"),
                       ("restore", "drop runtime changes: back to the config module")):
        p = sub.add_parser(name, help=what)
        p.add_argument("domain")
    for name, what in (("set-origin", "replace the primary"),
                       ("set-standby", "add or replace the standby")):
        p = sub.add_parser(name, help=f"{what}: IP addresses, --host NAME or --json BODY")
        p.add_argument("domain")
        p.add_argument("addresses", nargs="*", metavar="ADDRESS",
                       help="IP or IP:PORT (an IP origin)")
        p.add_argument("--host", help="a hostname origin instead of IP addresses")
        p.add_argument("--port", type=int, default=0, help="origin port (0: the scheme's)")
        p.add_argument("--scheme", default="http", choices=("http", "https", "follow"))
        p.add_argument("--no-verify", action="store_true",
                       help="do not verify the origin's certificate (https)")
        p.add_argument("--json", dest="body", metavar="BODY",
                       help="the API's JSON origin object as it is (e.g. a bucket)")
    p = sub.add_parser("purge", help="drop cached copies of full URLs (or URL prefixes)")
    p.add_argument("urls", nargs="+", metavar="URL")
    p.add_argument("--prefix", action="store_true", help="the URLs are prefixes")
    p = sub.add_parser("stats", help="the last 15 minutes of a domain, as sparklines")
    p.add_argument("domain")


def origin_body(args: argparse.Namespace) -> dict:
    if args.body is not None:
        if args.addresses or args.host:
            raise CtlError("--json: give the origin either as --json or by its fields, not both")
        try:
            given: dict = json.loads(args.body)
        except ValueError as e:
            raise CtlError(f"--json: not valid JSON ({e})") from None
        return given
    if bool(args.addresses) == bool(args.host):
        raise CtlError(f"{args.action}: give IP addresses or --host NAME (one of them)")
    body: dict = {"port": args.port, "scheme": args.scheme, "verify": not args.no_verify}
    if args.host:
        body.update(type="domain", host=args.host)
    else:
        body.update(type="ips", addresses=list(args.addresses))
    return body


# -- output -------------------------------------------------------------------


def table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n")


def _clock(t: Optional[float]) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if t else "-"


def print_status(data: dict, out: TextIO) -> None:
    rows = [["DOMAIN", "GROUP", "ADDRESS", "STATE", "UNTIL", "REASON", "REQUESTS", "FAILURES"]]
    for d in data["domains"]:
        name = d["name"] + (" (changed)" if d.get("overridden") else "")
        for role, group in (("primary", d.get("origin")), ("standby", d.get("standby"))):
            if group is None:
                continue
            label = role + (" (down)" if group.get("down") else "")
            if not group["addresses"]:
                rows.append([name, label, "(no address yet)", "-", "-", "", "", ""])
            for a in group["addresses"]:
                rows.append([name, label, f"{a['address']}:{a['port']}", a["state"],
                             _clock(a.get("blocked_until")), a.get("reason") or "-",
                             str(a.get("requests", "")), str(a.get("failures", ""))])
                name = label = ""
            name = ""
    table(rows, out)


def describe_group(group: Optional[dict]) -> str:
    if group is None:
        return "none"
    if group["type"] == "ips":
        where = ", ".join(f"{a['address']}:{a['port']}" for a in group["addresses"])
    elif group["type"] == "domain":
        where = group["host"]
    else:
        where = f"bucket {group['bucket']} at {group['endpoint']}"
    return f"{where} ({group['scheme']})"


def print_domain(d: dict, out: TextIO) -> None:
    out.write(f"{d['name']}: primary {describe_group(d['origin'])}; "
              f"standby {describe_group(d['standby'])}"
              f"{'; changed at runtime' if d.get('overridden') else ''}\n")


def sparkline(values: list, top: Optional[float] = None) -> str:
    """Eight-level bars; a missing sample is a space."""
    numbers = [v for v in values if isinstance(v, (int, float))]
    high = top if top is not None else (max(numbers) if numbers else 0)
    out = []
    for v in values:
        if not isinstance(v, (int, float)):
            out.append(" ")
        elif high <= 0:
            out.append(BARS[0])
        else:
            out.append(BARS[min(len(BARS) - 1, int(math.floor(v / high * (len(BARS) - 1) + 0.5)))])
    return "".join(out)


def squeeze(values: list, per: int) -> list:
    """Mean of every C{per} samples (None when all of them are None)."""
    out = []
    for i in range(0, len(values), per):
        numbers = [v for v in values[i:i + per] if isinstance(v, (int, float))]
        out.append(sum(numbers) / len(numbers) if numbers else None)
    return out


def _last(values: list, unit: str, scale: float = 1.0, digits: int = 1) -> str:
    for v in reversed(values):
        if isinstance(v, (int, float)):
            return f"{v * scale:.{digits}f}{unit}"
    return "-"


def _peak(values: list, unit: str, scale: float = 1.0, digits: int = 1) -> str:
    numbers = [v for v in values if isinstance(v, (int, float))]
    return f"{max(numbers) * scale:.{digits}f}{unit}" if numbers else "-"


def print_stats(data: dict, out: TextIO, width: int = 60) -> None:
    if not data["domains"]:
        raise CtlError("no statistics for this domain yet")
    d = data["domains"][0]
    n = len(data["times"])
    per = max(1, math.ceil(n / width))  # samples per bar: the whole window fits
    span = n * data["interval"]
    span_text = f"{span / 60:.0f} min" if span >= 120 else f"{span:.0f} s"
    out.write(f"{d['name']}: last {span_text}, one bar per {per * data['interval']:g} s; "
              f"figures: last, peak\n")
    cut = lambda v: squeeze(v, per)  # noqa: E731
    rows = [
        ("requests/s", d["requests"], None, "", 1.0, 2),
        ("hit ratio", d["hit_ratio"], 1.0, "%", 100.0, 0),
        ("origin errors", d["origin_errors"], None, "", 1.0, 0),
        ("failovers", d["failovers"], None, "", 1.0, 0),
        ("origin ms", d["origin_latency_ms"], None, "", 1.0, 1),
    ]
    for label, values, top, unit, scale, digits in rows:
        out.write(f"  {label:<14} {sparkline(cut(values), top)}  "
                  f"{_last(values, unit, scale, digits)}, {_peak(values, unit, scale, digits)}\n")
    for a in d["addresses"]:
        group = a["group"] or "gone"
        blocked = "".join("█" if b is not None and b > 0 else ("·" if b == 0 else " ")
                          for b in cut(a["blocked"]))
        out.write(f"  {a['address']} ({group})\n")
        out.write(f"    {'requests/s':<12} {sparkline(cut(a['requests']))}  "
                  f"{_last(a['requests'], '', 1.0, 2)}\n")
        out.write(f"    {'errors':<12} {sparkline(cut(a['errors']))}  "
                  f"{_last(a['errors'], '', 1.0, 0)}\n")
        out.write(f"    {'blocked':<12} {blocked}\n")
        for b in a["blocks"]:
            until = _clock(b["until"]) if b["until"] else "now"
            reason = f" ({b['reason']})" if b.get("reason") else ""
            out.write(f"      blocked {_clock(b['from'])} - {until}{reason}\n")
    cache = data["cache"]
    out.write(f"  {'cache MiB':<14} {sparkline(cut(cache['bytes']))}  "
              f"{_last(cache['bytes'], '', 1 / 1048576, 1)}\n")
    out.write(f"  {'cache objects':<14} {sparkline(cut(cache['objects']))}  "
              f"{_last(cache['objects'], '', 1.0, 0)}\n")


# -- the calls ----------------------------------------------------------------


def admin_url(value: Optional[str]) -> str:
    url = value or os.environ.get("CDNPULL_ADMIN") or DEFAULT_ADMIN
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def read_token(path: Optional[str]) -> Optional[str]:
    path = path or os.environ.get("CDNPULL_TOKEN_FILE") or None
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    except OSError as e:
        raise CtlError(f"token file {path}: {e.strerror or e}") from None
    if not token:
        raise CtlError(f"token file {path} is empty")
    return token


async def _call(reactor: Any, base: str, token: Optional[str], method: str, path: str,
                body: Any = None, timeout: float = TIMEOUT) -> Any:
    import treq
    from twisted.internet.defer import CancelledError
    from twisted.internet.error import ConnectError, DNSLookupError, TimeoutError
    from twisted.web.client import Agent, HTTPConnectionPool, ResponseFailed

    headers: dict[str | bytes, str | bytes] = {"Accept": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if method != "GET":
        # The admin takes changes only as JSON (415 otherwise), bodiless ones too.
        headers["Content-Type"] = "application/json"
    if body is not None:
        data = json.dumps(body).encode("utf-8")
    pool = HTTPConnectionPool(reactor, persistent=False)
    agent: Any = Agent(reactor, pool=pool)
    client = treq.client.HTTPClient(agent)
    try:
        response = await client.request(method, base + path, headers=headers, data=data,
                                         timeout=timeout)
        content = await response.content()
    except (CancelledError, TimeoutError):
        raise CtlError(f"no answer from the admin API at {base} within {timeout:g} s") from None
    except ResponseFailed as e:
        if any(r.check(CancelledError) for r in e.reasons):
            raise CtlError(f"no answer from the admin API at {base} within {timeout:g} s") from None
        raise CtlError(f"cannot reach the admin API at {base}: {_short(e.reasons[0].value)}") from None
    except (ConnectError, DNSLookupError) as e:
        raise CtlError(f"cannot reach the admin API at {base}: {_short(e)}") from None
    try:
        decoded = json.loads(content)
    except ValueError:
        decoded = None
    if response.code >= 400:
        message = decoded.get("error") if isinstance(decoded, dict) else None
        raise CtlError(f"{method} {path}: HTTP {response.code}: "
                       f"{message or content[:200].decode('utf-8', 'replace').strip()}")
    if decoded is None:
        raise CtlError(f"{method} {path}: the answer is not JSON")
    return decoded


def _short(error: Any) -> str:
    text = str(error).strip().rstrip(".")
    for marker in ("Connection refused", "timed out", "No route to host"):
        if marker.lower() in text.lower():
            return marker
    return text.splitlines()[0] if text else type(error).__name__


async def run(reactor: Any, args: argparse.Namespace, out: TextIO) -> None:
    base = admin_url(args.admin)
    token = read_token(args.token_file)
    a = args.action

    def call(method: str, path: str, body: Any = None) -> Any:
        return _call(reactor, base, token, method, path, body, args.timeout)

    def domain_path(suffix: str = "") -> str:
        return f"/api/domains/{quote(args.domain, safe='')}{suffix}"

    if a == "status":
        print_status(await call("GET", "/api/domains"), out)
    elif a == "switch":
        print_domain(await call("POST", domain_path("/switch")), out)
    elif a in ("set-origin", "set-standby"):
        which = "/origin" if a == "set-origin" else "/standby"
        body = origin_body(args)
        print_domain(await call("PUT", domain_path(which), body), out)
    elif a == "drop-standby":
        print_domain(await call("DELETE", domain_path("/standby")), out)
    elif a == "restore":
        print_domain(await call("DELETE", domain_path("/override")), out)
    elif a == "purge":
        key = "prefixes" if args.prefix else "urls"
        result = await call("POST", "/api/purge", {key: args.urls})
        out.write(f"purged {result.get('purged', 0)} cached object(s)\n")
    elif a == "stats":
        path = f"/api/stats?domain={quote(args.domain, safe='')}"
        print_stats(await call("GET", path), out)


def main(args: argparse.Namespace) -> int:
    """Run one command on the global reactor (this is a program's entry point)."""
    from twisted.internet import defer, task

    status = {"code": 0}

    def go(reactor: Any) -> Any:
        d = defer.Deferred.fromCoroutine(run(reactor, args, sys.stdout))

        def failed(f: Any) -> None:
            if f.check(CtlError):
                sys.stderr.write(f"cdnpull ctl: {f.value}\n")
            else:
                sys.stderr.write(f"cdnpull ctl: {f.getErrorMessage() or f.type.__name__}\n")
            status["code"] = 1

        return d.addErrback(failed)

    try:
        task.react(go)
    except SystemExit as e:
        if e.code:
            return int(e.code)
    return status["code"]
