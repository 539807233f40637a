"""
The rule for tests that need a system program: skip with a reason saying how
to get it, or fail when CDNPULL_REQUIRE_ALL=1 (CI).
"""

from __future__ import annotations

import sys

import pytest

from .programs import require_program

pytestmark = pytest.mark.timeout(10)


def test_a_present_program_is_returned():  # type: ignore[no-untyped-def]
    assert require_program(sys.executable, "nothing") == sys.executable


def test_a_missing_program_skips_with_how_to_get_it(monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.delenv("CDNPULL_REQUIRE_ALL", raising=False)
    with pytest.raises(pytest.skip.Exception) as e:
        require_program("/nonexistent/chromium", "apt-get install chromium")
    assert str(e.value) == "/nonexistent/chromium not found (get it with: apt-get install chromium)"


def test_a_missing_program_fails_under_require_all(monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CDNPULL_REQUIRE_ALL", "1")
    with pytest.raises(pytest.fail.Exception) as e:
        require_program("no-such-program-cdnpull", "apt-get install it")
    assert "no-such-program-cdnpull not found (get it with: apt-get install it)" in str(e.value)
    assert "CDNPULL_REQUIRE_ALL=1" in str(e.value)
