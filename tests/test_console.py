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

from .support import Client, Origin, cdn_started, write_config

pytestmark = pytest.mark.timeout(120)

CHROMIUM = "/usr/bin/chromium"
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
    config = write_config(str(tmp_path), f"""
        from cdnpull.config import Domain, IPOrigin
        domains = [Domain("www.test.com", origin=IPOrigin(["{p.addr}"]),
                          standby=IPOrigin(["{sb.addr}"]), probe=None)]
        """)
    cdn = await cdn_started(config, str(tmp_path), admin=True)
    try:
        seen = await deferToThread(drive, cdn.admin_url + "/")
        assert seen["primary_before"] == p.addr and seen["standby_before"] == sb.addr
        assert seen["state_before"] == "up"
        assert seen["primary_after"] == sb.addr and seen["standby_after"] == p.addr
        assert seen["badge"] == "changed at runtime"
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
