"""The ctl client's formatting, without a node: sparklines and the status table."""

from __future__ import annotations

import io

import pytest

from cdnpull.admin.ctl import admin_url, print_status, sparkline, squeeze

pytestmark = pytest.mark.timeout(10)


def test_sparkline_scales_to_the_peak_and_leaves_gaps():
    assert sparkline([None, 0, 5, 10]) == " ▁▅█"
    assert sparkline([0.5, 1.0], top=1.0) == "▅█"
    assert sparkline([0, 0]) == "▁▁" and sparkline([]) == ""


def test_a_long_window_is_squeezed_into_the_width():
    assert squeeze([1, 3, None, None, 4], 2) == [2.0, None, 4.0]
    assert squeeze([1, 2], 1) == [1, 2]


def test_admin_endpoint_forms(monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.delenv("CDNPULL_ADMIN", raising=False)
    assert admin_url(None) == "http://127.0.0.1:8081"
    assert admin_url("10.0.0.1:9000") == "http://10.0.0.1:9000"
    assert admin_url("https://admin.example/") == "https://admin.example"
    monkeypatch.setenv("CDNPULL_ADMIN", "127.0.0.1:1234")
    assert admin_url(None) == "http://127.0.0.1:1234"


def test_status_table_shows_groups_states_and_reasons():
    address = {"address": "127.0.0.3", "port": 8001, "state": "blocked", "blocked_until": 0,
               "reason": "connect refused", "requests": 7, "failures": 2}
    data = {"domains": [{
        "name": "www.test.com", "overridden": True,
        "origin": {"down": True, "addresses": [address]},
        "standby": {"down": False, "addresses": []},
    }]}
    out = io.StringIO()
    print_status(data, out)
    lines = out.getvalue().splitlines()
    assert lines[1].split() == ["www.test.com", "(changed)", "primary", "(down)", "127.0.0.3:8001",
                                "blocked", "-", "connect", "refused", "7", "2"]
    assert lines[2].split()[:3] == ["standby", "(no", "address"]
