"""
C{python -m cdnpull ctl} against a real C{twistd cdnpull}: every subcommand's
output and exit status, a wrong or missing token, an unreachable admin; and
C{GET /api/stats}'s shape through the wire.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from .support import Client, Origin, Silent, closed_port, cdn_started, write_config

pytestmark = pytest.mark.timeout(120)

TOKEN = "ctl-secret"


def ctl(*args: str, admin: str | None = None, token_file: str | None = None):  # type: ignore[no-untyped-def]
    """Runs in a thread: the client as an operator runs it, env and all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDNPULL_")}
    env["PYTHONPATH"] = os.getcwd() + os.pathsep + env.get("PYTHONPATH", "")
    if admin is not None:
        env["CDNPULL_ADMIN"] = admin
    if token_file is not None:
        env["CDNPULL_TOKEN_FILE"] = token_file
    return subprocess.run([sys.executable, "-m", "cdnpull", "ctl", *args], env=env,
                          capture_output=True, text=True, timeout=60)


async def run(*args: str, **kw):  # type: ignore[no-untyped-def]
    return await deferToThread(ctl, *args, **kw)


@pytest_twisted.ensureDeferred
async def test_every_subcommand_against_a_running_node(tmp_path):  # type: ignore[no-untyped-def]
    p = Origin("127.0.0.2", "primary").start()
    sb = Origin("127.0.0.4", "standby").start()
    p.text("/hello.txt", b"hello", headers={"Cache-Control": "max-age=600"})
    p.text("/1.jpg", b"nope", status=404)
    sb.text("/1.jpg", b"jpeg", headers={"Cache-Control": "max-age=600"})
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    config = write_config(str(tmp_path), f"""
        from cdnpull.config import Domain, IPOrigin, Settings
        settings = Settings(admin_token_file={str(token_file)!r})
        domains = [Domain("www.test.com", origin=IPOrigin(["{p.addr}"]),
                          standby=IPOrigin(["{sb.addr}"]), probe=None),
                   Domain("solo.test.com", origin=IPOrigin(["{p.addr}"]), probe=None)]
        """)
    cdn = await cdn_started(config, str(tmp_path), admin=True)
    admin = cdn.admin_url
    tf = str(token_file)
    try:
        web = Client(cdn.url)
        for path in ("/hello.txt", "/hello.txt", "/1.jpg", "/1.jpg"):
            await web.get(path, host="www.test.com")

        r = await run("status", admin=admin, token_file=tf)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].split() == ["DOMAIN", "GROUP", "ADDRESS", "STATE", "UNTIL", "REASON",
                                    "REQUESTS", "FAILURES"]
        assert lines[1].split()[:4] == ["solo.test.com", "primary", p.addr, "up"]
        assert lines[2].split()[:4] == ["www.test.com", "primary", p.addr, "up"]
        assert lines[3].split()[:3] == ["standby", sb.addr, "up"]
        assert r.stderr == ""

        # Flags win over the environment.
        r = await run("--admin", admin, "--token-file", tf, "switch", "www.test.com",
                      admin="127.0.0.1:1")
        assert r.returncode == 0, r.stderr
        assert r.stdout == (f"www.test.com: primary {sb.addr} (http); standby {p.addr} (http); "
                            "changed at runtime\n")

        r = await run("set-standby", "www.test.com", "127.0.0.9", "127.0.0.10:81", "--port", "8001",
                      admin=admin, token_file=tf)
        assert r.returncode == 0, r.stderr
        assert r.stdout == (f"www.test.com: primary {sb.addr} (http); standby "
                            "127.0.0.9:8001, 127.0.0.10:81 (http); changed at runtime\n")

        r = await run("set-origin", "www.test.com", "--host", "origin.test.com", "--port", "8001",
                      admin=admin, token_file=tf)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("www.test.com: primary origin.test.com (http); standby ")

        r = await run("set-origin", "www.test.com", "--json",
                      f'{{"type": "ips", "addresses": ["{sb.addr}"]}}', admin=admin, token_file=tf)
        assert r.returncode == 0, r.stderr

        # An invalid change: the API's error as one line, status 1, nothing changed.
        r = await run("set-origin", "www.test.com", "300.1.1.1", admin=admin, token_file=tf)
        assert r.returncode == 1 and r.stdout == ""
        assert r.stderr == ("cdnpull ctl: PUT /api/domains/www.test.com/origin: HTTP 400: "
                            "www.test.com: origin.addresses[0]: '300.1.1.1' is not an IPv4 or "
                            "IPv6 address\n")
        r = await run("switch", "nope.test.com", admin=admin, token_file=tf)
        assert r.returncode == 1
        assert r.stderr == ("cdnpull ctl: POST /api/domains/nope.test.com/switch: HTTP 404: "
                            "unknown domain nope.test.com\n")
        r = await run("switch", "solo.test.com", admin=admin, token_file=tf)
        assert r.returncode == 1 and "HTTP 400" in r.stderr and len(r.stderr.splitlines()) == 1

        r = await run("drop-standby", "www.test.com", admin=admin, token_file=tf)
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"www.test.com: primary {sb.addr} (http); standby none; changed at runtime\n"

        r = await run("restore", "www.test.com", admin=admin, token_file=tf)
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"www.test.com: primary {p.addr} (http); standby {sb.addr} (http)\n"

        r = await run("purge", "http://www.test.com/hello.txt", admin=admin, token_file=tf)
        assert (r.returncode, r.stdout) == (0, "purged 1 cached object(s)\n"), r.stderr
        r = await run("purge", "--prefix", "http://www.test.com/", admin=admin, token_file=tf)
        assert (r.returncode, r.stdout) == (0, "purged 1 cached object(s)\n"), r.stderr
        r = await run("purge", "www.test.com/x", admin=admin, token_file=tf)
        assert r.returncode == 1 and "must be a list of full URLs" in r.stderr

        r = await run("stats", "www.test.com", admin=admin, token_file=tf)
        assert r.returncode == 0, r.stderr
        out = r.stdout.splitlines()
        assert out[0].startswith("www.test.com: last ")
        labels = [line.split()[0] for line in out[1:6]]
        assert labels == ["requests/s", "hit", "origin", "failovers", "origin"]
        # Each address with its group at the last sample (which may have been
        # taken while the changes above were in place).
        assert any(line.startswith(f"  {p.addr} (") for line in out), out
        assert any(line.startswith(f"  {sb.addr} (") for line in out), out
        assert any(line.strip().startswith("cache objects") for line in out)
        r = await run("stats", "nope.test.com", admin=admin, token_file=tf)
        assert r.returncode == 1 and "HTTP 404: unknown domain nope.test.com" in r.stderr

        # A wrong token, no token, an unreadable token file.
        bad = tmp_path / "bad"
        bad.write_text("wrong\n")
        r = await run("status", admin=admin, token_file=str(bad))
        assert r.returncode == 1 and r.stdout == ""
        assert r.stderr == ("cdnpull ctl: GET /api/domains: HTTP 401: "
                            "Authorization: Bearer <token> required\n")
        r = await run("status", admin=admin)
        assert r.returncode == 1 and "HTTP 401" in r.stderr
        r = await run("status", admin=admin, token_file=str(tmp_path / "missing"))
        assert r.returncode == 1
        assert r.stderr == f"cdnpull ctl: token file {tmp_path / 'missing'}: No such file or directory\n"
    finally:
        cdn.stop()
        await p.stop()
        await sb.stop()


