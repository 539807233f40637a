"""Rotation and the block list on a fake clock (docs/origins.md)."""

from __future__ import annotations

import random

from twisted.internet.task import Clock

from cdnpull.config import Address
from cdnpull.origins.group import OriginGroup

A, B, C = Address("127.0.0.2", 80), Address("127.0.0.3", 80), Address("127.0.0.4", 80)


def group(*addresses, seed=1, probing=False, clock=None):  # type: ignore[no-untyped-def]
    return OriginGroup("primary", addresses or (A, B, C), clock or Clock(), block_for=60.0,
                       rng=random.Random(seed), probing=probing, domain="t.test")


def firsts(g, n):  # type: ignore[no-untyped-def]
    return [g.order()[0].address for _ in range(n)]


def test_round_robin_visits_each_address_in_turn():
    g = group()
    seq = firsts(g, 9)
    assert sorted(seq[:3]) == [A, B, C]
    assert seq[:3] == seq[3:6] == seq[6:9]
    # Each order lists every usable address once, starting at the turn's one.
    order = g.order()
    assert sorted(s.address for s in order) == [A, B, C]


def test_random_start_differs_between_processes():
    starts = {firsts(group(seed=seed), 1)[0] for seed in range(20)}
    assert starts == {A, B, C}


def test_blocked_address_is_skipped_until_its_block_expires():
    clock = Clock()
    g = group(clock=clock)
    g.block(g.state_of(B), "connect refused")
    assert B not in firsts(g, 6)
    assert g.state_of(B).state(clock.seconds()) == "blocked"
    assert g.state_of(B).block_reason == "connect refused"
    clock.advance(59.9)
    assert B not in firsts(g, 6)
    clock.advance(0.1)
    assert B in firsts(g, 6)
    assert g.state_of(B).state(clock.seconds()) == "up"


def test_usable_addresses_share_evenly_while_one_is_blocked():
    g = group()
    g.block(g.state_of(B), "x")
    seq = firsts(g, 10)
    assert seq.count(A) == seq.count(C) == 5


def test_with_probing_a_block_ends_only_by_a_passing_probe():
    clock = Clock()
    g = group(clock=clock, probing=True)
    g.block(g.state_of(A), "connect refused")
    clock.advance(3600)
    assert A not in firsts(g, 6)
    g.unblock(g.state_of(A))
    assert A in firsts(g, 6)


def test_all_blocked_group_is_down_but_can_still_be_tried():
    g = group(A, B)
    for s in g.states:
        g.block(s, "x")
    assert g.is_down()
    assert g.order() == []
    assert sorted(s.address for s in g.order(include_blocked=True)) == [A, B]


def test_set_addresses_keeps_state_of_remaining_addresses():
    g = group(A, B)
    g.block(g.state_of(A), "x")
    g.state_of(B).requests = 7
    g.set_addresses([B, C])
    assert g.state_of(A) is None
    assert g.state_of(B).requests == 7
    assert g.state_of(C).requests == 0
