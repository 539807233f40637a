"""
The admin API, state file, token, metrics and SIGHUP reload against a real
C{twistd cdnpull} (docs/admin-api.md and docs/operations.md).
"""

from __future__ import annotations

import glob
import os
import signal
import time

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.task import deferLater

from .support import Client, Origin, cdn_started, write_config

pytestmark = pytest.mark.timeout(90)

SITE = """
from cdnpull.config import Domain, IPOrigin, Settings
domains = [
    Domain("www.test.com", origin=IPOrigin(["{p}"]), standby=IPOrigin(["{sb}"]), probe=None),
    Domain("solo.test.com", origin=IPOrigin(["{p}"]), probe=None),
]
"""


def sleep(seconds: float):  # type: ignore[no-untyped-def]
    return deferLater(reactor, seconds, lambda: None)


@pytest_twisted.async_yield_fixture(scope="module")
async def origins():  # type: ignore[no-untyped-def]
    p = Origin("127.0.0.2", "primary").start()
    sb = Origin("127.0.0.4", "standby").start()
    extra = Origin("127.0.0.6", "extra").start()
    for o in (p, sb, extra):
        o.text("/who", o.name.encode())
    yield dict(p=p, sb=sb, extra=extra)
    await DeferredList([o.stop() for o in (p, sb, extra)])


def site(tmp_path, origins, body=SITE):  # type: ignore[no-untyped-def]
    return write_config(str(tmp_path), body.format(p=origins["p"].addr, sb=origins["sb"].addr))


async def who(cdn, host="www.test.com"):  # type: ignore[no-untyped-def]
    response, body = await Client(cdn.url).get("/who", host=host)
    return response.code, body


@pytest_twisted.async_yield_fixture(scope="module")
async def node(tmp_path_factory, origins):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("admin")
    cdn = await cdn_started(site(d, origins), str(d), admin=True)
    yield cdn, Client(cdn.admin_url)
    cdn.stop()


@pytest_twisted.ensureDeferred
async def test_get_domains_shows_origins_and_live_state(node, origins):  # type: ignore[no-untyped-def]
    cdn, admin = node
    assert (await who(cdn)) == (200, b"primary")
    status, data = await admin.api("GET", "/api/domains")
    assert status == 200
    names = [d["name"] for d in data["domains"]]
    assert names == ["solo.test.com", "www.test.com"]
    status, d = await admin.api("GET", "/api/domains/www.test.com")
    assert status == 200
    assert d["overridden"] is False
    assert d["origin"]["type"] == "ips" and d["origin"]["scheme"] == "http"
    [a] = d["origin"]["addresses"]
    assert a["address"] == "127.0.0.2" and a["port"] == origins["p"].port
    assert a["state"] == "up" and a["blocked_until"] is None
    assert a["requests"] >= 1 and a["failures"] == 0
    assert set(a) >= {"address", "port", "state", "blocked_until", "last_probe", "requests", "failures"}
    assert d["standby"]["addresses"][0]["address"] == "127.0.0.4"
    status, solo = await admin.api("GET", "/api/domains/solo.test.com")
    assert solo["standby"] is None


@pytest_twisted.ensureDeferred
async def test_switch_is_served_at_once_and_override_restores(node):  # type: ignore[no-untyped-def]
    cdn, admin = node
    status, d = await admin.api("POST", "/api/domains/www.test.com/switch")
    assert status == 200
    assert d["overridden"] is True
    assert d["origin"]["addresses"][0]["address"] == "127.0.0.4"
    assert d["module"]["origin"]["addresses"] == [f"127.0.0.2:{d['standby']['addresses'][0]['port']}"]
    assert (await who(cdn)) == (200, b"standby")
    status, d = await admin.api("DELETE", "/api/domains/www.test.com/override")
    assert status == 200 and d["overridden"] is False
    assert (await who(cdn)) == (200, b"primary")
    # Switching twice is the module's config again.
    await admin.api("POST", "/api/domains/www.test.com/switch")
    status, d = await admin.api("POST", "/api/domains/www.test.com/switch")
    assert d["overridden"] is False


