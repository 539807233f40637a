"""
The admin listener's rules that need no network: which admin endpoints count
as loopback, the Settings fields behind the admin (admin_hosts, credentials),
JSON bodies, the credentials an API change may name, and the warning for
signing over plain http.
"""

from __future__ import annotations

import pytest
from twisted.logger import globalLogPublisher

from cdnpull.admin.api import _HTTPError, console_policy, parse_json_body
from cdnpull.config import (BucketOrigin, ConfigError, Domain, IPOrigin, S3Credentials, Settings,
                            admin_is_loopback, validate)
from cdnpull.loader import load_config
from cdnpull.admin.state import BadRequest, StateFile, origin_from_json, origin_to_json

from .support import write_config

DOMAINS = [Domain("www.test.com", origin=IPOrigin(["127.0.0.2"]), probe=None)]


@pytest.mark.parametrize("endpoint,local", [
    ("tcp:8081:interface=127.0.0.1", True),
    ("tcp:8081:interface=127.0.0.5", True),
    ("tcp:8081:127.0.0.1", True),
    ("tcp6:8081:interface=\\:\\:1", True),
    ("unix:/run/cdnpull/admin.sock", True),
    ("tcp:8081", False),
    ("tcp:8081:interface=0.0.0.0", False),
    ("tcp:8081:interface=192.0.2.10", False),
    ("tcp6:8081", False),
    ("tcp6:8081:interface=\\:\\:", False),
    ("tcp:8081:interface=localhost", False),
    ("ssl:8443:privateKey=k.pem", False),
    ("systemd:domain=INET:index=0", False),
])
def test_which_admin_endpoints_are_loopback(endpoint, local):  # type: ignore[no-untyped-def]
    assert admin_is_loopback(endpoint) is local


def test_a_non_loopback_admin_needs_a_token_file(tmp_path):  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as e:
        validate(DOMAINS, Settings(admin="tcp:8081"))
    assert str(e.value) == ("settings.admin_token_file: required when the admin listener "
                            "('tcp:8081') is not on a loopback interface")
    token = tmp_path / "token"
    token.write_text("t\n")
    validate(DOMAINS, Settings(admin="tcp:8081", admin_token_file=str(token)))
    validate(DOMAINS, Settings(admin=None))
    validate(DOMAINS, Settings())


def test_admin_hosts_are_normalised_and_checked():  # type: ignore[no-untyped-def]
    assert Settings(admin_hosts=["CDN-Admin.Example.", "x.test"]).admin_hosts == (
        "cdn-admin.example", "x.test")
    assert Settings(admin_hosts="one.test").admin_hosts == ("one.test",)
    with pytest.raises(ConfigError) as e:
        validate(DOMAINS, Settings(admin_hosts=["ok.test", "bad_name!"]))
    assert "settings.admin_hosts[1]: 'bad_name!' is not a valid hostname" in str(e.value)


def test_credentials_are_declared_by_name(monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("STATIC_ACCESS_KEY_ID", "AK")
    monkeypatch.setenv("STATIC_SECRET_ACCESS_KEY", "SK")
    monkeypatch.delenv("GONE_ACCESS_KEY_ID", raising=False)
    s = Settings(credentials={"STATIC": S3Credentials.from_env("STATIC")})
    assert s.credentials["STATIC"].name == "STATIC"
    assert s.credentials["STATIC"] == S3Credentials.from_env("STATIC")  # the name is not the keys
    hash(s)
    validate(DOMAINS, s)
    for creds, why in [
        ({"GONE": S3Credentials.from_env("GONE")},
         "settings.credentials['GONE']: environment variable GONE_ACCESS_KEY_ID"),
        ({"bad name": S3Credentials("a", "b")}, "settings.credentials: 'bad name' is not a name"),
        ({"X": "AKID"}, "settings.credentials['X']: must be S3Credentials"),
        ({"X": S3Credentials("", "b")}, "settings.credentials['X']: access_key and secret_key"),
        (["X"], "settings.credentials: must be a dict"),
    ]:
        with pytest.raises(ConfigError) as e:
            validate(DOMAINS, Settings(credentials=creds))
        assert why in str(e.value)


def test_a_module_bucket_with_declared_keys_carries_their_name():  # type: ignore[no-untyped-def]
    keys = S3Credentials("AK", "SK")
    other = S3Credentials("AK2", "SK2")
    config = validate([
        Domain("a.test", origin=BucketOrigin("https://s3.test", "bucket-a", credentials=keys)),
        Domain("b.test", origin=BucketOrigin("https://s3.test", "bucket-b", credentials=other)),
    ], Settings(credentials={"STATIC": keys}))
    a, b = config.domains
    assert origin_to_json(a.origin)["credentials"] == "STATIC"
    assert "credentials" not in origin_to_json(b.origin) and origin_to_json(b.origin)["signed"]


BUCKET = {"type": "bucket", "endpoint": "https://s3.test", "bucket": "bucket-a"}


def test_an_api_bucket_may_name_only_declared_keys(monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "PROCESS")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "PROCESS-SECRET")
    declared = Settings(credentials={"STATIC": S3Credentials("AK", "SK")}).credentials
    origin = origin_from_json(dict(BUCKET, credentials="STATIC"), "origin", declared)
    assert origin.credentials.access_key == "AK" and origin.credentials.name == "STATIC"
    assert origin_from_json(dict(BUCKET, credentials=None), "origin", declared).credentials is None
    assert origin_from_json(BUCKET, "origin", declared).credentials is None
    messages = []
    for body in (dict(BUCKET, credentials="AWS"), dict(BUCKET, credentials="NOT_SET")):
        with pytest.raises(BadRequest) as e:
            origin_from_json(body, "origin", declared)
        messages.append(str(e.value).replace("AWS", "N").replace("NOT_SET", "N"))
    assert messages[0] == messages[1]  # nothing about what the environment holds
    for body in (dict(BUCKET, credentials_env="AWS"), dict(BUCKET, credentials=1),
                 dict(BUCKET, signed=True)):
        with pytest.raises(BadRequest) as e:
            origin_from_json(body, "origin", declared)
        assert str(e.value).startswith("origin.credentials")
        assert "environment" not in str(e.value) and "PROCESS" not in str(e.value)


