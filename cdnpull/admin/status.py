"""
The node's live state as plain data: the shapes of docs/admin-api.md, read
straight from the live table (the only copy of the state), for the admin API,
the console and anyone else who wants to look.
"""

from __future__ import annotations

from typing import Optional

from ..certs import https_json
from ..config import DEFAULT_PORTS
from ..live import LiveDomain, LiveTable
from ..origins.dns import DNSManager
from ..origins.group import AddressState, OriginGroup
from .state import origin_to_json

__all__ = ["address_json", "group_json", "domain_json", "table_json"]


def address_json(state: AddressState, now: float, default_port: int) -> dict:
    probe = state.last_probe
    return {
        "address": state.address.host,
        "port": state.address.port or default_port,
        "state": state.state(now),
        "blocked_until": state.blocked_until if state.state(now) == "blocked" else None,
        "reason": state.block_reason if state.state(now) == "blocked" else None,
        "last_probe": None if probe is None else {"at": probe.at, "ok": probe.ok,
                                                  "detail": probe.detail},
        "last_error": None if state.last_error is None else {"at": state.last_error[0],
                                                             "detail": state.last_error[1]},
        "requests": state.requests,
        "failures": state.failures,
        "blocks": state.blocks,
    }


def group_json(group: Optional[OriginGroup], now: float, dns: Optional[DNSManager] = None) -> Optional[dict]:
    if group is None:
        return None
    out = group.kind.status_json()
    default_port = DEFAULT_PORTS.get(out.get("scheme", "http"), 80)
    out["role"] = group.role
    out["down"] = group.is_down()
    out["addresses"] = [address_json(s, now, default_port) for s in group.states]
    watcher = dns.watcher_of(group) if dns is not None else None
    if watcher is not None:
        out["dns"] = {"name": watcher.name, "resolved_at": watcher.resolved_at,
                      "next_at": watcher.next_at, "last_error": watcher.last_error}
    return out


def domain_json(live: LiveDomain, now: float, dns: Optional[DNSManager] = None) -> dict:
    out = {
        "name": live.name,
        "origin": group_json(live.primary, now, dns),
        "standby": group_json(live.standby, now, dns),
        "overridden": live.overridden,
        "origin_host": live.config.origin_host,
        "probe": None if live.config.probe is None else {
            "path": live.config.probe.path, "interval": live.config.probe.interval,
            "timeout": live.config.probe.timeout, "block_for": live.config.probe.block_for,
            "kind": live.config.probe.kind, "host": live.config.probe.host},
        "forward_headers": list(live.config.forward_headers),
        "https": https_json(live, now),
    }
    if live.overridden:
        out["module"] = {"origin": origin_to_json(live.base.origin),
                         "standby": origin_to_json(live.base.standby)}
    return out


def table_json(table: LiveTable, now: float, dns: Optional[DNSManager] = None) -> dict:
    return {"domains": [domain_json(d, now, dns) for d in
                        sorted(table.domains.values(), key=lambda d: d.name)]}
