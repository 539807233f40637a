"""
Edge certificates (client HTTPS): read every certificate the config names,
check it, and choose the one that answers a client's server name (SNI).

Checked at load and on every reload, each problem one line naming the domain
(or setting) and the field: a file that cannot be read or parsed, a key that
does not match its certificate, an expired certificate, a domain's own
certificate that does not cover the domain's name.  A certificate that
expires within L{WARN_DAYS} days is a warning, not an error.

Names are matched as RFC 6125 says: only C{subjectAltName} DNS names count
(never the subject's CN), case-insensitively; a wildcard is a whole
left-most label, C{*.img.test}, and covers exactly one label there
(C{a.img.test}, neither C{a.b.img.test} nor C{img.test}).

This module knows nothing of Twisted or OpenSSL contexts (the C{cryptography}
package parses); L{cdnpull.tlsserver} turns a L{CertificateSet} into the
contexts a C{tls:} listener serves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Optional

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509.oid import ExtensionOID, NameOID

from .config import Certificate, Config, ConfigError, Domain
from .routing import RoutingTable

__all__ = ["WARN_DAYS", "LoadedCertificate", "CertificateSet", "load_certificates",
           "name_matches", "https_json"]

WARN_DAYS = 30
_KEY_TYPES = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey,
              ed448.Ed448PrivateKey)


def name_matches(pattern: str, host: str) -> bool:
    """
    Whether the certificate name C{pattern} covers C{host} (RFC 6125 section
    6.4): equal ignoring case, or C{*.rest} where C{host} is one label
    followed by C{.rest}, and C{rest} has at least two labels.
    """
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if not pattern.startswith("*."):
        return pattern == host
    rest = pattern[2:]
    if "*" in rest or "." not in rest:
        return False
    label, dot, parent = host.partition(".")
    return bool(label) and dot == "." and parent == rest


@dataclass(frozen=True, eq=False)
class LoadedCertificate:
    """A certificate read from its files and checked."""

    spec: Certificate
    chain: tuple  # cryptography x509.Certificate, the leaf first
    key: Any = field(repr=False)
    names: tuple  # subjectAltName DNS names, lower case

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def not_after(self) -> datetime:
        return self.leaf.not_valid_after_utc

    @property
    def issuer(self) -> str:
        return self.leaf.issuer.rfc4514_string()

    @property
    def subject(self) -> str:
        return self.leaf.subject.rfc4514_string()

    def covers(self, host: str) -> bool:
        """Whether a client asking for C{host} accepts this certificate."""
        return any(name_matches(n, host) for n in self.names)

    def covers_domain(self, name: str) -> bool:
        """Whether every name a domain answers for is covered: a wildcard
        domain needs the same wildcard."""
        if name.startswith("*."):
            return name.lower() in self.names
        return self.covers(name)

    def days_left(self, now: float) -> float:
        return (self.not_after.timestamp() - now) / 86400.0

    def describe(self, now: float) -> dict:
        return {
            "cert_file": self.spec.cert_file,
            "names": list(self.names),
            "subject": self.subject,
            "issuer": self.issuer,
            "not_after": self.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "days_left": round(self.days_left(now), 1),
        }


def _ascii_name(name: str) -> str:
    try:
        return name.encode("idna").decode("ascii").lower() if not name.isascii() else name.lower()
    except UnicodeError:
        return name.lower()


def _read(path: str, where: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"{where}: {path!r} cannot be read: {e.strerror or e}") from None


def read_certificate(spec: Certificate, where: str, now: float) -> LoadedCertificate:
    """
    Read and check one certificate and its key.

    @param where: how problems name it (C{"www.test.com: certificate"}).
    @raise ConfigError: one line per problem.
    """
    problems: list[str] = []
    cert_data = key_data = None
    try:
        cert_data = _read(spec.cert_file, f"{where}.cert_file")
    except ConfigError as e:
        problems += e.problems
    try:
        key_data = _read(spec.key_file, f"{where}.key_file")
    except ConfigError as e:
        problems += e.problems
    try:
        return parse_certificate(cert_data, key_data, spec, where, now)
    except ConfigError as e:
        raise ConfigError(problems + list(e.problems)) from None


def parse_certificate(cert_data: Optional[bytes], key_data: Optional[bytes], spec: Certificate,
                      where: str, now: float, fields: tuple = ("cert_file", "key_file"),
                      names: Optional[tuple] = None) -> LoadedCertificate:
    """
    Check a PEM certificate (chain) and its PEM key given as bytes (None:
    already reported as unreadable).

    @param fields: how problems name the two (config fields or API fields).
    @param names: how problems show the two (default: the file paths).
    @raise ConfigError: one line per problem.
    """
    cf, kf = (f"{where}.{f}" for f in fields)
    cn, kn = names or (repr(spec.cert_file), repr(spec.key_file))
    problems = []
    chain: tuple = ()
    key = None
    if cert_data is not None:
        try:
            chain = tuple(x509.load_pem_x509_certificates(cert_data))
        except ValueError:
            problems.append(f"{cf}: {cn} holds no valid PEM certificate")
    if key_data is not None:
        try:
            key = serialization.load_pem_private_key(key_data, password=None)
        except TypeError:
            problems.append(f"{kf}: {kn} is encrypted; give the key without a passphrase "
                            "(readable by the node only)")
        except (ValueError, UnsupportedAlgorithm):
            problems.append(f"{kf}: {kn} holds no valid PEM private key")
        else:
            if not isinstance(key, _KEY_TYPES):
                problems.append(f"{kf}: {type(key).__name__} keys are not supported "
                                "(RSA, ECDSA or EdDSA)")
                key = None
    if problems or not chain or key is None:
        raise ConfigError(problems)
    leaf = chain[0]
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if leaf.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        problems.append(f"{kf}: {kn} does not match the certificate in {cn}")
    if leaf.not_valid_after_utc.timestamp() <= now:
        problems.append(f"{cf}: {cn} expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    try:
        san = leaf.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        dns = tuple(dict.fromkeys(_ascii_name(n) for n in san.get_values_for_type(x509.DNSName)))
    except x509.ExtensionNotFound:
        dns = ()
    except ValueError as e:  # a malformed extension
        problems.append(f"{cf}: {cn}: unreadable subjectAltName: {e}")
        dns = ()
    if problems:
        raise ConfigError(problems)
    return LoadedCertificate(spec, chain, key, dns)


def names_text(cert: LoadedCertificate) -> str:
    """What a certificate covers, for messages."""
    return _names_text(cert)


def _names_text(cert: LoadedCertificate) -> str:
    if not cert.names:
        cn = cert.leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        hint = f" (only a subject CN {cn[0].value!r}, which clients ignore)" if cn else ""
        return "no DNS name in subjectAltName" + hint
    return "its names: " + ", ".join(cert.names)


class CertificateSet:
    """
    Every certificate of a config, and which one answers which name.

    @param own: domain name -> that domain's own certificate.
    @param shared: C{Settings.certificates}, in order (the first that covers
        a name wins).
    @param default: for clients that send no name or an unknown one.
    """

    def __init__(self, own: Optional[dict] = None, shared: Iterable[LoadedCertificate] = (),
                 default: Optional[LoadedCertificate] = None) -> None:
        self.own: dict = dict(own or {})
        self.shared = tuple(shared)
        self.default = default
        # Domains whose own certificate was set through the admin API.
        self.replaced: frozenset = frozenset()
        self._own_routes: RoutingTable[LoadedCertificate] = RoutingTable(self.own.items())
        self._exact: dict = {}
        self._wild: dict = {}  # "img.test" -> the certificate naming "*.img.test"
        for cert in self.shared:
            for name in cert.names:
                if name.startswith("*."):
                    self._wild.setdefault(name[2:], cert)
                else:
                    self._exact.setdefault(name, cert)

    def __bool__(self) -> bool:
        return bool(self.own or self.shared or self.default)

    def all(self) -> list[LoadedCertificate]:
        """Each certificate once."""
        seen: dict = {}
        for cert in [*self.own.values(), *self.shared, self.default]:
            if cert is not None:
                seen.setdefault(id(cert), cert)
        return list(seen.values())

    def _shared_for(self, host: str) -> Optional[LoadedCertificate]:
        found = self._exact.get(host)
        if found is None:
            _, dot, parent = host.partition(".")
            if dot and "." in parent:
                found = self._wild.get(parent)
        return found

    def select(self, server_name: Optional[str]) -> Optional[LoadedCertificate]:
        """
        The certificate for a handshake: the own certificate of the domain
        the name routes to (when it covers the name), else the first of
        C{Settings.certificates} covering it, else the default (None: the
        handshake fails).
        """
        if not server_name:
            return self.default
        host = server_name.lower().rstrip(".")
        own = self._own_routes.lookup(host)
        if own is not None and own.covers(host):
            return own
        return self._shared_for(host) or self.default

    def for_domain(self, domain: Domain) -> tuple[Optional[LoadedCertificate], str]:
        """The certificate that serves a domain's name, and where it comes from."""
        own = self.own.get(domain.name)
        if own is not None:
            return own, "admin" if domain.name in self.replaced else "domain"
        name = _ascii_name(domain.name)
        if name.startswith("*."):
            found = self._wild.get(name[2:])
        else:
            found = self._shared_for(name)
        if found is not None:
            return found, "certificates"
        if self.default is not None and self.default.covers_domain(name):
            return self.default, "default_certificate"
        return None, "none"


