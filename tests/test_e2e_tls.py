"""
Edge HTTPS end to end: a real twistd with one tls: listener serving several
domains, each with the certificate that covers it (chosen by SNI), checked
through the certificate each client really receives in its handshake.
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from typing import Optional

import pytest
import pytest_twisted
import trustme
from cryptography import x509
from twisted.internet.threads import deferToThread

from .support import Client, Origin, ROOT, TWISTD, free_port, cdn_started, start_cdn, write_config
from .test_certs import issue

pytestmark = pytest.mark.timeout(90)


def leaf_der(cert_file: str) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    with open(cert_file, "rb") as f:
        return x509.load_pem_x509_certificates(f.read())[0].public_bytes(Encoding.DER)


class TLSClient:
    """
    A blocking TLS client (run it in a thread): one connection, HTTP/1.1
    requests over it, and the certificate the server sent.
    """

    def __init__(self, port: int, server_name: Optional[str], ca_file: Optional[str] = None,
                 alpn: Optional[list] = None) -> None:
        if ca_file is not None:
            context = ssl.create_default_context(cafile=ca_file)
        else:  # only looking at what the server sends
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if alpn:
            context.set_alpn_protocols(alpn)
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            self.sock = context.wrap_socket(raw, server_hostname=server_name)
        except BaseException:
            raw.close()
            raise
        self.buffer = b""

    @property
    def peer(self) -> bytes:
        return self.sock.getpeercert(binary_form=True)

    def request(self, path: str, host: str, method: str = "GET", extra: str = "",
                body: bytes = b"") -> tuple[int, dict, bytes]:
        self.sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()
                          + body)
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed before the answer"
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if method == "HEAD" else int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed in the body"
            self.buffer += chunk
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body

    def close(self) -> None:
        self.sock.close()


def handshake(port: int, server_name: Optional[str]) -> bytes:
    """The leaf certificate (DER) a client naming C{server_name} receives."""
    client = TLSClient(port, server_name)
    try:
        return client.peer
    finally:
        client.close()


def https_get(port: int, ca_file: str, host: str, path: str, **kw: str):  # type: ignore[no-untyped-def]
    client = TLSClient(port, host, ca_file)
    try:
        return client.request(path, host, **kw)
    finally:
        client.close()


def plain(port: int, host: str, path: str, method: str = "GET",
          body: bytes = b"") -> tuple[int, dict, bytes]:
    """One request over plain TCP (no redirect following)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    client = TLSClient.__new__(TLSClient)
    client.sock, client.buffer = raw, b""
    try:
        extra = f"Content-Length: {len(body)}\r\n" if body else ""
        return client.request(path, host, method, extra, body)
    finally:
        raw.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory):  # type: ignore[no-untyped-def]
    """
    Four domains on one tls: port: www.test.com and api.test.com with their
    own certificates (api's ends in 10 days), *.img.test through a wildcard
    in Settings.certificates, plain.test with none; a default certificate
    for node.test.
    """
    d = str(tmp_path_factory.mktemp("tls"))
    ca = trustme.CA()
    ca_file = os.path.join(d, "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=10, hours=1)
    certs = {
        "www": issue(ca, d, "www", "www.test.com"),
        "api": issue(ca, d, "api", "api.test.com", not_after=soon),
        "wild": issue(ca, d, "wild", "*.img.test"),
        "node": issue(ca, d, "node", "node.test"),
    }
    origin = Origin("127.0.0.2", "origin").start()
    counter = {"n": 0}

    def answer(request):  # type: ignore[no-untyped-def]
        counter["n"] += 1
        request.setHeader(b"cache-control", b"max-age=600")
        proto = request.getHeader(b"x-forwarded-proto") or b"-"
        return b"%s %s via %s #%d" % (request.getHeader(b"host"), request.uri, proto, counter["n"])

    origin.routes["*"] = answer
    config = write_config(d, f"""
        from cdnpull.config import Certificate, Domain, IPOrigin, Settings
        origin = IPOrigin(["{origin.addr}"])
        settings = Settings(certificates=[Certificate({certs['wild'].cert_file!r}, {certs['wild'].key_file!r})],
                            default_certificate=Certificate({certs['node'].cert_file!r}, {certs['node'].key_file!r}))
        domains = [
            Domain("www.test.com", origin=origin, probe=None, https_only=True,
                   hsts="max-age=31536000; includeSubDomains",
                   certificate=Certificate({certs['www'].cert_file!r}, {certs['www'].key_file!r})),
            Domain("api.test.com", origin=origin, probe=None,
                   certificate=Certificate({certs['api'].cert_file!r}, {certs['api'].key_file!r})),
            Domain("*.img.test", origin=origin, probe=None),
            Domain("plain.test", origin=origin, probe=None),
        ]
        """)
    tls_port = free_port()
    cdn = start_cdn(config, d, "--listen", f"tls:{tls_port}:interface=127.0.0.1", admin=True)
    yield {"cdn": cdn, "port": tls_port, "ca_file": ca_file, "certs": certs, "origin": origin,
           "dir": d}
    cdn.stop()
    pytest_twisted.blockon(origin.stop())


@pytest_twisted.ensureDeferred
async def test_each_domain_gets_its_own_certificate_on_one_port(node) -> None:  # type: ignore[no-untyped-def]
    port, certs = node["port"], node["certs"]
    for name, label in [("www.test.com", "www"), ("api.test.com", "api"),
                        ("a.img.test", "wild"), ("A.IMG.test", "wild")]:
        assert await deferToThread(handshake, port, name) == leaf_der(certs[label].cert_file), name
    # The wildcard covers one label: a.b.img.test and unknown names get the default.
    for name in ["a.b.img.test", "img.test", "unknown.example", "plain.test"]:
        assert await deferToThread(handshake, port, name) == leaf_der(certs["node"].cert_file), name


@pytest_twisted.ensureDeferred
async def test_a_client_without_sni_gets_the_default_certificate(node) -> None:  # type: ignore[no-untyped-def]
    assert await deferToThread(handshake, node["port"], None) == leaf_der(node["certs"]["node"].cert_file)


@pytest_twisted.ensureDeferred
async def test_verified_https_requests_reach_the_origin_with_their_scheme(node) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = await deferToThread(
        https_get, node["port"], node["ca_file"], "a.img.test", "/pic.jpg")
    assert status == 200
    assert body.startswith(b"a.img.test /pic.jpg via https #")
    assert "strict-transport-security" not in headers  # no hsts on that domain

    def negotiate(offer: list) -> tuple[str, str]:
        client = TLSClient(node["port"], "api.test.com", node["ca_file"], alpn=offer)
        try:
            return client.sock.selected_alpn_protocol(), client.sock.version()
        finally:
            client.close()

    assert await deferToThread(negotiate, ["h2", "http/1.1"]) == ("h2", "TLSv1.3")
    assert await deferToThread(negotiate, ["http/1.1"]) == ("http/1.1", "TLSv1.3")
    # A client offering only protocols the node does not speak still connects.
    assert await deferToThread(negotiate, ["spdy/3"]) == (None, "TLSv1.3")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_tls_1_1_and_1_0_are_refused(node) -> None:  # type: ignore[no-untyped-def]
    def old_client() -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = ssl.TLSVersion.TLSv1_1
        with socket.create_connection(("127.0.0.1", node["port"]), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="www.test.com"):
                pass

    with pytest.raises((ssl.SSLError, ConnectionError)):
        await deferToThread(old_client)

    def tls12() -> tuple[str, str]:
        context = ssl.create_default_context(cafile=node["ca_file"])
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        with socket.create_connection(("127.0.0.1", node["port"]), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="www.test.com") as s:
                return s.version(), s.cipher()[0]

    version, cipher = await deferToThread(tls12)
    assert version == "TLSv1.2"
    assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher)


