"""Hostname origins on a fake clock: TTLs, failures, first-answer waiting."""

from __future__ import annotations

import random

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.names import dns, error as nerror

from cdnpull.config import Address, Domain, DomainOrigin
from cdnpull.live import build_table
from cdnpull.origins.dns import KEEP_STALE, MAX_TTL, MIN_TTL, RETRY, DNSManager


class Resolver:
    """Answers from a script: name -> (list of IPs, ttl) | "nx" | "hang"."""

    def __init__(self) -> None:
        self.answers: dict = {}
        self.queries: list = []
        self.closed = False

    def _answer(self, name, kind):  # type: ignore[no-untyped-def]
        self.queries.append((name, kind))
        what = self.answers.get(name, "nx")
        if what == "nx":
            return fail(nerror.DNSNameError(name))
        if what == "hang":
            return Deferred()
        ips, ttl = what
        records = []
        for ip in ips:
            if (":" in ip) == (kind == dns.AAAA):
                payload = dns.Record_AAAA(ip, ttl) if kind == dns.AAAA else dns.Record_A(ip, ttl)
                records.append(dns.RRHeader(name.encode(), kind, dns.IN, ttl, payload))
        return succeed((records, [], []))

    def lookupAddress(self, name, timeout=None):  # type: ignore[no-untyped-def]
        return self._answer(name, dns.A)

    def lookupIPV6Address(self, name, timeout=None):  # type: ignore[no-untyped-def]
        return self._answer(name, dns.AAAA)

    def close(self) -> None:
        self.closed = True


def make(answer, port=8080):  # type: ignore[no-untyped-def]
    clock = Clock()
    resolver = Resolver()
    resolver.answers["origin.test"] = answer
    table = build_table([Domain("www.test.com", origin=DomainOrigin("origin.test", port=port))],
                        clock, rng=random.Random(1))
    manager = DNSManager(clock, resolver)
    manager.start(table)
    return clock, resolver, table.domains["www.test.com"].primary, manager


def addresses(group):  # type: ignore[no-untyped-def]
    return [s.address for s in group.states]


def test_a_and_aaaa_answers_all_join_the_group():
    clock, resolver, group, manager = make((["127.0.0.2", "127.0.0.3", "::1"], 300))
    assert addresses(group) == [Address("127.0.0.2", 8080), Address("127.0.0.3", 8080),
                                Address("::1", 8080)]
    manager.stop()
    assert clock.getDelayedCalls() == [] and resolver.closed


def test_re_resolves_when_the_ttl_expires_keeping_state_of_remaining_addresses():
    clock, resolver, group, manager = make((["127.0.0.2", "127.0.0.3"], 300))
    group.state_of(Address("127.0.0.3", 8080)).requests = 5
    resolver.answers["origin.test"] = (["127.0.0.3", "127.0.0.4"], 300)
    clock.advance(299)
    assert Address("127.0.0.2", 8080) in addresses(group)
    clock.advance(1)
    assert addresses(group) == [Address("127.0.0.3", 8080), Address("127.0.0.4", 8080)]
    assert group.state_of(Address("127.0.0.3", 8080)).requests == 5
    manager.stop()
    assert clock.getDelayedCalls() == []


def test_ttl_is_clamped():
    for ttl, expected in ((0, MIN_TTL), (1, MIN_TTL), (10 ** 6, MAX_TTL), (60, 60)):
        clock, resolver, group, manager = make((["127.0.0.2"], ttl))
        [call] = clock.getDelayedCalls()
        assert call.getTime() == expected
        manager.stop()


def test_a_failed_resolution_keeps_the_last_answer_for_a_while():
    clock, resolver, group, manager = make((["127.0.0.2"], 60))
    resolver.answers["origin.test"] = "nx"
    clock.advance(60)
    watcher = next(iter(manager.watchers.values()))
    assert addresses(group) == [Address("127.0.0.2", 8080)]
    assert watcher.last_error == "no such name (NXDOMAIN)"
    [call] = clock.getDelayedCalls()
    assert call.getTime() == 60 + RETRY
    # Past the limit the stale answer is dropped.
    while clock.seconds() < 60 + KEEP_STALE + RETRY:
        clock.advance(RETRY)
    assert addresses(group) == []
    resolver.answers["origin.test"] = (["127.0.0.5"], 60)
    clock.advance(RETRY)
    assert addresses(group) == [Address("127.0.0.5", 8080)]
    manager.stop()
    assert clock.getDelayedCalls() == []


def test_requests_wait_for_the_first_answer():
    clock, resolver, group, manager = make("hang")
    assert addresses(group) == []
    waited = group.wait_for_addresses()
    assert not waited.called
    manager.stop()  # stopping releases waiters
    assert waited.called
    assert clock.getDelayedCalls() == []


def test_first_answer_releases_waiters_even_when_it_fails():
    clock, resolver, group, manager = make("nx")
    assert group.wait_for_addresses().called
    assert addresses(group) == []
    manager.stop()


def test_watchers_follow_the_table():
    clock, resolver, group, manager = make((["127.0.0.2"], 60))
    from cdnpull.config import IPOrigin
    table2 = build_table([Domain("www.test.com", origin=IPOrigin(["127.0.0.9"]))], clock)
    manager.table_changed(None, table2)
    assert manager.watchers == {}
    assert clock.getDelayedCalls() == []
    manager.stop()
