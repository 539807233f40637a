"""
Shared fixtures.  pytest-twisted runs the real reactor for tests that talk
over sockets; pytest-timeout (pyproject.toml) bounds every test; the
C{no_leaked_calls} fixture fails a test that leaves timers behind.
"""

from __future__ import annotations

from collections import Counter

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater


def _timers() -> Counter:
    """Active timers on the global reactor, counted by what they call."""
    return Counter(getattr(c.func, "__qualname__", repr(c.func))
                   for c in reactor.getDelayedCalls() if c.active())


def _extra(before: Counter) -> Counter:
    return _timers() - before


@pytest.fixture(autouse=True)
def no_leaked_calls():  # type: ignore[no-untyped-def]
    """
    A test must not leave timers behind on the global reactor: after it, no
    kind of timer may be more numerous than before it (recurring timers of
    module-wide fixtures, re-armed every second, count as the same kind).
    Connections closing may need a moment: poll with a deadline.
    """
    before = _timers()
    yield
    for _ in range(100):
        if not _extra(before):
            return
        pytest_twisted.blockon(deferLater(reactor, 0.02, lambda: None))
    left = _extra(before)
    assert not left, f"delayed calls left behind: {dict(left)}"