@pytest_twisted.ensureDeferred
async def test_https_only_redirects_plain_http_and_the_redirect_is_never_the_https_object(node) -> None:  # type: ignore[no-untyped-def]
    cdn, port, ca_file = node["cdn"], node["port"], node["ca_file"]
    status, headers, _ = await deferToThread(plain, cdn.port, "www.test.com", "/only.css?v=1")
    assert status == 301
    assert headers["location"] == "https://www.test.com/only.css?v=1"
    assert "strict-transport-security" not in headers  # never over http
    assert headers["server"] == "cdnpull"
    status, headers, _ = await deferToThread(plain, cdn.port, "www.test.com", "/form", "POST",
                                             b"a=1")
    assert status == 308  # keeps the method and body
    assert headers["location"] == "https://www.test.com/form"

    status, headers, body = await deferToThread(https_get, port, ca_file, "www.test.com",
                                                "/only.css?v=1")
    assert (status, headers["x-cache"]) == (200, "MISS")
    assert body.startswith(b"www.test.com /only.css?v=1 via https #")
    assert headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
    status, headers, again = await deferToThread(https_get, port, ca_file, "www.test.com",
                                                 "/only.css?v=1")
    assert (status, headers["x-cache"], again) == (200, "HIT", body)
    assert headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
    # And plain http still gets the redirect, not the cached https answer.
    status, headers, _ = await deferToThread(plain, cdn.port, "www.test.com", "/only.css?v=1")
    assert status == 301
    # A domain without https_only is served over plain http.
    response, body = await Client(cdn.url).get("/x", host="api.test.com")
    assert response.code == 200 and body.startswith(b"api.test.com /x via http #")


