"""Small X.509 helpers: a private CA and the certificates it signs (demo, tests, bench).

Everything is written as PEM; private keys are created with mode 0600 and never printed.
Keys are ECDSA P-256 (fast to generate, supported by PostgreSQL, libpq, pgbouncer and every
TLS stack the project meets).
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertPair", "make_ca", "make_cert", "make_self_signed"]

_CA_DAYS = 3650
_LEAF_DAYS = 825
_BACKDATE = _dt.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class CertPair:
    """A PEM certificate and its PEM private key, as files."""

    cert_file: Path
    key_file: Path

    def load_certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_file.read_bytes())

    def load_private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_file.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"{self.key_file}: not an EC private key")
        return key


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by the owner only (created 0600, never widened)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(0o644)


def _save(
    directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> CertPair:
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"invalid certificate file name stem: {name!r}")
    pair = CertPair(cert_file=directory / f"{name}.crt", key_file=directory / f"{name}.key")
    _write_private(
        pair.key_file,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    _write_public(pair.cert_file, cert.public_bytes(serialization.Encoding.PEM))
    return pair


def _san(hostnames: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hostnames:
        h = h.strip()
        if not h:
            raise ValueError("empty host name in certificate SAN list")
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h.strip("[]"))))
        except ValueError:
            names.append(x509.DNSName(h))
    if not names:
        raise ValueError("a server certificate needs at least one host name or IP address")
    return x509.SubjectAlternativeName(names)


def _validity(days: int) -> tuple[_dt.datetime, _dt.datetime]:
    now = _dt.datetime.now(_dt.UTC)
    return now - _BACKDATE, now + _dt.timedelta(days=days)


def make_ca(directory: Path, name: str = "ca") -> CertPair:
    """Create a self-signed CA as ``<directory>/<name>.crt`` and ``<directory>/<name>.key``."""
    directory = Path(directory)
    key = _new_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "veilgate"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"veilgate {name} CA"),
        ]
    )
    not_before, not_after = _validity(_CA_DAYS)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return _save(directory, name, cert, key)


def make_cert(directory: Path, name: str, hostnames: list[str], ca: CertPair) -> CertPair:
    """Create a server/client certificate signed by ``ca`` with ``hostnames`` as its SANs.

    ``hostnames`` mixes DNS names and IP addresses (``["localhost", "127.0.0.1", "::1"]``); the
    first one is also the subject CN.
    """
    directory = Path(directory)
    san = _san(hostnames)
    ca_cert = ca.load_certificate()
    ca_key = ca.load_private_key()
    key = _new_key()
    not_before, not_after = _validity(_LEAF_DAYS)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "veilgate"),
                    x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0].strip()),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(san, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _save(directory, name, cert, key)


def make_self_signed(directory: Path, hostnames: list[str], name: str = "server") -> CertPair:
    """Create a self-signed certificate for ``hostnames`` (it is its own trust anchor)."""
    directory = Path(directory)
    san = _san(hostnames)
    key = _new_key()
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "veilgate"),
            x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0].strip()),
        ]
    )
    not_before, not_after = _validity(_LEAF_DAYS)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(san, critical=False)
        .sign(key, hashes.SHA256())
    )
    return _save(directory, name, cert, key)
