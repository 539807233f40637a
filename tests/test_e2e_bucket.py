"""
Bucket origins against a real S3 server (SeaweedFS) and a real
C{twistd cdnpull}: public buckets in both styles, a private bucket with
SigV4, refusals, odd keys and ranges.
"""

from __future__ import annotations

import os
import socket
import subprocess
from urllib.parse import quote

import pytest
import pytest_twisted

from .seaweed import ACCESS_KEY, DOMAIN, SECRET_KEY, start_weed
from .support import TWISTD, Client, DNSServer, cdn_started, write_config

pytestmark = pytest.mark.timeout(120)

ODD_KEYS = ["odd dir/a+b~c%d é.txt", "plus+sign", "100%.txt", "ünï/cödé.bin", "sp ace", "a=b&c;d"]
BIG = bytes(range(256)) * 64  # 16 KiB


@pytest.fixture(scope="module")
def weed(tmp_path_factory):  # type: ignore[no-untyped-def]
    w = start_weed(str(tmp_path_factory.mktemp("weed")))
    c = w.client()
    c.put_object(Bucket="public", Key="hello.txt", Body=b"hello public", ContentType="text/plain")
    c.put_object(Bucket="public", Key="big.bin", Body=BIG)
    c.put_object(Bucket="private", Key="secret.txt", Body=b"hello private")
    for key in ODD_KEYS:
        c.put_object(Bucket="public", Key=key, Body=key.encode("utf-8"))
    yield w
    w.stop()


@pytest_twisted.async_yield_fixture(scope="module")
async def node(tmp_path_factory, weed):  # type: ignore[no-untyped-def]
    d = tmp_path_factory.mktemp("bucket-node")
    dns = DNSServer({DOMAIN: ["127.0.0.1"]})
    os.environ["PRIV_ACCESS_KEY_ID"] = ACCESS_KEY
    os.environ["PRIV_SECRET_ACCESS_KEY"] = SECRET_KEY
    config = write_config(str(d), f"""
        from cdnpull.config import BucketOrigin, Domain, S3Credentials, Settings
        settings = Settings(nameservers=["{dns.addr}"])
        ep, virt = "{weed.endpoint}", "http://{DOMAIN}:{weed.port}"
        domains = [
            Domain("vpub.test.com", origin=BucketOrigin(virt, "public", style="virtual"), probe=None),
            Domain("ppub.test.com", origin=BucketOrigin(ep, "public", style="path"), probe=None),
            Domain("priv.test.com", origin=BucketOrigin(virt, "private", style="virtual",
                   credentials=S3Credentials.from_env("PRIV")), probe=None),
            Domain("ppriv.test.com", origin=BucketOrigin(ep, "private", style="path",
                   credentials=S3Credentials("{ACCESS_KEY}", "{SECRET_KEY}")), probe=None),
            Domain("anon.test.com", origin=BucketOrigin(ep, "private", style="path"), probe=None),
            Domain("wrong.test.com", origin=BucketOrigin(ep, "private", style="path",
                   credentials=S3Credentials("{ACCESS_KEY}", "not-the-secret")), probe=None),
        ]
        """)
    try:
        cdn = await cdn_started(config, str(d))
    finally:
        del os.environ["PRIV_ACCESS_KEY_ID"], os.environ["PRIV_SECRET_ACCESS_KEY"]
    yield cdn, Client(cdn.url)
    cdn.stop()
    await dns.stop()


@pytest.mark.parametrize("host", ["vpub.test.com", "ppub.test.com"])
@pytest_twisted.ensureDeferred
async def test_public_bucket_in_both_styles(node, host):  # type: ignore[no-untyped-def]
    cdn, client = node
    response, body = await client.get("/hello.txt", host=host)
    assert (response.code, body) == (200, b"hello public")
    names = {k.lower() for k, _ in response.headers.getAllRawHeaders()}
    assert not any(n.startswith((b"x-amz-", b"seaweed-")) for n in names), names
    assert response.headers.getRawHeaders("content-type") == ["text/plain"]


@pytest.mark.parametrize("host", ["priv.test.com", "ppriv.test.com"])
@pytest_twisted.ensureDeferred
async def test_private_bucket_with_credentials(node, host):  # type: ignore[no-untyped-def]
    cdn, client = node
    response, body = await client.get("/secret.txt", host=host,
                                      headers={"Cookie": "a=b", "Authorization": "Basic eDp5"})
    assert (response.code, body) == (200, b"hello private")


@pytest_twisted.ensureDeferred
async def test_private_bucket_without_credentials_passes_the_403(node):  # type: ignore[no-untyped-def]
    cdn, client = node
    response, body = await client.get("/secret.txt", host="anon.test.com")
    assert response.code == 403
    assert b"hello private" not in body


