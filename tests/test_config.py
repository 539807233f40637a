"""Config objects and validation (docs/configuration.md)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cdnpull.config import (
    Address,
    BucketOrigin,
    CacheRule,
    ConfigError,
    Domain,
    DomainOrigin,
    IPOrigin,
    Probe,
    S3Credentials,
    Settings,
    parse_address,
    parse_size,
    validate,
)
from cdnpull.loader import load_config

from .support import write_config


def problems(*domains, settings=None) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError) as info:
        validate(domains, settings)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_valid_config_passes_and_normalises():
    d = Domain("WWW.Test.com.", origin=IPOrigin(["127.0.0.2", "[::1]:8080"], port=8001),
               standby=IPOrigin("127.0.0.4"))
    config = validate([d])
    (dom,) = config.domains
    assert dom.name == "www.test.com"
    assert dom.origin.addresses == ("127.0.0.2", "[::1]:8080")
    assert dom.origin.parsed_addresses() == (Address("127.0.0.2", 8001), Address("::1", 8080))
    assert dom.standby.addresses == ("127.0.0.4",)
    # Immutable.
    with pytest.raises(Exception):
        dom.name = "x"  # type: ignore[misc]


@pytest.mark.parametrize("text, expected", [
    ("1.2.3.4", Address("1.2.3.4", 0)),
    ("1.2.3.4:8080", Address("1.2.3.4", 8080)),
    ("2001:db8::1", Address("2001:db8::1", 0)),
    ("[2001:db8::1]:8080", Address("2001:db8::1", 8080)),
    ("[2001:db8:0::1]", Address("2001:db8::1", 0)),
])
def test_parse_address(text, expected):  # type: ignore[no-untyped-def]
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["1.2.3", "1.2.3.4:x", "1.2.3.4:70000", "host.example",
                                  "[::1", "[::1]8080", "", "256.1.1.1"])
def test_parse_address_rejects(text):  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        parse_address(text)


@pytest.mark.parametrize("domain, expected", [
    (Domain("a.test", origin=IPOrigin([])), "a.test: origin.addresses: at least one address"),
    (Domain("a.test", origin=IPOrigin(["1.2.3.999"])), "a.test: origin.addresses[0]: '1.2.3.999' is not an IPv4"),
    (Domain("a.test", origin=IPOrigin(["1.2.3.4"], port=70000)), "a.test: origin.port: 70000 is outside 0-65535"),
    (Domain("a.test", origin=IPOrigin(["1.2.3.4:65536"])), "a.test: origin.addresses[0]"),
    (Domain("a.test", origin=IPOrigin(["1.2.3.4"], scheme="ftp")), "a.test: origin.scheme: 'ftp'"),
    (Domain("a.test", origin=IPOrigin(["1.2.3.4", "1.2.3.4"])), "a.test: origin.addresses[1]: '1.2.3.4' is listed twice"),
    (Domain("a..test", origin=IPOrigin(["1.2.3.4"])), "a..test: name:"),
    (Domain("a.*.test", origin=IPOrigin(["1.2.3.4"])), "a.*.test: name: 'a.*.test': a wildcard"),
    (Domain("-a.test", origin=IPOrigin(["1.2.3.4"])), "-a.test: name:"),
    (Domain("a.test", origin=DomainOrigin("a.test")), "a.test: origin.host: 'a.test' must differ"),
    (Domain("a.test", origin=DomainOrigin("bad_host!")), "a.test: origin.host:"),
    (Domain("a.test", origin=IPOrigin(["1.2.3.4"]),
            standby=BucketOrigin("https://s3.example", "bucket-1")),
     "a.test: standby: a standby must be an IPOrigin or DomainOrigin"),
    (Domain("a.test", origin=BucketOrigin("https://s3.example", "bucket-1"),
            standby=IPOrigin(["1.2.3.4"])),
     "a.test: standby: a standby is only allowed when the primary"),
    (Domain("a.test", origin=BucketOrigin("ftp://s3.example", "b")), "a.test: origin.endpoint"),
    (Domain("a.test", origin=BucketOrigin("https://s3.example", "Bad_Bucket")), "a.test: origin.bucket"),
    (Domain("a.test", origin=BucketOrigin("https://s3.example", "bucket-1", style="odd")), "a.test: origin.style"),
    (Domain("a.test", origin=IPOrigin(["1.2.3.4"]), probe=Probe(interval=0)), "a.test: probe.interval"),
    (Domain("a.test", origin=IPOrigin(["1.2.3.4"]), probe=Probe(kind="icmp")), "a.test: probe.kind"),
    (Domain("a.test", origin=IPOrigin(["1.2.3.4"]), probe=Probe(path="health")), "a.test: probe.path"),
    (Domain("a.test", origin=IPOrigin(["1.2.3.4"]), cache=[CacheRule(ttl=5)]), "a.test: cache[0]: give a prefix"),
    (Domain("a.test", origin=IPOrigin(["1.2.3.4"]), cache=[CacheRule(prefix="/a", ttl=-1)]), "a.test: cache[0].ttl"),
    (Domain("a.test", origin=IPOrigin(["1.2.3.4"]), connect_timeout=0), "a.test: connect_timeout"),
    (Domain("a.test", origin=IPOrigin(["1.2.3.4"]), failover_on=[404, 700]), "a.test: failover_on"),
    (Domain("a.test", origin="1.2.3.4"), "a.test: origin: str is not an origin"),
])
def test_each_rule_names_domain_and_field(domain, expected):  # type: ignore[no-untyped-def]
    assert expected in problems(domain)


def test_duplicate_names_are_case_insensitive():
    message = problems(Domain("A.test", origin=IPOrigin(["1.2.3.4"])),
                       Domain("a.TEST", origin=IPOrigin(["1.2.3.5"])))
    assert "a.test: name: declared more than once" in message


def test_every_problem_is_reported_on_one_line():
    message = problems(Domain("a.test", origin=IPOrigin([], port=-1)),
                       Domain("b.test", origin=IPOrigin(["x"])))
    assert "a.test: origin.port" in message
    assert "a.test: origin.addresses" in message
    assert "b.test: origin.addresses[0]" in message


def test_standby_may_use_https_and_a_hostname():
    validate([Domain("a.test", origin=DomainOrigin("origin.a.test", scheme="https"),
                     standby=DomainOrigin("backup.a.test", scheme="https", port=8443))])


def test_wildcards_are_valid_names():
    validate([Domain("*.a.test", origin=IPOrigin(["1.2.3.4"])),
              Domain("a.test", origin=IPOrigin(["1.2.3.4"]))])


def test_credentials_from_env(monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("STATIC_ACCESS_KEY_ID", "AK")
    monkeypatch.setenv("STATIC_SECRET_ACCESS_KEY", "SK")
    creds = S3Credentials.from_env("STATIC")
    assert (creds.access_key, creds.secret_key, creds.session_token) == ("AK", "SK", None)
    assert "SK" not in repr(creds)
    monkeypatch.delenv("STATIC_SECRET_ACCESS_KEY")
    d = Domain("s.test", origin=BucketOrigin("https://s3.example", "bucket-1",
                                             credentials=S3Credentials.from_env("STATIC")))
    assert ("s.test: origin.credentials: environment variable STATIC_SECRET_ACCESS_KEY is not set"
            in problems(d))


def test_settings_problems():
    message = problems(Domain("a.test", origin=IPOrigin(["1.2.3.4"])),
                       settings=Settings(cache_memory="lots", nameservers=["nope"], listen=[],
                                         shutdown_grace=-1))
    assert "settings.cache_memory" in message
    assert "settings.shutdown_grace: must be a number of seconds >= 0" in message
    assert "settings.nameservers[0]" in message
    assert "settings.listen" in message


def test_sizes():
    assert parse_size("256MiB") == 256 * 1024 * 1024
    assert parse_size("10GiB") == 10 * 1024**3
    assert parse_size("1.5k") == 1500
    assert parse_size(42) == 42
    with pytest.raises(ValueError):
        parse_size("12 parsecs")


# -- loading files ------------------------------------------------------------


def test_loader_reports_module_errors_with_line(tmp_path):  # type: ignore[no-untyped-def]
    path = write_config(str(tmp_path), "x = 1\nraise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match=r"site.py:2: RuntimeError: boom"):
        load_config(path)
    path = write_config(str(tmp_path), "domains = [\n", name="syntax.py")
    with pytest.raises(ConfigError, match=r"syntax.py:\d+: syntax error"):
        load_config(path)
    path = write_config(str(tmp_path), "x = 1\n", name="empty.py")
    with pytest.raises(ConfigError, match="must define 'domains'"):
        load_config(path)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(str(tmp_path / "missing.py"))
    # A module that exits must not take a running node with it (SIGHUP).
    path = write_config(str(tmp_path), "import sys\nsys.exit(3)\n", name="exits.py")
    with pytest.raises(ConfigError, match=r"exits.py:2: SystemExit: 3"):
        load_config(path)


def test_loader_applies_command_line_overrides(tmp_path):  # type: ignore[no-untyped-def]
    path = write_config(str(tmp_path), """
        from cdnpull.config import Domain, IPOrigin, Settings
        settings = Settings(listen=["tcp:9000"], state_file="a.json")
        domains = [Domain("a.test", origin=IPOrigin(["127.0.0.2"]))]
        """)
    loaded = load_config(path, listen=("tcp:9100",), admin=None)
    assert loaded.config.settings.listen == ("tcp:9100",)
    assert loaded.config.settings.state_file == "a.json"


def test_check_command(tmp_path):  # type: ignore[no-untyped-def]
    good = write_config(str(tmp_path), """
        from cdnpull.config import Domain, IPOrigin
        domains = [Domain("a.test", origin=IPOrigin(["127.0.0.2", "127.0.0.3:81"]),
                          standby=IPOrigin(["127.0.0.4"]))]
        """)
    result = subprocess.run([sys.executable, "-m", "cdnpull", "check", good],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "a.test" in result.stdout and "127.0.0.3:81" in result.stdout
    bad = write_config(str(tmp_path), """
        from cdnpull.config import Domain, IPOrigin
        domains = [Domain("a.test", origin=IPOrigin(["127.0.0.300"]))]
        """, name="bad.py")
    result = subprocess.run([sys.executable, "-m", "cdnpull", "check", bad],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "cdnpull: config error: a.test: origin.addresses[0]: "
        "'127.0.0.300' is not an IPv4 or IPv6 address")
    assert "Traceback" not in result.stderr


def test_the_production_example_validates():
    import os

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "site.py")
    result = subprocess.run([sys.executable, "-m", "cdnpull", "check", path],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "4 domain(s)" in result.stdout
    assert "example-static-assets.s3.eu-west-1.amazonaws.com (the bucket's own)" in result.stdout
