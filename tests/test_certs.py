"""
Edge certificates without a network: reading and checking the files, RFC
6125 name matching, and which certificate answers which server name.
"""

from __future__ import annotations

import datetime
import os

import pytest
import trustme

from cdnpull.certs import load_certificates, name_matches
from cdnpull.config import (Certificate, ConfigError, Domain, IPOrigin, Settings,
                            validate)

ORIGIN = IPOrigin(["127.0.0.2"])


def issue(ca: trustme.CA, directory: str, label: str, *names: str, **kw: object) -> Certificate:
    """Write a certificate (leaf + chain) and its key; return the Certificate."""
    leaf = ca.issue_cert(*names, **kw)
    cert_file = os.path.join(directory, f"{label}.pem")
    key_file = os.path.join(directory, f"{label}.key")
    with open(cert_file, "wb") as f:
        for pem in leaf.cert_chain_pems:
            f.write(pem.bytes())
    leaf.private_key_pem.write_to_path(key_file)
    return Certificate(cert_file, key_file)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def load(domains: list, settings: Settings):  # type: ignore[no-untyped-def]
    return load_certificates(validate(domains, settings))


@pytest.mark.parametrize("pattern,host,expected", [
    ("www.test.com", "WWW.test.com", True),
    ("*.img.test", "a.img.test", True),
    ("*.img.test", "a.b.img.test", False),
    ("*.img.test", "img.test", False),
    ("*.img.test", ".img.test", False),
    ("*.test", "a.test", False),          # a wildcard over a single label covers nothing
    ("a*.img.test", "ab.img.test", False),  # partial-label wildcards are not honoured
    ("www.test.com", "test.com", False),
])
def test_name_matching_follows_rfc_6125(pattern: str, host: str, expected: bool) -> None:
    assert name_matches(pattern, host) is expected