@pytest_twisted.ensureDeferred
async def test_an_unreachable_admin_is_one_line_and_status_1():  # type: ignore[no-untyped-def]
    port = closed_port("127.0.0.1")
    r = await run("status", admin=f"127.0.0.1:{port}")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == (f"cdnpull ctl: cannot reach the admin API at http://127.0.0.1:{port}: "
                        "Connection refused\n")
    silent = Silent("127.0.0.1")
    try:
        r = await run("--timeout", "0.5", "status", admin=f"127.0.0.1:{silent.port}")
    finally:
        await silent.stop()
    assert r.returncode == 1
    assert r.stderr == (f"cdnpull ctl: no answer from the admin API at "
                        f"http://127.0.0.1:{silent.port} within 0.5 s\n")
    r = await run("switch")  # a usage error is argparse's: status 2
    assert r.returncode == 2 and "domain" in r.stderr


@pytest_twisted.ensureDeferred
async def test_api_stats_over_the_wire(tmp_path):  # type: ignore[no-untyped-def]
    p = Origin("127.0.0.2", "primary").start()
    p.text("/a", b"a", headers={"Cache-Control": "max-age=600"})
    config = write_config(str(tmp_path), f"""
        from cdnpull.config import Domain, IPOrigin
        domains = [Domain("www.test.com", origin=IPOrigin(["{p.addr}"]), probe=None),
                   Domain("solo.test.com", origin=IPOrigin(["{p.addr}"]), probe=None)]
        """)
    cdn = await cdn_started(config, str(tmp_path), admin=True)
    try:
        api = Client(cdn.admin_url)
        status, data = await api.api("GET", "/api/stats")
        assert status == 200
        assert (data["interval"], data["samples"]) == (5.0, 180)
        assert len(data["times"]) >= 1 and set(data["cache"]) == {"bytes", "objects"}
        assert [d["name"] for d in data["domains"]] == ["solo.test.com", "www.test.com"]
        d = data["domains"][1]
        assert set(d) == {"name", "requests", "hit_ratio", "origin_errors", "failovers",
                          "origin_latency_ms", "addresses"}
        assert [a["address"] for a in d["addresses"]] == [p.addr]
        assert set(d["addresses"][0]) == {"address", "group", "requests", "errors", "latency_ms",
                                          "blocked", "blocks"}
        status, one = await api.api("GET", "/api/stats?domain=WWW.test.com.")
        assert status == 200 and [x["name"] for x in one["domains"]] == ["www.test.com"]
        assert await api.api("GET", "/api/stats?domain=nope.test.com") == (
            404, {"error": "unknown domain nope.test.com"})
        status, _ = await api.api("POST", "/api/stats", {})
        assert status == 405
    finally:
        cdn.stop()
        await p.stop()
