"""The SigV4 signer against AWS's published example and against botocore."""

from __future__ import annotations

import calendar
import random
import time

import pytest

from cdnpull.origins.sigv4 import EMPTY_SHA256, sign

AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
MAY_24_2013 = calendar.timegm((2013, 5, 24, 0, 0, 0))


def test_aws_documentation_example_get_object():
    # "Example: GET Object" of the S3 SigV4 header-auth documentation.
    out = sign(method="GET", path="/test.txt",
               headers={"Host": "examplebucket.s3.amazonaws.com", "Range": "bytes=0-9"},
               access_key=AWS_KEY, secret_key=AWS_SECRET, region="us-east-1", now=MAY_24_2013)
    assert out["x-amz-date"] == "20130524T000000Z"
    assert out["x-amz-content-sha256"] == EMPTY_SHA256
    assert out["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")


def test_signing_time_comes_from_the_caller():
    a = sign(method="GET", path="/k", headers={"host": "b.s3.test"}, access_key="A",
             secret_key="S", region="r", now=0.0)
    b = sign(method="GET", path="/k", headers={"host": "b.s3.test"}, access_key="A",
             secret_key="S", region="r", now=86400.0)
    assert a["x-amz-date"] == "19700101T000000Z" and b["x-amz-date"] == "19700102T000000Z"
    assert a["authorization"] != b["authorization"]


@pytest.mark.parametrize("seed", range(20))
def test_same_signature_as_botocore(seed):  # type: ignore[no-untyped-def]

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from urllib.parse import quote

    rng = random.Random(seed)
    alphabet = "abcXYZ019 +~%é/-_.!*'()&=$@"
    key = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 30))).strip("/") or "k"
    path = "/" + quote(key.encode("utf-8"), safe="/-_.~")
    host = rng.choice(["bucket.s3.test:8333", "s3.test", "examplebucket.s3.amazonaws.com"])
    method = rng.choice(["GET", "HEAD"])
    token = rng.choice([None, "TOKEN/abc=="])
    creds = Credentials("AKIDEXAMPLE", "SECRET/xyz+" + str(seed), token)
    request = AWSRequest(method=method, url=f"http://{host}{path}", headers={"host": host})
    request.context["payload_signing_enabled"] = True
    S3SigV4Auth(creds, "s3", "eu-west-1").add_auth(request)
    # botocore reads the wall clock; sign at the moment it chose.
    now = calendar.timegm(time.strptime(request.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
    ours = sign(method=method, path=path, headers={"host": host}, access_key="AKIDEXAMPLE",
                secret_key="SECRET/xyz+" + str(seed), region="eu-west-1", now=now,
                session_token=token)
    assert request.headers["X-Amz-Date"] == ours["x-amz-date"]
    assert request.headers["Authorization"] == ours["authorization"], (key, path)