def test_selection_own_then_shared_then_default(ca: trustme.CA, tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = str(tmp_path)
    www = issue(ca, d, "www", "www.test.com")
    wild = issue(ca, d, "wild", "*.img.test")
    node = issue(ca, d, "node", "node.test")
    certs, warnings = load(
        [Domain("www.test.com", origin=ORIGIN, certificate=www),
         Domain("*.img.test", origin=ORIGIN),
         Domain("plain.test", origin=ORIGIN)],
        Settings(certificates=[wild], default_certificate=node))
    assert warnings == []
    assert certs.select("www.test.com").spec == www
    assert certs.select("WWW.TEST.COM.").spec == www
    assert certs.select("a.img.test").spec == wild
    assert certs.select("a.b.img.test").spec == node
    assert certs.select("img.test").spec == node
    assert certs.select(None).spec == node
    assert certs.select("unknown.example").spec == node
    assert [c.spec for c in certs.all()] == [www, wild, node]
    by_name = {d.name: d for d in validate([Domain("*.img.test", origin=ORIGIN),
                                            Domain("plain.test", origin=ORIGIN)]).domains}
    assert certs.for_domain(by_name["*.img.test"])[1] == "certificates"
    assert certs.for_domain(by_name["plain.test"]) == (None, "none")


def test_no_default_means_no_certificate_for_unknown_names(ca: trustme.CA, tmp_path) -> None:  # type: ignore[no-untyped-def]
    www = issue(ca, str(tmp_path), "www", "www.test.com")
    certs, _ = load([Domain("www.test.com", origin=ORIGIN, certificate=www)], Settings())
    assert certs.select("www.test.com").spec == www
    assert certs.select(None) is None
    assert certs.select("other.test") is None


def test_a_domain_certificate_not_covering_a_deeper_name_is_not_sent_for_it(  # type: ignore[no-untyped-def]
        ca: trustme.CA, tmp_path) -> None:
    # The *.img.test domain routes a.b.img.test too, but its certificate
    # does not cover that name: the default answers instead.
    d = str(tmp_path)
    wild = issue(ca, d, "wild", "*.img.test")
    node = issue(ca, d, "node", "node.test")
    certs, _ = load([Domain("*.img.test", origin=ORIGIN, certificate=wild)],
                    Settings(default_certificate=node))
    assert certs.select("a.img.test").spec == wild
    assert certs.select("a.b.img.test").spec == node


def problems(domains: list, settings: Settings = Settings()) -> str:
    with pytest.raises(ConfigError) as info:
        load(domains, settings)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_expired_mismatched_and_not_covering_are_errors_naming_domain_and_field(  # type: ignore[no-untyped-def]
        ca: trustme.CA, tmp_path) -> None:
    d = str(tmp_path)
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
    expired = issue(ca, d, "expired", "www.test.com",
                    not_before=past - datetime.timedelta(days=30), not_after=past)
    assert problems([Domain("www.test.com", origin=ORIGIN, certificate=expired)]).startswith(
        f"www.test.com: certificate.cert_file: {expired.cert_file!r} expired on ")

    a = issue(ca, d, "a", "www.test.com")
    b = issue(ca, d, "b", "www.test.com")
    mixed = Certificate(a.cert_file, b.key_file)
    assert problems([Domain("www.test.com", origin=ORIGIN, certificate=mixed)]) == (
        f"www.test.com: certificate.key_file: {b.key_file!r} does not match the certificate "
        f"in {a.cert_file!r}")

    other = issue(ca, d, "other", "other.test", "*.test.com")
    assert problems([Domain("a.b.test.com", origin=ORIGIN, certificate=other)]) == (
        f"a.b.test.com: certificate: {other.cert_file!r} does not cover a.b.test.com "
        "(its names: other.test, *.test.com)")
    # A wildcard domain needs the same wildcard, not one name under it.
    one = issue(ca, d, "one", "a.img.test")
    assert "does not cover *.img.test" in problems(
        [Domain("*.img.test", origin=ORIGIN, certificate=one)])


def test_unreadable_and_unparsable_files(ca: trustme.CA, tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = str(tmp_path)
    good = issue(ca, d, "good", "www.test.com")
    missing = Certificate(os.path.join(d, "nope.pem"), good.key_file)
    assert problems([Domain("www.test.com", origin=ORIGIN)],
                    Settings(default_certificate=missing)) == (
        f"settings.default_certificate.cert_file: {missing.cert_file!r} cannot be read: "
        "No such file or directory")
    garbage = os.path.join(d, "garbage.pem")
    with open(garbage, "w") as f:
        f.write("not a certificate\n")
    message = problems([Domain("www.test.com", origin=ORIGIN,
                               certificate=Certificate(garbage, garbage))])
    assert message == (
        f"www.test.com: certificate.cert_file: {garbage!r} holds no valid PEM certificate; "
        f"www.test.com: certificate.key_file: {garbage!r} holds no valid PEM private key")


def test_expiring_soon_is_a_warning(ca: trustme.CA, tmp_path) -> None:  # type: ignore[no-untyped-def]
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=10, hours=1)
    cert = issue(ca, str(tmp_path), "soon", "www.test.com", not_after=soon)
    _, warnings = load([Domain("www.test.com", origin=ORIGIN, certificate=cert)], Settings())
    assert warnings == [f"certificate {cert.cert_file} (www.test.com) expires in 10 days, "
                        f"on {soon:%Y-%m-%d}"]


def test_config_shapes_are_checked_without_reading_files() -> None:
    with pytest.raises(ConfigError) as info:
        validate([Domain("www.test.com", origin=ORIGIN, certificate="www.pem", https_only="yes",
                         hsts="max-age=1\r\nX-Evil: 1")],
                 Settings(listen=["tls:443:interface=127.0.0.1", "tls:https"]))
    assert str(info.value) == (
        "settings.listen[1]: 'tls:https' is not tls:PORT[:interface=ADDR][:backlog=N]; "
        "www.test.com: certificate: 'www.pem' is not a Certificate(cert_file, key_file); "
        "www.test.com: https_only: must be True or False; "
        "www.test.com: hsts: 'max-age=1\\r\\nX-Evil: 1' is not like "
        "'max-age=31536000; includeSubDomains'")
    with pytest.raises(ConfigError) as info:
        validate([Domain("www.test.com", origin=ORIGIN)], Settings(listen=["tcp:80", "tls:443"]))
    assert str(info.value) == (
        "settings.listen[1]: a tls: listener needs certificates: set default_certificate, "
        "certificates or a domain's certificate")
    validate([Domain("www.test.com", origin=ORIGIN, hsts="max-age=63072000; includeSubDomains; preload")])


def test_a_certificate_set_through_the_api_is_read_once_on_the_loaded_module(  # type: ignore[no-untyped-def]
        ca: trustme.CA, tmp_path, monkeypatch) -> None:
    import time

    from twisted.internet.task import Clock

    from cdnpull import certs as certs_module
    from cdnpull.certstore import CertificateStore, EdgeCertificates

    d = str(tmp_path)
    www = issue(ca, d, "www", "www.test.com")
    node = issue(ca, d, "node", "node.test")
    config = validate([Domain("www.test.com", origin=ORIGIN, certificate=www),
                       Domain("img.test", origin=ORIGIN)],
                      Settings(default_certificate=node))
    module, _ = load_certificates(config)
    store = CertificateStore(os.path.join(d, "state.certs"))
    os.makedirs(store.directory)
    for name, label in (("www.test.com", "www2"), ("img.test", "img")):
        spec = issue(ca, d, label, name)
        for src, dst in zip((spec.cert_file, spec.key_file), store.paths(name)):
            os.rename(src, dst)
    clock = Clock()
    clock.advance(time.time())
    edge = EdgeCertificates(config, None, store, lambda c: None, None, clock)  # type: ignore[arg-type]
    reads: list = []
    read = certs_module._read
    monkeypatch.setattr(certs_module, "_read", lambda path, where: reads.append(path) or read(path, where))

    served = edge.effective(config, module)

    assert sorted(reads) == sorted([*store.paths("www.test.com"), *store.paths("img.test")])
    assert served.replaced == {"www.test.com", "img.test"}
    assert served.own["www.test.com"].spec.cert_file == store.paths("www.test.com")[0]
    assert served.select("img.test").spec.cert_file == store.paths("img.test")[0]
    assert served.default is module.default
