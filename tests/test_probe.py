"""Active probes on a fake clock (docs/origins.md)."""

from __future__ import annotations

import random

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from cdnpull.config import Domain, IPOrigin, Probe
from cdnpull.live import build_table
from cdnpull.origins.probe import JITTER, ProbeFailed, ProbeManager

PROBE = Probe(path="/health", interval=5.0, timeout=2.0, block_for=60.0)


class Checker:
    """Answers probes from a script: address host -> "ok" | "fail" | "raise" | "hang"."""

    def __init__(self) -> None:
        self.script: dict = {}
        self.calls: list = []

    def check(self, target):  # type: ignore[no-untyped-def]
        self.calls.append((target.address.host, target))
        what = self.script.get(target.address.host, "ok")
        if what == "ok":
            return succeed("HTTP 200")
        if what == "fail":
            return fail(ProbeFailed("HTTP 503"))
        if what == "raise":
            raise RuntimeError("checker bug")
        return Deferred()  # hang

    def count(self, host):  # type: ignore[no-untyped-def]
        return sum(1 for h, _ in self.calls if h == host)


def make(domains=None, seed=3):  # type: ignore[no-untyped-def]
    clock = Clock()
    checker = Checker()
    domains = domains or [Domain("www.test.com",
                                 origin=IPOrigin(["127.0.0.2", "127.0.0.3"], port=8001),
                                 standby=IPOrigin(["127.0.0.4"], port=8001), probe=PROBE)]
    table = build_table(domains, clock, rng=random.Random(seed))
    manager = ProbeManager(clock, checker, rng=random.Random(seed))
    manager.start(table)
    return clock, checker, table, manager


def state(table, host):  # type: ignore[no-untyped-def]
    for g in table.groups():
        for s in g.states:
            if s.address.host == host:
                return g, s
    raise KeyError(host)


def test_every_address_of_primary_and_standby_is_probed_each_interval():
    clock, checker, table, manager = make()
    clock.advance(JITTER * 5.0)
    assert {h for h, _ in checker.calls} == {"127.0.0.2", "127.0.0.3", "127.0.0.4"}
    for _ in range(4):
        clock.advance(5.0)
    assert all(checker.count(h) == 5 for h in ("127.0.0.2", "127.0.0.3", "127.0.0.4"))
    _, target = checker.calls[0]
    assert target.host == "www.test.com" and target.probe.path == "/health"
    assert target.address.port == 8001
    manager.stop()
    assert clock.getDelayedCalls() == []


def test_first_probe_jitter_stays_within_bounds_and_spreads():
    phases = set()
    for seed in range(30):
        clock, checker, table, manager = make(seed=seed)
        calls = clock.getDelayedCalls()
        assert len(calls) == 3
        for c in calls:
            assert 0 <= c.getTime() <= JITTER * 5.0
            phases.add(round(c.getTime(), 6))
        manager.stop()
        assert clock.getDelayedCalls() == []
    assert len(phases) > 30  # not in lockstep


def test_a_failing_probe_blocks_for_exactly_block_for_then_rejoins_only_after_a_pass():
    clock, checker, table, manager = make()
    checker.script["127.0.0.2"] = "fail"
    clock.advance(JITTER * 5.0)
    g, s = state(table, "127.0.0.2")
    t0 = s.last_probe.at
    assert s.blocked_until == t0 + 60.0
    assert s.block_reason == "HTTP 503"
    assert s.last_probe.ok is False and s.last_probe.detail == "HTTP 503"
    assert s not in g.usable()
    # Periodic probes leave a blocked address alone until the block ends.
    calls = checker.count("127.0.0.2")
    clock.advance(59.0)
    assert checker.count("127.0.0.2") == calls
    # Still failing when the block ends: blocked again, never usable.
    clock.advance(60.0 - 59.0 - (clock.seconds() - t0 - 59.0))
    assert clock.seconds() == t0 + 60.0
    assert checker.count("127.0.0.2") == calls + 1
    assert s.blocked_until == t0 + 120.0
    assert s not in g.usable()
    # Healthy again: time alone does not bring it back...
    checker.script["127.0.0.2"] = "ok"
    clock.advance(59.99)
    assert s not in g.usable()
    # ...the probe at the block's end does.
    clock.advance(0.01)
    assert s in g.usable()
    assert s.blocked_until is None and s.block_reason is None
    manager.stop()
    assert clock.getDelayedCalls() == []