@pytest_twisted.ensureDeferred
async def test_edit_primary_add_and_delete_standby(node, origins):  # type: ignore[no-untyped-def]
    cdn, admin = node
    extra = origins["extra"]
    status, d = await admin.api("PUT", "/api/domains/solo.test.com/origin",
                                {"type": "ips", "addresses": [extra.addr], "scheme": "http"})
    assert status == 200, d
    assert (await who(cdn, "solo.test.com")) == (200, b"extra")
    status, d = await admin.api("PUT", "/api/domains/solo.test.com/standby",
                                {"type": "ips", "addresses": [origins["sb"].addr]})
    assert status == 200 and d["standby"]["addresses"][0]["address"] == "127.0.0.4"
    # A GET answer can be edited and PUT back as it is.
    status, d = await admin.api("PUT", "/api/domains/solo.test.com/standby", d["standby"])
    assert status == 200, d
    status, d = await admin.api("DELETE", "/api/domains/solo.test.com/standby")
    assert status == 200 and d["standby"] is None
    status, d = await admin.api("DELETE", "/api/domains/solo.test.com/override")
    assert status == 200 and d["overridden"] is False
    assert (await who(cdn, "solo.test.com")) == (200, b"primary")


@pytest.mark.parametrize("path,method,body,status,field", [
    ("/api/domains/www.test.com/origin", "PUT", b"{not json", 400, "body: not valid JSON"),
    ("/api/domains/www.test.com/origin", "PUT", {"type": "ips", "addresses": "127.0.0.9"}, 400,
     "origin.addresses: must be a list of strings"),
    ("/api/domains/www.test.com/origin", "PUT", {"type": "ips", "addresses": ["300.1.1.1"]}, 400,
     "www.test.com: origin.addresses[0]"),
    ("/api/domains/www.test.com/origin", "PUT", {"type": "ips", "addresses": ["127.0.0.9"], "port": 70000},
     400, "www.test.com: origin.port"),
    ("/api/domains/www.test.com/origin", "PUT", {"type": "ips", "addresses": ["127.0.0.9"], "port": "80"},
     400, "origin.port: must be a whole number"),
    ("/api/domains/www.test.com/origin", "PUT", {"type": "carrier-pigeon"}, 400, "origin.type"),
    ("/api/domains/www.test.com/origin", "PUT", {"type": "domain", "host": "www.test.com"}, 400,
     "www.test.com: origin.host: 'www.test.com' must differ from the accelerated domain"),
    ("/api/domains/www.test.com/standby", "PUT",
     {"type": "bucket", "endpoint": "http://127.0.0.7:9000", "bucket": "b1", "region": "us-east-1"},
     400, "www.test.com: standby: a standby must be an IPOrigin or DomainOrigin, not a bucket"),
    ("/api/domains/solo.test.com/switch", "POST", None, 400, "standby: this domain has no standby"),
    ("/api/domains/nope.test.com/switch", "POST", None, 404, "unknown domain nope.test.com"),
    ("/api/domains/nope.test.com", "GET", None, 404, "unknown domain nope.test.com"),
    ("/api/domains/www.test.com/origin", "GET", None, 405, "method not allowed"),
    ("/api/nothing", "GET", None, 404, "no such path"),
])
@pytest_twisted.ensureDeferred
async def test_bad_calls_are_refused_naming_the_field_and_change_nothing(  # type: ignore[no-untyped-def]
        node, path, method, body, status, field):
    cdn, admin = node
    _, before = await admin.api("GET", "/api/domains")
    raw = body if isinstance(body, bytes) else None
    got, answer = await admin.api(method, path, None if raw else body, raw=raw)
    assert got == status, answer
    assert field in answer["error"]
    _, after = await admin.api("GET", "/api/domains")
    strip = lambda data: [(d["name"], d["overridden"], d["origin"]["configured_addresses"],  # noqa: E731
                           d["standby"] and d["standby"]["configured_addresses"]) for d in data["domains"]]
    assert strip(after) == strip(before)


@pytest_twisted.ensureDeferred
async def test_purge_validates_its_body(node):  # type: ignore[no-untyped-def]
    cdn, admin = node
    status, answer = await admin.api("POST", "/api/purge", {"urls": "nope"})
    assert status == 400 and "urls: must be a list of full URLs" in answer["error"]
    status, answer = await admin.api("POST", "/api/purge", {"paths": ["/x"]})
    assert status == 400
    status, answer = await admin.api("POST", "/api/purge", {"urls": ["http://www.test.com/1.jpg"]})
    assert status == 200 and answer == {"purged": 0}


@pytest_twisted.ensureDeferred
async def test_admin_is_not_reachable_through_the_client_listener(node, origins):  # type: ignore[no-untyped-def]
    cdn, admin = node
    client = Client(cdn.url)
    before = origins["p"].count("/api/domains")
    response, body = await client.get("/api/domains", host="www.test.com")
    assert b'"domains"' not in body
    assert origins["p"].count("/api/domains") == before + 1  # an ordinary path of the site
    response, body = await client.get("/metrics", host="unknown.test.com")
    assert response.code == 404