def load_certificates(config: Config, now: Optional[float] = None
                      ) -> tuple[CertificateSet, list[str]]:
    """
    Read and check every certificate of C{config}.

    @return: the set, and warnings for the log (a certificate close to its
        end, an https_only domain that no certificate covers).
    @raise ConfigError: every problem, each naming the domain and field.
    """
    now = time.time() if now is None else now
    problems: list[str] = []
    loaded: dict = {}  # Certificate -> LoadedCertificate: a file pair is read once

    def load(spec: Certificate, where: str) -> Optional[LoadedCertificate]:
        if spec in loaded:
            return loaded[spec]
        try:
            cert = read_certificate(spec, where, now)
        except ConfigError as e:
            problems.extend(e.problems)
            cert = None
        loaded[spec] = cert
        return cert

    s = config.settings
    own = {}
    for d in config.domains:
        if d.certificate is None:
            continue
        cert = load(d.certificate, f"{d.name}: certificate")
        if cert is None:
            continue
        if not cert.covers_domain(_ascii_name(d.name)):
            problems.append(f"{d.name}: certificate: {d.certificate.cert_file!r} does not cover "
                            f"{d.name} ({_names_text(cert)})")
            continue
        own[d.name] = cert
    shared = []
    for i, spec in enumerate(s.certificates):
        cert = load(spec, f"settings.certificates[{i}]")
        if cert is not None:
            if not cert.names:
                problems.append(f"settings.certificates[{i}].cert_file: {spec.cert_file!r} has "
                                f"{_names_text(cert)}, so it can never be chosen")
            shared.append(cert)
    default = None
    if s.default_certificate is not None:
        default = load(s.default_certificate, "settings.default_certificate")
    if problems:
        raise ConfigError(problems)
    certs = CertificateSet(own, shared, default)
    warnings = []
    for cert in certs.all():
        days = cert.days_left(now)
        if days < WARN_DAYS:
            warnings.append(f"certificate {cert.spec.cert_file} ({', '.join(cert.names) or cert.subject}) "
                            f"expires in {days:.0f} days, on {cert.not_after:%Y-%m-%d}")
        if cert.leaf.not_valid_before_utc.timestamp() > now:
            warnings.append(f"certificate {cert.spec.cert_file} is not valid before "
                            f"{cert.leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    for d in config.domains:
        if d.https_only and certs.for_domain(d)[0] is None:
            warnings.append(f"{d.name}: https_only: no certificate covers {d.name}; its https "
                            "URL will fail unless an ssl: listener serves it")
    return certs, warnings


def https_json(live: Any, now: float) -> dict:
    """A domain's HTTPS policy and certificate, for the admin API."""
    d = live.config
    cert, source = live.certificate if live.certificate is not None else (None, "none")
    out = {"https_only": d.https_only, "hsts": d.hsts, "certificate": None}
    if cert is not None:
        out["certificate"] = dict(cert.describe(now), source=source)
    return out


def days_left_collector(certificates: Any, clock: Any) -> Any:
    """
    A Prometheus collector: C{cdnpull_certificate_days_left} per
    certificate, read at scrape time from C{certificates()} (the current
    L{CertificateSet}).
    """
    from prometheus_client.core import GaugeMetricFamily

    class Collector:
        def collect(self):
            gauge = GaugeMetricFamily(
                "cdnpull_certificate_days_left", "Days until the edge certificate expires",
                labels=["cert_file", "name"])
            now = clock.seconds()
            for cert in certificates().all():
                gauge.add_metric([cert.spec.cert_file, cert.names[0] if cert.names else cert.subject],
                                 cert.days_left(now))
            yield gauge

    return Collector()