@pytest_twisted.ensureDeferred
async def test_wrong_secret_is_a_403_and_a_log_line(node):  # type: ignore[no-untyped-def]
    cdn, client = node
    response, body = await client.get("/secret.txt", host="wrong.test.com")
    assert response.code == 403
    assert b"SignatureDoesNotMatch" in body
    assert "wrong.test.com: bucket private at" in cdn.log()
    assert "refused our signature (SignatureDoesNotMatch)" in cdn.log()


@pytest.mark.parametrize("key", ODD_KEYS)
@pytest_twisted.ensureDeferred
async def test_odd_keys_survive_intact(node, key):  # type: ignore[no-untyped-def]
    cdn, client = node
    path = "/" + quote(key.encode("utf-8"), safe="/")
    for host in ("vpub.test.com", "ppub.test.com"):
        response, body = await client.get(path, host=host)
        assert (response.code, body) == (200, key.encode("utf-8")), (host, path)


@pytest_twisted.ensureDeferred
async def test_range_is_passed_through(node):  # type: ignore[no-untyped-def]
    cdn, client = node
    for host in ("vpub.test.com", "ppriv.test.com"):
        if host == "ppriv.test.com":
            path = "/secret.txt"
            want = b"hello private"[2:6]
        else:
            path, want = "/big.bin", BIG[1000:2000]
        rng = "bytes=2-5" if host == "ppriv.test.com" else "bytes=1000-1999"
        response, body = await client.get(path, host=host, headers={"Range": rng})
        assert response.code == 206, body
        assert body == want
        assert response.headers.getRawHeaders("content-range")[0].startswith("bytes ")


@pytest_twisted.ensureDeferred
async def test_several_ranges_never_make_a_bucket_send_the_whole_object(node, weed):  # type: ignore[no-untyped-def]
    # S3 and SeaweedFS answer several ranges with the whole object (200), and
    # bytes=0-0, with a 416: a bucket is asked for one range.
    cdn, client = node
    data = os.urandom(4 * 1024 * 1024)
    cases = {
        "bytes=0-0,2-2": (0, 2),  # close together: the range that covers them
        "bytes=0-0, 1-1": (0, 1),
        "bytes=0-0,": (0, 0),
        "bytes=0-0, 4000000-4000001": (0, 0),  # far apart: the first range only
        "bytes=0-0,-1": (0, 0),
    }
    for i, (rng, (first, last)) in enumerate(cases.items()):
        weed.client().put_object(Bucket="public", Key=f"ranges{i}.bin", Body=data)
        response, body = await client.get(f"/ranges{i}.bin", host="ppub.test.com",
                                          headers={"Range": rng})
        assert (response.code, len(body)) == (206, last - first + 1), rng
        assert body == data[first:last + 1]
        assert response.headers.getRawHeaders("content-range") == [
            f"bytes {first}-{last}/{len(data)}"]


@pytest_twisted.ensureDeferred
async def test_other_methods_listings_and_escapes_are_refused(node):  # type: ignore[no-untyped-def]
    cdn, client = node
    response, _ = await client.get("/hello.txt", host="ppub.test.com", method="POST", data=b"x")
    assert response.code == 405
    assert response.headers.getRawHeaders("allow") == ["GET, HEAD"]
    response, body = await client.get("/", host="ppub.test.com")
    assert response.code == 404 and b"ListBucketResult" not in body
    # A raw request line, so that no client library normalises the dots.
    for target in ("/../private/secret.txt", "/%2e%2e/private/secret.txt"):
        with socket.create_connection(("127.0.0.1", cdn.port), timeout=5) as s:
            s.sendall(f"GET {target} HTTP/1.1\r\nHost: ppub.test.com\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
        assert b"hello private" not in answer


def test_missing_credential_variable_fails_at_load_naming_it(tmp_path):  # type: ignore[no-untyped-def]
    config = write_config(str(tmp_path), """
        from cdnpull.config import BucketOrigin, Domain, S3Credentials
        domains = [Domain("s.test.com", origin=BucketOrigin("http://127.0.0.1:9", "bk1", style="path",
                          credentials=S3Credentials.from_env("NOPE_CDNPULL")))]
        """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOPE_CDNPULL")}
    result = subprocess.run([TWISTD, "-n", "--pidfile=", "cdnpull", "--config", config,
                             "--listen", "tcp:0", "--admin", "none"],
                            capture_output=True, text=True, timeout=30, cwd=str(tmp_path), env=env)
    assert result.returncode == 1
    out = (result.stdout + result.stderr).strip()
    assert "Traceback" not in out
    assert ("cdnpull: config error: s.test.com: origin.credentials: environment variable "
            "NOPE_CDNPULL_ACCESS_KEY_ID, NOPE_CDNPULL_SECRET_ACCESS_KEY is not set") in out