def test_a_state_entry_naming_undeclared_keys_is_dropped_alone(tmp_path):  # type: ignore[no-untyped-def]
    import json

    bases = {d.name: d for d in [Domain("a.test", origin=IPOrigin(["127.0.0.2"]), probe=None),
                                 Domain("b.test", origin=IPOrigin(["127.0.0.2"]), probe=None)]}
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"version": 1, "domains": {
        "a.test": {"origin": dict(BUCKET, credentials="GONE"), "standby": None},
        "b.test": {"origin": {"type": "ips", "addresses": ["127.0.0.3"]}, "standby": None}}}))
    events: list = []
    globalLogPublisher.addObserver(events.append)
    try:
        overrides = StateFile(str(path)).load(bases, {})
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert list(overrides) == ["b.test"]
    assert path.exists()  # not moved aside as corrupt
    assert any(e.get("domain") == "a.test" and "credentials" in e.get("why", "") for e in events)


def test_json_bodies():  # type: ignore[no-untyped-def]
    assert parse_json_body(b'{"a": [[["]]]]]]"]]]}') == {"a": [[["]]]]]]"]]]}
    assert parse_json_body(b"[" * 32 + b"]" * 32) is not None
    for body, why in [(b"[" * 33 + b"]" * 33, "nested deeper than 32"),
                      (b"[" * 100000, "nested deeper than 32"),
                      (b'{"a": Infinity}', "not valid JSON"), (b"\xff", "not valid JSON"),
                      (b"", "not valid JSON"), (b"]]]]", "not valid JSON")]:
        with pytest.raises(_HTTPError) as e:
            parse_json_body(body)
        assert e.value.status == 400 and why in e.value.message


def test_the_console_policy_allows_only_its_own_inline_script():  # type: ignore[no-untyped-def]
    page = (b"<html><!-- a <script> in a comment --><script>alert(1)</script><script type='module'>go()</script>"
            b"<script src='/x.js'></script></html>")
    csp = console_policy(page).decode()
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    script = csp.split("script-src")[1].split(";")[0]
    assert script.count("'sha256-") == 2 and "unsafe-inline" not in script


def test_signing_over_plain_http_is_a_warning_at_load(tmp_path):  # type: ignore[no-untyped-def]
    config = write_config(str(tmp_path), """
        from cdnpull.config import BucketOrigin, Domain, S3Credentials
        domains = [
            Domain("plain.test", origin=BucketOrigin("http://s3.test", "bucket-a",
                                                     credentials=S3Credentials("AK", "SK"))),
            Domain("tls.test", origin=BucketOrigin("https://s3.test", "bucket-b",
                                                   credentials=S3Credentials("AK", "SK"))),
            Domain("public.test", origin=BucketOrigin("http://s3.test", "bucket-c")),
        ]
        """)
    events: list = []
    globalLogPublisher.addObserver(events.append)
    try:
        load_config(config)
    finally:
        globalLogPublisher.removeObserver(events.append)
    warned = [e["domain"] for e in events if "signed over plain http" in e.get("log_format", "")]
    assert warned == ["plain.test"]


@pytest.mark.parametrize("body,field", [
    ({"type": ["ips"]}, "origin.type"),
    ({"type": {"a": 1}}, "origin.type"),
    ({"type": "bucket", "endpoint": "http://[::1", "bucket": "abc"}, "origin.endpoint"),
    ({"type": "bucket", "endpoint": "https://h\u0000", "bucket": "abc"}, "origin.endpoint"),
    ({"type": "bucket", "endpoint": "https://\u00fc.test", "bucket": "abc"}, "origin.endpoint"),
    ({"type": "bucket", "endpoint": "https://s3.test", "bucket": "abc", "region": "\u00fc"},
     "origin.region"),
    ({"type": "bucket", "endpoint": "https://s3.test", "bucket": "abc", "region": "a b"},
     "origin.region"),
])
def test_odd_admin_bodies_are_refused_naming_the_field(body, field):  # type: ignore[no-untyped-def]
    from cdnpull.admin.state import Override, apply_override, check_domain

    base = Domain("www.test.com", origin=IPOrigin(["127.0.0.2"]))
    with pytest.raises(BadRequest) as e:
        check_domain(apply_override(base, Override(origin_from_json(body, "origin", {}), None)))
    assert field in str(e.value)
