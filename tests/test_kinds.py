"""
The origin-kind adapters: each kind answers the questions the rest of the
node asks, so that nothing outside cdnpull/origins/ tells the kinds apart.
"""

from twisted.web.http_headers import Headers

from cdnpull.config import Address, BucketOrigin, Domain, DomainOrigin, IPOrigin, Probe, S3Credentials
from cdnpull.origins.kinds import kind_of, origin_from_json, origin_to_json

IPS = IPOrigin(("127.0.0.2", "127.0.0.3:8080"), port=8001, scheme="follow")
NAME = DomainOrigin("origin.test", port=8443, scheme="https")
BUCKET = BucketOrigin("http://127.0.0.5:8333", "media", style="path",
                      credentials=S3Credentials("AK", "SK"))


def test_scheme_follows_the_client_except_for_a_bucket():
    assert kind_of(IPS).scheme("https") == "https"
    assert kind_of(NAME).scheme("http") == "https"
    assert kind_of(BUCKET).scheme("https") == "http"


def test_addresses_known_statically_or_resolved():
    assert kind_of(IPS).static_addresses() == [Address("127.0.0.2", 8001), Address("127.0.0.3", 8080)]
    assert kind_of(IPS).resolve_name() is None
    assert kind_of(NAME).static_addresses() is None and kind_of(NAME).resolve_name() == "origin.test"
    assert kind_of(NAME).port == 8443
    assert kind_of(BUCKET).static_addresses() == [Address("127.0.0.5", 8333)]
    assert kind_of(BUCKET).resolve_name() is None
    named_bucket = BucketOrigin("https://s3.example.test", "media")
    assert kind_of(named_bucket).resolve_name() == "s3.example.test"


def test_prepare_sets_host_or_signs_for_a_bucket():
    domain = Domain("www.test", IPS, origin_host="origin-host.test")
    headers = Headers({b"cookie": [b"a=1"]})
    target, host, out = kind_of(IPS).prepare(domain, b"GET", b"/a?b", headers, "www.test", 0.0)
    assert (target, host) == (b"/a?b", "origin-host.test")
    assert out.getRawHeaders(b"host") == [b"origin-host.test"] and out.getRawHeaders(b"cookie")
    assert headers.getRawHeaders(b"host") is None  # the client's headers are not changed
    target, host, out = kind_of(BUCKET).prepare(domain, b"GET", b"/a?b", headers, "www.test", 0.0)
    assert (target, host) == (b"/media/a", "127.0.0.5:8333")
    assert out.getRawHeaders(b"cookie") is None
    assert out.getRawHeaders(b"authorization")[0].startswith(b"AWS4-HMAC-SHA256 ")


def test_probe_host_and_methods():
    wildcard = Domain("*.w.test", IPS, probe=Probe())
    assert kind_of(IPS).probe_host(wildcard) == "w.test"
    assert kind_of(IPS).probe_host(Domain("*.w.test", IPS, probe=Probe(host="p.test"))) == "p.test"
    assert kind_of(BUCKET).probe_host(wildcard) == "127.0.0.5:8333"
    assert kind_of(IPS).methods is None and kind_of(BUCKET).methods == (b"GET", b"HEAD")
    assert kind_of(IPS).sends_client_name(wildcard)
    assert not kind_of(BUCKET).sends_client_name(wildcard)


def test_json_round_trip_and_clear_text_signing():
    for origin in (IPS, NAME):
        assert origin_from_json(origin_to_json(origin), "origin") == origin
    assert kind_of(IPS).status_json()["configured_addresses"] == ["127.0.0.2", "127.0.0.3:8080"]
    assert kind_of(BUCKET).signs_in_clear()
    assert not kind_of(BucketOrigin("https://127.0.0.5", "media", style="path",
                                    credentials=S3Credentials("AK", "SK"))).signs_in_clear()


def test_only_a_bucket_is_asked_for_one_range_instead_of_several():
    assert kind_of(IPS).several_ranges and kind_of(NAME).several_ranges
    assert not kind_of(BUCKET).several_ranges
