"""
The console in a real browser: headless Chromium (Debian's build, driven by
Playwright) clicks "Switch" and sees the roles swap; the API agrees; an
invalid edit shows the API's error in the page.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from .programs import require_program
from .support import Client, Origin, cdn_started, write_config

pytestmark = pytest.mark.timeout(120)

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(autouse=True)
def chromium() -> str:
    """Debian's Chromium; without it these tests skip (fail under CDNPULL_REQUIRE_ALL=1)."""
    return require_program(CHROMIUM, "apt-get install chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def chromium_page(url: str):  # type: ignore[no-untyped-def]
    """A page of Debian's headless Chromium at C{url}, closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(url)
            yield page
        finally:
            browser.close()


def drive(url: str) -> dict:
    """Runs in a worker thread: Playwright's sync API owns its own loop."""
    from playwright.sync_api import expect

    seen: dict = {}
    with chromium_page(url) as page:
        domain = page.locator('[data-domain="www.test.com"]')
        primary = domain.locator('.group[data-role="primary"] tr.address')
        standby = domain.locator('.group[data-role="standby"] tr.address')
        expect(primary).to_have_count(1)
        seen["primary_before"] = primary.first.get_attribute("data-address")
        seen["standby_before"] = standby.first.get_attribute("data-address")
        seen["state_before"] = primary.first.locator("td").nth(1).inner_text()
        domain.locator('button[data-action="switch"]').click()
        expect(primary.first).to_have_attribute("data-address", seen["standby_before"])
        seen["primary_after"] = primary.first.get_attribute("data-address")
        seen["standby_after"] = standby.first.get_attribute("data-address")
        seen["badge"] = domain.locator(".badge").inner_text()
        seen["https_plain"] = domain.locator(".https").get_attribute("data-https")
        seen["https_secure"] = page.locator('[data-domain="secure.test.com"] .https').inner_text()
        # An invalid edit: the API's error is shown, nothing changes.
        domain.locator('button[data-action="edit-primary"]').click()
        domain.locator('form.editor input[name="addresses"]').fill("300.1.1.1")
        domain.locator('form.editor button[type="submit"]').click()
        error = page.locator("#error")
        expect(error).to_be_visible()
        seen["error"] = error.inner_text()
    return seen


@pytest_twisted.ensureDeferred
async def test_console_switch_swaps_roles_and_the_api_agrees(tmp_path):  # type: ignore[no-untyped-def]
    p = Origin("127.0.0.2", "primary").start()
    sb = Origin("127.0.0.4", "standby").start()
    for o in (p, sb):
        o.text("/who", o.name.encode())
    import trustme

    from .test_certs import issue
    cert = issue(trustme.CA(), str(tmp_path), "secure", "secure.test.com")
    config = write_config(str(tmp_path), f"""
        from cdnpull.config import Certificate, Domain, IPOrigin
        domains = [Domain("www.test.com", origin=IPOrigin(["{p.addr}"]),
                          standby=IPOrigin(["{sb.addr}"]), probe=None),
                   Domain("secure.test.com", origin=IPOrigin(["{p.addr}"]), probe=None,
                          https_only=True, hsts="max-age=600",
                          certificate=Certificate({cert.cert_file!r}, {cert.key_file!r}))]
        """)
    cdn = await cdn_started(config, str(tmp_path), admin=True)
    try:
        seen = await deferToThread(drive, cdn.admin_url + "/")
        assert seen["primary_before"] == p.addr and seen["standby_before"] == sb.addr
        assert seen["state_before"] == "up"
        assert seen["primary_after"] == sb.addr and seen["standby_after"] == p.addr
        assert seen["badge"] == "changed at runtime"
        # Each domain's HTTPS policy and certificate are shown.
        assert seen["https_plain"] == "none"
        text = seen["https_secure"]
        assert "HTTPS only" in text and "HSTS max-age=600" in text, text
        assert "secure.test.com" in text and "days left (domain)" in text, text
        assert "origin.addresses[0]" in seen["error"] and "300.1.1.1" in seen["error"]
        status, d = await Client(cdn.admin_url).api("GET", "/api/domains/www.test.com")
        assert d["overridden"] is True
        assert d["origin"]["addresses"][0]["address"] == "127.0.0.4"
        assert d["standby"]["addresses"][0]["address"] == "127.0.0.2"
        response, body = await Client(cdn.url).get("/who", host="www.test.com")
        assert (response.code, body) == (200, b"standby")
    finally:
        cdn.stop()
        await p.stop()
        await sb.stop()


def drive_with_token(url: str, token: str) -> dict:
    from playwright.sync_api import expect

    seen: dict = {}
    with chromium_page(url) as page:
        login = page.locator("#login")
        expect(login).to_be_visible()
        seen["domains_before"] = page.locator("[data-domain]").count()
        page.locator("#token").fill(token)
        page.locator('#login button[type="submit"]').click()
        expect(page.locator('[data-domain="www.test.com"]')).to_have_count(1)
        expect(login).to_be_hidden()
        # Asked once: a reload keeps it for the tab.
        page.reload()
        expect(page.locator('[data-domain="www.test.com"]')).to_have_count(1)
        seen["login_after_reload"] = login.is_visible()
    return seen


@pytest_twisted.ensureDeferred
async def test_console_asks_for_the_token_once(tmp_path):  # type: ignore[no-untyped-def]
    p = Origin("127.0.0.2", "primary").start()
    token_file = tmp_path / "token"
    token_file.write_text("console-secret\n")
    config = write_config(str(tmp_path), f"""
        from cdnpull.config import Domain, IPOrigin, Settings
        settings = Settings(admin_token_file={str(token_file)!r})
        domains = [Domain("www.test.com", origin=IPOrigin(["{p.addr}"]), probe=None)]
        """)
    cdn = await cdn_started(config, str(tmp_path), admin=True)
    try:
        seen = await deferToThread(drive_with_token, cdn.admin_url + "/", "console-secret")
        assert seen["domains_before"] == 0  # nothing shown without the token
        assert seen["login_after_reload"] is False
    finally:
        cdn.stop()
        await p.stop()


# Series colours of cdnpull/admin/console/charts.js (one per measure).
COLOURS = {"requests": (47, 111, 191), "hit_ratio": (46, 158, 91), "origin_errors": (210, 60, 60),
           "failovers": (224, 138, 30), "origin_latency_ms": (123, 79, 201)}

INK = """([selector, rgb]) => {
  // Pixels of the series colour in a chart's canvas, and how many rows they
  // span (a flat line along the axis spans one or two).
  const canvas = document.querySelector(selector + " canvas");
  if (!canvas) return {pixels: 0, rows: 0};
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let pixels = 0;
  const rows = new Set();
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] > 200 && Math.abs(data[i] - rgb[0]) < 40 && Math.abs(data[i + 1] - rgb[1]) < 40
        && Math.abs(data[i + 2] - rgb[2]) < 40) {
      pixels++;
      rows.add(Math.floor(i / 4 / canvas.width));
    }
  }
  return {pixels, rows: rows.size};
}"""


def traffic(url: str, n: int = 6) -> None:
    """From the browser's thread: hits, misses and failovers (urllib, blocking)."""
    import urllib.error
    import urllib.request

    for _ in range(n):
        for path in ("/hit.txt", "/miss.txt", "/standby-only.txt"):
            req = urllib.request.Request(url + path, headers={"Host": "www.test.com"})
            try:
                urllib.request.urlopen(req, timeout=10).read()
            except urllib.error.HTTPError:
                pass


def cdn_url_of(path: str) -> str:
    return "http://www.test.com" + path


def drive_charts(admin: str, cdn: str, blocked: str, shot: str) -> dict:
    from playwright.sync_api import expect

    seen: dict = {"requests": []}
    with chromium_page("about:blank") as page:
        page.on("request", lambda r: seen["requests"].append(r.url))
        page.set_viewport_size({"width": 1366, "height": 900})
        page.goto(admin + "/")
        charts = '[data-charts="www.test.com"]'
        card = lambda key: f'{charts} [data-chart="{key}"]'  # noqa: E731
        expect(page.locator(card("requests") + " canvas")).to_have_count(1)
        expect(page.locator(card("requests"))).not_to_have_attribute("data-samples", "1")
        seen["ink_before"] = {k: page.evaluate(INK, [card(k), rgb]) for k, rgb in COLOURS.items()}
        seen["samples_before"] = int(page.locator(card("requests")).get_attribute("data-samples"))
        seen["value_before"] = page.locator(card("requests") + " .chart-value").inner_text()
        seen["address_charts"] = page.locator(f"{charts} [data-chart^=address-] canvas").count()
        seen["legend"] = page.locator(f'{charts} [data-chart="address-requests"] .u-legend').inner_text()
        row = page.locator(f'{charts} .timeline-row[data-address="{blocked}"]')
        seen["blocked_rects"] = row.locator("rect.blocked").count()
        seen["timeline_state"] = page.locator(card("blocks") + " .chart-value").inner_text()
        seen["last_error"] = page.locator(
            f'[data-domain="www.test.com"] tr.address[data-address="{blocked}"] td').nth(5).inner_text()
        seen["cache_value"] = page.locator('#node-charts [data-chart="cache-objects"] .chart-value').inner_text()
        # More traffic while the page is open: the charts move on by themselves.
        traffic(cdn, 10)
        expect(page.locator(card("requests"))).not_to_have_attribute(
            "data-samples", str(seen["samples_before"]), timeout=15000)
        seen["ink_after"] = page.evaluate(INK, [card("requests"), COLOURS["requests"]])
        seen["samples_after"] = int(page.locator(card("requests")).get_attribute("data-samples"))
        # The actions still work beside the charts.
        page.locator(f'[data-domain="www.test.com"] button[data-action="switch"]').click()
        expect(page.locator('[data-domain="www.test.com"] .badge')).to_have_text("changed at runtime")
        seen["charts_after_switch"] = page.locator(card("requests") + " canvas").count()
        page.locator("#purge-urls").fill(cdn_url_of("/hit.txt"))
        page.locator('#purge button[type="submit"]').click()
        page.wait_for_timeout(500)
        seen["purge_error"] = page.locator("#error").is_visible()
        seen["width"] = page.evaluate("document.documentElement.scrollWidth")
        page.screenshot(path=shot, full_page=True)
    return seen


@pytest_twisted.ensureDeferred
async def test_console_draws_live_charts_from_the_node_only(tmp_path):  # type: ignore[no-untyped-def]
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    from .support import closed_port

    p = Origin("127.0.0.2", "primary").start()
    sb = Origin("127.0.0.4", "standby").start()
    p.text("/hit.txt", b"cached", headers={"Cache-Control": "max-age=600"})
    p.text("/miss.txt", b"never cached", headers={"Cache-Control": "no-store"})
    p.text("/standby-only.txt", b"not here", status=404)
    sb.text("/standby-only.txt", b"from the standby", headers={"Cache-Control": "no-store"})
    dead = f"127.0.0.3:{closed_port('127.0.0.3')}"
    config = write_config(str(tmp_path), f"""
        from cdnpull.config import Domain, IPOrigin
        domains = [Domain("www.test.com", origin=IPOrigin(["{p.addr}", "{dead}"]),
                          standby=IPOrigin(["{sb.addr}"]), probe=None)]
        """)
    cdn = await cdn_started(config, str(tmp_path), admin=True)
    try:
        await deferToThread(traffic, cdn.url)
        api = Client(cdn.admin_url)
        for _ in range(100):  # until a sample after the traffic is in
            status, stats = await api.api("GET", "/api/stats?domain=www.test.com")
            if len(stats["times"]) >= 2:
                break
            await deferLater(reactor, 0.2, lambda: None)
        d = stats["domains"][0]
        assert d["failovers"][-1] > 0 and 0 < d["hit_ratio"][-1] < 1, d
        seen = await deferToThread(drive_charts, cdn.admin_url, cdn.url, dead,
                                   str(tmp_path / "console.png"))
        # The console's purge dropped the cached copy: the next GET is a miss.
        response, _ = await Client(cdn.url).get("/hit.txt", host="www.test.com")
        seen["after_purge"] = response.headers.getRawHeaders("x-cache")
    finally:
        cdn.stop()
        await p.stop()
        await sb.stop()
    before = seen["ink_before"]
    # Every domain chart drew its series, off the axis (not a flat zero line;
    # a young node's samples are a few pixels apart at the right edge).
    for key in ("requests", "hit_ratio", "failovers", "origin_latency_ms"):
        assert before[key]["pixels"] > 4 and before[key]["rows"] > 4, (key, before)
    assert before["origin_errors"]["pixels"] > 0  # the refused address's connect errors
    assert seen["address_charts"] == 3
    assert p.addr in seen["legend"] and dead in seen["legend"] and sb.addr in seen["legend"]
    assert seen["blocked_rects"] >= 1 and seen["timeline_state"] == "1 blocked now"
    assert seen["cache_value"] == "1"
    assert seen["last_error"].startswith("connect refused at "), seen["last_error"]
    assert seen["value_before"].endswith("/s") and seen["value_before"] != "0/s"
    assert seen["samples_after"] > seen["samples_before"]
    assert seen["ink_after"] != before["requests"]
    assert seen["charts_after_switch"] == 1
    assert seen["purge_error"] is False and seen["after_purge"] == ["MISS"]
    assert seen["width"] <= 1366  # no sideways scrolling on a laptop screen
    admin = cdn.admin_url + "/"
    assert seen["requests"] and all(u.startswith(admin) for u in seen["requests"]), seen["requests"]
