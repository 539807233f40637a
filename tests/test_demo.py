"""
The README's quick start, as a test: the demo config under a real
C{twistd cdnpull}, its own sample origins, and the hot-standby case.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted

from .support import ROOT, Client, cdn_started

pytestmark = pytest.mark.timeout(60)

DEMO = os.path.join(ROOT, "examples", "demo.py")


@pytest_twisted.ensureDeferred
async def test_demo_serves_standby_image(tmp_path):  # type: ignore[no-untyped-def]
    cdn = await cdn_started(DEMO, str(tmp_path))
    try:
        client = Client(cdn.url)
        response, body = await client.get("/1.jpg", host="www.test.com")
        assert response.code == 200
        assert body[:3] == b"\xff\xd8\xff"  # a JPEG
        assert response.headers.getRawHeaders("content-type") == ["image/jpeg"]
        assert response.headers.getRawHeaders("x-served-by") == ["standby-127.0.0.4"]

        response, body = await client.get("/hello.txt", host="www.test.com")
        assert response.code == 200
        assert body == b"hello from the primary\n"
        assert response.headers.getRawHeaders("x-served-by")[0].startswith("primary")
    finally:
        # twistd re-raises the SIGTERM it handled after a clean shutdown.
        assert cdn.stop() in (0, -15)
    log = cdn.log()
    assert "Server Shut Down." in log
    assert "Traceback" not in log
    line = next(l for l in log.splitlines() if '"GET /1.jpg HTTP/1.1" 200' in l)
    assert "domain=www.test.com" in line
    assert "group=standby origin=127.0.0.4:8001" in line