@pytest_twisted.ensureDeferred
async def test_api_metrics_and_log_show_each_certificate(node) -> None:  # type: ignore[no-untyped-def]
    cdn, certs = node["cdn"], node["certs"]
    admin = Client(cdn.admin_url)
    status, www = await admin.api("GET", "/api/domains/www.test.com")
    assert status == 200
    https = www["https"]
    assert https["https_only"] is True
    assert https["hsts"] == "max-age=31536000; includeSubDomains"
    cert = https["certificate"]
    assert cert["names"] == ["www.test.com"] and cert["source"] == "domain"
    assert cert["cert_file"] == certs["www"].cert_file
    assert "O=trustme" in cert["issuer"]
    assert cert["days_left"] > 300 and cert["not_after"].endswith("Z")
    _, wild = await admin.api("GET", "/api/domains/*.img.test")
    assert wild["https"]["certificate"]["source"] == "certificates"
    _, plain = await admin.api("GET", "/api/domains/plain.test")
    assert plain["https"] == {"https_only": False, "hsts": None, "certificate": None}
    _, api = await admin.api("GET", "/api/domains/api.test.com")
    assert 9.9 < api["https"]["certificate"]["days_left"] < 10.1

    response, text = await admin.get("/metrics")
    lines = [line for line in text.decode().splitlines()
             if line.startswith("cdnpull_certificate_days_left{")]
    assert len(lines) == 4
    api_line = [line for line in lines if 'name="api.test.com"' in line]
    assert len(api_line) == 1 and 9.9 < float(api_line[0].split()[-1]) < 10.1
    log = cdn.log()
    assert f"certificate {certs['api'].cert_file} (api.test.com) expires in 10 days" in log
    assert "Traceback" not in log


@pytest_twisted.ensureDeferred
async def test_without_a_default_certificate_unknown_names_fail_the_handshake(tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = str(tmp_path)
    ca = trustme.CA()
    www = issue(ca, d, "www", "www.test.com")
    config = write_config(d, f"""
        from cdnpull.config import Certificate, Domain, IPOrigin
        domains = [Domain("www.test.com", origin=IPOrigin(["127.0.0.2"]), probe=None,
                          certificate=Certificate({www.cert_file!r}, {www.key_file!r}))]
        """)
    port = free_port()
    cdn = await cdn_started(config, d, "--listen", f"tls:{port}:interface=127.0.0.1")
    try:
        assert await deferToThread(handshake, port, "www.test.com") == leaf_der(www.cert_file)
        for name in (None, "other.test"):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await deferToThread(handshake, port, name)
        assert await deferToThread(handshake, port, "www.test.com") == leaf_der(www.cert_file)
        assert "Traceback" not in cdn.log()
    finally:
        cdn.stop()


# -- config errors --------------------------------------------------------------


def run_check(config: str, cwd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "cdnpull", "check", config], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=30)