@pytest_twisted.ensureDeferred
async def test_metrics_parse_and_move_with_traffic(node):  # type: ignore[no-untyped-def]
    cdn, admin = node

    async def scrape():  # type: ignore[no-untyped-def]
        response, body = await admin.get("/metrics")
        assert response.code == 200
        assert response.headers.getRawHeaders("content-type")[0].startswith("text/plain")
        values = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return values

    def get(values, name, **labels):  # type: ignore[no-untyped-def]
        return values.get((name, tuple(sorted(labels.items()))), 0.0)

    before = await scrape()
    for _ in range(3):
        assert (await who(cdn)) == (200, b"primary")
    await Client(cdn.url).get("/who", host="nowhere.test.com")
    after = await scrape()
    key = dict(domain="www.test.com", status_class="2xx", cache="MISS")
    assert get(after, "cdnpull_requests_total", **key) == get(before, "cdnpull_requests_total", **key) + 3
    assert get(after, "cdnpull_requests_total", domain="-", status_class="4xx", cache="BYPASS") >= 1
    p = [k for k in after if k[0] == "cdnpull_origin_requests_total" and ("group", "primary") in k[1]
         and ("domain", "www.test.com") in k[1] and ("outcome", "2xx") in k[1]]
    assert p and after[p[0]] >= get(before, *p[0][:1], **dict(p[0][1])) + 3
    assert any(k[0] == "cdnpull_origin_blocked" for k in after)
    assert any(k[0] == "cdnpull_origin_seconds_count" for k in after)


# -- separate nodes -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_switch_survives_a_restart(tmp_path, origins):  # type: ignore[no-untyped-def]
    config = site(tmp_path, origins)
    cdn = await cdn_started(config, str(tmp_path), admin=True)
    try:
        status, _ = await Client(cdn.admin_url).api("POST", "/api/domains/www.test.com/switch")
        assert status == 200
    finally:
        cdn.stop()
    cdn = await cdn_started(config, str(tmp_path), admin=True)
    try:
        assert (await who(cdn)) == (200, b"standby")
        status, d = await Client(cdn.admin_url).api("GET", "/api/domains/www.test.com")
        assert d["overridden"] is True
        assert "re-applied runtime changes for www.test.com" in cdn.log()
    finally:
        cdn.stop()


@pytest_twisted.ensureDeferred
async def test_a_corrupt_state_file_is_moved_aside_and_the_node_starts(tmp_path, origins):  # type: ignore[no-untyped-def]
    state = tmp_path / "state.json"
    state.write_text('{"domains": {"www.test.com": {"origin": ')
    cdn = await cdn_started(site(tmp_path, origins), str(tmp_path), admin=True)
    try:
        assert (await who(cdn)) == (200, b"primary")
        aside = glob.glob(str(tmp_path / "state.json.corrupt-*"))
        assert len(aside) == 1 and not state.exists()
        assert "STATE FILE" in cdn.log() and "IS UNREADABLE" in cdn.log()
    finally:
        cdn.stop()


@pytest_twisted.ensureDeferred
async def test_state_of_a_domain_no_longer_in_the_module_is_dropped(tmp_path, origins):  # type: ignore[no-untyped-def]
    import json
    (tmp_path / "state.json").write_text(json.dumps({"version": 1, "domains": {
        "gone.test.com": {"origin": {"type": "ips", "addresses": ["127.0.0.9"]}, "standby": None}}}))
    cdn = await cdn_started(site(tmp_path, origins), str(tmp_path), admin=True)
    try:
        assert (await who(cdn)) == (200, b"primary")
        assert "dropping the runtime change of gone.test.com" in cdn.log()
    finally:
        cdn.stop()


@pytest_twisted.ensureDeferred
async def test_token_is_required_when_set(tmp_path, origins):  # type: ignore[no-untyped-def]
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    body = SITE.replace("domains = [", f"settings = Settings(admin_token_file={str(token_file)!r})\ndomains = [")
    cdn = await cdn_started(site(tmp_path, origins, body), str(tmp_path), admin=True)
    try:
        admin = Client(cdn.admin_url)
        for token in (None, "wrong", "s3cret-toke", "s3cret-token-and-more"):
            status, answer = await admin.api("POST", "/api/domains/www.test.com/switch", token=token)
            assert status == 401 and "Bearer" in answer["error"]
            status, _ = await admin.api("GET", "/api/domains", token=token)
            assert status == 401
            response, _ = await admin.get("/metrics", headers={} if token is None else
                                          {"Authorization": f"Bearer {token}"})
            assert response.code == 401
        assert (await who(cdn)) == (200, b"primary")  # nothing changed
        status, d = await admin.api("GET", "/api/domains/www.test.com", token="s3cret-token")
        assert status == 200 and d["overridden"] is False
        response, page = await admin.get("/")
        assert response.code == 200 and b"cdnpull console" in page
    finally:
        cdn.stop()