def test_expired_block_with_failing_probe_never_gets_a_client_request():
    clock, checker, table, manager = make()
    checker.script["127.0.0.3"] = "hang"
    g, s = state(table, "127.0.0.3")
    g.block(s, "connect refused")  # a passive block from a real request
    clock.advance(60.0)  # block ends; the probe at that moment hangs
    assert s not in g.usable()
    assert all(st.address.host != "127.0.0.3" for st in g.order())
    clock.advance(2.0)  # the probe times out: blocked again
    assert s.block_reason == "timeout after 2 s"
    assert s.blocked_until == clock.seconds() + 60.0
    manager.stop()
    assert clock.getDelayedCalls() == []


def test_a_probe_that_raises_is_a_failed_probe_and_the_loop_keeps_running():
    clock, checker, table, manager = make()
    checker.script["127.0.0.4"] = "raise"
    clock.advance(JITTER * 5.0)
    g, s = state(table, "127.0.0.4")
    assert s.last_probe.ok is False
    assert s.last_probe.detail == "probe error: checker bug"
    assert s.blocked_until is not None
    checker.script["127.0.0.4"] = "ok"
    clock.advance(60.0)
    assert s.last_probe.ok is True and s in g.usable()
    n = checker.count("127.0.0.4")
    clock.advance(5.0)
    clock.advance(5.0)
    assert checker.count("127.0.0.4") == n + 2  # the loop is alive
    manager.stop()
    assert clock.getDelayedCalls() == []


def test_a_hanging_probe_times_out_and_probes_never_overlap():
    clock, checker, table, manager = make()
    checker.script["127.0.0.2"] = "hang"
    clock.advance(JITTER * 5.0)
    n = checker.count("127.0.0.2")
    clock.advance(1.9)
    g, s = state(table, "127.0.0.2")
    assert s.blocked_until is None
    clock.advance(0.1)
    assert s.block_reason == "timeout after 2 s"
    assert checker.count("127.0.0.2") == n
    manager.stop()
    assert clock.getDelayedCalls() == []


def test_probes_follow_the_table_and_leave_no_timer_behind():
    clock, checker, table, manager = make()
    clock.advance(1.0)
    new_domains = [Domain("www.test.com", origin=IPOrigin(["127.0.0.3", "127.0.0.5"], port=8001),
                          probe=PROBE)]
    new = build_table(new_domains, clock, previous=table)
    manager.table_changed(table, new)
    before = {h: checker.count(h) for h in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")}
    clock.pump([1.0] * 20)
    assert checker.count("127.0.0.2") == before["127.0.0.2"]  # removed: stopped
    assert checker.count("127.0.0.4") == before["127.0.0.4"]  # standby removed
    assert checker.count("127.0.0.5") >= 4  # new: started
    assert checker.count("127.0.0.3") >= before["127.0.0.3"] + 4
    assert len(manager.probers) == 2
    # A domain without probes has none.
    none = build_table([Domain("www.test.com", origin=IPOrigin(["127.0.0.3"]), probe=None)],
                       clock, previous=new)
    manager.table_changed(new, none)
    assert manager.probers == {}
    assert clock.getDelayedCalls() == []
    manager.table_changed(none, new)
    manager.stop()
    assert clock.getDelayedCalls() == []


def test_dns_address_changes_start_and_stop_probes():
    clock, checker, table, manager = make()
    g, s = state(table, "127.0.0.2")
    from cdnpull.config import Address
    g.set_addresses([Address("127.0.0.2", 8001), Address("127.0.0.7", 8001)])
    assert {a for (_, a) in manager.probers} >= {Address("127.0.0.7", 8001)}
    assert Address("127.0.0.3", 8001) not in {a for (gid, a) in manager.probers if gid == id(g)}
    clock.advance(JITTER * 5.0)
    assert checker.count("127.0.0.7") == 1
    manager.stop()
    assert clock.getDelayedCalls() == []


def test_tcp_probe_kind_is_passed_to_the_checker():
    tcp = Probe(path="/", interval=5.0, timeout=2.0, block_for=60.0, kind="tcp")
    clock, checker, table, manager = make([Domain("t.test", origin=IPOrigin(["127.0.0.2"]), probe=tcp)])
    clock.advance(JITTER * 5.0)
    assert checker.calls[0][1].probe.kind == "tcp"
    assert checker.calls[0][1].address.port == 80
    manager.stop()