def run_twistd(config: str, cwd: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([TWISTD, "-n", "--pidfile=", "cdnpull", "--config", config,
                           "--listen", f"tls:{free_port()}:interface=127.0.0.1", "--admin", "none",
                           "--state", os.path.join(cwd, "state.json")],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=30)


def test_bad_certificates_are_one_line_config_errors_naming_domain_and_field(tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = str(tmp_path)
    ca = trustme.CA()
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=2)
    expired = issue(ca, d, "expired", "www.test.com", not_before=past - datetime.timedelta(days=90),
                    not_after=past)
    a = issue(ca, d, "a", "api.test.com")
    b = issue(ca, d, "b", "api.test.com")
    other = issue(ca, d, "other", "other.test")
    config = write_config(d, f"""
        from cdnpull.config import Certificate, Domain, IPOrigin
        origin = IPOrigin(["127.0.0.2"])
        domains = [
            Domain("www.test.com", origin=origin, certificate=Certificate({expired.cert_file!r}, {expired.key_file!r})),
            Domain("api.test.com", origin=origin, certificate=Certificate({a.cert_file!r}, {b.key_file!r})),
            Domain("cdn.test.com", origin=origin, certificate=Certificate({other.cert_file!r}, {other.key_file!r})),
        ]
        """)
    expected = [
        f"www.test.com: certificate.cert_file: {expired.cert_file!r} expired on {past:%Y-%m-%d}",
        f"api.test.com: certificate.key_file: {b.key_file!r} does not match the certificate in "
        f"{a.cert_file!r}",
        f"cdn.test.com: certificate: {other.cert_file!r} does not cover cdn.test.com "
        "(its names: other.test)",
    ]
    for result in (run_check(config, d), run_twistd(config, d)):
        assert result.returncode == 1
        errors = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(errors) == 1, result.stderr
        assert errors[0].startswith("cdnpull: config error: ")
        for part in expected:
            assert part in errors[0]


def test_check_describes_https(tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = str(tmp_path)
    ca = trustme.CA()
    www = issue(ca, d, "www", "www.test.com")
    config = write_config(d, f"""
        from cdnpull.config import Certificate, Domain, IPOrigin, Settings
        settings = Settings(listen=["tcp:8080", "tls:8443"])
        domains = [Domain("www.test.com", origin=IPOrigin(["127.0.0.2"]), https_only=True,
                          hsts="max-age=600",
                          certificate=Certificate({www.cert_file!r}, {www.key_file!r}))]
        """)
    result = run_check(config, d)
    assert result.returncode == 0, result.stderr
    assert f"https: certificate {www.cert_file} (www.test.com, from the domain" in result.stdout
    assert "https only (plain http gets 301); hsts max-age=600" in result.stdout


# -- SIGHUP -------------------------------------------------------------------------


def _wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest_twisted.ensureDeferred
async def test_sighup_swaps_certificates_for_new_handshakes_and_keeps_open_connections(tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = str(tmp_path)
    ca = trustme.CA()
    ca_file = os.path.join(d, "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    live = os.path.join(d, "live")
    os.mkdir(live)
    first = issue(ca, d, "first", "www.test.com")
    second = issue(ca, d, "second", "www.test.com")
    cert_file, key_file = os.path.join(live, "www.pem"), os.path.join(live, "www.key")

    def install(cert) -> None:  # type: ignore[no-untyped-def]
        for src, dst in ((cert.cert_file, cert_file), (cert.key_file, key_file)):
            with open(src, "rb") as f, open(dst + ".tmp", "wb") as out:
                out.write(f.read())
            os.replace(dst + ".tmp", dst)

    install(first)
    origin = Origin("127.0.0.2", "origin").start()
    origin.routes["*"] = lambda r: b"hello " + r.uri
    config = write_config(d, f"""
        from cdnpull.config import Certificate, Domain, IPOrigin
        domains = [Domain("www.test.com", origin=IPOrigin(["{origin.addr}"]), probe=None,
                          certificate=Certificate({cert_file!r}, {key_file!r}))]
        """)
    port = free_port()
    cdn = await cdn_started(config, d, "--listen", f"tls:{port}:interface=127.0.0.1")
    try:
        kept = await deferToThread(TLSClient, port, "www.test.com", ca_file)
        try:
            status, _, body = await deferToThread(kept.request, "/one", "www.test.com")
            assert (status, body) == (200, b"hello /one")
            assert kept.peer == leaf_der(first.cert_file)

            # Renewed in place, then SIGHUP.
            install(second)
            cdn.proc.send_signal(signal.SIGHUP)
            await deferToThread(_wait_for, lambda: "reloaded " in cdn.log())
            assert await deferToThread(handshake, port, "www.test.com") == leaf_der(second.cert_file)
            # The open keep-alive connection goes on, on its first certificate.
            status, _, body = await deferToThread(kept.request, "/two", "www.test.com")
            assert (status, body) == (200, b"hello /two")
            assert kept.peer == leaf_der(first.cert_file)

            # A broken renewal (the key of another certificate) is refused;
            # the running certificate stays.
            with open(key_file, "wb") as out, open(first.key_file, "rb") as f:
                out.write(f.read())
            cdn.proc.send_signal(signal.SIGHUP)
            await deferToThread(_wait_for, lambda: "reload of" in cdn.log())
            assert "www.test.com: certificate.key_file" in cdn.log()
            assert await deferToThread(handshake, port, "www.test.com") == leaf_der(second.cert_file)
            status, _, body = await deferToThread(kept.request, "/three", "www.test.com")
            assert (status, body) == (200, b"hello /three")
        finally:
            kept.close()
        assert "Traceback" not in cdn.log()
    finally:
        cdn.stop()
        await origin.stop()


# -- replacing a certificate through the admin API --------------------------------


@pytest_twisted.ensureDeferred
async def test_admin_api_replaces_a_certificate_checked_persisted_and_kept(tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = str(tmp_path)
    ca = trustme.CA()
    module_cert = issue(ca, d, "module", "www.test.com")
    config = write_config(d, f"""
        from cdnpull.config import Certificate, Domain, IPOrigin
        domains = [Domain("www.test.com", origin=IPOrigin(["127.0.0.2"]), probe=None,
                          certificate=Certificate({module_cert.cert_file!r}, {module_cert.key_file!r})),
                   Domain("other.test", origin=IPOrigin(["127.0.0.2"]), probe=None)]
        """)
    new = ca.issue_cert("www.test.com")
    body = {"cert_pem": "".join(p.bytes().decode() for p in new.cert_chain_pems),
            "key_pem": new.private_key_pem.bytes().decode()}
    new_der = leaf_der_of(new)
    port = free_port()

    def start():  # type: ignore[no-untyped-def]
        return start_cdn(config, d, "--listen", f"tls:{port}:interface=127.0.0.1", admin=True)

    cdn = start()
    try:
        admin = Client(cdn.admin_url)
        url = "/api/domains/www.test.com/certificate"
        # Refused, each with one line naming the field; nothing changes.
        past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
        expired = ca.issue_cert("www.test.com", not_before=past - datetime.timedelta(days=9),
                                not_after=past)
        other = ca.issue_cert("other.test")
        cases = [
            ({"cert_pem": body["cert_pem"]}, 'body: must be {"cert_pem"'),
            ({"cert_pem": "junk", "key_pem": body["key_pem"]},
             "certificate.cert_pem: cert_pem holds no valid PEM certificate"),
            ({"cert_pem": body["cert_pem"], "key_pem": other.private_key_pem.bytes().decode()},
             "certificate.key_pem: key_pem does not match the certificate in cert_pem"),
            ({"cert_pem": expired.cert_chain_pems[0].bytes().decode(),
              "key_pem": expired.private_key_pem.bytes().decode()},
             "certificate.cert_pem: cert_pem expired on "),
            ({"cert_pem": other.cert_chain_pems[0].bytes().decode(),
              "key_pem": other.private_key_pem.bytes().decode()},
             "certificate.cert_pem: does not cover www.test.com (its names: other.test)"),
        ]
        for bad, message in cases:
            status, answer = await admin.api("PUT", url, bad)
            assert status == 400 and answer["error"].startswith(message), answer
        status, _ = await admin.api("PUT", "/api/domains/nope.test/certificate", body)
        assert status == 404
        assert await deferToThread(handshake, port, "www.test.com") == leaf_der(module_cert.cert_file)

        status, answer = await admin.api("PUT", url, body)
        assert status == 200, answer
        assert answer["https"]["certificate"]["source"] == "admin"
        assert await deferToThread(handshake, port, "www.test.com") == new_der
        store = os.path.join(d, "state.json.certs")
        assert os.stat(store).st_mode & 0o777 == 0o700
        assert sorted(os.listdir(store)) == ["www.test.com.key", "www.test.com.pem"]
        for name in os.listdir(store):
            assert os.stat(os.path.join(store, name)).st_mode & 0o777 == 0o600

        # Kept across a reload and a restart.
        cdn.proc.send_signal(signal.SIGHUP)
        await deferToThread(_wait_for, lambda: "reloaded " in cdn.log())
        assert await deferToThread(handshake, port, "www.test.com") == new_der
        cdn.stop()
        cdn = start()
        assert await deferToThread(handshake, port, "www.test.com") == new_der

        # Deleted: back to the config module's.
        status, answer = await Client(cdn.admin_url).api("DELETE", url)
        assert status == 200 and answer["https"]["certificate"]["source"] == "domain"
        assert await deferToThread(handshake, port, "www.test.com") == leaf_der(module_cert.cert_file)
        assert os.listdir(store) == []
        assert "Traceback" not in cdn.log()
    finally:
        cdn.stop()


def leaf_der_of(leaf) -> bytes:  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.serialization import Encoding

    return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).public_bytes(Encoding.DER)


@pytest_twisted.ensureDeferred
async def test_a_client_that_never_finishes_its_handshake_is_dropped(tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = str(tmp_path)
    www = issue(trustme.CA(), d, "www", "www.test.com")
    config = write_config(d, f"""
        from cdnpull.config import Certificate, Domain, IPOrigin, Settings
        settings = Settings(client_header_timeout=1)
        domains = [Domain("www.test.com", origin=IPOrigin(["127.0.0.2"]), probe=None,
                          certificate=Certificate({www.cert_file!r}, {www.key_file!r}))]
        """)
    port = free_port()
    cdn = await cdn_started(config, d, "--listen", f"tls:{port}:interface=127.0.0.1")

    def silent() -> tuple[float, bool]:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, then nothing
            try:
                closed = s.recv(1024) == b""
            except ConnectionResetError:
                closed = True
        return time.monotonic() - started, closed

    try:
        elapsed, closed = await deferToThread(silent)
        assert closed and 0.5 < elapsed < 15
        assert "Traceback" not in cdn.log()
    finally:
        cdn.stop()


def test_handshake_deadlines_are_one_sweep_for_all_connections() -> None:
    from twisted.internet.protocol import Protocol
    from twisted.internet.task import Clock

    from cdnpull.tlsserver import ByALPN

    class Site:
        def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
            return Protocol()

    class Transport:
        aborted = False

        def abortConnection(self) -> None:
            self.aborted = True

    clock = Clock()
    factory = ByALPN(Site(), clock, handshake_timeout=2.0)
    conns = []
    for _ in range(50):
        proto, transport = factory.buildProtocol(None), Transport()
        proto.makeConnection(transport)
        conns.append((proto, transport))
    assert len(clock.getDelayedCalls()) == 1  # not a timer per connection
    clock.advance(1.0)
    conns[0][0].handshakeCompleted()
    conns[1][0].connectionLost()
    clock.advance(0.5)
    assert not any(t.aborted for _, t in conns)
    clock.advance(0.5)  # the deadline, on a sweep
    assert [t.aborted for _, t in conns] == [False, False] + [True] * 48
    for proto, _ in conns[2:]:
        proto.connectionLost()
    assert clock.getDelayedCalls() == []
