"""Security Profile 3 (TLS with client-side certificates) when a proxy terminates TLS.

The OCPP 1.6 Security Whitepaper (edition 3, §2.5) has the Central System authenticate a profile 3
charge point by its TLS client certificate. When nginx or HAProxy terminates TLS, the node never
sees the TLS handshake: the proxy verifies the certificate chain (A00.FR.403) and forwards the
verified certificate in a request header. This module decides whom to believe such headers from,
reads the certificate out of the header, and makes the checks the proxy cannot make because they
need the charge point identity from the URL:

- validity period (A00.FR.407: a charge point without a valid certificate is refused);
- the subject CN is the charge point identity (A00.FR.405, A00.FR.511: the CN holds the charge
  point's unique serial number, which chargegrid expects as its identity in the URL);
- optionally the subject O is the CPO name (A00.FR.404);
- optionally the certificate was issued by one of the configured CAs (a second look at
  A00.FR.403, against a proxy that forwards certificates it did not verify).

Nothing here logs or returns certificate contents beyond the subject fields it compares.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

# A charge point certificate is 1-2 KiB of PEM; anything much larger is not one.
MAX_HEADER_LENGTH = 32 * 1024

_PEM_BEGIN = "-----BEGIN CERTIFICATE-----"
_PEM_END = "-----END CERTIFICATE-----"

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class CertificateError(ValueError):
    """The forwarded header does not hold one readable X.509 certificate."""


def parse_networks(entries: Iterable[str]) -> list[IpNetwork]:
    """``10.0.0.2``, ``10.0.0.0/24``, ``::1`` ... as networks (a bare address is a /32 or /128)."""
    return [ipaddress.ip_network(entry.strip(), strict=False) for entry in entries]


class TrustedProxies:
    """The peers whose forwarded headers (TLS, client certificate) are believed."""

    def __init__(self, entries: Iterable[str]) -> None:
        self._networks = parse_networks(entries)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def trusts(self, peer: str | None) -> bool:
        """Whether ``peer`` (the TCP peer's address, never a forwarded one) is a trusted proxy."""
        if peer is None or not self._networks:
            return False
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            # A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d.
            address = address.ipv4_mapped
        return any(address in network for network in self._networks)


def parse_forwarded_certificate(value: str) -> x509.Certificate:
    """The certificate in a proxy's header, in any of the forms proxies send.

    - nginx ``$ssl_client_escaped_cert``: URL-encoded PEM;
    - PEM with its line breaks folded into spaces or tabs (nginx's older ``$ssl_client_cert``,
      other proxies);
    - HAProxy ``%[ssl_c_der,base64]``: base64 DER, possibly in double quotes (``%{+Q}``).

    Only the first certificate is read: the proxy forwards the charge point's own (leaf)
    certificate first.
    """
    text = value.strip().strip('"').strip()
    if not text:
        raise CertificateError("empty certificate header")
    if len(text) > MAX_HEADER_LENGTH:
        raise CertificateError("certificate header too long")
    if "%" in text:
        text = unquote(text)
    begin = text.find(_PEM_BEGIN)
    if begin >= 0:
        end = text.find(_PEM_END, begin)
        if end < 0:
            raise CertificateError("truncated PEM certificate")
        body = text[begin + len(_PEM_BEGIN) : end]
    else:
        body = text
    try:
        der = base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise CertificateError("certificate header is neither PEM nor base64 DER") from None
    try:
        return x509.load_der_x509_certificate(der)
    except ValueError:
        raise CertificateError("certificate header does not hold an X.509 certificate") from None


def load_ca_bundle(path: Path) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle; refused at start if there is none."""
    certificates = x509.load_pem_x509_certificates(path.read_bytes())
    if not certificates:  # pragma: no cover - cryptography raises on an empty bundle already
        raise ValueError(f"{path}: no certificate in the CA bundle")
    return certificates


def _subject_values(certificate: x509.Certificate, oid: x509.ObjectIdentifier) -> list[str]:
    return [
        value if isinstance(value := attribute.value, str) else value.decode("utf-8", "replace")
        for attribute in certificate.subject.get_attributes_for_oid(oid)
    ]


def _issued_by(certificate: x509.Certificate, issuers: Sequence[x509.Certificate]) -> bool:
    for issuer in issuers:
        if issuer.subject != certificate.issuer:
            continue
        try:
            certificate.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return True
    return False


def check_certificate(
    certificate: x509.Certificate,
    *,
    identity: str,
    now: datetime,
    organization: str | None = None,
    issuers: Sequence[x509.Certificate] = (),
) -> str | None:
    """Why ``certificate`` does not authenticate charge point ``identity``; None if it does."""
    # A00.FR.407: a charge point that does not own a valid certificate is refused.
    if now < certificate.not_valid_before_utc:
        return "certificate is not valid yet"
    if now > certificate.not_valid_after_utc:
        return "certificate has expired"
    # A00.FR.405 / A00.FR.511: exactly one CN, and it is this charge point's.
    common_names = _subject_values(certificate, NameOID.COMMON_NAME)
    if len(common_names) != 1:
        return "certificate subject must have exactly one CN"
    if common_names[0] != identity:
        return f"certificate CN {common_names[0]!r} is not the charge point identity"
    # A00.FR.404: the O of the subject names the CPO (checked when configured).
    if organization is not None and organization not in _subject_values(
        certificate, NameOID.ORGANIZATION_NAME
    ):
        return "certificate subject O is not the configured organization"
    # A00.FR.403 is the proxy's job; this repeats its last step against the configured CAs.
    if issuers and not _issued_by(certificate, issuers):
        return "certificate was not issued by a configured CA"
    return None