@pytest_twisted.ensureDeferred
async def test_sighup_adds_a_domain_and_an_invalid_module_keeps_the_old_config(tmp_path, origins):  # type: ignore[no-untyped-def]
    config = site(tmp_path, origins)
    cdn = await cdn_started(config, str(tmp_path), admin=True)
    try:
        response, _ = await Client(cdn.url).get("/who", host="new.test.com")
        assert response.code == 404
        with open(config, "a") as f:
            f.write(f'domains.append(Domain("new.test.com", origin=IPOrigin(["{origins["extra"].addr}"]), probe=None))\n')
        cdn.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reloaded " not in cdn.log():
            assert time.monotonic() < deadline, cdn.log()
            await sleep(0.05)
        assert (await who(cdn, "new.test.com")) == (200, b"extra")
        with open(config, "a") as f:
            f.write("domains.append(Domain('broken.test.com', origin=IPOrigin(['999.1.1.1'])))\n")
        cdn.proc.send_signal(signal.SIGHUP)
        while "reload of" not in cdn.log():
            assert time.monotonic() < deadline, cdn.log()
            await sleep(0.05)
        assert "broken.test.com: origin.addresses[0]" in cdn.log()
        assert (await who(cdn, "new.test.com")) == (200, b"extra")
        assert (await who(cdn)) == (200, b"primary")
        assert cdn.proc.poll() is None
    finally:
        cdn.stop()


@pytest_twisted.ensureDeferred
async def test_requests_in_flight_finish_on_the_origins_they_started_with(tmp_path, origins):  # type: ignore[no-untyped-def]
    from twisted.internet.defer import Deferred
    from twisted.web.server import NOT_DONE_YET

    p, sb = origins["p"], origins["sb"]
    held = []

    def slow(request):  # type: ignore[no-untyped-def]
        request.setHeader(b"content-length", b"12")
        request.write(b"primary-")
        held.append(request)
        return NOT_DONE_YET

    p.routes["/slow"] = slow
    sb.text("/slow", b"standby-slow")
    cdn = await cdn_started(site(tmp_path, origins), str(tmp_path), admin=True)
    try:
        in_flight = Deferred.fromCoroutine(Client(cdn.url).get("/slow", host="www.test.com"))
        while not held:
            await sleep(0.02)
        status, _ = await Client(cdn.admin_url).api("POST", "/api/domains/www.test.com/switch")
        assert status == 200
        # New requests see the new primary at once...
        assert (await who(cdn)) == (200, b"standby")
        # ...while the one in flight finishes on the old one.
        held[0].write(b"body")
        held[0].finish()
        response, body = await in_flight
        assert (response.code, body) == (200, b"primary-body")
    finally:
        cdn.stop()
        del p.routes["/slow"]


@pytest_twisted.ensureDeferred
async def test_access_log_file_and_reopen_on_sighup(tmp_path, origins):  # type: ignore[no-untyped-def]
    log_path = tmp_path / "access.log"
    body = SITE.replace("domains = [", f"settings = Settings(access_log={str(log_path)!r})\ndomains = [")
    cdn = await cdn_started(site(tmp_path, origins, body), str(tmp_path))
    try:
        assert (await who(cdn)) == (200, b"primary")
        for _ in range(50):
            if log_path.exists() and b"GET /who" in log_path.read_bytes():
                break
            await sleep(0.05)
        line = log_path.read_text().splitlines()[-1]
        assert '"GET /who HTTP/1.1" 200 7' in line
        assert "domain=www.test.com cache=MISS group=primary" in line
        # logrotate: move the file away, SIGHUP, and the node writes a new one.
        os.rename(log_path, tmp_path / "access.log.1")
        cdn.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reloaded " not in cdn.log():
            assert time.monotonic() < deadline
            await sleep(0.05)
        assert (await who(cdn)) == (200, b"primary")
        for _ in range(50):
            if log_path.exists() and b"GET /who" in log_path.read_bytes():
                break
            await sleep(0.05)
        assert log_path.read_text().count("GET /who") == 1
    finally:
        cdn.stop()
