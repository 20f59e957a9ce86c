"""The federation's certificates (pure: bytes in, bytes out; files are the caller's).

A root is its own certificate authority. It signs its tunnel listener's server certificate and,
at join, each leaf's client certificate; the leaf pins the root's CA by the SHA-256 the join
token carries, so even the first contact cannot be intercepted. Invariants:

* A leaf certificate names the leaf in its subject CN and carries only the clientAuth usage; a
  server certificate only serverAuth. Keys are ECDSA P-256 (every TLS stack speaks it).
* A leaf's private key never leaves the leaf: it sends a CSR, signed by the key (checked here).
* Serial numbers are 128 random bits, written as lowercase hex (the root's table keys on them).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sessionvault.errors import ValidationError

__all__ = [
    "CertInfo",
    "ca_pin",
    "cert_info",
    "client_context",
    "make_ca_pair",
    "make_csr",
    "new_key",
    "server_context",
    "sign_leaf_csr",
    "sign_server_cert",
]


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What the root checks of a leaf's certificate."""

    name: str  # subject CN
    serial: str  # lowercase hex
    not_after: dt.datetime
    issuer_pin: str


def new_key() -> bytes:
    """A fresh ECDSA P-256 private key, PEM (PKCS#8, unencrypted: the file is 0600)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValidationError("bad_key", "federation keys are ECDSA P-256")
    return key


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sessionvault federation"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _serial() -> int:
    return secrets.randbits(127) | 1  # positive, never 0


def make_ca_pair(
    root_name: str, *, now: dt.datetime, ttl_s: int = 10 * 365 * 86400
) -> tuple[bytes, bytes]:
    """A new CA for root ``root_name``: (key PEM, self-signed certificate PEM)."""
    key_pem = new_key()
    key = _key(key_pem)
    name = _name(f"sessionvault root CA {root_name}")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(seconds=ttl_s))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def ca_pin(cert_pem: bytes) -> str:
    """``sha256:<hex>`` of a certificate's DER: what a join token pins."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _issue(
    ca_key_pem: bytes,
    ca_cert_pem: bytes,
    subject_cn: str,
    public_key: ec.EllipticCurvePublicKey,
    *,
    usage: x509.ObjectIdentifier,
    sans: list[x509.GeneralName],
    now: dt.datetime,
    ttl_s: int,
) -> bytes:
    ca_key = _key(ca_key_pem)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    not_after = min(now + dt.timedelta(seconds=ttl_s), ca_cert.not_valid_after_utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject_cn))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(_serial())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM)


def sign_server_cert(
    ca_key_pem: bytes,
    ca_cert_pem: bytes,
    key_pem: bytes,
    hosts: list[str],
    *,
    now: dt.datetime,
    ttl_s: int,
) -> bytes:
    """The root tunnel listener's certificate for ``hosts`` (names or IP addresses)."""
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    return _issue(
        ca_key_pem,
        ca_cert_pem,
        hosts[0] if hosts else "sessionvault-root",
        _key(key_pem).public_key(),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        sans=sans,
        now=now,
        ttl_s=ttl_s,
    )


def make_csr(leaf_name: str, key_pem: bytes) -> bytes:
    """A certificate request for leaf ``leaf_name``, signed by its key (PEM)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(leaf_name))
        .sign(_key(key_pem), hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def sign_leaf_csr(
    ca_key_pem: bytes,
    ca_cert_pem: bytes,
    csr_pem: bytes,
    leaf_name: str,
    *,
    now: dt.datetime,
    ttl_s: int,
    check_name: bool = True,
) -> bytes:
    """The client certificate for leaf ``leaf_name`` from its CSR. The CSR must be signed by its
    own key; with ``check_name`` (a renewal) it must also name that leaf. At a join the name is
    the one the root bound to the token, whatever the CSR says."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise ValidationError("bad_csr", "certificate request: not a PEM CSR") from exc
    if not csr.is_signature_valid:
        raise ValidationError("bad_csr", "certificate request: signature does not verify")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if check_name and (not names or names[0].value != leaf_name):
        raise ValidationError("bad_csr", f"certificate request: its name is not {leaf_name!r}")
    public = csr.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise ValidationError("bad_csr", "certificate request: the key must be ECDSA")
    return _issue(
        ca_key_pem,
        ca_cert_pem,
        leaf_name,
        public,
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        sans=[x509.UniformResourceIdentifier(f"sessionvault://leaf/{leaf_name}")],
        now=now,
        ttl_s=ttl_s,
    )


def cert_info(cert: bytes | x509.Certificate) -> CertInfo:
    """Name, serial, expiry and issuer of a PEM or DER certificate (issuer pin: a SHA-256 prefix
    of the issuer's name, enough to tell roots apart in messages)."""
    if isinstance(cert, bytes):
        cert = (
            x509.load_pem_x509_certificate(cert)
            if cert.lstrip().startswith(b"-----")
            else x509.load_der_x509_certificate(cert)
        )
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if names else ""
    return CertInfo(
        name=name,
        serial=format(cert.serial_number, "x"),
        not_after=cert.not_valid_after_utc,
        issuer_pin=hashlib.sha256(cert.issuer.public_bytes()).hexdigest()[:16],
    )


def server_context(cert_file: Path, key_file: Path, ca_file: Path) -> ssl.SSLContext:
    """The root's tunnel listener: TLS 1.2+, a client certificate signed by this root's CA
    required (a certificate from any other CA fails the handshake)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    ctx.load_verify_locations(cafile=str(ca_file))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(cert_file: Path, key_file: Path, ca_file: Path) -> ssl.SSLContext:
    """The leaf's side: present its certificate, trust only its root's CA, check the name."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    ctx.load_verify_locations(cafile=str(ca_file))
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
