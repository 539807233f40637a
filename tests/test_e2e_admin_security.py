"""
The admin listener against other web sites and hostile callers, on a real
C{twistd cdnpull}: DNS rebinding (Host), cross-site requests (Origin,
Content-Type), framing, body and time limits, credentials by name only, and
the state file's modes.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess

import pytest
import pytest_twisted
from twisted.internet.defer import DeferredList
from twisted.internet.threads import deferToThread

from .support import TWISTD, Client, Origin, raw_exchange, cdn_started, write_config

pytestmark = pytest.mark.timeout(90)

SITE = """
from cdnpull.config import Domain, IPOrigin, Settings
settings = Settings(admin_hosts=["cdn-admin.example"], client_header_timeout=1.0,
                    client_idle_timeout=1.0)
domains = [
    Domain("www.test.com", origin=IPOrigin(["{p}"]), standby=IPOrigin(["{sb}"]), probe=None),
]
"""


@pytest_twisted.async_yield_fixture(scope="module")
async def node(tmp_path_factory):  # type: ignore[no-untyped-def]
    p = Origin("127.0.0.2", "primary").start()
    sb = Origin("127.0.0.4", "standby").start()
    for o in (p, sb):
        o.text("/who", o.name.encode())
    d = tmp_path_factory.mktemp("adminsec")
    cdn = await cdn_started(write_config(str(d), SITE.format(p=p.addr, sb=sb.addr)), str(d), admin=True)
    yield cdn, Client(cdn.admin_url)
    cdn.stop()
    await DeferredList([p.stop(), sb.stop()])


async def call(admin, method, path, headers, data=None):  # type: ignore[no-untyped-def]
    response, body = await admin.get(path, method=method, headers=headers, data=data)
    try:
        decoded = json.loads(body)
    except ValueError:
        decoded = body
    return response, decoded


async def unchanged(cdn, admin):  # type: ignore[no-untyped-def]
    status, d = await admin.api("GET", "/api/domains/www.test.com")
    assert status == 200 and d["overridden"] is False, d
    response, body = await Client(cdn.url).get("/who", host="www.test.com")
    assert body == b"primary"
    assert "Traceback" not in cdn.log()


JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1",
                                    "https://127.0.0.1:{port}", "http://127.0.0.1:{port}.evil"])
@pytest_twisted.ensureDeferred
async def test_a_foreign_origin_is_refused(node, origin):  # type: ignore[no-untyped-def]
    cdn, admin = node
    headers = dict(JSON, Origin=origin.format(port=cdn.admin_port))
    response, answer = await call(admin, "POST", "/api/domains/www.test.com/switch", headers)
    assert response.code == 403 and "Origin" in answer["error"]
    response, _ = await call(admin, "GET", "/api/domains", headers)
    assert response.code == 403
    await unchanged(cdn, admin)


@pytest_twisted.ensureDeferred
async def test_the_admins_own_origin_and_no_origin_are_accepted(node):  # type: ignore[no-untyped-def]
    cdn, admin = node
    for host in (f"127.0.0.1:{cdn.admin_port}", f"localhost:{cdn.admin_port}"):
        headers = dict(JSON, Origin=f"http://{host}", Host=host)
        response, d = await call(admin, "POST", "/api/domains/www.test.com/switch", headers)
        assert response.code == 200 and d["overridden"] is True
        response, d = await call(admin, "DELETE", "/api/domains/www.test.com/override", headers)
        assert response.code == 200 and d["overridden"] is False
    # A client that sends no Origin (curl, ctl, scripts) is not asked for one.
    status, d = await admin.api("GET", "/api/domains/www.test.com")
    assert status == 200
    await unchanged(cdn, admin)


@pytest.mark.parametrize("method,path,ctype,data", [
    ("POST", "/api/domains/www.test.com/switch", "text/plain", None),
    ("POST", "/api/domains/www.test.com/switch", None, None),
    ("POST", "/api/purge", "text/plain", b'{"prefixes": ["http://www.test.com/"]}'),
    ("PUT", "/api/domains/www.test.com/origin", "application/x-www-form-urlencoded",
     b'{"type": "ips", "addresses": ["127.0.0.9"]}'),
    ("PUT", "/api/domains/www.test.com/origin", "multipart/form-data; boundary=x",
     b'{"type": "ips", "addresses": ["127.0.0.9"]}'),
    ("DELETE", "/api/domains/www.test.com/standby", "text/plain", None),
], ids=["switch-text", "switch-none", "purge-text", "put-form", "put-multipart", "delete-text"])
@pytest_twisted.ensureDeferred
async def test_a_change_needs_a_json_content_type(node, method, path, ctype, data):  # type: ignore[no-untyped-def]
    cdn, admin = node
    headers = {} if ctype is None else {"Content-Type": ctype}
    response, answer = await call(admin, method, path, headers, data)
    assert response.code == 415 and "application/json" in answer["error"]
    await unchanged(cdn, admin)


@pytest.mark.parametrize("host", ["rebind.attacker.example", "rebind.attacker.example:{port}",
                                  "localhost.attacker.example", "127.0.0.1.nip.io:{port}",
                                  "cdn-admin.example.evil", "", "a b"])
@pytest_twisted.ensureDeferred
async def test_a_foreign_host_is_misdirected(node, host):  # type: ignore[no-untyped-def]
    cdn, admin = node
    host = host.format(port=cdn.admin_port)
    for method, path in (("GET", "/api/domains"), ("POST", "/api/domains/www.test.com/switch"),
                         ("GET", "/"), ("GET", "/metrics")):
        response, answer = await call(admin, method, path, dict(JSON, Host=host))
        assert response.code == 421, (method, path, answer)
    await unchanged(cdn, admin)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST:{port}", "[::1]:{port}",
                                  "10.1.2.3:{port}", "cdn-admin.example", "cdn-admin.example:{port}"])
@pytest_twisted.ensureDeferred
async def test_ip_literals_localhost_and_admin_hosts_are_answered(node, host):  # type: ignore[no-untyped-def]
    cdn, admin = node
    response, answer = await call(admin, "GET", "/api/domains",
                                  {"Host": host.format(port=cdn.admin_port)})
    assert response.code == 200 and answer["domains"][0]["name"] == "www.test.com"


@pytest_twisted.ensureDeferred
async def test_two_host_headers_are_refused(node):  # type: ignore[no-untyped-def]
    cdn, admin = node
    request = (b"GET /api/domains HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: rebind.attacker.example\r\n"
               b"Connection: close\r\n\r\n")
    out, _, _ = await deferToThread(raw_exchange, cdn.admin_port, request)
    assert out.startswith(b"HTTP/1.1 400 ") or out.startswith(b"HTTP/1.1 421 "), out[:100]
    assert b'"domains"' not in out


@pytest_twisted.ensureDeferred
async def test_the_console_cannot_be_framed(node):  # type: ignore[no-untyped-def]
    cdn, admin = node
    response, page = await admin.get("/")
    assert response.code == 200 and b"cdnpull console" in page
    csp = response.headers.getRawHeaders("content-security-policy")[0]
    assert "frame-ancestors 'none'" in csp
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0]
    assert response.headers.getRawHeaders("x-frame-options") == ["DENY"]


@pytest.mark.parametrize("body,why", [
    (b"[" * 30000 + b"]" * 30000, "nested deeper than 32"),
    (b'{"urls": ' + b"[" * 33 + b"]" * 33 + b"}", "nested deeper than 32"),
    (b'{"urls": NaN}', "not valid JSON"),
    (b'{"urls": ["http://www.test.com/\xff"]}', "not valid JSON"),
    (b"{", "not valid JSON"),
], ids=["30000-deep", "34-deep", "NaN", "not-utf8", "truncated"])
@pytest_twisted.ensureDeferred
async def test_bad_json_is_a_400_without_a_traceback(node, body, why):  # type: ignore[no-untyped-def]
    cdn, admin = node
    for path, method in (("/api/purge", "POST"), ("/api/domains/www.test.com/origin", "PUT")):
        response, answer = await call(admin, method, path, JSON, body)
        assert response.code == 400 and why in answer["error"], answer
    await unchanged(cdn, admin)


@pytest_twisted.ensureDeferred
async def test_json_32_levels_deep_is_parsed(node):  # type: ignore[no-untyped-def]
    cdn, admin = node
    body = b'{"urls": ' + b"[" * 31 + b"]" * 31 + b"}"
    response, answer = await call(admin, "POST", "/api/purge", JSON, body)
    assert response.code == 400 and "urls: must be a list of full URLs" in answer["error"]


@pytest_twisted.ensureDeferred
async def test_a_body_over_1_mib_is_refused_before_it_is_read(node):  # type: ignore[no-untyped-def]
    cdn, admin = node
    # Announced: refused at once, without waiting for (or reading) the body.
    head = (b"POST /api/purge HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (2 * 1024 * 1024))
    out, _, closed = await deferToThread(raw_exchange, cdn.admin_port, head)
    assert out.startswith(b"HTTP/1.1 413 ") and closed
    # Chunked: refused when it passes 1 MiB (the 4th chunk does; nothing is
    # sent after it, so the close cannot reset the connection before the
    # answer is read).
    chunk = b'{"urls": ["' + b"x" * (256 * 1024)
    chunked = (b"POST /api/purge HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n"
               + b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(4)))
    assert 4 * len(chunk) > 1024 * 1024
    out, _, closed = await deferToThread(raw_exchange, cdn.admin_port, chunked)
    assert out.startswith(b"HTTP/1.1 413 ") and closed
    # Just under the limit is read and parsed.
    urls = ["http://www.test.com/%d" % i for i in range(20000)]
    body = json.dumps({"urls": urls}).encode()
    assert 512 * 1024 < len(body) < 1024 * 1024
    response, answer = await call(admin, "POST", "/api/purge", JSON, body)
    assert response.code == 200 and answer == {"purged": 0}
    await unchanged(cdn, admin)


@pytest_twisted.ensureDeferred
async def test_idle_and_slow_connections_are_closed(node):  # type: ignore[no-untyped-def]
    cdn, _ = node
    # The node's client_idle_timeout and client_header_timeout are 1 s.
    out, _, closed = await deferToThread(raw_exchange, cdn.admin_port, b"", 15.0)
    assert closed and out == b""
    out, _, closed = await deferToThread(raw_exchange, cdn.admin_port,
                                         b"GET /api/domains HTTP/1.1\r\nHost: 127.0.0.1\r\n", 15.0)
    assert closed and out.startswith(b"HTTP/1.1 408 ")


def test_a_non_loopback_admin_without_a_token_is_a_config_error(tmp_path):  # type: ignore[no-untyped-def]
    config = write_config(str(tmp_path), """
        from cdnpull.config import Domain, IPOrigin
        domains = [Domain("www.test.com", origin=IPOrigin(["127.0.0.2"]), probe=None)]
        """)
    proc = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "cdnpull", "--config", config, "--listen",
         "tcp:0:interface=127.0.0.1", "--admin", "tcp:0:interface=0.0.0.0", "--state",
         str(tmp_path / "state.json")],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if "config error" in line]
    assert lines == ["cdnpull: config error: settings.admin_token_file: required when the admin "
                     "listener ('tcp:0:interface=0.0.0.0') is not on a loopback interface"], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


# -- credentials by name (docs/security.md) ---------------------------------------------------

BUCKET_SITE = """
from cdnpull.config import Domain, IPOrigin, Settings, S3Credentials
settings = Settings(credentials={{"STATIC": S3Credentials.from_env("STATIC")}})
domains = [Domain("www.test.com", origin=IPOrigin(["{p}"]), probe=None)]
"""


@pytest_twisted.ensureDeferred
async def test_a_bucket_set_at_runtime_signs_only_with_named_credentials(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("STATIC_ACCESS_KEY_ID", "AKIDSTATICNAMED")
    monkeypatch.setenv("STATIC_SECRET_ACCESS_KEY", "static-secret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDPROCESSOWN")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "process-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "process-session")
    p = Origin("127.0.0.2", "primary").start()
    store = Origin("127.0.0.7", "store").start()
    store.text("/bucket1/who", b"bucket")
    cdn = await cdn_started(write_config(str(tmp_path), BUCKET_SITE.format(p=p.addr)), str(tmp_path),
                    admin=True)
    try:
        admin = Client(cdn.admin_url)
        bucket = {"type": "bucket", "endpoint": f"http://{store.addr}", "bucket": "bucket1",
                  "style": "path", "region": "us-east-1"}
        # The process's own keys cannot be reached through the API, and the
        # answer is the same whether an environment variable exists or not.
        errors = []
        for body in (dict(bucket, credentials_env="AWS"), dict(bucket, credentials_env="NOPE"),
                     dict(bucket, credentials="AWS"), dict(bucket, credentials="NOPE"),
                     dict(bucket, credentials=["STATIC"])):
            status, answer = await admin.api("PUT", "/api/domains/www.test.com/origin", body)
            assert status == 400, answer
            errors.append(answer["error"].replace("AWS", "X").replace("NOPE", "X"))
            assert "environment" not in answer["error"] and "ACCESS_KEY" not in answer["error"]
        assert errors[0] == errors[1] and errors[2] == errors[3]
        assert not [s for s in store.seen if b"authorization" in s.headers]
        # A declared name signs with those keys.
        status, d = await admin.api("PUT", "/api/domains/www.test.com/origin",
                                    dict(bucket, credentials="STATIC"))
        assert status == 200, d
        assert d["origin"]["credentials"] == "STATIC" and d["origin"]["signed"] is True
        response, body = await Client(cdn.url).get("/who", host="www.test.com")
        assert (response.code, body) == (200, b"bucket")
        [auth] = store.seen[-1].headers[b"authorization"]
        assert b"Credential=AKIDSTATICNAMED/" in auth
        assert b"x-amz-security-token" not in store.seen[-1].headers
        assert "signed over plain http" in cdn.log()
        # The state file names the keys, never holds them.
        state = (tmp_path / "state.json").read_text()
        assert '"credentials": "STATIC"' in state
        assert "static-secret" not in state and "AKIDSTATICNAMED" not in state
        # A GET answer PUT back as it is keeps its keys.
        status, d2 = await admin.api("PUT", "/api/domains/www.test.com/origin", d["origin"])
        assert status == 200 and d2["origin"]["credentials"] == "STATIC"
        # ...and "signed" without a name is refused rather than dropped silently.
        unsigned = {k: v for k, v in d["origin"].items() if k != "credentials"}
        status, answer = await admin.api("PUT", "/api/domains/www.test.com/origin", unsigned)
        assert status == 400 and "origin.credentials" in answer["error"]
        assert "Traceback" not in cdn.log()
    finally:
        cdn.stop()
        await p.stop()
        await store.stop()


# -- the state file (docs/security.md) ----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_state_file_is_0600_in_a_0700_directory(tmp_path):  # type: ignore[no-untyped-def]
    p = Origin("127.0.0.2", "primary").start()
    sb = Origin("127.0.0.4", "standby").start()
    old = os.umask(0o022)
    state = tmp_path / "var" / "cdnpull" / "state.json"
    try:
        cdn = await cdn_started(write_config(str(tmp_path), SITE.format(p=p.addr, sb=sb.addr)),
                        str(tmp_path), "--state", str(state), admin=True)
    finally:
        os.umask(old)
    try:
        status, _ = await Client(cdn.admin_url).api("POST", "/api/domains/www.test.com/switch")
        assert status == 200
        assert stat.S_IMODE(os.stat(state).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(state.parent).st_mode) == 0o700
        assert os.listdir(state.parent) == ["state.json"]  # no temporary file left
        assert json.loads(state.read_text())["domains"]["www.test.com"]
    finally:
        cdn.stop()
        await p.stop()
        await sb.stop()


def test_state_file_writes_never_follow_a_planted_temporary_name(tmp_path):  # type: ignore[no-untyped-def]
    from cdnpull.admin.state import StateFile

    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    path = tmp_path / "state.json"
    # Names an attacker with write access to the directory could plant.
    for name in (f"state.json.tmp-{os.getpid()}", "state.json.tmp", ".state.json.tmp"):
        os.symlink(victim, tmp_path / name)
    StateFile(str(path)).write(b'{"version": 1, "domains": {}}\n')
    assert victim.read_bytes() == b"precious"
    assert path.read_bytes() == b'{"version": 1, "domains": {}}\n' and not path.is_symlink()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    leftovers = [n for n in os.listdir(tmp_path) if re.search(r"tmp", n) and not os.path.islink(tmp_path / n)]
    assert leftovers == []


ODD_CALLS = [
    ("POST", "/api/purge", b'{"urls": ["http://[::1/x"]}'),
    ("POST", "/api/purge", b'{"prefixes": ["http://[::1"]}'),
    ("POST", "/api/purge", b'{"urls": ["http://\xc3\xbc.test/a"]}'),
    ("POST", "/api/purge", b'{"urls": ["http://www.test.com:99999/a"]}'),
    ("POST", "/api/purge", b'{"urls": ["http://"]}'),
    ("POST", "/api/purge", b'{"urls": ["http://www.test.com/\\ud800"]}'),
    ("POST", "/api/purge", b"1e999"),
    ("POST", "/api/purge", b"null"),
    ("GET", "/api/domains/%ff", b""),
    ("GET", "/api/domains/%00", b""),
    ("GET", "/api/domains/" + "a" * 5000, b""),
    ("POST", "/api/domains//switch", b"{}"),
    ("GET", "/api/domains?%zz", b""),
    ("GET", "/metrics?x=%ff", b""),
    ("PATCH", "/api/domains/www.test.com/origin", b"{}"),
    ("PUT", "/api/domains/www.test.com/origin", b'{"type": ["ips"]}'),
    ("PUT", "/api/domains/www.test.com/origin", b'{"type": "ips", "addresses": ["1.1.1.1"], "port": 1e400}'),
    ("PUT", "/api/domains/www.test.com/origin", b'{"type": "ips", "addresses": [["1.1.1.1"]]}'),
    ("PUT", "/api/domains/www.test.com/origin", b'{"type": "bucket", "endpoint": "http://[::1", "bucket": "abc"}'),
    ("PUT", "/api/domains/www.test.com/origin",
     b'{"type": "bucket", "endpoint": "https://s3.test", "bucket": "abc", "region": "\xc3\xbc"}'),
    ("PUT", "/api/domains/www.test.com/standby", b'{"type": "ips", "addresses": ["1.1.1.1"], "scheme": null}'),
]


@pytest_twisted.ensureDeferred
async def test_odd_admin_calls_get_a_4xx_and_no_traceback(node):  # type: ignore[no-untyped-def]
    cdn, admin = node
    for method, path, body in ODD_CALLS:
        response, _ = await call(admin, method, path, JSON, body or None)
        assert response.code < 500, (method, path, body, response.code)
    await unchanged(cdn, admin)
