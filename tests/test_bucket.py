"""How a client request becomes a bucket request (no network)."""

from __future__ import annotations

import calendar

import pytest
from twisted.web.http_headers import Headers

from cdnpull.config import BucketOrigin, S3Credentials
from cdnpull.errors import EdgeError
from cdnpull.origins.bucket import object_path, prepare_bucket, strip_store_headers
from cdnpull.origins.sigv4 import sign

NOW = calendar.timegm((2026, 11, 29, 3, 0, 0))


@pytest.mark.parametrize("target,key", [
    (b"/hello.txt", b"hello.txt"),
    (b"/odd%20dir/a+b~c%25d%20%C3%A9.txt", b"odd%20dir/a%2Bb~c%25d%20%C3%A9.txt"),
    (b"/a%2Fb", b"a/b"),
    (b"/x.jpg?v=1&acl", b"x.jpg"),
    (b"/dir//file", b"dir//file"),
])
def test_keys_are_decoded_once_and_encoded_once(target, key):  # type: ignore[no-untyped-def]
    assert object_path(target) == key


@pytest.mark.parametrize("target,status", [
    (b"/", 404), (b"/?list-type=2", 404), (b"/../private/x", 400), (b"/a/%2e%2e/b", 400),
    (b"/a/./b", 400), (b"/a%00b", 400),
])
def test_listings_and_dot_segments_are_refused(target, status):  # type: ignore[no-untyped-def]
    with pytest.raises(EdgeError) as e:
        object_path(target)
    assert e.value.status == status


def client_headers() -> Headers:
    return Headers({b"cookie": [b"session=1"], b"authorization": [b"Basic eDp5"],
                    b"range": [b"bytes=0-9"], b"if-none-match": [b'"abc"'],
                    b"x-forwarded-for": [b"10.0.0.1"], b"user-agent": [b"curl"]})


def test_virtual_style_public_bucket():
    origin = BucketOrigin(endpoint="https://cos.ap-guangzhou.myqcloud.com", bucket="examplebucket-1250000000")
    path, host, headers = prepare_bucket(origin, b"GET", b"/img/a%20b.jpg", client_headers(), NOW)
    assert path == b"/img/a%20b.jpg"
    assert host == "examplebucket-1250000000.cos.ap-guangzhou.myqcloud.com"
    assert headers.getRawHeaders(b"host") == [host.encode()]
    names = {k.lower() for k, _ in headers.getAllRawHeaders()}
    assert names == {b"host", b"range", b"if-none-match", b"user-agent"}


def test_path_style_with_port_and_signature():
    creds = S3Credentials("AKIDEXAMPLE", "SECRET")
    origin = BucketOrigin(endpoint="http://127.0.0.1:8333", bucket="private", style="path",
                          region="eu-west-1", credentials=creds)
    path, host, headers = prepare_bucket(origin, b"HEAD", b"/k%2B1", client_headers(), NOW)
    assert path == b"/private/k%2B1"
    assert host == "127.0.0.1:8333"
    expected = sign(method="HEAD", path="/private/k%2B1", headers={"host": host},
                    access_key="AKIDEXAMPLE", secret_key="SECRET", region="eu-west-1", now=NOW)
    assert headers.getRawHeaders(b"authorization") == [expected["authorization"].encode()]
    assert headers.getRawHeaders(b"x-amz-date") == [b"20261129T030000Z"]
    assert b"cookie" not in {k.lower() for k, _ in headers.getAllRawHeaders()}
    # The client's Authorization never reaches the bucket; ours does.
    assert headers.getRawHeaders(b"authorization")[0].startswith(b"AWS4-HMAC-SHA256 ")


def test_session_token_is_sent_and_signed():
    creds = S3Credentials("A", "S", session_token="TOKEN")
    origin = BucketOrigin(endpoint="http://s3.test", bucket="b1", credentials=creds)
    _, _, headers = prepare_bucket(origin, b"GET", b"/k", Headers(), NOW)
    assert headers.getRawHeaders(b"x-amz-security-token") == [b"TOKEN"]
    assert b"x-amz-security-token" in headers.getRawHeaders(b"authorization")[0]


def test_store_headers_are_stripped():
    h = Headers({b"x-amz-request-id": [b"1"], b"Seaweed-X-Amz-Owner": [b"admin"],
                 b"x-cos-request-id": [b"2"], b"content-type": [b"text/plain"], b"etag": [b'"e"']})
    strip_store_headers(h)
    assert sorted(k.lower() for k, _ in h.getAllRawHeaders()) == [b"content-type", b"etag"]
